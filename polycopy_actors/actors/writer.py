"""DbWriter actor: the only owner of the process's database pool.

State it owns: the pool (opened in ``on_start``, closed in ``on_stop``) and a buffer keyed by
conflict key (last write wins): trades by ``trade_id``, positions by ``(wallet, asset)``, closes by
``(wallet, asset, opened_at)``, rejected items by ``(wallet, route, item key)``, poll state by wallet.
Positions and closes are fenced by the wallet leases: a row of a wallet whose lease another owner
holds is not written (two processes never reconcile one wallet at once). It flushes on ``writer.batch_max_rows`` or
on its ticker (``writer.flush_interval_seconds``), one transaction per flush, so a wallet's cursor
commits with the trades it covers. On a database error the batch is kept and retried with backoff;
a database down for longer than ``db.give_up_seconds`` ends the process (``on_fatal``). It flushes
again when stopped.

Messages: ``tell(PollResult)``, ``tell(FlushTick)``, ``tell(ReleaseLeases)``, ``ask(TierWallets)``,
``ask(LoadState)``, ``ask(AcquireLeases)``, ``ask(TradeEvidence)`` (the last three flush first where the
answer depends on buffered rows).
Threads: the actor's thread does everything; the ticker thread only sends ``FlushTick``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pykka
from psycopg_pool import ConnectionPool, PoolTimeout

from polycopy_actors import metrics, store
from polycopy_actors.actors.messages import (
    AcquireLeases,
    Crash,
    FlushTick,
    LoadState,
    PollResult,
    ReleaseLeases,
    Ticker,
    TierWallets,
    TradeEvidence,
)
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.client import Rejected
from polycopy_actors.config import Settings
from polycopy_actors.db import make_pool, scrub
from polycopy_actors.metrics import HealthState
from polycopy_actors.models import Trade
from polycopy_actors.reconcile import Close, Held, WindowTrades

log = logging.getLogger(__name__)


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


class DbWriterActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], name: str, settings: Settings, dsn: str,
                 health: HealthState, on_fatal: Callable[[int, str], None], owner: str = "") -> None:
        super().__init__()
        #: This process's lease owner name (fencing of position and close rows).
        self.owner = owner
        self.reclaimed = False
        self.supervisor = supervisor
        self.child_name = name
        self.settings = settings
        self.dsn = dsn
        self.health = health
        self.on_fatal = on_fatal
        self.buffer = WriteBuffer()
        self.pool: ConnectionPool | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.down_since: float | None = None
        self._ticker: Ticker | None = None

    def on_start(self) -> None:
        self.pool = make_pool(self.dsn, self.settings, name="polycopy-writer")
        self.pool.open(wait=False)
        self._ticker = Ticker(self.actor_ref, FlushTick(), self.settings.writer.flush_interval_seconds,
                              "writer-flush-ticker")

    def on_stop(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        deadline = time.monotonic() + max(1.0, self.settings.shutdown_timeout_seconds - 2)
        while len(self.buffer) and time.monotonic() < deadline:
            if not self._flush():
                time.sleep(0.2)
        if len(self.buffer):
            log.error("writer stopped with %d buffered rows not written (database unreachable)", len(self.buffer))
        elif self.owner and self.pool is not None:
            try:  # hand the wallets over at once instead of after their leases run out
                with self._conn() as conn:
                    store.release_leases(conn, self.owner)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("could not release the wallet leases (%s); they expire by themselves",
                            type(exc).__name__)
        if self.pool is not None:
            self.pool.close(timeout=2)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, PollResult):
            self.buffer.add(message)
            if len(self.buffer) >= self.settings.writer.batch_max_rows and time.monotonic() >= self.retry_at:
                self._flush()
            self._export()
            return None
        if isinstance(message, FlushTick):
            if len(self.buffer) and time.monotonic() >= self.retry_at:
                self._flush()
            self._check_give_up()
            self._export()
            return None
        if isinstance(message, TierWallets):
            with self._conn() as conn:
                wallets = store.tier_wallets(conn, message.tier, message.polled_before)
                lag = store.oldest_success_lag(conn, message.tier)
            if lag is not None:
                metrics.WATERMARK_LAG.labels(message.tier).set(lag)
            return wallets
        if isinstance(message, LoadState):
            self._flush_for_read("load wallet state")
            with self._conn() as conn:
                return store.load_wallet_state(conn, list(message.wallets), message.overlap_seconds)
        if isinstance(message, TradeEvidence):
            self._flush_for_read("read trade evidence")
            with self._conn() as conn:
                rows = store.window_trades(conn, message.wallet, list(message.windows))
            return {asset: WindowTrades.of(trades) for asset, trades in rows.items()}
        if isinstance(message, AcquireLeases):
            self._flush_for_read("take wallet leases")
            with self._conn() as conn:
                if not self.reclaimed:
                    self._reclaim_dead_local_owners(conn)
                    self.reclaimed = True
                held = store.acquire_leases(conn, list(message.wallets), self.owner, message.ttl_seconds)
                others = store.lease_holders(conn, [w for w in message.wallets if w not in held])
            return held, others
        if isinstance(message, ReleaseLeases):
            try:  # a tell: a failure here must not stop the writer; the leases expire by themselves
                self._flush_for_read("release wallet leases")
                with self._conn() as conn:
                    store.release_leases(conn, self.owner, list(message.wallets))
            except (psycopg.Error, PoolTimeout, RuntimeError) as exc:
                log.warning("could not release %d wallet leases (%s); they expire by themselves",
                            len(message.wallets), exc)
            return None
        if isinstance(message, Crash):
            raise RuntimeError(message.reason)
        return None

    def _reclaim_dead_local_owners(self, conn: Any) -> None:
        """Leases of an earlier process on this host that is gone (killed, crashed): released at once, so
        a restart does not wait for them to expire. Owners are ``host:pid:...``; a pid that no longer
        runs, or that is this process's own pid under another name, is gone."""
        host = socket.gethostname()
        for owner in store.local_owners(conn, host):
            if owner == self.owner:
                continue
            try:
                pid = int(owner.split(":")[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and _pid_alive(pid):
                continue
            n = store.release_leases(conn, owner)
            log.info("released %d wallet leases of %s (no longer running on this host)", n, owner)

    def _flush_for_read(self, what: str) -> None:
        """A read that depends on what is buffered (or a lease that must not overtake its rows)."""
        if len(self.buffer):
            self._flush()
        if len(self.buffer):
            raise RuntimeError(f"database unavailable: cannot {what}")

    def _conn(self) -> Any:
        assert self.pool is not None
        return self.pool.connection(timeout=self.settings.db.connect_timeout_seconds)

    def _export(self) -> None:
        metrics.WRITER_QUEUE.set(len(self.buffer))
        self.health.set_writer_rows(len(self.buffer))
        if self.pool is not None:
            stats = self.pool.get_stats()
            metrics.DB_POOL.labels("size").set(stats.get("pool_size", 0))
            metrics.DB_POOL.labels("available").set(stats.get("pool_available", 0))
            metrics.DB_POOL.labels("waiting").set(stats.get("requests_waiting", 0))

    def _flush(self) -> bool:
        """Write the buffer in one transaction; on failure keep it and back off."""
        buf = self.buffer
        if not len(buf):
            return True
        started = time.monotonic()
        try:
            with self._conn() as conn:
                written = write_batch(conn, buf, self.owner)
        except (psycopg.Error, PoolTimeout) as exc:
            self.failures += 1
            delay = min(30.0, 0.25 * 2 ** min(self.failures, 7))
            self.retry_at = time.monotonic() + delay
            if self.down_since is None:
                self.down_since = time.monotonic()
            self.health.set_db_down(True)
            metrics.DB_FLUSHES.labels("error").inc()
            log.warning("flush of %d rows failed (%s); kept, retrying in %.1f s", len(buf),
                        scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, self.dsn),
                        delay)
            return False
        duration = time.monotonic() - started
        if self.down_since is not None:
            log.info("database reachable again after %.1f s; flushed %d rows", time.monotonic() - self.down_since,
                     len(buf))
        self.failures, self.retry_at, self.down_since = 0, 0.0, None
        self.health.set_db_down(False)
        self.buffer = WriteBuffer()
        metrics.DB_FLUSHES.labels("ok").inc()
        metrics.DB_FLUSH_DURATION.observe(duration)
        for tier, n in written["trades"].items():
            metrics.TRADES_UPSERTED.labels(tier).inc(n)
        for reason, n in written["closed"].items():
            metrics.POSITIONS_CLOSED.labels(reason).inc(n)
        for lag in written["lags"]:
            metrics.TRADE_LAG.observe(lag)
        if written["fenced"]:
            log.warning("%d position rows not written: their wallets are leased by another process",
                        written["fenced"])
        return True

    def _check_give_up(self) -> None:
        if self.down_since is not None and time.monotonic() - self.down_since > self.settings.db.give_up_seconds:
            from polycopy_actors.exitcodes import RET_DATABASE  # noqa: PLC0415

            self.on_fatal(RET_DATABASE, f"database unreachable for more than {self.settings.db.give_up_seconds:.0f} s "
                                        f"with {len(self.buffer)} rows buffered: giving up")
            self.down_since = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
