//! Project → deployment group → deployment, namespaces, and group scopes.

use std::fmt;
use std::str::FromStr;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::access::Member;
use super::error::CatalogError;
use super::lifecycle::LifecycleAction;
use super::monitor::Monitor;
use super::repository::{BranchRef, ImageRef};
use super::slug::Slug;

/// A project: the top-level unit, with its namespace, users and deployment groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Unique, DNS-safe.
    pub slug: Slug,
    /// Display name (default: the slug).
    #[serde(default)]
    pub name: String,
    /// The user who owns it.
    pub owner: String,
    /// Its namespace (generated when missing).
    #[serde(default)]
    pub namespace: Namespace,
    /// Users and their roles.
    #[serde(default)]
    pub users: Vec<Member>,
    /// Its deployment groups.
    #[serde(default)]
    pub groups: Vec<DeploymentGroup>,
}

impl Project {
    /// A project with a new namespace and no users or groups.
    pub fn new(slug: Slug, owner: impl Into<String>) -> Project {
        Project {
            name: slug.to_string(),
            slug,
            owner: owner.into(),
            namespace: Namespace::new(),
            users: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// With `user` as `role`.
    pub fn member(mut self, member: Member) -> Project {
        self.users.push(member);
        self
    }

    /// With `group`.
    pub fn group(mut self, group: DeploymentGroup) -> Project {
        self.groups.push(group);
        self
    }

    /// Its deployments with their groups.
    pub fn deployments(&self) -> impl Iterator<Item = (&DeploymentGroup, &Deployment)> {
        self.groups
            .iter()
            .flat_map(|g| g.deployments.iter().map(move |d| (g, d)))
    }
}

/// A project's isolation unit: a unique id whose short form prefixes every remote path and
/// resource name built for the project's deployments, so two projects never collide.
///
/// ```
/// use deployer_catalog::Namespace;
///
/// let ns = Namespace::from_uid("0190f3a2-7c1e-7d4b-9a2f-3b5c6d7e8f90");
/// assert_eq!(ns.name(), "ns-9a2f3b5c6d7e8f90");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// The unique id (a UUID).
    pub uid: String,
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace::new()
    }
}

impl Namespace {
    /// A namespace with a new uid (a UUID v7, whose last 16 hex digits are random).
    pub fn new() -> Namespace {
        Namespace {
            uid: uuid::Uuid::now_v7().to_string(),
        }
    }

    /// The namespace with `uid`.
    pub fn from_uid(uid: impl Into<String>) -> Namespace {
        Namespace { uid: uid.into() }
    }

    /// The DNS-safe prefix: `ns-` and the last 16 hex digits of the uid (its random part).
    pub fn name(&self) -> String {
        let hex: String = self
            .uid
            .chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let tail = &hex[hex.len().saturating_sub(16)..];
        format!("ns-{tail}")
    }
}

/// Deployments of one type in a project, with the defaults they inherit, their scopes and the
/// clusters they are linked to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentGroup {
    /// Unique in the project.
    pub slug: Slug,
    /// Display name (default: the slug).
    #[serde(default)]
    pub name: String,
    /// The kind of software (`odoo`, `pgo`); books filter on it.
    pub group_type: String,
    /// Fields every deployment of the group inherits unless it sets them.
    #[serde(default)]
    pub defaults: DeploymentSettings,
    /// The group's scopes (`production`, `staging`), one per deployment environment.
    #[serde(default)]
    pub scopes: Vec<ScopeConfig>,
    /// Clusters linked to the group (slugs).
    #[serde(default)]
    pub clusters: Vec<Slug>,
    /// Role overrides for the group's deployments.
    #[serde(default)]
    pub users: Vec<Member>,
    /// Its deployments.
    #[serde(default)]
    pub deployments: Vec<Deployment>,
}

impl DeploymentGroup {
    /// A group of `group_type` with nothing in it.
    pub fn new(slug: Slug, group_type: impl Into<String>) -> DeploymentGroup {
        DeploymentGroup {
            name: slug.to_string(),
            slug,
            group_type: group_type.into(),
            defaults: DeploymentSettings::default(),
            scopes: Vec::new(),
            clusters: Vec::new(),
            users: Vec::new(),
            deployments: Vec::new(),
        }
    }

    /// With `deployment`.
    pub fn deployment(mut self, deployment: Deployment) -> DeploymentGroup {
        self.deployments.push(deployment);
        self
    }

    /// With a role override.
    pub fn member(mut self, member: Member) -> DeploymentGroup {
        self.users.push(member);
        self
    }
}

/// Settings of one environment of a group (`production`, `staging`), which a deployment picks
/// with its `scope` setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// Unique in the group.
    pub slug: Slug,
    /// Whether this is production.
    #[serde(default)]
    pub production: bool,
    /// How long monitor log entries are kept (default 7 days).
    #[serde(default = "default_monitor_log_seconds")]
    pub monitor_log_delete_after_seconds: u64,
    /// The datasource backups go to (`usage: remote_backup`).
    #[serde(default)]
    pub backup_datasource: Option<Slug>,
    /// Other datasources linked to the scope.
    #[serde(default)]
    pub datasources: Vec<Slug>,
    /// Clusters that replace the group's and deployment's links, when not empty.
    #[serde(default)]
    pub clusters: Vec<Slug>,
    /// Free-form values books can read.
    #[serde(default)]
    pub values: IndexMap<String, serde_json::Value>,
}

/// Seven days.
pub const DEFAULT_MONITOR_LOG_SECONDS: u64 = 7 * 24 * 3600;

fn default_monitor_log_seconds() -> u64 {
    DEFAULT_MONITOR_LOG_SECONDS
}

impl ScopeConfig {
    /// A scope with the defaults.
    pub fn new(slug: Slug) -> ScopeConfig {
        ScopeConfig {
            slug,
            production: false,
            monitor_log_delete_after_seconds: DEFAULT_MONITOR_LOG_SECONDS,
            backup_datasource: None,
            datasources: Vec::new(),
            clusters: Vec::new(),
            values: IndexMap::new(),
        }
    }
}

/// The fields a deployment inherits from its group's `defaults` unless it sets them itself.
/// `None` (or an absent key) means "inherit"; `values` merge key by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSettings {
    /// The kind of deployment (books filter on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_type: Option<String>,
    /// The group scope it runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Slug>,
    /// The branch it tracks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<BranchRef>,
    /// The image it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// Whether a new version of its image re-deploys it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe_image: Option<bool>,
    /// Its subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// Its domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The book per lifecycle action.
    #[serde(default, skip_serializing_if = "BookSlots::is_empty")]
    pub books: BookSlots,
    /// Free-form values books can read.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub values: IndexMap<String, serde_json::Value>,
}

/// The book that runs for each lifecycle action: a book name, or `name@requirement`
/// (`deploy@^1.2`) to pin the versions the books engine may pick.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct BookSlots {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ingress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_scope: Option<String>,
}

impl BookSlots {
    /// The slot of `action`.
    pub fn get(&self, action: LifecycleAction) -> Option<&str> {
        match action {
            LifecycleAction::General => self.general.as_deref(),
            LifecycleAction::Deploy => self.deploy.as_deref(),
            LifecycleAction::Pause => self.pause.as_deref(),
            LifecycleAction::Backup => self.backup.as_deref(),
            LifecycleAction::Restore => self.restore.as_deref(),
            LifecycleAction::SyncIngress => self.sync_ingress.as_deref(),
            LifecycleAction::Upgrade => self.upgrade.as_deref(),
            LifecycleAction::Drop => self.drop.as_deref(),
            LifecycleAction::ConfigScope => self.config_scope.as_deref(),
        }
    }

    /// Sets the slot of `action`.
    pub fn set(&mut self, action: LifecycleAction, book: Option<String>) {
        let slot = match action {
            LifecycleAction::General => &mut self.general,
            LifecycleAction::Deploy => &mut self.deploy,
            LifecycleAction::Pause => &mut self.pause,
            LifecycleAction::Backup => &mut self.backup,
            LifecycleAction::Restore => &mut self.restore,
            LifecycleAction::SyncIngress => &mut self.sync_ingress,
            LifecycleAction::Upgrade => &mut self.upgrade,
            LifecycleAction::Drop => &mut self.drop,
            LifecycleAction::ConfigScope => &mut self.config_scope,
        };
        *slot = book;
    }

    /// Whether no slot is set.
    pub fn is_empty(&self) -> bool {
        LifecycleAction::ALL.iter().all(|a| self.get(*a).is_none())
    }

    /// Each slot set here, else the one of `defaults`.
    pub fn or(&self, defaults: &BookSlots) -> BookSlots {
        let mut out = BookSlots::default();
        for a in LifecycleAction::ALL {
            out.set(a, self.get(a).or(defaults.get(a)).map(str::to_string));
        }
        out
    }
}

/// A running instance in a group: its own settings (over the group's defaults), extra
/// cluster links, role overrides and monitors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Unique in the project.
    pub slug: Slug,
    /// Display name (default: the slug).
    #[serde(default)]
    pub name: String,
    /// What it sets itself; the rest comes from the group's `defaults`.
    #[serde(default)]
    pub settings: DeploymentSettings,
    /// Clusters linked to this deployment besides the group's (slugs).
    #[serde(default)]
    pub clusters: Vec<Slug>,
    /// Role overrides for this deployment.
    #[serde(default)]
    pub users: Vec<Member>,
    /// Its health checks.
    #[serde(default)]
    pub monitors: Vec<Monitor>,
}

impl Deployment {
    /// A deployment that inherits everything.
    pub fn new(slug: Slug) -> Deployment {
        Deployment {
            name: slug.to_string(),
            slug,
            settings: DeploymentSettings::default(),
            clusters: Vec::new(),
            users: Vec::new(),
            monitors: Vec::new(),
        }
    }

    /// With a role override.
    pub fn member(mut self, member: Member) -> Deployment {
        self.users.push(member);
        self
    }

    /// With `settings`.
    pub fn settings(mut self, settings: DeploymentSettings) -> Deployment {
        self.settings = settings;
        self
    }
}

/// Names a deployment: `project/deployment` (deployment slugs are unique in a project).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeploymentRef {
    /// The project.
    pub project: Slug,
    /// The deployment.
    pub deployment: Slug,
}

impl DeploymentRef {
    /// `project/deployment`.
    pub fn new(project: Slug, deployment: Slug) -> DeploymentRef {
        DeploymentRef {
            project,
            deployment,
        }
    }
}

impl fmt::Display for DeploymentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.deployment)
    }
}

impl FromStr for DeploymentRef {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (p, d) = s.split_once('/').ok_or_else(|| CatalogError::Invalid {
            what: format!("deployment \"{s}\""),
            message: "expected PROJECT/DEPLOYMENT".to_string(),
        })?;
        Ok(DeploymentRef::new(Slug::new(p)?, Slug::new(d)?))
    }
}
