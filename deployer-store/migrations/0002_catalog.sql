-- The object model (deployer-core's CatalogStore). One set of SQL for SQLite and PostgreSQL.
-- The catalog is one validated document saved under an optimistic revision: a save is an
-- UPDATE ... WHERE revision = expected (or an INSERT of revision 1 into an empty table), so
-- two writers never both win. Monitor results are an append-only log per monitor.

CREATE TABLE catalog (
    -- Always 1: there is one catalog per database.
    id         BIGINT PRIMARY KEY,
    revision   BIGINT NOT NULL,
    -- CatalogData as JSON, secrets included (CatalogData::to_stored_json).
    body       TEXT NOT NULL,
    updated_ts BIGINT NOT NULL
);

CREATE TABLE monitor_log (
    -- project/deployment/monitor (deployer_core::monitor_key).
    monitor     TEXT NOT NULL,
    -- Microseconds since the Unix epoch.
    ts          BIGINT NOT NULL,
    -- 1 when the check passed, 0 otherwise.
    ok          BIGINT NOT NULL,
    status      BIGINT,
    duration_us BIGINT NOT NULL,
    message     TEXT NOT NULL
);

CREATE INDEX monitor_log_monitor_ts ON monitor_log (monitor, ts);
