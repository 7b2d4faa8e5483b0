"""Closes that are right under the production config, and reads that never block each other.

End to end: real PostgreSQL, the simulator over HTTP, ``python -m polycopy_actors ... --env production``
(a 10 s close grace period, JSON logs) with faster polling overlaid. The simulator behaves as the live API
does where it matters here: a positions route that lags the trades route, dust positions under 0.1 share
hidden by default, gamma answers cut at 24 rows, a CDN caching by URL, automatic redemptions.
"""

from __future__ import annotations

import time
import urllib.error
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from polycopy_actors.api.client import PolymarketClient
from polycopy_actors.db import queries
from polycopy_actors.simulator import Faults, SimConfig, Simulator, World
from polycopy_actors.simulator.http import LIVE_CDN_SECONDS
from tests.helpers import (
    Proc,
    cli_env,
    db_closes,
    db_positions,
    db_trades,
    deep_merge,
    fast_settings,
    fast_timings,
    follow,
    free_port,
    healthz,
    started_world,
    truth_closes,
    truth_positions,
    truth_trades,
    wait_for,
    write_config,
)


def prod_config(tmp_path: Path, name: str = "prod.yaml", **extra: Any) -> Path:
    """An overlay of ``--env production``: it keeps its 10 s grace period and 120 s evidence margin;
    polling is made fast (the test timings, a little slower hot polls, a fast cold tier)."""
    data = deep_merge(fast_timings(), {"tiers": {
        "hot": {"poll_interval_seconds": {"min": 0.3, "max": 0.6}, "wallet_cooldown_seconds": 0.3,
                "rate_limit": {"requests_per_second": 40}},
        "cold": {"rate_limit": {"requests_per_second": 40, "burst": 10}, "wallet_cooldown_seconds": 0.1,
                 "jitter_seconds": 0, "lock_ttl_seconds": 20, "refresh_interval_seconds": 0.5},
    }})
    data.update(extra)
    return write_config(tmp_path / name, data)


def hot(db: str, sim: Simulator, cfg: Path, *more: str, stream: bool = True) -> Proc:
    env = cli_env(db, sim) if stream else cli_env(db, sim, POLYCOPY_RTDS_URL="")
    return Proc(["--tier", "hot", "--env", "production", "--config", str(cfg), *more], env)


def stop(proc: Proc) -> None:
    proc.popen.terminate()
    assert proc.wait(30) == 0, proc.log


def health(port: int) -> tuple[int, dict[str, Any]]:
    """``/healthz`` of a child process; (0, {}) while its server is not listening yet."""
    try:
        return healthz(port)
    except urllib.error.URLError:
        return 0, {}


def closes_by_reason(dsn: str, wallets: list[str]) -> Counter:
    return Counter(r for (_w, _a, r) in db_closes(dsn, wallets).elements())


def current(dsn: str, world: World, wallets: list[str]) -> bool:
    return (db_trades(dsn, wallets) == truth_trades(world, wallets)
            and db_positions(dsn, wallets) == truth_positions(world, wallets))


def settled(dsn: str, world: World, wallets: list[str]) -> bool:
    return current(dsn, world, wallets) and db_closes(dsn, wallets) == truth_closes(world, wallets)


def diff_report(dsn: str, world: World, wallets: list[str]) -> str:
    return (f"closes db {dict(db_closes(dsn, wallets))} truth {dict(truth_closes(world, wallets))}; "
            f"positions db {len(db_positions(dsn, wallets))} truth {len(truth_positions(world, wallets))}")


@pytest.mark.timeout(240)
def test_production_hot_tier_and_two_cold_sweeps_end_at_the_ground_truth_reason_by_reason(db, tmp_path):
    """Issue items 1 and 2: cold closes with a grace period (two sweeps, each re-checking what vanished
    after the grace period), REDEEM (automatic) behind a lagging positions route -> redeemed, a sell-out
    just before resolution -> manual_close, a merge -> manual_close, a vanished position in a resolved
    market -> market_closed."""
    world = World(seed=81, markets=2, wallets=6)
    sim = Simulator(world, SimConfig(seed=81, cdn_routes=dict(LIVE_CDN_SECONDS))).start()
    hot_w, cold_w = world.wallets[:3], world.wallets[3:]
    m_redeem, m_sold, m_merge, m_archive = (world.add_market() for _ in range(4))
    for w in world.wallets:
        world.trade(w, m_redeem, 0, "BUY", 10)
        world.trade(w, m_sold, 1, "BUY", 8)
        world.trade(w, m_merge, 0, "BUY", 5)
        world.trade(w, m_archive, 1, "BUY", 4)
        world.trade(w, world.markets[next(iter(world.markets))], 0, "BUY", 3)  # stays open and held
    follow(db, hot_w)
    with psycopg.connect(db) as conn:
        queries.add_traders(conn, cold_w)
    cfg = prod_config(tmp_path)
    cold_env = cli_env(db, sim)
    try:
        first = Proc(["--tier", "cold", "--once", "--env", "production", "--config", str(cfg)], cold_env)
        assert first.wait(60) == 0, first.log
        run = hot(db, sim, cfg)
        wait_for(lambda: settled(db, world, world.wallets), 30, "the opening state",
                 lambda: diff_report(db, world, world.wallets))
        # What happens next shows in the positions route 6 s late (the trades route at once).
        sim.config = replace(sim.config, positions_lag_seconds=6)
        for w in world.wallets:
            world.trade(w, m_sold, 1, "SELL", 8)  # sold out just before the market resolved
            world.merge(w, m_merge)
        world.resolve(m_sold, 0)
        world.resolve(m_redeem, 0)
        world.auto_redeem(m_redeem)  # one transaction redeems every holder
        world.resolve(m_archive, 0)
        world.archive(m_archive)  # gone from listings without a REDEEM
        wait_for(lambda: settled(db, world, hot_w), 60, "the hot tier's closes",
                 lambda: diff_report(db, world, hot_w))
        stop(run)
        second = Proc(["--tier", "cold", "--once", "--env", "production", "--config", str(cfg)], cold_env)
        assert second.wait(90) == 0, second.log
        assert settled(db, world, world.wallets), diff_report(db, world, world.wallets)
        reasons = closes_by_reason(db, world.wallets)
        assert reasons == {"redeemed": 6, "manual_close": 12, "market_closed": 6}
    finally:
        sim.stop()


@pytest.mark.timeout(120)
def test_trades_land_while_positions_and_gamma_answer_503(db, tmp_path):
    """Issue item 3: each kind of read succeeds or fails on its own; trades that were read are delivered.
    The wallet-read path alone (no stream, no global feed: what runs when both are down)."""
    world, sim = started_world(82, 4, 3, 20)
    wallets = world.wallets
    follow(db, wallets)
    run = hot(db, sim, prod_config(tmp_path, feed={"enabled": False}), stream=False)
    try:
        wait_for(lambda: current(db, world, wallets), 30, "the opening state")
        sim.set_faults(Faults(error_rate=1.0, routes=frozenset({"/v2/positions", "/markets"})))
        m = world.open_markets()[0]
        for w in wallets:
            world.trade(w, m, 0, "BUY", 7)
        wait_for(lambda: db_trades(db, wallets) == truth_trades(world, wallets), 15,
                 "the new trades, with positions and gamma down")
        with psycopg.connect(db) as conn:
            errors = conn.execute("SELECT last_error FROM wallet_poll_state WHERE wallet = ANY(%s)",
                                  (wallets,)).fetchall()
        assert all(e[0] and "positions" in e[0] for e in errors), errors
        sim.set_faults(Faults())
        wait_for(lambda: current(db, world, wallets), 30, "positions again once the route answers")
        stop(run)
    finally:
        sim.stop()


@pytest.mark.timeout(120)
def test_a_permanently_malformed_row_is_kept_and_stops_holding_the_cursor(db, tmp_path):
    """Issue item 3: a row that never validates is stored in rejected_items and, after
    api.malformed_hold_reads reads, no longer holds the wallet's cursor."""
    world = World(seed=83, markets=3, wallets=2)
    sim = Simulator(world, SimConfig(seed=83)).start()
    wallet = world.wallets[0]
    m = world.open_markets()[0]
    world.trade(wallet, m, 0, "BUY", 3, ts=int(time.time()) - 600)
    bad = world.trade(wallet, m, 0, "BUY", 4, ts=int(time.time()) - 500)
    last = world.trade(wallet, m, 1, "BUY", 5, ts=int(time.time()) - 400)
    sim.set_faults(Faults(broken_txs=frozenset({bad.tx})))
    follow(db, [wallet])
    run = hot(db, sim, prod_config(tmp_path))
    try:
        def cursor() -> Any:
            with psycopg.connect(db) as conn:
                return conn.execute("SELECT extract(epoch FROM last_trade_at)::bigint FROM wallet_poll_state "
                                    "WHERE wallet = %s", (wallet,)).fetchone()[0]
        wait_for(lambda: cursor() == last.timestamp, 30, "the cursor to move past the malformed row")
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT route, raw, reason, seen_count FROM rejected_items WHERE wallet = %s",
                               (wallet,)).fetchone()
        assert row is not None and row[0] == "trades" and bad.tx in row[1] and row[2].startswith("size")
        assert row[3] >= 3
        assert db_trades(db, [wallet]) == truth_trades(world, [wallet]) - Counter(
            [(bad.tx, bad.asset, bad.side, bad.size.normalize(), bad.timestamp)])
        stop(run)
    finally:
        sim.stop()


@pytest.mark.timeout(120)
def test_the_first_trade_after_a_quiet_spell_is_never_a_cached_answer(db, tmp_path):
    """Issue item 4: the live CDN caches /v2/trades 300 s by URL; every read has a URL of its own."""
    world, sim = started_world(84, 3, 2, 10, cdn_routes=dict(LIVE_CDN_SECONDS))
    wallet = world.wallets[0]
    follow(db, [wallet])
    run = hot(db, sim, prod_config(tmp_path))
    try:
        wait_for(lambda: db_trades(db, [wallet]) == truth_trades(world, [wallet]), 30, "the history")
        time.sleep(3)  # a quiet spell: the same reads again and again (the point of the test, not a wait)
        world.trade(wallet, world.open_markets()[0], 0, "BUY", 2)
        wait_for(lambda: db_trades(db, [wallet]) == truth_trades(world, [wallet]), 6,
                 "the new trade within seconds")
        stop(run)
    finally:
        sim.stop()


@pytest.mark.timeout(120)
def test_a_holder_of_005_shares_is_not_closed(db, tmp_path):
    """Issue item 5: /v2/positions hides positions under 0.1 share unless filter_amount=0."""
    world, sim = started_world(85, 3, 2, 0)
    wallet = world.wallets[0]
    m = world.open_markets()[0]
    world.trade(wallet, m, 0, "BUY", 10)
    follow(db, [wallet])
    run = hot(db, sim, prod_config(tmp_path))
    try:
        wait_for(lambda: settled(db, world, [wallet]), 30, "the position")
        world.trade(wallet, m, 0, "SELL", "9.95")
        wait_for(lambda: db_positions(db, [wallet]).get((wallet, m.assets[0]), (0,))[0] == Decimal("0.05"), 15,
                 "the position sold down to 0.05")
        time.sleep(12)  # longer than the grace period: a wrong close would have been written by now
        assert db_closes(db, [wallet]) == Counter()
        assert db_positions(db, [wallet]) == truth_positions(world, [wallet])
        stop(run)
    finally:
        sim.stop()


@pytest.mark.timeout(150)
def test_thirty_resolved_markets_of_one_wallet_are_all_classified_from_gamma(db, tmp_path):
    """Issue item 6: gamma answers at most about 24 rows: asked in batches, every id accounted for."""
    world, sim = started_world(86, 1, 1, 0)
    wallet = world.wallets[0]
    markets = [world.add_market() for _ in range(30)]
    for m in markets:
        world.trade(wallet, m, 0, "BUY", 2)
    follow(db, [wallet])
    cfg = prod_config(tmp_path)
    try:
        first = hot(db, sim, cfg, "--once")
        assert first.wait(60) == 0, first.log
        assert len(db_positions(db, [wallet])) == 30
        for m in markets:  # while nothing runs: resolved and archived, never redeemed
            world.resolve(m, 1)
            world.archive(m)
        run = hot(db, sim, cfg)
        wait_for(lambda: len(db_closes(db, [wallet])) == 30, 60, "30 closes",
                 lambda: str(dict(closes_by_reason(db, [wallet]))))
        assert closes_by_reason(db, [wallet]) == {"market_closed": 30}
        stop(run)
    finally:
        sim.stop()


@pytest.mark.timeout(150)
def test_two_hot_instances_write_one_close_per_opening(db, tmp_path):
    """Issue item 7: one owner per wallet at a time (leases); the other instance leaves it alone."""
    world, sim = started_world(87, 4, 6, 0)
    wallets = world.wallets
    follow(db, wallets)
    markets = world.open_markets()
    for w in wallets:
        for m in markets:
            world.trade(w, m, 0, "BUY", 5)
    cfg = prod_config(tmp_path)
    a, b = hot(db, sim, cfg), hot(db, sim, cfg)
    try:
        wait_for(lambda: settled(db, world, wallets), 40, "the opening state")
        wait_for(lambda: a.has("is polled by") or b.has("is polled by"), 20,
                 "one instance to leave the other's wallets alone")
        for w in wallets:
            for m in markets[:2]:
                world.trade(w, m, 0, "SELL", 5)
        world.resolve(markets[2], 0)
        for w in wallets:
            world.redeem(w, markets[2])
        wait_for(lambda: settled(db, world, wallets), 60, "one close per opening",
                 lambda: diff_report(db, world, wallets))
        stop(a)
        stop(b)
        assert settled(db, world, wallets), diff_report(db, world, wallets)
        with psycopg.connect(db) as conn:
            per_opening = conn.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM positions_closed "
                                       "GROUP BY wallet, asset) c").fetchone()[0]
        assert per_opening == 1
    finally:
        a.kill()
        b.kill()
        sim.stop()


@pytest.mark.timeout(120)
def test_healthz_is_503_within_the_hot_window_with_the_api_down(db, tmp_path):
    """Issue item 8: the health window follows the tier (hot: 30 s by default, not 120 s)."""
    world, sim = started_world(88, 3, 3, 10)
    follow(db, world.wallets)
    port = free_port()
    cfg = prod_config(tmp_path, metrics={"port": port, "host": "127.0.0.1"},
                      api={"max_retries": 0, "timeout_seconds": 1, "connect_timeout_seconds": 1})
    run = hot(db, sim, cfg)
    try:
        wait_for(lambda: health(port)[0] == 200, 30, "/healthz 200")
        sim.set_faults(Faults(error_rate=1.0))
        down = time.monotonic()
        status, body = wait_for(lambda: (h := health(port))[0] == 503 and h, 45, "/healthz 503")
        assert 25 <= time.monotonic() - down <= 40 and "no trades read succeeded" in body["reason"]
        sim.set_faults(Faults())
        # Back-off is at most half the window (15 s): the tier reads again well within one window.
        wait_for(lambda: health(port)[0] == 200, 30, "/healthz 200 again")
        stop(run)
    finally:
        sim.stop()


@pytest.mark.timeout(120)
def test_v1_reads_give_one_id_per_fill_while_fills_arrive_mid_read():
    """Issue item 9: offset paging while new fills arrive shifts rows across page boundaries; v1 reads
    one page of /trades, then /activity windows whose end lies in the past."""
    world = World(seed=89, markets=3, wallets=2)
    wallet = world.wallets[0]
    world.backlog(wallet, 10_300, per_second=4)
    market = world.open_markets()[1]

    def arrive(path: str, q: dict[str, str]) -> None:
        if q.get("user") == wallet:
            world.trade(wallet, market, 0, "BUY", 1)

    sim = Simulator(world, SimConfig(seed=89, before_request=arrive)).start()
    try:
        client = PolymarketClient(fast_settings(sim, api={"data_api_version": "v1", "page_size": 500}).api)
        read = client.trades_since(wallet, None)
        keys = Counter((t.transaction_hash, t.asset, t.side, t.size, t.timestamp) for t in read.items)
        assert max(keys.values()) == 1 and len({t.trade_id for t in read.items}) == len(read.items)
        truth = Counter((f.tx, f.asset, f.side, f.size, f.timestamp) for f in world.fills if f.wallet == wallet)
        assert not keys - truth and len(truth - keys) <= 10  # only fills that arrived after the first page
    finally:
        sim.stop()
