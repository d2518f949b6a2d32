//! [`Target`]: the host, port, user, key files and ProxyJump chain to connect to, from the
//! [`SshOptions`] and the ssh config.

use std::path::PathBuf;

use deployer_core::RemoteError;

use super::options::SshOptions;
use crate::config::{SshConfig, parse_jump};

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
    /// Resolves `host` through its [`HostEntry`](super::options::HostEntry) (an inventory's
    /// host vars) and `config`; `user`/`port` given explicitly win, then the entry, then the
    /// ssh config, then the options.
    pub(crate) fn resolve(
        host: &str,
        user: Option<&str>,
        port: Option<u16>,
        options: &SshOptions,
        config: &SshConfig,
        depth: usize,
    ) -> Result<Target, RemoteError> {
        let found = config.lookup(host);
        let entry = options.hosts.get(host).cloned().unwrap_or_default();
        let user = user
            .map(str::to_string)
            .or(entry.user)
            .or(found.user)
            .or_else(|| options.user.clone())
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "root".to_string());
        let jump_spec = match entry.proxy_jump {
            Some(spec) if spec == "none" => None,
            Some(spec) => Some(spec),
            None => found.proxy_jump,
        };
        let jump = match jump_spec {
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
        let mut identity_files: Vec<PathBuf> = entry.identity_file.into_iter().collect();
        identity_files.extend(options.identity_files.iter().cloned());
        identity_files.extend(found.identity_files);
        Ok(Target {
            hostname: entry
                .address
                .or(found.hostname)
                .unwrap_or_else(|| host.to_string()),
            port: port.or(entry.port).or(found.port).unwrap_or(options.port),
            user,
            identity_files,
            jump,
        })
    }
}
