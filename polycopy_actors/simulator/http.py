"""The simulator's HTTP server: Polymarket's data API (v1 + v2) and gamma ``/markets`` on 127.0.0.1.

A real HTTP server (stdlib ``ThreadingHTTPServer``, one thread per request) in front of
:class:`~polycopy_actors.simulator.routes.Routes` (what each route answers, rendered by
:mod:`~polycopy_actors.simulator.render`): it adds what sits between a client and the API — a per-route
10 s sliding-window rate limit that delays and then answers 429 with ``Retry-After`` and an HTML
body, a CDN caching by URL (``Age``), injectable faults and malformed items, and the request log.

Admin routes (``/_sim/...``) serve tests and the demo: ground truth, request statistics, faults.
"""

from __future__ import annotations

import base64
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

from polycopy_actors.simulator import poison
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
    """Injected faults; rates are probabilities per request (items: per item).

    Which requests: ``routes`` (None: every route; a path such as ``/v2/positions``, ``/markets``;
    ``/v2/trades?global`` the bare global feed alone, while ``/v2/trades`` names it too; ``rtds`` the
    stream) and ``wallets`` (None: every wallet): a request is faulty when its route matches and its
    ``user=`` is one of ``wallets``. The simulator's own admin routes (``/_sim/...``) are never faulty.

    ``poison`` (kinds of hostile answers; the world and its ground truth never change, only what is
    served). Row kinds change the rows of the poisoned wallets inside an answer: on a request with
    ``user=`` those are its rows, on the bare global feed, a market's feed and the RTDS stream (no
    ``user``) the rows of ``wallets`` among the others, which are served as usual. They touch trade rows
    only: v1 ``/trades``, ``/v2/trades`` (by user, by market, the global feed) and the TRADE rows of
    ``/activity`` and ``/v2/activity``:

    - ``surrogate_title``: ``title`` is ``"bad \\ud800 title"`` — on the wire the JSON escape ``\\ud800``
      (valid JSON) of a lone UTF-16 surrogate: ``json.loads`` gives a str that cannot be encoded to UTF-8.
      Also on the stream's frames.
    - ``tiny_size``: ``size`` is the number literal ``1e-20000`` (a float underflows to 0.0). Also on the stream.
    - ``huge_precision``: ``price`` is the literal ``0.`` and 1,200 digits. Also on the stream.
    - ``future_row``: each poisoned wallet's newest fill is served with ``timestamp`` 4070908800
      (2099-01-01), so it is first in every newest-first answer (the global feed's too) and its page's
      cursor carries that time; ``start``/``end`` still select it by its real time. Not on the stream.

    Body kinds change the whole answer of a faulty request; on the bare global feed (no ``user``) they
    apply whenever the route matches, whatever ``wallets`` says. One answer at most of (in this order)
    ``retry_after``, ``redirect``, ``deep_json``, ``malformed_body``; then ``endless_cursor``; any answer may
    then be trickled:

    - ``retry_after`` (the field, not a kind): when set, 429 (503 on ``/v2/status``) with
      ``Retry-After: <the text as given>`` (e.g. ``inf``, ``nan``, ``-5``, ``soon``, ``999999``) and the v2
      JSON error body ``{error, code, retryable, trace_id}``.
    - ``redirect``: ``302`` with ``Location`` at the same path and query on the "elsewhere" server
      (``Simulator.elsewhere_url``, another 127.0.0.1 port), which answers every request 200 with a
      well-formed body of the route's shape holding one fake row for the wallet (a trade with transaction
      ``poison.ELSEWHERE_TX`` on the trade routes, a position on the positions routes) and counts the
      requests it gets (``Simulator.elsewhere_requests``).
    - ``deep_json``: 200 ``application/json``, ``{"data":`` + 50,000 ``[`` + 50,000 ``]`` + ``}`` (v2), a bare
      50,000-deep array (v1 and gamma). On the stream (a row kind there): each frame of a poisoned wallet's
      fill is replaced by a frame whose ``payload`` nests 50,000 deep (that fill is never sent).
    - ``malformed_body``: 200 with a body that is not JSON (the same as ``malformed_json_rate=1``).
    - ``endless_cursor``: the paged v2 routes (``/v2/trades``, ``/v2/activity``, ``/v2/positions``) answer
      ``has_more: true`` and the same ``next_cursor`` on every page (the pages after the first repeat).
    - ``trickle``: normal status line and headers (a correct ``Content-Length``), then the body one byte
      every ``trickle_seconds``; ``trickle_headers``: the status line and headers themselves one byte every
      ``trickle_seconds``, then the body at once.
    """

    error_rate: float = 0.0
    latency_seconds: float = 0.0
    timeout_rate: float = 0.0
    hang_seconds: float = 5.0
    malformed_json_rate: float = 0.0
    malformed_item_rate: float = 0.0
    #: Only these wallets' requests are faulty (None: every request).
    wallets: frozenset[str] | None = None
    #: Only these routes' requests are faulty (None: every route), e.g. ``{"/v2/positions", "/markets"}``;
    #: ``/v2/trades?global`` names the bare global feed alone, ``rtds`` the stream (poison only).
    routes: frozenset[str] | None = None
    #: Rows of these transactions are always served without their ``size`` (a row that never validates).
    broken_txs: frozenset[str] = frozenset()
    #: Kinds of hostile answers (``poison.POISON_KINDS``), see the class docstring.
    poison: frozenset[str] = frozenset()
    #: ``trickle``/``trickle_headers``: seconds between two bytes.
    trickle_seconds: float = 1.0
    #: Faulty requests are answered 429 (503 on ``/v2/status``) with this ``Retry-After`` text (None: off).
    retry_after: str | None = None

    def __post_init__(self) -> None:
        for name in ("wallets", "routes"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, frozenset):
                object.__setattr__(self, name, frozenset(value))
        for name in ("broken_txs", "poison"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))
        if self.wallets is not None:
            object.__setattr__(self, "wallets", frozenset(w.lower() for w in self.wallets))
        unknown = self.poison - poison.POISON_KINDS
        if unknown:
            raise ValueError(f"unknown poison kinds {sorted(unknown)}; known: {sorted(poison.POISON_KINDS)}")
        if self.retry_after is not None and (not isinstance(self.retry_after, str)
                                             or any(c in self.retry_after for c in "\r\n")):
            raise ValueError("retry_after must be a header text (a str without line breaks)")
        if self.trickle_seconds < 0:
            raise ValueError("trickle_seconds must be >= 0")

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Faults:
        """The faults of a ``POST /_sim/faults`` body (lists for the sets; empty or absent ``wallets`` and
        ``routes`` mean every one). Raises TypeError/ValueError on an unknown field or kind."""
        payload = dict(payload)
        wallets = payload.pop("wallets", None)
        routes = payload.pop("routes", None)
        broken = payload.pop("broken_txs", None) or ()
        kinds = payload.pop("poison", None) or ()
        if isinstance(kinds, str):
            kinds = [kinds]
        return cls(**payload, wallets=frozenset(wallets) if wallets else None,
                   routes=frozenset(routes) if routes else None, broken_txs=frozenset(broken),
                   poison=frozenset(kinds))

    def route_matches(self, path: str, global_feed: bool = False) -> bool:
        """``path`` (``rtds`` for the stream) is one of ``routes``."""
        return (self.routes is None or path in self.routes
                or (global_feed and "/v2/trades?global" in self.routes))

    def wallet_matches(self, wallet: str | None) -> bool:
        return self.wallets is None or (wallet is not None and wallet.lower() in self.wallets)

    def row_kinds(self, wallet: str | None) -> frozenset[str]:
        """The poison kinds for a row (or stream frame) of ``wallet`` (its route already matched)."""
        return self.poison if self.poison and self.wallet_matches(wallet) else frozenset()


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
    """The world plus the HTTP behaviour; ``start()`` serves it on 127.0.0.1, with the RTDS stream and
    the "elsewhere" server (where ``redirect`` poison points) each on a port of its own.

    Threads: the tests' (or the demo's) thread calls the life cycle and ``set_faults``; each request runs
    on its own thread of its server; ``drive`` steps the world on a driver thread."""

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
        #: Set by ``stop()``: answers still trickling give up.
        self._stopping = threading.Event()
        #: The "elsewhere" server (``redirect`` poison): well-formed fake answers, requests counted.
        self._elsewhere = ThreadingHTTPServer((host, 0), _ElsewhereHandler)
        self._elsewhere.daemon_threads = True
        self._elsewhere.sim = self  # type: ignore[attr-defined]  # read by _ElsewhereHandler
        self.elsewhere_url = f"http://{host}:{self._elsewhere.server_address[1]}"
        self._elsewhere_lock = threading.Lock()
        self._elsewhere_paths: list[str] = []
        # A short poll: stop() waits for it (the main server's 0.5 s already costs every test).
        self._elsewhere_thread = threading.Thread(target=self._elsewhere.serve_forever, kwargs={"poll_interval": 0.05},
                                                  name="simulator-elsewhere", daemon=True)
        self._driver: threading.Thread | None = None
        self._driver_stop = threading.Event()
        #: The RTDS websocket beside the HTTP API (``rtds_url``; empty without it).
        self.rtds = RtdsServer(world, lambda: self.config, host) if rtds else None
        self.rtds_url = self.rtds.url if self.rtds is not None else ""

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> Simulator:
        self._thread.start()
        self._elsewhere_thread.start()
        if self.rtds is not None:
            self.rtds.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.stop_driver()
        if self.rtds is not None:
            self.rtds.stop()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._elsewhere.shutdown()
        self._elsewhere.server_close()

    @property
    def elsewhere_requests(self) -> int:
        """How many requests the elsewhere server got (clients that followed a ``redirect``)."""
        with self._elsewhere_lock:
            return len(self._elsewhere_paths)

    @property
    def elsewhere_paths(self) -> list[str]:
        """The request targets (path and query) the elsewhere server got, in order."""
        with self._elsewhere_lock:
            return list(self._elsewhere_paths)

    def _elsewhere_seen(self, target: str) -> None:
        with self._elsewhere_lock:
            self._elsewhere_paths.append(target)

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

    def _poison_rows(self, body: Any, faults: Faults) -> bool:
        """The value kinds of ``poison`` on the trade rows of the poisoned wallets, in place (an HTTP
        thread, on the answer's own rows); True if a row changed."""
        rows = body.get("data") if isinstance(body, dict) else body
        if not isinstance(rows, list):
            return False
        changed = False
        for row in rows:
            wallet = poison.row_wallet(row)
            kinds = faults.row_kinds(wallet) & poison.VALUE_KINDS if wallet is not None else frozenset()
            if kinds:
                poison.poison_row(row, kinds)
                changed = True
        return changed

    @staticmethod
    def _endless(body: Any, path: str, q: dict[str, str]) -> None:
        """``endless_cursor``: ``has_more`` and the same ``next_cursor`` on every page: the request's own
        cursor, else the route's, else one that points at the first page again."""
        if not isinstance(body, dict) or not isinstance(body.get("pagination"), dict):
            return
        pagination = body["pagination"]
        cursor = q.get("cursor") or pagination.get("next_cursor")
        if not cursor:
            limit = int(pagination.get("limit") or 100)
            if path == "/v2/positions":
                anchor: dict[str, Any] = {"i": 0, "l": limit}
            elif (q.get("sort_direction") or "DESC").upper() == "ASC":
                anchor = {"ts": -1, "seq": 0, "l": limit}
            else:
                anchor = {"ts": 2**62, "seq": 0, "l": limit}
            cursor = base64.urlsafe_b64encode(json.dumps(anchor).encode()).decode()
        pagination.update(has_more=True, next_cursor=cursor)


class _Handler(BaseHTTPRequestHandler):
    """One request, on its own thread of the ThreadingHTTPServer: admin routes, then (for the API)
    the request log, the rate limit, injected faults and poison, the CDN, the route, malformed items
    and poisoned rows; the answer is written at once or trickled."""

    protocol_version = "HTTP/1.1"
    #: How this request's answer is written: None (at once), ``trickle`` or ``trickle_headers``.
    _trickle: str | None = None
    _trickle_seconds: float = 0.0

    @property
    def sim(self) -> Simulator:
        return self.server.sim  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._trickle = None
        split = urlsplit(self.path)
        path = split.path
        multi = parse_qs(split.query, keep_blank_values=True)
        q = {k: v[-1] for k, v in multi.items()}
        v2 = path.startswith("/v2/")
        admin = path.startswith("/_sim/")
        faults = self.sim.config.faults
        route_ok = applies = poisoned = False
        if not admin:
            wallet = (q.get("user") or "").lower() or None
            self.sim.log.add(path, wallet)
            if self.sim.config.before_request is not None:
                self.sim.config.before_request(path, q)
            global_feed = is_global_feed(path, q)
            route_ok = faults.route_matches(path, global_feed)
            applies = route_ok and faults.wallet_matches(wallet)
            # Body-level poison: the bare global feed has no user, so its route alone decides.
            poisoned = route_ok and (applies or global_feed)
            if poisoned and faults.poison & {"trickle", "trickle_headers"}:
                self._trickle = "trickle_headers" if "trickle_headers" in faults.poison else "trickle"
                self._trickle_seconds = faults.trickle_seconds
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
                self._send(200, "application/json", poison.MALFORMED_BODY, {})
                return
            if poisoned and self._poisoned_answer(faults, path, v2):
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
            self._error(v2 or admin, exc.status, exc.message, exc.code, exc.parameter)
            return
        except (ValueError, KeyError) as exc:
            self._error(v2, 400, f"bad request: {exc}", "invalid_request")
            return
        altered = False
        if not admin:
            if applies:
                body = self.sim._corrupt(body)
            if route_ok and path in poison.TRADE_ROUTES and faults.poison & poison.ROW_KINDS:
                altered = self.sim._poison_rows(body, faults) or "future_row" in faults.poison
            if poisoned and "endless_cursor" in faults.poison and path in poison.PAGED_V2_ROUTES:
                self.sim._endless(body, path, q)
                altered = True
        payload = poison.encode(body)
        if status == 200 and not admin and not altered:  # a poisoned answer is never cached
            self.sim.cdn_store(self.path, path, q, payload)
        self._send(status, "application/json", payload, headers)

    def _poisoned_answer(self, faults: Faults, path: str, v2: bool) -> bool:
        """The body kinds that replace the answer (``retry_after``, ``redirect``, ``deep_json``,
        ``malformed_body``, in that order); True if one answered."""
        if faults.retry_after is not None:
            status = 503 if path == "/v2/status" else 429
            body = {"error": "service unavailable" if status == 503 else "rate limited",
                    "code": "dependency_unavailable" if status == 503 else "rate_limited",
                    "retryable": True, "trace_id": uuid.uuid4().hex}
            self._send(status, "application/json", json.dumps(body).encode(), {"Retry-After": faults.retry_after})
        elif "redirect" in faults.poison:
            self._send(302, "text/plain", b"", {"Location": self.sim.elsewhere_url + self.path})
        elif "deep_json" in faults.poison:
            self._send(200, "application/json", poison.deep_body(v2), {})
        elif "malformed_body" in faults.poison:
            self._send(200, "application/json", poison.MALFORMED_BODY, {})
        else:
            return False
        return True

    def do_POST(self) -> None:  # noqa: N802
        self._trickle = None
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/_sim/stream" and self.sim.rtds is not None:
            if "stalled" in payload:
                self.sim.rtds.stall(bool(payload["stalled"]))
            if payload.get("drop"):
                self.sim.rtds.drop()
            self._send(200, "application/json", json.dumps(self.sim.rtds.snapshot()).encode(), {})
        elif self.path == "/_sim/faults":
            try:
                faults = Faults.from_json(payload)
            except (TypeError, ValueError) as exc:
                self._error(False, 400, f"bad faults: {exc}", "invalid_request")
                return
            self.sim.set_faults(faults)
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
        if self._trickle == "trickle_headers":
            if self._drip(self._head(status, ctype, len(body), headers)):
                self.wfile.write(body)
            return
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self._trickle == "trickle":
            self._drip(body)
        else:
            self.wfile.write(body)

    def _head(self, status: int, ctype: str, length: int, headers: dict[str, str]) -> bytes:
        """The status line and headers ``send_response`` would write (``trickle_headers`` writes them itself)."""
        lines = [f"{self.protocol_version} {status} {self.responses.get(status, ('',))[0]}",
                 f"Server: {self.version_string()}", f"Date: {self.date_time_string()}",
                 f"Content-Type: {ctype}", f"Content-Length: {length}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _drip(self, data: bytes) -> bool:
        """Write ``data`` one byte every ``trickle_seconds`` (each byte after its wait); False when the
        client went away or the simulator stops (the connection is then closed)."""
        for i in range(len(data)):
            if self.sim._stopping.wait(self._trickle_seconds):
                self.close_connection = True
                return False
            try:
                self.wfile.write(data[i:i + 1])
            except OSError:
                self.close_connection = True
                return False
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return


class _ElsewhereHandler(BaseHTTPRequestHandler):
    """The "elsewhere" server (``redirect`` poison), one thread per request: every GET is counted and
    answered 200 with a well-formed body of the route's shape holding one fake row (``poison.elsewhere_answer``)
    for the request's ``user``, else the first poisoned wallet."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        sim: Simulator = self.server.sim  # type: ignore[attr-defined]
        sim._elsewhere_seen(self.path)
        split = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        wallets = sim.config.faults.wallets
        wallet = (q.get("user") or "").lower() or (min(wallets) if wallets else poison.ELSEWHERE_WALLET)
        body = poison.encode(poison.elsewhere_answer(split.path, q, wallet))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return
