"""ApiLagMonitor actor: the data API's own serving lag (``/v2/status``, v2 only).

Owns one :class:`PolymarketClient` (its requests go through the tier's RateLimiter like the pollers')
and a ticker thread that sends it ``StatusTick`` every ``api.status_interval_seconds``. It sets
``polycopy_api_lag_seconds`` and warns when the API runs later than ``api.overlap_seconds``: trades
shown later than the re-read window behind a cursor would then be read only by luck.
"""

from __future__ import annotations

import logging
from typing import Any

import pykka

from polycopy_actors.actors.context import TierContext, limited_transport
from polycopy_actors.actors.messages import StatusTick, Ticker
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.api.client import ApiError, PolymarketClient, Stopped
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)


class ApiLagMonitorActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, ctx: TierContext,
                 limiter: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.ctx = ctx
        self.limiter = limiter
        self.client: PolymarketClient | None = None
        self._ticker: Ticker | None = None

    def on_start(self) -> None:
        self.client = PolymarketClient(self.ctx.settings.api, limited_transport(self.ctx, self.limiter))
        self._ticker = Ticker(self.actor_ref, StatusTick(), self.ctx.settings.api.status_interval_seconds,
                              "api-lag-ticker")
        self.actor_ref.tell(StatusTick())

    def on_stop(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        if self.client is not None:
            self.client.close()

    def receive(self, message: Any) -> Any:
        if isinstance(message, StatusTick) and not self.ctx.stopping.is_set():
            self._check()
        return None

    def _check(self) -> None:
        assert self.client is not None
        api = self.ctx.settings.api
        try:
            lag = self.client.api_lag()
        except Stopped:
            return
        except ApiError as exc:
            log.warning("could not read the API's lag from /v2/status: %s", exc)
            return
        metrics.API_LAG.set(lag)
        if lag > api.overlap_seconds:
            log.warning("the data API reports a serving lag of %.0f s, more than api.overlap_seconds (%d): "
                        "late trades may fall behind the re-read window; raise api.overlap_seconds", lag,
                        api.overlap_seconds)
