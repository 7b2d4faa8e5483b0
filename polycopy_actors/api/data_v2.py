"""The data API v2 (the default): ``{data, pagination}`` envelopes, keyset cursors, snake_case rows.

Every walk of a wallet's route carries its own ``end`` (far ahead, random) so that the CDN, which
caches by exact URL (``/v2/trades`` 300 s), never answers it; a page a cache answered anyway restarts
the walk through a new URL. Every walk is bounded: a ``next_cursor`` seen before in the walk ends it
(``malformed``), and so does going over ``api.max_walk_pages`` pages or ``api.max_walk_rows`` rows
(``incomplete``; the rows read are dropped, so memory stays bounded), except on the global feed, which
returns what it read marked incomplete. Used through :class:`~polycopy_actors.api.client.PolymarketClient`,
from its owner's thread.
"""

from __future__ import annotations

import hashlib
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
#: A ``next_cursor`` longer than this is not a cursor (the real ones are a few hundred characters).
MAX_CURSOR_CHARS = 4_096
_NO_TS = 2**62


class WalkBudgetSpent(ApiError):
    """A walk reached ``api.max_walk_pages`` or ``api.max_walk_rows`` with more to read (kind
    ``incomplete``)."""

    def __init__(self, message: str) -> None:
        super().__init__("incomplete", message)


def _row_ts(row: Any) -> int:
    """A raw row's timestamp for deciding where a walk stops (a malformed one does not stop it)."""
    ts = row.get("timestamp") if isinstance(row, dict) else None
    if isinstance(ts, bool) or not isinstance(ts, (int, Decimal)):
        return _NO_TS
    if isinstance(ts, Decimal) and not (ts.is_finite() and abs(ts) < _NO_TS):
        return _NO_TS  # int(Decimal("1e999999999")) would build a billion-digit integer
    return int(ts) if abs(ts) < _NO_TS else _NO_TS


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
        it), at most ``api.max_retries`` times. Bounded as :meth:`_v2_pages` says (``malformed`` for a
        repeated cursor, ``incomplete`` past the walk's budget: nothing of the walk is returned then)."""
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

    def _v2_pages(self, path: str, params: dict[str, Any], endpoint: str,
                  max_pages: int | None = None) -> Iterator[Any]:
        """The ``data`` of each page of one walk, following ``next_cursor``. Bounded: a cursor already
        seen in this walk raises ``ApiError("malformed")`` (a server looping would otherwise be read for
        ever); with more to read after ``max_pages`` pages (default ``api.max_walk_pages``), or past
        ``api.max_walk_rows`` rows (checked before a page is handed out), raises :class:`WalkBudgetSpent`."""
        api = self.t.api
        max_pages = api.max_walk_pages if max_pages is None else max_pages
        cursor: str | None = None
        seen: set[bytes] = set()  # digests: a walk's memory does not grow with the cursors' length
        pages = rows = 0
        while True:
            query = dict(params)
            if cursor:
                query["cursor"] = cursor
            body = self.t.get_json(api.data_api_url, path, query, endpoint)
            if not isinstance(body, dict) or "data" not in body:
                raise ApiError("malformed", f"GET {path}: expected a {{data, pagination}} envelope")
            data = body.get("data")
            pages += 1
            rows += len(data) if isinstance(data, list) else 0
            if rows > api.max_walk_rows:
                raise WalkBudgetSpent(f"GET {path}: more than {api.max_walk_rows} rows in {pages} pages; read "
                                      "abandoned (raise api.max_walk_rows to read deeper)")
            pagination = body.get("pagination") or {}
            if not isinstance(pagination, dict):
                raise ApiError("malformed", f"GET {path}: pagination is not an object")
            yield data
            cursor = pagination.get("next_cursor")
            if not cursor or not pagination.get("has_more", True):
                return
            if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_CHARS:
                raise ApiError("malformed", f"GET {path}: next_cursor is not a string of at most "
                                            f"{MAX_CURSOR_CHARS} characters")
            digest = hashlib.sha256(cursor.encode("utf-8", "surrogatepass")).digest()
            if digest in seen:
                raise ApiError("malformed", f"GET {path}: next_cursor repeated after {pages} pages; read abandoned")
            seen.add(digest)
            if pages >= max_pages:
                raise WalkBudgetSpent(f"GET {path}: more than {max_pages} pages; read abandoned "
                                      "(raise api.max_walk_pages to read deeper)")

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

    def global_fills(self, stop_ts: int, limit: int, *, max_pages: int | None = None) -> Read[models.RawFill]:
        """The bare global ``/v2/trades`` (every wallet's fills, maker legs included), newest first, down to
        the first page that reaches a row older than ``stop_ts`` (whole seconds at or after it are read).
        ``start``/``end`` are ignored by this feed, so a random ``end`` only gives the walk a URL of its
        own (the CDN caches ``/v2/trades`` by URL for 300 s); a cached page restarts the walk elsewhere.

        At most ``max_pages`` pages (None: ``api.max_walk_pages``) and ``api.max_walk_rows`` rows: a walk
        that spends that budget before reaching ``stop_ts`` returns the rows it read (the newest) with
        ``complete=False``; what lies between them and ``stop_ts`` is a gap the caller deals with. A
        repeated ``next_cursor`` still raises ``ApiError("malformed")``."""
        if max_pages is not None and max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        for attempt in range(self.t.api.max_retries + 1):
            params = {"limit": min(limit, V2_LIMIT_MAX), "taker_only": "false", "end": self._bust()}
            out: Read[models.RawFill] = Read()
            try:
                for rows in self._v2_pages("/v2/trades", params, "trades_global", max_pages=max_pages):
                    self.t.parse_rows(rows, models.parse_fill, "trades_global", "-", out)
                    if not rows or min(_row_ts(r) for r in rows) < stop_ts:
                        break
            except WalkBudgetSpent:
                out.complete = False
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
