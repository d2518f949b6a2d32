//! The executor: stages one after another, tasks within a stage through the job queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::command::ExecContext;
use crate::errors::CommandError;
use crate::events::{Event, EventKind, EventSink, RunOutcome, TaskId, TaskInfo, TaskOutcome};
use crate::host::{Connector, OutputSink, tail_lines};
use crate::plan::{Plan, PlannedEntry, PlannedStage, PlannedTask};

/// Stops a run: the first [`cancel`](Self::cancel) acts like a task failure (nothing new
/// starts, running tasks and started chains finish), the second stops running tasks too.
///
/// Clones share state, so a Ctrl-C handler can hold one while the executor holds another.
///
/// ```
/// let cancel = deployer_core::CancelHandle::new();
/// assert!(!cancel.is_cancelled());
/// cancel.cancel();
/// assert!(cancel.is_cancelled() && !cancel.is_stopping());
/// cancel.cancel();
/// assert!(cancel.is_stopping());
/// ```
#[derive(Clone, Debug, Default)]
pub struct CancelHandle {
    graceful: CancellationToken,
    hard: CancellationToken,
}

impl CancelHandle {
    /// A handle that has not been cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Escalates: the first call asks the run to stop starting tasks, the next one stops
    /// running tasks.
    pub fn cancel(&self) {
        if self.graceful.is_cancelled() {
            self.hard.cancel();
        } else {
            self.graceful.cancel();
        }
    }

    /// Stops running tasks at once (implies the first level).
    pub fn stop_now(&self) {
        self.graceful.cancel();
        self.hard.cancel();
    }

    /// Whether the first level was reached.
    pub fn is_cancelled(&self) -> bool {
        self.graceful.is_cancelled()
    }

    /// Whether running tasks are being stopped.
    pub fn is_stopping(&self) -> bool {
        self.hard.is_cancelled()
    }
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Cancels the run (default: a fresh handle nobody else holds).
    pub cancel: CancelHandle,
    /// Tasks already done in an earlier attempt of this run; they are not run again (default:
    /// none). Used to resume a run.
    pub skip: HashSet<TaskId>,
    /// Hosts removed from the targeted set while the run goes on (default: none); their tasks
    /// that have not started are not run.
    pub targets: TargetSet,
}

/// The hosts removed from a run's targeted set, shared between the executor and whoever
/// removes them (a control plane reacting to a host leaving the fleet).
///
/// ```
/// let targets = deployer_core::TargetSet::new();
/// targets.remove("fe002");
/// assert!(targets.is_removed("fe002"));
/// assert!(!targets.is_removed("fe001"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct TargetSet {
    removed: Arc<std::sync::RwLock<HashSet<String>>>,
    any: Arc<std::sync::atomic::AtomicBool>,
}

impl TargetSet {
    /// No host removed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes `host`: its tasks that have not started will not run.
    pub fn remove(&self, host: &str) {
        self.removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string());
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether `host` was removed.
    pub fn is_removed(&self, host: &str) -> bool {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let removed = self.removed.read().unwrap_or_else(|e| e.into_inner());
        removed.contains(host)
    }
}

/// Records events durably while a run goes on (a run store behind it).
///
/// Unlike an [`EventSink`], the executor *awaits* a journal: a task starts only after its
/// start was recorded, so a resumed run knows which tasks may have run. Output lines are not
/// journaled.
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    /// Records one event. An error on a task's start fails that task without running it;
    /// errors on other events are logged and the run goes on.
    async fn record(&self, event: &Event) -> Result<(), crate::BoxError>;
}

/// A task that did not succeed, with what a person needs to act on it.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedTask {
    /// Which task, on which host, with which tag and command.
    pub task: TaskInfo,
    /// How it ended.
    pub outcome: TaskOutcome,
    /// How many attempts ran.
    pub attempts: u32,
}

impl FailedTask {
    /// The exit status of the failing process, when one ran.
    pub fn exit_status(&self) -> Option<i32> {
        match &self.outcome {
            TaskOutcome::Failed { exit_status, .. } => *exit_status,
            _ => None,
        }
    }

    /// The tail of its stderr (empty when none).
    pub fn stderr_tail(&self) -> &str {
        match &self.outcome {
            TaskOutcome::Failed { stderr_tail, .. } => stderr_tail,
            _ => "",
        }
    }
}

impl fmt::Display for FailedTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} on {}",
            self.task.id, self.task.command, self.task.host
        )?;
        if let Some(tag) = &self.task.tag {
            write!(f, " [{tag}]")?;
        }
        write!(f, ": {}", self.outcome)
    }
}

/// What one stage did.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReport {
    /// Its name.
    pub name: String,
    /// How it ended; `None` when it did not run.
    pub outcome: Option<RunOutcome>,
    /// Its wall time.
    pub duration: Duration,
}

/// Task counts of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskCounts {
    /// Succeeded.
    pub succeeded: usize,
    /// Skipped by their command.
    pub skipped: usize,
    /// Failed, timed out or cancelled.
    pub failed: usize,
    /// Never started (stage stopped, chain broken, later stage, or already done on resume).
    pub not_run: usize,
}

/// The result of a run: its outcome, every failed task, and what commands reported.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The tasklist's name.
    pub name: String,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// Wall time.
    pub duration: Duration,
    /// One report per stage of the tasklist.
    pub stages: Vec<StageReport>,
    /// Task counts.
    pub counts: TaskCounts,
    /// Every task that did not succeed, in the order they ended.
    pub failures: Vec<FailedTask>,
    /// Data returned by commands through [`Outcome::with_data`](crate::Outcome::with_data).
    pub data: Vec<(TaskId, Value)>,
}

impl RunReport {
    /// Whether every task succeeded.
    pub fn succeeded(&self) -> bool {
        self.outcome == RunOutcome::Succeeded
    }

    /// `Ok(self)` on success, else a [`RunError`] that lists the failures.
    pub fn into_result(self) -> Result<RunReport, RunError> {
        if self.succeeded() {
            Ok(self)
        } else {
            Err(RunError {
                report: Box::new(self),
            })
        }
    }
}

/// A run that did not succeed. `Display` names every failed task with host, tag, command,
/// exit status and the tail of stderr.
#[derive(Debug, Clone, thiserror::Error)]
pub struct RunError {
    /// The full report.
    pub report: Box<RunReport>,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        let stage = r
            .stages
            .iter()
            .find(|s| matches!(s.outcome, Some(RunOutcome::Failed | RunOutcome::Cancelled)))
            .map(|s| format!(" in stage \"{}\"", s.name))
            .unwrap_or_default();
        write!(f, "run \"{}\" {}{stage}", r.name, r.outcome)?;
        if !r.failures.is_empty() {
            write!(
                f,
                ": {} task{} did not succeed",
                r.failures.len(),
                if r.failures.len() == 1 { "" } else { "s" }
            )?;
        }
        for failure in &r.failures {
            write!(f, "\n  {failure}")?;
        }
        Ok(())
    }
}

/// Runs [`Plan`]s: stages one after another; within a stage, entries start in order while
/// fewer than `concurrency` run in the stage and fewer than `concurrency_per_host` run on the
/// entry's host. An entry held back by its host's limit never blocks an entry for another host.
///
/// When a task fails (error, timeout after its retries) nothing new starts, running tasks
/// finish, chains already started run to their end, the stage fails and later stages do not
/// run. The executor prints nothing: it reports through [`EventSink`]s.
///
/// ```
/// use deployer_core::fixture::{FakeConnector, EventLog};
/// use deployer_core::*;
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
/// let tasklist = Tasklist::new("demo").stage(
///     Stage::new("all", 4).per_host(1)
///         .tasks((0..8).map(|i| Task::new("noop").on(format!("host{}", i % 2)))),
/// );
/// let plan = Plan::build(&tasklist, &registry).unwrap();
/// let log = Arc::new(EventLog::new());
/// let report = Executor::new(Arc::new(FakeConnector::new()))
///     .sink(log.clone())
///     .run(&plan)
///     .await;
/// assert!(report.succeeded());
/// assert_eq!(report.counts.succeeded, 8);
/// assert_eq!(log.max_in_flight_per_host(), 1);
/// # });
/// ```
#[derive(Clone)]
pub struct Executor {
    connector: Arc<dyn Connector>,
    sinks: Vec<Arc<dyn EventSink>>,
    retry_delay: Duration,
    default_timeout: Option<Duration>,
    max_concurrency: Option<usize>,
    journal: Option<Arc<dyn Journal>>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("sinks", &self.sinks.len())
            .field("retry_delay", &self.retry_delay)
            .field("default_timeout", &self.default_timeout)
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

impl Executor {
    /// An executor that gets hosts from `connector`, with no event sinks.
    pub fn new(connector: Arc<dyn Connector>) -> Self {
        Executor {
            connector,
            sinks: Vec::new(),
            retry_delay: Duration::from_secs(1),
            default_timeout: None,
            max_concurrency: None,
            journal: None,
        }
    }

    /// Records events durably through `journal` (default: none), awaiting each write.
    pub fn journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Adds an event sink (default: none).
    pub fn sink(mut self, sink: impl EventSink + 'static) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// Pause between a failed attempt and its retry (default: 1 s).
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Timeout for tasks that set none (default: none).
    pub fn default_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Caps every stage's `concurrency` (default: no cap), e.g. from a `--parallel` flag.
    pub fn max_concurrency(mut self, limit: Option<usize>) -> Self {
        self.max_concurrency = limit.map(|l| l.max(1));
        self
    }

    /// Runs `plan` to its end with default options.
    pub async fn run(&self, plan: &Plan) -> RunReport {
        self.run_with(plan, RunOptions::default()).await
    }

    /// Runs `plan` with `options` (cancellation, tasks to skip).
    pub async fn run_with(&self, plan: &Plan, options: RunOptions) -> RunReport {
        let shared = Arc::new(Shared {
            connector: self.connector.clone(),
            emitter: Arc::new(Emitter {
                start: Instant::now(),
                sinks: self.sinks.clone(),
                journal: self.journal.clone(),
            }),
            retry_delay: self.retry_delay,
            default_timeout: self.default_timeout,
            hard: options.cancel.hard.clone(),
            skip: options.skip,
            targets: options.targets,
            quiet: Arc::new(|_, _: &str| {}),
        });
        let em = &shared.emitter;
        let name = plan.tasklist.name.clone();
        em.note(|| EventKind::RunStarted {
            name: name.clone(),
            stages: plan.stages.len(),
            tasks: plan.task_count(),
        })
        .await;
        let mut report = RunReport {
            name,
            outcome: RunOutcome::Succeeded,
            duration: Duration::ZERO,
            stages: Vec::with_capacity(plan.stages.len()),
            counts: TaskCounts::default(),
            failures: Vec::new(),
            data: Vec::new(),
        };
        for (si, stage) in plan.stages.iter().enumerate() {
            if report.outcome != RunOutcome::Succeeded || options.cancel.is_cancelled() {
                if report.outcome == RunOutcome::Succeeded {
                    report.outcome = RunOutcome::Cancelled;
                }
                em.note(|| EventKind::StageSkipped {
                    stage: si,
                    name: stage.name.clone(),
                })
                .await;
                report.counts.not_run += stage.task_count;
                report.stages.push(StageReport {
                    name: stage.name.clone(),
                    outcome: None,
                    duration: Duration::ZERO,
                });
                continue;
            }
            let started = Instant::now();
            em.note(|| EventKind::StageStarted {
                stage: si,
                name: stage.name.clone(),
                tasks: stage.task_count,
                concurrency: stage.concurrency,
                concurrency_per_host: stage.per_host,
            })
            .await;
            let limit = match self.max_concurrency {
                Some(cap) => stage.concurrency.min(cap),
                None => stage.concurrency,
            };
            let outcome = JobQueue::new(stage, limit, shared.clone(), &options.cancel, &mut report)
                .run()
                .await;
            let duration = started.elapsed();
            em.note(|| EventKind::StageFinished {
                stage: si,
                name: stage.name.clone(),
                outcome,
                duration,
            })
            .await;
            report.stages.push(StageReport {
                name: stage.name.clone(),
                outcome: Some(outcome),
                duration,
            });
            if outcome != RunOutcome::Succeeded {
                report.outcome = outcome;
            }
        }
        report.duration = em.start.elapsed();
        let (outcome, duration) = (report.outcome, report.duration);
        em.note(|| EventKind::RunFinished { outcome, duration })
            .await;
        report
    }
}

impl Shared {
    fn is_skipped(&self, id: TaskId) -> bool {
        !self.skip.is_empty() && self.skip.contains(&id)
    }
}

const REMOVED_REASON: &str = "its host was removed from the targeted set";

struct Shared {
    connector: Arc<dyn Connector>,
    emitter: Arc<Emitter>,
    retry_delay: Duration,
    default_timeout: Option<Duration>,
    hard: CancellationToken,
    skip: HashSet<TaskId>,
    targets: TargetSet,
    /// The output sink of tasks when nobody listens.
    quiet: OutputSink,
}

struct Emitter {
    start: Instant,
    sinks: Vec<Arc<dyn EventSink>>,
    journal: Option<Arc<dyn Journal>>,
}

impl Emitter {
    /// Sends an event to the sinks only (output lines).
    fn emit(&self, kind: impl FnOnce() -> EventKind) {
        if self.sinks.is_empty() {
            return;
        }
        let event = Event {
            timestamp: SystemTime::now(),
            elapsed: self.start.elapsed(),
            kind: kind(),
        };
        for sink in &self.sinks {
            sink.event(&event);
        }
    }

    /// Sends an event to the sinks and awaits the journal.
    async fn record(&self, kind: impl FnOnce() -> EventKind) -> Result<(), crate::BoxError> {
        if self.sinks.is_empty() && self.journal.is_none() {
            return Ok(());
        }
        let event = Event {
            timestamp: SystemTime::now(),
            elapsed: self.start.elapsed(),
            kind: kind(),
        };
        for sink in &self.sinks {
            sink.event(&event);
        }
        match &self.journal {
            Some(journal) => journal.record(&event).await,
            None => Ok(()),
        }
    }

    /// [`record`](Self::record), logging a journal failure instead of returning it.
    async fn note(&self, kind: impl FnOnce() -> EventKind) {
        if let Err(e) = self.record(kind).await {
            tracing::warn!(
                component = "Executor",
                "cannot record an event in the run journal: {}",
                error_chain(&*e)
            );
        }
    }
}

/// What one entry (a task or a chain) produced.
#[derive(Default)]
struct EntryResult {
    success: bool,
    counts: TaskCounts,
    failures: Vec<FailedTask>,
    data: Vec<(TaskId, Value)>,
}

/// Schedules the entries of one stage under the stage and per-host limits.
///
/// Pending entries wait in one queue per host; a heap holds every host that may start its next
/// entry (it has pending entries and is below its limit), keyed by that entry's position, so
/// the next entry to start is always the earliest one whose host has room: O(log hosts) per
/// start, and a full host never delays another.
struct JobQueue<'a> {
    stage: &'a PlannedStage,
    limit: usize,
    per_host: usize,
    shared: Arc<Shared>,
    cancel: &'a CancelHandle,
    report: &'a mut RunReport,
    pending: Vec<VecDeque<u32>>,
    running_on: Vec<u32>,
    ready: BinaryHeap<Reverse<(u32, u32)>>,
}

impl<'a> JobQueue<'a> {
    fn new(
        stage: &'a PlannedStage,
        limit: usize,
        shared: Arc<Shared>,
        cancel: &'a CancelHandle,
        report: &'a mut RunReport,
    ) -> Self {
        let mut pending = vec![VecDeque::new(); stage.hosts.len()];
        for (ei, entry) in stage.entries.iter().enumerate() {
            let all_done = entry.steps.iter().all(|s| shared.is_skipped(s.info.id));
            if all_done && !entry.steps.is_empty() {
                report.counts.not_run += entry.steps.len();
                continue;
            }
            pending[entry.host].push_back(ei as u32);
        }
        let ready = pending
            .iter()
            .enumerate()
            .filter_map(|(h, q)| q.front().map(|&e| Reverse((e, h as u32))))
            .collect();
        JobQueue {
            stage,
            limit: limit.max(1),
            per_host: stage.per_host.unwrap_or(usize::MAX).max(1),
            shared,
            cancel,
            report,
            running_on: vec![0; stage.hosts.len()],
            pending,
            ready,
        }
    }

    async fn run(mut self) -> RunOutcome {
        let mut set: JoinSet<(u32, EntryResult)> = JoinSet::new();
        let mut running = 0usize;
        let mut stop_starting = false;
        let mut failed = false;
        let mut cancelled = false;
        loop {
            // A cancel that arrived together with an entry's end (the select below takes the
            // end first) must still stop new starts.
            if !stop_starting && self.cancel.is_cancelled() {
                cancelled = true;
                stop_starting = true;
            }
            if !stop_starting {
                while running < self.limit {
                    let Some(Reverse((entry, host))) = self.ready.pop() else {
                        break;
                    };
                    let h = host as usize;
                    self.pending[h].pop_front();
                    if self.shared.targets.is_removed(&self.stage.hosts[h]) {
                        // The host left the targeted set: its entries are not run.
                        if let Some(&next) = self.pending[h].front() {
                            self.ready.push(Reverse((next, host)));
                        }
                        let entry = self.stage.entries[entry as usize].clone();
                        self.report.counts.not_run +=
                            not_run(&entry, &self.shared, REMOVED_REASON).await;
                        continue;
                    }
                    self.running_on[h] += 1;
                    running += 1;
                    if (self.running_on[h] as usize) < self.per_host
                        && let Some(&next) = self.pending[h].front()
                    {
                        self.ready.push(Reverse((next, host)));
                    }
                    let planned = self.stage.entries[entry as usize].clone();
                    let shared = self.shared.clone();
                    set.spawn(async move { (host, run_entry(planned, shared).await) });
                }
            }
            if running == 0 {
                break;
            }
            tokio::select! {
                biased;
                joined = set.join_next() => {
                    let Some(joined) = joined else { break };
                    running -= 1;
                    let (host, result) = match joined {
                        Ok(r) => r,
                        // Entry futures catch command panics; a JoinError here means the
                        // runtime is shutting down. Count it as a failure.
                        Err(_) => {
                            failed = true;
                            stop_starting = true;
                            continue;
                        }
                    };
                    let h = host as usize;
                    self.running_on[h] -= 1;
                    if self.running_on[h] as usize + 1 == self.per_host
                        && let Some(&next) = self.pending[h].front() {
                            self.ready.push(Reverse((next, host)));
                        }
                    // Tasks stopped by a second cancel end the stage as cancelled, not failed.
                    let only_cancelled = result
                        .failures
                        .iter()
                        .all(|f| f.outcome == TaskOutcome::Cancelled);
                    let c = &mut self.report.counts;
                    c.succeeded += result.counts.succeeded;
                    c.skipped += result.counts.skipped;
                    c.failed += result.counts.failed;
                    c.not_run += result.counts.not_run;
                    self.report.failures.extend(result.failures);
                    self.report.data.extend(result.data);
                    if !result.success {
                        if only_cancelled && self.cancel.is_stopping() {
                            cancelled = true;
                        } else {
                            failed = true;
                        }
                        stop_starting = true;
                    }
                }
                _ = self.cancel.graceful.cancelled(), if !stop_starting => {
                    cancelled = true;
                    stop_starting = true;
                }
            }
        }
        if self.cancel.is_cancelled() {
            cancelled = true;
        }
        // Everything still queued was never started.
        let reason = if cancelled && !failed {
            "the run was cancelled"
        } else {
            "an earlier task failed"
        };
        for queue in &self.pending {
            for &ei in queue {
                let entry = &self.stage.entries[ei as usize];
                self.report.counts.not_run += not_run(entry, &self.shared, reason).await;
            }
        }
        if failed {
            RunOutcome::Failed
        } else if cancelled {
            RunOutcome::Cancelled
        } else {
            RunOutcome::Succeeded
        }
    }
}

/// Reports every step of `entry` that is not already done as never run; returns how many.
async fn not_run(entry: &PlannedEntry, shared: &Shared, reason: &str) -> usize {
    let mut n = 0;
    for step in &entry.steps {
        if shared.is_skipped(step.info.id) {
            continue;
        }
        n += 1;
        shared
            .emitter
            .note(|| EventKind::TaskNotRun {
                task: TaskInfo::clone(&step.info),
                reason: reason.to_string(),
            })
            .await;
    }
    n
}

async fn run_entry(entry: Arc<PlannedEntry>, shared: Arc<Shared>) -> EntryResult {
    let mut result = EntryResult {
        success: true,
        ..Default::default()
    };
    for step in &entry.steps {
        if shared.is_skipped(step.info.id) {
            continue;
        }
        if shared.targets.is_removed(&step.info.host) {
            result.counts.not_run += 1;
            shared
                .emitter
                .note(|| EventKind::TaskNotRun {
                    task: TaskInfo::clone(&step.info),
                    reason: REMOVED_REASON.to_string(),
                })
                .await;
            continue;
        }
        if !result.success {
            result.counts.not_run += 1;
            shared
                .emitter
                .note(|| EventKind::TaskNotRun {
                    task: TaskInfo::clone(&step.info),
                    reason: "an earlier step of its chain failed".to_string(),
                })
                .await;
            continue;
        }
        let (outcome, attempts, data) = run_task(step, &shared).await;
        match &outcome {
            TaskOutcome::Succeeded => result.counts.succeeded += 1,
            TaskOutcome::Skipped { .. } => result.counts.skipped += 1,
            _ => {
                result.counts.failed += 1;
                result.success = false;
                result.failures.push(FailedTask {
                    task: TaskInfo::clone(&step.info),
                    outcome: outcome.clone(),
                    attempts,
                });
            }
        }
        if let Some(data) = data {
            result.data.push((step.info.id, data));
        }
    }
    result
}

enum Attempt {
    Done(crate::command::Outcome),
    Failed(TaskOutcome),
}

async fn run_task(step: &PlannedTask, shared: &Shared) -> (TaskOutcome, u32, Option<Value>) {
    let started = Instant::now();
    let max_attempts = step.task.retries.unwrap_or(0).saturating_add(1);
    let timeout = step.task.timeout.or(shared.default_timeout);
    let output: OutputSink = if shared.emitter.sinks.is_empty() {
        shared.quiet.clone()
    } else {
        let em = shared.emitter.clone();
        let info = step.info.clone();
        Arc::new(move |stream, line: &str| {
            em.emit(|| EventKind::TaskOutput {
                task: TaskInfo::clone(&info),
                stream,
                line: capped_line(&crate::scrub_secrets(line)),
            });
        })
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let recorded = shared
            .emitter
            .record(|| EventKind::TaskStarted {
                task: TaskInfo::clone(&step.info),
                attempt,
            })
            .await;
        if let Err(e) = recorded {
            // A task whose start could not be recorded must not run: a resumed run would not
            // know that it might have.
            let outcome = TaskOutcome::Failed {
                message: format!(
                    "not started: cannot record its start in the run journal: {}",
                    error_chain(&*e)
                ),
                exit_status: None,
                stderr_tail: String::new(),
            };
            let duration = started.elapsed();
            shared
                .emitter
                .note(|| EventKind::TaskFinished {
                    task: TaskInfo::clone(&step.info),
                    outcome: outcome.clone(),
                    duration,
                    attempts: attempt,
                })
                .await;
            return (outcome, attempt, None);
        }
        let work = async {
            let host = match shared.connector.host(&step.spec).await {
                Ok(h) => h,
                Err(e) => {
                    return Attempt::Failed(failure_from(&CommandError::Remote(e)));
                }
            };
            let ctx = ExecContext {
                host,
                info: step.info.clone(),
                task: step.task.clone(),
                attempt,
                output: output.clone(),
                cancel: shared.hard.clone(),
            };
            match AssertUnwindSafe(step.command.execute(&ctx))
                .catch_unwind()
                .await
            {
                Ok(Ok(outcome)) => Attempt::Done(outcome),
                Ok(Err(e)) => Attempt::Failed(failure_from(&e)),
                Err(panic) => Attempt::Failed(TaskOutcome::Failed {
                    message: format!("command panicked: {}", panic_message(&panic)),
                    exit_status: None,
                    stderr_tail: String::new(),
                }),
            }
        };
        let timed = async {
            match timeout {
                Some(limit) => match tokio::time::timeout(limit, work).await {
                    Ok(a) => a,
                    Err(_) => Attempt::Failed(TaskOutcome::TimedOut { after: limit }),
                },
                None => work.await,
            }
        };
        let result = tokio::select! {
            biased;
            _ = shared.hard.cancelled() => Attempt::Failed(TaskOutcome::Cancelled),
            a = timed => a,
        };
        // Nothing a command reports may show a registered secret (events, report, store).
        let result = match result {
            Attempt::Done(mut outcome) => {
                if let Some(reason) = &mut outcome.skipped {
                    *reason = crate::scrub_secrets(reason).into_owned();
                }
                if let Some(data) = &mut outcome.data {
                    crate::secrets::scrub_value(data);
                }
                Attempt::Done(outcome)
            }
            Attempt::Failed(outcome) => Attempt::Failed(crate::secrets::scrub_outcome(outcome)),
        };
        match result {
            Attempt::Done(outcome) => {
                let task_outcome = match outcome.skipped {
                    Some(reason) => TaskOutcome::Skipped { reason },
                    None => TaskOutcome::Succeeded,
                };
                let duration = started.elapsed();
                shared
                    .emitter
                    .note(|| EventKind::TaskFinished {
                        task: TaskInfo::clone(&step.info),
                        outcome: task_outcome.clone(),
                        duration,
                        attempts: attempt,
                    })
                    .await;
                return (task_outcome, attempt, outcome.data);
            }
            Attempt::Failed(outcome) => {
                let retry = attempt < max_attempts
                    && !matches!(outcome, TaskOutcome::Cancelled)
                    && !shared.hard.is_cancelled();
                if retry {
                    shared
                        .emitter
                        .note(|| EventKind::TaskRetrying {
                            task: TaskInfo::clone(&step.info),
                            attempt,
                            error: outcome.to_string(),
                        })
                        .await;
                    if !shared.retry_delay.is_zero() {
                        tokio::select! {
                            _ = shared.hard.cancelled() => {}
                            _ = tokio::time::sleep(shared.retry_delay) => {}
                        }
                    }
                    if !shared.hard.is_cancelled() {
                        continue;
                    }
                }
                let outcome = if shared.hard.is_cancelled() && retry {
                    TaskOutcome::Cancelled
                } else {
                    outcome
                };
                let duration = started.elapsed();
                shared
                    .emitter
                    .note(|| EventKind::TaskFinished {
                        task: TaskInfo::clone(&step.info),
                        outcome: outcome.clone(),
                        duration,
                        attempts: attempt,
                    })
                    .await;
                return (outcome, attempt, None);
            }
        }
    }
}

/// The longest output line a [`EventKind::TaskOutput`] event carries: a longer line (a command
/// writing megabytes without a newline) is cut there and marked, so one line cannot make every
/// sink copy and hold megabytes. What the command returns is not affected.
const MAX_OUTPUT_LINE: usize = 64 * 1024;

fn capped_line(line: &str) -> String {
    if line.len() <= MAX_OUTPUT_LINE {
        return line.to_string();
    }
    let mut cut = MAX_OUTPUT_LINE;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… [{} more bytes cut]", &line[..cut], line.len() - cut)
}

/// The error's message followed by its sources: `cannot connect to fe001: connection refused`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut s = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let msg = e.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        source = e.source();
    }
    s
}

fn failure_from(e: &CommandError) -> TaskOutcome {
    TaskOutcome::Failed {
        message: error_chain(e),
        exit_status: e.exit_status(),
        stderr_tail: tail_lines(e.stderr(), 20),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
