//! `deploy runs resume` of a run submitted to workers, with real processes: a throwaway
//! PostgreSQL server, six loopback sshd hosts, `deploy worker` processes, a `deploy --submit`
//! that follows the run. A worker is SIGKILLed while it runs an entry that is not idempotent
//! (a chain whose second step is an `execute_command`): the run stops and asks; `deploy runs
//! resume ID` is refused without `--force`; with it a live worker runs the interrupted entry
//! again — not its first step, done before the kill — and the rest, and the files on the hosts
//! show every other entry ran exactly once.
//!
//! (The world below is `tests/workers.rs`'s, copied.)

#[allow(dead_code)]
#[path = "../../deployer-store/tests/common/pg.rs"]
mod pg;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deployer_core::{Stage, Task, Tasklist};
use deployer_remote::testing::TestFleet;

fn deploy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deploy"));
    cmd.env_remove("DEPLOYER_STORE").stdin(Stdio::null());
    cmd
}

/// A run's world: the store, the fleet with zones, a config reaching it, the hosts' files.
struct World {
    _pg: pg::PgServer,
    url: String,
    fleet: TestFleet,
    dir: tempfile::TempDir,
    /// Where each host's file lives (owned by the fleet's user).
    root: PathBuf,
    config: PathBuf,
    inventory: PathBuf,
    children: Vec<Child>,
}

impl World {
    /// Six hosts: the first three in zone eu, the others in zone us.
    async fn start(test: &str) -> World {
        let pg = pg::PgServer::start().await;
        let url = pg.database().await;
        let fleet = TestFleet::start(6).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = PathBuf::from(format!(
            "/tmp/deployer-workers-resume-{}-{test}",
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
        let config = dir.path().join("deploy.yaml");
        std::fs::write(
            &config,
            format!(
                "platform: release\nuser: {}\nssh:\n  port: {}\n  identity_file: {}\n  \
                 known_hosts: {}\n  host_key_policy: strict\n  agent: false\n  config: false\n",
                fleet.user(),
                fleet.port(),
                fleet.client_key().display(),
                fleet.known_hosts().display(),
            ),
        )
        .unwrap();
        let mut ini = String::new();
        for (zone, hosts) in [("eu", &fleet.hosts()[..3]), ("us", &fleet.hosts()[3..])] {
            ini.push_str(&format!("[{zone}]\n"));
            for h in hosts {
                ini.push_str(&format!("{h}\n"));
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
            children: Vec::new(),
        }
    }

    fn hosts(&self) -> &[String] {
        self.fleet.hosts()
    }

    /// A task on `host` that sleeps `secs` and then appends `key START END` to its file;
    /// `check_service` (idempotent: an entry of a dead worker is claimed again).
    fn step(&self, host: &str, key: &str, secs: f64) -> Task {
        let file = self.root.join(format!("{host}.log"));
        Task::new("check_service").on(host).arg(
            "check_command",
            format!(
                "s=$(date +%s.%N); sleep {secs}; echo \"{key} $s $(date +%s.%N)\" >> {}",
                file.display()
            ),
        )
    }

    fn save(&self, tasklist: &Tasklist, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        tasklist.save(&path).unwrap();
        path
    }

    /// Starts `deploy worker` named `name` serving `zones`; its stderr goes to `NAME.log`.
    fn worker(&mut self, name: &str, zones: &[&str], extra: &[&str]) -> usize {
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

    fn worker_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts `deploy --tasklist PATH --submit`; its stdout and stderr go to files.
    fn submit(&self, tasklist: &Path, name: &str) -> Child {
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

    fn output(&self, name: &str) -> (String, String) {
        let read = |ext: &str| {
            std::fs::read_to_string(self.dir.path().join(format!("{name}.{ext}")))
                .unwrap_or_default()
        };
        (read("out"), read("err"))
    }

    /// Every line of every host's file: (host, key, start, end).
    fn lines(&self) -> Vec<(String, String, f64, f64)> {
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
    fn wait(child: &mut Child, limit: Duration, what: &str) -> i32 {
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
    fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, k: usize, sig: i32) {
        unsafe {
            libc::kill(self.children[k].id() as libc::pid_t, sig);
        }
    }

    /// Stops every worker (SIGTERM: claim nothing more) and checks they exit 0.
    fn stop_workers(&mut self) {
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

/// `(worker, stage, entry, host)` of each "runs" line of a worker's log.
fn runs_in(log: &str, worker: &str) -> Vec<(String, usize, usize, String)> {
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

/// The run id a submitter's stdout names (`submitted run ID`).
fn run_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("submitted run "))
        .unwrap_or_else(|| panic!("no run id in {out}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_by_a_killed_worker_resumes_on_the_workers_only_with_force() {
    let mut w = World::start("force").await;
    let hosts = w.hosts().to_vec();
    let mut s0 = Stage::new("first", 6);
    for (k, h) in hosts.iter().enumerate() {
        s0 = s0.task(w.step(h, &format!("0:{k}"), 0.0));
    }
    // One chain on the first host: a quick idempotent step, then one that is not (it runs
    // long enough to be killed in).
    let file = w.root.join(format!("{}.log", hosts[0]));
    let once = Task::new("execute_command").on(&hosts[0]).arg(
        "command_line",
        format!(
            "s=$(date +%s.%N); sleep 4; echo \"1:0.1 $s $(date +%s.%N)\" >> {}",
            file.display()
        ),
    );
    let s1 = Stage::new("once", 1).task(vec![w.step(&hosts[0], "1:0.0", 0.0), once]);
    let mut s2 = Stage::new("after", 6);
    for (k, h) in hosts.iter().enumerate() {
        s2 = s2.task(w.step(h, &format!("2:{k}"), 0.0));
    }
    let path = w.save(
        &Tasklist::new("force").stage(s0).stage(s1).stage(s2),
        "tasklist.json",
    );
    let victim = w.worker("w-a", &[], &["--lease", "1500ms"]);
    let mut submitter = w.submit(&path, "submit");
    World::until(Duration::from_secs(20), "w-a runs the chain", || {
        runs_in(&w.worker_log("w-a"), "w-a")
            .iter()
            .any(|r| r.1 == 1 && r.2 == 0)
    });
    // In the second step (the first is instant).
    World::until(Duration::from_secs(10), "the chain's first step", || {
        w.lines().iter().any(|l| l.1 == "1:0.0")
    });
    std::thread::sleep(Duration::from_millis(700));
    w.signal(victim, libc::SIGKILL);
    let _ = w.children[victim].wait();
    // Another worker sweeps the lapsed claim: the run stops and the submitter says so.
    w.worker("w-b", &[], &["--lease", "1500ms"]);
    let code = World::wait(&mut submitter, Duration::from_secs(20), "the submitter");
    let (out, err) = w.output("submit");
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("stopped: entry stages[1].tasks[0] on ")
            && err.contains("was interrupted on worker w-a"),
        "{err}"
    );
    let id = run_id(&out);

    // Without --force: refused, naming the entry and --force; nothing runs.
    let refused = deploy()
        .args(["--store", &w.url, "runs", "resume", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(2), "{text}");
    assert!(
        text.contains("stages[1].tasks[0]")
            && text.contains(&format!("deploy runs resume {id} --force")),
        "{text}"
    );
    // --wait (a controller's lease) has no meaning for a run on workers: said, not ignored.
    let waited = deploy()
        .args([
            "--store", &w.url, "runs", "resume", &id, "--force", "--wait",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&waited.stderr).into_owned();
    assert_eq!(waited.status.code(), Some(2), "{text}");
    assert!(
        text.contains("--wait: run") && text.contains("workers"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !w.lines().iter().any(|l| l.1.starts_with("2:")),
        "a refused resume runs nothing"
    );

    // With --force: the live worker runs the interrupted entry again and the rest; the
    // follower exits 0 with the recap.
    let resumed = deploy()
        .args(["--store", &w.url, "runs", "resume", &id, "--force"])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&resumed.stdout).into_owned(),
        String::from_utf8_lossy(&resumed.stderr).into_owned(),
    );
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        out.contains(&format!("resumed run {id} on its workers")),
        "{out}"
    );
    assert!(out.contains("state     SUCCEEDED"), "the recap: {out}");
    assert!(out.contains("done earlier"), "the recap: {out}");
    // The follower lists what the resumed run does, not what was done before it.
    assert!(
        !err.lines().any(|l| l.starts_with("stages[0]")),
        "stage 0 was done before the resume: {err}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("stages[2]")),
        "the follower lists stage 2: {err}"
    );
    let b = w.worker_log("w-b");
    assert!(
        runs_in(&b, "w-b").iter().any(|r| r.1 == 1 && r.2 == 0),
        "w-b ran the interrupted entry:\n{b}"
    );
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for l in w.lines() {
        *count.entry(l.1).or_default() += 1;
    }
    for k in 0..6 {
        assert_eq!(count.get(&format!("0:{k}")), Some(&1), "{count:?}");
        assert_eq!(count.get(&format!("2:{k}")), Some(&1), "{count:?}");
    }
    assert_eq!(
        count.get("1:0.0"),
        Some(&1),
        "the chain's done first step is not run again: {count:?}"
    );
    assert!(count.get("1:0.1").is_some_and(|n| *n >= 1), "{count:?}");
    let shown = deploy()
        .args(["--store", &w.url, "runs", "show", &id])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("state     SUCCEEDED"), "{shown}");
    assert!(shown.contains("resumed 1 time"), "{shown}");

    // A finished, succeeded run is not resumed again (exit 2).
    let again = deploy()
        .args(["--store", &w.url, "runs", "resume", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{text}");
    assert!(text.contains("already succeeded"), "{text}");
    w.stop_workers();
}
