//! The `deploy` program over real SSH: two sshd "hosts" on loopback, reached through an ssh
//! config (Host aliases with their own ports), strict host keys, a rolling release.

use std::path::Path;
use std::process::{Command, Output};

use deployer_remote::testing::TestSshd;

fn deploy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deploy"))
        .env("DEPLOYER_STORE", "sqlite::memory:")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Fleet {
    dir: tempfile::TempDir,
    hosts: Vec<TestSshd>,
}

impl Fleet {
    /// Two sshd hosts, `web1` and `web2`, and a release config for them.
    fn start(extra: &str) -> Fleet {
        let hosts = vec![
            TestSshd::builder()
                .address("127.0.0.1")
                .start()
                .expect("sshd starts"),
            TestSshd::builder()
                .address("127.0.0.1")
                .start()
                .expect("sshd starts"),
        ];
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("artifacts")).unwrap();
        std::fs::copy(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
                .join("artifacts/hello-1.0.0.tar.gz"),
            dir.path().join("artifacts/hello-1.0.0.tar.gz"),
        )
        .unwrap();
        // One known_hosts for both servers, keyed as ssh writes them: [127.0.0.1]:port.
        let mut known = String::new();
        let mut ssh_config = String::new();
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
        }
        std::fs::write(dir.path().join("known_hosts"), known).unwrap();
        std::fs::write(dir.path().join("ssh_config"), ssh_config).unwrap();
        // A deploy root the login user may write to, unique per test.
        let srv = format!(
            "/tmp/deployer-ssh-{}",
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let config = format!(
            "platform: release\n\
             directory: artifacts\n\
             deploy_to: {srv}/{{host}}\n\
             ssh:\n  known_hosts: {kh}\n  config: {cfg}\n  agent: false\n\
             hostgroup:\n  web: [web1, web2]\n\
             service:\n  hello:\n    hosts: [web]\n    min_nodes_up: 1\n    shared_dirs: [log]\n\
             \x20   start: '{{current}}/bin/hello'\n{extra}",
            kh = dir.path().join("known_hosts").display(),
            cfg = dir.path().join("ssh_config").display(),
        );
        std::fs::write(dir.path().join("deploy.yaml"), config).unwrap();
        Fleet { dir, hosts }
    }

    fn config(&self) -> String {
        self.dir.path().join("deploy.yaml").display().to_string()
    }

    /// The service directory of host `web<n>`.
    fn srv(&self, n: usize) -> String {
        format!(
            "/tmp/deployer-ssh-{}/web{n}/hello",
            self.dir.path().file_name().unwrap().to_string_lossy()
        )
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let root = Path::new(&self.srv(1))
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn deploys_over_ssh_one_host_at_a_time() {
    let fleet = Fleet::start("");
    let out = deploy(&["--config", &fleet.config(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Both "hosts" are this machine, so the files are checked here.
    for n in [1, 2] {
        let srv = fleet.srv(n);
        assert_eq!(
            std::fs::read_link(format!("{srv}/current"))
                .unwrap()
                .to_string_lossy(),
            "releases/1.0.0"
        );
        assert!(Path::new(&format!("{srv}/shared/log")).is_dir());
    }
    assert!(
        text(&out.stdout).contains("hello 1.0.0"),
        "the start command ran"
    );
    // min_nodes_up 1 of 2 hosts: activation chains never overlap.
    let (mut now, mut max) = (0, 0);
    for line in text(&out.stdout).lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["event"] == "task_started" && e["command"] == "release_activate" {
            now += 1;
            max = std::cmp::max(max, now);
        }
        // The chain: release_activate, then the start command.
        if e["event"] == "task_finished" && e["command"] == "execute_command" {
            now -= 1;
        }
    }
    assert_eq!(max, 1, "at most one host of two is down at a time");
    // Each host was reached through its own sshd.
    for (i, h) in fleet.hosts.iter().enumerate() {
        assert!(
            h.logs().contains("Accepted publickey"),
            "web{} was not used:\n{}",
            i + 1,
            h.logs()
        );
    }

    // Asking the hosts which version they run: both are on 1.0.0 now.
    let out = deploy(&["--config", &fleet.config()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("[web1] [hello] already on 1.0.0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[web2] [hello] already on 1.0.0"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_host_key_is_refused_by_default() {
    let fleet = Fleet::start("");
    std::fs::write(fleet.dir.path().join("known_hosts"), "").unwrap();
    let out = deploy(&["--config", &fleet.config(), "--redeploy"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("host key for"), "{stderr}");
    assert!(stderr.contains("is not known"), "{stderr}");
    assert!(!Path::new(&fleet.srv(1)).exists(), "nothing was deployed");
}

#[test]
fn an_unreachable_host_while_planning_fails_the_deploy_with_exit_1() {
    let fleet = Fleet::start("");
    std::fs::write(fleet.dir.path().join("known_hosts"), "").unwrap();
    let out = deploy(&["--config", &fleet.config()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: host key for"), "{stderr}");
}
