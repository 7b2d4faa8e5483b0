"""The cold tier on events (its default schedule), as users run it: ``python -m polycopy_actors --tier
cold`` holds the ``cold_sweep`` lock for its whole run, the global feed detects every cold trader's trades
and wallets are read on demand — real PostgreSQL, the simulator over HTTP, real processes."""

from __future__ import annotations

import random
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from polycopy_actors.db import queries
from polycopy_actors.simulator import SimConfig, Simulator, World
from polycopy_actors.simulator.world import SimMarket
from tests.helpers import (
    Proc,
    cli_env,
    converged,
    db_closes,
    deep_merge,
    fast_timings,
    report,
    tracked_closes,
    wait_for,
    write_config,
)


def events_config(tmp_path: Path) -> Path:
    """The cold tier's default budget (5 req/s, burst 10) and schedule (events), quicker timers."""
    data = deep_merge(fast_timings(), {
        "tiers": {"cold": {"refresh_interval_seconds": 2, "wallet_cooldown_seconds": 1, "lock_ttl_seconds": 6}},
        "reconcile": {"after_trade_delay_seconds": 1, "redeemable_interval_seconds": 3,
                      "market_watch_interval_seconds": 2, "safety_cycle_min_seconds": 60,
                      "safety_cycle_share": 0.1},
        "feed": {"interval_seconds": 2},
    })
    return write_config(tmp_path / "cold-events.yaml", data)


class Market:
    """A driver of 2,000 traders, one event a second (what the 5 req/s budget reconciles with room left):
    they buy, and sell (half the time all of it) what they bought more than 15 s ago; every 20 s the
    market set aside 20 s earlier (no purchases since) resolves, and its holders are redeemed
    automatically 6 s later. So every position that closes was on view long enough to be read."""

    def __init__(self, world: World, traders: list[str], seed: int) -> None:
        self.world, self.traders, self.rng = world, traders, random.Random(seed)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.aside: SimMarket | None = None
        self.resolved: SimMarket | None = None

    def run(self) -> None:
        n = 0
        while not self.stop.wait(1.0):
            n += 1
            w = self.world
            with w.lock:
                markets = [m for m in w.open_markets() if m is not self.aside]
                if len(markets) < 4:
                    markets.append(w.add_market())
                held = [p for p in w.positions.values() if not p.market.closed and p.last_event_at < time.time() - 15]
                if held and self.rng.random() < 0.4:
                    p = self.rng.choice(held)
                    w.trade(p.wallet, p.market, p.outcome_index, "SELL", p.size if self.rng.random() < 0.5
                            else (p.size / 2).quantize(Decimal("0.01")))
                else:
                    w.trade(self.rng.choice(self.traders), self.rng.choice(markets), self.rng.randint(0, 1), "BUY",
                            self.rng.randint(1, 50))
                if n % 20 == 0:
                    if self.aside is not None:
                        w.resolve(self.aside, self.rng.randint(0, 1))
                        self.resolved = self.aside
                    self.aside = max(markets, key=lambda m: sum(1 for p in w.positions.values() if p.market is m))
                elif n % 20 == 6 and self.resolved is not None:
                    w.auto_redeem(self.resolved)
                    self.resolved = None


@pytest.mark.timeout(300)
def test_two_thousand_cold_traders_on_events_end_at_the_ground_truth_on_the_default_budget(db, tmp_path):
    world = World(seed=61, markets=6, wallets=2000)
    traders = list(world.wallets)
    sim = Simulator(world, SimConfig(seed=61, user_feed_delay_seconds=1, global_feed_delay_seconds=2)).start()
    with psycopg.connect(db) as conn:
        queries.add_traders(conn, traders)
        # Read before (nothing there yet): they join the safety-net cycle instead of a backfill of 2,000.
        conn.execute("INSERT INTO wallet_poll_state (wallet, tier, last_polled_at, last_success_at) "
                     "SELECT wallet, 'cold', now(), now() FROM traders")
    driver = Market(world, traders, 61)
    cfg = events_config(tmp_path)
    run = Proc(["--tier", "cold", "--config", str(cfg)], cli_env(db, sim, POLYCOPY_RTDS_URL=""))
    second = None
    try:
        wait_for(lambda: run.has("global feed healthy"), 30, "the cold tier tailing the feed", lambda: run.log)
        driver.thread.start()
        # A second instance waits for the lock: never two writers.
        second = Proc(["--tier", "cold", "--config", str(cfg)], cli_env(db, sim, POLYCOPY_RTDS_URL=""))
        wait_for(lambda: second.has("cold sweep lock held by"), 30, "the second instance waiting")
        wait_for(lambda: len(world.closes) >= 10 and any(c.reason == "redeemed" for c in world.closes), 120,
                 "sales, resolutions and redemptions")
        driver.stop.set()
        driver.thread.join(timeout=5)
        def explain() -> str:
            """What differs, and for each close not written: the wallet's fills and reads (times mod 1000 s)."""
            missing = tracked_closes(world, traders) - db_closes(db, traders)
            out = []
            for wallet, _asset, _ in missing:
                fills = [(round(f.matched_at % 1000, 1), f.side, str(f.size)) for f in world.fills
                         if f.wallet == wallet]
                reads = [(round(t % 1000, 1), r) for t, r, w in sim.log.times if w == wallet]
                out.append((wallet[:10], fills, reads))
            return report(db, world, traders) + f"; DETAIL {out}"
        wait_for(lambda: converged(db, world, traders), 120, "the ground truth", explain)
        written = db_closes(db, traders)
        total = sim.log.snapshot()["total"]
        elapsed = (sim.log.times[-1][0] - sim.log.times[0][0]) if sim.log.times else 1.0
        window = sim.log.max_in_window(10.0)
        with psycopg.connect(db) as conn:
            holder = queries.lock_holder(conn, "cold_sweep")
    finally:
        driver.stop.set()
        for proc in (run, second):
            if proc is not None:
                proc.popen.send_signal(signal.SIGTERM)
        sim.stop()
    assert run.wait(30) == 0, run.log
    assert second is not None and second.wait(30) == 0, second.log
    assert holder is not None and holder[0] in run.log
    # The default budget (5 req/s, burst 10), measured at the simulator; far fewer than a sweep of 2,000.
    assert window <= 5 * 10 + 10 + 2
    assert total < 2 * 2000, (total, elapsed)
    assert {reason for _, _, reason in written} == {"manual_close", "redeemed"}
    assert "Traceback" not in run.log + second.log
