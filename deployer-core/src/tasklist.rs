//! The tasklist model: stages of tasks, loaded from and saved to JSON.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::errors::TasklistError;
use crate::validation::{ValidationError, ValidationErrors, did_you_mean, json_type};

/// Keys of a task object that belong to the task rather than to its command.
pub const RESERVED_TASK_KEYS: [&str; 7] = [
    "command",
    "remote_host",
    "remote_user",
    "tag",
    "timeout",
    "retries",
    "reaches",
];

const STAGE_KEYS: [&str; 8] = [
    "name",
    "concurrency",
    "concurrency_per_host",
    "max_failures",
    "max_fail_percentage",
    "min_hosts_up",
    "finally",
    "tasks",
];
const FINALLY_KEYS: [&str; 4] = ["if_reached", "unless_reached", "rollback", "on_failure"];
const TASKLIST_KEYS: [&str; 4] = ["name", "max_failures", "max_fail_percentage", "stages"];

/// The host key of tasks that name no host: they run on the controller itself.
pub const LOCAL_HOST: &str = "local";

/// A plan of work: stages that run one after another, each holding tasks that may run
/// concurrently.
///
/// The JSON shape is the one of the original Python deployer and loads unchanged:
///
/// ```
/// use deployer_core::Tasklist;
///
/// let json = r#"{
///   "name": "Deploy web",
///   "stages": [
///     {"name": "Upload", "concurrency": 10, "concurrency_per_host": 2, "tasks": [
///       {"command": "upload", "remote_host": "fe001", "source": "web.tgz", "destination": "/tmp"},
///       [{"command": "stop_service", "remote_host": "fe001", "service": "web"},
///        {"command": "start_service", "remote_host": "fe001", "service": "web"}]
///     ]}
///   ]
/// }"#;
/// let tasklist = Tasklist::from_json_str(json).unwrap();
/// assert_eq!(tasklist.stages[0].tasks.len(), 2);
/// assert_eq!(tasklist.task_count(), 3);
///
/// // Saving is stable: what was saved loads back equal and saves byte-identical.
/// let saved = tasklist.to_json_string();
/// let again = Tasklist::from_json_str(&saved).unwrap();
/// assert_eq!(again, tasklist);
/// assert_eq!(again.to_json_string(), saved);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Tasklist {
    /// A name shown in logs and run records.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// How many hosts of the run may fail before it stops (default: none); see
    /// [`FailureBudget`](crate::FailureBudget).
    #[serde(flatten)]
    pub budget: crate::FailureBudget,
    /// Stages, run one after another.
    pub stages: Vec<Stage>,
}

/// A set of tasks that may run concurrently, within limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// Shown in logs; must not be empty.
    pub name: String,
    /// At most this many entries run at once in the stage (at least 1).
    pub concurrency: usize,
    /// At most this many entries run at once on one host; unlimited when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_per_host: Option<usize>,
    /// How many of the stage's hosts may fail, counted over the stage's hosts; unset: the
    /// tasklist's budget (see [`FailureBudget`](crate::FailureBudget)).
    #[serde(flatten)]
    pub budget: crate::FailureBudget,
    /// At least this many of the stage's hosts stay up: at most `hosts − min_hosts_up −
    /// hosts down` hosts (down: failed, dropped or removed from the run) have work of the stage
    /// under way at once, and a failure that would leave fewer up stops the run whatever the
    /// budget. For rolling restarts behind a load balancer. On a `finally` stage it only bounds
    /// the hosts at once (`hosts − min_hosts_up`, at least one): clean-up reaches every host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_hosts_up: Option<usize>,
    /// Set on a clean-up stage that runs whatever happened before it (see [`Finally`]).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_finally"
    )]
    pub finally: Option<Finally>,
    /// The entries, started in this order as the limits allow.
    pub tasks: Vec<TaskEntry>,
}

/// What makes a stage a `finally` stage: it runs when its turn comes whether the run has
/// succeeded, failed or been cancelled (a first cancel) before it — the one exception to the
/// abort rule — and for which hosts.
///
/// Hosts reach named points: a task with [`Task::reaches`] that succeeds (or is skipped by its
/// command) makes its host reach that point. A finally stage with `if_reached` runs an entry
/// only when the entry's host reached that point (e.g. took the deploy lock); with
/// `unless_reached`, only when the host did not reach that one (e.g. passed its health check);
/// the other entries have nothing to do and end as skipped, with the reason. With
/// [`on_failure`](Self::on_failure) it runs only when the run has failed (a failed finally stage
/// before it counts) or been cancelled before its turn; after a success every entry ends as
/// skipped. A second cancel stops finally stages too.
///
/// Within a finally stage a failure does not stop the other entries (every host gets its
/// clean-up); it fails the run. On resume, a finally stage runs again, and a task reaching a
/// point that a finally stage undid on its host (its `if_reached` entry for that host is done)
/// runs again, with the rest of its chain — so a resumed run takes its lock again.
///
/// In JSON: `"finally": true`, or an object such as `"finally": {"if_reached": "locked"}` or
/// `"finally": {"on_failure": true}`.
///
/// ```
/// use deployer_core::{Finally, Stage, Task, Tasklist};
///
/// let tasklist = Tasklist::new("t")
///     .stage(Stage::new("Lock", 5).task(Task::new("lock").on("fe001").reaches("locked")))
///     .stage(Stage::new("Work", 5).task(Task::new("work").on("fe001")))
///     .stage(Stage::new("Unlock", 5).finally(Finally::if_reached("locked"))
///         .task(Task::new("unlock").on("fe001")));
/// let json = tasklist.to_json_string();
/// assert!(json.contains(r#""finally": {"#) && json.contains(r#""if_reached": "locked""#));
/// assert_eq!(Tasklist::from_json_str(&json).unwrap(), tasklist);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Finally {
    /// Run an entry only for hosts that reached this point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub if_reached: Option<String>,
    /// Run an entry only for hosts that did not reach this point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unless_reached: Option<String>,
    /// A rollback stage: its entries switch hosts back to the release before; an entry's last
    /// task that succeeds counts as [`TaskCategory::RolledBack`](crate::TaskCategory::RolledBack)
    /// (one per host; its host is recorded `ROLLED_BACK`), its other tasks as ok.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// Run only when the run has failed or been cancelled before this stage (a failed
    /// finally stage before it counts): clean-up for failures only. After a success every
    /// entry ends as skipped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub on_failure: bool,
}

impl Finally {
    /// A finally stage for every host.
    pub fn always() -> Finally {
        Finally::default()
    }

    /// A finally stage for the hosts that reached `point`.
    pub fn if_reached(point: impl Into<String>) -> Finally {
        Finally {
            if_reached: Some(point.into()),
            ..Finally::default()
        }
    }

    /// A finally stage for every host, only when the run has failed or been cancelled (see
    /// [`on_failure`](Self::on_failure)).
    ///
    /// ```
    /// use deployer_core::{Finally, Stage, Task, Tasklist};
    ///
    /// let tasklist = Tasklist::new("t")
    ///     .stage(Stage::new("Work", 1).task(Task::new("work")))
    ///     .stage(Stage::new("Tell", 1).finally(Finally::on_failure()).task(Task::new("page")));
    /// let json = tasklist.to_json_string();
    /// assert!(json.contains(r#""on_failure": true"#), "{json}");
    /// assert_eq!(Tasklist::from_json_str(&json).unwrap(), tasklist);
    /// ```
    pub fn on_failure() -> Finally {
        Finally {
            on_failure: true,
            ..Finally::default()
        }
    }

    /// Also only when the run has failed or been cancelled (see
    /// [`on_failure`](Self::on_failure)).
    pub fn only_on_failure(mut self) -> Finally {
        self.on_failure = true;
        self
    }

    /// Makes it a rollback stage (see [`rollback`](Self::rollback)).
    pub fn rolling_back(mut self) -> Finally {
        self.rollback = true;
        self
    }

    /// Also only for the hosts that did not reach `point`.
    pub fn unless_reached(mut self, point: impl Into<String>) -> Finally {
        self.unless_reached = Some(point.into());
        self
    }

    /// Why the entry on a host that reached `reached` does not run, if it does not.
    pub fn excludes(&self, reached: impl Fn(&str) -> bool) -> Option<String> {
        if let Some(p) = &self.if_reached
            && !reached(p)
        {
            return Some(format!("its host did not reach \"{p}\""));
        }
        if let Some(p) = &self.unless_reached
            && reached(p)
        {
            return Some(format!("its host reached \"{p}\""));
        }
        None
    }
}

fn serialize_finally<S: Serializer>(f: &Option<Finally>, serializer: S) -> Result<S::Ok, S::Error> {
    match f {
        Some(f) if *f == Finally::always() => serializer.serialize_bool(true),
        Some(f) => f.serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// One entry of a stage: a single task, or a chain of tasks that run in order and hold one slot.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TaskEntry {
    /// A single task.
    Single(Task),
    /// Tasks run in order, each only after the previous one succeeded, holding one slot while
    /// the chain runs. The chain's host (for `concurrency_per_host`) is its first task's host.
    Chain(Vec<Task>),
}

impl TaskEntry {
    /// The tasks of this entry, in order.
    pub fn tasks(&self) -> &[Task] {
        match self {
            TaskEntry::Single(t) => std::slice::from_ref(t),
            TaskEntry::Chain(ts) => ts,
        }
    }

    /// The host key that `concurrency_per_host` counts this entry against.
    pub fn host_key(&self) -> &str {
        self.tasks().first().map_or(LOCAL_HOST, Task::host_key)
    }
}

impl From<Task> for TaskEntry {
    fn from(task: Task) -> Self {
        TaskEntry::Single(task)
    }
}

impl From<Vec<Task>> for TaskEntry {
    fn from(tasks: Vec<Task>) -> Self {
        TaskEntry::Chain(tasks)
    }
}

/// One step on one host: a command name, where it runs, and the command's arguments.
///
/// ```
/// use deployer_core::Task;
/// use std::time::Duration;
///
/// let task = Task::new("execute_command")
///     .on("fe001")
///     .user("deploy")
///     .tag("web")
///     .timeout(Duration::from_secs(30))
///     .retries(2)
///     .arg("command", "systemctl restart web");
/// assert_eq!(task.host_key(), "fe001");
/// assert_eq!(task.args["command"], "systemctl restart web");
/// ```
///
/// An argument value may be secret (see [`SecretArg`](crate::SecretArg)): `Debug` and saved
/// JSON show it as `***`, and so does `Debug` for arguments whose names look secret
/// (`password`, `token`, `secret`…) even before a plan marks them.
#[derive(Clone, PartialEq)]
pub struct Task {
    /// The registered command name.
    pub command: String,
    /// The host to run on; the controller itself when absent.
    pub remote_host: Option<String>,
    /// The user to log in as on `remote_host`.
    pub remote_user: Option<String>,
    /// A label shown in logs, usually the service.
    pub tag: Option<String>,
    /// How long one attempt may run before it is stopped and counted as failed: from
    /// [`Task::TIMEOUT_MIN`] to [`Task::TIMEOUT_MAX`].
    pub timeout: Option<Duration>,
    /// How many times a failed attempt is tried again (0 = once in all), at most
    /// [`Task::RETRIES_MAX`].
    pub retries: Option<u32>,
    /// When it succeeds (or its command skips it), its host reached this point: `finally`
    /// stages choose their hosts by points (see [`Finally`]).
    pub reaches: Option<String>,
    /// The command's own arguments, in the order they were written.
    pub args: Map<String, Value>,
}

impl Task {
    /// The shortest timeout a task may have: 1 ms. Anything shorter would round to nothing (a
    /// timeout of `1e-300` seconds is 0 ns), so it is refused rather than rounded.
    pub const TIMEOUT_MIN: Duration = Duration::from_millis(1);
    /// The longest timeout a task may have: 365 days (31,536,000 s).
    pub const TIMEOUT_MAX: Duration = Duration::from_secs(365 * 24 * 3600);
    /// The most retries a task may have: 1000.
    pub const RETRIES_MAX: u32 = 1000;

    /// A task running `command` on the controller, with no arguments yet.
    pub fn new(command: impl Into<String>) -> Self {
        Task {
            command: command.into(),
            remote_host: None,
            remote_user: None,
            tag: None,
            timeout: None,
            retries: None,
            reaches: None,
            args: Map::new(),
        }
    }

    /// When the task succeeds, its host reaches `point` (see [`Finally`]).
    pub fn reaches(mut self, point: impl Into<String>) -> Self {
        self.reaches = Some(point.into());
        self
    }

    /// Runs the task on `host`.
    pub fn on(mut self, host: impl Into<String>) -> Self {
        self.remote_host = Some(host.into());
        self
    }

    /// Logs in as `user`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.remote_user = Some(user.into());
        self
    }

    /// Sets the tag shown in logs.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Sets the timeout of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets how many times a failure is retried.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Adds a command argument.
    pub fn arg(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.args.insert(key.into(), value.into());
        self
    }

    /// Adds a secret command argument, `{"secret": value}` (see [`SecretArg`](crate::SecretArg)):
    /// the command receives the value; `Debug`, saved tasklists, stored runs, events and logs
    /// show `***`.
    ///
    /// ```
    /// use deployer_core::Task;
    /// let task = Task::new("disable_loadbalancer").secret("lb_password", "hunter2");
    /// assert!(!format!("{task:?}").contains("hunter2"));
    /// ```
    pub fn secret(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.arg(key, crate::SecretArg::inline(value))
    }

    /// The key that `concurrency_per_host` counts this task against: `remote_host`, else the
    /// `lb_hostname` argument, else [`LOCAL_HOST`].
    pub fn host_key(&self) -> &str {
        if let Some(h) = &self.remote_host {
            return h;
        }
        if let Some(Value::String(h)) = self.args.get("lb_hostname") {
            return h;
        }
        LOCAL_HOST
    }
}

impl Serialize for Task {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("command", &self.command)?;
        if let Some(v) = &self.remote_host {
            map.serialize_entry("remote_host", v)?;
        }
        if let Some(v) = &self.remote_user {
            map.serialize_entry("remote_user", v)?;
        }
        if let Some(v) = &self.tag {
            map.serialize_entry("tag", v)?;
        }
        if let Some(v) = &self.timeout {
            map.serialize_entry("timeout", &duration_to_json(*v))?;
        }
        if let Some(v) = &self.retries {
            map.serialize_entry("retries", v)?;
        }
        if let Some(v) = &self.reaches {
            map.serialize_entry("reaches", v)?;
        }
        for (k, v) in &self.args {
            map.serialize_entry(k, &crate::secrets::RedactedJson(v))?;
        }
        map.end()
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("command", &self.command)
            .field("remote_host", &self.remote_host)
            .field("remote_user", &self.remote_user)
            .field("tag", &self.tag)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("reaches", &self.reaches)
            .field("args", &crate::secrets::DebugArgs(&self.args))
            .finish()
    }
}

/// Seconds as a JSON number: an integer when whole, so `30` stays `30`.
fn duration_to_json(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        Value::from(d.as_secs())
    } else {
        serde_json::Number::from_f64(d.as_secs_f64()).map_or(Value::Null, Value::Number)
    }
}

impl<'de> Deserialize<'de> for Tasklist {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Tasklist::from_value(&value).map_err(serde::de::Error::custom)
    }
}

impl Tasklist {
    /// An empty tasklist called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Tasklist {
            name: name.into(),
            budget: crate::FailureBudget::default(),
            stages: Vec::new(),
        }
    }

    /// Adds a stage.
    pub fn stage(mut self, stage: Stage) -> Self {
        self.stages.push(stage);
        self
    }

    /// Sets the run's failure budget (see [`FailureBudget`](crate::FailureBudget)).
    ///
    /// ```
    /// use deployer_core::{FailureBudget, Tasklist};
    /// let t = Tasklist::new("t").budget(FailureBudget::max_failures(10));
    /// assert!(t.to_json_string().contains(r#""max_failures": 10"#));
    /// ```
    pub fn budget(mut self, budget: crate::FailureBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Parses a tasklist from JSON text, reporting every structural problem at once.
    ///
    /// Syntax errors name line and column, and so does a key given twice in one object (a
    /// duplicate is never "last one wins"); structural problems (missing or mistyped keys,
    /// `concurrency: 0`, unknown stage keys, a task without `command`) are all collected with
    /// their path. Command arguments are checked later, by [`Plan::build`](crate::Plan::build).
    pub fn from_json_str(text: &str) -> Result<Tasklist, TasklistError> {
        let value: Value =
            crate::json::from_str_strict(text).map_err(|e| TasklistError::Syntax {
                origin: "<tasklist>".into(),
                line: e.line(),
                column: e.column(),
                message: strip_position(&e.to_string()),
            })?;
        Tasklist::from_value(&value).map_err(TasklistError::Invalid)
    }

    /// Parses a copy of a tasklist that a run store kept (what
    /// [`to_json_string`](Self::to_json_string) wrote): the shape is checked as by
    /// [`from_json_str`](Self::from_json_str), but not the limits on values — timeouts and retries
    /// outside [`Task::TIMEOUT_MIN`]..=[`Task::TIMEOUT_MAX`] and [`Task::RETRIES_MAX`], zero
    /// concurrency, empty names, empty chains. A run recorded by an older version (which let a
    /// timeout of `1e-300` through as 0), or built in code past the limits, still reads back as
    /// it was; [`check_limits`](Self::check_limits) says what it breaks, and
    /// [`Plan::build`](crate::Plan::build) refuses what cannot run.
    ///
    /// ```
    /// use deployer_core::Tasklist;
    ///
    /// let stored = r#"{"stages": [{"name": "s", "concurrency": 1,
    ///     "tasks": [{"command": "c", "timeout": 0}]}]}"#;
    /// assert!(Tasklist::from_json_str(stored).is_err());
    /// let tasklist = Tasklist::from_stored_json(stored).unwrap();
    /// let problems = tasklist.check_limits().unwrap_err().to_string();
    /// assert!(problems.contains("stages[0].tasks[0].timeout: found 0 (expected a number of seconds \
    ///     from 0.001 (1 ms) to 31536000 (365 days))"), "{problems}");
    /// ```
    pub fn from_stored_json(text: &str) -> Result<Tasklist, TasklistError> {
        let value: Value = serde_json::from_str(text).map_err(|e| TasklistError::Syntax {
            origin: "<stored tasklist>".into(),
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })?;
        Tasklist::parse(&value, Rules::Stored).map_err(TasklistError::Invalid)
    }

    /// The values outside the limits that input must meet: every task's `timeout` within
    /// [`Task::TIMEOUT_MIN`]..=[`Task::TIMEOUT_MAX`] and `retries` at most
    /// [`Task::RETRIES_MAX`], each problem at its path (`stages[1].tasks[0].timeout`); and every
    /// point a `finally` stage names is reached by some task.
    ///
    /// A tasklist read with [`from_json_str`](Self::from_json_str) always passes; one built in
    /// code, or read back from a run store with [`from_stored_json`](Self::from_stored_json),
    /// may not.
    ///
    /// ```
    /// use std::time::Duration;
    /// use deployer_core::{Stage, Task, Tasklist};
    ///
    /// let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).task(
    ///     Task::new("c").timeout(Duration::from_nanos(1)).retries(5000),
    /// ));
    /// let problems = tasklist.check_limits().unwrap_err().to_string();
    /// assert!(problems.contains("stages[0].tasks[0].timeout: found 1e-9 (expected"), "{problems}");
    /// assert!(problems.contains("stages[0].tasks[0].retries: found 5000 (expected an integer \
    ///     from 0 to 1000)"), "{problems}");
    /// ```
    pub fn check_limits(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        for (si, stage) in self.stages.iter().enumerate() {
            for (ei, entry) in stage.tasks.iter().enumerate() {
                let chain = matches!(entry, TaskEntry::Chain(_));
                for (ti, task) in entry.tasks().iter().enumerate() {
                    let path = if chain {
                        format!("stages[{si}].tasks[{ei}][{ti}]")
                    } else {
                        format!("stages[{si}].tasks[{ei}]")
                    };
                    if let Some(t) = task.timeout
                        && !(Task::TIMEOUT_MIN..=Task::TIMEOUT_MAX).contains(&t)
                    {
                        errors.push(timeout_error(&path, &duration_to_json(t)));
                    }
                    if let Some(r) = task.retries
                        && r > Task::RETRIES_MAX
                    {
                        errors.push(retries_error(&path, &Value::from(r)));
                    }
                }
            }
        }
        self.check_points(&mut errors);
        errors.into_result(())
    }

    /// [`from_json_str`](Self::from_json_str), and when the tasklist has structural problems,
    /// also every well-formed task built with `registry`: its argument problems and its host
    /// and user names are reported in the same list, so one dry run shows every problem of the
    /// file (when the structure is fine, [`Plan::build`](crate::Plan::build) reports the rest).
    ///
    /// ```
    /// use deployer_core::{CommandRegistry, Tasklist, TasklistError};
    /// # use deployer_core::fixture::Noop;
    /// #[derive(Debug, serde::Deserialize)]
    /// #[serde(deny_unknown_fields)]
    /// struct Args { source: String }
    /// # #[deployer_core::async_trait]
    /// # impl deployer_core::Command for Args {
    /// #     fn initialize(a: &deployer_core::TaskArgs<'_>) -> Result<Self, deployer_core::ValidationErrors> { a.parse() }
    /// #     async fn execute(&self, _: &deployer_core::ExecContext) -> Result<deployer_core::Outcome, deployer_core::CommandError> { Ok(deployer_core::Outcome::done()) }
    /// # }
    /// let mut commands = CommandRegistry::new();
    /// commands.register::<Args>("mkdir");
    /// let text = r#"{"stages": [{"name": "s", "concurrency": 0, "tasks": [
    ///     {"command": "mkdir", "sourse": "/a"}, {"command": "mkdir", "source": "/b"}]}]}"#;
    /// let Err(TasklistError::Invalid(problems)) = Tasklist::from_json_str_checked(text, &commands)
    /// else { panic!() };
    /// let text = problems.to_string();
    /// assert!(text.contains("stages[0].concurrency: "), "{text}");
    /// assert!(text.contains("stages[0].tasks[0].sourse: unknown argument"), "{text}");
    /// ```
    pub fn from_json_str_checked(
        text: &str,
        registry: &crate::CommandRegistry,
    ) -> Result<Tasklist, TasklistError> {
        match Tasklist::from_json_str(text) {
            Err(TasklistError::Invalid(mut problems)) => {
                if let Ok(value) = crate::json::from_str_strict(text) {
                    command_problems(&value, registry, &mut problems);
                }
                Err(TasklistError::Invalid(problems))
            }
            other => other,
        }
    }

    /// [`load`](Self::load) with [`from_json_str_checked`](Self::from_json_str_checked).
    pub fn load_checked(
        path: impl AsRef<Path>,
        registry: &crate::CommandRegistry,
    ) -> Result<Tasklist, TasklistError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TasklistError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Tasklist::from_json_str_checked(&text, registry).map_err(|e| e.with_origin(path))
    }

    /// Reads and parses a tasklist file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Tasklist, TasklistError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TasklistError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Tasklist::from_json_str(&text).map_err(|e| e.with_origin(path))
    }

    /// Writes the tasklist as pretty JSON (what [`to_json_string`](Self::to_json_string) gives:
    /// inline secrets are written `{"secret": "***"}`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TasklistError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json_string()).map_err(|source| TasklistError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The tasklist as pretty-printed JSON ending in a newline.
    ///
    /// The output is canonical: loading it and saving again gives the same bytes. Inline
    /// secrets are written `{"secret": "***"}` (a redacted secret, which a plan refuses until
    /// its value is given again); `{"secret_env": …}` references are kept.
    /// [`to_json_string_with_secrets`](Self::to_json_string_with_secrets) writes the values.
    ///
    /// ```
    /// use deployer_core::{Stage, Task, Tasklist};
    ///
    /// let tasklist = Tasklist::new("lb").stage(
    ///     Stage::new("s", 1).task(Task::new("disable_loadbalancer").secret("lb_password", "hunter2")),
    /// );
    /// let saved = tasklist.to_json_string();
    /// assert!(saved.contains(r#""lb_password": {
    ///             "secret": "***"
    ///           }"#), "{saved}");
    /// assert_eq!(Tasklist::from_json_str(&saved).unwrap().redacted_secrets(),
    ///            ["stages[0].tasks[0].lb_password"]);
    /// let with_values = tasklist.to_json_string_with_secrets();
    /// assert_eq!(Tasklist::from_json_str(&with_values).unwrap(), tasklist);
    /// ```
    pub fn to_json_string(&self) -> String {
        // Serializing plain data to a String cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// [`to_json_string`](Self::to_json_string) with inline secrets written as their values:
    /// for a file the tasklist is run from again, never for output.
    pub fn to_json_string_with_secrets(&self) -> String {
        fn put_args(object: &mut Value, task: &Task) {
            if let Value::Object(m) = object {
                for (k, v) in &task.args {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(stages) = value.get_mut("stages").and_then(Value::as_array_mut) {
            for (json, stage) in stages.iter_mut().zip(&self.stages) {
                let Some(tasks) = json.get_mut("tasks").and_then(Value::as_array_mut) else {
                    continue;
                };
                for (json, entry) in tasks.iter_mut().zip(&stage.tasks) {
                    match (entry, json) {
                        (TaskEntry::Single(task), json) => put_args(json, task),
                        (TaskEntry::Chain(chain), Value::Array(items)) => {
                            for (json, task) in items.iter_mut().zip(chain) {
                                put_args(json, task);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let mut s = serde_json::to_string_pretty(&value).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Converts an already parsed JSON value, collecting every structural problem.
    pub fn from_value(value: &Value) -> Result<Tasklist, ValidationErrors> {
        let tasklist = Tasklist::parse(value, Rules::Input)?;
        let mut errors = ValidationErrors::new();
        tasklist.check_points(&mut errors);
        errors.into_result(tasklist)
    }

    /// Every point a `finally` stage names must be reached by some task: a misspelt point
    /// would silently skip (or always run) the clean-up.
    fn check_points(&self, errors: &mut ValidationErrors) {
        // Names, for a tasklist built in code (read ones were checked while parsing).
        for (i, stage) in self.stages.iter().enumerate() {
            for (e, entry) in stage.tasks.iter().enumerate() {
                for (t, task) in entry.tasks().iter().enumerate() {
                    if let Some(p) = &task.reaches {
                        let path = match entry {
                            TaskEntry::Single(_) => format!("stages[{i}].tasks[{e}].reaches"),
                            TaskEntry::Chain(_) => format!("stages[{i}].tasks[{e}][{t}].reaches"),
                        };
                        point_name(p, &path, errors);
                    }
                }
            }
        }
        let reached: Vec<&str> = self
            .stages
            .iter()
            .flat_map(|s| &s.tasks)
            .flat_map(TaskEntry::tasks)
            .filter_map(|t| t.reaches.as_deref())
            .collect();
        for (i, stage) in self.stages.iter().enumerate() {
            let Some(f) = &stage.finally else { continue };
            for (key, point) in [
                ("if_reached", &f.if_reached),
                ("unless_reached", &f.unless_reached),
            ] {
                let Some(point) = point else { continue };
                if point_name(point, &format!("stages[{i}].finally.{key}"), errors).is_none() {
                    continue;
                }
                if reached.contains(&point.as_str()) {
                    continue;
                }
                let mut e = ValidationError::new(
                    format!("stages[{i}].finally.{key}"),
                    format!("no task reaches {}", crate::shown(point)),
                )
                .expected("a point named by some task's \"reaches\"");
                if let Some(s) = did_you_mean(point, reached.iter().copied()) {
                    e = e.hint(format!("did you mean \"{s}\"?"));
                }
                errors.push(e);
            }
        }
    }

    fn parse(value: &Value, rules: Rules) -> Result<Tasklist, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let Some(obj) = value.as_object() else {
            errors.push(
                ValidationError::new("", format!("the tasklist is {}", json_type(value)))
                    .expected("an object with \"name\" and \"stages\""),
            );
            return Err(errors);
        };
        unknown_keys(obj, &TASKLIST_KEYS, "", "tasklist", &mut errors);
        let name = match obj.get("name") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                errors.push(
                    ValidationError::new("name", format!("found {}", json_type(other)))
                        .expected("a string"),
                );
                String::new()
            }
        };
        let mut stages = Vec::new();
        match obj.get("stages") {
            None => {
                errors.push(ValidationError::new("stages", "missing").expected("a list of stages"))
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(stage) =
                        parse_stage(item, &format!("stages[{i}]"), rules, &mut errors)
                    {
                        stages.push(stage);
                    }
                }
            }
            Some(other) => errors.push(
                ValidationError::new("stages", format!("found {}", json_type(other)))
                    .expected("a list of stages"),
            ),
        }
        let budget = crate::FailureBudget::parse(obj, "", &mut errors);
        errors.into_result(Tasklist {
            name,
            budget,
            stages,
        })
    }

    /// A copy with every inline secret replaced by the redacted form `{"secret": "***"}`:
    /// what a run store keeps. `{"secret_env": …}` references are kept.
    ///
    /// ```
    /// use deployer_core::{SecretArg, Stage, Task, Tasklist};
    ///
    /// let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).task(
    ///     Task::new("execute_command")
    ///         .arg("command_line", "true")
    ///         .arg("env", serde_json::json!({
    ///             "DB_PASSWORD": SecretArg::inline("hunter2"),
    ///             "API_TOKEN": SecretArg::from_env("API_TOKEN"),
    ///         })),
    /// ));
    /// let stored = tasklist.redacted();
    /// let env = &stored.stages[0].tasks[0].tasks()[0].args["env"];
    /// assert_eq!(env["DB_PASSWORD"], SecretArg::inline("***"));
    /// assert_eq!(env["API_TOKEN"], SecretArg::from_env("API_TOKEN"));
    /// assert_eq!(stored.redacted_secrets(), ["stages[0].tasks[0].env.DB_PASSWORD"]);
    /// ```
    pub fn redacted(&self) -> Tasklist {
        let mut copy = self.clone();
        for task in copy.tasks_mut() {
            for v in task.args.values_mut() {
                if crate::secrets::has_inline(v) {
                    *v = crate::secrets::redacted(v);
                }
            }
        }
        copy
    }

    /// The paths of the redacted secrets (`stages[0].tasks[1].lb_password`): values left out
    /// when the tasklist was saved or stored, which must be given again before it can run.
    pub fn redacted_secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (si, stage) in self.stages.iter().enumerate() {
            for (ei, entry) in stage.tasks.iter().enumerate() {
                let chain = matches!(entry, TaskEntry::Chain(_));
                for (ti, task) in entry.tasks().iter().enumerate() {
                    let prefix = if chain {
                        format!("stages[{si}].tasks[{ei}][{ti}]")
                    } else {
                        format!("stages[{si}].tasks[{ei}]")
                    };
                    crate::secrets::redacted_paths(&task.args, &prefix, &mut out);
                }
            }
        }
        out
    }

    pub(crate) fn tasks_mut(&mut self) -> impl Iterator<Item = &mut Task> {
        self.stages
            .iter_mut()
            .flat_map(|s| s.tasks.iter_mut())
            .flat_map(|e| match e {
                TaskEntry::Single(t) => std::slice::from_mut(t),
                TaskEntry::Chain(ts) => ts.as_mut_slice(),
            })
    }

    /// How many tasks the tasklist holds, counting each task of a chain.
    pub fn task_count(&self) -> usize {
        self.stages
            .iter()
            .flat_map(|s| &s.tasks)
            .map(|e| e.tasks().len())
            .sum()
    }

    /// The distinct host keys of all tasks, in first-seen order.
    pub fn hosts(&self) -> Vec<&str> {
        let mut seen = indexmap::IndexSet::new();
        for stage in &self.stages {
            for entry in &stage.tasks {
                for task in entry.tasks() {
                    seen.insert(task.host_key());
                }
            }
        }
        seen.into_iter().collect()
    }
}

impl Stage {
    /// An empty stage with the given concurrency and no per-host limit.
    pub fn new(name: impl Into<String>, concurrency: usize) -> Self {
        Stage {
            name: name.into(),
            concurrency,
            concurrency_per_host: None,
            budget: crate::FailureBudget::default(),
            min_hosts_up: None,
            finally: None,
            tasks: Vec::new(),
        }
    }

    /// Sets the stage's own failure budget (see [`FailureBudget`](crate::FailureBudget)).
    pub fn budget(mut self, budget: crate::FailureBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Keeps at least `n` of the stage's hosts up (see [`Stage::min_hosts_up`]).
    ///
    /// ```
    /// use deployer_core::{Stage, Task};
    /// let stage = Stage::new("Restart", 10).min_hosts_up(8)
    ///     .tasks((1..=10).map(|i| Task::new("restart").on(format!("fe{i:03}"))));
    /// assert_eq!(stage.min_hosts_up, Some(8));
    /// ```
    pub fn min_hosts_up(mut self, n: usize) -> Self {
        self.min_hosts_up = Some(n);
        self
    }

    /// Makes it a `finally` stage (see [`Finally`]).
    pub fn finally(mut self, finally: Finally) -> Self {
        self.finally = Some(finally);
        self
    }

    /// Sets the per-host limit.
    pub fn per_host(mut self, limit: usize) -> Self {
        self.concurrency_per_host = Some(limit);
        self
    }

    /// Adds a task or a chain.
    pub fn task(mut self, entry: impl Into<TaskEntry>) -> Self {
        self.tasks.push(entry.into());
        self
    }

    /// Adds many tasks.
    pub fn tasks(mut self, entries: impl IntoIterator<Item = impl Into<TaskEntry>>) -> Self {
        self.tasks.extend(entries.into_iter().map(Into::into));
        self
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.command, self.host_key())?;
        if let Some(tag) = &self.tag {
            write!(f, " [{tag}]")?;
        }
        Ok(())
    }
}

/// Which checks a tasklist read from JSON gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// Input: the shape and every limit on values.
    Input,
    /// A copy a run store kept: the shape only (see [`Tasklist::from_stored_json`]).
    Stored,
}

/// What a timeout must be, in words.
fn timeout_expected() -> String {
    format!(
        "a number of seconds from {} ({} ms) to {} ({} days)",
        Task::TIMEOUT_MIN.as_secs_f64(),
        Task::TIMEOUT_MIN.as_millis(),
        Task::TIMEOUT_MAX.as_secs(),
        Task::TIMEOUT_MAX.as_secs() / 86_400
    )
}

fn timeout_error(path: &str, found: &Value) -> ValidationError {
    ValidationError::new(format!("{path}.timeout"), format!("found {found}"))
        .expected(timeout_expected())
}

fn retries_error(path: &str, found: &Value) -> ValidationError {
    ValidationError::new(format!("{path}.retries"), format!("found {found}"))
        .expected(format!("an integer from 0 to {}", Task::RETRIES_MAX))
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn unknown_keys(
    obj: &Map<String, Value>,
    known: &[&str],
    path: &str,
    what: &str,
    errors: &mut ValidationErrors,
) {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            let p = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let mut e =
                ValidationError::new(p, format!("unknown {what} key {}", crate::shown(key)))
                    .expected(format!("one of {}", known.join(", ")));
            if let Some(s) = did_you_mean(key, known.iter().copied()) {
                e = e.hint(format!("did you mean \"{s}\"?"));
            }
            errors.push(e);
        }
    }
}

fn positive_int(
    value: &Value,
    path: String,
    rules: Rules,
    errors: &mut ValidationErrors,
) -> Option<usize> {
    if rules == Rules::Stored
        && let Some(n) = value.as_u64()
    {
        return Some(usize::try_from(n).unwrap_or(usize::MAX));
    }
    match value.as_u64() {
        Some(0) => {
            errors
                .push(ValidationError::new(path, "must be at least 1").expected("an integer ≥ 1"));
            None
        }
        Some(n) if n <= u32::MAX as u64 => Some(n as usize),
        _ => {
            let found = match value {
                Value::Number(n) => format!("{n}"),
                other => json_type(other).to_string(),
            };
            errors.push(
                ValidationError::new(path, format!("found {found}"))
                    .expected(format!("an integer from 1 to {}", u32::MAX)),
            );
            None
        }
    }
}

fn parse_stage(
    value: &Value,
    path: &str,
    rules: Rules,
    errors: &mut ValidationErrors,
) -> Option<Stage> {
    let Some(obj) = value.as_object() else {
        errors.push(
            ValidationError::new(path, format!("found {}", json_type(value)))
                .expected("a stage object with name, concurrency and tasks"),
        );
        return None;
    };
    let before = errors.len();
    unknown_keys(obj, &STAGE_KEYS, path, "stage", errors);
    let name = match obj.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() || rules == Rules::Stored => s.clone(),
        Some(Value::String(_)) => {
            errors.push(
                ValidationError::new(format!("{path}.name"), "stage name is empty")
                    .expected("a non-empty string"),
            );
            String::new()
        }
        None => {
            errors.push(
                ValidationError::new(format!("{path}.name"), "missing").expected("a stage name"),
            );
            String::new()
        }
        Some(other) => {
            errors.push(
                ValidationError::new(
                    format!("{path}.name"),
                    format!("found {}", json_type(other)),
                )
                .expected("a string"),
            );
            String::new()
        }
    };
    let concurrency = match obj.get("concurrency") {
        Some(v) => positive_int(v, format!("{path}.concurrency"), rules, errors),
        None => {
            errors.push(
                ValidationError::new(format!("{path}.concurrency"), "missing")
                    .expected("an integer ≥ 1"),
            );
            None
        }
    };
    let concurrency_per_host = match obj.get("concurrency_per_host") {
        None | Some(Value::Null) => None,
        Some(v) => positive_int(v, format!("{path}.concurrency_per_host"), rules, errors),
    };
    let budget = crate::FailureBudget::parse(obj, path, errors);
    let min_hosts_up = match obj.get("min_hosts_up") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => {
                errors.push(
                    ValidationError::new(format!("{path}.min_hosts_up"), format!("found {v}"))
                        .expected("a whole number of hosts (0 or more)"),
                );
                None
            }
        },
    };
    let finally = match obj.get("finally") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(Finally::always()),
        Some(Value::Object(f)) => {
            let fpath = format!("{path}.finally");
            unknown_keys(f, &FINALLY_KEYS, &fpath, "finally", errors);
            let mut point = |key: &str| match f.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) => point_name(p, &format!("{fpath}.{key}"), errors),
                Some(other) => {
                    errors.push(
                        ValidationError::new(
                            format!("{fpath}.{key}"),
                            format!("found {}", json_type(other)),
                        )
                        .expected("the name of a point that tasks reach"),
                    );
                    None
                }
            };
            let if_reached = point("if_reached");
            let unless_reached = point("unless_reached");
            let rollback = match f.get("rollback") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    errors.push(
                        ValidationError::new(
                            format!("{fpath}.rollback"),
                            format!("found {}", json_type(other)),
                        )
                        .expected("true or false"),
                    );
                    false
                }
            };
            let on_failure = match f.get("on_failure") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    errors.push(
                        ValidationError::new(
                            format!("{fpath}.on_failure"),
                            format!("found {}", json_type(other)),
                        )
                        .expected("true or false"),
                    );
                    false
                }
            };
            Some(Finally {
                if_reached,
                unless_reached,
                rollback,
                on_failure,
            })
        }
        Some(other) => {
            errors.push(
                ValidationError::new(
                    format!("{path}.finally"),
                    format!("found {}", json_type(other)),
                )
                .expected(
                    "true, or an object with if_reached, unless_reached, rollback and/or on_failure",
                ),
            );
            None
        }
    };
    let mut tasks = Vec::new();
    match obj.get("tasks") {
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let tpath = format!("{path}.tasks[{i}]");
                match item {
                    Value::Array(chain) => {
                        if chain.is_empty() && rules == Rules::Input {
                            errors.push(
                                ValidationError::new(tpath, "empty chain")
                                    .expected("a list of at least one task object"),
                            );
                            continue;
                        }
                        let mut steps = Vec::new();
                        for (j, step) in chain.iter().enumerate() {
                            let spath = format!("{tpath}[{j}]");
                            if step.is_array() {
                                errors.push(
                                    ValidationError::new(spath, "a chain cannot contain a list")
                                        .expected("a task object"),
                                );
                            } else if let Some(t) = parse_task(step, &spath, rules, errors) {
                                steps.push(t);
                            }
                        }
                        if steps.len() == chain.len() {
                            tasks.push(TaskEntry::Chain(steps));
                        }
                    }
                    other => {
                        if let Some(t) = parse_task(other, &tpath, rules, errors) {
                            tasks.push(TaskEntry::Single(t));
                        }
                    }
                }
            }
        }
        None => errors.push(
            ValidationError::new(format!("{path}.tasks"), "missing").expected("a list of tasks"),
        ),
        Some(other) => errors.push(
            ValidationError::new(
                format!("{path}.tasks"),
                format!("found {}", json_type(other)),
            )
            .expected("a list of tasks"),
        ),
    }
    if errors.len() > before {
        return None;
    }
    Some(Stage {
        name,
        concurrency: concurrency?,
        concurrency_per_host,
        budget,
        min_hosts_up,
        finally,
        tasks,
    })
}

/// Adds to `problems` what building each well-formed task of `value` with `registry` finds
/// (structural problems are already there, so malformed tasks are passed over).
fn command_problems(
    value: &Value,
    registry: &crate::CommandRegistry,
    problems: &mut ValidationErrors,
) {
    let Some(stages) = value.get("stages").and_then(Value::as_array) else {
        return;
    };
    let mut check = |task_value: &Value, path: String| {
        let mut scratch = ValidationErrors::new();
        if let Some(task) = parse_task(task_value, &path, Rules::Input, &mut scratch)
            && scratch.is_empty()
        {
            crate::plan::check_login(&task, &path, problems);
            if let Err(found) = registry.instantiate(&task) {
                for mut p in found {
                    p.path = if p.path.is_empty() {
                        path.clone()
                    } else {
                        format!("{path}.{}", p.path)
                    };
                    problems.push(p);
                }
            }
        }
    };
    for (si, stage) in stages.iter().enumerate() {
        let Some(tasks) = stage.get("tasks").and_then(Value::as_array) else {
            continue;
        };
        for (ei, entry) in tasks.iter().enumerate() {
            match entry {
                Value::Array(chain) => {
                    for (ti, step) in chain.iter().enumerate() {
                        check(step, format!("stages[{si}].tasks[{ei}][{ti}]"));
                    }
                }
                other => check(other, format!("stages[{si}].tasks[{ei}]")),
            }
        }
    }
}

fn opt_string(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut ValidationErrors,
) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(
                ValidationError::new(
                    format!("{path}.{key}"),
                    format!("found {}", json_type(other)),
                )
                .expected("a string"),
            );
            None
        }
    }
}

fn parse_task(
    value: &Value,
    path: &str,
    rules: Rules,
    errors: &mut ValidationErrors,
) -> Option<Task> {
    let Some(obj) = value.as_object() else {
        errors.push(
            ValidationError::new(path, format!("found {}", json_type(value)))
                .expected("a task object with \"command\", or a list of task objects"),
        );
        return None;
    };
    let before = errors.len();
    let command = match obj.get("command") {
        Some(Value::String(s)) if !s.is_empty() || rules == Rules::Stored => s.clone(),
        Some(Value::String(_)) => {
            errors.push(
                ValidationError::new(format!("{path}.command"), "command name is empty")
                    .expected("a registered command name"),
            );
            String::new()
        }
        None => {
            errors.push(
                ValidationError::new(format!("{path}.command"), "missing")
                    .expected("a registered command name"),
            );
            String::new()
        }
        Some(other) => {
            errors.push(
                ValidationError::new(
                    format!("{path}.command"),
                    format!("found {}", json_type(other)),
                )
                .expected("a string naming a registered command"),
            );
            String::new()
        }
    };
    if rules == Rules::Input {
        for key in ["remote_host", "remote_user"] {
            if obj.get(key) == Some(&Value::Null) {
                errors.push(
                    ValidationError::new(format!("{path}.{key}"), "is null").expected(
                        if key == "remote_host" {
                            "a host name; leave remote_host out to run on the controller"
                        } else {
                            "a user name; leave remote_user out for the connector's default"
                        },
                    ),
                );
            }
        }
    }
    let remote_host = opt_string(obj, "remote_host", path, errors);
    if remote_host.as_deref() == Some("") && rules == Rules::Input {
        errors.push(
            ValidationError::new(format!("{path}.remote_host"), "host name is empty")
                .expected("a host name, or no remote_host to run on the controller"),
        );
    }
    let remote_user = opt_string(obj, "remote_user", path, errors);
    let tag = opt_string(obj, "tag", path, errors);
    let timeout = match obj.get("timeout") {
        None | Some(Value::Null) => None,
        Some(v) => match (v.as_f64(), rules) {
            // Any duration written by `to_json_string` reads back: large ones saturate.
            (Some(secs), Rules::Stored) if secs >= 0.0 => {
                Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
            }
            // Compared as a duration (rounded to the nearest nanosecond), so what is accepted
            // is what runs: `1e-300` would be 0 ns and is refused, not rounded.
            (Some(secs), Rules::Input) => match Duration::try_from_secs_f64(secs) {
                Ok(d) if (Task::TIMEOUT_MIN..=Task::TIMEOUT_MAX).contains(&d) => Some(d),
                _ => {
                    errors.push(timeout_error(path, v));
                    None
                }
            },
            _ => {
                errors.push(timeout_error(path, v));
                None
            }
        },
    };
    let retries = match obj.get("retries") {
        None | Some(Value::Null) => None,
        Some(v) => match (v.as_u64(), rules) {
            (Some(n), Rules::Stored) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            (Some(n), Rules::Input) if n <= u64::from(Task::RETRIES_MAX) => Some(n as u32),
            _ => {
                errors.push(retries_error(path, v));
                None
            }
        },
    };
    let reaches = match obj.get("reaches") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => point_name(p, &format!("{path}.reaches"), errors),
        Some(other) => {
            errors.push(
                ValidationError::new(
                    format!("{path}.reaches"),
                    format!("found {}", json_type(other)),
                )
                .expected("the name of a point, e.g. \"locked\""),
            );
            None
        }
    };
    if errors.len() > before {
        return None;
    }
    let args = obj
        .iter()
        .filter(|(k, _)| !RESERVED_TASK_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Task {
        command,
        remote_host,
        remote_user,
        tag,
        timeout,
        retries,
        reaches,
        args,
    })
}

/// A point's name: letters, digits, `_`, `-`, `.` and `:`, 1 to 64 of them.
fn point_name(p: &str, path: &str, errors: &mut ValidationErrors) -> Option<String> {
    let ok = !p.is_empty()
        && p.len() <= 64
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Some(p.to_string())
    } else {
        errors.push(
            ValidationError::new(path, format!("found {}", crate::shown(p))).expected(
                "a point name: 1 to 64 letters, digits, '_', '-', '.' or ':', e.g. \"locked\"",
            ),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_task(task: &str) -> String {
        format!(
            r#"{{"stages": [{{"name": "s", "concurrency": 1, "tasks": [{{"command": "c"}}, {task}]}}]}}"#
        )
    }

    /// Reported: a timeout of `1e-300` passed validation as 0 ns, the task "timed out after
    /// 0ns", and the stored copy (`"timeout": 0`) no longer loaded.
    #[test]
    fn timeouts_and_retries_outside_their_limits_are_refused_with_path_and_range() {
        let expected = "(expected a number of seconds from 0.001 (1 ms) to 31536000 (365 days))";
        for bad in [
            "1e-300",
            "5e-324",
            "0",
            "-0.0",
            "0.0009",
            "0.0009999994",
            "-1",
            "31536000.001",
            "1e308",
            "\"30\"",
            "true",
            "[1]",
        ] {
            let text = one_task(&format!(r#"{{"command": "c", "timeout": {bad}}}"#));
            let err = Tasklist::from_json_str(&text).unwrap_err().to_string();
            let found = serde_json::from_str::<Value>(bad).unwrap().to_string();
            assert!(
                err.contains(&format!(
                    "stages[0].tasks[1].timeout: found {found} {expected}"
                )),
                "{bad}: {err}"
            );
        }
        for (good, duration) in [
            ("0.001", Duration::from_millis(1)),
            ("0.0015", Duration::from_micros(1500)),
            ("30", Duration::from_secs(30)),
            ("31536000", Task::TIMEOUT_MAX),
        ] {
            let text = one_task(&format!(r#"{{"command": "c", "timeout": {good}}}"#));
            let tasklist = Tasklist::from_json_str(&text).unwrap();
            assert_eq!(
                tasklist.stages[0].tasks[1].tasks()[0].timeout,
                Some(duration)
            );
            assert!(tasklist.check_limits().is_ok());
        }
        for bad in ["1001", "4294967296", "-1", "1.5"] {
            let text = one_task(&format!(r#"{{"command": "c", "retries": {bad}}}"#));
            let err = Tasklist::from_json_str(&text).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "stages[0].tasks[1].retries: found {bad} (expected an integer from 0 to 1000)"
                )),
                "{bad}: {err}"
            );
        }
        let text = one_task(r#"{"command": "c", "retries": 1000}"#);
        assert!(Tasklist::from_json_str(&text).is_ok());
    }

    /// A stored copy reads back whatever limits it breaks, so one run recorded by an older
    /// version (or built in code) never makes a run store unreadable; `check_limits` names
    /// every value outside them.
    #[test]
    fn stored_copies_read_back_past_the_limits() {
        let built = Tasklist::new("").stage(
            Stage::new("", 0)
                .per_host(usize::MAX)
                .task(
                    Task::new("")
                        .on("")
                        .timeout(Duration::ZERO)
                        .retries(u32::MAX),
                )
                .task(vec![
                    Task::new("c").timeout(Duration::from_nanos(1)),
                    Task::new("c").timeout(Duration::from_secs(10 * 365 * 86_400)),
                    Task::new("c").timeout(Duration::MAX),
                ])
                .task(TaskEntry::Chain(Vec::new())),
        );
        let saved = built.to_json_string();
        assert!(Tasklist::from_json_str(&saved).is_err());
        let read = Tasklist::from_stored_json(&saved).unwrap();
        let mut expected = built.clone();
        // Duration::MAX has more nanoseconds than an f64 holds; it reads back saturated.
        let TaskEntry::Chain(chain) = &mut expected.stages[0].tasks[1] else {
            unreachable!()
        };
        chain[2].timeout = read.stages[0].tasks[1].tasks()[2].timeout;
        assert!(chain[2].timeout.unwrap() > Duration::from_secs(u64::MAX / 2));
        assert_eq!(read, expected);
        assert_eq!(read.to_json_string(), saved, "and saves to the same bytes");

        let problems: Vec<String> = read
            .check_limits()
            .unwrap_err()
            .iter()
            .map(|e| e.path.clone())
            .collect();
        assert_eq!(
            problems,
            [
                "stages[0].tasks[0].timeout",
                "stages[0].tasks[0].retries",
                "stages[0].tasks[1][0].timeout",
                "stages[0].tasks[1][1].timeout",
                "stages[0].tasks[1][2].timeout",
            ]
        );
        // The shape is still checked.
        for bad in [
            r#"{"stages": [{"name": "s", "concurrency": 1, "tasks": [{"command": "c", "timeout": -1}]}]}"#,
            r#"{"stages": [{"name": "s", "concurrency": 1, "tasks": [{"command": "c", "retries": "x"}]}]}"#,
            r#"{"stages": [{"name": "s", "concurrency": 1, "tasks": [{"command": 3}]}]}"#,
            r#"{"stages": [{"name": "s", "concurrency": -1, "tasks": []}]}"#,
            r#"{"stages": [{"name": "s", "concurrency": 1, "tasks": [], "new_key": 1}]}"#,
            r#"{"stages": 3}"#,
            "{not json",
        ] {
            assert!(Tasklist::from_stored_json(bad).is_err(), "{bad}");
        }
    }

    /// Found by fuzzing (fuzz/regressions/tasklist/float_not_canonical): without serde_json's
    /// `float_roundtrip`, `1e-305` parsed one unit in the last place off, was saved as
    /// `1.0000000000000001e-305`, which parsed back to the other neighbour: saving was not
    /// canonical and a loaded copy differed from what was saved.
    #[test]
    fn numbers_save_canonically() {
        for number in [
            "1e-305",
            "1.0000000000000001e-305",
            "2.2250738585072014e-308",
            "5e-324",
            "1.7976931348623157e308",
            "0.1",
            "123456.789e-300",
            "-0.0",
        ] {
            let text = format!(
                r#"{{"stages": [{{"name": "s", "concurrency": 1, "tasks": [
                    {{"command": "c", "timeout": 0.1, "x": [{number}]}}]}}]}}"#
            );
            let tasklist = Tasklist::from_json_str(&text).unwrap();
            let saved = tasklist.to_json_string();
            let again = Tasklist::from_json_str(&saved).unwrap();
            assert_eq!(again, tasklist, "{number}");
            assert_eq!(again.to_json_string(), saved, "{number}");
        }
    }
}
