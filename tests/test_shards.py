"""Shard processes (``--processes N``) as users run them: real processes, PostgreSQL, simulator."""

from __future__ import annotations

import os
import re
import signal

import psycopg
import pytest

from polycopy_actors.db import queries
from tests.helpers import (
    Proc,
    cli_env,
    db_trades,
    fast_timings,
    free_port,
    healthz,
    scrape,
    started_world,
    truth_trades,
    wait_for,
    write_config,
)

RPS, BURST = 6.0, 6


def polled_since(dsn: str, wallets: list[str], since: float) -> bool:
    with psycopg.connect(dsn) as conn:
        n = conn.execute("SELECT count(*) FROM wallet_poll_state WHERE wallet = ANY(%s) "
                         "AND last_polled_at > to_timestamp(%s)", (wallets, since)).fetchone()
    return n is not None and n[0] == len(wallets)


def db_now(dsn: str) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


@pytest.mark.timeout(150)
def test_three_hot_shards_split_the_tier_survive_sigkill_and_share_the_budget(db, tmp_path):
    world, sim = started_world(31, 5, 9, 40)
    followed = world.wallets[:7]
    with psycopg.connect(db) as conn:
        queries.follow(conn, followed, "test")
    port = free_port()
    cfg = write_config(tmp_path / "shards.yaml", {
        "processes": 3, "metrics": {"port": port, "host": "127.0.0.1"},
        "logging": {"summary_interval_seconds": 0}, "writer": {"flush_interval_seconds": 0.1},
        "pollers": {"pool_size": 2, "idle_wait_seconds": 0.05},
        "supervision": {"liveness_interval_seconds": 0.2},
        "tiers": {"hot": {"rate_limit": {"requests_per_second": RPS, "burst": BURST},
                          "poll_interval_seconds": {"min": 0.1, "max": 0.2}, "wallet_cooldown_seconds": 0.1,
                          "refresh_interval_seconds": 0.5}},
        # Each shard tails the feed; its wallets are read on demand as often as they would be polled.
        "reconcile": fast_timings()["reconcile"], "feed": fast_timings()["feed"],
    })
    run = Proc(["--tier", "hot", "--config", str(cfg)], cli_env(db, sim))
    try:
        start = db_now(db)
        wait_for(lambda: polled_since(db, followed, start), 60, "every followed wallet polled")
        # Each wallet belongs to exactly one shard and poller: their first wallet lists add up to the tier.
        def first_loads() -> dict[tuple[str, str], int]:
            out: dict[tuple[str, str], int] = {}
            for line in list(run.lines):
                m = re.search(r"\[shard-(\d)/3\] .*(poller-\d): \d+ wallets \(\+(\d+), -0\)", line)
                if m:
                    out.setdefault((m.group(1), m.group(2)), int(m.group(3)))
            return out

        loads = wait_for(lambda: (f := first_loads()) and sum(f.values()) == len(followed) and f, 20,
                         "the shards' wallet lists")
        assert {shard for shard, _ in loads} == {"1", "2", "3"}
        status, body = healthz(port)
        assert status == 200, body

        pid = int(wait_for(lambda: re.search(r"shard 2/3 started \(pid (\d+)\)", run.log), 10, "shard 2").group(1))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: run.has("shard 2 exited (signal 9): restarting it"), 20, "the parent to restart shard 2")
        killed_at = db_now(db)
        wait_for(lambda: polled_since(db, followed, killed_at), 60, "every wallet polled again after the kill")
        wait_for(lambda: db_trades(db) == truth_trades(world, followed), 30, "every trade landed")

        m = scrape(port)
        assert m[("polycopy_wallets", (("tier", "hot"),))] == len(followed)  # live shards only
        polls_ok = m[("polycopy_wallet_polls_total", (("result", "ok"), ("tier", "hot")))]
        positions_requests = sim.log.snapshot()["routes"]["/v2/positions"]
        assert len(followed) * 2 <= polls_ok <= positions_requests  # counted across shards, dead one included
        assert m[("polycopy_trades_upserted_total", (("tier", "hot"),))] == sum(db_trades(db).values())
        assert m[("polycopy_actor_restarts_total", (("actor", "shard"),))] == 1
    finally:
        run.popen.send_signal(signal.SIGTERM)
        code = run.wait(30)
        sim.stop()
    assert code == 0, run.log
    # The tier as a whole stayed within its budget (one restarted shard may bring a fresh burst share).
    worst = sim.log.max_in_window(5.0)
    assert worst <= RPS * 5 + BURST + BURST / 3 + 1, worst
    assert run.has("stopped after") and "Traceback" not in run.log


@pytest.mark.timeout(90)
def test_sharded_cold_sweep_lands_every_wallet_once(db, tmp_path):
    world, sim = started_world(32, 5, 10, 40)
    with psycopg.connect(db) as conn:
        queries.add_traders(conn, world.wallets)
    cfg = write_config(tmp_path / "cold.yaml", {
        "processes": 2, "metrics": {"port": 0}, "writer": {"flush_interval_seconds": 0.1},
        "tiers": {"cold": {"rate_limit": {"requests_per_second": 40, "burst": 10}, "jitter_seconds": 0,
                           "wallet_cooldown_seconds": 0.1}},
    })
    run = Proc(["--tier", "cold", "--once", "--config", str(cfg)], cli_env(db, sim))
    try:
        code = run.wait(60)
    finally:
        sim.stop()
    assert code == 0, run.log
    assert run.has("shard 1/2 finished its pass") and run.has("shard 2/2 finished its pass")
    assert run.has("cold sweep completed")
    assert db_trades(db) == truth_trades(world, world.wallets)
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT outcome, wallets FROM cold_sweeps").fetchall()
    assert rows == [("completed", len(world.wallets))]
