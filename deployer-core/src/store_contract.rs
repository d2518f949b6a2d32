//! The behaviour every [`RunStore`] must have, as async checks that panic on a violation.
//!
//! A backend crate runs each check against a fresh store of its kind, so all backends are held
//! to one suite:
//!
//! ```
//! use deployer_core::MemoryStore;
//! use deployer_core::fixture::store_contract;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! store_contract::create_and_read(&MemoryStore::new()).await;
//! store_contract::leases(&MemoryStore::new()).await;
//! # });
//! ```
//!
//! [`an_unreadable_run_is_listed_marked`] needs a way to damage a stored run, which only the
//! backend has: a backend's tests call it with one (an SQL `UPDATE`, for instance).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::events::{TaskId, TaskInfo};
use crate::runs::{
    HostState, ListedRun, NewRun, RunId, RunState, RunStore, StoreError, TaskRecord, TaskState,
};
use crate::tasklist::{Stage, Task, Tasklist};

/// Every check, in order, each against a fresh store from `make`.
pub async fn all<S, F, Fut>(mut make: F)
where
    S: RunStore,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    create_and_read(&make().await).await;
    task_and_host_updates(&make().await).await;
    leases(&make().await).await;
    finish_and_purge(&make().await).await;
    history(&make().await).await;
    history_keys(&make().await).await;
    approvals(&make().await).await;
    find_runs_and_host_history(&make().await).await;
    cancel_requests(&make().await).await;
    changes_wake_watchers(&make().await).await;
}

/// `find_runs` filters by state, starter, name and creation time, pages newest first, and
/// gives each run's host count and task counts; `host_history` lists the runs that targeted
/// a host, newest first, with the host's state in each.
pub async fn find_runs_and_host_history(store: &dyn RunStore) {
    use crate::run_views::RunQuery;
    let before = SystemTime::now() - Duration::from_secs(1);
    let mut ids = Vec::new();
    for (i, (name, by)) in [
        ("deploy web", "alice"),
        ("deploy db", "bob"),
        ("deploy web", "bob"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut new = sample_run(name);
        new.started_by = by.to_string();
        if i == 2 {
            // The newest targets one more host.
            new.tasks.push(info(0, 2, None, "fe003", "upload"));
        }
        store.create_run(new.clone()).await.unwrap();
        ids.push(new.id);
    }
    let mut failed = TaskRecord::pending(&sample_run("x").tasks[1]);
    failed.state = TaskState::Failed;
    failed.drive = Some(1);
    store
        .set_run_state(&ids[1], RunState::Running)
        .await
        .unwrap();
    store.update_task(&ids[1], &failed).await.unwrap();
    store
        .set_host_state(&ids[1], "fe002", HostState::Failed)
        .await
        .unwrap();
    store.finish_run(&ids[1], RunState::Failed).await.unwrap();

    let all = store.find_runs(&RunQuery::new(10)).await.unwrap();
    let listed: Vec<&str> = all
        .iter()
        .map(|r| r.as_ref().expect("readable").id.as_str())
        .collect();
    assert_eq!(
        listed,
        [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()],
        "newest first"
    );
    let newest = all[0].as_ref().unwrap();
    assert_eq!(newest.hosts, 3);
    assert_eq!(newest.counts.total(), 5);
    assert_eq!(newest.started_by, "bob");
    let failed_run = all[1].as_ref().unwrap();
    assert_eq!(failed_run.state, RunState::Failed);
    assert_eq!(failed_run.hosts, 2);
    assert_eq!(failed_run.counts.failed, 1, "{:?}", failed_run.counts);
    assert_eq!(failed_run.counts.total(), 4);
    assert!(failed_run.finish_ts.is_some() && failed_run.started_ts.is_some());
    assert!(failed_run.duration(SystemTime::now()).is_some());

    let ids_of = |found: Vec<Result<crate::RunSummary, crate::UnreadableRun>>| -> Vec<RunId> {
        found.into_iter().map(|r| r.unwrap().id).collect()
    };
    let q = |q: RunQuery| async move { ids_of(store.find_runs(&q).await.unwrap()) };
    assert_eq!(
        q(RunQuery::new(10).started_by("bob")).await,
        [ids[2].clone(), ids[1].clone()]
    );
    assert_eq!(
        q(RunQuery::new(10).name("web")).await,
        [ids[2].clone(), ids[0].clone()]
    );
    assert_eq!(q(RunQuery::new(10).name("WEB")).await, Vec::<RunId>::new());
    assert_eq!(
        q(RunQuery::new(10).state(RunState::Failed)).await,
        [ids[1].clone()]
    );
    assert_eq!(
        q(RunQuery::new(10).state(RunState::Pending).started_by("bob")).await,
        [ids[2].clone()]
    );
    assert_eq!(q(RunQuery::new(2)).await, [ids[2].clone(), ids[1].clone()]);
    assert_eq!(
        q(RunQuery::new(2).page(1)).await,
        [ids[0].clone()],
        "the second page"
    );
    assert_eq!(q(RunQuery::new(2).page(2)).await, Vec::<RunId>::new());
    let mut since = RunQuery::new(10);
    since.since = Some(SystemTime::now() + Duration::from_secs(3600));
    assert_eq!(q(since).await, Vec::<RunId>::new(), "created before since");
    let mut window = RunQuery::new(10);
    window.since = Some(before);
    window.until = Some(SystemTime::now() + Duration::from_secs(3600));
    assert_eq!(q(window).await.len(), 3);
    let mut until = RunQuery::new(10);
    until.until = Some(before);
    assert_eq!(q(until).await, Vec::<RunId>::new(), "created after until");

    let history = store.host_history("fe002", 10).await.unwrap();
    let runs: Vec<(&str, HostState, RunState)> = history
        .iter()
        .map(|h| (h.run.as_str(), h.host_state, h.run_state))
        .collect();
    assert_eq!(
        runs,
        [
            (ids[2].as_str(), HostState::Pending, RunState::Pending),
            (ids[1].as_str(), HostState::Failed, RunState::Failed),
            (ids[0].as_str(), HostState::Pending, RunState::Pending),
        ]
    );
    assert_eq!(history[1].started_by, "bob");
    assert_eq!(history[1].name, "deploy db");
    assert!(history[1].finish_ts.is_some());
    let fe003 = store.host_history("fe003", 10).await.unwrap();
    assert_eq!(fe003.len(), 1);
    assert_eq!(fe003[0].run, ids[2]);
    assert_eq!(
        store.host_history("fe002", 1).await.unwrap().len(),
        1,
        "limit"
    );
    assert!(store.host_history("nowhere", 10).await.unwrap().is_empty());
}

/// A cancel request is stored with its run, the first one stands, and a finished run cannot
/// be asked to cancel.
pub async fn cancel_requests(store: &dyn RunStore) {
    let new = sample_run("cancel");
    store.create_run(new.clone()).await.unwrap();
    assert_eq!(store.cancel_request(&new.id).await.unwrap(), None);
    let first = store.request_cancel(&new.id, "bob").await.unwrap();
    assert_eq!(first.by, "bob");
    let age = SystemTime::now()
        .duration_since(first.ts)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "stamped now");
    let again = store.request_cancel(&new.id, "carol").await.unwrap();
    assert_eq!(again.by, "bob", "the first request stands");
    let stored = store
        .cancel_request(&new.id)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.by, "bob");
    assert_eq!(micros(stored.ts), micros(first.ts));

    let done = sample_run("done");
    store.create_run(done.clone()).await.unwrap();
    store
        .finish_run(&done.id, RunState::Succeeded)
        .await
        .unwrap();
    match store.request_cancel(&done.id, "bob").await {
        Err(StoreError::RunFinished { id, state }) => {
            assert_eq!(id, done.id);
            assert_eq!(state, RunState::Succeeded);
        }
        other => panic!("expected RunFinished, got {other:?}"),
    }
    assert_eq!(store.cancel_request(&done.id).await.unwrap(), None);
    assert!(matches!(
        store.request_cancel(&RunId::new(), "bob").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// A feed from `changes` stays quiet while nothing is written and wakes after a write
/// (within a few seconds: SQL stores poll or listen).
pub async fn changes_wake_watchers(store: &dyn RunStore) {
    let new = sample_run("watched");
    store.create_run(new.clone()).await.unwrap();
    let mut feed = store.changes();
    // Let a watcher that starts on subscription settle, and swallow a first wake-up.
    let _ = tokio::time::timeout(Duration::from_millis(300), feed.changed()).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), feed.changed())
            .await
            .is_err(),
        "without a write the feed stays quiet (it watches the store, it does not tick)"
    );
    store
        .set_host_state(&new.id, "fe001", HostState::Running)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), feed.changed())
        .await
        .expect("a write wakes the feed");
}

/// Approvals of manual steps: a request is stored once per step (asking again returns it as
/// stored), every field round-trips, a decision is taken only while the approval is pending
/// and unexpired, and only once; pending approvals list across runs, finished runs' not;
/// purging a run removes its approvals.
pub async fn approvals(store: &dyn RunStore) {
    use crate::approvals::{ApprovalRequest, ApprovalState, Approvers, Decision};
    let new = sample_run("approvals");
    store.create_run(new.clone()).await.expect("create_run");
    let other = sample_run("other");
    store.create_run(other.clone()).await.expect("create_run");
    let expires = micros(SystemTime::now() + Duration::from_secs(3600));
    let request = ApprovalRequest::new(new.id.clone(), "deploy/approve", "alice")
        .message("Check the backup ✓")
        .target("shop/prod")
        .approvers(Approvers::Users(vec!["bob".into(), "carol".into()]))
        .four_eyes(true)
        .expires(expires);
    let asked = store
        .request_approval(request.clone())
        .await
        .expect("request_approval");
    assert_eq!(asked.request, request, "every field round-trips");
    assert!(asked.decision.is_none());
    let age = SystemTime::now()
        .duration_since(asked.requested_ts)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "requested_ts is now");

    // Asking again (a resumed run) returns the stored request, not a new one.
    let again = store
        .request_approval(request.clone().approvers(Approvers::Role("admin".into())))
        .await
        .unwrap();
    assert_eq!(again, asked, "one approval per step");
    let second = ApprovalRequest::new(new.id.clone(), "deploy/second", "alice")
        .approvers(Approvers::Role("admin".into()));
    store.request_approval(second.clone()).await.unwrap();
    let expired = ApprovalRequest::new(other.id.clone(), "x/expired", "alice")
        .expires(micros(SystemTime::now() - Duration::from_secs(1)));
    store.request_approval(expired).await.unwrap();
    let listed = store.approvals(&new.id).await.unwrap();
    let steps: Vec<&str> = listed.iter().map(|a| a.request.step.as_str()).collect();
    assert_eq!(
        steps,
        ["deploy/approve", "deploy/second"],
        "in request order"
    );
    assert_eq!(listed[1].request.approvers, Approvers::Role("admin".into()));
    assert_eq!(listed[1].request.expires_ts, None);
    assert_eq!(listed[1].request.target, None);
    let pending: Vec<String> = store
        .pending_approvals()
        .await
        .unwrap()
        .iter()
        .map(|a| a.request.step.clone())
        .collect();
    assert_eq!(
        pending,
        ["deploy/approve", "deploy/second"],
        "expired ones are not pending"
    );

    // One decision, once.
    let at = micros(SystemTime::now());
    let decision = Decision {
        by: "bob".into(),
        at,
        approved: false,
        comment: Some("not during the sale".into()),
    };
    let decided = store
        .decide(&new.id, "deploy/approve", decision.clone())
        .await
        .expect("a pending approval is decided");
    assert_eq!(decided.decision.as_ref(), Some(&decision));
    assert_eq!(decided.state(SystemTime::now()), ApprovalState::Rejected);
    match store
        .decide(
            &new.id,
            "deploy/approve",
            Decision::new("carol", true, None),
        )
        .await
    {
        Err(StoreError::ApprovalClosed { why, .. }) => {
            assert!(why.contains("rejected by bob"), "{why}")
        }
        other => panic!("expected ApprovalClosed, got {other:?}"),
    }
    assert_eq!(
        store.approvals(&new.id).await.unwrap()[0].decision,
        Some(decision),
        "the first decision stays"
    );
    match store
        .decide(&other.id, "x/expired", Decision::new("bob", true, None))
        .await
    {
        Err(StoreError::ApprovalClosed { why, .. }) => assert!(why.contains("expired"), "{why}"),
        other => panic!("expected ApprovalClosed, got {other:?}"),
    }
    assert!(matches!(
        store
            .decide(&new.id, "deploy/nothing", Decision::new("bob", true, None))
            .await,
        Err(StoreError::NoApproval { .. })
    ));
    assert!(matches!(
        store
            .request_approval(ApprovalRequest::new(RunId::new(), "s", "a"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let approved = store
        .decide(
            &new.id,
            "deploy/second",
            Decision::new("dave", true, Some(" ".into())),
        )
        .await
        .unwrap();
    assert_eq!(approved.state(SystemTime::now()), ApprovalState::Approved);
    assert_eq!(
        approved.decision.unwrap().comment,
        None,
        "a blank comment is none"
    );
    assert!(store.pending_approvals().await.unwrap().is_empty());

    // A finished run's approvals are not pending; purging removes them with the run.
    store
        .request_approval(ApprovalRequest::new(other.id.clone(), "x/open", "alice"))
        .await
        .unwrap();
    assert_eq!(store.pending_approvals().await.unwrap().len(), 1);
    store.finish_run(&other.id, RunState::Failed).await.unwrap();
    assert!(store.pending_approvals().await.unwrap().is_empty());
    let later = SystemTime::now() + Duration::from_secs(1);
    store.purge_finished(later).await.unwrap();
    assert!(matches!(
        store.approvals(&other.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.approvals(&new.id).await.unwrap().len(), 2);
}

/// Tasks are recorded under the history keys the new run gives them (books key steps as
/// `book/step`), else under their command.
pub async fn history_keys(store: &dyn RunStore) {
    let keyed = sample_run("keyed")
        .with_history_keys(|t| (t.id.entry == 0 && t.id.stage == 0).then(|| "book/step".into()));
    store.create_run(keyed.clone()).await.expect("create_run");
    let tasks = store.tasks(&keyed.id).await.expect("tasks");
    assert_eq!(tasks[0].history_key, "book/step");
    assert_eq!(tasks[1].history_key, "upload");
    assert_eq!(tasks[2].history_key, "restart");
}

fn info(stage: usize, entry: usize, step: Option<usize>, host: &str, command: &str) -> TaskInfo {
    TaskInfo {
        id: TaskId { stage, entry, step },
        host: host.to_string(),
        tag: Some("web".to_string()),
        command: command.to_string(),
    }
}

/// A run of three tasks on two hosts (one chain), with a tasklist to match.
pub fn sample_run(name: &str) -> NewRun {
    let tasklist = Tasklist::new(name)
        .stage(
            Stage::new("Upload", 2)
                .per_host(1)
                .task(
                    Task::new("upload")
                        .on("fe001")
                        .tag("web")
                        .arg("source", "a.tgz"),
                )
                .task(
                    Task::new("upload")
                        .on("fe002")
                        .tag("web")
                        .arg("source", "a.tgz"),
                ),
        )
        .stage(Stage::new("Restart", 1).task(vec![
            Task::new("restart").on("fe001").tag("web"),
            Task::new("check").on("fe001").tag("web"),
        ]));
    NewRun {
        id: RunId::new(),
        name: name.to_string(),
        source: "tasklist:sample.json".to_string(),
        started_by: "alice".to_string(),
        tasklist,
        tasks: vec![
            info(0, 0, None, "fe001", "upload"),
            info(0, 1, None, "fe002", "upload"),
            info(1, 0, Some(0), "fe001", "restart"),
            info(1, 0, Some(1), "fe001", "check"),
        ],
        history_keys: Default::default(),
    }
}

/// A time with whole microseconds, which every backend stores exactly.
fn micros(t: SystemTime) -> SystemTime {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::from_micros(d.as_micros() as u64)
}

/// Creating a run stores a full copy of the tasklist, every host and task `PENDING`.
pub async fn create_and_read(store: &dyn RunStore) {
    let new = sample_run("create");
    let created = store.create_run(new.clone()).await.expect("create_run");
    assert_eq!(created.id, new.id);
    assert_eq!(created.state, RunState::Pending);
    let read = store.run(&new.id).await.expect("run");
    assert_eq!(read.name, "create");
    assert_eq!(read.source, "tasklist:sample.json");
    assert_eq!(read.started_by, "alice");
    assert_eq!(
        read.tasklist, new.tasklist,
        "the tasklist is copied in full"
    );
    assert_eq!(read.state, RunState::Pending);
    assert!(read.started_ts.is_none() && read.finish_ts.is_none());
    assert!(read.owner.is_none());
    let age = SystemTime::now()
        .duration_since(read.created_ts)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "created_ts is now");

    let hosts = store.hosts(&new.id).await.expect("hosts");
    let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(names, ["fe001", "fe002"]);
    assert!(
        hosts
            .iter()
            .all(|h| h.state == HostState::Pending && h.finish_ts.is_none())
    );

    let tasks = store.tasks(&new.id).await.expect("tasks");
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    let expected: Vec<TaskId> = new.tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, expected, "tasks come back in tasklist order");
    assert!(
        tasks
            .iter()
            .all(|t| t.state == TaskState::Pending && t.attempts == 0)
    );
    assert_eq!(tasks[2].command, "restart");
    assert_eq!(tasks[2].tag.as_deref(), Some("web"));
    assert_eq!(tasks[2].history_key, "restart");

    let second = sample_run("second");
    store.create_run(second.clone()).await.expect("second run");
    let listed = store.list_runs(10).await.expect("list_runs");
    assert!(
        listed.iter().all(|r| r.record().is_some()),
        "every run reads back: {listed:?}"
    );
    let listed: Vec<&str> = listed.iter().map(|r| r.id()).collect();
    assert_eq!(
        listed,
        [second.id.as_str(), new.id.as_str()],
        "newest first"
    );
    assert_eq!(store.list_runs(1).await.unwrap().len(), 1);

    let missing = RunId::new();
    match store.run(&missing).await {
        Err(StoreError::NotFound { id }) => assert_eq!(id, missing.to_string()),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        store.tasks(&missing).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Task records round-trip every field; hosts can change state and join.
pub async fn task_and_host_updates(store: &dyn RunStore) {
    let new = sample_run("updates");
    store.create_run(new.clone()).await.unwrap();
    let started = micros(SystemTime::now());
    let mut rec = TaskRecord::pending(&new.tasks[1]);
    rec.state = TaskState::Failed;
    rec.attempts = 3;
    rec.started_ts = Some(started);
    rec.finished_ts = Some(started + Duration::from_millis(1500));
    rec.duration = Some(Duration::from_micros(1_500_123));
    rec.exit_status = Some(2);
    rec.stderr_tail = Some("tar: unexpected EOF\nline two ✓".to_string());
    rec.output_tail = Some("x/\nx/a.txt\n[stderr] tar: unexpected EOF\n".to_string());
    rec.error = Some("`tar -xzf` exited with status 2".to_string());
    rec.drive = Some(3);
    rec.worker = Some("eu-1:4242:x7".to_string());
    store.update_task(&new.id, &rec).await.unwrap();
    let tasks = store.tasks(&new.id).await.unwrap();
    assert_eq!(
        tasks[1],
        TaskRecord {
            output_tail: None,
            ..rec.clone()
        },
        "every field round-trips; a run's tasks come without their output"
    );
    assert_eq!(tasks[0].state, TaskState::Pending, "other tasks untouched");
    assert_eq!(tasks[0].worker, None, "no worker recorded a pending task");
    assert_eq!(
        store.submitted_work(&new.id).await.unwrap(),
        None,
        "a run never submitted to workers has no work status"
    );
    let fe002 = store.host_tasks(&new.id, "fe002").await.unwrap();
    assert_eq!(
        fe002,
        [rec.clone()],
        "a host's tasks come with their output"
    );
    let fe001 = store.host_tasks(&new.id, "fe001").await.unwrap();
    let ids: Vec<TaskId> = fe001.iter().map(|t| t.id).collect();
    assert_eq!(
        ids,
        [new.tasks[0].id, new.tasks[2].id, new.tasks[3].id],
        "in tasklist order"
    );
    assert!(
        store
            .host_tasks(&new.id, "nowhere")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.host_tasks(&RunId::new(), "fe001").await,
        Err(StoreError::NotFound { .. })
    ));

    let by_controller = TaskRecord {
        worker: None,
        ..rec.clone()
    };
    store.update_task(&new.id, &by_controller).await.unwrap();
    assert_eq!(
        store.tasks(&new.id).await.unwrap()[1].worker,
        None,
        "the worker is whoever recorded the task last: none when a controller did"
    );

    store
        .set_run_state(&new.id, RunState::Running)
        .await
        .unwrap();
    let first = store.run(&new.id).await.unwrap();
    assert_eq!(first.state, RunState::Running);
    let started_ts = first.started_ts.expect("RUNNING sets started_ts");
    store
        .set_run_state(&new.id, RunState::Running)
        .await
        .unwrap();
    assert_eq!(
        store.run(&new.id).await.unwrap().started_ts,
        Some(started_ts),
        "only once"
    );
    assert_eq!(first.drives, 1, "RUNNING counts a drive");
    assert_eq!(store.run(&new.id).await.unwrap().drives, 2, "each time");
    store
        .set_run_state(&new.id, RunState::Failed)
        .await
        .unwrap();
    assert_eq!(
        store.run(&new.id).await.unwrap().drives,
        2,
        "other states do not"
    );

    store
        .set_host_state(&new.id, "fe002", HostState::Failed)
        .await
        .unwrap();
    store
        .set_host_state(&new.id, "fe003", HostState::Added)
        .await
        .unwrap();
    let hosts = store.hosts(&new.id).await.unwrap();
    let states: Vec<(&str, HostState)> = hosts.iter().map(|h| (h.host.as_str(), h.state)).collect();
    assert_eq!(
        states,
        [
            ("fe001", HostState::Pending),
            ("fe002", HostState::Failed),
            ("fe003", HostState::Added)
        ]
    );
    assert!(matches!(
        store
            .set_host_state(&RunId::new(), "x", HostState::Done)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Only one controller holds a run; an expired lease can be taken over.
pub async fn leases(store: &dyn RunStore) {
    let new = sample_run("leases");
    store.create_run(new.clone()).await.unwrap();
    let id = &new.id;
    let long = Duration::from_secs(60);
    store
        .claim(id, "ctl-a", long)
        .await
        .expect("a free run can be claimed");
    store
        .claim(id, "ctl-a", long)
        .await
        .expect("the owner may claim again");
    let r = store.run(id).await.unwrap();
    assert_eq!(r.owner.as_deref(), Some("ctl-a"));
    assert!(r.is_claimed(SystemTime::now()));
    match store.claim(id, "ctl-b", long).await {
        Err(StoreError::LeaseHeld {
            owner, remaining, ..
        }) => {
            assert_eq!(owner, "ctl-a");
            assert!(remaining > Duration::from_secs(50));
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    assert!(matches!(
        store.renew(id, "ctl-b", long).await,
        Err(StoreError::LeaseLost { .. })
    ));
    store
        .renew(id, "ctl-a", long)
        .await
        .expect("the owner renews");
    store
        .release(id, "ctl-b")
        .await
        .expect("releasing a lease one does not hold is a no-op");
    assert_eq!(store.run(id).await.unwrap().owner.as_deref(), Some("ctl-a"));
    store.release(id, "ctl-a").await.unwrap();
    assert!(store.run(id).await.unwrap().owner.is_none());
    store
        .claim(id, "ctl-b", Duration::from_millis(1))
        .await
        .expect("released run");
    // Lease expiry is a matter of time: wait it out.
    tokio::time::sleep(Duration::from_millis(30)).await;
    store
        .claim(id, "ctl-c", long)
        .await
        .expect("an expired lease can be taken over");
    assert!(matches!(
        store.renew(id, "ctl-b", long).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        store.claim(&RunId::new(), "x", long).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Finishing stamps `finish_ts` everywhere; purge removes only old finished runs.
pub async fn finish_and_purge(store: &dyn RunStore) {
    let done = sample_run("done");
    let open = sample_run("open");
    store.create_run(done.clone()).await.unwrap();
    store.create_run(open.clone()).await.unwrap();
    store
        .claim(&done.id, "ctl", Duration::from_secs(60))
        .await
        .unwrap();
    store.finish_run(&done.id, RunState::Failed).await.unwrap();
    let r = store.run(&done.id).await.unwrap();
    assert_eq!(r.state, RunState::Failed);
    let finished = r.finish_ts.expect("finish_ts on the run");
    assert!(r.owner.is_none(), "finishing releases the lease");
    let hosts = store.hosts(&done.id).await.unwrap();
    assert!(
        hosts.iter().all(|h| h.finish_ts.is_some()),
        "finish_ts on every host"
    );
    let tasks = store.tasks(&done.id).await.unwrap();
    assert!(
        tasks.iter().all(|t| t.finish_ts.is_some()),
        "finish_ts on every task"
    );
    assert!(
        store
            .tasks(&open.id)
            .await
            .unwrap()
            .iter()
            .all(|t| t.finish_ts.is_none())
    );

    let before = finished - Duration::from_secs(1);
    assert_eq!(
        store.purge_finished(before).await.unwrap(),
        0,
        "not old enough"
    );
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(store.purge_finished(later).await.unwrap(), 1);
    assert!(matches!(
        store.run(&done.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.hosts(&done.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        store.run(&open.id).await.is_ok(),
        "unfinished runs are never purged"
    );
    assert_eq!(store.tasks(&open.id).await.unwrap().len(), 4);
}

/// The average duration of successful tasks per history key, over all runs.
pub async fn history(store: &dyn RunStore) {
    assert_eq!(store.average_duration("restart").await.unwrap(), None);
    for (secs, state) in [
        (1, TaskState::Succeeded),
        (3, TaskState::Succeeded),
        (100, TaskState::Failed),
    ] {
        let new = sample_run("history");
        store.create_run(new.clone()).await.unwrap();
        let mut rec = TaskRecord::pending(&new.tasks[2]);
        rec.state = state;
        rec.duration = Some(Duration::from_secs(secs));
        store.update_task(&new.id, &rec).await.unwrap();
    }
    assert_eq!(
        store.average_duration("restart").await.unwrap(),
        Some(Duration::from_secs(2)),
        "failed tasks do not count"
    );
    assert_eq!(store.average_duration("upload").await.unwrap(), None);

    // Durations whose sum overflows (a 64-bit count of microseconds, a Duration) still
    // average.
    let longest = Duration::from_micros(i64::MAX as u64);
    for _ in 0..3 {
        let new = sample_run("long");
        store.create_run(new.clone()).await.unwrap();
        let mut rec = TaskRecord::pending(&new.tasks[0]);
        rec.history_key = "long/step".to_string();
        rec.state = TaskState::Succeeded;
        rec.duration = Some(longest);
        store.update_task(&new.id, &rec).await.unwrap();
    }
    let average = store
        .average_duration("long/step")
        .await
        .expect("long durations average")
        .expect("an average");
    assert!(
        average.abs_diff(longest) < Duration::from_secs(1),
        "{average:?}"
    );
}

/// A stored run that cannot be read back (`corrupt` damages it, the way the backend can: a
/// state this version does not know, a value of the wrong type) is listed marked, in its place
/// and counted by the limit; reading it fails with [`StoreError::Corrupt`] naming the run; the
/// other runs still list and read.
///
/// `corrupt` must leave the run's id readable.
pub async fn an_unreadable_run_is_listed_marked<F, Fut>(store: &dyn RunStore, corrupt: F)
where
    F: FnOnce(RunId) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let old = sample_run("old");
    let bad = sample_run("bad");
    let new = sample_run("new");
    for run in [&old, &bad, &new] {
        store.create_run(run.clone()).await.expect("create_run");
    }
    corrupt(bad.id.clone()).await;

    let listed = store
        .list_runs(10)
        .await
        .expect("one unreadable run does not fail the listing");
    let ids: Vec<&str> = listed.iter().map(|r| r.id()).collect();
    assert_eq!(
        ids,
        [new.id.as_str(), bad.id.as_str(), old.id.as_str()],
        "newest first, the unreadable one in its place"
    );
    assert_eq!(listed[0].record().map(|r| r.name.as_str()), Some("new"));
    assert_eq!(listed[2].record().map(|r| r.name.as_str()), Some("old"));
    match &listed[1] {
        ListedRun::Unreadable(u) => assert!(
            u.problem.contains(bad.id.as_str()),
            "the problem names the run: {u:?}"
        ),
        other => panic!("expected the damaged run listed as unreadable, got {other:?}"),
    }
    let limited: Vec<String> = store
        .list_runs(2)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id().to_string())
        .collect();
    assert_eq!(limited, [new.id.to_string(), bad.id.to_string()]);

    match store.run(&bad.id).await {
        Err(StoreError::Corrupt { message }) => {
            assert!(message.contains(bad.id.as_str()), "{message}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    for ok in [&old, &new] {
        assert_eq!(
            store.run(&ok.id).await.expect("other runs read").name,
            ok.name
        );
        assert_eq!(
            store.tasks(&ok.id).await.expect("other runs' tasks").len(),
            4
        );
    }
}
