"""Shared fixtures: a real PostgreSQL database per test session (random name, dropped at the end)
and the project's Polymarket simulator over real HTTP.

The server is ``$POLYCOPY_TEST_DATABASE_URL``, else 127.0.0.1:5432 as ``postgres``, else an embedded
pgserver started for the session.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import psycopg
import pykka
import pytest
from hypothesis import settings as hypothesis_settings
from psycopg import conninfo

from polycopy_actors.db.migrate import migrate
from polycopy_actors.simulator import SimConfig, Simulator, World

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of a maintenance database on a running server."""
    dsn = os.environ.get("POLYCOPY_TEST_DATABASE_URL") or DEFAULT_SERVER
    if _reachable(dsn):
        yield dsn
        return
    import pgserver  # noqa: PLC0415 - optional: only when no server answers

    tmp = tempfile.mkdtemp(prefix="polycopy-test-pg-")
    server = pgserver.get_server(os.path.join(tmp, "pgdata"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def _with_db(server_dsn: str, dbname: str) -> str:
    params = conninfo.conninfo_to_dict(server_dsn)
    params["dbname"] = dbname
    return conninfo.make_conninfo(**params)


@pytest.fixture(scope="session")
def fresh_database(pg_server: str) -> Iterator[Any]:
    """A factory of empty databases with random names, all dropped at the end of the session."""
    created: list[str] = []

    def make(migrated: bool = True) -> str:
        name = "polycopy_test_" + secrets.token_hex(6)
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # noqa: S608 - random identifier made here
        created.append(name)
        dsn = _with_db(pg_server, name)
        if migrated:
            with psycopg.connect(dsn, autocommit=True) as conn:
                migrate(conn)
        return dsn

    yield make
    with psycopg.connect(pg_server, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # noqa: S608


@pytest.fixture(scope="session")
def session_db(fresh_database: Any) -> str:
    """One migrated database shared by the tests that only add rows of their own."""
    return fresh_database()


@pytest.fixture()
def db(fresh_database: Any) -> str:
    """A migrated database of this test's own."""
    return fresh_database()


@pytest.fixture()
def simulator() -> Iterator[Simulator]:
    world = World(seed=11, markets=6, wallets=6)
    sim = Simulator(world, SimConfig(seed=11)).start()
    try:
        yield sim
    finally:
        sim.stop()


# CI replays the same examples every run (a failure is reproducible); explore with
# `pytest --hypothesis-profile=explore` for new random ones.
hypothesis_settings.register_profile("ci", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False, max_examples=2000)
hypothesis_settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)
