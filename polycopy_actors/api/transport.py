"""The HTTP transport of every Polymarket read: one ``requests.Session``, the tier's rate limiter
before every request, bounded retries with backoff, typed errors, and answers a cache served
(``Age`` over ``api.max_answer_age_seconds``) refused.

Hostile answers never stop the pipeline (every bound below is a setting of ``api``):

- one attempt (connect, TLS handshake, status line, headers and body together) lasts at most
  ``request_deadline_seconds``, however slowly the server trickles its bytes; the owner's stop event
  interrupts it within :data:`SLICE_SECONDS` (see :class:`_BoundedAdapter`);
- a body longer than ``max_body_bytes`` is refused while it is read (never held beyond the cap);
- a body that does not decode (not JSON, not UTF, nested too deeply) is a ``malformed`` answer;
- a ``Retry-After`` is honoured up to ``retry_after_max_seconds`` and ignored when it is not a finite
  number of seconds or an HTTP date;
- redirects are never followed: a 3xx is a ``client`` error naming where it pointed.

One :class:`Transport` per WalletPoller (inside its :class:`~polycopy_actors.api.client.PolymarketClient`)
or per actor that reads the API, used only from that owner's thread (one thread at a time: the
per-request bounds live in a thread-local). A 429 tells the rate limiter to slow the whole tier.
"""

from __future__ import annotations

import functools
import hashlib
import http.cookiejar
import json
import logging
import math
import random
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager
from urllib3.util.ssl_ import create_urllib3_context, resolve_cert_reqs, resolve_ssl_version

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

    ``kind``: ``network`` (timeouts, connection errors, an attempt over ``api.request_deadline_seconds``),
    ``server`` (5xx), ``rate_limited`` (429), ``client`` (other 4xx, and a 3xx: redirects are never
    followed; not retried), ``malformed`` (a body that is not the documented shape, does not decode or
    is over ``api.max_body_bytes``; a cursor that repeats), ``incomplete`` (a listing deeper than the API
    lets us read, or than ``api.max_walk_pages``/``api.max_walk_rows`` allow).
    """

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class Stopped(Exception):
    """The owner is stopping: waits are cut short, and so is a request that is connecting or reading."""


class StaleAnswer(Exception):
    """A cache in front of the API answered (its ``Age`` is over ``api.max_answer_age_seconds``)."""

    def __init__(self, path: str, age: float) -> None:
        super().__init__(f"GET {path}: served from a cache (Age {age:.0f} s)")
        self.age = age


# --- the bounds of one request, enforced in the socket -------------------------------------------------
#
# ``requests`` (urllib3, http.client) applies its read timeout to each socket read, so a server sending
# one byte a second never times out, and nothing there looks at our stop event. The sockets of this
# transport's connections therefore wait in short slices: before each slice they check the deadline of
# the request being made and the stop event, both in a thread-local set by :meth:`Transport.get_json`
# (a Transport is used by one thread at a time). The exceptions they raise (:class:`Stopped`,
# :class:`_DeadlineExceeded`) are not ``OSError``s: urllib3 and requests let them through unchanged,
# closing the connection on the way (checked against urllib3 2.x ``connectionpool.urlopen`` and
# ``response._error_catcher``, and requests ``adapters.send``).

#: Longest single wait of a socket: how quickly a stop or the deadline is noticed.
SLICE_SECONDS = 0.2
_CHUNK_BYTES = 64 * 1024
#: Bytes of a 4xx body kept for the error message.
_DETAIL_BYTES = 1024


class _DeadlineExceeded(Exception):
    """The request's ``api.request_deadline_seconds`` ran out (raised by a socket wait)."""


class _TooLarge(Exception):
    """The body is over ``api.max_body_bytes``."""


class _RequestBounds(threading.local):
    """The deadline (``time.monotonic()``) and stop event of the request this thread is making."""

    deadline: float | None = None
    stop: threading.Event | None = None


_BOUNDS = _RequestBounds()


@contextmanager
def _bounded(deadline: float, stop: threading.Event) -> Iterator[None]:
    """Every socket wait of this thread's requests inside the block obeys ``deadline`` and ``stop``."""
    _BOUNDS.deadline, _BOUNDS.stop = deadline, stop
    try:
        yield
    finally:
        _BOUNDS.deadline = _BOUNDS.stop = None


def _check_bounds() -> float | None:
    """Seconds left before the deadline (None outside a bounded request); raises :class:`Stopped` or
    :class:`_DeadlineExceeded` when one of them is reached."""
    deadline = _BOUNDS.deadline
    if deadline is None:
        return None
    stop = _BOUNDS.stop
    if stop is not None and stop.is_set():
        raise Stopped()
    left = deadline - time.monotonic()
    if left <= 0:
        raise _DeadlineExceeded()
    return left


def _in_slices(sock: socket.socket, call: Callable[[], T]) -> T:
    """``call`` (one blocking socket operation) waiting in slices of at most :data:`SLICE_SECONDS`: the
    socket's own timeout still bounds the whole operation (urllib3's per-read timeout), and between
    slices the request's deadline and stop event are checked. A timed-out wait is simply repeated: for
    plain sockets nothing was consumed, and an SSL read or handshake that timed out resumes where it
    stood (OpenSSL's non-blocking contract, which CPython's ``_ssl`` follows with a timeout set)."""
    if _BOUNDS.deadline is None:
        return call()
    limit = sock.gettimeout()
    if limit == 0:  # a non-blocking socket never waits
        return call()
    until = None if limit is None else time.monotonic() + limit
    try:
        while True:
            left = _check_bounds()
            assert left is not None
            wait = min(SLICE_SECONDS, left)
            if until is not None:
                own = until - time.monotonic()
                if own <= 0:
                    raise TimeoutError("timed out")  # the socket's own timeout, as the plain socket says it
                wait = min(wait, own)
            sock.settimeout(wait)
            try:
                return call()
            except TimeoutError:
                continue
    finally:
        sock.settimeout(limit)


class _BoundedSocket(socket.socket):
    """A plain socket whose reads wait in slices (see :func:`_in_slices`). Never constructed: a socket
    urllib3 made gets this class (``__slots__ = ()`` keeps the layout, so the switch is allowed)."""

    __slots__ = ()

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        return _in_slices(self, functools.partial(super().recv_into, *args, **kwargs))


class _BoundedSSLSocket(ssl.SSLSocket):
    """An SSL socket whose handshake and reads wait in slices (see :func:`_in_slices`): the
    ``sslsocket_class`` of the contexts :class:`_BoundedHTTPSConnection` makes."""

    __slots__ = ()

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        return _in_slices(self, functools.partial(super().recv_into, *args, **kwargs))

    def do_handshake(self, block: bool = False) -> None:
        try:
            _in_slices(self, functools.partial(super().do_handshake, block))
        except (Stopped, _DeadlineExceeded):
            # ``SSLSocket._create`` closes a socket whose handshake failed only on OSError/ValueError:
            # ours would leak (its raw socket is already detached).
            self.close()
            raise


class _BoundedConnectMixin:
    """Connects within what is left of the request's deadline, then bounds the socket's reads."""

    timeout: Any

    def _new_conn(self) -> socket.socket:
        left = _check_bounds()
        if left is not None and (not isinstance(self.timeout, (int, float)) or self.timeout > left):
            # The TCP connect (and the DNS look-up before it) cannot be cut in slices here: it gets no
            # more than the time left.
            self.timeout = left
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        if type(sock) is socket.socket:
            sock.__class__ = _BoundedSocket
        return sock


class _BoundedHTTPConnection(_BoundedConnectMixin, HTTPConnection):
    pass


class _BoundedHTTPSConnection(_BoundedConnectMixin, HTTPSConnection):
    def connect(self) -> None:
        """As urllib3's, with a context of urllib3's own making whose SSL sockets wait in slices (the
        handshake included). The context is the one urllib3 would make for these settings (same
        ``create_urllib3_context`` arguments, default CAs when none is given), made per connection."""
        if self.ssl_context is not None:
            super().connect()
            if type(self.sock) is ssl.SSLSocket:  # a caller's context: at least its reads are bounded
                self.sock.__class__ = _BoundedSSLSocket
            return
        context = create_urllib3_context(
            ssl_version=resolve_ssl_version(self.ssl_version),
            ssl_minimum_version=self.ssl_minimum_version,
            ssl_maximum_version=self.ssl_maximum_version,
            cert_reqs=resolve_cert_reqs(self.cert_reqs),
        )
        if not (self.ca_certs or self.ca_cert_dir or self.ca_cert_data):
            context.load_default_certs()
        context.sslsocket_class = _BoundedSSLSocket
        self.ssl_context = context
        try:
            super().connect()
        finally:
            self.ssl_context = None


class _BoundedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _BoundedHTTPConnection


class _BoundedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _BoundedHTTPSConnection


_BOUNDED_POOLS: dict[str, type[HTTPConnectionPool]] = {"http": _BoundedHTTPPool, "https": _BoundedHTTPSPool}


class _BoundedAdapter(HTTPAdapter):
    """``requests``' adapter over connections whose sockets obey the request's deadline and stop event
    (http and https; through an http(s) proxy too, not through a SOCKS one)."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _BOUNDED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _BOUNDED_POOLS
        return manager


class _Session(requests.Session):
    """A session that never follows a redirect: even with ``allow_redirects=False``, ``requests`` reads
    a redirect's whole body (unbounded) to prepare ``Response.next``; with no redirect target it does
    not. The transport reports a 3xx itself."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def _shown(text: str, limit: int) -> str:
    """``text`` safe for a log line: escaped (``ascii``) and cut to ``limit`` characters."""
    return ascii(text[: limit * 2])[:limit]


def parse_retry_after(raw: str) -> float | None:
    """Seconds a ``Retry-After`` asks for (a delay or an HTTP date, a past date giving 0); None when it
    is neither a finite non-negative number nor a valid date (``inf``, ``nan``, ``-5``, ``1e400``...)."""
    text = raw.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000": HTTP dates are GMT
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


def _body(resp: requests.Response, cap: int, truncate: bool = False) -> bytes:
    """The (decoded) body, read in chunks and never held beyond ``cap`` bytes: over it, raises
    :class:`_TooLarge`, or returns the first ``cap`` bytes when ``truncate``."""
    if not truncate:
        declared = resp.headers.get("Content-Length")
        try:
            if declared is not None and int(declared) > cap:
                raise _TooLarge()
        except ValueError:
            pass  # urllib3 checks the length it reads against it
    buf = bytearray()
    for chunk in resp.iter_content(chunk_size=_CHUNK_BYTES):
        buf += chunk
        if len(buf) > cap:
            if truncate:
                return bytes(buf[:cap])
            raise _TooLarge()
    return bytes(buf)


def _redirect_target(url: str, location: str | None) -> str:
    """Where a redirect pointed, as ``host:port`` (shown safely, cut short)."""
    if not location:
        return "nowhere (no Location)"
    try:
        parts = urlsplit(urljoin(url, location))
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        where = f"{parts.hostname}:{port}" if parts.hostname else location
    except ValueError:
        where = location
    return _shown(where, 80)


class _Retry(Exception):
    """One attempt failed in a way worth another try: ``error`` if none is left; wait ``wait`` seconds
    before it (None: the normal back-off)."""

    def __init__(self, error: ApiError, wait: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait = wait


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
    #: False when the read stopped at its budget before reaching what it was asked for (the global feed
    #: read down to ``api.max_walk_pages`` pages, not to ``stop_ts``): what lies beyond is a gap.
    complete: bool = True


def no_acquire(endpoint: str) -> None:
    return None


def no_throttle(seconds: float) -> None:
    return None


class Transport:
    """See the module docstring. Not thread-safe: one per owner, used from one thread at a time (the
    socket bounds of a request live in a thread-local)."""

    def __init__(
        self,
        api: ApiSettings,
        acquire: Callable[[str], None] = no_acquire,
        on_rate_limited: Callable[[float], None] = no_throttle,
        stop_event: threading.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``acquire(endpoint)``: before every request (the tier's rate limiter); ``on_rate_limited(s)``:
        after a 429, with the wait it asked for (capped at ``api.retry_after_max_seconds``);
        ``stop_event``: the owner's, which cuts waits and requests short (raising :class:`Stopped`)."""
        self.api = api
        self._acquire = acquire
        self._on_rate_limited = on_rate_limited
        self._stop = stop_event or threading.Event()
        self.rng = rng or random.Random()
        self.session: requests.Session = _Session()
        adapter = _BoundedAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"polycopy_actors/{__version__} (+copy-trading data pipeline)"
        self.session.headers["Accept"] = "application/json"
        # Ask caches in front of the API for a fresh answer (a CDN may ignore it: every v2 walk also has
        # a URL of its own, and every answer's Age is checked).
        self.session.headers["Cache-Control"] = "no-cache"
        # The API needs no cookie; a hostile answer must not grow the jar and every later request's headers.
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        #: Malformed items already logged at WARNING (their keys, the most recent last).
        self._logged: OrderedDict[str, None] = OrderedDict()

    def close(self) -> None:
        self.session.close()

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stop.wait(seconds):
            raise Stopped()

    def _backoff(self, attempt: int) -> float:
        base = min(self.api.backoff_max_seconds, self.api.backoff_base_seconds * (2 ** attempt))
        return base * (0.5 + self.rng.random() / 2)  # "equal jitter"

    def _retry_after(self, resp: requests.Response, path: str) -> float | None:
        """The answer's ``Retry-After`` in seconds, capped at ``api.retry_after_max_seconds`` (one answer
        must not freeze a tier for days); None when absent or unusable (logged: the back-off applies)."""
        raw = resp.headers.get("Retry-After")
        if raw is None or not raw.strip():
            return None
        seconds = parse_retry_after(raw)
        if seconds is None:
            log.warning("GET %s: HTTP %d with an unusable Retry-After %s: ignored, backing off as usual",
                        path, resp.status_code, _shown(raw, 40))
            return None
        return min(seconds, self.api.retry_after_max_seconds)

    def get_json(self, base: str, path: str, params: dict[str, Any] | list[tuple[str, Any]],
                 endpoint: str) -> Any:
        """GET with rate limiting, bounded retries and typed errors; returns the decoded body (JSON, floats
        as :class:`~decimal.Decimal`).

        Each attempt lasts at most ``api.request_deadline_seconds`` (connect, headers and body
        together) and reads at most ``api.max_body_bytes``; the stop event ends it within about
        :data:`SLICE_SECONDS` (:class:`Stopped`). Retried (up to ``api.max_retries`` times): network
        errors and the deadline, 5xx, 429, bodies that are not usable JSON or are too large. Not retried:
        other 4xx and every 3xx (redirects are never followed), :class:`StaleAnswer`."""
        url = base.rstrip("/") + path
        last: ApiError | None = None
        for attempt in range(self.api.max_retries + 1):
            if self._stop.is_set():
                raise Stopped()
            self._acquire(endpoint)
            started = time.monotonic()
            deadline = started + self.api.request_deadline_seconds
            try:
                with _bounded(deadline, self._stop):
                    return self._attempt(url, base, path, params, endpoint, attempt, deadline)
            except _Retry as exc:
                retry = exc
            finally:
                metrics.API_DURATION.labels(endpoint).observe(time.monotonic() - started)
            last = retry.error
            self._sleep(self._backoff(attempt) if retry.wait is None else retry.wait)
        assert last is not None
        raise last

    def _attempt(self, url: str, base: str, path: str, params: dict[str, Any] | list[tuple[str, Any]],
                 endpoint: str, attempt: int, deadline: float) -> Any:
        """One request and its body, inside the socket bounds; raises :class:`_Retry` for a failure
        worth another attempt."""
        try:
            resp = self.session.get(
                url, params=params, timeout=(self.api.connect_timeout_seconds, self.api.timeout_seconds),
                stream=True, allow_redirects=False,
            )
        except (_DeadlineExceeded, requests.RequestException) as exc:
            metrics.API_REQUESTS.labels(endpoint, "timeout" if _timed_out(exc, deadline) else "error").inc()
            raise _Retry(self._network_error(path, exc, deadline)) from None
        with resp:  # closed however we leave: an unread body is never put back into the pool
            status = resp.status_code
            metrics.API_REQUESTS.labels(endpoint, str(status)).inc()
            if 300 <= status < 400:
                where = _redirect_target(resp.url or url, resp.headers.get("Location"))
                raise ApiError("client", f"GET {path}: HTTP {status} redirect to {where} not followed", status)
            if status == 429:
                wait = self._retry_after(resp, path)
                wait = self._backoff(attempt) if wait is None else wait
                log.warning("GET %s: 429 rate limited, slowing the tier for %.1f s", path, wait)
                self._on_rate_limited(wait)
                raise _Retry(ApiError("rate_limited", f"GET {path}: 429 Too Many Requests", 429), wait)
            if status >= 500:
                # A 503's Retry-After is honoured within the normal back-off's longest delay as well.
                wait = self._retry_after(resp, path) if status == 503 else None
                raise _Retry(ApiError("server", f"GET {path}: HTTP {status}", status),
                             None if wait is None else min(wait, self.api.backoff_max_seconds))
            if status >= 400:
                try:
                    raw = _body(resp, _DETAIL_BYTES, truncate=True)
                except (_DeadlineExceeded, requests.RequestException):
                    raw = b""
                detail = "".join(c if c.isprintable() else " " for c in raw.decode("utf-8", "replace")[:200])
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
                body = _body(resp, self.api.max_body_bytes)
            except _TooLarge:
                raise _Retry(ApiError("malformed", f"GET {path}: answer larger than {self.api.max_body_bytes} "
                                      "bytes (api.max_body_bytes)", status)) from None
            except (_DeadlineExceeded, requests.RequestException) as exc:
                raise _Retry(self._network_error(path, exc, deadline)) from None
        try:
            # Bytes we read ourselves (never ``resp.text``: no charset guessing over a whole body).
            return json.loads(body, parse_float=Decimal)
        except (ValueError, RecursionError) as exc:
            # ValueError: not JSON, not UTF-8/16/32, an integer too long; RecursionError: nested too deeply
            # (it is no ValueError, and would otherwise crash the owner again and again).
            reason = "nested too deeply" if isinstance(exc, RecursionError) else type(exc).__name__
            raise _Retry(ApiError("malformed", f"GET {path}: body is not JSON ({reason}: {body[:60]!r})",
                                  status)) from None

    def _network_error(self, path: str, exc: BaseException, deadline: float) -> ApiError:
        if isinstance(exc, _DeadlineExceeded) or time.monotonic() >= deadline:
            limit = self.api.request_deadline_seconds
            return ApiError("network", f"GET {path}: no whole answer within the {limit:g} s deadline "
                                       "(api.request_deadline_seconds)")
        if isinstance(exc, requests.Timeout):
            return ApiError("network", f"GET {path}: timed out")
        return ApiError("network", f"GET {path}: {type(exc).__name__}")

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
        """Parse row by row into ``out``: a malformed item (one nested too deeply to parse included) is
        skipped, counted, logged and kept with its text (JSON, else an escaped ``repr``; never an error)."""
        if rows is None:
            return
        if not isinstance(rows, list):
            raise ApiError("malformed", f"{endpoint}: expected a list of items, got {type(rows).__name__}")
        for item in rows:
            try:
                out.items.append(parser(item))
            except (MalformedItem, RecursionError) as exc:
                name, reason = ((exc.field, exc.reason) if isinstance(exc, MalformedItem)
                                else ("item", "nested too deeply"))
                metrics.API_ITEMS_MALFORMED.labels(endpoint, name[:40]).inc()
                raw = _item_text(item)
                key = hashlib.sha256(raw.encode()).hexdigest()[:32]
                # Once per item at WARNING: the overlaps and the safety cycle read the same bad row again
                # and again, and the log must stay readable (every read is still counted).
                first = key not in self._logged
                self._logged[key] = None
                self._logged.move_to_end(key)
                if len(self._logged) > LOGGED_ITEMS:
                    self._logged.popitem(last=False)
                log.log(logging.WARNING if first else logging.DEBUG,
                        "skipped a malformed %s item of wallet %s: field %s: %s%s", endpoint, wallet, name, reason,
                        "" if first else " (again)")
                out.rejected.append(Rejected(endpoint, wallet, key, raw, f"{name}: {reason}"[:500]))


#: Characters of a rejected item kept.
REJECTED_RAW_CHARS = 10_000
#: Malformed items remembered as logged (a repeat is logged at DEBUG).
LOGGED_ITEMS = 10_000


def _item_text(item: Any) -> str:
    """A rejected item as text (ASCII): its JSON, else its escaped ``repr`` (both cut to
    :data:`REJECTED_RAW_CHARS`), else its type: an item nested too deeply defeats both."""
    try:
        return json.dumps(item, default=str, sort_keys=True)[:REJECTED_RAW_CHARS]
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        return ascii(item)[:REJECTED_RAW_CHARS]
    except (ValueError, TypeError, RecursionError):
        return f"<{type(item).__name__} that cannot be shown>"


def _timed_out(exc: BaseException, deadline: float) -> bool:
    return isinstance(exc, (_DeadlineExceeded, requests.Timeout)) or time.monotonic() >= deadline


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
