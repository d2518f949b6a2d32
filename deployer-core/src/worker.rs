//! [`Worker`]: a process's share of distributed runs — it claims entries from a
//! [`WorkQueue`] and runs each through the [`Executor`], recording every task under its
//! claim's fencing token.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::command::{CommandRegistry, HostVars};
use crate::errors::BoxError;
use crate::events::{Event, EventKind, EventSink, RunOutcome, TaskId};
use crate::executor::{CancelHandle, Executor, Journal, RunOptions};
use crate::host::Connector;
use crate::plan::Plan;
use crate::recorder::{OutputTails, apply_task_event};
use crate::redact::Redactor;
use crate::runs::{RunId, StoreError, TaskRecord, TaskState};
use crate::work::{Claim, EntryOutcome, WorkQueue, WorkerInfo};

/// Claims entries of submitted runs from a [`WorkQueue`] and runs them (see
/// [`WorkQueue`]): `deploy worker` is one of these around an SSH connector.
///
/// * [`run`](Self::run) says the worker is alive ([`WorkQueue::heartbeat`], every third of
///   the lease), claims while it has free [`slots`](Self::slots), and when nothing is
///   claimable waits for the store's change feed ([`RunStore::changes`](crate::RunStore::changes):
///   LISTEN/NOTIFY on PostgreSQL) or its next heartbeat — it never polls in a loop.
/// * Each claimed entry runs through the real [`Executor`] (the run's stored tasklist, planned
///   with this worker's commands and cached per run; only that entry: `RunOptions::entry`),
///   so retries, timeouts, chains and output redaction are a single controller's. Every task
///   record is written through [`WorkQueue::record_task`] under the claim's fence; the entry
///   ends with [`WorkQueue::finish_entry`].
/// * The claim's lease is renewed every third of its ttl; when it is lost, or cannot be
///   renewed while less than a third of it is left, the entry's commands are stopped at once
///   ([`CancelHandle::stop_now`]) and nothing more is recorded for it, so no command outlives
///   its lease.
/// * A cancel request of a run ([`RunStore::cancel_request`](crate::RunStore::cancel_request))
///   cancels every running entry of it like a first cancel. One watcher per run reads it,
///   whatever the number of the run's entries running here: started with the worker's first
///   claim of the run, ended once the worker has held none for a second; it reads the request
///   when the change feed says something changed, at most every [`cancel_poll`](Self::cancel_poll)
///   (500 ms), and every other `cancel_poll` without a change.
/// * An entry claimed again (its worker died mid-chain, or the run was resumed:
///   [`WorkQueue::resume_work`]) does not run again the tasks the store records as done —
///   the resume rule, for an idempotent entry taken over as for a resumed one.
///
/// The worker prints nothing: it logs through `tracing` (component `Worker`, a line per entry
/// start and end naming worker, run and host) and hands the executor's events to its sinks.
///
/// ```no_run
/// use std::sync::Arc;
/// use deployer_core::fixture::{FakeConnector, Noop};
/// use deployer_core::{CommandRegistry, WorkQueue, Worker, WorkerInfo};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn demo(queue: Arc<dyn WorkQueue>) {
/// let mut commands = CommandRegistry::new();
/// commands.register::<Noop>("noop");
/// let info = WorkerInfo { id: "w1".into(), zones: vec!["eu".into()], commands: vec![] };
/// let worker = Worker::new(queue, commands, Arc::new(FakeConnector::new()), info).slots(8);
/// assert_eq!(worker.info().commands, ["noop"]);
/// let drain = CancellationToken::new();
/// worker.run(drain).await.unwrap(); // until `drain` is cancelled
/// # }
/// ```
#[derive(Clone)]
pub struct Worker {
    queue: Arc<dyn WorkQueue>,
    commands: CommandRegistry,
    connector: Arc<dyn Connector>,
    info: WorkerInfo,
    slots: usize,
    lease_ttl: Duration,
    cancel_poll: Duration,
    sinks: Vec<Arc<dyn EventSink>>,
    redactor: Redactor,
    host_vars: Arc<HostVars>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("info", &self.info)
            .field("slots", &self.slots)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker named and zoned by `info` that claims from `queue`, plans with `commands` and
    /// reaches hosts through `connector`. `info.commands` is set to the names `commands` has
    /// registered (what the store matches runs against).
    pub fn new(
        queue: Arc<dyn WorkQueue>,
        commands: CommandRegistry,
        connector: Arc<dyn Connector>,
        mut info: WorkerInfo,
    ) -> Worker {
        let mut names: Vec<String> = commands.names().map(str::to_string).collect();
        names.sort();
        info.commands = names;
        Worker {
            queue,
            commands,
            connector,
            info,
            slots: 64,
            lease_ttl: Duration::from_secs(15),
            cancel_poll: Duration::from_millis(500),
            sinks: Vec::new(),
            redactor: Redactor::new(),
            host_vars: Arc::new(HostVars::new()),
        }
    }

    /// How many entries it runs at once (default 64; at least 1).
    pub fn slots(mut self, n: usize) -> Worker {
        self.slots = n.max(1);
        self
    }

    /// How long a claim (and the worker's heartbeat) lives without renewal (default 15 s);
    /// renewed every third of that.
    pub fn lease_ttl(mut self, ttl: Duration) -> Worker {
        self.lease_ttl = ttl.max(Duration::from_millis(300));
        self
    }

    /// How often at most the watcher of a run with entries running here reads its cancel
    /// request (default 500 ms; without a change in the store, every other time).
    pub fn cancel_poll(mut self, every: Duration) -> Worker {
        self.cancel_poll = every.max(Duration::from_millis(10));
        self
    }

    /// Hands the executor's events of every entry to `sink` too.
    pub fn sink(mut self, sink: Arc<dyn EventSink>) -> Worker {
        self.sinks.push(sink);
        self
    }

    /// Keeps the secrets of the plans it builds in `redactor` (hand it the one your log
    /// formatter redacts with).
    pub fn redactor(mut self, redactor: Redactor) -> Worker {
        self.redactor = redactor;
        self
    }

    /// Each host's variables for its tasks (a worker's inventory; see
    /// [`Plan::with_host_vars`]); default none.
    pub fn host_vars(mut self, vars: HostVars) -> Worker {
        self.host_vars = Arc::new(vars);
        self
    }

    /// The worker as the store sees it.
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    /// Works until `drain` is cancelled: then it claims nothing more and returns once its
    /// running entries ended. Equivalent to [`run_with`](Self::run_with) with a stop token
    /// nobody cancels.
    pub async fn run(&self, drain: CancellationToken) -> Result<(), StoreError> {
        self.run_with(drain, CancellationToken::new()).await
    }

    /// [`run`](Self::run), and when `stop` is cancelled the commands of running entries are
    /// stopped at once (a second signal); their entries end `Cancelled`.
    ///
    /// Fails only when the first heartbeat does (the store cannot be reached or refuses the
    /// worker); later store errors are logged and retried.
    pub async fn run_with(
        &self,
        drain: CancellationToken,
        stop: CancellationToken,
    ) -> Result<(), StoreError> {
        self.queue.heartbeat(&self.info, self.lease_ttl).await?;
        tracing::info!(
            component = "Worker",
            "worker {} started (zones: {}; {} slots)",
            self.info.id,
            if self.info.zones.is_empty() {
                "all".to_string()
            } else {
                self.info.zones.join(", ")
            },
            self.slots
        );
        let stop_heartbeat = CancellationToken::new();
        let heartbeat = {
            let queue = self.queue.clone();
            let info = self.info.clone();
            let ttl = self.lease_ttl;
            let done = stop_heartbeat.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = done.cancelled() => break,
                        _ = tokio::time::sleep(ttl / 3) => {}
                    }
                    if let Err(e) = queue.heartbeat(&info, ttl).await {
                        tracing::warn!(
                            component = "Worker",
                            "worker {}: heartbeat failed: {e}",
                            info.id
                        );
                    }
                }
            })
        };
        let runs: Arc<Mutex<HashMap<RunId, RunSlot>>> = Arc::default();
        let mut feed = self.queue.changes();
        let mut running: JoinSet<()> = JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            if drain.is_cancelled() || stop.is_cancelled() {
                break;
            }
            if running.len() < self.slots {
                match WorkQueue::claim(&*self.queue, &self.info, self.lease_ttl).await {
                    Ok(Some(claim)) => {
                        let cancelled = self.hold(&runs, &claim.run);
                        let entry = EntryRun {
                            worker: self.clone(),
                            runs: runs.clone(),
                            cancelled,
                            stop: stop.clone(),
                        };
                        running.spawn(entry.run(claim));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        component = "Worker",
                        "worker {}: cannot claim: {e}",
                        self.info.id
                    ),
                }
            }
            tokio::select! {
                _ = drain.cancelled() => break,
                _ = stop.cancelled() => break,
                _ = feed.changed() => {}
                // The heartbeat's pace: a lapsed claim elsewhere makes no change to hear.
                _ = tokio::time::sleep(self.lease_ttl / 3) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        if !running.is_empty() {
            tracing::info!(
                component = "Worker",
                "worker {}: claiming nothing more; waiting for {} running entries",
                self.info.id,
                running.len()
            );
        }
        while running.join_next().await.is_some() {}
        stop_heartbeat.cancel();
        let _ = heartbeat.await;
        tracing::info!(component = "Worker", "worker {} stopped", self.info.id);
        Ok(())
    }

    /// Counts one more claim held of run `id`, starting its slot (and its cancel watcher)
    /// with the first; returns the token cancelled when the run's cancel is requested.
    fn hold(&self, runs: &Arc<Mutex<HashMap<RunId, RunSlot>>>, id: &RunId) -> CancellationToken {
        let mut map = runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = map.get_mut(id) {
            slot.claims += 1;
            return slot.cancelled.clone();
        }
        let cancelled = CancellationToken::new();
        map.insert(
            id.clone(),
            RunSlot {
                claims: 1,
                idle_since: None,
                cancelled: cancelled.clone(),
                plan: None,
            },
        );
        tokio::spawn(watch_run(
            self.queue.clone(),
            runs.clone(),
            id.clone(),
            self.cancel_poll,
        ));
        cancelled
    }

    /// The plan of run `id` for this worker (cached in the run's slot), or why there is none.
    async fn plan_of(
        &self,
        runs: &Mutex<HashMap<RunId, RunSlot>>,
        id: &RunId,
    ) -> Result<(Arc<Plan>, Option<u32>), String> {
        if let Some(plan) = runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .and_then(|slot| slot.plan.clone())
        {
            return plan;
        }
        let record = match self.queue.run(id).await {
            Ok(r) => r,
            // A store error is not cached: the next claim asks again.
            Err(e) => return Err(format!("cannot read run {id}: {e}")),
        };
        let missing: Vec<String> = record
            .tasklist
            .stages
            .iter()
            .flat_map(|s| s.tasks.iter())
            .flat_map(|e| e.tasks())
            .map(|t| t.command.clone())
            .filter(|c| !self.commands.contains(c))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let slot = if !missing.is_empty() {
            Err(format!(
                "worker {} has not registered the command{} {} of run {id}",
                self.info.id,
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            ))
        } else {
            Plan::build_with_redactor(&record.tasklist, &self.commands, self.redactor.clone())
                .map(|plan| {
                    let vars: HostVars = plan
                        .tasklist()
                        .hosts()
                        .into_iter()
                        .filter_map(|h| self.host_vars.get(h).map(|v| (h.to_string(), v.clone())))
                        .collect();
                    (Arc::new(plan.with_host_vars(vars)), Some(record.drives))
                })
                .map_err(|errors| {
                    format!(
                        "the stored tasklist of run {id} does not validate on worker {}: {errors}",
                        self.info.id
                    )
                })
        };
        if let Some(run) = runs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(id) {
            run.plan = Some(slot.clone());
        }
        slot
    }
}

type PlanSlot = Result<(Arc<Plan>, Option<u32>), String>;

/// What a worker keeps of a run while it holds claims of it (and a second after).
struct RunSlot {
    /// Claims of the run held now.
    claims: usize,
    /// Since when it holds none.
    idle_since: Option<Instant>,
    /// Cancelled when the run's cancel is requested (a first cancel of its entries).
    cancelled: CancellationToken,
    /// Its plan, once built (with the drive number the run was at).
    plan: Option<PlanSlot>,
}

/// How long a worker keeps a run's slot after it held its last claim of it: claims of a
/// serial stage follow each other, and need not rebuild the plan.
const IDLE_RUN: Duration = Duration::from_secs(1);

/// One claimed entry's run.
struct EntryRun {
    worker: Worker,
    runs: Arc<Mutex<HashMap<RunId, RunSlot>>>,
    cancelled: CancellationToken,
    stop: CancellationToken,
}

impl EntryRun {
    async fn run(self, claim: Claim) {
        let (runs, run) = (self.runs.clone(), claim.run.clone());
        self.run_claim(claim).await;
        let mut map = runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = map.get_mut(&run) {
            slot.claims = slot.claims.saturating_sub(1);
            if slot.claims == 0 {
                slot.idle_since = Some(Instant::now());
            }
        }
    }

    async fn run_claim(self, claim: Claim) {
        let w = &self.worker;
        let queue = w.queue.clone();
        let claim = Arc::new(claim);
        tracing::info!(
            component = "Worker",
            "worker {} runs stages[{}].tasks[{}] of run {} on {}",
            w.info.id,
            claim.stage,
            claim.entry,
            claim.run,
            claim.host
        );
        let mut claimed = Event::new(
            Duration::ZERO,
            EventKind::EntryClaimed {
                worker: w.info.id.clone(),
                host: claim.host.clone(),
                tasks: claim.tasks.clone(),
            },
        );
        claimed.run_id = Some(claim.run.clone());
        for sink in &w.sinks {
            sink.event(&claimed);
        }
        let (plan, drive) = match w.plan_of(&self.runs, &claim.run).await {
            Ok(p) => p,
            Err(message) => {
                tracing::error!(component = "Worker", "{message}");
                // Every task of the entry fails with the reason, and so does the entry.
                for id in &claim.tasks {
                    let record = match queue.tasks(&claim.run).await {
                        Ok(tasks) => tasks.into_iter().find(|t| t.id == *id),
                        Err(_) => None,
                    };
                    if let Some(mut record) = record {
                        record.state = TaskState::Failed;
                        record.error = Some(message.clone());
                        record.finished_ts = Some(SystemTime::now());
                        let _ = queue.record_task(&claim, &record).await;
                    }
                }
                finish(&*queue, &claim, EntryOutcome::Failed, &w.info.id).await;
                return;
            }
        };
        let ours: HashSet<TaskId> = claim.tasks.iter().copied().collect();
        // Claimed before (fence 1 is the first claim): the tasks done then are not run again.
        let mut skip: HashSet<TaskId> = HashSet::new();
        if claim.fence > 1 {
            match queue.host_tasks(&claim.run, &claim.host).await {
                Ok(records) => skip.extend(
                    records
                        .into_iter()
                        .filter(|t| ours.contains(&t.id) && t.state.is_done())
                        .map(|t| t.id),
                ),
                Err(e) => {
                    tracing::error!(
                        component = "Worker",
                        "worker {} cannot read which tasks of stages[{}].tasks[{}] of run {} on {} are done: {e}",
                        w.info.id,
                        claim.stage,
                        claim.entry,
                        claim.run,
                        claim.host
                    );
                    finish(&*queue, &claim, EntryOutcome::Failed, &w.info.id).await;
                    return;
                }
            }
        }
        let cancel = CancelHandle::new();
        let lost = Arc::new(AtomicBool::new(false));
        let tails = Arc::new(OutputTails::default());
        let journal = Arc::new(ClaimJournal {
            queue: queue.clone(),
            claim: claim.clone(),
            drive,
            tails: tails.clone(),
            records: Mutex::new(
                plan.tasks()
                    .filter(|t| ours.contains(&t.id))
                    .map(|t| (t.id, TaskRecord::pending(t)))
                    .collect(),
            ),
            lost: lost.clone(),
            cancel: cancel.clone(),
        });
        let done = CancellationToken::new();
        let guards = [
            tokio::spawn(renew(
                queue.clone(),
                claim.clone(),
                w.lease_ttl,
                done.clone(),
                lost.clone(),
                cancel.clone(),
            )),
            tokio::spawn(on_cancel(
                self.cancelled.clone(),
                done.clone(),
                cancel.clone(),
                self.stop.clone(),
            )),
        ];
        let mut executor = Executor::new(w.connector.clone())
            .journal(journal)
            .sink(tails);
        for sink in &w.sinks {
            executor = executor.sink(sink.clone());
        }
        let report = executor
            .run_with(
                &plan,
                RunOptions {
                    cancel,
                    skip,
                    // Only the claimed entry: its cost, whatever the size of the plan.
                    entry: Some((claim.stage, claim.entry)),
                    run_id: Some(claim.run.clone()),
                    ..RunOptions::default()
                },
            )
            .await;
        done.cancel();
        for g in guards {
            let _ = g.await;
        }
        if lost.load(Ordering::SeqCst) {
            tracing::error!(
                component = "Worker",
                "worker {} lost its claim on stages[{}].tasks[{}] of run {} on {}: its commands were stopped and it records nothing more",
                w.info.id,
                claim.stage,
                claim.entry,
                claim.run,
                claim.host
            );
            return;
        }
        let outcome = match report.outcome {
            RunOutcome::Succeeded | RunOutcome::Degraded => EntryOutcome::Done,
            RunOutcome::Failed => EntryOutcome::Failed,
            RunOutcome::Cancelled => EntryOutcome::Cancelled,
        };
        finish(&*queue, &claim, outcome, &w.info.id).await;
    }
}

/// Ends the claim's entry, logging the end (or why the store refused it).
async fn finish(queue: &dyn WorkQueue, claim: &Claim, outcome: EntryOutcome, worker: &str) {
    let what = format!(
        "stages[{}].tasks[{}] of run {} on {}",
        claim.stage, claim.entry, claim.run, claim.host
    );
    match queue.finish_entry(claim, outcome).await {
        Ok(()) => tracing::info!(
            component = "Worker",
            "worker {worker} ended {what}: {}",
            match outcome {
                EntryOutcome::Done => "done",
                EntryOutcome::Failed => "failed",
                EntryOutcome::Cancelled => "cancelled",
            }
        ),
        Err(e) => tracing::error!(
            component = "Worker",
            "worker {worker} cannot end {what}: {e}"
        ),
    }
}

/// Renews the claim every third of `ttl` until `done`; stops the entry's commands at once
/// when the claim is lost, or when it cannot be renewed while less than a third of the lease
/// is left.
async fn renew(
    queue: Arc<dyn WorkQueue>,
    claim: Arc<Claim>,
    ttl: Duration,
    done: CancellationToken,
    lost: Arc<AtomicBool>,
    cancel: CancelHandle,
) {
    // The lease as this worker last secured it, measured on its own clock.
    let remaining = claim
        .lease_expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(ttl);
    let mut expires = Instant::now() + remaining;
    loop {
        let next = (expires - ttl * 2 / 3).max(Instant::now());
        let next = next.min(Instant::now() + ttl / 3);
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        let asked = Instant::now();
        // A renewal that hangs must not outlive the lease either.
        let left = expires.saturating_duration_since(asked);
        let result = tokio::select! {
            _ = done.cancelled() => return,
            r = tokio::time::timeout(left.saturating_sub(ttl / 3).max(Duration::from_millis(1)), queue.renew_claim(&claim, ttl)) => r,
        };
        match result {
            Ok(Ok(())) => expires = asked + ttl,
            Ok(Err(StoreError::LeaseLost { .. })) => {
                lost.store(true, Ordering::SeqCst);
                cancel.stop_now();
                return;
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the store did not answer in time".to_string(),
                };
                if expires.saturating_duration_since(Instant::now()) < ttl / 3 {
                    tracing::error!(
                        component = "Worker",
                        "cannot renew the claim on stages[{}].tasks[{}] of run {} ({why}) and its lease is about to lapse: stopping its commands",
                        claim.stage,
                        claim.entry,
                        claim.run
                    );
                    lost.store(true, Ordering::SeqCst);
                    cancel.stop_now();
                    return;
                }
                tracing::warn!(
                    component = "Worker",
                    "cannot renew the claim on stages[{}].tasks[{}] of run {}: {why}",
                    claim.stage,
                    claim.entry,
                    claim.run
                );
            }
        }
    }
}

/// Cancels the entry (a first cancel) when `cancelled` (its run's cancel request, seen by
/// [`watch_run`]) is, and stops its commands when `stop` is cancelled; until `done`.
async fn on_cancel(
    cancelled: CancellationToken,
    done: CancellationToken,
    cancel: CancelHandle,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = done.cancelled() => return,
        _ = stop.cancelled() => {
            cancel.stop_now();
            return;
        }
        _ = cancelled.cancelled() => cancel.cancel(),
    }
    tokio::select! {
        _ = done.cancelled() => {}
        _ = stop.cancelled() => cancel.stop_now(),
    }
}

/// The one watcher of run `run` on this worker: reads its cancel request when the store's
/// change feed wakes it, at most every `every` (and every other `every` without a change),
/// and cancels the slot's token when the request is there (a new token once a resume cleared
/// it); ends, removing the slot, once the worker has held no claim of the run for
/// [`IDLE_RUN`].
async fn watch_run(
    queue: Arc<dyn WorkQueue>,
    runs: Arc<Mutex<HashMap<RunId, RunSlot>>>,
    run: RunId,
    every: Duration,
) {
    let mut feed = queue.changes();
    let mut last: Option<Instant> = None;
    loop {
        let token = {
            let mut map = runs.lock().unwrap_or_else(|e| e.into_inner());
            let Some(slot) = map.get(&run) else { return };
            if slot.claims == 0 && slot.idle_since.is_some_and(|t| t.elapsed() >= IDLE_RUN) {
                map.remove(&run);
                return;
            }
            slot.cancelled.clone()
        };
        if last.is_none_or(|t| t.elapsed() >= every) {
            last = Some(Instant::now());
            match queue.cancel_request(&run).await {
                Ok(Some(request)) if !token.is_cancelled() => {
                    tracing::warn!(
                        component = "Worker",
                        "run {run}: cancel requested by {}",
                        request.by
                    );
                    token.cancel();
                }
                Ok(Some(_)) => {}
                Ok(None) if token.is_cancelled() => {
                    // Resumed since: entries claimed from now on run.
                    if let Some(slot) = runs.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&run)
                    {
                        slot.cancelled = CancellationToken::new();
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    component = "Worker",
                    "cannot read the cancel request of run {run}: {e}"
                ),
            }
        }
        let next = last.unwrap_or_else(Instant::now) + every;
        tokio::select! {
            _ = feed.changed() => tokio::time::sleep_until(next.into()).await,
            _ = tokio::time::sleep(every * 2) => {}
        }
    }
}

/// Writes the task records of one claimed entry through [`WorkQueue::record_task`], fenced.
struct ClaimJournal {
    queue: Arc<dyn WorkQueue>,
    claim: Arc<Claim>,
    drive: Option<u32>,
    tails: Arc<OutputTails>,
    records: Mutex<HashMap<TaskId, TaskRecord>>,
    lost: Arc<AtomicBool>,
    cancel: CancelHandle,
}

#[async_trait]
impl Journal for ClaimJournal {
    async fn record(&self, event: &Event) -> Result<(), BoxError> {
        let task = match &event.kind {
            EventKind::TaskStarted { task, .. }
            | EventKind::TaskFinished { task, .. }
            | EventKind::TaskNotRun { task, .. }
            | EventKind::TaskDropped { task, .. } => task,
            _ => return Ok(()),
        };
        if self.lost.load(Ordering::SeqCst) {
            return Err(Box::new(StoreError::LeaseLost {
                id: self.claim.run.clone(),
                owner: self.claim.worker.clone(),
            }));
        }
        let record = {
            let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let Some(rec) = records.get_mut(&task.id) else {
                return Ok(()); // not this entry's
            };
            let before = rec.clone();
            apply_task_event(rec, event, self.drive, &self.tails);
            if *rec == before {
                return Ok(());
            }
            rec.clone()
        };
        match self.queue.record_task(&self.claim, &record).await {
            Ok(()) => Ok(()),
            Err(e @ StoreError::LeaseLost { .. }) => {
                self.lost.store(true, Ordering::SeqCst);
                self.cancel.stop_now();
                Err(Box::new(e))
            }
            Err(e) => Err(Box::new(e)),
        }
    }
}
