"""Running a tier from the command line: database, schema, demo, metrics, signals, actor system."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from typing import Any

from polycopy_actors import store
from polycopy_actors.config import Settings
from polycopy_actors.db import Database, connect, describe_dsn, open_database, wait_reachable
from polycopy_actors.exitcodes import RET_CONFIG, ExitError
from polycopy_actors.metrics import HealthState, MetricsServer
from polycopy_actors.system import ActorSystem

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
    """The built-in simulator on a free port, driven by a background thread."""
    from polycopy_actors.simulator import SimConfig, Simulator, World  # noqa: PLC0415

    world = World(seed=settings.demo.seed, wallets=max(settings.demo.wallets, 8))
    for _ in range(30):
        world.step()
    sim = Simulator(world, SimConfig(seed=settings.demo.seed)).start()
    sim.drive(settings.demo.event_interval_seconds)
    api = dataclasses.replace(settings.api, data_api_url=sim.base_url, gamma_api_url=sim.base_url)
    log.info("demo: simulator serving the Polymarket API at %s (%d wallets trading)", sim.base_url,
             len(world.wallets))
    return dataclasses.replace(settings, api=api), sim


def run_tier_command(settings: Settings, tier: str, once: bool = False) -> int:
    """``python -m polycopy_actors --tier T``: returns the exit code."""
    if settings.processes > 1:
        raise ExitError(RET_CONFIG, f"processes: {settings.processes}: sharded runs are not available in this "
                                    "version; use processes: 1")
    from polycopy_actors.cli import prepare_schema  # noqa: PLC0415

    stop = threading.Event()
    _install_signals(stop)
    sim = None
    if settings.demo.enabled:
        settings, sim = _start_demo(settings)
    db: Database = open_database(settings)
    metrics_server = None
    try:
        wait_reachable(db.dsn, settings)
        prepare_schema(db, settings)
        if sim is not None:
            wallets = sim.world.wallets[: settings.demo.wallets]
            with connect(db.dsn, settings) as conn, conn.transaction():
                store.follow(conn, wallets, "demo")
            log.info("demo: following %d simulated wallets: %s", len(wallets), ", ".join(wallets))
        ts = settings.tier(tier)
        log.info(
            "starting tier %s (env %s): database %s%s, data API %s (%s), %s req/s burst %d, %d pollers, "
            "schedule %s", tier, settings.env, describe_dsn(db.dsn), " (embedded)" if db.embedded else "",
            settings.api.data_api_url, settings.api.data_api_version, f"{ts.rate_limit.requests_per_second:g}",
            ts.rate_limit.burst, settings.pollers.pool_size, ts.schedule,
        )
        health = HealthState(settings.metrics.api_failure_window_seconds, settings.writer.backlog_alarm_rows)
        if settings.metrics.port:
            try:
                metrics_server = MetricsServer(settings.metrics.host, settings.metrics.port, health.check).start()
            except OSError as exc:
                raise ExitError(RET_CONFIG, f"metrics.port {settings.metrics.port}: cannot listen ({exc.strerror})"
                                ) from None
        system = ActorSystem(settings, tier, db.dsn, health=health, once=once)
        return system.run(stop)
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        db.close()
        if sim is not None:
            sim.stop()
