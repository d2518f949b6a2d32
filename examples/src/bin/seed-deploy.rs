//! `seed-deploy`: the seed's example program, end to end. It reads a YAML config (`platform`
//! picks the generator) or a saved tasklist, validates every task (the dry run), and runs the
//! plan on this machine, logging in the shape `time [LEVEL] [component] [host] [tag] message`.
//!
//! ```text
//! seed-deploy --config examples/test.conf            # generate, validate, run
//! seed-deploy --config examples/test.conf --dry-run  # validate only: "Syntax ok"
//! seed-deploy --config examples/test.conf --dump     # print the tasklist
//! seed-deploy --tasklist saved.json                  # run a saved tasklist
//! ```
//!
//! Exit codes: 0 success, 1 the run failed, 2 bad input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use deployer::remote::LocalConnector;
use deployer::report::{LogFormat, TracingSink};
use deployer::{
    CommandRegistry, Config, Executor, GeneratorContext, GeneratorRegistry, Plan, Tasklist,
};
use deployer_examples::{test_command, test_generator};

/// Plan and run a deploy (the seed's example program).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// YAML config; its `platform` picks the generator.
    #[arg(long, value_name = "FILE", conflicts_with = "tasklist")]
    config: Option<PathBuf>,
    /// Run a saved tasklist instead of generating one.
    #[arg(long, value_name = "FILE", required_unless_present = "config")]
    tasklist: Option<PathBuf>,
    /// Validate every task and stop: prints "Syntax ok" or every problem.
    #[arg(long)]
    dry_run: bool,
    /// Print the tasklist as JSON and stop.
    #[arg(long)]
    dump: bool,
    /// Save the tasklist to FILE (and go on unless --dry-run or --dump).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Set a config value from the command line: KEY=VALUE (VALUE is YAML-ish JSON or a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Also log each command's output.
    #[arg(short, long)]
    verbose: bool,
}

fn registries() -> (GeneratorRegistry, CommandRegistry) {
    let mut generators = GeneratorRegistry::new();
    generators.register("test", test_generator::TestGenerator);
    let mut commands = CommandRegistry::new();
    commands.register::<test_command::TestCommand>("test_command");
    (generators, commands)
}

fn overrides(sets: &[String]) -> Result<Vec<(String, serde_json::Value)>, String> {
    sets.iter()
        .map(|s| {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| format!("--set {s}: expected KEY=VALUE"))?;
            let value = serde_json::from_str(v).unwrap_or_else(|_| v.into());
            Ok((k.to_string(), value))
        })
        .collect()
}

async fn real_main(cli: Cli) -> Result<bool, String> {
    let (generators, commands) = registries();
    let tasklist = match (&cli.config, &cli.tasklist) {
        (_, Some(path)) => {
            tracing::info!(
                component = "Tasklist",
                "Reading task list from {}",
                path.display()
            );
            Tasklist::load(path).map_err(|e| e.to_string())?
        }
        (Some(path), None) => {
            tracing::info!(
                component = "Config",
                "Loading configuration from {}",
                path.display()
            );
            let config =
                Config::load_with(path, overrides(&cli.set)?).map_err(|e| e.to_string())?;
            generators
                .generate(GeneratorContext::new(config))
                .await
                .map_err(|e| e.to_string())?
        }
        (None, None) => return Err("give --config or --tasklist".into()),
    };
    let plan = Plan::build(&tasklist, &commands).map_err(|e| e.to_string())?;
    if let Some(path) = &cli.save {
        tasklist.save(path).map_err(|e| e.to_string())?;
    }
    if cli.dump {
        print!("{}", tasklist.to_json_string());
        return Ok(true);
    }
    if cli.dry_run {
        println!("Syntax ok");
        return Ok(true);
    }
    let report = Executor::new(Arc::new(LocalConnector::new()))
        .sink(TracingSink)
        .run(&plan)
        .await;
    match report.into_result() {
        Ok(_) => Ok(true),
        Err(e) => {
            eprintln!("Execution failed: {e}");
            Ok(false)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .event_format(LogFormat::default())
        .with_max_level(if cli.verbose {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
