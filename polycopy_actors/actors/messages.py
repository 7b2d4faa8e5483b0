"""Messages between actors. Work flows by ``tell``; ``ask`` only for queries, with a timeout."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pykka

from polycopy_actors.logic.poll_result import DetectedTrades, PollResult

__all__ = [
    "ASK_TIMEOUT_SECONDS", "Acquire", "AcquireLeases", "ChildExited", "Crash", "DbState", "Demand", "DetectedTrades",
    "FeedClock", "FeedCursor", "FeedHealth", "Flush", "FlushTick", "GaugeTick", "HealthCheck", "HeldMarkets",
    "LivenessCheck", "LoadState", "PassDropped", "PassFinished", "PassProgress", "PassSwept", "PassWallets",
    "PathState", "PollResult", "ReadOk", "ReaderFailed", "Refresh", "ReleaseLeases", "RowsRefused", "StatusTick",
    "Throttle", "Tick", "Ticker", "TierWallets", "TradeEvidence", "WalletCount", "WalletsOf", "WriterState",
]

#: Timeout of every ``ask`` (an actor never blocks on another without one).
ASK_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Crash:
    """Raise inside the receiving actor (fault-injection tests)."""

    reason: str = "injected crash"


@dataclass(frozen=True)
class ChildExited:
    """A child tells its supervisor it failed (from ``on_failure``); ``ref_id`` tells restarts apart."""

    name: str
    ref_id: str
    error: str


@dataclass(frozen=True)
class LivenessCheck:
    """Supervisor's periodic liveness check (an ``on_start`` failure never reaches ``on_failure``)."""


@dataclass(frozen=True)
class Acquire:
    """Ask the RateLimiter for one request's token; answers the seconds to wait."""

    cost: float = 1.0


@dataclass(frozen=True)
class Throttle:
    """Tell the RateLimiter the API answered 429: slow the whole tier."""

    seconds: float


@dataclass(frozen=True)
class Tick:
    """A poller's "look at your schedule" (it tells itself)."""


@dataclass(frozen=True)
class StatusTick:
    """The ApiLagMonitor's periodic read of ``/v2/status``."""


@dataclass(frozen=True)
class FlushTick:
    """The writer's periodic flush."""


@dataclass(frozen=True)
class TierWallets:
    """Ask the writer for the tier's wallets (it owns the database pool).

    ``polled_before``: only wallets not polled since then (a sweep resuming after a restart)."""

    tier: str
    polled_before: datetime | None = None


@dataclass(frozen=True)
class LoadState:
    """Ask the writer for the wallets' watermarks and open positions (flushes first)."""

    wallets: tuple[str, ...]


@dataclass(frozen=True)
class TradeEvidence:
    """Ask the writer (it flushes first) for the wallet's stored trades of each asset since its window
    start; answers ``{asset: WindowTrades}``."""

    wallet: str
    windows: tuple[tuple[str, datetime], ...]


@dataclass(frozen=True)
class AcquireLeases:
    """Ask the writer to take or renew these wallets' leases for the process; answers
    ``(wallets held, {wallet: (other owner, until)})``."""

    wallets: tuple[str, ...]
    ttl_seconds: float


@dataclass(frozen=True)
class FeedCursor:
    """Ask the writer for the global feed's persisted position (block time; None if never stored)."""

    name: str


@dataclass(frozen=True)
class HeldMarkets:
    """Ask the writer for the markets (condition ids) the given wallets hold in ``positions_current``;
    answers ``{condition_id: [wallets]}``."""

    wallets: tuple[str, ...]


@dataclass(frozen=True)
class WalletsOf:
    """A detector's periodic refresh of the wallets of its tier (it tells itself)."""


@dataclass(frozen=True)
class ReaderFailed:
    """The StreamReader's reader thread died: raised in the actor, so the supervisor restarts it."""

    error: str


@dataclass(frozen=True)
class ReleaseLeases:
    """Give these wallets' leases up (they left the poller)."""

    wallets: tuple[str, ...]


class Ticker:
    """A daemon thread that ``tell``s ``message`` to an actor every ``interval`` seconds until stopped
    or the actor is dead: the one way actors drive time (a handler never waits; it returns and the next
    tick comes). The thread only sends; the actor's own thread does the work.

    At most one tick is outstanding: the actor calls :meth:`ack` when it handles the ticker's own message
    (``message is ticker.message``: a message the actor tells itself does not count), and ticks that fall
    due meanwhile (a long poll, a slow flush) are not queued behind it."""

    def __init__(self, ref: pykka.ActorRef[Any], message: Any, interval: float, name: str) -> None:
        self._stop = threading.Event()
        self._outstanding = threading.Event()
        self._ref, self._interval = ref, interval
        #: The one object this ticker sends (identity tells it from the same message told otherwise).
        self.message = message
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._outstanding.is_set():
                continue
            self._outstanding.set()
            try:
                self._ref.tell(self.message)
            except pykka.ActorDeadError:
                return

    def ack(self, message: Any) -> None:
        """The actor handles ``message`` (its own thread): if it is this ticker's, the next one may be sent."""
        if message is self.message:
            self._outstanding.clear()

    def stop(self) -> None:
        self._stop.set()


# --- health (the HealthMonitor actor owns what /healthz answers) ---------------------------------------

@dataclass(frozen=True)
class ReadOk:
    """A read succeeded: ``trades`` (the trades path: a wallet's trades, a feed walk, the stream's flow)
    or ``positions``."""

    kind: str


@dataclass(frozen=True)
class PathState:
    """A detection path's state: ``stream`` connected/down/off, ``feed`` ok/down/off."""

    name: str
    state: str


@dataclass(frozen=True)
class DbState:
    """The writer's view of the database: ``ok``, ``unreachable`` or ``busy`` (with what it saw)."""

    state: str
    detail: str = ""


@dataclass(frozen=True)
class WriterState:
    """The writer's backlog (rows buffered, messages waiting in its mailbox) and the flush running now
    (its monotonic start; None: none)."""

    rows: int
    waiting: int
    flush_started: float | None = None


@dataclass(frozen=True)
class RowsRefused:
    """The database refused ``count`` rows for their data (kept in ``rejected_items``)."""

    count: int
    message: str


@dataclass(frozen=True)
class FeedClock:
    """The global feed read a row from the future (text for /healthz; empty: no longer)."""

    text: str


@dataclass(frozen=True)
class HealthCheck:
    """Ask the HealthMonitor for a :class:`~polycopy_actors.observe.health.HealthReport`."""


# --- progress (the Progress actor owns the pass and the wallets per poller) -------------------------------

@dataclass(frozen=True)
class WalletCount:
    """A poller holds ``count`` wallets now."""

    poller: int
    count: int


@dataclass(frozen=True)
class PassWallets:
    """A poller's wallets of the pass (a sweep or ``--once``)."""

    poller: int
    wallets: tuple[str, ...]


@dataclass(frozen=True)
class PassSwept:
    """A wallet of the pass is done."""

    wallet: str


@dataclass(frozen=True)
class PassDropped:
    """A wallet left the tier during the pass."""

    wallet: str


@dataclass(frozen=True)
class PassFinished:
    """A poller finished its pass."""

    poller: int


@dataclass(frozen=True)
class PassProgress:
    """Ask the Progress actor: (wallets done, wallets in the pass)."""


# --- the writer, the reader, the pollers ---------------------------------------------------------------------

@dataclass(frozen=True)
class Flush:
    """Ask the writer to write its buffer now; answers None once it is empty, raises
    :class:`~polycopy_actors.db.errors.DatabaseUnavailable` when it cannot (a read that depends on
    buffered rows asks this first)."""


@dataclass(frozen=True)
class GaugeTick:
    """The DbReader's periodic export of gauges read from the database."""


@dataclass(frozen=True)
class Refresh:
    """A poller's periodic re-read of the tier's wallets and renewal of their leases."""


@dataclass(frozen=True)
class Demand:
    """A detector asks for a read of ``wallet`` at monotonic time ``at`` because of ``reason``; the
    PollerPool routes it to the poller that owns the wallet (the earliest ask wins)."""

    wallet: str
    reason: str
    at: float


@dataclass(frozen=True)
class FeedHealth:
    """The global feed read successfully; it counts as healthy until monotonic ``until`` (0: down now).
    The PollerPool sends it to every poller."""

    until: float
