//! The core of the deployer crate family: the traits every other part plugs into, the tasklist
//! model and its validation, and the executor that runs a plan stage by stage with bounded
//! per-host concurrency.
//!
//! # Overview
//!
//! * A [`Generator`] (code, picked by the config's `platform` from a [`GeneratorRegistry`])
//!   turns a [`Config`] into a [`Tasklist`]: serial [`Stage`]s of [`TaskEntry`]s, each a
//!   [`Task`] or a chain of tasks. Tasklists load from and save to JSON, in the format of the
//!   original Python deployer.
//! * [`Plan::build`] instantiates every task through a [`CommandRegistry`] — each
//!   [`Command`]'s `initialize` validates its arguments — and reports every problem at once
//!   with its path. That is the dry run.
//! * The [`Executor`] runs a plan: stages in order; within a stage at most `concurrency` entries
//!   at once and at most `concurrency_per_host` per host, with timeouts, retries, failure
//!   semantics and cancellation ([`CancelHandle`]). Commands run against a [`RemoteHost`] that
//!   a [`Connector`] hands out.
//! * The executor prints nothing: it emits typed [`Event`]s to [`EventSink`]s.
//! * Secret arguments — `{"secret": "…"}`, `{"secret_env": "VAR"}` ([`SecretArg`]) or
//!   declared by a command ([`Command::secret_arguments`]) — reach the command intact and show
//!   `***` in `Debug`, saved and stored tasklists, events, reports and errors.
//! * [`Runs`] records runs in a [`RunStore`] (per-host and per-task state, leases, resume,
//!   purge; [`MemoryStore`] is the in-memory reference backend).
//!
//! # What this crate does not know
//!
//! This is the crate every other one plugs into; it depends on no sibling and does no
//! network I/O of its own. It knows no SSH (hosts: `deployer-remote`), no SQL (stores:
//! `deployer-store`), no CEL or playbooks (`deployer-books`), no projects or roles
//! (`deployer-catalog`), no terminal or output format (`deployer-report`) and no concrete
//! command (`deployer-commands`). The `deployer` facade re-exports it at its root.
//!
//! # Example
//!
//! ```
//! use deployer_core::*;
//! use deployer_core::fixture::{EventLog, FakeConnector};
//! use serde::Deserialize;
//! use std::sync::Arc;
//!
//! /// A command with typed arguments.
//! #[derive(Debug, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Restart {
//!     service: String,
//! }
//!
//! #[async_trait::async_trait]
//! impl Command for Restart {
//!     fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
//!         args.parse()
//!     }
//!     async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
//!         let cmd = ShellCommand::new("systemctl").arg("restart").arg(&self.service);
//!         ctx.run_checked(&cmd.build().map_err(|e| CommandError::failed(e.to_string()))?)
//!             .await?;
//!         Ok(Outcome::done())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut commands = CommandRegistry::new();
//! commands.register::<Restart>("restart");
//!
//! let tasklist = Tasklist::from_json_str(r#"{"name": "restart web", "stages": [
//!   {"name": "Restart", "concurrency": 2, "concurrency_per_host": 1, "tasks": [
//!     {"command": "restart", "remote_host": "fe001", "service": "web"},
//!     {"command": "restart", "remote_host": "fe002", "service": "web"}
//!   ]}
//! ]}"#).unwrap();
//! let plan = Plan::build(&tasklist, &commands).unwrap(); // the dry run
//!
//! let connector = Arc::new(FakeConnector::new());
//! let report = Executor::new(connector.clone()).run(&plan).await;
//! assert!(report.succeeded());
//! assert_eq!(connector.fake("fe001").commands(), ["systemctl restart web"]);
//! # });
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod approvals;
mod budget;
mod command;
mod config;
mod driver;
mod errors;
mod events;
mod executor;
mod generator;
mod host;
pub mod inventory;
mod json;
mod names;
mod plan;
mod recorder;
mod redact;
mod run_views;
mod runs;
mod secret;
mod secrets;
mod shell;
mod tasklist;
mod validation;
mod work;
mod worker;

#[cfg(feature = "test-fixture")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-fixture")))]
pub mod fixture;

pub use approvals::{
    Approval, ApprovalRefused, ApprovalRequest, ApprovalState, Approver, Approvers,
    DEFAULT_APPROVER_ROLE, DecideError, Decision, decide,
};
pub use budget::FailureBudget;
pub use command::{Command, CommandRegistry, ExecContext, HostVars, Outcome, TaskArgs};
pub use config::{Config, ServiceConfig};
pub use driver::{
    DriveError, Driver, Finished, SignalGuard, cancel_on_signals, exit, os_user, resume_submitted,
    submit,
};
pub use errors::{BoxError, CommandError, ConfigError, GeneratorError, RemoteError, TasklistError};
pub use events::{
    ChannelSink, Event, EventKind, EventSink, RunOutcome, TaskCategory, TaskCounts, TaskId,
    TaskInfo, TaskOutcome,
};
pub use executor::{
    CancelHandle, DroppedHost, Executor, FailedTask, Journal, RunError, RunOptions, RunReport,
    StageReport, TargetSet, error_chain,
};
pub use generator::{Generator, GeneratorContext, GeneratorRegistry};
pub use host::{
    Connector, ExecOptions, ExecOutput, HostSpec, OutputSink, PutOptions, RemoteHost, Stream,
    tail_lines,
};
pub use names::{
    HostName, MAX_HOST_NAME, MAX_PATH, MAX_USER_NAME, NameError, RemotePath, UserName, shown,
};
pub use plan::Plan;
pub use recorder::{ResumeOptions, Runs, RunsError};
pub use redact::Redactor;
pub use run_views::{CancelRequest, ChangeFeed, ChangeNotifier, HostRun, RunQuery, RunSummary};
pub use runs::{
    HostRecord, HostState, ListedRun, MemoryStore, NewRun, OUTPUT_TAIL_BYTES, RunId, RunRecord,
    RunState, RunStore, StoreError, TaskRecord, TaskState, UnreadableRun, approval_closed,
};
pub use secret::{REDACTED, Secret};
pub use secrets::{DebugArgs, SECRET_ENV_KEY, SECRET_KEY, SecretArg, serialize_redacted_map};
pub use shell::{ShellCommand, ShellError, quote};
pub use tasklist::{Finally, LOCAL_HOST, RESERVED_TASK_KEYS, Stage, Task, TaskEntry, Tasklist};
pub use validation::{ValidationError, ValidationErrors, did_you_mean, json_type, one_line};
pub use work::{
    Claim, EntryOutcome, RunRules, StageLimits, Submission, SubmitError, WorkEntry, WorkQueue,
    WorkStatus, WorkerInfo,
};
pub use worker::Worker;

/// Re-exported so implementors of the async traits use the same macro version.
pub use async_trait::async_trait;
