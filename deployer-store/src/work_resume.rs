//! [`WorkQueue::resume_work`](deployer_core::WorkQueue::resume_work) on PostgreSQL: a
//! finished submitted run handed back to workers, in one transaction under its `run_work`
//! row's lock (the lock every claim and every end of an entry of the run takes).

use deployer_core::{RunId, RunState, StoreError, TaskId, TaskState};

use crate::PostgresStore;
use crate::errors::backend;
use crate::sql::{RowExt as _, now_micros};

impl PostgresStore {
    pub(crate) async fn resume_work_in(
        &self,
        run: &RunId,
        rerun: &[TaskId],
        force: bool,
    ) -> Result<(), StoreError> {
        let doing = format!("resume run {run} on workers");
        let doing = doing.as_str();
        let refuse = |why: String| StoreError::NotResumable {
            id: run.clone(),
            why,
        };
        let id = run.as_str();
        // One run-locking transaction at a time per store (see `PostgresStore::run_lock_turn`).
        let _turn = self.run_lock_turn.lock().await;
        let mut tx = self.begin_work(doing).await?;
        let Some(row) = sqlx::query(
            "SELECT w.stopped, r.state, r.finish_ts FROM run_work w JOIN runs r \
             ON r.id = w.run_id WHERE w.run_id = $1 FOR UPDATE OF w",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?
        else {
            let found = sqlx::query("SELECT 1 AS one FROM runs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| backend(doing, e))?;
            return Err(match found {
                Some(_) => refuse(
                    "it was not submitted to workers (it is resumed by a controller)".to_string(),
                ),
                None => StoreError::NotFound { id: id.to_string() },
            });
        };
        if row.opt_int("finish_ts")?.is_none() {
            return Err(refuse(
                "it is still running on its workers (wait for it to end, or cancel it)".to_string(),
            ));
        }
        if row.text("state")? == RunState::Succeeded.as_str() && rerun.is_empty() {
            return Err(refuse(
                "it already succeeded; nothing to resume".to_string(),
            ));
        }
        if let Some(stopped) = row.opt_text("stopped")?
            && !force
        {
            return Err(refuse(format!(
                "it stopped: {stopped} (check that entry's host, then resume with force to run it again)"
            )));
        }
        // The done tasks that run again, as three columns for unnest().
        let mut keys: (Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
        for t in rerun {
            let (stage, entry, step) = crate::sql::task_key(*t)?;
            keys.0.push(stage);
            keys.1.push(entry);
            keys.2.push(step);
        }
        // Every entry not done, and every entry of a task run again, is claimable again (its
        // fence stays: the next claim bumps it, so nothing of an earlier claim can write).
        let reset = sqlx::query(
            "UPDATE run_entries e SET state = 'PENDING', lease_expires = NULL, \
             claimed_ts = NULL, ended_ts = NULL, reason = NULL \
             WHERE e.run_id = $1 AND (e.state <> 'DONE' OR EXISTS (SELECT 1 FROM \
             unnest($2::bigint[], $3::bigint[]) AS k(stage, entry) \
             WHERE k.stage = e.stage AND k.entry = e.entry)) \
             RETURNING e.host",
        )
        .bind(id)
        .bind(&keys.0)
        .bind(&keys.1)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        let mut hosts: Vec<String> = Vec::with_capacity(reset.len());
        for r in &reset {
            hosts.push(r.text("host")?);
        }
        hosts.sort();
        hosts.dedup();
        // Their tasks that are not done, and the tasks run again, wait again; done ones stay
        // done (a worker skips them).
        let done: Vec<&str> = [
            TaskState::Succeeded,
            TaskState::Skipped,
            TaskState::RolledBack,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        sqlx::query(
            "UPDATE run_tasks t SET state = $5, error = NULL \
             WHERE t.run_id = $1 AND EXISTS (SELECT 1 FROM run_entries e \
               WHERE e.run_id = $1 AND e.stage = t.stage AND e.entry = t.entry \
               AND e.state = 'PENDING') \
             AND (t.state <> ALL($6::text[]) OR EXISTS (SELECT 1 FROM \
               unnest($2::bigint[], $3::bigint[], $4::bigint[]) AS k(stage, entry, step) \
               WHERE k.stage = t.stage AND k.entry = t.entry AND k.step = t.step))",
        )
        .bind(id)
        .bind(&keys.0)
        .bind(&keys.1)
        .bind(&keys.2)
        .bind(TaskState::Pending.as_str())
        .bind(&done)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        let now_us = now_micros();
        // Hosts with work again wait again; the others keep their final state.
        sqlx::query(
            "UPDATE run_hosts SET state = 'PENDING', updated_ts = $3 \
             WHERE run_id = $1 AND host = ANY($2::text[]) \
             AND state NOT IN ('REMOVED', 'DROPPED')",
        )
        .bind(id)
        .bind(&hosts)
        .bind(now_us)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        // The run is not finished any more: neither are its rows (their copy of its finish
        // time, which a finish sets on every row).
        for sql in [
            "UPDATE run_hosts SET finish_ts = NULL WHERE run_id = $1",
            "UPDATE run_tasks SET finish_ts = NULL WHERE run_id = $1",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(|e| backend(doing, e))?;
        }
        // Claimable again; finally stages are sorted out again, failures counted afresh, and
        // the points reached are those of the tasks still done (as a controller's resume).
        sqlx::query(
            "UPDATE run_work SET aborting = 0, stopped = NULL, opened = -1, outcome = NULL \
             WHERE run_id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        Self::reset_rules(&mut tx, id, doing).await?;
        // As a controller's resume leaves it: waiting, no finish, no owner, no cancel asked.
        sqlx::query(
            "UPDATE runs SET state = $2, finish_ts = NULL, owner = NULL, lease_expires = NULL, \
             cancel_by = NULL, cancel_ts = NULL WHERE id = $1 \
             RETURNING pg_notify('deployer_runs', id)",
        )
        .bind(id)
        .bind(RunState::Pending.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| backend(doing, e))?;
        // Nothing to do again (every entry done, nothing run again): it is over at once.
        if let Some(mut locked) = Self::lock_run(&mut tx, id, doing).await? {
            Self::settle(&mut tx, id, &mut locked, true, doing).await?;
        }
        tx.commit().await.map_err(|e| backend(doing, e))?;
        Ok(())
    }
}
