"""Shard processes (``processes: N > 1``, DESIGN.md §2).

The parent runs no actors and no pool: it spawns N shard processes (``spawn`` context), each with
its own actor tree, writer and pool, owning the wallets whose address hashes to it and ``1/N`` of
the tier's rate budget. It watches them from its main thread, restarts one that died within its own
restart intensity (``supervision.max_restarts`` in ``supervision.period_seconds``, then exit 4),
forwards SIGTERM on stop and waits for their clean exit. A shard that exits 2 (configuration) or
3 (database gone) ends the run with that code: restarting cannot help.

Metrics: the parent sets ``PROMETHEUS_MULTIPROC_DIR`` (wiped at start) before any metric exists,
every shard writes its samples there, the parent serves the aggregate and calls
``mark_process_dead`` for every shard that exits, and once for itself (it sets no live gauge).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from multiprocessing.process import BaseProcess

from prometheus_client import multiprocess

from polycopy_actors.actors.tree import ActorSystem
from polycopy_actors.app.logs import setup_logging
from polycopy_actors.app.multiproc import MULTIPROC_ENV
from polycopy_actors.config import Settings
from polycopy_actors.exitcodes import RET_CONFIG, RET_DATABASE, RET_GAVE_UP, RET_OK
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)

def _shard_main(settings: Settings, tier: str, dsn: str, index: int, count: int, once: bool,
                polled_before: datetime | None) -> None:
    """Entry point of a shard process (spawned: a fresh interpreter that inherited
    ``PROMETHEUS_MULTIPROC_DIR`` before it imported this module)."""
    setup_logging(settings.logging.level, settings.logging.format, shard=f"shard-{index + 1}/{count}")
    stop = threading.Event()
    # The parent forwards SIGTERM; a terminal's Ctrl-C reaches the whole group, so SIGINT is left to it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    system = ActorSystem(settings, tier, dsn, once=once, shard_index=index, shard_count=count,
                         polled_before=polled_before)
    code = system.run(stop)
    logging.shutdown()
    os._exit(code)  # no interpreter teardown races with daemon actor threads


class ShardSet:
    """Runs the tier as N shard processes; called from the parent's main thread only.

    Used as a :class:`polycopy_actors.app.sweep.PassRunner`: one call runs until stopped (continuous) or
    until every shard finished its pass (``once``).
    """

    def __init__(self, settings: Settings, tier: str, dsn: str) -> None:
        self.settings = settings
        self.tier = tier
        self.dsn = dsn
        self.count = settings.processes
        self.mp = multiprocessing.get_context("spawn")
        self.procs: dict[int, BaseProcess] = {}
        self.restarts: deque[float] = deque()
        # The parent runs no actors: its own samples of the live gauges (a stream never connected, a
        # health never checked, all 0) would drag the shards' min and add 0 lines, so they go.
        _mark_dead(os.getpid())

    def alive(self) -> tuple[int, int]:
        """(shards alive, shards wanted) for /healthz."""
        return sum(1 for p in self.procs.values() if p.is_alive()), self.count

    def _start(self, index: int, once: bool, polled_before: datetime | None) -> None:
        proc = self.mp.Process(target=_shard_main, name=f"shard-{index + 1}",
                               args=(self.settings, self.tier, self.dsn, index, self.count, once, polled_before))
        proc.start()
        self.procs[index] = proc
        log.info("shard %d/%d started (pid %s)", index + 1, self.count, proc.pid)

    def _reap(self, index: int) -> int:
        proc = self.procs.pop(index)
        proc.join()
        _mark_dead(proc.pid)
        return proc.exitcode if proc.exitcode is not None else 1

    def _stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.is_alive() and proc.pid is not None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.settings.shutdown_timeout_seconds
        for index, proc in list(self.procs.items()):
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("shard %d did not stop within %.0f s: killing it", index + 1,
                          self.settings.shutdown_timeout_seconds)
                proc.kill()
            self._reap(index)

    def __call__(self, stop: threading.Event, once: bool, polled_before: datetime | None,
                 keep_going: Callable[[], bool] | None) -> int:
        sup = self.settings.supervision
        for i in range(self.count):
            self._start(i, once, polled_before)
        finished: set[int] = set()
        try:
            while self.procs:
                if stop.is_set() or (keep_going is not None and not keep_going()):
                    return RET_OK
                sentinels = [p.sentinel for p in self.procs.values()]
                multiprocessing.connection.wait(sentinels, timeout=0.2)
                for index, proc in list(self.procs.items()):
                    if proc.exitcode is None:
                        continue
                    code = self._reap(index)
                    if code == RET_OK and once:
                        finished.add(index)
                        log.info("shard %d/%d finished its pass", index + 1, self.count)
                        continue
                    if code in (RET_CONFIG, RET_DATABASE):
                        log.error("shard %d exited with code %d: stopping every shard", index + 1, code)
                        return code
                    now = time.monotonic()
                    self.restarts.append(now)
                    while self.restarts and self.restarts[0] < now - sup.period_seconds:
                        self.restarts.popleft()
                    how = f"signal {-code}" if code < 0 else f"code {code}"
                    if len(self.restarts) > sup.max_restarts:
                        log.error("shard %d exited (%s): more than %d restarts in %.0f s, giving up", index + 1,
                                  how, sup.max_restarts, sup.period_seconds)
                        return RET_GAVE_UP
                    log.warning("shard %d exited (%s): restarting it (%d restart(s) in the last %.0f s)",
                                index + 1, how, len(self.restarts), sup.period_seconds)
                    metrics.ACTOR_RESTARTS.labels("shard").inc()
                    self._start(index, once, polled_before)
            return RET_OK
        finally:
            self._stop_all()


def _mark_dead(pid: int | None) -> None:
    if pid is None or MULTIPROC_ENV not in os.environ:
        return
    multiprocess.mark_process_dead(pid)
