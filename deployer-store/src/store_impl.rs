//! The [`RunStore`](deployer_core::RunStore) implementation shared by both backends.
//!
//! Written once as a macro, expanded for `SqliteStore` (over a `SqlitePool`) and `PostgresStore`
//! (over a `PgPool`): the SQL is the same for both (`$n` placeholders, `ON CONFLICT` upserts),
//! except how a transaction begins and which clock leases use.

/// Implements `RunStore` for `$store`, a struct with a `pool` field.
///
/// * `begin`: the statement that opens a write transaction (`BEGIN IMMEDIATE` on SQLite, so a
///   transaction that reads first never has to upgrade its lock).
/// * `now`: the SQL expression for "now" in microseconds used by leases: `$4` (bound from this
///   process's clock) or an expression of the server's clock, when `server_clock` is true (then
///   nothing is bound to `$4`).
macro_rules! impl_run_store {
    ($store:ident, db: $db:ty, begin: $begin:literal, now: $now:literal, server_clock: $server_clock:literal) => {
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
                sqlx::query(
                    "INSERT INTO runs (id, name, source, started_by, state, tasklist, created_ts) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
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
                let rows = sqlx::query(
                    "SELECT stage, entry, step, host, tag, command, history_key, state, attempts, \
                     started_ts, finished_ts, duration_us, exit_status, stderr_tail, error, finish_ts, drive \
                     FROM run_tasks WHERE run_id = $1 ORDER BY stage, entry, step",
                )
                .bind(id.as_str())
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
                    let query = sqlx::query(concat!(
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
                let done = sqlx::query(
                    "UPDATE runs SET owner = NULL, lease_expires = NULL WHERE id = $1 AND owner = $2",
                )
                .bind(id.as_str())
                .bind(owner)
                .execute(&self.pool)
                .await
                .map_err(|e| crate::errors::backend(format!("release the lease of {owner} on run {id}"), e))?;
                if done.rows_affected() == 0 {
                    self.require(id).await?;
                }
                Ok(())
            }

            async fn set_run_state(
                &self,
                id: &deployer_core::RunId,
                state: deployer_core::RunState,
            ) -> Result<(), deployer_core::StoreError> {
                let started = (state == deployer_core::RunState::Running).then(crate::sql::now_micros);
                let done = sqlx::query(
                    "UPDATE runs SET state = $2, started_ts = COALESCE(started_ts, $3), \
                     drives = drives + CASE WHEN $3 IS NULL THEN 0 ELSE 1 END WHERE id = $1",
                )
                .bind(id.as_str())
                .bind(state.as_str())
                .bind(started)
                .execute(&self.pool)
                .await
                .map_err(|e| crate::errors::backend(format!("set the state of run {id} to {state}"), e))?;
                if done.rows_affected() == 0 {
                    return Err(deployer_core::StoreError::NotFound { id: id.to_string() });
                }
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
                sqlx::query(
                    "INSERT INTO run_hosts (run_id, host, position, state, updated_ts) \
                     SELECT $1, $2, COALESCE(MAX(position) + 1, 0), $3, $4 FROM run_hosts \
                     WHERE run_id = $1 \
                     ON CONFLICT (run_id, host) DO UPDATE \
                     SET state = excluded.state, updated_ts = excluded.updated_ts",
                )
                .bind(id.as_str())
                .bind(crate::sql::text(host))
                .bind(state.as_str())
                .bind(now_us)
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                tx.commit().await.map_err(|e| backend(format!("commit: {doing}"), e))
            }

            async fn update_task(
                &self,
                id: &deployer_core::RunId,
                task: &deployer_core::TaskRecord,
            ) -> Result<(), deployer_core::StoreError> {
                use crate::errors::backend;
                use crate::sql::{duration_micros, micros};
                let doing = format!("record task {} of run {id}", task.id);
                let (stage, entry, step) = crate::sql::task_key(task.id)?;
                let mut tx = self.begin(&doing).await?;
                Self::require_in(&mut tx, id, doing.as_str()).await?;
                sqlx::query(
                    "INSERT INTO run_tasks (run_id, stage, entry, step, host, tag, command, \
                     history_key, state, attempts, started_ts, finished_ts, duration_us, \
                     exit_status, stderr_tail, error, finish_ts, drive) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                     ON CONFLICT (run_id, stage, entry, step) DO UPDATE SET \
                     host = excluded.host, tag = excluded.tag, command = excluded.command, \
                     history_key = excluded.history_key, state = excluded.state, \
                     attempts = excluded.attempts, started_ts = excluded.started_ts, \
                     finished_ts = excluded.finished_ts, duration_us = excluded.duration_us, \
                     exit_status = excluded.exit_status, stderr_tail = excluded.stderr_tail, \
                     error = excluded.error, finish_ts = excluded.finish_ts, drive = excluded.drive",
                )
                .bind(id.as_str())
                .bind(stage)
                .bind(entry)
                .bind(step)
                .bind(crate::sql::text(&task.host))
                .bind(crate::sql::opt_text(task.tag.as_deref()))
                .bind(crate::sql::text(&task.command))
                .bind(crate::sql::text(&task.history_key))
                .bind(task.state.as_str())
                .bind(i64::from(task.attempts))
                .bind(task.started_ts.map(micros))
                .bind(task.finished_ts.map(micros))
                .bind(task.duration.map(duration_micros))
                .bind(task.exit_status.map(i64::from))
                .bind(crate::sql::opt_text(task.stderr_tail.as_deref()))
                .bind(crate::sql::opt_text(task.error.as_deref()))
                .bind(task.finish_ts.map(micros))
                .bind(task.drive.map(i64::from))
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
                tx.commit().await.map_err(|e| backend(format!("commit: {doing}"), e))
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
                let done = sqlx::query(
                    "UPDATE runs SET state = $2, finish_ts = $3, owner = NULL, lease_expires = NULL \
                     WHERE id = $1",
                )
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
                tx.commit().await.map_err(|e| backend(format!("commit: {doing}"), e))
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
                tx.commit().await.map_err(|e| backend("commit: purge finished runs", e))?;
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
                sqlx::query(
                    "INSERT INTO run_approvals (run_id, step, position, message, target, approvers, \
                     four_eyes, started_by, requested_ts, expires_ts) \
                     SELECT $1, $2, COALESCE(MAX(position) + 1, 0), $3, $4, $5, $6, $7, $8, $9 \
                     FROM run_approvals WHERE run_id = $1 \
                     ON CONFLICT (run_id, step) DO NOTHING",
                )
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
                let done = sqlx::query(
                    "UPDATE run_approvals SET decided_by = $3, decided_ts = $4, approved = $5, \
                     comment = $6 WHERE run_id = $1 AND step = $2 AND decided_by IS NULL \
                     AND (expires_ts IS NULL OR expires_ts > $4)",
                )
                .bind(run.as_str())
                .bind(step)
                .bind(crate::sql::text(&decision.by))
                .bind(at)
                .bind(i64::from(decision.approved))
                .bind(crate::sql::opt_text(decision.comment.as_deref()))
                .execute(&self.pool)
                .await
                .map_err(|e| backend(doing.as_str(), e))?;
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

            // Engineer "store" replaces these two with migration 0006's columns.
            async fn request_cancel(
                &self,
                id: &deployer_core::RunId,
                _by: &str,
            ) -> Result<deployer_core::CancelRequest, deployer_core::StoreError> {
                Err(deployer_core::StoreError::Backend {
                    message: format!("cancel run {id}"),
                    source: "not supported by this store yet".into(),
                })
            }

            async fn cancel_request(
                &self,
                _id: &deployer_core::RunId,
            ) -> Result<Option<deployer_core::CancelRequest>, deployer_core::StoreError> {
                Ok(None)
            }
        }
    };
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
