"""``python -m polycopy_actors.simulator --port PORT [--seed N] [--scenario NAME]``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from polycopy_actors.simulator import SimConfig, Simulator, World

SCENARIOS = ("busy", "quiet", "backlog")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polycopy_actors.simulator")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", choices=SCENARIOS, default="busy",
                        help="busy: random trading every 0.5 s; quiet: a fixed world; backlog: one wallet "
                             "with more trades than the v1 offset cap")
    parser.add_argument("--wallets", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between events (busy)")
    args = parser.parse_args(argv)
    world = World(seed=args.seed, wallets=args.wallets)
    for _ in range(40):
        world.step()
    if args.scenario == "backlog":
        world.backlog(world.wallets[0], 12_500)
    sim = Simulator(world, SimConfig(seed=args.seed), port=args.port).start()
    if args.scenario == "busy":
        sim.drive(args.interval)
    print(sim.base_url, flush=True)
    print("wallets: " + " ".join(world.wallets), file=sys.stderr, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
