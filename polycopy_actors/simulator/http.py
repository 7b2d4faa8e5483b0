"""The simulator's HTTP server: Polymarket's data API (v1 + v2) and gamma ``/markets`` on 127.0.0.1.

A real HTTP server (stdlib ``ThreadingHTTPServer``, one thread per request) in front of
:class:`~polycopy_actors.simulator.routes.Routes` (what each route answers, rendered by
:mod:`~polycopy_actors.simulator.render`): it adds what sits between a client and the API — a per-route
10 s sliding-window rate limit that delays and then answers 429 with ``Retry-After`` and an HTML
body, a CDN caching by URL (``Age``), injectable faults and malformed items, and the request log.

Admin routes (``/_sim/...``) serve tests and the demo: ground truth, request statistics, faults.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from polycopy_actors.simulator.routes import ApiFail, Routes, is_global_feed
from polycopy_actors.simulator.rtds import RtdsServer
from polycopy_actors.simulator.world import World

#: Requests per 10 s per route (the data API's and gamma's documented limits).
DEFAULT_LIMITS: dict[str, int] = {
    "data": 1000, "/trades": 200, "/positions": 150, "/closed-positions": 150, "/activity": 1000,
    "/v2/trades": 300, "/v2/positions": 200, "/v2/activity": 200, "/v2/status": 100,
    "gamma": 4000, "/markets": 300,
}
WINDOW_SECONDS = 10.0
#: How long the CDN in front of the live data API keeps an answer, by route (keyed by exact URL).
LIVE_CDN_SECONDS: dict[str, float] = {"/v2/trades": 300.0, "/v2/activity": 15.0, "/v2/positions": 5.0}
#: Gamma ``/markets`` answers hold at most about this many rows, whatever ``limit`` asks.
GAMMA_MAX_ROWS = 24


@dataclass(frozen=True)
class Faults:
    """Injected faults; rates are probabilities per request (items: per item)."""

    error_rate: float = 0.0
    latency_seconds: float = 0.0
    timeout_rate: float = 0.0
    hang_seconds: float = 5.0
    malformed_json_rate: float = 0.0
    malformed_item_rate: float = 0.0
    #: Only these wallets' requests are faulty (None: every request).
    wallets: frozenset[str] | None = None
    #: Only these routes' requests are faulty (None: every route), e.g. ``{"/v2/positions", "/markets"}``;
    #: ``/v2/trades?global`` names the bare global feed alone.
    routes: frozenset[str] | None = None
    #: Rows of these transactions are always served without their ``size`` (a row that never validates).
    broken_txs: frozenset[str] = frozenset()


@dataclass
class SimConfig:
    #: Per-route limits per 10 s window (scale them down to test throttling quickly).
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    #: Over the limit: requests are delayed up to this long, then answered 429.
    max_delay_seconds: float = 1.0
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    #: A CDN in front of ``/v2/trades?user=``: the same URL answers the same body (with ``Age`` and
    #: ``Cache-Control: max-age=300``) for this long, whatever the request headers say. 0 = no cache.
    cdn_cache_seconds: float = 0.0
    #: The same for any route, by path (``LIVE_CDN_SECONDS`` is what the live API does).
    cdn_routes: dict[str, float] = field(default_factory=dict)
    #: A CDN that ignores the query string (caches by route and ``user`` only): every URL is stale.
    cdn_ignore_query: bool = False
    #: What ``/v2/status`` reports as the serving lag (the API's own view of how late it is).
    status_lag_seconds: float = 1.0
    #: The positions routes show the positions as they stood this long ago (they lag the trades route).
    positions_lag_seconds: float = 0.0
    #: Rows of one gamma ``/markets`` answer at most (the live API cuts answers short).
    gamma_max_rows: int = GAMMA_MAX_ROWS
    #: Delay from the match until a wallet's own trade routes (v2 ``/v2/trades?user=``, v1) show a fill
    #: (live: about 5 s); 0 = at once.
    user_feed_delay_seconds: float = 0.0
    #: The same for the bare global ``/v2/trades`` (live: about 7 s).
    global_feed_delay_seconds: float = 0.0
    #: The RTDS stream sends a fill this long after the match (live: about 2 s).
    stream_delay_seconds: float = 2.0
    #: Share of stream frames never sent (live coverage with PING: 99.7 %).
    stream_loss_rate: float = 0.0
    #: Share of stream frames whose payload ``timestamp`` is one second before the block time.
    stream_early_rate: float = 0.7
    #: A connection that sent no ``PING`` for this long goes silent without closing (live: about 6 min).
    stream_ping_grace_seconds: float = 360.0
    #: Called with (path, query) before each API request is answered (tests: fills that arrive mid-walk).
    before_request: Callable[[str, dict[str, str]], None] | None = None


class RequestLog:
    """Per-route request counters and timestamps (ground truth for rate-budget tests)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: list[tuple[float, str, str | None]] = []
        self.status: dict[int, int] = {}

    def add(self, route: str, wallet: str | None) -> None:
        with self.lock:
            self.times.append((time.time(), route, wallet))

    def add_status(self, status: int) -> None:
        with self.lock:
            self.status[status] = self.status.get(status, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            counts: dict[str, int] = {}
            for _, route, _w in self.times:
                counts[route] = counts.get(route, 0) + 1
            return {"total": len(self.times), "routes": counts, "status": dict(self.status)}

    def max_in_window(self, window: float, routes: set[str] | None = None) -> int:
        """Most requests seen in any sliding window of ``window`` seconds."""
        with self.lock:
            ts = sorted(t for t, r, _ in self.times if routes is None or r in routes)
        best = 0
        j = 0
        for i, t in enumerate(ts):
            while ts[j] < t - window:
                j += 1
            best = max(best, i - j + 1)
        return best


class RateLimiter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: dict[str, deque[float]] = {}

    def admit(self, keys: list[str], limits: dict[str, int], max_delay: float) -> float | None:
        """Wait (delay) while over a limit; return None when admitted, else seconds to retry after."""
        deadline = time.monotonic() + max_delay
        while True:
            with self.lock:
                now = time.monotonic()
                wait = 0.0
                for key in keys:
                    q = self.hits.setdefault(key, deque())
                    while q and q[0] <= now - WINDOW_SECONDS:
                        q.popleft()
                    if len(q) >= limits.get(key, 10**9):
                        wait = max(wait, q[0] + WINDOW_SECONDS - now)
                if wait <= 0:
                    for key in keys:
                        self.hits[key].append(now)
                    return None
            if now + wait > deadline:
                return wait
            time.sleep(min(wait, 0.05))


class Simulator:
    """The world plus the HTTP behaviour; ``start()`` serves it on 127.0.0.1."""

    def __init__(self, world: World, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 rtds: bool = True) -> None:
        self.world = world
        self.config = config or SimConfig()
        self.log = RequestLog()
        self.limiter = RateLimiter()
        self._rng = random.Random(self.config.seed)
        self._rng_lock = threading.Lock()
        self._cdn: dict[str, tuple[float, bytes]] = {}
        self._cdn_lock = threading.Lock()
        self.routes = Routes(world, self)
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.sim = self  # type: ignore[attr-defined]  # read by _Handler
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="simulator-http", daemon=True)
        self._driver: threading.Thread | None = None
        self._driver_stop = threading.Event()
        #: The RTDS websocket beside the HTTP API (``rtds_url``; empty without it).
        self.rtds = RtdsServer(world, lambda: self.config, host) if rtds else None
        self.rtds_url = self.rtds.url if self.rtds is not None else ""

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> Simulator:
        self._thread.start()
        if self.rtds is not None:
            self.rtds.start()
        return self

    def stop(self) -> None:
        self.stop_driver()
        if self.rtds is not None:
            self.rtds.stop()
        self._httpd.shutdown()
        self._httpd.server_close()

    def drive(self, interval_seconds: float, max_events: int | None = None, background_wallets: int = 0,
              background_fills_per_second: float = 0.0) -> None:
        """Step the world every ``interval_seconds`` on a background thread; with ``background_wallets``,
        also that many other traders fill ``background_fills_per_second`` (the platform's flow)."""
        others = [self.world.add_wallet() for _ in range(background_wallets)] if background_wallets else []
        # The followed wallets' events stay in world.wallets; the background traders are only in `others`.
        if others:
            with self.world.lock:
                del self.world.wallets[-len(others):]

        def run() -> None:
            n = 0
            owed = 0.0
            while not self._driver_stop.wait(interval_seconds):
                self.world.step()
                if others:
                    owed += background_fills_per_second * interval_seconds
                    self.world.background(others, int(owed))
                    owed -= int(owed)
                n += 1
                if max_events is not None and n >= max_events:
                    return
        self._driver_stop.clear()
        self._driver = threading.Thread(target=run, name="simulator-driver", daemon=True)
        self._driver.start()

    def stop_driver(self) -> None:
        self._driver_stop.set()
        if self._driver is not None:
            self._driver.join(timeout=5)

    def set_faults(self, faults: Faults) -> None:
        self.config = replace(self.config, faults=faults)

    def cdn_seconds(self, path: str, q: dict[str, str]) -> float:
        """How long the CDN keeps an answer of this request (0: not cached)."""
        if path in self.config.cdn_routes:
            return self.config.cdn_routes[path]
        return self.config.cdn_cache_seconds if path == "/v2/trades" and "user" in q else 0.0

    def _cdn_key(self, url: str, path: str, q: dict[str, str]) -> str:
        return f"{path}?user={q.get('user', '')}" if self.config.cdn_ignore_query else url

    def cdn_lookup(self, url: str, path: str, q: dict[str, str]) -> tuple[float, bytes] | None:
        """(age, body) of a cached answer for this URL, while it is fresh for the CDN."""
        keep = self.cdn_seconds(path, q)
        if keep <= 0:
            return None
        with self._cdn_lock:
            hit = self._cdn.get(self._cdn_key(url, path, q))
        if hit is None or time.time() - hit[0] > keep:
            return None
        return time.time() - hit[0], hit[1]

    def cdn_store(self, url: str, path: str, q: dict[str, str], payload: bytes) -> None:
        keep = self.cdn_seconds(path, q)
        if keep > 0:
            key = self._cdn_key(url, path, q)
            with self._cdn_lock:
                if key not in self._cdn or time.time() - self._cdn[key][0] > keep:
                    self._cdn[key] = (time.time(), payload)

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._rng_lock:
            return self._rng.random() < rate

    def route(self, path: str, q: dict[str, str], multi: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        return self.routes.route(path, q, multi)

    # --- HTTP ------------------------------------------------------------------------------------------------

    def _limit_keys(self, path: str) -> list[str]:
        if path == "/markets":
            return ["gamma", "/markets"]
        return ["data", path]

    def _corrupt(self, body: Any) -> Any:
        """Malformed items: each row may lose a field or get a wrong type; rows of ``broken_txs`` always do."""
        rows = body.get("data") if isinstance(body, dict) else body
        if not isinstance(rows, list):
            return body
        broken = self.config.faults.broken_txs
        for row in rows:
            tx = (row.get("transaction_hash") or row.get("transactionHash")) if isinstance(row, dict) else None
            if broken and tx in broken:
                row.pop("size", None)
                continue
            if isinstance(row, dict) and self._chance(self.config.faults.malformed_item_rate):
                key = self._rng.choice(sorted(row))
                if self._rng.random() < 0.5:
                    row.pop(key)
                else:
                    row[key] = {"unexpected": [1, "x"]}
        return body


class _Handler(BaseHTTPRequestHandler):
    """One request, on its own thread of the ThreadingHTTPServer: admin routes, then (for the API)
    the request log, the rate limit, injected faults, the CDN, the route, malformed items."""

    protocol_version = "HTTP/1.1"

    @property
    def sim(self) -> Simulator:
        return self.server.sim  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        split = urlsplit(self.path)
        path = split.path
        multi = parse_qs(split.query, keep_blank_values=True)
        q = {k: v[-1] for k, v in multi.items()}
        v2 = path.startswith("/v2/")
        if not path.startswith("/_sim/"):
            wallet = (q.get("user") or "").lower() or None
            self.sim.log.add(path, wallet)
            if self.sim.config.before_request is not None:
                self.sim.config.before_request(path, q)
            faults = self.sim.config.faults
            global_feed = is_global_feed(path, q)
            applies = ((faults.wallets is None or wallet in faults.wallets)
                       and (faults.routes is None or path in faults.routes
                            or (global_feed and "/v2/trades?global" in faults.routes)))
            retry_after = self.sim.limiter.admit(self.sim._limit_keys(path), self.sim.config.limits,
                                            self.sim.config.max_delay_seconds)
            if retry_after is not None:
                body = b"<html><head><title>429 Too Many Requests</title></head><body>" \
                       b"<center><h1>429 Too Many Requests</h1></center><hr><center>cloudflare</center>" \
                       b"</body></html>"
                self._send(429, "text/html", body, {"Retry-After": str(max(1, round(retry_after)))})
                return
            if applies and faults.latency_seconds > 0:
                time.sleep(faults.latency_seconds)
            if applies and self.sim._chance(faults.timeout_rate):
                time.sleep(faults.hang_seconds)
                self.close_connection = True
                return
            if applies and self.sim._chance(faults.error_rate):
                self._error(v2, 503 if self.sim._rng.random() < 0.5 else 500, "injected failure",
                            "dependency_unavailable")
                return
            if applies and self.sim._chance(faults.malformed_json_rate):
                self._send(200, "application/json", b'{"data": [{"proxy_wallet": "0x', {})
                return
        cached = self.sim.cdn_lookup(self.path, path, q)
        if cached is not None:
            age, payload = cached
            self._send(200, "application/json", payload,
                       {"Age": str(int(age)), "Cache-Control": f"max-age={self.sim.cdn_seconds(path, q):.0f}"})
            return
        try:
            status, body, headers = self.sim.route(path, q, multi)
        except ApiFail as exc:
            self._error(v2 or path.startswith("/_sim/"), exc.status, exc.message, exc.code, exc.parameter)
            return
        except (ValueError, KeyError) as exc:
            self._error(v2, 400, f"bad request: {exc}", "invalid_request")
            return
        if not path.startswith("/_sim/") and applies:
            body = self.sim._corrupt(body)
        payload = json.dumps(body).encode()
        if status == 200 and not path.startswith("/_sim/"):
            self.sim.cdn_store(self.path, path, q, payload)
        self._send(status, "application/json", payload, headers)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/_sim/stream" and self.sim.rtds is not None:
            if "stalled" in payload:
                self.sim.rtds.stall(bool(payload["stalled"]))
            if payload.get("drop"):
                self.sim.rtds.drop()
            self._send(200, "application/json", json.dumps(self.sim.rtds.snapshot()).encode(), {})
        elif self.path == "/_sim/faults":
            wallets = payload.pop("wallets", None)
            routes = payload.pop("routes", None)
            broken = payload.pop("broken_txs", ())
            self.sim.set_faults(Faults(**payload, wallets=frozenset(wallets) if wallets else None,
                                  routes=frozenset(routes) if routes else None, broken_txs=frozenset(broken)))
            self._send(200, "application/json", b'{"ok": true}', {})
        else:
            self._error(False, 404, "not found", "not_found")

    def _error(self, v2: bool, status: int, message: str, code: str, parameter: str | None = None) -> None:
        body: dict[str, Any] = {"error": message}
        headers = {}
        if v2:
            body.update(code=code, retryable=status in (429, 503), trace_id=uuid.uuid4().hex)
            if parameter:
                body["parameter"] = parameter
        if status in (429, 503):
            headers["Retry-After"] = "1"
        self._send(status, "application/json", json.dumps(body).encode(), headers)

    def _send(self, status: int, ctype: str, body: bytes, headers: dict[str, str]) -> None:
        self.sim.log.add_status(status)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

