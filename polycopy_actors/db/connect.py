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
from polycopy_actors.exitcodes import RET_CONFIG, RET_DATABASE, ExitError

log = logging.getLogger(__name__)


#: What a command prints for a ``DATABASE_URL`` the driver cannot parse (never any part of the value).
DSN_PARSE_ERROR = "DATABASE_URL cannot be parsed as a PostgreSQL connection string"
DSN_HINT = ("hint: in a postgresql:// URL, percent-encode the special characters of the user name and password "
            "(@ as %40, / as %2F, : as %3A, ? as %3F), or use the key=value form")

_URL_PREFIX_RE = re.compile(r"^\s*postgres(?:ql)?://", re.IGNORECASE)
#: A host as libpq takes it: a name or an IPv4 address, an IPv6 address, or a Unix socket directory.
_HOST_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[?[0-9A-Fa-f:.]{2,45}\]?|/[^\x00-\x20\x7f@'\"]{0,255}")
_PORT_RE = re.compile(r"[0-9]{1,5}(?:,[0-9]{1,5}){0,15}")
_DBNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.$-]{0,62}")


def _parse(dsn: str) -> dict[str, Any] | None:
    """libpq's reading of a connection string, or None when it cannot be parsed."""
    try:
        return conninfo.conninfo_to_dict(dsn)
    except (psycopg.Error, ValueError, TypeError):
        return None


def _url_parts(dsn: str) -> tuple[str, str] | None:
    """``(head, path)`` of a URL connection string: what libpq reads user info and hosts from (up to
    the first ``/``), and the text from there to the query; None for the key=value form."""
    m = _URL_PREFIX_RE.match(dsn)
    if m is None:
        return None
    rest = dsn[m.end():]
    head, slash, tail = rest.partition("/")
    return head, slash + tail.split("?", 1)[0]


def _url_userinfo(dsn: str) -> str | None:
    """The raw userinfo of a URL connection string: everything between ``://`` and the last ``@`` of
    the authority (``user:My@S3cret`` of ``postgresql://user:My@S3cret@host/db``; with an unescaped
    ``/`` in the password, up to the last ``@`` before the query), else None."""
    parts = _url_parts(dsn)
    if parts is None:
        return None
    head, path = parts
    if "@" in head:
        return head[: head.rindex("@")]
    if "@" in path:
        whole = head + path
        return whole[: whole.rindex("@")]
    return None


def _looks_like_host(host: str) -> bool:
    return all(_HOST_RE.fullmatch(part) for part in host.split(","))


def check_dsn(dsn: str) -> None:
    """Raise :class:`ExitError` (exit 2) for a connection string the driver cannot parse or reads
    other than meant (an unescaped ``@`` or ``/`` in the password); the message holds no part of it."""
    params = _parse(dsn)
    if params is None:
        raise ExitError(RET_CONFIG, f"{DSN_PARSE_ERROR} ({DSN_HINT})")
    parts = _url_parts(dsn)
    if parts is not None:
        head, path = parts
        if head.count("@") > 1 or "@" in path:
            raise ExitError(RET_CONFIG, f"{DSN_PARSE_ERROR}: the part before the host holds an unescaped "
                                        f"@ or / ({DSN_HINT})")
    port = params.get("port")
    if port and not _PORT_RE.fullmatch(str(port)):
        raise ExitError(RET_CONFIG, f"{DSN_PARSE_ERROR}: the port is not a number ({DSN_HINT})")


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a connection string: safe to log (no user, no password). A host or
    database name that does not look like one (a piece of a password, after an unescaped ``@``) is
    replaced by a placeholder."""
    params = _parse(dsn)
    if params is None:
        return "<unparseable connection string>"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or params.get("user") or "")
    host = host if _looks_like_host(host) else "<host not shown>"
    port = port if _PORT_RE.fullmatch(port) else "<port not shown>"
    dbname = dbname if not dbname or _DBNAME_RE.fullmatch(dbname) else "<database not shown>"
    return f"{host}:{port}/{dbname}"


def dsn_secrets(dsn: str | None) -> list[str]:
    """The strings of ``dsn`` no message may show, longest first: its password (as libpq reads it),
    the raw userinfo of a URL (``user:pass@word``), its password part and that part's pieces (what
    libpq took for host, port or database name when the password holds an unescaped ``@`` or ``/``)."""
    if not dsn:
        return []
    found: set[str] = set()
    params = _parse(dsn) or {}
    if params.get("password"):
        found.add(str(params["password"]))
    userinfo = _url_userinfo(dsn)
    if userinfo:
        _user, sep, password = userinfo.partition(":")
        if sep and password:
            found.update((userinfo, password))
            # Pieces of a password with an unescaped "@" or "/" that libpq took for host, port or database.
            found.update(p for p in re.split(r"[@/]", password) if len(p) >= 2 and p != password)
        elif not sep and "@" in userinfo:
            # No ":" but an "@": a mangled user:password pair, or a password taken for a user name.
            found.add(userinfo)
            found.update(p for p in re.split(r"[@/]", userinfo)[1:] if len(p) >= 2)
    return sorted(found, key=len, reverse=True)


_URL_USERINFO_RE = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s\"'<>]*@")
_KW_PASSWORD_RE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|\S+)", re.IGNORECASE)


def scrub(text: str, dsn: str | None = None, secrets: list[str] | None = None) -> str:
    """Remove secrets from a message: the userinfo of any URL (everything between ``://`` and the last
    ``@``), ``password=`` words, and the secrets of ``dsn`` (:func:`dsn_secrets`) or ``secrets``."""
    out = _URL_USERINFO_RE.sub(r"\1***@", text)
    out = _KW_PASSWORD_RE.sub(r"\1***", out)
    for secret in (secrets if secrets is not None else dsn_secrets(dsn)):
        if secret:
            out = out.replace(secret, "***")
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        check_dsn(settings.database_url)
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


#: TCP keepalive probes: first after 10 s idle, then every 5 s, the connection is dead after 3 unanswered.
KEEPALIVES_IDLE_SECONDS = 10
KEEPALIVES_INTERVAL_SECONDS = 5
KEEPALIVES_COUNT = 3
#: Unacknowledged data for this long (ms) ends the connection (Linux ``TCP_USER_TIMEOUT``).
TCP_USER_TIMEOUT_MS = 30_000


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection options shared by the pool and one-off connections."""
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, round(settings.db.connect_timeout_seconds)),
        "application_name": "polycopy_actors",
        # TCP keepalives and a user timeout (libpq, client side: they work through Supabase's poolers
        # too): a connection dropped silently (NAT, failover) is noticed within about 30 s instead of
        # a query hanging until the kernel gives up after many minutes.
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVES_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }
    if not settings.db.prepared_statements:
        # Supabase's transaction pooler cannot keep prepared statements across transactions.
        kwargs["prepare_threshold"] = None
    return kwargs


def connect(dsn: str, settings: Settings, autocommit: bool = True) -> psycopg.Connection[Any]:
    """One connection; any driver error while connecting (an unreachable server, a connection string
    it cannot parse) raises :class:`ExitError` (exit 3) with no secret."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **connect_kwargs(settings))
    except psycopg.Error as exc:
        # A parse error quotes the whole connection string: none of its text is shown then.
        reason = scrub(_first_line(exc), dsn) if _parse(dsn) is not None else DSN_PARSE_ERROR
        raise ExitError(RET_DATABASE, f"database unreachable at {describe_dsn(dsn)}: {reason}") from None


def make_pool(dsn: str, settings: Settings, name: str = "polycopy") -> ConnectionPool:
    """A closed pool; the owner opens it (``pool.open(wait=True, timeout=...)``) and closes it.

    No ``check`` on the way out of the pool: it would run a query before the owner's
    :class:`~polycopy_actors.db.watchdog.ConnectionWatchdog` can guard the connection, and on a path that
    stalls in silence it would wait forever. A broken connection fails its owner's first statement
    instead (an outage, retried), and the pool drops it when it comes back broken."""
    kwargs = connect_kwargs(settings)
    kwargs["autocommit"] = False
    return ConnectionPool(
        dsn,
        min_size=settings.db.pool_min_size,
        max_size=settings.db.pool_max_size,
        kwargs=kwargs,
        open=False,
        name=name,
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
