//! Who may do what: the one access matrix of the catalog.
//!
//! Every check of the API goes through [`CatalogData::may`], which derives from one rule, the
//! user's [effective role](CatalogData::effective_role) on the object (see the crate docs'
//! [access matrix](crate#access)).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::data::{CatalogData, Target};
use super::error::CatalogError;
use super::hierarchy::{DeploymentGroup, Project};

/// A user's role in a project (or, as an override, on a deployment group or a deployment).
///
/// Roles are ordered: `user < developer < admin`. Which [`Action`]s each allows is
/// [`Action::min_role`]; the whole matrix is in the crate docs ([access](crate#access)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-only access.
    User,
    /// Edits deployments, triggers their lifecycle actions and approves their manual steps.
    Developer,
    /// Everything in the project.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::User, Role::Developer, Role::Admin];

    /// Whether this role allows `action` on an object of a project (catalog-level actions,
    /// [`Action::ManageCatalog`], are the catalog admins' whatever their role).
    ///
    /// ```
    /// use deployer_catalog::{Action, Role};
    ///
    /// assert!(Role::Developer.allows(Action::Approve));
    /// assert!(!Role::User.allows(Action::Trigger));
    /// assert!(!Role::Admin.allows(Action::ManageCatalog));
    /// ```
    pub fn allows(self, action: Action) -> bool {
        action.min_role().is_some_and(|min| self >= min)
    }

    /// Every role `held` implies, weakest first, by name — what an approval check is given as
    /// the approver's roles (`None`: no role, an empty list).
    ///
    /// ```
    /// use deployer_catalog::Role;
    ///
    /// assert_eq!(Role::names_held(Some(Role::Developer)), ["user", "developer"]);
    /// assert!(Role::names_held(None).is_empty());
    /// ```
    pub fn names_held(held: Option<Role>) -> Vec<String> {
        Role::ALL
            .into_iter()
            .filter(|r| held.is_some_and(|h| *r <= h))
            .map(|r| r.as_str().to_string())
            .collect()
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

/// What a user does to an object; [`CatalogData::may`] says whether they may.
///
/// | action | needs (effective role on the object) | API |
/// |---|---|---|
/// | [`View`](Action::View) | any role on it or on something inside it | `projects`, `project`, `monitor_status`, `role_of` |
/// | [`Scope`](Action::Scope) | user | `scope` |
/// | [`Trigger`](Action::Trigger) | developer | `trigger`, `datasource_secret` |
/// | [`Approve`](Action::Approve) | developer | [`Catalog::may`](crate::Catalog::may) (a job's manual step) |
/// | [`Edit`](Action::Edit) | developer | deployments, monitors, cluster links, group defaults |
/// | [`Publish`](Action::Publish) | developer on the repository's project, and trigger on every subscriber | `publish_image` |
/// | [`Administer`](Action::Administer) | admin | users and overrides, groups, project datasources and repositories |
/// | [`ManageCatalog`](Action::ManageCatalog) | catalog admin | projects, shared clusters, repositories, datasources, import, export |
///
/// ```
/// use deployer_catalog::{Action, Role};
///
/// assert_eq!(Action::Approve.min_role(), Some(Role::Developer));
/// assert_eq!(Action::Scope.min_role(), Some(Role::User));
/// assert_eq!(Action::ManageCatalog.min_role(), None, "catalog admins only");
/// assert_eq!(Action::Approve.to_string(), "approve");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// See the object: listed by `show`, read with [`Catalog::project`](crate::Catalog::project),
    /// its monitors' states.
    View,
    /// Read a deployment's [`Scope`](crate::Scope) (what books see; secrets stay `***`).
    Scope,
    /// Trigger a deployment's lifecycle actions; get a datasource secret for a step.
    Trigger,
    /// Approve (or refuse) a manual step of a job running for a deployment.
    Approve,
    /// Create, change and remove deployments, their monitors and cluster links, and a group's
    /// defaults.
    Edit,
    /// Publish a version of an image of a repository (which deploys its subscribers).
    Publish,
    /// Change the project: its users and role overrides, groups, datasources, repositories.
    Administer,
    /// Create projects and shared objects (clusters, repositories, datasources), change cluster
    /// states, import and export the whole catalog.
    ManageCatalog,
}

/// The former name of [`Action`], kept for existing callers.
pub type Permission = Action;

#[allow(non_upper_case_globals)]
impl Action {
    /// The former name of [`Action::Edit`].
    pub const ManageDeployments: Action = Action::Edit;
    /// The former name of [`Action::Trigger`].
    pub const TriggerActions: Action = Action::Trigger;
    /// The former name of [`Action::Administer`].
    pub const ManageProject: Action = Action::Administer;
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 8] = [
        Action::View,
        Action::Scope,
        Action::Trigger,
        Action::Approve,
        Action::Edit,
        Action::Publish,
        Action::Administer,
        Action::ManageCatalog,
    ];

    /// The weakest effective role that allows it; `None` for [`Action::ManageCatalog`], which
    /// only catalog admins may do.
    pub fn min_role(self) -> Option<Role> {
        match self {
            Action::View | Action::Scope => Some(Role::User),
            Action::Trigger | Action::Approve | Action::Edit | Action::Publish => {
                Some(Role::Developer)
            }
            Action::Administer => Some(Role::Admin),
            Action::ManageCatalog => None,
        }
    }

    /// A phrase that reads after "may not" (and before the object, if any).
    pub fn describe(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::Scope => "read the scope of",
            Action::Trigger => "trigger actions on",
            Action::Approve => "approve manual steps on",
            Action::Edit => "manage deployments on",
            Action::Publish => "publish images of",
            Action::Administer => "manage the project on",
            Action::ManageCatalog => "manage the catalog (projects and shared objects)",
        }
    }

    /// The name used in tables and on command lines (`view`, `scope`, `trigger`…).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::Scope => "scope",
            Action::Trigger => "trigger",
            Action::Approve => "approve",
            Action::Edit => "edit",
            Action::Publish => "publish",
            Action::Administer => "administer",
            Action::ManageCatalog => "manage_catalog",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
fn role_in(members: &[Member], user: &str) -> Option<Role> {
    members.iter().find(|m| m.user == user).map(|m| m.role)
}

impl CatalogData {
    /// Whether `user` is one of the catalog's `admins`.
    pub fn is_catalog_admin(&self, user: &str) -> bool {
        self.admins.iter().any(|a| a == user)
    }

    /// The effective role of `user` on `target`, from the one precedence rule:
    ///
    /// 1. catalog admins: admin on everything;
    /// 2. the project's owner: admin on the project and everything in it;
    /// 3. otherwise the most specific grant: deployment override > group override > project
    ///    role > none.
    ///
    /// A repository reserved to a project has the project's role; the catalog itself and a
    /// shared repository have none but the catalog admins'. An object that does not exist
    /// has none.
    ///
    /// ```
    /// use deployer_catalog::{CatalogData, Role, Target};
    ///
    /// let data = CatalogData::from_yaml_str(r#"
    /// projects:
    /// - slug: shop
    ///   owner: alice
    ///   users: [{user: dave, role: developer}]
    ///   groups:
    ///   - slug: web
    ///     group_type: odoo
    ///     users: [{user: carol, role: developer}]
    ///     deployments: [{slug: prod, users: [{user: dave, role: user}]}]
    /// "#, "catalog.yaml").unwrap();
    /// let prod = Target::Deployment("shop/prod".parse().unwrap());
    /// let shop = Target::Project("shop".parse().unwrap());
    /// assert_eq!(data.effective_role("dave", &prod), Some(Role::User));
    /// assert_eq!(data.effective_role("carol", &prod), Some(Role::Developer));
    /// assert_eq!(data.effective_role("carol", &shop), None);
    /// assert_eq!(data.effective_role("alice", &prod), Some(Role::Admin));
    /// assert_eq!(data.effective_role("mallory", &prod), None);
    /// ```
    pub fn effective_role(&self, user: &str, target: &Target) -> Option<Role> {
        if self.is_catalog_admin(user) {
            return Some(Role::Admin);
        }
        let owner = |p: &Project| (p.owner == user).then_some(Role::Admin);
        match target {
            Target::Catalog => None,
            Target::Project(p) => {
                let project = self.project(p.as_str()).ok()?;
                owner(project).or_else(|| role_in(&project.users, user))
            }
            Target::Group(p, g) => {
                let project = self.project(p.as_str()).ok()?;
                let group = project.groups.iter().find(|x| &x.slug == g)?;
                owner(project)
                    .or_else(|| role_in(&group.users, user))
                    .or_else(|| role_in(&project.users, user))
            }
            Target::Deployment(r) => {
                let (project, group, deployment) = self.deployment(r).ok()?;
                owner(project)
                    .or_else(|| role_in(&deployment.users, user))
                    .or_else(|| role_in(&group.users, user))
                    .or_else(|| role_in(&project.users, user))
            }
            Target::Repository(r) => {
                let project = self.repository(r.as_str()).ok()?.project.clone()?;
                self.effective_role(user, &Target::Project(project))
            }
        }
    }

    /// The former name of [`effective_role`](Self::effective_role).
    pub fn role_of(&self, user: &str, target: &Target) -> Option<Role> {
        self.effective_role(user, target)
    }

    /// Whether `user` may do `action` on `target`: their [effective
    /// role](Self::effective_role) there allows it ([`Action::min_role`]), or they are a
    /// catalog admin. [`Action::View`] also allows a project or group to a user who has a role
    /// on something inside it (carol, with only a group override, sees the project so she can
    /// reach her group; [`visible_project`](Self::visible_project) shows her only that
    /// group). Anybody who may do anything to an object may view it.
    ///
    /// ```
    /// use deployer_catalog::{Action, CatalogData, Target};
    ///
    /// let data = CatalogData::from_yaml_str(r#"
    /// projects:
    /// - slug: shop
    ///   owner: alice
    ///   groups:
    ///   - {slug: web, group_type: odoo, users: [{user: carol, role: developer}], deployments: [{slug: prod}]}
    ///   - {slug: db, group_type: pgo, deployments: [{slug: main}]}
    /// "#, "catalog.yaml").unwrap();
    /// let target = |s: &str| Target::Deployment(s.parse().unwrap());
    /// let shop = Target::Project("shop".parse().unwrap());
    /// assert!(data.may("carol", Action::View, &shop));
    /// assert!(!data.may("carol", Action::Administer, &shop));
    /// assert!(data.may("carol", Action::Approve, &target("shop/prod")));
    /// assert!(!data.may("carol", Action::View, &target("shop/main")));
    /// assert!(!data.may("mallory", Action::View, &shop));
    /// ```
    pub fn may(&self, user: &str, action: Action, target: &Target) -> bool {
        if self.is_catalog_admin(user) {
            return self.exists(target);
        }
        if catalog_level(self, target) {
            return false;
        }
        let allowed = self
            .effective_role(user, target)
            .is_some_and(|role| role.allows(action));
        allowed || (action == Action::View && self.has_role_inside(user, target))
    }

    /// Whether `target` exists.
    fn exists(&self, target: &Target) -> bool {
        match target {
            Target::Catalog => true,
            Target::Project(p) => self.project(p.as_str()).is_ok(),
            Target::Group(p, g) => self.group(p.as_str(), g.as_str()).is_ok(),
            Target::Deployment(r) => self.deployment(r).is_ok(),
            Target::Repository(r) => self.repository(r.as_str()).is_ok(),
        }
    }

    /// Whether `user` has a role on a group or deployment inside `target`.
    fn has_role_inside(&self, user: &str, target: &Target) -> bool {
        let in_group = |project: &Project, group: &DeploymentGroup| {
            group.deployments.iter().any(|d| {
                let r = crate::DeploymentRef::new(project.slug.clone(), d.slug.clone());
                self.effective_role(user, &Target::Deployment(r)).is_some()
            })
        };
        match target {
            Target::Project(p) => self.project(p.as_str()).is_ok_and(|project| {
                project.groups.iter().any(|g| {
                    let t = Target::Group(project.slug.clone(), g.slug.clone());
                    self.effective_role(user, &t).is_some() || in_group(project, g)
                })
            }),
            Target::Group(p, g) => self
                .project(p.as_str())
                .ok()
                .and_then(|project| {
                    let group = project.groups.iter().find(|x| &x.slug == g)?;
                    Some(in_group(project, group))
                })
                .unwrap_or(false),
            Target::Repository(r) => match self.repository(r.as_str()) {
                Ok(repo) => repo
                    .project
                    .as_ref()
                    .is_some_and(|p| self.has_role_inside(user, &Target::Project(p.clone()))),
                Err(_) => false,
            },
            Target::Catalog | Target::Deployment(_) => false,
        }
    }

    /// Whether `user` may do `action` on `target`; the error names the user, the action, the
    /// target, their effective role there and the roles that would do.
    pub fn check(&self, user: &str, action: Action, target: &Target) -> Result<(), CatalogError> {
        if self.may(user, action, target) {
            return Ok(());
        }
        Err(CatalogError::Forbidden {
            user: user.to_string(),
            permission: action,
            target: target.to_string(),
            role: if catalog_level(self, target) {
                None
            } else {
                self.effective_role(user, target)
            },
            catalog_admins_only: action.min_role().is_none() || catalog_level(self, target),
        })
    }

    /// What `user` may see of `project`: all of it when they have a role on the project
    /// (or are its owner or a catalog admin); with only overrides, the project with just the
    /// groups and deployments they have a role on; `None` when they may not view it. Only
    /// project admins (owner and catalog admins included) see every member list; anyone else
    /// sees only their own entries in the `users` lists.
    pub fn visible_project(&self, user: &str, project: &Project) -> Option<Project> {
        let target = Target::Project(project.slug.clone());
        if !self.may(user, Action::View, &target) {
            return None;
        }
        let role = self.effective_role(user, &target);
        if role == Some(Role::Admin) {
            return Some(project.clone());
        }
        // Who holds which role is the project admins' business: anyone else sees only their
        // own entries.
        let mut shown = project.clone();
        shown.users.retain(|m| m.user == user);
        for g in &mut shown.groups {
            g.users.retain(|m| m.user == user);
            for d in &mut g.deployments {
                d.users.retain(|m| m.user == user);
            }
        }
        if role.is_some() {
            return Some(shown);
        }
        shown.groups.retain_mut(|g| {
            g.deployments.retain(|d| {
                let r = crate::DeploymentRef::new(project.slug.clone(), d.slug.clone());
                self.effective_role(user, &Target::Deployment(r)).is_some()
            });
            let t = Target::Group(project.slug.clone(), g.slug.clone());
            self.effective_role(user, &t).is_some() || !g.deployments.is_empty()
        });
        Some(shown)
    }
}

/// Whether `target` belongs to the catalog rather than to a project: the catalog itself and a
/// shared repository, which only catalog admins act on.
fn catalog_level(data: &CatalogData, target: &Target) -> bool {
    match target {
        Target::Catalog => true,
        Target::Repository(r) => data
            .repository(r.as_str())
            .is_ok_and(|repo| repo.project.is_none()),
        _ => false,
    }
}
