//! The failure budget and `min_hosts_up`: a host that fails within the budget is dropped and
//! the others go on; past the budget the run stops as without one; `min_hosts_up` bounds the
//! hosts taken down at once and is never broken by the budget; a resume runs only what the
//! dropped hosts did not finish.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{registry, work};
use deployer_core::fixture::{EventLog, FakeConnector};
use deployer_core::*;

fn hosts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("h{i}")).collect()
}

/// Three ordinary stages and a clean-up over `n` hosts; the hosts in `failing` fail the first
/// stage's task (`fail_times` 1: a resume succeeds).
fn fleet(n: usize, failing: &[&str], budget: FailureBudget) -> Tasklist {
    let stage = |name: &str, fail: bool| {
        Stage::new(name, n).tasks(hosts(n).into_iter().map(|h| {
            let t = work(&h, &format!("{name}-{h}")).arg("ms", 5);
            if fail && failing.contains(&h.as_str()) {
                t.arg("fail_times", 1)
            } else {
                t
            }
        }))
    };
    Tasklist::new("fleet")
        .budget(budget)
        .stage(stage("A", true))
        .stage(stage("B", false))
        .stage(stage("C", false))
        .stage(stage("Clean", false).finally(Finally::always()))
}

fn executor() -> Executor {
    Executor::new(Arc::new(FakeConnector::new())).retry_delay(Duration::ZERO)
}

async fn run(tasklist: &Tasklist) -> (RunReport, Arc<EventLog>, Arc<common::Tracker>) {
    let (registry, tracker) = registry();
    let plan = Plan::build(tasklist, &registry).expect("valid plan");
    let log = Arc::new(EventLog::new());
    let report = executor().sink(log.clone()).run(&plan).await;
    (report, log, tracker)
}

fn dropped_hosts(report: &RunReport) -> BTreeSet<&str> {
    report.dropped.iter().map(|d| d.host.as_str()).collect()
}

#[tokio::test]
async fn within_the_budget_failed_hosts_are_dropped_and_the_others_go_on() {
    let (report, log, tracker) =
        run(&fleet(10, &["h3", "h7"], FailureBudget::max_failures(2))).await;
    assert_eq!(report.outcome, RunOutcome::Degraded, "{report:?}");
    assert_eq!(dropped_hosts(&report), BTreeSet::from(["h3", "h7"]));
    let d = &report.dropped[0];
    assert_eq!(d.stage, "A");
    assert!(
        d.reason.contains("work failed: work A-h") && d.reason.starts_with("stages[0].tasks["),
        "{d}"
    );
    // Every other host did every stage; the dropped ones did no later ordinary work, but
    // their clean-up ran.
    for h in hosts(10) {
        let dropped = h == "h3" || h == "h7";
        for stage in ["B", "C"] {
            assert_eq!(
                tracker.completed(&format!("{stage}-{h}")),
                usize::from(!dropped)
            );
        }
        assert_eq!(tracker.completed(&format!("Clean-{h}")), 1, "{h}");
    }
    let c = report.counts;
    assert_eq!(
        (c.succeeded, c.failed, c.dropped, c.not_run),
        (8 + 8 + 8 + 10, 2, 4, 0),
        "{c}"
    );
    assert_eq!(c.to_string(), "34 ok, 2 failed, 4 dropped");
    // One host_dropped event per host, naming the budget; each dropped task says why.
    let kinds = log.kinds();
    let host_events: Vec<_> = kinds
        .iter()
        .filter_map(|k| match k {
            EventKind::HostDropped {
                host,
                stage,
                budget,
                failed_hosts,
                ..
            } => Some((host.clone(), *stage, budget.clone(), *failed_hosts)),
            _ => None,
        })
        .collect();
    assert_eq!(host_events.len(), 2, "{host_events:?}");
    assert!(
        host_events
            .iter()
            .all(|(_, s, b, _)| *s == 0 && b == "max_failures 2")
    );
    let task_dropped = kinds
        .iter()
        .filter(|k| matches!(k, EventKind::TaskDropped { reason, .. } if reason.contains("work failed")))
        .count();
    assert_eq!(task_dropped, 4);
    // The error a host application prints names them too.
    let err = report.into_result().unwrap_err().to_string();
    assert!(
        err.contains("2 hosts dropped within the failure budget"),
        "{err}"
    );
}

#[tokio::test]
async fn past_the_budget_the_run_stops_as_without_one() {
    for (budget, dropped) in [
        (FailureBudget::max_failures(1), 1),
        (FailureBudget::default(), 0),
        (FailureBudget::max_fail_percentage(10), 1),
    ] {
        let (report, _, tracker) = run(&fleet(10, &["h3", "h7"], budget)).await;
        assert_eq!(report.outcome, RunOutcome::Failed, "{budget}");
        assert_eq!(report.dropped.len(), dropped, "{budget}");
        // Later stages did not run anywhere; clean-up ran everywhere.
        assert_eq!(tracker.completed("B-h0"), 0, "{budget}");
        assert_eq!(tracker.completed("Clean-h3"), 1, "{budget}");
        assert_eq!(report.counts.failed, 2, "{budget}");
        assert_eq!(report.counts.not_run, 20 - 2 * dropped, "{budget}");
    }
}

#[tokio::test]
async fn a_budget_counts_hosts_not_tasks_and_a_chain_stops_at_its_failing_step() {
    // h1 fails two entries (a chain at its second step, and a single task): one host.
    let tasklist = Tasklist::new("t")
        .budget(FailureBudget::max_fail_percentage(25))
        .stage(
            Stage::new("A", 8)
                .task(vec![
                    work("h1", "a1"),
                    work("h1", "a2").arg("fail", true),
                    work("h1", "a3"),
                ])
                .task(work("h1", "b1").arg("fail", true))
                .tasks((2..=4).map(|i| work(&format!("h{i}"), &format!("x{i}")))),
        )
        .stage(Stage::new("B", 4).tasks((1..=4).map(|i| work(&format!("h{i}"), &format!("y{i}")))));
    let (report, log, tracker) = run(&tasklist).await;
    assert_eq!(report.outcome, RunOutcome::Degraded, "{report:?}");
    assert_eq!(dropped_hosts(&report), BTreeSet::from(["h1"]));
    assert_eq!(
        tracker.entered("a3"),
        0,
        "the chain stopped at its failing step"
    );
    let a3 = TaskId {
        stage: 0,
        entry: 0,
        step: Some(2),
    };
    assert!(log.not_run().contains(&a3));
    assert_eq!(tracker.completed("y1"), 0);
    assert_eq!(tracker.completed("y4"), 1);
}

#[tokio::test]
async fn a_stage_budget_counts_over_its_own_hosts() {
    // No run budget: the first stage tolerates one failed host, the second none.
    let tasklist = Tasklist::new("t")
        .stage(
            Stage::new("A", 4)
                .budget(FailureBudget::max_failures(1))
                .tasks(
                    (0..4).map(|i| work(&format!("h{i}"), &format!("a{i}")).arg("fail", i == 0)),
                ),
        )
        .stage(
            Stage::new("B", 1).tasks(
                (0..4).map(|i| work(&format!("h{i}"), &format!("b{i}")).arg("fail", i == 2)),
            ),
        )
        .stage(Stage::new("C", 4).tasks((0..4).map(|i| work(&format!("h{i}"), &format!("c{i}")))));
    let (report, _, tracker) = run(&tasklist).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(dropped_hosts(&report), BTreeSet::from(["h0"]));
    assert_eq!(tracker.entered("b0"), 0, "h0 was dropped");
    assert_eq!(tracker.entered("b3"), 0, "B stopped at h2's failure");
    assert_eq!(tracker.entered("c1"), 0);
}

#[tokio::test]
async fn min_hosts_up_bounds_the_hosts_worked_on_at_once() {
    // 10 hosts, a chain of two steps each, concurrency 10: at most 10 − 7 = 3 hosts at once,
    // and a host keeps its place through its whole chain.
    let tasklist = Tasklist::new("t").stage(Stage::new("Restart", 10).min_hosts_up(7).tasks(
        hosts(10).into_iter().map(|h| {
            vec![
                work(&h, &format!("stop-{h}")).arg("ms", 15),
                work(&h, &format!("start-{h}")).arg("ms", 15),
            ]
        }),
    ));
    let (report, log, tracker) = run(&tasklist).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(tracker.max(), 3, "measured from inside the commands");
    assert_eq!(log.max_in_flight(), 3);
}

#[tokio::test]
async fn a_budget_never_takes_a_stage_below_min_hosts_up() {
    // min 8 of 10, budget 5 hosts: h0 and h1 (the first two worked on) fail and are dropped;
    // then 8 are up and none may be taken down, so the stage stops with the reason.
    let tasklist = Tasklist::new("t")
        .budget(FailureBudget::max_failures(5))
        .stage(
            Stage::new("Restart", 10).min_hosts_up(8).tasks(
                hosts(10)
                    .into_iter()
                    .map(|h| work(&h, &format!("r-{h}")).arg("fail", h == "h0" || h == "h1")),
            ),
        )
        .stage(
            Stage::new("After", 10).tasks(
                hosts(10)
                    .into_iter()
                    .map(|h| work(&h, &format!("after-{h}"))),
            ),
        );
    let (report, log, tracker) = run(&tasklist).await;
    assert_eq!(report.outcome, RunOutcome::Failed, "{report:?}");
    assert_eq!(dropped_hosts(&report), BTreeSet::from(["h0", "h1"]));
    assert_eq!(tracker.entered("r-h2"), 0);
    assert_eq!(tracker.entered("after-h5"), 0);
    let reasons: Vec<String> = log
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            EventKind::TaskNotRun { task, reason } if task.id.stage == 0 => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 8, "{reasons:?}");
    assert!(
        reasons[0].contains("min_hosts_up 8: 2 of the stage's 10 hosts are down"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn min_hosts_up_counts_hosts_dropped_earlier_as_down() {
    // h0 is dropped in the first stage; in the second, min 7 of 10 leaves 10 − 7 − 1 = 2.
    let tasklist = Tasklist::new("t")
        .budget(FailureBudget::max_failures(1))
        .stage(
            Stage::new("A", 10).tasks(
                hosts(10)
                    .into_iter()
                    .map(|h| work(&h, &format!("a-{h}")).arg("fail", h == "h0")),
            ),
        )
        .stage(
            Stage::new("B", 10).min_hosts_up(7).tasks(
                hosts(10)
                    .into_iter()
                    .map(|h| work(&h, &format!("b-{h}")).arg("ms", 15)),
            ),
        );
    let (report, log, _) = run(&tasklist).await;
    assert_eq!(report.outcome, RunOutcome::Degraded, "{report:?}");
    assert_eq!(log.max_in_flight_in_stage(1).0, 2);
}

#[tokio::test]
async fn a_plan_refuses_a_budget_on_a_finally_stage_and_an_impossible_minimum() {
    let (registry, _) = registry();
    let tasklist = Tasklist::new("t")
        .stage(
            Stage::new("A", 2)
                .min_hosts_up(2)
                .tasks([work("a", "1"), work("b", "2")]),
        )
        .stage(
            Stage::new("Clean", 2)
                .finally(Finally::always())
                .budget(FailureBudget::max_failures(1))
                .task(work("a", "3")),
        );
    let err = Plan::build(&tasklist, &registry).unwrap_err().to_string();
    assert!(
        err.contains("stages[0].min_hosts_up: 2 of the stage's 2 hosts must stay up"),
        "{err}"
    );
    assert!(
        err.contains("stages[1].max_failures: a finally stage runs every host's clean-up"),
        "{err}"
    );
    // And in JSON: wrong types name their path.
    let bad = r#"{"name": "t", "max_fail_percentage": 120, "stages": [
        {"name": "s", "concurrency": 1, "max_failures": -1, "min_hosts_up": "two", "tasks": []}]}"#;
    let err = Tasklist::from_json_str(bad).unwrap_err().to_string();
    for needle in [
        "max_fail_percentage: found 120",
        "a whole percentage from 0 to 100",
        "stages[0].max_failures: found -1",
        "stages[0].min_hosts_up: found \"two\"",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let good = r#"{"name": "t", "max_failures": 3, "stages": [
        {"name": "s", "concurrency": 1, "max_fail_percentage": 10, "min_hosts_up": 1, "tasks": []}]}"#;
    let t = Tasklist::from_json_str(good).unwrap();
    assert_eq!(t.budget, FailureBudget::max_failures(3));
    assert_eq!(t.stages[0].budget, FailureBudget::max_fail_percentage(10));
    assert_eq!(t.stages[0].min_hosts_up, Some(1));
    assert_eq!(Tasklist::from_json_str(&t.to_json_string()).unwrap(), t);
}

#[tokio::test]
async fn a_degraded_run_is_recorded_and_its_resume_runs_only_the_dropped_hosts_work() {
    let (registry, tracker) = registry();
    let plan = Plan::build(
        &fleet(6, &["h2"], FailureBudget::max_failures(1)),
        &registry,
    )
    .unwrap();
    let runs = Runs::new(Arc::new(MemoryStore::new()));
    let (id, report) = runs
        .start(&executor(), &plan, "test", "alice", RunOptions::default())
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Degraded);
    let store = runs.store();
    assert_eq!(store.run(&id).await.unwrap().state, RunState::Degraded);
    let records = store.hosts(&id).await.unwrap();
    let state = |h: &str| records.iter().find(|r| r.host == h).unwrap().state;
    assert_eq!(state("h2"), HostState::Dropped);
    assert_eq!(state("h1"), HostState::Done);
    let tasks = store.tasks(&id).await.unwrap();
    let dropped: Vec<&TaskRecord> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Dropped)
        .collect();
    assert_eq!(dropped.len(), 2);
    assert!(
        dropped
            .iter()
            .all(|t| t.host == "h2" && t.error.as_deref().unwrap().contains("work A-h2 failed"))
    );
    let run = store.run(&id).await.unwrap();
    assert_eq!(TaskCounts::of_records(&run, &tasks).dropped, 2);

    // The resume runs h2's A, B and C (A succeeds now) and every clean-up again.
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
    assert_eq!(report.outcome, RunOutcome::Succeeded, "{report:?}");
    for h in hosts(6) {
        // Once each: h2 in the resume, the others in the first drive.
        assert_eq!(tracker.completed(&format!("B-{h}")), 1, "{h}");
    }
    assert_eq!(tracker.entered("A-h2"), 2);
    assert_eq!(tracker.entered("A-h1"), 1, "done hosts are not run again");
    assert_eq!(report.counts.done_earlier, 5 * 3);
    assert_eq!(store.run(&id).await.unwrap().state, RunState::Succeeded);
}
