//! The single controller's rules held across workers, with real processes: a throwaway
//! PostgreSQL server, six loopback sshd hosts in two zones, three `deploy worker` processes and
//! a following `deploy --submit` (the setup of `common/workers.rs`).
//!
//! Every task appends `STAGE:HOST-INDEX START END` to a file of its host, so what ran, when and
//! where is read from the hosts: the failure budget (a dropped host does no more ordinary
//! work), `min_hosts_up` (never more hosts busy at once than it allows, across workers) and
//! `finally` stages (a lock release on every host that reached "locked").

#[path = "common/workers.rs"]
mod workers_common;

use deployer_core::{FailureBudget, Finally};
use workers_common::*;

/// A task on `host` that appends `key T T` to its file and fails (exit 3); not idempotent.
fn failing(w: &World, host: &str, key: &str) -> Task {
    let file = w.root.join(format!("{host}.log"));
    Task::new("execute_command").on(host).arg(
        "command_line",
        format!(
            "t=$(date +%s.%N); echo \"{key} $t $t\" >> {}; exit 3",
            file.display()
        ),
    )
}

/// Starts three workers (zone eu, zone us, every zone) and submits `tasklist`: the submitter.
fn submit_to_three_workers(w: &mut World, tasklist: &Tasklist) -> Child {
    let path = w.save(tasklist, "tasklist.json");
    w.worker("w-eu", &["eu"], &[]);
    w.worker("w-us", &["us"], &[]);
    w.worker("w-all", &[], &[]);
    w.submit(&path, "submit")
}

/// The spans of the lines whose key starts with `prefix`.
fn spans(lines: &[(String, String, f64, f64)], prefix: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l.1.starts_with(prefix))
        .map(|l| (l.2, l.3))
        .collect()
}

fn keys(lines: &[(String, String, f64, f64)], prefix: &str) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for l in lines.iter().filter(|l| l.1.starts_with(prefix)) {
        *count.entry(l.1.clone()).or_insert(0) += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_within_the_budget_drops_its_host_the_run_ends_degraded_and_exits_4() {
    let mut w = World::start("budget").await;
    let hosts = w.hosts().to_vec();
    // Stage 0 takes a lock on every host. Stage 1 works on every host, at most two at once
    // (min_hosts_up 4 of 6), and fails on hosts[1] (zone eu) — within the run's budget of one
    // host. Stage 2 runs on every host but the dropped one. Stage 3 releases the lock where it
    // was taken; stage 4 (on failure) pages for the dropped host only.
    let mut lock = Stage::new("lock", 6);
    let mut work = Stage::new("work", 6).min_hosts_up(4);
    let mut after = Stage::new("after", 6);
    let mut unlock = Stage::new("unlock", 6).finally(Finally::if_reached("locked"));
    let mut page = Stage::new("page", 6).finally(Finally::on_failure());
    for (k, h) in hosts.iter().enumerate() {
        lock = lock.task(w.step(h, &format!("0:{k}"), 0.0).reaches("locked"));
        work = work.task(if k == 1 {
            failing(&w, h, "1:1")
        } else {
            w.step(h, &format!("1:{k}"), 0.4)
        });
        after = after.task(w.step(h, &format!("2:{k}"), 0.0));
        unlock = unlock.task(w.step(h, &format!("3:{k}"), 0.0));
        page = page.task(w.step(h, &format!("4:{k}"), 0.0));
    }
    let tasklist = Tasklist::new("budget")
        .budget(FailureBudget::max_failures(1))
        .stage(lock)
        .stage(work)
        .stage(after)
        .stage(unlock)
        .stage(page);
    let mut submitter = submit_to_three_workers(&mut w, &tasklist);
    let code = World::wait(&mut submitter, Duration::from_secs(40), "the submitter");
    let (out, err) = w.output("submit");
    assert_eq!(code, 4, "degraded: stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("state     DEGRADED"), "{out}");
    let lines = w.lines();
    // min_hosts_up 4 of 6: never more than two hosts at work at once, over three workers.
    let work_spans = spans(&lines, "1:");
    assert_eq!(work_spans.len(), 6, "{lines:?}");
    assert!(
        max_overlap(&work_spans) <= 2,
        "min_hosts_up exceeded: {work_spans:?}"
    );
    // The dropped host does no more ordinary work; the others do, after the stage barrier.
    let after_keys = keys(&lines, "2:");
    let expected: BTreeMap<String, usize> = (0..6)
        .filter(|&k| k != 1)
        .map(|k| (format!("2:{k}"), 1))
        .collect();
    assert_eq!(after_keys, expected, "{lines:?}");
    let work_end = work_spans.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    assert!(spans(&lines, "2:").iter().all(|s| s.0 >= work_end));
    // Every host that took the lock releases it (the dropped one too); the page is for the
    // dropped host only.
    let unlocked = keys(&lines, "3:");
    assert_eq!(unlocked.len(), 6, "{lines:?}");
    assert!(unlocked.values().all(|&n| n == 1), "{unlocked:?}");
    assert_eq!(keys(&lines, "4:"), BTreeMap::from([("4:1".to_string(), 1)]));
    let shown = w.runs_show("submit");
    let dropped_line = shown
        .lines()
        .find(|l| l.contains(&hosts[1]) && l.contains("DROPPED"))
        .unwrap_or_else(|| panic!("{} dropped in runs show:\n{shown}", hosts[1]));
    assert!(!dropped_line.is_empty());
    w.stop_workers();
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failure_past_the_budget_the_finally_stage_releases_every_lock_taken() {
    let mut w = World::start("finally").await;
    let hosts = w.hosts().to_vec();
    // The first four hosts take the lock; stage 1 fails on hosts[3] (zone us) with no budget:
    // nothing new of an ordinary stage starts on any worker, stage 2 never runs, and the
    // finally stage releases the lock on exactly the four hosts that took it.
    let mut lock = Stage::new("lock", 6);
    let mut work = Stage::new("work", 6);
    let mut later = Stage::new("later", 6);
    let mut unlock = Stage::new("unlock", 2).finally(Finally::if_reached("locked"));
    for (k, h) in hosts.iter().enumerate() {
        let step = w.step(h, &format!("0:{k}"), 0.0);
        lock = lock.task(if k < 4 { step.reaches("locked") } else { step });
        work = work.task(if k == 3 {
            failing(&w, h, "1:3")
        } else {
            w.step(h, &format!("1:{k}"), 0.5)
        });
        later = later.task(w.step(h, &format!("2:{k}"), 0.0));
        unlock = unlock.task(w.step(h, &format!("3:{k}"), 0.3));
    }
    let tasklist = Tasklist::new("finally")
        .stage(lock)
        .stage(work)
        .stage(later)
        .stage(unlock);
    let mut submitter = submit_to_three_workers(&mut w, &tasklist);
    let code = World::wait(&mut submitter, Duration::from_secs(40), "the submitter");
    let (out, err) = w.output("submit");
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("state     FAILED"), "{out}");
    let lines = w.lines();
    assert!(keys(&lines, "2:").is_empty(), "stage 2 ran: {lines:?}");
    let expected: BTreeMap<String, usize> = (0..4).map(|k| (format!("3:{k}"), 1)).collect();
    assert_eq!(keys(&lines, "3:"), expected, "{lines:?}");
    // The finally stage's own limit (2 at once) holds across workers, after the barrier.
    let unlock_spans = spans(&lines, "3:");
    assert!(max_overlap(&unlock_spans) <= 2, "{unlock_spans:?}");
    let work_end = spans(&lines, "1:")
        .iter()
        .map(|s| s.1)
        .fold(f64::MIN, f64::max);
    assert!(unlock_spans.iter().all(|s| s.0 >= work_end), "{lines:?}");
    let shown = w.runs_show("submit");
    assert!(
        shown.contains("NOT_RUN"),
        "stage 2's tasks did not run:\n{shown}"
    );
    w.stop_workers();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_stops_ordinary_work_on_every_worker_and_the_finally_stage_still_runs() {
    let mut w = World::start("cancel").await;
    let hosts = w.hosts().to_vec();
    // Two slow entries at once; a SIGINT to the submitter once two ended asks every worker to
    // cancel: nothing new of stage 0 or 1 starts, the finally stage runs on every host.
    let mut slow = Stage::new("slow", 2);
    let mut next = Stage::new("next", 6);
    let mut cleanup = Stage::new("cleanup", 6).finally(Finally::always());
    for (k, h) in hosts.iter().enumerate() {
        slow = slow.task(w.step(h, &format!("0:{k}"), 1.0));
        next = next.task(w.step(h, &format!("1:{k}"), 0.0));
        cleanup = cleanup.task(w.step(h, &format!("2:{k}"), 0.0));
    }
    let tasklist = Tasklist::new("cancel")
        .stage(slow)
        .stage(next)
        .stage(cleanup);
    let mut submitter = submit_to_three_workers(&mut w, &tasklist);
    World::until(Duration::from_secs(15), "two slow entries", || {
        w.lines().len() >= 2
    });
    unsafe {
        libc::kill(submitter.id() as libc::pid_t, libc::SIGINT);
    }
    let code = World::wait(&mut submitter, Duration::from_secs(30), "the submitter");
    let (out, err) = w.output("submit");
    assert_eq!(code, 130, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("state     CANCELLED"), "{out}");
    let lines = w.lines();
    assert!(keys(&lines, "1:").is_empty(), "stage 1 ran: {lines:?}");
    assert!(
        keys(&lines, "0:").len() < 6,
        "stage 0 was cut short: {lines:?}"
    );
    let expected: BTreeMap<String, usize> = (0..6).map(|k| (format!("2:{k}"), 1)).collect();
    assert_eq!(keys(&lines, "2:"), expected, "{lines:?}");
    w.stop_workers();
}
