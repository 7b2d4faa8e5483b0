"""The ``/metrics`` and ``/healthz`` HTTP server (a daemon thread; the aggregate of every shard in
multiprocess mode)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from polycopy_actors.observe.metrics import registry_for_exposition

log = logging.getLogger(__name__)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a daemon thread; ``health`` may be a callable or HealthState."""

    def __init__(self, host: str, port: int, health: Callable[[], tuple[bool, str]],
                 details: Callable[[], dict[str, str]] | None = None) -> None:
        """``details``: more fields for the ``/healthz`` JSON (the detection paths)."""
        registry = registry_for_exposition()
        health_fn = health
        details_fn = details

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.split("?")[0] == "/metrics":
                    body = generate_latest(registry) if registry is not None else generate_latest()
                    self._send(200, CONTENT_TYPE_LATEST, body)
                elif self.path.split("?")[0] == "/healthz":
                    ok, reason = health_fn()
                    answer: dict[str, object] = {"status": "ok" if ok else "unhealthy", "reason": reason}
                    if details_fn is not None and (extra := details_fn()):
                        answer["paths"] = extra
                    body = json.dumps(answer).encode()
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
