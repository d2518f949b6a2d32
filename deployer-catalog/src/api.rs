//! The catalog API: every read, change and lifecycle trigger, checked against the acting user.

use std::sync::Arc;
use std::time::SystemTime;

use super::access::{Action, Member, Role};
use super::cluster::{Cluster, ClusterState};
use super::data::{CatalogData, Target};
use super::datasource::Datasource;
use super::error::CatalogError;
use super::hierarchy::{Deployment, DeploymentGroup, DeploymentRef, DeploymentSettings, Project};
use super::lifecycle::{LifecycleAction, LifecycleRequest, Trigger};
use super::monitor::{Monitor, MonitorStatus, monitor_key, monitor_state};
use super::repository::Repository;
use super::scope::Scope;
use super::slug::Slug;
use super::store::{CatalogStore, MemoryCatalog};

/// The object model behind a [`CatalogStore`]: every call names the acting user and is refused
/// with [`CatalogError::Forbidden`] when their effective role does not allow it ([`Catalog::may`];
/// the matrix is in the crate docs, [access](crate#access)).
///
/// A change loads the catalog, applies itself, validates the whole result (nothing invalid is
/// ever saved) and saves it if nobody saved in between, retrying otherwise. Cloning is cheap.
///
/// ```
/// use deployer_catalog::*;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let data = CatalogData::from_yaml_str(
///     r#"
/// projects:
/// - slug: shop
///   owner: alice
///   users: [{user: alice, role: developer}, {user: bob, role: user}]
///   groups:
///   - slug: web
///     group_type: odoo
///     defaults: {books: {deploy: deploy-odoo}}
///     deployments: [{slug: prod}]
/// "#,
///     "catalog.yaml",
/// )
/// .unwrap();
/// let catalog = Catalog::in_memory(data);
/// let prod: DeploymentRef = "shop/prod".parse().unwrap();
///
/// let request = catalog.trigger("alice", &prod, LifecycleAction::Deploy).await.unwrap();
/// assert_eq!(request.book, "deploy-odoo");
///
/// let refused = catalog.trigger("bob", &prod, LifecycleAction::Deploy).await.unwrap_err();
/// assert!(refused.is_forbidden());
/// assert_eq!(
///     refused.to_string(),
///     "user \"bob\" may not trigger actions on deployment shop/prod: \
///      their role there is user (needs role developer or admin)"
/// );
/// # });
/// ```
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn CatalogStore>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// The catalog kept in `store`.
    pub fn new(store: Arc<dyn CatalogStore>) -> Catalog {
        Catalog { store }
    }

    /// A catalog in memory holding `data` (not validated: use [`CatalogData::validate`] or
    /// load it through [`CatalogData::from_yaml_str`]).
    pub fn in_memory(data: CatalogData) -> Catalog {
        Catalog::new(Arc::new(MemoryCatalog::with(data)))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CatalogStore> {
        &self.store
    }

    async fn read(&self) -> Result<CatalogData, CatalogError> {
        Ok(self.store.load_catalog().await?.data)
    }

    /// Replaces the whole catalog (catalog admins of the new catalog only, or anybody while
    /// the stored catalog is empty: that is how a catalog is seeded).
    pub async fn import(&self, actor: &str, data: CatalogData) -> Result<(), CatalogError> {
        data.validate()?;
        self.update(|current| {
            let empty = current.projects.is_empty() && current.admins.is_empty();
            if !empty {
                current.check(actor, Action::ManageCatalog, &Target::Catalog)?;
            }
            *current = data.clone();
            Ok(())
        })
        .await
    }

    /// The whole catalog (catalog admins only).
    pub async fn export(&self, actor: &str) -> Result<CatalogData, CatalogError> {
        let data = self.read().await?;
        data.check(actor, Action::ManageCatalog, &Target::Catalog)?;
        Ok(data)
    }

    /// The projects `actor` may view, each as much as they may see of it
    /// ([`CatalogData::visible_project`]: with only a group or deployment override, just the
    /// groups and deployments they have a role on).
    pub async fn projects(&self, actor: &str) -> Result<Vec<Project>, CatalogError> {
        let data = self.read().await?;
        Ok(data
            .projects
            .iter()
            .filter_map(|p| data.visible_project(actor, p))
            .collect())
    }

    /// One project, as much as `actor` may see of it.
    pub async fn project(&self, actor: &str, project: &Slug) -> Result<Project, CatalogError> {
        let data = self.read().await?;
        let p = data.project(project.as_str())?;
        data.check(actor, Action::View, &Target::Project(project.clone()))?;
        data.visible_project(actor, p)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "project",
                name: project.to_string(),
            })
    }

    /// The scope of a deployment (what books see).
    pub async fn scope(&self, actor: &str, r: &DeploymentRef) -> Result<Scope, CatalogError> {
        let data = self.read().await?;
        let target = Target::Deployment(r.clone());
        check_existing(&data, actor, Action::Scope, &target)?;
        Scope::build(&data, r)
    }

    /// The effective role of `user` on `target` ([`CatalogData::effective_role`]: catalog
    /// admins and the project's owner are admin; otherwise deployment override > group
    /// override > project role > none). A target that does not exist is
    /// [`CatalogError::NotFound`].
    pub async fn effective_role(
        &self,
        user: &str,
        target: &Target,
    ) -> Result<Option<Role>, CatalogError> {
        let data = self.read().await?;
        check_exists(&data, target)?;
        Ok(data.effective_role(user, target))
    }

    /// Whether `user` may do `action` on `target` ([`CatalogData::may`]), the one check
    /// every call of this API goes through. A target that does not exist is
    /// [`CatalogError::NotFound`].
    ///
    /// Who may approve a manual step of a job running for a deployment:
    ///
    /// ```
    /// use deployer_catalog::*;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let data = CatalogData::from_yaml_str(r#"
    /// projects:
    /// - slug: shop
    ///   owner: alice
    ///   users: [{user: bob, role: user}]
    ///   groups:
    ///   - {slug: web, group_type: odoo, users: [{user: carol, role: developer}], deployments: [{slug: prod}]}
    /// "#, "catalog.yaml").unwrap();
    /// let catalog = Catalog::in_memory(data);
    /// let prod = Target::Deployment("shop/prod".parse().unwrap());
    /// assert!(catalog.may("carol", Action::Approve, &prod).await.unwrap());
    /// assert!(catalog.may("alice", Action::Approve, &prod).await.unwrap());
    /// assert!(!catalog.may("bob", Action::Approve, &prod).await.unwrap());
    /// assert_eq!(
    ///     catalog.authorize("bob", Action::Approve, &prod).await.unwrap_err().to_string(),
    ///     "user \"bob\" may not approve manual steps on deployment shop/prod: \
    ///      their role there is user (needs role developer or admin)"
    /// );
    /// # });
    /// ```
    pub async fn may(
        &self,
        user: &str,
        action: Action,
        target: &Target,
    ) -> Result<bool, CatalogError> {
        let data = self.read().await?;
        check_exists(&data, target)?;
        Ok(data.may(user, action, target))
    }

    /// [`may`](Self::may) as a `Result`: [`CatalogError::NotFound`] when the target does not
    /// exist, [`CatalogError::Forbidden`] (naming the user, the action, the target, their role
    /// there and the roles that would do) when they may not.
    pub async fn authorize(
        &self,
        user: &str,
        action: Action,
        target: &Target,
    ) -> Result<(), CatalogError> {
        let data = self.read().await?;
        check_existing(&data, user, action, target)
    }

    /// The effective role of `user` on `target` (readable by anybody who may view it).
    pub async fn role_of(
        &self,
        actor: &str,
        user: &str,
        target: &Target,
    ) -> Result<Option<Role>, CatalogError> {
        let data = self.read().await?;
        if actor != user {
            data.check(actor, Action::View, target)?;
        }
        Ok(data.role_of(user, target))
    }

    /// Adds a project (catalog admins).
    pub async fn create_project(&self, actor: &str, project: Project) -> Result<(), CatalogError> {
        self.update(|data| {
            data.check(actor, Action::ManageCatalog, &Target::Catalog)?;
            data.projects.push(project.clone());
            Ok(())
        })
        .await
    }

    /// Sets (`Some`) or removes (`None`) a user's project role (project admins).
    pub async fn set_project_role(
        &self,
        actor: &str,
        project: &Slug,
        user: &str,
        role: Option<Role>,
    ) -> Result<(), CatalogError> {
        let target = Target::Project(project.clone());
        self.update(|data| {
            check_existing(data, actor, Action::Administer, &target)?;
            let p = data.project_mut(project.as_str())?;
            set_role(&mut p.users, user, role);
            Ok(())
        })
        .await
    }

    /// Adds a deployment group (project admins).
    pub async fn create_group(
        &self,
        actor: &str,
        project: &Slug,
        group: DeploymentGroup,
    ) -> Result<(), CatalogError> {
        let target = Target::Project(project.clone());
        self.update(|data| {
            check_existing(data, actor, Action::Administer, &target)?;
            data.project_mut(project.as_str())?
                .groups
                .push(group.clone());
            Ok(())
        })
        .await
    }

    /// Sets (`Some`) or removes (`None`) a role override on a group (project admins).
    pub async fn set_group_role(
        &self,
        actor: &str,
        project: &Slug,
        group: &Slug,
        user: &str,
        role: Option<Role>,
    ) -> Result<(), CatalogError> {
        let target = Target::Project(project.clone());
        self.update(|data| {
            data.group(project.as_str(), group.as_str())?;
            data.check(actor, Action::Administer, &target)?;
            set_role(
                &mut data.group_mut(project.as_str(), group.as_str())?.users,
                user,
                role,
            );
            Ok(())
        })
        .await
    }

    /// Changes a project with `edit` (project admins): its name, owner, users, groups with their
    /// scopes, defaults, cluster links and deployments. The slug and the namespace cannot
    /// change (remote resources are named after them), and only the owner or a catalog admin
    /// may hand the project to another owner (the owner is admin whatever the roles say).
    pub async fn edit_project(
        &self,
        actor: &str,
        project: &Slug,
        mut edit: impl FnMut(&mut Project),
    ) -> Result<(), CatalogError> {
        let target = Target::Project(project.clone());
        self.update(|data| {
            check_existing(data, actor, Action::Administer, &target)?;
            let catalog_admin = data.is_catalog_admin(actor);
            let p = data.project_mut(project.as_str())?;
            let (slug, namespace, owner) = (p.slug.clone(), p.namespace.clone(), p.owner.clone());
            edit(p);
            if p.slug != slug || p.namespace != namespace {
                return Err(CatalogError::Invalid {
                    what: format!("project {project}"),
                    message: "its slug and namespace cannot change".to_string(),
                });
            }
            if p.owner != owner && actor != owner && !catalog_admin {
                return Err(CatalogError::Invalid {
                    what: format!("project {project}: owner"),
                    message: format!(
                        "user \"{actor}\" may not change it: only the owner ({owner}) or a \
                         catalog admin may"
                    ),
                });
            }
            Ok(())
        })
        .await
    }

    /// Replaces a group's defaults, which its deployments inherit (developers and admins of the
    /// group).
    pub async fn update_group_defaults(
        &self,
        actor: &str,
        project: &Slug,
        group: &Slug,
        defaults: DeploymentSettings,
    ) -> Result<(), CatalogError> {
        let target = Target::Group(project.clone(), group.clone());
        self.update(|data| {
            check_existing(data, actor, Action::Edit, &target)?;
            data.group_mut(project.as_str(), group.as_str())?.defaults = defaults.clone();
            Ok(())
        })
        .await
    }

    /// Adds a deployment to a group (developers and admins of the group).
    pub async fn create_deployment(
        &self,
        actor: &str,
        project: &Slug,
        group: &Slug,
        deployment: Deployment,
    ) -> Result<(), CatalogError> {
        let target = Target::Group(project.clone(), group.clone());
        self.update(|data| {
            check_existing(data, actor, Action::Edit, &target)?;
            data.group_mut(project.as_str(), group.as_str())?
                .deployments
                .push(deployment.clone());
            Ok(())
        })
        .await
    }

    /// Replaces a deployment's own settings (developers and admins of the deployment).
    pub async fn update_deployment(
        &self,
        actor: &str,
        r: &DeploymentRef,
        settings: DeploymentSettings,
    ) -> Result<(), CatalogError> {
        let target = Target::Deployment(r.clone());
        self.update(|data| {
            check_existing(data, actor, Action::Edit, &target)?;
            data.deployment_mut(r)?.settings = settings.clone();
            Ok(())
        })
        .await
    }

    /// Removes a deployment (developers and admins of the deployment).
    pub async fn remove_deployment(
        &self,
        actor: &str,
        r: &DeploymentRef,
    ) -> Result<(), CatalogError> {
        let target = Target::Deployment(r.clone());
        self.update(|data| {
            check_existing(data, actor, Action::Edit, &target)?;
            for g in &mut data.project_mut(r.project.as_str())?.groups {
                g.deployments.retain(|d| d.slug != r.deployment);
            }
            Ok(())
        })
        .await
    }

    /// Sets (`Some`) or removes (`None`) a role override on a deployment (project admins).
    pub async fn set_deployment_role(
        &self,
        actor: &str,
        r: &DeploymentRef,
        user: &str,
        role: Option<Role>,
    ) -> Result<(), CatalogError> {
        let target = Target::Project(r.project.clone());
        self.update(|data| {
            data.deployment(r)?;
            data.check(actor, Action::Administer, &target)?;
            set_role(&mut data.deployment_mut(r)?.users, user, role);
            Ok(())
        })
        .await
    }

    /// Adds a monitor to a deployment (developers and admins of the deployment).
    pub async fn add_monitor(
        &self,
        actor: &str,
        r: &DeploymentRef,
        monitor: Monitor,
    ) -> Result<(), CatalogError> {
        let target = Target::Deployment(r.clone());
        self.update(|data| {
            check_existing(data, actor, Action::Edit, &target)?;
            data.deployment_mut(r)?.monitors.push(monitor.clone());
            Ok(())
        })
        .await
    }

    /// The state of each monitor of a deployment at `now`, from its log.
    pub async fn monitor_status(
        &self,
        actor: &str,
        r: &DeploymentRef,
        now: SystemTime,
    ) -> Result<Vec<MonitorStatus>, CatalogError> {
        let data = self.read().await?;
        let (_, _, deployment) = data.deployment(r)?;
        data.check(actor, Action::View, &Target::Deployment(r.clone()))?;
        let mut out = Vec::new();
        for m in &deployment.monitors {
            let window = m.thresholds.error_after_failures.max(1) as usize;
            let recent = self
                .store
                .monitor_log(&monitor_key(r, &m.slug), window)
                .await?;
            out.push(MonitorStatus {
                deployment: r.clone(),
                monitor: m.slug.clone(),
                state: monitor_state(m, &recent, now),
                last: recent.first().cloned(),
            });
        }
        Ok(out)
    }

    /// Asks for a lifecycle action of a deployment (developers and admins of the deployment):
    /// the request names the book of the deployment's slot for `action` and carries its scope.
    /// Fails when no book fills that slot.
    pub async fn trigger(
        &self,
        actor: &str,
        r: &DeploymentRef,
        action: LifecycleAction,
    ) -> Result<LifecycleRequest, CatalogError> {
        let data = self.read().await?;
        let target = Target::Deployment(r.clone());
        check_existing(&data, actor, Action::Trigger, &target)?;
        request(
            &data,
            r,
            action,
            Trigger::User {
                user: actor.to_string(),
            },
        )
    }

    /// The connection secret of a datasource linked to the deployment's scope, for a step that
    /// must connect (a backup); needs [`Action::Trigger`] on the deployment. The scope
    /// itself only shows `***`.
    pub async fn datasource_secret(
        &self,
        actor: &str,
        r: &DeploymentRef,
        datasource: &Slug,
    ) -> Result<deployer_core::Secret, CatalogError> {
        let data = self.read().await?;
        let target = Target::Deployment(r.clone());
        check_existing(&data, actor, Action::Trigger, &target)?;
        let scope = Scope::build(&data, r)?;
        if !scope
            .datasources
            .iter()
            .any(|d| d.slug == datasource.as_str())
        {
            return Err(CatalogError::Dangling {
                from: format!("deployment {r}: scope datasources"),
                kind: "datasource",
                target: datasource.to_string(),
                expected: scope.datasources.iter().map(|d| d.slug.clone()).collect(),
            });
        }
        data.datasource(datasource.as_str())?
            .connection
            .clone()
            .ok_or_else(|| CatalogError::Invalid {
                what: format!("datasource {datasource}"),
                message: "it has no connection".to_string(),
            })
    }

    /// Adds a shared cluster (catalog admins).
    pub async fn create_cluster(&self, actor: &str, cluster: Cluster) -> Result<(), CatalogError> {
        self.update(|data| {
            data.check(actor, Action::ManageCatalog, &Target::Catalog)?;
            data.clusters.push(cluster.clone());
            Ok(())
        })
        .await
    }

    /// Moves a cluster to `to` (catalog admins); only the next lifecycle state is allowed.
    pub async fn transition_cluster(
        &self,
        actor: &str,
        cluster: &Slug,
        to: ClusterState,
    ) -> Result<(), CatalogError> {
        self.update(|data| {
            data.cluster(cluster.as_str())?;
            data.check(actor, Action::ManageCatalog, &Target::Catalog)?;
            data.cluster_mut(cluster.as_str())?.transition(to)
        })
        .await
    }

    /// Links a cluster to a deployment (developers and admins of the deployment).
    pub async fn link_cluster(
        &self,
        actor: &str,
        r: &DeploymentRef,
        cluster: &Slug,
    ) -> Result<(), CatalogError> {
        let target = Target::Deployment(r.clone());
        self.update(|data| {
            check_existing(data, actor, Action::Edit, &target)?;
            let d = data.deployment_mut(r)?;
            if !d.clusters.contains(cluster) {
                d.clusters.push(cluster.clone());
            }
            Ok(())
        })
        .await
    }

    /// Adds a repository: one reserved to a project by that project's admins, a shared one by
    /// catalog admins.
    pub async fn create_repository(
        &self,
        actor: &str,
        repository: Repository,
    ) -> Result<(), CatalogError> {
        self.update(|data| {
            check_owner(data, actor, repository.project.as_ref())?;
            data.repositories.push(repository.clone());
            Ok(())
        })
        .await
    }

    /// Adds a datasource: one reserved to a project by that project's admins, a shared one by
    /// catalog admins.
    pub async fn create_datasource(
        &self,
        actor: &str,
        datasource: Datasource,
    ) -> Result<(), CatalogError> {
        self.update(|data| {
            check_owner(data, actor, datasource.project.as_ref())?;
            data.datasources.push(datasource.clone());
            Ok(())
        })
        .await
    }

    /// Publishes `version` of an image and returns one deploy request per deployment that
    /// subscribes to it (its own or inherited `image` is this one and `subscribe_image` is
    /// true), in catalog order. Publishing needs [`Action::Publish`] on the repository
    /// (developers and admins of the project it is reserved to, its owner included; catalog
    /// admins only for a shared one) and [`Action::Trigger`] on every subscribed deployment
    /// (publishing deploys them). Publishing the current version again is an error.
    pub async fn publish_image(
        &self,
        actor: &str,
        repository: &Slug,
        image: &Slug,
        version: &str,
    ) -> Result<Vec<LifecycleRequest>, CatalogError> {
        if version.trim().is_empty() {
            return Err(CatalogError::Invalid {
                what: format!("image {repository}/{image}: version"),
                message: "it is empty".to_string(),
            });
        }
        self.update(|data| {
            check_existing(
                data,
                actor,
                Action::Publish,
                &Target::Repository(repository.clone()),
            )?;
            let img = data.image_mut(repository.as_str(), image.as_str())?;
            if img.current() == Some(version) {
                return Err(CatalogError::Invalid {
                    what: format!("image {repository}/{image}"),
                    message: format!("version {version} is already the current version"),
                });
            }
            img.versions.push(version.to_string());
            let mut requests = Vec::new();
            for r in data.deployment_refs() {
                let (_, group, deployment) = data.deployment(&r)?;
                let s = CatalogData::effective_settings(group, deployment);
                let subscribed = s.subscribe_image == Some(true)
                    && s.image
                        .as_ref()
                        .is_some_and(|i| &i.repository == repository && &i.image == image);
                if subscribed {
                    data.check(actor, Action::Trigger, &Target::Deployment(r.clone()))
                        .map_err(|e| match e {
                            CatalogError::Forbidden {
                                user,
                                permission,
                                target,
                                role,
                                catalog_admins_only,
                            } => CatalogError::Forbidden {
                                user,
                                permission,
                                target: format!(
                                    "{target}, which subscribes to {repository}/{image}"
                                ),
                                role,
                                catalog_admins_only,
                            },
                            other => other,
                        })?;
                    requests.push(request(
                        data,
                        &r,
                        LifecycleAction::Deploy,
                        Trigger::ImagePublished {
                            user: actor.to_string(),
                            repository: repository.clone(),
                            image: image.clone(),
                            version: version.to_string(),
                        },
                    )?);
                }
            }
            Ok(requests)
        })
        .await
    }
}

fn set_role(members: &mut Vec<Member>, user: &str, role: Option<Role>) {
    members.retain(|m| m.user != user);
    if let Some(role) = role {
        members.push(Member::new(user, role));
    }
}

fn request(
    data: &CatalogData,
    r: &DeploymentRef,
    action: LifecycleAction,
    triggered_by: Trigger,
) -> Result<LifecycleRequest, CatalogError> {
    let (_, group, deployment) = data.deployment(r)?;
    let settings = CatalogData::effective_settings(group, deployment);
    let book = settings
        .books
        .get(action)
        .ok_or_else(|| CatalogError::Invalid {
            what: format!("deployment {r}"),
            message: format!(
                "no book for action {action} (set books.{action} on the deployment or its group)"
            ),
        })?
        .to_string();
    Ok(LifecycleRequest {
        id: uuid::Uuid::now_v7().to_string(),
        deployment: r.clone(),
        action,
        book,
        triggered_by,
        scope: Scope::build(data, r)?,
        requested_ts: SystemTime::now(),
    })
}

/// Something reserved to a project may be added by that project's admins; a shared one by
/// catalog admins.
fn check_owner(
    data: &CatalogData,
    actor: &str,
    project: Option<&Slug>,
) -> Result<(), CatalogError> {
    match project {
        Some(p) => check_existing(data, actor, Action::Administer, &Target::Project(p.clone())),
        None => data.check(actor, Action::ManageCatalog, &Target::Catalog),
    }
}

/// Checks that `target` exists (else [`CatalogError::NotFound`]) and then that `actor` may do
/// `action` on it (else [`CatalogError::Forbidden`]), in that order.
fn check_existing(
    data: &CatalogData,
    actor: &str,
    action: Action,
    target: &Target,
) -> Result<(), CatalogError> {
    check_exists(data, target)?;
    data.check(actor, action, target)
}

/// [`CatalogError::NotFound`] when `target` does not exist.
fn check_exists(data: &CatalogData, target: &Target) -> Result<(), CatalogError> {
    match target {
        Target::Catalog => {}
        Target::Project(p) => {
            data.project(p.as_str())?;
        }
        Target::Group(p, g) => {
            data.group(p.as_str(), g.as_str())?;
        }
        Target::Deployment(r) => {
            data.deployment(r)?;
        }
        Target::Repository(r) => {
            data.repository(r.as_str())?;
        }
    }
    Ok(())
}
