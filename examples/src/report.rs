//! What a person sees while a deploy runs: a progress display per stage, a per-host summary
//! at the end, JSON lines for machines, and a Graphviz rendering of a plan. Every reporter is an
//! [`EventSink`]: the executor prints nothing itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use deployer_core::{
    Event, EventKind, EventSink, HostRecord, RunRecord, RunReport, TaskEntry, TaskOutcome,
    TaskRecord, TaskState, Tasklist,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes every event as one JSON object per line to standard output (`--output json`).
#[derive(Debug, Default)]
pub struct JsonLines;

impl EventSink for JsonLines {
    fn event(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = std::io::stdout().lock();
            // A closed stdout (e.g. `| head`) must not stop the deploy.
            let _ = writeln!(out, "{line}");
        }
    }
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

/// Collects per-host results for the summary table printed at the end of a run.
#[derive(Debug, Default)]
pub struct Summary {
    hosts: Mutex<BTreeMap<String, HostSummary>>,
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
            "run \"{}\" {} in {:.1}s: {} ok, {} failed, {} skipped, {} not run",
            report.name,
            report.outcome,
            report.duration.as_secs_f64(),
            report.counts.succeeded,
            report.counts.failed,
            report.counts.skipped,
            report.counts.not_run
        );
        if !report.failures.is_empty() {
            let _ = writeln!(s, "failures:");
            for f in &report.failures {
                let _ = writeln!(s, "  {f}");
            }
        }
        s
    }
}

impl EventSink for Summary {
    fn event(&self, event: &Event) {
        match &event.kind {
            EventKind::TaskFinished {
                task,
                outcome,
                duration,
                ..
            } => {
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

struct StageBar {
    bar: ProgressBar,
    in_flight: BTreeMap<String, usize>,
    /// From the history of past runs: how long the stage should take.
    estimate: Option<Duration>,
    started: std::time::Instant,
}

/// A progress display: one bar per stage with tasks done/total, the hosts in flight, elapsed
/// time and an estimate of the time remaining; failures are printed above the bars as they
/// happen.
pub struct Progress {
    multi: MultiProgress,
    stages: Mutex<HashMap<usize, StageBar>>,
    estimates: Vec<Option<Duration>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

impl Progress {
    /// A display drawing on standard error.
    pub fn stderr() -> Self {
        Self::with_target(ProgressDrawTarget::stderr())
    }

    /// A display drawing on `target` (a hidden target for tests).
    pub fn with_target(target: ProgressDrawTarget) -> Self {
        Progress {
            multi: MultiProgress::with_draw_target(target),
            stages: Mutex::new(HashMap::new()),
            estimates: Vec::new(),
        }
    }

    /// Shows, per stage, the time left according to past runs (see [`stage_estimates`]).
    pub fn with_estimates(mut self, estimates: Vec<Option<Duration>>) -> Self {
        self.estimates = estimates;
        self
    }

    /// The message of stage `stage`'s bar (the hosts in flight), for tests.
    pub fn message(&self, stage: usize) -> Option<String> {
        lock(&self.stages).get(&stage).map(|s| s.bar.message())
    }

    /// Position and length of stage `stage`'s bar.
    pub fn position(&self, stage: usize) -> Option<(u64, u64)> {
        lock(&self.stages)
            .get(&stage)
            .map(|s| (s.bar.position(), s.bar.length().unwrap_or(0)))
    }

    fn update_message(s: &mut StageBar) {
        let hosts: Vec<&str> = s.in_flight.keys().map(String::as_str).collect();
        let mut msg = match hosts.len() {
            0 => String::new(),
            n if n <= 4 => format!("on {}", hosts.join(", ")),
            n => format!("on {} and {} more", hosts[..3].join(", "), n - 3),
        };
        if let Some(estimate) = s.estimate {
            let left = estimate.saturating_sub(s.started.elapsed());
            let _ = write!(
                msg,
                "{}~{}s left by history",
                if msg.is_empty() { "" } else { "; " },
                left.as_secs()
            );
        }
        s.bar.set_message(msg);
    }
}

impl EventSink for Progress {
    fn event(&self, event: &Event) {
        match &event.kind {
            EventKind::StageStarted {
                stage, name, tasks, ..
            } => {
                let bar = self.multi.add(ProgressBar::new(*tasks as u64));
                let style = ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30}] {pos}/{len} tasks  {elapsed} (eta {eta})  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(name.clone());
                bar.enable_steady_tick(Duration::from_millis(200));
                let mut stage_bar = StageBar {
                    bar,
                    in_flight: BTreeMap::new(),
                    estimate: self.estimates.get(*stage).copied().flatten(),
                    started: std::time::Instant::now(),
                };
                Self::update_message(&mut stage_bar);
                lock(&self.stages).insert(*stage, stage_bar);
            }
            EventKind::TaskStarted { task, attempt: 1 } => {
                if let Some(s) = lock(&self.stages).get_mut(&task.id.stage) {
                    *s.in_flight.entry(task.host.clone()).or_default() += 1;
                    Self::update_message(s);
                }
            }
            EventKind::TaskFinished { task, outcome, .. } => {
                let mut stages = lock(&self.stages);
                if let Some(s) = stages.get_mut(&task.id.stage) {
                    if let Some(n) = s.in_flight.get_mut(&task.host) {
                        *n -= 1;
                        if *n == 0 {
                            s.in_flight.remove(&task.host);
                        }
                    }
                    s.bar.inc(1);
                    Self::update_message(s);
                    if !outcome.is_success() {
                        let tag = task
                            .tag
                            .as_deref()
                            .map(|t| format!(" [{t}]"))
                            .unwrap_or_default();
                        let _ = self.multi.println(format!(
                            "FAILED {} {} on {}{tag}: {outcome}",
                            task.id, task.command, task.host
                        ));
                    }
                }
            }
            EventKind::TaskNotRun { task, .. } => {
                if let Some(s) = lock(&self.stages).get_mut(&task.id.stage) {
                    s.bar.inc(1);
                }
            }
            EventKind::StageFinished { stage, outcome, .. } => {
                if let Some(s) = lock(&self.stages).get_mut(stage) {
                    s.in_flight.clear();
                    s.bar.finish_with_message(outcome.to_string());
                }
            }
            _ => {}
        }
    }
}

/// Per stage, how long it should take according to past runs: the average duration of each
/// task's command (from [`RunStore::average_duration`](deployer_core::RunStore::average_duration))
/// summed and spread over the stage's concurrency; `None` when a command has no history.
///
/// ```
/// use deployer_core::{Stage, Task, Tasklist};
/// use std::collections::HashMap;
/// use std::time::Duration;
///
/// let t = Tasklist::new("t").stage(Stage::new("s", 2).tasks(vec![
///     Task::new("upload"), Task::new("upload"), Task::new("upload"), Task::new("upload"),
/// ]));
/// let history = HashMap::from([("upload".to_string(), Duration::from_secs(3))]);
/// let est = deployer_examples::report::stage_estimates(&t, &history);
/// assert_eq!(est, [Some(Duration::from_secs(6))]);
/// ```
pub fn stage_estimates(
    tasklist: &Tasklist,
    history: &HashMap<String, Duration>,
) -> Vec<Option<Duration>> {
    tasklist
        .stages
        .iter()
        .map(|stage| {
            let mut total = Duration::ZERO;
            for entry in &stage.tasks {
                for task in entry.tasks() {
                    total += *history.get(&task.command)?;
                }
            }
            let lanes = stage.concurrency.min(stage.tasks.len()).max(1) as u32;
            Some(total / lanes)
        })
        .collect()
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders a tasklist as a Graphviz graph: a cluster per stage (with its limits), a node per
/// task labelled with command, host and tag, edges along chains and between stages.
///
/// ```
/// use deployer_core::{Stage, Task, Tasklist};
/// let t = Tasklist::new("demo").stage(Stage::new("s", 2).task(vec![
///     Task::new("stop").on("fe001"),
///     Task::new("start").on("fe001"),
/// ]));
/// let dot = deployer_examples::report::to_dot(&t);
/// assert!(dot.starts_with("digraph tasklist {"));
/// assert!(dot.contains("t0_0_0 -> t0_0_1;"));
/// ```
pub fn to_dot(tasklist: &Tasklist) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph tasklist {{");
    let _ = writeln!(s, "  label=\"{}\";", dot_escape(&tasklist.name));
    let _ = writeln!(s, "  labelloc=t; rankdir=TB; compound=true; newrank=true;");
    let _ = writeln!(
        s,
        "  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    for (si, stage) in tasklist.stages.iter().enumerate() {
        let limits = match stage.concurrency_per_host {
            Some(p) => format!("concurrency {}, per host {p}", stage.concurrency),
            None => format!("concurrency {}", stage.concurrency),
        };
        let _ = writeln!(s, "  subgraph cluster_{si} {{");
        let _ = writeln!(
            s,
            "    label=\"{si}: {} ({limits})\"; style=rounded;",
            dot_escape(&stage.name)
        );
        let _ = writeln!(s, "    s{si} [shape=point, style=invis];");
        for (ei, entry) in stage.tasks.iter().enumerate() {
            let tasks = entry.tasks();
            for (ti, task) in tasks.iter().enumerate() {
                let tag = task
                    .tag
                    .as_deref()
                    .map(|t| format!(" [{t}]"))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "    t{si}_{ei}_{ti} [label=\"{}\\n{}{}\"];",
                    dot_escape(&task.command),
                    dot_escape(task.host_key()),
                    dot_escape(&tag)
                );
            }
            if matches!(entry, TaskEntry::Chain(_)) {
                for ti in 1..tasks.len() {
                    let _ = writeln!(s, "    t{si}_{ei}_{} -> t{si}_{ei}_{ti};", ti - 1);
                }
            }
        }
        let _ = writeln!(s, "  }}");
    }
    for si in 1..tasklist.stages.len() {
        let _ = writeln!(
            s,
            "  s{} -> s{si} [ltail=cluster_{}, lhead=cluster_{si}, style=bold];",
            si - 1,
            si - 1
        );
    }
    let _ = writeln!(s, "}}");
    s
}

fn ts(t: Option<std::time::SystemTime>) -> String {
    match t {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "-".to_string(),
    }
}

/// The table of `deploy runs list`.
pub fn render_runs(runs: &[RunRecord]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<36}  {:<9}  {:<20}  {:<20}  {:<10}  NAME",
        "ID", "STATE", "CREATED", "FINISHED", "BY"
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{:<36}  {:<9}  {:<20}  {:<20}  {:<10}  {}",
            r.id.as_str(),
            r.state.as_str(),
            ts(Some(r.created_ts)),
            ts(r.finish_ts),
            r.started_by,
            r.name
        );
    }
    s
}

/// The report of `deploy runs show`: the run, a table per host, a table per task.
pub fn render_run(run: &RunRecord, hosts: &[HostRecord], tasks: &[TaskRecord]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "run       {}", run.id);
    let _ = writeln!(s, "name      {}", run.name);
    let _ = writeln!(s, "state     {}", run.state);
    let _ = writeln!(s, "source    {}", run.source);
    let _ = writeln!(s, "by        {}", run.started_by);
    let _ = writeln!(s, "created   {}", ts(Some(run.created_ts)));
    let _ = writeln!(s, "started   {}", ts(run.started_ts));
    let _ = writeln!(s, "finished  {}", ts(run.finish_ts));
    if let Some(owner) = &run.owner {
        let _ = writeln!(
            s,
            "driven by {owner} (lease until {})",
            ts(run.lease_expires)
        );
    }
    let width = hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        s,
        "\n{:<width$}  {:<8}  {:>4}  {:>6}  {:>7}",
        "HOST", "STATE", "OK", "FAILED", "PENDING"
    );
    for h in hosts {
        let mine = tasks.iter().filter(|t| t.host == h.host);
        let (mut ok, mut failed, mut pending) = (0, 0, 0);
        for t in mine {
            if t.state.is_done() {
                ok += 1;
            } else if matches!(
                t.state,
                TaskState::Failed | TaskState::TimedOut | TaskState::Cancelled
            ) {
                failed += 1;
            } else {
                pending += 1;
            }
        }
        let _ = writeln!(
            s,
            "{:<width$}  {:<8}  {ok:>4}  {failed:>6}  {pending:>7}",
            h.host,
            h.state.as_str()
        );
    }
    let _ = writeln!(
        s,
        "\n{:<24}  {:<width$}  {:<20}  {:<9}  {:>3}  {:>4}  ERROR",
        "TASK", "HOST", "COMMAND", "STATE", "TRY", "EXIT"
    );
    for t in tasks {
        let _ = writeln!(
            s,
            "{:<24}  {:<width$}  {:<20}  {:<9}  {:>3}  {:>4}  {}",
            t.id.to_string(),
            t.host,
            t.command,
            t.state.as_str(),
            t.attempts,
            t.exit_status
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            t.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployer_core::fixture::{EventLog, FakeConnector};
    use deployer_core::{CommandRegistry, Executor, Plan, Stage, Task};
    use std::sync::Arc;

    #[test]
    fn dot_has_a_cluster_per_stage_chains_and_stage_order() {
        let t = Tasklist::new("deploy \"web\"")
            .stage(Stage::new("Prepare", 10).per_host(2).tasks(vec![
                Task::new("upload").on("fe001").tag("web"),
                Task::new("upload").on("fe002").tag("web"),
            ]))
            .stage(Stage::new("Activate", 1).task(vec![
                Task::new("stop").on("fe001"),
                Task::new("start").on("fe001"),
                Task::new("check").on("fe001"),
            ]));
        let dot = to_dot(&t);
        assert!(dot.contains("label=\"deploy \\\"web\\\"\";"), "{dot}");
        assert!(dot.contains("subgraph cluster_0 {"));
        assert!(dot.contains("label=\"0: Prepare (concurrency 10, per host 2)\""));
        assert!(dot.contains("label=\"1: Activate (concurrency 1)\""));
        assert!(
            dot.contains("t0_1_0 [label=\"upload\\nfe002 [web]\"];"),
            "{dot}"
        );
        assert!(dot.contains("t1_0_0 -> t1_0_1;"));
        assert!(dot.contains("t1_0_1 -> t1_0_2;"));
        assert!(
            !dot.contains("t0_0_0 -> t0_1_0"),
            "separate tasks are not chained"
        );
        assert!(dot.contains("s0 -> s1 [ltail=cluster_0, lhead=cluster_1"));
        // Graphviz accepts it, when installed.
        if let Ok(mut child) = std::process::Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
        {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(dot.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success());
        }
    }

    #[derive(Debug)]
    struct Sleepy(bool);

    #[deployer_core::async_trait]
    impl deployer_core::Command for Sleepy {
        fn initialize(
            _: &deployer_core::TaskArgs<'_>,
        ) -> Result<Self, deployer_core::ValidationErrors> {
            unreachable!()
        }
        async fn execute(
            &self,
            _: &deployer_core::ExecContext,
        ) -> Result<deployer_core::Outcome, deployer_core::CommandError> {
            if self.0 {
                Err(deployer_core::CommandError::Failed {
                    message: "boom".into(),
                    exit_status: Some(4),
                    stderr: "disk full".into(),
                })
            } else {
                Ok(deployer_core::Outcome::done())
            }
        }
    }

    #[tokio::test]
    async fn progress_and_summary_follow_the_events() {
        let mut registry = CommandRegistry::new();
        registry.register_fn("ok", |_| Ok(Box::new(Sleepy(false))));
        registry.register_fn("fail", |_| Ok(Box::new(Sleepy(true))));
        let t = Tasklist::new("t").stage(Stage::new("s", 1).tasks(vec![
            Task::new("ok").on("fe001"),
            Task::new("ok").on("fe002"),
            Task::new("fail").on("fe002").tag("web"),
            Task::new("ok").on("fe003"),
        ]));
        let plan = Plan::build(&t, &registry).unwrap();
        let progress = Arc::new(
            Progress::with_target(ProgressDrawTarget::hidden())
                .with_estimates(vec![Some(Duration::from_secs(3600))]),
        );
        let summary = Arc::new(Summary::new());
        let log = Arc::new(EventLog::new());
        let report = Executor::new(Arc::new(FakeConnector::new()))
            .sink(progress.clone())
            .sink(summary.clone())
            .sink(log)
            .run(&plan)
            .await;
        assert_eq!(
            progress.position(0),
            Some((4, 4)),
            "done and not-run tasks both count"
        );
        assert_eq!(progress.message(0).as_deref(), Some("failed"));
        let hosts = summary.hosts();
        assert_eq!(hosts["fe001"].ok, 1);
        assert_eq!(hosts["fe002"].ok, 1);
        assert_eq!(hosts["fe002"].failed, 1);
        assert_eq!(hosts["fe003"].skipped, 1);
        let table = summary.render(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "HOST      OK  FAILED  SKIPPED      TIME");
        assert!(
            lines[2].starts_with("fe002      1       1        0"),
            "{table}"
        );
        assert!(table.contains("run \"t\" failed in"), "{table}");
        assert!(table.contains("1 ok") || table.contains("2 ok"), "{table}");
        assert!(
            table.contains("stages[0].tasks[2] fail on fe002 [web]: failed: boom (exit status 4)"),
            "{table}"
        );
        assert!(table.contains("stderr: disk full"), "{table}");
    }
}

#[cfg(test)]
mod estimate_tests {
    use super::*;
    use deployer_core::{Stage, Task};

    #[test]
    fn a_stage_message_shows_the_time_left_by_history() {
        let progress = Progress::with_target(ProgressDrawTarget::hidden())
            .with_estimates(vec![None, Some(Duration::from_secs(120))]);
        let event = |kind| Event {
            timestamp: std::time::SystemTime::now(),
            elapsed: Duration::ZERO,
            kind,
        };
        for stage in [0, 1] {
            progress.event(&event(EventKind::StageStarted {
                stage,
                name: format!("s{stage}"),
                tasks: 2,
                concurrency: 1,
                concurrency_per_host: None,
            }));
        }
        assert_eq!(progress.message(0).as_deref(), Some(""));
        let msg = progress.message(1).unwrap();
        assert!(msg.ends_with("s left by history"), "{msg}");
        assert!(msg.starts_with("~119") || msg.starts_with("~120"), "{msg}");
    }

    #[test]
    fn estimates_need_history_for_every_command() {
        let t = Tasklist::new("t")
            .stage(Stage::new("a", 10).tasks(vec![Task::new("x"), Task::new("x")]))
            .stage(Stage::new("b", 1).tasks(vec![Task::new("x"), Task::new("unknown")]));
        let history = HashMap::from([("x".to_string(), Duration::from_secs(4))]);
        assert_eq!(
            stage_estimates(&t, &history),
            [Some(Duration::from_secs(4)), None]
        );
    }
}
