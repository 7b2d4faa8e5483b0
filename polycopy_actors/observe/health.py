"""What ``/healthz`` answers for one process (pure: no threads, no I/O; every method takes ``now``).

The process is healthy while its actor tree runs, the database takes its writes, the writer keeps up,
and trades land: a read of the trades path (a wallet's trades, a global feed walk, the stream's flow)
succeeded within the tier's health window. Positions reads alone do not count: a tier whose every
trades read fails while its positions reads succeed stores nothing it should have.

The database's state is told apart: ``unreachable`` (connection errors, outages: 503), ``busy``
(statements cut by ``lock_timeout``/``statement_timeout``: 503), ``stuck`` (one flush running longer
than the health window: 503), and rows the database *refused* for their data (isolated into
``rejected_items``: the rest is written, so the process stays healthy and says how many).

Owned by the HealthMonitor actor (:mod:`polycopy_actors.actors.health`) in a process that runs the
tier, which every other actor tells its facts; the HTTP thread and the run loop ask that actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The database states a writer reports (``DbState``).
DB_STATES = ("ok", "unreachable", "busy")


@dataclass(frozen=True)
class HealthReport:
    """One answer of ``/healthz``: status, the reason of a 503 (``ok`` otherwise), and details."""

    ok: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class HealthState:
    """The facts ``/healthz`` is made of. Not thread-safe: one owner (the HealthMonitor actor)."""

    def __init__(self, health_window_seconds: float, backlog_alarm_rows: int, now: float) -> None:
        self.window = health_window_seconds
        self.backlog_alarm_rows = backlog_alarm_rows
        #: The actor tree runs; ``polling``: it is expected to read (a cold tier between sweeps is not).
        self.running = False
        self.polling = False
        #: Last successful read of each kind (``trades``: the trades path; ``positions``), monotonic.
        self.read_ok: dict[str, float] = {}
        self.started = now
        self.db_state = "ok"
        self.db_since: float | None = None
        self.db_detail = ""
        #: Rows buffered in the writer and messages waiting in its mailbox (each carries rows).
        self.writer_rows = 0
        self.writer_waiting = 0
        #: When the flush now running started (None: none runs).
        self.flush_started: float | None = None
        #: Rows the database refused for their data since the start, and the last refusal's message.
        self.refused_rows = 0
        self.last_refusal = ""
        #: How trades are detected: ``stream`` (connected/down/off), ``feed`` (ok/down/off).
        self.paths: dict[str, str] = {}
        #: The global feed's newest row from the future (text for /healthz; empty: none).
        self.feed_clock = ""

    # --- facts ------------------------------------------------------------------------------------------

    def start(self, now: float, polling: bool = True) -> None:
        self.running, self.polling = True, polling
        self.started = now

    def stop(self) -> None:
        self.running = self.polling = False

    def read_succeeded(self, kind: str, now: float) -> None:
        self.read_ok[kind] = now

    def set_db(self, state: str, detail: str, now: float) -> None:
        if state not in DB_STATES:
            raise ValueError(f"unknown database state {state!r}")
        if state != self.db_state:
            self.db_since = None if state == "ok" else now
        self.db_state, self.db_detail = state, detail

    def set_writer(self, rows: int, waiting: int) -> None:
        self.writer_rows, self.writer_waiting = rows, waiting

    def set_flush(self, started: float | None) -> None:
        self.flush_started = started

    def rows_refused(self, count: int, message: str) -> None:
        self.refused_rows += count
        self.last_refusal = message

    def set_path(self, name: str, state: str) -> None:
        self.paths[name] = state

    def set_feed_clock(self, text: str) -> None:
        self.feed_clock = text

    # --- answers ------------------------------------------------------------------------------------------

    def check(self, now: float) -> tuple[bool, str]:
        """(healthy, the reason when not)."""
        if not self.running:
            return False, "supervisor not running"
        if self.db_state == "unreachable" and self.db_since is not None:
            return False, f"database unreachable for {now - self.db_since:.0f} s ({self.db_detail})"
        if self.db_state == "busy" and self.db_since is not None:
            return False, f"database busy for {now - self.db_since:.0f} s: writes time out ({self.db_detail})"
        if self.flush_started is not None and now - self.flush_started > self.window:
            return False, f"writer stuck: one flush has run for {now - self.flush_started:.0f} s"
        backlog = self.writer_rows + self.writer_waiting
        if backlog > self.backlog_alarm_rows:
            return False, (f"writer backed up: {self.writer_rows} rows buffered and {self.writer_waiting} messages "
                           "waiting")
        if self.polling:
            last = self.read_ok.get("trades", self.started)
            idle = now - last
            if idle > self.window:
                positions = self.read_ok.get("positions")
                also = (" (positions reads succeed: trades reads fail)"
                        if positions is not None and now - positions <= self.window else "")
                return False, f"no trades read succeeded for {idle:.0f} s{also}"
        return True, "ok"

    def details(self, now: float) -> dict[str, Any]:
        """More fields of the ``/healthz`` JSON: ``paths`` (how trades are detected, and which path leads
        now), ``database`` (ok / unreachable / busy), the rows the database refused, the feed's clock."""
        out: dict[str, Any] = {}
        paths = dict(self.paths)
        if paths:
            if paths.get("stream") == "connected":
                paths["detection"] = "stream" + ("+feed" if paths.get("feed") == "ok" else "")
            else:
                paths["detection"] = "feed" if paths.get("feed") == "ok" else "wallet polling"
            out["paths"] = paths
        out["database"] = self.db_state
        if self.refused_rows:
            out["database_refused_rows"] = self.refused_rows
            out["database_last_refusal"] = self.last_refusal[:300]
        if self.feed_clock:
            out["feed_clock"] = self.feed_clock
        return out

    def report(self, now: float) -> HealthReport:
        ok, reason = self.check(now)
        return HealthReport(ok, reason, self.details(now))
