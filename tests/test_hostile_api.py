"""Hostile answers never stop the pipeline (issue "Hostile input never stops the pipeline", items 2, 3, 5,
6 and 8): the real :class:`Transport` and :class:`PolymarketClient` against a small stdlib server on
127.0.0.1 that answers each request as the test tells it, byte by byte when it wants to, over http and
https (a CA and a certificate of ``trustme``).

Every wait is on an event or a bounded poll; a trickle is paced by the server's own stop event, so a
stopped server stops trickling at once.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import ssl
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme

from polycopy_actors.api.client import ApiError, PolymarketClient, Stopped, Transport
from polycopy_actors.api.models import MalformedItem, parse_fill
from polycopy_actors.api.rtds import parse_frame
from polycopy_actors.api.transport import Read
from polycopy_actors.config import ApiSettings
from polycopy_actors.logic.bucket import TokenBucket
from tests.helpers import fast_settings

WALLET = "0x" + "ab" * 20
#: Deeper than any recursion limit: ``[[[...]]]`` 50,000 levels down.
DEEP = 50_000
EMPTY_PAGE = {"data": [], "pagination": {"has_more": False, "next_cursor": None}}
MIB = 1024 * 1024


# --- the hostile server ------------------------------------------------------------------------------


class Exchange:
    """One request the server received, and the means to answer it (raw bytes)."""

    def __init__(self, server: Hostile, conn: socket.socket, target: str, number: int) -> None:
        self.server = server
        self.conn = conn
        self.target = target
        self.number = number  # 0 for the server's first request
        parts = urlsplit(target)
        self.path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def trickle(self, data: bytes, interval: float = 1.0) -> None:
        """``data`` one byte every ``interval`` seconds, until it is sent or the server stops."""
        for i in range(len(data)):
            self.send(data[i:i + 1])
            self.server.trickled.set()
            if self.server.closing.wait(interval):
                return

    def head(self, status: int, headers: dict[str, str] | None = None) -> bytes:
        lines = [f"HTTP/1.1 {status} Whatever", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def respond(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send(self.head(status, {"Content-Length": str(len(body)), **(headers or {})}) + body)

    def json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.respond(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def chunked_forever(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """A chunked body that never ends (until the client hangs up or the server stops)."""
        self.send(self.head(status, {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                                     **(headers or {})}))
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"[" * (64 * 1024))
        while not self.server.closing.is_set():
            self.send(chunk)


class Hostile:
    """A threaded server on 127.0.0.1: ``answer(exchange)`` answers every request; ``silent`` accepts
    connections and never says a thing (not even a TLS handshake); ``slow_start`` seconds pass before it
    reads a request (or answers a TLS handshake)."""

    def __init__(self, answer: Callable[[Exchange], None], tls: ssl.SSLContext | None = None,
                 silent: bool = False, slow_start: float = 0.0) -> None:
        self.answer = answer
        self.tls = tls
        self.silent = silent
        self.slow_start = slow_start
        self.targets: list[str] = []
        self.closing = threading.Event()
        self.trickled = threading.Event()  # a trickle sent its first byte
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        conn = raw
        try:
            raw.settimeout(5)
            self.connected.set()
            if self.silent:
                self.closing.wait(60)
                return
            if self.slow_start and self.closing.wait(self.slow_start):
                return
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            with self._lock:
                number = len(self.targets)
                self.targets.append(target)
            self.answer(Exchange(self, conn, target, number))
        except (OSError, ValueError):
            pass  # the client hung up (as it should, on a hostile answer)
        finally:
            conn.close()
            raw.close()

    def stop(self) -> None:
        self.closing.set()
        self._accepter.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def serve() -> Iterator[Callable[..., Hostile]]:
    """Starts hostile servers; every one is stopped when the test ends."""
    started: list[Hostile] = []

    def start(answer: Callable[[Exchange], None], tls: ssl.SSLContext | None = None,
              silent: bool = False, slow_start: float = 0.0) -> Hostile:
        server = Hostile(answer, tls, silent, slow_start)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    """A server TLS context for 127.0.0.1 and the path of the CA that signed its certificate."""
    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return context, str(path)


@pytest.fixture(params=["http", "https"])
def scheme(request: pytest.FixtureRequest, ca: tuple[ssl.SSLContext, str],
           monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext | None:
    """Runs a test over http and over https: the server's TLS context (None for http). The client
    trusts the test CA (requests prefers these variables to the session's ``verify``)."""
    if request.param == "http":
        return None
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca[1])
    monkeypatch.setenv("CURL_CA_BUNDLE", ca[1])
    return ca[0]


@pytest.fixture
def clients() -> Iterator[Callable[..., PolymarketClient]]:
    """Makes clients of a server (fast timings plus ``api`` overrides); all are closed at the end."""
    made: list[PolymarketClient] = []

    def make(server: Hostile, stop: threading.Event | None = None,
             on_rate_limited: Callable[[float], None] | None = None, **api: Any) -> PolymarketClient:
        settings = fast_settings(api={"data_api_url": server.url, "gamma_api_url": server.url, **api}).api
        transport = Transport(settings, stop_event=stop, **({"on_rate_limited": on_rate_limited}
                                                            if on_rate_limited else {}))
        client = PolymarketClient(settings, transport)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def api_settings(**api: Any) -> ApiSettings:
    return fast_settings(api=api).api


def fill_row(n: int, ts: int) -> dict[str, Any]:
    """A valid v2 trade row of WALLET."""
    return {"proxy_wallet": WALLET, "side": "BUY", "token_id": str(10**20 + n), "condition_id": "0x" + "c" * 64,
            "size": 5, "price": 0.5, "timestamp": ts, "transaction_hash": "0x" + f"{n:064x}",
            "outcome": "Yes", "outcome_index": 0, "title": "t", "slug": "s"}


def deep_json(prefix: bytes = b'{"data":', suffix: bytes = b"}") -> bytes:
    return prefix + b"[" * DEEP + b"]" * DEEP + suffix


# --- parse errors of any kind --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_deeply_nested_json_from_a_v2_route_is_a_malformed_answer(serve, clients) -> None:
    server = serve(lambda ex: ex.respond(200, deep_json(), {"Content-Type": "application/json"}))
    client = clients(server, max_retries=1)
    with pytest.raises(ApiError) as info:
        client.positions(WALLET)
    assert info.value.kind == "malformed" and "nested too deeply" in str(info.value)
    assert len(server.targets) == 2  # retried like a body that is not JSON


@pytest.mark.timeout(30)
def test_deeply_nested_rtds_frame_is_a_malformed_item() -> None:
    for raw in (deep_json(b'{"topic":"activity","type":"trades","payload":'),
                deep_json(b'{"topic":"activity","type":"trades","payload":').decode()):
        with pytest.raises(MalformedItem) as info:
            parse_frame(raw)
        assert info.value.field == "frame"


@pytest.mark.timeout(30)
def test_a_rejected_item_too_deep_to_print_is_kept_without_an_error() -> None:
    deep: list[Any] = []
    for _ in range(DEEP):
        deep = [deep]
    transport = Transport(api_settings())
    try:
        out: Read[Any] = Read()
        transport.parse_rows([deep, fill_row(1, 1_700_000_000)], parse_fill, "trades", WALLET, out)
    finally:
        transport.close()
    assert len(out.items) == 1 and len(out.rejected) == 1
    assert out.rejected[0].raw == "<list that cannot be shown>" and out.rejected[0].reason.startswith("item:")


# --- Retry-After ------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value", ["inf", "nan", "-5", "soon", "1e400", "\x1b[31mred"])
def test_an_unusable_retry_after_is_ignored_and_the_back_off_applies(serve, clients, caplog, value) -> None:
    def answer(ex: Exchange) -> None:
        if ex.number == 0:
            ex.respond(429, b"<html>slow down</html>", {"Retry-After": value})
        else:
            ex.json(EMPTY_PAGE)

    server = serve(answer)
    told: list[float] = []
    client = clients(server, on_rate_limited=told.append, max_retries=1)
    caplog.set_level(logging.WARNING, logger="polycopy_actors.api.transport")
    started = time.monotonic()
    assert client.positions(WALLET).items == []
    assert time.monotonic() - started < 3
    # The normal back-off (fast timings: 0.05 s doubled, at most 0.5 s, with jitter), nothing else.
    assert len(told) == 1 and math.isfinite(told[0]) and 0 < told[0] <= 0.5
    warned = [r.getMessage() for r in caplog.records if "unusable Retry-After" in r.getMessage()]
    assert len(warned) == 1 and ascii(value)[:40] in warned[0]
    assert "\x1b" not in warned[0]  # shown escaped


@pytest.mark.timeout(20)
@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("value", ["999999", "date"])
def test_a_huge_retry_after_is_capped(serve, clients, status, value) -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True) if value == "date" else value

    def answer(ex: Exchange) -> None:
        if ex.number == 0:
            ex.respond(status, b"busy", {"Retry-After": header})
        else:
            ex.json(EMPTY_PAGE)

    server = serve(answer)
    told: list[float] = []
    # A long normal back-off, so that only the new cap can keep the 503's wait short.
    client = clients(server, on_rate_limited=told.append, max_retries=1, retry_after_max_seconds=1,
                     backoff_max_seconds=30)
    started = time.monotonic()
    assert client.positions(WALLET).items == []
    took = time.monotonic() - started
    assert 0.9 <= took < 3
    assert told == ([1.0] if status == 429 else [])


@pytest.mark.timeout(10)
def test_the_token_bucket_cannot_be_paused_for_ever() -> None:
    for seconds in (math.inf, math.nan, -5.0):
        bucket = TokenBucket(rate=10, burst=5, now=0.0)
        bucket.throttle(0.0, seconds)
        assert bucket.paused_until == 0.0 and bucket.penalty_factor == 0.5
        assert math.isfinite(bucket.reserve(1.0))
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    bucket.throttle(0.0, 2.0)
    assert bucket.paused_until == 2.0


# --- bounded walks -------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("route", ["positions", "global"])
def test_a_repeating_cursor_ends_the_walk(serve, clients, route) -> None:
    now = int(time.time())

    def answer(ex: Exchange) -> None:
        ex.json({"data": [fill_row(ex.number * 10 + i, now) for i in range(10)],
                 "pagination": {"has_more": True, "next_cursor": "again"}})

    server = serve(answer)
    client = clients(server)
    with pytest.raises(ApiError) as info:
        if route == "positions":
            client.positions(WALLET)
        else:
            client.global_fills(now - 3600, 1000)
    assert info.value.kind == "malformed"
    assert "next_cursor repeated after 2 pages; read abandoned" in str(info.value)
    assert len(server.targets) == 2 and "cursor=again" in server.targets[1]


def endless(now: int, rows_per_page: int = 10) -> Callable[[Exchange], None]:
    """Pages of valid fills, one second older per page, each with a new cursor, for ever."""
    def answer(ex: Exchange) -> None:
        page = int(ex.query.get("cursor", "0"))
        ex.json({"data": [fill_row(page * rows_per_page + i, now - page) for i in range(rows_per_page)],
                 "pagination": {"has_more": True, "next_cursor": str(page + 1)}})
    return answer


@pytest.mark.timeout(30)
def test_a_walk_over_its_page_or_row_budget_is_incomplete(serve, clients) -> None:
    now = int(time.time())
    server = serve(endless(now))
    with pytest.raises(ApiError) as info:
        clients(server, max_walk_pages=5).trades_since(WALLET, now - 3600)
    assert info.value.kind == "incomplete" and "api.max_walk_pages" in str(info.value)
    assert len(server.targets) == 5
    server.targets.clear()
    with pytest.raises(ApiError) as info:
        clients(server, max_walk_rows=25).trades_since(WALLET, now - 3600)
    assert info.value.kind == "incomplete" and "api.max_walk_rows" in str(info.value)
    assert len(server.targets) == 3  # 30 rows > 25: no fourth page asked


@pytest.mark.timeout(30)
def test_the_global_feed_returns_what_its_budget_read_marked_incomplete(serve, clients) -> None:
    now = int(time.time())
    server = serve(endless(now, rows_per_page=3))
    client = clients(server, max_walk_pages=4)
    read = client.global_fills(now - 3600, 1000, max_pages=3)
    assert read.complete is False and len(server.targets) == 3
    assert sorted(f.timestamp for f in read.items) == sorted([now, now - 1, now - 2] * 3)
    server.targets.clear()
    read = client.global_fills(now - 3600, 1000)  # the callers' old call: api.max_walk_pages
    assert read.complete is False and len(server.targets) == 4 and len(read.items) == 12
    server.targets.clear()
    read = client.global_fills(now - 1, 1000, max_pages=3)  # reaches stop_ts on its third page
    assert read.complete is True and len(server.targets) == 3
    assert {f.timestamp for f in read.items} == {now, now - 1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rows", ["readable", "unreadable"])
def test_the_v1_activity_windows_are_bounded(serve, clients, rows) -> None:
    """v1: a full ``/trades`` page sends the read on through ``/activity`` windows; a server that serves
    full windows for ever (or full pages of nothing readable) must not keep it there."""
    now = int(time.time())

    def answer(ex: Exchange) -> None:
        if ex.path == "/trades":  # one page of the route's maximum: deeper history goes through /activity
            ex.json([fill_row(i, now) for i in range(10_000)])
        elif rows == "readable":  # always a full window, one second before its end
            end = int(ex.query["end"])
            ex.json([fill_row(i, end - 1) for i in range(int(ex.query["limit"]))])
        else:
            ex.json([{} for _ in range(int(ex.query["limit"]))])

    server = serve(answer)
    client = clients(server, data_api_version="v1", max_walk_pages=30)
    with pytest.raises(ApiError) as info:
        client.trades_since(WALLET, now - 3600)
    if rows == "readable":
        assert info.value.kind == "incomplete" and "api.max_walk_pages" in str(info.value)
        assert len(server.targets) == 1 + 30
    else:  # one whole window (offsets 0 to 5,000) of rows without a timestamp to go on from
        assert info.value.kind == "malformed" and "unreadable rows" in str(info.value)
        assert len(server.targets) == 1 + 11


# --- the deadline, and the stop event ------------------------------------------------------------------


def trickled_body(ex: Exchange) -> None:
    body = json.dumps(EMPTY_PAGE).encode()
    ex.send(ex.head(200, {"Content-Type": "application/json", "Content-Length": str(len(body) + 1000)}))
    ex.trickle(body + b" " * 1000)


def trickled_headers(ex: Exchange) -> None:
    ex.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: ")
    ex.trickle(b"a" * 1000)


def slow_but_whole(ex: Exchange) -> None:
    """A valid answer in four pieces 0.45 s apart: every piece makes the client's reads wait over a
    slice or two (and, after a slow start, its TLS handshake too)."""
    body = json.dumps({"data": [fill_row(1, int(ex.query["start"]))], "pagination": {"has_more": False}}).encode()
    head = ex.head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))})
    data = head + body
    cuts = [0, 10, len(head), len(head) + 20, len(data)]
    for a, b in zip(cuts, cuts[1:], strict=False):
        if ex.server.closing.wait(0.45):
            return
        ex.send(data[a:b])


@pytest.mark.timeout(20)
@pytest.mark.parametrize("answer", [trickled_body, trickled_headers], ids=["body", "headers"])
def test_a_trickling_answer_ends_at_the_deadline(serve, clients, scheme, answer) -> None:
    # Waits cut in slices lose nothing: a slow answer within the deadline is read whole.
    slow = serve(slow_but_whole, tls=scheme, slow_start=0.45)
    since = int(time.time()) - 60
    trades = clients(slow, max_retries=0, request_deadline_seconds=8).trades_since(WALLET, since).items
    assert [(t.wallet, t.timestamp) for t in trades] == [(WALLET, since)]

    server = serve(answer, tls=scheme)
    client = clients(server, max_retries=0, request_deadline_seconds=2, timeout_seconds=5)
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        client.positions(WALLET)
    took = time.monotonic() - started
    assert info.value.kind == "network" and "deadline" in str(info.value)
    assert 1.9 <= took < 3.0, took
    assert server.trickled.is_set()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("answer", [trickled_body, trickled_headers], ids=["body", "headers"])
def test_the_stop_event_interrupts_a_request_that_is_reading(serve, clients, scheme, answer) -> None:
    server = serve(answer, tls=scheme)
    stop = threading.Event()
    client = clients(server, stop=stop, max_retries=0, request_deadline_seconds=30, timeout_seconds=30)
    assert_stopped_soon(client, stop, server.trickled)


def assert_stopped_soon(client: PolymarketClient, stop: threading.Event, when: threading.Event) -> None:
    """Set ``stop`` once ``when`` is set (the server is in the middle of answering): the read ends with
    :class:`Stopped` within a second."""
    stopped_at: list[float] = []

    def stopper() -> None:
        if when.wait(10):
            stopped_at.append(time.monotonic())
            stop.set()

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    try:
        with pytest.raises(Stopped):
            client.positions(WALLET)
        assert stopped_at and time.monotonic() - stopped_at[0] < 1.0
    finally:
        stop.set()
        thread.join(timeout=15)


@pytest.mark.timeout(20)
def test_a_silent_server_is_bounded_by_the_deadline_and_the_stop_event(serve, clients, scheme) -> None:
    """Over https the TLS handshake itself is what never ends."""
    server = serve(lambda ex: None, tls=scheme, silent=True)
    client = clients(server, max_retries=0, request_deadline_seconds=1.5, timeout_seconds=10,
                     connect_timeout_seconds=10)
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        client.positions(WALLET)
    assert info.value.kind == "network" and "deadline" in str(info.value)
    assert time.monotonic() - started < 2.5

    stop = threading.Event()
    client = clients(server, stop=stop, max_retries=0, request_deadline_seconds=30, timeout_seconds=30,
                     connect_timeout_seconds=30)
    server.connected.clear()
    assert_stopped_soon(client, stop, server.connected)


# --- the size of an answer -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_an_answer_declared_too_large_is_refused_unread(serve, clients) -> None:
    pad = "x" * (2 * MIB)
    server = serve(lambda ex: ex.json({**EMPTY_PAGE, "pad": pad}))
    client = clients(server, max_retries=1, max_body_bytes=MIB)
    with pytest.raises(ApiError) as info:
        client.positions(WALLET)
    assert info.value.kind == "malformed" and f"answer larger than {MIB} bytes" in str(info.value)
    assert len(server.targets) == 2  # the normal retry count


@pytest.mark.timeout(30)
def test_an_endless_chunked_answer_is_refused_at_the_cap(serve, clients) -> None:
    server = serve(lambda ex: ex.chunked_forever())
    client = clients(server, max_retries=1, max_body_bytes=MIB, request_deadline_seconds=20)
    assert_refused_within_memory(client)
    assert len(server.targets) == 2


def assert_refused_within_memory(client: PolymarketClient) -> None:
    """The read fails as an answer larger than 1 MiB, and the body is never held much beyond that cap."""
    tracemalloc.start()
    try:
        with pytest.raises(ApiError) as info:
            client.positions(WALLET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.kind == "malformed" and f"answer larger than {MIB} bytes" in str(info.value)
    assert peak < 4 * MIB, peak


@pytest.mark.timeout(30)
def test_a_compressed_answer_is_capped_once_decompressed(serve, clients) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip: 64 MiB of spaces in about 64 KiB
    bomb = b"".join(packer.compress(b" " * MIB) for _ in range(64)) + packer.flush()
    server = serve(lambda ex: ex.respond(200, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}))
    client = clients(server, max_retries=0, max_body_bytes=MIB)
    assert_refused_within_memory(client)


# --- redirects -----------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_redirect_is_never_followed(serve, clients, scheme) -> None:
    now = int(time.time())
    fake = serve(lambda ex: ex.json({"data": [fill_row(1, now)], "pagination": {"has_more": False}}))

    def answer(ex: Exchange) -> None:
        location = f"{fake.url}{ex.target}"
        if scheme is None:
            ex.respond(302, b"moved", {"Location": location})
        else:  # and a body that never ends: not a byte of it is needed
            ex.chunked_forever(302, {"Location": location})

    server = serve(answer, tls=scheme)
    client = clients(server)
    with pytest.raises(ApiError) as info:
        client.trades_since(WALLET, now - 60)
    assert info.value.kind == "client" and info.value.status == 302
    assert f"HTTP 302 redirect to '127.0.0.1:{fake.port}' not followed" in str(info.value)
    assert len(server.targets) == 1  # not retried
    assert fake.targets == []


@pytest.mark.timeout(30)
def test_cookies_a_server_sets_are_never_kept_or_sent_back(serve, clients) -> None:
    """The API needs no cookie: a hostile answer's thousands of ``Set-Cookie`` headers must not grow the
    jar and every later request's headers."""
    cookies = "\r\n".join(f"Set-Cookie: c{i}={'x' * 200}; Path=/" for i in range(50))

    def answer(ex: Exchange) -> None:
        ex.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n" + cookies.encode()
                + b"\r\nContent-Length: %d\r\n\r\n" % len(json.dumps(EMPTY_PAGE)) + json.dumps(EMPTY_PAGE).encode())

    server = serve(answer)
    client = clients(server)
    client.positions(WALLET)
    client.positions(WALLET)
    assert len(server.targets) == 2 and len(client.transport.session.cookies) == 0
