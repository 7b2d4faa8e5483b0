"""The stream filter's cost: CPU per RTDS message and the process's RSS, a hot tier of 1,000 followed
wallets with the platform's whole flow (50 fills/s by default) on the stream.

    python bench/bench_stream.py [--wallets 1000] [--fills-per-second 50] [--seconds 60]

1. In this process: parsing and filtering one frame (the StreamReader's per-message work without
   the socket), microseconds per frame over the simulator's own frames.
2. ``python -m polycopy_actors --tier hot`` as a child (real PostgreSQL, the simulator over HTTP and
   websocket in this process), once with the stream and once without it (the baseline: feed and
   wallet reads only), each measured over the same window after a warm-up: CPU seconds of the child
   (``/proc/PID/stat``), its RSS, and the stream frames it received. Per-message cost = (CPU with the
   stream - CPU without) / frames. The followed wallets start with a stored state (read before), so
   the window measures steady state, not their backfill.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import scratch_database  # noqa: E402
from polycopy_actors.api.models import assign_trade_ids  # noqa: E402
from polycopy_actors.api.rtds import parse_frame  # noqa: E402
from polycopy_actors.db import queries  # noqa: E402
from polycopy_actors.simulator import SimConfig, Simulator, World  # noqa: E402
from polycopy_actors.simulator.rtds import frame_of  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) / 1024


def filter_cost(world: World, followed: set[str], frames: int) -> float:
    """Microseconds to parse one frame and keep or drop it (no socket, no writer)."""
    fills = world.fills[-frames:]
    raw = [frame_of(f, "bench", early=True) for f in fills]
    started = time.perf_counter()
    kept = 0
    for text in raw:
        fill = parse_frame(text)
        if fill is not None and fill.wallet in followed:
            assign_trade_ids([fill])
            kept += 1
    return (time.perf_counter() - started) / len(raw) * 1e6


def run_child(sim: Simulator, dsn: str, stream: bool, warmup: float, seconds: float) -> dict[str, float]:
    assert sim.rtds is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLYCOPY_", "PROMETHEUS_"))}
    env.update(DATABASE_URL=dsn, POLYCOPY_DATA_API_URL=sim.base_url, POLYCOPY_GAMMA_API_URL=sim.base_url,
               POLYCOPY_RTDS_URL=sim.rtds_url if stream else "", POLYCOPY_METRICS_PORT="0",
               POLYCOPY_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "polycopy_actors", "--tier", "hot"], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(warmup)
        frames0, cpu0, t0 = sim.rtds.snapshot()["frames"], cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        frames, cpu, elapsed = (sim.rtds.snapshot()["frames"] - frames0, cpu_seconds(proc.pid) - cpu0,
                                time.monotonic() - t0)
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"cpu": cpu, "cpu_share": cpu / elapsed, "frames": frames if stream else 0, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wallets", type=int, default=1000)
    parser.add_argument("--fills-per-second", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=20)
    args = parser.parse_args()
    world = World(seed=5, markets=20, wallets=args.wallets)
    sim = Simulator(world, SimConfig(seed=5, stream_delay_seconds=0.5, user_feed_delay_seconds=5,
                                     global_feed_delay_seconds=7)).start()
    followed = set(world.wallets)
    try:
        # The followed wallets trade 2 events/s; 3,000 other traders make the rest of the platform's flow.
        sim.drive(0.5, background_wallets=3000, background_fills_per_second=args.fills_per_second)
        time.sleep(5)
        print(f"parse + filter of one frame (no socket): {filter_cost(world, followed, 2000):.1f} us")
        results = {}
        for stream in (False, True):
            with scratch_database() as dsn:
                with psycopg.connect(dsn) as conn:
                    queries.follow(conn, sorted(followed), "bench")
                    conn.execute("INSERT INTO wallet_poll_state (wallet, tier, last_polled_at, last_success_at) "
                                 "SELECT wallet, 'hot', now(), now() FROM follows ON CONFLICT (wallet) DO UPDATE "
                                 "SET last_polled_at = now(), last_success_at = now()")
                results[stream] = run_child(sim, dsn, stream, args.warmup, args.seconds)
        off, on = results[False], results[True]
        print(f"{args.wallets} followed wallets, platform flow {args.fills_per_second:g} fills/s, "
              f"{args.seconds:.0f} s window:")
        print(f"  without the stream: CPU {off['cpu_share'] * 100:5.1f} % of a core, RSS {off['rss']:6.1f} MiB "
              f"(baseline)")
        per = (on["cpu"] - off["cpu"]) / on["frames"] * 1e6 if on["frames"] else float("nan")
        print(f"  with the stream:    CPU {on['cpu_share'] * 100:5.1f} % of a core, RSS {on['rss']:6.1f} MiB "
              f"({on['rss'] / off['rss']:.2f} x), {on['frames']:,} frames ({on['frames'] / args.seconds:.0f}/s), "
              f"{per:.0f} us of CPU per frame")
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
