//! Inventories with the real `deploy` binary: an Ansible INI inventory whose host vars say how
//! to reach two real sshd "hosts" on loopback, `--limit` patterns, `deploy hosts`, and a
//! dynamic inventory script.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use deployer_remote::testing::TestSshd;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `text` ends with the line `end` (log lines may come before it).
fn assert_ends_with(text: &str, end: &str) {
    assert!(
        text.ends_with(end)
            && (text.len() == end.len() || text[..text.len() - end.len()].ends_with('\n')),
        "{text}"
    );
}

struct Fleet {
    dir: tempfile::TempDir,
    hosts: Vec<TestSshd>,
}

impl Fleet {
    /// Two sshd hosts, an artifact, a release config for the service `hello` on the group
    /// `web` (which only the inventory defines), and `hosts.ini` reaching them by host vars.
    fn start() -> Fleet {
        let hosts: Vec<TestSshd> = ["127.0.0.1", "127.0.0.1"]
            .iter()
            .map(|a| {
                TestSshd::builder()
                    .address(*a)
                    .start()
                    .expect("sshd starts")
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("artifacts")).unwrap();
        std::fs::copy(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
                .join("artifacts/hello-1.0.0.tar.gz"),
            dir.path().join("artifacts/hello-1.0.0.tar.gz"),
        )
        .unwrap();
        let known: String = hosts
            .iter()
            .map(|h| std::fs::read_to_string(h.known_hosts()).unwrap())
            .collect();
        std::fs::write(dir.path().join("known_hosts"), known).unwrap();
        let fleet = Fleet { dir, hosts };
        let config = format!(
            "platform: release\n\
             directory: artifacts\n\
             deploy_to: {srv}/{{host}}\n\
             ssh:\n  known_hosts: {kh}\n  config: false\n  agent: false\n\
             service:\n  hello:\n    hosts: [web]\n    min_nodes_up: 1\n",
            srv = fleet.root(),
            kh = fleet.dir.path().join("known_hosts").display(),
        );
        std::fs::write(fleet.dir.path().join("deploy.yaml"), config).unwrap();
        let mut ini = String::from("# two real sshd on loopback\n[web]\n");
        for (i, h) in fleet.hosts.iter().enumerate() {
            ini.push_str(&format!(
                "web{} ansible_host={} ansible_port={} ansible_user={} \
                 ansible_ssh_private_key_file=\"{}\"\n",
                i + 1,
                h.address(),
                h.port(),
                h.user(),
                h.client_key().display()
            ));
        }
        ini.push_str("\n[canary]\nweb1\n\n[prod:children]\nweb\n");
        std::fs::write(fleet.dir.path().join("hosts.ini"), ini).unwrap();
        fleet
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn root(&self) -> String {
        format!(
            "/tmp/deployer-inv-{}",
            self.dir.path().file_name().unwrap().to_string_lossy()
        )
    }

    /// The `current` link of host `web<n>`'s service, if deployed.
    fn current(&self, n: usize) -> Option<String> {
        std::fs::read_link(format!("{}/web{n}/hello/current", self.root()))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    fn deploy(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_deploy"))
            .env("DEPLOYER_STORE", "sqlite::memory:")
            .env("HOME", self.dir.path())
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the binary runs")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.root());
    }
}

#[test]
fn an_ini_inventory_reaches_hosts_by_their_vars_and_limit_picks_a_subset() {
    let fleet = Fleet::start();
    let (config, ini) = (fleet.path("deploy.yaml"), fleet.path("hosts.ini"));

    // The preview: groups and the connection each host would use; nothing contacted.
    let out = fleet.deploy(&["--config", &config, "-i", &ini, "hosts", "web:!web2"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let h = &fleet.hosts[0];
    assert_eq!(
        stdout,
        format!(
            "web1  {}@{}:{}  groups: canary,prod,web\n1 host selected by \"web:!web2\"\n",
            h.user(),
            h.address(),
            h.port()
        )
    );
    assert!(
        !h.logs().contains("Accepted"),
        "deploy hosts contacts no host"
    );
    let out = fleet.deploy(&["-i", &ini, "--output", "json", "hosts", "prod:&web2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["host"], "web2");
    assert_eq!(rows[0]["port"], fleet.hosts[1].port());
    assert_eq!(rows[0]["address"], fleet.hosts[1].address());
    assert_eq!(rows[0]["groups"], serde_json::json!(["prod", "web"]));
    // A part that matches nothing: exit 2, naming it, with the closest name.
    let out = fleet.deploy(&["-i", &ini, "hosts", "web:!cnaary"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: host pattern \"cnaary\" matches no host or group; did you mean \"canary\"?\n"
    );

    // The deploy: only web1, reached at its ansible_host:ansible_port as ansible_user.
    let out = fleet.deploy(&["--config", &config, "-i", &ini, "--limit", "web:!web2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fleet.current(1).as_deref(), Some("releases/1.0.0"));
    assert_eq!(fleet.current(2), None, "web2 was left out by --limit");
    assert!(fleet.hosts[0].logs().contains("Accepted publickey"));
    assert!(!fleet.hosts[1].logs().contains("Accepted publickey"));

    // The config's own `inventory` key (relative to the config file) works the same.
    let with_key = format!(
        "{}inventory: hosts.ini\n",
        std::fs::read_to_string(&config).unwrap()
    );
    std::fs::write(&config, with_key).unwrap();
    let out = fleet.deploy(&["--config", &config, "--limit", "web2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fleet.current(2).as_deref(), Some("releases/1.0.0"));

    // A limit that selects no host of the service is bad input: exit 2, nothing contacted.
    let out = fleet.deploy(&["--config", &config, "--limit", "wbe1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_ends_with(
        &text(&out.stderr),
        "error: --limit: host pattern \"wbe1\" matches no host or group; did you mean \"web1\"?\n",
    );
}

#[test]
fn a_dynamic_inventory_script_is_run_with_list_and_its_failure_is_shown() {
    let fleet = Fleet::start();
    let config = fleet.path("deploy.yaml");
    let hostvars: serde_json::Map<String, serde_json::Value> = fleet
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            (
                format!("web{}", i + 1),
                serde_json::json!({
                    "ansible_host": h.address(),
                    "ansible_port": h.port(),
                    "ansible_user": h.user(),
                    "ansible_ssh_private_key_file": h.client_key(),
                }),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "web": {"hosts": ["web1", "web2"], "vars": {"tier": "front"}},
        "_meta": {"hostvars": hostvars},
    });
    let script = fleet.dir.path().join("cloud.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = --list ] || {{ echo \"expected --list, got $1\" >&2; exit 9; }}\n\
             cat <<'EOF'\n{doc}\nEOF\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = script.display().to_string();

    let out = fleet.deploy(&["--config", &config, "-i", &script, "--limit", "web2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fleet.current(2).as_deref(), Some("releases/1.0.0"));
    assert_eq!(fleet.current(1), None);

    let out = fleet.deploy(&["-i", &script, "hosts", "web*"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).ends_with("2 hosts selected by \"web*\"\n"));

    // A failing script: its exit status and stderr, exit 2, no host contacted.
    let failing = fleet.dir.path().join("broken.sh");
    std::fs::write(
        &failing,
        "#!/bin/sh\necho 'no cloud credentials' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = fleet.deploy(&["--config", &config, "-i", &failing.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert_ends_with(
        &text(&out.stderr),
        &format!(
            "error: inventory script {} --list: exited with status 3; stderr:\nno cloud credentials\n",
            failing.display()
        ),
    );
}
