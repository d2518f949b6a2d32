//! `deploy` checks at plan time that it may open a file descriptor for every host's
//! connections (`ulimit -n`), raising its own soft limit when the hard limit allows, and
//! otherwise refuses (exit 2) before any host is contacted.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A release config for `hosts` hosts (`h1`…), every one sent by its ssh config to
/// 127.0.0.1:`port`.
fn config(dir: &std::path::Path, hosts: usize, port: u16) -> String {
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("a/web-2.0.tgz"), b"x").unwrap();
    std::fs::write(
        dir.join("ssh_config"),
        format!("Host *\n  HostName 127.0.0.1\n  Port {port}\n"),
    )
    .unwrap();
    let names: Vec<String> = (1..=hosts).map(|i| format!("h{i}")).collect();
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "platform: release\ndirectory: a\ndeploy_to: /srv\nuser: deploy\n\
             ssh:\n  config: {}\n  connect_attempts: 1\n\
             hostgroup:\n  web: [{}]\nservice:\n  web:\n    hosts: [web]\n",
            dir.join("ssh_config").display(),
            names.join(", ")
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `deploy args…` under `prlimit --nofile=soft:hard`.
fn deploy_limited(soft: u64, hard: u64, args: &[&str]) -> Output {
    Command::new("prlimit")
        .arg(format!("--nofile={soft}:{hard}"))
        .arg(env!("CARGO_BIN_EXE_deploy"))
        .args(args)
        .env("DEPLOYER_STORE", "sqlite::memory:")
        .output()
        .expect("prlimit runs (util-linux)")
}

/// A listener counting the connections it gets.
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            c.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, count)
}

#[test]
fn too_few_open_files_is_refused_before_any_host_is_contacted() {
    let dir = tempfile::tempdir().unwrap();
    let (port, contacted) = counting_listener();
    let config = config(dir.path(), 100, port);
    // The plan, saved (no host contacted), then run with --tasklist as a fleet deploy is.
    let dump = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(["--config", &config, "--redeploy", "--dump"])
        .env("DEPLOYER_STORE", "sqlite::memory:")
        .output()
        .unwrap();
    assert_eq!(dump.status.code(), Some(0));
    let tasklist = dir.path().join("t.json");
    std::fs::write(&tasklist, &dump.stdout).unwrap();
    let tasklist = tasklist.to_str().unwrap();
    // 100 hosts × 4 connections each at most + 64 = 464 files.
    let expected = "100 hosts need about 464 open files, but ulimit -n is 64 (hard limit 64): \
                    raise it (ulimit -n 1024) or deploy to fewer hosts per run";
    for args in [
        &["--config", config.as_str(), "--dry-run"][..],
        &["--config", config.as_str(), "--tasklist", tasklist][..],
        // A real deploy, whose generator asks every host its version: refused first.
        &["--config", config.as_str()][..],
    ] {
        let out = deploy_limited(64, 64, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(contacted.load(Ordering::SeqCst), 0, "no host contacted");
}

#[test]
fn a_soft_limit_below_a_high_enough_hard_limit_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let (port, contacted) = counting_listener();
    let config = config(dir.path(), 100, port);
    let out = deploy_limited(64, 4096, &["--config", &config, "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("open files"), "{stderr}");
    // A hard limit below the need is refused, and says so.
    let out = deploy_limited(64, 256, &["--config", &config, "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ulimit -n is 64 (hard limit 256)"),
        "{stderr}"
    );
    assert_eq!(contacted.load(Ordering::SeqCst), 0);
}
