"""Pure logic: token bucket, earliest-deadline schedule, reconciliation diff, trade identity, samples."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from polycopy_actors.api.models import (
    MalformedItem,
    Position,
    assign_trade_ids,
    parse_activity,
    parse_fill,
    parse_market,
    parse_position,
)
from polycopy_actors.api.transport import Rejected
from polycopy_actors.logic.bucket import TokenBucket
from polycopy_actors.logic.reconcile import (
    Held,
    WindowTrades,
    classify,
    closing_activity,
    diff_positions,
    explain,
    replay,
)
from polycopy_actors.logic.schedule import Schedule
from polycopy_actors.logic.wallet_state import WalletState

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
    return Position("0x" + "a" * 40, asset, cid, Decimal(size), Decimal("0.5"), Decimal("0.5"), "Yes", 0, "t", False)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_diff_detects_open_change_close_without_trades():
    known = {"1": Held(_pos("1", "10"), T0, T0), "2": Held(_pos("2", "5"), T0, T0)}
    d = diff_positions(known, [_pos("1", "12"), _pos("3", "1")], now=_at(100), grace_seconds=0)
    assert [p.asset for p in d.opened] == ["3"]
    assert [p.asset for p in d.changed] == ["1"]
    assert [h.position.asset for h in d.vanished] == ["2"] and d.vanished[0].missing_since == _at(100)
    assert d.writes["3"].opened_at == d.writes["3"].last_seen_at == _at(100)
    assert d.writes["1"].opened_at == T0 and d.writes["1"].last_seen_at == _at(100)


def test_diff_grace_period_and_reappearance():
    known = {"1": Held(_pos("1", "10"), T0, T0)}
    d = diff_positions(known, [], now=_at(100), grace_seconds=10)
    assert not d.vanished and d.missing[0].missing_since == _at(100) and d.writes["1"].missing_since == _at(100)
    known = {"1": d.missing[0]}
    later = diff_positions(known, [], now=_at(109), grace_seconds=10)
    assert later.vanished == [] and "1" not in later.writes  # the mark is stored already
    assert len(diff_positions(known, [], now=_at(110), grace_seconds=10).vanished) == 1
    back = diff_positions(known, [_pos("1", "10")], now=_at(105), grace_seconds=10)
    assert back.reappeared == ["1"] and back.writes["1"].missing_since is None


def test_an_incomplete_snapshot_opens_and_updates_but_never_marks_missing():
    known = {"1": Held(_pos("1", "10"), T0, T0), "2": Held(_pos("2", "5"), T0, T0)}
    d = diff_positions(known, [_pos("1", "12"), _pos("3", "1")], now=_at(100), grace_seconds=0, complete=False)
    assert [p.asset for p in d.opened] == ["3"] and [p.asset for p in d.changed] == ["1"]
    assert not d.vanished and not d.missing and "2" not in d.writes


def test_last_seen_is_written_at_most_every_few_seconds():
    known = {"1": Held(_pos("1", "10"), T0, _at(100))}
    assert "1" not in diff_positions(known, [_pos("1", "10")], now=_at(105), grace_seconds=0).writes
    assert diff_positions(known, [_pos("1", "10")], now=_at(111), grace_seconds=0).writes["1"].last_seen_at == _at(111)


def test_the_evidence_window_starts_a_margin_before_the_last_sighting():
    assert Held(_pos("1", "1"), T0, _at(500)).evidence_since(120) == _at(380)
    assert Held(_pos("1", "1"), T0, None).evidence_since(120) == _at(-120)  # rows older than the column


def test_close_reasons():
    assert classify(False, "REDEEM", True) == "redeemed"
    assert classify(False, "REDEEM", None) == "redeemed"  # an automatic redemption needs no market state
    assert classify(False, None, True) == "market_closed"
    assert classify(False, None, False) == "manual_close"
    assert classify(False, "MERGE", True) == "manual_close"  # merged, then the market resolved
    # Sold out before the market resolved: a manual close, even when seen after resolution or when
    # the other outcome of the market was redeemed meanwhile.
    assert classify(True, None, True) == "manual_close"
    assert classify(True, "REDEEM", True) == "manual_close"
    # Nothing explains it and the market's state is unknown: not classified (retried), never guessed.
    assert classify(False, None, None) is None
    # Maybe sold out (a half sold in the snapshot's own second): a later redemption explains it first.
    assert classify(False, "REDEEM", True, maybe_sold_out=True) == "redeemed"
    assert classify(False, None, True, maybe_sold_out=True) == "manual_close"


def test_sold_out_means_the_trades_after_the_last_sighting_took_the_seen_size_to_zero():
    def w(*rows: tuple[int, str, str]) -> WindowTrades:
        return WindowTrades.of([(ts, side, Decimal(size)) for ts, side, size in rows])

    # v2: the snapshot says which events it reflected (last_event_at): replay what came after.
    cid = "0x" + "1" * 64

    def r(seen: str, as_of: int, rows: tuple, acts: tuple = ()) -> str | None:
        return replay(Decimal(seen), as_of, w(*rows), [(ts, kind, cid) for ts, kind in acts], cid)

    assert r("8", 5, ((5, "BUY", "8"), (10, "SELL", "8"))) == "manual_close"  # sold out after the snapshot
    # Sold half, the snapshot showed the half left, then it was redeemed: not a sell-out.
    assert r("129", 6, ((5, "BUY", "258"), (6, "SELL", "129")), ((14, "REDEEM"),)) == "redeemed"
    # The snapshot lagged: it showed 5 although 3 more were bought before the sale of 8.
    assert r("5", 5, ((5, "BUY", "5"), (10, "BUY", "3"), (12, "SELL", "8"))) == "manual_close"
    # Merged in the snapshot's second, bought again, redeemed: the merge removed what was seen.
    assert r("272", 48, ((48, "BUY", "94"), (48, "BUY", "178"), (49, "BUY", "28")),
             ((48, "MERGE"), (49, "REDEEM"))) == "manual_close"
    # A merge in the snapshot's own second came before the purchase it showed; the later REDEEM removed it.
    assert r("186", 67, ((67, "BUY", "186"),), ((67, "MERGE"), (69, "REDEEM"))) == "redeemed"
    # Merged the earlier opening (bought at 1386), bought again in the merge's second (the opening the
    # snapshot showed began then), later archived: the merge explains nothing of the new opening.
    rows_b = ((1386, "BUY", "44"), (1390, "BUY", "122"))
    assert replay(Decimal(122), 1390, w(*rows_b), [(1390, "MERGE", cid)], cid, opened_at=1390) is None
    # ... but without an earlier opening, a merge in the first second came after its purchases.
    assert replay(Decimal(272), 48, w((48, "BUY", "94"), (48, "BUY", "178"), (49, "BUY", "28")),
                  [(48, "MERGE", cid), (49, "REDEEM", cid)], cid, opened_at=48) == "manual_close"
    # A REDEEM before the snapshot's last event belonged to something else.
    assert r("10", 20, ((20, "BUY", "10"),), ((15, "REDEEM"),)) is None
    assert r("10", 7, ((8, "SELL", "4"),)) is None  # sold part, nothing else: the market decides
    # Possibly sold out: from the snapshot's own second on (bought and sold out within it), or anywhere
    # in the window without last_event_at (v1): then a later REDEEM or MERGE explains a close first.
    rows = ((20, "BUY", "43"), (20, "BUY", "176"), (22, "BUY", "139"), (22, "SELL", "139"))
    assert r("139", 22, rows) is None and w(*rows).maybe_sold_out(Decimal(139), 22)
    assert w(*rows).maybe_sold_out(Decimal(139), None)  # an earlier opening (bought, merged) does not hide it
    assert w((10, "SELL", "8")).maybe_sold_out(Decimal(8), None)
    assert w((5, "BUY", "5"), (10, "BUY", "3"), (12, "SELL", "8")).maybe_sold_out(Decimal(5), None)
    assert not w((5, "BUY", "10"), (8, "SELL", "6")).maybe_sold_out(Decimal(4), None)
    assert not w((5, "BUY", "10"), (8, "SELL", "6")).maybe_sold_out(Decimal(4), 9)
    assert w((1, "SELL", "2"), (1, "BUY", "2")).last_buy() == 1 and w((1, "SELL", "2")).last_buy() is None


def test_a_v2_opening_sold_out_nets_to_nothing_since_its_first_entry():
    def w(*rows: tuple[int, str, str]) -> WindowTrades:
        return WindowTrades.of([(ts, side, Decimal(size)) for ts, side, size in rows])

    assert w((39, "BUY", "12"), (39, "BUY", "146"), (39, "SELL", "158")).sold_out_since(39)
    assert not w((32, "BUY", "118"), (32, "SELL", "59")).sold_out_since(32)  # half left: archived later
    # An earlier opening closed by a merge (before this one's first entry) does not count.
    assert w((20, "BUY", "219"), (22, "BUY", "139"), (22, "SELL", "139")).sold_out_since(22)
    assert not w().sold_out_since(5)  # tokens from a split, never traded


def test_explain_uses_the_snapshots_own_times_when_it_has_them():
    cid = "0x" + "1" * 64
    pos = Position("0x" + "a" * 40, "1", cid, Decimal(59), Decimal("0.5"), None, "Yes", 0, "t", False,
                   last_event_at=32, first_entry_at=32)
    trades = WindowTrades.of([(32, "BUY", Decimal(118)), (32, "SELL", Decimal(59))])
    held = Held(pos, T0, T0)
    assert explain(held, trades, [], 0) == (False, None, False)  # archived: the market decides
    assert explain(held, trades, [(40, "REDEEM", cid)], 0) == (False, "REDEEM", False)
    sold = WindowTrades.of([(32, "BUY", Decimal(118)), (32, "SELL", Decimal(59)), (35, "SELL", Decimal(59))])
    assert explain(held, sold, [(40, "REDEEM", cid)], 0) == (True, None, False)
    v1 = Held(Position("0x" + "a" * 40, "1", cid, Decimal(8), Decimal("0.5"), None, "Yes", 0, "t", False), T0, T0)
    assert explain(v1, WindowTrades.of([(35, "SELL", Decimal(8))]), [], 30) == (False, None, True)


def test_the_last_redeem_or_merge_since_the_position_last_grew_explains_it():
    cid, other = "0x" + "1" * 64, "0x" + "2" * 64
    acts = [(20, "MERGE", cid), (24, "REDEEM", cid), (30, "REDEEM", other)]
    assert closing_activity(acts, cid, since=22) == "REDEEM"  # the merge closed an earlier opening
    assert closing_activity(acts, cid, since=25) is None
    assert closing_activity([(20, "MERGE", cid)], cid, since=20) == "MERGE"  # same second: inclusive


def _rejected(key: str) -> Rejected:
    return Rejected("trades", "0x" + "a" * 40, key, "{}", "size: missing")


def test_a_malformed_item_holds_the_cursor_for_a_bounded_number_of_reads():
    st = WalletState("0x" + "a" * 40)
    for reads in range(1, 4):
        st.count_rejected([_rejected("k"), _rejected("k")])  # twice in one read counts once
        assert st.holds([_rejected("k")], hold_reads=3) == (reads < 3)
    assert st.holds([_rejected("k"), _rejected("new")], hold_reads=3)


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
    item = {"proxyWallet": "0x" + "a" * 40, "side": "BUY", "asset": "1", "conditionId": "0x" + "b" * 64,
            "size": 1, "price": Decimal("0.5"), "timestamp": 1777091978, "transactionHash": "0x" + "c" * 64}
    for broken in ({k: v for k, v in item.items() if k != field}, dict(item, **{field: {"x": 1}})):
        with pytest.raises(MalformedItem) as info:
            parse_fill(broken)
        assert info.value.field == field


# --- hostile input: what the database could not store is refused by the parser ------------------------

FILL = {"proxyWallet": "0x56687BF447DB6FFA42FFE2204A05EDAA20F55839", "side": "BUY", "asset": "5",
        "conditionId": "0x" + "ab" * 32, "size": "12.5", "price": "0.62", "timestamp": 1795000000, "title": "t",
        "transactionHash": "0x" + "cd" * 32}


@pytest.mark.parametrize(("patch", "field", "reason"), [
    ({"title": "bad \ud800 title"}, "title", "not valid Unicode"),
    ({"outcome": "\udfff"}, "outcome", "not valid Unicode"),
    ({"size": Decimal("1e-20000")}, "size", "digits after the decimal point"),
    ({"size": Decimal("1e-1001")}, "size", "digits after the decimal point"),
    ({"price": Decimal("0." + "1" * 1200)}, "price", "digits after the decimal point"),
    ({"price": "0." + "1" * 1200}, "price", "more than 100 characters"),
    ({"price": Decimal("1.5")}, "price", "must be <= 1"),
    ({"title": "x" * 2001}, "title", "longer than 2000"),
])
def test_values_the_database_cannot_hold_are_refused_by_name(patch, field, reason):
    with pytest.raises(MalformedItem) as exc:
        parse_fill({**FILL, **patch})
    assert exc.value.field == field and reason in exc.value.reason


def test_numbers_the_database_can_hold_pass_exactly():
    assert parse_fill({**FILL, "size": Decimal("0E-20000")}).size == 0  # zero, whatever its exponent
    assert parse_fill({**FILL, "price": Decimal("0.860000001148")}).price == Decimal("0.860000001148")
    assert parse_fill({**FILL, "size": Decimal("1.2345678901234567E-12")}).size == Decimal("1.2345678901234567E-12")


def test_health_tells_an_outage_a_stuck_flush_and_refused_rows_apart():
    from polycopy_actors.observe.health import HealthState

    h = HealthState(health_window_seconds=10, backlog_alarm_rows=100, now=0.0)
    assert h.check(0.0) == (False, "supervisor not running")
    h.start(0.0)
    h.read_succeeded("trades", 1.0)
    assert h.check(5.0) == (True, "ok")
    h.rows_refused(2, "value too long")  # isolated: the rest was written, the process stays healthy
    assert h.check(5.0)[0] and h.details(5.0)["database_refused_rows"] == 2
    h.set_db("busy", "LockNotAvailable", 6.0)
    assert h.check(8.0) == (False, "database busy for 2 s: writes time out (LockNotAvailable)")
    h.set_db("unreachable", "connection refused", 8.0)
    assert h.check(9.0)[1].startswith("database unreachable for 1 s") and h.details(9.0)["database"] == "unreachable"
    h.set_db("ok", "", 9.0)
    h.set_flush(9.0)
    h.read_succeeded("trades", 9.0)
    assert h.check(15.0)[0] and h.check(19.5) == (False, "writer stuck: one flush has run for 10 s")
    h.set_flush(None)
    h.set_writer(60, 50)  # the mailbox counts: 60 rows buffered + 50 messages waiting
    assert h.check(19.5)[1] == "writer backed up: 60 rows buffered and 50 messages waiting"


def test_health_wants_trades_to_land_not_only_positions():
    from polycopy_actors.observe.health import HealthState

    h = HealthState(health_window_seconds=10, backlog_alarm_rows=100, now=0.0)
    h.start(0.0)
    for t in range(0, 30, 2):
        h.read_succeeded("positions", float(t))
    assert h.check(30.0) == (False, "no trades read succeeded for 30 s (positions reads succeed: trades reads fail)")
    h.read_succeeded("trades", 30.0)
    assert h.check(31.0) == (True, "ok")


def test_pass_progress_counts_each_wallet_once_across_restarted_pollers():
    from polycopy_actors.logic.progress import PassProgress

    p = PassProgress(pollers=2)
    p.add(["a", "b"])
    p.add(["c"])
    p.swept("a")
    p.swept("a")
    p.drop("b")
    assert p.progress() == (1, 2)
    assert not p.finished(0) and not p.finished(0) and p.finished(1)
    assert p.held(0, 3) == 3 and p.held(1, 2) == 5 and p.held(0, 1) == 3


def test_a_future_dated_trade_never_moves_a_wallets_watermark():
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    base = {**FILL, "proxyWallet": "0x" + "1" * 40}
    fills = [parse_fill({**base, "timestamp": int(now.timestamp()) - 30}),
             parse_fill({**base, "timestamp": 4070908800, "transactionHash": "0x" + "ee" * 32})]
    st = WalletState("0x" + "1" * 40)
    mark = st.trades_read(assign_trade_ids(fills), False, now, 60)
    assert mark == datetime.fromtimestamp(int(now.timestamp()) - 30, UTC) and st.watermark == mark
    # Only a future row: the watermark stays where it was.
    assert st.trades_read(assign_trade_ids(fills[1:]), False, now, 60) is None and st.watermark == mark
    stored = {"last_trade_at": datetime(2099, 1, 1, tzinfo=UTC), "positions": {}, "rejected": {}}
    assert WalletState.from_stored("0x" + "1" * 40, stored, now, 60).watermark is None  # read again, not trusted


@pytest.mark.timeout(5)
def test_an_absurd_timestamp_is_refused_at_once():
    # int() of Decimal("1e9999999") would build a ten-million-digit number: the range comes first.
    for value in (Decimal("1e9999999"), Decimal("-1e9999999"), Decimal("Infinity"), Decimal("NaN")):
        with pytest.raises(MalformedItem) as exc:
            parse_fill({**FILL, "timestamp": value})
        assert exc.value.field == "timestamp"
