"""What one poll of one wallet produced, for the DbWriter (pure record; sent with ``tell``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from polycopy_actors.api.models import Trade
from polycopy_actors.api.transport import Rejected
from polycopy_actors.logic.reconcile import Close, Held


@dataclass(frozen=True)
class PollResult:
    """One poll of one wallet, for the writer: all of it lands in one transaction.

    ``final=False``: only the trades and their cursor, sent ahead so that the close evidence read
    from the database includes them; the wallet's poll state is written by the final result."""

    wallet: str
    tier: str
    polled_at: datetime
    ok: bool
    error: str | None = None
    trades: tuple[Trade, ...] = ()
    #: Newest trade time seen (the cursor); written in the same transaction as ``trades``.
    watermark: datetime | None = None
    #: Positions whose stored row changes (opened, changed, seen, marked missing or present again).
    upserts: tuple[Held, ...] = ()
    closes: tuple[Close, ...] = field(default=())
    rejected: tuple[Rejected, ...] = ()
    final: bool = True


#: Where a trade row came from. ``stream`` rows are fast but unconfirmed; the REST sources confirm.
SOURCES = ("stream", "feed", "wallet")


@dataclass(frozen=True)
class DetectedTrades:
    """Trades detected by the stream or the global feed, for the writer's fast lane (written at once).

    They never move a wallet's cursor. ``feed_cursor``: the feed's new position (block time of the
    newest row it read), written in the same transaction as the trades."""

    tier: str
    source: str
    trades: tuple[Trade, ...]
    feed_cursor: tuple[str, datetime] | None = None
