//! A fleet of throwaway OpenSSH servers on loopback for the end-to-end benchmarks
//! ([`TestFleet`]: 127.1.0.1, 127.1.0.2, …, one sshd master per 16 addresses, one port), all
//! reachable with one client key and one known_hosts file, by the deployer (an
//! [`SshConnector`]) and by plain `ssh`/`scp` alike.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deployer_remote::SshConnector;
use deployer_remote::testing::TestFleet;

/// `n` sshd "hosts" on 127.1.0.1, 127.1.0.2, …; killed on drop.
pub struct Fleet {
    fleet: TestFleet,
    hosts: Vec<String>,
    kex: Option<String>,
}

impl Fleet {
    /// Starts `n` hosts.
    pub fn start(n: usize) -> std::io::Result<Fleet> {
        Fleet::from_test_fleet(TestFleet::start(n)?)
    }

    /// Wraps a fleet started with other settings (refusing hosts…).
    pub fn from_test_fleet(fleet: TestFleet) -> std::io::Result<Fleet> {
        Ok(Fleet {
            hosts: fleet.hosts().to_vec(),
            fleet,
            kex: None,
        })
    }

    /// The harness underneath.
    pub fn test_fleet(&self) -> &TestFleet {
        &self.fleet
    }

    /// The login user.
    pub fn user(&self) -> &str {
        self.fleet.user()
    }

    /// The host names (their addresses), in order.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.clone()
    }

    /// The port every host listens on.
    pub fn port(&self) -> u16 {
        self.fleet.port()
    }

    /// The client key every server accepts.
    pub fn client_key(&self) -> PathBuf {
        self.fleet.client_key()
    }

    /// A known_hosts file trusting every server.
    pub fn known_hosts(&self) -> PathBuf {
        self.fleet.known_hosts()
    }

    /// A fresh connector (no connection open yet) reaching every host by its address: strict
    /// host keys against [`known_hosts`](Self::known_hosts), the one client key, no agent, no
    /// `~/.ssh/config`.
    pub fn connector(&self) -> SshConnector {
        self.fleet.connector()
    }

    /// Options of plain OpenSSH clients for host `i`: the same key, known_hosts, user and
    /// address, batch mode, no `~/.ssh/config` and GSSAPI off (Debian's client turns it on,
    /// which costs a Kerberos lookup per connection). `port_flag` is `-p` for `ssh` and `-P`
    /// for `scp`.
    pub fn openssh_args(&self, _i: usize, port_flag: &str) -> Vec<String> {
        let mut args = vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.client_key().display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts().display()),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "GSSAPIAuthentication=no".into(),
            port_flag.into(),
            self.port().to_string(),
        ];
        if let Some(kex) = &self.kex {
            args.push("-o".into());
            args.push(format!("KexAlgorithms={kex}"));
        }
        args
    }

    /// Makes [`openssh_args`](Self::openssh_args) ask for this key exchange (`None`: OpenSSH's
    /// default order, which in OpenSSH 9.2 starts with the post-quantum hybrid
    /// `sntrup761x25519-sha512`; russh, and so the deployer, gets `curve25519-sha256` from the
    /// same server).
    pub fn set_openssh_kex(&mut self, kex: Option<&str>) {
        self.kex = kex.map(str::to_string);
    }

    /// `user@address` of host `i`.
    pub fn destination(&self, i: usize) -> String {
        format!("{}@{}", self.user(), self.hosts[i])
    }
}

/// Makes `path` an empty directory owned by `user` (the benchmarks run as root; the login
/// user must be able to write there).
pub fn fresh_dir_for(path: &Path, user: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path)?;
    let status = Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(path)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "chown {user} {path:?} failed"
        )));
    }
    Ok(())
}

/// Writes `size` bytes of random data (incompressible) to `path`.
pub fn random_file(path: &Path, size: u64) -> std::io::Result<()> {
    let status = Command::new("head")
        .arg("-c")
        .arg(size.to_string())
        .arg("/dev/urandom")
        .stdout(std::fs::File::create(path)?)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other("head /dev/urandom failed"));
    }
    Ok(())
}

/// The median of some durations.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The 1-minute load average, as `/proc/loadavg` says.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
