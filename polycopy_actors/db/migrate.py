"""Schema migrations: the ordered plain-SQL files of ``sql/``.

Each pending file runs in its own transaction and is recorded in ``schema_migrations`` with its
SHA-256; an applied file whose text changed is an error. A session advisory lock serialises
concurrent ``migrate`` runs (two machines deploying at once).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from polycopy_actors.config import Settings
from polycopy_actors.db.connect import PROJECT_SQL_DIR, Database, connect, describe_dsn
from polycopy_actors.exitcodes import RET_CONFIG, ExitError

log = logging.getLogger(__name__)

#: Advisory lock key of migrations ("polycopy" in ASCII, as a bigint).
MIGRATION_LOCK_KEY = 0x706F6C79636F7079


class MigrationError(Exception):
    """The database's recorded migrations disagree with the files of ``sql/``."""


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path
    checksum: str

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover(sql_dir: Path = PROJECT_SQL_DIR) -> list[Migration]:
    """The migration files in order (by name: ``001_...sql``, ``002_...sql``)."""
    files = sorted(sql_dir.glob("*.sql"))
    if not files:
        raise MigrationError(f"no migration files in {sql_dir}")
    return [
        Migration(version=p.stem, path=p, checksum=hashlib.sha256(p.read_bytes()).hexdigest()) for p in files
    ]


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
# Like every table: with no policy, a role that is neither the owner nor BYPASSRLS (Supabase's anon and
# authenticated roles, whatever GRANT ALL they hold) can neither read nor change the recorded checksums.
_ENABLE_RLS = "ALTER TABLE schema_migrations ENABLE ROW LEVEL SECURITY"

#: Whether row level security hides schema_migrations' rows from the current role.
_HIDDEN_SQL = """
SELECT c.relrowsecurity
       AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
       AND NOT r.rolbypassrls AND NOT r.rolsuper
FROM pg_class c, pg_roles r
WHERE c.oid = to_regclass('schema_migrations') AND r.rolname = current_user
"""


def _create_table(conn: psycopg.Connection[Any]) -> None:
    """Create ``schema_migrations`` (row level security on) unless it exists."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if exists and exists[0]:
        return
    with conn.transaction():
        conn.execute(_CREATE_TABLE)
        conn.execute(_ENABLE_RLS)


def _applied(conn: psycopg.Connection[Any]) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    hidden = conn.execute(_HIDDEN_SQL).fetchone()
    if hidden and hidden[0]:
        raise MigrationError(
            "row level security hides schema_migrations from this database role: connect as the owner of "
            "the tables (or a role with BYPASSRLS, such as Supabase's service role)"
        )
    return dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())


def pending(conn: psycopg.Connection[Any], sql_dir: Path = PROJECT_SQL_DIR) -> list[str]:
    """Versions not yet applied (raises MigrationError on a changed applied file)."""
    applied = _applied(conn)
    out = []
    for mig in discover(sql_dir):
        recorded = applied.get(mig.version)
        if recorded is None:
            out.append(mig.version)
        elif recorded != mig.checksum:
            raise MigrationError(
                f"migration {mig.version} was applied with checksum {recorded[:12]}… but {mig.path.name} "
                f"now has {mig.checksum[:12]}…: applied migrations must not change; add a new file instead"
            )
    return out


def migrate(conn: psycopg.Connection[Any], sql_dir: Path = PROJECT_SQL_DIR) -> list[str]:
    """Apply pending migrations on an autocommit connection; return the versions applied."""
    if not conn.autocommit:
        raise ValueError("migrate() needs an autocommit connection")
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    try:
        _create_table(conn)
        todo = set(pending(conn, sql_dir))
        done = []
        for mig in discover(sql_dir):
            if mig.version not in todo:
                continue
            log.info("applying migration %s", mig.path.name)
            with conn.transaction():
                conn.execute(mig.sql)  # several statements, no parameters
                conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                    (mig.version, mig.checksum),
                )
            done.append(mig.version)
        return done
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def prepare_schema(db: Database, settings: Settings) -> None:
    """Refuse pending migrations on a configured database; migrate the embedded one by itself."""
    with connect(db.dsn, settings) as conn:
        todo = pending(conn)
        if not todo:
            return
        if db.embedded:
            applied = migrate(conn)
            log.info("embedded database migrated: %s", ", ".join(applied))
            return
    raise ExitError(
        RET_CONFIG,
        f"database {describe_dsn(db.dsn)} has {len(todo)} pending migration(s) ({', '.join(todo)}): "
        "run `python -m polycopy_actors migrate` first",
    )
