//! [`SshHost`]: the [`RemoteHost`] contract over SSH — commands, uploads, downloads — on the
//! connections of [`Connections`], each command on a reused shell or a session of its own.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer_core::{
    ExecOptions, ExecOutput, PutOptions, RemoteError, RemoteHost, async_trait, quote,
};
use tokio::sync::oneshot;

use super::channel::{Input, Io, RawOutput, StdoutTo};
use super::connection::Connections;
use super::exec::{self, TAR_MARKER};
use super::handshake::Shared;
use super::options::SshOptions;
use super::shell;
use super::target::Target;
use crate::common::{install_with, shell_line, sudo_failure};
use crate::config::SshConfig;
use crate::local::short;

/// Files up to this size are uploaded through a reused shell.
const SHELL_UPLOAD_MAX: u64 = 16 * 1024 * 1024;

/// A host reached over SSH: one connection opened on first use and reused, a channel per
/// command, up to [`SshOptions::max_channels`] commands in flight per connection (more
/// connections, up to [`SshOptions::max_connections`], when those are busy).
///
/// Commands run as `sh -c` — by default on a long-lived `sh` per channel that runs one command
/// after another (each in a fresh `sh` and its own process group, nothing carried over), so
/// that a command does not cost the server a new session; see [`SshOptions::reuse_shells`].
/// `sudo` uses `sudo -n` (skipped when the login user is `root`). A timeout, or dropping the
/// `execute` future, kills the command's whole process group on the host through a second
/// channel (OpenSSH ignores signal requests), then waits a bounded time for it to end. Uploads stream the file (or a tar of the
/// directory) into a temporary path beside the destination whose size is checked before it is
/// renamed into place; with sudo the same happens as root.
///
/// Environment variables of [`ExecOptions::env`] are exported in the command line (sshd
/// accepts no `env` requests by default), so they are visible to `ps` on the host for the
/// life of the command: pass secrets on stdin instead.
///
/// ```no_run
/// use deployer_core::{ExecOptions, RemoteHost};
/// use deployer_remote::{SshHost, SshOptions};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let host = SshHost::new("fe001", SshOptions::new().user("deploy")).unwrap();
/// let out = host.execute("uptime", &ExecOptions::new()).await?;
/// println!("{}", out.stdout_str());
/// # Ok::<_, deployer_core::RemoteError>(())
/// # });
/// ```
pub struct SshHost {
    conns: Connections,
}

impl fmt::Debug for SshHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.conns;
        f.debug_struct("SshHost")
            .field("name", &c.name)
            .field("hostname", &c.target.hostname)
            .field("port", &c.target.port)
            .field("user", &c.target.user)
            .finish_non_exhaustive()
    }
}

impl SshHost {
    /// A host named `name` (resolved through the ssh config to its `HostName`, `Port`,
    /// `User`…). Nothing is connected until the first call.
    pub fn new(name: impl Into<String>, options: SshOptions) -> Result<Self, RemoteError> {
        Self::with_user_port(name, None, None, options)
    }

    /// Like [`new`](Self::new), with the login user and port given explicitly (they win over
    /// the ssh config).
    pub fn with_user_port(
        name: impl Into<String>,
        user: Option<&str>,
        port: Option<u16>,
        options: SshOptions,
    ) -> Result<Self, RemoteError> {
        let name = name.into();
        let config = match &options.ssh_config {
            Some(c) => c.clone(),
            None => Arc::new(SshConfig::user_default().map_err(|e| RemoteError::Other {
                host: name.clone(),
                message: e.to_string(),
            })?),
        };
        let target = Target::resolve(&name, user, port, &options, &config, 0)?;
        Ok(Self::from_target(name, target, options))
    }

    /// A host with a handshake budget, known_hosts and key files of its own.
    pub(crate) fn from_target(name: String, target: Target, options: SshOptions) -> Self {
        let shared = Shared::new(&options);
        Self::from_target_shared(name, target, options, shared)
    }

    /// A host of a connector, sharing its handshake budget and what it read.
    pub(crate) fn from_target_shared(
        name: String,
        target: Target,
        options: SshOptions,
        shared: Arc<Shared>,
    ) -> Self {
        SshHost {
            conns: Connections::new(name, target, options, shared),
        }
    }

    /// The login user.
    pub fn user(&self) -> &str {
        &self.conns.target.user
    }

    /// The address connected to (`HostName`) and port.
    pub fn address(&self) -> (&str, u16) {
        (&self.conns.target.hostname, self.conns.target.port)
    }

    /// Connects now instead of on the first command (e.g. to check reachability early).
    pub async fn connect(&self) -> Result<(), RemoteError> {
        let _slot = self.conns.slot().await?;
        Ok(())
    }

    /// Number of open connections (for tests and diagnostics).
    pub async fn connection_count(&self) -> usize {
        self.conns.count().await
    }

    fn other(&self, message: impl Into<String>) -> RemoteError {
        self.conns.other(message)
    }

    fn io_err(&self, op: &str, path: &str, source: std::io::Error) -> RemoteError {
        RemoteError::Io {
            host: self.conns.name.clone(),
            op: op.to_string(),
            path: path.to_string(),
            source,
        }
    }

    /// Runs `line` (already wrapped for sudo) with `input` on stdin: on an idle shell when
    /// there is no input (see [`shell`]), else on a session of its own.
    async fn run(
        &self,
        line: &str,
        io: Io,
        timeout: Option<Duration>,
        sudo_kill: bool,
        what: &str,
    ) -> Result<RawOutput, RemoteError> {
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let task = if self.conns.options.reuse_shells
            && matches!(io.input, Input::None)
            && line.len() <= shell::MAX_LINE
        {
            if line.contains('\0') {
                return Err(self.other("a command line cannot contain a NUL byte"));
            }
            let (slot, shell) = self.conns.shell().await?;
            let job = shell::ShellJob {
                host: self.conns.name.clone(),
                line: line.to_string(),
                input: None,
                uploads: self.conns.shared.uploads.clone(),
                stdout_to: io.stdout_to,
                sink: io.sink,
                sudo_kill,
            };
            tokio::spawn(job.run(slot, shell, cancel_rx))
        } else {
            let job = exec::Job::new(
                self.conns.name.clone(),
                line,
                io,
                sudo_kill,
                self.conns.shared.uploads.clone(),
            )?;
            let (slot, channel) = self.conns.open_session().await?;
            tokio::spawn(job.run(slot, channel, cancel_rx))
        };
        self.supervise(task, cancel_tx, timeout, what).await
    }

    /// Waits for a command's task, killing the command (through `cancel`) when `timeout`
    /// passes or when this future is dropped.
    async fn supervise(
        &self,
        mut task: tokio::task::JoinHandle<Result<RawOutput, RemoteError>>,
        cancel: oneshot::Sender<()>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<RawOutput, RemoteError> {
        let joined = match timeout {
            Some(limit) => match tokio::time::timeout(limit, &mut task).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = cancel.send(());
                    let _ = task.await;
                    return Err(RemoteError::Timeout {
                        host: self.conns.name.clone(),
                        what: what.to_string(),
                        after: limit,
                    });
                }
            },
            None => task.await,
        };
        drop(cancel);
        match joined {
            Ok(r) => r,
            Err(e) => Err(self.other(format!("command task failed: {e}"))),
        }
    }

    fn use_sudo(&self) -> bool {
        self.conns.target.user != "root"
    }
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[async_trait]
impl RemoteHost for SshHost {
    fn name(&self) -> &str {
        &self.conns.name
    }

    async fn execute(
        &self,
        command: &str,
        options: &ExecOptions,
    ) -> Result<ExecOutput, RemoteError> {
        let line = shell_line(&self.conns.name, command, options, self.use_sudo())?;
        let started = Instant::now();
        let input = match &options.stdin {
            Some(b) => Input::Bytes(b.clone()),
            None => Input::None,
        };
        let raw = self
            .run(
                &line,
                Io {
                    input,
                    stdout_to: StdoutTo::Collect,
                    sink: options.output.clone(),
                },
                options.timeout,
                options.sudo && self.use_sudo(),
                &format!("command `{}`", short(command)),
            )
            .await?;
        if let Some(e) = sudo_failure(
            &self.conns.name,
            options.sudo && self.use_sudo(),
            raw.status,
            &raw.stderr,
        ) {
            return Err(e);
        }
        Ok(ExecOutput {
            exit_status: raw.status,
            stdout: raw.stdout,
            stderr: raw.stderr,
            duration: started.elapsed(),
        })
    }

    async fn put(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
    ) -> Result<(), RemoteError> {
        let meta = tokio::fs::metadata(local)
            .await
            .map_err(|e| self.io_err("read local", &local.display().to_string(), e))?;
        let mode = Some(options.mode.unwrap_or_else(|| mode_of(&meta)));
        let exec = ExecOptions::new().sudo(options.sudo);
        let sudo = options.sudo && self.use_sudo();
        // A file goes through a shell (no session of its own); a directory is a tar stream
        // of unknown length, on a session of its own; so is a big file, where `cat` (128 KiB
        // reads) moves the bytes with less CPU than `head -c` (8 KiB reads) and the session's
        // cost no longer counts.
        let via_shell = if self.conns.options.reuse_shells
            && !meta.is_dir()
            && meta.len() <= SHELL_UPLOAD_MAX
        {
            Some(self.conns.shell().await?)
        } else {
            None
        };
        let raw = if let Some((slot, shell)) = via_shell {
            // The size check catches a connection that died mid-upload: `head` then stops
            // early, and successfully.
            // Created with the mode at once when it is within 0666 (the usual case), through
            // the umask: one `chmod` fewer.
            let (umask, mode) = match mode {
                Some(m) if m & !0o666 == 0 => (format!("umask {:03o}\n", !m & 0o777), None),
                other => (String::new(), other),
            };
            let fill = format!(
                "{umask}head -c {len} > \"$tmp\"\nn=$(wc -c < \"$tmp\")\n[ $n -eq {len} ]",
                len = meta.len()
            );
            let script = install_with(&self.conns.name, &fill, remote, mode)?;
            let line = shell_line(&self.conns.name, &script, &exec, self.use_sudo())?;
            let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
            let job = shell::ShellJob {
                host: self.conns.name.clone(),
                line,
                input: Some((local.to_path_buf(), meta.len())),
                uploads: self.conns.shared.uploads.clone(),
                stdout_to: StdoutTo::Collect,
                sink: None,
                sudo_kill: sudo,
            };
            let task = tokio::spawn(job.run(slot, shell, cancel_rx));
            self.supervise(task, cancel_tx, None, "upload").await?
        } else {
            let (fill, input) = if meta.is_dir() {
                (
                    format!(
                        "mkdir \"$tmp\"\ntar -x -p --no-same-owner -f - -C \"$tmp\"\n\
                         [ -e \"$tmp/{TAR_MARKER}\" ]\nrm -f \"$tmp/{TAR_MARKER}\""
                    ),
                    Input::Tar(local.to_path_buf()),
                )
            } else {
                (
                    format!(
                        "cat > \"$tmp\"\nn=$(wc -c < \"$tmp\")\n[ $n -eq {} ]",
                        meta.len()
                    ),
                    Input::File(local.to_path_buf()),
                )
            };
            let script = install_with(&self.conns.name, &fill, remote, mode)?;
            let line = shell_line(&self.conns.name, &script, &exec, self.use_sudo())?;
            self.run(
                &line,
                Io {
                    input,
                    stdout_to: StdoutTo::Collect,
                    sink: None,
                },
                None,
                sudo,
                "upload",
            )
            .await?
        };
        if let Some(e) = sudo_failure(&self.conns.name, sudo, raw.status, &raw.stderr) {
            return Err(e);
        }
        if raw.status != Some(0) {
            let tail = deployer_core::tail_lines(&String::from_utf8_lossy(&raw.stderr), 5);
            return Err(self.io_err(
                "upload to",
                remote,
                std::io::Error::other(match raw.status {
                    Some(code) => format!("exit status {code}: {tail}"),
                    None => format!("killed by a signal: {tail}"),
                }),
            ));
        }
        Ok(())
    }

    async fn get(&self, remote: &str, local: &Path) -> Result<(), RemoteError> {
        let parent = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let local_name = local.display().to_string();
        let tmp = tempfile::Builder::new()
            .prefix(".deployer-tmp")
            .tempfile_in(&parent)
            .map_err(|e| self.io_err("download to", &local_name, e))?;
        let file = tokio::fs::File::from_std(
            tmp.reopen()
                .map_err(|e| self.io_err("download to", &local_name, e))?,
        );
        let cmd = format!(
            "cat -- {}",
            quote(remote).map_err(|e| self.other(e.to_string()))?
        );
        let raw = self
            .run(
                &cmd,
                Io {
                    input: Input::None,
                    stdout_to: StdoutTo::File(file),
                    sink: None,
                },
                None,
                false,
                "download",
            )
            .await?;
        if raw.status != Some(0) {
            let tail = deployer_core::tail_lines(&String::from_utf8_lossy(&raw.stderr), 5);
            return Err(self.io_err("download", remote, std::io::Error::other(tail)));
        }
        tmp.persist(local)
            .map_err(|e| self.io_err("download to", &local_name, e.error))?;
        Ok(())
    }

    async fn file_exists(&self, remote: &str) -> Result<bool, RemoteError> {
        let q = quote(remote).map_err(|e| self.other(e.to_string()))?;
        let cmd = format!("if [ -e {q} ] || [ -L {q} ]; then echo yes; else echo no; fi");
        let out = self.execute(&cmd, &ExecOptions::new()).await?;
        match out.stdout.as_slice() {
            b"yes\n" => Ok(true),
            b"no\n" => Ok(false),
            _ => Err(self.other(format!("cannot check {remote}: {}", out.stderr_tail(3)))),
        }
    }
}

impl SshHost {
    /// The jump host connected through, as `user@host:port` (from the host's
    /// [`HostEntry`](super::HostEntry) or the ssh config's `ProxyJump`), if any.
    pub fn proxy_jump(&self) -> Option<String> {
        let jump = self.conns.target.jump.as_ref()?;
        Some(format!("{}@{}:{}", jump.user, jump.hostname, jump.port))
    }
}
