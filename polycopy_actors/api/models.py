"""Immutable records parsed from the API, and the identity of a trade fill.

Amounts are :class:`~decimal.Decimal` (bodies are decoded with ``parse_float=Decimal``, so no
float ever touches them), timestamps are aware UTC datetimes, wallets are lowercase.

Trade identity (the API has no trade id, in v1, v2 or the RTDS stream): ``trade_id`` is the SHA-256
(first 32 hex digits) of ``wallet | transaction_hash | asset | side | size (6 decimals, half up) |
occurrence``. The same fill read from the stream, the global feed, a wallet's feed or v1 gets the same
id. Left out on purpose:

- ``price``: the API computes it as a float that may differ in its last digits between reads;
- ``timestamp``: the transaction fixes the block time, and the stream's payload often says one second
  *before* the block time the REST routes show.

``occurrence`` numbers fully identical rows of one transaction (0, 1, ...), so two genuine identical
fills stay two rows. REST reads always re-read whole seconds, so a read sees every identical sibling
and numbers them the same way; the stream numbers them in arrival order (identical rows: the order
does not matter). Known collision case: none for distinct fills; two fills of one transaction that
differ only by price are counted as identical siblings and still kept as two rows (ids differ by
occurrence), with the later read's prices. ``sql/007_trade_sources.sql`` rewrote the ids of the
earlier derivation (which had the timestamp in it) with the same rule in SQL.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from polycopy_actors.api.wallets import InvalidWallet, normalize_wallet

SIX_PLACES = Decimal("0.000001")
#: 2100-01-01: timestamps beyond it are treated as malformed (seconds mistaken for milliseconds).
MAX_TIMESTAMP = 4102444800


#: Digits after the decimal point an amount may have (prices are computed floats: about 17 significant
#: digits; more than this is not a number the API means, and the database could not always store it).
MAX_FRACTION_DIGITS = 30
#: A number written as text longer than this is refused before it is parsed.
MAX_NUMBER_CHARS = 100
#: Text fields (titles, slugs, outcomes) longer than this are refused: no market title is that long.
MAX_TEXT_CHARS = 2_000
#: A price is USDC per share of an outcome that pays at most 1.
MAX_PRICE = Decimal(1)

#: Outcome indexes are small; the column is a 32-bit integer.
MAX_OUTCOME_INDEX = 1_000_000
#: What fresh (not yet enriched) rows say instead of an outcome index: never stored (null instead).
UNLABELLED_OUTCOME = 999


class MalformedItem(ValueError):
    """An API item that cannot be used; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Trade:
    trade_id: str
    wallet: str
    condition_id: str
    asset: str
    side: str
    size: Decimal
    price: Decimal
    outcome: str | None
    outcome_index: int | None
    title: str | None
    slug: str | None
    transaction_hash: str
    timestamp: int

    @property
    def traded_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, UTC)


@dataclass(frozen=True, slots=True)
class Position:
    wallet: str
    asset: str
    condition_id: str
    size: Decimal
    avg_price: Decimal
    cur_price: Decimal | None
    outcome: str | None
    outcome_index: int | None
    title: str | None
    redeemable: bool
    #: v2: epoch seconds of the last event the row reflects (a trade, a redemption); v1 rows have none.
    #: Trades after it are what the (possibly lagging) snapshot did not show yet.
    last_event_at: int | None = None
    #: v2: epoch seconds of the position's first entry (when this opening began).
    first_entry_at: int | None = None


@dataclass(frozen=True, slots=True)
class Activity:
    wallet: str
    type: str
    condition_id: str
    timestamp: int
    transaction_hash: str
    size: Decimal


@dataclass(frozen=True, slots=True)
class Market:
    condition_id: str
    active: bool
    closed: bool
    uma_resolution_status: str | None

    @property
    def is_closed(self) -> bool:
        """Closed or resolved: gamma has no single flag (``active`` stays true after resolution)."""
        return self.closed or (self.uma_resolution_status or "").lower() == "resolved"


# --- field readers --------------------------------------------------------------------------------

def _get(item: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in item:
            return item[name]
    raise MalformedItem(names[0], "missing")


def _text(item: dict[str, Any], *names: str, optional: bool = False) -> str | None:
    try:
        value = _get(item, *names)
    except MalformedItem:
        if optional:
            return None
        raise
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise MalformedItem(names[0], f"expected a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS:
        raise MalformedItem(names[0], f"longer than {MAX_TEXT_CHARS} characters")
    try:
        # A lone UTF-16 surrogate ("\\ud800") is valid JSON, but no UTF-8 text holds it: PostgreSQL
        # cannot store it (a JavaScript backend that cuts a string inside an emoji makes exactly this).
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedItem(names[0], "text that is not valid Unicode (a lone surrogate)") from None
    # PostgreSQL text cannot hold NUL; descriptive fields lose it, identifiers then fail their checks.
    return value.replace("\x00", "")


def _decimal(item: dict[str, Any], *names: str, minimum: Decimal | None = Decimal(0),
             maximum: Decimal | None = None) -> Decimal:
    """A number as it was written (no float on the way), within what the database stores and what the
    field can mean: finite, below 1e20, at most :data:`MAX_FRACTION_DIGITS` digits after the point."""
    value = _get(item, *names)
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, float, str)):
        raise MalformedItem(names[0], f"expected a number, got {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_NUMBER_CHARS:
        raise MalformedItem(names[0], f"a number written with more than {MAX_NUMBER_CHARS} characters")
    try:
        dec = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise MalformedItem(names[0], f"not a number: {ascii(str(value)[:40])}") from None
    if not dec.is_finite():
        raise MalformedItem(names[0], "not a finite number")
    if dec.is_zero():
        return Decimal(0)  # "0E-20000" is zero, but its exponent alone would not fit a numeric
    if abs(dec) >= Decimal("1e20"):
        raise MalformedItem(names[0], "number out of range")
    _, digits, exponent = dec.as_tuple()
    assert isinstance(exponent, int)  # finite
    significant = len("".join(map(str, digits)).rstrip("0"))  # (normalize() would round to 28 digits first)
    if -(exponent + len(digits) - significant) > MAX_FRACTION_DIGITS:
        # 1e-20000 cannot be written in PostgreSQL's binary numeric format at all; 1e-1001 would be a
        # 1,000-digit number. No share count or price has more than a few decimals.
        raise MalformedItem(names[0], f"more than {MAX_FRACTION_DIGITS} digits after the decimal point")
    if minimum is not None and dec < minimum:
        raise MalformedItem(names[0], f"must be >= {minimum}, got {dec}")
    if maximum is not None and dec > maximum:
        raise MalformedItem(names[0], f"must be <= {maximum}, got {dec}")
    return dec


def _timestamp(item: dict[str, Any], *names: str) -> int:
    value = _get(item, *names)
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise MalformedItem(names[0], f"expected epoch seconds, got {type(value).__name__}")
    # The range first: int() of a Decimal such as 1e9999999 would build a number of ten million digits.
    if isinstance(value, Decimal) and not value.is_finite():
        raise MalformedItem(names[0], "not a finite number")
    if not 0 < value < MAX_TIMESTAMP:
        raise MalformedItem(names[0], f"out of range: {ascii(str(value)[:40])}")
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise MalformedItem(names[0], "epoch seconds must be whole")
        value = int(value)
    return value


def _int_opt(item: dict[str, Any], *names: str) -> int | None:
    for name in names:
        if name in item:
            value = item[name]
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise MalformedItem(name, f"expected an integer, got {type(value).__name__}")
            if not 0 <= value <= MAX_OUTCOME_INDEX:
                raise MalformedItem(name, f"out of range: {value}")
            return value
    return None


def _wallet(item: dict[str, Any], *names: str) -> str:
    value = _get(item, *names)
    try:
        return normalize_wallet(value)
    except InvalidWallet:
        raise MalformedItem(names[0], "not a wallet address") from None


def _hex(item: dict[str, Any], length: int, *names: str) -> str:
    value = _text(item, *names)
    assert value is not None
    low = value.lower()
    if len(low) != 2 + length or not low.startswith("0x") or any(c not in "0123456789abcdef" for c in low[2:]):
        raise MalformedItem(names[0], f"expected 0x + {length} hex")
    return low


def _token(item: dict[str, Any], *names: str) -> str:
    value = _text(item, *names)
    assert value is not None
    if not (value.isascii() and value.isdigit()) or len(value) > 100:
        raise MalformedItem(names[0], "expected a decimal token id")
    return value


def _bool(item: dict[str, Any], name: str, default: bool = False) -> bool:
    value = item.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise MalformedItem(name, f"expected true/false, got {type(value).__name__}")
    return value


# --- items -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RawFill:
    """A trade row before its identity is assigned (identity needs the sibling rows)."""

    wallet: str
    condition_id: str
    asset: str
    side: str
    size: Decimal
    price: Decimal
    outcome: str | None
    outcome_index: int | None
    title: str | None
    slug: str | None
    transaction_hash: str
    timestamp: int

    def identity_key(self) -> tuple[str, ...]:
        # Half up, as PostgreSQL's round(numeric, 6) (the migration that rewrote old ids uses it).
        size = self.size.quantize(SIX_PLACES, rounding=ROUND_HALF_UP)
        return (self.wallet, self.transaction_hash, self.asset, self.side, f"{size:f}")


def parse_fill(item: Any) -> RawFill:
    """A trade row of v1 ``/trades``, v1 ``/activity`` (type TRADE) or v2 ``/v2/trades``."""
    if not isinstance(item, dict):
        raise MalformedItem("item", f"expected an object, got {type(item).__name__}")
    side = _text(item, "side")
    if side not in ("BUY", "SELL"):
        raise MalformedItem("side", f"expected BUY or SELL, got {side!r}")
    return RawFill(
        wallet=_wallet(item, "proxyWallet", "proxy_wallet"),
        condition_id=_hex(item, 64, "conditionId", "condition_id"),
        asset=_token(item, "asset", "token_id"),
        side=side,
        size=_decimal(item, "size"),
        price=_decimal(item, "price", maximum=MAX_PRICE),
        outcome=_text(item, "outcome", optional=True),
        outcome_index=_outcome_index(item),
        title=_text(item, "title", optional=True) or None,
        slug=_text(item, "slug", optional=True) or None,
        transaction_hash=_hex(item, 64, "transactionHash", "transaction_hash"),
        timestamp=_timestamp(item, "timestamp"),
    )


def _outcome_index(item: dict[str, Any]) -> int | None:
    value = _int_opt(item, "outcomeIndex", "outcome_index")
    return None if value == UNLABELLED_OUTCOME else value


def trade_id_of(key: tuple[str, ...], occurrence: int) -> str:
    """The ``trade_id`` of the ``occurrence``-th fill with this identity key (see the module docstring)."""
    return hashlib.sha256("|".join((*key, str(occurrence))).encode()).hexdigest()[:32]


def with_id(fill: RawFill, occurrence: int) -> Trade:
    return Trade(trade_id=trade_id_of(fill.identity_key(), occurrence),
                 **{f: getattr(fill, f) for f in RawFill.__slots__})


def assign_trade_ids(fills: list[RawFill]) -> list[Trade]:
    """Give every fill of one read its stable ``trade_id`` (see the module docstring)."""
    seen: Counter[tuple[str, ...]] = Counter()
    out = []
    for fill in fills:
        key = fill.identity_key()
        out.append(with_id(fill, seen[key]))
        seen[key] += 1
    return out


def parse_position(item: Any) -> Position:
    """A row of v1 ``/positions`` (camelCase) or v2 ``/v2/positions`` (snake_case)."""
    if not isinstance(item, dict):
        raise MalformedItem("item", f"expected an object, got {type(item).__name__}")
    size = _decimal(item, "size", "current_size")
    if "curPrice" in item or "cur_price" in item:
        cur: Decimal | None = _decimal(item, "curPrice", "cur_price", maximum=MAX_PRICE)
    elif "current_value" in item and size > 0:
        value = _decimal(item, "current_value")
        if value > size * MAX_PRICE:
            raise MalformedItem("current_value", "more than the position's size at the highest price")
        cur = (value / size).quantize(SIX_PLACES)
    else:
        cur = None
    return Position(
        wallet=_wallet(item, "proxyWallet", "proxy_wallet"),
        asset=_token(item, "asset", "token_id"),
        condition_id=_hex(item, 64, "conditionId", "condition_id"),
        size=size,
        avg_price=_decimal(item, "avgPrice", "avg_price", maximum=MAX_PRICE),
        cur_price=cur,
        outcome=_text(item, "outcome", optional=True),
        outcome_index=_outcome_index(item),
        title=_text(item, "title", optional=True),
        redeemable=_bool(item, "redeemable") or item.get("status") in ("REDEEMABLE", "REDEEMABLE_LOST"),
        last_event_at=_timestamp(item, "last_event_at") if item.get("last_event_at") is not None else None,
        first_entry_at=_timestamp(item, "first_entry_at") if item.get("first_entry_at") is not None else None,
    )


@dataclass(frozen=True, slots=True)
class ClosedPosition:
    """A row of v1 ``/closed-positions`` or v2 ``/v2/positions?status=CLOSED``."""

    wallet: str
    asset: str
    condition_id: str
    avg_price: Decimal
    closed_at: int


def parse_closed_position(item: Any) -> ClosedPosition:
    if not isinstance(item, dict):
        raise MalformedItem("item", f"expected an object, got {type(item).__name__}")
    return ClosedPosition(
        wallet=_wallet(item, "proxyWallet", "proxy_wallet"),
        asset=_token(item, "asset", "token_id"),
        condition_id=_hex(item, 64, "conditionId", "condition_id"),
        avg_price=_decimal(item, "avgPrice", "avg_price"),
        closed_at=_timestamp(item, "timestamp", "last_event_at"),
    )


def parse_activity(item: Any) -> Activity:
    if not isinstance(item, dict):
        raise MalformedItem("item", f"expected an object, got {type(item).__name__}")
    kind = _text(item, "type")
    assert kind is not None
    return Activity(
        wallet=_wallet(item, "proxyWallet", "proxy_wallet"),
        type=kind,
        condition_id=_hex(item, 64, "conditionId", "condition_id"),
        timestamp=_timestamp(item, "timestamp"),
        transaction_hash=_hex(item, 64, "transactionHash", "transaction_hash"),
        size=_decimal(item, "size"),
    )


def parse_market(item: Any) -> Market:
    if not isinstance(item, dict):
        raise MalformedItem("item", f"expected an object, got {type(item).__name__}")
    return Market(
        condition_id=_hex(item, 64, "conditionId"),
        active=_bool(item, "active"),
        closed=_bool(item, "closed"),
        uma_resolution_status=_text(item, "umaResolutionStatus", optional=True),
    )
