//! Books: versioned, composable playbooks resolved against a deployment's scope into jobs
//! that run through the executor.
//!
//! * [`Book`]s (named, semver-versioned, ordered [`Step`]s: manual, command, or a call of
//!   another book) are built in code or loaded from YAML/JSON files into a [`BookLibrary`],
//!   which keeps every version and checks the books as a whole (commands, expressions, child
//!   books, cycles).
//! * A [`JobBuilder`] resolves a book against a scope (a [`Scope`](crate::Scope) or any JSON
//!   object): CEL expressions decide which steps apply and compute their data, child books
//!   are inlined, and timeouts come from the history of earlier runs. The result is a
//!   [`Job`], a serializable snapshot.
//! * A [`JobRunner`] compiles the job to a [`Tasklist`](deployer_core::Tasklist) and runs it through
//!   the [`Executor`](deployer_core::Executor); manual steps wait on [`Acknowledgements`].

mod error;
mod expr;
mod file;
mod job;
mod library;
mod model;
mod run;

pub use error::{BookError, BookProblem};
pub use job::{BookRequest, EstimateSource, Job, JobBuilder, JobState, JobStep, JobStepKind};
pub use library::BookLibrary;
pub use model::{Book, ChildBook, CommandStep, DEFAULT_OVER_STOP, Step, StepKind};
pub use run::{Acknowledgements, JobRunner, MANUAL_COMMAND};
