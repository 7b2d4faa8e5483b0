"""The simulator's poison faults (``Faults.poison``, ``retry_after``) over real HTTP, raw sockets and the
real RTDS websocket: the bytes served are exactly the hostile ones, only for the poisoned wallet or
route (the other wallets' rows in the same answer are as usual), and the ground truth never changes."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from websockets.sync.client import ClientConnection, connect

from polycopy_actors.simulator import Faults, SimConfig, Simulator, World
from polycopy_actors.simulator import poison as P

EMPTY = "0x" + "7" * 40  # a wallet without any row (small answers for the trickle tests)
SURROGATE_WIRE = b'"title": "bad \\ud800 title"'
HUGE_DIGITS = re.compile(rb'"price": 0\.(\d+)[,}]')


class Case:
    """A started simulator over a world with a wallet to poison (``bad``) and a clean one (``good``),
    three taker fills each in the last minutes; ``truth`` is the ground truth before any request."""

    def __init__(self) -> None:
        self.world = World(seed=21, markets=3, wallets=2)
        self.bad, self.good = self.world.wallets
        now = int(time.time())
        m1, m2 = self.world.open_markets()[:2]
        for i, ts in enumerate((now - 300, now - 200, now - 100)):
            self.world.trade(self.bad, m1 if i % 2 else m2, 0, "BUY", 10 + i, "0.25", ts=ts)
            self.world.trade(self.good, m2, 1, "BUY", 20 + i, "0.75", ts=ts)
        self.truth = self.world.truth()
        self.sim = Simulator(self.world, SimConfig(seed=21, stream_delay_seconds=0.0, stream_early_rate=0.0)).start()

    def faults(self, **kw: Any) -> None:
        """Set faults through ``POST /_sim/faults`` (JSON lists and strings), as an out-of-process test would."""
        status, _, body = request(self.sim.port, "/_sim/faults", "POST", json.dumps(kw).encode())
        assert status == 200, body

    def get(self, path: str, **params: Any) -> tuple[int, dict[str, str], bytes]:
        """GET ``path`` with ``params`` (or a ``path`` that holds its query already)."""
        return request(self.sim.port, target(path, **params))

    def rows(self, path: str, **params: Any) -> list[dict[str, Any]]:
        status, _, raw = self.get(path, **params)
        assert status == 200, raw
        body = json.loads(raw, parse_float=Decimal)
        return body["data"] if isinstance(body, dict) else body

    def truth_unchanged(self) -> None:
        assert self.world.truth() == self.truth


@pytest.fixture()
def case() -> Iterator[Case]:
    c = Case()
    try:
        yield c
    finally:
        c.sim.stop()


def target(path: str, **params: Any) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def request(port: int, path: str, method: str = "GET", body: bytes | None = None,
            ) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh connection; redirects are not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wallet_of(row: dict[str, Any]) -> str:
    return (row.get("proxy_wallet") or row.get("proxyWallet")).lower()


def trade_routes(wallet: str) -> list[tuple[str, dict[str, Any]]]:
    """Every route that serves a wallet's trades (taker and maker)."""
    return [("/trades", {"user": wallet, "takerOnly": "false"}),
            ("/v2/trades", {"user": wallet, "taker_only": "false"}),
            ("/activity", {"user": wallet}), ("/v2/activity", {"user": wallet})]


GLOBAL = "/v2/trades?taker_only=false&limit=1000"  # the bare global feed


# --- row kinds ------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_surrogate_title_is_the_json_escape_of_a_lone_surrogate(case: Case):
    case.faults(poison=["surrogate_title"], wallets=[case.bad])
    for path, params in trade_routes(case.bad):
        status, _, raw = case.get(path, **params)
        assert status == 200 and raw.count(SURROGATE_WIRE) == 3, (path, raw[:300])
        rows = case.rows(path, **params)
        assert [r["title"] for r in rows] == ["bad \ud800 title"] * 3
        with pytest.raises(UnicodeEncodeError):
            rows[0]["title"].encode()
    for path, params in trade_routes(case.good):  # the clean wallet's answers
        _, _, raw = case.get(path, **params)
        assert b"\\ud800" not in raw
        assert all(r["title"].startswith("Simulated market") for r in case.rows(path, **params))
    # The bare global feed and a market's feed: the poisoned wallet's rows among the clean ones.
    market = case.world.open_markets()[1].condition_id
    for path, params in ((GLOBAL, {}), ("/v2/trades", {"condition": market, "taker_only": "false"}),
                         ("/trades", {"market": market, "takerOnly": "false"})):
        rows = case.rows(path, **params)
        assert {wallet_of(r) for r in rows} == {case.bad, case.good}
        assert all((r["title"] == "bad \ud800 title") == (wallet_of(r) == case.bad) for r in rows)
    # Positions are not trade rows.
    assert b"\\ud800" not in case.get("/positions", user=case.bad)[2]
    case.truth_unchanged()


@pytest.mark.timeout(30)
def test_tiny_size_is_the_literal_1e_minus_20000(case: Case):
    case.sim.set_faults(Faults(poison=frozenset({"tiny_size"}), wallets=frozenset({case.bad})))
    truth_sizes = sorted(Decimal(f["size"]) for f in case.truth["fills"] if f["wallet"] == case.good)
    for path, params in trade_routes(case.bad):
        raw = case.get(path, **params)[2]
        assert raw.count(b'"size": 1e-20000,') == 3, (path, raw[:300])
        assert [r["size"] for r in case.rows(path, **params)] == [Decimal("1e-20000")] * 3
        plain = json.loads(raw)  # a float underflows to zero
        assert [r["size"] for r in (plain["data"] if isinstance(plain, dict) else plain)] == [0.0] * 3
    for path, params in trade_routes(case.good):
        assert b"1e-20000" not in case.get(path, **params)[2]
        assert sorted(r["size"] for r in case.rows(path, **params)) == truth_sizes
    rows = case.rows(GLOBAL)
    assert sorted(r["size"] for r in rows if wallet_of(r) == case.good) == truth_sizes
    assert [r["size"] for r in rows if wallet_of(r) == case.bad] == [Decimal("1e-20000")] * 3
    case.truth_unchanged()


@pytest.mark.timeout(30)
def test_huge_precision_is_a_price_of_1200_digits(case: Case):
    case.faults(poison=["huge_precision"], wallets=[case.bad])
    for path, params in [*trade_routes(case.bad), (GLOBAL, {})]:
        raw = case.get(path, **params)[2]
        digits = [len(d) for d in HUGE_DIGITS.findall(raw)]
        assert digits.count(1200) == 3 and set(digits) <= {1200, 2}, path  # the clean rows: 0.75
        assert b'"price": ' + P.HUGE_PRICE_LITERAL.encode() in raw
        for r in case.rows(path, **params):
            assert (r["price"] == Decimal(P.HUGE_PRICE_LITERAL)) == (wallet_of(r) == case.bad)
            if wallet_of(r) == case.good:
                assert r["price"] == Decimal("0.75")
    for path, params in trade_routes(case.good):
        assert [d for d in HUGE_DIGITS.findall(case.get(path, **params)[2]) if d != b"75"] == []
    case.truth_unchanged()


@pytest.mark.timeout(30)
def test_future_row_serves_the_newest_fill_in_2099_first(case: Case):
    newest = max((f for f in case.world.fills if f.wallet == case.bad), key=lambda f: f.timestamp)
    real_ts = newest.timestamp
    case.faults(poison=["future_row"], wallets=[case.bad])
    for path, params in trade_routes(case.bad):
        rows = case.rows(path, **params)
        tx = "transaction_hash" if path.startswith("/v2") else "transactionHash"
        assert rows[0]["timestamp"] == P.FUTURE_TS == 4070908800 and rows[0][tx] == newest.tx, path
        assert all(r["timestamp"] < time.time() for r in rows[1:])
    # start/end select it by its real time; the cursor walk reads every row once.
    rows = case.rows("/v2/trades", user=case.bad, taker_only="false", start=real_ts)
    assert [(r["transaction_hash"], r["timestamp"]) for r in rows] == [(newest.tx, P.FUTURE_TS)]
    seen, cursor = [], None
    while True:
        params = {"user": case.bad, "taker_only": "false", "limit": 1, **({"cursor": cursor} if cursor else {})}
        status, _, raw = case.get("/v2/trades", **params)
        assert status == 200 and len(seen) < 10
        page = json.loads(raw)
        seen += [(r["transaction_hash"], r["timestamp"]) for r in page["data"]]
        cursor = page["pagination"]["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 3 and seen[0] == (newest.tx, P.FUTURE_TS)
    assert {tx for tx, _ in seen} == {f["transaction_hash"] for f in case.truth["fills"] if f["wallet"] == case.bad}
    # The global feed orders it first; the clean wallet's rows keep their times.
    feed = case.rows(GLOBAL)
    assert feed[0]["transaction_hash"] == newest.tx and feed[0]["timestamp"] == P.FUTURE_TS
    assert sum(r["timestamp"] == P.FUTURE_TS for r in feed) == 1
    good_truth = sorted(f["timestamp"] for f in case.truth["fills"] if f["wallet"] == case.good)
    assert sorted(r["timestamp"] for r in feed if wallet_of(r) == case.good) == good_truth
    assert sorted(r["timestamp"] for r in case.rows("/v2/trades", user=case.good, taker_only="false")) == good_truth
    assert newest.timestamp == real_ts
    case.truth_unchanged()


# --- body kinds -----------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_deep_json_nests_50000_deep(case: Case):
    deep = b"[" * 50_000 + b"]" * 50_000
    case.faults(poison=["deep_json"], wallets=[case.bad])
    status, headers, raw = case.get("/v2/trades", user=case.bad)
    assert status == 200 and headers["content-type"] == "application/json" and raw == b'{"data":' + deep + b"}"
    with pytest.raises(RecursionError):
        json.loads(raw)
    assert case.get("/trades", user=case.bad)[2] == deep
    assert case.get("/v2/positions", user=case.bad)[2] == b'{"data":' + deep + b"}"
    # The bare global feed has no user: its whole answer is poisoned when its route matches.
    assert case.get(GLOBAL)[2] == b'{"data":' + deep + b"}"
    # The clean wallet and gamma (no user) are served as usual.
    assert len(case.rows("/v2/trades", user=case.good, taker_only="false")) == 3
    assert len(case.rows("/markets")) == 3
    case.sim.set_faults(Faults(poison=frozenset({"deep_json"}), routes=frozenset({"/markets"})))
    assert case.get("/markets")[2] == deep
    assert len(case.rows("/v2/trades", user=case.bad, taker_only="false")) == 3
    case.truth_unchanged()


@pytest.mark.timeout(30)
def test_endless_cursor_repeats_the_same_cursor(case: Case):
    case.faults(poison=["endless_cursor"], wallets=[case.bad])
    for path, params in (("/v2/trades", {"taker_only": "false", "limit": 1}), ("/v2/activity", {"limit": 1}),
                         ("/v2/positions", {})):
        params = {"user": case.bad, **params}
        first = json.loads(case.get(path, **params)[2])
        cursor = first["pagination"]["next_cursor"]
        assert first["pagination"]["has_more"] is True and cursor, path
        pages = []
        for _ in range(5):
            page = json.loads(case.get(path, **params, cursor=cursor)[2])
            assert page["pagination"] == {**page["pagination"], "has_more": True, "next_cursor": cursor}
            pages.append(page["data"])
        assert all(p == pages[0] for p in pages) and pages[0], path  # the same rows again and again
    # The clean wallet's walk ends.
    page = json.loads(case.get("/v2/trades", user=case.good, taker_only="false")[2])
    assert page["pagination"]["has_more"] is False and page["pagination"]["next_cursor"] is None
    case.truth_unchanged()


def raw_get(port: int, path: str) -> list[tuple[float, bytes]]:
    """A GET on a raw socket: every chunk received with its time since the request was sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        t0 = time.monotonic()
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := s.recv(65536):
            chunks.append((time.monotonic() - t0, data))
    return chunks


def split_answer(chunks: list[tuple[float, bytes]]) -> tuple[bytes, bytes, float]:
    """(head, body, time the head was complete)."""
    got = b""
    for t, data in chunks:
        got += data
        if b"\r\n\r\n" in got:
            head_done = t
            break
    whole = b"".join(d for _, d in chunks)
    head, body = whole.split(b"\r\n\r\n", 1)
    return head, body, head_done


@pytest.mark.timeout(60)
def test_trickle_writes_the_body_one_byte_at_a_time(case: Case):
    step = 0.02
    case.faults(poison=["trickle"], trickle_seconds=step, wallets=[EMPTY])
    chunks = raw_get(case.sim.port, target("/v2/positions", user=EMPTY))
    head, body, head_done = split_answer(chunks)
    assert head.startswith(b"HTTP/1.1 200 ") and f"Content-Length: {len(body)}".encode() in head
    total = chunks[-1][0]
    assert head_done < 0.5 * total  # the head arrives first, at once
    assert total >= 0.95 * len(body) * step and total < len(body) * step + 10
    assert len(chunks) >= len(body) // 2  # byte by byte (a few may arrive together)
    started = time.monotonic()
    assert len(case.rows("/v2/trades", user=case.good, taker_only="false")) == 3  # a clean wallet: at once
    assert time.monotonic() - started < 2
    case.faults()
    assert case.get("/v2/positions", user=EMPTY)[2] == body  # the same bytes as a clean answer
    case.truth_unchanged()


@pytest.mark.timeout(60)
def test_trickle_headers_writes_the_head_one_byte_at_a_time(case: Case):
    step = 0.01
    case.faults(poison=["trickle_headers"], trickle_seconds=step, wallets=[EMPTY])
    chunks = raw_get(case.sim.port, target("/trades", user=EMPTY))
    head, body, head_done = split_answer(chunks)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 2" in head and body == b"[]"
    n = len(head) + 4
    assert chunks[0][0] < 0.25 * n * step and len(chunks[0][1]) < 5  # the first bytes come soon, a few at a time
    assert head_done >= 0.95 * n * step and head_done < n * step + 10
    assert len(chunks) >= n // 2
    assert chunks[-1][0] - head_done < 1.0  # then the body at once
    case.truth_unchanged()


@pytest.mark.timeout(30)
def test_redirect_points_elsewhere_and_elsewhere_serves_a_fake_trade(case: Case):
    case.faults(poison=["redirect"], wallets=[case.bad])
    assert case.sim.elsewhere_requests == 0 and case.sim.elsewhere_url != case.sim.base_url
    truth_txs = {f["transaction_hash"] for f in case.truth["fills"]}
    for path, params, tx_key in (("/v2/trades", {"user": case.bad, "taker_only": "false"}, "transaction_hash"),
                                 ("/trades", {"user": case.bad}, "transactionHash")):
        status, headers, raw = case.get(path, **params)
        assert status == 302 and raw == b""
        assert headers["location"] == case.sim.elsewhere_url + target(path, **params)
        where = urlsplit(headers["location"])
        status, _, raw = request(where.port, f"{where.path}?{where.query}")
        assert status == 200
        body = json.loads(raw)
        rows = body["data"] if path.startswith("/v2") else body
        if path.startswith("/v2"):
            assert body["pagination"]["has_more"] is False and body["pagination"]["next_cursor"] is None
        assert len(rows) == 1 and rows[0][tx_key] == P.ELSEWHERE_TX not in truth_txs
        assert wallet_of(rows[0]) == case.bad and rows[0]["side"] == "BUY"
    assert case.sim.elsewhere_requests == 2
    # A client that follows redirects (urllib) gets the fake trade: the elsewhere server counts it.
    url = case.sim.base_url + target("/v2/trades", user=case.bad)
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a local simulator
        assert json.loads(resp.read())["data"][0]["transaction_hash"] == P.ELSEWHERE_TX
    assert case.sim.elsewhere_requests == 3 and len(case.sim.elsewhere_paths) == 3
    assert json.loads(case.get("/_sim/elsewhere")[2]) == {"url": case.sim.elsewhere_url, "requests": 3}
    # The clean wallet is answered here.
    assert case.get("/v2/trades", user=case.good)[0] == 200 and case.sim.elsewhere_requests == 3
    case.truth_unchanged()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("text", ["inf", "nan", "-5", "soon", "999999"])
def test_retry_after_is_sent_as_given(case: Case, text: str):
    case.faults(retry_after=text, wallets=[case.bad])
    for path in ("/v2/trades", "/trades", "/v2/positions"):
        status, headers, raw = case.get(path, user=case.bad)
        body = json.loads(raw)
        assert status == 429 and headers["retry-after"] == text, path
        assert body["code"] == "rate_limited" and body["retryable"] is True and body["trace_id"] and body["error"]
    assert case.get("/v2/trades", user=case.good)[0] == 200
    assert case.get("/v2/status")[0] == 200  # no user: not that wallet's request
    case.faults(retry_after=text, routes=["/v2/status"])
    status, headers, raw = case.get("/v2/status")
    assert status == 503 and headers["retry-after"] == text and json.loads(raw)["code"] == "dependency_unavailable"
    assert case.get("/v2/trades", user=case.bad)[0] == 200
    case.truth_unchanged()


@pytest.mark.timeout(30)
def test_malformed_body_is_not_json(case: Case):
    case.faults(poison=["malformed_body"], wallets=[case.bad])
    for path in ("/v2/trades", "/trades", "/v2/activity", "/positions"):
        status, headers, raw = case.get(path, user=case.bad)
        assert status == 200 and headers["content-type"] == "application/json" and raw == P.MALFORMED_BODY
        with pytest.raises(ValueError):
            json.loads(raw)
    assert len(case.rows("/v2/trades", user=case.good, taker_only="false")) == 3
    # Only the global feed, by its route name: the wallets' own feeds stay clean.
    case.faults(poison=["malformed_body"], routes=["/v2/trades?global"])
    assert case.get(GLOBAL)[2] == P.MALFORMED_BODY
    assert len(case.rows("/v2/trades", user=case.bad, taker_only="false")) == 3
    case.truth_unchanged()


# --- the RTDS stream -----------------------------------------------------------------------------------


@contextmanager
def subscribed(url: str) -> Iterator[ClientConnection]:
    """A subscribed stream connection; the PONG after the subscription proves the server took it."""
    with connect(url, open_timeout=10, max_size=2**22) as ws:
        ws.send(json.dumps({"action": "subscribe", "subscriptions": [{"topic": "activity", "type": "trades"}]}))
        ws.send("PING")
        assert ws.recv(timeout=10) == "PONG"
        yield ws


@pytest.mark.timeout(60)
def test_stream_frames_of_the_poisoned_wallet(case: Case):
    world, m = case.world, case.world.open_markets()[0]
    case.faults(poison=["surrogate_title", "tiny_size", "huge_precision", "future_row"], wallets=[case.bad])
    with subscribed(case.sim.rtds_url) as ws:
        bad = world.trade(case.bad, m, 0, "BUY", 5, "0.25")
        good = world.trade(case.good, m, 0, "BUY", 6, "0.25")
        raw_bad, raw_good = ws.recv(timeout=10), ws.recv(timeout=10)
        assert SURROGATE_WIRE.decode() in raw_bad and '"size": 1e-20000,' in raw_bad
        assert f'"price": {P.HUGE_PRICE_LITERAL},' in raw_bad
        payload = json.loads(raw_bad, parse_float=Decimal)["payload"]
        assert payload["transactionHash"] == bad.tx and payload["title"] == "bad \ud800 title"
        assert payload["size"] == Decimal("1e-20000") and payload["timestamp"] == bad.timestamp  # no future_row
        clean = json.loads(raw_good, parse_float=Decimal)["payload"]
        assert clean["transactionHash"] == good.tx and clean["size"] == 6 and clean["price"] == Decimal("0.25")
        assert "\\ud800" not in raw_good
        # deep_json: the poisoned wallet's frame is replaced (its fill is not sent); the clean one follows.
        case.faults(poison=["deep_json"], wallets=[case.bad])
        bad2 = world.trade(case.bad, m, 0, "BUY", 7, "0.25")
        good2 = world.trade(case.good, m, 0, "BUY", 8, "0.25")
        deep, after = ws.recv(timeout=10), ws.recv(timeout=10)
        assert deep.endswith('"payload": ' + "[" * 50_000 + "]" * 50_000 + "}") and bad2.tx not in deep
        assert json.loads(deep[:deep.index(', "payload"')] + "}")["topic"] == "activity"
        assert json.loads(after)["payload"]["transactionHash"] == good2.tx
        # Poison named for other routes leaves the stream alone.
        case.faults(poison=["surrogate_title", "deep_json"], wallets=[case.bad], routes=["/v2/trades"])
        bad3 = world.trade(case.bad, m, 0, "BUY", 9, "0.25")
        frame = json.loads(ws.recv(timeout=10))["payload"]
        assert frame["transactionHash"] == bad3.tx and frame["title"] == m.question
    assert [f.tx for f in world.fills][-5:] == [bad.tx, good.tx, bad2.tx, good2.tx, bad3.tx]
    assert all(f.timestamp < P.FUTURE_TS for f in world.fills)


# --- the rules around them ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_admin_routes_are_never_poisoned_and_bad_faults_are_refused(case: Case):
    every = sorted(P.POISON_KINDS - {"trickle", "trickle_headers"})
    case.faults(poison=[*every, "trickle"], trickle_seconds=5, retry_after="inf")
    status, _, raw = case.get("/_sim/truth")
    assert status == 200 and json.loads(raw) == case.truth
    assert case.get("/_sim/stats")[0] == 200 and case.get("/_sim/wallets")[0] == 200
    assert case.sim.config.faults.poison == frozenset(every) | {"trickle"}
    for bad in ({"poison": ["no_such_kind"]}, {"no_such_field": 1}, {"retry_after": "1\r\nX-Evil: 1"}):
        status, _, raw = request(case.sim.port, "/_sim/faults", "POST", json.dumps(bad).encode())
        assert status == 400 and b"bad faults" in raw, bad
    case.faults()  # cleared: every route answers as usual again
    assert case.sim.config.faults == Faults()
    assert len(case.rows("/v2/trades", user=case.bad, taker_only="false")) == 3
    with pytest.raises(ValueError, match="unknown poison"):
        Faults(poison=frozenset({"nope"}))
    case.truth_unchanged()
