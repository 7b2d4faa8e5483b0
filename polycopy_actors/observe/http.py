"""The ``/metrics`` and ``/healthz`` HTTP server (a daemon thread; the aggregate of every shard in
multiprocess mode).

It listens on 0.0.0.0 by default, so it is built for hostile clients: each connection gets a socket
timeout and an overall deadline, and at most :data:`MAX_HANDLER_THREADS` connections are served at
once (a connection beyond that is closed at once). Hundreds of half-sent requests therefore hold a
handful of threads for a few seconds, and ``/healthz`` answers again as soon as they time out.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from polycopy_actors.observe.health import HealthReport
from polycopy_actors.observe.metrics import registry_for_exposition

log = logging.getLogger(__name__)

#: Socket timeout of one connection (each read or write): a half-sent request is dropped after this.
REQUEST_TIMEOUT_SECONDS = 5.0
#: A connection still open after this long (a client trickling bytes) is shut down.
CONNECTION_DEADLINE_SECONDS = 15.0
#: Connections served at once, each by a thread of its own; one more is closed at once.
MAX_HANDLER_THREADS = 16


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a bounded number of handler threads and per-connection deadlines."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_HANDLER_THREADS)
        self._lock = threading.Lock()
        #: Open connections and their deadlines (monotonic).
        self._open: dict[socket.socket, float] = {}
        #: Connections closed at once because every handler thread was busy.
        self.refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        with self._lock:
            self._open[request] = time.monotonic() + CONNECTION_DEADLINE_SECONDS
        try:
            threading.Thread(target=self._serve, args=(request, client_address), name="metrics-http-conn",
                             daemon=True).start()
        except RuntimeError:  # no thread can be started now
            self._done(request)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: Any) -> None:
        with self._lock:  # removed before it is closed: _shut never touches a closed socket
            self._open.pop(request, None)
        self.shutdown_request(request)
        self._slots.release()

    def _shut(self, expired_only: bool) -> None:
        now = time.monotonic()
        with self._lock:
            for conn, deadline in self._open.items():
                if not expired_only or deadline < now:
                    try:
                        conn.shutdown(socket.SHUT_RDWR)  # its handler's blocked read or write returns
                    except OSError:
                        pass

    def service_actions(self) -> None:
        """Called by ``serve_forever`` between requests (at least every 0.5 s): enforce the deadlines."""
        self._shut(expired_only=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (or was cut off) mid-request is no error worth a traceback; anything
        else is logged once with its traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("metrics server: a connection ended early", exc_info=True)
        else:
            log.exception("metrics server: error answering a request")

    def server_close(self) -> None:
        super().server_close()
        self._shut(expired_only=False)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a daemon thread."""

    def __init__(self, host: str, port: int, health: Callable[[], HealthReport | tuple[bool, str]],
                 details: Callable[[], dict[str, str]] | None = None) -> None:
        """``health``: a :class:`HealthReport` (status, reason and the JSON's other fields: ``paths``,
        ``database``...) or ``(ok, reason)``; ``details``: the detection paths, when ``health`` gives none."""
        registry = registry_for_exposition()
        health_fn = health
        details_fn = details

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT_SECONDS  # set on the socket of each connection

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.split("?")[0] == "/metrics":
                    body = generate_latest(registry) if registry is not None else generate_latest()
                    self._send(200, CONTENT_TYPE_LATEST, body)
                elif self.path.split("?")[0] == "/healthz":
                    report = health_fn()
                    if isinstance(report, HealthReport):
                        ok, reason, extra = report.ok, report.reason, dict(report.details)
                    else:
                        (ok, reason), extra = report, {}
                    answer: dict[str, object] = {"status": "ok" if ok else "unhealthy", "reason": reason}
                    if details_fn is not None and (paths := details_fn()):
                        answer["paths"] = paths
                    answer.update(extra)
                    body = json.dumps(answer, default=str).encode()
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

        self._server = _BoundedHTTPServer((host, port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics and health on port %d (/metrics, /healthz)", self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
