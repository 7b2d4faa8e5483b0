-- The hot tier's wallets in one place: followed wallets plus wallets an operator set to tier 'hot'.
-- Read by the hot tier's wallet list, trader discovery and status. security_invoker: a caller sees
-- only what row level security lets it see in the tables below (anonymous clients: nothing).
CREATE OR REPLACE VIEW hot_wallets WITH (security_invoker = true) AS
    SELECT wallet FROM follows
    UNION
    SELECT wallet FROM wallet_poll_state WHERE tier = 'hot';
