-- Which attempt of a run did what: `runs.drives` counts the times a controller started driving
-- the run (a resume adds one); `run_tasks.drive` is the drive that last started or ended the
-- task. A task done by an earlier drive counts as "done earlier" (deployer_core::TaskCategory).
ALTER TABLE runs ADD COLUMN drives BIGINT NOT NULL DEFAULT 0;
ALTER TABLE run_tasks ADD COLUMN drive BIGINT;
