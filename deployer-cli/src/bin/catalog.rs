//! `catalog`: load a catalog of projects, deployment groups and deployments from YAML, show
//! what a user may see, and trigger a deployment's lifecycle action as a user.
//!
//! ```text
//! catalog --file examples/catalog.yaml check                      # validate: "Catalog ok"
//! catalog --file examples/catalog.yaml show --as bob              # what bob may see
//! catalog --file examples/catalog.yaml show --as carol            # her group only
//! catalog --file examples/catalog.yaml scope shop/prod --as bob   # the scope books see (JSON)
//! catalog --file examples/catalog.yaml trigger shop/prod deploy --as alice
//! catalog --file examples/catalog.yaml publish shop-app/app 1.5.0 --as alice
//! ```
//!
//! Every command acts as the `--as` user and is allowed by one rule, the user's effective role
//! on the object: catalog admins are admin everywhere, a project's owner is admin of the
//! project, otherwise a deployment override beats a group override, which beats the project
//! role. `show` lists what the user may see with their role on each object (a group or
//! deployment override shows its project with only that group or deployment); `scope` needs
//! the role user, `trigger` and `publish` (of a project's image; a shared repository's are
//! the catalog admins') developer. A refusal names the user, the object, their role there and
//! the role that would do, and exits 2. The whole matrix is in the crate docs of
//! `deployer-catalog`.
//!
//! With `--store URL` (a SQLite file or a PostgreSQL URL, as `deploy --store`) the catalog is
//! kept in that store: `import --as USER` loads `--file` into it (anybody may seed an empty
//! store; replacing a catalog takes a catalog admin), every other command reads it from there,
//! and `publish` records the new version. Without `--store`, `--file` is loaded into memory for
//! the duration of one call. `monitors` runs the monitors that are due (with curl on this
//! machine) and prints every monitor's state: a scheduler calls it periodically.
//!
//! ```text
//! catalog --store sqlite://catalog.db --file examples/catalog.yaml import --as root
//! catalog --store sqlite://catalog.db publish shop-app/app 1.5.0 --as root
//! catalog --store sqlite://catalog.db monitors
//! ```
//!
//! `trigger` and `publish` print the lifecycle requests (JSON) they hand to the books engine.
//! With `--library DIR`, `trigger` also builds the job of the deployment's book for that action
//! (printed as a tree of its steps, or as JSON with `--output json`), and with `--run` runs it
//! — on this machine for hosts named `local`, over SSH for the others. Its manual steps are
//! decided as `books run` decides them, by the `--as` user with their role on the deployment:
//! each asks on the terminal `approve STEP as USER? [yes/no]` (`yes` approves, `no` rejects and
//! the job fails naming who and why, anything else asks again, end of input fails the step so
//! the book's clean-up runs), then for an optional comment; `--yes` approves them in advance.
//! With `--store FILE` (a SQLite run store, not the catalog's `--store`) the run and its
//! decisions are recorded (`deploy --store sqlite://FILE runs show ID`), and a step the user
//! may not decide waits for `books approve RUN_ID STEP --store FILE --as USER`:
//!
//! ```text
//! catalog --file examples/catalog.yaml trigger shop/prod deploy --as alice \
//!     --library examples/books/library --run --store runs.db
//! catalog --file examples/catalog.yaml trigger shop/prod deploy --as alice \
//!     --library examples/books/library --run --yes
//! ```
//!
//! Exit codes: 0 success, 1 an internal failure or a job that failed (a step failed, a manual
//! step was rejected), 2 bad input or a refused user; `monitors`
//! also 3 (a target is down) and 4 (a check could not be made), see `catalog monitors --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use deployer_books::{Acknowledgements, BookLibrary, JobBuilder, JobRunner, JobState};
use deployer_catalog::{
    Catalog, CatalogData, CatalogError, CheckFailure, DeploymentRef, LifecycleAction,
    LifecycleRequest, MonitorRunner, Project, Slug, Target, Trigger,
};
use deployer_commands::CurlChecker;
use deployer_core::{CommandRegistry, Event, EventKind, Executor, RunOptions, RunStore, Runs};
use deployer_remote::{SshConnector, SshOptions};

#[path = "common/approve.rs"]
mod approve;

#[derive(Debug, Parser)]
#[command(
    name = "catalog",
    version,
    about = "Show a deployment catalog and trigger lifecycle actions",
    after_help = "Exit status: 0 success, 1 internal failure or a failed job, 2 bad input or a \
                  refused user; \
                  `monitors` also 3 (a target is down) and 4 (a check is broken), see \
                  `catalog monitors --help`."
)]
struct Cli {
    /// The catalog file (YAML or JSON): the catalog itself, or what `import` stores.
    #[arg(long, short = 'f', value_name = "FILE", env = "DEPLOYER_CATALOG")]
    file: Option<PathBuf>,
    /// Keep the catalog in this store (sqlite://PATH, a path, or postgres://…).
    #[arg(long, value_name = "URL", env = "DEPLOYER_CATALOG_STORE")]
    store: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate the catalog and exit.
    Check,
    /// Store the catalog of `--file` in `--store`.
    Import {
        /// The acting user.
        #[arg(long = "as", value_name = "USER")]
        actor: String,
    },
    /// Run the monitors that are due and print the state of each.
    ///
    /// One line per monitor, `PROJECT/DEPLOYMENT/MONITOR STATE`, where STATE (ok, warning,
    /// error, unknown) applies the monitor's thresholds to its recent checks. When the newest
    /// check did not pass, the line says why:
    ///
    ///   target down: MESSAGE    the check ran and the target failed it: its name does not
    ///                           resolve from this machine, the connection is refused or
    ///                           times out, TLS fails, or it answered with an unexpected
    ///                           status or body
    ///   check broken: MESSAGE   the check could not be made (curl missing, or rejecting the
    ///                           URL or an option): nothing is known of the target
    ///
    /// Exit status, from each monitor's newest check:
    ///   0  every newest check passed (a slow answer changes the state, not the exit status)
    ///   3  a target is down (wins over 4: a known problem before an unknown one)
    ///   4  a check is broken, and no target is known to be down
    ///   1  the store failed;  2  bad input
    #[command(verbatim_doc_comment)]
    Monitors,
    /// Show the projects, groups and deployments the user may see.
    Show {
        /// The acting user.
        #[arg(long = "as", value_name = "USER")]
        actor: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a deployment's scope (what books evaluate against) as JSON.
    Scope {
        /// PROJECT/DEPLOYMENT.
        deployment: String,
        /// The acting user.
        #[arg(long = "as", value_name = "USER")]
        actor: String,
    },
    /// Trigger a lifecycle action of a deployment: prints the request for the books engine,
    /// and with --library the job it builds (and runs it with --run).
    Trigger {
        /// PROJECT/DEPLOYMENT.
        deployment: String,
        /// general, deploy, pause, backup, restore, sync_ingress, upgrade, drop, config_scope.
        action: String,
        /// The acting user.
        #[arg(long = "as", value_name = "USER")]
        actor: String,
        /// A directory of book files: build the job of the deployment's book for the action.
        #[arg(long, value_name = "DIR")]
        library: Option<PathBuf>,
        /// Run the job (needs --library). Each manual step asks on the terminal
        /// `approve STEP as USER? [yes/no]` (the --as user, with their role on the
        /// deployment): yes approves, no rejects and the job fails, anything else asks
        /// again, end of input fails the step (the clean-up runs); then an optional comment.
        #[arg(long, requires = "library")]
        run: bool,
        /// Approve the job's manual steps in advance, as the --as user (no prompt).
        #[arg(long, short = 'y', requires = "run")]
        yes: bool,
        /// Record the run in this SQLite run store (not the catalog's --store): the decisions
        /// are kept there (`deploy --store sqlite://FILE runs show ID`), a waiting step can be
        /// decided from another process (`books approve RUN_ID STEP --store FILE --as USER`),
        /// and the durations of earlier runs set the timeouts.
        #[arg(long = "store", value_name = "FILE", requires = "run")]
        runs: Option<PathBuf>,
        /// How the job built with --library is printed: `text` (a tree) or `json`.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text, requires = "library")]
        output: Output,
    },
    /// Publish an image version: prints a deploy request per subscribed deployment.
    Publish {
        /// REPOSITORY/IMAGE.
        image: String,
        /// The new version.
        version: String,
        /// The acting user.
        #[arg(long = "as", value_name = "USER")]
        actor: String,
    },
}

/// How `trigger --library` prints the job it builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// A tree a person reads at a glance.
    Text,
    /// The job as JSON, for scripts.
    Json,
}

/// Why the program stops: bad input or a refusal (exit 2), or anything else (exit 1).
#[derive(Debug)]
enum Failure {
    Input(String),
    Internal(String),
    /// `monitors` found a problem: its exit status and a summary.
    Monitors(u8, String),
}

/// `monitors`: a target failed its check.
const EXIT_TARGET_DOWN: u8 = 3;
/// `monitors`: a check could not be made.
const EXIT_CHECK_BROKEN: u8 = 4;

impl From<CatalogError> for Failure {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Store(e) => Failure::Internal(deployer_core::error_chain(&e)),
            other => Failure::Input(other.to_string()),
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Internal(e.to_string()))?;
    out(&text)
}

/// Prints a line to stdout; a closed pipe (`catalog … | head`) is not an error.
fn out(line: &str) -> Result<(), Failure> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::Internal(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// What `trigger --library` does with the job it builds.
struct JobMode {
    /// Run it (else print it).
    run: bool,
    /// Approve its manual steps in advance (else ask on the terminal).
    yes: bool,
    /// The SQLite run store recording the run.
    runs: Option<PathBuf>,
    output: Output,
}

/// Builds the job of `request` from the books in `dir`; prints it, or runs it.
async fn run_job(
    request: &LifecycleRequest,
    dir: &std::path::Path,
    mode: JobMode,
    approver: deployer_core::Approver,
) -> Result<(), Failure> {
    let mut commands = CommandRegistry::new();
    deployer_commands::register_all(&mut commands);
    let mut library = BookLibrary::with_commands(&commands);
    library
        .load_dir(dir)
        .map_err(|e| Failure::Input(e.to_string()))?;
    let history: Option<Arc<dyn RunStore>> = match &mode.runs {
        Some(path) if mode.run => Some(Arc::new(
            deployer_store::SqliteStore::open(path).await.map_err(|e| {
                Failure::Internal(format!("cannot open run store {}: {e}", path.display()))
            })?,
        )),
        _ => None,
    };
    let mut builder =
        JobBuilder::for_request(&library, request).map_err(|e| Failure::Input(e.to_string()))?;
    if let Some(store) = &history {
        builder = builder.history(store.clone());
    }
    let mut job = builder
        .build()
        .await
        .map_err(|e| Failure::Input(e.to_string()))?;
    if !mode.run {
        return match mode.output {
            Output::Text => out(job.tree().trim_end()),
            Output::Json => print_json(&job),
        };
    }
    let connector =
        SshConnector::new(SshOptions::new()).map_err(|e| Failure::Input(e.to_string()))?;
    let (sink, events) = deployer_core::ChannelSink::new();
    let mut executor = Executor::new(Arc::new(connector)).sink(|e: &Event| {
        if let EventKind::TaskFinished { task, outcome, .. } = &e.kind {
            println!(
                "{} {} on {}: {outcome}",
                task.tag.as_deref().unwrap_or(""),
                task.command,
                task.host
            );
        }
    });
    // The acting user approves, with their role on the deployment: in advance with --yes, else
    // at the terminal. A step for other approvers, or one the four-eyes rule keeps from them,
    // fails naming why (or, with --store, waits for a decision from another process).
    let acks = if mode.yes {
        Acknowledgements::all_as(approver, None)
    } else {
        executor = executor.sink(sink);
        let acks = Acknowledgements::new();
        tokio::spawn(approve::prompt(
            events,
            acks.clone(),
            approver,
            mode.runs.clone(),
        ));
        acks
    };
    let mut runner = JobRunner::new(executor, &commands).started_by(match &request.triggered_by {
        Trigger::User { user } | Trigger::ImagePublished { user, .. } => user.clone(),
    });
    if let Some(store) = history {
        runner = runner.runs(Runs::new(store));
    }
    runner
        .run(&mut job, &acks, RunOptions::default())
        .await
        .map_err(|e| match e {
            deployer_books::BookError::Plan(_) => Failure::Input(e.to_string()),
            other => Failure::Internal(other.to_string()),
        })?;
    println!("job {} {}", job.id, job.state);
    if let Some(run) = &job.run_id {
        println!("run {run}");
    }
    if job.state == JobState::Done {
        Ok(())
    } else {
        Err(Failure::Internal(format!(
            "job {} ended {}",
            job.id, job.state
        )))
    }
}

fn print_requests(requests: &[LifecycleRequest]) -> Result<(), Failure> {
    for r in requests {
        eprintln!(
            "would hand to the books engine: {} of {} with book \"{}\" (request {})",
            r.action, r.deployment, r.book, r.id
        );
    }
    print_json(&requests)
}

/// The user's effective role on `target`, as `show` prints it.
fn role_there(data: &CatalogData, actor: &str, target: &Target) -> &'static str {
    data.effective_role(actor, target)
        .map(|r| r.as_str())
        .unwrap_or("none")
}

/// What `actor` may see (`projects`, already pruned to it), with their role on each object.
fn show(data: &CatalogData, actor: &str, projects: &[Project]) {
    if projects.is_empty() {
        println!("(no project visible to {actor})");
    }
    for p in projects {
        let role = role_there(data, actor, &Target::Project(p.slug.clone()));
        println!(
            "project {} ({}) owner {} namespace {} role={role}",
            p.slug,
            p.name,
            p.owner,
            p.namespace.name()
        );
        for g in &p.groups {
            let role = role_there(data, actor, &Target::Group(p.slug.clone(), g.slug.clone()));
            println!("  group {} [{}] role={role}", g.slug, g.group_type);
            for d in &g.deployments {
                let s = CatalogData::effective_settings(g, d);
                let r = DeploymentRef::new(p.slug.clone(), d.slug.clone());
                let clusters: Vec<String> = data
                    .deployment_clusters(&r)
                    .map(|cs| {
                        cs.iter()
                            .map(|c| {
                                format!(
                                    "{} ({})",
                                    c.slug().map(|s| s.to_string()).unwrap_or_default(),
                                    c.state
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let books: Vec<String> = LifecycleAction::ALL
                    .iter()
                    .filter_map(|a| s.books.get(*a).map(|b| format!("{a}={b}")))
                    .collect();
                let role = role_there(data, actor, &Target::Deployment(r.clone()));
                println!(
                    "    deployment {r} scope={} clusters=[{}] books=[{}] role={role}",
                    s.scope.as_ref().map(Slug::as_str).unwrap_or("-"),
                    clusters.join(", "),
                    books.join(", ")
                );
            }
        }
    }
}

fn file(cli: &Cli) -> Result<CatalogData, Failure> {
    let path = cli.file.as_ref().ok_or_else(|| {
        Failure::Input("no catalog: give --file FILE (or --store URL)".to_string())
    })?;
    Ok(CatalogData::load(path)?)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let catalog = match &cli.store {
        Some(url) => {
            let store = deployer_store::open_catalog(url)
                .await
                .map_err(|e| Failure::Internal(deployer_core::error_chain(&e)))?;
            Catalog::new(store)
        }
        None => Catalog::in_memory(file(&cli)?),
    };
    let data = catalog
        .store()
        .load_catalog()
        .await
        .map_err(CatalogError::from)?
        .data;
    match &cli.command {
        Cmd::Check => {
            if cli.store.is_some() && cli.file.is_some() {
                file(&cli)?;
            }
            out("Catalog ok")
        }
        Cmd::Import { actor } => {
            if cli.store.is_none() {
                return Err(Failure::Input("import needs --store URL".to_string()));
            }
            catalog.import(actor, file(&cli)?).await?;
            let revision = catalog
                .store()
                .load_catalog()
                .await
                .map_err(CatalogError::from)?
                .revision;
            out(&format!("Catalog stored (revision {revision})"))
        }
        Cmd::Monitors => {
            let host = std::sync::Arc::new(deployer_remote::LocalHost::new());
            let runner = MonitorRunner::new(
                catalog.store().clone(),
                std::sync::Arc::new(CurlChecker::new(host)),
            );
            let (mut down, mut broken) = (0, 0);
            for s in runner.run_due(std::time::SystemTime::now()).await? {
                let state = serde_json::to_value(s.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let why = match &s.last {
                    Some(l) if !l.ok => {
                        let failure = l.failure.unwrap_or(CheckFailure::Down);
                        match failure {
                            CheckFailure::Down => down += 1,
                            CheckFailure::Broken => broken += 1,
                        }
                        format!(" {failure}: {}", deployer_core::one_line(&l.message))
                    }
                    _ => String::new(),
                };
                out(&format!("{}/{} {state}{why}", s.deployment, s.monitor))?;
            }
            if down > 0 {
                Err(Failure::Monitors(
                    EXIT_TARGET_DOWN,
                    format!("{down} monitor(s) found their target down"),
                ))
            } else if broken > 0 {
                Err(Failure::Monitors(
                    EXIT_CHECK_BROKEN,
                    format!("{broken} monitor check(s) could not be made"),
                ))
            } else {
                Ok(())
            }
        }
        Cmd::Show { actor, json } => {
            let projects = catalog.projects(actor).await?;
            if *json {
                print_json(&projects)
            } else {
                show(&data, actor, &projects);
                Ok(())
            }
        }
        Cmd::Scope { deployment, actor } => {
            let r: DeploymentRef = deployment.parse()?;
            print_json(&catalog.scope(actor, &r).await?)
        }
        Cmd::Trigger {
            deployment,
            action,
            actor,
            library,
            run,
            yes,
            runs,
            output,
        } => {
            let r: DeploymentRef = deployment.parse()?;
            let action: LifecycleAction = action.parse()?;
            let request = catalog.trigger(actor, &r, action).await?;
            match library {
                None => print_requests(std::slice::from_ref(&request)),
                Some(dir) => {
                    let role = data.role_of(actor, &deployer_catalog::Target::Deployment(r));
                    let approver = deployer_core::Approver::new(actor.as_str())
                        .with_roles(deployer_catalog::Role::names_held(role));
                    let mode = JobMode {
                        run: *run,
                        yes: *yes,
                        runs: runs.clone(),
                        output: *output,
                    };
                    run_job(&request, dir, mode, approver).await
                }
            }
        }
        Cmd::Publish {
            image,
            version,
            actor,
        } => {
            let (repo, img) = image.split_once('/').ok_or_else(|| {
                Failure::Input(format!("image \"{image}\": expected REPOSITORY/IMAGE"))
            })?;
            let requests = catalog
                .publish_image(actor, &Slug::new(repo)?, &Slug::new(img)?, version)
                .await?;
            if requests.is_empty() {
                eprintln!("no deployment subscribes to {image}");
            }
            print_requests(&requests)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Internal(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Monitors(code, message)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}
