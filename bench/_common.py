"""Shared set-up of the benchmarks: a throw-away database on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg

from polycopy_actors.db.migrate import migrate

SERVER = os.environ.get("POLYCOPY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A migrated database with a random name, dropped afterwards."""
    name = "polycopy_bench_" + secrets.token_hex(5)
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # noqa: S608 - random identifier made here
    dsn = psycopg.conninfo.make_conninfo(SERVER, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
        yield dsn
    finally:
        with psycopg.connect(SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # noqa: S608


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]
