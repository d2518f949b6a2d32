//! [`SshHost`]: the [`RemoteHost`] contract over SSH, on `russh`.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deployer_core::{
    ExecOptions, ExecOutput, OutputSink, PutOptions, RemoteError, RemoteHost, Stream, async_trait,
    quote,
};
use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::common::{LineCollector, install_with, shell_line, sudo_failure};
use crate::config::{SshConfig, home_dir, parse_jump};
use crate::local::short;

mod shell;

/// How server host keys are checked against known_hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Only hosts whose key is recorded are accepted (the default).
    #[default]
    Strict,
    /// Unknown hosts are accepted and their key recorded; a changed key is still refused
    /// (OpenSSH's `StrictHostKeyChecking accept-new`).
    AcceptNew,
    /// Any key is accepted and nothing is checked. Insecure: for throwaway test machines only.
    Off,
}

/// Asked for the passphrase of an encrypted key file; `None` skips the key.
pub type PassphraseCallback = Arc<dyn Fn(&Path) -> Option<String> + Send + Sync>;

/// How [`SshHost`]s connect and authenticate. Built with setters; every default is stated.
///
/// ```
/// use deployer_remote::{HostKeyPolicy, SshOptions};
/// use std::time::Duration;
///
/// let options = SshOptions::new()
///     .user("deploy")
///     .identity_file("/etc/deployer/id_ed25519")
///     .host_key_policy(HostKeyPolicy::AcceptNew)
///     .connect_timeout(Duration::from_secs(5))
///     .passphrase(|_key| std::env::var("DEPLOY_KEY_PASSPHRASE").ok());
/// assert!(format!("{options:?}").contains("deploy"));
/// ```
#[derive(Clone)]
pub struct SshOptions {
    pub(crate) user: Option<String>,
    pub(crate) port: u16,
    pub(crate) identity_files: Vec<PathBuf>,
    pub(crate) default_identities: bool,
    pub(crate) agent: bool,
    pub(crate) agent_socket: Option<PathBuf>,
    pub(crate) passphrase: Option<PassphraseCallback>,
    pub(crate) known_hosts: Option<PathBuf>,
    pub(crate) policy: HostKeyPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_channels: usize,
    pub(crate) max_connections: usize,
    pub(crate) reuse_shells: bool,
    pub(crate) keepalive: (Duration, usize),
    pub(crate) ssh_config: Option<Arc<SshConfig>>,
}

impl fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshOptions")
            .field("user", &self.user)
            .field("port", &self.port)
            .field("identity_files", &self.identity_files)
            .field("default_identities", &self.default_identities)
            .field("agent", &self.agent)
            .field("agent_socket", &self.agent_socket)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<callback>"),
            )
            .field("known_hosts", &self.known_hosts)
            .field("policy", &self.policy)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_channels", &self.max_channels)
            .field("max_connections", &self.max_connections)
            .field("reuse_shells", &self.reuse_shells)
            .field("keepalive", &self.keepalive)
            .field("ssh_config", &self.ssh_config.is_some())
            .finish()
    }
}

impl Default for SshOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl SshOptions {
    /// The defaults: see each setter.
    pub fn new() -> Self {
        SshOptions {
            user: None,
            port: 22,
            identity_files: Vec::new(),
            default_identities: true,
            agent: true,
            agent_socket: None,
            passphrase: None,
            known_hosts: None,
            policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(10),
            max_channels: 8,
            max_connections: 4,
            reuse_shells: true,
            keepalive: (Duration::from_secs(15), 3),
            ssh_config: None,
        }
    }

    /// The login user when neither the task nor the ssh config names one (default: `$USER`,
    /// else `root`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The port when the ssh config names none (default: 22).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Adds a private key file to try (default: none, so the ssh config's `IdentityFile`s and
    /// then `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa` are tried).
    pub fn identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identity_files.push(path.into());
        self
    }

    /// Whether the default key files in `~/.ssh` are tried when no key file is named
    /// (default: true).
    pub fn default_identities(mut self, yes: bool) -> Self {
        self.default_identities = yes;
        self
    }

    /// Whether keys of the ssh-agent at `$SSH_AUTH_SOCK` are tried first (default: true).
    pub fn agent(mut self, yes: bool) -> Self {
        self.agent = yes;
        self
    }

    /// The ssh-agent socket to use (default: `$SSH_AUTH_SOCK`).
    pub fn agent_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.agent_socket = Some(path.into());
        self
    }

    /// Called for the passphrase of an encrypted key file (default: none; encrypted keys are
    /// skipped). The passphrase is never logged or stored.
    pub fn passphrase(
        mut self,
        callback: impl Fn(&Path) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.passphrase = Some(Arc::new(callback));
        self
    }

    /// The known_hosts file (default: `~/.ssh/known_hosts`).
    pub fn known_hosts_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts = Some(path.into());
        self
    }

    /// How host keys are checked (default: [`HostKeyPolicy::Strict`]).
    pub fn host_key_policy(mut self, policy: HostKeyPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Limit on opening a connection: TCP, key exchange and authentication (default: 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Commands in flight on one connection (default: 8). Keep it at least 2 below the server's
    /// `MaxSessions` (OpenSSH: 10): a cancelled command is killed through one more channel.
    pub fn max_channels(mut self, n: usize) -> Self {
        self.max_channels = n.max(1);
        self
    }

    /// Connections opened to one host when all channels of the open ones are busy (default:
    /// 4); beyond that, commands wait for a free channel.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Run commands on long-lived remote shells, one per channel, instead of a new SSH session
    /// each (default: true). A session costs the server a fork of `sshd`, the login shell and a
    /// `sh`; on a reused shell a command costs one `sh`. Turn it off for hosts without a POSIX
    /// `sh` reachable from the login shell, or to see every command as its own session in the
    /// server's logs. Commands with stdin data and uploads always get a session of their own.
    pub fn reuse_shells(mut self, yes: bool) -> Self {
        self.reuse_shells = yes;
        self
    }

    /// How a connection that died silently (a frozen host, a dropped flow) is noticed: a
    /// keepalive every `interval`, and the connection is dropped — its commands fail with
    /// [`RemoteError::Disconnected`], later ones reconnect — after `max_missed` unanswered
    /// (default: 15 s and 3, so about a minute). A task timeout notices sooner for that task.
    ///
    /// ```
    /// use deployer_remote::SshOptions;
    /// use std::time::Duration;
    ///
    /// let options = SshOptions::new().keepalive(Duration::from_secs(5), 2);
    /// assert!(format!("{options:?}").contains("5s"));
    /// ```
    pub fn keepalive(mut self, interval: Duration, max_missed: usize) -> Self {
        self.keepalive = (interval.max(Duration::from_millis(100)), max_missed.max(1));
        self
    }

    /// The ssh client configuration to apply (default: `~/.ssh/config`, read when the first
    /// host is resolved). Pass [`SshConfig::new()`] to ignore the user's file.
    pub fn ssh_config(mut self, config: SshConfig) -> Self {
        self.ssh_config = Some(Arc::new(config));
        self
    }

    pub(crate) fn known_hosts_path(&self) -> PathBuf {
        self.known_hosts.clone().unwrap_or_else(|| {
            home_dir()
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".ssh")
                .join("known_hosts")
        })
    }
}

/// Where and as whom to connect, after applying the ssh config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) hostname: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) identity_files: Vec<PathBuf>,
    pub(crate) jump: Option<Box<Target>>,
}

impl Target {
    /// Resolves `host` through `config`; `user`/`port` given explicitly win.
    pub(crate) fn resolve(
        host: &str,
        user: Option<&str>,
        port: Option<u16>,
        options: &SshOptions,
        config: &SshConfig,
        depth: usize,
    ) -> Result<Target, RemoteError> {
        let found = config.lookup(host);
        let user = user
            .map(str::to_string)
            .or(found.user)
            .or_else(|| options.user.clone())
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "root".to_string());
        let jump = match found.proxy_jump {
            Some(spec) => {
                if depth >= 4 {
                    return Err(RemoteError::Other {
                        host: host.to_string(),
                        message: "ProxyJump chain longer than 4 hosts (a loop?)".to_string(),
                    });
                }
                let (juser, jhost, jport) = parse_jump(&spec);
                Some(Box::new(Target::resolve(
                    &jhost,
                    juser.as_deref(),
                    jport,
                    options,
                    config,
                    depth + 1,
                )?))
            }
            None => None,
        };
        let mut identity_files = options.identity_files.clone();
        identity_files.extend(found.identity_files);
        Ok(Target {
            hostname: found.hostname.unwrap_or_else(|| host.to_string()),
            port: port.or(found.port).unwrap_or(options.port),
            user,
            identity_files,
            jump,
        })
    }
}

/// Checks the server key; records why a key was refused.
struct Client {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    policy: HostKeyPolicy,
    refused: Arc<Mutex<Option<RemoteError>>>,
}

impl Client {
    fn check(&self, key: &russh::keys::PublicKey) -> Result<(), RemoteError> {
        let key_type = key.algorithm().as_str().to_string();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(()),
            Ok(false) if self.policy == HostKeyPolicy::AcceptNew => {
                russh::keys::known_hosts::learn_known_hosts_path(
                    &self.host,
                    self.port,
                    key,
                    &self.known_hosts,
                )
                .map_err(|e| RemoteError::Other {
                    host: self.host.clone(),
                    message: format!(
                        "cannot record the host key in {}: {e}",
                        self.known_hosts.display()
                    ),
                })?;
                tracing::info!(host = %self.host, %key_type, %fingerprint, "learned new host key");
                Ok(())
            }
            Ok(false) => Err(RemoteError::UnknownHostKey {
                host: self.host.clone(),
                key_type,
                fingerprint,
            }),
            Err(russh::keys::Error::KeyChanged { line }) => Err(RemoteError::HostKeyMismatch {
                host: self.host.clone(),
                key_type,
                fingerprint,
                recorded: format!("{}:{line}", self.known_hosts.display()),
            }),
            Err(e) => Err(RemoteError::Other {
                host: self.host.clone(),
                message: format!("cannot read {}: {e}", self.known_hosts.display()),
            }),
        }
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if self.policy == HostKeyPolicy::Off {
            return Ok(true);
        }
        match self.check(&key.public_key()) {
            Ok(()) => Ok(true),
            Err(e) => {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Ok(false)
            }
        }
    }
}

/// One SSH connection with its channel budget.
struct Conn {
    handle: Handle<Client>,
    slots: Arc<Semaphore>,
    kill_slots: Arc<Semaphore>,
    /// Idle remote shells on this connection, each holding one of `slots`.
    idle: Mutex<Vec<(shell::Shell, OwnedSemaphorePermit)>>,
    /// The jump host's connection, kept open while this one is used.
    _jump: Option<Box<Conn>>,
}

/// A host reached over SSH: one connection opened on first use and reused, a channel per
/// command, up to [`SshOptions::max_channels`] commands in flight per connection (more
/// connections, up to [`SshOptions::max_connections`], when those are busy).
///
/// Commands run as `sh -c` — by default on a long-lived `sh` per channel that runs one command
/// after another (each in a fresh `sh` and its own process group, nothing carried over), so
/// that a command does not cost the server a new session; see [`SshOptions::reuse_shells`].
/// `sudo` uses `sudo -n` (skipped when the login user is `root`). A timeout, or dropping the
/// `execute` future, kills the command's whole process group on the host through a second
/// channel (OpenSSH ignores signal requests), then waits a bounded time for it to end. Uploads stream the file (or a tar of the
/// directory) into a temporary path beside the destination whose size is checked before it is
/// renamed into place; with sudo the same happens as root.
///
/// Environment variables of [`ExecOptions::env`] are exported in the command line (sshd
/// accepts no `env` requests by default), so they are visible to `ps` on the host for the
/// life of the command: pass secrets on stdin instead.
///
/// ```no_run
/// use deployer_core::{ExecOptions, RemoteHost};
/// use deployer_remote::{SshHost, SshOptions};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let host = SshHost::new("fe001", SshOptions::new().user("deploy")).unwrap();
/// let out = host.execute("uptime", &ExecOptions::new()).await?;
/// println!("{}", out.stdout_str());
/// # Ok::<_, deployer_core::RemoteError>(())
/// # });
/// ```
pub struct SshHost {
    name: String,
    target: Target,
    options: SshOptions,
    conns: tokio::sync::Mutex<Vec<Arc<Conn>>>,
    total: Arc<Semaphore>,
}

impl fmt::Debug for SshHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshHost")
            .field("name", &self.name)
            .field("hostname", &self.target.hostname)
            .field("port", &self.target.port)
            .field("user", &self.target.user)
            .finish_non_exhaustive()
    }
}

/// What a command needs from [`SshHost::slot_or_shell`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A channel slot (for a session of its own).
    Slot,
    /// An idle shell if there is one.
    Shell,
}

impl Conn {
    fn take_idle(&self) -> Option<(shell::Shell, OwnedSemaphorePermit)> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put_idle(&self, shell: shell::Shell, permit: OwnedSemaphorePermit) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((shell, permit));
    }
}

/// A channel slot: permits released when the command is done.
struct Slot {
    conn: Arc<Conn>,
    permit: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

const PID_MARKER: &[u8] = b"\x1edeployer-pid ";
/// How long a cancelled command's channel may take to close after the kill.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
const TAR_MARKER: &str = ".deployer-upload-complete";
/// Files up to this size are uploaded through a reused shell.
const SHELL_UPLOAD_MAX: u64 = 16 * 1024 * 1024;

impl SshHost {
    /// A host named `name` (resolved through the ssh config to its `HostName`, `Port`,
    /// `User`…). Nothing is connected until the first call.
    pub fn new(name: impl Into<String>, options: SshOptions) -> Result<Self, RemoteError> {
        Self::with_user_port(name, None, None, options)
    }

    /// Like [`new`](Self::new), with the login user and port given explicitly (they win over
    /// the ssh config).
    pub fn with_user_port(
        name: impl Into<String>,
        user: Option<&str>,
        port: Option<u16>,
        options: SshOptions,
    ) -> Result<Self, RemoteError> {
        let name = name.into();
        let config = match &options.ssh_config {
            Some(c) => c.clone(),
            None => Arc::new(SshConfig::user_default().map_err(|e| RemoteError::Other {
                host: name.clone(),
                message: e.to_string(),
            })?),
        };
        let target = Target::resolve(&name, user, port, &options, &config, 0)?;
        Ok(Self::from_target(name, target, options))
    }

    pub(crate) fn from_target(name: String, target: Target, options: SshOptions) -> Self {
        let total = options.max_channels * options.max_connections;
        SshHost {
            name,
            target,
            options,
            conns: tokio::sync::Mutex::new(Vec::new()),
            total: Arc::new(Semaphore::new(total)),
        }
    }

    /// The login user.
    pub fn user(&self) -> &str {
        &self.target.user
    }

    /// The address connected to (`HostName`) and port.
    pub fn address(&self) -> (&str, u16) {
        (&self.target.hostname, self.target.port)
    }

    /// Connects now instead of on the first command (e.g. to check reachability early).
    pub async fn connect(&self) -> Result<(), RemoteError> {
        let _slot = self.slot().await?;
        Ok(())
    }

    /// Number of open connections (for tests and diagnostics).
    pub async fn connection_count(&self) -> usize {
        let conns = self.conns.lock().await;
        conns.iter().filter(|c| !c.handle.is_closed()).count()
    }

    async fn slot(&self) -> Result<Slot, RemoteError> {
        Ok(self.slot_or_shell(Want::Slot).await?.0)
    }

    /// A channel slot, with an idle shell in it when one is wanted and there. Idle shells hold
    /// slots of their own: when every slot of every connection is taken and some by idle
    /// shells, an idle shell is closed to free its slot before another connection is opened.
    async fn slot_or_shell(&self, want: Want) -> Result<(Slot, Option<shell::Shell>), RemoteError> {
        let total = self
            .total
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.other("host closed"))?;
        let mut conns = self.conns.lock().await;
        conns.retain(|c| !c.handle.is_closed());
        if want != Want::Slot {
            for conn in conns.iter() {
                while let Some((mut shell, permit)) = conn.take_idle() {
                    if shell.usable() {
                        return Ok((
                            Slot {
                                conn: conn.clone(),
                                permit,
                                _total: total,
                            },
                            Some(shell),
                        ));
                    }
                    shell.close();
                }
            }
        }
        for conn in conns.iter() {
            if let Ok(permit) = conn.slots.clone().try_acquire_owned() {
                return Ok((
                    Slot {
                        conn: conn.clone(),
                        permit,
                        _total: total,
                    },
                    None,
                ));
            }
        }
        for conn in conns.iter() {
            if let Some((shell, permit)) = conn.take_idle() {
                shell.close();
                return Ok((
                    Slot {
                        conn: conn.clone(),
                        permit,
                        _total: total,
                    },
                    None,
                ));
            }
        }
        let conn = Arc::new(self.open().await?);
        conns.push(conn.clone());
        let permit = conn
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.other("new connection has no free channel"))?;
        Ok((
            Slot {
                conn,
                permit,
                _total: total,
            },
            None,
        ))
    }

    fn other(&self, message: impl Into<String>) -> RemoteError {
        RemoteError::Other {
            host: self.name.clone(),
            message: message.into(),
        }
    }

    async fn open(&self) -> Result<Conn, RemoteError> {
        let limit = self.options.connect_timeout;
        match tokio::time::timeout(limit, open_target(&self.name, &self.target, &self.options))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(RemoteError::Timeout {
                host: self.name.clone(),
                what: format!(
                    "connecting to {}:{}",
                    self.target.hostname, self.target.port
                ),
                after: limit,
            }),
        }
    }

    fn io_err(&self, op: &str, path: &str, source: std::io::Error) -> RemoteError {
        RemoteError::Io {
            host: self.name.clone(),
            op: op.to_string(),
            path: path.to_string(),
            source,
        }
    }

    /// Runs `line` (already wrapped for sudo) with `input` on stdin: on an idle shell when
    /// there is no input (see [`shell`]), else on a session of its own.
    async fn run(
        &self,
        line: &str,
        io: Io,
        timeout: Option<Duration>,
        sudo_kill: bool,
        what: &str,
    ) -> Result<RawOutput, RemoteError> {
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let task = if self.options.reuse_shells
            && matches!(io.input, Input::None)
            && line.len() <= shell::MAX_LINE
        {
            if line.contains('\0') {
                return Err(self.other("a command line cannot contain a NUL byte"));
            }
            let (slot, shell) = self.shell().await?;
            let job = shell::ShellJob {
                host: self.name.clone(),
                line: line.to_string(),
                input: None,
                stdout_to: io.stdout_to,
                sink: io.sink,
                sudo_kill,
            };
            tokio::spawn(job.run(slot, shell, cancel_rx))
        } else {
            let quoted = quote(line).map_err(|e| self.other(e.to_string()))?;
            let full =
                format!("printf '\\036deployer-pid %s\\n' \"$$\" >&2; exec sh -c -- {quoted}");
            let (slot, channel) = self.open_session().await?;
            let job = Job {
                host: self.name.clone(),
                full,
                input: io.input,
                stdout_to: io.stdout_to,
                sink: io.sink,
                sudo_kill,
            };
            tokio::spawn(job.run(slot, channel, cancel_rx))
        };
        self.supervise(task, cancel_tx, timeout, what).await
    }

    /// Waits for a command's task, killing the command (through `cancel`) when `timeout`
    /// passes or when this future is dropped.
    async fn supervise(
        &self,
        mut task: tokio::task::JoinHandle<Result<RawOutput, RemoteError>>,
        cancel: oneshot::Sender<()>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<RawOutput, RemoteError> {
        let joined = match timeout {
            Some(limit) => match tokio::time::timeout(limit, &mut task).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = cancel.send(());
                    let _ = task.await;
                    return Err(RemoteError::Timeout {
                        host: self.name.clone(),
                        what: what.to_string(),
                        after: limit,
                    });
                }
            },
            None => task.await,
        };
        drop(cancel);
        match joined {
            Ok(r) => r,
            Err(e) => Err(self.other(format!("command task failed: {e}"))),
        }
    }

    /// A slot with a shell in it: an idle one, else one started on a new session channel.
    async fn shell(&self) -> Result<(Slot, shell::Shell), RemoteError> {
        let mut retried = false;
        loop {
            let (slot, idle) = self.slot_or_shell(Want::Shell).await?;
            if let Some(shell) = idle {
                return Ok((slot, shell));
            }
            let started = match open_channel(&slot.conn).await {
                Ok(channel) => shell::Shell::start(channel).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(shell) => return Ok((slot, shell)),
                Err(e) => self.channel_failed(&slot.conn, e, &mut retried)?,
            }
        }
    }

    /// A channel slot and an open session channel in it. A connection found dead here (the
    /// command has not started) is replaced once.
    async fn open_session(&self) -> Result<(Slot, russh::Channel<client::Msg>), RemoteError> {
        let mut retried = false;
        loop {
            let slot = self.slot().await?;
            match open_channel(&slot.conn).await {
                Ok(channel) => return Ok((slot, channel)),
                Err(e) => self.channel_failed(&slot.conn, e, &mut retried)?,
            }
        }
    }

    /// A channel could not be opened (or its shell started) on `conn`: `Ok` to try once more
    /// when the connection turned out dead (the command has not started; the next try opens
    /// a new connection), else the error.
    fn channel_failed(
        &self,
        conn: &Conn,
        e: russh::Error,
        retried: &mut bool,
    ) -> Result<(), RemoteError> {
        if !conn.handle.is_closed() {
            return Err(self.other(refused(&e)));
        }
        if *retried {
            return Err(RemoteError::Disconnected {
                host: self.name.clone(),
                source: Some(Box::new(e)),
            });
        }
        *retried = true;
        Ok(())
    }

    fn use_sudo(&self) -> bool {
        self.target.user != "root"
    }
}

async fn open_target(
    name: &str,
    target: &Target,
    options: &SshOptions,
) -> Result<Conn, RemoteError> {
    let refused = Arc::new(Mutex::new(None));
    let client = Client {
        host: target.hostname.clone(),
        port: target.port,
        known_hosts: options.known_hosts_path(),
        policy: options.policy,
        refused: refused.clone(),
    };
    let config = Arc::new(client::Config {
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        // A connection that died silently is noticed (and replaced on the next call) after
        // unanswered keepalives instead of hanging every later call.
        keepalive_interval: Some(options.keepalive.0),
        keepalive_max: options.keepalive.1,
        ..Default::default()
    });
    let connect_err = |source: russh::Error| -> RemoteError {
        if let Some(e) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return e;
        }
        RemoteError::Connect {
            host: name.to_string(),
            source: Box::new(source),
        }
    };
    let (mut handle, jump) = match &target.jump {
        Some(jump) => {
            let jump_conn = Box::pin(open_target(&jump.hostname, jump, options)).await?;
            let channel = jump_conn
                .handle
                .channel_open_direct_tcpip(
                    target.hostname.clone(),
                    target.port as u32,
                    "127.0.0.1",
                    0,
                )
                .await
                .map_err(|e| RemoteError::Connect {
                    host: name.to_string(),
                    source: format!(
                        "jump host {} cannot reach {}:{}: {e}",
                        jump.hostname, target.hostname, target.port
                    )
                    .into(),
                })?;
            let handle = client::connect_stream(config, channel.into_stream(), client)
                .await
                .map_err(connect_err)?;
            (handle, Some(Box::new(jump_conn)))
        }
        None => {
            let tcp = tokio::net::TcpStream::connect((target.hostname.as_str(), target.port))
                .await
                .map_err(|e| RemoteError::Connect {
                    host: name.to_string(),
                    source: Box::new(e),
                })?;
            let _ = tcp.set_nodelay(true);
            let handle = client::connect_stream(config, tcp, client)
                .await
                .map_err(connect_err)?;
            (handle, None)
        }
    };
    authenticate(name, &mut handle, target, options).await?;
    Ok(Conn {
        handle,
        slots: Arc::new(Semaphore::new(options.max_channels)),
        kill_slots: Arc::new(Semaphore::new(2)),
        idle: Mutex::new(Vec::new()),
        _jump: jump,
    })
}

async fn authenticate(
    name: &str,
    handle: &mut Handle<Client>,
    target: &Target,
    options: &SshOptions,
) -> Result<(), RemoteError> {
    let user = target.user.as_str();
    let mut tried: Vec<String> = Vec::new();
    let lost = |e: russh::Error| RemoteError::Disconnected {
        host: name.to_string(),
        source: Some(Box::new(e)),
    };
    let agent_socket = options
        .agent_socket
        .clone()
        .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from));
    if let Some(socket) = agent_socket.filter(|_| options.agent) {
        match russh::keys::agent::client::AgentClient::connect_uds(&socket).await {
            Ok(mut agent) => {
                let identities = agent.request_identities().await.unwrap_or_default();
                for identity in identities {
                    let key = identity.public_key().into_owned();
                    let hash = if key.algorithm().is_rsa() {
                        handle
                            .best_supported_rsa_hash()
                            .await
                            .map_err(lost)?
                            .flatten()
                    } else {
                        None
                    };
                    match handle
                        .authenticate_publickey_with(user, key, hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => return Ok(()),
                        _ => {}
                    }
                }
                tried.push("ssh-agent".to_string());
            }
            Err(e) => tried.push(format!("ssh-agent (unreachable: {e})")),
        }
    }
    let mut files = target.identity_files.clone();
    if files.is_empty()
        && options.default_identities
        && let Some(home) = home_dir()
    {
        {
            for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                let path = home.join(".ssh").join(name);
                if path.exists() {
                    files.push(path);
                }
            }
        }
    }
    for path in files {
        let key = match russh::keys::load_secret_key(&path, None) {
            Ok(k) => k,
            Err(russh::keys::Error::KeyIsEncrypted) => {
                let Some(pass) = options.passphrase.as_ref().and_then(|cb| cb(&path)) else {
                    tried.push(format!("{} (encrypted, no passphrase)", path.display()));
                    continue;
                };
                match russh::keys::load_secret_key(&path, Some(&pass)) {
                    Ok(k) => k,
                    Err(e) => {
                        tried.push(format!("{} (cannot decrypt: {e})", path.display()));
                        continue;
                    }
                }
            }
            Err(e) => {
                tried.push(format!("{} (unreadable: {e})", path.display()));
                continue;
            }
        };
        let hash = if key.algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(lost)?
                .flatten()
        } else {
            None
        };
        let result = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(lost)?;
        if result.success() {
            return Ok(());
        }
        tried.push(format!("{} (refused)", path.display()));
    }
    Err(RemoteError::Auth {
        host: name.to_string(),
        user: user.to_string(),
        detail: if tried.is_empty() {
            "no key to try (no agent, no key file)".to_string()
        } else {
            format!("tried {}", tried.join(", "))
        },
    })
}

/// A command's input and output.
struct Io {
    input: Input,
    stdout_to: StdoutTo,
    sink: Option<OutputSink>,
}

/// What is written to the command's stdin.
enum Input {
    None,
    Bytes(Vec<u8>),
    File(PathBuf),
    Tar(PathBuf),
}

/// Where the command's stdout goes.
enum StdoutTo {
    Collect,
    File(tokio::fs::File),
}

struct RawOutput {
    status: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// One command on one channel, run as a task so that a dropped caller still gets its command
/// killed.
struct Job {
    host: String,
    full: String,
    input: Input,
    stdout_to: StdoutTo,
    sink: Option<OutputSink>,
    sudo_kill: bool,
}

/// Separates the pid marker line from the start of stderr.
struct PidFilter {
    pid: Option<u32>,
    pending: Vec<u8>,
}

impl PidFilter {
    fn push(&mut self, chunk: &[u8], out: &mut LineCollector) {
        if self.pid.is_some() {
            out.push(chunk);
            return;
        }
        self.pending.extend_from_slice(chunk);
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            if let Some(rest) = line.strip_prefix(PID_MARKER) {
                let text = String::from_utf8_lossy(rest);
                self.pid = text.trim().parse().ok();
                let remaining = std::mem::take(&mut self.pending);
                out.push(&remaining);
                return;
            }
            out.push(&line);
        }
        if self.pending.len() > 64 * 1024 {
            out.push(&std::mem::take(&mut self.pending));
        }
    }

    fn finish(&mut self, out: &mut LineCollector) {
        out.push(&std::mem::take(&mut self.pending));
    }
}

impl Job {
    async fn run(
        self,
        slot: Slot,
        channel: russh::Channel<client::Msg>,
        mut cancel: oneshot::Receiver<()>,
    ) -> Result<RawOutput, RemoteError> {
        let host = self.host.clone();
        let conn = slot.conn.clone();
        let lost = |e: Option<russh::Error>| RemoteError::Disconnected {
            host: host.clone(),
            source: e.map(|e| Box::new(e) as _),
        };
        channel
            .exec(true, self.full.as_bytes())
            .await
            .map_err(|e| lost(Some(e)))?;
        let (mut rd, wr) = channel.split();
        let mut out = LineCollector::new(Stream::Stdout, self.sink.clone());
        let mut err = LineCollector::new(Stream::Stderr, self.sink.clone());
        let mut filter = PidFilter {
            pid: None,
            pending: Vec::new(),
        };
        let mut stdout_file = match self.stdout_to {
            StdoutTo::File(f) => Some(f),
            StdoutTo::Collect => None,
        };
        let writer = async {
            match self.input {
                Input::None => {}
                Input::Bytes(b) => {
                    // The command may exit without reading: not an error.
                    let _ = wr.data_bytes(b).await;
                }
                Input::File(path) => {
                    // Large reads handed over as owned buffers: russh splits them into
                    // full-size packets (`data(reader)` would copy through 8 KiB writes).
                    use tokio::io::AsyncReadExt;
                    let mut file = tokio::fs::File::open(&path).await?;
                    loop {
                        let mut buf = Vec::with_capacity(256 * 1024);
                        let n = (&mut file).take(256 * 1024).read_to_end(&mut buf).await?;
                        if n == 0 || wr.data_bytes(buf).await.is_err() {
                            break;
                        }
                    }
                }
                Input::Tar(path) => {
                    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
                    let builder = tokio::task::spawn_blocking(move || write_tar(&path, tx));
                    while let Some(chunk) = rx.recv().await {
                        if wr.data_bytes(chunk).await.is_err() {
                            break;
                        }
                    }
                    drop(rx);
                    builder.await.map_err(std::io::Error::other)??;
                }
            }
            let _ = wr.eof().await;
            Ok::<(), std::io::Error>(())
        };
        let mut writer = std::pin::pin!(writer);
        let mut writer_done = false;
        let mut cancelled = false;
        let mut killed = false;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut local_error: Option<std::io::Error> = None;
        let mut status: Option<i32> = None;
        let mut exited = false;
        loop {
            tokio::select! {
                biased;
                _ = &mut cancel, if !cancelled => {
                    cancelled = true;
                    deadline = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                }
                r = &mut writer, if !writer_done && !cancelled => {
                    writer_done = true;
                    if let Err(e) = r {
                        // A local read failed: stop the remote side before it sees EOF.
                        local_error = Some(e);
                        cancelled = true;
                        deadline = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                    }
                }
                msg = rd.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => {
                        if let Some(f) = stdout_file.as_mut() {
                            if let Err(e) = f.write_all(&data).await {
                                local_error = Some(e);
                                cancelled = true;
                                deadline = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                            }
                        } else {
                            out.push(&data);
                        }
                    }
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => filter.push(&data, &mut err),
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        status = Some(exit_status as i32);
                        exited = true;
                    }
                    Some(ChannelMsg::ExitSignal { .. }) => exited = true,
                    Some(ChannelMsg::Failure) => {
                        return Err(RemoteError::Other {
                            host: host.clone(),
                            message: "the server refused to run the command".to_string(),
                        });
                    }
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                },
                _ = sleep_until(deadline), if deadline.is_some() => break,
            }
            if cancelled
                && !killed
                && !exited
                && let Some(pid) = filter.pid
            {
                killed = true;
                kill_group(&conn, pid, self.sudo_kill).await;
            }
        }
        let _ = wr.close().await;
        if let Some(f) = stdout_file.as_mut() {
            f.flush().await.map_err(|e| RemoteError::Io {
                host: host.clone(),
                op: "write local file for".to_string(),
                path: "download".to_string(),
                source: e,
            })?;
        }
        filter.finish(&mut err);
        if let Some(e) = local_error {
            return Err(RemoteError::Io {
                host: host.clone(),
                op: "stream local data for".to_string(),
                path: "transfer".to_string(),
                source: e,
            });
        }
        if cancelled {
            return Err(RemoteError::Other {
                host: host.clone(),
                message: "command cancelled".to_string(),
            });
        }
        if !exited {
            return Err(lost(None));
        }
        Ok(RawOutput {
            status,
            stdout: out.finish(),
            stderr: err.finish(),
        })
    }
}

/// Opens a session channel. OpenSSH frees a closed session only after it has handled the
/// rest of the packets that arrived with the close, so an open sent right after another
/// channel's close can be refused for `MaxSessions`; a server whose sessions are all taken
/// (a lower `MaxSessions` than our channels, or a kill in flight) refuses too. Refusals are
/// retried with a growing pause, for about two seconds in all.
async fn open_channel(conn: &Conn) -> Result<russh::Channel<client::Msg>, russh::Error> {
    let mut pause = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    loop {
        match conn.handle.channel_open_session().await {
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ConnectFailed
                | russh::ChannelOpenFailure::AdministrativelyProhibited
                | russh::ChannelOpenFailure::ResourceShortage,
            )) if waited < Duration::from_secs(2) && !conn.handle.is_closed() => {
                tokio::time::sleep(pause).await;
                waited += pause;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// The message for a session the server would not open.
fn refused(e: &russh::Error) -> String {
    match e {
        russh::Error::ChannelOpenFailure(_) => format!(
            "the server refused a new session ({e}) for 2 s; its MaxSessions may be lower than \
             SshOptions::max_channels + 2"
        ),
        _ => format!("cannot open a channel: {e}"),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Kills the process group `pgid` through another channel (bounded in time).
async fn kill_group(conn: &Conn, pgid: u32, sudo: bool) {
    let work = async {
        let _permit = conn.kill_slots.acquire().await.ok()?;
        let mut channel = open_channel(conn).await.ok()?;
        let sudo = if sudo { "sudo -n " } else { "" };
        // The group when the command leads one (always on a session of its own, and on a
        // shell where `setsid` exists), else the process itself.
        let cmd = format!(
            "{sudo}kill -KILL -- -{pgid} 2>/dev/null || {sudo}kill -KILL {pgid} 2>/dev/null; true"
        );
        channel.exec(false, cmd.as_bytes()).await.ok()?;
        channel.eof().await.ok()?;
        while let Some(msg) = channel.wait().await {
            if matches!(msg, ChannelMsg::Close) {
                break;
            }
        }
        Some(())
    };
    if tokio::time::timeout(CLOSE_WAIT, work).await.is_err() {
        tracing::warn!(pgid, "killing a cancelled remote command timed out");
    }
}

/// Writes a tar of the directory `dir` (plus a final marker entry) into `tx`.
fn write_tar(dir: &Path, tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> std::io::Result<()> {
    struct ChanWriter(tokio::sync::mpsc::Sender<Vec<u8>>);
    impl std::io::Write for ChanWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .blocking_send(buf.to_vec())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let writer = std::io::BufWriter::with_capacity(256 * 1024, ChanWriter(tx));
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append_data(&mut header, TAR_MARKER, std::io::empty())?;
    let mut writer = builder.into_inner()?;
    writer.flush()
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[async_trait]
impl RemoteHost for SshHost {
    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(
        &self,
        command: &str,
        options: &ExecOptions,
    ) -> Result<ExecOutput, RemoteError> {
        let line = shell_line(&self.name, command, options, self.use_sudo())?;
        let started = Instant::now();
        let input = match &options.stdin {
            Some(b) => Input::Bytes(b.clone()),
            None => Input::None,
        };
        let raw = self
            .run(
                &line,
                Io {
                    input,
                    stdout_to: StdoutTo::Collect,
                    sink: options.output.clone(),
                },
                options.timeout,
                options.sudo && self.use_sudo(),
                &format!("command `{}`", short(command)),
            )
            .await?;
        if let Some(e) = sudo_failure(
            &self.name,
            options.sudo && self.use_sudo(),
            raw.status,
            &raw.stderr,
        ) {
            return Err(e);
        }
        Ok(ExecOutput {
            exit_status: raw.status,
            stdout: raw.stdout,
            stderr: raw.stderr,
            duration: started.elapsed(),
        })
    }

    async fn put(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
    ) -> Result<(), RemoteError> {
        let meta = tokio::fs::metadata(local)
            .await
            .map_err(|e| self.io_err("read local", &local.display().to_string(), e))?;
        let mode = Some(options.mode.unwrap_or_else(|| mode_of(&meta)));
        let exec = ExecOptions::new().sudo(options.sudo);
        let sudo = options.sudo && self.use_sudo();
        // A file goes through a shell (no session of its own); a directory is a tar stream
        // of unknown length, on a session of its own; so is a big file, where `cat` (128 KiB
        // reads) moves the bytes with less CPU than `head -c` (8 KiB reads) and the session's
        // cost no longer counts.
        let via_shell =
            if self.options.reuse_shells && !meta.is_dir() && meta.len() <= SHELL_UPLOAD_MAX {
                Some(self.shell().await?)
            } else {
                None
            };
        let raw = if let Some((slot, shell)) = via_shell {
            // The size check catches a connection that died mid-upload: `head` then stops
            // early, and successfully.
            // Created with the mode at once when it is within 0666 (the usual case), through
            // the umask: one `chmod` fewer.
            let (umask, mode) = match mode {
                Some(m) if m & !0o666 == 0 => (format!("umask {:03o}\n", !m & 0o777), None),
                other => (String::new(), other),
            };
            let fill = format!(
                "{umask}head -c {len} > \"$tmp\"\nn=$(wc -c < \"$tmp\")\n[ $n -eq {len} ]",
                len = meta.len()
            );
            let script = install_with(&self.name, &fill, remote, mode)?;
            let line = shell_line(&self.name, &script, &exec, self.use_sudo())?;
            let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
            let job = shell::ShellJob {
                host: self.name.clone(),
                line,
                input: Some((local.to_path_buf(), meta.len())),
                stdout_to: StdoutTo::Collect,
                sink: None,
                sudo_kill: sudo,
            };
            let task = tokio::spawn(job.run(slot, shell, cancel_rx));
            self.supervise(task, cancel_tx, None, "upload").await?
        } else {
            let (fill, input) = if meta.is_dir() {
                (
                    format!(
                        "mkdir \"$tmp\"\ntar -x -p --no-same-owner -f - -C \"$tmp\"\n\
                         [ -e \"$tmp/{TAR_MARKER}\" ]\nrm -f \"$tmp/{TAR_MARKER}\""
                    ),
                    Input::Tar(local.to_path_buf()),
                )
            } else {
                (
                    format!(
                        "cat > \"$tmp\"\nn=$(wc -c < \"$tmp\")\n[ $n -eq {} ]",
                        meta.len()
                    ),
                    Input::File(local.to_path_buf()),
                )
            };
            let script = install_with(&self.name, &fill, remote, mode)?;
            let line = shell_line(&self.name, &script, &exec, self.use_sudo())?;
            self.run(
                &line,
                Io {
                    input,
                    stdout_to: StdoutTo::Collect,
                    sink: None,
                },
                None,
                sudo,
                "upload",
            )
            .await?
        };
        if let Some(e) = sudo_failure(&self.name, sudo, raw.status, &raw.stderr) {
            return Err(e);
        }
        if raw.status != Some(0) {
            let tail = deployer_core::tail_lines(&String::from_utf8_lossy(&raw.stderr), 5);
            return Err(self.io_err(
                "upload to",
                remote,
                std::io::Error::other(format!("exit status {:?}: {tail}", raw.status)),
            ));
        }
        Ok(())
    }

    async fn get(&self, remote: &str, local: &Path) -> Result<(), RemoteError> {
        let parent = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let local_name = local.display().to_string();
        let tmp = tempfile::Builder::new()
            .prefix(".deployer-tmp")
            .tempfile_in(&parent)
            .map_err(|e| self.io_err("download to", &local_name, e))?;
        let file = tokio::fs::File::from_std(
            tmp.reopen()
                .map_err(|e| self.io_err("download to", &local_name, e))?,
        );
        let cmd = format!(
            "cat -- {}",
            quote(remote).map_err(|e| self.other(e.to_string()))?
        );
        let raw = self
            .run(
                &cmd,
                Io {
                    input: Input::None,
                    stdout_to: StdoutTo::File(file),
                    sink: None,
                },
                None,
                false,
                "download",
            )
            .await?;
        if raw.status != Some(0) {
            let tail = deployer_core::tail_lines(&String::from_utf8_lossy(&raw.stderr), 5);
            return Err(self.io_err("download", remote, std::io::Error::other(tail)));
        }
        tmp.persist(local)
            .map_err(|e| self.io_err("download to", &local_name, e.error))?;
        Ok(())
    }

    async fn file_exists(&self, remote: &str) -> Result<bool, RemoteError> {
        let q = quote(remote).map_err(|e| self.other(e.to_string()))?;
        let cmd = format!("if [ -e {q} ] || [ -L {q} ]; then echo yes; else echo no; fi");
        let out = self.execute(&cmd, &ExecOptions::new()).await?;
        match out.stdout.as_slice() {
            b"yes\n" => Ok(true),
            b"no\n" => Ok(false),
            _ => Err(self.other(format!("cannot check {remote}: {}", out.stderr_tail(3)))),
        }
    }
}
