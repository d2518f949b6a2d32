//! A fleet of throwaway OpenSSH servers on loopback for the end-to-end benchmarks: one
//! [`TestSshd`] per address (127.0.0.2, 127.0.0.3, …), all reachable with one client key and
//! one known_hosts file, by the deployer (an [`SshConnector`]) and by plain `ssh`/`scp` alike.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deployer_remote::testing::TestSshd;
use deployer_remote::{SshConfig, SshConnector};

/// `n` sshd "hosts" on 127.0.0.2 … 127.0.0.(n+1); killed on drop.
pub struct Fleet {
    sshds: Vec<TestSshd>,
    dir: tempfile::TempDir,
    ssh_config: String,
    kex: Option<String>,
}

impl Fleet {
    /// Starts `n` servers (one process each: sshd takes at most 16 `ListenAddress`es, and one
    /// process per address keeps each host's port and host key its own).
    pub fn start(n: usize) -> std::io::Result<Fleet> {
        assert!((1..=200).contains(&n), "1 to 200 hosts");
        let mut sshds = Vec::with_capacity(n);
        for i in 0..n {
            sshds.push(
                TestSshd::builder()
                    .address(format!("127.0.0.{}", i + 2))
                    .start()?,
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("deployer-fleet")
            .tempdir()?;
        // One client key for all: the first server's, authorized on every other one.
        let public = std::fs::read_to_string(sshds[0].dir().join("id_ed25519.pub"))?;
        let mut known = String::new();
        let mut config = String::new();
        for s in &sshds {
            if !std::ptr::eq(s, &sshds[0]) {
                use std::io::Write;
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(s.dir().join("authorized_keys"))?
                    .write_all(public.as_bytes())?;
            }
            let line = std::fs::read_to_string(s.known_hosts())?;
            known.push_str(line.trim_end());
            known.push('\n');
            let _ = write!(
                config,
                "Host {a}\n  HostName {a}\n  Port {p}\n  User {u}\n",
                a = s.address(),
                p = s.port(),
                u = s.user()
            );
        }
        std::fs::write(dir.path().join("known_hosts"), known)?;
        Ok(Fleet {
            sshds,
            dir,
            ssh_config: config,
            kex: None,
        })
    }

    /// The servers.
    pub fn sshds(&self) -> &[TestSshd] {
        &self.sshds
    }

    /// The login user.
    pub fn user(&self) -> &str {
        self.sshds[0].user()
    }

    /// The host names (their addresses), in order.
    pub fn hosts(&self) -> Vec<String> {
        self.sshds.iter().map(|s| s.address().to_string()).collect()
    }

    /// The client key every server accepts.
    pub fn client_key(&self) -> PathBuf {
        self.sshds[0].client_key()
    }

    /// A known_hosts file trusting every server.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// A fresh connector (no connection open yet) reaching every host by its address: strict
    /// host keys against [`known_hosts`](Self::known_hosts), the one client key, no agent, no
    /// `~/.ssh/config`.
    pub fn connector(&self) -> SshConnector {
        let config = SshConfig::parse(&self.ssh_config).expect("fleet ssh config");
        let options = self.sshds[0]
            .options()
            .known_hosts_file(self.known_hosts())
            .ssh_config(config);
        SshConnector::new(options).expect("connector")
    }

    /// Options of plain OpenSSH clients for host `i`: the same key, known_hosts, user and
    /// address, batch mode, no `~/.ssh/config` and GSSAPI off (Debian's client turns it on,
    /// which costs a Kerberos lookup per connection). `port_flag` is `-p` for `ssh` and `-P`
    /// for `scp`.
    pub fn openssh_args(&self, i: usize, port_flag: &str) -> Vec<String> {
        let s = &self.sshds[i];
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
            s.port().to_string(),
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
        format!("{}@{}", self.user(), self.sshds[i].address())
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
