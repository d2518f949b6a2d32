//! The controller killed with SIGKILL in the middle of a stage, then resumed (issue 10, part 1,
//! fault g): the `deploy` program over two real sshd hosts on loopback, recording in a SQLite
//! file. Each task appends its name to a log file on its host, so the test counts how often
//! each one ran.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use deployer_remote::testing::TestSshd;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Kills (on drop) the remote commands the dead controller left behind.
struct Reaper(PathBuf);

impl Reaper {
    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Each command's shell, and its process group when it leads one.
        let pids: Vec<String> = self
            .pids()
            .into_iter()
            .filter(|&p| alive(p))
            .flat_map(|p| [format!("-{p}"), p.to_string()])
            .collect();
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
        }
    }
}

struct Fleet {
    dir: tempfile::TempDir,
    work: tempfile::TempDir,
    _hosts: Vec<TestSshd>,
}

impl Fleet {
    /// Two sshd hosts, `app1` and `app2`, an ssh config and a known_hosts for both, and a
    /// deploy config that points at them.
    fn start() -> Fleet {
        let hosts = vec![
            TestSshd::start().expect("sshd starts"),
            TestSshd::start().expect("sshd starts"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let work = tempfile::Builder::new()
            .prefix("deployer-kill-resume")
            .tempdir_in("/tmp")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut known = String::new();
        let mut ssh_config = String::new();
        for (i, h) in hosts.iter().enumerate() {
            known.push_str(&std::fs::read_to_string(h.known_hosts()).unwrap());
            known.push('\n');
            ssh_config.push_str(&format!(
                "Host app{}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n",
                i + 1,
                h.address(),
                h.port(),
                h.user(),
                h.client_key().display()
            ));
        }
        std::fs::write(dir.path().join("known_hosts"), known).unwrap();
        std::fs::write(dir.path().join("ssh_config"), ssh_config).unwrap();
        std::fs::write(
            dir.path().join("deploy.yaml"),
            format!(
                "platform: release\nssh:\n  known_hosts: {}\n  config: {}\n  agent: false\n",
                dir.path().join("known_hosts").display(),
                dir.path().join("ssh_config").display()
            ),
        )
        .unwrap();
        Fleet {
            dir,
            work,
            _hosts: hosts,
        }
    }

    fn config(&self) -> String {
        self.dir.path().join("deploy.yaml").display().to_string()
    }

    fn store(&self) -> String {
        self.dir.path().join("runs.db").display().to_string()
    }

    fn w(&self, name: &str) -> String {
        self.work.path().join(name).display().to_string()
    }

    /// How many times task `name` appended itself to the log of `host`.
    fn count(&self, host: &str, name: &str) -> usize {
        std::fs::read_to_string(self.w(&format!("{host}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == name)
            .count()
    }

    fn deploy(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_deploy"))
            .args(["--store", &self.store(), "--config", &self.config()])
            .args(args)
            .output()
            .expect("the binary runs")
    }

    /// A task on `host` that appends `name` to the host's log; a `slow` one then records its
    /// pid and sleeps 30 s, unless the run is being resumed.
    fn task(&self, host: &str, name: &str, slow: bool) -> String {
        let mut line = format!("echo {name} >> {}", self.w(&format!("{host}.log")));
        if slow {
            line.push_str(&format!(
                "; echo $$ >> {pids}; if [ ! -e {resumed} ]; then sleep 30; fi",
                pids = self.w("pids"),
                resumed = self.w("resumed")
            ));
        }
        format!(
            r#"{{"command": "execute_command", "remote_host": "{host}", "tag": "{name}", "command_line": "{line}"}}"#
        )
    }
}

fn poll(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The state column of the row of `task` in `deploy runs show`.
fn row<'a>(show: &'a str, task: &str) -> &'a str {
    show.lines()
        .find(|l| l.starts_with(task))
        .unwrap_or_else(|| panic!("no {task} in\n{show}"))
}

#[test]
fn a_controller_killed_mid_stage_on_two_hosts_resumes_what_was_not_done() {
    let fleet = Fleet::start();
    let tasklist = fleet.dir.path().join("t.json");
    std::fs::write(
        &tasklist,
        format!(
            r#"{{"name": "kill-resume", "stages": [
                {{"name": "first", "concurrency": 2, "concurrency_per_host": 1, "tasks": [{}, {}, {}, {}]}},
                {{"name": "second", "concurrency": 2, "tasks": [{}, {}]}}
            ]}}"#,
            fleet.task("app1", "a1", false),
            fleet.task("app2", "b1", false),
            fleet.task("app1", "a2", true),
            fleet.task("app2", "b2", true),
            fleet.task("app1", "a3", false),
            fleet.task("app2", "b3", false),
        ),
    )
    .unwrap();
    let reaper = Reaper(PathBuf::from(fleet.w("pids")));

    // Run, and kill the controller (SIGKILL: no chance to clean up) while a2 and b2 run.
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(["--store", &fleet.store(), "--config", &fleet.config()])
        .args(["--tasklist", tasklist.to_str().unwrap()])
        .args(["--output", "json", "--lease-ttl", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut started = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains(r#""event":"task_started""#)
            && (line.contains(r#""tag":"a2""#) || line.contains(r#""tag":"b2""#))
        {
            started += 1;
            if started == 2 {
                break;
            }
        }
    }
    assert_eq!(started, 2, "a2 and b2 started");
    // Both are past their side effect and sleeping.
    poll(Duration::from_secs(20), "a2 and b2 are sleeping", || {
        reaper.pids().len() == 2
    });
    let started = reaper.pids();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .unwrap_or_else(|| panic!("no run id in\n{stderr}"))
        .trim()
        .to_string();
    for (host, name) in [
        ("app1", "a1"),
        ("app2", "b1"),
        ("app1", "a2"),
        ("app2", "b2"),
    ] {
        assert_eq!(fleet.count(host, name), 1, "{name} ran once");
    }
    assert_eq!(fleet.count("app1", "a3") + fleet.count("app2", "b3"), 0);

    // The record kept what happened: the finished tasks, the interrupted ones, the rest.
    let out = fleet.deploy(&["runs", "show", &id]);
    let show = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(show.contains("state     RUNNING"), "{show}");
    for (task, state) in [
        ("stages[0].tasks[0]", "SUCCEEDED"),
        ("stages[0].tasks[1]", "SUCCEEDED"),
        ("stages[0].tasks[2]", "RUNNING"),
        ("stages[0].tasks[3]", "RUNNING"),
        ("stages[1].tasks[0]", "PENDING"),
        ("stages[1].tasks[1]", "PENDING"),
    ] {
        assert!(row(&show, task).contains(state), "{task}: {show}");
    }
    // The dead controller's remote commands do not outlive it: sshd sends no SIGHUP without a
    // terminal, but the remote shell's watcher sees its input end and kills them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let orphans = started.iter().filter(|&&p| alive(p)).count();
        if orphans == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "remote commands still running 10 s after the controller died: {orphans} of 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Resume: the interrupted tasks (not idempotent, so --force) run again, done ones do not.
    std::fs::write(fleet.w("resumed"), "").unwrap();
    let out = fleet.deploy(&["runs", "resume", &id, "--force", "--wait"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for (host, name, n) in [
        ("app1", "a1", 1),
        ("app2", "b1", 1),
        ("app1", "a2", 2),
        ("app2", "b2", 2),
        ("app1", "a3", 1),
        ("app2", "b3", 1),
    ] {
        assert_eq!(fleet.count(host, name), n, "{name}");
    }
    let out = fleet.deploy(&["runs", "show", &id]);
    let show = text(&out.stdout);
    assert!(show.contains("state     SUCCEEDED"), "{show}");
    assert!(
        !show.contains("finished  -"),
        "finish_ts is stamped\n{show}"
    );
    // HOST STATE OK EARLIER FAILED: every task of both hosts done,
    // the first by the killed attempt.
    for host in ["app1", "app2"] {
        let cells: Vec<&str> = row(&show, host).split_whitespace().collect();
        assert_eq!(cells, [host, "DONE", "2", "1", "0"], "{show}");
    }
    assert!(show.contains("tasks     4 ok, 2 done earlier\n"), "{show}");
    assert!(show.contains("attempts  2 (resumed 1 time)"), "{show}");
    for t in [
        "stages[0].tasks[0]",
        "stages[0].tasks[1]",
        "stages[1].tasks[0]",
    ] {
        assert!(row(&show, t).contains("SUCCEEDED"), "{show}");
    }
    // The interrupted tasks took a second attempt.
    for t in ["stages[0].tasks[2]", "stages[0].tasks[3]"] {
        let cells: Vec<&str> = row(&show, t).split_whitespace().collect();
        assert_eq!(cells[3..5], ["SUCCEEDED", "2"], "{show}");
    }
    drop(reaper);
}
