"""Cold sweeps: the ``cold_sweep`` database lock, the sweep record, the slot schedule and the loop.

With ``schedule: events`` (the cold tier's default) the process holds the lock for its whole run
instead: the actor tree runs continuously (the global feed detects every cold trader's trades, wallets
are read on demand and on the budget's safety-net cycle) and the run is recorded as one row of
``cold_sweeps`` (outcome ``stopped`` or ``lost_lock``); a second instance waits for the lock. ``--once``
is one sweep in either schedule.

A sweep is one pass of the tier's actor tree over every cold wallet (least recently polled first),
run only while this process holds ``acquire_job_lock('cold_sweep', owner, ttl)``. The lock is
renewed every ``ttl / 3`` from the thread that waits for the sweep (the main thread); if it cannot be
renewed, the sweep stops before the lock runs out (self-fencing), so two sweeps never overlap even
when the database or this process stalls. Each sweep is recorded in ``cold_sweeps``; its row is
closed in the same transaction that releases the lock.

Everything here runs in the main thread of the process that owns the sweep (the parent when the
tier is sharded); it opens short-lived connections, never the writer's pool.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import psycopg

from polycopy_actors.config import Settings
from polycopy_actors.db import queries
from polycopy_actors.db.connect import connect, scrub
from polycopy_actors.exitcodes import RET_OK, ExitError
from polycopy_actors.observe import metrics

log = logging.getLogger(__name__)

SWEEP_JOB = queries.COLD_SWEEP_JOB


class PassRunner(Protocol):
    """Runs the tier's actors (in this process or as shard processes) and returns an exit code."""

    def __call__(self, stop: threading.Event, once: bool, polled_before: datetime | None,
                 keep_going: Callable[[], bool] | None) -> int: ...


def lock_owner() -> str:
    """Who holds the lock, as shown by ``status`` and in logs: host, pid and a per-run suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


class LockLease:
    """The ``cold_sweep`` lock held by this process and the ``cold_sweeps`` row of the current sweep.

    Owned by the main thread. ``keep()`` renews when due and answers whether the sweep may go on.
    """

    def __init__(self, dsn: str, settings: Settings, owner: str, ttl: int) -> None:
        self.dsn = dsn
        self.settings = settings
        self.owner = owner
        self.ttl = ttl
        self.valid_until = 0.0   # monotonic time before which the lock is surely ours
        self.next_renew = 0.0
        self.sweep_id: int | None = None
        self.started_at: datetime | None = None

    def _conn(self) -> psycopg.Connection[Any]:
        return connect(self.dsn, self.settings)

    def _granted(self, t0: float) -> None:
        self.valid_until = t0 + self.ttl
        self.next_renew = t0 + self.ttl / 3

    def acquire(self) -> bool:
        """Take the lock; on success open this sweep's ``cold_sweeps`` row."""
        t0 = time.monotonic()
        with self._conn() as conn, conn.transaction():
            rec = queries.take_sweep_lock(conn, SWEEP_JOB, self.owner, self.ttl)
        if rec is None:
            return False
        self.sweep_id, self.started_at = rec
        self._granted(t0)
        return True

    def holder(self) -> tuple[str, datetime, float] | None:
        """(owner, locked_until, seconds left) of a live lock, or None."""
        with self._conn() as conn:
            return queries.lock_holder(conn, SWEEP_JOB)

    def keep(self) -> bool:
        """Renew when due. False when the lock was lost, or could not be renewed and is about to run
        out: the caller must stop sweeping now."""
        now = time.monotonic()
        if now < self.next_renew:
            return True
        try:
            with self._conn() as conn, conn.transaction():
                ok = queries.renew_sweep_lock(conn, SWEEP_JOB, self.owner, self.ttl, self.sweep_id)
        except (ExitError, psycopg.Error) as exc:
            reason = exc.message if isinstance(exc, ExitError) else scrub(str(exc).strip(), self.dsn)
            left = self.valid_until - now
            margin = min(self.ttl / 6, 10.0)
            if left <= margin:
                log.error("cold sweep lock could not be renewed (%s) and runs out in %.0f s: stopping the sweep",
                          reason, max(left, 0))
                return False
            log.warning("cold sweep lock could not be renewed (%s); it runs out in %.0f s, retrying", reason, left)
            self.next_renew = now + min(2.0, self.ttl / 10)
            return True
        if not ok:
            log.error("cold sweep lock lost (taken over by another instance): stopping the sweep")
            return False
        self._granted(now)
        return True

    def finish(self, outcome: str, wallets: int | None) -> None:
        """Close the sweep's row, then release the lock, in one transaction."""
        with self._conn() as conn, conn.transaction():
            queries.finish_sweep(conn, SWEEP_JOB, self.owner, self.sweep_id, outcome, wallets)
        self.sweep_id = None


class SweepLoop:
    """``--tier cold``: wait for the slot, take the lock, sweep, release; again (or once)."""

    def __init__(self, settings: Settings, tier: str, dsn: str, runner: PassRunner, once: bool,
                 discover: Callable[[], None] | None = None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.tier = tier
        self.ts = settings.tier(tier)
        self.dsn = dsn
        self.runner = runner
        self.once = once
        self.discover = discover
        self.rng = rng or random.Random()
        self.lease = LockLease(dsn, settings, lock_owner(), self.ts.lock_ttl_seconds)
        self.outcomes: dict[str, int] = {}

    def _seconds_to_slot(self) -> float:
        """Until the next slot: the last completed sweep's start + interval + jitter (DB clock)."""
        with connect(self.dsn, self.settings) as conn:
            left = queries.seconds_to_next_sweep(conn, self.ts.sweep_interval_seconds)
        base = left if left is not None else 0.0
        return max(0.0, base) + self.rng.uniform(0, self.ts.jitter_seconds)

    def _swept_wallets(self, since: datetime) -> int | None:
        try:
            with connect(self.dsn, self.settings) as conn:
                return queries.wallets_polled_since(conn, self.tier, since)
        except ExitError:
            return None

    def run(self, stop: threading.Event) -> int:
        started = time.monotonic()
        try:
            return self._run(stop)
        finally:
            done = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.outcomes.items())) or "none"
            log.info("cold tier stopped after %s: sweeps %s", _duration(time.monotonic() - started), done)

    def _run(self, stop: threading.Event) -> int:
        events = self.ts.schedule == "events" and not self.once
        if events:
            log.info("cold tier on events under the %s lock (ttl %d s, owner %s): the global feed detects trades, "
                     "wallets are read on demand", SWEEP_JOB, self.ts.lock_ttl_seconds, self.lease.owner)
        else:
            log.info("cold sweeps every %s + up to %s jitter, lock ttl %d s, owner %s",
                     _duration(self.ts.sweep_interval_seconds), _duration(self.ts.jitter_seconds),
                     self.ts.lock_ttl_seconds, self.lease.owner)
        while not stop.is_set():
            if not self.once and not events:
                delay = self._seconds_to_slot()
                if delay > 0.5:
                    log.info("next cold sweep in %s", _duration(delay))
                    if stop.wait(delay):
                        break
            if not self.lease.acquire():
                held = self.lease.holder()
                who = f"{held[0]} until {held[1].isoformat(timespec='seconds')}" if held else "another instance"
                if self.once:
                    log.info("cold sweep lock held by %s: not sweeping (--once)", who)
                    return RET_OK
                wait = (held[2] if held else 1.0) + self.rng.uniform(0, min(self.ts.jitter_seconds, 60))
                log.info("cold sweep lock held by %s: waiting %s", who, _duration(wait))
                if stop.wait(max(wait, 1.0)):
                    break
                continue
            code = self._sweep(stop, events)
            if code != RET_OK or self.once:
                return code
        return RET_OK

    def _sweep(self, stop: threading.Event, events: bool = False) -> int:
        """One sweep (a pass over every wallet), or with ``events`` the continuous run, under the lock."""
        lease = self.lease
        assert lease.started_at is not None
        what = "cold run on events" if events else "cold sweep"
        log.info("%s %d started: lock %s held by %s (ttl %d s)", what, lease.sweep_id, SWEEP_JOB, lease.owner,
                 lease.ttl)
        t0 = time.monotonic()
        lost = False

        def keep_going() -> bool:
            nonlocal lost
            if not lease.keep():
                lost = True
            return not lost

        code = 1
        try:
            if self.discover is not None:
                self.discover()
            code = self.runner(stop, not events, None if events else lease.started_at, keep_going)
        finally:
            outcome = ("lost_lock" if lost else "stopped" if stop.is_set() else
                       "completed" if code == RET_OK else "failed")
            wallets = self._swept_wallets(lease.started_at)
            duration = time.monotonic() - t0
            try:
                lease.finish(outcome, wallets)
                released = "lock released"
            except (ExitError, psycopg.Error) as exc:
                reason = exc.message if isinstance(exc, ExitError) else scrub(str(exc).strip(), self.dsn)
                released = f"lock NOT released ({reason}); it expires by itself"
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            if outcome == "completed":
                metrics.COLD_SWEEP_DURATION.observe(duration)
                metrics.SWEEP_LAST_COMPLETED.set_to_current_time()
            log.info("%s %s in %s: %s wallets polled; %s", what, outcome, _duration(duration),
                     "?" if wallets is None else f"{wallets:,}", released)
        return code


def discover_traders(settings: Settings, dsn: str, client: Any) -> None:
    """Add wallets seen trading in followed wallets' markets as cold traders (``discovery.enabled``)."""
    d = settings.discovery
    with connect(dsn, settings) as conn:
        markets = queries.followed_markets(conn, d.max_markets)
    if not markets or d.max_new_traders == 0:
        log.info("trader discovery: no followed markets yet")
        return
    seen = client.market_traders(markets)
    with connect(dsn, settings) as conn, conn.transaction():
        added = queries.discover_traders(conn, sorted(seen), d.max_new_traders)
    log.info("trader discovery: %d wallets seen in %d followed markets, %d new cold traders", len(seen),
             len(markets), added)
