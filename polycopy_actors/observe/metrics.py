"""Prometheus metrics (DESIGN.md §3) and their multiprocess aggregation.

Label values come from small fixed sets (never a wallet). In a sharded run the parent sets
``PROMETHEUS_MULTIPROC_DIR`` before any shard imports this module, so every process writes its
samples there and the parent serves the aggregate.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client import multiprocess as prom_mp

log = logging.getLogger(__name__)

_LAT = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG = (0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900, 3600)
_MP = "PROMETHEUS_MULTIPROC_DIR" in os.environ

API_REQUESTS = Counter("polycopy_api_requests_total", "HTTP requests to Polymarket APIs", ["endpoint", "status"])
API_DURATION = Histogram("polycopy_api_request_duration_seconds", "HTTP request duration", ["endpoint"],
                         buckets=_LAT)
API_ITEMS_MALFORMED = Counter("polycopy_api_items_malformed_total", "API items skipped as malformed",
                              ["endpoint", "field"])
API_STALE = Counter("polycopy_api_stale_responses_total", "Answers served from a cache in front of the API, read again",
                    ["endpoint"])
API_LAG = Gauge("polycopy_api_lag_seconds", "The data API's own serving lag (/v2/status)", multiprocess_mode="max")
WALLET_POLLS = Counter("polycopy_wallet_polls_total", "Wallet polls", ["tier", "result"])
TRADES_UPSERTED = Counter("polycopy_trades_upserted_total", "Trade rows upserted", ["tier"])
POSITION_CHANGES = Counter("polycopy_position_changes_total", "Position changes detected", ["kind"])
POSITIONS_CLOSED = Counter("polycopy_positions_closed_total", "Closed positions written", ["reason"])
TRADE_LAG = Histogram("polycopy_trade_ingest_lag_seconds", "now - trade time, at commit", buckets=_LAG)
DB_FLUSHES = Counter("polycopy_db_flushes_total", "Writer flushes", ["result"])
DB_FLUSH_DURATION = Histogram("polycopy_db_flush_duration_seconds", "Writer flush duration", buckets=_LAT)
ACTOR_RESTARTS = Counter("polycopy_actor_restarts_total", "Actor restarts by the supervisor", ["actor"])
WALLETS = Gauge("polycopy_wallets", "Wallets of the tier", ["tier"],
                multiprocess_mode="livesum")
RATE_WAIT = Histogram("polycopy_rate_limiter_wait_seconds", "Wait imposed by the rate limiter",
                      buckets=(0, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
RATE_THROTTLES = Counter("polycopy_rate_limiter_throttles_total", "429 answers that slowed the tier", ["tier"])
COLD_SWEEP_DURATION = Histogram("polycopy_cold_sweep_duration_seconds", "Cold sweep duration",
                                buckets=(10, 30, 60, 300, 600, 1200, 1800, 3600, 7200))
WRITER_QUEUE = Gauge("polycopy_writer_queue_rows", "Rows buffered in the writer", multiprocess_mode="livesum")
WRITER_WAITING = Gauge("polycopy_writer_mailbox_messages",
                       "Messages waiting in the writer's mailbox (each carries rows)", multiprocess_mode="livesum")
DB_ROWS_REFUSED = Counter("polycopy_db_rows_refused_total",
                          "Rows the database refused for their data (isolated into rejected_items)", ["table"])
LAST_POLL_SUCCESS = Gauge("polycopy_last_successful_poll_timestamp_seconds",
                          "Time of the tier's last successful read: a wallet poll or a global feed walk "
                          "(the process start until the first)",
                          ["tier"], multiprocess_mode="max")
WATERMARK_LAG = Gauge("polycopy_oldest_watermark_lag_seconds",
                      "now - the oldest successful poll (cursor advance) among the tier's wallets",
                      ["tier"], multiprocess_mode="max")
HEALTHY = Gauge("polycopy_healthy", "1 while this process's health check passes (sharded: one sample per pid)",
                multiprocess_mode="liveall")
DB_POOL = Gauge("polycopy_db_pool_connections", "Pool statistics", ["state"], multiprocess_mode="livesum")
# The stream, the global feed and reconciliation on demand (DESIGN §3, §5).
STREAM_CONNECTED = Gauge("polycopy_stream_connected", "1 while the RTDS stream is connected and subscribed",
                         multiprocess_mode="livemin")
STREAM_MESSAGES = Counter("polycopy_stream_messages_total", "RTDS trade frames by what became of them", ["result"])
STREAM_RECONNECTS = Counter("polycopy_stream_reconnects_total", "RTDS connections opened again after one ended")
STREAM_UNCONFIRMED = Gauge("polycopy_stream_unconfirmed_rows",
                           "Stream rows no REST read confirmed within stream.unconfirmed_after_seconds",
                           multiprocess_mode="max")
FEED_LAG = Gauge("polycopy_feed_lag_seconds", "now - block time of the newest row the global feed tail has read",
                 multiprocess_mode="max")
FEED_FUTURE_ROWS = Counter("polycopy_feed_future_rows_total",
                           "Global feed rows dated ahead of this clock (kept; they move no cursor)")
FEED_GAPS = Counter("polycopy_feed_gaps_total",
                    "Global feed walks that reached feed.max_pages_per_walk before the cursor (the wallets' reads "
                    "cover the gap)")
RECONCILES = Counter("polycopy_reconciles_total", "Wallet reads on demand, by what asked for them", ["reason"])
DETECT_LAG = Histogram("polycopy_trade_detect_lag_seconds", "now - trade time when a fill is first stored",
                       ["source"], buckets=_LAG)
# What the process runs and the settings the alert rules compare against (deploy/prometheus/alerts.yml):
# set once by the main process at start, so a rule's threshold follows the tier's own config.
TIER_INFO = Gauge("polycopy_tier_info",
                  "1, labelled with the tier, environment, schedule (or once) and whether this process runs the stream",
                  ["tier", "env", "schedule", "stream"], multiprocess_mode="max")
REQUEST_BUDGET = Gauge("polycopy_request_budget_per_second",
                       "The tier's request budget (tiers.<tier>.rate_limit.requests_per_second, all shards)",
                       multiprocess_mode="max")
HEALTH_WINDOW = Gauge("polycopy_health_window_seconds",
                      "The tier's health window (tiers.<tier>.health_window_seconds)", multiprocess_mode="max")
SWEEP_INTERVAL = Gauge("polycopy_cold_sweep_interval_seconds",
                       "tiers.<tier>.sweep_interval_seconds while the schedule is sweep, else 0",
                       multiprocess_mode="max")
SWEEP_LAST_COMPLETED = Gauge("polycopy_cold_sweep_last_completed_timestamp_seconds",
                             "End of the last completed sweep (the process start until one completes)",
                             multiprocess_mode="max")
SWEEP_WALLETS = Gauge("polycopy_cold_sweep_wallets", "The running pass: wallets polled and wallets in it",
                      ["state"], multiprocess_mode="livesum")


def _total(metric: Counter | Histogram, suffix: str, **labels: str) -> float:
    """Sum of this process's samples of ``metric`` ending in ``suffix`` whose labels match."""
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix) and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def run_totals(tier: str) -> tuple[int, int, int, int, int]:
    """(polls, new trades, closes, failed polls, API requests) this process has counted so far: the run's
    summary lines are differences of these (the counters are the one record of them)."""
    return (int(_total(WALLET_POLLS, "_total", tier=tier)), int(_total(DETECT_LAG, "_count")),
            int(_total(POSITIONS_CLOSED, "_total")), int(_total(WALLET_POLLS, "_total", tier=tier, result="error")),
            int(_total(API_REQUESTS, "_total")))


def shards_healthy() -> bool | None:
    """Multiprocess mode: whether every live shard reports healthy (None: no shard reported yet)."""
    if not _MP:
        return None
    reg = CollectorRegistry()
    prom_mp.MultiProcessCollector(reg)
    me = str(os.getpid())  # the parent's own (unused) sample
    values = [s.value for fam in reg.collect() if fam.name == "polycopy_healthy" for s in fam.samples
              if s.labels.get("pid") != me]
    return min(values) >= 1 if values else None


def registry_for_exposition() -> CollectorRegistry | None:
    """The registry to serve: the aggregate of every process in multiprocess mode."""
    if _MP:
        reg = CollectorRegistry()
        prom_mp.MultiProcessCollector(reg)
        return reg
    return None


def _initialise_label_sets() -> None:
    """Export every series of the fixed label sets at 0, so rates and alerts work before the first event."""
    for tier in ("hot", "cold"):
        for result in ("ok", "error"):
            WALLET_POLLS.labels(tier, result)
        TRADES_UPSERTED.labels(tier)
        RATE_THROTTLES.labels(tier)
    for kind in ("opened", "changed", "closed"):
        POSITION_CHANGES.labels(kind)
    for reason in ("manual_close", "market_closed", "redeemed"):
        POSITIONS_CLOSED.labels(reason)
    for result in ("ok", "error"):
        DB_FLUSHES.labels(result)
    for actor in ("health", "progress", "limiter", "writer", "reader", "pool", "poller", "monitor", "shard", "stream",
                  "feed", "markets"):
        ACTOR_RESTARTS.labels(actor)
    for result in ("kept", "other_wallet", "malformed"):
        STREAM_MESSAGES.labels(result)
    for reason in ("trade", "market", "redeemable", "backfill", "cycle"):
        RECONCILES.labels(reason)
    for source in ("stream", "feed", "wallet"):
        DETECT_LAG.labels(source)
    for state in ("polled", "total"):
        SWEEP_WALLETS.labels(state)
    for table in ("trades_public", "positions_current", "positions_closed", "wallet_poll_state", "feed_cursors",
                  "rejected_items"):
        DB_ROWS_REFUSED.labels(table)


def describe_process(tier: str, env: str, schedule: str, stream: bool, requests_per_second: float,
                     health_window_seconds: float, sweep_interval_seconds: float) -> None:
    """Export what this process runs (main thread, once at start; the parent of a sharded run)."""
    TIER_INFO.labels(tier, env, schedule, "on" if stream else "off").set(1)
    LAST_POLL_SUCCESS.labels(tier).set_to_current_time()
    REQUEST_BUDGET.set(requests_per_second)
    HEALTH_WINDOW.set(health_window_seconds)
    sweeping = schedule == "sweep"
    SWEEP_INTERVAL.set(sweep_interval_seconds if sweeping else 0)
    if sweeping:
        SWEEP_LAST_COMPLETED.set_to_current_time()


_initialise_label_sets()
