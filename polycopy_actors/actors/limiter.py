"""RateLimiter actor: the tier's token bucket, shared by every poller of the process.

Owns a :class:`~polycopy_actors.logic.bucket.TokenBucket`. Takes ``ask(Acquire)`` (answers seconds to
wait; it never sleeps itself) and ``tell(Throttle)`` (a 429: slow the whole tier).
"""

from __future__ import annotations

import time
from typing import Any

import pykka

from polycopy_actors.actors.messages import Acquire, Throttle
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.config import RateLimit
from polycopy_actors.logic.bucket import TokenBucket
from polycopy_actors.observe import metrics


class RateLimiterActor(SupervisedMixin, pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, tier: str, limit: RateLimit) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.tier = tier
        self.bucket = TokenBucket(limit.requests_per_second, limit.burst, time.monotonic())

    def receive(self, message: Any) -> Any:
        if isinstance(message, Acquire):
            wait = self.bucket.reserve(time.monotonic(), message.cost)
            metrics.RATE_WAIT.observe(wait)
            return wait
        if isinstance(message, Throttle):
            metrics.RATE_THROTTLES.labels(self.tier).inc()
            self.bucket.throttle(time.monotonic(), message.seconds)
            return None
        return None
