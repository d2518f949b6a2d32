//! Distributed runs: a run submitted to a shared store is driven by several workers, each
//! claiming one entry (a task or a chain, on one host) at a time.
//!
//! The store holds the coordination ([`WorkQueue`], implemented on PostgreSQL by
//! `deployer-store`): which entries wait, which are claimed, by whom, under which lease. A
//! claim is taken in one transaction that checks what a single controller's scheduler checks
//! in memory — the stage barrier (only the lowest stage with unfinished entries is
//! claimable), the stage's `concurrency` and `concurrency_per_host` counted over every
//! worker, the abort rule (after a failure or a cancel nothing new is claimed; claimed entries
//! finish; `finally` stages still run) — and the worker's zones and commands. The failure
//! budgets (the run's and each stage's), `min_hosts_up` and the selection of `finally`
//! stages' entries are decided there too, under the run's lock, so a distributed run ends as
//! one controller's would. Every write a worker makes for a claim
//! carries the claim's fencing token ([`Claim::fence`]); the store refuses it with
//! [`StoreError::LeaseLost`] once the claim was lost (its lease lapsed and another worker took
//! the entry, or the run was reset), so no entry is ever recorded by two workers.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::events::TaskId;
use crate::runs::{RunId, RunStore, StoreError, TaskRecord};
use crate::{FailureBudget, Finally};

/// A worker as the store knows it: a name unique among live workers, the zones it serves and
/// the commands it has registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its name (default in `deploy worker`: `host:pid:random`).
    pub id: String,
    /// The zones whose hosts it may work on; empty: every zone, and hosts without one.
    pub zones: Vec<String>,
    /// The command names it has registered; it claims only entries of runs whose every
    /// command is among them.
    pub commands: Vec<String>,
}

impl WorkerInfo {
    /// Whether it serves a host of `zone` (`None`: a host without a zone, served by every
    /// worker).
    pub fn serves(&self, zone: Option<&str>) -> bool {
        match zone {
            None => true,
            Some(z) => self.zones.is_empty() || self.zones.iter().any(|w| w == z),
        }
    }
}

/// One entry of a submitted run, as the store keeps it for claiming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkEntry {
    /// Its stage (index in the tasklist).
    pub stage: usize,
    /// Its index within the stage.
    pub entry: usize,
    /// The host key its tasks run on (what `concurrency_per_host` counts).
    pub host: String,
    /// The zone of its host (inventory host var `zone`), if any.
    pub zone: Option<String>,
    /// Its tasks (one, or a chain's steps in order).
    pub tasks: Vec<TaskId>,
    /// Whether every one of its commands declares itself idempotent: an entry whose worker
    /// died is claimed again only then; otherwise the run stops and asks.
    pub idempotent: bool,
    /// The points its tasks make its host reach when they succeed (or are skipped by their
    /// command): `(task, point)` for each task with [`Task::reaches`](crate::Task::reaches).
    /// The store records them when the entry ends; `finally` stages select hosts by them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reaches: Vec<(TaskId, String)>,
}

/// What a run's stages allow, as the store enforces it across workers. Fields after
/// `concurrency_per_host` default when absent, so what older submissions stored still reads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StageLimits {
    /// Entries of the stage in flight at once, over every worker.
    pub concurrency: usize,
    /// Entries of the stage in flight at once on one host key, over every worker.
    pub concurrency_per_host: Option<usize>,
    /// Set on a `finally` stage: it runs after a failure or a cancel too, for the hosts its
    /// [`Finally`] selects (the store sorts its entries out when it becomes the lowest stage).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "finally_json"
    )]
    pub finally: Option<Finally>,
    /// The stage's own failure budget, counted over its hosts (unset: the run's).
    #[serde(default, with = "budget_json")]
    pub budget: FailureBudget,
    /// At least this many of the stage's hosts stay up (not failed, dropped, or at work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_hosts_up: Option<usize>,
    /// The number of distinct hosts of the stage (what its budget and `min_hosts_up` count
    /// over).
    #[serde(default)]
    pub hosts: usize,
}

/// The run's failure budget and the number of hosts it counts over, as the store holds them.
///
/// ```
/// use deployer_core::*;
/// use deployer_core::fixture::Noop;
/// let mut commands = CommandRegistry::new();
/// commands.register::<Noop>("noop");
/// let tasklist = Tasklist::new("t")
///     .budget(FailureBudget::max_failures(1))
///     .stage(Stage::new("s", 2).task(Task::new("noop").on("web1")).task(Task::new("noop").on("web2")))
///     .stage(Stage::new("cleanup", 2).finally(Finally::always()).task(Task::new("noop").on("web3")));
/// let plan = Plan::build(&tasklist, &commands).unwrap();
/// let s = Submission::of_plan(&plan, &RunId::new(), |_| None).unwrap();
/// // Counted over the hosts of ordinary stages only, as a single controller counts them.
/// assert_eq!(s.rules, RunRules { budget: FailureBudget::max_failures(1), hosts: 2 });
/// assert_eq!(s.stages[1].finally, Some(Finally::always()));
/// // Stored as JSON, read back whole (older stored stages read with defaults).
/// let json = serde_json::to_string(&s).unwrap();
/// assert_eq!(serde_json::from_str::<Submission>(&json).unwrap(), s);
/// let old: StageLimits = serde_json::from_str(r#"{"concurrency":3,"concurrency_per_host":null}"#).unwrap();
/// assert_eq!((old.concurrency, old.finally, old.hosts), (3, None, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunRules {
    /// The tasklist's failure budget, counted over every host of the run.
    #[serde(default, with = "budget_json")]
    pub budget: FailureBudget,
    /// The number of distinct hosts of the run's ordinary (not `finally`) stages.
    #[serde(default)]
    pub hosts: usize,
}

/// A run to hand to workers: its entries and the limits of its stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The run (created with [`RunStore::create_run`] first).
    pub run: RunId,
    /// Every command name the run uses: a worker missing one does not claim it.
    pub commands: Vec<String>,
    /// Per stage, in order.
    pub stages: Vec<StageLimits>,
    /// Every entry of every stage.
    pub entries: Vec<WorkEntry>,
    /// The run's failure budget and host count.
    #[serde(default)]
    pub rules: RunRules,
}

/// `FailureBudget` in JSON (it serializes only, for tasklists): the same keys, read back.
mod budget_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::FailureBudget;

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "FailureBudget")]
    struct Def {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_failures: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_fail_percentage: Option<u8>,
    }

    pub(super) fn serialize<S: Serializer>(v: &FailureBudget, s: S) -> Result<S::Ok, S::Error> {
        Def::serialize(v, s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FailureBudget, D::Error> {
        Def::deserialize(d)
    }
}

/// `Option<Finally>` in JSON, with every field (`Finally` serializes only, for tasklists).
mod finally_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::Finally;

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Finally")]
    struct Def {
        #[serde(default)]
        if_reached: Option<String>,
        #[serde(default)]
        unless_reached: Option<String>,
        #[serde(default)]
        rollback: bool,
        #[serde(default)]
        on_failure: bool,
    }

    #[derive(Serialize, Deserialize)]
    struct Wrap(#[serde(with = "Def")] Finally);

    pub(super) fn serialize<S: Serializer>(v: &Option<Finally>, s: S) -> Result<S::Ok, S::Error> {
        v.clone().map(Wrap).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Finally>, D::Error> {
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

/// An entry a worker holds: what to run, and the token every write about it must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The run.
    pub run: RunId,
    /// The entry's stage.
    pub stage: usize,
    /// The entry's index in its stage.
    pub entry: usize,
    /// Its host key.
    pub host: String,
    /// Its tasks.
    pub tasks: Vec<TaskId>,
    /// The worker holding it.
    pub worker: String,
    /// The fencing token: grows with every claim of this entry; a write with an older one is
    /// refused.
    pub fence: i64,
    /// When the claim lapses unless renewed.
    pub lease_expires: SystemTime,
}

/// How a claimed entry ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryOutcome {
    /// Every task succeeded (or was skipped by its command).
    Done,
    /// A task failed or timed out. In an ordinary stage the store counts the host against the
    /// failure budgets and `min_hosts_up`: within them the host is dropped (its later ordinary
    /// entries do not run) and the run goes on; past them the run aborts (nothing new of an
    /// ordinary stage is claimed anywhere; `finally` stages still run). In a `finally` stage
    /// it fails the run and stops nothing.
    Failed,
    /// The worker stopped it (a cancel it saw): the run is being cancelled.
    Cancelled,
}

/// Where a submitted run stands, as a follower (the submitting process, `runs show`, the web
/// viewer) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkStatus {
    /// Entries not claimed yet.
    pub pending: usize,
    /// Entries claimed now, by worker.
    pub claimed: Vec<(String, usize)>,
    /// Entries ended.
    pub ended: usize,
    /// Zones of pending entries that no live worker serves (a run waiting for them says so).
    pub unserved_zones: Vec<String>,
    /// The zones live workers serve, sorted (a worker serving every zone adds none): what a
    /// run waiting for [`unserved_zones`](Self::unserved_zones) shows next to them.
    pub served_zones: Vec<String>,
    /// Whether the run aborts (a failure past the budget, or a cancel): nothing new of an
    /// ordinary stage is claimed (`finally` stages still run).
    pub aborting: bool,
    /// Hosts dropped within the failure budget so far.
    pub dropped: usize,
    /// Why the run stopped waiting, when it did (an interrupted entry that is not idempotent).
    pub stopped: Option<String>,
}

impl WorkStatus {
    /// One notice per zone in [`unserved_zones`](Self::unserved_zones), worded the same
    /// wherever a waiting run is shown (the submitting `deploy`, `deploy runs show`, the web
    /// viewer).
    ///
    /// ```
    /// use deployer_core::WorkStatus;
    ///
    /// let status = WorkStatus {
    ///     unserved_zones: vec!["eu".into()],
    ///     served_zones: vec!["us".into()],
    ///     ..WorkStatus::default()
    /// };
    /// assert_eq!(
    ///     status.waiting(),
    ///     ["hosts in zone eu have no live worker (zones served: us)"]
    /// );
    /// let nobody = WorkStatus { served_zones: vec![], ..status };
    /// assert_eq!(nobody.waiting(), ["hosts in zone eu have no live worker (zones served: none)"]);
    /// ```
    pub fn waiting(&self) -> Vec<String> {
        let served = if self.served_zones.is_empty() {
            "none".to_string()
        } else {
            self.served_zones.join(", ")
        };
        self.unserved_zones
            .iter()
            .map(|z| format!("hosts in zone {z} have no live worker (zones served: {served})"))
            .collect()
    }
}

/// The store side of distributed runs (see the module documentation). Implemented by
/// `deployer_store::PostgresStore`; SQLite stays single-controller.
///
/// # Contract
///
/// * [`claim`](Self::claim) hands out an entry only of a submitted, unfinished, not aborting
///   run; only of the lowest stage of that run that has unfinished entries; only while the
///   stage's claimed entries are fewer than its `concurrency` and the host's fewer than its
///   `concurrency_per_host`; only of a zone the worker serves; only of a run whose every
///   command the worker has. All of it is checked and taken in one transaction, so the limits
///   hold over any number of workers.
/// * A claim lives until its lease lapses unless [`renew_claim`](Self::renew_claim)ed. A
///   lapsed claim's entry is claimable again (with a higher fence) if it is idempotent;
///   otherwise the run stops ([`WorkStatus::stopped`]) and waits for a forced resume.
/// * [`record_task`](Self::record_task), [`renew_claim`](Self::renew_claim) and
///   [`finish_entry`](Self::finish_entry) fail with [`StoreError::LeaseLost`] unless the claim
///   is still the entry's current one (same worker, same fence) — fencing.
/// * A failed entry of an ordinary stage counts its host once against the run's budget (over
///   [`RunRules::hosts`]), the stage's (its own, else the run's, over [`StageLimits::hosts`])
///   and `min_hosts_up`, as the single controller does: within them the host is dropped (its
///   pending entries of this and every later ordinary stage end, their tasks recorded
///   [`TaskState::Dropped`](crate::TaskState::Dropped) with the reason) and the run goes on;
///   past them the run aborts and the ordinary entries left end, their tasks recorded
///   [`TaskState::NotRun`](crate::TaskState::NotRun) with the reason.
/// * `min_hosts_up`: a host holds a place from its first claimed entry in a stage until it
///   has nothing claimed or pending there; at most `hosts − min_hosts_up − down` hold one
///   (`max(hosts − min_hosts_up, 1)` in a `finally` stage). When nothing of the stage is
///   claimed and no host may start, the run fails (`min_hosts_up N: D of the stage's H hosts
///   are down, so no other host may be taken down`).
/// * A `finally` stage runs after a success, a failure or a cancel. When it becomes the lowest
///   stage with unended entries its entries are sorted out once: those its [`Finally`] leaves
///   out (`on_failure` after a success, or, with only dropped hosts, for the other hosts;
///   `if_reached` / `unless_reached` against the points the host reached) end, their tasks
///   recorded [`TaskState::Skipped`](crate::TaskState::Skipped) with the reason. A failure in
///   it fails the run and stops none of its other entries.
/// * When the last entry of a run ends (or, once it aborts, the last claimed one), the store
///   finishes the run ([`RunStore::finish_run`]) with its state: succeeded, degraded (hosts
///   dropped, nothing else failed), failed, or cancelled (the first of the last two wins).
/// * A cancel request ([`RunStore::request_cancel`]) makes the run abort like a first cancel:
///   nothing new of an ordinary stage is claimed; workers holding claims see it through
///   [`RunStore::cancel_request`] and cancel their entries; `finally` stages still run.
#[async_trait]
pub trait WorkQueue: RunStore {
    /// Hands run `submission.run` (already created) to workers.
    async fn submit(&self, submission: &Submission) -> Result<(), StoreError>;

    /// Says `worker` is alive (and what it serves) for `ttl`; a worker calls it on start and
    /// then regularly. Live workers are what [`WorkStatus::unserved_zones`] is computed from.
    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), StoreError>;

    /// Claims one claimable entry for `worker` under a lease of `ttl`, or `None` when there is
    /// none now (wait for [`changes`](RunStore::changes) and ask again).
    async fn claim(&self, worker: &WorkerInfo, ttl: Duration) -> Result<Option<Claim>, StoreError>;

    /// Extends the claim's lease by `ttl` from now; fails with [`StoreError::LeaseLost`] once
    /// it was lost.
    async fn renew_claim(&self, claim: &Claim, ttl: Duration) -> Result<(), StoreError>;

    /// Records one of the claim's task records (as [`RunStore::update_task`] does), fenced.
    async fn record_task(&self, claim: &Claim, task: &TaskRecord) -> Result<(), StoreError>;

    /// Ends the claim's entry with `outcome`, fenced; finishes the run when it was the last.
    async fn finish_entry(&self, claim: &Claim, outcome: EntryOutcome) -> Result<(), StoreError>;

    /// Where a submitted run stands.
    async fn work_status(&self, run: &RunId) -> Result<WorkStatus, StoreError>;

    /// Hands a finished, not succeeded submitted run back to workers — the distributed
    /// [`Runs::resume`](crate::Runs::resume); call it through
    /// [`resume_submitted`](crate::resume_submitted), which computes `rerun`.
    ///
    /// Under the run's lock: a run that is not finished, that succeeded, or that was never
    /// submitted is refused with [`StoreError::NotResumable`] saying why; so is a run that
    /// stopped on an interrupted entry that is not idempotent ([`WorkStatus::stopped`], the
    /// entry named) unless `force`. Otherwise every entry not done, and every entry holding a
    /// task of `rerun` (done tasks that run again: a `finally` stage's, and those it undid —
    /// see [`Plan::skipped_on_resume`](crate::Plan::skipped_on_resume)), is claimable again;
    /// the run is no longer aborting, stopped or asked to cancel; it is `PENDING` again (no
    /// finish time, no owner); those entries' tasks that are not done, and the tasks of
    /// `rerun`, are `PENDING` (done ones stay done, and a worker does not run them again);
    /// their hosts are `PENDING`; idle workers are woken.
    async fn resume_work(
        &self,
        run: &RunId,
        rerun: &[TaskId],
        force: bool,
    ) -> Result<(), StoreError>;
}

/// Why a plan cannot be submitted to workers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this plan cannot run on workers: {}", problems.join("; "))]
pub struct SubmitError {
    /// Every reason, each naming where (`stages[2]`, `stages[0].tasks[1].lb_password`).
    pub problems: Vec<String>,
}

impl Submission {
    /// The submission of `plan` as run `run`: one [`WorkEntry`] per stage entry, each with
    /// its host's zone from `zone_of` (the inventory host var `zone`). Refused, naming every
    /// place, when the plan holds an inline secret (the store keeps it redacted, so no worker
    /// could read it: write `{"secret_env": "VAR"}` and give every worker the variable). Each
    /// stage carries its limits, its [`Finally`], its failure budget, `min_hosts_up` and its
    /// number of hosts; each entry the points its tasks reach; the submission the run's budget
    /// and the number of hosts of its ordinary stages.
    ///
    /// ```
    /// use deployer_core::*;
    /// use deployer_core::fixture::Noop;
    /// let mut commands = CommandRegistry::new();
    /// commands.register::<Noop>("noop");
    /// let tasklist = Tasklist::new("t").stage(
    ///     Stage::new("s", 2).per_host(1)
    ///         .task(Task::new("noop").on("web1"))
    ///         .task(vec![Task::new("noop").on("web2"), Task::new("noop").on("web2")]),
    /// );
    /// let plan = Plan::build(&tasklist, &commands).unwrap();
    /// let zone = |host: &str| (host == "web2").then(|| "eu".to_string());
    /// let s = Submission::of_plan(&plan, &RunId::new(), zone).unwrap();
    /// assert_eq!(s.stages[0].concurrency, 2);
    /// assert_eq!(s.stages[0].concurrency_per_host, Some(1));
    /// assert_eq!(s.stages[0].hosts, 2);
    /// assert_eq!(s.entries.len(), 2);
    /// assert_eq!(s.entries[1].tasks.len(), 2, "a chain is one entry");
    /// assert_eq!(s.entries[1].zone.as_deref(), Some("eu"));
    /// assert_eq!(s.commands, ["noop"]);
    /// ```
    pub fn of_plan(
        plan: &crate::Plan,
        run: &RunId,
        zone_of: impl Fn(&str) -> Option<String>,
    ) -> Result<Submission, SubmitError> {
        let tasklist = plan.tasklist();
        let problems: Vec<String> = tasklist
            .redacted()
            .redacted_secrets()
            .into_iter()
            .map(|p| {
                format!(
                    "{p} is an inline secret, which the store keeps redacted so no worker could read it: write it {{\"secret_env\": \"VAR\"}} and give every worker VAR"
                )
            })
            .collect();
        if !problems.is_empty() {
            return Err(SubmitError { problems });
        }
        let mut commands: Vec<String> = Vec::new();
        let mut entries: Vec<WorkEntry> = Vec::new();
        for info in plan.tasks() {
            if !commands.contains(&info.command) {
                commands.push(info.command.clone());
            }
            let idempotent = plan.is_idempotent(info.id).unwrap_or(false);
            match entries.last_mut() {
                Some(e) if e.stage == info.id.stage && e.entry == info.id.entry => {
                    e.tasks.push(info.id);
                    e.idempotent &= idempotent;
                }
                _ => entries.push(WorkEntry {
                    stage: info.id.stage,
                    entry: info.id.entry,
                    host: info.host.clone(),
                    zone: zone_of(&info.host),
                    tasks: vec![info.id],
                    idempotent,
                    reaches: Vec::new(),
                }),
            }
        }
        // The points each entry's tasks reach.
        let by_entry: std::collections::HashMap<(usize, usize), usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| ((e.stage, e.entry), i))
            .collect();
        for stage in plan.stages.iter() {
            for step in stage.entries.iter().flat_map(|e| &e.steps) {
                if let (Some(point), Some(&i)) = (
                    &step.task.reaches,
                    by_entry.get(&(step.info.id.stage, step.info.id.entry)),
                ) {
                    entries[i].reaches.push((step.info.id, point.clone()));
                }
            }
        }
        commands.sort();
        let run_hosts = plan
            .stages
            .iter()
            .filter(|s| s.finally.is_none())
            .flat_map(|s| &s.hosts)
            .collect::<std::collections::HashSet<_>>()
            .len();
        Ok(Submission {
            run: run.clone(),
            commands,
            stages: plan
                .stages
                .iter()
                .map(|s| StageLimits {
                    concurrency: s.concurrency,
                    concurrency_per_host: s.per_host,
                    finally: s.finally.clone(),
                    budget: s.budget,
                    min_hosts_up: s.min_hosts_up,
                    hosts: s.hosts.len(),
                })
                .collect(),
            entries,
            rules: RunRules {
                budget: tasklist.budget,
                hosts: run_hosts,
            },
        })
    }
}
