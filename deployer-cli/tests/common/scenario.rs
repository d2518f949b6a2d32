//! What the run viewer's tests watch: real deploys on this machine, over real SSH to a
//! loopback fleet (`TestFleet`), recorded in a real SQLite run store.
//!
//! * The live one: `catalog trigger shop/prod deploy --run --store FILE --as alice` runs the
//!   scenario's `deploy` book: `prepare` (one host at a time, 1.5 s each), the
//!   manual step `approve` (role `developer`, four-eyes: alice started it, so someone else
//!   decides, from another process), then `release` (one host at a time). It waits at the
//!   manual step until a decision is stored.
//! * A finished one with a failure: `deploy --tasklist` where one host's task exits 3 with a
//!   line on stderr.
//!
//! The catalog is the example catalog (`examples/catalog.yaml`) with the fleet's hosts as the
//! cluster and bob a developer of shop (so bob may approve; dave holds `user` on shop/prod).
//! SSH settings for `catalog` come from `$HOME/.ssh` (config, key, known_hosts) of a home of
//! the scenario's own.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deployer_remote::testing::TestFleet;

/// The manual step of the live deploy.
pub const STEP: &str = "deploy/approve";

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn examples() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).to_path_buf()
}

/// The book the live deploy runs.
const DEPLOY_BOOK: &str = "\
name: deploy
version: 1.0.0
description: Roll the new version out, host by host, after a person's go
steps:
- name: prepare
  description: Fetch and check the new version
  command: execute_command
  hosts: cluster.hosts
  args: {command_line: \"echo preparing on $(hostname); sleep 1.5\"}
- name: approve
  manual: true
  approvers: developer
  four_eyes: true
  description: The new version is ready on every host. Go live?
- name: release
  description: Switch to the new version
  command: execute_command
  hosts: cluster.hosts
  args: {command_line: \"echo released; sleep 0.4\"}
";

pub struct Scenario {
    pub dir: tempfile::TempDir,
    pub fleet: TestFleet,
}

impl Scenario {
    /// A fleet of `hosts` loopback hosts, the catalog, the library, the SSH home.
    pub fn new(hosts: usize) -> Scenario {
        let fleet = TestFleet::start(hosts).expect("sshd (openssh-server) starts a test fleet");
        let dir = tempfile::tempdir().unwrap();
        let s = Scenario { dir, fleet };
        s.write_files();
        s
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The SQLite run store file.
    pub fn store(&self) -> PathBuf {
        self.path("runs.db")
    }

    pub fn store_url(&self) -> String {
        format!("sqlite://{}", self.store().display())
    }

    pub fn catalog(&self) -> PathBuf {
        self.path("catalog.yaml")
    }

    pub fn hosts(&self) -> &[String] {
        self.fleet.hosts()
    }

    fn write_files(&self) {
        let hosts = self.fleet.hosts().join(", ");
        let catalog = std::fs::read_to_string(examples().join("catalog.yaml")).unwrap();
        assert!(catalog.contains("    hosts: [local]\n"));
        assert!(catalog.contains("{user: bob, role: user}"));
        let catalog = catalog
            .replace("    hosts: [local]\n", &format!("    hosts: [{hosts}]\n"))
            .replace("{user: bob, role: user}", "{user: bob, role: developer}")
            .replace(
                "/tmp/deployer-books-example",
                &self.path("srv").display().to_string(),
            );
        std::fs::write(self.catalog(), catalog).unwrap();
        let library = self.path("library");
        std::fs::create_dir_all(&library).unwrap();
        std::fs::write(library.join("deploy.yaml"), DEPLOY_BOOK).unwrap();
        // The example catalog's other slots name these; they are not run.
        for book in ["pause", "backup"] {
            std::fs::copy(
                examples().join(format!("books/library/{book}.yaml")),
                library.join(format!("{book}.yaml")),
            )
            .unwrap();
        }
        // `catalog` reaches the hosts through $HOME/.ssh, as a person's SSH client would.
        let ssh = self.path("home/.ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::write(
            ssh.join("config"),
            format!(
                "Host *\n  Port {}\n  User {}\n  IdentityFile {}\n",
                self.fleet.port(),
                self.fleet.user(),
                self.fleet.client_key().display()
            ),
        )
        .unwrap();
        std::fs::copy(self.fleet.known_hosts(), ssh.join("known_hosts")).unwrap();
        // `deploy` reads the same settings from its config's ssh section.
        std::fs::write(
            self.path("ssh.yaml"),
            format!(
                "platform: release\nuser: {}\nssh:\n  port: {}\n  identity_file: {}\n  \
                 known_hosts: {}\n  host_key_policy: strict\n  agent: false\n  config: false\n",
                self.fleet.user(),
                self.fleet.port(),
                self.fleet.client_key().display(),
                self.fleet.known_hosts().display(),
            ),
        )
        .unwrap();
    }

    /// `books ARGS` (approve, reject, pending) against the scenario's store and catalog.
    pub fn books(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_books"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `deploy --store URL ARGS`.
    pub fn deploy(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_deploy"))
            .arg("--store")
            .arg(self.store_url())
            .args(args)
            .env_remove("DEPLOYER_STORE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts the live deploy (as alice) in another process.
    pub fn start_deploy(&self) -> LiveDeploy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_catalog"))
            .arg("--file")
            .arg(self.catalog())
            .args(["trigger", "shop/prod", "deploy", "--as", "alice", "--run"])
            .arg("--library")
            .arg(self.path("library"))
            .arg("--store")
            .arg(self.store())
            .env("HOME", self.path("home"))
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let screen = Arc::new(Mutex::new(String::new()));
        let readers = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ]
        .into_iter()
        .map(|pipe| {
            let screen = screen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut s = screen.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            })
        })
        .collect();
        LiveDeploy {
            child: Some(child),
            screen,
            readers,
        }
    }

    /// The id of the newest run in the store in state `state` (`RUNNING`, …), waiting up to
    /// `limit` for one.
    pub fn wait_for_run(&self, state: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.deploy(&["runs", "list"]);
            let list = text(&out.stdout);
            if let Some(id) = list.lines().skip(1).find_map(|l| {
                let mut cols = l.split_whitespace();
                let id = cols.next()?;
                (cols.next()? == state).then(|| id.to_string())
            }) {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "no {state} run after {limit:?}:\n{list}{}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A finished run with a failure: `deploy --tasklist` on the fleet where the second host's
    /// task fails (exit 3, "disk /srv is full" on stderr). Returns its id.
    pub fn failed_run(&self) -> String {
        let hosts = self.fleet.hosts();
        let tasks: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let line = if i == 1 {
                    "echo checking /srv; echo 'disk /srv is full' >&2; exit 3"
                } else {
                    "echo checking /srv; echo ok"
                };
                format!(
                    r#"{{"command": "execute_command", "remote_host": "{h}", "tag": "check disk", "command_line": "{line}"}}"#
                )
            })
            .collect();
        let tasklist = self.path("hotfix.json");
        std::fs::write(
            &tasklist,
            format!(
                r#"{{"name": "hotfix 1.4.3", "stages": [{{"name": "check", "concurrency": {}, "tasks": [{}]}}]}}"#,
                hosts.len(),
                tasks.join(",")
            ),
        )
        .unwrap();
        let out = self.deploy(&[
            "--config",
            self.path("ssh.yaml").to_str().unwrap(),
            "--tasklist",
            tasklist.to_str().unwrap(),
            "--output",
            "json",
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        stderr
            .lines()
            .find_map(|l| l.strip_prefix("run "))
            .unwrap_or_else(|| panic!("no run id in\n{stderr}"))
            .trim()
            .to_string()
    }
}

/// The live deploy's process; killed on drop if still running.
pub struct LiveDeploy {
    child: Option<Child>,
    screen: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl LiveDeploy {
    /// What it printed so far (stdout and stderr).
    pub fn screen(&self) -> String {
        self.screen.lock().unwrap().clone()
    }

    /// Waits until it printed `needle`; fails after `limit`, or when it exited first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the deploy exited ({status}) before printing {needle:?}:\n{}",
                    self.screen()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the deploy printed no {needle:?} after {limit:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for it to exit (at most `limit`): its exit code and everything it printed.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the deploy still ran after {limit:?}:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        (status.code(), self.screen())
    }
}

impl Drop for LiveDeploy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
