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
from polycopy_actors.actors.context import Refs, TierContext
from polycopy_actors.actors.messages import StatusTick
from polycopy_actors.api.client import ApiError, Stopped
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)


class ApiLagMonitorActor(TierApiActor):
    """See the module docstring."""

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, ctx: TierContext, refs: Refs) -> None:
        super().__init__(supervisor, name=name, ctx=ctx, refs=refs)

    def tickers(self) -> list[tuple[Any, float]]:
        return [(StatusTick(), self.ctx.settings.api.status_interval_seconds)]

    def handlers(self) -> dict[type, Any]:
        return {StatusTick: self._on_tick}

    def _on_tick(self, message: StatusTick) -> None:
        if not self.ctx.stopping.is_set():
            self._check()

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
