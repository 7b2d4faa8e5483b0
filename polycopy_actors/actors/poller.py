"""WalletPoller actor: polls its own wallets, earliest deadline first.

Owns: the wallets of the tier whose hash falls on it and whose lease the process holds, their
schedule (cooldown, next-due time), one :class:`~polycopy_actors.logic.wallet_state.WalletState` each
(cursor, stored positions with their close evidence, malformed items, per-kind back-off), and one
:class:`PolymarketClient` (one HTTP session). Driven by ``tell(Tick)`` that it sends itself, so a
crash reaches ``on_failure`` and the supervisor.

Two schedules, one code path. While the global feed is healthy (the FeedTailer tells every poller
``FeedHealth`` through the PollerPool), trades are detected by the stream and the feed, and a wallet is
read on demand (``Demand``, routed by the PollerPool from the stream, the feed and the market watcher):
after it traded, when a market it holds closed, while it holds redeemable positions, and on a slow
safety-net cycle whose period follows from the budget (``reconcile.safety_cycle_share``). While the feed
is down, every wallet is polled continuously (every ``poll_interval_seconds``), as the only path that
still detects its trades.

Each poll makes independent reads: trades since the cursor (minus an overlap), the positions
snapshot, and, for positions missing past the grace period, the close evidence (the wallet's stored
trades from the DbWriter, its REDEEM/MERGE activity, gamma's market state). Each kind succeeds or
fails on its own: trades that were read are always delivered, a failing kind backs off alone, and
reconciliation waits for the next complete snapshot. Results go to the DbWriter by ``tell``; it asks
(with a timeout) the RateLimiter before every HTTP request, the DbReader for its wallets, their saved
state and the close evidence, and the DbWriter for their leases (renewed at every refresh). It tells
the HealthMonitor which reads succeeded and the Progress actor how many wallets it holds and, in a
pass, which are done. Time: its Ticker sends ``Tick`` every ``pollers.idle_wait_seconds``; a tick
refreshes the wallets when due and polls the most overdue wallet, then tells itself another ``Tick``
at once if more are due: no handler waits.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

import pykka

from polycopy_actors.actors.base import TierApiActor
from polycopy_actors.actors.context import ASK_FAILURES, Refs, TierContext
from polycopy_actors.actors.messages import (
    ASK_TIMEOUT_SECONDS,
    AcquireLeases,
    Demand,
    FeedHealth,
    LoadState,
    PassDropped,
    PassFinished,
    PassSwept,
    PassWallets,
    PollResult,
    ReadOk,
    ReleaseLeases,
    Tick,
    TierWallets,
    TradeEvidence,
    WalletCount,
)
from polycopy_actors.api.client import ApiError, Rejected, Stopped
from polycopy_actors.api.models import Trade
from polycopy_actors.api.wallets import poller_index, shard_of
from polycopy_actors.logic.reconcile import Close, Diff, Held, classify, diff_positions, explain
from polycopy_actors.logic.schedule import Schedule
from polycopy_actors.logic.wallet_state import WalletState
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)

class WalletPollerActor(TierApiActor):
    """See the module docstring."""

    def __init__(self, supervisor: pykka.ActorRef[Any], *, name: str, index: int, count: int, ctx: TierContext,
                 refs: Refs) -> None:
        super().__init__(supervisor, name=name, ctx=ctx, refs=refs)
        assert refs.writer is not None and refs.reader is not None and refs.progress is not None
        self.writer, self.reader, self.progress = refs.writer, refs.reader, refs.progress
        self.index = index
        self.count = count
        ts = ctx.tier_settings
        self.rng = random.Random()
        # A wallet never backs off longer than half the tier's health window: once the API answers
        # again, the tier reads within the window and /healthz recovers.
        self.schedule = Schedule(ts.wallet_cooldown_seconds, ts.poll_interval_seconds.min,
                                 ts.poll_interval_seconds.max, self.rng,
                                 max_backoff=min(60.0, ts.health_window_seconds / 2))
        self.states: dict[str, WalletState] = {}
        #: Until when (monotonic) the leases taken at the last refresh hold: no reconciling after it.
        self.lease_until = 0.0
        #: Wallets another process holds (logged once each, until it lets them go).
        self.elsewhere: set[str] = set()
        self.next_refresh = 0.0
        self.pass_pending: set[str] | None = None
        #: Until when (monotonic) the global feed counts as healthy (the FeedTailer's ``FeedHealth``); a tree
        #: with a feed gives it its stale period to prove itself.
        self.feed_until = time.monotonic() + ctx.settings.feed.stale_after_seconds if ctx.feed_expected else 0.0
        #: Reads on demand: the global feed is healthy (see the module docstring).
        self.on_demand = False
        #: Why each wallet's next read is due (``polycopy_reconciles_total{reason}``).
        self.reasons: dict[str, str] = {}
        #: When each wallet's last read ended (monotonic): reads on demand keep the wallet's cooldown.
        self.last_read: dict[str, float] = {}
        #: The ``Tick`` it tells itself to go on at once, and whether one is waiting in its mailbox.
        self._kick_message = Tick()
        self._kicked = False

    # --- messages -----------------------------------------------------------------------------------

    def tickers(self) -> list[tuple[Any, float]]:
        return [(Tick(), self.ctx.settings.pollers.idle_wait_seconds)]

    def handlers(self) -> dict[type, Any]:
        return {Tick: self._tick, Demand: self._demand, FeedHealth: self._feed_health}

    def receive(self, message: Any) -> Any:
        if message == "wallets":
            return sorted(self.schedule.wallets())
        return super().receive(message)

    def _tick(self, message: Tick) -> None:
        if message is self._kick_message:
            self._kicked = False
        if self.ctx.stopping.is_set():
            return
        now = time.monotonic()
        if now >= self.next_refresh:
            self._refresh(now)
        self._follow_feed(now)
        wallet = self.schedule.pop_due(now)
        if wallet is None:
            return
        try:
            self._poll(wallet)
        except Stopped:
            return
        due = self.schedule.next_due()
        if due is not None and due <= time.monotonic():
            self._kick()  # more is due: go on at once (other messages get their turn first)

    def _kick(self) -> None:
        """Tell itself a ``Tick`` now, unless one it told itself is still waiting: with the ticker's own, at
        most two ticks are ever queued, so ``FeedHealth`` and ``Demand`` never wait behind a pile of them."""
        if not self._kicked:
            self._kicked = True
            self.actor_ref.tell(self._kick_message)

    def _feed_health(self, message: FeedHealth) -> None:
        self.feed_until = message.until if message.until == 0 else max(self.feed_until, message.until)

    def _follow_feed(self, now: float) -> None:
        """Switch between reads on demand (feed healthy) and continuous polling (feed down)."""
        if self.pass_pending is not None:
            return  # a pass (sweep, --once) reads every wallet once anyway
        on_demand = now < self.feed_until
        if on_demand != self.on_demand:
            self.on_demand = on_demand
            if not on_demand:  # the feed is down: every wallet is polled again, starting now
                ts = self.ctx.tier_settings
                for i, wallet in enumerate(self.schedule.wallets()):
                    self.schedule.sooner(wallet, now + ts.poll_interval_seconds.min * i / max(1, len(self.schedule)))

    def _demand(self, message: Demand) -> None:
        """A detector asks for a read of one of this poller's wallets (the earliest ask wins)."""
        if self.pass_pending is not None:
            return  # a pass reads every wallet once anyway
        wallet = message.wallet
        at = max(message.at, self.last_read.get(wallet, 0.0) + self.ctx.tier_settings.wallet_cooldown_seconds)
        if self.schedule.sooner(wallet, at) or wallet not in self.reasons:
            self.reasons[wallet] = message.reason
        if at <= time.monotonic():
            self._kick()

    def _safety_period(self, mine: int | None = None) -> float:
        """Every wallet of the process read once per period on ``safety_cycle_share`` of the budget (two
        requests a read); ``mine``: this poller's wallets (default: those scheduled)."""
        ts, rc = self.ctx.tier_settings, self.ctx.settings.reconcile
        rate = ts.rate_limit.requests_per_second / self.ctx.shard_count * rc.safety_cycle_share
        wallets = (len(self.schedule) if mine is None else mine) * self.count
        return max(rc.safety_cycle_min_seconds, 2 * wallets / rate)

    # --- wallets ----------------------------------------------------------------------------------------

    def _mine(self, wallet: str) -> bool:
        return (shard_of(wallet, self.ctx.shard_count) == self.ctx.shard_index
                and poller_index(wallet, self.count) == self.index)

    def _refresh(self, now: float) -> None:
        """Re-read the tier's wallets and renew their leases. In a pass (``--once``/sweep) only the first
        read adds wallets; later reads only drop those that left the tier (a cold trader followed
        meanwhile) or whose lease another process took."""
        one_pass = self.ctx.one_pass
        first = not self.schedule.wallets() and self.pass_pending is None
        ts = self.ctx.tier_settings
        self.next_refresh = now + ts.refresh_interval_seconds
        polled_before = self.ctx.polled_before if first else None
        current = set(self.schedule.wallets())
        try:
            wallets = [w for w in self.reader.ask(TierWallets(self.ctx.tier, polled_before),
                                                  timeout=ASK_TIMEOUT_SECONDS) if self._mine(w)]
            wanted = wallets if not one_pass or first else [w for w in wallets if w in current]
            held: set[str] = set()
            others: dict[str, tuple[str, datetime]] = {}
            if wanted:
                held, others = self.writer.ask(AcquireLeases(tuple(wanted), ts.lease_ttl_seconds),
                                               timeout=ASK_TIMEOUT_SECONDS)
            added = [w for w in wanted if w in held and w not in current]
            if added:
                stored = self.reader.ask(LoadState(tuple(added)), timeout=ASK_TIMEOUT_SECONDS)
        except ASK_FAILURES as exc:
            log.warning("%s: could not read the %s tier's wallets (%s); retrying", self.child_name, self.ctx.tier,
                        exc or type(exc).__name__)
            self.next_refresh = now + min(5.0, ts.refresh_interval_seconds)
            return
        self.lease_until = now + ts.lease_ttl_seconds
        for wallet, (owner, until) in others.items():
            if wallet not in self.elsewhere:
                log.info("%s: wallet %s is polled by %s (lease until %s); not here", self.child_name, wallet, owner,
                         until.isoformat(timespec="seconds"))
        self.elsewhere = set(others)
        removed = current - held
        left = [w for w in removed if w not in others]
        if left:
            self.writer.tell(ReleaseLeases(tuple(left)))
        for wallet in removed:
            self.schedule.remove(wallet)
            self.states.pop(wallet, None)
            self.reasons.pop(wallet, None)
            self.last_read.pop(wallet, None)
            if self.pass_pending is not None and wallet in self.pass_pending:
                self.pass_pending.discard(wallet)
                self.progress.tell(PassDropped(wallet))
        # Reads on demand (the feed detects trades): a wallet read before joins the safety-net cycle at a
        # random point of it; only a wallet never read is due now (its backfill).
        period = self._safety_period(len(current) + len(added)) if (
            self.pass_pending is None and not one_pass and now < self.feed_until) else None
        for i, wallet in enumerate(added):
            self.states[wallet] = WalletState.from_stored(wallet, stored[wallet], datetime.now(UTC),
                                                          self.ctx.settings.api.max_future_skew_seconds)
            untrusted = stored[wallet]["last_trade_at"] is not None and self.states[wallet].watermark is None
            if untrusted:
                log.warning("%s: wallet %s's stored watermark %s is in the future: not trusted; its history is "
                            "read again", self.child_name, wallet,
                            stored[wallet]["last_trade_at"].isoformat(timespec="seconds"))
            if period is not None and stored[wallet]["last_success_at"] is not None and not untrusted:
                self.reasons[wallet] = "cycle"
                self.schedule.add(wallet, now + self.rng.uniform(0, period))
                continue
            self.reasons[wallet] = "backfill"
            # Keep the database's order (least recently polled first): earliest deadline first.
            self.schedule.add(wallet, now + 1e-6 * i)
        if added or removed:
            log.info("%s: %d wallets (+%d, -%d)", self.child_name, len(self.schedule), len(added), len(removed))
        self.progress.tell(WalletCount(self.index, len(self.schedule)))
        if one_pass and first:
            self.pass_pending = set(added)
            self.progress.tell(PassWallets(self.index, tuple(added)))
        self._check_pass()

    def _check_pass(self) -> None:
        if self.pass_pending is not None and not self.pass_pending:
            self.progress.tell(PassFinished(self.index))

    # --- one poll -----------------------------------------------------------------------------------------

    def _poll(self, wallet: str) -> None:
        """One poll: independent reads; whatever succeeded is delivered (see the module docstring)."""
        assert self.client is not None
        st = self.states[wallet]
        api, tier = self.ctx.settings.api, self.ctx.tier
        reason = self.reasons.pop(wallet, "cycle")
        if self.on_demand:
            metrics.RECONCILES.labels(reason).inc()
        grace = self.ctx.settings.reconcile.close_grace_seconds
        polled_at = datetime.now(UTC)
        mono = time.monotonic()
        failures: list[str] = []
        rejected: list[Rejected] = []
        trades: list[Trade] = []
        trades_ok = hold = False
        since = st.since(api.overlap_seconds)
        try:
            read = self.client.trades_since(wallet, since)
            trades, trades_ok = read.items, True
            st.count_rejected(read.rejected)
            rejected += read.rejected
            # A skipped (malformed) trade must not fall behind the cursor, for a bounded number of reads.
            hold = st.holds(read.rejected, api.malformed_hold_reads)
        except ApiError as exc:
            st.trade_errors += 1
            failures.append(f"trades: {exc.kind}: {exc}")
        diff: Diff | None = None
        if st.positions_read.due(mono) and mono < self.lease_until:
            try:
                snap = self.client.positions(wallet)
                st.count_rejected(snap.rejected)
                rejected += snap.rejected
                st.positions_read.ok()
                diff = diff_positions(st.positions, snap.items, polled_at, grace, complete=not snap.rejected)
            except ApiError as exc:
                st.positions_read.failed(mono, api.backoff_base_seconds, self.rng)
                failures.append(f"positions: {exc.kind}: {exc}")
        vanished = diff.vanished if diff is not None and st.evidence_read.due(mono) else []
        if vanished and trades_ok:
            # Trades made between the read above and the snapshot explain a vanished position too:
            # read again (the overlap window only), so a sale is never mistaken for a market close.
            try:
                merged = {t.trade_id: t for t in trades}
                merged.update((t.trade_id, t) for t in self.client.trades_since(wallet, since).items)
                trades = sorted(merged.values(), key=lambda t: t.timestamp)
            except ApiError as exc:
                failures.append(f"trades: {exc.kind}: {exc}")
        skew = api.max_future_skew_seconds
        watermark = st.trades_read(trades, hold, datetime.now(UTC), skew) if trades_ok else None
        closes: list[Close] = []
        if vanished:
            # The close evidence is read from the database: the trades go first (the writer flushes
            # them before it answers).
            self.writer.tell(PollResult(wallet, tier, polled_at, ok=True, trades=tuple(trades), watermark=watermark,
                                        final=False))
            trades, watermark = [], None
            closes, problem, more = self._classify(st, vanished, polled_at)
            rejected += more
            if problem is None:
                st.evidence_read.ok()
            else:
                st.evidence_read.failed(mono, api.backoff_base_seconds, self.rng)
                failures.append(problem)
        upserts = st.apply(diff, closes) if diff is not None else []
        error = "; ".join(failures)[:500] if failures else None
        self.writer.tell(PollResult(wallet, tier, polled_at, ok=not failures, error=error, trades=tuple(trades),
                                    watermark=watermark, upserts=tuple(upserts), closes=tuple(closes),
                                    rejected=tuple(rejected)))
        metrics.WALLET_POLLS.labels(tier, "error" if failures else "ok").inc()
        if trades_ok:  # trades land: what /healthz and the no-read alert watch
            metrics.LAST_POLL_SUCCESS.labels(tier).set(time.time())
            self.refs.health.tell(ReadOk("trades"))
        if diff is not None:
            self.refs.health.tell(ReadOk("positions"))
        if diff is not None:
            for kind, n in (("opened", len(diff.opened)), ("changed", len(diff.changed)), ("closed", len(closes))):
                if n:
                    metrics.POSITION_CHANGES.labels(kind).inc(n)
        if failures:
            log.warning("poll of %s: %s", wallet, error)
        self._after(wallet, st, trades_ok, diff is not None)

    def _after(self, wallet: str, st: WalletState, trades_ok: bool, positions_ok: bool) -> None:
        """Schedule the wallet's next poll. In a pass (sweep or ``--once``) a wallet is done once its
        reads succeeded (or failed more than ``api.max_retries`` times) and no position of it waits:
        a position still inside its grace period is re-checked after it, in the same pass."""
        mono = time.monotonic()
        self.last_read[wallet] = mono
        if self.pass_pending is None:
            if self.on_demand and trades_ok and positions_ok:
                due, reason = self._next_on_demand(st, mono)
                self.schedule.at(wallet, due)
                self.reasons[wallet] = reason
            else:
                self.schedule.done(wallet, mono, max(st.trade_errors, st.positions_read.errors))
            return
        limit = self.ctx.settings.api.max_retries
        reads_done = ((trades_ok or st.trade_errors > limit)
                      and (positions_ok or st.positions_read.errors > limit or mono >= self.lease_until))
        recheck = st.recheck_at(self.ctx.settings.reconcile.close_grace_seconds) if positions_ok else None
        if reads_done and (recheck is None or st.pass_rechecks > limit + 1):
            self.pass_pending.discard(wallet)
            self.progress.tell(PassSwept(wallet))
            self.schedule.park(wallet)
            self._check_pass()
            return
        if reads_done and recheck is not None:
            st.pass_rechecks += 1
            wait = (recheck - datetime.now(UTC)).total_seconds()
            wait = max(wait, st.evidence_read.retry_at - mono, self.ctx.tier_settings.wallet_cooldown_seconds)
            self.schedule.at(wallet, mono + wait)
            return
        self.schedule.done(wallet, mono, max(st.trade_errors, st.positions_read.errors))

    def _next_on_demand(self, st: WalletState, mono: float) -> tuple[float, str]:
        """The next read of a wallet while the feed is healthy, unless a detector asks sooner: the safety
        cycle (jittered), sooner while it holds redeemable positions or a position waits out its grace."""
        rc, cooldown = self.ctx.settings.reconcile, self.ctx.tier_settings.wallet_cooldown_seconds
        due, reason = mono + max(cooldown, self._safety_period() * (0.75 + self.rng.random() / 2)), "cycle"
        redeemable = mono + max(cooldown, rc.redeemable_interval_seconds)
        if any(h.position.redeemable for h in st.positions.values()) and redeemable < due:
            due, reason = redeemable, "redeemable"
        recheck = st.recheck_at(rc.close_grace_seconds)
        if recheck is not None:
            wait = max(cooldown, (recheck - datetime.now(UTC)).total_seconds(), st.evidence_read.retry_at - mono)
            if mono + wait < due:
                due, reason = mono + wait, "trade"
        return due, reason

    def _classify(self, st: WalletState, vanished: list[Held], polled_at: datetime,
                  ) -> tuple[list[Close], str | None, list[Rejected]]:
        """Why each vanished position closed, from the evidence since it was last seen minus the margin
        (see :func:`~polycopy_actors.logic.reconcile.classify`). Returns the closes decided, what kept the
        others undecided (they are tried again later), and the malformed activity rows."""
        assert self.client is not None
        margin = self.ctx.settings.reconcile.evidence_margin_seconds
        windows = {h.position.asset: h.trades_since(margin) for h in vanished}
        try:
            flows = self.reader.ask(TradeEvidence(st.wallet, tuple(windows.items())), timeout=ASK_TIMEOUT_SECONDS)
        except ASK_FAILURES as exc:
            return [], f"close evidence: the database did not answer ({exc or type(exc).__name__})", []
        start = int(min(h.evidence_since(margin) for h in vanished).timestamp())
        try:
            read = self.client.closing_activity_since(st.wallet, start)
        except ApiError as exc:
            return [], f"activity: {exc.kind}: {exc}", []
        st.count_rejected(read.rejected)
        if st.holds(read.rejected, self.ctx.settings.api.malformed_hold_reads):
            return [], "activity: malformed rows; closes wait", read.rejected
        activity = [(a.timestamp, a.type, a.condition_id) for a in read.items]
        decided = {h.position.asset: explain(h, flows[h.position.asset], activity,
                                             int(h.evidence_since(margin).timestamp())) for h in vanished}
        need = sorted({h.position.condition_id for h in vanished if not any(decided[h.position.asset])})
        states: dict[str, bool] = {}
        problem: str | None = None
        if need:
            try:
                states = self.client.market_states(need)
            except ApiError as exc:
                problem = f"markets: {exc.kind}: {exc}"
        closes: list[Close] = []
        for h in vanished:
            p = h.position
            # A position the API last showed as redeemable is in a resolved market, whatever gamma says.
            market_closed = states.get(p.condition_id, True if p.redeemable else None)
            sold_out, last_activity, maybe_sold_out = decided[p.asset]
            reason = classify(sold_out, last_activity, market_closed, maybe_sold_out)
            if reason is not None:
                closes.append(Close(h, reason, polled_at))
        waiting = len(vanished) - len(closes)
        if waiting and problem is None:
            problem = f"markets: the state of {waiting} closed position(s)' markets is unknown; closes wait"
        return closes, problem, read.rejected
