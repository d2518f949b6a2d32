//! The job queue of one stage: entries start in order under the stage and per-host limits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinSet;

use super::{CancelHandle, FailedTask, REMOVED_REASON, RunReport, Shared, not_run, run_entry};
use crate::events::{RunOutcome, TaskId, TaskOutcome};
use crate::plan::PlannedStage;

/// What one entry (a task or a chain) produced.
#[derive(Default)]
pub(crate) struct EntryResult {
    pub(crate) success: bool,
    pub(crate) failures: Vec<FailedTask>,
    pub(crate) data: Vec<(TaskId, Value)>,
}

/// Schedules the entries of one stage under the stage and per-host limits.
///
/// Pending entries wait in one queue per host; a heap holds every host that may start its next
/// entry (it has pending entries and is below its limit), keyed by that entry's position, so
/// the next entry to start is always the earliest one whose host has room: O(log hosts) per
/// start, and a full host never delays another.
pub(crate) struct JobQueue<'a> {
    pub(crate) stage: &'a PlannedStage,
    pub(crate) limit: usize,
    pub(crate) per_host: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) cancel: &'a CancelHandle,
    pub(crate) report: &'a mut RunReport,
    pub(crate) pending: Vec<VecDeque<u32>>,
    pub(crate) running_on: Vec<u32>,
    pub(crate) ready: BinaryHeap<Reverse<(u32, u32)>>,
    /// A finally stage: a failure or a first cancel does not stop it starting entries.
    pub(crate) finally: bool,
}

impl<'a> JobQueue<'a> {
    pub(crate) fn new(
        stage: &'a PlannedStage,
        limit: usize,
        shared: Arc<Shared>,
        cancel: &'a CancelHandle,
        report: &'a mut RunReport,
    ) -> Self {
        let mut pending = vec![VecDeque::new(); stage.hosts.len()];
        for (ei, entry) in stage.entries.iter().enumerate() {
            let all_done = entry.steps.iter().all(|s| shared.is_skipped(s.info.id));
            if all_done && !entry.steps.is_empty() {
                // Done by an earlier attempt (reported when the stage started).
                continue;
            }
            pending[entry.host].push_back(ei as u32);
        }
        let ready = pending
            .iter()
            .enumerate()
            .filter_map(|(h, q)| q.front().map(|&e| Reverse((e, h as u32))))
            .collect();
        JobQueue {
            stage,
            limit: limit.max(1),
            per_host: stage.per_host.unwrap_or(usize::MAX).max(1),
            shared,
            cancel,
            report,
            running_on: vec![0; stage.hosts.len()],
            pending,
            ready,
            finally: stage.finally.is_some(),
        }
    }

    /// Leaves out the entries at these positions (already reported as not run).
    pub(crate) fn excluding(mut self, excluded: HashSet<usize>) -> Self {
        if excluded.is_empty() {
            return self;
        }
        for queue in &mut self.pending {
            queue.retain(|&e| !excluded.contains(&(e as usize)));
        }
        self.ready = self
            .pending
            .iter()
            .enumerate()
            .filter_map(|(h, q)| q.front().map(|&e| Reverse((e, h as u32))))
            .collect();
        self
    }

    /// Whether the run is being stopped for this stage: a first cancel for an ordinary stage,
    /// only a second one for a finally stage.
    fn stopping(&self) -> bool {
        if self.finally {
            self.cancel.is_stopping()
        } else {
            self.cancel.is_cancelled()
        }
    }

    pub(crate) async fn run(mut self) -> RunOutcome {
        let mut set: JoinSet<(u32, EntryResult)> = JoinSet::new();
        let mut running = 0usize;
        let mut stop_starting = false;
        let mut failed = false;
        let mut cancelled = false;
        loop {
            // A cancel that arrived together with an entry's end (the select below takes the
            // end first) must still stop new starts.
            if !stop_starting && self.stopping() {
                cancelled = true;
                stop_starting = true;
            }
            if !stop_starting {
                while running < self.limit {
                    let Some(Reverse((entry, host))) = self.ready.pop() else {
                        break;
                    };
                    let h = host as usize;
                    self.pending[h].pop_front();
                    if self.shared.targets.is_removed(&self.stage.hosts[h]) {
                        // The host left the targeted set: its entries are not run.
                        if let Some(&next) = self.pending[h].front() {
                            self.ready.push(Reverse((next, host)));
                        }
                        let entry = self.stage.entries[entry as usize].clone();
                        not_run(&entry, &self.shared, REMOVED_REASON).await;
                        continue;
                    }
                    self.running_on[h] += 1;
                    running += 1;
                    if (self.running_on[h] as usize) < self.per_host
                        && let Some(&next) = self.pending[h].front()
                    {
                        self.ready.push(Reverse((next, host)));
                    }
                    let planned = self.stage.entries[entry as usize].clone();
                    let shared = self.shared.clone();
                    set.spawn(async move { (host, run_entry(planned, shared).await) });
                }
            }
            if running == 0 {
                break;
            }
            tokio::select! {
                biased;
                joined = set.join_next() => {
                    let Some(joined) = joined else { break };
                    running -= 1;
                    let (host, result) = match joined {
                        Ok(r) => r,
                        // Entry futures catch command panics; a JoinError here means the
                        // runtime is shutting down. Count it as a failure.
                        Err(_) => {
                            failed = true;
                            stop_starting = true;
                            continue;
                        }
                    };
                    let h = host as usize;
                    self.running_on[h] -= 1;
                    if self.running_on[h] as usize + 1 == self.per_host
                        && let Some(&next) = self.pending[h].front() {
                            self.ready.push(Reverse((next, host)));
                        }
                    // Tasks stopped by a second cancel end the stage as cancelled, not failed.
                    let only_cancelled = result
                        .failures
                        .iter()
                        .all(|f| f.outcome == TaskOutcome::Cancelled);
                    self.report.failures.extend(result.failures);
                    self.report.data.extend(result.data);
                    if !result.success {
                        if only_cancelled && self.cancel.is_stopping() {
                            cancelled = true;
                            stop_starting = true;
                        } else {
                            failed = true;
                            // Every host gets its clean-up, whoever failed.
                            stop_starting |= !self.finally;
                        }
                    }
                }
                _ = self.cancel.graceful.cancelled(), if !stop_starting && !self.finally => {
                    cancelled = true;
                    stop_starting = true;
                }
                _ = self.cancel.hard.cancelled(), if !stop_starting && self.finally => {
                    cancelled = true;
                    stop_starting = true;
                }
            }
        }
        if self.stopping() {
            cancelled = true;
        }
        // Everything still queued was never started.
        let reason = if cancelled && !failed {
            "the run was cancelled"
        } else {
            "an earlier task failed"
        };
        for queue in &self.pending {
            for &ei in queue {
                let entry = &self.stage.entries[ei as usize];
                not_run(entry, &self.shared, reason).await;
            }
        }
        if failed {
            RunOutcome::Failed
        } else if cancelled {
            RunOutcome::Cancelled
        } else {
            RunOutcome::Succeeded
        }
    }
}
