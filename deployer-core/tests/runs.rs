//! Durable runs on the in-memory store: the store contract, recording, resume, leases, targets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{registry, work};
use deployer_core::fixture::{EventLog, FakeConnector, store_contract};
use deployer_core::*;

#[tokio::test]
async fn memory_store_meets_the_contract() {
    store_contract::all(|| async { MemoryStore::new() }).await;
}

fn executor() -> Executor {
    Executor::new(Arc::new(FakeConnector::new())).retry_delay(Duration::ZERO)
}

fn two_stage() -> Tasklist {
    Tasklist::new("deploy")
        .stage(Stage::new("Upload", 4).per_host(1).tasks(vec![
            work("fe001", "up1").tag("web"),
            work("fe002", "up2").tag("web"),
        ]))
        .stage(Stage::new("Restart", 1).task(vec![
            work("fe001", "stop"),
            work("fe001", "start").arg("fail", true).arg("exit", 3).arg("stderr", "port in use"),
        ]))
}

#[tokio::test]
async fn a_run_records_every_task_and_host() {
    let (registry, _) = registry();
    let plan = Plan::build(&two_stage(), &registry).unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new())).owner("ctl-1");
    let (id, report) = runs
        .start(
            &executor(),
            &plan,
            "tasklist:deploy.json",
            "alice",
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Failed);
    let store = runs.store();
    let run = store.run(&id).await.unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.source, "tasklist:deploy.json");
    assert_eq!(run.started_by, "alice");
    assert!(run.started_ts.is_some() && run.finish_ts.is_some());
    assert!(run.owner.is_none(), "the lease is released at the end");

    let tasks = store.tasks(&id).await.unwrap();
    let states: Vec<TaskState> = tasks.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            TaskState::Succeeded,
            TaskState::Succeeded,
            TaskState::Succeeded,
            TaskState::Failed
        ]
    );
    let failed = &tasks[3];
    assert_eq!(failed.exit_status, Some(3));
    assert_eq!(failed.stderr_tail.as_deref(), Some("port in use"));
    assert_eq!(failed.attempts, 1);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("work start failed")
    );
    assert!(
        tasks
            .iter()
            .all(|t| t.finish_ts.is_some() && t.duration.is_some())
    );

    let hosts = store.hosts(&id).await.unwrap();
    let hosts: Vec<(&str, HostState)> = hosts.iter().map(|h| (h.host.as_str(), h.state)).collect();
    assert_eq!(
        hosts,
        [("fe001", HostState::Failed), ("fe002", HostState::Done)]
    );
    assert!(store.average_duration("work").await.unwrap().is_some());
}

#[tokio::test]
async fn resume_runs_only_what_is_not_done() {
    let (registry, tracker) = registry();
    // The last task fails once, then succeeds: the resumed run must finish the job without
    // running the three tasks that already succeeded.
    let tasklist = Tasklist::new("deploy")
        .stage(Stage::new("Upload", 4).tasks(vec![work("fe001", "up1"), work("fe002", "up2")]))
        .stage(Stage::new("Restart", 1).task(vec![
            work("fe001", "stop"),
            work("fe001", "start").arg("fail_times", 1),
        ]))
        .stage(Stage::new("Check", 1).task(work("fe001", "check")));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new()));
    let (id, first) = runs
        .start(&executor(), &plan, "test", "me", RunOptions::default())
        .await
        .unwrap();
    assert_eq!(first.outcome, RunOutcome::Failed);
    assert_eq!(tracker.entered("check"), 0);

    let log = Arc::new(EventLog::new());
    let report = runs
        .resume(
            &executor().sink(log.clone()),
            &registry,
            &id,
            ResumeOptions::default(),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{:?}", report.failures);
    for done in ["up1", "up2", "stop"] {
        assert_eq!(tracker.entered(done), 1, "{done} ran exactly once");
    }
    assert_eq!(tracker.entered("start"), 2);
    assert_eq!(tracker.entered("check"), 1);
    let run = runs.store().run(&id).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let tasks = runs.store().tasks(&id).await.unwrap();
    assert!(tasks.iter().all(|t| t.state == TaskState::Succeeded));
    assert_eq!(tasks[3].attempts, 2, "attempts accumulate across resumes");

    let again = runs
        .resume(
            &executor(),
            &registry,
            &id,
            ResumeOptions::default(),
            RunOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        again.to_string(),
        format!("run {id} already succeeded; nothing to resume")
    );
}

/// A controller that died mid-task: its lease expires, a task is left `RUNNING`.
async fn interrupted_run(runs: &Runs, plan: &Plan) -> RunId {
    let store = runs.store();
    let id = runs.create(plan, "test", "me").await.unwrap();
    store
        .claim(&id, "dead-controller", Duration::from_millis(1))
        .await
        .unwrap();
    store.set_run_state(&id, RunState::Running).await.unwrap();
    let mut tasks = store.tasks(&id).await.unwrap();
    tasks[0].state = TaskState::Succeeded;
    tasks[1].state = TaskState::Running;
    tasks[1].attempts = 1;
    store.update_task(&id, &tasks[0]).await.unwrap();
    store.update_task(&id, &tasks[1]).await.unwrap();
    id
}

#[tokio::test]
async fn an_interrupted_non_idempotent_task_needs_confirmation() {
    let (registry, tracker) = registry();
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).tasks(vec![
        work("fe001", "a"),
        work("fe001", "b"),
        work("fe001", "c"),
    ]));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new()));
    let id = interrupted_run(&runs, &plan).await;
    tokio::time::sleep(Duration::from_millis(20)).await; // let the dead controller's lease lapse

    let err = runs
        .resume(
            &executor(),
            &registry,
            &id,
            ResumeOptions::default(),
            RunOptions::default(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RunsError::NeedsConfirmation { .. }), "{msg}");
    assert!(msg.contains("stages[0].tasks[1] work on fe001"), "{msg}");
    assert_eq!(tracker.order().len(), 0, "nothing ran");

    let report = runs
        .resume(
            &executor(),
            &registry,
            &id,
            ResumeOptions {
                force: true,
                ..Default::default()
            },
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert!(report.succeeded());
    assert_eq!(
        tracker.order(),
        ["b", "c"],
        "the done task did not run again"
    );
}

#[derive(Debug)]
struct Idempotent(Arc<std::sync::atomic::AtomicUsize>);

#[async_trait]
impl Command for Idempotent {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        unreachable!()
    }
    async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Outcome::done())
    }
    fn idempotent(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn an_interrupted_idempotent_task_runs_again_without_asking() {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut registry = CommandRegistry::new();
    let c = count.clone();
    registry.register_fn("mkdir", move |_| Ok(Box::new(Idempotent(c.clone()))));
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).tasks(vec![
        Task::new("mkdir").on("fe001"),
        Task::new("mkdir").on("fe001"),
    ]));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new()));
    let id = interrupted_run(&runs, &plan).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = runs
        .resume(
            &executor(),
            &registry,
            &id,
            ResumeOptions::default(),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert!(report.succeeded());
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_run_driven_by_a_live_controller_cannot_be_resumed() {
    let (registry, tracker) = registry();
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).task(work("fe001", "a")));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new()));
    let id = runs.create(&plan, "test", "me").await.unwrap();
    runs.store()
        .claim(&id, "other-controller", Duration::from_secs(60))
        .await
        .unwrap();
    let err = runs
        .resume(
            &executor(),
            &registry,
            &id,
            ResumeOptions::default(),
            RunOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("run {id} is being driven by other-controller")),
        "{err}"
    );
    assert_eq!(tracker.order().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_run() {
    let (registry, _tracker) = registry();
    let tasklist = Tasklist::new("t").stage(
        Stage::new("s", 1)
            .tasks((0..3).map(|i| work("fe001", &format!("t{i}")).arg("ms", 3_600_000))),
    );
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let store = Arc::new(MemoryStore::new());
    let runs = Runs::new(store.clone())
        .owner("ctl-1")
        .lease_ttl(Duration::from_millis(60));
    let id = runs.create(&plan, "test", "me").await.unwrap();
    let driving = {
        let runs = runs.clone();
        let id = id.clone();
        tokio::spawn(async move {
            runs.drive(&executor(), &id, &plan, RunOptions::default())
                .await
        })
    };
    // Another controller steals the run (as if ctl-1 had stalled past its lease).
    loop {
        let run = store.run(&id).await.unwrap();
        if run.state == RunState::Running {
            break;
        }
        tokio::task::yield_now().await;
    }
    store.release(&id, "ctl-1").await.unwrap();
    store
        .claim(&id, "ctl-2", Duration::from_secs(60))
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), driving)
        .await
        .expect("losing the lease stops hour-long tasks")
        .unwrap();
    let err = result.unwrap_err();
    assert!(err.to_string().contains("lease of ctl-1 was lost"), "{err}");
    assert_eq!(
        store.run(&id).await.unwrap().owner.as_deref(),
        Some("ctl-2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_hosts_are_skipped_and_added_hosts_recorded() {
    let (registry, tracker) = registry();
    // fe001's first task waits until it is told the host list changed.
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).tasks(vec![
        work("fe001", "first").arg("wait_done", 1),
        work("fe002", "gone1"),
        work("fe001", "second"),
        work("fe002", "gone2"),
    ]));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new()));
    let id = runs.create(&plan, "test", "me").await.unwrap();
    let targets = TargetSet::new();
    let options = RunOptions {
        targets: targets.clone(),
        ..Default::default()
    };
    let (sink, mut events) = ChannelSink::new();
    let driving = {
        let runs = runs.clone();
        let id = id.clone();
        tokio::spawn(async move {
            runs.drive(&executor().sink(sink), &id, &plan, options)
                .await
        })
    };
    while let Some(e) = events.recv().await {
        if matches!(e.kind, EventKind::TaskStarted { .. }) {
            break;
        }
    }
    runs.remove_host(&id, "fe002", &targets).await.unwrap();
    runs.add_host(&id, "fe003").await.unwrap();
    // Release `first` by finishing one task elsewhere.
    {
        let mut s = tracker.state.lock().unwrap();
        s.done += 1;
    }
    tracker.notify.notify_waiters();
    let report = tokio::time::timeout(Duration::from_secs(10), driving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.succeeded());
    assert_eq!(tracker.order(), ["first", "second"]);
    let tasks = runs.store().tasks(&id).await.unwrap();
    assert_eq!(tasks[1].state, TaskState::NotRun);
    assert_eq!(
        tasks[1].error.as_deref(),
        Some("its host was removed from the targeted set")
    );
    let hosts = runs.store().hosts(&id).await.unwrap();
    let hosts: Vec<(&str, HostState)> = hosts.iter().map(|h| (h.host.as_str(), h.state)).collect();
    assert_eq!(
        hosts,
        [
            ("fe001", HostState::Done),
            ("fe002", HostState::Removed),
            ("fe003", HostState::Added)
        ]
    );
}

#[tokio::test]
async fn purge_deletes_old_finished_runs() {
    let (registry, _) = registry();
    let plan = Plan::build(
        &Tasklist::new("t").stage(Stage::new("s", 1).task(work("a", "x"))),
        &registry,
    )
    .unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new()));
    let (id, _) = runs
        .start(&executor(), &plan, "t", "me", RunOptions::default())
        .await
        .unwrap();
    assert_eq!(runs.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(runs.purge(Duration::ZERO).await.unwrap(), 1);
    assert!(runs.store().run(&id).await.is_err());
}

#[tokio::test]
async fn a_task_whose_start_cannot_be_recorded_does_not_run() {
    struct Broken;
    #[async_trait]
    impl Journal for Broken {
        async fn record(&self, event: &Event) -> Result<(), BoxError> {
            match event.kind {
                EventKind::TaskStarted { .. } => Err("disk full".into()),
                _ => Ok(()),
            }
        }
    }
    let (registry, tracker) = registry();
    let plan = Plan::build(
        &Tasklist::new("t").stage(Stage::new("s", 1).task(work("a", "x"))),
        &registry,
    )
    .unwrap();
    let report = executor().journal(Arc::new(Broken)).run(&plan).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(tracker.entered("x"), 0);
    assert!(
        report.failures[0]
            .outcome
            .to_string()
            .contains("cannot record its start in the run journal: disk full")
    );
}

/// Prints lines (through `ExecContext::log`, as a command's output), one of them a secret,
/// then works for `ms`.
#[derive(Debug)]
struct Chatty {
    lines: usize,
    ms: u64,
}

#[async_trait]
impl Command for Chatty {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let raw = args.raw();
        Ok(Chatty {
            lines: raw.get("lines").and_then(|v| v.as_u64()).unwrap_or(1) as usize,
            ms: raw.get("ms").and_then(|v| v.as_u64()).unwrap_or(0),
        })
    }

    fn secret_arguments() -> &'static [&'static str]
    where
        Self: Sized,
    {
        &["token"]
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        for i in 0..self.lines {
            ctx.log(&format!("line {i:05} of {}", ctx.info().host));
        }
        ctx.log("token is hunter2-secret");
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(Outcome::done())
    }
}

#[tokio::test]
async fn a_task_record_keeps_the_redacted_tail_of_its_output() {
    let mut registry = CommandRegistry::new();
    registry.register::<Chatty>("chatty");
    let tasklist = Tasklist::new("chat").stage(
        Stage::new("s", 2)
            .task(
                Task::new("chatty")
                    .on("fe001")
                    .arg("lines", 10_000)
                    .arg("token", serde_json::json!({"secret": "hunter2-secret"})),
            )
            .task(Task::new("chatty").on("fe002").arg("lines", 2)),
    );
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new()));
    let (id, report) = runs
        .start(&executor(), &plan, "test", "alice", RunOptions::default())
        .await
        .unwrap();
    assert!(report.succeeded());
    let store = runs.store();
    assert!(
        store
            .tasks(&id)
            .await
            .unwrap()
            .iter()
            .all(|t| t.output_tail.is_none()),
        "a run's tasks are read without their output"
    );
    let fe001 = store.host_tasks(&id, "fe001").await.unwrap();
    let long = fe001[0].output_tail.as_deref().expect("an output tail");
    assert!(long.len() <= OUTPUT_TAIL_BYTES, "{} bytes", long.len());
    assert!(
        long.len() > OUTPUT_TAIL_BYTES - 100,
        "the tail is kept whole"
    );
    assert!(long.starts_with("line "), "whole lines: {:?}", &long[..40]);
    assert!(
        long.ends_with("line 09999 of fe001\ntoken is ***\n"),
        "{:?}",
        &long[long.len() - 60..]
    );
    assert!(!long.contains("hunter2"), "secrets redacted");
    assert_eq!(
        store.host_tasks(&id, "fe002").await.unwrap()[0]
            .output_tail
            .as_deref(),
        Some("line 00000 of fe002\nline 00001 of fe002\ntoken is ***\n"),
        "a plan's secrets are redacted from every one of its tasks' output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_requested_through_the_store_stops_the_run_like_a_first_cancel() {
    let mut registry = CommandRegistry::new();
    registry.register::<Chatty>("chatty");
    // Stage 1: two slow tasks on one host, one at a time; stage 2 must not start.
    let tasklist = Tasklist::new("long")
        .stage(
            Stage::new("slow", 1)
                .task(Task::new("chatty").on("fe001").arg("ms", 600))
                .task(Task::new("chatty").on("fe001").arg("ms", 600)),
        )
        .stage(Stage::new("later", 1).task(Task::new("chatty").on("fe001")));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let store = Arc::new(MemoryStore::new());
    let runs = Runs::new(store.clone()).cancel_poll(Duration::from_millis(50));
    let id = runs.create(&plan, "test", "alice").await.unwrap();
    let driving = {
        let runs = runs.clone();
        let id = id.clone();
        tokio::spawn(async move {
            runs.drive(&executor(), &id, &plan, RunOptions::default())
                .await
        })
    };
    // Another process would do the same through its own handle on the store.
    let mut feed = store.changes();
    while store.tasks(&id).await.unwrap()[0].state == TaskState::Pending {
        feed.changed().await;
    }
    let request = store.request_cancel(&id, "bob").await.unwrap();
    assert_eq!(request.by, "bob");
    let report = driving.await.unwrap().unwrap();
    assert_eq!(report.outcome, RunOutcome::Cancelled);
    let tasks = store.tasks(&id).await.unwrap();
    let states: Vec<TaskState> = tasks.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [TaskState::Succeeded, TaskState::NotRun, TaskState::NotRun],
        "the running task finished (first cancel), nothing new started"
    );
    assert_eq!(store.run(&id).await.unwrap().state, RunState::Cancelled);
    assert!(matches!(
        store.request_cancel(&id, "bob").await,
        Err(StoreError::RunFinished { .. })
    ));
}
