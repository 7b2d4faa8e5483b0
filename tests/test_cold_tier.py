"""The cold tier end to end, as users run it (``python -m polycopy_actors --tier cold``): real
PostgreSQL, the simulator over HTTP, the ``cold_sweep`` lock between real processes."""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from polycopy_actors.db import queries
from polycopy_actors.simulator import World
from tests.helpers import (
    Proc,
    cli_env,
    db_trades,
    fast_timings,
    started_world,
    truth_trades,
    wait_for,
    write_config,
)

#: A progress line of a sweep of the 9 cold wallets that is under way (not its final line).
UNDER_WAY = r"cold sweep [4-8]/9 wallets"


def cold_config(tmp_path: Path, name: str = "cold.yaml", rps: float = 40, extra: dict[str, Any] | None = None,
                **cold: Any) -> Path:
    tier = {"rate_limit": {"requests_per_second": rps, "burst": 4}, "wallet_cooldown_seconds": 0.1,
            "sweep_interval_seconds": 2, "jitter_seconds": 0, "lock_ttl_seconds": 3,
            "refresh_interval_seconds": 0.5, "progress_every_wallets": 4}
    tier.update(cold)
    data = fast_timings()
    data["tiers"] = {"cold": tier}
    return write_config(tmp_path / name, {**data, **(extra or {})})


@pytest.fixture()
def cold_world(db: str) -> Any:
    """12 wallets with history: 9 active cold traders, 1 followed, 1 deactivated, 1 never added."""
    world, sim = started_world(5, 6, 12, 40)
    wallets = world.wallets
    with psycopg.connect(db) as conn:
        queries.add_traders(conn, wallets[:11])
        queries.follow(conn, [wallets[9]], "test")
        queries.deactivate_traders(conn, [wallets[10]])
    yield world, sim, wallets[:9], wallets[9:]
    sim.stop()


def sweeps(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT owner, started_at, coalesce(finished_at, lock_until), outcome, wallets "
                            "FROM cold_sweeps ORDER BY started_at").fetchall()


def assert_no_overlap(rows: list[tuple[Any, ...]]) -> None:
    for a, b in zip(rows, rows[1:], strict=False):
        assert a[2] <= b[1], f"sweeps overlap: {a} and {b}"


def polled(dsn: str) -> dict[str, datetime]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT wallet, last_polled_at FROM wallet_poll_state "
                                 "WHERE last_polled_at IS NOT NULL").fetchall())


def assert_exactly_once(dsn: str, world: World, wallets: list[str]) -> None:
    got = db_trades(dsn)
    assert got == truth_trades(world, wallets)
    with psycopg.connect(dsn) as conn:
        ids = conn.execute("SELECT count(*), count(DISTINCT trade_id) FROM trades_public").fetchone()
    assert ids is not None and ids[0] == ids[1] == sum(got.values())


@pytest.mark.timeout(90)
def test_two_once_runs_started_together_sweep_once(db, cold_world, tmp_path):
    world, sim, cold, others = cold_world
    cfg = cold_config(tmp_path, rps=6)  # ~3 s sweep: both runs are surely alive at the same time
    env = cli_env(db, sim)
    runs = [Proc(["--tier", "cold", "--once", "--config", str(cfg)], env) for _ in range(2)]
    codes = [r.wait(60) for r in runs]
    assert codes == [0, 0], "\n".join(r.log for r in runs)
    swept = [r for r in runs if r.has("cold sweep completed")]
    idle = [r for r in runs if r.has("cold sweep lock held by")]
    assert len(swept) == 1 and len(idle) == 1, "\n".join(r.log for r in runs)
    assert not idle[0].has("cold sweep completed")
    rows = sweeps(db)
    assert [(r[3], r[4]) for r in rows] == [("completed", len(cold))]
    assert_exactly_once(db, world, cold)
    assert set(polled(db)) == set(cold)  # followed, inactive and unknown wallets never swept
    assert swept[0].search(rf"cold sweep [4-{len(cold)}]/{len(cold)} wallets, [\d.]+ req/s, ETA ")
    with psycopg.connect(db) as conn:
        assert queries.lock_holder(conn, "cold_sweep") is None  # released at the end


@pytest.mark.timeout(90)
def test_sweep_longer_than_the_ttl_keeps_its_lock(db, cold_world, tmp_path):
    world, sim, cold, _ = cold_world
    cfg = cold_config(tmp_path, rps=3, lock_ttl_seconds=2)  # ~6 s sweep, 2 s lock
    env = cli_env(db, sim)
    holder = Proc(["--tier", "cold", "--once", "--config", str(cfg)], env)
    wait_for(lambda: sweeps(db), 30, "the sweep to start")
    started = sweeps(db)[0][1]
    # Past the TTL, the sweep goes on and another instance still finds the lock held.
    with psycopg.connect(db, autocommit=True) as conn:
        wait_for(lambda: float(conn.execute("SELECT extract(epoch FROM clock_timestamp() - %s)",
                                            (started,)).fetchone()[0]) > 3, 20, "the sweep to outlive its TTL")
    assert holder.popen.poll() is None, holder.log
    late = Proc(["--tier", "cold", "--once", "--config", str(cfg)], env)
    assert late.wait(30) == 0
    assert late.has("cold sweep lock held by") and not late.has("cold sweep completed"), late.log
    assert holder.wait(60) == 0, holder.log
    rows = sweeps(db)
    assert len(rows) == 1 and rows[0][3] == "completed"
    assert (rows[0][2] - rows[0][1]).total_seconds() > 2  # longer than the TTL, one lock throughout
    assert_exactly_once(db, world, cold)


@pytest.mark.timeout(120)
def test_lock_of_a_killed_holder_is_taken_over_after_its_ttl(db, cold_world, tmp_path):
    world, sim, cold, _ = cold_world
    cfg = cold_config(tmp_path, rps=3, lock_ttl_seconds=3)
    env = cli_env(db, sim)
    victim = Proc(["--tier", "cold", "--once", "--config", str(cfg)], env)
    wait_for(lambda: victim.search(UNDER_WAY), 30, "the victim's sweep to be under way")
    victim.popen.send_signal(signal.SIGKILL)
    victim.kill()
    # Before the TTL runs out, nobody may sweep.
    early = Proc(["--tier", "cold", "--once", "--config", str(cfg)], env)
    assert early.wait(30) == 0 and early.has("cold sweep lock held by"), early.log
    with psycopg.connect(db) as conn:
        wait_for(lambda: queries.lock_holder(conn, "cold_sweep") is None, 10, "the dead holder's lock to expire")
    taker = Proc(["--tier", "cold", "--once", "--config", str(cfg)], env)
    assert taker.wait(60) == 0, taker.log
    assert taker.has("cold sweep completed")
    rows = sweeps(db)
    assert [r[3] for r in rows] == [None, "completed"]  # the victim's row never finished
    assert_no_overlap(rows)
    assert_exactly_once(db, world, cold)


@pytest.mark.timeout(120)
def test_continuous_sweeps_follow_the_schedule_and_drop_followed_wallets(db, cold_world, tmp_path):
    world, sim, cold, _ = cold_world
    cfg = cold_config(tmp_path, sweep_interval_seconds=3, schedule="sweep")
    run = Proc(["--tier", "cold", "--config", str(cfg)], cli_env(db, sim))
    try:
        wait_for(lambda: len([r for r in sweeps(db) if r[3] == "completed"]) >= 1, 30, "a first sweep")
        with psycopg.connect(db) as conn:
            queries.follow(conn, [cold[0]], "test")  # it leaves the cold tier
        followed_at = polled(db)[cold[0]]
        wait_for(lambda: len([r for r in sweeps(db) if r[3] == "completed"]) >= 3, 40, "two more sweeps")
        assert run.has("next cold sweep in")
    finally:
        run.popen.send_signal(signal.SIGTERM)
    assert run.wait(20) == 0, run.log
    rows = sweeps(db)
    assert_no_overlap(rows)
    done = [r for r in rows if r[3] == "completed"]
    gaps = [(b[1] - a[1]).total_seconds() for a, b in zip(done, done[1:], strict=False)]
    assert all(g >= 3 for g in gaps), gaps  # one sweep per interval, never sooner
    assert polled(db)[cold[0]] == followed_at  # followed: never swept again
    assert all(polled(db)[w] >= done[-1][1] for w in cold[1:])
    with psycopg.connect(db) as conn:
        assert queries.lock_holder(conn, "cold_sweep") is None  # released on SIGTERM
    assert_exactly_once(db, world, cold)


@pytest.mark.timeout(90)
def test_discovery_adds_traders_seen_in_followed_markets(db, tmp_path):
    world, sim = started_world(9, 3, 6, 30)
    try:
        followed = world.wallets[0]
        with psycopg.connect(db) as conn:
            queries.follow(conn, [followed], "test")
            queries.add_traders(conn, [world.wallets[1]])
            queries.deactivate_traders(conn, [world.wallets[1]])
        hot = Proc(["--tier", "hot", "--once", "--config", str(cold_config(tmp_path))], cli_env(db, sim))
        assert hot.wait(60) == 0, hot.log
        cfg = cold_config(tmp_path, "disc.yaml", extra={"discovery": {"enabled": True}})
        cold = Proc(["--tier", "cold", "--once", "--config", str(cfg)], cli_env(db, sim))
        code = cold.wait(60)
    finally:
        sim.stop()
    assert code == 0, cold.log
    with psycopg.connect(db) as conn:
        markets = {r[0] for r in conn.execute("SELECT DISTINCT condition_id FROM trades_public WHERE wallet = %s",
                                              (followed,))}
        traders = dict(conn.execute("SELECT wallet, active FROM traders").fetchall())
    seen = {f.wallet for f in world.fills if f.market.condition_id in markets} - {followed}
    assert seen and set(traders) == seen | {world.wallets[1]}
    assert traders[world.wallets[1]] is False  # a deactivated trader stays deactivated
    assert cold.has("trader discovery:")


@pytest.mark.timeout(150)
def test_racing_once_runs_with_a_killed_holder_never_overlap(db, cold_world, tmp_path):
    world, sim, cold, _ = cold_world
    cfg = cold_config(tmp_path, rps=3, lock_ttl_seconds=2)  # sweeps of ~6 s cross the TTL twice
    env = cli_env(db, sim)
    # Round 1: five at once; the one that sweeps is SIGKILLed mid-sweep.
    runs = [Proc(["--tier", "cold", "--once", "--config", str(cfg)], env) for _ in range(5)]
    holder = wait_for(lambda: next((r for r in runs if r.search(UNDER_WAY)), None), 30, "a sweep under way")
    holder.popen.send_signal(signal.SIGKILL)
    holder.kill()
    others = [r for r in runs if r is not holder]
    assert [r.wait(30) for r in others] == [0] * 4, "\n".join(r.log for r in others)
    assert not any(r.has("cold sweep completed") for r in others)
    with psycopg.connect(db) as conn:
        wait_for(lambda: queries.lock_holder(conn, "cold_sweep") is None, 10, "the dead holder's lock to expire")
    # Round 2: five at once again; exactly one sweeps, past its TTL, to the end.
    runs = [Proc(["--tier", "cold", "--once", "--config", str(cfg)], env) for _ in range(5)]
    assert [r.wait(60) for r in runs] == [0] * 5, "\n".join(r.log for r in runs)
    assert sum(r.has("cold sweep completed") for r in runs) == 1
    rows = sweeps(db)
    assert [r[3] for r in rows] == [None, "completed"]
    assert_no_overlap(rows)
    assert_exactly_once(db, world, cold)
