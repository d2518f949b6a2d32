//! A command on a session of its own: `exec` of `sh -c <line>` behind a line that reports the
//! shell's pid on stderr, the command's stdin streamed from bytes, a file or a tar of a
//! directory. Used for commands with stdin data, uploads, long command lines, and every
//! command when shells are not reused. Beside each command a watcher ([`WATCHER`]) kills it
//! once its session's sshd is gone (sshd sends a command without a pty no signal when the
//! client's connection ends).

use std::io::Write as _;
use std::path::Path;

use deployer_core::{RemoteError, quote};
use russh::ChannelWriteHalf;
use russh::client;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::channel::{self, Framing, Input, Io, Output, RawOutput, Seen, kill_group};
use super::connection::{Conn, Slot};
use crate::common::LineCollector;

const PID_MARKER: &[u8] = b"\x1edeployer-pid ";

/// The name (`$0`) the orphan watcher runs under: it shows in the host's process list.
const WATCHER_NAME: &str = "deployer-orphan-watch";

/// The orphan watcher, `sh -c WATCHER deployer-orphan-watch PID PPID`: started beside every
/// command on a session of its own (detached from it, its stdio on `/dev/null`, so it neither
/// holds the channel open nor is a child the command could reap), it kills the command's
/// process group when the command's session ends while it still runs.
///
/// sshd sends a command without a pty no signal when its client's connection ends: the
/// session's sshd process exits and the command runs on, reparented, until it next writes
/// output or reads its stdin to the end. So every second the watcher reads
/// `/proc/PID/stat`: once the command is gone (no such file, a zombie, or another process
/// with its pid: the start time differs) it exits; while the command's parent is still the
/// session's sshd (`PPID`, `$PPID` of the login shell) it sleeps on; when the parent has
/// changed, sshd is gone and it kills the group (`$$` of the login shell, kept by `exec`,
/// leads it: sshd makes the session's child a session leader), else the process alone —
/// with `kill -s KILL --`, which dash's `kill` reads right (not `kill -KILL --`). With
/// sudo commands it kills through `sudo -n` first, as `kill_group` does. It is in the
/// command's group itself, so that killing the group (a cancel, or its own kill) ends it too.
/// It arms only when the first read shows the parent it was given (no `/proc`, or a login
/// shell that does not `exec` from sshd: nothing is done, as before).
const WATCHER: &str = r#"p=$1 q=$2 t=
while { read -r s </proc/"$p"/stat; } 2>/dev/null; do
set -- ${s##*) }
if [ -z "$t" ]; then [ "$2" = "$q" ] || exit 0; t=${20}; fi
[ "$1" != Z ] && [ "${20}" = "$t" ] || exit 0
if [ "$2" != "$q" ]; then
SUDOkill -s KILL -- -"$p" 2>/dev/null || kill -s KILL "$p" 2>/dev/null
exit 0
fi
sleep 1
done"#;

/// The orphan watcher's kill with sudo: the command may run as root.
const SUDO_KILL: &str = r#"sudo -n kill -s KILL -- -"$p" 2>/dev/null || sudo -n kill -s KILL "$p" 2>/dev/null
"#;

/// The last entry of an uploaded directory's tar: its presence says the tar arrived whole.
pub(super) const TAR_MARKER: &str = ".deployer-upload-complete";

/// One command on one channel, run as a task so that a dropped caller still gets its command
/// killed.
pub(super) struct Job {
    host: String,
    full: String,
    io: Io,
    sudo_kill: bool,
    /// The connector's upload memory a file's chunks are counted in.
    uploads: super::handshake::UploadBuffers,
}

/// Separates the pid marker line from the start of stderr.
struct PidFilter {
    pid: Option<u32>,
    pending: Vec<u8>,
}

impl PidFilter {
    fn push(&mut self, chunk: &[u8], out: &mut LineCollector) {
        if self.pid.is_some() {
            out.push(chunk);
            return;
        }
        self.pending.extend_from_slice(chunk);
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            if let Some(rest) = line.strip_prefix(PID_MARKER) {
                let text = String::from_utf8_lossy(rest);
                self.pid = text.trim().parse().ok();
                let remaining = std::mem::take(&mut self.pending);
                out.push(&remaining);
                return;
            }
            out.push(&line);
        }
        if self.pending.len() > 64 * 1024 {
            out.push(&std::mem::take(&mut self.pending));
        }
    }

    fn finish(&mut self, out: &mut LineCollector) {
        out.push(&std::mem::take(&mut self.pending));
    }
}

/// A session of its own: the channel's streams are the command's, but for the pid line at
/// the start of stderr. The command ends when the channel closes; once it has exited it is
/// not killed.
struct Exec {
    filter: PidFilter,
    sudo_kill: bool,
}

impl Framing for Exec {
    const CLOSE_WAIT_AFTER_END: bool = false;

    fn stdout<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8] {
        data
    }

    fn stderr(&mut self, data: &[u8], err: &mut LineCollector) {
        self.filter.push(data, err);
    }

    fn finished(&self) -> bool {
        false
    }

    async fn kill(
        &mut self,
        seen: &Seen,
        _wr: &ChannelWriteHalf<client::Msg>,
        conn: &Conn,
    ) -> bool {
        if seen.exited {
            return false;
        }
        let Some(pid) = self.filter.pid else {
            return false;
        };
        kill_group(conn, pid, self.sudo_kill).await;
        true
    }
}

impl Job {
    /// `line` run as `sh -c` (its pid reported first), with `io`; `sudo_kill` when the
    /// command runs under sudo, so that killing it needs sudo too.
    pub(super) fn new(
        host: String,
        line: &str,
        io: Io,
        sudo_kill: bool,
        uploads: super::handshake::UploadBuffers,
    ) -> Result<Job, RemoteError> {
        let quoted = quote(line).map_err(|e| RemoteError::Other {
            host: host.clone(),
            message: e.to_string(),
        })?;
        let watcher = WATCHER.replace("SUDO", if sudo_kill { SUDO_KILL } else { "" });
        let watcher = quote(&watcher).map_err(|e| RemoteError::Other {
            host: host.clone(),
            message: e.to_string(),
        })?;
        // The subshell forks the watcher and exits at once: the watcher is no child of the
        // command (which could reap it, or wait for it).
        let full = format!(
            "printf '\\036deployer-pid %s\\n' \"$$\" >&2; \
             (sh -c {watcher} {WATCHER_NAME} \"$$\" \"$PPID\" </dev/null >/dev/null 2>&1 &); \
             exec sh -c -- {quoted}"
        );
        Ok(Job {
            host,
            full,
            io,
            sudo_kill,
            uploads,
        })
    }

    pub(super) async fn run(
        self,
        slot: Slot,
        channel: russh::Channel<client::Msg>,
        mut cancel: oneshot::Receiver<()>,
    ) -> Result<RawOutput, RemoteError> {
        let Job {
            host,
            full,
            io,
            sudo_kill,
            uploads,
        } = self;
        let conn = slot.conn.clone();
        let lost = |e: Option<russh::Error>| RemoteError::Disconnected {
            host: host.clone(),
            source: e.map(|e| Box::new(e) as _),
        };
        channel
            .exec(true, full.as_bytes())
            .await
            .map_err(|e| lost(Some(e)))?;
        let (mut rd, wr) = channel.split();
        let mut output = Output::new(io.stdout_to, io.sink);
        let mut framing = Exec {
            filter: PidFilter {
                pid: None,
                pending: Vec::new(),
            },
            sudo_kill,
        };
        let writer = write_input(&wr, io.input, &uploads);
        let seen = channel::drive(
            &mut framing,
            &mut rd,
            &wr,
            Some(writer),
            &mut cancel,
            &mut output,
            &conn,
        )
        .await;
        if seen.refused {
            return Err(RemoteError::Other {
                host: host.clone(),
                message: "the server refused to run the command".to_string(),
            });
        }
        let _ = wr.close().await;
        let Output {
            out,
            mut err,
            mut file,
        } = output;
        if let Some(f) = file.as_mut() {
            f.flush().await.map_err(|e| RemoteError::Io {
                host: host.clone(),
                op: "write local file for".to_string(),
                path: "download".to_string(),
                source: e,
            })?;
        }
        framing.filter.finish(&mut err);
        if let Some(e) = seen.local_error {
            return Err(RemoteError::Io {
                host: host.clone(),
                op: "stream local data for".to_string(),
                path: "transfer".to_string(),
                source: e,
            });
        }
        if seen.cancelled {
            return Err(RemoteError::Other {
                host: host.clone(),
                message: "command cancelled".to_string(),
            });
        }
        if !seen.exited {
            return Err(lost(None));
        }
        Ok(RawOutput {
            status: seen.status.map(|s| s as i32),
            stdout: out.finish(),
            stderr: err.finish(),
        })
    }
}

/// Writes `input` to the command's stdin, then its end.
async fn write_input(
    wr: &ChannelWriteHalf<client::Msg>,
    input: Input,
    uploads: &super::handshake::UploadBuffers,
) -> std::io::Result<()> {
    match input {
        Input::None => {}
        Input::Bytes(b) => {
            // The command may exit without reading: not an error.
            let _ = wr.data_bytes(b).await;
        }
        Input::File(path) => {
            // Large reads handed over as owned buffers: russh splits them into
            // full-size packets (`data(reader)` would copy through 8 KiB writes); each
            // holds its room in the connector's upload memory until russh is done with it.
            let mut pace = uploads.pace(&path).await?;
            loop {
                let buf = pace.read_chunk(usize::MAX).await?;
                if buf.is_empty() || wr.data_bytes(buf).await.is_err() {
                    break;
                }
            }
        }
        Input::Tar(path) => {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
            let builder = tokio::task::spawn_blocking(move || write_tar(&path, tx));
            // Paced like a file: russh gets 16 KiB at a time.
            let mut pace = uploads.pace_pushed();
            'pieces: while let Some(piece) = rx.recv().await {
                pace.push(piece);
                while let Some(chunk) = pace.next_pushed().await {
                    if wr.data_bytes(chunk).await.is_err() {
                        break 'pieces;
                    }
                }
            }
            drop(rx);
            builder.await.map_err(std::io::Error::other)??;
        }
    }
    let _ = wr.eof().await;
    Ok(())
}

/// Writes a tar of the directory `dir` (plus a final marker entry) into `tx`.
fn write_tar(dir: &Path, tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> std::io::Result<()> {
    struct ChanWriter(tokio::sync::mpsc::Sender<Vec<u8>>);
    impl std::io::Write for ChanWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .blocking_send(buf.to_vec())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let writer = std::io::BufWriter::with_capacity(256 * 1024, ChanWriter(tx));
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append_data(&mut header, TAR_MARKER, std::io::empty())?;
    let mut writer = builder.into_inner()?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use crate::ssh::test_procs::{running, spawn_reporting_pids};

    fn watcher(pid: u32, parent: u32) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(WATCHER.replace("SUDO", ""))
            .arg(WATCHER_NAME)
            .arg(pid.to_string())
            .arg(parent.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Waits up to `limit` for `child` to exit.
    fn exits_within(child: &mut Child, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn the_watcher_kills_the_group_once_the_parent_is_gone_and_only_then() {
        // A "session" process P whose child C leads a group of its own with a child of its
        // own, as sshd's session child does.
        let (mut p, pids) = spawn_reporting_pids(
            Command::new("sh")
                .arg("-c")
                .arg("setsid sh -c 'sleep 30 & echo $$ $!; exec sleep 30' & exec sleep 30"),
        );
        let (c, grandchild) = (pids[0], pids[1]);

        // Given a parent that is not C's: it does nothing and exits at once.
        let mut wrong = watcher(c, std::process::id());
        assert!(exits_within(&mut wrong, Duration::from_secs(2)));
        assert!(running(c) && running(grandchild));

        // Given C's parent: it stays while P lives, kills C's group once P is gone, and exits.
        let mut w = watcher(c, p.id());
        assert!(!exits_within(&mut w, Duration::from_millis(1500)));
        assert!(running(c) && running(grandchild));
        p.kill().unwrap();
        p.wait().unwrap();
        assert!(exits_within(&mut w, Duration::from_secs(3)));
        let deadline = Instant::now() + Duration::from_secs(1);
        while running(c) || running(grandchild) {
            assert!(Instant::now() < deadline, "C's group still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_watcher_exits_when_the_command_ends() {
        let mut c = Command::new("sleep").arg("1").spawn().unwrap();
        let mut w = watcher(c.id(), std::process::id());
        assert!(!exits_within(&mut w, Duration::from_millis(500)));
        c.wait().unwrap();
        assert!(exits_within(&mut w, Duration::from_secs(2)));
    }
}
