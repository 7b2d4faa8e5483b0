"""Helpers of the end-to-end tests: bounded waits, a tier run in a thread or as a real process,
and the comparison of the database with the simulator's ground truth."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import yaml
from prometheus_client.parser import text_string_to_metric_families

from polycopy_actors.actors.tree import ActorSystem
from polycopy_actors.config import Settings, load_settings
from polycopy_actors.db import queries
from polycopy_actors.simulator import SimConfig, Simulator, World


def fast_timings() -> dict[str, Any]:
    """The fast timings every test run uses (a fresh dict: callers may change it)."""
    return {
        "metrics": {"port": 0},
        "api": {"timeout_seconds": 2, "connect_timeout_seconds": 2, "backoff_base_seconds": 0.05,
                "backoff_max_seconds": 0.5, "max_retries": 3},
        "writer": {"flush_interval_seconds": 0.1},
        "supervision": {"liveness_interval_seconds": 0.2},
        "logging": {"summary_interval_seconds": 0},
        "pollers": {"pool_size": 2, "idle_wait_seconds": 0.05},
        "tiers": {"hot": {"refresh_interval_seconds": 0.5, "poll_interval_seconds": {"min": 0.2, "max": 0.4},
                          "wallet_cooldown_seconds": 0.2, "rate_limit": {"requests_per_second": 50, "burst": 20}}},
        # Reads on demand as often as continuous polling would (tests of the on-demand budget set their own).
        "reconcile": {"after_trade_delay_seconds": 0.2, "safety_cycle_min_seconds": 0.3,
                      "redeemable_interval_seconds": 0.3},
        "feed": {"interval_seconds": 0.3, "stale_after_seconds": 5},
        "stream": {"url": ""},
    }


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` laid over ``base`` key by key (in place); returns ``base``."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def fast_settings(sim: Simulator | None = None, env: str = "development", **overrides: Any) -> Settings:
    """Settings for tests: an environment's settings (development unless told), pointed at the
    simulator, fast timings, then ``overrides``."""
    base = fast_timings()
    if sim is not None:
        base["api"].update(data_api_url=sim.base_url, gamma_api_url=sim.base_url)
        base["stream"]["url"] = sim.rtds_url
    return load_settings(env=env, environ={}, overrides=deep_merge(base, overrides))


def wait_for(check: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] | None = None) -> Any:
    """Bounded poll of the database (or any check): no sleeps standing in for synchronisation.
    ``detail`` explains a timeout (e.g. what differs from the ground truth)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f": {detail()}" if detail else ""))
        time.sleep(0.1)


class Running:
    """An ActorSystem running in a thread, as ``python -m polycopy_actors`` runs it."""

    def __init__(self, settings: Any, dsn: str, tier: str = "hot", once: bool = False) -> None:
        self.system = ActorSystem(settings, tier, dsn, once=once)
        self.stop_event = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.system.run(self.stop_event)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def stop(self) -> int | None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        return self.code

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def follow(dsn: str, wallets: list[str]) -> None:
    with psycopg.connect(dsn) as conn:
        queries.follow(conn, wallets, "test")


def db_trades(dsn: str, wallets: list[str] | None = None) -> Counter:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT transaction_hash, asset, side, size, extract(epoch FROM traded_at)::bigint "
                            "FROM trades_public WHERE %(w)s::text[] IS NULL OR wallet = ANY(%(w)s)",
                            {"w": wallets}).fetchall()
    return Counter((r[0], r[1], r[2], Decimal(r[3]).normalize(), r[4]) for r in rows)


def truth_trades(world: World, wallets: list[str]) -> Counter:
    return Counter((f.tx, f.asset, f.side, f.size.normalize(), f.timestamp) for f in world.fills if f.wallet in wallets)


def db_positions(dsn: str, wallets: list[str] | None = None) -> dict:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT wallet, asset, size, avg_price FROM positions_current "
                            "WHERE %(w)s::text[] IS NULL OR wallet = ANY(%(w)s)", {"w": wallets}).fetchall()
    return {(r[0], r[1]): (Decimal(r[2]).normalize(), Decimal(r[3]).normalize()) for r in rows}


def truth_positions(world: World, wallets: list[str]) -> dict:
    return {(p["wallet"], p["asset"]): (Decimal(p["size"]).normalize(), Decimal(p["avg_price"]).normalize())
            for p in world.truth()["positions"] if p["wallet"] in wallets}


def db_closes(dsn: str, wallets: list[str] | None = None) -> Counter:
    with psycopg.connect(dsn) as conn:
        return Counter(conn.execute("SELECT wallet, asset, reason FROM positions_closed "
                                    "WHERE %(w)s::text[] IS NULL OR wallet = ANY(%(w)s)", {"w": wallets}).fetchall())


def truth_closes(world: World, wallets: list[str]) -> Counter:
    return Counter((c.wallet, c.asset, c.reason) for c in world.closes if c.wallet in wallets)


def tracked_closes(world: World, wallets: list[str]) -> Counter:
    """The ground truth's closes since :func:`track_from_now` (all of them without it): positions
    opened and closed before the wallets were first polled were never visible to anyone polling."""
    with world.lock:
        return Counter((x.wallet, x.asset, x.reason) for x in world.closes
                       if x.wallet in wallets and x.seq > getattr(world, "tracking_from", 0))


def converged(dsn: str, world: World, wallets: list[str], exact_closes: bool = True) -> bool:
    """Database == ground truth (closes: :func:`tracked_closes`)."""
    with world.lock:
        t, p, c = truth_trades(world, wallets), truth_positions(world, wallets), tracked_closes(world, wallets)
    got = db_closes(dsn, wallets)
    # With a world stepping faster than the polls, a position can open and close between two polls:
    # nobody polling can see that one, so then every close written must be a true one.
    closes_ok = got == c if exact_closes else not (got - c)
    return db_trades(dsn, wallets) == t and db_positions(dsn, wallets) == p and closes_ok


def report(dsn: str, world: World, wallets: list[str]) -> str:
    """What differs between the database and the ground truth (for assertion messages)."""
    with world.lock:
        t, p, c = truth_trades(world, wallets), truth_positions(world, wallets), tracked_closes(world, wallets)
    dt, dp, dc = db_trades(dsn, wallets), db_positions(dsn, wallets), db_closes(dsn, wallets)
    extra = dc - c
    truth_of_extra = [(x.reason, x.opened_at, x.closed_at) for x in world.closes for k in extra
                      if (x.wallet, x.asset) == k[:2]]
    detail = []
    for wallet, asset, _reason in extra:
        with psycopg.connect(dsn) as conn:
            detail.append(conn.execute(
                "SELECT reason, opened_at, closed_at FROM positions_closed WHERE wallet = %s AND asset = %s",
                (wallet, asset)).fetchall())
        with world.lock:
            cids = {f.market.condition_id for f in world.fills if f.asset == asset}
            detail.append([(f.timestamp, f.side, str(f.size), f.asset == asset) for f in world.fills
                           if f.wallet == wallet and f.market.condition_id in cids])
            detail.append([(a.timestamp, a.type) for a in world.activity
                           if a.wallet == wallet and a.market.condition_id in cids])
    return (f"{detail}; trades missing {dict(t - dt)} extra {dict(dt - t)}; "
            f"positions missing {[k for k in p if p[k] != dp.get(k)]} extra {[k for k in dp if k not in p]}; "
            f"closes extra {dict(extra)} (truth for those: {truth_of_extra}), missing {dict(c - dc)}")


def track_from_now(world: World) -> None:
    with world.lock:
        world.tracking_from = world.seq  # type: ignore[attr-defined]


def started_world(seed: int, markets: int, wallets: int, steps: int, **config: Any) -> tuple[World, Simulator]:
    """A seeded world stepped ``steps`` times (trading history), served by a started simulator;
    ``config``: SimConfig fields. The caller stops the simulator."""
    world = World(seed=seed, markets=markets, wallets=wallets)
    for _ in range(steps):
        world.step()
    return world, Simulator(world, SimConfig(seed=seed, **config)).start()


def cli_env(dsn: str, sim: Simulator | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``python -m polycopy_actors`` child: this database, this simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLYCOPY_", "PROMETHEUS_"))}
    env["DATABASE_URL"] = dsn
    # Never the live stream from a test: the simulator's, or none.
    env["POLYCOPY_RTDS_URL"] = sim.rtds_url if sim is not None else ""
    if sim is not None:
        env.update(POLYCOPY_DATA_API_URL=sim.base_url, POLYCOPY_GAMMA_API_URL=sim.base_url)
    env.update(extra)
    return env


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


class Proc:
    """``python -m polycopy_actors ARGS`` as a child process; its stderr is collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", "polycopy_actors", *args], env=env,
                                      stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line.rstrip("\n"))
        self.popen.stderr.close()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def search(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in list(self.lines))

    def wait(self, timeout: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
            raise AssertionError(f"process did not exit within {timeout:.0f} s; log:\n{self.log}") from None
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
        self._reader.join(timeout=10)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for a child's metrics server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` over HTTP, parsed by prometheus_client's parser: {(sample, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``(host, port)`` that can stall in silence: while frozen it
    keeps every connection open and accepts new ones, but forwards no byte either way (what a NAT that
    forgot a connection, or a stalled middlebox, looks like to both ends). Threads: one accepting, two
    per connection pumping; all daemon, all ended by :meth:`close`."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._running = threading.Event()
        self._running.set()  # set: bytes flow
        self._closed = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True).start()

    def freeze(self) -> None:
        self._running.clear()

    def thaw(self) -> None:
        self._running.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), name="tcp-proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(0.2)
        try:
            while not self._closed.is_set():
                if not self._running.wait(0.2):
                    continue  # frozen: read nothing, forward nothing
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                self._running.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._running.set()
        self._server.close()
        with self._lock:
            for s in self._conns:
                s.close()


def dsn_via(dsn: str, port: int) -> str:
    """The same database through another port of 127.0.0.1 (a proxy)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.update(host="127.0.0.1", port=str(port))
    return psycopg.conninfo.make_conninfo(**info)
