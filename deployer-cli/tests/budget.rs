//! The failure budget through the real `deploy` over real sshd: hosts that refuse connections
//! and a host whose step fails are dropped within `--max-failures`, the others are deployed,
//! the recap and `runs show` name the dropped hosts and why, the exit status is 4; one failure
//! past the budget stops the deploy as without one (exit 1); a resume finishes the dropped
//! hosts' work and nothing else.

use std::path::Path;
use std::process::{Command, Output};

use deployer_remote::testing::TestSshd;

fn deploy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("DEPLOYER_STORE")
        .output()
        .expect("deploy runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `real` sshd hosts `web1…` and `refusing` more names whose address refuses connections,
/// with a release config deploying `hello` to all of them.
struct Fleet {
    dir: tempfile::TempDir,
    _hosts: Vec<TestSshd>,
    names: Vec<String>,
}

impl Fleet {
    fn start(real: usize, refusing: usize) -> Fleet {
        let hosts: Vec<TestSshd> = (0..real)
            .map(|_| {
                TestSshd::builder()
                    .address("127.0.0.1")
                    .start()
                    .expect("sshd starts")
            })
            .collect();
        // A port nobody listens on: bound, read, released.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("artifacts")).unwrap();
        std::fs::copy(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
                .join("artifacts/hello-1.0.0.tar.gz"),
            dir.path().join("artifacts/hello-1.0.0.tar.gz"),
        )
        .unwrap();
        let mut known = String::new();
        let mut ssh_config = String::new();
        let mut names = Vec::new();
        for i in 0..real + refusing {
            let name = format!("web{}", i + 1);
            let (port, user, key) = match hosts.get(i) {
                Some(h) => {
                    known.push_str(&std::fs::read_to_string(h.known_hosts()).unwrap());
                    (h.port(), h.user().to_string(), h.client_key())
                }
                None => (closed, hosts[0].user().to_string(), hosts[0].client_key()),
            };
            ssh_config.push_str(&format!(
                "Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {}\n",
                key.display()
            ));
            names.push(name);
        }
        std::fs::write(dir.path().join("known_hosts"), known).unwrap();
        std::fs::write(dir.path().join("ssh_config"), ssh_config).unwrap();
        let fleet = Fleet {
            dir,
            _hosts: hosts,
            names,
        };
        let config = format!(
            "platform: release\n\
             directory: artifacts\n\
             deploy_to: {root}/{{host}}\n\
             ssh:\n  known_hosts: {kh}\n  config: {cfg}\n  agent: false\n\
             hostgroup:\n  web: [{names}]\n\
             service:\n  hello:\n    hosts: [web]\n    min_nodes_up: 0\n",
            root = fleet.root(),
            kh = fleet.dir.path().join("known_hosts").display(),
            cfg = fleet.dir.path().join("ssh_config").display(),
            names = fleet.names.join(", "),
        );
        std::fs::write(fleet.dir.path().join("deploy.yaml"), config).unwrap();
        fleet
    }

    fn root(&self) -> String {
        format!(
            "/tmp/deployer-budget-{}",
            self.dir.path().file_name().unwrap().to_string_lossy()
        )
    }

    fn config(&self) -> String {
        self.dir.path().join("deploy.yaml").display().to_string()
    }

    fn store(&self) -> String {
        self.dir.path().join("runs.db").display().to_string()
    }

    /// The service directory of a host.
    fn srv(&self, host: &str) -> String {
        format!("{}/{host}/hello", self.root())
    }

    /// Makes `host` fail its first step after the lock: `releases` is a file there (owned by
    /// the login user, like the rest of the tree).
    fn block_releases(&self, host: &str) {
        std::fs::create_dir_all(self.srv(host)).unwrap();
        std::fs::write(format!("{}/releases", self.srv(host)), b"in the way").unwrap();
        let chown = Command::new("chown")
            .args(["-R", self._hosts[0].user(), &self.root()])
            .status()
            .unwrap();
        assert!(chown.success());
    }

    fn run(&self, extra: &[&str]) -> Output {
        let config = self.config();
        let store = self.store();
        let mut args = vec![
            "--config",
            config.as_str(),
            "--store",
            store.as_str(),
            // Planning asks no host (the refusing ones would fail it): a first deploy.
            "--redeploy",
        ];
        args.extend_from_slice(extra);
        deploy(&args)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.root());
    }
}

fn run_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("resume with: deploy runs resume "))
        .unwrap_or_else(|| panic!("no run id in: {stderr}"))
        .trim()
        .to_string()
}

#[test]
fn hosts_that_fail_within_the_budget_are_dropped_and_the_rest_is_deployed() {
    let fleet = Fleet::start(4, 2);
    // web2 fails a step after taking its lock.
    fleet.block_releases("web2");

    let out = fleet.run(&["--max-failures", "3"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("completed within its failure budget in "),
        "{err}"
    );
    assert!(
        err.contains("dropped within the failure budget (max_failures 3): 3 hosts"),
        "{err}"
    );
    for (host, why) in [
        ("web5", "release_lock failed: cannot connect to web5"),
        ("web6", "release_lock failed: cannot connect to web6"),
        ("web2", "release_create failed: cannot create release 1.0.0"),
    ] {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("  {host} (in ")))
            .unwrap_or_else(|| panic!("{host} not named: {err}"));
        assert!(line.contains(why), "{line}");
    }
    // The other hosts run the release; the dropped ones do not.
    for host in ["web1", "web3", "web4"] {
        let version = std::fs::read_to_string(format!("{}/current/VERSION", fleet.srv(host)));
        assert!(version.is_ok(), "{host}: {err}");
    }
    assert!(!Path::new(&format!("{}/current", fleet.srv("web2"))).exists());
    // web2's clean-up still ran: its lock is released.
    assert!(
        !Path::new(&format!("{}/.deploy.lock", fleet.srv("web2"))).exists(),
        "{err}"
    );

    // The record names them too.
    let id = run_id(&err);
    let store = fleet.store();
    let show = deploy(&["runs", "show", &id, "--store", &store]);
    let shown = text(&show.stdout);
    assert!(shown.contains("state     DEGRADED"), "{shown}");
    assert!(
        shown.contains("dropped   3 hosts within the failure budget"),
        "{shown}"
    );
    assert!(shown.contains("  web2: stages["), "{shown}");
    assert!(shown.contains("DROPPED"), "{shown}");

    // Once the obstacle is gone, a resume (with the budget the run recorded) finishes web2
    // (the refusing hosts stay dropped) and runs nothing again on the hosts that were done.
    std::fs::remove_file(format!("{}/releases", fleet.srv("web2"))).unwrap();
    let out = deploy(&[
        "runs",
        "resume",
        &id,
        "--store",
        &store,
        "--config",
        &fleet.config(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        std::fs::read_to_string(format!("{}/current/VERSION", fleet.srv("web2"))).is_ok(),
        "{err}"
    );
    assert!(err.contains("done earlier"), "{err}");
    assert!(
        err.contains("(max_failures 3): 2 hosts"),
        "only the refusing hosts are dropped again: {err}"
    );
}

#[test]
fn one_failure_past_the_budget_stops_the_deploy_as_without_one() {
    let fleet = Fleet::start(3, 1);
    fleet.block_releases("web2");
    // web4 refuses (dropped: 1 of 1), then web2's step fails: past the budget.
    let out = fleet.run(&["--max-failures", "1"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("\" failed in "), "{err}");
    assert!(
        err.contains("dropped within the failure budget (max_failures 1): 1 host"),
        "{err}"
    );
    // Activation never started: no host runs the release.
    for host in ["web1", "web2", "web3"] {
        assert!(
            !Path::new(&format!("{}/current", fleet.srv(host))).exists(),
            "{host}: {err}"
        );
    }
    // Without a budget, the host that cannot be reached fails the plan, as before.
    let out = fleet.run(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect to web4"), "{err}");
}
