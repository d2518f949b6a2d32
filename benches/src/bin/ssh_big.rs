//! One big artifact (200 MiB of random data) uploaded to 5 hosts at once: the deployer's
//! `upload` command through the `Executor` against `scp` to the same hosts in parallel,
//! interleaved round by round.
//!
//! ```text
//! cargo run --release -p deployer-benches --bin ssh_big [ROUNDS] [HOSTS] [MIB]
//! ```
//!
//! (default: 5 rounds, 5 hosts, 200 MiB). The deployer's time includes opening the
//! connections (a fresh `SshConnector` per round), as `scp`'s does.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer_benches::ssh::{Fleet, fresh_dir_for, load_average, median, ms, random_file};
use deployer_core::{CommandRegistry, Executor, Plan, Stage, Task, Tasklist};

const ROOT: &str = "/tmp/deployer-bench-big";

/// The key exchange the deployer (russh) gets from OpenSSH 9.2; `scp` is measured with its
/// default (`sntrup761x25519-sha512` first) and with this one.
const KEX: Option<&str> = Some("curve25519-sha256");

fn dir(host: &str) -> String {
    format!("{ROOT}/{host}")
}

fn deployer_round(
    rt: &tokio::runtime::Runtime,
    fleet: &Fleet,
    hosts: &[String],
    artifact: &str,
    registry: &CommandRegistry,
) -> Duration {
    let t = Instant::now();
    let tasklist = Tasklist::new("big").stage(Stage::new("upload", 20).per_host(1).tasks(
        hosts.iter().map(|h| {
            Task::new("upload")
                .on(h.clone())
                .arg("source", artifact)
                .arg("destination", format!("{}/deployer.bin", dir(h)))
        }),
    ));
    let plan = Plan::build(&tasklist, registry).expect("valid plan");
    let report = rt.block_on(Executor::new(Arc::new(fleet.connector())).run(&plan));
    let took = t.elapsed();
    if let Err(e) = report.into_result() {
        panic!("deployer upload failed: {e}");
    }
    took
}

/// `kex`: the key exchange `scp` asks for (`None`: its default).
fn scp_round(fleet: &mut Fleet, n: usize, artifact: &str, kex: Option<&str>) -> Duration {
    fleet.set_openssh_kex(kex);
    let t = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new("scp")
                .arg("-q")
                .args(fleet.openssh_args(i, "-P"))
                .arg(artifact)
                .arg(format!(
                    "{}:{}/scp.bin",
                    fleet.destination(i),
                    dir(&fleet.hosts()[i])
                ))
                .stdin(Stdio::null())
                .spawn()
                .expect("scp")
        })
        .collect();
    for mut c in children {
        let status = c.wait().expect("scp");
        assert!(status.success(), "scp failed: {status}");
    }
    t.elapsed()
}

/// Removes what a round wrote (as root), so the next round writes new files too.
fn clean(hosts: &[String]) {
    for h in hosts {
        for f in ["deployer.bin", "scp.bin"] {
            let _ = std::fs::remove_file(format!("{}/{f}", dir(h)));
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().ok());
    let rounds = args.next().flatten().unwrap_or(5) as usize;
    let n = args.next().flatten().unwrap_or(5) as usize;
    let mib = args.next().flatten().unwrap_or(200);

    let mut fleet = Fleet::start(n).expect("start sshd fleet");
    let hosts = fleet.hosts();
    for h in &hosts {
        fresh_dir_for(std::path::Path::new(&dir(h)), fleet.user()).expect("dir");
    }
    let work = tempfile::tempdir().expect("tempdir");
    let artifact = work.path().join("artifact.bin");
    random_file(&artifact, mib << 20).expect("artifact");
    let artifact = artifact.display().to_string();
    let mut registry = CommandRegistry::new();
    deployer_commands::register_all(&mut registry);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // One warm-up of each, not counted.
    deployer_round(&rt, &fleet, &hosts, &artifact, &registry);
    scp_round(&mut fleet, n, &artifact, None);
    clean(&hosts);
    let (mut ours, mut theirs, mut theirs_kex, mut loads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        loads.push(load_average());
        if round % 2 == 1 {
            theirs_kex.push(scp_round(&mut fleet, n, &artifact, KEX));
            theirs.push(scp_round(&mut fleet, n, &artifact, None));
        }
        ours.push(deployer_round(&rt, &fleet, &hosts, &artifact, &registry));
        if round % 2 == 0 {
            theirs.push(scp_round(&mut fleet, n, &artifact, None));
            theirs_kex.push(scp_round(&mut fleet, n, &artifact, KEX));
        }
        clean(&hosts);
    }
    let (o, s) = (median(ours.clone()), median(theirs.clone()));
    let sk = median(theirs_kex.clone());
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{mib} MiB to {n} hosts in parallel, median of {rounds} interleaved rounds, load average (1 min) at round starts: {}",
        loads.join(" ")
    );
    println!("  deployer upload: {:.0} ms  [{}]", ms(o), list(&ours));
    println!("  scp:             {:.0} ms  [{}]", ms(s), list(&theirs));
    println!(
        "  scp, same kex:   {:.0} ms  [{}]",
        ms(sk),
        list(&theirs_kex)
    );
    println!(
        "  ratio {:.2} (to scp with the deployer's key exchange: {:.2})",
        o.as_secs_f64() / s.as_secs_f64(),
        o.as_secs_f64() / sk.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(ROOT);
}
