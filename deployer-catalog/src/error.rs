//! Errors of the object model.

use deployer_core::StoreError;

use super::access::{Action, Role};
use super::cluster::ClusterState;

/// Failure of a catalog operation: bad input, a refused actor, or the store.
///
/// Messages name the object and what was expected; nothing is half-applied (a change that
/// fails validation is not saved).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// Text that is not a slug.
    #[error("\"{value}\" is not a valid slug: {reason}")]
    InvalidSlug {
        /// The text.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two objects of one kind with the same slug in the same place.
    #[error("duplicate {kind} \"{slug}\" in {within}")]
    Duplicate {
        /// `project`, `deployment`, `cluster`…
        kind: &'static str,
        /// The repeated slug.
        slug: String,
        /// Where (`the catalog`, `project shop`).
        within: String,
    },
    /// A reference to an object that does not exist.
    #[error("{from} refers to {kind} \"{target}\", which does not exist{}", expected_hint(.expected))]
    Dangling {
        /// The object holding the reference and its field (`deployment shop/prod: scope`).
        from: String,
        /// The kind referred to.
        kind: &'static str,
        /// The missing slug or name.
        target: String,
        /// What exists instead.
        expected: Vec<String>,
    },
    /// An object looked up by an API call does not exist.
    #[error("no {kind} \"{name}\"")]
    NotFound {
        /// Its kind.
        kind: &'static str,
        /// What was asked for.
        name: String,
    },
    /// A cluster state change the lifecycle does not allow.
    #[error(
        "cluster \"{cluster}\" cannot go from {from} to {to} (allowed from {from}: {})",
        allowed_hint(*.from)
    )]
    InvalidTransition {
        /// The cluster.
        cluster: String,
        /// Its current state.
        from: ClusterState,
        /// The state asked for.
        to: ClusterState,
    },
    /// The acting user's role does not allow the operation.
    #[error("{}", forbidden(user, *permission, target, *role, *catalog_admins_only))]
    Forbidden {
        /// The acting user.
        user: String,
        /// The action refused.
        permission: Action,
        /// What it acts on (`deployment shop/prod`).
        target: String,
        /// The user's effective role there, if any.
        role: Option<Role>,
        /// Whether only catalog admins may (a catalog-level action, or a shared object).
        catalog_admins_only: bool,
    },
    /// A value that is well-formed but not acceptable here.
    #[error("{what}: {message}")]
    Invalid {
        /// The object and field.
        what: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Malformed catalog YAML or JSON, or a value of the wrong type.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        /// The file name.
        origin: String,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What is wrong.
        message: String,
    },
    /// Several problems found by validating a whole catalog.
    #[error("{} problems in the catalog:\n  {}", .0.len(), join(.0))]
    Problems(Vec<CatalogError>),
    /// Other writers kept changing the catalog while this change was retried.
    #[error("the catalog kept changing under this update ({attempts} attempts); try again")]
    Conflict {
        /// How many times the change was tried.
        attempts: u32,
    },
    /// The catalog store failed.
    #[error("catalog store")]
    Store(#[from] StoreError),
}

impl CatalogError {
    /// Every single problem (a [`CatalogError::Problems`] unpacked).
    pub fn problems(&self) -> Vec<&CatalogError> {
        match self {
            CatalogError::Problems(all) => all.iter().collect(),
            one => vec![one],
        }
    }

    /// Whether this is a refusal of the acting user.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, CatalogError::Forbidden { .. })
    }
}

fn join(errors: &[CatalogError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

fn expected_hint(expected: &[String]) -> String {
    if expected.is_empty() {
        " (there are none)".to_string()
    } else {
        format!(" (expected one of: {})", expected.join(", "))
    }
}

fn allowed_hint(from: ClusterState) -> String {
    match from.next() {
        Some(next) => next.to_string(),
        None => "nothing, it is final".to_string(),
    }
}

fn forbidden(
    user: &str,
    action: Action,
    target: &str,
    role: Option<Role>,
    catalog_admins_only: bool,
) -> String {
    if action == Action::ManageCatalog {
        return format!(
            "user \"{user}\" may not {}: only catalog admins may",
            action.describe()
        );
    }
    if catalog_admins_only {
        return format!(
            "user \"{user}\" may not {} {target}: it belongs to no project, so only catalog \
             admins may",
            action.describe()
        );
    }
    format!(
        "user \"{user}\" may not {} {target}: {} (needs {})",
        action.describe(),
        role_hint(role),
        needs_hint(action)
    )
}

fn role_hint(role: Option<Role>) -> String {
    match role {
        Some(role) => format!("their role there is {role}"),
        None => "they have no role there".to_string(),
    }
}

fn needs_hint(action: Action) -> String {
    let roles: Vec<String> = Role::ALL
        .iter()
        .filter(|r| r.allows(action))
        .map(ToString::to_string)
        .collect();
    format!("role {}", roles.join(" or "))
}
