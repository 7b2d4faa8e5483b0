"""Security: parameterised SQL only, and no password in logs, errors or /metrics."""

from __future__ import annotations

import ast
import os
import re
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from polycopy_actors import PROJECT_ROOT
from tests.helpers import (
    Proc,
    cli_env,
    follow,
    free_port,
    healthz,
    scrape,
    started_world,
    wait_for,
    write_config,
)

SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|GRANT|FROM|WHERE)\b")
SECRET = "Sup3r-s3cret-pw"


def _formatted_sql(node: ast.AST) -> bool:
    """An f-string, ``%`` or ``.format`` building text that looks like SQL."""
    if isinstance(node, ast.JoinedStr):
        text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        return bool(SQL_WORDS.search(text))
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return any(isinstance(side, ast.Constant) and isinstance(side.value, str) and SQL_WORDS.search(side.value)
                   for side in (node.left, node.right)) and not all(
            isinstance(side, ast.Constant) for side in (node.left, node.right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        base = node.func.value
        return isinstance(base, ast.Constant) and isinstance(base.value, str) and bool(SQL_WORDS.search(base.value))
    return False


@pytest.mark.timeout(30)
def test_no_string_formatted_sql_in_the_package():
    offenders = []
    files = sorted((PROJECT_ROOT / "polycopy_actors").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "execute", "executemany", "copy"):
                if node.args and _formatted_sql(node.args[0]):
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
            elif _formatted_sql(node) and "error" not in ast.unparse(node).lower():
                offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{getattr(node, 'lineno', '?')} (SQL text built)")
    assert offenders == []


@pytest.mark.timeout(30)
def test_the_checker_catches_formatted_sql():
    bad = ast.parse('conn.execute(f"SELECT * FROM t WHERE w = {w}")\nconn.execute("DELETE FROM t WHERE id = %s" % x)')
    calls = [n for n in ast.walk(bad) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "execute"]
    assert all(_formatted_sql(c.args[0]) for c in calls) and len(calls) == 2
    assert not _formatted_sql(ast.parse('"SELECT * FROM t WHERE w = %s"').body[0].value)


def _with_password(dsn: str, password: str, **changes: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    info.update(password=password, **changes)
    return psycopg.conninfo.make_conninfo(**info)


@pytest.mark.timeout(90)
def test_password_never_reaches_logs_errors_or_metrics(db, tmp_path):
    world, sim = started_world(61, 3, 3, 10)
    follow(db, world.wallets[:2])
    port = free_port()
    cfg = write_config(tmp_path / "s.yaml", {"metrics": {"port": port, "host": "127.0.0.1"},
                                             "logging": {"level": "DEBUG", "summary_interval_seconds": 1}})
    secret_dsn = _with_password(db, SECRET)  # trust auth: the password is sent but not needed
    try:
        run = Proc(["--tier", "hot", "--config", str(cfg)], cli_env(secret_dsn, sim))
        try:
            wait_for(lambda: run.has("tier hot, last"), 30, "a progress line")
            metrics_text = str(scrape(port))
        finally:
            run.popen.send_signal(signal.SIGTERM)
            assert run.wait(20) == 0, run.log
        assert "starting tier hot" in run.log and SECRET not in run.log and SECRET not in metrics_text
        # Failing paths: a database that does not exist, and a server that does not answer.
        for dsn in (_with_password(db, SECRET, dbname="no_such_db_here"),
                    _with_password(db, SECRET, port="1", connect_timeout="2")):
            for args in (["--tier", "hot", "--once"], ["status"], ["migrate"]):
                proc = Proc(args, cli_env(dsn, sim))
                code = proc.wait(30)
                assert code == 3, proc.log
                assert SECRET not in proc.log and "Traceback" not in proc.log and proc.log.strip()
    finally:
        sim.stop()


# --- Hostile input (issue "Hostile input never stops the pipeline", items 7, 9-11) -------------------

UNPARSEABLE = "postgresql://postgres:MyS3cretPW@[::1:5999/x"
UNESCAPED_AT = "postgresql://postgres:My@S3cretAt@127.0.0.1:1/polycopy"
UNESCAPED_SLASH = "postgresql://postgres:Sl/ashS3cret@127.0.0.1:1/polycopy"


def _no_piece_of(text: str, *pieces: str) -> bool:
    return not any(piece in text for piece in pieces)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("dsn", "pieces"), [
    (UNPARSEABLE, ("MyS3cretPW", "[::1:5999")),
    (UNESCAPED_AT, ("S3cretAt", "My@")),
    (UNESCAPED_SLASH, ("ashS3cret", "Sl/")),
    ("host=127.0.0.1 port=1 password='Quoted S3cret", ("Quoted", "S3cret")),
])
def test_a_database_url_the_driver_cannot_parse_exits_2_and_shows_none_of_it(dsn, pieces):
    for args in (["status"], ["migrate"], ["--tier", "hot", "--once"]):
        proc = Proc(args, cli_env(dsn))
        assert proc.wait(40) == 2, proc.log
        assert "DATABASE_URL cannot be parsed as a PostgreSQL connection string" in proc.log
        assert "hint:" in proc.log and len(proc.lines) == 1, proc.log
        assert _no_piece_of(proc.log, *pieces) and "Traceback" not in proc.log, proc.log


@pytest.mark.timeout(60)
def test_connect_describe_and_scrub_show_no_piece_of_a_password():
    from polycopy_actors.config import load_settings
    from polycopy_actors.db.connect import connect, describe_dsn, dsn_secrets, scrub
    from polycopy_actors.exitcodes import ExitError

    settings = load_settings(env="development", environ={}, overrides={"db": {"connect_timeout_seconds": 2}})
    at = "postgresql://postgres:My@S3cretAt@127.0.0.1/polycopy"
    assert "S3cretAt" not in describe_dsn(at) and describe_dsn(at).endswith(":5432/polycopy")
    assert describe_dsn(UNPARSEABLE) == "<unparseable connection string>"
    assert describe_dsn("postgresql://svc:pw@db.example.com:6543/app") == "db.example.com:6543/app"
    # connect() is reached without the CLI's check (run_tier_command, the pool): still exit 3, no secret.
    for dsn, pieces in ((UNPARSEABLE, ("MyS3cretPW",)), (at, ("S3cretAt", "My@")),
                        (UNESCAPED_SLASH, ("ashS3cret", "Sl/"))):
        with pytest.raises(ExitError) as info:
            connect(dsn, settings)
        assert info.value.code == 3 and _no_piece_of(info.value.message, *pieces), info.value.message
    # What libpq says about such a string, and what psycopg's parse error quotes, scrubbed.
    assert "S3cretAt" not in scrub("failed to resolve host 'S3cretAt@127.0.0.1': unknown", at)
    assert "MyS3cretPW" not in scrub(f'end of string reached in URI: "{UNPARSEABLE}"')
    assert "postgres:My@S3cretAt" in dsn_secrets(at)
    text = scrub("password=plain1 password = 'qu\\'oted' password='unterminated tail")
    assert _no_piece_of(text, "plain1", "qu", "oted", "unterminated", "tail"), text


_LOG_SCRIPT = """
import logging, sys
from polycopy_actors.app.logs import setup_logging
from polycopy_actors.db.connect import describe_dsn
setup_logging("INFO", sys.argv[1])
dsn = __import__("os").environ["DATABASE_URL"]
log = logging.getLogger("polycopy_actors")
log.info("connecting with %s", dsn)
log.warning("extra", extra={"dsn": dsn})
try:
    raise RuntimeError(f"cannot use {dsn!r}")
except RuntimeError:
    log.exception("internal error")
print("done", file=sys.stderr)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(("dsn", "pieces"), [
    (UNPARSEABLE, ("MyS3cretPW",)),
    ("postgresql://svc:My@S3cretAt@db.example.com/app", ("S3cretAt", "My@")),
    ("host=db.example.com password=KwS3cret dbname=app", ("KwS3cret",)),
])
def test_the_log_filter_scrubs_the_database_secrets_even_from_tracebacks(fmt, dsn, pieces):
    env = {**cli_env(dsn), "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run([sys.executable, "-c", _LOG_SCRIPT, fmt], env=env, capture_output=True, text=True,
                          timeout=40, cwd=PROJECT_ROOT)
    assert proc.returncode == 0 and "done" in proc.stderr, proc.stderr
    assert "internal error" in proc.stderr and "RuntimeError" in proc.stderr and "Traceback" in proc.stderr
    assert _no_piece_of(proc.stderr, *pieces), proc.stderr


def _tables(conn: psycopg.Connection) -> dict[str, bool]:
    """Every table of the schema (plain and partitioned) and whether row level security is on."""
    return dict(conn.execute(
        "SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')").fetchall())


@pytest.mark.timeout(60)
def test_every_table_of_the_schema_has_row_level_security(db, fresh_database, tmp_path):
    with psycopg.connect(db) as conn:
        tables = _tables(conn)
    assert "schema_migrations" in tables and len(tables) >= 10, tables
    assert [name for name, rls in sorted(tables.items()) if not rls] == []
    # A new database: migrate.py creates schema_migrations with row level security from the start.
    from polycopy_actors.db.migrate import migrate

    (tmp_path / "001_nothing.sql").write_text("SELECT 1;\n")
    dsn = fresh_database(migrated=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert migrate(conn, tmp_path) == ["001_nothing"]
        assert _tables(conn) == {"schema_migrations": True}


@pytest.mark.timeout(90)
def test_a_non_owner_role_with_grant_all_cannot_touch_schema_migrations(db):
    from polycopy_actors.db.migrate import MigrationError, pending

    role = "polycopy_granted_" + secrets.token_hex(4)
    with psycopg.connect(db, autocommit=True) as conn:
        before = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
        conn.execute(f"CREATE ROLE {role} NOLOGIN")  # noqa: S608 - identifier made here
        try:
            conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")  # noqa: S608 - as Supabase does
            conn.execute(f"SET ROLE {role}")  # noqa: S608
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (0,)
            assert conn.execute("UPDATE schema_migrations SET checksum = 'forged'").rowcount == 0
            assert conn.execute("DELETE FROM schema_migrations").rowcount == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO schema_migrations (version, checksum) VALUES ('999_x', 'x')")
            with pytest.raises(MigrationError, match="row level security"):
                pending(conn)  # says why, instead of taking every migration for pending
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP OWNED BY {role}")  # noqa: S608 - its grants in this database
            conn.execute(f"DROP ROLE {role}")  # noqa: S608
        assert conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall() == before
    proc = subprocess.run([sys.executable, "-m", "polycopy_actors", "migrate"], env=cli_env(db),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "up to date" in proc.stdout, proc.stderr


@pytest.mark.timeout(60)
def test_database_connections_use_tcp_keepalives(session_db):
    from polycopy_actors.config import load_settings
    from polycopy_actors.db.connect import connect, make_pool

    settings = load_settings(env="development", environ={})
    pool = make_pool(session_db, settings)
    pool.open(wait=True, timeout=20)
    try:
        with connect(session_db, settings) as one, pool.connection() as pooled:
            for conn in (one, pooled):
                if conn.info.host.startswith("/"):
                    pytest.skip("a Unix socket: TCP keepalives do not apply")
                with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                    got = (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                           sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
                # A dead peer is noticed within idle + interval * count (25 s), unacknowledged data in 30 s.
                assert got == (10, 5, 3, 30000)
    finally:
        pool.close()


def _half_sent_flood(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each send half a request (no blank line ending the headers)."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    return socks


@pytest.mark.timeout(90)
def test_a_flood_of_half_sent_requests_holds_a_bounded_number_of_threads():
    from polycopy_actors.observe.http import MAX_HANDLER_THREADS, REQUEST_TIMEOUT_SECONDS, MetricsServer

    server = MetricsServer("127.0.0.1", 0, lambda: (True, "ok")).start()
    baseline = threading.active_count()
    try:
        started = time.monotonic()
        socks = _half_sent_flood(server.port, 300)
        peak = threading.active_count()
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        closed = 0
        deadline = started + REQUEST_TIMEOUT_SECONDS + 20
        while closed < len(socks) and time.monotonic() < deadline:  # bounded poll: the server closes them
            peak = max(peak, threading.active_count())
            for key, _ in sel.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    closed += 1
        peak = max(peak, threading.active_count())
        sel.close()
        for s in socks:
            s.close()
        assert peak <= baseline + MAX_HANDLER_THREADS + 1, (peak, baseline)
        assert closed == len(socks), f"{len(socks) - closed} half-sent requests still open"
        # Dropped within the socket timeout (plus the time to open them), and the server answers again.
        assert time.monotonic() - started < REQUEST_TIMEOUT_SECONDS + 15
        status, body = wait_for(lambda: _try_healthz(server.port), 10, "/healthz answering after the flood")
        assert (status, body["status"]) == (200, "ok")
        assert scrape(server.port) is not None
    finally:
        server.stop()


def _try_healthz(port: int) -> tuple[int, dict] | None:
    try:
        return healthz(port)
    except OSError:
        return None


@pytest.mark.timeout(60)
def test_a_busy_metrics_server_closes_extra_connections_at_once_and_recovers():
    from polycopy_actors.observe.http import MAX_HANDLER_THREADS, REQUEST_TIMEOUT_SECONDS, MetricsServer

    server = MetricsServer("127.0.0.1", 0, lambda: (True, "ok")).start()
    try:
        socks = _half_sent_flood(server.port, MAX_HANDLER_THREADS)
        wait_for(lambda: server._server.refused == 0 and len(server._server._open) == MAX_HANDLER_THREADS, 10,
                 "every handler thread busy")
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        started = time.monotonic()
        try:
            extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            answer = extra.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
        assert answer == b"" and time.monotonic() - started < 2  # closed at once, not queued
        extra.close()
        status, _ = wait_for(lambda: _try_healthz(server.port), REQUEST_TIMEOUT_SECONDS + 10, "/healthz again")
        assert status == 200
        for s in socks:
            s.close()
    finally:
        server.stop()
