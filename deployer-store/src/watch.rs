//! Change feeds ([`RunStore::changes`](deployer_core::RunStore::changes)): one
//! [`ChangeNotifier`] per store (shared by its clones), told after this store's own writes and
//! by a watcher task that sees other connections' writes — on SQLite by polling
//! `PRAGMA data_version` on a connection of its own, on PostgreSQL by `LISTEN deployer_runs`.
//!
//! The watcher starts with the first feed (on the tokio runtime of the caller) and stops when
//! no feed is left, when the store is closed, or when every clone of the store is gone (it
//! holds the store's [`Watch`] weakly): nothing keeps a file or a connection open behind the
//! store's back. A later feed starts a new one.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deployer_core::{ChangeFeed, ChangeNotifier};

/// How often a feed without a watcher (no tokio runtime at hand) says "changed".
const TICK: Duration = Duration::from_secs(1);

/// How often a watcher looks whether it is still wanted (and, on SQLite, polls).
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// The PostgreSQL channel every write notifies, with the run's id as payload.
#[cfg(feature = "postgres")]
pub(crate) const CHANNEL: &str = "deployer_runs";

/// What a store's clones share for its change feeds.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    notifier: ChangeNotifier,
    state: Mutex<WatchState>,
}

#[derive(Debug, Default)]
struct WatchState {
    /// A watcher task is running (or starting).
    running: bool,
    /// The store was closed: no watcher starts any more.
    closed: bool,
}

impl Watch {
    pub(crate) fn new() -> Arc<Watch> {
        Arc::new(Watch::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every feed: after this store wrote.
    pub(crate) fn notify(&self) {
        self.notifier.notify();
    }

    /// A feed of changes, starting a watcher with `start` (given the caller's runtime and a
    /// weak handle on this `Watch`) unless one runs. `start` is `None` for a store that only
    /// this process can write (an in-memory database): its own writes wake the feed. Without a
    /// tokio runtime, or once the store is closed, the feed ticks every second.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        start: Option<impl FnOnce(&tokio::runtime::Handle, Weak<Watch>)>,
    ) -> ChangeFeed {
        let Some(start) = start else {
            return self.notifier.subscribe();
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return ChangeFeed::ticking(TICK);
        };
        let mut state = self.lock();
        if state.closed {
            return ChangeFeed::ticking(TICK);
        }
        let feed = self.notifier.subscribe();
        if !state.running {
            state.running = true;
            start(&runtime, Arc::downgrade(self));
        }
        feed
    }

    /// No watcher runs any more (the store's `close`): a running one stops at its next look.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }

    /// For a watcher task: whether it should go on. When it should not (no feed left, the
    /// store closed or gone), it is marked stopped here, under the lock `subscribe` takes, so
    /// a feed subscribing at the same time starts a new watcher instead of finding this one
    /// about to stop.
    pub(crate) fn keep_going(watch: &Weak<Watch>) -> bool {
        let Some(watch) = watch.upgrade() else {
            return false;
        };
        let mut state = watch.lock();
        if state.closed || !watch.notifier.is_watched() {
            state.running = false;
            return false;
        }
        true
    }

    /// For a watcher task: wakes every feed, if the store is still there.
    pub(crate) fn notify_weak(watch: &Weak<Watch>) {
        if let Some(watch) = watch.upgrade() {
            watch.notify();
        }
    }
}

/// Waits until the watcher should stop ([`Watch::keep_going`] says no), looking every
/// [`POLL`]. When this returns, the watcher is marked stopped: it must stop.
#[cfg(feature = "postgres")]
async fn until_unwanted(watch: &Weak<Watch>) {
    loop {
        tokio::time::sleep(POLL).await;
        if !Watch::keep_going(watch) {
            return;
        }
    }
}

/// The SQLite watcher: polls `PRAGMA data_version` every [`POLL`] on a connection of its own
/// (never one of the pool's: the value changes when any *other* connection commits, in this
/// process or another) and wakes the feeds when it changes. The connection's thread is named
/// `sqlite-watch-N`.
#[cfg(feature = "sqlite")]
pub(crate) async fn watch_sqlite(
    options: sqlx::sqlite::SqliteConnectOptions,
    location: String,
    watch: Weak<Watch>,
) {
    use sqlx::Connection as _;
    let options = options.thread_name(|id| format!("sqlite-watch-{id}"));
    let mut conn: Option<sqlx::SqliteConnection> = None;
    let mut last: Option<i64> = None;
    while Watch::keep_going(&watch) {
        if conn.is_none() {
            match sqlx::SqliteConnection::connect_with(&options).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(
                        component = "SqliteStore",
                        "cannot watch SQLite database {location} for changes: {e}"
                    );
                    tokio::time::sleep(TICK).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match sqlx::query_scalar::<_, i64>("PRAGMA data_version")
            .fetch_one(&mut *c)
            .await
        {
            Ok(version) => {
                if last.is_some_and(|l| l != version) {
                    Watch::notify_weak(&watch);
                }
                last = Some(version);
            }
            Err(e) => {
                tracing::warn!(
                    component = "SqliteStore",
                    "cannot watch SQLite database {location} for changes: {e}"
                );
                if let Some(c) = conn.take() {
                    let _ = c.close().await;
                }
                // A new connection counts from its own value: a change in between would be
                // missed, so say "changed" once.
                if last.take().is_some() {
                    Watch::notify_weak(&watch);
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// The PostgreSQL watcher: `LISTEN deployer_runs` on a connection of its own (a pool of one,
/// apart from the store's) and wakes the feeds on every notification. `PgListener` reconnects
/// and listens again when its connection drops; notifications sent meanwhile are lost, so a
/// reconnection wakes the feeds once.
#[cfg(feature = "postgres")]
pub(crate) async fn watch_postgres(
    options: sqlx::postgres::PgConnectOptions,
    location: String,
    watch: Weak<Watch>,
) {
    use sqlx::postgres::{PgListener, PgPoolOptions};
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    // Only this future ends the loop early: `try_recv` is cancelled only when the listener is
    // dropped right after (cancelling it and going on could lose part of a message).
    let stop = until_unwanted(&watch);
    tokio::pin!(stop);
    let mut listener: Option<PgListener> = None;
    let mut connected_before = false;
    loop {
        let Some(l) = listener.as_mut() else {
            let connect = async {
                let mut l = PgListener::connect_with(&pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            tokio::select! {
                _ = &mut stop => break,
                connected = connect => match connected {
                    Ok(l) => {
                        listener = Some(l);
                        if connected_before {
                            Watch::notify_weak(&watch);
                        }
                        connected_before = true;
                    }
                    Err(e) => {
                        tracing::warn!(
                            component = "PostgresStore",
                            "cannot listen for changes on PostgreSQL at {location}: {e}"
                        );
                        tokio::select! {
                            _ = &mut stop => break,
                            _ = tokio::time::sleep(TICK) => {}
                        }
                    }
                },
            }
            continue;
        };
        tokio::select! {
            _ = &mut stop => break,
            received = l.try_recv() => match received {
                Ok(Some(_)) => Watch::notify_weak(&watch),
                // The connection dropped and was made again: notifications sent meanwhile are
                // lost.
                Ok(None) => Watch::notify_weak(&watch),
                Err(e) => {
                    tracing::warn!(
                        component = "PostgresStore",
                        "lost the change listener on PostgreSQL at {location}: {e}"
                    );
                    listener = None;
                    Watch::notify_weak(&watch);
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(TICK) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    pool.close().await;
}
