"""One process's actor tree (DESIGN.md §2, §5) and its run loop.

``ActorSystem.run()`` starts RootSupervisor (rest_for_one: RateLimiter, DbWriter, PollerPool, and with
v2 the ApiLagMonitor; for a continuously running tier also the FeedTailer (v2, ``feed.enabled``) and the
StreamReader (``stream.url``)) and
waits until it is asked to stop, the supervisor gives up (exit 4), the writer gives up on the
database (exit 3) or, with ``once``, every poller finished its pass. Then it stops the tree in
reverse order (the writer flushes) within ``shutdown_timeout_seconds``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pykka

from polycopy_actors.actors.context import DemandBoard, PassTracker, RunStats, TierContext
from polycopy_actors.actors.feed import FeedTailerActor
from polycopy_actors.actors.limiter import RateLimiterActor
from polycopy_actors.actors.markets import MarketWatcherActor
from polycopy_actors.actors.monitor import ApiLagMonitorActor
from polycopy_actors.actors.poller import WalletPollerActor
from polycopy_actors.actors.stream import StreamReaderActor
from polycopy_actors.actors.supervisor import ChildSpec, Supervisor
from polycopy_actors.actors.writer import DbWriterActor
from polycopy_actors.config import RateLimit, Settings
from polycopy_actors.exitcodes import RET_GAVE_UP, RET_OK
from polycopy_actors.observe import HealthState, metrics

log = logging.getLogger(__name__)


def runs_continuously(settings: Settings, tier: str, once: bool) -> bool:
    """Whether a run of ``tier`` keeps going (stream, feed, reads on demand) rather than making one pass."""
    return settings.tier(tier).schedule in ("continuous", "events") and not once


def runs_stream(settings: Settings, tier: str, once: bool) -> bool:
    """Whether a run of ``tier`` starts the StreamReader."""
    return runs_continuously(settings, tier, once) and bool(settings.stream.url)


class ActorSystem:
    """Owns the root supervisor of this process. Methods are called from one (the main) thread."""

    def __init__(self, settings: Settings, tier: str, dsn: str, health: HealthState | None = None,
                 once: bool = False, shard_index: int = 0, shard_count: int = 1,
                 polled_before: datetime | None = None) -> None:
        self.settings = settings
        self.tier = tier
        self.dsn = dsn
        self.health = health or HealthState(settings.tier(tier).health_window_seconds,
                                            settings.writer.backlog_alarm_rows)
        self.once = once
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.exit_code: int | None = None
        self.exit_reason: str | None = None
        self.stats = RunStats()
        self.tracker = PassTracker(settings.pollers.pool_size, self.done) if once else None
        self.polled_before = polled_before
        #: This run's name in ``wallet_leases``: host, pid, tier and a per-run suffix.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{tier}:{uuid.uuid4().hex[:6]}"
        self.root: pykka.ActorRef[Any] | None = None

    # --- callbacks from actors (any thread) ------------------------------------------------------------

    def _give_up(self, reason: str) -> None:
        if self.exit_code is None:  # the supervisor has logged the reason already
            self.exit_code, self.exit_reason = RET_GAVE_UP, None
        self.done.set()

    def _fatal(self, code: int, reason: str) -> None:
        if self.exit_code is None:
            self.exit_code, self.exit_reason = code, reason
        self.done.set()

    # --- tree -------------------------------------------------------------------------------------------

    def _specs(self) -> list[ChildSpec]:
        s = self.settings
        tier_settings = s.tier(self.tier)
        # The tier's budget is split between the shard processes.
        rate = RateLimit(tier_settings.rate_limit.requests_per_second / self.shard_count,
                         max(1, tier_settings.rate_limit.burst // self.shard_count))
        pollers = s.pollers.pool_size
        ctx = TierContext(settings=s, tier=self.tier, stopping=self.stopping, health=self.health, stats=self.stats,
                          shard_index=self.shard_index, shard_count=self.shard_count,
                          tracker=self.tracker, polled_before=self.polled_before, owner=self.owner,
                          demand=DemandBoard(pollers))
        sup = s.supervision

        def start_limiter(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return RateLimiterActor.start(parent, name="limiter", tier=self.tier, limit=rate)

        def start_writer(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return DbWriterActor.start(parent, name="writer", settings=s, dsn=self.dsn, health=self.health,
                                       on_fatal=self._fatal, owner=self.owner,
                                       on_new_trades=lambda n: self.stats.add(trades=n))

        def start_pool(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            limiter, writer = sib["limiter"], sib["writer"]

            def poller_spec(i: int) -> ChildSpec:
                def start(pool: pykka.ActorRef[Any], _s: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
                    return WalletPollerActor.start(pool, name=f"poller-{i}", index=i, count=pollers, ctx=ctx,
                                                   limiter=limiter, writer=writer)
                return ChildSpec(f"poller-{i}", start, stop_timeout=3.0)

            return Supervisor.start("pool", specs=[poller_spec(i) for i in range(pollers)], strategy="one_for_one",
                                    max_restarts=sup.max_restarts, period_seconds=sup.period_seconds,
                                    liveness_interval_seconds=sup.liveness_interval_seconds, supervisor=parent)

        def start_monitor(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return ApiLagMonitorActor.start(parent, name="monitor", ctx=ctx, limiter=sib["limiter"])

        writer_stop = max(2.0, s.shutdown_timeout_seconds - 2.0)
        specs = [ChildSpec("limiter", start_limiter), ChildSpec("writer", start_writer, stop_timeout=writer_stop),
                 ChildSpec("pool", start_pool, stop_timeout=4.0)]
        if s.api.data_api_version == "v2" and s.api.status_interval_seconds > 0:
            specs.append(ChildSpec("monitor", start_monitor, stop_timeout=3.0))
        continuous = runs_continuously(s, self.tier, self.once)
        if continuous and s.feed.enabled and s.api.data_api_version == "v2":
            def start_feed(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
                return FeedTailerActor.start(parent, name="feed", ctx=ctx, limiter=sib["limiter"],
                                             writer=sib["writer"])
            specs.append(ChildSpec("feed", start_feed, stop_timeout=3.0))
            self.health.set_path("feed", "down")
            # The feed has its stale period to prove itself: until then wallets are read on demand.
            ctx.demand.feed_ok(time.monotonic() + s.feed.stale_after_seconds)
        elif continuous:
            log.info("global feed off (%s): every wallet is polled one by one",
                     "feed.enabled is false" if not s.feed.enabled else "it needs the data API v2")
        if continuous and s.reconcile.market_watch_interval_seconds > 0:
            def start_markets(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]
                              ) -> pykka.ActorRef[Any]:
                return MarketWatcherActor.start(parent, name="markets", ctx=ctx, limiter=sib["limiter"],
                                                writer=sib["writer"])
            specs.append(ChildSpec("markets", start_markets, stop_timeout=3.0))
        if runs_stream(s, self.tier, self.once):
            def start_stream(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
                return StreamReaderActor.start(parent, name="stream", ctx=ctx, writer=sib["writer"])
            specs.append(ChildSpec("stream", start_stream, stop_timeout=4.0))
            self.health.set_path("stream", "down")
        elif continuous:
            self.health.set_path("stream", "off")
        return specs

    def start(self) -> None:
        sup = self.settings.supervision
        self.root = Supervisor.start("root", specs=self._specs(), strategy="rest_for_one",
                                     max_restarts=sup.max_restarts, period_seconds=sup.period_seconds,
                                     liveness_interval_seconds=sup.liveness_interval_seconds, on_give_up=self._give_up)
        self.health.polling_started()

    def stop(self) -> None:
        """Stop polling, then the tree in reverse order (the writer flushes)."""
        self.stopping.set()
        self.health.polling_stopped()
        if self.root is not None:
            try:
                self.root.stop(block=True, timeout=self.settings.shutdown_timeout_seconds)
            except pykka.Timeout:
                log.error("the actor tree did not stop within %.0f s", self.settings.shutdown_timeout_seconds)
            except pykka.ActorDeadError:
                pass
        self.root = None

    def _pass_label(self) -> str:
        label = "cold sweep" if self.settings.tier(self.tier).schedule != "continuous" else f"tier {self.tier} pass"
        return label if self.shard_count == 1 else f"{label} (shard {self.shard_index + 1}/{self.shard_count})"

    def _log_progress(self, started: float) -> None:
        assert self.tracker is not None
        swept, total = self.tracker.progress()
        elapsed = max(time.monotonic() - started, 1e-3)
        rate = self.stats.snapshot_requests() / elapsed
        eta = (total - swept) * elapsed / swept if swept else float("nan")
        eta_text = "-" if eta != eta else f"{eta / 60:.0f} min" if eta >= 60 else f"{eta:.0f} s"
        log.info("%s %s/%s wallets, %.1f req/s, ETA %s", self._pass_label(), f"{swept:,}", f"{total:,}", rate,
                 eta_text)

    def _export_progress(self) -> None:
        """The pass's progress as ``polycopy_cold_sweep_wallets{state}`` (main thread)."""
        if self.tracker is not None:
            polled, total = self.tracker.progress()
            metrics.SWEEP_WALLETS.labels("polled").set(polled)
            metrics.SWEEP_WALLETS.labels("total").set(total)

    def run(self, stop_requested: threading.Event, keep_going: Callable[[], bool] | None = None) -> int:
        """Run until stopped (``stop_requested``, or ``keep_going`` answering False: a lost lock);
        return the process exit code. ``keep_going`` is called from this (the main) thread."""
        started = time.monotonic()
        self.start()
        every = self.settings.logging.summary_interval_seconds
        next_summary, last = started + every, self.stats.snapshot()
        step = self.settings.tier(self.tier).progress_every_wallets
        next_progress = step
        try:
            while not self.done.wait(0.2):
                metrics.HEALTHY.set(1 if self.health.check()[0] else 0)
                if stop_requested.is_set() or (keep_going is not None and not keep_going()):
                    break
                self._export_progress()
                if self.tracker is not None and self.tracker.progress()[0] >= next_progress:
                    self._log_progress(started)
                    next_progress = (self.tracker.progress()[0] // step + 1) * step
                elif every and time.monotonic() >= next_summary:
                    log.info("tier %s, last %.0f s: %s", self.tier, every, self.stats.summary(last))
                    next_summary, last = time.monotonic() + every, self.stats.snapshot()
        finally:
            self.stop()
        code = RET_OK if self.exit_code is None else self.exit_code
        elapsed = time.monotonic() - started
        if self.exit_reason:
            log.error("exiting with code %d: %s", code, self.exit_reason)
        if self.tracker is not None:
            self._export_progress()
            self._log_progress(started)
        log.info("stopped after %.0f s: %s", elapsed, self.stats.summary())
        return code
