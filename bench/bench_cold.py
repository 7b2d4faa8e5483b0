"""Cold tier: sweep throughput at the default 5 req/s, requests per wallet, and the memory (RSS)
of a cold tier holding 10k and 100k wallets' state.

    python bench/bench_cold.py [--sweep-wallets 60] [--rss-wallets 10000 100000]

Throughput: one ``--once`` sweep in this process (real PostgreSQL, simulator over HTTP), printed
against the budget's ceiling (5 req/s x 3600 / requests per wallet). Memory: ``python -m
polycopy_actors --tier cold --once`` as a child, stalled by a tiny budget after loading every
wallet (schedule, cursor, open positions); RSS per wallet against a 100-wallet baseline.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import scratch_database  # noqa: E402
from polycopy_actors.app.run import _in_process  # noqa: E402
from polycopy_actors.app.sweep import SweepLoop  # noqa: E402
from polycopy_actors.config import load_settings  # noqa: E402
from polycopy_actors.db import queries  # noqa: E402
from polycopy_actors.observe import HealthState  # noqa: E402
from polycopy_actors.simulator import SimConfig, Simulator, World  # noqa: E402


def sweep_throughput(n: int) -> dict[str, float]:
    world = World(seed=3, markets=10, wallets=n)
    for _ in range(n * 3):
        world.step()
    sim = Simulator(world, SimConfig(seed=3)).start()
    settings = load_settings(env="development", environ={}, overrides={
        "metrics": {"port": 0}, "logging": {"summary_interval_seconds": 0},
        "api": {"data_api_url": sim.base_url, "gamma_api_url": sim.base_url},
        "tiers": {"cold": {"jitter_seconds": 0}},
    })
    with scratch_database() as dsn:
        with psycopg.connect(dsn) as conn:
            queries.add_traders(conn, world.wallets)
        health = HealthState(60, 1000)
        loop = SweepLoop(settings, "cold", dsn, _in_process(settings, "cold", dsn, health), once=True)
        started = time.monotonic()
        code = loop.run(threading.Event())
        elapsed = time.monotonic() - started
        with psycopg.connect(dsn) as conn:
            swept = conn.execute("SELECT wallets FROM cold_sweeps WHERE outcome = 'completed'").fetchone()
    requests = sim.log.snapshot()["total"]
    sim.stop()
    assert code == 0 and swept == (n,), (code, swept)
    per_wallet = requests / n
    return {"seconds": elapsed, "per_wallet": per_wallet, "wallets_per_hour": n / elapsed * 3600,
            "ceiling": 5 * 3600 / per_wallet}


def _fill(dsn: str, n: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO traders (wallet, active) SELECT '0x' || substr(md5(i::text) || md5((-i)::text), 1, 40), "
            "true FROM generate_series(1, %s) AS i", (n,))
        conn.execute(
            "INSERT INTO wallet_poll_state (wallet, tier, last_polled_at, last_success_at, last_trade_at) "
            "SELECT wallet, 'cold', now() - interval '2 hours', now() - interval '2 hours', "
            "now() - interval '3 hours' FROM traders")
        conn.execute(  # one open position for every fifth wallet
            "INSERT INTO positions_current (wallet, asset, condition_id, size, avg_price, cur_price, outcome, "
            "outcome_index, title, redeemable, opened_at) SELECT wallet, (100000 + row_number() OVER ())::text, "
            "'0x' || md5(wallet) || md5(wallet || 'x'), 12.5, 0.41, 0.44, 'Yes', 0, 'A market title of some length', "
            "false, now() FROM traders WHERE ('x' || substr(wallet, 3, 8))::bit(32)::int % 5 = 0")


def rss_holding(n: int, tmp: Path, sim_url: str) -> int:
    """VmRSS (bytes) of a cold tier process once its pollers hold ``n`` wallets."""
    with scratch_database() as dsn:
        _fill(dsn, n)
        cfg = tmp / "stall.yaml"
        cfg.write_text(yaml.safe_dump({
            "metrics": {"port": 0}, "logging": {"summary_interval_seconds": 0},
            "tiers": {"cold": {"rate_limit": {"requests_per_second": 0.001, "burst": 1}, "jitter_seconds": 0}},
        }))
        env = {"DATABASE_URL": dsn, "POLYCOPY_DATA_API_URL": sim_url, "POLYCOPY_GAMMA_API_URL": sim_url,
               "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen([sys.executable, "-m", "polycopy_actors", "--tier", "cold", "--once", "--config",
                                 str(cfg)], env=env, stderr=subprocess.PIPE, text=True)
        loaded = 0
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                m = re.search(r"poller-\d+: (\d+) wallets \(\+(\d+)", line)
                if m:
                    loaded += int(m.group(2))
                if loaded >= n:
                    break
            time.sleep(2)  # let the allocator settle after the last load
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
        finally:
            proc.kill()
            proc.wait(timeout=30)
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-wallets", type=int, default=60)
    parser.add_argument("--rss-wallets", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    r = sweep_throughput(args.sweep_wallets)
    print(f"sweep of {args.sweep_wallets} wallets at 5 req/s: {r['seconds']:.1f} s, {r['per_wallet']:.2f} requests "
          f"per wallet, {r['wallets_per_hour']:,.0f} wallets/hour ({r['wallets_per_hour'] / r['ceiling']:.2f} x the "
          f"budget's ceiling of {r['ceiling']:,.0f})")
    sim = Simulator(World(seed=1, markets=2, wallets=2), SimConfig(seed=1)).start()
    try:
        tmp = Path(f"/tmp/polycopy-bench-{time.time_ns()}")
        tmp.mkdir()
        base_n = 100
        base = rss_holding(base_n, tmp, sim.base_url)
        print(f"RSS holding {base_n:>7,} wallets: {base / 2**20:7.1f} MiB (baseline)")
        for n in args.rss_wallets:
            rss = rss_holding(n, tmp, sim.base_url)
            print(f"RSS holding {n:>7,} wallets: {rss / 2**20:7.1f} MiB, {rss / base:4.1f} x baseline, "
                  f"{(rss - base) / (n - base_n):,.0f} bytes per wallet")
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
