"""Supervision for pykka, after Erlang/OTP (pykka has none of its own).

A child reports its failure from ``on_failure`` with ``tell(ChildExited)``; the supervisor also
sweeps ``is_alive()`` every ``liveness_interval_seconds``, because an exception in ``on_start``
stops an actor without calling ``on_failure``. A restart is a new actor instance with a new ref:
children get their siblings' refs through their start function. Restart intensity: more than
``max_restarts`` in ``period_seconds`` and the supervisor stops its children in reverse order and
fails itself (its own supervisor decides, or at the top ``on_give_up`` ends the process, exit 4).

Threads: the Supervisor actor's own thread runs every hook and handler; its ticker thread only
sends it ``LivenessCheck``.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback as tb
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pykka

from polycopy_actors.actors.messages import ChildExited, Crash, LivenessCheck, Ticker
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)

_seen_failures: set[tuple[str, str]] = set()
_seen_lock = threading.Lock()

StartFn = Callable[[pykka.ActorRef[Any], dict[str, pykka.ActorRef[Any]]], pykka.ActorRef[Any]]


class SupervisedMixin:
    """Mixed into supervised actors: report failures to ``self.supervisor`` as ``child_name``."""

    supervisor: pykka.ActorRef[Any]
    child_name: str
    actor_ref: pykka.ActorRef[Any]
    #: The handler of each message type, set by the actor (this empty default is never written).
    _handlers: dict[type, Callable[[Any], Any]] = {}  # noqa: RUF012 - read-only default

    def on_receive(self, message: Any) -> Any:
        """pykka's hook (the actor's thread): the fault-injection ``Crash`` raises here, for every
        supervised actor; everything else goes to :meth:`receive`."""
        if isinstance(message, Crash):
            raise RuntimeError(message.reason)
        return self.receive(message)

    def receive(self, message: Any) -> Any:
        """The actor's own messages (its thread): the handler of the message's type in ``_handlers`` (what
        has none is ignored); an exception from a ``tell`` reaches ``on_failure``."""
        handler = self._handlers.get(type(message))
        return handler(message) if handler is not None else None

    def on_failure(self, exception_type: type[BaseException] | None, exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        error = f"{exception_type.__name__ if exception_type else 'Error'}: {exception_value}"
        # The traceback of a failure is logged once per actor and error, not on every repeat of a loop
        # (pykka's own "Unhandled exception" lines are silenced in logs.setup_logging).
        with _seen_lock:
            first = (self.child_name, error) not in _seen_failures
            _seen_failures.add((self.child_name, error))
        if first and exception_type is not None:
            log.warning("%s crashed: %s\n%s", self.child_name, error,
                        "".join(tb.format_exception(exception_type, exception_value, traceback)).rstrip())
        try:
            self.supervisor.tell(ChildExited(self.child_name, self.actor_ref.actor_urn, error))
        except pykka.ActorDeadError:
            pass  # the supervisor is gone too: the process is stopping


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child; ``start(supervisor_ref, refs_of_earlier_siblings)``."""

    name: str
    start: StartFn
    #: Seconds to wait for the child to stop (the writer flushes while stopping).
    stop_timeout: float = 5.0


class Supervisor(SupervisedMixin, pykka.ThreadingActor):
    """Starts children in order, restarts them by strategy, stops them in reverse."""

    use_daemon_thread = True

    def __init__(
        self,
        name: str,
        *,
        specs: list[ChildSpec],
        strategy: str,
        max_restarts: int,
        period_seconds: float,
        liveness_interval_seconds: float,
        supervisor: pykka.ActorRef[Any] | None = None,
        on_give_up: Callable[[str], None] | None = None,
        route: Callable[[Any], list[str]] | None = None,
    ) -> None:
        """``route``: for a supervisor that also forwards work to its children (the PollerPool), the
        names of the children a message that is not the supervisor's own goes to (to the child running
        now: a restarted child gets what arrives after its restart)."""
        super().__init__()
        self.route = route
        if strategy not in ("one_for_one", "rest_for_one"):
            raise ValueError(f"unknown strategy {strategy}")
        self.child_name = name
        self.supervisor = supervisor  # type: ignore[assignment]
        self.specs = specs
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.period = period_seconds
        self.liveness_interval = liveness_interval_seconds
        self.on_give_up = on_give_up
        self.children: dict[str, pykka.ActorRef[Any]] = {}
        self.restarts: deque[float] = deque()
        self.gave_up = False
        self._ticker: Ticker | None = None

    # --- life cycle ----------------------------------------------------------------------------------

    def on_start(self) -> None:
        for spec in self.specs:
            self._start_child(spec)
        self._ticker = Ticker(self.actor_ref, LivenessCheck(), self.liveness_interval, f"{self.child_name}-liveness")

    def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()

    def on_stop(self) -> None:
        self._stop_ticker()
        self._stop_children(0)

    def _start_child(self, spec: ChildSpec) -> None:
        siblings = {name: ref for name, ref in self.children.items()}
        self.children[spec.name] = spec.start(self.actor_ref, siblings)

    def _stop_children(self, from_index: int) -> None:
        for spec in reversed(self.specs[from_index:]):
            ref = self.children.get(spec.name)
            if ref is None:
                continue
            try:
                ref.stop(block=True, timeout=spec.stop_timeout)
            except pykka.Timeout:
                log.error("%s: child %s did not stop within %.0f s", self.child_name, spec.name, spec.stop_timeout)
            except pykka.ActorDeadError:
                pass

    # --- messages ----------------------------------------------------------------------------------------

    def receive(self, message: Any) -> Any:
        if isinstance(message, ChildExited):
            ref = self.children.get(message.name)
            if ref is not None and ref.actor_urn == message.ref_id and not self.gave_up:
                self._restart(message.name, message.error)
        elif isinstance(message, LivenessCheck):
            for spec in self.specs:
                ref = self.children.get(spec.name)
                if ref is not None and not ref.is_alive() and not self.gave_up:
                    self._restart(spec.name, "found dead (stopped without reporting, e.g. failed on_start)")
                    break
        elif message == "children":
            return dict(self.children)
        elif self.route is not None:
            for name in self.route(message):
                ref = self.children.get(name)
                if ref is not None:
                    try:
                        ref.tell(message)
                    except pykka.ActorDeadError:
                        pass  # restarting: the new instance reads its wallets afresh
        return None

    def _restart(self, name: str, error: str) -> None:
        now = time.monotonic()
        self.restarts.append(now)
        while self.restarts and self.restarts[0] < now - self.period:
            self.restarts.popleft()
        if len(self.restarts) > self.max_restarts:
            self.gave_up = True
            reason = (f"{self.child_name}: {name} failed ({error}); more than {self.max_restarts} restarts in "
                      f"{self.period:.0f} s: giving up")
            log.error(reason)
            self._stop_ticker()
            self._stop_children(0)
            if self.supervisor is not None:
                try:
                    self.supervisor.tell(ChildExited(self.child_name, self.actor_ref.actor_urn, reason))
                except pykka.ActorDeadError:
                    pass
            if self.on_give_up is not None:
                self.on_give_up(reason)
            self.actor_ref.stop(block=False)
            return
        metrics.ACTOR_RESTARTS.labels(_metric_name(name)).inc()
        index = next(i for i, s in enumerate(self.specs) if s.name == name)
        last = len(self.specs) if self.strategy == "rest_for_one" else index + 1
        log.warning("%s: restarting %s after failure (%s); restart %d of %d allowed in %.0f s",
                    self.child_name, ", ".join(s.name for s in self.specs[index:last]), error,
                    len(self.restarts), self.max_restarts, self.period)
        if self.strategy == "rest_for_one":
            self._stop_children(index)
            for spec in self.specs[index:]:
                self._start_child(spec)
        else:
            ref = self.children.get(name)
            if ref is not None and ref.is_alive():
                ref.stop(block=False)
            self._start_child(self.specs[index])


def _metric_name(child: str) -> str:
    """Small fixed label set: ``poller-3`` -> ``poller``."""
    return child.split("-")[0]
