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
    /// The task, of a rollback stage (see [`Finally::rollback`](crate::Finally::rollback)),
    /// switched its host back to the release it ran before.
    RolledBack,
}

impl TaskOutcome {
    /// Whether the task counts as successful (succeeded or skipped by its command).
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            TaskOutcome::Succeeded | TaskOutcome::Skipped { .. } | TaskOutcome::RolledBack
        )
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
            TaskOutcome::RolledBack => f.write_str("rolled back"),
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
    /// It ran to its end, but hosts failed within the failure budget and were dropped (see
    /// [`FailureBudget`](crate::FailureBudget)); `deploy` exits 4.
    Degraded,
}

impl RunOutcome {
    /// Whether it went on to its end: succeeded, or degraded (hosts dropped within the
    /// failure budget).
    pub fn completed(self) -> bool {
        matches!(self, RunOutcome::Succeeded | RunOutcome::Degraded)
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Degraded => "completed within its failure budget",
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
    /// run (`task_finished`, `task_not_run`, `task_dropped`, `task_done_earlier`,
    /// `stage_skipped`, `stage_finished`, `run_finished`): reporters read totals here instead
    /// of recounting. On `run_finished` they equal
    /// [`RunReport::counts`](crate::RunReport::counts). Every task of the plan ends with
    /// exactly one of those four task events.
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

/// What became of one task: the categories every count of the project uses — the recap's
/// table and last line, the `stats` of JSON events, `runs show` and `runs list`.
///
/// Each task of a run ends in exactly one category. Later categories (hosts dropped by a
/// failure budget, hosts rolled back) are added here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskCategory {
    /// Its command succeeded in this attempt of the run.
    Succeeded,
    /// It was done by an earlier attempt of the run (before a resume) and not run again.
    DoneEarlier,
    /// Its command found nothing to do (the reason is in its outcome).
    Skipped,
    /// It failed or timed out on its last attempt.
    Failed,
    /// A hard cancellation (a second Ctrl-C) stopped it while it ran.
    Cancelled,
    /// It never started: its stage stopped starting tasks, an earlier step of its chain
    /// failed, its host was removed, or the run was cancelled before it.
    NotRun,
    /// It rolled its host back to the release before (a task of a rollback stage that
    /// succeeded): one per host rolled back.
    RolledBack,
    /// It never started because its host was dropped: the host failed earlier within the
    /// run's failure budget (see [`FailureBudget`](crate::FailureBudget)).
    Dropped,
}

impl TaskCategory {
    /// The category of a task that ended with `outcome`.
    pub fn of_outcome(outcome: &TaskOutcome) -> TaskCategory {
        match outcome {
            TaskOutcome::Succeeded => TaskCategory::Succeeded,
            TaskOutcome::Skipped { .. } => TaskCategory::Skipped,
            TaskOutcome::Failed { .. } | TaskOutcome::TimedOut { .. } => TaskCategory::Failed,
            TaskOutcome::Cancelled => TaskCategory::Cancelled,
            TaskOutcome::RolledBack => TaskCategory::RolledBack,
        }
    }

    /// The category of the event that ends a task (`task_finished`, `task_not_run`,
    /// `task_dropped`, `task_done_earlier`), `None` for every other event.
    pub fn of_event(kind: &EventKind) -> Option<TaskCategory> {
        match kind {
            EventKind::TaskFinished { outcome, .. } => Some(TaskCategory::of_outcome(outcome)),
            EventKind::TaskNotRun { .. } => Some(TaskCategory::NotRun),
            EventKind::TaskDoneEarlier { .. } => Some(TaskCategory::DoneEarlier),
            EventKind::TaskDropped { .. } => Some(TaskCategory::Dropped),
            _ => None,
        }
    }

    /// The category of a stored task record of a run whose current attempt is `drive`
    /// ([`RunRecord::drives`](crate::RunRecord::drives)): a task done by an earlier drive is
    /// [`DoneEarlier`](Self::DoneEarlier); a task still pending or running counts as not run.
    pub fn of_record(task: &crate::TaskRecord, drive: u32) -> TaskCategory {
        use crate::TaskState as S;
        match task.state {
            S::Succeeded | S::Skipped if task.drive.is_some_and(|d| d < drive) => {
                TaskCategory::DoneEarlier
            }
            S::Succeeded => TaskCategory::Succeeded,
            S::Skipped => TaskCategory::Skipped,
            S::Failed | S::TimedOut => TaskCategory::Failed,
            S::Cancelled => TaskCategory::Cancelled,
            S::RolledBack => TaskCategory::RolledBack,
            S::Dropped => TaskCategory::Dropped,
            S::Pending | S::Running | S::NotRun => TaskCategory::NotRun,
        }
    }
}

/// How many tasks of a run (or of one host, or one stage) ended in each [`TaskCategory`]:
/// running totals on events, final ones in the report, recounted from the store by `runs show`.
/// Its [`Display`](fmt::Display) is the one line every report prints.
///
/// ```
/// use deployer_core::{TaskCategory, TaskCounts};
/// let mut counts = TaskCounts::default();
/// for c in [TaskCategory::Succeeded, TaskCategory::Succeeded, TaskCategory::Failed,
///           TaskCategory::DoneEarlier, TaskCategory::NotRun] {
///     counts.add(c);
/// }
/// assert_eq!(counts.to_string(), "2 ok, 1 done earlier, 1 failed, 1 not run");
/// assert_eq!(TaskCounts::default().to_string(), "nothing to do");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskCounts {
    /// Succeeded in this attempt.
    pub succeeded: usize,
    /// Done by an earlier attempt of the run, not run again.
    #[serde(default)]
    pub done_earlier: usize,
    /// Skipped by their command.
    pub skipped: usize,
    /// Failed or timed out.
    pub failed: usize,
    /// Stopped by a hard cancellation.
    #[serde(default)]
    pub cancelled: usize,
    /// Never started.
    pub not_run: usize,
    /// Rolled their host back (one per host rolled back).
    #[serde(default)]
    pub rolled_back: usize,
    /// Never started because their host was dropped within the failure budget.
    #[serde(default)]
    pub dropped: usize,
}

impl TaskCounts {
    /// Tasks counted so far.
    pub fn total(&self) -> usize {
        self.succeeded
            + self.done_earlier
            + self.skipped
            + self.failed
            + self.cancelled
            + self.not_run
            + self.rolled_back
            + self.dropped
    }

    /// Counts one task ending in `category`.
    pub fn add(&mut self, category: TaskCategory) {
        *match category {
            TaskCategory::Succeeded => &mut self.succeeded,
            TaskCategory::DoneEarlier => &mut self.done_earlier,
            TaskCategory::Skipped => &mut self.skipped,
            TaskCategory::Failed => &mut self.failed,
            TaskCategory::Cancelled => &mut self.cancelled,
            TaskCategory::NotRun => &mut self.not_run,
            TaskCategory::RolledBack => &mut self.rolled_back,
            TaskCategory::Dropped => &mut self.dropped,
        } += 1;
    }

    /// Counts the event if it ends a task ([`TaskCategory::of_event`]); true if it did.
    pub fn count(&mut self, kind: &EventKind) -> bool {
        match TaskCategory::of_event(kind) {
            Some(category) => {
                self.add(category);
                true
            }
            None => false,
        }
    }

    /// The counts of a stored run's task records ([`TaskCategory::of_record`]).
    pub fn of_records<'a>(
        run: &crate::RunRecord,
        tasks: impl IntoIterator<Item = &'a crate::TaskRecord>,
    ) -> TaskCounts {
        let mut counts = TaskCounts::default();
        for task in tasks {
            counts.add(TaskCategory::of_record(task, run.drives));
        }
        counts
    }

    /// Whether there was nothing to do: no task at all.
    pub fn is_nothing_to_do(&self) -> bool {
        self.total() == 0
    }

    /// Each category with its count, in the order reports print them.
    pub fn categories(&self) -> [(TaskCategory, usize, &'static str); 8] {
        [
            (TaskCategory::Succeeded, self.succeeded, "ok"),
            (TaskCategory::DoneEarlier, self.done_earlier, "done earlier"),
            (TaskCategory::Failed, self.failed, "failed"),
            (TaskCategory::Skipped, self.skipped, "skipped"),
            (TaskCategory::Cancelled, self.cancelled, "cancelled"),
            (TaskCategory::Dropped, self.dropped, "dropped"),
            (TaskCategory::NotRun, self.not_run, "not run"),
            (TaskCategory::RolledBack, self.rolled_back, "rolled back"),
        ]
    }
}

impl fmt::Display for TaskCounts {
    /// `7 ok, 1 failed, 1 skipped, 2 not run`: every category that is not zero, in the order
    /// of [`categories`](Self::categories); `nothing to do` when there is no task.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_nothing_to_do() {
            return f.write_str("nothing to do");
        }
        let mut first = true;
        for (_, n, label) in self.categories() {
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n} {label}")?;
        }
        Ok(())
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
    /// A task was never started because its host was dropped: the host failed earlier,
    /// within the failure budget (see [`FailureBudget`](crate::FailureBudget)).
    TaskDropped {
        /// The task.
        #[serde(flatten)]
        task: TaskInfo,
        /// Why its host was dropped (the failure that dropped it).
        reason: String,
    },
    /// A host failed within the run's failure budget and is dropped from the rest of the run:
    /// its later tasks are not run (`task_dropped`), its `finally` stages still run, the other
    /// hosts go on. Sent once per host, right after the failure.
    HostDropped {
        /// The host key.
        host: String,
        /// The stage it failed in.
        stage: usize,
        /// What failed: the task's path and command, and its error.
        reason: String,
        /// Hosts failed so far in the run, this one included.
        failed_hosts: usize,
        /// The budget it was counted against (`max_failures 10`, …).
        budget: String,
    },
    /// A task was done by an earlier attempt of the run (before a resume) and is not run
    /// again; sent when its stage starts or is skipped.
    TaskDoneEarlier {
        /// The task.
        #[serde(flatten)]
        task: TaskInfo,
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
    /// A stage did not run because an earlier one failed or the run was cancelled (each of
    /// its tasks then gets its own `task_not_run` or `task_done_earlier`).
    StageSkipped {
        /// Its index.
        stage: usize,
        /// Its name.
        name: String,
        /// How many of its tasks did not run (tasks already done on resume are not counted).
        tasks: usize,
    },
    /// A manual step asked for an approval and waits for a decision (sent by the step's task
    /// once the request is stored; again by a resumed run's).
    ApprovalRequested {
        /// The manual step's task.
        #[serde(flatten)]
        task: TaskInfo,
        /// The step's path.
        step: String,
        /// What the step says to the people deciding it.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
        /// Who may decide it.
        approvers: crate::Approvers,
        /// Whether whoever started the run may not decide it.
        four_eyes: bool,
        /// Who started the run.
        started_by: String,
        /// What the run is about (a deployment), for role lookups.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// When it expires (seconds since the Unix epoch).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_unix_secs"
        )]
        expires_ts: Option<SystemTime>,
    },
    /// A manual step's approval was decided (the waiting task saw the decision).
    ApprovalDecided {
        /// The manual step's task.
        #[serde(flatten)]
        task: TaskInfo,
        /// The step's path.
        step: String,
        /// Approved or rejected.
        approved: bool,
        /// Who decided.
        by: String,
        /// When (seconds since the Unix epoch).
        #[serde(with = "unix_secs")]
        at: SystemTime,
        /// Why, if they said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// A worker of a distributed run ([`Worker`](crate::Worker)) claimed an entry and is about
    /// to run it: which worker ran which tasks. It counts no task.
    EntryClaimed {
        /// The worker's name ([`WorkerInfo::id`](crate::WorkerInfo::id)).
        worker: String,
        /// The entry's host key.
        host: String,
        /// The entry's tasks (one, or a chain's steps in order).
        tasks: Vec<TaskId>,
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

mod opt_unix_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::unix_secs::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(v) => std::time::Duration::try_from_secs_f64(v)
                .map(|d| Some(std::time::UNIX_EPOCH + d))
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod entry_claimed_tests {
    use super::*;

    #[test]
    fn entry_claimed_is_snake_case_json_and_counts_no_task() {
        let kind = EventKind::EntryClaimed {
            worker: "w-eu:12:ab".into(),
            host: "web1".into(),
            tasks: vec![TaskId {
                stage: 1,
                entry: 2,
                step: Some(0),
            }],
        };
        let json = serde_json::to_value(Event::new(Duration::ZERO, kind.clone())).unwrap();
        assert_eq!(json["event"], "entry_claimed", "{json}");
        assert_eq!(json["worker"], "w-eu:12:ab", "{json}");
        assert_eq!(json["host"], "web1", "{json}");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back.kind, kind);
        assert_eq!(TaskCategory::of_event(&kind), None);
    }
}
