//! The recap printed at the end of a run: a row per host, then every failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use deployer_core::{
    Event, EventKind, EventSink, FailedTask, RunOutcome, RunReport, TaskCounts, TaskOutcome,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-host counts, for the summary table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HostSummary {
    /// Tasks that succeeded.
    pub ok: usize,
    /// Tasks that failed, timed out or were cancelled.
    pub failed: usize,
    /// Tasks skipped by their command or never run.
    pub skipped: usize,
    /// Sum of the host's task durations.
    pub busy: Duration,
}

/// Collects per-host results for the recap printed at the end of a run ([`render`](Self::render));
/// [`Recap`] prints it by itself when the run ends.
#[derive(Debug, Default)]
pub struct Summary {
    hosts: Mutex<BTreeMap<String, HostSummary>>,
    name: Mutex<String>,
    failures: Mutex<Vec<FailedTask>>,
}

impl Summary {
    /// An empty summary.
    pub fn new() -> Self {
        Self::default()
    }

    /// The per-host counts so far.
    pub fn hosts(&self) -> BTreeMap<String, HostSummary> {
        lock(&self.hosts).clone()
    }

    /// The table: one row per host, then every failure with its command, exit status and the
    /// tail of its stderr.
    pub fn render(&self, report: &RunReport) -> String {
        self.render_with(
            &report.name,
            report.outcome,
            report.duration,
            report.counts,
            &report.failures,
        )
    }

    /// The table from the events alone: the run's name, failures and counts as they were
    /// seen (what [`Recap`] prints when the run ends).
    pub fn render_seen(
        &self,
        outcome: RunOutcome,
        duration: Duration,
        counts: TaskCounts,
    ) -> String {
        let name = lock(&self.name).clone();
        let failures = lock(&self.failures).clone();
        self.render_with(&name, outcome, duration, counts, &failures)
    }

    fn render_with(
        &self,
        name: &str,
        outcome: RunOutcome,
        duration: Duration,
        counts: TaskCounts,
        failures: &[FailedTask],
    ) -> String {
        let hosts = self.hosts();
        let width = hosts.keys().map(String::len).max().unwrap_or(4).max(4);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<width$}  {:>5}  {:>6}  {:>7}  {:>8}",
            "HOST", "OK", "FAILED", "SKIPPED", "TIME"
        );
        for (host, h) in &hosts {
            let _ = writeln!(
                s,
                "{host:<width$}  {:>5}  {:>6}  {:>7}  {:>7.1}s",
                h.ok,
                h.failed,
                h.skipped,
                h.busy.as_secs_f64()
            );
        }
        let _ = writeln!(
            s,
            "run \"{name}\" {outcome} in {:.1}s: {} ok, {} failed, {} skipped, {} not run",
            duration.as_secs_f64(),
            counts.succeeded,
            counts.failed,
            counts.skipped,
            counts.not_run
        );
        if !failures.is_empty() {
            let _ = writeln!(s, "failures:");
            for f in failures {
                let _ = writeln!(s, "  {f}");
            }
        }
        s
    }
}

impl EventSink for Summary {
    fn event(&self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted { name, .. } => *lock(&self.name) = name.clone(),
            EventKind::TaskFinished {
                task,
                outcome,
                duration,
                attempts,
            } => {
                if !outcome.is_success() {
                    lock(&self.failures).push(FailedTask {
                        task: task.clone(),
                        outcome: outcome.clone(),
                        attempts: *attempts,
                    });
                }
                let mut hosts = lock(&self.hosts);
                let h = hosts.entry(task.host.clone()).or_default();
                h.busy += *duration;
                match outcome {
                    TaskOutcome::Succeeded => h.ok += 1,
                    TaskOutcome::Skipped { .. } => h.skipped += 1,
                    _ => h.failed += 1,
                }
            }
            EventKind::TaskNotRun { task, .. } => {
                lock(&self.hosts)
                    .entry(task.host.clone())
                    .or_default()
                    .skipped += 1;
            }
            _ => {}
        }
    }
}

/// Prints the recap ([`Summary`]) to a writer when the run ends: a row per host, the counts the
/// last event carries, then every failure.
///
/// ```
/// use std::sync::Arc;
/// use deployer_core::fixture::{FakeConnector, Noop};
/// use deployer_core::{CommandRegistry, Executor, Plan, Stage, Task, Tasklist};
/// use deployer_report::Recap;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut commands = CommandRegistry::new();
/// commands.register::<Noop>("noop");
/// let tasklist = Tasklist::new("demo").stage(Stage::new("all", 1).task(Task::new("noop").on("fe001")));
/// let recap = Arc::new(Recap::new(Vec::new()));
/// Executor::new(Arc::new(FakeConnector::new()))
///     .sink(recap.clone())
///     .run(&Plan::build(&tasklist, &commands).unwrap())
///     .await;
/// let text = String::from_utf8(Arc::try_unwrap(recap).unwrap().into_inner()).unwrap();
/// assert!(text.contains("run \"demo\" succeeded in "), "{text}");
/// assert!(text.contains(": 1 ok, 0 failed, 0 skipped, 0 not run"), "{text}");
/// # });
/// ```
#[derive(Debug)]
pub struct Recap<W> {
    summary: Summary,
    out: Mutex<W>,
}

impl Recap<std::io::Stderr> {
    /// Prints to standard error.
    pub fn stderr() -> Self {
        Recap::new(std::io::stderr())
    }
}

impl<W: std::io::Write> Recap<W> {
    /// Prints to `out`.
    pub fn new(out: W) -> Self {
        Recap {
            summary: Summary::new(),
            out: Mutex::new(out),
        }
    }

    /// What was collected so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl<W: std::io::Write + Send> EventSink for Recap<W> {
    fn event(&self, event: &Event) {
        self.summary.event(event);
        if let EventKind::RunFinished { outcome, duration } = &event.kind {
            let text =
                self.summary
                    .render_seen(*outcome, *duration, event.stats.unwrap_or_default());
            let mut out = lock(&self.out);
            // A closed output must not disturb the run.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        }
    }
}
