//! Books: versioned, composable playbooks resolved against a scope into jobs that run
//! through the executor.
//!
//! * [`Book`]s (named, semver-versioned, ordered [`Step`]s: manual, command, or a call of
//!   another book) are built in code or loaded from YAML/JSON files into a [`BookLibrary`],
//!   which keeps every version and checks the books as a whole (commands, CEL expressions,
//!   child books, cycles).
//! * A [`JobBuilder`] resolves a book against a scope — any JSON object, such as the catalog's
//!   `Scope` — or a [`BookRequest`]: CEL expressions decide which steps apply and compute
//!   their data, child books are inlined, and timeouts come from the history of earlier runs.
//!   The result is a [`Job`], a serializable snapshot.
//! * A [`JobRunner`] compiles the job to a [`Tasklist`](deployer_core::Tasklist) and runs it
//!   through the [`Executor`](deployer_core::Executor); manual steps wait on
//!   [`Acknowledgements`]. A book's clean-up steps ([`Book::on_failure`], [`Book::always`])
//!   run after its steps as the executor's `finally` stages — after a failure, a rejection or
//!   a first cancel too — and a called book's only if it started.
//!
//! # What this crate does not know
//!
//! The catalog: a scope is JSON and a request is a [`BookRequest`] (the catalog's
//! `LifecycleRequest` serializes to one). Nor does it know hosts, stores or output: it plans
//! and runs through `deployer-core`'s traits.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use deployer_books::{Acknowledgements, Book, BookLibrary, JobBuilder, JobRunner, JobState, Step};
//! use deployer_core::fixture::FakeConnector;
//! use deployer_core::{CommandRegistry, Executor, RunOptions};
//! use serde_json::json;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut library = BookLibrary::new();
//! library.register(Book::new("restart", "1.0.0".parse().unwrap())
//!     .step(Step::manual("confirm"))
//!     .step(Step::command("restart", "execute_command")
//!         .hosts("deployment.hosts")
//!         .arg("command_line", json!("systemctl restart web")))).unwrap();
//!
//! let scope = json!({"deployment": {"hosts": ["fe001", "fe002"]}});
//! let mut job = JobBuilder::new(&library, "restart").scope(&scope).unwrap().build().await.unwrap();
//! assert_eq!(job.steps.len(), 2);
//!
//! let mut commands = CommandRegistry::new();
//! commands.register_fn("execute_command", |_| Ok(Box::new(deployer_core::fixture::Noop)));
//! let connector = Arc::new(FakeConnector::new());
//! let runner = JobRunner::new(Executor::new(connector.clone()), &commands);
//! let report = runner.run(&mut job, &Acknowledgements::all(), RunOptions::default()).await.unwrap();
//! assert!(report.succeeded());
//! assert_eq!(job.state, JobState::Done);
//! # });
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod expr;
mod file;
mod job;
mod library;
mod model;
mod run;
mod tree;

pub use error::{BookError, BookProblem};
pub use job::{
    BookRequest, CleanupWhen, EstimateSource, Job, JobBuilder, JobState, JobStep, JobStepKind,
    StepCleanup,
};
pub use library::BookLibrary;
pub use model::{
    APPROVER_ROLES, ApprovalRule, Book, ChildBook, CommandStep, DEFAULT_OVER_STOP, Step, StepKind,
};
pub use run::{Acknowledgements, JobRunner, MANUAL_COMMAND, STARTED_COMMAND};
