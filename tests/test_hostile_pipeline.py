"""Hostile input never stops the pipeline: a real hot tier (``python -m polycopy_actors``, real
PostgreSQL, the simulator over HTTP and a real websocket) fed one poison after another aimed at one
wallet keeps running, stores every clean wallet's trades, says what it refused, and exits 0 on SIGTERM.

The parser's and the transport's own bounds have unit tests (``test_pure.py``, ``test_hostile_api.py``);
here is what a user sees: rows in tables, ``rejected_items``, ``/healthz``, the log, the exit code.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pykka
import pytest

from polycopy_actors.actors.markets import MarketWatcherActor
from polycopy_actors.actors.messages import Crash
from polycopy_actors.actors.writer import DbWriterActor
from polycopy_actors.db.migrate import migrate
from polycopy_actors.simulator import Faults, Simulator, World
from polycopy_actors.simulator import poison as sim_poison
from tests.conftest import _with_db
from tests.helpers import (
    Proc,
    Running,
    TcpProxy,
    cli_env,
    db_trades,
    deep_merge,
    dsn_via,
    fast_settings,
    fast_timings,
    follow,
    free_port,
    healthz,
    scrape,
    started_world,
    truth_trades,
    wait_for,
    write_config,
)


def _health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        return healthz(port)
    except OSError:
        return 0, {}


def _read_wallets(dsn: str) -> int:
    """Wallets read successfully at least once (their backfill is done)."""
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM wallet_poll_state WHERE last_success_at IS NOT NULL"
                                ).fetchone()[0])


def _rejected(dsn: str, wallet: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT route, reason FROM rejected_items WHERE wallet = %s", (wallet,)).fetchall()


class Pipeline:
    """A hot tier as a child process over one world, a poisoned wallet and clean ones."""

    def __init__(self, db: str, tmp_path: Any, world: World, sim: Simulator, **config: Any) -> None:
        self.db, self.world, self.sim = db, world, sim
        self.poisoned, self.clean = world.wallets[0], world.wallets[1:]
        follow(db, world.wallets)
        self.port = free_port()
        cfg = write_config(tmp_path / "hostile.yaml", deep_merge(fast_timings(), deep_merge({
            "metrics": {"port": self.port, "host": "127.0.0.1"},
            "api": {"request_deadline_seconds": 3, "retry_after_max_seconds": 2, "max_walk_pages": 20,
                    "max_retries": 1, "status_interval_seconds": 1},
            "stream": {"silence_seconds": 3, "reconnect_min_seconds": 0.2, "reconnect_max_seconds": 0.5},
            "feed": {"stale_after_seconds": 3},
            "tiers": {"hot": {"health_window_seconds": 20}},
        }, config)))
        self.proc = Proc(["--tier", "hot", "--config", str(cfg)], cli_env(db, sim))

    def lands(self, what: str) -> None:
        """A new trade of a clean wallet, and every clean wallet's trades stored."""
        with self.world.lock:
            self.world.trade(self.clean[0], self.world.open_markets()[0], 0, "BUY", 3)
        wait_for(lambda: db_trades(self.db, self.clean) == truth_trades(self.world, self.clean), 30,
                 f"the clean wallets' trades stored ({what})",
                 lambda: f"{dict(truth_trades(self.world, self.clean) - db_trades(self.db, self.clean))}\n"
                         f"{self.proc.log[-4000:]}")
        # ... and confirmed by a REST read (the feed or a wallet read): the tier's budget still flows.
        wait_for(lambda: self._unconfirmed() == 0, 30, f"the clean wallets' rows confirmed by REST ({what})",
                 lambda: self.proc.log[-4000:])
        assert self.proc.popen.poll() is None, self.proc.log

    def hit(self, route: str, wallet: str | None, since: float, what: str) -> None:
        """Wait until the tier asked ``route`` (for ``wallet``; None: any) after ``since``: the poison served."""
        def asked() -> bool:
            with self.sim.log.lock:
                return any(t >= since and r == route and (wallet is None or w == wallet)
                           for t, r, w in self.sim.log.times)
        wait_for(asked, 30, f"the tier asking {route} ({what})", lambda: self.proc.log[-3000:])

    def says(self, text: str, after_line: int, what: str) -> None:
        """Wait until a log line written after line ``after_line`` holds ``text``."""
        wait_for(lambda: any(text in line for line in self.proc.lines[after_line:]), 30,
                 f"the log saying {text!r} ({what})", lambda: "\n".join(self.proc.lines[after_line:])[-4000:])

    def _unconfirmed(self) -> int:
        with psycopg.connect(self.db) as conn:
            return int(conn.execute("SELECT count(*) FROM trades_public WHERE wallet = ANY(%s) "
                                    "AND confirmed_at IS NULL", (self.clean,)).fetchone()[0])

    def stop(self) -> int:
        self.proc.popen.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = self.proc.wait(20)
        self.stop_seconds = time.monotonic() - started
        return code


@pytest.fixture()
def pipeline(db: str, tmp_path: Any) -> Iterator[Pipeline]:
    world, sim = started_world(71, 5, 4, 20, stream_delay_seconds=0.3)
    p = Pipeline(db, tmp_path, world, sim)
    try:
        sim.drive(0.4)
        wait_for(lambda: _health(p.port)[0] == 200, 30, "the tier healthy", lambda: p.proc.log)
        yield p
    finally:
        sim.stop_driver()
        p.proc.kill()
        sim.stop()


@pytest.mark.timeout(300)
def test_a_hot_tier_fed_every_poison_keeps_storing_clean_wallets_and_exits_0(pipeline: Pipeline):
    p, sim = pipeline, pipeline.sim
    p.lands("before any poison")
    wallet = {p.poisoned}
    # Each poison in turn, aimed at one wallet (body poisons on the bare global feed hit every wallet's
    # feed answer: the stream and the wallets' own reads carry the clean wallets meanwhile).
    # (what, faults, the route the tier must have asked while poisoned, asked for the poisoned wallet?, what
    # its log then says)
    scenarios: list[tuple[str, Faults, str, bool, str]] = [
        ("a title with a lone surrogate", Faults(wallets=wallet, poison=frozenset({"surrogate_title"})),
         "/v2/trades", True, "text that is not valid Unicode"),
        ("a size of 1e-20000", Faults(wallets=wallet, poison=frozenset({"tiny_size"})), "/v2/trades", True,
         "size: more than 30 digits after the decimal point"),
        ("a price with 1,200 digits", Faults(wallets=wallet, poison=frozenset({"huge_precision"})), "/v2/trades",
         True, "price: more than 30 digits after the decimal point"),
        ("a row from 2099", Faults(wallets=wallet, poison=frozenset({"future_row"})), "/v2/trades", False,
         "ahead of this clock"),
        ("50,000-deep JSON from every route and the stream", Faults(wallets=wallet, poison=frozenset({"deep_json"})),
         "/v2/positions", True, "nested too deeply"),
        ("Retry-After: inf", Faults(wallets=wallet, retry_after="inf", routes=frozenset({"/v2/positions"})),
         "/v2/positions", True, "unusable Retry-After 'inf'"),
        ("Retry-After: 999999 on /v2/status", Faults(retry_after="999999", routes=frozenset({"/v2/status"})),
         "/v2/status", False, "could not read the API's lag from /v2/status"),
        ("a redirect to another host", Faults(wallets=wallet, poison=frozenset({"redirect"}),
                                              routes=frozenset({"/v2/positions"})), "/v2/positions", True,
         "not followed"),
        ("a body trickling a byte a second", Faults(wallets=wallet, poison=frozenset({"trickle"}),
                                                    routes=frozenset({"/v2/positions"})), "/v2/positions", True,
         "s deadline"),
        ("a cursor that never ends", Faults(wallets=wallet, poison=frozenset({"endless_cursor"}),
                                            routes=frozenset({"/v2/positions"})), "/v2/positions", True,
         "next_cursor repeated"),
        ("trades bodies that are not JSON", Faults(wallets=wallet, poison=frozenset({"malformed_body"})),
         "/v2/trades", True, "body is not JSON"),
    ]
    for what, faults, route, of_wallet, says in scenarios:
        since = time.time()
        lines = len(p.proc.lines)
        sim.set_faults(faults)
        with p.world.lock:  # the poisoned wallet trades too: it is read on demand and by the safety cycle
            p.world.trade(p.poisoned, p.world.open_markets()[0], 1, "BUY", 1)
        p.hit(route, p.poisoned if of_wallet else None, since, what)
        p.says(says, lines, what)
        p.lands(what)
    sim.set_faults(Faults())
    # Once the API is clean again, the poisoned wallet converges too: nothing of it was lost.
    everyone = p.world.wallets
    with p.world.lock:
        p.world.trade(p.poisoned, p.world.open_markets()[0], 0, "BUY", 2)
    wait_for(lambda: db_trades(p.db, everyone) == truth_trades(p.world, everyone), 60,
             "every wallet's trades, the poisoned one's included",
             lambda: f"{dict(truth_trades(p.world, everyone) - db_trades(p.db, everyone))}\n{p.proc.log[-4000:]}")
    status, body = wait_for(lambda: (h := _health(p.port))[0] == 200 and h, 30, "/healthz 200 after the poisons")
    assert body["database"] == "ok"

    reasons = " | ".join(reason for _, reason in _rejected(p.db, p.poisoned))
    assert "not valid Unicode" in reasons and "digits after the decimal point" in reasons, reasons
    with psycopg.connect(p.db) as conn:
        assert conn.execute("SELECT count(*) FROM trades_public WHERE transaction_hash = %s",
                            (sim_poison.ELSEWHERE_TX,)).fetchone() == (0,)
        # The feed's cursor never followed the row from 2099.
        cursors = conn.execute("SELECT max(block_time) FROM feed_cursors WHERE block_time > now() + interval '5 min'"
                               ).fetchone()
    assert cursors == (None,)
    assert sim.elsewhere_requests == 0  # the redirect was never followed
    code = p.stop()
    assert code == 0, p.proc.log
    assert p.stop_seconds < 10, p.stop_seconds
    assert "Traceback" not in p.proc.log and "restarting" not in p.proc.log, p.proc.log
    assert "stopped after" in p.proc.log


def _proc(db: str, sim: Simulator, tmp_path: Any, name: str, config: dict[str, Any],
          dsn: str | None = None, stream: bool = True) -> tuple[Proc, int]:
    """The hot tier as a child process with fast timings, ``config`` and a metrics port; ``stream=False``:
    no RTDS stream (the feed or the wallets' own reads detect trades)."""
    port = free_port()
    cfg = write_config(tmp_path / f"{name}.yaml", deep_merge(fast_timings(), deep_merge(
        {"metrics": {"port": port, "host": "127.0.0.1"}}, config)))
    env = cli_env(dsn or db, sim) if stream else cli_env(dsn or db, sim, POLYCOPY_RTDS_URL="")
    return Proc(["--tier", "hot", "--config", str(cfg)], env), port


def _stop(proc: Proc) -> int:
    proc.popen.send_signal(signal.SIGTERM)
    return proc.wait(20)


@pytest.mark.timeout(120)
def test_a_row_from_the_future_never_blinds_the_global_feed(db, tmp_path):
    """The feed alone detects trades here (no stream; a wallet is read again only after 10 minutes): a row
    dated 2099 is kept, the cursor does not follow it, new trades keep landing from the feed, and /healthz
    and the metrics say a row came from the future. A cursor a former run left in 2099 is not trusted."""
    world, sim = started_world(72, 4, 3, 10, global_feed_delay_seconds=0.5)
    follow(db, world.wallets)
    poisoned, clean = world.wallets[0], world.wallets[1:]
    with psycopg.connect(db) as conn:
        conn.execute("INSERT INTO feed_cursors (name, block_time) VALUES ('trades:hot:0/1', '2099-01-01Z')")
    proc, port = _proc(db, sim, tmp_path, "future", {
        "feed": {"stale_after_seconds": 30},
        "reconcile": {"safety_cycle_min_seconds": 600, "after_trade_delay_seconds": 600,
                      "market_watch_interval_seconds": 0}}, stream=False)
    try:
        wait_for(lambda: _health(port)[0] == 200, 30, "the tier healthy", lambda: proc.log)
        wait_for(lambda: db_trades(db, world.wallets) == truth_trades(world, world.wallets)
                 and _read_wallets(db) == len(world.wallets), 30, "the backfill, every wallet read once")
        sim.set_faults(Faults(wallets={poisoned}, poison=frozenset({"future_row"}),
                              routes=frozenset({"/v2/trades?global"})))
        with psycopg.connect(db) as conn:
            (poisoned_at,) = conn.execute("SELECT now()").fetchone()
        for n in range(3):
            with world.lock:
                world.trade(poisoned, world.open_markets()[0], 0, "BUY", 1 + n)
                world.trade(clean[0], world.open_markets()[0], 1, "BUY", 1 + n)
            wait_for(lambda: db_trades(db, clean) == truth_trades(world, clean), 20,
                     f"the clean wallet's trade {n} landing from the feed", lambda: proc.log[-3000:])
        status, body = _health(port)
        assert status == 200 and "ahead of this clock" in body.get("feed_clock", ""), (body, proc.log[-3000:])
        with psycopg.connect(db) as conn:
            (cursor_ahead,) = conn.execute("SELECT extract(epoch FROM max(block_time) - now()) FROM feed_cursors"
                                           ).fetchone()
            sources = conn.execute("SELECT DISTINCT source FROM trades_public WHERE wallet = ANY(%s) "
                                   "AND created_at > %s", (clean, poisoned_at)).fetchall()
            future_rows = conn.execute("SELECT count(*) FROM trades_public WHERE traded_at > '2098-12-31Z'"
                                       ).fetchone()
        assert cursor_ahead < 60 and sources == [("feed",)]
        assert future_rows[0] >= 1  # kept: the API's clock may be the wrong one
    finally:
        code = _stop(proc)
        sim.stop()
    assert code == 0, proc.log
    assert "the stored position 2099-01-01T00:00:00+00:00 is in the future" in proc.log
    assert "ahead of this clock) read within the last 10 min: kept, the cursor does not follow them" in proc.log


@pytest.mark.timeout(120)
def test_healthz_is_503_when_every_trades_read_fails_while_positions_answer(db, tmp_path):
    world, sim = started_world(73, 3, 3, 10)
    follow(db, world.wallets)
    proc, port = _proc(db, sim, tmp_path, "trades-down", {
        "feed": {"enabled": False}, "api": {"max_retries": 0},
        "tiers": {"hot": {"health_window_seconds": 3}}}, stream=False)
    try:
        wait_for(lambda: _health(port)[0] == 200, 30, "the tier healthy", lambda: proc.log)
        sim.set_faults(Faults(poison=frozenset({"malformed_body"}), routes=frozenset({"/v2/trades"})))
        status, body = wait_for(lambda: (h := _health(port))[0] == 503 and h, 20, "/healthz 503")
        assert body["reason"].startswith("no trades read succeeded for ") and "positions reads succeed" in \
            body["reason"], body
        sim.set_faults(Faults())
        wait_for(lambda: _health(port)[0] == 200, 20, "/healthz 200 again")
    finally:
        code = _stop(proc)
        sim.stop()
    assert code == 0, proc.log


@pytest.mark.timeout(120)
def test_a_locked_table_is_a_busy_database_not_a_silent_stall(db, tmp_path):
    """Another connection holds trades_public locked: the writer's statements give up after
    db.lock_timeout_seconds, /healthz says the database is busy, and every row lands once the lock goes."""
    world, sim = started_world(74, 3, 3, 10, stream_delay_seconds=0.2)
    follow(db, world.wallets)
    proc, port = _proc(db, sim, tmp_path, "locked", {"db": {"lock_timeout_seconds": 0.5}})
    locker = psycopg.connect(db)
    try:
        wait_for(lambda: _health(port)[0] == 200, 30, "the tier healthy", lambda: proc.log)
        wait_for(lambda: db_trades(db) == truth_trades(world, world.wallets), 30, "the backfill")
        locker.execute("LOCK TABLE trades_public IN ACCESS EXCLUSIVE MODE")
        sim.drive(0.3)
        status, body = wait_for(lambda: (h := _health(port))[0] == 503 and h, 20, "/healthz 503 while locked")
        assert body["reason"].startswith("database busy for") and body["database"] == "busy", body
        locker.rollback()
        sim.stop_driver()
        wait_for(lambda: db_trades(db) == truth_trades(world, world.wallets), 30, "every trade after the lock")
        wait_for(lambda: _health(port)[0] == 200, 20, "/healthz 200 again")
    finally:
        locker.close()
        code = _stop(proc)
        sim.stop()
    assert code == 0, proc.log
    assert "LockNotAvailable" in proc.log or "lock timeout" in proc.log, proc.log


@pytest.mark.timeout(150)
def test_a_connection_dropped_in_silence_is_cut_and_nothing_is_lost(db, tmp_path):
    """Every byte between the tier and PostgreSQL stops while the connections stay open (a stalled
    middlebox): the stuck flush is cut by the writer's watchdog, /healthz turns 503 within the window,
    and when the path comes back everything buffered lands."""
    world, sim = started_world(75, 3, 3, 10, stream_delay_seconds=0.2)
    follow(db, world.wallets)
    info = psycopg.conninfo.conninfo_to_dict(db)
    proxy = TcpProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    proc, port = _proc(db, sim, tmp_path, "silent", {
        "db": {"statement_timeout_seconds": 1, "connect_timeout_seconds": 2},
        "tiers": {"hot": {"health_window_seconds": 4}}}, dsn=dsn_via(db, proxy.port))
    try:
        wait_for(lambda: _health(port)[0] == 200, 30, "the tier healthy", lambda: proc.log)
        wait_for(lambda: db_trades(db) == truth_trades(world, world.wallets), 30, "the backfill")
        proxy.freeze()
        sim.drive(0.3)
        status, body = wait_for(lambda: (h := _health(port))[0] == 503 and h, 30, "/healthz 503 while stalled")
        assert body["reason"].startswith(("writer stuck", "database unreachable")), body
        wait_for(lambda: proc.has("cutting its database connection"), 30, "the watchdog cutting the connection",
                 lambda: proc.log[-3000:])
        proxy.thaw()
        sim.stop_driver()
        wait_for(lambda: db_trades(db) == truth_trades(world, world.wallets), 60, "every trade after the stall",
                 lambda: proc.log[-3000:])
        wait_for(lambda: _health(port)[0] == 200, 30, "/healthz 200 again")
    finally:
        proxy.thaw()
        code = _stop(proc)
        proxy.close()
        sim.stop()
    assert code == 0, proc.log


@pytest.mark.timeout(120)
def test_a_bug_behind_a_database_read_reaches_the_supervisor_and_is_counted(db, tmp_path):
    """A table the feed reads is gone (a bug, not an outage): the feed fails, the supervisor restarts it
    and counts it, and the log says what happened; once the table is back, the feed runs again."""
    world, sim = started_world(76, 3, 3, 10)
    follow(db, world.wallets)
    proc, port = _proc(db, sim, tmp_path, "bug", {"supervision": {"max_restarts": 100}}, stream=False)
    try:
        wait_for(lambda: _health(port)[0] == 200, 30, "the tier healthy", lambda: proc.log)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ALTER TABLE feed_cursors RENAME TO feed_cursors_gone")
        wait_for(lambda: scrape(port).get(("polycopy_actor_restarts_total", (("actor", "feed"),)), 0) >= 1, 30,
                 "the feed's restart counted", lambda: proc.log[-3000:])
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ALTER TABLE feed_cursors_gone RENAME TO feed_cursors")
        with world.lock:
            world.trade(world.wallets[0], world.open_markets()[0], 0, "BUY", 2)
        wait_for(lambda: db_trades(db) == truth_trades(world, world.wallets), 30, "trades after the fix")
    finally:
        code = _stop(proc)
        sim.stop()
    assert code == 0, proc.log
    assert proc.search(r"feed crashed: (UndefinedTable|ProgrammingError)"), proc.log
    assert "the database did not answer" not in proc.log


@pytest.mark.timeout(60)
def test_a_restart_never_waits_out_an_interval(db, caplog):
    """The MarketWatcher's interval is a minute: a rest_for_one restart after the writer crashed is
    done at once; no actor is left "did not stop"."""
    world, sim = started_world(77, 3, 2, 10)
    follow(db, world.wallets)
    settings = fast_settings(sim, reconcile={"market_watch_interval_seconds": 60})
    try:
        with Running(settings, db) as run:
            wait_for(lambda: db_trades(db) == truth_trades(world, world.wallets), 30, "the backfill")
            old = pykka.ActorRegistry.get_by_class(DbWriterActor)[0]
            started = time.monotonic()
            old.tell(Crash("injected writer crash"))
            wait_for(lambda: any(ref is not old and ref.is_alive()
                                 for ref in pykka.ActorRegistry.get_by_class(MarketWatcherActor))
                     and not old.is_alive(), 10, "the tree after the writer restarted")
            assert time.monotonic() - started < 3
            with world.lock:
                world.trade(world.wallets[0], world.open_markets()[0], 0, "BUY", 2)
            wait_for(lambda: db_trades(db) == truth_trades(world, world.wallets), 30, "trades after the restart")
            assert run.stop() == 0
    finally:
        sim.stop()
    assert "did not stop" not in caplog.text


@pytest.mark.timeout(120)
def test_rows_a_database_refuses_are_isolated_and_every_other_row_is_written(fresh_database, pg_server, tmp_path):
    """A database whose encoding cannot hold an emoji (LATIN1) refuses the rows of one market's title: those
    rows go to rejected_items with PostgreSQL's own message, every other row is written, and /healthz
    stays 200 and says how many rows were refused."""
    name = "polycopy_latin1_" + secrets.token_hex(4)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "  # noqa: S608
                     "TEMPLATE template0")
    try:
        db = _with_db(pg_server, name)
        with psycopg.connect(db, autocommit=True) as conn:
            migrate(conn)
        world, sim = started_world(78, 4, 3, 0, stream_delay_seconds=0.2)
        follow(db, world.wallets)
        with world.lock:
            rocket = world.open_markets()[0]
            rocket.question = "Will it go to the moon \U0001F680?"
            plain = [m for m in world.open_markets() if m is not rocket][0]
            world.trade(world.wallets[0], rocket, 0, "BUY", 5)
            world.trade(world.wallets[0], plain, 0, "BUY", 4)
            world.trade(world.wallets[1], plain, 1, "BUY", 3)
        rocket_fills = Counter((f.tx, f.asset, f.side, f.size.normalize(), f.timestamp) for f in world.fills
                               if f.market is rocket)
        proc, port = _proc(db, sim, tmp_path, "latin1", {})
        try:
            wait_for(lambda: db_trades(db, world.wallets) == truth_trades(world, world.wallets) - rocket_fills, 30,
                     "every row but the refused ones", lambda: proc.log[-3000:])
            status, body = wait_for(lambda: (h := _health(port))[0] == 200 and h[1].get("database_refused_rows") and h,
                                    20, "/healthz counting the refused rows")
            with psycopg.connect(db) as conn:
                refused = conn.execute("SELECT route, reason FROM rejected_items WHERE route LIKE 'db:%'").fetchall()
            assert refused and all("latin" in reason.lower() for _, reason in refused), refused
            assert {route for route, _ in refused} >= {"db:trades_public"}
            assert proc.popen.poll() is None
        finally:
            code = _stop(proc)
            sim.stop()
        assert code == 0, proc.log
        assert "the database refused a trades_public row" in proc.log
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # noqa: S608
