//! What a run viewer relies on, against either backend: change feeds woken by another store on
//! the same database (as another process would have), and pages of runs that never read a
//! tasklist.

use std::future::Future;
use std::time::{Duration, Instant};

use deployer_core::fixture::store_contract::sample_run;
use deployer_core::*;

/// Waits until `feed` has been quiet for `quiet` (swallowing wake-ups), at most 5 s.
pub async fn drain(feed: &mut ChangeFeed, quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::time::timeout(quiet, feed.changed()).await.is_ok() {
        assert!(Instant::now() < deadline, "the feed never goes quiet");
    }
}

/// Asserts that `feed` wakes within 5 s (after `what`); returns how long it took.
pub async fn wakes(feed: &mut ChangeFeed, what: &str) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), feed.changed())
        .await
        .unwrap_or_else(|_| panic!("the feed did not wake within 5 s after {what}"));
    start.elapsed()
}

/// A feed of `watcher` wakes after writes made through `writer`, another store on the same
/// database (its own pool, as another process would have), and stays quiet without them; what
/// the writer stored (a cancel request, a task's output tail) reads back through the watcher.
pub async fn a_write_by_another_store_wakes_the_feed(
    watcher: &dyn RunStore,
    writer: &dyn RunStore,
) {
    let new = sample_run("watched");
    writer.create_run(new.clone()).await.unwrap();
    let mut feed = watcher.changes();
    drain(&mut feed, Duration::from_millis(500)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(1200), feed.changed())
            .await
            .is_err(),
        "without a write the feed stays quiet"
    );

    writer
        .set_host_state(&new.id, "fe001", HostState::Running)
        .await
        .unwrap();
    let took = wakes(&mut feed, "another store set a host's state").await;
    eprintln!("woken {took:?} after another store's write");
    drain(&mut feed, Duration::from_millis(300)).await;

    let mut task = TaskRecord::pending(&new.tasks[0]);
    task.state = TaskState::Succeeded;
    task.output_tail = Some("x/a.txt\n[stderr] warning: \0 odd\n".to_string());
    writer.update_task(&new.id, &task).await.unwrap();
    wakes(&mut feed, "another store recorded a task").await;
    assert_eq!(
        watcher
            .host_tasks(&new.id, &new.tasks[0].host)
            .await
            .unwrap()[0]
            .output_tail
            .as_deref(),
        Some("x/a.txt\n[stderr] warning: \u{FFFD} odd\n"),
        "NUL is stored as U+FFFD"
    );
    drain(&mut feed, Duration::from_millis(300)).await;

    writer.request_cancel(&new.id, "carol").await.unwrap();
    wakes(&mut feed, "another store asked to cancel").await;
    let asked = watcher
        .cancel_request(&new.id)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(asked.by, "carol");
    drain(&mut feed, Duration::from_millis(300)).await;

    writer
        .finish_run(&new.id, RunState::Cancelled)
        .await
        .unwrap();
    wakes(&mut feed, "another store finished the run").await;
    assert!(matches!(
        watcher.request_cancel(&new.id, "dave").await,
        Err(StoreError::RunFinished {
            state: RunState::Cancelled,
            ..
        })
    ));
}

/// Runs the viewer test below creates, oldest first: `(name, started_by)`.
fn run_names(n: usize) -> Vec<(String, &'static str)> {
    (0..n)
        .map(|i| {
            let name = match i {
                7 => "rollout 10% canary".to_string(),
                8 => "rollout 100 canary".to_string(),
                _ if i % 3 == 0 => format!("deploy web {i}"),
                _ => format!("deploy db {i}"),
            };
            (name, if i % 4 == 0 { "bob" } else { "alice" })
        })
        .collect()
}

/// A store of `n` runs: a page of `find_runs` lists a run whose stored tasklist no longer
/// parses (so it reads no tasklist), with the same host and task counts as its records give;
/// a run in a state this version does not know is listed in its place as unreadable by an
/// unfiltered page and left out by a filtered one, which stays full; the name filter is a
/// plain, case-sensitive substring (`%` and `_` are no wildcards); `host_history` skips the
/// unknown state too. `damage(sql, id)` runs an `UPDATE` with the run's id bound to `$1`.
pub async fn a_page_of_runs_reads_no_tasklist<F, Fut>(store: &dyn RunStore, n: usize, damage: F)
where
    F: Fn(&'static str, RunId) -> Fut,
    Fut: Future<Output = ()>,
{
    assert!(n >= 200);
    let start = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for (name, by) in run_names(n) {
        let mut new = sample_run(&name);
        new.started_by = by.to_string();
        store.create_run(new.clone()).await.unwrap();
        ids.push(new.id);
    }
    eprintln!("{n} runs created in {:?}", start.elapsed());
    // Newest first: page 1 of 50 is ids[n-51] down to ids[n-100].
    let at = |position: usize| ids[n - 1 - position].clone();
    // Tasks of a few runs on page 1 in every category, over two drives.
    for position in (50..100).step_by(7) {
        let id = at(position);
        store.set_run_state(&id, RunState::Running).await.unwrap();
        store.set_run_state(&id, RunState::Running).await.unwrap();
        let tasks = store.tasks(&id).await.unwrap();
        for (task, (state, drive)) in tasks.into_iter().zip([
            (TaskState::Succeeded, 1),
            (TaskState::Skipped, 2),
            (TaskState::Failed, 2),
            (TaskState::Running, 2),
        ]) {
            let mut task = task;
            task.state = state;
            task.drive = Some(drive);
            store.update_task(&id, &task).await.unwrap();
        }
        store
            .set_host_state(&id, "fe003", HostState::Added)
            .await
            .unwrap();
    }
    let broken = at(60);
    damage(
        "UPDATE runs SET tasklist = '{\"not\": a tasklist' WHERE id = $1",
        broken.clone(),
    )
    .await;
    let paused = at(70);
    damage(
        "UPDATE runs SET state = 'PAUSED' WHERE id = $1",
        paused.clone(),
    )
    .await;
    let listed = store.list_runs(100).await.unwrap();
    assert!(
        listed[60].record().is_none() && listed[60].id() == broken.as_str(),
        "the damaged tasklist makes the full record unreadable: {:?}",
        listed[60]
    );

    let started = Instant::now();
    let page = store.find_runs(&RunQuery::new(50).page(1)).await.unwrap();
    eprintln!("a page of 50 of {n} runs in {:?}", started.elapsed());
    let page_ids: Vec<String> = page
        .iter()
        .map(|r| match r {
            Ok(s) => s.id.to_string(),
            Err(u) => u.id.clone(),
        })
        .collect();
    let expected: Vec<String> = (50..100).map(|p| at(p).to_string()).collect();
    assert_eq!(page_ids, expected, "newest first, the second page of 50");
    for (position, entry) in (50..100).zip(&page) {
        let id = at(position);
        if id == paused {
            let unreadable = entry.as_ref().expect_err("an unknown state is unreadable");
            assert!(unreadable.problem.contains("PAUSED"), "{unreadable:?}");
            continue;
        }
        let summary = entry.as_ref().unwrap_or_else(|u| panic!("{u:?}"));
        let hosts = store.hosts(&id).await.unwrap().len();
        let tasks = store.tasks(&id).await.unwrap();
        if id == broken {
            assert_eq!(summary.name, run_names(n)[n - 1 - position].0);
            assert_eq!((summary.hosts, summary.counts.total()), (2, 4));
            continue;
        }
        let record = store.run(&id).await.unwrap();
        let counts = TaskCounts::of_records(&record, &tasks);
        assert_eq!(*summary, RunSummary::of(&record, hosts, counts), "{id}");
        if (position - 50) % 7 == 0 {
            assert_eq!(summary.hosts, 3);
            assert_eq!(
                summary.counts.to_string(),
                "1 done earlier, 1 failed, 1 skipped, 1 not run",
                "{id}"
            );
        }
    }

    // Filtered: the unknown state is left out and the page stays full.
    let alice = store
        .find_runs(&RunQuery::new(60).started_by("alice"))
        .await
        .unwrap();
    assert_eq!(alice.len(), 60, "a filtered page is full");
    let alice: Vec<RunSummary> = alice.into_iter().map(|r| r.unwrap()).collect();
    assert!(alice.iter().all(|s| s.started_by == "alice"));
    assert!(alice.iter().all(|s| s.id != paused));
    assert!(alice.iter().any(|s| s.id == broken));
    assert!(alice.windows(2).all(|w| w[0].created_ts >= w[1].created_ts));

    let names = |q: RunQuery| async move {
        store
            .find_runs(&q)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(RunQuery::new(10).name("10%")).await,
        ["rollout 10% canary"]
    );
    assert_eq!(
        names(RunQuery::new(10).name("rollout 1_0")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        names(RunQuery::new(10).name("Rollout")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        names(RunQuery::new(10).name("rollout")).await,
        ["rollout 100 canary", "rollout 10% canary"]
    );
    assert_eq!(
        names(RunQuery::new(10).name("rollout").started_by("alice")).await,
        ["rollout 10% canary"]
    );

    // Created at or after the 11th newest run: the 10 newest and it.
    let since = store.run(&at(10)).await.unwrap().created_ts;
    let mut q = RunQuery::new(100);
    q.since = Some(since);
    assert_eq!(store.find_runs(&q).await.unwrap().len(), 11);
    q.since = None;
    q.until = Some(since);
    q.limit = 5;
    let before: Vec<RunId> = store
        .find_runs(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    assert_eq!(before, [at(11), at(12), at(13), at(14), at(15)]);

    // A host across runs: newest first, the damaged tasklist does not matter, the unknown
    // state is left out.
    let history = store.host_history("fe003", 100).await.unwrap();
    let expected: Vec<RunId> = (50..100).step_by(7).map(at).collect();
    assert_eq!(
        history.iter().map(|h| h.run.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(history.iter().all(|h| h.host_state == HostState::Added));
    let fe001 = store.host_history("fe001", 80).await.unwrap();
    assert_eq!(fe001.len(), 80);
    assert!(fe001.iter().all(|h| h.run != paused));
    assert!(fe001.iter().any(|h| h.run == broken));
    assert!(fe001.windows(2).all(|w| w[0].created_ts >= w[1].created_ts));
}
