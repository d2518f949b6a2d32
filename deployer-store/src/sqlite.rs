//! The SQLite store: one file, WAL, created on first use.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deployer_core::StoreError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::errors::{backend, migrate};

/// A [`RunStore`](deployer_core::RunStore) in one SQLite file: the embedded default, for a
/// controller on one machine (several processes on that machine may share the file).
///
/// The file and its parent directory are created on first use; the database runs in WAL mode
/// and its schema is migrated when the store opens. Cloning is cheap and shares the pool.
///
/// ```
/// use deployer_core::{CommandRegistry, NewRun, Plan, RunState, RunStore, Tasklist};
/// use deployer_store::SqliteStore;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("state/runs.db")).await.unwrap();
/// let plan = Plan::build(&Tasklist::new("empty"), &CommandRegistry::new()).unwrap();
/// let run = store.create_run(NewRun::from_plan(&plan, "test", "me")).await.unwrap();
/// assert_eq!(store.run(&run.id).await.unwrap().state, RunState::Pending);
/// # });
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    location: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when missing, with its parent directory) the database file at `path`,
    /// and migrates it to the current schema.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let location = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::Backend {
                    message: format!("failed to create directory {}", parent.display()),
                    source: Box::new(e),
                })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| backend(format!("open SQLite database {location}"), e))?;
        Self::migrated(pool, location).await
    }

    /// A private database in memory, gone when the store is dropped: for tests and tools that
    /// need no durability. It lives on a single connection (each connection to `:memory:`
    /// would see its own, empty database), so calls are serialized.
    pub async fn memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|e| backend("configure an in-memory SQLite database", e))?
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| backend("open an in-memory SQLite database", e))?;
        Self::migrated(pool, ":memory:".to_string()).await
    }

    async fn migrated(pool: SqlitePool, location: String) -> Result<SqliteStore, StoreError> {
        crate::sql::migrator()
            .run(&pool)
            .await
            .map_err(|e| migrate(format!("migrate SQLite database {location}"), e))?;
        Ok(SqliteStore { pool, location })
    }

    /// Where the database is: its file, or `:memory:`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Closes every connection (waiting for calls in flight); later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl_run_store!(
    SqliteStore,
    db: sqlx::Sqlite,
    begin: "BEGIN IMMEDIATE",
    now: "$4",
    server_clock: false
);
