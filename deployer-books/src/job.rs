//! Jobs: a book resolved against a scope, and how one is built.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use deployer_core::RunOutcome;
use deployer_core::RunStore;

use super::error::BookError;
use super::expr::Env;
use super::library::{BookLibrary, Entry};
use super::model::{Step, StepKind};

/// How deep child books may nest (cycles are refused at registration; this bounds the
/// inlining anyway).
const MAX_DEPTH: usize = 32;

/// Where a job is in its life: `draft` → `scheduled` → `running` → `done` | `error` |
/// `cancel` (a draft or scheduled job may also be cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Built, not yet scheduled.
    Draft,
    /// Waiting to run.
    Scheduled,
    /// Running.
    Running,
    /// Every step succeeded or was skipped.
    Done,
    /// A step failed.
    Error,
    /// Cancelled.
    Cancel,
}

impl JobState {
    /// The spelling in files and events.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Draft => "draft",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Error => "error",
            JobState::Cancel => "cancel",
        }
    }

    /// Whether a job may go from `self` to `to`.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Draft, Scheduled)
                | (Draft, Cancel)
                | (Scheduled, Running)
                | (Scheduled, Cancel)
                | (Running, Done)
                | (Running, Error)
                | (Running, Cancel)
        )
    }

    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Error | JobState::Cancel)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step's estimate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimateSource {
    /// The average duration of earlier runs of the step (`RunStore::average_duration` of
    /// its `book/step` key).
    History,
    /// The step's `estimated_duration`.
    Step,
    /// Neither: no estimate, no timeout of the step's own.
    Unknown,
}

/// What a job step does, resolved. Inline secrets in `args` show `***` in `Debug` and when
/// serialized.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobStepKind {
    /// Waits for an acknowledgement of [`JobStep::path`].
    Manual,
    /// Runs `command` on each of `hosts` (on the controller when empty).
    Command {
        /// The registered command.
        command: String,
        /// Its arguments, the step's data included.
        #[serde(serialize_with = "deployer_core::serialize_redacted_map")]
        args: Map<String, Value>,
        /// The hosts, from the step's `hosts` expression; empty: the controller (`local`).
        hosts: Vec<String>,
        /// At most this many hosts at once.
        concurrency: usize,
        /// At most this many tasks per host at once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        concurrency_per_host: Option<usize>,
    },
    /// A call of another book that was skipped, so it was not inlined.
    Book {
        /// The book called.
        book: String,
        /// The versions it may be called at.
        version: VersionReq,
    },
}

impl fmt::Debug for JobStepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobStepKind::Manual => f.write_str("Manual"),
            JobStepKind::Command {
                command,
                args,
                hosts,
                concurrency,
                concurrency_per_host,
            } => f
                .debug_struct("Command")
                .field("command", command)
                .field("args", &deployer_core::DebugArgs(args))
                .field("hosts", hosts)
                .field("concurrency", concurrency)
                .field("concurrency_per_host", concurrency_per_host)
                .finish(),
            JobStepKind::Book { book, version } => f
                .debug_struct("Book")
                .field("book", book)
                .field("version", version)
                .finish(),
        }
    }
}

/// When a clean-up step of a [`Job`] runs (see [`Book::on_failure`](crate::Book::on_failure)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupWhen {
    /// Only when the job failed (a step failed, a manual step was rejected) or was cancelled.
    OnFailure,
    /// Whatever happened.
    Always,
}

/// What makes a [`JobStep`] a clean-up step: when it runs, and which called book must have
/// started for it to run.
///
/// ```
/// use deployer_books::{Book, BookLibrary, CleanupWhen, JobBuilder, Step};
///
/// let mut library = BookLibrary::new();
/// library.register(Book::new("pause", "1.0.0".parse().unwrap())
///     .step(Step::command("flag", "writefile"))
///     .on_failure(Step::command("unflag", "removefile"))).unwrap();
/// library.register(Book::new("deploy", "1.0.0".parse().unwrap())
///     .step(Step::book("pause", "pause", "^1".parse().unwrap()))
///     .step(Step::command("release", "writefile"))
///     .always(Step::command("tell", "execute_command"))).unwrap();
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let job = JobBuilder::new(&library, "deploy").build().await.unwrap();
/// let paths: Vec<&str> = job.steps.iter().map(|s| s.path.as_str()).collect();
/// // Clean-up comes after the steps: the called books' first (the last started first).
/// assert_eq!(paths, ["deploy/pause/flag", "deploy/release", "deploy/pause/unflag", "deploy/tell"]);
/// let unflag = job.steps[2].cleanup.as_ref().unwrap();
/// assert_eq!(unflag.when, CleanupWhen::OnFailure);
/// assert_eq!(unflag.after.as_deref(), Some("deploy/pause"), "only if pause started");
/// assert_eq!(job.steps[3].cleanup.as_ref().unwrap().after, None);
/// # });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCleanup {
    /// When it runs.
    pub when: CleanupWhen,
    /// The path of the book call (`deploy/pause`) whose first step that runs must have been
    /// reached; `None` for the clean-up of the job's own book, which runs whenever the job
    /// runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// One resolved step of a [`Job`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStep {
    /// The step's path through the books that called it: `deploy/pause/stop`.
    pub path: String,
    /// The book the step belongs to.
    pub book: String,
    /// That book's version.
    pub version: Version,
    /// The step's name in its book.
    pub name: String,
    /// Its description.
    pub description: String,
    /// What it does.
    #[serde(flatten)]
    pub kind: JobStepKind,
    /// Its data, computed from the scope when the job was built (inline secrets serialized
    /// as `***`, like `args`).
    #[serde(serialize_with = "deployer_core::serialize_redacted_map")]
    pub data: Map<String, Value>,
    /// Why it is skipped (its `applies` was false, or it has no hosts); skipped steps do not
    /// run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// How long a task of it is expected to take.
    #[serde(default, with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Duration>,
    /// Where the estimate came from.
    pub estimate_source: EstimateSource,
    /// A task of it times out after this: estimate × `estimated_duration_over_stop`, within
    /// [`Task::TIMEOUT_MIN`](deployer_core::Task::TIMEOUT_MIN) (1 ms) to
    /// [`Task::TIMEOUT_MAX`](deployer_core::Task::TIMEOUT_MAX) (365 days).
    #[serde(default, with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries of a failed task.
    pub retries: u32,
    /// How it ended, once the job ran (`None` before, and for skipped steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunOutcome>,
    /// Set on a clean-up step (a book's `on_failure` or `always`): it runs after every
    /// ordinary step, when its condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<StepCleanup>,
    /// How a manual step is approved (default for other kinds).
    #[serde(default, skip_serializing_if = "crate::ApprovalRule::is_default")]
    pub approval: crate::ApprovalRule,
}

impl fmt::Debug for JobStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobStep")
            .field("path", &self.path)
            .field("book", &self.book)
            .field("version", &self.version)
            .field("name", &self.name)
            .field("description", &self.description)
            .field("kind", &self.kind)
            .field("data", &deployer_core::DebugArgs(&self.data))
            .field("skipped", &self.skipped)
            .field("estimate", &self.estimate)
            .field("estimate_source", &self.estimate_source)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("outcome", &self.outcome)
            .field("cleanup", &self.cleanup)
            .field("approval", &self.approval)
            .finish()
    }
}

impl JobStep {
    /// The key its durations are recorded and averaged under: `book/step`.
    pub fn history_key(&self) -> String {
        format!("{}/{}", self.book, self.name)
    }

    pub(crate) fn runs(&self) -> bool {
        self.skipped.is_none() && !matches!(self.kind, JobStepKind::Book { .. })
    }
}

/// A book resolved against a scope: a snapshot of the steps to run (child books inlined),
/// with the scope, the versions of every book used, the data and the timeouts.
///
/// Clean-up steps ([`JobStep::cleanup`]) come after every ordinary step: those of the book
/// started last first (a called book's before its caller's, a later call's before an
/// earlier one's), each book's `on_failure` steps before its `always` steps.
///
/// Build one with a [`JobBuilder`]; run it with a [`JobRunner`](crate::JobRunner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// A unique id (UUID v7).
    pub id: String,
    /// The book it was built from.
    pub book: String,
    /// That book's version.
    pub version: Version,
    /// The lifecycle action it was built for (`deploy`, `pause`, …), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The book's `should_notify`.
    pub should_notify: bool,
    /// Where it is in its life.
    pub state: JobState,
    /// The scope it was built against.
    pub scope: Value,
    /// Every book it uses, with its version.
    pub books: BTreeMap<String, Version>,
    /// Its steps, in order, skipped ones included.
    pub steps: Vec<JobStep>,
    /// The run recording it, once it ran with a run store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl Job {
    /// Moves to `to`, if the transition is allowed.
    pub fn transition(&mut self, to: JobState) -> Result<(), BookError> {
        if !self.state.can_become(to) {
            return Err(BookError::InvalidTransition {
                from: self.state,
                to,
            });
        }
        self.state = to;
        Ok(())
    }

    /// `draft` → `scheduled`.
    pub fn schedule(&mut self) -> Result<(), BookError> {
        self.transition(JobState::Scheduled)
    }

    /// Cancels a job that has not started (a running one is cancelled through the
    /// [`CancelHandle`](deployer_core::CancelHandle) of its run).
    pub fn cancel(&mut self) -> Result<(), BookError> {
        if self.state == JobState::Running {
            return Err(BookError::InvalidTransition {
                from: self.state,
                to: JobState::Cancel,
            });
        }
        self.transition(JobState::Cancel)
    }

    /// The step at `path`.
    pub fn step(&self, path: &str) -> Option<&JobStep> {
        self.steps.iter().find(|s| s.path == path)
    }

    /// `source` of its run record: `book:deploy@1.2.0`.
    pub fn source(&self) -> String {
        format!("book:{}@{}", self.book, self.version)
    }
}

/// Builds a [`Job`]: picks the book (by name and version requirement, or by a deployment's
/// lifecycle slot), evaluates every expression against the scope, inlines child books and
/// computes the timeouts.
///
/// ```
/// use deployer_books::{Book, BookLibrary, JobBuilder, JobState, Step};
/// use serde_json::json;
///
/// let mut library = BookLibrary::new();
/// library.register(Book::new("backup", "1.0.0".parse().unwrap())
///     .step(Step::command("dump", "dump_db")
///         .data("bucket", "backup_datasource.bucket")
///         .applies("deployment.scope == 'production'"))).unwrap();
///
/// let scope = json!({
///     "deployment": {"scope": "production"},
///     "backup_datasource": {"bucket": "shop-backups"},
/// });
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let job = JobBuilder::new(&library, "backup").scope(&scope).unwrap().build().await.unwrap();
/// assert_eq!(job.state, JobState::Draft);
/// assert_eq!(job.steps[0].path, "backup/dump");
/// assert_eq!(job.steps[0].data["bucket"], "shop-backups");
/// # });
/// ```
pub struct JobBuilder<'a> {
    library: &'a BookLibrary,
    book: String,
    requirement: VersionReq,
    scope: Value,
    action: Option<String>,
    history: Option<Arc<dyn RunStore>>,
}

impl fmt::Debug for JobBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobBuilder")
            .field("book", &self.book)
            .field("requirement", &self.requirement)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

impl<'a> JobBuilder<'a> {
    /// A job of the highest version of `book`, against an empty scope.
    pub fn new(library: &'a BookLibrary, book: impl Into<String>) -> Self {
        JobBuilder {
            library,
            book: book.into(),
            requirement: VersionReq::STAR,
            scope: Value::Object(Map::new()),
            action: None,
            history: None,
        }
    }

    /// A job of the book in the scope's `deployment.books.<action>` slot (a book name, or
    /// `name@requirement` such as `deploy@^1.2`), against `scope` (any value serializing to a
    /// JSON object, such as the catalog's `Scope`).
    pub fn for_action(
        library: &'a BookLibrary,
        action: &str,
        scope: &impl Serialize,
    ) -> Result<Self, BookError> {
        let scope = to_scope(scope)?;
        let slot = scope
            .pointer(&format!("/deployment/books/{action}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string();
        if slot.is_empty() {
            return Err(BookError::NoBookForAction {
                action: action.to_string(),
            });
        }
        let mut builder = Self::new(library, "").slot(&slot)?;
        builder.scope = scope;
        builder.action = Some(action.to_string());
        Ok(builder)
    }

    /// A job of a book reference: `name` (its highest version) or `name@requirement` such as
    /// `deploy@^1.2`.
    pub fn named(library: &'a BookLibrary, reference: &str) -> Result<Self, BookError> {
        Self::new(library, "").slot(reference)
    }

    /// A job for a request: its book, action and scope. `request` is a [`BookRequest`] or
    /// any value serializing to the same shape — the catalog's `LifecycleRequest` does, so a
    /// host application hands the catalog's requests over as they are.
    pub fn for_request(
        library: &'a BookLibrary,
        request: &impl Serialize,
    ) -> Result<Self, BookError> {
        let request = BookRequest::from_serialized(request)?;
        if request.book.trim().is_empty() {
            return Err(BookError::NoBookForAction {
                action: request.action,
            });
        }
        let mut builder = Self::new(library, "").slot(&request.book)?;
        builder.scope = to_scope(&request.scope)?;
        builder.action = Some(request.action);
        Ok(builder)
    }

    fn slot(mut self, slot: &str) -> Result<Self, BookError> {
        let (name, req) = match slot.split_once('@') {
            Some((n, r)) => (
                n.trim(),
                r.trim()
                    .parse::<VersionReq>()
                    .map_err(|e| BookError::Scope {
                        message: format!("book \"{slot}\": bad version requirement: {e}"),
                    })?,
            ),
            None => (slot.trim(), VersionReq::STAR),
        };
        self.book = name.to_string();
        self.requirement = req;
        Ok(self)
    }

    /// The versions the book may have (default: any; the highest registered match is used).
    pub fn version(mut self, requirement: VersionReq) -> Self {
        self.requirement = requirement;
        self
    }

    /// The scope expressions see (default: an empty object). Its top-level keys are the
    /// variables of the expressions. Fails when it does not serialize to a JSON object.
    pub fn scope(mut self, scope: &impl Serialize) -> Result<Self, BookError> {
        self.scope = to_scope(scope)?;
        Ok(self)
    }

    /// Records the lifecycle action in the job (default: none).
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// Where step durations of earlier runs are kept; a step's average there overrides its
    /// estimate (default: none, the steps' estimates are used).
    pub fn history(mut self, store: Arc<dyn RunStore>) -> Self {
        self.history = Some(store);
        self
    }

    /// Builds the job (state `draft`).
    pub async fn build(self) -> Result<Job, BookError> {
        let root = self
            .library
            .entry(&self.book, &self.requirement)
            .ok_or_else(|| BookError::NotFound {
                name: self.book.clone(),
                requirement: self.requirement.clone(),
                available: self.library.versions(&self.book),
            })?
            .clone();
        let mut job = Job {
            id: uuid::Uuid::now_v7().to_string(),
            book: root.book.name.clone(),
            version: root.book.version.clone(),
            action: self.action.clone(),
            should_notify: root.book.should_notify,
            state: JobState::Draft,
            scope: self.scope.clone(),
            books: BTreeMap::new(),
            steps: Vec::new(),
            run_id: None,
        };
        let mut estimates = Vec::new();
        {
            let env = Env::new(&self.scope).map_err(|message| BookError::Scope { message })?;
            let mut deferred = Vec::new();
            let mut r = Resolver {
                library: self.library,
                scope: &self.scope,
                env: &env,
                job: &mut job,
                estimates: &mut estimates,
                deferred: &mut deferred,
            };
            r.inline(&root, None, &root.book.name, 0, None)?;
            // Clean-up after every step, the book started last first.
            for (steps, step_estimates) in deferred.into_iter().rev() {
                job.steps.extend(steps);
                estimates.extend(step_estimates);
            }
            // A called book's clean-up runs only if the book started: without a step that
            // runs, it never does.
            let started: Vec<String> = job
                .steps
                .iter()
                .filter(|s| s.cleanup.is_none() && s.runs())
                .map(|s| s.path.clone())
                .collect();
            for step in job.steps.iter_mut().filter(|s| s.skipped.is_none()) {
                if let Some(after) = step.cleanup.as_ref().and_then(|c| c.after.as_ref())
                    && !started.iter().any(|p| p.starts_with(&format!("{after}/")))
                {
                    step.skipped = Some(format!("book call {after} has no step that runs"));
                }
            }
        }
        for (step, (estimate, over_stop, manual)) in job.steps.iter_mut().zip(estimates) {
            if !step.runs() {
                continue;
            }
            let mut source = EstimateSource::Unknown;
            let mut value = None;
            if let (Some(store), false) = (&self.history, manual) {
                match store.average_duration(&step.history_key()).await {
                    Ok(Some(d)) => {
                        value = Some(d);
                        source = EstimateSource::History;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        component = "books",
                        "cannot read the average duration of {}: {e}",
                        step.history_key()
                    ),
                }
            }
            if value.is_none() && !estimate.is_zero() {
                value = Some(estimate);
                source = EstimateSource::Step;
            }
            step.estimate = value;
            step.estimate_source = source;
            // Within a task timeout's range whatever the estimate: an average of 0 µs (a step
            // that did nothing) must not become a timeout of 0.
            step.timeout = value.map(|d| {
                d.checked_mul(over_stop).unwrap_or(Duration::MAX).clamp(
                    deployer_core::Task::TIMEOUT_MIN,
                    deployer_core::Task::TIMEOUT_MAX,
                )
            });
        }
        Ok(job)
    }
}

/// What a host application asks the books engine to run: the book of a deployment's lifecycle
/// slot, the action, and the scope to resolve it against.
///
/// Books know nothing of the catalog: any value serializing with these three fields converts
/// ([`BookRequest::from_serialized`]); other fields are ignored.
///
/// ```
/// use deployer_books::BookRequest;
/// use serde_json::json;
///
/// let from_elsewhere = json!({"id": "r1", "book": "deploy@^1", "action": "deploy",
///                             "scope": {"deployment": {"name": "prod"}}});
/// let request = BookRequest::from_serialized(&from_elsewhere).unwrap();
/// assert_eq!(request.book, "deploy@^1");
/// assert_eq!(request.action, "deploy");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookRequest {
    /// A book reference: `name` or `name@requirement`.
    pub book: String,
    /// The lifecycle action (`deploy`, `pause`, …).
    pub action: String,
    /// The scope the job's expressions see (a JSON object).
    pub scope: Value,
}

impl BookRequest {
    /// Reads a request from any value serializing with `book`, `action` and `scope` fields.
    pub fn from_serialized(value: &impl Serialize) -> Result<BookRequest, BookError> {
        let value = serde_json::to_value(value).map_err(|e| BookError::Scope {
            message: format!("the request does not serialize: {e}"),
        })?;
        serde_json::from_value(value).map_err(|e| BookError::Scope {
            message: format!("the request is not a book request (book, action, scope): {e}"),
        })
    }
}

fn to_scope(scope: &impl Serialize) -> Result<Value, BookError> {
    let value = serde_json::to_value(scope).map_err(|e| BookError::Scope {
        message: e.to_string(),
    })?;
    if !value.is_object() {
        return Err(BookError::Scope {
            message: format!(
                "the scope is {}, expected an object",
                deployer_core::json_type(&value)
            ),
        });
    }
    Ok(value)
}

struct Resolver<'r> {
    library: &'r BookLibrary,
    scope: &'r Value,
    env: &'r Env,
    job: &'r mut Job,
    /// Per job step: the step's own estimate, its over-stop factor, whether it is manual.
    estimates: &'r mut Vec<(Duration, u32, bool)>,
    /// Per book inlined as a step (not as clean-up), in the order they started: its clean-up
    /// steps and their estimates.
    #[allow(clippy::type_complexity)]
    deferred: &'r mut Vec<(Vec<JobStep>, Vec<(Duration, u32, bool)>)>,
}

impl Resolver<'_> {
    fn check_filters(&self, entry: &Entry) -> Result<(), BookError> {
        let book = &entry.book;
        for (filter, pointer, field) in [
            (
                &book.deployment_group_type,
                "/deployment_group/group_type",
                "deployment_group.group_type",
            ),
            (
                &book.deployment_type,
                "/deployment/deployment_type",
                "deployment.deployment_type",
            ),
        ] {
            if let Some(expected) = filter {
                let found = self.scope.pointer(pointer).and_then(Value::as_str);
                if found != Some(expected.as_str()) {
                    return Err(BookError::NotApplicable {
                        book: book.id(),
                        field: field.to_string(),
                        expected: expected.clone(),
                        found: found.unwrap_or("").to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Inlines the steps of `entry` at `prefix`. As ordinary steps (`cleanup` is `None`), its
    /// clean-up steps are deferred to the end of the job, to run only if it started (for a
    /// called book); as clean-up (`cleanup` set), its steps and clean-up steps all are
    /// clean-up steps with that condition (an `on_failure` inside makes them `on_failure`).
    fn inline(
        &mut self,
        entry: &Entry,
        only: Option<&str>,
        prefix: &str,
        depth: usize,
        cleanup: Option<&StepCleanup>,
    ) -> Result<(), BookError> {
        self.check_filters(entry)?;
        let book = &entry.book;
        self.job
            .books
            .insert(book.name.clone(), book.version.clone());
        let slot = cleanup.is_none().then(|| {
            self.deferred.push((Vec::new(), Vec::new()));
            self.deferred.len() - 1
        });
        let mut offset = 0;
        for (key, steps) in book.sections() {
            let when = match key {
                "steps" => None,
                "on_failure" => Some(CleanupWhen::OnFailure),
                _ => Some(CleanupWhen::Always),
            };
            let section_cleanup = match (cleanup, when) {
                (None, None) => None,
                (Some(c), None) => Some(c.clone()),
                (None, Some(when)) => Some(StepCleanup {
                    when,
                    after: (depth > 0).then(|| prefix.to_string()),
                }),
                (Some(c), Some(when)) => Some(StepCleanup {
                    when: if when == CleanupWhen::OnFailure {
                        when
                    } else {
                        c.when
                    },
                    after: c.after.clone(),
                }),
            };
            // Deferred clean-up is resolved in place, then moved to its slot.
            let mark = self.job.steps.len();
            self.section(
                entry,
                steps,
                offset,
                if when.is_none() { only } else { None },
                prefix,
                depth,
                section_cleanup.as_ref(),
            )?;
            if let (Some(slot), Some(_)) = (slot, when) {
                let steps = self.job.steps.split_off(mark);
                let estimates = self.estimates.split_off(mark);
                self.deferred[slot].0.extend(steps);
                self.deferred[slot].1.extend(estimates);
            }
            offset += steps.len();
        }
        Ok(())
    }

    /// Inlines one section of `entry` (`steps`, whose first compiled step is at `offset`).
    #[allow(clippy::too_many_arguments)]
    fn section(
        &mut self,
        entry: &Entry,
        steps: &[Step],
        offset: usize,
        only: Option<&str>,
        prefix: &str,
        depth: usize,
        cleanup: Option<&StepCleanup>,
    ) -> Result<(), BookError> {
        let book = &entry.book;
        let mut order: Vec<usize> = (0..steps.len()).collect();
        order.sort_by_key(|i| steps[*i].sequence);
        for i in order {
            let step = &steps[i];
            if only.is_some_and(|o| o != step.name) {
                continue;
            }
            let compiled = &entry.compiled[offset + i];
            let path = format!("{prefix}/{}", step.name);
            let fail = |what: &str, expression: &str, message: String| BookError::Expression {
                at: entry.location(&format!("steps[{i}].{what}")).into(),
                book: book.id(),
                step: path.clone(),
                what: what.into(),
                expression: expression.into(),
                message,
            };
            let mut skipped = None;
            if let Some(applies) = &compiled.applies
                && !applies
                    .eval_bool(self.env)
                    .map_err(|m| fail("applies", &applies.source, m))?
            {
                skipped = Some(format!("its condition is false: {}", applies.source));
            }
            let mut data = Map::new();
            if skipped.is_none() {
                for (k, e) in &compiled.data {
                    let v = e
                        .eval(self.env)
                        .map_err(|m| fail(&format!("data.{k}"), &e.source, m))?;
                    data.insert(k.clone(), v);
                }
            }
            let kind = match &step.kind {
                StepKind::Book(child) => {
                    if skipped.is_none() {
                        if depth >= MAX_DEPTH {
                            return Err(BookError::Cycle {
                                cycle: path.split('/').map(str::to_string).collect(),
                            });
                        }
                        let c = self
                            .library
                            .entry(&child.book, &child.version)
                            .ok_or_else(|| BookError::NotFound {
                                name: child.book.clone(),
                                requirement: child.version.clone(),
                                available: self.library.versions(&child.book),
                            })?
                            .clone();
                        if let Some(s) = &child.step
                            && !c.book.steps.iter().any(|x| &x.name == s)
                        {
                            return Err(BookError::NoSuchStep {
                                book: c.book.id(),
                                step: s.clone(),
                                from: path,
                            });
                        }
                        self.inline(&c, child.step.as_deref(), &path, depth + 1, cleanup)?;
                        continue;
                    }
                    JobStepKind::Book {
                        book: child.book.clone(),
                        version: child.version.clone(),
                    }
                }
                StepKind::Manual => JobStepKind::Manual,
                StepKind::Command(cmd) => {
                    let mut hosts = Vec::new();
                    if let (Some(e), None) = (&compiled.hosts, &skipped) {
                        match e.eval(self.env).map_err(|m| fail("hosts", &e.source, m))? {
                            Value::String(h) => hosts.push(h),
                            Value::Array(items) => {
                                for item in items {
                                    match item {
                                        Value::String(h) => hosts.push(h),
                                        other => {
                                            return Err(fail(
                                                "hosts",
                                                &e.source,
                                                format!(
                                                    "a host is {}, expected a string",
                                                    deployer_core::json_type(&other)
                                                ),
                                            ));
                                        }
                                    }
                                }
                            }
                            other => {
                                return Err(fail(
                                    "hosts",
                                    &e.source,
                                    format!(
                                        "gave {}, expected a list of host names",
                                        deployer_core::json_type(&other)
                                    ),
                                ));
                            }
                        }
                        if hosts.is_empty() {
                            skipped = Some(format!("its hosts ({}) are an empty list", e.source));
                        }
                    }
                    let mut args = cmd.args.clone();
                    args.extend(data.clone());
                    JobStepKind::Command {
                        command: cmd.command.clone(),
                        args,
                        hosts,
                        concurrency: cmd.concurrency,
                        concurrency_per_host: cmd.concurrency_per_host,
                    }
                }
            };
            self.estimates.push((
                step.estimated_duration,
                step.estimated_duration_over_stop,
                matches!(step.kind, StepKind::Manual),
            ));
            self.job.steps.push(JobStep {
                path,
                book: book.name.clone(),
                version: book.version.clone(),
                name: step.name.clone(),
                description: step.description.clone(),
                kind,
                data,
                skipped,
                estimate: None,
                estimate_source: EstimateSource::Unknown,
                timeout: None,
                retries: step.retries,
                outcome: None,
                cleanup: cleanup.cloned(),
                approval: if matches!(step.kind, StepKind::Manual) {
                    step.approval.clone()
                } else {
                    crate::ApprovalRule::default()
                },
            });
        }
        Ok(())
    }
}

pub(crate) mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e6),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            Some(v) => Duration::try_from_secs_f64(v)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secrets_of_a_step_never_show() {
        let secret = "hunter2-in-a-book";
        let args: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "lb_password": {"secret": secret},
            "nested": [{"secret": secret}],
            "plain": "visible",
        }))
        .unwrap();
        let step = JobStep {
            path: "deploy/lb".into(),
            book: "deploy".into(),
            version: Version::new(1, 0, 0),
            name: "lb".into(),
            description: String::new(),
            kind: JobStepKind::Command {
                command: "lb_disable".into(),
                args: args.clone(),
                hosts: vec!["fe001".into()],
                concurrency: 1,
                concurrency_per_host: None,
            },
            data: args,
            skipped: None,
            estimate: None,
            estimate_source: EstimateSource::Unknown,
            timeout: None,
            retries: 0,
            outcome: None,
            cleanup: None,
            approval: Default::default(),
        };
        let debug = format!("{step:?}");
        let json = serde_json::to_string(&step).unwrap();
        for shown in [&debug, &json] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(
                shown.contains("***") && shown.contains("visible"),
                "{shown}"
            );
        }
    }
}
