"""Bad input, property-based: every wallet address, API item and config file is either accepted
correctly or refused with a clear message; never a traceback, never a wrong row."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polycopy_actors.actors.messages import PollResult
from polycopy_actors.api.models import MalformedItem, assign_trade_ids, parse_activity, parse_fill, parse_position
from polycopy_actors.api.wallets import InvalidWallet, normalize_wallet
from polycopy_actors.config import ConfigError, load_settings
from polycopy_actors.db.writes import WriteBuffer, write_batch

WALLET = re.compile(r"0x[0-9a-f]{40}")
HEX64 = re.compile(r"0x[0-9a-f]{64}")

FILL_V1 = {
    "proxyWallet": "0x56687BF447DB6FFA42FFE2204A05EDAA20F55839", "side": "BUY",
    "asset": "52114319501245915516055106046884209969926127482827954674443846427813813222426",
    "conditionId": "0x" + "ab" * 32, "size": 12.5, "price": 0.62, "timestamp": 1795000000,
    "title": "Will it rain?", "slug": "rain", "outcome": "Yes", "outcomeIndex": 0,
    "transactionHash": "0x" + "cd" * 32,
}
POSITION_V2 = {
    "proxy_wallet": "0x56687bf447db6ffa42ffe2204a05edaa20f55839", "token_id": "123", "condition_id": "0x" + "ab" * 32,
    "current_size": "10", "avg_price": "0.4", "current_value": "5", "outcome": "No", "outcome_index": 1,
    "title": "t", "status": "OPEN", "redeemable": False,
}
ACTIVITY = {"proxyWallet": "0x56687bf447db6ffa42ffe2204a05edaa20f55839", "type": "REDEEM",
            "conditionId": "0x" + "ab" * 32, "timestamp": 1795000001, "transactionHash": "0x" + "ef" * 32, "size": 3}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
    | st.decimals(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)


def mutated(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """The valid item with some fields deleted or replaced by anything JSON can carry; sometimes not a dict."""
    keys = sorted(base)

    @st.composite
    def build(draw: Any) -> Any:
        if draw(st.integers(0, 20)) == 0:
            return draw(json_values)
        item = copy.deepcopy(base)
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            if draw(st.booleans()):
                del item[key]
            else:
                item[key] = draw(json_values)
        return item

    return build()


def check_fill(fill: Any) -> None:
    assert WALLET.fullmatch(fill.wallet) and HEX64.fullmatch(fill.condition_id)
    assert HEX64.fullmatch(fill.transaction_hash) and re.fullmatch(r"[0-9]{1,100}", fill.asset)
    assert fill.side in ("BUY", "SELL")
    for amount in (fill.size, fill.price):
        assert isinstance(amount, Decimal) and amount.is_finite() and 0 <= amount < Decimal("1e20")
    assert 0 < fill.timestamp < 4102444800


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=50), json_values,
                 st.from_regex(r"0x[0-9a-fA-F]{38,42}\n?", fullmatch=True)))
def test_wallet_addresses_are_normalised_or_refused(value):
    try:
        out = normalize_wallet(value)
    except InvalidWallet as exc:
        assert "expected 0x followed by 40 hex characters" in str(exc)
        return
    assert WALLET.fullmatch(out) and out == value.lower()


@pytest.mark.timeout(120)
@settings(max_examples=600, deadline=None)
@given(mutated(FILL_V1))
def test_trade_items_parse_correctly_or_are_refused(item):
    try:
        fill = parse_fill(item)
    except MalformedItem as exc:
        assert exc.field and exc.reason
        return
    check_fill(fill)
    if isinstance(item, dict) and "size" in item and isinstance(item["size"], (int, float)):
        assert fill.size == Decimal(str(item["size"]))  # the number given, exactly, as Decimal


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=None)
@given(mutated(POSITION_V2), mutated(ACTIVITY))
def test_position_and_activity_items_parse_correctly_or_are_refused(pos_item, act_item):
    try:
        pos = parse_position(pos_item)
    except MalformedItem:
        pass
    else:
        assert WALLET.fullmatch(pos.wallet) and pos.size >= 0 and pos.avg_price >= 0
        assert pos.outcome_index is None or 0 <= pos.outcome_index <= 1_000_000
    try:
        act = parse_activity(act_item)
    except MalformedItem:
        pass
    else:
        assert WALLET.fullmatch(act.wallet) and HEX64.fullmatch(act.condition_id) and act.size >= 0


@pytest.mark.timeout(180)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutated(FILL_V1), min_size=1, max_size=4))
def test_every_accepted_trade_item_can_be_written(session_db, items):
    """An accepted item never poisons a batch: the database takes every row the parser lets through."""
    fills = []
    for item in items:
        try:
            fills.append(parse_fill(item))
        except MalformedItem:
            continue
    trades = assign_trade_ids(fills)
    buf = WriteBuffer()
    for t in trades:
        buf.add(PollResult(t.wallet, "hot", datetime.now(UTC), ok=True, trades=(t,)))
    with psycopg.connect(session_db) as conn:
        written = write_batch(conn, buf)
        got = conn.execute("SELECT count(*) FROM trades_public WHERE trade_id = ANY(%s)",
                           ([t.trade_id for t in trades],)).fetchone()
        conn.rollback()
    assert got == (len({t.trade_id for t in trades}),)
    assert sum(written["trades"].values()) == got[0]


CONFIG_PATHS = [
    ("processes",), ("shutdown_timeout_seconds",), ("logging", "level"), ("metrics", "port"),
    ("api", "data_api_version"), ("api", "timeout_seconds"), ("api", "page_size"), ("db", "prepared_statements"),
    ("tiers", "hot", "rate_limit", "requests_per_second"), ("tiers", "cold", "rate_limit", "burst"),
    ("tiers", "hot", "poll_interval_seconds", "min"), ("tiers", "cold", "lock_ttl_seconds"),
    ("pollers", "pool_size"), ("writer", "batch_max_rows"), ("supervision", "max_restarts"), ("nonsense",),
    ("tiers", "warm"), ("discovery", "enabled"),
]


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(CONFIG_PATHS), json_values), max_size=3).map(lambda v: ("keys", v))
       | json_values.map(lambda v: ("raw", v)))
def test_config_files_load_or_fail_naming_the_key(tmp_path_factory, overlay):
    path = Path(tmp_path_factory.mktemp("cfg")) / "extra.yaml"
    kind, content = overlay
    if kind == "keys":
        data: Any = {}
        for keys, value in content:
            node = data
            for k in keys[:-1]:
                node = node.setdefault(k, {}) if isinstance(node.get(k, {}), dict) else {}
            node[keys[-1]] = value
    else:
        data = content
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    except yaml.YAMLError:
        return
    try:
        s = load_settings(env="development", config_file=path, environ={})
    except ConfigError as exc:
        msg = str(exc)
        assert str(path) in msg and "\n" not in msg
        return
    assert 1 <= s.processes <= 64 and s.tiers.hot.rate_limit.requests_per_second > 0
    assert s.api.data_api_version in ("v1", "v2")
