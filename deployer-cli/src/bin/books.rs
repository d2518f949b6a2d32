//! `books`: load a library of books, show the job a book builds against a deployment's scope,
//! and run it on this machine.
//!
//! ```text
//! books check --library examples/books/library
//! books show deploy --library examples/books/library --scope examples/books/scope.json
//! books show deploy --library examples/books/library --scope examples/books/scope.json --output json
//! books run --action deploy --library examples/books/library --scope examples/books/scope.json
//! ```
//!
//! The scope is a JSON file shaped like `catalog scope` prints. `run` runs the job with the
//! standard commands against the local host (commands whose host is `local`). With
//! `--store FILE` the run is recorded in a SQLite run store, and the next job's timeouts come
//! from the durations recorded there.
//!
//! A book's clean-up steps (`on_failure`, `always`) run after its steps when the job fails
//! or is cancelled: the first SIGINT (Ctrl-C), SIGTERM or SIGHUP cancels (no new step starts,
//! running tasks finish, then the clean-up runs); a second one stops running tasks and skips
//! the clean-up.
//!
//! # Approvals
//!
//! Whoever runs the job is `--as USER` (default: the OS user, `$USER`): the run records them
//! as its starter. Each manual step asks on the terminal `approve STEP? [yes/no]` — `yes`
//! approves, `no` rejects (the job fails naming who and why), anything else asks again, end
//! of input stops the run — then for an optional comment; `--yes` approves every step in
//! advance as `--as USER` (with `--comment`). The decision (who, when, comment) is stored in
//! the run record (`deploy --store sqlite://FILE runs show ID` lists it).
//!
//! A step may name its approvers (`approvers: admin`, or `approvers: [bob, carol]`; default
//! role `developer`), forbid the starter to approve it (`four_eyes: true`) and expire
//! (`expires_after: SECONDS`). Roles come from a catalog: with `--catalog FILE` the approver's
//! role on the scope's deployment (`deployment.ref`) is looked up there. Without a catalog no
//! role is known: a list of users and the four-eyes rule are still checked, a step that
//! declares a role cannot be approved, and a step that declares nothing may be approved by
//! whoever is named.
//!
//! A step waiting in a run recorded with `--store` can be decided from another process:
//!
//! ```text
//! books pending --store runs.db
//! books approve RUN_ID deploy/approve --store runs.db --as bob --comment "backup checked"
//! books reject RUN_ID deploy/approve --store runs.db --as bob --comment "not during the sale"
//! ```
//!
//! Exit codes: 0 success, 1 the job failed (a step failed, a manual step was rejected or
//! expired) or an internal failure, 2 bad input (and a refused or impossible decision), 130
//! cancelled.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use deployer_books::{Acknowledgements, BookLibrary, Job, JobBuilder, JobRunner, JobState};
use deployer_catalog::LifecycleAction;
use deployer_core::{
    Approver, CommandRegistry, DecideError, EventKind, EventSink, Executor, RunOptions, RunStore,
    Runs,
};

#[path = "common/approve.rs"]
mod approve;

#[derive(Debug, Parser)]
#[command(
    name = "books",
    about = "Books: show and run the job a book builds against a scope"
)]
struct Cli {
    /// A directory of book files (*.yaml, *.yml, *.json).
    #[arg(long, short = 'l', value_name = "DIR", global = true)]
    library: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Args)]
struct JobArgs {
    /// The book to build (its highest version), or `name@requirement` such as `deploy@^1`.
    book: Option<String>,
    /// Build the book of this lifecycle slot of the scope's deployment instead.
    #[arg(long, conflicts_with = "book")]
    action: Option<String>,
    /// The scope (JSON).
    #[arg(long, value_name = "FILE")]
    scope: PathBuf,
    /// A SQLite run store: durations of earlier runs set the timeouts, and runs are recorded.
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct Identity {
    /// Who acts (default: the OS user, $USER).
    #[arg(long = "as", value_name = "USER")]
    actor: Option<String>,
    /// A catalog file: roles are looked up there (the approver's role on the deployment).
    #[arg(long, value_name = "FILE")]
    catalog: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct DecideArgs {
    /// The run's id.
    run: String,
    /// The manual step's path (deploy/approve).
    step: String,
    /// The SQLite run store the run is recorded in.
    #[arg(long, value_name = "FILE")]
    store: PathBuf,
    #[command(flatten)]
    who: Identity,
    /// Why.
    #[arg(long)]
    comment: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Load and check the library; list its books.
    Check,
    /// Print the job a book builds against the scope, after checking its tasklist: a tree of
    /// its steps (child books inlined, skipped steps with the reason, estimates, timeouts), or
    /// JSON with `--output json`.
    Show {
        #[command(flatten)]
        job: JobArgs,
        /// `text` (a tree) or `json` (the whole job).
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Build the job and run it on this machine.
    Run {
        #[command(flatten)]
        job: JobArgs,
        #[command(flatten)]
        who: Identity,
        /// Approve every manual step in advance (as --as USER).
        #[arg(long, short = 'y')]
        yes: bool,
        /// The comment of the approvals --yes gives.
        #[arg(long, requires = "yes")]
        comment: Option<String>,
    },
    /// Approve a waiting manual step of a recorded run (from any process).
    Approve(DecideArgs),
    /// Reject a waiting manual step of a recorded run (the job fails, naming who and why).
    Reject(DecideArgs),
    /// List the manual steps waiting for a decision in a run store.
    Pending {
        /// The SQLite run store.
        #[arg(long, value_name = "FILE")]
        store: PathBuf,
    },
}

/// How `show` prints the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// A tree a person reads at a glance.
    Text,
    /// The job as JSON, for scripts.
    Json,
}

enum Failure {
    Input(String),
    Internal(String),
    Cancelled(String),
}

fn input(e: impl std::fmt::Display) -> Failure {
    Failure::Input(e.to_string())
}

fn commands() -> CommandRegistry {
    let mut registry = CommandRegistry::new();
    deployer_commands::register_all(&mut registry);
    registry
}

/// `--as USER`, else the OS user (`$USER`, else `$LOGNAME`, else the passwd name).
fn actor(who: &Identity) -> Result<String, Failure> {
    if let Some(a) = &who.actor {
        if a.trim().is_empty() {
            return Err(input("--as: a user name may not be blank"));
        }
        return Ok(a.clone());
    }
    Ok(deployer_core::os_user())
}

/// Every role `user` holds on `deployment` in the catalog of `who` (weaker roles included);
/// `None` without a catalog.
async fn roles(
    who: &Identity,
    user: &str,
    deployment: Option<&str>,
) -> Result<Option<Vec<String>>, Failure> {
    use deployer_catalog::{Catalog, CatalogData, DeploymentRef, Role, Target};
    let Some(file) = &who.catalog else {
        return Ok(None);
    };
    let data = CatalogData::load(file).map_err(input)?;
    let deployment = deployment.ok_or_else(|| {
        input(format!(
            "--catalog {}: the job names no deployment (the scope has no deployment.ref), so no role can be looked up",
            file.display()
        ))
    })?;
    let r: DeploymentRef = deployment.parse().map_err(input)?;
    let role = Catalog::in_memory(data)
        .role_of(user, user, &Target::Deployment(r))
        .await
        .map_err(input)?;
    Ok(Some(Role::names_held(role)))
}

/// Decides a waiting step of a recorded run (`books approve` / `books reject`).
async fn decide_from_here(args: &DecideArgs, approved: bool) -> Result<(), Failure> {
    let store = deployer_store::SqliteStore::open(&args.store)
        .await
        .map_err(|e| {
            Failure::Internal(format!(
                "cannot open run store {}: {e}",
                args.store.display()
            ))
        })?;
    let run: deployer_core::RunId = args.run.parse().map_err(input)?;
    let name = actor(&args.who)?;
    let approvals = store.approvals(&run).await.map_err(|e| match e {
        deployer_core::StoreError::NotFound { .. } => input(e),
        other => Failure::Internal(other.to_string()),
    })?;
    let target = approvals
        .iter()
        .find(|a| a.request.step == args.step)
        .and_then(|a| a.request.target.clone());
    let approver = Approver {
        roles: roles(&args.who, &name, target.as_deref()).await?,
        name,
    };
    match deployer_core::decide(
        &store,
        &run,
        &args.step,
        &approver,
        approved,
        args.comment.clone(),
    )
    .await
    {
        Ok(a) => {
            println!("{} (run {run})", a.outcome_message());
            Ok(())
        }
        Err(DecideError::Store(
            e @ (deployer_core::StoreError::Backend { .. }
            | deployer_core::StoreError::Corrupt { .. }),
        )) => Err(Failure::Internal(format!(
            "cannot decide: {}",
            deployer_core::error_chain(&e)
        ))),
        Err(e) => Err(input(e)),
    }
}

async fn store(path: &Option<PathBuf>) -> Result<Option<Arc<dyn RunStore>>, Failure> {
    let Some(path) = path else {
        return Ok(None);
    };
    let store = deployer_store::SqliteStore::open(path)
        .await
        .map_err(|e| Failure::Internal(format!("cannot open run store {}: {e}", path.display())))?;
    Ok(Some(Arc::new(store)))
}

async fn build(
    library: &BookLibrary,
    args: &JobArgs,
    history: Option<Arc<dyn RunStore>>,
) -> Result<Job, Failure> {
    let text = std::fs::read_to_string(&args.scope)
        .map_err(|e| input(format!("cannot read {}: {e}", args.scope.display())))?;
    let scope: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| input(format!("{}: {e}", args.scope.display())))?;
    let mut builder = match (&args.book, &args.action) {
        (_, Some(action)) => {
            let action: LifecycleAction = action.parse().map_err(input)?;
            JobBuilder::for_action(library, action.as_str(), &scope).map_err(input)?
        }
        (Some(book), None) => JobBuilder::named(library, book)
            .and_then(|b| b.scope(&scope))
            .map_err(input)?,
        (None, None) => return Err(input("name a book or an --action")),
    };
    if let Some(store) = history {
        builder = builder.history(store);
    }
    builder.build().await.map_err(input)
}

/// Prints what happens, one line per step and task.
struct Printer;

impl EventSink for Printer {
    fn event(&self, event: &deployer_core::Event) {
        match &event.kind {
            EventKind::StageStarted { name, .. } => println!("step {name}"),
            EventKind::TaskFinished { task, outcome, .. } => {
                println!("  {} on {}: {outcome}", task.command, task.host)
            }
            EventKind::TaskOutput { line, .. } => println!("  | {line}"),
            _ => {}
        }
    }
}

async fn main_inner(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Cmd::Approve(args) => return decide_from_here(args, true).await,
        Cmd::Reject(args) => return decide_from_here(args, false).await,
        Cmd::Pending { store } => {
            let store = deployer_store::SqliteStore::open(store)
                .await
                .map_err(|e| {
                    Failure::Internal(format!("cannot open run store {}: {e}", store.display()))
                })?;
            let pending = store
                .pending_approvals()
                .await
                .map_err(|e| Failure::Internal(e.to_string()))?;
            if pending.is_empty() {
                println!("nothing waits for a decision");
            }
            for a in pending {
                let r = &a.request;
                let mut line = format!("{} {}  needs {}", r.run, r.step, r.approvers);
                if r.four_eyes {
                    line.push_str(&format!(", not {}", r.started_by));
                }
                if let Some(t) = r.expires_ts {
                    line.push_str(&format!(
                        "; expires {}",
                        humantime::format_rfc3339_seconds(t)
                    ));
                }
                if !r.message.is_empty() {
                    line.push_str(&format!(": {}", r.message));
                }
                println!("{line}");
            }
            return Ok(());
        }
        _ => {}
    }
    let library_dir = cli
        .library
        .ok_or_else(|| input("--library DIR is required"))?;
    let registry = commands();
    let mut library = BookLibrary::with_commands(&registry);
    library.load_dir(&library_dir).map_err(input)?;
    match cli.command {
        Cmd::Check => {
            for name in library.names() {
                let versions: Vec<String> = library
                    .history(name)
                    .iter()
                    .map(|b| b.version.to_string())
                    .collect();
                println!("{name} {}", versions.join(", "));
            }
            Ok(())
        }
        Cmd::Show { job: args, output } => {
            let history = store(&args.store).await?;
            let job = build(&library, &args, history).await?;
            let runner = JobRunner::new(
                Executor::new(Arc::new(deployer_remote::LocalConnector::new())),
                &registry,
            );
            runner.plan(&job, &Acknowledgements::new()).map_err(input)?;
            match output {
                Output::Text => print!("{}", job.tree()),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&job)
                        .map_err(|e| Failure::Internal(e.to_string()))?
                ),
            }
            Ok(())
        }
        Cmd::Run {
            job: args,
            who,
            yes,
            comment,
        } => {
            // Who runs the job; needed (and an error when unknown) only to decide a manual
            // step.
            let me = actor(&who);
            let history = store(&args.store).await?;
            let mut job = build(&library, &args, history.clone()).await?;
            for step in job.steps.iter().filter(|s| s.skipped.is_some()) {
                println!(
                    "skip {}: {}",
                    step.path,
                    step.skipped.as_deref().unwrap_or("")
                );
            }
            let deployment = job
                .scope
                .pointer("/deployment/ref")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string);
            let has_manual = job.steps.iter().any(|s| {
                s.skipped.is_none() && matches!(s.kind, deployer_books::JobStepKind::Manual)
            });
            let (me, my_roles) = match me {
                Ok(me) if has_manual => {
                    let roles = roles(&who, &me, deployment.as_deref()).await?;
                    (me, roles)
                }
                Ok(me) => (me, None),
                Err(e) if has_manual => return Err(e),
                Err(_) => ("unknown user".to_string(), None),
            };
            let approver = Approver {
                name: me.clone(),
                roles: my_roles,
            };
            let acks = if yes {
                Acknowledgements::all_as(approver.clone(), comment)
            } else {
                Acknowledgements::new()
            };
            let (sink, events) = deployer_core::ChannelSink::new();
            let options = RunOptions::default();
            if !yes {
                tokio::spawn(approve::prompt(
                    events,
                    acks.clone(),
                    approver,
                    args.store.clone(),
                ));
            }
            let executor = Executor::new(Arc::new(deployer_remote::LocalConnector::new()))
                .sink(Printer)
                .sink(sink);
            let mut runner = JobRunner::new(executor, &registry).started_by(me);
            if let Some(store) = history {
                runner = runner.runs(Runs::new(store));
            }
            let signals = deployer_core::cancel_on_signals(options.cancel.clone(), |what| {
                eprintln!("{what}")
            });
            // The job's plan is validated before anything runs: a problem there is bad input.
            let ran = runner
                .run(&mut job, &acks, options)
                .await
                .map_err(|e| match e {
                    deployer_books::BookError::Plan(_) => Failure::Input(e.to_string()),
                    other => Failure::Internal(other.to_string()),
                });
            drop(signals);
            ran?;
            println!("job {} {}", job.id, job.state);
            if let Some(run) = &job.run_id {
                println!("run {run}");
            }
            match job.state {
                JobState::Done => Ok(()),
                JobState::Cancel => Err(Failure::Cancelled(format!("job {}", job.state))),
                state => Err(Failure::Internal(format!("job {state}"))),
            }
        }
        Cmd::Approve(_) | Cmd::Reject(_) | Cmd::Pending { .. } => {
            unreachable!("handled before the library is loaded")
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match main_inner(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Internal(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Cancelled(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(deployer_core::exit::CANCELLED)
        }
    }
}
