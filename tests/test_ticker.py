"""One way to drive time: a ``Ticker`` keeps at most one tick of its own waiting in an actor's mailbox,
even while the actor handles ticks it tells itself (a poller going on at once after a poll): other
messages never wait behind a pile of ticks."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest

from polycopy_actors.actors.messages import Tick, Ticker


class Busy(pykka.ThreadingActor):
    """Each tick takes 10 ms and tells itself another one, like a poller with wallets always due."""

    def __init__(self, done: threading.Event) -> None:
        super().__init__()
        self.done = done
        self.ticker: Ticker | None = None
        self.kick = Tick()
        self.kicked = False
        self.most_waiting = 0
        self.handled = 0

    def on_start(self) -> None:
        self.ticker = Ticker(self.actor_ref, Tick(), 0.005, "test-ticker")

    def on_stop(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()

    def on_receive(self, message: Any) -> Any:
        if message == "stats":
            return self.most_waiting, self.handled
        assert self.ticker is not None
        self.ticker.ack(message)
        if message is self.kick:
            self.kicked = False
        self.handled += 1
        self.most_waiting = max(self.most_waiting, self.actor_inbox.qsize())
        time.sleep(0.01)  # the work of one poll
        if not self.kicked:
            self.kicked = True
            self.actor_ref.tell(self.kick)
        if self.handled >= 100:
            self.done.set()
        return None


@pytest.mark.timeout(30)
def test_a_ticker_never_piles_ticks_up_behind_the_ones_an_actor_tells_itself():
    done = threading.Event()
    ref = Busy.start(done)
    try:
        assert done.wait(20)
        most_waiting, handled = ref.ask("stats", timeout=5)
    finally:
        ref.stop()
    assert handled >= 100
    assert most_waiting <= 2  # the ticker's own tick and the one the actor told itself
