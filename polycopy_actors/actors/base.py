"""The shape every API-reading actor of a tier shares (WalletPoller, FeedTailer, MarketWatcher,
ApiLagMonitor): supervised, one :class:`PolymarketClient` through the tier's rate limiter, created on
the actor's own thread in ``on_start`` and closed in ``on_stop``, and driven by time one way only:

- each periodic message (``Tick``, ``StatusTick``...) comes from a :class:`Ticker` owned by the actor,
  at most one outstanding at a time, and is also sent once at start;
- a handler compares due times (monotonic), does what is due, and returns: it never waits for time to
  pass (the HTTP request and the rate limiter's pacing are its only waits, both bounded and cut short
  when the process stops), so a stop or a restart never waits out an interval.

Handlers are looked up by message type in :meth:`handlers`; a failed ``tell`` reaches ``on_failure`` and
the supervisor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka

from polycopy_actors.actors.context import Refs, TierContext, limited_transport
from polycopy_actors.actors.messages import Ticker
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.api.client import PolymarketClient


class TierApiActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, ctx: TierContext, refs: Refs) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.ctx = ctx
        self.refs = refs
        self.client: PolymarketClient | None = None
        self._tickers: dict[type, Ticker] = {}

    # --- what a subclass says ------------------------------------------------------------------------

    def tickers(self) -> list[tuple[Any, float]]:
        """``(message, interval seconds)`` of each periodic message (sent once at start, then by a Ticker)."""
        return []

    def handlers(self) -> dict[type, Callable[[Any], Any]]:
        """The handler of each message type."""
        return {}

    # --- life cycle ------------------------------------------------------------------------------------

    def on_start(self) -> None:
        assert self.refs.limiter is not None
        self.client = PolymarketClient(self.ctx.settings.api, limited_transport(self.ctx, self.refs.limiter))
        self._handlers = self.handlers()
        for message, interval in self.tickers():
            self._tickers[type(message)] = Ticker(self.actor_ref, message, interval,
                                                  f"{self.child_name}-{type(message).__name__.lower()}")
            self.actor_ref.tell(type(message)())  # the first one at once (not the ticker's own object)

    def on_stop(self) -> None:
        for ticker in self._tickers.values():
            ticker.stop()
        if self.client is not None:
            self.client.close()

    def receive(self, message: Any) -> Any:
        ticker = self._tickers.get(type(message))
        if ticker is not None:
            ticker.ack(message)
        return super().receive(message)
