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
//! A store keeps each run's record (with a full copy of its tasklist and, once asked, the
//! request to cancel it: who and when, the first request standing), per-host state and
//! per-task state (with each task's exit status, stderr tail and the last 64 KiB of its output
//! as the controller redacted it), in three tables (`runs`, `run_hosts`, `run_tasks`), and the
//! approvals of its manual steps (`run_approvals`: the request and its one decision, taken by a
//! single conditional `UPDATE`, so two processes deciding at once cannot both win), whose
//! schema is migrated when the store opens. [`StoreUrl`] and [`open`] pick a backend from a
//! URL, as a CLI's `--store URL` option needs; [`deployer_core::Runs`] drives and resumes runs
//! on top of any store.
//!
//! # What a viewer asks
//!
//! A run viewer (a web page) lists runs, follows one while a controller in another process
//! drives it, and shows a host across runs. The stores answer in the database:
//!
//! * [`find_runs`](deployer_core::RunStore::find_runs) filters by state, starter, name (a
//!   case-sensitive substring: `%` and `_` are plain characters) and creation time, orders
//!   newest first (`created_ts`, then id) and pages with `LIMIT`/`OFFSET` in SQL, reading no
//!   tasklist: each run's host count comes from `run_hosts`' primary key, its task counts from
//!   one `GROUP BY run_id, state, drive` over an index of `run_tasks` for the whole page,
//!   classified as [`TaskCategory::of_record`](deployer_core::TaskCategory::of_record) does.
//!   A page of 50 of 2,000 runs takes a few milliseconds, whatever their tasklists' size. A
//!   run whose row cannot be read is listed in its place as unreadable by a query without
//!   filters; a filtered query leaves out runs in states this version does not know, so its
//!   pages stay full.
//! * [`host_history`](deployer_core::RunStore::host_history) joins `run_hosts` (by an index on
//!   the host) with `runs`, newest first, `LIMIT` in SQL.
//! * [`request_cancel`](deployer_core::RunStore::request_cancel) is one conditional `UPDATE`
//!   (the first request of an unfinished run is stored; a finished run refuses);
//!   [`Runs`](deployer_core::Runs) reads it back about every second while it drives the run.
//! * [`changes`](deployer_core::RunStore::changes) gives a feed that wakes after any write to
//!   a run, by this process or another: the SQLite store wakes its feeds after its own writes
//!   and polls `PRAGMA data_version` every 200 ms on a connection of its own for everyone
//!   else's; the PostgreSQL store's writes send `NOTIFY deployer_runs` (payload: the run's id)
//!   in the statement that changes the run, and its feeds `LISTEN` on a connection of their
//!   own that reconnects when it drops. That watcher starts with the first feed (on the
//!   caller's tokio runtime; without one, the feed ticks every second) and stops when no feed
//!   is left or the store is closed or dropped.
//!
//! # Distributed runs (PostgreSQL)
//!
//! [`PostgresStore`] implements [`WorkQueue`](deployer_core::WorkQueue): a run submitted to it
//! is driven by any number of workers (processes on any machines), each claiming one entry (a
//! task or a chain, on one host) at a time. [`open_work_queue`] opens one from a URL; a SQLite
//! store stays driven by one controller and is refused there ("workers need a PostgreSQL
//! store"). Tables (`0007_work.sql`): `run_work` (a submitted run's commands and stage limits,
//! whether it aborts and why it stopped), `run_entries` (each entry's state — `PENDING`,
//! `CLAIMED`, `DONE`, `FAILED`, `CANCELLED` — its worker, fencing token and lease) and
//! `workers` (heartbeats: the zones and commands of live workers).
//!
//! * A claim is decided under the lock of the run's `run_work` row (`SELECT … FOR UPDATE`),
//!   so claims of one run are serialized and what they count is exact over every worker: the
//!   stage barrier (only the lowest stage with unended entries), the stage's `concurrency`
//!   and `concurrency_per_host`, then the first pending entry of a zone the worker serves
//!   (`ORDER BY entry … FOR UPDATE SKIP LOCKED`) becomes `CLAIMED` with `fence + 1` and a
//!   lease from the server's clock, its host `RUNNING`, and, on the first claim, the run
//!   `RUNNING` (`started_ts`, one drive) — one statement. Runs are tried oldest first; only
//!   runs whose every command the worker has ([`PostgresStore::missing_commands`] lists the
//!   others).
//! * The same transaction sweeps the run's lapsed claims: an idempotent entry is pending again
//!   (its next claim bumps the fence); any other ends `FAILED` and stops the run
//!   ([`WorkStatus::stopped`](deployer_core::WorkStatus): "entry stages\[s\].tasks\[e\] on HOST was
//!   interrupted on worker W and its commands are not idempotent; resume with --force").
//!   Nothing notifies when a lease lapses: workers claim again at least once per lease.
//! * `record_task`, `renew_claim` and `finish_entry` write only while the entry is claimed by
//!   the same worker with the same fence and a live lease (checked in the statement that
//!   writes; `record_task` holds the entry's row `FOR SHARE`), else
//!   [`StoreError::LeaseLost`](deployer_core::StoreError). `record_task` also stores the
//!   worker in `run_tasks.worker`.
//! * `finish_entry` takes the run's lock too: a failure or a cancel makes the run abort;
//!   the end that leaves nothing to run (or, aborting, nothing claimed) finishes the run as
//!   `RunStore::finish_run` does — `FAILED` (a failed or interrupted entry), `CANCELLED` (a
//!   cancel request or a cancelled entry) or `SUCCEEDED` — marks the tasks of entries never
//!   claimed `NOT_RUN` and those entries `CANCELLED`. A run cancelled or stopped with nothing
//!   claimed is finished by the next claim of any worker.
//! * Hosts: `RUNNING` when an entry of theirs is claimed, `FAILED` when one fails or is
//!   interrupted, `DONE` when their last entry ends done; when the run finishes, each gets its
//!   final state as a single controller's recorder decides it (`FAILED` if an entry of it
//!   failed, was interrupted or cancelled, else `DONE` if one ran, else `SKIPPED`).
//! * Every write but `renew_claim` notifies `deployer_runs` (a heartbeat only when the worker
//!   comes alive or changes what it serves), so idle workers and followers wake.
//! * `work_status` counts entries by state and claiming worker, and lists the zones of
//!   pending entries that no worker with a live heartbeat serves (a worker without zones
//!   serves all).
//!
//! Timestamps and durations are stored as microseconds since the Unix epoch (finer parts are
//! dropped; a duration past 292,000 years is stored as that); leases on PostgreSQL use the
//! server's clock. NUL characters in any text (names, hosts, tags, owners, stderr and output
//! tails, errors, who asked to cancel) are stored as U+FFFD, since PostgreSQL text cannot hold them; a tasklist is stored
//! as JSON, exactly. Whatever a plan accepts is stored and reads back on both backends
//! (`tests/`: a seeded property test).
//!
//! A stored run that cannot be read back (a state written by a newer version, a row changed
//! by hand) fails reading that run only, with [`StoreError::Corrupt`](deployer_core::StoreError)
//! naming the run and the column; [`list_runs`](deployer_core::RunStore::list_runs) lists it
//! as [`ListedRun::Unreadable`](deployer_core::ListedRun) in its place. A stored tasklist is
//! read without the limits on values input must meet
//! ([`Tasklist::from_stored_json`](deployer_core::Tasklist::from_stored_json)), so runs
//! recorded before a limit changed still read.
//!
//! Opening is safe from many processes at once: on SQLite the migration runs under the
//! database's write lock (`BEGIN IMMEDIATE`) and an open that finds the new file locked is
//! tried again for up to the busy timeout; on PostgreSQL the migration runs under sqlx's
//! advisory lock.
//! Migrations are append-only (a change is a new file and a bump of [`SCHEMA_VERSION`]):
//!
//! | file | what it adds |
//! |---|---|
//! | `0001_runs.sql` | `runs`, `run_hosts`, `run_tasks` |
//! | `0002_catalog.sql` | `catalog` (the object model) and `monitor_log` |
//! | `0003_drives.sql` | `runs.drives`, `run_tasks.drive`: which attempt of a run did each task |
//! | `0004_monitor_failure.sql` | `monitor_log.failure`: why a check did not pass |
//! | `0005_approvals.sql` | `run_approvals`: approvals of manual steps |
//! | `0006_web.sql` | `run_tasks.output_tail`, `runs.cancel_by`/`cancel_ts`, and the indexes of the viewer's queries (`runs (created_ts, id)`, `run_hosts (host)`, `run_tasks (run_id, state, drive)`) |
//! | `0007_work.sql` | distributed runs: `run_work`, `run_entries` (indexes `(run_id, state, stage, entry)` and `(run_id, stage, host, state)` for the claim), `workers`, `run_tasks.worker` (unused on SQLite) |
//! | `0008_work_rules.sql` | distributed runs hold budgets, `min_hosts_up` and `finally` stages: `run_work.rules`/`opened`/`outcome`, `run_entries.reaches`/`reason`, `run_points`, `run_failed_hosts` (unused on SQLite) |
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
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod watch;
#[cfg(feature = "postgres")]
mod work;
#[cfg(feature = "postgres")]
mod work_resume;

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
pub use url::{DEFAULT_STORE_URL, StoreUrl, open, open_work_queue};
