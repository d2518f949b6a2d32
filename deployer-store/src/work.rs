//! The work queue of distributed runs on PostgreSQL ([`WorkQueue`] for [`PostgresStore`]).
//!
//! Tables (migration `0007_work.sql`): `run_work` (one row per submitted run: its commands,
//! its stages' limits, whether it aborts, why it stopped), `run_entries` (one row per entry:
//! state `PENDING` / `CLAIMED` / `DONE` / `FAILED` / `CANCELLED`, the claiming worker, the
//! fencing token and the lease) and `workers` (heartbeats).
//!
//! Every decision about one run is taken under the lock of its `run_work` row
//! (`SELECT … FOR UPDATE`): claims, sweeps of lapsed claims and the ends of entries of one run
//! are serialized, so the counts a claim checks (`concurrency`, `concurrency_per_host`, the
//! stage barrier) are exact over any number of workers, and exactly one ending finishes the
//! run. Fenced writes about a claim (`record_task`, `renew_claim`, `finish_entry`) are
//! conditional on the entry being claimed by the same worker under the same token with a live
//! lease, in the statement that writes.

use std::time::Duration;

use deployer_core::{
    Claim, EntryOutcome, HostState, RunId, RunState, StageLimits, StoreError, Submission, TaskId,
    TaskRecord, TaskState, WorkQueue, WorkStatus, WorkerInfo,
};
use sqlx::Postgres;

use crate::PostgresStore;
use crate::errors::backend;
use crate::sql::{RowExt as _, now_micros, text, ttl_micros};

/// The server's clock, in microseconds since the Unix epoch (leases and heartbeats use it, so
/// workers' clocks need not agree).
macro_rules! now {
    () => {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)"
    };
}

/// Entry states as stored.
/// How long PostgreSQL lets a work transaction's session sit idle before it ends the session
/// and so releases its locks (see `begin_work`): well under a third of any useful lease.
const IDLE_IN_WORK_TX: &str = "2s";

const PENDING: &str = "PENDING";
const CLAIMED: &str = "CLAIMED";
const DONE: &str = "DONE";
const FAILED: &str = "FAILED";
const CANCELLED: &str = "CANCELLED";

type Tx = sqlx::Transaction<'static, Postgres>;

fn lease_lost(claim: &Claim) -> StoreError {
    StoreError::LeaseLost {
        id: claim.run.clone(),
        owner: format!(
            "{} (entry stages[{}].tasks[{}], fence {})",
            claim.worker, claim.stage, claim.entry, claim.fence
        ),
    }
}

fn invalid(doing: &str, why: impl Into<String>) -> StoreError {
    StoreError::Backend {
        message: format!("failed to {doing}"),
        source: why.into().into(),
    }
}

fn index(v: usize, doing: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| invalid(doing, format!("index {v} is out of range")))
}

/// `$v` as JSON text (a macro: this crate does not name `serde` itself).
macro_rules! json {
    ($v:expr, $doing:expr) => {
        serde_json::to_string($v).map_err(|e| invalid($doing, e.to_string()))
    };
}

impl PostgresStore {
    /// [`deployer_core::RunStore::submitted_work`]: the run's [`WorkQueue::work_status`] when it was submitted,
    /// `None` when it never was (or there is no such run).
    pub(crate) async fn submitted_work_status(
        &self,
        run: &RunId,
    ) -> Result<Option<WorkStatus>, StoreError> {
        let doing = format!("read whether run {run} was submitted to workers");
        let submitted = sqlx::query("SELECT 1 AS one FROM run_work WHERE run_id = $1")
            .bind(run.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| backend(doing.as_str(), e))?;
        match submitted {
            Some(_) => WorkQueue::work_status(self, run).await.map(Some),
            None => Ok(None),
        }
    }
}

impl PostgresStore {
    /// Begins a work transaction. Its session may sit idle inside it for at most
    /// [`IDLE_IN_WORK_TX`]: a worker stopped (SIGSTOP, a frozen VM) between two statements of
    /// a claim or an entry's end keeps its connection open, and without this it would hold
    /// the run's row lock until it resumed, stalling every other worker of the run (their
    /// pools full of transactions waiting for the lock, their renewals starved) until their
    /// own leases lapsed.
    async fn begin_work(&self, doing: &str) -> Result<Tx, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| backend(format!("begin a transaction to {doing}"), e))?;
        sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, true)")
            .bind(IDLE_IN_WORK_TX)
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(format!("begin a transaction to {doing}"), e))?;
        Ok(tx)
    }

    /// Sweeps lapsed claims of `run` (whose `run_work` row `tx` holds locked), in one
    /// statement: an idempotent entry goes back to `PENDING` (its next claim bumps the fence);
    /// any other ends `FAILED` and stops the run. Returns whether it stopped the run.
    async fn sweep_lapsed(tx: &mut Tx, run: &str, doing: &str) -> Result<bool, StoreError> {
        let swept = sqlx::query(concat!(
            "UPDATE run_entries SET lease_expires = NULL, \
             state = CASE WHEN idempotent <> 0 THEN 'PENDING' ELSE 'FAILED' END, \
             ended_ts = CASE WHEN idempotent <> 0 THEN NULL ELSE ",
            now!(),
            " END WHERE run_id = $1 AND state = 'CLAIMED' AND lease_expires <= ",
            now!(),
            " RETURNING stage, entry, host, worker, idempotent, \
             pg_notify('deployer_runs', run_id)"
        ))
        .bind(run)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        let mut stopped = false;
        for row in &swept {
            if row.int("idempotent")? != 0 {
                continue;
            }
            stopped = true;
            let host = row.text("host")?;
            let message = format!(
                "entry stages[{}].tasks[{}] on {host} was interrupted on worker {} and its commands are not idempotent; resume with --force",
                row.int("stage")?,
                row.int("entry")?,
                row.opt_text("worker")?.unwrap_or_default(),
            );
            sqlx::query(
                "UPDATE run_work SET aborting = 1, stopped = COALESCE(stopped, $2) WHERE run_id = $1",
            )
            .bind(run)
            .bind(message)
            .execute(&mut **tx)
            .await
            .map_err(|e| backend(doing, e))?;
            Self::host_state_in(tx, run, &host, HostState::Failed, doing).await?;
        }
        Ok(stopped)
    }

    async fn host_state_in(
        tx: &mut Tx,
        run: &str,
        host: &str,
        state: HostState,
        doing: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE run_hosts SET state = $3, updated_ts = $4 \
             WHERE run_id = $1 AND host = $2 AND state <> $3 AND state <> 'FAILED'",
        )
        .bind(run)
        .bind(host)
        .bind(state.as_str())
        .bind(now_micros())
        .execute(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        Ok(())
    }

    /// Finishes `run` (locked in `tx`) if it is over: every entry ended, or it aborts and
    /// nothing is claimed. Returns whether it finished it.
    async fn finish_if_over(tx: &mut Tx, run: &str, doing: &str) -> Result<bool, StoreError> {
        // EXISTS, not COUNT: this runs at every end of an entry.
        let row = sqlx::query(
            "SELECT w.aborting, w.stopped, r.cancel_by, r.finish_ts, \
             EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = $1 AND e.state = 'PENDING') \
             AS pending, \
             EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = $1 AND e.state = 'CLAIMED') \
             AS claimed \
             FROM run_work w JOIN runs r ON r.id = w.run_id WHERE w.run_id = $1",
        )
        .bind(run)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        if row.opt_int("finish_ts")?.is_some() {
            return Ok(false);
        }
        let flag = |col: &str| -> Result<bool, StoreError> {
            sqlx::Row::try_get::<bool, _>(&row, col)
                .map_err(|e| crate::errors::corrupt(format!("run {run}: {col}: {e}")))
        };
        let stopped = row.opt_text("stopped")?.is_some();
        let cancel = row.opt_text("cancel_by")?.is_some();
        let aborting = row.int("aborting")? != 0 || stopped || cancel;
        let (pending, claimed) = (flag("pending")?, flag("claimed")?);
        if claimed || (pending && !aborting) {
            return Ok(false);
        }
        let ended = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = $1 AND e.state = 'FAILED') \
             AS failed, \
             EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = $1 AND e.state = 'CANCELLED') \
             AS cancelled",
        )
        .bind(run)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        let ended_flag = |col: &str| -> Result<bool, StoreError> {
            sqlx::Row::try_get::<bool, _>(&ended, col)
                .map_err(|e| crate::errors::corrupt(format!("run {run}: {col}: {e}")))
        };
        let state = if stopped || ended_flag("failed")? {
            RunState::Failed
        } else if cancel || ended_flag("cancelled")? || pending {
            RunState::Cancelled
        } else {
            RunState::Succeeded
        };
        let now_us = now_micros();
        // Tasks of entries never claimed did not run.
        sqlx::query(
            "UPDATE run_tasks SET state = $2 WHERE run_id = $1 AND state = $3 AND EXISTS \
             (SELECT 1 FROM run_entries e WHERE e.run_id = $1 AND e.stage = run_tasks.stage \
             AND e.entry = run_tasks.entry AND e.state = 'PENDING')",
        )
        .bind(run)
        .bind(TaskState::NotRun.as_str())
        .bind(TaskState::Pending.as_str())
        .execute(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        // Every host's final state, as a single controller's recorder decides it: failed if
        // an entry of it failed, was interrupted or cancelled; done if one ran; else skipped.
        sqlx::query(
            "UPDATE run_hosts h SET state = a.final, updated_ts = $2 FROM \
             (SELECT host, CASE WHEN bool_or(state IN ('FAILED', 'CANCELLED')) THEN 'FAILED' \
              WHEN bool_or(state = 'DONE') THEN 'DONE' ELSE 'SKIPPED' END AS final \
              FROM run_entries WHERE run_id = $1 GROUP BY host) a \
             WHERE h.run_id = $1 AND h.host = a.host \
             AND h.state NOT IN ('REMOVED', 'ROLLED_BACK', 'DROPPED')",
        )
        .bind(run)
        .bind(now_us)
        .execute(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        sqlx::query(
            "UPDATE run_entries SET state = 'CANCELLED', ended_ts = $2 \
             WHERE run_id = $1 AND state = 'PENDING'",
        )
        .bind(run)
        .bind(now_us)
        .execute(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        // As RunStore::finish_run does.
        sqlx::query(
            "UPDATE runs SET state = $2, finish_ts = $3, owner = NULL, lease_expires = NULL \
             WHERE id = $1 RETURNING pg_notify('deployer_runs', id)",
        )
        .bind(run)
        .bind(state.as_str())
        .bind(now_us)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        for sql in [
            "UPDATE run_hosts SET finish_ts = $2 WHERE run_id = $1",
            "UPDATE run_tasks SET finish_ts = $2 WHERE run_id = $1",
        ] {
            sqlx::query(sql)
                .bind(run)
                .bind(now_us)
                .execute(&mut **tx)
                .await
                .map_err(|e| backend(doing, e))?;
        }
        Ok(true)
    }

    /// In one transaction holding `run`'s lock: sweeps its lapsed claims, finishes it if it
    /// is over, and claims an entry for `worker` if one is claimable.
    async fn claim_in_run(
        &self,
        run: &str,
        worker: &WorkerInfo,
        ttl: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let doing = format!("claim an entry of run {run} for worker {}", worker.id);
        let doing = doing.as_str();
        let _turn = self.run_lock_turn.lock().await;
        let mut tx = self.begin_work(doing).await?;
        // The run's lock. What is counted below is read by later statements, each seeing
        // every claim committed before this lock was granted (READ COMMITTED).
        let Some(row) = sqlx::query(
            "SELECT w.aborting, w.stopped, w.stages, r.cancel_by, r.finish_ts \
             FROM run_work w JOIN runs r ON r.id = w.run_id WHERE w.run_id = $1 FOR UPDATE OF w",
        )
        .bind(run)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?
        else {
            return Ok(None);
        };
        if row.opt_int("finish_ts")?.is_some() {
            return Ok(None);
        }
        let stopped = Self::sweep_lapsed(&mut tx, run, doing).await?;
        let claimable = !stopped
            && row.int("aborting")? == 0
            && row.opt_text("stopped")?.is_none()
            && row.opt_text("cancel_by")?.is_none();
        if !claimable {
            Self::finish_if_over(&mut tx, run, doing).await?;
            tx.commit().await.map_err(|e| backend(doing, e))?;
            return Ok(None);
        }
        // The stage barrier (only the lowest stage with unended entries) and that stage's
        // claimed entries.
        let at = sqlx::query(
            "SELECT m.stage, (SELECT COUNT(*) FROM run_entries c WHERE c.run_id = $1 \
             AND c.stage = m.stage AND c.state = 'CLAIMED') AS claimed \
             FROM (SELECT MIN(stage) AS stage FROM run_entries WHERE run_id = $1 \
             AND state IN ('PENDING', 'CLAIMED')) m",
        )
        .bind(run)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        let Some(stage) = at.opt_int("stage")? else {
            // Every entry ended (not reached through finish_entry, which finishes the run).
            Self::finish_if_over(&mut tx, run, doing).await?;
            tx.commit().await.map_err(|e| backend(doing, e))?;
            return Ok(None);
        };
        let stages: Vec<StageLimits> = serde_json::from_str(&row.text("stages")?)
            .map_err(|e| crate::errors::corrupt(format!("run {run}: column stages: {e}")))?;
        let limits = usize::try_from(stage)
            .ok()
            .and_then(|s| stages.get(s))
            .ok_or_else(|| {
                crate::errors::corrupt(format!("run {run}: column stages: no stage {stage}"))
            })?;
        if usize::try_from(at.int("claimed")?).unwrap_or(usize::MAX) >= limits.concurrency {
            tx.commit().await.map_err(|e| backend(doing, e))?;
            return Ok(None);
        }
        let per_host = limits
            .concurrency_per_host
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let worker_id = text(&worker.id);
        // One statement: the first pending entry of the stage in the worker's zones whose
        // host is under its limit is claimed (fence + 1, lease from the server's clock), its
        // host marked running, and the run started on its first claim (as
        // RunStore::set_run_state(Running) does: started_ts once, one more drive).
        let taken = sqlx::query(concat!(
            "WITH picked AS (SELECT entry FROM run_entries e \
               WHERE run_id = $1 AND stage = $2 AND state = 'PENDING' \
               AND (zone IS NULL OR cardinality($3::text[]) = 0 OR zone = ANY($3::text[])) \
               AND ($4::bigint IS NULL OR (SELECT COUNT(*) FROM run_entries c \
                    WHERE c.run_id = $1 AND c.stage = $2 AND c.host = e.host \
                    AND c.state = 'CLAIMED') < $4::bigint) \
               ORDER BY entry LIMIT 1 FOR UPDATE SKIP LOCKED), \
             claimed AS (UPDATE run_entries SET state = 'CLAIMED', worker = $5, \
               fence = fence + 1, lease_expires = ",
            now!(),
            " + $6, claimed_ts = ",
            now!(),
            ", ended_ts = NULL \
               WHERE run_id = $1 AND stage = $2 AND entry = (SELECT entry FROM picked) \
               RETURNING entry, host, tasks, fence, lease_expires), \
             hosts AS (UPDATE run_hosts SET state = 'RUNNING', updated_ts = $7 \
               WHERE run_id = $1 AND host = (SELECT host FROM claimed) \
               AND state NOT IN ('RUNNING', 'FAILED')), \
             started AS (UPDATE runs SET state = 'RUNNING', \
               started_ts = COALESCE(started_ts, $7), drives = drives + 1 \
               WHERE id = $1 AND state <> 'RUNNING' AND EXISTS (SELECT 1 FROM claimed)) \
             SELECT entry, host, tasks, fence, lease_expires, \
               pg_notify('deployer_runs', $1) FROM claimed"
        ))
        .bind(run)
        .bind(stage)
        .bind(&worker.zones)
        .bind(per_host)
        .bind(&*worker_id)
        .bind(ttl_micros(ttl))
        .bind(now_micros())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        tx.commit().await.map_err(|e| backend(doing, e))?;
        let Some(taken) = taken else {
            return Ok(None);
        };
        let tasks: Vec<TaskId> = serde_json::from_str(&taken.text("tasks")?)
            .map_err(|e| crate::errors::corrupt(format!("run {run}: column tasks: {e}")))?;
        Ok(Some(Claim {
            run: run
                .parse()
                .map_err(|_| crate::errors::corrupt(format!("run {run}: not a run id")))?,
            stage: usize::try_from(stage).unwrap_or(usize::MAX),
            entry: taken.count_usize("entry")?,
            host: taken.text("host")?,
            tasks,
            worker: worker_id.into_owned(),
            fence: taken.int("fence")?,
            lease_expires: crate::sql::time(taken.int("lease_expires")?, "lease_expires")?,
        }))
    }
}

impl PostgresStore {
    /// The submitted runs `worker` would have work in (pending entries in its zones, not
    /// aborting) but cannot claim, each with the commands it lacks (sorted): what a worker
    /// says instead of waiting silently.
    ///
    /// ```no_run
    /// use deployer_core::WorkerInfo;
    /// use deployer_store::PostgresStore;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let store = PostgresStore::connect("postgres://deployer@db.internal/deployer").await.unwrap();
    /// let me = WorkerInfo { id: "w1".into(), zones: vec![], commands: vec!["upload".into()] };
    /// for (run, missing) in store.missing_commands(&me).await.unwrap() {
    ///     eprintln!("run {run} needs commands this worker lacks: {}", missing.join(", "));
    /// }
    /// # });
    /// ```
    pub async fn missing_commands(
        &self,
        worker: &WorkerInfo,
    ) -> Result<Vec<(RunId, Vec<String>)>, StoreError> {
        let doing = format!("list the runs worker {} lacks commands for", worker.id);
        let rows = sqlx::query(
            "SELECT w.run_id, w.commands FROM run_work w JOIN runs r ON r.id = w.run_id \
             WHERE r.finish_ts IS NULL AND w.aborting = 0 AND w.stopped IS NULL \
             AND r.cancel_by IS NULL \
             AND NOT (CAST(w.commands AS jsonb) <@ to_jsonb($1::text[])) \
             AND EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = w.run_id \
               AND e.state = 'PENDING' AND (e.zone IS NULL OR cardinality($2::text[]) = 0 \
               OR e.zone = ANY($2::text[]))) \
             ORDER BY w.submitted_ts, w.run_id",
        )
        .bind(&worker.commands)
        .bind(&worker.zones)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| backend(doing.as_str(), e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let run = row.text("run_id")?;
            let id: RunId = run
                .parse()
                .map_err(|_| crate::errors::corrupt(format!("run {run}: not a run id")))?;
            let commands: Vec<String> = serde_json::from_str(&row.text("commands")?)
                .map_err(|e| crate::errors::corrupt(format!("run {run}: column commands: {e}")))?;
            let mut missing: Vec<String> = commands
                .into_iter()
                .filter(|c| !worker.commands.contains(c))
                .collect();
            missing.sort();
            out.push((id, missing));
        }
        Ok(out)
    }
}

trait CountExt {
    fn count_usize(&self, col: &str) -> Result<usize, StoreError>;
}

impl<R: crate::sql::RowExt> CountExt for R {
    fn count_usize(&self, col: &str) -> Result<usize, StoreError> {
        let v = self.int(col)?;
        usize::try_from(v)
            .map_err(|_| crate::errors::corrupt(format!("column {col}: {v} is out of range")))
    }
}

#[deployer_core::async_trait]
impl WorkQueue for PostgresStore {
    async fn submit(&self, submission: &Submission) -> Result<(), StoreError> {
        let run = submission.run.as_str();
        let doing = format!("submit run {run}");
        let doing = doing.as_str();
        for e in &submission.entries {
            if e.stage >= submission.stages.len() {
                return Err(invalid(
                    doing,
                    format!(
                        "entry stages[{}].tasks[{}] is of no stage (the run has {})",
                        e.stage,
                        e.entry,
                        submission.stages.len()
                    ),
                ));
            }
        }
        let mut tx = self.begin_work(doing).await?;
        let found = sqlx::query("SELECT 1 AS one FROM runs WHERE id = $1")
            .bind(run)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| backend(doing, e))?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                id: run.to_string(),
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO run_work (run_id, commands, stages, submitted_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (run_id) DO NOTHING RETURNING pg_notify('deployer_runs', run_id)",
        )
        .bind(run)
        .bind(json!(&submission.commands, doing)?)
        .bind(json!(&submission.stages, doing)?)
        .bind(now_micros())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        if inserted.is_none() {
            return Err(invalid(doing, "it was submitted already"));
        }
        // 8 parameters a row: 4000 rows stay under PostgreSQL's 65535 parameters.
        for chunk in submission.entries.chunks(4000) {
            let mut rows = Vec::with_capacity(chunk.len());
            for e in chunk {
                rows.push((
                    index(e.stage, doing)?,
                    index(e.entry, doing)?,
                    text(&e.host),
                    e.zone.as_deref().map(text),
                    json!(&e.tasks, doing)?,
                    i64::from(e.idempotent),
                ));
            }
            let mut q = sqlx::QueryBuilder::<Postgres>::new(
                "INSERT INTO run_entries (run_id, stage, entry, host, zone, tasks, idempotent, state) ",
            );
            q.push_values(
                rows,
                |mut b, (stage, entry, host, zone, tasks, idempotent)| {
                    b.push_bind(run)
                        .push_bind(stage)
                        .push_bind(entry)
                        .push_bind(host.into_owned())
                        .push_bind(zone.map(|z| z.into_owned()))
                        .push_bind(tasks)
                        .push_bind(idempotent)
                        .push_bind(PENDING);
                },
            );
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing, e))?;
        }
        // A run with no entries is over at once.
        Self::finish_if_over(&mut tx, run, doing).await?;
        tx.commit().await.map_err(|e| backend(doing, e))?;
        Ok(())
    }

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), StoreError> {
        let doing = format!("record the heartbeat of worker {}", worker.id);
        let doing = doing.as_str();
        let zones = json!(&worker.zones, doing)?;
        let commands = json!(&worker.commands, doing)?;
        let mut tx = self.begin_work(doing).await?;
        let before = sqlx::query(concat!(
            "SELECT zones, commands, heartbeat_expires > ",
            now!(),
            " AS live FROM workers WHERE id = $1 FOR UPDATE"
        ))
        .bind(&*text(&worker.id))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        sqlx::query(concat!(
            "INSERT INTO workers (id, zones, commands, heartbeat_expires) VALUES ($1, $2, $3, ",
            now!(),
            " + $4) ON CONFLICT (id) DO UPDATE SET zones = excluded.zones, \
             commands = excluded.commands, heartbeat_expires = excluded.heartbeat_expires"
        ))
        .bind(&*text(&worker.id))
        .bind(&zones)
        .bind(&commands)
        .bind(ttl_micros(ttl))
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        // Workers dead for a day are forgotten (names are per process).
        sqlx::query(concat!(
            "DELETE FROM workers WHERE heartbeat_expires < ",
            now!(),
            " - 86400000000"
        ))
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        // A worker that comes alive or changes what it serves changes which zones are
        // unserved: tell followers (not on every heartbeat).
        let changed = match &before {
            None => true,
            Some(row) => {
                let live: bool = sqlx::Row::try_get(row, "live")
                    .map_err(|e| crate::errors::corrupt(format!("workers.live: {e}")))?;
                !live || row.text("zones")? != zones || row.text("commands")? != commands
            }
        };
        if changed {
            sqlx::query("SELECT pg_notify('deployer_runs', '')")
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing, e))?;
        }
        tx.commit().await.map_err(|e| backend(doing, e))?;
        Ok(())
    }

    async fn claim(&self, worker: &WorkerInfo, ttl: Duration) -> Result<Option<Claim>, StoreError> {
        let doing = format!("find work for worker {}", worker.id);
        // Runs this worker may claim from, and runs that need a sweep (lapsed claims, or
        // aborting with nothing claimed: finished here). Oldest first.
        let candidates = sqlx::query(concat!(
            "SELECT w.run_id FROM run_work w JOIN runs r ON r.id = w.run_id \
             WHERE r.finish_ts IS NULL AND ( \
               (w.aborting = 0 AND w.stopped IS NULL AND r.cancel_by IS NULL \
                AND CAST(w.commands AS jsonb) <@ to_jsonb($1::text[]) \
                AND EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = w.run_id \
                  AND e.state = 'PENDING' AND (e.zone IS NULL OR cardinality($2::text[]) = 0 \
                  OR e.zone = ANY($2::text[])))) \
               OR EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = w.run_id \
                  AND e.state = 'CLAIMED' AND e.lease_expires <= ",
            now!(),
            ") \
               OR ((w.aborting <> 0 OR w.stopped IS NOT NULL OR r.cancel_by IS NOT NULL) \
                  AND NOT EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = w.run_id \
                  AND e.state = 'CLAIMED'))) \
             ORDER BY w.submitted_ts, w.run_id"
        ))
        .bind(&worker.commands)
        .bind(&worker.zones)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| backend(doing.as_str(), e))?;
        for row in &candidates {
            let run = row.text("run_id")?;
            if let Some(claim) = self.claim_in_run(&run, worker, ttl).await? {
                return Ok(Some(claim));
            }
        }
        Ok(None)
    }

    async fn renew_claim(&self, claim: &Claim, ttl: Duration) -> Result<(), StoreError> {
        let doing = format!(
            "renew the claim of worker {} on run {} entry stages[{}].tasks[{}]",
            claim.worker, claim.run, claim.stage, claim.entry
        );
        let done = sqlx::query(concat!(
            "UPDATE run_entries SET lease_expires = ",
            now!(),
            " + $6 WHERE run_id = $1 AND stage = $2 AND entry = $3 AND worker = $4 \
             AND fence = $5 AND state = 'CLAIMED' AND lease_expires > ",
            now!()
        ))
        .bind(claim.run.as_str())
        .bind(index(claim.stage, &doing)?)
        .bind(index(claim.entry, &doing)?)
        .bind(&*text(&claim.worker))
        .bind(claim.fence)
        .bind(ttl_micros(ttl))
        .execute(&self.pool)
        .await
        .map_err(|e| backend(doing.as_str(), e))?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(claim));
        }
        Ok(())
    }

    async fn record_task(&self, claim: &Claim, task: &TaskRecord) -> Result<(), StoreError> {
        let doing = format!(
            "record task {} of run {} for worker {}",
            task.id, claim.run, claim.worker
        );
        let doing = doing.as_str();
        if !claim.tasks.contains(&task.id) {
            return Err(invalid(
                doing,
                format!(
                    "the task is not of the claimed entry stages[{}].tasks[{}]",
                    claim.stage, claim.entry
                ),
            ));
        }
        let (stage, entry, step) = crate::sql::task_key(task.id)?;
        // One statement: the entry's row is locked (FOR SHARE) and checked to be this claim's,
        // live, so a reclaim commits either before (and this changes nothing) or after.
        let done = bind_task!(
            sqlx::query(concat!(
                "WITH fenced AS (SELECT 1 FROM run_entries WHERE run_id = $1 AND stage = $2 \
                 AND entry = $3 AND worker = $20 AND fence = $21 AND state = 'CLAIMED' \
                 AND lease_expires > ",
                now!(),
                " FOR SHARE) \
                 UPDATE run_tasks SET host = $5, tag = $6, command = $7, history_key = $8, \
                 state = $9, attempts = $10, started_ts = $11, finished_ts = $12, duration_us = $13, \
                 exit_status = $14, stderr_tail = $15, error = $16, finish_ts = $17, drive = $18, \
                 output_tail = $19, worker = $20 \
                 WHERE run_id = $1 AND stage = $2 AND entry = $3 AND step = $4 \
                 AND EXISTS (SELECT 1 FROM fenced) \
                 RETURNING pg_notify('deployer_runs', run_id)"
            )),
            claim.run.as_str(),
            (stage, entry, step),
            task
        )
        .bind(&*text(&claim.worker))
        .bind(claim.fence)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| backend(doing, e))?;
        if done.is_empty() {
            return Err(lease_lost(claim));
        }
        Ok(())
    }

    async fn finish_entry(&self, claim: &Claim, outcome: EntryOutcome) -> Result<(), StoreError> {
        let doing = format!(
            "end entry stages[{}].tasks[{}] of run {} for worker {}",
            claim.stage, claim.entry, claim.run, claim.worker
        );
        let doing = doing.as_str();
        let run = claim.run.as_str();
        let _turn = self.run_lock_turn.lock().await;
        let mut tx = self.begin_work(doing).await?;
        // The run's lock: ends of its entries are serialized, so exactly one finishes it.
        let locked = sqlx::query("SELECT 1 AS one FROM run_work WHERE run_id = $1 FOR UPDATE")
            .bind(run)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| backend(doing, e))?;
        if locked.is_none() {
            return Err(lease_lost(claim));
        }
        let state = match outcome {
            EntryOutcome::Done => DONE,
            EntryOutcome::Failed => FAILED,
            EntryOutcome::Cancelled => CANCELLED,
        };
        // One statement: the entry ends if this claim is still its current one (fenced);
        // a failure or a cancel makes the run abort (nothing new is claimed).
        let ended = sqlx::query(concat!(
            "WITH ended AS (UPDATE run_entries SET state = $6, lease_expires = NULL, ended_ts = ",
            now!(),
            " WHERE run_id = $1 AND stage = $2 AND entry = $3 AND worker = $4 AND fence = $5 \
             AND state = 'CLAIMED' AND lease_expires > ",
            now!(),
            " RETURNING host), \
             aborts AS (UPDATE run_work SET aborting = 1 WHERE run_id = $1 \
             AND $6 <> 'DONE' AND EXISTS (SELECT 1 FROM ended)) \
             SELECT host, pg_notify('deployer_runs', $1) FROM ended"
        ))
        .bind(run)
        .bind(index(claim.stage, doing)?)
        .bind(index(claim.entry, doing)?)
        .bind(&*text(&claim.worker))
        .bind(claim.fence)
        .bind(state)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        let Some(ended) = ended else {
            return Err(lease_lost(claim));
        };
        // The host: failed with a failure; done once none of its entries is left.
        let host = ended.text("host")?;
        if outcome != EntryOutcome::Cancelled {
            sqlx::query(
                "UPDATE run_hosts SET state = $3, updated_ts = $4 \
                 WHERE run_id = $1 AND host = $2 AND state <> 'FAILED' \
                 AND ($3 = 'FAILED' OR NOT EXISTS (SELECT 1 FROM run_entries x \
                 WHERE x.run_id = $1 AND x.host = $2 AND x.state IN ('PENDING', 'CLAIMED')))",
            )
            .bind(run)
            .bind(&host)
            .bind(if outcome == EntryOutcome::Failed {
                HostState::Failed.as_str()
            } else {
                HostState::Done.as_str()
            })
            .bind(now_micros())
            .execute(&mut *tx)
            .await
            .map_err(|e| backend(doing, e))?;
        }
        Self::finish_if_over(&mut tx, run, doing).await?;
        tx.commit().await.map_err(|e| backend(doing, e))?;
        Ok(())
    }

    async fn work_status(&self, run: &RunId) -> Result<WorkStatus, StoreError> {
        let doing = format!("read the work status of run {run}");
        let doing = doing.as_str();
        let mut tx = self.begin_work(doing).await?;
        let Some(work) = sqlx::query(
            "SELECT w.aborting, w.stopped, r.cancel_by FROM run_work w JOIN runs r \
             ON r.id = w.run_id WHERE w.run_id = $1",
        )
        .bind(run.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?
        else {
            // Not submitted: nothing waits for workers (a run driven by one controller).
            let found = sqlx::query("SELECT 1 AS one FROM runs WHERE id = $1")
                .bind(run.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| backend(doing, e))?;
            return match found {
                Some(_) => Ok(WorkStatus::default()),
                None => Err(StoreError::NotFound {
                    id: run.to_string(),
                }),
            };
        };
        let mut status = WorkStatus {
            aborting: work.int("aborting")? != 0 || work.opt_text("cancel_by")?.is_some(),
            stopped: work.opt_text("stopped")?,
            ..WorkStatus::default()
        };
        let rows = sqlx::query(
            "SELECT state, worker, COUNT(*) AS n FROM run_entries WHERE run_id = $1 \
             GROUP BY state, worker ORDER BY worker",
        )
        .bind(run.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        for row in &rows {
            let n = usize::try_from(row.int("n")?).unwrap_or(usize::MAX);
            match row.text("state")?.as_str() {
                PENDING => status.pending += n,
                CLAIMED => status
                    .claimed
                    .push((row.opt_text("worker")?.unwrap_or_default(), n)),
                _ => status.ended += n,
            }
        }
        let zones = sqlx::query(concat!(
            "SELECT DISTINCT zone FROM run_entries e WHERE run_id = $1 AND state = 'PENDING' \
             AND zone IS NOT NULL AND NOT EXISTS (SELECT 1 FROM workers w \
             WHERE w.heartbeat_expires > ",
            now!(),
            " AND (CAST(w.zones AS jsonb) = '[]'::jsonb \
             OR CAST(w.zones AS jsonb) @> jsonb_build_array(e.zone))) ORDER BY zone"
        ))
        .bind(run.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        for row in &zones {
            status.unserved_zones.push(row.text("zone")?);
        }
        let served = sqlx::query(concat!(
            "SELECT DISTINCT jsonb_array_elements_text(CAST(zones AS jsonb)) AS zone \
             FROM workers WHERE heartbeat_expires > ",
            now!(),
            " ORDER BY zone"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        for row in &served {
            status.served_zones.push(row.text("zone")?);
        }
        tx.commit().await.map_err(|e| backend(doing, e))?;
        Ok(status)
    }
}
