//! The scheduler against a bare tokio semaphore loop, interleaved run by run so that a busy
//! machine slows both alike: prints the median of each and their ratio.
//!
//! ```text
//! cargo run --release -p deployer-benches --bin sched_compare [TASKS] [HOSTS] [ROUNDS]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer_benches::{NullConnector, one_stage, semaphore_loop};
use deployer_core::Executor;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let tasks = args.next().flatten().unwrap_or(100_000);
    let hosts = args.next().flatten().unwrap_or(10_000);
    let rounds = args.next().flatten().unwrap_or(11);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let plan = one_stage(tasks, hosts, 1_000, 1);
    let exec = Executor::new(Arc::new(NullConnector::default()));
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let report = rt.block_on(exec.run(&plan));
        ours.push(t.elapsed());
        assert!(report.succeeded());
        let t = Instant::now();
        rt.block_on(semaphore_loop(tasks, 1_000));
        base.push(t.elapsed());
    }
    let (o, b) = (median(ours), median(base));
    println!(
        "{tasks} tasks over {hosts} hosts (concurrency 1000, 1 per host), median of {rounds}: executor {:.1} ms, semaphore loop {:.1} ms, ratio {:.2}",
        o.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        o.as_secs_f64() / b.as_secs_f64()
    );
}
