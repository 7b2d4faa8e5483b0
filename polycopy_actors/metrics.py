"""Prometheus metrics (DESIGN.md §3) and the /metrics + /healthz HTTP server.

Label values come from small fixed sets (never a wallet). In a sharded run the parent sets
``PROMETHEUS_MULTIPROC_DIR`` before any shard imports this module, so every process writes its
samples there and the parent serves the aggregate.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_mp

log = logging.getLogger(__name__)

_LAT = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG = (0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900, 3600)
_MP = "PROMETHEUS_MULTIPROC_DIR" in os.environ

API_REQUESTS = Counter("polycopy_api_requests_total", "HTTP requests to Polymarket APIs", ["endpoint", "status"])
API_DURATION = Histogram("polycopy_api_request_duration_seconds", "HTTP request duration", ["endpoint"],
                         buckets=_LAT)
API_ITEMS_MALFORMED = Counter("polycopy_api_items_malformed_total", "API items skipped as malformed",
                              ["endpoint", "field"])
API_STALE = Counter("polycopy_api_stale_responses_total", "Answers served from a cache in front of the API, read again",
                    ["endpoint"])
API_LAG = Gauge("polycopy_api_lag_seconds", "The data API's own serving lag (/v2/status)", multiprocess_mode="max")
WALLET_POLLS = Counter("polycopy_wallet_polls_total", "Wallet polls", ["tier", "result"])
TRADES_UPSERTED = Counter("polycopy_trades_upserted_total", "Trade rows upserted", ["tier"])
POSITION_CHANGES = Counter("polycopy_position_changes_total", "Position changes detected", ["kind"])
POSITIONS_CLOSED = Counter("polycopy_positions_closed_total", "Closed positions written", ["reason"])
TRADE_LAG = Histogram("polycopy_trade_ingest_lag_seconds", "now - trade time, at commit", buckets=_LAG)
DB_FLUSHES = Counter("polycopy_db_flushes_total", "Writer flushes", ["result"])
DB_FLUSH_DURATION = Histogram("polycopy_db_flush_duration_seconds", "Writer flush duration", buckets=_LAT)
ACTOR_RESTARTS = Counter("polycopy_actor_restarts_total", "Actor restarts by the supervisor", ["actor"])
WALLETS = Gauge("polycopy_wallets", "Wallets of the tier", ["tier"],
                multiprocess_mode="livesum")
RATE_WAIT = Histogram("polycopy_rate_limiter_wait_seconds", "Wait imposed by the rate limiter",
                      buckets=(0, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
RATE_THROTTLES = Counter("polycopy_rate_limiter_throttles_total", "429 answers that slowed the tier", ["tier"])
COLD_SWEEP_DURATION = Histogram("polycopy_cold_sweep_duration_seconds", "Cold sweep duration",
                                buckets=(10, 30, 60, 300, 600, 1200, 1800, 3600, 7200))
WRITER_QUEUE = Gauge("polycopy_writer_queue_rows", "Rows buffered in the writer", multiprocess_mode="livesum")
LAST_POLL_SUCCESS = Gauge("polycopy_last_successful_poll_timestamp_seconds", "Time of the last successful poll",
                          ["tier"], multiprocess_mode="max")
WATERMARK_LAG = Gauge("polycopy_oldest_watermark_lag_seconds",
                      "now - the oldest successful poll (cursor advance) among the tier's wallets",
                      ["tier"], multiprocess_mode="max")
HEALTHY = Gauge("polycopy_healthy", "1 while this process's health check passes (sharded: one sample per pid)",
                multiprocess_mode="liveall")
DB_POOL = Gauge("polycopy_db_pool_connections", "Pool statistics", ["state"], multiprocess_mode="livesum")


def shards_healthy() -> bool | None:
    """Multiprocess mode: whether every live shard reports healthy (None: no shard reported yet)."""
    if not _MP:
        return None
    reg = CollectorRegistry()
    prom_mp.MultiProcessCollector(reg)
    me = str(os.getpid())  # the parent's own (unused) sample
    values = [s.value for fam in reg.collect() if fam.name == "polycopy_healthy" for s in fam.samples
              if s.labels.get("pid") != me]
    return min(values) >= 1 if values else None


def registry_for_exposition() -> CollectorRegistry | None:
    """The registry to serve: the aggregate of every process in multiprocess mode."""
    if _MP:
        reg = CollectorRegistry()
        prom_mp.MultiProcessCollector(reg)
        return reg
    return None


class HealthState:
    """What /healthz reports. Written by actors (any thread), read by the HTTP thread."""

    def __init__(self, health_window_seconds: float, backlog_alarm_rows: int) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.api_window = health_window_seconds
        self.backlog_alarm_rows = backlog_alarm_rows
        #: The process runs (service loop); between two cold sweeps it runs without polling.
        self.running = False
        self.polling = False
        self.last_poll_success = time.monotonic()
        self.db_down_since: float | None = None
        self.writer_rows = 0

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


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a daemon thread; ``health`` may be a callable or HealthState."""

    def __init__(self, host: str, port: int, health: Callable[[], tuple[bool, str]]) -> None:
        registry = registry_for_exposition()
        health_fn = health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.split("?")[0] == "/metrics":
                    body = generate_latest(registry) if registry is not None else generate_latest()
                    self._send(200, CONTENT_TYPE_LATEST, body)
                elif self.path.split("?")[0] == "/healthz":
                    ok, reason = health_fn()
                    body = json.dumps({"status": "ok" if ok else "unhealthy", "reason": reason}).encode()
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics and health on port %d (/metrics, /healthz)", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _initialise_label_sets() -> None:
    """Export every series of the fixed label sets at 0, so rates and alerts work before the first event."""
    for tier in ("hot", "cold"):
        for result in ("ok", "error"):
            WALLET_POLLS.labels(tier, result)
        TRADES_UPSERTED.labels(tier)
        RATE_THROTTLES.labels(tier)
    for kind in ("opened", "changed", "closed"):
        POSITION_CHANGES.labels(kind)
    for reason in ("manual_close", "market_closed", "redeemed"):
        POSITIONS_CLOSED.labels(reason)
    for result in ("ok", "error"):
        DB_FLUSHES.labels(result)
    for actor in ("limiter", "writer", "pool", "poller", "shard"):
        ACTOR_RESTARTS.labels(actor)


_initialise_label_sets()
