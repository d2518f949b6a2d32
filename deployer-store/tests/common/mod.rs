//! Shared by the SQLite and PostgreSQL tests: an end-to-end resume scenario, and a throwaway
//! PostgreSQL server.

#![allow(dead_code)]

pub mod pg;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployer_core::fixture::FakeConnector;
use deployer_core::*;
use serde_json::Value;

/// How many times each step was entered.
#[derive(Debug, Default)]
pub struct Tracker {
    entered: Mutex<HashMap<String, u32>>,
}

impl Tracker {
    pub fn entered(&self, id: &str) -> u32 {
        *self.entered.lock().unwrap().get(id).unwrap_or(&0)
    }
}

/// `step`: records that it ran; fails its first `fail_times` attempts.
#[derive(Debug)]
struct Step {
    id: String,
    fail_times: u32,
    tracker: Arc<Tracker>,
}

#[async_trait]
impl Command for Step {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        unreachable!("built through register_fn")
    }

    async fn execute(&self, _ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let attempt = {
            let mut entered = self.tracker.entered.lock().unwrap();
            let n = entered.entry(self.id.clone()).or_default();
            *n += 1;
            *n
        };
        if attempt <= self.fail_times {
            return Err(CommandError::Failed {
                message: format!("step {} failed", self.id),
                exit_status: Some(3),
                stderr: "port in use".to_string(),
            });
        }
        Ok(Outcome::done())
    }
}

/// A registry with `step` bound to a fresh tracker.
pub fn registry() -> (CommandRegistry, Arc<Tracker>) {
    let tracker = Arc::new(Tracker::default());
    let mut registry = CommandRegistry::new();
    let t = tracker.clone();
    registry.register_fn("step", move |args| {
        let raw = args.raw();
        let id = raw
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let fail_times = raw.get("fail_times").and_then(Value::as_u64).unwrap_or(0) as u32;
        Ok(Box::new(Step {
            id,
            fail_times,
            tracker: t.clone(),
        }))
    });
    (registry, tracker)
}

fn step(host: &str, id: &str) -> Task {
    Task::new("step").on(host).arg("id", id)
}

fn executor() -> Executor {
    Executor::new(Arc::new(FakeConnector::new())).retry_delay(Duration::ZERO)
}

/// A run that fails in its second stage is resumed by another controller through `second`
/// (another store on the same database, as another process would have): the tasks that
/// succeeded do not run again, and the run record ends complete.
pub async fn resume_does_not_repeat_done_tasks(
    first: Arc<dyn RunStore>,
    second: Arc<dyn RunStore>,
) {
    let (registry, tracker) = registry();
    let tasklist = Tasklist::new("deploy")
        .stage(Stage::new("Upload", 4).tasks(vec![step("fe001", "up1"), step("fe002", "up2")]))
        .stage(Stage::new("Restart", 1).task(vec![
            step("fe001", "stop"),
            step("fe001", "start").arg("fail_times", 1),
        ]))
        .stage(Stage::new("Check", 1).task(step("fe001", "check")));
    let plan = Plan::build(&tasklist, &registry).unwrap();

    let runs = Runs::new(first).owner("ctl-1");
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
    let run = runs.store().run(&id).await.unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert!(run.finish_ts.is_some() && run.owner.is_none());
    assert_eq!(
        run.tasklist, tasklist,
        "the run keeps a full copy of its tasklist"
    );
    let tasks = runs.store().tasks(&id).await.unwrap();
    assert_eq!(tasks[3].state, TaskState::Failed);
    assert_eq!(tasks[3].exit_status, Some(3));
    assert_eq!(tasks[3].stderr_tail.as_deref(), Some("port in use"));
    assert!(!tasks[4].state.is_done(), "the check stage never ran");
    assert_eq!(tracker.entered("check"), 0);

    let other = Runs::new(second).owner("ctl-2");
    let report = other
        .resume(
            &executor(),
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

    // Both stores read the same, complete record.
    for store in [runs.store(), other.store()] {
        let run = store.run(&id).await.unwrap();
        assert_eq!(run.state, RunState::Succeeded);
        assert!(run.finish_ts.is_some() && run.owner.is_none());
        let tasks = store.tasks(&id).await.unwrap();
        assert!(
            tasks.iter().all(|t| t.state == TaskState::Succeeded),
            "{tasks:?}"
        );
        assert_eq!(tasks[3].attempts, 2, "attempts accumulate across resumes");
        assert!(tasks.iter().all(|t| t.finish_ts.is_some()));
        let hosts = store.hosts(&id).await.unwrap();
        let hosts: Vec<(&str, HostState)> =
            hosts.iter().map(|h| (h.host.as_str(), h.state)).collect();
        assert_eq!(
            hosts,
            [("fe001", HostState::Done), ("fe002", HostState::Done)]
        );
        assert!(store.average_duration("step").await.unwrap().is_some());
    }
}

/// A controller died mid-stage: its lease lapses, one task is done and the next was `RUNNING`.
/// Another controller's resume stops and asks (the command is not idempotent); forced, it runs
/// the interrupted task and the rest, but not the done one.
pub async fn an_interrupted_run_asks_then_resumes(store: Arc<dyn RunStore>) {
    let (registry, tracker) = registry();
    let tasklist = Tasklist::new("t").stage(Stage::new("s", 1).tasks(vec![
        step("fe001", "a"),
        step("fe001", "b"),
        step("fe001", "c"),
    ]));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let runs = Runs::new(store.clone()).owner("ctl-live");
    let id = runs.create(&plan, "test", "me").await.unwrap();
    store
        .claim(&id, "ctl-dead", Duration::from_millis(1))
        .await
        .unwrap();
    store.set_run_state(&id, RunState::Running).await.unwrap();
    let mut tasks = store.tasks(&id).await.unwrap();
    tasks[0].state = TaskState::Succeeded;
    tasks[1].state = TaskState::Running;
    tasks[1].attempts = 1;
    store.update_task(&id, &tasks[0]).await.unwrap();
    store.update_task(&id, &tasks[1]).await.unwrap();

    let resume = |force: bool| {
        let runs = runs.clone();
        let registry = &registry;
        let id = id.clone();
        async move {
            // The dead controller's lease lapses within milliseconds: retry while it holds.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let result = runs
                    .resume(
                        &executor(),
                        registry,
                        &id,
                        ResumeOptions {
                            force,
                            ..Default::default()
                        },
                        RunOptions::default(),
                    )
                    .await;
                match result {
                    Err(RunsError::Store(StoreError::LeaseHeld { .. }))
                        if std::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    other => return other,
                }
            }
        }
    };
    let err = resume(false).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RunsError::NeedsConfirmation { .. }), "{msg}");
    assert!(msg.contains("stages[0].tasks[1]"), "{msg}");
    assert_eq!(
        tracker.entered("a") + tracker.entered("b"),
        0,
        "nothing ran"
    );

    let report = resume(true).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(tracker.entered("a"), 0, "the done task did not run again");
    assert_eq!(tracker.entered("b"), 1);
    assert_eq!(tracker.entered("c"), 1);
    let run = store.run(&id).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded);
    let tasks = store.tasks(&id).await.unwrap();
    assert_eq!(tasks[1].attempts, 2, "the interrupted attempt counts");
}

/// Values at the edges of their types come back as they went in.
pub async fn extreme_values_round_trip(store: &dyn RunStore) {
    use deployer_core::fixture::store_contract::sample_run;
    let new = sample_run("edges");
    store.create_run(new.clone()).await.unwrap();
    store.claim(&new.id, "ctl", Duration::MAX).await.unwrap();
    assert!(
        store
            .run(&new.id)
            .await
            .unwrap()
            .is_claimed(std::time::SystemTime::now())
    );
    let mut task = TaskRecord::pending(&new.tasks[3]);
    task.state = TaskState::TimedOut;
    task.attempts = u32::MAX;
    task.exit_status = Some(i32::MIN);
    task.started_ts = Some(std::time::UNIX_EPOCH - Duration::from_secs(86_400));
    task.finished_ts = Some(std::time::UNIX_EPOCH + Duration::from_secs(4_000_000_000));
    task.duration = Some(Duration::from_secs(10 * 365 * 86_400));
    task.stderr_tail = Some("quote ' and \0 nul and émoji 🚀".to_string());
    task.error = Some(String::new());
    task.tag = None;
    task.history_key = "book/step".to_string();
    store.update_task(&new.id, &task).await.unwrap();
    let mut expected = task.clone();
    // NUL, which PostgreSQL text cannot hold, is stored as U+FFFD on every backend.
    expected.stderr_tail = Some("quote ' and \u{FFFD} nul and émoji 🚀".to_string());
    assert_eq!(store.tasks(&new.id).await.unwrap()[3], expected);
    let odd_host = "fe'004; DROP TABLE runs; --";
    store
        .set_host_state(&new.id, odd_host, HostState::Added)
        .await
        .unwrap();
    assert_eq!(store.hosts(&new.id).await.unwrap()[2].host, odd_host);
}
