//! A subset of OpenSSH's client configuration (`~/.ssh/config`).

use std::path::{Path, PathBuf};

/// Failure to read an SSH client configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshConfigError {
    /// The file could not be read.
    #[error("cannot read ssh config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line could not be understood.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line number (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The parsed subset of an OpenSSH client configuration: `Host` blocks (with `*`, `?` and `!`
/// patterns) setting `HostName`, `Port`, `User`, `IdentityFile` and `ProxyJump`.
///
/// As in OpenSSH, the first value found for a keyword wins (so specific `Host` blocks go
/// before `Host *`), and every matching `IdentityFile` is tried in order. Other keywords are
/// ignored; `Match` blocks are skipped.
///
/// ```
/// use deployer_remote::SshConfig;
///
/// let config = SshConfig::parse(
///     "Host fe*\n  User deploy\n  Port 2222\n  ProxyJump bastion\n\
///      Host bastion\n  HostName 10.0.0.1\n\
///      Host *\n  User nobody\n",
/// )
/// .unwrap();
/// let fe = config.lookup("fe001");
/// assert_eq!(fe.user.as_deref(), Some("deploy"));
/// assert_eq!(fe.port, Some(2222));
/// assert_eq!(fe.proxy_jump.as_deref(), Some("bastion"));
/// assert_eq!(config.lookup("bastion").hostname.as_deref(), Some("10.0.0.1"));
/// assert_eq!(config.lookup("bastion").user.as_deref(), Some("nobody"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct SshConfig {
    blocks: Vec<Block>,
}

#[derive(Debug, Clone, Default)]
struct Block {
    /// `None` for a `Match` block, which never applies.
    patterns: Option<Vec<String>>,
    settings: HostConfig,
}

/// What [`SshConfig::lookup`] found for one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `HostName`: the real host name or address.
    pub hostname: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// `User`.
    pub user: Option<String>,
    /// Every `IdentityFile`, in order, with `~` expanded.
    pub identity_files: Vec<PathBuf>,
    /// `ProxyJump`: `[user@]host[:port]` of the jump host (only the first of a list is used);
    /// `none` clears it.
    pub proxy_jump: Option<String>,
}

impl SshConfig {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `~/.ssh/config`; an absent file is an empty configuration.
    pub fn user_default() -> Result<Self, SshConfigError> {
        match home_dir() {
            Some(home) => {
                let path = home.join(".ssh").join("config");
                if path.exists() {
                    Self::from_file(&path)
                } else {
                    Ok(Self::new())
                }
            }
            None => Ok(Self::new()),
        }
    }

    /// Reads and parses `path`.
    pub fn from_file(path: &Path) -> Result<Self, SshConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| SshConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_named(&text, path)
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Self, SshConfigError> {
        Self::parse_named(text, Path::new("<ssh config>"))
    }

    fn parse_named(text: &str, path: &Path) -> Result<Self, SshConfigError> {
        let mut blocks = vec![Block {
            patterns: Some(vec!["*".to_string()]),
            settings: HostConfig::default(),
        }];
        for (index, raw) in text.lines().enumerate() {
            let syntax = |message: String| SshConfigError::Syntax {
                path: path.to_path_buf(),
                line: index + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, value) = split_keyword(line);
            let value = unquote(value);
            if value.is_empty() {
                return Err(syntax(format!("{keyword} needs a value")));
            }
            let settings = &mut blocks.last_mut().expect("one block at least").settings;
            match keyword.to_ascii_lowercase().as_str() {
                "host" => blocks.push(Block {
                    patterns: Some(value.split_whitespace().map(str::to_string).collect()),
                    settings: HostConfig::default(),
                }),
                "match" => blocks.push(Block {
                    patterns: None,
                    settings: HostConfig::default(),
                }),
                "hostname" => {
                    settings.hostname.get_or_insert(value.to_string());
                }
                "user" => {
                    settings.user.get_or_insert(value.to_string());
                }
                "port" => {
                    let port = value
                        .parse::<u16>()
                        .map_err(|_| syntax(format!("bad port {value:?}")))?;
                    settings.port.get_or_insert(port);
                }
                "identityfile" => settings.identity_files.push(expand_tilde(value)),
                "proxyjump" => {
                    let first = value.split(',').next().unwrap_or_default().trim();
                    settings.proxy_jump.get_or_insert(first.to_string());
                }
                _ => {}
            }
        }
        Ok(SshConfig { blocks })
    }

    /// The settings that apply to `host` (the name as given, before `HostName`).
    pub fn lookup(&self, host: &str) -> HostConfig {
        let mut out = HostConfig::default();
        for block in &self.blocks {
            let Some(patterns) = &block.patterns else {
                continue;
            };
            if !matches_patterns(patterns, host) {
                continue;
            }
            let s = &block.settings;
            if out.hostname.is_none() {
                out.hostname.clone_from(&s.hostname);
            }
            if out.port.is_none() {
                out.port = s.port;
            }
            if out.user.is_none() {
                out.user.clone_from(&s.user);
            }
            if out.proxy_jump.is_none() {
                out.proxy_jump.clone_from(&s.proxy_jump);
            }
            out.identity_files.extend(s.identity_files.iter().cloned());
        }
        if out.proxy_jump.as_deref() == Some("none") {
            out.proxy_jump = None;
        }
        if let Some(name) = &out.hostname {
            out.hostname = Some(name.replace("%h", host));
        }
        out
    }
}

fn split_keyword(line: &str) -> (&str, &str) {
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let keyword = &line[..end];
    let rest = line[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    (keyword, rest)
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

pub(crate) fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn expand_tilde(value: &str) -> PathBuf {
    match (value.strip_prefix("~/"), home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(value),
    }
}

/// OpenSSH `Host` matching: some positive pattern matches and no negated one does.
fn matches_patterns(patterns: &[String], host: &str) -> bool {
    let mut matched = false;
    for pattern in patterns {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob(negated.as_bytes(), host.as_bytes()) {
                return false;
            }
        } else if glob(pattern.as_bytes(), host.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p.eq_ignore_ascii_case(t) => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// `[user@]host[:port]` as in `ProxyJump`.
pub(crate) fn parse_jump(spec: &str) -> (Option<String>, String, Option<u16>) {
    let (user, rest) = match spec.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, spec),
    };
    if let Some(inner) = rest.strip_prefix('[')
        && let Some((host, port)) = inner.split_once("]:")
    {
        return (user, host.to_string(), port.parse().ok());
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (user, host.to_string(), Some(p)),
            Err(_) => (user, rest.to_string(), None),
        },
        _ => (user, rest.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_negation_and_first_value_wins() {
        let c = SshConfig::parse(
            "# comment\nHost *.prod !db*.prod\n  User=app\n  IdentityFile /k/prod\n\
             Host web?.prod\n  User other\n  Port 22\n\
             Match host x\n  User never\n\
             Host *\n  IdentityFile /k/default\n  ProxyJump none\n",
        )
        .unwrap();
        let web = c.lookup("web1.prod");
        assert_eq!(web.user.as_deref(), Some("app"));
        assert_eq!(web.port, Some(22));
        assert_eq!(
            web.identity_files,
            [PathBuf::from("/k/prod"), PathBuf::from("/k/default")]
        );
        assert_eq!(web.proxy_jump, None);
        let db = c.lookup("db1.prod");
        assert_eq!(db.user, None);
        assert_eq!(db.identity_files, [PathBuf::from("/k/default")]);
        assert_eq!(c.lookup("WEB1.PROD").user.as_deref(), Some("app"));
    }

    #[test]
    fn bad_port_names_the_line() {
        let err = SshConfig::parse("Host a\n Port x\n").unwrap_err();
        assert_eq!(err.to_string(), "<ssh config>:2: bad port \"x\"");
    }

    #[test]
    fn jump_specs() {
        assert_eq!(parse_jump("bastion"), (None, "bastion".into(), None));
        assert_eq!(
            parse_jump("u@b:2222"),
            (Some("u".into()), "b".into(), Some(2222))
        );
        assert_eq!(parse_jump("[::1]:22"), (None, "::1".into(), Some(22)));
    }
}
