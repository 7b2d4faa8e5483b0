"""The configuration's schema: frozen dataclasses, one per section, each field with its unit in its
name and its allowed range in its metadata (checked by :mod:`polycopy_actors.config.loader`).
Immutable and picklable, so settings cross ``spawn`` boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


class ConfigError(Exception):
    """A configuration problem, with a one-line message naming file/variable and key."""


def _rng(ge: float | None = None, gt: float | None = None, le: float | None = None) -> dict[str, Any]:
    return {"ge": ge, "gt": gt, "le": le}


@dataclass(frozen=True)
class RateLimit:
    """Token bucket of one tier: refill rate (requests/second) and bucket size (requests)."""

    requests_per_second: float = field(metadata=_rng(gt=0))
    burst: int = field(metadata=_rng(ge=1))


@dataclass(frozen=True)
class Interval:
    """A closed range in seconds; ``min <= max``."""

    min: float = field(metadata=_rng(ge=0))
    max: float = field(metadata=_rng(ge=0))


@dataclass(frozen=True)
class TierSettings:
    """One tier. ``schedule: continuous`` runs until stopped (hot): the stream and the global feed detect
    trades and wallets are read on demand, or every wallet is polled again and again while the feed is
    down; ``schedule: events`` runs the same way under the cold-sweep lock, one process at a time (cold);
    ``schedule: sweep`` visits every wallet once per sweep under that lock. ``--once`` is one sweep."""

    schedule: Literal["continuous", "events", "sweep"]
    rate_limit: RateLimit
    #: Minimum time between two polls of the same wallet.
    wallet_cooldown_seconds: float = field(metadata=_rng(ge=0))
    #: Continuous schedule: next poll of a wallet is due after a random time in this range.
    poll_interval_seconds: Interval
    #: How often the wallet list of the tier is re-read from the database.
    refresh_interval_seconds: float = field(metadata=_rng(gt=0))
    #: Sweep schedule: time between the starts of two sweeps, plus up to ``jitter_seconds``.
    sweep_interval_seconds: float = field(metadata=_rng(gt=0))
    jitter_seconds: float = field(metadata=_rng(ge=0))
    #: Sweep lock time to live; renewed while sweeping.
    lock_ttl_seconds: int = field(metadata=_rng(ge=1))
    #: A pass over the tier (a sweep, or ``--once``) logs its progress every this many wallets.
    progress_every_wallets: int = field(metadata=_rng(ge=1))
    #: /healthz answers 503 when the tier, while polling, read nothing successfully for this long.
    health_window_seconds: float = field(metadata=_rng(gt=0))

    @property
    def lease_ttl_seconds(self) -> float:
        """Life of a wallet lease: renewed at every refresh of the tier's wallet list."""
        return 3 * self.refresh_interval_seconds + 10


@dataclass(frozen=True)
class Tiers:
    hot: TierSettings
    cold: TierSettings


@dataclass(frozen=True)
class ApiSettings:
    """HTTP access to Polymarket's data and gamma APIs."""

    data_api_url: str
    gamma_api_url: str
    data_api_version: Literal["v1", "v2"]
    #: Read timeout of one HTTP request.
    timeout_seconds: float = field(metadata=_rng(gt=0))
    connect_timeout_seconds: float = field(metadata=_rng(gt=0))
    #: Retries of one request after a 5xx, timeout, connection error or 429 (then the poll fails).
    max_retries: int = field(metadata=_rng(ge=0, le=20))
    backoff_base_seconds: float = field(metadata=_rng(ge=0))
    backoff_max_seconds: float = field(metadata=_rng(ge=0))
    #: A ``Retry-After`` (429, 503) is honoured up to this long, and the tier slowed no longer than this:
    #: one answer must not freeze a tier for days. A value that is no number or date is ignored.
    retry_after_max_seconds: float = field(metadata=_rng(gt=0, le=600))
    #: One attempt of a request (connect, headers and the whole body together) lasts at most this long,
    #: however slowly the server sends (``timeout_seconds`` bounds each socket read only).
    request_deadline_seconds: float = field(metadata=_rng(gt=0))
    #: A larger answer is refused while it is read (``malformed``): never held in memory beyond this.
    max_body_bytes: int = field(metadata=_rng(ge=1024))
    #: One walk of a paged route reads at most this many pages, or fails ``incomplete`` (the global
    #: feed returns what it read, marked incomplete).
    max_walk_pages: int = field(metadata=_rng(ge=1))
    #: ... and at most this many rows.
    max_walk_rows: int = field(metadata=_rng(ge=1))
    #: Rows asked per page (clamped to each route's documented maximum).
    page_size: int = field(metadata=_rng(ge=1))
    #: History read for a wallet seen for the first time; 0 = everything the API serves.
    initial_backfill_seconds: int = field(metadata=_rng(ge=0))
    #: Seconds re-read behind a wallet's watermark (the API shows trades late and out of order).
    overlap_seconds: int = field(metadata=_rng(ge=0))
    #: v2: how often one poller reads ``/v2/status`` (the API's own lag); 0 = never.
    status_interval_seconds: float = field(metadata=_rng(ge=0))
    #: An answer whose ``Age`` header is larger came from a cache: never used, read again elsewhere.
    max_answer_age_seconds: float = field(metadata=_rng(ge=0))
    #: A malformed trade row holds the wallet's cursor for this many reads, then no longer.
    malformed_hold_reads: int = field(metadata=_rng(ge=1))
    #: A row dated further ahead of this clock is kept but moves no cursor or watermark (a future-dated row
    #: must not blind the feed or a wallet's reads).
    max_future_skew_seconds: float = field(metadata=_rng(ge=0, le=3600))


@dataclass(frozen=True)
class DbSettings:
    pool_min_size: int = field(metadata=_rng(ge=1))
    pool_max_size: int = field(metadata=_rng(ge=1))
    connect_timeout_seconds: float = field(metadata=_rng(gt=0))
    #: false behind Supabase's transaction pooler (PgBouncer transaction mode).
    prepared_statements: bool
    #: A database down longer than this ends the worker (non-zero exit; the platform restarts it).
    give_up_seconds: float = field(metadata=_rng(gt=0))
    #: Data directory of the embedded server used when DATABASE_URL is unset.
    embedded_data_dir: str
    #: Every statement of the service waits at most this long for a lock (``lock_timeout``) ...
    lock_timeout_seconds: float = field(metadata=_rng(gt=0))
    #: ... and runs at most this long (``statement_timeout``); a flush still running after 1.5 times this
    #: plus 2 s (a connection dropped in silence) has its connection cut by the writer's watchdog.
    statement_timeout_seconds: float = field(metadata=_rng(gt=0))


@dataclass(frozen=True)
class PollerSettings:
    #: WalletPoller actors per process.
    pool_size: int = field(metadata=_rng(ge=1, le=256))
    #: Longest idle wait of a poller between two checks of its schedule.
    idle_wait_seconds: float = field(metadata=_rng(gt=0, le=5))


@dataclass(frozen=True)
class WriterSettings:
    batch_max_rows: int = field(metadata=_rng(ge=1))
    flush_interval_seconds: float = field(metadata=_rng(gt=0))
    #: Buffered rows above which /healthz reports the writer as backed up.
    backlog_alarm_rows: int = field(metadata=_rng(ge=1))


@dataclass(frozen=True)
class SupervisionSettings:
    max_restarts: int = field(metadata=_rng(ge=0))
    period_seconds: float = field(metadata=_rng(gt=0))
    liveness_interval_seconds: float = field(metadata=_rng(gt=0))


@dataclass(frozen=True)
class ReconcileSettings:
    #: A position missing from complete snapshots for this long is closed (the API runs late).
    close_grace_seconds: float = field(metadata=_rng(ge=0))
    #: Events this long before a position was last seen still explain its close (the positions
    #: route runs behind the trades and activity routes).
    evidence_margin_seconds: float = field(metadata=_rng(ge=0))
    #: While the global feed is healthy, a wallet's positions are read this long after a trade of it was
    #: detected (the positions route shows a fill a few seconds after the trades route).
    after_trade_delay_seconds: float = field(metadata=_rng(ge=0))
    #: Share of the tier's request budget spent on the safety-net cycle (every wallet read again,
    #: traded or not); the cycle's period follows from it and the number of wallets.
    safety_cycle_share: float = field(metadata=_rng(gt=0, le=1))
    #: ... but never more often than this.
    safety_cycle_min_seconds: float = field(metadata=_rng(gt=0))
    #: A wallet holding redeemable positions is read this often until they are gone.
    redeemable_interval_seconds: float = field(metadata=_rng(gt=0))
    #: The MarketWatcher reads the state of the markets the tier's wallets hold this often (0 = off).
    market_watch_interval_seconds: float = field(metadata=_rng(ge=0))


@dataclass(frozen=True)
class StreamSettings:
    """The RTDS websocket (``activity``/``trades``): trades about 2 s after the match, not complete."""

    #: ``wss://...``; empty = no stream (env ``POLYCOPY_RTDS_URL``).
    url: str
    #: A text ``PING`` this often (without it the stream goes silent after minutes, still open).
    ping_interval_seconds: float = field(metadata=_rng(gt=0))
    #: No frame for this long: the connection is dead (closed and opened again).
    silence_seconds: float = field(metadata=_rng(gt=0))
    #: Reconnect back-off: from min, doubled per failure, up to max.
    reconnect_min_seconds: float = field(metadata=_rng(gt=0))
    reconnect_max_seconds: float = field(metadata=_rng(gt=0))
    #: A connection is replaced after this long even when it looks healthy (0 = never).
    reconnect_every_seconds: float = field(metadata=_rng(ge=0))
    #: A stream row the REST feeds have not confirmed after this long is counted as unconfirmed.
    unconfirmed_after_seconds: float = field(metadata=_rng(gt=0))


@dataclass(frozen=True)
class FeedSettings:
    """The bare global ``/v2/trades`` (every wallet's fills): the record that confirms the stream."""

    enabled: bool
    #: One walk of the feed (newest first, down to the persisted cursor) this often.
    interval_seconds: float = field(metadata=_rng(gt=0))
    #: Rows per page (the route's maximum is 1000).
    page_limit: int = field(metadata=_rng(ge=1, le=1000))
    #: Seconds re-read below the cursor (rows of a second can appear late).
    overlap_seconds: int = field(metadata=_rng(ge=0))
    #: Without a persisted cursor, the first walk reads this far back (wallet reads back-fill the rest).
    start_lookback_seconds: int = field(metadata=_rng(ge=0))
    #: One walk reads at most this many pages; a gap deeper than that is left to the wallets' own reads.
    max_pages_per_walk: int = field(metadata=_rng(ge=1))
    #: No successful walk for this long: the feed is down, and wallets are polled one by one again.
    stale_after_seconds: float = field(metadata=_rng(gt=0))


@dataclass(frozen=True)
class LoggingSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    format: Literal["text", "json"]
    #: A progress line (polls, trades, closes, errors) this often; 0 = never.
    summary_interval_seconds: float = field(metadata=_rng(ge=0))


@dataclass(frozen=True)
class MetricsSettings:
    #: Port of /metrics and /healthz; 0 turns the server off.
    port: int = field(metadata=_rng(ge=0, le=65535))
    host: str


@dataclass(frozen=True)
class DemoSettings:
    """``--env demo``: the built-in simulator plus demo wallets followed."""

    enabled: bool
    wallets: int = field(metadata=_rng(ge=1, le=100))
    seed: int
    #: Seconds between two simulated trading events.
    event_interval_seconds: float = field(metadata=_rng(gt=0))


@dataclass(frozen=True)
class DiscoverySettings:
    """Cold-tier trader discovery: wallets seen trading in followed wallets' markets become traders."""

    enabled: bool
    #: Markets (condition ids) read per sweep, most recently traded by followed wallets first.
    max_markets: int = field(metadata=_rng(ge=1, le=200))
    #: New traders added per sweep at most.
    max_new_traders: int = field(metadata=_rng(ge=0))


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one run."""

    env: str
    processes: int = field(metadata=_rng(ge=1, le=64))
    shutdown_timeout_seconds: float = field(metadata=_rng(gt=0))
    logging: LoggingSettings
    metrics: MetricsSettings
    api: ApiSettings
    db: DbSettings
    tiers: Tiers
    pollers: PollerSettings
    writer: WriterSettings
    supervision: SupervisionSettings
    reconcile: ReconcileSettings
    stream: StreamSettings
    feed: FeedSettings
    demo: DemoSettings
    discovery: DiscoverySettings
    #: From DATABASE_URL only (never from YAML); None = the embedded server.
    database_url: Optional[str] = field(default=None, repr=False)

    def tier(self, name: str) -> TierSettings:
        return getattr(self.tiers, name)
