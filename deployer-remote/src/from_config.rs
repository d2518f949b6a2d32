//! [`SshOptions`] from a config's `ssh` section.

use std::path::PathBuf;
use std::time::Duration;

use deployer_core::{Config, ConfigError};
use serde_json::Value;

use crate::{HostEntry, HostKeyPolicy, SshConfig, SshOptions};

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

/// The connection settings of `host`'s variables.
fn host_entry(config: &Config, host: &str) -> Result<HostEntry, ConfigError> {
    let vars = config.host_vars(host);
    let key = |var: &str| format!("hostvars.{host}.{var}");
    let get =
        |names: [&'static str; 2]| names.into_iter().find_map(|n| vars.get(n).map(|v| (n, v)));
    let text = |name: &str, v: &Value| match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        other => Err(invalid(
            &key(name),
            format!("found {other}, expected a non-empty string"),
        )),
    };
    let mut entry = HostEntry::default();
    if let Some((name, v)) = get(["ansible_host", "ansible_ssh_host"]) {
        let address = text(name, v)?;
        deployer_core::HostName::parse(&address).map_err(|e| invalid(&key(name), e.to_string()))?;
        entry.address = Some(address);
    }
    if !config.is_overridden("ssh.port")
        && let Some((name, v)) = get(["ansible_port", "ansible_ssh_port"])
    {
        let port = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| {
            invalid(
                &key(name),
                format!("found {v}, expected a port from 1 to 65535"),
            )
        })?;
        entry.port = Some(port as u16);
    }
    if !config.is_overridden("user")
        && let Some((name, v)) = get(["ansible_user", "ansible_ssh_user"])
    {
        let user = text(name, v)?;
        deployer_core::UserName::parse(&user).map_err(|e| invalid(&key(name), e.to_string()))?;
        entry.user = Some(user);
    }
    if let Some(v) = vars.get("ansible_ssh_private_key_file") {
        let path = expand(&text("ansible_ssh_private_key_file", v)?);
        check_private_key(&path)
            .map_err(|problem| invalid(&key("ansible_ssh_private_key_file"), problem))?;
        entry.identity_file = Some(path);
    }
    if let Some(v) = vars.get("proxy_jump") {
        entry.proxy_jump = Some(text("proxy_jump", v)?);
    } else if let Some(v) = vars.get("ansible_ssh_common_args") {
        let args = text("ansible_ssh_common_args", v)?;
        let words = shlex::split(&args).ok_or_else(|| {
            invalid(
                &key("ansible_ssh_common_args"),
                format!("cannot split {args:?} into words (an unclosed quote?)"),
            )
        })?;
        entry.proxy_jump = proxy_jump_of(&words);
    }
    Ok(entry)
}

/// The jump host of ssh arguments: `-J X`, `-JX`, `-o ProxyJump=X`, `-oProxyJump=X`,
/// `-o ProxyJump X`.
fn proxy_jump_of(words: &[String]) -> Option<String> {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let option = match w.as_str() {
            "-J" => return it.next().cloned(),
            "-o" => match it.next() {
                Some(o) => o.clone(),
                None => return None,
            },
            other => {
                if let Some(rest) = other.strip_prefix("-J") {
                    return Some(rest.to_string());
                }
                match other.strip_prefix("-o") {
                    Some(o) => o.to_string(),
                    None => continue,
                }
            }
        };
        let (name, value) = match option.split_once(['=', ' ']) {
            Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
            None => (option.trim().to_string(), None),
        };
        if name.eq_ignore_ascii_case("ProxyJump") {
            return value
                .filter(|v| !v.is_empty())
                .or_else(|| it.next().cloned());
        }
    }
    None
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
    ///
    /// Every host of the config's inventory ([`Config::inventory`]) whose variables
    /// ([`Config::host_vars`]: host over groups, the command line over both) say how to reach
    /// it gets a [`HostEntry`] ([`SshOptions::host`]): `ansible_host` (the address),
    /// `ansible_port`, `ansible_user`, `ansible_ssh_private_key_file`, and a jump host from
    /// `proxy_jump` or from `-o ProxyJump=…`/`-J …` in `ansible_ssh_common_args` (the
    /// `ansible_ssh_*` spellings of the first three too). A command-line `user` or
    /// `ssh.port` (`--set`) beats the host vars.
    ///
    /// ```
    /// use deployer_core::{Config, inventory::Inventory};
    /// use deployer_remote::SshOptions;
    ///
    /// let inventory = Inventory::from_ini_str(
    ///     "[web]\nweb1 ansible_host=10.0.0.5 ansible_port=2222 \
    ///      ansible_ssh_common_args='-o ProxyJump=admin@bastion'\n",
    ///     "hosts",
    /// ).unwrap();
    /// let config = Config::from_yaml_str("platform: release\n", "deploy.yaml")
    ///     .unwrap()
    ///     .with_inventory(inventory)
    ///     .unwrap();
    /// let options = SshOptions::from_config(&config).unwrap();
    /// let web1 = options.host_entry("web1").unwrap();
    /// assert_eq!(web1.address.as_deref(), Some("10.0.0.5"));
    /// assert_eq!(web1.port, Some(2222));
    /// assert_eq!(web1.proxy_jump.as_deref(), Some("admin@bastion"));
    ///
    /// let bad = Inventory::from_ini_str("web1 ansible_port=ssh\n", "hosts").unwrap();
    /// let config = Config::from_yaml_str("platform: release\n", "deploy.yaml")
    ///     .unwrap()
    ///     .with_inventory(bad)
    ///     .unwrap();
    /// let err = SshOptions::from_config(&config).unwrap_err().to_string();
    /// assert_eq!(
    ///     err,
    ///     "config key \"hostvars.web1.ansible_port\": found \"ssh\", expected a port from 1 to 65535"
    /// );
    /// ```
    pub fn from_config(config: &Config) -> Result<SshOptions, ConfigError> {
        let mut options = SshOptions::new();
        for host in config.inventory().hosts() {
            let entry = host_entry(config, host)?;
            if !entry.is_empty() {
                options = options.host(host, entry);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::proxy_jump_of;

    #[test]
    fn proxy_jump_in_every_spelling() {
        let j = |s: &str| proxy_jump_of(&shlex::split(s).unwrap());
        assert_eq!(j("-o ProxyJump=a@b:22").as_deref(), Some("a@b:22"));
        assert_eq!(j("-oProxyJump=b").as_deref(), Some("b"));
        assert_eq!(
            j("-o StrictHostKeyChecking=no -o ProxyJump b").as_deref(),
            Some("b")
        );
        assert_eq!(j("-o 'ProxyJump b'").as_deref(), Some("b"));
        assert_eq!(j("-J jump").as_deref(), Some("jump"));
        assert_eq!(j("-Jjump").as_deref(), Some("jump"));
        assert_eq!(j("-o ForwardAgent=yes"), None);
    }
}
