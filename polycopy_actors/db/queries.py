"""SQL of the service: every statement parameterised, grouped by who uses it.

Functions take an open connection and leave transaction control to the caller.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from polycopy_actors.api.wallets import normalize_wallets

Conn = psycopg.Connection[Any]


# --- every transaction of the workers ------------------------------------------------------------

def set_timeouts(conn: Conn, lock_timeout_seconds: float, statement_timeout_seconds: float) -> None:
    """Bound this transaction's waits (``SET LOCAL``: it works through Supabase's transaction pooler,
    where a session setting would leak to other clients or be lost): a table locked by someone else, or
    a statement that never ends, fails it instead of stalling the writer."""
    conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                 (f"{round(lock_timeout_seconds * 1000)}ms", f"{round(statement_timeout_seconds * 1000)}ms"))


# --- follows / traders (CLI) -------------------------------------------------------------------

def follow(conn: Conn, wallets: list[str], follower_id: str) -> int:
    """Follow wallets (validated first: none is stored if one is invalid). Returns rows added."""
    clean = normalize_wallets(wallets)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO follows (follower_id, wallet) SELECT %s, w FROM unnest(%s::text[]) AS w "
            "ON CONFLICT DO NOTHING",
            (follower_id, clean),
        )
        return cur.rowcount


def unfollow(conn: Conn, wallets: list[str], follower_id: str | None) -> int:
    """Remove follows of these wallets (by one follower, or by everyone when None)."""
    clean = normalize_wallets(wallets)
    with conn.cursor() as cur:
        if follower_id is None:
            cur.execute("DELETE FROM follows WHERE wallet = ANY(%s)", (clean,))
        else:
            cur.execute("DELETE FROM follows WHERE wallet = ANY(%s) AND follower_id = %s", (clean, follower_id))
        return cur.rowcount


def unfollow_all(conn: Conn, follower_id: str) -> int:
    """Remove every follow of one follower (the demo's, replaced at each run)."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM follows WHERE follower_id = %s", (follower_id,))
        return cur.rowcount


def add_traders(conn: Conn, wallets: list[str]) -> int:
    """Add (or re-activate) cold-tier traders."""
    clean = normalize_wallets(wallets)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO traders (wallet, active) SELECT w, true FROM unnest(%s::text[]) AS w "
            "ON CONFLICT (wallet) DO UPDATE SET active = true, updated_at = now() WHERE NOT traders.active",
            (clean,),
        )
        return cur.rowcount


def deactivate_traders(conn: Conn, wallets: list[str]) -> int:
    clean = normalize_wallets(wallets)
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE traders SET active = false, updated_at = now() WHERE wallet = ANY(%s) AND active",
            (clean,),
        )
        return cur.rowcount


# --- tier universes ------------------------------------------------------------------------------

def hot_wallets(conn: Conn) -> list[str]:
    """The hot tier: followed wallets plus wallets set to tier 'hot'."""
    rows = conn.execute("SELECT wallet FROM hot_wallets ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def cold_wallets(conn: Conn, polled_before: datetime | None = None) -> list[str]:
    """The cold tier: active traders that are not hot, least recently polled first (so an
    interrupted sweep resumes where it stopped); with ``polled_before``, only those not polled since."""
    rows = conn.execute(
        "SELECT t.wallet FROM traders t LEFT JOIN wallet_poll_state s ON s.wallet = t.wallet "
        "WHERE t.active AND coalesce(s.tier, 'cold') = 'cold' "
        "AND NOT EXISTS (SELECT 1 FROM follows f WHERE f.wallet = t.wallet) "
        "AND (%(before)s::timestamptz IS NULL OR s.last_polled_at IS NULL OR s.last_polled_at < %(before)s) "
        "ORDER BY s.last_polled_at NULLS FIRST, t.wallet",
        {"before": polled_before},
    ).fetchall()
    return [r[0] for r in rows]


def tier_wallets(conn: Conn, tier: str, polled_before: datetime | None = None) -> list[str]:
    if tier == "hot":
        return hot_wallets(conn)
    if tier == "cold":
        return cold_wallets(conn, polled_before)
    raise ValueError(f"unknown tier {tier!r}")


def oldest_success_lag(conn: Conn, tier: str) -> float | None:
    """Seconds since the least recently successful poll among the tier's polled wallets."""
    row = conn.execute(
        "SELECT extract(epoch FROM now() - min(coalesce(last_success_at, 'epoch')))::float8 "
        "FROM wallet_poll_state WHERE tier = %s AND last_polled_at IS NOT NULL", (tier,),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def discover_traders(conn: Conn, wallets: list[str], limit: int) -> int:
    """Add wallets seen trading as cold traders; never re-activates a deactivated one, never a followed one."""
    clean = normalize_wallets(wallets)[:limit]
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO traders (wallet, active) SELECT w, true FROM unnest(%s::text[]) AS w "
            "WHERE NOT EXISTS (SELECT 1 FROM follows f WHERE f.wallet = w) ON CONFLICT (wallet) DO NOTHING",
            (clean,),
        )
        return cur.rowcount


def followed_markets(conn: Conn, limit: int) -> list[str]:
    """Condition ids the hot tier's wallets hold or traded lately, most recent first."""
    rows = conn.execute(
        "SELECT condition_id FROM ("
        "  SELECT condition_id, max(updated_at) AS seen FROM positions_current p "
        "  WHERE p.wallet IN (SELECT wallet FROM hot_wallets)"
        "  GROUP BY condition_id"
        "  UNION ALL"
        "  SELECT condition_id, max(traded_at) FROM trades_public t "
        "  WHERE t.wallet IN (SELECT wallet FROM hot_wallets)"
        "  AND t.traded_at > now() - interval '30 days' GROUP BY condition_id"
        ") m GROUP BY condition_id ORDER BY max(seen) DESC LIMIT %s",
        (limit,),
    ).fetchall()
    return [r[0] for r in rows]


# --- per-wallet state (pollers, through the writer) ---------------------------------------------

def load_wallet_state(conn: Conn, wallets: list[str]) -> dict[str, dict[str, Any]]:
    """Watermark, open positions (with their close evidence) and malformed items of each wallet: what a
    poller resumes from."""
    out: dict[str, dict[str, Any]] = {
        w: {"last_trade_at": None, "last_success_at": None, "positions": {}, "rejected": {}} for w in wallets}
    for wallet, last_trade_at, last_success_at in conn.execute(
        "SELECT wallet, last_trade_at, last_success_at FROM wallet_poll_state WHERE wallet = ANY(%s)", (wallets,)
    ).fetchall():
        out[wallet]["last_trade_at"] = last_trade_at
        out[wallet]["last_success_at"] = last_success_at
    for row in conn.execute(
        "SELECT wallet, asset, condition_id, size, avg_price, cur_price, outcome, outcome_index, title, "
        "redeemable, opened_at, last_seen_at, missing_since, last_event_at, first_entry_at FROM positions_current "
        "WHERE wallet = ANY(%s)",
        (wallets,),
    ).fetchall():
        out[row[0]]["positions"][row[1]] = {
            "condition_id": row[2], "size": row[3], "avg_price": row[4], "cur_price": row[5],
            "outcome": row[6], "outcome_index": row[7], "title": row[8], "redeemable": row[9],
            "opened_at": row[10], "last_seen_at": row[11], "missing_since": row[12], "last_event_at": row[13],
            "first_entry_at": row[14],
        }
    for wallet, key, count in conn.execute(
        "SELECT wallet, item_key, seen_count FROM rejected_items WHERE wallet = ANY(%s)", (wallets,),
    ).fetchall():
        out[wallet]["rejected"][key] = count
    return out


def window_trades(conn: Conn, wallet: str, windows: list[tuple[str, datetime]],
                  ) -> dict[str, list[tuple[int, str, Any]]]:
    """For each (asset, window start): the wallet's stored trades of the asset since the window start,
    as (epoch seconds, side, size)."""
    out: dict[str, list[tuple[int, str, Any]]] = {a: [] for a, _ in windows}
    for asset, ts, side, size in conn.execute(
        "SELECT t.asset, extract(epoch FROM t.traded_at)::bigint, t.side, t.size "
        "FROM unnest(%s::text[], %s::timestamptz[]) AS g(asset, since) "
        "JOIN trades_public t ON t.wallet = %s AND t.asset = g.asset AND t.traded_at >= g.since",
        ([a for a, _ in windows], [s for _, s in windows], wallet),
    ).fetchall():
        out[asset].append((int(ts), side, size))
    return out


# --- the global feed, the stream, the market watcher ---------------------------------------------

def feed_cursor(conn: Conn, name: str) -> datetime | None:
    """The global feed tail's position: block time of the newest row it read (None: never)."""
    row = conn.execute("SELECT block_time FROM feed_cursors WHERE name = %s", (name,)).fetchone()
    return row[0] if row else None


def unconfirmed_stream_rows(conn: Conn, older_than_seconds: float) -> int:
    """Stream rows that no REST read confirmed within ``older_than_seconds``."""
    row = conn.execute("SELECT count(*) FROM trades_public WHERE confirmed_at IS NULL "
                       "AND created_at < now() - make_interval(secs => %s)", (older_than_seconds,)).fetchone()
    assert row is not None
    return int(row[0])


def held_markets(conn: Conn, wallets: list[str]) -> dict[str, list[str]]:
    """The markets these wallets hold in ``positions_current``: ``{condition_id: [wallets]}``."""
    out: dict[str, list[str]] = {}
    for cid, wallet in conn.execute("SELECT DISTINCT condition_id, wallet FROM positions_current "
                                    "WHERE wallet = ANY(%s)", (wallets,)).fetchall():
        out.setdefault(cid, []).append(wallet)
    return out


# --- wallet leases (one owner per wallet at a time) ----------------------------------------------

def acquire_leases(conn: Conn, wallets: list[str], owner: str, ttl_seconds: float) -> set[str]:
    """Take or renew the leases of ``wallets`` for ``owner``; returns the wallets it now holds (a
    wallet whose lease another owner holds, unexpired, is not among them)."""
    rows = conn.execute(
        "INSERT INTO wallet_leases AS l (wallet, owner, locked_until) "
        "SELECT w, %(owner)s, clock_timestamp() + make_interval(secs => %(ttl)s) FROM unnest(%(w)s::text[]) AS w "
        "ON CONFLICT (wallet) DO UPDATE SET owner = excluded.owner, locked_until = excluded.locked_until "
        "WHERE l.owner = excluded.owner OR l.locked_until < clock_timestamp() RETURNING wallet",
        {"owner": owner, "ttl": ttl_seconds, "w": wallets},
    ).fetchall()
    return {r[0] for r in rows}


def lease_holders(conn: Conn, wallets: list[str]) -> dict[str, tuple[str, datetime]]:
    rows = conn.execute(
        "SELECT wallet, owner, locked_until FROM wallet_leases WHERE wallet = ANY(%s) "
        "AND locked_until > clock_timestamp()", (wallets,),
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def local_owners(conn: Conn, host: str) -> list[str]:
    """Lease owners named after this host (``host:pid:...``)."""
    rows = conn.execute("SELECT DISTINCT owner FROM wallet_leases WHERE split_part(owner, ':', 1) = %s",
                        (host,)).fetchall()
    return [r[0] for r in rows]


def release_leases(conn: Conn, owner: str, wallets: list[str] | None = None) -> int:
    """Give up ``owner``'s leases (of ``wallets``, or all of them)."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM wallet_leases WHERE owner = %s AND (%s::text[] IS NULL OR wallet = ANY(%s))",
                    (owner, wallets, wallets))
        return cur.rowcount


def lock_holder(conn: Conn, job_name: str) -> tuple[str, datetime, float] | None:
    """(owner, locked until, seconds left) of a live job lock, or None."""
    row = conn.execute(
        "SELECT locked_by, locked_until, extract(epoch FROM locked_until - clock_timestamp())::float8 "
        "FROM job_locks WHERE job_name = %s AND locked_until > clock_timestamp()",
        (job_name,),
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


# --- cold sweeps (the sweep loop, in one transaction each where it says so) ------------------------

#: The cold tier's job lock (``job_locks.job_name``).
COLD_SWEEP_JOB = "cold_sweep"


def take_sweep_lock(conn: Conn, job_name: str, owner: str, ttl_seconds: int) -> tuple[int, datetime] | None:
    """Take the job lock and open the sweep's ``cold_sweeps`` row (caller's transaction); returns
    (sweep id, started at), or None when another owner holds the lock."""
    row = conn.execute("SELECT acquire_job_lock(%s, %s, %s)", (job_name, owner, ttl_seconds)).fetchone()
    if not (row and row[0]):
        return None
    rec = conn.execute(
        "INSERT INTO cold_sweeps (owner, lock_until) SELECT %s, locked_until FROM job_locks "
        "WHERE job_name = %s AND locked_by = %s RETURNING id, started_at",
        (owner, job_name, owner),
    ).fetchone()
    assert rec is not None
    return rec[0], rec[1]


def renew_sweep_lock(conn: Conn, job_name: str, owner: str, ttl_seconds: int, sweep_id: int | None) -> bool:
    """Renew the lock and carry its new end into the sweep's row (caller's transaction); False: lost."""
    row = conn.execute("SELECT acquire_job_lock(%s, %s, %s)", (job_name, owner, ttl_seconds)).fetchone()
    if not (row and row[0]):
        return False
    conn.execute(
        "UPDATE cold_sweeps SET lock_until = (SELECT locked_until FROM job_locks "
        "WHERE job_name = %s AND locked_by = %s) WHERE id = %s",
        (job_name, owner, sweep_id),
    )
    return True


def finish_sweep(conn: Conn, job_name: str, owner: str, sweep_id: int | None, outcome: str,
                 wallets: int | None) -> None:
    """Close the sweep's row and release the lock (caller's transaction)."""
    conn.execute("UPDATE cold_sweeps SET finished_at = clock_timestamp(), outcome = %s, wallets = %s WHERE id = %s",
                 (outcome, wallets, sweep_id))
    conn.execute("SELECT release_job_lock(%s, %s)", (job_name, owner))


def seconds_to_next_sweep(conn: Conn, interval_seconds: float) -> float | None:
    """The last completed sweep's start + interval - now (database clock); None before the first."""
    row = conn.execute(
        "SELECT extract(epoch FROM max(started_at) + make_interval(secs => %s) - clock_timestamp())::float8 "
        "FROM cold_sweeps WHERE outcome = 'completed'", (interval_seconds,),
    ).fetchone()
    return row[0] if row else None


def wallets_polled_since(conn: Conn, tier: str, since: datetime) -> int:
    row = conn.execute("SELECT count(*) FROM wallet_poll_state WHERE tier = %s AND last_polled_at >= %s",
                       (tier, since)).fetchone()
    return int(row[0]) if row else 0


# --- status ------------------------------------------------------------------------------------

def poll_summary(conn: Conn, wallets: list[str]) -> tuple[Any, ...]:
    """(polled in the last minute, polled in the last hour, oldest watermark, last poll, wallets
    failing, consecutive errors) of these wallets."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE last_polled_at > now() - interval '1 minute'), "
        "count(*) FILTER (WHERE last_polled_at > now() - interval '1 hour'), "
        "min(last_trade_at), max(last_polled_at), "
        "count(*) FILTER (WHERE consecutive_errors > 0), coalesce(sum(consecutive_errors), 0) "
        "FROM wallet_poll_state WHERE wallet = ANY(%s)",
        (wallets,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def last_cold_sweep(conn: Conn) -> tuple[datetime, datetime | None, int | None] | None:
    """(started at, finished at, wallets) of the latest sweep (None: none yet, or no such table)."""
    exists = conn.execute("SELECT to_regclass('cold_sweeps') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return None
    row = conn.execute("SELECT started_at, finished_at, wallets FROM cold_sweeps ORDER BY started_at DESC LIMIT 1"
                       ).fetchone()
    return (row[0], row[1], row[2]) if row else None


def row_counts(conn: Conn) -> tuple[int, int, int]:
    """Rows of trades_public, positions_current and positions_closed."""
    row = conn.execute("SELECT (SELECT count(*) FROM trades_public), (SELECT count(*) FROM positions_current), "
                       "(SELECT count(*) FROM positions_closed)").fetchone()
    assert row is not None
    return row[0], row[1], row[2]
