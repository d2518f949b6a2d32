//! The catalog (object model) on SQLite and PostgreSQL: deployer-core's catalog contract,
//! durability across reopen, and writers in separate processes racing through the Catalog API.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::pg::PgServer;
use deployer_catalog::fixture::catalog_contract::{self, sample_catalog};
use deployer_catalog::*;
use deployer_store::{PostgresStore, SCHEMA_VERSION, SqliteStore};

#[tokio::test]
async fn sqlite_file_catalog_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    catalog_contract::all(|| {
        n += 1;
        let path = dir.path().join(format!("catalog-{n}.db"));
        async move { SqliteStore::open(path).await.unwrap() }
    })
    .await;
}

#[tokio::test]
async fn sqlite_memory_catalog_meets_the_contract() {
    catalog_contract::all(|| async { SqliteStore::memory().await.unwrap() }).await;
}

#[tokio::test]
async fn postgres_catalog_meets_the_contract() {
    let server = PgServer::start().await;
    catalog_contract::all(|| {
        let server = &server;
        async move {
            PostgresStore::connect_with_pool_size(&server.database().await, 4)
                .await
                .unwrap()
        }
    })
    .await;
}

#[tokio::test]
async fn the_catalog_and_monitor_logs_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/deployer.db");
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let catalog = Catalog::new(Arc::new(store.clone()));
    catalog.import("root", sample_catalog()).await.unwrap();
    let prod: DeploymentRef = "shop/prod".parse().unwrap();
    catalog
        .transition_cluster("root", &Slug::new("us-1").unwrap(), ClusterState::Init)
        .await
        .unwrap();
    let now = SystemTime::now();
    store
        .append_monitor_log(&MonitorLogEntry {
            monitor: monitor_key(&prod, &Slug::new("home").unwrap()),
            ts: now,
            ok: true,
            status: Some(200),
            duration: Duration::from_millis(20),
            message: String::new(),
            failure: None,
        })
        .await
        .unwrap();
    store.close().await;

    let store = SqliteStore::open(&path).await.unwrap();
    let stored = store.load_catalog().await.unwrap();
    assert_eq!(stored.revision, 2);
    assert_eq!(
        stored.data.cluster("us-1").unwrap().state,
        ClusterState::Init
    );
    let catalog = Catalog::new(Arc::new(store));
    let status = catalog.monitor_status("bob", &prod, now).await.unwrap();
    assert_eq!(status[0].state, MonitorState::Ok);
    let request = catalog
        .trigger("alice", &prod, LifecycleAction::Deploy)
        .await
        .unwrap();
    assert_eq!(request.scope.datasources[1].connection, "***");
    // The refusal does not depend on the backend.
    let err = catalog
        .trigger("bob", &prod, LifecycleAction::Deploy)
        .await
        .unwrap_err();
    assert!(err.is_forbidden(), "{err}");
}

#[tokio::test]
async fn a_corrupt_catalog_row_is_reported_not_panicked_on() {
    // Overwrite the stored document with something that is not a valid catalog.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let file = SqliteStore::open(&path).await.unwrap();
    file.save_catalog(0, &sample_catalog()).await.unwrap();
    file.close().await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE catalog SET body = '{\"projects\": [{\"slug\": \"Bad\"}]}'")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let file = SqliteStore::open(&path).await.unwrap();
    let err = file.load_catalog().await.unwrap_err().to_string();
    assert!(err.starts_with("corrupt run record"), "{err}");
    assert!(err.contains("\"Bad\" is not a valid slug"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_on_separate_pools_never_lose_a_change() {
    let server = PgServer::start().await;
    let url = server.database().await;
    let first = PostgresStore::connect_with_pool_size(&url, 2)
        .await
        .unwrap();
    Catalog::new(Arc::new(first))
        .import("root", sample_catalog())
        .await
        .unwrap();
    // Separate pools, as separate controller processes would have.
    let mut writers = Vec::new();
    for i in 0..6 {
        let store = PostgresStore::connect_with_pool_size(&url, 1)
            .await
            .unwrap();
        let catalog = Catalog::new(Arc::new(store));
        writers.push(tokio::spawn(async move {
            catalog
                .create_deployment(
                    "dave",
                    &Slug::new("shop").unwrap(),
                    &Slug::new("web").unwrap(),
                    Deployment::new(Slug::new(format!("qa-{i}")).unwrap()),
                )
                .await
        }));
    }
    for w in writers {
        w.await.unwrap().unwrap();
    }
    let store = PostgresStore::connect(&url).await.unwrap();
    let stored = store.load_catalog().await.unwrap();
    assert_eq!(stored.revision, 1 + 6, "one save per change");
    let web = stored.data.group("shop", "web").unwrap();
    assert_eq!(web.deployments.len(), 3 + 6);
}
