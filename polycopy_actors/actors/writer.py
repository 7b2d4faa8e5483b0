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

Messages: ``tell(PollResult)``, ``tell(DetectedTrades)`` (the fast lane: stream and feed trades are
flushed at once, not at the next tick), ``tell(FlushTick)``, ``ask(FeedCursor)``, ``ask(HeldMarkets)``,
``tell(ReleaseLeases)``, ``ask(TierWallets)``,
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
from typing import Any

import psycopg
import pykka
from psycopg_pool import ConnectionPool, PoolTimeout

from polycopy_actors.actors.messages import (
    AcquireLeases,
    DetectedTrades,
    FeedCursor,
    FlushTick,
    HeldMarkets,
    LoadState,
    PollResult,
    ReleaseLeases,
    Ticker,
    TierWallets,
    TradeEvidence,
)
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.config import Settings
from polycopy_actors.db import queries
from polycopy_actors.db.connect import make_pool, scrub
from polycopy_actors.db.writes import WriteBuffer, write_batch
from polycopy_actors.exitcodes import RET_DATABASE
from polycopy_actors.logic.reconcile import WindowTrades
from polycopy_actors.observe import HealthState, metrics

log = logging.getLogger(__name__)


class DbWriterActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, settings: Settings, dsn: str,
                 health: HealthState, on_fatal: Callable[[int, str], None], owner: str,
                 on_new_trades: Callable[[int], None] | None = None) -> None:
        super().__init__()
        #: Told how many new trade rows each flush inserted, whatever their source (the run's summary).
        self.on_new_trades = on_new_trades
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
        self.next_unconfirmed_check = 0.0

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
                    queries.release_leases(conn, self.owner)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("could not release the wallet leases (%s); they expire by themselves",
                            type(exc).__name__)
        if self.pool is not None:
            self.pool.close(timeout=2)

    def receive(self, message: Any) -> Any:
        if isinstance(message, PollResult):
            self.buffer.add(message)
            if len(self.buffer) >= self.settings.writer.batch_max_rows and time.monotonic() >= self.retry_at:
                self._flush()
            self._export()
            return None
        if isinstance(message, DetectedTrades):
            self.buffer.add_detected(message)
            if time.monotonic() >= self.retry_at:
                self._flush()
            self._export()
            return None
        if isinstance(message, FlushTick):
            if len(self.buffer) and time.monotonic() >= self.retry_at:
                self._flush()
            self._check_give_up()
            self._export()
            self._count_unconfirmed()
            return None
        if isinstance(message, FeedCursor):
            with self._conn() as conn:
                return queries.feed_cursor(conn, message.name)
        if isinstance(message, HeldMarkets):
            with self._conn() as conn:
                return queries.held_markets(conn, list(message.wallets))
        if isinstance(message, TierWallets):
            with self._conn() as conn:
                wallets = queries.tier_wallets(conn, message.tier, message.polled_before)
                lag = queries.oldest_success_lag(conn, message.tier)
            if lag is not None:
                metrics.WATERMARK_LAG.labels(message.tier).set(lag)
            return wallets
        if isinstance(message, LoadState):
            self._flush_for_read("load wallet state")
            with self._conn() as conn:
                return queries.load_wallet_state(conn, list(message.wallets))
        if isinstance(message, TradeEvidence):
            self._flush_for_read("read trade evidence")
            with self._conn() as conn:
                rows = queries.window_trades(conn, message.wallet, list(message.windows))
            return {asset: WindowTrades.of(trades) for asset, trades in rows.items()}
        if isinstance(message, AcquireLeases):
            self._flush_for_read("take wallet leases")
            with self._conn() as conn:
                if not self.reclaimed:
                    self._reclaim_dead_local_owners(conn)
                    self.reclaimed = True
                held = queries.acquire_leases(conn, list(message.wallets), self.owner, message.ttl_seconds)
                others = queries.lease_holders(conn, [w for w in message.wallets if w not in held])
            return held, others
        if isinstance(message, ReleaseLeases):
            try:  # a tell: a failure here must not stop the writer; the leases expire by themselves
                self._flush_for_read("release wallet leases")
                with self._conn() as conn:
                    queries.release_leases(conn, self.owner, list(message.wallets))
            except (psycopg.Error, PoolTimeout, RuntimeError) as exc:
                log.warning("could not release %d wallet leases (%s); they expire by themselves",
                            len(message.wallets), exc)
            return None
        return None

    def _count_unconfirmed(self) -> None:
        """``polycopy_stream_unconfirmed_rows``, every 10 s (only while the database answers)."""
        now = time.monotonic()
        if now < self.next_unconfirmed_check or self.down_since is not None or not self.settings.stream.url:
            return
        self.next_unconfirmed_check = now + 10
        try:
            with self._conn() as conn:
                n = queries.unconfirmed_stream_rows(conn, self.settings.stream.unconfirmed_after_seconds)
        except (psycopg.Error, PoolTimeout):
            return
        metrics.STREAM_UNCONFIRMED.set(n)

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
        if written["new_trades"] and self.on_new_trades is not None:
            self.on_new_trades(written["new_trades"])
        for source, lag in written["detected"]:
            metrics.DETECT_LAG.labels(source).observe(lag)
        if written["fenced"]:
            log.warning("%d position rows not written: their wallets are leased by another process",
                        written["fenced"])
        return True

    def _check_give_up(self) -> None:
        if self.down_since is not None and time.monotonic() - self.down_since > self.settings.db.give_up_seconds:
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
