//! [`SshOptions`] from a config's `ssh` section.

use std::path::PathBuf;
use std::time::Duration;

use deployer_core::{Config, ConfigError};
use serde_json::Value;

use crate::{HostKeyPolicy, SshConfig, SshOptions};

/// Expands a leading `~/` to the home directory.
fn expand(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), crate::config::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

/// The config's `ssh` section; an unknown key is an error with its line and a "did you mean".
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SshSection {
    port: Option<u16>,
    identity_file: Option<String>,
    known_hosts: Option<String>,
    host_key_policy: Option<String>,
    connect_timeout: Option<f64>,
    agent: Option<bool>,
    config: Option<Value>,
    max_handshakes: Option<usize>,
    connect_attempts: Option<usize>,
}

/// What is wrong with `path` as a private key file, checked without any host: it must be a
/// readable file that holds a private key.
fn check_private_key(path: &std::path::Path) -> Result<(), String> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let text = String::from_utf8_lossy(&text);
    if text.contains("PRIVATE KEY-----") {
        Ok(())
    } else {
        Err(format!(
            "{} holds no private key (expected a file beginning \"-----BEGIN … PRIVATE KEY-----\")",
            path.display()
        ))
    }
}

/// What is wrong with `path` as a known_hosts file: it must be a readable file, or not exist
/// yet (accept-new creates it).
fn check_known_hosts(path: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!(
            "{} is a directory, expected a known_hosts file",
            path.display()
        )),
        Ok(_) => std::fs::File::open(path)
            .map(|_| ())
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

impl SshOptions {
    /// SSH settings from a config: the login `user` and the `ssh` section, every key
    /// optional (unset keys keep [`SshOptions::new`]'s defaults):
    ///
    /// ```yaml
    /// user: deploy                     # login user
    /// ssh:
    ///   port: 22
    ///   identity_file: ~/.ssh/deploy_ed25519
    ///   known_hosts: ~/.ssh/known_hosts
    ///   host_key_policy: strict        # strict | accept-new | off
    ///   connect_timeout: 10            # seconds
    ///   agent: true
    ///   config: ~/.ssh/config          # or false to ignore the user's ssh config
    ///   max_handshakes: 32             # handshakes in flight at once, across all hosts
    ///   connect_attempts: 3            # tries per connection (refused, reset, timed out)
    /// ```
    ///
    /// An unknown key in `ssh` is an error with its file, line and column and a "did you mean";
    /// a value of the wrong kind is an error naming its key. What can be checked without a host
    /// is: the identity file exists and holds a private key, known_hosts is a readable file (or
    /// does not exist yet), the port is 1–65535, the connect timeout is above 0,
    /// `max_handshakes` and `connect_attempts` are whole numbers above 0.
    ///
    /// ```
    /// use deployer_core::Config;
    /// use deployer_remote::SshOptions;
    ///
    /// let config = Config::from_yaml_str(
    ///     "platform: release\nssh:\n  port: 2222\n  config: false\n",
    ///     "deploy.yaml",
    /// ).unwrap();
    /// let options = SshOptions::from_config(&config).unwrap();
    /// # let _ = options;
    ///
    /// let bad = Config::from_yaml_str(
    ///     "platform: release\nssh:\n  host_key_policy: maybe\n",
    ///     "deploy.yaml",
    /// ).unwrap();
    /// let err = SshOptions::from_config(&bad).unwrap_err();
    /// assert!(err.to_string().contains("ssh.host_key_policy"), "{err}");
    ///
    /// let typo = Config::from_yaml_str("platform: release\nssh:\n  prot: 2222\n", "deploy.yaml")
    ///     .unwrap();
    /// let err = SshOptions::from_config(&typo).unwrap_err().to_string();
    /// assert!(err.starts_with("deploy.yaml:3:3: unknown field `prot`"), "{err}");
    /// assert!(err.ends_with("did you mean `port`?"), "{err}");
    /// ```
    pub fn from_config(config: &Config) -> Result<SshOptions, ConfigError> {
        let mut options = SshOptions::new();
        if let Some(user) = config.get_as::<String>("user")? {
            options = options.user(user);
        }
        let Some(ssh) = config.section::<SshSection>("ssh")? else {
            return Ok(options);
        };
        if let Some(port) = ssh.port {
            if port == 0 {
                return Err(invalid(
                    "ssh.port",
                    "found 0, expected a port from 1 to 65535",
                ));
            }
            options = options.port(port);
        }
        if let Some(key) = ssh.identity_file {
            let path = expand(&key);
            check_private_key(&path).map_err(|problem| invalid("ssh.identity_file", problem))?;
            options = options.identity_file(path);
        }
        if let Some(kh) = ssh.known_hosts {
            let path = expand(&kh);
            check_known_hosts(&path).map_err(|problem| invalid("ssh.known_hosts", problem))?;
            options = options.known_hosts_file(path);
        }
        if let Some(agent) = ssh.agent {
            options = options.agent(agent);
        }
        if let Some(secs) = ssh.connect_timeout {
            let d = Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| *d >= Duration::from_millis(1))
                .ok_or_else(|| {
                    invalid(
                        "ssh.connect_timeout",
                        format!("found {secs}, expected a number of seconds above 0"),
                    )
                })?;
            options = options.connect_timeout(d);
        }
        if let Some(n) = ssh.max_handshakes {
            if n == 0 {
                return Err(invalid(
                    "ssh.max_handshakes",
                    "found 0, expected a whole number of handshakes above 0",
                ));
            }
            options = options.max_handshakes(n);
        }
        if let Some(n) = ssh.connect_attempts {
            if n == 0 {
                return Err(invalid(
                    "ssh.connect_attempts",
                    "found 0, expected a whole number of attempts above 0",
                ));
            }
            options = options.connect_attempts(n);
        }
        if let Some(policy) = ssh.host_key_policy {
            options = options.host_key_policy(match policy.as_str() {
                "strict" => HostKeyPolicy::Strict,
                "accept-new" => HostKeyPolicy::AcceptNew,
                "off" => HostKeyPolicy::Off,
                other => {
                    return Err(invalid(
                        "ssh.host_key_policy",
                        format!("expected strict, accept-new or off, found {other:?}"),
                    ));
                }
            });
        }
        match ssh.config {
            None | Some(Value::Null) | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => options = options.ssh_config(SshConfig::new()),
            Some(Value::String(path)) => {
                let parsed = SshConfig::from_file(&expand(&path))
                    .map_err(|e| invalid("ssh.config", e.to_string()))?;
                options = options.ssh_config(parsed);
            }
            Some(other) => {
                return Err(invalid(
                    "ssh.config",
                    format!("expected a file or false, found {other}"),
                ));
            }
        }
        Ok(options)
    }
}
