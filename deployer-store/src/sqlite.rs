//! The SQLite store: one file, WAL, created on first use.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer_core::StoreError;
use sqlx::Connection as _;
use sqlx::migrate::MigrateError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::errors::{backend, migrate};
use crate::watch::Watch;

/// A [`RunStore`](deployer_core::RunStore) in one SQLite file: the embedded default, for a
/// controller on one machine (several processes on that machine may share the file).
///
/// The file and its parent directory are created on first use; the database runs in WAL mode
/// and its schema is migrated when the store opens. Cloning is cheap and shares the pool.
///
/// [`changes`](deployer_core::RunStore::changes) wakes after this store's writes at once and
/// after any other connection's (another `SqliteStore` on the file, another process) within
/// about 200 ms: a watcher task, started with the first feed on the caller's tokio runtime,
/// polls `PRAGMA data_version` on a connection of its own and stops when no feed is left or
/// the store is closed or dropped.
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
    /// How the watcher connects; `None` for a database in memory (only this store writes it).
    options: Option<SqliteConnectOptions>,
    watch: Arc<Watch>,
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
            .busy_timeout(BUSY_TIMEOUT);
        // Processes opening a new file at once can find it locked while another one sets it
        // up: switching to WAL takes an exclusive lock, and SQLite answers "database is
        // locked" at once, without waiting, where waiting could deadlock. Such an open is tried
        // again (backing off, up to the busy timeout); any other failure is final.
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_millis(2);
        loop {
            let result = match SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => Self::migrated(pool, location.clone(), Some(options.clone())).await,
                Err(e) => {
                    let was_busy = busy(&e);
                    Err((
                        backend(format!("open SQLite database {location}"), e),
                        was_busy,
                    ))
                }
            };
            match result {
                Ok(store) => return Ok(store),
                Err((_, true)) if Instant::now() < deadline => {
                    // A little jitter, so processes that collided do not collide again.
                    let jitter = Duration::from_micros(u64::from(std::process::id() % 997));
                    tokio::time::sleep(pause + jitter).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err((e, _)) => return Err(e),
            }
        }
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
        Self::migrated(pool, ":memory:".to_string(), None)
            .await
            .map_err(|(e, _)| e)
    }

    /// Migrates under the database's write lock. Processes opening a new file at once would
    /// otherwise all find it empty and all create the tables, and all but one fail ("table runs
    /// already exists"): the migrator runs inside a `BEGIN IMMEDIATE` transaction, which takes
    /// the write lock first (waiting up to the busy timeout), so the next process to get it
    /// sees what the first applied and has nothing left to do. A failure says whether the
    /// database was busy (worth trying again).
    async fn migrated(
        pool: SqlitePool,
        location: String,
        options: Option<SqliteConnectOptions>,
    ) -> Result<SqliteStore, (StoreError, bool)> {
        let doing = format!("migrate SQLite database {location}");
        let mut conn = pool.acquire().await.map_err(|e| {
            let was_busy = busy(&e);
            (backend(&doing, e), was_busy)
        })?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(|e| {
            let was_busy = busy(&e);
            let lock = format!("lock SQLite database {location} to migrate it");
            (backend(lock, e), was_busy)
        })?;
        // sqlx applies each migration in a savepoint of this transaction.
        crate::sql::migrator().run(&mut *tx).await.map_err(|e| {
            let was_busy = match &e {
                MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => busy(e),
                _ => false,
            };
            (migrate(&doing, e), was_busy)
        })?;
        tx.commit().await.map_err(|e| {
            let was_busy = busy(&e);
            (backend(format!("commit: {doing}"), e), was_busy)
        })?;
        drop(conn);
        Ok(SqliteStore {
            pool,
            location,
            options,
            watch: Watch::new(),
        })
    }

    /// Where the database is: its file, or `:memory:`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Closes every connection (waiting for calls in flight); later calls fail. A change
    /// watcher closes its connection within about 200 ms; feeds then tick every second.
    pub async fn close(&self) {
        self.watch.close();
        self.pool.close().await;
    }

    /// Tells this store's change feeds that it wrote.
    fn wrote(&self) {
        self.watch.notify();
    }

    /// A change feed: see [`SqliteStore`].
    fn feed(&self) -> deployer_core::ChangeFeed {
        let start = self.options.clone().map(|options| {
            let location = self.location.clone();
            move |runtime: &tokio::runtime::Handle, watcher| {
                runtime.spawn(crate::watch::watch_sqlite(options, location, watcher));
            }
        });
        self.watch.subscribe(start)
    }
}

/// How long a call waits for another connection's lock (SQLite's busy timeout), and how long
/// opening keeps trying while the database is busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `e` is SQLite's "database is locked" or "table is locked" (SQLITE_BUSY,
/// SQLITE_LOCKED and their extended codes): another connection holds a lock; trying again
/// later may succeed.
fn busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

impl SqliteStore {
    /// SQLite stays single-controller: no run is ever submitted to workers.
    async fn submitted_work_status(
        &self,
        _run: &deployer_core::RunId,
    ) -> Result<Option<deployer_core::WorkStatus>, StoreError> {
        Ok(None)
    }
}

impl_run_store!(
    SqliteStore,
    db: sqlx::Sqlite,
    begin: "BEGIN IMMEDIATE",
    now: "$4",
    server_clock: false,
    instr: "instr",
    pg_notify: false
);
