-- Distributed job locks: one cold sweep at a time across every machine.

CREATE TABLE IF NOT EXISTS job_locks (
    job_name     text        PRIMARY KEY,
    locked_by    text        NOT NULL,
    locked_until timestamptz NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE job_locks ENABLE ROW LEVEL SECURITY;

-- Take the lock, renew it (same owner), or take over an expired one. Atomic: concurrent callers
-- serialise on the row, and only one of them sees "true". clock_timestamp(), not now(): a caller
-- inside a long transaction must not see an old time.
CREATE OR REPLACE FUNCTION acquire_job_lock(job_name text, owner text, ttl_seconds integer)
RETURNS boolean
LANGUAGE sql
AS $$
    WITH taken AS (
    INSERT INTO job_locks AS l (job_name, locked_by, locked_until, acquired_at)
    VALUES (acquire_job_lock.job_name, acquire_job_lock.owner,
            clock_timestamp() + make_interval(secs => acquire_job_lock.ttl_seconds), clock_timestamp())
    ON CONFLICT ON CONSTRAINT job_locks_pkey DO UPDATE
        SET locked_by    = excluded.locked_by,
            locked_until = excluded.locked_until,
            acquired_at  = CASE WHEN l.locked_by = excluded.locked_by AND l.locked_until >= clock_timestamp()
                                THEN l.acquired_at ELSE excluded.acquired_at END
        WHERE l.locked_until < clock_timestamp() OR l.locked_by = excluded.locked_by
    RETURNING true AS ok
    )
    SELECT coalesce((SELECT ok FROM taken), false)
$$;

-- Release the lock if (and only if) the caller holds it. Returns whether it did.
CREATE OR REPLACE FUNCTION release_job_lock(job_name text, owner text)
RETURNS boolean
LANGUAGE sql
AS $$
    WITH gone AS (
        DELETE FROM job_locks l
        WHERE l.job_name = release_job_lock.job_name AND l.locked_by = release_job_lock.owner
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM gone)
$$;
