//! Distributed runs with real processes: a throwaway PostgreSQL server, a `TestFleet` of six
//! loopback sshd hosts split into zones by an inventory (`zone` host var), `deploy worker`
//! processes and a `deploy --tasklist … --submit` that follows the run.
//!
//! Every task appends `STAGE ENTRY[.STEP] START END` (its own clock readings around a sleep) to
//! a file of its host, so what ran, when and where is read from the hosts; which worker ran
//! an entry is read from the workers' logs (`worker W runs stages[s].tasks[e] of run R on H`).

#[path = "common/workers.rs"]
mod workers_common;

use workers_common::*;

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_in_two_zones_run_a_submitted_tasklist_as_one_controller_would() {
    let mut w = World::start("main").await;
    let hosts = w.hosts().to_vec();
    // Stage 0: two entries per host, 3 at once, 1 per host. Stage 1: two chains of two steps
    // per host, 4 at once, 1 per host. Stage 2: one entry per host, all at once.
    let mut s0 = Stage::new("first", 3).per_host(1);
    let mut s1 = Stage::new("chains", 4).per_host(1);
    let mut s2 = Stage::new("last", 6);
    let mut e = [0usize; 3];
    for h in &hosts {
        for _ in 0..2 {
            s0 = s0.task(w.step(h, &format!("0:{}", e[0]), 0.3));
            e[0] += 1;
        }
    }
    for h in &hosts {
        for _ in 0..2 {
            let chain = vec![
                w.step(h, &format!("1:{}.0", e[1]), 0.2),
                w.step(h, &format!("1:{}.1", e[1]), 0.2),
            ];
            s1 = s1.task(TaskEntry::Chain(chain));
            e[1] += 1;
        }
    }
    for h in &hosts {
        s2 = s2.task(w.step(h, &format!("2:{}", e[2]), 0.2));
        e[2] += 1;
    }
    let tasklist = Tasklist::new("workers").stage(s0).stage(s1).stage(s2);
    let path = w.save(&tasklist, "tasklist.json");
    w.worker("w-eu", &["eu"], &[]);
    w.worker("w-us", &["us"], &[]);
    w.worker("w-all", &["eu", "us"], &[]);

    let mut submitter = w.submit(&path, "submit");
    let code = World::wait(&mut submitter, Duration::from_secs(40), "the submitter");
    let (out, err) = w.output("submit");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("submitted run "), "{out}");
    assert!(out.contains("state     SUCCEEDED"), "the recap: {out}");
    assert!(err.contains("started"), "progress lines: {err}");

    // Every entry ran exactly once (a chain's steps once each).
    let lines = w.lines();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for (_, key, _, _) in &lines {
        *count.entry(key.clone()).or_default() += 1;
    }
    assert_eq!(count.len(), e[0] + 2 * e[1] + e[2], "{count:?}");
    assert!(count.values().all(|&n| n == 1), "{count:?}");

    // Entries: (stage, host, start, end), a chain from its first step to its last.
    let mut entries: BTreeMap<(usize, usize), (String, f64, f64)> = BTreeMap::new();
    for (host, key, s, end) in &lines {
        let (stage, rest) = key.split_once(':').unwrap();
        let entry: usize = rest.split('.').next().unwrap().parse().unwrap();
        let slot =
            entries
                .entry((stage.parse().unwrap(), entry))
                .or_insert((host.clone(), *s, *end));
        slot.1 = slot.1.min(*s);
        slot.2 = slot.2.max(*end);
    }
    // Stage barriers: no entry of a stage starts before every entry of the one before ended.
    for stage in 1..3 {
        let last_end = entries
            .iter()
            .filter(|((s, _), _)| *s == stage - 1)
            .map(|(_, v)| v.2)
            .fold(f64::MIN, f64::max);
        let first_start = entries
            .iter()
            .filter(|((s, _), _)| *s == stage)
            .map(|(_, v)| v.1)
            .fold(f64::MAX, f64::min);
        assert!(
            first_start >= last_end,
            "stage {stage} started at {first_start} before stage {} ended at {last_end}",
            stage - 1
        );
    }
    // Limits, over every worker.
    for (stage, limit, per_host) in [(0, 3, 1), (1, 4, 1), (2, 6, 6)] {
        let spans: Vec<(f64, f64)> = entries
            .iter()
            .filter(|((s, _), _)| *s == stage)
            .map(|(_, v)| (v.1, v.2))
            .collect();
        let most = max_overlap(&spans);
        assert!(
            most <= limit,
            "stage {stage}: {most} entries at once, limit {limit}"
        );
        assert!(
            most >= 2,
            "stage {stage} ran one entry at a time: {spans:?}"
        );
        for h in &hosts {
            let spans: Vec<(f64, f64)> = entries
                .iter()
                .filter(|((s, _), v)| *s == stage && &v.0 == h)
                .map(|(_, v)| (v.1, v.2))
                .collect();
            let most = max_overlap(&spans);
            assert!(most <= per_host, "stage {stage} on {h}: {most} at once");
        }
    }
    // Zones: a worker ran only hosts of its zones; every entry was run by one worker.
    let mut ran = Vec::new();
    for (name, zones) in [
        ("w-eu", vec!["eu"]),
        ("w-us", vec!["us"]),
        ("w-all", vec!["eu", "us"]),
    ] {
        let log = w.worker_log(name);
        for (worker, stage, entry, host) in runs_in(&log, name) {
            assert!(
                zones.contains(&w.zones[&host].as_str()),
                "{worker} (zones {zones:?}) ran stages[{stage}].tasks[{entry}] on {host} of zone {}",
                w.zones[&host]
            );
            ran.push((stage, entry));
        }
    }
    // `runs show` names the worker of each task: the one whose log says it ran the entry.
    let by_log: HashMap<(usize, usize), String> = ["w-eu", "w-us", "w-all"]
        .iter()
        .flat_map(|name| runs_in(&w.worker_log(name), name))
        .map(|(worker, stage, entry, _)| ((stage, entry), worker))
        .collect();
    let shown = w.runs_show("submit");
    let task_lines: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.starts_with("TASK"))
        .collect();
    assert!(task_lines[0].contains("WORKER"), "{shown}");
    let mut named = 0;
    for line in &task_lines[1..] {
        let Some(path) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = path.strip_prefix("stages[") else {
            continue;
        };
        let stage: usize = rest[..rest.find(']').unwrap()].parse().unwrap();
        let rest = &rest[rest.find("tasks[").unwrap() + 6..];
        let entry: usize = rest[..rest.find(']').unwrap()].parse().unwrap();
        let worker = &by_log[&(stage, entry)];
        assert!(
            line.split_whitespace().any(|c| c == worker),
            "{path} ran on {worker}, runs show says:\n{line}"
        );
        named += 1;
    }
    assert_eq!(named, e[0] + 2 * e[1] + e[2], "{shown}");
    ran.sort();
    let expected: Vec<(usize, usize)> = (0..3)
        .flat_map(|s| (0..e[s]).map(move |k| (s, k)))
        .collect();
    assert_eq!(
        ran, expected,
        "each entry claimed once, by the workers' logs"
    );
    w.stop_workers();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_stops_every_worker_from_claiming_and_the_submitter_exits_1() {
    let mut w = World::start("fail").await;
    let hosts = w.hosts().to_vec();
    // Two at once: entry 0 fails at once; whatever runs then finishes, nothing new starts,
    // and stage 1 never does.
    let file = w.root.join(format!("{}.log", hosts[0]));
    let mut s0 = Stage::new("two-at-once", 2).task(Task::new("execute_command").on(&hosts[0]).arg(
        "command_line",
        format!(
            "t=$(date +%s.%N); echo \"0:0 $t $t\" >> {}; exit 3",
            file.display()
        ),
    ));
    for (k, h) in hosts.iter().enumerate().skip(1) {
        s0 = s0.task(w.step(h, &format!("0:{k}"), 0.5));
    }
    let mut s1 = Stage::new("after", 6);
    for (k, h) in hosts.iter().enumerate() {
        s1 = s1.task(w.step(h, &format!("1:{k}"), 0.0));
    }
    let path = w.save(&Tasklist::new("fails").stage(s0).stage(s1), "tasklist.json");
    w.worker("w-eu", &["eu"], &[]);
    w.worker("w-us", &["us"], &[]);
    w.worker("w-all", &[], &[]);
    let mut submitter = w.submit(&path, "submit");
    let code = World::wait(&mut submitter, Duration::from_secs(30), "the submitter");
    let (out, err) = w.output("submit");
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("state     FAILED"), "{out}");
    assert!(
        err.contains("execute_command on ") && err.contains(": FAILED: "),
        "a progress line says so: {err}"
    );
    // Let anything a worker wrongly claimed show up.
    std::thread::sleep(Duration::from_secs(1));
    let lines = w.lines();
    let failed_at = lines
        .iter()
        .find(|l| l.1 == "0:0")
        .unwrap_or_else(|| panic!("the failing entry ran: {lines:?}"))
        .2;
    // Only an entry claimed while the failing one ran (two at once) may start after its
    // command failed: nothing is claimed once the failure is stored.
    let later: Vec<_> = lines.iter().filter(|l| l.2 > failed_at).collect();
    assert!(later.len() <= 1, "claimed after the failure: {later:?}");
    assert!(
        lines.iter().all(|l| !l.1.starts_with("1:")),
        "stage 1 ran after a failure: {lines:?}"
    );
    assert!(lines.len() < 6, "some entries never ran: {lines:?}");
    w.stop_workers();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_entries_are_claimed_again_by_the_others() {
    let mut w = World::start("kill").await;
    let hosts = w.hosts().to_vec();
    let mut s0 = Stage::new("slow", 6);
    for (k, h) in hosts.iter().enumerate() {
        s0 = s0.task(w.step(h, &format!("0:{k}"), 1.5));
    }
    let mut s1 = Stage::new("then", 6);
    for (k, h) in hosts.iter().enumerate() {
        s1 = s1.task(w.step(h, &format!("1:{k}"), 0.0));
    }
    let path = w.save(
        &Tasklist::new("takeover").stage(s0).stage(s1),
        "tasklist.json",
    );
    let victim = w.worker("w-a", &[], &["--slots", "3", "--lease", "1500ms"]);
    let mut submitter = w.submit(&path, "submit");
    World::until(Duration::from_secs(15), "w-a claims three entries", || {
        runs_in(&w.worker_log("w-a"), "w-a").len() >= 3
    });
    w.worker("w-b", &[], &["--slots", "3", "--lease", "1500ms"]);
    World::until(Duration::from_secs(15), "w-b claims three entries", || {
        !runs_in(&w.worker_log("w-b"), "w-b").is_empty()
    });
    w.signal(victim, libc::SIGKILL);
    let taken: Vec<(usize, usize)> = runs_in(&w.worker_log("w-a"), "w-a")
        .into_iter()
        .map(|r| (r.1, r.2))
        .collect();
    let code = World::wait(&mut submitter, Duration::from_secs(30), "the submitter");
    let (out, err) = w.output("submit");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let a = w.worker_log("w-a");
    let b = w.worker_log("w-b");
    for (stage, entry) in &taken {
        assert_eq!(
            ended_done(&a, "w-a", *stage, *entry),
            0,
            "w-a was killed mid-entry"
        );
        assert_eq!(
            ended_done(&b, "w-b", *stage, *entry),
            1,
            "w-b took over stages[{stage}].tasks[{entry}]:\n{b}"
        );
    }
    for stage in 0..2 {
        for entry in 0..6 {
            assert_eq!(
                ended_done(&a, "w-a", stage, entry) + ended_done(&b, "w-b", stage, entry),
                1,
                "stages[{stage}].tasks[{entry}] done once"
            );
        }
    }
    let keys: Vec<String> = w.lines().into_iter().map(|l| l.1).collect();
    for k in 0..6 {
        assert!(keys.contains(&format!("0:{k}")) && keys.contains(&format!("1:{k}")));
    }
    w.stop_workers();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zone_no_worker_serves_is_named_within_10_seconds_and_a_cancel_ends_the_run() {
    let mut w = World::start("zone").await;
    let hosts = w.hosts().to_vec();
    let mut s0 = Stage::new("all", 6);
    for (k, h) in hosts.iter().enumerate() {
        s0 = s0.task(w.step(h, &format!("0:{k}"), 0.0));
    }
    let path = w.save(&Tasklist::new("zones").stage(s0), "tasklist.json");
    w.worker("w-us", &["us"], &[]);
    // Submitted before the worker's first heartbeat, the run would rightly warn that zone us
    // has no live worker either (and eu's warning would say "zones served: none").
    w.until_registered("w-us");
    let started = Instant::now();
    let mut submitter = w.submit(&path, "submit");
    let warning = "warning: hosts in zone eu have no live worker (zones served: us): start `deploy worker --zone eu`";
    World::until(Duration::from_secs(10), "the unserved zone warning", || {
        w.output("submit").1.contains(warning)
    });
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !w.output("submit").1.contains("zone us"),
        "{}",
        w.output("submit").1
    );
    // The us hosts ran; the eu hosts wait.
    World::until(Duration::from_secs(10), "the us entries", || {
        w.lines().len() == 3
    });
    assert!(w.lines().iter().all(|l| w.zones[&l.0] == "us"));
    // `runs show` says what the run waits for.
    let shown = w.runs_show("submit");
    assert!(
        shown.contains("waiting: hosts in zone eu have no live worker (zones served: us)"),
        "{shown}"
    );
    assert!(shown.contains("work      3 entries pending, "), "{shown}");
    // A SIGINT asks the workers to cancel: the run ends cancelled, exit 130.
    unsafe {
        libc::kill(submitter.id() as libc::pid_t, libc::SIGINT);
    }
    let code = World::wait(&mut submitter, Duration::from_secs(15), "the submitter");
    let (out, err) = w.output("submit");
    assert_eq!(code, 130, "stdout:\n{out}\nstderr:\n{err}");

    // An inline secret is refused at submit (exit 2), naming where.
    let secret = serde_json::json!({"name": "secret", "stages": [{"name": "s", "concurrency": 1,
        "tasks": [{"command": "execute_command", "remote_host": hosts[3], "command_line": "true",
                   "env": {"TOKEN": {"secret": "hunter2"}}}]}]});
    let secret_path = w.dir.path().join("secret.json");
    std::fs::write(&secret_path, secret.to_string()).unwrap();
    let out = deploy()
        .args(["--store", &w.url, "--submit", "--tasklist"])
        .arg(&secret_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("this plan cannot run on workers") && err.contains("secret_env"),
        "{err}"
    );

    // --detach returns at once with the run's id; the us worker runs it.
    let mut s0 = Stage::new("detached", 3);
    for (k, h) in hosts.iter().enumerate().skip(3) {
        s0 = s0.task(w.step(h, &format!("d:{k}"), 0.0));
    }
    let path = w.save(&Tasklist::new("detached").stage(s0), "detached.json");
    let out = deploy()
        .args(["--store", &w.url, "--submit", "--detach", "--tasklist"])
        .arg(&path)
        .arg("-i")
        .arg(&w.inventory)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("submitted run "), "{stdout}");
    assert!(
        !stdout.contains("state "),
        "no recap: it did not follow: {stdout}"
    );
    World::until(
        Duration::from_secs(10),
        "the detached run's entries",
        || w.lines().iter().filter(|l| l.1.starts_with("d:")).count() == 3,
    );
    w.stop_workers();
}

#[test]
fn workers_and_submit_refuse_a_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("runs.db").display());
    let out = deploy()
        .args(["--store", &store, "worker"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("a SQLite store is driven by one controller: workers need a PostgreSQL store (--store postgres://…)"),
        "{err}"
    );
    let tasklist = dir.path().join("t.json");
    Tasklist::new("t")
        .stage(Stage::new("s", 1).task(Task::new("execute_command").arg("command_line", "true")))
        .save(&tasklist)
        .unwrap();
    let out = deploy()
        .args(["--store", &store, "--submit", "--tasklist"])
        .arg(&tasklist)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("workers need a PostgreSQL store"), "{err}");
    assert!(!dir.path().join("runs.db").exists(), "nothing stored");
}

/// A command that says when it starts, and whether it ran to its end or was dropped.
#[derive(Debug)]
struct Slow(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

struct Dropped(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.lock().unwrap().push("dropped");
    }
}

#[deployer_core::async_trait]
impl deployer_core::Command for Slow {
    fn initialize(
        _: &deployer_core::TaskArgs<'_>,
    ) -> Result<Self, deployer_core::ValidationErrors> {
        unreachable!("built through register_fn")
    }

    async fn execute(
        &self,
        _: &deployer_core::ExecContext,
    ) -> Result<deployer_core::Outcome, deployer_core::CommandError> {
        self.0.lock().unwrap().push("started");
        let guard = Dropped(self.0.clone());
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.0.lock().unwrap().push("finished");
        drop(guard);
        Ok(deployer_core::Outcome::done())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_whose_claim_is_taken_stops_its_command_and_records_nothing_more() {
    use deployer_core::{Plan, TaskState, WorkQueue, Worker, WorkerInfo};
    use sqlx::Connection;
    use std::sync::{Arc, Mutex};

    let pg = pg::PgServer::start().await;
    let url = pg.database().await;
    let queue: Arc<dyn WorkQueue> =
        Arc::new(deployer_store::PostgresStore::connect(&url).await.unwrap());
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut commands = deployer_core::CommandRegistry::new();
    let e = events.clone();
    commands.register_fn("slow", move |_| Ok(Box::new(Slow(e.clone()))));
    let tasklist =
        Tasklist::new("fenced").stage(Stage::new("s", 1).task(Task::new("slow").on("h1")));
    let plan = Plan::build(&tasklist, &commands).unwrap();
    let id = deployer_core::submit(&*queue, &plan, "test", "tester", |_| None)
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<deployer_core::Event>>> = Arc::new(Mutex::new(Vec::new()));
    let info = WorkerInfo {
        id: "w-fenced".into(),
        zones: Vec::new(),
        commands: Vec::new(),
    };
    let worker = Worker::new(
        queue.clone(),
        commands,
        Arc::new(deployer_core::fixture::FakeConnector::new()),
        info,
    )
    .lease_ttl(Duration::from_millis(900))
    .sink({
        let seen = seen.clone();
        Arc::new(move |e: &deployer_core::Event| seen.lock().unwrap().push(e.clone()))
    });
    let drain = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let drain = drain.clone();
        async move { worker.run(drain).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events.lock().unwrap().contains(&"started") {
        assert!(Instant::now() < deadline, "the entry did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The worker's sinks heard which worker claimed the entry before its task started.
    {
        let seen = seen.lock().unwrap();
        let kinds: Vec<&deployer_core::EventKind> = seen.iter().map(|e| &e.kind).collect();
        assert!(
            matches!(
                kinds.first(),
                Some(deployer_core::EventKind::EntryClaimed { worker, host, tasks })
                    if worker == "w-fenced" && host == "h1" && tasks == &[plan.tasks().next().unwrap().id]
            ),
            "{kinds:?}"
        );
        assert_eq!(seen[0].run_id.as_ref(), Some(&id));
        assert!(
            kinds
                .iter()
                .any(|k| matches!(k, deployer_core::EventKind::TaskStarted { .. })),
            "{kinds:?}"
        );
    }
    // Another claim of the entry (as after a lapse): the worker's fence is stale now.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE run_entries SET fence = fence + 1, worker = 'w-other'")
        .execute(&mut conn)
        .await
        .unwrap();
    let taken = Instant::now();
    while !events.lock().unwrap().contains(&"dropped") {
        assert!(
            taken.elapsed() < Duration::from_millis(900),
            "the command still runs after its claim was lost"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*events.lock().unwrap(), ["started", "dropped"]);
    let tasks = queue.tasks(&id).await.unwrap();
    assert_eq!(
        tasks[0].state,
        TaskState::Running,
        "the lost worker recorded nothing more: {tasks:?}"
    );
    let (state, worker): (String, String) = sqlx::query_as("SELECT state, worker FROM run_entries")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (state.as_str(), worker.as_str()),
        ("CLAIMED", "w-other"),
        "not finished by the lost worker"
    );
    drain.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
