"""Hot-tier freshness measured from the match: seconds from a fill being matched to its row in
``trades_public``, for 10, 100 and 1,000 followed wallets at the default hot budget (10 req/s,
burst 20), by detection path, in one run:

- ``stream``  — the RTDS stream, confirmed by the global feed, wallets read on demand (the default);
- ``feed``    — the stream down: the global feed alone detects trades;
- ``polling`` — stream and feed off: every wallet polled continuously (the per-wallet path; the baseline).

    python bench/bench_freshness.py [--wallets 10 100 1000] [--seconds 60] [--modes stream feed polling]

The simulator shows a fill on the stream 2 s after the match, on a wallet's feed 5 s after it and on
the global feed 7 s after it (the live delays in ``polymarket-api.md``), and 2,000 other traders fill
40 times a second (the platform's flow the stream and the feed carry). Real PostgreSQL, the
simulator over HTTP and websocket, the real actor tree in this process. Prints p50/p95/p99, the
fills not stored within ``--grace`` seconds after the run, the request rate, and each p95 against
the ``polling`` p95 at the same size (the baseline of this run).
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

MODES = ("stream", "feed", "polling")


def measure(n: int, mode: str, seconds: float, events_per_second: float, grace: float) -> dict[str, float]:
    world = World(seed=n, markets=12, wallets=n)
    sim = Simulator(world, SimConfig(seed=n, stream_delay_seconds=2.0, user_feed_delay_seconds=5.0,
                                     global_feed_delay_seconds=7.0)).start()
    assert sim.rtds is not None
    settings = load_settings(env="development", environ={}, overrides={
        "metrics": {"port": 0}, "logging": {"summary_interval_seconds": 0, "level": "WARNING"},
        "api": {"data_api_url": sim.base_url, "gamma_api_url": sim.base_url},
        "stream": {"url": sim.rtds_url if mode == "stream" else ""},
        "feed": {"enabled": mode != "polling"},
    })
    with scratch_database() as dsn:
        with psycopg.connect(dsn) as conn:
            queries.follow(conn, world.wallets, "bench")
        system = ActorSystem(settings, "hot", dsn)
        stop = threading.Event()
        runner = threading.Thread(target=system.run, args=(stop,), daemon=True)
        runner.start()
        sim.drive(1 / events_per_second, background_wallets=2000, background_fills_per_second=40)
        time.sleep(10)  # warm-up: the stream connects, the feed finds its place, first reads
        first_seq, requests_before, started = world.seq, sim.log.snapshot()["total"], time.monotonic()
        time.sleep(seconds)
        sim.stop_driver()
        followed = set(world.wallets)
        born = {(f.tx, f.asset, f.side): f.matched_at for f in list(world.fills)
                if f.seq > first_seq and f.wallet in followed}
        rate = (sim.log.snapshot()["total"] - requests_before) / (time.monotonic() - started)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with psycopg.connect(dsn) as conn:
                rows = conn.execute("SELECT transaction_hash, asset, side, extract(epoch FROM created_at)::float8 "
                                    "FROM trades_public").fetchall()
            if sum(1 for tx, asset, side, _ in rows if (tx, asset, side) in born) >= len(born):
                break
            time.sleep(1)
        stop.set()
        runner.join(timeout=30)
    sim.stop()
    lags = [created - born[(tx, asset, side)] for tx, asset, side, created in rows if (tx, asset, side) in born]
    return {"trades": len(lags), "missing": len(born) - len(lags), "rate": rate,
            "p50": percentile(lags, 0.5), "p95": percentile(lags, 0.95), "p99": percentile(lags, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wallets", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--events-per-second", type=float, default=4)
    parser.add_argument("--grace", type=float, default=60, help="seconds the last fills may take to land")
    args = parser.parse_args()
    print(f"{'wallets':>7} {'mode':>8} {'fills':>6} {'late':>5} {'req/s':>6} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
          f"{'p95 / polling p95':>18}")
    for n in args.wallets:
        results = {mode: measure(n, mode, args.seconds, args.events_per_second, args.grace) for mode in args.modes}
        base = results.get("polling")
        for mode, r in results.items():
            ratio = f"{r['p95'] / base['p95']:18.2f}" if base and base["p95"] else f"{'-':>18}"
            print(f"{n:>7} {mode:>8} {r['trades']:>6} {r['missing']:>5} {r['rate']:6.1f} {r['p50']:7.2f} "
                  f"{r['p95']:7.2f} {r['p99']:7.2f} {ratio}", flush=True)


if __name__ == "__main__":
    main()
