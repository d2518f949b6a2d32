//! Peak memory of one scheduler run: 100,000 no-op tasks over 10,000 hosts (concurrency 1,000,
//! one per host), plan building included. Prints the wall time and the peak RSS.
//!
//! ```text
//! cargo run --release -p deployer-benches --bin sched_peak_mem [TASKS]
//! ```

use std::sync::Arc;
use std::time::Instant;

use deployer_benches::{NullConnector, one_stage, peak_rss};
use deployer_core::Executor;

fn main() {
    let tasks: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start = Instant::now();
    let plan = one_stage(tasks, 10_000, 1_000, 1);
    let built = start.elapsed();
    let run_start = Instant::now();
    let report = rt.block_on(Executor::new(Arc::new(NullConnector::default())).run(&plan));
    let ran = run_start.elapsed();
    assert!(report.succeeded());
    println!(
        "{tasks} tasks: plan built in {:.0} ms, run in {:.0} ms, peak RSS {:.1} MiB",
        built.as_secs_f64() * 1e3,
        ran.as_secs_f64() * 1e3,
        peak_rss() as f64 / (1024.0 * 1024.0)
    );
}
