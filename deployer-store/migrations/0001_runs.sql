-- Durable run records (deployer-core's RunStore). One set of SQL for SQLite and PostgreSQL.
-- Timestamps are microseconds since the Unix epoch (UTC) in BIGINT columns: exact on both
-- backends and independent of the server's time zone. States use the spellings of
-- RunState / HostState / TaskState::as_str().

CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    source        TEXT NOT NULL,
    started_by    TEXT NOT NULL,
    state         TEXT NOT NULL,
    -- A full copy of what runs (Tasklist::to_json_string).
    tasklist      TEXT NOT NULL,
    created_ts    BIGINT NOT NULL,
    started_ts    BIGINT,
    finish_ts     BIGINT,
    -- The controller holding the lease, and when that lease expires.
    owner         TEXT,
    lease_expires BIGINT
);

CREATE INDEX runs_finish_ts ON runs (finish_ts);

CREATE TABLE run_hosts (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    host       TEXT NOT NULL,
    -- Order in which hosts were first targeted.
    position   BIGINT NOT NULL,
    state      TEXT NOT NULL,
    updated_ts BIGINT NOT NULL,
    finish_ts  BIGINT,
    PRIMARY KEY (run_id, host)
);

CREATE TABLE run_tasks (
    run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage       BIGINT NOT NULL,
    entry       BIGINT NOT NULL,
    -- Index within a chain; -1 for a task that is not in a chain (sorts first, like None).
    step        BIGINT NOT NULL,
    host        TEXT NOT NULL,
    tag         TEXT,
    command     TEXT NOT NULL,
    history_key TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    started_ts  BIGINT,
    finished_ts BIGINT,
    duration_us BIGINT,
    exit_status BIGINT,
    stderr_tail TEXT,
    error       TEXT,
    finish_ts   BIGINT,
    PRIMARY KEY (run_id, stage, entry, step)
);

CREATE INDEX run_tasks_history ON run_tasks (history_key, state);
