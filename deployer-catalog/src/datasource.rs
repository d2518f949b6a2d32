//! Datasources: buckets and databases.

use serde::{Deserialize, Serialize};

use super::slug::Slug;
use deployer_core::Secret;

/// What kind of store a datasource is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// An S3-compatible bucket.
    S3like,
    /// A PostgreSQL database.
    Postgresql,
    /// A MySQL or MariaDB database.
    Mysql,
}

/// What a datasource is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataUsage {
    /// Where backups go.
    RemoteBackup,
    /// The application's own data.
    Application,
    /// Files the application serves or keeps.
    Storage,
}

/// An external data store: an S3-like bucket or a database connection. The connection string
/// is a [`Secret`]: it shows as `***` in `Debug`, logs and scopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Datasource {
    /// Unique in the catalog.
    pub slug: Slug,
    /// Its kind.
    pub data_type: DataType,
    /// What it is for.
    pub usage: DataUsage,
    /// The only project that may link it, if reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<Slug>,
    /// The bucket name (S3-like).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The service endpoint (S3-like).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region (S3-like).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The connection string or credentials (secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Secret>,
}

impl Datasource {
    /// A datasource with only its kind and usage.
    pub fn new(slug: Slug, data_type: DataType, usage: DataUsage) -> Datasource {
        Datasource {
            slug,
            data_type,
            usage,
            project: None,
            bucket: None,
            endpoint: None,
            region: None,
            connection: None,
        }
    }
}
