//! Issue 17's acceptance test ("Release safety"): the rolling window, the automatic rollback
//! and `deploy rollback`, over real OpenSSH servers on loopback, each "host" running a real
//! long-running HTTP service bound to its own 127.0.x.y address, watched by a prober while the
//! real `deploy` binary works.
//!
//! Every host is one sshd on its own address and one service directory on this machine. A
//! release of the `web` service (`web-<version>.tar.gz`) holds `VERSION`, `bin/serve` (starts
//! `bin/server.py` in the background, bound to the host's address and port, and waits until it
//! answers) and `bin/server.py` (a Python HTTP server answering every GET with the release's
//! version; the broken 3.0.0 exits at start instead, so its check fails). The config's `stop`
//! kills the host's server and waits until it is gone, `check` asks the host's URL with curl.
//! The prober GETs every host's URL over and over while a deploy runs and records how many
//! answered and with which version: at no sample may fewer than `min_nodes_up` answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deployer_remote::testing::TestSshd;
use serde_json::Value;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `s` as a YAML single-quoted scalar.
fn yaml_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A Python 3 the hosts' login user can run, as an absolute path: the ssh session's PATH is
/// not the test's (here `python3` may be a pyenv shim under root's home, which the login user
/// cannot enter). The interpreter behind `python3` comes first, then the system ones.
fn python_for(login_user: &str) -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(out) = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(text(&out.stdout).trim()));
    }
    candidates.push(PathBuf::from("/usr/bin/python3"));
    candidates.push(PathBuf::from("/usr/local/bin/python3"));
    let me = Command::new("id")
        .arg("-un")
        .output()
        .map(|o| text(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // Another login user needs every directory on the way searchable and the file executable
    // by others.
    let reachable = |path: &Path| -> bool {
        use std::os::unix::fs::PermissionsExt;
        let Ok(real) = std::fs::canonicalize(path) else {
            return false;
        };
        if login_user == me {
            return real.is_file();
        }
        real.ancestors()
            .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    };
    candidates
        .iter()
        .find(|p| p.is_absolute() && reachable(p))
        .cloned()
        .ok_or_else(|| {
            format!(
                "no python3 that the login user {login_user} can run (tried {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// `bin/serve`: starts the release's server in the background, detached from the session,
/// bound to the host's address and port (`<deploy_to>/listen`), and waits (at most 3 s) until
/// it answers or has exited. It succeeds either way: whether the service works is the
/// check's to say.
fn serve_script(python: &Path) -> String {
    format!(
        r#"#!/bin/sh
bin=$(dirname "$0")
deploy_to=$(dirname "$(dirname "$bin")")
read -r addr port < "$deploy_to/listen"
setsid {python} "$bin/server.py" "$deploy_to" "$addr" "$port" </dev/null >>"$deploy_to/serve.log" 2>&1 &
pid=$!
i=0
while [ "$i" -lt 150 ]; do
  /usr/bin/curl -fsS -o /dev/null --max-time 1 "http://$addr:$port/" 2>/dev/null && exit 0
  state=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)
  if [ -z "$state" ] || [ "$state" = Z ]; then echo "the server exited" >&2; exit 0; fi
  sleep 0.02
  i=$((i+1))
done
"#,
        python = python.display()
    )
}

/// `bin/server.py`: writes its pid to `<deploy_to>/serve.pid` and answers every GET with the
/// release's version until SIGTERM, then answers the requests in flight and exits; a broken
/// release exits before it listens.
fn server_script(broken: bool) -> String {
    let crash = if broken {
        "sys.exit(\"cannot start: missing configuration\")\n"
    } else {
        ""
    };
    format!(
        r#"import os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

release = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
deploy_to, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(os.path.join(deploy_to, "serve.pid"), "w") as f:
    f.write("%d\n" % os.getpid())
{crash}with open(os.path.join(release, "VERSION")) as f:
    version = f.read().strip().encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(version)))
        self.end_headers()
        self.wfile.write(version)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for requests in flight


deadline = time.monotonic() + 5
while True:
    try:
        server = Server((addr, port), Handler)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.02)
# SIGTERM: stop accepting, answer the requests in flight, exit.
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
server.serve_forever(poll_interval=0.02)
server.server_close()
"#
    )
}

/// What every host answered at one moment: its version, or `None` when it did not answer.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    versions: Vec<Option<String>>,
}

impl Sample {
    fn answered(&self) -> usize {
        self.versions.iter().filter(|v| v.is_some()).count()
    }
}

/// GETs `/` of every address at (nearly) the same moment: all connections are opened first,
/// then every request is sent, then every answer read; a host answered when it sent `200` and
/// a body (its version).
fn snapshot(addrs: &[SocketAddr]) -> Vec<Option<String>> {
    let mut streams: Vec<Option<TcpStream>> = addrs
        .iter()
        .map(|a| TcpStream::connect_timeout(a, Duration::from_millis(300)).ok())
        .collect();
    for slot in &mut streams {
        if let Some(s) = slot {
            let sent = s
                .set_read_timeout(Some(Duration::from_secs(2)))
                .and_then(|_| s.set_write_timeout(Some(Duration::from_secs(2))))
                .and_then(|_| s.write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n"));
            if sent.is_err() {
                *slot = None;
            }
        }
    }
    streams
        .into_iter()
        .map(|s| {
            let mut s = s?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).ok()?;
            let (head, body) = answer.split_once("\r\n\r\n")?;
            let status = head.lines().next()?;
            (status.starts_with("HTTP/1.") && status.split(' ').nth(1) == Some("200"))
                .then(|| body.trim().to_string())
                .filter(|b| !b.is_empty())
        })
        .collect()
}

/// Runs `f` while a prober thread samples every address every 20 ms; returns what `f`
/// returned and the samples taken while it ran.
fn watched<T>(addrs: &[SocketAddr], f: impl FnOnce() -> T) -> (T, Vec<Sample>) {
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let addrs = addrs.to_vec();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let at = started.elapsed();
                samples.push(Sample {
                    at,
                    versions: snapshot(&addrs),
                });
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };
    let out = f();
    stop.store(true, Ordering::SeqCst);
    let samples = prober.join().expect("the prober does not panic");
    (out, samples)
}

/// One host: its sshd and the address and port its service listens on.
struct Host {
    sshd: TestSshd,
    port: u16,
}

/// `n` hosts `web1`..`webN`, each an sshd on 127.0.`block`.`i`, a release config of the
/// `web` service on all of them (`min_nodes_up`, stop/start/check), a run store shared by
/// every `deploy` the test starts, and the artifacts it builds.
struct Fleet {
    dir: tempfile::TempDir,
    hosts: Vec<Host>,
    min_up: usize,
    python: PathBuf,
}

impl Fleet {
    /// None (after saying why) when no Python can serve.
    fn start(block: u8, n: usize, min_up: usize, service: &str) -> Option<Fleet> {
        let hosts: Vec<Host> = (1..=n)
            .map(|i| {
                let address = format!("127.0.{block}.{i}");
                let sshd = TestSshd::builder()
                    .address(address.as_str())
                    .start()
                    .expect("sshd starts");
                // A port free on the host's address now; its service binds it later.
                let port = std::net::TcpListener::bind((address.as_str(), 0))
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port();
                Host { sshd, port }
            })
            .collect();
        let python = match python_for(hosts[0].sshd.user()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("SKIPPED: the hosts' services need Python 3: {e}");
                return None;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("artifacts")).unwrap();
        let fleet = Fleet {
            dir,
            hosts,
            min_up,
            python,
        };
        let mut known = String::new();
        let mut ssh_config = String::new();
        for (i, h) in fleet.hosts.iter().enumerate() {
            known.push_str(&std::fs::read_to_string(h.sshd.known_hosts()).unwrap());
            ssh_config.push_str(&format!(
                "Host web{}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n",
                i + 1,
                h.sshd.address(),
                h.sshd.port(),
                h.sshd.user(),
                h.sshd.client_key().display()
            ));
        }
        std::fs::write(fleet.dir.path().join("known_hosts"), known).unwrap();
        std::fs::write(fleet.dir.path().join("ssh_config"), ssh_config).unwrap();

        // Each host's service directory, writable by the login user, with the address its
        // service binds and the URL its check asks.
        use std::os::unix::fs::PermissionsExt;
        let open = |p: &Path| {
            std::fs::create_dir_all(p).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        };
        open(&fleet.root());
        for i in fleet.range() {
            let h = &fleet.hosts[i - 1];
            open(&fleet.root().join(format!("web{i}")));
            open(&fleet.srv(i));
            std::fs::write(
                fleet.srv(i).join("listen"),
                format!("{} {}\n", h.sshd.address(), h.port),
            )
            .unwrap();
            std::fs::write(fleet.srv(i).join("url"), format!("{}\n", fleet.url(i))).unwrap();
        }

        let stop = "d=$(dirname {current}); p=$(cat \"$d/serve.pid\" 2>/dev/null) || exit 0; \
                    kill \"$p\" 2>/dev/null; i=0; \
                    while [ \"$i\" -lt 250 ] && s=$(cut -d\" \" -f3 /proc/\"$p\"/stat 2>/dev/null) \
                    && [ \"$s\" != Z ]; do sleep 0.02; i=$((i+1)); done; rm -f \"$d/serve.pid\"";
        let check = "/usr/bin/curl -fsS --max-time 1 \"$(cat \"$(dirname {current})/url\")\"";
        let names: Vec<String> = fleet.range().map(|i| format!("web{i}")).collect();
        let config = format!(
            "platform: release\n\
             deploy_to: {root}/{{host}}\n\
             ssh:\n  known_hosts: {kh}\n  config: {cfg}\n  agent: false\n\
             hostgroup:\n  frontend: [{names}]\n\
             service:\n  web:\n    hosts: [frontend]\n    min_nodes_up: {min_up}\n\
             \x20   stop: {stop}\n\
             \x20   start: '{{current}}/bin/serve'\n\
             \x20   check: {check}\n\
             \x20   check_timeout: 1\n{service}",
            root = fleet.root().display(),
            kh = fleet.dir.path().join("known_hosts").display(),
            cfg = fleet.dir.path().join("ssh_config").display(),
            names = names.join(", "),
            stop = yaml_quoted(stop),
            check = yaml_quoted(check),
        );
        std::fs::write(fleet.dir.path().join("deploy.yaml"), config).unwrap();
        Some(fleet)
    }

    fn range(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.hosts.len()
    }

    /// Where the hosts' files live: a directory the login user may write to, unique per
    /// fleet; every process whose command line names it is the fleet's.
    fn root(&self) -> PathBuf {
        PathBuf::from(format!(
            "/tmp/deployer-rollout-{}",
            self.dir.path().file_name().unwrap().to_string_lossy()
        ))
    }

    /// The `web` directory of host `web<i>`.
    fn srv(&self, i: usize) -> PathBuf {
        self.root().join(format!("web{i}/web"))
    }

    fn addr(&self, i: usize) -> SocketAddr {
        let h = &self.hosts[i - 1];
        SocketAddr::new(h.sshd.address().parse().unwrap(), h.port)
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.range().map(|i| self.addr(i)).collect()
    }

    fn url(&self, i: usize) -> String {
        format!("http://{}/", self.addr(i))
    }

    /// `web-<version>.tar.gz`, built on first use.
    fn artifact(&self, version: &str, broken: bool) -> String {
        let path = self
            .dir
            .path()
            .join(format!("artifacts/web-{version}.tar.gz"));
        if !path.exists() {
            let pkg = self.dir.path().join(format!("pkg-{version}"));
            std::fs::create_dir_all(pkg.join("bin")).unwrap();
            std::fs::write(pkg.join("VERSION"), format!("{version}\n")).unwrap();
            std::fs::write(pkg.join("bin/serve"), serve_script(&self.python)).unwrap();
            std::fs::write(pkg.join("bin/server.py"), server_script(broken)).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                pkg.join("bin/serve"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
            let status = Command::new("tar")
                .arg("-czf")
                .arg(&path)
                .arg("-C")
                .arg(&pkg)
                .args(["VERSION", "bin"])
                .status()
                .unwrap();
            assert!(status.success());
        }
        path.display().to_string()
    }

    fn deploy(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_deploy"))
            .env(
                "DEPLOYER_STORE",
                self.dir.path().join("runs.db").display().to_string(),
            )
            .arg("--config")
            .arg(self.dir.path().join("deploy.yaml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs")
    }

    /// Runs `deploy args` while the prober watches every host.
    fn deploy_watched(&self, args: &[&str]) -> (Output, Vec<Sample>) {
        watched(&self.addrs(), || self.deploy(args))
    }

    /// Where `current` points on web<i>.
    fn current(&self, i: usize) -> String {
        std::fs::read_link(self.srv(i).join("current"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn locked(&self, i: usize) -> bool {
        self.srv(i).join(".deploy.lock").exists()
    }

    /// What every host answers now.
    fn serving(&self) -> Vec<Option<String>> {
        snapshot(&self.addrs())
    }

    /// Every host runs and serves `version`, unlocked, also by `deploy status`.
    fn assert_all_on(&self, version: &str, context: &str) {
        let serving = self.serving();
        for i in self.range() {
            assert_eq!(
                serving[i - 1].as_deref(),
                Some(version),
                "web{i} serves {:?}, not {version}; all: {serving:?}\n{context}",
                serving[i - 1]
            );
            assert_eq!(
                self.current(i),
                format!("releases/{version}"),
                "web{i}\n{context}"
            );
            assert!(!self.locked(i), "web{i} is still locked\n{context}");
        }
        let out = self.deploy(&["status", "--output", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = rows.as_array().expect("status is a list");
        assert_eq!(rows.len(), self.hosts.len(), "{rows:?}");
        for row in rows {
            assert_eq!(row["live"], version, "{row}\n{context}");
            assert_eq!(row["lock"], Value::Null, "{row}\n{context}");
        }
    }

    /// At every sample at least `min_nodes_up` hosts answered; there were enough samples to
    /// mean something, and some saw hosts down (the prober watched the rollout). Returns the
    /// fewest hosts that answered.
    fn assert_window_held(&self, samples: &[Sample], what: &str) -> usize {
        let n = self.hosts.len();
        assert!(
            samples.len() >= 20,
            "{what}: only {} samples taken",
            samples.len()
        );
        for s in samples {
            assert!(
                s.answered() >= self.min_up,
                "{what}: only {} of {n} hosts answered at {:?} (min_nodes_up {}): {:?}",
                s.answered(),
                s.at,
                self.min_up,
                s.versions
            );
        }
        let fewest = samples.iter().map(Sample::answered).min().unwrap();
        assert!(
            fewest < n,
            "{what}: every host answered at every one of {} samples: the prober saw no \
             host restart",
            samples.len()
        );
        eprintln!(
            "{what}: {} samples over {:?}, at least {fewest} of {n} hosts answering (min_nodes_up {})",
            samples.len(),
            samples.last().unwrap().at,
            self.min_up
        );
        fewest
    }
}

impl Drop for Fleet {
    /// Kills every process of the fleet's services (their command lines name its root), then
    /// removes its files; the sshds go with their `TestSshd`s.
    fn drop(&mut self) {
        let root = self.root().display().to_string();
        let me = std::process::id().to_string();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                    continue;
                }
                let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                    continue;
                };
                if text(&cmdline).replace('\0', " ").contains(&root) {
                    let _ = Command::new("kill").args(["-9", &pid]).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.root());
    }
}

/// The run id a `deploy --output json` printed (its events' `run_id`).
fn run_id(out: &Output) -> String {
    events(out)
        .iter()
        .find_map(|e| e["run_id"].as_str().map(str::to_string))
        .expect("deploy names its run")
}

fn events(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The hosts on which a task of `command` started, in order, once each.
fn hosts_that_ran(out: &Output, command: &str) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for e in events(out) {
        if e["event"] == "task_started"
            && e["command"] == command
            && let Some(h) = e["host"].as_str()
            && !hosts.iter().any(|x| x == h)
        {
            hosts.push(h.to_string());
        }
    }
    hosts
}

fn host_number(name: &str) -> usize {
    name.trim_start_matches("web").parse().unwrap()
}

/// Hosts, and `min_nodes_up`: the issue's 20 hosts with 15 up.
const HOSTS: usize = 20;
const MIN_UP: usize = 15;

/// 1.0.0, then 2.0.0 and `deploy rollback` keep `min_nodes_up` hosts answering at every
/// sample; the broken 3.0.0 fails (exit 1) on the window's hosts, which are rolled back to
/// 2.0.0 and serve again, counted "rolled back" and ROLLED_BACK in `deploy runs show`, while
/// the hosts it never reached serve 2.0.0 throughout; no host stays locked.
#[test]
fn a_rollout_keeps_min_nodes_up_serving_and_rolls_back_a_broken_release() {
    let started = Instant::now();
    let Some(fleet) = Fleet::start(71, HOSTS, MIN_UP, "") else {
        return;
    };
    let window = HOSTS - MIN_UP;

    // 1.0.0 on a fresh fleet: nothing serves yet, nothing to watch.
    let out = fleet.deploy(&["--component", &fleet.artifact("1.0.0", false)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    fleet.assert_all_on("1.0.0", "after deploying 1.0.0");

    // 2.0.0, watched.
    let (out, samples) = fleet.deploy_watched(&[
        "--component",
        &fleet.artifact("2.0.0", false),
        "--output",
        "json",
    ]);
    let report = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{report}");
    fleet.assert_window_held(&samples, "1.0.0 -> 2.0.0");
    assert!(
        samples
            .iter()
            .any(|s| s.versions.iter().flatten().any(|v| v == "1.0.0")
                && s.versions.iter().flatten().any(|v| v == "2.0.0")),
        "no sample saw both versions serving: the rollout was not watched while rolling"
    );
    assert_eq!(hosts_that_ran(&out, "release_activate").len(), HOSTS);
    fleet.assert_all_on("2.0.0", &report);

    // The broken 3.0.0, watched: the first window of hosts fails its check and is rolled
    // back; the window starts no other host.
    let (out, samples) = fleet.deploy_watched(&[
        "--component",
        &fleet.artifact("3.0.0", true),
        "--output",
        "json",
    ]);
    let stderr = text(&out.stderr);
    let report = format!("{stderr}\n{}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "{report}");
    fleet.assert_window_held(&samples, "2.0.0 -> broken 3.0.0");
    let switched = hosts_that_ran(&out, "release_activate");
    assert_eq!(
        switched.len(),
        window,
        "the window ({window}) switched {switched:?} and no more\n{report}"
    );
    let rolled_back = hosts_that_ran(&out, "rollback");
    let (mut a, mut b) = (switched.clone(), rolled_back.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "every host that switched was rolled back, no other");
    assert!(
        samples
            .iter()
            .all(|s| s.versions.iter().flatten().all(|v| v != "3.0.0")),
        "3.0.0 never served"
    );
    // The hosts 3.0.0 never reached were never switched, and answered 2.0.0 at every
    // sample.
    for i in fleet.range() {
        if switched.contains(&format!("web{i}")) {
            continue;
        }
        let log = std::fs::read_to_string(fleet.srv(i).join("releases.log")).unwrap();
        assert!(!log.contains("\t3.0.0\t"), "web{i}: {log}");
        for s in &samples {
            assert_eq!(
                s.versions[i - 1].as_deref(),
                Some("2.0.0"),
                "web{i} never got 3.0.0 but answered {:?} at {:?}",
                s.versions[i - 1],
                s.at
            );
        }
    }
    // The rolled back hosts were down, then served 2.0.0 again.
    for h in &switched {
        let i = host_number(h);
        assert!(
            samples.iter().any(|s| s.versions[i - 1].is_none()),
            "{h} was never seen down while it ran 3.0.0"
        );
    }
    fleet.assert_all_on("2.0.0", &report);
    for h in &switched {
        let i = host_number(h);
        let log = std::fs::read_to_string(fleet.srv(i).join("releases.log")).unwrap();
        let last: Vec<&str> = log.lines().rev().take(2).collect();
        assert!(
            last[0].contains("\trollback\t2.0.0\t") && last[1].contains("\t3.0.0\t"),
            "{h}: {log}"
        );
    }
    // The recap's last line counts the failed checks and the hosts rolled back.
    let last = stderr
        .lines()
        .find(|l| l.starts_with("run \"Deploy web-3.0.0\" failed in "))
        .unwrap_or_else(|| panic!("no recap line:\n{stderr}"));
    assert!(
        last.contains(&format!(" {window} failed,"))
            && last.ends_with(&format!(", {window} rolled back")),
        "the recap counts the rolled back hosts: {last}\n{stderr}"
    );
    let id = run_id(&out);
    let show = fleet.deploy(&["runs", "show", &id]);
    let shown = text(&show.stdout);
    assert_eq!(show.status.code(), Some(0), "{}", text(&show.stderr));
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["state", "FAILED"]),
        "{shown}"
    );
    // The host table: ROLLED_BACK for the rolled back hosts, DONE for the others.
    let states: Vec<(&str, &str)> = shown
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .filter(|(host, _)| host.starts_with("web"))
        .collect();
    assert_eq!(states.len(), HOSTS, "one row per host:\n{shown}");
    for (host, state) in states {
        let expected = if switched.iter().any(|h| h == host) {
            "ROLLED_BACK"
        } else {
            "DONE"
        };
        assert_eq!(state, expected, "{host}:\n{shown}");
    }

    // deploy rollback: back to 1.0.0 (not to the broken 3.0.0), through the same window.
    let (out, samples) = fleet.deploy_watched(&["rollback", "--yes", "--output", "json"]);
    let report = format!("{}\n{}", text(&out.stderr), text(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "{report}");
    fleet.assert_window_held(&samples, "rollback 2.0.0 -> 1.0.0");
    assert_eq!(hosts_that_ran(&out, "rollback").len(), HOSTS, "{report}");
    fleet.assert_all_on("1.0.0", &report);

    eprintln!(
        "{HOSTS} hosts, min_nodes_up {MIN_UP}: the whole scenario took {:?}",
        started.elapsed()
    );
}

/// With `auto_rollback: false` the broken 3.0.0 stays on the window's host, not serving; the
/// run fails (exit 1) and still unlocks every host; the others serve 1.0.0.
#[test]
fn without_auto_rollback_a_failed_host_stays_on_the_broken_release_but_unlocked() {
    let Some(fleet) = Fleet::start(72, 3, 2, "    auto_rollback: false\n") else {
        return;
    };
    let out = fleet.deploy(&["--component", &fleet.artifact("1.0.0", false)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    fleet.assert_all_on("1.0.0", "after deploying 1.0.0");

    let out = fleet.deploy(&[
        "--component",
        &fleet.artifact("3.0.0", true),
        "--output",
        "json",
    ]);
    let report = format!("{}\n{}", text(&out.stderr), text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "{report}");
    let switched = hosts_that_ran(&out, "release_activate");
    assert_eq!(switched.len(), 1, "a window of one: {switched:?}\n{report}");
    assert!(
        hosts_that_ran(&out, "rollback").is_empty(),
        "nothing is rolled back\n{report}"
    );
    assert!(!text(&out.stderr).contains("rolled back"), "{report}");
    let serving = fleet.serving();
    let status = fleet.deploy(&["status", "--output", "json"]);
    let rows: Value = serde_json::from_slice(&status.stdout).unwrap();
    for i in fleet.range() {
        let row = &rows[i - 1];
        assert_eq!(row["host"], format!("web{i}"), "{rows}");
        assert_eq!(row["lock"], Value::Null, "{row}");
        assert!(!fleet.locked(i), "web{i} is still locked\n{report}");
        if switched.contains(&format!("web{i}")) {
            assert_eq!(fleet.current(i), "releases/3.0.0", "web{i}");
            assert_eq!(row["live"], "3.0.0", "{row}");
            assert_eq!(serving[i - 1], None, "web{i} runs the broken 3.0.0");
        } else {
            assert_eq!(fleet.current(i), "releases/1.0.0", "web{i}");
            assert_eq!(row["live"], "1.0.0", "{row}");
            assert_eq!(serving[i - 1].as_deref(), Some("1.0.0"), "web{i}");
        }
    }
}
