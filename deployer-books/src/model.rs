//! The book model: books and their steps, built in Rust or loaded from files.

use std::time::Duration;

use indexmap::IndexMap;
use semver::{Version, VersionReq};
use serde_json::{Map, Value};

/// The default of [`Step::estimated_duration_over_stop`].
pub const DEFAULT_OVER_STOP: u32 = 10;

/// Whether `estimate` may be a step's [`Step::estimated_duration`]: zero (unknown), or a
/// task timeout's range, [`Task::TIMEOUT_MIN`](deployer_core::Task::TIMEOUT_MIN) (1 ms) to
/// [`Task::TIMEOUT_MAX`](deployer_core::Task::TIMEOUT_MAX) (365 days).
pub(crate) fn estimate_allowed(estimate: Duration) -> bool {
    estimate.is_zero()
        || (deployer_core::Task::TIMEOUT_MIN..=deployer_core::Task::TIMEOUT_MAX).contains(&estimate)
}

/// What a step's `estimated_duration` may be, in words.
pub(crate) fn estimate_expected() -> String {
    let (min, max) = (
        deployer_core::Task::TIMEOUT_MIN,
        deployer_core::Task::TIMEOUT_MAX,
    );
    format!(
        "0 for unknown, or a number of seconds from {} ({} ms) to {} ({} days)",
        min.as_secs_f64(),
        min.as_millis(),
        max.as_secs(),
        max.as_secs() / 86_400
    )
}

/// The roles a step's `approvers` may name: the catalog's roles.
pub const APPROVER_ROLES: [&str; 3] = ["user", "developer", "admin"];

/// How a manual step is approved: who may decide it, whether its starter may, and how long
/// the decision may take.
///
/// ```
/// use std::time::Duration;
/// use deployer_books::{ApprovalRule, Step};
/// use deployer_core::Approvers;
///
/// let step = Step::manual("approve")
///     .approvers(Approvers::Users(vec!["bob".into(), "carol".into()]))
///     .four_eyes(true)
///     .expires_after(Duration::from_secs(3600));
/// assert!(step.approval.four_eyes);
/// assert!(ApprovalRule::default().is_default());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ApprovalRule {
    /// Who may decide (default: [`Approvers::Default`](deployer_core::Approvers::Default),
    /// role `developer` where roles are known).
    #[serde(default, skip_serializing_if = "is_default_approvers")]
    pub approvers: deployer_core::Approvers,
    /// Whether whoever started the job may not approve it (default: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub four_eyes: bool,
    /// A step not decided this long after it asked fails (default: it waits as long as it
    /// takes).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::job::opt_secs"
    )]
    pub expires_after: Option<Duration>,
}

fn is_default_approvers(a: &deployer_core::Approvers) -> bool {
    *a == deployer_core::Approvers::Default
}

impl ApprovalRule {
    /// Whether nothing is set.
    pub fn is_default(&self) -> bool {
        *self == ApprovalRule::default()
    }
}

/// A named, versioned, ordered list of steps: a playbook.
///
/// A book is data: a host application ships books as YAML or JSON files
/// ([`BookLibrary::load_file`](crate::BookLibrary::load_file)) or builds them here; both go
/// through the same checks when registered in a [`BookLibrary`](crate::BookLibrary).
///
/// ```
/// use deployer_books::{Book, Step};
///
/// let book = Book::new("pause", "1.0.0".parse().unwrap())
///     .description("Stop serving traffic")
///     .step(Step::manual("confirm").description("Tell the customer"))
///     .step(
///         Step::command("stop", "stop_service")
///             .arg("service", "web")
///             .hosts("cluster.hosts")
///             .applies("deployment.scope == 'production'"),
///     )
///     // Clean-up: runs after the steps when the job failed, was rejected or cancelled.
///     .on_failure(Step::command("restart", "start_service").arg("service", "web")
///         .hosts("cluster.hosts"));
/// assert_eq!(book.steps.len(), 2);
/// assert_eq!(book.on_failure.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Book {
    /// Its name, unique in a library together with the version.
    pub name: String,
    /// Its version; a changed book needs a new one.
    pub version: Version,
    /// What it does.
    pub description: String,
    /// When set, the book only applies to deployments of groups of this `group_type`.
    pub deployment_group_type: Option<String>,
    /// When set, the book only applies to deployments of this `deployment_type`.
    pub deployment_type: Option<String>,
    /// Whether jobs built from it should notify people (the host application decides how).
    pub should_notify: bool,
    /// Its steps; they run ordered by [`Step::sequence`], ties in the order given.
    pub steps: Vec<Step>,
    /// Clean-up steps that run after the job's steps only when the job failed (a step
    /// failed, a manual step was rejected) or was cancelled (a first cancel; a second one
    /// skips clean-up). Command steps or calls of other books, not manual steps. In a called
    /// book they run only if that book started (its first step that runs was reached).
    pub on_failure: Vec<Step>,
    /// Clean-up steps that run after the job's steps whatever happened (success, failure,
    /// rejection, a first cancel), after this book's [`on_failure`](Self::on_failure) steps;
    /// same rules otherwise.
    pub always: Vec<Step>,
}

impl Book {
    /// An empty book (no description, no filters, no notification, no steps).
    pub fn new(name: impl Into<String>, version: Version) -> Self {
        Book {
            name: name.into(),
            version,
            description: String::new(),
            deployment_group_type: None,
            deployment_type: None,
            should_notify: false,
            steps: Vec::new(),
            on_failure: Vec::new(),
            always: Vec::new(),
        }
    }

    /// Sets the description (default: empty).
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Restricts the book to groups of this type (default: any).
    pub fn deployment_group_type(mut self, group_type: impl Into<String>) -> Self {
        self.deployment_group_type = Some(group_type.into());
        self
    }

    /// Restricts the book to deployments of this type (default: any).
    pub fn deployment_type(mut self, deployment_type: impl Into<String>) -> Self {
        self.deployment_type = Some(deployment_type.into());
        self
    }

    /// Whether jobs notify (default: false).
    pub fn should_notify(mut self, notify: bool) -> Self {
        self.should_notify = notify;
        self
    }

    /// Appends a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Appends a clean-up step that runs only when the job fails or is cancelled (see
    /// [`on_failure`](Self::on_failure)).
    pub fn on_failure(mut self, step: Step) -> Self {
        self.on_failure.push(step);
        self
    }

    /// Appends a clean-up step that runs whatever happened (see [`always`](Self::always)).
    pub fn always(mut self, step: Step) -> Self {
        self.always.push(step);
        self
    }

    /// Its three lists of steps with their keys in a file: `steps`, `on_failure`, `always`.
    pub(crate) fn sections(&self) -> [(&'static str, &[Step]); 3] {
        [
            ("steps", &self.steps),
            ("on_failure", &self.on_failure),
            ("always", &self.always),
        ]
    }

    /// Every step of every section with its place in a file (`on_failure[1]`), ordinary steps
    /// first: the order of the compiled steps of a library entry.
    pub(crate) fn all_steps(&self) -> impl Iterator<Item = (String, &Step)> {
        self.sections().into_iter().flat_map(|(key, steps)| {
            steps
                .iter()
                .enumerate()
                .map(move |(i, s)| (format!("{key}[{i}]"), s))
        })
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The steps ordered by sequence (stable: ties keep their order).
    pub fn ordered_steps(&self) -> Vec<&Step> {
        let mut steps: Vec<&Step> = self.steps.iter().collect();
        steps.sort_by_key(|s| s.sequence);
        steps
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Waits for a person's approval (see [`Step::approval`] and
    /// [`Acknowledgements`](crate::Acknowledgements)).
    Manual,
    /// Runs a registered command.
    Command(CommandStep),
    /// Calls another book: its steps are inlined when the job is built.
    Book(ChildBook),
}

/// A step that runs a registered command on the scope's hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandStep {
    /// The registered command.
    pub command: String,
    /// Its arguments; the step's `data` values are added to them.
    pub args: Map<String, Value>,
    /// An expression over the scope giving the hosts (a list of names, or one name), e.g.
    /// `cluster.hosts`. `None`: the command runs once, on the controller (`local`).
    pub hosts: Option<String>,
    /// At most this many hosts at once (default: 1).
    pub concurrency: usize,
    /// At most this many tasks per host at once (default: no limit beyond `concurrency`).
    pub concurrency_per_host: Option<usize>,
}

/// A step that calls another book.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildBook {
    /// The book's name.
    pub book: String,
    /// Which versions may be called; the highest registered match is used.
    pub version: VersionReq,
    /// Only this step of it (default: every step).
    pub step: Option<String>,
}

/// One step of a [`Book`].
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Its name, unique within the book; durations are recorded under `book/step`.
    pub name: String,
    /// What it does, for people.
    pub description: String,
    /// Orders the steps (default: 0; ties keep the order given).
    pub sequence: i64,
    /// What it does.
    pub kind: StepKind,
    /// The expected duration per host: zero (unknown), or from 1 ms to 365 days (a task
    /// timeout's range, [`Task::TIMEOUT_MIN`](deployer_core::Task::TIMEOUT_MIN) to
    /// [`Task::TIMEOUT_MAX`](deployer_core::Task::TIMEOUT_MAX); registering a book checks it).
    /// A historical average overrides it.
    pub estimated_duration: Duration,
    /// A task of the step times out after estimate × this (default: 10), kept within a task
    /// timeout's range.
    pub estimated_duration_over_stop: u32,
    /// A CEL expression over the scope; when it is false the step is skipped (default: runs).
    pub applies: Option<String>,
    /// Values computed from the scope when the job is built, each a CEL expression; they are
    /// added to a command step's arguments.
    pub data: IndexMap<String, String>,
    /// How many times a failed task of the step is retried, after the executor's retry delay
    /// (default: 0, a failure is final; at most
    /// [`Task::RETRIES_MAX`](deployer_core::Task::RETRIES_MAX), 1000).
    pub retries: u32,
    /// How a manual step is approved (ignored by other kinds).
    pub approval: ApprovalRule,
}

impl Step {
    fn new(name: impl Into<String>, kind: StepKind) -> Self {
        Step {
            name: name.into(),
            description: String::new(),
            sequence: 0,
            kind,
            estimated_duration: Duration::ZERO,
            estimated_duration_over_stop: DEFAULT_OVER_STOP,
            applies: None,
            data: IndexMap::new(),
            retries: 0,
            approval: ApprovalRule::default(),
        }
    }

    /// A step that waits for an acknowledgement.
    pub fn manual(name: impl Into<String>) -> Self {
        Self::new(name, StepKind::Manual)
    }

    /// A step running `command` once on the controller (see [`hosts`](Self::hosts)).
    pub fn command(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self::new(
            name,
            StepKind::Command(CommandStep {
                command: command.into(),
                args: Map::new(),
                hosts: None,
                concurrency: 1,
                concurrency_per_host: None,
            }),
        )
    }

    /// A step calling every step of the highest version of `book` matching `version`.
    pub fn book(name: impl Into<String>, book: impl Into<String>, version: VersionReq) -> Self {
        Self::new(
            name,
            StepKind::Book(ChildBook {
                book: book.into(),
                version,
                step: None,
            }),
        )
    }

    /// Sets the description (default: empty).
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Sets the sequence (default: 0).
    pub fn sequence(mut self, sequence: i64) -> Self {
        self.sequence = sequence;
        self
    }

    /// Sets the estimated duration (default: zero, unknown).
    pub fn estimated_duration(mut self, estimate: Duration) -> Self {
        self.estimated_duration = estimate;
        self
    }

    /// Sets the timeout multiplier (default: 10).
    pub fn over_stop(mut self, factor: u32) -> Self {
        self.estimated_duration_over_stop = factor;
        self
    }

    /// Sets the applicability condition (default: always applies).
    pub fn applies(mut self, expression: impl Into<String>) -> Self {
        self.applies = Some(expression.into());
        self
    }

    /// Adds a data value computed from the scope by `expression`.
    pub fn data(mut self, key: impl Into<String>, expression: impl Into<String>) -> Self {
        self.data.insert(key.into(), expression.into());
        self
    }

    /// Sets the retries (default: 0).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Adds an argument of a command step (ignored by other kinds).
    pub fn arg(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        if let StepKind::Command(c) = &mut self.kind {
            c.args.insert(key.into(), value.into());
        }
        self
    }

    /// Sets the hosts expression of a command step (ignored by other kinds).
    pub fn hosts(mut self, expression: impl Into<String>) -> Self {
        if let StepKind::Command(c) = &mut self.kind {
            c.hosts = Some(expression.into());
        }
        self
    }

    /// Sets the concurrency of a command step (ignored by other kinds).
    pub fn concurrency(mut self, limit: usize) -> Self {
        if let StepKind::Command(c) = &mut self.kind {
            c.concurrency = limit;
        }
        self
    }

    /// Sets the per-host limit of a command step (ignored by other kinds).
    pub fn per_host(mut self, limit: usize) -> Self {
        if let StepKind::Command(c) = &mut self.kind {
            c.concurrency_per_host = Some(limit);
        }
        self
    }

    /// Sets who may approve a manual step (default: role `developer` where roles are known).
    pub fn approvers(mut self, approvers: deployer_core::Approvers) -> Self {
        self.approval.approvers = approvers;
        self
    }

    /// Forbids whoever started the job to approve a manual step (default: allowed).
    pub fn four_eyes(mut self, on: bool) -> Self {
        self.approval.four_eyes = on;
        self
    }

    /// Fails a manual step nobody decided within `after` (default: no expiry).
    pub fn expires_after(mut self, after: Duration) -> Self {
        self.approval.expires_after = Some(after);
        self
    }

    /// Makes a child-book step call only `step` of the child (ignored by other kinds).
    pub fn only_step(mut self, step: impl Into<String>) -> Self {
        if let StepKind::Book(c) = &mut self.kind {
            c.step = Some(step.into());
        }
        self
    }
}
