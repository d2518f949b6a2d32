//! Checked names and paths: what a host, a login or a shell will see, refused at plan time when
//! it could do harm (an option injected into `ssh`, a forged log line, a NUL cutting a path).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest host name (RFC 1123: 253 bytes).
pub const MAX_HOST_NAME: usize = 253;
/// The longest user name (the POSIX portable login name limit most systems keep).
pub const MAX_USER_NAME: usize = 32;
/// The longest remote path accepted (Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// Why a name or a path was refused: the offending value (escaped and shortened, see
/// [`shown`]), what is wrong, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value} {problem}; expected {expected}")]
pub struct NameError {
    /// The value, escaped and shortened.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
    /// What was expected, in words.
    pub expected: &'static str,
}

/// `value` as it may be shown in a message: quoted, control characters and non-ASCII escaped
/// (`"web\n01"`, `"a\u{0}b"`), cut to 60 characters with the length of the rest — never a raw
/// newline, NUL or 10 KB.
///
/// ```
/// use deployer_core::shown;
/// assert_eq!(shown("web\n01"), r#""web\n01""#);
/// assert_eq!(shown(&"x".repeat(10_000)), format!("\"{}\"… (10000 bytes)", "x".repeat(60)));
/// ```
pub fn shown(value: &str) -> String {
    let cut: String = value.chars().take(60).collect();
    let escaped = format!("{:?}", cut);
    let escaped: String = escaped
        .chars()
        .flat_map(|c| {
            if c.is_ascii() {
                vec![c]
            } else {
                format!("\\u{{{:x}}}", c as u32).chars().collect()
            }
        })
        .collect();
    if cut.len() < value.len() {
        format!("{escaped}… ({} bytes)", value.len())
    } else {
        escaped
    }
}

fn refuse(value: &str, problem: impl Into<String>, expected: &'static str) -> NameError {
    NameError {
        value: shown(value),
        problem: problem.into(),
        expected,
    }
}

/// What is wrong with the first character of `s` that is whitespace or a control character.
fn bad_char(s: &str) -> Option<String> {
    s.chars()
        .find(|c| c.is_whitespace() || c.is_control())
        .map(describe)
}

/// What is wrong with the first control character of `s`.
fn control_char(s: &str) -> Option<String> {
    s.chars().find(|c| c.is_control()).map(describe)
}

fn describe(c: char) -> String {
    match c {
        '\n' => "contains a newline".to_string(),
        '\r' => "contains a carriage return".to_string(),
        '\0' => "contains a NUL byte".to_string(),
        '\t' => "contains a tab".to_string(),
        ' ' => "contains a space".to_string(),
        c => format!("contains the control character U+{:04X}", c as u32),
    }
}

/// The checks host and user names share: not empty, no leading `-`, no whitespace or control
/// character, at most `max` bytes, then `special` (which may accept the name as it is, or refuse
/// it with a reason), then only letters, digits, `-`, `.` and `_`.
fn check_name(
    name: &str,
    max: usize,
    expected: &'static str,
    special: impl Fn(&str) -> Result<bool, &'static str>,
) -> Result<(), NameError> {
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.starts_with('-') {
        Some("starts with '-'".to_string())
    } else if let Some(problem) = bad_char(name) {
        Some(problem)
    } else if name.len() > max {
        Some(format!("is {} bytes long", name.len()))
    } else {
        match special(name) {
            Ok(true) => None,
            Err(reason) => Some(reason.to_string()),
            Ok(false) => name
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
                .map(|c| {
                    if c.is_ascii() {
                        format!("contains {c:?}")
                    } else {
                        format!("contains the non-ASCII character U+{:04X}", c as u32)
                    }
                }),
        }
    };
    match problem {
        Some(problem) => Err(refuse(name, problem, expected)),
        None => Ok(()),
    }
}

const HOST_EXPECTED: &str = "a host name (letters, digits, '-', '.', '_'; at most 253 bytes; \
                             not starting with '-'), an IP address, or an ssh_config alias";

/// A host name a task may name in `remote_host`: an RFC 1123 name, an IP literal, or an
/// ssh_config alias (letters, digits, `-`, `.`, `_`), at most 253 bytes, not starting with `-`
/// (so it can never become an option of `ssh`). No whitespace, control character, `@` (a login
/// goes in `remote_user`), `:` (a port goes in the config's `ssh` section) or non-ASCII.
///
/// ```
/// use deployer_core::HostName;
///
/// assert!(HostName::parse("fe001.example.com").is_ok());
/// assert!(HostName::parse("10.0.0.7").is_ok());
/// assert!(HostName::parse("fe80::1").is_ok());
/// let err = HostName::parse("-oProxyCommand=sh").unwrap_err();
/// assert_eq!(err.to_string(), "\"-oProxyCommand=sh\" starts with '-'; expected a host name \
///     (letters, digits, '-', '.', '_'; at most 253 bytes; not starting with '-'), an IP \
///     address, or an ssh_config alias");
/// assert!(HostName::parse("deploy@fe001").unwrap_err().problem.contains("'@'"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct HostName(String);

impl HostName {
    /// Checks `name`.
    pub fn parse(name: &str) -> Result<HostName, NameError> {
        check_name(name, MAX_HOST_NAME, HOST_EXPECTED, |name| {
            if name.parse::<IpAddr>().is_ok() {
                Ok(true)
            } else if name.contains('@') {
                Err("contains '@' (put the login in remote_user)")
            } else if name.contains(':') {
                Err("contains ':' (put the port in the config's ssh section)")
            } else {
                Ok(false)
            }
        })?;
        Ok(HostName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const USER_EXPECTED: &str = "a user name (letters, digits, '.', '_', '-'; at most 32 bytes; \
                             not starting with '-')";

/// A login name a task may give in `remote_user`: the POSIX portable set (letters, digits, `.`,
/// `_`, `-`), at most 32 bytes, not starting with `-`.
///
/// ```
/// use deployer_core::UserName;
///
/// assert!(UserName::parse("deploy_user-2").is_ok());
/// assert!(UserName::parse("-oUser").unwrap_err().problem.contains("starts with '-'"));
/// assert!(UserName::parse("root\nX").unwrap_err().to_string().starts_with(r#""root\nX" contains a newline"#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    /// Checks `name`.
    pub fn parse(name: &str) -> Result<UserName, NameError> {
        check_name(name, MAX_USER_NAME, USER_EXPECTED, |_| Ok(false))?;
        Ok(UserName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const PATH_EXPECTED: &str = "a path without NUL bytes, newlines or control characters";

/// A path on a host, for a command's typed arguments: no NUL byte (it would cut the path), no
/// newline or other control character (it would forge a log line or split a shell line), at
/// most 4096 bytes. Any other character is fine: commands quote paths
/// ([`ShellCommand`](crate::ShellCommand)).
///
/// Declare an argument `RemotePath` (it deserializes with this check) and the plan refuses a bad
/// one with the argument's path:
///
/// ```
/// use deployer_core::RemotePath;
///
/// assert!(RemotePath::parse("/srv/web releases/1.2 'x'").is_ok());
/// assert!(RemotePath::parse("/tmp/a\0b").unwrap_err().problem.contains("NUL"));
///
/// #[derive(serde::Deserialize)]
/// struct Args { source: RemotePath }
/// let err = serde_json::from_str::<Args>(r#"{"source": "/a\nb"}"#).err().unwrap();
/// assert!(err.to_string().contains(r#""/a\nb" contains a newline"#), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RemotePath(String);

impl RemotePath {
    /// Checks `path`.
    pub fn parse(path: &str) -> Result<RemotePath, NameError> {
        if path.is_empty() {
            return Err(refuse(path, "is empty", PATH_EXPECTED));
        }
        if let Some(problem) = control_char(path) {
            return Err(refuse(path, problem, PATH_EXPECTED));
        }
        if path.len() > MAX_PATH {
            return Err(refuse(
                path,
                format!("is {} bytes long", path.len()),
                PATH_EXPECTED,
            ));
        }
        Ok(RemotePath(path.to_string()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_type {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<$t, NameError> {
                $t::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$t, D::Error> {
                let s = String::deserialize(deserializer)?;
                $t::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_type!(HostName);
string_type!(UserName);
string_type!(RemotePath);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_host_names_are_refused_with_the_reason() {
        for (name, problem) in [
            ("", "is empty"),
            ("web 01", "contains a space"),
            ("web\n01", "contains a newline"),
            ("web\u{0}01", "contains a NUL byte"),
            ("web\u{7}01", "contains the control character U+0007"),
            ("-oProxyCommand=touch /tmp/x", "starts with '-'"),
            ("deploy@fe001", "contains '@'"),
            ("fe001:2222", "contains ':'"),
            (" fe001", "contains a space"),
            ("fé001", "contains the non-ASCII character U+00E9"),
            ("fe001/x", "contains '/'"),
            ("fe$(id)", "contains '$'"),
        ] {
            let err = HostName::parse(name).unwrap_err();
            assert!(err.problem.contains(problem), "{name:?}: {err}");
            assert!(!err.to_string().contains('\n') && !err.to_string().contains('\0'));
        }
        let long = "a".repeat(254);
        assert!(
            HostName::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("is 254 bytes long")
        );
        let huge = HostName::parse(&"b".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(huge.len() < 400, "{huge}");
        for ok in [
            "fe001",
            "web-1.example.com",
            "127.0.0.1",
            "::1",
            "my_alias",
            "LOCAL",
        ] {
            assert!(HostName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn hostile_user_names_and_paths_are_refused() {
        for user in ["", "-oX", "a b", "a\nb", &"u".repeat(33), "ro:ot", "dé"] {
            assert!(UserName::parse(user).is_err(), "{user:?}");
        }
        assert!(UserName::parse("www-data").is_ok());
        for path in ["", "/a\nb", "/a\0b", "/a\rb", "/a\u{1b}[31mb"] {
            assert!(RemotePath::parse(path).is_err(), "{path:?}");
        }
        assert!(RemotePath::parse("/srv/ünï cödé/$(x)").is_ok());
    }
}
