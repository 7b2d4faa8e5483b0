"""The client against the simulator over real HTTP, and the simulator against the facts file.

Points of ``polymarket-api.md`` the simulator follows (each checked below or in the client tests):
1. v1 bodies are bare arrays of camelCase rows; ``timestamp`` is epoch seconds; newest first.
2. v1 ``/trades``: limit max 10,000, offset max 10,000, past the cap a 400 (never clamped);
   ``takerOnly`` defaults to true (maker fills only with ``takerOnly=false``).
3. v1 ``/activity``: limit clamped to 500, offset max 5,000, ``start``/``end`` windows, REDEEM rows
   with empty asset/side/outcome, outcomeIndex 999, price 0.
4. v1 ``/positions``: ``sizeThreshold`` default 1.0; a resolved market's position stays listed, redeemable.
5. v2 routes: ``{data, pagination}`` envelopes, ``next_cursor`` paging, ``offset`` is a 400, JSON errors
   ``{error, code, retryable, trace_id, parameter}``, snake_case rows, ``data: null`` when empty.
6. v2 ``/v2/trades`` without ``user`` serves the global feed, newest first; ``taker_only`` defaults to true.
7. gamma ``/markets``: without ``closed`` behaves as ``closed=false``; ``outcomes``, ``outcomePrices``,
   ``clobTokenIds`` are JSON-encoded strings; offsets past 2,000 answer 422.
8. Rate limit per 10 s window per route: requests are delayed, then answered 429 with ``Retry-After`` and an HTML body.
9. v2 ``/v2/positions`` ``status``: ``OPEN`` (default) is the superset (a resolved, unredeemed position is listed);
   ``REDEEMABLE``, ``REDEEMABLE_LOST``, ``MERGEABLE`` narrow it; ``CLOSED`` is the closed book
   (v1 ``/closed-positions``).
10. ``/v2/status``: not paginated, no parameters; ``computed_at``, ``age_seconds``, ``serving.lag_seconds`` (the
    worst projection, named in ``serving.worst``) and ``ingestion``.
11. A CDN answers by exact URL from its cache (``Cache-Control: max-age``, ``Age``): ``/v2/trades`` 300 s,
    ``/v2/activity`` 15 s, ``/v2/positions`` 5 s (``LIVE_CDN_SECONDS``); ``cdn_ignore_query`` makes every URL stale.
12. ``/v2/positions`` hides positions under 0.1 share unless ``filter_amount`` says otherwise, sorts by
    ``sort_by`` (default current value), and its answers can lag the trades route (``positions_lag_seconds``).
13. Gamma answers hold at most about 24 rows whatever ``limit`` (default 20).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from decimal import Decimal

import pytest
import requests

from polycopy_actors.api.client import ApiError, PolymarketClient, Transport
from polycopy_actors.observe import metrics
from polycopy_actors.simulator import Faults, SimConfig, Simulator, World
from polycopy_actors.simulator.http import LIVE_CDN_SECONDS
from tests.helpers import fast_settings, started_world


def _client(sim: Simulator, version: str = "v2", **api) -> PolymarketClient:
    s = fast_settings(sim, api={"data_api_version": version, **api})
    return PolymarketClient(s.api)


def _truth_keys(world: World, wallet: str) -> Counter:
    return Counter((f.tx, f.asset, f.side, f.size, f.timestamp) for f in world.fills if f.wallet == wallet)


def _keys(trades) -> Counter:
    return Counter((t.transaction_hash, t.asset, t.side, t.size, t.timestamp) for t in trades)


def test_v1_and_v2_read_the_same_trades_with_the_same_ids(simulator):
    world = simulator.world
    for _ in range(60):
        world.step()
    wallet = world.wallets[0]
    m = world.open_markets()[0]
    world.multi_fill(wallet, [(m, 0, "BUY", 5, "0.5"), (m, 0, "BUY", 5, "0.5"), (m, 1, "BUY", 3, "0.4")])
    v2 = _client(simulator, "v2").trades_since(wallet, None).items
    v1 = _client(simulator, "v1").trades_since(wallet, None).items
    assert _keys(v2) == _truth_keys(world, wallet) == _keys(v1)
    assert sorted(t.trade_id for t in v1) == sorted(t.trade_id for t in v2)
    assert len({t.trade_id for t in v2}) == len(v2)  # identical fills of one transaction stay distinct
    assert all(isinstance(t.size, Decimal) for t in v2)


def test_boundary_second_is_reread(simulator):
    world = simulator.world
    wallet = world.add_wallet()
    m = world.open_markets()[0]
    world.trade(wallet, m, 0, "BUY", 1, ts=1_700_000_000)
    world.trade(wallet, m, 0, "BUY", 2, ts=1_700_000_100)
    client = _client(simulator)
    first = client.trades_since(wallet, None).items
    world.trade(wallet, m, 1, "BUY", 3, ts=1_700_000_100)  # lands late in the watermark's second
    again = client.trades_since(wallet, max(t.timestamp for t in first)).items
    assert len(again) == 2 and {t.size for t in again} == {Decimal(2), Decimal(3)}


def test_backlog_beyond_the_v1_offset_cap_is_read_completely(simulator):
    world = simulator.world
    wallet = world.add_wallet()
    world.backlog(wallet, 10_600, per_second=4)
    v1 = _client(simulator, "v1", page_size=10_000).trades_since(wallet, None).items
    assert _keys(v1) == _truth_keys(world, wallet)
    v2 = _client(simulator, "v2", page_size=1000).trades_since(wallet, None).items
    assert sorted(t.trade_id for t in v1) == sorted(t.trade_id for t in v2)


def test_positions_redeems_and_market_state(simulator):
    world = simulator.world
    wallet = world.add_wallet()
    m1, m2 = world.open_markets()[:2]
    world.trade(wallet, m1, 0, "BUY", 10)
    world.trade(wallet, m2, 1, "BUY", "0.5")  # below v1's default sizeThreshold of 1
    for version in ("v1", "v2"):
        pos = _client(simulator, version).positions(wallet).items
        assert {p.asset for p in pos} == {m1.assets[0], m2.assets[1]}
    world.resolve(m1, 0)
    pos = {p.asset: p for p in _client(simulator).positions(wallet).items}
    assert pos[m1.assets[0]].redeemable and pos[m1.assets[0]].cur_price == 1
    client = _client(simulator, "v1")
    assert client.market_states([m1.condition_id, m2.condition_id]) == {m1.condition_id: True, m2.condition_id: False}
    world.redeem(wallet, m1)
    for version in ("v1", "v2"):
        redeems = [a for a in _client(simulator, version).closing_activity_since(wallet, 1).items if a.type == "REDEEM"]
        assert [r.condition_id for r in redeems] == [m1.condition_id]


def test_simulator_follows_the_facts(simulator):
    world = simulator.world
    for _ in range(40):
        world.step()
    base = simulator.base_url
    wallet = world.wallets[0]
    r = requests.get(f"{base}/trades", params={"user": wallet, "offset": 10_001}, timeout=5)
    assert r.status_code == 400
    r = requests.get(f"{base}/v2/trades", params={"user": wallet, "offset": 5}, timeout=5)
    body = r.json()
    assert r.status_code == 400 and {"error", "code", "retryable", "trace_id", "parameter"} <= set(body)
    taker = requests.get(f"{base}/trades", params={"user": wallet, "limit": 10_000}, timeout=5).json()
    both = requests.get(f"{base}/trades", params={"user": wallet, "limit": 10_000, "takerOnly": "false"},
                        timeout=5).json()
    assert len(taker) < len(both) == sum(1 for f in world.fills if f.wallet == wallet)
    assert [x["timestamp"] for x in both] == sorted((x["timestamp"] for x in both), reverse=True)
    feed = requests.get(f"{base}/v2/trades", params={"limit": 5, "taker_only": "false"}, timeout=5).json()
    assert len(feed["data"]) == 5 and feed["pagination"]["next_cursor"]
    act = requests.get(f"{base}/activity", params={"user": wallet, "limit": 900}, timeout=5).json()
    assert len(act) <= 500
    m = world.open_markets()[0]
    world.resolve(m, 1)
    hidden = requests.get(f"{base}/markets", params={"condition_ids": m.condition_id}, timeout=5).json()
    shown = requests.get(f"{base}/markets", params={"condition_ids": m.condition_id, "closed": "true"},
                         timeout=5).json()
    assert hidden == [] and shown[0]["closed"] and shown[0]["umaResolutionStatus"] == "resolved"
    assert json.loads(shown[0]["outcomePrices"]) == ["0", "1"] and isinstance(shown[0]["clobTokenIds"], str)
    assert requests.get(f"{base}/markets", params={"offset": 2001}, timeout=5).status_code == 422
    empty = requests.get(f"{base}/v2/positions", params={"user": "0x" + "9" * 40}, timeout=5).json()
    assert empty["data"] is None


def test_429_is_honoured_without_a_request_storm():
    world = World(seed=3, wallets=2)
    for _ in range(10):
        world.step()
    sim = Simulator(world, SimConfig(limits={"data": 10_000, "/v2/trades": 4}, max_delay_seconds=0.05)).start()
    throttled: list[float] = []
    try:
        api = fast_settings(sim, api={"max_retries": 6}).api
        client = PolymarketClient(api, Transport(api, on_rate_limited=throttled.append))
        for _ in range(8):
            client.trades_since(world.wallets[0], None)
        stats = sim.log.snapshot()
        assert stats["status"].get(429, 0) >= 1 and throttled and min(throttled) >= 1.0
        # Honouring Retry-After: no more than the window's budget plus the retries that were told to wait.
        assert sim.log.max_in_window(10.0, {"/v2/trades"}) <= 4 + stats["status"].get(429, 0)
        assert stats["routes"]["/v2/trades"] == 8 + stats["status"][429]
    finally:
        sim.stop()


def test_server_errors_are_retried_then_reported(simulator):
    wallet = simulator.world.wallets[0]
    simulator.set_faults(Faults(error_rate=1.0))
    client = _client(simulator, max_retries=2)
    try:
        client.positions(wallet)
        raise AssertionError("expected an ApiError")
    except ApiError as exc:
        assert exc.kind == "server"
    assert simulator.log.snapshot()["routes"]["/v2/positions"] == 3
    simulator.set_faults(Faults(timeout_rate=1.0, hang_seconds=3))
    try:
        _client(simulator, max_retries=0, timeout_seconds=0.3).positions(wallet)
        raise AssertionError("expected an ApiError")
    except ApiError as exc:
        assert exc.kind == "network"


def test_malformed_items_are_skipped_and_counted(simulator):
    world = simulator.world
    wallet = world.add_wallet()
    m = world.open_markets()[0]
    for i in range(40):
        world.trade(wallet, m, i % 2, "BUY", 1 + i)
    simulator.set_faults(Faults(malformed_item_rate=0.3))
    before = sum(s.value for s in metrics.API_ITEMS_MALFORMED.collect()[0].samples if s.name.endswith("_total"))
    read = _client(simulator).trades_since(wallet, None)
    got = read.items
    after = sum(s.value for s in metrics.API_ITEMS_MALFORMED.collect()[0].samples if s.name.endswith("_total"))
    assert 0 < len(got) < 40 and after - before == 40 - len(got) == len(read.rejected)
    assert all(r.route == "trades" and r.wallet == wallet and json.loads(r.raw) for r in read.rejected)
    simulator.set_faults(Faults(malformed_json_rate=1.0))
    try:
        _client(simulator, max_retries=1).trades_since(wallet, None)
        raise AssertionError("expected an ApiError")
    except ApiError as exc:
        assert exc.kind == "malformed"


def test_simulator_positions_follow_from_its_trades():
    world = World(seed=5, wallets=5)
    for _ in range(400):
        world.step()
    last_close = {(c.wallet, c.asset): c.seq for c in world.closes}  # closes are in sequence order
    held: dict = {}
    for f in world.fills:
        key = (f.wallet, f.asset)
        if f.seq > last_close.get(key, 0):  # fills of the position's current opening
            held[key] = held.get(key, Decimal(0)) + (f.size if f.side == "BUY" else -f.size)
    closed = set(last_close)
    for (wallet, asset), pos in world.positions.items():
        assert pos.size == held[(wallet, asset)]
    for key, size in held.items():
        if size > 0 and key not in world.positions:
            assert key in closed  # redeemed, merged or archived


def test_api_lag_and_the_closed_book_read_from_the_simulator():
    world, sim = started_world(13, 4, 3, 120, status_lag_seconds=7.5)
    try:
        assert _client(sim, "v2").api_lag() == 7.5
        wallet = Counter(c.wallet for c in world.closes).most_common(1)[0][0]
        truth = sorted((c.asset, c.closed_at) for c in world.closes if c.wallet == wallet)
        assert 0 < len(truth) <= 50
        for version in ("v1", "v2"):
            got = _client(sim, version).closed_positions(wallet)
            assert sorted((p.asset, p.closed_at) for p in got) == truth
            assert all(p.wallet == wallet and p.avg_price > 0 for p in got)
        m = world.open_markets()[0]
        holder = world.wallets[0]
        world.trade(holder, m, 0, "BUY", 5)
        world.trade(holder, m, 1, "BUY", 5)
        world.resolve(m, 1)
        base = sim.base_url
        by_status = {s: {r["token_id"] for r in (requests.get(f"{base}/v2/positions", params={
            "user": holder, "status": s, "condition": m.condition_id}, timeout=5).json()["data"] or [])
            if r["condition_id"] == m.condition_id} for s in ("OPEN", "REDEEMABLE", "REDEEMABLE_LOST")}
        assert by_status["OPEN"] == set(m.assets)  # the superset keeps both, resolved
        assert by_status["REDEEMABLE"] == {m.assets[1]} and by_status["REDEEMABLE_LOST"] == {m.assets[0]}
    finally:
        sim.stop()


def test_every_read_has_a_url_of_its_own_and_a_cached_answer_is_never_used():
    world, sim = started_world(14, 3, 2, 20, cdn_routes=dict(LIVE_CDN_SECONDS))
    try:
        wallet = world.wallets[0]
        client = _client(sim, "v2")
        first = client.trades_since(wallet, 1).items
        stale_before = metrics.API_STALE.labels("trades")._value.get()
        new = world.trade(wallet, world.open_markets()[0], 0, "BUY", 3)
        again = client.trades_since(wallet, 1).items  # the same read a second later: not the cached answer
        assert len(again) == len(first) + 1 and any(t.transaction_hash == new.tx for t in again)
        assert metrics.API_STALE.labels("trades")._value.get() == stale_before
        # A CDN that ignores the query string answers every URL from its cache: read again through other
        # URLs (each answer's age checked), then the read fails; the stale answer is never used.
        sim.config = replace(sim.config, cdn_ignore_query=True)
        client.trades_since(wallet, 1)
        with sim._cdn_lock:  # the cached answers are two minutes old now
            sim._cdn = {url: (t - 120, body) for url, (t, body) in sim._cdn.items()}
        world.trade(wallet, world.open_markets()[0], 0, "BUY", 4)
        with pytest.raises(ApiError) as info:
            client.trades_since(wallet, 1)
        assert info.value.kind == "stale"
        assert metrics.API_STALE.labels("trades")._value.get() == stale_before + client.api.max_retries + 1
    finally:
        sim.stop()
