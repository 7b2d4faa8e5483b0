"""Command line: ``python -m polycopy_actors [--tier hot|cold] | migrate | follow | ...``.

Exit codes are in :mod:`polycopy_actors.exitcodes`. Every expected failure ends with one line
on stderr, never a traceback; passwords are never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from polycopy_actors import __version__
from polycopy_actors.api.wallets import InvalidWallet, normalize_wallets
from polycopy_actors.app.logs import setup_logging
from polycopy_actors.app.multiproc import cleanup_multiprocess_metrics, prepare_multiprocess_metrics
from polycopy_actors.app.status import collect_status, format_status
from polycopy_actors.app.tail import tail
from polycopy_actors.config import ConfigError, Settings, load_settings
from polycopy_actors.config.loader import shown
from polycopy_actors.db import queries
from polycopy_actors.db.connect import check_dsn, connect, open_database, scrub
from polycopy_actors.db.migrate import MigrationError, migrate, prepare_schema
from polycopy_actors.exitcodes import RET_CONFIG, RET_DATABASE, RET_INTERNAL, RET_OK, ExitError

log = logging.getLogger("polycopy_actors")


#: Longest follower id (the database's CHECK on follows.follower_id).
MAX_FOLLOWER_CHARS = 200
#: Most values of one kind a message lists.
_LISTED = 3
_MAX_PROCESSES = int(next(f.metadata["le"] for f in dataclasses.fields(Settings) if f.name == "processes"))


def _one_line(message: str, limit: int = 1000) -> str:
    """A message as one line: control characters escaped, cut to about ``limit`` characters."""
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in message)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _listed(values: Sequence[str]) -> str:
    """Some user values for a message, each escaped and cut (:func:`shown`)."""
    more = f" and {len(values) - _LISTED} more" if len(values) > _LISTED else ""
    return ", ".join(shown(v) for v in values[:_LISTED]) + more


class _Parser(argparse.ArgumentParser):
    """argparse whose errors exit 2 with one line that shows user values escaped and cut."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(RET_CONFIG, f"{self.prog}: error: {_one_line(message)}\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {_listed(extras)}")
        return parsed

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {shown(value)} (choose from {choices})")


def _follower(value: str) -> str:
    """``--follower``: 1 to 200 printable characters, no control characters."""
    if not 1 <= len(value) <= MAX_FOLLOWER_CHARS or not value.isprintable():
        raise argparse.ArgumentTypeError(
            f"must be 1 to {MAX_FOLLOWER_CHARS} printable characters without control characters "
            f"(got {shown(value)}, {len(value)} characters)")
    return value


def _processes(value: str) -> int:
    """``--processes``: a whole number within the config's range."""
    if not re.fullmatch(r"[0-9]{1,6}", value) or not 1 <= int(value) <= _MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {_MAX_PROCESSES} (got {shown(value)})")
    return int(value)


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--env", default=default,
                        help="config/<env>.yaml overlay (default: $POLYCOPY_ENV or development)")
    parser.add_argument("--config", default=default, metavar="PATH", help="extra YAML overlay, after --env")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m polycopy_actors", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"polycopy_actors {__version__}")
    _common(parser, suppress=False)
    parser.add_argument("--tier", choices=("hot", "cold"), help="run this tier until stopped")
    parser.add_argument("--once", action="store_true", help="one pass over the tier's wallets, then exit 0")
    parser.add_argument("--processes", type=_processes, default=None, metavar="N",
                        help="shard processes (overrides config)")
    parser.add_argument("--log-format", choices=("text", "json"), default=None, help="overrides logging.format")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("migrate", help="apply pending sql/ migrations")
    _common(p, suppress=True)
    p = sub.add_parser("follow", help="follow wallets (hot tier)")
    _common(p, suppress=True)
    p.add_argument("wallets", nargs="+", metavar="WALLET")
    p.add_argument("--follower", type=_follower, default="cli", help="follower id (default: cli)")
    p = sub.add_parser("unfollow", help="stop following wallets")
    _common(p, suppress=True)
    p.add_argument("wallets", nargs="+", metavar="WALLET")
    p.add_argument("--follower", type=_follower, default=None,
                   help="only this follower's follows (default: every follower)")
    p = sub.add_parser("traders", help="manage the cold tier's traders")
    _common(p, suppress=True)
    p.add_argument("action", choices=("add", "deactivate"))
    p.add_argument("wallets", nargs="+", metavar="WALLET")
    p = sub.add_parser("status", help="per-tier state: wallets, last polls, lag, errors, lock holder")
    _common(p, suppress=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("tail", help="print each new trade as it lands (LISTEN polycopy_trades); Ctrl-C stops")
    _common(p, suppress=True)
    p.add_argument("--wallet", action="append", default=None, metavar="WALLET", help="only this wallet (repeatable)")
    p.add_argument("--tier", dest="tail_tier", choices=("hot", "cold"), default=None, help="only this tier")
    return parser


def _load(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "processes", None) is not None:
        overrides["processes"] = args.processes
    if getattr(args, "log_format", None):
        overrides.setdefault("logging", {})["format"] = args.log_format
    return load_settings(env=args.env, config_file=args.config, overrides=overrides or None)


def _with_db(settings: Settings, fn: Callable[[psycopg.Connection[Any]], int], need_schema: bool = True) -> int:
    db = open_database(settings)
    try:
        if need_schema:
            prepare_schema(db, settings)
        with connect(db.dsn, settings) as conn:
            return fn(conn)
    finally:
        db.close()


def cmd_migrate(settings: Settings) -> int:
    def run(conn: psycopg.Connection[Any]) -> int:
        applied = migrate(conn)
        if applied:
            print(f"applied {len(applied)} migration(s): {', '.join(applied)}")
        else:
            print("database is up to date")
        return RET_OK

    return _with_db(settings, run, need_schema=False)


def cmd_follow(settings: Settings, args: argparse.Namespace) -> int:
    store_fn = queries.follow if args.command == "follow" else queries.unfollow

    def run(conn: psycopg.Connection[Any]) -> int:
        with conn.transaction():
            n = store_fn(conn, args.wallets, args.follower)
        print(f"{args.command}: {n} row(s) changed for follower {args.follower or '*'}")
        return RET_OK

    return _with_db(settings, run)


def cmd_traders(settings: Settings, args: argparse.Namespace) -> int:
    fn = queries.add_traders if args.action == "add" else queries.deactivate_traders

    def run(conn: psycopg.Connection[Any]) -> int:
        with conn.transaction():
            n = fn(conn, args.wallets)
        print(f"traders {args.action}: {n} row(s) changed")
        return RET_OK

    return _with_db(settings, run)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    def run(conn: psycopg.Connection[Any]) -> int:
        data = collect_status(conn)
        print(json.dumps(data, indent=2, default=str) if args.json else format_status(data))
        return RET_OK

    return _with_db(settings, run)


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    wallets = set(normalize_wallets(args.wallet)) if args.wallet else None

    def run(conn: psycopg.Connection[Any]) -> int:
        conn.autocommit = True
        try:
            tail(conn, wallets, args.tail_tier, sys.stdout)
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        return RET_OK

    return _with_db(settings, run)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    mp_dir = None
    if settings.processes > 1:
        mp_dir = prepare_multiprocess_metrics()  # before any metric exists in this process
    # Imported here, not at the top: it defines the metrics, so it must come after the multiprocess
    # directory is set (prometheus_client reads PROMETHEUS_MULTIPROC_DIR once, when first imported).
    from polycopy_actors.app.run import run_tier_command  # noqa: PLC0415

    try:
        return run_tier_command(settings, args.tier, once=args.once)
    finally:
        if mp_dir is not None:

            cleanup_multiprocess_metrics(mp_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None and args.tier is None:
        parser.error("choose a tier (--tier hot|cold) or a command (migrate, follow, unfollow, traders, status, "
                     "tail)")
    if args.command is not None and (args.tier or args.once or args.processes):
        parser.error("--tier, --once and --processes only apply when running a tier")
    try:
        settings = _load(args)
    except ConfigError as exc:
        print(f"config error: {_one_line(str(exc))}", file=sys.stderr)
        return RET_CONFIG
    setup_logging(settings.logging.level, settings.logging.format, dsn=settings.database_url)

    def fail(prefix: str, exc: BaseException | str) -> None:
        text = exc.message if isinstance(exc, ExitError) else str(exc)
        print(f"{prefix}{_one_line(scrub(text, settings.database_url))}", file=sys.stderr)

    try:
        if settings.database_url:
            check_dsn(settings.database_url)  # before anything could quote it
        if getattr(args, "wallets", None):
            args.wallets = normalize_wallets(args.wallets)
        if args.command == "migrate":
            return cmd_migrate(settings)
        if args.command in ("follow", "unfollow"):
            return cmd_follow(settings, args)
        if args.command == "traders":
            return cmd_traders(settings, args)
        if args.command == "status":
            return cmd_status(settings, args)
        if args.command == "tail":
            return cmd_tail(settings, args)
        return cmd_run(settings, args)
    except ExitError as exc:
        fail("error: ", exc)
        return exc.code
    except (InvalidWallet, MigrationError) as exc:
        fail("error: ", exc)
        return RET_CONFIG
    except ConfigError as exc:
        fail("config error: ", exc)
        return RET_CONFIG
    except psycopg.OperationalError as exc:
        text = str(exc).strip()
        fail("error: database error: ", text.splitlines()[0] if text else type(exc).__name__)
        return RET_DATABASE
    except KeyboardInterrupt:
        return RET_OK
    except Exception:
        log.exception("internal error")  # the log filter scrubs the database secrets from it
        return RET_INTERNAL
