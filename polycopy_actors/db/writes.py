"""The writer's batch (pure buffer) and its one-transaction write.

:class:`WriteBuffer` holds pending rows keyed by conflict key (last write wins); :func:`write_batch`
writes a whole buffer with one ``unnest`` statement per table inside the caller's transaction. When
PostgreSQL (or the driver, before sending) refuses the *data* of a batch, :func:`write_isolating` finds
the refused rows by halving the batch under savepoints, writes every other row, and records the refused
ones in ``rejected_items`` with the database's own message: one bad row never blocks the others. Owned
by the DbWriter actor (and the writer benchmark).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from polycopy_actors.api.models import Trade
from polycopy_actors.api.transport import Rejected
from polycopy_actors.db.errors import DATA_ERRORS
from polycopy_actors.logic.poll_result import DetectedTrades, PollResult
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
        #: trade_id -> (trade, tier, source); a REST row (feed, wallet) wins over a stream row.
        self.trades: dict[str, tuple[Trade, str, str]] = {}
        #: The global feed's cursor per name (block time of the newest row read).
        self.feed_cursors: dict[str, datetime] = {}
        self.positions: dict[tuple[str, str], Held] = {}
        self.closes: dict[tuple[str, str, datetime], Close] = {}
        self.rejected: dict[tuple[str, str, str], tuple[Rejected, int]] = {}
        self.states: dict[str, _State] = {}

    def __len__(self) -> int:
        return (len(self.trades) + len(self.positions) + len(self.closes) + len(self.rejected) + len(self.states)
                + len(self.feed_cursors))

    def _trade(self, t: Trade, tier: str, source: str) -> None:
        old = self.trades.get(t.trade_id)
        if source == "stream" and old is not None:
            return  # the buffered row is as good (stream) or better (REST)
        self.trades[t.trade_id] = (t, tier, source if old is None or old[2] == "stream" else old[2])

    def add_detected(self, d: DetectedTrades) -> None:
        for t in d.trades:
            self._trade(t, d.tier, d.source)
        if d.feed_cursor is not None:
            name, at = d.feed_cursor
            self.feed_cursors[name] = max(at, self.feed_cursors.get(name, at))

    def add(self, r: PollResult) -> None:
        for t in r.trades:
            self._trade(t, r.tier, "wallet")
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

    # --- halving (a batch the database refused) ------------------------------------------------------

    def parts(self) -> list[tuple[str, Any]]:
        """Every row of the buffer as (table, key), in a stable order."""
        return ([("trades_public", k) for k in self.trades] + [("feed_cursors", k) for k in self.feed_cursors]
                + [("positions_closed", k) for k in self.closes] + [("positions_current", k) for k in self.positions]
                + [("rejected_items", k) for k in self.rejected] + [("wallet_poll_state", k) for k in self.states])

    def subset(self, parts: list[tuple[str, Any]]) -> WriteBuffer:
        """A buffer holding only these rows (the same objects)."""
        out = WriteBuffer()
        fields = {"trades_public": "trades", "feed_cursors": "feed_cursors", "positions_closed": "closes",
                  "positions_current": "positions", "rejected_items": "rejected", "wallet_poll_state": "states"}
        for table, key in parts:
            name = fields[table]
            getattr(out, name)[key] = getattr(self, name)[key]
        return out

    def describe(self, table: str, key: Any) -> tuple[str, str]:
        """(wallet, JSON text) of one row, for ``rejected_items`` (ASCII: the text is always storable)."""
        row: Any
        if table == "trades_public":
            trade, tier, source = self.trades[key]
            wallet, row = trade.wallet, {**asdict(trade), "tier": tier, "source": source}
        elif table == "feed_cursors":
            wallet, row = "-", {"name": key, "block_time": self.feed_cursors[key]}
        elif table == "positions_closed":
            close = self.closes[key]
            wallet, row = key[0], {"position": asdict(close.held.position), "reason": close.reason,
                                   "opened_at": close.held.opened_at, "closed_at": close.closed_at}
        elif table == "positions_current":
            held = self.positions[key]
            wallet, row = key[0], {"position": asdict(held.position), "opened_at": held.opened_at}
        elif table == "rejected_items":
            item = self.rejected[key][0]
            wallet, row = item.wallet, asdict(item)
        else:
            wallet, row = key, asdict(self.states[key])
        return wallet, json.dumps(row, default=str, sort_keys=True)[:10_000]


# Parameters travel in binary (%b): parsing 13 text arrays of a big batch costs more than the upsert.
# A REST row (global feed, wallet read) is the record: it confirms a stream row and its values win,
# except that it never blanks what an earlier read knew (a fresh row has no outcome index or title yet).
_TRADES_SQL = """
INSERT INTO trades_public AS t (trade_id, wallet, condition_id, asset, side, size, price, outcome, outcome_index,
                                title, slug, transaction_hash, traded_at, source, confirmed_at)
SELECT g.*, CASE WHEN g.source = 'stream' THEN NULL ELSE now() END
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::numeric[], %b::numeric[],
            %b::text[], %b::int[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::text[])
     AS g(trade_id, wallet, condition_id, asset, side, size, price, outcome, outcome_index, title, slug,
          transaction_hash, traded_at, source)
ON CONFLICT (trade_id) DO UPDATE SET
    wallet = excluded.wallet, condition_id = excluded.condition_id, asset = excluded.asset, side = excluded.side,
    size = excluded.size, price = excluded.price, outcome = coalesce(excluded.outcome, t.outcome),
    outcome_index = coalesce(excluded.outcome_index, t.outcome_index), title = coalesce(excluded.title, t.title),
    slug = coalesce(excluded.slug, t.slug), transaction_hash = excluded.transaction_hash,
    traded_at = excluded.traded_at, confirmed_at = coalesce(t.confirmed_at, now()), updated_at = now()
-- A stream row never overwrites a stored row; the overlap re-read of an unchanged, confirmed row writes
-- nothing (no dead tuples, no recount).
WHERE excluded.source <> 'stream' AND (
      t.confirmed_at IS NULL
      OR (t.wallet, t.condition_id, t.asset, t.side, t.size, t.price, t.transaction_hash, t.traded_at)
         IS DISTINCT FROM
         (excluded.wallet, excluded.condition_id, excluded.asset, excluded.side, excluded.size, excluded.price,
          excluded.transaction_hash, excluded.traded_at)
      OR (excluded.outcome IS NOT NULL AND excluded.outcome IS DISTINCT FROM t.outcome)
      OR (excluded.outcome_index IS NOT NULL AND excluded.outcome_index IS DISTINCT FROM t.outcome_index)
      OR (excluded.title IS NOT NULL AND excluded.title IS DISTINCT FROM t.title)
      OR (excluded.slug IS NOT NULL AND excluded.slug IS DISTINCT FROM t.slug))
RETURNING trade_id, (xmax = 0) AS inserted
"""

# DESIGN §3: each new row (an insert, never a re-read) is announced in the transaction that writes it.
_NOTIFY_SQL = "SELECT pg_notify('polycopy_trades', p) FROM unnest(%s::text[]) AS p"

# A position row knows its token's outcome index: trades stored without one (fresh rows) get it.
_ENRICH_SQL = """
UPDATE trades_public t SET outcome_index = g.outcome_index, updated_at = now()
FROM unnest(%b::text[], %b::text[], %b::int[]) AS g(wallet, asset, outcome_index)
WHERE t.wallet = g.wallet AND t.asset = g.asset AND t.outcome_index IS NULL AND g.outcome_index IS NOT NULL
"""

# A stored position ahead of the clock (a future-dated row moved it there before cursors were bounded)
# yields to the new one: a cursor never stays in the future.
_FEED_CURSOR_SQL = """
INSERT INTO feed_cursors AS f (name, block_time) SELECT * FROM unnest(%b::text[], %b::timestamptz[])
ON CONFLICT (name) DO UPDATE SET updated_at = now(),
    block_time = CASE WHEN f.block_time > now() + interval '1 hour' THEN excluded.block_time
                      ELSE greatest(f.block_time, excluded.block_time) END
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
    -- A stored watermark ahead of the clock (see _FEED_CURSOR_SQL) yields to the new one.
    last_trade_at = CASE WHEN s.last_trade_at > now() + interval '1 hour' THEN excluded.last_trade_at
                         ELSE coalesce(greatest(s.last_trade_at, excluded.last_trade_at), s.last_trade_at) END,
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
    written = _empty_written()
    now = time.time()
    with conn.cursor() as cur:
        if buf.trades:
            entries = list(buf.trades.values())
            rows = [t for t, _, _ in entries]
            cur.execute(_TRADES_SQL, (
                [t.trade_id for t in rows], [t.wallet for t in rows], [t.condition_id for t in rows],
                [t.asset for t in rows], [t.side for t in rows], [t.size for t in rows], [t.price for t in rows],
                [t.outcome for t in rows], [t.outcome_index for t in rows], [t.title for t in rows],
                [t.slug for t in rows], [t.transaction_hash for t in rows], [t.traded_at for t in rows],
                [source for _, _, source in entries],
            ))
            notices = []
            for trade_id, inserted in cur.fetchall():
                t, tier, source = buf.trades[trade_id]
                written["trades"][tier] = written["trades"].get(tier, 0) + 1
                if inserted:  # the ingest lag of a trade is measured once, when it first lands
                    written["new_trades"] += 1
                    written["lags"].append(max(0.0, now - t.timestamp))
                    written["detected"].append((source, max(0.0, now - t.timestamp)))
                    notices.append(json.dumps({"wallet": t.wallet, "trade_id": trade_id, "tier": tier}))
            if notices:
                cur.execute(_NOTIFY_SQL, (notices,))
        if buf.feed_cursors:
            names = list(buf.feed_cursors)
            cur.execute(_FEED_CURSOR_SQL, (names, [buf.feed_cursors[n] for n in names]))
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
            known = [p for p in ps if p.outcome_index is not None]
            if known:
                cur.execute(_ENRICH_SQL, ([p.wallet for p in known], [p.asset for p in known],
                                          [p.outcome_index for p in known]))
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


def data_error_message(exc: Exception) -> str:
    """The first line of a data error, as text any column stores (surrogates escaped), at most 500 chars."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:500]


def _merge_written(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {"trades": dict(a["trades"]), "new_trades": a["new_trades"] + b["new_trades"], "closed": dict(a["closed"]),
           "lags": a["lags"] + b["lags"], "detected": a["detected"] + b["detected"],
           "fenced": a["fenced"] + b["fenced"]}
    for name in ("trades", "closed"):
        for k, n in b[name].items():
            out[name][k] = out[name].get(k, 0) + n
    return out


def _empty_written() -> dict[str, Any]:
    return {"trades": {}, "new_trades": 0, "closed": {}, "lags": [], "detected": [], "fenced": 0}


def write_isolating(conn: psycopg.Connection[Any], buf: WriteBuffer, owner: str = "",
                    ) -> tuple[dict[str, Any], list[Rejected]]:
    """Write ``buf`` inside the caller's transaction, row groups under savepoints: a group the database
    refuses for its data is halved until the refused rows are alone; every other row is written. The
    refused rows go to ``rejected_items`` (route ``db:<table>``, the database's message as the reason)
    in the same transaction, and are returned. Errors that are not data errors propagate."""
    refused: list[Rejected] = []

    def attempt(parts: list[tuple[str, Any]]) -> dict[str, Any]:
        sub = buf.subset(parts)
        try:
            with conn.transaction():  # a savepoint
                return write_batch(conn, sub, owner)
        except DATA_ERRORS as exc:
            if len(parts) == 1:
                table, key = parts[0]
                wallet, raw = buf.describe(table, key)
                item_key = hashlib.sha256(raw.encode()).hexdigest()[:32]
                refused.append(Rejected(f"db:{table}", wallet, item_key, raw, data_error_message(exc)))
                return _empty_written()
            half = len(parts) // 2
            return _merge_written(attempt(parts[:half]), attempt(parts[half:]))

    written = attempt(buf.parts()) if len(buf) else _empty_written()
    if refused:
        record = WriteBuffer()
        for item in refused:
            record.rejected[(item.wallet, item.route, item.key)] = (item, 1)
        write_batch(conn, record, owner)
    return written, refused
