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
//! * [`Role`]s (with group and deployment overrides) decide which [`Action`]s a user may do:
//!   see [Access](#access).
//! * [`Scope`] is the resolved JSON view of a deployment that books evaluate against.

//!
//! # Access
//!
//! Every check of the [`Catalog`] API, and what `show` lists, derives from one rule: the user's
//! **effective role** on the object ([`CatalogData::effective_role`]).
//!
//! 1. Catalog `admins` are admin on everything, the catalog included.
//! 2. A project's `owner` is admin on the project and everything in it (overrides do not
//!    lower it: the owner could change them anyway). Only the owner or a catalog admin may
//!    hand the project to another owner.
//! 3. Otherwise the most specific grant wins: **deployment override > group override >
//!    project role > none**. An override may lower a role (dave, a project developer, is
//!    only a user on `prod`) as well as raise it.
//! 4. A repository reserved to a project takes the project's role; the catalog itself and a
//!    shared repository belong to no project: only catalog admins act on them.
//!
//! An [`Action`] is allowed when the effective role on its object is at least the role the
//! table names ([`Action::min_role`], [`CatalogData::may`]):
//!
//! | action | object | user | developer | admin (and owner) | catalog admin |
//! |---|---|---|---|---|---|
//! | `view` (`show`) | project, group, deployment | yes | yes | yes | yes |
//! | `scope` | deployment | yes | yes | yes | yes |
//! | `trigger` (and datasource secrets) | deployment | | yes | yes | yes |
//! | `approve` a manual step of its job | deployment | | yes | yes | yes |
//! | `edit` deployments, monitors, group defaults | group, deployment | | yes | yes | yes |
//! | `publish` an image version | repository reserved to the project | | yes ¹ | yes ¹ | yes |
//! | `administer`: users, overrides, groups, project datasources and repositories | project | | | yes | yes |
//! | `publish` to a shared repository; projects, clusters, shared objects, import, export | catalog | | | | yes |
//!
//! With no role anywhere a user sees nothing and may do nothing. Visibility follows the same
//! rule: a project or group is also visible to whoever has a role on something inside it,
//! and then shows only that ([`CatalogData::visible_project`]) — carol, with only a developer
//! override on group `web`, sees project `shop`, group `web` and its deployments (and may
//! trigger and approve there), but no other group, and may not administer the project.
//! Whoever may do anything to an object may view it.
//!
//! ¹ Publishing deploys every subscribed deployment, so it also needs `trigger` on each.
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

pub use access::{Action, Member, Permission, Role};
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

#[cfg(test)]
mod access_tests;
