//! W1 at fleet scale through the real `deploy --tasklist` program, side by side with pyinfra
//! and Fabric in the same run; and the failure-budget case.
//!
//! ```text
//! benches/fleet.sh [COUNTS…]          # builds, installs the peers, runs (default 100 300 1000)
//! benches/fleet.sh budget             # 200 hosts + 10 refusing, max_failures 10 and 9
//! target/release/fleet_w1 [COUNTS…]   # what fleet.sh runs, once built
//! target/release/fleet_w1 budget [HOSTS] [REFUSING]
//! ```
//!
//! The hosts are one [`TestFleet`] (127.1.0.1, …, one
//! sshd master per 16 addresses, one port), started once at the largest count; each count uses
//! its first N hosts. W1, per host and tool, in its own directory
//! `/tmp/deployer-fleet-bench/<address>/<tool>`: create `releases/<v>`, upload a 1 MiB
//! `.tar.gz`, unpack it, switch `current`, run `true`, verify `current/VERSION`; all hosts at
//! once.
//!
//! * **deployer**: `deploy --config fleet.yaml --tasklist w1.json` (release build): six stages
//!   of the standard commands, concurrency N, one task per host at a time, the run recorded in
//!   a SQLite file store (the default kind of store), its progress and recap on stderr.
//! * **pyinfra**: `pyinfra --parallel N -y inventory.py benches/fleet/pyinfra_w1.py`
//!   (`files.directory`, `files.put`, `server.shell` ×4).
//! * **Fabric**: `python benches/fleet/fabric_w1.py`: a thread per host, each a
//!   `fabric.Connection` running the six steps.
//!
//! * **deployer-pg**: the same `deploy --tasklist`, its run recorded in PostgreSQL (a
//!   throwaway server, [`PgServer`], a fresh database per run).
//! * **workers**: `deploy --tasklist w1.json --submit` (following the run to its end) with
//!   `FLEET_WORKERS` (default 2) `deploy worker --slots ⌈N/workers⌉` processes
//!   (`FLEET_WORKER_SLOTS` to set) on that PostgreSQL; wall time is the submitter's, CPU and
//!   peak RSS the sums over the submitter and the workers (each printed too).
//!
//! All of them use the same client key, the fleet's known_hosts with strict checking (unknown
//! keys refused), user and port, no agent and no `~/.ssh/config`. Measured per run, from the
//! child's own `wait4` rusage: wall time (spawn to exit), controller CPU (user + sys), peak RSS;
//! failed hosts are counted on the hosts' files (a host succeeded when its
//! `current/VERSION` holds the round's version), so every tool is judged alike. Memory per
//! host is (peak RSS at the largest count − at the smallest) / (difference in hosts).
//!
//! Environment: `FLEET_DEPLOY` (the `deploy` binary; default: beside this program),
//! `FLEET_VENV` (a virtualenv with pyinfra and Fabric; without it the peers are skipped),
//! `FLEET_TOOLS` (comma-separated subset of `deployer,deployer-pg,workers,pyinfra,fabric`;
//! default `deployer,pyinfra,fabric`), `FLEET_TIMEOUT`
//! (seconds a run may take before it is killed, default 600), `FLEET_REEXEC=1` (servers
//! re-execute sshd for every connection, as stock servers do; default: not, see
//! `TestFleetBuilder::reexec`). Each run's known_hosts holds the lines of its N hosts only.
//!
//! `budget`: 200 hosts of which 10 refuse connections, the same W1 tasklist with
//! `"max_failures": 10` at its top, then 9. Expected: exit 4 with the 190 deployed and the 10
//! named in the output, then exit 1 (the deploy stops as without a budget). Each outcome is
//! printed with what was expected; the program exits 1 when one differs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deployer_benches::pg::PgServer;
use deployer_benches::ssh::{Fleet, load_average, random_file};
use deployer_core::{Stage, Task, Tasklist};
use deployer_remote::testing::TestFleet;

const ROOT: &str = "/tmp/deployer-fleet-bench";

/// What one run of a tool cost and did.
struct Measured {
    wall: Duration,
    cpu: Duration,
    peak_rss: u64,
    exit: i32,
    /// Hosts whose `current/VERSION` holds the version afterwards.
    ok_hosts: usize,
    /// The run's stdout and stderr.
    output: String,
    /// With several processes (`workers`): each one's name, CPU and peak RSS; `cpu` and
    /// `peak_rss` are then their sums.
    procs: Vec<(String, Duration, u64)>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs `cmd` to its end (killed after `timeout`), its output into `log`; wall time and the
/// child's own rusage from `wait4`.
fn run_measured(mut cmd: Command, log: &Path, timeout: Duration) -> (Duration, Duration, u64, i32) {
    let out = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out);
    let t = Instant::now();
    // Reaped below by `wait4`, which `Child::wait` cannot do (it gives no rusage).
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if watchdog.recv_timeout(timeout).is_err() {
            eprintln!("  (killed after {timeout:?})");
            // SAFETY: kill has no memory effects; the child is not reaped yet, so its pid is
            // still its own.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut status = 0;
    // SAFETY: wait4 writes only into the status and rusage we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t.elapsed();
    let _ = done.send(());
    let _ = killer.join();
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    let exit = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (wall, cpu, usage.ru_maxrss as u64 * 1024, exit)
}

/// Waits for child `pid` (bounded: killed after 30 s) and returns its CPU, peak RSS and exit.
fn reap(pid: libc::pid_t) -> (Duration, u64, i32) {
    let (done, watchdog) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(30)).is_err() {
            // SAFETY: as in run_measured.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut status = 0;
    // SAFETY: wait4 writes only into the status and rusage we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let _ = done.send(());
    let _ = killer.join();
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let exit = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (
        tv(usage.ru_utime) + tv(usage.ru_stime),
        usage.ru_maxrss as u64 * 1024,
        exit,
    )
}

fn base(host: &str, tool: &str) -> String {
    format!("{ROOT}/{host}/{tool}")
}

/// Fresh, empty directories for `tool` on `hosts`, owned by the login user.
fn prepare(hosts: &[String], tool: &str, user: &str) {
    for h in hosts {
        let dir = base(h, tool);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(ROOT)
        .status()
        .expect("chown");
    assert!(status.success(), "chown -R {user} {ROOT}");
}

/// How many of `hosts` have `version` live for `tool`.
fn count_ok(hosts: &[String], tool: &str, version: &str) -> usize {
    hosts
        .iter()
        .filter(|h| {
            std::fs::read_to_string(format!("{}/current/VERSION", base(h, tool)))
                .is_ok_and(|v| v.trim() == version)
        })
        .count()
}

fn cleanup(hosts: &[String], tool: &str) {
    for h in hosts {
        let _ = std::fs::remove_dir_all(base(h, tool));
    }
}

/// W1 as six stages of the standard commands over `hosts`, all at once.
fn w1(hosts: &[String], tarball: &Path, version: &str, tool: &str) -> Tasklist {
    let release = |h: &str| format!("{}/releases/{version}", base(h, tool));
    let n = hosts.len();
    let stage = |name: &str, task: &dyn Fn(&str) -> Task| {
        Stage::new(name, n)
            .per_host(1)
            .tasks(hosts.iter().map(|h| task(h).on(h.clone())))
    };
    Tasklist::new("w1")
        .stage(stage("create release", &|h| {
            Task::new("createdirectory").arg("source", release(h))
        }))
        .stage(stage("upload", &|h| {
            Task::new("upload")
                .arg("source", tarball.display().to_string())
                .arg("destination", format!("{}/", release(h)))
        }))
        .stage(stage("unpack", &|h| {
            Task::new("unpack")
                .arg("source", format!("{}/app.tar.gz", release(h)))
                .arg("destination", release(h))
        }))
        .stage(stage("switch current", &|h| {
            Task::new("symlink")
                .arg("source", release(h))
                .arg("destination", format!("{}/current", base(h, tool)))
        }))
        .stage(stage("restart", &|_| {
            Task::new("execute_command").arg("command_line", "true")
        }))
        .stage(stage("verify", &|h| {
            Task::new("execute_command").arg(
                "command_line",
                format!("test -f {}/current/VERSION", base(h, tool)),
            )
        }))
}

/// Everything a run needs besides its hosts.
struct Bench {
    fleet: Fleet,
    work: tempfile::TempDir,
    tarball: PathBuf,
    deploy: PathBuf,
    venv: Option<PathBuf>,
    timeout: Duration,
}

impl Bench {
    fn new(fleet: Fleet) -> Bench {
        let work = tempfile::Builder::new()
            .prefix("deployer-fleet-bench")
            .tempdir()
            .expect("tempdir");
        // The artifact: 1 MiB of random data plus VERSION (rewritten per run).
        let content = work.path().join("content");
        std::fs::create_dir(&content).expect("mkdir");
        random_file(&content.join("blob"), 1 << 20).expect("blob");
        let deploy = std::env::var_os("FLEET_DEPLOY")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::current_exe()
                    .expect("current exe")
                    .with_file_name("deploy")
            });
        assert!(
            deploy.exists(),
            "no deploy binary at {} (cargo build --release -p deployer-cli --bin deploy, or set \
             FLEET_DEPLOY)",
            deploy.display()
        );
        let tarball = work.path().join("app.tar.gz");
        let timeout = std::env::var("FLEET_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(600));
        Bench {
            fleet,
            tarball,
            deploy,
            venv: std::env::var_os("FLEET_VENV").map(PathBuf::from),
            timeout,
            work,
        }
    }

    /// The artifact with `version` in its VERSION file.
    fn artifact(&self, version: &str) {
        let content = self.work.path().join("content");
        std::fs::write(content.join("VERSION"), format!("{version}\n")).expect("VERSION");
        let ok = Command::new("tar")
            .arg("-czf")
            .arg(&self.tarball)
            .arg("-C")
            .arg(&content)
            .args(["VERSION", "blob"])
            .status()
            .expect("tar");
        assert!(ok.success(), "tar");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// A known_hosts file with the lines of the first `n` addresses only (listening, then
    /// refusing): every tool of a run at N hosts gets what an operator of N hosts has
    /// (paramiko, under Fabric, parses every line of it on each connection).
    fn known_hosts(&self, n: usize) -> PathBuf {
        let all = std::fs::read_to_string(self.fleet.known_hosts()).expect("known_hosts");
        let path = self.path(&format!("known_hosts-{n}"));
        let lines: Vec<&str> = all.lines().take(n).collect();
        std::fs::write(&path, lines.join("\n") + "\n").expect("known_hosts");
        path
    }

    /// The `deploy` config for a run on `n` hosts: only how to reach them.
    fn deploy_config(&self, n: usize) -> PathBuf {
        let f = self.fleet.test_fleet();
        let path = self.path("fleet.yaml");
        std::fs::write(
            &path,
            format!(
                "platform: release\nuser: {}\nssh:\n  port: {}\n  identity_file: {}\n  \
                 known_hosts: {}\n  host_key_policy: strict\n  agent: false\n  config: false\n",
                f.user(),
                f.port(),
                f.client_key().display(),
                self.known_hosts(n).display(),
            ),
        )
        .expect("config");
        path
    }

    /// `deploy --tasklist` with `tasklist_json`; the run recorded in a fresh SQLite file.
    fn run_deploy(
        &self,
        tasklist_json: &str,
        n: usize,
        tag: &str,
    ) -> (Duration, Duration, u64, i32, String) {
        let store = self.path(&format!("runs-{tag}.db"));
        let _ = std::fs::remove_file(&store);
        self.run_deploy_on(
            tasklist_json,
            n,
            tag,
            &format!("sqlite://{}", store.display()),
            &[],
        )
    }

    /// `deploy --tasklist` with `tasklist_json` and `extra` arguments, on the store `store`.
    fn run_deploy_on(
        &self,
        tasklist_json: &str,
        n: usize,
        tag: &str,
        store: &str,
        extra: &[&str],
    ) -> (Duration, Duration, u64, i32, String) {
        let tasklist = self.path(&format!("w1-{tag}.json"));
        std::fs::write(&tasklist, tasklist_json).expect("tasklist");
        let mut cmd = Command::new(&self.deploy);
        cmd.env("DEPLOYER_STORE", store)
            .args(extra)
            .arg("--config")
            .arg(self.deploy_config(n))
            .arg("--tasklist")
            .arg(&tasklist);
        let log = self.path(&format!("deploy-{tag}.log"));
        let (wall, cpu, rss, exit) = run_measured(cmd, &log, self.timeout);
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        (wall, cpu, rss, exit, output)
    }

    fn deployer(&self, hosts: &[String], version: &str) -> Measured {
        let json = w1(hosts, &self.tarball, version, "deployer").to_json_string();
        let (wall, cpu, peak_rss, exit, output) =
            self.run_deploy(&json, hosts.len(), &format!("{}", hosts.len()));
        Measured {
            wall,
            cpu,
            peak_rss,
            exit,
            ok_hosts: count_ok(hosts, "deployer", version),
            output,
            procs: Vec::new(),
        }
    }

    /// One controller, `deploy --tasklist`, its run recorded in PostgreSQL (database `url`).
    fn deployer_pg(&self, hosts: &[String], version: &str, url: &str) -> Measured {
        let json = w1(hosts, &self.tarball, version, "deployer-pg").to_json_string();
        let (wall, cpu, peak_rss, exit, output) =
            self.run_deploy_on(&json, hosts.len(), &format!("pg-{}", hosts.len()), url, &[]);
        Measured {
            wall,
            cpu,
            peak_rss,
            exit,
            ok_hosts: count_ok(hosts, "deployer-pg", version),
            output,
            procs: Vec::new(),
        }
    }

    /// `deploy --tasklist … --submit` (following the run to its end) with `FLEET_WORKERS`
    /// (default 2) `deploy worker` processes on PostgreSQL (database `url`), each with
    /// `--slots` ⌈N / workers⌉ (`FLEET_WORKER_SLOTS` to set). The workers are started first
    /// and left a second to register; the wall time is the submitter's, spawn to exit. After
    /// it, the workers are stopped (SIGTERM) and their own CPU and peak RSS read from `wait4`.
    fn workers(&self, hosts: &[String], version: &str, url: &str) -> Measured {
        let n = hosts.len();
        let count: usize = std::env::var("FLEET_WORKERS")
            .ok()
            .map(|v| v.parse().expect("FLEET_WORKERS: a number"))
            .unwrap_or(2);
        let slots: usize = std::env::var("FLEET_WORKER_SLOTS")
            .ok()
            .map(|v| v.parse().expect("FLEET_WORKER_SLOTS: a number"))
            .unwrap_or(n.div_ceil(count));
        let config = self.deploy_config(n);
        let mut workers = Vec::new();
        for i in 0..count {
            let log =
                std::fs::File::create(self.path(&format!("worker-{n}-{i}.log"))).expect("log file");
            let mut cmd = Command::new(&self.deploy);
            cmd.arg("--store")
                .arg(url)
                .arg("--config")
                .arg(&config)
                .args(["worker", "--name", &format!("w{i}"), "--slots"])
                .arg(slots.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            // Reaped by `reap`, with wait4 (for its rusage).
            #[allow(clippy::zombie_processes)]
            let child = cmd.spawn().expect("start deploy worker");
            workers.push(child.id() as libc::pid_t);
        }
        std::thread::sleep(Duration::from_secs(1));
        let json = w1(hosts, &self.tarball, version, "workers").to_json_string();
        let (wall, cpu, peak_rss, exit, output) =
            self.run_deploy_on(&json, n, &format!("workers-{n}"), url, &["--submit"]);
        let mut procs = vec![("submitter".to_string(), cpu, peak_rss)];
        for (i, pid) in workers.into_iter().enumerate() {
            // SAFETY: kill has no memory effects; the child is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let (cpu, rss, _) = reap(pid);
            procs.push((format!("worker w{i}"), cpu, rss));
        }
        let mut output = output;
        for i in 0..count {
            output.push_str(
                &std::fs::read_to_string(self.path(&format!("worker-{n}-{i}.log")))
                    .unwrap_or_default(),
            );
        }
        Measured {
            wall,
            cpu: procs.iter().map(|p| p.1).sum(),
            peak_rss: procs.iter().map(|p| p.2).sum(),
            exit,
            ok_hosts: count_ok(hosts, "workers", version),
            output,
            procs,
        }
    }

    fn venv_bin(&self, name: &str) -> PathBuf {
        self.venv
            .as_ref()
            .expect("FLEET_VENV")
            .join("bin")
            .join(name)
    }

    fn pyinfra(&self, hosts: &[String], version: &str) -> Measured {
        let f = self.fleet.test_fleet();
        let known_hosts = self.known_hosts(hosts.len());
        let mut inventory = String::from("fleet = [\n");
        for h in hosts {
            inventory.push_str(&format!(
                "    ({h:?}, {{\"ssh_port\": {}, \"ssh_user\": {:?}, \"ssh_key\": {:?}, \
                 \"ssh_known_hosts_file\": {:?}, \"ssh_strict_host_key_checking\": \"yes\", \
                 \"ssh_allow_agent\": False, \"ssh_look_for_keys\": False, \
                 \"ssh_config_file\": \"/dev/null\"}}),\n",
                f.port(),
                f.user(),
                f.client_key().display().to_string(),
                known_hosts.display().to_string(),
            ));
        }
        inventory.push_str("]\n");
        let inv = self.path("inventory.py");
        std::fs::write(&inv, inventory).expect("inventory");
        let mut cmd = Command::new(self.venv_bin("pyinfra"));
        cmd.current_dir(self.work.path())
            .env("FLEET_ROOT", ROOT)
            .env("FLEET_VERSION", version)
            .env("FLEET_TARBALL", &self.tarball)
            .arg("--parallel")
            .arg(hosts.len().to_string())
            .arg("-y")
            .arg(&inv)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/fleet/pyinfra_w1.py"));
        let log = self.path(&format!("pyinfra-{}.log", hosts.len()));
        let (wall, cpu, peak_rss, exit) = run_measured(cmd, &log, self.timeout);
        Measured {
            wall,
            cpu,
            peak_rss,
            exit,
            ok_hosts: count_ok(hosts, "pyinfra", version),
            output: std::fs::read_to_string(&log).unwrap_or_default(),
            procs: Vec::new(),
        }
    }

    fn fabric(&self, hosts: &[String], version: &str) -> Measured {
        let f = self.fleet.test_fleet();
        let config = self.path("fabric.json");
        let hosts_json: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "{{\"hosts\": [{}], \"user\": {:?}, \"port\": {}, \"key\": {:?}, \
                 \"known_hosts\": {:?}, \"root\": {ROOT:?}, \"version\": {version:?}, \
                 \"tarball\": {:?}}}",
                hosts_json.join(", "),
                f.user(),
                f.port(),
                f.client_key().display().to_string(),
                self.known_hosts(hosts.len()).display().to_string(),
                self.tarball.display().to_string(),
            ),
        )
        .expect("fabric config");
        let mut cmd = Command::new(self.venv_bin("python"));
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/fleet/fabric_w1.py"))
            .arg(&config);
        let log = self.path(&format!("fabric-{}.log", hosts.len()));
        let (wall, cpu, peak_rss, exit) = run_measured(cmd, &log, self.timeout);
        Measured {
            wall,
            cpu,
            peak_rss,
            exit,
            ok_hosts: count_ok(hosts, "fabric", version),
            output: std::fs::read_to_string(&log).unwrap_or_default(),
            procs: Vec::new(),
        }
    }
}

/// `FLEET_REEXEC=1`: servers re-execute sshd per connection, as stock ones do.
fn reexec() -> bool {
    std::env::var("FLEET_REEXEC").is_ok_and(|v| v == "1")
}

/// Lets the servers' sessions of the last run end before the next one starts.
fn settle() {
    std::thread::sleep(Duration::from_secs(3));
}

/// The first line of `output` that looks like a failure, for the report.
fn first_failure(output: &str) -> String {
    output
        .lines()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("failed") || l.contains("timed out")
        })
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

fn compare(counts: Vec<usize>) {
    let tools: Vec<String> = std::env::var("FLEET_TOOLS")
        .unwrap_or_else(|_| "deployer,pyinfra,fabric".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let max = *counts.iter().max().expect("counts");
    let t = Instant::now();
    let fleet = TestFleet::builder()
        .hosts(max)
        .reexec(reexec())
        .start()
        .and_then(Fleet::from_test_fleet)
        .expect("start the sshd fleet");
    println!(
        "fleet of {max} hosts: {} sshd masters, listening after {:.1} s",
        fleet.test_fleet().masters(),
        t.elapsed().as_secs_f64()
    );
    let bench = Bench::new(fleet);
    let all = bench.fleet.hosts();
    let user = bench.fleet.user().to_string();
    // The distributed runs' store: one throwaway server, a fresh database per run.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the PostgreSQL helper");
    let pg = tools
        .iter()
        .any(|t| t == "workers" || t == "deployer-pg")
        .then(|| runtime.block_on(PgServer::start()));
    let mut rows: Vec<(usize, String, Measured)> = Vec::new();
    for &n in &counts {
        let hosts = &all[..n];
        for tool in &tools {
            let python = tool == "pyinfra" || tool == "fabric";
            if python && bench.venv.is_none() {
                println!("{n} hosts, {tool}: skipped (no FLEET_VENV)");
                continue;
            }
            let version = format!("{tool}-{n}");
            bench.artifact(&version);
            prepare(hosts, tool, &user);
            let load = load_average();
            let m = match tool.as_str() {
                "deployer" => bench.deployer(hosts, &version),
                "pyinfra" => bench.pyinfra(hosts, &version),
                "fabric" => bench.fabric(hosts, &version),
                "deployer-pg" => {
                    let url = runtime.block_on(pg.as_ref().expect("started above").database());
                    bench.deployer_pg(hosts, &version, &url)
                }
                "workers" => {
                    let url = runtime.block_on(pg.as_ref().expect("started above").database());
                    bench.workers(hosts, &version, &url)
                }
                other => panic!(
                    "unknown tool {other} (FLEET_TOOLS: deployer,deployer-pg,workers,pyinfra,fabric)"
                ),
            };
            let failed = n - m.ok_hosts;
            println!(
                "{n:>5} hosts {tool:<8}: wall {:>7.2} s, cpu {:>7.2} s, peak RSS {:>7.1} MiB, \
                 exit {}, failed hosts {failed}, per host {:.1} ms wall / {:.1} ms cpu (load {load}){}",
                m.wall.as_secs_f64(),
                m.cpu.as_secs_f64(),
                mib(m.peak_rss),
                m.exit,
                m.wall.as_secs_f64() * 1e3 / n as f64,
                m.cpu.as_secs_f64() * 1e3 / n as f64,
                if failed > 0 {
                    format!("\n      first failure: {}", first_failure(&m.output))
                } else {
                    String::new()
                }
            );
            for (name, cpu, rss) in &m.procs {
                println!(
                    "      {name}: cpu {:.2} s, peak RSS {:.1} MiB",
                    cpu.as_secs_f64(),
                    mib(*rss)
                );
            }
            let _ = std::io::stdout().flush();
            cleanup(hosts, tool);
            rows.push((n, tool.clone(), m));
            settle();
        }
    }
    println!();
    println!(
        "| hosts | tool | wall | controller CPU | peak RSS | failed hosts | exit | wall / host | CPU / host |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (n, tool, m) in &rows {
        println!(
            "| {n} | {tool} | {:.2} s | {:.2} s | {:.0} MiB | {} | {} | {:.1} ms | {:.1} ms |",
            m.wall.as_secs_f64(),
            m.cpu.as_secs_f64(),
            mib(m.peak_rss),
            n - m.ok_hosts,
            m.exit,
            m.wall.as_secs_f64() * 1e3 / *n as f64,
            m.cpu.as_secs_f64() * 1e3 / *n as f64,
        );
    }
    let min = *counts.iter().min().expect("counts");
    if max > min {
        for tool in &tools {
            let rss = |n: usize| {
                rows.iter()
                    .find(|(k, t, _)| *k == n && t == tool)
                    .map(|(_, _, m)| m.peak_rss)
            };
            if let (Some(lo), Some(hi)) = (rss(min), rss(max)) {
                println!(
                    "memory per host, {tool}: ({:.1} MiB at {max} − {:.1} MiB at {min}) / {} = {:.0} KiB",
                    mib(hi),
                    mib(lo),
                    max - min,
                    (hi as f64 - lo as f64) / 1024.0 / (max - min) as f64
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(ROOT);
}

/// The failure-budget case: `hosts` of which `refusing` refuse connections.
fn budget(hosts: usize, refusing: usize) -> bool {
    let fleet = TestFleet::builder()
        .hosts(hosts - refusing)
        .refusing(refusing)
        .reexec(reexec())
        .start()
        .expect("start the sshd fleet");
    let fleet = Fleet::from_test_fleet(fleet).expect("fleet");
    let bench = Bench::new(fleet);
    let f = bench.fleet.test_fleet();
    let up = f.hosts().to_vec();
    let down = f.refusing_hosts().to_vec();
    let all: Vec<String> = up.iter().chain(&down).cloned().collect();
    let user = f.user().to_string();
    let mut as_expected = true;
    for (max_failures, want_exit) in [(refusing, 4), (refusing - 1, 1)] {
        let version = format!("budget-{max_failures}");
        bench.artifact(&version);
        prepare(&all, "deployer", &user);
        let json = w1(&all, &bench.tarball, &version, "deployer").to_json_string();
        // The top-level budget, before the tasklist's own keys.
        let json = format!(
            "{{\"max_failures\": {max_failures}, {}",
            json.trim_start().strip_prefix('{').expect("a JSON object")
        );
        let (wall, cpu, rss, exit, output) = bench.run_deploy(&json, all.len(), &version);
        let ok = count_ok(&up, "deployer", &version);
        let named = down.iter().filter(|h| output.contains(h.as_str())).count();
        let (want_ok, what) = if want_exit == 4 {
            (
                up.len(),
                format!(
                    "exit 4, the {} reachable hosts deployed, the {} refusing ones named",
                    up.len(),
                    down.len()
                ),
            )
        } else {
            (0, "exit 1, stopped after the first stage".to_string())
        };
        let good = exit == want_exit && ok == want_ok && (want_exit != 4 || named == down.len());
        as_expected &= good;
        println!(
            "budget: {} hosts, {} refusing, max_failures {max_failures}: exit {exit}, {ok} hosts \
             deployed, {named} of the refusing named in the output; wall {:.2} s, cpu {:.2} s, \
             peak RSS {:.1} MiB — expected {what}: {}",
            up.len(),
            down.len(),
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            mib(rss),
            if good {
                "as expected"
            } else {
                "NOT as expected"
            }
        );
        if !good {
            println!("  first failure: {}", first_failure(&output));
        }
        cleanup(&all, "deployer");
        settle();
    }
    let _ = std::fs::remove_dir_all(ROOT);
    as_expected
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "load average {}, {} cores",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if args.first().map(String::as_str) == Some("budget") {
        let n = |i: usize, default: usize| {
            args.get(i)
                .map(|s| s.parse().expect("a number of hosts"))
                .unwrap_or(default)
        };
        let (hosts, refusing) = (n(1, 200), n(2, 10));
        assert!(
            (1..hosts).contains(&refusing),
            "at least one refusing host and one that listens"
        );
        if !budget(hosts, refusing) {
            std::process::exit(1);
        }
        return;
    }
    let mut counts: Vec<usize> = args
        .iter()
        .map(|a| a.parse().expect("host counts"))
        .collect();
    if counts.is_empty() {
        counts = vec![100, 300, 1000];
    }
    compare(counts);
}
