//! Running jobs: the tasklist a job compiles to, manual acknowledgements, and the runner.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use deployer_core::CommandError;
use deployer_core::NewRun;
use deployer_core::Plan;
use deployer_core::RunOutcome;
use deployer_core::ValidationErrors;
use deployer_core::{Command, CommandRegistry, ExecContext, Outcome, TaskArgs};
use deployer_core::{Executor, RunOptions, RunReport};
use deployer_core::{Finally, Stage, Task, Tasklist};
use deployer_core::{Redactor, Runs};

use super::error::BookError;
use super::job::{CleanupWhen, Job, JobState, JobStep, JobStepKind};

/// The command a manual step compiles to. A host application must not register a command of
/// its own under this name for jobs: the [`JobRunner`] replaces it.
pub const MANUAL_COMMAND: &str = "manual";

#[derive(Debug, Default)]
struct AckState {
    all: bool,
    steps: HashSet<String>,
}

/// Acknowledgements of a job's manual steps, by step path (`deploy/approve`).
///
/// A manual step compiles to a task of the built-in [`MANUAL_COMMAND`], which waits until its
/// step is acknowledged (or the run is cancelled). Acknowledge through this handle from
/// anywhere (an API call, a chat bot); [`Acknowledgements::all`] pre-acknowledges every step
/// (what a `--yes` flag of a command-line tool does). Cheap to clone; clones share state.
///
/// ```
/// let acks = deployer_books::Acknowledgements::new();
/// assert!(!acks.is_acknowledged("deploy/approve"));
/// acks.acknowledge("deploy/approve");
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
    /// Nothing acknowledged yet.
    pub fn new() -> Self {
        Acknowledgements {
            state: Arc::new(watch::Sender::new(AckState::default())),
        }
    }

    /// Every step acknowledged in advance.
    pub fn all() -> Self {
        let acks = Self::new();
        acks.acknowledge_all();
        acks
    }

    /// Acknowledges the step at `path`; a task waiting for it goes on.
    pub fn acknowledge(&self, path: &str) {
        self.state.send_modify(|s| {
            s.steps.insert(path.to_string());
        });
    }

    /// Acknowledges every step, now and later.
    pub fn acknowledge_all(&self) {
        self.state.send_modify(|s| s.all = true);
    }

    /// Whether the step at `path` is acknowledged.
    pub fn is_acknowledged(&self, path: &str) -> bool {
        let s = self.state.borrow();
        s.all || s.steps.contains(path)
    }

    /// Waits until the step at `path` is acknowledged.
    pub async fn wait(&self, path: &str) {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|s| s.all || s.steps.contains(path)).await;
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
}

#[derive(Debug)]
struct ManualStep {
    step: String,
    message: String,
    acks: Acknowledgements,
}

#[async_trait::async_trait]
impl Command for ManualStep {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        unreachable!("built by the job runner's factory")
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        if !self.acks.is_acknowledged(&self.step) {
            let msg = if self.message.is_empty() {
                format!("waiting for the acknowledgement of step {}", self.step)
            } else {
                format!(
                    "waiting for the acknowledgement of step {}: {}",
                    self.step, self.message
                )
            };
            ctx.log(&msg);
            tokio::select! {
                _ = self.acks.wait(&self.step) => {}
                _ = ctx.cancelled() => {
                    return Err(CommandError::failed(format!(
                        "stopped before step {} was acknowledged",
                        self.step
                    )));
                }
            }
        }
        Ok(Outcome::done().with_data(serde_json::json!({"acknowledged": self.step})))
    }

    fn idempotent(&self) -> bool {
        true
    }
}

fn manual_factory(
    acks: Acknowledgements,
) -> impl Fn(&TaskArgs<'_>) -> Result<Box<dyn Command>, ValidationErrors> + Send + Sync + 'static {
    move |args: &TaskArgs<'_>| {
        let a: ManualArgs = args.parse()?;
        let _ = a.data;
        Ok(Box::new(ManualStep {
            step: a.step,
            message: a.message,
            acks: acks.clone(),
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
    fn stage(&self) -> Option<Stage> {
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
        let mut stages: Vec<(usize, Stage)> = self
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.runs())
            .filter_map(|(i, s)| s.stage().map(|stage| (i, stage)))
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
        let mut registry = self.commands.clone();
        registry.register_fn(MANUAL_COMMAND, manual_factory(acks.clone()));
        registry.register::<Started>(STARTED_COMMAND);
        Plan::build_with_redactor(&job.tasklist(), &registry, self.redactor.clone())
            .map_err(BookError::Plan)
    }

    /// Runs `job` (a draft is scheduled first): `scheduled` → `running` → `done`, `error` or
    /// `cancel` by the run's outcome (`cancel` whenever `options.cancel` was used); each step
    /// that ran gets its outcome. Manual steps wait on `acks` (a first cancellation lets a
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
        let plan = self.plan(job, acks)?;
        let (_, stage_steps) = job.compile();
        let cancel = options.cancel.clone();
        let report = match &self.runs {
            None => {
                job.transition(JobState::Running)?;
                self.executor.run_with(&plan, options).await
            }
            Some(runs) => {
                // Durations are averaged per step, not per command.
                let keys: Vec<Option<String>> = stage_steps
                    .iter()
                    .map(|i| i.map(|i| job.steps[i].history_key()))
                    .collect();
                let new = NewRun::from_plan(&plan, job.source(), &self.started_by)
                    .with_history_keys(|task| keys.get(task.id.stage).cloned().flatten());
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
