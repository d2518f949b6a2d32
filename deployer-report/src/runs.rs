//! Run listings: `deploy runs list` and `deploy runs show`.

use std::fmt::Write as _;

use deployer_core::{HostRecord, RunRecord, TaskRecord, TaskState};

fn ts(t: Option<std::time::SystemTime>) -> String {
    match t {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "-".to_string(),
    }
}

/// The table of `deploy runs list`.
pub fn render_runs(runs: &[RunRecord]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<36}  {:<9}  {:<20}  {:<20}  {:<10}  NAME",
        "ID", "STATE", "CREATED", "FINISHED", "BY"
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{:<36}  {:<9}  {:<20}  {:<20}  {:<10}  {}",
            r.id.as_str(),
            r.state.as_str(),
            ts(Some(r.created_ts)),
            ts(r.finish_ts),
            r.started_by,
            r.name
        );
    }
    s
}

/// The report of `deploy runs show`: the run, a table per host, a table per task.
pub fn render_run(run: &RunRecord, hosts: &[HostRecord], tasks: &[TaskRecord]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "run       {}", run.id);
    let _ = writeln!(s, "name      {}", run.name);
    let _ = writeln!(s, "state     {}", run.state);
    let _ = writeln!(s, "source    {}", run.source);
    let _ = writeln!(s, "by        {}", run.started_by);
    let _ = writeln!(s, "created   {}", ts(Some(run.created_ts)));
    let _ = writeln!(s, "started   {}", ts(run.started_ts));
    let _ = writeln!(s, "finished  {}", ts(run.finish_ts));
    if let Some(owner) = &run.owner {
        let _ = writeln!(
            s,
            "driven by {owner} (lease until {})",
            ts(run.lease_expires)
        );
    }
    let width = hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        s,
        "\n{:<width$}  {:<8}  {:>4}  {:>6}  {:>7}",
        "HOST", "STATE", "OK", "FAILED", "PENDING"
    );
    for h in hosts {
        let mine = tasks.iter().filter(|t| t.host == h.host);
        let (mut ok, mut failed, mut pending) = (0, 0, 0);
        for t in mine {
            if t.state.is_done() {
                ok += 1;
            } else if matches!(
                t.state,
                TaskState::Failed | TaskState::TimedOut | TaskState::Cancelled
            ) {
                failed += 1;
            } else {
                pending += 1;
            }
        }
        let _ = writeln!(
            s,
            "{:<width$}  {:<8}  {ok:>4}  {failed:>6}  {pending:>7}",
            h.host,
            h.state.as_str()
        );
    }
    let _ = writeln!(
        s,
        "\n{:<24}  {:<width$}  {:<20}  {:<9}  {:>3}  {:>4}  ERROR",
        "TASK", "HOST", "COMMAND", "STATE", "TRY", "EXIT"
    );
    for t in tasks {
        let _ = writeln!(
            s,
            "{:<24}  {:<width$}  {:<20}  {:<9}  {:>3}  {:>4}  {}",
            t.id.to_string(),
            t.host,
            t.command,
            t.state.as_str(),
            t.attempts,
            t.exit_status
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            t.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    s
}
