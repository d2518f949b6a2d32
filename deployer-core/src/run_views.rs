//! What a viewer of a run store asks beyond what a controller needs: a page of runs without
//! their tasklists ([`RunQuery`] → [`RunSummary`]), a host across runs ([`HostRun`]), a
//! cancellation asked for by another process ([`CancelRequest`]) and a feed of changes
//! ([`ChangeFeed`]) so a page can update while any process drives a run.

use std::time::{Duration, SystemTime};

use crate::events::TaskCounts;
use crate::runs::{HostState, RunId, RunRecord, RunState};

/// Which runs [`RunStore::find_runs`](crate::RunStore::find_runs) lists: every filter that is
/// set must match; newest first, `limit` runs after skipping `offset`.
///
/// ```
/// use deployer_core::{RunQuery, RunState};
/// let query = RunQuery::new(25).state(RunState::Failed).started_by("alice").page(2);
/// assert_eq!((query.offset, query.limit), (50, 25));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunQuery {
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs started by this user (exactly).
    pub started_by: Option<String>,
    /// Only runs whose name contains this text (case-sensitive).
    pub name: Option<String>,
    /// Only runs created at or after this time.
    pub since: Option<SystemTime>,
    /// Only runs created before this time.
    pub until: Option<SystemTime>,
    /// Runs to skip (pagination).
    pub offset: usize,
    /// At most this many runs.
    pub limit: usize,
}

impl RunQuery {
    /// Every run, newest first, at most `limit`.
    pub fn new(limit: usize) -> RunQuery {
        RunQuery {
            state: None,
            started_by: None,
            name: None,
            since: None,
            until: None,
            offset: 0,
            limit,
        }
    }

    /// Only runs in `state`.
    pub fn state(mut self, state: RunState) -> RunQuery {
        self.state = Some(state);
        self
    }

    /// Only runs started by `user`.
    pub fn started_by(mut self, user: impl Into<String>) -> RunQuery {
        self.started_by = Some(user.into());
        self
    }

    /// Only runs whose name contains `text`.
    pub fn name(mut self, text: impl Into<String>) -> RunQuery {
        self.name = Some(text.into());
        self
    }

    /// Page `n` (from 0) of `limit` runs.
    pub fn page(mut self, n: usize) -> RunQuery {
        self.offset = n.saturating_mul(self.limit);
        self
    }

    /// Whether `run` passes every filter (not the pagination).
    pub fn matches(&self, run: &RunRecord) -> bool {
        self.state.is_none_or(|s| run.state == s)
            && self
                .started_by
                .as_ref()
                .is_none_or(|u| &run.started_by == u)
            && self
                .name
                .as_ref()
                .is_none_or(|n| run.name.contains(n.as_str()))
            && self.since.is_none_or(|t| run.created_ts >= t)
            && self.until.is_none_or(|t| run.created_ts < t)
    }
}

/// One run as a list shows it: its record without the tasklist, with its host count and the
/// count of its tasks by category ([`TaskCounts::of_records`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Its id.
    pub id: RunId,
    /// The tasklist's name.
    pub name: String,
    /// Where the plan came from.
    pub source: String,
    /// Who started it.
    pub started_by: String,
    /// Its state.
    pub state: RunState,
    /// When it was created.
    pub created_ts: SystemTime,
    /// When a controller first started it.
    pub started_ts: Option<SystemTime>,
    /// When it finished.
    pub finish_ts: Option<SystemTime>,
    /// Controller starts so far ([`RunRecord::drives`]).
    pub drives: u32,
    /// The controller driving it, while one holds the lease.
    pub owner: Option<String>,
    /// When that controller's lease expires unless renewed.
    pub lease_expires: Option<SystemTime>,
    /// How many hosts it targets.
    pub hosts: usize,
    /// Its tasks by category.
    pub counts: TaskCounts,
}

impl RunSummary {
    /// The summary of `record` with `hosts` hosts and task counts `counts`.
    pub fn of(record: &RunRecord, hosts: usize, counts: TaskCounts) -> RunSummary {
        RunSummary {
            id: record.id.clone(),
            name: record.name.clone(),
            source: record.source.clone(),
            started_by: record.started_by.clone(),
            state: record.state,
            created_ts: record.created_ts,
            started_ts: record.started_ts,
            finish_ts: record.finish_ts,
            drives: record.drives,
            owner: record.owner.clone(),
            lease_expires: record.lease_expires,
            hosts,
            counts,
        }
    }

    /// From its first start to its end (or to `now` while it runs); `None` before it starts.
    pub fn duration(&self, now: SystemTime) -> Option<Duration> {
        let start = self.started_ts?;
        self.finish_ts
            .unwrap_or(now)
            .duration_since(start)
            .ok()
            .or(Some(Duration::ZERO))
    }
}

/// One run as seen from one of its hosts ([`RunStore::host_history`](crate::RunStore::host_history)).
#[derive(Debug, Clone, PartialEq)]
pub struct HostRun {
    /// The run.
    pub run: RunId,
    /// The run's name.
    pub name: String,
    /// Where its plan came from.
    pub source: String,
    /// Who started it.
    pub started_by: String,
    /// The run's state.
    pub run_state: RunState,
    /// The host's state in it.
    pub host_state: HostState,
    /// When the run was created.
    pub created_ts: SystemTime,
    /// The host record's last change.
    pub updated_ts: SystemTime,
    /// When the run finished.
    pub finish_ts: Option<SystemTime>,
}

/// A request, stored with a run, that its controller cancel it
/// ([`RunStore::request_cancel`](crate::RunStore::request_cancel)): the controller (any
/// process) sees it within about a second and cancels as a first cancel does — nothing new
/// starts, running tasks and started chains finish, `finally` stages run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    /// Who asked.
    pub by: String,
    /// When.
    pub ts: SystemTime,
}

/// Tells a store's watchers that something may have changed: a store keeps one and calls
/// [`notify`](Self::notify) after each write; [`subscribe`](Self::subscribe) gives a
/// [`ChangeFeed`].
///
/// ```
/// use deployer_core::ChangeNotifier;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let notifier = ChangeNotifier::new();
/// let mut feed = notifier.subscribe();
/// notifier.notify();
/// notifier.notify(); // coalesced with the first
/// tokio::time::timeout(std::time::Duration::from_secs(1), feed.changed()).await.unwrap();
/// # });
/// ```
#[derive(Debug)]
pub struct ChangeNotifier {
    tx: tokio::sync::watch::Sender<u64>,
}

impl Default for ChangeNotifier {
    fn default() -> Self {
        ChangeNotifier::new()
    }
}

impl ChangeNotifier {
    /// A notifier nobody watches yet.
    pub fn new() -> ChangeNotifier {
        ChangeNotifier {
            tx: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Wakes every feed (a feed woken twice before it looks sees one change).
    pub fn notify(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A feed of this notifier's changes, from now on.
    pub fn subscribe(&self) -> ChangeFeed {
        ChangeFeed {
            inner: Feed::Watch(self.tx.subscribe()),
        }
    }

    /// Whether any feed is still subscribed (a store's watcher task may stop when none is).
    pub fn is_watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}

/// Changes of a run store, coalesced: [`changed`](Self::changed) returns once something may
/// have changed since the last call ([`RunStore::changes`](crate::RunStore::changes)). A
/// viewer then reads what it shows again.
#[derive(Debug)]
pub struct ChangeFeed {
    inner: Feed,
}

#[derive(Debug)]
enum Feed {
    Watch(tokio::sync::watch::Receiver<u64>),
    Tick(Duration),
}

impl ChangeFeed {
    /// A feed for a store that cannot tell: it says "changed" every `every`.
    pub fn ticking(every: Duration) -> ChangeFeed {
        ChangeFeed {
            inner: Feed::Tick(every.max(Duration::from_millis(10))),
        }
    }

    /// Waits for the next change. If the store behind it went away, it ticks every second.
    pub async fn changed(&mut self) {
        match &mut self.inner {
            Feed::Watch(rx) => {
                if rx.changed().await.is_err() {
                    self.inner = Feed::Tick(Duration::from_secs(1));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Feed::Tick(every) => tokio::time::sleep(*every).await,
        }
    }
}
