//! What roles a user holds for a run: the [`RoleSource`] trait and its implementations.

use async_trait::async_trait;
use deployer_core::BoxError;

use crate::auth::User;

/// What roles `user` holds for a run, which decides whether they see (and may use) the
/// Approve / Reject and Cancel buttons. `target` is what the run is about where it says (an
/// approval's [`target`](deployer_core::ApprovalRequest::target), a book job's deployment
/// such as `shop/prod`); `None` for a run that names none.
///
/// The answer is every role held, stronger ones including weaker ones
/// (`["user", "developer"]`, see [`roles_held`](crate::roles_held)), or `None` when roles are
/// unknown: then approvals follow [`Approval::check`](deployer_core::Approval::check) (a step
/// with default approvers may be decided by anybody authenticated, one that names a role by
/// nobody) and Cancel is allowed to anybody authenticated, the same rule.
///
/// The default is [`UserRoles`]: the roles the [`Authenticator`](crate::Authenticator) gave.
#[async_trait]
pub trait RoleSource: Send + Sync {
    /// The roles `user` holds on `target`.
    async fn roles(
        &self,
        user: &User,
        target: Option<&str>,
    ) -> Result<Option<Vec<String>>, BoxError>;
}

/// The roles the authenticator gave the user ([`User::roles`]), whatever the run: a users
/// file's `role`, a host application's SSO groups.
///
/// ```
/// use deployer_web::{RoleSource, User, UserRoles};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dave = User::new("dave").with_roles(["user"]);
/// assert_eq!(UserRoles.roles(&dave, Some("shop/prod")).await.unwrap().unwrap(), ["user"]);
/// # });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct UserRoles;

#[async_trait]
impl RoleSource for UserRoles {
    async fn roles(
        &self,
        user: &User,
        _target: Option<&str>,
    ) -> Result<Option<Vec<String>>, BoxError> {
        Ok(user.roles.clone())
    }
}

/// Roles from a catalog (`deployer_catalog::Catalog`): the user's effective role on the
/// deployment a run targets (`shop/prod`), or for a run without a target their catalog-wide
/// role (catalog admins are admin everywhere; anybody else holds none). A user the catalog
/// does not know holds no role (`Some([])`), so they see no button.
///
/// ```
/// use deployer_catalog::{Catalog, CatalogData};
/// use deployer_web::{CatalogRoles, RoleSource, User};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let data = CatalogData::from_yaml_str(r#"
/// admins: [root]
/// projects:
/// - slug: shop
///   owner: alice
///   users: [{user: dave, role: user}]
///   groups: [{slug: web, group_type: odoo, deployments: [{slug: prod}]}]
/// "#, "catalog.yaml").unwrap();
/// let roles = CatalogRoles::new(Catalog::in_memory(data));
/// let dave = User::new("dave");
/// assert_eq!(roles.roles(&dave, Some("shop/prod")).await.unwrap().unwrap(), ["user"]);
/// assert_eq!(roles.roles(&User::new("alice"), Some("shop/prod")).await.unwrap().unwrap().len(), 3);
/// assert!(roles.roles(&dave, None).await.unwrap().unwrap().is_empty());
/// assert_eq!(roles.roles(&User::new("root"), None).await.unwrap().unwrap().len(), 3);
/// # });
/// ```
#[cfg(feature = "catalog")]
#[cfg_attr(docsrs, doc(cfg(feature = "catalog")))]
#[derive(Debug, Clone)]
pub struct CatalogRoles {
    catalog: deployer_catalog::Catalog,
}

#[cfg(feature = "catalog")]
impl CatalogRoles {
    /// Roles from `catalog`.
    pub fn new(catalog: deployer_catalog::Catalog) -> CatalogRoles {
        CatalogRoles { catalog }
    }
}

#[cfg(feature = "catalog")]
#[async_trait]
impl RoleSource for CatalogRoles {
    async fn roles(
        &self,
        user: &User,
        target: Option<&str>,
    ) -> Result<Option<Vec<String>>, BoxError> {
        use deployer_catalog::{DeploymentRef, Role, Target};
        let target = match target {
            Some(t) => {
                let r: DeploymentRef = t
                    .parse()
                    .map_err(|e| format!("the run's target \"{t}\": {e}"))?;
                Target::Deployment(r)
            }
            None => Target::Catalog,
        };
        let role = self
            .catalog
            .role_of(&user.name, &user.name, &target)
            .await?;
        Ok(Some(Role::names_held(role)))
    }
}
