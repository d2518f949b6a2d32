//! What a run reports: counts, failed tasks, stage reports, the run report and its error.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::events::{RunOutcome, TaskCounts, TaskId, TaskInfo, TaskOutcome};

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

/// A host that failed within the run's failure budget and was dropped from the rest of the
/// run (see [`FailureBudget`](crate::FailureBudget)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedHost {
    /// The host key.
    pub host: String,
    /// The name of the stage it failed in.
    pub stage: String,
    /// What failed: the task's path and command, and its error.
    pub reason: String,
}

impl fmt::Display for DroppedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (in {}): {}", self.host, self.stage, self.reason)
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
    /// The hosts dropped within the failure budget, in the order they failed.
    pub dropped: Vec<DroppedHost>,
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
            .or_else(|| {
                r.stages
                    .iter()
                    .find(|s| s.outcome == Some(RunOutcome::Degraded))
            })
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
        if !r.dropped.is_empty() {
            write!(
                f,
                "\n{} host{} dropped within the failure budget:",
                r.dropped.len(),
                if r.dropped.len() == 1 { "" } else { "s" }
            )?;
            for host in &r.dropped {
                write!(f, "\n  {host}")?;
            }
        }
        Ok(())
    }
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
