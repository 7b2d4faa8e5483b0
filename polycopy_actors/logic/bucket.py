"""Token bucket with reservations (pure; the RateLimiter actor wraps it).

``reserve(now)`` takes one token, possibly going into debt, and returns how long the caller must
wait before sending: the bucket never sleeps, so one thread can serve a whole tier. A 429 from the
API ``throttle``s the bucket: nothing is granted before ``paused_until`` and the rate is halved,
recovering linearly over ``recovery_seconds``.
"""

from __future__ import annotations

import math


class TokenBucket:
    """Not thread-safe: owned by one actor (or one test)."""

    def __init__(self, rate: float, burst: int, now: float, recovery_seconds: float = 60.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now
        self.paused_until = now
        self.penalty_started: float | None = None
        self.penalty_factor = 1.0
        self.recovery_seconds = recovery_seconds

    def effective_rate(self, now: float) -> float:
        if self.penalty_started is None:
            return self.rate
        progress = min(1.0, (now - self.penalty_started) / self.recovery_seconds)
        factor = self.penalty_factor + (1.0 - self.penalty_factor) * progress
        if progress >= 1.0:
            self.penalty_started = None
            self.penalty_factor = 1.0
        return self.rate * factor

    def _refill(self, now: float) -> None:
        start = max(self.updated, self.paused_until)
        if now > start:
            self.tokens = min(float(self.burst), self.tokens + (now - start) * self.effective_rate(now))
        self.updated = max(self.updated, now)

    def reserve(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; return seconds to wait before using them (0 = go now)."""
        self._refill(now)
        self.tokens -= cost
        start = max(now, self.paused_until)
        if self.tokens >= 0:
            return start - now
        return start - now + (-self.tokens) / self.effective_rate(now)

    def throttle(self, now: float, seconds: float) -> None:
        """The API said 429: pause for ``seconds`` and halve the rate (it recovers over time). A negative
        or non-finite ``seconds`` (infinity, NaN: a hostile ``Retry-After``) counts as 0, so the bucket
        can never be paused for ever; the rate is halved all the same."""
        if not (math.isfinite(seconds) and seconds > 0):
            seconds = 0.0
        self._refill(now)
        self.paused_until = max(self.paused_until, now + seconds)
        self.tokens = min(self.tokens, 0.0)
        self.penalty_factor = max(0.1, (self.penalty_factor if self.penalty_started else 1.0) / 2)
        self.penalty_started = now
