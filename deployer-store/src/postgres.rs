//! The PostgreSQL store: shared by several controller processes.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deployer_core::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::errors::{backend, migrate};
use crate::url::redact;
use crate::watch::Watch;

/// A [`RunStore`](deployer_core::RunStore) in a PostgreSQL database, shared by several
/// controller processes (on several machines).
///
/// [`claim`](deployer_core::RunStore::claim) is one conditional `UPDATE`, so exactly one
/// controller wins a run; lease times come from the server's clock, so controllers' clocks
/// need not agree. The schema is migrated when the store connects (under PostgreSQL's advisory
/// lock, so controllers starting together do not race). Cloning is cheap and shares the pool.
///
/// Every write that changes a run also sends `NOTIFY deployer_runs` with the run's id (in the
/// same statement, so it is delivered when the write commits);
/// [`changes`](deployer_core::RunStore::changes) feeds wake on those, from any controller: a
/// watcher task, started with the first feed on the caller's tokio runtime, listens on a
/// connection of its own (reconnecting when it drops) and stops when no feed is left or the
/// store is closed or dropped.
///
/// It is also the [`WorkQueue`](deployer_core::WorkQueue) of distributed runs (see the
/// crate documentation, "Distributed runs").
///
/// TLS is not compiled in (to keep the build lean): reach the server over a trusted network,
/// a Unix socket (`postgres:///deployer?host=/run/postgresql`) or a tunnel; `sslmode=require`
/// fails.
///
/// ```no_run
/// use deployer_store::PostgresStore;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = PostgresStore::connect("postgres://deployer:secret@db.internal/deployer")
///     .await
///     .unwrap();
/// // The password never shows in Debug output or error messages.
/// assert!(!format!("{store:?}").contains("secret"));
/// # });
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) pool: PgPool,
    location: String,
    /// How the change watcher connects.
    options: PgConnectOptions,
    watch: Arc<Watch>,
    /// One transaction that takes a run's row lock (a claim, an entry's end) at a time per
    /// store: PostgreSQL serializes them anyway, and so a process that is stopped holds or
    /// waits for that lock in one transaction at most, which `idle_in_transaction_session_timeout`
    /// then ends (`work.rs`), instead of in one per pooled connection, each taking its turn.
    pub(crate) run_lock_turn: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`) with
    /// a pool of up to 8 connections, and migrates it to the current schema.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        Self::connect_with_pool_size(url, 8).await
    }

    /// Like [`connect`](Self::connect), with at most `max_connections` connections.
    pub async fn connect_with_pool_size(
        url: &str,
        max_connections: u32,
    ) -> Result<PostgresStore, StoreError> {
        let location = redact(url);
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Backend {
            message: format!("failed to parse PostgreSQL URL {location}"),
            // The parser's message may quote the URL: keep only its kind.
            source: parse_error(&e).into(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .map_err(|e| backend(format!("connect to PostgreSQL at {location}"), e))?;
        // sqlx's migrator holds a session advisory lock (`pg_advisory_lock`, keyed by the
        // database's name) from before it creates `_sqlx_migrations` until it is done, so
        // controllers connecting to a new database at once wait for each other instead of
        // racing to create the same tables. Said explicitly: without it they fail
        // (`tests/postgres.rs`, 8 processes at once).
        let mut migrator = crate::sql::migrator();
        migrator.set_locking(true);
        migrator
            .run(&pool)
            .await
            .map_err(|e| migrate(format!("migrate PostgreSQL database {location}"), e))?;
        Ok(PostgresStore {
            pool,
            location,
            options,
            watch: Watch::new(),
            run_lock_turn: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Where the database is: its URL without the password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Closes every connection (waiting for calls in flight); later calls fail. A change
    /// watcher closes its connection within about 200 ms; feeds then tick every second.
    pub async fn close(&self) {
        self.watch.close();
        self.pool.close().await;
    }

    /// Tells this store's change feeds that it wrote: nothing to do, its own writes come back
    /// through `LISTEN` like everyone else's (waking the feeds twice per write otherwise).
    fn wrote(&self) {}

    /// A change feed: see [`PostgresStore`].
    fn feed(&self) -> deployer_core::ChangeFeed {
        let options = self.options.clone();
        let location = self.location.clone();
        self.watch
            .subscribe(Some(move |runtime: &tokio::runtime::Handle, watcher| {
                runtime.spawn(crate::watch::watch_postgres(options, location, watcher));
            }))
    }
}

fn parse_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(_) => "invalid connection URL".to_string(),
        other => redact(&other.to_string()),
    }
}

impl_run_store!(
    PostgresStore,
    db: sqlx::Postgres,
    begin: "BEGIN",
    now: "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)",
    server_clock: true,
    instr: "strpos",
    pg_notify: true
);
