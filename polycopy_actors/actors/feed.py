"""FeedTailer actor: tails the bare global ``/v2/trades``, the record of every fill of the platform.

Owns: its position in the feed (block time of the newest row read, persisted in ``feed_cursors``
through the DbWriter, in the same transaction as the trades it found), the set of its tier's wallets
of this shard (re-read every ``refresh_interval_seconds``), one :class:`PolymarketClient`, and the
fact "the global feed is healthy" on the process's DemandBoard.

Every ``feed.interval_seconds`` it walks the feed newest first (``taker_only=false``, a URL of its
own each walk) down to its cursor minus ``feed.overlap_seconds``; the fills of its wallets go to the
writer's fast lane (source ``feed``: they confirm stream rows and fill the stream's gaps) and ask
for a read of each wallet that traded (reason ``trade``). A walk costs one request at platform
volume (about 50 fills/s, 1,000 rows a page), through the tier's rate limiter.

Health: a successful walk keeps the feed healthy for ``feed.stale_after_seconds``; while it is not,
the pollers poll every wallet continuously. Each switch is logged once. Driven by ``tell(Tick)`` that
it sends itself, so a crash reaches ``on_failure`` and the supervisor.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pykka

from polycopy_actors.actors.base import TierApiActor
from polycopy_actors.actors.context import TierContext, shard_wallets
from polycopy_actors.actors.messages import ASK_TIMEOUT_SECONDS, DetectedTrades, FeedCursor, Tick
from polycopy_actors.api.client import ApiError, Stopped
from polycopy_actors.api.models import assign_trade_ids
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)


def feed_name(ctx: TierContext) -> str:
    """The cursor's name: one per tier and shard (each shard keeps its own wallets)."""
    return f"trades:{ctx.tier}:{ctx.shard_index}/{ctx.shard_count}"


class FeedTailerActor(TierApiActor):
    """See the module docstring."""

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, ctx: TierContext,
                 limiter: pykka.ActorRef[Any], writer: pykka.ActorRef[Any]) -> None:
        super().__init__(supervisor, name=name, ctx=ctx, limiter=limiter, writer=writer)
        self.cursor: int | None = None
        self.wallets: frozenset[str] = frozenset()
        self.next_refresh = 0.0
        #: Whether the last state logged was "healthy" (None: nothing logged yet).
        self.healthy_logged: bool | None = None
        #: Trades already handed on, by id, with their time (the overlap re-reads them: they are neither
        #: written again nor do they ask for another read); forgotten once below the re-read window.
        self.seen: dict[str, int] = {}
        #: Block time of the newest row any walk has read: the lag gauge keeps growing while walks fail.
        self.newest: int | None = None

    def receive(self, message: Any) -> Any:
        if isinstance(message, Tick):
            self._tick()
        return None

    def _tick(self) -> None:
        if self.ctx.stopping.is_set():
            return
        started = time.monotonic()
        try:
            self._walk(started)
        except Stopped:
            return
        if self.newest is not None:
            metrics.FEED_LAG.set(max(0.0, time.time() - self.newest))
        wait = max(0.0, self.ctx.settings.feed.interval_seconds - (time.monotonic() - started))
        if self.ctx.stopping.wait(wait):
            return
        self.actor_ref.tell(Tick())

    def _walk(self, now: float) -> None:
        assert self.client is not None
        feed = self.ctx.settings.feed
        try:
            if now >= self.next_refresh:
                self.wallets = shard_wallets(self.ctx, self.writer)
                self.next_refresh = now + self.ctx.tier_settings.refresh_interval_seconds
            if self.cursor is None:
                stored = self.writer.ask(FeedCursor(feed_name(self.ctx)), timeout=ASK_TIMEOUT_SECONDS)
                self.cursor = (int(stored.timestamp()) if stored is not None
                               else int(time.time()) - feed.start_lookback_seconds)
                log.info("global feed: tailing from %s (%s)",
                         datetime.fromtimestamp(self.cursor, UTC).isoformat(timespec="seconds"),
                         "stored position" if stored is not None else f"{feed.start_lookback_seconds} s back")
        except Exception as exc:  # noqa: BLE001 - the database is down: the feed waits, polling takes over
            self._unhealthy(now, f"the database did not answer ({exc})")
            return
        try:
            read = self.client.global_fills(self.cursor - feed.overlap_seconds, feed.page_limit)
        except ApiError as exc:
            self._unhealthy(now, f"{exc.kind}: {exc}")
            return
        newest = max((f.timestamp for f in read.items), default=None)
        mine = sorted((f for f in read.items if f.wallet in self.wallets), key=lambda f: f.timestamp)
        trades = [t for t in assign_trade_ids(mine) if t.trade_id not in self.seen]
        self.seen.update((t.trade_id, t.timestamp) for t in trades)
        if newest is not None and newest > self.cursor:
            self.cursor = newest
        floor = self.cursor - 2 * feed.overlap_seconds
        self.seen = {k: ts for k, ts in self.seen.items() if ts >= floor}
        if trades or newest is not None:
            self.writer.tell(DetectedTrades(self.ctx.tier, "feed", tuple(trades),
                                            (feed_name(self.ctx), datetime.fromtimestamp(self.cursor, UTC))))
        at = time.monotonic() + self.ctx.settings.reconcile.after_trade_delay_seconds
        for wallet in {t.wallet for t in trades}:
            self.ctx.demand.post(wallet, "trade", at)
        if newest is not None and (self.newest is None or newest > self.newest):
            self.newest = newest
        self.ctx.demand.feed_ok(time.monotonic() + feed.stale_after_seconds)
        self.ctx.health.set_path("feed", "ok")
        self.ctx.health.poll_succeeded()
        metrics.LAST_POLL_SUCCESS.labels(self.ctx.tier).set(time.time())
        if self.healthy_logged is not True:
            log.info("global feed healthy: trades of %d wallets detected from it; wallets read on demand",
                     len(self.wallets))
            self.healthy_logged = True

    def _unhealthy(self, now: float, problem: str) -> None:
        if self.ctx.demand.feed_healthy(time.monotonic()):
            log.debug("global feed read failed (%s); still within %s s", problem,
                      self.ctx.settings.feed.stale_after_seconds)
            return
        self.ctx.health.set_path("feed", "down")
        if self.healthy_logged is not False:
            log.warning("global feed down (%s): every wallet is polled one by one until it answers again", problem)
            self.healthy_logged = False
