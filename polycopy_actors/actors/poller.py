"""WalletPoller actor: polls its own wallets, earliest deadline first.

Owns: the wallets of the tier whose hash falls on it, their schedule (cooldown, next-due time), their
cursors (trade watermarks) and their known open positions, one :class:`PolymarketClient` (one HTTP
session). Driven by ``tell(Tick)`` that it sends itself, so a crash reaches ``on_failure`` and the
supervisor. For each poll: trades since the cursor (minus an overlap), the complete positions
snapshot, and for positions that vanished the wallet's REDEEM activity and gamma's market state; the
result goes to the DbWriter by ``tell``. It asks (with a timeout) the RateLimiter before every HTTP
request and the DbWriter for its wallets and their saved state.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pykka

from polycopy_actors import metrics
from polycopy_actors.actors.messages import (
    ASK_TIMEOUT_SECONDS,
    Acquire,
    Crash,
    LoadState,
    PollResult,
    Throttle,
    Tick,
    TierWallets,
)
from polycopy_actors.actors.supervisor import SupervisedMixin
from polycopy_actors.client import ApiError, PolymarketClient, Stopped
from polycopy_actors.config import Settings, TierSettings
from polycopy_actors.metrics import HealthState
from polycopy_actors.models import Position, Trade
from polycopy_actors.reconcile import Close, Held, classify, diff_positions
from polycopy_actors.schedule import Schedule
from polycopy_actors.wallets import shard_of

log = logging.getLogger(__name__)

#: A position whose size minus the sells since it was last seen is at most this is sold out.
SIZE_EPSILON = Decimal("0.000001")


class PassTracker:
    """One pass over the tier (``--once`` or a sweep), shared by the pollers of a process (any thread).

    Pollers register the wallets of their pass and report each one done; ``done`` is set when every
    poller has finished. Sets (not counters) so that a restarted poller counts nothing twice.
    """

    def __init__(self, pollers: int, done: threading.Event) -> None:
        self._lock = threading.Lock()
        self._finished: set[int] = set()
        self._pollers = pollers
        self._done = done
        self._wallets: set[str] = set()
        self._swept: set[str] = set()

    def add(self, wallets: list[str]) -> None:
        with self._lock:
            self._wallets.update(wallets)

    def drop(self, wallet: str) -> None:
        """The wallet left the tier during the pass."""
        with self._lock:
            self._wallets.discard(wallet)
            self._swept.discard(wallet)

    def swept(self, wallet: str) -> None:
        with self._lock:
            self._swept.add(wallet)

    def progress(self) -> tuple[int, int]:
        """(wallets done, wallets in the pass)."""
        with self._lock:
            return len(self._swept), len(self._wallets)

    def finished(self, index: int) -> None:
        with self._lock:
            self._finished.add(index)
            if len(self._finished) >= self._pollers:
                self._done.set()


class RunStats:
    """Counters for the shutdown summary line (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.polls = self.trades = self.closes = self.errors = self.requests = 0

    def request(self) -> None:
        with self._lock:
            self.requests += 1

    def add(self, polls: int = 0, trades: int = 0, closes: int = 0, errors: int = 0) -> None:
        with self._lock:
            self.polls += polls
            self.trades += trades
            self.closes += closes
            self.errors += errors

    def snapshot_requests(self) -> int:
        with self._lock:
            return self.requests

    def snapshot(self) -> tuple[int, int, int, int]:
        with self._lock:
            return self.polls, self.trades, self.closes, self.errors

    def summary(self, since: tuple[int, int, int, int] = (0, 0, 0, 0)) -> str:
        polls, trades, closes, errors = (a - b for a, b in zip(self.snapshot(), since, strict=True))
        return f"{polls:,} polls, {trades:,} trades, {closes:,} closes, {errors:,} errors"


class WalletCounts:
    """Wallets held by each poller of the process, for ``polycopy_wallets{tier}`` (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}

    def set(self, poller: int, count: int) -> int:
        """Record one poller's count; return the process total."""
        with self._lock:
            self._counts[poller] = count
            return sum(self._counts.values())


@dataclass(frozen=True)
class TierContext:
    """What every poller of a process shares (immutable, or thread-safe objects)."""

    settings: Settings
    tier: str
    stopping: threading.Event
    health: HealthState
    stats: RunStats
    shard_index: int = 0
    shard_count: int = 1
    once: PassTracker | None = None
    #: A sweep resuming after a restart skips wallets polled since the sweep started.
    polled_before: datetime | None = None
    wallet_counts: WalletCounts = field(default_factory=WalletCounts)

    @property
    def tier_settings(self) -> TierSettings:
        return self.settings.tier(self.tier)


def poller_index(wallet: str, pollers: int) -> int:
    """Which poller of a shard owns a wallet (other hex digits than the shard hash)."""
    return int(wallet[10:18], 16) % pollers if pollers > 1 else 0


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class WalletPollerActor(SupervisedMixin, pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(self, supervisor: pykka.ActorRef[Any], name: str, index: int, count: int, ctx: TierContext,
                 limiter: pykka.ActorRef[Any], writer: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.child_name = name
        self.index = index
        self.count = count
        self.ctx = ctx
        self.limiter = limiter
        self.writer = writer
        ts = ctx.tier_settings
        self.schedule = Schedule(ts.wallet_cooldown_seconds, ts.poll_interval_seconds.min,
                                 ts.poll_interval_seconds.max, random.Random())
        self.watermarks: dict[str, datetime | None] = {}
        self.known: dict[str, dict[str, Held]] = {}
        self.errors: dict[str, int] = {}
        #: trade ids of each wallet's last successful read (what "new since the last poll" means)
        self.recent_ids: dict[str, frozenset[str]] = {}
        #: start of each wallet's last successful poll: when its positions were last seen
        self.last_ok: dict[str, datetime] = {}
        self.next_refresh = 0.0
        self.next_status = 0.0
        self.pass_pending: set[str] | None = None
        self.client: PolymarketClient | None = None

    # --- life cycle -------------------------------------------------------------------------------

    def on_start(self) -> None:
        self.client = PolymarketClient(self.ctx.settings.api, acquire=self._acquire, on_rate_limited=self._throttle,
                                       stop_event=self.ctx.stopping)
        self.actor_ref.tell(Tick())

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()

    def _acquire(self, endpoint: str) -> None:
        self.ctx.stats.request()
        wait = self.limiter.ask(Acquire(), timeout=ASK_TIMEOUT_SECONDS)
        if wait > 0 and self.ctx.stopping.wait(wait):
            raise Stopped()

    def _throttle(self, seconds: float) -> None:
        self.limiter.tell(Throttle(seconds))

    # --- messages -----------------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Tick):
            self._tick()
        elif isinstance(message, Crash):
            raise RuntimeError(message.reason)
        elif message == "wallets":
            return sorted(self.schedule.wallets())
        return None

    def _tick(self) -> None:
        if self.ctx.stopping.is_set():
            return
        now = time.monotonic()
        if now >= self.next_refresh:
            self._refresh(now)
        if self.index == 0 and now >= self.next_status:
            self._check_api_lag(now)
        wallet = self.schedule.pop_due(now)
        if wallet is not None:
            try:
                self._poll(wallet)
            except Stopped:
                return
        else:
            due = self.schedule.next_due()
            wait = self.ctx.settings.pollers.idle_wait_seconds
            if due is not None:
                wait = max(0.0, min(wait, due - now))
            if self.ctx.stopping.wait(wait):
                return
        self.actor_ref.tell(Tick())

    # --- wallets ----------------------------------------------------------------------------------------

    def _mine(self, wallet: str) -> bool:
        return (shard_of(wallet, self.ctx.shard_count) == self.ctx.shard_index
                and poller_index(wallet, self.count) == self.index)

    def _refresh(self, now: float) -> None:
        """Re-read the tier's wallets. In a pass (``--once``/sweep) only the first read adds wallets;
        later reads only drop those that left the tier (a cold trader followed meanwhile)."""
        tracker = self.ctx.once
        first = not self.schedule.wallets() and self.pass_pending is None
        self.next_refresh = now + self.ctx.tier_settings.refresh_interval_seconds
        polled_before = self.ctx.polled_before if first else None
        try:
            wallets = [w for w in self.writer.ask(TierWallets(self.ctx.tier, polled_before),
                                                  timeout=ASK_TIMEOUT_SECONDS) if self._mine(w)]
            current = set(self.schedule.wallets())
            added = [w for w in wallets if w not in current] if tracker is None or first else []
            removed = current - set(wallets)
            if added:
                states = self.writer.ask(LoadState(tuple(added), self.ctx.settings.api.overlap_seconds),
                                         timeout=ASK_TIMEOUT_SECONDS)
        except (pykka.Timeout, pykka.ActorDeadError, Exception) as exc:  # noqa: BLE001 - DB down: retry later
            log.warning("%s: could not read the %s tier's wallets (%s); retrying", self.child_name, self.ctx.tier, exc)
            self.next_refresh = now + min(5.0, self.ctx.tier_settings.refresh_interval_seconds)
            return
        for wallet in removed:
            self.schedule.remove(wallet)
            self.watermarks.pop(wallet, None)
            self.known.pop(wallet, None)
            self.errors.pop(wallet, None)
            self.recent_ids.pop(wallet, None)
            self.last_ok.pop(wallet, None)
            if tracker is not None and self.pass_pending is not None and wallet in self.pass_pending:
                self.pass_pending.discard(wallet)
                tracker.drop(wallet)
        for i, wallet in enumerate(added):
            state = states[wallet]
            self.watermarks[wallet] = state["last_trade_at"]
            if state["last_trade_at"] is not None:
                self.recent_ids[wallet] = frozenset(state["recent_trade_ids"])
            if state["last_success_at"] is not None:
                self.last_ok[wallet] = state["last_success_at"]
            self.known[wallet] = {
                asset: Held(Position(wallet, asset, p["condition_id"], p["size"], p["avg_price"], p["cur_price"],
                                     p["outcome"], p["outcome_index"], p["title"], p["redeemable"]), p["opened_at"])
                for asset, p in state["positions"].items()
            }
            # Keep the database's order (least recently polled first): earliest deadline first.
            self.schedule.add(wallet, now + 1e-6 * i)
        if added or removed:
            log.info("%s: %d wallets (+%d, -%d)", self.child_name, len(self.schedule), len(added), len(removed))
        metrics.WALLETS.labels(self.ctx.tier).set(self.ctx.wallet_counts.set(self.index, len(self.schedule)))
        if tracker is not None and first:
            self.pass_pending = set(added)
            tracker.add(added)
        self._check_pass()

    def _check_api_lag(self, now: float) -> None:
        """Poller 0 only: the API's own lag (``/v2/status``). Trades shown later than the overlap
        window behind a cursor would be read only by luck: say so."""
        api = self.ctx.settings.api
        if api.status_interval_seconds <= 0 or api.data_api_version != "v2" or self.client is None:
            self.next_status = float("inf")
            return
        self.next_status = now + api.status_interval_seconds
        try:
            lag = self.client.api_lag()
        except Stopped:
            return
        except ApiError as exc:
            log.warning("could not read the API's lag from /v2/status: %s", exc)
            return
        metrics.API_LAG.set(lag)
        if lag > api.overlap_seconds:
            log.warning("the data API reports a serving lag of %.0f s, more than api.overlap_seconds (%d): "
                        "late trades may fall behind the re-read window; raise api.overlap_seconds", lag,
                        api.overlap_seconds)

    def _check_pass(self) -> None:
        if self.pass_pending is not None and not self.pass_pending and self.ctx.once is not None:
            self.ctx.once.finished(self.index)

    # --- one poll -----------------------------------------------------------------------------------------

    def _poll(self, wallet: str) -> None:
        assert self.client is not None
        tier = self.ctx.tier
        polled_at = datetime.now(UTC)
        try:
            result, changes = self._fetch(wallet, polled_at)
        except ApiError as exc:
            self.errors[wallet] = self.errors.get(wallet, 0) + 1
            metrics.WALLET_POLLS.labels(tier, "error").inc()
            self.ctx.stats.add(polls=1, errors=1)
            log.warning("poll of %s failed (%s, %d in a row): %s", wallet, exc.kind, self.errors[wallet], exc)
            self.writer.tell(PollResult(wallet, tier, polled_at, ok=False, error=f"{exc.kind}: {exc}"))
            self._after(wallet, self.errors[wallet])
            return
        self.errors[wallet] = 0
        self.writer.tell(result)
        metrics.WALLET_POLLS.labels(tier, "ok").inc()
        metrics.LAST_POLL_SUCCESS.labels(tier).set(time.time())
        self.ctx.health.poll_succeeded()
        self.ctx.stats.add(polls=1, trades=changes.pop("new_trades"), closes=len(result.closes))
        for kind, n in changes.items():
            if n:
                metrics.POSITION_CHANGES.labels(kind).inc(n)
        if any(changes.values()):
            log.debug("polled %s: %d trades, changes %s", wallet, len(result.trades), changes)
        self._after(wallet, 0)

    def _after(self, wallet: str, errors: int) -> None:
        if self.pass_pending is not None:
            if errors == 0 or errors > self.ctx.settings.api.max_retries:
                self.pass_pending.discard(wallet)
                if self.ctx.once is not None:
                    self.ctx.once.swept(wallet)
                self.schedule.park(wallet)
                self._check_pass()
                return
        self.schedule.done(wallet, time.monotonic(), errors)

    def _fetch(self, wallet: str, polled_at: datetime) -> tuple[PollResult, dict[str, int]]:
        assert self.client is not None
        api = self.ctx.settings.api
        watermark = self.watermarks.get(wallet)
        since = None if watermark is None else max(1, int(watermark.timestamp()) - api.overlap_seconds)
        damaged_before = self.client.malformed_items
        trades = self.client.trades_since(wallet, since)
        snapshot = self.client.positions(wallet)
        known = self.known.setdefault(wallet, {})
        d = diff_positions(known, snapshot, time.monotonic(), self.ctx.settings.reconcile.close_grace_seconds)
        if d.vanished:
            # Trades made between the read above and the snapshot explain a vanished position too:
            # read again (the overlap window only), so a sale is never mistaken for a market close.
            merged = {t.trade_id: t for t in trades}
            merged.update((t.trade_id, t) for t in self.client.trades_since(wallet, since))
            trades = sorted(merged.values(), key=lambda t: t.timestamp)
        # A skipped (malformed) trade must not fall behind the cursor: keep the cursor, re-read next time.
        hold_cursor = self.client.malformed_items > damaged_before
        # Trades made since the previous snapshot: those not in the previous poll's read (that read came
        # before that snapshot); after a restart, not among the stored trades the overlap re-reads.
        previous = self.recent_ids.get(wallet)
        after = 0 if watermark is None else watermark.timestamp()
        new = [t for t in trades if (t.trade_id not in previous if previous is not None else t.timestamp > after)]
        closes = self._classify(wallet, d.vanished, new, polled_at) if d.vanished else []
        upserts: list[tuple[Position, datetime]] = [(p, polled_at) for p in d.opened]
        upserts += [(p, known[p.asset].opened_at) for p in d.changed + d.refreshed]
        # The poll succeeded: update what this poller knows, then hand the result to the writer.
        for p in d.opened:
            known[p.asset] = Held(p, polled_at)
        for p in d.changed + d.refreshed:
            known[p.asset] = Held(p, known[p.asset].opened_at)
        for asset in d.reappeared:
            if asset in known:
                known[asset] = replace(known[asset], missing_since=None)
        for held in d.missing:
            known[held.position.asset] = held
        for close in closes:
            known.pop(close.held.position.asset, None)
        new_mark = None if hold_cursor else max((t.timestamp for t in trades), default=None)
        if new_mark is not None:
            mark = _utc(new_mark)
            self.watermarks[wallet] = mark if watermark is None else max(watermark, mark)
        result = PollResult(
            wallet=wallet, tier=self.ctx.tier, polled_at=polled_at, ok=True, trades=tuple(trades),
            watermark=_utc(new_mark) if new_mark is not None else None, upserts=tuple(upserts), closes=tuple(closes),
        )
        # Trades past the old watermark are new; the rest are the overlap re-read (upserted again, harmlessly).
        self.recent_ids[wallet] = frozenset(t.trade_id for t in trades)
        self.last_ok[wallet] = polled_at
        new_trades = len(new)
        changes = {"opened": len(d.opened), "changed": len(d.changed), "closed": len(closes), "new_trades": new_trades}
        return result, changes

    def _classify(self, wallet: str, vanished: list[Held], new: list[Trade], polled_at: datetime) -> list[Close]:
        """Why each vanished position closed: its own trades since the last poll, the first
        REDEEM/MERGE of its market since then, then gamma's market state (see ``classify``)."""
        assert self.client is not None
        flow: dict[str, Decimal] = {}
        for t in new:
            flow[t.asset] = flow.get(t.asset, Decimal(0)) + (t.size if t.side == "BUY" else -t.size)
        last_seen = self.last_ok.get(wallet)

        def seen_since(h: Held) -> int:
            """Second from which events can explain the vanishing (inclusive: one-second resolution)."""
            return int(max(h.opened_at, last_seen).timestamp() if last_seen else h.opened_at.timestamp())

        activity = sorted(self.client.closing_activity_since(wallet, min(seen_since(h) for h in vanished)),
                          key=lambda a: (a.timestamp, a.type != "MERGE"))  # same second: a merge comes first
        decided: dict[str, tuple[bool, str | None]] = {}
        for h in vanished:
            p = h.position
            sold_out = p.asset in flow and p.size + flow[p.asset] <= SIZE_EPSILON
            first = next((a.type for a in activity if a.condition_id == p.condition_id
                          and a.timestamp >= seen_since(h)), None)
            decided[p.asset] = (sold_out, first)
        undecided = sorted({h.position.condition_id for h in vanished if decided[h.position.asset] == (False, None)})
        closed = set(self.client.closed_markets(undecided)) if undecided else set()
        return [Close(h, classify(*decided[h.position.asset], h.position.condition_id in closed), polled_at)
                for h in vanished]
