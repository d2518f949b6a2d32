//! Errors of books: loading, registering, building and running jobs.

use std::fmt;
use std::path::PathBuf;

use semver::{Version, VersionReq};

use deployer_core::RunsError;
use deployer_core::ValidationErrors;

use super::job::JobState;

/// One problem of a book, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookProblem {
    /// The file name, or `name@version` for a book built in code.
    pub origin: String,
    /// 1-based line in the file (0 when unknown).
    pub line: u64,
    /// 1-based column in the file (0 when unknown).
    pub column: u64,
    /// Where in the book: `steps[2].command`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for BookProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", deployer_core::one_line(&self.path))?;
        }
        // One line whatever the book held: no raw newline, no 10 KB value.
        write!(f, ": {}", deployer_core::one_line(&self.message))
    }
}

/// Failure to load or register a book, to build a job from one, or to run the job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BookError {
    /// A book file could not be read.
    #[error("cannot read book file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Books with problems (malformed file, unknown command, bad version, bad expression,
    /// missing child book...); each names where.
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Every problem found.
        problems: Vec<BookProblem>,
    },
    /// A book changed without a new version.
    #[error(
        "book {name}@{version} is already registered with different content; give the changed book a new version"
    )]
    VersionConflict {
        /// The book.
        name: String,
        /// The version registered twice.
        version: Version,
    },
    /// Books call each other in a cycle.
    #[error("books call each other in a cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The books of the cycle, the first repeated at the end: `deploy -> pause -> deploy`.
        cycle: Vec<String>,
    },
    /// No registered book matches.
    #[error("no book \"{name}\" matching version \"{requirement}\"{}", if available.is_empty() { String::new() } else { format!(" (registered: {})", available.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) })]
    NotFound {
        /// The book asked for.
        name: String,
        /// The version requirement.
        requirement: VersionReq,
        /// The versions registered under that name.
        available: Vec<Version>,
    },
    /// The book's `deployment_group_type` or `deployment_type` filter excludes the scope.
    #[error("book {book} is for {field} \"{expected}\", the scope's is \"{found}\"")]
    NotApplicable {
        /// `name@version`.
        book: String,
        /// `deployment_group.group_type` or `deployment.deployment_type`.
        field: String,
        /// The book's filter.
        expected: String,
        /// The scope's value.
        found: String,
    },
    /// The deployment names no book for the action.
    #[error(
        "the deployment has no book for action \"{action}\" (deployment.books.{action} is empty)"
    )]
    NoBookForAction {
        /// The action.
        action: String,
    },
    /// The scope cannot be used (not an object, not serializable).
    #[error("invalid scope: {message}")]
    Scope {
        /// What is wrong.
        message: String,
    },
    /// An expression failed when the job was built; `at` names the book file, line and column
    /// of the expression (`library/pause.yaml:7:13`), or `name@version` for a book built in code.
    #[error("{}{step} ({book}): {what} \"{expression}\": {message}", if **at == **book { String::new() } else { format!("{at}: ") })]
    Expression {
        /// Where the expression is: `FILE:LINE:COLUMN`, or `name@version` without a file.
        at: Box<str>,
        /// `name@version` of the book holding the step.
        book: String,
        /// The step's path in the job: `deploy/pause/stop`.
        step: String,
        /// `applies`, `hosts` or `data.<key>`.
        what: Box<str>,
        /// The expression.
        expression: Box<str>,
        /// What went wrong (a missing key, a wrong type).
        message: String,
    },
    /// A child step names a step the child book does not have.
    #[error("{book} has no step \"{step}\" (called from {from})")]
    NoSuchStep {
        /// `name@version` of the child.
        book: String,
        /// The step asked for.
        step: String,
        /// The calling step's path.
        from: String,
    },
    /// A job state change that is not allowed.
    #[error("a job cannot go from {from} to {to}")]
    InvalidTransition {
        /// The current state.
        from: JobState,
        /// The state asked for.
        to: JobState,
    },
    /// The job's tasklist does not validate with the registered commands.
    #[error("the job's tasklist does not validate: {0}")]
    Plan(#[source] ValidationErrors),
    /// Recording the job's run failed.
    #[error("cannot record the job's run")]
    Runs(#[from] RunsError),
}
