"""A watchdog for database work that must end: it cuts the connection of a transaction that runs past
its deadline.

``statement_timeout`` and ``lock_timeout`` are enforced by the server, and TCP keepalives notice a peer
that is gone; neither helps when the path stalls in silence (a NAT that forgot the connection, a proxy
or middlebox that stops forwarding while both sockets stay open): the calling thread would wait inside
libpq forever. Shutting the socket down from the watchdog's thread makes that wait end at once with a
connection error, which the caller handles as any outage.

One :class:`ConnectionWatchdog` per owning actor (the DbWriter, the DbReader): its daemon thread only
waits for deadlines and shuts sockets down; :meth:`ConnectionWatchdog.guard` is used from the owner's
thread. This is also why the pools are made without a ``check`` callback: that check runs a query on
a pooled connection before the owner gets it, where no watchdog can guard it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


def deadline_seconds(statement_timeout_seconds: float) -> float:
    """How long a transaction may run before its connection is cut: well past the server's own
    ``statement_timeout`` (which comes first while the server answers), plus a transaction's few
    statements."""
    return 1.5 * statement_timeout_seconds + 2.0


class ConnectionWatchdog:
    """See the module docstring. ``what``: the owner's work, for the log line when it fires."""

    def __init__(self, name: str, what: str) -> None:
        self.what = what
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._deadline: float | None = None
        self._stopped = False
        #: Connections cut so far.
        self.fired = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, conn: Any, seconds: float) -> Iterator[None]:
        """Cut ``conn``'s socket if the block is still running ``seconds`` from now (one block at a time)."""
        with self._cond:
            self._fd, self._deadline = conn.fileno(), time.monotonic() + seconds
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._fd = self._deadline = None
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None or self._fd is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                fd, self._fd, self._deadline = self._fd, None, None
                self.fired += 1
                log.error("%s ran past its deadline (statement timeout x 1.5 + 2 s): cutting its database "
                          "connection (the server no longer answers on it)", self.what)
                try:
                    sock = socket.socket(fileno=os.dup(fd))
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    finally:
                        sock.close()
                except OSError as exc:
                    log.warning("could not cut the stuck connection: %s", exc)
