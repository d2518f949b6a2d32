//! Release safety over real SSH (sshd "hosts" on loopback, the real `deploy` binary): the deploy
//! lock holds against other runs — also of the same user — and is kept by a resumed run;
//! `deploy lock status|release` tell stale locks from live ones; `deploy status` and
//! `deploy rollback` show and switch versions through the rolling window; a redeploy never
//! unpacks over the live release.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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
fn locks_won(out: &Output) -> Vec<String> {
    events(out)
        .iter()
        .filter(|e| {
            e["event"] == "task_finished"
                && e["command"] == "release_lock"
                && e["outcome"]["status"] == "succeeded"
        })
        .map(|e| e["host"].as_str().unwrap().to_string())
        .collect()
}

/// The most chains of the rolling stage in flight at once: from the switch (`command`)
/// starting to the lock's release finishing.
fn max_in_flight(out: &Output, command: &str) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    for e in events(out) {
        if e["event"] == "task_started" && e["command"] == command {
            now += 1;
            max = max.max(now);
        }
        if e["event"] == "task_finished" && e["command"] == "release_unlock" {
            now = now.saturating_sub(1);
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

/// `n` deploys of the same version started at once on the same hosts: every host has exactly
/// one winner; every loser fails naming the run id of the host's winner; a lock is never
/// removed by a run that does not hold it, and a run that won every host leaves no lock.
fn race(n: usize) {
    let fleet = Fleet::start(2, "", "    min_nodes_up: 1\n");
    let artifact = fleet.artifact("1.0.0");
    let children: Vec<Child> = (0..n)
        .map(|_| fleet.spawn(&["--component", &artifact, "--output", "json"]))
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let ids: Vec<String> = outs.iter().map(run_id).collect();
    let won: Vec<Vec<String>> = outs.iter().map(locks_won).collect();
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
    let winner = |host: &str| {
        let winners: Vec<usize> = (0..n)
            .filter(|&i| won[i].iter().any(|h| h == host))
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "{host}: winners {winners:?}\n{}",
            report()
        );
        winners[0]
    };
    let winners = [winner("web1"), winner("web2")];
    for i in 0..n {
        // The lock attempts it lost, each naming the host's winner.
        let lost: Vec<(String, String)> = events(&outs[i])
            .iter()
            .filter(|e| {
                e["event"] == "task_finished"
                    && e["command"] == "release_lock"
                    && e["outcome"]["status"] == "failed"
            })
            .map(|e| {
                (
                    e["host"].as_str().unwrap().to_string(),
                    e["outcome"]["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if winners.contains(&i) && won[i].len() == 2 {
            continue;
        }
        assert_ne!(outs[i].status.code(), Some(0), "{}", report());
        assert!(
            !lost.is_empty(),
            "run {} lost no lock\n{}",
            ids[i],
            report()
        );
        for (host, message) in lost {
            let holder = &ids[winners[if host == "web1" { 0 } else { 1 }]];
            assert!(
                message.contains(&format!("is locked by run {holder} (user ")),
                "run {} lost {host} without naming the holder {holder}: {message}",
                ids[i]
            );
        }
    }
    eprintln!("{n} deploys at once: the hosts' winners are runs {winners:?}");
    match (0..n).find(|&i| won[i].len() == 2) {
        Some(i) => {
            // One run won every host: it deployed and released its locks.
            assert_eq!(outs[i].status.code(), Some(0), "{}", report());
            for h in fleet.hosts() {
                assert!(!fleet.lock(h).exists(), "web{h} still locked\n{}", report());
                assert_eq!(fleet.current(h), "releases/1.0.0");
            }
            assert_eq!(
                outs.iter().filter(|o| o.status.code() == Some(0)).count(),
                1
            );
        }
        None => {
            // Each host has its own winner, which failed on the other host: each lock is
            // still its winner's (no loser removed it) until the coming `finally` frees it.
            for (h, host) in [(1, "web1"), (2, "web2")] {
                let i = (0..n).find(|&i| won[i].iter().any(|w| w == host)).unwrap();
                assert_eq!(fleet.holder(h).as_deref(), Some(ids[i].as_str()));
            }
        }
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

/// A run that failed keeps its locks; another run — the same user's — is refused naming it;
/// the resumed run is accepted by its own locks, finishes and releases them.
#[test]
fn a_resumed_run_keeps_its_lock_and_another_run_is_refused() {
    let fleet = Fleet::start(2, "", "");
    let ok = fleet.file("ok");
    std::fs::write(
        fleet.config(),
        std::fs::read_to_string(fleet.config()).unwrap()
            + &format!(
                "    min_nodes_up: 1\n    start: 'test -f {}'\n",
                ok.display()
            ),
    )
    .unwrap();
    let artifact = fleet.artifact("1.0.0");
    let first = fleet.deploy(&["--component", &artifact]);
    assert_eq!(first.status.code(), Some(1), "{}", text(&first.stderr));
    let id = run_id(&first);
    for h in fleet.hosts() {
        assert_eq!(fleet.holder(h).as_deref(), Some(id.as_str()), "web{h}");
    }

    let second = fleet.deploy(&["--component", &artifact]);
    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is locked by run {id} (user ")),
        "{stderr}"
    );
    assert_ne!(run_id(&second), id);
    for h in fleet.hosts() {
        assert_eq!(fleet.holder(h).as_deref(), Some(id.as_str()), "web{h}");
    }

    std::fs::write(&ok, "").unwrap();
    let resumed = fleet.deploy(&["runs", "resume", &id]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed.stderr));
    for h in fleet.hosts() {
        assert!(!fleet.lock(h).exists(), "web{h} is still locked");
        assert_eq!(fleet.current(h), "releases/1.0.0");
    }
}

/// `deploy lock status` tells a live run's lock from stale ones (finished run, run not in the
/// store); `deploy lock release` frees stale locks only, a live one with --force.
#[test]
fn lock_status_shows_stale_locks_and_lock_release_frees_only_those() {
    let fleet = Fleet::start(2, "", "");
    let (go, fail) = (fleet.file("go"), fleet.file("fail"));
    std::fs::write(
        fleet.config(),
        std::fs::read_to_string(fleet.config()).unwrap()
            + &format!(
                "    min_nodes_up: 1\n    start: 'test ! -f {fail} && while [ ! -f {go} ]; do sleep 0.05; done'\n",
                fail = fail.display(),
                go = go.display()
            ),
    )
    .unwrap();
    let artifact = fleet.artifact("1.0.0");

    // A live run: it holds both locks while web1's start waits.
    let live = fleet.spawn(&["--component", &artifact]);
    wait_until("the running deploy holds both locks", || {
        fleet.hosts().all(|h| fleet.holder(h).is_some())
    });
    let holder = fleet.holder(1).unwrap();
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
    let out = live.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(fleet.hosts().all(|h| !fleet.lock(h).exists()));

    // A failed run leaves its locks: stale, its run is finished. web2's lock names a run
    // this store never saw: stale too.
    std::fs::write(&fail, "").unwrap();
    let failed = fleet.deploy(&["--component", &artifact, "--redeploy"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    let id = run_id(&failed);
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
        format!("run {id} is finished (FAILED)")
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
        stdout.contains("stage \"Roll back hello\": 3 hosts, at most 1 at a time"),
        "{stdout}"
    );
    let out = fleet.deploy(&["rollback", "--dry-run", "--output", "json"]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["stages"][1]["concurrency"], 1, "{plan}");
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
    assert_eq!(max_in_flight(&out, "rollback"), 1, "min_nodes_up 2 of 3");
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
