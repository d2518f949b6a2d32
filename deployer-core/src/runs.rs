//! Durable run records: the `RunStore` trait, its records, and an in-memory backend.
//!
//! A run record holds a full copy of the tasklist it runs, per-host state (`PENDING` at start,
//! `ADDED`/`REMOVED` for hosts that join or leave the targeted set while it runs, then
//! running/done/failed/skipped) and per-task state. Finishing stamps `finish_ts` on the run and
//! on every host and task record; finished runs older than a TTL are purged.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::approvals::{Approval, ApprovalRequest, Decision};
use crate::errors::BoxError;
use crate::events::{TaskCounts, TaskId, TaskInfo};
use crate::plan::Plan;
use crate::run_views::{CancelRequest, ChangeFeed, ChangeNotifier, HostRun, RunQuery, RunSummary};
use crate::tasklist::Tasklist;

/// How much of a task's output its record keeps ([`TaskRecord::output_tail`]): the last
/// 64 KiB.
pub const OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// Identifies a run: a UUID (version 7, so ids sort by creation time).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// A new, unique id.
    pub fn new() -> Self {
        RunId(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(|u| RunId(u.to_string()))
            .map_err(|_| StoreError::InvalidId { id: s.to_string() })
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// The stored spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(StoreError::Corrupt {
                        message: format!("unknown {} \"{other}\"", stringify!($name)),
                    }),
                }
            }
        }
    };
}

string_enum! {
    /// State of a run as a whole.
    RunState {
        /// Created, not started yet.
        Pending = "PENDING",
        /// Being driven by a controller (or interrupted, if its lease expired).
        Running = "RUNNING",
        /// Every task succeeded.
        Succeeded = "SUCCEEDED",
        /// A task failed.
        Failed = "FAILED",
        /// Cancelled by a person or a signal.
        Cancelled = "CANCELLED",
        /// Ran to its end with hosts dropped within the failure budget; a resume runs what
        /// they did not finish.
        Degraded = "DEGRADED",
    }
}

string_enum! {
    /// State of one targeted host within a run.
    HostState {
        /// Targeted at the start, nothing done yet.
        Pending = "PENDING",
        /// Joined the targeted set while the run went on.
        Added = "ADDED",
        /// Left the targeted set while the run went on; its pending tasks are skipped.
        Removed = "REMOVED",
        /// A task is running on it.
        Running = "RUNNING",
        /// All its tasks succeeded.
        Done = "DONE",
        /// One of its tasks failed.
        Failed = "FAILED",
        /// None of its tasks ran.
        Skipped = "SKIPPED",
        /// A task failed, and the host was switched back to the release it ran before.
        RolledBack = "ROLLED_BACK",
        /// A task failed within the failure budget: the host was dropped from the rest of the
        /// run (its later tasks did not run).
        Dropped = "DROPPED",
    }
}

string_enum! {
    /// State of one task within a run.
    TaskState {
        /// Not started.
        Pending = "PENDING",
        /// Started (an attempt is in flight, or the controller died while it was).
        Running = "RUNNING",
        /// Succeeded.
        Succeeded = "SUCCEEDED",
        /// Its command found nothing to do.
        Skipped = "SKIPPED",
        /// Failed on its last attempt.
        Failed = "FAILED",
        /// Timed out on its last attempt.
        TimedOut = "TIMED_OUT",
        /// Stopped by a hard cancellation.
        Cancelled = "CANCELLED",
        /// Never started (stage stopped, chain broken, host removed).
        NotRun = "NOT_RUN",
        /// A rollback task that switched its host back to the release before.
        RolledBack = "ROLLED_BACK",
        /// Never started: its host was dropped within the failure budget.
        Dropped = "DROPPED",
    }
}

impl TaskState {
    /// Whether the task is done for good (a resume does not run it again).
    pub fn is_done(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Skipped | TaskState::RolledBack
        )
    }
}

impl RunState {
    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::Degraded
        )
    }
}

/// What a new run needs: the plan's tasklist (copied into the record), where it came from, and
/// who started it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Id to create the run under (default: a new one).
    pub id: RunId,
    /// The tasklist's name.
    pub name: String,
    /// Where the plan came from: `tasklist:deploy.json`, `generator:release`,
    /// `book:deploy@1.2.0`.
    pub source: String,
    /// Who started it (a user name, a CI job).
    pub started_by: String,
    /// A full copy of what runs, with inline secrets redacted (`{"secret": "***"}`): a store
    /// never holds a secret, so a resume needs them again (see
    /// [`ResumeOptions::secrets_from`](crate::ResumeOptions::secrets_from)).
    pub tasklist: Tasklist,
    /// Every task, each with its host.
    pub tasks: Vec<TaskInfo>,
    /// Under which key each task's duration is kept for estimates, where it is not its command
    /// name (books key theirs by `book/step`). See [`with_history_keys`](Self::with_history_keys).
    pub history_keys: std::collections::HashMap<TaskId, String>,
}

impl NewRun {
    /// A new run of `plan`; its copy of the tasklist has the inline secrets redacted.
    pub fn from_plan(
        plan: &Plan,
        source: impl Into<String>,
        started_by: impl Into<String>,
    ) -> Self {
        NewRun {
            id: RunId::new(),
            name: plan.tasklist().name.clone(),
            source: source.into(),
            started_by: started_by.into(),
            tasklist: plan.tasklist().redacted(),
            tasks: plan.tasks().cloned().collect(),
            history_keys: Default::default(),
        }
    }

    /// Keeps the duration of each task for which `key` gives a key under that key instead of
    /// its command name ([`RunStore::average_duration`] reads them back).
    ///
    /// ```
    /// # use deployer_core::{CommandRegistry, NewRun, Plan, Stage, Task, Tasklist};
    /// # let mut commands = CommandRegistry::new();
    /// # commands.register::<deployer_core::fixture::Noop>("restart");
    /// # let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).task(Task::new("restart")));
    /// # let plan = Plan::build(&tasklist, &commands).unwrap();
    /// let run = NewRun::from_plan(&plan, "book:web", "alice")
    ///     .with_history_keys(|task| Some(format!("web/{}", task.command)));
    /// assert_eq!(run.task_record(&run.tasks[0]).history_key, "web/restart");
    /// ```
    pub fn with_history_keys(mut self, key: impl Fn(&TaskInfo) -> Option<String>) -> Self {
        for task in &self.tasks {
            if let Some(k) = key(task) {
                self.history_keys.insert(task.id, k);
            }
        }
        self
    }

    /// The pending record of `task` (one of [`tasks`](Self::tasks)) a store creates, with its
    /// history key.
    pub fn task_record(&self, task: &TaskInfo) -> TaskRecord {
        let mut record = TaskRecord::pending(task);
        if let Some(key) = self.history_keys.get(&task.id) {
            record.history_key = key.clone();
        }
        record
    }

    /// The distinct hosts of its tasks, in first-seen order.
    pub fn hosts(&self) -> Vec<String> {
        let mut seen = indexmap::IndexSet::new();
        for t in &self.tasks {
            seen.insert(t.host.clone());
        }
        seen.into_iter().collect()
    }
}

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Its id.
    pub id: RunId,
    /// The tasklist's name.
    pub name: String,
    /// Where the plan came from.
    pub source: String,
    /// Who started it.
    pub started_by: String,
    /// Its state.
    pub state: RunState,
    /// The full copy of what runs.
    pub tasklist: Tasklist,
    /// When it was created.
    pub created_ts: SystemTime,
    /// When a controller first started it.
    pub started_ts: Option<SystemTime>,
    /// When it finished.
    pub finish_ts: Option<SystemTime>,
    /// The controller driving it, while one holds the lease.
    pub owner: Option<String>,
    /// When that controller's lease expires unless renewed.
    pub lease_expires: Option<SystemTime>,
    /// How many times a controller started driving it: 1 after the first start, 2 after a
    /// resume, … (0 before it starts). Tasks done by an earlier drive count as
    /// [`TaskCategory::DoneEarlier`](crate::TaskCategory::DoneEarlier).
    pub drives: u32,
}

impl RunRecord {
    /// Whether a controller holds a live lease at `now`.
    pub fn is_claimed(&self, now: SystemTime) -> bool {
        self.owner.is_some() && self.lease_expires.is_some_and(|t| t > now)
    }
}

/// A stored run that cannot be read back — a value this version does not know (a state added
/// by a newer version), or a row changed outside the store. [`RunStore::list_runs`] lists it
/// marked, so one such run never hides the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableRun {
    /// Its id as stored (`?` when even that cannot be read).
    pub id: String,
    /// What is wrong, naming the run and the column: `run 0190…: column state: unknown
    /// RunState "EXPLODED"`. [`RunStore::run`] fails with the same as [`StoreError::Corrupt`].
    pub problem: String,
}

impl fmt::Display for UnreadableRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem)
    }
}

/// One entry of [`RunStore::list_runs`]: a run, or a stored run that cannot be read back.
#[derive(Debug, Clone, PartialEq)]
pub enum ListedRun {
    /// A run that reads back (boxed: a record holds its whole tasklist).
    Run(Box<RunRecord>),
    /// A run that does not (see [`UnreadableRun`]).
    Unreadable(UnreadableRun),
}

impl ListedRun {
    /// The run's id as text.
    pub fn id(&self) -> &str {
        match self {
            ListedRun::Run(r) => r.id.as_str(),
            ListedRun::Unreadable(u) => &u.id,
        }
    }

    /// The record, when the run reads back.
    pub fn record(&self) -> Option<&RunRecord> {
        match self {
            ListedRun::Run(r) => Some(r),
            ListedRun::Unreadable(_) => None,
        }
    }

    /// The record, when the run reads back.
    pub fn into_record(self) -> Option<RunRecord> {
        match self {
            ListedRun::Run(r) => Some(*r),
            ListedRun::Unreadable(_) => None,
        }
    }
}

/// The state of one host within a run.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    /// The host key.
    pub host: String,
    /// Its state.
    pub state: HostState,
    /// Last change.
    pub updated_ts: SystemTime,
    /// Stamped when the run finished.
    pub finish_ts: Option<SystemTime>,
}

/// The state of one task within a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// Its position.
    pub id: TaskId,
    /// Its host key.
    pub host: String,
    /// Its tag.
    pub tag: Option<String>,
    /// Its command name.
    pub command: String,
    /// What durations are averaged under (the command name; books use `book/step`).
    pub history_key: String,
    /// Its state.
    pub state: TaskState,
    /// Attempts started.
    pub attempts: u32,
    /// When its first attempt started.
    pub started_ts: Option<SystemTime>,
    /// When it ended.
    pub finished_ts: Option<SystemTime>,
    /// Time from its first attempt's start to its end.
    pub duration: Option<Duration>,
    /// Exit status of the failing process.
    pub exit_status: Option<i32>,
    /// Tail of its stderr.
    pub stderr_tail: Option<String>,
    /// The last [`OUTPUT_TAIL_BYTES`] of its output, written when it ends: stdout and stderr
    /// lines as they came, stderr lines marked `[stderr] `, secrets redacted.
    pub output_tail: Option<String>,
    /// The error or skip reason.
    pub error: Option<String>,
    /// Stamped when the run finished.
    pub finish_ts: Option<SystemTime>,
    /// Which drive of the run ([`RunRecord::drives`]) last started or ended it; `None` until
    /// one does.
    pub drive: Option<u32>,
    /// Which worker last recorded it (a distributed run, [`crate::WorkQueue::record_task`]);
    /// `None` when a controller drove it.
    pub worker: Option<String>,
}

impl TaskRecord {
    /// A pending task record.
    pub fn pending(info: &TaskInfo) -> Self {
        TaskRecord {
            id: info.id,
            host: info.host.clone(),
            tag: info.tag.clone(),
            command: info.command.clone(),
            history_key: info.command.clone(),
            state: TaskState::Pending,
            attempts: 0,
            started_ts: None,
            finished_ts: None,
            duration: None,
            exit_status: None,
            stderr_tail: None,
            output_tail: None,
            error: None,
            finish_ts: None,
            drive: None,
            worker: None,
        }
    }
}

/// Failure of a run store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No run with this id.
    #[error("no run with id {id}")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The text is not a run id.
    #[error("\"{id}\" is not a run id (expected a UUID)")]
    InvalidId {
        /// The text.
        id: String,
    },
    /// Another controller drives this run.
    #[error("run {id} is being driven by {owner} (lease valid for another {remaining:?})")]
    LeaseHeld {
        /// The run.
        id: RunId,
        /// The controller holding it.
        owner: String,
        /// How long until its lease expires unless renewed.
        remaining: Duration,
    },
    /// This controller no longer holds the lease (it expired and another took it).
    #[error("run {id}: lease of {owner} was lost")]
    LeaseLost {
        /// The run.
        id: RunId,
        /// This controller.
        owner: String,
    },
    /// The run has no approval request for this step.
    #[error("run {run} has no approval request for step {step}")]
    NoApproval {
        /// The run.
        run: RunId,
        /// The step asked for.
        step: String,
    },
    /// The approval can no longer be decided: it was decided already, or it expired.
    #[error("step {step} of run {run} cannot be decided: {why}")]
    ApprovalClosed {
        /// The run.
        run: RunId,
        /// The step.
        step: String,
        /// What became of it (`approved by bob at …`, `expired at …`).
        why: String,
    },
    /// The run has finished: it can no longer be cancelled.
    #[error("run {id} has finished ({state})")]
    RunFinished {
        /// The run.
        id: RunId,
        /// How it ended.
        state: RunState,
    },
    /// A submitted run cannot be handed back to workers now
    /// ([`WorkQueue::resume_work`](crate::WorkQueue::resume_work)).
    #[error("run {id} cannot be resumed: {why}")]
    NotResumable {
        /// The run.
        id: RunId,
        /// Why (still running; succeeded; stopped on an entry that is not idempotent, named,
        /// and resumable only with force).
        why: String,
    },
    /// Stored data could not be read back.
    #[error("corrupt run record: {message}")]
    Corrupt {
        /// What is wrong.
        message: String,
    },
    /// The backend failed (connection, SQL, I/O).
    #[error("run store: {message}")]
    Backend {
        /// What was being done.
        message: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
}

/// Where runs are kept. Implementations: [`MemoryStore`] (here, for tests and short-lived
/// tools) and SQLite / PostgreSQL in `deployer-store`.
///
/// # Contract
///
/// * Every method is atomic: a failure leaves the record as it was.
/// * Updates to a run's hosts and tasks are accepted only while the run exists; they do not
///   check the lease (the controller checks it through [`renew`](Self::renew)).
/// * [`claim`](Self::claim) is the only way two controllers coordinate: it succeeds for the
///   current owner, for a run nobody holds, or for a run whose lease expired, and for nobody
///   else — atomically, also across processes sharing a server backend.
/// * Timestamps are stored with at least microsecond precision.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Creates the run record with every host `PENDING` and every task `PENDING`, each task
    /// recorded as [`NewRun::task_record`] makes it (with its history key).
    async fn create_run(&self, run: NewRun) -> Result<RunRecord, StoreError>;

    /// The run record.
    async fn run(&self, id: &RunId) -> Result<RunRecord, StoreError>;

    /// Runs, newest first, at most `limit`. A stored run that cannot be read back is listed as
    /// [`ListedRun::Unreadable`] in its place: one bad row never fails the listing (only the
    /// backend itself failing does).
    async fn list_runs(&self, limit: usize) -> Result<Vec<ListedRun>, StoreError>;

    /// The run's host records, in the order hosts were first targeted.
    async fn hosts(&self, id: &RunId) -> Result<Vec<HostRecord>, StoreError>;

    /// The run's task records, in tasklist order, without their output
    /// ([`TaskRecord::output_tail`] is `None`): a whole run's tasks are read for every page,
    /// recap and resume, and 64 KiB a task would make that hundreds of MiB on a big fleet.
    /// [`host_tasks`](Self::host_tasks) reads one host's with their output.
    async fn tasks(&self, id: &RunId) -> Result<Vec<TaskRecord>, StoreError>;

    /// The task records of `host` in the run, in tasklist order, each with its output tail.
    async fn host_tasks(&self, id: &RunId, host: &str) -> Result<Vec<TaskRecord>, StoreError>;

    /// Takes or renews the lease of `owner` on the run for `ttl`; fails with
    /// [`StoreError::LeaseHeld`] while another owner's lease is live.
    async fn claim(&self, id: &RunId, owner: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Extends `owner`'s lease; fails with [`StoreError::LeaseLost`] if it no longer holds it.
    async fn renew(&self, id: &RunId, owner: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Gives up `owner`'s lease (no error if it holds none).
    async fn release(&self, id: &RunId, owner: &str) -> Result<(), StoreError>;

    /// Sets the run's state; `RUNNING` also sets `started_ts` the first time and counts one
    /// more drive ([`RunRecord::drives`]): a controller sets it once each time it starts
    /// driving the run.
    async fn set_run_state(&self, id: &RunId, state: RunState) -> Result<(), StoreError>;

    /// Sets one host's state, adding the host record when it is new.
    async fn set_host_state(
        &self,
        id: &RunId,
        host: &str,
        state: HostState,
    ) -> Result<(), StoreError>;

    /// Replaces one task's record (matched by `task.id`).
    async fn update_task(&self, id: &RunId, task: &TaskRecord) -> Result<(), StoreError>;

    /// Ends the run in `state`, stamping `finish_ts` on the run and on every host and task
    /// record, and releasing any lease.
    async fn finish_run(&self, id: &RunId, state: RunState) -> Result<(), StoreError>;

    /// Deletes finished runs (and their host and task records) whose `finish_ts` is older than
    /// `before`; returns how many runs were deleted.
    async fn purge_finished(&self, before: SystemTime) -> Result<usize, StoreError>;

    /// The average duration of successful tasks recorded under `history_key`, over all runs.
    async fn average_duration(&self, history_key: &str) -> Result<Option<Duration>, StoreError>;

    /// Asks for the approval of a manual step, stamped `requested_ts` now. A run has one
    /// approval per step: when one exists already (a resumed run asks again) it is returned
    /// as stored, decision included, and the request is ignored. Fails with
    /// [`StoreError::NotFound`] when the run does not exist.
    async fn request_approval(&self, request: ApprovalRequest) -> Result<Approval, StoreError>;

    /// Stores `decision` on the approval of `step` in `run`, atomically — also across
    /// processes: only a pending approval whose expiry is after `decision.at` is decided, and
    /// only once. Otherwise fails with [`StoreError::ApprovalClosed`] (saying what became of
    /// it) or [`StoreError::NoApproval`]. Who may decide is not checked here: see
    /// [`decide`](crate::decide).
    async fn decide(
        &self,
        run: &RunId,
        step: &str,
        decision: Decision,
    ) -> Result<Approval, StoreError>;

    /// The run's approvals, in the order they were requested.
    async fn approvals(&self, run: &RunId) -> Result<Vec<Approval>, StoreError>;

    /// Every approval waiting for a decision (undecided, unexpired, of an unfinished run),
    /// oldest first.
    async fn pending_approvals(&self) -> Result<Vec<Approval>, StoreError>;

    /// Asks the controller driving run `id` to cancel it, as `by` (a person's name): stored
    /// with the run, so a controller in any process sharing the store sees it (`Runs` looks
    /// about every second) and cancels as a first cancel does. The first request stands: a
    /// second returns it unchanged. Fails with [`StoreError::RunFinished`] when the run has
    /// finished, [`StoreError::NotFound`] when there is no such run.
    async fn request_cancel(&self, id: &RunId, by: &str) -> Result<CancelRequest, StoreError>;

    /// The cancel request stored for run `id`, if any.
    async fn cancel_request(&self, id: &RunId) -> Result<Option<CancelRequest>, StoreError>;

    /// Where run `id` stands with workers when it was submitted to them
    /// ([`WorkQueue::work_status`](crate::WorkQueue::work_status)): what a viewer shows
    /// (workers and their claims, zones no live worker serves, why it stopped). `None` for a
    /// run never submitted and for a store without workers (the default). (Not named
    /// `work_status`: a `dyn WorkQueue` would then have two methods of that name.)
    async fn submitted_work(&self, id: &RunId) -> Result<Option<crate::WorkStatus>, StoreError> {
        let _ = id;
        Ok(None)
    }

    /// A feed of this store's changes, for viewers: it wakes after any write, by this process
    /// or another sharing the store. The default ticks every second (a store that cannot
    /// tell); the SQL stores watch the database.
    fn changes(&self) -> ChangeFeed {
        ChangeFeed::ticking(Duration::from_secs(1))
    }

    /// Runs matching `query`, newest first, each as a [`RunSummary`] (no tasklist: a page of
    /// runs stays cheap whatever their size), or, for a stored run that cannot be read back,
    /// its [`UnreadableRun`] in its place (listed only by a query without filters). The
    /// default reads every run through [`list_runs`](Self::list_runs); the SQL stores filter,
    /// count and page in the database.
    async fn find_runs(
        &self,
        query: &RunQuery,
    ) -> Result<Vec<Result<RunSummary, UnreadableRun>>, StoreError> {
        let unfiltered = query.state.is_none()
            && query.started_by.is_none()
            && query.name.is_none()
            && query.since.is_none()
            && query.until.is_none();
        let mut out = Vec::new();
        let mut skipped = 0;
        for listed in self.list_runs(usize::MAX).await? {
            if out.len() >= query.limit {
                break;
            }
            let run = match listed {
                ListedRun::Run(r) if query.matches(&r) => Ok(r),
                ListedRun::Unreadable(u) if unfiltered => Err(u),
                _ => continue,
            };
            if skipped < query.offset {
                skipped += 1;
                continue;
            }
            out.push(match run {
                Ok(r) => {
                    let hosts = self.hosts(&r.id).await?.len();
                    let counts = TaskCounts::of_records(&r, &self.tasks(&r.id).await?);
                    Ok(RunSummary::of(&r, hosts, counts))
                }
                Err(u) => Err(u),
            });
        }
        Ok(out)
    }

    /// The runs that targeted `host`, newest first, at most `limit`: what each did there.
    /// The default reads every run through [`list_runs`](Self::list_runs).
    async fn host_history(&self, host: &str, limit: usize) -> Result<Vec<HostRun>, StoreError> {
        let mut out = Vec::new();
        for listed in self.list_runs(usize::MAX).await? {
            if out.len() >= limit {
                break;
            }
            let Some(r) = listed.into_record() else {
                continue;
            };
            if let Some(h) = self
                .hosts(&r.id)
                .await?
                .into_iter()
                .find(|h| h.host == host)
            {
                out.push(HostRun {
                    run: r.id,
                    name: r.name,
                    source: r.source,
                    started_by: r.started_by,
                    run_state: r.state,
                    host_state: h.state,
                    created_ts: r.created_ts,
                    updated_ts: h.updated_ts,
                    finish_ts: r.finish_ts,
                });
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone)]
struct MemRun {
    record: RunRecord,
    hosts: Vec<HostRecord>,
    tasks: BTreeMap<TaskId, TaskRecord>,
    approvals: Vec<Approval>,
    cancel: Option<CancelRequest>,
}

/// A [`RunStore`] in memory: for tests and for tools that need no durability.
///
/// ```
/// use deployer_core::*;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let plan = Plan::build(&Tasklist::new("empty"), &CommandRegistry::new()).unwrap();
/// let run = store.create_run(NewRun::from_plan(&plan, "test", "me")).await.unwrap();
/// assert_eq!(store.run(&run.id).await.unwrap().state, RunState::Pending);
/// # });
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    runs: Mutex<HashMap<RunId, MemRun>>,
    changes: ChangeNotifier,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_run<T>(
        &self,
        id: &RunId,
        f: impl FnOnce(&mut MemRun) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let run = runs
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound { id: id.to_string() })?;
        f(run)
    }

    /// [`with_run`](Self::with_run) for a write: watchers are told.
    fn write_run<T>(
        &self,
        id: &RunId,
        f: impl FnOnce(&mut MemRun) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let out = self.with_run(id, f);
        if out.is_ok() {
            self.changes.notify();
        }
        out
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn create_run(&self, run: NewRun) -> Result<RunRecord, StoreError> {
        let now = SystemTime::now();
        let record = RunRecord {
            id: run.id.clone(),
            name: run.name.clone(),
            source: run.source.clone(),
            started_by: run.started_by.clone(),
            state: RunState::Pending,
            tasklist: run.tasklist.clone(),
            created_ts: now,
            started_ts: None,
            finish_ts: None,
            owner: None,
            lease_expires: None,
            drives: 0,
        };
        let hosts = run
            .hosts()
            .into_iter()
            .map(|host| HostRecord {
                host,
                state: HostState::Pending,
                updated_ts: now,
                finish_ts: None,
            })
            .collect();
        let tasks = run
            .tasks
            .iter()
            .map(|t| (t.id, run.task_record(t)))
            .collect();
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if runs.contains_key(&run.id) {
            return Err(StoreError::Backend {
                message: format!("run {} already exists", run.id),
                source: "duplicate id".into(),
            });
        }
        runs.insert(
            run.id,
            MemRun {
                record: record.clone(),
                hosts,
                tasks,
                approvals: Vec::new(),
                cancel: None,
            },
        );
        drop(runs);
        self.changes.notify();
        Ok(record)
    }

    async fn run(&self, id: &RunId) -> Result<RunRecord, StoreError> {
        self.with_run(id, |r| Ok(r.record.clone()))
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<ListedRun>, StoreError> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<RunRecord> = runs.values().map(|r| r.record.clone()).collect();
        all.sort_by(|a, b| b.id.cmp(&a.id));
        all.truncate(limit);
        Ok(all
            .into_iter()
            .map(|r| ListedRun::Run(Box::new(r)))
            .collect())
    }

    async fn hosts(&self, id: &RunId) -> Result<Vec<HostRecord>, StoreError> {
        self.with_run(id, |r| Ok(r.hosts.clone()))
    }

    async fn tasks(&self, id: &RunId) -> Result<Vec<TaskRecord>, StoreError> {
        self.with_run(id, |r| {
            Ok(r.tasks
                .values()
                .map(|t| TaskRecord {
                    output_tail: None,
                    ..t.clone()
                })
                .collect())
        })
    }

    async fn host_tasks(&self, id: &RunId, host: &str) -> Result<Vec<TaskRecord>, StoreError> {
        self.with_run(id, |r| {
            Ok(r.tasks
                .values()
                .filter(|t| t.host == host)
                .cloned()
                .collect())
        })
    }

    async fn claim(&self, id: &RunId, owner: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = SystemTime::now();
        self.write_run(id, |r| {
            if let (Some(holder), Some(expires)) = (&r.record.owner, r.record.lease_expires)
                && holder != owner
                && expires > now
            {
                return Err(StoreError::LeaseHeld {
                    id: id.clone(),
                    owner: holder.clone(),
                    remaining: expires.duration_since(now).unwrap_or_default(),
                });
            }
            r.record.owner = Some(owner.to_string());
            r.record.lease_expires = Some(now + ttl);
            Ok(())
        })
    }

    async fn renew(&self, id: &RunId, owner: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = SystemTime::now();
        self.write_run(id, |r| {
            if r.record.owner.as_deref() != Some(owner) {
                return Err(StoreError::LeaseLost {
                    id: id.clone(),
                    owner: owner.to_string(),
                });
            }
            r.record.lease_expires = Some(now + ttl);
            Ok(())
        })
    }

    async fn release(&self, id: &RunId, owner: &str) -> Result<(), StoreError> {
        self.write_run(id, |r| {
            if r.record.owner.as_deref() == Some(owner) {
                r.record.owner = None;
                r.record.lease_expires = None;
            }
            Ok(())
        })
    }

    async fn set_run_state(&self, id: &RunId, state: RunState) -> Result<(), StoreError> {
        self.write_run(id, |r| {
            r.record.state = state;
            if state == RunState::Running {
                r.record.drives += 1;
                if r.record.started_ts.is_none() {
                    r.record.started_ts = Some(SystemTime::now());
                }
            }
            Ok(())
        })
    }

    async fn set_host_state(
        &self,
        id: &RunId,
        host: &str,
        state: HostState,
    ) -> Result<(), StoreError> {
        let now = SystemTime::now();
        self.write_run(id, |r| {
            match r.hosts.iter_mut().find(|h| h.host == host) {
                Some(h) => {
                    h.state = state;
                    h.updated_ts = now;
                }
                None => r.hosts.push(HostRecord {
                    host: host.to_string(),
                    state,
                    updated_ts: now,
                    finish_ts: None,
                }),
            }
            Ok(())
        })
    }

    async fn update_task(&self, id: &RunId, task: &TaskRecord) -> Result<(), StoreError> {
        self.write_run(id, |r| {
            r.tasks.insert(task.id, task.clone());
            Ok(())
        })
    }

    async fn finish_run(&self, id: &RunId, state: RunState) -> Result<(), StoreError> {
        let now = SystemTime::now();
        self.write_run(id, |r| {
            r.record.state = state;
            r.record.finish_ts = Some(now);
            r.record.owner = None;
            r.record.lease_expires = None;
            for h in &mut r.hosts {
                h.finish_ts = Some(now);
            }
            for t in r.tasks.values_mut() {
                t.finish_ts = Some(now);
            }
            Ok(())
        })
    }

    async fn purge_finished(&self, before: SystemTime) -> Result<usize, StoreError> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let n = runs.len();
        runs.retain(|_, r| r.record.finish_ts.is_none_or(|t| t >= before));
        Ok(n - runs.len())
    }

    async fn average_duration(&self, history_key: &str) -> Result<Option<Duration>, StoreError> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        // In nanoseconds as u128: a sum of long durations overflows a Duration.
        let mut total: u128 = 0;
        let mut count: u128 = 0;
        for r in runs.values() {
            for t in r.tasks.values() {
                if t.history_key == history_key
                    && t.state == TaskState::Succeeded
                    && let Some(d) = t.duration
                {
                    total = total.saturating_add(d.as_nanos());
                    count += 1;
                }
            }
        }
        Ok((count > 0).then(|| {
            let average = total / count;
            let secs = u64::try_from(average / 1_000_000_000).unwrap_or(u64::MAX);
            Duration::new(secs, (average % 1_000_000_000) as u32)
        }))
    }

    async fn request_approval(&self, request: ApprovalRequest) -> Result<Approval, StoreError> {
        let id = request.run.clone();
        self.write_run(&id, |r| {
            if let Some(existing) = r.approvals.iter().find(|a| a.request.step == request.step) {
                return Ok(existing.clone());
            }
            let approval = Approval {
                request,
                requested_ts: SystemTime::now(),
                decision: None,
            };
            r.approvals.push(approval.clone());
            Ok(approval)
        })
    }

    async fn decide(
        &self,
        run: &RunId,
        step: &str,
        decision: Decision,
    ) -> Result<Approval, StoreError> {
        self.write_run(run, |r| {
            let approval = r
                .approvals
                .iter_mut()
                .find(|a| a.request.step == step)
                .ok_or_else(|| StoreError::NoApproval {
                    run: run.clone(),
                    step: step.to_string(),
                })?;
            approval_closed(approval, decision.at)?;
            approval.decision = Some(decision);
            Ok(approval.clone())
        })
    }

    async fn approvals(&self, run: &RunId) -> Result<Vec<Approval>, StoreError> {
        self.with_run(run, |r| Ok(r.approvals.clone()))
    }

    async fn request_cancel(&self, id: &RunId, by: &str) -> Result<CancelRequest, StoreError> {
        self.write_run(id, |r| {
            if r.record.finish_ts.is_some() {
                return Err(StoreError::RunFinished {
                    id: id.clone(),
                    state: r.record.state,
                });
            }
            Ok(r.cancel
                .get_or_insert_with(|| CancelRequest {
                    by: by.to_string(),
                    ts: SystemTime::now(),
                })
                .clone())
        })
    }

    async fn cancel_request(&self, id: &RunId) -> Result<Option<CancelRequest>, StoreError> {
        self.with_run(id, |r| Ok(r.cancel.clone()))
    }

    fn changes(&self) -> ChangeFeed {
        self.changes.subscribe()
    }

    async fn pending_approvals(&self) -> Result<Vec<Approval>, StoreError> {
        let now = SystemTime::now();
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending: Vec<Approval> = runs
            .values()
            .filter(|r| r.record.finish_ts.is_none())
            .flat_map(|r| r.approvals.iter())
            .filter(|a| a.state(now) == crate::ApprovalState::Pending)
            .cloned()
            .collect();
        pending.sort_by_key(|a| a.requested_ts);
        Ok(pending)
    }
}

/// Fails with [`StoreError::ApprovalClosed`] unless `approval` can be decided at `at`: what
/// every store checks before it stores a decision.
pub fn approval_closed(approval: &Approval, at: SystemTime) -> Result<(), StoreError> {
    let why = match (&approval.decision, approval.request.expires_ts) {
        (Some(d), _) => format!("already {}", d.describe()),
        (None, Some(t)) if t <= at => {
            format!("it expired at {}", humantime::format_rfc3339_seconds(t))
        }
        (None, _) => return Ok(()),
    };
    Err(StoreError::ApprovalClosed {
        run: approval.request.run.clone(),
        step: approval.request.step.clone(),
        why,
    })
}
