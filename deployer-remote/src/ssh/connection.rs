//! Connections to one host: [`Connections`] opens them (directly or through ProxyJump hosts,
//! within the connect timeout, with keepalives), reuses them, replaces dead ones, and hands
//! out channel slots within [`SshOptions::max_channels`] per connection and
//! [`SshOptions::max_connections`] connections, with the idle shells kept on each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployer_core::RemoteError;
use russh::client::{self, Handle};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::authenticate;
use super::handshake::{Failure, Phase, Shared, open_with_retries, transient_russh};
use super::host_keys::Client;
use super::options::SshOptions;
use super::shell::Shell;
use super::target::Target;

/// One SSH connection with its channel budget.
pub(super) struct Conn {
    pub(super) handle: Handle<Client>,
    slots: Arc<Semaphore>,
    /// Channels for killing cancelled commands, beside `slots`.
    pub(super) kill_slots: Arc<Semaphore>,
    /// Idle remote shells on this connection, each holding one of `slots`.
    idle: Mutex<Vec<(Shell, OwnedSemaphorePermit)>>,
    /// The jump host's connection, kept open while this one is used.
    _jump: Option<Box<Conn>>,
}

impl Conn {
    fn take_idle(&self) -> Option<(Shell, OwnedSemaphorePermit)> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    pub(super) fn put_idle(&self, shell: Shell, permit: OwnedSemaphorePermit) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((shell, permit));
    }
}

/// A channel slot: permits released when the command is done.
pub(super) struct Slot {
    pub(super) conn: Arc<Conn>,
    pub(super) permit: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// What a command needs from [`Connections::slot_or_shell`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A channel slot (for a session of its own).
    Slot,
    /// An idle shell if there is one.
    Shell,
}

/// The connections to one host, opened on first use and reused, and the channel budget
/// across them.
pub(super) struct Connections {
    /// The host's name, as errors and logs give it.
    pub(super) name: String,
    pub(super) target: Target,
    pub(super) options: SshOptions,
    /// What the hosts of one connector share (handshake turns, known_hosts, keys, upload
    /// memory).
    pub(super) shared: Arc<Shared>,
    conns: tokio::sync::Mutex<Vec<Arc<Conn>>>,
    total: Arc<Semaphore>,
}

impl Connections {
    pub(super) fn new(
        name: String,
        target: Target,
        options: SshOptions,
        shared: Arc<Shared>,
    ) -> Self {
        let total = options.max_channels * options.max_connections;
        Connections {
            name,
            target,
            options,
            shared,
            conns: tokio::sync::Mutex::new(Vec::new()),
            total: Arc::new(Semaphore::new(total)),
        }
    }

    /// Number of open connections.
    pub(super) async fn count(&self) -> usize {
        let conns = self.conns.lock().await;
        conns.iter().filter(|c| !c.handle.is_closed()).count()
    }

    /// A channel slot (no shell), on a new connection if need be.
    pub(super) async fn slot(&self) -> Result<Slot, RemoteError> {
        Ok(self.slot_or_shell(Want::Slot).await?.0)
    }

    /// A channel slot, with an idle shell in it when one is wanted and there. Idle shells hold
    /// slots of their own: when every slot of every connection is taken and some by idle
    /// shells, an idle shell is closed to free its slot before another connection is opened.
    async fn slot_or_shell(&self, want: Want) -> Result<(Slot, Option<Shell>), RemoteError> {
        let total = self
            .total
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.other("host closed"))?;
        let mut conns = self.conns.lock().await;
        conns.retain(|c| !c.handle.is_closed());
        if want != Want::Slot {
            for conn in conns.iter() {
                while let Some((mut shell, permit)) = conn.take_idle() {
                    if shell.usable() {
                        return Ok((
                            Slot {
                                conn: conn.clone(),
                                permit,
                                _total: total,
                            },
                            Some(shell),
                        ));
                    }
                    shell.close();
                }
            }
        }
        for conn in conns.iter() {
            if let Ok(permit) = conn.slots.clone().try_acquire_owned() {
                return Ok((
                    Slot {
                        conn: conn.clone(),
                        permit,
                        _total: total,
                    },
                    None,
                ));
            }
        }
        for conn in conns.iter() {
            if let Some((shell, permit)) = conn.take_idle() {
                shell.close();
                return Ok((
                    Slot {
                        conn: conn.clone(),
                        permit,
                        _total: total,
                    },
                    None,
                ));
            }
        }
        let conn = Arc::new(self.open().await?);
        conns.push(conn.clone());
        let permit = conn
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.other("new connection has no free channel"))?;
        Ok((
            Slot {
                conn,
                permit,
                _total: total,
            },
            None,
        ))
    }

    /// An error of this host.
    pub(super) fn other(&self, message: impl Into<String>) -> RemoteError {
        RemoteError::Other {
            host: self.name.clone(),
            message: message.into(),
        }
    }

    /// Opens one more connection: in its handshake turn, within the connect timeout, tried
    /// again on transient failures ([`open_with_retries`]).
    async fn open(&self) -> Result<Conn, RemoteError> {
        let address = format!("{}:{}", self.target.hostname, self.target.port);
        open_with_retries(
            &self.shared,
            &self.options,
            &self.name,
            &address,
            |phase: Arc<Phase>| async move {
                open_target(
                    &self.name,
                    &self.target,
                    &self.options,
                    &self.shared,
                    &phase,
                )
                .await
            },
        )
        .await
    }

    /// A slot with a shell in it: an idle one, else one started on a new session channel.
    pub(super) async fn shell(&self) -> Result<(Slot, Shell), RemoteError> {
        let mut retried = false;
        loop {
            let (slot, idle) = self.slot_or_shell(Want::Shell).await?;
            if let Some(shell) = idle {
                return Ok((slot, shell));
            }
            let started = match open_channel(&slot.conn).await {
                Ok(channel) => Shell::start(channel).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(shell) => return Ok((slot, shell)),
                Err(e) => self.channel_failed(&slot.conn, e, &mut retried)?,
            }
        }
    }

    /// A channel slot and an open session channel in it. A connection found dead here (the
    /// command has not started) is replaced once.
    pub(super) async fn open_session(
        &self,
    ) -> Result<(Slot, russh::Channel<client::Msg>), RemoteError> {
        let mut retried = false;
        loop {
            let slot = self.slot().await?;
            match open_channel(&slot.conn).await {
                Ok(channel) => return Ok((slot, channel)),
                Err(e) => self.channel_failed(&slot.conn, e, &mut retried)?,
            }
        }
    }

    /// A channel could not be opened (or its shell started) on `conn`: `Ok` to try once more
    /// when the connection turned out dead (the command has not started; the next try opens
    /// a new connection), else the error.
    fn channel_failed(
        &self,
        conn: &Conn,
        e: russh::Error,
        retried: &mut bool,
    ) -> Result<(), RemoteError> {
        if !conn.handle.is_closed() {
            return Err(self.other(refused(&e)));
        }
        if *retried {
            return Err(RemoteError::Disconnected {
                host: self.name.clone(),
                source: Some(Box::new(e)),
            });
        }
        *retried = true;
        Ok(())
    }
}

/// Opens a connection to `target` (through its jump hosts), checks its host key and
/// authenticates, keeping `phase` up to date.
async fn open_target(
    name: &str,
    target: &Target,
    options: &SshOptions,
    shared: &Shared,
    phase: &Phase,
) -> Result<Conn, Failure> {
    let refused = Arc::new(Mutex::new(None));
    let client = Client {
        host: target.hostname.clone(),
        port: target.port,
        known_hosts: shared.known_hosts.file(&options.known_hosts_path()),
        policy: options.policy,
        refused: refused.clone(),
    };
    let config = Arc::new(client::Config {
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        // A connection that died silently is noticed (and replaced on the next call) after
        // unanswered keepalives instead of hanging every later call.
        keepalive_interval: Some(options.keepalive.0),
        keepalive_max: options.keepalive.1,
        ..Default::default()
    });
    // A refused host key (or an unreadable known_hosts) is permanent; other handshake
    // errors are judged by their kind.
    let connect_err = |source: russh::Error| -> Failure {
        if let Some(e) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Failure::permanent(e);
        }
        let transient = transient_russh(&source);
        let error = RemoteError::Connect {
            host: name.to_string(),
            source: Box::new(source),
        };
        Failure { error, transient }
    };
    let (mut handle, jump) = match &target.jump {
        Some(jump) => {
            let jump_conn =
                Box::pin(open_target(&jump.hostname, jump, options, shared, phase)).await?;
            phase.set(Phase::TUNNEL);
            let channel = jump_conn
                .handle
                .channel_open_direct_tcpip(
                    target.hostname.clone(),
                    target.port as u32,
                    "127.0.0.1",
                    0,
                )
                .await
                .map_err(|e| {
                    Failure::transient(RemoteError::Connect {
                        host: name.to_string(),
                        source: format!(
                            "jump host {} cannot reach {}:{}: {e}",
                            jump.hostname, target.hostname, target.port
                        )
                        .into(),
                    })
                })?;
            phase.set(Phase::KEX);
            let handle = client::connect_stream(config, channel.into_stream(), client)
                .await
                .map_err(connect_err)?;
            (handle, Some(Box::new(jump_conn)))
        }
        None => {
            phase.set(Phase::TCP);
            let tcp = tokio::net::TcpStream::connect((target.hostname.as_str(), target.port))
                .await
                .map_err(|e| {
                    Failure::transient(RemoteError::Connect {
                        host: name.to_string(),
                        source: Box::new(e),
                    })
                })?;
            let _ = tcp.set_nodelay(true);
            phase.set(Phase::KEX);
            let handle = client::connect_stream(config, tcp, client)
                .await
                .map_err(connect_err)?;
            (handle, None)
        }
    };
    phase.set(Phase::AUTH);
    authenticate(name, &mut handle, target, options, &shared.keys)
        .await
        .map_err(|e| match e {
            // The connection dropped during authentication: worth another try.
            RemoteError::Disconnected { .. } => Failure::transient(e),
            _ => Failure::permanent(e),
        })?;
    Ok(Conn {
        handle,
        slots: Arc::new(Semaphore::new(options.max_channels)),
        kill_slots: Arc::new(Semaphore::new(2)),
        idle: Mutex::new(Vec::new()),
        _jump: jump,
    })
}

/// Opens a session channel. OpenSSH frees a closed session only after it has handled the
/// rest of the packets that arrived with the close, so an open sent right after another
/// channel's close can be refused for `MaxSessions`; a server whose sessions are all taken
/// (a lower `MaxSessions` than our channels, or a kill in flight) refuses too. Refusals are
/// retried with a growing pause, for about two seconds in all.
pub(super) async fn open_channel(conn: &Conn) -> Result<russh::Channel<client::Msg>, russh::Error> {
    let mut pause = Duration::from_millis(1);
    let mut waited = Duration::ZERO;
    loop {
        match conn.handle.channel_open_session().await {
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ConnectFailed
                | russh::ChannelOpenFailure::AdministrativelyProhibited
                | russh::ChannelOpenFailure::ResourceShortage,
            )) if waited < Duration::from_secs(2) && !conn.handle.is_closed() => {
                tokio::time::sleep(pause).await;
                waited += pause;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// The message for a session the server would not open.
fn refused(e: &russh::Error) -> String {
    match e {
        russh::Error::ChannelOpenFailure(_) => format!(
            "the server refused a new session ({e}) for 2 s; its MaxSessions may be lower than \
             SshOptions::max_channels + 2"
        ),
        _ => format!("cannot open a channel: {e}"),
    }
}
