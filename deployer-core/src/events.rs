//! The typed event stream the executor emits; logs, progress bars, JSON output and run stores
//! all consume it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::host::Stream;

/// Identifies one task of a tasklist by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    /// Index of the stage.
    pub stage: usize,
    /// Index of the entry within the stage.
    pub entry: usize,
    /// Index within the chain, when the entry is a chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
}

impl fmt::Display for TaskId {
    /// The tasklist path: `stages[1].tasks[3]` or `stages[1].tasks[3][0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stages[{}].tasks[{}]", self.stage, self.entry)?;
        if let Some(step) = self.step {
            write!(f, "[{step}]")?;
        }
        Ok(())
    }
}

/// How one task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskOutcome {
    /// The command succeeded.
    Succeeded,
    /// The command decided there was nothing to do (e.g. a migration whose script is absent).
    Skipped {
        /// Why.
        reason: String,
    },
    /// The command failed on its last attempt.
    Failed {
        /// What failed.
        message: String,
        /// The exit status of the remote process, when one ran.
        exit_status: Option<i32>,
        /// The last lines of its standard error.
        stderr_tail: String,
    },
    /// The last attempt ran past the task's timeout and was stopped.
    TimedOut {
        /// The timeout.
        #[serde(with = "secs")]
        after: Duration,
    },
    /// The task was stopped by a hard cancellation.
    Cancelled,
}

impl TaskOutcome {
    /// Whether the task counts as successful (succeeded or skipped by its command).
    pub fn is_success(&self) -> bool {
        matches!(self, TaskOutcome::Succeeded | TaskOutcome::Skipped { .. })
    }
}

impl fmt::Display for TaskOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskOutcome::Succeeded => f.write_str("succeeded"),
            TaskOutcome::Skipped { reason } => write!(f, "skipped: {reason}"),
            TaskOutcome::Failed {
                message,
                exit_status,
                stderr_tail,
            } => {
                write!(f, "failed: {message}")?;
                if let Some(code) = exit_status {
                    write!(f, " (exit status {code})")?;
                }
                if !stderr_tail.is_empty() {
                    write!(
                        f,
                        "\n    stderr: {}",
                        stderr_tail.replace('\n', "\n            ")
                    )?;
                }
                Ok(())
            }
            TaskOutcome::TimedOut { after } => write!(f, "timed out after {after:?}"),
            TaskOutcome::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// How a stage or a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunOutcome {
    /// Every task succeeded (or was skipped by its command).
    Succeeded,
    /// A task failed or timed out.
    Failed,
    /// A cancellation stopped it.
    Cancelled,
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
        })
    }
}

/// Where and what a task is, repeated in each task event so consumers need no lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Its position.
    pub id: TaskId,
    /// Its host key (`remote_host`, `lb_hostname` or `local`).
    pub host: String,
    /// Its tag, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Its command name.
    pub command: String,
}

/// One thing that happened during a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time of the event.
    #[serde(with = "unix_secs")]
    pub timestamp: SystemTime,
    /// Time since the run started.
    #[serde(with = "secs")]
    pub elapsed: Duration,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// The run's task counts so far, on the events that change them or end a stage or the
    /// run (`task_finished`, `task_not_run`, `stage_skipped`, `stage_finished`,
    /// `run_finished`): reporters read totals here instead of recounting. On `run_finished`
    /// they equal [`RunReport::counts`](crate::RunReport::counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<TaskCounts>,
    /// The run record this event belongs to, when the run is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<crate::RunId>,
}

impl Event {
    /// An event of `kind` now, `elapsed` into its run, without counts.
    pub fn new(elapsed: Duration, kind: EventKind) -> Event {
        Event {
            timestamp: SystemTime::now(),
            elapsed,
            kind,
            stats: None,
            run_id: None,
        }
    }
}

/// Task counts of a run: running totals on events, final ones in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
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

impl TaskCounts {
    /// Tasks counted so far.
    pub fn total(&self) -> usize {
        self.succeeded + self.skipped + self.failed + self.not_run
    }

    /// Counts the end of one task.
    pub(crate) fn count(&mut self, kind: &EventKind) {
        match kind {
            EventKind::TaskFinished { outcome, .. } => match outcome {
                TaskOutcome::Succeeded => self.succeeded += 1,
                TaskOutcome::Skipped { .. } => self.skipped += 1,
                _ => self.failed += 1,
            },
            EventKind::TaskNotRun { .. } => self.not_run += 1,
            EventKind::StageSkipped { tasks, .. } => self.not_run += tasks,
            _ => {}
        }
    }
}

/// What happened; one variant per step of a run's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The run began.
    RunStarted {
        /// The tasklist's name.
        name: String,
        /// How many stages it has.
        stages: usize,
        /// How many tasks it has, counting chain steps.
        tasks: usize,
    },
    /// A stage began.
    StageStarted {
        /// Its index.
        stage: usize,
        /// Its name.
        name: String,
        /// How many tasks it has, counting chain steps.
        tasks: usize,
        /// Its concurrency limit.
        concurrency: usize,
        /// Its per-host limit.
        concurrency_per_host: Option<usize>,
    },
    /// An attempt of a task began.
    TaskStarted {
        /// The task.
        #[serde(flatten)]
        task: TaskInfo,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// A task's command printed a line.
    TaskOutput {
        /// The task.
        #[serde(flatten)]
        task: TaskInfo,
        /// Which stream.
        stream: Stream,
        /// The line, without its newline.
        line: String,
    },
    /// An attempt failed and the task will be tried again.
    TaskRetrying {
        /// The task.
        #[serde(flatten)]
        task: TaskInfo,
        /// The attempt that failed.
        attempt: u32,
        /// Why it failed.
        error: String,
    },
    /// A task ended.
    TaskFinished {
        /// The task.
        #[serde(flatten)]
        task: TaskInfo,
        /// How.
        outcome: TaskOutcome,
        /// Time from its first attempt's start to its end.
        #[serde(with = "secs")]
        duration: Duration,
        /// How many attempts ran.
        attempts: u32,
    },
    /// A task was never started because its stage stopped starting tasks or an earlier step
    /// of its chain failed.
    TaskNotRun {
        /// The task.
        #[serde(flatten)]
        task: TaskInfo,
        /// Why.
        reason: String,
    },
    /// A stage ended.
    StageFinished {
        /// Its index.
        stage: usize,
        /// Its name.
        name: String,
        /// How.
        outcome: RunOutcome,
        /// Its wall time.
        #[serde(with = "secs")]
        duration: Duration,
    },
    /// A stage did not run because an earlier one failed or the run was cancelled.
    StageSkipped {
        /// Its index.
        stage: usize,
        /// Its name.
        name: String,
        /// How many of its tasks did not run (tasks already done on resume are not counted).
        tasks: usize,
    },
    /// The run ended.
    RunFinished {
        /// How.
        outcome: RunOutcome,
        /// Its wall time.
        #[serde(with = "secs")]
        duration: Duration,
    },
}

/// A consumer of events.
///
/// `event` is called synchronously by the executor, in order, for every event: it must be quick
/// and must not block (hand heavy work to a channel, as [`ChannelSink`] does). A sink cannot
/// stop a run; use a [`CancelHandle`](crate::CancelHandle) for that.
///
/// Any `Fn(&Event) + Send + Sync` closure is a sink:
///
/// ```
/// use deployer_core::{Event, EventSink};
/// let sink = |e: &Event| println!("{:?}", e.kind);
/// fn takes(_: impl EventSink) {}
/// takes(sink);
/// ```
pub trait EventSink: Send + Sync {
    /// Receives one event.
    fn event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync> EventSink for F {
    fn event(&self, event: &Event) {
        self(event)
    }
}

impl<S: EventSink + ?Sized> EventSink for Arc<S> {
    fn event(&self, event: &Event) {
        (**self).event(event)
    }
}

/// Forwards every event into an unbounded tokio channel.
///
/// ```
/// let (sink, mut rx) = deployer_core::ChannelSink::new();
/// # drop(sink); assert!(rx.try_recv().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct ChannelSink {
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl ChannelSink {
    /// A sink and the receiver of its events.
    pub fn new() -> (Self, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (ChannelSink { tx }, rx)
    }
}

impl EventSink for ChannelSink {
    fn event(&self, event: &Event) {
        // A dropped receiver means nobody listens any more; that is not the run's problem.
        let _ = self.tx.send(event.clone());
    }
}

pub(crate) mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e6)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

mod unix_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e6)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let v = f64::deserialize(d)?;
        let d = Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)?;
        Ok(UNIX_EPOCH + d)
    }
}
