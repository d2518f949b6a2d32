-- Distributed runs hold the single controller's rules: failure budgets, min_hosts_up and
-- `finally` stages (deployer-core's WorkQueue contract; PostgreSQL only, the tables exist on
-- SQLite too, unused).
--
-- Entry states (run_entries.state) from now on:
--   PENDING    not claimed yet (or claimed again after a lapsed lease)
--   CLAIMED    a worker holds it under a lease
--   DONE       ran, every task succeeded (or was skipped by its command)
--   FAILED     ran and failed (within the budget its host was dropped; past it the run aborts)
--   CANCELLED  stopped by a cancel, or left over when the run ended without running it
--   DROPPED    not run: its host was dropped within the failure budget (`reason` says why)
--   NOT_RUN    not run: an ordinary entry left when the run aborted (a failure past the
--              budget, min_hosts_up, a cancel) — marked at abort time, so `finally` stages
--              become the lowest stage once the claimed entries end
--   SKIPPED    not run: an entry of a `finally` stage that its Finally leaves out
--              (`on_failure` after a success, `if_reached` / `unless_reached`)

-- The run's failure budget and the number of hosts it counts over (JSON of
-- deployer_core::RunRules; NULL: no budget, as submitted before this migration).
ALTER TABLE run_work ADD COLUMN rules TEXT;
-- The highest stage whose entries were sorted out when it became the lowest stage with
-- unended entries (the selection of a `finally` stage's entries is done once); -1: none.
ALTER TABLE run_work ADD COLUMN opened BIGINT NOT NULL DEFAULT -1;
-- How the run stopped being a success, the first way it did: FAILED (a failure past the
-- budget, a failure in a `finally` stage, min_hosts_up, an interrupted entry that is not
-- idempotent) or CANCELLED; NULL: succeeded so far (degraded when hosts were dropped).
ALTER TABLE run_work ADD COLUMN outcome TEXT;

-- JSON array of [task id, point]: the points the entry's tasks make its host reach.
ALTER TABLE run_entries ADD COLUMN reaches TEXT;
-- Why it ended without running (DROPPED, NOT_RUN, SKIPPED).
ALTER TABLE run_entries ADD COLUMN reason TEXT;

-- Points hosts reached (filled when an entry ends, from its tasks recorded as succeeded or
-- skipped): what `if_reached` / `unless_reached` look at.
CREATE TABLE run_points (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    host   TEXT NOT NULL,
    point  TEXT NOT NULL,
    PRIMARY KEY (run_id, host, point)
);

-- Hosts with a failure in an ordinary stage, per stage: what the budgets and min_hosts_up
-- count. `dropped` is 1 when the failure kept within them (the host was dropped, `reason`).
CREATE TABLE run_failed_hosts (
    run_id  TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stage   BIGINT NOT NULL,
    host    TEXT NOT NULL,
    dropped BIGINT NOT NULL DEFAULT 0,
    reason  TEXT,
    PRIMARY KEY (run_id, stage, host)
);
