//! Errors of this crate, and how backend failures become [`StoreError`]s.

use deployer_core::StoreError;

/// A store URL that [`StoreUrl`](crate::StoreUrl) cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The URL is empty.
    #[error("the store URL is empty")]
    Empty,
    /// The URL names a backend this crate does not have.
    #[error(
        "unsupported store URL scheme \"{scheme}\" (expected sqlite://PATH, a plain path, or postgres://…)"
    )]
    UnsupportedScheme {
        /// The scheme, e.g. `mysql`.
        scheme: String,
    },
    /// The URL names a backend this build of `deployer-store` leaves out.
    #[error("this build has no {backend} store (enable the `{feature}` feature of deployer-store)")]
    NotBuilt {
        /// The backend, e.g. `PostgreSQL`.
        backend: &'static str,
        /// The feature that builds it.
        feature: &'static str,
    },
    /// The URL names a SQLite store where a work queue (workers) needs PostgreSQL.
    #[error(
        "a SQLite store is driven by one controller: workers need a PostgreSQL store (--store postgres://…)"
    )]
    SingleController,
}

/// `StoreError::Backend` for a failed sqlx call; `doing` reads well after "failed to".
pub(crate) fn backend(doing: impl Into<String>, err: sqlx::Error) -> StoreError {
    let doing = doing.into();
    match err {
        // A value that does not decode is bad data, not a backend failure.
        sqlx::Error::ColumnDecode { index, source } => StoreError::Corrupt {
            message: format!("{doing}: column {index}: {source}"),
        },
        other => StoreError::Backend {
            message: format!("failed to {doing}"),
            source: Box::new(other),
        },
    }
}

/// `StoreError::Backend` for a failed migration.
pub(crate) fn migrate(doing: impl Into<String>, err: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Backend {
        message: format!("failed to {}", doing.into()),
        source: Box::new(err),
    }
}

/// `StoreError::Corrupt` with `message`.
pub(crate) fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        message: message.into(),
    }
}
