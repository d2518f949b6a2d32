//! The object model: projects, deployment groups, deployments, clusters, repositories,
//! datasources, monitors and project roles, kept in a [`CatalogStore`] and used through
//! [`Catalog`], whose every call names the acting user.
//!
//! * [`CatalogData`] holds every object and is also the catalog file format; it validates as a
//!   whole (unique [`Slug`]s, no dangling reference).
//! * [`Project`] → [`DeploymentGroup`] → [`Deployment`]: a deployment inherits its group's
//!   `defaults` ([`DeploymentSettings`]) unless it sets a field itself. Every project has a
//!   [`Namespace`] whose name prefixes the deployment's resource names and remote paths.
//! * [`Cluster`]s are shared and move through [`ClusterState`] one step at a time.
//! * [`Repository`]s hold branches and [`Image`]s; publishing an image version gives a
//!   [`LifecycleRequest`] per subscribed deployment.
//! * [`Datasource`]s (buckets, databases) keep their connection in a [`Secret`].
//! * [`Monitor`]s are health checks; [`MonitorRunner`] runs the due ones and keeps their log.
//! * [`Role`]s (with group and deployment overrides) decide what [`Permission`]s a user has.
//! * [`Scope`] is the resolved JSON view of a deployment that books evaluate against.

//!
//! # What this crate does not know
//!
//! How books run: a triggered action yields a [`LifecycleRequest`] (the book of the
//! deployment's slot, the action, the [`Scope`]) that a host application hands to the books
//! engine (`deployer-books` reads it as JSON). Nor does it know SQL (the SQLite and PostgreSQL
//! [`CatalogStore`]s are in `deployer-store`, feature `catalog`) or how an HTTP check is made
//! ([`HttpChecker`]; `deployer-commands` has `CurlChecker`, feature `catalog`).
//!
//! # Example
//!
//! ```
//! use deployer_catalog::{Catalog, CatalogData, DeploymentRef, LifecycleAction, Scope};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let data = CatalogData::from_yaml_str(r#"
//! projects:
//!   - slug: shop
//!     owner: alice
//!     users: [{user: alice, role: admin}, {user: bob, role: user}]
//!     groups:
//!       - slug: web
//!         group_type: odoo
//!         defaults: {books: {deploy: deploy-web}}
//!         deployments: [{slug: prod}]
//! "#, "catalog.yaml").unwrap();
//! let catalog = Catalog::in_memory(data);
//! let prod: DeploymentRef = "shop/prod".parse().unwrap();
//!
//! // Alice may deploy: the request names the slot's book and carries the scope.
//! let request = catalog.trigger("alice", &prod, LifecycleAction::Deploy).await.unwrap();
//! assert_eq!(request.book, "deploy-web");
//! let scope: &Scope = &request.scope;
//! assert_eq!(serde_json::to_value(scope).unwrap()["deployment"]["ref"], "shop/prod");
//!
//! // Bob sees the project but may not deploy.
//! assert_eq!(catalog.projects("bob").await.unwrap().len(), 1);
//! assert!(catalog.trigger("bob", &prod, LifecycleAction::Deploy).await.unwrap_err().is_forbidden());
//! # });
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod access;
mod api;
mod cluster;
mod data;
mod datasource;
mod error;
mod hierarchy;
mod lifecycle;
mod monitor;
mod repository;
mod scope;
mod slug;
mod store;
mod update;

pub use access::{Member, Permission, Role};
pub use api::Catalog;
pub use cluster::{Cluster, ClusterState};
pub use data::{CatalogData, Target};
pub use datasource::{DataType, DataUsage, Datasource};
pub use deployer_core::{REDACTED, Secret};
pub use error::CatalogError;
pub use hierarchy::{
    BookSlots, DEFAULT_MONITOR_LOG_SECONDS, Deployment, DeploymentGroup, DeploymentRef,
    DeploymentSettings, Namespace, Project, ScopeConfig,
};
pub use lifecycle::{LifecycleAction, LifecycleRequest, Trigger};
pub use monitor::{
    CheckFailure, HttpCheck, HttpChecker, HttpResponse, Monitor, MonitorCheck, MonitorLogEntry,
    MonitorRunner, MonitorState, MonitorStatus, Thresholds, monitor_key, monitor_state,
};
pub use repository::{BranchRef, Image, ImageRef, Repository};
pub use scope::{
    BranchView, ClusterView, DatasourceView, DeploymentView, GroupView, ImageView, ProjectView,
    Scope,
};
pub use slug::{MAX_SLUG_LEN, Slug};
pub use store::{CatalogStore, MemoryCatalog, StoredCatalog};

#[cfg(feature = "test-fixture")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-fixture")))]
pub mod fixture;

#[cfg(test)]
mod tests;
