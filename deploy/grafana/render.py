"""Draw ``deploy/grafana/polycopy.json`` from a Prometheus server's answers, as a PNG.

Grafana's image renderer does not install on a machine without Grafana, so this draws the dashboard's own
panels with matplotlib: the same layout (``gridPos``), titles, units, thresholds and queries, each query sent
to Prometheus's ``/api/v1/query_range`` after its variables are put in place as Grafana would
(``$tier`` and ``$instance``: every value; ``$__rate_interval``: max(step + scrape, 4 x scrape)).

Two ways to run it (``pip install -e ".[render]"``; ``prometheus`` on the PATH for the second)::

    python deploy/grafana/render.py --prometheus http://127.0.0.1:9090 --minutes 30 --out dash.png
    python deploy/grafana/render.py --simulate 12 --out docs/dashboard.png

``--simulate`` is the README's screenshot: the built-in simulator (the demo's delays after the match:
stream 2 s, a wallet's feed 5 s, the global feed 7 s, 200 other traders), a throw-away database, a hot
tier and a cold tier sweeping as real processes, and a Prometheus server scraping both every 5 s. A third
of the way in the stream stalls for 90 s, two thirds in the API rate-limits for 60 s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DASHBOARD = HERE / "polycopy.json"
SCRAPE_SECONDS = 5
UNITS = {"s": "seconds", "reqps": "requests/s", "ops": "rows/s", "short": ""}


# --- drawing -------------------------------------------------------------------------------------------

def query_range(prom: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    resp = requests.get(f"{prom}/api/v1/query_range",
                        params={"query": expr, "start": start, "end": end, "step": step}, timeout=30)
    body = resp.json()
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error', resp.text)}")
    return list(body["data"]["result"])


def label_values(prom: str, label: str, match: str) -> list[str]:
    resp = requests.get(f"{prom}/api/v1/label/{label}/values", params={"match[]": match}, timeout=30)
    resp.raise_for_status()
    return sorted(resp.json()["data"])


def variables(prom: str, step: float) -> dict[str, str]:
    """Each dashboard variable as Grafana would expand it with 'All' chosen."""
    tiers = label_values(prom, "tier", "polycopy_tier_info")
    if not tiers:
        raise RuntimeError("Prometheus has no polycopy_tier_info series: is it scraping a running tier?")
    tier_re = "(" + "|".join(tiers) + ")"
    instances = label_values(prom, "instance", f'polycopy_tier_info{{tier=~"{tier_re}"}}')
    rate = max(step + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)
    return {"$__rate_interval": f"{int(rate)}s", "$tier": tier_re,
            "$instance": "(" + "|".join(promql_regex(i) for i in instances) + ")"}


def promql_regex(value: str) -> str:
    """``value`` as a literal inside a PromQL double-quoted regex (a backslash is itself escaped there)."""
    return re.escape(value).replace("\\", "\\\\")


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or str(labels)


def render(prom: str, out: Path, minutes: float, end: float | None = None) -> None:
    import matplotlib  # noqa: PLC0415 - the render extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    dash = json.loads(DASHBOARD.read_text())
    end = end if end is not None else time.time()
    start = end - minutes * 60
    step = max(SCRAPE_SECONDS, round(minutes * 60 / 240))
    subst = variables(prom, step)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"])
    unit_w, unit_h = 0.9, 0.42  # inches per grid column / grid row
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h + 0.8), facecolor="#111217")
    fig.suptitle(f"{dash['title']} — last {minutes:g} min, every tier, every process "
                 f"(drawn from Prometheus by deploy/grafana/render.py)", color="#d8d9da", fontsize=13, x=0.01,
                 ha="left", y=1 - 0.25 / (rows * unit_h + 0.8))
    top = 0.6 / (rows * unit_h + 0.8)
    height = 1 - top

    def box(g: dict[str, int]) -> list[float]:
        """Figure coordinates of a panel: its grid cell less room for the title, ticks and labels."""
        w, h = g["w"] / 24, g["h"] / rows * height
        bottom = 1 - top - (g["y"] + g["h"]) / rows * height
        return [g["x"] / 24 + 0.028, bottom + 0.2 * h, w - 0.036, 0.68 * h]

    for panel in dash["panels"]:
        g = panel["gridPos"]
        if panel["type"] == "row":
            fig.text(0.005, 1 - top - (g["y"] + 0.7) / rows * height, panel["title"], color="#d8d9da",
                     fontsize=12, fontweight="bold")
            continue
        ax = fig.add_axes(box(g), facecolor="#181b1f")
        ax.set_title(panel["title"], color="#d8d9da", fontsize=10, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        for side in ax.spines.values():
            side.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        defaults = panel["fieldConfig"]["defaults"]
        ax.set_ylabel(UNITS.get(defaults.get("unit", "short"), ""), color="#8e8e8e", fontsize=7)
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in subst.items():
                expr = expr.replace(var, value)
            for series in query_range(prom, expr, start, end, step):
                xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=legend(target.get("legendFormat", ""), series["metric"]))
        for step_ in defaults.get("thresholds", {}).get("steps", []):
            if step_.get("value") is not None:
                ax.axhline(step_["value"], color="#f2495c", linestyle="--", linewidth=0.8)
        scale = defaults.get("custom", {}).get("scaleDistribution", {})
        if scale.get("type") == "log":
            ax.set_yscale("log", base=scale.get("log", 10))
        elif defaults.get("min") == 0:
            ax.set_ylim(bottom=0)
        ax.set_xlim(-minutes, 0)
        ax.set_xlabel("minutes before the end of the run", color="#8e8e8e", fontsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da",
                      ncol=2)
        else:
            ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())
    print(f"wrote {out} ({sum(1 for p in dash['panels'] if p['type'] != 'row')} panels, {minutes:g} min)")


# --- the simulated run ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).ok:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def child(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def simulate(minutes: float, out: Path, database: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    import psycopg  # noqa: PLC0415

    from bench._common import scratch_database  # noqa: PLC0415
    from polycopy_actors.db import queries  # noqa: PLC0415
    from polycopy_actors.simulator import SimConfig, Simulator, World  # noqa: PLC0415

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("--simulate needs the prometheus binary on the PATH (Debian: apt-get install prometheus)")
    seed = int(time.time())
    world = World(seed=seed, wallets=220)
    for _ in range(30):
        world.step()
    sim = Simulator(world, SimConfig(seed=seed, stream_delay_seconds=2.0, user_feed_delay_seconds=5.0,
                                     global_feed_delay_seconds=7.0)).start()
    sim.drive(1.0, background_wallets=200, background_fills_per_second=20)
    assert sim.rtds is not None
    work = Path(tempfile.mkdtemp(prefix="polycopy-render-"))
    drawn = False
    db_context = contextlib.nullcontext(database) if database else scratch_database()
    try:
        with db_context as dsn:
            with psycopg.connect(dsn) as conn, conn.transaction():
                queries.follow(conn, world.wallets[:20], "render")
                queries.add_traders(conn, world.wallets[20:])
            ports = {"hot": free_port(), "cold": free_port()}
            (work / "cold.yaml").write_text(json.dumps({"tiers": {"cold": {
                "schedule": "sweep", "sweep_interval_seconds": 120, "jitter_seconds": 0,
                "progress_every_wallets": 50}}}))
            prom_port = free_port()
            (work / "prometheus.yml").write_text(json.dumps({
                "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
                "rule_files": [str(HERE.parent / "prometheus" / "alerts.yml")],
                "scrape_configs": [{"job_name": "polycopy", "static_configs": [
                    {"targets": [f"127.0.0.1:{p}" for p in ports.values()]}]}]}))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("POLYCOPY_", "PROMETHEUS_"))}
            env.update(DATABASE_URL=dsn, POLYCOPY_DATA_API_URL=sim.base_url, POLYCOPY_GAMMA_API_URL=sim.base_url,
                       POLYCOPY_RTDS_URL=sim.rtds_url)
            tier = [sys.executable, "-m", "polycopy_actors", "--tier"]
            with contextlib.ExitStack() as stack:
                stack.enter_context(child(
                    [prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{prom_port}"], env, work / "prometheus.log"))
                stack.enter_context(child([*tier, "hot"], {**env, "POLYCOPY_METRICS_PORT": str(ports["hot"])},
                                          work / "hot.log"))
                stack.enter_context(child([*tier, "cold", "--config", str(work / "cold.yaml")],
                                          {**env, "POLYCOPY_METRICS_PORT": str(ports["cold"])}, work / "cold.log"))
                prom = f"http://127.0.0.1:{prom_port}"
                wait_http(f"{prom}/-/ready", 60)
                started = time.time()
                print(f"running {minutes:g} min (logs in {work})", flush=True)
                incidents = [(minutes / 3, "stream stalls for 90 s", lambda: sim.rtds.stall(True)),
                             (minutes / 3 + 1.5, "stream speaks again", lambda: sim.rtds.stall(False)),
                             (2 * minutes / 3, "the API rate-limits for 60 s", lambda: throttle(sim, 10)),
                             (2 * minutes / 3 + 1, "the API's usual limits", lambda: throttle(sim, 1))]
                for at, what, act in incidents:
                    time.sleep(max(0.0, started + at * 60 - time.time()))
                    print(f"{(time.time() - started) / 60:5.1f} min: {what}", flush=True)
                    act()
                time.sleep(max(0.0, started + minutes * 60 - time.time()))
                render(prom, out, minutes, end=time.time())
                drawn = True
    finally:
        sim.stop()
        if drawn:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"not drawn: the run's logs and Prometheus data stay in {work}", file=sys.stderr)


def throttle(sim: Any, divide: int) -> None:
    """The simulator's per-route limits divided by ``divide`` (1: the usual ones)."""
    from polycopy_actors.simulator.http import DEFAULT_LIMITS  # noqa: PLC0415

    sim.config = dataclasses.replace(sim.config, limits={k: max(1, v // divide) for k, v in DEFAULT_LIMITS.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prometheus", metavar="URL", help="render from this Prometheus server")
    what.add_argument("--simulate", type=float, metavar="MINUTES", help="run both tiers against the simulator")
    parser.add_argument("--minutes", type=float, default=30, help="time range drawn (with --prometheus)")
    parser.add_argument("--database", help="with --simulate: this database (default: a throw-away one)")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args()
    if args.prometheus:
        render(args.prometheus.rstrip("/"), args.out, args.minutes)
    else:
        simulate(args.simulate, args.out, args.database)


if __name__ == "__main__":
    main()
