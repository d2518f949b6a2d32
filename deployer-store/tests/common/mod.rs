//! Shared by the SQLite and PostgreSQL tests: an end-to-end resume scenario, and a throwaway
//! PostgreSQL server.

#![allow(dead_code)]

pub mod pg;
pub mod views;
pub mod work;

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

/// Where a child process of [`open_at_once`] finds the store to open, and its start signal.
const RACE_URL: &str = "DEPLOYER_STORE_RACE_URL";
const RACE_GO: &str = "DEPLOYER_STORE_RACE_GO";

/// The body of a child process of [`open_at_once`] (a test that does nothing unless started by
/// it): says it is ready, waits for the start signal, opens the store, lists its runs. Exits 3
/// with the error on stderr when opening or listing fails.
pub async fn open_at_once_child() {
    let (Ok(url), Ok(go)) = (std::env::var(RACE_URL), std::env::var(RACE_GO)) else {
        return;
    };
    let go = std::path::PathBuf::from(go);
    std::fs::write(
        go.with_extension(format!("ready-{}", std::process::id())),
        "",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !go.exists() {
        assert!(std::time::Instant::now() < deadline, "no start signal");
        std::thread::sleep(Duration::from_micros(200));
    }
    let result = match deployer_store::open(&url).await {
        Ok(store) => store.list_runs(1).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("STORE FAILED: {}", deployer_core::error_chain(&e));
        std::process::exit(3);
    }
}

/// For each URL, `processes` copies of this test binary (running only `child_test`, which
/// calls [`open_at_once_child`]) open the same fresh store at the same instant: every one must
/// succeed. They all wait on one start file, so the opens overlap however slowly processes
/// start.
pub fn open_at_once(child_test: &str, urls: &[String], processes: usize) {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().unwrap();
    for (round, url) in urls.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        let children: Vec<_> = (0..processes)
            .map(|_| {
                Command::new(&exe)
                    .args([child_test, "--exact", "--ignored", "--nocapture"])
                    .args(["--test-threads", "1"])
                    .env(RACE_URL, url)
                    .env(RACE_GO, &go)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("go.ready-"))
                })
                .count();
            if ready == processes {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: only {ready} of {processes} children started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::write(&go, "").unwrap();
        let mut failures = Vec::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || !stdout.contains("1 passed") {
                failures.push(format!(
                    "{}: {}{}",
                    out.status,
                    stdout,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "round {round}: {} of {processes} processes failed to open a fresh store:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// The seed of generated cases: `DEPLOYER_STORE_SEED`, else 18.
pub fn seed() -> u64 {
    std::env::var("DEPLOYER_STORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18)
}

/// A seeded generator (SplitMix64): the same seed gives the same cases, so a failure names
/// the seed and case that reproduce it. No crate needed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 0..n
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// Text a user, a host or a command might produce: empty, blank, NUL, quotes, SQL, emoji,
    /// right-to-left marks, the largest code point, long.
    pub fn text(&mut self) -> String {
        let pieces = [
            "",
            " ",
            "fe001",
            "web",
            "a\0b",
            "\0",
            "émoji 🚀",
            "\u{FFFD}\u{FFFF}\u{10FFFF}",
            "quote ' \" \\ `",
            "line\nbreak\r\n",
            "tab\there",
            "\u{202E}rtl\u{200B}",
            "Robert'); DROP TABLE runs;--",
            "%s %n {}",
            "日本語のホスト",
            "\u{1}\u{7f}\u{9f}",
        ];
        let mut s = String::new();
        for _ in 0..self.below(4) {
            s.push_str(self.pick(&pieces[..]));
        }
        if self.chance(3) {
            s.push_str(&"x".repeat(self.below(5000) as usize));
        }
        s
    }

    /// A JSON number as written in a file: the edges of what validation accepts and refuses.
    pub fn seconds(&mut self) -> serde_json::Value {
        let edges = [
            "1e-300",
            "5e-324",
            "0",
            "-0.0",
            "-1",
            "0.0009",
            "0.0009999995",
            "0.001",
            "0.0015",
            "1",
            "30",
            "30.25",
            "1e-3",
            "86400",
            "31535999.999999999",
            "31536000",
            "31536000.000001",
            "1e308",
            "18446744073709551615",
        ];
        let text = if self.chance(25) {
            self.pick(&edges[..]).to_string()
        } else {
            // Log-uniform from 1e-4 s to 1e8 s.
            let exp = self.below(12_000) as f64 / 1000.0 - 4.0;
            format!("{}", 10f64.powf(exp))
        };
        serde_json::from_str(&text).unwrap()
    }

    /// Any JSON value a command argument might hold: big and tiny numbers, odd text, nesting.
    pub fn json(&mut self, depth: u32) -> serde_json::Value {
        use serde_json::{Value, json};
        let numbers = [
            "0",
            "-0.0",
            "18446744073709551615",
            "-9223372036854775808",
            "5e-324",
            "1.7976931348623157e308",
            "0.1",
            "123456.789e-300",
            "1e-305",
            "3",
        ];
        match self.below(if depth > 3 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => Value::Bool(self.chance(50)),
            2 => serde_json::from_str(self.pick(&numbers[..])).unwrap(),
            3 => Value::String(self.text()),
            4 => Value::Array((0..self.below(4)).map(|_| self.json(depth + 1)).collect()),
            _ => {
                let mut m = serde_json::Map::new();
                for _ in 0..self.below(4) {
                    // "secret" keys would make it a secret argument: not what is tested here.
                    let key = self.text().replace("secret", "s");
                    m.insert(key, self.json(depth + 1));
                }
                json!(m)
            }
        }
    }

    /// A tasklist as a user might write it, about half of them valid.
    pub fn tasklist_json(&mut self) -> String {
        use serde_json::{Value, json};
        let mut stages = Vec::new();
        for _ in 0..1 + self.below(3) {
            let mut tasks = Vec::new();
            for _ in 0..self.below(4) {
                let chain = self.chance(25);
                let mut steps: Vec<Value> = (0..if chain { 1 + self.below(3) } else { 1 })
                    .map(|_| self.task_json())
                    .collect();
                tasks.push(if chain {
                    Value::Array(steps)
                } else {
                    steps.remove(0)
                });
            }
            let mut stage = json!({
                "name": if self.chance(90) { format!("stage {}", self.text()) } else { self.text() },
                "concurrency": if self.chance(90) {
                    self.pick(&[1u64, 2, 7, 4_294_967_295])
                } else {
                    self.pick(&[0, 4_294_967_296])
                },
                "tasks": tasks,
            });
            if self.chance(30) {
                stage["concurrency_per_host"] = json!(self.pick(&[1u64, 2, 0, 4_294_967_295]));
            }
            stages.push(stage);
        }
        json!({"name": self.text(), "stages": stages}).to_string()
    }

    fn task_json(&mut self) -> serde_json::Value {
        use serde_json::json;
        let mut task = json!({"command": if self.chance(95) { "probe" } else { "nope" }});
        if self.chance(60) {
            task["remote_host"] = json!(if self.chance(50) {
                format!("fe00{}", self.below(4))
            } else {
                self.text()
            });
        }
        if self.chance(30) {
            task["remote_user"] = json!(self.text());
        }
        if self.chance(50) {
            task["tag"] = json!(self.text());
        }
        if self.chance(70) {
            task["timeout"] = self.seconds();
        }
        if self.chance(40) {
            task["retries"] = json!(if self.chance(90) {
                self.pick(&[0u64, 1, 3, 999, 1000])
            } else {
                self.pick(&[1001, 4_294_967_296])
            });
        }
        for _ in 0..self.below(4) {
            let key = format!("arg{}", self.text().replace("secret", "s"));
            task[key] = self.json(0);
        }
        task
    }

    /// A time with whole microseconds anywhere in what a BIGINT of microseconds holds.
    pub fn time(&mut self) -> std::time::SystemTime {
        let us = if self.chance(50) {
            // Around now.
            1_700_000_000_000_000 + self.below(100_000_000_000_000) as i64
        } else {
            self.next() as i64
        };
        let d = Duration::from_micros(us.unsigned_abs());
        if us >= 0 {
            std::time::UNIX_EPOCH + d
        } else {
            std::time::UNIX_EPOCH - d
        }
    }
}

/// What a text column gives back: NUL is stored as U+FFFD on every backend.
pub fn stored(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// `probe`: a command accepting any arguments, so every tasklist validation accepts reaches
/// the store.
pub fn probe_registry() -> CommandRegistry {
    let mut registry = CommandRegistry::new();
    registry.register_fn("probe", |_| Ok(Box::new(deployer_core::fixture::Noop)));
    registry
}

/// Every generated tasklist that validation accepts (`Tasklist::from_json_str`, then
/// `Plan::build`) is stored, listed, shown (its run, hosts and tasks read back) and read back
/// equal, with task records holding any value their types allow; nothing fails in the store,
/// and no run is ever listed unreadable. Returns how many were accepted.
pub async fn accepted_tasklists_round_trip(store: &dyn RunStore, seed: u64, cases: usize) -> usize {
    let registry = probe_registry();
    let mut rng = Rng::new(seed);
    let mut accepted = 0;
    let mut refused = 0;
    for case in 0..cases {
        let json = rng.tasklist_json();
        let at = format!("seed {seed}, case {case}: {json}");
        let plan = match Tasklist::from_json_str(&json) {
            Ok(tasklist) => match Plan::build(&tasklist, &registry) {
                Ok(plan) => plan,
                Err(_) => {
                    refused += 1;
                    continue;
                }
            },
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        accepted += 1;
        assert!(plan.tasklist().check_limits().is_ok(), "{at}");
        let new = NewRun::from_plan(&plan, rng.text(), rng.text());
        let created = store.create_run(new.clone()).await;
        let created = created.unwrap_or_else(|e| panic!("{at}: create_run: {e}"));
        assert_eq!(created.name, stored(&new.name), "{at}");

        // Listed (newest first, so it comes first) and shown, equal to what went in.
        let listed = store
            .list_runs(1)
            .await
            .unwrap_or_else(|e| panic!("{at}: {e}"));
        let Some(ListedRun::Run(listed)) = listed.into_iter().next() else {
            panic!("{at}: not listed as a readable run");
        };
        assert_eq!(*listed, created, "{at}");
        let run = store
            .run(&new.id)
            .await
            .unwrap_or_else(|e| panic!("{at}: run: {e}"));
        assert_eq!(run.tasklist, new.tasklist, "{at}");
        assert_eq!(run.tasklist.to_json_string(), new.tasklist.to_json_string());
        assert_eq!(
            (&run.source, &run.started_by),
            (&stored(&new.source), &stored(&new.started_by)),
            "{at}"
        );
        let hosts = store
            .hosts(&new.id)
            .await
            .unwrap_or_else(|e| panic!("{at}: hosts: {e}"));
        let names: Vec<String> = hosts.iter().map(|h| h.host.clone()).collect();
        let expected: Vec<String> = new.hosts().iter().map(|h| stored(h)).collect();
        assert_eq!(names, expected, "{at}");

        // Every task record field at the edges of its type.
        let mut records = Vec::new();
        for info in &new.tasks {
            let mut t = TaskRecord::pending(info);
            t.history_key = rng.text();
            t.state = rng.pick(&[
                TaskState::Pending,
                TaskState::Running,
                TaskState::Succeeded,
                TaskState::Skipped,
                TaskState::Failed,
                TaskState::TimedOut,
                TaskState::Cancelled,
                TaskState::NotRun,
            ]);
            let any = rng.next();
            t.attempts = rng.pick(&[0, 1, 1001, u32::MAX, any as u32]);
            t.started_ts = rng.chance(80).then(|| rng.time());
            t.finished_ts = rng.chance(80).then(|| rng.time());
            let any = rng.below(i64::MAX as u64);
            t.duration = rng
                .chance(80)
                .then(|| Duration::from_micros(rng.pick(&[0, 1, i64::MAX as u64, any])));
            let any = rng.next() as i32;
            t.exit_status = rng
                .chance(70)
                .then(|| rng.pick(&[0, 1, -1, 255, i32::MIN, i32::MAX, any]));
            t.stderr_tail = rng.chance(70).then(|| rng.text());
            t.error = rng.chance(70).then(|| rng.text());
            t.finish_ts = rng.chance(30).then(|| rng.time());
            store
                .update_task(&new.id, &t)
                .await
                .unwrap_or_else(|e| panic!("{at}: update_task {}: {e}", t.id));
            let mut expected = t.clone();
            expected.host = stored(&t.host);
            expected.tag = t.tag.as_deref().map(stored);
            expected.command = stored(&t.command);
            expected.history_key = stored(&t.history_key);
            expected.stderr_tail = t.stderr_tail.as_deref().map(stored);
            expected.error = t.error.as_deref().map(stored);
            records.push(expected);
        }
        let tasks = store
            .tasks(&new.id)
            .await
            .unwrap_or_else(|e| panic!("{at}: tasks: {e}"));
        assert_eq!(tasks, records, "{at}");
        for t in &records {
            store
                .average_duration(&t.history_key)
                .await
                .unwrap_or_else(|e| panic!("{at}: average_duration: {e}"));
        }

        // A host joining, a lease with an odd owner, the end of the run.
        let added = rng.text();
        store
            .set_host_state(&new.id, &added, HostState::Added)
            .await
            .unwrap_or_else(|e| panic!("{at}: set_host_state: {e}"));
        let hosts = store.hosts(&new.id).await.unwrap();
        assert!(hosts.iter().any(|h| h.host == stored(&added)), "{at}");
        let owner = rng.text();
        store
            .claim(&new.id, &owner, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{at}: claim: {e}"));
        store.renew(&new.id, &owner, Duration::MAX).await.unwrap();
        assert_eq!(
            store.run(&new.id).await.unwrap().owner,
            Some(stored(&owner)),
            "{at}"
        );
        store.release(&new.id, &owner).await.unwrap();
        if rng.chance(50) {
            store.finish_run(&new.id, RunState::Failed).await.unwrap();
        }
    }
    eprintln!("seed {seed}: {accepted} tasklists accepted and round-tripped, {refused} refused");
    assert!(
        accepted >= cases / 10 && refused >= cases / 10,
        "the generator should produce both: {accepted} accepted, {refused} refused"
    );
    let all = store.list_runs(usize::MAX).await.unwrap();
    assert_eq!(all.len(), accepted);
    let unreadable: Vec<_> = all.iter().filter(|r| r.record().is_none()).collect();
    assert!(unreadable.is_empty(), "{unreadable:?}");
    accepted
}

/// Tasklists past today's limits (what an earlier version recorded: a timeout of `1e-300`
/// became 0 ns, a host name was not checked): stored, they list, show and read back, and
/// `check_limits` names what they break. `Plan::build` refuses them now, so the run is recorded
/// as such a version did: from the plan of the same tasklist within the limits, with the
/// original tasklist as its copy.
pub async fn tasklists_past_the_limits_still_read_back(store: &dyn RunStore) {
    let registry = probe_registry();
    let task = |timeout: Duration| Task::new("probe").timeout(timeout);
    let tasklist = Tasklist::new("legacy\0name").stage(
        Stage::new("s", usize::MAX)
            .task(task(Duration::ZERO).on("").tag("a\0b").retries(u32::MAX))
            .task(vec![
                task(Duration::from_nanos(1)),
                task(Duration::from_secs(400 * 86_400)),
                task(Duration::MAX),
            ]),
    );
    assert!(
        Plan::build(&tasklist, &registry).is_err(),
        "the plan checks the limits"
    );
    let within = Tasklist::new("legacy\0name").stage(
        Stage::new("s", 1)
            .task(task(Duration::from_secs(1)).tag("a\0b"))
            .task(vec![task(Duration::from_secs(1)); 3]),
    );
    let plan = Plan::build(&within, &registry).expect("within the limits");
    let mut new = NewRun::from_plan(&plan, "legacy", "me");
    new.tasklist = tasklist.clone();
    new.tasks[0].host = String::new();
    store.create_run(new.clone()).await.unwrap();
    let listed = store.list_runs(10).await.unwrap();
    assert!(
        matches!(&listed[..], [ListedRun::Run(r)] if r.id == new.id),
        "{listed:?}"
    );
    let run = store.run(&new.id).await.unwrap();
    assert_eq!(run.tasklist.to_json_string(), new.tasklist.to_json_string());
    assert_eq!(
        run.tasklist.stages[0].tasks[0].tasks()[0].timeout,
        Some(Duration::ZERO)
    );
    let problems = run.tasklist.check_limits().unwrap_err().to_string();
    assert!(
        problems.contains("stages[0].tasks[0].timeout: found 0 (expected a number of seconds"),
        "{problems}"
    );
    assert_eq!(store.tasks(&new.id).await.unwrap().len(), 4);
    assert_eq!(store.hosts(&new.id).await.unwrap()[0].host, "");
}
