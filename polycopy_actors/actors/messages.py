"""Messages between actors. Work flows by ``tell``; ``ask`` only for queries, with a timeout."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pykka

from polycopy_actors.logic.poll_result import DetectedTrades, PollResult

__all__ = [
    "ASK_TIMEOUT_SECONDS", "Acquire", "AcquireLeases", "ChildExited", "Crash", "DetectedTrades", "FeedCursor",
    "FlushTick", "HeldMarkets", "LoadState", "PollResult", "ReaderFailed", "ReleaseLeases", "LivenessCheck",
    "StatusTick", "Throttle", "Tick", "Ticker", "TierWallets", "TradeEvidence", "WalletsOf",
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
    or the actor is dead. The thread only sends; the actor's own thread does the work."""

    def __init__(self, ref: pykka.ActorRef[Any], message: Any, interval: float, name: str) -> None:
        self._stop = threading.Event()
        self._ref, self._message, self._interval = ref, message, interval
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._ref.tell(self._message)
            except pykka.ActorDeadError:
                return

    def stop(self) -> None:
        self._stop.set()
