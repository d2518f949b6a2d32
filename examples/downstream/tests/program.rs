//! The `mysite-deploy` program as a person runs it: the recap it prints, the run it records in
//! its SQLite file, and exit 130 after SIGINT.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deployer::{RunState, TaskState};

fn config(dir: &Path, settle: Option<u32>) -> std::path::PathBuf {
    let mut yaml = format!(
        "platform: mysite\nroot: {}\nhosts: [fe001, fe002]\n",
        dir.join("site").display()
    );
    if let Some(secs) = settle {
        yaml.push_str(&format!("settle: {secs}\n"));
    }
    let path = dir.join("mysite.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn program(config: &Path, store: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mysite-deploy"));
    cmd.arg(config).arg(store).stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn a_deploy_prints_the_recap_and_records_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("runs.db");
    let out = program(&config(dir.path(), None), &store_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("HOST   OK  FAILED      TIME\n"), "{stderr}");
    assert!(stderr.contains("\nfe001   2       0"), "{stderr}");
    assert!(
        stderr.contains("run \"mysite\" succeeded in ") && stderr.contains("s: 4 ok\n"),
        "{stderr}"
    );
    assert!(dir.path().join("site").is_dir());

    let store = deployer::store::open(store_path.to_str().unwrap())
        .await
        .unwrap();
    let runs = store.list_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1);
    let run = runs[0].record().expect("the run reads back");
    assert_eq!(run.name, "mysite");
    assert_eq!(run.state, RunState::Succeeded);
    let tasks = store.tasks(&run.id).await.unwrap();
    assert_eq!(tasks.len(), 4);
    assert!(
        tasks.iter().all(|t| t.state == TaskState::Succeeded),
        "{tasks:?}"
    );
}

#[tokio::test]
async fn sigint_cancels_the_run_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("runs.db");
    let child = program(&config(dir.path(), Some(61)), &store_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait until both hosts' `sleep 61` run (the store is not opened meanwhile: opening it
    // migrates it, which is the program's business while it runs).
    let deadline = Instant::now() + Duration::from_secs(30);
    while sleeps_running("sleep\x0061") < 2 {
        assert!(Instant::now() < deadline, "the settle stage never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first SIGINT drains (the sleeps would go on), the second stops them.
    let pid = child.id().to_string();
    let kill = || {
        let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(status.success());
    };
    kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("run \"mysite\" cancelled in "), "{stderr}");
    assert!(
        stderr.contains(": 2 ok, 2 cancelled, 2 not run\n"),
        "{stderr}"
    );

    let store = deployer::store::open(store_path.to_str().unwrap())
        .await
        .unwrap();
    let runs = store.list_runs(1).await.unwrap();
    assert_eq!(runs[0].record().unwrap().state, RunState::Cancelled);
}

/// How many processes run with exactly `cmdline` (arguments joined by NUL).
fn sleeps_running(cmdline: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| c.strip_suffix(b"\0") == Some(cmdline.as_bytes()))
        .count()
}
