//! Helpers shared by the commands: argument checks, durations, quoting, polling, secrets.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use deployer_core::{CommandError, ExecContext, ShellCommand, ValidationError, ValidationErrors};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Builds a command line; an argument with a NUL byte (rejected at `initialize` already)
/// becomes a command failure rather than a panic.
/// A failure of a process that ran: `message`, its exit status and the tail of its stderr.
pub(crate) fn process_failed(message: String, out: &deployer_core::ExecOutput) -> CommandError {
    CommandError::Failed {
        message,
        exit_status: out.exit_status,
        stderr: out.stderr_tail(20),
    }
}

pub(crate) fn build(cmd: &ShellCommand) -> Result<String, CommandError> {
    cmd.build().map_err(|e| CommandError::failed(e.to_string()))
}

/// For commands that run a script: replaces the message of a failed run (which would quote
/// the script) with `what`, plus the last line of stderr; keeps the exit status and stderr.
pub(crate) fn explain(what: String) -> impl FnOnce(CommandError) -> CommandError {
    move |e| match e {
        CommandError::Failed {
            exit_status,
            stderr,
            ..
        } => {
            let detail = stderr
                .lines()
                .last()
                .map(|l| format!(": {l}"))
                .unwrap_or_default();
            CommandError::Failed {
                message: format!("{what}{detail}"),
                exit_status,
                stderr,
            }
        }
        other => other,
    }
}

/// A number of seconds (integer or fraction), for `#[serde(deserialize_with)]`.
pub(crate) fn opt_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_finite() && (0.0..1e9).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(D::Error::custom(format!(
            "invalid duration {s}, expected a number of seconds between 0 and 1e9"
        ))),
    }
}

/// A file mode written as an octal string (`"0644"`, `"755"`).
pub(crate) fn opt_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => parse_mode(&s).map(Some).ok_or_else(|| {
            D::Error::custom(format!(
                "invalid mode {s:?}, expected an octal string such as \"0644\""
            ))
        }),
        Some(other) => Err(D::Error::custom(format!(
            "invalid mode {other}, expected an octal string such as \"0644\" (a number would be read as decimal)"
        ))),
    }
}

fn parse_mode(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok()
}

/// A mode as `chmod` takes it.
pub(crate) fn mode_str(mode: u32) -> String {
    format!("{mode:04o}")
}

/// A secret argument (a password, a token): deserialized like a string, never shown by
/// `Debug` or in messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde's own "invalid type" message would quote the value: never for a secret.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Secret(s)),
            other => {
                let kind = match other {
                    serde_json::Value::Null => "null",
                    serde_json::Value::Bool(_) => "a boolean",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::Array(_) => "a list",
                    _ => "an object",
                };
                Err(D::Error::custom(format!(
                    "invalid type: {kind} (value hidden), expected a string"
                )))
            }
        }
    }
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value; pass it only where it is needed (standard input, a request body).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Collects the problems of one task's arguments.
#[derive(Default)]
pub(crate) struct Check {
    errors: ValidationErrors,
}

impl Check {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn push(&mut self, e: ValidationError) {
        self.errors.push(e);
    }

    pub(crate) fn fail(&mut self, path: &str, message: impl Into<String>, expected: &str) {
        self.push(ValidationError::new(path, message).expected(expected));
    }

    /// Any string passed to the shell: no NUL byte.
    pub(crate) fn text(&mut self, path: &str, value: &str) {
        if value.contains('\0') {
            self.fail(
                path,
                "contains a NUL byte, which a shell cannot pass",
                "text without NUL bytes",
            );
        }
    }

    /// A path on the host, as [`deployer_core::RemotePath`] checks it: not empty, no NUL byte,
    /// newline or other control character, at most 4096 bytes.
    pub(crate) fn path(&mut self, path: &str, value: &str) {
        if value.is_empty() {
            self.fail(path, "is empty", "a path");
        } else if let Err(e) = deployer_core::RemotePath::parse(value) {
            self.fail(path, format!("{} {}", e.value, e.problem), e.expected);
        }
    }

    /// A non-empty shell command line written by the user.
    pub(crate) fn command_line(&mut self, path: &str, value: &str) {
        if value.trim().is_empty() {
            self.fail(path, "is empty", "a shell command line");
        } else {
            self.text(path, value);
        }
    }

    /// A path that `rm -rf` may be pointed at: not `/`, `.`, `..` or empty.
    pub(crate) fn removable(&mut self, path: &str, value: &str) {
        let trimmed = value.trim_end_matches('/');
        if matches!(trimmed, "" | "." | ".." | "/" | "~" | "*") && !value.is_empty() {
            self.fail(
                path,
                format!("refusing to remove {value:?}"),
                "a path below a directory",
            );
        } else {
            self.path(path, value);
        }
    }

    /// A path relative to a base directory that stays inside it.
    pub(crate) fn relative(&mut self, path: &str, value: &str) {
        if value.is_empty()
            || value.starts_with('/')
            || value.split('/').any(|c| c == ".." || c == ".")
            || value.contains('\0')
        {
            self.fail(
                path,
                format!("invalid relative path {value:?}"),
                "a relative path without \".\" or \"..\" components, e.g. \"config/app.yml\"",
            );
        }
    }

    /// A name used as one path component (a version, a service name).
    pub(crate) fn name(&mut self, path: &str, value: &str, what: &str) {
        let bad = value.is_empty()
            || value == "."
            || value == ".."
            || value.starts_with('-')
            || value
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c.is_control());
        if bad {
            self.fail(
                path,
                format!("invalid {what} {value:?}"),
                &format!(
                    "a {what} without \"/\", whitespace or control characters, not starting with \"-\""
                ),
            );
        }
    }

    /// A host name, as [`deployer_core::HostName`] checks it.
    pub(crate) fn host(&mut self, path: &str, value: &str) {
        if let Err(e) = deployer_core::HostName::parse(value) {
            self.fail(path, format!("{} {}", e.value, e.problem), e.expected);
        }
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, ValidationErrors> {
        self.errors.into_result(value)
    }
}

/// How long to wait for a state: the `wait_timeout` argument, else the task's `timeout`, else
/// 60 seconds.
pub(crate) fn wait_budget(ctx: &ExecContext, arg: Option<Duration>) -> Duration {
    arg.or(ctx.timeout()).unwrap_or(Duration::from_secs(60))
}

/// Calls `probe` until it returns true or `wait` has passed (it is called at least once, and
/// once more at the deadline). Returns whether it succeeded. Stops early when the run is
/// cancelled.
pub(crate) async fn poll_until<F, Fut>(
    ctx: &ExecContext,
    wait: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<bool, CommandError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, CommandError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if probe().await? {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let pause = interval.min(deadline - now);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = ctx.cancelled() => return Err(CommandError::failed("cancelled while waiting")),
        }
    }
}

/// Seconds for messages: `60s`, `2.5s`.
pub(crate) fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{s:.1}s")
    }
}

/// `path` as an operand of a program that reads more into it than a file name: a leading `-`
/// as an option (`find`, `unzip`, `svc` take no `--` before it) or a `host:` prefix as a remote
/// archive (`tar -f`). A relative path gets `./`, which names the same file.
pub(crate) fn operand(path: &str) -> String {
    if path.starts_with('/') || path.starts_with("./") {
        path.to_string()
    } else {
        format!("./{path}")
    }
}

/// The last path component of `path` (`/a/b/` → `b`).
pub(crate) fn basename(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

/// The directory part of `path` (`/a/b` → `/a`, `b` → `.`, `/b` → `/`).
pub(crate) fn dirname(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(0) => "/",
        Some(i) => &trimmed[..i],
        None => ".",
    }
}

/// `base/name` without doubling the slash.
pub(crate) fn join(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// Shell-style pattern matching of one file name: `*`, `?`, `[abc]`, `[a-z]`, `[!a]`.
///
/// Iterative with one backtracking point (the last `*`), so it takes at most
/// O(pattern × name) steps whatever the pattern.
pub(crate) fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match class(&p[pi + 1..], n[ni]) {
                Some((true, len)) => Some(1 + len),
                Some((false, _)) => None,
                // No closing bracket: a literal '['.
                None => (n[ni] == '[').then_some(1),
            },
            Some(c) => (*c == n[ni]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                // Let the last '*' swallow one more character and retry.
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against a bracket expression; `p` starts after the `[`. Returns whether it
/// matched and how many pattern characters the expression used, including the `]`.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 0;
    let negate = matches!(p.first(), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_matches_like_a_shell() {
        assert!(fnmatch("*", "anything"));
        assert!(fnmatch("web_*", "web_1.2"));
        assert!(!fnmatch("web_*", "api_1.2"));
        assert!(fnmatch("v?.tgz", "v1.tgz"));
        assert!(!fnmatch("v?.tgz", "v10.tgz"));
        assert!(fnmatch("r[0-9]*", "r2026"));
        assert!(!fnmatch("r[!0-9]*", "r2026"));
        assert!(fnmatch("[[]x", "[x"));
        assert!(fnmatch("a*b*c", "aXbYbZc"));
        assert!(!fnmatch("a*b*c", "aXbYbZ"));
        assert!(fnmatch("**", ""));
        assert!(!fnmatch("?", ""));
        assert!(fnmatch("[x", "[x"));
        // A pathological pattern answers at once.
        let long = "a".repeat(250);
        assert!(!fnmatch(&format!("{}b", "*a".repeat(40)), &long));
    }

    #[test]
    fn paths_split_like_dirname_and_basename() {
        assert_eq!(basename("/srv/app/"), "app");
        assert_eq!(dirname("/srv/app"), "/srv");
        assert_eq!(dirname("/app"), "/");
        assert_eq!(dirname("app"), ".");
        assert_eq!(join("/srv/", "x"), "/srv/x");
        assert_eq!(operand("/srv/x"), "/srv/x");
        assert_eq!(operand("-delete"), "./-delete");
        assert_eq!(operand("host:a.tgz"), "./host:a.tgz");
        assert_eq!(operand("./x"), "./x");
    }

    #[test]
    fn modes_are_octal_strings() {
        assert_eq!(parse_mode("0644"), Some(0o644));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(mode_str(0o600), "0600");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
