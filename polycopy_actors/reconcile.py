"""Position reconciliation (pure): diff a complete snapshot against what is known.

Owned by one WalletPoller per wallet. Only a complete, successful snapshot may be diffed (a failed
read is not an empty one). A position missing from the snapshot is closed once it has been missing
for ``grace_seconds`` (the API runs late); its reason is decided by :func:`classify`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from polycopy_actors.models import Position

MANUAL_CLOSE = "manual_close"
MARKET_CLOSED = "market_closed"
REDEEMED = "redeemed"


@dataclass(frozen=True)
class Held:
    """A position as stored in ``positions_current``."""

    position: Position
    opened_at: datetime
    missing_since: float | None = None


@dataclass(frozen=True)
class Close:
    held: Held
    reason: str
    closed_at: datetime


@dataclass
class Diff:
    opened: list[Position] = field(default_factory=list)
    changed: list[Position] = field(default_factory=list)
    #: Same size, other fields moved (price, redeemable): written, not counted as a change.
    refreshed: list[Position] = field(default_factory=list)
    #: Missing long enough: to be classified and closed.
    vanished: list[Held] = field(default_factory=list)
    #: Missing, still within the grace period.
    missing: list[Held] = field(default_factory=list)
    #: Reappeared within the grace period: the missing mark is cleared.
    reappeared: list[str] = field(default_factory=list)


def diff_positions(known: dict[str, Held], snapshot: list[Position], now: float, grace_seconds: float) -> Diff:
    out = Diff()
    seen = {}
    for pos in snapshot:
        if pos.size <= 0:
            continue
        seen[pos.asset] = pos
        held = known.get(pos.asset)
        if held is None:
            out.opened.append(pos)
            continue
        if held.missing_since is not None:
            out.reappeared.append(pos.asset)
        if pos.size != held.position.size or pos.avg_price != held.position.avg_price:
            out.changed.append(pos)
        elif pos != held.position:
            out.refreshed.append(pos)
    for asset, held in known.items():
        if asset in seen:
            continue
        since = held.missing_since if held.missing_since is not None else now
        if now - since >= grace_seconds:
            out.vanished.append(held)
        else:
            out.missing.append(replace(held, missing_since=since))
    return out


def classify(sold_out: bool, first_activity: str | None, market_closed: bool) -> str:
    """Why a held position vanished, in this order:

    1. ``sold_out``: the wallet's own trades since the position was last seen took its size to zero
       -> ``manual_close``, even if the market has resolved by the time this poll sees it (a poll
       after a restart or a long outage);
    2. ``first_activity``: the first REDEEM or MERGE of its market since it was last seen ->
       ``redeemed`` or ``manual_close`` (a merge happens while the market is open);
    3. ``market_closed`` (gamma: closed or resolved) -> ``market_closed``; 4. else ``manual_close``.
    """
    if sold_out:
        return MANUAL_CLOSE
    if first_activity == "REDEEM":
        return REDEEMED
    if first_activity == "MERGE":
        return MANUAL_CLOSE
    return MARKET_CLOSED if market_closed else MANUAL_CLOSE
