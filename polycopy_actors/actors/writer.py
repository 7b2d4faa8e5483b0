"""DbWriter actor: the only writer of the process's rows, owner of its write pool and buffer.

State it owns: the pool (opened in ``on_start``, closed in ``on_stop``), a buffer keyed by conflict key
(last write wins: trades by ``trade_id``, positions by ``(wallet, asset)``, closes by ``(wallet, asset,
opened_at)``, rejected items by ``(wallet, route, item key)``, poll state by wallet, feed cursors by
name), its back-off after a failed flush, and a :class:`~polycopy_actors.db.watchdog.ConnectionWatchdog`
that cuts the connection of a transaction stuck far past ``db.statement_timeout_seconds`` (a path that
stalls in silence never answers).

Flushes on ``writer.batch_max_rows`` or on its ticker (``writer.flush_interval_seconds``), one
transaction per flush (a wallet's cursor commits with the trades it covers), with ``lock_timeout`` and
``statement_timeout`` set. Positions and closes are fenced by the wallet leases: a row of a wallet whose
lease another owner holds is not written. Three outcomes of a flush:

- written;
- the database is unreachable or busy (:data:`~polycopy_actors.db.errors.OUTAGE_ERRORS`): the batch is
  kept and retried with back-off; a database down for longer than ``db.give_up_seconds`` ends the
  process (``on_fatal``, exit 3);
- the database refused some *data* (:data:`~polycopy_actors.db.errors.DATA_ERRORS`): the refused rows
  are found by halving the batch (:func:`~polycopy_actors.db.writes.write_isolating`), recorded in
  ``rejected_items`` with the database's message, and everything else is written.

Any other error is a bug: it raises, the actor fails, the supervisor restarts it.

Messages: ``tell(PollResult)``, ``tell(DetectedTrades)`` (the fast lane: stream and feed trades are
flushed at once), ``tell(FlushTick)``, ``ask(Flush)`` (a read that depends on buffered rows asks this
first), ``ask(AcquireLeases)``, ``tell(ReleaseLeases)``. It tells the HealthMonitor the database's
state, its backlog (rows buffered and messages waiting in its mailbox) and the flush running now.
Threads: the actor's thread does everything; the ticker only sends ``FlushTick``; the watchdog's thread
only shuts a stuck connection's socket.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pykka

from polycopy_actors.actors.context import Refs
from polycopy_actors.actors.messages import (
    AcquireLeases,
    DbState,
    DetectedTrades,
    Flush,
    FlushTick,
    PollResult,
    ReleaseLeases,
    RowsRefused,
    Ticker,
    WriterState,
)
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.api.transport import Rejected
from polycopy_actors.config import Settings
from polycopy_actors.db import queries
from polycopy_actors.db.connect import make_pool, scrub
from polycopy_actors.db.errors import DATA_ERRORS, OUTAGE_ERRORS, DatabaseUnavailable, outage_state
from polycopy_actors.db.watchdog import ConnectionWatchdog, deadline_seconds
from polycopy_actors.db.writes import WriteBuffer, data_error_message, write_batch, write_isolating
from polycopy_actors.exitcodes import RET_DATABASE
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)

#: Refused rows logged one by one per flush; more are summed up in one line.
REFUSALS_LOGGED = 10


class DbWriterActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, settings: Settings, dsn: str, refs: Refs,
                 on_fatal: Callable[[int, str], None], owner: str) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.settings = settings
        self.dsn = dsn
        self.health = refs.health
        self.on_fatal = on_fatal
        #: This process's lease owner name (fencing of position and close rows).
        self.owner = owner
        self.reclaimed = False
        self.buffer = WriteBuffer()
        self.pool: Any = None
        self.failures = 0
        self.retry_at = 0.0
        self.down_since: float | None = None
        self.db_state = "ok"
        #: A transaction of the writer running longer than this has its connection cut.
        self._deadline = deadline_seconds(settings.db.statement_timeout_seconds)
        self._ticker: Ticker | None = None
        self._watchdog: ConnectionWatchdog | None = None
        self._handlers: dict[type, Callable[[Any], Any]] = {
            PollResult: self._on_poll_result,
            DetectedTrades: self._on_detected,
            FlushTick: self._on_tick,
            Flush: self._on_flush,
            AcquireLeases: self._on_acquire_leases,
            ReleaseLeases: self._on_release_leases,
        }

    # --- life cycle ----------------------------------------------------------------------------------

    def on_start(self) -> None:
        self.pool = make_pool(self.dsn, self.settings, name="polycopy-writer")
        self.pool.open(wait=False)
        self._watchdog = ConnectionWatchdog("writer-watchdog", "a flush")
        self._ticker = Ticker(self.actor_ref, FlushTick(), self.settings.writer.flush_interval_seconds,
                              "writer-flush-ticker")

    def on_stop(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        deadline = time.monotonic() + max(1.0, self.settings.shutdown_timeout_seconds - 2)
        while len(self.buffer) and time.monotonic() < deadline:
            if not self._flush():
                time.sleep(0.2)  # the actor is stopping: no message will come, the loop is bounded
        if len(self.buffer):
            log.error("writer stopped with %d buffered rows not written (database unreachable)", len(self.buffer))
        elif self.owner and self.pool is not None:
            try:  # hand the wallets over at once instead of after their leases run out
                with self._conn() as conn:
                    queries.release_leases(conn, self.owner)
            except OUTAGE_ERRORS as exc:
                log.warning("could not release the wallet leases (%s); they expire by themselves",
                            type(exc).__name__)
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.pool is not None:
            self.pool.close(timeout=2)

    # --- messages ------------------------------------------------------------------------------------

    def _on_poll_result(self, message: PollResult) -> None:
        self.buffer.add(message)
        if len(self.buffer) >= self.settings.writer.batch_max_rows and time.monotonic() >= self.retry_at:
            self._flush()

    def _on_detected(self, message: DetectedTrades) -> None:
        self.buffer.add_detected(message)
        if time.monotonic() >= self.retry_at:
            self._flush()

    def _on_tick(self, message: FlushTick) -> None:
        if self._ticker is not None:
            self._ticker.ack(message)
        if len(self.buffer) and time.monotonic() >= self.retry_at:
            self._flush()
        self._check_give_up()
        self._export()

    def _on_flush(self, message: Flush) -> None:
        self._flush_for_read("read what it buffered")

    def _on_acquire_leases(self, message: AcquireLeases) -> tuple[set[str], dict[str, Any]]:
        self._flush_for_read("take wallet leases")
        assert self._watchdog is not None
        try:
            with self._conn() as conn, self._watchdog.guard(conn, self._deadline), conn.transaction():
                self._timeouts(conn)
                if not self.reclaimed:
                    self._reclaim_dead_local_owners(conn)
                    self.reclaimed = True
                held = queries.acquire_leases(conn, list(message.wallets), self.owner, message.ttl_seconds)
                others = queries.lease_holders(conn, [w for w in message.wallets if w not in held])
        except OUTAGE_ERRORS as exc:
            raise DatabaseUnavailable(f"cannot take wallet leases: {self._describe(exc)}") from None
        return held, others

    def _on_release_leases(self, message: ReleaseLeases) -> None:
        try:  # a tell: the leases expire by themselves if this fails
            self._flush_for_read("release wallet leases")
            assert self._watchdog is not None
            with self._conn() as conn, self._watchdog.guard(conn, self._deadline), conn.transaction():
                self._timeouts(conn)
                queries.release_leases(conn, self.owner, list(message.wallets))
        except (DatabaseUnavailable, *OUTAGE_ERRORS) as exc:
            log.warning("could not release %d wallet leases (%s); they expire by themselves",
                        len(message.wallets), self._describe(exc))

    # --- flushing ---------------------------------------------------------------------------------------

    def _flush_for_read(self, what: str) -> None:
        """Before a read that depends on what is buffered (or a lease that must not overtake its rows):
        write the buffer, unless the writer is backing off; raise DatabaseUnavailable if rows remain."""
        if len(self.buffer) and time.monotonic() >= self.retry_at:
            self._flush()
        if len(self.buffer):
            wait = max(0.0, self.retry_at - time.monotonic())
            raise DatabaseUnavailable(f"database unavailable: cannot {what} ({len(self.buffer)} rows not written yet; "
                                      f"the writer retries in {wait:.1f} s)")

    def _conn(self) -> Any:
        assert self.pool is not None
        return self.pool.connection(timeout=self.settings.db.connect_timeout_seconds)

    def _timeouts(self, conn: Any) -> None:
        db = self.settings.db
        queries.set_timeouts(conn, db.lock_timeout_seconds, db.statement_timeout_seconds)

    def _describe(self, exc: BaseException) -> str:
        text = str(exc).strip()
        return scrub(text.splitlines()[0] if text else type(exc).__name__, self.dsn)

    def _export(self, flush_started: float | None = None) -> None:
        """The backlog, as the gauges and the HealthMonitor see it (rows buffered + messages waiting)."""
        waiting = self.actor_inbox.qsize()
        metrics.WRITER_QUEUE.set(len(self.buffer))
        metrics.WRITER_WAITING.set(waiting)
        self.health.tell(WriterState(len(self.buffer), waiting, flush_started))
        if self.pool is not None:
            stats = self.pool.get_stats()
            metrics.DB_POOL.labels("size").set(stats.get("pool_size", 0))
            metrics.DB_POOL.labels("available").set(stats.get("pool_available", 0))
            metrics.DB_POOL.labels("waiting").set(stats.get("requests_waiting", 0))

    def _write(self, conn: Any, buf: WriteBuffer) -> tuple[dict[str, Any], list[Rejected]]:
        """One transaction; if the database refuses some data, a second one that isolates it."""
        try:
            with conn.transaction():
                self._timeouts(conn)
                return write_batch(conn, buf, self.owner), []
        except DATA_ERRORS as exc:
            log.warning("flush of %d rows: the database refused some of the data (%s); finding the rows it "
                        "refuses, writing the others", len(buf), data_error_message(exc))
        with conn.transaction():
            self._timeouts(conn)
            return write_isolating(conn, buf, self.owner)

    def _flush(self) -> bool:
        """Write the buffer in one transaction; on an outage keep it and back off."""
        buf = self.buffer
        if not len(buf):
            return True
        assert self._watchdog is not None
        started = time.monotonic()
        self._export(flush_started=started)
        try:
            with self._conn() as conn, self._watchdog.guard(conn, self._deadline):
                written, refused = self._write(conn, buf)
        except OUTAGE_ERRORS as exc:
            self._failed(exc, len(buf))
            self._export()
            return False
        duration = time.monotonic() - started
        if self.down_since is not None:
            log.info("database reachable again after %.1f s; flushed %d rows", time.monotonic() - self.down_since,
                     len(buf))
        self.failures, self.retry_at, self.down_since = 0, 0.0, None
        if self.db_state != "ok":
            self.db_state = "ok"
            self.health.tell(DbState("ok"))
        self.buffer = WriteBuffer()
        self._export()
        metrics.DB_FLUSHES.labels("ok").inc()
        metrics.DB_FLUSH_DURATION.observe(duration)
        self._count(written)
        if refused:
            self._refused(refused)
        return True

    def _failed(self, exc: BaseException, rows: int) -> None:
        self.failures += 1
        delay = min(30.0, 0.25 * 2 ** min(self.failures, 7))
        self.retry_at = time.monotonic() + delay
        if self.down_since is None:
            self.down_since = time.monotonic()
        state = outage_state(exc)
        detail = self._describe(exc)
        if state != self.db_state:
            self.db_state = state
            self.health.tell(DbState(state, detail[:200]))
        metrics.DB_FLUSHES.labels("error").inc()
        log.warning("flush of %d rows failed (database %s: %s); kept, retrying in %.1f s", rows, state, detail,
                    delay)

    def _count(self, written: dict[str, Any]) -> None:
        for tier, n in written["trades"].items():
            metrics.TRADES_UPSERTED.labels(tier).inc(n)
        for reason, n in written["closed"].items():
            metrics.POSITIONS_CLOSED.labels(reason).inc(n)
        for lag in written["lags"]:
            metrics.TRADE_LAG.observe(lag)
        for source, lag in written["detected"]:
            metrics.DETECT_LAG.labels(source).observe(lag)
        if written["fenced"]:
            log.warning("%d position rows not written: their wallets are leased by another process",
                        written["fenced"])

    def _refused(self, refused: list[Rejected]) -> None:
        for item in refused[:REFUSALS_LOGGED]:
            log.warning("the database refused a %s row of wallet %s (%s); kept in rejected_items, the other rows "
                        "written", item.route.removeprefix("db:"), item.wallet, item.reason)
        if len(refused) > REFUSALS_LOGGED:
            log.warning("... and %d more rows refused by the database (see rejected_items)",
                        len(refused) - REFUSALS_LOGGED)
        for item in refused:
            metrics.DB_ROWS_REFUSED.labels(item.route.removeprefix("db:")).inc()
        self.health.tell(RowsRefused(len(refused), refused[-1].reason))

    def _check_give_up(self) -> None:
        if self.down_since is not None and time.monotonic() - self.down_since > self.settings.db.give_up_seconds:
            self.on_fatal(RET_DATABASE, f"database unreachable for more than {self.settings.db.give_up_seconds:.0f} s "
                                        f"with {len(self.buffer)} rows buffered: giving up")
            self.down_since = None

    def _reclaim_dead_local_owners(self, conn: Any) -> None:
        """Leases of an earlier process on this host that is gone (killed, crashed): released at once, so
        a restart does not wait for them to expire. Owners are ``host:pid:...``; a pid that no longer
        runs, or that is this process's own pid under another name, is gone."""
        host = socket.gethostname()
        for owner in queries.local_owners(conn, host):
            if owner == self.owner:
                continue
            try:
                pid = int(owner.split(":")[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and _pid_alive(pid):
                continue
            n = queries.release_leases(conn, owner)
            log.info("released %d wallet leases of %s (no longer running on this host)", n, owner)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
