"""Writer bulk upsert: unnest arrays (what DbWriter does) vs COPY into a temp table vs one INSERT
per row (the baseline). Same rows, same conflict handling, one transaction each, real PostgreSQL.

    python bench/bench_writer.py [--rows 10000 50000 200000]

Prints rows/s per method and the ratio to the per-row baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import scratch_database  # noqa: E402
from polycopy_actors.actors.messages import PollResult  # noqa: E402
from polycopy_actors.api.models import Trade  # noqa: E402
from polycopy_actors.db.writes import WriteBuffer, write_batch  # noqa: E402

COLUMNS = ("trade_id, wallet, condition_id, asset, side, size, price, outcome, outcome_index, title, slug, "
           "transaction_hash, traded_at")
CONFLICT = ("ON CONFLICT (trade_id) DO UPDATE SET size = excluded.size, price = excluded.price, "
            "updated_at = now()")


def make_trades(n: int, seed: int) -> list[Trade]:
    rng = random.Random(seed)
    wallets = [f"0x{rng.getrandbits(160):040x}" for _ in range(200)]
    out = []
    for i in range(n):
        out.append(Trade(
            trade_id=hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()[:32], wallet=rng.choice(wallets),
            condition_id=f"0x{rng.getrandbits(256):064x}", asset=str(rng.getrandbits(250)),
            side=rng.choice(("BUY", "SELL")), size=Decimal(rng.randint(1, 10**6)) / 100,
            price=Decimal(rng.randint(1, 99)) / 100, outcome="Yes", outcome_index=0, title="Some market",
            slug="some-market", transaction_hash=f"0x{rng.getrandbits(256):064x}",
            timestamp=1795000000 + i,
        ))
    return out


def _row(t: Trade) -> tuple[object, ...]:
    return (t.trade_id, t.wallet, t.condition_id, t.asset, t.side, t.size, t.price, t.outcome, t.outcome_index,
            t.title, t.slug, t.transaction_hash, datetime.fromtimestamp(t.timestamp, UTC))


def per_row(conn: psycopg.Connection, trades: list[Trade]) -> None:
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO trades_public ({COLUMNS}) VALUES "  # noqa: S608 - constant text
                        f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) {CONFLICT}", [_row(t) for t in trades])


def copy_temp(conn: psycopg.Connection, trades: list[Trade]) -> None:
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE incoming (LIKE trades_public INCLUDING DEFAULTS) ON COMMIT DROP")
        with cur.copy(f"COPY incoming ({COLUMNS}) FROM STDIN") as copy:  # noqa: S608 - constant text
            for t in trades:
                copy.write_row(_row(t))
        cur.execute(f"INSERT INTO trades_public ({COLUMNS}) SELECT {COLUMNS} FROM incoming {CONFLICT}")  # noqa: S608


def unnest(conn: psycopg.Connection, trades: list[Trade]) -> None:
    """The DbWriter's own path: PollResults into its buffer, then one write_batch."""
    buf = WriteBuffer()
    now = datetime.now(UTC)
    for t in trades:
        buf.add(PollResult(t.wallet, "hot", now, ok=True, trades=(t,)))
    write_batch(conn, buf)


def run(dsn: str, method: str, trades: list[Trade], batch: int) -> float:
    """Write every trade in transactions of ``batch`` rows; seconds taken."""
    fn = {"per-row INSERT": per_row, "COPY + INSERT": copy_temp, "unnest (DbWriter)": unnest}[method]
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE trades_public, wallet_poll_state")
        conn.commit()
        started = time.perf_counter()
        for i in range(0, len(trades), batch):
            with conn.transaction():
                fn(conn, trades[i:i + batch])
        elapsed = time.perf_counter() - started
        got = conn.execute("SELECT count(*) FROM trades_public").fetchone()
        conn.commit()
    assert got == (len(trades),), (method, got)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--batch", type=int, nargs="+", default=[1_000, 0],
                        help="rows per transaction (0 = all in one); 1000 is writer.batch_max_rows")
    args = parser.parse_args()
    methods = ["per-row INSERT", "COPY + INSERT", "unnest (DbWriter)"]
    with scratch_database() as dsn:
        print(f"{'rows':>8} {'batch':>7}  {'method':<18} {'seconds':>8} {'rows/s':>10} {'x baseline':>10}")
        for n in args.rows:
            trades = make_trades(n, seed=n)
            for batch in args.batch:
                base = None
                for method in methods:
                    secs = run(dsn, method, trades, batch or n)
                    base = base or secs
                    print(f"{n:>8,} {batch or n:>7,}  {method:<18} {secs:8.2f} {n / secs:10,.0f} {base / secs:10.1f}")


if __name__ == "__main__":
    main()
