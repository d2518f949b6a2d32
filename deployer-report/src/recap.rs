//! The recap printed at the end of a run: a row per host, then every failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use deployer_core::{
    DroppedHost, Event, EventKind, EventSink, FailedTask, RunOutcome, RunReport, TaskCounts,
    TaskOutcome,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-host counts, for the summary table.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HostSummary {
    /// What became of the host's tasks, in the categories of every report.
    pub counts: TaskCounts,
    /// Sum of the host's task durations.
    pub busy: Duration,
}

/// Collects per-host results for the recap printed at the end of a run ([`render`](Self::render));
/// [`Recap`] prints it by itself when the run ends.
#[derive(Debug, Default)]
pub struct Summary {
    hosts: Mutex<BTreeMap<String, HostSummary>>,
    /// Hosts in the order their first task ended (the plan's order, roughly): rows follow it.
    order: Mutex<Vec<String>>,
    name: Mutex<String>,
    failures: Mutex<Vec<FailedTask>>,
    /// Tasks skipped by their command: (command, reason) → hosts.
    skipped: Mutex<BTreeMap<(String, String), Vec<String>>>,
    /// Stage names by index.
    stages: Mutex<BTreeMap<usize, String>>,
    /// Hosts dropped within the failure budget, and the budget.
    dropped: Mutex<(Vec<DroppedHost>, String)>,
    full: bool,
}

/// Above this many hosts, the recap groups hosts with the same counts into one row (unless
/// [`Summary::full`]); failures are always listed one by one.
pub const RECAP_GROUP_ABOVE: usize = 20;

type Columns = [(usize, &'static str)];

fn row(
    s: &mut String,
    label: &str,
    width: usize,
    columns: &Columns,
    counts: &TaskCounts,
    busy: Duration,
) {
    let _ = write!(s, "{label:<width$}");
    crate::columns::cells(s, columns, counts);
    let _ = writeln!(s, "  {:>7.1}s", busy.as_secs_f64());
}

impl Summary {
    /// An empty summary.
    pub fn new() -> Self {
        Self::default()
    }

    /// A row for every host however many there are (default: above [`RECAP_GROUP_ABOVE`]
    /// hosts, hosts with the same counts share a row, `fe001 … fe250 (250 hosts)`).
    pub fn full(mut self, full: bool) -> Self {
        self.full = full;
        self
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
        let mut s = String::new();
        if counts.is_nothing_to_do() && outcome == RunOutcome::Succeeded {
            // A plan with no task (every host already on the version): say so, no table.
            let _ = writeln!(s, "run \"{name}\": nothing to do (the plan has no task)");
            return s;
        }
        let all = self.hosts();
        let order = lock(&self.order).clone();
        let hosts: Vec<(&String, &HostSummary)> =
            order.iter().filter_map(|h| all.get_key_value(h)).collect();
        let width = hosts.iter().map(|(h, _)| h.len()).max().unwrap_or(4).max(4);
        let columns = crate::columns::columns(hosts.iter().map(|(_, h)| &h.counts));
        let _ = write!(s, "{:<width$}", "HOST");
        crate::columns::headings(&mut s, &columns);
        let _ = writeln!(s, "  {:>8}", "TIME");
        if self.full || hosts.len() <= RECAP_GROUP_ABOVE {
            for (host, h) in hosts.iter().copied() {
                row(&mut s, host, width, &columns, &h.counts, h.busy);
            }
        } else {
            // One row per outcome: the hosts that ended alike, their longest time.
            let mut groups: BTreeMap<[usize; 8], (Vec<&String>, Duration, TaskCounts)> =
                BTreeMap::new();
            for (host, h) in hosts.iter().copied() {
                let key = h.counts.categories().map(|(_, n, _)| n);
                let g = groups.entry(key).or_default();
                g.0.push(host);
                g.1 = g.1.max(h.busy);
                g.2 = h.counts;
            }
            let _ = writeln!(
                s,
                "(hosts with the same counts share a row; --recap full lists each)"
            );
            for (names, busy, counts) in groups.values() {
                let label = match names.as_slice() {
                    [one] => one.to_string(),
                    [first, .., last] => format!("{first} … {last} ({} hosts)", names.len()),
                    [] => String::new(),
                };
                let _ = writeln!(s, "{label}");
                row(&mut s, "", width, &columns, counts, *busy);
            }
        }
        let _ = writeln!(
            s,
            "run \"{name}\" {outcome} in {:.1}s: {counts}",
            duration.as_secs_f64(),
        );
        let skipped = lock(&self.skipped);
        if !skipped.is_empty() {
            let _ = writeln!(s, "skipped by their command:");
            for ((command, reason), hosts) in skipped.iter() {
                let on = match hosts.as_slice() {
                    [one] => one.clone(),
                    [first, .., last] if hosts.len() > 3 => {
                        format!("{first} … {last} ({} hosts)", hosts.len())
                    }
                    many => many.join(", "),
                };
                let _ = writeln!(s, "  {command} on {on}: {reason}");
            }
        }
        if !failures.is_empty() {
            let _ = writeln!(s, "failures:");
            for f in failures {
                let _ = writeln!(s, "  {f}");
            }
        }
        let dropped = lock(&self.dropped);
        if !dropped.0.is_empty() {
            let n = dropped.0.len();
            let _ = writeln!(
                s,
                "dropped within the failure budget ({}): {n} host{}; a resume of the run retries their remaining tasks",
                dropped.1,
                if n == 1 { "" } else { "s" }
            );
            for host in &dropped.0 {
                let _ = writeln!(s, "  {host}");
            }
        }
        s
    }

    /// The hosts dropped within the failure budget so far.
    pub fn dropped(&self) -> Vec<DroppedHost> {
        lock(&self.dropped).0.clone()
    }
}

impl Summary {
    /// Updates `host`'s row, adding it (and its place in the order) the first time.
    fn with_host(&self, host: &str, f: impl FnOnce(&mut HostSummary)) {
        let mut hosts = lock(&self.hosts);
        let h = match hosts.entry(host.to_string()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                lock(&self.order).push(host.to_string());
                e.insert(HostSummary::default())
            }
        };
        f(h);
    }
}

impl EventSink for Summary {
    fn event(&self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted { name, .. } => *lock(&self.name) = name.clone(),
            EventKind::StageStarted { stage, name, .. } => {
                lock(&self.stages).insert(*stage, name.clone());
            }
            EventKind::HostDropped {
                host,
                stage,
                reason,
                budget,
                ..
            } => {
                let name = lock(&self.stages)
                    .get(stage)
                    .cloned()
                    .unwrap_or_else(|| format!("stage {stage}"));
                let mut dropped = lock(&self.dropped);
                dropped.0.push(DroppedHost {
                    host: host.clone(),
                    stage: name,
                    reason: reason.clone(),
                });
                dropped.1 = budget.clone();
            }
            EventKind::TaskFinished {
                task,
                outcome,
                duration,
                attempts,
            } => {
                match outcome {
                    TaskOutcome::Succeeded => {}
                    TaskOutcome::Skipped { reason } => {
                        lock(&self.skipped)
                            .entry((task.command.clone(), reason.clone()))
                            .or_default()
                            .push(task.host.clone());
                    }
                    other if !other.is_success() => lock(&self.failures).push(FailedTask {
                        task: task.clone(),
                        outcome: outcome.clone(),
                        attempts: *attempts,
                    }),
                    _ => {}
                }
                self.with_host(&task.host, |h| {
                    h.busy += *duration;
                    h.counts.count(&event.kind);
                });
            }
            EventKind::TaskNotRun { task, .. }
            | EventKind::TaskDoneEarlier { task }
            | EventKind::TaskDropped { task, .. } => {
                self.with_host(&task.host, |h| {
                    h.counts.count(&event.kind);
                });
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
/// assert!(text.contains(": 1 ok\n"), "{text}");
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

    /// A row for every host however many there are (see [`Summary::full`]).
    pub fn full(mut self, full: bool) -> Self {
        self.summary = self.summary.full(full);
        self
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

#[cfg(test)]
mod tests {
    use super::*;
    use deployer_core::{TaskId, TaskInfo};

    fn finished(host: &str, outcome: TaskOutcome) -> Event {
        Event::new(
            Duration::ZERO,
            EventKind::TaskFinished {
                task: TaskInfo {
                    id: TaskId {
                        stage: 0,
                        entry: 0,
                        step: None,
                    },
                    host: host.to_string(),
                    tag: None,
                    command: "c".into(),
                },
                outcome,
                duration: Duration::from_secs(1),
                attempts: 1,
            },
        )
    }

    #[test]
    fn a_large_fleet_is_grouped_and_its_failures_listed_in_full() {
        let summary = Summary::new();
        for i in 0..250 {
            summary.event(&finished(&format!("fe{i:03}"), TaskOutcome::Succeeded));
        }
        for host in ["fe007", "fe100"] {
            summary.event(&finished(
                host,
                TaskOutcome::Failed {
                    message: "boom".into(),
                    exit_status: Some(1),
                    stderr_tail: String::new(),
                },
            ));
        }
        let text = summary.render_seen(RunOutcome::Failed, Duration::ZERO, TaskCounts::default());
        assert!(text.contains("fe000 … fe249 (248 hosts)"), "{text}");
        assert!(text.contains("fe007 … fe100 (2 hosts)"), "{text}");
        assert_eq!(text.matches("failed: boom").count(), 2, "{text}");
        assert!(text.lines().count() < 15, "{text}");
        let full = Summary::new().full(true);
        for i in 0..30 {
            full.event(&finished(&format!("h{i:02}"), TaskOutcome::Succeeded));
        }
        let mut counts = TaskCounts::default();
        counts.succeeded = 30;
        let text = full.render_seen(RunOutcome::Succeeded, Duration::ZERO, counts);
        assert!(text.contains("\nh29 "), "{text}");
    }
}
