-- Core tables of polycopy_actors (PostgreSQL 15/16, Supabase-compatible).
-- Wallets are stored lowercase ('0x' + 40 hex); amounts are numeric, never float.

CREATE TABLE IF NOT EXISTS follows (
    follower_id text        NOT NULL CHECK (length(follower_id) BETWEEN 1 AND 200),
    wallet      text        NOT NULL CHECK (wallet ~ '^0x[0-9a-f]{40}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, wallet)
);
-- The hot tier reads the distinct followed wallets every few seconds; the primary key leads with
-- follower_id, so this index serves "SELECT DISTINCT wallet" and unfollow by wallet.
CREATE INDEX IF NOT EXISTS follows_wallet_idx ON follows (wallet);

CREATE TABLE IF NOT EXISTS traders (
    wallet     text        PRIMARY KEY CHECK (wallet ~ '^0x[0-9a-f]{40}$'),
    active     boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- The cold tier's universe is "active traders that are not hot": a partial index keeps that scan
-- proportional to the active traders only.
CREATE INDEX IF NOT EXISTS traders_active_idx ON traders (wallet) WHERE active;

CREATE TABLE IF NOT EXISTS trades_public (
    trade_id         text        PRIMARY KEY,
    wallet           text        NOT NULL CHECK (wallet ~ '^0x[0-9a-f]{40}$'),
    condition_id     text        NOT NULL CHECK (condition_id ~ '^0x[0-9a-f]{64}$'),
    asset            text        NOT NULL CHECK (asset ~ '^[0-9]+$'),
    side             text        NOT NULL CHECK (side IN ('BUY', 'SELL')),
    size             numeric     NOT NULL CHECK (size >= 0),
    price            numeric     NOT NULL CHECK (price >= 0),
    outcome          text,
    outcome_index    integer,
    title            text,
    slug             text,
    transaction_hash text        NOT NULL CHECK (transaction_hash ~ '^0x[0-9a-f]{64}$'),
    traded_at        timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- The copy-trading app lists a wallet's latest trades: (wallet, traded_at DESC).
CREATE INDEX IF NOT EXISTS trades_public_wallet_time_idx ON trades_public (wallet, traded_at DESC);

CREATE TABLE IF NOT EXISTS wallet_poll_state (
    wallet             text        PRIMARY KEY CHECK (wallet ~ '^0x[0-9a-f]{40}$'),
    tier               text        NOT NULL CHECK (tier IN ('hot', 'cold')),
    last_polled_at     timestamptz,
    last_success_at    timestamptz,
    -- The watermark: time of the newest trade actually seen (never wall-clock "now").
    last_trade_at      timestamptz,
    consecutive_errors integer     NOT NULL DEFAULT 0 CHECK (consecutive_errors >= 0),
    last_error         text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- The hot tier reads tier = 'hot'; the cold sweep orders its wallets by last_polled_at (least
-- recently polled first, so an interrupted sweep resumes where it stopped).
CREATE INDEX IF NOT EXISTS wallet_poll_state_tier_polled_idx
    ON wallet_poll_state (tier, last_polled_at NULLS FIRST);

CREATE TABLE IF NOT EXISTS positions_current (
    wallet        text        NOT NULL CHECK (wallet ~ '^0x[0-9a-f]{40}$'),
    asset         text        NOT NULL CHECK (asset ~ '^[0-9]+$'),
    condition_id  text        NOT NULL CHECK (condition_id ~ '^0x[0-9a-f]{64}$'),
    size          numeric     NOT NULL CHECK (size >= 0),
    avg_price     numeric     NOT NULL CHECK (avg_price >= 0),
    cur_price     numeric     CHECK (cur_price >= 0),
    outcome       text,
    outcome_index integer,
    title         text,
    redeemable    boolean     NOT NULL DEFAULT false,
    opened_at     timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (wallet, asset)
);
-- Reconciliation reads one wallet's positions: served by the primary key (wallet first).

CREATE TABLE IF NOT EXISTS positions_closed (
    id           bigserial   PRIMARY KEY,
    wallet       text        NOT NULL CHECK (wallet ~ '^0x[0-9a-f]{40}$'),
    asset        text        NOT NULL CHECK (asset ~ '^[0-9]+$'),
    condition_id text        NOT NULL CHECK (condition_id ~ '^0x[0-9a-f]{64}$'),
    size         numeric     NOT NULL CHECK (size >= 0),
    avg_price    numeric     NOT NULL CHECK (avg_price >= 0),
    outcome      text,
    title        text,
    reason       text        NOT NULL CHECK (reason IN ('manual_close', 'market_closed', 'redeemed')),
    opened_at    timestamptz NOT NULL,
    closed_at    timestamptz NOT NULL,
    -- One close per opening of a position, whatever retries and restarts do.
    CONSTRAINT positions_closed_once UNIQUE (wallet, asset, opened_at)
);
CREATE INDEX IF NOT EXISTS positions_closed_wallet_time_idx ON positions_closed (wallet, closed_at DESC);

-- Row level security: the service role (Supabase) and the table owner bypass it; with no policy,
-- anonymous and authenticated clients read and write nothing.
ALTER TABLE follows           ENABLE ROW LEVEL SECURITY;
ALTER TABLE traders           ENABLE ROW LEVEL SECURITY;
ALTER TABLE trades_public     ENABLE ROW LEVEL SECURITY;
ALTER TABLE wallet_poll_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE positions_current ENABLE ROW LEVEL SECURITY;
ALTER TABLE positions_closed  ENABLE ROW LEVEL SECURITY;
