"""Progress actor: the one owner of what the pollers of this process hold and have done.

Owns a :class:`~polycopy_actors.logic.progress.PassProgress`: the wallets each poller holds (it sets
``polycopy_wallets{tier}``) and, in a pass (``--once`` or a cold sweep), the pass's wallets and which
are done; when every poller has finished its pass it sets the ``done`` event the run loop waits on.
Pollers tell it (``WalletCount``, ``PassWallets``, ``PassSwept``, ``PassDropped``, ``PassFinished``); the
run loop asks ``PassProgress``. No I/O: it answers at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pykka

from polycopy_actors.actors.messages import (
    PassDropped,
    PassFinished,
    PassProgress,
    PassSwept,
    PassWallets,
    WalletCount,
)
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.logic.progress import PassProgress as Progress
from polycopy_actors.observe import metrics


class ProgressActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring. ``done``: set when the pass is finished (None: a continuous run)."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, tier: str, pollers: int,
                 done: threading.Event | None) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.tier = tier
        self.done = done
        self.progress = Progress(pollers)
        self._handlers: dict[type, Callable[[Any], Any]] = {
            WalletCount: lambda m: metrics.WALLETS.labels(self.tier).set(self.progress.held(m.poller, m.count)),
            PassWallets: lambda m: self.progress.add(m.wallets),
            PassSwept: lambda m: self.progress.swept(m.wallet),
            PassDropped: lambda m: self.progress.drop(m.wallet),
            PassFinished: self._finished,
            PassProgress: lambda m: self.progress.progress(),
        }

    def _finished(self, message: PassFinished) -> None:
        if self.progress.finished(message.poller) and self.done is not None:
            self.done.set()
