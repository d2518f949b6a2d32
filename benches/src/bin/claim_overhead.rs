//! What the store's claim protocol costs per entry: a run of no-op entries submitted to a
//! throwaway PostgreSQL server and worked through `WorkQueue` directly (no SSH, no commands
//! run), so what is measured is the store protocol a `deploy worker` follows for each entry.
//!
//! ```text
//! cargo run --release -p deployer-benches --bin claim_overhead [ENTRIES] [HOSTS] [ROUNDS]
//! ```
//!
//! (default 1000 entries over 100 hosts, 3 rounds). Cases, each on a fresh database, each run
//! `ROUNDS` times (interleaved):
//!
//! * **1 stage**: the entries in one stage, `concurrency` 64, `concurrency_per_host` 1;
//! * **3 stages**: the same entries split over three such stages (barriers between them).
//!
//! and for each, two ways of working it:
//!
//! * **sequential**: one worker; per entry `claim` → `record_task` (running) → `record_task`
//!   (succeeded) → `finish_entry`, as `deploy worker` does for a one-task entry. Each step is
//!   timed; "per entry" is the four together.
//! * **4 claimers**: four workers (tokio tasks, each its own name and connection pool share)
//!   doing the same at once, on the same run: they contend on the run's row lock, which each
//!   claim and each end takes. "per entry" is the latency of one entry's four steps as one
//!   claimer sees it; throughput is entries / wall.
//!
//! Output: one line per round, then a table of medians over rounds of each figure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use deployer_benches::pg::PgServer;
use deployer_benches::registry;
use deployer_benches::ssh::load_average;
use deployer_core::{
    EntryOutcome, Plan, RunState, RunStore, Stage, Task, TaskId, TaskRecord, TaskState, Tasklist,
    WorkQueue, WorkerInfo,
};
use deployer_store::PostgresStore;

const LEASE: Duration = Duration::from_secs(60);

/// `stages` stages over `entries` no-op tasks (split evenly) on `hosts` hosts round robin.
fn plan(entries: usize, hosts: usize, stages: usize) -> Plan {
    let mut t = Tasklist::new("claim-bench");
    let per = entries.div_ceil(stages);
    for s in 0..stages {
        let n = per.min(entries - s * per);
        t = t.stage(
            Stage::new(format!("s{s}"), 64)
                .per_host(1)
                .tasks((0..n).map(|i| Task::new("noop").on(format!("h{:03}", i % hosts)))),
        );
    }
    Plan::build(&t, &registry()).expect("valid plan")
}

fn worker(name: &str) -> WorkerInfo {
    WorkerInfo {
        id: name.to_string(),
        zones: Vec::new(),
        commands: vec!["noop".to_string()],
    }
}

/// What one claimer measured: per entry, the four steps' durations.
#[derive(Default)]
struct Steps {
    claim: Vec<Duration>,
    start: Vec<Duration>,
    end: Vec<Duration>,
    finish: Vec<Duration>,
    entry: Vec<Duration>,
    /// Claims that found nothing (a stage barrier or the limits) while the run went on.
    empty: usize,
}

impl Steps {
    fn merge(&mut self, other: Steps) {
        self.claim.extend(other.claim);
        self.start.extend(other.start);
        self.end.extend(other.end);
        self.finish.extend(other.finish);
        self.entry.extend(other.entry);
        self.empty += other.empty;
    }
}

/// Claims and runs entries of `run` until it has finished.
async fn claimer(
    store: Arc<PostgresStore>,
    me: WorkerInfo,
    tasks: Arc<HashMap<TaskId, TaskRecord>>,
    run: deployer_core::RunId,
) -> Steps {
    let mut s = Steps::default();
    store.heartbeat(&me, LEASE).await.expect("heartbeat");
    loop {
        let t0 = Instant::now();
        let Some(claim) = WorkQueue::claim(&*store, &me, LEASE).await.expect("claim") else {
            if store.run(&run).await.expect("run").state.is_finished() {
                break;
            }
            // Others hold the last entries of a stage: wait for them (a worker would wait for
            // the change feed).
            s.empty += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let t1 = Instant::now();
        let mut rec = tasks[&claim.tasks[0]].clone();
        rec.state = TaskState::Running;
        rec.attempts = 1;
        rec.started_ts = Some(SystemTime::now());
        store.record_task(&claim, &rec).await.expect("record start");
        let t2 = Instant::now();
        rec.state = TaskState::Succeeded;
        rec.finished_ts = Some(SystemTime::now());
        rec.duration = Some(t2 - t1);
        store.record_task(&claim, &rec).await.expect("record end");
        let t3 = Instant::now();
        store
            .finish_entry(&claim, EntryOutcome::Done)
            .await
            .expect("finish_entry");
        let t4 = Instant::now();
        s.claim.push(t1 - t0);
        s.start.push(t2 - t1);
        s.end.push(t3 - t2);
        s.finish.push(t4 - t3);
        s.entry.push(t4 - t0);
    }
    s
}

struct Round {
    wall: Duration,
    steps: Steps,
}

async fn round(
    server: &PgServer,
    entries: usize,
    hosts: usize,
    stages: usize,
    claimers: usize,
) -> Round {
    let url = server.database().await;
    let store = Arc::new(
        PostgresStore::connect_with_pool_size(&url, (claimers as u32 + 2).max(4))
            .await
            .expect("connect"),
    );
    let plan = plan(entries, hosts, stages);
    let run = deployer_core::submit(&*store, &plan, "claim_overhead", "bench", |_| None)
        .await
        .expect("submit");
    let tasks: Arc<HashMap<TaskId, TaskRecord>> = Arc::new(
        store
            .tasks(&run)
            .await
            .expect("tasks")
            .into_iter()
            .map(|t| (t.id, t))
            .collect(),
    );
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..claimers {
        set.spawn(claimer(
            store.clone(),
            worker(&format!("bench-{i}")),
            tasks.clone(),
            run.clone(),
        ));
    }
    let mut steps = Steps::default();
    while let Some(s) = set.join_next().await {
        steps.merge(s.expect("claimer"));
    }
    let wall = t.elapsed();
    assert_eq!(steps.entry.len(), entries, "every entry worked once");
    let state = store.run(&run).await.expect("run").state;
    assert_eq!(state, RunState::Succeeded, "the run finished");
    store.close().await;
    Round { wall, steps }
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("ENTRIES HOSTS ROUNDS: numbers"))
        .collect();
    let entries = args.first().copied().unwrap_or(1000);
    let hosts = args.get(1).copied().unwrap_or(100);
    let rounds = args.get(2).copied().unwrap_or(3);
    println!(
        "load average {}, {} cores; {entries} entries over {hosts} hosts, {rounds} rounds",
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let server = PgServer::start().await;
    println!("throwaway PostgreSQL on 127.0.0.1:{}", server.port());
    let cases: [(usize, usize); 4] = [(1, 1), (1, 4), (3, 1), (3, 4)];
    // Per case: per round (wall, entry p50, entry p95, claim p50, start p50, end p50, finish p50, empty).
    let mut results: Vec<Vec<[f64; 8]>> = vec![Vec::new(); cases.len()];
    for r in 0..rounds {
        for (c, &(stages, claimers)) in cases.iter().enumerate() {
            let mut x = round(&server, entries, hosts, stages, claimers).await;
            let s = &mut x.steps;
            let row = [
                ms(x.wall),
                ms(quantile(&mut s.entry, 0.5)),
                ms(quantile(&mut s.entry, 0.95)),
                ms(quantile(&mut s.claim, 0.5)),
                ms(quantile(&mut s.start, 0.5)),
                ms(quantile(&mut s.end, 0.5)),
                ms(quantile(&mut s.finish, 0.5)),
                s.empty as f64,
            ];
            println!(
                "round {r}: {stages} stage(s), {claimers} claimer(s): wall {:.0} ms = {:.2} ms/entry; \
                 entry p50 {:.2} ms p95 {:.2} ms (claim {:.2}, record start {:.2}, record end {:.2}, \
                 finish_entry {:.2}); {} empty claims (load {})",
                row[0],
                row[0] / entries as f64,
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                s.empty,
                load_average()
            );
            results[c].push(row);
        }
    }
    println!();
    println!(
        "| stages | claimers | wall (total) | wall / entry | entry p50 | entry p95 | claim p50 | record start p50 | record end p50 | finish_entry p50 | entries / s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (c, &(stages, claimers)) in cases.iter().enumerate() {
        let col = |i: usize| median(results[c].iter().map(|r| r[i]).collect());
        println!(
            "| {stages} | {claimers} | {:.0} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} |",
            col(0),
            col(0) / entries as f64,
            col(1),
            col(2),
            col(3),
            col(4),
            col(5),
            col(6),
            entries as f64 / (col(0) / 1e3),
        );
    }
    println!(
        "(medians over {rounds} rounds; load average now {})",
        load_average()
    );
}
