//! The shared setup of the multi-process worker tests (`workers.rs`, `workers_rules.rs`, `workers_resume.rs`): a
//! throwaway PostgreSQL server, a `TestFleet` of six loopback sshd hosts in two zones, `deploy
//! worker` processes, a following `deploy --submit`, and readers of the hosts' files and the
//! workers' logs. Included with `#[path = "common/workers.rs"] mod workers_common;`.
#![allow(dead_code, unused_imports)]

#[allow(dead_code)]
#[path = "../../../deployer-store/tests/common/pg.rs"]
pub mod pg;

#[path = "fleet_config.rs"]
pub mod fleet_config;

pub use std::collections::{BTreeMap, HashMap};
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Stdio};
pub use std::time::{Duration, Instant};

pub use deployer_core::{Stage, Task, TaskEntry, Tasklist};
pub use deployer_remote::testing::TestFleet;

pub fn deploy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deploy"));
    cmd.env_remove("DEPLOYER_STORE").stdin(Stdio::null());
    cmd
}

/// A run's world: the store, the fleet with zones, a config reaching it, the hosts' files.
pub struct World {
    pub _pg: pg::PgServer,
    pub url: String,
    pub fleet: TestFleet,
    pub dir: tempfile::TempDir,
    /// Where each host's file lives (owned by the fleet's user).
    pub root: PathBuf,
    pub config: PathBuf,
    pub inventory: PathBuf,
    pub zones: HashMap<String, String>,
    pub children: Vec<Child>,
}

impl World {
    /// Six hosts: the first three in zone eu, the others in zone us.
    pub async fn start(test: &str) -> World {
        let pg = pg::PgServer::start().await;
        let url = pg.database().await;
        let fleet = TestFleet::start(6).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = PathBuf::from(format!(
            "/tmp/deployer-workers-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let status = Command::new("chown")
            .arg(fleet.user())
            .arg(&root)
            .status()
            .unwrap();
        assert!(status.success());
        let config = fleet_config::ssh_config(&fleet, dir.path());
        let mut zones = HashMap::new();
        let mut ini = String::new();
        for (zone, hosts) in [("eu", &fleet.hosts()[..3]), ("us", &fleet.hosts()[3..])] {
            ini.push_str(&format!("[{zone}]\n"));
            for h in hosts {
                ini.push_str(&format!("{h}\n"));
                zones.insert(h.clone(), zone.to_string());
            }
            ini.push_str(&format!("[{zone}:vars]\nzone={zone}\n"));
        }
        let inventory = dir.path().join("hosts.ini");
        std::fs::write(&inventory, ini).unwrap();
        World {
            _pg: pg,
            url,
            fleet,
            dir,
            root,
            config,
            inventory,
            zones,
            children: Vec::new(),
        }
    }

    pub fn hosts(&self) -> &[String] {
        self.fleet.hosts()
    }

    /// A task on `host` that sleeps `secs` and then appends `key START END` to its file;
    /// `check_service` (idempotent: an entry of a dead worker is claimed again).
    pub fn step(&self, host: &str, key: &str, secs: f64) -> Task {
        let file = self.root.join(format!("{host}.log"));
        Task::new("check_service").on(host).arg(
            "check_command",
            format!(
                "s=$(date +%s.%N); sleep {secs}; echo \"{key} $s $(date +%s.%N)\" >> {}",
                file.display()
            ),
        )
    }

    pub fn save(&self, tasklist: &Tasklist, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        tasklist.save(&path).unwrap();
        path
    }

    /// Starts `deploy worker` named `name` serving `zones`; its stderr goes to `NAME.log`.
    pub fn worker(&mut self, name: &str, zones: &[&str], extra: &[&str]) -> usize {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let mut cmd = deploy();
        cmd.arg("--store")
            .arg(&self.url)
            .arg("--config")
            .arg(&self.config)
            .arg("-i")
            .arg(&self.inventory)
            .args(["worker", "--name", name])
            .args(extra);
        for z in zones {
            cmd.args(["--zone", z]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start deploy worker");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Waits (bounded) until worker `name` has registered: its first heartbeat is in the
    /// store, so a follower counts its zones as served.
    pub fn until_registered(&self, name: &str) {
        Self::until(
            Duration::from_secs(20),
            &format!("worker {name} registered"),
            || {
                self.worker_log(name)
                    .contains(&format!("worker {name} started"))
            },
        );
    }

    pub fn worker_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts `deploy --tasklist PATH --submit`; its stdout and stderr go to files.
    pub fn submit(&self, tasklist: &Path, name: &str) -> Child {
        let out = std::fs::File::create(self.dir.path().join(format!("{name}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("{name}.err"))).unwrap();
        deploy()
            .arg("--store")
            .arg(&self.url)
            .arg("--tasklist")
            .arg(tasklist)
            .arg("-i")
            .arg(&self.inventory)
            .arg("--config")
            .arg(&self.config)
            .arg("--submit")
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start deploy --submit")
    }

    /// `deploy runs show` of the run a submitter named `name` submitted (its stdout says
    /// `submitted run ID`).
    pub fn runs_show(&self, name: &str) -> String {
        let (out, _) = self.output(name);
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("submitted run "))
            .unwrap_or_else(|| panic!("no run id in {out}"))
            .trim()
            .to_string();
        let shown = deploy()
            .args(["--store", &self.url, "runs", "show", &id])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&shown.stdout).into_owned();
        assert!(
            shown.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&shown.stderr)
        );
        text
    }

    pub fn output(&self, name: &str) -> (String, String) {
        let read = |ext: &str| {
            std::fs::read_to_string(self.dir.path().join(format!("{name}.{ext}")))
                .unwrap_or_default()
        };
        (read("out"), read("err"))
    }

    /// Every line of every host's file: (host, key, start, end).
    pub fn lines(&self) -> Vec<(String, String, f64, f64)> {
        let mut all = Vec::new();
        for h in self.hosts() {
            let text =
                std::fs::read_to_string(self.root.join(format!("{h}.log"))).unwrap_or_default();
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(f.len(), 3, "a line of {h}'s file: {line:?}");
                all.push((
                    h.clone(),
                    f[0].to_string(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                ));
            }
        }
        all
    }

    /// Waits for `child` (bounded); its exit code.
    pub fn wait(child: &mut Child, limit: Duration, what: &str) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{what} did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until `f` holds.
    pub fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, k: usize, sig: i32) {
        unsafe {
            libc::kill(self.children[k].id() as libc::pid_t, sig);
        }
    }

    /// Stops every worker (SIGTERM: claim nothing more) and checks they exit 0.
    pub fn stop_workers(&mut self) {
        for k in 0..self.children.len() {
            if self.children[k].try_wait().unwrap().is_none() {
                self.signal(k, libc::SIGTERM);
            }
        }
        for child in &mut self.children {
            let code = World::wait(child, Duration::from_secs(10), "a worker after SIGTERM");
            assert!(code == 0 || code == -1, "a worker exited {code}");
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The most intervals of `spans` open at once.
pub fn max_overlap(spans: &[(f64, f64)]) -> usize {
    let mut points: Vec<(f64, i32)> = Vec::new();
    for &(s, e) in spans {
        points.push((s, 1));
        points.push((e, -1));
    }
    // An end before a start at the same instant.
    points.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in points {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// `(worker, stage, entry, host)` of each "runs" line of a worker's log.
pub fn runs_in(log: &str, worker: &str) -> Vec<(String, usize, usize, String)> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&format!("worker {worker} runs stages["))?..];
            let rest = &rest[rest.find('[')? + 1..];
            let stage: usize = rest[..rest.find(']')?].parse().ok()?;
            let rest = &rest[rest.find("tasks[")? + 6..];
            let entry: usize = rest[..rest.find(']')?].parse().ok()?;
            let host = rest[rest.rfind(" on ")? + 4..].trim().to_string();
            Some((worker.to_string(), stage, entry, host))
        })
        .collect()
}

/// How many "ended … done" lines of entry (stage, entry) a worker's log has.
pub fn ended_done(log: &str, worker: &str, stage: usize, entry: usize) -> usize {
    let needle = format!("worker {worker} ended stages[{stage}].tasks[{entry}] of run");
    log.lines()
        .filter(|l| l.contains(&needle) && l.trim_end().ends_with(": done"))
        .count()
}
