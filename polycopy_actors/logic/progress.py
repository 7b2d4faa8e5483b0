"""A pass over the tier (``--once`` or a cold sweep) and the wallets each poller holds (pure: no
threads, no I/O; owned by the Progress actor)."""

from __future__ import annotations


class PassProgress:
    """Pollers register their wallets of the pass and report each one done; the pass is finished when
    every poller has finished. Sets (not counters), so that a restarted poller counts nothing twice."""

    def __init__(self, pollers: int) -> None:
        self.pollers = pollers
        self._finished: set[int] = set()
        self._wallets: set[str] = set()
        self._swept: set[str] = set()
        #: Wallets held by each poller (a continuous run has them too).
        self._held: dict[int, int] = {}

    def add(self, wallets: tuple[str, ...] | list[str]) -> None:
        self._wallets.update(wallets)

    def drop(self, wallet: str) -> None:
        """The wallet left the tier during the pass."""
        self._wallets.discard(wallet)
        self._swept.discard(wallet)

    def swept(self, wallet: str) -> None:
        self._swept.add(wallet)

    def finished(self, poller: int) -> bool:
        """Record one poller's end of pass; True once every poller has finished."""
        self._finished.add(poller)
        return self.done

    @property
    def done(self) -> bool:
        return len(self._finished) >= self.pollers

    def progress(self) -> tuple[int, int]:
        """(wallets done, wallets in the pass)."""
        return len(self._swept), len(self._wallets)

    def held(self, poller: int, count: int) -> int:
        """Record how many wallets one poller holds; returns the process's total."""
        self._held[poller] = count
        return sum(self._held.values())
