//! Lifecycle actions and the requests the books engine consumes.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::error::CatalogError;
use super::hierarchy::DeploymentRef;
use super::scope::Scope;
use super::slug::Slug;

/// An action on a deployment; each names a book slot of the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleAction {
    /// The general-purpose book.
    General,
    /// Deploy (also what a subscribed image's new version triggers).
    Deploy,
    /// Pause.
    Pause,
    /// Back up.
    Backup,
    /// Restore.
    Restore,
    /// Synchronize ingress.
    SyncIngress,
    /// Upgrade.
    Upgrade,
    /// Drop.
    Drop,
    /// Apply a scope configuration change.
    ConfigScope,
}

impl LifecycleAction {
    /// Every action.
    pub const ALL: [LifecycleAction; 9] = [
        LifecycleAction::General,
        LifecycleAction::Deploy,
        LifecycleAction::Pause,
        LifecycleAction::Backup,
        LifecycleAction::Restore,
        LifecycleAction::SyncIngress,
        LifecycleAction::Upgrade,
        LifecycleAction::Drop,
        LifecycleAction::ConfigScope,
    ];

    /// The spelling in files and on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleAction::General => "general",
            LifecycleAction::Deploy => "deploy",
            LifecycleAction::Pause => "pause",
            LifecycleAction::Backup => "backup",
            LifecycleAction::Restore => "restore",
            LifecycleAction::SyncIngress => "sync_ingress",
            LifecycleAction::Upgrade => "upgrade",
            LifecycleAction::Drop => "drop",
            LifecycleAction::ConfigScope => "config_scope",
        }
    }
}

impl fmt::Display for LifecycleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LifecycleAction {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| CatalogError::Invalid {
                what: format!("action \"{s}\""),
                message: format!(
                    "expected one of: {}",
                    Self::ALL.map(|a| a.as_str()).join(", ")
                ),
            })
    }
}

/// Why a lifecycle request was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// A user asked for it.
    User {
        /// Who.
        user: String,
    },
    /// A new version of an image the deployment subscribes to was published.
    ImagePublished {
        /// Who published it.
        user: String,
        /// The repository.
        repository: Slug,
        /// The image.
        image: Slug,
        /// The new version.
        version: String,
    },
}

impl Trigger {
    /// The user behind it.
    pub fn user(&self) -> &str {
        match self {
            Trigger::User { user } | Trigger::ImagePublished { user, .. } => user,
        }
    }
}

/// A request to run a lifecycle action of a deployment: what the books engine turns into a
/// job (the book of the deployment's slot for `action`, serialized against `scope`).
///
/// It is a value, not a running job: the catalog checks the acting user and resolves the book
/// and the scope, and hands this to whoever runs books.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleRequest {
    /// A unique id (UUID v7).
    pub id: String,
    /// The deployment.
    pub deployment: DeploymentRef,
    /// The action.
    pub action: LifecycleAction,
    /// The book of the deployment's slot for `action` (inherited from the group if not set).
    pub book: String,
    /// Why.
    pub triggered_by: Trigger,
    /// The deployment's scope when the request was made.
    pub scope: Scope,
    /// When it was made.
    #[serde(with = "unix_micros")]
    pub requested_ts: SystemTime,
}

pub(crate) mod unix_micros {
    //! `SystemTime` as microseconds since the Unix epoch.
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let us = t
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        s.serialize_i64(us)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let us = i64::deserialize(d)?;
        Ok(UNIX_EPOCH + Duration::from_micros(us.max(0).unsigned_abs()))
    }
}
