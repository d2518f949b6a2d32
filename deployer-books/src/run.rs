//! Running jobs: the tasklist a job compiles to, manual acknowledgements, and the runner.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use deployer_core::CommandError;
use deployer_core::NewRun;
use deployer_core::Plan;
use deployer_core::RunOutcome;
use deployer_core::ValidationErrors;
use deployer_core::{
    Approval, ApprovalRequest, ApprovalState, Approver, Approvers, DecideError, EventKind,
    MemoryStore, RunId, RunStore, StoreError,
};
use deployer_core::{Command, CommandRegistry, ExecContext, Outcome, TaskArgs};
use deployer_core::{Executor, RunOptions, RunReport};
use deployer_core::{Finally, Stage, Task, Tasklist};
use deployer_core::{Redactor, Runs};

use super::error::BookError;
use super::job::{CleanupWhen, Job, JobState, JobStep, JobStepKind};

/// The command a manual step compiles to. A host application must not register a command of
/// its own under this name for jobs: the [`JobRunner`] replaces it.
pub const MANUAL_COMMAND: &str = "manual";

/// A decision given in this process, waiting for its manual step to take it.
#[derive(Debug, Clone)]
struct Given {
    /// Counts decisions, so a step takes each one once.
    seq: u64,
    /// `None`: whoever started the job.
    approver: Option<Approver>,
    approved: bool,
    comment: Option<String>,
}

#[derive(Debug, Default)]
struct AckState {
    seq: u64,
    all: Option<Given>,
    steps: HashMap<String, Given>,
    /// Steps nobody here can or will decide, with why: they fail without a decision.
    abandoned: HashMap<String, String>,
}

/// Decisions on a job's manual steps given in this process, by step path (`deploy/approve`).
///
/// A manual step compiles to a task of the built-in [`MANUAL_COMMAND`], which asks for an
/// approval in the run store ([`RunStore::request_approval`]) and waits until it is decided:
/// through the store by any process ([`deployer_core::decide`], e.g. `books approve`), or
/// through this handle, whose decisions the step hands to the same checks
/// ([`Approval::check`]: approvers, four-eyes) before storing them. A refused decision is
/// logged as the step's output and the step waits on, except a decision for every step
/// ([`all`](Self::all), what `--yes` does), whose refusal fails the step. Cheap to clone;
/// clones share state.
///
/// ```
/// use deployer_core::Approver;
/// let acks = deployer_books::Acknowledgements::new();
/// assert!(!acks.is_acknowledged("deploy/approve"));
/// acks.decide("deploy/approve", Approver::new("bob"), true, Some("backup checked".into()));
/// assert!(acks.is_acknowledged("deploy/approve"));
/// assert!(deployer_books::Acknowledgements::all().is_acknowledged("anything"));
/// ```
#[derive(Debug, Clone)]
pub struct Acknowledgements {
    state: Arc<watch::Sender<AckState>>,
}

impl Default for Acknowledgements {
    fn default() -> Self {
        Self::new()
    }
}

impl Acknowledgements {
    /// Nothing decided yet.
    pub fn new() -> Self {
        Acknowledgements {
            state: Arc::new(watch::Sender::new(AckState::default())),
        }
    }

    /// Every step approved in advance by whoever started the job (roles unknown).
    pub fn all() -> Self {
        let acks = Self::new();
        acks.acknowledge_all();
        acks
    }

    /// Every step approved in advance by `approver`, with `comment` (what `--yes --as USER`
    /// does).
    pub fn all_as(approver: Approver, comment: Option<String>) -> Self {
        let acks = Self::new();
        acks.state.send_modify(|s| {
            s.seq += 1;
            s.all = Some(Given {
                seq: s.seq,
                approver: Some(approver),
                approved: true,
                comment,
            });
        });
        acks
    }

    fn give(
        &self,
        path: &str,
        approver: Option<Approver>,
        approved: bool,
        comment: Option<String>,
    ) {
        self.state.send_modify(|s| {
            s.seq += 1;
            let given = Given {
                seq: s.seq,
                approver,
                approved,
                comment,
            };
            s.steps.insert(path.to_string(), given);
        });
    }

    /// Approves the step at `path` in the name of whoever started the job.
    pub fn acknowledge(&self, path: &str) {
        self.give(path, None, true, None);
    }

    /// Approves (or rejects) the step at `path` as `approver`; the waiting step checks that
    /// they may, then stores the decision.
    pub fn decide(&self, path: &str, approver: Approver, approved: bool, comment: Option<String>) {
        self.give(path, Some(approver), approved, comment);
    }

    /// Gives up on the step at `path`: nobody here can or will decide it (the terminal's input
    /// ended, or whoever is there may not decide and no other process can). The waiting step
    /// fails — so the job fails and its `on_failure` clean-up runs — naming `reason`; no
    /// decision is recorded.
    ///
    /// ```
    /// let acks = deployer_books::Acknowledgements::new();
    /// acks.abandon("deploy/approve", "end of input at the terminal");
    /// assert!(!acks.is_acknowledged("deploy/approve"));
    /// ```
    pub fn abandon(&self, path: &str, reason: impl Into<String>) {
        let reason = reason.into();
        self.state.send_modify(|s| {
            s.seq += 1;
            s.abandoned.insert(path.to_string(), reason);
        });
    }

    fn abandoned(&self, path: &str) -> Option<String> {
        self.state.borrow().abandoned.get(path).cloned()
    }

    /// Approves every step, now and later, in the name of whoever started the job.
    pub fn acknowledge_all(&self) {
        self.state.send_modify(|s| {
            s.seq += 1;
            s.all = Some(Given {
                seq: s.seq,
                approver: None,
                approved: true,
                comment: None,
            });
        });
    }

    /// Whether a decision on the step at `path` was given here.
    pub fn is_acknowledged(&self, path: &str) -> bool {
        let s = self.state.borrow();
        s.all.is_some() || s.steps.contains_key(path)
    }

    /// Waits until a decision on the step at `path` is given here.
    pub async fn wait(&self, path: &str) {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx
            .wait_for(|s| s.all.is_some() || s.steps.contains_key(path))
            .await;
    }

    /// The decision for `path` newer than `seen`, and whether it is the one for every step.
    fn newer(&self, path: &str, seen: u64) -> Option<(Given, bool)> {
        let s = self.state.borrow();
        if let Some(g) = s.steps.get(path).filter(|g| g.seq > seen) {
            return Some((g.clone(), false));
        }
        s.all
            .as_ref()
            .filter(|g| g.seq > seen)
            .map(|g| (g.clone(), true))
    }
}

/// Where a job's manual steps keep their approvals: the run store recording the job (or a
/// private one in memory), the run, and who started it.
struct ApprovalPlace {
    store: Arc<dyn RunStore>,
    run: RunId,
    started_by: String,
}

impl std::fmt::Debug for ApprovalPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalPlace")
            .field("run", &self.run)
            .field("started_by", &self.started_by)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManualArgs {
    step: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    approvers: Approvers,
    #[serde(default)]
    four_eyes: bool,
    /// Seconds.
    #[serde(default)]
    expires_after: Option<f64>,
    /// The deployment the job is about (`shop/prod`), for role lookups.
    #[serde(default)]
    deployment: Option<String>,
}

/// How often a waiting manual step reads its approval from the store (decisions made in this
/// process through [`Acknowledgements`] are seen at once).
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct ManualStep {
    args: ManualArgs,
    acks: Acknowledgements,
    place: Arc<ApprovalPlace>,
}

impl std::fmt::Debug for ManualArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualArgs")
            .field("step", &self.step)
            .field("approvers", &self.approvers)
            .field("four_eyes", &self.four_eyes)
            .field("expires_after", &self.expires_after)
            .finish_non_exhaustive()
    }
}

fn store_failure(step: &str, e: impl std::fmt::Display) -> CommandError {
    CommandError::failed(format!("approval of step {step}: {e}"))
}

impl ManualStep {
    async fn read(&self, run: &RunId) -> Result<Approval, CommandError> {
        let step = &self.args.step;
        self.place
            .store
            .approvals(run)
            .await
            .map_err(|e| store_failure(step, e))?
            .into_iter()
            .find(|a| &a.request.step == step)
            .ok_or_else(|| store_failure(step, "the request is no longer in the run store"))
    }
}

#[async_trait::async_trait]
impl Command for ManualStep {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        unreachable!("built by the job runner's factory")
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let a = &self.args;
        let step = a.step.as_str();
        let run = ctx
            .run_id()
            .cloned()
            .unwrap_or_else(|| self.place.run.clone());
        let mut request = ApprovalRequest::new(run.clone(), step, &self.place.started_by)
            .message(a.message.clone())
            .approvers(a.approvers.clone())
            .four_eyes(a.four_eyes);
        if let Some(d) = &a.deployment {
            request = request.target(d.clone());
        }
        if let Some(secs) = a.expires_after {
            let after = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
            if let Some(at) = SystemTime::now().checked_add(after) {
                request = request.expires(at);
            }
        }
        let mut approval = self
            .place
            .store
            .request_approval(request)
            .await
            .map_err(|e| store_failure(step, e))?;
        let r = &approval.request;
        ctx.emit(EventKind::ApprovalRequested {
            task: ctx.info().clone(),
            step: r.step.clone(),
            message: r.message.clone(),
            approvers: r.approvers.clone(),
            four_eyes: r.four_eyes,
            started_by: r.started_by.clone(),
            target: r.target.clone(),
            expires_ts: r.expires_ts,
        });
        if approval.decision.is_none() {
            let mut msg = format!(
                "waiting for the approval of step {step} (run {run}, approvers: {})",
                r.approvers
            );
            if !a.message.is_empty() {
                msg.push_str(": ");
                msg.push_str(&a.message);
            }
            ctx.log(&msg);
        }
        let mut changes = self.acks.state.subscribe();
        let mut seen = 0;
        loop {
            match approval.state(SystemTime::now()) {
                ApprovalState::Pending => {}
                ApprovalState::Expired => {
                    return Err(CommandError::failed(approval.outcome_message()));
                }
                ApprovalState::Approved | ApprovalState::Rejected => {
                    let d = approval.decision.as_ref().expect("a decided approval");
                    ctx.emit(EventKind::ApprovalDecided {
                        task: ctx.info().clone(),
                        step: step.to_string(),
                        approved: d.approved,
                        by: d.by.clone(),
                        at: d.at,
                        comment: d.comment.clone(),
                    });
                    if !d.approved {
                        return Err(CommandError::failed(approval.outcome_message()));
                    }
                    return Ok(Outcome::done().with_data(serde_json::json!({
                        "approved": step,
                        "by": d.by,
                        "at": humantime::format_rfc3339_seconds(d.at).to_string(),
                        "comment": d.comment,
                    })));
                }
            }
            if let Some(reason) = self.acks.abandoned(step) {
                return Err(CommandError::failed(format!(
                    "step {step} got no decision: {reason}"
                )));
            }
            if let Some((given, for_all)) = self.acks.newer(step, seen) {
                seen = given.seq;
                let approver = given
                    .approver
                    .unwrap_or_else(|| Approver::new(&self.place.started_by));
                match deployer_core::decide(
                    &*self.place.store,
                    &run,
                    step,
                    &approver,
                    given.approved,
                    given.comment,
                )
                .await
                {
                    Ok(decided) => {
                        approval = decided;
                        continue;
                    }
                    Err(DecideError::Refused(refused)) if for_all => {
                        return Err(CommandError::failed(format!(
                            "approved in advance, but {refused}"
                        )));
                    }
                    Err(DecideError::Refused(refused)) => ctx.log(&format!("refused: {refused}")),
                    // Decided or expired meanwhile: the next read says how.
                    Err(DecideError::Store(StoreError::ApprovalClosed { .. })) => {}
                    Err(e) => return Err(store_failure(step, e)),
                }
                approval = self.read(&run).await?;
                continue;
            }
            let mut pause = POLL;
            if let Some(left) = approval
                .request
                .expires_ts
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
            {
                pause = pause.min(left + Duration::from_millis(1));
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = ctx.cancelled() => {
                    return Err(CommandError::failed(format!(
                        "stopped before step {step} was decided"
                    )));
                }
                // A first cancel lets work on hosts finish; a step that only waits for a
                // person gives up.
                _ = ctx.run_cancelled() => {
                    return Err(CommandError::Cancelled {
                        message: format!("the run was cancelled before step {step} was decided"),
                    });
                }
            }
            approval = self.read(&run).await?;
        }
    }

    fn idempotent(&self) -> bool {
        true
    }
}

fn manual_factory(
    acks: Acknowledgements,
    place: Arc<ApprovalPlace>,
) -> impl Fn(&TaskArgs<'_>) -> Result<Box<dyn Command>, ValidationErrors> + Send + Sync + 'static {
    move |args: &TaskArgs<'_>| {
        let a: ManualArgs = args.parse()?;
        let _ = &a.data;
        Ok(Box::new(ManualStep {
            args: a,
            acks: acks.clone(),
            place: place.clone(),
        }) as Box<dyn Command>)
    }
}

/// The command of the marker task that arms a called book's clean-up (see [`Job::tasklist`]).
/// A host application must not register a command of its own under this name for jobs: the
/// [`JobRunner`] replaces it.
pub const STARTED_COMMAND: &str = "book_started";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartedArgs {
    #[serde(default)]
    lb_hostname: Option<String>,
}

/// Does nothing: its success makes its host reach the point a called book's clean-up waits
/// for.
#[derive(Debug)]
struct Started;

#[async_trait::async_trait]
impl Command for Started {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: StartedArgs = args.parse()?;
        let _ = a.lb_hostname;
        Ok(Started)
    }

    async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> {
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }
}

impl JobStep {
    /// The stage of a step that runs.
    fn stage(&self, deployment: Option<&str>) -> Option<Stage> {
        let finish = |mut t: Task| {
            t = t.tag(self.path.clone()).retries(self.retries);
            if let Some(timeout) = self.timeout {
                t = t.timeout(timeout);
            }
            t
        };
        let stage = match &self.kind {
            JobStepKind::Manual => {
                let mut t = Task::new(MANUAL_COMMAND)
                    .arg("step", self.path.clone())
                    .arg("message", self.description.clone());
                if !self.data.is_empty() {
                    t = t.arg("data", Value::Object(self.data.clone()));
                }
                let rule = &self.approval;
                if rule.approvers != Approvers::Default {
                    t = t.arg(
                        "approvers",
                        serde_json::to_value(&rule.approvers).unwrap_or_default(),
                    );
                }
                if rule.four_eyes {
                    t = t.arg("four_eyes", true);
                }
                if let Some(after) = rule.expires_after {
                    t = t.arg("expires_after", after.as_secs_f64());
                }
                if let Some(d) = deployment {
                    t = t.arg("deployment", d);
                }
                Stage::new(self.path.clone(), 1).task(finish(t))
            }
            JobStepKind::Command {
                command,
                args,
                hosts,
                concurrency,
                concurrency_per_host,
            } => {
                let base = |t: Task| {
                    let mut t = t;
                    t.args = args.clone();
                    finish(t)
                };
                let mut stage = Stage::new(self.path.clone(), *concurrency);
                if let Some(limit) = concurrency_per_host {
                    stage = stage.per_host(*limit);
                }
                if hosts.is_empty() {
                    stage.task(base(Task::new(command.clone())))
                } else {
                    stage.tasks(hosts.iter().map(|h| base(Task::new(command.clone()).on(h))))
                }
            }
            JobStepKind::Book { .. } => return None,
        };
        Some(stage)
    }
}

/// The point a called book's `started` stage reaches: `started:` and the call's path in the
/// letters a point may have (`/` as `.`, others as `_`), shortened, then `.` and the index of
/// the book's first step that runs (which makes it unique).
fn started_point(call: &str, first: usize) -> String {
    let suffix = format!(".{first}");
    let name: String = call
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') => c,
            _ => '_',
        })
        .collect();
    let keep = 64 - "started:".len() - suffix.len();
    let name: String = name
        .chars()
        .rev()
        .take(keep)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("started:{name}{suffix}")
}

impl Job {
    /// The tasklist the job runs: one stage per step that runs (skipped steps have none), in
    /// order. A command step has one task per host (tagged with the step's path) carrying the
    /// step's timeout and retries; a manual step has one [`MANUAL_COMMAND`] task on the
    /// controller.
    ///
    /// Clean-up steps ([`JobStep::cleanup`]) are `finally` stages of the executor
    /// ([`Finally`]): they run after a success, a failure or a first cancel (not after a second
    /// cancel), `on_failure` ones only when the run failed or was cancelled. A called book's
    /// clean-up runs only if the book started: before its first step that runs, a stage
    /// `<call> started` runs one [`STARTED_COMMAND`] task (which does nothing) on each host of
    /// that clean-up, reaching point `started:<call>.<step index>`, and the clean-up stages run
    /// `if_reached` it — so on the hosts where the book started.
    ///
    /// ```
    /// use deployer_books::{Book, BookLibrary, JobBuilder, Step};
    ///
    /// let mut library = BookLibrary::new();
    /// library.register(Book::new("pause", "1.0.0".parse().unwrap())
    ///     .step(Step::command("flag", "writefile"))
    ///     .on_failure(Step::command("unflag", "removefile"))).unwrap();
    /// library.register(Book::new("deploy", "1.0.0".parse().unwrap())
    ///     .step(Step::command("check", "execute_command"))
    ///     .step(Step::book("pause", "pause", "^1".parse().unwrap()))
    ///     .always(Step::command("tell", "execute_command"))).unwrap();
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let job = JobBuilder::new(&library, "deploy").build().await.unwrap();
    /// let tasklist = job.tasklist();
    /// let names: Vec<&str> = tasklist.stages.iter().map(|s| s.name.as_str()).collect();
    /// assert_eq!(names, ["deploy/check", "deploy/pause started", "deploy/pause/flag",
    ///                    "deploy/pause/unflag", "deploy/tell"]);
    /// let unflag = tasklist.stages[3].finally.as_ref().unwrap();
    /// assert!(unflag.on_failure);
    /// assert_eq!(unflag.if_reached.as_deref(), Some("started:deploy.pause.1"));
    /// assert_eq!(tasklist.stages[4].finally, Some(deployer_core::Finally::always()));
    /// # });
    /// ```
    pub fn tasklist(&self) -> Tasklist {
        self.compile().0
    }

    /// The tasklist, and per stage the index of its step in `steps` (`None` for a
    /// `started` stage).
    pub(crate) fn compile(&self) -> (Tasklist, Vec<Option<usize>>) {
        let deployment = self
            .scope
            .pointer("/deployment/ref")
            .and_then(Value::as_str);
        let mut stages: Vec<(usize, Stage)> = self
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.runs())
            .filter_map(|(i, s)| s.stage(deployment).map(|stage| (i, stage)))
            .collect();
        // Per step starting a called book that has clean-up: the point, the calls, and the
        // hosts of their clean-up (remote host, else load balancer).
        type Marker = (
            String,
            Vec<String>,
            BTreeSet<(Option<String>, Option<String>)>,
        );
        let mut markers: BTreeMap<usize, Marker> = BTreeMap::new();
        for (i, stage) in stages.iter_mut() {
            let Some(cleanup) = &self.steps[*i].cleanup else {
                continue;
            };
            let mut finally = match cleanup.when {
                CleanupWhen::OnFailure => Finally::on_failure(),
                CleanupWhen::Always => Finally::always(),
            };
            if let Some(after) = &cleanup.after {
                let prefix = format!("{after}/");
                // The builder skipped clean-up of a book without a step that runs.
                let Some(first) = self
                    .steps
                    .iter()
                    .position(|s| s.cleanup.is_none() && s.runs() && s.path.starts_with(&prefix))
                else {
                    continue;
                };
                let (point, calls, hosts) = markers
                    .entry(first)
                    .or_insert_with(|| (started_point(after, first), Vec::new(), BTreeSet::new()));
                finally.if_reached = Some(point.clone());
                if !calls.contains(after) {
                    calls.push(after.clone());
                }
                for task in stage.tasks.iter().flat_map(|e| e.tasks()) {
                    let lb = match (&task.remote_host, task.args.get("lb_hostname")) {
                        (None, Some(Value::String(h))) => Some(h.clone()),
                        _ => None,
                    };
                    hosts.insert((task.remote_host.clone(), lb));
                }
            }
            stage.finally = Some(finally);
        }
        let mut tasklist = Tasklist::new(format!("{} {}", self.source(), self.id));
        let mut map = Vec::new();
        for (i, stage) in stages {
            if let Some((point, mut calls, hosts)) = markers.remove(&i) {
                // Outermost first.
                calls.sort();
                let tasks: Vec<Task> = hosts
                    .into_iter()
                    .map(|(remote, lb)| {
                        let mut t = Task::new(STARTED_COMMAND)
                            .tag(calls.join(", "))
                            .reaches(point.clone());
                        t.remote_host = remote;
                        if let Some(lb) = lb {
                            t = t.arg("lb_hostname", lb);
                        }
                        t
                    })
                    .collect();
                let name = format!("{} started", calls.join(", "));
                tasklist = tasklist.stage(Stage::new(name, tasks.len().max(1)).tasks(tasks));
                map.push(None);
            }
            tasklist = tasklist.stage(stage);
            map.push(Some(i));
        }
        (tasklist, map)
    }
}

/// Runs [`Job`]s through the [`Executor`], so every executor guarantee holds (stage order,
/// concurrency limits, timeouts, retries after the executor's retry delay, cancellation).
///
/// With [`runs`](Self::runs), a job's run is recorded in a run store like any other, its
/// tasks' durations under their step's `book/step` key: the averages the next
/// [`JobBuilder::history`](crate::JobBuilder::history) reads.
#[derive(Debug, Clone)]
pub struct JobRunner {
    executor: Executor,
    commands: CommandRegistry,
    runs: Option<Runs>,
    started_by: String,
    redactor: Redactor,
}

impl JobRunner {
    /// Runs jobs with `executor` and the commands of `commands` (plus [`MANUAL_COMMAND`]).
    pub fn new(executor: Executor, commands: &CommandRegistry) -> Self {
        JobRunner {
            executor,
            commands: commands.clone(),
            runs: None,
            started_by: "books".to_string(),
            redactor: Redactor::new(),
        }
    }

    /// Keeps the secrets of the jobs' plans in `redactor` (default: one of its own): hand it
    /// the one your log formatter redacts with.
    pub fn redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Records runs through `runs` (default: not recorded).
    pub fn runs(mut self, runs: Runs) -> Self {
        self.runs = Some(runs);
        self
    }

    /// Who starts the runs, in their records (default: `books`).
    pub fn started_by(mut self, who: impl Into<String>) -> Self {
        self.started_by = who.into();
        self
    }

    /// The validated plan of `job` (the dry run): every task instantiated by its command.
    pub fn plan(&self, job: &Job, acks: &Acknowledgements) -> Result<Plan, BookError> {
        let place = Arc::new(ApprovalPlace {
            store: Arc::new(MemoryStore::new()),
            run: RunId::new(),
            started_by: self.started_by.clone(),
        });
        self.plan_with(job, acks, place)
    }

    fn plan_with(
        &self,
        job: &Job,
        acks: &Acknowledgements,
        place: Arc<ApprovalPlace>,
    ) -> Result<Plan, BookError> {
        let mut registry = self.commands.clone();
        registry.register_fn(MANUAL_COMMAND, manual_factory(acks.clone(), place));
        registry.register::<Started>(STARTED_COMMAND);
        Plan::build_with_redactor(&job.tasklist(), &registry, self.redactor.clone())
            .map_err(BookError::Plan)
    }

    /// Runs `job` (a draft is scheduled first): `scheduled` → `running` → `done`, `error` or
    /// `cancel` by the run's outcome (`cancel` whenever `options.cancel` was used); each step
    /// that ran gets its outcome. Manual steps ask for an approval in the run store (with
    /// [`runs`](Self::runs), that store, where other processes can decide it; otherwise a
    /// private one in memory) and wait for a decision, given there or through `acks`; a
    /// rejection or an expiry fails the step, naming who and why (a first cancellation lets a
    /// waiting manual step wait on; stopping hard ends it). Fails before running anything
    /// when the job's tasklist does not validate.
    pub async fn run(
        &self,
        job: &mut Job,
        acks: &Acknowledgements,
        options: RunOptions,
    ) -> Result<RunReport, BookError> {
        if job.state == JobState::Draft {
            job.schedule()?;
        }
        if !job.state.can_become(JobState::Running) {
            return Err(BookError::InvalidTransition {
                from: job.state,
                to: JobState::Running,
            });
        }
        let run_id = RunId::new();
        let store: Arc<dyn RunStore> = match &self.runs {
            Some(runs) => runs.store().clone(),
            None => Arc::new(MemoryStore::new()),
        };
        let place = Arc::new(ApprovalPlace {
            store: store.clone(),
            run: run_id.clone(),
            started_by: self.started_by.clone(),
        });
        let plan = self.plan_with(job, acks, place)?;
        let (_, stage_steps) = job.compile();
        let cancel = options.cancel.clone();
        let report = match &self.runs {
            None => {
                // Approvals belong to a run: an unrecorded job's live in a private store.
                let mut new = NewRun::from_plan(&plan, job.source(), &self.started_by);
                new.id = run_id;
                store
                    .create_run(new)
                    .await
                    .map_err(deployer_core::RunsError::from)?;
                job.transition(JobState::Running)?;
                self.executor.run_with(&plan, options).await
            }
            Some(runs) => {
                // Durations are averaged per step, not per command.
                let keys: Vec<Option<String>> = stage_steps
                    .iter()
                    .map(|i| i.map(|i| job.steps[i].history_key()))
                    .collect();
                let mut new = NewRun::from_plan(&plan, job.source(), &self.started_by)
                    .with_history_keys(|task| keys.get(task.id.stage).cloned().flatten());
                new.id = run_id;
                let id = runs
                    .store()
                    .create_run(new)
                    .await
                    .map_err(deployer_core::RunsError::from)?
                    .id;
                job.run_id = Some(id.to_string());
                job.transition(JobState::Running)?;
                match runs.drive(&self.executor, &id, &plan, options).await {
                    Ok(report) => report,
                    Err(e) => {
                        job.state = JobState::Error;
                        return Err(e.into());
                    }
                }
            }
        };
        for (stage, i) in report.stages.iter().zip(&stage_steps) {
            if let Some(i) = i {
                job.steps[*i].outcome = stage.outcome;
            }
        }
        // A task stopped by a cancellation fails its stage; the job was still cancelled.
        job.transition(match report.outcome {
            RunOutcome::Succeeded => JobState::Done,
            RunOutcome::Cancelled => JobState::Cancel,
            _ if cancel.is_cancelled() => JobState::Cancel,
            _ => JobState::Error,
        })?;
        Ok(report)
    }
}
