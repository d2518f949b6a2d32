//! Tests of the object model through its public API.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::fixture::catalog_contract::{self, SAMPLE_YAML, sample_catalog};
use crate::*;

fn slug(s: &str) -> Slug {
    Slug::new(s).unwrap()
}

fn dep(s: &str) -> DeploymentRef {
    s.parse().unwrap()
}

fn catalog() -> Catalog {
    Catalog::in_memory(sample_catalog())
}

fn yaml_err(text: &str) -> String {
    CatalogData::from_yaml_str(text, "bad.yaml")
        .unwrap_err()
        .to_string()
}

/// SAMPLE_YAML with `from` replaced by `to` (which must occur).
fn sample_with(from: &str, to: &str) -> String {
    assert!(SAMPLE_YAML.contains(from), "{from}");
    SAMPLE_YAML.replacen(from, to, 1)
}

#[tokio::test]
async fn memory_catalog_meets_the_contract() {
    catalog_contract::all(|| async { MemoryCatalog::new() }).await;
}

#[test]
fn bad_input_gives_clear_errors() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "slug: shop\n    name: Shop",
            "slug: Shop\n    name: Shop",
            "\"Shop\" is not a valid slug: 'S' is not allowed",
        ),
        (
            "- slug: blog\n    owner: erin",
            "- slug: shop\n    owner: erin",
            "duplicate project \"shop\" in the catalog",
        ),
        (
            "- slug: preview\n",
            "- slug: staging\n",
            "duplicate deployment \"staging\" in project shop",
        ),
        (
            "clusters: [us-1]",
            "clusters: [us-2]",
            "deployment shop/preview: clusters refers to cluster \"us-2\", which does not exist (expected one of: eu-1, us-1)",
        ),
        (
            "scope: staging\n",
            "scope: stagin\n",
            "deployment shop/staging: settings: scope refers to scope \"stagin\", which does not exist (expected one of: production, staging)",
        ),
        (
            "branch: develop}",
            "branch: feature}",
            "refers to branch \"feature\", which does not exist (expected one of: main, develop)",
        ),
        (
            "backup_datasource: backups",
            "backup_datasource: backup",
            "group shop/web: scope production: datasources refers to datasource \"backup\"",
        ),
        (
            "books: {deploy: deploy-blog}",
            "books: {pause: pause}",
            "deployment blog/www: subscribe_image: it subscribes to an image but has no deploy book",
        ),
        (
            "type: http_request, url: \"https://www.shop.example.com/\"",
            "type: http_request, url: \"ftp://www.shop.example.com/\"",
            "monitor home: url \"ftp://www.shop.example.com/\" is not an http:// or https:// URL",
        ),
        (
            "- slug: site\n        group_type: wordpress\n        clusters: [eu-1]\n        deployments:\n          - slug: www\n            settings:\n",
            "- slug: site\n        group_type: wordpress\n        clusters: [eu-1]\n        deployments:\n          - slug: www\n            settings:\n              branch: {repository: shop-theme, branch: main}\n",
            "deployment blog/www: settings: branch.repository: repository shop-theme is reserved to project shop",
        ),
        (
            "name: US 1",
            "name: EU 1",
            "duplicate cluster \"eu-1\" in the catalog",
        ),
        (
            "{user: bob, role: user}",
            "{user: bob, role: boss}",
            "unknown variant `boss`, expected one of user, developer, admin",
        ),
        (
            "state: active",
            "state: running",
            "unknown variant `running`",
        ),
        (
            "interval_seconds: 60",
            "interval_second: 60",
            "unknown field `interval_second`",
        ),
    ];
    for (from, to, expected) in cases {
        let err = yaml_err(&sample_with(from, to));
        assert!(err.contains(expected), "{to}:\n{err}\nexpected: {expected}");
    }
    // Syntax and type errors carry the line and column.
    let err = yaml_err(&sample_with(
        "slug: shop\n    name: Shop",
        "slug: Shop\n    name: Shop",
    ));
    assert!(err.starts_with("bad.yaml:"), "{err}");
    let line = SAMPLE_YAML[..SAMPLE_YAML.find("slug: shop\n").unwrap()]
        .matches('\n')
        .count()
        + 1;
    assert!(err.starts_with(&format!("bad.yaml:{line}:")), "{err}");

    // Several problems at once.
    let both = sample_with("clusters: [us-1]", "clusters: [us-2]").replacen(
        "scope: staging\n",
        "scope: stagin\n",
        1,
    );
    let err = CatalogData::from_yaml_str(&both, "bad.yaml").unwrap_err();
    assert_eq!(err.problems().len(), 2, "{err}");
    assert!(
        err.to_string().starts_with("2 problems in the catalog:"),
        "{err}"
    );
}

#[test]
fn deployments_inherit_their_groups_fields() {
    let data = sample_catalog();
    let prod = Scope::build(&data, &dep("shop/prod")).unwrap().to_json();
    let d = &prod["deployment"];
    assert_eq!(d["deployment_type"], "odoo", "inherited");
    assert_eq!(d["domain"], "shop.example.com", "inherited");
    assert_eq!(d["subdomain"], "www", "own");
    assert_eq!(d["branch"]["branch"], "main");
    assert_eq!(d["branch"]["url"], "https://git.example.com/shop/app.git");
    assert_eq!(d["image"]["version"], "1.0.0");
    assert_eq!(d["books"]["deploy"], "deploy");
    assert_eq!(d["values"]["workers"], 8, "own value wins");
    assert_eq!(prod["scope"]["production"], true);
    assert_eq!(prod["cluster"]["slug"], "eu-1");
    assert_eq!(prod["backup_datasource"]["bucket"], "shop-backups");
    assert_eq!(prod["datasources"][1]["slug"], "shop-db");
    assert_eq!(prod["project"]["namespace"], "ns-9a2f3b5c6d7e8f90");

    let staging = Scope::build(&data, &dep("shop/staging")).unwrap().to_json();
    assert_eq!(staging["deployment"]["branch"]["branch"], "develop", "own");
    assert_eq!(
        staging["deployment"]["subdomain"], "",
        "unset is empty, not missing"
    );
    assert_eq!(staging["deployment"]["values"]["workers"], 2);
    assert!(staging["backup_datasource"].is_null());
    assert!(staging["scope"]["backup_datasource"].is_null());

    let preview = Scope::build(&data, &dep("shop/preview")).unwrap();
    let slugs: Vec<&str> = preview.clusters.iter().map(|c| c.slug.as_str()).collect();
    assert_eq!(slugs, ["us-1", "eu-1"], "own links first, then the group's");
    assert!(preview.scope.is_none());
}

#[test]
fn the_scope_has_every_key_always() {
    let data = sample_catalog();
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    // preview: no scope, no own settings, no datasources; prod: everything set.
    for r in ["shop/prod", "shop/preview", "blog/www"] {
        let scope = Scope::build(&data, &dep(r)).unwrap().to_json();
        assert_eq!(
            keys(&scope),
            [
                "project",
                "deployment_group",
                "deployment",
                "scope",
                "cluster",
                "clusters",
                "datasources",
                "backup_datasource"
            ],
            "{r}"
        );
        assert_eq!(
            keys(&scope["project"]),
            ["slug", "name", "owner", "namespace", "namespace_uid"]
        );
        assert_eq!(
            keys(&scope["deployment_group"]),
            ["slug", "name", "group_type", "clusters"]
        );
        assert_eq!(
            keys(&scope["deployment"]),
            [
                "slug",
                "name",
                "ref",
                "group",
                "project",
                "namespace",
                "deployment_type",
                "scope",
                "subdomain",
                "domain",
                "branch",
                "image",
                "subscribe_image",
                "books",
                "values",
                "resource_prefix",
                "remote_dir"
            ],
            "{r}"
        );
        assert_eq!(
            keys(&scope["deployment"]["books"]),
            LifecycleAction::ALL.map(|a| a.as_str().to_string()),
            "{r}"
        );
    }
    let www = Scope::build(&data, &dep("blog/www")).unwrap().to_json();
    assert_eq!(www["deployment"]["books"]["deploy"], "deploy-blog");
    assert_eq!(www["deployment"]["books"]["pause"], "");
    assert!(www["scope"].is_null() && www["backup_datasource"].is_null());
    let prod = Scope::build(&data, &dep("shop/prod")).unwrap().to_json();
    assert_eq!(
        keys(&prod["scope"]),
        [
            "slug",
            "production",
            "monitor_log_delete_after_seconds",
            "backup_datasource",
            "datasources",
            "clusters",
            "values"
        ]
    );
    assert_eq!(
        keys(&prod["cluster"]),
        ["uid", "name", "slug", "state", "hosts", "endpoint"]
    );
    assert_eq!(
        keys(&prod["backup_datasource"]),
        [
            "slug",
            "data_type",
            "usage",
            "bucket",
            "endpoint",
            "region",
            "connection"
        ]
    );
    // A scope round-trips through JSON (a job can snapshot it).
    let scope = Scope::build(&data, &dep("shop/prod")).unwrap();
    let back: Scope = serde_json::from_value(scope.to_json()).unwrap();
    assert_eq!(back, scope);
}

#[test]
fn namespaces_keep_projects_apart() {
    // Two projects with the same group and deployment slugs.
    let yaml = r#"
projects:
  - slug: alpha
    owner: a
    groups: [{slug: web, group_type: odoo, deployments: [{slug: prod}]}]
  - slug: beta
    owner: b
    groups: [{slug: web, group_type: odoo, deployments: [{slug: prod}]}]
"#;
    let data = CatalogData::from_yaml_str(yaml, "two.yaml").unwrap();
    let a = Scope::build(&data, &dep("alpha/prod")).unwrap();
    let b = Scope::build(&data, &dep("beta/prod")).unwrap();
    assert_ne!(a.project.namespace, b.project.namespace);
    assert_ne!(a.resource_name("db"), b.resource_name("db"));
    assert_ne!(
        a.remote_path("/srv", "releases"),
        b.remote_path("/srv", "releases")
    );
    for s in [&a, &b] {
        let ns = &s.project.namespace;
        assert!(ns.starts_with("ns-") && ns.len() == 19, "{ns}");
        assert!(Slug::new(s.resource_name("db")).is_ok(), "DNS-safe");
        assert_eq!(s.resource_name("db"), format!("{ns}-prod-db"));
        assert_eq!(
            s.remote_path("/srv/", "/releases"),
            format!("/srv/{ns}/prod/releases")
        );
        assert_eq!(s.deployment.namespace, *ns, "deployments expose it");
    }

    // Two projects may not share a namespace.
    let same = r#"
projects:
  - {slug: alpha, owner: a, namespace: {uid: 0190f3a2-7c1e-7d4b-9a2f-3b5c6d7e8f90}}
  - {slug: beta, owner: b, namespace: {uid: 0190f3a2-7c1e-7d4b-9a2f-3b5c6d7e8f90}}
"#;
    let err = CatalogData::from_yaml_str(same, "same.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("duplicate namespace \"ns-9a2f3b5c6d7e8f90\" in the catalog"),
        "{err}"
    );
    let bad = "projects: [{slug: alpha, owner: a, namespace: {uid: abc}}]";
    let err = CatalogData::from_yaml_str(bad, "bad.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("namespace.uid: \"abc\" has fewer than 16 hex digits"),
        "{err}"
    );
}

#[tokio::test]
async fn clusters_move_one_step_at_a_time() {
    let catalog = catalog();
    let us = slug("us-1");
    catalog
        .transition_cluster("root", &us, ClusterState::Init)
        .await
        .unwrap();
    let err = catalog
        .transition_cluster("root", &us, ClusterState::Delete)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cluster \"US 1\" cannot go from init to delete (allowed from init: active)"
    );
    let data = catalog.export("root").await.unwrap();
    assert_eq!(data.cluster("us-1").unwrap().state, ClusterState::Init);
    let err = catalog
        .transition_cluster("root", &slug("mars-1"), ClusterState::Init)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no cluster \"mars-1\"");
}

#[tokio::test]
async fn publishing_an_image_requests_a_deploy_of_each_subscriber() {
    let catalog = catalog();
    let requests = catalog
        .publish_image("root", &slug("shop-app"), &slug("app"), "1.1.0")
        .await
        .unwrap();
    let got: Vec<(String, LifecycleAction, &str)> = requests
        .iter()
        .map(|r| (r.deployment.to_string(), r.action, r.book.as_str()))
        .collect();
    // staging and preview use the same image (inherited) but do not subscribe.
    assert_eq!(
        got,
        [
            ("shop/prod".to_string(), LifecycleAction::Deploy, "deploy"),
            (
                "blog/www".to_string(),
                LifecycleAction::Deploy,
                "deploy-blog"
            ),
        ]
    );
    for r in &requests {
        assert_eq!(
            r.triggered_by,
            Trigger::ImagePublished {
                user: "root".to_string(),
                repository: slug("shop-app"),
                image: slug("app"),
                version: "1.1.0".to_string(),
            }
        );
        let image = r.scope.deployment.image.as_ref().unwrap();
        assert_eq!(image.version, "1.1.0", "the scope sees the new version");
    }
    assert_ne!(requests[0].id, requests[1].id);

    // The version is recorded; publishing it again is an error.
    let data = catalog.export("root").await.unwrap();
    let repo = data.repository("shop-app").unwrap();
    assert_eq!(repo.images[0].versions, ["1.0.0", "1.1.0"]);
    let err = catalog
        .publish_image("root", &slug("shop-app"), &slug("app"), "1.1.0")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("already the current version"),
        "{err}"
    );

    // Unsubscribing removes the request; an image nobody subscribes to gives none.
    let mut settings = data
        .deployment(&dep("blog/www"))
        .unwrap()
        .2
        .settings
        .clone();
    settings.subscribe_image = Some(false);
    catalog
        .update_deployment("erin", &dep("blog/www"), settings)
        .await
        .unwrap();
    let requests = catalog
        .publish_image("root", &slug("shop-app"), &slug("app"), "1.2.0")
        .await
        .unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].deployment, dep("shop/prod"));
    let none = catalog
        .publish_image("alice", &slug("shop-theme"), &slug("theme"), "0.1.0")
        .await
        .unwrap();
    assert!(none.is_empty());
    let err = catalog
        .publish_image("root", &slug("shop-app"), &slug("nope"), "1.0.0")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no image \"shop-app/nope\"");
}

#[tokio::test]
async fn triggering_uses_the_slot_book_and_fails_without_one() {
    let catalog = catalog();
    let r = catalog
        .trigger("dave", &dep("shop/staging"), LifecycleAction::Backup)
        .await
        .unwrap();
    assert_eq!(r.book, "backup");
    assert_eq!(
        r.triggered_by,
        Trigger::User {
            user: "dave".to_string()
        }
    );
    assert_eq!(r.scope.deployment.reference, "shop/staging");
    let err = catalog
        .trigger("dave", &dep("shop/staging"), LifecycleAction::Drop)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "deployment shop/staging: no book for action drop (set books.drop on the deployment or its group)"
    );
    let err = catalog
        .trigger("dave", &dep("shop/nope"), LifecycleAction::Deploy)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no deployment \"shop/nope\"");
    assert!("launch".parse::<LifecycleAction>().unwrap_err().to_string().contains(
        "expected one of: general, deploy, pause, backup, restore, sync_ingress, upgrade, drop, config_scope"
    ));
}

#[tokio::test]
async fn secrets_never_show() {
    let data = sample_catalog();
    let catalog = Catalog::in_memory(data.clone());
    let request = catalog
        .trigger("alice", &dep("shop/prod"), LifecycleAction::Deploy)
        .await
        .unwrap();
    let shown = [
        format!("{data:?}"),
        serde_json::to_string(&data).unwrap(),
        serde_json::to_string(&request).unwrap(),
        format!("{request:?}"),
        request.scope.to_json().to_string(),
    ];
    for text in &shown {
        assert!(!text.contains("hunter2"), "{text}");
    }
    assert_eq!(request.scope.datasources[1].connection, "***");
    assert!(data.to_stored_json().contains("hunter2"), "stores keep it");
    let back = CatalogData::from_json_str(&data.to_stored_json(), "stored").unwrap();
    assert_eq!(back, data);
}

#[tokio::test]
async fn secrets_are_given_to_those_who_may_run_actions() {
    let catalog = catalog();
    let prod = dep("shop/prod");
    let secret = catalog
        .datasource_secret("alice", &prod, &slug("shop-db"))
        .await
        .unwrap();
    assert_eq!(secret.expose(), "postgres://shop:hunter2@db.internal/shop");
    let err = catalog
        .datasource_secret("alice", &prod, &slug("backups"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "datasource backups: it has no connection");
    let err = catalog
        .datasource_secret("alice", &dep("shop/preview"), &slug("shop-db"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "deployment shop/preview: scope datasources refers to datasource \"shop-db\", which does not exist (there are none)"
    );
    let err = catalog
        .datasource_secret("bob", &prod, &slug("shop-db"))
        .await
        .unwrap_err();
    assert!(err.is_forbidden());
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn a_scope_can_name_one_of_its_clusters() {
    let data = sample_catalog();
    let preview = Scope::build(&data, &dep("shop/preview")).unwrap();
    assert_eq!(preview.cluster.as_ref().unwrap().slug, "us-1");
    let eu = preview.with_cluster("eu-1").unwrap();
    assert_eq!(eu.cluster.as_ref().unwrap().hosts, ["fe001", "fe002"]);
    assert_eq!(eu.clusters, preview.clusters);
    let err = preview.with_cluster("ap-1").unwrap_err().to_string();
    assert_eq!(
        err,
        "deployment shop/preview: cluster refers to cluster \"ap-1\", which does not exist (expected one of: us-1, eu-1)"
    );
}

#[tokio::test]
async fn creating_objects_validates_them() {
    let catalog = catalog();
    let err = catalog
        .create_deployment(
            "alice",
            &slug("shop"),
            &slug("web"),
            Deployment::new(slug("prod")),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "duplicate deployment \"prod\" in project shop"
    );
    let mut d = Deployment::new(slug("qa"));
    d.clusters.push(slug("mars-1"));
    let err = catalog
        .create_deployment("alice", &slug("shop"), &slug("web"), d)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("refers to cluster \"mars-1\""),
        "{err}"
    );
    let err = catalog
        .create_deployment(
            "alice",
            &slug("shop"),
            &slug("api"),
            Deployment::new(slug("qa")),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no deployment group \"shop/api\"");
    // Nothing was saved by the failed calls.
    assert_eq!(catalog.export("root").await.unwrap(), sample_catalog());
    let err = catalog
        .create_project("root", Project::new(slug("shop"), "zed"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "duplicate project \"shop\" in the catalog");
    catalog
        .create_project("root", Project::new(slug("wiki"), "zed"))
        .await
        .unwrap();
    assert_eq!(catalog.projects("root").await.unwrap().len(), 3);
}

#[tokio::test]
async fn editing_a_project_keeps_its_identity_and_validates() {
    let catalog = catalog();
    let shop = slug("shop");
    let err = catalog
        .edit_project("alice", &shop, |p| p.namespace = Namespace::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "project shop: its slug and namespace cannot change"
    );
    let err = catalog
        .edit_project("alice", &shop, |p| {
            p.groups[0].clusters.push(slug("mars-1"))
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("refers to cluster \"mars-1\""),
        "{err}"
    );
    catalog
        .edit_project("alice", &shop, |p| {
            p.groups[0].scopes.retain(|s| s.slug != "staging")
        })
        .await
        .expect_err("staging is still used by a deployment");
    // Group defaults reach every deployment that does not set the field itself.
    let defaults = DeploymentSettings {
        domain: Some("example.org".to_string()),
        subdomain: Some("default".to_string()),
        ..sample_catalog()
            .group("shop", "web")
            .unwrap()
            .defaults
            .clone()
    };
    catalog
        .update_group_defaults("dave", &shop, &slug("web"), defaults)
        .await
        .unwrap();
    let prod = catalog.scope("bob", &dep("shop/prod")).await.unwrap();
    let staging = catalog.scope("bob", &dep("shop/staging")).await.unwrap();
    assert_eq!(prod.deployment.domain, "example.org");
    assert_eq!(prod.deployment.subdomain, "www", "prod sets its own");
    assert_eq!(staging.deployment.subdomain, "default");
}

#[tokio::test]
async fn concurrent_changes_are_all_kept() {
    let catalog = catalog();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let catalog = catalog.clone();
        tasks.push(tokio::spawn(async move {
            catalog
                .create_deployment(
                    "alice",
                    &slug("shop"),
                    &slug("web"),
                    Deployment::new(slug(&format!("qa-{i}"))),
                )
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let data = catalog.export("root").await.unwrap();
    assert_eq!(data.group("shop", "web").unwrap().deployments.len(), 13);
}

/// A store that never wins a save, counting the loads.
#[derive(Default)]
struct AlwaysRaced {
    inner: MemoryCatalog,
    loads: Mutex<u32>,
}

#[async_trait]
impl CatalogStore for AlwaysRaced {
    async fn load_catalog(&self) -> Result<StoredCatalog, deployer_core::StoreError> {
        *self.loads.lock().unwrap() += 1;
        self.inner.load_catalog().await
    }

    async fn save_catalog(
        &self,
        _: u64,
        _: &CatalogData,
    ) -> Result<Option<u64>, deployer_core::StoreError> {
        Ok(None)
    }

    async fn append_monitor_log(
        &self,
        entry: &MonitorLogEntry,
    ) -> Result<(), deployer_core::StoreError> {
        self.inner.append_monitor_log(entry).await
    }

    async fn monitor_log(
        &self,
        monitor: &str,
        limit: usize,
    ) -> Result<Vec<MonitorLogEntry>, deployer_core::StoreError> {
        self.inner.monitor_log(monitor, limit).await
    }

    async fn prune_monitor_log(
        &self,
        monitor: &str,
        before: SystemTime,
    ) -> Result<usize, deployer_core::StoreError> {
        self.inner.prune_monitor_log(monitor, before).await
    }
}

#[tokio::test]
async fn a_change_that_keeps_losing_the_race_gives_up_after_32_tries() {
    let store = Arc::new(AlwaysRaced {
        inner: MemoryCatalog::with(sample_catalog()),
        ..AlwaysRaced::default()
    });
    let catalog = Catalog::new(store.clone());
    let err = catalog
        .create_cluster("root", Cluster::new("AP 1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::Conflict { attempts: 32 }),
        "{err}"
    );
    assert_eq!(*store.loads.lock().unwrap(), 32);

    // A refused change ends at once: one load, no retry.
    *store.loads.lock().unwrap() = 0;
    let err = catalog
        .create_cluster("alice", Cluster::new("AP 1"))
        .await
        .unwrap_err();
    assert!(err.is_forbidden(), "{err}");
    assert_eq!(*store.loads.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_missing_object_is_reported_before_any_refusal() {
    let catalog = catalog();
    let (shop, nope) = (slug("shop"), slug("nope"));
    let settings = DeploymentSettings::default;
    let cases: Vec<(Result<(), CatalogError>, &str)> = vec![
        (
            catalog.set_project_role("zed", &nope, "x", None).await,
            "no project \"nope\"",
        ),
        (
            catalog
                .create_group("zed", &nope, DeploymentGroup::new(slug("g"), "odoo"))
                .await,
            "no project \"nope\"",
        ),
        (
            catalog.edit_project("zed", &nope, |_| {}).await,
            "no project \"nope\"",
        ),
        (
            catalog.set_group_role("zed", &shop, &nope, "x", None).await,
            "no deployment group \"shop/nope\"",
        ),
        (
            catalog
                .update_group_defaults("zed", &shop, &nope, settings())
                .await,
            "no deployment group \"shop/nope\"",
        ),
        (
            catalog
                .create_deployment("zed", &shop, &nope, Deployment::new(slug("d")))
                .await,
            "no deployment group \"shop/nope\"",
        ),
        (
            catalog
                .update_deployment("zed", &dep("shop/nope"), settings())
                .await,
            "no deployment \"shop/nope\"",
        ),
        (
            catalog.remove_deployment("zed", &dep("shop/nope")).await,
            "no deployment \"shop/nope\"",
        ),
        (
            catalog
                .set_deployment_role("zed", &dep("shop/nope"), "x", None)
                .await,
            "no deployment \"shop/nope\"",
        ),
        (
            catalog
                .link_cluster("zed", &dep("shop/nope"), &slug("eu-1"))
                .await,
            "no deployment \"shop/nope\"",
        ),
        (
            catalog.scope("zed", &dep("shop/nope")).await.map(drop),
            "no deployment \"shop/nope\"",
        ),
        (
            catalog
                .trigger("zed", &dep("shop/nope"), LifecycleAction::Deploy)
                .await
                .map(drop),
            "no deployment \"shop/nope\"",
        ),
        (
            catalog
                .datasource_secret("zed", &dep("shop/nope"), &slug("shop-db"))
                .await
                .map(drop),
            "no deployment \"shop/nope\"",
        ),
        (
            catalog
                .transition_cluster("zed", &nope, ClusterState::Active)
                .await,
            "no cluster \"nope\"",
        ),
        (
            catalog
                .create_repository(
                    "zed",
                    Repository {
                        project: Some(nope.clone()),
                        ..Repository::new(slug("r"), "https://git.example.com/r.git")
                    },
                )
                .await,
            "no project \"nope\"",
        ),
    ];
    for (result, message) in cases {
        assert_eq!(result.unwrap_err().to_string(), message);
    }
}

// ---- permissions ------------------------------------------------------------------------

/// What each operation of the matrix needs, written out independently of the code.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Needs {
    /// A role on the object or on something inside it.
    Visible,
    View,
    Manage,
    Trigger,
    ProjectAdmin,
    CatalogAdmin,
}

/// Whether `role` (`None`: no role; catalog admins are handled apart) may do what `needs`
/// asks: user reads, developer also manages deployments and triggers, admin everything in the
/// project.
fn expected(role: Option<Role>, catalog_admin: bool, needs: Needs) -> bool {
    if catalog_admin {
        return true;
    }
    match (role, needs) {
        (_, Needs::CatalogAdmin) | (None, _) => false,
        (Some(_), Needs::View | Needs::Visible) => true,
        (Some(Role::User), _) => false,
        (Some(Role::Developer), Needs::Manage | Needs::Trigger) => true,
        (Some(Role::Developer), _) => false,
        (Some(Role::Admin), _) => true,
    }
}

/// Where an operation checks the role.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    Catalog,
    Project,
    Group,
    Deployment,
}

/// The operations of the API, each run against `target` (a deployment of group shop/web).
async fn run_op(
    catalog: &Catalog,
    op: &str,
    actor: &str,
    target: &DeploymentRef,
) -> Result<(), CatalogError> {
    let shop = slug("shop");
    let web = slug("web");
    let now = SystemTime::now();
    match op {
        "view project" => catalog.project(actor, &shop).await.map(drop),
        "view scope" => catalog.scope(actor, target).await.map(drop),
        "monitor status" => catalog.monitor_status(actor, target, now).await.map(drop),
        "trigger" => catalog
            .trigger(actor, target, LifecycleAction::Pause)
            .await
            .map(drop),
        "update deployment" => {
            let s = DeploymentSettings {
                subdomain: Some("changed".to_string()),
                scope: Some(slug("staging")),
                ..DeploymentSettings::default()
            };
            catalog.update_deployment(actor, target, s).await
        }
        "remove deployment" => catalog.remove_deployment(actor, target).await,
        "add monitor" => {
            let m = Monitor::http(slug("health"), "http://127.0.0.1:1/health");
            catalog.add_monitor(actor, target, m).await
        }
        "link cluster" => catalog.link_cluster(actor, target, &slug("us-1")).await,
        "create deployment" => {
            catalog
                .create_deployment(actor, &shop, &web, Deployment::new(slug("qa")))
                .await
        }
        "datasource secret" => catalog
            .datasource_secret(actor, target, &slug("shop-db"))
            .await
            .map(drop),
        "update group defaults" => {
            let defaults = DeploymentSettings {
                domain: Some("example.org".to_string()),
                ..sample_catalog()
                    .group("shop", "web")
                    .unwrap()
                    .defaults
                    .clone()
            };
            catalog
                .update_group_defaults(actor, &shop, &web, defaults)
                .await
        }
        "edit project" => {
            catalog
                .edit_project(actor, &shop, |p| {
                    p.groups[0].scopes[1].production = true;
                    p.name = "The Shop".to_string();
                })
                .await
        }
        "set project role" => {
            catalog
                .set_project_role(actor, &shop, "frank", Some(Role::User))
                .await
        }
        "create group" => {
            catalog
                .create_group(actor, &shop, DeploymentGroup::new(slug("api"), "rust"))
                .await
        }
        "set group role" => {
            catalog
                .set_group_role(actor, &shop, &web, "frank", Some(Role::Admin))
                .await
        }
        "set deployment role" => {
            catalog
                .set_deployment_role(actor, target, "frank", Some(Role::Developer))
                .await
        }
        "create project datasource" => {
            let mut ds = Datasource::new(slug("cache"), DataType::Postgresql, DataUsage::Storage);
            ds.project = Some(shop.clone());
            catalog.create_datasource(actor, ds).await
        }
        "publish project image" => catalog
            .publish_image(actor, &slug("shop-theme"), &slug("theme"), "2.0.0")
            .await
            .map(drop),
        "create project" => {
            catalog
                .create_project(actor, Project::new(slug("wiki"), actor))
                .await
        }
        "create cluster" => catalog.create_cluster(actor, Cluster::new("AP 1")).await,
        "transition cluster" => {
            catalog
                .transition_cluster(actor, &slug("us-1"), ClusterState::Init)
                .await
        }
        "create shared repository" => {
            let r = Repository::new(slug("tools"), "https://git.example.com/tools.git");
            catalog.create_repository(actor, r).await
        }
        "create shared datasource" => {
            let ds = Datasource::new(slug("archive"), DataType::S3like, DataUsage::RemoteBackup);
            catalog.create_datasource(actor, ds).await
        }
        "publish shared image" => catalog
            .publish_image(actor, &slug("shop-app"), &slug("app"), "2.0.0")
            .await
            .map(drop),
        "export" => catalog.export(actor).await.map(drop),
        other => unreachable!("unknown op {other}"),
    }
}

const OPS: &[(&str, Level, Needs)] = &[
    ("view project", Level::Project, Needs::Visible),
    ("view scope", Level::Deployment, Needs::View),
    ("monitor status", Level::Deployment, Needs::View),
    ("trigger", Level::Deployment, Needs::Trigger),
    ("datasource secret", Level::Deployment, Needs::Trigger),
    ("update deployment", Level::Deployment, Needs::Manage),
    ("remove deployment", Level::Deployment, Needs::Manage),
    ("add monitor", Level::Deployment, Needs::Manage),
    ("link cluster", Level::Deployment, Needs::Manage),
    ("create deployment", Level::Group, Needs::Manage),
    ("update group defaults", Level::Group, Needs::Manage),
    ("edit project", Level::Project, Needs::ProjectAdmin),
    ("set project role", Level::Project, Needs::ProjectAdmin),
    ("create group", Level::Project, Needs::ProjectAdmin),
    ("set group role", Level::Project, Needs::ProjectAdmin),
    ("set deployment role", Level::Project, Needs::ProjectAdmin),
    (
        "create project datasource",
        Level::Project,
        Needs::ProjectAdmin,
    ),
    ("publish project image", Level::Project, Needs::Trigger),
    ("create project", Level::Catalog, Needs::CatalogAdmin),
    ("create cluster", Level::Catalog, Needs::CatalogAdmin),
    ("transition cluster", Level::Catalog, Needs::CatalogAdmin),
    (
        "create shared repository",
        Level::Catalog,
        Needs::CatalogAdmin,
    ),
    (
        "create shared datasource",
        Level::Catalog,
        Needs::CatalogAdmin,
    ),
    ("publish shared image", Level::Catalog, Needs::CatalogAdmin),
    ("export", Level::Catalog, Needs::CatalogAdmin),
];

/// The effective role of each sample user, written out: `(user, project, group web,
/// deployment prod, deployment staging)`. carol has only a group override (developer); dave is
/// a project developer demoted to user on prod by a deployment override.
/// `(user, project, group, prod, staging)` roles.
type RoleRow = (
    &'static str,
    Option<Role>,
    Option<Role>,
    Option<Role>,
    Option<Role>,
);

const ROLES: &[RoleRow] = &[
    (
        "alice",
        Some(Role::Admin),
        Some(Role::Admin),
        Some(Role::Admin),
        Some(Role::Admin),
    ),
    (
        "dave",
        Some(Role::Developer),
        Some(Role::Developer),
        Some(Role::User),
        Some(Role::Developer),
    ),
    (
        "bob",
        Some(Role::User),
        Some(Role::User),
        Some(Role::User),
        Some(Role::User),
    ),
    (
        "carol",
        None,
        Some(Role::Developer),
        Some(Role::Developer),
        Some(Role::Developer),
    ),
    ("zed", None, None, None, None),
    ("erin", None, None, None, None),
    ("root", None, None, None, None),
];

#[tokio::test]
async fn every_role_times_every_action_with_and_without_overrides() {
    let mut checked = 0;
    for &(user, project_role, group_role, prod_role, staging_role) in ROLES {
        let catalog_admin = user == "root";
        for (deployment, deployment_role) in
            [("shop/prod", prod_role), ("shop/staging", staging_role)]
        {
            let target = dep(deployment);
            for &(op, level, needs) in OPS {
                let role = match level {
                    Level::Catalog => None,
                    // Visible to whoever has a role on it or on something inside it.
                    Level::Project if needs == Needs::Visible => {
                        project_role.or(group_role).or(prod_role).or(staging_role)
                    }
                    Level::Project => project_role,
                    Level::Group => group_role,
                    Level::Deployment => deployment_role,
                };
                let allowed = expected(role, catalog_admin, needs);
                // A fresh catalog per call, so each change applies to the sample.
                let catalog = catalog();
                let result = run_op(&catalog, op, user, &target).await;
                match (&result, allowed) {
                    (Ok(()), true) => {}
                    (Err(e), false) if e.is_forbidden() => {
                        let msg = e.to_string();
                        assert!(
                            msg.starts_with(&format!("user \"{user}\" may not ")),
                            "{msg}"
                        );
                        let shown = match (needs, role) {
                            (Needs::CatalogAdmin, _) => "only catalog admins may".to_string(),
                            (_, None) => "they have no role there".to_string(),
                            (_, Some(r)) => format!("their role there is {r}"),
                        };
                        assert!(msg.contains(&shown), "{op} as {user}: {msg}");
                        assert_eq!(
                            catalog.export("root").await.unwrap(),
                            sample_catalog(),
                            "a refused {op} changes nothing"
                        );
                    }
                    _ => panic!(
                        "{op} as {user} on {deployment} (role {role:?}): expected {}, got {result:?}",
                        if allowed { "success" } else { "a refusal" }
                    ),
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, ROLES.len() * 2 * OPS.len());

    // The effective roles the table assumes are the ones the model computes.
    let data = sample_catalog();
    for &(user, project_role, group_role, prod_role, staging_role) in ROLES {
        let admin = (user == "root").then_some(Role::Admin);
        let p = Target::Project(slug("shop"));
        let g = Target::Group(slug("shop"), slug("web"));
        assert_eq!(data.role_of(user, &p), admin.or(project_role), "{user}");
        assert_eq!(data.role_of(user, &g), admin.or(group_role), "{user}");
        assert_eq!(
            data.role_of(user, &Target::Deployment(dep("shop/prod"))),
            admin.or(prod_role),
            "{user}"
        );
        assert_eq!(
            data.role_of(user, &Target::Deployment(dep("shop/staging"))),
            admin.or(staging_role),
            "{user}"
        );
    }
}

#[tokio::test]
async fn refusals_say_who_what_where_and_what_would_do() {
    let catalog = catalog();
    let cases: Vec<(Result<(), CatalogError>, &str)> = vec![
        (
            catalog.scope("zed", &dep("shop/prod")).await.map(drop),
            "user \"zed\" may not read the scope of deployment shop/prod: they have no role there (needs role user or developer or admin)",
        ),
        (
            catalog.remove_deployment("dave", &dep("shop/prod")).await,
            "user \"dave\" may not manage deployments on deployment shop/prod: their role there is user (needs role developer or admin)",
        ),
        (
            catalog
                .set_project_role("dave", &slug("shop"), "x", Some(Role::Admin))
                .await,
            "user \"dave\" may not manage the project on project shop: their role there is developer (needs role admin)",
        ),
        (
            catalog.create_cluster("alice", Cluster::new("AP 1")).await,
            "user \"alice\" may not manage the catalog (projects and shared objects): only catalog admins may",
        ),
    ];
    for (result, message) in cases {
        assert_eq!(result.unwrap_err().to_string(), message);
    }
}

#[tokio::test]
async fn listing_projects_shows_only_visible_ones() {
    let catalog = catalog();
    let names = |ps: Vec<Project>| {
        ps.into_iter()
            .map(|p| p.slug.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(catalog.projects("root").await.unwrap()),
        ["shop", "blog"]
    );
    assert_eq!(names(catalog.projects("bob").await.unwrap()), ["shop"]);
    assert_eq!(names(catalog.projects("erin").await.unwrap()), ["blog"]);
    assert!(catalog.projects("zed").await.unwrap().is_empty());
}

// ---- monitors ---------------------------------------------------------------------------

/// Answers with scripted responses, in order, and counts calls.
#[derive(Default)]
struct Scripted {
    answers: Mutex<Vec<HttpResponse>>,
    calls: Mutex<Vec<String>>,
}

impl Scripted {
    fn then(self, status: Option<u16>, body: &str) -> Self {
        self.answers.lock().unwrap().push(HttpResponse {
            status,
            body: body.to_string(),
            error: status.is_none().then(|| "connection refused".to_string()),
            broken: false,
        });
        self
    }
}

#[async_trait]
impl HttpChecker for Scripted {
    async fn check(&self, check: &HttpCheck) -> HttpResponse {
        self.calls.lock().unwrap().push(check.url.clone());
        let mut answers = self.answers.lock().unwrap();
        assert!(!answers.is_empty(), "an unexpected check of {}", check.url);
        answers.remove(0)
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

#[tokio::test]
async fn the_runner_checks_due_monitors_computes_states_and_prunes_logs() {
    let store = Arc::new(MemoryCatalog::with(sample_catalog()));
    let checker = Arc::new(
        Scripted::default()
            .then(Some(200), "ok")
            .then(Some(503), "down")
            .then(None, "")
            .then(None, "")
            .then(Some(200), "ok"),
    );
    let runner = MonitorRunner::new(store.clone(), checker.clone());
    let key = "shop/prod/home";
    let state = |statuses: Vec<MonitorStatus>| {
        assert_eq!(statuses.len(), 1, "only prod has a monitor");
        statuses[0].state
    };

    let catalog = Catalog::new(store.clone());
    let before = catalog
        .monitor_status("bob", &dep("shop/prod"), at(0))
        .await
        .unwrap();
    assert_eq!(before[0].state, MonitorState::Unknown, "no results yet");

    assert_eq!(
        state(runner.run_due(at(0)).await.unwrap()),
        MonitorState::Ok
    );
    // Not due again before its interval (60 s): no check.
    assert_eq!(
        state(runner.run_due(at(30)).await.unwrap()),
        MonitorState::Ok
    );
    assert_eq!(checker.calls.lock().unwrap().len(), 1);
    assert_eq!(
        state(runner.run_due(at(60)).await.unwrap()),
        MonitorState::Warning,
        "one failure"
    );
    let last = store.monitor_log(key, 1).await.unwrap().remove(0);
    assert_eq!(last.message, "status 503, expected 200");
    assert_eq!(
        state(runner.run_due(at(120)).await.unwrap()),
        MonitorState::Warning
    );
    assert_eq!(
        state(runner.run_due(at(180)).await.unwrap()),
        MonitorState::Error,
        "three failures in a row"
    );
    let status = catalog
        .monitor_status("bob", &dep("shop/prod"), at(200))
        .await
        .unwrap();
    assert_eq!(status[0].state, MonitorState::Error);
    assert_eq!(
        status[0].last.as_ref().unwrap().message,
        "connection refused"
    );
    assert_eq!(
        catalog
            .monitor_status("bob", &dep("shop/prod"), at(180 + 181))
            .await
            .unwrap()[0]
            .state,
        MonitorState::Unknown,
        "stale after three intervals"
    );
    assert_eq!(store.monitor_log(key, 100).await.unwrap().len(), 4);

    // prod's scope keeps the log for 3600 s: the next check prunes what is older.
    assert_eq!(
        state(runner.run_due(at(3700)).await.unwrap()),
        MonitorState::Ok
    );
    let log = store.monitor_log(key, 100).await.unwrap();
    let times: Vec<SystemTime> = log.iter().map(|e| e.ts).collect();
    assert_eq!(times, [at(3700), at(180), at(120)]);
    assert!(checker.answers.lock().unwrap().is_empty());
}

/// Holds every check until `expected` checks are in flight at once.
struct Gate {
    expected: usize,
    in_flight: tokio::sync::watch::Sender<usize>,
}

#[async_trait]
impl HttpChecker for Gate {
    async fn check(&self, _: &HttpCheck) -> HttpResponse {
        self.in_flight.send_modify(|n| *n += 1);
        let mut rx = self.in_flight.subscribe();
        let _ = rx.wait_for(|n| *n >= self.expected).await;
        HttpResponse {
            status: Some(200),
            ..HttpResponse::default()
        }
    }
}

#[tokio::test]
async fn due_checks_run_concurrently() {
    let mut data = sample_catalog();
    for d in ["shop/staging", "shop/preview", "blog/www"] {
        data.deployment_mut(&dep(d))
            .unwrap()
            .monitors
            .push(Monitor::http(slug("home"), "http://127.0.0.1:1/"));
    }
    data.validate().unwrap();
    let store = Arc::new(MemoryCatalog::with(data));
    let (tx, _) = tokio::sync::watch::channel(0);
    let gate = Arc::new(Gate {
        expected: 4,
        in_flight: tx,
    });
    let runner = MonitorRunner::new(store, gate.clone()).concurrency(4);
    // Sequential checks would wait for each other forever: the timeout turns that into a
    // failure.
    let statuses = tokio::time::timeout(Duration::from_secs(30), runner.run_due(at(0)))
        .await
        .expect("the four checks ran at the same time")
        .unwrap();
    let refs: Vec<String> = statuses.iter().map(|s| s.deployment.to_string()).collect();
    assert_eq!(
        refs,
        ["shop/prod", "shop/staging", "shop/preview", "blog/www"]
    );
    assert!(statuses.iter().all(|s| s.state == MonitorState::Ok));
}

#[test]
fn states_follow_the_thresholds() {
    let mut m = Monitor::http(slug("home"), "https://x/");
    m.thresholds = Thresholds {
        warning_ms: Some(500),
        error_ms: Some(2000),
        warning_after_failures: 2,
        error_after_failures: 4,
    };
    let e = |secs: u64, ok: bool, ms: u64| MonitorLogEntry {
        monitor: "k".to_string(),
        ts: at(secs),
        ok,
        status: None,
        duration: Duration::from_millis(ms),
        message: String::new(),
        failure: (!ok).then_some(CheckFailure::Down),
    };
    let now = at(300);
    let cases: Vec<(Vec<MonitorLogEntry>, MonitorState)> = vec![
        (vec![], MonitorState::Unknown),
        (vec![e(300, true, 100)], MonitorState::Ok),
        (vec![e(300, true, 501)], MonitorState::Warning),
        (vec![e(300, true, 2001)], MonitorState::Error),
        (vec![e(300, false, 1), e(240, true, 1)], MonitorState::Ok),
        (
            vec![e(300, false, 1), e(240, false, 1)],
            MonitorState::Warning,
        ),
        (
            vec![
                e(300, false, 1),
                e(290, false, 1),
                e(280, false, 1),
                e(270, false, 1),
            ],
            MonitorState::Error,
        ),
        (vec![e(300, true, 1), e(290, false, 1)], MonitorState::Ok),
        (vec![e(300 - 181, true, 1)], MonitorState::Unknown),
    ];
    for (recent, state) in cases {
        assert_eq!(monitor_state(&m, &recent, now), state, "{recent:?}");
    }
    m.thresholds.warning_after_failures = 5;
    assert!(
        m.check_thresholds()
            .unwrap_err()
            .contains("above error_after_failures")
    );
}
