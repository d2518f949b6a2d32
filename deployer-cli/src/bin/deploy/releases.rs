//! `deploy status`, `deploy lock status|release` and `deploy rollback`: what the release
//! platform's hosts hold, their deploy locks, and going back.

use std::io::{BufRead, IsTerminal, Write};
use std::time::SystemTime;

use deployer_commands::{LockInfo, Unlocked};
use deployer_core::{RunStore, exit};
use serde_json::{Value, json};

use super::{
    BadInput, Cli, HostStatus, LockCmd, LockVerdict, Output, Redactor, driver, finish,
    generator_error, history, open_runs, purge_old, release_config, release_context,
    stage_estimates, with_reporters,
};

/// Prints rows as columns two spaces apart, the last one unpadded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Every host's state and, for each lock, its verdict by the run store.
async fn hosts_and_locks(
    cli: &Cli,
    what: &str,
) -> Result<
    (
        deployer_core::GeneratorContext,
        Vec<(HostStatus, Option<LockVerdict>)>,
    ),
    BadInput,
> {
    let ctx = release_context(release_config(cli, what, Vec::new())?)?;
    let hosts = deployer_release::status(&ctx)
        .await
        .map_err(generator_error)?;
    let mut store: Option<std::sync::Arc<dyn RunStore>> = None;
    let mut out = Vec::new();
    for h in hosts {
        let verdict = match &h.lock {
            None => None,
            Some(lock) => {
                if store.is_none() {
                    store = Some(open_runs(cli).await?.store().clone());
                }
                let store = store.as_ref().expect("opened above");
                Some(deployer_release::judge_lock(lock, store.as_ref(), SystemTime::now()).await)
            }
        };
        out.push((h, verdict));
    }
    Ok((ctx, out))
}

/// The JSON of a lock with its verdict.
fn lock_json(lock: &Option<LockInfo>, verdict: &Option<LockVerdict>) -> Value {
    match (lock, verdict) {
        (Some(lock), Some(v)) => {
            let mut value = json!(lock);
            value["run_id"] = json!(lock.run_id().map(|id| id.to_string()));
            value["stale"] = json!(v.stale);
            value["reason"] = json!(v.reason);
            value
        }
        _ => Value::Null,
    }
}

fn print_json(value: &Value) -> Result<(), BadInput> {
    let text = serde_json::to_string_pretty(value).map_err(|e| BadInput::Hosts(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// `deploy status`.
pub(crate) async fn status_main(cli: &Cli) -> Result<u8, BadInput> {
    let (_, hosts) = hosts_and_locks(cli, "deploy status").await?;
    match cli.output {
        Output::Json => {
            let rows: Vec<Value> = hosts
                .iter()
                .map(|(h, v)| {
                    let mut row = json!(h);
                    row["lock"] = lock_json(&h.lock, v);
                    row
                })
                .collect();
            print_json(&Value::Array(rows))?;
        }
        Output::Text => {
            let mut rows = vec![
                ["HOST", "SERVICE", "LIVE", "PREVIOUS", "LOCK"]
                    .map(String::from)
                    .to_vec(),
            ];
            for (h, v) in &hosts {
                let lock = match (&h.lock, v) {
                    (Some(lock), Some(v)) if v.stale => format!("STALE {lock}: {}", v.reason),
                    (Some(lock), _) => format!("locked by {lock}"),
                    (None, _) => "-".to_string(),
                };
                let previous = if h.previous.is_empty() {
                    "-".to_string()
                } else {
                    h.previous.join(", ")
                };
                rows.push(vec![
                    h.host.clone(),
                    h.service.clone(),
                    h.live.clone().unwrap_or_else(|| "-".to_string()),
                    previous,
                    lock,
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    Ok(exit::SUCCESS)
}

/// `deploy lock status|release`.
pub(crate) async fn lock_main(cli: &Cli, cmd: &LockCmd) -> Result<u8, BadInput> {
    let what = match cmd {
        LockCmd::Status => "deploy lock status",
        LockCmd::Release { .. } => "deploy lock release",
    };
    let (ctx, hosts) = hosts_and_locks(cli, what).await?;
    match cmd {
        LockCmd::Status => {
            match cli.output {
                Output::Json => {
                    let rows: Vec<Value> = hosts
                        .iter()
                        .map(|(h, v)| {
                            json!({
                                "host": h.host,
                                "service": h.service,
                                "deploy_to": h.deploy_to,
                                "locked": h.lock.is_some(),
                                "lock": lock_json(&h.lock, v),
                            })
                        })
                        .collect();
                    print_json(&Value::Array(rows))?;
                }
                Output::Text => {
                    let mut rows = vec![
                        [
                            "HOST",
                            "SERVICE",
                            "LOCK",
                            "RUN",
                            "USER",
                            "CONTROLLER",
                            "AGE",
                            "WHY",
                        ]
                        .map(String::from)
                        .to_vec(),
                    ];
                    let dash = || "-".to_string();
                    for (h, v) in &hosts {
                        let Some(lock) = &h.lock else {
                            rows.push(vec![h.host.clone(), h.service.clone(), "unlocked".into()]);
                            continue;
                        };
                        let stale = v.as_ref().is_some_and(|v| v.stale);
                        rows.push(vec![
                            h.host.clone(),
                            h.service.clone(),
                            if stale { "STALE" } else { "locked" }.into(),
                            lock.holder.clone().unwrap_or_else(dash),
                            lock.user.clone().unwrap_or_else(dash),
                            lock.controller.clone().unwrap_or_else(dash),
                            lock.age_seconds
                                .map(|s| {
                                    humantime::format_duration(std::time::Duration::from_secs(s))
                                        .to_string()
                                })
                                .unwrap_or_else(dash),
                            v.as_ref().map(|v| v.reason.clone()).unwrap_or_default(),
                        ]);
                    }
                    print!("{}", table(&rows));
                }
            }
            Ok(exit::SUCCESS)
        }
        LockCmd::Release { force } => {
            let mut refused = 0;
            let mut freed = 0;
            for (h, v) in &hosts {
                let (Some(lock), Some(v)) = (&h.lock, v) else {
                    continue;
                };
                let place = format!("{} {} ({})", h.host, h.service, h.deploy_to);
                if !v.stale && !force {
                    println!(
                        "refused {place}: locked by {lock}: {} (use --force to free it anyway)",
                        v.reason
                    );
                    refused += 1;
                    continue;
                }
                let holder = lock.holder.as_deref().unwrap_or("");
                match deployer_release::free_lock(&ctx, h, holder, false)
                    .await
                    .map_err(generator_error)?
                {
                    Unlocked::Freed => {
                        println!("freed {place}: lock of {lock}: {}", v.reason);
                        freed += 1;
                    }
                    Unlocked::HeldBy(now) => {
                        println!("refused {place}: taken again since, by {now}");
                        refused += 1;
                    }
                    _ => {}
                }
            }
            if freed == 0 && refused == 0 {
                println!("no host is locked");
            }
            Ok(if refused > 0 {
                exit::FAILED
            } else {
                exit::SUCCESS
            })
        }
    }
}

/// `deploy rollback`.
pub(crate) async fn rollback_main(
    cli: &Cli,
    to: Option<&str>,
    dry_run: bool,
    yes: bool,
    progress: bool,
    redactor: &Redactor,
) -> Result<u8, BadInput> {
    // Refused before any host is asked.
    let ask = !dry_run && !yes;
    if ask && !std::io::stdin().is_terminal() {
        return Err(BadInput::Input(
            "deploy rollback asks for confirmation, and standard input is not a terminal: \
             add --yes to roll back without asking (or --dry-run to see the plan)"
                .into(),
        ));
    }
    let mut extra = vec![("rollback".to_string(), Value::Bool(true))];
    if let Some(v) = to {
        extra.push(("rollback_to".to_string(), Value::String(v.to_string())));
    }
    let config = release_config(cli, "deploy rollback", extra)?;
    let connector = super::connector_for(&config)?;
    let ctx =
        deployer_core::GeneratorContext::new(config.clone()).with_connector(connector.clone());
    let hosts = deployer_release::rollback_survey(&ctx)
        .await
        .map_err(generator_error)?;
    let moving: Vec<_> = hosts.iter().filter(|h| h.changes).collect();
    if moving.is_empty() {
        println!("nothing to roll back: every host already runs the version asked for");
        return Ok(exit::SUCCESS);
    }
    let d = driver(cli, connector.clone(), redactor, None);
    let plan = d.plan(config).await.map_err(super::drive_error)?;
    let tasklist = plan.tasklist();

    // What would change, and how fast.
    let mut rows = vec![
        ["HOST", "SERVICE", "FROM", "TO", "LOCK"]
            .map(String::from)
            .to_vec(),
    ];
    for h in &hosts {
        rows.push(vec![
            h.host.clone(),
            h.service.clone(),
            h.live.clone(),
            if h.changes {
                h.to.clone()
            } else {
                format!("{} (already)", h.to)
            },
            h.locked_by
                .as_ref()
                .map(|l| format!("locked by {l}"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut shown = table(&rows);
    for stage in &tasklist.stages {
        shown.push_str(&format!(
            "stage \"{}\": {} host{}, at most {} at a time{}\n",
            stage.name,
            stage.tasks.len(),
            if stage.tasks.len() == 1 { "" } else { "s" },
            // `min_hosts_up` keeps the others serving.
            match stage.min_hosts_up {
                Some(min) => stage
                    .concurrency
                    .min(stage.tasks.len().saturating_sub(min).max(1)),
                None => stage.concurrency,
            },
            if stage.finally.is_some() {
                " (finally: runs whatever happens before it)"
            } else {
                ""
            }
        ));
    }
    if dry_run {
        match cli.output {
            Output::Text => print!("{shown}"),
            Output::Json => {
                let stages: Vec<Value> = tasklist
                    .stages
                    .iter()
                    .map(|s| {
                        json!({"name": s.name, "hosts": s.tasks.len(), "concurrency": s.concurrency,
                               "min_hosts_up": s.min_hosts_up, "finally": s.finally.is_some()})
                    })
                    .collect();
                print_json(&json!({"hosts": hosts, "stages": stages}))?;
            }
        }
        return Ok(exit::SUCCESS);
    }
    if cli.output == Output::Text {
        eprint!("{shown}");
    }
    if ask {
        let mut services: Vec<&str> = Vec::new();
        let mut targets: Vec<(&str, usize)> = Vec::new();
        for h in &moving {
            if !services.contains(&h.service.as_str()) {
                services.push(&h.service);
            }
            match targets.iter_mut().find(|(v, _)| *v == h.to) {
                Some((_, n)) => *n += 1,
                None => targets.push((&h.to, 1)),
            }
        }
        let n = moving.len();
        let hosts_word = if n == 1 { "host" } else { "hosts" };
        let question = match targets.as_slice() {
            [(v, _)] => format!(
                "Roll back {} on {n} {hosts_word} to {v}? [y/N] ",
                services.join(", ")
            ),
            several => format!(
                "Roll back {} on {n} {hosts_word} ({})? [y/N] ",
                services.join(", "),
                several
                    .iter()
                    .map(|(v, k)| format!("to {v} on {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        eprint!("{question}");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("nothing rolled back");
            return Ok(exit::FAILED);
        }
    }

    let runs = open_runs(cli).await?;
    purge_old(&runs, cli.keep_runs).await;
    let history = history(&runs, tasklist).await;
    let estimates = stage_estimates(tasklist, &history);
    let (driver, summary) = with_reporters(
        driver(cli, connector, redactor, Some(&runs)),
        cli,
        progress,
        estimates,
    );
    let source = match &cli.config {
        Some(c) => format!("rollback:{}", c.display()),
        None => "rollback".to_string(),
    };
    let finished = driver.run(&plan, &source).await;
    finish(cli, finished, &summary)
}
