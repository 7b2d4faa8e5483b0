"""The writer's batch (pure buffer) and its one-transaction write.

:class:`WriteBuffer` holds pending rows keyed by conflict key (last write wins); :func:`write_batch`
writes a whole buffer with one ``unnest`` statement per table inside the caller's transaction. Owned
by the DbWriter actor (and the writer benchmark).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from polycopy_actors.api.models import Trade
from polycopy_actors.api.transport import Rejected
from polycopy_actors.logic.poll_result import PollResult
from polycopy_actors.logic.reconcile import Close, Held


@dataclass
class _State:
    tier: str
    polled_at: datetime
    success_at: datetime | None
    watermark: datetime | None
    new_errors: int
    last_error: str | None


class WriteBuffer:
    """Pending rows keyed by conflict key (pure; owned by the writer)."""

    def __init__(self) -> None:
        self.trades: dict[str, tuple[Trade, str]] = {}
        self.positions: dict[tuple[str, str], Held] = {}
        self.closes: dict[tuple[str, str, datetime], Close] = {}
        self.rejected: dict[tuple[str, str, str], tuple[Rejected, int]] = {}
        self.states: dict[str, _State] = {}

    def __len__(self) -> int:
        return len(self.trades) + len(self.positions) + len(self.closes) + len(self.rejected) + len(self.states)

    def add(self, r: PollResult) -> None:
        for t in r.trades:
            self.trades[t.trade_id] = (t, r.tier)
        for item in r.rejected:
            key = (item.wallet, item.route, item.key)
            self.rejected[key] = (item, self.rejected[key][1] + 1 if key in self.rejected else 1)
        for close in r.closes:
            p = close.held.position
            self.closes[(p.wallet, p.asset, close.held.opened_at)] = close
            pending = self.positions.get((p.wallet, p.asset))
            if pending is not None and pending.opened_at == close.held.opened_at:
                del self.positions[(p.wallet, p.asset)]
        for held in r.upserts:
            self.positions[(held.position.wallet, held.position.asset)] = held
        if not r.final:
            if r.watermark is not None:
                self._state(r).watermark = max(r.watermark, self._state(r).watermark or r.watermark)
            return
        old = self._state(r)
        old.polled_at = max(old.polled_at, r.polled_at)
        if r.watermark is not None:
            old.watermark = r.watermark if old.watermark is None else max(old.watermark, r.watermark)
        if r.ok:
            old.success_at = r.polled_at
            old.new_errors, old.last_error = 0, None
        else:
            old.new_errors += 1
            old.last_error = (r.error or "error")[:500]

    def _state(self, r: PollResult) -> _State:
        old = self.states.get(r.wallet)
        if old is None:
            old = _State(r.tier, r.polled_at, None, None, 0, None)
            self.states[r.wallet] = old
        return old


# Parameters travel in binary (%b): parsing 13 text arrays of a big batch costs more than the upsert.
_TRADES_SQL = """
INSERT INTO trades_public AS t (trade_id, wallet, condition_id, asset, side, size, price, outcome, outcome_index,
                                title, slug, transaction_hash, traded_at)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::numeric[], %b::numeric[],
                     %b::text[], %b::int[], %b::text[], %b::text[], %b::text[], %b::timestamptz[])
ON CONFLICT (trade_id) DO UPDATE SET
    wallet = excluded.wallet, condition_id = excluded.condition_id, asset = excluded.asset, side = excluded.side,
    size = excluded.size, price = excluded.price, outcome = excluded.outcome,
    outcome_index = excluded.outcome_index, title = excluded.title, slug = excluded.slug,
    transaction_hash = excluded.transaction_hash, traded_at = excluded.traded_at, updated_at = now()
-- Latest wins, but the overlap re-read of unchanged rows writes nothing (no dead tuples, no recount).
WHERE (t.wallet, t.condition_id, t.asset, t.side, t.size, t.price, t.outcome, t.outcome_index, t.title, t.slug,
       t.transaction_hash, t.traded_at)
      IS DISTINCT FROM
      (excluded.wallet, excluded.condition_id, excluded.asset, excluded.side, excluded.size, excluded.price,
       excluded.outcome, excluded.outcome_index, excluded.title, excluded.slug, excluded.transaction_hash,
       excluded.traded_at)
RETURNING trade_id, (xmax = 0) AS inserted
"""

# Fencing: positions and closes of a wallet whose lease another owner holds are not written
# (the NOT EXISTS clause of the three statements below).
_CLOSES_SQL = """
INSERT INTO positions_closed (wallet, asset, condition_id, size, avg_price, outcome, title, reason, opened_at,
                              closed_at)
SELECT g.* FROM unnest(%b::text[], %b::text[], %b::text[], %b::numeric[], %b::numeric[], %b::text[], %b::text[],
                       %b::text[], %b::timestamptz[], %b::timestamptz[])
       AS g(wallet, asset, condition_id, size, avg_price, outcome, title, reason, opened_at, closed_at)
WHERE NOT EXISTS (SELECT 1 FROM wallet_leases l WHERE l.wallet = g.wallet AND l.owner <> %s
                  AND l.locked_until > clock_timestamp())
ON CONFLICT ON CONSTRAINT positions_closed_once DO NOTHING
RETURNING reason
"""

_CLOSES_DELETE_SQL = """
DELETE FROM positions_current c
USING unnest(%b::text[], %b::text[], %b::timestamptz[]) AS g(wallet, asset, opened_at)
WHERE c.wallet = g.wallet AND c.asset = g.asset AND c.opened_at = g.opened_at
  AND NOT EXISTS (SELECT 1 FROM wallet_leases l WHERE l.wallet = g.wallet AND l.owner <> %s
                  AND l.locked_until > clock_timestamp())
"""

# An existing row keeps its opened_at: the opening is the row's, not the poller's memory of it.
_POSITIONS_SQL = """
INSERT INTO positions_current AS c (wallet, asset, condition_id, size, avg_price, cur_price, outcome, outcome_index,
                                    title, redeemable, opened_at, last_seen_at, missing_since, last_event_at,
                                    first_entry_at)
SELECT g.* FROM unnest(%b::text[], %b::text[], %b::text[], %b::numeric[], %b::numeric[], %b::numeric[], %b::text[],
                       %b::int[], %b::text[], %b::bool[], %b::timestamptz[], %b::timestamptz[], %b::timestamptz[],
                       %b::int8[], %b::int8[])
       AS g(wallet, asset, condition_id, size, avg_price, cur_price, outcome, outcome_index, title, redeemable,
            opened_at, last_seen_at, missing_since, last_event_at, first_entry_at)
WHERE NOT EXISTS (SELECT 1 FROM wallet_leases l WHERE l.wallet = g.wallet AND l.owner <> %s
                  AND l.locked_until > clock_timestamp())
ON CONFLICT (wallet, asset) DO UPDATE SET
    condition_id = excluded.condition_id, size = excluded.size, avg_price = excluded.avg_price,
    cur_price = excluded.cur_price, outcome = excluded.outcome, outcome_index = excluded.outcome_index,
    title = excluded.title, redeemable = excluded.redeemable,
    last_seen_at = greatest(c.last_seen_at, excluded.last_seen_at), missing_since = excluded.missing_since,
    last_event_at = excluded.last_event_at, first_entry_at = excluded.first_entry_at, updated_at = now()
RETURNING 1
"""

_REJECTED_SQL = """
INSERT INTO rejected_items AS r (route, wallet, item_key, raw, reason, seen_count)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::int[])
ON CONFLICT (wallet, route, item_key) DO UPDATE SET
    seen_count = r.seen_count + excluded.seen_count, reason = excluded.reason, last_seen_at = now()
"""

_STATE_SQL = """
INSERT INTO wallet_poll_state AS s (wallet, tier, last_polled_at, last_success_at, last_trade_at,
                                    consecutive_errors, last_error)
SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[], %b::timestamptz[], %b::int[],
                     %b::text[])
ON CONFLICT (wallet) DO UPDATE SET
    last_polled_at = greatest(s.last_polled_at, excluded.last_polled_at),
    last_success_at = coalesce(greatest(s.last_success_at, excluded.last_success_at), s.last_success_at),
    last_trade_at = coalesce(greatest(s.last_trade_at, excluded.last_trade_at), s.last_trade_at),
    -- A batch with a success carries the failures after its last success; without one, more failures.
    consecutive_errors = CASE WHEN excluded.last_success_at IS NOT NULL THEN excluded.consecutive_errors
                              ELSE s.consecutive_errors + excluded.consecutive_errors END,
    last_error = CASE WHEN excluded.last_error IS NOT NULL THEN excluded.last_error
                      WHEN excluded.last_success_at IS NOT NULL THEN NULL ELSE s.last_error END,
    updated_at = now()
"""


def write_batch(conn: psycopg.Connection[Any], buf: WriteBuffer, owner: str = "") -> dict[str, Any]:
    """Write a whole buffer inside the caller's transaction; returns what was written. ``owner``: this
    process's lease owner (rows of wallets another owner leases are fenced off)."""
    written: dict[str, Any] = {"trades": {}, "closed": {}, "lags": [], "fenced": 0}
    now = time.time()
    with conn.cursor() as cur:
        if buf.trades:
            rows = [t for t, _ in buf.trades.values()]
            cur.execute(_TRADES_SQL, (
                [t.trade_id for t in rows], [t.wallet for t in rows], [t.condition_id for t in rows],
                [t.asset for t in rows], [t.side for t in rows], [t.size for t in rows], [t.price for t in rows],
                [t.outcome for t in rows], [t.outcome_index for t in rows], [t.title for t in rows],
                [t.slug for t in rows], [t.transaction_hash for t in rows], [t.traded_at for t in rows],
            ))
            for trade_id, inserted in cur.fetchall():
                t, tier = buf.trades[trade_id]
                written["trades"][tier] = written["trades"].get(tier, 0) + 1
                if inserted:  # the ingest lag of a trade is measured once, when it first lands
                    written["lags"].append(max(0.0, now - t.timestamp))
        if buf.closes:
            cl = list(buf.closes.values())
            ps = [c.held.position for c in cl]
            cur.execute(_CLOSES_SQL, (
                [p.wallet for p in ps], [p.asset for p in ps], [p.condition_id for p in ps], [p.size for p in ps],
                [p.avg_price for p in ps], [p.outcome for p in ps], [p.title for p in ps], [c.reason for c in cl],
                [c.held.opened_at for c in cl], [c.closed_at for c in cl], owner,
            ))
            for (reason,) in cur.fetchall():
                written["closed"][reason] = written["closed"].get(reason, 0) + 1
            cur.execute(_CLOSES_DELETE_SQL, ([p.wallet for p in ps], [p.asset for p in ps],
                                             [c.held.opened_at for c in cl], owner))
        if buf.positions:
            hs = list(buf.positions.values())
            ps = [h.position for h in hs]
            cur.execute(_POSITIONS_SQL, (
                [p.wallet for p in ps], [p.asset for p in ps], [p.condition_id for p in ps], [p.size for p in ps],
                [p.avg_price for p in ps], [p.cur_price for p in ps], [p.outcome for p in ps],
                [p.outcome_index for p in ps], [p.title for p in ps], [p.redeemable for p in ps],
                [h.opened_at for h in hs], [h.last_seen_at for h in hs], [h.missing_since for h in hs],
                [p.last_event_at for p in ps], [p.first_entry_at for p in ps], owner,
            ))
            written["fenced"] = len(hs) - len(cur.fetchall())
        if buf.rejected:
            items = list(buf.rejected.values())
            cur.execute(_REJECTED_SQL, (
                [r.route for r, _ in items], [r.wallet for r, _ in items], [r.key for r, _ in items],
                [r.raw for r, _ in items], [r.reason for r, _ in items], [n for _, n in items],
            ))
        if buf.states:
            ws = list(buf.states)
            st = [buf.states[w] for w in ws]
            cur.execute(_STATE_SQL, (
                ws, [s.tier for s in st], [s.polled_at for s in st], [s.success_at for s in st],
                [s.watermark for s in st], [s.new_errors for s in st], [s.last_error for s in st],
            ))
    return written
