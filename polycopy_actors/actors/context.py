"""What every actor of a tier's tree is given when it starts: an immutable :class:`TierContext` (the
settings and where this process stands) and the :class:`Refs` of the siblings it talks to.

Nothing here is mutable shared state: each fact has one owning actor that others tell or ask (health:
the HealthMonitor; the pass and the wallets per poller: Progress; rows: the DbWriter; reads of the
database: the DbReader; a wallet's reads: its WalletPoller, reached through the PollerPool). The only
shared objects are ``threading.Event`` signals (``stopping``) and actor refs, both made for it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pykka

from polycopy_actors.actors.messages import ASK_TIMEOUT_SECONDS, Acquire, Throttle, TierWallets
from polycopy_actors.api.transport import Stopped, Transport
from polycopy_actors.api.wallets import shard_of
from polycopy_actors.config import Settings, TierSettings
from polycopy_actors.db.errors import DatabaseUnavailable


@dataclass(frozen=True)
class TierContext:
    """What every actor of a process's tree knows from the start (immutable)."""

    settings: Settings
    tier: str
    stopping: threading.Event
    shard_index: int = 0
    shard_count: int = 1
    #: One pass over the tier (``--once`` or a sweep) rather than a continuous run.
    one_pass: bool = False
    #: A sweep resuming after a restart skips wallets polled since the sweep started.
    polled_before: datetime | None = None
    #: This process's name in ``wallet_leases`` (the DbWriter fences rows with the same name).
    owner: str = ""
    #: The tree runs the FeedTailer: pollers start reading on demand, and the feed has its stale
    #: period to prove itself.
    feed_expected: bool = False

    @property
    def tier_settings(self) -> TierSettings:
        return self.settings.tier(self.tier)


@dataclass(frozen=True)
class Refs:
    """The siblings an actor talks to (refs of the actors running when it started: a restart of any of
    them restarts everything started after it, rest_for_one, so these never go stale). ``None`` where
    the tree has no such actor or the actor was started before it."""

    health: pykka.ActorRef[Any]
    progress: pykka.ActorRef[Any] | None = None
    limiter: pykka.ActorRef[Any] | None = None
    writer: pykka.ActorRef[Any] | None = None
    reader: pykka.ActorRef[Any] | None = None
    #: The PollerPool: routes ``Demand`` to the poller that owns the wallet, ``FeedHealth`` to all.
    pool: pykka.ActorRef[Any] | None = None

    @classmethod
    def of(cls, siblings: dict[str, pykka.ActorRef[Any]]) -> Refs:
        return cls(health=siblings["health"], progress=siblings.get("progress"), limiter=siblings.get("limiter"),
                   writer=siblings.get("writer"), reader=siblings.get("reader"), pool=siblings.get("pool"))


def limited_transport(ctx: TierContext, limiter: pykka.ActorRef[Any]) -> Transport:
    """A transport for an actor of the tier: every request first asks the RateLimiter (with a timeout)
    and waits what it says unless the process is stopping; a 429 slows the whole tier. (This pacing wait
    and the HTTP request itself are the only waits inside a handler: both are bounded, and cut short
    when the process stops.)"""

    def acquire(endpoint: str) -> None:
        wait = limiter.ask(Acquire(), timeout=ASK_TIMEOUT_SECONDS)
        if wait > 0 and ctx.stopping.wait(wait):
            raise Stopped()

    def throttle(seconds: float) -> None:
        limiter.tell(Throttle(seconds))

    return Transport(ctx.settings.api, acquire=acquire, on_rate_limited=throttle, stop_event=ctx.stopping)


def shard_wallets(ctx: TierContext, reader: pykka.ActorRef[Any]) -> frozenset[str]:
    """The tier's wallets that fall on this process (asked of the DbReader, with a timeout; raises
    ``DatabaseUnavailable``, ``pykka.Timeout`` or ``pykka.ActorDeadError`` when it cannot answer)."""
    wallets = reader.ask(TierWallets(ctx.tier), timeout=ASK_TIMEOUT_SECONDS)
    return frozenset(w for w in wallets if shard_of(w, ctx.shard_count) == ctx.shard_index)


#: What a caller of the DbReader or the DbWriter catches: the database cannot answer now, the actor did
#: not answer in time, or it is being restarted. Anything else is a bug and must reach the supervisor.
ASK_FAILURES: tuple[type[Exception], ...] = (DatabaseUnavailable, pykka.Timeout, pykka.ActorDeadError)
