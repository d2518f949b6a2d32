//! The recap printed at the end of a run: a row per host, then every failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use deployer_core::{Event, EventKind, EventSink, RunReport, TaskOutcome};

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
