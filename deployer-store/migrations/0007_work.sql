-- Distributed runs (deployer-core's WorkQueue, implemented on PostgreSQL only; the tables
-- exist on SQLite too, unused, so one schema serves every build). A submitted run has a row
-- in `run_work` and one row per entry (a task or a chain, on one host) in `run_entries`;
-- workers claim entries one at a time under a lease, each claim bumping the entry's fencing
-- token (`fence`), which every later write about the claim must carry. `workers` holds the
-- heartbeats of live workers (what serves which zone). Times are microseconds since the Unix
-- epoch; leases and heartbeats use the server's clock.
CREATE TABLE run_work (
    run_id       TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    -- JSON array of the command names the run uses (a worker claims only with all of them).
    commands     TEXT NOT NULL,
    -- JSON array of deployer_core::StageLimits, one per stage.
    stages       TEXT NOT NULL,
    -- 1 once a failure or a cancel makes the run abort: nothing new is claimed.
    aborting     BIGINT NOT NULL DEFAULT 0,
    -- Why the run stopped waiting (an interrupted entry that is not idempotent).
    stopped      TEXT,
    submitted_ts BIGINT NOT NULL
);

CREATE TABLE run_entries (
    run_id        TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage         BIGINT NOT NULL,
    entry         BIGINT NOT NULL,
    host          TEXT NOT NULL,
    zone          TEXT,
    -- JSON array of its task ids.
    tasks         TEXT NOT NULL,
    idempotent    BIGINT NOT NULL,
    -- PENDING, CLAIMED, DONE, FAILED or CANCELLED.
    state         TEXT NOT NULL,
    -- The worker of the current (or last) claim, its fencing token and lease.
    worker        TEXT,
    fence         BIGINT NOT NULL DEFAULT 0,
    lease_expires BIGINT,
    claimed_ts    BIGINT,
    ended_ts      BIGINT,
    PRIMARY KEY (run_id, stage, entry)
);

-- The claim query: the lowest stage with unended entries, its claimed entries, the next
-- pending one; and the claimed entries of one host in a stage (concurrency_per_host).
CREATE INDEX run_entries_claim ON run_entries (run_id, state, stage, entry);
CREATE INDEX run_entries_host ON run_entries (run_id, stage, host, state);

CREATE TABLE workers (
    id                TEXT PRIMARY KEY,
    -- JSON arrays of the zones it serves (empty: every zone) and of its command names.
    zones             TEXT NOT NULL,
    commands          TEXT NOT NULL,
    heartbeat_expires BIGINT NOT NULL
);

-- Which worker last recorded the task (distributed runs; NULL when a controller drove it).
ALTER TABLE run_tasks ADD COLUMN worker TEXT;
