//! Workload W1 end to end over real SSH on loopback, against plain `ssh`, interleaved round by
//! round so that a busy machine slows both alike.
//!
//! ```text
//! cargo run --release -p deployer-benches --bin ssh_w1 [ROUNDS] [HOST COUNTS…]
//! ```
//!
//! (default: 7 rounds at 1, 5 and 20 hosts). Every host is its own address of a `TestFleet`
//! (127.1.0.1, 127.1.0.2, …), logged into as the ordinary user `deployer-test`, with its own target
//! directory `/tmp/deployer-bench/<address>/{deployer,ssh}`. W1, per host: create
//! `releases/<v>`, upload a 1 MiB `.tar.gz`, unpack it, switch `current`, run `true`, verify a
//! file under `current`.
//!
//! * **deployer**: six stages (concurrency 20, one task per host at a time), the standard
//!   commands, the real `Executor`, a fresh `SshConnector` per round: the time runs from
//!   building the plan to the report, connection setup included. Then, not part of the
//!   comparison, the same W1 again on the connections it left open ("warm").
//! * **lean deployer**: the same, but unpack and switch as one-line `execute_command`s, one
//!   SSH session each instead of the standard commands' two and three.
//! * **chained deployer**: the standard commands, but as one chain of the six steps per host
//!   in a single stage, so no host waits for the others between steps.
//! * **baseline**: one plain `ssh` per host running all of W1 as one shell line, the tarball
//!   on its standard input, all hosts in parallel; once with OpenSSH's default key exchange
//!   (`sntrup761x25519-sha512` first in 9.2: ~100 ms more per connection here) and once with
//!   `curve25519-sha256`, the one the deployer gets.
//!
//! `W1_DEPLOYER_ONLY=1` skips the baselines (their figures become meaningless), for profiling
//! the deployer's runs alone (`perf record -g -- …`, then `perf report --sort comm`).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer_benches::ssh::{Fleet, fresh_dir_for, load_average, median, ms, random_file};
use deployer_core::{CommandRegistry, Executor, Plan, Stage, Task, Tasklist};

const ROOT: &str = "/tmp/deployer-bench";

/// The key exchange russh (the deployer) negotiates with OpenSSH 9.2; the second baseline asks
/// for it too, so that only the architecture differs, not the key exchange's cost.
const KEX: Option<&str> = Some("curve25519-sha256");

fn base(host: &str, who: &str) -> String {
    format!("{ROOT}/{host}/{who}")
}

/// W1 for `hosts` as a tasklist of six stages. `lean`: unpack and switch as one-line
/// `execute_command`s (one SSH session each) instead of the standard `unpack` (two: a check
/// that the destination exists, then `tar`) and `symlink` (three: `readlink`, a check that the
/// target exists, `ln`+`mv`).
/// `chained`: the same six steps as one chain per host in a single stage (no barriers
/// between the steps).
fn w1(hosts: &[String], tarball: &str, version: &str, lean: bool, chained: bool) -> Tasklist {
    let mut steps: Vec<(String, Vec<Task>)> = Vec::new();
    let mut stage = |name: &str, task: &dyn Fn(&str) -> Task| {
        steps.push((
            name.to_string(),
            hosts.iter().map(|h| task(h).on(h.clone())).collect(),
        ));
    };
    let release = |h: &str| format!("{}/releases/{version}", base(h, "deployer"));
    stage("create release", &|h| {
        Task::new("createdirectory").arg("source", release(h))
    });
    stage("upload", &|h| {
        Task::new("upload")
            .arg("source", tarball)
            .arg("destination", format!("{}/", release(h)))
    });
    stage("unpack", &|h| {
        if lean {
            Task::new("execute_command").arg(
                "command_line",
                format!("tar -xzf {r}/app.tar.gz -C {r}", r = release(h)),
            )
        } else {
            Task::new("unpack")
                .arg("source", format!("{}/app.tar.gz", release(h)))
                .arg("destination", release(h))
        }
    });
    stage("switch current", &|h| {
        let link = format!("{}/current", base(h, "deployer"));
        if lean {
            Task::new("execute_command").arg(
                "command_line",
                format!(
                    "ln -sfn -- {r} {link}.tmp && mv -fT -- {link}.tmp {link}",
                    r = release(h)
                ),
            )
        } else {
            Task::new("symlink")
                .arg("source", release(h))
                .arg("destination", link)
        }
    });
    stage("restart", &|_| {
        Task::new("execute_command").arg("command_line", "true")
    });
    stage("verify", &|h| {
        Task::new("execute_command").arg(
            "command_line",
            format!("test -f {}/current/VERSION", base(h, "deployer")),
        )
    });
    if chained {
        let n = hosts.len();
        let mut chains: Vec<Vec<Task>> = vec![Vec::new(); n];
        for (_, tasks) in steps {
            for (i, t) in tasks.into_iter().enumerate() {
                chains[i].push(t);
            }
        }
        return Tasklist::new("w1").stage(Stage::new("deploy", 20).per_host(1).tasks(chains));
    }
    steps
        .into_iter()
        .fold(Tasklist::new("w1"), |l, (name, tasks)| {
            l.stage(Stage::new(name, 20).per_host(1).tasks(tasks))
        })
}

/// W1 with a fresh connector: (time from building the plan to the report, stage times, time
/// of W1 run again right after on the connections now open).
fn deployer_round(
    rt: &tokio::runtime::Runtime,
    fleet: &Fleet,
    hosts: &[String],
    tarball: &str,
    version: &str,
    registry: &CommandRegistry,
    (lean, chained): (bool, bool),
) -> (Duration, Vec<Duration>, Duration) {
    let version = format!(
        "{version}{}{}",
        if lean { "-lean" } else { "" },
        if chained { "-chain" } else { "" }
    );
    let t = Instant::now();
    let plan =
        Plan::build(&w1(hosts, tarball, &version, lean, chained), registry).expect("valid plan");
    let exec = Executor::new(Arc::new(fleet.connector()));
    let report = rt.block_on(exec.run(&plan));
    let took = t.elapsed();
    if let Err(e) = report.clone().into_result() {
        panic!("deployer W1 failed: {e}");
    }
    let t = Instant::now();
    let again = Plan::build(
        &w1(hosts, tarball, &format!("{version}-warm"), lean, chained),
        registry,
    )
    .expect("valid plan");
    if let Err(e) = rt.block_on(exec.run(&again)).into_result() {
        panic!("deployer W1 (warm) failed: {e}");
    }
    let warm = t.elapsed();
    (
        took,
        report.stages.iter().map(|s| s.duration).collect(),
        warm,
    )
}

/// The baseline; `kex`: the key exchange the plain `ssh` asks for (`None`: its default).
fn baseline_round(
    fleet: &mut Fleet,
    n: usize,
    tarball: &str,
    version: &str,
    kex: Option<&str>,
) -> Duration {
    if std::env::var_os("W1_DEPLOYER_ONLY").is_some() {
        return Duration::from_nanos(1);
    }
    fleet.set_openssh_kex(kex);
    let tag = if kex.is_some() { "-kex" } else { "" };
    let version = format!("{version}{tag}");
    let t = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            let b = base(&fleet.hosts()[i], "ssh");
            let r = format!("{b}/releases/{version}");
            let script = format!(
                "mkdir -p {r} && cat > {r}/app.tar.gz && tar -xzf {r}/app.tar.gz -C {r} && \
                 ln -sfn {r} {b}/current && true && test -f {b}/current/VERSION"
            );
            Command::new("ssh")
                .args(fleet.openssh_args(i, "-p"))
                .arg(fleet.destination(i))
                .arg(script)
                .stdin(std::fs::File::open(tarball).expect("tarball"))
                .stdout(Stdio::null())
                .spawn()
                .expect("ssh")
        })
        .collect();
    for mut c in children {
        let status = c.wait().expect("ssh");
        assert!(status.success(), "baseline ssh failed: {status}");
    }
    t.elapsed()
}

/// Per host count: deployer and baseline times, and the deployer's stage times.
#[derive(Default)]
struct Samples {
    deployer: Vec<Duration>,
    baseline: Vec<Duration>,
    baseline_kex: Vec<Duration>,
    stages: Vec<Vec<Duration>>,
    warm: Vec<Duration>,
    lean: Vec<Duration>,
    lean_warm: Vec<Duration>,
    chain: Vec<Duration>,
    chain_warm: Vec<Duration>,
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let rounds = args.next().flatten().unwrap_or(7);
    let mut counts: Vec<usize> = args.flatten().collect();
    if counts.is_empty() {
        counts = vec![1, 5, 20];
    }
    let max = *counts.iter().max().expect("counts");

    let mut fleet = Fleet::start(max).expect("start sshd fleet");
    for h in fleet.hosts() {
        for who in ["deployer", "ssh"] {
            fresh_dir_for(std::path::Path::new(&base(&h, who)), fleet.user()).expect("dir");
        }
    }
    // The artifact: 1 MiB of random data plus VERSION, as a .tar.gz (≈1 MiB: incompressible).
    let work = tempfile::tempdir().expect("tempdir");
    let content = work.path().join("content");
    std::fs::create_dir(&content).expect("mkdir");
    random_file(&content.join("blob"), 1 << 20).expect("blob");
    std::fs::write(content.join("VERSION"), "1\n").expect("VERSION");
    let tarball = work.path().join("app.tar.gz");
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&content)
        .args(["VERSION", "blob"])
        .status()
        .expect("tar");
    assert!(ok.success());
    let tarball = tarball.display().to_string();
    let mut registry = CommandRegistry::new();
    deployer_commands::register_all(&mut registry);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let all = fleet.hosts();
    let mut loads = Vec::new();
    // One warm-up round of each, not counted (page cache, sshd first fork).
    for &n in &counts {
        for (lean, chained) in [(false, false), (true, false), (false, true)] {
            deployer_round(
                &rt,
                &fleet,
                &all[..n],
                &tarball,
                "warm",
                &registry,
                (lean, chained),
            );
        }
        baseline_round(&mut fleet, n, &tarball, "warm", None);
        baseline_round(&mut fleet, n, &tarball, "warm", KEX);
    }
    let mut results: Vec<Samples> = counts.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        loads.push(load_average());
        for (k, &n) in counts.iter().enumerate() {
            let version = format!("r{round}");
            let hosts = &all[..n];
            let r = &mut results[k];
            // Alternate which goes first.
            if round % 2 == 1 {
                r.baseline_kex
                    .push(baseline_round(&mut fleet, n, &tarball, &version, KEX));
                r.baseline
                    .push(baseline_round(&mut fleet, n, &tarball, &version, None));
            }
            let (d, stages, warm) = deployer_round(
                &rt,
                &fleet,
                hosts,
                &tarball,
                &version,
                &registry,
                (false, false),
            );
            r.deployer.push(d);
            r.stages.push(stages);
            r.warm.push(warm);
            let (d, _, warm) = deployer_round(
                &rt,
                &fleet,
                hosts,
                &tarball,
                &version,
                &registry,
                (true, false),
            );
            r.lean.push(d);
            r.lean_warm.push(warm);
            let (d, _, warm) = deployer_round(
                &rt,
                &fleet,
                hosts,
                &tarball,
                &version,
                &registry,
                (false, true),
            );
            r.chain.push(d);
            r.chain_warm.push(warm);
            if round % 2 == 0 {
                r.baseline
                    .push(baseline_round(&mut fleet, n, &tarball, &version, None));
                r.baseline_kex
                    .push(baseline_round(&mut fleet, n, &tarball, &version, KEX));
            }
        }
    }
    println!(
        "W1 over SSH on loopback, median of {rounds} interleaved rounds, load average (1 min) at round starts: {}",
        loads.join(" ")
    );
    for (k, &n) in counts.iter().enumerate() {
        let r = &results[k];
        let stage_medians: Vec<String> = (0..6)
            .map(|s| format!("{:.0}", ms(median(r.stages.iter().map(|v| v[s]).collect()))))
            .collect();
        let (o, b) = (median(r.deployer.clone()), median(r.baseline.clone()));
        let bk = median(r.baseline_kex.clone());
        println!(
            "{n:>2} hosts: deployer {:.0} ms (stages {} ms); ssh baseline {:.0} ms, ratio {:.2}; \
             ssh baseline with the deployer's key exchange {:.0} ms, ratio {:.2}; \
             deployer again on open connections {:.0} ms; \
             lean deployer (unpack, switch as one session each) {:.0} ms, ratio to same-kex ssh {:.2}, \
             again on open connections {:.0} ms; \
             chained deployer (standard commands, one chain per host, no stage barriers) {:.0} ms, \
             ratio to same-kex ssh {:.2}, again on open connections {:.0} ms",
            ms(o),
            stage_medians.join("/"),
            ms(b),
            o.as_secs_f64() / b.as_secs_f64(),
            ms(bk),
            o.as_secs_f64() / bk.as_secs_f64(),
            ms(median(r.warm.clone())),
            ms(median(r.lean.clone())),
            median(r.lean.clone()).as_secs_f64() / bk.as_secs_f64(),
            ms(median(r.lean_warm.clone())),
            ms(median(r.chain.clone())),
            median(r.chain.clone()).as_secs_f64() / bk.as_secs_f64(),
            ms(median(r.chain_warm.clone()))
        );
    }
    // Releases of every round add up (2 MiB a host a round): leave nothing behind.
    let _ = std::fs::remove_dir_all(ROOT);
}
