"""HTTP client of Polymarket's data API (v1 or v2) and gamma API.

One instance per WalletPoller, used only from that poller's thread (it owns a
``requests.Session``). Every HTTP request first asks the tier's rate limiter (``acquire``); a 429
tells it to slow the whole tier (``on_rate_limited``). The tiers never see which data-API version
is in use: both produce the same records (:mod:`polycopy_actors.models`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests

from polycopy_actors import __version__, metrics
from polycopy_actors.config import ApiSettings
from polycopy_actors.models import (
    Activity,
    ClosedPosition,
    MalformedItem,
    Market,
    Position,
    RawFill,
    Trade,
    assign_trade_ids,
    parse_activity,
    parse_closed_position,
    parse_fill,
    parse_market,
    parse_position,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Documented caps (../shared/polymarket-api.md).
V1_TRADES_LIMIT_MAX = 10_000
V1_TRADES_OFFSET_MAX = 10_000
V1_ACTIVITY_LIMIT_MAX = 500
V1_ACTIVITY_OFFSET_MAX = 5_000
V1_POSITIONS_LIMIT_MAX = 500
V1_POSITIONS_OFFSET_MAX = 10_000
V2_LIMIT_MAX = 1_000
#: An answer older than this (``Age`` header) came from a cache, not the API.
STALE_AGE_SECONDS = 30
GAMMA_IDS_PER_REQUEST = 50
#: v1 route of a request, for error messages that tell a user v1 may be retired.
V1_RETIRED_STATUSES = (404, 410)


class ApiError(Exception):
    """A request that failed for good (after retries where retrying made sense).

    ``kind``: ``network`` (timeouts, connection errors), ``server`` (5xx), ``rate_limited`` (429),
    ``client`` (other 4xx: not retried), ``malformed`` (a body that is not the documented shape),
    ``incomplete`` (a listing deeper than the API lets us read).
    """

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class Stopped(Exception):
    """The owner is stopping: waits are cut short."""


def _no_acquire(endpoint: str) -> None:
    return None


def _no_throttle(seconds: float) -> None:
    return None


class PolymarketClient:
    """See the module docstring. Not thread-safe: one per poller."""

    def __init__(
        self,
        api: ApiSettings,
        acquire: Callable[[str], None] = _no_acquire,
        on_rate_limited: Callable[[float], None] = _no_throttle,
        stop_event: threading.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self.version = api.data_api_version
        self._acquire = acquire
        self._on_rate_limited = on_rate_limited
        self._stop = stop_event or threading.Event()
        self._rng = rng or random.Random()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"polycopy_actors/{__version__} (+copy-trading data pipeline)"
        self.session.headers["Accept"] = "application/json"
        #: Items skipped as malformed so far (the poller holds a cursor when a read skipped any).
        self.malformed_items = 0
        #: ``Age`` of the last answer, when a cache in front of the API served it.
        self.last_age: float | None = None
        # Ask caches in front of the API for a fresh answer (a CDN may ignore it: see _trades_v2).
        self.session.headers["Cache-Control"] = "no-cache"

    def close(self) -> None:
        self.session.close()

    # --- transport -------------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stop.wait(seconds):
            raise Stopped()

    def _backoff(self, attempt: int) -> float:
        base = min(self.api.backoff_max_seconds, self.api.backoff_base_seconds * (2 ** attempt))
        return base * (0.5 + self._rng.random() / 2)  # "equal jitter"

    @staticmethod
    def _retry_after(resp: requests.Response) -> float | None:
        raw = resp.headers.get("Retry-After")
        if not raw:
            return None
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
            except (TypeError, ValueError):
                return None

    def get_json(self, base: str, path: str, params: dict[str, Any] | list[tuple[str, Any]],
                 endpoint: str) -> Any:
        """GET with rate limiting, bounded retries and typed errors; returns the decoded body."""
        url = base.rstrip("/") + path
        last: ApiError | None = None
        for attempt in range(self.api.max_retries + 1):
            if self._stop.is_set():
                raise Stopped()
            self._acquire(endpoint)
            started = time.monotonic()
            try:
                resp = self.session.get(
                    url, params=params, timeout=(self.api.connect_timeout_seconds, self.api.timeout_seconds)
                )
            except requests.Timeout:
                metrics.API_REQUESTS.labels(endpoint, "timeout").inc()
                last = ApiError("network", f"GET {path}: timed out")
                self._sleep(self._backoff(attempt))
                continue
            except requests.RequestException as exc:
                metrics.API_REQUESTS.labels(endpoint, "error").inc()
                last = ApiError("network", f"GET {path}: {type(exc).__name__}")
                self._sleep(self._backoff(attempt))
                continue
            finally:
                metrics.API_DURATION.labels(endpoint).observe(time.monotonic() - started)
            status = resp.status_code
            metrics.API_REQUESTS.labels(endpoint, str(status)).inc()
            if status == 429:
                wait = self._retry_after(resp)
                wait = self._backoff(attempt) if wait is None else wait
                log.warning("GET %s: 429 rate limited, slowing the tier for %.1f s", path, wait)
                self._on_rate_limited(wait)
                last = ApiError("rate_limited", f"GET {path}: 429 Too Many Requests", 429)
                self._sleep(wait)
                continue
            if status >= 500:
                wait = self._retry_after(resp) if status == 503 else None
                last = ApiError("server", f"GET {path}: HTTP {status}", status)
                self._sleep(self._backoff(attempt) if wait is None else min(wait, self.api.backoff_max_seconds))
                continue
            if status >= 400:
                detail = resp.text[:200].replace("\n", " ")
                if self.version == "v1" and not path.startswith("/v2") and status in V1_RETIRED_STATUSES \
                        and base == self.api.data_api_url:
                    log.error("GET %s answered %d: the data API v1 routes may be retired; "
                              "set api.data_api_version: v2 (POLYCOPY_DATA_API_VERSION=v2)", path, status)
                raise ApiError("client", f"GET {path} {_describe_params(params)}: HTTP {status}: {detail}", status)
            self.last_age = _age(resp)
            try:
                return resp.json(parse_float=Decimal)
            except ValueError:
                last = ApiError("malformed", f"GET {path}: body is not JSON ({resp.text[:60]!r})", status)
                self._sleep(self._backoff(attempt))
                continue
        assert last is not None
        raise last

    # --- parsing helpers ---------------------------------------------------------------------------

    def _parse_rows(self, rows: Any, parser: Callable[[Any], T], endpoint: str, wallet: str) -> Iterator[T]:
        if rows is None:
            return
        if not isinstance(rows, list):
            raise ApiError("malformed", f"{endpoint}: expected a list of items, got {type(rows).__name__}")
        for item in rows:
            try:
                yield parser(item)
            except MalformedItem as exc:
                self.malformed_items += 1
                metrics.API_ITEMS_MALFORMED.labels(endpoint, exc.field[:40]).inc()
                log.warning("skipped a malformed %s item of wallet %s: field %s: %s",
                            endpoint, wallet, exc.field, exc.reason)

    def _v2_pages(self, path: str, params: dict[str, Any], endpoint: str) -> Iterator[Any]:
        """Walk a v2 keyset feed: follow ``next_cursor`` re-sending the same filters."""
        cursor: str | None = None
        pages = 0
        while True:
            query = dict(params)
            if cursor:
                query["cursor"] = cursor
            body = self.get_json(self.api.data_api_url, path, query, endpoint)
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

    # --- trades --------------------------------------------------------------------------------------

    def _start(self, since: int | None) -> int:
        if since is not None:
            return max(1, since)
        if self.api.initial_backfill_seconds == 0:
            return 1
        return max(1, int(time.time()) - self.api.initial_backfill_seconds)

    def trades_since(self, wallet: str, since: int | None) -> list[Trade]:
        """Every fill of ``wallet`` with timestamp >= ``since`` (whole seconds: boundary re-read),
        maker and taker; oldest first. ``since=None``: the initial backfill."""
        start = self._start(since)
        if self.version == "v2":
            fills = self._trades_v2(wallet, start)
        else:
            fills = self._trades_v1(wallet, start)
        fills.sort(key=lambda f: f.timestamp)
        return assign_trade_ids(fills)

    def _trades_v2(self, wallet: str, start: int) -> list[RawFill]:
        limit = min(self.api.page_size, V2_LIMIT_MAX)
        out, age = self._trades_v2_walk(wallet, start, limit)
        if age is not None and age > STALE_AGE_SECONDS:
            # A CDN answered this URL from its cache (seen with max-age=300 on /v2/trades?user=): read
            # again through another URL (one row less per page: the same rows, a URL it has not cached).
            metrics.API_STALE.labels("trades").inc()
            log.warning("GET /v2/trades for %s was served from a cache (Age %d s): reading again past it",
                        wallet, age)
            out, age = self._trades_v2_walk(wallet, start, limit - 1 if limit > 1 else limit + 1)
        return out

    def _trades_v2_walk(self, wallet: str, start: int, limit: int) -> tuple[list[RawFill], float | None]:
        params = {"user": wallet, "limit": limit, "taker_only": "false", "start": start}
        out: list[RawFill] = []
        oldest_age: float | None = None
        for rows in self._v2_pages("/v2/trades", params, "trades"):
            if self.last_age is not None:
                oldest_age = max(oldest_age or 0.0, self.last_age)
            out.extend(f for f in self._parse_rows(rows, parse_fill, "trades", wallet) if f.wallet == wallet)
        return out, oldest_age

    def api_lag(self) -> float:
        """The API's own serving lag in seconds (``/v2/status``, "Get data freshness")."""
        body = self.get_json(self.api.data_api_url, "/v2/status", {}, "status")
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            body = body["data"]
        serving = body.get("serving") if isinstance(body, dict) else None
        lag = serving.get("lag_seconds") if isinstance(serving, dict) else None
        if isinstance(lag, bool) or not isinstance(lag, (int, float, Decimal)):
            raise ApiError("malformed", "GET /v2/status: no serving.lag_seconds")
        return float(lag)

    def closed_positions(self, wallet: str, limit: int = 50) -> list[ClosedPosition]:
        """The API's own latest closed positions of a wallet (v1 ``/closed-positions``, v2
        ``/v2/positions?status=CLOSED``): a cross-check of the closes this service derives."""
        if self.version == "v2":
            body = self.get_json(self.api.data_api_url, "/v2/positions",
                                 {"user": wallet, "status": "CLOSED", "limit": limit}, "positions")
            rows = body.get("data") if isinstance(body, dict) else None
        else:
            rows = _v1_list(self.get_json(self.api.data_api_url, "/closed-positions",
                                          {"user": wallet, "limit": min(limit, 50)}, "closed_positions"))
        return [p for p in self._parse_rows(rows, parse_closed_position, "closed_positions", wallet)
                if p.wallet == wallet]

    def _trades_v1(self, wallet: str, start: int) -> list[RawFill]:
        limit = min(self.api.page_size, V1_TRADES_LIMIT_MAX)
        out: list[RawFill] = []
        offset = 0
        while True:
            if offset > V1_TRADES_OFFSET_MAX:
                # Deeper than /trades lets us read: continue by time windows of /activity.
                oldest = min(f.timestamp for f in out)
                out = [f for f in out if f.timestamp != oldest]
                out.extend(self._activity_fill_windows(wallet, start, oldest))
                return out
            body = _v1_list(self.get_json(self.api.data_api_url, "/trades",
                            {"user": wallet, "limit": limit, "offset": offset, "takerOnly": "false"}, "trades"))
            page = list(self._parse_rows(body, parse_fill, "trades", wallet))
            out.extend(f for f in page if f.timestamp >= start and f.wallet == wallet)
            if len(body) < limit or (page and min(f.timestamp for f in page) < start):
                return out
            offset += limit

    def _activity_fill_windows(self, wallet: str, start: int, end: int) -> list[RawFill]:
        """Fills with start <= ts <= end through v1 /activity, window by window (offset cap 5,000)."""
        limit = min(self.api.page_size, V1_ACTIVITY_LIMIT_MAX)
        out: list[RawFill] = []
        while True:
            window: list[RawFill] = []
            offset = 0
            exhausted = False
            while offset <= V1_ACTIVITY_OFFSET_MAX:
                body = _v1_list(self.get_json(
                    self.api.data_api_url, "/activity",
                    {"user": wallet, "type": "TRADE", "start": start, "end": end, "limit": limit, "offset": offset},
                    "activity",
                ))
                window.extend(f for f in self._parse_rows(body, parse_fill, "activity", wallet) if f.wallet == wallet)
                if len(body) < limit:
                    exhausted = True
                    break
                offset += limit
            if exhausted:
                return out + window
            oldest = min(f.timestamp for f in window)
            if oldest == end:
                raise ApiError("incomplete", f"wallet {wallet}: more than {V1_ACTIVITY_OFFSET_MAX} fills in one second")
            out.extend(f for f in window if f.timestamp != oldest)
            end = oldest  # the next window re-reads that whole second

    def market_traders(self, condition_ids: list[str], max_rows: int = 1000) -> set[str]:
        """Wallets in the latest fills of these markets (one page per 20 markets): trader discovery."""
        seen: set[str] = set()
        for i in range(0, len(condition_ids), 20):
            chunk = ",".join(condition_ids[i:i + 20])
            if self.version == "v2":
                body = self.get_json(self.api.data_api_url, "/v2/trades",
                                     {"condition": chunk, "limit": min(max_rows, V2_LIMIT_MAX), "taker_only": "false"},
                                     "trades")
                if not isinstance(body, dict):
                    raise ApiError("malformed", "GET /v2/trades: expected a {data, pagination} envelope")
                rows = body.get("data") or []
            else:
                rows = _v1_list(self.get_json(self.api.data_api_url, "/trades",
                                              {"market": chunk, "limit": min(max_rows, V1_TRADES_LIMIT_MAX),
                                               "takerOnly": "false"}, "trades"))
            seen.update(f.wallet for f in self._parse_rows(rows, parse_fill, "trades", "-"))
        return seen

    # --- positions, activity, markets -----------------------------------------------------------------

    def positions(self, wallet: str) -> list[Position]:
        """The wallet's complete current positions. Raises ApiError unless every page was read:
        a failed or partial snapshot (a page, or one malformed item) must never close a position."""
        before = self.malformed_items
        out = self._positions(wallet)
        if self.malformed_items > before:
            raise ApiError("malformed", f"wallet {wallet}: positions snapshot had "
                                        f"{self.malformed_items - before} malformed item(s); not reconciling it")
        return out

    def _positions(self, wallet: str) -> list[Position]:
        out: list[Position] = []
        if self.version == "v2":
            params = {"user": wallet, "limit": V2_LIMIT_MAX}
            for rows in self._v2_pages("/v2/positions", params, "positions"):
                out.extend(self._parse_rows(rows, parse_position, "positions", wallet))
            return [p for p in out if p.wallet == wallet]
        offset = 0
        while True:
            if offset > V1_POSITIONS_OFFSET_MAX:
                raise ApiError("incomplete", f"wallet {wallet}: more positions than /positions can list")
            body = _v1_list(self.get_json(
                self.api.data_api_url, "/positions",
                {"user": wallet, "sizeThreshold": 0, "limit": V1_POSITIONS_LIMIT_MAX, "offset": offset}, "positions",
            ))
            out.extend(self._parse_rows(body, parse_position, "positions", wallet))
            if len(body) < V1_POSITIONS_LIMIT_MAX:
                return [p for p in out if p.wallet == wallet]
            offset += V1_POSITIONS_LIMIT_MAX

    def closing_activity_since(self, wallet: str, since: int) -> list[Activity]:
        """REDEEM and MERGE activity of the wallet at or after ``since`` (what ends a position
        without a SELL trade)."""
        out: list[Activity] = []
        if self.version == "v2":
            params = {"user": wallet, "type": "REDEEM,MERGE", "start": max(1, since),
                      "limit": V2_LIMIT_MAX}
            for rows in self._v2_pages("/v2/activity", params, "activity"):
                out.extend(self._parse_rows(rows, parse_activity, "activity", wallet))
        else:
            offset = 0
            while offset <= V1_ACTIVITY_OFFSET_MAX:
                body = _v1_list(self.get_json(
                    self.api.data_api_url, "/activity",
                    {"user": wallet, "type": "REDEEM,MERGE", "start": max(1, since), "limit": V1_ACTIVITY_LIMIT_MAX,
                     "offset": offset}, "activity",
                ))
                out.extend(self._parse_rows(body, parse_activity, "activity", wallet))
                if len(body) < V1_ACTIVITY_LIMIT_MAX:
                    break
                offset += V1_ACTIVITY_LIMIT_MAX
        return [a for a in out if a.type in ("REDEEM", "MERGE") and a.wallet == wallet]

    def closed_markets(self, condition_ids: list[str]) -> dict[str, Market]:
        """Gamma state of the markets among ``condition_ids`` that have closed or resolved.

        Asks with ``closed=true``: without it gamma behaves as ``closed=false`` and hides resolved
        markets. A market missing from the answer is open."""
        out: dict[str, Market] = {}
        ids = sorted(set(condition_ids))
        for i in range(0, len(ids), GAMMA_IDS_PER_REQUEST):
            chunk = ids[i:i + GAMMA_IDS_PER_REQUEST]
            params: list[tuple[str, Any]] = [("condition_ids", c) for c in chunk]
            params += [("closed", "true"), ("limit", len(chunk))]
            body = _v1_list(self.get_json(self.api.gamma_api_url, "/markets", params, "markets"))
            for market in self._parse_rows(body, parse_market, "markets", "-"):
                if market.condition_id in chunk and market.is_closed:
                    out[market.condition_id] = market
        return out


def _age(resp: requests.Response) -> float | None:
    raw = resp.headers.get("Age")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _describe_params(params: dict[str, Any] | list[tuple[str, Any]]) -> str:
    items = params.items() if isinstance(params, dict) else params
    return "?" + "&".join(f"{k}={v}" for k, v in items)


def _v1_list(body: Any) -> list[Any]:
    """v1 and gamma answer bare JSON arrays."""
    if not isinstance(body, list):
        raise ApiError("malformed", f"expected a JSON array, got {type(body).__name__}")
    return body
