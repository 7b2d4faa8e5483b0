"""What a WalletPoller knows of one of its wallets (pure: no threads, no I/O).

One :class:`WalletState` per wallet, owned by the poller that holds the wallet's lease and loaded
from the database when it takes the wallet: the trade cursor, the stored positions with their
evidence (:class:`~polycopy_actors.logic.reconcile.Held`), the malformed items seen so far, and the
per-kind error counts that back each kind of read off on its own (a failing positions route never
delays the wallet's trades).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from polycopy_actors.api.models import Position, Trade
from polycopy_actors.api.transport import Rejected
from polycopy_actors.logic.reconcile import Close, Diff, Held

#: Longest back-off of one kind of read (positions, close evidence) after repeated failures.
MAX_KIND_BACKOFF_SECONDS = 60.0


def _backoff(errors: int, base: float, rng: random.Random) -> float:
    return min(MAX_KIND_BACKOFF_SECONDS, base * 2 ** min(errors, 10)) * (0.75 + rng.random() / 2)


@dataclass
class KindBackoff:
    """Consecutive failures of one kind of read and when it may be tried again (monotonic time)."""

    errors: int = 0
    retry_at: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, now: float, base: float, rng: random.Random) -> None:
        self.errors += 1
        self.retry_at = now + _backoff(self.errors, base, rng)

    def ok(self) -> None:
        self.errors, self.retry_at = 0, 0.0


@dataclass
class WalletState:
    wallet: str
    #: Time of the newest trade read (never wall-clock "now"); None before the first read.
    watermark: datetime | None = None
    positions: dict[str, Held] = field(default_factory=dict)
    #: Reads that served each malformed item (by item key), this process and earlier ones.
    rejected_reads: dict[str, int] = field(default_factory=dict)
    #: Consecutive polls whose trades read failed (the wallet's schedule backs off on these).
    trade_errors: int = 0
    positions_read: KindBackoff = field(default_factory=KindBackoff)
    evidence_read: KindBackoff = field(default_factory=KindBackoff)
    #: Re-checks of this wallet within the current pass (sweep or ``--once``), bounded.
    pass_rechecks: int = 0

    @classmethod
    def from_stored(cls, wallet: str, stored: dict[str, Any], now: datetime | None = None,
                    skew_seconds: float = 0.0) -> WalletState:
        """From what ``queries.load_wallet_state`` returned for the wallet. A stored watermark ahead of
        ``now`` (plus the allowed skew) was moved there by a future-dated row: it is not trusted, and the
        wallet's history is read again (re-reading is harmless: every write is idempotent)."""
        positions = {
            asset: Held(Position(wallet, asset, p["condition_id"], p["size"], p["avg_price"], p["cur_price"],
                                 p["outcome"], p["outcome_index"], p["title"], p["redeemable"], p["last_event_at"],
                                 p["first_entry_at"]),
                        p["opened_at"], p["last_seen_at"], p["missing_since"])
            for asset, p in stored["positions"].items()
        }
        watermark = stored["last_trade_at"]
        if watermark is not None and now is not None and watermark > now + timedelta(seconds=skew_seconds):
            watermark = None
        return cls(wallet, watermark, positions, dict(stored["rejected"]))

    # --- trades -----------------------------------------------------------------------------------

    def since(self, overlap_seconds: int) -> int | None:
        """Where the next trades read starts (an overlap behind the watermark); None = backfill."""
        if self.watermark is None:
            return None
        return max(1, int(self.watermark.timestamp()) - overlap_seconds)

    def count_rejected(self, rejected: list[Rejected]) -> None:
        for item in {r.key: r for r in rejected}.values():
            self.rejected_reads[item.key] = self.rejected_reads.get(item.key, 0) + 1

    def holds(self, rejected: list[Rejected], hold_reads: int) -> bool:
        """A malformed item holds the cursor (the next read starts before it again) until it has been
        served malformed ``hold_reads`` times: then it is passed over (it stays in ``rejected_items``)."""
        return any(self.rejected_reads.get(r.key, 0) < hold_reads for r in rejected)

    def trades_read(self, trades: list[Trade], hold_cursor: bool, now: datetime | None = None,
                    skew_seconds: float = 0.0) -> datetime | None:
        """Record a successful trades read; returns the cursor to store (None: keep the stored one). A trade
        dated further than ``skew_seconds`` ahead of ``now`` is kept by the caller but never moves the
        cursor (a future-dated row would otherwise hide every later trade of the wallet)."""
        self.trade_errors = 0
        if now is not None:
            limit = (now + timedelta(seconds=skew_seconds)).timestamp()
            trades = [t for t in trades if t.timestamp <= limit]
        if hold_cursor or not trades:
            return None
        mark = datetime.fromtimestamp(max(t.timestamp for t in trades), UTC)
        self.watermark = mark if self.watermark is None else max(self.watermark, mark)
        return mark

    # --- positions ----------------------------------------------------------------------------------

    def apply(self, diff: Diff, closes: list[Close]) -> list[Held]:
        """Take a diff and the closes decided from it; returns the rows to write (closed ones excluded)."""
        for asset, held in diff.writes.items():
            self.positions[asset] = held
        closed = {c.held.position.asset for c in closes}
        for asset in closed:
            self.positions.pop(asset, None)
        return [h for a, h in diff.writes.items() if a not in closed]

    def recheck_at(self, grace_seconds: float) -> datetime | None:
        """When the earliest position missing now will have been missing for the grace period."""
        marks = [h.missing_since for h in self.positions.values() if h.missing_since is not None]
        return min(marks) + timedelta(seconds=grace_seconds) if marks else None
