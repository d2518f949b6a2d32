//! Commands run on a long-lived remote shell instead of a new SSH session each.
//!
//! Every SSH session costs the server a fork of `sshd`, the user's login shell and a `sh`
//! before the command itself starts; on a busy host that process creation is most of what a
//! short deploy step costs. So an [`SshHost`](super::SshHost) keeps, per connection, idle
//! *shells*: one session running a small POSIX `sh` loop (the [`AGENT`]) that reads a command
//! line from its stdin, runs it as `setsid sh -c <line>` (its own process group, stdin from
//! `/dev/null`, stdout and stderr straight to the channel), reports the pid, waits, and reports
//! the exit status on both streams. A command then costs the server one `sh` (plus `setsid`)
//! instead of a session.
//!
//! The protocol, all of it tagged with a marker that is random per shell (sent on the shell's
//! stdin, never in its argv):
//! - client → shell: the command line, a newline, the marker, a newline;
//! - shell → client, stderr: `\x1e<marker>P<pid>\n` once the command started;
//! - shell → client, stdout and stderr: `\x1e<marker>E<status>\n` once it ended.
//!
//! The command's own output passes through untouched, the markers cut out wherever they fall
//! (a command's last line need not end in a newline). A command that is cancelled or times out
//! is killed by process group through another channel, as on a plain session, and its shell
//! is closed rather than reused; a shell whose channel ended while idle is dropped when next
//! taken. Commands with stdin data (uploads, [`ExecOptions::stdin`](deployer_core::ExecOptions))
//! and very long command lines still get a session of their own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use deployer_core::{OutputSink, RemoteError};
use futures::FutureExt;
use russh::client;
use russh::{ChannelMsg, ChannelWriteHalf};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::channel::{self, Framing, Output, RawOutput, Seen, StdoutTo, kill_group};
use super::connection::{Conn, Slot};
use crate::common::LineCollector;

/// Command lines longer than this get a session of their own: the shell reads its input a
/// byte at a time (so that it never reads past the marker), which is slow for megabytes.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// The shell loop, run as `exec sh -c '<AGENT>'` under the login shell.
///
/// `read -r` with an empty `IFS` keeps each line verbatim (and reads a byte at a time, so never
/// past the line); lines are gathered until the marker line. A marker line ending in `I` marks
/// an upload: the command gets the shell's own stdin (kept as fd 3) and reads exactly its
/// bytes with `head -c` (the client sends nothing after them until the command has ended, so
/// no `head`, buffered or not, can read past them); if such a command fails, the shell cannot
/// know how much it read and exits.
///
/// Beside every other command runs a *watcher*: a subshell reading the shell's stdin, where
/// nothing else is sent while the command runs. A line `K` (kill) or `S` (kill with `sudo -n`,
/// for a command run under sudo) from the client — or the end of stdin, when the connection
/// or the controller died — makes it kill the command's process tree (each process stopped,
/// its children from `/proc/PID/task/*/children` killed, then itself), so a cancelled or
/// timed-out command is stopped over its own channel (a server at its `MaxSessions` would
/// refuse another) and no command outlives its controller. The shell kills the watcher once
/// the command has ended, before it reports the status; a shell sent `K`/`S` is not reused.
pub(super) const AGENT: &str = r#"IFS= read -r m || exit 0
exec 3<&0
t='t() { kill -STOP "$1"; for k in $(cat /proc/"$1"/task/*/children); do t "$k"; done; kill -KILL "$1"; }'
while :; do
  c= e=1
  while IFS= read -r l; do
    if [ "$l" = "$m" ]; then e=0; break; fi
    if [ "$l" = "${m}I" ]; then e=2; break; fi
    c="$c$l
"
  done
  w=
  case $e in
  0)
    sh -c -- "$c" </dev/null 3<&- &
    p=$!
    (
      IFS= read -r k
      if [ "$k" != K ]; then sudo -n sh -c "$t"'; t "$1"' t "$p"; fi
      eval "$t"
      t "$p"
    ) <&3 3<&- >/dev/null 2>&1 &
    w=$!
    ;;
  2)
    sh -c -- "$c" <&3 3<&- &
    p=$!
    ;;
  *) exit 0 ;;
  esac
  printf '\036%sP%s\n' "$m" "$p" >&2
  wait "$p" 2>/dev/null
  r=$?
  if [ -n "$w" ]; then kill "$w" 2>/dev/null; wait "$w" 2>/dev/null; fi
  printf '\036%sE%s\n' "$m" "$r"
  printf '\036%sE%s\n' "$m" "$r" >&2
  [ "$e" = 0 ] || [ "$r" = 0 ] || exit 0
done
"#;

/// A running shell: its channel (split, so that an upload can write while output is read)
/// and its marker. Idle ones are kept by their connection with the channel slot they hold.
pub(super) struct Shell {
    rd: russh::ChannelReadHalf,
    wr: russh::ChannelWriteHalf<client::Msg>,
    marker: String,
}

impl Shell {
    /// Starts the agent on a freshly opened session channel.
    pub(super) async fn start(channel: russh::Channel<client::Msg>) -> Result<Shell, russh::Error> {
        let quoted = deployer_core::quote(AGENT).expect("the agent script has no NUL byte");
        channel
            .exec(false, format!("exec sh -c {quoted}").into_bytes())
            .await?;
        let marker = new_marker();
        channel
            .data_bytes(format!("{marker}\n").into_bytes())
            .await?;
        let (rd, wr) = channel.split();
        Ok(Shell { rd, wr, marker })
    }

    /// Whether the shell can take a command: nothing says its channel ended while it was idle.
    /// Anything else that arrived meanwhile (output of a process a finished command left
    /// behind, window adjustments) is dropped.
    pub(super) fn usable(&mut self) -> bool {
        loop {
            match self.rd.wait().now_or_never() {
                None => return true,
                Some(None) => return false,
                Some(Some(msg)) => match msg {
                    ChannelMsg::Eof
                    | ChannelMsg::Close
                    | ChannelMsg::ExitStatus { .. }
                    | ChannelMsg::ExitSignal { .. }
                    | ChannelMsg::Failure => return false,
                    _ => {}
                },
            }
        }
    }

    /// Closes the channel (the shell exits when its stdin ends).
    pub(super) fn close(self) {
        tokio::spawn(async move {
            let _ = self.wr.close().await;
        });
    }
}

/// A marker no command output contains by accident: 128 bits from the process's random hash
/// keys, the time and a counter.
fn new_marker() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut out = String::with_capacity(32);
    for salt in [0x5eed_u64, 0xdead_beef] {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(nanos);
        h.write_u64(salt);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Cuts `\x1e<marker><kind><number>\n` records out of a stream, passing everything else on.
pub(super) struct Scanner {
    /// `\x1e` + marker.
    tag: Vec<u8>,
    /// Bytes held back: a possible start of a record.
    held: Vec<u8>,
}

/// A record found by [`Scanner`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) kind: u8,
    pub(super) value: i64,
}

impl Scanner {
    pub(super) fn new(marker: &str) -> Self {
        let mut tag = vec![0x1e];
        tag.extend_from_slice(marker.as_bytes());
        Scanner {
            tag,
            held: Vec::new(),
        }
    }

    /// Feeds a chunk: output bytes go to `out`, records are returned.
    pub(super) fn push(&mut self, chunk: &[u8], out: &mut impl FnMut(&[u8])) -> Vec<Record> {
        let mut records = Vec::new();
        self.held.extend_from_slice(chunk);
        let mut start = 0;
        loop {
            let rest = &self.held[start..];
            match find(rest, &self.tag) {
                Some(pos) => {
                    let after = &rest[pos + self.tag.len()..];
                    let Some(nl) = after.iter().position(|&b| b == b'\n') else {
                        // A record not complete yet: pass what is before it, keep the rest.
                        if after.len() > 32 {
                            // Too long for a record: the tag is output after all.
                            out(&rest[..pos + 1]);
                            start += pos + 1;
                            continue;
                        }
                        out(&rest[..pos]);
                        start += pos;
                        break;
                    };
                    let body = &after[..nl];
                    let parsed = body.split_first().and_then(|(&kind, digits)| {
                        let value = std::str::from_utf8(digits).ok()?.parse().ok()?;
                        Some(Record { kind, value })
                    });
                    match parsed {
                        Some(record) => {
                            out(&rest[..pos]);
                            records.push(record);
                            start += pos + self.tag.len() + nl + 1;
                        }
                        None => {
                            out(&rest[..pos + 1]);
                            start += pos + 1;
                        }
                    }
                }
                None => {
                    // Hold back a tail that could be the start of the tag.
                    let keep = partial_suffix(rest, &self.tag);
                    out(&rest[..rest.len() - keep]);
                    start = self.held.len() - keep;
                    break;
                }
            }
        }
        self.held.drain(..start);
        records
    }

    /// Whatever is held back at the end of the stream is output.
    pub(super) fn finish(&mut self, out: &mut impl FnMut(&[u8])) {
        if !self.held.is_empty() {
            out(&std::mem::take(&mut self.held));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while let Some(p) = haystack[i..].iter().position(|&b| b == first) {
        let at = i + p;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        if haystack.len() - at < needle.len() {
            return None;
        }
        i = at + 1;
    }
    None
}

/// The length of the longest suffix of `data` that is a proper prefix of `tag`.
fn partial_suffix(data: &[u8], tag: &[u8]) -> usize {
    let max = data.len().min(tag.len() - 1);
    (1..=max)
        .rev()
        .find(|&k| data[data.len() - k..] == tag[..k])
        .unwrap_or(0)
}

/// One command on a shell, run as a task so that a dropped caller still gets it killed.
pub(super) struct ShellJob {
    pub(super) host: String,
    pub(super) line: String,
    /// A file streamed to the command's stdin, and exactly how many of its bytes (the command
    /// must read exactly that many: `head -c`).
    pub(super) input: Option<(PathBuf, u64)>,
    /// The connector's upload memory the input's chunks are counted in.
    pub(super) uploads: super::handshake::UploadBuffers,
    pub(super) stdout_to: StdoutTo,
    pub(super) sink: Option<OutputSink>,
    pub(super) sudo_kill: bool,
}

/// Streams exactly `len` bytes of `path` into the channel.
async fn send_file(
    wr: &russh::ChannelWriteHalf<client::Msg>,
    path: &Path,
    len: u64,
    uploads: &super::handshake::UploadBuffers,
) -> std::io::Result<()> {
    let mut pace = uploads.pace(path).await?;
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX);
        let buf = pace.read_chunk(want).await?;
        let n = buf.len();
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "{} shrank while it was uploaded ({} of {len} bytes sent)",
                path.display(),
                len - left
            )));
        }
        left -= n as u64;
        if wr.data_bytes(buf).await.is_err() {
            // The channel is gone: the loop reading it says why.
            std::future::pending::<()>().await;
        }
    }
    Ok(())
}

/// A shell's channel: the command's output with the shell's records cut out of both streams
/// (its pid on stderr, its exit status on both); the command has ended when both streams
/// reported it.
///
/// When the shell itself exits (after a failed upload it does, on purpose), sshd may report
/// that before the last of its output, so the records are awaited until the channel closes;
/// but a process the command left behind may hold the channel open, so the records get
/// [`CLOSE_WAIT`](channel::CLOSE_WAIT) after the end of the remote side.
struct ShellFraming {
    out_scan: Scanner,
    err_scan: Scanner,
    /// The command's part of the last stdout chunk.
    out_buf: Vec<u8>,
    pid: Option<u32>,
    out_status: Option<i64>,
    err_status: Option<i64>,
    /// The command reads an upload on its stdin (so cannot be told to stop there).
    upload: bool,
    sudo_kill: bool,
}

impl Framing for ShellFraming {
    const CLOSE_WAIT_AFTER_END: bool = true;

    fn stdout<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8] {
        self.out_buf.clear();
        let buf = &mut self.out_buf;
        for r in self
            .out_scan
            .push(data, &mut |b: &[u8]| buf.extend_from_slice(b))
        {
            if r.kind == b'E' {
                self.out_status = Some(r.value);
            }
        }
        &self.out_buf
    }

    fn stderr(&mut self, data: &[u8], err: &mut LineCollector) {
        for r in self.err_scan.push(data, &mut |b: &[u8]| err.push(b)) {
            match r.kind {
                b'P' => self.pid = u32::try_from(r.value).ok(),
                b'E' => self.err_status = Some(r.value),
                _ => {}
            }
        }
    }

    fn finished(&self) -> bool {
        self.out_status.is_some() && self.err_status.is_some()
    }

    async fn kill(
        &mut self,
        _seen: &Seen,
        wr: &ChannelWriteHalf<client::Msg>,
        conn: &Conn,
    ) -> bool {
        if !self.upload {
            // The watcher beside the command kills it (see AGENT).
            let order: &[u8] = if self.sudo_kill { b"S\n" } else { b"K\n" };
            let _ = wr.data_bytes(order.to_vec()).await;
            true
        } else if let Some(pid) = self.pid {
            // An upload's stdin is its data: kill through another channel.
            kill_group(conn, pid, self.sudo_kill).await;
            true
        } else {
            false
        }
    }
}

impl ShellJob {
    pub(super) async fn run(
        self,
        slot: Slot,
        mut shell: Shell,
        mut cancel: oneshot::Receiver<()>,
    ) -> Result<RawOutput, RemoteError> {
        let host = self.host.clone();
        let conn = slot.conn.clone();
        let lost = |e: Option<russh::Error>| RemoteError::Disconnected {
            host: host.clone(),
            source: e.map(|e| Box::new(e) as _),
        };
        let mut payload = self.line.into_bytes();
        payload.push(b'\n');
        payload.extend_from_slice(shell.marker.as_bytes());
        if self.input.is_some() {
            payload.push(b'I');
        }
        payload.push(b'\n');
        if let Err(e) = shell.wr.data_bytes(payload).await {
            shell.close();
            return Err(lost(Some(e)));
        }
        let mut output = Output::new(self.stdout_to, self.sink);
        let mut framing = ShellFraming {
            out_scan: Scanner::new(&shell.marker),
            err_scan: Scanner::new(&shell.marker),
            out_buf: Vec::new(),
            pid: None,
            out_status: None,
            err_status: None,
            upload: self.input.is_some(),
            sudo_kill: self.sudo_kill,
        };
        // The writer borrows the shell until the loop ends.
        let seen = {
            let Shell { rd, wr, .. } = &mut shell;
            let wr: &ChannelWriteHalf<client::Msg> = wr;
            let writer = self.input.clone().map(|(path, len)| {
                let uploads = self.uploads.clone();
                async move { send_file(wr, &path, len, &uploads).await }
            });
            channel::drive(
                &mut framing,
                rd,
                wr,
                writer,
                &mut cancel,
                &mut output,
                &conn,
            )
            .await
        };
        let Output {
            mut out,
            mut err,
            mut file,
        } = output;
        framing.out_scan.finish(&mut |b: &[u8]| out.push(b));
        framing.err_scan.finish(&mut |b: &[u8]| err.push(b));
        let mut local_error = seen.local_error;
        if let Some(f) = file.as_mut()
            && let Err(e) = f.flush().await
        {
            local_error.get_or_insert(e);
        }
        let (out_status, err_status) = (framing.out_status, framing.err_status);
        let done = out_status.is_some() && err_status.is_some();
        // An upload that failed leaves an unknown part of its bytes unread: the shell has
        // exited (see AGENT), and is not reused either way.
        let reusable = done
            && !seen.cancelled
            && !seen.ended
            && local_error.is_none()
            && (self.input.is_none() || out_status == Some(0));
        let Slot { conn, permit, .. } = slot;
        if reusable {
            conn.put_idle(shell, permit);
        } else {
            shell.close();
        }
        if let Some(e) = local_error {
            let (op, path) = match &self.input {
                Some((path, _)) => ("upload", path.display().to_string()),
                None => ("write local file for", "download".to_string()),
            };
            return Err(RemoteError::Io {
                host: host.clone(),
                op: op.to_string(),
                path,
                source: e,
            });
        }
        if seen.cancelled {
            return Err(RemoteError::Other {
                host: host.clone(),
                message: "command cancelled".to_string(),
            });
        }
        if !done {
            if conn.handle.is_closed() {
                return Err(lost(None));
            }
            return Err(RemoteError::Other {
                host: host.clone(),
                message: "the remote shell running the command ended before it did (killed?)"
                    .to_string(),
            });
        }
        let status = out_status.and_then(|s| i32::try_from(s).ok());
        Ok(RawOutput {
            status,
            stdout: out.finish(),
            stderr: err.finish(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Record>) {
        let mut s = Scanner::new("abc");
        let mut out = Vec::new();
        let mut recs = Vec::new();
        for c in chunks {
            recs.extend(s.push(c, &mut |b: &[u8]| out.extend_from_slice(b)));
        }
        s.finish(&mut |b: &[u8]| out.extend_from_slice(b));
        (out, recs)
    }

    #[test]
    fn records_are_cut_out_wherever_they_fall() {
        let (out, recs) = scan(&[b"hello\x1eabcP12\nworld", b" no newline\x1eabcE0\n"]);
        assert_eq!(out, b"helloworld no newline");
        assert_eq!(
            recs,
            [
                Record {
                    kind: b'P',
                    value: 12
                },
                Record {
                    kind: b'E',
                    value: 0
                }
            ]
        );
    }

    #[test]
    fn a_record_split_across_chunks_is_found() {
        let whole: &[u8] = b"x\x1eabcE127\ny";
        for cut in 0..whole.len() {
            let (out, recs) = scan(&[&whole[..cut], &whole[cut..]]);
            assert_eq!(out, b"xy", "cut at {cut}");
            assert_eq!(
                recs,
                [Record {
                    kind: b'E',
                    value: 127
                }]
            );
        }
        // One byte at a time.
        let chunks: Vec<&[u8]> = whole.chunks(1).collect();
        let (out, recs) = scan(&chunks);
        assert_eq!(out, b"xy");
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn look_alikes_pass_through() {
        let (out, recs) = scan(&[b"\x1eab\x1eabd\x1eabcZ\n\x1eabcEx\n\x1e"]);
        assert_eq!(out, b"\x1eab\x1eabd\x1eabcZ\n\x1eabcEx\n\x1e");
        assert!(recs.is_empty());
        // A tag followed by a long line is output, not held for ever.
        let long = [b"\x1eabcE".as_slice(), &[b'1'; 100]].concat();
        let (out, recs) = scan(&[&long]);
        assert_eq!(out, long);
        assert!(recs.is_empty());
    }

    #[test]
    fn markers_differ() {
        let a = new_marker();
        let b = new_marker();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    /// Starts the agent under the local `sh` with marker `M`, sends `line`, and waits for the
    /// command's pid. The caller waits for the child.
    #[allow(clippy::zombie_processes)]
    fn agent_running(
        line: &str,
    ) -> (
        std::process::Child,
        u32,
        std::io::BufReader<std::process::ChildStderr>,
    ) {
        use std::io::{BufRead, Write};
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(AGENT)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        write!(child.stdin.as_mut().unwrap(), "M\n{line}\nM\n").unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut record = Vec::new();
        loop {
            record.clear();
            err.read_until(b'\n', &mut record).unwrap();
            if let Some(pid) = record.strip_prefix(b"\x1eMP") {
                let pid = std::str::from_utf8(pid).unwrap().trim().parse().unwrap();
                return (child, pid, err);
            }
            assert!(
                !record.is_empty(),
                "the agent ended before starting the command"
            );
        }
    }

    fn wait_gone(pid: u32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // A zombie is gone too: its parent has not collected it yet.
        while crate::ssh::test_procs::running(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} still runs");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn the_watcher_kills_the_command_on_k_and_when_stdin_ends() {
        use std::io::{Read, Write};
        // `K`: the command's whole group is killed, the shell reports 137 and goes on.
        let (mut child, pid, _err) = agent_running("sleep 30 & sleep 30; echo never");
        child.stdin.as_mut().unwrap().write_all(b"K\n").unwrap();
        wait_gone(pid);
        drop(child.stdin.take());
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"\x1eME137\n");
        child.wait().unwrap();
        // End of stdin (the connection or the controller died): killed as well.
        let (mut child, pid, _err) = agent_running("sleep 30");
        drop(child.stdin.take());
        wait_gone(pid);
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn the_agent_runs_commands_under_a_local_sh() {
        // The agent's protocol against the machine's own /bin/sh: two commands, output with
        // and without a final newline, stderr, exit statuses, and a line that looks like the
        // marker but is not.
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(AGENT)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The client sends a command only once the previous one reported its end (the
        // watcher beside a command reads stdin until then).
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        write!(stdin, "M\nprintf 'a\\nb'; echo err >&2; exit 3\nM\n").unwrap();
        let mut first = Vec::new();
        while !first.ends_with(b"\x1eME3\n") {
            let mut byte = [0u8; 1];
            assert_eq!(std::io::Read::read(&mut stdout, &mut byte).unwrap(), 1);
            first.push(byte[0]);
        }
        write!(stdin, "printf '%s\\n' ' M ' 'x\\y'\nM\n").unwrap();
        drop(stdin);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
        first.extend_from_slice(&rest);
        let output = child.wait_with_output().unwrap();
        let mut s = Scanner::new("M");
        let mut out = Vec::new();
        let recs = s.push(&first, &mut |b: &[u8]| out.extend_from_slice(b));
        assert_eq!(out, b"a\nb M \nx\\y\n");
        assert_eq!(
            recs,
            [
                Record {
                    kind: b'E',
                    value: 3
                },
                Record {
                    kind: b'E',
                    value: 0
                }
            ]
        );
        let mut s = Scanner::new("M");
        let mut err = Vec::new();
        let recs = s.push(&output.stderr, &mut |b: &[u8]| err.extend_from_slice(b));
        assert_eq!(err, b"err\n");
        let kinds: Vec<u8> = recs.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, b"PEPE");
    }
}
