//! [`SshConnector`]: hands out one [`SshHost`] per `(host, user, port)`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deployer_core::{Connector, HostSpec, RemoteError, RemoteHost, async_trait};

use crate::local::{LocalHost, is_local};
use crate::ssh::{Shared, Target};
use crate::{SshConfig, SshConfigError, SshHost, SshOptions};

/// The [`Connector`] for real runs: [`HostSpec::local()`] (and the host named `local`) is a
/// [`LocalHost`]; every other host is an [`SshHost`], one per `(host, user, port)` after the
/// ssh config is applied, created on first request and handed out again (the same `Arc`, so
/// the same connection) on every later one. Connections open on the first command.
///
/// ```
/// use deployer_core::{Connector, HostSpec};
/// use deployer_remote::{SshConfig, SshConnector, SshOptions};
/// use std::sync::Arc;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let options = SshOptions::new().user("deploy").ssh_config(SshConfig::new());
/// let connector = SshConnector::new(options).unwrap();
/// let a = connector.host(&HostSpec::remote("fe001", None)).await.unwrap();
/// let b = connector.host(&HostSpec::remote("fe001", None)).await.unwrap();
/// assert!(Arc::ptr_eq(&a, &b)); // nothing connected yet: that happens on the first command
/// assert_eq!(connector.host(&HostSpec::local()).await.unwrap().name(), "local");
/// # });
/// ```
pub struct SshConnector {
    options: SshOptions,
    config: Arc<SshConfig>,
    local: Arc<LocalHost>,
    hosts: Mutex<HashMap<(String, String, u16), Arc<SshHost>>>,
    /// Shared by every host handed out: handshake turns, known_hosts and keys read once.
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SshConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshConnector")
            .field("options", &self.options)
            .field("hosts", &self.hosts.lock().map(|h| h.len()).unwrap_or(0))
            .finish()
    }
}

impl SshConnector {
    /// A connector with these options; reads `~/.ssh/config` unless the options carry a
    /// config.
    pub fn new(options: SshOptions) -> Result<Self, SshConfigError> {
        let config = match &options.ssh_config {
            Some(c) => c.clone(),
            None => Arc::new(SshConfig::user_default()?),
        };
        Ok(Self::with_config(options, config))
    }

    pub(crate) fn with_config(options: SshOptions, config: Arc<SshConfig>) -> Self {
        SshConnector {
            shared: Shared::new(&options),
            options,
            config,
            local: Arc::new(LocalHost::new()),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The [`SshHost`] for a remote `spec` (typed, e.g. to call
    /// [`SshHost::connection_count`]); `None` for the local host.
    pub fn ssh_host(&self, spec: &HostSpec) -> Result<Option<Arc<SshHost>>, RemoteError> {
        let Some(name) = spec.host.as_deref().filter(|_| !is_local(spec)) else {
            return Ok(None);
        };
        let target = Target::resolve(
            name,
            spec.user.as_deref(),
            None,
            &self.options,
            &self.config,
            0,
        )?;
        let key = (name.to_string(), target.user.clone(), target.port);
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let host = hosts.entry(key).or_insert_with(|| {
            Arc::new(SshHost::from_target_shared(
                name.to_string(),
                target,
                self.options.clone(),
                self.shared.clone(),
            ))
        });
        Ok(Some(host.clone()))
    }
}

/// Open files a run needs besides its connections: the runtime, standard streams, logs, the
/// run store, files being uploaded.
const FILES_MARGIN: u64 = 64;

/// Checks that this process may open `needed` files for `hosts` hosts, raising its soft limit
/// up to the hard one when that is enough.
fn ensure_open_files(hosts: usize, needed: u64) -> Result<(), RemoteError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(());
    }
    if hard >= needed {
        // Room for the connections and then some, within the hard limit.
        let raised = needed.saturating_mul(2).min(hard);
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: limit.maximum,
            },
        ) {
            Ok(()) => {
                tracing::debug!(
                    hosts,
                    needed,
                    from = soft,
                    to = raised,
                    "raised the soft limit on open files"
                );
                return Ok(());
            }
            Err(e) => tracing::debug!(%e, "cannot raise the soft limit on open files"),
        }
    }
    let suggest = needed.next_power_of_two().max(1024);
    let hard = match limit.maximum {
        Some(h) => h.to_string(),
        None => "unlimited".to_string(),
    };
    Err(RemoteError::Other {
        host: "local".to_string(),
        message: format!(
            "{hosts} hosts need about {needed} open files, but ulimit -n is {soft} (hard limit \
             {hard}): raise it (ulimit -n {suggest}) or deploy to fewer hosts per run"
        ),
    })
}

#[async_trait]
impl Connector for SshConnector {
    async fn host(&self, spec: &HostSpec) -> Result<Arc<dyn RemoteHost>, RemoteError> {
        match self.ssh_host(spec)? {
            Some(host) => Ok(host),
            None => Ok(self.local.clone()),
        }
    }

    /// Checks that this process may keep every host's connections open: `hosts` ×
    /// [`SshOptions::max_connections`] sockets plus 64 files for everything else. When the
    /// soft limit on open files (`ulimit -n`, `RLIMIT_NOFILE`) is lower and the hard limit is
    /// high enough, **the soft limit of this process is raised** (to twice what is needed, at
    /// most the hard limit; logged at debug level), as a user who asked for that many hosts
    /// expects; otherwise the error says what is needed and how to get it.
    fn check_capacity(&self, hosts: usize) -> Result<(), RemoteError> {
        let needed = (hosts as u64)
            .saturating_mul(self.options.max_connections as u64)
            .saturating_add(FILES_MARGIN);
        ensure_open_files(hosts, needed)
    }
}
