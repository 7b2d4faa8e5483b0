-- Trades from three paths (the RTDS stream, the global feed, a wallet's own reads) land in one row.
--
-- 1. One identity whatever the source: the trade id no longer contains the timestamp (the stream's
--    payload is often one second before the block time the REST routes show). Existing ids are
--    rewritten with the rule of polycopy_actors/api/models.py:
--      left(sha256(wallet|transaction_hash|asset|side|round(size, 6)|occurrence), 32 hex)
--    where occurrence numbers identical rows of one transaction from 0.
-- 2. Where a row came from first (source) and when a REST read confirmed it (confirmed_at; a stream
--    row stays unconfirmed until the feed or a wallet read shows it).
-- 3. 999 ("could not be labelled") is never an outcome index: such rows get null.

ALTER TABLE trades_public
    ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'wallet'
        CHECK (source IN ('stream', 'feed', 'wallet')),
    ADD COLUMN IF NOT EXISTS confirmed_at timestamptz;

-- Every row written before this migration came from a REST read.
UPDATE trades_public SET confirmed_at = created_at WHERE confirmed_at IS NULL AND source <> 'stream';

UPDATE trades_public SET outcome_index = NULL WHERE outcome_index = 999;
UPDATE positions_current SET outcome_index = NULL WHERE outcome_index = 999;

UPDATE trades_public t
SET trade_id = n.new_id
FROM (
    SELECT trade_id,
           left(encode(sha256(convert_to(concat_ws('|', wallet, transaction_hash, asset, side, round(size, 6)::text,
                (row_number() OVER (PARTITION BY wallet, transaction_hash, asset, side, round(size, 6)
                                    ORDER BY trade_id) - 1)::text), 'UTF8')), 'hex'), 32) AS new_id
    FROM trades_public
) n
WHERE t.trade_id = n.trade_id AND t.trade_id <> n.new_id;

-- Stream rows waiting for their confirmation (the unconfirmed-rows gauge reads this).
CREATE INDEX IF NOT EXISTS trades_public_unconfirmed_idx ON trades_public (created_at) WHERE confirmed_at IS NULL;

-- The global feed's position (block time of the newest row read), per tier.
CREATE TABLE IF NOT EXISTS feed_cursors (
    name        text        PRIMARY KEY,
    block_time  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Like every table: the workers connect as the owner; the app's roles get the policies they need.
ALTER TABLE feed_cursors ENABLE ROW LEVEL SECURITY;
