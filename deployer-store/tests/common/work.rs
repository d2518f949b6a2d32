//! The `WorkQueue` contract (distributed runs), as a suite any implementation can run: each
//! function takes a fresh store (its pool must allow 9 connections for
//! `limits_hold_under_eight_claimers`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deployer_core::fixture::Noop;
use deployer_core::*;

pub type Queue = Arc<dyn WorkQueue>;

/// Every function of the suite, each on a store from `store`.
pub async fn all<F, Fut>(store: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Queue>,
{
    eprintln!("work queue contract: the_first_claim_starts_the_run_and_the_last_end_finishes_it");
    the_first_claim_starts_the_run_and_the_last_end_finishes_it(store().await).await;
    eprintln!("work queue contract: stages_are_barriers");
    stages_are_barriers(store().await).await;
    eprintln!("work queue contract: limits_hold_under_eight_claimers");
    limits_hold_under_eight_claimers(store().await).await;
    eprintln!("work queue contract: workers_claim_only_their_zones");
    workers_claim_only_their_zones(store().await).await;
    eprintln!("work queue contract: workers_claim_only_runs_whose_commands_they_have");
    workers_claim_only_runs_whose_commands_they_have(store().await).await;
    eprintln!("work queue contract: a_lost_claim_cannot_write");
    a_lost_claim_cannot_write(store().await).await;
    eprintln!("work queue contract: a_lapsed_claim_that_is_not_idempotent_stops_the_run");
    a_lapsed_claim_that_is_not_idempotent_stops_the_run(store().await).await;
    eprintln!("work queue contract: a_failure_aborts_the_run");
    a_failure_aborts_the_run(store().await).await;
    eprintln!("work queue contract: a_cancel_request_stops_claims_and_cancels_the_run");
    a_cancel_request_stops_claims_and_cancels_the_run(store().await).await;
    eprintln!("work queue contract: unserved_zones_are_those_without_a_live_worker");
    unserved_zones_are_those_without_a_live_worker(store().await).await;
    eprintln!("work queue contract: bad_submissions_are_refused");
    bad_submissions_are_refused(store().await).await;
    eprintln!("work queue contract: a_failure_within_the_budget_drops_its_host");
    a_failure_within_the_budget_drops_its_host(store().await).await;
    eprintln!("work queue contract: a_failure_past_the_budget_aborts_the_run");
    a_failure_past_the_budget_aborts_the_run(store().await).await;
    eprintln!("work queue contract: min_hosts_up_holds_across_claimers");
    min_hosts_up_holds_across_claimers(store().await).await;
    eprintln!("work queue contract: finally_stages_select_as_one_controller");
    finally_stages_select_as_one_controller(store().await).await;
    eprintln!("work queue contract: a_failure_in_a_finally_stage_fails_the_run_and_stops_nothing");
    a_failure_in_a_finally_stage_fails_the_run_and_stops_nothing(store().await).await;
    eprintln!("work queue contract: a_rollback_stage_rolls_its_host_back");
    a_rollback_stage_rolls_its_host_back(store().await).await;
    eprintln!("work queue contract: a_resumed_run_counts_failures_afresh");
    a_resumed_run_counts_failures_afresh(store().await).await;
}

const LONG: Duration = Duration::from_secs(60);

/// One stage of a test run: `(concurrency, concurrency_per_host, entries)`, each entry a
/// `(host, zone)` with one `noop` task (or `other` when the host starts with `other`).
pub struct StageSpec {
    pub concurrency: usize,
    pub per_host: Option<usize>,
    pub entries: Vec<(String, Option<String>)>,
}

pub fn stage(concurrency: usize, per_host: Option<usize>, hosts: &[&str]) -> StageSpec {
    StageSpec {
        concurrency,
        per_host,
        entries: hosts.iter().map(|h| (h.to_string(), None)).collect(),
    }
}

fn registry() -> CommandRegistry {
    let mut commands = CommandRegistry::new();
    commands.register::<Noop>("noop");
    commands.register::<Noop>("other");
    commands
}

/// Creates and submits a run of `stages`; entries are idempotent unless the host contains
/// `once`. Returns the run's id.
pub async fn submit(store: &Queue, stages: Vec<StageSpec>) -> RunId {
    let mut tasklist = Tasklist::new("work");
    let mut zones: HashMap<String, String> = HashMap::new();
    for (i, s) in stages.iter().enumerate() {
        let mut st = Stage::new(format!("s{i}"), s.concurrency);
        if let Some(n) = s.per_host {
            st = st.per_host(n);
        }
        for (host, zone) in &s.entries {
            let command = if host.starts_with("other") {
                "other"
            } else {
                "noop"
            };
            st = st.task(Task::new(command).on(host.as_str()));
            if let Some(z) = zone {
                zones.insert(host.clone(), z.clone());
            }
        }
        tasklist = tasklist.stage(st);
    }
    let plan = Plan::build(&tasklist, &registry()).unwrap();
    let new = NewRun::from_plan(&plan, "test", "alice");
    let id = new.id.clone();
    store.create_run(new).await.unwrap();
    let mut submission = Submission::of_plan(&plan, &id, |h| zones.get(h).cloned()).unwrap();
    for e in &mut submission.entries {
        e.idempotent = !e.host.contains("once");
    }
    store.submit(&submission).await.unwrap();
    id
}

pub fn worker(id: &str, zones: &[&str]) -> WorkerInfo {
    WorkerInfo {
        id: id.to_string(),
        zones: zones.iter().map(|z| z.to_string()).collect(),
        commands: vec!["noop".to_string(), "other".to_string()],
    }
}

fn hosts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The record of the claim's (first) task.
pub async fn task_of(store: &Queue, run: &RunId, claim: &Claim) -> TaskRecord {
    store
        .tasks(run)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == claim.tasks[0])
        .unwrap()
}

/// Records the claim's task as succeeded and ends the entry.
async fn run_entry(store: &Queue, run: &RunId, claim: &Claim) {
    let mut task = task_of(store, run, claim).await;
    task.state = TaskState::Succeeded;
    task.attempts = 1;
    store.record_task(claim, &task).await.unwrap();
    store.finish_entry(claim, EntryOutcome::Done).await.unwrap();
}

fn is_lease_lost<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::LeaseLost { .. }))
}

pub async fn the_first_claim_starts_the_run_and_the_last_end_finishes_it(store: Queue) {
    let run = submit(&store, vec![stage(4, None, &["web1", "web2"])]).await;
    let w = worker("w1", &[]);
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Pending);
    let status = store.work_status(&run).await.unwrap();
    assert_eq!((status.pending, status.ended), (2, 0));
    let a = WorkQueue::claim(&*store, &w, LONG)
        .await
        .unwrap()
        .expect("a claim");
    assert_eq!((a.stage, a.entry, a.host.as_str()), (0, 0, "web1"));
    assert_eq!(a.fence, 1);
    assert!(a.lease_expires > std::time::SystemTime::now() + Duration::from_secs(50));
    let record = store.run(&run).await.unwrap();
    assert_eq!(record.state, RunState::Running);
    assert!(record.started_ts.is_some());
    assert_eq!(record.drives, 1);
    let b = WorkQueue::claim(&*store, &w, LONG)
        .await
        .unwrap()
        .expect("a second claim");
    assert_eq!(b.host, "web2");
    assert_eq!(store.run(&run).await.unwrap().drives, 1, "one drive");
    let status = store.work_status(&run).await.unwrap();
    assert_eq!(status.claimed, [("w1".to_string(), 2)]);
    assert_eq!(status.pending, 0);
    let hosts = store.hosts(&run).await.unwrap();
    assert!(
        hosts.iter().all(|h| h.state == HostState::Running),
        "{hosts:?}"
    );
    run_entry(&store, &run, &a).await;
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Running);
    run_entry(&store, &run, &b).await;
    let record = store.run(&run).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);
    assert!(record.finish_ts.is_some());
    let tasks = store.tasks(&run).await.unwrap();
    assert!(
        tasks
            .iter()
            .all(|t| t.state == TaskState::Succeeded && t.finish_ts.is_some())
    );
    let hosts = store.hosts(&run).await.unwrap();
    assert!(
        hosts.iter().all(|h| h.state == HostState::Done),
        "{hosts:?}"
    );
    let status = store.work_status(&run).await.unwrap();
    assert_eq!(
        (status.pending, status.ended, status.aborting),
        (0, 2, false)
    );
    assert!(status.claimed.is_empty());
    assert!(WorkQueue::claim(&*store, &w, LONG).await.unwrap().is_none());
    assert!(
        is_lease_lost(store.finish_entry(&b, EntryOutcome::Done).await),
        "an ended entry cannot end twice"
    );
    // A run driven by one controller (never submitted) has nothing waiting.
    let plain = deployer_core::fixture::store_contract::sample_run("plain");
    let plain_id = plain.id.clone();
    store.create_run(plain).await.unwrap();
    assert_eq!(
        store.work_status(&plain_id).await.unwrap(),
        WorkStatus::default()
    );
    assert_eq!(
        RunStore::submitted_work(&*store, &plain_id).await.unwrap(),
        None,
        "a viewer shows nothing about workers for it"
    );
    // Purging a finished run takes its work along.
    store
        .purge_finished(std::time::SystemTime::now() + Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(
        store.work_status(&run).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn stages_are_barriers(store: Queue) {
    let run = submit(
        &store,
        vec![
            stage(1, None, &["a1", "a2"]),
            stage(10, None, &["b1", "b2"]),
        ],
    )
    .await;
    let w = worker("w1", &[]);
    let first = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    assert_eq!(first.stage, 0);
    // Stage 0's concurrency is reached, its other entry is pending: nothing of stage 1.
    assert!(WorkQueue::claim(&*store, &w, LONG).await.unwrap().is_none());
    run_entry(&store, &run, &first).await;
    let second = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    assert_eq!((second.stage, second.entry), (0, 1));
    // Stage 0 has nothing pending but one claimed: still nothing of stage 1.
    assert!(WorkQueue::claim(&*store, &w, LONG).await.unwrap().is_none());
    run_entry(&store, &run, &second).await;
    let third = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    assert_eq!(third.stage, 1);
}

/// 8 claimers (tokio tasks, each on its own pool connection) work through a 200-entry stage
/// of 4 hosts (50 entries each, in a row) with `concurrency` 6 and `concurrency_per_host` 2,
/// each claim held 20 ms: the live claims, counted by
/// the claimers and read from the store at each claim, never exceed them; every entry is
/// claimed exactly once.
pub async fn limits_hold_under_eight_claimers(store: Queue) {
    const CONCURRENCY: usize = 6;
    const PER_HOST: usize = 2;
    let mut all_hosts = Vec::new();
    for i in 0..200 {
        all_hosts.push(format!("h{}", i / 50));
    }
    let run = submit(
        &store,
        vec![stage(CONCURRENCY, Some(PER_HOST), &refs(&all_hosts))],
    )
    .await;
    #[derive(Default)]
    struct Live {
        total: usize,
        per_host: HashMap<String, usize>,
        max_total: usize,
        max_host: usize,
        max_stored: usize,
        claimed: Vec<(usize, usize)>,
    }
    let live = Arc::new(Mutex::new(Live::default()));
    let mut claimers = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let live = live.clone();
        let run = run.clone();
        claimers.push(tokio::spawn(async move {
            let w = worker(&format!("w{i}"), &[]);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < deadline, "the run did not end");
                let Some(claim) = WorkQueue::claim(&*store, &w, LONG).await.unwrap() else {
                    if store.run(&run).await.unwrap().finish_ts.is_some() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                {
                    let mut l = live.lock().unwrap();
                    l.total += 1;
                    let h = l.per_host.entry(claim.host.clone()).or_default();
                    *h += 1;
                    let h = *h;
                    l.max_host = l.max_host.max(h);
                    l.max_total = l.max_total.max(l.total);
                    l.claimed.push((claim.stage, claim.entry));
                }
                let status = store.work_status(&run).await.unwrap();
                let stored: usize = status.claimed.iter().map(|(_, n)| n).sum();
                {
                    let mut l = live.lock().unwrap();
                    l.max_stored = l.max_stored.max(stored);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                {
                    // Counted off before the end is written: the count never exceeds the
                    // store's.
                    let mut l = live.lock().unwrap();
                    l.total -= 1;
                    *l.per_host.get_mut(&claim.host).unwrap() -= 1;
                }
                store
                    .finish_entry(&claim, EntryOutcome::Done)
                    .await
                    .unwrap();
            }
        }));
    }
    for c in claimers {
        c.await.unwrap();
    }
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Succeeded);
    let l = live.lock().unwrap();
    assert!(l.max_total <= CONCURRENCY, "{} claims at once", l.max_total);
    assert!(
        l.max_host <= PER_HOST,
        "{} claims of one host at once",
        l.max_host
    );
    assert!(
        l.max_stored <= CONCURRENCY,
        "{} claims stored at once",
        l.max_stored
    );
    eprintln!(
        "  at most {} claims at once ({} stored), {} of one host",
        l.max_total, l.max_stored, l.max_host
    );
    assert!(
        l.max_total > PER_HOST && l.max_host == PER_HOST,
        "claims ran in parallel (max {} in all, {} per host)",
        l.max_total,
        l.max_host
    );
    let distinct: BTreeSet<_> = l.claimed.iter().collect();
    assert_eq!(l.claimed.len(), 200, "every entry claimed once");
    assert_eq!(distinct.len(), 200);
}

pub async fn workers_claim_only_their_zones(store: Queue) {
    let mut spec = stage(100, None, &[]);
    for (host, zone) in [
        ("eu1", Some("eu")),
        ("us1", Some("us")),
        ("eu2", Some("eu")),
        ("any1", None),
        ("us2", Some("us")),
    ] {
        spec.entries
            .push((host.to_string(), zone.map(str::to_string)));
    }
    submit(&store, vec![spec]).await;
    let eu = worker("eu-worker", &["eu"]);
    let mut got = BTreeSet::new();
    while let Some(c) = WorkQueue::claim(&*store, &eu, LONG).await.unwrap() {
        got.insert(c.host);
    }
    assert_eq!(
        got,
        BTreeSet::from(["any1".to_string(), "eu1".to_string(), "eu2".to_string()]),
        "a worker of zone eu gets eu hosts and hosts without a zone, never us ones"
    );
    let anywhere = worker("anywhere", &[]);
    let mut got = BTreeSet::new();
    while let Some(c) = WorkQueue::claim(&*store, &anywhere, LONG).await.unwrap() {
        got.insert(c.host);
    }
    assert_eq!(got, BTreeSet::from(["us1".to_string(), "us2".to_string()]));
}

pub async fn workers_claim_only_runs_whose_commands_they_have(store: Queue) {
    let run = submit(&store, vec![stage(4, None, &["web1", "other1"])]).await;
    let mut w = worker("partial", &[]);
    w.commands = vec!["noop".to_string()];
    assert!(
        WorkQueue::claim(&*store, &w, LONG).await.unwrap().is_none(),
        "a worker missing command `other` claims nothing of the run, not even its noop entry"
    );
    w.commands.push("other".to_string());
    assert!(WorkQueue::claim(&*store, &w, LONG).await.unwrap().is_some());
    assert_eq!(store.work_status(&run).await.unwrap().pending, 1);
}

pub async fn a_lost_claim_cannot_write(store: Queue) {
    let run = submit(&store, vec![stage(4, None, &["web1"])]).await;
    let short = Duration::from_millis(300);
    let (w1, w2) = (worker("w1", &[]), worker("w2", &[]));
    let first = WorkQueue::claim(&*store, &w1, short)
        .await
        .unwrap()
        .unwrap();
    store.renew_claim(&first, short).await.unwrap();
    let mut task = task_of(&store, &run, &first).await;
    task.state = TaskState::Running;
    task.attempts = 1;
    store.record_task(&first, &task).await.unwrap();
    assert!(
        WorkQueue::claim(&*store, &w2, short)
            .await
            .unwrap()
            .is_none(),
        "held"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Lapsed: even before anyone reclaims, its holder may not write.
    task.state = TaskState::Succeeded;
    assert!(is_lease_lost(store.record_task(&first, &task).await));
    assert!(is_lease_lost(store.renew_claim(&first, LONG).await));
    let second = WorkQueue::claim(&*store, &w2, LONG)
        .await
        .unwrap()
        .expect("reclaimed");
    assert_eq!((second.stage, second.entry), (first.stage, first.entry));
    assert!(second.fence > first.fence, "the fence grows");
    assert_eq!(second.worker, "w2");
    assert!(is_lease_lost(store.record_task(&first, &task).await));
    assert!(is_lease_lost(store.renew_claim(&first, LONG).await));
    assert!(is_lease_lost(
        store.finish_entry(&first, EntryOutcome::Done).await
    ));
    // A claim with the current fence but another worker's name is refused too.
    let mut forged = second.clone();
    forged.worker = "w1".to_string();
    assert!(is_lease_lost(store.record_task(&forged, &task).await));
    let stored = task_of(&store, &run, &first).await;
    assert_eq!(
        stored.state,
        TaskState::Running,
        "the lost writes changed nothing"
    );
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Running);
    run_entry(&store, &run, &second).await;
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Succeeded);

    // The same worker reclaiming its own lapsed entry: the older claim is refused by its
    // fence alone.
    let run = submit(&store, vec![stage(4, None, &["web1"])]).await;
    let old = WorkQueue::claim(&*store, &w1, short)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = WorkQueue::claim(&*store, &w1, LONG).await.unwrap().unwrap();
    assert_eq!((new.worker.as_str(), new.fence), ("w1", old.fence + 1));
    let mut task = task_of(&store, &run, &old).await;
    task.state = TaskState::Failed;
    assert!(is_lease_lost(store.record_task(&old, &task).await));
    assert!(is_lease_lost(store.renew_claim(&old, LONG).await));
    assert!(is_lease_lost(
        store.finish_entry(&old, EntryOutcome::Failed).await
    ));
    assert_eq!(task_of(&store, &run, &old).await.state, TaskState::Pending);
    assert!(!store.work_status(&run).await.unwrap().aborting);
    run_entry(&store, &run, &new).await;
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Succeeded);
}

/// Submitting, claiming, recording and ending wake a change feed of another store on the same
/// database (an idle worker, a follower); a renewal does not.
pub async fn work_wakes_change_feeds(store: Queue, watcher: Queue) {
    let mut feed = watcher.changes();
    drain(&mut feed).await;
    let run = submit(&store, vec![stage(4, None, &["web1"])]).await;
    wakes(&mut feed, "submit").await;
    drain(&mut feed).await;
    let w = worker("w1", &[]);
    let claim = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    wakes(&mut feed, "claim").await;
    drain(&mut feed).await;
    store.renew_claim(&claim, LONG).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(600), feed.changed())
            .await
            .is_err(),
        "a renewal changes nothing a follower shows"
    );
    let mut task = task_of(&store, &run, &claim).await;
    task.state = TaskState::Running;
    store.record_task(&claim, &task).await.unwrap();
    wakes(&mut feed, "record_task").await;
    drain(&mut feed).await;
    store
        .finish_entry(&claim, EntryOutcome::Done)
        .await
        .unwrap();
    wakes(&mut feed, "finish_entry").await;
}

async fn drain(feed: &mut ChangeFeed) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::time::timeout(Duration::from_millis(300), feed.changed())
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the feed never goes quiet");
    }
}

async fn wakes(feed: &mut ChangeFeed, what: &str) {
    tokio::time::timeout(Duration::from_secs(5), feed.changed())
        .await
        .unwrap_or_else(|_| panic!("the feed did not wake within 5 s after {what}"));
}

pub async fn a_lapsed_claim_that_is_not_idempotent_stops_the_run(store: Queue) {
    let run = submit(&store, vec![stage(2, None, &["once1", "web2", "web3"])]).await;
    let w1 = worker("w1", &[]);
    let interrupted = WorkQueue::claim(&*store, &w1, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(interrupted.host, "once1");
    let other = WorkQueue::claim(&*store, &w1, LONG).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        WorkQueue::claim(&*store, &worker("w2", &[]), LONG)
            .await
            .unwrap()
            .is_none(),
        "a stopped run hands out nothing"
    );
    let status = store.work_status(&run).await.unwrap();
    assert_eq!(
        status.stopped.as_deref(),
        Some(
            "entry stages[0].tasks[0] on once1 was interrupted on worker w1 and its commands are not idempotent; resume with --force"
        )
    );
    assert!(status.aborting);
    assert!(is_lease_lost(
        store.finish_entry(&interrupted, EntryOutcome::Done).await
    ));
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Running);
    // The claimed entry finishes; then the run ends failed.
    run_entry(&store, &run, &other).await;
    let record = store.run(&run).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    let tasks = store.tasks(&run).await.unwrap();
    assert_eq!(tasks[2].state, TaskState::NotRun, "never claimed");
    let hosts: Vec<HostState> = store
        .hosts(&run)
        .await
        .unwrap()
        .iter()
        .map(|h| h.state)
        .collect();
    assert_eq!(
        hosts,
        [HostState::Failed, HostState::Done, HostState::Skipped]
    );
}

pub async fn a_failure_aborts_the_run(store: Queue) {
    let run = submit(
        &store,
        vec![
            stage(2, None, &["web1", "web2", "web3", "web4"]),
            stage(2, None, &["web1"]),
        ],
    )
    .await;
    let (w1, w2) = (worker("w1", &[]), worker("w2", &[]));
    let failing = WorkQueue::claim(&*store, &w1, LONG).await.unwrap().unwrap();
    let running = WorkQueue::claim(&*store, &w2, LONG).await.unwrap().unwrap();
    let mut task = task_of(&store, &run, &failing).await;
    task.state = TaskState::Failed;
    task.exit_status = Some(3);
    store.record_task(&failing, &task).await.unwrap();
    store
        .finish_entry(&failing, EntryOutcome::Failed)
        .await
        .unwrap();
    assert!(
        WorkQueue::claim(&*store, &w1, LONG)
            .await
            .unwrap()
            .is_none(),
        "no new claim"
    );
    let status = store.work_status(&run).await.unwrap();
    assert!(status.aborting);
    assert_eq!(status.claimed, [("w2".to_string(), 1)]);
    assert_eq!(
        store.run(&run).await.unwrap().finish_ts,
        None,
        "a claimed entry runs on"
    );
    run_entry(&store, &run, &running).await;
    let record = store.run(&run).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    assert!(record.finish_ts.is_some());
    let tasks = store.tasks(&run).await.unwrap();
    let states: Vec<TaskState> = tasks.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            TaskState::Failed,
            TaskState::Succeeded,
            TaskState::NotRun,
            TaskState::NotRun,
            TaskState::NotRun
        ]
    );
    let hosts = store.hosts(&run).await.unwrap();
    let web1 = hosts.iter().find(|h| h.host == "web1").unwrap();
    assert_eq!(web1.state, HostState::Failed);
}

pub async fn a_cancel_request_stops_claims_and_cancels_the_run(store: Queue) {
    let w = worker("w1", &[]);
    let run = submit(&store, vec![stage(4, None, &["web1", "web2", "web3"])]).await;
    let claim = WorkQueue::claim(&*store, &w, LONG).await.unwrap().unwrap();
    store.request_cancel(&run, "bob").await.unwrap();
    assert!(WorkQueue::claim(&*store, &w, LONG).await.unwrap().is_none());
    assert!(store.work_status(&run).await.unwrap().aborting);
    store
        .finish_entry(&claim, EntryOutcome::Cancelled)
        .await
        .unwrap();
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Cancelled);
    let tasks = store.tasks(&run).await.unwrap();
    assert_eq!(tasks[1].state, TaskState::NotRun);
    assert_eq!(tasks[2].state, TaskState::NotRun);
    let hosts: Vec<HostState> = store
        .hosts(&run)
        .await
        .unwrap()
        .iter()
        .map(|h| h.state)
        .collect();
    assert_eq!(
        hosts,
        [HostState::Failed, HostState::Skipped, HostState::Skipped],
        "as a single controller records them: cancelled fails its host, the others never ran"
    );

    // Cancelled with nothing claimed: the next claim by any worker finishes it.
    let run = submit(&store, vec![stage(4, None, &["web1"])]).await;
    store.request_cancel(&run, "bob").await.unwrap();
    assert!(WorkQueue::claim(&*store, &w, LONG).await.unwrap().is_none());
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Cancelled);
    assert_eq!(store.tasks(&run).await.unwrap()[0].state, TaskState::NotRun);
}

pub async fn unserved_zones_are_those_without_a_live_worker(store: Queue) {
    let mut spec = stage(100, None, &[]);
    for (host, zone) in [
        ("eu1", Some("eu")),
        ("us1", Some("us")),
        ("ap1", Some("ap")),
        ("any1", None),
    ] {
        spec.entries
            .push((host.to_string(), zone.map(str::to_string)));
    }
    let run = submit(&store, vec![spec]).await;
    assert_eq!(
        store.work_status(&run).await.unwrap().unserved_zones,
        ["ap", "eu", "us"],
        "no worker yet"
    );
    store
        .heartbeat(&worker("eu-w", &["eu"]), LONG)
        .await
        .unwrap();
    store
        .heartbeat(&worker("us-w", &["us"]), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        store.work_status(&run).await.unwrap().unserved_zones,
        ["ap"]
    );
    assert_eq!(
        store.work_status(&run).await.unwrap().served_zones,
        ["eu", "us"],
        "the zones live workers serve"
    );
    assert_eq!(
        RunStore::submitted_work(&*store, &run)
            .await
            .unwrap()
            .map(|w| w.unserved_zones),
        Some(vec!["ap".to_string()]),
        "viewers holding a RunStore see the same"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.work_status(&run).await.unwrap().unserved_zones,
        ["ap", "us"],
        "a worker whose heartbeat lapsed serves nothing"
    );
    assert_eq!(store.work_status(&run).await.unwrap().served_zones, ["eu"]);
    // A claimed entry's zone is not waiting.
    let eu = WorkQueue::claim(&*store, &worker("eu-w", &["eu"]), LONG)
        .await
        .unwrap()
        .unwrap();
    assert!(eu.host == "eu1" || eu.host == "any1");
    store.heartbeat(&worker("all", &[]), LONG).await.unwrap();
    assert!(
        store
            .work_status(&run)
            .await
            .unwrap()
            .unserved_zones
            .is_empty(),
        "a worker without zones serves every zone"
    );
}

/// Claims and ends `n` one-task entries with one worker, one after the other; returns the
/// time per entry (claim + finish_entry, no task record).
pub async fn claim_and_finish_overhead(store: Queue, n: usize) -> Duration {
    let hosts = hosts("h", n);
    let run = submit(&store, vec![stage(n, None, &refs(&hosts))]).await;
    let w = worker("w1", &[]);
    let start = Instant::now();
    let mut count = 0;
    while let Some(claim) = WorkQueue::claim(&*store, &w, LONG).await.unwrap() {
        store
            .finish_entry(&claim, EntryOutcome::Done)
            .await
            .unwrap();
        count += 1;
    }
    let elapsed = start.elapsed();
    assert_eq!(count, n);
    assert_eq!(store.run(&run).await.unwrap().state, RunState::Succeeded);
    elapsed / u32::try_from(n).unwrap()
}

pub async fn bad_submissions_are_refused(store: Queue) {
    let run = submit(&store, vec![stage(1, None, &["web1"])]).await;
    let again = Submission {
        run: run.clone(),
        commands: vec!["noop".to_string()],
        stages: vec![StageLimits {
            concurrency: 1,
            ..StageLimits::default()
        }],
        entries: vec![],
        rules: RunRules::default(),
    };
    let err = store.submit(&again).await.unwrap_err();
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert_eq!(
        text,
        format!("run store: failed to submit run {run}: it was submitted already")
    );
    let unknown = Submission {
        run: RunId::new(),
        ..again.clone()
    };
    assert!(matches!(
        store.submit(&unknown).await,
        Err(StoreError::NotFound { .. })
    ));
    let plain = deployer_core::fixture::store_contract::sample_run("plain");
    let plain_id = plain.id.clone();
    store.create_run(plain).await.unwrap();
    let mut stray = again.clone();
    stray.run = plain_id.clone();
    stray.entries.push(WorkEntry {
        stage: 3,
        entry: 0,
        host: "web1".to_string(),
        zone: None,
        tasks: vec![],
        idempotent: true,
        reaches: vec![],
    });
    let err = store.submit(&stray).await.unwrap_err();
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(text.contains("stages[3].tasks[0] is of no stage"), "{text}");
    assert_eq!(
        store.work_status(&plain_id).await.unwrap(),
        WorkStatus::default(),
        "nothing was submitted"
    );
}

// --- The single controller's rules across workers: budgets, min_hosts_up, finally stages ---

/// A submitted run of a tasklist (every entry idempotent, no zones) and a worker driving it.
struct Driven {
    store: Queue,
    run: RunId,
    me: WorkerInfo,
}

impl Driven {
    async fn submit(store: &Queue, tasklist: Tasklist) -> Driven {
        let plan = Plan::build(&tasklist, &registry()).unwrap();
        let new = NewRun::from_plan(&plan, "test", "alice");
        let run = new.id.clone();
        store.create_run(new).await.unwrap();
        let submission = Submission::of_plan(&plan, &run, |_| None).unwrap();
        store.submit(&submission).await.unwrap();
        Driven {
            store: store.clone(),
            run,
            me: worker("w-rules", &[]),
        }
    }

    async fn claim(&self) -> Option<Claim> {
        WorkQueue::claim(&*self.store, &self.me, LONG)
            .await
            .unwrap()
    }

    /// Records every task of `claim` as succeeded (`ok`) or failed, and ends the entry so.
    async fn end(&self, claim: &Claim, ok: bool) {
        for task in self.store.tasks(&self.run).await.unwrap() {
            if !claim.tasks.contains(&task.id) {
                continue;
            }
            let mut task = task;
            task.attempts = 1;
            if ok {
                task.state = TaskState::Succeeded;
            } else {
                task.state = TaskState::Failed;
                task.error = Some("boom".to_string());
                task.exit_status = Some(3);
            }
            self.store.record_task(claim, &task).await.unwrap();
        }
        let outcome = if ok {
            EntryOutcome::Done
        } else {
            EntryOutcome::Failed
        };
        self.store.finish_entry(claim, outcome).await.unwrap();
    }

    /// Claims and ends entries (failing those whose host is in `fail`) until none is left.
    async fn drain(&self, fail: &[&str]) -> Vec<(usize, String)> {
        self.drain_with(|_, host| !fail.contains(&host)).await
    }

    /// Claims and ends entries (succeeding as `ok(stage, host)` says) until none is left;
    /// the (stage, host) of each claim, in order.
    async fn drain_with(&self, ok: impl Fn(usize, &str) -> bool) -> Vec<(usize, String)> {
        let mut ran = Vec::new();
        while let Some(c) = self.claim().await {
            ran.push((c.stage, c.host.clone()));
            self.end(&c, ok(c.stage, &c.host)).await;
        }
        ran
    }

    /// Each task's (state, error) by (stage, host).
    async fn tasks(&self) -> HashMap<(usize, String), (TaskState, Option<String>)> {
        self.store
            .tasks(&self.run)
            .await
            .unwrap()
            .into_iter()
            .map(|t| ((t.id.stage, t.host.clone()), (t.state, t.error.clone())))
            .collect()
    }

    async fn host_state(&self, host: &str) -> HostState {
        self.store
            .hosts(&self.run)
            .await
            .unwrap()
            .iter()
            .find(|h| h.host == host)
            .unwrap_or_else(|| panic!("no host {host}"))
            .state
    }

    async fn state(&self) -> RunState {
        self.store.run(&self.run).await.unwrap().state
    }
}

fn noop_on(host: &str) -> Task {
    Task::new("noop").on(host)
}

fn stage_on(name: &str, hosts: &[&str]) -> Stage {
    hosts
        .iter()
        .fold(Stage::new(name, 10), |s, h| s.task(noop_on(h)))
}

/// A failure within the run's budget drops its host: the run goes on without it (its later
/// ordinary entries end dropped, with the reason) and ends degraded.
pub async fn a_failure_within_the_budget_drops_its_host(store: Queue) {
    let tasklist = Tasklist::new("budget")
        .budget(FailureBudget::max_failures(1))
        .stage(stage_on("s0", &["a", "b", "c"]))
        .stage(stage_on("s1", &["a", "b", "c"]));
    let d = Driven::submit(&store, tasklist).await;
    let mut claims = Vec::new();
    while let Some(c) = d.claim().await {
        claims.push(c);
    }
    assert_eq!(claims.len(), 3, "stage 0: every host at once");
    d.end(&claims[0], false).await; // a fails
    let status = store.work_status(&d.run).await.unwrap();
    assert!(!status.aborting, "within the budget the run goes on");
    assert_eq!(status.dropped, 1);
    assert_eq!(d.host_state("a").await, HostState::Dropped);
    let (state, error) = d.tasks().await[&(1, "a".to_string())].clone();
    assert_eq!(state, TaskState::Dropped);
    assert_eq!(
        error.as_deref(),
        Some("stages[0].tasks[0] noop failed: boom (exit status 3)"),
        "the single controller's reason"
    );
    d.end(&claims[1], true).await;
    d.end(&claims[2], true).await;
    let ran = d.drain(&[]).await;
    assert_eq!(
        ran.iter().map(|(_, h)| h.as_str()).collect::<BTreeSet<_>>(),
        BTreeSet::from(["b", "c"]),
        "the dropped host does no more ordinary work: {ran:?}"
    );
    assert_eq!(d.state().await, RunState::Degraded);
    assert_eq!(d.host_state("a").await, HostState::Dropped);
    assert_eq!(d.host_state("b").await, HostState::Done);
}

/// The failure that goes past the run's budget, or past a stage's own (which replaces the
/// run's for that stage), aborts the run: the ordinary entries left do not run.
pub async fn a_failure_past_the_budget_aborts_the_run(store: Queue) {
    // The run's budget: one host may fail, the second stops the run.
    let tasklist = Tasklist::new("run budget")
        .budget(FailureBudget::max_failures(1))
        .stage(Stage::new("s0", 1).tasks(["a", "b", "c"].map(noop_on)))
        .stage(stage_on("s1", &["a", "b", "c"]));
    let d = Driven::submit(&store, tasklist).await;
    let ran = d.drain(&["a", "b"]).await;
    assert_eq!(ran, [(0, "a".to_string()), (0, "b".to_string())]);
    assert_eq!(d.state().await, RunState::Failed);
    let tasks = d.tasks().await;
    assert_eq!(
        tasks[&(0, "c".to_string())],
        (
            TaskState::NotRun,
            Some("an earlier task failed".to_string())
        )
    );
    assert_eq!(
        tasks[&(1, "c".to_string())],
        (
            TaskState::NotRun,
            Some("an earlier stage failed".to_string())
        )
    );
    assert_eq!(tasks[&(1, "a".to_string())].0, TaskState::Dropped);
    assert_eq!(d.host_state("b").await, HostState::Failed);
    assert_eq!(d.host_state("a").await, HostState::Dropped);

    // A stage's budget (50 % of its 4 hosts) over the run's none: two failures drop their
    // hosts, the third stops the run.
    let tasklist = Tasklist::new("stage budget")
        .stage(
            Stage::new("s0", 1)
                .budget(FailureBudget::max_fail_percentage(50))
                .tasks(["a", "b", "c", "d", "e"].map(noop_on)),
        )
        .stage(stage_on("s1", &["e"]));
    let d = Driven::submit(&store, tasklist).await;
    let ran = d.drain(&["a", "b", "c"]).await;
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert_eq!(d.state().await, RunState::Failed);
    assert_eq!(d.tasks().await[&(0, "d".to_string())].0, TaskState::NotRun);

    // Within a stage's budget, a later stage without one falls back to the run's (none): its
    // first failure stops the run.
    let tasklist = Tasklist::new("stage then none")
        .stage(
            Stage::new("s0", 1)
                .budget(FailureBudget::max_failures(1))
                .tasks(["a", "b"].map(noop_on)),
        )
        .stage(Stage::new("s1", 1).tasks(["b", "c"].map(noop_on)));
    let d = Driven::submit(&store, tasklist).await;
    let ran = d
        .drain_with(|stage, host| (stage, host) != (0, "a") && (stage, host) != (1, "b"))
        .await;
    assert_eq!(
        ran,
        [
            (0, "a".to_string()),
            (0, "b".to_string()),
            (1, "b".to_string())
        ]
    );
    assert_eq!(d.state().await, RunState::Failed);
    assert_eq!(d.tasks().await[&(1, "c".to_string())].0, TaskState::NotRun);
}

/// `min_hosts_up`: at most `hosts − min − down` hosts hold a place at once over every
/// claimer (a host keeps its place while it has work left in the stage); when nothing runs
/// and no host may start, the run fails with the single controller's message.
pub async fn min_hosts_up_holds_across_claimers(store: Queue) {
    let hosts = ["h0", "h1", "h2", "h3", "h4", "h5"];
    let tasklist = Tasklist::new("window").stage(
        Stage::new("rolling", 12)
            .per_host(1)
            .min_hosts_up(4)
            .tasks(hosts.map(noop_on))
            .tasks(hosts.map(noop_on)),
    );
    let _run = Driven::submit(&store, tasklist).await.run;
    // Eight claimers at once: two hosts hold the window.
    let claimers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                WorkQueue::claim(&*store, &worker(&format!("w{i}"), &[]), LONG)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut claims = Vec::new();
    for c in claimers {
        claims.extend(c.await.unwrap());
    }
    let held: BTreeSet<&str> = claims.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(held, BTreeSet::from(["h0", "h1"]), "{claims:?}");
    // h0 keeps its place until its second entry is done too.
    let first = claims.iter().find(|c| c.host == "h0").unwrap().clone();
    finish_as(&store, &first).await;
    let next = WorkQueue::claim(&*store, &worker("w9", &[]), LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((next.host.as_str(), next.entry), ("h0", 6));
    assert!(
        WorkQueue::claim(&*store, &worker("w9", &[]), LONG)
            .await
            .unwrap()
            .is_none()
    );
    finish_as(&store, &next).await;
    let third = WorkQueue::claim(&*store, &worker("w9", &[]), LONG)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.host, "h2", "h0's place is free");

    // 3 hosts, at least 2 up, one may fail within the budget: once it is down no other host
    // may be taken down, and the run fails saying so.
    let tasklist = Tasklist::new("held").stage(
        Stage::new("rolling", 3)
            .min_hosts_up(2)
            .budget(FailureBudget::max_failures(2))
            .tasks(["a", "b", "c"].map(noop_on)),
    );
    let d = Driven::submit(&store, tasklist).await;
    let a = d.claim().await.unwrap();
    assert!(d.claim().await.is_none(), "a window of one host");
    d.end(&a, false).await;
    assert!(d.claim().await.is_none());
    assert_eq!(d.state().await, RunState::Failed);
    let held =
        "min_hosts_up 2: 1 of the stage's 3 hosts are down, so no other host may be taken down";
    let tasks = d.tasks().await;
    assert_eq!(
        tasks[&(0, "b".to_string())],
        (TaskState::NotRun, Some(held.to_string()))
    );
    assert_eq!(tasks[&(0, "c".to_string())].1.as_deref(), Some(held));
    assert_eq!(d.host_state("a").await, HostState::Dropped);
}

async fn finish_as(store: &Queue, claim: &Claim) {
    store.finish_entry(claim, EntryOutcome::Done).await.unwrap();
}

/// The run's three ways to end before its finally stages and what each selects: `on_failure`
/// after a success, a failure, a cancel, with only dropped hosts; `if_reached` /
/// `unless_reached` against the points reached.
pub async fn finally_stages_select_as_one_controller(store: Queue) {
    let tasklist = |budget: Option<usize>| {
        let mut t = Tasklist::new("finally");
        if let Some(n) = budget {
            t = t.budget(FailureBudget::max_failures(n));
        }
        t.stage(
            Stage::new("lock", 10)
                .task(noop_on("a").reaches("locked"))
                .task(noop_on("b").reaches("locked"))
                .task(noop_on("c")),
        )
        .stage(stage_on("work", &["a", "b", "c"]))
        .stage(stage_on("unlock", &["a", "b", "c"]).finally(Finally::if_reached("locked")))
        .stage(stage_on("page", &["a", "b", "c"]).finally(Finally::on_failure()))
        .stage(
            stage_on("fix", &["a", "b", "c"]).finally(Finally::always().unless_reached("locked")),
        )
    };
    let by_stage = |ran: &[(usize, String)], stage: usize| -> BTreeSet<String> {
        ran.iter()
            .filter(|(s, _)| *s == stage)
            .map(|(_, h)| h.clone())
            .collect()
    };
    // After a success: unlock where locked; no page; fix where not locked.
    let d = Driven::submit(&store, tasklist(None)).await;
    let ran = d.drain(&[]).await;
    assert_eq!(by_stage(&ran, 2), BTreeSet::from(["a".into(), "b".into()]));
    assert!(by_stage(&ran, 3).is_empty(), "{ran:?}");
    assert_eq!(by_stage(&ran, 4), BTreeSet::from(["c".into()]));
    let tasks = d.tasks().await;
    assert_eq!(
        tasks[&(3, "a".to_string())],
        (
            TaskState::Skipped,
            Some("the run has not failed".to_string())
        )
    );
    assert_eq!(
        tasks[&(2, "c".to_string())],
        (
            TaskState::Skipped,
            Some("its host did not reach \"locked\"".to_string())
        )
    );
    assert_eq!(
        tasks[&(4, "a".to_string())].1.as_deref(),
        Some("its host reached \"locked\"")
    );
    assert_eq!(d.state().await, RunState::Succeeded);

    // After a failure (b's lock fails: b reached nothing): the work does not run, every
    // finally stage does, for the hosts it selects; the run fails.
    let d = Driven::submit(&store, tasklist(None)).await;
    let ran = d.drain(&["b"]).await;
    assert!(by_stage(&ran, 1).is_empty(), "{ran:?}");
    assert_eq!(by_stage(&ran, 2), BTreeSet::from(["a".into()]));
    assert_eq!(by_stage(&ran, 3).len(), 3, "paged for every host: {ran:?}");
    assert_eq!(by_stage(&ran, 4), BTreeSet::from(["b".into(), "c".into()]));
    assert_eq!(d.tasks().await[&(1, "a".to_string())].0, TaskState::NotRun);
    assert_eq!(d.state().await, RunState::Failed);

    // After a cancel: the same clean-up; the run is cancelled.
    let d = Driven::submit(&store, tasklist(None)).await;
    let locks: Vec<Claim> = [d.claim().await.unwrap(), d.claim().await.unwrap()].into();
    for c in &locks {
        d.end(c, true).await;
    }
    store.request_cancel(&d.run, "alice").await.unwrap();
    let ran = d.drain(&[]).await;
    assert!(
        by_stage(&ran, 0).len() <= 1 && by_stage(&ran, 1).is_empty(),
        "{ran:?}"
    );
    assert_eq!(by_stage(&ran, 2), BTreeSet::from(["a".into(), "b".into()]));
    assert_eq!(by_stage(&ran, 3).len(), 3, "{ran:?}");
    assert_eq!(d.state().await, RunState::Cancelled);

    // Degraded (b dropped in the work stage): on_failure pages only the dropped host.
    let d = Driven::submit(&store, tasklist(Some(1))).await;
    let ran = d.drain_with(|stage, host| (stage, host) != (1, "b")).await;
    assert_eq!(by_stage(&ran, 3), BTreeSet::from(["b".into()]));
    assert_eq!(
        d.tasks().await[&(3, "a".to_string())].1.as_deref(),
        Some("the run has not failed on this host")
    );
    assert_eq!(d.state().await, RunState::Degraded);
    assert_eq!(d.host_state("b").await, HostState::Dropped);
}

/// A failure in a finally stage is not counted and stops nothing: the stage's other entries
/// and later finally stages run; the run fails. A finally stage first in the run is sorted
/// out at submit.
pub async fn a_failure_in_a_finally_stage_fails_the_run_and_stops_nothing(store: Queue) {
    let tasklist = Tasklist::new("finally fails")
        .budget(FailureBudget::max_failures(0))
        .stage(stage_on("work", &["a", "b"]))
        .stage(
            Stage::new("cleanup", 1)
                .finally(Finally::always())
                .tasks(["a", "b"].map(noop_on)),
        )
        .stage(stage_on("after", &["a", "b"]))
        .stage(stage_on("last", &["a", "b"]).finally(Finally::always()));
    let d = Driven::submit(&store, tasklist).await;
    let ran = d.drain_with(|stage, host| (stage, host) != (1, "a")).await;
    assert_eq!(ran.len(), 6, "all but the ordinary stage after it: {ran:?}");
    assert_eq!(ran[2], (1, "a".to_string()));
    assert_eq!(
        ran[3],
        (1, "b".to_string()),
        "after the failure in the finally stage"
    );
    assert_eq!(ran[4].0, 3, "the later finally stage runs: {ran:?}");
    assert_eq!(
        d.tasks().await[&(2, "a".to_string())],
        (
            TaskState::NotRun,
            Some("an earlier stage failed".to_string())
        )
    );
    assert_eq!(d.state().await, RunState::Failed);
    assert_eq!(d.host_state("a").await, HostState::Failed);
    assert_eq!(d.host_state("b").await, HostState::Done);

    // Only on_failure stages, after nothing: sorted out at once, the run succeeds unclaimed.
    let tasklist =
        Tasklist::new("only pages").stage(stage_on("page", &["a"]).finally(Finally::on_failure()));
    let d = Driven::submit(&store, tasklist).await;
    assert!(d.claim().await.is_none());
    assert_eq!(d.state().await, RunState::Succeeded);
}

/// A rollback stage's success records its host ROLLED_BACK (the worker records the task rolled
/// back, as its journal does), over the failure that led to it.
pub async fn a_rollback_stage_rolls_its_host_back(store: Queue) {
    let tasklist = Tasklist::new("rollback")
        .stage(stage_on("switch", &["a", "b"]))
        .stage(stage_on("back", &["a", "b"]).finally(Finally::on_failure().rolling_back()));
    let d = Driven::submit(&store, tasklist).await;
    let mut ran = Vec::new();
    while let Some(c) = d.claim().await {
        ran.push((c.stage, c.host.clone()));
        if c.stage == 0 {
            d.end(&c, c.host != "a").await;
            continue;
        }
        for mut task in store.tasks(&d.run).await.unwrap() {
            if claim_has(&c, &task) {
                task.state = TaskState::RolledBack;
                store.record_task(&c, &task).await.unwrap();
            }
        }
        store.finish_entry(&c, EntryOutcome::Done).await.unwrap();
    }
    assert_eq!(ran.iter().filter(|(s, _)| *s == 1).count(), 2, "{ran:?}");
    assert_eq!(d.state().await, RunState::Failed);
    assert_eq!(d.host_state("a").await, HostState::RolledBack);
    assert_eq!(d.host_state("b").await, HostState::RolledBack);
}

fn claim_has(claim: &Claim, task: &TaskRecord) -> bool {
    claim.tasks.contains(&task.id)
}

/// A resumed run counts failures afresh and sorts its finally stages out again: a degraded
/// run's dropped host runs what it did not finish, and the run can end succeeded.
pub async fn a_resumed_run_counts_failures_afresh(store: Queue) {
    let tasklist = Tasklist::new("resume degraded")
        .budget(FailureBudget::max_failures(1))
        .stage(
            Stage::new("lock", 10)
                .task(noop_on("a").reaches("locked"))
                .task(noop_on("b").reaches("locked")),
        )
        .stage(stage_on("work", &["a", "b"]))
        .stage(stage_on("page", &["a", "b"]).finally(Finally::on_failure()))
        .stage(stage_on("unlock", &["a", "b"]).finally(Finally::if_reached("locked")));
    let d = Driven::submit(&store, tasklist).await;
    let ran = d.drain_with(|stage, host| (stage, host) != (1, "a")).await;
    assert!(ran.contains(&(2, "a".to_string())), "paged for a: {ran:?}");
    assert_eq!(d.state().await, RunState::Degraded);
    store.resume_work(&d.run, &[], false).await.unwrap();
    let ran = d.drain(&[]).await;
    assert!(ran.contains(&(1, "a".to_string())), "{ran:?}");
    assert!(
        !ran.iter().any(|(s, _)| *s == 2),
        "no page after a resumed success: {ran:?}"
    );
    assert_eq!(d.state().await, RunState::Succeeded);
    assert_eq!(d.host_state("a").await, HostState::Done);
    // a's page was done on the first drive and stays done; b's stays skipped (a skipped task
    // is done for a resume, as for a controller's).
    assert_eq!(
        d.tasks().await[&(2, "a".to_string())].0,
        TaskState::Succeeded
    );
    assert_eq!(d.tasks().await[&(2, "b".to_string())].0, TaskState::Skipped);
}
