-- Keep wallet_poll_state.tier in step with follows, whoever writes follows (this service's CLI or
-- the copy-trading app): a followed wallet is hot; when its last follower leaves it moves to cold
-- and keeps its data. A wallet an operator set to tier = 'hot' without a follow stays hot.

CREATE OR REPLACE FUNCTION polycopy_follow_inserted() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO wallet_poll_state (wallet, tier) VALUES (NEW.wallet, 'hot')
    ON CONFLICT (wallet) DO UPDATE SET tier = 'hot', updated_at = now()
        WHERE wallet_poll_state.tier <> 'hot';
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION polycopy_follow_deleted() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE wallet_poll_state s SET tier = 'cold', updated_at = now()
    WHERE s.wallet = OLD.wallet AND s.tier = 'hot'
      AND NOT EXISTS (SELECT 1 FROM follows f WHERE f.wallet = OLD.wallet);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS follows_after_insert ON follows;
CREATE TRIGGER follows_after_insert AFTER INSERT ON follows
    FOR EACH ROW EXECUTE FUNCTION polycopy_follow_inserted();

DROP TRIGGER IF EXISTS follows_after_delete ON follows;
CREATE TRIGGER follows_after_delete AFTER DELETE ON follows
    FOR EACH ROW EXECUTE FUNCTION polycopy_follow_deleted();
