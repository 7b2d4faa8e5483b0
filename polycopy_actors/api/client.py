"""HTTP client of Polymarket's data API (v1 or v2) and gamma API.

One instance per WalletPoller, used only from that poller's thread (it owns a
``requests.Session``). Every HTTP request first asks the tier's rate limiter (``acquire``); a 429
tells it to slow the whole tier (``on_rate_limited``). The tiers never see which data-API version
is in use: both produce the same records (:mod:`polycopy_actors.api.models`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

import requests

from polycopy_actors import __version__
from polycopy_actors.api.models import (
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
from polycopy_actors.config import ApiSettings
from polycopy_actors.observe import metrics

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
#: Gamma answers at most about 24 rows whatever ``limit`` (default 20): ask for this many ids at once.
GAMMA_IDS_PER_REQUEST = 20
#: v2 user routes: ``end`` lies this far ahead (plus a random part), so every walk has its own URL.
CACHE_BUST_AHEAD_SECONDS = 86_400
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


class StaleAnswer(Exception):
    """A cache in front of the API answered (its ``Age`` is over ``api.max_answer_age_seconds``)."""

    def __init__(self, path: str, age: float) -> None:
        super().__init__(f"GET {path}: served from a cache (Age {age:.0f} s)")
        self.age = age


@dataclass(frozen=True)
class Rejected:
    """An item the API served that could not be parsed (kept in ``rejected_items``)."""

    route: str
    wallet: str
    key: str
    raw: str
    reason: str


@dataclass
class Read(Generic[T]):
    """What one read returned: the parsed items and the items it had to skip."""

    items: list[T] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


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
        # Ask caches in front of the API for a fresh answer (a CDN may ignore it: every v2 walk also has
        # a URL of its own, and every answer's Age is checked).
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
            age = _age(resp)
            if age is not None and age > self.api.max_answer_age_seconds:
                metrics.API_STALE.labels(endpoint).inc()
                log.warning("GET %s was served from a cache (Age %.0f s): not used, reading again through "
                            "another URL", path, age)
                raise StaleAnswer(path, age)
            try:
                return resp.json(parse_float=Decimal)
            except ValueError:
                last = ApiError("malformed", f"GET {path}: body is not JSON ({resp.text[:60]!r})", status)
                self._sleep(self._backoff(attempt))
                continue
        assert last is not None
        raise last

    # --- parsing helpers ---------------------------------------------------------------------------

    def _parse_rows(self, rows: Any, parser: Callable[[Any], T], endpoint: str, wallet: str,
                    out: Read[T]) -> None:
        """Parse row by row into ``out``: a malformed item is skipped, counted, logged and kept."""
        if rows is None:
            return
        if not isinstance(rows, list):
            raise ApiError("malformed", f"{endpoint}: expected a list of items, got {type(rows).__name__}")
        for item in rows:
            try:
                out.items.append(parser(item))
            except MalformedItem as exc:
                metrics.API_ITEMS_MALFORMED.labels(endpoint, exc.field[:40]).inc()
                log.warning("skipped a malformed %s item of wallet %s: field %s: %s",
                            endpoint, wallet, exc.field, exc.reason)
                raw = json.dumps(item, default=str, sort_keys=True)[:10_000]
                key = hashlib.sha256(raw.encode()).hexdigest()[:32]
                out.rejected.append(Rejected(endpoint, wallet, key, raw, f"{exc.field}: {exc.reason}"[:500]))

    def _bust(self) -> int:
        """``end`` of a v2 user walk: far enough ahead to filter nothing, different for every walk (a CDN
        caches answers by exact URL: 300 s on /v2/trades)."""
        return int(time.time()) + CACHE_BUST_AHEAD_SECONDS + self._rng.randrange(1_000_000)

    def _v2_walk(self, path: str, params: dict[str, Any], endpoint: str, parser: Callable[[Any], T],
                 wallet: str) -> Read[T]:
        """Walk a v2 keyset feed to its end: follow ``next_cursor`` re-sending the same filters. A page a
        cache answered restarts the whole walk through a new URL (changing a filter mid-walk re-anchors
        it), at most ``api.max_retries`` times."""
        for attempt in range(self.api.max_retries + 1):
            base = dict(params)
            if "user" in base:
                base["end"] = self._bust()
            out: Read[T] = Read()
            try:
                for rows in self._v2_pages(path, base, endpoint):
                    self._parse_rows(rows, parser, endpoint, wallet, out)
            except StaleAnswer as exc:
                if attempt == self.api.max_retries:
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

    def _get_fresh(self, base: str, path: str, params: dict[str, Any] | list[tuple[str, Any]],
                   endpoint: str) -> Any:
        """One GET whose answer no cache served (routes without a cache-busting parameter: v1, gamma,
        ``/v2/status``): a cached answer is read again, at most ``api.max_retries`` times."""
        for attempt in range(self.api.max_retries + 1):
            try:
                return self.get_json(base, path, params, endpoint)
            except StaleAnswer as exc:
                if attempt == self.api.max_retries:
                    raise ApiError("stale", f"{exc}; still cached after {attempt + 1} reads") from None
        raise AssertionError("unreachable")

    # --- trades --------------------------------------------------------------------------------------

    def _start(self, since: int | None) -> int:
        if since is not None:
            return max(1, since)
        if self.api.initial_backfill_seconds == 0:
            return 1
        return max(1, int(time.time()) - self.api.initial_backfill_seconds)

    def trades_since(self, wallet: str, since: int | None) -> Read[Trade]:
        """Every fill of ``wallet`` with timestamp >= ``since`` (whole seconds: boundary re-read),
        maker and taker; oldest first. ``since=None``: the initial backfill."""
        start = self._start(since)
        fills = self._trades_v2(wallet, start) if self.version == "v2" else self._trades_v1(wallet, start)
        mine = sorted((f for f in fills.items if f.wallet == wallet), key=lambda f: f.timestamp)
        return Read(assign_trade_ids(mine), fills.rejected)

    def _trades_v2(self, wallet: str, start: int) -> Read[RawFill]:
        params = {"user": wallet, "limit": min(self.api.page_size, V2_LIMIT_MAX), "taker_only": "false",
                  "start": start}
        return self._v2_walk("/v2/trades", params, "trades", parse_fill, wallet)

    def _trades_v1(self, wallet: str, start: int) -> Read[RawFill]:
        """v1 is a fallback: one ``/trades`` page of its maximum size, newest first (offset paging while
        fills arrive shifts rows across page boundaries and would give one fill two ids); a wallet with
        more fills since ``start`` continues through ``/activity`` windows, whose fixed ``end`` lies in the
        past, so new fills never shift them."""
        out: Read[RawFill] = Read()
        body = _v1_list(self._get_fresh(self.api.data_api_url, "/trades",
                                        {"user": wallet, "limit": V1_TRADES_LIMIT_MAX, "offset": 0,
                                         "takerOnly": "false"}, "trades"))
        self._parse_rows(body, parse_fill, "trades", wallet, out)
        if len(body) < V1_TRADES_LIMIT_MAX or not out.items or min(f.timestamp for f in out.items) < start:
            out.items = [f for f in out.items if f.timestamp >= start]
            return out
        # Deeper than one page: the oldest second of the page is read again, whole, by the windows.
        oldest = min(f.timestamp for f in out.items)
        out.items = [f for f in out.items if f.timestamp != oldest]
        deeper = self._activity_fill_windows(wallet, start, oldest)
        out.items += deeper.items
        out.rejected += deeper.rejected
        return out

    def _activity_fill_windows(self, wallet: str, start: int, end: int) -> Read[RawFill]:
        """Fills with start <= ts <= end through v1 /activity, window by window (offset cap 5,000)."""
        limit = min(self.api.page_size, V1_ACTIVITY_LIMIT_MAX)
        out: Read[RawFill] = Read()
        while True:
            window: Read[RawFill] = Read()
            offset = 0
            exhausted = False
            while offset <= V1_ACTIVITY_OFFSET_MAX:
                body = _v1_list(self._get_fresh(
                    self.api.data_api_url, "/activity",
                    {"user": wallet, "type": "TRADE", "start": start, "end": end, "limit": limit, "offset": offset},
                    "activity",
                ))
                self._parse_rows(body, parse_fill, "activity", wallet, window)
                if len(body) < limit:
                    exhausted = True
                    break
                offset += limit
            out.rejected += window.rejected
            if exhausted:
                out.items += window.items
                return out
            oldest = min(f.timestamp for f in window.items)
            if oldest == end:
                raise ApiError("incomplete", f"wallet {wallet}: more than {V1_ACTIVITY_OFFSET_MAX} fills in one second")
            out.items += [f for f in window.items if f.timestamp != oldest]
            end = oldest  # the next window re-reads that whole second

    def api_lag(self) -> float:
        """The API's own serving lag in seconds (``/v2/status``, "Get data freshness")."""
        body = self._get_fresh(self.api.data_api_url, "/v2/status", {}, "status")
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
        out: Read[ClosedPosition] = Read()
        if self.version == "v2":
            body = self._get_fresh(self.api.data_api_url, "/v2/positions",
                                   {"user": wallet, "status": "CLOSED", "limit": limit, "end": self._bust()},
                                   "positions")
            rows = body.get("data") if isinstance(body, dict) else None
        else:
            rows = _v1_list(self._get_fresh(self.api.data_api_url, "/closed-positions",
                                            {"user": wallet, "limit": min(limit, 50)}, "closed_positions"))
        self._parse_rows(rows, parse_closed_position, "closed_positions", wallet, out)
        return [p for p in out.items if p.wallet == wallet]

    def market_traders(self, condition_ids: list[str], max_rows: int = 1000) -> set[str]:
        """Wallets in the latest fills of these markets (one page per 20 markets): trader discovery."""
        seen: Read[RawFill] = Read()
        for i in range(0, len(condition_ids), 20):
            chunk = ",".join(condition_ids[i:i + 20])
            if self.version == "v2":
                # No user, so no ``end``: a limit a few rows short gives the read a URL of its own.
                limit = max(1, min(max_rows, V2_LIMIT_MAX) - self._rng.randrange(9))
                body = self._get_fresh(self.api.data_api_url, "/v2/trades",
                                       {"condition": chunk, "limit": limit, "taker_only": "false"}, "trades")
                if not isinstance(body, dict):
                    raise ApiError("malformed", "GET /v2/trades: expected a {data, pagination} envelope")
                rows = body.get("data") or []
            else:
                rows = _v1_list(self._get_fresh(self.api.data_api_url, "/trades",
                                                {"market": chunk, "limit": min(max_rows, V1_TRADES_LIMIT_MAX),
                                                 "takerOnly": "false"}, "trades"))
            self._parse_rows(rows, parse_fill, "trades", "-", seen)
        return {f.wallet for f in seen.items}

    # --- positions, activity, markets -----------------------------------------------------------------

    def positions(self, wallet: str) -> Read[Position]:
        """The wallet's current positions, every page. The snapshot is complete only when
        ``rejected`` is empty: a snapshot that skipped a row must never close a position.

        v2: ``filter_amount=0`` (the default hides positions under 0.1 share: a position sold down to
        0.05 would look closed), ``include_archived`` (archived markets' positions are still held),
        sorted by ``TIMESTAMP`` ascending: the default sort (current value) moves during a long walk."""
        if self.version == "v2":
            params = {"user": wallet, "limit": V2_LIMIT_MAX, "filter_type": "TOKENS", "filter_amount": 0,
                      "include_archived": "true", "sort_by": "TIMESTAMP", "sort_direction": "ASC"}
            out = self._v2_walk("/v2/positions", params, "positions", parse_position, wallet)
        else:
            out = Read()
            offset = 0
            while True:
                if offset > V1_POSITIONS_OFFSET_MAX:
                    raise ApiError("incomplete", f"wallet {wallet}: more positions than /positions can list")
                body = _v1_list(self._get_fresh(
                    self.api.data_api_url, "/positions",
                    {"user": wallet, "sizeThreshold": 0, "limit": V1_POSITIONS_LIMIT_MAX, "offset": offset},
                    "positions",
                ))
                self._parse_rows(body, parse_position, "positions", wallet, out)
                if len(body) < V1_POSITIONS_LIMIT_MAX:
                    break
                offset += V1_POSITIONS_LIMIT_MAX
        out.items = [p for p in out.items if p.wallet == wallet]
        return out

    def closing_activity_since(self, wallet: str, since: int) -> Read[Activity]:
        """REDEEM and MERGE activity of the wallet at or after ``since`` (what ends a position
        without a SELL trade; automatic redemptions are REDEEM rows too)."""
        if self.version == "v2":
            params = {"user": wallet, "type": "REDEEM,MERGE", "start": max(1, since), "limit": V2_LIMIT_MAX}
            out = self._v2_walk("/v2/activity", params, "activity", parse_activity, wallet)
        else:
            out = Read()
            offset = 0
            while offset <= V1_ACTIVITY_OFFSET_MAX:
                body = _v1_list(self._get_fresh(
                    self.api.data_api_url, "/activity",
                    {"user": wallet, "type": "REDEEM,MERGE", "start": max(1, since), "limit": V1_ACTIVITY_LIMIT_MAX,
                     "offset": offset}, "activity",
                ))
                self._parse_rows(body, parse_activity, "activity", wallet, out)
                if len(body) < V1_ACTIVITY_LIMIT_MAX:
                    break
                offset += V1_ACTIVITY_LIMIT_MAX
        out.items = [a for a in out.items if a.type in ("REDEEM", "MERGE") and a.wallet == wallet]
        return out

    def market_states(self, condition_ids: list[str]) -> dict[str, bool]:
        """Gamma's view of each market: True = closed or resolved, False = open; a market gamma did not
        list is left out (unknown: a close waiting on it is not classified yet).

        In batches of :data:`GAMMA_IDS_PER_REQUEST` with an explicit ``limit`` (answers are cut short
        at about 24 rows), first with ``closed=true`` (without it gamma hides resolved markets), then
        ``closed=false`` for the ids the first answer did not list."""
        out: dict[str, bool] = {}
        ids = sorted(set(condition_ids))
        for i in range(0, len(ids), GAMMA_IDS_PER_REQUEST):
            chunk = ids[i:i + GAMMA_IDS_PER_REQUEST]
            for closed in (True, False):
                ask = [c for c in chunk if c not in out]
                if not ask:
                    break
                params: list[tuple[str, Any]] = [("condition_ids", c) for c in ask]
                params += [("closed", "true" if closed else "false"), ("limit", len(ask))]
                got: Read[Market] = Read()
                self._parse_rows(_v1_list(self._get_fresh(self.api.gamma_api_url, "/markets", params, "markets")),
                                 parse_market, "markets", "-", got)
                for market in got.items:
                    if market.condition_id in ask:
                        out[market.condition_id] = market.is_closed
        missing = len(ids) - len(out)
        if missing:
            log.warning("gamma did not list %d of %d markets asked about; their closes wait", missing, len(ids))
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
