"""The data API v2 (the default): ``{data, pagination}`` envelopes, keyset cursors, snake_case rows.

Every walk of a wallet's route carries its own ``end`` (far ahead, random) so that the CDN, which
caches by exact URL (``/v2/trades`` 300 s), never answers it; a page a cache answered anyway restarts
the walk through a new URL. Used through :class:`~polycopy_actors.api.client.PolymarketClient`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

from polycopy_actors.api import models
from polycopy_actors.api.data import DataApi
from polycopy_actors.api.transport import ApiError, Read, StaleAnswer

T = TypeVar("T")
V2_LIMIT_MAX = 1_000
#: v2 user routes: ``end`` lies this far ahead (plus a random part), so every walk has its own URL.
CACHE_BUST_AHEAD_SECONDS = 86_400


def _row_ts(row: Any) -> int:
    """A raw row's timestamp for deciding where a walk stops (a malformed one does not stop it)."""
    ts = row.get("timestamp") if isinstance(row, dict) else None
    return int(ts) if isinstance(ts, (int, Decimal)) and not isinstance(ts, bool) else 2**62


class DataApiV2(DataApi):
    """Data API v2 reads (see :class:`~polycopy_actors.api.data.DataApi`)."""

    version = "v2"

    def _bust(self) -> int:
        """``end`` of a v2 user walk: far enough ahead to filter nothing, different for every walk (a CDN
        caches answers by exact URL: 300 s on /v2/trades)."""
        return int(time.time()) + CACHE_BUST_AHEAD_SECONDS + self.t.rng.randrange(1_000_000)

    def _v2_walk(self, path: str, params: dict[str, Any], endpoint: str, parser: Callable[[Any], T],
                 wallet: str) -> Read[T]:
        """Walk a v2 keyset feed to its end: follow ``next_cursor`` re-sending the same filters. A page a
        cache answered restarts the whole walk through a new URL (changing a filter mid-walk re-anchors
        it), at most ``api.max_retries`` times."""
        for attempt in range(self.t.api.max_retries + 1):
            base = dict(params)
            if "user" in base:
                base["end"] = self._bust()
            out: Read[T] = Read()
            try:
                for rows in self._v2_pages(path, base, endpoint):
                    self.t.parse_rows(rows, parser, endpoint, wallet, out)
            except StaleAnswer as exc:
                if attempt == self.t.api.max_retries:
                    raise ApiError("stale", f"{exc}; still cached after {attempt + 1} URLs") from None
                continue
            return out
        raise AssertionError("unreachable")

    def _v2_pages(self, path: str, params: dict[str, Any], endpoint: str) -> Iterator[Any]:
        cursor: str | None = None
        pages = 0
        while True:
            query = dict(params)
            if cursor:
                query["cursor"] = cursor
            body = self.t.get_json(self.t.api.data_api_url, path, query, endpoint)
            if not isinstance(body, dict) or "data" not in body:
                raise ApiError("malformed", f"GET {path}: expected a {{data, pagination}} envelope")
            yield body.get("data")
            pagination = body.get("pagination") or {}
            if not isinstance(pagination, dict):
                raise ApiError("malformed", f"GET {path}: pagination is not an object")
            cursor = pagination.get("next_cursor")
            pages += 1
            if not cursor or not pagination.get("has_more", True):
                return
            if pages > 100_000:  # a cursor that never ends is a server bug, not a reason to loop forever
                raise ApiError("malformed", f"GET {path}: more than 100000 pages")

    def fills(self, wallet: str, start: int) -> Read[models.RawFill]:
        """Every fill of the wallet since ``start``, maker and taker."""
        params = {"user": wallet, "limit": min(self.t.api.page_size, V2_LIMIT_MAX), "taker_only": "false",
                  "start": start}
        return self._v2_walk("/v2/trades", params, "trades", models.parse_fill, wallet)

    def positions(self, wallet: str) -> Read[models.Position]:
        """``filter_amount=0`` (the default hides positions under 0.1 share: a position sold down to 0.05
        would look closed), ``include_archived`` (archived markets' positions are still held), sorted by
        ``TIMESTAMP`` ascending: the default sort (current value) moves during a long walk."""
        params = {"user": wallet, "limit": V2_LIMIT_MAX, "filter_type": "TOKENS", "filter_amount": 0,
                  "include_archived": "true", "sort_by": "TIMESTAMP", "sort_direction": "ASC"}
        return self._v2_walk("/v2/positions", params, "positions", models.parse_position, wallet)

    def closing_activity(self, wallet: str, since: int) -> Read[models.Activity]:
        params = {"user": wallet, "type": "REDEEM,MERGE", "start": max(1, since), "limit": V2_LIMIT_MAX}
        return self._v2_walk("/v2/activity", params, "activity", models.parse_activity, wallet)

    def closed_positions(self, wallet: str, limit: int) -> Read[models.ClosedPosition]:
        body = self.t.get_fresh(self.t.api.data_api_url, "/v2/positions",
                                {"user": wallet, "status": "CLOSED", "limit": limit, "end": self._bust()}, "positions")
        out: Read[models.ClosedPosition] = Read()
        self.t.parse_rows(body.get("data") if isinstance(body, dict) else None, models.parse_closed_position,
                          "closed_positions", wallet, out)
        return out

    def global_fills(self, stop_ts: int, limit: int) -> Read[models.RawFill]:
        """The bare global ``/v2/trades`` (every wallet's fills, maker legs included), newest first, down to
        the first page that reaches a row older than ``stop_ts`` (whole seconds at or after it are read).
        ``start``/``end`` are ignored by this feed, so a random ``end`` only gives the walk a URL of its
        own (the CDN caches ``/v2/trades`` by URL for 300 s); a cached page restarts the walk elsewhere."""
        for attempt in range(self.t.api.max_retries + 1):
            params = {"limit": min(limit, V2_LIMIT_MAX), "taker_only": "false", "end": self._bust()}
            out: Read[models.RawFill] = Read()
            try:
                for rows in self._v2_pages("/v2/trades", params, "trades_global"):
                    self.t.parse_rows(rows, models.parse_fill, "trades_global", "-", out)
                    if not rows or min(_row_ts(r) for r in rows) < stop_ts:
                        break
            except StaleAnswer as exc:
                if attempt == self.t.api.max_retries:
                    raise ApiError("stale", f"{exc}; still cached after {attempt + 1} URLs") from None
                continue
            out.items = [f for f in out.items if f.timestamp >= stop_ts]
            return out
        raise AssertionError("unreachable")

    def market_fills(self, chunk: str, max_rows: int) -> Read[models.RawFill]:
        # No user, so no ``end``: a limit a few rows short gives the read a URL of its own.
        limit = max(1, min(max_rows, V2_LIMIT_MAX) - self.t.rng.randrange(9))
        body = self.t.get_fresh(self.t.api.data_api_url, "/v2/trades",
                                {"condition": chunk, "limit": limit, "taker_only": "false"}, "trades")
        if not isinstance(body, dict):
            raise ApiError("malformed", "GET /v2/trades: expected a {data, pagination} envelope")
        out: Read[models.RawFill] = Read()
        self.t.parse_rows(body.get("data") or [], models.parse_fill, "trades", "-", out)
        return out

    def api_lag(self) -> float:
        """The API's own serving lag in seconds (``/v2/status``, "Get data freshness")."""
        body = self.t.get_fresh(self.t.api.data_api_url, "/v2/status", {}, "status")
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            body = body["data"]
        serving = body.get("serving") if isinstance(body, dict) else None
        lag = serving.get("lag_seconds") if isinstance(serving, dict) else None
        if isinstance(lag, bool) or not isinstance(lag, (int, float, Decimal)):
            raise ApiError("malformed", "GET /v2/status: no serving.lag_seconds")
        return float(lag)
