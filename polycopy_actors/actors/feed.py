"""FeedTailer actor: tails the bare global ``/v2/trades``, the record of every fill of the platform.

Owns: its position in the feed (block time of the newest row read, persisted in ``feed_cursors``
through the DbWriter, in the same transaction as the trades it found), the set of its tier's wallets
of this shard (re-read every ``refresh_interval_seconds``, asked of the DbReader), one
:class:`PolymarketClient`, and the fact "the global feed is healthy", which it tells every poller
(``FeedHealth`` through the PollerPool) and the HealthMonitor (path ``feed``).

Every ``feed.interval_seconds`` its Ticker sends ``Tick``; a tick walks the feed newest first
(``taker_only=false``, a URL of its own each walk) down to its cursor minus ``feed.overlap_seconds``, at
most ``feed.max_pages_per_walk`` pages; the fills of its wallets go to the writer's fast lane (source
``feed``: they confirm stream rows and fill the stream's gaps) and ask for a read of each wallet that
traded (``Demand`` reason ``trade``). A walk costs one request at platform volume (about 50 fills/s,
1,000 rows a page), through the tier's rate limiter.

Bounds, so that no answer can blind it:
- a row dated more than ``api.max_future_skew_seconds`` ahead of this clock is kept (written; the API's
  clock may be wrong) but never moves the cursor, and ``/healthz`` says so (``feed_clock``); a stored
  cursor already in the future is not trusted at start;
- a walk that reaches its page budget before the cursor keeps what it read and moves on: the fills of
  the gap it could not read come from the wallets' own reads (each reads from its own watermark), and
  the log says so once.

Health: a successful walk keeps the feed healthy for ``feed.stale_after_seconds``; while it is not, the
pollers poll every wallet continuously. Each switch is logged once.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pykka

from polycopy_actors.actors.base import TierApiActor
from polycopy_actors.actors.context import ASK_FAILURES, Refs, TierContext, shard_wallets
from polycopy_actors.actors.messages import (
    ASK_TIMEOUT_SECONDS,
    Demand,
    DetectedTrades,
    FeedClock,
    FeedCursor,
    FeedHealth,
    PathState,
    ReadOk,
    Tick,
)
from polycopy_actors.api.client import ApiError, Stopped
from polycopy_actors.api.models import RawFill, assign_trade_ids
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)

#: Trades remembered as handed on (the overlap re-reads them), at most.
MAX_SEEN = 200_000
#: /healthz tells of a row from the future for this long after the last one was read.
FUTURE_MEMORY_SECONDS = 600.0


def feed_name(ctx: TierContext) -> str:
    """The cursor's name: one per tier and shard (each shard keeps its own wallets)."""
    return f"trades:{ctx.tier}:{ctx.shard_index}/{ctx.shard_count}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class FeedTailerActor(TierApiActor):
    """See the module docstring."""

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, ctx: TierContext, refs: Refs) -> None:
        super().__init__(supervisor, name=name, ctx=ctx, refs=refs)
        assert refs.writer is not None and refs.reader is not None and refs.pool is not None
        self.writer, self.reader, self.pool = refs.writer, refs.reader, refs.pool
        self.cursor: int | None = None
        self.wallets: frozenset[str] = frozenset()
        self.next_refresh = 0.0
        #: Whether the last state logged was "healthy" (None: nothing logged yet).
        self.healthy_logged: bool | None = None
        #: Until when (monotonic) the feed counts as healthy.
        self.healthy_until = time.monotonic() + ctx.settings.feed.stale_after_seconds
        #: Trades already handed on, by id, with their time (the overlap re-reads them: they are neither
        #: written again nor do they ask for another read); forgotten once below the re-read window.
        self.seen: dict[str, int] = {}
        #: Block time of the newest row (not from the future) any walk has read: the lag gauge keeps
        #: growing from it while walks fail.
        self.newest: int | None = None
        #: What /healthz was last told about rows from the future ("" = nothing), and when (monotonic) the
        #: last one was read and its block time.
        self.clock_told = ""
        self.future_seen: tuple[float, int] | None = None
        self.gap_logged = False

    def tickers(self) -> list[tuple[Any, float]]:
        return [(Tick(), self.ctx.settings.feed.interval_seconds)]

    def handlers(self) -> dict[type, Any]:
        return {Tick: self._tick}

    def _tick(self, message: Tick) -> None:
        if self.ctx.stopping.is_set():
            return
        try:
            self._walk(time.monotonic())
        except Stopped:
            return
        if self.newest is not None:
            metrics.FEED_LAG.set(max(0.0, time.time() - self.newest))

    # --- one walk -----------------------------------------------------------------------------------------

    def _start(self, now: float) -> bool:
        """Refresh the wallets when due, and load the cursor once; False when the database cannot answer."""
        try:
            if now >= self.next_refresh:
                self.wallets = shard_wallets(self.ctx, self.reader)
                self.next_refresh = now + self.ctx.tier_settings.refresh_interval_seconds
            if self.cursor is None:
                stored = self.reader.ask(FeedCursor(feed_name(self.ctx)), timeout=ASK_TIMEOUT_SECONDS)
                self.cursor = self._initial_cursor(None if stored is None else int(stored.timestamp()))
        except ASK_FAILURES as exc:  # the database is down: the feed waits, polling takes over
            self._unhealthy(f"the database did not answer ({exc or type(exc).__name__})")
            return False
        return True

    def _initial_cursor(self, stored: int | None) -> int:
        feed, skew = self.ctx.settings.feed, self.ctx.settings.api.max_future_skew_seconds
        now = time.time()
        back = int(now) - feed.start_lookback_seconds
        if stored is not None and stored > now + skew:
            log.warning("global feed: the stored position %s is in the future (a future-dated row moved it there): "
                        "ignored; tailing from %s (%d s back); the wallets' own reads cover what came before",
                        _iso(stored), _iso(back), feed.start_lookback_seconds)
            return back
        log.info("global feed: tailing from %s (%s)", _iso(stored if stored is not None else back),
                 "stored position" if stored is not None else f"{feed.start_lookback_seconds} s back")
        return stored if stored is not None else back

    def _walk(self, now: float) -> None:
        assert self.client is not None
        if not self._start(now):
            return
        assert self.cursor is not None
        feed = self.ctx.settings.feed
        try:
            read = self.client.global_fills(self.cursor - feed.overlap_seconds, feed.page_limit,
                                            max_pages=feed.max_pages_per_walk)
        except ApiError as exc:
            self._unhealthy(f"{exc.kind}: {exc}")
            return
        self._clock(read.items)
        if not read.complete:
            self._gap(read.items)
        mine = sorted((f for f in read.items if f.wallet in self.wallets), key=lambda f: f.timestamp)
        trades = [t for t in assign_trade_ids(mine) if t.trade_id not in self.seen]
        self.seen.update((t.trade_id, t.timestamp) for t in trades)
        newest = self._newest_in_time(read.items)
        if newest is not None and newest > self.cursor:
            self.cursor = newest
        floor = self.cursor - 2 * feed.overlap_seconds
        self.seen = {k: ts for k, ts in self.seen.items() if ts >= floor}
        if len(self.seen) > MAX_SEEN:  # rows from the future stay above the floor: bounded all the same
            self.seen = dict(sorted(self.seen.items(), key=lambda kv: kv[1])[-MAX_SEEN // 2:])
        if trades or newest is not None:
            self.writer.tell(DetectedTrades(self.ctx.tier, "feed", tuple(trades),
                                            (feed_name(self.ctx), datetime.fromtimestamp(self.cursor, UTC))))
        at = time.monotonic() + self.ctx.settings.reconcile.after_trade_delay_seconds
        for wallet in {t.wallet for t in trades}:
            self.pool.tell(Demand(wallet, "trade", at))
        if newest is not None and (self.newest is None or newest > self.newest):
            self.newest = newest
        self._healthy()

    def _newest_in_time(self, fills: list[RawFill]) -> int | None:
        """The newest block time read that is not ahead of this clock (plus the allowed skew)."""
        limit = time.time() + self.ctx.settings.api.max_future_skew_seconds
        return max((f.timestamp for f in fills if f.timestamp <= limit), default=None)

    def _clock(self, fills: list[RawFill]) -> None:
        """Rows from the future: kept, counted, said out loud (once, then for as long as one was seen within
        :data:`FUTURE_MEMORY_SECONDS`); they move no cursor."""
        now = time.time()
        future = [f.timestamp for f in fills if f.timestamp > now + self.ctx.settings.api.max_future_skew_seconds]
        mono = time.monotonic()
        if future:
            metrics.FEED_FUTURE_ROWS.inc(len(future))
            self.future_seen = (mono, max(future))
        elif self.future_seen is not None and mono - self.future_seen[0] > FUTURE_MEMORY_SECONDS:
            self.future_seen = None
        text = ""
        if self.future_seen is not None:
            newest = self.future_seen[1]
            text = (f"rows dated up to {_iso(newest)} ({newest - now:.0f} s ahead of this clock) read within the "
                    f"last {FUTURE_MEMORY_SECONDS / 60:.0f} min: kept, the cursor does not follow them")
        if bool(text) != bool(self.clock_told):
            if text:
                log.warning("global feed: %s", text)
            else:
                log.info("global feed: no row from the future for %.0f min", FUTURE_MEMORY_SECONDS / 60)
        if text != self.clock_told:
            self.refs.health.tell(FeedClock(text))
        self.clock_told = text

    def _gap(self, fills: list[RawFill]) -> None:
        assert self.cursor is not None
        oldest = min((f.timestamp for f in fills), default=None)
        if not self.gap_logged:
            log.warning("global feed: more than %d pages between now and its position %s: the fills before %s "
                        "are not read from the feed; the wallets' own reads cover them",
                        self.ctx.settings.feed.max_pages_per_walk, _iso(self.cursor),
                        _iso(oldest) if oldest is not None else "?")
            self.gap_logged = True
        metrics.FEED_GAPS.inc()

    # --- health -----------------------------------------------------------------------------------------------

    def _healthy(self) -> None:
        feed = self.ctx.settings.feed
        self.healthy_until = time.monotonic() + feed.stale_after_seconds
        self.pool.tell(FeedHealth(self.healthy_until))
        self.refs.health.tell(PathState("feed", "ok"))
        self.refs.health.tell(ReadOk("trades"))
        metrics.LAST_POLL_SUCCESS.labels(self.ctx.tier).set(time.time())
        if self.healthy_logged is not True:
            log.info("global feed healthy: trades of %d wallets detected from it; wallets read on demand",
                     len(self.wallets))
            self.healthy_logged = True

    def _unhealthy(self, problem: str) -> None:
        if time.monotonic() < self.healthy_until:
            log.debug("global feed read failed (%s); still within %s s", problem,
                      self.ctx.settings.feed.stale_after_seconds)
            return
        self.pool.tell(FeedHealth(0.0))
        self.refs.health.tell(PathState("feed", "down"))
        if self.healthy_logged is not False:
            log.warning("global feed down (%s): every wallet is polled one by one until it answers again", problem)
            self.healthy_logged = False
