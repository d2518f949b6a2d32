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
    /// The generation of the watcher task running (or starting), if one is.
    running: Option<u64>,
    /// The generation of the next watcher.
    next: u64,
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
        start: Option<impl FnOnce(&tokio::runtime::Handle, Watcher)>,
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
        if state.running.is_none() {
            let generation = state.next;
            state.next += 1;
            state.running = Some(generation);
            start(
                &runtime,
                Watcher {
                    watch: Arc::downgrade(self),
                    generation,
                },
            );
        }
        feed
    }

    /// No watcher runs any more (the store's `close`): a running one stops at its next look.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }
}

/// What a watcher task holds: its store's [`Watch`], weakly (so it never keeps the store
/// alive), and its generation. Dropped — when the task ends, or with its runtime — it marks
/// the watcher stopped, so a later feed starts a new one.
pub(crate) struct Watcher {
    watch: Weak<Watch>,
    generation: u64,
}

impl Watcher {
    /// Whether the task should go on. When it should not (no feed left, the store closed or
    /// gone), it is marked stopped here, under the lock `subscribe` takes, so a feed
    /// subscribing at the same time starts a new watcher instead of finding this one about to
    /// stop.
    pub(crate) fn keep_going(&self) -> bool {
        let Some(watch) = self.watch.upgrade() else {
            return false;
        };
        let mut state = watch.lock();
        if state.closed || !watch.notifier.is_watched() {
            if state.running == Some(self.generation) {
                state.running = None;
            }
            return false;
        }
        true
    }

    /// Wakes every feed, if the store is still there.
    pub(crate) fn notify(&self) {
        if let Some(watch) = self.watch.upgrade() {
            watch.notify();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.upgrade() {
            let mut state = watch.lock();
            if state.running == Some(self.generation) {
                state.running = None;
            }
        }
    }
}

/// Waits until the watcher should stop ([`Watcher::keep_going`] says no), looking every
/// [`POLL`]. When this returns, the watcher is marked stopped: it must stop.
#[cfg(feature = "postgres")]
async fn until_unwanted(watcher: &Watcher) {
    loop {
        tokio::time::sleep(POLL).await;
        if !watcher.keep_going() {
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
    watcher: Watcher,
) {
    use sqlx::Connection as _;
    let options = options.thread_name(|id| format!("sqlite-watch-{id}"));
    let mut conn: Option<sqlx::SqliteConnection> = None;
    let mut last: Option<i64> = None;
    while watcher.keep_going() {
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
                    watcher.notify();
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
                    watcher.notify();
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
    watcher: Watcher,
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
    let stop = until_unwanted(&watcher);
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
                            watcher.notify();
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
                Ok(Some(_)) => watcher.notify(),
                // The connection dropped and was made again: notifications sent meanwhile are
                // lost.
                Ok(None) => watcher.notify(),
                Err(e) => {
                    tracing::warn!(
                        component = "PostgresStore",
                        "lost the change listener on PostgreSQL at {location}: {e}"
                    );
                    listener = None;
                    watcher.notify();
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
