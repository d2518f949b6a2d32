//! Live progress bars on a terminal (feature `progress`, indicatif).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use deployer_core::{Event, EventKind, EventSink, TaskCounts};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct StageBar {
    bar: ProgressBar,
    in_flight: BTreeMap<String, usize>,
    /// From the history of past runs: how long the stage should take.
    estimate: Option<Duration>,
    started: std::time::Instant,
    /// What became of the stage's tasks so far, for its last word.
    counts: TaskCounts,
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

    /// Shows, per stage, the time left according to past runs (see [`stage_estimates`](crate::stage_estimates)).
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
                    // `wide_msg` is cut to the terminal's width: a narrow terminal truncates
                    // the hosts in flight instead of wrapping. Colours follow the terminal and
                    // NO_COLOR.
                    "{prefix:.bold.cyan} [{bar:20.green/blue}] {pos}/{len} tasks  {elapsed} (eta {eta})  {wide_msg}",
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
                    counts: TaskCounts::default(),
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
                    s.counts.count(&event.kind);
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
            EventKind::TaskNotRun { task, .. }
            | EventKind::TaskDoneEarlier { task }
            | EventKind::TaskDropped { task, .. } => {
                if let Some(s) = lock(&self.stages).get_mut(&task.id.stage) {
                    s.bar.inc(1);
                    s.counts.count(&event.kind);
                }
            }
            EventKind::HostDropped {
                host,
                reason,
                failed_hosts,
                budget,
                ..
            } => {
                let _ = self.multi.println(format!(
                    "DROPPED {host} ({failed_hosts} failed host{} so far, within {budget}): {reason}",
                    if *failed_hosts == 1 { "" } else { "s" }
                ));
            }
            EventKind::StageFinished { stage, outcome, .. } => {
                if let Some(s) = lock(&self.stages).get_mut(stage) {
                    s.in_flight.clear();
                    // A stage that did not succeed says what became of its tasks: the bar is
                    // full, but not every task ran. The line above the bars is never cut to
                    // the terminal's width; the bar's own message may be.
                    let c = &s.counts;
                    let message = if c.total() == c.succeeded {
                        outcome.to_string()
                    } else {
                        format!("{outcome}: {c}")
                    };
                    if *outcome != deployer_core::RunOutcome::Succeeded {
                        let _ = self
                            .multi
                            .println(format!("stage {} {message}", s.bar.prefix()));
                    }
                    if let Ok(style) = ProgressStyle::with_template(
                        "{prefix:.bold.cyan} [{bar:20.green/blue}] {pos}/{len} tasks  {elapsed}  {wide_msg}",
                    ) {
                        s.bar.set_style(style.progress_chars("=> "));
                    }
                    s.bar.finish_with_message(message);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Summary;
    use deployer_core::fixture::{EventLog, FakeConnector};
    use deployer_core::{CommandRegistry, Executor, Plan, Stage, Task, Tasklist};
    use std::sync::Arc;

    #[test]
    fn a_stage_message_shows_the_time_left_by_history() {
        let progress = Progress::with_target(ProgressDrawTarget::hidden())
            .with_estimates(vec![None, Some(Duration::from_secs(120))]);
        let event = |kind| Event::new(Duration::ZERO, kind);
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
        assert_eq!(
            progress.message(0).as_deref(),
            Some("failed: 2 ok, 1 failed, 1 not run")
        );
        let hosts = summary.hosts();
        assert_eq!(hosts["fe001"].counts.succeeded, 1);
        assert_eq!(hosts["fe002"].counts.succeeded, 1);
        assert_eq!(hosts["fe002"].counts.failed, 1);
        assert_eq!(hosts["fe003"].counts.not_run, 1);
        let table = summary.render(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "HOST   OK  FAILED  NOT RUN      TIME");
        assert!(
            lines[2].starts_with("fe002   1       1        0"),
            "{table}"
        );
        assert!(
            table.contains("run \"t\" failed in 0.0s: 2 ok, 1 failed, 1 not run")
                || table.contains(": 2 ok, 1 failed, 1 not run\n"),
            "{table}"
        );
        assert!(table.contains("run \"t\" failed in"), "{table}");
        assert!(
            table.contains("stages[0].tasks[2] fail on fe002 [web]: failed: boom (exit status 4)"),
            "{table}"
        );
        assert!(table.contains("stderr: disk full"), "{table}");
    }
}
