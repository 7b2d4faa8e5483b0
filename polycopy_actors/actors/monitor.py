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

from polycopy_actors.actors.base import TierApiActor
from polycopy_actors.actors.context import TierContext
from polycopy_actors.actors.messages import StatusTick, Ticker
from polycopy_actors.api.client import ApiError, Stopped
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)


class ApiLagMonitorActor(TierApiActor):
    """See the module docstring."""

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, ctx: TierContext,
                 limiter: pykka.ActorRef[Any]) -> None:
        super().__init__(supervisor, name=name, ctx=ctx, limiter=limiter)
        self._ticker: Ticker | None = None

    def first_message(self) -> Any:
        return StatusTick()

    def on_start(self) -> None:
        super().on_start()
        self._ticker = Ticker(self.actor_ref, StatusTick(), self.ctx.settings.api.status_interval_seconds,
                              "api-lag-ticker")

    def on_stop(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        super().on_stop()

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
