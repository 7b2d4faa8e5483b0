"""MarketWatcher actor: notices when a market the tier's wallets hold closes or resolves.

Owns: the set of markets it has seen closed (asked no more), one :class:`PolymarketClient`, and its
timer. Every ``reconcile.market_watch_interval_seconds`` it asks the DbWriter which markets the
wallets of this shard hold in ``positions_current``, asks gamma for the state of those not yet seen
closed (batches of 20, ``closed=true`` first: see :meth:`~polycopy_actors.api.gamma.Gamma.market_states`),
and asks for a read of every holder of a market that closed (``Demand`` reason ``market``, routed by the
PollerPool): the poller then sees the positions turn redeemable, or vanish, and classifies the closes
from the evidence. Its requests go through the tier's rate limiter, and one round asks about at most as
many markets as a tenth of the tier's budget over the interval allows (20 a request); with more held
markets than that, the rounds take turns through them. Its Ticker sends ``Tick`` every interval (the
first one an interval after the start); a round never waits inside its handler, so a stop or a restart
is immediate.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pykka

from polycopy_actors.actors.base import TierApiActor
from polycopy_actors.actors.context import ASK_FAILURES, Refs, TierContext, shard_wallets
from polycopy_actors.actors.messages import ASK_TIMEOUT_SECONDS, Demand, HeldMarkets, Tick
from polycopy_actors.api.client import ApiError, Stopped

log = logging.getLogger(__name__)

#: Closed markets remembered (a closed market never opens again; the set is bounded all the same).
MAX_REMEMBERED = 200_000


class MarketWatcherActor(TierApiActor):
    """See the module docstring."""

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, ctx: TierContext, refs: Refs) -> None:
        super().__init__(supervisor, name=name, ctx=ctx, refs=refs)
        assert refs.reader is not None and refs.pool is not None
        self.reader, self.pool = refs.reader, refs.pool
        self.closed: set[str] = set()
        #: Where the next round starts in the sorted list of held markets (rounds take turns).
        self.offset = 0
        #: The first round comes an interval after the start (positions are read at the start anyway).
        self.next_round = time.monotonic() + ctx.settings.reconcile.market_watch_interval_seconds

    def tickers(self) -> list[tuple[Any, float]]:
        return [(Tick(), self.ctx.settings.reconcile.market_watch_interval_seconds)]

    def handlers(self) -> dict[type, Any]:
        return {Tick: self._tick}

    def _tick(self, message: Tick) -> None:
        now = time.monotonic()
        if self.ctx.stopping.is_set() or now < self.next_round:
            return
        self.next_round = now + self.ctx.settings.reconcile.market_watch_interval_seconds * 0.9
        try:
            self._watch()
        except Stopped:
            return

    def _watch(self) -> None:
        assert self.client is not None
        try:
            wallets = shard_wallets(self.ctx, self.reader)
            held: dict[str, list[str]] = self.reader.ask(HeldMarkets(tuple(sorted(wallets))),
                                                         timeout=ASK_TIMEOUT_SECONDS)
        except ASK_FAILURES as exc:
            log.warning("market watch: the database did not answer (%s); next round", exc or type(exc).__name__)
            return
        pending = sorted(cid for cid in held if cid not in self.closed)
        if not pending:
            return
        ts, interval = self.ctx.tier_settings, self.ctx.settings.reconcile.market_watch_interval_seconds
        most = 20 * max(1, int(ts.rate_limit.requests_per_second / self.ctx.shard_count * interval * 0.1))
        start = self.offset % len(pending)
        ask = (pending[start:] + pending[:start])[:most]
        self.offset = start + len(ask)
        try:
            states = self.client.market_states(ask)
        except ApiError as exc:
            log.warning("market watch: gamma failed (%s: %s); next round", exc.kind, exc)
            return
        now = time.monotonic()
        newly = [cid for cid in ask if states.get(cid) is True]
        for cid in newly:
            for wallet in held[cid]:
                self.pool.tell(Demand(wallet, "market", now))
        if len(self.closed) + len(newly) > MAX_REMEMBERED:
            self.closed.clear()
        self.closed.update(newly)
        if newly:
            log.info("market watch: %d held market(s) closed; reading their %d holder(s)", len(newly),
                     len({w for cid in newly for w in held[cid]}))
