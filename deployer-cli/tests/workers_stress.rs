//! The property/stress test of distributed runs: 2–4 `deploy worker` processes on one real
//! PostgreSQL over a `TestFleet` of loopback sshd hosts in two zones, random task failures,
//! SIGKILLs and SIGSTOPs (then SIGCONT) of workers while they work, repeated over rounds.
//!
//! Every entry's command appends to a file of its host `S|T|E|F KEY WORKER PID NANOS` lines:
//! `S` at its start, a `T` tick every 50 ms while it sleeps, then `E` (it ended) or `F` (an
//! injected failure, exit 1). `WORKER` is `$DW`, which sshd sets from the `environment=`
//! option of the authorized key the worker logged in with: each worker process has its own key,
//! so a line names the worker whose connection ran it, as the host saw it. A command killed on
//! the host (its worker died, or was stopped and sshd dropped its connection) leaves an `S` and
//! ticks but no `E`; its last stamp is a lower bound of its end, so an overlap found with it is
//! a real one.
//!
//! Per round it checks: no stage's `concurrency` (over all hosts) nor `concurrency_per_host`
//! exceeded; no two runs of one entry at once; a non-idempotent entry run at most once; stage
//! barriers; every task the store has DONE has a completion line of the worker it names, and
//! every completion line is recorded DONE by its worker unless that worker was killed or
//! stopped after the line (a completion lost between the command's end and its record: the
//! idempotent entry then runs again, reported); exactly one recorded completion per entry when
//! the run succeeded; the failure budget of failure rounds (0–2 hosts: only failed hosts
//! dropped, never more than the budget, a dropped host's entries never run); the run's state as
//! the entries imply (SUCCEEDED, DEGRADED, FAILED); the submitter's exit status (0, 4, 1).
//!
//! The hosts' sshd drop a client that does not answer keepalives (`ClientAliveInterval 1`,
//! `ClientAliveCountMax 1`): a SIGSTOPped worker keeps its TCP connections open, and without
//! this its commands would run on while its lease lapses and another worker runs the entry
//! again. The lease (9 s, renewed every 3 s, so at least 6 s left when a worker stops) exceeds
//! the time sshd takes to drop it plus the time to kill its commands: nominally 2 s, measured
//! up to 5.8 s with `ClientAliveCountMax 2` (the stat "the last … after the stop").
//!
//! Size by environment (defaults: the CI size): `STRESS_ROUNDS` (3), `STRESS_ENTRIES` (200),
//! `STRESS_HOSTS` (20), `STRESS_WORKERS` (`2-4`: each round picks in this range),
//! `STRESS_FAULTS` (most faults per round, 3), `STRESS_SEED` (printed at start: replay a round
//! with it), `STRESS_FAIL_ROUNDS` (one round in N has injected failures, 3);
//! `STRESS_LONG_TICKS` (80: the 3 % long entries run 4 s); `STRESS_NO_KEEPALIVE=1` leaves
//! sshd's keepalive out, to see the overlaps it prevents (with long entries that outlast a
//! lapse, e.g. `STRESS_LONG_TICKS=240`).

#[path = "common/workers.rs"]
mod workers_common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deployer_core::{FailureBudget, Stage, Task, Tasklist};
use deployer_remote::testing::TestFleet;
use sqlx::{Connection, Row};
use workers_common::{deploy, max_overlap, pg};

/// A worker's lease: more than sshd takes to drop a stopped client (see the module docs).
const LEASE: &str = "9s";
const LEASE_SECS: f64 = 9.0;
/// Tick of the commands on the hosts.
const TICK: f64 = 0.05;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a number")),
        Err(_) => default,
    }
}

/// The test's size and seed.
#[derive(Debug, Clone)]
struct Size {
    rounds: usize,
    entries: usize,
    hosts: usize,
    workers: (usize, usize),
    faults: usize,
    fail_rounds: usize,
    /// Ticks of the long entries.
    long_ticks: usize,
    seed: u64,
}

impl Size {
    fn from_env() -> Size {
        let workers = std::env::var("STRESS_WORKERS").unwrap_or_else(|_| "2-4".into());
        let (lo, hi) = workers.split_once('-').unwrap_or((&workers, &workers));
        let parse = |s: &str| -> usize {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("STRESS_WORKERS={workers:?}: expected N or N-M"))
        };
        let workers = (parse(lo).max(1), parse(hi).max(parse(lo)).max(1));
        let seed = match std::env::var("STRESS_SEED") {
            Ok(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("STRESS_SEED={v:?}: expected a number")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        Size {
            rounds: env_usize("STRESS_ROUNDS", 3),
            entries: env_usize("STRESS_ENTRIES", 200),
            hosts: env_usize("STRESS_HOSTS", 20).max(2),
            workers,
            faults: env_usize("STRESS_FAULTS", 3),
            fail_rounds: env_usize("STRESS_FAIL_ROUNDS", 3).max(1),
            long_ticks: env_usize("STRESS_LONG_TICKS", 80),
            seed,
        }
    }
}

/// One entry of a round's plan.
#[derive(Debug, Clone)]
struct Entry {
    host: String,
    idempotent: bool,
    fails: bool,
}

/// A stage's limits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    concurrency: usize,
    per_host: Option<usize>,
}

/// One run of an entry's command on its host, read from the host's file.
#[derive(Debug, Clone)]
struct Attempt {
    host: String,
    worker: String,
    start: f64,
    /// The last stamp it wrote (its end, or its last tick when it was killed).
    last: f64,
    ended: bool,
    failed: bool,
}

/// A fault done to a worker, and when (seconds since the epoch).
#[derive(Debug, Clone)]
struct Fault {
    worker: String,
    at: f64,
    /// When it ended: the SIGCONT of a stop; the kill itself.
    until: f64,
    what: &'static str,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

struct World {
    _pg: pg::PgServer,
    url: String,
    fleet: TestFleet,
    dir: tempfile::TempDir,
    inventory: PathBuf,
    base_config: PathBuf,
}

impl World {
    async fn start(hosts: usize) -> World {
        let pg = pg::PgServer::start().await;
        let url = pg.database().await;
        let mut fleet = TestFleet::builder()
            .hosts(hosts)
            // `environment=` in authorized_keys names the worker on the host.
            .config_line("PermitUserEnvironment yes");
        // A client that answers no keepalive (a stopped worker) is dropped within seconds, and
        // the shell agent's watcher then kills its command. STRESS_NO_KEEPALIVE=1 leaves it
        // out, to see what it prevents (a stopped worker's command runs on: overlaps).
        if std::env::var("STRESS_NO_KEEPALIVE").is_err() {
            fleet = fleet
                .config_line("ClientAliveInterval 1")
                .config_line("ClientAliveCountMax 1");
        }
        let fleet = fleet.start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut ini = String::new();
        let half = hosts / 2;
        for (zone, hs) in [
            ("eu", &fleet.hosts()[..half]),
            ("us", &fleet.hosts()[half..]),
        ] {
            ini.push_str(&format!("[{zone}]\n"));
            for h in hs {
                ini.push_str(&format!("{h}\n"));
            }
            ini.push_str(&format!("[{zone}:vars]\nzone={zone}\n"));
        }
        let inventory = dir.path().join("hosts.ini");
        std::fs::write(&inventory, ini).unwrap();
        let mut w = World {
            _pg: pg,
            url,
            fleet,
            dir,
            inventory,
            base_config: PathBuf::new(),
        };
        w.base_config = w.config_for(&w.fleet.client_key(), "submit");
        w
    }

    fn config_for(&self, key: &Path, name: &str) -> PathBuf {
        let config = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "platform: release\nuser: {}\nssh:\n  port: {}\n  identity_file: {}\n  \
                 known_hosts: {}\n  host_key_policy: strict\n  agent: false\n  config: false\n",
                self.fleet.user(),
                self.fleet.port(),
                key.display(),
                self.fleet.known_hosts().display(),
            ),
        )
        .unwrap();
        config
    }

    /// A key of its own for worker `name`, authorized with `DW=name` in its sessions.
    fn worker_key(&self, name: &str) -> PathBuf {
        let key = self.dir.path().join(format!("key-{name}"));
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(status.success());
        let public = std::fs::read_to_string(key.with_extension("pub"))
            .or_else(|_| std::fs::read_to_string(format!("{}.pub", key.display())))
            .unwrap();
        use std::io::Write;
        let mut auth = std::fs::OpenOptions::new()
            .append(true)
            .open(self.fleet.dir().join("authorized_keys"))
            .unwrap();
        writeln!(auth, "environment=\"DW={name}\" {}", public.trim()).unwrap();
        key
    }

    fn spawn_worker(&self, name: &str) -> Child {
        let key = self.worker_key(name);
        let config = self.config_for(&key, name);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        deploy()
            .arg("--store")
            .arg(&self.url)
            .arg("--config")
            .arg(&config)
            .arg("-i")
            .arg(&self.inventory)
            .args(["worker", "--name", name, "--lease", LEASE, "--slots", "16"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start deploy worker")
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// What a round saw, for the summary.
#[derive(Debug, Default)]
struct RoundStats {
    workers: usize,
    kills: usize,
    long_stops: usize,
    short_stops: usize,
    failures_planned: usize,
    failed_lines: usize,
    outcome: String,
    exit: i32,
    attempts: usize,
    reruns: usize,
    killed_commands: usize,
    /// Commands left without an end by a worker that was stopped, not killed: killed on the
    /// host once sshd dropped the stopped client.
    stopped_killed: usize,
    /// The longest a stopped worker's command ran on after the stop (its last stamp), in s.
    stop_to_kill: f64,
    lost_completions: usize,
    stopped: Option<String>,
    /// The run's failure budget (`max_failures`), in failure rounds.
    budget: Option<usize>,
    /// Hosts the run dropped within its budget.
    dropped_hosts: usize,
    secs: f64,
}

/// The plan of round `round`: stages with random limits, entries on random hosts, a few not
/// idempotent (`execute_command`, 0.5 %), some failing in failure rounds, which get a failure
/// budget of 0 to 2 hosts (so some drop their failed hosts and end DEGRADED, others go past
/// it and stop).
fn plan(
    size: &Size,
    round: usize,
    hosts: &[String],
    root: &Path,
    rng: &mut fastrand::Rng,
) -> (Tasklist, Vec<Limits>, Vec<Vec<Entry>>, Option<usize>) {
    let stages = 4;
    let failing_round = round % size.fail_rounds == size.fail_rounds - 1;
    let mut limits = Vec::new();
    let mut entries: Vec<Vec<Entry>> = vec![Vec::new(); stages];
    for k in 0..size.entries {
        let stage = k * stages / size.entries;
        entries[stage].push(Entry {
            host: hosts[rng.usize(..hosts.len())].clone(),
            // 0.5 % not idempotent: one interrupted by a fault stops the run (and is
            // reported); more would stop most rounds of 1000 entries.
            idempotent: rng.usize(..1000) >= 5,
            fails: failing_round && rng.usize(..size.entries) < 2,
        });
    }
    let mut tasklist = Tasklist::new(format!("stress-{round}"));
    for (s, list) in entries.iter().enumerate() {
        let l = Limits {
            concurrency: rng.usize(3..=(hosts.len() * 2).max(4)),
            per_host: [None, Some(1), Some(2)][rng.usize(..3)],
        };
        limits.push(l);
        let mut stage = Stage::new(format!("s{s}"), l.concurrency);
        if let Some(n) = l.per_host {
            stage = stage.per_host(n);
        }
        for (e, entry) in list.iter().enumerate() {
            let file = root.join(format!("{}.log", entry.host));
            // Mostly short; a few idempotent ones run 4 s, long enough to be running when
            // their worker is stopped and to be killed on the host by sshd's keepalive.
            let ticks = if entry.idempotent && rng.usize(..100) < 3 {
                size.long_ticks
            } else {
                rng.usize(0..=6)
            };
            let line = |kind: &str| {
                format!(
                    "echo \"{kind} {s}:{e} ${{DW:-none}} $$ $(date +%s%N)\" >> {}",
                    file.display()
                )
            };
            let end = if entry.fails {
                format!("{}; exit 1", line("F"))
            } else {
                line("E")
            };
            let text = format!(
                "{}; i=0; while [ $i -lt {ticks} ]; do sleep {TICK}; {}; i=$((i+1)); done; {end}",
                line("S"),
                line("T"),
            );
            let task = if entry.idempotent {
                Task::new("check_service")
                    .on(&entry.host)
                    .arg("check_command", text)
                    .arg("wait_timeout", 0)
            } else {
                Task::new("execute_command")
                    .on(&entry.host)
                    .arg("command_line", text)
            };
            stage = stage.task(task);
        }
        tasklist = tasklist.stage(stage);
    }
    let budget = failing_round.then(|| rng.usize(..=2));
    if let Some(n) = budget {
        tasklist = tasklist.budget(FailureBudget::max_failures(n));
    }
    (tasklist, limits, entries, budget)
}

/// The rows of `sql` (a query of run `run` with `stage` and `entry` columns) by (stage, entry).
async fn by_entry<T>(
    conn: &mut sqlx::PgConnection,
    sql: &'static str,
    run: &str,
    value: impl Fn(&sqlx::postgres::PgRow) -> T,
) -> HashMap<(usize, usize), T> {
    sqlx::query(sql)
        .bind(run)
        .fetch_all(conn)
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let key = (
                row.get::<i64, _>("stage") as usize,
                row.get::<i64, _>("entry") as usize,
            );
            (key, value(row))
        })
        .collect()
}

/// Every attempt, by (stage, entry), from the hosts' files.
fn attempts(hosts: &[String], root: &Path) -> BTreeMap<(usize, usize), Vec<Attempt>> {
    let mut by_run: HashMap<(String, String, String), Attempt> = HashMap::new();
    let mut keys: HashMap<(String, String, String), (usize, usize)> = HashMap::new();
    for h in hosts {
        let text = std::fs::read_to_string(root.join(format!("{h}.log"))).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 5, "a line of {h}'s file: {line:?}");
            let (s, e) = f[1].split_once(':').unwrap();
            let key: (usize, usize) = (s.parse().unwrap(), e.parse().unwrap());
            let t = f[4].parse::<u64>().unwrap() as f64 / 1e9;
            let id = (h.clone(), f[3].to_string(), f[2].to_string() + f[1]);
            keys.insert(id.clone(), key);
            let a = by_run.entry(id).or_insert_with(|| Attempt {
                host: h.clone(),
                worker: f[2].to_string(),
                start: t,
                last: t,
                ended: false,
                failed: false,
            });
            a.start = a.start.min(t);
            a.last = a.last.max(t);
            match f[0] {
                "E" => a.ended = true,
                "F" => a.failed = true,
                "S" | "T" => {}
                other => panic!("a line of {h}'s file: {other:?} in {line:?}"),
            }
        }
    }
    let mut out: BTreeMap<(usize, usize), Vec<Attempt>> = BTreeMap::new();
    for (id, a) in by_run {
        out.entry(keys[&id]).or_default().push(a);
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.start.partial_cmp(&b.start).unwrap());
    }
    out
}

/// Runs round `round`: workers, submit, faults, then every check. Returns its stats and the
/// properties it found violated.
async fn round(w: &World, size: &Size, round: usize) -> (RoundStats, Vec<String>) {
    let started = Instant::now();
    let mut rng =
        fastrand::Rng::with_seed(size.seed ^ (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let hosts = w.fleet.hosts().to_vec();
    let root = PathBuf::from(format!(
        "/tmp/deployer-stress-{}-{round}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    assert!(
        Command::new("chown")
            .arg(w.fleet.user())
            .arg(&root)
            .status()
            .unwrap()
            .success()
    );
    let (tasklist, limits, entries, budget) = plan(size, round, &hosts, &root, &mut rng);
    let path = w.dir.path().join(format!("round-{round}.json"));
    tasklist.save(&path).unwrap();
    let mut stats = RoundStats {
        failures_planned: entries.iter().flatten().filter(|e| e.fails).count(),
        budget,
        ..RoundStats::default()
    };

    // Workers: (name, process, stopped until).
    let n = rng.usize(size.workers.0..=size.workers.1);
    stats.workers = n;
    let mut workers: Vec<(String, Child, Option<Instant>)> = Vec::new();
    let mut serial = 0;
    let next_name = |serial: &mut usize| {
        *serial += 1;
        format!("r{round}w{serial}")
    };
    for _ in 0..n {
        let name = next_name(&mut serial);
        let child = w.spawn_worker(&name);
        workers.push((name, child, None));
    }
    let out_path = w.dir.path().join(format!("round-{round}.out"));
    let err_path = w.dir.path().join(format!("round-{round}.err"));
    let mut submitter = deploy()
        .arg("--store")
        .arg(&w.url)
        .arg("--tasklist")
        .arg(&path)
        .arg("-i")
        .arg(&w.inventory)
        .arg("--config")
        .arg(&w.base_config)
        .arg("--submit")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();

    // Faults while the run runs: every 1–3 s one, up to `faults`, never on the last worker
    // that is alive and running.
    let mut faults: Vec<Fault> = Vec::new();
    let mut next_fault = Instant::now() + Duration::from_millis(rng.u64(1000..3000));
    let limit = Duration::from_secs(60 + size.entries as u64 / 4);
    let code = loop {
        if let Some(status) = submitter.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        assert!(
            started.elapsed() < limit,
            "round {round} (seed {}): the submitter did not end within {limit:?}",
            size.seed
        );
        let now = Instant::now();
        for (_, child, stopped) in workers.iter_mut() {
            if stopped.is_some_and(|until| until <= now) {
                signal(child, libc::SIGCONT);
                *stopped = None;
            }
        }
        if faults.len() < size.faults && now >= next_fault {
            next_fault = now + Duration::from_millis(rng.u64(1000..3000));
            let running: Vec<usize> = (0..workers.len())
                .filter(|&k| workers[k].2.is_none() && workers[k].1.try_wait().unwrap().is_none())
                .collect();
            if running.len() >= 2 {
                let k = running[rng.usize(..running.len())];
                let at = now_secs();
                match rng.usize(..10) {
                    0..=3 => {
                        signal(&workers[k].1, libc::SIGKILL);
                        let _ = workers[k].1.wait();
                        stats.kills += 1;
                        faults.push(Fault {
                            worker: workers[k].0.clone(),
                            at,
                            until: at,
                            what: "kill",
                        });
                        // Another takes its place (the fleet keeps its size).
                        let name = next_name(&mut serial);
                        let child = w.spawn_worker(&name);
                        workers.push((name, child, None));
                    }
                    4..=7 => {
                        // Past the lease: its entries are taken over.
                        signal(&workers[k].1, libc::SIGSTOP);
                        workers[k].2 = Some(now + Duration::from_secs_f64(LEASE_SECS + 2.0));
                        stats.long_stops += 1;
                        faults.push(Fault {
                            worker: workers[k].0.clone(),
                            at,
                            until: at + LEASE_SECS + 2.0,
                            what: "stop",
                        });
                    }
                    _ => {
                        // Well within sshd's keepalive window and the lease: nothing lapses.
                        signal(&workers[k].1, libc::SIGSTOP);
                        workers[k].2 = Some(now + Duration::from_millis(300));
                        stats.short_stops += 1;
                        faults.push(Fault {
                            worker: workers[k].0.clone(),
                            at,
                            until: at + 0.3,
                            what: "short stop",
                        });
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stats.exit = code;
    for (_, child, stopped) in workers.iter_mut() {
        if stopped.take().is_some() {
            signal(child, libc::SIGCONT);
        }
        if child.try_wait().unwrap().is_none() {
            signal(child, libc::SIGTERM);
        }
    }
    for (name, child, _) in workers.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("worker {name} did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Anything a worker wrongly still ran shows up by now.
    std::thread::sleep(Duration::from_millis(500));

    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    let mut bad = Vec::new();
    let Some(run) = out
        .lines()
        .find_map(|l| l.strip_prefix("submitted run "))
        .map(|s| s.trim().to_string())
    else {
        bad.push(format!("no run id: stdout {out}\nstderr {err}"));
        return (stats, bad);
    };
    let mut conn = sqlx::PgConnection::connect(&w.url).await.unwrap();
    let state: String = sqlx::query("SELECT state FROM runs WHERE id = $1")
        .bind(&run)
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get("state");
    stats.stopped = sqlx::query("SELECT stopped FROM run_work WHERE run_id = $1")
        .bind(&run)
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get("stopped");
    let store: HashMap<(usize, usize), (String, Option<String>)> = by_entry(
        &mut conn,
        "SELECT stage, entry, state, worker FROM run_tasks WHERE run_id = $1",
        &run,
        |row| (row.get("state"), row.get("worker")),
    )
    .await;
    let entry_state: HashMap<(usize, usize), String> = by_entry(
        &mut conn,
        "SELECT stage, entry, state FROM run_entries WHERE run_id = $1",
        &run,
        |row| row.get("state"),
    )
    .await;
    stats.outcome = state.clone();
    let dropped_hosts: HashSet<String> =
        sqlx::query("SELECT host FROM run_hosts WHERE run_id = $1 AND state = 'DROPPED'")
            .bind(&run)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get("host"))
            .collect();
    stats.dropped_hosts = dropped_hosts.len();

    let seen = attempts(&hosts, &root);
    let _ = std::fs::remove_dir_all(&root);
    stats.attempts = seen.values().map(Vec::len).sum();
    stats.failed_lines = seen.values().flatten().filter(|a| a.failed).count();
    stats.killed_commands = seen
        .values()
        .flatten()
        .filter(|a| !a.ended && !a.failed)
        .count();
    stats.reruns = seen.values().filter(|l| l.len() > 1).count();
    stats.stopped_killed = seen
        .values()
        .flatten()
        .filter(|a| {
            !a.ended
                && !a.failed
                && faults
                    .iter()
                    .any(|f| f.worker == a.worker && f.what == "stop")
                && !faults
                    .iter()
                    .any(|f| f.worker == a.worker && f.what == "kill")
        })
        .count();
    for a in seen.values().flatten().filter(|a| !a.ended && !a.failed) {
        if let Some(stop) = faults
            .iter()
            .filter(|f| f.worker == a.worker && f.what == "stop" && f.at <= a.last)
            .map(|f| f.at)
            .reduce(f64::max)
            && a.start < stop
            && !faults
                .iter()
                .any(|f| f.worker == a.worker && f.what == "kill")
        {
            stats.stop_to_kill = stats.stop_to_kill.max(a.last - stop);
        }
    }
    // Whether `worker` was killed, or stopped past its lease, after a command of it started
    // at `t` on its host (a stopped worker's command may still end there, unrecorded), or
    // while it was sent: a command starts on its host a little after its worker sent it, so
    // one sent just before a kill or during a stop starts after the fault (1 s allowed).
    let faulted_after = |worker: &str, t: f64| {
        faults
            .iter()
            .any(|f| f.worker == worker && f.until + 1.0 >= t && f.what != "short stop")
    };
    // What the workers' logs say about entry (s, e), for a violation's message.
    let trail = |s: usize, e: usize| -> String {
        let needle = format!("stages[{s}].tasks[{e}] of run {run}");
        let mut lines = String::new();
        for (name, _, _) in &workers {
            let log = std::fs::read_to_string(w.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            for l in log.lines().filter(|l| l.contains(&needle)) {
                lines.push_str(&format!("\n    {l}"));
            }
        }
        let f: Vec<String> = faults
            .iter()
            .map(|f| format!("{} {} at {:.3}", f.what, f.worker, f.at))
            .collect();
        format!("{lines}\n    faults: {}", f.join(", "))
    };
    let worker_names: HashSet<&str> = workers.iter().map(|(n, _, _)| n.as_str()).collect();

    for (s, list) in entries.iter().enumerate() {
        for (e, entry) in list.iter().enumerate() {
            let key = (s, e);
            let runs = seen.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            for a in runs {
                if a.host != entry.host || !worker_names.contains(a.worker.as_str()) {
                    bad.push(format!(
                        "stages[{s}].tasks[{e}] ran on {} by {:?} (planned on {})",
                        a.host, a.worker, entry.host
                    ));
                }
            }
            // Never two runs of one entry at once.
            for (i, a) in runs.iter().enumerate() {
                for b in &runs[i + 1..] {
                    if b.start < a.last {
                        bad.push(format!(
                            "stages[{s}].tasks[{e}] ran twice at once: {a:?} and {b:?}{}",
                            trail(s, e)
                        ));
                    }
                }
            }
            if !entry.idempotent && runs.len() > 1 {
                bad.push(format!(
                    "stages[{s}].tasks[{e}] is not idempotent and ran {} times: {runs:?}",
                    runs.len()
                ));
            }
            let (task_state, task_worker) = store
                .get(&key)
                .cloned()
                .unwrap_or_else(|| ("MISSING".into(), None));
            // Every DONE record has its completion line, by the worker it names.
            if task_state == "SUCCEEDED" {
                let by = task_worker.clone().unwrap_or_default();
                if !runs.iter().any(|a| a.ended && a.worker == by) {
                    bad.push(format!(
                        "stages[{s}].tasks[{e}] is SUCCEEDED by {by} in the store, but no completion \
                         line of {by} is on {}: {runs:?}",
                        entry.host
                    ));
                }
            }
            // Every completion line is recorded, unless its worker was killed or stopped after.
            for a in runs.iter().filter(|a| a.ended) {
                let recorded =
                    task_state == "SUCCEEDED" && task_worker.as_deref() == Some(&a.worker);
                if !recorded {
                    if faulted_after(&a.worker, a.start) {
                        stats.lost_completions += 1;
                    } else {
                        bad.push(format!(
                            "stages[{s}].tasks[{e}] completed on {} by {} (never killed or stopped \
                             after it started) but the store has {task_state} by \
                             {task_worker:?}: {runs:?}{}",
                            entry.host,
                            a.worker,
                            trail(s, e)
                        ));
                    }
                }
            }
            // A failure in the store is an injected one, or a faulted worker's, or an
            // interrupted entry that is not idempotent.
            if task_state == "FAILED" {
                let by = task_worker.clone().unwrap_or_default();
                let injected = runs.iter().any(|a| a.failed && a.worker == by);
                let interrupted = !entry.idempotent
                    && stats
                        .stopped
                        .as_deref()
                        .is_some_and(|m| m.contains(&format!("stages[{s}].tasks[{e}] on ")));
                if !injected && !interrupted && !faults.iter().any(|f| f.worker == by) {
                    bad.push(format!(
                        "stages[{s}].tasks[{e}] FAILED by {by} with no injected failure nor \
                         fault of {by}: {runs:?}"
                    ));
                }
            }
            if state == "SUCCEEDED" {
                let recorded = runs.iter().filter(|a| a.ended).count();
                if task_state != "SUCCEEDED" || recorded == 0 {
                    bad.push(format!(
                        "the run SUCCEEDED but stages[{s}].tasks[{e}] is {task_state} with \
                         {recorded} completions"
                    ));
                }
                if entry_state.get(&key).map(String::as_str) != Some("DONE") {
                    bad.push(format!(
                        "the run SUCCEEDED but entry stages[{s}].tasks[{e}] is {:?}",
                        entry_state.get(&key)
                    ));
                }
            }
        }
    }

    // Limits, from the intervals (a killed run up to its last stamp).
    for (s, l) in limits.iter().enumerate() {
        let spans: Vec<(f64, f64)> = (0..entries[s].len())
            .flat_map(|e| seen.get(&(s, e)).cloned().unwrap_or_default())
            .map(|a| (a.start, a.last))
            .collect();
        let most = max_overlap(&spans);
        if most > l.concurrency {
            bad.push(format!(
                "stage {s}: {most} entries ran at once, its concurrency is {}",
                l.concurrency
            ));
        }
        if let Some(per_host) = l.per_host {
            for h in &hosts {
                let spans: Vec<(f64, f64)> = (0..entries[s].len())
                    .flat_map(|e| seen.get(&(s, e)).cloned().unwrap_or_default())
                    .filter(|a| &a.host == h)
                    .map(|a| (a.start, a.last))
                    .collect();
                let most = max_overlap(&spans);
                if most > per_host {
                    bad.push(format!(
                        "stage {s}: {most} entries ran at once on {h}, its concurrency_per_host \
                         is {per_host}"
                    ));
                }
            }
        }
    }
    // Stage barriers.
    let bounds: Vec<Option<(f64, f64)>> = (0..limits.len())
        .map(|s| {
            let list: Vec<&Attempt> = seen
                .iter()
                .filter(|((st, _), _)| *st == s)
                .flat_map(|(_, l)| l)
                .collect();
            if list.is_empty() {
                return None;
            }
            Some((
                list.iter().map(|a| a.start).fold(f64::MAX, f64::min),
                list.iter().map(|a| a.last).fold(f64::MIN, f64::max),
            ))
        })
        .collect();
    for s in 1..bounds.len() {
        let before = bounds[..s]
            .iter()
            .flatten()
            .map(|b| b.1)
            .fold(f64::MIN, f64::max);
        if let Some(this) = bounds[s]
            && this.0 < before
        {
            bad.push(format!(
                "stage {s} started at {} before the stages before it ended (at {before})",
                this.0
            ));
        }
    }
    // The failure budget: only a host with a failure is dropped, never more than the budget;
    // a dropped host's entries (DROPPED) never ran.
    let failed_hosts: HashSet<&str> = entry_state
        .iter()
        .filter(|(_, st)| *st == "FAILED")
        .map(|(&(s, e), _)| entries[s][e].host.as_str())
        .collect();
    if dropped_hosts.len() > budget.unwrap_or(0) {
        bad.push(format!(
            "{} hosts dropped, the budget is {budget:?}: {dropped_hosts:?}",
            dropped_hosts.len()
        ));
    }
    for h in &dropped_hosts {
        if !failed_hosts.contains(h.as_str()) {
            bad.push(format!("{h} was dropped without a failed entry"));
        }
    }
    for (&(s, e), st) in &entry_state {
        if st == "DROPPED" {
            if !dropped_hosts.contains(&entries[s][e].host) {
                bad.push(format!(
                    "entry stages[{s}].tasks[{e}] is DROPPED but its host {} is not",
                    entries[s][e].host
                ));
            }
            if seen.get(&(s, e)).is_some_and(|l| !l.is_empty()) {
                bad.push(format!(
                    "entry stages[{s}].tasks[{e}] is DROPPED but ran: {:?}",
                    seen[&(s, e)]
                ));
            }
        }
    }
    // The run's state as its entries imply, and the submitter's exit status.
    let all_done = entries.iter().enumerate().all(|(s, l)| {
        (0..l.len()).all(|e| entry_state.get(&(s, e)).map(String::as_str) == Some("DONE"))
    });
    // Failures that count: on hosts not dropped (a dropped host's failure was within budget).
    let any_failed = failed_hosts.iter().any(|h| !dropped_hosts.contains(*h));
    let all_done_or_dropped = entries.iter().enumerate().all(|(s, l)| {
        (0..l.len()).all(|e| {
            let st = entry_state.get(&(s, e)).map(String::as_str);
            st == Some("DONE") || dropped_hosts.contains(&l[e].host)
        })
    });
    let expected = if all_done {
        "SUCCEEDED"
    } else if any_failed || stats.stopped.is_some() {
        "FAILED"
    } else if all_done_or_dropped && !dropped_hosts.is_empty() {
        "DEGRADED"
    } else {
        "CANCELLED"
    };
    if state != expected {
        bad.push(format!("the run is {state}, its entries imply {expected}"));
    }
    if stats.failed_lines > 0 && state == "SUCCEEDED" {
        bad.push(format!(
            "{} injected failures ran, yet the run SUCCEEDED",
            stats.failed_lines
        ));
    }
    let want_code = match state.as_str() {
        "SUCCEEDED" => 0,
        "FAILED" => 1,
        "DEGRADED" => 4,
        _ => 130,
    };
    if code != want_code {
        bad.push(format!(
            "the submitter exited {code} for a {state} run (expected {want_code}):\n{out}\n{err}"
        ));
    }
    if !out.contains(&format!("state     {state}")) {
        bad.push(format!(
            "the submitter's recap does not say {state}:\n{out}"
        ));
    }
    if let Some(m) = &stats.stopped
        && (!m.contains("was interrupted on worker")
            || !(out.contains(m.as_str()) || err.contains(m.as_str())))
    {
        bad.push(format!(
            "the run stopped ({m}) and the submitter does not say so:\n{out}\n{err}"
        ));
    }
    stats.secs = started.elapsed().as_secs_f64();
    (stats, bad)
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_under_kills_stops_and_failures_keep_every_property() {
    let size = Size::from_env();
    eprintln!(
        "workers_stress: seed {} (STRESS_SEED={} replays it): {} rounds of {} entries over {} \
         hosts, {}-{} workers, up to {} faults a round",
        size.seed,
        size.seed,
        size.rounds,
        size.entries,
        size.hosts,
        size.workers.0,
        size.workers.1,
        size.faults
    );
    let w = World::start(size.hosts).await;
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut totals = RoundStats::default();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for r in 0..size.rounds {
        let (stats, bad) = round(&w, &size, r).await;
        eprintln!(
            "round {r}: {} in {:.1}s (exit {}), {} workers, {} kills, {} long stops, {} short \
             stops, {} failures planned / {} ran, {} command runs, {} entries run again, {} \
             commands killed on their host ({} of stopped workers, the last {:.1}s after the stop), {} \
             completions lost to a fault{}{}",
            stats.outcome,
            stats.secs,
            stats.exit,
            stats.workers,
            stats.kills,
            stats.long_stops,
            stats.short_stops,
            stats.failures_planned,
            stats.failed_lines,
            stats.attempts,
            stats.reruns,
            stats.killed_commands,
            stats.stopped_killed,
            stats.stop_to_kill,
            stats.lost_completions,
            stats
                .budget
                .map(|b| format!("; budget {b}: {} hosts dropped", stats.dropped_hosts))
                .unwrap_or_default(),
            stats
                .stopped
                .as_deref()
                .map(|m| format!("; stopped: {m}"))
                .unwrap_or_default(),
        );
        *outcomes.entry(stats.outcome.clone()).or_default() += 1;
        totals.kills += stats.kills;
        totals.long_stops += stats.long_stops;
        totals.short_stops += stats.short_stops;
        totals.failed_lines += stats.failed_lines;
        totals.attempts += stats.attempts;
        totals.reruns += stats.reruns;
        totals.killed_commands += stats.killed_commands;
        totals.stopped_killed += stats.stopped_killed;
        totals.stop_to_kill = totals.stop_to_kill.max(stats.stop_to_kill);
        totals.lost_completions += stats.lost_completions;
        for b in bad {
            eprintln!("  VIOLATION round {r}: {b}");
            failures.push(format!("round {r}: {b}"));
        }
    }
    eprintln!(
        "workers_stress: {} rounds in {:.1}s: outcomes {outcomes:?}; {} kills, {} long stops, {} \
         short stops, {} injected failures ran, {} command runs, {} entries run again, {} \
         commands killed on their host ({} of stopped workers, the last {:.1}s after the stop), \
         {} completions lost to a fault",
        size.rounds,
        started.elapsed().as_secs_f64(),
        totals.kills,
        totals.long_stops,
        totals.short_stops,
        totals.failed_lines,
        totals.attempts,
        totals.reruns,
        totals.killed_commands,
        totals.stopped_killed,
        totals.stop_to_kill,
        totals.lost_completions,
    );
    assert!(
        failures.is_empty(),
        "seed {} (STRESS_SEED={} replays it): {} violations:\n{}",
        size.seed,
        size.seed,
        failures.len(),
        failures.join("\n")
    );
}
