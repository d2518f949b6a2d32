//! `finally` stages: clean-up that runs after success, failure and a first cancel, for the hosts
//! that reached a point; not after a second cancel; again on resume, with what it undid.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{registry, work};
use deployer_core::fixture::{EventLog, FakeConnector};
use deployer_core::*;

/// Lock on a and b (b's lock fails when `b_lock_fails`), work on each, unlock where locked.
fn locked_work(b_lock_fails: bool, work_fails: bool, ms: u64) -> Tasklist {
    Tasklist::new("t")
        .stage(
            Stage::new("Lock", 2).tasks([
                work("a", "lock-a").reaches("locked"),
                work("b", "lock-b")
                    .reaches("locked")
                    .arg("fail", b_lock_fails),
            ]),
        )
        .stage(Stage::new("Work", 1).tasks([
            work("a", "work-a").arg("fail", work_fails).arg("ms", ms),
            work("b", "work-b").arg("ms", ms),
        ]))
        .stage(Stage::new("Later", 1).task(work("a", "later")))
        .stage(
            Stage::new("Unlock", 2)
                .finally(Finally::if_reached("locked"))
                .tasks([work("a", "unlock-a"), work("b", "unlock-b")]),
        )
}

async fn run_with(
    tasklist: &Tasklist,
    cancels: usize,
) -> (RunReport, Arc<EventLog>, Arc<common::Tracker>) {
    let (registry, tracker) = registry();
    let plan = Plan::build(tasklist, &registry).expect("valid plan");
    let log = Arc::new(EventLog::new());
    let (sink, mut events) = ChannelSink::new();
    let cancel = CancelHandle::new();
    let exec = Executor::new(Arc::new(FakeConnector::new()))
        .sink(log.clone())
        .sink(sink)
        .retry_delay(Duration::ZERO);
    let options = RunOptions {
        cancel: cancel.clone(),
        ..Default::default()
    };
    let run = tokio::spawn(async move { exec.run_with(&plan, options).await });
    if cancels > 0 {
        // Cancel once the work has started.
        while let Some(e) = events.recv().await {
            if let EventKind::TaskStarted { task, .. } = &e.kind
                && task.id.stage == 1
            {
                for _ in 0..cancels {
                    cancel.cancel();
                }
                break;
            }
        }
    }
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run must not hang")
        .unwrap();
    (report, log, tracker)
}

#[tokio::test]
async fn after_success_the_finally_stage_runs_in_its_place() {
    let (report, _, tracker) = run_with(&locked_work(false, false, 0), 0).await;
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(
        tracker.completed("unlock-a") + tracker.completed("unlock-b"),
        2
    );
    let order = tracker.order();
    let pos = |name: &str| order.iter().position(|n| n == name).unwrap();
    assert!(pos("later") < pos("unlock-a"), "{order:?}");
    assert_eq!(report.counts.succeeded, 7);
}

#[tokio::test]
async fn after_a_failure_it_still_runs_for_the_hosts_that_locked() {
    // b's lock fails: a locked, worked not, and is unlocked; b never locked and is not.
    let (report, log, tracker) = run_with(&locked_work(true, false, 0), 0).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(tracker.entered("work-a"), 0, "the abort rule holds");
    assert_eq!(tracker.entered("later"), 0);
    assert_eq!(tracker.completed("unlock-a"), 1, "the finally stage ran");
    assert_eq!(tracker.entered("unlock-b"), 0, "b never reached \"locked\"");
    let skipped: Vec<String> = log
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskFinished {
                task,
                outcome: TaskOutcome::Skipped { reason },
                ..
            } if task.id.stage == 3 => Some(format!("{}: {reason}", task.host)),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, ["b: its host did not reach \"locked\""]);
    // lock-a ok, unlock-a ok; lock-b failed; work ×2 and later not run; unlock-b: nothing to do.
    assert_eq!(
        report.counts.to_string(),
        "2 ok, 1 failed, 1 skipped, 3 not run"
    );
}

#[tokio::test]
async fn a_failure_in_the_finally_stage_fails_the_run_and_the_other_hosts_still_get_it() {
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("Lock", 2).tasks([
            work("a", "lock-a").reaches("locked"),
            work("b", "lock-b").reaches("locked"),
        ]))
        .stage(
            Stage::new("Unlock", 1)
                .finally(Finally::if_reached("locked"))
                .tasks([
                    work("a", "unlock-a").arg("fail", true),
                    work("b", "unlock-b"),
                ]),
        );
    let (report, _, tracker) = run_with(&tasklist, 0).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(
        tracker.completed("unlock-b"),
        1,
        "a failure does not stop clean-up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_first_cancel_it_runs_after_a_second_it_does_not() {
    let (report, _, tracker) = run_with(&locked_work(false, false, 300), 1).await;
    assert_eq!(report.outcome, RunOutcome::Cancelled);
    assert_eq!(tracker.completed("work-a"), 1, "the running task finished");
    assert_eq!(tracker.entered("work-b"), 0, "nothing new started");
    assert_eq!(tracker.entered("later"), 0);
    assert_eq!(
        tracker.completed("unlock-a") + tracker.completed("unlock-b"),
        2,
        "a first cancel still cleans up"
    );

    let (report, log, tracker) = run_with(&locked_work(false, false, 3_600_000), 2).await;
    assert_eq!(report.outcome, RunOutcome::Cancelled);
    assert_eq!(
        tracker.entered("unlock-a") + tracker.entered("unlock-b"),
        0,
        "a second cancel skips clean-up"
    );
    assert!(log.events().iter().any(|e| matches!(
        &e.kind,
        EventKind::TaskNotRun { task, reason }
            if task.command == "work" && task.id.stage == 3
                && reason == "the run was stopped (a second cancel)"
    )));
}

#[tokio::test]
async fn unless_reached_selects_the_hosts_that_did_not_get_there() {
    // Roll back the hosts that switched but did not pass their check.
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("Activate", 2).tasks([
            TaskEntry::Chain(vec![
                work("a", "switch-a").reaches("switched"),
                work("a", "check-a").reaches("healthy"),
            ]),
            TaskEntry::Chain(vec![
                work("b", "switch-b").reaches("switched"),
                work("b", "check-b").arg("fail", true).reaches("healthy"),
            ]),
        ]))
        .stage(
            Stage::new("Roll back", 2)
                .finally(
                    Finally::if_reached("switched")
                        .unless_reached("healthy")
                        .rolling_back(),
                )
                .tasks([work("a", "rollback-a"), work("b", "rollback-b")]),
        );
    let (report, _, tracker) = run_with(&tasklist, 0).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(tracker.entered("rollback-a"), 0, "a is healthy");
    assert_eq!(tracker.completed("rollback-b"), 1, "b is rolled back");
    // A rollback stage's successes count as rolled back, one per host.
    assert_eq!(
        report.counts.to_string(),
        "3 ok, 1 failed, 1 skipped, 1 rolled back"
    );
}

#[test]
fn a_point_no_task_reaches_is_refused_with_a_suggestion() {
    let json = r#"{"name": "t", "stages": [
        {"name": "Lock", "concurrency": 1, "tasks": [{"command": "c", "reaches": "locked"}]},
        {"name": "Unlock", "concurrency": 1, "finally": {"if_reached": "lockd"}, "tasks": []}
    ]}"#;
    let err = Tasklist::from_json_str(json).unwrap_err().to_string();
    assert!(
        err.contains("stages[1].finally.if_reached: no task reaches \"lockd\""),
        "{err}"
    );
    assert!(err.contains("did you mean \"locked\"?"), "{err}");
    let json = r#"{"name": "t", "stages": [
        {"name": "Bad", "concurrency": 1, "finally": "yes", "tasks": [{"command": "c", "reaches": "a b"}]}
    ]}"#;
    let err = Tasklist::from_json_str(json).unwrap_err().to_string();
    assert!(
        err.contains("stages[0].finally: found a string (expected true, or an object"),
        "{err}"
    );
    assert!(
        err.contains("stages[0].tasks[0].reaches: found \"a b\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_resumed_run_locks_again_does_what_is_left_and_unlocks() {
    let (registry, tracker) = registry();
    // work-a fails once: the first attempt locks both, fails, unlocks both.
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("Lock", 2).tasks([
            work("a", "lock-a").reaches("locked"),
            work("b", "lock-b").reaches("locked"),
        ]))
        .stage(Stage::new("Work", 1).tasks([
            work("b", "work-b"),
            work("a", "work-a").arg("fail_times", 1),
        ]))
        .stage(
            Stage::new("Unlock", 2)
                .finally(Finally::if_reached("locked"))
                .tasks([work("a", "unlock-a"), work("b", "unlock-b")]),
        );
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new()));
    let exec = || Executor::new(Arc::new(FakeConnector::new())).retry_delay(Duration::ZERO);
    let (id, first) = runs
        .start(&exec(), &plan, "test", "me", RunOptions::default())
        .await
        .unwrap();
    assert_eq!(first.outcome, RunOutcome::Failed);
    assert_eq!(
        tracker.completed("unlock-a") + tracker.completed("unlock-b"),
        2
    );

    let report = runs
        .resume(
            &exec(),
            &registry,
            &id,
            ResumeOptions::default(),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert!(report.succeeded(), "{:?}", report.failures);
    for (name, n) in [
        ("lock-a", 2),
        ("lock-b", 2),
        ("work-b", 1),
        ("work-a", 2),
        ("unlock-a", 2),
        ("unlock-b", 2),
    ] {
        assert_eq!(tracker.entered(name), n, "{name}");
    }
    assert_eq!(report.counts.to_string(), "5 ok, 1 done earlier");
}

#[test]
fn a_tasklist_built_in_code_gets_its_points_checked_by_the_plan() {
    let (registry, _) = registry();
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("Lock", 1).task(work("a", "lock").reaches("is locked")))
        .stage(
            Stage::new("Unlock", 1)
                .finally(Finally::if_reached("locked"))
                .task(work("a", "unlock")),
        );
    let err = Plan::build(&tasklist, &registry).unwrap_err().to_string();
    assert!(
        err.contains("stages[0].tasks[0].reaches: found \"is locked\""),
        "{err}"
    );
    assert!(
        err.contains("stages[1].finally.if_reached: no task reaches \"locked\""),
        "{err}"
    );
}

#[test]
fn on_resume_locks_are_taken_again_and_only_rolled_back_hosts_switch_again() {
    let (registry, _) = registry();
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("Lock", 2).tasks([
            work("a", "lock-a").reaches("locked"),
            work("b", "lock-b").reaches("locked"),
        ]))
        .stage(Stage::new("Activate", 1).tasks([
            TaskEntry::Chain(vec![
                work("a", "switch-a").reaches("switched"),
                work("a", "check-a").reaches("healthy"),
            ]),
            TaskEntry::Chain(vec![
                work("b", "switch-b").reaches("switched"),
                work("b", "check-b").reaches("healthy"),
            ]),
        ]))
        .stage(
            Stage::new("Roll back", 2)
                .finally(
                    Finally::if_reached("switched")
                        .unless_reached("healthy")
                        .rolling_back(),
                )
                .tasks([work("a", "rollback-a"), work("b", "rollback-b")]),
        )
        .stage(
            Stage::new("Unlock", 2)
                .finally(Finally::if_reached("locked"))
                .tasks([work("a", "unlock-a"), work("b", "unlock-b")]),
        );
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let id = |stage, entry, step| TaskId { stage, entry, step };
    // A controller killed after a's activation: no finally stage ran. The locks may have been
    // freed by a person since, so the resume takes them again; a's activation stays done.
    let done = [
        id(0, 0, None),
        id(0, 1, None),
        id(1, 0, Some(0)),
        id(1, 0, Some(1)),
    ]
    .into();
    assert_eq!(
        plan.skipped_on_resume(&done),
        [id(1, 0, Some(0)), id(1, 0, Some(1))].into()
    );
    // A failed attempt: b's check failed, b was rolled back, both unlocked. The resume locks
    // both again and switches b again (its whole chain), not a.
    let done = [
        id(0, 0, None),
        id(0, 1, None),
        id(1, 0, Some(0)),
        id(1, 0, Some(1)),
        id(1, 1, Some(0)),
        id(2, 1, None),
        id(3, 0, None),
        id(3, 1, None),
    ]
    .into();
    assert_eq!(
        plan.skipped_on_resume(&done),
        [id(1, 0, Some(0)), id(1, 0, Some(1))].into()
    );
}

/// Work on a (failing when `fails`), then an `on_failure` stage and an always stage.
fn with_on_failure(fails: bool, ms: u64) -> Tasklist {
    Tasklist::new("t")
        .stage(Stage::new("Lock", 1).task(work("a", "lock-a").reaches("locked")))
        .stage(Stage::new("Work", 1).task(work("a", "work-a").arg("fail", fails).arg("ms", ms)))
        .stage(
            Stage::new("Tell", 1)
                .finally(Finally::on_failure())
                .task(work("a", "tell-a")),
        )
        .stage(
            Stage::new("Unlock", 1)
                .finally(Finally::if_reached("locked"))
                .task(work("a", "unlock-a")),
        )
}

#[tokio::test]
async fn an_on_failure_stage_is_skipped_after_a_success() {
    let (report, log, tracker) = run_with(&with_on_failure(false, 0), 0).await;
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(tracker.entered("tell-a"), 0, "the run did not fail");
    assert_eq!(tracker.completed("unlock-a"), 1, "the always stage ran");
    assert!(log.events().iter().any(|e| matches!(
        &e.kind,
        EventKind::TaskFinished { task, outcome: TaskOutcome::Skipped { reason }, .. }
            if task.id.stage == 2 && reason == "the run has not failed"
    )));
    assert_eq!(report.counts.to_string(), "3 ok, 1 skipped");
}

#[tokio::test]
async fn an_on_failure_stage_runs_after_a_failure() {
    let (report, _, tracker) = run_with(&with_on_failure(true, 0), 0).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(tracker.completed("tell-a"), 1);
    assert_eq!(tracker.completed("unlock-a"), 1);
    let order = tracker.order();
    let pos = |name: &str| order.iter().position(|n| n == name).unwrap();
    assert!(pos("tell-a") < pos("unlock-a"), "in stage order: {order:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_failure_stage_runs_after_a_first_cancel_not_after_a_second() {
    let (report, _, tracker) = run_with(&with_on_failure(false, 300), 1).await;
    assert_eq!(report.outcome, RunOutcome::Cancelled);
    assert_eq!(tracker.completed("work-a"), 1, "the running task finished");
    assert_eq!(
        tracker.completed("tell-a"),
        1,
        "a cancelled run counts as failed"
    );
    let (report, _, tracker) = run_with(&with_on_failure(false, 3_600_000), 2).await;
    assert_eq!(report.outcome, RunOutcome::Cancelled);
    assert_eq!(tracker.entered("tell-a") + tracker.entered("unlock-a"), 0);
}

#[tokio::test]
async fn a_failed_finally_stage_before_it_counts_as_a_failure() {
    let tasklist = Tasklist::new("t")
        .stage(Stage::new("Work", 1).task(work("a", "work-a")))
        .stage(
            Stage::new("Clean", 1)
                .finally(Finally::always())
                .task(work("a", "clean-a").arg("fail", true)),
        )
        .stage(
            Stage::new("Tell", 1)
                .finally(Finally::on_failure())
                .task(work("a", "tell-a")),
        );
    let (report, _, tracker) = run_with(&tasklist, 0).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(tracker.completed("tell-a"), 1);
}

#[test]
fn on_failure_reads_and_saves_and_a_wrong_type_is_named() {
    let json = r#"{"name": "t", "stages": [
        {"name": "Lock", "concurrency": 1, "tasks": [{"command": "c", "reaches": "locked"}]},
        {"name": "Tell", "concurrency": 1, "finally": {"on_failure": true}, "tasks": []},
        {"name": "Unlock", "concurrency": 1,
         "finally": {"if_reached": "locked", "on_failure": true}, "tasks": []}
    ]}"#;
    let tasklist = Tasklist::from_json_str(json).unwrap();
    assert_eq!(tasklist.stages[1].finally, Some(Finally::on_failure()));
    assert_eq!(
        tasklist.stages[2].finally,
        Some(Finally::if_reached("locked").only_on_failure())
    );
    let saved = tasklist.to_json_string();
    assert!(saved.contains(r#""on_failure": true"#), "{saved}");
    assert_eq!(Tasklist::from_json_str(&saved).unwrap(), tasklist);
    let json = r#"{"name": "t", "stages": [
        {"name": "Tell", "concurrency": 1, "finally": {"on_failure": "yes", "when": 1}, "tasks": []}
    ]}"#;
    let err = Tasklist::from_json_str(json).unwrap_err().to_string();
    assert!(
        err.contains("stages[0].finally.on_failure: found a string (expected true or false)"),
        "{err}"
    );
    assert!(err.contains("stages[0].finally.when"), "{err}");
}
