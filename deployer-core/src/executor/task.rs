//! Running one entry (a task or a chain): attempts, retries, timeouts, output and outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use serde_json::Value;

use super::{EntryResult, FailedTask, REMOVED_REASON, Shared, error_chain};
use crate::command::ExecContext;
use crate::errors::CommandError;
use crate::events::{EventKind, TaskInfo, TaskOutcome};
use crate::host::{OutputSink, tail_lines};
use crate::plan::{PlannedEntry, PlannedTask};

/// Sends `kind(step)` for every step of `entry` that was (`done`) or was not done by an
/// earlier attempt of the run.
async fn report_steps(
    entry: &PlannedEntry,
    shared: &Shared,
    done: bool,
    kind: impl Fn(TaskInfo) -> EventKind,
) {
    for step in &entry.steps {
        if shared.is_skipped(step.info.id) == done {
            shared
                .emitter
                .note(|| kind(TaskInfo::clone(&step.info)))
                .await;
        }
    }
}

/// Reports every step of `entry` done by an earlier attempt of the run.
pub(crate) async fn done_earlier(entry: &PlannedEntry, shared: &Shared) {
    report_steps(entry, shared, true, |task| EventKind::TaskDoneEarlier {
        task,
    })
    .await;
}

/// Reports every step of `entry` not done earlier as skipped for `reason` without running
/// it: a `finally` entry whose host its points leave out has nothing to do.
pub(crate) async fn skipped(entry: &PlannedEntry, shared: &Shared, reason: &str) {
    report_steps(entry, shared, false, |task| EventKind::TaskFinished {
        task,
        outcome: TaskOutcome::Skipped {
            reason: reason.to_string(),
        },
        duration: std::time::Duration::ZERO,
        attempts: 0,
    })
    .await;
}

/// Reports every step of `entry` that is not already done as dropped: its host failed within
/// the failure budget for `reason`.
pub(crate) async fn dropped(entry: &PlannedEntry, shared: &Shared, reason: &str) {
    report_steps(entry, shared, false, |task| EventKind::TaskDropped {
        task,
        reason: reason.to_string(),
    })
    .await;
}

/// Reports every step of `entry` that is not already done as never run.
pub(crate) async fn not_run(entry: &PlannedEntry, shared: &Shared, reason: &str) {
    report_steps(entry, shared, false, |task| EventKind::TaskNotRun {
        task,
        reason: reason.to_string(),
    })
    .await;
}

pub(crate) async fn run_entry(entry: Arc<PlannedEntry>, shared: Arc<Shared>) -> EntryResult {
    let mut result = EntryResult {
        success: true,
        ..Default::default()
    };
    for step in &entry.steps {
        if shared.is_skipped(step.info.id) {
            continue;
        }
        if shared.targets.is_removed(&step.info.host) {
            shared
                .emitter
                .note(|| EventKind::TaskNotRun {
                    task: TaskInfo::clone(&step.info),
                    reason: REMOVED_REASON.to_string(),
                })
                .await;
            continue;
        }
        if !result.success {
            shared
                .emitter
                .note(|| EventKind::TaskNotRun {
                    task: TaskInfo::clone(&step.info),
                    reason: "an earlier step of its chain failed".to_string(),
                })
                .await;
            continue;
        }
        let (outcome, attempts, data) = run_task(step, &shared).await;
        match &outcome {
            TaskOutcome::Succeeded | TaskOutcome::Skipped { .. } => {
                shared.reach(&step.info.host, step.task.reaches.as_deref());
            }
            _ => {
                result.success = false;
                result.failures.push(FailedTask {
                    task: TaskInfo::clone(&step.info),
                    outcome: outcome.clone(),
                    attempts,
                });
            }
        }
        if let Some(data) = data {
            result.data.push((step.info.id, data));
        }
    }
    result
}

pub(crate) enum Attempt {
    Done(crate::command::Outcome),
    Failed(TaskOutcome),
}

pub(crate) async fn run_task(
    step: &PlannedTask,
    shared: &Shared,
) -> (TaskOutcome, u32, Option<Value>) {
    let started = Instant::now();
    let max_attempts = step.task.retries.unwrap_or(0).saturating_add(1);
    let timeout = step.task.timeout.or(shared.default_timeout);
    let output: OutputSink = if shared.emitter.sinks.is_empty() {
        shared.quiet.clone()
    } else {
        let em = shared.emitter.clone();
        let info = step.info.clone();
        let redactor = shared.redactor.clone();
        Arc::new(move |stream, line: &str| {
            em.emit(|| EventKind::TaskOutput {
                task: TaskInfo::clone(&info),
                stream,
                line: capped_line(&redactor.redact(line)),
            });
        })
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let recorded = shared
            .emitter
            .record(|| EventKind::TaskStarted {
                task: TaskInfo::clone(&step.info),
                attempt,
            })
            .await;
        if let Err(e) = recorded {
            // A task whose start could not be recorded must not run: a resumed run would not
            // know that it might have.
            let outcome = TaskOutcome::Failed {
                message: format!(
                    "not started: cannot record its start in the run journal: {}",
                    error_chain(&*e)
                ),
                exit_status: None,
                stderr_tail: String::new(),
            };
            return finished(shared, step, outcome, started, attempt, None).await;
        }
        let work = async {
            let host = match shared.connector.host(&step.spec).await {
                Ok(h) => h,
                Err(e) => {
                    return Attempt::Failed(failure_from(&CommandError::Remote(e)));
                }
            };
            let ctx = ExecContext {
                host,
                info: step.info.clone(),
                task: step.task.clone(),
                attempt,
                output: output.clone(),
                cancel: shared.hard.clone(),
                run_cancel: shared.graceful.clone(),
                redactor: shared.redactor.clone(),
                run_id: shared.emitter.run_id.clone(),
                emitter: Some(shared.emitter.clone()),
                host_vars: shared.host_vars.clone(),
            };
            match AssertUnwindSafe(step.command.execute(&ctx))
                .catch_unwind()
                .await
            {
                Ok(Ok(outcome)) => Attempt::Done(outcome),
                Ok(Err(e)) => Attempt::Failed(failure_from(&e)),
                Err(panic) => Attempt::Failed(TaskOutcome::Failed {
                    message: format!("command panicked: {}", panic_message(&panic)),
                    exit_status: None,
                    stderr_tail: String::new(),
                }),
            }
        };
        let timed = async {
            match timeout {
                Some(limit) => match tokio::time::timeout(limit, work).await {
                    Ok(a) => a,
                    Err(_) => Attempt::Failed(TaskOutcome::TimedOut { after: limit }),
                },
                None => work.await,
            }
        };
        let result = tokio::select! {
            biased;
            _ = shared.hard.cancelled() => Attempt::Failed(TaskOutcome::Cancelled),
            a = timed => a,
        };
        // Nothing a command reports may show a secret of the plan (events, report, store).
        let result = match result {
            Attempt::Done(mut outcome) => {
                if let Some(reason) = &mut outcome.skipped {
                    shared.redactor.in_place(reason);
                }
                if let Some(data) = &mut outcome.data {
                    shared.redactor.value(data);
                }
                Attempt::Done(outcome)
            }
            Attempt::Failed(outcome) => Attempt::Failed(shared.redactor.outcome(outcome)),
        };
        match result {
            Attempt::Done(outcome) => {
                let task_outcome = match outcome.skipped {
                    Some(reason) => TaskOutcome::Skipped { reason },
                    None if step.rolls_back => TaskOutcome::RolledBack,
                    None => TaskOutcome::Succeeded,
                };
                return finished(shared, step, task_outcome, started, attempt, outcome.data).await;
            }
            Attempt::Failed(outcome) => {
                let retry = attempt < max_attempts
                    && !matches!(outcome, TaskOutcome::Cancelled)
                    && !shared.hard.is_cancelled();
                if retry {
                    shared
                        .emitter
                        .note(|| EventKind::TaskRetrying {
                            task: TaskInfo::clone(&step.info),
                            attempt,
                            error: outcome.to_string(),
                        })
                        .await;
                    if !shared.retry_delay.is_zero() {
                        tokio::select! {
                            _ = shared.hard.cancelled() => {}
                            _ = tokio::time::sleep(shared.retry_delay) => {}
                        }
                    }
                    if !shared.hard.is_cancelled() {
                        continue;
                    }
                }
                let outcome = if shared.hard.is_cancelled() && retry {
                    TaskOutcome::Cancelled
                } else {
                    outcome
                };
                return finished(shared, step, outcome, started, attempt, None).await;
            }
        }
    }
}

/// Records the end of `step`'s last attempt and returns what `run_task` returns.
async fn finished(
    shared: &Shared,
    step: &PlannedTask,
    outcome: TaskOutcome,
    started: Instant,
    attempt: u32,
    data: Option<Value>,
) -> (TaskOutcome, u32, Option<Value>) {
    let duration = started.elapsed();
    shared
        .emitter
        .note(|| EventKind::TaskFinished {
            task: TaskInfo::clone(&step.info),
            outcome: outcome.clone(),
            duration,
            attempts: attempt,
        })
        .await;
    (outcome, attempt, data)
}

/// The longest output line a [`EventKind::TaskOutput`] event carries: a longer line (a command
/// writing megabytes without a newline) is cut there and marked, so one line cannot make every
/// sink copy and hold megabytes. What the command returns is not affected.
pub(crate) const MAX_OUTPUT_LINE: usize = 64 * 1024;

pub(crate) fn capped_line(line: &str) -> String {
    if line.len() <= MAX_OUTPUT_LINE {
        return line.to_string();
    }
    let mut cut = MAX_OUTPUT_LINE;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… [{} more bytes cut]", &line[..cut], line.len() - cut)
}

pub(crate) fn failure_from(e: &CommandError) -> TaskOutcome {
    if let CommandError::Cancelled { .. } = e {
        return TaskOutcome::Cancelled;
    }
    TaskOutcome::Failed {
        message: error_chain(e),
        exit_status: e.exit_status(),
        stderr_tail: tail_lines(e.stderr(), 20),
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
