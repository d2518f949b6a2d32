//! [`SshOptions`]: how hosts are connected and authenticated, with [`HostKeyPolicy`] and
//! [`PassphraseCallback`]. Plain settings; what they mean is applied elsewhere.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{SshConfig, home_dir};

/// [`SshOptions::max_handshakes`]'s default, chosen by measurement (see `benches/README.md`).
pub(crate) const DEFAULT_MAX_HANDSHAKES: usize = 32;

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

/// How to reach one host, overriding the ssh config and the [`SshOptions`] defaults for it
/// (an inventory's `ansible_host`, `ansible_port`, `ansible_user`, ProxyJump and
/// `ansible_ssh_private_key_file`; see [`SshOptions::host`]). Unset fields fall through.
///
/// ```
/// use deployer_remote::{HostEntry, SshOptions};
///
/// let options = SshOptions::new().host(
///     "web1",
///     HostEntry {
///         address: Some("10.0.0.5".into()),
///         port: Some(2222),
///         user: Some("deploy".into()),
///         proxy_jump: Some("admin@bastion:22".into()),
///         ..HostEntry::default()
///     },
/// );
/// assert_eq!(options.host_entry("web1").unwrap().port, Some(2222));
/// assert!(options.host_entry("web2").is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostEntry {
    /// The address (or DNS name) to connect to instead of the host's name.
    pub address: Option<String>,
    /// The port.
    pub port: Option<u16>,
    /// The login user (a task's own user still wins).
    pub user: Option<String>,
    /// `[user@]host[:port]` to jump through, as OpenSSH's `ProxyJump` (`none`: no jump even if
    /// the ssh config names one).
    pub proxy_jump: Option<String>,
    /// A private key file tried first for this host.
    pub identity_file: Option<PathBuf>,
}

impl HostEntry {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == HostEntry::default()
    }
}

/// Asked for the passphrase of an encrypted key file; `None` skips the key.
pub type PassphraseCallback = Arc<dyn Fn(&Path) -> Option<String> + Send + Sync>;

/// How [`SshHost`](crate::SshHost)s connect and authenticate. Built with setters; every default is stated.
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
    pub(crate) max_handshakes: usize,
    pub(crate) connect_attempts: usize,
    pub(crate) connect_backoff: Duration,
    pub(crate) hosts: Arc<std::collections::HashMap<String, HostEntry>>,
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
            .field("max_handshakes", &self.max_handshakes)
            .field("connect_attempts", &self.connect_attempts)
            .field("connect_backoff", &self.connect_backoff)
            .field("hosts", &self.hosts.len())
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
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            connect_attempts: 3,
            connect_backoff: Duration::from_millis(200),
            hosts: Arc::default(),
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
    /// It counts from the moment the handshake starts, not while it waits for its turn
    /// ([`max_handshakes`](Self::max_handshakes)), and applies to each attempt
    /// ([`connect_attempts`](Self::connect_attempts)). A timeout names the phase it hit: TCP
    /// connect, key exchange, authentication, or the tunnel through a jump host.
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

    /// Handshakes (TCP connect, key exchange, authentication) in flight at once across every
    /// host of one [`SshConnector`](crate::SshConnector) (default: 32; an [`SshHost`](crate::SshHost)
    /// made on its own has its own budget). Others wait for their turn, and their connect
    /// timeout starts only then, so a thousand hosts do not starve each other's key exchanges of
    /// CPU. Commands and sessions on open connections are not limited by it. `0` counts as 1;
    /// a huge number (e.g. `usize::MAX`) means no limit.
    ///
    /// ```
    /// use deployer_remote::SshOptions;
    ///
    /// let options = SshOptions::new().max_handshakes(64);
    /// assert!(format!("{options:?}").contains("max_handshakes: 64"));
    /// ```
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        self
    }

    /// How many times a connection is tried before its host fails (default: 3). A refused,
    /// reset or timed-out handshake is tried again after a pause that doubles each time from
    /// [`connect_backoff`](Self::connect_backoff), plus up to a quarter of it at random (so
    /// hosts that failed together do not retry together); its handshake turn is given up
    /// while it waits. A changed or unknown host key and a refused authentication are not
    /// retried. `0` counts as 1.
    ///
    /// ```
    /// use deployer_remote::SshOptions;
    /// use std::time::Duration;
    ///
    /// // Up to 5 attempts, 100 ms, 200 ms, 400 ms, 800 ms apart (plus jitter).
    /// let options = SshOptions::new()
    ///     .connect_attempts(5)
    ///     .connect_backoff(Duration::from_millis(100));
    /// assert!(format!("{options:?}").contains("connect_attempts: 5"));
    /// ```
    pub fn connect_attempts(mut self, n: usize) -> Self {
        self.connect_attempts = n.max(1);
        self
    }

    /// The pause before the second connection attempt; each later one doubles it, up to 10 s
    /// (default: 200 ms). See [`connect_attempts`](Self::connect_attempts).
    pub fn connect_backoff(mut self, first: Duration) -> Self {
        self.connect_backoff = first;
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
    /// [`RemoteError::Disconnected`](deployer_core::RemoteError::Disconnected), later ones reconnect — after `max_missed` unanswered
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

    /// How to reach the host named `name` (the name tasks use): its entry beats the ssh
    /// config's `Host` block and these options' `user`/`port`, as an inventory's host vars
    /// beat the config (default: no entries). A later call for the same name replaces the
    /// entry.
    pub fn host(mut self, name: impl Into<String>, entry: HostEntry) -> Self {
        Arc::make_mut(&mut self.hosts).insert(name.into(), entry);
        self
    }

    /// The entry [`host`](Self::host) gave `name`, if any.
    pub fn host_entry(&self, name: &str) -> Option<&HostEntry> {
        self.hosts.get(name)
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
