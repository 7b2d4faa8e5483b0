"""The simulator's routes: what each request of the data API (v1, v2), gamma and the admin routes
answers from the world, with the API's parameters, caps, defaults and errors. Rows are rendered by
:mod:`polycopy_actors.simulator.render`. Called from the HTTP threads; each route holds the world's lock.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from polycopy_actors.simulator import poison, render
from polycopy_actors.simulator.world import SimFill, SimPosition, World

if TYPE_CHECKING:  # the HTTP side owns the routes; only its type is needed here
    from polycopy_actors.simulator.http import Simulator


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


def is_global_feed(path: str, q: dict[str, str]) -> bool:
    """The bare ``/v2/trades``: no user, no market or event filter (every wallet's fills)."""
    return path == "/v2/trades" and not any(
        q.get(k) for k in ("user", "condition", "condition_id", "conditionId", "event_id"))


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


class Routes:
    """The API's answers, read from ``world`` under its lock; the current ``sim.config`` applies."""

    def __init__(self, world: World, sim: Simulator) -> None:
        self.world = world
        self.sim = sim

    def route(self, path: str, q: dict[str, str], multi: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        """Answer one request of the API (or an admin route): (status, body, headers); raises ApiFail."""
        future: frozenset[int] = frozenset()
        routes: dict[str, Callable[[], Any]] = {
            "/trades": lambda: self.v1_trades(q, future),
            "/activity": lambda: self.v1_activity(q, future),
            "/positions": lambda: self.v1_positions(q),
            "/closed-positions": lambda: self.v1_closed_positions(q),
            "/v2/trades": lambda: self.v2_feed(q, "trades", future),
            "/v2/activity": lambda: self.v2_feed(q, "activity", future),
            "/v2/positions": lambda: self.v2_positions(q),
            "/v2/status": self.v2_status,
            "/markets": lambda: self.gamma_markets(q, multi),
            "/_sim/truth": self.world.truth,
            "/_sim/stats": self.sim.log.snapshot,
            "/_sim/wallets": lambda: {"wallets": list(self.world.wallets)},
            "/_sim/elsewhere": lambda: {"url": self.sim.elsewhere_url, "requests": self.sim.elsewhere_requests},
        }
        answer = routes.get(path)
        if answer is None:
            raise ApiFail(404, f"no route {path}", code="not_found")
        with self.world.lock:
            future = self._future(path, q)
            return 200, answer(), {}

    # --- poison ----------------------------------------------------------------------------------------

    def _future(self, path: str, q: dict[str, str]) -> frozenset[int]:
        """``future_row`` poison: the sequence numbers of the poisoned wallets' newest fills (in the world),
        served with ``poison.FUTURE_TS`` by this request; empty when it does not apply to its route."""
        faults = self.sim.config.faults
        if ("future_row" not in faults.poison or path not in poison.TRADE_ROUTES
                or not faults.route_matches(path, is_global_feed(path, q))):
            return frozenset()
        by_wallet = self.world.fills_by_wallet
        wallets = by_wallet if faults.wallets is None else faults.wallets
        return frozenset(max(by_wallet[w], key=lambda f: (f.timestamp, f.seq)).seq
                         for w in wallets if by_wallet.get(w))

    @staticmethod
    def _shifted(rows: list[tuple[int, int, Any]], future: frozenset[int]) -> list[tuple[int, int, Any]]:
        """``future_row``: the rows of ``future`` fills as served (a copy with the 2099 timestamp); the
        world's fill is never changed. Rows are (timestamp, seq, fill or activity)."""
        if not future:
            return rows
        return [(poison.FUTURE_TS, r[1], replace(r[2], timestamp=poison.FUTURE_TS))
                if r[1] in future and isinstance(r[2], SimFill) else r for r in rows]

    # --- data API v1 -----------------------------------------------------------------------------------

    def _visible(self, wallet: str | None) -> list[SimFill]:
        """The fills a route shows now: a wallet's feed ``user_feed_delay_seconds`` after the match, the
        global feed ``global_feed_delay_seconds`` after it."""
        cfg = self.sim.config
        delay = cfg.user_feed_delay_seconds if wallet is not None else cfg.global_feed_delay_seconds
        fills = self.world.fills_by_wallet.get(wallet, []) if wallet is not None else self.world.fills
        if delay <= 0:
            return fills
        cutoff = time.time() - delay
        return [f for f in fills if f.matched_at <= cutoff]

    def _fills_of(self, wallet: str | None, taker_only: bool) -> list[SimFill]:
        rows = [f for f in self._visible(wallet) if f.taker or not taker_only]
        rows.sort(key=lambda f: (f.timestamp, f.seq), reverse=True)
        return rows

    def v1_trades(self, q: dict[str, str], future: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
        wallet = _wallet_param(q, required="market" not in q)
        limit = _int_param(q, "limit", 100, 0, 10_000)
        offset = _int_param(q, "offset", 0, 0, 10_000)
        rows = self._fills_of(wallet, _bool_param(q, "takerOnly", True))
        if "market" in q:
            markets = set(q["market"].split(","))
            rows = [f for f in rows if f.market.condition_id in markets]
        if future:
            served = self._shifted([(f.timestamp, f.seq, f) for f in rows], future)
            served.sort(key=lambda r: (r[0], r[1]), reverse=True)
            rows = [r[2] for r in served]
        return [render.v1_fill(f) for f in rows[offset:offset + limit]]

    def _activity_rows(self, wallet: str, types: set[str] | None, start: int, end: int,
                       future: frozenset[int] = frozenset()) -> list[tuple[int, int, Any]]:
        """A wallet's activity rows in ``[start, end]`` (by their real time), as served, newest first."""
        rows: list[tuple[int, int, Any]] = []
        if types is None or "TRADE" in types:
            rows += [(f.timestamp, f.seq, f) for f in self._visible(wallet)]
        rows += [(a.timestamp, a.seq, a) for a in self.world.activity
                 if a.wallet == wallet and (types is None or a.type in types)]
        rows = self._shifted([r for r in rows if start <= r[0] <= end], future)
        rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
        return rows

    def _types(self, q: dict[str, str]) -> set[str] | None:
        raw = q.get("type")
        return set(raw.split(",")) if raw else None

    def v1_activity(self, q: dict[str, str], future: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
        wallet = _wallet_param(q)
        assert wallet is not None
        limit = _int_param(q, "limit", 100, 0, 500, clamp=True)
        offset = _int_param(q, "offset", 0, 0, 5_000)
        now = int(time.time())
        start = _int_param(q, "start", now - 3 * 365 * 86400, 0, None)
        end = _int_param(q, "end", now + 86400, 0, None)
        rows = self._activity_rows(wallet, self._types(q), start, end, future)
        return [render.v1_activity_row(r[2]) for r in rows[offset:offset + limit]]

    def _listed_positions(self, wallet: str, floor: Decimal, sort_by: str = "CURRENT_VALUE",
                          ascending: bool = False, include_archived: bool = False) -> list[SimPosition]:
        lag = self.sim.config.positions_lag_seconds
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
        return [render.v1_position(p) for p in rows[offset:offset + limit]]

    # --- data API v2 -----------------------------------------------------------------------------------

    def _v2_limit(self, q: dict[str, str], default: int = 100) -> int:
        if "offset" in q:
            raise ApiFail(400, "offset paging is not supported on v2: follow pagination.next_cursor",
                          parameter="offset")
        return _int_param(q, "limit", default, 0, 1000)

    def v2_feed(self, q: dict[str, str], kind: str, future: frozenset[int] = frozenset()) -> dict[str, Any]:
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
        elif kind == "trades" and is_global_feed("/v2/trades", q):
            # The bare global feed: the current and previous month; start/end are ignored.
            start, end = now - 62 * 86400, now + 86400
        else:
            if "start" in q or "end" in q:
                raise ApiFail(400, "'start'/'end' are only supported with 'user'", parameter="start")
            start, end = now - 3 * 365 * 86400, now + 86400
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
            rows_t = self._shifted([r for r in rows_t if start <= r[0] <= end], future)
        else:
            assert wallet is not None
            rows_t = self._activity_rows(wallet, self._types(q), start, end, future)
        if (q.get("sort_direction") or "DESC").upper() == "ASC":
            rows_t.sort(key=lambda r: (r[0], r[1]))
            if cursor is not None:
                rows_t = [r for r in rows_t if (r[0], r[1]) > (cursor["ts"], cursor["seq"])]
        else:
            if future:
                rows_t.sort(key=lambda r: (r[0], r[1]), reverse=True)
            if cursor is not None:
                rows_t = [r for r in rows_t if (r[0], r[1]) < (cursor["ts"], cursor["seq"])]
        page = rows_t[:limit]
        has_more = len(rows_t) > limit
        next_cursor = _b64({"ts": page[-1][0], "seq": page[-1][1], "l": limit}) if has_more and page else None
        row_of = render.v2_fill if kind == "trades" else render.v2_activity_row
        return {"data": [row_of(r[2]) for r in page],
                "pagination": {"limit": limit, "offset": 0, "has_more": has_more, "next_cursor": next_cursor}}

    def v2_status(self) -> dict[str, Any]:
        """Data freshness (docs: "Get data freshness"): a background snapshot, its age, the serving
        lag (worst projection, named) and the ingestion tail. Not paginated, no parameters."""
        now = time.time()
        lag = self.sim.config.status_lag_seconds
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
        return [render.v1_closed_position(c, self.world.markets[c.condition_id])
                for c in self._closes_of(wallet)[offset:offset + limit]]

    def _v2_closed(self, wallet: str, start_index: int, limit: int) -> tuple[list[dict[str, Any]], bool]:
        rows = self._closes_of(wallet)
        data = [render.v2_closed_position(c, self.world.markets[c.condition_id])
                for c in rows[start_index:start_index + limit]]
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
        data = [render.v2_position(p) for p in page]
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
        return [render.gamma_row(m) for m in rows[offset:offset + min(limit, self.sim.config.gamma_max_rows)]]

