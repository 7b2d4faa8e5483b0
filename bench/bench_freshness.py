"""Hot-tier freshness: seconds from a trade happening to its row in ``trades_public``, for 10, 50
and 200 followed wallets under the default hot budget (10 req/s, burst 20, polls every 1-3 s).

    python bench/bench_freshness.py [--wallets 10 50 200] [--seconds 40]

Real PostgreSQL, the simulator over HTTP, the real actor tree in this process. Prints p50/p95/p99
per size and the ratio of each p50 to the smallest size's p50 (the baseline of this run).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import percentile, scratch_database  # noqa: E402
from polycopy_actors.actors.tree import ActorSystem  # noqa: E402
from polycopy_actors.config import load_settings  # noqa: E402
from polycopy_actors.db import queries  # noqa: E402
from polycopy_actors.simulator import SimConfig, Simulator, World  # noqa: E402


def measure(n: int, seconds: float, events_per_second: float) -> dict[str, float]:
    world = World(seed=n, markets=12, wallets=n)
    for _ in range(n):
        world.step()
    sim = Simulator(world, SimConfig(seed=n)).start()
    settings = load_settings(env="development", environ={}, overrides={
        "metrics": {"port": 0}, "logging": {"summary_interval_seconds": 0},
        "api": {"data_api_url": sim.base_url, "gamma_api_url": sim.base_url},
    })
    born: dict[tuple[str, str, str], float] = {}
    with scratch_database() as dsn:
        with psycopg.connect(dsn) as conn:
            queries.follow(conn, world.wallets, "bench")
        system = ActorSystem(settings, "hot", dsn)
        stop = threading.Event()
        runner = threading.Thread(target=system.run, args=(stop,), daemon=True)
        runner.start()
        # Warm up: every wallet's history landed once.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with psycopg.connect(dsn) as conn:
                polled = conn.execute("SELECT count(*) FROM wallet_poll_state WHERE last_success_at IS NOT NULL"
                                      ).fetchone()[0]
            if polled == n:
                break
            time.sleep(0.5)
        requests_before, started = sim.log.snapshot()["total"], time.monotonic()
        end = started + seconds
        while time.monotonic() < end:
            before = len(world.fills)
            world.step()
            now = time.time()
            for f in world.fills[before:]:
                born[(f.tx, f.asset, f.side)] = now
            time.sleep(1 / events_per_second)
        # Let the last trades land (bounded), then stop.
        time.sleep(min(30.0, 5 + n * 0.25))
        stop.set()
        runner.join(timeout=30)
        rate = (sim.log.snapshot()["total"] - requests_before) / (time.monotonic() - started)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT transaction_hash, asset, side, extract(epoch FROM created_at)::float8 "
                                "FROM trades_public").fetchall()
    sim.stop()
    lags = [created - born[(tx, asset, side)] for tx, asset, side, created in rows if (tx, asset, side) in born]
    return {"trades": len(lags), "missing": len(born) - len(lags), "rate": rate,
            "p50": percentile(lags, 0.5), "p95": percentile(lags, 0.95), "p99": percentile(lags, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wallets", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--events-per-second", type=float, default=4)
    args = parser.parse_args()
    print(f"{'wallets':>7} {'trades':>7} {'late':>5} {'req/s':>6} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
          f"{'p50 x base':>10}")
    base = None
    for n in args.wallets:
        r = measure(n, args.seconds, args.events_per_second)
        base = base or r["p50"]
        print(f"{n:>7} {r['trades']:>7} {r['missing']:>5} {r['rate']:6.1f} {r['p50']:7.2f} {r['p95']:7.2f} "
              f"{r['p99']:7.2f} {r['p50'] / base:10.1f}")


if __name__ == "__main__":
    main()
