//! `deploy runs resume` of a run submitted to workers, with real processes: a throwaway
//! PostgreSQL server, six loopback sshd hosts, `deploy worker` processes, a `deploy --submit`
//! that follows the run. A worker is SIGKILLed while it runs an entry that is not idempotent
//! (a chain whose second step is an `execute_command`): the run stops and asks; `deploy runs
//! resume ID` is refused without `--force`; with it a live worker runs the interrupted entry
//! again — not its first step, done before the kill — and the rest, and the files on the hosts
//! show every other entry ran exactly once. The world is `common/workers.rs`'s.

#[path = "common/workers.rs"]
mod workers_common;

use workers_common::*;

/// The run id a submitter's stdout names (`submitted run ID`).
fn run_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("submitted run "))
        .unwrap_or_else(|| panic!("no run id in {out}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_by_a_killed_worker_resumes_on_the_workers_only_with_force() {
    let mut w = World::start("force").await;
    let hosts = w.hosts().to_vec();
    let mut s0 = Stage::new("first", 6);
    for (k, h) in hosts.iter().enumerate() {
        s0 = s0.task(w.step(h, &format!("0:{k}"), 0.0));
    }
    // One chain on the first host: a quick idempotent step, then one that is not (it runs
    // long enough to be killed in).
    let file = w.root.join(format!("{}.log", hosts[0]));
    let once = Task::new("execute_command").on(&hosts[0]).arg(
        "command_line",
        format!(
            "s=$(date +%s.%N); sleep 4; echo \"1:0.1 $s $(date +%s.%N)\" >> {}",
            file.display()
        ),
    );
    let s1 = Stage::new("once", 1).task(vec![w.step(&hosts[0], "1:0.0", 0.0), once]);
    let mut s2 = Stage::new("after", 6);
    for (k, h) in hosts.iter().enumerate() {
        s2 = s2.task(w.step(h, &format!("2:{k}"), 0.0));
    }
    let path = w.save(
        &Tasklist::new("force").stage(s0).stage(s1).stage(s2),
        "tasklist.json",
    );
    let victim = w.worker("w-a", &[], &["--lease", "1500ms"]);
    let mut submitter = w.submit(&path, "submit");
    World::until(Duration::from_secs(20), "w-a runs the chain", || {
        runs_in(&w.worker_log("w-a"), "w-a")
            .iter()
            .any(|r| r.1 == 1 && r.2 == 0)
    });
    // In the second step (the first is instant).
    World::until(Duration::from_secs(10), "the chain's first step", || {
        w.lines().iter().any(|l| l.1 == "1:0.0")
    });
    std::thread::sleep(Duration::from_millis(700));
    w.signal(victim, libc::SIGKILL);
    let _ = w.children[victim].wait();
    // Another worker sweeps the lapsed claim: the run stops and the submitter says so.
    w.worker("w-b", &[], &["--lease", "1500ms"]);
    let code = World::wait(&mut submitter, Duration::from_secs(20), "the submitter");
    let (out, err) = w.output("submit");
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("stopped: entry stages[1].tasks[0] on ")
            && err.contains("was interrupted on worker w-a"),
        "{err}"
    );
    let id = run_id(&out);

    // Without --force: refused, naming the entry and --force; nothing runs.
    let refused = deploy()
        .args(["--store", &w.url, "runs", "resume", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(2), "{text}");
    assert!(
        text.contains("stages[1].tasks[0]")
            && text.contains(&format!("deploy runs resume {id} --force")),
        "{text}"
    );
    // --wait (a controller's lease) has no meaning for a run on workers: said, not ignored.
    let waited = deploy()
        .args([
            "--store", &w.url, "runs", "resume", &id, "--force", "--wait",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&waited.stderr).into_owned();
    assert_eq!(waited.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--wait: run") && text.contains("workers"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !w.lines().iter().any(|l| l.1.starts_with("2:")),
        "a refused resume runs nothing"
    );

    // With --force: the live worker runs the interrupted entry again and the rest; the
    // follower exits 0 with the recap.
    let resumed = deploy()
        .args(["--store", &w.url, "runs", "resume", &id, "--force"])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&resumed.stdout).into_owned(),
        String::from_utf8_lossy(&resumed.stderr).into_owned(),
    );
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        out.contains(&format!("resumed run {id} on its workers")),
        "{out}"
    );
    assert!(out.contains("state     SUCCEEDED"), "the recap: {out}");
    assert!(out.contains("done earlier"), "the recap: {out}");
    // The follower lists what the resumed run does, not what was done before it.
    assert!(
        !err.lines().any(|l| l.starts_with("stages[0]")),
        "stage 0 was done before the resume: {err}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("stages[2]")),
        "the follower lists stage 2: {err}"
    );
    let b = w.worker_log("w-b");
    assert!(
        runs_in(&b, "w-b").iter().any(|r| r.1 == 1 && r.2 == 0),
        "w-b ran the interrupted entry:\n{b}"
    );
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for l in w.lines() {
        *count.entry(l.1).or_default() += 1;
    }
    for k in 0..6 {
        assert_eq!(count.get(&format!("0:{k}")), Some(&1), "{count:?}");
        assert_eq!(count.get(&format!("2:{k}")), Some(&1), "{count:?}");
    }
    assert_eq!(
        count.get("1:0.0"),
        Some(&1),
        "the chain's done first step is not run again: {count:?}"
    );
    assert!(count.get("1:0.1").is_some_and(|n| *n >= 1), "{count:?}");
    let shown = deploy()
        .args(["--store", &w.url, "runs", "show", &id])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("state     SUCCEEDED"), "{shown}");
    assert!(shown.contains("resumed 1 time"), "{shown}");

    // A finished, succeeded run is not resumed again (exit 2).
    let again = deploy()
        .args(["--store", &w.url, "runs", "resume", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{text}");
    assert!(text.contains("already succeeded"), "{text}");
    w.stop_workers();
}
