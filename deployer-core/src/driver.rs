//! [`Driver`]: what every host application does around the executor — config → generate →
//! plan → record → execute, signals, and an exit status — in one builder.

use std::fmt;
use std::process::{ExitCode, Termination};
use std::sync::Arc;
use std::time::Duration;

use crate::command::{Command, CommandRegistry};
use crate::config::Config;
use crate::errors::{ConfigError, GeneratorError};
use crate::events::{EventSink, RunOutcome};
use crate::executor::{CancelHandle, Executor, RunOptions, RunReport, error_chain};
use crate::generator::{Generator, GeneratorContext, GeneratorRegistry};
use crate::host::Connector;
use crate::plan::Plan;
use crate::recorder::{ResumeOptions, Runs, RunsError};
use crate::redact::Redactor;
use crate::runs::{RunId, RunStore};
use crate::tasklist::Tasklist;
use crate::validation::ValidationErrors;

/// The config's failure budget (`max_failures`, `max_fail_percentage`: a config key or the
/// command line's override) on a generated tasklist that sets none itself, whatever the
/// generator.
fn with_config_budget(mut tasklist: Tasklist, config: &Config) -> Result<Tasklist, DriveError> {
    if !tasklist.budget.is_set() {
        tasklist.budget = crate::FailureBudget {
            max_failures: config.get_as("max_failures")?,
            max_fail_percentage: config.get_as("max_fail_percentage")?,
        };
    }
    Ok(tasklist)
}

/// `plan` with the variables `config` gives each of its hosts (see [`Plan::with_host_vars`]).
fn with_host_vars(plan: Plan, config: &Config) -> Plan {
    let vars = config.host_vars_of(plan.tasklist().hosts());
    plan.with_host_vars(vars)
}

/// The exit statuses of a deploy, as [`Finished::exit_code`] gives them.
///
/// | code | meaning |
/// |---|---|
/// | 0 | [`SUCCESS`](exit::SUCCESS): every task succeeded (or was skipped by its command), or there was nothing to do |
/// | 1 | [`FAILED`](exit::FAILED): a task failed, or a host or the run store could not be reached |
/// | 2 | [`BAD_INPUT`](exit::BAD_INPUT): the config, tasklist or options are wrong; nothing ran |
/// | 3 | [`CHANGES_PENDING`](exit::CHANGES_PENDING): a plan (`deploy plan`) would change something |
/// | 4 | [`WITHIN_BUDGET`](exit::WITHIN_BUDGET): the run completed, but hosts failed within its failure budget and were dropped |
/// | 130 | [`CANCELLED`](exit::CANCELLED): cancelled (a signal or a [`CancelHandle`]) |
pub mod exit {
    /// Every task succeeded (or was skipped by its command).
    pub const SUCCESS: u8 = 0;
    /// A task failed, or a host or the run store could not be reached.
    pub const FAILED: u8 = 1;
    /// The input (config, tasklist, options) is wrong; no host was touched.
    pub const BAD_INPUT: u8 = 2;
    /// A plan (not a run) found something that a deploy would change.
    pub const CHANGES_PENDING: u8 = 3;
    /// The run went on to its end, but hosts failed within its failure budget and were
    /// dropped ([`RunOutcome::Degraded`](crate::RunOutcome::Degraded)); a resume runs what
    /// they did not finish.
    pub const WITHIN_BUDGET: u8 = 4;
    /// The run was cancelled (SIGINT, SIGTERM, SIGHUP or a cancel handle).
    pub const CANCELLED: u8 = 130;
}

/// Why a deploy did not run to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    /// The config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The generator refused the config, or could not reach a host it asked about.
    #[error(transparent)]
    Generate(#[from] GeneratorError),
    /// The tasklist does not validate (every problem, with its path).
    #[error("{0}")]
    Plan(ValidationErrors),
    /// The plan names hosts the connector cannot serve.
    #[error("{0}")]
    Hosts(ValidationErrors),
    /// Recording, resuming or claiming the run failed.
    #[error(transparent)]
    Runs(#[from] RunsError),
    /// The plan cannot run on workers (an inline secret).
    #[error(transparent)]
    Submit(#[from] crate::work::SubmitError),
}

impl DriveError {
    /// The exit status this error stands for: [`exit::BAD_INPUT`] for wrong input,
    /// [`exit::FAILED`] for hosts or a store that could not be reached.
    pub fn exit_code(&self) -> u8 {
        match self {
            DriveError::Config(_)
            | DriveError::Plan(_)
            | DriveError::Hosts(_)
            | DriveError::Submit(_) => exit::BAD_INPUT,
            DriveError::Generate(GeneratorError::Remote(_)) => exit::FAILED,
            DriveError::Generate(_) => exit::BAD_INPUT,
            DriveError::Runs(
                RunsError::Invalid { .. }
                | RunsError::NeedsConfirmation { .. }
                | RunsError::AlreadySucceeded { .. }
                | RunsError::SecretsNeeded { .. }
                | RunsError::SecretsMismatch { .. }
                | RunsError::Store(crate::StoreError::NotResumable { .. }),
            ) => exit::BAD_INPUT,
            DriveError::Runs(_) => exit::FAILED,
        }
    }
}

/// How a deploy ended: the run's id (when recorded), its report (when it ran) or why it did
/// not, and the exit status for both.
///
/// Return it from `main` ([`Termination`]): an error is printed to stderr as `error: …`
/// (secrets redacted) and the process exits with [`exit_code`](Self::exit_code).
#[must_use]
pub struct Finished {
    /// The run's id in the store, once it was recorded.
    pub run_id: Option<RunId>,
    /// The run's report, or why it did not run (to its end).
    pub result: Result<RunReport, DriveError>,
    redactor: Redactor,
}

impl fmt::Debug for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finished")
            .field("run_id", &self.run_id)
            .field("exit_code", &self.exit_code())
            .finish_non_exhaustive()
    }
}

impl Finished {
    fn error(error: DriveError, redactor: &Redactor) -> Finished {
        Finished {
            run_id: None,
            result: Err(error),
            redactor: redactor.clone(),
        }
    }

    /// The exit status (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match &self.result {
            Ok(report) => match report.outcome {
                RunOutcome::Succeeded => exit::SUCCESS,
                RunOutcome::Cancelled => exit::CANCELLED,
                RunOutcome::Failed => exit::FAILED,
                RunOutcome::Degraded => exit::WITHIN_BUDGET,
            },
            Err(e) => e.exit_code(),
        }
    }

    /// Whether the run succeeded.
    pub fn succeeded(&self) -> bool {
        self.exit_code() == exit::SUCCESS
    }

    /// Why the deploy did not run, with its causes and the run's secrets redacted.
    pub fn error_message(&self) -> Option<String> {
        let e = self.result.as_ref().err()?;
        Some(self.redactor.redact(&error_chain(e)).into_owned())
    }
}

impl<E: Into<DriveError>> From<E> for Finished {
    /// A deploy that stopped before it ran: `return Err(e).into()`-style early exits from a
    /// `main` that returns [`Finished`] (a config that does not load, a store that does not
    /// open).
    fn from(error: E) -> Finished {
        Finished::error(error.into(), &Redactor::new())
    }
}

impl From<crate::StoreError> for DriveError {
    fn from(e: crate::StoreError) -> DriveError {
        DriveError::Runs(RunsError::Store(e))
    }
}

impl Termination for Finished {
    fn report(self) -> ExitCode {
        if let Some(message) = self.error_message() {
            eprintln!("error: {message}");
        }
        ExitCode::from(self.exit_code())
    }
}

/// Submits `plan` to `queue` for workers to run ([`WorkQueue`](crate::WorkQueue)) instead of driving it in
/// this process, and returns the run's id; follow it with the store's
/// [`changes`](RunStore::changes), [`WorkQueue::work_status`](crate::WorkQueue::work_status)
/// and [`RunStore::run`] until its state is final.
///
/// `zone_of` gives each host's zone (the inventory host var `zone`:
/// `|h| config.host_var(h, "zone")` as a string). A plan that workers cannot run (see
/// [`Submission::of_plan`](crate::Submission::of_plan)) is refused with
/// [`DriveError::Submit`] before anything is stored.
///
/// ```no_run
/// # async fn demo(queue: &dyn deployer_core::WorkQueue, plan: &deployer_core::Plan) {
/// let id = deployer_core::submit(queue, plan, "tasklist:site.json", "alice", |_| None)
///     .await
///     .unwrap();
/// println!("submitted run {id}");
/// # }
/// ```
pub async fn submit(
    queue: &dyn crate::work::WorkQueue,
    plan: &Plan,
    source: &str,
    started_by: &str,
    zone_of: impl Fn(&str) -> Option<String>,
) -> Result<RunId, DriveError> {
    let mut submission = crate::work::Submission::of_plan(plan, &RunId::new(), zone_of)?;
    let record = queue
        .create_run(crate::runs::NewRun::from_plan(plan, source, started_by))
        .await?;
    submission.run = record.id.clone();
    queue.submit(&submission).await?;
    Ok(record.id)
}

/// Hands submitted run `id`, finished and not succeeded, back to `queue`'s workers — what
/// [`Driver::resume`] is for a run driven in-process — and returns once it is claimable again;
/// follow it as after [`submit`].
///
/// Done tasks are not run again, except those a resume runs again as it does in-process
/// (`finally` stages, and what they undid: [`Plan::skipped_on_resume`], on the run's stored
/// tasklist planned with `registry`). A run that stopped because an entry that is not
/// idempotent was interrupted is refused unless `force` (then that entry runs again); so is a
/// run still running, one that succeeded, and one never submitted
/// ([`StoreError::NotResumable`](crate::StoreError::NotResumable), exit status 2).
///
/// ```no_run
/// # async fn demo(queue: &dyn deployer_core::WorkQueue, registry: &deployer_core::CommandRegistry, id: deployer_core::RunId) {
/// match deployer_core::resume_submitted(queue, registry, &id, false).await {
///     Ok(()) => println!("run {id} is back with its workers"),
///     Err(e) => eprintln!("error: {e}"),
/// }
/// # }
/// ```
pub async fn resume_submitted(
    queue: &dyn crate::work::WorkQueue,
    registry: &crate::CommandRegistry,
    id: &RunId,
    force: bool,
) -> Result<(), DriveError> {
    let record = queue.run(id).await?;
    let plan = Plan::build(&record.tasklist, registry).map_err(|errors| RunsError::Invalid {
        id: id.clone(),
        errors,
    })?;
    let done: std::collections::HashSet<crate::TaskId> = queue
        .tasks(id)
        .await?
        .into_iter()
        .filter(|t| t.state.is_done())
        .map(|t| t.id)
        .collect();
    let skip = plan.skipped_on_resume(&done);
    let mut rerun: Vec<crate::TaskId> = done.difference(&skip).copied().collect();
    rerun.sort();
    queue.resume_work(id, &rerun, force).await?;
    Ok(())
}

/// Runs deploys for a host application: the registries, the connector, the run store and the
/// sinks in one value, and one call from a config to a recorded, finished run.
///
/// * [`deploy`](Self::deploy): config → generator → [`Plan`] (every task validated; with the
///   config's and the plan's secrets in the driver's [`Redactor`]) → the connector's check of
///   every host → a run recorded in the store → the executor, with SIGINT, SIGTERM and SIGHUP
///   handled (the first drains like a failure: nothing new starts, running tasks finish; the
///   second stops running tasks) → a [`Finished`] with the exit status.
/// * [`plan`](Self::plan) / [`plan_tasklist`](Self::plan_tasklist) and [`run`](Self::run)
///   are the same steps apart, for a dry run or a saved tasklist; [`resume`](Self::resume)
///   continues a recorded run.
///
/// The driver prints nothing; cancellation is logged through `tracing` (component
/// `Driver`). Clones are cheap and share the redactor.
///
/// ```
/// use std::sync::Arc;
/// use deployer_core::fixture::{FakeConnector, Noop};
/// use deployer_core::{
///     Config, Driver, Generator, GeneratorContext, GeneratorError, MemoryStore, Stage, Task,
///     Tasklist, async_trait,
/// };
///
/// struct Site;
///
/// #[async_trait]
/// impl Generator for Site {
///     async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
///         let hosts: Vec<String> = ctx.config().require("hosts")?;
///         let tasks = hosts.iter().map(|h| Task::new("restart").on(h));
///         Ok(Tasklist::new("site").stage(Stage::new("Restart", 2).tasks(tasks)))
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = Arc::new(MemoryStore::new());
/// let driver = Driver::new(Arc::new(FakeConnector::new()))
///     .generator("site", Site)
///     .command::<Noop>("restart")
///     .store(store.clone())
///     .handle_signals(false);
/// let config = Config::from_yaml_str("platform: site\nhosts: [fe001, fe002]\n", "site.yaml").unwrap();
/// let finished = driver.deploy(config).await;
/// assert_eq!(finished.exit_code(), 0);
/// assert!(finished.run_id.is_some());
///
/// let bad = Config::from_yaml_str("platform: site\n", "site.yaml").unwrap();
/// let finished = driver.deploy(bad).await;
/// assert_eq!(finished.exit_code(), 2);
/// assert_eq!(finished.error_message().unwrap(), "site.yaml: missing required key \"hosts\"");
/// # });
/// ```
#[derive(Clone)]
pub struct Driver {
    generators: GeneratorRegistry,
    commands: CommandRegistry,
    connector: Arc<dyn Connector>,
    store: Option<Arc<dyn RunStore>>,
    sinks: Vec<Arc<dyn EventSink>>,
    redactor: Redactor,
    started_by: String,
    signals: bool,
    max_concurrency: Option<usize>,
    retry_delay: Duration,
    lease_ttl: Option<Duration>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("generators", &self.generators)
            .field("commands", &self.commands)
            .field("store", &self.store.is_some())
            .field("sinks", &self.sinks.len())
            .field("started_by", &self.started_by)
            .field("signals", &self.signals)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver getting hosts from `connector`, with no generator, no command, no store and no
    /// sink; signals handled; started by the OS user.
    pub fn new(connector: Arc<dyn Connector>) -> Driver {
        Driver {
            generators: GeneratorRegistry::new(),
            commands: CommandRegistry::new(),
            connector,
            store: None,
            sinks: Vec::new(),
            redactor: Redactor::new(),
            started_by: os_user(),
            signals: true,
            max_concurrency: None,
            retry_delay: Duration::from_secs(1),
            lease_ttl: None,
        }
    }

    /// Registers `generator` for configs whose `platform` is `platform`.
    pub fn generator(mut self, platform: &str, generator: impl Generator + 'static) -> Driver {
        self.generators.register(platform, generator);
        self
    }

    /// Uses `generators` (replacing those registered so far).
    pub fn generators(mut self, generators: GeneratorRegistry) -> Driver {
        self.generators = generators;
        self
    }

    /// Registers command `C` under `name`.
    pub fn command<C: Command + 'static>(mut self, name: &str) -> Driver {
        self.commands.register::<C>(name);
        self
    }

    /// Uses `commands` (replacing those registered so far), e.g. the standard set plus yours.
    pub fn commands(mut self, commands: CommandRegistry) -> Driver {
        self.commands = commands;
        self
    }

    /// Records every run in `store` (default: none; runs are not recorded and cannot be
    /// resumed).
    pub fn store(mut self, store: Arc<dyn RunStore>) -> Driver {
        self.store = Some(store);
        self
    }

    /// Sends every event to `sink` too (progress, recap, JSON lines…).
    pub fn sink(mut self, sink: impl EventSink + 'static) -> Driver {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// Keeps the secrets of configs and plans in `redactor` (default: a new one). Hand the
    /// same redactor to the log formatter so log lines are redacted too.
    pub fn redactor(mut self, redactor: Redactor) -> Driver {
        self.redactor = redactor;
        self
    }

    /// Who starts the runs, in their records (default: `$USER`, else the OS user id).
    pub fn started_by(mut self, who: impl Into<String>) -> Driver {
        self.started_by = who.into();
        self
    }

    /// Whether SIGINT, SIGTERM and SIGHUP cancel the run (default: true). Turn it off when the
    /// host application handles signals itself (and cancels through [`run_with`](Self::run_with)).
    pub fn handle_signals(mut self, on: bool) -> Driver {
        self.signals = on;
        self
    }

    /// At most `n` tasks at once in any stage (default: each stage's own concurrency).
    pub fn max_concurrency(mut self, n: Option<usize>) -> Driver {
        self.max_concurrency = n;
        self
    }

    /// Pause between a task's attempts (default: 1 s).
    pub fn retry_delay(mut self, delay: Duration) -> Driver {
        self.retry_delay = delay;
        self
    }

    /// How long this controller's claim on a run lasts without renewal (default: [`Runs`]'s).
    pub fn lease_ttl(mut self, ttl: Duration) -> Driver {
        self.lease_ttl = Some(ttl);
        self
    }

    /// The redactor holding the secrets of the configs and plans seen so far.
    pub fn redactor_handle(&self) -> &Redactor {
        &self.redactor
    }

    /// The command registry (for a host application's own checks).
    pub fn command_registry(&self) -> &CommandRegistry {
        &self.commands
    }

    /// The run store, if any.
    pub fn run_store(&self) -> Option<&Arc<dyn RunStore>> {
        self.store.as_ref()
    }

    /// Generates and validates the plan of `config`, and checks that the connector can serve
    /// every host of it. Nothing is recorded; a generator that asks hosts (remote versions)
    /// goes through the connector — but only after the [`dry_run`](Self::dry_run) of the same
    /// config passed: every task validated, every host and the connector's capacity checked
    /// (open files for the whole fleet) before any host is contacted.
    pub async fn plan(&self, config: Config) -> Result<Plan, DriveError> {
        match self.dry_run(config.clone()).await {
            // A generator that cannot plan without asking (a rollback) is checked after.
            Ok(_) | Err(DriveError::Generate(GeneratorError::NeedsHostAccess { .. })) => {}
            Err(e) => return Err(e),
        }
        let source = config.clone();
        let ctx = GeneratorContext::new(config).with_connector(self.connector.clone());
        let tasklist = with_config_budget(self.generators.generate(ctx).await?, &source)?;
        let plan = self.plan_tasklist(&tasklist)?;
        Ok(with_host_vars(plan, &source))
    }

    /// The dry run of `config`: generates without host access (a generator that would ask hosts
    /// plans without their answers, see [`GeneratorContext::has_host_access`]), validates every
    /// task and checks that the connector can serve every host — and contacts none.
    pub async fn dry_run(&self, config: Config) -> Result<Plan, DriveError> {
        self.redactor.add_all(config.redactor());
        let source = config.clone();
        let tasklist = self
            .generators
            .generate(GeneratorContext::new(config))
            .await?;
        let tasklist = with_config_budget(tasklist, &source)?;
        let plan = self.plan_tasklist(&tasklist)?;
        Ok(with_host_vars(plan, &source))
    }

    /// Validates `tasklist` (a saved one) and checks that the connector can serve every host.
    pub fn plan_tasklist(&self, tasklist: &Tasklist) -> Result<Plan, DriveError> {
        let plan = Plan::build_with_redactor(tasklist, &self.commands, self.redactor.clone())
            .map_err(DriveError::Plan)?;
        self.check_hosts(&plan)?;
        Ok(plan)
    }

    /// Asks the connector whether it can serve every host of `plan` ([`Connector::check`])
    /// and hold all of them at once ([`Connector::check_capacity`], asked with the number of
    /// distinct (host, user) pairs), without contacting any; every refusal is reported with the
    /// first task that names the host.
    pub fn check_hosts(&self, plan: &Plan) -> Result<(), DriveError> {
        let mut problems = ValidationErrors::new();
        let mut seen = std::collections::HashSet::new();
        for stage in plan.stages.iter() {
            for entry in &stage.entries {
                for step in &entry.steps {
                    if !seen.insert((step.spec.host.clone(), step.spec.user.clone())) {
                        continue;
                    }
                    if let Err(e) = self.connector.check(&step.spec) {
                        problems.push(
                            crate::ValidationError::new(
                                format!("{}.remote_host", step.info.id),
                                error_chain(&e),
                            )
                            .expected("a host this program's connector can reach"),
                        );
                    }
                }
            }
        }
        if let Err(e) = self.connector.check_capacity(seen.len()) {
            problems.push(crate::ValidationError::new("", error_chain(&e)));
        }
        problems.into_result(()).map_err(DriveError::Hosts)
    }

    fn executor(&self) -> Executor {
        let mut executor = Executor::new(self.connector.clone())
            .max_concurrency(self.max_concurrency)
            .retry_delay(self.retry_delay);
        for sink in &self.sinks {
            executor = executor.sink(sink.clone());
        }
        executor
    }

    fn runs(&self) -> Option<Runs> {
        let store = self.store.clone()?;
        let runs = Runs::new(store).redactor(self.redactor.clone());
        Some(match self.lease_ttl {
            Some(ttl) => runs.lease_ttl(ttl),
            None => runs,
        })
    }

    /// Plans `config` ([`plan`](Self::plan)) and runs it ([`run`](Self::run)), recorded with
    /// the config's platform as its source.
    pub async fn deploy(&self, config: Config) -> Finished {
        let source = format!("config:{}", config.origin());
        match self.plan(config).await {
            Ok(plan) => self.run(&plan, &source).await,
            Err(e) => Finished::error(e, &self.redactor),
        }
    }

    /// Records `plan` (when there is a store) and runs it, with signals handled.
    pub async fn run(&self, plan: &Plan, source: &str) -> Finished {
        self.run_with(plan, source, RunOptions::default()).await
    }

    /// [`run`](Self::run) with options (a cancel handle of your own, tasks to skip).
    pub async fn run_with(&self, plan: &Plan, source: &str, options: RunOptions) -> Finished {
        let _signals = self.signals.then(|| watch_signals(options.cancel.clone()));
        let executor = self.executor();
        match self.runs() {
            None => Finished {
                run_id: None,
                result: Ok(executor.run_with(plan, options).await),
                redactor: self.redactor.clone(),
            },
            Some(runs) => {
                let id = match runs.create(plan, source, &self.started_by).await {
                    Ok(id) => id,
                    Err(e) => return Finished::error(e.into(), &self.redactor),
                };
                let result = runs
                    .drive(&executor, &id, plan, options)
                    .await
                    .map_err(DriveError::from);
                Finished {
                    run_id: Some(id),
                    result,
                    redactor: self.redactor.clone(),
                }
            }
        }
    }

    /// Continues recorded run `id` (see [`Runs::resume`]), with signals handled.
    pub async fn resume(&self, id: &RunId, resume: ResumeOptions) -> Finished {
        let Some(runs) = self.runs() else {
            return Finished::error(
                RunsError::Store(crate::StoreError::NotFound { id: id.to_string() }).into(),
                &self.redactor,
            );
        };
        let options = RunOptions::default();
        let _signals = self.signals.then(|| watch_signals(options.cancel.clone()));
        let result = runs
            .resume(&self.executor(), &self.commands, id, resume, options)
            .await
            .map_err(DriveError::from);
        Finished {
            run_id: Some(id.clone()),
            result,
            redactor: self.redactor.clone(),
        }
    }
}

/// The OS user name: `$USER`, else `$LOGNAME`, else the name `/etc/passwd` gives this
/// process's user id, else `uid N`: who a run is recorded as started by when the host
/// application names nobody (the `Driver`, the `books` program's default `--as`).
///
/// ```
/// assert!(!deployer_core::os_user().is_empty());
/// ```
pub fn os_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.is_empty()
        {
            return name;
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata("/proc/self") {
            let uid = meta.uid().to_string();
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            return passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[2] == uid)
                .map(|f| f[0].to_string())
                .unwrap_or_else(|| format!("uid {uid}"));
        }
    }
    "unknown".to_string()
}

/// Cancels a run on SIGINT, SIGTERM and SIGHUP while it lives (see [`cancel_on_signals`]);
/// dropping it stops listening.
#[must_use = "signals are listened for only while the guard lives"]
#[derive(Debug)]
pub struct SignalGuard(tokio::task::JoinHandle<()>);

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Cancels `cancel` on SIGINT, SIGTERM and SIGHUP (Ctrl-C elsewhere) while the returned guard
/// lives: the first signal cancels (nothing new starts, running tasks finish, then `finally`
/// stages — the clean-up — run), the second stops running tasks and skips the clean-up.
/// `say` is told what each signal did, in words (the [`Driver`] logs it; a program without a
/// log prints it). Must be called inside a Tokio runtime.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cancel = deployer_core::CancelHandle::new();
/// let _signals = deployer_core::cancel_on_signals(cancel.clone(), |what| eprintln!("{what}"));
/// assert!(!cancel.is_cancelled());
/// # });
/// ```
pub fn cancel_on_signals(cancel: CancelHandle, say: impl Fn(&str) + Send + 'static) -> SignalGuard {
    let cancelled = move |signal: &str| {
        if cancel.is_cancelled() {
            say(&format!(
                "{signal} again: stopping running tasks and skipping the clean-up"
            ));
        } else {
            say(&format!(
                "{signal}: cancelling: no new tasks start, running ones finish, then the clean-up \
                 runs ({signal} again stops them and skips it)"
            ));
        }
        cancel.cancel();
    };
    SignalGuard(tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                tracing::warn!(component = "Driver", "cannot listen for signals");
                return;
            };
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                };
                cancelled(name);
            }
        }
        #[cfg(not(unix))]
        while tokio::signal::ctrl_c().await.is_ok() {
            cancelled("Ctrl-C");
        }
    }))
}

/// The driver's signal handling: what each signal did goes to the log.
fn watch_signals(cancel: CancelHandle) -> SignalGuard {
    cancel_on_signals(cancel, |what| {
        tracing::warn!(component = "Driver", "{what}")
    })
}
