//! Choosing a backend from a URL.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

#[cfg(feature = "catalog")]
use deployer_catalog::CatalogStore;
use deployer_core::{RunStore, StoreError, WorkQueue};

#[cfg(feature = "postgres")]
use crate::PostgresStore;
#[cfg(feature = "sqlite")]
use crate::SqliteStore;
use crate::errors::UrlError;

/// Where the example CLI keeps runs unless told otherwise.
pub const DEFAULT_STORE_URL: &str = "./.deployer/runs.db";

/// Where runs are kept, as given on a command line (`--store URL`):
///
/// * `sqlite://PATH`, `sqlite:PATH` or a plain path: a [`SqliteStore`] file (`sqlite:///abs/runs.db`
///   is absolute, `sqlite://runs.db` relative);
/// * `sqlite::memory:`: an in-memory [`SqliteStore`];
/// * `postgres://…` or `postgresql://…`: a [`PostgresStore`].
///
/// `Display` and `Debug` never show a password.
///
/// ```
/// use deployer_store::StoreUrl;
///
/// let url: StoreUrl = "postgres://ci:hunter2@db:5432/deployer".parse().unwrap();
/// assert_eq!(url.to_string(), "postgres://ci:***@db:5432/deployer");
/// assert_eq!("runs.db".parse::<StoreUrl>().unwrap(), StoreUrl::Sqlite("runs.db".into()));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A SQLite database in memory.
    SqliteMemory,
    /// A PostgreSQL connection URL.
    Postgres(String),
}

/// The error for a URL whose backend this build does not have.
#[allow(dead_code)]
fn not_built(url: &StoreUrl, backend: &'static str, feature: &'static str) -> StoreError {
    StoreError::Backend {
        message: format!("failed to open the store at {url}"),
        source: Box::new(UrlError::NotBuilt { backend, feature }),
    }
}

/// Opens the backend of `$url` as `$ty`, or fails with [`not_built`].
macro_rules! open_as {
    ($url:expr, $ty:ty) => {{
        let url: &StoreUrl = $url;
        let store: $ty = match url {
            #[cfg(feature = "sqlite")]
            StoreUrl::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
            #[cfg(feature = "sqlite")]
            StoreUrl::SqliteMemory => Arc::new(SqliteStore::memory().await?),
            #[cfg(not(feature = "sqlite"))]
            StoreUrl::Sqlite(_) | StoreUrl::SqliteMemory => {
                return Err(not_built(url, "SQLite", "sqlite"));
            }
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(pg) => Arc::new(PostgresStore::connect(pg).await?),
            #[cfg(not(feature = "postgres"))]
            StoreUrl::Postgres(_) => return Err(not_built(url, "PostgreSQL", "postgres")),
        };
        Ok(store)
    }};
}

impl StoreUrl {
    /// Opens the store (creating or migrating it as needed).
    pub async fn open(&self) -> Result<Arc<dyn RunStore>, StoreError> {
        open_as!(self, Arc<dyn RunStore>)
    }

    /// Opens the store as a `CatalogStore` (the object model lives in the same database as
    /// the runs; feature `catalog`).
    #[cfg(feature = "catalog")]
    #[cfg_attr(docsrs, doc(cfg(feature = "catalog")))]
    pub async fn open_catalog(&self) -> Result<Arc<dyn CatalogStore>, StoreError> {
        open_as!(self, Arc<dyn CatalogStore>)
    }
}

impl StoreUrl {
    /// Opens the store as the work queue of distributed runs: a [`PostgresStore`] (feature
    /// `postgres`). A SQLite store is driven by one controller and fails with
    /// [`UrlError::SingleController`] as the source.
    pub async fn open_work_queue(&self) -> Result<Arc<dyn WorkQueue>, StoreError> {
        match self {
            StoreUrl::Sqlite(_) | StoreUrl::SqliteMemory => Err(StoreError::Backend {
                message: format!("cannot run workers on the store at {self}"),
                source: Box::new(UrlError::SingleController),
            }),
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(pg) => Ok(Arc::new(PostgresStore::connect(pg).await?)),
            #[cfg(not(feature = "postgres"))]
            StoreUrl::Postgres(_) => Err(not_built(self, "PostgreSQL", "postgres")),
        }
    }
}

impl Default for StoreUrl {
    /// `./.deployer/runs.db`.
    fn default() -> Self {
        StoreUrl::Sqlite(PathBuf::from(DEFAULT_STORE_URL))
    }
}

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(UrlError::Empty);
        }
        if s == "sqlite::memory:" || s == "sqlite://:memory:" {
            return Ok(StoreUrl::SqliteMemory);
        }
        if let Some(rest) = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                return Err(UrlError::Empty);
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return match scheme.to_ascii_lowercase().as_str() {
                "postgres" | "postgresql" => Ok(StoreUrl::Postgres(s.to_string())),
                _ => Err(UrlError::UnsupportedScheme {
                    scheme: scheme.to_string(),
                }),
            };
        }
        Ok(StoreUrl::Sqlite(PathBuf::from(s)))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreUrl::SqliteMemory => f.write_str("sqlite::memory:"),
            StoreUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// Opens the store at `url` (see [`StoreUrl`]): the one call a CLI's `--store URL` needs.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = deployer_store::open("sqlite::memory:").await.unwrap();
/// assert!(store.list_runs(10).await.unwrap().is_empty());
/// # });
/// ```
pub async fn open(url: &str) -> Result<Arc<dyn RunStore>, StoreError> {
    let parsed: StoreUrl = url.parse().map_err(|e: UrlError| StoreError::Backend {
        message: format!("failed to open the run store at {}", redact(url)),
        source: Box::new(e),
    })?;
    parsed.open().await
}

/// Opens the catalog store at `url` (see [`StoreUrl`]; feature `catalog`).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = deployer_store::open_catalog("sqlite::memory:").await.unwrap();
/// assert_eq!(store.load_catalog().await.unwrap().revision, 0);
/// # });
/// ```
#[cfg(feature = "catalog")]
#[cfg_attr(docsrs, doc(cfg(feature = "catalog")))]
pub async fn open_catalog(url: &str) -> Result<Arc<dyn CatalogStore>, StoreError> {
    let parsed: StoreUrl = url.parse().map_err(|e: UrlError| StoreError::Backend {
        message: format!("failed to open the catalog store at {}", redact(url)),
        source: Box::new(e),
    })?;
    parsed.open_catalog().await
}

/// Opens the work queue of distributed runs at `url`: a `postgres://…` store (see
/// [`StoreUrl::open_work_queue`]). A SQLite URL fails, saying that workers need PostgreSQL.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let err = deployer_store::open_work_queue("sqlite::memory:").await.err().unwrap();
/// let source = std::error::Error::source(&err).unwrap().to_string();
/// assert!(source.contains("workers need a PostgreSQL store"), "{source}");
/// # });
/// ```
pub async fn open_work_queue(url: &str) -> Result<Arc<dyn WorkQueue>, StoreError> {
    let parsed: StoreUrl = url.parse().map_err(|e: UrlError| StoreError::Backend {
        message: format!("failed to open the work queue at {}", redact(url)),
        source: Box::new(e),
    })?;
    parsed.open_work_queue().await
}

/// `url` with the password of its user info and any `password=` parameter replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let mut out = url.to_string();
    // user:password@ in the authority.
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        let end = out[start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@') {
            let userinfo = &out[start..start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(start + colon + 1..start + at, "***");
            }
        }
    }
    // ?password=… or &password=… in the query.
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_a_backend() {
        let sqlite = |p: &str| StoreUrl::Sqlite(PathBuf::from(p));
        assert_eq!("runs.db".parse(), Ok(sqlite("runs.db")));
        assert_eq!(
            "./.deployer/runs.db".parse(),
            Ok(sqlite("./.deployer/runs.db"))
        );
        assert_eq!(
            "sqlite:///var/lib/d/runs.db".parse(),
            Ok(sqlite("/var/lib/d/runs.db"))
        );
        assert_eq!("sqlite://runs.db".parse(), Ok(sqlite("runs.db")));
        assert_eq!("sqlite:runs.db".parse(), Ok(sqlite("runs.db")));
        assert_eq!("sqlite::memory:".parse(), Ok(StoreUrl::SqliteMemory));
        assert_eq!(
            "postgresql://h/db".parse(),
            Ok(StoreUrl::Postgres("postgresql://h/db".into()))
        );
        assert_eq!(
            "mysql://h/db".parse::<StoreUrl>(),
            Err(UrlError::UnsupportedScheme {
                scheme: "mysql".into()
            })
        );
        assert_eq!("  ".parse::<StoreUrl>(), Err(UrlError::Empty));
        assert_eq!(StoreUrl::default(), sqlite(DEFAULT_STORE_URL));
    }

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://u:p%40ss@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?user=u&password=pw&sslmode=disable",
                "postgres://h/db?user=u&password=***&sslmode=disable",
            ),
            ("postgres://u:a@b@h/db", "postgres://u:***@h/db"),
        ] {
            let parsed: StoreUrl = url.parse().unwrap();
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(format!("{parsed:?}"), format!("StoreUrl({shown})"));
        }
    }
}
