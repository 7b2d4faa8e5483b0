"""Which database errors are which: an outage (retry later), refused data (isolate the row), or a bug.

- **Outage**: the connection failed or was cut, the pool had no connection in time, or a statement was
  cut by ``lock_timeout``/``statement_timeout`` (``busy``): the work is kept and retried; a read asked
  of the DbReader raises :class:`DatabaseUnavailable` to its caller.
- **Data**: PostgreSQL refused a value (``22xxx`` data exceptions, ``23xxx`` integrity violations) or
  the driver could not encode it (a lone surrogate): the writer isolates the row (see
  :func:`polycopy_actors.db.writes.write_isolating`).
- Anything else (``42xxx`` syntax or undefined objects, ...) is a bug: it raises, the actor fails, the
  supervisor restarts it and counts it.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

#: Errors of the connection or of the server's availability (retry later).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
#: Errors of the data, not of the connection.
DATA_ERRORS: tuple[type[Exception], ...] = (psycopg.DataError, psycopg.IntegrityError, UnicodeEncodeError)


class DatabaseUnavailable(Exception):
    """A read or lease the database could not serve now (an outage, or the writer backing off)."""


def outage_state(exc: BaseException) -> str:
    """``busy`` for a statement cut by a timeout (the server answers, a lock or a slow query holds us up),
    ``unreachable`` for everything else of :data:`OUTAGE_ERRORS`."""
    if isinstance(exc, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)):
        return "busy"
    return "unreachable"
