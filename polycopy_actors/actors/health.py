"""HealthMonitor actor: the one owner of what ``/healthz`` answers for this process.

Owns a :class:`~polycopy_actors.observe.health.HealthState`. Every actor of the tree tells it its facts
(``ReadOk``, ``PathState``, ``DbState``, ``WriterState``, ``RowsRefused``, ``FeedClock``); the run loop and
the HTTP thread ``ask(HealthCheck)`` it, with a timeout (an actor that does not answer is unhealthy).
Started first in the tree, so every other child gets its ref. Handlers only update the state and
return: it never does I/O, so it answers at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pykka

from polycopy_actors.actors.messages import (
    DbState,
    FeedClock,
    HealthCheck,
    PathState,
    ReadOk,
    RowsRefused,
    WriterState,
)
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.observe.health import HealthReport, HealthState


class HealthMonitorActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring. ``polling``: whether the tier is expected to read (a pass or a
    continuous run: always, in a process that runs actors)."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, health_window_seconds: float,
                 backlog_alarm_rows: int, paths: dict[str, str]) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.state = HealthState(health_window_seconds, backlog_alarm_rows, time.monotonic())
        for path, value in paths.items():
            self.state.set_path(path, value)
        self.state.start(time.monotonic())
        self._handlers: dict[type, Callable[[Any], Any]] = {
            ReadOk: lambda m: self.state.read_succeeded(m.kind, time.monotonic()),
            PathState: lambda m: self.state.set_path(m.name, m.state),
            DbState: lambda m: self.state.set_db(m.state, m.detail, time.monotonic()),
            WriterState: self._writer,
            RowsRefused: lambda m: self.state.rows_refused(m.count, m.message),
            FeedClock: lambda m: self.state.set_feed_clock(m.text),
            HealthCheck: lambda m: self.report(),
        }

    def _writer(self, message: WriterState) -> None:
        self.state.set_writer(message.rows, message.waiting)
        self.state.set_flush(message.flush_started)

    def report(self) -> HealthReport:
        return self.state.report(time.monotonic())
