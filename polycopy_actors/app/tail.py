"""``python -m polycopy_actors tail``: each new trade as it lands, fed by ``LISTEN polycopy_trades``.

Runs in the main thread on one autocommit connection of its own; Ctrl-C ends it (exit 0). Rows are
read back by ``trade_id`` (the notification carries only wallet, id and tier), so what it prints is
what the table holds.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TextIO

import psycopg

_ROW_SQL = ("SELECT trade_id, traded_at, wallet, side, size, price, title, source, created_at FROM trades_public "
            "WHERE trade_id = ANY(%s) ORDER BY traded_at, trade_id")


def format_trade(row: tuple[Any, ...], tier: str) -> str:
    """One printed line: time, tier, wallet, side, size, price, market, and how late it was stored."""
    traded_at, wallet, side, size, price, title, source, created_at = row
    lag = (created_at - traded_at).total_seconds()
    when = traded_at.astimezone().strftime("%H:%M:%S") if isinstance(traded_at, datetime) else str(traded_at)
    market = (title or "?")[:60]
    return (f"{when} {tier:<4} {wallet} {side:<4} {size.normalize():>12f} @ {price.normalize():<10f} {market}"
            f"  [{source}, stored {lag:.1f} s after the trade]")


def tail(conn: psycopg.Connection[Any], wallets: set[str] | None, tier: str | None, out: TextIO) -> None:
    """Print every new trade row (of ``wallets`` / ``tier`` when given) until interrupted. ``conn`` must
    be in autocommit mode (a LISTEN inside an open transaction would see nothing)."""
    conn.execute("LISTEN polycopy_trades")
    scope = ", ".join(sorted(wallets)) if wallets else "every wallet"
    print(f"waiting for trades of {scope}{f' in the {tier} tier' if tier else ''} (Ctrl-C to stop)", file=out,
          flush=True)
    while True:
        batch: dict[str, str] = {}
        for note in conn.notifies(timeout=0.5):
            event = json.loads(note.payload)
            if (wallets and event.get("wallet") not in wallets) or (tier and event.get("tier") != tier):
                continue
            batch[event["trade_id"]] = event.get("tier", "?")
        if not batch:
            continue
        for trade_id, *row in conn.execute(_ROW_SQL, (list(batch),)).fetchall():
            print(format_trade(tuple(row), batch[trade_id]), file=out, flush=True)
