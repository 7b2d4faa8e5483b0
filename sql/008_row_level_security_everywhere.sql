-- Row level security on every table, schema_migrations included: with no policy, a role that is
-- neither the tables' owner nor BYPASSRLS (Supabase's anon and authenticated roles, whatever
-- GRANT ALL they hold) reads and changes nothing. Before this, such a role could rewrite a recorded
-- checksum and every worker then refused to start. New databases get schema_migrations with row
-- level security from the start (db/migrate.py); the tables below already had it (001-007), enabling
-- it again is a no-op that repairs a database where someone turned it off. Only this project's
-- tables: other applications' tables in a shared schema are left as they are.
ALTER TABLE schema_migrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE follows           ENABLE ROW LEVEL SECURITY;
ALTER TABLE traders           ENABLE ROW LEVEL SECURITY;
ALTER TABLE trades_public     ENABLE ROW LEVEL SECURITY;
ALTER TABLE wallet_poll_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE positions_current ENABLE ROW LEVEL SECURITY;
ALTER TABLE positions_closed  ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_locks         ENABLE ROW LEVEL SECURITY;
ALTER TABLE cold_sweeps       ENABLE ROW LEVEL SECURITY;
ALTER TABLE rejected_items    ENABLE ROW LEVEL SECURITY;
ALTER TABLE wallet_leases     ENABLE ROW LEVEL SECURITY;
ALTER TABLE feed_cursors      ENABLE ROW LEVEL SECURITY;
