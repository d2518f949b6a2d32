-- What a run viewer needs (deployer-core's run views): the last 64 KiB of each task's output
-- (TaskRecord::output_tail, redacted by the controller), the cancel request another process
-- stored for a run (RunStore::request_cancel: the first one stands), and indexes for a page of
-- runs newest first (RunStore::find_runs), a host across runs (RunStore::host_history) and the
-- task counts of a page of runs (a GROUP BY over the index alone, never the tasklist).
ALTER TABLE run_tasks ADD COLUMN output_tail TEXT;
ALTER TABLE runs ADD COLUMN cancel_by TEXT;
ALTER TABLE runs ADD COLUMN cancel_ts BIGINT;

CREATE INDEX runs_created ON runs (created_ts, id);
CREATE INDEX run_hosts_host ON run_hosts (host);
CREATE INDEX run_tasks_counts ON run_tasks (run_id, state, drive);
