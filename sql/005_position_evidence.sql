-- Evidence for closes that survives polls, sweeps, restarts and processes, items the API keeps
-- sending malformed, and one owner per wallet at a time.

-- When the position was last seen present in a complete snapshot (written at most every few
-- seconds: the evidence window starts earlier by a margin anyway) and since when it has been
-- missing from complete snapshots (NULL: present). A close is written once missing_since is older
-- than reconcile.close_grace_seconds, whichever process or sweep sees that first.
ALTER TABLE positions_current ADD COLUMN IF NOT EXISTS last_seen_at  timestamptz;
ALTER TABLE positions_current ADD COLUMN IF NOT EXISTS missing_since timestamptz;
-- v2: the last event (epoch seconds) the API's row reflected: trades after it are the ones the
-- snapshot had not shown yet (the positions route lags the trades route).
ALTER TABLE positions_current ADD COLUMN IF NOT EXISTS last_event_at bigint;
-- v2: when this opening began (epoch seconds): its trades since then net to zero when it was sold out.
ALTER TABLE positions_current ADD COLUMN IF NOT EXISTS first_entry_at bigint;
UPDATE positions_current SET last_seen_at = updated_at WHERE last_seen_at IS NULL;

-- The reason of each close comes from the wallet's own trades of the asset (sold out?): one
-- wallet's trades of one asset are read by this index.
CREATE INDEX IF NOT EXISTS trades_public_wallet_asset_idx ON trades_public (wallet, asset);

-- Items the API served that could not be parsed: kept for an operator to look at; after
-- api.malformed_hold_reads reads a malformed trade row no longer holds the wallet's cursor.
CREATE TABLE IF NOT EXISTS rejected_items (
    route         text        NOT NULL,
    wallet        text        NOT NULL,
    -- SHA-256 (32 hex digits) of the item's JSON text: one row per distinct bad item.
    item_key      text        NOT NULL,
    raw           text        NOT NULL,
    reason        text        NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    seen_count    integer     NOT NULL DEFAULT 1 CHECK (seen_count >= 1),
    PRIMARY KEY (wallet, route, item_key)
);
ALTER TABLE rejected_items ENABLE ROW LEVEL SECURITY;

-- One owner per wallet at a time, across processes and machines: a poller reconciles a wallet
-- (positions, closes) only while it holds the wallet's lease, and the writer writes positions and
-- closes of a wallet only when no other owner holds a live lease on it (fencing).
CREATE TABLE IF NOT EXISTS wallet_leases (
    wallet       text        PRIMARY KEY CHECK (wallet ~ '^0x[0-9a-f]{40}$'),
    owner        text        NOT NULL,
    locked_until timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS wallet_leases_owner_idx ON wallet_leases (owner);
ALTER TABLE wallet_leases ENABLE ROW LEVEL SECURITY;
