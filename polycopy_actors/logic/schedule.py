"""Earliest-deadline-first schedule of one poller's wallets (pure; owned by one WalletPoller).

Every wallet has a next-due time; the most overdue wallet is polled first, so a slow wallet
delays others by at most one poll. After a poll the wallet is due again after a random interval
in ``[min, max]`` (never sooner than the cooldown); after a failure, after an exponential backoff.
"""

from __future__ import annotations

import heapq
import random


class Schedule:
    def __init__(self, cooldown: float, interval_min: float, interval_max: float,
                 rng: random.Random | None = None, max_backoff: float = 60.0) -> None:
        self.cooldown = cooldown
        self.interval_min = interval_min
        self.interval_max = interval_max
        self.max_backoff = max_backoff
        self.rng = rng or random.Random()
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, wallet: object) -> bool:
        return wallet in self._due

    def wallets(self) -> list[str]:
        return list(self._due)

    def add(self, wallet: str, due: float) -> None:
        if wallet not in self._due:
            self._due[wallet] = due
            heapq.heappush(self._heap, (due, wallet))

    def remove(self, wallet: str) -> None:
        self._due.pop(wallet, None)  # the heap entry is dropped lazily

    def _clean(self) -> None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def next_due(self) -> float | None:
        self._clean()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> str | None:
        """The most overdue wallet (due <= now), taken off the schedule until :meth:`done`."""
        self._clean()
        if not self._heap or self._heap[0][0] > now:
            return None
        _, wallet = heapq.heappop(self._heap)
        self._due[wallet] = float("inf")
        return wallet

    def done(self, wallet: str, now: float, consecutive_errors: int = 0) -> float:
        """Reschedule after a poll; returns the next due time."""
        if wallet not in self._due:
            return float("inf")
        if consecutive_errors:
            delay = min(self.max_backoff, max(self.cooldown, self.interval_min) * 2 ** min(consecutive_errors, 10))
            delay *= 0.75 + self.rng.random() / 2
        else:
            delay = max(self.cooldown, self.rng.uniform(self.interval_min, self.interval_max))
        due = now + delay
        self._due[wallet] = due
        heapq.heappush(self._heap, (due, wallet))
        return due

    def at(self, wallet: str, due: float) -> None:
        """Reschedule a taken wallet for a given time (a re-check within a pass)."""
        if wallet in self._due:
            self._due[wallet] = due
            heapq.heappush(self._heap, (due, wallet))

    def sooner(self, wallet: str, due: float) -> bool:
        """Bring a scheduled wallet's next poll forward to ``due`` (never back); True if it moved."""
        if wallet in self._due and due < self._due[wallet] != float("inf"):
            self._due[wallet] = due
            heapq.heappush(self._heap, (due, wallet))
            return True
        return False

    def park(self, wallet: str) -> None:
        """Keep the wallet but never due again (one pass done in ``--once`` or sweep mode)."""
        if wallet in self._due:
            self._due[wallet] = float("inf")
