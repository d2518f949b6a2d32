//! Project users and roles.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::CatalogError;

/// A user's role in a project (or, as an override, on a deployment group or a deployment).
///
/// | permission | user | developer | admin |
/// |---|---|---|---|
/// | [`View`](Permission::View) | yes | yes | yes |
/// | [`ManageDeployments`](Permission::ManageDeployments) | | yes | yes |
/// | [`TriggerActions`](Permission::TriggerActions) | | yes | yes |
/// | [`ManageProject`](Permission::ManageProject) | | | yes |
/// | [`ManageCatalog`](Permission::ManageCatalog) | | | |
///
/// [`ManageCatalog`](Permission::ManageCatalog) (projects, shared clusters and repositories)
/// belongs to the catalog's `admins` only, who act as admin everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-only access.
    User,
    /// Manages deployments and triggers their lifecycle actions.
    Developer,
    /// Everything in the project.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::User, Role::Developer, Role::Admin];

    /// Whether this role grants `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        match permission {
            Permission::View => true,
            Permission::ManageDeployments | Permission::TriggerActions => self >= Role::Developer,
            Permission::ManageProject => self == Role::Admin,
            Permission::ManageCatalog => false,
        }
    }

    /// The spelling in catalog files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| CatalogError::Invalid {
                what: format!("role \"{s}\""),
                message: "expected user, developer or admin".to_string(),
            })
    }
}

/// What an operation needs from the acting user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read the model (projects, groups, deployments, scopes, monitor states).
    View,
    /// Create, change and remove deployments and their monitors.
    ManageDeployments,
    /// Trigger lifecycle actions (deploy, pause, backup…) and publish project images.
    TriggerActions,
    /// Change the project: its users, groups, datasources.
    ManageProject,
    /// Create projects and shared objects (clusters, repositories), change cluster states.
    ManageCatalog,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 5] = [
        Permission::View,
        Permission::ManageDeployments,
        Permission::TriggerActions,
        Permission::ManageProject,
        Permission::ManageCatalog,
    ];

    /// A phrase that reads after "may not".
    pub fn describe(self) -> &'static str {
        match self {
            Permission::View => "view",
            Permission::ManageDeployments => "manage deployments",
            Permission::TriggerActions => "trigger actions",
            Permission::ManageProject => "manage the project",
            Permission::ManageCatalog => "manage the catalog (projects and shared objects)",
        }
    }
}

/// A user's role: in a project, or as an override on a group or a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The user's name.
    pub user: String,
    /// Their role.
    pub role: Role,
}

impl Member {
    /// `user` with `role`.
    pub fn new(user: impl Into<String>, role: Role) -> Member {
        Member {
            user: user.into(),
            role,
        }
    }
}

/// The role of `user` among `members`.
pub(crate) fn role_in(members: &[Member], user: &str) -> Option<Role> {
    members.iter().find(|m| m.user == user).map(|m| m.role)
}
