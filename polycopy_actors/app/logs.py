"""Logging set-up: one line per event, text for people or JSON for log shippers."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

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
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text", shard: str | None = None) -> None:
    """Configure the root logger (stderr). Safe to call again (replaces the handler).
    ``shard``: a shard process's name, shown on each of its lines (JSON: a ``shard`` field)."""
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
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "psycopg.pool", "pgserver", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # pykka logs every actor failure with a traceback at ERROR; the supervisors report failures
    # themselves (traceback once, then one line per restart), so a crash loop is not a flood.
    logging.getLogger("pykka").setLevel(logging.CRITICAL)
