"""What the per-process actor system (:class:`~polycopy_actors.actors.tree.ActorSystem`) owns and
shares with its pollers: the pass tracker of a sweep or ``--once`` run, the run's counters, the wallet
counts per poller, and the immutable :class:`TierContext` that carries them. Every mutable object
here is thread-safe (pollers run on their own threads)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pykka

from polycopy_actors.actors.messages import ASK_TIMEOUT_SECONDS, Acquire, Throttle, TierWallets
from polycopy_actors.api.transport import Stopped, Transport
from polycopy_actors.api.wallets import poller_index, shard_of
from polycopy_actors.config import Settings, TierSettings
from polycopy_actors.observe import HealthState


class PassTracker:
    """One pass over the tier (``--once`` or a sweep), shared by the pollers of a process (any thread).

    Pollers register the wallets of their pass and report each one done; ``done`` is set when every
    poller has finished. Sets (not counters) so that a restarted poller counts nothing twice.
    """

    def __init__(self, pollers: int, done: threading.Event) -> None:
        self._lock = threading.Lock()
        self._finished: set[int] = set()
        self._pollers = pollers
        self._done = done
        self._wallets: set[str] = set()
        self._swept: set[str] = set()

    def add(self, wallets: list[str]) -> None:
        with self._lock:
            self._wallets.update(wallets)

    def drop(self, wallet: str) -> None:
        """The wallet left the tier during the pass."""
        with self._lock:
            self._wallets.discard(wallet)
            self._swept.discard(wallet)

    def swept(self, wallet: str) -> None:
        with self._lock:
            self._swept.add(wallet)

    def progress(self) -> tuple[int, int]:
        """(wallets done, wallets in the pass)."""
        with self._lock:
            return len(self._swept), len(self._wallets)

    def finished(self, index: int) -> None:
        with self._lock:
            self._finished.add(index)
            if len(self._finished) >= self._pollers:
                self._done.set()


class RunStats:
    """Counters for the shutdown summary line (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.polls = self.trades = self.closes = self.errors = self.requests = 0

    def request(self) -> None:
        with self._lock:
            self.requests += 1

    def add(self, polls: int = 0, trades: int = 0, closes: int = 0, errors: int = 0) -> None:
        with self._lock:
            self.polls += polls
            self.trades += trades
            self.closes += closes
            self.errors += errors

    def snapshot_requests(self) -> int:
        with self._lock:
            return self.requests

    def snapshot(self) -> tuple[int, int, int, int]:
        with self._lock:
            return self.polls, self.trades, self.closes, self.errors

    def summary(self, since: tuple[int, int, int, int] = (0, 0, 0, 0)) -> str:
        polls, trades, closes, errors = (a - b for a, b in zip(self.snapshot(), since, strict=True))
        return f"{polls:,} polls, {trades:,} trades, {closes:,} closes, {errors:,} errors"


class DemandBoard:
    """Reconciliation on demand, shared by the detectors (StreamReader, FeedTailer, MarketWatcher) and
    the pollers of a process (any thread). A detector posts "wallet W should be read at T because R";
    the poller owning W takes its entries at its next tick. Entries survive a poller's restart.

    It also holds the one fact the pollers' schedule depends on: whether the global feed is healthy
    (written by the FeedTailer only). While it is, wallets are read on demand plus a slow safety-net
    cycle; while it is not, every wallet is polled continuously (the per-wallet path)."""

    def __init__(self, pollers: int) -> None:
        self._lock = threading.Lock()
        self._pollers = pollers
        self._wanted: dict[int, dict[str, tuple[float, str]]] = {}
        self._feed_until = 0.0

    def post(self, wallet: str, reason: str, at: float) -> None:
        """Ask for a read of ``wallet`` at monotonic time ``at`` (the earliest ask wins)."""
        index = poller_index(wallet, self._pollers)
        with self._lock:
            mine = self._wanted.setdefault(index, {})
            old = mine.get(wallet)
            if old is None or at < old[0]:
                mine[wallet] = (at, reason)

    def take(self, index: int) -> dict[str, tuple[float, str]]:
        with self._lock:
            return self._wanted.pop(index, {})

    def feed_ok(self, until: float) -> None:
        """The feed read successfully; it counts as healthy until monotonic ``until``."""
        with self._lock:
            self._feed_until = max(self._feed_until, until)

    def feed_down(self) -> None:
        with self._lock:
            self._feed_until = 0.0

    def feed_healthy(self, now: float) -> bool:
        with self._lock:
            return now < self._feed_until


class WalletCounts:
    """Wallets held by each poller of the process, for ``polycopy_wallets{tier}`` (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}

    def set(self, poller: int, count: int) -> int:
        """Record one poller's count; return the process total."""
        with self._lock:
            self._counts[poller] = count
            return sum(self._counts.values())


@dataclass(frozen=True)
class TierContext:
    """What every poller of a process shares (immutable, or thread-safe objects)."""

    settings: Settings
    tier: str
    stopping: threading.Event
    health: HealthState
    stats: RunStats
    shard_index: int = 0
    shard_count: int = 1
    #: The pass of a sweep or ``--once`` run (None: a continuous run).
    tracker: PassTracker | None = None
    #: A sweep resuming after a restart skips wallets polled since the sweep started.
    polled_before: datetime | None = None
    wallet_counts: WalletCounts = field(default_factory=WalletCounts)
    #: This process's name in ``wallet_leases`` (the DbWriter fences rows with the same name).
    owner: str = ""
    #: Reads asked for by the stream, the feed and the market watcher; the feed's health.
    demand: DemandBoard = field(default_factory=lambda: DemandBoard(1))

    @property
    def tier_settings(self) -> TierSettings:
        return self.settings.tier(self.tier)


def limited_transport(ctx: TierContext, limiter: pykka.ActorRef[Any]) -> Transport:
    """A transport for an actor of the tier: every request first asks the RateLimiter (with a timeout),
    waits what it says unless the process is stopping, and is counted; a 429 slows the whole tier."""

    def acquire(endpoint: str) -> None:
        ctx.stats.request()
        wait = limiter.ask(Acquire(), timeout=ASK_TIMEOUT_SECONDS)
        if wait > 0 and ctx.stopping.wait(wait):
            raise Stopped()

    def throttle(seconds: float) -> None:
        limiter.tell(Throttle(seconds))

    return Transport(ctx.settings.api, acquire=acquire, on_rate_limited=throttle, stop_event=ctx.stopping)


def shard_wallets(ctx: TierContext, writer: pykka.ActorRef[Any]) -> frozenset[str]:
    """The tier's wallets that fall on this process (asked of the writer, with a timeout)."""
    wallets = writer.ask(TierWallets(ctx.tier), timeout=ASK_TIMEOUT_SECONDS)
    return frozenset(w for w in wallets if shard_of(w, ctx.shard_count) == ctx.shard_index)
