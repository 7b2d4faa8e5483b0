"""Security: parameterised SQL only, and no password in logs, errors or /metrics."""

from __future__ import annotations

import ast
import re
import signal

import psycopg
import pytest

from polycopy_actors import PROJECT_ROOT
from tests.helpers import Proc, cli_env, follow, free_port, scrape, started_world, wait_for, write_config

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
