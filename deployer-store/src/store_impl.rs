//! The [`RunStore`](deployer_core::RunStore) implementation shared by both backends.
//!
//! Written once as a macro, expanded for `SqliteStore` (over a `SqlitePool`) and `PostgresStore`
//! (over a `PgPool`): the SQL is the same for both (`$n` placeholders, `ON CONFLICT` upserts),
//! except how a transaction begins, which clock leases use, the name of the substring
//! function, and, on PostgreSQL, a `pg_notify` in each write that changes a run.

/// Implements `RunStore` for `$store`, a struct with a `pool` field.
///
/// * `begin`: the statement that opens a write transaction (`BEGIN IMMEDIATE` on SQLite, so a
///   transaction that reads first never has to upgrade its lock).
/// * `now`: the SQL expression for "now" in microseconds used by leases: `$4` (bound from this
///   process's clock) or an expression of the server's clock, when `server_clock` is true (then
///   nothing is bound to `$4`).
/// * `instr`: the function `f(haystack, needle)` giving the 1-based position of `needle` (0
///   when absent): `instr` on SQLite, `strpos` on PostgreSQL.
/// * `pg_notify`: whether writes notify channel `deployer_runs` (PostgreSQL): the statement
///   that changes a run gets `RETURNING pg_notify('deployer_runs', <run id>)`, so the
///   notification is sent with the change, in the same round trip, and delivered on commit.
///   Either way each write then calls `self.wrote()` (the SQLite store wakes its own feeds).
macro_rules! impl_run_store {
    ($store:ident, db: $db:ty, begin: $begin:literal, now: $now:literal, server_clock: $server_clock:literal, instr: $instr:literal, pg_notify: $pg_notify:literal) => {
        impl $store {
            /// The schema version the database is at (the highest applied migration).
            pub async fn schema_version(&self) -> Result<i64, deployer_core::StoreError> {
                use crate::sql::RowExt as _;
                let row = sqlx::query(
                    "SELECT CAST(MAX(version) AS BIGINT) AS version FROM _sqlx_migrations WHERE success",
                )
                .fetch_one(&self.pool)
                .await
                .map_err(|e| crate::errors::backend("read the schema version", e))?;
                Ok(row.opt_int("version")?.unwrap_or(0))
            }

            async fn exists(&self, id: &deployer_core::RunId) -> Result<bool, deployer_core::StoreError> {
                let row = sqlx::query("SELECT 1 AS one FROM runs WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| crate::errors::backend(format!("look up run {id}"), e))?;
                Ok(row.is_some())
            }

            async fn require(&self, id: &deployer_core::RunId) -> Result<(), deployer_core::StoreError> {
                if self.exists(id).await? {
                    Ok(())
                } else {
                    Err(deployer_core::StoreError::NotFound { id: id.to_string() })
                }
            }

            /// Fails with `NotFound` unless run `id` exists, read inside `tx`.
            async fn require_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: &deployer_core::RunId,
                doing: &str,
            ) -> Result<(), deployer_core::StoreError> {
                let found = sqlx::query("SELECT 1 AS one FROM runs WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(|e| crate::errors::backend(doing, e))?;
                if found.is_none() {
                    return Err(deployer_core::StoreError::NotFound { id: id.to_string() });
                }
                Ok(())
            }

            async fn begin(
                &self,
                doing: &str,
            ) -> Result<sqlx::Transaction<'static, $db>, deployer_core::StoreError> {
                self.pool
                    .begin_with($begin)
                    .await
                    .map_err(|e| crate::errors::backend(format!("begin a transaction to {doing}"), e))
            }

            /// Reads who holds the lease of `id`: `(owner, lease_expires, now)` in microseconds.
            async fn lease_holder(
                &self,
                id: &deployer_core::RunId,
            ) -> Result<Option<(Option<String>, Option<i64>, i64)>, deployer_core::StoreError> {
                use crate::sql::RowExt as _;
                let sql = concat!(
                    "SELECT owner, lease_expires, ",
                    $now,
                    " AS now FROM runs WHERE id = $1"
                );
                let sql = if $server_clock { sql } else {
                    "SELECT owner, lease_expires, NULL AS now FROM runs WHERE id = $1"
                };
                let row = sqlx::query(sql)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| crate::errors::backend(format!("read the lease of run {id}"), e))?;
                let Some(row) = row else { return Ok(None) };
                let now = if $server_clock {
                    row.int("now")?
                } else {
                    crate::sql::now_micros()
                };
                Ok(Some((row.opt_text("owner")?, row.opt_int("lease_expires")?, now)))
            }
        }

        #[async_trait::async_trait]
        impl deployer_core::RunStore for $store {
            async fn create_run(
                &self,
                run: deployer_core::NewRun,
            ) -> Result<deployer_core::RunRecord, deployer_core::StoreError> {
                use crate::errors::backend;
                use crate::sql::task_key;
                let now_us = crate::sql::now_micros();
                let created_ts = crate::sql::time(now_us, "now")?;
                let id = run.id.clone();
                let doing = format!("create run {id}");
                let mut tx = self.begin(&doing).await?;
                sqlx::query(notifying!(
                    $pg_notify,
                    "id",
                    "INSERT INTO runs (id, name, source, started_by, state, tasklist, created_ts) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(id.as_str())
                .bind(crate::sql::text(&run.name))
                .bind(crate::sql::text(&run.source))
                .bind(crate::sql::text(&run.started_by))
                .bind(deployer_core::RunState::Pending.as_str())
                .bind(run.tasklist.to_json_string())
                .bind(now_us)
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                for (position, host) in run.hosts().into_iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO run_hosts (run_id, host, position, state, updated_ts) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id.as_str())
                    .bind(crate::sql::text(&host))
                    .bind(i64::try_from(position).unwrap_or(i64::MAX))
                    .bind(deployer_core::HostState::Pending.as_str())
                    .bind(now_us)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| backend(format!("{doing}: add host {host}"), e))?;
                }
                for info in &run.tasks {
                    let record = run.task_record(info);
                    let (stage, entry, step) = task_key(record.id)?;
                    sqlx::query(
                        "INSERT INTO run_tasks (run_id, stage, entry, step, host, tag, command, \
                         history_key, state, attempts) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)",
                    )
                    .bind(id.as_str())
                    .bind(stage)
                    .bind(entry)
                    .bind(step)
                    .bind(crate::sql::text(&record.host))
                    .bind(crate::sql::opt_text(record.tag.as_deref()))
                    .bind(crate::sql::text(&record.command))
                    .bind(crate::sql::text(&record.history_key))
                    .bind(record.state.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| backend(format!("{doing}: add task {}", record.id), e))?;
                }
                tx.commit().await.map_err(|e| backend(format!("commit: {doing}"), e))?;
                self.wrote();
                // What a read gives back (text as stored).
                Ok(deployer_core::RunRecord {
                    id: run.id,
                    name: crate::sql::text(&run.name).into_owned(),
                    source: crate::sql::text(&run.source).into_owned(),
                    started_by: crate::sql::text(&run.started_by).into_owned(),
                    state: deployer_core::RunState::Pending,
                    tasklist: run.tasklist,
                    created_ts,
                    started_ts: None,
                    finish_ts: None,
                    owner: None,
                    lease_expires: None,
                    drives: 0,
                })
            }

            async fn run(
                &self,
                id: &deployer_core::RunId,
            ) -> Result<deployer_core::RunRecord, deployer_core::StoreError> {
                let row = sqlx::query(concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| crate::errors::backend(format!("read run {id}"), e))?;
                match row {
                    Some(row) => crate::sql::run_record(&row),
                    None => Err(deployer_core::StoreError::NotFound { id: id.to_string() }),
                }
            }

            async fn list_runs(
                &self,
                limit: usize,
            ) -> Result<Vec<deployer_core::ListedRun>, deployer_core::StoreError> {
                // Run ids are UUIDv7: in id order is in creation order.
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    run_columns!(),
                    " FROM runs ORDER BY id DESC LIMIT $1"
                ))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| crate::errors::backend("list runs", e))?;
                // A row that does not decode is listed marked, in its place: it never hides
                // the other runs.
                let mut listed = Vec::with_capacity(rows.len());
                for row in &rows {
                    listed.push(match crate::sql::run_record(row) {
                        Ok(record) => deployer_core::ListedRun::Run(Box::new(record)),
                        Err(deployer_core::StoreError::Corrupt { message }) => {
                            deployer_core::ListedRun::Unreadable(deployer_core::UnreadableRun {
                                id: crate::sql::listed_id(row),
                                problem: message,
                            })
                        }
                        Err(other) => return Err(other),
                    });
                }
                Ok(listed)
            }

            async fn hosts(
                &self,
                id: &deployer_core::RunId,
            ) -> Result<Vec<deployer_core::HostRecord>, deployer_core::StoreError> {
                let doing = format!("read the hosts of run {id}");
                let mut tx = self.pool.begin().await.map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                Self::require_in(&mut tx, id, doing.as_str()).await?;
                let rows = sqlx::query(
                    "SELECT host, state, updated_ts, finish_ts FROM run_hosts \
                     WHERE run_id = $1 ORDER BY position, host",
                )
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                tx.commit().await.map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                rows.iter().map(|row| crate::sql::host_record(id, row)).collect()
            }

            async fn tasks(
                &self,
                id: &deployer_core::RunId,
            ) -> Result<Vec<deployer_core::TaskRecord>, deployer_core::StoreError> {
                let doing = format!("read the tasks of run {id}");
                let mut tx = self.pool.begin().await.map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                Self::require_in(&mut tx, id, doing.as_str()).await?;
                // Without output_tail: see RunStore::tasks.
                let rows = sqlx::query(
                    "SELECT stage, entry, step, host, tag, command, history_key, state, attempts, \
                     started_ts, finished_ts, duration_us, exit_status, stderr_tail, error, finish_ts, drive, \
                     worker, CAST(NULL AS TEXT) AS output_tail FROM run_tasks WHERE run_id = $1 ORDER BY stage, entry, step",
                )
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                tx.commit().await.map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                rows.iter().map(|row| crate::sql::task_record(id, row)).collect()
            }

            async fn host_tasks(
                &self,
                id: &deployer_core::RunId,
                host: &str,
            ) -> Result<Vec<deployer_core::TaskRecord>, deployer_core::StoreError> {
                let doing = format!("read the tasks of host {host} in run {id}");
                let mut tx = self.pool.begin().await.map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                Self::require_in(&mut tx, id, doing.as_str()).await?;
                let rows = sqlx::query(
                    "SELECT stage, entry, step, host, tag, command, history_key, state, attempts, \
                     started_ts, finished_ts, duration_us, exit_status, stderr_tail, error, finish_ts, drive, \
                     worker, output_tail FROM run_tasks WHERE run_id = $1 AND host = $2 \
                     ORDER BY stage, entry, step",
                )
                .bind(id.as_str())
                .bind(&*crate::sql::text(host))
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                tx.commit().await.map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                rows.iter().map(|row| crate::sql::task_record(id, row)).collect()
            }

            async fn claim(
                &self,
                id: &deployer_core::RunId,
                owner: &str,
                ttl: std::time::Duration,
            ) -> Result<(), deployer_core::StoreError> {
                let ttl_us = crate::sql::ttl_micros(ttl);
                let owner = &*crate::sql::text(owner);
                // One conditional UPDATE decides atomically, also across processes; when it
                // changes nothing, read back why. A lease released or expired in between makes
                // the read-back inconclusive: try again, a bounded number of times.
                for _ in 0..5 {
                    let query = sqlx::query(notifying!(
                        $pg_notify,
                        "id",
                        "UPDATE runs SET owner = $2, lease_expires = ",
                        $now,
                        " + $3 WHERE id = $1 AND (owner IS NULL OR owner = $2 \
                         OR lease_expires IS NULL OR lease_expires <= ",
                        $now,
                        ")"
                    ))
                    .bind(id.as_str())
                    .bind(owner)
                    .bind(ttl_us);
                    let query = if $server_clock { query } else { query.bind(crate::sql::now_micros()) };
                    let done = query
                        .execute(&self.pool)
                        .await
                        .map_err(|e| crate::errors::backend(format!("claim run {id} for {owner}"), e))?;
                    if done.rows_affected() > 0 {
                        self.wrote();
                        return Ok(());
                    }
                    match self.lease_holder(id).await? {
                        None => return Err(deployer_core::StoreError::NotFound { id: id.to_string() }),
                        Some((Some(holder), Some(expires), now)) if holder != owner && expires > now => {
                            let remaining = u64::try_from(expires - now).unwrap_or(0);
                            return Err(deployer_core::StoreError::LeaseHeld {
                                id: id.clone(),
                                owner: holder,
                                remaining: std::time::Duration::from_micros(remaining),
                            });
                        }
                        Some(_) => continue,
                    }
                }
                Err(deployer_core::StoreError::Backend {
                    message: format!("failed to claim run {id} for {owner}"),
                    source: "its lease kept changing hands while claiming".into(),
                })
            }

            async fn renew(
                &self,
                id: &deployer_core::RunId,
                owner: &str,
                ttl: std::time::Duration,
            ) -> Result<(), deployer_core::StoreError> {
                let owner = &*crate::sql::text(owner);
                let query = sqlx::query(concat!(
                    "UPDATE runs SET lease_expires = ",
                    $now,
                    " + $3 WHERE id = $1 AND owner = $2"
                ))
                .bind(id.as_str())
                .bind(owner)
                .bind(crate::sql::ttl_micros(ttl));
                let query = if $server_clock { query } else { query.bind(crate::sql::now_micros()) };
                let done = query
                    .execute(&self.pool)
                    .await
                    .map_err(|e| crate::errors::backend(format!("renew the lease of {owner} on run {id}"), e))?;
                if done.rows_affected() > 0 {
                    return Ok(());
                }
                self.require(id).await?;
                Err(deployer_core::StoreError::LeaseLost {
                    id: id.clone(),
                    owner: owner.to_string(),
                })
            }

            async fn release(
                &self,
                id: &deployer_core::RunId,
                owner: &str,
            ) -> Result<(), deployer_core::StoreError> {
                let owner = &*crate::sql::text(owner);
                let done = sqlx::query(notifying!(
                    $pg_notify,
                    "id",
                    "UPDATE runs SET owner = NULL, lease_expires = NULL WHERE id = $1 AND owner = $2"
                ))
                .bind(id.as_str())
                .bind(owner)
                .execute(&self.pool)
                .await
                .map_err(|e| crate::errors::backend(format!("release the lease of {owner} on run {id}"), e))?;
                if done.rows_affected() == 0 {
                    self.require(id).await?;
                } else {
                    self.wrote();
                }
                Ok(())
            }

            async fn set_run_state(
                &self,
                id: &deployer_core::RunId,
                state: deployer_core::RunState,
            ) -> Result<(), deployer_core::StoreError> {
                let started = (state == deployer_core::RunState::Running).then(crate::sql::now_micros);
                let done = sqlx::query(notifying!(
                    $pg_notify,
                    "id",
                    "UPDATE runs SET state = $2, started_ts = COALESCE(started_ts, $3), \
                     drives = drives + CASE WHEN $3 IS NULL THEN 0 ELSE 1 END WHERE id = $1"
                ))
                .bind(id.as_str())
                .bind(state.as_str())
                .bind(started)
                .execute(&self.pool)
                .await
                .map_err(|e| crate::errors::backend(format!("set the state of run {id} to {state}"), e))?;
                if done.rows_affected() == 0 {
                    return Err(deployer_core::StoreError::NotFound { id: id.to_string() });
                }
                self.wrote();
                Ok(())
            }

            async fn set_host_state(
                &self,
                id: &deployer_core::RunId,
                host: &str,
                state: deployer_core::HostState,
            ) -> Result<(), deployer_core::StoreError> {
                use crate::errors::backend;
                let doing = format!("set the state of host {host} in run {id} to {state}");
                let now_us = crate::sql::now_micros();
                let mut tx = self.begin(&doing).await?;
                Self::require_in(&mut tx, id, doing.as_str()).await?;
                // A new host goes after every host already targeted.
                sqlx::query(notifying!(
                    $pg_notify,
                    "run_id",
                    "INSERT INTO run_hosts (run_id, host, position, state, updated_ts) \
                     SELECT $1, $2, COALESCE(MAX(position) + 1, 0), $3, $4 FROM run_hosts \
                     WHERE run_id = $1 \
                     ON CONFLICT (run_id, host) DO UPDATE \
                     SET state = excluded.state, updated_ts = excluded.updated_ts"
                ))
                .bind(id.as_str())
                .bind(crate::sql::text(host))
                .bind(state.as_str())
                .bind(now_us)
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                tx.commit().await.map_err(|e| backend(format!("commit: {doing}"), e))?;
                self.wrote();
                Ok(())
            }

            async fn submitted_work(
                &self,
                id: &deployer_core::RunId,
            ) -> Result<Option<deployer_core::WorkStatus>, deployer_core::StoreError> {
                self.submitted_work_status(id).await
            }

            async fn update_task(
                &self,
                id: &deployer_core::RunId,
                task: &deployer_core::TaskRecord,
            ) -> Result<(), deployer_core::StoreError> {
                use crate::errors::backend;
                let doing = format!("record task {} of run {id}", task.id);
                let (stage, entry, step) = crate::sql::task_key(task.id)?;
                let mut tx = self.begin(&doing).await?;
                Self::require_in(&mut tx, id, doing.as_str()).await?;
                bind_task!(
                    sqlx::query(notifying!(
                        $pg_notify,
                        "run_id",
                        "INSERT INTO run_tasks (run_id, stage, entry, step, host, tag, command, \
                         history_key, state, attempts, started_ts, finished_ts, duration_us, \
                         exit_status, stderr_tail, error, finish_ts, drive, output_tail, worker) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
                         ON CONFLICT (run_id, stage, entry, step) DO UPDATE SET \
                         host = excluded.host, tag = excluded.tag, command = excluded.command, \
                         history_key = excluded.history_key, state = excluded.state, \
                         attempts = excluded.attempts, started_ts = excluded.started_ts, \
                         finished_ts = excluded.finished_ts, duration_us = excluded.duration_us, \
                         exit_status = excluded.exit_status, stderr_tail = excluded.stderr_tail, \
                         error = excluded.error, finish_ts = excluded.finish_ts, drive = excluded.drive, \
                         output_tail = excluded.output_tail, worker = excluded.worker"
                    )),
                    id.as_str(),
                    (stage, entry, step),
                    task
                )
                .bind(crate::sql::opt_text(task.worker.as_deref()))
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                tx.commit().await.map_err(|e| backend(format!("commit: {doing}"), e))?;
                self.wrote();
                Ok(())
            }

            async fn finish_run(
                &self,
                id: &deployer_core::RunId,
                state: deployer_core::RunState,
            ) -> Result<(), deployer_core::StoreError> {
                use crate::errors::backend;
                let doing = format!("finish run {id} as {state}");
                let now_us = crate::sql::now_micros();
                let mut tx = self.begin(&doing).await?;
                let done = sqlx::query(notifying!(
                    $pg_notify,
                    "id",
                    "UPDATE runs SET state = $2, finish_ts = $3, owner = NULL, lease_expires = NULL \
                     WHERE id = $1"
                ))
                .bind(id.as_str())
                .bind(state.as_str())
                .bind(now_us)
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                if done.rows_affected() == 0 {
                    return Err(deployer_core::StoreError::NotFound { id: id.to_string() });
                }
                for sql in [
                    "UPDATE run_hosts SET finish_ts = $2 WHERE run_id = $1",
                    "UPDATE run_tasks SET finish_ts = $2 WHERE run_id = $1",
                ] {
                    sqlx::query(sql)
                        .bind(id.as_str())
                        .bind(now_us)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| backend(doing.as_str(), e))?;
                }
                tx.commit().await.map_err(|e| backend(format!("commit: {doing}"), e))?;
                self.wrote();
                Ok(())
            }

            async fn purge_finished(
                &self,
                before: std::time::SystemTime,
            ) -> Result<usize, deployer_core::StoreError> {
                use crate::errors::backend;
                let doing = "purge finished runs";
                let before_us = crate::sql::micros(before);
                let mut tx = self.begin(doing).await?;
                // Explicit deletes rather than relying on the foreign keys' cascade alone.
                for sql in [
                    "DELETE FROM run_approvals WHERE run_id IN \
                     (SELECT id FROM runs WHERE finish_ts IS NOT NULL AND finish_ts < $1)",
                    "DELETE FROM run_tasks WHERE run_id IN \
                     (SELECT id FROM runs WHERE finish_ts IS NOT NULL AND finish_ts < $1)",
                    "DELETE FROM run_hosts WHERE run_id IN \
                     (SELECT id FROM runs WHERE finish_ts IS NOT NULL AND finish_ts < $1)",
                ] {
                    sqlx::query(sql)
                        .bind(before_us)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| backend(doing, e))?;
                }
                let done = sqlx::query("DELETE FROM runs WHERE finish_ts IS NOT NULL AND finish_ts < $1")
                    .bind(before_us)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| backend(doing, e))?;
                if $pg_notify && done.rows_affected() > 0 {
                    // One notification for the lot (its payload is no run's id).
                    sqlx::query("SELECT pg_notify('deployer_runs', '')")
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| backend(doing, e))?;
                }
                tx.commit().await.map_err(|e| backend("commit: purge finished runs", e))?;
                if done.rows_affected() > 0 {
                    self.wrote();
                }
                Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
            }

            async fn average_duration(
                &self,
                history_key: &str,
            ) -> Result<Option<std::time::Duration>, deployer_core::StoreError> {
                let doing = format!("average the durations of {history_key}");
                // AVG, not SUM / COUNT: a sum of long durations overflows a BIGINT (SQLite
                // fails with "integer overflow"); AVG is a float on SQLite and numeric on
                // PostgreSQL, exact for any duration under 285 years.
                let row = sqlx::query(
                    "SELECT CAST(AVG(duration_us) AS DOUBLE PRECISION) AS average \
                     FROM run_tasks WHERE history_key = $1 AND state = $2 AND duration_us IS NOT NULL",
                )
                .bind(crate::sql::text(history_key))
                .bind(deployer_core::TaskState::Succeeded.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                let average: Option<f64> = sqlx::Row::try_get(&row, "average")
                    .map_err(|e| crate::errors::corrupt(format!("{doing}: {e}")))?;
                Ok(average
                    .filter(|us| *us >= 0.0)
                    .map(|us| {
                        std::time::Duration::try_from_secs_f64(us / 1e6)
                            .unwrap_or(std::time::Duration::MAX)
                    }))
            }

            async fn request_approval(
                &self,
                request: deployer_core::ApprovalRequest,
            ) -> Result<deployer_core::Approval, deployer_core::StoreError> {
                use crate::errors::backend;
                let id = request.run.clone();
                let doing = format!("ask for the approval of step {} in run {id}", request.step);
                let approvers = serde_json::to_string(&request.approvers).map_err(|e| {
                    deployer_core::StoreError::Backend {
                        message: format!("failed to {doing}"),
                        source: Box::new(e),
                    }
                })?;
                let mut tx = self.begin(&doing).await?;
                Self::require_in(&mut tx, &id, doing.as_str()).await?;
                // One approval per step: asking again keeps the stored one.
                let inserted = sqlx::query(notifying!(
                    $pg_notify,
                    "run_id",
                    "INSERT INTO run_approvals (run_id, step, position, message, target, approvers, \
                     four_eyes, started_by, requested_ts, expires_ts) \
                     SELECT $1, $2, COALESCE(MAX(position) + 1, 0), $3, $4, $5, $6, $7, $8, $9 \
                     FROM run_approvals WHERE run_id = $1 \
                     ON CONFLICT (run_id, step) DO NOTHING"
                ))
                .bind(id.as_str())
                .bind(crate::sql::text(&request.step))
                .bind(crate::sql::text(&request.message))
                .bind(crate::sql::opt_text(request.target.as_deref()))
                .bind(approvers)
                .bind(i64::from(request.four_eyes))
                .bind(crate::sql::text(&request.started_by))
                .bind(crate::sql::now_micros())
                .bind(request.expires_ts.map(crate::sql::micros))
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                let row = sqlx::query(concat!(
                    "SELECT ",
                    approval_columns!(),
                    " FROM run_approvals WHERE run_id = $1 AND step = $2"
                ))
                .bind(id.as_str())
                .bind(crate::sql::text(&request.step))
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                tx.commit().await.map_err(|e| backend(format!("commit: {doing}"), e))?;
                if inserted.rows_affected() > 0 {
                    self.wrote();
                }
                crate::sql::approval(&row)
            }

            async fn decide(
                &self,
                run: &deployer_core::RunId,
                step: &str,
                decision: deployer_core::Decision,
            ) -> Result<deployer_core::Approval, deployer_core::StoreError> {
                use crate::errors::backend;
                let doing = format!("decide the approval of step {step} in run {run}");
                let step = &*crate::sql::text(step);
                let at = crate::sql::micros(decision.at);
                // One conditional UPDATE decides atomically, also across processes: only a
                // pending, unexpired approval takes a decision.
                let done = sqlx::query(notifying!(
                    $pg_notify,
                    "run_id",
                    "UPDATE run_approvals SET decided_by = $3, decided_ts = $4, approved = $5, \
                     comment = $6 WHERE run_id = $1 AND step = $2 AND decided_by IS NULL \
                     AND (expires_ts IS NULL OR expires_ts > $4)"
                ))
                .bind(run.as_str())
                .bind(step)
                .bind(crate::sql::text(&decision.by))
                .bind(at)
                .bind(i64::from(decision.approved))
                .bind(crate::sql::opt_text(decision.comment.as_deref()))
                .execute(&self.pool)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                if done.rows_affected() > 0 {
                    self.wrote();
                }
                let row = sqlx::query(concat!(
                    "SELECT ",
                    approval_columns!(),
                    " FROM run_approvals WHERE run_id = $1 AND step = $2"
                ))
                .bind(run.as_str())
                .bind(step)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                let Some(row) = row else {
                    self.require(run).await?;
                    return Err(deployer_core::StoreError::NoApproval {
                        run: run.clone(),
                        step: step.to_string(),
                    });
                };
                let approval = crate::sql::approval(&row)?;
                if done.rows_affected() == 0 {
                    deployer_core::approval_closed(&approval, decision.at)?;
                    return Err(deployer_core::StoreError::Backend {
                        message: format!("failed to {doing}"),
                        source: "the approval changed while deciding".into(),
                    });
                }
                Ok(approval)
            }

            async fn approvals(
                &self,
                run: &deployer_core::RunId,
            ) -> Result<Vec<deployer_core::Approval>, deployer_core::StoreError> {
                let doing = format!("read the approvals of run {run}");
                let mut tx = self.pool.begin().await.map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                Self::require_in(&mut tx, run, doing.as_str()).await?;
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    approval_columns!(),
                    " FROM run_approvals WHERE run_id = $1 ORDER BY position"
                ))
                .bind(run.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                tx.commit().await.map_err(|e| crate::errors::backend(doing.as_str(), e))?;
                rows.iter().map(crate::sql::approval).collect()
            }

            async fn pending_approvals(
                &self,
            ) -> Result<Vec<deployer_core::Approval>, deployer_core::StoreError> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    approval_columns!(),
                    " FROM run_approvals WHERE decided_by IS NULL \
                     AND (expires_ts IS NULL OR expires_ts > $1) \
                     AND run_id IN (SELECT id FROM runs WHERE finish_ts IS NULL) \
                     ORDER BY requested_ts, run_id, position"
                ))
                .bind(crate::sql::now_micros())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| crate::errors::backend("list pending approvals", e))?;
                rows.iter().map(crate::sql::approval).collect()
            }

            async fn request_cancel(
                &self,
                id: &deployer_core::RunId,
                by: &str,
            ) -> Result<deployer_core::CancelRequest, deployer_core::StoreError> {
                use crate::errors::backend;
                use crate::sql::RowExt as _;
                let doing = format!("ask to cancel run {id}");
                let by = crate::sql::text(by);
                let now_us = crate::sql::now_micros();
                // One conditional UPDATE: only the first request of an unfinished run is stored.
                let done = sqlx::query(notifying!(
                    $pg_notify,
                    "id",
                    "UPDATE runs SET cancel_by = $2, cancel_ts = $3 \
                     WHERE id = $1 AND cancel_by IS NULL AND finish_ts IS NULL"
                ))
                .bind(id.as_str())
                .bind(&*by)
                .bind(now_us)
                .execute(&self.pool)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                if done.rows_affected() > 0 {
                    self.wrote();
                    return Ok(deployer_core::CancelRequest {
                        by: by.into_owned(),
                        ts: crate::sql::time(now_us, "now")?,
                    });
                }
                // Not stored: say why.
                let row = sqlx::query(
                    "SELECT state, finish_ts, cancel_by, cancel_ts FROM runs WHERE id = $1",
                )
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                let Some(row) = row else {
                    return Err(deployer_core::StoreError::NotFound { id: id.to_string() });
                };
                if row.opt_int("finish_ts")?.is_some() {
                    let state = row.text("state")?.parse().map_err(|e| match e {
                        deployer_core::StoreError::Corrupt { message } => {
                            crate::errors::corrupt(format!("run {id}: column state: {message}"))
                        }
                        other => other,
                    })?;
                    return Err(deployer_core::StoreError::RunFinished { id: id.clone(), state });
                }
                crate::sql::cancel_request(id, &row)?.ok_or_else(|| {
                    deployer_core::StoreError::Backend {
                        message: format!("failed to {doing}"),
                        source: "the run changed while asking".into(),
                    }
                })
            }

            async fn cancel_request(
                &self,
                id: &deployer_core::RunId,
            ) -> Result<Option<deployer_core::CancelRequest>, deployer_core::StoreError> {
                let row = sqlx::query("SELECT cancel_by, cancel_ts FROM runs WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| {
                        crate::errors::backend(format!("read the cancel request of run {id}"), e)
                    })?;
                match row {
                    Some(row) => crate::sql::cancel_request(id, &row),
                    None => Err(deployer_core::StoreError::NotFound { id: id.to_string() }),
                }
            }

            fn changes(&self) -> deployer_core::ChangeFeed {
                self.feed()
            }

            async fn find_runs(
                &self,
                query: &deployer_core::RunQuery,
            ) -> Result<
                Vec<Result<deployer_core::RunSummary, deployer_core::UnreadableRun>>,
                deployer_core::StoreError,
            > {
                use crate::errors::backend;
                use crate::sql::RowExt as _;
                let unfiltered = query.state.is_none()
                    && query.started_by.is_none()
                    && query.name.is_none()
                    && query.since.is_none()
                    && query.until.is_none();
                if query.limit == 0 {
                    return Ok(Vec::new());
                }
                // The page: filtered, ordered and cut in the database; never the tasklist.
                let mut q = sqlx::QueryBuilder::<$db>::new(concat!(
                    "SELECT ",
                    summary_columns!(),
                    " FROM runs WHERE 1 = 1"
                ));
                if let Some(state) = query.state {
                    q.push(" AND state = ").push_bind(state.as_str());
                }
                if let Some(by) = &query.started_by {
                    q.push(" AND started_by = ")
                        .push_bind(crate::sql::text(by).into_owned());
                }
                if let Some(name) = &query.name {
                    q.push(concat!(" AND ", $instr, "(name, "))
                        .push_bind(crate::sql::text(name).into_owned())
                        .push(") > 0");
                }
                if let Some(since) = query.since {
                    q.push(" AND created_ts >= ").push_bind(crate::sql::micros(since));
                }
                if let Some(until) = query.until {
                    q.push(" AND created_ts < ").push_bind(crate::sql::micros(until));
                }
                if !unfiltered {
                    // A run in a state this version does not know cannot be read: a filtered
                    // page leaves it out here, so the page is not cut short.
                    q.push(" AND state IN (");
                    let mut states = q.separated(", ");
                    for state in crate::sql::RUN_STATES {
                        states.push_bind(state.as_str());
                    }
                    q.push(")");
                }
                q.push(" ORDER BY created_ts DESC, id DESC LIMIT ")
                    .push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
                    .push(" OFFSET ")
                    .push_bind(i64::try_from(query.offset).unwrap_or(i64::MAX));
                let rows = q
                    .build()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| backend("find runs", e))?;
                let mut page = Vec::with_capacity(rows.len());
                for row in &rows {
                    match crate::sql::run_summary(row) {
                        Ok(summary) => page.push(Ok(summary)),
                        Err(deployer_core::StoreError::Corrupt { message }) => {
                            if unfiltered {
                                page.push(Err(deployer_core::UnreadableRun {
                                    id: crate::sql::listed_id(row),
                                    problem: message,
                                }));
                            }
                        }
                        Err(other) => return Err(other),
                    }
                }
                // Their task counts: one GROUP BY over the index (run_id, state, drive), in
                // chunks of ids, classified here as `TaskCategory::of_record` does.
                let ids: Vec<String> = page
                    .iter()
                    .filter_map(|r| r.as_ref().ok().map(|s| s.id.as_str().to_string()))
                    .collect();
                let mut groups: std::collections::HashMap<String, Vec<(String, Option<i64>, i64)>> =
                    std::collections::HashMap::new();
                for chunk in ids.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT run_id, state, drive, COUNT(*) AS n FROM run_tasks WHERE run_id IN (",
                    );
                    let mut list = q.separated(", ");
                    for id in chunk {
                        list.push_bind(id.as_str());
                    }
                    q.push(") GROUP BY run_id, state, drive");
                    let rows = q
                        .build()
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| backend("count the tasks of a page of runs", e))?;
                    for row in &rows {
                        groups.entry(row.text("run_id")?).or_default().push((
                            row.text("state")?,
                            row.opt_int("drive")?,
                            row.int("n")?,
                        ));
                    }
                }
                for entry in &mut page {
                    let Ok(summary) = entry else { continue };
                    let drives = i64::from(summary.drives);
                    for (state, drive, n) in groups.remove(summary.id.as_str()).unwrap_or_default() {
                        match state.parse::<deployer_core::TaskState>() {
                            Ok(state) => {
                                let earlier = drive.is_some_and(|d| d < drives);
                                let category = crate::sql::task_category(state, earlier);
                                for _ in 0..n.max(0) {
                                    summary.counts.add(category);
                                }
                            }
                            Err(e) => {
                                // A task this version cannot read makes its run unreadable,
                                // listed in its place (it matched the filters).
                                *entry = Err(deployer_core::UnreadableRun {
                                    id: summary.id.to_string(),
                                    problem: format!(
                                        "run {}: a task: column state: {e}",
                                        summary.id
                                    ),
                                });
                                break;
                            }
                        }
                    }
                }
                Ok(page)
            }

            async fn host_history(
                &self,
                host: &str,
                limit: usize,
            ) -> Result<Vec<deployer_core::HostRun>, deployer_core::StoreError> {
                if limit == 0 {
                    return Ok(Vec::new());
                }
                let host = crate::sql::text(host);
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT r.id AS id, r.name AS name, r.source AS source, \
                     r.started_by AS started_by, r.state AS run_state, h.state AS host_state, \
                     r.created_ts AS created_ts, h.updated_ts AS updated_ts, \
                     r.finish_ts AS finish_ts \
                     FROM run_hosts h JOIN runs r ON r.id = h.run_id WHERE h.host = ",
                );
                q.push_bind(host.as_ref());
                // Rows in states this version does not know are left out, as unreadable runs
                // are by the default.
                q.push(" AND r.state IN (");
                let mut states = q.separated(", ");
                for state in crate::sql::RUN_STATES {
                    states.push_bind(state.as_str());
                }
                q.push(") AND h.state IN (");
                let mut states = q.separated(", ");
                for state in crate::sql::HOST_STATES {
                    states.push_bind(state.as_str());
                }
                q.push(") ORDER BY r.created_ts DESC, r.id DESC LIMIT ")
                    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
                let rows = q
                    .build()
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| crate::errors::backend(format!("read the history of host {host}"), e))?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    match crate::sql::host_run(row) {
                        Ok(run) => out.push(run),
                        Err(deployer_core::StoreError::Corrupt { message }) => {
                            tracing::warn!(
                                component = "RunStore",
                                "host {host}: skipping a run that cannot be read: {message}"
                            );
                        }
                        Err(other) => return Err(other),
                    }
                }
                Ok(out)
            }
        }
    };
}

/// Binds `$1`…`$19` of a statement writing a task record: the run, the task's key
/// (stage, entry, step) and every column of `run_tasks` from `host` to `output_tail`, in that
/// order (`worker` and what follows are the statement's own).
macro_rules! bind_task {
    ($query:expr, $run:expr, ($stage:expr, $entry:expr, $step:expr), $task:expr) => {{
        use crate::sql::{duration_micros, micros, opt_text, text};
        let task = $task;
        $query
            .bind($run)
            .bind($stage)
            .bind($entry)
            .bind($step)
            .bind(text(&task.host))
            .bind(opt_text(task.tag.as_deref()))
            .bind(text(&task.command))
            .bind(text(&task.history_key))
            .bind(task.state.as_str())
            .bind(i64::from(task.attempts))
            .bind(task.started_ts.map(micros))
            .bind(task.finished_ts.map(micros))
            .bind(task.duration.map(duration_micros))
            .bind(task.exit_status.map(i64::from))
            .bind(opt_text(task.stderr_tail.as_deref()))
            .bind(opt_text(task.error.as_deref()))
            .bind(task.finish_ts.map(micros))
            .bind(task.drive.map(i64::from))
            .bind(opt_text(task.output_tail.as_deref()))
    }};
}

/// The columns of `runs` that `sql::run_record` reads.
macro_rules! run_columns {
    () => {
        "id, name, source, started_by, state, tasklist, created_ts, started_ts, finish_ts, owner, \
         lease_expires, drives"
    };
}

/// The columns of `run_approvals` that `sql::approval` reads.
macro_rules! approval_columns {
    () => {
        "run_id, step, message, target, approvers, four_eyes, started_by, requested_ts, \
         expires_ts, decided_by, decided_ts, approved, comment"
    };
}

/// The columns of `runs` that `sql::run_summary` reads: not the tasklist; the host count by the
/// primary key of `run_hosts`.
macro_rules! summary_columns {
    () => {
        "id, name, source, started_by, state, created_ts, started_ts, finish_ts, owner, \
         lease_expires, drives, (SELECT COUNT(*) FROM run_hosts h WHERE h.run_id = runs.id) AS hosts"
    };
}

/// The SQL statement `sql…` (pieces as `concat!` takes them), with
/// `RETURNING pg_notify('deployer_runs', <col>)` appended when `flag` is true (PostgreSQL):
/// every row it changes notifies, with that row's run id, when the write commits.
macro_rules! notifying {
    ($flag:literal, $col:literal, $($sql:tt)+) => {
        if $flag {
            concat!($($sql)+, " RETURNING pg_notify('deployer_runs', ", $col, ")")
        } else {
            concat!($($sql)+)
        }
    };
}
