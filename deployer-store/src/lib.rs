//! Durable run stores for `deployer`: `SqliteStore` (feature `sqlite`, default: one file, the
//! embedded default) and `PostgresStore` (feature `postgres`: a server shared by several
//! controllers), both implementing [`deployer_core::RunStore`] and, with the `catalog` feature,
//! `deployer_catalog::CatalogStore` (the object model, in table `catalog`, with monitor logs in
//! `monitor_log`).
//!
//! # What this crate does not know
//!
//! SSH and commands: it stores what `deployer-core`'s `Runs` and `deployer-catalog`'s
//! `Catalog` hand it, and passes the same contract suites as their in-memory stores. Every
//! migration is applied whatever the features, so one database serves every build.
//!
//! A store keeps each run's record (with a full copy of its tasklist), per-host state and
//! per-task state, in three tables (`runs`, `run_hosts`, `run_tasks`) whose schema is migrated
//! when the store opens. [`StoreUrl`] and [`open`] pick a backend from a URL, as a CLI's
//! `--store URL` option needs; [`deployer_core::Runs`] drives and resumes runs on top of any
//! store.
//!
//! Timestamps are stored as microseconds since the Unix epoch (finer parts are dropped); leases
//! on PostgreSQL use the server's clock. NUL characters in a task's stderr tail or error are
//! stored as U+FFFD, since PostgreSQL text cannot hold them.
//!
//! ```
//! use std::sync::Arc;
//! use deployer_core::{CommandRegistry, Plan, RunState, Runs, Tasklist};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let url = format!("sqlite://{}", dir.path().join(".deployer/runs.db").display());
//! let runs = Runs::new(deployer_store::open(&url).await.unwrap());
//! let plan = Plan::build(&Tasklist::new("empty"), &CommandRegistry::new()).unwrap();
//! let id = runs.create(&plan, "tasklist:empty.json", "alice").await.unwrap();
//! assert_eq!(runs.store().run(&id).await.unwrap().state, RunState::Pending);
//! # let _: Arc<dyn deployer_core::RunStore> = runs.store().clone();
//! # });
//! ```

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// A build with no backend has only `StoreUrl`; the shared SQL is unused then.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(unused))]

#[macro_use]
mod store_impl;

#[cfg(feature = "catalog")]
mod catalog;
mod errors;
#[cfg(feature = "postgres")]
mod postgres;
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod url;

pub use errors::UrlError;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;
pub use sql::SCHEMA_VERSION;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteStore;
#[cfg(feature = "catalog")]
pub use url::open_catalog;
pub use url::{DEFAULT_STORE_URL, StoreUrl, open};
