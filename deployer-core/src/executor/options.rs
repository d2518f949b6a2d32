//! How a run is steered from outside: cancellation, options, the targeted set of hosts.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::events::TaskId;

/// Stops a run: the first [`cancel`](Self::cancel) acts like a task failure (nothing new
/// starts, running tasks and started chains finish), the second stops running tasks too.
///
/// Clones share state, so a Ctrl-C handler can hold one while the executor holds another.
///
/// ```
/// let cancel = deployer_core::CancelHandle::new();
/// assert!(!cancel.is_cancelled());
/// cancel.cancel();
/// assert!(cancel.is_cancelled() && !cancel.is_stopping());
/// cancel.cancel();
/// assert!(cancel.is_stopping());
/// ```
#[derive(Clone, Debug, Default)]
pub struct CancelHandle {
    pub(crate) graceful: CancellationToken,
    pub(crate) hard: CancellationToken,
}

impl CancelHandle {
    /// A handle that has not been cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Escalates: the first call asks the run to stop starting tasks, the next one stops
    /// running tasks.
    pub fn cancel(&self) {
        if self.graceful.is_cancelled() {
            self.hard.cancel();
        } else {
            self.graceful.cancel();
        }
    }

    /// Stops running tasks at once (implies the first level).
    pub fn stop_now(&self) {
        self.graceful.cancel();
        self.hard.cancel();
    }

    /// Whether the first level was reached.
    pub fn is_cancelled(&self) -> bool {
        self.graceful.is_cancelled()
    }

    /// Whether running tasks are being stopped.
    pub fn is_stopping(&self) -> bool {
        self.hard.is_cancelled()
    }
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Cancels the run (default: a fresh handle nobody else holds).
    pub cancel: CancelHandle,
    /// Tasks already done in an earlier attempt of this run; they are not run again (default:
    /// none). Used to resume a run.
    pub skip: HashSet<TaskId>,
    /// Hosts removed from the targeted set while the run goes on (default: none); their tasks
    /// that have not started are not run.
    pub targets: TargetSet,
    /// The id of the run record this execution belongs to; every event carries it (default:
    /// none; [`Runs`](crate::Runs) sets it).
    pub run_id: Option<crate::RunId>,
    /// Runs only this entry, `(stage, index in the stage)`, of the plan: every other stage and
    /// entry is left out — not run, not reported, not counted — as a worker running one
    /// claimed entry of a distributed run needs (default: the whole plan). The cost of a run
    /// is then that of the entry, whatever the size of the plan.
    pub entry: Option<(usize, usize)>,
}

/// The hosts removed from a run's targeted set, shared between the executor and whoever
/// removes them (a control plane reacting to a host leaving the fleet).
///
/// ```
/// let targets = deployer_core::TargetSet::new();
/// targets.remove("fe002");
/// assert!(targets.is_removed("fe002"));
/// assert!(!targets.is_removed("fe001"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct TargetSet {
    removed: Arc<std::sync::RwLock<HashSet<String>>>,
    any: Arc<std::sync::atomic::AtomicBool>,
}

impl TargetSet {
    /// No host removed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes `host`: its tasks that have not started will not run.
    pub fn remove(&self, host: &str) {
        self.removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_string());
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether `host` was removed.
    pub fn is_removed(&self, host: &str) -> bool {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let removed = self.removed.read().unwrap_or_else(|e| e.into_inner());
        removed.contains(host)
    }
}
