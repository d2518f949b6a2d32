//! Distributed runs: `deploy --submit [--detach]` (hand the plan to workers and follow it)
//! and `deploy worker` (claim and run entries of submitted runs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer_core::{
    CommandRegistry, Config, Connector, Plan, Redactor, RunId, RunState, TaskId, TaskState,
    WorkQueue, Worker, WorkerInfo, exit,
};
use deployer_report::render_run;
use deployer_store::{PostgresStore, StoreUrl};
use tokio_util::sync::CancellationToken;

use super::BadInput;

/// `deploy worker`: claim and run entries of runs submitted to a PostgreSQL store.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Serve hosts of this zone (the inventory host var `zone`); repeatable. Without one: every
    /// zone, and hosts without a zone.
    #[arg(long = "zone", value_name = "ZONE", value_delimiter = ',')]
    zones: Vec<String>,
    /// Run at most N entries (a task or a chain on one host) at once.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    slots: u32,
    /// This worker's name in the store (default: host:pid:random).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// How long a claim (and this worker's heartbeat) lives without renewal; renewed every
    /// third. A worker that dies leaves its entries to others once it lapsed.
    #[arg(long, value_name = "AGE", default_value = "15s", value_parser = humantime::parse_duration)]
    lease: Duration,
}

/// The PostgreSQL store `url` names, as a work queue; a SQLite store is refused.
pub async fn open_queue(url: &str) -> Result<Arc<dyn WorkQueue>, BadInput> {
    let parsed: StoreUrl = url.parse()?;
    match &parsed {
        StoreUrl::Postgres(pg) => {
            let store = PostgresStore::connect(pg).await.map_err(|e| {
                BadInput::Hosts(format!(
                    "cannot open the run store {parsed}: {}",
                    deployer_core::error_chain(&e)
                ))
            })?;
            Ok(Arc::new(store))
        }
        _ => Err(BadInput::Input(
            "a SQLite store is driven by one controller: workers need a PostgreSQL store (--store postgres://…)"
                .to_string(),
        )),
    }
}

/// A host's zone: its inventory host var `zone` (a string, or a number written as one).
pub fn zone_of(config: Option<&Config>, host: &str) -> Option<String> {
    let value = config?.host_var(host, "zone")?;
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `deploy --submit`: stores the run for workers; prints its id; unless `detach`, follows it
/// to its end and returns its exit status.
pub async fn submit_main(
    store_url: &str,
    plan: &Plan,
    source: &str,
    zones: Option<&Config>,
    detach: bool,
) -> Result<u8, BadInput> {
    // Refused before the store is opened: the plan's own problems first.
    deployer_core::Submission::of_plan(plan, &RunId::new(), |h| zone_of(zones, h))
        .map_err(|e| BadInput::Input(e.to_string()))?;
    let queue = open_queue(store_url).await?;
    let id = deployer_core::submit(&*queue, plan, source, &deployer_core::os_user(), |h| {
        zone_of(zones, h)
    })
    .await
    .map_err(|e| {
        let message = deployer_core::error_chain(&e);
        if e.exit_code() == exit::BAD_INPUT {
            BadInput::Input(message)
        } else {
            BadInput::Hosts(message)
        }
    })?;
    println!("submitted run {id}");
    if detach {
        return Ok(exit::SUCCESS);
    }
    follow(&*queue, &id, HashMap::new()).await
}

/// `deploy runs resume ID [--force]` of a run submitted to workers: hands it back to them
/// ([`deployer_core::resume_submitted`]: done tasks are not run again; a run stopped on an
/// interrupted entry that is not idempotent only with `force`), then follows it as
/// `deploy --submit` does, with the same output and exit status.
pub async fn resume_main(
    store_url: &str,
    id: &RunId,
    commands: &CommandRegistry,
    force: bool,
) -> Result<u8, BadInput> {
    let queue = open_queue(store_url).await?;
    let store_error = |e: deployer_core::StoreError| {
        BadInput::Hosts(format!(
            "run {id}: cannot read it from the run store: {}",
            deployer_core::error_chain(&e)
        ))
    };
    // This program's words for the refusal the store makes too (under the run's lock).
    let run = queue.run(id).await.map_err(store_error)?;
    let status = queue.work_status(id).await.map_err(store_error)?;
    if let Some(why) = status.stopped.filter(|_| run.state.is_finished() && !force) {
        return Err(BadInput::Input(format!(
            "run {id} cannot be resumed without --force: {why}; check that entry's host, then \
             run it again with: deploy runs resume {id} --force"
        )));
    }
    // What is done already is not listed again: only what the resumed run changes.
    let before: HashMap<TaskId, TaskState> = queue
        .tasks(id)
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|t| t.state.is_done())
        .map(|t| (t.id, t.state))
        .collect();
    deployer_core::resume_submitted(&*queue, commands, id, force)
        .await
        .map_err(|e| {
            if e.exit_code() == exit::BAD_INPUT {
                BadInput::Input(deployer_core::error_chain(&e))
            } else {
                BadInput::Hosts(deployer_core::error_chain(&e))
            }
        })?;
    println!("resumed run {id} on its workers");
    follow(&*queue, id, before).await
}

/// Follows run `id` on the change feed: a line per task state change, a warning when a zone
/// of its waiting hosts has no live worker, the recap at the end; the exit status from the
/// run's final state. The first SIGINT/SIGTERM asks the workers to cancel the run (and goes on
/// following), the second leaves it running. Tasks already in `seen` with the same state are
/// not listed.
pub async fn follow(
    queue: &dyn WorkQueue,
    id: &RunId,
    mut seen: HashMap<TaskId, TaskState>,
) -> Result<u8, BadInput> {
    let store_error = |e: deployer_core::StoreError| {
        BadInput::Hosts(format!(
            "run {id}: cannot read it from the run store: {}",
            deployer_core::error_chain(&e)
        ))
    };
    let mut feed = queue.changes();
    let mut warned: Vec<String> = Vec::new();
    let mut stopped_said = false;
    let mut interrupts = signals();
    let mut cancel_asked = false;
    let mut last_look = Instant::now() - Duration::from_secs(10);
    loop {
        last_look = last_look.max(Instant::now());
        for t in queue.tasks(id).await.map_err(store_error)? {
            if seen.get(&t.id) == Some(&t.state) || t.state == TaskState::Pending {
                seen.insert(t.id, t.state);
                continue;
            }
            seen.insert(t.id, t.state);
            let what = match (&t.state, &t.error) {
                (TaskState::Running, _) => "started".to_string(),
                (state, Some(e)) if !state.is_done() => format!("{state}: {e}"),
                (state, _) => state.to_string(),
            };
            eprintln!("{} {} on {}: {what}", t.id, t.command, t.host);
        }
        let status = queue.work_status(id).await.map_err(store_error)?;
        for (zone, notice) in status.unserved_zones.iter().zip(status.waiting()) {
            if !warned.contains(zone) {
                eprintln!("warning: {notice}: start `deploy worker --zone {zone}`");
                warned.push(zone.clone());
            }
        }
        warned.retain(|z| status.unserved_zones.contains(z));
        if let Some(why) = &status.stopped
            && !stopped_said
        {
            eprintln!("run {id} stopped: {why}");
            stopped_said = true;
        }
        let run = queue.run(id).await.map_err(store_error)?;
        if run.state.is_finished() {
            let hosts = queue.hosts(id).await.map_err(store_error)?;
            let tasks = queue.tasks(id).await.map_err(store_error)?;
            print!("{}", render_run(&run, &hosts, &tasks));
            return Ok(match run.state {
                RunState::Succeeded => exit::SUCCESS,
                RunState::Cancelled => exit::CANCELLED,
                RunState::Degraded => exit::WITHIN_BUDGET,
                _ => exit::FAILED,
            });
        }
        if stopped_said && status.claimed.is_empty() {
            eprintln!(
                "run {id} waits for `deploy runs resume --force {id}` (see `deploy runs show {id}`)"
            );
            return Ok(exit::FAILED);
        }
        tokio::select! {
            // Every task write notifies: a burst of them is read once, at most twice a
            // second (a 1000-host run writes thousands of records a second).
            _ = feed.changed() => {
                tokio::time::sleep_until((last_look + FOLLOW_EVERY).into()).await;
            }
            // Zones lose their workers without a write: look again now and then.
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = interrupts.recv() => {
                if cancel_asked {
                    eprintln!("leaving run {id} to its workers (`deploy runs show {id}`)");
                    return Ok(exit::CANCELLED);
                }
                cancel_asked = true;
                eprintln!("asking the workers to cancel run {id} (again to stop following)");
                queue
                    .request_cancel(id, &deployer_core::os_user())
                    .await
                    .map_err(store_error)?;
            }
        }
    }
}

/// How often at most the follower of a submitted run reads it again.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// SIGINT and SIGTERM, as a stream of ().
fn signals() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

/// `deploy worker`: works until SIGINT/SIGTERM (the first: claim nothing more and let running
/// entries finish; the second: stop their commands now).
pub async fn worker_main(
    store_url: &str,
    args: &WorkerArgs,
    commands: CommandRegistry,
    connector: Arc<dyn Connector>,
    config: Option<&Config>,
    redactor: &Redactor,
) -> Result<u8, BadInput> {
    let mut zones: Vec<String> = Vec::new();
    for z in &args.zones {
        let z = z.trim();
        if z.is_empty() {
            return Err(BadInput::Input(
                "--zone: an empty name (expected a zone of the inventory's `zone` host var)".into(),
            ));
        }
        if !zones.iter().any(|x| x == z) {
            zones.push(z.to_string());
        }
    }
    if let Some(name) = &args.name
        && name.trim().is_empty()
    {
        return Err(BadInput::Input("--name: an empty name".into()));
    }
    let queue = open_queue(store_url).await?;
    let id = args.name.clone().unwrap_or_else(|| {
        let nonce = RunId::new();
        format!(
            "{}:{}:{}",
            hostname(),
            std::process::id(),
            &nonce.as_str()[nonce.as_str().len() - 6..]
        )
    });
    let host_vars = config
        .map(|c| c.host_vars_of(c.inventory().hosts()))
        .unwrap_or_default();
    let worker = Worker::new(
        queue,
        commands,
        connector,
        WorkerInfo {
            id: id.clone(),
            zones,
            commands: Vec::new(),
        },
    )
    .slots(args.slots as usize)
    .lease_ttl(args.lease)
    .redactor(redactor.clone())
    .host_vars(host_vars);
    let drain = CancellationToken::new();
    let stop = CancellationToken::new();
    let mut interrupts = signals();
    {
        let (drain, stop) = (drain.clone(), stop.clone());
        tokio::spawn(async move {
            if interrupts.recv().await.is_none() {
                return;
            }
            tracing::warn!(
                component = "Worker",
                "claiming nothing more; running entries finish (again to stop them now)"
            );
            drain.cancel();
            if interrupts.recv().await.is_some() {
                tracing::warn!(component = "Worker", "stopping running entries now");
                stop.cancel();
            }
        });
    }
    let shown: StoreUrl = store_url.parse()?;
    eprintln!("worker {id} working on {shown}");
    worker
        .run_with(drain, stop)
        .await
        .map_err(|e| BadInput::Hosts(format!("worker {id}: {}", deployer_core::error_chain(&e))))?;
    Ok(exit::SUCCESS)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}
