//! The job queue of one stage: entries start in order under the stage and per-host limits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinSet;

use super::{
    CancelHandle, FailedTask, REMOVED_REASON, RunReport, Shared, dropped, not_run, run_entry,
};
use crate::events::{EventKind, RunOutcome, TaskId, TaskOutcome};
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
    /// The stage's index.
    pub(crate) index: usize,
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
    /// The stage's hosts that failed here.
    pub(crate) failed_here: HashSet<usize>,
    /// Hosts that are down: failed, dropped or removed (for `min_hosts_up`).
    pub(crate) down: Vec<bool>,
    pub(crate) down_count: usize,
    /// Hosts with work of the stage under way (started, not all done), and how many.
    pub(crate) in_flight: Vec<bool>,
    pub(crate) active: usize,
    /// Hosts `min_hosts_up` keeps from starting (their next entry), back in `ready` when a
    /// place frees: a full window costs nothing per finished entry.
    pub(crate) parked: Vec<Reverse<(u32, u32)>>,
}

impl<'a> JobQueue<'a> {
    pub(crate) fn new(
        index: usize,
        stage: &'a PlannedStage,
        limit: usize,
        shared: Arc<Shared>,
        cancel: &'a CancelHandle,
        report: &'a mut RunReport,
    ) -> Self {
        let mut pending = vec![VecDeque::new(); stage.hosts.len()];
        let only = shared.only.filter(|(s, _)| *s == index).map(|(_, e)| e);
        for (ei, entry) in stage.entries.iter().enumerate() {
            if only.is_some_and(|e| e != ei) {
                continue;
            }
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
        let down: Vec<bool> = stage
            .hosts
            .iter()
            .map(|h| shared.targets.is_removed(h) || shared.dropped_reason(h).is_some())
            .collect();
        JobQueue {
            index,
            down_count: down.iter().filter(|d| **d).count(),
            down,
            in_flight: vec![false; stage.hosts.len()],
            active: 0,
            parked: Vec::new(),
            failed_here: HashSet::new(),
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

    /// How many more hosts may have work under way without leaving fewer than
    /// `min_hosts_up` up (unbounded without it).
    fn window(&self) -> usize {
        if self.shared.only.is_some() {
            // One entry of a distributed run: the store held `min_hosts_up` when it was
            // claimed.
            return usize::MAX;
        }
        match self.stage.min_hosts_up {
            // Clean-up reaches every host: the window bounds it but never closes.
            Some(min) if self.finally => self.stage.hosts.len().saturating_sub(min).max(1),
            Some(min) => self
                .stage
                .hosts
                .len()
                .saturating_sub(min)
                .saturating_sub(self.down_count),
            None => usize::MAX,
        }
    }

    /// Whether host `h` may start an entry under `min_hosts_up`.
    fn admits(&self, h: usize) -> bool {
        self.in_flight[h] || self.active < self.window()
    }

    /// Frees host `h`'s place in the window once it has nothing running or pending; the
    /// parked hosts may then try again.
    fn settle(&mut self, h: usize) {
        if self.in_flight[h] && self.running_on[h] == 0 && self.pending[h].is_empty() {
            self.in_flight[h] = false;
            self.active -= 1;
            self.ready.extend(self.parked.drain(..));
        }
    }

    /// Marks host `h` down (failed or dropped).
    fn mark_down(&mut self, h: usize) {
        if !self.down[h] {
            self.down[h] = true;
            self.down_count += 1;
        }
    }

    /// A host of an ordinary stage failed: drops it when the failure budget allows (its
    /// pending entries are reported dropped) and returns true; false when the run must stop.
    async fn host_failed(&mut self, h: usize, failures: &[FailedTask]) -> bool {
        if self.shared.only.is_some() {
            // One entry of a distributed run: the store counts the failure against the
            // budgets and `min_hosts_up` (the entry ends failed either way).
            return false;
        }
        let host = self.stage.hosts[h].clone();
        if self.shared.dropped_reason(&host).is_some() {
            // Another entry of a host already dropped.
            return true;
        }
        self.failed_here.insert(h);
        self.mark_down(h);
        let (run_failed, run_over) = self.shared.count_failed_host(&host);
        let budget = if self.stage.budget.is_set() {
            self.stage.budget
        } else {
            self.shared.run_budget
        };
        let stage_over = budget.exceeded(self.failed_here.len(), self.stage.hosts.len());
        let below_min = self
            .stage
            .min_hosts_up
            .is_some_and(|min| self.stage.hosts.len() - self.down_count < min);
        if run_over || stage_over || below_min {
            return false;
        }
        let reason = match failures.first() {
            Some(f) => {
                let outcome = f.outcome.to_string();
                let first = outcome.lines().next().unwrap_or_default();
                format!("{} {} {}", f.task.id, f.task.command, first)
            }
            None => "an entry failed".to_string(),
        };
        let reason = self.shared.redactor.redact(&reason).into_owned();
        self.shared.drop_host(&host, &self.stage.name, &reason);
        self.shared
            .emitter
            .note(|| EventKind::HostDropped {
                host: host.clone(),
                stage: self.index,
                reason: reason.clone(),
                failed_hosts: run_failed,
                budget: budget.to_string(),
            })
            .await;
        let queue = std::mem::take(&mut self.pending[h]);
        for ei in queue {
            let entry = self.stage.entries[ei as usize].clone();
            dropped(&entry, &self.shared, &reason).await;
        }
        self.settle(h);
        true
    }

    pub(crate) async fn run(mut self) -> RunOutcome {
        let mut set: JoinSet<(u32, EntryResult)> = JoinSet::new();
        let mut running = 0usize;
        let mut stop_starting = false;
        let mut failed = false;
        let mut cancelled = false;
        let mut degraded = false;
        // Set when `min_hosts_up` leaves no host free to work on.
        let mut held: Option<String> = None;
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
                    if self.pending[h].front() != Some(&entry) {
                        // Its host was dropped meanwhile.
                        continue;
                    }
                    if !self.admits(h) {
                        self.parked.push(Reverse((entry, host)));
                        continue;
                    }
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
                    if !self.in_flight[h] {
                        self.in_flight[h] = true;
                        self.active += 1;
                    }
                    if (self.running_on[h] as usize) < self.per_host
                        && let Some(&next) = self.pending[h].front()
                    {
                        self.ready.push(Reverse((next, host)));
                    }
                    let planned = self.stage.entries[entry as usize].clone();
                    let shared = self.shared.clone();
                    set.spawn(async move { (host, run_entry(planned, shared).await) });
                }
                if !self.parked.is_empty() && running == 0 {
                    // Nothing runs and no host may start: `min_hosts_up` holds the rest.
                    let min = self.stage.min_hosts_up.unwrap_or(0);
                    held = Some(format!(
                        "min_hosts_up {min}: {} of the stage's {} hosts are down, so no other host may be taken down",
                        self.down_count,
                        self.stage.hosts.len()
                    ));
                    failed = true;
                    stop_starting = true;
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
                    self.settle(h);
                    // Tasks stopped by a second cancel (or giving up on a first one, like a
                    // manual step waiting for a person) end the stage as cancelled, not failed.
                    let only_cancelled = result
                        .failures
                        .iter()
                        .all(|f| f.outcome == TaskOutcome::Cancelled);
                    let success = result.success;
                    let within_budget = if success
                        || self.finally
                        || stop_starting
                        || (only_cancelled && self.cancel.is_cancelled())
                    {
                        false
                    } else {
                        self.host_failed(h, &result.failures).await
                    };
                    self.report.failures.extend(result.failures);
                    self.report.data.extend(result.data);
                    if within_budget {
                        degraded = true;
                    } else if !success {
                        if only_cancelled && self.cancel.is_cancelled() {
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
        let reason = if let Some(held) = &held {
            held.as_str()
        } else if cancelled && !failed {
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
        } else if degraded {
            RunOutcome::Degraded
        } else {
            RunOutcome::Succeeded
        }
    }
}
