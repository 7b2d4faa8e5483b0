"""Pure logic: token bucket, earliest-deadline schedule, reconciliation diff, trade identity, samples."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from polycopy_actors.models import assign_trade_ids, parse_activity, parse_fill, parse_market, parse_position
from polycopy_actors.ratelimit import TokenBucket
from polycopy_actors.reconcile import Held, classify, diff_positions
from polycopy_actors.schedule import Schedule

#: Real API bodies (provenance in SOURCES.md), copied from the project's shared facts so CI needs nothing else.
SAMPLES = Path(__file__).resolve().parent / "data" / "polymarket-samples"


def test_bucket_allows_burst_then_the_rate():
    b = TokenBucket(rate=10, burst=20, now=0.0)
    waits = [b.reserve(0.0) for _ in range(30)]
    assert waits[:20] == [0.0] * 20
    assert waits[20] == pytest.approx(0.1) and waits[29] == pytest.approx(1.0)
    # Whatever the callers do, N grants need at least (N - burst) / rate seconds.
    b = TokenBucket(rate=5, burst=10, now=0.0)
    times = [b.reserve(t * 0.01) + t * 0.01 for t in range(100)]
    assert max(times) >= (100 - 10) / 5 - 1e-9


def test_bucket_throttle_pauses_and_slows():
    b = TokenBucket(rate=10, burst=5, now=0.0, recovery_seconds=10)
    b.throttle(0.0, 2.0)
    assert b.reserve(0.0) >= 2.0
    assert b.effective_rate(2.0) < 10
    assert b.effective_rate(20.0) == 10


def test_schedule_polls_most_overdue_first_and_respects_cooldown():
    s = Schedule(cooldown=1.0, interval_min=0.1, interval_max=0.2, rng=random.Random(1))
    s.add("a", 5.0)
    s.add("b", 1.0)
    s.add("c", 3.0)
    assert [s.pop_due(10.0), s.pop_due(10.0), s.pop_due(10.0), s.pop_due(10.0)] == ["b", "c", "a", None]
    assert s.done("b", 10.0) >= 11.0  # interval 0.1-0.2 but the cooldown is 1 s
    assert s.pop_due(10.5) is None and s.pop_due(11.0) == "b"
    assert s.done("c", 10.0, consecutive_errors=3) > 12.0  # backoff after failures
    s.remove("a")
    assert "a" not in s and s.done("a", 10.0) == float("inf")


def _pos(asset: str, size: str, cid: str = "0x" + "1" * 64) -> object:
    from polycopy_actors.models import Position

    return Position("0x" + "a" * 40, asset, cid, Decimal(size), Decimal("0.5"), Decimal("0.5"), "Yes", 0, "t", False)


def test_diff_detects_open_change_close_without_trades():
    opened = datetime(2026, 1, 1, tzinfo=UTC)
    known = {"1": Held(_pos("1", "10"), opened), "2": Held(_pos("2", "5"), opened)}
    d = diff_positions(known, [_pos("1", "12"), _pos("3", "1")], now=100.0, grace_seconds=0)
    assert [p.asset for p in d.opened] == ["3"]
    assert [p.asset for p in d.changed] == ["1"]
    assert [h.position.asset for h in d.vanished] == ["2"]


def test_diff_grace_period_and_reappearance():
    opened = datetime(2026, 1, 1, tzinfo=UTC)
    known = {"1": Held(_pos("1", "10"), opened)}
    d = diff_positions(known, [], now=100.0, grace_seconds=10)
    assert not d.vanished and d.missing[0].missing_since == 100.0
    known = {"1": d.missing[0]}
    assert diff_positions(known, [], now=109.0, grace_seconds=10).vanished == []
    assert len(diff_positions(known, [], now=110.0, grace_seconds=10).vanished) == 1
    assert diff_positions(known, [_pos("1", "10")], now=105.0, grace_seconds=10).reappeared == ["1"]


def test_close_reasons():
    assert classify(False, "REDEEM", True) == "redeemed"
    assert classify(False, None, True) == "market_closed"
    assert classify(False, None, False) == "manual_close"
    assert classify(False, "MERGE", True) == "manual_close"  # merged, then the market resolved
    # Sold out before the market resolved: a manual close, even when seen after resolution or when
    # the other outcome of the market was redeemed meanwhile.
    assert classify(True, None, True) == "manual_close"
    assert classify(True, "REDEEM", True) == "manual_close"


def _load(name: str) -> object:
    return json.loads((SAMPLES / name).read_text(), parse_float=Decimal)


def test_real_v1_bodies_parse():
    fills = [parse_fill(i) for i in _load("v1_trades__edulabrador-polymarket-smart-money.json")]
    assert fills and all(f.size > 0 and f.wallet == f.wallet.lower() for f in fills)
    assert fills[0].price == Decimal("0.968534758")
    acts = [parse_activity(i) for i in _load("v1_activity_redeem__edulabrador-polymarket-smart-money.json")]
    assert {a.type for a in acts} == {"REDEEM"}
    pos = [parse_position(i) for i in _load("v1_positions__jm709-pscanner.json")]
    assert pos and pos[0].size == Decimal("271790.1")
    markets = [parse_market(m) for m in _load("gamma_markets_list_proposed__sajiiid09-polywatch.json")]
    assert markets
    resolved = parse_market(_load("gamma_market_resolved_nba__index-3643491930.json"))
    assert resolved.is_closed and resolved.active


def test_real_v2_position_parses():
    body = _load("v2_positions.json")["response"]
    pos = parse_position(body["data"][0])
    assert pos.size == Decimal("86780.64") and pos.redeemable and pos.cur_price == Decimal(0)


def test_trade_id_is_the_same_through_v1_and_v2_and_keeps_identical_fills_apart():
    v1 = {"proxyWallet": "0x" + "A" * 40, "side": "BUY", "asset": "123", "conditionId": "0x" + "b" * 64,
          "size": Decimal("10.0000001"), "price": Decimal("0.860000001148"), "timestamp": 1777091978,
          "transactionHash": "0x" + "c" * 64, "outcome": "Yes", "outcomeIndex": 0}
    v2 = {"proxy_wallet": "0x" + "a" * 40, "side": "BUY", "token_id": "123", "condition_id": "0x" + "B" * 64,
          "size": Decimal("10.0"), "price": Decimal("0.86"), "timestamp": 1777091978,
          "transaction_hash": "0x" + "C" * 64, "outcome": "Yes", "outcome_index": 0}
    a = assign_trade_ids([parse_fill(v1), parse_fill(v1)])
    b = assign_trade_ids([parse_fill(v2), parse_fill(v2)])
    assert [t.trade_id for t in a] == [t.trade_id for t in b]
    assert a[0].trade_id != a[1].trade_id
    other_side = dict(v1, side="SELL")
    assert assign_trade_ids([parse_fill(other_side)])[0].trade_id != a[0].trade_id


@pytest.mark.parametrize("field", ["proxyWallet", "side", "asset", "conditionId", "size", "timestamp",
                                   "transactionHash"])
def test_missing_or_bad_fields_are_named(field):
    from polycopy_actors.models import MalformedItem

    item = {"proxyWallet": "0x" + "a" * 40, "side": "BUY", "asset": "1", "conditionId": "0x" + "b" * 64,
            "size": 1, "price": Decimal("0.5"), "timestamp": 1777091978, "transactionHash": "0x" + "c" * 64}
    for broken in ({k: v for k, v in item.items() if k != field}, dict(item, **{field: {"x": 1}})):
        with pytest.raises(MalformedItem) as info:
            parse_fill(broken)
        assert info.value.field == field
