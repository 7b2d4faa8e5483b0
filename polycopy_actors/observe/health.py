"""What ``/healthz`` answers for one process: the supervisor runs, the database answers, the writer
keeps up, and the tier read something successfully within its window."""

from __future__ import annotations

import threading
import time


class HealthState:
    """What /healthz reports. Written by actors (any thread), read by the HTTP thread."""

    def __init__(self, health_window_seconds: float, backlog_alarm_rows: int) -> None:
        self._lock = threading.Lock()
        self.api_window = health_window_seconds
        self.backlog_alarm_rows = backlog_alarm_rows
        #: The process runs (service loop); between two cold sweeps it runs without polling.
        self.running = False
        self.polling = False
        self.last_poll_success = time.monotonic()
        self.db_down_since: float | None = None
        self.writer_rows = 0
        #: How trades are detected: ``stream`` (connected/down/off), ``feed`` (ok/down/off).
        self._paths: dict[str, str] = {}

    def polling_started(self) -> None:
        with self._lock:
            self.running = self.polling = True
            self.last_poll_success = time.monotonic()

    def polling_stopped(self) -> None:
        with self._lock:
            self.polling = False

    def poll_succeeded(self) -> None:
        with self._lock:
            self.last_poll_success = time.monotonic()

    def set_db_down(self, down: bool) -> None:
        with self._lock:
            if down and self.db_down_since is None:
                self.db_down_since = time.monotonic()
            elif not down:
                self.db_down_since = None

    def set_writer_rows(self, rows: int) -> None:
        with self._lock:
            self.writer_rows = rows

    def set_path(self, name: str, state: str) -> None:
        with self._lock:
            self._paths[name] = state

    def paths(self) -> dict[str, str]:
        """The detection paths and which one leads now (``/healthz`` JSON): stream, feed, wallet polling."""
        with self._lock:
            paths = dict(self._paths)
        if not paths:
            return {}
        if paths.get("stream") == "connected":
            paths["detection"] = "stream" + ("+feed" if paths.get("feed") == "ok" else "")
        else:
            paths["detection"] = "feed" if paths.get("feed") == "ok" else "wallet polling"
        return paths

    def check(self) -> tuple[bool, str]:
        with self._lock:
            if not self.running:
                return False, "supervisor not running"
            if self.db_down_since is not None:
                return False, f"database unreachable for {time.monotonic() - self.db_down_since:.0f} s"
            if self.writer_rows > self.backlog_alarm_rows:
                return False, f"writer backed up: {self.writer_rows} rows buffered"
            idle = time.monotonic() - self.last_poll_success
            if self.polling and idle > self.api_window:
                return False, f"no successful poll for {idle:.0f} s"
            return True, "ok"
