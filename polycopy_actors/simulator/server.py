"""The simulator's HTTP server: Polymarket's data API (v1 + v2) and gamma ``/markets``.

A real HTTP server on 127.0.0.1 (stdlib ``ThreadingHTTPServer``, one thread per request) that
follows ``polymarket-api.md``: field names and types, newest-first feeds, v1 limit/offset caps
(offsets past a cap are a 400, never clamped, except v1 /activity's limit which is clamped), v2
keyset cursors in a ``{data, pagination}`` envelope with JSON errors, gamma's JSON-encoded string
fields and its ``closed`` trap, a per-route 10 s sliding-window rate limit that delays and then
answers 429 with ``Retry-After`` and an HTML body, and injectable faults.

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
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from polycopy_actors.simulator.world import SimActivity, SimFill, SimMarket, SimPosition, World

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
    #: Only these routes' requests are faulty (None: every route), e.g. ``{"/v2/positions", "/markets"}``.
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


def _f(value: Decimal) -> float:
    return float(value)


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


def _unb64(raw: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(raw.encode()))


class ApiFail(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request", parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.parameter = parameter


def _wallet_param(q: dict[str, str], name: str = "user", required: bool = True) -> str | None:
    raw = q.get(name)
    if raw is None:
        if required:
            raise ApiFail(400, f"required query param '{name}' not provided", parameter=name)
        return None
    if len(raw) != 42 or not raw.startswith("0x") or any(c not in "0123456789abcdefABCDEF" for c in raw[2:]):
        raise ApiFail(400, f"invalid address '{raw}'", parameter=name)
    return raw.lower()


def _int_param(q: dict[str, str], name: str, default: int, lo: int, hi: int | None, clamp: bool = False) -> int:
    raw = q.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiFail(400, f"'{name}' must be an integer", parameter=name) from None
    if value < lo or (hi is not None and value > hi):
        if clamp and hi is not None and value > hi:
            return hi
        raise ApiFail(400, f"'{name}' must be between {lo} and {hi}", parameter=name)
    return value


def _bool_param(q: dict[str, str], name: str, default: bool) -> bool:
    raw = q.get(name)
    if raw is None:
        return default
    if raw.lower() not in ("true", "false"):
        raise ApiFail(400, f"'{name}' must be true or false", parameter=name)
    return raw.lower() == "true"


class Simulator:
    """The world plus the HTTP behaviour; ``start()`` serves it on 127.0.0.1."""

    def __init__(self, world: World, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.world = world
        self.config = config or SimConfig()
        self.log = RequestLog()
        self.limiter = RateLimiter()
        self._rng = random.Random(self.config.seed)
        self._rng_lock = threading.Lock()
        self._cdn: dict[str, tuple[float, bytes]] = {}
        self._cdn_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="simulator-http", daemon=True)
        self._driver: threading.Thread | None = None
        self._driver_stop = threading.Event()

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> Simulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_driver()
        self._httpd.shutdown()
        self._httpd.server_close()

    def drive(self, interval_seconds: float, max_events: int | None = None) -> None:
        """Step the world every ``interval_seconds`` on a background thread."""
        def run() -> None:
            n = 0
            while not self._driver_stop.wait(interval_seconds):
                self.world.step()
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

    # --- routing ------------------------------------------------------------------------------------

    def route(self, path: str, q: dict[str, str], multi: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        w = self.world
        with w.lock:
            if path == "/trades":
                return 200, self.v1_trades(q), {}
            if path == "/activity":
                return 200, self.v1_activity(q), {}
            if path == "/positions":
                return 200, self.v1_positions(q), {}
            if path == "/v2/trades":
                return 200, self.v2_feed(q, "trades"), {}
            if path == "/v2/activity":
                return 200, self.v2_feed(q, "activity"), {}
            if path == "/v2/positions":
                return 200, self.v2_positions(q), {}
            if path == "/v2/status":
                return 200, self.v2_status(), {}
            if path == "/closed-positions":
                return 200, self.v1_closed_positions(q), {}
            if path == "/markets":
                return 200, self.gamma_markets(q, multi), {}
            if path == "/_sim/truth":
                return 200, w.truth(), {}
            if path == "/_sim/stats":
                return 200, self.log.snapshot(), {}
            if path == "/_sim/wallets":
                return 200, {"wallets": list(w.wallets)}, {}
        raise ApiFail(404, f"no route {path}", code="not_found")

    # --- data API v1 -----------------------------------------------------------------------------------

    def _fills_of(self, wallet: str | None, taker_only: bool) -> list[SimFill]:
        rows = [f for f in self.world.fills if (wallet is None or f.wallet == wallet) and (f.taker or not taker_only)]
        rows.sort(key=lambda f: (f.timestamp, f.seq), reverse=True)
        return rows

    def v1_trades(self, q: dict[str, str]) -> list[dict[str, Any]]:
        wallet = _wallet_param(q, required="market" not in q)
        limit = _int_param(q, "limit", 100, 0, 10_000)
        offset = _int_param(q, "offset", 0, 0, 10_000)
        rows = self._fills_of(wallet, _bool_param(q, "takerOnly", True))
        if "market" in q:
            markets = set(q["market"].split(","))
            rows = [f for f in rows if f.market.condition_id in markets]
        return [self._v1_fill(f) for f in rows[offset:offset + limit]]

    def _v1_fill(self, f: SimFill) -> dict[str, Any]:
        m = f.market
        return {
            "proxyWallet": f.wallet, "side": f.side, "asset": f.asset, "conditionId": m.condition_id,
            "size": _f(f.size), "price": _f(f.price), "timestamp": f.timestamp, "title": m.question,
            "slug": m.slug, "icon": "", "eventSlug": m.slug, "outcome": m.outcomes[f.outcome_index],
            "outcomeIndex": f.outcome_index, "name": "", "pseudonym": "", "bio": "", "profileImage": "",
            "profileImageOptimized": "", "transactionHash": f.tx,
        }

    def _activity_rows(self, wallet: str, types: set[str] | None, start: int, end: int) -> list[tuple[int, int, Any]]:
        rows: list[tuple[int, int, Any]] = []
        if types is None or "TRADE" in types:
            rows += [(f.timestamp, f.seq, f) for f in self.world.fills if f.wallet == wallet]
        rows += [(a.timestamp, a.seq, a) for a in self.world.activity
                 if a.wallet == wallet and (types is None or a.type in types)]
        rows = [r for r in rows if start <= r[0] <= end]
        rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
        return rows

    def _v1_activity_row(self, row: Any) -> dict[str, Any]:
        if isinstance(row, SimFill):
            out = self._v1_fill(row)
            out["type"] = "TRADE"
            out["usdcSize"] = _f(row.size * row.price)
            return out
        a: SimActivity = row
        return {
            "proxyWallet": a.wallet, "timestamp": a.timestamp, "conditionId": a.market.condition_id,
            "type": a.type, "size": _f(a.size), "usdcSize": _f(a.size), "transactionHash": a.tx, "price": 0,
            "asset": "", "side": "", "outcomeIndex": 999, "title": a.market.question, "slug": a.market.slug,
            "icon": "", "eventSlug": a.market.slug, "outcome": "", "name": "", "pseudonym": "", "bio": "",
            "profileImage": "", "profileImageOptimized": "",
        }

    def _types(self, q: dict[str, str]) -> set[str] | None:
        raw = q.get("type")
        return set(raw.split(",")) if raw else None

    def v1_activity(self, q: dict[str, str]) -> list[dict[str, Any]]:
        wallet = _wallet_param(q)
        assert wallet is not None
        limit = _int_param(q, "limit", 100, 0, 500, clamp=True)
        offset = _int_param(q, "offset", 0, 0, 5_000)
        now = int(time.time())
        start = _int_param(q, "start", now - 3 * 365 * 86400, 0, None)
        end = _int_param(q, "end", now + 86400, 0, None)
        rows = self._activity_rows(wallet, self._types(q), start, end)
        return [self._v1_activity_row(r[2]) for r in rows[offset:offset + limit]]

    def _listed_positions(self, wallet: str, floor: Decimal, sort_by: str = "CURRENT_VALUE",
                          ascending: bool = False, include_archived: bool = False) -> list[SimPosition]:
        lag = self.config.positions_lag_seconds
        held = self.world.positions_as_of(time.time() - lag) if lag > 0 else list(self.world.positions.values())
        rows = [p for p in held if p.wallet == wallet and (include_archived or not p.market.archived)
                and p.size >= floor and p.size > 0]
        keys = {
            "CURRENT_VALUE": lambda p: p.size * p.market.price(p.outcome_index),
            "TOKENS": lambda p: p.size,
            "PRICE": lambda p: p.market.price(p.outcome_index),
            "TIMESTAMP": lambda p: Decimal(p.opened_at),
        }
        if sort_by not in keys:
            raise ApiFail(400, f"unknown sort_by {sort_by!r}", parameter="sort_by")
        key = keys[sort_by]
        rows.sort(key=lambda p: (key(p) if ascending else -key(p), p.market.assets[p.outcome_index]))
        return rows

    def v1_positions(self, q: dict[str, str]) -> list[dict[str, Any]]:
        wallet = _wallet_param(q)
        assert wallet is not None
        limit = _int_param(q, "limit", 100, 0, 500)
        offset = _int_param(q, "offset", 0, 0, 10_000)
        raw = q.get("sizeThreshold", "1")
        try:
            threshold = Decimal(raw)
        except ArithmeticError:
            raise ApiFail(400, "'sizeThreshold' must be a number", parameter="sizeThreshold") from None
        rows = self._listed_positions(wallet, threshold)
        out = []
        for p in rows[offset:offset + limit]:
            m = p.market
            cur = m.price(p.outcome_index)
            out.append({
                "proxyWallet": p.wallet, "asset": m.assets[p.outcome_index], "conditionId": m.condition_id,
                "size": _f(p.size), "avgPrice": _f(p.avg_price), "initialValue": _f(p.size * p.avg_price),
                "currentValue": _f(p.size * cur), "cashPnl": _f(p.size * (cur - p.avg_price)), "percentPnl": 0,
                "totalBought": _f(p.total_bought), "realizedPnl": 0, "percentRealizedPnl": 0, "curPrice": _f(cur),
                "redeemable": m.winner is not None, "mergeable": False, "title": m.question, "slug": m.slug,
                "icon": "", "eventSlug": m.slug, "outcome": m.outcomes[p.outcome_index],
                "outcomeIndex": p.outcome_index, "oppositeOutcome": m.outcomes[1 - p.outcome_index],
                "oppositeAsset": m.assets[1 - p.outcome_index], "endDate": "2027-01-01", "negativeRisk": False,
            })
        return out

    # --- data API v2 -----------------------------------------------------------------------------------

    def _v2_limit(self, q: dict[str, str], default: int = 100) -> int:
        if "offset" in q:
            raise ApiFail(400, "offset paging is not supported on v2: follow pagination.next_cursor",
                          parameter="offset")
        return _int_param(q, "limit", default, 0, 1000)

    def _v2_fill(self, f: SimFill) -> dict[str, Any]:
        m = f.market
        return {
            "proxy_wallet": f.wallet, "side": f.side, "token_id": f.asset, "condition_id": m.condition_id,
            "size": _f(f.size), "price": _f(f.price), "timestamp": f.timestamp, "title": m.question,
            "slug": m.slug, "icon": "", "event_slug": m.slug, "outcome": m.outcomes[f.outcome_index],
            "outcome_index": f.outcome_index, "name": "", "pseudonym": "", "bio": "", "profile_image": "",
            "profile_image_optimized": "", "transaction_hash": f.tx,
        }

    def _v2_activity_row(self, row: Any) -> dict[str, Any]:
        if isinstance(row, SimFill):
            out = self._v2_fill(row)
            out["type"] = "TRADE"
            out["usdc_size"] = _f(row.size * row.price)
            return out
        a: SimActivity = row
        return {
            "proxy_wallet": a.wallet, "timestamp": a.timestamp, "condition_id": a.market.condition_id,
            "type": a.type, "size": _f(a.size), "usdc_size": _f(a.size), "transaction_hash": a.tx, "price": 0,
            "token_id": "", "side": "", "outcome_index": 999, "title": a.market.question, "slug": a.market.slug,
            "icon": "", "event_slug": a.market.slug, "outcome": "", "name": "", "pseudonym": "", "bio": "",
            "profile_image": "", "profile_image_optimized": "",
        }

    def v2_feed(self, q: dict[str, str], kind: str) -> dict[str, Any]:
        now = int(time.time())
        limit = self._v2_limit(q)
        wallet = _wallet_param(q, required=kind == "activity")
        cursor = _unb64(q["cursor"]) if q.get("cursor") else None
        if cursor is not None:
            limit = int(cursor["l"])
        if wallet is not None:
            raw_start = _int_param(q, "start", 0, 0, None)
            start = now - 3 * 365 * 86400 if raw_start == 0 else raw_start
            end = _int_param(q, "end", 0, 0, None) or now + 86400
        else:
            if "start" in q or "end" in q:
                raise ApiFail(400, "'start'/'end' are only supported with 'user'", parameter="start")
            start, end = now - 62 * 86400, now + 86400
        if kind == "trades":
            rows_t = [(f.timestamp, f.seq, f) for f in self._fills_of(wallet, _bool_param(q, "taker_only", True))]
            conds = q.get("condition") or q.get("condition_id") or q.get("conditionId")
            if conds:
                wanted = set(conds.split(","))
                if len(wanted) > 20:
                    raise ApiFail(400, "at most 20 condition ids", parameter="condition")
                rows_t = [r for r in rows_t if r[2].market.condition_id in wanted]
            if q.get("side"):
                rows_t = [r for r in rows_t if r[2].side == q["side"]]
            rows_t = [r for r in rows_t if start <= r[0] <= end]
        else:
            assert wallet is not None
            rows_t = self._activity_rows(wallet, self._types(q), start, end)
        if (q.get("sort_direction") or "DESC").upper() == "ASC":
            rows_t.sort(key=lambda r: (r[0], r[1]))
            if cursor is not None:
                rows_t = [r for r in rows_t if (r[0], r[1]) > (cursor["ts"], cursor["seq"])]
        elif cursor is not None:
            rows_t = [r for r in rows_t if (r[0], r[1]) < (cursor["ts"], cursor["seq"])]
        page = rows_t[:limit]
        has_more = len(rows_t) > limit
        next_cursor = _b64({"ts": page[-1][0], "seq": page[-1][1], "l": limit}) if has_more and page else None
        render = self._v2_fill if kind == "trades" else self._v2_activity_row
        return {"data": [render(r[2]) for r in page],
                "pagination": {"limit": limit, "offset": 0, "has_more": has_more, "next_cursor": next_cursor}}

    def v2_status(self) -> dict[str, Any]:
        """Data freshness (docs: "Get data freshness"): a background snapshot, its age, the serving
        lag (worst projection, named) and the ingestion tail. Not paginated, no parameters."""
        now = time.time()
        lag = self.config.status_lag_seconds
        newest = max((f.timestamp for f in self.world.fills), default=int(now))
        return {
            "computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "age_seconds": 0,
            "serving": {"lag_seconds": lag, "worst": "activity_feed",
                        "projections": {"activity_feed": {"lag_seconds": lag}, "custody_balances": {"lag_seconds": 0},
                                        "pnl_engine": {"lag_seconds": 0}}},
            "ingestion": {"tail": {"block_timestamp": newest, "lag_seconds": max(0.0, now - newest)}, "worst": []},
        }

    def _closes_of(self, wallet: str) -> list[Any]:
        rows = [c for c in self.world.closes if c.wallet == wallet]
        rows.sort(key=lambda c: (c.closed_at, c.seq), reverse=True)
        return rows

    def v1_closed_positions(self, q: dict[str, str]) -> list[dict[str, Any]]:
        wallet = _wallet_param(q)
        assert wallet is not None
        limit = _int_param(q, "limit", 10, 0, 50, clamp=True)
        offset = _int_param(q, "offset", 0, 0, 100_000)
        out = []
        for c in self._closes_of(wallet)[offset:offset + limit]:
            m = self.world.markets[c.condition_id]
            out.append({
                "proxyWallet": c.wallet, "asset": c.asset, "conditionId": c.condition_id, "avgPrice": _f(c.avg_price),
                "totalBought": _f(c.total_bought), "realizedPnl": 0.0, "curPrice": _f(m.price(c.outcome_index)),
                "title": m.question, "slug": m.slug, "icon": "", "eventSlug": m.slug,
                "outcome": m.outcomes[c.outcome_index], "outcomeIndex": c.outcome_index,
                "oppositeOutcome": m.outcomes[1 - c.outcome_index], "oppositeAsset": m.assets[1 - c.outcome_index],
                "endDate": "2026-12-31T00:00:00Z", "timestamp": c.closed_at,
            })
        return out

    def _v2_closed(self, wallet: str, start_index: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        rows = self._closes_of(wallet)
        data = []
        for c in rows[start_index:start_index + limit]:
            m = self.world.markets[c.condition_id]
            data.append({
                "proxy_wallet": c.wallet, "condition_id": c.condition_id, "token_id": c.asset,
                "outcome": m.outcomes[c.outcome_index], "outcome_index": c.outcome_index, "title": m.question,
                "status": "CLOSED", "current_size": 0.0, "avg_price": _f(c.avg_price),
                "entry_cost_usdc": _f(c.total_bought * c.avg_price), "current_value": 0.0, "realized_pnl": 0.0,
                "unrealized_pnl": 0.0, "redeemable": False, "mergeable": False, "last_event_at": c.closed_at,
            })
        return data, start_index + limit < len(rows)

    def v2_positions(self, q: dict[str, str]) -> dict[str, Any]:
        wallet = _wallet_param(q)
        assert wallet is not None
        limit = self._v2_limit(q)
        _int_param(q, "start", 0, 0, None)  # start/end filter on last_event_at: validated, wide in practice
        _int_param(q, "end", 0, 0, None)
        status = (q.get("status") or "OPEN").upper()
        cursor = _unb64(q["cursor"]) if q.get("cursor") else None
        start_index = 0
        if cursor is not None:
            limit, start_index = int(cursor["l"]), int(cursor["i"])
        if status == "CLOSED":
            closed, has_more = self._v2_closed(wallet, start_index, limit)
            next_cursor = _b64({"i": start_index + limit, "l": limit}) if has_more else None
            return {"data": closed or None,
                    "pagination": {"limit": limit, "offset": 0, "has_more": has_more, "next_cursor": next_cursor}}
        # OPEN (the default) is the superset: a resolved, unredeemed position still holds its tokens.
        # Positions under 0.1 share are hidden unless filter_amount says otherwise (TOKENS filter).
        filter_type = (q.get("filter_type") or q.get("filterType") or "TOKENS").upper()
        raw_amount = q.get("filter_amount") or q.get("filterAmount")
        try:
            amount = Decimal(raw_amount) if raw_amount is not None else Decimal("0.1")
        except ArithmeticError:
            raise ApiFail(400, "'filter_amount' must be a number", parameter="filter_amount") from None
        if filter_type not in ("TOKENS", "CASH"):
            raise ApiFail(400, "'filter_type' must be CASH or TOKENS", parameter="filter_type")
        direction = (q.get("sort_direction") or "DESC").upper()
        if direction not in ("ASC", "DESC"):
            raise ApiFail(400, "'sort_direction' must be ASC or DESC", parameter="sort_direction")
        rows = self._listed_positions(wallet, amount if filter_type == "TOKENS" else Decimal(0),
                                      (q.get("sort_by") or "CURRENT_VALUE").upper(), direction == "ASC",
                                      _bool_param(q, "include_archived", False))
        if status == "REDEEMABLE":
            rows = [p for p in rows if p.market.winner is not None and p.market.winner == p.outcome_index]
        elif status == "REDEEMABLE_LOST":
            rows = [p for p in rows if p.market.winner is not None and p.market.winner != p.outcome_index]
        elif status == "MERGEABLE":
            held = {(p.market.condition_id, p.outcome_index) for p in rows}
            rows = [p for p in rows if p.market.winner is None and (p.market.condition_id, 1 - p.outcome_index) in held]
        elif status != "OPEN":
            raise ApiFail(400, f"unknown status {status!r}", parameter="status")
        page = rows[start_index:start_index + limit]
        has_more = start_index + limit < len(rows)
        data = []
        for p in page:
            m = p.market
            cur = m.price(p.outcome_index)
            status_row = "OPEN" if m.winner is None else ("REDEEMABLE" if cur > 0 else "REDEEMABLE_LOST")
            data.append({
                "proxy_wallet": p.wallet, "condition_id": m.condition_id, "token_id": m.assets[p.outcome_index],
                "outcome": m.outcomes[p.outcome_index], "outcome_index": p.outcome_index, "title": m.question,
                "status": status_row, "current_size": _f(p.size), "avg_price": _f(p.avg_price),
                "entry_cost_usdc": _f(p.size * p.avg_price), "current_value": _f(p.size * cur),
                "realized_pnl": 0.0, "unrealized_pnl": _f(p.size * (cur - p.avg_price)),
                "total_size": _f(p.total_bought), "redeemable": m.winner is not None, "mergeable": False,
                "last_event_at": p.last_event_at, "first_entry_at": p.opened_at,
            })
        next_cursor = _b64({"i": start_index + limit, "l": limit}) if has_more else None
        return {"data": data or None,
                "pagination": {"limit": limit, "offset": 0, "has_more": has_more, "next_cursor": next_cursor}}

    # --- gamma ---------------------------------------------------------------------------------------------

    def gamma_markets(self, q: dict[str, str], multi: dict[str, list[str]]) -> list[dict[str, Any]]:
        limit = _int_param(q, "limit", 20, 0, 500)
        offset = _int_param(q, "offset", 0, 0, None)
        if offset > 2000:
            raise ApiFail(422, "offset too large: use /markets/keyset")
        rows = sorted(self.world.markets.values(), key=lambda m: m.market_id)
        ids = {c.lower() for raw in multi.get("condition_ids", []) for c in raw.split(",")}
        if ids:
            rows = [m for m in rows if m.condition_id in ids]
        closed = _bool_param(q, "closed", False)  # absent behaves as closed=false (hides resolved markets)
        rows = [m for m in rows if m.closed == closed]
        return [self._gamma_row(m) for m in rows[offset:offset + min(limit, self.config.gamma_max_rows)]]

    @staticmethod
    def _gamma_row(m: SimMarket) -> dict[str, Any]:
        prices = [str(m.price(0)), str(m.price(1))]
        return {
            "id": str(m.market_id), "question": m.question, "conditionId": m.condition_id, "slug": m.slug,
            "endDate": "2027-01-01T00:00:00Z", "active": True, "closed": m.closed, "archived": m.archived,
            "acceptingOrders": not m.closed, "umaResolutionStatus": "resolved" if m.winner is not None else None,
            "closedTime": (time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(m.closed_time))
                           if m.closed_time else None),
            "outcomes": json.dumps(list(m.outcomes)), "outcomePrices": json.dumps(prices),
            "clobTokenIds": json.dumps(list(m.assets)),
        }

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

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                split = urlsplit(self.path)
                path = split.path
                multi = parse_qs(split.query, keep_blank_values=True)
                q = {k: v[-1] for k, v in multi.items()}
                v2 = path.startswith("/v2/")
                if not path.startswith("/_sim/"):
                    wallet = (q.get("user") or "").lower() or None
                    sim.log.add(path, wallet)
                    if sim.config.before_request is not None:
                        sim.config.before_request(path, q)
                    faults = sim.config.faults
                    applies = ((faults.wallets is None or wallet in faults.wallets)
                               and (faults.routes is None or path in faults.routes))
                    retry_after = sim.limiter.admit(sim._limit_keys(path), sim.config.limits,
                                                    sim.config.max_delay_seconds)
                    if retry_after is not None:
                        body = b"<html><head><title>429 Too Many Requests</title></head><body>" \
                               b"<center><h1>429 Too Many Requests</h1></center><hr><center>cloudflare</center>" \
                               b"</body></html>"
                        self._send(429, "text/html", body, {"Retry-After": str(max(1, round(retry_after)))})
                        return
                    if applies and faults.latency_seconds > 0:
                        time.sleep(faults.latency_seconds)
                    if applies and sim._chance(faults.timeout_rate):
                        time.sleep(faults.hang_seconds)
                        self.close_connection = True
                        return
                    if applies and sim._chance(faults.error_rate):
                        self._error(v2, 503 if sim._rng.random() < 0.5 else 500, "injected failure",
                                    "dependency_unavailable")
                        return
                    if applies and sim._chance(faults.malformed_json_rate):
                        self._send(200, "application/json", b'{"data": [{"proxy_wallet": "0x', {})
                        return
                cached = sim.cdn_lookup(self.path, path, q)
                if cached is not None:
                    age, payload = cached
                    self._send(200, "application/json", payload,
                               {"Age": str(int(age)), "Cache-Control": f"max-age={sim.cdn_seconds(path, q):.0f}"})
                    return
                try:
                    status, body, headers = sim.route(path, q, multi)
                except ApiFail as exc:
                    self._error(v2 or path.startswith("/_sim/"), exc.status, exc.message, exc.code, exc.parameter)
                    return
                except (ValueError, KeyError) as exc:
                    self._error(v2, 400, f"bad request: {exc}", "invalid_request")
                    return
                if not path.startswith("/_sim/") and applies:
                    body = sim._corrupt(body)
                payload = json.dumps(body).encode()
                if status == 200 and not path.startswith("/_sim/"):
                    sim.cdn_store(self.path, path, q, payload)
                self._send(status, "application/json", payload, headers)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/_sim/faults":
                    wallets = payload.pop("wallets", None)
                    routes = payload.pop("routes", None)
                    broken = payload.pop("broken_txs", ())
                    sim.set_faults(Faults(**payload, wallets=frozenset(wallets) if wallets else None,
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
                sim.log.add_status(status)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        return Handler
