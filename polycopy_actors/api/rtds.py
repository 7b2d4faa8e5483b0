"""The RTDS websocket (``activity``/``trades``): one connection and the parsing of its frames.

Facts relied on (``polymarket-api.md``, "Real time and whole-platform coverage"; the sample frame in
``polymarket-samples/rtds_activity_trades_frame__index-63281558533.json``):

- subscribe with ``{"action": "subscribe", "subscriptions": [{"topic": "activity", "type": "trades"}]}``;
  no wallet filter exists, so the client filters the whole platform's flow;
- a frame is ``{"connection_id", "topic", "type", "timestamp" (ms), "payload"}``; the payload is a v1
  trade row (camelCase, ``proxyWallet`` in EIP-55 mixed case, ``timestamp`` in seconds, often one second
  before the block time the REST routes show);
- a text ``PING`` every 5 s keeps the stream alive (without it, it goes silent while open).

:class:`RtdsConnection` is used by one thread at a time (the StreamReader's reader thread).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from polycopy_actors.api.models import MalformedItem, RawFill, parse_fill

SUBSCRIBE = json.dumps({"action": "subscribe", "subscriptions": [{"topic": "activity", "type": "trades"}]})


class StreamError(Exception):
    """The connection failed or closed (the reader reconnects)."""


def parse_frame(raw: str | bytes) -> RawFill | None:
    """The fill of one ``activity``/``trades`` frame; None for a frame of anything else (``PONG``, other
    topics, server messages). Raises :class:`MalformedItem` for a trades frame that cannot be used, and
    for a frame that does not parse for any reason (not JSON, or nested too deeply: a ``RecursionError``
    is no ``ValueError``, and escaping would crash the reader again and again)."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not raw.startswith("{"):
        return None
    try:
        frame = json.loads(raw, parse_float=Decimal)
    except ValueError:
        raise MalformedItem("frame", "not JSON") from None
    except RecursionError:
        raise MalformedItem("frame", "JSON nested too deeply") from None
    if not isinstance(frame, dict) or frame.get("topic") != "activity" or frame.get("type") != "trades":
        return None
    try:
        return parse_fill(frame.get("payload"))
    except RecursionError:
        raise MalformedItem("frame", "payload nested too deeply") from None


class RtdsConnection:
    """One websocket connection, subscribed to ``activity``/``trades``."""

    def __init__(self, url: str, open_timeout_seconds: float) -> None:
        try:
            self._ws: ClientConnection = connect(url, open_timeout=open_timeout_seconds, ping_interval=None,
                                                 close_timeout=1, max_size=2**20, proxy=None, legacy=True)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise StreamError(f"cannot connect: {type(exc).__name__}: {exc}") from None
        self.send(SUBSCRIBE)

    def send(self, text: str) -> None:
        try:
            self._ws.send(text)
        except (ConnectionClosed, OSError) as exc:
            raise StreamError(f"closed: {exc}") from None

    def recv(self, timeout_seconds: float) -> str | bytes | None:
        """The next frame, or None when none came within the timeout."""
        try:
            return self._ws.recv(timeout=timeout_seconds)
        except TimeoutError:
            return None
        except (ConnectionClosed, OSError) as exc:
            raise StreamError(f"closed: {exc}") from None

    def close(self) -> None:
        try:
            self._ws.close()
        except (ConnectionClosed, OSError):
            pass

    def __enter__(self) -> RtdsConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
