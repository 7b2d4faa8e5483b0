"""StreamReader actor: the RTDS websocket, trades about 2 s after the match.

Owns: one reader thread, and through it the connection (:class:`~polycopy_actors.api.rtds.RtdsConnection`),
the ``PING`` timer, the silence watchdog, the reconnect back-off, and the occurrence counts of the
transactions it saw recently (the trade identity numbers identical fills of one transaction). The
actor's own thread owns the set of its tier's wallets of this shard (re-read every
``refresh_interval_seconds``) and hands the reader thread a new frozenset each time (one reference
swap, read without a lock).

The reader thread keeps only the frames of those wallets (lowercased: the stream spells them in
mixed case), gives each its trade id, and sends it to the writer's fast lane at once (source
``stream``, unconfirmed until a REST read shows it; a stream row never moves a REST cursor), then
asks for a read of the wallet (``Demand`` reason ``trade``, through the PollerPool). It tells the
HealthMonitor the stream's state and, at most once a second while trades flow, that the trades path
works. No frame for ``stream.silence_seconds`` means the
connection is dead (the live stream goes silent while open): it is closed and opened again after a
back-off of ``reconnect_min_seconds`` doubling to ``reconnect_max_seconds``; a connection is also
replaced every ``reconnect_every_seconds``. If the reader thread itself dies, the actor fails and
the supervisor restarts it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, OrderedDict
from typing import Any

import pykka

from polycopy_actors.actors.context import ASK_FAILURES, Refs, TierContext, shard_wallets
from polycopy_actors.actors.messages import (
    Demand,
    DetectedTrades,
    PathState,
    ReaderFailed,
    ReadOk,
    Ticker,
    WalletsOf,
)
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.api.models import MalformedItem, RawFill, Trade, with_id
from polycopy_actors.api.rtds import RtdsConnection, StreamError, parse_frame
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)

#: How a connection replaced on schedule (``stream.reconnect_every_seconds``) reports its end.
PLANNED = "connection replaced after"
#: Transactions whose identical-fill counts are remembered (a transaction's fills arrive together).
RECENT_TRANSACTIONS = 20_000


class Occurrences:
    """Numbers identical fills of one transaction in arrival order (the reader thread's own)."""

    def __init__(self, keep: int = RECENT_TRANSACTIONS) -> None:
        self._keep = keep
        self._seen: OrderedDict[str, Counter[tuple[str, ...]]] = OrderedDict()

    def trade(self, fill: RawFill) -> Trade:
        counts = self._seen.get(fill.transaction_hash)
        if counts is None:
            counts = self._seen[fill.transaction_hash] = Counter()
            if len(self._seen) > self._keep:
                self._seen.popitem(last=False)
        key = fill.identity_key()
        trade = with_id(fill, counts[key])
        counts[key] += 1
        return trade


class StreamReaderActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, ctx: TierContext, refs: Refs) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.ctx = ctx
        assert refs.writer is not None and refs.reader is not None and refs.pool is not None
        self.writer, self.reader, self.pool, self.health = refs.writer, refs.reader, refs.pool, refs.health
        #: When the reader thread last told the HealthMonitor that trades flow (monotonic).
        self._told_flow = 0.0
        self.wallets: frozenset[str] | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticker: Ticker | None = None

    # --- the actor's thread -----------------------------------------------------------------------------

    def on_start(self) -> None:
        self._refresh()
        self._ticker = Ticker(self.actor_ref, WalletsOf(), self.ctx.tier_settings.refresh_interval_seconds,
                              "stream-wallets-ticker")
        self._thread = threading.Thread(target=self._read_forever, name="stream-reader", daemon=True)
        self._thread.start()

    def on_stop(self) -> None:
        self._closing.set()
        if self._ticker is not None:
            self._ticker.stop()
        if self._thread is not None:
            self._thread.join(timeout=3)
        metrics.STREAM_CONNECTED.set(0)

    def receive(self, message: Any) -> Any:
        if isinstance(message, WalletsOf):
            if self._ticker is not None:
                self._ticker.ack(message)
            self._refresh()
        elif isinstance(message, ReaderFailed):
            raise RuntimeError(f"stream reader thread failed: {message.error}")
        return None

    def _refresh(self) -> None:
        try:
            self.wallets = shard_wallets(self.ctx, self.reader)
        except ASK_FAILURES as exc:  # the database is down: keep the last set
            log.warning("stream: could not re-read the %s tier's wallets (%s); keeping %s", self.ctx.tier,
                        exc or type(exc).__name__, "the last set" if self.wallets is not None else "none yet")

    # --- the reader thread --------------------------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._closing.is_set() or self.ctx.stopping.is_set()

    def _read_forever(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - reported to the actor, which fails and is restarted
            log.exception("stream reader thread failed")
            try:
                self.actor_ref.tell(ReaderFailed(f"{type(exc).__name__}: {exc}"))
            except pykka.ActorDeadError:
                pass

    def _loop(self) -> None:
        cfg = self.ctx.settings.stream
        rng = random.Random()
        occurrences = Occurrences()
        failures = 0
        opened_before = False
        #: The outage is logged once (WARNING); further failed attempts go to DEBUG until data flows again.
        down_logged = False
        while not self._stopping():
            connected_at = time.monotonic()
            flowed = False
            try:
                with RtdsConnection(cfg.url, open_timeout_seconds=10) as conn:
                    if opened_before:
                        metrics.STREAM_RECONNECTS.inc()
                    opened_before = True
                    problem, flowed = self._session(conn, occurrences)
            except StreamError as exc:
                problem = str(exc)
            metrics.STREAM_CONNECTED.set(0)
            if self._stopping():
                return
            self.health.tell(PathState("stream", "down"))
            failures = 0 if flowed and time.monotonic() - connected_at > 60 else failures + 1
            delay = min(cfg.reconnect_max_seconds, cfg.reconnect_min_seconds * 2 ** max(0, failures - 1))
            delay *= 0.75 + rng.random() / 2
            if flowed:
                down_logged = False
            if problem.startswith(PLANNED):
                log.info("stream %s; opening a new one", problem)
                continue
            if not down_logged:
                log.warning("stream %s; reconnecting in %.1f s (trades come from the global feed meanwhile)",
                            problem, delay)
                down_logged = True
            else:
                log.debug("stream still down (%s, attempt %d); reconnecting in %.1f s", problem, failures, delay)
            if self._closing.wait(delay):
                return

    def _session(self, conn: RtdsConnection, occurrences: Occurrences) -> tuple[str, bool]:
        """Read one connection until it dies; returns why it ended and whether trades flowed on it."""
        cfg = self.ctx.settings.stream
        started = last_frame = next_ping = time.monotonic()
        announced = False
        while not self._stopping():
            now = time.monotonic()
            if now >= next_ping:
                conn.send("PING")
                next_ping = now + cfg.ping_interval_seconds
            if now - last_frame > cfg.silence_seconds:
                return f"silent for {now - last_frame:.0f} s", announced
            if cfg.reconnect_every_seconds and now - started > cfg.reconnect_every_seconds:
                return f"{PLANNED} {cfg.reconnect_every_seconds:.0f} s", announced
            raw = conn.recv(timeout_seconds=max(0.05, min(next_ping, last_frame + cfg.silence_seconds) - now))
            if raw is None:
                continue
            try:
                fill = parse_frame(raw)
            except MalformedItem as exc:
                metrics.STREAM_MESSAGES.labels("malformed").inc()
                log.warning("stream: skipped a malformed trades frame: field %s: %s", exc.field, exc.reason)
                last_frame = time.monotonic()
                continue
            if fill is None:
                continue  # PONG, server messages: not a sign the data flows
            last_frame = time.monotonic()
            if last_frame - self._told_flow >= 1.0:  # trades land through the stream
                self._told_flow = last_frame
                self.health.tell(ReadOk("trades"))
            if not announced:
                announced = True
                metrics.STREAM_CONNECTED.set(1)
                self.health.tell(PathState("stream", "connected"))
                log.info("stream connected: trades of %d wallets arrive about 2 s after the match",
                         len(self.wallets or ()))
            self._keep(fill, occurrences)
        return "stopped", announced

    def _keep(self, fill: RawFill, occurrences: Occurrences) -> None:
        wallets = self.wallets
        if wallets is None or fill.wallet not in wallets:
            metrics.STREAM_MESSAGES.labels("other_wallet").inc()
            return
        metrics.STREAM_MESSAGES.labels("kept").inc()
        trade = occurrences.trade(fill)  # the identity key holds the wallet: others' fills never count
        self.writer.tell(DetectedTrades(self.ctx.tier, "stream", (trade,)))
        self.pool.tell(Demand(fill.wallet, "trade",
                              time.monotonic() + self.ctx.settings.reconcile.after_trade_delay_seconds))
