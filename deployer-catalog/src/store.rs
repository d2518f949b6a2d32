//! Where the catalog is kept: the `CatalogStore` trait and an in-memory backend.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;

use deployer_core::StoreError;

use super::data::CatalogData;
use super::monitor::MonitorLogEntry;

/// The catalog as stored, with the revision it was saved under.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredCatalog {
    /// Bumped by every save; 0 for a store nothing was saved to.
    pub revision: u64,
    /// The catalog (empty at revision 0).
    pub data: CatalogData,
}

/// Where the object model is kept. Implementations: [`MemoryCatalog`] (here) and the SQLite
/// and PostgreSQL stores of `deployer-store`, which keep the catalog next to their runs.
///
/// The catalog is saved as a whole, under optimistic concurrency: a writer loads it with its
/// revision, changes it, and saves it only if nobody saved in between.
/// [`Catalog`](crate::Catalog) does this (validating before every save) and retries on a
/// conflict; monitor results go to a separate, append-only log per monitor.
///
/// # Contract
///
/// * Every method is atomic: a failure leaves the store as it was.
/// * [`save_catalog`](Self::save_catalog) stores `data` only when the stored revision is still
///   `expected_revision`, atomically also across processes sharing a server backend; it then
///   returns the new revision (`expected_revision + 1`), else `None` and stores nothing.
/// * Stores keep secrets ([`Secret`](crate::Secret) values) as they are and give them back
///   from [`load_catalog`](Self::load_catalog); they never log the catalog.
/// * Timestamps of monitor log entries are kept with at least microsecond precision.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// The stored catalog and its revision (revision 0 and an empty catalog before the first
    /// save).
    async fn load_catalog(&self) -> Result<StoredCatalog, StoreError>;

    /// Saves `data` if the stored revision is `expected_revision`: `Some(new revision)`, or
    /// `None` when another writer saved first.
    async fn save_catalog(
        &self,
        expected_revision: u64,
        data: &CatalogData,
    ) -> Result<Option<u64>, StoreError>;

    /// Appends one result to its monitor's log.
    async fn append_monitor_log(&self, entry: &MonitorLogEntry) -> Result<(), StoreError>;

    /// The newest `limit` results of `monitor`, newest first.
    async fn monitor_log(
        &self,
        monitor: &str,
        limit: usize,
    ) -> Result<Vec<MonitorLogEntry>, StoreError>;

    /// Deletes results of `monitor` older than `before`; returns how many.
    async fn prune_monitor_log(
        &self,
        monitor: &str,
        before: SystemTime,
    ) -> Result<usize, StoreError>;
}

/// A [`CatalogStore`] in memory: for tests and tools that need no durability (the example CLI
/// loads its YAML file into one).
#[derive(Debug, Default)]
pub struct MemoryCatalog {
    catalog: Mutex<StoredCatalog>,
    logs: Mutex<HashMap<String, Vec<MonitorLogEntry>>>,
}

impl MemoryCatalog {
    /// An empty store.
    pub fn new() -> MemoryCatalog {
        MemoryCatalog::default()
    }

    /// A store holding `data` at revision 1 (`data` is not validated here).
    pub fn with(data: CatalogData) -> MemoryCatalog {
        MemoryCatalog {
            catalog: Mutex::new(StoredCatalog { revision: 1, data }),
            logs: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl CatalogStore for MemoryCatalog {
    async fn load_catalog(&self) -> Result<StoredCatalog, StoreError> {
        Ok(lock(&self.catalog).clone())
    }

    async fn save_catalog(
        &self,
        expected_revision: u64,
        data: &CatalogData,
    ) -> Result<Option<u64>, StoreError> {
        let mut stored = lock(&self.catalog);
        if stored.revision != expected_revision {
            return Ok(None);
        }
        stored.revision += 1;
        stored.data = data.clone();
        Ok(Some(stored.revision))
    }

    async fn append_monitor_log(&self, entry: &MonitorLogEntry) -> Result<(), StoreError> {
        lock(&self.logs)
            .entry(entry.monitor.clone())
            .or_default()
            .push(entry.clone());
        Ok(())
    }

    async fn monitor_log(
        &self,
        monitor: &str,
        limit: usize,
    ) -> Result<Vec<MonitorLogEntry>, StoreError> {
        let logs = lock(&self.logs);
        let mut entries = logs.get(monitor).cloned().unwrap_or_default();
        // Stable sort: among equal timestamps, the later append is newer.
        entries.reverse();
        entries.sort_by_key(|e| std::cmp::Reverse(e.ts));
        entries.truncate(limit);
        Ok(entries)
    }

    async fn prune_monitor_log(
        &self,
        monitor: &str,
        before: SystemTime,
    ) -> Result<usize, StoreError> {
        let mut logs = lock(&self.logs);
        let Some(entries) = logs.get_mut(monitor) else {
            return Ok(0);
        };
        let n = entries.len();
        entries.retain(|e| e.ts >= before);
        Ok(n - entries.len())
    }
}
