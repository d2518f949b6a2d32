//! An embeddable deployment library: plan a deploy in code ([`Generator`]) or as data (books),
//! validate every task before a host is touched ([`Plan::build`]), run it stage by stage over
//! SSH with per-stage and per-host concurrency limits ([`Executor`]), record it so it can be
//! resumed ([`Runs`]), and show a person what happens (`report`).
//!
//! This crate is a facade: it re-exports the crates of the family, each behind a feature, so
//! a host application links exactly what it needs. The core API ([`deployer_core`]) is
//! re-exported flat at the root; every other crate is a module.
//!
//! | module | crate | feature | default |
//! |---|---|---|---|
//! | (root) | `deployer-core`: traits, tasklist, plan, executor, events, runs, config | — | always |
//! | `remote` | `deployer-remote`: `LocalHost`, and `SshHost`/`SshConnector` with `ssh` | `ssh` | yes |
//! | `commands` | `deployer-commands`: the standard command set | `commands` | yes |
//! | `store` | `deployer-store`: `SqliteStore`, `PostgresStore` | `sqlite`, `postgres` | `sqlite` |
//! | `report` | `deployer-report`: progress, recap, JSON lines, DOT, log lines | `report` | yes |
//! | `release` | `deployer-release`: the release generator | `release` | yes |
//! | `books` | `deployer-books`: versioned playbooks with CEL conditions | `books` | no |
//! | `catalog` | `deployer-catalog`: projects, deployments, roles, monitors, scopes | `catalog` | no |
//! | `web` | `deployer-web`: the run viewer in the browser (an axum router) | `web` | no |
//!
//! `test-fixture` adds the in-memory host, connector and event log ([`fixture`] when enabled),
//! and `test-sshd` a throwaway OpenSSH server (`remote::testing`).
//!
//! With `default-features = false` the family is the core plus the local host: no russh, no
//! sqlx, no CEL.
//!
//! # Example
//!
//! A custom command, planned and run on this machine:
//!
//! ```
//! use std::sync::Arc;
//! use deployer::{Command, CommandError, CommandRegistry, ExecContext, Executor, Outcome, Plan,
//!     TaskArgs, Tasklist, ValidationErrors};
//!
//! #[derive(Debug, serde::Deserialize)]
//! struct Hello {
//!     name: String,
//! }
//!
//! #[deployer::async_trait]
//! impl Command for Hello {
//!     fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
//!         args.parse()
//!     }
//!     async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
//!         let line = deployer::ShellCommand::new("echo").arg("hello").arg(&self.name);
//!         ctx.run_checked(&line.build().map_err(|e| CommandError::failed(e.to_string()))?)
//!             .await?;
//!         Ok(Outcome::done())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut commands = CommandRegistry::new();
//! commands.register::<Hello>("hello");
//! let tasklist = Tasklist::from_json_str(
//!     r#"{"name": "greet", "stages": [{"name": "Greet", "concurrency": 1, "tasks": [
//!         {"command": "hello", "name": "world"}]}]}"#,
//! )
//! .unwrap();
//! let plan = Plan::build(&tasklist, &commands).unwrap();
//! let connector = Arc::new(deployer::remote::LocalConnector::new());
//! let report = Executor::new(connector).run(&plan).await;
//! assert!(report.succeeded());
//! # });
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use deployer_core::*;

/// Hosts: this machine, and hosts over SSH with the `ssh` feature (`deployer-remote`).
pub use deployer_remote as remote;

/// The standard command set (`deployer-commands`).
#[cfg(feature = "commands")]
#[cfg_attr(docsrs, doc(cfg(feature = "commands")))]
pub use deployer_commands as commands;

/// Run stores on SQLite and PostgreSQL (`deployer-store`).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "sqlite", feature = "postgres"))))]
pub use deployer_store as store;

/// What a person sees: progress, recap, JSON lines, DOT, log lines (`deployer-report`).
#[cfg(feature = "report")]
#[cfg_attr(docsrs, doc(cfg(feature = "report")))]
pub use deployer_report as report;

/// The release generator (`deployer-release`).
#[cfg(feature = "release")]
#[cfg_attr(docsrs, doc(cfg(feature = "release")))]
pub use deployer_release as release;

/// Versioned, composable playbooks (`deployer-books`).
#[cfg(feature = "books")]
#[cfg_attr(docsrs, doc(cfg(feature = "books")))]
pub use deployer_books as books;

/// The object model: projects, deployments, roles, monitors, scopes (`deployer-catalog`).
#[cfg(feature = "catalog")]
#[cfg_attr(docsrs, doc(cfg(feature = "catalog")))]
pub use deployer_catalog as catalog;

/// The run viewer in the browser: an axum router over a run store (`deployer-web`).
#[cfg(feature = "web")]
#[cfg_attr(docsrs, doc(cfg(feature = "web")))]
pub use deployer_web as web;
