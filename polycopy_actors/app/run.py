"""Running a tier from the command line: database, schema, demo, metrics, signals, actor system."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from polycopy_actors.actors.tree import ActorSystem, runs_stream
from polycopy_actors.api.client import ApiError, PolymarketClient, Transport
from polycopy_actors.app.shards import ShardSet
from polycopy_actors.app.sweep import PassRunner, SweepLoop, discover_traders
from polycopy_actors.config import Settings
from polycopy_actors.db import queries
from polycopy_actors.db.connect import Database, connect, describe_dsn, open_database, wait_reachable
from polycopy_actors.db.migrate import prepare_schema
from polycopy_actors.exitcodes import RET_CONFIG, ExitError
from polycopy_actors.logic.bucket import TokenBucket
from polycopy_actors.observe import MetricsServer, metrics
from polycopy_actors.observe.health import HealthReport
from polycopy_actors.simulator import SimConfig, Simulator, World

log = logging.getLogger("polycopy_actors")


def _install_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            log.error("second signal: exiting at once")
            os._exit(1)
        log.info("received %s: stopping (flushing buffered rows)", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _start_demo(settings: Settings) -> tuple[Settings, Any]:
    """The built-in simulator on a free port, driven by a background thread: the API with the live
    delays after the match (stream 2 s, a wallet's feed 5 s, the global feed 7 s) and the RTDS stream,
    plus 200 other traders whose fills the stream and the feed carry too."""

    # A new world each run (its seed plus the start time): wallets and fills never repeat an earlier run's.
    seed = settings.demo.seed * 1_000_003 + int(time.time())
    world = World(seed=seed, wallets=max(settings.demo.wallets, 8))
    for _ in range(30):
        world.step()
    sim = Simulator(world, SimConfig(seed=seed, stream_delay_seconds=2.0, user_feed_delay_seconds=5.0,
                                     global_feed_delay_seconds=7.0)).start()
    sim.drive(settings.demo.event_interval_seconds, background_wallets=200, background_fills_per_second=20)
    api = dataclasses.replace(settings.api, data_api_url=sim.base_url, gamma_api_url=sim.base_url)
    stream = dataclasses.replace(settings.stream, url=sim.rtds_url if settings.stream.url else "")
    log.info("demo: simulator serving the Polymarket API at %s and the RTDS stream at %s (%d wallets trading)",
             sim.base_url, sim.rtds_url, len(world.wallets))
    return dataclasses.replace(settings, api=api, stream=stream), sim


class ProcessHealth:
    """What ``/healthz`` answers for the process that serves it: the actor system running now (asked of
    its HealthMonitor), or, in a sharded parent, whether every shard runs and reports healthy. The main
    thread sets ``system``/``running``; the HTTP thread reads them (one reference each: no lock needed)."""

    def __init__(self, shards: ShardSet | None = None) -> None:
        self.shards = shards
        self.running = False
        #: The actor system of this process now (None: a sharded parent, or a cold tier between sweeps).
        self.system: ActorSystem | None = None

    def report(self) -> HealthReport:
        if not self.running:
            return HealthReport(False, "supervisor not running")
        if self.shards is not None:
            alive, wanted = self.shards.alive()
            if self.shards.procs and alive < wanted:
                return HealthReport(False, f"{wanted - alive} of {wanted} shards down")
            if self.shards.procs and metrics.shards_healthy() is False:
                return HealthReport(False, "a shard is unhealthy (see its log lines)")
            return HealthReport(True, "ok")
        system = self.system
        if system is None:
            return HealthReport(True, "ok", {"tier": "between two sweeps"})
        return system.check()


def _in_process(settings: Settings, tier: str, dsn: str, health: ProcessHealth) -> PassRunner:
    """The actor system in this process (``processes: 1``)."""

    def run(stop: threading.Event, once: bool, polled_before: datetime | None,
            keep_going: Callable[[], bool] | None) -> int:
        system = ActorSystem(settings, tier, dsn, once=once, polled_before=polled_before)
        health.system = system
        try:
            return system.run(stop, keep_going)
        finally:
            health.system = None

    return run


def _discovery(settings: Settings, tier: str, dsn: str) -> Callable[[], None] | None:
    if not settings.discovery.enabled:
        return None

    rate = settings.tier(tier).rate_limit
    bucket = TokenBucket(rate.requests_per_second, rate.burst, time.monotonic())

    def discover() -> None:
        client = PolymarketClient(settings.api, Transport(
            settings.api, acquire=lambda endpoint: time.sleep(bucket.reserve(time.monotonic()))))
        try:
            discover_traders(settings, dsn, client)
        except ApiError as exc:
            log.warning("trader discovery skipped this sweep: %s", exc)
        finally:
            client.close()

    return discover


def run_tier_command(settings: Settings, tier: str, once: bool = False) -> int:
    """``python -m polycopy_actors --tier T``: returns the exit code. With ``processes > 1`` the
    caller has prepared the multiprocess metrics directory first (see :mod:`polycopy_actors.app.shards`)."""

    stop = threading.Event()
    _install_signals(stop)
    sim = None
    if settings.demo.enabled:
        settings, sim = _start_demo(settings)
    db: Database = open_database(settings)
    metrics_server = None
    health = ProcessHealth()
    try:
        wait_reachable(db.dsn, settings)
        prepare_schema(db, settings)
        if sim is not None:
            wallets = sim.world.wallets[: settings.demo.wallets]
            with connect(db.dsn, settings) as conn, conn.transaction():
                queries.unfollow_all(conn, "demo")  # an earlier run's demo wallets are not in this world
                queries.follow(conn, wallets, "demo")
                queries.add_traders(conn, sim.world.wallets[settings.demo.wallets:])
            log.info("demo: following %d simulated wallets: %s", len(wallets), ", ".join(wallets))
        ts = settings.tier(tier)
        log.info(
            "starting tier %s (env %s): database %s%s, data API %s (%s), %s req/s burst %d, %d process(es) x %d "
            "pollers, schedule %s", tier, settings.env, describe_dsn(db.dsn), " (embedded)" if db.embedded else "",
            settings.api.data_api_url, settings.api.data_api_version, f"{ts.rate_limit.requests_per_second:g}",
            ts.rate_limit.burst, settings.processes, settings.pollers.pool_size, ts.schedule,
        )
        metrics.describe_process(
            tier, settings.env, "once" if once else ts.schedule,
            runs_stream(settings, tier, once),
            ts.rate_limit.requests_per_second, ts.health_window_seconds, ts.sweep_interval_seconds)
        shards = ShardSet(settings, tier, db.dsn) if settings.processes > 1 else None
        health.shards = shards
        runner: PassRunner = shards if shards is not None else _in_process(settings, tier, db.dsn, health)
        if settings.metrics.port:
            try:
                metrics_server = MetricsServer(settings.metrics.host, settings.metrics.port, health.report).start()
            except OSError as exc:
                raise ExitError(RET_CONFIG, f"metrics.port {settings.metrics.port}: cannot listen ({exc.strerror})"
                                ) from None
        health.running = True
        if ts.schedule in ("sweep", "events"):
            loop = SweepLoop(settings, tier, db.dsn, runner, once, discover=_discovery(settings, tier, db.dsn))
            return loop.run(stop)
        return runner(stop, once, None, None)
    finally:
        health.running = False
        if metrics_server is not None:
            metrics_server.stop()
        db.close()
        if sim is not None:
            sim.stop()
