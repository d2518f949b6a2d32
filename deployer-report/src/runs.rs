//! Run listings: `deploy runs list` and `deploy runs show`.

use std::fmt::Write as _;

use deployer_core::{
    Approval, HostRecord, ListedRun, RunRecord, TaskCategory, TaskCounts, TaskRecord, WorkStatus,
};

fn ts(t: Option<std::time::SystemTime>) -> String {
    match t {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "-".to_string(),
    }
}

/// The table of `deploy runs list`: each run with what became of its tasks (the counts of
/// [`TaskCounts::of_records`], `nothing to do` for a run without tasks); a stored run that
/// cannot be read back is listed in its place, marked `UNREADABLE` with what is wrong.
///
/// ```
/// use deployer_core::*;
/// use deployer_report::render_runs;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let plan = Plan::build(&Tasklist::new("empty"), &CommandRegistry::new()).unwrap();
/// store.create_run(NewRun::from_plan(&plan, "test", "alice")).await.unwrap();
/// let listed = store.list_runs(10).await.unwrap();
/// let text = render_runs(&[(listed[0].clone(), Some(TaskCounts::default()))]);
/// assert!(text.contains("alice"), "{text}");
/// assert!(text.contains("nothing to do"), "{text}");
/// # });
/// ```
pub fn render_runs(runs: &[(ListedRun, Option<TaskCounts>)]) -> String {
    let mut s = String::new();
    let name_width = runs
        .iter()
        .filter_map(|(r, _)| r.record())
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 40);
    let _ = writeln!(
        s,
        "{:<36}  {:<9}  {:<20}  {:<20}  {:<10}  {:<name_width$}  TASKS",
        "ID", "STATE", "CREATED", "FINISHED", "BY", "NAME"
    );
    for (listed, counts) in runs {
        match listed {
            ListedRun::Run(r) => {
                let _ = writeln!(
                    s,
                    "{:<36}  {:<9}  {:<20}  {:<20}  {:<10}  {:<name_width$}  {}",
                    r.id.as_str(),
                    r.state.as_str(),
                    ts(Some(r.created_ts)),
                    ts(r.finish_ts),
                    r.started_by,
                    r.name,
                    counts.map(|c| c.to_string()).unwrap_or_else(|| "?".into())
                );
            }
            ListedRun::Unreadable(u) => {
                let problem = u.problem.strip_prefix(&format!("run {}: ", u.id));
                let _ = writeln!(
                    s,
                    "{:<36}  UNREADABLE  {}",
                    u.id,
                    problem.unwrap_or(&u.problem)
                );
            }
        }
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
    let _ = writeln!(s, "tasks     {}", TaskCounts::of_records(run, tasks));
    if run.drives > 1 {
        let _ = writeln!(
            s,
            "attempts  {} (resumed {} time{})",
            run.drives,
            run.drives - 1,
            if run.drives == 2 { "" } else { "s" }
        );
    }
    let dropped: Vec<&HostRecord> = hosts
        .iter()
        .filter(|h| h.state == deployer_core::HostState::Dropped)
        .collect();
    if !dropped.is_empty() {
        let _ = writeln!(
            s,
            "dropped   {} host{} within the failure budget (a resume runs their remaining tasks)",
            dropped.len(),
            if dropped.len() == 1 { "" } else { "s" }
        );
        for h in dropped {
            // Why: the host's failed task.
            let why = tasks
                .iter()
                .find(|t| {
                    t.host == h.host
                        && matches!(
                            t.state,
                            deployer_core::TaskState::Failed | deployer_core::TaskState::TimedOut
                        )
                })
                .map(|t| {
                    format!(
                        "{} {} failed: {}",
                        t.id,
                        t.command,
                        t.error
                            .as_deref()
                            .unwrap_or("")
                            .lines()
                            .next()
                            .unwrap_or("")
                    )
                })
                .unwrap_or_else(|| "a task failed".to_string());
            let _ = writeln!(s, "  {}: {why}", h.host);
        }
    }
    let width = hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
    // One pass over the tasks, not one per host.
    let mut by_host: std::collections::HashMap<&str, TaskCounts> = Default::default();
    for t in tasks {
        by_host
            .entry(t.host.as_str())
            .or_default()
            .add(TaskCategory::of_record(t, run.drives));
    }
    let per_host: Vec<TaskCounts> = hosts
        .iter()
        .map(|h| by_host.get(h.host.as_str()).copied().unwrap_or_default())
        .collect();
    let columns = crate::columns::columns(&per_host);
    let _ = write!(s, "\n{:<width$}  {:<11}", "HOST", "STATE");
    crate::columns::headings(&mut s, &columns);
    s.push('\n');
    for (h, counts) in hosts.iter().zip(&per_host) {
        let _ = write!(s, "{:<width$}  {:<11}", h.host, h.state.as_str());
        crate::columns::cells(&mut s, &columns, counts);
        s.push('\n');
    }
    // A WORKER column only for a run workers ran (some task names its worker).
    let worker_width = tasks
        .iter()
        .filter_map(|t| t.worker.as_ref().map(String::len))
        .max()
        .map(|w| w.max(6));
    let _ = write!(
        s,
        "\n{:<24}  {:<width$}  {:<20}  {:<11}  {:>3}  {:>4}  ",
        "TASK", "HOST", "COMMAND", "STATE", "TRY", "EXIT"
    );
    if let Some(ww) = worker_width {
        let _ = write!(s, "{:<ww$}  ", "WORKER");
    }
    s.push_str("ERROR\n");
    for t in tasks {
        let _ = write!(
            s,
            "{:<24}  {:<width$}  {:<20}  {:<11}  {:>3}  {:>4}  ",
            t.id.to_string(),
            t.host,
            t.command,
            t.state.as_str(),
            t.attempts,
            t.exit_status
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        );
        if let Some(ww) = worker_width {
            let _ = write!(s, "{:<ww$}  ", t.worker.as_deref().unwrap_or("-"));
        }
        let _ = writeln!(
            s,
            "{}",
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

/// The workers part of `runs show` for a run submitted to workers
/// ([`RunStore::submitted_work`](deployer_core::RunStore::submitted_work)): its entries pending,
/// claimed and ended, a line per worker with the entries it holds, a `waiting:` line per zone
/// no live worker serves, and why the run stopped when it did.
///
/// ```
/// use deployer_core::WorkStatus;
/// use deployer_report::render_work;
/// let status = WorkStatus {
///     pending: 2,
///     claimed: vec![("w1".into(), 1)],
///     unserved_zones: vec!["eu".into()],
///     served_zones: vec!["us".into()],
///     ..WorkStatus::default()
/// };
/// let text = render_work(&status);
/// assert!(text.contains("w1"), "{text}");
/// assert!(
///     text.contains("waiting: hosts in zone eu have no live worker (zones served: us)"),
///     "{text}"
/// );
/// ```
pub fn render_work(status: &WorkStatus) -> String {
    let mut s = String::new();
    let claimed: usize = status.claimed.iter().map(|(_, n)| n).sum();
    let _ = writeln!(
        s,
        "\nwork      {} entr{} pending, {claimed} claimed, {} ended{}",
        status.pending,
        if status.pending == 1 { "y" } else { "ies" },
        status.ended,
        if status.aborting {
            " (aborting: nothing new is claimed)"
        } else {
            ""
        }
    );
    for (worker, n) in &status.claimed {
        let _ = writeln!(
            s,
            "worker    {worker}: {n} entr{} claimed",
            if *n == 1 { "y" } else { "ies" }
        );
    }
    for notice in status.waiting() {
        let _ = writeln!(s, "waiting: {notice}");
    }
    if let Some(why) = &status.stopped {
        let _ = writeln!(s, "stopped: {why}");
    }
    s
}

/// The approvals part of `runs show`: a row per manual step that asked (step, state, who
/// decided, when, the comment), after the approvers each needed; empty when none asked.
///
/// ```
/// use deployer_core::*;
/// use deployer_report::render_approvals;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let plan = Plan::build(&Tasklist::new("empty"), &CommandRegistry::new()).unwrap();
/// let run = store.create_run(NewRun::from_plan(&plan, "book:deploy@1.0.0", "alice")).await.unwrap();
/// store.request_approval(ApprovalRequest::new(run.id.clone(), "deploy/approve", "alice")).await.unwrap();
/// store.decide(&run.id, "deploy/approve", Decision::new("bob", false, Some("not now".into()))).await.unwrap();
/// let text = render_approvals(&store.approvals(&run.id).await.unwrap());
/// assert!(text.contains("deploy/approve"), "{text}");
/// assert!(text.contains("rejected  bob"), "{text}");
/// assert!(text.contains("\"not now\""), "{text}");
/// # });
/// ```
pub fn render_approvals(approvals: &[Approval]) -> String {
    let mut s = String::new();
    if approvals.is_empty() {
        return s;
    }
    let now = std::time::SystemTime::now();
    let width = approvals
        .iter()
        .map(|a| a.request.step.chars().count())
        .max()
        .unwrap_or(4)
        .max(8);
    let by_width = approvals
        .iter()
        .filter_map(|a| a.decision.as_ref().map(|d| d.by.chars().count()))
        .max()
        .unwrap_or(2)
        .max(2);
    let _ = writeln!(
        s,
        "\n{:<width$}  {:<8}  {:<by_width$}  {:<20}  COMMENT / APPROVERS",
        "APPROVAL", "DECISION", "BY", "AT"
    );
    for a in approvals {
        let r = &a.request;
        let state = a.state(now);
        let (by, at, note) = match &a.decision {
            Some(d) => (
                d.by.as_str(),
                ts(Some(d.at)),
                d.comment
                    .as_deref()
                    .map(|c| format!("\"{}\"", c.lines().next().unwrap_or("")))
                    .unwrap_or_default(),
            ),
            None => {
                let mut note = format!("needs {}", r.approvers);
                if r.four_eyes {
                    note.push_str(&format!(", not {} (four-eyes)", r.started_by));
                }
                match r.expires_ts {
                    Some(t) if state == deployer_core::ApprovalState::Expired => {
                        ("-", ts(Some(t)), format!("expired; {note}"))
                    }
                    Some(t) => (
                        "-",
                        "-".to_string(),
                        format!("{note}; expires {}", ts(Some(t))),
                    ),
                    None => ("-", "-".to_string(), note),
                }
            }
        };
        let _ = writeln!(
            s,
            "{:<width$}  {:<8}  {:<by_width$}  {:<20}  {note}",
            r.step,
            state.as_str(),
            by,
            at
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployer_core::{
        CommandRegistry, MemoryStore, NewRun, Plan, RunStore, Stage, Task, TaskState, Tasklist,
    };

    #[tokio::test]
    async fn a_run_of_workers_names_them_and_the_zones_it_waits_for() {
        let mut commands = CommandRegistry::new();
        commands.register_fn("noop", |_| Ok(Box::new(deployer_core::fixture::Noop)));
        let tasklist = Tasklist::new("zones").stage(Stage::new("all", 2).tasks(vec![
            Task::new("noop").on("us001"),
            Task::new("noop").on("eu001"),
        ]));
        let plan = Plan::build(&tasklist, &commands).unwrap();
        let store = MemoryStore::new();
        let run = store
            .create_run(NewRun::from_plan(&plan, "test", "alice"))
            .await
            .unwrap();
        let mut tasks = store.tasks(&run.id).await.unwrap();
        tasks[0].state = TaskState::Succeeded;
        tasks[0].worker = Some("us-worker:17:ab".into());
        let text = render_run(&run, &store.hosts(&run.id).await.unwrap(), &tasks);
        let task_lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("TASK"))
            .collect();
        assert!(task_lines[0].contains("WORKER"), "{text}");
        assert!(
            task_lines[1].contains("us001") && task_lines[1].contains("us-worker:17:ab"),
            "the task a worker recorded names it:\n{text}"
        );
        assert!(
            task_lines[2].contains("eu001") && task_lines[2].contains("  -  "),
            "a task no worker recorded says so:\n{text}"
        );
        // A run no worker touched has no WORKER column.
        tasks[0].worker = None;
        let plain = render_run(&run, &store.hosts(&run.id).await.unwrap(), &tasks);
        assert!(!plain.contains("WORKER"), "{plain}");

        let status = WorkStatus {
            pending: 1,
            claimed: vec![("us-worker:17:ab".into(), 1), ("us-worker:18:cd".into(), 2)],
            ended: 4,
            unserved_zones: vec!["eu".into()],
            served_zones: vec!["us".into()],
            aborting: false,
            dropped: 0,
            stopped: Some("entry stages[0].tasks[1] on eu001 was interrupted".into()),
        };
        let work = render_work(&status);
        assert!(
            work.contains("work      1 entry pending, 3 claimed, 4 ended\n"),
            "{work}"
        );
        assert!(
            work.contains("worker    us-worker:17:ab: 1 entry claimed\n"),
            "{work}"
        );
        assert!(
            work.contains("worker    us-worker:18:cd: 2 entries claimed\n"),
            "{work}"
        );
        assert!(
            work.contains("waiting: hosts in zone eu have no live worker (zones served: us)\n"),
            "{work}"
        );
        assert!(
            work.contains("stopped: entry stages[0].tasks[1] on eu001 was interrupted\n"),
            "{work}"
        );
        let none_live = render_work(&WorkStatus {
            unserved_zones: vec!["eu".into()],
            ..WorkStatus::default()
        });
        assert!(
            none_live.contains("hosts in zone eu have no live worker (zones served: none)"),
            "{none_live}"
        );
    }
}
