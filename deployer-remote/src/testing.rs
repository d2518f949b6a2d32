//! A throwaway OpenSSH server for tests (feature `test-fixture`).
//!
//! [`TestSshd::start`] runs Debian's `/usr/sbin/sshd` (package `openssh-server`; `scripts/test.sh`
//! installs it when missing) in the foreground on a free port of 127.0.0.1, from a temporary
//! directory holding its own host key, a client key, `authorized_keys` and a `known_hosts` that
//! already trusts the server. `UsePAM no` and `StrictModes no`, so no system setup is touched
//! except, when running as root, the test login user:
//!
//! * as root with sudo installed, the harness logs in as the ordinary user `deployer-test`
//!   (created with `useradd -m` when missing, with default dotfiles, and given passwordless
//!   sudo through `/etc/sudoers.d/deployer-test`). Root's own dotfiles on CI machines are slow
//!   (`pyenv init` in `~/.bashrc`), which would distort every timing;
//! * as root without sudo, it logs in as root (hosts skip sudo for root);
//! * otherwise it logs in as the current user (whose sudo may then want a password).
//!
//! The server is killed when the [`TestSshd`] is dropped. Every test can start its own: each
//! takes ~50 ms to start.
//!
//! ```no_run
//! use deployer_core::{ExecOptions, RemoteHost};
//! use deployer_remote::testing::TestSshd;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let sshd = TestSshd::start().unwrap();
//! let host = sshd.host(); // an SshHost with the harness's key and known_hosts
//! let out = host.execute("whoami", &ExecOptions::new()).await.unwrap();
//! assert_eq!(out.stdout_str().trim(), sshd.user());
//! // Or build your own SshOptions / SshConnector from the harness's pieces:
//! let options = sshd.options(); // user, port, key file, known_hosts, no agent, no ~/.ssh/config
//! # let _ = options;
//! # });
//! ```

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::{SshConfig, SshConnector, SshHost, SshOptions};

mod fleet;
pub use fleet::{TestFleet, TestFleetBuilder};

/// The ordinary user the harness logs in as when it runs as root.
pub const TEST_USER: &str = "deployer-test";

/// An ordinary user without any sudo rule, for tests of what happens when sudo wants a
/// password ([`TestSshd::user_without_sudo`]).
pub const TEST_USER_NO_SUDO: &str = "deployer-nosudo";

/// Options of [`TestSshd::builder`].
#[derive(Debug, Clone)]
pub struct TestSshdBuilder {
    address: String,
    tcp_forwarding: bool,
    extra: Vec<String>,
}

impl Default for TestSshdBuilder {
    fn default() -> Self {
        TestSshdBuilder {
            address: "127.0.0.1".to_string(),
            tcp_forwarding: true,
            extra: Vec::new(),
        }
    }
}

impl TestSshdBuilder {
    /// The loopback address to listen on (default `127.0.0.1`; must be in 127.0.0.0/8).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// Whether the server forwards TCP (`direct-tcpip`, used by ProxyJump) (default: true).
    pub fn tcp_forwarding(mut self, yes: bool) -> Self {
        self.tcp_forwarding = yes;
        self
    }

    /// Adds a raw `sshd_config` line after the harness's own (default: none). sshd keeps the
    /// first value of a keyword, so to override one of the harness's settings (`MaxSessions`,
    /// `LogLevel`…) put it in a `Match all` block: `.config_line("Match all")
    /// .config_line("  MaxSessions 1")`.
    pub fn config_line(mut self, line: impl Into<String>) -> Self {
        self.extra.push(line.into());
        self
    }

    /// Starts the server and waits until it listens.
    pub fn start(self) -> std::io::Result<TestSshd> {
        TestSshd::start_with(self)
    }
}

/// A running `sshd` for tests; killed on drop. See the [module docs](self).
pub struct TestSshd {
    dir: tempfile::TempDir,
    child: Child,
    address: String,
    port: u16,
    user: String,
    logs: Arc<(Mutex<String>, Condvar)>,
}

impl std::fmt::Debug for TestSshd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSshd")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn err(message: impl Into<String>) -> std::io::Error {
    std::io::Error::other(message.into())
}

fn run(cmd: &mut Command) -> std::io::Result<()> {
    let out = cmd
        .output()
        .map_err(|e| err(format!("cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn keygen(path: &Path, kind: &str, passphrase: &str) -> std::io::Result<()> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args([
        "-q",
        "-t",
        kind,
        "-N",
        passphrase,
        "-C",
        "deployer-test",
        "-f",
    ])
    .arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    run(&mut cmd)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn sudo_installed() -> bool {
    ["/usr/bin/sudo", "/bin/sudo", "/usr/local/bin/sudo"]
        .iter()
        .any(|p| Path::new(p).exists())
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Creates the login user `name` if missing (with default dotfiles) and unlocks it for key
/// logins.
fn ensure_user(name: &str) -> Result<(), String> {
    if !user_exists(name) {
        // Another test process may create it at the same time: check again on failure.
        let made = run(Command::new("useradd").args(["-m", "-s", "/bin/bash", name]));
        if !user_exists(name) {
            return Err(format!("cannot create user {name}: {made:?}"));
        }
    }
    // useradd leaves the account locked (`!` password), which sshd without PAM refuses;
    // `*` allows no password login either, but is not "locked".
    run(Command::new("usermod").args(["-p", "*", name])).map_err(|e| e.to_string())
}

/// Creates [`TEST_USER`] (once per process) and its sudo rule.
fn ensure_test_user() -> std::io::Result<String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        ensure_user(TEST_USER)?;
        if Path::new("/etc/sudoers.d").is_dir() {
            let rule = format!("{TEST_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n");
            let path = Path::new("/etc/sudoers.d").join(TEST_USER);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(rule.as_str()) {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, rule).map_err(|e| e.to_string())?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o440))
                    .map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    });
    result.clone().map_err(err)?;
    Ok(TEST_USER.to_string())
}

/// A port not handed out before in this process and free right now.
fn free_port(address: &str) -> std::io::Result<u16> {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = std::net::TcpListener::bind((address, 0))?
            .local_addr()?
            .port();
        let mut used = USED.lock().unwrap_or_else(|p| p.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(err("no free port"))
}

/// The installed `sshd`.
fn sshd_binary() -> std::io::Result<&'static str> {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| {
            err("sshd not found: install openssh-server (apt-get install openssh-server)")
        })
}

/// The user the harness logs in as (see the module docs), created when needed; as root, also
/// sshd's privilege separation directory.
fn login_user() -> std::io::Result<String> {
    if is_root() {
        std::fs::create_dir_all("/run/sshd")?;
        if sudo_installed() {
            ensure_test_user()
        } else {
            // Without sudo an ordinary user could not run the sudo tests: log in as root
            // (where sudo is skipped), slower dotfiles and all.
            Ok("root".to_string())
        }
    } else {
        std::env::var("USER").map_err(|_| err("USER is not set"))
    }
}

/// The `sshd_config` lines every harness server has: its host key and authorized keys in
/// `dir`, public-key logins only, no PAM and no strict modes (nothing of the system touched),
/// and the limits given.
fn sshd_common(
    dir: &Path,
    tcp_forwarding: bool,
    max_sessions: usize,
    max_startups: &str,
) -> String {
    format!(
        "HostKey {d}/host_ed25519\nAuthorizedKeysFile {d}/authorized_keys\nUsePAM no\n\
         StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nAllowTcpForwarding {fwd}\n\
         MaxSessions {max_sessions}\nMaxStartups {max_startups}\nLogLevel INFO\nPrintMotd no\n\
         Subsystem sftp internal-sftp\n",
        d = dir.display(),
        fwd = if tcp_forwarding { "yes" } else { "no" },
    )
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

impl TestSshd {
    /// Starts a server with the defaults (127.0.0.1, TCP forwarding on).
    pub fn start() -> std::io::Result<TestSshd> {
        TestSshdBuilder::default().start()
    }

    /// A builder for other settings.
    pub fn builder() -> TestSshdBuilder {
        TestSshdBuilder::default()
    }

    fn start_with(b: TestSshdBuilder) -> std::io::Result<TestSshd> {
        if !b.address.starts_with("127.") {
            return Err(err("the test sshd listens on loopback (127.0.0.0/8) only"));
        }
        let sshd = sshd_binary()?;
        let user = login_user()?;
        let dir = tempfile::Builder::new().prefix("deployer-sshd").tempdir()?;
        // The login user reads authorized_keys from here.
        set_mode(dir.path(), 0o755)?;
        let host_key = dir.path().join("host_ed25519");
        keygen(&host_key, "ed25519", "")?;
        let client_key = dir.path().join("id_ed25519");
        keygen(&client_key, "ed25519", "")?;
        std::fs::copy(
            dir.path().join("id_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )?;
        set_mode(&dir.path().join("authorized_keys"), 0o644)?;
        let logs = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port(&b.address)?;
            let config = dir.path().join("sshd_config");
            let mut text = format!(
                "Port {port}\nListenAddress {addr}\nPidFile {d}/sshd.pid\n{common}",
                addr = b.address,
                d = dir.path().display(),
                common = sshd_common(dir.path(), b.tcp_forwarding, 10, "100:30:200"),
            );
            for line in &b.extra {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&config, text)?;
            std::fs::write(
                dir.path().join("known_hosts"),
                format!(
                    "[{}]:{port} {}",
                    b.address,
                    std::fs::read_to_string(dir.path().join("host_ed25519.pub"))?
                ),
            )?;
            let mut child = Command::new(sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| err(format!("cannot start {sshd}: {e}")))?;
            let stderr = child.stderr.take().ok_or_else(|| err("no stderr"))?;
            let (tx, rx) = std::sync::mpsc::channel::<bool>();
            let sink = logs.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("Server listening on")
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(true);
                    }
                    let mut logs = sink.0.lock().unwrap_or_else(|p| p.into_inner());
                    logs.push_str(&line);
                    logs.push('\n');
                    sink.1.notify_all();
                }
                if let Some(tx) = tx.take() {
                    let _ = tx.send(false);
                }
            });
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(true) => {
                    return Ok(TestSshd {
                        dir,
                        child,
                        address: b.address,
                        port,
                        user,
                        logs,
                    });
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = logs.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if !last_error.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        Err(err(format!("sshd did not start: {last_error}")))
    }

    /// The address it listens on.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login user (see the module docs).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The temporary directory holding keys and config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The client's private key (Ed25519, no passphrase), accepted by the server.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// A known_hosts file that trusts this server (`[address]:port key`).
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The server's public host key line (`ssh-ed25519 AAAA… comment`).
    pub fn host_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_ed25519.pub"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Generates another client key of `kind` (`rsa`, `ecdsa`, `ed25519`), optionally with a
    /// passphrase, authorizes it, and returns its path.
    pub fn add_client_key(&self, kind: &str, passphrase: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.path().join(format!(
            "id_{kind}_{}",
            std::fs::read_dir(self.dir.path())?.count()
        ));
        keygen(&path, kind, passphrase)?;
        let public = std::fs::read_to_string(path.with_extension("pub"))
            .or_else(|_| std::fs::read_to_string(format!("{}.pub", path.display())))?;
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))?;
        f.write_all(public.as_bytes())?;
        Ok(path)
    }

    /// What sshd logged so far (`-e`, level INFO: one `Accepted publickey` line per login).
    pub fn logs(&self) -> String {
        self.logs
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits (at most `limit`) until the log holds `needle` at least `count` times, and
    /// returns how many times it does. sshd writes its log asynchronously to the client, so a
    /// test that checks for a log line after the client saw the effect waits here.
    pub fn wait_for_log(&self, needle: &str, count: usize, limit: Duration) -> usize {
        let deadline = std::time::Instant::now() + limit;
        let (lock, cond) = &*self.logs;
        let mut logs = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let found = logs.matches(needle).count();
            let now = std::time::Instant::now();
            if found >= count || now >= deadline {
                return found;
            }
            logs = cond
                .wait_timeout(logs, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Creates (when missing) [`TEST_USER_NO_SUDO`], a user with no sudo rule, and returns
    /// options that log in as it. Needs root.
    pub fn user_without_sudo(&self) -> std::io::Result<SshOptions> {
        if !is_root() {
            return Err(err("creating a test user needs root"));
        }
        if !sudo_installed() {
            return Err(err(
                "sudo is not installed (apt-get install sudo): nothing to test without it",
            ));
        }
        ensure_user(TEST_USER_NO_SUDO).map_err(err)?;
        Ok(self.options().user(TEST_USER_NO_SUDO))
    }

    /// Options that reach this server: its user and port, the client key, its known_hosts,
    /// strict host keys, no agent, no default keys and no `~/.ssh/config`.
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

    /// An [`SshConnector`] that sends every remote host name (`fe001`, `db1`…) to this
    /// server as [`user`](Self::user), each name its own host and connection, and
    /// `HostSpec::local()` to a `LocalHost`: for tests of tasklists that address several
    /// hosts.
    ///
    /// ```no_run
    /// use deployer_core::{Connector, ExecOptions, HostSpec};
    /// use deployer_remote::testing::TestSshd;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let sshd = TestSshd::start().unwrap();
    /// let connector = sshd.connector();
    /// let fe001 = connector.host(&HostSpec::remote("fe001", None)).await.unwrap();
    /// assert_eq!(fe001.name(), "fe001");
    /// fe001.execute("true", &ExecOptions::new()).await.unwrap();
    /// # });
    /// ```
    pub fn connector(&self) -> SshConnector {
        let config = format!(
            "Host *\n  HostName {}\n  Port {}\n  User {}\n",
            self.address, self.port, self.user
        );
        let config = Arc::new(SshConfig::parse(&config).unwrap_or_default());
        SshConnector::with_config(self.options(), config)
    }

    /// An [`SshHost`] for this server with [`options`](Self::options), named by its address.
    pub fn host(&self) -> SshHost {
        self.host_with(self.options())
    }

    /// An [`SshHost`] for this server with other options.
    pub fn host_with(&self, options: SshOptions) -> SshHost {
        let target = crate::ssh::Target {
            hostname: self.address.clone(),
            port: options.port,
            user: options.user.clone().unwrap_or_else(|| self.user.clone()),
            identity_files: options.identity_files.clone(),
            jump: None,
        };
        SshHost::from_target(self.address.clone(), target, options)
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SHA256:…` of a public key line, as OpenSSH's `ssh-keygen -l` prints it: an oracle
/// independent of the client's own fingerprinting, for host-key tests.
pub fn fingerprint(public_key_line: &str) -> std::io::Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("k.pub");
    std::fs::write(&path, public_key_line)?;
    let out = Command::new("ssh-keygen").arg("-lf").arg(&path).output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "ssh-keygen -lf printed no fingerprint: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })
}
