"""The three detection paths end to end (real PostgreSQL, the simulator over HTTP and a real websocket):
the RTDS stream, the bare global feed, and wallet reads on demand; ``LISTEN polycopy_trades``."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import psycopg
import pytest

from polycopy_actors.simulator import SimConfig, Simulator, World
from polycopy_actors.simulator.http import DEFAULT_LIMITS, LIVE_CDN_SECONDS, Faults
from tests.helpers import (
    Proc,
    Running,
    cli_env,
    converged,
    db_trades,
    deep_merge,
    fast_settings,
    fast_timings,
    follow,
    free_port,
    healthz,
    report,
    scrape,
    started_world,
    truth_trades,
    wait_for,
    write_config,
)


class Listener:
    """``LISTEN polycopy_trades`` on its own connection and thread, as a copy-trading app would."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("LISTEN polycopy_trades")
        self.payloads: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for note in self.conn.notifies(timeout=0.2):
                self.payloads.append(json.loads(note.payload))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.conn.close()


def sources(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT source, count(*) FROM trades_public GROUP BY source").fetchall())


def unconfirmed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM trades_public WHERE confirmed_at IS NULL").fetchone()
    assert row is not None
    return int(row[0])


def stored_ids(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT trade_id FROM trades_public").fetchall()]


@pytest.mark.timeout(420)
def test_thousand_wallets_stream_stalled_dropped_and_lossy_every_fill_stored_once(db):
    """1,000 followed wallets, the platform's other traders' flow on the stream and the feed, 1 % of stream
    frames lost, the stream stalled (silent while open) and then dropped mid-run: every fill is stored
    exactly once (stream + feed + wallet reads), confirmed by REST, announced once by NOTIFY, and the
    positions equal the ground truth."""
    world = World(seed=21, markets=12, wallets=1000)
    config = SimConfig(seed=21, stream_delay_seconds=0.3, user_feed_delay_seconds=1.0, global_feed_delay_seconds=1.5,
                       stream_loss_rate=0.01, limits={k: v * 3 for k, v in DEFAULT_LIMITS.items()})
    sim = Simulator(world, config).start()
    followed = list(world.wallets)
    follow(db, followed)
    listener = Listener(db)
    settings = fast_settings(
        sim, pollers={"pool_size": 4},
        tiers={"hot": {"rate_limit": {"requests_per_second": 60, "burst": 30}}},
        stream={"silence_seconds": 2, "reconnect_min_seconds": 0.2, "reconnect_max_seconds": 1},
        reconcile={"safety_cycle_share": 1.0, "safety_cycle_min_seconds": 5, "redeemable_interval_seconds": 10},
    )
    assert sim.rtds is not None

    def traded(more: int) -> None:
        """Wait until the followed wallets made ``more`` fills (bounded)."""
        with world.lock:
            n = len(world.fills) - sum(1 for f in world.fills if f.wallet not in followed_set)
        wait_for(lambda: len(world.fills) - sum(1 for f in world.fills if f.wallet not in followed_set) >= n + more,
                 90, "trading")

    followed_set = set(followed)
    try:
        with Running(settings, db):
            sim.drive(0.2, background_wallets=300, background_fills_per_second=30)
            wait_for(lambda: sim.rtds.snapshot()["frames"] >= 50, 30, "the stream flowing")
            traded(40)
            sim.rtds.stall(True)  # silent while open: the watchdog must notice and reconnect
            connections = sim.rtds.snapshot()["connections"]
            wait_for(lambda: sim.rtds.snapshot()["connections"] >= connections + 2, 30, "reconnects while stalled")
            sim.rtds.stall(False)
            traded(40)
            connections = sim.rtds.snapshot()["connections"]
            sim.rtds.drop()
            wait_for(lambda: sim.rtds.snapshot()["connections"] > connections, 30, "a reconnect after the drop")
            traded(40)
            sim.stop_driver()
            wait_for(lambda: converged(db, world, followed, exact_closes=False) and unconfirmed(db) == 0, 200,
                     "the database equal to the ground truth, every stream row confirmed",
                     lambda: report(db, world, followed) + f"; unconfirmed {unconfirmed(db)}")
            budget_window = sim.log.max_in_window(10.0)
        # Notifications are delivered at commit; the listener's thread takes them a moment later.
        ids = stored_ids(db)
        wait_for(lambda: {p["trade_id"] for p in listener.payloads} >= set(ids), 10, "every notification read")
    finally:
        listener.close()
        sim.stop()
    truth = truth_trades(world, followed)
    assert db_trades(db, followed) == truth and sum(truth.values()) >= 120
    stats = sim.rtds.snapshot()
    assert stats["lost"] > 0  # the 1 % loss happened, and the feed filled those gaps
    by_source = sources(db)
    assert by_source.get("stream", 0) > 0 and by_source.get("feed", 0) > 0, by_source
    # NOTIFY: each new row announced once, with its wallet and tier.
    announced = Counter(p["trade_id"] for p in listener.payloads)
    assert set(announced) == set(ids) and max(announced.values()) == 1
    assert {p["tier"] for p in listener.payloads} == {"hot"}
    # The tier's budget (60 req/s, burst 30), measured at the simulator.
    assert budget_window <= 60 * 10 + 30 + 5


@pytest.mark.timeout(120)
def test_a_new_follow_is_backfilled_although_the_stream_delivered_its_newest_fill(db):
    world = World(seed=31, markets=6, wallets=4)
    sim = Simulator(world, SimConfig(seed=31, stream_delay_seconds=0.2, global_feed_delay_seconds=3)).start()
    newcomer = world.wallets[0]
    world.backlog(newcomer, 40)
    follow(db, world.wallets[1:])
    # The newcomer's own trade reads fail at first: its newest fill can only come from the stream.
    sim.set_faults(Faults(error_rate=1.0, wallets=frozenset({newcomer}), routes=frozenset({"/v2/trades"})))
    settings = fast_settings(sim)
    try:
        with Running(settings, db):
            wait_for(lambda: sim.rtds is not None and sim.rtds.snapshot()["subscribed"] >= 1, 20, "subscribed")
            follow(db, [newcomer])
            market = world.open_markets()[0]

            def streamed() -> bool:
                world.trade(newcomer, market, 0, "BUY", 3)  # until the reader's wallet set has the newcomer
                return sources(db).get("stream", 0) > 0
            wait_for(streamed, 30, "the newcomer's newest fill from the stream")
            sim.set_faults(Faults())
            wait_for(lambda: db_trades(db, [newcomer]) == truth_trades(world, [newcomer]), 30,
                     "the newcomer's whole history", lambda: f"{len(db_trades(db, [newcomer]))} stored")
    finally:
        sim.stop()
    assert sum(truth_trades(world, [newcomer]).values()) > 40


def paths(port: int) -> dict[str, str]:
    """The detection paths in a child's ``/healthz`` JSON ({} while its server is not listening yet)."""
    try:
        return healthz(port)[1].get("paths", {})
    except OSError:
        return {}


@pytest.mark.timeout(180)
def test_degradation_stream_to_feed_to_wallet_polling_is_said_out_loud(db, tmp_path):
    """Stream down -> the feed; feed down -> per-wallet polling; each switch logged once, shown in /healthz
    JSON and in the metrics; trades keep landing throughout; both paths come back."""
    world, sim = started_world(41, 4, 3, 10, stream_delay_seconds=0.2, global_feed_delay_seconds=2)
    assert sim.rtds is not None
    wallets = world.wallets
    follow(db, wallets)
    port = free_port()
    cfg = write_config(tmp_path / "paths.yaml", deep_merge(fast_timings(), {
        "metrics": {"port": port, "host": "127.0.0.1"},
        "stream": {"silence_seconds": 2, "reconnect_min_seconds": 0.2, "reconnect_max_seconds": 0.5},
        "feed": {"stale_after_seconds": 3}}))
    run = Proc(["--tier", "hot", "--config", str(cfg)], cli_env(db, sim))

    def lands(what: str) -> None:
        with world.lock:  # the driver resolves markets as it goes: buy in one still open
            world.trade(wallets[0], world.open_markets()[0], 0, "BUY", 5)
        wait_for(lambda: db_trades(db, wallets) == truth_trades(world, wallets), 20, f"a new trade landing ({what})")

    try:
        sim.drive(0.3)
        wait_for(lambda: paths(port).get("detection") == "stream+feed", 30, "stream and feed up", lambda: run.log)
        lands("stream and feed")
        # The row is visible as the flush commits; its metrics follow, and the read it asks for a moment later.
        metrics = wait_for(lambda: (m := scrape(port))
                           and m[("polycopy_trade_detect_lag_seconds_count", (("source", "stream"),))] > 0
                           and m[("polycopy_reconciles_total", (("reason", "trade"),))] > 0 and m, 15,
                           "the stream's detection and the read after the trade in the metrics")
        assert metrics[("polycopy_stream_connected", ())] == 1
        assert ("polycopy_feed_lag_seconds", ()) in metrics

        sim.rtds.stall(True)
        wait_for(lambda: paths(port) == {"stream": "down", "feed": "ok", "detection": "feed"}, 20, "the feed alone")
        assert run.search(r"stream silent for \d+ s; reconnecting")
        lands("the feed alone")

        sim.set_faults(Faults(error_rate=1.0, routes=frozenset({"/v2/trades?global"})))
        wait_for(lambda: paths(port).get("detection") == "wallet polling", 20, "per-wallet polling")
        lands("wallet polling")
        assert scrape(port)[("polycopy_stream_connected", ())] == 0
        assert scrape(port)[("polycopy_stream_reconnects_total", ())] >= 1

        sim.set_faults(Faults())
        sim.rtds.stall(False)
        wait_for(lambda: paths(port).get("detection") == "stream+feed", 30, "both paths back")
        lands("both back")
    finally:
        sim.stop_driver()
        run.popen.terminate()
        code = run.wait(30)
        sim.stop()
    assert code == 0, run.log
    # Each switch of the feed logged once (down once, healthy at start and after it came back).
    assert sum("global feed down" in line for line in run.lines) == 1, run.log
    assert sum("global feed healthy" in line for line in run.lines) == 2, run.log
    assert "Traceback" not in run.log


@pytest.mark.timeout(120)
def test_the_global_feed_is_never_answered_by_the_cdn(db):
    """The live CDN caches /v2/trades by exact URL for 300 s: every walk of the feed has its own URL, so a
    fill lands from the feed seconds after it shows there, walk after walk (the stream off here)."""
    world = World(seed=71, markets=4, wallets=3)
    sim = Simulator(world, SimConfig(seed=71, cdn_routes=dict(LIVE_CDN_SECONDS))).start()
    follow(db, world.wallets)
    settings = fast_settings(sim, stream={"url": ""},
                             reconcile={"safety_cycle_min_seconds": 600, "after_trade_delay_seconds": 30})
    market = world.open_markets()[0]
    try:
        with Running(settings, db):
            wait_for(lambda: len(sim.log.snapshot()["routes"]) > 0, 10, "the first requests")
            for i in range(3):
                world.trade(world.wallets[i], market, 0, "BUY", 5 + i)
                wait_for(lambda: db_trades(db, world.wallets) == truth_trades(world, world.wallets), 10,
                         f"fill {i + 1} from the feed")
    finally:
        sim.stop()
    assert sources(db).get("feed", 0) >= 3
