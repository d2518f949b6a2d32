//! Runs: creating, driving and resuming durable runs through a [`RunStore`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::command::CommandRegistry;
use crate::errors::BoxError;
use crate::events::{Event, EventKind, RunOutcome, TaskId, TaskOutcome};
use crate::executor::{Executor, Journal, RunOptions, RunReport};
use crate::plan::Plan;
use crate::runs::{
    HostState, NewRun, OUTPUT_TAIL_BYTES, RunId, RunState, RunStore, StoreError, TaskRecord,
    TaskState,
};
use crate::validation::ValidationErrors;

/// Failure to start, drive or resume a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunsError {
    /// The store failed or refused (e.g. another controller holds the run).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored tasklist no longer validates with the registered commands.
    #[error("the stored tasklist of run {id} does not validate: {errors}")]
    Invalid {
        /// The run.
        id: RunId,
        /// Every problem.
        errors: ValidationErrors,
    },
    /// Tasks were running when the run was interrupted and their commands do not declare
    /// themselves idempotent: running them again might repeat a side effect.
    #[error(
        "run {id} was interrupted while these tasks were running, and their commands are not idempotent: {}; check them and resume with force to run them again",
        tasks.join(", ")
    )]
    NeedsConfirmation {
        /// The run.
        id: RunId,
        /// The tasks (`stages[0].tasks[3] restart_service on fe001`).
        tasks: Vec<String>,
    },
    /// The run already succeeded; there is nothing to resume.
    #[error("run {id} already succeeded; nothing to resume")]
    AlreadySucceeded {
        /// The run.
        id: RunId,
    },
    /// The run's tasklist holds inline secrets, which the store keeps redacted, and no
    /// tasklist to take them from was given.
    #[error(
        "run {id} needs its secrets again: the run store keeps them redacted ({}); resume with the tasklist the run was started from, or write them {{\"secret_env\": \"VAR\"}} so a resume reads them from the environment",
        paths.join(", ")
    )]
    SecretsNeeded {
        /// The run.
        id: RunId,
        /// Where the redacted secrets are (`stages[0].tasks[1].lb_password`).
        paths: Vec<String>,
    },
    /// The tasklist given for the secrets is not the one the run was started from.
    #[error(
        "the tasklist given for the secrets of run {id} is not the one the run was started from: {path} differs"
    )]
    SecretsMismatch {
        /// The run.
        id: RunId,
        /// The first place where they differ.
        path: String,
    },
}

/// Options of [`Runs::resume`].
#[derive(Debug, Clone, Default)]
pub struct ResumeOptions {
    /// Run again tasks that were running when the run was interrupted even when their command
    /// is not idempotent (default: false, which stops and asks).
    pub force: bool,
    /// The tasklist the run was started from, for the inline secrets its stored copy has
    /// redacted (default: none; a run with redacted secrets then fails with
    /// [`RunsError::SecretsNeeded`]). Apart from the secrets it must equal the stored copy
    /// ([`RunsError::SecretsMismatch`] otherwise). Secrets written `{"secret_env": …}` need
    /// nothing: they are read from the environment again.
    pub secrets_from: Option<crate::Tasklist>,
    /// Each host's variables for its tasks (see [`Plan::with_host_vars`]): a store keeps none,
    /// so a resume gets them from the inventory it is resumed with (default: none).
    pub host_vars: crate::HostVars,
}

/// Starts, drives and resumes runs recorded in a [`RunStore`].
///
/// A controller holds a lease on the run it drives (renewed in the background), so two
/// controllers never drive the same run; a dead controller's lease expires and another can
/// [`resume`](Self::resume) the run. Tasks already done are not run again.
///
/// ```
/// use deployer_core::*;
/// use deployer_core::fixture::FakeConnector;
/// use std::sync::Arc;
///
/// # #[derive(Debug)] struct Noop;
/// # #[async_trait::async_trait] impl Command for Noop {
/// #   fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> { Ok(Noop) }
/// #   async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> { Ok(Outcome::done()) }
/// # }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut registry = CommandRegistry::new();
/// registry.register::<Noop>("noop");
/// let tasklist = Tasklist::new("demo").stage(Stage::new("s", 2).task(Task::new("noop").on("fe001")));
/// let plan = Plan::build(&tasklist, &registry).unwrap();
///
/// let runs = Runs::new(Arc::new(MemoryStore::new()));
/// let executor = Executor::new(Arc::new(FakeConnector::new()));
/// let (id, report) = runs
///     .start(&executor, &plan, "tasklist:demo.json", "alice", RunOptions::default())
///     .await
///     .unwrap();
/// assert!(report.succeeded());
/// let record = runs.store().run(&id).await.unwrap();
/// assert_eq!(record.state, RunState::Succeeded);
/// assert!(record.finish_ts.is_some());
/// # });
/// ```
#[derive(Clone)]
pub struct Runs {
    store: Arc<dyn RunStore>,
    owner: String,
    lease_ttl: Duration,
    cancel_poll: Duration,
    redactor: crate::Redactor,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs")
            .field("owner", &self.owner)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl Runs {
    /// Runs kept in `store`, driven by a controller with a generated name and a 30 s lease.
    pub fn new(store: Arc<dyn RunStore>) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "controller".to_string());
        let nonce = RunId::new();
        let owner = format!(
            "{host}:{}:{}",
            std::process::id(),
            &nonce.as_str()[nonce.as_str().len() - 6..]
        );
        Runs {
            store,
            owner,
            lease_ttl: Duration::from_secs(30),
            cancel_poll: Duration::from_secs(1),
            redactor: crate::Redactor::new(),
        }
    }

    /// Keeps the secrets of the plans it builds to resume runs in `redactor` (default: a
    /// redactor of its own): hand it the one your log formatter redacts with.
    pub fn redactor(mut self, redactor: crate::Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Names this controller in leases (default: `host:pid:random`).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// How long a lease lives without renewal (default: 30 s); it is renewed every third of
    /// that while the run goes on.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// How often a driving controller looks for a cancel request stored by another process
    /// ([`RunStore::request_cancel`]: a web viewer's Cancel button); default 1 s.
    pub fn cancel_poll(mut self, every: Duration) -> Self {
        self.cancel_poll = every.max(Duration::from_millis(10));
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// This controller's name.
    pub fn owner_name(&self) -> &str {
        &self.owner
    }

    /// Records a new run of `plan` (every host and task `PENDING`) without starting it.
    pub async fn create(
        &self,
        plan: &Plan,
        source: &str,
        started_by: &str,
    ) -> Result<RunId, RunsError> {
        let record = self
            .store
            .create_run(NewRun::from_plan(plan, source, started_by))
            .await?;
        Ok(record.id)
    }

    /// Creates a run of `plan` and drives it to its end.
    pub async fn start(
        &self,
        executor: &Executor,
        plan: &Plan,
        source: &str,
        started_by: &str,
        options: RunOptions,
    ) -> Result<(RunId, RunReport), RunsError> {
        let id = self.create(plan, source, started_by).await?;
        let report = self.drive(executor, &id, plan, options).await?;
        Ok((id, report))
    }

    /// Claims run `id` and runs `plan` (which must be the run's plan) under it, recording
    /// every task's progress; tasks in `options.skip` are not run. Finishes the run record
    /// unless the lease was lost to another controller.
    pub async fn drive(
        &self,
        executor: &Executor,
        id: &RunId,
        plan: &Plan,
        options: RunOptions,
    ) -> Result<RunReport, RunsError> {
        self.store.claim(id, &self.owner, self.lease_ttl).await?;
        let hosts = self.store.hosts(id).await?;
        for h in &hosts {
            if h.state == HostState::Removed {
                options.targets.remove(&h.host);
            }
        }
        let stored: HashMap<TaskId, TaskRecord> = self
            .store
            .tasks(id)
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        let mut progress: HashMap<String, HostProgress> = HashMap::new();
        for info in plan.tasks() {
            if options.skip.contains(&info.id) {
                continue;
            }
            progress.entry(info.host.clone()).or_default().remaining += 1;
        }
        let removed: HashSet<String> = hosts
            .iter()
            .filter(|h| h.state == HostState::Removed)
            .map(|h| h.host.clone())
            .collect();
        self.store.set_run_state(id, RunState::Running).await?;
        let drive = self.store.run(id).await?.drives;
        let tails = Arc::new(OutputTails::default());
        let recorder = Arc::new(Recorder {
            store: self.store.clone(),
            id: id.clone(),
            drive,
            tails: tails.clone(),
            state: Mutex::new(RecorderState {
                tasks: stored,
                hosts: progress,
                removed,
            }),
            targets: options.targets.clone(),
        });

        // Renew the lease in the background; losing it stops the run at once.
        let stop_renewing = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let store = self.store.clone();
            let id = id.clone();
            let owner = self.owner.clone();
            let ttl = self.lease_ttl;
            let stop = stop_renewing.clone();
            let lost = lost.clone();
            let cancel = options.cancel.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(ttl / 3) => {}
                    }
                    match store.renew(&id, &owner, ttl).await {
                        Ok(()) => {}
                        Err(StoreError::LeaseLost { .. }) => {
                            lost.store(true, Ordering::SeqCst);
                            tracing::error!(component = "Runs", "lease on run {id} lost; stopping");
                            cancel.stop_now();
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(
                                component = "Runs",
                                "cannot renew the lease on run {id}: {e}"
                            )
                        }
                    }
                }
            })
        };
        // A cancel request stored by another process (a web viewer) acts as a first cancel.
        let canceller = {
            let store = self.store.clone();
            let id = id.clone();
            let every = self.cancel_poll;
            let stop = stop_renewing.clone();
            let cancel = options.cancel.clone();
            tokio::spawn(async move {
                loop {
                    match store.cancel_request(&id).await {
                        Ok(Some(request)) => {
                            tracing::warn!(
                                component = "Runs",
                                "run {id}: cancel requested by {} at {}",
                                request.by,
                                humantime::format_rfc3339_seconds(request.ts)
                            );
                            cancel.cancel();
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(
                            component = "Runs",
                            "cannot read the cancel request of run {id}: {e}"
                        ),
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            })
        };
        let options = RunOptions {
            run_id: Some(id.clone()),
            ..options
        };
        let report = executor
            .clone()
            .journal(recorder)
            .sink(tails)
            .run_with(plan, options)
            .await;
        stop_renewing.cancel();
        let _ = renewer.await;
        let _ = canceller.await;
        if lost.load(Ordering::SeqCst) {
            return Err(StoreError::LeaseLost {
                id: id.clone(),
                owner: self.owner.clone(),
            }
            .into());
        }
        let state = match report.outcome {
            RunOutcome::Succeeded => RunState::Succeeded,
            RunOutcome::Failed => RunState::Failed,
            RunOutcome::Cancelled => RunState::Cancelled,
            RunOutcome::Degraded => RunState::Degraded,
        };
        self.store.finish_run(id, state).await?;
        Ok(report)
    }

    /// Continues a failed, cancelled or interrupted run (including one whose controller died
    /// mid-stage): tasks already done are not run again; tasks that were running when it was
    /// interrupted run again only if their command is idempotent, unless `resume.force`.
    pub async fn resume(
        &self,
        executor: &Executor,
        registry: &CommandRegistry,
        id: &RunId,
        resume: ResumeOptions,
        mut options: RunOptions,
    ) -> Result<RunReport, RunsError> {
        let record = self.store.run(id).await?;
        if record.state == RunState::Succeeded {
            return Err(RunsError::AlreadySucceeded { id: id.clone() });
        }
        let now = SystemTime::now();
        if record.is_claimed(now) && record.owner.as_deref() != Some(&self.owner) {
            return Err(StoreError::LeaseHeld {
                id: id.clone(),
                owner: record.owner.clone().unwrap_or_default(),
                remaining: record
                    .lease_expires
                    .and_then(|t| t.duration_since(now).ok())
                    .unwrap_or_default(),
            }
            .into());
        }
        let tasklist = with_secrets(id, &record.tasklist, resume.secrets_from.as_ref(), registry)?;
        let plan = Plan::build_with_redactor(&tasklist, registry, self.redactor.clone())
            .map_err(|errors| RunsError::Invalid {
                id: id.clone(),
                errors,
            })?
            .with_host_vars(resume.host_vars.clone());
        let tasks = self.store.tasks(id).await?;
        let done: HashSet<TaskId> = tasks
            .iter()
            .filter(|t| t.state.is_done())
            .map(|t| t.id)
            .collect();
        // Clean-up runs again, and what it undid is done again (see `Finally`).
        options.skip.extend(plan.skipped_on_resume(&done));
        let mut unsure = Vec::new();
        for t in &tasks {
            if t.state.is_done() {
                continue;
            } else if t.state == TaskState::Running
                && !resume.force
                && plan.is_idempotent(t.id) == Some(false)
            {
                unsure.push(format!("{} {} on {}", t.id, t.command, t.host));
            }
        }
        if !unsure.is_empty() {
            return Err(RunsError::NeedsConfirmation {
                id: id.clone(),
                tasks: unsure,
            });
        }
        self.drive(executor, id, &plan, options).await
    }

    /// Records that `host` joined the targeted set while the run goes on (`ADDED`).
    pub async fn add_host(&self, id: &RunId, host: &str) -> Result<(), RunsError> {
        self.store
            .set_host_state(id, host, HostState::Added)
            .await?;
        Ok(())
    }

    /// Records that `host` left the targeted set (`REMOVED`) and tells the executor, through
    /// `targets` (the run's [`RunOptions::targets`]), to skip its tasks that have not started.
    pub async fn remove_host(
        &self,
        id: &RunId,
        host: &str,
        targets: &crate::TargetSet,
    ) -> Result<(), RunsError> {
        targets.remove(host);
        self.store
            .set_host_state(id, host, HostState::Removed)
            .await?;
        Ok(())
    }

    /// Deletes finished runs older than `ttl`; returns how many.
    pub async fn purge(&self, ttl: Duration) -> Result<usize, RunsError> {
        let before = SystemTime::now()
            .checked_sub(ttl)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(self.store.purge_finished(before).await?)
    }
}

/// The stored tasklist with its redacted secrets taken from `original`.
fn with_secrets(
    id: &RunId,
    stored: &crate::Tasklist,
    original: Option<&crate::Tasklist>,
    registry: &CommandRegistry,
) -> Result<crate::Tasklist, RunsError> {
    let paths = stored.redacted_secrets();
    if paths.is_empty() {
        return Ok(stored.clone());
    }
    let Some(original) = original else {
        return Err(RunsError::SecretsNeeded {
            id: id.clone(),
            paths,
        });
    };
    let mut original = original.clone();
    registry.mark_tasklist_secrets(&mut original);
    original.name = stored.name.clone();
    match crate::secrets::first_difference(stored, &original.redacted()) {
        Some(path) => Err(RunsError::SecretsMismatch {
            id: id.clone(),
            path,
        }),
        None => Ok(original),
    }
}

#[derive(Default, Debug)]
struct HostProgress {
    remaining: usize,
    failed: bool,
    rolled_back: bool,
    dropped: bool,
    ran: bool,
    running: bool,
}

struct RecorderState {
    tasks: HashMap<TaskId, TaskRecord>,
    hosts: HashMap<String, HostProgress>,
    removed: HashSet<String>,
}

/// Writes task and host progress of one run to the store as the executor reports it.
struct Recorder {
    store: Arc<dyn RunStore>,
    id: RunId,
    /// This drive of the run ([`RunRecord::drives`](crate::RunRecord::drives)), stamped on
    /// every task it starts or ends.
    drive: u32,
    /// Each running task's output so far (its last [`OUTPUT_TAIL_BYTES`]).
    tails: Arc<OutputTails>,
    state: Mutex<RecorderState>,
    targets: crate::TargetSet,
}

/// The tails of running tasks' output, filled from output events (which are not journaled)
/// and taken into a task's record when it ends.
#[derive(Default)]
pub(crate) struct OutputTails {
    tails: Mutex<HashMap<TaskId, String>>,
}

impl OutputTails {
    pub(crate) fn take(&self, task: TaskId) -> Option<String> {
        let mut tail = self
            .tails
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task)?;
        trim_front(&mut tail, OUTPUT_TAIL_BYTES);
        (!tail.is_empty()).then_some(tail)
    }
}

/// Drops whole lines (or, for one longer line, characters) from the front of `text` until it
/// is at most `max` bytes.
fn trim_front(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    if !text[..cut].ends_with('\n')
        && let Some(nl) = text[cut..].find('\n')
        && cut + nl + 1 < text.len()
    {
        cut += nl + 1;
    }
    text.drain(..cut);
}

impl crate::EventSink for OutputTails {
    fn event(&self, event: &Event) {
        if let EventKind::TaskOutput { task, stream, line } = &event.kind {
            let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
            let tail = tails.entry(task.id).or_default();
            if *stream == crate::Stream::Stderr {
                tail.push_str("[stderr] ");
            }
            tail.push_str(line);
            tail.push('\n');
            // Trimmed now and then, not per line: at most a quarter more is kept meanwhile.
            if tail.len() > OUTPUT_TAIL_BYTES + OUTPUT_TAIL_BYTES / 4 {
                trim_front(tail, OUTPUT_TAIL_BYTES);
            }
        }
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecorderState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks one task of `host` as ended; returns the host's final state when it was its last.
    fn host_task_ended(
        &self,
        host: &str,
        ran: bool,
        outcome: Option<&TaskOutcome>,
        dropped: bool,
    ) -> Option<HostState> {
        let failed = outcome.is_some_and(|o| !o.is_success());
        let mut st = self.lock();
        let removed = st.removed.contains(host) || self.targets.is_removed(host);
        let p = st.hosts.entry(host.to_string()).or_default();
        p.remaining = p.remaining.saturating_sub(1);
        p.ran |= ran;
        p.failed |= failed;
        p.rolled_back |= outcome == Some(&TaskOutcome::RolledBack);
        p.dropped |= dropped;
        if p.remaining > 0 {
            return None;
        }
        if removed {
            return Some(HostState::Removed);
        }
        Some(if p.rolled_back {
            HostState::RolledBack
        } else if p.dropped {
            HostState::Dropped
        } else if p.failed {
            HostState::Failed
        } else if p.ran {
            HostState::Done
        } else {
            HostState::Skipped
        })
    }
}

#[async_trait]
impl Journal for Recorder {
    async fn record(&self, event: &Event) -> Result<(), BoxError> {
        match &event.kind {
            EventKind::TaskStarted { task, .. } => {
                let (record, host_starts) = {
                    let mut st = self.lock();
                    let rec = st
                        .tasks
                        .entry(task.id)
                        .or_insert_with(|| TaskRecord::pending(task));
                    apply_task_event(rec, event, Some(self.drive), &self.tails);
                    let rec = rec.clone();
                    let p = st.hosts.entry(task.host.clone()).or_default();
                    let first = !p.running;
                    p.running = true;
                    (rec, first)
                };
                self.store.update_task(&self.id, &record).await?;
                if host_starts && !self.targets.is_removed(&task.host) {
                    self.store
                        .set_host_state(&self.id, &task.host, HostState::Running)
                        .await?;
                }
            }
            EventKind::TaskFinished { task, outcome, .. } => {
                let record = {
                    let mut st = self.lock();
                    let rec = st
                        .tasks
                        .entry(task.id)
                        .or_insert_with(|| TaskRecord::pending(task));
                    apply_task_event(rec, event, Some(self.drive), &self.tails);
                    rec.clone()
                };
                self.store.update_task(&self.id, &record).await?;
                if let Some(state) = self.host_task_ended(&task.host, true, Some(outcome), false) {
                    self.store
                        .set_host_state(&self.id, &task.host, state)
                        .await?;
                }
            }
            EventKind::TaskNotRun { task, .. } | EventKind::TaskDropped { task, .. } => {
                // Never started: its stage stopped, or its host was dropped.
                let dropped = matches!(event.kind, EventKind::TaskDropped { .. });
                let record = {
                    let mut st = self.lock();
                    let rec = st
                        .tasks
                        .entry(task.id)
                        .or_insert_with(|| TaskRecord::pending(task));
                    apply_task_event(rec, event, Some(self.drive), &self.tails);
                    rec.clone()
                };
                self.store.update_task(&self.id, &record).await?;
                if let Some(state) = self.host_task_ended(&task.host, false, None, dropped) {
                    self.store
                        .set_host_state(&self.id, &task.host, state)
                        .await?;
                }
            }
            EventKind::HostDropped { host, .. } => {
                // A host whose failing task was its last has no dropped task to say so.
                let done = {
                    let mut st = self.lock();
                    let p = st.hosts.entry(host.clone()).or_default();
                    p.dropped = true;
                    p.remaining == 0
                };
                if done {
                    self.store
                        .set_host_state(&self.id, host, HostState::Dropped)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Updates a task's record `rec` with `event` (a task's start, end, not-run or drop; other
/// events leave it as it is), as [`Runs`] records it: state, attempts, times, `drive`, error,
/// and on its end the tail of its output from `tails`.
pub(crate) fn apply_task_event(
    rec: &mut TaskRecord,
    event: &Event,
    drive: Option<u32>,
    tails: &OutputTails,
) {
    match &event.kind {
        EventKind::TaskStarted { attempt, .. } => {
            rec.state = TaskState::Running;
            rec.drive = drive;
            rec.attempts += 1;
            if *attempt == 1 {
                rec.started_ts = Some(event.timestamp);
                rec.finished_ts = None;
            }
        }
        EventKind::TaskFinished {
            task,
            outcome,
            duration,
            ..
        } => {
            rec.finished_ts = Some(event.timestamp);
            rec.drive = drive;
            rec.duration = Some(*duration);
            rec.exit_status = None;
            rec.stderr_tail = None;
            rec.output_tail = tails.take(task.id);
            rec.error = None;
            match outcome {
                TaskOutcome::Succeeded => rec.state = TaskState::Succeeded,
                TaskOutcome::Skipped { reason } => {
                    rec.state = TaskState::Skipped;
                    rec.error = Some(reason.clone());
                }
                TaskOutcome::Failed {
                    message,
                    exit_status,
                    stderr_tail,
                } => {
                    rec.state = TaskState::Failed;
                    rec.error = Some(message.clone());
                    rec.exit_status = *exit_status;
                    rec.stderr_tail = (!stderr_tail.is_empty()).then(|| stderr_tail.clone());
                }
                TaskOutcome::TimedOut { after } => {
                    rec.state = TaskState::TimedOut;
                    rec.error = Some(format!("timed out after {after:?}"));
                }
                TaskOutcome::Cancelled => {
                    rec.state = TaskState::Cancelled;
                    rec.error = Some("cancelled".to_string());
                }
                TaskOutcome::RolledBack => rec.state = TaskState::RolledBack,
            }
        }
        EventKind::TaskNotRun { reason, .. } | EventKind::TaskDropped { reason, .. } => {
            rec.state = if matches!(event.kind, EventKind::TaskDropped { .. }) {
                TaskState::Dropped
            } else {
                TaskState::NotRun
            };
            rec.drive = drive;
            rec.error = Some(reason.clone());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tail_tests {
    use super::trim_front;

    #[test]
    fn trimming_keeps_whole_lines_from_the_end() {
        let mut t = "first line\nsecond\nthird\n".to_string();
        trim_front(&mut t, 14);
        assert_eq!(t, "second\nthird\n");
        let mut t = "first line\nsecond\nthird\n".to_string();
        trim_front(&mut t, 10);
        assert_eq!(
            t, "third\n",
            "a cut inside a line drops the rest of that line"
        );
        let mut t = "aaaa\nbb\n".to_string();
        trim_front(&mut t, 3);
        assert_eq!(t, "bb\n");
        let mut t = "one very long line without end".to_string();
        trim_front(&mut t, 8);
        assert_eq!(t, "hout end", "a single long line keeps its last bytes");
        let mut t = "ééé\n".to_string();
        trim_front(&mut t, 4);
        assert_eq!(t, "é\n", "never a cut inside a character");
        let mut t = "short\n".to_string();
        trim_front(&mut t, 100);
        assert_eq!(t, "short\n");
    }
}
