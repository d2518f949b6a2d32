//! `WorkQueue::resume_work` on a throwaway PostgreSQL server: what a resume of a submitted run
//! refuses (a running run, a stopped one without force, a succeeded one, one never
//! submitted), and what it hands back to workers (entries not done, entries of tasks run
//! again; done ones are not claimed again); and a `Worker` with several slots, whose one
//! watcher of a run cancels every running entry of it when its cancel is requested.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::pg::PgServer;
use common::work::{Queue, stage, submit, task_of as task, worker};
use deployer_core::*;
use deployer_store::PostgresStore;

const LONG: Duration = Duration::from_secs(60);

async fn queue(server: &PgServer) -> Queue {
    Arc::new(
        PostgresStore::connect_with_pool_size(&server.database().await, 4)
            .await
            .unwrap(),
    )
}

/// Records the claim's task with `state` and ends the entry with `outcome`.
async fn end(store: &Queue, run: &RunId, claim: &Claim, state: TaskState, outcome: EntryOutcome) {
    let mut t = task(store, run, claim).await;
    t.state = state;
    t.attempts = 1;
    store.record_task(claim, &t).await.unwrap();
    store.finish_entry(claim, outcome).await.unwrap();
}

/// Claims everything claimable for `w`, returning the claims.
async fn claim_all(store: &Queue, w: &WorkerInfo) -> Vec<Claim> {
    let mut claims = Vec::new();
    while let Some(c) = WorkQueue::claim(&**store, w, LONG).await.unwrap() {
        claims.push(c);
    }
    claims
}

fn hosts(claims: &[Claim]) -> BTreeSet<String> {
    claims.iter().map(|c| c.host.clone()).collect()
}

fn refusal(r: Result<(), StoreError>) -> String {
    match r {
        Err(StoreError::NotResumable { why, .. }) => why,
        other => panic!("expected NotResumable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_work_on_postgres() {
    let server = PgServer::start().await;
    eprintln!("a running, a succeeded and a never submitted run are refused");
    refused_unless_finished_and_submitted(queue(&server).await).await;
    eprintln!("a stopped run needs force, names its entry; done entries are not claimed again");
    a_stopped_run_resumes_only_with_force(queue(&server).await).await;
    eprintln!("failed and never claimed entries are claimed again; the cancel request is gone");
    failed_entries_are_claimed_again(queue(&server).await).await;
    eprintln!("done tasks run again when the caller says so");
    rerun_tasks_are_claimed_again(queue(&server).await).await;
}

async fn refused_unless_finished_and_submitted(store: Queue) {
    let run = submit(&store, vec![stage(2, None, &["web1", "web2"])]).await;
    let w = worker("w1", &[]);
    let first = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    let why = refusal(store.resume_work(&run, &[], true).await);
    assert!(why.contains("still running"), "{why}");
    // Refused without a change: the claim is still live and its writes go through.
    end(
        &store,
        &run,
        &first,
        TaskState::Succeeded,
        EntryOutcome::Done,
    )
    .await;
    let second = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    end(
        &store,
        &run,
        &second,
        TaskState::Succeeded,
        EntryOutcome::Done,
    )
    .await;
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Succeeded);
    let why = refusal(store.resume_work(&run, &[], false).await);
    assert!(why.contains("already succeeded"), "{why}");
    // A run driven by a controller is not the workers' to resume.
    let mut commands = CommandRegistry::new();
    commands.register::<fixture::Noop>("noop");
    let plan = Plan::build(
        &Tasklist::new("t").stage(Stage::new("s", 1).task(Task::new("noop").on("web1"))),
        &commands,
    )
    .unwrap();
    let record = store
        .create_run(NewRun::from_plan(&plan, "test", "alice"))
        .await
        .unwrap();
    let why = refusal(store.resume_work(&record.id, &[], true).await);
    assert!(why.contains("not submitted to workers"), "{why}");
    assert!(matches!(
        store.resume_work(&RunId::new(), &[], true).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn a_stopped_run_resumes_only_with_force(store: Queue) {
    let run = submit(&store, vec![stage(2, None, &["once1", "web2", "web3"])]).await;
    let w1 = worker("w1", &[]);
    let interrupted = WorkQueue::claim(&*store, &w1, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(interrupted.host, "once1");
    let mut t = task(&store, &run, &interrupted).await;
    t.state = TaskState::Running;
    store.record_task(&interrupted, &t).await.unwrap();
    let other = WorkQueue::claim(&*store, &w1, LONG).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The lapse is swept (the run stops), then the other entry ends and the run fails.
    assert!(
        WorkQueue::claim(&*store, &worker("w2", &[]), LONG)
            .await
            .unwrap()
            .is_none()
    );
    end(
        &store,
        &run,
        &other,
        TaskState::Succeeded,
        EntryOutcome::Done,
    )
    .await;
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Failed);

    let why = refusal(store.resume_work(&run, &[], false).await);
    assert!(
        why.contains("stages[0].tasks[0] on once1") && why.contains("force"),
        "names the entry and force: {why}"
    );
    // Refused without a change.
    let status = store.work_status(&run).await.unwrap();
    assert!(status.stopped.is_some());
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Failed);

    store.resume_work(&run, &[], true).await.unwrap();
    let record = store.run(&run).await.unwrap();
    assert_eq!(record.state, RunState::Pending);
    assert_eq!(record.finish_ts, None);
    let status = store.work_status(&run).await.unwrap();
    assert_eq!(status.stopped, None);
    assert!(!status.aborting);
    assert_eq!(status.pending, 2, "{status:?}");
    let tasks = store.tasks(&run).await.unwrap();
    let states: Vec<TaskState> = tasks.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [TaskState::Pending, TaskState::Succeeded, TaskState::Pending],
        "the interrupted task waits again; the done one stays done"
    );
    let host_states: Vec<(String, HostState)> = store
        .hosts(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.host, h.state))
        .collect();
    assert_eq!(
        host_states,
        [
            ("once1".to_string(), HostState::Pending),
            ("web2".to_string(), HostState::Done),
            ("web3".to_string(), HostState::Pending)
        ]
    );

    let w2 = worker("w2", &[]);
    let again = claim_all(&store, &w2).await;
    assert_eq!(
        hosts(&again),
        ["once1".to_string(), "web3".to_string()].into(),
        "the done entry is not claimed again"
    );
    let once = again.iter().find(|c| c.host == "once1").unwrap();
    assert!(once.fence > interrupted.fence, "a new fence");
    // The claim from before the resume can write nothing.
    assert!(matches!(
        store.finish_entry(&interrupted, EntryOutcome::Done).await,
        Err(StoreError::LeaseLost { .. })
    ));
    for c in &again {
        end(&store, &run, c, TaskState::Succeeded, EntryOutcome::Done).await;
    }
    let record = store.run(&run).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    assert_eq!(record.drives, 2, "the resume is a second drive");
}

async fn failed_entries_are_claimed_again(store: Queue) {
    let run = submit(
        &store,
        vec![
            stage(2, None, &["web1", "web2", "web3"]),
            stage(2, None, &["web1"]),
        ],
    )
    .await;
    let w = worker("w1", &[]);
    let failing = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    let running = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    end(
        &store,
        &run,
        &failing,
        TaskState::Failed,
        EntryOutcome::Failed,
    )
    .await;
    store.request_cancel(&run, "bob").await.unwrap();
    end(
        &store,
        &run,
        &running,
        TaskState::Succeeded,
        EntryOutcome::Done,
    )
    .await;
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Failed);

    store.resume_work(&run, &[], false).await.unwrap();
    assert_eq!(store.cancel_request(&run).await.unwrap(), None);
    let first = claim_all(&store, &w).await;
    assert_eq!(
        hosts(&first),
        ["web1".to_string(), "web3".to_string()].into(),
        "the failed and the never claimed entry, not the done one"
    );
    for c in &first {
        end(&store, &run, c, TaskState::Succeeded, EntryOutcome::Done).await;
    }
    let second = claim_all(&store, &w).await;
    assert_eq!(second.len(), 1, "the next stage");
    end(
        &store,
        &run,
        &second[0],
        TaskState::Succeeded,
        EntryOutcome::Done,
    )
    .await;
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Succeeded);
    let tasks = store.tasks(&run).await.unwrap();
    assert!(
        tasks.iter().all(|t| t.state == TaskState::Succeeded),
        "{tasks:?}"
    );
}

async fn rerun_tasks_are_claimed_again(store: Queue) {
    let run = submit(&store, vec![stage(2, None, &["web1", "web2"])]).await;
    let w = worker("w1", &[]);
    let a = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    let b = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    end(&store, &run, &a, TaskState::Succeeded, EntryOutcome::Done).await;
    end(&store, &run, &b, TaskState::Failed, EntryOutcome::Failed).await;
    store.resume_work(&run, &a.tasks, false).await.unwrap();
    let tasks = store.tasks(&run).await.unwrap();
    assert!(
        tasks.iter().all(|t| t.state == TaskState::Pending),
        "{tasks:?}"
    );
    assert_eq!(hosts(&claim_all(&store, &w).await).len(), 2);
}

/// Entries of the `wait` command running, and those that saw their run's cancel.
static STARTED: AtomicUsize = AtomicUsize::new(0);
static SAW_CANCEL: AtomicUsize = AtomicUsize::new(0);

/// Waits (up to 30 s) for its run's cancel request (a first cancel), counting.
#[derive(Debug)]
struct WaitForCancel;

#[async_trait]
impl Command for WaitForCancel {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        Ok(WaitForCancel)
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        STARTED.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            _ = ctx.run_cancelled() => {
                SAW_CANCEL.fetch_add(1, Ordering::SeqCst);
                Ok(Outcome::done())
            }
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                Err(CommandError::failed("no cancel within 30 s"))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_every_running_entry_of_a_run_on_a_worker_with_several_slots() {
    let server = PgServer::start().await;
    let store = queue(&server).await;
    let mut commands = CommandRegistry::new();
    commands.register::<WaitForCancel>("wait");
    let mut stage = Stage::new("s", 4);
    for h in ["web1", "web2", "web3", "web4"] {
        stage = stage.task(Task::new("wait").on(h));
    }
    let plan = Plan::build(&Tasklist::new("cancel").stage(stage), &commands).unwrap();
    let run = deployer_core::submit(&*store, &plan, "test", "alice", |_| None)
        .await
        .unwrap();
    let worker = Worker::new(
        store.clone(),
        commands,
        Arc::new(fixture::FakeConnector::new()),
        worker("w1", &[]),
    )
    .slots(4);
    let drain = tokio_util::sync::CancellationToken::new();
    let working = tokio::spawn({
        let drain = drain.clone();
        async move { worker.run(drain).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while STARTED.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "4 entries running at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(SAW_CANCEL.load(Ordering::SeqCst), 0);
    // Another process's cancel (here: the store's, not the worker's).
    let asked = Instant::now();
    store.request_cancel(&run, "bob").await.unwrap();
    while SAW_CANCEL.load(Ordering::SeqCst) < 4 {
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "every running entry sees the cancel within a second ({} did)",
            SAW_CANCEL.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let record = store.run(&run).await.unwrap();
        if record.finish_ts.is_some() {
            assert_eq!(record.state, RunState::Cancelled);
            break;
        }
        assert!(Instant::now() < deadline, "the run ends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drain.cancel();
    working.await.unwrap().unwrap();
}
