//! [`LocalHost`]: the [`RemoteHost`] contract on the machine the library runs on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use deployer_core::{
    Connector, ExecOptions, ExecOutput, HostSpec, PutOptions, RemoteError, RemoteHost, Stream,
    async_trait,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::common::{LineCollector, shell_line, sudo_failure};

/// This machine, as a [`RemoteHost`]: commands run with `sh -c` as a child process.
///
/// * `sudo` runs the command through `sudo -n` (non-interactive); when the library already runs
///   as root, sudo is skipped.
/// * Each command runs in its own process group; a timeout, or dropping the `execute` future,
///   kills the whole group with `SIGKILL`, so nothing the command started is left behind.
/// * `put` and `get` copy through a temporary file (or directory) beside the destination that is
///   renamed into place, so the destination is never half-written.
///
/// ```
/// use deployer_core::{ExecOptions, RemoteHost};
/// use deployer_remote::LocalHost;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let host = LocalHost::new();
/// let out = host
///     .execute("echo hello; echo oops >&2; exit 3", &ExecOptions::new())
///     .await
///     .unwrap();
/// assert_eq!(out.exit_status, Some(3));
/// assert_eq!(out.stdout, b"hello\n");
/// assert_eq!(out.stderr, b"oops\n");
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct LocalHost {
    name: String,
    is_root: bool,
}

impl Default for LocalHost {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalHost {
    /// The local host, named [`LOCAL_HOST`](deployer_core::LOCAL_HOST) (`local`).
    pub fn new() -> Self {
        Self::with_name(deployer_core::LOCAL_HOST)
    }

    /// The local host under another name (used in errors and by [`RemoteHost::name`]).
    pub fn with_name(name: impl Into<String>) -> Self {
        LocalHost {
            name: name.into(),
            // SAFETY: geteuid has no preconditions and cannot fail.
            is_root: unsafe { libc::geteuid() } == 0,
        }
    }

    fn io_err(&self, op: &str, path: &Path, source: std::io::Error) -> RemoteError {
        RemoteError::Io {
            host: self.name.clone(),
            op: op.to_string(),
            path: path.display().to_string(),
            source,
        }
    }

    /// Copies `local` to `remote` as root through `sudo -n` (when not already root).
    async fn put_with_sudo(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
    ) -> Result<(), RemoteError> {
        let src = local.to_str().ok_or_else(|| RemoteError::Other {
            host: self.name.clone(),
            message: format!("local path {} is not UTF-8", local.display()),
        })?;
        let script = crate::common::install_script(&self.name, src, remote, options.mode)?;
        let out = self
            .execute(&script, &ExecOptions::new().sudo(true))
            .await?;
        if out.success() {
            Ok(())
        } else {
            Err(self.io_err(
                "upload to",
                Path::new(remote),
                std::io::Error::other(out.stderr_tail(5)),
            ))
        }
    }
}

/// Kills a process group when dropped, unless disarmed.
struct GroupKill {
    pgid: Option<i32>,
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg only sends a signal; the group is our child's, which has not been
            // reaped yet (the `Child` is dropped after this guard), so the id is not reused.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

async fn read_all<R: AsyncRead + Unpin>(
    mut reader: R,
    mut collector: LineCollector,
) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(collector.finish());
        }
        collector.push(&buf[..n]);
    }
}

#[async_trait]
impl RemoteHost for LocalHost {
    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(
        &self,
        command: &str,
        options: &ExecOptions,
    ) -> Result<ExecOutput, RemoteError> {
        let line = shell_line(&self.name, command, options, !self.is_root)?;
        let mut cmd = tokio::process::Command::new("sh");
        // `--`: a line starting with `-` is the command, not options of `sh`.
        cmd.arg("-c")
            .arg("--")
            .arg(&line)
            .stdin(if options.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| self.io_err("run sh -c for", Path::new(command), e))?;
        let mut guard = GroupKill {
            pgid: child.id().map(|id| id as i32),
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let data = options.stdin.as_deref().unwrap_or_default();
        let sink = options.output.clone();
        let run = async {
            let feed = async {
                if let Some(mut w) = stdin {
                    // A command that does not read its input closes the pipe: not an error.
                    let _ = w.write_all(data).await;
                    let _ = w.shutdown().await;
                }
            };
            let out = async {
                match stdout {
                    Some(r) => read_all(r, LineCollector::new(Stream::Stdout, sink.clone())).await,
                    None => Ok(Vec::new()),
                }
            };
            let err = async {
                match stderr {
                    Some(r) => read_all(r, LineCollector::new(Stream::Stderr, sink.clone())).await,
                    None => Ok(Vec::new()),
                }
            };
            let ((), out, err) = tokio::join!(feed, out, err);
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, out?, err?))
        };
        let result = match options.timeout {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(RemoteError::Timeout {
                        host: self.name.clone(),
                        what: format!("command `{}`", short(command)),
                        after: limit,
                    });
                }
            },
            None => run.await,
        };
        let (status, stdout, stderr) =
            result.map_err(|e| self.io_err("run", Path::new(command), e))?;
        // The command has exited: leave whatever it started in the background alone.
        guard.pgid = None;
        let exit_status = status.code();
        if let Some(e) = sudo_failure(
            &self.name,
            options.sudo && !self.is_root,
            exit_status,
            &stderr,
        ) {
            return Err(e);
        }
        Ok(ExecOutput {
            exit_status,
            stdout,
            stderr,
            duration: started.elapsed(),
        })
    }

    async fn put(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
    ) -> Result<(), RemoteError> {
        if options.sudo && !self.is_root {
            return self.put_with_sudo(local, remote, options).await;
        }
        let dest = PathBuf::from(remote);
        let meta = tokio::fs::metadata(local)
            .await
            .map_err(|e| self.io_err("read", local, e))?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let err = |e| self.io_err("upload to", &dest, e);
        if meta.is_dir() {
            let tmp = tempfile::Builder::new()
                .prefix(".deployer-tmp")
                .tempdir_in(&parent)
                .map_err(err)?;
            copy_dir(local, tmp.path()).await.map_err(err)?;
            let mode = options.mode.unwrap_or_else(|| mode_of(&meta));
            set_mode(tmp.path(), mode).await.map_err(err)?;
            replace_with(tmp.keep(), &dest).await.map_err(err)?;
        } else {
            let tmp = tempfile::Builder::new()
                .prefix(".deployer-tmp")
                .tempfile_in(&parent)
                .map_err(err)?;
            tokio::fs::copy(local, tmp.path())
                .await
                .map_err(|e| self.io_err("read", local, e))?;
            let mode = options.mode.unwrap_or_else(|| mode_of(&meta));
            set_mode(tmp.path(), mode).await.map_err(err)?;
            if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.is_dir()) {
                tokio::fs::remove_dir_all(&dest).await.map_err(err)?;
            }
            tmp.persist(&dest).map_err(|e| err(e.error))?;
        }
        Ok(())
    }

    async fn get(&self, remote: &str, local: &Path) -> Result<(), RemoteError> {
        let parent = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".deployer-tmp")
            .tempfile_in(&parent)
            .map_err(|e| self.io_err("download to", local, e))?;
        tokio::fs::copy(remote, tmp.path())
            .await
            .map_err(|e| self.io_err("download", Path::new(remote), e))?;
        tmp.persist(local)
            .map_err(|e| self.io_err("download to", local, e.error))?;
        Ok(())
    }

    async fn file_exists(&self, remote: &str) -> Result<bool, RemoteError> {
        match tokio::fs::symlink_metadata(remote).await {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.io_err("check", Path::new(remote), e)),
        }
    }
}

/// A command shortened for error messages (secrets are passed in env or stdin, not here).
pub(crate) fn short(command: &str) -> String {
    const MAX: usize = 80;
    if command.chars().count() <= MAX {
        command.to_string()
    } else {
        format!("{}…", command.chars().take(MAX).collect::<String>())
    }
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

async fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).await
}

/// Copies the directory tree `from` into the existing directory `to`, keeping file modes.
fn copy_dir<'a>(
    from: &'a Path,
    to: &'a Path,
) -> futures::future::BoxFuture<'a, std::io::Result<()>> {
    Box::pin(async move {
        let mut entries = tokio::fs::read_dir(from).await?;
        while let Some(entry) = entries.next_entry().await? {
            let kind = entry.file_type().await?;
            let target = to.join(entry.file_name());
            if kind.is_dir() {
                tokio::fs::create_dir(&target).await?;
                copy_dir(&entry.path(), &target).await?;
                let meta = entry.metadata().await?;
                set_mode(&target, mode_of(&meta)).await?;
            } else if kind.is_symlink() {
                let link = tokio::fs::read_link(entry.path()).await?;
                tokio::fs::symlink(link, &target).await?;
            } else {
                tokio::fs::copy(entry.path(), &target).await?;
            }
        }
        Ok(())
    })
}

/// Moves the directory `tmp` to `dest`, replacing what was there.
async fn replace_with(tmp: PathBuf, dest: &Path) -> std::io::Result<()> {
    let result = async {
        match tokio::fs::symlink_metadata(dest).await {
            Ok(meta) if meta.is_dir() => {
                let old = tempfile::Builder::new()
                    .prefix(".deployer-old")
                    .tempdir_in(tmp.parent().unwrap_or(Path::new(".")))?;
                let old_path = old.path().join("old");
                tokio::fs::rename(dest, &old_path).await?;
                tokio::fs::rename(&tmp, dest).await?;
                drop(old); // removes the previous tree
                Ok(())
            }
            Ok(_) => {
                tokio::fs::remove_file(dest).await?;
                tokio::fs::rename(&tmp, dest).await
            }
            Err(_) => tokio::fs::rename(&tmp, dest).await,
        }
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
    }
    result
}

/// Hands out [`LocalHost`] for [`HostSpec::local()`] (and for a host named `local`), and refuses
/// remote hosts. Use [`SshConnector`](crate::SshConnector) to reach remote hosts as well.
///
/// ```
/// use deployer_core::{Connector, HostSpec};
/// use deployer_remote::LocalConnector;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let connector = LocalConnector::new();
/// let host = connector.host(&HostSpec::local()).await.unwrap();
/// assert_eq!(host.name(), "local");
/// assert!(connector.host(&HostSpec::remote("fe001", None)).await.is_err());
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct LocalConnector {
    host: Arc<LocalHost>,
    rehearsal: bool,
}

impl Default for LocalConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalConnector {
    /// A connector serving one shared [`LocalHost`].
    pub fn new() -> Self {
        LocalConnector {
            host: Arc::new(LocalHost::new()),
            rehearsal: false,
        }
    }

    /// A connector for rehearsals: every host name (and login user) is served by this
    /// machine's [`LocalHost`], as the current user, so a fleet's plan runs end to end here
    /// before it meets real hosts. Events and records keep the plan's host names.
    ///
    /// ```
    /// use deployer_core::{Connector, HostSpec};
    /// use deployer_remote::LocalConnector;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let connector = LocalConnector::rehearsal();
    /// assert!(connector.check(&HostSpec::remote("fe001", Some("deploy".into()))).is_ok());
    /// let host = connector.host(&HostSpec::remote("fe001", None)).await.unwrap();
    /// assert_eq!(host.name(), "local");
    /// assert!(LocalConnector::new().check(&HostSpec::remote("fe001", None)).is_err());
    /// # });
    /// ```
    pub fn rehearsal() -> Self {
        LocalConnector {
            rehearsal: true,
            ..Self::new()
        }
    }

    /// The shared local host.
    pub fn local_host(&self) -> Arc<LocalHost> {
        self.host.clone()
    }
}

/// Whether `spec` names the controller itself.
pub(crate) fn is_local(spec: &HostSpec) -> bool {
    match spec.host.as_deref() {
        None => true,
        Some(h) => h == deployer_core::LOCAL_HOST && spec.user.is_none(),
    }
}

#[async_trait]
impl Connector for LocalConnector {
    async fn host(&self, spec: &HostSpec) -> Result<Arc<dyn RemoteHost>, RemoteError> {
        self.check(spec)?;
        Ok(self.host.clone())
    }

    fn check(&self, spec: &HostSpec) -> Result<(), RemoteError> {
        if self.rehearsal || is_local(spec) {
            Ok(())
        } else {
            Err(RemoteError::Other {
                host: spec.to_string(),
                message: "this connector only runs commands on this machine (use an SSH \
                          connector for remote hosts, or LocalConnector::rehearsal to play \
                          every host here)"
                    .to_string(),
            })
        }
    }
}
