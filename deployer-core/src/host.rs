//! The `RemoteHost` contract that commands run against, and the `Connector` that hands out hosts.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::errors::RemoteError;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives output lines as a command produces them (without the trailing newline).
pub type OutputSink = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// Options of [`RemoteHost::execute`].
///
/// ```
/// use deployer_core::ExecOptions;
/// use std::time::Duration;
///
/// let opts = ExecOptions::new()
///     .sudo(true)
///     .timeout(Duration::from_secs(10))
///     .env("RELEASE", "42")
///     .stdin(b"input".to_vec());
/// assert!(opts.sudo);
/// ```
#[derive(Clone, Default)]
pub struct ExecOptions {
    /// Run through non-interactive `sudo` (default: false). A sudo that wants a password is
    /// [`RemoteError::SudoPassword`], never a hang.
    pub sudo: bool,
    /// Stop the command after this long (default: no limit) with [`RemoteError::Timeout`].
    pub timeout: Option<Duration>,
    /// Environment variables set for the command (default: none).
    pub env: Vec<(String, String)>,
    /// Bytes written to the command's standard input, which is then closed (default: none,
    /// stdin closed at once).
    pub stdin: Option<Vec<u8>>,
    /// Called with each output line as it arrives (default: none). The full output is returned
    /// in [`ExecOutput`] whether or not this is set.
    pub output: Option<OutputSink>,
}

impl ExecOptions {
    /// Default options: no sudo, no timeout, no environment, no stdin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `sudo`.
    pub fn sudo(mut self, sudo: bool) -> Self {
        self.sudo = sudo;
        self
    }

    /// Sets `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds one environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets `stdin`.
    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }

    /// Sets the output callback.
    pub fn output(mut self, sink: OutputSink) -> Self {
        self.output = Some(sink);
        self
    }
}

impl fmt::Debug for ExecOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Environment values and stdin may carry secrets: show only their shape.
        f.debug_struct("ExecOptions")
            .field("sudo", &self.sudo)
            .field("timeout", &self.timeout)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("stdin", &self.stdin.as_ref().map(|s| s.len()))
            .field("output", &self.output.is_some())
            .finish()
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// The exit status; `None` when the process was killed by a signal.
    pub exit_status: Option<i32>,
    /// What was written to standard output. The hosts of `deployer-remote` keep at most
    /// 16 MiB of each stream (its first and last 8 MiB, with a line saying how much was cut
    /// between them); every line still reaches [`ExecOptions::output`] as it arrives.
    pub stdout: Vec<u8>,
    /// What was written to standard error (bounded like `stdout`).
    pub stderr: Vec<u8>,
    /// Wall time from start to exit.
    pub duration: Duration,
}

impl ExecOutput {
    /// Whether the process exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }

    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (invalid UTF-8 replaced).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The last `max_lines` lines of standard error, for failure reports.
    pub fn stderr_tail(&self, max_lines: usize) -> String {
        // The tail is at most 4 KiB: only the end of stderr is looked at, so a command that
        // wrote 100 MiB to it is not copied whole.
        let start = self.stderr.len().saturating_sub(64 * 1024);
        tail_lines(&String::from_utf8_lossy(&self.stderr[start..]), max_lines)
    }
}

/// The last `max_lines` lines of `text`, trimmed, at most 4 KiB.
pub fn tail_lines(text: &str, max_lines: usize) -> String {
    let trimmed = text.trim_end();
    let lines: Vec<&str> = trimmed.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    let mut tail = lines[start..].join("\n");
    const MAX: usize = 4096;
    if tail.len() > MAX {
        let mut cut = tail.len() - MAX;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = format!("…{}", &tail[cut..]);
    }
    tail
}

/// Options of [`RemoteHost::put`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Write through `sudo`: the upload goes to a temporary file that is then moved into place,
    /// keeping the local file's mode (default: false).
    pub sudo: bool,
    /// Set this mode on the uploaded file instead of the local one's (default: keep).
    pub mode: Option<u32>,
}

/// A host that commands run against: a remote machine over SSH, this machine, or a fake.
///
/// # Contract
///
/// * **Errors** name the host and say what failed ([`RemoteError`]). A command that ran and
///   exited non-zero is *not* an error: it is an [`ExecOutput`] with that status.
/// * **Cancel safety**: dropping the future of [`execute`](Self::execute) stops the command on
///   the host (it is not left running) and releases whatever the call held (a channel, a
///   process). This is how the executor enforces timeouts and hard cancellation.
/// * **Concurrency**: a host is shared by every task that targets it; all methods take `&self`
///   and may be called concurrently. An implementation limits what it must (e.g. channels per
///   SSH connection) by waiting, not by failing.
/// * **Connection reuse**: implementations keep their connection for the whole run; a broken
///   connection is re-established on the next call.
/// * `put` and `get` leave no half-written destination file behind on failure.
#[async_trait]
pub trait RemoteHost: Send + Sync + fmt::Debug {
    /// The host's name as tasks address it (`fe001`, `local`).
    fn name(&self) -> &str;

    /// Runs `command` through the login shell (`sh -c`) and waits for it to exit.
    ///
    /// `command` is a shell command line: build it with [`ShellCommand`](crate::ShellCommand)
    /// or [`quote`](crate::quote) so that arguments are never pasted unquoted.
    async fn execute(
        &self,
        command: &str,
        options: &ExecOptions,
    ) -> Result<ExecOutput, RemoteError>;

    /// Uploads the local file or directory `local` to the path `remote` (a directory is copied
    /// recursively; `remote` is the resulting path, not its parent).
    async fn put(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
    ) -> Result<(), RemoteError>;

    /// Downloads the remote file `remote` to the local path `local`.
    async fn get(&self, remote: &str, local: &Path) -> Result<(), RemoteError>;

    /// Whether a file, directory or link exists at `remote`.
    async fn file_exists(&self, remote: &str) -> Result<bool, RemoteError>;
}

/// Which host a task wants: its `remote_host` and `remote_user`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostSpec {
    /// The host name; `None` for the controller itself.
    pub host: Option<String>,
    /// The login user; `None` for the connector's default.
    pub user: Option<String>,
}

impl HostSpec {
    /// The controller itself.
    pub fn local() -> Self {
        HostSpec {
            host: None,
            user: None,
        }
    }

    /// A named host.
    pub fn remote(host: impl Into<String>, user: Option<String>) -> Self {
        HostSpec {
            host: Some(host.into()),
            user,
        }
    }
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.user, &self.host) {
            (_, None) => f.write_str("local"),
            (Some(u), Some(h)) => write!(f, "{u}@{h}"),
            (None, Some(h)) => f.write_str(h),
        }
    }
}

/// Hands out hosts by name, so every task that targets `fe001` shares one connection.
///
/// The executor asks for a host when a task starts (inside its concurrency slot), so
/// connections are opened lazily and only to hosts that have work.
#[async_trait]
pub trait Connector: Send + Sync {
    /// The host for `spec`, connecting on first use. Later calls with the same spec return the
    /// same host.
    async fn host(&self, spec: &HostSpec) -> Result<Arc<dyn RemoteHost>, RemoteError>;

    /// Whether this connector can serve `spec` at all, decided without contacting anything
    /// (a connector for this machine only refuses other hosts; a connector with a fixed
    /// inventory refuses unknown names). The dry run asks this for every host of a plan
    /// ([`Driver::check_hosts`](crate::Driver::check_hosts)). The default says yes.
    fn check(&self, spec: &HostSpec) -> Result<(), RemoteError> {
        let _ = spec;
        Ok(())
    }

    /// Whether this controller can hold the connections of `hosts` distinct hosts at once
    /// (e.g. enough file descriptors), decided without contacting anything. The dry run asks
    /// this once per plan, with the number of distinct (host, user) pairs it names
    /// ([`Driver::check_hosts`](crate::Driver::check_hosts)); a refusal is reported as a
    /// problem of the plan. The default says yes.
    ///
    /// An implementation may adjust this process's own resource limits to make room (e.g.
    /// raise the soft limit on open files up to the hard limit) and should say so in its
    /// documentation.
    fn check_capacity(&self, hosts: usize) -> Result<(), RemoteError> {
        let _ = hosts;
        Ok(())
    }
}
