"""Schema and migrations on a real PostgreSQL: apply, re-apply, checksums, constraints, locks, RLS."""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from pathlib import Path

import psycopg
import pytest

from polycopy_actors.db.migrate import MigrationError, discover, migrate, pending

W = "0x" + "ab" * 20
CID = "0x" + "cd" * 32
TX = "0x" + "ef" * 32


def test_migrations_apply_once_and_are_idempotent(fresh_database):
    dsn = fresh_database(migrated=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        files = ["001_core_tables", "002_job_locks", "003_follow_triggers", "004_cold_sweeps",
                 "005_position_evidence", "006_hot_wallets_view", "007_trade_sources",
                 "008_row_level_security_everywhere"]
        assert pending(conn) == files
        assert migrate(conn) == files
        assert migrate(conn) == [] and pending(conn) == []
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert {"follows", "traders", "trades_public", "wallet_poll_state", "positions_current",
                "positions_closed", "job_locks", "cold_sweeps", "schema_migrations"} <= tables
        rls = conn.execute("SELECT count(*) FROM pg_class WHERE relname = ANY(%s) AND relrowsecurity",
                           (sorted(tables),)).fetchone()
        assert rls == (len(tables),)  # every table, schema_migrations too


def test_concurrent_migrate_runs_apply_each_file_once(fresh_database):
    dsn = fresh_database(migrated=False)
    results: list[list[str]] = []

    def run() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            results.append(migrate(conn))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(len(r) for r in results) == [0, 0, len(discover())]


def test_changed_applied_file_is_an_error(fresh_database, tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(Path(__file__).parent.parent / "sql", sql_dir)
    dsn = fresh_database(migrated=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn, sql_dir)
        path = sql_dir / "002_job_locks.sql"
        path.write_text(path.read_text() + "\n-- edited\n")
        with pytest.raises(MigrationError, match="002_job_locks"):
            migrate(conn, sql_dir)


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("INSERT INTO follows (follower_id, wallet) VALUES ('f', %s)", ("0xABC",)),
        ("INSERT INTO follows (follower_id, wallet) VALUES ('f', %s)", (W.upper().replace("0X", "0x"),)),
        ("INSERT INTO wallet_poll_state (wallet, tier) VALUES (%s, 'warm')", (W,)),
        ("INSERT INTO trades_public (trade_id, wallet, condition_id, asset, side, size, price, transaction_hash, "
         "traded_at) VALUES ('t', %s, %s, '1', 'HOLD', 1, 0.5, %s, now())", (W, CID, TX)),
        ("INSERT INTO trades_public (trade_id, wallet, condition_id, asset, side, size, price, transaction_hash, "
         "traded_at) VALUES ('t', %s, %s, '1', 'BUY', -1, 0.5, %s, now())", (W, CID, TX)),
        ("INSERT INTO positions_closed (wallet, asset, condition_id, size, avg_price, reason, opened_at, closed_at) "
         "VALUES (%s, '1', %s, 1, 0.5, 'sold', now(), now())", (W, CID)),
    ],
)
def test_constraints_refuse_bad_rows(session_db, sql, params):
    with psycopg.connect(session_db) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(sql, params)


def test_close_rows_are_unique_per_opening(session_db):
    wallet = "0x" + secrets.token_hex(20)
    with psycopg.connect(session_db) as conn:
        q = ("INSERT INTO positions_closed (wallet, asset, condition_id, size, avg_price, reason, opened_at, "
             "closed_at) VALUES (%s, '1', %s, 1, 0.5, 'manual_close', '2026-01-01', now())")
        conn.execute(q, (wallet, CID))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(q, (wallet, CID))


def _lock(dsn: str, job: str, owner: str, ttl: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT acquire_job_lock(%s, %s, %s)", (job, owner, ttl)).fetchone()[0]


def test_job_lock_is_atomic_under_concurrent_callers(session_db):
    job = "race_" + secrets.token_hex(4)
    barrier = threading.Barrier(8)
    wins: list[str] = []

    def contend(owner: str) -> None:
        barrier.wait()
        if _lock(session_db, job, owner, 30):
            wins.append(owner)

    threads = [threading.Thread(target=contend, args=(f"owner-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(wins) == 1


def test_job_lock_renews_expires_and_only_owner_releases(session_db):
    job = "ttl_" + secrets.token_hex(4)
    assert _lock(session_db, job, "a", 1)
    assert _lock(session_db, job, "a", 1)  # the holder renews
    assert not _lock(session_db, job, "b", 1)
    with psycopg.connect(session_db, autocommit=True) as conn:
        assert conn.execute("SELECT release_job_lock(%s, 'b')", (job,)).fetchone() == (False,)
    deadline = time.monotonic() + 10
    while not _lock(session_db, job, "b", 30):  # taken over once expired
        assert time.monotonic() < deadline, "expired lock was never taken over"
        time.sleep(0.2)
    assert not _lock(session_db, job, "a", 30)
    with psycopg.connect(session_db, autocommit=True) as conn:
        assert conn.execute("SELECT release_job_lock(%s, 'b')", (job,)).fetchone() == (True,)
    assert _lock(session_db, job, "a", 30)


def test_row_level_security_hides_rows_from_other_roles(session_db):
    role = "polycopy_anon_" + secrets.token_hex(4)
    with psycopg.connect(session_db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")  # noqa: S608 - identifier made here
        try:
            conn.execute(f"GRANT SELECT, INSERT ON follows, trades_public TO {role}")  # noqa: S608
            conn.execute("INSERT INTO follows (follower_id, wallet) VALUES ('rls', %s) ON CONFLICT DO NOTHING", (W,))
            conn.execute(f"SET ROLE {role}")  # noqa: S608
            assert conn.execute("SELECT count(*) FROM follows").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO follows (follower_id, wallet) VALUES ('x', %s)", (W,))
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"REVOKE ALL ON follows, trades_public FROM {role}")  # noqa: S608
            conn.execute(f"DROP ROLE {role}")  # noqa: S608


def test_follow_triggers_move_tiers(session_db):
    wallet = "0x" + secrets.token_hex(20)
    with psycopg.connect(session_db, autocommit=True) as conn:
        conn.execute("INSERT INTO follows (follower_id, wallet) VALUES ('a', %s), ('b', %s)", (wallet, wallet))
        tier = "SELECT tier FROM wallet_poll_state WHERE wallet = %s"
        assert conn.execute(tier, (wallet,)).fetchone() == ("hot",)
        conn.execute("DELETE FROM follows WHERE wallet = %s AND follower_id = 'a'", (wallet,))
        assert conn.execute(tier, (wallet,)).fetchone() == ("hot",)
        conn.execute("DELETE FROM follows WHERE wallet = %s", (wallet,))
        assert conn.execute(tier, (wallet,)).fetchone() == ("cold",)
