//! `catalog`: load a catalog of projects, deployment groups and deployments from YAML, show
//! what a user may see, and trigger a deployment's lifecycle action as a user.
//!
//! ```text
//! catalog --file examples/catalog.yaml check                      # validate: "Catalog ok"
//! catalog --file examples/catalog.yaml show --as bob              # what bob may see
//! catalog --file examples/catalog.yaml scope shop/prod --as bob   # the scope books see (JSON)
//! catalog --file examples/catalog.yaml trigger shop/prod deploy --as alice
//! catalog --file examples/catalog.yaml publish shop-app/app 1.5.0 --as root
//! ```
//!
//! The books engine does not exist yet: `trigger` and `publish` print the lifecycle requests
//! (JSON) they would hand to it. The catalog lives in memory for the duration of one call.
//!
//! Exit codes: 0 success, 1 an internal failure, 2 bad input or a refused user.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deployer_core::{
    Catalog, CatalogData, CatalogError, DeploymentRef, LifecycleAction, LifecycleRequest, Project,
    Slug,
};

#[derive(Debug, Parser)]
#[command(
    name = "catalog",
    version,
    about = "Show a deployment catalog and trigger lifecycle actions"
)]
struct Cli {
    /// The catalog file (YAML or JSON).
    #[arg(long, short = 'f', value_name = "FILE", env = "DEPLOYER_CATALOG")]
    file: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate the file and exit.
    Check,
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
    /// Trigger a lifecycle action of a deployment: prints the request for the books engine.
    Trigger {
        /// PROJECT/DEPLOYMENT.
        deployment: String,
        /// general, deploy, pause, backup, restore, sync_ingress, upgrade, drop, config_scope.
        action: String,
        /// The acting user.
        #[arg(long = "as", value_name = "USER")]
        actor: String,
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

/// Why the program stops: bad input or a refusal (exit 2), or anything else (exit 1).
#[derive(Debug)]
enum Failure {
    Input(String),
    Internal(String),
}

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

fn print_requests(requests: &[LifecycleRequest]) -> Result<(), Failure> {
    for r in requests {
        eprintln!(
            "would hand to the books engine: {} of {} with book \"{}\" (request {})",
            r.action, r.deployment, r.book, r.id
        );
    }
    print_json(&requests)
}

fn show(data: &CatalogData, projects: &[Project]) {
    if projects.is_empty() {
        println!("(no project visible)");
    }
    for p in projects {
        println!(
            "project {} ({}) owner {} namespace {}",
            p.slug,
            p.name,
            p.owner,
            p.namespace.name()
        );
        for g in &p.groups {
            println!("  group {} [{}]", g.slug, g.group_type);
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
                println!(
                    "    deployment {r} scope={} clusters=[{}] books=[{}]",
                    s.scope.as_ref().map(Slug::as_str).unwrap_or("-"),
                    clusters.join(", "),
                    books.join(", ")
                );
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let data = CatalogData::load(&cli.file)?;
    let catalog = Catalog::in_memory(data.clone());
    match cli.command {
        Cmd::Check => {
            println!("Catalog ok");
            Ok(())
        }
        Cmd::Show { actor, json } => {
            let projects = catalog.projects(&actor).await?;
            if json {
                print_json(&projects)
            } else {
                show(&data, &projects);
                Ok(())
            }
        }
        Cmd::Scope { deployment, actor } => {
            let r: DeploymentRef = deployment.parse()?;
            print_json(&catalog.scope(&actor, &r).await?)
        }
        Cmd::Trigger {
            deployment,
            action,
            actor,
        } => {
            let r: DeploymentRef = deployment.parse()?;
            let action: LifecycleAction = action.parse()?;
            let request = catalog.trigger(&actor, &r, action).await?;
            print_requests(std::slice::from_ref(&request))
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
                .publish_image(&actor, &Slug::new(repo)?, &Slug::new(img)?, &version)
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
    }
}
