//! Running one command on one channel: the loop both kinds of command channel share — a
//! session of its own ([`exec`](super::exec)) and a reused shell ([`shell`](super::shell)) —
//! and what it works with: the command's input and output, and killing it when cancelled.
//!
//! [`drive`] streams the command's input into the channel, reads the channel's messages into
//! the command's stdout (collected, or written to a local file) and stderr, notes the exit
//! status and the end of the channel, and handles cancellation (a timeout, a dropped caller, a
//! local error): the command is killed as soon as the channel kind can, and the channel gets
//! [`CLOSE_WAIT`] to close after that. What else the channel's streams carry (a pid line, the
//! shell's records) and how a command is killed is the channel kind's [`Framing`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use deployer_core::{OutputSink, Stream};
use futures::future::OptionFuture;
use russh::client;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::connection::{Conn, open_channel};
use crate::common::LineCollector;

/// How long a cancelled command's channel may take to close after the kill.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A command's input and output.
pub(super) struct Io {
    pub(super) input: Input,
    pub(super) stdout_to: StdoutTo,
    pub(super) sink: Option<OutputSink>,
}

/// What is written to the command's stdin.
pub(super) enum Input {
    None,
    Bytes(Vec<u8>),
    File(PathBuf),
    Tar(PathBuf),
}

/// Where the command's stdout goes.
pub(super) enum StdoutTo {
    Collect,
    File(tokio::fs::File),
}

/// What a command left: its exit status and its output.
pub(super) struct RawOutput {
    pub(super) status: Option<i32>,
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: Vec<u8>,
}

/// Where a command's output goes while its channel is read.
pub(super) struct Output {
    /// Stdout, unless it goes to `file`.
    pub(super) out: LineCollector,
    pub(super) err: LineCollector,
    /// The local file stdout is written to instead of `out`.
    pub(super) file: Option<tokio::fs::File>,
}

impl Output {
    pub(super) fn new(stdout_to: StdoutTo, sink: Option<OutputSink>) -> Self {
        Output {
            out: LineCollector::new(Stream::Stdout, sink.clone()),
            err: LineCollector::new(Stream::Stderr, sink),
            file: match stdout_to {
                StdoutTo::File(f) => Some(f),
                StdoutTo::Collect => None,
            },
        }
    }
}

/// What one kind of channel carries besides the command's output, and how its command is
/// killed.
pub(super) trait Framing {
    /// Whether the end of the remote side (EOF, an exit status or signal) leaves the channel
    /// only [`CLOSE_WAIT`] more to close; else the loop waits for the close.
    const CLOSE_WAIT_AFTER_END: bool;

    /// The command's part of a chunk of the channel's stdout.
    fn stdout<'a>(&'a mut self, data: &'a [u8]) -> &'a [u8];

    /// Passes the command's part of a chunk of the channel's stderr to `err`.
    fn stderr(&mut self, data: &[u8], err: &mut LineCollector);

    /// Whether the streams have told all there is to know of the command (the loop then ends
    /// without waiting for the channel to close).
    fn finished(&self) -> bool;

    /// Kills the cancelled command; `false` when that cannot be done yet (it is asked again
    /// after the next message).
    async fn kill(&mut self, seen: &Seen, wr: &ChannelWriteHalf<client::Msg>, conn: &Conn) -> bool;
}

/// What [`drive`] saw of a channel, for the channel kind to make its result of.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// The command was cancelled (a timeout, a dropped caller) or stopped after a local error.
    pub(super) cancelled: bool,
    /// Reading the input or writing stdout's local file failed.
    pub(super) local_error: Option<std::io::Error>,
    /// The exit status the server reported.
    pub(super) status: Option<u32>,
    /// An exit status or exit signal arrived.
    pub(super) exited: bool,
    /// The remote side ended: EOF, an exit status or signal, a refusal, the close.
    pub(super) ended: bool,
    /// The server refused the channel's request (`SSH_MSG_CHANNEL_FAILURE`).
    pub(super) refused: bool,
}

impl Seen {
    /// Stops the command (it is killed as soon as the framing can) and starts the wait for
    /// its channel to close.
    fn cancel(&mut self, deadline: &mut Option<tokio::time::Instant>) {
        if !self.cancelled {
            self.cancelled = true;
            *deadline = Some(tokio::time::Instant::now() + CLOSE_WAIT);
        }
    }

    /// The remote side ended (EOF, an exit status or signal); with `bounded`, the channel has
    /// [`CLOSE_WAIT`] from the first such message to close.
    fn end(&mut self, bounded: bool, deadline: &mut Option<tokio::time::Instant>) {
        self.ended = true;
        if bounded {
            deadline.get_or_insert_with(|| tokio::time::Instant::now() + CLOSE_WAIT);
        }
    }
}

/// The channel loop: runs `writer` (the command's input, if any) while reading the channel
/// into `output` through `framing`, until the channel closes, the framing has all it needs,
/// or the wait after a cancellation (or, per [`Framing::CLOSE_WAIT_AFTER_END`], after the
/// end) runs out. `cancel` firing or being dropped cancels the command.
pub(super) async fn drive<F: Framing>(
    framing: &mut F,
    rd: &mut ChannelReadHalf,
    wr: &ChannelWriteHalf<client::Msg>,
    writer: Option<impl Future<Output = std::io::Result<()>>>,
    cancel: &mut oneshot::Receiver<()>,
    output: &mut Output,
    conn: &Conn,
) -> Seen {
    let mut seen = Seen::default();
    let mut writer_done = writer.is_none();
    let mut writer = std::pin::pin!(OptionFuture::from(writer));
    let mut killed = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = &mut *cancel, if !seen.cancelled => seen.cancel(&mut deadline),
            r = &mut writer, if !writer_done && !seen.cancelled => {
                writer_done = true;
                if let Some(Err(e)) = r {
                    // A local read failed: stop the command before it sees the end of its
                    // input, or while it waits for bytes that will not come.
                    seen.local_error = Some(e);
                    seen.cancel(&mut deadline);
                }
            }
            msg = rd.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    let bytes = framing.stdout(&data);
                    match output.file.as_mut() {
                        Some(f) => {
                            if !bytes.is_empty()
                                && let Err(e) = f.write_all(bytes).await
                            {
                                seen.local_error = Some(e);
                                seen.cancel(&mut deadline);
                            }
                        }
                        None => output.out.push(bytes),
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    framing.stderr(&data, &mut output.err);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    seen.status = Some(exit_status);
                    seen.exited = true;
                    seen.end(F::CLOSE_WAIT_AFTER_END, &mut deadline);
                }
                Some(ChannelMsg::ExitSignal { .. }) => {
                    seen.exited = true;
                    seen.end(F::CLOSE_WAIT_AFTER_END, &mut deadline);
                }
                Some(ChannelMsg::Eof) => seen.end(F::CLOSE_WAIT_AFTER_END, &mut deadline),
                Some(ChannelMsg::Failure) => {
                    seen.refused = true;
                    seen.ended = true;
                    break;
                }
                Some(ChannelMsg::Close) | None => {
                    seen.ended = true;
                    break;
                }
                Some(_) => {}
            },
            _ = sleep_until(deadline), if deadline.is_some() => break,
        }
        if framing.finished() {
            break;
        }
        if seen.cancelled && !killed {
            killed = framing.kill(&seen, wr, conn).await;
        }
    }
    seen
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The command line that kills process group `pgid` (through `sudo -n` with `sudo`): the
/// group when the command leads one (always on a session of its own, and on a shell where
/// `setsid` exists), else the process itself. `-s KILL`, not `-KILL`: dash's `kill` (the login
/// shell of many Debian users) reads `kill -KILL -- -N` as a bad number and kills nothing;
/// bash, dash and procps' `kill` all read `kill -s KILL -- -N`.
fn kill_line(pgid: u32, sudo: bool) -> String {
    let sudo = if sudo { "sudo -n " } else { "" };
    format!(
        "{sudo}kill -s KILL -- -{pgid} 2>/dev/null || {sudo}kill -s KILL {pgid} 2>/dev/null; true"
    )
}

/// Kills the process group `pgid` through another channel (bounded in time).
pub(super) async fn kill_group(conn: &Conn, pgid: u32, sudo: bool) {
    let work = async {
        let _permit = conn.kill_slots.acquire().await.ok()?;
        let mut channel = open_channel(conn).await.ok()?;
        channel
            .exec(false, kill_line(pgid, sudo).as_bytes())
            .await
            .ok()?;
        channel.eof().await.ok()?;
        while let Some(msg) = channel.wait().await {
            if matches!(msg, ChannelMsg::Close) {
                break;
            }
        }
        Some(())
    };
    if tokio::time::timeout(CLOSE_WAIT, work).await.is_err() {
        tracing::warn!(pgid, "killing a cancelled remote command timed out");
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use crate::ssh::test_procs::{running, spawn_reporting_pids};

    /// The kill line run by dash and by bash (login shells of remote users) kills a whole
    /// process group: its leader and a child of it.
    #[test]
    fn the_kill_line_kills_the_group_under_dash_and_bash() {
        for shell in ["dash", "bash"] {
            // A group: `setsid sh` leads it, with a `sleep` child; both pids on stdout.
            let (mut leader, pids) = spawn_reporting_pids(Command::new("setsid").args([
                "sh",
                "-c",
                "sleep 30 & echo $$ $!; exec sleep 30",
            ]));
            let status = Command::new(shell)
                .arg("-c")
                .arg(super::kill_line(pids[0], false))
                .status()
                .unwrap_or_else(|e| panic!("{shell} is not installed: {e}"));
            assert!(status.success(), "{shell}");
            let deadline = Instant::now() + Duration::from_secs(3);
            for pid in &pids {
                while running(*pid) {
                    assert!(
                        Instant::now() < deadline,
                        "{shell}: {pid} of the group still runs"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            leader.wait().unwrap();
        }
    }
}
