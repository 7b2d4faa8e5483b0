"""The client of Polymarket's read APIs that a WalletPoller uses: the data API (v2, or the v1
fallback, chosen once from ``api.data_api_version``) and gamma, over one :class:`Transport`.

One instance per WalletPoller (or per actor reading the API), used only from its owner's thread. Every
read is bounded (:mod:`polycopy_actors.api.transport`: deadline, body size, Retry-After, no redirects;
:mod:`polycopy_actors.api.data_v2`: walk budgets). The tiers never see which
data-API version is in use: both produce the same records (:mod:`polycopy_actors.api.models`) and
the same trade ids.
"""

from __future__ import annotations

import time

from polycopy_actors.api.data import DataApi
from polycopy_actors.api.data_v1 import DataApiV1
from polycopy_actors.api.data_v2 import DataApiV2
from polycopy_actors.api.gamma import Gamma
from polycopy_actors.api.models import Activity, ClosedPosition, Position, RawFill, Trade, assign_trade_ids
from polycopy_actors.api.transport import (
    ApiError,
    Read,
    Rejected,
    StaleAnswer,
    Stopped,
    Transport,
)
from polycopy_actors.config import ApiSettings

__all__ = ["ApiError", "DataApi", "PolymarketClient", "Transport", "Read", "Rejected", "StaleAnswer", "Stopped"]


class PolymarketClient:
    """See the module docstring. Not thread-safe: one per poller."""

    def __init__(self, api: ApiSettings, transport: Transport | None = None) -> None:
        """``transport``: one with the owner's rate limiter and stop event (default: a bare one)."""
        self.api = api
        self.transport = transport or Transport(api)
        self.data: DataApi = DataApiV2(self.transport) if api.data_api_version == "v2" else DataApiV1(self.transport)
        self.gamma = Gamma(self.transport)

    def close(self) -> None:
        self.transport.close()

    def _start(self, since: int | None) -> int:
        if since is not None:
            return max(1, since)
        if self.api.initial_backfill_seconds == 0:
            return 1
        return max(1, int(time.time()) - self.api.initial_backfill_seconds)

    def trades_since(self, wallet: str, since: int | None) -> Read[Trade]:
        """Every fill of ``wallet`` with timestamp >= ``since`` (whole seconds: boundary re-read),
        maker and taker; oldest first. ``since=None``: the initial backfill."""
        fills = self.data.fills(wallet, self._start(since))
        mine = sorted((f for f in fills.items if f.wallet == wallet), key=lambda f: f.timestamp)
        return Read(assign_trade_ids(mine), fills.rejected)

    def global_fills(self, stop_ts: int, limit: int, *, max_pages: int | None = None) -> Read[RawFill]:
        """v2 only: the bare global feed down to ``stop_ts``, reading at most ``max_pages`` pages (None:
        ``api.max_walk_pages``); a walk that spent its budget first returns the newest rows with
        ``complete=False`` (see :meth:`DataApiV2.global_fills`)."""
        if not isinstance(self.data, DataApiV2):
            raise ApiError("unsupported", "the global feed needs the data API v2")
        return self.data.global_fills(stop_ts, limit, max_pages=max_pages)

    def positions(self, wallet: str) -> Read[Position]:
        """The wallet's current positions, every page. The snapshot is complete only when
        ``rejected`` is empty: a snapshot that skipped a row must never close a position."""
        out = self.data.positions(wallet)
        out.items = [p for p in out.items if p.wallet == wallet]
        return out

    def closing_activity_since(self, wallet: str, since: int) -> Read[Activity]:
        """REDEEM and MERGE activity of the wallet at or after ``since`` (what ends a position
        without a SELL trade; automatic redemptions are REDEEM rows too)."""
        out = self.data.closing_activity(wallet, since)
        out.items = [a for a in out.items if a.type in ("REDEEM", "MERGE") and a.wallet == wallet]
        return out

    def closed_positions(self, wallet: str, limit: int = 50) -> list[ClosedPosition]:
        """The API's own latest closed positions of a wallet (v1 ``/closed-positions``, v2
        ``/v2/positions?status=CLOSED``): a cross-check of the closes this service derives."""
        return [p for p in self.data.closed_positions(wallet, limit).items if p.wallet == wallet]

    def market_traders(self, condition_ids: list[str], max_rows: int = 1000) -> set[str]:
        """Wallets in the latest fills of these markets (one page per 20 markets): trader discovery."""
        seen: set[str] = set()
        for i in range(0, len(condition_ids), 20):
            seen.update(f.wallet for f in self.data.market_fills(",".join(condition_ids[i:i + 20]), max_rows).items)
        return seen

    def api_lag(self) -> float:
        """The API's own serving lag in seconds (v2 ``/v2/status``, "Get data freshness")."""
        return self.data.api_lag()

    def market_states(self, condition_ids: list[str]) -> dict[str, bool]:
        """Gamma's view of each market: True = closed or resolved, False = open; unknown ones left out."""
        return self.gamma.market_states(condition_ids)
