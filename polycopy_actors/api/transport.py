"""The HTTP transport of every Polymarket read: one ``requests.Session``, the tier's rate limiter
before every request, bounded retries with backoff, typed errors, and answers a cache served
(``Age`` over ``api.max_answer_age_seconds``) refused.

One :class:`Transport` per WalletPoller (inside its :class:`~polycopy_actors.api.client.PolymarketClient`),
used only from that poller's thread. A 429 tells the rate limiter to slow the whole tier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

import requests

from polycopy_actors import __version__
from polycopy_actors.api.models import MalformedItem
from polycopy_actors.config import ApiSettings
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A v1 route answering these may be retired: the error says so.
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


def no_acquire(endpoint: str) -> None:
    return None


def no_throttle(seconds: float) -> None:
    return None


class Transport:
    """See the module docstring. Not thread-safe: one per poller."""

    def __init__(
        self,
        api: ApiSettings,
        acquire: Callable[[str], None] = no_acquire,
        on_rate_limited: Callable[[float], None] = no_throttle,
        stop_event: threading.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self._acquire = acquire
        self._on_rate_limited = on_rate_limited
        self._stop = stop_event or threading.Event()
        self.rng = rng or random.Random()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"polycopy_actors/{__version__} (+copy-trading data pipeline)"
        self.session.headers["Accept"] = "application/json"
        # Ask caches in front of the API for a fresh answer (a CDN may ignore it: every v2 walk also has
        # a URL of its own, and every answer's Age is checked).
        self.session.headers["Cache-Control"] = "no-cache"

    def close(self) -> None:
        self.session.close()

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stop.wait(seconds):
            raise Stopped()

    def _backoff(self, attempt: int) -> float:
        base = min(self.api.backoff_max_seconds, self.api.backoff_base_seconds * (2 ** attempt))
        return base * (0.5 + self.rng.random() / 2)  # "equal jitter"

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
                if not path.startswith("/v2") and status in V1_RETIRED_STATUSES and base == self.api.data_api_url:
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

    def get_fresh(self, base: str, path: str, params: dict[str, Any] | list[tuple[str, Any]],
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

    def parse_rows(self, rows: Any, parser: Callable[[Any], T], endpoint: str, wallet: str,
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


def _age(resp: requests.Response) -> float | None:
    raw = resp.headers.get("Age")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _describe_params(params: dict[str, Any] | list[tuple[str, Any]]) -> str:
    items = params.items() if isinstance(params, dict) else params
    return "?" + "&".join(f"{k}={v}" for k, v in items)


def json_list(body: Any) -> list[Any]:
    """v1 and gamma answer bare JSON arrays."""
    if not isinstance(body, list):
        raise ApiError("malformed", f"expected a JSON array, got {type(body).__name__}")
    return body
