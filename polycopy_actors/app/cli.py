"""Command line: ``python -m polycopy_actors [--tier hot|cold] | migrate | follow | ...``.

Exit codes are in :mod:`polycopy_actors.exitcodes`. Every expected failure ends with one line
on stderr, never a traceback; passwords are never printed.
"""

from __future__ import annotations

import argparse
import json
import logging
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
from polycopy_actors.db import queries
from polycopy_actors.db.connect import connect, open_database, scrub
from polycopy_actors.db.migrate import MigrationError, migrate, prepare_schema
from polycopy_actors.exitcodes import RET_CONFIG, RET_DATABASE, RET_INTERNAL, RET_OK, ExitError

log = logging.getLogger("polycopy_actors")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(RET_CONFIG, f"{self.prog}: error: {message}\n")


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
    parser.add_argument("--processes", type=int, default=None, metavar="N", help="shard processes (overrides config)")
    parser.add_argument("--log-format", choices=("text", "json"), default=None, help="overrides logging.format")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("migrate", help="apply pending sql/ migrations")
    _common(p, suppress=True)
    p = sub.add_parser("follow", help="follow wallets (hot tier)")
    _common(p, suppress=True)
    p.add_argument("wallets", nargs="+", metavar="WALLET")
    p.add_argument("--follower", default="cli", help="follower id (default: cli)")
    p = sub.add_parser("unfollow", help="stop following wallets")
    _common(p, suppress=True)
    p.add_argument("wallets", nargs="+", metavar="WALLET")
    p.add_argument("--follower", default=None, help="only this follower's follows (default: every follower)")
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
        print(f"config error: {exc}", file=sys.stderr)
        return RET_CONFIG
    setup_logging(settings.logging.level, settings.logging.format)
    try:
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
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except InvalidWallet as exc:
        print(f"error: {exc}", file=sys.stderr)
        return RET_CONFIG
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return RET_CONFIG
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return RET_CONFIG
    except psycopg.OperationalError as exc:
        print(f"error: database error: {scrub(str(exc).strip().splitlines()[0], settings.database_url)}",
              file=sys.stderr)
        return RET_DATABASE
    except KeyboardInterrupt:
        return RET_OK
    except Exception:
        log.exception("internal error")
        return RET_INTERNAL
