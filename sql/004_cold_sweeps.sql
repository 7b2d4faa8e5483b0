-- One row per cold sweep: who ran it and when. Written by the lock holder only, so the intervals
-- [started_at, coalesce(finished_at, lock_until)] of two sweeps never overlap; the fault tests and
-- `status` read them. lock_until follows every renewal: a holder that died ends there at the latest.

CREATE TABLE IF NOT EXISTS cold_sweeps (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner       text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    lock_until  timestamptz NOT NULL,
    finished_at timestamptz,
    wallets     integer,
    outcome     text        CHECK (outcome IN ('completed', 'stopped', 'lost_lock', 'failed')),
    CHECK (finished_at IS NULL OR finished_at >= started_at)
);
-- "When did the last completed sweep start?" (the next slot) and status's "last sweep".
CREATE INDEX IF NOT EXISTS cold_sweeps_started ON cold_sweeps (started_at DESC);
ALTER TABLE cold_sweeps ENABLE ROW LEVEL SECURITY;
