//! Release safety over real SSH (sshd "hosts" on loopback, the real `deploy` binary): the deploy
//! lock holds against other runs — also of the same user — one run at a time, and every run
//! frees what it took in its `finally` stage, failed or not; a controller killed with SIGKILL
//! (no `finally`) keeps its locks, which its resumed run holds still and any other run is
//! refused by; `deploy lock status|release` tell stale locks (lease expired, run finished, run
//! unknown) from live ones; `deploy status` and `deploy rollback` show and switch versions
//! through the rolling window; a redeploy never unpacks over the live release.

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use deployer_remote::testing::TestSshd;
use serde_json::Value;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fleet of sshd hosts `web1`..`webN` running the `hello` service, a release config for
/// them, a run store file shared by every `deploy` the test starts, and artifacts 1.0.0 and
/// 2.0.0.
struct Fleet {
    dir: tempfile::TempDir,
    _hosts: Vec<TestSshd>,
    n: usize,
}

impl Fleet {
    /// `service` is appended to the `hello` service's section (indented four spaces).
    fn start(n: usize, top: &str, service: &str) -> Fleet {
        let hosts: Vec<TestSshd> = (0..n)
            .map(|_| {
                TestSshd::builder()
                    .address("127.0.0.1")
                    .start()
                    .expect("sshd starts")
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let artifacts = dir.path().join("artifacts");
        std::fs::create_dir(&artifacts).unwrap();
        let examples = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"));
        std::fs::copy(
            examples.join("artifacts/hello-1.0.0.tar.gz"),
            artifacts.join("hello-1.0.0.tar.gz"),
        )
        .unwrap();
        // 2.0.0: the same files, another VERSION.
        let pkg = dir.path().join("pkg");
        std::fs::create_dir(&pkg).unwrap();
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(examples.join("artifacts/hello-1.0.0.tar.gz"))
            .arg("-C")
            .arg(&pkg)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::write(pkg.join("VERSION"), "2.0.0\n").unwrap();
        let status = Command::new("tar")
            .arg("-czf")
            .arg(artifacts.join("hello-2.0.0.tar.gz"))
            .arg("-C")
            .arg(&pkg)
            .args(["VERSION", "bin", "public"])
            .status()
            .unwrap();
        assert!(status.success());

        let mut known = String::new();
        let mut ssh_config = String::new();
        let mut names = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            known.push_str(&std::fs::read_to_string(h.known_hosts()).unwrap());
            ssh_config.push_str(&format!(
                "Host web{}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n",
                i + 1,
                h.address(),
                h.port(),
                h.user(),
                h.client_key().display()
            ));
            names.push(format!("web{}", i + 1));
        }
        std::fs::write(dir.path().join("known_hosts"), known).unwrap();
        std::fs::write(dir.path().join("ssh_config"), ssh_config).unwrap();
        let fleet = Fleet {
            dir,
            _hosts: hosts,
            n,
        };
        std::fs::create_dir(fleet.root()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(fleet.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let config = format!(
            "platform: release\n\
             deploy_to: {root}/{{host}}\n\
             ssh:\n  known_hosts: {kh}\n  config: {cfg}\n  agent: false\n\
             {top}\
             hostgroup:\n  web: [{names}]\n\
             service:\n  hello:\n    hosts: [web]\n    shared_dirs: [log]\n{service}",
            root = fleet.root().display(),
            kh = fleet.dir.path().join("known_hosts").display(),
            cfg = fleet.dir.path().join("ssh_config").display(),
            names = names.join(", "),
        );
        std::fs::write(fleet.dir.path().join("deploy.yaml"), config).unwrap();
        fleet
    }

    /// Where the hosts' services live (all "hosts" are this machine, each in its own
    /// directory), and the markers their commands look at: a directory the login user may
    /// write to, unique per test.
    fn root(&self) -> PathBuf {
        PathBuf::from(format!(
            "/tmp/deployer-safety-{}",
            self.dir.path().file_name().unwrap().to_string_lossy()
        ))
    }

    fn config(&self) -> String {
        self.dir.path().join("deploy.yaml").display().to_string()
    }

    fn artifact(&self, version: &str) -> String {
        self.dir
            .path()
            .join(format!("artifacts/hello-{version}.tar.gz"))
            .display()
            .to_string()
    }

    /// A marker file the service's commands look at.
    fn file(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// The `hello` directory of host `web<n>`.
    fn srv(&self, n: usize) -> PathBuf {
        self.root().join(format!("web{n}/hello"))
    }

    fn hosts(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.n
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deploy"));
        cmd.env(
            "DEPLOYER_STORE",
            self.dir.path().join("runs.db").display().to_string(),
        )
        .arg("--config")
        .arg(self.config())
        .args(args)
        .stdin(Stdio::null());
        cmd
    }

    fn deploy(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("the binary runs")
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts")
    }

    /// Where `current` points on web<n>.
    fn current(&self, n: usize) -> String {
        std::fs::read_link(self.srv(n).join("current"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn lock(&self, n: usize) -> PathBuf {
        self.srv(n).join(".deploy.lock")
    }

    /// The run id in a lock's `holder` file.
    fn holder(&self, n: usize) -> Option<String> {
        std::fs::read_to_string(self.lock(n).join("holder"))
            .ok()
            .map(|h| h.trim().to_string())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.root());
    }
}

/// The run id a `deploy` printed (`run <id>` on stderr, or the JSON events' `run_id`).
fn run_id(out: &Output) -> String {
    if let Some(id) = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|e| e["run_id"].as_str().map(str::to_string))
    {
        return id;
    }
    text(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("run ").map(|id| id.trim().to_string()))
        .expect("deploy names its run")
}

fn events(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The hosts on which a run's `release_lock` succeeded.
fn locks_won(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| {
            e["event"] == "task_finished"
                && e["command"] == "release_lock"
                && e["outcome"]["status"] == "succeeded"
        })
        .map(|e| e["host"].as_str().unwrap().to_string())
        .collect()
}

/// How a run's `release_unlock` ended on `host` (`succeeded`, `skipped`…), if it ended.
fn unlock_on(events: &[Value], host: &str) -> Option<String> {
    events
        .iter()
        .find(|e| {
            e["event"] == "task_finished" && e["command"] == "release_unlock" && e["host"] == host
        })
        .map(|e| e["outcome"]["status"].as_str().unwrap().to_string())
}

/// The most chains of the rolling stage in flight at once: a host's chain from its switch
/// (`switch` starting) to its last step (`last` finishing on that host).
fn max_in_flight(events: &[Value], switch: &str, last: &str) -> usize {
    let mut in_flight = std::collections::BTreeSet::new();
    let mut max = 0;
    for e in events {
        let host = e["host"].as_str().unwrap_or_default().to_string();
        if e["event"] == "task_started" && e["command"] == switch {
            in_flight.insert(host);
            max = max.max(in_flight.len());
        } else if e["event"] == "task_finished" && e["command"] == last {
            in_flight.remove(&host);
        }
    }
    max
}

/// Waits (at most 20 s) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `start` command that waits (at most 30 s) until `file` exists, and fails without it: the
/// test holds an activation there.
fn waits_for(file: &Path) -> String {
    format!(
        "i=0; while [ ! -f {f} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; test -f {f}",
        f = file.display()
    )
}

/// Whether an event is the start of the service's `start` command (the activation is under
/// way: the host is locked and switched).
fn start_started(e: &Value) -> bool {
    e["event"] == "task_started" && e["command"] == "execute_command"
}

/// A `deploy … --output json` running in the background, its events read up to one the test
/// waited for.
struct Running {
    child: Child,
    events: Vec<Value>,
    rest: Lines<BufReader<ChildStdout>>,
}

impl Fleet {
    /// Appends lines to the `hello` service's section (the config's last).
    fn add_to_service(&self, lines: &str) {
        let config = std::fs::read_to_string(self.config()).unwrap();
        std::fs::write(self.config(), config + lines).unwrap();
    }

    /// Starts `deploy ARGS --output json` and reads its events until one satisfies `until`.
    fn start_until(&self, args: &[&str], until: impl Fn(&Value) -> bool) -> Running {
        let mut child = self.spawn(&[args, &["--output", "json"]].concat());
        let mut rest = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut events = Vec::new();
        for line in rest.by_ref() {
            let Ok(event) = serde_json::from_str::<Value>(&line.unwrap()) else {
                continue;
            };
            let done = until(&event);
            events.push(event);
            if done {
                return Running {
                    child,
                    events,
                    rest,
                };
            }
        }
        let out = child.wait_with_output().unwrap();
        panic!(
            "deploy ended (exit {:?}) before the event awaited\n{events:#?}\n{}",
            out.status.code(),
            text(&out.stderr)
        );
    }
}

impl Running {
    /// The run's id, from its events.
    fn id(&self) -> String {
        self.events
            .iter()
            .find_map(|e| e["run_id"].as_str().map(str::to_string))
            .expect("the events name their run")
    }

    /// SIGKILL: the controller has no chance to clean up, nor to run its `finally` stages.
    fn kill(mut self) -> Output {
        self.child.kill().unwrap();
        self.child.wait_with_output().unwrap()
    }

    fn interrupt(&self) {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Cancels twice (SIGINT, and again once the first is handled: running tasks stop and the
    /// `finally` stages are skipped); the exit status, stderr and every event.
    fn cancel_twice(mut self) -> (Output, Vec<Value>) {
        self.interrupt();
        let mut stderr = BufReader::new(self.child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        for line in stderr.by_ref() {
            let line = line.unwrap();
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("cancelling: no new tasks start") {
                break;
            }
        }
        self.interrupt();
        for line in stderr {
            seen.push_str(&line.unwrap());
            seen.push('\n');
        }
        let (mut out, events) = self.wait();
        out.stderr = seen.into_bytes();
        (out, events)
    }

    /// Waits for the end: the exit status, stderr and every event.
    fn wait(mut self) -> (Output, Vec<Value>) {
        for line in self.rest.by_ref() {
            if let Ok(event) = serde_json::from_str(&line.unwrap()) {
                self.events.push(event);
            }
        }
        (self.child.wait_with_output().unwrap(), self.events)
    }
}

/// When a run's `event` (`task_started`, `task_finished`) of `command` on `host` happened.
fn when(events: &[Value], event: &str, command: &str, host: &str) -> Option<f64> {
    events
        .iter()
        .find(|e| e["event"] == event && e["command"] == command && e["host"] == host)
        .map(|e| e["timestamp"].as_f64().unwrap())
}

/// `n` deploys of the same version started at once on the same hosts. A host's lock is held by
/// one run at a time: a run takes it only after the run before it began freeing it (a run
/// that lost a host frees what it took in its `finally` stage, so a run arriving then may take
/// it; when all meet at once, each host has exactly one winner). Every run that did not take
/// every host exits 1, each refusal naming the run id of a run holding the host then; every run
/// frees exactly the locks it took, so no host is left locked whatever the split. At most one
/// run deploys: one that took every host, whose activation waits until the others have ended.
fn race(n: usize) {
    let fleet = Fleet::start(2, "", "");
    let go = fleet.file("go");
    fleet.add_to_service(&format!(
        "    min_nodes_up: 1\n    start: '{}'\n",
        waits_for(&go)
    ));
    let artifact = fleet.artifact("1.0.0");
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..n {
        let child = fleet.spawn(&["--component", &artifact, "--output", "json"]);
        let tx = tx.clone();
        std::thread::spawn(move || tx.send((i, child.wait_with_output().unwrap())));
    }
    let mut ended: Vec<Option<Output>> = (0..n).map(|_| None).collect();
    let mut timeouts = 0;
    while ended.iter().any(Option::is_none) {
        if ended.iter().filter(|o| o.is_some()).count() + 1 >= n {
            std::fs::write(&go, "").unwrap();
        }
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok((i, out)) => ended[i] = Some(out),
            Err(_) => {
                // Runs held in their activation: more than one proceeded. Let them end; the
                // checks below say which.
                std::fs::write(&go, "").unwrap();
                timeouts += 1;
                assert!(timeouts < 3, "the deploys do not end");
            }
        }
    }
    let outs: Vec<Output> = ended.into_iter().map(Option::unwrap).collect();
    let events: Vec<Vec<Value>> = outs.iter().map(events).collect();
    let ids: Vec<String> = outs.iter().map(run_id).collect();
    let won: Vec<Vec<String>> = events.iter().map(|e| locks_won(e)).collect();
    let report = || {
        outs.iter()
            .zip(&ids)
            .map(|(o, id)| {
                format!(
                    "run {id}: exit {:?}\n{}\n{}",
                    o.status.code(),
                    text(&o.stdout),
                    text(&o.stderr)
                )
            })
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    let mut holders = Vec::new();
    for host in ["web1", "web2"] {
        // Who held the host, in the order they took it, from taking to having freed it.
        let mut held: Vec<(usize, f64, f64, f64, f64)> = (0..n)
            .filter(|&i| won[i].iter().any(|h| h == host))
            .map(|i| {
                let at = |event, command| {
                    when(&events[i], event, command, host).unwrap_or_else(|| {
                        panic!(
                            "run {}: no {event} {command} on {host}\n{}",
                            ids[i],
                            report()
                        )
                    })
                };
                (
                    i,
                    at("task_started", "release_lock"),
                    at("task_finished", "release_lock"),
                    at("task_started", "release_unlock"),
                    at("task_finished", "release_unlock"),
                )
            })
            .collect();
        held.sort_by(|a, b| a.2.total_cmp(&b.2));
        assert!(!held.is_empty(), "nobody took {host}\n{}", report());
        for pair in held.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            assert!(
                after.2 > before.3,
                "{host}: run {} took the lock before run {} began freeing it\n{}",
                ids[after.0],
                ids[before.0],
                report()
            );
        }
        // Every refusal names a run that held the host meanwhile.
        for i in 0..n {
            let Some(refused) = events[i].iter().find(|e| {
                e["event"] == "task_finished"
                    && e["command"] == "release_lock"
                    && e["host"] == host
                    && e["outcome"]["status"] == "failed"
            }) else {
                continue;
            };
            let message = refused["outcome"]["message"].as_str().unwrap();
            let (tried, refused) = (
                when(&events[i], "task_started", "release_lock", host).unwrap(),
                refused["timestamp"].as_f64().unwrap(),
            );
            let meanwhile = |h: &(usize, f64, f64, f64, f64)| h.1 < refused && h.4 > tried;
            // A run meeting the lock between the holder's `mkdir` and its writing the holder
            // file cannot tell the run id.
            let being_taken =
                message.contains(" is locked by nobody yet (the lock is being taken)");
            let named = held
                .iter()
                .find(|h| message.contains(&format!(" is locked by run {} (", ids[h.0])));
            match named {
                Some(h) => assert!(
                    meanwhile(h),
                    "run {} was refused {host} by run {}, which did not hold it then\n{}",
                    ids[i],
                    ids[h.0],
                    report()
                ),
                None => assert!(
                    being_taken && held.iter().any(meanwhile),
                    "run {} was refused {host} without naming a run that held it: {message}\n{}",
                    ids[i],
                    report()
                ),
            }
        }
        holders.push(held.iter().map(|h| h.0).collect::<Vec<_>>());
    }
    eprintln!("{n} deploys at once: the hosts' holders, in turn, are runs {holders:?}");
    for i in 0..n {
        // Every run frees what it took, and only that.
        for host in ["web1", "web2"] {
            let unlock = unlock_on(&events[i], host);
            if won[i].iter().any(|h| h == host) {
                assert_eq!(unlock.as_deref(), Some("succeeded"), "{}", report());
            } else {
                assert_ne!(unlock.as_deref(), Some("succeeded"), "{}", report());
            }
        }
        if won[i].len() < 2 {
            assert_eq!(outs[i].status.code(), Some(1), "{}", report());
        }
    }
    let deployed: Vec<usize> = (0..n)
        .filter(|&i| outs[i].status.code() == Some(0))
        .collect();
    assert!(deployed.len() <= 1, "{deployed:?}\n{}", report());
    if let [i] = deployed[..] {
        assert_eq!(won[i].len(), 2, "{}", report());
        for h in fleet.hosts() {
            assert_eq!(fleet.current(h), "releases/1.0.0");
        }
    }
    for h in fleet.hosts() {
        assert!(!fleet.lock(h).exists(), "web{h} still locked\n{}", report());
    }
}

#[test]
fn two_deploys_at_once_have_one_winner_per_host() {
    race(2);
}

#[test]
fn three_deploys_at_once_have_one_winner_per_host() {
    race(3);
}

/// A controller killed (SIGKILL) during the activation keeps its locks: its `finally` stage
/// never ran. Another run — the same user's — is refused naming it and leaves the locks alone;
/// the resumed run is the same run, holds them still (its lock tasks are done earlier, not
/// taken again), finishes the activation and frees them.
#[test]
fn a_resumed_run_keeps_its_lock_and_another_run_is_refused() {
    let fleet = Fleet::start(2, "", "");
    let go = fleet.file("go");
    fleet.add_to_service(&format!(
        "    min_nodes_up: 1\n    start: '{}'\n",
        waits_for(&go)
    ));
    let artifact = fleet.artifact("1.0.0");
    let first = fleet.start_until(
        &["--component", &artifact, "--lease-ttl", "1s"],
        start_started,
    );
    let id = first.id();
    let killed = first.kill();
    assert_eq!(killed.status.code(), None, "killed by a signal");
    for h in fleet.hosts() {
        assert_eq!(fleet.holder(h).as_deref(), Some(id.as_str()), "web{h}");
    }

    std::fs::write(&go, "").unwrap();
    let second = fleet.deploy(&["--component", &artifact, "--output", "json"]);
    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is locked by run {id} (user ")),
        "{stderr}"
    );
    assert_ne!(run_id(&second), id);
    assert!(locks_won(&events(&second)).is_empty(), "{stderr}");
    for h in fleet.hosts() {
        assert_eq!(fleet.holder(h).as_deref(), Some(id.as_str()), "web{h}");
    }

    // Its lease (1 s) expires; the interrupted `start` is not idempotent: --force.
    let resumed = fleet.deploy(&[
        "runs", "resume", &id, "--force", "--wait", "--output", "json",
    ]);
    let stderr = text(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(0), "{stderr}");
    let resumed = events(&resumed);
    for host in ["web1", "web2"] {
        // The resume takes its lock again (it may have been freed as stale meanwhile):
        // the lock still names this run, so taking it succeeds.
        assert!(
            resumed.iter().any(|e| e["event"] == "task_finished"
                && e["command"] == "release_lock"
                && e["host"] == host
                && e["outcome"]["status"] == "succeeded"),
            "{host}: the run's own lock is taken again\n{stderr}"
        );
        assert_eq!(
            unlock_on(&resumed, host).as_deref(),
            Some("succeeded"),
            "{stderr}"
        );
    }
    for h in fleet.hosts() {
        assert!(!fleet.lock(h).exists(), "web{h} is still locked");
        assert_eq!(fleet.current(h), "releases/1.0.0");
    }
}

/// The acceptance: a controller killed (SIGKILL) after it locked leaves its lock;
/// `deploy lock status` shows it live while the run's lease is valid and STALE once the lease
/// (2 s) expired; a deploy is still refused by it; `deploy lock release` frees it, and the next
/// deploy runs.
#[test]
fn a_killed_controllers_lock_goes_stale_with_its_lease_and_lock_release_frees_it() {
    let fleet = Fleet::start(1, "", "");
    let go = fleet.file("go");
    fleet.add_to_service(&format!("    start: '{}'\n", waits_for(&go)));
    // A lease of 2 s, renewed every third of it: still valid 1.3 s after the kill, time enough
    // to ask, and over within 2 s.
    let run = fleet.start_until(
        &["--component", &fleet.artifact("1.0.0"), "--lease-ttl", "2s"],
        start_started,
    );
    let id = run.id();
    let killed = Instant::now();
    run.kill();
    assert_eq!(fleet.holder(1).as_deref(), Some(id.as_str()));

    let lock = || {
        let out = fleet.deploy(&["lock", "status", "--output", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows[0]["host"], "web1");
        assert_eq!(rows[0]["locked"], true, "{rows}");
        assert_eq!(rows[0]["lock"]["run_id"], id.as_str(), "{rows}");
        rows[0]["lock"].clone()
    };
    let live = lock();
    let asked = killed.elapsed();
    assert_eq!(
        live["stale"], false,
        "asked {asked:?} after the kill: {live}"
    );
    let reason = live["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("run {id} is RUNNING, driven by ")),
        "{reason}"
    );

    let mut stale = Value::Null;
    wait_until("the lock is stale", || {
        stale = lock();
        stale["stale"] == true
    });
    let asked = killed.elapsed();
    assert!(
        asked >= Duration::from_secs(1),
        "stale {asked:?} after the kill, within the lease: {stale}"
    );
    assert_eq!(
        stale["reason"],
        format!(
            "run {id} is RUNNING but no controller drives it (its lease expired; resuming it \
             takes the lock again)"
        )
    );
    let out = fleet.deploy(&["lock", "status"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("STALE  {id}")), "{stdout}");

    // Stale is for people to judge: a deploy is still refused until the lock is released.
    std::fs::write(&go, "").unwrap();
    let out = fleet.deploy(&["--component", &fleet.artifact("2.0.0")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is locked by run {id} (user ")),
        "{stderr}"
    );
    assert_eq!(fleet.holder(1).as_deref(), Some(id.as_str()));

    let out = fleet.deploy(&["lock", "release"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("freed web1 hello") && stdout.contains(&id),
        "{stdout}"
    );
    assert!(!fleet.lock(1).exists());

    let out = fleet.deploy(&["--component", &fleet.artifact("2.0.0")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fleet.current(1), "releases/2.0.0");
    assert!(!fleet.lock(1).exists());
}

/// `deploy lock status` tells a live run's lock from stale ones (a run cancelled twice, which
/// skipped its `finally` stage and is finished; a run not in the store); `deploy lock release`
/// frees stale locks only, a live one with --force.
#[test]
fn lock_status_shows_stale_locks_and_lock_release_frees_only_those() {
    let fleet = Fleet::start(2, "", "");
    let go = fleet.file("go");
    fleet.add_to_service(&format!(
        "    min_nodes_up: 1\n    start: '{}'\n",
        waits_for(&go)
    ));
    let artifact = fleet.artifact("1.0.0");

    // A live run: it holds both locks while web1's start waits.
    let live = fleet.start_until(&["--component", &artifact], start_started);
    let holder = live.id();
    for h in fleet.hosts() {
        assert_eq!(fleet.holder(h).as_deref(), Some(holder.as_str()), "web{h}");
    }
    let out = fleet.deploy(&["lock", "status"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!stdout.contains("STALE"), "{stdout}");
    assert_eq!(
        stdout.matches(&format!("locked  {holder}")).count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("is RUNNING, driven by"), "{stdout}");
    let out = fleet.deploy(&["lock", "release"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.matches("refused web").count(), 2, "{stdout}");
    assert!(stdout.contains("use --force"), "{stdout}");
    assert!(fleet.hosts().all(|h| fleet.lock(h).exists()));
    std::fs::write(&go, "").unwrap();
    let (out, _) = live.wait();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(fleet.hosts().all(|h| !fleet.lock(h).exists()));

    // A run cancelled twice skips its `finally` stage: its locks stay, stale (the run is
    // finished). web2's lock names a run this store never saw: stale too.
    std::fs::remove_file(&go).unwrap();
    let cancelled = fleet.start_until(&["--component", &artifact, "--redeploy"], start_started);
    let id = cancelled.id();
    let (out, events) = cancelled.cancel_twice();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert_eq!(locks_won(&events).len(), 2, "{}", text(&out.stderr));
    for host in ["web1", "web2"] {
        assert_eq!(unlock_on(&events, host), None, "{}", text(&out.stderr));
    }
    for h in fleet.hosts() {
        assert_eq!(fleet.holder(h).as_deref(), Some(id.as_str()), "web{h}");
    }
    let stranger = "0190f5c2-7b1a-7cc3-9a51-2f3e0c1d2b4a";
    std::fs::write(fleet.lock(2).join("holder"), format!("{stranger}\n")).unwrap();
    let out = fleet.deploy(&["lock", "status", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["host"], "web1");
    assert_eq!(rows[0]["lock"]["run_id"], id.as_str());
    assert_eq!(rows[0]["lock"]["stale"], true);
    assert_eq!(
        rows[0]["lock"]["reason"],
        format!("run {id} is finished (CANCELLED)")
    );
    assert!(rows[0]["lock"]["user"].is_string() && rows[0]["lock"]["age_seconds"].is_u64());
    assert_eq!(rows[1]["lock"]["stale"], true);
    assert_eq!(
        rows[1]["lock"]["reason"],
        format!("run {stranger} is not in the run store")
    );
    let out = fleet.deploy(&["lock", "status"]);
    assert_eq!(text(&out.stdout).matches("STALE").count(), 2);
    let out = fleet.deploy(&["lock", "release"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("freed web1 hello") && stdout.contains(&id),
        "{stdout}"
    );
    assert!(stdout.contains("freed web2 hello") && stdout.contains(stranger));
    assert!(fleet.hosts().all(|h| !fleet.lock(h).exists()));

    // A lock being taken (no holder yet) is live: refused, unless --force.
    std::fs::create_dir_all(fleet.lock(1)).unwrap();
    let out = fleet.deploy(&["lock", "release", "--hosts", "web1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("the lock is being taken"));
    assert!(fleet.lock(1).exists());
    let out = fleet.deploy(&["lock", "release", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("freed web1 hello"));
    assert!(!fleet.lock(1).exists());
}

/// After two deploys, `deploy status` shows 2.0.0 live and 1.0.0 before it; `deploy
/// rollback` refuses an absent version naming it and what the hosts have, needs --yes
/// without a terminal, shows its plan with --dry-run, and with --yes brings every host back to
/// 1.0.0 — started again, one host at a time (min_nodes_up 2 of 3) — under the lock.
#[test]
fn status_and_rollback_through_the_rolling_window() {
    let fleet = Fleet::start(
        3,
        "",
        "    min_nodes_up: 2\n    start: '{current}/bin/hello > {current}/log/served'\n",
    );
    for v in ["1.0.0", "2.0.0"] {
        let out = fleet.deploy(&["--component", &fleet.artifact(v)]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let out = fleet.deploy(&["status"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for h in fleet.hosts() {
        assert!(
            stdout.contains(&format!("web{h}  hello    2.0.0  1.0.0     -")),
            "{stdout}"
        );
    }
    let out = fleet.deploy(&["status", "--output", "json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    for row in rows.as_array().unwrap() {
        assert_eq!(row["live"], "2.0.0");
        assert_eq!(row["previous"], serde_json::json!(["1.0.0"]));
        assert_eq!(row["lock"], Value::Null);
    }

    let out = fleet.deploy(&["rollback", "--to", "9.9", "--yes"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot roll back to 9.9: web1 (hello): has no 9.9 (it has 2.0.0, 1.0.0)"),
        "{stderr}"
    );
    let out = fleet.deploy(&["rollback"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("add --yes"), "{stderr}");
    let out = fleet.deploy(&["rollback", "--dry-run"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("web3  hello    2.0.0  1.0.0  -"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stage \"Roll back hello\": 3 hosts, at most 1 at a time\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "stage \"Unlock hello\": 3 hosts, at most 10 at a time (finally: runs whatever happens before it)"
        ),
        "{stdout}"
    );
    let out = fleet.deploy(&["rollback", "--dry-run", "--output", "json"]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages: Vec<&str> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["Lock hosts", "Roll back hello", "Unlock hello"]);
    assert_eq!(plan["stages"][1]["min_hosts_up"], 2, "{plan}");
    let finally: Vec<bool> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["finally"].as_bool().unwrap())
        .collect();
    assert_eq!(
        finally,
        [false, false, true],
        "the unlock runs whatever happens"
    );
    assert_eq!(plan["hosts"][0]["to"], "1.0.0", "{plan}");
    for h in fleet.hosts() {
        assert_eq!(
            fleet.current(h),
            "releases/2.0.0",
            "a dry run changes nothing"
        );
    }

    let out = fleet.deploy(&["rollback", "--yes", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Each host's chain: switch back, then start.
    assert_eq!(
        max_in_flight(&events(&out), "rollback", "execute_command"),
        1,
        "min_nodes_up 2 of 3"
    );
    // Under the lock: each host locked before its chain, unlocked (the finally stage) after
    // every chain ended. Per host: lock, switch back, start, unlock — all ok.
    let events = events(&out);
    let last = |event: &str, command: &str| {
        events
            .iter()
            .filter(|e| e["event"] == event && e["command"] == command)
            .map(|e| e["timestamp"].as_f64().unwrap())
            .fold(f64::NAN, f64::max)
    };
    for host in ["web1", "web2", "web3"] {
        let locked = when(&events, "task_finished", "release_lock", host).unwrap();
        let switched = when(&events, "task_started", "rollback", host).unwrap();
        let unlocked = when(&events, "task_started", "release_unlock", host).unwrap();
        assert!(locked < switched, "{host}");
        assert!(
            unlocked > last("task_finished", "execute_command"),
            "{host}"
        );
        assert_eq!(unlock_on(&events, host).as_deref(), Some("succeeded"));
    }
    let end = events.last().unwrap();
    assert_eq!(end["event"], "run_finished");
    assert_eq!(
        end["stats"],
        serde_json::json!({"succeeded": 12, "done_earlier": 0, "skipped": 0, "failed": 0,
            "cancelled": 0, "not_run": 0, "rolled_back": 0, "dropped": 0}),
        "a rollback asked for is work done, not an automatic rollback"
    );
    for h in fleet.hosts() {
        assert_eq!(fleet.current(h), "releases/1.0.0");
        let served = std::fs::read_to_string(fleet.srv(h).join("shared/log/served")).unwrap();
        assert_eq!(served, "hello 1.0.0\n", "web{h} started 1.0.0 again");
        assert!(!fleet.lock(h).exists());
    }
    let out = fleet.deploy(&["status"]);
    assert!(
        text(&out.stdout).contains("web2  hello    1.0.0  2.0.0"),
        "{}",
        text(&out.stdout)
    );
}

/// A redeploy never unpacks over the live release: a file added to it does not survive, and
/// `current` switches to a fresh copy; `deploy status` shows it as its version, and cleanup
/// keeps the version before it.
#[test]
fn a_redeploy_unpacks_into_a_fresh_directory() {
    let fleet = Fleet::start(1, "keep_releases: 2\n", "");
    for v in ["1.0.0", "2.0.0"] {
        let out = fleet.deploy(&["--component", &fleet.artifact(v)]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    std::fs::write(fleet.srv(1).join("current/extra.txt"), "left over").unwrap();
    let out = fleet.deploy(&["--component", &fleet.artifact("2.0.0"), "--redeploy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let current = fleet.current(1);
    assert!(current.starts_with("releases/2.0.0@"), "{current}");
    assert!(!fleet.srv(1).join("current/extra.txt").exists());
    assert_eq!(
        std::fs::read_to_string(fleet.srv(1).join("current/VERSION")).unwrap(),
        "2.0.0\n"
    );
    assert!(fleet.srv(1).join("current/log").is_symlink());
    // keep_releases 2: 2.0.0's earlier copy goes, 1.0.0 (the way back) stays.
    let mut left: Vec<String> = std::fs::read_dir(fleet.srv(1).join("releases"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "1.0.0".to_string(),
            current["releases/".len()..].to_string()
        ]
    );
    let out = fleet.deploy(&["status"]);
    assert!(
        text(&out.stdout).contains("web1  hello    2.0.0  1.0.0"),
        "{}",
        text(&out.stdout)
    );

    // Again: the fresh copy goes beside the live one, back under the plain name.
    std::fs::write(fleet.srv(1).join("current/extra.txt"), "left over").unwrap();
    let out = fleet.deploy(&["--component", &fleet.artifact("2.0.0"), "--redeploy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fleet.current(1), "releases/2.0.0");
    assert!(!fleet.srv(1).join("current/extra.txt").exists());
}
