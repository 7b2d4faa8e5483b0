"""Database access: connection strings without secrets, the embedded server, the pool.

One :class:`psycopg_pool.ConnectionPool` per process, created closed and opened by its owner
(the DbWriter actor, or a CLI command) after any process spawn; never shared across processes.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool

from polycopy_actors import PROJECT_ROOT
from polycopy_actors.config import Settings
from polycopy_actors.exitcodes import RET_DATABASE, ExitError

log = logging.getLogger(__name__)


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a connection string: safe to log (no user, no password)."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable connection string>"
    host = str(params.get("host") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "")
    return f"{host}:{port}/{dbname}"


_URL_PASSWORD_RE = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")
_KW_PASSWORD_RE = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def scrub(text: str, dsn: str | None = None) -> str:
    """Remove passwords from a message: URL userinfo, ``password=`` words and the DSN's own password."""
    out = _URL_PASSWORD_RE.sub(r"\1***\3", text)
    out = _KW_PASSWORD_RE.sub(r"\1***", out)
    if dsn:
        try:
            secret = conninfo.conninfo_to_dict(dsn).get("password")
        except psycopg.ProgrammingError:
            secret = None
        if secret:
            out = out.replace(str(secret), "***")
    return out


@dataclass
class Database:
    """Where the database is: a DSN and, for the embedded default, the server to stop on exit."""

    dsn: str
    embedded: bool
    _server: Any = None

    def close(self) -> None:
        """Stop the embedded server (if this process started it)."""
        if self._server is not None:
            try:
                self._server.cleanup()
            finally:
                self._server = None


def open_database(settings: Settings) -> Database:
    """Resolve the database of this run: ``DATABASE_URL`` or the embedded server (started here)."""
    if settings.database_url:
        return Database(dsn=settings.database_url, embedded=False)
    data_dir = Path(settings.db.embedded_data_dir)
    if not data_dir.is_absolute():
        data_dir = Path.cwd() / data_dir
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers)
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            import pgserver  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ExitError(
            RET_DATABASE,
            "DATABASE_URL is not set and the embedded server is not installed: "
            'pip install -e ".[embedded]" (or set DATABASE_URL)',
        ) from None
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info("DATABASE_URL is not set: starting the embedded PostgreSQL in %s", data_dir)
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers)
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    except Exception as exc:  # pgserver raises plain exceptions of several kinds
        raise ExitError(RET_DATABASE, f"could not start the embedded PostgreSQL in {data_dir}: {exc}") from None
    return Database(dsn=server.get_uri(), embedded=True, _server=server)


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection options shared by the pool and one-off connections."""
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, round(settings.db.connect_timeout_seconds)),
        "application_name": "polycopy_actors",
    }
    if not settings.db.prepared_statements:
        # Supabase's transaction pooler cannot keep prepared statements across transactions.
        kwargs["prepare_threshold"] = None
    return kwargs


def connect(dsn: str, settings: Settings, autocommit: bool = True) -> psycopg.Connection[Any]:
    """One connection; an unreachable server raises :class:`ExitError` (exit 3) with no secret."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **connect_kwargs(settings))
    except psycopg.OperationalError as exc:
        raise ExitError(
            RET_DATABASE,
            f"database unreachable at {describe_dsn(dsn)}: {scrub(str(exc).strip().splitlines()[0], dsn)}",
        ) from None


def make_pool(dsn: str, settings: Settings, name: str = "polycopy") -> ConnectionPool:
    """A closed pool; the owner opens it (``pool.open(wait=True, timeout=...)``) and closes it."""
    kwargs = connect_kwargs(settings)
    kwargs["autocommit"] = False
    return ConnectionPool(
        dsn,
        min_size=settings.db.pool_min_size,
        max_size=settings.db.pool_max_size,
        kwargs=kwargs,
        open=False,
        name=name,
        check=ConnectionPool.check_connection,
        reconnect_timeout=settings.db.give_up_seconds,
    )


def wait_reachable(dsn: str, settings: Settings, attempts: int = 1) -> None:
    """Check the database answers; raise ExitError(3) naming the host (never the password)."""
    for attempt in range(attempts):
        try:
            with connect(dsn, settings) as conn:
                conn.execute("SELECT 1")
            return
        except ExitError:
            if attempt + 1 >= attempts:
                raise
            time.sleep(0.5)


PROJECT_SQL_DIR = PROJECT_ROOT / "sql"
