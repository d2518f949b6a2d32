//! [`SshConnector`]: hands out one [`SshHost`] per `(host, user, port)`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deployer_core::{Connector, HostSpec, RemoteError, RemoteHost, async_trait};

use crate::local::{LocalHost, is_local};
use crate::ssh::Target;
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
            Arc::new(SshHost::from_target(
                name.to_string(),
                target,
                self.options.clone(),
            ))
        });
        Ok(Some(host.clone()))
    }
}

#[async_trait]
impl Connector for SshConnector {
    async fn host(&self, spec: &HostSpec) -> Result<Arc<dyn RemoteHost>, RemoteError> {
        match self.ssh_host(spec)? {
            Some(host) => Ok(host),
            None => Ok(self.local.clone()),
        }
    }
}
