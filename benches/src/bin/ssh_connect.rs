//! Opening a connection to every host of a loopback fleet at once, through one `SshConnector`
//! with a given budget of handshakes in flight (`SshOptions::max_handshakes`): wall time, the
//! controller's CPU time and the growth of its peak RSS (`getrusage(RUSAGE_SELF)`: this
//! process only, not the sshds).
//!
//! ```text
//! cargo run --release -p deployer-benches --bin ssh_connect HOSTS BUDGET[,BUDGET…] [ROUNDS]
//! ```
//!
//! `BUDGET` 0 means no limit. Each round uses a fresh connector (nothing open), budgets
//! interleaved round by round; one line per round, then the median per budget. The peak RSS
//! is the process's high-water mark, so its growth is only meaningful for the first round
//! (run one budget per process to compare memory).

use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer_benches::ssh::{Fleet, load_average, median, ms};
use deployer_core::HostSpec;
use deployer_remote::SshConnector;

/// CPU time (user + system) and peak RSS (KiB) of this process so far.
fn usage() -> (Duration, u64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(u.ru_utime) + tv(u.ru_stime), u.ru_maxrss as u64)
}

fn connector(fleet: &Fleet, budget: usize) -> SshConnector {
    let options = fleet
        .test_fleet()
        .options()
        .max_handshakes(if budget == 0 { usize::MAX } else { budget })
        .connect_attempts(1)
        .connect_timeout(Duration::from_secs(60));
    SshConnector::new(options).expect("connector")
}

/// Connects every host at once; returns wall time, CPU time, peak RSS growth (KiB), failures.
fn round(
    rt: &tokio::runtime::Runtime,
    fleet: &Fleet,
    budget: usize,
) -> (Duration, Duration, u64, usize) {
    let connector = Arc::new(connector(fleet, budget));
    let hosts: Vec<_> = fleet
        .hosts()
        .iter()
        .map(|h| {
            connector
                .ssh_host(&HostSpec::remote(h.clone(), None))
                .expect("host")
                .expect("remote")
        })
        .collect();
    let (cpu0, rss0) = usage();
    let t = Instant::now();
    let failed = rt.block_on(async {
        let tasks: Vec<_> = hosts
            .iter()
            .map(|h| {
                let h = h.clone();
                tokio::spawn(async move { h.connect().await })
            })
            .collect();
        let mut failed = 0;
        for t in tasks {
            if let Err(e) = t.await.expect("task") {
                if failed == 0 {
                    eprintln!("  first failure: {}", deployer_core::error_chain(&e));
                }
                failed += 1;
            }
        }
        failed
    });
    let wall = t.elapsed();
    let (cpu1, rss1) = usage();
    drop(hosts);
    (wall, cpu1 - cpu0, rss1.saturating_sub(rss0), failed)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let budgets: Vec<usize> = args
        .get(2)
        .map(|a| a.split(',').map(|b| b.parse().expect("budget")).collect())
        .unwrap_or_else(|| vec![8, 16, 32, 64, 0]);
    let rounds: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(3);
    let fleet = Fleet::start(n).expect("fleet");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("{n} hosts, load {}", load_average());
    let mut walls: Vec<Vec<Duration>> = vec![Vec::new(); budgets.len()];
    let mut cpus: Vec<Vec<Duration>> = vec![Vec::new(); budgets.len()];
    for r in 0..rounds {
        for (i, &b) in budgets.iter().enumerate() {
            let (wall, cpu, rss, failed) = round(&rt, &fleet, b);
            println!(
                "round {r} budget {:>9}: {:>6.0} ms wall, {:>6.0} ms CPU ({:.2} ms/host), peak RSS +{} KiB ({:.1} KiB/host), {failed} failed",
                if b == 0 {
                    "unbounded".to_string()
                } else {
                    b.to_string()
                },
                ms(wall),
                ms(cpu),
                cpu.as_secs_f64() * 1000.0 / n as f64,
                rss,
                rss as f64 / n as f64
            );
            walls[i].push(wall);
            cpus[i].push(cpu);
        }
    }
    for (i, &b) in budgets.iter().enumerate() {
        println!(
            "median budget {:>9}: {:.0} ms wall ({:.0}–{:.0}), {:.0} ms CPU",
            if b == 0 {
                "unbounded".to_string()
            } else {
                b.to_string()
            },
            ms(median(walls[i].clone())),
            ms(*walls[i].iter().min().unwrap()),
            ms(*walls[i].iter().max().unwrap()),
            ms(median(cpus[i].clone()))
        );
    }
    println!("load {}", load_average());
}
