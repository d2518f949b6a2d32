//! The `deploy` program on a fleet: W1 (create the release, upload a 1 MiB `.tar.gz`, unpack
//! it, switch `current`, restart with `true`, verify `current/VERSION`) through
//! `deploy --tasklist` on 100 loopback hosts at once (`deployer_remote::testing::TestFleet`:
//! seven sshd masters, one port, strict host keys), each host deploying into its own directory.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use deployer_core::{Stage, Task, Tasklist};
use deployer_remote::testing::TestFleet;

#[path = "common/fleet_config.rs"]
mod fleet_config;
use fleet_config::ssh_config;

const HOSTS: usize = 100;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `/tmp/deployer-fleet-<pid>-<test>`, owned by the login user; removed on drop. (The tests
/// of this file may run at once in one process, on the same addresses.)
struct Root(PathBuf);

impl Root {
    fn new(user: &str, test: &str) -> Root {
        let root = PathBuf::from(format!("/tmp/deployer-fleet-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let status = Command::new("chown").arg(user).arg(&root).status().unwrap();
        assert!(status.success(), "chown {user} {root:?}");
        Root(root)
    }

    /// Where `host` deploys.
    fn of(&self, host: &str) -> String {
        format!("{}/{host}", self.0.display())
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `.tar.gz` of `VERSION` (holding `version`) and 1 MiB of random data.
fn artifact(dir: &Path, version: &str) -> PathBuf {
    let content = dir.join("content");
    std::fs::create_dir(&content).unwrap();
    let mut blob = Vec::new();
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(1 << 20)
        .read_to_end(&mut blob)
        .unwrap();
    std::fs::write(content.join("blob"), blob).unwrap();
    std::fs::write(content.join("VERSION"), format!("{version}\n")).unwrap();
    let tarball = dir.join("app.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&content)
        .args(["VERSION", "blob"])
        .status()
        .unwrap();
    assert!(status.success(), "tar");
    tarball
}

/// W1 as six stages of the standard commands, every host at once.
fn w1(hosts: &[String], root: &Root, tarball: &Path, version: &str) -> Tasklist {
    let release = |h: &str| format!("{}/releases/{version}", root.of(h));
    let stage = |name: &str, task: &dyn Fn(&str) -> Task| {
        Stage::new(name, hosts.len())
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
                .arg("destination", format!("{}/current", root.of(h)))
        }))
        .stage(stage("restart", &|_| {
            Task::new("execute_command").arg("command_line", "true")
        }))
        .stage(stage("verify", &|h| {
            Task::new("execute_command").arg(
                "command_line",
                format!("grep -qx {version} {}/current/VERSION", root.of(h)),
            )
        }))
}

#[test]
fn w1_on_100_hosts_at_once_through_deploy_tasklist() {
    let fleet = TestFleet::start(HOSTS).expect("the fleet starts");
    let hosts = fleet.hosts().to_vec();
    let root = Root::new(fleet.user(), "w1");
    let work = tempfile::tempdir().unwrap();
    let version = "fleet-1.0.0";
    let tarball = artifact(work.path(), version);
    let tasklist = work.path().join("w1.json");
    std::fs::write(
        &tasklist,
        w1(&hosts, &root, &tarball, version).to_json_string(),
    )
    .unwrap();
    let config = ssh_config(&fleet, work.path());

    let out = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .env("DEPLOYER_STORE", "sqlite::memory:")
        .arg("--config")
        .arg(&config)
        .arg("--tasklist")
        .arg(&tasklist)
        .output()
        .expect("deploy runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // Every host got the release and switched to it, in its own directory.
    for h in &hosts {
        let current = format!("{}/current", root.of(h));
        assert!(
            std::fs::symlink_metadata(&current)
                .unwrap_or_else(|e| panic!("{current}: {e}"))
                .is_symlink(),
            "{current} is a symlink"
        );
        assert_eq!(
            std::fs::canonicalize(&current).unwrap(),
            Path::new(&format!("{}/releases/{version}", root.of(h))),
        );
        assert_eq!(
            std::fs::read_to_string(format!("{current}/VERSION")).unwrap(),
            format!("{version}\n")
        );
        assert_eq!(
            std::fs::metadata(format!("{current}/blob")).unwrap().len(),
            1 << 20
        );
    }
    // Each host was reached on its own address (sshd logs the address it accepted on only at
    // VERBOSE, so count logins: at least one per host).
    assert!(
        fleet.logs().matches("Accepted publickey").count() >= HOSTS,
        "{}",
        fleet.logs()
    );
}

/// The failure budget on a fleet: of 45 hosts, 5 refuse connections. With `--max-failures 5`
/// the other 40 are deployed, the run exits 4 and the recap names the 5; with 4, the fifth
/// refusal stops the deploy in its first stage, as without a budget (exit 1).
#[test]
fn a_budget_of_5_lets_40_of_45_hosts_deploy_past_5_refusing_ones() {
    let fleet = TestFleet::builder()
        .hosts(40)
        .refusing(5)
        .start()
        .expect("the fleet starts");
    let up = fleet.hosts().to_vec();
    let down = fleet.refusing_hosts().to_vec();
    let all: Vec<String> = up.iter().chain(&down).cloned().collect();
    let root = Root::new(fleet.user(), "budget");
    let work = tempfile::tempdir().unwrap();
    let config = ssh_config(&fleet, work.path());
    for (budget, exit) in [("5", 4), ("4", 1)] {
        let version = format!("budget-{budget}");
        let dir = work.path().join(&version);
        std::fs::create_dir(&dir).unwrap();
        let tarball = artifact(&dir, &version);
        let tasklist = dir.join("w1.json");
        std::fs::write(
            &tasklist,
            w1(&all, &root, &tarball, &version).to_json_string(),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_deploy"))
            .env("DEPLOYER_STORE", "sqlite::memory:")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(&config)
            .arg("--tasklist")
            .arg(&tasklist)
            .args(["--max-failures", budget])
            .output()
            .expect("deploy runs");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(exit), "budget {budget}:\n{err}");
        let deployed = up
            .iter()
            .filter(|h| {
                std::fs::read_to_string(format!("{}/current/VERSION", root.of(h)))
                    .is_ok_and(|v| v.trim() == version)
            })
            .count();
        if exit == 4 {
            assert_eq!(deployed, up.len(), "{err}");
            assert!(
                err.contains("dropped within the failure budget (max_failures 5): 5 hosts"),
                "{err}"
            );
            for h in &down {
                assert!(
                    err.lines()
                        .any(|l| l.starts_with(&format!("  {h} (in create release): "))),
                    "{h} is named: {err}"
                );
            }
        } else {
            assert_eq!(deployed, 0, "{err}");
            assert!(err.contains("\" failed in "), "{err}");
        }
    }
}
