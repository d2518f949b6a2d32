//! Many throwaway OpenSSH servers at once: [`TestFleet`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{err, free_port, keygen, login_user, set_mode, sshd_binary, sshd_common};
use crate::{SshConfig, SshConnector, SshOptions};

/// How many `ListenAddress` lines one sshd accepts.
const ADDRESSES_PER_MASTER: usize = 16;

/// The most hosts (listening and refusing) a fleet can have: 127.1.0.1 … 127.1.255.254.
const MAX_ADDRESSES: usize = 254 * 256;

/// How long the masters may take to listen.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The `i`-th fleet address: 127.1.0.1 … 127.1.0.254, 127.1.1.1 …; no `.0` or `.255`.
fn address(i: usize) -> String {
    format!("127.1.{}.{}", i / 254, i % 254 + 1)
}

/// Options of [`TestFleet::builder`].
#[derive(Debug, Clone, Default)]
pub struct TestFleetBuilder {
    hosts: usize,
    refusing: usize,
    reexec: bool,
    extra: Vec<String>,
}

impl TestFleetBuilder {
    /// How many hosts listen (default: 1).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// How many more addresses, after the listening ones, where nothing listens on the
    /// fleet's port, so that connecting is refused at once (default: 0). They are
    /// [`TestFleet::refusing_hosts`], not in [`TestFleet::hosts`], and have known_hosts lines
    /// like the others.
    pub fn refusing(mut self, k: usize) -> Self {
        self.refusing = k;
        self
    }

    /// Whether sshd re-executes itself for every connection, as a stock sshd does (default:
    /// false, where the installed sshd accepts `-r`: a connection then costs the server a
    /// fork only, leaving more of a shared machine's CPU to the client measured). With `true`
    /// the servers cost what stock servers cost, e.g. to reproduce a client starved of CPU by
    /// its servers on one machine.
    pub fn reexec(mut self, yes: bool) -> Self {
        self.reexec = yes;
        self
    }

    /// Adds a raw `sshd_config` line to every master's config, after the harness's own (see
    /// [`TestSshdBuilder::config_line`](super::TestSshdBuilder::config_line)).
    pub fn config_line(mut self, line: impl Into<String>) -> Self {
        self.extra.push(line.into());
        self
    }

    /// Starts every master and waits until each listens on all its addresses.
    pub fn start(self) -> std::io::Result<TestFleet> {
        TestFleet::start_with(self)
    }
}

/// `n` OpenSSH servers on loopback, reachable as `n` distinct hosts (127.1.0.1, 127.1.0.2, …,
/// skipping `.0` and `.255`), all on one port; killed on drop.
///
/// One `sshd` master process serves 16 addresses (sshd's limit of `ListenAddress` lines), so
/// 1000 hosts are 63 processes, started in parallel (1000 hosts listen within a few seconds).
/// All hosts share one host key (one known_hosts line per address, strict checking works as
/// with separate machines), one client key and the login user of
/// [`TestSshd`](super::TestSshd) (`deployer-test` as root). The servers are set up for many
/// clients at once: `MaxStartups 2000:30:4000`, `MaxSessions 64`, `UseDNS no`, no
/// per-source penalties where the installed OpenSSH has them (9.8+), and — where sshd still
/// accepts `-r`, unless [`TestFleetBuilder::reexec`] — no re-execution per connection, so that
/// on one machine the servers spend as little CPU as possible beside the client being
/// measured.
///
/// Every master is killed when the fleet is dropped (also while a panic unwinds), and on Linux
/// also gets `SIGTERM` when the thread that started the fleet exits, so a killed or aborted
/// test or benchmark leaves no sshd behind: keep the fleet on the thread that started it.
///
/// ```no_run
/// use deployer_core::{Connector, ExecOptions, HostSpec};
/// use deployer_remote::testing::TestFleet;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let fleet = TestFleet::builder().hosts(100).refusing(2).start().unwrap();
/// assert_eq!(fleet.hosts().len(), 100);
/// assert_eq!(fleet.hosts()[0], "127.1.0.1");
/// let connector = fleet.connector(); // strict host keys, the fleet's key, user and port
/// for address in fleet.hosts() {
///     let host = connector.host(&HostSpec::remote(address, None)).await.unwrap();
///     host.execute("true", &ExecOptions::new()).await.unwrap();
/// }
/// // Nothing listens on the refusing hosts: connecting fails at once.
/// let refused = connector.host(&HostSpec::remote(&fleet.refusing_hosts()[0], None)).await;
/// # let _ = refused;
/// # });
/// ```
///
/// The `deploy` program reaches the fleet with a config's `ssh` section:
///
/// ```no_run
/// # let fleet = deployer_remote::testing::TestFleet::start(3).unwrap();
/// let config = format!(
///     "platform: release\nuser: {}\nssh:\n  port: {}\n  identity_file: {}\n  known_hosts: {}\n  \
///      agent: false\n  config: false\n",
///     fleet.user(),
///     fleet.port(),
///     fleet.client_key().display(),
///     fleet.known_hosts().display(),
/// );
/// # let _ = config;
/// ```
pub struct TestFleet {
    dir: tempfile::TempDir,
    masters: Vec<Child>,
    hosts: Vec<String>,
    refusing: Vec<String>,
    port: u16,
    user: String,
}

impl std::fmt::Debug for TestFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestFleet")
            .field("hosts", &self.hosts.len())
            .field("refusing", &self.refusing.len())
            .field("masters", &self.masters.len())
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Makes `cmd`'s process get SIGTERM when the calling thread exits (Linux), so that a killed
/// test leaves no sshd behind.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory of ours.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the parent exited"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Whether `sshd -T` (the effective configuration of `config`) knows `keyword`.
fn sshd_knows(sshd: &str, config: &Path, keyword: &str) -> bool {
    Command::new(sshd)
        .arg("-T")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(keyword))
        })
}

/// Whether sshd accepts `-r` (no re-execution per connection).
fn sshd_accepts_r(sshd: &str, config: &Path) -> bool {
    Command::new(sshd)
        .arg("-t")
        .arg("-r")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl TestFleet {
    /// Starts `n` listening hosts (see [`builder`](Self::builder) for more).
    pub fn start(n: usize) -> std::io::Result<TestFleet> {
        TestFleetBuilder::default().hosts(n).start()
    }

    /// A builder for other settings (refusing hosts, extra sshd config).
    pub fn builder() -> TestFleetBuilder {
        TestFleetBuilder::default().hosts(1)
    }

    fn start_with(b: TestFleetBuilder) -> std::io::Result<TestFleet> {
        if b.hosts == 0 {
            return Err(err("a test fleet needs at least one host"));
        }
        if b.hosts + b.refusing > MAX_ADDRESSES {
            return Err(err(format!(
                "a test fleet has at most {MAX_ADDRESSES} addresses (127.1.0.1 … 127.1.255.254), \
                 asked for {} hosts and {} refusing ones",
                b.hosts, b.refusing
            )));
        }
        let sshd = sshd_binary()?;
        let user = login_user()?;
        let dir = tempfile::Builder::new()
            .prefix("deployer-fleet")
            .tempdir()?;
        // The login user reads authorized_keys from here.
        set_mode(dir.path(), 0o755)?;
        let d = dir.path();
        keygen(&d.join("host_ed25519"), "ed25519", "")?;
        keygen(&d.join("id_ed25519"), "ed25519", "")?;
        std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys"))?;
        set_mode(&d.join("authorized_keys"), 0o644)?;
        let host_key = std::fs::read_to_string(d.join("host_ed25519.pub"))?;
        // `ssh-ed25519 AAAA…`: known_hosts lines carry no comment.
        let host_key: String = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let hosts: Vec<String> = (0..b.hosts).map(address).collect();
        let refusing: Vec<String> = (b.hosts..b.hosts + b.refusing).map(address).collect();

        // Many clients at once: more startups and sessions, no DNS, no last-log lookups.
        let common = format!(
            "{}X11Forwarding no\nUseDNS no\nPrintLastLog no\n",
            sshd_common(d, false, 64, "2000:30:4000")
        );
        // What the installed sshd supports, probed once on a config with the common part.
        let probe = d.join("sshd_config.probe");
        std::fs::write(&probe, format!("ListenAddress 127.1.0.1\n{common}"))?;
        let mut common = common;
        if sshd_knows(sshd, &probe, "persourcepenalties") {
            common.push_str("PerSourcePenalties no\n");
        }
        let no_reexec = !b.reexec && sshd_accepts_r(sshd, &probe);
        for line in &b.extra {
            common.push_str(line);
            common.push('\n');
        }

        let mut last_error = String::new();
        for _ in 0..5 {
            // A port nothing is bound to on any address right now.
            let port = free_port("0.0.0.0")?;
            let mut known = String::new();
            for a in hosts.iter().chain(&refusing) {
                known.push_str(&format!("[{a}]:{port} {host_key}\n"));
            }
            std::fs::write(d.join("known_hosts"), known)?;
            match spawn_masters(sshd, d, &hosts, port, &common, no_reexec) {
                Ok(masters) => {
                    return Ok(TestFleet {
                        dir,
                        masters,
                        hosts,
                        refusing,
                        port,
                        user,
                    });
                }
                // Someone took the port meanwhile: again on another one.
                Err(e) if e.to_string().contains("Address already in use") => {
                    last_error = e.to_string();
                }
                Err(e) => return Err(e),
            }
        }
        Err(err(format!("the fleet's sshd did not start: {last_error}")))
    }
}

/// Kills and reaps `masters`.
fn kill_all(masters: &mut Vec<Child>) {
    for child in masters.iter_mut() {
        let _ = child.kill();
    }
    for mut child in masters.drain(..) {
        let _ = child.wait();
    }
}

/// Starts one master per 16 of `hosts` on `port` and waits until all listen; on failure kills
/// the ones started.
fn spawn_masters(
    sshd: &str,
    dir: &Path,
    hosts: &[String],
    port: u16,
    common: &str,
    no_reexec: bool,
) -> std::io::Result<Vec<Child>> {
    let mut masters = Vec::new();
    let result = spawn_into(&mut masters, sshd, dir, hosts, port, common, no_reexec);
    if result.is_err() {
        kill_all(&mut masters);
    }
    result.map(|()| masters)
}

fn spawn_into(
    masters: &mut Vec<Child>,
    sshd: &str,
    dir: &Path,
    hosts: &[String],
    port: u16,
    common: &str,
    no_reexec: bool,
) -> std::io::Result<()> {
    let mut expected = Vec::new();
    for (k, chunk) in hosts.chunks(ADDRESSES_PER_MASTER).enumerate() {
        let mut text = format!("Port {port}\n");
        for a in chunk {
            text.push_str(&format!("ListenAddress {a}\n"));
        }
        text.push_str(&format!("PidFile {}/sshd.{k}.pid\n", dir.display()));
        text.push_str(common);
        let config = dir.join(format!("sshd_config.{k}"));
        std::fs::write(&config, text)?;
        let log = dir.join(format!("sshd.{k}.log"));
        let mut cmd = Command::new(sshd);
        cmd.arg("-D").arg("-e").arg("-f").arg(&config);
        if no_reexec {
            cmd.arg("-r");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot start {sshd}: {e}")))?;
        masters.push(child);
        expected.push((log, chunk.len()));
    }
    let deadline = Instant::now() + START_LIMIT;
    let mut waiting: Vec<usize> = (0..masters.len()).collect();
    loop {
        let mut still = Vec::new();
        for k in waiting {
            let (log, n) = &expected[k];
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.matches("Server listening on").count() >= *n {
                continue;
            }
            if let Ok(Some(status)) = masters[k].try_wait() {
                return Err(err(format!(
                    "sshd master {k} exited ({status}): {}",
                    text.trim()
                )));
            }
            still.push(k);
        }
        waiting = still;
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(err(format!(
                "{} of {} sshd masters did not listen within {START_LIMIT:?}",
                waiting.len(),
                masters.len()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl TestFleet {
    /// The listening hosts' addresses, in order (127.1.0.1, 127.1.0.2, …).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The addresses where nothing listens ([`TestFleetBuilder::refusing`]), after the
    /// listening ones.
    pub fn refusing_hosts(&self) -> &[String] {
        &self.refusing
    }

    /// The port every host listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user (as for [`TestSshd`](super::TestSshd)).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// How many sshd master processes serve the fleet (one per 16 hosts).
    pub fn masters(&self) -> usize {
        self.masters.len()
    }

    /// The temporary directory holding keys, configs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The client's private key (Ed25519, no passphrase), accepted by every host.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// A known_hosts file that trusts every host, listening or refusing: one
    /// `[address]:port key` line each.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The hosts' one public host key line (`ssh-ed25519 AAAA… comment`).
    pub fn host_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Options that reach every host of the fleet by its address: its user and port, the
    /// client key, its known_hosts, strict host keys, no agent, no default keys and no
    /// `~/.ssh/config`.
    pub fn options(&self) -> SshOptions {
        SshOptions::new()
            .user(self.user.clone())
            .port(self.port)
            .identity_file(self.client_key())
            .default_identities(false)
            .agent(false)
            .known_hosts_file(self.known_hosts())
            .ssh_config(SshConfig::new())
    }

    /// A fresh [`SshConnector`] (no connection open yet) with [`options`](Self::options): host
    /// names are the fleet's addresses.
    pub fn connector(&self) -> SshConnector {
        SshConnector::with_config(self.options(), Arc::new(SshConfig::new()))
    }

    /// What every master logged so far (level INFO: `Server listening on …`, one `Accepted
    /// publickey` line per login, `drop connection` when `MaxStartups` refused one).
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for k in 0..self.masters.len() {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(format!("sshd.{k}.log")))
            {
                all.push_str(&text);
            }
        }
        all
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        kill_all(&mut self.masters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_network_and_broadcast_octets() {
        assert_eq!(address(0), "127.1.0.1");
        assert_eq!(address(253), "127.1.0.254");
        assert_eq!(address(254), "127.1.1.1");
        assert_eq!(address(MAX_ADDRESSES - 1), "127.1.255.254");
    }
}
