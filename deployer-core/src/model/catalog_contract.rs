//! The behaviour every [`CatalogStore`] must have, as async checks that panic on a violation,
//! and a sample catalog for tests.
//!
//! A backend crate runs each check against a fresh store of its kind:
//!
//! ```
//! use deployer_core::MemoryCatalog;
//! use deployer_core::fixture::catalog_contract;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! catalog_contract::all(|| async { MemoryCatalog::new() }).await;
//! # });
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::{CatalogData, CatalogStore, MonitorLogEntry, Slug};

/// A catalog with every kind of object: admin `root`; project `shop` (owner alice; alice
/// admin, dave developer, bob user; group `web` with scopes `production` and `staging`, an
/// override making carol a developer of the group and one making dave a user of `prod`;
/// deployments `prod` (subscribed to image `shop-app/app`, monitor `home`), `staging` and
/// `preview`); project `blog` (erin admin, group `site` with deployment `www`, also subscribed
/// to `shop-app/app`); repositories `shop-app` (shared) and `shop-theme`
/// (reserved to `shop`); clusters `eu-1` (active) and `us-1` (draft); datasources `backups`
/// (s3like, remote_backup) and `shop-db` (postgresql, with a secret connection string).
pub const SAMPLE_YAML: &str = r#"
admins: [root]
clusters:
  - uid: 0190f3a2-0000-7000-8000-00000000c001
    name: EU 1
    state: active
    hosts: [fe001, fe002]
  - uid: 0190f3a2-0000-7000-8000-00000000c002
    name: US 1
    endpoint: https://k8s.us-1.example.com
repositories:
  - slug: shop-app
    url: https://git.example.com/shop/app.git
    branches: [main, develop]
    images:
      - slug: app
        name: registry.example.com/shop/app
        versions: ["1.0.0"]
  - slug: shop-theme
    url: https://git.example.com/shop/theme.git
    project: shop
    branches: [main]
    images:
      - slug: theme
        name: registry.example.com/shop/theme
datasources:
  - slug: backups
    data_type: s3like
    usage: remote_backup
    bucket: shop-backups
    region: eu-west-1
  - slug: shop-db
    data_type: postgresql
    usage: application
    project: shop
    connection: postgres://shop:hunter2@db.internal/shop
projects:
  - slug: shop
    name: Shop
    owner: alice
    namespace: {uid: 0190f3a2-7c1e-7d4b-9a2f-3b5c6d7e8f90}
    users:
      - {user: alice, role: admin}
      - {user: dave, role: developer}
      - {user: bob, role: user}
    groups:
      - slug: web
        group_type: odoo
        clusters: [eu-1]
        users:
          - {user: carol, role: developer}
        scopes:
          - slug: production
            production: true
            monitor_log_delete_after_seconds: 3600
            backup_datasource: backups
            datasources: [shop-db]
          - slug: staging
            datasources: [shop-db]
        defaults:
          deployment_type: odoo
          branch: {repository: shop-app, branch: main}
          image: {repository: shop-app, image: app}
          domain: shop.example.com
          books:
            deploy: deploy
            pause: pause
            backup: backup
          values: {workers: 2}
        deployments:
          - slug: prod
            settings:
              scope: production
              subdomain: www
              subscribe_image: true
              values: {workers: 8}
            users:
              - {user: dave, role: user}
            monitors:
              - slug: home
                interval_seconds: 60
                check: {type: http_request, url: "https://www.shop.example.com/"}
                thresholds: {warning_ms: 500, error_ms: 2000}
          - slug: staging
            settings:
              scope: staging
              branch: {repository: shop-app, branch: develop}
          - slug: preview
            clusters: [us-1]
  - slug: blog
    owner: erin
    namespace: {uid: 0190f3a2-7c1e-7d4b-8000-0000000b1061}
    users:
      - {user: erin, role: admin}
    groups:
      - slug: site
        group_type: wordpress
        clusters: [eu-1]
        deployments:
          - slug: www
            settings:
              image: {repository: shop-app, image: app}
              subscribe_image: true
              books: {deploy: deploy-blog}
"#;

/// [`SAMPLE_YAML`], parsed and validated.
pub fn sample_catalog() -> CatalogData {
    CatalogData::from_yaml_str(SAMPLE_YAML, "sample.yaml")
        .unwrap_or_else(|e| panic!("the sample catalog is valid: {e}"))
}

/// Every check, in order, each against a fresh store from `make`.
pub async fn all<S, F, Fut>(mut make: F)
where
    S: CatalogStore,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    save_and_load(&make().await).await;
    stale_saves_are_refused(&make().await).await;
    racing_saves_one_wins(&make().await).await;
    monitor_log(&make().await).await;
}

/// An empty store is at revision 0; a save stores the catalog (secrets included) and bumps the
/// revision.
pub async fn save_and_load(store: &impl CatalogStore) {
    let empty = store.load_catalog().await.unwrap();
    assert_eq!(empty.revision, 0);
    assert_eq!(empty.data, CatalogData::default());

    let data = sample_catalog();
    assert_eq!(store.save_catalog(0, &data).await.unwrap(), Some(1));
    let loaded = store.load_catalog().await.unwrap();
    assert_eq!(loaded.revision, 1);
    assert_eq!(loaded.data, data);
    let db = loaded.data.datasource("shop-db").unwrap();
    assert_eq!(
        db.connection.as_ref().unwrap().expose(),
        "postgres://shop:hunter2@db.internal/shop",
        "secrets are stored as they are"
    );

    let mut changed = data.clone();
    changed.admins.push("ops".to_string());
    assert_eq!(store.save_catalog(1, &changed).await.unwrap(), Some(2));
    let loaded = store.load_catalog().await.unwrap();
    assert_eq!((loaded.revision, loaded.data), (2, changed));
}

/// A save against an old revision stores nothing.
pub async fn stale_saves_are_refused(store: &impl CatalogStore) {
    let data = sample_catalog();
    assert_eq!(store.save_catalog(0, &data).await.unwrap(), Some(1));
    assert_eq!(
        store
            .save_catalog(0, &CatalogData::default())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .save_catalog(5, &CatalogData::default())
            .await
            .unwrap(),
        None
    );
    let loaded = store.load_catalog().await.unwrap();
    assert_eq!((loaded.revision, loaded.data), (1, data));
}

/// Of several saves against the same revision, exactly one is stored.
pub async fn racing_saves_one_wins(store: &impl CatalogStore) {
    let base = sample_catalog();
    assert_eq!(store.save_catalog(0, &base).await.unwrap(), Some(1));
    let versions: Vec<CatalogData> = (0..6)
        .map(|i| {
            let mut d = base.clone();
            d.admins.push(format!("writer-{i}"));
            d
        })
        .collect();
    let results =
        futures::future::join_all(versions.iter().map(|d| store.save_catalog(1, d))).await;
    let winners: Vec<usize> = results
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.unwrap().map(|rev| (i, rev)))
        .map(|(i, rev)| {
            assert_eq!(rev, 2);
            i
        })
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one racing save wins: {winners:?}"
    );
    let loaded = store.load_catalog().await.unwrap();
    assert_eq!(loaded.revision, 2);
    assert_eq!(loaded.data, versions[winners[0]]);
}

fn entry(monitor: &str, us: u64, ok: bool) -> MonitorLogEntry {
    MonitorLogEntry {
        monitor: monitor.to_string(),
        ts: UNIX_EPOCH + Duration::from_micros(us),
        ok,
        status: ok.then_some(200),
        duration: Duration::from_micros(1_234_567),
        message: if ok {
            String::new()
        } else {
            "status 503, expected 200".to_string()
        },
    }
}

/// Monitor logs: per monitor, newest first, limited, exact timestamps, pruned by age.
pub async fn monitor_log(store: &impl CatalogStore) {
    let key = format!("shop/prod/{}", Slug::new("home").unwrap());
    let base = 1_700_000_000_000_001u64;
    for i in 0..5 {
        store
            .append_monitor_log(&entry(&key, base + i * 60_000_000, i % 2 == 0))
            .await
            .unwrap();
    }
    store
        .append_monitor_log(&entry("blog/www/home", base, true))
        .await
        .unwrap();
    assert!(
        store
            .monitor_log("nobody/none/x", 10)
            .await
            .unwrap()
            .is_empty()
    );

    let newest = store.monitor_log(&key, 2).await.unwrap();
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[0], entry(&key, base + 4 * 60_000_000, true));
    assert_eq!(newest[1], entry(&key, base + 3 * 60_000_000, false));
    assert_eq!(store.monitor_log(&key, 100).await.unwrap().len(), 5);

    let cutoff: SystemTime = UNIX_EPOCH + Duration::from_micros(base + 2 * 60_000_000);
    assert_eq!(store.prune_monitor_log(&key, cutoff).await.unwrap(), 2);
    let left = store.monitor_log(&key, 100).await.unwrap();
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|e| e.ts >= cutoff), "{left:?}");
    assert_eq!(store.prune_monitor_log(&key, cutoff).await.unwrap(), 0);
    assert_eq!(
        store.monitor_log("blog/www/home", 10).await.unwrap().len(),
        1,
        "other monitors' logs are untouched"
    );
}
