//! The work queue of distributed runs on PostgreSQL ([`WorkQueue`] for [`PostgresStore`]).
//!
//! Tables (migrations `0007_work.sql`, `0008_work_rules.sql`): `run_work` (one row per submitted run: its commands,
//! its stages' limits, whether it aborts, why it stopped), `run_entries` (one row per entry:
//! state `PENDING` / `CLAIMED` / `DONE` / `FAILED` / `CANCELLED` / `DROPPED` / `NOT_RUN` /
//! `SKIPPED`, the claiming worker, the fencing token and the lease), `workers` (heartbeats),
//! `run_points` (points hosts reached, for `finally` stages) and `run_failed_hosts` (what the
//! failure budgets and `min_hosts_up` count).
//!
//! Every decision about one run is taken under the lock of its `run_work` row
//! (`SELECT … FOR UPDATE`): claims, sweeps of lapsed claims and the ends of entries of one run
//! are serialized, so the counts a claim checks (`concurrency`, `concurrency_per_host`, the
//! stage barrier) are exact over any number of workers, and exactly one ending finishes the
//! run. Fenced writes about a claim (`record_task`, `renew_claim`, `finish_entry`) are
//! conditional on the entry being claimed by the same worker under the same token with a live
//! lease, in the statement that writes.

use std::time::Duration;

use std::collections::HashSet;

use deployer_core::{
    Claim, EntryOutcome, HostState, RunId, RunRules, RunState, StageLimits, StoreError, Submission,
    TaskId, TaskRecord, TaskState, WorkQueue, WorkStatus, WorkerInfo,
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

/// How long PostgreSQL lets a work transaction's session sit idle before it ends the session
/// and so releases its locks (see `begin_work`): well under a third of any useful lease.
const IDLE_IN_WORK_TX: &str = "2s";

/// Entry states as stored.
const PENDING: &str = "PENDING";
const CLAIMED: &str = "CLAIMED";
const DONE: &str = "DONE";
const FAILED: &str = "FAILED";
const CANCELLED: &str = "CANCELLED";
const DROPPED: &str = "DROPPED";
const NOT_RUN: &str = "NOT_RUN";

/// The single controller's reasons for tasks that did not run.
const FAILED_HERE: &str = "an earlier task failed";
const FAILED_BEFORE: &str = "an earlier stage failed";
const CANCELLED_REASON: &str = "the run was cancelled";

/// A run's `run_work` row, read under its lock.
pub(crate) struct Locked {
    stages: Vec<StageLimits>,
    rules: RunRules,
    aborting: bool,
    stopped: bool,
    opened: i64,
    outcome: Option<String>,
    cancel: bool,
    finished: bool,
}

impl Locked {
    fn stage(&self, run: &str, stage: i64) -> Result<&StageLimits, StoreError> {
        usize::try_from(stage)
            .ok()
            .and_then(|s| self.stages.get(s))
            .ok_or_else(|| {
                crate::errors::corrupt(format!("run {run}: column stages: no stage {stage}"))
            })
    }

    /// The indexes of its `finally` stages.
    fn finally_stages(&self) -> Vec<i64> {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.finally.is_some())
            .map(|(i, _)| i64::try_from(i).unwrap_or(i64::MAX))
            .collect()
    }
}

pub(crate) type Tx = sqlx::Transaction<'static, Postgres>;

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
    pub(crate) async fn begin_work(&self, doing: &str) -> Result<Tx, StoreError> {
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
                "UPDATE run_work SET aborting = 1, stopped = COALESCE(stopped, $2), \
                 outcome = COALESCE(outcome, 'FAILED') WHERE run_id = $1",
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

    /// Finishes `run` (locked in `tx`) if it is over: nothing is claimed and nothing is
    /// pending (an aborting run's ordinary entries ended `NOT_RUN`; its `finally` entries
    /// run), or it stopped (an interrupted entry that is not idempotent) and nothing is
    /// claimed. Its state is the single controller's: failed or cancelled, the first way it
    /// stopped being a success; degraded with dropped hosts; else succeeded. Returns whether
    /// it finished it.
    pub(crate) async fn finish_if_over(
        tx: &mut Tx,
        run: &str,
        doing: &str,
    ) -> Result<bool, StoreError> {
        // EXISTS, not COUNT: this runs at every end of an entry.
        let row = sqlx::query(
            "SELECT w.stopped, w.outcome, r.cancel_by, r.finish_ts, \
             EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = $1 AND e.state = 'PENDING') \
             AS pending, \
             EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = $1 AND e.state = 'CLAIMED') \
             AS claimed, \
             EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = $1 AND e.state = 'CANCELLED') \
             AS cancelled, \
             EXISTS (SELECT 1 FROM run_failed_hosts f WHERE f.run_id = $1 AND f.dropped <> 0) \
             AS dropped \
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
        let (pending, claimed) = (flag("pending")?, flag("claimed")?);
        if claimed || (pending && !stopped) {
            return Ok(false);
        }
        let state = match row.opt_text("outcome")?.as_deref() {
            _ if stopped => RunState::Failed,
            Some(FAILED) => RunState::Failed,
            Some(_) => RunState::Cancelled,
            None if cancel || flag("cancelled")? => RunState::Cancelled,
            None if flag("dropped")? => RunState::Degraded,
            None => RunState::Succeeded,
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
        // Every host's final state, as a single controller's recorder decides it: rolled back
        // if a rollback task switched it back; dropped within the budget; failed if an entry
        // of it failed, was interrupted or cancelled; done if one ran (or was skipped by its
        // finally stage); else skipped.
        sqlx::query(
            "UPDATE run_hosts h SET state = a.final, updated_ts = $2 FROM \
             (SELECT e.host, CASE \
              WHEN EXISTS (SELECT 1 FROM run_tasks t WHERE t.run_id = $1 AND t.host = e.host \
                AND t.state = 'ROLLED_BACK') THEN 'ROLLED_BACK' \
              WHEN EXISTS (SELECT 1 FROM run_failed_hosts f WHERE f.run_id = $1 \
                AND f.host = e.host AND f.dropped <> 0) THEN 'DROPPED' \
              WHEN bool_or(e.state IN ('FAILED', 'CANCELLED')) THEN 'FAILED' \
              WHEN bool_or(e.state IN ('DONE', 'SKIPPED')) THEN 'DONE' ELSE 'SKIPPED' END AS final \
              FROM run_entries e WHERE e.run_id = $1 GROUP BY e.host) a \
             WHERE h.run_id = $1 AND h.host = a.host AND h.state <> 'REMOVED'",
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
        let Some(mut locked) = Self::lock_run(&mut tx, run, doing).await? else {
            return Ok(None);
        };
        if locked.finished {
            return Ok(None);
        }
        if Self::sweep_lapsed(&mut tx, run, doing).await? {
            locked.stopped = true;
        }
        // A cancel, an abort, a finally stage to sort out, min_hosts_up, the end.
        if Self::settle(&mut tx, run, &mut locked, false, doing).await? || locked.stopped {
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
        let limits = locked.stage(run, stage)?.clone();
        let limits = &limits;
        if (locked.aborting && limits.finally.is_none())
            || usize::try_from(at.int("claimed")?).unwrap_or(usize::MAX) >= limits.concurrency
        {
            tx.commit().await.map_err(|e| backend(doing, e))?;
            return Ok(None);
        }
        // min_hosts_up: how many hosts may hold a place in the stage.
        let window = Self::window(&mut tx, run, limits, stage, doing).await?;
        let per_host = limits
            .concurrency_per_host
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let worker_id = text(&worker.id);
        // One statement: the first pending entry of the stage in the worker's zones whose
        // host is under its limit is claimed (fence + 1, lease from the server's clock), its
        // host marked running, and the run started on its first claim (as
        // RunStore::set_run_state(Running) does: started_ts once, one more drive).
        // With min_hosts_up, a host holds a place from its first claimed entry in the stage
        // until it has nothing claimed or pending there; only those, or any host while fewer
        // than the window hold one, may start.
        let taken = sqlx::query(concat!(
            "WITH held AS (SELECT DISTINCT c.host FROM run_entries c \
               WHERE $8::bigint IS NOT NULL AND c.run_id = $1 AND c.stage = $2 \
               AND (c.state = 'CLAIMED' OR (c.state IN ('DONE', 'FAILED', 'CANCELLED') \
               AND EXISTS (SELECT 1 FROM run_entries p WHERE p.run_id = $1 AND p.stage = $2 \
               AND p.host = c.host AND p.state = 'PENDING')))), \
             picked AS (SELECT entry FROM run_entries e \
               WHERE run_id = $1 AND stage = $2 AND state = 'PENDING' \
               AND (zone IS NULL OR cardinality($3::text[]) = 0 OR zone = ANY($3::text[])) \
               AND ($4::bigint IS NULL OR (SELECT COUNT(*) FROM run_entries c \
                    WHERE c.run_id = $1 AND c.stage = $2 AND c.host = e.host \
                    AND c.state = 'CLAIMED') < $4::bigint) \
               AND ($8::bigint IS NULL OR e.host IN (SELECT host FROM held) \
                    OR (SELECT COUNT(*) FROM held) < $8::bigint) \
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
               AND state NOT IN ('RUNNING', 'FAILED', 'DROPPED', 'REMOVED')), \
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
        .bind(window)
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

/// The rules of the single controller, held under a run's lock: the abort rule, the failure
/// budgets, `min_hosts_up` and the selection of `finally` stages' entries.
impl PostgresStore {
    /// Locks `run`'s `run_work` row and reads it; `None` when it was never submitted.
    pub(crate) async fn lock_run(
        tx: &mut Tx,
        run: &str,
        doing: &str,
    ) -> Result<Option<Locked>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT w.aborting, w.stopped, w.stages, w.rules, w.opened, w.outcome, r.cancel_by, \
             r.finish_ts FROM run_work w JOIN runs r ON r.id = w.run_id WHERE w.run_id = $1 \
             FOR UPDATE OF w",
        )
        .bind(run)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?
        else {
            return Ok(None);
        };
        let stages: Vec<StageLimits> = serde_json::from_str(&row.text("stages")?)
            .map_err(|e| crate::errors::corrupt(format!("run {run}: column stages: {e}")))?;
        let rules: RunRules = match row.opt_text("rules")? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| crate::errors::corrupt(format!("run {run}: column rules: {e}")))?,
            None => RunRules::default(),
        };
        Ok(Some(Locked {
            stages,
            rules,
            aborting: row.int("aborting")? != 0,
            stopped: row.opt_text("stopped")?.is_some(),
            opened: row.int("opened")?,
            outcome: row.opt_text("outcome")?,
            cancel: row.opt_text("cancel_by")?.is_some(),
            finished: row.opt_int("finish_ts")?.is_some(),
        }))
    }

    /// The lowest stage with unended (pending or claimed) entries.
    async fn lowest_stage(tx: &mut Tx, run: &str, doing: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(stage) AS stage FROM run_entries WHERE run_id = $1 \
             AND state IN ('PENDING', 'CLAIMED')",
        )
        .bind(run)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        row.opt_int("stage")
    }

    /// Ends pending entries of `run` matching `filter` (SQL over `e`, with `$4` the stage
    /// and `$5` the finally stages) as `state`, their pending tasks as `task_state`, with
    /// `reason` (`$2`; `$3`: `later_reason`, for stages after `stage`).
    #[allow(clippy::too_many_arguments)]
    async fn end_pending(
        tx: &mut Tx,
        run: &str,
        filter: &str,
        stage: i64,
        finally: &[i64],
        host: Option<&str>,
        (state, task_state): (&str, TaskState),
        (reason, later_reason): (&str, &str),
        doing: &str,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "WITH ended AS (UPDATE run_entries e SET state = $7, \
               reason = CASE WHEN e.stage > $4 THEN $3 ELSE $2 END, \
               ended_ts = {now} WHERE e.run_id = $1 AND e.state = 'PENDING' \
               AND ($6::text IS NULL OR e.host = $6) AND {filter} \
               RETURNING e.stage, e.entry, e.reason), \
             tasks AS (UPDATE run_tasks t SET state = $8, error = ended.reason \
               FROM ended WHERE t.run_id = $1 AND t.stage = ended.stage \
               AND t.entry = ended.entry AND t.state = 'PENDING') \
             SELECT COUNT(*) AS n FROM ended",
            now = now!(),
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(run)
            .bind(reason)
            .bind(later_reason)
            .bind(stage)
            .bind(finally)
            .bind(host)
            .bind(state)
            .bind(task_state.as_str())
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| backend(doing, e))?;
        let n = u64::try_from(row.int("n")?).unwrap_or(0);
        if n > 0 {
            sqlx::query("SELECT pg_notify('deployer_runs', $1)")
                .bind(run)
                .execute(&mut **tx)
                .await
                .map_err(|e| backend(doing, e))?;
        }
        Ok(n)
    }

    /// Makes `run` abort (nothing new of an ordinary stage is claimed) as `outcome` (`FAILED`
    /// or `CANCELLED`, unless it stopped being a success before), and ends its pending
    /// ordinary entries `NOT_RUN` with the single controller's reasons (`here`: of the lowest
    /// stage, the one under way).
    async fn abort(
        tx: &mut Tx,
        run: &str,
        locked: &mut Locked,
        outcome: &str,
        here: Option<&str>,
        doing: &str,
    ) -> Result<(), StoreError> {
        if !locked.aborting || locked.outcome.is_none() {
            sqlx::query(
                "UPDATE run_work SET aborting = 1, outcome = COALESCE(outcome, $2) \
                 WHERE run_id = $1",
            )
            .bind(run)
            .bind(outcome)
            .execute(&mut **tx)
            .await
            .map_err(|e| backend(doing, e))?;
            locked.aborting = true;
            locked.outcome.get_or_insert_with(|| outcome.to_string());
        }
        Self::mark_not_run(tx, run, locked, here, doing).await
    }

    /// Ends the pending ordinary entries of an aborting run `NOT_RUN`.
    async fn mark_not_run(
        tx: &mut Tx,
        run: &str,
        locked: &Locked,
        here: Option<&str>,
        doing: &str,
    ) -> Result<(), StoreError> {
        let cancelled = locked.outcome.as_deref() == Some(CANCELLED);
        let (default_here, later) = if cancelled {
            (CANCELLED_REASON, CANCELLED_REASON)
        } else {
            (FAILED_HERE, FAILED_BEFORE)
        };
        let stage = Self::lowest_stage(tx, run, doing).await?.unwrap_or(-1);
        Self::end_pending(
            tx,
            run,
            "e.stage <> ALL($5::bigint[])",
            stage,
            &locked.finally_stages(),
            None,
            (NOT_RUN, TaskState::NotRun),
            (here.unwrap_or(default_here), later),
            doing,
        )
        .await?;
        Ok(())
    }

    /// Sorts out the entries of each `finally` stage that became the lowest stage with
    /// unended entries (once per stage, `opened`): those its `Finally` leaves out end
    /// `SKIPPED`, with the reason, as the single controller's selection does.
    async fn open_finally(
        tx: &mut Tx,
        run: &str,
        locked: &mut Locked,
        doing: &str,
    ) -> Result<(), StoreError> {
        if locked.stages.iter().all(|s| s.finally.is_none()) {
            return Ok(());
        }
        loop {
            let Some(stage) = Self::lowest_stage(tx, run, doing).await? else {
                return Ok(());
            };
            if stage <= locked.opened {
                return Ok(());
            }
            let Some(finally) = locked.stage(run, stage)?.finally.clone() else {
                return Ok(());
            };
            sqlx::query("UPDATE run_work SET opened = $2 WHERE run_id = $1")
                .bind(run)
                .bind(stage)
                .execute(&mut **tx)
                .await
                .map_err(|e| backend(doing, e))?;
            locked.opened = stage;
            let dropped: HashSet<String> = sqlx::query(
                "SELECT DISTINCT host FROM run_failed_hosts WHERE run_id = $1 AND dropped <> 0",
            )
            .bind(run)
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| backend(doing, e))?
            .iter()
            .map(|r| r.text("host"))
            .collect::<Result<_, _>>()?;
            let reached: HashSet<(String, String)> =
                sqlx::query("SELECT host, point FROM run_points WHERE run_id = $1")
                    .bind(run)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(|e| backend(doing, e))?
                    .iter()
                    .map(|r| Ok((r.text("host")?, r.text("point")?)))
                    .collect::<Result<_, StoreError>>()?;
            // The run's outcome so far, as the single controller's report has it.
            let succeeded = locked.outcome.is_none() && !locked.cancel;
            let unfailed = finally.on_failure && succeeded && dropped.is_empty();
            let only_dropped = finally.on_failure && succeeded && !dropped.is_empty();
            let pending = sqlx::query(
                "SELECT entry, host FROM run_entries WHERE run_id = $1 AND stage = $2 \
                 AND state = 'PENDING' ORDER BY entry",
            )
            .bind(run)
            .bind(stage)
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| backend(doing, e))?;
            let (mut entries, mut reasons) = (Vec::new(), Vec::new());
            for row in &pending {
                let host = row.text("host")?;
                let reason = if unfailed {
                    Some("the run has not failed".to_string())
                } else if only_dropped && !dropped.contains(&host) {
                    Some("the run has not failed on this host".to_string())
                } else {
                    finally.excludes(|p| reached.contains(&(host.clone(), p.to_string())))
                };
                if let Some(reason) = reason {
                    entries.push(row.int("entry")?);
                    reasons.push(reason);
                }
            }
            if entries.is_empty() {
                continue;
            }
            sqlx::query(concat!(
                "WITH s AS (SELECT * FROM UNNEST($3::bigint[], $4::text[]) AS s (entry, reason)), \
                 ended AS (UPDATE run_entries e SET state = 'SKIPPED', reason = s.reason, \
                   ended_ts = ",
                now!(),
                " FROM s WHERE e.run_id = $1 AND e.stage = $2 AND e.entry = s.entry \
                   AND e.state = 'PENDING' RETURNING e.entry, e.reason), \
                 tasks AS (UPDATE run_tasks t SET state = 'SKIPPED', error = ended.reason, \
                   finished_ts = $5, duration_us = 0 \
                   FROM ended WHERE t.run_id = $1 AND t.stage = $2 AND t.entry = ended.entry \
                   AND t.state = 'PENDING') \
                 SELECT pg_notify('deployer_runs', $1)"
            ))
            .bind(run)
            .bind(stage)
            .bind(&entries)
            .bind(&reasons)
            .bind(now_micros())
            .execute(&mut **tx)
            .await
            .map_err(|e| backend(doing, e))?;
        }
    }

    /// The hosts of `stage` that are down for its `min_hosts_up`: failed or dropped.
    async fn down_in(tx: &mut Tx, run: &str, stage: i64, doing: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT f.host) AS n FROM run_failed_hosts f WHERE f.run_id = $1 \
             AND EXISTS (SELECT 1 FROM run_entries e WHERE e.run_id = $1 AND e.stage = $2 \
             AND e.host = f.host)",
        )
        .bind(run)
        .bind(stage)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        row.int("n")
    }

    /// How many hosts of `stage` may hold a place under its `min_hosts_up` (`None`: no
    /// limit).
    async fn window(
        tx: &mut Tx,
        run: &str,
        limits: &StageLimits,
        stage: i64,
        doing: &str,
    ) -> Result<Option<i64>, StoreError> {
        let Some(min) = limits.min_hosts_up else {
            return Ok(None);
        };
        let hosts = i64::try_from(limits.hosts).unwrap_or(i64::MAX);
        let min = i64::try_from(min).unwrap_or(i64::MAX);
        if limits.finally.is_some() {
            // Clean-up reaches every host: the window bounds it but never closes.
            return Ok(Some((hosts - min).max(1)));
        }
        let down = Self::down_in(tx, run, stage, doing).await?;
        Ok(Some((hosts - min - down).max(0)))
    }

    /// Fails the run when `min_hosts_up` holds the lowest (ordinary) stage: nothing of it is
    /// claimed, no host holds a place and none may take one.
    async fn check_held(
        tx: &mut Tx,
        run: &str,
        locked: &mut Locked,
        doing: &str,
    ) -> Result<bool, StoreError> {
        if locked.aborting
            || locked.cancel
            || locked.stages.iter().all(|s| s.min_hosts_up.is_none())
        {
            return Ok(false);
        }
        let Some(stage) = Self::lowest_stage(tx, run, doing).await? else {
            return Ok(false);
        };
        let limits = locked.stage(run, stage)?.clone();
        let Some(min) = limits.min_hosts_up.filter(|_| limits.finally.is_none()) else {
            return Ok(false);
        };
        if Self::window(tx, run, &limits, stage, doing).await? != Some(0) {
            return Ok(false);
        }
        let busy = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM run_entries c WHERE c.run_id = $1 AND c.stage = $2 \
             AND (c.state = 'CLAIMED' OR (c.state IN ('DONE', 'FAILED', 'CANCELLED') \
             AND EXISTS (SELECT 1 FROM run_entries p WHERE p.run_id = $1 AND p.stage = $2 \
             AND p.host = c.host AND p.state = 'PENDING')))) AS busy",
        )
        .bind(run)
        .bind(stage)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        let busy: bool = sqlx::Row::try_get(&busy, "busy")
            .map_err(|e| crate::errors::corrupt(format!("run {run}: busy: {e}")))?;
        if busy {
            return Ok(false);
        }
        let down = Self::down_in(tx, run, stage, doing).await?;
        let held = format!(
            "min_hosts_up {min}: {down} of the stage's {} hosts are down, so no other host may be taken down",
            limits.hosts
        );
        Self::abort(tx, run, locked, FAILED, Some(&held), doing).await?;
        Ok(true)
    }

    /// Brings `run` (locked) up to date: a cancel request aborts it; an aborting run's
    /// pending ordinary entries end `NOT_RUN`; `finally` stages that became the lowest are
    /// sorted out; `min_hosts_up` may fail it; and it finishes if it is over.
    pub(crate) async fn settle(
        tx: &mut Tx,
        run: &str,
        locked: &mut Locked,
        always_finish: bool,
        doing: &str,
    ) -> Result<bool, StoreError> {
        if locked.finished {
            return Ok(true);
        }
        if !locked.stopped {
            if locked.cancel && !locked.aborting {
                Self::abort(tx, run, locked, CANCELLED, None, doing).await?;
            } else if locked.aborting {
                Self::mark_not_run(tx, run, locked, None, doing).await?;
            }
            Self::open_finally(tx, run, locked, doing).await?;
            if Self::check_held(tx, run, locked, doing).await? {
                Self::open_finally(tx, run, locked, doing).await?;
            }
        }
        // A run going on normally is finished by the end of its last entry (finish_entry
        // always asks); a claim asks only when it aborts or stopped.
        if !(always_finish || locked.aborting || locked.stopped) {
            return Ok(false);
        }
        let finished = Self::finish_if_over(tx, run, doing).await?;
        locked.finished = finished;
        Ok(finished)
    }

    /// For a resume of `run` (locked): failures are counted afresh, and the points reached
    /// are those of the tasks still done.
    pub(crate) async fn reset_rules(tx: &mut Tx, run: &str, doing: &str) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM run_failed_hosts WHERE run_id = $1",
            "DELETE FROM run_points WHERE run_id = $1",
        ] {
            sqlx::query(sql)
                .bind(run)
                .execute(&mut **tx)
                .await
                .map_err(|e| backend(doing, e))?;
        }
        let rows = sqlx::query(
            "SELECT host, reaches FROM run_entries WHERE run_id = $1 AND reaches IS NOT NULL",
        )
        .bind(run)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        for row in &rows {
            Self::record_points(tx, run, &row.text("host")?, row.opt_text("reaches")?, doing)
                .await?;
        }
        Ok(())
    }

    /// Records the points the ended entry's tasks reached (those recorded succeeded or
    /// skipped by their command).
    async fn record_points(
        tx: &mut Tx,
        run: &str,
        host: &str,
        reaches: Option<String>,
        doing: &str,
    ) -> Result<(), StoreError> {
        let Some(reaches) = reaches else {
            return Ok(());
        };
        let reaches: Vec<(TaskId, String)> = serde_json::from_str(&reaches)
            .map_err(|e| crate::errors::corrupt(format!("run {run}: column reaches: {e}")))?;
        if reaches.is_empty() {
            return Ok(());
        }
        let (mut stages, mut entries, mut steps, mut points) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (task, point) in &reaches {
            let (stage, entry, step) = crate::sql::task_key(*task)?;
            stages.push(stage);
            entries.push(entry);
            steps.push(step);
            points.push(point.clone());
        }
        sqlx::query(
            "INSERT INTO run_points (run_id, host, point) \
             SELECT DISTINCT $1::text, $2::text, r.point \
             FROM UNNEST($3::bigint[], $4::bigint[], $5::bigint[], $6::text[]) \
               AS r (stage, entry, step, point) \
             JOIN run_tasks t ON t.run_id = $1 AND t.stage = r.stage AND t.entry = r.entry \
               AND t.step = r.step \
             WHERE t.state IN ('SUCCEEDED', 'SKIPPED') ON CONFLICT DO NOTHING",
        )
        .bind(run)
        .bind(host)
        .bind(&stages)
        .bind(&entries)
        .bind(&steps)
        .bind(&points)
        .execute(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        Ok(())
    }

    /// A host failed in an ordinary stage (its entry `claim` ended failed): counted against
    /// the budgets and `min_hosts_up` as the single controller's `host_failed` does; within
    /// them the host is dropped, past them the run aborts.
    async fn host_failed(
        tx: &mut Tx,
        run: &str,
        locked: &mut Locked,
        claim: &Claim,
        host: &str,
        doing: &str,
    ) -> Result<(), StoreError> {
        let stage = index(claim.stage, doing)?;
        if locked.aborting {
            // Nothing new starts already: a failure, as without a budget.
            Self::abort(tx, run, locked, FAILED, None, doing).await?;
            return Self::host_state_in(tx, run, host, HostState::Failed, doing).await;
        }
        let already = sqlx::query(
            "SELECT 1 AS one FROM run_failed_hosts WHERE run_id = $1 AND host = $2 \
             AND dropped <> 0",
        )
        .bind(run)
        .bind(host)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        if already.is_some() {
            // Another entry of a host already dropped.
            return Ok(());
        }
        let counts = sqlx::query(
            "WITH ins AS (INSERT INTO run_failed_hosts (run_id, stage, host) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING host) \
             SELECT (SELECT COUNT(DISTINCT host) FROM (SELECT host FROM run_failed_hosts \
               WHERE run_id = $1 UNION ALL SELECT host FROM ins) a) AS run_failed, \
             (SELECT COUNT(DISTINCT host) FROM (SELECT host FROM run_failed_hosts \
               WHERE run_id = $1 AND stage = $2 UNION ALL SELECT host FROM ins) b) AS stage_failed",
        )
        .bind(run)
        .bind(stage)
        .bind(host)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        let run_failed = counts.count_usize("run_failed")?;
        let stage_failed = counts.count_usize("stage_failed")?;
        let limits = locked.stage(run, stage)?.clone();
        let down = usize::try_from(Self::down_in(tx, run, stage, doing).await?).unwrap_or(0);
        let run_budget = locked.rules.budget;
        let run_over = run_budget.is_set() && run_budget.exceeded(run_failed, locked.rules.hosts);
        let budget = if limits.budget.is_set() {
            limits.budget
        } else {
            run_budget
        };
        let stage_over = budget.exceeded(stage_failed, limits.hosts);
        let below_min = limits
            .min_hosts_up
            .is_some_and(|min| limits.hosts.saturating_sub(down) < min);
        if run_over || stage_over || below_min {
            Self::abort(tx, run, locked, FAILED, None, doing).await?;
            return Self::host_state_in(tx, run, host, HostState::Failed, doing).await;
        }
        // Dropped: why, as the single controller words it (the first failed task).
        let first = sqlx::query(
            "SELECT step, command, state, error, exit_status FROM run_tasks \
             WHERE run_id = $1 AND stage = $2 AND entry = $3 \
             AND state IN ('FAILED', 'TIMED_OUT', 'CANCELLED') ORDER BY step LIMIT 1",
        )
        .bind(run)
        .bind(stage)
        .bind(index(claim.entry, doing)?)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        let reason = match &first {
            Some(row) => {
                let step = row.int("step")?;
                let id = TaskId {
                    stage: claim.stage,
                    entry: claim.entry,
                    step: usize::try_from(step).ok(),
                };
                let error = row.opt_text("error")?.unwrap_or_default();
                let outcome = if row.text("state")? == TaskState::Failed.as_str() {
                    let status = row
                        .opt_int("exit_status")?
                        .map(|c| format!(" (exit status {c})"))
                        .unwrap_or_default();
                    format!("failed: {error}{status}")
                } else {
                    error
                };
                format!(
                    "{id} {} {}",
                    row.text("command")?,
                    outcome.lines().next().unwrap_or_default()
                )
            }
            None => "an entry failed".to_string(),
        };
        sqlx::query(
            "UPDATE run_failed_hosts SET dropped = 1, reason = $4 \
             WHERE run_id = $1 AND stage = $2 AND host = $3",
        )
        .bind(run)
        .bind(stage)
        .bind(host)
        .bind(&reason)
        .execute(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        sqlx::query(
            "UPDATE run_hosts SET state = 'DROPPED', updated_ts = $3 \
             WHERE run_id = $1 AND host = $2 AND state <> 'REMOVED'",
        )
        .bind(run)
        .bind(host)
        .bind(now_micros())
        .execute(&mut **tx)
        .await
        .map_err(|e| backend(doing, e))?;
        // Its pending entries of this stage and of every later ordinary stage.
        Self::end_pending(
            tx,
            run,
            "e.stage >= $4 AND e.stage <> ALL($5::bigint[])",
            stage,
            &locked.finally_stages(),
            Some(host),
            (DROPPED, TaskState::Dropped),
            (&reason, &reason),
            doing,
        )
        .await?;
        Ok(())
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
        let _turn = self.run_lock_turn.lock().await;
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
            "INSERT INTO run_work (run_id, commands, stages, submitted_ts, rules) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (run_id) DO NOTHING RETURNING pg_notify('deployer_runs', run_id)",
        )
        .bind(run)
        .bind(json!(&submission.commands, doing)?)
        .bind(json!(&submission.stages, doing)?)
        .bind(now_micros())
        .bind(json!(&submission.rules, doing)?)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        if inserted.is_none() {
            return Err(invalid(doing, "it was submitted already"));
        }
        // 9 parameters a row: 4000 rows stay under PostgreSQL's 65535 parameters.
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
                    if e.reaches.is_empty() {
                        None
                    } else {
                        Some(json!(&e.reaches, doing)?)
                    },
                ));
            }
            let mut q = sqlx::QueryBuilder::<Postgres>::new(
                "INSERT INTO run_entries (run_id, stage, entry, host, zone, tasks, idempotent, state, reaches) ",
            );
            q.push_values(
                rows,
                |mut b, (stage, entry, host, zone, tasks, idempotent, reaches)| {
                    b.push_bind(run)
                        .push_bind(stage)
                        .push_bind(entry)
                        .push_bind(host.into_owned())
                        .push_bind(zone.map(|z| z.into_owned()))
                        .push_bind(tasks)
                        .push_bind(idempotent)
                        .push_bind(PENDING)
                        .push_bind(reaches);
                },
            );
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing, e))?;
        }
        // A run with no entries is over at once; a first stage that is a finally stage is
        // sorted out now.
        if let Some(mut locked) = Self::lock_run(&mut tx, run, doing).await? {
            Self::settle(&mut tx, run, &mut locked, true, doing).await?;
        }
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
               (w.stopped IS NULL \
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
        let Some(mut locked) = Self::lock_run(&mut tx, run, doing).await? else {
            return Err(lease_lost(claim));
        };
        let state = match outcome {
            EntryOutcome::Done => DONE,
            EntryOutcome::Failed => FAILED,
            EntryOutcome::Cancelled => CANCELLED,
        };
        // One statement: the entry ends if this claim is still its current one (fenced).
        let ended = sqlx::query(concat!(
            "UPDATE run_entries SET state = $6, lease_expires = NULL, ended_ts = ",
            now!(),
            " WHERE run_id = $1 AND stage = $2 AND entry = $3 AND worker = $4 AND fence = $5 \
             AND state = 'CLAIMED' AND lease_expires > ",
            now!(),
            " RETURNING host, reaches, pg_notify('deployer_runs', $1)"
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
        let host = ended.text("host")?;
        Self::record_points(&mut tx, run, &host, ended.opt_text("reaches")?, doing).await?;
        // A cancel seen before this end counts first (it is the one the worker saw).
        if locked.cancel && !locked.aborting {
            Self::abort(&mut tx, run, &mut locked, CANCELLED, None, doing).await?;
        }
        let stage = index(claim.stage, doing)?;
        let finally = locked.stage(run, stage)?.finally.is_some();
        match outcome {
            EntryOutcome::Done => {
                // Done once none of its entries is left.
                sqlx::query(
                    "UPDATE run_hosts SET state = $3, updated_ts = $4 \
                     WHERE run_id = $1 AND host = $2 \
                     AND state NOT IN ('FAILED', 'DROPPED', 'REMOVED') \
                     AND NOT EXISTS (SELECT 1 FROM run_entries x \
                     WHERE x.run_id = $1 AND x.host = $2 AND x.state IN ('PENDING', 'CLAIMED'))",
                )
                .bind(run)
                .bind(&host)
                .bind(HostState::Done.as_str())
                .bind(now_micros())
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing, e))?;
            }
            EntryOutcome::Cancelled => {
                Self::abort(&mut tx, run, &mut locked, CANCELLED, None, doing).await?;
            }
            EntryOutcome::Failed if finally => {
                // Not counted, stops none of the stage's entries nor later finally stages:
                // the run fails, and later ordinary stages do not run.
                Self::abort(&mut tx, run, &mut locked, FAILED, None, doing).await?;
                sqlx::query(
                    "UPDATE run_hosts SET state = 'FAILED', updated_ts = $3 \
                     WHERE run_id = $1 AND host = $2 AND state NOT IN ('DROPPED', 'REMOVED')",
                )
                .bind(run)
                .bind(&host)
                .bind(now_micros())
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing, e))?;
            }
            EntryOutcome::Failed => {
                Self::host_failed(&mut tx, run, &mut locked, claim, &host, doing).await?;
            }
        }
        Self::settle(&mut tx, run, &mut locked, true, doing).await?;
        tx.commit().await.map_err(|e| backend(doing, e))?;
        Ok(())
    }

    async fn resume_work(
        &self,
        run: &RunId,
        rerun: &[TaskId],
        force: bool,
    ) -> Result<(), StoreError> {
        // In work_resume.rs.
        self.resume_work_in(run, rerun, force).await
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
        let dropped = sqlx::query(
            "SELECT COUNT(DISTINCT host) AS n FROM run_failed_hosts \
             WHERE run_id = $1 AND dropped <> 0",
        )
        .bind(run.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        status.dropped = dropped.count_usize("n")?;
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
