"""DbReader actor: answers the tree's questions to the database, and exports gauges read from it.

Owns its own small pool (reads never wait behind a flush), opened in ``on_start`` and closed in
``on_stop``, and a :class:`~polycopy_actors.db.watchdog.ConnectionWatchdog` that cuts a read stuck on a
path that stalls in silence. Every answer is a plain read with no side effect: ``ask(TierWallets)``,
``ask(FeedCursor)``, ``ask(HeldMarkets)``, and the two that depend on rows the writer may still buffer,
``ask(LoadState)`` and ``ask(TradeEvidence)``, which first ask the DbWriter to ``Flush`` (the caller
told the writer its rows before asking, so they are in the writer's mailbox ahead of that ``Flush``). A
database that cannot answer raises :class:`~polycopy_actors.db.errors.DatabaseUnavailable` to the
caller; any other error raises too (``ask`` hands it back to the caller, whose own failure reaches the
supervisor).

Its ticker sends ``GaugeTick`` every ``GAUGE_INTERVAL_SECONDS``: the oldest successful poll of the tier
(``polycopy_oldest_watermark_lag_seconds``) and the stream rows no REST read confirmed
(``polycopy_stream_unconfirmed_rows``) are read then, not as a side effect of an answer. Threads: the
actor's thread does everything; the ticker only sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import pykka

from polycopy_actors.actors.context import Refs
from polycopy_actors.actors.messages import (
    ASK_TIMEOUT_SECONDS,
    FeedCursor,
    Flush,
    GaugeTick,
    HeldMarkets,
    LoadState,
    Ticker,
    TierWallets,
    TradeEvidence,
)
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.config import Settings
from polycopy_actors.db import queries
from polycopy_actors.db.connect import make_pool, scrub
from polycopy_actors.db.errors import OUTAGE_ERRORS, DatabaseUnavailable
from polycopy_actors.db.watchdog import ConnectionWatchdog, deadline_seconds
from polycopy_actors.logic.reconcile import WindowTrades
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How often the gauges read from the database are refreshed.
GAUGE_INTERVAL_SECONDS = 10.0


class DbReaderActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, settings: Settings, dsn: str, tier: str,
                 refs: Refs) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.settings = settings
        self.dsn = dsn
        self.tier = tier
        assert refs.writer is not None
        self.writer = refs.writer
        self.pool: Any = None
        self._ticker: Ticker | None = None
        self._watchdog: ConnectionWatchdog | None = None
        self._handlers: dict[type, Callable[[Any], Any]] = {
            TierWallets: lambda m: self._read(lambda c: queries.tier_wallets(c, m.tier, m.polled_before)),
            FeedCursor: lambda m: self._read(lambda c: queries.feed_cursor(c, m.name)),
            HeldMarkets: lambda m: self._read(lambda c: queries.held_markets(c, list(m.wallets))),
            LoadState: self._load_state,
            TradeEvidence: self._trade_evidence,
            GaugeTick: self._gauges,
        }

    def on_start(self) -> None:
        self.pool = make_pool(self.dsn, self.settings, name="polycopy-reader")
        self.pool.open(wait=False)
        self._watchdog = ConnectionWatchdog("reader-watchdog", "a read")
        self._ticker = Ticker(self.actor_ref, GaugeTick(), GAUGE_INTERVAL_SECONDS, "reader-gauge-ticker")

    def on_stop(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.pool is not None:
            self.pool.close(timeout=2)

    def _read(self, fn: Callable[[Any], T]) -> T:
        """One read-only transaction with the service's timeouts, guarded by the watchdog; an outage
        raises DatabaseUnavailable."""
        db = self.settings.db
        assert self._watchdog is not None
        try:
            with self.pool.connection(timeout=db.connect_timeout_seconds) as conn, \
                    self._watchdog.guard(conn, deadline_seconds(db.statement_timeout_seconds)), conn.transaction():
                queries.set_timeouts(conn, db.lock_timeout_seconds, db.statement_timeout_seconds)
                return fn(conn)
        except OUTAGE_ERRORS as exc:
            text = str(exc).strip()
            raise DatabaseUnavailable("database unavailable: " + scrub(text.splitlines()[0] if text
                                                                       else type(exc).__name__, self.dsn)) from None

    def _flushed(self) -> None:
        """The writer's buffer is written (raises DatabaseUnavailable when it cannot be)."""
        try:
            self.writer.ask(Flush(), timeout=ASK_TIMEOUT_SECONDS)
        except (pykka.Timeout, pykka.ActorDeadError) as exc:
            raise DatabaseUnavailable(f"the writer did not flush ({type(exc).__name__})") from None

    def _load_state(self, message: LoadState) -> dict[str, dict[str, Any]]:
        self._flushed()
        return self._read(lambda c: queries.load_wallet_state(c, list(message.wallets)))

    def _trade_evidence(self, message: TradeEvidence) -> dict[str, WindowTrades]:
        self._flushed()
        rows = self._read(lambda c: queries.window_trades(c, message.wallet, list(message.windows)))
        return {asset: WindowTrades.of(trades) for asset, trades in rows.items()}

    def _gauges(self, message: GaugeTick) -> None:
        if self._ticker is not None:
            self._ticker.ack(message)
        try:
            lag = self._read(lambda c: queries.oldest_success_lag(c, self.tier))
            if lag is not None:
                metrics.WATERMARK_LAG.labels(self.tier).set(lag)
            if self.settings.stream.url:
                after = self.settings.stream.unconfirmed_after_seconds
                metrics.STREAM_UNCONFIRMED.set(self._read(lambda c: queries.unconfirmed_stream_rows(c, after)))
        except DatabaseUnavailable as exc:
            log.debug("gauges not refreshed: %s", exc)
