"""Fault injection (issue "Reliability"): kills, database outages, API faults, crashing actors.

Each test is bounded in time and in the number of faults, stops by itself, and ends by comparing
the database with the simulator's ground truth: nothing lost, nothing duplicated, no wrong row.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

import psycopg
import pykka
import pytest

from polycopy_actors.actors.limiter import RateLimiterActor
from polycopy_actors.actors.messages import Crash
from polycopy_actors.simulator import Faults, Simulator, World
from tests.helpers import (
    Proc,
    Running,
    cli_env,
    converged,
    db_closes,
    db_trades,
    deep_merge,
    fast_settings,
    fast_timings,
    follow,
    free_port,
    healthz,
    report,
    started_world,
    track_from_now,
    truth_trades,
    wait_for,
    write_config,
)


def busy_world(seed: int, wallets: int = 6) -> tuple[World, Simulator]:
    return started_world(seed, 6, wallets, 30)


def hot_config(tmp_path: Any, name: str = "hot.yaml", **extra: Any) -> Any:
    data = deep_merge(fast_timings(), {"writer": {"flush_interval_seconds": 0.2},
                                       "tiers": {"hot": {"rate_limit": {"requests_per_second": 30}}}})
    data.update(extra)
    return write_config(tmp_path / name, data)


@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(db, tmp_path):
    rng = random.Random(20261124)
    world, sim = busy_world(51)
    followed = world.wallets[:5]
    follow(db, followed)
    track_from_now(world)
    sim.drive(0.05)
    cfg, env = hot_config(tmp_path), cli_env(db, sim)
    kills = 0
    try:
        for _ in range(10):
            proc = Proc(["--tier", "hot", "--config", str(cfg)], env)
            # A random moment: during start-up, mid-poll, mid-flush (seeded, so a failure replays).
            threading.Event().wait(rng.uniform(0.3, 3.0))
            proc.popen.send_signal(signal.SIGKILL)
            proc.kill()
            assert proc.popen.returncode == -signal.SIGKILL
            kills += 1
        sim.stop_driver()
        final = Proc(["--tier", "hot", "--config", str(cfg)], env)
        try:
            wait_for(lambda: converged(db, world, followed, exact_closes=False), 60,
                     "database == ground truth after the kills", lambda: report(db, world, followed))
        finally:
            final.popen.send_signal(signal.SIGTERM)
            assert final.wait(20) == 0, final.log
    finally:
        sim.stop()
    assert kills == 10
    assert db_trades(db) == truth_trades(world, followed)  # every trade exactly once
    assert sum(db_closes(db).values()) > 0


def _outage(admin_dsn: str, dbname: str, seconds: float) -> None:
    """The database refuses connections and loses every session for ``seconds``."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')  # noqa: S608 - test's own name
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_backend_pid()", (dbname,))
            threading.Event().wait(0.5)
        conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')  # noqa: S608


def _dbname(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]


@pytest.mark.timeout(180)
def test_database_outage_keeps_the_batch_and_recovers(db, pg_server, tmp_path):
    world, sim = busy_world(52)
    followed = world.wallets[:4]
    follow(db, followed)
    track_from_now(world)
    sim.drive(0.1)
    port = free_port()
    cfg = hot_config(tmp_path, metrics={"port": port, "host": "127.0.0.1"},
                     db={"give_up_seconds": 60, "connect_timeout_seconds": 1})
    run = Proc(["--tier", "hot", "--config", str(cfg)], cli_env(db, sim))
    try:
        wait_for(lambda: db_trades(db), 30, "first trades")
        assert healthz(port)[0] == 200
        outage = threading.Thread(target=_outage, args=(pg_server, _dbname(db), 10))
        outage.start()
        status, body = wait_for(lambda: (h := healthz(port))[0] == 503 and h, 15, "/healthz to report the outage")
        assert "database" in body["reason"]
        outage.join(timeout=30)
        wait_for(lambda: healthz(port)[0] == 200, 30, "/healthz back to 200")
        assert run.popen.poll() is None  # the process rode it out
        sim.stop_driver()
        wait_for(lambda: converged(db, world, followed, exact_closes=False), 60, "database == ground truth",
                 lambda: report(db, world, followed))
    finally:
        run.popen.send_signal(signal.SIGTERM)
        code = run.wait(20)
        sim.stop()
    assert code == 0, run.log
    assert run.has("failed") and run.has("database reachable again"), run.log


@pytest.mark.timeout(120)
def test_database_down_past_give_up_ends_the_process_with_code_3(db, pg_server, tmp_path):
    world, sim = busy_world(53)
    follow(db, world.wallets[:3])
    sim.drive(0.05)
    cfg = hot_config(tmp_path, db={"give_up_seconds": 3, "connect_timeout_seconds": 1})
    run = Proc(["--tier", "hot", "--config", str(cfg)], cli_env(db, sim))
    outage = threading.Thread(target=_outage, args=(pg_server, _dbname(db), 15))
    try:
        wait_for(lambda: db_trades(db), 30, "first trades")
        outage.start()
        code = run.wait(40)
    finally:
        outage.join(timeout=30)
        sim.stop()
    assert code == 3, run.log
    assert run.has("database unreachable for more than 3 s")
    assert "Traceback" not in run.log


@pytest.mark.timeout(180)
def test_api_faults_back_off_keep_healthy_wallets_and_stay_in_budget(db):
    world, sim = busy_world(54, wallets=8)
    followed = world.wallets[:6]
    faulty, healthy = frozenset(followed[:3]), followed[3:]
    follow(db, followed)
    track_from_now(world)
    rps, burst = 12.0, 8
    # The per-wallet path (what runs while the global feed is down) under faults; the feed's own faults:
    # tests/test_stream_feed.py.
    s = fast_settings(sim, api={"timeout_seconds": 0.5, "max_retries": 2}, feed={"enabled": False},
                      tiers={"hot": {"rate_limit": {"requests_per_second": rps, "burst": burst}}})
    started = time.time()
    with Running(s, db) as run:
        # 1. Half the wallets fail: 5xx, timeouts, malformed bodies and items, slow answers.
        sim.set_faults(Faults(error_rate=0.1, timeout_rate=0.05, hang_seconds=1.0, malformed_json_rate=0.05,
                              malformed_item_rate=0.05, latency_seconds=0.02, wallets=faulty))
        sim.drive(0.1, max_events=40)
        wait_for(lambda: sim.log.snapshot()["status"].get(500, 0) >= 3, 30, "server errors to be served")
        wait_for(lambda: converged(db, world, healthy, exact_closes=False), 60, "the healthy wallets to keep up",
                 lambda: report(db, world, healthy))
        # 2. A 429 storm for everyone: the simulator's limits cut 40-fold for a while.
        normal = dict(sim.config.limits)
        sim.config.limits = {k: max(1, v // 40) for k, v in normal.items()}
        wait_for(lambda: sim.log.snapshot()["status"].get(429, 0) >= 3, 30, "429 answers")
        sim.config.limits = normal
        # 3. Faults stop: everything converges.
        sim.set_faults(Faults())
        wait_for(lambda: converged(db, world, followed, exact_closes=False), 60, "ground truth once faults stop",
                 lambda: report(db, world, followed))
        wait_for(lambda: not any(errors_by_wallet(db).values()), 20, "every wallet polling cleanly again")
    elapsed = time.time() - started
    assert run.code == 0
    stats = sim.log.snapshot()
    # Every request the simulator saw came through the tier's bucket (429s and faults included).
    assert stats["total"] <= burst + rps * elapsed + 2, (stats["total"], elapsed)
    assert sim.log.max_in_window(5.0) <= burst + rps * 5 + 2
    assert set(errors_by_wallet(db)) == set(followed)


def errors_by_wallet(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT wallet, consecutive_errors FROM wallet_poll_state").fetchall())


@pytest.mark.timeout(120)
def test_crashed_rate_limiter_is_restarted_and_work_resumes(db):
    world, sim = busy_world(55)
    followed = world.wallets[:3]
    follow(db, followed)
    track_from_now(world)
    try:
        with Running(fast_settings(sim), db) as run:
            wait_for(lambda: converged(db, world, followed), 30, "initial state")
            old = pykka.ActorRegistry.get_by_class(RateLimiterActor)[0]
            old.tell(Crash("injected limiter crash"))
            wait_for(lambda: (a := pykka.ActorRegistry.get_by_class(RateLimiterActor)) and a[0] != old, 10,
                     "a new rate limiter")
            for _ in range(10):
                world.step()
            wait_for(lambda: converged(db, world, followed, exact_closes=False), 30, "work resumed after the crash")
        assert run.code == 0
    finally:
        sim.stop()
