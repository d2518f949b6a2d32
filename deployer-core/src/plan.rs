//! A validated tasklist: every command instantiated, every host key resolved.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::command::{Command, CommandRegistry};
use crate::events::{TaskId, TaskInfo};
use crate::host::HostSpec;
use crate::redact::Redactor;
use crate::tasklist::{Task, Tasklist};
use crate::validation::{ValidationError, ValidationErrors};

/// A tasklist whose every task has been instantiated by its command's `initialize`.
///
/// Building a plan *is* the dry run: it touches no host and reports every problem of the
/// tasklist at once, each with its path. A plan is cheap to clone and is what the
/// [`Executor`](crate::Executor) runs.
///
/// ```
/// use deployer_core::{CommandRegistry, Plan, Tasklist};
///
/// let tasklist = Tasklist::from_json_str(r#"{"name": "t", "stages": [
///     {"name": "s", "concurrency": 1, "tasks": [{"command": "uplaod", "source": "x"}]}
/// ]}"#).unwrap();
/// let errors = Plan::build(&tasklist, &CommandRegistry::new()).unwrap_err();
/// assert_eq!(errors.iter().next().unwrap().path, "stages[0].tasks[0].command");
/// ```
#[derive(Clone)]
pub struct Plan {
    pub(crate) tasklist: Arc<Tasklist>,
    pub(crate) stages: Arc<Vec<PlannedStage>>,
    pub(crate) redactor: Redactor,
    /// Each host's variables (from an inventory), which its tasks read.
    pub(crate) host_vars: Option<Arc<crate::HostVars>>,
}

pub(crate) struct PlannedStage {
    pub(crate) name: String,
    pub(crate) concurrency: usize,
    pub(crate) per_host: Option<usize>,
    /// Host keys of this stage; entries refer to them by index.
    pub(crate) hosts: Vec<String>,
    pub(crate) entries: Vec<Arc<PlannedEntry>>,
    pub(crate) task_count: usize,
    /// Set on a `finally` stage.
    pub(crate) finally: Option<crate::Finally>,
    /// The stage's own failure budget (unset: the run's).
    pub(crate) budget: crate::FailureBudget,
    /// At least this many of its hosts stay up.
    pub(crate) min_hosts_up: Option<usize>,
}

pub(crate) struct PlannedEntry {
    pub(crate) host: usize,
    pub(crate) steps: Vec<PlannedTask>,
}

pub(crate) struct PlannedTask {
    /// Of a rollback stage: success counts as rolled back.
    pub(crate) rolls_back: bool,
    pub(crate) task: Arc<Task>,
    pub(crate) command: Arc<dyn Command>,
    pub(crate) info: Arc<TaskInfo>,
    pub(crate) spec: HostSpec,
}

/// Checks what `ssh` and the logs will see of a task at `id` (its path): its host and user
/// names.
pub(crate) fn check_login(task: &Task, id: &str, errors: &mut ValidationErrors) {
    if let Some(host) = &task.remote_host
        && let Err(e) = crate::HostName::parse(host)
    {
        errors.push(
            ValidationError::new(
                format!("{id}.remote_host"),
                format!("{} {}", e.value, e.problem),
            )
            .expected(e.expected),
        );
    }
    match (&task.remote_host, &task.remote_user) {
        (None, Some(user)) => errors.push(
            ValidationError::new(
                format!("{id}.remote_user"),
                format!(
                    "{} is given for a task without remote_host, which runs on the controller as \
                     the controller's own user",
                    crate::shown(user)
                ),
            )
            .expected("remote_user only together with remote_host"),
        ),
        (Some(_), Some(user)) => {
            if let Err(e) = crate::UserName::parse(user) {
                errors.push(
                    ValidationError::new(
                        format!("{id}.remote_user"),
                        format!("{} {}", e.value, e.problem),
                    )
                    .expected(e.expected),
                );
            }
        }
        _ => {}
    }
}

impl Plan {
    /// Instantiates every task of `tasklist` with `registry`, collecting all problems.
    ///
    /// Secrets are prepared here: arguments a command declares secret are marked
    /// `{"secret": …}` in the plan's copy of the tasklist, `{"secret_env": "VAR"}` values are
    /// read from the controller's environment (a missing variable is a problem at its path),
    /// a redacted secret (`{"secret": "***"}`, from a saved or stored copy) is a problem, and
    /// every secret value goes into the plan's own [`Redactor`] ([`Plan::redactor`]), with
    /// which the executor hides it wherever output, errors or events echo it.
    ///
    /// ```
    /// use deployer_core::{CommandRegistry, Plan, Tasklist};
    ///
    /// let tasklist = Tasklist::from_json_str(r#"{"stages": [{"name": "s", "concurrency": 1,
    ///     "tasks": [{"command": "login", "token": {"secret_env": "PLAN_DOC_UNSET_TOKEN"}}]}]}"#)
    ///     .unwrap();
    /// let err = Plan::build(&tasklist, &CommandRegistry::new()).unwrap_err().to_string();
    /// assert!(err.contains("stages[0].tasks[0].token: the secret's environment variable \
    ///     PLAN_DOC_UNSET_TOKEN is not set"), "{err}");
    /// ```
    pub fn build(
        tasklist: &Tasklist,
        registry: &CommandRegistry,
    ) -> Result<Plan, ValidationErrors> {
        Self::build_with_redactor(tasklist, registry, Redactor::new())
    }

    /// [`build`](Self::build), keeping the plan's secrets in `redactor`: a host application
    /// that redacts its log lines with that redactor too (`deployer_report::LogFormat`)
    /// hides what its commands log of them.
    pub fn build_with_redactor(
        tasklist: &Tasklist,
        registry: &CommandRegistry,
        redactor: Redactor,
    ) -> Result<Plan, ValidationErrors> {
        let mut marked = tasklist.clone();
        registry.mark_tasklist_secrets(&mut marked);
        let tasklist = &marked;
        let mut errors = ValidationErrors::new();
        // Timeouts and retries within their limits, also for tasklists built in code.
        if let Err(problems) = tasklist.check_limits() {
            errors.extend(problems);
        }
        let mut stages = Vec::with_capacity(tasklist.stages.len());
        for (si, stage) in tasklist.stages.iter().enumerate() {
            if stage.name.trim().is_empty() {
                errors.push(
                    ValidationError::new(format!("stages[{si}].name"), "stage name is empty")
                        .expected("a non-empty string"),
                );
            }
            if stage.concurrency == 0 {
                errors.push(
                    ValidationError::new(format!("stages[{si}].concurrency"), "must be at least 1")
                        .expected("an integer ≥ 1"),
                );
            }
            if stage.finally.is_some() {
                for (key, set) in [
                    ("max_failures", stage.budget.max_failures.is_some()),
                    (
                        "max_fail_percentage",
                        stage.budget.max_fail_percentage.is_some(),
                    ),
                ] {
                    if set {
                        errors.push(
                            ValidationError::new(
                                format!("stages[{si}].{key}"),
                                "a finally stage runs every host's clean-up whatever fails",
                            )
                            .expected(format!("no {key} on a finally stage")),
                        );
                    }
                }
            }
            if stage.budget.max_fail_percentage.is_some_and(|p| p > 100) {
                errors.push(
                    ValidationError::new(
                        format!("stages[{si}].max_fail_percentage"),
                        "more than 100",
                    )
                    .expected("a whole percentage from 0 to 100"),
                );
            }
            if stage.concurrency_per_host == Some(0) {
                errors.push(
                    ValidationError::new(
                        format!("stages[{si}].concurrency_per_host"),
                        "must be at least 1",
                    )
                    .expected("an integer ≥ 1, or no limit"),
                );
            }
            let mut host_index: HashMap<&str, usize> = HashMap::new();
            let mut hosts = Vec::new();
            let mut entries = Vec::with_capacity(stage.tasks.len());
            let mut task_count = 0;
            for (ei, entry) in stage.tasks.iter().enumerate() {
                let is_chain = matches!(entry, crate::TaskEntry::Chain(_));
                if entry.tasks().is_empty() {
                    errors.push(
                        ValidationError::new(format!("stages[{si}].tasks[{ei}]"), "empty chain")
                            .expected("a list of at least one task object"),
                    );
                    continue;
                }
                let key = entry.host_key();
                let host = *host_index.entry(key).or_insert_with(|| {
                    hosts.push(key.to_string());
                    hosts.len() - 1
                });
                let mut steps = Vec::with_capacity(entry.tasks().len());
                for (ti, task) in entry.tasks().iter().enumerate() {
                    let id = TaskId {
                        stage: si,
                        entry: ei,
                        step: is_chain.then_some(ti),
                    };
                    check_login(task, &id.to_string(), &mut errors);
                    match registry.build_task(task, &redactor) {
                        Ok((resolved, command)) => steps.push(PlannedTask {
                            // A host's rollback is done when its entry's last step is.
                            rolls_back: stage.finally.as_ref().is_some_and(|f| f.rollback)
                                && ti + 1 == entry.tasks().len(),
                            task: Arc::new(resolved),
                            command: Arc::from(command),
                            info: Arc::new(TaskInfo {
                                id,
                                host: task.host_key().to_string(),
                                tag: task.tag.clone(),
                                command: task.command.clone(),
                            }),
                            spec: match &task.remote_host {
                                Some(h) => HostSpec::remote(h.clone(), task.remote_user.clone()),
                                None => HostSpec::local(),
                            },
                        }),
                        Err(problems) => {
                            for mut p in problems {
                                p.path = if p.path.is_empty() {
                                    id.to_string()
                                } else {
                                    format!("{id}.{}", p.path)
                                };
                                errors.push(p);
                            }
                        }
                    }
                }
                task_count += steps.len();
                entries.push(Arc::new(PlannedEntry { host, steps }));
            }
            stages.push(PlannedStage {
                name: stage.name.clone(),
                concurrency: stage.concurrency,
                per_host: stage.concurrency_per_host,
                hosts,
                entries,
                task_count,
                finally: stage.finally.clone(),
                budget: stage.budget,
                min_hosts_up: stage.min_hosts_up,
            });
            let stage_hosts = stages.last().map_or(0, |s: &PlannedStage| s.hosts.len());
            if let Some(min) = stage.min_hosts_up
                && min > 0
                && min >= stage_hosts
            {
                errors.push(
                    ValidationError::new(
                        format!("stages[{si}].min_hosts_up"),
                        format!(
                            "{min} of the stage's {stage_hosts} host{} must stay up, so none could be worked on",
                            if stage_hosts == 1 { "" } else { "s" }
                        ),
                    )
                    .expected(format!("fewer than {stage_hosts}")),
                );
            }
        }
        if tasklist.budget.max_fail_percentage.is_some_and(|p| p > 100) {
            errors.push(
                ValidationError::new("max_fail_percentage", "more than 100")
                    .expected("a whole percentage from 0 to 100"),
            );
        }
        errors.into_result(Plan {
            tasklist: Arc::new(marked),
            stages: Arc::new(stages),
            redactor,
            host_vars: None,
        })
    }

    /// Gives each host's tasks its variables (an inventory's host and group vars, see
    /// [`Config::host_vars`](crate::Config::host_vars)): a command reads them with
    /// [`ExecContext::host_var`](crate::ExecContext::host_var). The [`Driver`](crate::Driver)
    /// sets them from the config it plans.
    ///
    /// ```
    /// use deployer_core::{CommandRegistry, HostVars, Plan, Stage, Task, Tasklist};
    /// # let mut commands = CommandRegistry::new();
    /// # commands.register::<deployer_core::fixture::Noop>("restart");
    /// let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).task(Task::new("restart").on("web1")));
    /// let mut vars = HostVars::new();
    /// vars.entry("web1".to_string()).or_default().insert("port".into(), 8080.into());
    /// let plan = Plan::build(&tasklist, &commands).unwrap().with_host_vars(vars);
    /// assert_eq!(plan.host_vars("web1").unwrap()["port"], 8080);
    /// ```
    pub fn with_host_vars(mut self, vars: crate::HostVars) -> Self {
        self.host_vars = (!vars.is_empty()).then(|| Arc::new(vars));
        self
    }

    /// The variables of `host`, if any were given.
    pub fn host_vars(&self, host: &str) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.host_vars.as_ref()?.get(host)
    }

    /// The secrets of this plan, to redact text with (the executor does for everything it
    /// emits).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The tasklist this plan was built from, with the arguments its commands declare secret
    /// marked `{"secret": …}` (and `{"secret_env": …}` references as written).
    pub fn tasklist(&self) -> &Tasklist {
        &self.tasklist
    }

    /// How many tasks the plan holds, counting chain steps.
    pub fn task_count(&self) -> usize {
        self.stages.iter().map(|s| s.task_count).sum()
    }

    /// Every task's id and info, in order.
    pub fn tasks(&self) -> impl Iterator<Item = &TaskInfo> {
        self.stages
            .iter()
            .flat_map(|s| s.entries.iter())
            .flat_map(|e| e.steps.iter())
            .map(|t| &*t.info)
    }

    /// Whether the command of task `id` declares itself idempotent; `None` for an unknown id.
    pub fn is_idempotent(&self, id: TaskId) -> Option<bool> {
        let entry = self.stages.get(id.stage)?.entries.get(id.entry)?;
        let step = entry.steps.get(id.step.unwrap_or(0))?;
        Some(step.command.idempotent())
    }

    /// Of the tasks an earlier attempt of the run finished (`done`), those a resume does not
    /// run again: all of them except
    /// * the tasks of `finally` stages (clean-up runs again);
    /// * the tasks that take what a (non-rollback) finally stage releases — they reach a point
    ///   it names in `if_reached`, e.g. the deploy lock — with their chains: what was taken may
    ///   have been released since (by the finally stage, or by a person freeing a stale lock),
    ///   and taking again what one still holds succeeds;
    /// * the chains holding a task that reaches a point a rollback stage undid on its host
    ///   (its entry for the host is done: the host was switched back, so it is switched again).
    ///
    /// ```
    /// use std::collections::HashSet;
    /// use deployer_core::fixture::Noop;
    /// use deployer_core::*;
    ///
    /// let mut commands = CommandRegistry::new();
    /// commands.register::<Noop>("noop");
    /// let t = |host: &str| Task::new("noop").on(host);
    /// let tasklist = Tasklist::new("t")
    ///     .stage(Stage::new("lock", 2).tasks([t("a").reaches("locked"), t("b").reaches("locked")]))
    ///     .stage(Stage::new("work", 2).tasks([t("a"), t("b")]))
    ///     .stage(Stage::new("unlock", 2).finally(Finally::if_reached("locked")).tasks([t("a"), t("b")]));
    /// let plan = Plan::build(&tasklist, &commands).unwrap();
    /// let id = |stage, entry| TaskId { stage, entry, step: None };
    /// // The first attempt locked both, worked on a, failed on b, unlocked both.
    /// let done: HashSet<TaskId> = [id(0, 0), id(0, 1), id(1, 0), id(2, 0), id(2, 1)].into();
    /// let skip = plan.skipped_on_resume(&done);
    /// assert_eq!(skip, [id(1, 0)].into(), "lock again, work on b, unlock again");
    /// ```
    pub fn skipped_on_resume(&self, done: &HashSet<TaskId>) -> HashSet<TaskId> {
        // Points taken again on every host, and points undone on some hosts.
        let mut released: HashSet<&str> = HashSet::new();
        let mut undone: HashSet<(&str, &str)> = HashSet::new();
        for stage in self.stages.iter() {
            let Some(f) = &stage.finally else { continue };
            let Some(point) = f.if_reached.as_deref() else {
                continue;
            };
            if !f.rollback {
                released.insert(point);
                continue;
            }
            for entry in &stage.entries {
                if entry.steps.iter().any(|s| done.contains(&s.info.id)) {
                    undone.insert((stage.hosts[entry.host].as_str(), point));
                }
            }
        }
        let mut skip = HashSet::new();
        for stage in self.stages.iter().filter(|s| s.finally.is_none()) {
            for entry in &stage.entries {
                let again = entry.steps.iter().any(|s| {
                    done.contains(&s.info.id)
                        && s.task.reaches.as_deref().is_some_and(|p| {
                            released.contains(p) || undone.contains(&(s.info.host.as_str(), p))
                        })
                });
                if again {
                    continue;
                }
                skip.extend(
                    entry
                        .steps
                        .iter()
                        .map(|s| s.info.id)
                        .filter(|id| done.contains(id)),
                );
            }
        }
        skip
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("name", &self.tasklist.name)
            .field("stages", &self.stages.len())
            .field("tasks", &self.task_count())
            .finish()
    }
}
