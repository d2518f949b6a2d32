//! What the hosts of one connector share when they open connections ([`Shared`]: the budget of
//! handshakes in flight, known_hosts files and key files read once), and how one connection
//! is opened: a handshake turn, the connect timeout counted from it, and retries with backoff
//! ([`open_with_retries`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use deployer_core::{BoxError, RemoteError};
use tokio::sync::Semaphore;

use super::auth::KeyCache;
use super::host_keys::KnownHostsCache;
use super::options::SshOptions;

/// The longest pause between two connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What every host of one connector shares: handed out through an `Arc`.
pub(crate) struct Shared {
    /// Handshakes (TCP, key exchange, authentication) in flight at once.
    pub(super) handshakes: Arc<Semaphore>,
    pub(super) known_hosts: KnownHostsCache,
    pub(super) keys: KeyCache,
    /// Memory for uploads in flight, shared by the connector's hosts.
    pub(super) uploads: UploadBuffers,
}

impl Shared {
    /// The shared state for hosts connected with `options`.
    pub(crate) fn new(options: &SshOptions) -> Arc<Shared> {
        Arc::new(Shared {
            handshakes: Arc::new(Semaphore::new(options.max_handshakes)),
            known_hosts: KnownHostsCache::default(),
            keys: KeyCache::default(),
            uploads: UploadBuffers::default(),
        })
    }
}

/// Where a handshake is, for the message of a timeout.
#[derive(Default)]
pub(super) struct Phase(AtomicU8);

impl Phase {
    pub(super) const TCP: u8 = 0;
    pub(super) const KEX: u8 = 1;
    pub(super) const AUTH: u8 = 2;
    pub(super) const TUNNEL: u8 = 3;

    pub(super) fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }

    fn name(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            Self::TCP => "TCP connect",
            Self::KEX => "key exchange",
            Self::AUTH => "authentication",
            _ => "tunnel through the jump host",
        }
    }
}

/// A failed handshake, and whether trying again may help.
pub(super) struct Failure {
    pub(super) error: RemoteError,
    pub(super) transient: bool,
}

impl Failure {
    /// A failure that another attempt may not see (refused network, reset, a dropped
    /// connection).
    pub(super) fn transient(error: RemoteError) -> Failure {
        Failure {
            error,
            transient: true,
        }
    }

    /// A failure that would happen again (host key, authentication, configuration).
    pub(super) fn permanent(error: RemoteError) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }
}

/// Whether a russh error of the handshake may pass on another attempt: protocol mismatches
/// are permanent, the rest (I/O, the server hanging up, as an overloaded sshd does past
/// `MaxStartups`) transient.
pub(super) fn transient_russh(source: &russh::Error) -> bool {
    !matches!(
        source,
        russh::Error::NoCommonAlgo { .. }
            | russh::Error::UnknownAlgo
            | russh::Error::WrongServerSig
            | russh::Error::InvalidConfig(_)
            | russh::Error::NoAuthMethod
    )
}

/// The error of a connection that failed on every attempt: `connecting to ADDR failed after
/// N attempts (PHASE)`, caused by the last attempt's error.
#[derive(Debug)]
struct AfterAttempts {
    address: String,
    attempts: usize,
    phase: &'static str,
    last: BoxError,
}

impl fmt::Display for AfterAttempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connecting to {} failed after {} attempts ({})",
            self.address, self.attempts, self.phase
        )
    }
}

impl std::error::Error for AfterAttempts {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.last)
    }
}

/// The pause after failed attempt `attempt` (1-based): `first` doubled per attempt, at most
/// [`BACKOFF_MAX`], plus up to a quarter of it at random.
pub(super) fn backoff(first: Duration, attempt: usize) -> Duration {
    let doubled = first
        .checked_mul(1u32 << (attempt.saturating_sub(1)).min(16))
        .unwrap_or(BACKOFF_MAX)
        .min(BACKOFF_MAX);
    doubled + doubled.mul_f64(fastrand::f64() / 4.0)
}

/// Opens a connection with `open` (given the phase to keep up to date): each attempt waits
/// for a handshake turn, then runs within the connect timeout; a transient failure is tried
/// again after [`backoff`] (the turn given back meanwhile), up to
/// [`SshOptions::connect_attempts`] in all.
pub(super) async fn open_with_retries<T, F, Fut>(
    shared: &Shared,
    options: &SshOptions,
    host: &str,
    address: &str,
    mut open: F,
) -> Result<T, RemoteError>
where
    F: FnMut(Arc<Phase>) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let attempts = options.connect_attempts.max(1);
    let limit = options.connect_timeout;
    let mut attempt = 1;
    loop {
        let phase = Arc::new(Phase::default());
        let result = {
            let _turn = shared
                .handshakes
                .acquire()
                .await
                .map_err(|_| RemoteError::Other {
                    host: host.to_string(),
                    message: "the connector is closed".to_string(),
                })?;
            tokio::time::timeout(limit, open(phase.clone())).await
        };
        let failure = match result {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(failure)) => failure,
            Err(_) => Failure::transient(RemoteError::Timeout {
                host: host.to_string(),
                what: if attempt == 1 {
                    format!("connecting to {address} ({})", phase.name())
                } else {
                    format!(
                        "connecting to {address} ({}, {attempt} attempts)",
                        phase.name()
                    )
                },
                after: limit,
            }),
        };
        if !failure.transient || attempt >= attempts {
            return Err(if attempt == 1 || !failure.transient {
                failure.error
            } else {
                after_attempts(failure.error, host, address, attempt, phase.name())
            });
        }
        let pause = backoff(options.connect_backoff, attempt);
        tracing::debug!(
            host,
            attempt,
            attempts,
            pause_ms = pause.as_millis() as u64,
            error = %deployer_core::error_chain(&failure.error),
            "connecting failed; trying again"
        );
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// The error after `attempts` attempts whose last failed with `last`. A timeout stays a
/// timeout (its message already names the attempts); anything else becomes a connect error
/// caused by the last one.
fn after_attempts(
    last: RemoteError,
    host: &str,
    address: &str,
    attempts: usize,
    phase: &'static str,
) -> RemoteError {
    let last: BoxError = match last {
        RemoteError::Timeout { .. } => return last,
        RemoteError::Connect { source, .. } => source,
        other => Box::new(other),
    };
    RemoteError::Connect {
        host: host.to_string(),
        source: Box::new(AfterAttempts {
            address: address.to_string(),
            attempts,
            phase,
            last,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_at_most_a_quarter_of_jitter_and_a_cap() {
        let first = Duration::from_millis(200);
        for (attempt, base) in [(1, 200), (2, 400), (3, 800)] {
            for _ in 0..50 {
                let d = backoff(first, attempt);
                let base = Duration::from_millis(base);
                assert!(d >= base && d <= base + base / 4, "{attempt}: {d:?}");
            }
        }
        assert!(backoff(first, 40) <= BACKOFF_MAX + BACKOFF_MAX / 4);
    }
}

/// How many bytes of uploads one connector holds in memory at once, across all its hosts: a
/// chunk read from a file stays in memory until russh has encrypted it, and a server's window
/// (2 MiB for OpenSSH) lets russh take a whole small file at once, so without a bound 1000
/// hosts uploading together would hold ~1000 files. With it, a host waits for room before
/// reading its next chunk (first come, first served).
pub(super) const UPLOAD_BUFFER: usize = 32 << 20;

/// How much of a file an upload reads at once.
pub(super) const UPLOAD_READ: usize = 256 << 10;

/// How much of it is handed to russh at once.
pub(super) const UPLOAD_CHUNK: usize = 16 << 10;

/// How many chunks of one upload may wait in russh at once. russh encrypts every message it
/// has queued into the connection's write buffer before writing it out (a buffer that keeps
/// its size for the connection's life), and the server's window lets it take a whole small
/// file: without this pace every connection would keep a buffer the size of the file.
pub(super) const CHUNKS_IN_FLIGHT: usize = 1;

/// The connector's upload memory (see [`UPLOAD_BUFFER`]), counted in KiB.
#[derive(Clone)]
pub(crate) struct UploadBuffers(Arc<Semaphore>);

impl Default for UploadBuffers {
    fn default() -> Self {
        UploadBuffers(Arc::new(Semaphore::new(UPLOAD_BUFFER >> 10)))
    }
}

/// One read of a file, holding its share of the connector's upload memory until every chunk
/// of it is dropped.
struct Read {
    data: Vec<u8>,
    _room: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A chunk of a read, handed to russh; says when russh dropped it (after encrypting it).
struct Chunk {
    read: Arc<Read>,
    range: std::ops::Range<usize>,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.read.data[self.range.clone()]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }
}

impl UploadBuffers {
    /// The chunks of the file at `path`, paced for one channel (see [`CHUNKS_IN_FLIGHT`]).
    /// The file is read with positional reads on the blocking pool into this memory only
    /// (a `tokio::fs::File` would keep a buffer of its own per open file).
    pub(super) async fn pace(&self, path: &std::path::Path) -> std::io::Result<Pace> {
        let path = path.to_path_buf();
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(std::io::Error::other)??;
        Ok(Pace {
            buffers: self.clone(),
            file: Some(Arc::new(file)),
            offset: 0,
            read: None,
            in_flight: std::collections::VecDeque::new(),
        })
    }

    /// The same pace for pieces made elsewhere (a tar stream, bounded by its own channel):
    /// [`Pace::push`] a piece, then take its chunks with [`Pace::next_pushed`].
    pub(super) fn pace_pushed(&self) -> Pace {
        Pace {
            buffers: self.clone(),
            file: None,
            offset: 0,
            read: None,
            in_flight: std::collections::VecDeque::new(),
        }
    }
}

/// One upload's chunks: at most [`CHUNKS_IN_FLIGHT`] of them not yet taken by russh.
pub(super) struct Pace {
    buffers: UploadBuffers,
    /// The file read (`None`: pieces are pushed).
    file: Option<Arc<std::fs::File>>,
    /// Where the next read starts.
    offset: u64,
    /// The current read and how far its chunks went.
    read: Option<(Arc<Read>, usize)>,
    in_flight: std::collections::VecDeque<tokio::sync::oneshot::Receiver<()>>,
}

impl Pace {
    /// The next chunk (≤ [`UPLOAD_CHUNK`] bytes) of at most `want` more bytes of `reader`,
    /// once the earlier chunks allow (and, for a new read, there is room for it); empty at
    /// the end of the input.
    pub(super) async fn read_chunk(&mut self, want: usize) -> std::io::Result<bytes::Bytes> {
        let Some(file) = self.file.clone() else {
            return Err(std::io::Error::other(
                "a pace of pushed pieces reads no file",
            ));
        };
        self.turn().await;
        if self.read.as_ref().is_none_or(|(r, at)| *at >= r.data.len()) {
            self.read = None;
            let size = want.min(UPLOAD_READ);
            let kib = size.div_ceil(1024).max(1) as u32;
            let room = self
                .buffers
                .0
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(std::io::Error::other)?;
            let offset = self.offset;
            let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                use std::os::unix::fs::FileExt;
                let mut data = vec![0; size];
                let mut got = 0;
                while got < size {
                    match file.read_at(&mut data[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                data.truncate(got);
                Ok(data)
            })
            .await
            .map_err(std::io::Error::other)??;
            self.offset += data.len() as u64;
            if data.is_empty() {
                return Ok(bytes::Bytes::new());
            }
            self.read = Some((
                Arc::new(Read {
                    data,
                    _room: Some(room),
                }),
                0,
            ));
        }
        Ok(self.take(want))
    }

    /// Waits until fewer than [`CHUNKS_IN_FLIGHT`] chunks are not yet taken by russh.
    async fn turn(&mut self) {
        while self.in_flight.len() >= CHUNKS_IN_FLIGHT {
            if let Some(sent) = self.in_flight.pop_front() {
                // Dropped unsent (the channel is gone) counts as taken.
                let _ = sent.await;
            }
        }
    }

    /// Gives a piece whose chunks [`next_pushed`](Self::next_pushed) hands out next.
    pub(super) fn push(&mut self, data: Vec<u8>) {
        self.read = Some((Arc::new(Read { data, _room: None }), 0));
    }

    /// The next chunk of the pushed piece once the earlier chunks allow; `None` when it is
    /// all handed out.
    pub(super) async fn next_pushed(&mut self) -> Option<bytes::Bytes> {
        if self.read.as_ref().is_none_or(|(r, at)| *at >= r.data.len()) {
            return None;
        }
        self.turn().await;
        Some(self.take(usize::MAX))
    }

    /// The next chunk of the current read (at most `want` bytes), counted in flight.
    fn take(&mut self, want: usize) -> bytes::Bytes {
        let Some((read, at)) = self.read.as_mut() else {
            return bytes::Bytes::new();
        };
        let end = (*at + UPLOAD_CHUNK.min(want)).min(read.data.len());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let chunk = Chunk {
            read: read.clone(),
            range: *at..end,
            sent: Some(tx),
        };
        *at = end;
        self.in_flight.push_back(rx);
        bytes::Bytes::from_owner(chunk)
    }
}

impl UploadBuffers {
    /// KiB of room left (for tests).
    #[cfg(test)]
    pub(super) fn room(&self) -> usize {
        self.0.available_permits()
    }
}

#[cfg(test)]
mod upload_tests {
    use super::*;

    #[tokio::test]
    async fn a_read_holds_its_room_until_its_last_chunk_is_dropped() {
        let buffers = UploadBuffers::default();
        let total = buffers.room();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), [7u8; 100 * 1024]).unwrap();
        let mut pace = buffers.pace(file.path()).await.unwrap();
        let first = pace.read_chunk(usize::MAX).await.unwrap();
        assert_eq!(first.len(), UPLOAD_CHUNK);
        assert_eq!(
            buffers.room(),
            total - UPLOAD_READ / 1024,
            "room for one read is taken"
        );
        drop(first);
        let mut sizes = Vec::new();
        loop {
            let chunk = pace.read_chunk(usize::MAX).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            sizes.push(chunk.len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), 100 * 1024 - UPLOAD_CHUNK);
        drop(pace);
        assert_eq!(buffers.room(), total);
    }

    #[tokio::test]
    async fn pushed_pieces_are_handed_out_paced_in_chunks() {
        let mut pace = UploadBuffers::default().pace_pushed();
        pace.push(vec![1u8; 2 * UPLOAD_CHUNK + 100]);
        let first = pace.next_pushed().await.unwrap();
        assert_eq!(first.len(), UPLOAD_CHUNK);
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), pace.next_pushed()).await;
        assert!(waiting.is_err(), "waits while the first chunk is held");
        drop(first);
        let mut rest = Vec::new();
        while let Some(chunk) = pace.next_pushed().await {
            rest.push(chunk.len());
        }
        assert_eq!(rest, [UPLOAD_CHUNK, 100]);
    }

    #[tokio::test]
    async fn a_channel_waits_while_its_chunk_is_not_taken() {
        let buffers = UploadBuffers::default();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), [7u8; 4 * UPLOAD_CHUNK]).unwrap();
        let mut pace = buffers.pace(file.path()).await.unwrap();
        let first = pace.read_chunk(usize::MAX).await.unwrap();
        let second = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            pace.read_chunk(usize::MAX),
        )
        .await;
        assert!(second.is_err(), "waits while the chunk is held");
        drop(first);
        let second = pace.read_chunk(usize::MAX).await.unwrap();
        assert_eq!(second.len(), UPLOAD_CHUNK);
    }
}
