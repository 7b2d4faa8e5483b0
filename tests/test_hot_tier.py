"""The hot tier end to end: real PostgreSQL, the simulator over HTTP, the real actor tree."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import psycopg
import pykka
import pytest

from polycopy_actors.actors.messages import Crash
from polycopy_actors.actors.poller import WalletPollerActor
from polycopy_actors.actors.writer import DbWriterActor
from polycopy_actors.db import queries
from polycopy_actors.observe import metrics
from polycopy_actors.simulator import Simulator, World
from tests.helpers import (
    Running,
    converged,
    db_closes,
    db_trades,
    fast_settings,
    follow,
    report,
    started_world,
    track_from_now,
    truth_trades,
    wait_for,
)


@pytest.fixture()
def world_sim():
    world, sim = started_world(21, 6, 8, 30)
    yield world, sim
    sim.stop()


def _script_every_close_reason(world: World, wallet: str) -> None:
    m_sell, m_redeem, m_archive, m_merge = (world.add_market() for _ in range(4))
    world.trade(wallet, m_sell, 0, "BUY", 10)
    world.trade(wallet, m_sell, 0, "SELL", 4)  # size changed
    world.trade(wallet, m_redeem, 1, "BUY", 7)
    world.trade(wallet, m_archive, 0, "BUY", 5)
    world.trade(wallet, m_merge, 0, "BUY", 3)
    return m_sell, m_redeem, m_archive, m_merge


@pytest.mark.timeout(120)
def test_followed_wallets_land_with_positions_and_every_close_reason(db, world_sim):
    world, sim = world_sim
    followed = world.wallets[:3]
    follow(db, followed)
    track_from_now(world)
    s = fast_settings(sim)
    with Running(s, db) as run:
        wait_for(lambda: converged(db, world, followed), 30, "the initial state")
        m_sell, m_redeem, m_archive, m_merge = _script_every_close_reason(world, followed[0])
        wait_for(lambda: converged(db, world, followed), 30, "the new positions")
        world.trade(followed[0], m_sell, 0, "SELL", 6)  # manual_close by selling
        world.resolve(m_redeem, 1)
        world.redeem(followed[0], m_redeem)  # redeemed
        world.resolve(m_archive, 1)
        world.archive(m_archive)  # vanished after resolution, no redeem: market_closed
        world.merge(followed[0], m_merge)  # vanished without a trade: manual_close
        wait_for(lambda: converged(db, world, followed), 40, "database == simulator ground truth")
        reasons = {r for (_w, _a, r) in db_closes(db)}
        assert {"manual_close", "redeemed", "market_closed"} <= reasons
        # Unfollowed and never-followed wallets are not polled.
        with psycopg.connect(db) as conn:
            queries.unfollow(conn, [followed[2]], None)
        time.sleep(0)  # (no wait needed: the next refresh drops it)
        wait_for(lambda: followed[2] not in sum((pykka.ActorRegistry.get_by_class(WalletPollerActor)[i].ask("wallets")
                                                for i in range(2)), []), 10, "the unfollowed wallet to be dropped")
    assert run.code == 0
    with psycopg.connect(db) as conn:
        polled = {r[0] for r in conn.execute("SELECT wallet FROM wallet_poll_state WHERE last_polled_at IS NOT NULL")}
        assert polled == set(followed)
    assert len(db_trades(db)) == sum(db_trades(db).values())  # no duplicate rows


@pytest.mark.timeout(120)
def test_v1_and_v2_runs_write_the_same_rows(db, world_sim):
    world, sim = world_sim
    followed = world.wallets[:2]
    follow(db, followed)
    with Running(fast_settings(sim, api={"data_api_version": "v1"}), db, once=True) as run:
        run.thread.join(timeout=60)
    assert run.code == 0
    with psycopg.connect(db) as conn:
        ids_v1 = {r[0] for r in conn.execute("SELECT trade_id FROM trades_public")}
    with Running(fast_settings(sim, api={"data_api_version": "v2", "overlap_seconds": 10**8}), db, once=True) as run:
        run.thread.join(timeout=60)
    assert run.code == 0
    with psycopg.connect(db) as conn:
        ids_both = {r[0] for r in conn.execute("SELECT trade_id FROM trades_public")}
    assert ids_both == ids_v1 and db_trades(db) == truth_trades(world, followed)


def _restarts(actor: str) -> float:
    for metric in metrics.ACTOR_RESTARTS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["actor"] == actor:
                return sample.value
    return 0.0


@pytest.mark.timeout(120)
def test_crashed_poller_and_writer_are_restarted_and_nothing_is_lost(db, world_sim):
    world, sim = world_sim
    followed = world.wallets[:4]
    follow(db, followed)
    track_from_now(world)
    sim.drive(0.05)
    writer_before, poller_before = _restarts("writer"), _restarts("poller")
    with Running(fast_settings(sim, writer={"flush_interval_seconds": 0.5}), db) as run:
        wait_for(lambda: db_trades(db), 20, "first trades")
        old_writer = pykka.ActorRegistry.get_by_class(DbWriterActor)[0]
        old_writer.tell(Crash("injected writer crash"))
        wait_for(lambda: (w := pykka.ActorRegistry.get_by_class(DbWriterActor)) and w[0] != old_writer
                 and len(pykka.ActorRegistry.get_by_class(WalletPollerActor)) == 2, 10, "a new writer")
        pykka.ActorRegistry.get_by_class(WalletPollerActor)[0].tell(Crash("injected poller crash"))
        wait_for(lambda: _restarts("poller") > poller_before, 10, "the poller restart")
        time.sleep(0)
        sim.stop_driver()
        wait_for(lambda: converged(db, world, followed, exact_closes=False), 40,
                 "database == ground truth after crashes", lambda: report(db, world, followed))
    assert run.code == 0
    assert _restarts("writer") == writer_before + 1


@pytest.mark.timeout(60)
def test_crash_loop_beyond_restart_intensity_exits_4(db, world_sim, caplog):
    world, sim = world_sim
    follow(db, world.wallets[:1])
    s = fast_settings(sim, supervision={"max_restarts": 2, "period_seconds": 60})
    run = Running(s, db).__enter__()
    for i in range(3):
        current = wait_for(lambda: [w for w in pykka.ActorRegistry.get_by_class(DbWriterActor) if w.is_alive()],
                           10, "a live writer")[0]
        current.tell(Crash(f"crash {i}"))
        wait_for(lambda c=current: not c.is_alive(), 10, "the writer to die")
    run.thread.join(timeout=30)
    assert run.code == 4
    # One clear line saying why, not a flood: each restart is one warning, the give-up one error.
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("polycopy")]
    gave_up = [m for m in errors if "giving up" in m or "gave up" in m]
    assert len(gave_up) == 1, errors
    assert "writer" in gave_up[0] and "2" in gave_up[0]
    assert sum("restarting writer" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.timeout(120)
def test_rate_budget_measured_at_the_simulator(db, world_sim):
    world, sim = world_sim
    follow(db, world.wallets[:6])
    s = fast_settings(sim, tiers={"hot": {"rate_limit": {"requests_per_second": 8, "burst": 8},
                                          "poll_interval_seconds": {"min": 0.05, "max": 0.1},
                                          "wallet_cooldown_seconds": 0.05}})
    start = time.time()
    with Running(s, db):
        wait_for(lambda: time.time() - start > 8, 15, "eight seconds of polling")
    elapsed = time.time() - start
    total = sim.log.snapshot()["total"]
    assert total <= 8 + 8 * elapsed + 2, f"{total} requests in {elapsed:.1f} s exceeds 8 req/s burst 8"
    assert total >= 8 * elapsed * 0.5  # and the budget is actually used


@pytest.mark.timeout(90)
def test_sigterm_flushes_buffered_rows_and_exits_0(db, world_sim, tmp_path):
    world, sim = world_sim
    followed = world.wallets[:3]
    follow(db, followed)
    cfg = tmp_path / "slow-flush.yaml"
    # The feed's and the stream's trades are written at once (the fast lane): only wallet reads here.
    cfg.write_text("writer:\n  flush_interval_seconds: 600\n  batch_max_rows: 100000\nmetrics:\n  port: 0\n"
                   "feed:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYCOPY_")}
    env.update(DATABASE_URL=db, POLYCOPY_DATA_API_URL=sim.base_url, POLYCOPY_GAMMA_API_URL=sim.base_url,
               POLYCOPY_RTDS_URL="")
    proc = subprocess.Popen([sys.executable, "-m", "polycopy_actors", "--tier", "hot", "--config", str(cfg)],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        wanted = sum(1 for f in world.fills if f.wallet in followed)
        wait_for(lambda: sum(n for r, n in sim.log.snapshot()["routes"].items() if r == "/v2/positions") >= 6,
                 30, "every wallet polled")
        assert wanted > 0 and not db_trades(db)  # nothing flushed yet: all of it is in the buffer
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    assert code == 0, stderr
    assert elapsed < 8
    assert db_trades(db) == truth_trades(world, followed)
    assert "stopped after" in stderr and "Traceback" not in stderr


def _polls_by_wallet(sim: Simulator, since: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with sim.log.lock:
        for t, route, wallet in sim.log.times:
            if route == "/v2/positions" and wallet and t >= since:
                out.setdefault(wallet, []).append(t)
    return out


@pytest.mark.timeout(90)
def test_hot_wallets_are_polled_every_one_to_three_seconds_and_new_follows_join(db, world_sim):
    """Seed criterion 1: hot traders update within seconds (default schedule: every 1-3 s, cooldown 1 s)."""
    world, sim = world_sim
    followed, late = world.wallets[:3], world.wallets[3]
    follow(db, followed)
    # The per-wallet schedule: what runs while the global feed is down (here: off).
    s = fast_settings(sim, feed={"enabled": False},
                      tiers={"hot": {"poll_interval_seconds": {"min": 1, "max": 3}, "wallet_cooldown_seconds": 1,
                                     "refresh_interval_seconds": 2}})
    with Running(s, db):
        wait_for(lambda: len(_polls_by_wallet(sim, 0)) == 3, 20, "first polls")
        start = time.time()
        wait_for(lambda: time.time() - start > 10, 15, "ten seconds of polling")
        follow(db, [late])
        followed_at = time.time()
        wait_for(lambda: late in _polls_by_wallet(sim, followed_at), 10, "the newly followed wallet's first poll")
        polls = _polls_by_wallet(sim, start)
    for wallet in followed:
        gaps = [b - a for a, b in zip(polls[wallet], polls[wallet][1:], strict=False)]
        assert gaps and min(gaps) >= 0.9 and max(gaps) <= 3.6, (wallet, gaps)  # 1-3 s, plus request time
    assert min(polls[late]) - followed_at <= 2 + 3.5  # one refresh interval, then due at once


@pytest.mark.timeout(60)
def test_a_trade_changed_at_the_api_is_overwritten_latest_wins(db, world_sim):
    """Seed criterion 3: trade updates overwrite correctly (trade_id unique, latest wins)."""
    world, sim = world_sim
    wallet = world.wallets[0]
    follow(db, [wallet])
    market = world.add_market()
    fill = world.trade(wallet, market, 0, "BUY", 10, price="0.40")
    with Running(fast_settings(sim), db):
        def price() -> object:
            with psycopg.connect(db) as conn:
                row = conn.execute("SELECT price, count(*) OVER () FROM trades_public WHERE transaction_hash = %s",
                                   (fill.tx,)).fetchone()
            return row
        wait_for(lambda: price() == (Decimal("0.40"), 1), 20, "the trade")
        with world.lock:  # the API now reports the same fill with a corrected price and title
            world.replace_fill(fill, dataclasses.replace(fill, price=Decimal("0.41")))
            market.question = "Renamed market"
        wait_for(lambda: price() == (Decimal("0.41"), 1), 20, "the corrected price, still one row")
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT title FROM trades_public WHERE transaction_hash = %s", (fill.tx,)
                            ).fetchone() == ("Renamed market",)
