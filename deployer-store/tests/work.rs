//! Distributed runs on the PostgreSQL store, against a throwaway server: the `WorkQueue`
//! contract (`common/work.rs`), which worker recorded each task, SQLite's refusal, and the
//! claim overhead per entry (printed; run with `--nocapture`).

mod common;

use std::sync::Arc;

use common::pg::PgServer;
use common::work;
use deployer_core::*;
use deployer_store::PostgresStore;

async fn queue(server: &PgServer) -> work::Queue {
    Arc::new(
        PostgresStore::connect_with_pool_size(&server.database().await, 12)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_meets_the_work_queue_contract() {
    let server = PgServer::start().await;
    work::all(|| queue(&server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_wakes_the_change_feeds_of_other_stores() {
    let server = PgServer::start().await;
    let url = server.database().await;
    let writer: work::Queue = Arc::new(PostgresStore::connect(&url).await.unwrap());
    let watcher: work::Queue = Arc::new(PostgresStore::connect(&url).await.unwrap());
    work::work_wakes_change_feeds(writer, watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_records_the_worker_that_ran_it() {
    let server = PgServer::start().await;
    let url = server.database().await;
    let store = PostgresStore::connect(&url).await.unwrap();
    let q: work::Queue = Arc::new(store.clone());
    let run = work::submit(&q, vec![work::stage(2, None, &["web1"])]).await;
    let claim = WorkQueue::claim(
        &*q,
        &work::worker("w-7", &[]),
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap()
    .unwrap();
    let mut task = q.tasks(&run).await.unwrap().remove(0);
    task.state = TaskState::Succeeded;
    q.record_task(&claim, &task).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (worker,): (Option<String>,) =
        sqlx::query_as("SELECT worker FROM run_tasks WHERE run_id = $1")
            .bind(run.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(worker.as_deref(), Some("w-7"));
    // And read back: the record names the claim's worker, whatever the record said.
    assert_eq!(task.worker, None);
    assert_eq!(
        q.tasks(&run).await.unwrap()[0].worker.as_deref(),
        Some("w-7")
    );
    assert_eq!(
        q.host_tasks(&run, "web1").await.unwrap()[0]
            .worker
            .as_deref(),
        Some("w-7")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_learns_which_commands_it_lacks() {
    let server = PgServer::start().await;
    let store = PostgresStore::connect(&server.database().await)
        .await
        .unwrap();
    let q: work::Queue = Arc::new(store.clone());
    let run = work::submit(&q, vec![work::stage(2, None, &["web1", "other1"])]).await;
    let mut me = work::worker("w1", &[]);
    me.commands = vec!["noop".to_string()];
    assert!(
        WorkQueue::claim(&*q, &me, std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.missing_commands(&me).await.unwrap(),
        [(run.clone(), vec!["other".to_string()])]
    );
    // A worker of another zone has no work there: nothing to say.
    let mut elsewhere = work::worker("w2", &["mars"]);
    elsewhere.commands.clear();
    let zoned = work::submit(&q, {
        let mut s = work::stage(1, None, &[]);
        s.entries.push(("web9".to_string(), Some("eu".to_string())));
        vec![s]
    })
    .await;
    let listed: Vec<RunId> = store
        .missing_commands(&elsewhere)
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&run), "not {zoned}");
    me.commands.push("other".to_string());
    assert!(store.missing_commands(&me).await.unwrap().is_empty());
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn workers_are_refused_a_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("runs.db").display());
    let err = deployer_store::open_work_queue(&url).await.err().unwrap();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.contains(
            "a SQLite store is driven by one controller: workers need a PostgreSQL store (--store postgres://…)"
        ),
        "{chain}"
    );
    assert!(!dir.path().join("runs.db").exists(), "nothing was created");
}

/// Not a timing assertion: prints what one worker's claim + finish_entry costs per entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_overhead_per_entry() {
    let server = PgServer::start().await;
    let per_entry = work::claim_and_finish_overhead(queue(&server).await, 1000).await;
    println!("claim + finish_entry, 1000 entries, one worker, sequential: {per_entry:?} per entry");
}
