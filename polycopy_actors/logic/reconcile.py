"""Position reconciliation (pure: no threads, no I/O): diff a snapshot against what is known, and
decide why a vanished position closed from the evidence gathered since it was last seen.

Owned by the WalletPoller that holds the wallet's lease. The evidence lives in the database
(``positions_current.last_seen_at`` / ``missing_since``), so a restart, the next sweep or another
process continues where the last poll stopped:

- a position present in a snapshot is *seen* (``last_seen_at``, persisted at most every
  :data:`SEEN_RESOLUTION_SECONDS`: the evidence window starts earlier by a margin anyway);
- a position missing from a *complete* snapshot is marked ``missing_since``; it closes once it has
  been missing for ``grace_seconds`` (the API runs 5-80 s late); a snapshot that skipped a malformed
  row may open and update positions, never mark one missing (a failed read is not an empty one);
- its reason comes from :func:`classify`, over the window from ``last_seen_at`` minus a margin
  (the positions route lags the trades route) until now.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from polycopy_actors.api.models import Position

MANUAL_CLOSE = "manual_close"
MARKET_CLOSED = "market_closed"
REDEEMED = "redeemed"

#: ``last_seen_at`` is written again once it is this much older than the snapshot that saw it.
SEEN_RESOLUTION_SECONDS = 10.0
#: Net shares at most this are "none left" (the API's sizes carry six decimals).
SIZE_EPSILON = Decimal("0.000001")


@dataclass(frozen=True)
class Held:
    """A position as stored in ``positions_current`` (with its evidence columns)."""

    position: Position
    opened_at: datetime
    #: Last seen present in a complete snapshot (as stored; None for rows older than the column).
    last_seen_at: datetime | None = None
    #: First seen missing from a complete snapshot; None while present.
    missing_since: datetime | None = None

    def evidence_since(self, margin_seconds: float) -> datetime:
        """Start of the window whose events can explain the position's disappearance."""
        seen = self.last_seen_at or self.opened_at
        return seen - timedelta(seconds=margin_seconds)

    def trades_since(self, margin_seconds: float) -> datetime:
        """Start of the trades read for the evidence: the window, or the opening's first entry if earlier."""
        start = self.evidence_since(margin_seconds)
        first = self.position.first_entry_at
        return min(start, datetime.fromtimestamp(first, UTC)) if first is not None else start


@dataclass(frozen=True)
class Close:
    held: Held
    reason: str
    closed_at: datetime


@dataclass
class Diff:
    opened: list[Position] = field(default_factory=list)
    changed: list[Position] = field(default_factory=list)
    #: Missing for the grace period: to be classified and closed (``missing_since`` set).
    vanished: list[Held] = field(default_factory=list)
    #: Missing, still within the grace period (``missing_since`` set).
    missing: list[Held] = field(default_factory=list)
    #: Assets seen again after they had been marked missing.
    reappeared: list[str] = field(default_factory=list)
    #: The new state of every position whose stored row must be written (opened, changed, other
    #: fields moved, marked missing or present again, ``last_seen_at`` due), by asset.
    writes: dict[str, Held] = field(default_factory=dict)


def diff_positions(known: dict[str, Held], snapshot: list[Position], now: datetime, grace_seconds: float,
                   complete: bool = True) -> Diff:
    """Compare a snapshot read at ``now`` with the stored positions. ``complete``: every page was read
    and every row parsed (only then may a position be missing)."""
    out = Diff()
    seen: set[str] = set()
    for pos in snapshot:
        if pos.size <= 0 or pos.asset in seen:
            continue
        seen.add(pos.asset)
        held = known.get(pos.asset)
        if held is None:
            out.opened.append(pos)
            out.writes[pos.asset] = Held(pos, now, now, None)
            continue
        if held.missing_since is not None:
            out.reappeared.append(pos.asset)
        moved = pos.size != held.position.size or pos.avg_price != held.position.avg_price
        if moved:
            out.changed.append(pos)
        seen_due = held.last_seen_at is None or (now - held.last_seen_at).total_seconds() >= SEEN_RESOLUTION_SECONDS
        if moved or pos != held.position or held.missing_since is not None or seen_due:
            out.writes[pos.asset] = Held(pos, held.opened_at, now if seen_due else held.last_seen_at, None)
    if not complete:
        return out
    for asset, held in known.items():
        if asset in seen:
            continue
        since = held.missing_since or now
        marked = held if held.missing_since is not None else replace(held, missing_since=since)
        if held.missing_since is None:
            out.writes[asset] = marked
        if (now - since).total_seconds() >= grace_seconds:
            out.vanished.append(marked)
        else:
            out.missing.append(marked)
    return out


@dataclass(frozen=True)
class WindowTrades:
    """The wallet's stored trades of one asset inside a vanished position's evidence window, as
    ``(timestamp, side, size)``, oldest first (within one second, buys before sells)."""

    trades: tuple[tuple[int, str, Decimal], ...]

    @classmethod
    def of(cls, rows: list[tuple[int, str, Decimal]]) -> WindowTrades:
        return cls(tuple(sorted(rows, key=lambda r: (r[0], r[1] == "SELL"))))

    def sold_out_since(self, first_entry_at: int) -> bool:
        """v2: the opening's own trades (since its first entry) sold and net to nothing: every share it
        bought was sold. Independent of which of them the lagging snapshot had shown, and of their order
        within a second (an earlier opening closed by sales nets to nothing too)."""
        mine = [(side, size) for ts, side, size in self.trades if ts >= first_entry_at]
        net = sum((size if side == "BUY" else -size for side, size in mine), Decimal(0))
        return any(side == "SELL" for side, _ in mine) and net <= SIZE_EPSILON

    def maybe_sold_out(self, seen_size: Decimal, as_of: int | None) -> bool:
        """The trades after *some* point, a sale among them, net to minus the seen size: from
        ``as_of``'s own second on (a trade in that second may or may not be the one the snapshot
        reflected), or anywhere in the window without it (v1). Weaker than :func:`replay`: a REDEEM or
        MERGE explains a close first."""
        flow = Decimal(0)
        sold = False
        for ts, side, size in reversed(self.trades):
            if as_of is not None and ts < as_of:
                break
            flow += size if side == "BUY" else -size
            sold = sold or side == "SELL"
            if sold and abs(seen_size + flow) <= SIZE_EPSILON:
                return True
        return False

    def last_buy(self) -> int | None:
        """When the position last grew: a REDEEM or MERGE before it belongs to an earlier opening."""
        return max((ts for ts, side, _ in self.trades if side == "BUY"), default=None)


_ORDER = {"BUY": 0, "SELL": 1, "MERGE": 2, "REDEEM": 3}


def replay(seen_size: Decimal, as_of: int, trades: WindowTrades, activity: list[tuple[int, str, str]],
           condition_id: str, opened_at: int | None = None) -> str | None:
    """What removed a position the snapshot showed with ``seen_size`` as of its last event ``as_of``
    (v2's ``last_event_at``): replay, in time order, the trades after it and its market's REDEEM and
    MERGE from its second on; the first event that leaves nothing decides (a sale -> ``manual_close``,
    a merge -> ``manual_close``, a redemption -> ``redeemed``). None: nothing after it explains it.

    A REDEEM or MERGE in the opening's own first second (``opened_at``, v2's ``first_entry_at``), when the
    wallet held an earlier opening (it bought before that second), closed the earlier opening: the API
    says this opening began in that second, so the earlier one had ended, and only that event ends it
    (merge what was held, buy again). Without an earlier opening it can only have come after the
    purchases of that second."""
    earlier = opened_at is not None and any(side == "BUY" and ts < opened_at for ts, side, _ in trades.trades)
    acts = [(ts, kind) for ts, kind, cid in activity
            if cid == condition_id and ts >= as_of and not (earlier and ts == opened_at)]
    later = [a for a in acts if a[0] > as_of]
    if later and not any(side == "BUY" and ts > as_of for ts, side, _ in trades.trades):
        # One in the snapshot's own second may have come before its last event (the snapshot showed
        # the position after it); with a later one and no purchase since, the later one removed it.
        acts = later
    events = [(ts, side, size) for ts, side, size in trades.trades if ts > as_of]
    events += [(ts, kind, Decimal(0)) for ts, kind in acts]
    size = seen_size
    for _ts, kind, amount in sorted(events, key=lambda e: (e[0], _ORDER[e[1]])):
        if kind == "BUY":
            size += amount
        elif kind == "SELL":
            size -= amount
            if size <= SIZE_EPSILON:
                return MANUAL_CLOSE
        else:
            return REDEEMED if kind == "REDEEM" else MANUAL_CLOSE
    return None


def explain(held: Held, trades: WindowTrades, activity: list[tuple[int, str, str]], window_start: int,
            ) -> tuple[bool, str | None, bool]:
    """The evidence for one vanished position, as :func:`classify` takes it: (sold out, the REDEEM or
    MERGE that removed it, maybe sold out). ``trades``: the wallet's stored trades of the asset since
    :meth:`Held.trades_since`; ``activity``: the wallet's REDEEM/MERGE ``(timestamp, type, condition id)``
    since ``window_start``."""
    p = held.position
    if p.last_event_at is not None:  # v2: the snapshot says what it had shown
        if p.first_entry_at is not None and trades.sold_out_since(p.first_entry_at):
            return True, None, False
        cause = replay(p.size, p.last_event_at, trades, activity, p.condition_id, p.first_entry_at)
        return cause == MANUAL_CLOSE, "REDEEM" if cause == REDEEMED else None, False
    since = max(window_start, trades.last_buy() or 0)
    return False, closing_activity(activity, p.condition_id, since), trades.maybe_sold_out(p.size, None)


def closing_activity(activity: list[tuple[int, str, str]], condition_id: str, since: int) -> str | None:
    """v1 (no ``last_event_at``): the last REDEEM or MERGE ``(timestamp, type, condition id)`` of the
    market at or after ``since`` (the window start, or when the position last grew: one before that
    closed an earlier opening)."""
    found = [(ts, kind) for ts, kind, cid in activity if cid == condition_id and ts >= since]
    # Same second: a merge happens before a redemption (the market was open, then resolved).
    return max(found, key=lambda f: (f[0], f[1] == "REDEEM"))[1] if found else None


def classify(sold_out: bool, last_activity: str | None, market_closed: bool | None,
             maybe_sold_out: bool = False) -> str | None:
    """Why a held position vanished, from the evidence since it was last seen (minus the margin):

    1. ``sold_out``: the wallet's own trades took its size to zero -> ``manual_close``, even if the
       market has resolved by the time a poll sees it (a sale just before resolution);
    2. ``last_activity``: the REDEEM (automatic ones included) or MERGE of its market that removed it
       -> ``redeemed`` or ``manual_close`` (a merge happens while the market is open); 1 and 2 come
       from :func:`replay` (v2) or the sale rule and :func:`closing_activity` (v1);
    3. ``maybe_sold_out``: a sale that took it to zero unless the snapshot already showed it (same
       second, or v1) -> ``manual_close``;
    4. ``market_closed`` (gamma: closed or resolved) -> ``market_closed``; open -> ``manual_close``;
    5. the market's state could not be learned (``None``) -> ``None``: not classified yet, retried
       later, never guessed.
    """
    if sold_out:
        return MANUAL_CLOSE
    if last_activity == "REDEEM":
        return REDEEMED
    if last_activity == "MERGE" or maybe_sold_out:
        return MANUAL_CLOSE
    if market_closed is None:
        return None
    return MARKET_CLOSED if market_closed else MANUAL_CLOSE
