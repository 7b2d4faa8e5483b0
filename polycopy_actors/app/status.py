"""``status``: per-tier state read from the database (wallets, polls, lag, errors, lock)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from polycopy_actors.db import queries


def collect_status(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    now = datetime.now(UTC)
    tiers: dict[str, Any] = {}
    for tier in ("hot", "cold"):
        wallets = queries.tier_wallets(conn, tier)
        row = queries.poll_summary(conn, wallets)
        tiers[tier] = {
            "wallets": len(wallets),
            "polled_last_minute": row[0],
            "polled_last_hour": row[1],
            "oldest_watermark": row[2],
            "last_poll": row[3],
            "wallets_failing": row[4],
            "consecutive_errors": int(row[5]),
        }
    holder = queries.lock_holder(conn, queries.COLD_SWEEP_JOB)
    tiers["cold"]["lock_holder"] = {"owner": holder[0], "until": holder[1]} if holder else None
    r = queries.last_cold_sweep(conn)
    tiers["cold"]["last_sweep"] = {"started_at": r[0], "finished_at": r[1], "wallets": r[2]} if r else None
    counts = queries.row_counts(conn)
    return {
        "now": now,
        "tiers": tiers,
        "rows": {"trades_public": counts[0], "positions_current": counts[1], "positions_closed": counts[2]},
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_status(data: dict[str, Any]) -> str:
    keys = ["wallets", "polled_last_minute", "polled_last_hour", "oldest_watermark", "last_poll",
            "wallets_failing", "consecutive_errors"]
    width = max(len(k) for k in keys + ["lock_holder", "last_sweep"])
    lines = [f"{'':{width}}  {'hot':>22}  {'cold':>22}"]
    for key in keys:
        lines.append(f"{key:{width}}  {_fmt(data['tiers']['hot'][key]):>22}  {_fmt(data['tiers']['cold'][key]):>22}")
    holder = data["tiers"]["cold"]["lock_holder"]
    lines.append(f"{'lock_holder':{width}}  {'':>22}  "
                 f"{(holder['owner'] + ' until ' + _fmt(holder['until'])) if holder else '-':>22}")
    sweep = data["tiers"]["cold"]["last_sweep"]
    lines.append(f"{'last_sweep':{width}}  {'':>22}  {_fmt(sweep['started_at']) if sweep else '-':>22}")
    rows = data["rows"]
    lines.append("rows: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rows.items()))
    return "\n".join(lines)
