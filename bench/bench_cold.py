"""Cold tier: wallets kept current per hour per req/s, event-driven (``schedule: events``, the default)
against the per-wallet sweep in the same run, for 2,000 and 20,000 traders; and the memory (RSS) of a
cold tier holding 10k and 100k wallets' state.

    python bench/bench_cold.py [--traders 2000 20000] [--seconds 120] [--fills-per-second 1]
                               [--sweep-wallets 60] [--rss-wallets 10000 100000]

Sweep (the baseline): one ``--once`` sweep of ``--sweep-wallets`` in this process (real PostgreSQL,
simulator over HTTP) measures the requests a wallet costs; a sweep keeps a wallet current once per
pass, so at 5 req/s it keeps ``5 x 3600 / requests per wallet`` wallets current per hour.

Event-driven: the cold tier on events for ``--seconds`` with N traders (read before: no backfill)
of whom some trade (``--fills-per-second`` in all, the stream off: the global feed detects them),
then until the database equals the ground truth (every trade stored, positions right, closes right).
It prints the requests per second it spent, the share of the 5 req/s budget left, the p95 from the
match to the row, and the budget the sweep would need to keep the same wallets current once an hour. Memory: ``python -m
polycopy_actors --tier cold --once`` as a child, stalled by a tiny budget after loading every
wallet (schedule, cursor, open positions); RSS per wallet against a 100-wallet baseline.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import percentile, scratch_database  # noqa: E402
from polycopy_actors.app.run import ProcessHealth, _in_process  # noqa: E402
from polycopy_actors.app.sweep import SweepLoop  # noqa: E402
from polycopy_actors.config import load_settings  # noqa: E402
from polycopy_actors.db import queries  # noqa: E402
from polycopy_actors.simulator import SimConfig, Simulator, World  # noqa: E402


def sweep_throughput(n: int) -> dict[str, float]:
    world = World(seed=3, markets=10, wallets=n)
    for _ in range(n * 3):
        world.step()
    sim = Simulator(world, SimConfig(seed=3)).start()
    settings = load_settings(env="development", environ={}, overrides={
        "metrics": {"port": 0}, "logging": {"summary_interval_seconds": 0},
        "api": {"data_api_url": sim.base_url, "gamma_api_url": sim.base_url},
        "tiers": {"cold": {"jitter_seconds": 0, "schedule": "sweep"}}, "stream": {"url": ""},
    })
    with scratch_database() as dsn:
        with psycopg.connect(dsn) as conn:
            queries.add_traders(conn, world.wallets)
        loop = SweepLoop(settings, "cold", dsn, _in_process(settings, "cold", dsn, ProcessHealth()), once=True)
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


def events_run(n: int, seconds: float, fills_per_second: float) -> dict[str, float]:
    """The cold tier on events with ``n`` traders (see the module docstring)."""
    world = World(seed=n, markets=12, wallets=n)
    traders = list(world.wallets)
    sim = Simulator(world, SimConfig(seed=n, user_feed_delay_seconds=5, global_feed_delay_seconds=7)).start()
    settings = load_settings(env="development", environ={}, overrides={
        "metrics": {"port": 0}, "logging": {"summary_interval_seconds": 0, "level": "WARNING"},
        "api": {"data_api_url": sim.base_url, "gamma_api_url": sim.base_url}, "stream": {"url": ""},
    })
    rng = random.Random(n)
    with scratch_database() as dsn:
        with psycopg.connect(dsn) as conn:
            queries.add_traders(conn, traders)
            conn.execute("INSERT INTO wallet_poll_state (wallet, tier, last_polled_at, last_success_at) "
                         "SELECT wallet, 'cold', now(), now() FROM traders")
        loop = SweepLoop(settings, "cold", dsn, _in_process(settings, "cold", dsn, ProcessHealth()), once=False)
        stop = threading.Event()
        runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        runner.start()
        time.sleep(5)
        requests0, started = sim.log.snapshot()["total"], time.monotonic()
        matched: dict[tuple[str, str, str], float] = {}
        end = started + seconds
        while time.monotonic() < end:
            with world.lock:
                held = [p for p in world.positions.values() if p.last_event_at < time.time() - 30]
                if held and rng.random() < 0.4:
                    p = rng.choice(held)
                    f = world.trade(p.wallet, p.market, p.outcome_index, "SELL", p.size)
                else:
                    f = world.trade(rng.choice(traders), rng.choice(world.open_markets()), rng.randint(0, 1), "BUY",
                                    rng.randint(1, 50))
                matched[(f.tx, f.asset, f.side)] = f.matched_at
            time.sleep(1 / fills_per_second)
        spent = (sim.log.snapshot()["total"] - requests0) / (time.monotonic() - started)
        deadline, current = time.monotonic() + 300, False
        while time.monotonic() < deadline and not current:
            with psycopg.connect(dsn) as conn:
                trades = conn.execute("SELECT count(*) FROM trades_public").fetchone()[0]
                positions = conn.execute("SELECT count(*) FROM positions_current").fetchone()[0]
                closes = conn.execute("SELECT count(*) FROM positions_closed").fetchone()[0]
            with world.lock:
                current = (trades, positions, closes) == (len(world.fills), len(world.positions), len(world.closes))
            time.sleep(1)
        caught_up = time.monotonic() - end
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT transaction_hash, asset, side, extract(epoch FROM created_at)::float8 "
                                "FROM trades_public").fetchall()
        stop.set()
        runner.join(timeout=30)
    sim.stop()
    lags = [created - matched[(tx, a, side)] for tx, a, side, created in rows if (tx, a, side) in matched]
    return {"spent": spent, "current": current, "caught_up": caught_up, "p95": percentile(lags, 0.95),
            "fills": len(matched)}


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
    parser.add_argument("--traders", type=int, nargs="*", default=[2000, 20_000])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--fills-per-second", type=float, default=1.0)
    parser.add_argument("--rss-wallets", type=int, nargs="*", default=[10_000, 100_000])
    args = parser.parse_args()
    r = sweep_throughput(args.sweep_wallets)
    per_rps = r["ceiling"] / 5
    print(f"sweep of {args.sweep_wallets} wallets at 5 req/s: {r['seconds']:.1f} s, {r['per_wallet']:.2f} requests "
          f"per wallet, {r['wallets_per_hour']:,.0f} wallets/hour ({r['wallets_per_hour'] / r['ceiling']:.2f} x the "
          f"budget's ceiling of {r['ceiling']:,.0f}): {per_rps:,.0f} wallets current per hour per req/s (baseline)")
    for n in args.traders:
        e = events_run(n, args.seconds, args.fills_per_second)
        print(f"events, {n:,} traders, {e['fills']} fills in {args.seconds:.0f} s: {e['spent']:.2f} req/s spent "
              f"({(1 - e['spent'] / 5) * 100:.0f} % of 5 req/s left), "
              f"{'current' if e['current'] else 'NOT current'} {e['caught_up']:.0f} s after the last fill, "
              f"p95 match->row {e['p95']:.1f} s: all {n:,} current within seconds at {e['spent']:.2f} req/s, where "
              f"the sweep needs {n * r['per_wallet'] / 3600:.1f} req/s to keep them current once an hour "
              f"({n * r['per_wallet'] / 3600 / e['spent']:.1f} x)", flush=True)
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
