-- Why a monitor check did not pass (deployer_catalog::CheckFailure): 'down' (the target failed
-- the check) or 'broken' (the check could not be made). NULL for a passing check; a failure
-- logged before this column existed reads as 'down'.
ALTER TABLE monitor_log ADD COLUMN failure TEXT;
