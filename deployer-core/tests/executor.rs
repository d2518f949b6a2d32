//! The executor's semantics: limits, ordering, failure, chains, timeouts, retries, cancellation.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{registry, work};
use deployer_core::fixture::{EventLog, FakeConnector};
use deployer_core::*;

fn executor(log: &Arc<EventLog>) -> Executor {
    Executor::new(Arc::new(FakeConnector::new()))
        .sink(log.clone())
        .retry_delay(Duration::ZERO)
}

fn id(stage: usize, entry: usize, step: Option<usize>) -> TaskId {
    TaskId { stage, entry, step }
}

async fn run(tasklist: &Tasklist) -> (RunReport, Arc<EventLog>, Arc<common::Tracker>) {
    let (registry, tracker) = registry();
    let plan = Plan::build(tasklist, &registry).expect("valid plan");
    let log = Arc::new(EventLog::new());
    let report = tokio::time::timeout(Duration::from_secs(60), executor(&log).run(&plan))
        .await
        .expect("the run must not hang");
    (report, log, tracker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_host_limit_is_exact_under_load() {
    // 200 tasks over 20 hosts, per-host 2, stage limit high enough not to bind.
    let stage = Stage::new("load", 100)
        .per_host(2)
        .tasks((0..200).map(|i| work(&format!("h{:02}", i % 20), &format!("t{i}")).arg("ms", 5)));
    let (report, log, tracker) = run(&Tasklist::new("load").stage(stage)).await;
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(report.counts.succeeded, 200);
    let per_host = tracker.per_host_max();
    assert_eq!(per_host.len(), 20);
    for (host, max) in &per_host {
        assert_eq!(*max, 2, "host {host} had {max} in flight, limit is 2");
    }
    assert_eq!(tracker.max(), 40, "20 hosts × 2 = 40 in flight at most");
    // The executor's own events agree with what the commands saw.
    assert_eq!(log.max_in_flight_per_host(), 2);
    assert!(log.max_in_flight() <= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stage_limit_binds_below_host_capacity() {
    let stage = Stage::new("load", 15)
        .per_host(2)
        .tasks((0..200).map(|i| work(&format!("h{:02}", i % 20), &format!("t{i}")).arg("ms", 5)));
    let (report, log, tracker) = run(&Tasklist::new("load").stage(stage)).await;
    assert!(report.succeeded());
    assert_eq!(tracker.max(), 15, "the stage limit is 15 and 40 could run");
    assert!(tracker.per_host_max().values().all(|&m| m <= 2));
    assert!(log.max_in_flight() <= 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_caps_every_stage() {
    let (registry, tracker) = registry();
    let stage = Stage::new("s", 50)
        .tasks((0..40).map(|i| work(&format!("h{i}"), &format!("t{i}")).arg("ms", 5)));
    let plan = Plan::build(&Tasklist::new("t").stage(stage), &registry).unwrap();
    let report = Executor::new(Arc::new(FakeConnector::new()))
        .max_concurrency(Some(3))
        .run(&plan)
        .await;
    assert!(report.succeeded());
    assert_eq!(tracker.max(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_host_does_not_delay_other_hosts() {
    // a1 holds host a's only slot until five other tasks have finished; a2 waits behind it.
    // If a held-back a2 blocked the queue, the b tasks could never run and a1 would wait
    // forever (the run times out). They must run while a is busy.
    let stage = Stage::new("s", 10).per_host(1).tasks(vec![
        work("a", "a1").arg("wait_done", 5),
        work("a", "a2"),
        work("b", "b1"),
        work("b", "b2"),
        work("c", "c1"),
        work("b", "b3"),
        work("c", "c2"),
    ]);
    let (report, _log, tracker) = run(&Tasklist::new("t").stage(stage)).await;
    assert!(report.succeeded());
    let order = tracker.order();
    let pos = |id: &str| order.iter().position(|x| x == id).unwrap();
    assert!(
        pos("b3") < pos("a2"),
        "b tasks ran while host a was busy: {order:?}"
    );
    assert!(pos("c2") < pos("a2"), "{order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_start_in_order_when_limits_allow() {
    let stage =
        Stage::new("s", 1).tasks((0..10).map(|i| work(&format!("h{}", i % 3), &format!("t{i}"))));
    let (report, log, tracker) = run(&Tasklist::new("t").stage(stage)).await;
    assert!(report.succeeded());
    let expected: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    assert_eq!(tracker.order(), expected);
    assert_eq!(log.started().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_stops_new_tasks_lets_running_finish_and_skips_later_stages() {
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("first", 2).tasks(vec![
            work("a", "fails")
                .tag("web")
                .arg("fail", true)
                .arg("exit", 3)
                .arg("stderr", "line one\nboom: disk full"),
            work("b", "slow").arg("ms", 150),
            work("c", "never1"),
            work("d", "never2"),
        ]))
        .stage(Stage::new("second", 1).task(work("e", "later")));
    let (report, log, tracker) = run(&tasklist).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(tracker.completed("slow"), 1, "the running task finished");
    assert_eq!(tracker.entered("never1"), 0);
    assert_eq!(tracker.entered("never2"), 0);
    assert_eq!(tracker.entered("later"), 0);
    // Every task ends with one event: the skipped stage's task too.
    assert_eq!(
        log.not_run(),
        vec![id(0, 2, None), id(0, 3, None), id(1, 0, None)]
    );
    assert!(
        log.kinds()
            .iter()
            .any(|k| matches!(k, EventKind::StageSkipped { stage: 1, .. }))
    );
    assert_eq!(report.stages[1].outcome, None);
    assert_eq!(report.counts.succeeded, 1);
    assert_eq!(report.counts.failed, 1);
    assert_eq!(report.counts.not_run, 3);

    // The failure names host, tag, command, exit status and the tail of stderr.
    assert_eq!(report.failures.len(), 1);
    let f = &report.failures[0];
    assert_eq!(f.task.host, "a");
    assert_eq!(f.task.tag.as_deref(), Some("web"));
    assert_eq!(f.task.command, "work");
    assert_eq!(f.exit_status(), Some(3));
    assert!(f.stderr_tail().ends_with("boom: disk full"));
    let message = report.clone().into_result().unwrap_err().to_string();
    assert!(message.contains("in stage \"first\""), "{message}");
    assert!(
        message.contains("stages[0].tasks[0] work on a [web]"),
        "{message}"
    );
    assert!(message.contains("exit status 3"), "{message}");
    assert!(message.contains("boom: disk full"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_chains_run_to_their_end_after_a_failure() {
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 2).tasks(vec![
        TaskEntry::Chain(vec![
            work("a", "c1").arg("ms", 40),
            work("a", "c2").arg("ms", 40),
            work("a", "c3"),
        ]),
        work("b", "fails").arg("ms", 10).arg("fail", true).into(),
        TaskEntry::Chain(vec![work("c", "d1"), work("c", "d2")]),
    ]));
    let (report, log, tracker) = run(&tasklist).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    for step in ["c1", "c2", "c3"] {
        assert_eq!(
            tracker.completed(step),
            1,
            "{step} of the started chain ran"
        );
    }
    assert_eq!(
        tracker.entered("d1"),
        0,
        "the unstarted chain did not start"
    );
    assert_eq!(log.not_run(), vec![id(0, 2, Some(0)), id(0, 2, Some(1))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_chain_step_stops_its_chain() {
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).task(vec![
        work("a", "s1"),
        work("a", "s2").arg("fail", true),
        work("a", "s3"),
    ]));
    let (report, log, tracker) = run(&tasklist).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(tracker.completed("s1"), 1);
    assert_eq!(tracker.entered("s3"), 0);
    assert_eq!(log.not_run(), vec![id(0, 0, Some(2))]);
    assert!(log.kinds().iter().any(|k| matches!(k,
        EventKind::TaskNotRun { reason, .. } if reason.contains("earlier step of its chain"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_holds_one_slot_and_runs_in_order() {
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).tasks(vec![
        TaskEntry::Chain(vec![
            work("a", "a1").arg("ms", 5),
            work("a", "a2"),
            work("a", "a3"),
        ]),
        work("b", "b1").into(),
    ]));
    let (report, _, tracker) = run(&tasklist).await;
    assert!(report.succeeded());
    assert_eq!(tracker.order(), ["a1", "a2", "a3", "b1"]);
    assert_eq!(tracker.max(), 1);
}

#[tokio::test(start_paused = true)]
async fn timeout_stops_the_attempt_and_fails_the_task() {
    let tasklist = Tasklist::new("t").stage(
        Stage::new("s", 1).task(
            work("a", "hang")
                .arg("ms", 3_600_000)
                .timeout(Duration::from_secs(2)),
        ),
    );
    let (report, log, tracker) = run(&tasklist).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(
        log.outcome(id(0, 0, None)),
        Some(TaskOutcome::TimedOut {
            after: Duration::from_secs(2)
        })
    );
    assert_eq!(
        tracker.state.lock().unwrap().now,
        0,
        "the command future was dropped"
    );
    assert!(
        report
            .into_result()
            .unwrap_err()
            .to_string()
            .contains("timed out after 2s")
    );
}

#[tokio::test(start_paused = true)]
async fn retries_until_success() {
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("s", 1).task(work("a", "flaky").arg("fail_times", 2).retries(2)));
    let (report, log, tracker) = run(&tasklist).await;
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(tracker.entered("flaky"), 3);
    let retrying = log
        .kinds()
        .into_iter()
        .filter(|k| matches!(k, EventKind::TaskRetrying { .. }))
        .count();
    assert_eq!(retrying, 2);
    assert!(log.kinds().iter().any(|k| matches!(
        k,
        EventKind::TaskFinished {
            attempts: 3,
            outcome: TaskOutcome::Succeeded,
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn retries_exhausted_fail_the_task() {
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("s", 1).task(work("a", "broken").arg("fail_times", 10).retries(1)));
    let (report, _, tracker) = run(&tasklist).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(tracker.entered("broken"), 2);
    assert_eq!(report.failures[0].attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_retried() {
    let tasklist = Tasklist::new("t").stage(
        Stage::new("s", 1).task(
            work("a", "slow")
                .arg("ms", 10_000)
                .timeout(Duration::from_secs(1))
                .retries(2),
        ),
    );
    let (report, _, tracker) = run(&tasklist).await;
    assert_eq!(tracker.entered("slow"), 3);
    assert_eq!(
        report.failures[0].outcome,
        TaskOutcome::TimedOut {
            after: Duration::from_secs(1)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn retry_delay_is_waited() {
    let (registry, _) = registry();
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("s", 1).task(work("a", "flaky").arg("fail_times", 1).retries(1)));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let start = tokio::time::Instant::now();
    let report = Executor::new(Arc::new(FakeConnector::new()))
        .retry_delay(Duration::from_secs(5))
        .run(&plan)
        .await;
    assert!(report.succeeded());
    assert!(start.elapsed() >= Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_cancel_lets_running_tasks_finish_and_starts_nothing_new() {
    let (registry, tracker) = registry();
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("s", 1).tasks((0..5).map(|i| work("a", &format!("t{i}")).arg("ms", 100))))
        .stage(Stage::new("later", 1).task(work("a", "later")));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let (sink, mut events) = ChannelSink::new();
    let cancel = CancelHandle::new();
    let exec = Executor::new(Arc::new(FakeConnector::new())).sink(sink);
    let options = RunOptions {
        cancel: cancel.clone(),
        ..Default::default()
    };
    let run = tokio::spawn(async move { exec.run_with(&plan, options).await });
    while let Some(e) = events.recv().await {
        if matches!(e.kind, EventKind::TaskStarted { .. }) {
            cancel.cancel();
            break;
        }
    }
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Cancelled);
    assert_eq!(
        tracker.completed("t0"),
        1,
        "the running task finished normally"
    );
    for i in 1..5 {
        assert_eq!(tracker.entered(&format!("t{i}")), 0);
    }
    assert_eq!(tracker.entered("later"), 0);
    assert_eq!(report.counts.not_run, 5);
    assert_eq!(report.stages[0].outcome, Some(RunOutcome::Cancelled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_cancel_stops_running_tasks() {
    let (registry, tracker) = registry();
    let tasklist = Tasklist::new("t").stage(
        Stage::new("s", 4)
            .tasks((0..4).map(|i| work(&format!("h{i}"), &format!("t{i}")).arg("ms", 3_600_000))),
    );
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let (sink, mut events) = ChannelSink::new();
    let cancel = CancelHandle::new();
    let exec = Executor::new(Arc::new(FakeConnector::new())).sink(sink);
    let options = RunOptions {
        cancel: cancel.clone(),
        ..Default::default()
    };
    let run = tokio::spawn(async move { exec.run_with(&plan, options).await });
    let mut started = 0;
    while let Some(e) = events.recv().await {
        if matches!(e.kind, EventKind::TaskStarted { .. }) {
            started += 1;
            if started == 4 {
                break;
            }
        }
    }
    cancel.cancel();
    cancel.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("a second cancel stops hour-long tasks at once")
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Cancelled);
    assert_eq!(report.failures.len(), 4);
    assert!(
        report
            .failures
            .iter()
            .all(|f| f.outcome == TaskOutcome::Cancelled)
    );
    assert_eq!(
        tracker.state.lock().unwrap().now,
        0,
        "every command future was dropped"
    );
}

#[tokio::test]
async fn unreachable_host_fails_with_its_name() {
    let (registry, _) = registry();
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 2).tasks(vec![work("db001", "x")]));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let report = Executor::new(Arc::new(FakeConnector::new().unreachable("db001")))
        .run(&plan)
        .await;
    let f = &report.failures[0];
    let TaskOutcome::Failed { message, .. } = &f.outcome else {
        panic!("{:?}", f.outcome)
    };
    assert_eq!(
        message,
        "cannot connect to db001: connection refused (fake)"
    );
}

#[derive(Debug)]
struct Panics;

#[async_trait]
impl Command for Panics {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        Ok(Panics)
    }
    async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> {
        panic!("bug in a command");
    }
}

#[tokio::test]
async fn a_panicking_command_is_a_failed_task_not_a_crash() {
    let mut registry = CommandRegistry::new();
    registry.register::<Panics>("panics");
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).task(Task::new("panics")));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let report = Executor::new(Arc::new(FakeConnector::new()))
        .run(&plan)
        .await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert!(
        report.failures[0]
            .outcome
            .to_string()
            .contains("command panicked: bug in a command")
    );
}

#[tokio::test]
async fn skipped_tasks_count_as_success() {
    let tasklist =
        Tasklist::new("t").stage(Stage::new("s", 1).task(work("a", "x").arg("skip", true)));
    let (report, log, _) = run(&tasklist).await;
    assert!(report.succeeded());
    assert_eq!(report.counts.skipped, 1);
    assert_eq!(
        log.outcome(id(0, 0, None)),
        Some(TaskOutcome::Skipped {
            reason: "nothing to do".into()
        })
    );
}

#[tokio::test]
async fn events_come_in_lifecycle_order_with_output() {
    let tasklist = Tasklist::new("order")
        .stage(Stage::new("one", 1).task(work("a", "x")))
        .stage(Stage::new("two", 1).task(work("b", "y")));
    let (report, log, _) = run(&tasklist).await;
    assert!(report.succeeded());
    let names: Vec<&str> = log
        .kinds()
        .iter()
        .map(|k| match k {
            EventKind::RunStarted { .. } => "run_started",
            EventKind::StageStarted { .. } => "stage_started",
            EventKind::TaskStarted { .. } => "task_started",
            EventKind::TaskOutput { .. } => "output",
            EventKind::TaskFinished { .. } => "task_finished",
            EventKind::StageFinished { .. } => "stage_finished",
            EventKind::RunFinished { .. } => "run_finished",
            _ => "other",
        })
        .collect();
    assert_eq!(
        names,
        [
            "run_started",
            "stage_started",
            "task_started",
            "output",
            "task_finished",
            "stage_finished",
            "stage_started",
            "task_started",
            "output",
            "task_finished",
            "stage_finished",
            "run_finished"
        ]
    );
    let events = log.events();
    assert!(events.windows(2).all(|w| w[0].elapsed <= w[1].elapsed));
    // Events serialize to JSON lines for machine consumers.
    let json = serde_json::to_string(&events[2]).unwrap();
    assert!(json.contains("\"event\":\"task_started\""), "{json}");
    assert!(json.contains("\"host\":\"a\""), "{json}");
    let back: Event = serde_json::from_str(&json).unwrap();
    assert_eq!(back.kind, events[2].kind);
}

#[tokio::test]
async fn skip_set_resumes_without_rerunning_done_tasks() {
    let (registry, tracker) = registry();
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("s", 2).tasks(vec![work("a", "done1"), work("b", "todo1")]))
        .stage(Stage::new("s2", 2).task(vec![work("a", "chain_done"), work("a", "chain_todo")]));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let options = RunOptions {
        skip: [id(0, 0, None), id(1, 0, Some(0))].into_iter().collect(),
        ..Default::default()
    };
    let report = Executor::new(Arc::new(FakeConnector::new()))
        .run_with(&plan, options)
        .await;
    assert!(report.succeeded());
    assert_eq!(tracker.order(), ["todo1", "chain_todo"]);
}

#[tokio::test]
async fn commands_run_against_the_tasks_host() {
    #[derive(Debug)]
    struct Echo(String);
    #[async_trait]
    impl Command for Echo {
        fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                message: String,
            }
            let a: A = args.parse()?;
            Ok(Echo(a.message))
        }
        async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
            let cmd = ShellCommand::new("echo").arg(&self.0).build().unwrap();
            ctx.run_checked(&cmd).await?;
            Ok(Outcome::done())
        }
    }
    let mut registry = CommandRegistry::new();
    registry.register::<Echo>("echo");
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 2).tasks(vec![
        Task::new("echo").on("fe001").arg("message", "hello; rm -rf /"),
        Task::new("echo").arg("message", "local"),
    ]));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let connector = Arc::new(FakeConnector::new());
    let report = Executor::new(connector.clone()).run(&plan).await;
    assert!(report.succeeded());
    assert_eq!(
        connector.fake("fe001").commands(),
        ["echo 'hello; rm -rf /'"]
    );
    assert_eq!(connector.fake("local").commands(), ["echo local"]);
    assert_eq!(connector.connects("fe001"), 1);
}

/// `RunOptions::entry` runs one entry of the plan (a chain here) and nothing else: no other
/// task starts, is reported or is counted, whatever stage it is in.
#[tokio::test]
async fn a_single_entry_runs_alone() {
    let (commands, tracker) = registry();
    let tasklist = Tasklist::new("big")
        .stage(
            Stage::new("first", 4).tasks((0..50).map(|i| work(&format!("h{i}"), &format!("a{i}")))),
        )
        .stage(
            Stage::new("second", 4)
                .task(work("h1", "b0"))
                .task(vec![work("h2", "b1-step0"), work("h2", "b1-step1")]),
        )
        .stage(Stage::new("third", 4).task(work("h3", "c0")));
    let plan = Plan::build(&tasklist, &commands).unwrap();
    let log = Arc::new(EventLog::new());
    let report = executor(&log)
        .run_with(
            &plan,
            RunOptions {
                entry: Some((1, 1)),
                ..RunOptions::default()
            },
        )
        .await;
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(
        tracker.order(),
        ["b1-step0", "b1-step1"],
        "only the chain ran, in order"
    );
    assert_eq!(
        report.counts.total(),
        2,
        "only its tasks are counted: {}",
        report.counts
    );
    assert_eq!(log.started(), [id(1, 1, Some(0)), id(1, 1, Some(1))]);
    let ended_elsewhere = log.kinds().into_iter().filter(|k| {
        matches!(
            k,
            EventKind::TaskNotRun { .. }
                | EventKind::TaskDoneEarlier { .. }
                | EventKind::TaskDropped { .. }
        )
    });
    assert_eq!(ended_elsewhere.count(), 0, "no event for the other tasks");

    // A failing entry fails the report, still alone.
    let failing = Tasklist::new("f").stage(
        Stage::new("s", 2)
            .task(work("h1", "ok"))
            .task(work("h2", "bad").arg("fail", true)),
    );
    let (commands, tracker) = registry();
    let plan = Plan::build(&failing, &commands).unwrap();
    let report = executor(&Arc::new(EventLog::new()))
        .run_with(
            &plan,
            RunOptions {
                entry: Some((0, 1)),
                ..RunOptions::default()
            },
        )
        .await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(tracker.order(), ["bad"]);
}

/// One entry of a distributed run runs as the store claimed it: the executor does not
/// re-decide a `finally` stage's selection (it has no points or failures to look at) and does
/// not drop its host within a budget (the store counts the failure: the entry ends failed). A
/// first cancel leaves a finally entry running.
#[tokio::test]
async fn a_single_entry_runs_as_claimed_whatever_the_rules() {
    let (commands, tracker) = registry();
    let tasklist = Tasklist::new("rules")
        .budget(FailureBudget::max_failures(5))
        .stage(
            Stage::new("rolling", 2)
                .task(work("h1", "a"))
                .task(work("h2", "bad").arg("fail", true))
                .task(work("h3", "lock").reaches("locked")),
        )
        .stage(
            Stage::new("unlock", 2)
                .finally(Finally::if_reached("locked"))
                .task(work("h1", "unlock")),
        )
        .stage(
            Stage::new("page", 2)
                .finally(Finally::on_failure())
                .task(work("h1", "page")),
        );
    let plan = Plan::build(&tasklist, &commands).unwrap();
    let one = |entry: (usize, usize), cancel: CancelHandle| {
        let plan = &plan;
        async move {
            executor(&Arc::new(EventLog::new()))
                .run_with(
                    plan,
                    RunOptions {
                        entry: Some(entry),
                        cancel,
                        ..RunOptions::default()
                    },
                )
                .await
        }
    };
    assert_eq!(
        one((0, 0), CancelHandle::new()).await.outcome,
        RunOutcome::Succeeded
    );
    // Within the run's budget a whole run would drop h2 and go on degraded.
    let report = one((0, 1), CancelHandle::new()).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert!(report.dropped.is_empty());
    // Nothing reached "locked" here, and the run has not failed here: both run anyway.
    assert_eq!(
        one((1, 0), CancelHandle::new()).await.outcome,
        RunOutcome::Succeeded
    );
    let cancelled = CancelHandle::new();
    cancelled.cancel();
    assert_eq!(one((2, 0), cancelled).await.outcome, RunOutcome::Succeeded);
    assert_eq!(tracker.order(), ["a", "bad", "unlock", "page"]);
}
