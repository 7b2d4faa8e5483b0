"""The command line as a user runs it: follow/unfollow, exit codes, messages without secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from polycopy_actors.db import queries
from tests.helpers import Proc, cli_env, write_config

W1 = "0x" + "1a" * 20
W2 = "0x" + "2B" * 20


def run(*args: str, dsn: str | None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLYCOPY_", "DATABASE_URL"))}
    if dsn is not None:
        env["DATABASE_URL"] = dsn
    return subprocess.run([sys.executable, "-m", "polycopy_actors", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_follow_unfollow_round_trip(db):
    proc = run("follow", W1, W2, "--follower", "alice", dsn=db)
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT follower_id, wallet FROM follows ORDER BY wallet").fetchall()
        assert rows == [("alice", W1), ("alice", W2.lower())]
    assert run("unfollow", W2, dsn=db).returncode == 0
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT wallet FROM follows").fetchall() == [(W1,)]
        assert conn.execute("SELECT tier FROM wallet_poll_state WHERE wallet = %s", (W2.lower(),)).fetchone() == (
            "cold",)


def test_follow_refuses_all_when_one_address_is_bad(db):
    proc = run("follow", W1, "0x123", dsn=db)
    assert proc.returncode == 2
    assert "0x123" in proc.stderr and "Traceback" not in proc.stderr
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM follows").fetchone() == (0,)


def test_unreachable_database_exits_3_without_password():
    proc = run("--tier", "hot", dsn="postgresql://svc:s3cretpw@127.0.0.1:1/polycopy")
    assert proc.returncode == 3, proc.stderr
    assert "127.0.0.1:1" in proc.stderr and "s3cretpw" not in proc.stderr + proc.stdout


def test_worker_refuses_an_unmigrated_database(fresh_database):
    dsn = fresh_database(migrated=False)
    proc = run("--tier", "hot", dsn=dsn)
    assert proc.returncode == 2
    assert "python -m polycopy_actors migrate" in proc.stderr
    assert run("migrate", dsn=dsn).returncode == 0
    again = run("migrate", dsn=dsn)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_traders_and_status(db):
    assert run("traders", "add", W1, dsn=db).returncode == 0
    assert run("follow", W2, dsn=db).returncode == 0
    proc = run("status", "--json", dsn=db)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["tiers"]["hot"]["wallets"] == 1 and data["tiers"]["cold"]["wallets"] == 1
    assert run("traders", "deactivate", W1, dsn=db).returncode == 0
    assert json.loads(run("status", "--json", dsn=db).stdout)["tiers"]["cold"]["wallets"] == 0
    text = run("status", dsn=db)
    assert text.returncode == 0 and "lock_holder" in text.stdout


@pytest.mark.timeout(60)
def test_json_logs_are_one_object_per_line(db, simulator, tmp_path):

    cfg = write_config(tmp_path / "j.yaml", {"metrics": {"port": 0}, "tiers": {"cold": {"jitter_seconds": 0}}})
    with psycopg.connect(db) as conn:
        queries.add_traders(conn, simulator.world.wallets[:2])
    proc = Proc(["--tier", "cold", "--once", "--log-format", "json", "--config", str(cfg)], cli_env(db, simulator))
    assert proc.wait(40) == 0, proc.log
    records = [json.loads(line) for line in proc.lines if line.strip()]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any("cold sweep completed" in r["msg"] for r in records)


# --- Hostile command line values: exit 2, one line, values escaped and cut -----------------------

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/none"  # a check that let a value through would exit 3
FORGED = "x\nERROR polycopy_actors: forged line"


def _refused(proc: subprocess.CompletedProcess[str], *, longest: int = 400) -> str:
    """The one error line of a refused command (usage lines aside)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    assert not any(line.startswith("ERROR") for line in proc.stderr.splitlines()), proc.stderr
    assert len(errors[0]) <= longest, errors[0]
    return errors[0]


@pytest.mark.timeout(120)
def test_follower_ids_are_bounded_and_printable(db):
    line = _refused(run("follow", W1, "--follower", "f" * 201, dsn=db))
    assert "--follower" in line and "200" in line
    line = _refused(run("follow", W1, "--follower", FORGED, dsn=db))
    assert "\\n" in line and "forged" in line  # shown escaped, on the error's own line
    for bad in ("", "tab\there", "esc\x1b[31m", "bidi\u202eevil"):
        _refused(run("unfollow", W1, "--follower", bad, dsn=db))
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM follows").fetchone() == (0,)
    ok = run("follow", W1, "--follower", "é" * 200, dsn=db)
    assert ok.returncode == 0, ok.stderr
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT follower_id FROM follows").fetchall() == [("é" * 200,)]


@pytest.mark.timeout(120)
def test_junk_arguments_are_refused_in_one_short_escaped_line():
    huge = "9" * 5000
    cases = [
        (("follow", "0x" + "z" * 5000, FORGED, W1), "invalid wallet"),
        (("follow", *[f"0xbad{i}" for i in range(50)]), "and 47 more"),
        (("traders", "add", FORGED), "invalid wallet"),
        (("tail", "--wallet", FORGED, "--wallet", "j" * 5000), "invalid wallet"),
        (("--tier", "hot", "--processes", huge), "--processes"),
        (("--tier", "hot", "--processes", "65"), "from 1 to 64"),
        (("--tier", "hot", "--processes", "1\n"), "--processes"),
        (("--tier", "h" * 5000), "invalid choice"),
        (("--tier", FORGED), "invalid choice"),
        (("migrate", FORGED, "y" * 5000), "unrecognized arguments"),
        (("--log-format", FORGED, "--tier", "hot"), "invalid choice"),
        (("--tier", "hot", "--env", FORGED), "invalid environment name"),
        (("--tier", "hot", "--env", "e" * 5000), "invalid environment name"),
        (("--tier", "hot", "--env", "é"), "invalid environment name"),
        (("--tier", "hot", "--env", "../default"), "invalid environment name"),
        (("--tier", "hot", "--config", "/nonexistent/" + FORGED), "file not found"),
    ]
    for args, expected in cases:
        line = _refused(run(*args, dsn=UNREACHABLE, timeout=30))
        assert expected in line, (args[:2], line)
