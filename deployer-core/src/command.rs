//! The `Command` trait, its registry, and what a command sees while it runs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::errors::{CommandError, RemoteError};
use crate::events::TaskInfo;
use crate::host::{ExecOptions, ExecOutput, OutputSink, RemoteHost, Stream};
use crate::redact::Redactor;
use crate::tasklist::Task;
use crate::validation::{ValidationError, ValidationErrors, did_you_mean};

/// One step on one host.
///
/// A command is built from a task by [`initialize`](Command::initialize), which validates the
/// arguments and does no I/O; every task of a tasklist is initialized before anything runs,
/// which is what makes a dry run trustworthy. [`execute`](Command::execute) then does the work
/// against the task's host.
///
/// ```
/// use deployer_core::{Command, CommandError, ExecContext, Outcome, TaskArgs, ValidationErrors};
/// use serde::Deserialize;
///
/// #[derive(Debug, Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Touch {
///     path: String,
/// }
///
/// #[async_trait::async_trait]
/// impl Command for Touch {
///     fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
///         args.parse()
///     }
///
///     async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
///         let cmd = deployer_core::ShellCommand::new("touch").arg(&self.path);
///         ctx.run_checked(&cmd.build().map_err(|e| CommandError::failed(e.to_string()))?).await?;
///         Ok(Outcome::done())
///     }
///
///     fn idempotent(&self) -> bool {
///         true
///     }
/// }
///
/// let mut registry = deployer_core::CommandRegistry::new();
/// registry.register::<Touch>("touch");
/// ```
///
/// # Contract
///
/// * `initialize` reports every problem with a path relative to the task (`path`, `files[2]`);
///   the caller prefixes the task's position.
/// * `execute` returns `Ok` for success (or a deliberate skip) and `Err` for failure. It may be
///   called again after a failure when the task has `retries`, and it may be dropped at any
///   await point (timeout, hard cancellation): it must leave nothing that a retry cannot cope
///   with.
#[async_trait]
pub trait Command: Send + Sync + fmt::Debug + 'static {
    /// Validates the task's arguments and builds the command. No I/O on hosts.
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors>
    where
        Self: Sized;

    /// Does the work.
    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError>;

    /// Whether running the command twice has the same effect as running it once. A resumed run
    /// re-runs an interrupted task only when this is true. Default: false.
    fn idempotent(&self) -> bool {
        false
    }

    /// Names of arguments that always hold secrets (passwords, tokens). Default: none.
    ///
    /// When a plan is built, a plain string in such an argument is marked secret
    /// (`{"secret": …}`), so it never shows in `Debug`, saved or stored tasklists, events or
    /// logs, and output echoing it shows `***`. `initialize` still receives the string. Any
    /// other argument is secret when the tasklist writes it `{"secret": …}` or
    /// `{"secret_env": …}` (see [`SecretArg`](crate::SecretArg)).
    ///
    /// ```
    /// # use deployer_core::*;
    /// #[derive(Debug)]
    /// struct Login { token: String }
    ///
    /// #[async_trait::async_trait]
    /// impl Command for Login {
    ///     fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
    ///         #[derive(serde::Deserialize)]
    ///         struct A { token: String }
    ///         let a: A = args.parse()?;
    ///         Ok(Login { token: a.token })
    ///     }
    ///     async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> {
    ///         Ok(Outcome::done())
    ///     }
    ///     fn secret_arguments() -> &'static [&'static str] {
    ///         &["token"]
    ///     }
    /// }
    ///
    /// let mut registry = CommandRegistry::new();
    /// registry.register::<Login>("login");
    /// let tasklist = Tasklist::new("t")
    ///     .stage(Stage::new("s", 1).task(Task::new("login").arg("token", "tok-123")));
    /// let plan = Plan::build(&tasklist, &registry).unwrap();
    /// assert!(!plan.tasklist().to_json_string().contains("tok-123"));
    /// ```
    fn secret_arguments() -> &'static [&'static str]
    where
        Self: Sized,
    {
        &[]
    }
}

/// How a successful `execute` ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Set when the command found nothing to do.
    pub skipped: Option<String>,
    /// Data the command produced (e.g. versions found), kept in the run report.
    pub data: Option<Value>,
}

impl Outcome {
    /// The work was done.
    pub fn done() -> Self {
        Outcome::default()
    }

    /// There was nothing to do, for `reason`.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Outcome {
            skipped: Some(reason.into()),
            data: None,
        }
    }

    /// Attaches data to the outcome.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// A task's arguments as a command's `initialize` sees them.
pub struct TaskArgs<'a> {
    task: &'a Task,
}

impl<'a> TaskArgs<'a> {
    /// Wraps a task.
    pub fn new(task: &'a Task) -> Self {
        TaskArgs { task }
    }

    /// The whole task (host, tag, timeout, arguments).
    pub fn task(&self) -> &'a Task {
        self.task
    }

    /// The raw arguments.
    pub fn raw(&self) -> &'a serde_json::Map<String, Value> {
        &self.task.args
    }

    /// Deserializes the arguments into `T`, with the path of the first mismatch and a
    /// "did you mean" for misspelt keys when `T` denies unknown fields.
    ///
    /// Secret values (`{"secret": "…"}`) are deserialized as their strings: a command receives
    /// the secret intact, wherever the tasklist marked it. Keep it out of your own messages
    /// and `Debug` (see [`is_secret`](Self::is_secret)).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ValidationErrors> {
        let value = crate::secrets::unwrap(&Value::Object(self.task.args.clone()));
        serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = err.inner().to_string();
            // serde may quote the value it could not use: never a secret of this task.
            let redactor = Redactor::new();
            crate::secrets::inline_values(&Value::Object(self.task.args.clone()))
                .for_each(|s| redactor.add(s));
            redactor.problems(ValidationErrors::from(arg_error(path, &message)))
        })
    }

    /// Whether the argument at `pointer` (a JSON pointer: `/lb_password`, `/env/DB_PASSWORD`)
    /// is secret: marked in the tasklist or declared by the command.
    ///
    /// ```
    /// use deployer_core::{SecretArg, TaskArgs, Task};
    /// let task = Task::new("execute_command")
    ///     .arg("env", serde_json::json!({"DB_PASSWORD": SecretArg::inline("pw"), "MODE": "fast"}));
    /// let args = TaskArgs::new(&task);
    /// assert!(args.is_secret("/env/DB_PASSWORD"));
    /// assert!(!args.is_secret("/env/MODE"));
    /// ```
    pub fn is_secret(&self, pointer: &str) -> bool {
        let Some(rest) = pointer.strip_prefix('/') else {
            return false;
        };
        let (first, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let key = first.replace("~1", "/").replace("~0", "~");
        self.task
            .args
            .get(&key)
            .and_then(|v| v.pointer(tail))
            .is_some_and(crate::SecretArg::is_secret)
    }
}

fn arg_error(path: String, message: &str) -> ValidationError {
    // serde's wording: "unknown field `sourc`, expected one of `source`, `destination`"
    // or "unknown field `x`, expected `y`"; turn it into a hint.
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest
            .rsplit_once("`, expected ")
            .or_else(|| rest.strip_suffix("`, there are no fields").map(|f| (f, "")))
    {
        // The field came from the input and may hold backticks; the expected names did not.
        let candidates: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        // serde_path_to_error already ends the path with the unknown key.
        let at = if path == field || path.ends_with(&format!(".{field}")) {
            path.clone()
        } else {
            join_path(&path, field)
        };
        let mut e = ValidationError::new(at, format!("unknown argument {}", crate::shown(field)));
        if !candidates.is_empty() {
            e = e.expected(format!("one of {}", candidates.join(", ")));
        } else {
            e = e.expected("no arguments");
        }
        if let Some(s) = did_you_mean(field, candidates.iter().copied()) {
            e = e.hint(format!("did you mean \"{s}\"?"));
        }
        return e;
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        return ValidationError::new(join_path(&path, field), "missing required argument");
    }
    ValidationError::new(path, message.to_string())
}

fn join_path(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_string()
    } else {
        format!("{base}.{field}")
    }
}

impl From<ValidationError> for ValidationErrors {
    fn from(e: ValidationError) -> Self {
        let mut errors = ValidationErrors::new();
        errors.push(e);
        errors
    }
}

type Factory =
    Arc<dyn Fn(&TaskArgs<'_>) -> Result<Box<dyn Command>, ValidationErrors> + Send + Sync>;

/// Maps command names to constructors.
///
/// ```
/// # use deployer_core::*;
/// # #[derive(Debug)] struct Noop;
/// # #[async_trait::async_trait] impl Command for Noop {
/// #   fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> { Ok(Noop) }
/// #   async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> { Ok(Outcome::done()) }
/// # }
/// let mut registry = CommandRegistry::new();
/// registry.register::<Noop>("noop");
/// assert!(registry.contains("noop"));
/// let err = registry.instantiate(&Task::new("nop")).unwrap_err();
/// assert!(err.to_string().contains("did you mean \"noop\"?"));
/// ```
#[derive(Clone, Default)]
pub struct CommandRegistry {
    factories: IndexMap<String, Factory>,
    secret_args: std::collections::HashMap<String, Vec<String>>,
}

impl CommandRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `C` under `name`, replacing an earlier registration of that name.
    pub fn register<C: Command>(&mut self, name: impl Into<String>) -> &mut Self {
        let name = name.into();
        self.factories.insert(
            name.clone(),
            Arc::new(|args: &TaskArgs<'_>| {
                C::initialize(args).map(|c| Box::new(c) as Box<dyn Command>)
            }),
        );
        self.secret_args.remove(&name);
        self.declare_secret_arguments(&name, C::secret_arguments())
    }

    /// Registers a constructor closure under `name` (with no secret arguments: declare them
    /// with [`declare_secret_arguments`](Self::declare_secret_arguments)).
    pub fn register_fn<F>(&mut self, name: impl Into<String>, factory: F) -> &mut Self
    where
        F: Fn(&TaskArgs<'_>) -> Result<Box<dyn Command>, ValidationErrors> + Send + Sync + 'static,
    {
        let name = name.into();
        self.secret_args.remove(&name);
        self.factories.insert(name, Arc::new(factory));
        self
    }

    /// Declares that these arguments of `command` always hold secrets, like
    /// [`Command::secret_arguments`] (adding to what was declared).
    ///
    /// ```
    /// # use deployer_core::*;
    /// # #[derive(Debug)] struct Noop;
    /// # #[async_trait::async_trait] impl Command for Noop {
    /// #   fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> { Ok(Noop) }
    /// #   async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> { Ok(Outcome::done()) }
    /// # }
    /// let mut registry = CommandRegistry::new();
    /// registry
    ///     .register_fn("login", |_| Ok(Box::new(Noop)))
    ///     .declare_secret_arguments("login", &["token"]);
    /// assert_eq!(registry.secret_arguments("login"), ["token"]);
    /// let mut task = Task::new("login").arg("token", "t-1");
    /// registry.mark_secrets(&mut task);
    /// assert_eq!(task.args["token"], SecretArg::inline("t-1"));
    /// ```
    pub fn declare_secret_arguments(&mut self, command: &str, names: &[&str]) -> &mut Self {
        if names.is_empty() {
            return self;
        }
        let list = self.secret_args.entry(command.to_string()).or_default();
        for n in names {
            if !list.iter().any(|x| x == n) {
                list.push(n.to_string());
            }
        }
        self
    }

    /// The arguments `command` declares secret.
    pub fn secret_arguments(&self, command: &str) -> &[String] {
        self.secret_args.get(command).map_or(&[], Vec::as_slice)
    }

    /// Marks the plain strings of `task`'s declared secret arguments `{"secret": …}`.
    pub fn mark_secrets(&self, task: &mut Task) {
        for name in self.secret_arguments(&task.command) {
            if let Some(v) = task.args.get_mut(name)
                && let Value::String(s) = v
            {
                *v = crate::SecretArg::inline(std::mem::take(s));
            }
        }
    }

    /// [`mark_secrets`](Self::mark_secrets) for every task of `tasklist`.
    pub fn mark_tasklist_secrets(&self, tasklist: &mut crate::Tasklist) {
        for task in tasklist.tasks_mut() {
            self.mark_secrets(task);
        }
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Registered names, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the command of `task`; errors have paths relative to the task.
    ///
    /// Declared secret arguments are marked, `{"secret_env": …}` values are read from the
    /// environment, and problems never show a secret (see [`Plan::build`], which also keeps
    /// the secrets in the plan's [`Redactor`]).
    ///
    /// [`Plan::build`]: crate::Plan::build
    pub fn instantiate(&self, task: &Task) -> Result<Box<dyn Command>, ValidationErrors> {
        let mut marked = task.clone();
        self.mark_secrets(&mut marked);
        self.build_task(&marked, &Redactor::new())
            .map(|(_, command)| command)
    }

    /// Resolves the secrets of an already marked task and builds its command; returns the
    /// task the command runs with (secrets from the environment filled in).
    pub(crate) fn build_task(
        &self,
        marked: &Task,
        redactor: &Redactor,
    ) -> Result<(Task, Box<dyn Command>), ValidationErrors> {
        let args =
            crate::secrets::resolve_args(&marked.args, &|var| std::env::var(var).ok(), redactor)?;
        let mut task = marked.clone();
        task.args = args;
        let command = self
            .instantiate_resolved(&task)
            .map_err(|p| redactor.problems(p))?;
        Ok((task, command))
    }

    fn instantiate_resolved(&self, task: &Task) -> Result<Box<dyn Command>, ValidationErrors> {
        match self.factories.get(&task.command) {
            Some(factory) => factory(&TaskArgs::new(task)),
            None => {
                let mut e = ValidationError::new(
                    "command",
                    format!("unknown command {}", crate::shown(&task.command)),
                )
                .expected("a registered command");
                if let Some(s) = did_you_mean(&task.command, self.names()) {
                    e = e.hint(format!("did you mean \"{s}\"?"));
                }
                Err(e.into())
            }
        }
    }
}

impl fmt::Debug for CommandRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

/// What a command sees while it runs: its host, its task, and a way to report output.
pub struct ExecContext {
    pub(crate) host: Arc<dyn RemoteHost>,
    pub(crate) info: Arc<TaskInfo>,
    pub(crate) task: Arc<Task>,
    pub(crate) attempt: u32,
    pub(crate) output: OutputSink,
    pub(crate) cancel: CancellationToken,
    pub(crate) run_cancel: CancellationToken,
    pub(crate) redactor: Redactor,
    pub(crate) run_id: Option<crate::RunId>,
    pub(crate) emitter: Option<Arc<crate::executor::Emitter>>,
    pub(crate) host_vars: Option<Arc<crate::HostVars>>,
}

/// Each host's variables by host key: what an inventory gives a host (its own vars over its
/// groups'), see [`Plan::with_host_vars`](crate::Plan::with_host_vars).
pub type HostVars = std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>>;

impl ExecContext {
    /// A context for running a command outside the executor (tests, generators that query
    /// hosts). Output lines go to `output`.
    pub fn new(host: Arc<dyn RemoteHost>, task: Task, output: OutputSink) -> Self {
        let info = Arc::new(TaskInfo {
            id: crate::events::TaskId {
                stage: 0,
                entry: 0,
                step: None,
            },
            host: task.host_key().to_string(),
            tag: task.tag.clone(),
            command: task.command.clone(),
        });
        ExecContext {
            host,
            info,
            task: Arc::new(task),
            attempt: 1,
            output,
            cancel: CancellationToken::new(),
            run_cancel: CancellationToken::new(),
            redactor: Redactor::new(),
            run_id: None,
            emitter: None,
            host_vars: None,
        }
    }

    /// The same context with these host variables (see [`host_var`](Self::host_var)).
    pub fn with_host_vars(mut self, vars: Arc<HostVars>) -> Self {
        self.host_vars = Some(vars);
        self
    }

    /// A variable of the task's host, from the inventory (the host's own, else its groups',
    /// a child group's over its parent's; the command line's `--set` over both): `None` when
    /// the host has no such variable or the plan was given none.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use deployer_core::fixture::FakeHost;
    /// use deployer_core::{ExecContext, HostVars, Task};
    ///
    /// let mut vars = HostVars::new();
    /// vars.entry("web1".to_string()).or_default().insert("http_port".into(), 8080.into());
    /// let ctx = ExecContext::new(Arc::new(FakeHost::new("web1")), Task::new("x").on("web1"),
    ///                            Arc::new(|_, _: &str| {}))
    ///     .with_host_vars(Arc::new(vars));
    /// assert_eq!(ctx.host_var("http_port"), Some(&8080.into()));
    /// assert_eq!(ctx.host_var("other"), None);
    /// ```
    pub fn host_var(&self, key: &str) -> Option<&serde_json::Value> {
        self.host_vars.as_ref()?.get(&self.info.host)?.get(key)
    }

    /// The same context inside the run record `id` (what [`run_id`](Self::run_id) returns).
    pub fn with_run_id(mut self, id: crate::RunId) -> Self {
        self.run_id = Some(id);
        self
    }

    /// The run record this task belongs to, when the run is recorded: an identity that
    /// survives a resume or a takeover of the run (a deploy lock names it).
    pub fn run_id(&self) -> Option<&crate::RunId> {
        self.run_id.as_ref()
    }

    /// The run's [`Redactor`]: the secrets of the plan. A command that obtains a secret while
    /// it runs (from a vault, from the environment) adds it here, so output and errors that
    /// echo it show `***`; a command building its own messages redacts them with it.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The host the task runs on.
    pub fn host(&self) -> &Arc<dyn RemoteHost> {
        &self.host
    }

    /// The task's position, host key, tag and command name.
    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    /// The task itself.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// Which attempt this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The task's timeout, if any (the executor enforces it; a command may use it to bound
    /// its own polling).
    pub fn timeout(&self) -> Option<Duration> {
        self.task.timeout
    }

    /// Resolves when the run is being stopped hard; long waits inside a command should select
    /// on it.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Resolves when the run was asked to cancel (a first Ctrl-C, a cancel request stored by
    /// another process), which lets running tasks finish: a command doing work on its host
    /// should, but one that only waits for something outside the run — a manual step's
    /// decision — should give up then.
    pub fn run_cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.run_cancel.cancelled()
    }

    /// Sends an event of the run to its event sinks (not to its journals): what a command
    /// tells the run's observers beyond output lines, such as
    /// [`EventKind::ApprovalRequested`](crate::EventKind::ApprovalRequested). Outside an
    /// executor (a context from [`new`](Self::new)) it goes nowhere.
    pub fn emit(&self, kind: crate::EventKind) {
        if let Some(emitter) = &self.emitter {
            emitter.emit(|| kind);
        }
    }

    /// Reports a line of progress (shown as the task's output).
    pub fn log(&self, line: &str) {
        (self.output)(Stream::Stdout, line);
    }

    /// Runs a shell command line on the host with default options, streaming its output as
    /// task output events.
    pub async fn run(&self, command: &str) -> Result<ExecOutput, RemoteError> {
        self.run_with(command, ExecOptions::new()).await
    }

    /// Runs with the given options; output is streamed unless the options set their own sink.
    pub async fn run_with(
        &self,
        command: &str,
        mut options: ExecOptions,
    ) -> Result<ExecOutput, RemoteError> {
        if options.output.is_none() {
            options.output = Some(self.output.clone());
        }
        self.host
            .execute(command, &options)
            .await
            .map_err(|e| self.redactor.remote(e))
    }

    /// Runs a command and turns a non-zero exit into [`CommandError::Failed`] with the exit
    /// status and the tail of stderr (the run's secrets in either show `***`).
    pub async fn run_checked(&self, command: &str) -> Result<ExecOutput, CommandError> {
        self.run_checked_with(command, ExecOptions::new()).await
    }

    /// [`run_checked`](Self::run_checked) with options.
    pub async fn run_checked_with(
        &self,
        command: &str,
        options: ExecOptions,
    ) -> Result<ExecOutput, CommandError> {
        let out = self.run_with(command, options).await?;
        if out.success() {
            Ok(out)
        } else {
            let message = format!(
                "`{}` {} on {}",
                shorten(&self.redactor.redact(command), 120),
                match out.exit_status {
                    Some(code) => format!("exited with status {code}"),
                    None => "was killed by a signal".to_string(),
                },
                self.host.name()
            );
            Err(CommandError::Failed {
                message,
                exit_status: out.exit_status,
                stderr: self.redactor.redact(&out.stderr_tail(20)).into_owned(),
            })
        }
    }
}

impl fmt::Debug for ExecContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecContext")
            .field("host", &self.host.name())
            .field("task", &self.info)
            .field("attempt", &self.attempt)
            .finish()
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}
