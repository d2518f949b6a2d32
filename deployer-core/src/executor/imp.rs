//! The executor itself: runs stages one after another and emits events.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{
    DroppedHost, JobQueue, Journal, RunOptions, RunReport, StageReport, TargetSet, done_earlier,
    dropped, error_chain, not_run, skipped,
};
use crate::events::{Event, EventKind, EventSink, RunOutcome, TaskCounts, TaskId};
use crate::host::{Connector, OutputSink};
use crate::plan::Plan;

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
    journals: Vec<Arc<dyn Journal>>,
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
            journals: Vec::new(),
        }
    }

    /// Records events durably through `journal` too (default: none), awaiting each write.
    /// Journals add up: each is awaited in the order given ([`Runs`](crate::Runs) adds its own
    /// after yours), and a task starts only after every journal recorded its start.
    pub fn journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journals.push(journal);
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
                journals: self.journals.clone(),
                stats: Default::default(),
                run_id: options.run_id.clone(),
            }),
            retry_delay: self.retry_delay,
            default_timeout: self.default_timeout,
            hard: options.cancel.hard.clone(),
            graceful: options.cancel.graceful.clone(),
            only: options.entry,
            skip: options.skip,
            targets: options.targets,
            quiet: Arc::new(|_, _: &str| {}),
            redactor: plan.redactor.clone(),
            reached: Default::default(),
            host_vars: plan.host_vars.clone(),
            run_budget: plan.tasklist.budget,
            run_hosts: plan
                .stages
                .iter()
                .filter(|s| s.finally.is_none())
                .flat_map(|s| &s.hosts)
                .collect::<HashSet<_>>()
                .len(),
            fleet: Default::default(),
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
            dropped: Vec::new(),
        };
        // Points reached by tasks an earlier attempt did (a single entry has no finally stage
        // to look at them).
        for stage in plan.stages.iter().filter(|_| options.entry.is_none()) {
            for step in stage.entries.iter().flat_map(|e| &e.steps) {
                if shared.is_skipped(step.info.id) {
                    shared.reach(&step.info.host, step.task.reaches.as_deref());
                }
            }
        }
        for (si, stage) in plan.stages.iter().enumerate() {
            if options.entry.is_some_and(|(only, _)| only != si) {
                report.stages.push(StageReport {
                    name: stage.name.clone(),
                    outcome: None,
                    duration: Duration::ZERO,
                });
                continue;
            }
            // One entry of a distributed run ends as its stage does: a first cancel stops an
            // ordinary one there, and leaves a finally one running.
            if report.outcome.completed()
                && options.cancel.is_cancelled()
                && options.entry.is_none()
            {
                report.outcome = RunOutcome::Cancelled;
            }
            let stopped = !report.outcome.completed();
            // A finally stage runs after a failure or a first cancel; a second cancel stops it.
            let finally = stage.finally.is_some();
            if stopped && (!finally || options.cancel.is_stopping()) {
                let tasks = stage
                    .entries
                    .iter()
                    .flat_map(|e| &e.steps)
                    .filter(|t| !shared.is_skipped(t.info.id))
                    .count();
                em.note(|| EventKind::StageSkipped {
                    stage: si,
                    name: stage.name.clone(),
                    tasks,
                })
                .await;
                let reason = if finally {
                    // Only a second cancel skips clean-up.
                    "the run was stopped (a second cancel)"
                } else if report.outcome == RunOutcome::Failed {
                    "an earlier stage failed"
                } else {
                    "the run was cancelled"
                };
                for entry in &stage.entries {
                    done_earlier(entry, &shared).await;
                    match shared.dropped_reason(&stage.hosts[entry.host]) {
                        Some(why) if !finally => dropped(entry, &shared, &why).await,
                        _ => not_run(entry, &shared, reason).await,
                    }
                }
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
            for entry in stage.entries.iter().filter(|_| options.entry.is_none()) {
                done_earlier(entry, &shared).await;
            }
            // A finally stage runs an entry only for the hosts its points select (an
            // `on_failure` one, only after a failure or a cancel); for the others it has
            // nothing to do. One entry of a distributed run (`RunOptions::entry`) runs as
            // claimed: the store selected it, knowing the run's points and failures.
            let mut excluded = HashSet::new();
            if let Some(f) = stage.finally.as_ref().filter(|_| options.entry.is_none()) {
                let unfailed = f.on_failure && report.outcome == RunOutcome::Succeeded;
                // Within a failure budget, the run failed only on the dropped hosts.
                let only_dropped = f.on_failure && report.outcome == RunOutcome::Degraded;
                for (ei, entry) in stage.entries.iter().enumerate() {
                    let host = &stage.hosts[entry.host];
                    let reason = if unfailed {
                        Some("the run has not failed".to_string())
                    } else if only_dropped && shared.dropped_reason(host).is_none() {
                        Some("the run has not failed on this host".to_string())
                    } else {
                        f.excludes(|p| shared.has_reached(host, p))
                    };
                    if let Some(reason) = reason {
                        excluded.insert(ei);
                        skipped(entry, &shared, &reason).await;
                    }
                }
            } else if shared.any_dropped() {
                // A dropped host does no more ordinary work.
                for (ei, entry) in stage.entries.iter().enumerate() {
                    if let Some(reason) = shared.dropped_reason(&stage.hosts[entry.host]) {
                        excluded.insert(ei);
                        dropped(entry, &shared, &reason).await;
                    }
                }
            }
            let limit = match self.max_concurrency {
                Some(cap) => stage.concurrency.min(cap),
                None => stage.concurrency,
            };
            let outcome = JobQueue::new(
                si,
                stage,
                limit,
                shared.clone(),
                &options.cancel,
                &mut report,
            )
            .excluding(excluded)
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
            // A failed finally stage fails a run that had succeeded; a cancelled or failed
            // run stays as it was; hosts dropped within the budget make it degraded.
            if outcome != RunOutcome::Succeeded && report.outcome.completed() {
                report.outcome = outcome;
            }
        }
        report.dropped = shared
            .fleet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped
            .iter()
            .map(|(host, (stage, reason))| DroppedHost {
                host: host.clone(),
                stage: stage.clone(),
                reason: reason.clone(),
            })
            .collect();
        report.duration = em.start.elapsed();
        let (outcome, duration) = (report.outcome, report.duration);
        em.note(|| EventKind::RunFinished { outcome, duration })
            .await;
        // The counts the events carried: one source for the report and every reporter.
        report.counts = *em.stats.lock().unwrap_or_else(|e| e.into_inner());
        report
    }
}

impl Shared {
    pub(crate) fn is_skipped(&self, id: TaskId) -> bool {
        !self.skip.is_empty() && self.skip.contains(&id)
    }

    /// Records that `host` reached `point` (a task with `reaches` succeeded there).
    pub(crate) fn reach(&self, host: &str, point: Option<&str>) {
        if let Some(point) = point {
            self.reached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((host.to_string(), point.to_string()));
        }
    }

    /// Why `host` was dropped, if it was.
    pub(crate) fn dropped_reason(&self, host: &str) -> Option<String> {
        let fleet = self.fleet.lock().unwrap_or_else(|e| e.into_inner());
        fleet.dropped.get(host).map(|(_, reason)| reason.clone())
    }

    /// Whether any host was dropped.
    pub(crate) fn any_dropped(&self) -> bool {
        !self
            .fleet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped
            .is_empty()
    }

    /// Counts a failure of `host` (in an ordinary stage) over the run: how many hosts have
    /// failed so far, and whether that goes past the run's budget (never, when it has none:
    /// then each stage's budget decides alone).
    pub(crate) fn count_failed_host(&self, host: &str) -> (usize, bool) {
        let mut fleet = self.fleet.lock().unwrap_or_else(|e| e.into_inner());
        fleet.failed.insert(host.to_string());
        let n = fleet.failed.len();
        (
            n,
            self.run_budget.is_set() && self.run_budget.exceeded(n, self.run_hosts),
        )
    }

    /// Drops `host` from the rest of the run.
    pub(crate) fn drop_host(&self, host: &str, stage: &str, reason: &str) {
        self.fleet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped
            .insert(host.to_string(), (stage.to_string(), reason.to_string()));
    }

    /// Whether `host` reached `point` in this run.
    pub(crate) fn has_reached(&self, host: &str, point: &str) -> bool {
        self.reached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(host.to_string(), point.to_string()))
    }
}

pub(crate) const REMOVED_REASON: &str = "its host was removed from the targeted set";

pub(crate) struct Shared {
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) emitter: Arc<Emitter>,
    pub(crate) retry_delay: Duration,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) hard: CancellationToken,
    /// The first level of cancellation (nothing new starts).
    pub(crate) graceful: CancellationToken,
    /// The one entry to run, `(stage, entry)` ([`RunOptions::entry`]).
    pub(crate) only: Option<(usize, usize)>,
    pub(crate) skip: HashSet<TaskId>,
    pub(crate) targets: TargetSet,
    /// The output sink of tasks when nobody listens.
    pub(crate) quiet: OutputSink,
    /// The plan's secrets: nothing emitted or reported shows them.
    pub(crate) redactor: crate::Redactor,
    /// (host, point) pairs reached so far (see `Finally`).
    pub(crate) reached: std::sync::Mutex<HashSet<(String, String)>>,
    /// Each host's variables, for its tasks' contexts.
    pub(crate) host_vars: Option<Arc<crate::HostVars>>,
    /// The run's failure budget and the number of hosts it counts over.
    pub(crate) run_budget: crate::FailureBudget,
    pub(crate) run_hosts: usize,
    /// Hosts failed and dropped so far.
    pub(crate) fleet: std::sync::Mutex<FleetState>,
}

/// The hosts of a run that failed, and those dropped within the failure budget.
#[derive(Default)]
pub(crate) struct FleetState {
    /// Hosts with a failure in an ordinary stage.
    pub(crate) failed: HashSet<String>,
    /// Dropped hosts, in the order they were dropped: (stage name, reason).
    pub(crate) dropped: indexmap::IndexMap<String, (String, String)>,
}

pub(crate) struct Emitter {
    pub(crate) start: Instant,
    pub(crate) sinks: Vec<Arc<dyn EventSink>>,
    pub(crate) journals: Vec<Arc<dyn Journal>>,
    /// Running totals, carried by the events that change them.
    pub(crate) stats: std::sync::Mutex<crate::TaskCounts>,
    /// The run record the events belong to.
    pub(crate) run_id: Option<crate::RunId>,
}

impl Emitter {
    /// Sends an event to the sinks only (output lines).
    pub(crate) fn emit(&self, kind: impl FnOnce() -> EventKind) {
        if self.sinks.is_empty() {
            return;
        }
        let event = Event {
            timestamp: SystemTime::now(),
            elapsed: self.start.elapsed(),
            kind: kind(),
            stats: None,
            run_id: self.run_id.clone(),
        };
        for sink in &self.sinks {
            sink.event(&event);
        }
    }

    /// Sends an event to the sinks and awaits the journal.
    pub(crate) async fn record(
        &self,
        kind: impl FnOnce() -> EventKind,
    ) -> Result<(), crate::BoxError> {
        let kind = kind();
        let stats = {
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            let counted = stats.count(&kind);
            (counted
                || matches!(
                    kind,
                    EventKind::StageSkipped { .. }
                        | EventKind::StageFinished { .. }
                        | EventKind::RunFinished { .. }
                ))
            .then_some(*stats)
        };
        if self.sinks.is_empty() && self.journals.is_empty() {
            return Ok(());
        }
        let event = Event {
            timestamp: SystemTime::now(),
            elapsed: self.start.elapsed(),
            kind,
            stats,
            run_id: self.run_id.clone(),
        };
        for sink in &self.sinks {
            sink.event(&event);
        }
        for journal in &self.journals {
            journal.record(&event).await?;
        }
        Ok(())
    }

    /// [`record`](Self::record), logging a journal failure instead of returning it.
    pub(crate) async fn note(&self, kind: impl FnOnce() -> EventKind) {
        if let Err(e) = self.record(kind).await {
            tracing::warn!(
                component = "Executor",
                "cannot record an event in the run journal: {}",
                error_chain(&*e)
            );
        }
    }
}
