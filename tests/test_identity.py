"""One identity per fill whatever the source (stream, global feed, a wallet's feed, v1), parsed from
the real bodies in ``tests/data/polymarket-samples``; the migration that rewrote the earlier ids."""

from __future__ import annotations

import hashlib
import json
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from polycopy_actors.api.models import SIX_PLACES, assign_trade_ids, parse_fill
from polycopy_actors.api.rtds import parse_frame
from polycopy_actors.db.migrate import discover

SAMPLES = Path(__file__).resolve().parent / "data" / "polymarket-samples"


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text(), parse_float=Decimal)


def rtds_frame() -> str:
    return (SAMPLES / "rtds_activity_trades_frame__index-63281558533.json").read_text()


def as_rest_rows(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same fill as the REST routes show it: the v2 row (snake_case, lowercase wallet, block time one
    second after the stream's, not enriched yet) and the v1 row (camelCase)."""
    v2 = {"proxy_wallet": payload["proxyWallet"].lower(), "side": payload["side"], "token_id": payload["asset"],
          "condition_id": payload["conditionId"], "size": payload["size"], "price": Decimal("0.260000001148"),
          "timestamp": payload["timestamp"] + 1, "title": "", "slug": payload["slug"], "icon": "",
          "event_slug": "", "outcome": payload["outcome"], "outcome_index": 999, "name": "", "pseudonym": "",
          "bio": "", "profile_image": "", "profile_image_optimized": "",
          "transaction_hash": payload["transactionHash"]}
    v1 = dict(payload, proxyWallet=payload["proxyWallet"].lower(), timestamp=payload["timestamp"] + 1)
    return v2, v1


@pytest.mark.timeout(10)
def test_the_sample_stream_frame_parses_as_a_lowercase_fill():
    fill = parse_frame(rtds_frame())
    assert fill is not None
    assert fill.wallet == "0x510f4963b66b1b18505faab74b0bb943d1dda43c"
    assert fill.side == "BUY" and fill.size == Decimal("2.7027") and fill.outcome_index == 1
    assert parse_frame("PONG") is None
    assert parse_frame(json.dumps({"topic": "crypto_prices", "type": "update", "payload": {}})) is None


@pytest.mark.timeout(10)
def test_stream_feed_and_v1_rows_of_one_fill_share_its_trade_id():
    frame = json.loads(rtds_frame(), parse_float=Decimal)
    v2, v1 = as_rest_rows(frame["payload"])
    stream_fill = parse_frame(rtds_frame())
    assert stream_fill is not None
    ids = {assign_trade_ids([f])[0].trade_id for f in (stream_fill, parse_fill(v2), parse_fill(v1))}
    assert len(ids) == 1
    # Two genuine identical fills of one transaction stay two rows, from any source.
    twice = assign_trade_ids([parse_fill(v2), parse_fill(v2)])
    assert len({t.trade_id for t in twice}) == 2
    assert twice[0].trade_id in ids


@pytest.mark.timeout(10)
def test_unlabelled_outcome_index_999_is_never_kept():
    rows = sample("v2_trades_global__polyoxide.json")["data"]
    fills = [parse_fill(r) for r in rows]
    assert any(r["outcome_index"] == 999 for r in rows)
    assert all(f.outcome_index != 999 for f in fills)
    assert all(f.outcome_index is None for f, r in zip(fills, rows, strict=True) if r["outcome_index"] == 999)
    # An empty title or slug (not enriched yet) is unknown, not a value.
    assert all(f.title is None for f, r in zip(fills, rows, strict=True) if r["title"] == "")


def old_trade_id(wallet: str, tx: str, asset: str, side: str, size: Decimal, ts: int, occurrence: int) -> str:
    """The derivation before migration 007 (it had the timestamp in it)."""
    size_text = f"{size.quantize(SIX_PLACES, rounding=ROUND_HALF_EVEN):f}"
    key = "|".join((wallet, tx, asset, side, size_text, str(ts), str(occurrence)))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@pytest.mark.timeout(60)
def test_migration_rewrites_ids_of_a_database_filled_by_the_earlier_derivation(fresh_database):
    dsn = fresh_database(migrated=False)
    migrations = discover()
    before = [m for m in migrations if m.version < "007"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for m in before:
            conn.execute(m.sql)
    frame = json.loads(rtds_frame(), parse_float=Decimal)
    v2, _ = as_rest_rows(frame["payload"])
    fill = parse_fill(v2)
    other = parse_fill(dict(v2, size=Decimal("1.2345665"), side="SELL"))
    rows = [(fill, 0), (fill, 1), (other, 0)]  # two identical fills of one transaction, and another
    with psycopg.connect(dsn) as conn:
        for f, occ in rows:
            conn.execute(
                "INSERT INTO trades_public (trade_id, wallet, condition_id, asset, side, size, price, outcome, "
                "outcome_index, transaction_hash, traded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 999, %s, "
                "to_timestamp(%s))",
                (old_trade_id(f.wallet, f.transaction_hash, f.asset, f.side, f.size, f.timestamp, occ), f.wallet,
                 f.condition_id, f.asset, f.side, f.size, f.price, f.outcome, f.transaction_hash, f.timestamp))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for m in migrations:
            if m.version.startswith("007"):
                conn.execute(m.sql)
        stored = conn.execute("SELECT trade_id, source, confirmed_at IS NOT NULL, outcome_index "
                              "FROM trades_public").fetchall()
    expected = {t.trade_id for t in assign_trade_ids([fill, fill, other])}
    assert {r[0] for r in stored} == expected
    # The stream's reading of the same fill (one second early, mixed case) lands on the same row.
    stream_fill = parse_frame(rtds_frame())
    assert stream_fill is not None and assign_trade_ids([stream_fill])[0].trade_id in expected
    assert all(r[1] == "wallet" and r[2] and r[3] is None for r in stored)
