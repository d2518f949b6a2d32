-- Approvals of manual steps (deployer-core's Approval): one row per run and step, the request
-- and, once made, its one decision. `approvers` is JSON (deployer_core::Approvers); booleans
-- are 0/1 in BIGINT columns (the same SQL on SQLite and PostgreSQL); times are microseconds
-- since the Unix epoch like every other timestamp.
CREATE TABLE run_approvals (
    run_id       TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step         TEXT NOT NULL,
    -- Order in which the run asked.
    position     BIGINT NOT NULL,
    message      TEXT NOT NULL,
    target       TEXT,
    approvers    TEXT NOT NULL,
    four_eyes    BIGINT NOT NULL,
    started_by   TEXT NOT NULL,
    requested_ts BIGINT NOT NULL,
    expires_ts   BIGINT,
    -- The decision: all four NULL while pending.
    decided_by   TEXT,
    decided_ts   BIGINT,
    approved     BIGINT,
    comment      TEXT,
    PRIMARY KEY (run_id, step)
);

CREATE INDEX run_approvals_pending ON run_approvals (decided_ts, requested_ts);
