"""The shape every API-reading actor of a tier shares (WalletPoller, FeedTailer, MarketWatcher,
ApiLagMonitor): supervised, one :class:`PolymarketClient` through the tier's rate limiter, created on
the actor's own thread in ``on_start`` and closed in ``on_stop``; the actor then drives itself with the
message ``first`` (a ``Tick`` it sends itself, so a crash reaches ``on_failure`` and the supervisor)."""

from __future__ import annotations

from typing import Any

import pykka

from polycopy_actors.actors.context import TierContext, limited_transport
from polycopy_actors.actors.messages import Tick
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.api.client import PolymarketClient


class TierApiActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring. ``writer`` is None for an actor that never writes (the monitor)."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, ctx: TierContext,
                 limiter: pykka.ActorRef[Any], writer: pykka.ActorRef[Any] | None = None) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.ctx = ctx
        self.limiter = limiter
        self.writer: pykka.ActorRef[Any] = writer  # type: ignore[assignment]  # None only where unused
        self.client: PolymarketClient | None = None

    def first_message(self) -> Any:
        """What the actor tells itself once started."""
        return Tick()

    def on_start(self) -> None:
        self.client = PolymarketClient(self.ctx.settings.api, limited_transport(self.ctx, self.limiter))
        self.actor_ref.tell(self.first_message())

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()
