//! The catalog as one value: every object, validation, lookups, inheritance and roles.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::cluster::Cluster;
use super::datasource::Datasource;
use super::error::CatalogError;
use super::hierarchy::{
    Deployment, DeploymentGroup, DeploymentRef, DeploymentSettings, Project, ScopeConfig,
};
use super::repository::{Image, Repository};
use super::slug::Slug;

/// Every object of the model: catalog admins, projects (with their groups and deployments),
/// and the shared clusters, repositories and datasources. This is also the format of a catalog
/// file (YAML or JSON).
///
/// A value that passed [`validate`](Self::validate) has unique slugs everywhere and no dangling
/// reference; the [`Catalog`](crate::Catalog) API only ever saves validated values.
///
/// ```
/// use deployer_catalog::CatalogData;
///
/// let data = CatalogData::from_yaml_str(
///     r#"
/// admins: [root]
/// projects:
/// - slug: shop
///   owner: alice
///   groups:
///   - slug: web
///     group_type: odoo
///     deployments: [{slug: prod}]
/// "#,
///     "catalog.yaml",
/// )
/// .unwrap();
/// assert_eq!(data.project("shop").unwrap().groups[0].deployments[0].slug, "prod");
///
/// let err = CatalogData::from_yaml_str("projects: [{slug: Shop, owner: a}]", "c.yaml").unwrap_err();
/// assert!(err.to_string().contains("\"Shop\" is not a valid slug"), "{err}");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogData {
    /// Users who may do everything, including creating projects and shared objects.
    #[serde(default)]
    pub admins: Vec<String>,
    /// The projects.
    #[serde(default)]
    pub projects: Vec<Project>,
    /// Shared clusters.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Repositories.
    #[serde(default)]
    pub repositories: Vec<Repository>,
    /// Datasources.
    #[serde(default)]
    pub datasources: Vec<Datasource>,
}

/// What an action acts on, for access checks ([`CatalogData::may`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The catalog as a whole (projects, shared objects).
    Catalog,
    /// A project.
    Project(Slug),
    /// A deployment group: `(project, group)`.
    Group(Slug, Slug),
    /// A deployment.
    Deployment(DeploymentRef),
    /// A repository: one reserved to a project belongs to that project, a shared one to the
    /// catalog (its images are published by catalog admins only).
    Repository(Slug),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Catalog => f.write_str("the catalog"),
            Target::Project(p) => write!(f, "project {p}"),
            Target::Group(p, g) => write!(f, "group {p}/{g}"),
            Target::Deployment(d) => write!(f, "deployment {d}"),
            Target::Repository(r) => write!(f, "repository {r}"),
        }
    }
}

fn names<'a, I: IntoIterator<Item = &'a Slug>>(slugs: I) -> Vec<String> {
    slugs.into_iter().map(ToString::to_string).collect()
}

fn parse_error(origin: &str, e: serde_saphyr::Error) -> CatalogError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    CatalogError::Parse {
        origin: origin.to_string(),
        line,
        column,
        message: e.to_string(),
    }
}

impl CatalogData {
    /// Parses and validates a YAML catalog; `origin` names it in errors.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<CatalogData, CatalogError> {
        let data: Option<CatalogData> =
            serde_saphyr::from_str(text).map_err(|e| parse_error(origin, e))?;
        let data = data.unwrap_or_default();
        data.validate()?;
        Ok(data)
    }

    /// Reads, parses and validates a YAML (or JSON) catalog file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<CatalogData, CatalogError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Invalid {
            what: format!("catalog file {}", path.display()),
            message: format!("cannot read it: {e}"),
        })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    /// Parses and validates a catalog in JSON (as [`to_stored_json`](Self::to_stored_json)
    /// writes it).
    pub fn from_json_str(text: &str, origin: &str) -> Result<CatalogData, CatalogError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let data: CatalogData =
            serde_path_to_error::deserialize(de).map_err(|e| CatalogError::Parse {
                origin: origin.to_string(),
                line: e.inner().line() as u64,
                column: e.inner().column() as u64,
                message: format!("{}: {}", e.path(), e.inner()),
            })?;
        data.validate()?;
        Ok(data)
    }

    /// JSON with secrets in clear, for stores; never log it.
    ///
    /// Serialization shows every [`Secret`](deployer_core::Secret) as `***`; this writes the datasources' connection
    /// strings back in, the only place a catalog holds secrets.
    pub fn to_stored_json(&self) -> String {
        let mut value = serde_json::to_value(self)
            .unwrap_or_else(|e| unreachable!("a catalog always serializes: {e}"));
        if let Some(list) = value
            .get_mut("datasources")
            .and_then(serde_json::Value::as_array_mut)
        {
            for (json, datasource) in list.iter_mut().zip(&self.datasources) {
                if let Some(connection) = &datasource.connection {
                    json["connection"] = serde_json::Value::from(connection.expose());
                }
            }
        }
        value.to_string()
    }

    /// The project `slug`.
    pub fn project(&self, slug: &str) -> Result<&Project, CatalogError> {
        self.projects
            .iter()
            .find(|p| p.slug == slug)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "project",
                name: slug.to_string(),
            })
    }

    pub(crate) fn project_mut(&mut self, slug: &str) -> Result<&mut Project, CatalogError> {
        self.projects
            .iter_mut()
            .find(|p| p.slug == slug)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "project",
                name: slug.to_string(),
            })
    }

    /// The group `group` of project `project`.
    pub fn group(&self, project: &str, group: &str) -> Result<&DeploymentGroup, CatalogError> {
        self.project(project)?
            .groups
            .iter()
            .find(|g| g.slug == group)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "deployment group",
                name: format!("{project}/{group}"),
            })
    }

    pub(crate) fn group_mut(
        &mut self,
        project: &str,
        group: &str,
    ) -> Result<&mut DeploymentGroup, CatalogError> {
        self.project_mut(project)?
            .groups
            .iter_mut()
            .find(|g| g.slug == group)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "deployment group",
                name: format!("{project}/{group}"),
            })
    }

    /// A deployment with its project and group.
    pub fn deployment(
        &self,
        r: &DeploymentRef,
    ) -> Result<(&Project, &DeploymentGroup, &Deployment), CatalogError> {
        let project = self.project(r.project.as_str())?;
        project
            .deployments()
            .find(|(_, d)| d.slug == r.deployment)
            .map(|(g, d)| (project, g, d))
            .ok_or_else(|| CatalogError::NotFound {
                kind: "deployment",
                name: r.to_string(),
            })
    }

    pub(crate) fn deployment_mut(
        &mut self,
        r: &DeploymentRef,
    ) -> Result<&mut Deployment, CatalogError> {
        self.project_mut(r.project.as_str())?
            .groups
            .iter_mut()
            .flat_map(|g| g.deployments.iter_mut())
            .find(|d| d.slug == r.deployment)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "deployment",
                name: r.to_string(),
            })
    }

    /// Every deployment, as references.
    pub fn deployment_refs(&self) -> Vec<DeploymentRef> {
        self.projects
            .iter()
            .flat_map(|p| {
                p.deployments()
                    .map(|(_, d)| DeploymentRef::new(p.slug.clone(), d.slug.clone()))
            })
            .collect()
    }

    /// The cluster whose slug is `slug`.
    pub fn cluster(&self, slug: &str) -> Result<&Cluster, CatalogError> {
        self.clusters
            .iter()
            .find(|c| c.slug().is_ok_and(|s| s == slug))
            .ok_or_else(|| CatalogError::NotFound {
                kind: "cluster",
                name: slug.to_string(),
            })
    }

    pub(crate) fn cluster_mut(&mut self, slug: &str) -> Result<&mut Cluster, CatalogError> {
        self.clusters
            .iter_mut()
            .find(|c| c.slug().is_ok_and(|s| s == slug))
            .ok_or_else(|| CatalogError::NotFound {
                kind: "cluster",
                name: slug.to_string(),
            })
    }

    /// The repository `slug`.
    pub fn repository(&self, slug: &str) -> Result<&Repository, CatalogError> {
        self.repositories
            .iter()
            .find(|r| r.slug == slug)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "repository",
                name: slug.to_string(),
            })
    }

    pub(crate) fn image_mut(
        &mut self,
        repository: &str,
        image: &str,
    ) -> Result<&mut Image, CatalogError> {
        self.repositories
            .iter_mut()
            .find(|r| r.slug == repository)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "repository",
                name: repository.to_string(),
            })?
            .images
            .iter_mut()
            .find(|i| i.slug == image)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "image",
                name: format!("{repository}/{image}"),
            })
    }

    /// The datasource `slug`.
    pub fn datasource(&self, slug: &str) -> Result<&Datasource, CatalogError> {
        self.datasources
            .iter()
            .find(|d| d.slug == slug)
            .ok_or_else(|| CatalogError::NotFound {
                kind: "datasource",
                name: slug.to_string(),
            })
    }

    /// The deployment's settings with everything it does not set taken from its group's
    /// defaults (`values` merged key by key, the deployment's winning).
    pub fn effective_settings(
        group: &DeploymentGroup,
        deployment: &Deployment,
    ) -> DeploymentSettings {
        let own = &deployment.settings;
        let def = &group.defaults;
        let mut values = def.values.clone();
        for (k, v) in &own.values {
            values.insert(k.clone(), v.clone());
        }
        DeploymentSettings {
            deployment_type: own
                .deployment_type
                .clone()
                .or_else(|| def.deployment_type.clone()),
            scope: own.scope.clone().or_else(|| def.scope.clone()),
            branch: own.branch.clone().or_else(|| def.branch.clone()),
            image: own.image.clone().or_else(|| def.image.clone()),
            subscribe_image: own.subscribe_image.or(def.subscribe_image),
            subdomain: own.subdomain.clone().or_else(|| def.subdomain.clone()),
            domain: own.domain.clone().or_else(|| def.domain.clone()),
            books: own.books.or(&def.books),
            values,
        }
    }

    /// The group scope the deployment runs in, if it names one.
    pub fn scope_config<'a>(
        group: &'a DeploymentGroup,
        settings: &DeploymentSettings,
    ) -> Option<&'a ScopeConfig> {
        let slug = settings.scope.as_ref()?;
        group.scopes.iter().find(|s| &s.slug == slug)
    }

    /// The clusters a deployment runs against: its scope's when that names any, else its own
    /// links followed by its group's (each once).
    pub fn deployment_clusters(&self, r: &DeploymentRef) -> Result<Vec<&Cluster>, CatalogError> {
        let (_, group, deployment) = self.deployment(r)?;
        let settings = Self::effective_settings(group, deployment);
        let slugs: Vec<&Slug> = match Self::scope_config(group, &settings) {
            Some(scope) if !scope.clusters.is_empty() => scope.clusters.iter().collect(),
            _ => deployment.clusters.iter().chain(&group.clusters).collect(),
        };
        let mut seen = HashSet::new();
        slugs
            .into_iter()
            .filter(|s| seen.insert(*s))
            .map(|s| self.cluster(s.as_str()))
            .collect()
    }

    /// Checks the whole catalog: unique slugs, namespaces and uids; every reference resolves;
    /// subscriptions have something to deploy. Reports every problem at once.
    pub fn validate(&self) -> Result<(), CatalogError> {
        let mut v = Validator::default();
        v.check(self);
        match v.problems.len() {
            0 => Ok(()),
            1 => Err(v.problems.remove(0)),
            _ => Err(CatalogError::Problems(v.problems)),
        }
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<CatalogError>,
}

impl Validator {
    fn push(&mut self, e: CatalogError) {
        self.problems.push(e);
    }

    fn unique<'a, I>(&mut self, kind: &'static str, within: &str, slugs: I)
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut seen = HashSet::new();
        let mut reported = HashSet::new();
        for s in slugs {
            if !seen.insert(s) && reported.insert(s) {
                self.push(CatalogError::Duplicate {
                    kind,
                    slug: s.to_string(),
                    within: within.to_string(),
                });
            }
        }
    }

    fn invalid(&mut self, what: impl Into<String>, message: impl Into<String>) {
        self.push(CatalogError::Invalid {
            what: what.into(),
            message: message.into(),
        });
    }

    fn dangling(&mut self, from: String, kind: &'static str, target: &str, expected: Vec<String>) {
        self.push(CatalogError::Dangling {
            from,
            kind,
            target: target.to_string(),
            expected,
        });
    }

    fn check(&mut self, data: &CatalogData) {
        let cluster_slugs: BTreeSet<Slug> = data
            .clusters
            .iter()
            .filter_map(|c| match c.slug() {
                Ok(s) => Some(s),
                Err(e) => {
                    self.invalid(format!("cluster \"{}\": name", c.name), e.to_string());
                    None
                }
            })
            .collect();
        let all_cluster_slugs: Vec<Slug> =
            data.clusters.iter().filter_map(|c| c.slug().ok()).collect();
        self.unique(
            "cluster",
            "the catalog",
            all_cluster_slugs.iter().map(Slug::as_str),
        );
        self.unique(
            "cluster uid",
            "the catalog",
            data.clusters.iter().map(|c| c.uid.as_str()),
        );
        for c in &data.clusters {
            if c.uid.trim().is_empty() {
                self.invalid(format!("cluster \"{}\": uid", c.name), "it is empty");
            }
        }
        let project_slugs: Vec<&Slug> = data.projects.iter().map(|p| &p.slug).collect();
        self.unique(
            "project",
            "the catalog",
            project_slugs.iter().map(|s| s.as_str()),
        );
        let ns_names: Vec<String> = data.projects.iter().map(|p| p.namespace.name()).collect();
        self.unique(
            "namespace",
            "the catalog",
            ns_names.iter().map(String::as_str),
        );
        self.unique(
            "repository",
            "the catalog",
            data.repositories.iter().map(|r| r.slug.as_str()),
        );
        self.unique(
            "datasource",
            "the catalog",
            data.datasources.iter().map(|d| d.slug.as_str()),
        );
        for admin in &data.admins {
            if admin.trim().is_empty() {
                self.invalid("admins", "a user name is empty");
            }
        }
        for r in &data.repositories {
            self.unique(
                "image",
                &format!("repository {}", r.slug),
                r.images.iter().map(|i| i.slug.as_str()),
            );
            self.unique(
                "branch",
                &format!("repository {}", r.slug),
                r.branches.iter().map(String::as_str),
            );
            if let Some(p) = &r.project
                && !project_slugs.contains(&p)
            {
                self.dangling(
                    format!("repository {}: project", r.slug),
                    "project",
                    p.as_str(),
                    names(project_slugs.iter().copied()),
                );
            }
        }
        for d in &data.datasources {
            if let Some(p) = &d.project
                && !project_slugs.contains(&p)
            {
                self.dangling(
                    format!("datasource {}: project", d.slug),
                    "project",
                    p.as_str(),
                    names(project_slugs.iter().copied()),
                );
            }
        }
        for p in &data.projects {
            self.project(data, p, &cluster_slugs);
        }
    }

    fn members(&mut self, what: &str, members: &[super::access::Member]) {
        self.unique("user", what, members.iter().map(|m| m.user.as_str()));
        for m in members {
            if m.user.trim().is_empty() {
                self.invalid(format!("{what}: users"), "a user name is empty");
            }
        }
    }

    fn clusters(&mut self, from: String, links: &[Slug], known: &BTreeSet<Slug>) {
        for c in links {
            if !known.contains(c) {
                self.dangling(from.clone(), "cluster", c.as_str(), names(known));
            }
        }
    }

    fn project(&mut self, data: &CatalogData, p: &Project, clusters: &BTreeSet<Slug>) {
        let here = format!("project {}", p.slug);
        if p.owner.trim().is_empty() {
            self.invalid(
                format!("{here}: owner"),
                "it is empty (expected a user name)",
            );
        }
        if p.namespace
            .uid
            .chars()
            .filter(char::is_ascii_hexdigit)
            .count()
            < 16
        {
            self.invalid(
                format!("{here}: namespace.uid"),
                format!(
                    "\"{}\" has fewer than 16 hex digits (expected a UUID)",
                    p.namespace.uid
                ),
            );
        }
        self.members(&here, &p.users);
        self.unique(
            "deployment group",
            &here,
            p.groups.iter().map(|g| g.slug.as_str()),
        );
        self.unique(
            "deployment",
            &here,
            p.deployments().map(|(_, d)| d.slug.as_str()),
        );
        for g in &p.groups {
            let gh = format!("group {}/{}", p.slug, g.slug);
            self.members(&gh, &g.users);
            self.clusters(format!("{gh}: clusters"), &g.clusters, clusters);
            self.unique("scope", &gh, g.scopes.iter().map(|s| s.slug.as_str()));
            for s in &g.scopes {
                let sh = format!("{gh}: scope {}", s.slug);
                self.clusters(format!("{sh}: clusters"), &s.clusters, clusters);
                for ds in s.backup_datasource.iter().chain(&s.datasources) {
                    match data.datasource(ds.as_str()) {
                        Err(_) => self.dangling(
                            format!("{sh}: datasources"),
                            "datasource",
                            ds.as_str(),
                            names(data.datasources.iter().map(|d| &d.slug)),
                        ),
                        Ok(d) => {
                            if d.project.as_ref().is_some_and(|dp| dp != &p.slug) {
                                self.invalid(
                                    format!("{sh}: datasources"),
                                    format!(
                                        "datasource {} is reserved to project {}",
                                        d.slug,
                                        d.project.as_ref().map(Slug::as_str).unwrap_or("")
                                    ),
                                );
                            }
                        }
                    }
                }
                if let Some(b) = &s.backup_datasource
                    && let Ok(d) = data.datasource(b.as_str())
                    && d.usage != super::datasource::DataUsage::RemoteBackup
                {
                    self.invalid(
                        format!("{sh}: backup_datasource"),
                        format!(
                            "datasource {b} has usage {:?}, expected remote_backup",
                            d.usage
                        ),
                    );
                }
            }
            self.settings(data, p, g, &format!("{gh}: defaults"), &g.defaults);
            for d in &g.deployments {
                let dh = format!("deployment {}/{}", p.slug, d.slug);
                self.members(&dh, &d.users);
                self.clusters(format!("{dh}: clusters"), &d.clusters, clusters);
                self.settings(data, p, g, &format!("{dh}: settings"), &d.settings);
                let eff = CatalogData::effective_settings(g, d);
                if eff.subscribe_image == Some(true) {
                    if eff.image.is_none() {
                        self.invalid(
                            format!("{dh}: subscribe_image"),
                            "it subscribes to an image but has none (set settings.image)",
                        );
                    }
                    if eff.books.deploy.is_none() {
                        self.invalid(
                            format!("{dh}: subscribe_image"),
                            "it subscribes to an image but has no deploy book (set books.deploy)",
                        );
                    }
                }
                self.unique("monitor", &dh, d.monitors.iter().map(|m| m.slug.as_str()));
                for m in &d.monitors {
                    if let Err(message) = m.check_thresholds() {
                        self.invalid(format!("{dh}: monitor {}", m.slug), message);
                    }
                }
            }
        }
    }

    fn settings(
        &mut self,
        data: &CatalogData,
        p: &Project,
        g: &DeploymentGroup,
        here: &str,
        s: &DeploymentSettings,
    ) {
        if let Some(scope) = &s.scope
            && !g.scopes.iter().any(|x| &x.slug == scope)
        {
            self.dangling(
                format!("{here}: scope"),
                "scope",
                scope.as_str(),
                names(g.scopes.iter().map(|x| &x.slug)),
            );
        }
        let repo =
            |slug: &Slug, field: &str, v: &mut Validator| match data.repository(slug.as_str()) {
                Err(_) => {
                    v.dangling(
                        format!("{here}: {field}.repository"),
                        "repository",
                        slug.as_str(),
                        names(data.repositories.iter().map(|r| &r.slug)),
                    );
                    None
                }
                Ok(r) => {
                    if r.project.as_ref().is_some_and(|rp| rp != &p.slug) {
                        v.invalid(
                            format!("{here}: {field}.repository"),
                            format!(
                                "repository {} is reserved to project {}",
                                r.slug,
                                r.project.as_ref().map(Slug::as_str).unwrap_or("")
                            ),
                        );
                    }
                    Some(r)
                }
            };
        if let Some(b) = &s.branch
            && let Some(r) = repo(&b.repository, "branch", self)
            && !r.branches.contains(&b.branch)
        {
            self.dangling(
                format!("{here}: branch"),
                "branch",
                &b.branch,
                r.branches.clone(),
            );
        }
        if let Some(i) = &s.image
            && let Some(r) = repo(&i.repository, "image", self)
            && !r.images.iter().any(|x| x.slug == i.image)
        {
            self.dangling(
                format!("{here}: image"),
                "image",
                &format!("{}/{}", i.repository, i.image),
                r.images
                    .iter()
                    .map(|x| format!("{}/{}", r.slug, x.slug))
                    .collect(),
            );
        }
        for action in super::lifecycle::LifecycleAction::ALL {
            if s.books.get(action).is_some_and(|b| b.trim().is_empty()) {
                self.invalid(format!("{here}: books.{action}"), "the book name is empty");
            }
        }
    }
}
