//! What the pages show, read from the store: one set of serde types for HTML and JSON.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use deployer_core::{
    Approval, ApprovalState, HostState, RunId, RunRecord, RunState, RunStore, StoreError,
    TaskCounts, TaskRecord, TaskState, Tasklist,
};
use serde::Serialize;

/// `2025-01-31T10:00:00Z`.
pub(crate) fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ts_opt(t: Option<SystemTime>) -> Option<String> {
    t.map(ts)
}

/// A duration in whole seconds, as people read it (`1m 20s`).
pub(crate) fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn secs(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

/// The filters of the runs list.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RunFilter {
    pub state: Option<RunState>,
    pub user: Option<String>,
    pub name: Option<String>,
    #[serde(serialize_with = "ser_ts_opt")]
    pub since: Option<SystemTime>,
    #[serde(serialize_with = "ser_ts_opt")]
    pub until: Option<SystemTime>,
}

fn ser_ts_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&ts(*t)),
        None => s.serialize_none(),
    }
}

/// One run in the list.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunRow {
    pub id: String,
    pub name: String,
    pub source: String,
    pub started_by: String,
    pub state: RunState,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub duration_secs: Option<f64>,
    pub hosts: usize,
    pub counts: TaskCounts,
    pub counts_text: String,
}

/// A run that cannot be read back.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Unreadable {
    pub id: String,
    pub problem: String,
}

/// A page of the runs list.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunsPage {
    pub runs: Vec<RunRow>,
    pub unreadable: Vec<Unreadable>,
    pub page: usize,
    pub per_page: usize,
    pub more: bool,
    pub filter: RunFilter,
}

fn duration_of(r: &RunRecord) -> Option<Duration> {
    let start = r.started_ts?;
    let end = r.finish_ts.unwrap_or_else(SystemTime::now);
    end.duration_since(start).ok()
}

fn summary_row(r: &deployer_core::RunSummary) -> RunRow {
    RunRow {
        id: r.id.to_string(),
        name: r.name.clone(),
        source: r.source.clone(),
        started_by: r.started_by.clone(),
        state: r.state,
        created: ts(r.created_ts),
        started: ts_opt(r.started_ts),
        finished: ts_opt(r.finish_ts),
        duration_secs: r.duration(SystemTime::now()).map(secs),
        hosts: r.hosts,
        counts: r.counts,
        counts_text: counts_text(&r.counts, r.state.is_finished()),
    }
}

/// The counts in words; before a run finishes, its tasks not run yet are still to do
/// (`3 ok, 4 to do`), not "not run".
pub(crate) fn counts_text(counts: &TaskCounts, finished: bool) -> String {
    if finished || counts.not_run == 0 {
        return counts.to_string();
    }
    let mut ended = *counts;
    ended.not_run = 0;
    if ended.total() == 0 {
        format!("{} to do", counts.not_run)
    } else {
        format!("{ended}, {} to do", counts.not_run)
    }
}

/// A page of runs, newest first, through the store's query (one more than a page is asked
/// for, to know whether there is a next page).
pub(crate) async fn runs_page(
    store: &dyn RunStore,
    filter: RunFilter,
    page: usize,
    per_page: usize,
) -> Result<RunsPage, StoreError> {
    let page = page.max(1);
    let query = deployer_core::RunQuery {
        state: filter.state,
        started_by: filter.user.clone(),
        name: filter.name.clone(),
        since: filter.since,
        until: filter.until,
        offset: (page - 1) * per_page,
        limit: per_page + 1,
    };
    let found = store.find_runs(&query).await?;
    let more = found.len() > per_page;
    let mut runs = Vec::new();
    let mut unreadable = Vec::new();
    for r in found.into_iter().take(per_page) {
        match r {
            Ok(summary) => runs.push(summary_row(&summary)),
            Err(u) => unreadable.push(Unreadable {
                id: u.id,
                problem: u.problem,
            }),
        }
    }
    Ok(RunsPage {
        runs,
        unreadable,
        page,
        per_page,
        more,
        filter,
    })
}

/// What a cell of the host grid shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CellState {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
    Dropped,
}

impl CellState {
    pub const ALL: [CellState; 6] = [
        CellState::Pending,
        CellState::Running,
        CellState::Done,
        CellState::Failed,
        CellState::Skipped,
        CellState::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Pending => "pending",
            CellState::Running => "running",
            CellState::Done => "done",
            CellState::Failed => "failed",
            CellState::Skipped => "skipped",
            CellState::Dropped => "dropped",
        }
    }
}

/// Counts of a group of tasks (a stage, or one host within a stage) by what they show.
#[derive(Debug, Clone, Copy, Default)]
struct Agg {
    pending: usize,
    running: usize,
    done: usize,
    failed: usize,
    skipped: usize,
    dropped: usize,
}

impl Agg {
    fn add(&mut self, s: TaskState) {
        match s {
            TaskState::Pending => self.pending += 1,
            TaskState::Running => self.running += 1,
            TaskState::Succeeded | TaskState::RolledBack => self.done += 1,
            TaskState::Failed | TaskState::TimedOut | TaskState::Cancelled => self.failed += 1,
            TaskState::Skipped | TaskState::NotRun => self.skipped += 1,
            TaskState::Dropped => self.dropped += 1,
        }
    }

    fn total(&self) -> usize {
        self.pending + self.running + self.done + self.failed + self.skipped + self.dropped
    }

    fn finished(&self) -> usize {
        self.total() - self.pending - self.running
    }

    fn state(&self) -> CellState {
        if self.running > 0 {
            CellState::Running
        } else if self.failed > 0 {
            CellState::Failed
        } else if self.dropped > 0 {
            CellState::Dropped
        } else if self.pending > 0 && self.done + self.skipped > 0 {
            CellState::Running
        } else if self.pending > 0 {
            CellState::Pending
        } else if self.done > 0 {
            CellState::Done
        } else {
            CellState::Skipped
        }
    }
}

/// One host's cell in a stage row.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Cell {
    pub host: String,
    pub state: CellState,
    pub done: usize,
    pub total: usize,
}

/// A stage row.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StageView {
    pub index: usize,
    pub name: String,
    pub finally: bool,
    pub state: CellState,
    pub done: usize,
    pub total: usize,
    pub cells: Vec<Cell>,
}

/// A run-level host.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostView {
    pub host: String,
    pub state: HostState,
    pub updated: String,
}

/// A task that failed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Failure {
    pub task: String,
    pub stage: String,
    pub host: String,
    pub command: String,
    pub tag: Option<String>,
    /// The task's arguments as stored: inline secrets are `{"secret": "***"}`.
    pub args: serde_json::Value,
    pub state: TaskState,
    pub attempts: u32,
    pub exit_status: Option<i32>,
    pub error: Option<String>,
    pub stderr_tail: Option<String>,
}

/// Done/total.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct Progress {
    pub done: usize,
    pub total: usize,
}

/// A cancel request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct CancelView {
    pub by: String,
    pub at: String,
}

/// What a run's page and its event stream share.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunCore {
    pub id: String,
    pub name: String,
    pub source: String,
    pub started_by: String,
    pub state: RunState,
    pub finished: bool,
    pub created: String,
    pub started: Option<String>,
    pub finish: Option<String>,
    pub duration_secs: Option<f64>,
    pub counts: TaskCounts,
    pub counts_text: String,
    pub progress: Progress,
    /// Estimated time left, from the history of the run's task keys; `None` when finished
    /// or when a key has no history.
    pub eta_secs: Option<f64>,
    pub stages: Vec<StageView>,
    pub hosts: Vec<HostView>,
    pub failures: Vec<Failure>,
    pub failures_total: usize,
    pub cancel_requested: Option<CancelView>,
    /// Where the run stands with workers when it was submitted to them; `None` otherwise.
    pub work: Option<WorkView>,
}

/// A worker and the entries of the run it holds now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct WorkerClaims {
    pub worker: String,
    pub entries: usize,
}

/// A submitted run's work status ([`deployer_core::WorkStatus`]) as the run page shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct WorkView {
    pub pending: usize,
    pub ended: usize,
    pub claimed: Vec<WorkerClaims>,
    pub unserved_zones: Vec<String>,
    pub served_zones: Vec<String>,
    pub aborting: bool,
    pub stopped: Option<String>,
    /// A notice per unserved zone: `hosts in zone eu have no live worker (zones served: us)`.
    pub waiting: Vec<String>,
}

impl WorkView {
    pub(crate) fn of(w: deployer_core::WorkStatus) -> WorkView {
        WorkView {
            waiting: w.waiting(),
            pending: w.pending,
            ended: w.ended,
            claimed: w
                .claimed
                .into_iter()
                .map(|(worker, entries)| WorkerClaims { worker, entries })
                .collect(),
            unserved_zones: w.unserved_zones,
            served_zones: w.served_zones,
            aborting: w.aborting,
            stopped: w.stopped,
        }
    }
}

/// The most failures a page lists (the rest are on the host pages).
pub(crate) const FAILURES_SHOWN: usize = 100;

/// The stored task of `id` in `tasklist`.
pub(crate) fn task_of(
    tasklist: &Tasklist,
    id: deployer_core::TaskId,
) -> Option<&deployer_core::Task> {
    let entry = tasklist.stages.get(id.stage)?.tasks.get(id.entry)?;
    entry.tasks().get(id.step.unwrap_or(0))
}

/// The arguments of `task` as stored (secrets redacted by the store).
pub(crate) fn args_of(tasklist: &Tasklist, t: &TaskRecord) -> serde_json::Value {
    task_of(tasklist, t.id)
        .map(|task| serde_json::Value::Object(task.args.clone()))
        .unwrap_or(serde_json::Value::Null)
}

fn cancel_view(c: deployer_core::CancelRequest) -> CancelView {
    CancelView {
        by: c.by,
        at: ts(c.ts),
    }
}

/// The cancel request of a run.
pub(crate) async fn cancel_request(
    store: &dyn RunStore,
    id: &RunId,
) -> Result<Option<CancelView>, StoreError> {
    Ok(store.cancel_request(id).await?.map(cancel_view))
}

/// Asks the run's controller to cancel it (the first request stands).
pub(crate) async fn request_cancel(
    store: &dyn RunStore,
    id: &RunId,
    by: &str,
) -> Result<CancelView, StoreError> {
    store.request_cancel(id, by).await.map(cancel_view)
}

/// Reads a run and builds what its page shows: tasks are grouped once, by stage and host.
pub(crate) async fn run_core(store: &dyn RunStore, id: &RunId) -> Result<RunCore, StoreError> {
    let record = store.run(id).await?;
    let hosts = store.hosts(id).await?;
    let tasks = store.tasks(id).await?;
    let history = history(store, &record, &tasks).await?;
    let cancel = cancel_request(store, id).await?;
    let work = store.submitted_work(id).await?.map(WorkView::of);
    let mut core = build_core(record, hosts, &tasks, &history, cancel);
    core.work = work;
    Ok(core)
}

/// The average durations of the history keys of the tasks still to finish.
async fn history(
    store: &dyn RunStore,
    record: &RunRecord,
    tasks: &[TaskRecord],
) -> Result<HashMap<String, Option<Duration>>, StoreError> {
    let mut out: HashMap<String, Option<Duration>> = HashMap::new();
    if record.state.is_finished() {
        return Ok(out);
    }
    for t in tasks {
        if matches!(t.state, TaskState::Pending | TaskState::Running)
            && !out.contains_key(&t.history_key)
        {
            let avg = store.average_duration(&t.history_key).await?;
            out.insert(t.history_key.clone(), avg);
        }
    }
    Ok(out)
}

pub(crate) fn build_core(
    record: RunRecord,
    hosts: Vec<deployer_core::HostRecord>,
    tasks: &[TaskRecord],
    history: &HashMap<String, Option<Duration>>,
    cancel: Option<CancelView>,
) -> RunCore {
    let stages_in = &record.tasklist.stages;
    // Hosts in the order they were first targeted; a task's host that has no record yet goes
    // after them.
    let mut order: HashMap<&str, usize> = HashMap::with_capacity(hosts.len());
    for (i, h) in hosts.iter().enumerate() {
        order.insert(h.host.as_str(), i);
    }
    let stage_count = stages_in
        .len()
        .max(tasks.iter().map(|t| t.id.stage + 1).max().unwrap_or(0));
    let mut per_stage: Vec<(Agg, HashMap<&str, Agg>)> = vec![Default::default(); stage_count];
    // Remaining work per stage for the estimate: (summed average, entries left, unknown).
    let mut remaining: Vec<(Duration, std::collections::HashSet<usize>, bool)> =
        vec![Default::default(); stage_count];
    let mut run_agg = Agg::default();
    let mut failures = Vec::new();
    let mut failures_total = 0;
    for t in tasks {
        let (stage, cells) = &mut per_stage[t.id.stage];
        stage.add(t.state);
        run_agg.add(t.state);
        cells.entry(t.host.as_str()).or_default().add(t.state);
        if matches!(t.state, TaskState::Pending | TaskState::Running) {
            let r = &mut remaining[t.id.stage];
            r.1.insert(t.id.entry);
            match history.get(&t.history_key).copied().flatten() {
                Some(d) => r.0 += d,
                None => r.2 = true,
            }
        }
        if matches!(
            t.state,
            TaskState::Failed | TaskState::TimedOut | TaskState::Cancelled
        ) {
            failures_total += 1;
            if failures.len() < FAILURES_SHOWN {
                failures.push(Failure {
                    task: t.id.to_string(),
                    stage: stages_in
                        .get(t.id.stage)
                        .map(|s| s.name.clone())
                        .unwrap_or_default(),
                    host: t.host.clone(),
                    command: t.command.clone(),
                    tag: t.tag.clone(),
                    args: args_of(&record.tasklist, t),
                    state: t.state,
                    attempts: t.attempts,
                    exit_status: t.exit_status,
                    error: t.error.clone(),
                    stderr_tail: t.stderr_tail.clone(),
                });
            }
        }
    }
    let stages = per_stage
        .into_iter()
        .enumerate()
        .map(|(index, (agg, cells))| {
            let mut cells: Vec<(&str, Agg)> = cells.into_iter().collect();
            cells.sort_by_key(|(h, _)| (order.get(h).copied().unwrap_or(usize::MAX), *h));
            let stage = stages_in.get(index);
            StageView {
                index,
                name: stage.map(|s| s.name.clone()).unwrap_or_default(),
                finally: stage.is_some_and(|s| s.finally.is_some()),
                state: agg.state(),
                done: agg.finished(),
                total: agg.total(),
                cells: cells
                    .into_iter()
                    .map(|(host, a)| Cell {
                        host: host.to_string(),
                        state: a.state(),
                        done: a.finished(),
                        total: a.total(),
                    })
                    .collect(),
            }
        })
        .collect();
    let eta_secs = if record.state.is_finished() {
        None
    } else {
        let mut total = Duration::ZERO;
        let mut known = true;
        for (index, (sum, entries, unknown)) in remaining.iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            if *unknown {
                known = false;
                break;
            }
            let concurrency = stages_in.get(index).map_or(1, |s| s.concurrency);
            let lanes = concurrency.min(entries.len()).max(1) as u32;
            total += *sum / lanes;
        }
        known.then(|| secs(total))
    };
    let counts = TaskCounts::of_records(&record, tasks);
    RunCore {
        id: record.id.to_string(),
        name: record.name.clone(),
        source: record.source.clone(),
        started_by: record.started_by.clone(),
        state: record.state,
        finished: record.state.is_finished(),
        created: ts(record.created_ts),
        started: ts_opt(record.started_ts),
        finish: ts_opt(record.finish_ts),
        duration_secs: duration_of(&record).map(secs),
        counts,
        counts_text: counts_text(&counts, record.state.is_finished()),
        progress: Progress {
            done: run_agg.finished(),
            total: run_agg.total(),
        },
        eta_secs,
        stages,
        hosts: hosts
            .into_iter()
            .map(|h| HostView {
                host: h.host,
                state: h.state,
                updated: ts(h.updated_ts),
            })
            .collect(),
        failures,
        failures_total,
        cancel_requested: cancel,
        work: None,
    }
}

/// An approval as the pages show it, with what the viewer may do.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ApprovalView {
    pub run: String,
    pub run_name: Option<String>,
    pub step: String,
    pub message: String,
    pub target: Option<String>,
    pub approvers: String,
    pub four_eyes: bool,
    pub started_by: String,
    pub state: ApprovalState,
    pub requested: String,
    pub expires: Option<String>,
    pub decision: Option<DecisionView>,
    pub outcome: String,
    /// Whether the viewer may decide it now.
    pub can_decide: bool,
    /// Why not, when they are logged in and it is pending.
    pub refusal: Option<String>,
}

/// A decision.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DecisionView {
    pub by: String,
    pub at: String,
    pub approved: bool,
    pub comment: Option<String>,
}

pub(crate) fn approval_view(a: &Approval, run_name: Option<String>) -> ApprovalView {
    let r = &a.request;
    ApprovalView {
        run: r.run.to_string(),
        run_name,
        step: r.step.clone(),
        message: r.message.clone(),
        target: r.target.clone(),
        approvers: r.approvers.to_string(),
        four_eyes: r.four_eyes,
        started_by: r.started_by.clone(),
        state: a.state(SystemTime::now()),
        requested: ts(a.requested_ts),
        expires: ts_opt(r.expires_ts),
        decision: a.decision.as_ref().map(|d| DecisionView {
            by: d.by.clone(),
            at: ts(d.at),
            approved: d.approved,
            comment: d.comment.clone(),
        }),
        outcome: a.outcome_message(),
        can_decide: false,
        refusal: None,
    }
}

/// One task of a host in a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostTask {
    pub task: String,
    pub stage: String,
    pub command: String,
    pub tag: Option<String>,
    pub args: serde_json::Value,
    pub state: TaskState,
    pub attempts: u32,
    pub started: Option<String>,
    pub duration_secs: Option<f64>,
    pub exit_status: Option<i32>,
    pub error: Option<String>,
    pub stderr_tail: Option<String>,
    pub output_tail: Option<String>,
    /// Which worker last recorded it (a distributed run); `None` when a controller drove it.
    pub worker: Option<String>,
}

/// A host within one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunHostView {
    pub run: String,
    pub run_name: String,
    pub run_state: RunState,
    pub host: String,
    pub state: Option<HostState>,
    pub tasks: Vec<HostTask>,
}

pub(crate) async fn run_host(
    store: &dyn RunStore,
    id: &RunId,
    host: &str,
) -> Result<Option<RunHostView>, StoreError> {
    let record = store.run(id).await?;
    let state = store
        .hosts(id)
        .await?
        .into_iter()
        .find(|h| h.host == host)
        .map(|h| h.state);
    let tasks: Vec<HostTask> = store
        .host_tasks(id, host)
        .await?
        .into_iter()
        .map(|t| HostTask {
            task: t.id.to_string(),
            stage: record
                .tasklist
                .stages
                .get(t.id.stage)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            command: t.command.clone(),
            tag: t.tag.clone(),
            args: args_of(&record.tasklist, &t),
            state: t.state,
            attempts: t.attempts,
            started: ts_opt(t.started_ts),
            duration_secs: t.duration.map(secs),
            exit_status: t.exit_status,
            error: t.error.clone(),
            stderr_tail: t.stderr_tail.clone(),
            output_tail: t.output_tail.clone(),
            worker: t.worker.clone(),
        })
        .collect();
    if state.is_none() && tasks.is_empty() {
        return Ok(None);
    }
    Ok(Some(RunHostView {
        run: record.id.to_string(),
        run_name: record.name,
        run_state: record.state,
        host: host.to_string(),
        state,
        tasks,
    }))
}

/// A host in one run of its history.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostRunView {
    pub run: String,
    pub name: String,
    pub source: String,
    pub started_by: String,
    pub run_state: RunState,
    pub host_state: HostState,
    pub created: String,
    pub updated: String,
    pub finished: Option<String>,
}

/// A host across runs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostPage {
    pub host: String,
    pub runs: Vec<HostRunView>,
}

/// The runs that targeted `host`, newest first.
pub(crate) async fn host_page(
    store: &dyn RunStore,
    host: &str,
    limit: usize,
) -> Result<HostPage, StoreError> {
    let runs = store
        .host_history(host, limit)
        .await?
        .into_iter()
        .map(|r| HostRunView {
            run: r.run.to_string(),
            name: r.name,
            source: r.source,
            started_by: r.started_by,
            run_state: r.run_state,
            host_state: r.host_state,
            created: ts(r.created_ts),
            updated: ts(r.updated_ts),
            finished: ts_opt(r.finish_ts),
        })
        .collect();
    Ok(HostPage {
        host: host.to_string(),
        runs,
    })
}

#[cfg(test)]
mod counts_tests {
    use deployer_core::{TaskCategory, TaskCounts};

    #[test]
    fn an_unfinished_run_has_tasks_to_do_not_tasks_not_run() {
        let mut c = TaskCounts::default();
        c.add(TaskCategory::Succeeded);
        for _ in 0..6 {
            c.add(TaskCategory::NotRun);
        }
        assert_eq!(super::counts_text(&c, false), "1 ok, 6 to do");
        assert_eq!(super::counts_text(&c, true), "1 ok, 6 not run");
        let mut pending = TaskCounts::default();
        pending.add(TaskCategory::NotRun);
        assert_eq!(super::counts_text(&pending, false), "1 to do");
    }
}
