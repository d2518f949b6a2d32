//! Scheduler overhead: the real Executor and JobQueue running no-op tasks, next to a bare tokio
//! semaphore loop spawning as many no-op futures. Run with:
//!
//! ```text
//! cargo bench -p deployer-benches --bench scheduler
//! ```

use std::sync::Arc;

use deployer_benches::{NullConnector, many_stages, one_stage, semaphore_loop};
use deployer_core::Executor;
use divan::Bencher;

fn main() {
    divan::main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// 100,000 tasks over 10,000 hosts, concurrency 1,000, one per host.
#[divan::bench(sample_count = 10)]
fn executor_100k_tasks_10k_hosts(b: Bencher) {
    let rt = runtime();
    let plan = one_stage(100_000, 10_000, 1_000, 1);
    let exec = Executor::new(Arc::new(NullConnector::default()));
    b.bench_local(|| {
        let report = rt.block_on(exec.run(&plan));
        assert!(report.succeeded());
    });
}

/// The same number of no-op futures through a bare semaphore of 1,000 permits.
#[divan::bench(sample_count = 10)]
fn semaphore_baseline_100k(b: Bencher) {
    let rt = runtime();
    b.bench_local(|| rt.block_on(semaphore_loop(100_000, 1_000)));
}

/// The per-host path: 10,000 tasks on one host, 10 at a time.
#[divan::bench(sample_count = 10)]
fn executor_10k_tasks_1_host_per_host_10(b: Bencher) {
    let rt = runtime();
    let plan = one_stage(10_000, 1, 1_000, 10);
    let exec = Executor::new(Arc::new(NullConnector::default()));
    b.bench_local(|| assert!(rt.block_on(exec.run(&plan)).succeeded()));
}

/// Stage start/stop cost: 100 stages of 10 tasks.
#[divan::bench(sample_count = 10)]
fn executor_100_stages_of_10(b: Bencher) {
    let rt = runtime();
    let plan = many_stages(100, 10);
    let exec = Executor::new(Arc::new(NullConnector::default()));
    b.bench_local(|| assert!(rt.block_on(exec.run(&plan)).succeeded()));
}

/// Linearity: 10k, 100k and 1M tasks over 10,000 hosts (concurrency 1,000, one per host).
#[divan::bench(args = [10_000, 100_000, 1_000_000], sample_count = 3)]
fn executor_scaling(b: Bencher, tasks: usize) {
    let rt = runtime();
    let plan = one_stage(tasks, 10_000, 1_000, 1);
    let exec = Executor::new(Arc::new(NullConnector::default()));
    b.bench_local(|| assert!(rt.block_on(exec.run(&plan)).succeeded()));
}
