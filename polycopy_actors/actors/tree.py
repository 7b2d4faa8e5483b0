"""One process's actor tree (DESIGN.md §2, §5) and its run loop.

``ActorSystem.run()`` starts RootSupervisor (rest_for_one), whose children start in this order (each
gets the refs of those before it; a restart restarts the ones after it):

- HealthMonitor: owns what ``/healthz`` answers (told by every other actor);
- Progress: owns the wallets per poller and, in a pass, which are done;
- RateLimiter: the tier's token bucket;
- DbWriter: the only writer (rows, leases); DbReader: the tree's reads of the database;
- PollerPool (one_for_one): the WalletPollers, and the router of ``Demand``/``FeedHealth`` to them;
- with v2 the ApiLagMonitor; for a continuously running tier also the FeedTailer (v2, ``feed.enabled``),
  the MarketWatcher and the StreamReader (``stream.url``).

It waits until it is asked to stop, the supervisor gives up (exit 4), the writer gives up on the
database (exit 3) or, with ``once``, every poller finished its pass; then it stops the tree in reverse
order (the writer flushes) within ``shutdown_timeout_seconds``. Facts are asked of their owners: the
health of the HealthMonitor (``check``), the pass of Progress, the counts of this process's metrics.
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

from polycopy_actors.actors.context import Refs, TierContext
from polycopy_actors.actors.feed import FeedTailerActor
from polycopy_actors.actors.health import HealthMonitorActor
from polycopy_actors.actors.limiter import RateLimiterActor
from polycopy_actors.actors.markets import MarketWatcherActor
from polycopy_actors.actors.messages import HealthCheck, PassProgress
from polycopy_actors.actors.monitor import ApiLagMonitorActor
from polycopy_actors.actors.poller import WalletPollerActor
from polycopy_actors.actors.progress import ProgressActor
from polycopy_actors.actors.reader import DbReaderActor
from polycopy_actors.actors.stream import StreamReaderActor
from polycopy_actors.actors.supervisor import ChildSpec, Supervisor
from polycopy_actors.actors.writer import DbWriterActor
from polycopy_actors.api.wallets import poller_index
from polycopy_actors.config import RateLimit, Settings
from polycopy_actors.exitcodes import RET_GAVE_UP, RET_OK
from polycopy_actors.observe import metrics
from polycopy_actors.observe.health import HealthReport

log = logging.getLogger(__name__)

#: How long the HTTP thread and the run loop wait for the HealthMonitor's answer.
HEALTH_ASK_SECONDS = 2.0


def runs_continuously(settings: Settings, tier: str, once: bool) -> bool:
    """Whether a run of ``tier`` keeps going (stream, feed, reads on demand) rather than making one pass."""
    return settings.tier(tier).schedule in ("continuous", "events") and not once


def runs_stream(settings: Settings, tier: str, once: bool) -> bool:
    """Whether a run of ``tier`` starts the StreamReader."""
    return runs_continuously(settings, tier, once) and bool(settings.stream.url)


def runs_feed(settings: Settings, tier: str, once: bool) -> bool:
    """Whether a run of ``tier`` starts the FeedTailer."""
    return runs_continuously(settings, tier, once) and settings.feed.enabled and settings.api.data_api_version == "v2"


def _summary(totals: tuple[int, ...]) -> str:
    polls, trades, closes, errors = totals[:4]
    return f"{polls:,} polls, {trades:,} trades, {closes:,} closes, {errors:,} errors"


class ActorSystem:
    """Owns the root supervisor of this process. ``run``, ``start`` and ``stop`` are called from one (the
    main) thread; ``check`` from any thread (it asks the HealthMonitor)."""

    def __init__(self, settings: Settings, tier: str, dsn: str, once: bool = False, shard_index: int = 0,
                 shard_count: int = 1, polled_before: datetime | None = None) -> None:
        self.settings = settings
        self.tier = tier
        self.dsn = dsn
        self.once = once
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.exit_code: int | None = None
        self.exit_reason: str | None = None
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

    # --- asking the owners ----------------------------------------------------------------------------

    def _child(self, name: str) -> pykka.ActorRef[Any] | None:
        root = self.root
        if root is None:
            return None
        try:
            children = root.ask("children", timeout=HEALTH_ASK_SECONDS)
        except (pykka.Timeout, pykka.ActorDeadError):
            return None
        return children.get(name)

    def check(self) -> HealthReport:
        """What /healthz answers for this process (any thread): the HealthMonitor's report, or unhealthy
        when the tree does not run or does not answer in time."""
        health = self._child("health")
        if health is None:
            return HealthReport(False, "supervisor not running")
        try:
            report: HealthReport = health.ask(HealthCheck(), timeout=HEALTH_ASK_SECONDS)
        except pykka.Timeout:
            return HealthReport(False, f"the health monitor did not answer within {HEALTH_ASK_SECONDS:.0f} s")
        except pykka.ActorDeadError:
            return HealthReport(False, "supervisor not running")
        return report

    def progress(self) -> tuple[int, int]:
        """(wallets done, wallets in the pass), asked of the Progress actor ((0, 0) if it cannot answer)."""
        ref = self._child("progress")
        if ref is None:
            return 0, 0
        try:
            done, total = ref.ask(PassProgress(), timeout=HEALTH_ASK_SECONDS)
        except (pykka.Timeout, pykka.ActorDeadError):
            return 0, 0
        return int(done), int(total)

    # --- tree -------------------------------------------------------------------------------------------

    def _specs(self) -> list[ChildSpec]:
        s = self.settings
        tier_settings = s.tier(self.tier)
        # The tier's budget is split between the shard processes.
        rate = RateLimit(tier_settings.rate_limit.requests_per_second / self.shard_count,
                         max(1, tier_settings.rate_limit.burst // self.shard_count))
        pollers = s.pollers.pool_size
        continuous = runs_continuously(s, self.tier, self.once)
        feed_on = runs_feed(s, self.tier, self.once)
        stream_on = runs_stream(s, self.tier, self.once)
        ctx = TierContext(settings=s, tier=self.tier, stopping=self.stopping, shard_index=self.shard_index,
                          shard_count=self.shard_count, one_pass=self.once, polled_before=self.polled_before,
                          owner=self.owner, feed_expected=feed_on)
        sup = s.supervision
        paths: dict[str, str] = {}
        if continuous:
            paths["feed"] = "down" if feed_on else "off"
            paths["stream"] = "down" if stream_on else "off"

        def start_health(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return HealthMonitorActor.start(parent, name="health",
                                            health_window_seconds=tier_settings.health_window_seconds,
                                            backlog_alarm_rows=s.writer.backlog_alarm_rows, paths=paths)

        def start_progress(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return ProgressActor.start(parent, name="progress", tier=self.tier, pollers=pollers,
                                       done=self.done if self.once else None)

        def start_limiter(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return RateLimiterActor.start(parent, name="limiter", tier=self.tier, limit=rate)

        def start_writer(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return DbWriterActor.start(parent, name="writer", settings=s, dsn=self.dsn, refs=Refs.of(sib),
                                       on_fatal=self._fatal, owner=self.owner)

        def start_reader(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return DbReaderActor.start(parent, name="reader", settings=s, dsn=self.dsn, tier=self.tier,
                                       refs=Refs.of(sib))

        def start_pool(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            refs = Refs.of(sib)

            def poller_spec(i: int) -> ChildSpec:
                def start(pool: pykka.ActorRef[Any], _s: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
                    return WalletPollerActor.start(pool, name=f"poller-{i}", index=i, count=pollers, ctx=ctx,
                                                   refs=refs)
                return ChildSpec(f"poller-{i}", start, stop_timeout=3.0)

            everyone = [f"poller-{i}" for i in range(pollers)]

            def route(message: Any) -> list[str]:
                wallet = getattr(message, "wallet", None)
                return [f"poller-{poller_index(wallet, pollers)}"] if isinstance(wallet, str) else everyone

            return Supervisor.start("pool", specs=[poller_spec(i) for i in range(pollers)], strategy="one_for_one",
                                    max_restarts=sup.max_restarts, period_seconds=sup.period_seconds,
                                    liveness_interval_seconds=sup.liveness_interval_seconds, supervisor=parent,
                                    route=route)

        def start_monitor(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return ApiLagMonitorActor.start(parent, name="monitor", ctx=ctx, refs=Refs.of(sib))

        def start_feed(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return FeedTailerActor.start(parent, name="feed", ctx=ctx, refs=Refs.of(sib))

        def start_markets(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return MarketWatcherActor.start(parent, name="markets", ctx=ctx, refs=Refs.of(sib))

        def start_stream(parent: pykka.ActorRef[Any], sib: dict[str, pykka.ActorRef[Any]]) -> pykka.ActorRef[Any]:
            return StreamReaderActor.start(parent, name="stream", ctx=ctx, refs=Refs.of(sib))

        writer_stop = max(2.0, s.shutdown_timeout_seconds - 2.0)
        specs = [ChildSpec("health", start_health), ChildSpec("progress", start_progress),
                 ChildSpec("limiter", start_limiter), ChildSpec("writer", start_writer, stop_timeout=writer_stop),
                 ChildSpec("reader", start_reader, stop_timeout=3.0), ChildSpec("pool", start_pool, stop_timeout=4.0)]
        if s.api.data_api_version == "v2" and s.api.status_interval_seconds > 0:
            specs.append(ChildSpec("monitor", start_monitor, stop_timeout=3.0))
        if feed_on:
            specs.append(ChildSpec("feed", start_feed, stop_timeout=3.0))
        elif continuous:
            log.info("global feed off (%s): every wallet is polled one by one",
                     "feed.enabled is false" if not s.feed.enabled else "it needs the data API v2")
        if continuous and s.reconcile.market_watch_interval_seconds > 0:
            specs.append(ChildSpec("markets", start_markets, stop_timeout=3.0))
        if stream_on:
            specs.append(ChildSpec("stream", start_stream, stop_timeout=4.0))
        return specs

    def start(self) -> None:
        sup = self.settings.supervision
        self.root = Supervisor.start("root", specs=self._specs(), strategy="rest_for_one",
                                     max_restarts=sup.max_restarts, period_seconds=sup.period_seconds,
                                     liveness_interval_seconds=sup.liveness_interval_seconds, on_give_up=self._give_up)

    def stop(self) -> None:
        """Stop polling, then the tree in reverse order (the writer flushes)."""
        self.stopping.set()
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

    def _log_progress(self, started: float, swept: int, total: int, requests: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-3)
        rate = requests / elapsed
        eta = (total - swept) * elapsed / swept if swept else float("nan")
        eta_text = "-" if eta != eta else f"{eta / 60:.0f} min" if eta >= 60 else f"{eta:.0f} s"
        log.info("%s %s/%s wallets, %.1f req/s, ETA %s", self._pass_label(), f"{swept:,}", f"{total:,}", rate,
                 eta_text)

    def run(self, stop_requested: threading.Event, keep_going: Callable[[], bool] | None = None) -> int:
        """Run until stopped (``stop_requested``, or ``keep_going`` answering False: a lost lock);
        return the process exit code. ``keep_going`` is called from this (the main) thread."""
        started = time.monotonic()
        at_start = metrics.run_totals(self.tier)
        self.start()
        every = self.settings.logging.summary_interval_seconds
        next_summary, last = started + every, at_start
        step = self.settings.tier(self.tier).progress_every_wallets
        next_progress = step
        try:
            while not self.done.wait(0.2):
                metrics.HEALTHY.set(1 if self.check().ok else 0)
                if stop_requested.is_set() or (keep_going is not None and not keep_going()):
                    break
                if self.once:
                    swept, total = self.progress()
                    metrics.SWEEP_WALLETS.labels("polled").set(swept)
                    metrics.SWEEP_WALLETS.labels("total").set(total)
                    if swept >= next_progress:
                        self._log_progress(started, swept, total, metrics.run_totals(self.tier)[4] - at_start[4])
                        next_progress = (swept // step + 1) * step
                        continue
                if every and time.monotonic() >= next_summary:
                    now_totals = metrics.run_totals(self.tier)
                    log.info("tier %s, last %.0f s: %s", self.tier, every,
                             _summary(tuple(a - b for a, b in zip(now_totals, last, strict=True))))
                    next_summary, last = time.monotonic() + every, now_totals
        finally:
            if self.once:
                swept, total = self.progress()
                metrics.SWEEP_WALLETS.labels("polled").set(swept)
                metrics.SWEEP_WALLETS.labels("total").set(total)
            self.stop()
        code = RET_OK if self.exit_code is None else self.exit_code
        elapsed = time.monotonic() - started
        if self.exit_reason:
            log.error("exiting with code %d: %s", code, self.exit_reason)
        final = metrics.run_totals(self.tier)
        if self.once:
            self._log_progress(started, swept, total, final[4] - at_start[4])
        log.info("stopped after %.0f s: %s", elapsed,
                 _summary(tuple(a - b for a, b in zip(final, at_start, strict=True))))
        return code
