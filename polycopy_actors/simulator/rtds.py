"""The simulator's RTDS websocket (``wss://ws-live-data.polymarket.com``) on 127.0.0.1.

What it does, after ``polymarket-api.md`` ("Real time and whole-platform coverage"):

- subscribe with ``{"action": "subscribe", "subscriptions": [{"topic": "activity", "type": "trades"}]}``;
  an item without ``type`` fails the whole frame (``{"message": "Invalid request body"}``);
- then every fill of the platform (taker and maker legs), ``stream_delay_seconds`` after its match, one
  frame each: ``{"connection_id", "topic", "type", "timestamp" (ms), "payload"}`` with the payload in
  camelCase, ``proxyWallet`` in mixed (EIP-55-like) case and a payload ``timestamp`` often one second
  before the block time;
- a connection that sent no text ``PING`` for ``stream_ping_grace_seconds`` goes silent without closing;
  ``PING`` is answered ``PONG``;
- seeded loss (``stream_loss_rate``), and for tests: :meth:`RtdsServer.stall` (every connection silent
  while open) and :meth:`RtdsServer.drop` (every connection closed);
- poison (``Faults.poison`` when ``Faults.routes`` is None or names ``rtds``): the frames of the poisoned
  wallets' fills carry a surrogate ``title``, a ``size`` of ``1e-20000`` or a 1,200-digit ``price``, or are
  replaced by a frame whose payload nests 50,000 deep (``deep_json``); other wallets' frames are as usual.

Threads: websockets' sync server runs one thread per connection (its handler); the server loop runs
on its own thread. Shared state (stall flag, counters) is guarded by ``self._lock``.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from polycopy_actors.simulator import poison
from polycopy_actors.simulator.world import SimFill, World

if TYPE_CHECKING:
    from polycopy_actors.simulator.http import SimConfig

#: How often a connection looks for fills that became due.
TICK_SECONDS = 0.02


def mixed_case(wallet: str) -> str:
    """A deterministic mixed-case spelling of a lowercase address (the stream's EIP-55 case)."""
    digits = wallet[2:]
    return "0x" + "".join(c.upper() if c.isalpha() and i % 3 != 1 else c for i, c in enumerate(digits))


def frame_of(fill: SimFill, connection_id: str, early: bool, kinds: frozenset[str] = frozenset()) -> str:
    """The frame of one fill; ``kinds``: the poison value kinds applied to its payload."""
    m = fill.market
    payload = {
        "asset": fill.asset, "bio": "", "conditionId": m.condition_id, "eventSlug": m.slug, "icon": "",
        "name": "", "outcome": m.outcomes[fill.outcome_index], "outcomeIndex": fill.outcome_index,
        "price": float(fill.price), "profileImage": "", "proxyWallet": mixed_case(fill.wallet), "pseudonym": "",
        "side": fill.side, "size": float(fill.size), "slug": m.slug,
        "timestamp": fill.timestamp - 1 if early else fill.timestamp, "title": m.question,
        "transactionHash": fill.tx,
    }
    poison.poison_row(payload, kinds)
    return poison.encode({"connection_id": connection_id, "payload": payload, "timestamp": int(time.time() * 1000),
                          "topic": "activity", "type": "trades"}).decode("ascii")


class RtdsServer:
    """See the module docstring. ``config`` is read at each use (a test may replace the simulator's)."""

    def __init__(self, world: World, config_of: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.world = world
        self._config_of = config_of
        self._lock = threading.Lock()
        self._stalled = False
        self._drop_generation = 0
        self.stats = {"connections": 0, "frames": 0, "lost": 0, "pings": 0, "subscribed": 0}
        self._rng = random.Random(world.rng.random())
        self._server: Server = serve(self._handle, host, port, ping_interval=None, compression=None)
        self.port = self._server.socket.getsockname()[1]
        self.url = f"ws://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="simulator-rtds", daemon=True)

    @property
    def config(self) -> SimConfig:
        return self._config_of()  # type: ignore[no-any-return]

    def start(self) -> RtdsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.drop()
        self._server.shutdown()
        self._thread.join(timeout=5)

    def stall(self, stalled: bool = True) -> None:
        """Every connection goes silent while staying open (or speaks again)."""
        with self._lock:
            self._stalled = stalled

    def drop(self) -> None:
        """Close every open connection (the clients must reconnect)."""
        with self._lock:
            self._drop_generation += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.stats)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _chance(self, rate: float) -> bool:
        with self._lock:
            return rate > 0 and self._rng.random() < rate

    # --- one connection (its own thread) ---------------------------------------------------------------

    def _subscribed(self, conn: ServerConnection) -> bool:
        """Wait for a valid subscription; answer an invalid one as the live server does."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                raw = conn.recv(timeout=1)
            except TimeoutError:
                continue
            if raw == "PING":
                conn.send("PONG")
                continue
            try:
                msg = json.loads(raw)
                subs = msg["subscriptions"]
                ok = msg.get("action") == "subscribe" and isinstance(subs, list) and subs and all(
                    isinstance(s, dict) and isinstance(s.get("topic"), str) and isinstance(s.get("type"), str)
                    for s in subs)
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                conn.send(json.dumps({"message": "Invalid request body"}))
                continue
            # One unknown topic silences the whole batch.
            if all(s["topic"] == "activity" and s["type"] == "trades" for s in subs):
                return True
            return False
        return False

    def _handle(self, conn: ServerConnection) -> None:
        self._count("connections")
        connection_id = base64.b64encode(random.randbytes(12)).decode()
        with self._lock:
            generation = self._drop_generation
        try:
            if not self._subscribed(conn):
                while True:  # silent, as the live server is after a bad batch
                    conn.recv(timeout=None)
            self._count("subscribed")
            with self.world.lock:
                cursor = len(self.world.fills)
            last_ping = time.monotonic()
            while True:
                with self._lock:
                    if self._drop_generation != generation:
                        conn.close()
                        return
                    stalled = self._stalled
                try:
                    raw = conn.recv(timeout=TICK_SECONDS)
                    if raw == "PING":
                        last_ping = time.monotonic()
                        self._count("pings")
                        if not stalled:
                            conn.send("PONG")
                    continue
                except TimeoutError:
                    pass
                cfg = self.config
                silent = stalled or time.monotonic() - last_ping > cfg.stream_ping_grace_seconds
                due = time.time() - cfg.stream_delay_seconds
                with self.world.lock:
                    fills = self.world.fills
                    end = cursor
                    while end < len(fills) and fills[end].matched_at <= due:
                        end += 1
                    batch = fills[cursor:end]
                cursor = end
                if silent:
                    continue  # the frames are never sent: a silent stream loses them
                faults = cfg.faults
                poisoned = bool(faults.poison) and faults.route_matches(poison.STREAM_ROUTE)
                for fill in batch:
                    if self._chance(cfg.stream_loss_rate):
                        self._count("lost")
                        continue
                    kinds = faults.row_kinds(fill.wallet) & poison.STREAM_KINDS if poisoned else frozenset()
                    if "deep_json" in kinds:
                        conn.send(poison.deep_frame(connection_id))  # instead of the fill's frame
                    else:
                        conn.send(frame_of(fill, connection_id, self._chance(cfg.stream_early_rate), kinds))
                    self._count("frames")
        except ConnectionClosed:
            return
