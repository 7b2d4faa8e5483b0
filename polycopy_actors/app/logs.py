"""Logging set-up: one line per event, text for people or JSON for log shippers."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from polycopy_actors.db.connect import dsn_secrets, scrub

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "process": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
        if record.exc_text or record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(out, ensure_ascii=False)


class SecretFilter(logging.Filter):
    """Scrubs the database's secrets (its password, the raw userinfo of a URL, any ``password=``) from
    each record's message, arguments, exception text and extra fields: defence in depth, so even
    ``log.exception(...)`` of an error quoting the connection string prints no password."""

    def __init__(self, dsn: str | None) -> None:
        super().__init__()
        self.secrets = dsn_secrets(dsn)

    def _clean(self, text: str) -> str:
        return scrub(text, secrets=self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: show the template and its arguments' types only
            message = f"{record.msg} (arguments of types {[type(a).__name__ for a in record.args or ()]})"
        record.msg, record.args = self._clean(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXC_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RESERVED and isinstance(value, str):
                record.__dict__[key] = self._clean(value)
        return True


_EXC_FORMATTER = logging.Formatter()


def setup_logging(level: str = "INFO", fmt: str = "text", shard: str | None = None,
                  dsn: str | None = None) -> None:
    """Configure the root logger (stderr). Safe to call again (replaces the handler).
    ``shard``: a shard process's name, shown on each of its lines (JSON: a ``shard`` field).
    ``dsn``: the connection string whose secrets no line may show (default: ``$DATABASE_URL``)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_polycopy", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._polycopy = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        tag = f"[{shard}] " if shard else ""
        formatter = logging.Formatter(f"%(asctime)s.%(msecs)03dZ %(levelname)s {tag}%(name)s: %(message)s",
                                      "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    if shard and fmt == "json":
        def add_shard(record: logging.LogRecord) -> bool:
            record.shard = shard
            return True
        handler.addFilter(add_shard)
    handler.addFilter(SecretFilter(dsn if dsn is not None else os.environ.get("DATABASE_URL")))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "psycopg.pool", "pgserver", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # pykka logs every actor failure with a traceback at ERROR; the supervisors report failures
    # themselves (traceback once, then one line per restart), so a crash loop is not a flood.
    logging.getLogger("pykka").setLevel(logging.CRITICAL)
