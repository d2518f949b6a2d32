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
//! standard commands against the local host (commands whose host is `local`); each manual
//! step asks for an acknowledgement on the terminal (Enter), unless `--yes` acknowledged them
//! in advance. With `--store FILE` the run is recorded in a SQLite run store, and the next
//! job's timeouts come from the durations recorded there.
//!
//! A book's clean-up steps (`on_failure`, `always`) run after its steps when the job fails
//! or is cancelled: the first SIGINT (Ctrl-C), SIGTERM or SIGHUP cancels (no new step starts,
//! running tasks finish, then the clean-up runs); a second one stops running tasks and skips
//! the clean-up.
//!
//! Exit codes: 0 success, 1 the job failed or an internal failure, 2 bad input, 130
//! cancelled.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use deployer_books::{
    Acknowledgements, BookLibrary, Job, JobBuilder, JobRunner, JobState, MANUAL_COMMAND,
};
use deployer_catalog::LifecycleAction;
use deployer_core::{CommandRegistry, EventKind, EventSink, Executor, RunOptions, RunStore, Runs};

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
        /// Acknowledge every manual step in advance.
        #[arg(long, short = 'y')]
        yes: bool,
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

/// Cancels on the first SIGINT, SIGTERM or SIGHUP (the clean-up still runs) and stops hard on
/// the next (it does not).
fn watch_signals(cancel: deployer_core::CancelHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            eprintln!("warning: cannot listen for signals");
            return;
        };
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            if cancel.is_cancelled() {
                eprintln!("{name} again: stopping running tasks, skipping clean-up");
            } else {
                eprintln!(
                    "{name}: cancelling — no new step starts, running ones finish, then the \
                     clean-up runs ({name} again stops them and skips it)"
                );
            }
            cancel.cancel();
        }
    })
}

fn input(e: impl std::fmt::Display) -> Failure {
    Failure::Input(e.to_string())
}

fn commands() -> CommandRegistry {
    let mut registry = CommandRegistry::new();
    deployer_commands::register_all(&mut registry);
    registry
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
        Cmd::Run { job: args, yes } => {
            let history = store(&args.store).await?;
            let mut job = build(&library, &args, history.clone()).await?;
            for step in job.steps.iter().filter(|s| s.skipped.is_some()) {
                println!(
                    "skip {}: {}",
                    step.path,
                    step.skipped.as_deref().unwrap_or("")
                );
            }
            let acks = if yes {
                Acknowledgements::all()
            } else {
                Acknowledgements::new()
            };
            let (sink, mut events) = deployer_core::ChannelSink::new();
            let options = RunOptions::default();
            // Ask on the terminal when a manual step starts waiting; without an answer (end of
            // input) the run stops.
            if !yes {
                let acks = acks.clone();
                let cancel = options.cancel.clone();
                tokio::spawn(async move {
                    while let Some(e) = events.recv().await {
                        if let EventKind::TaskStarted { task, .. } = &e.kind
                            && task.command == MANUAL_COMMAND
                        {
                            let step = task.tag.clone().unwrap_or_default();
                            println!("  waiting: press Enter to acknowledge {step}");
                            let line = tokio::task::spawn_blocking(|| {
                                std::io::stdin().lock().lines().next()
                            })
                            .await;
                            if matches!(line, Ok(Some(Ok(_)))) {
                                acks.acknowledge(&step);
                            } else {
                                println!("  no acknowledgement (end of input): stopping");
                                cancel.stop_now();
                            }
                        }
                    }
                });
            }
            let executor = Executor::new(Arc::new(deployer_remote::LocalConnector::new()))
                .sink(Printer)
                .sink(sink);
            let mut runner = JobRunner::new(executor, &registry).started_by("books");
            if let Some(store) = history {
                runner = runner.runs(Runs::new(store));
            }
            let signals = watch_signals(options.cancel.clone());
            // The job's plan is validated before anything runs: a problem there is bad input.
            let ran = runner
                .run(&mut job, &acks, options)
                .await
                .map_err(|e| match e {
                    deployer_books::BookError::Plan(_) => Failure::Input(e.to_string()),
                    other => Failure::Internal(other.to_string()),
                });
            signals.abort();
            ran?;
            if let Some(run) = &job.run_id {
                println!("run {run} (deploy --store FILE runs show {run})");
            }
            println!("job {} {}", job.id, job.state);
            match job.state {
                JobState::Done => Ok(()),
                JobState::Cancel => Err(Failure::Cancelled(format!("job {}", job.state))),
                state => Err(Failure::Internal(format!("job {state}"))),
            }
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
