//! The scope: the JSON view of a deployment that books evaluate expressions against.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::cluster::Cluster;
use super::data::CatalogData;
use super::datasource::Datasource;
use super::error::CatalogError;
use super::hierarchy::{DeploymentRef, Namespace};
use super::lifecycle::LifecycleAction;

/// Everything a book may read about one deployment, resolved: its project, its group, the
/// deployment with inherited fields filled in, its scope settings, clusters and datasources.
///
/// Every key is always present (unset strings are `""`, unset objects `null`, lists may be
/// empty), so an expression such as `deployment.subdomain != ""` never hits a missing key.
/// Secrets show as `"***"`. Serialized, a scope looks like this:
///
/// ```json
/// {
///   "project": {"slug": "shop", "name": "Shop", "owner": "alice",
///               "namespace": "ns-9a2f3b5c6d7e8f90", "namespace_uid": "0190…"},
///   "deployment_group": {"slug": "web", "name": "web", "group_type": "odoo",
///                        "clusters": ["eu-1"]},
///   "deployment": {"slug": "prod", "name": "prod", "ref": "shop/prod", "group": "web",
///                  "project": "shop", "namespace": "ns-9a2f3b5c6d7e8f90",
///                  "deployment_type": "odoo", "scope": "production",
///                  "subdomain": "shop", "domain": "example.com",
///                  "branch": {"repository": "shop-app", "branch": "main",
///                             "url": "https://git.example.com/shop/app.git"},
///                  "image": {"repository": "shop-app", "image": "app",
///                            "name": "registry.example.com/shop/app", "version": "1.4.2"},
///                  "subscribe_image": true,
///                  "books": {"general": "", "deploy": "deploy", "pause": "pause",
///                            "backup": "backup", "restore": "", "sync_ingress": "",
///                            "upgrade": "", "drop": "", "config_scope": ""},
///                  "values": {"workers": 4},
///                  "resource_prefix": "ns-9a2f3b5c6d7e8f90-prod",
///                  "remote_dir": "ns-9a2f3b5c6d7e8f90/prod"},
///   "scope": {"slug": "production", "production": true,
///             "monitor_log_delete_after_seconds": 604800, "backup_datasource": "backups",
///             "datasources": [], "clusters": [], "values": {}},
///   "cluster": {"uid": "…", "name": "EU 1", "slug": "eu-1", "state": "active",
///               "hosts": ["fe001"], "endpoint": ""},
///   "clusters": [{"uid": "…", "name": "EU 1", "slug": "eu-1", "state": "active",
///                 "hosts": ["fe001"], "endpoint": ""}],
///   "datasources": [{"slug": "backups", "data_type": "s3like", "usage": "remote_backup",
///                    "bucket": "shop-backups", "endpoint": "", "region": "",
///                    "connection": "***"}],
///   "backup_datasource": {"slug": "backups", "data_type": "s3like", "usage": "remote_backup",
///                         "bucket": "shop-backups", "endpoint": "", "region": "",
///                         "connection": "***"}
/// }
/// ```
///
/// `cluster` is the first of `clusters` (or `null`); `scope` is `null` when the deployment
/// names no group scope; `datasources` holds the scope's backup datasource and its linked ones.
///
/// ```
/// use deployer_catalog::{CatalogData, DeploymentRef, Scope};
///
/// let data = CatalogData::from_yaml_str(
///     r#"
/// projects:
/// - slug: shop
///   owner: alice
///   namespace: {uid: 0190f3a2-7c1e-7d4b-9a2f-3b5c6d7e8f90}
///   groups:
///   - slug: web
///     group_type: odoo
///     defaults: {subdomain: shop, books: {deploy: deploy}}
///     deployments:
///     - slug: prod
///     - slug: staging
///       settings: {subdomain: ""}
/// "#,
///     "catalog.yaml",
/// )
/// .unwrap();
/// let prod = Scope::build(&data, &"shop/prod".parse().unwrap()).unwrap().to_json();
/// assert_eq!(prod["deployment"]["subdomain"], "shop");
/// assert_eq!(prod["deployment"]["books"]["deploy"], "deploy");
/// assert_eq!(prod["deployment"]["resource_prefix"], "ns-9a2f3b5c6d7e8f90-prod");
/// let staging = Scope::build(&data, &"shop/staging".parse().unwrap()).unwrap().to_json();
/// assert_eq!(staging["deployment"]["subdomain"], "");
/// assert!(staging["cluster"].is_null());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    /// The project.
    pub project: ProjectView,
    /// The deployment's group.
    pub deployment_group: GroupView,
    /// The deployment, inherited fields resolved.
    pub deployment: DeploymentView,
    /// The group scope it runs in.
    pub scope: Option<super::hierarchy::ScopeConfig>,
    /// Its first cluster.
    pub cluster: Option<ClusterView>,
    /// Every cluster it runs against.
    pub clusters: Vec<ClusterView>,
    /// The scope's datasources (backup first).
    pub datasources: Vec<DatasourceView>,
    /// The scope's backup datasource.
    pub backup_datasource: Option<DatasourceView>,
}

/// A project in a [`Scope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ProjectView {
    pub slug: String,
    pub name: String,
    pub owner: String,
    /// [`Namespace::name`].
    pub namespace: String,
    pub namespace_uid: String,
}

/// A deployment group in a [`Scope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct GroupView {
    pub slug: String,
    pub name: String,
    pub group_type: String,
    /// Linked cluster slugs.
    pub clusters: Vec<String>,
}

/// A branch in a [`Scope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct BranchView {
    pub repository: String,
    pub branch: String,
    pub url: String,
}

/// An image in a [`Scope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ImageView {
    pub repository: String,
    pub image: String,
    pub name: String,
    /// The current version (`""` before the first publication).
    pub version: String,
}

/// A deployment in a [`Scope`], inherited fields resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DeploymentView {
    pub slug: String,
    pub name: String,
    /// `project/deployment`.
    #[serde(rename = "ref")]
    pub reference: String,
    pub group: String,
    pub project: String,
    /// [`Namespace::name`] of the project.
    pub namespace: String,
    pub deployment_type: String,
    /// The group scope's slug, or `""`.
    pub scope: String,
    pub subdomain: String,
    pub domain: String,
    pub branch: Option<BranchView>,
    pub image: Option<ImageView>,
    pub subscribe_image: bool,
    /// The book of every lifecycle slot, by action (`general`, `deploy`, `pause`, `backup`,
    /// `restore`, `sync_ingress`, `upgrade`, `drop`, `config_scope`), `""` when unset.
    pub books: IndexMap<String, String>,
    pub values: IndexMap<String, serde_json::Value>,
    /// Prefix of resource names built for it ([`Scope::resource_name`]).
    pub resource_prefix: String,
    /// Relative directory of its remote paths ([`Scope::remote_path`]).
    pub remote_dir: String,
}

/// A cluster in a [`Scope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ClusterView {
    pub uid: String,
    pub name: String,
    pub slug: String,
    pub state: String,
    pub hosts: Vec<String>,
    pub endpoint: String,
}

/// A datasource in a [`Scope`] (the connection shows as `***`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct DatasourceView {
    pub slug: String,
    pub data_type: super::datasource::DataType,
    pub usage: super::datasource::DataUsage,
    pub bucket: String,
    pub endpoint: String,
    pub region: String,
    /// `***` when set, `""` otherwise.
    pub connection: String,
}

fn cluster_view(c: &Cluster) -> ClusterView {
    ClusterView {
        uid: c.uid.clone(),
        name: c.name.clone(),
        slug: c.slug().map(|s| s.to_string()).unwrap_or_default(),
        state: c.state.to_string(),
        hosts: c.hosts.clone(),
        endpoint: c.endpoint.clone().unwrap_or_default(),
    }
}

fn datasource_view(d: &Datasource) -> DatasourceView {
    DatasourceView {
        slug: d.slug.to_string(),
        data_type: d.data_type,
        usage: d.usage,
        bucket: d.bucket.clone().unwrap_or_default(),
        endpoint: d.endpoint.clone().unwrap_or_default(),
        region: d.region.clone().unwrap_or_default(),
        connection: d
            .connection
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// The prefix of resource names of a deployment in `namespace`.
pub(crate) fn resource_prefix(namespace: &Namespace, deployment: &str) -> String {
    format!("{}-{deployment}", namespace.name())
}

impl Scope {
    /// The scope of deployment `r` in `data` (which must be valid).
    pub fn build(data: &CatalogData, r: &DeploymentRef) -> Result<Scope, CatalogError> {
        let (project, group, deployment) = data.deployment(r)?;
        let s = CatalogData::effective_settings(group, deployment);
        let scope = CatalogData::scope_config(group, &s).cloned();
        let clusters: Vec<ClusterView> = data
            .deployment_clusters(r)?
            .into_iter()
            .map(cluster_view)
            .collect();
        let mut datasources = Vec::new();
        let mut backup = None;
        if let Some(sc) = &scope {
            if let Some(b) = &sc.backup_datasource {
                let view = datasource_view(data.datasource(b.as_str())?);
                backup = Some(view.clone());
                datasources.push(view);
            }
            for ds in &sc.datasources {
                if Some(ds) != sc.backup_datasource.as_ref() {
                    datasources.push(datasource_view(data.datasource(ds.as_str())?));
                }
            }
        }
        let branch = match &s.branch {
            Some(b) => Some(BranchView {
                repository: b.repository.to_string(),
                branch: b.branch.clone(),
                url: data.repository(b.repository.as_str())?.url.clone(),
            }),
            None => None,
        };
        let image = match &s.image {
            Some(i) => {
                let repo = data.repository(i.repository.as_str())?;
                let img = repo
                    .images
                    .iter()
                    .find(|x| x.slug == i.image)
                    .ok_or_else(|| CatalogError::NotFound {
                        kind: "image",
                        name: format!("{}/{}", i.repository, i.image),
                    })?;
                Some(ImageView {
                    repository: i.repository.to_string(),
                    image: i.image.to_string(),
                    name: img.name.clone(),
                    version: img.current().unwrap_or_default().to_string(),
                })
            }
            None => None,
        };
        let ns = project.namespace.name();
        Ok(Scope {
            project: ProjectView {
                slug: project.slug.to_string(),
                name: display_name(&project.name, project.slug.as_str()),
                owner: project.owner.clone(),
                namespace: ns.clone(),
                namespace_uid: project.namespace.uid.clone(),
            },
            deployment_group: GroupView {
                slug: group.slug.to_string(),
                name: display_name(&group.name, group.slug.as_str()),
                group_type: group.group_type.clone(),
                clusters: group.clusters.iter().map(ToString::to_string).collect(),
            },
            deployment: DeploymentView {
                slug: deployment.slug.to_string(),
                name: display_name(&deployment.name, deployment.slug.as_str()),
                reference: r.to_string(),
                group: group.slug.to_string(),
                project: project.slug.to_string(),
                namespace: ns.clone(),
                deployment_type: s.deployment_type.clone().unwrap_or_default(),
                scope: s
                    .scope
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                subdomain: s.subdomain.clone().unwrap_or_default(),
                domain: s.domain.clone().unwrap_or_default(),
                branch,
                image,
                subscribe_image: s.subscribe_image.unwrap_or(false),
                books: LifecycleAction::ALL
                    .iter()
                    .map(|a| {
                        let book = s.books.get(*a).unwrap_or_default();
                        (a.as_str().to_string(), book.to_string())
                    })
                    .collect(),
                values: s.values.clone(),
                resource_prefix: resource_prefix(&project.namespace, deployment.slug.as_str()),
                remote_dir: format!("{ns}/{}", deployment.slug),
            },
            scope,
            cluster: clusters.first().cloned(),
            clusters,
            datasources,
            backup_datasource: backup,
        })
    }

    /// This scope with `cluster` set to the deployment's cluster `slug`, for a job that runs
    /// against one cluster of several; an error names the deployment's clusters when `slug` is
    /// not one of them.
    pub fn with_cluster(&self, slug: &str) -> Result<Scope, CatalogError> {
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.slug == slug)
            .ok_or_else(|| CatalogError::Dangling {
                from: format!("deployment {}: cluster", self.deployment.reference),
                kind: "cluster",
                target: slug.to_string(),
                expected: self.clusters.iter().map(|c| c.slug.clone()).collect(),
            })?;
        let mut out = self.clone();
        out.cluster = Some(cluster.clone());
        Ok(out)
    }

    /// The scope as JSON, what expressions are evaluated against.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|e| unreachable!("a scope serializes: {e}"))
    }

    /// A resource name for this deployment: `<namespace>-<deployment>-<name>`, so the same
    /// `name` in two projects gives two names.
    pub fn resource_name(&self, name: &str) -> String {
        format!("{}-{name}", self.deployment.resource_prefix)
    }

    /// A remote path for this deployment under `base`: `<base>/<namespace>/<deployment>/<rel>`
    /// (`rel` may be empty).
    pub fn remote_path(&self, base: &str, rel: &str) -> String {
        let mut out = format!(
            "{}/{}",
            base.trim_end_matches('/'),
            self.deployment.remote_dir
        );
        let rel = rel.trim_start_matches('/');
        if !rel.is_empty() {
            out.push('/');
            out.push_str(rel);
        }
        out
    }
}

fn display_name(name: &str, slug: &str) -> String {
    if name.is_empty() {
        slug.to_string()
    } else {
        name.to_string()
    }
}
