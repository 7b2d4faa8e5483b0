"""Hostile answers for :class:`~polycopy_actors.simulator.http.Faults` ``poison``: the exact bytes each
poison kind puts on the wire, and the fake trade the "elsewhere" server serves after a redirect.

Pure functions and constants (no state, no threads): the HTTP handler threads and the RTDS connection
threads call them. Poison only changes what is served; the world (the ground truth) is never touched.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

from polycopy_actors.simulator import render
from polycopy_actors.simulator.world import SimFill, SimMarket, SimPosition

#: Kinds that change rows of the poisoned wallets inside an answer (or a stream frame).
ROW_KINDS = frozenset({"surrogate_title", "tiny_size", "huge_precision", "future_row"})
#: Kinds that replace or change the whole answer.
BODY_KINDS = frozenset({"deep_json", "endless_cursor", "trickle", "trickle_headers", "redirect", "malformed_body"})
POISON_KINDS = ROW_KINDS | BODY_KINDS
#: The row kinds that change values of a row, applied to the rendered rows.
VALUE_KINDS = frozenset({"surrogate_title", "tiny_size", "huge_precision"})
#: The kinds the RTDS stream applies to a poisoned wallet's frames.
STREAM_KINDS = VALUE_KINDS | {"deep_json"}

#: The routes whose rows are trades (or hold TRADE rows): where the row kinds apply.
TRADE_ROUTES = frozenset({"/trades", "/activity", "/v2/trades", "/v2/activity"})
#: The v2 routes that page with ``next_cursor`` (``endless_cursor``).
PAGED_V2_ROUTES = frozenset({"/v2/trades", "/v2/activity", "/v2/positions"})
#: The name of the RTDS stream in ``Faults.routes``.
STREAM_ROUTE = "rtds"

#: ``surrogate_title``: a lone UTF-16 surrogate; ``json.dumps`` (ASCII) writes it as the escape ``\ud800``.
SURROGATE_TITLE = "bad \ud800 title"
#: ``tiny_size``: a JSON number that underflows every float (``json.loads`` gives 0.0, ``Decimal`` 1E-20000).
TINY_SIZE_LITERAL = "1e-20000"
#: ``huge_precision``: ``0.`` and 1,200 digits.
HUGE_PRICE_LITERAL = "0." + "1234567890" * 120
#: ``future_row``: 2099-01-01T00:00:00Z.
FUTURE_TS = 4070908800
#: ``deep_json``: how deep the arrays nest.
DEEP = 50_000
DEEP_ARRAY = "[" * DEEP + "]" * DEEP
#: ``malformed_body`` (and ``malformed_json_rate``): a body cut short, not JSON.
MALFORMED_BODY = b'{"data": [{"proxy_wallet": "0x'

#: The fake trade the elsewhere server serves: a transaction and a market that are in no ground truth.
ELSEWHERE_TX = "0x" + "e15e" * 16
ELSEWHERE_WALLET = "0x" + "e15e" * 10
ELSEWHERE_MARKET = SimMarket(
    condition_id="0x" + "0e15" * 16, market_id=999_999, question="Elsewhere market?", slug="elsewhere-market",
    assets=("9" * 76, "8" * 76), outcomes=("Yes", "No"), price_yes=Decimal("0.5"))

# Placeholders for the literals json.dumps cannot write: a NUL never occurs in real data; json.dumps
# writes it as the escape \u0000, which encode() swaps for the literal.
_TINY = "\x00poison:tiny_size\x00"
_HUGE = "\x00poison:huge_precision\x00"
_LITERALS = {json.dumps(_TINY): TINY_SIZE_LITERAL, json.dumps(_HUGE): HUGE_PRICE_LITERAL}


def encode(body: Any) -> bytes:
    """``json.dumps(body)`` (ASCII: a lone surrogate goes out as its ``\\uXXXX`` escape), with the
    placeholders set by :func:`poison_row` replaced by their number literals."""
    text = json.dumps(body)
    if "\\u0000poison:" in text:
        for placeholder, literal in _LITERALS.items():
            text = text.replace(placeholder, literal)
    return text.encode()


def poison_row(row: dict[str, Any], kinds: frozenset[str]) -> None:
    """Apply the value kinds (title, size, price) to one rendered trade row or stream payload, in place.
    ``future_row`` is applied by the routes (it moves the row in the ordering and the paging)."""
    if "surrogate_title" in kinds:
        row["title"] = SURROGATE_TITLE
    if "tiny_size" in kinds:
        row["size"] = _TINY
    if "huge_precision" in kinds:
        row["price"] = _HUGE


def row_wallet(row: Any) -> str | None:
    """The wallet of a rendered row (v1 camelCase, v2 snake_case), lowercase; None if not a trade row."""
    if not isinstance(row, dict) or row.get("type", "TRADE") != "TRADE":
        return None
    wallet = row.get("proxyWallet") or row.get("proxy_wallet")
    return wallet.lower() if isinstance(wallet, str) else None


def deep_body(v2: bool) -> bytes:
    """``deep_json``: ``{"data":`` + 50,000 ``[`` + 50,000 ``]`` + ``}`` (v2), or the bare array (v1, gamma)."""
    return ('{"data":' + DEEP_ARRAY + "}" if v2 else DEEP_ARRAY).encode()


def deep_frame(connection_id: str) -> str:
    """``deep_json`` on the stream: a frame of the usual envelope whose payload nests 50,000 deep."""
    head = json.dumps({"connection_id": connection_id, "timestamp": int(time.time() * 1000), "topic": "activity",
                       "type": "trades"})
    return head[:-1] + ', "payload": ' + DEEP_ARRAY + "}"


def elsewhere_answer(path: str, q: dict[str, str], wallet: str) -> Any:
    """What the elsewhere server answers: a well-formed body of the route's shape holding one fake row
    for ``wallet`` (a trade on the trade routes, a position on the positions routes; gamma and
    ``/v2/status`` a well-formed answer with nothing of the world)."""
    now = int(time.time())
    fill = SimFill(seq=0, wallet=wallet, market=ELSEWHERE_MARKET, outcome_index=0, side="BUY", size=Decimal(7),
                   price=Decimal("0.5"), timestamp=now, tx=ELSEWHERE_TX, taker=True, matched_at=now)
    position = SimPosition(wallet=wallet, market=ELSEWHERE_MARKET, outcome_index=0, size=Decimal(7),
                           avg_price=Decimal("0.5"), total_bought=Decimal(7), opened_at=now, last_event_at=now)
    v1_rows: dict[str, Any] = {
        "/trades": lambda: [render.v1_fill(fill)],
        "/activity": lambda: [render.v1_activity_row(fill)],
        "/positions": lambda: [render.v1_position(position)],
        "/closed-positions": lambda: [],
        "/markets": lambda: [render.gamma_row(ELSEWHERE_MARKET)],
    }
    if path in v1_rows:
        return v1_rows[path]()
    if path == "/v2/status":
        return {"computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "age_seconds": 0,
                "serving": {"lag_seconds": 0, "worst": "activity_feed", "projections": {}},
                "ingestion": {"tail": {"block_timestamp": now, "lag_seconds": 0}, "worst": []}}
    if path == "/v2/trades":
        data: Any = [render.v2_fill(fill)]
    elif path == "/v2/activity":
        data = [render.v2_activity_row(fill)]
    elif path == "/v2/positions" and (q.get("status") or "OPEN").upper() != "CLOSED":
        data = [render.v2_position(position)]
    else:
        data = None
    return {"data": data, "pagination": {"limit": len(data or ()), "offset": 0, "has_more": False,
                                         "next_cursor": None}}
