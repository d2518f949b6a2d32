//! `deploy`: plan a deploy from a YAML config (or load a saved tasklist), validate every task,
//! and run it — on this machine or over SSH — showing progress and a per-host summary.
//!
//! ```text
//! deploy --config examples/local.yaml                 # deploy the bundled sample locally
//! deploy --config deploy.yaml --directory build/      # deploy every artifact in build/
//! deploy --config deploy.yaml --component web-1.2.tar.gz --hosts fe001,fe002
//! deploy --config deploy.yaml --dry-run               # validate: "Syntax ok" or every problem
//! deploy --config deploy.yaml --dump --format dot     # the plan as a Graphviz graph
//! deploy --tasklist saved.json --output json          # run a saved plan, events as JSON lines
//! deploy --config deploy.yaml status                  # live and earlier versions, locks
//! deploy --config deploy.yaml lock status             # who holds each deploy lock; STALE ones
//! deploy --config deploy.yaml lock release [--force]  # free stale locks
//! deploy --config deploy.yaml rollback [--to 1.0.0] [--dry-run] [--yes]
//! deploy --config deploy.yaml -i hosts.ini --limit 'web:!web2'   # an Ansible inventory
//! deploy -i hosts.ini hosts 'web*:&prod'              # preview a host pattern
//! deploy users add bob --role developer --users users.yaml   # the password from stdin
//! deploy --store sqlite://runs.db serve --users users.yaml   # the run viewer, 127.0.0.1:8080
//! ```
//!
//! Secrets: a task argument written `{"secret": "…"}` or `{"secret_env": "VAR"}` (or one its
//! command declares secret, such as `lb_password`) reaches the command but shows `***` in
//! progress, logs, JSON output, `--dump`, `--save` and the run store. A run store keeps no
//! secret: resuming a run with inline secrets needs `--tasklist` with the file it was started
//! from; `{"secret_env": "VAR"}` secrets are read from the environment again.
//!
//! Exit codes (`deployer_core::exit`): 0 success (or nothing to do), 1 the deploy failed, 2
//! bad input (nothing ran), 3 `deploy plan` found changes, 130 cancelled (SIGINT, SIGTERM or
//! SIGHUP: the first drains, the second stops running tasks); 4 is reserved for a run that
//! completed with hosts dropped within a failure budget.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use deployer_core::inventory::Inventory;
use deployer_core::{
    CommandRegistry, Config, Connector, DriveError, Driver, EventKind, Finished, GeneratorContext,
    GeneratorError, GeneratorRegistry, Plan, Redactor, TaskEntry, Tasklist, exit,
};
use deployer_core::{ResumeOptions, RunId, RunState, Runs, RunsError, StoreError, TaskCounts};
use deployer_release::{HostStatus, LockVerdict, PlanAction, ReleaseGenerator};
use deployer_remote::{SshConnector, SshOptions};
use deployer_report::{
    JsonLines, LogFormat, Progress, Summary, TracingSink, render_approvals, render_run,
    render_runs, render_work, stage_estimates, to_dot,
};
use deployer_store::StoreUrl;
use serde_json::Value;

#[path = "deploy/releases.rs"]
mod releases;
#[path = "deploy/serve.rs"]
mod serve;
#[path = "deploy/work.rs"]
mod work;
use releases::{lock_main, rollback_main, status_main};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Progress bars on a terminal, log lines otherwise, and a summary table.
    Text,
    /// Every event as a JSON object per line on stdout (the recap still goes to stderr).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RecapStyle {
    /// Above 20 hosts, hosts with the same counts share a row; failures listed one by one.
    Grouped,
    /// A row for every host.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Color {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DumpFormat {
    /// The tasklist as JSON (loads back with --tasklist).
    Json,
    /// A Graphviz graph of stages, chains and hosts.
    Dot,
}

/// Plan and run a deploy; every run is recorded in a run store and can be resumed.
#[derive(Debug, Parser)]
#[command(
    name = "deploy",
    version,
    max_term_width = 100,
    after_help = "Exit status: 0 success (also when there was nothing to do: the recap says so); \
                  1 a task failed, or a host or the run store could not be reached; 2 bad \
                  input (nothing ran); 3 `deploy plan`: something would change; 4 completed, but hosts \
                  failed within the failure budget (--max-failures) and were dropped (the recap \
                  names them; `runs resume` retries their remaining tasks); 130 cancelled \
                  (SIGINT, SIGTERM or SIGHUP: the first drains, the second stops running \
                  tasks)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// YAML config; its `platform` picks the generator, its `ssh` section says how to connect
    /// (also with --tasklist and `runs resume`).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Artifact to deploy (a file, or a name in --directory); repeatable.
    #[arg(long, value_name = "FILE")]
    component: Vec<String>,
    /// Directory holding the artifacts to deploy.
    #[arg(long, value_name = "DIR")]
    directory: Option<PathBuf>,
    /// Run a saved tasklist (no config needed).
    #[arg(long, value_name = "FILE")]
    tasklist: Option<PathBuf>,
    /// Validate every task and touch no host: prints "Syntax ok" or every problem.
    #[arg(long)]
    dry_run: bool,
    /// Hand the run to `deploy worker` processes through --store (PostgreSQL) instead of
    /// running it here; follows it (progress, recap, exit status) unless --detach.
    #[arg(long)]
    submit: bool,
    /// With --submit: print the run's id and exit 0 at once.
    #[arg(long, requires = "submit")]
    detach: bool,
    /// Print the tasklist and stop (inline secrets show as "***").
    #[arg(long)]
    dump: bool,
    /// Format of --dump.
    #[arg(long, value_enum, default_value_t = DumpFormat::Json, requires = "dump")]
    format: DumpFormat,
    /// Save the tasklist to FILE (inline secrets are written as "***": use
    /// {"secret_env": "VAR"} for a saved plan that runs as it is).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Only these hosts (comma-separated; repeatable); a host pattern too (a group, `web*`,
    /// `a:&b`, `a:!b`, see --limit).
    #[arg(long, value_name = "HOSTS", value_delimiter = ',', global = true)]
    hosts: Vec<String>,
    /// Only the hosts of this pattern: names, groups, globs (`web*`, `db[0-9]`), `all`;
    /// `a:b` or `a,b` unite, `a:&b` intersects, `a:!b` excludes (as Ansible's --limit).
    #[arg(long, value_name = "PATTERN")]
    limit: Option<String>,
    /// An inventory: Ansible INI (`.ini` or no extension), YAML (`.yaml`/`.yml`), dynamic
    /// JSON (`.json`), a directory of them, or an executable printing the JSON when run with
    /// `--list`; repeatable (sources merge, the later's variables win). Added to the config's
    /// `hostgroup` lists and `inventory` key.
    #[arg(short = 'i', long = "inventory", value_name = "FILE", global = true)]
    inventory: Vec<PathBuf>,
    /// Only hosts of these hostgroups (comma-separated; repeatable; needs --config).
    #[arg(long, value_name = "GROUPS", value_delimiter = ',', global = true)]
    hostgroups: Vec<String>,
    /// Deploy to hosts that already run the version, too.
    #[arg(long)]
    redeploy: bool,
    /// Failure budget: up to N hosts may fail; each is dropped from the rest of the run and
    /// the others go on (exit 4 when the run completes so). Overrides the tasklist's or
    /// config's `max_failures`.
    #[arg(long, value_name = "N")]
    max_failures: Option<usize>,
    /// Failure budget as a share of the hosts: up to P % may fail and be dropped.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u8).range(0..=100))]
    max_fail_percentage: Option<u8>,
    /// Run at most N tasks at once in any stage.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    parallel: Option<u32>,
    /// Set a config value: KEY=VALUE (dotted keys reach into sections; VALUE is JSON or text).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Show each command's output.
    #[arg(short, long)]
    verbose: bool,
    /// Show debug logs of the library too.
    #[arg(short, long)]
    debug: bool,
    /// How to report progress.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    /// How the recap lists hosts.
    #[arg(long, value_enum, default_value_t = RecapStyle::Grouped, global = true)]
    recap: RecapStyle,
    /// When to colour the recap and progress.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    color: Color,
    /// Where runs are recorded: a SQLite file, `sqlite::memory:`, or `postgres://…` (default:
    /// one history per user, `$XDG_STATE_HOME/deployer/runs.db`, else
    /// `~/.local/state/deployer/runs.db`).
    #[arg(long, value_name = "URL", env = "DEPLOYER_STORE", default_value_t = default_store(), global = true)]
    store: String,
    /// Finished runs older than this are purged when deploy starts (e.g. 30d, 12h).
    #[arg(long, value_name = "AGE", default_value = "30d", value_parser = humantime::parse_duration, global = true)]
    keep_runs: Duration,
    /// How long this controller's claim on a run lasts without renewal; a controller that dies
    /// leaves the run to be resumed once its lease expired.
    #[arg(long, value_name = "AGE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    lease_ttl: Duration,
}

/// Recorded runs, and the live plan.
#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// What a deploy of --config would do on each host, asked live (the version each host
    /// runs, who holds its deploy lock); changes nothing. Exit 0: nothing would change; 3:
    /// something would.
    Plan,
    /// Live and earlier versions and the deploy lock, per host and service.
    ///
    /// Asks every host of --config (or --hosts/--hostgroups) for the version `current` points
    /// to, the other versions in its releases directory, and its deploy lock (holder, age,
    /// STALE when no live run holds it); changes nothing.
    Status,
    /// Deploy locks: who holds them; free stale ones.
    #[command(subcommand)]
    Lock(LockCmd),
    /// Switch hosts back to the version live before (or --to VERSION).
    ///
    /// Every host of --config (or --hosts/--hostgroups) goes back through the same rolling
    /// window as a deploy (stop, switch, start, check; min_nodes_up hosts keep serving), under
    /// the deploy lock. On a terminal it asks first; answering no exits 1 with nothing changed.
    /// A version missing on a targeted host is bad input (exit 2), naming the hosts and what
    /// they have.
    Rollback {
        /// The version to go back to; every targeted host must have it.
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Print the plan and stop (the hosts are asked what they run, nothing changes).
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Inspect, resume and purge recorded runs.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// The hosts a pattern selects, with their groups and how each would be reached
    /// (address, port, user, jump host); contacts no host. Exit 2 when a part of the pattern
    /// matches nothing.
    Hosts {
        /// A host pattern (see --limit); default `all`.
        #[arg(default_value = "all")]
        pattern: String,
    },
    /// Serve the run viewer of --store in the browser: runs, live progress, approvals, cancel.
    ///
    /// Listens on 127.0.0.1:8080 unless --listen says otherwise (beyond loopback only with
    /// --public). Somebody must be able to log in: --users FILE (`deploy users add`),
    /// --proxy-user-header NAME, or --allow-anonymous-read for read-only pages. It serves
    /// plain HTTP: on a loopback address the session cookie is sent without `Secure` (nobody
    /// else can listen in); elsewhere it is `Secure`, so browsers log in only through an
    /// HTTPS proxy in front. Stops on SIGINT or SIGTERM.
    Serve(serve::ServeArgs),
    /// Users of `deploy serve --users FILE`.
    #[command(subcommand)]
    Users(serve::UsersCmd),
    /// Claim and run entries of runs submitted (`deploy --submit`) to --store (PostgreSQL).
    ///
    /// Registers the same commands as deploy and connects over SSH as --config's `ssh`
    /// section and inventory say (-i inventories too); a host's zone is its inventory host var
    /// `zone`. Runs until SIGINT or SIGTERM: the first claims nothing more and lets running
    /// entries finish, the second stops them.
    Worker(work::WorkerArgs),
}

#[derive(Debug, clap::Subcommand)]
enum LockCmd {
    /// Per host and service: locked or not, run id, user, controller, age, STALE.
    ///
    /// A lock is STALE when its run is finished, is not in the run store, or is no longer
    /// driven (its controller's lease expired).
    Status,
    /// Free stale locks (any with --force); exit 1 when one was refused.
    ///
    /// Says what it freed and what it refused, and why. A lock taken again since it was read
    /// is left alone.
    Release {
        /// Free live locks too.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
enum RunsCmd {
    /// The newest runs.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One run: its hosts and tasks.
    Show {
        /// The run id.
        id: String,
    },
    /// Continue a failed, cancelled or interrupted run; done tasks are not run again.
    Resume {
        /// The run id.
        id: String,
        /// The tasklist the run was started from: the run store keeps inline secrets
        /// (`{"secret": …}`) redacted, so a run that has them takes them from here.
        #[arg(long, value_name = "FILE")]
        tasklist: Option<PathBuf>,
        /// Run again tasks that were running when the run was interrupted even if their
        /// command is not idempotent.
        #[arg(long)]
        force: bool,
        /// If another controller's lease is still live, wait for it to expire.
        #[arg(long)]
        wait: bool,
    },
    /// Delete finished runs older than AGE.
    Purge {
        /// e.g. 14d, 12h.
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

/// A problem with the input (exit 2), or a failure reaching hosts while planning (exit 1).
enum BadInput {
    Input(String),
    Hosts(String),
}

impl<E: std::error::Error + 'static> From<E> for BadInput {
    /// The error with its causes: `cannot access tasklist file x.json: stream did not contain
    /// valid UTF-8`.
    fn from(e: E) -> Self {
        BadInput::Input(deployer_core::error_chain(&e))
    }
}

/// The per-user run store: `$XDG_STATE_HOME/deployer/runs.db`, else
/// `$HOME/.local/state/deployer/runs.db`, else `./.deployer/runs.db` — the same history
/// wherever `deploy` is started from.
fn default_store() -> String {
    let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    let state = non_empty("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match state {
        Some(dir) => dir.join("deployer/runs.db").display().to_string(),
        None => deployer_store::DEFAULT_STORE_URL.to_string(),
    }
}

fn registries() -> (GeneratorRegistry, CommandRegistry) {
    let mut generators = GeneratorRegistry::new();
    generators.register("release", ReleaseGenerator);
    let mut commands = CommandRegistry::new();
    deployer_commands::register_all(&mut commands);
    (generators, commands)
}

fn overrides(cli: &Cli, config_dir: &Path) -> Result<Vec<(String, Value)>, BadInput> {
    let mut out = Vec::new();
    for s in &cli.set {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| BadInput::Input(format!("--set {s}: expected KEY=VALUE")))?;
        out.push((
            k.to_string(),
            serde_json::from_str(v).unwrap_or_else(|_| v.into()),
        ));
    }
    if !cli.component.is_empty() {
        out.push(("component".into(), cli.component.clone().into()));
    }
    if let Some(d) = &cli.directory {
        out.push(("directory".into(), d.to_string_lossy().into_owned().into()));
    } else {
        // A relative `directory` in the config is relative to the config file.
        if let Some(Value::String(d)) = config_dir_value(cli)?
            && Path::new(&d).is_relative()
        {
            out.push((
                "directory".into(),
                config_dir.join(d).to_string_lossy().into_owned().into(),
            ));
        }
    }
    if cli.redeploy {
        out.push(("redeploy".into(), true.into()));
    }
    if let Some(n) = cli.max_failures {
        out.push(("max_failures".into(), n.into()));
    }
    if let Some(p) = cli.max_fail_percentage {
        out.push(("max_fail_percentage".into(), p.into()));
    }
    if !cli.hostgroups.is_empty() {
        out.push(("only_hostgroups".into(), cli.hostgroups.clone().into()));
    }
    Ok(out)
}

fn config_dir_value(cli: &Cli) -> Result<Option<Value>, BadInput> {
    let Some(path) = &cli.config else {
        return Ok(None);
    };
    // Read without overrides (and without running a dynamic inventory) just to learn
    // `directory`; errors surface in the real load.
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    Ok(Config::from_yaml_str_with(
        &text,
        &path.display().to_string(),
        [("platform".to_string(), Value::from("_"))],
    )
    .ok()
    .and_then(|c| c.get("directory").cloned()))
}

/// Keeps only entries whose host is in `hosts`.
fn filter_hosts(tasklist: &mut Tasklist, hosts: &[String]) {
    for stage in &mut tasklist.stages {
        stage
            .tasks
            .retain(|e: &TaskEntry| hosts.iter().any(|h| h == e.host_key()));
    }
    tasklist.stages.retain(|s| !s.tasks.is_empty());
}

/// SSH settings from the config's `user` and `ssh` section and its inventory's host vars
/// ([`SshOptions::from_config`]).
fn ssh_options(config: Option<&Config>) -> Result<SshOptions, BadInput> {
    match config {
        Some(config) => Ok(SshOptions::from_config(config)?),
        None => Ok(SshOptions::new()),
    }
}

/// SSH settings for `config`, or without one, from the host vars of `-i` inventories.
fn ssh_options_for(cli: &Cli, config: Option<&Config>) -> Result<SshOptions, BadInput> {
    if config.is_some() || cli.inventory.is_empty() {
        return ssh_options(config);
    }
    ssh_options(inventory_only(cli)?.as_ref())
}

/// Without a config, a config of nothing but the `-i` inventories (`None` without them).
fn inventory_only(cli: &Cli) -> Result<Option<Config>, BadInput> {
    if cli.inventory.is_empty() {
        return Ok(None);
    }
    let mut bare = Config::from_yaml_str("platform: none\n", "<inventory>")?;
    for source in &cli.inventory {
        bare = bare.with_inventory(Inventory::load(source)?)?;
    }
    Ok(Some(bare))
}

fn load_config(cli: &Cli) -> Result<Option<Config>, BadInput> {
    load_config_with(cli, Vec::new())
}

/// The config with the flags' overrides and `extra` ones.
fn load_config_with(cli: &Cli, extra: Vec<(String, Value)>) -> Result<Option<Config>, BadInput> {
    let Some(path) = &cli.config else {
        return Ok(None);
    };
    tracing::info!(
        component = "Config",
        "Loading configuration from {}",
        path.display()
    );
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut overrides = overrides(cli, &dir)?;
    overrides.extend(extra);
    let mut config = Config::load_with(path, overrides)?;
    for source in &cli.inventory {
        config = config.with_inventory(Inventory::load(source)?)?;
    }
    if let Some(hosts) = selected_hosts(cli, config.inventory())? {
        // A config's deploy touches the hosts of its services: the selection narrows those.
        let mut served = std::collections::BTreeSet::new();
        for name in config.services().keys() {
            served.extend(config.service_hosts(name)?);
        }
        let hosts: Vec<String> = if cli.limit.is_some() {
            let kept: Vec<String> = hosts.into_iter().filter(|h| served.contains(h)).collect();
            if kept.is_empty() && !served.is_empty() {
                return Err(BadInput::Input(format!(
                    "--limit {}: no selected host runs a service of {} (its hosts: {})",
                    cli.limit.as_deref().unwrap_or_default(),
                    path.display(),
                    served.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            kept
        } else {
            hosts
        };
        config = config.with_override("only_hosts", hosts.into())?;
    }
    Ok(Some(config))
}

/// Whether `--hosts` is a pattern rather than a list of plain host names.
fn hosts_is_pattern(cli: &Cli, inventory: &Inventory) -> bool {
    cli.hosts.iter().any(|h| {
        h.contains(['*', '?', '[', ':', '&', '!'])
            || h == "all"
            || inventory.group_hosts(h).is_some() && !inventory.has_host(h)
    })
}

/// The hosts `--hosts` and `--limit` select from `inventory` (`None`: neither given). Plain
/// `--hosts` names are kept as given (the generator checks them, as before patterns).
fn selected_hosts(cli: &Cli, inventory: &Inventory) -> Result<Option<Vec<String>>, BadInput> {
    let mut selected: Option<Vec<String>> = None;
    if !cli.hosts.is_empty() {
        selected = Some(if hosts_is_pattern(cli, inventory) {
            inventory
                .select(&cli.hosts.join(","))
                .map_err(|e| BadInput::Input(format!("--hosts: {e}")))?
        } else {
            cli.hosts.clone()
        });
    }
    if let Some(limit) = &cli.limit {
        let limited = inventory
            .select(limit)
            .map_err(|e| BadInput::Input(format!("--limit: {e}")))?;
        selected = Some(match selected {
            None => limited,
            Some(s) => s.into_iter().filter(|h| limited.contains(h)).collect(),
        });
    }
    Ok(selected)
}

/// The inventory of the input: the config's (with `-i`), else `-i` alone, plus a tasklist's
/// hosts (ungrouped).
fn input_inventory(
    cli: &Cli,
    config: Option<&Config>,
    tasklist: Option<&Tasklist>,
) -> Result<Inventory, BadInput> {
    let mut inventory = match config {
        Some(c) => c.inventory().clone(),
        None => {
            let mut inv = Inventory::new();
            for source in &cli.inventory {
                inv.merge(Inventory::load(source)?);
            }
            inv
        }
    };
    if let Some(t) = tasklist {
        let hosts: Vec<String> = t.hosts().into_iter().map(str::to_string).collect();
        let group = [("ungrouped".to_string(), hosts)];
        let mut merged = Inventory::from_hostgroups(group.iter().map(|(g, h)| (g, h)));
        merged.merge(inventory);
        inventory = merged;
    }
    Ok(inventory)
}

/// `deploy hosts PATTERN`: the selection, one line per host (or JSON), and a count.
fn hosts_main(cli: &Cli, pattern: &str) -> Result<u8, BadInput> {
    let config = load_config(cli)?;
    let tasklist = match &cli.tasklist {
        Some(path) => Some(Tasklist::load(path)?),
        None => None,
    };
    let inventory = input_inventory(cli, config.as_ref(), tasklist.as_ref())?;
    let hosts = inventory.select(pattern)?;
    let connector = SshConnector::new(ssh_options_for(cli, config.as_ref())?)?;
    let mut rows = Vec::new();
    for host in &hosts {
        let groups: Vec<&str> = inventory
            .host_groups(host)
            .into_iter()
            .filter(|g| *g != "all")
            .collect();
        let spec = deployer_core::HostSpec::remote(host.as_str(), None);
        let (address, port, user, jump) = match connector.ssh_host(&spec) {
            Ok(Some(h)) => {
                let (a, p) = h.address();
                (a.to_string(), p, h.user().to_string(), h.proxy_jump())
            }
            Ok(None) => ("local".to_string(), 0, deployer_core::os_user(), None),
            Err(e) => return Err(BadInput::Input(deployer_core::error_chain(&e))),
        };
        rows.push(serde_json::json!({
            "host": host,
            "groups": groups,
            "address": address,
            "port": port,
            "user": user,
            "proxy_jump": jump,
        }));
    }
    match cli.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| BadInput::Hosts(e.to_string()))?
        ),
        Output::Text => {
            let width = hosts.iter().map(String::len).max().unwrap_or(4).max(4);
            for row in &rows {
                let groups = row["groups"]
                    .as_array()
                    .map(|g| {
                        g.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let via = match row["proxy_jump"].as_str() {
                    Some(j) => format!(" via {j}"),
                    None => String::new(),
                };
                println!(
                    "{:<width$}  {}@{}:{}{via}  groups: {}",
                    row["host"].as_str().unwrap_or_default(),
                    row["user"].as_str().unwrap_or_default(),
                    row["address"].as_str().unwrap_or_default(),
                    row["port"],
                    if groups.is_empty() { "-" } else { &groups },
                );
            }
            println!(
                "{} host{} selected by {}",
                hosts.len(),
                if hosts.len() == 1 { "" } else { "s" },
                deployer_core::shown(pattern)
            );
        }
    }
    Ok(exit::SUCCESS)
}

/// The config of a subcommand that knows the release platform only, with `extra` overrides.
fn release_config(cli: &Cli, what: &str, extra: Vec<(String, Value)>) -> Result<Config, BadInput> {
    let Some(config) = load_config_with(cli, extra)? else {
        return Err(BadInput::Input(format!("{what} needs --config FILE")));
    };
    if config.platform() != "release" {
        return Err(BadInput::Input(format!(
            "{what} knows the release platform only, not {:?}",
            config.platform()
        )));
    }
    Ok(config)
}

/// The SSH connector `config` asks for.
fn connector_for(config: &Config) -> Result<Arc<dyn Connector>, BadInput> {
    Ok(Arc::new(SshConnector::new(ssh_options(Some(config))?)?))
}

/// A generator context over SSH for `config`.
fn release_context(config: Config) -> Result<GeneratorContext, BadInput> {
    let connector = connector_for(&config)?;
    Ok(GeneratorContext::new(config).with_connector(connector))
}

/// A release generator error: a host that cannot be reached is exit 1, the rest bad input.
fn generator_error(e: GeneratorError) -> BadInput {
    match e {
        GeneratorError::Remote(e) => BadInput::Hosts(deployer_core::error_chain(&e)),
        other => BadInput::Input(other.to_string()),
    }
}

/// `deploy plan`: the release generator's survey of every host, as a table or JSON.
async fn plan_main(cli: &Cli) -> Result<u8, BadInput> {
    let ctx = release_context(release_config(cli, "deploy plan", Vec::new())?)?;
    let hosts = deployer_release::survey(&ctx)
        .await
        .map_err(generator_error)?;
    match cli.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&hosts).map_err(|e| BadInput::Hosts(e.to_string()))?
        ),
        Output::Text => {
            let width = hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
            println!("{:<width$}  {:<12}  WHAT", "HOST", "SERVICE");
            for h in &hosts {
                let live = h.live.as_deref().unwrap_or("nothing");
                let what = match (h.action, &h.locked_by) {
                    (_, Some(by)) => format!("locked by {by}"),
                    (PlanAction::Skip, _) => format!("skip: already on {}", h.version),
                    (PlanAction::Redeploy, _) => format!("redeploy {}", h.version),
                    _ => format!("deploy {live} → {}", h.version),
                };
                println!("{:<width$}  {:<12}  {what}", h.host, h.service);
            }
        }
    }
    Ok(if hosts.iter().any(|h| h.action.changes()) {
        exit::CHANGES_PENDING
    } else {
        exit::SUCCESS
    })
}

/// The driver of this program: the registries, the connector, the store and the sinks.
fn driver(
    cli: &Cli,
    connector: Arc<dyn Connector>,
    redactor: &Redactor,
    runs: Option<&Runs>,
) -> Driver {
    let (generators, commands) = registries();
    let mut driver = Driver::new(connector)
        .generators(generators)
        .commands(commands)
        .redactor(redactor.clone())
        .max_concurrency(cli.parallel.map(|p| p as usize))
        .lease_ttl(cli.lease_ttl);
    if let Some(runs) = runs {
        driver = driver.store(runs.store().clone());
    }
    driver
}

async fn plan_tasklist(
    cli: &Cli,
    config: Option<Config>,
    driver: &Driver,
) -> Result<Plan, BadInput> {
    match (config, &cli.tasklist) {
        (config, Some(path)) => {
            tracing::info!(
                component = "Tasklist",
                "Reading task list from {}",
                path.display()
            );
            let mut t = Tasklist::load_checked(path, driver.command_registry())?;
            if !cli.hostgroups.is_empty() {
                return Err(BadInput::Input("--hostgroups needs --config".into()));
            }
            let inventory = input_inventory(cli, None, Some(&t))?;
            if !cli.hosts.is_empty() && hosts_is_pattern(cli, &inventory) || cli.limit.is_some() {
                let hosts = selected_hosts(cli, &inventory)?.unwrap_or_default();
                filter_hosts(&mut t, &hosts);
            } else if !cli.hosts.is_empty() {
                let known: Vec<String> = t.hosts().into_iter().map(str::to_string).collect();
                let unknown: Vec<&String> =
                    cli.hosts.iter().filter(|h| !known.contains(h)).collect();
                if !unknown.is_empty() {
                    return Err(BadInput::Input(format!(
                        "--hosts: no task runs on {} (the tasklist's hosts: {})",
                        unknown
                            .iter()
                            .map(|h| h.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        known.join(", ")
                    )));
                }
                filter_hosts(&mut t, &cli.hosts);
            }
            if t.name.is_empty() {
                t.name = "deploy".into();
            }
            // The command line's budget over the file's.
            if cli.max_failures.is_some() || cli.max_fail_percentage.is_some() {
                t.budget = deployer_core::FailureBudget {
                    max_failures: cli.max_failures,
                    max_fail_percentage: cli.max_fail_percentage,
                };
            }
            let plan = driver.plan_tasklist(&t).map_err(drive_error)?;
            // The tasks see their hosts' vars: the config's inventory, else `-i`'s.
            let vars = match config {
                Some(c) => Some(c),
                None => inventory_only(cli)?,
            };
            Ok(match vars {
                Some(c) => {
                    let vars = c.host_vars_of(plan.tasklist().hosts());
                    plan.with_host_vars(vars)
                }
                None => plan,
            })
        }
        // --dry-run and --dump contact no host.
        (Some(config), None) if cli.dry_run || cli.dump => {
            driver.dry_run(config).await.map_err(drive_error)
        }
        (Some(config), None) => driver.plan(config).await.map_err(drive_error),
        (None, None) => Err(BadInput::Input(
            "give --config FILE or --tasklist FILE (see --help)".into(),
        )),
    }
}

/// A driver error as this program reports it: bad input (exit 2) or hosts (exit 1).
fn drive_error(e: DriveError) -> BadInput {
    let message = deployer_core::error_chain(&e);
    if e.exit_code() == exit::BAD_INPUT {
        BadInput::Input(message)
    } else {
        BadInput::Hosts(message)
    }
}

async fn real_main(cli: Cli, progress: bool, redactor: &Redactor) -> Result<u8, BadInput> {
    for (flag, names) in [("--hosts", &cli.hosts), ("--hostgroups", &cli.hostgroups)] {
        if names.iter().any(|n| n.trim().is_empty()) {
            return Err(BadInput::Input(format!(
                "{flag}: an empty name (expected comma-separated names)"
            )));
        }
    }
    if let Some(Sub::Runs(cmd)) = &cli.command {
        return runs_main(&cli, cmd, progress, redactor).await;
    }
    match &cli.command {
        Some(Sub::Plan) => return plan_main(&cli).await,
        Some(Sub::Hosts { pattern }) => return hosts_main(&cli, pattern),
        Some(Sub::Serve(args)) => return serve::serve_main(&cli.store, args).await,
        Some(Sub::Users(cmd)) => return serve::users_main(cmd),
        Some(Sub::Worker(args)) => {
            let config = match load_config(&cli)? {
                Some(c) => Some(c),
                None => inventory_only(&cli)?,
            };
            let connector: Arc<dyn Connector> =
                Arc::new(SshConnector::new(ssh_options(config.as_ref())?)?);
            let (_, commands) = registries();
            return work::worker_main(
                &cli.store,
                args,
                commands,
                connector,
                config.as_ref(),
                redactor,
            )
            .await;
        }
        Some(Sub::Status) => return status_main(&cli).await,
        Some(Sub::Lock(cmd)) => return lock_main(&cli, cmd).await,
        Some(Sub::Rollback { to, dry_run, yes }) => {
            return rollback_main(&cli, to.as_deref(), *dry_run, *yes, progress, redactor).await;
        }
        _ => {}
    }
    let config = load_config(&cli)?;
    let connector: Arc<dyn Connector> =
        Arc::new(SshConnector::new(ssh_options_for(&cli, config.as_ref())?)?);
    // Hosts' zones for --submit: the config's inventory, else `-i`'s.
    let zones = match (&config, cli.submit) {
        (Some(c), true) => Some(c.clone()),
        (None, true) => inventory_only(&cli)?,
        (_, false) => None,
    };
    let plan = plan_tasklist(
        &cli,
        config,
        &driver(&cli, connector.clone(), redactor, None),
    )
    .await?;
    // The plan's copy: arguments its commands declare secret are marked, so saving, dumping
    // and recording show them as `***`.
    let tasklist = plan.tasklist();
    if let Some(path) = &cli.save {
        tasklist.save(path)?;
        tracing::info!(
            component = "Tasklist",
            "Saved task list to {}",
            path.display()
        );
    }
    if cli.dump {
        match cli.format {
            DumpFormat::Json => print!("{}", tasklist.to_json_string()),
            DumpFormat::Dot => print!("{}", to_dot(tasklist)),
        }
        return Ok(exit::SUCCESS);
    }
    if cli.dry_run {
        println!("Syntax ok");
        return Ok(exit::SUCCESS);
    }
    if cli.submit {
        let source = match (&cli.tasklist, &cli.config) {
            (Some(t), _) => format!("tasklist:{}", t.display()),
            (None, Some(c)) => format!("config:{}", c.display()),
            (None, None) => "deploy".to_string(),
        };
        return work::submit_main(&cli.store, &plan, &source, zones.as_ref(), cli.detach).await;
    }

    let runs = open_runs(&cli).await?;
    purge_old(&runs, cli.keep_runs).await;
    let source = match (&cli.tasklist, &cli.config) {
        (Some(t), _) => format!("tasklist:{}", t.display()),
        (None, Some(c)) => format!("config:{}", c.display()),
        (None, None) => "deploy".to_string(),
    };
    let history = history(&runs, tasklist).await;
    let estimates = stage_estimates(tasklist, &history);
    let (driver, summary) = with_reporters(
        driver(&cli, connector, redactor, Some(&runs)),
        &cli,
        progress,
        estimates,
    );
    let finished = driver.run(&plan, &source).await;
    finish(&cli, finished, &summary)
}

/// Whether to colour: `--color`, and for `auto` a terminal without NO_COLOR.
fn colour(cli: &Cli) -> bool {
    match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => {
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

/// The recap with its last line and failures in colour, when colour is on.
fn painted(cli: &Cli, recap: &str) -> String {
    if !colour(cli) {
        return recap.to_string();
    }
    use anstyle::{AnsiColor, Style};
    let style = |c: AnsiColor| Style::new().fg_color(Some(c.into())).bold();
    recap
        .lines()
        .map(|line| {
            let s = if line.starts_with("run \"") {
                if line.contains("\" succeeded in ") || line.contains("\": nothing to do") {
                    style(AnsiColor::Green)
                } else if line.contains("\" cancelled in ")
                    || line.contains("\" completed within its failure budget in ")
                {
                    style(AnsiColor::Yellow)
                } else {
                    style(AnsiColor::Red)
                }
            } else if line == "failures:" || line.starts_with("  stages[") {
                style(AnsiColor::Red)
            } else {
                Style::new()
            };
            format!("{}{line}{}\n", s.render(), s.render_reset())
        })
        .collect()
}

/// Prints the recap and what to do next; the exit status.
fn finish(cli: &Cli, finished: Finished, summary: &Summary) -> Result<u8, BadInput> {
    match &finished.result {
        Ok(report) => {
            // With `--output json` too: events go to stdout, the recap to stderr.
            eprint!("{}", painted(cli, &summary.render(report)));
            if !report.succeeded()
                && let Some(id) = &finished.run_id
            {
                eprintln!("resume with: deploy runs resume {id}");
            }
            Ok(finished.exit_code())
        }
        Err(e) => {
            let code = finished.exit_code();
            let mut message = finished.error_message().unwrap_or_default();
            // The library's words, with this program's options.
            match e {
                DriveError::Runs(RunsError::SecretsNeeded { id, .. }) => {
                    message.push_str(&format!(" (deploy runs resume {id} --tasklist FILE)"));
                }
                DriveError::Runs(RunsError::NeedsConfirmation { id, tasks }) => {
                    message = format!(
                        "run {id} was interrupted while these tasks were running, and their \
                         commands are not idempotent: {}; check them, then run them again \
                         with: deploy runs resume {id} --force",
                        tasks.join(", ")
                    );
                }
                DriveError::Runs(RunsError::Store(StoreError::LeaseHeld {
                    id,
                    owner,
                    remaining,
                })) => {
                    message = format!(
                        "run {id} is being driven by {owner} (its lease expires in {} unless \
                         renewed); to wait for it: deploy runs resume {id} --wait",
                        humantime::format_duration(Duration::from_secs(
                            remaining.as_secs_f64().ceil() as u64
                        ))
                    );
                }
                DriveError::Runs(RunsError::Store(StoreError::Corrupt { message: m })) => {
                    return Err(unreadable(m.clone()));
                }
                _ => {}
            }
            Err(if code == exit::BAD_INPUT {
                BadInput::Input(message)
            } else {
                BadInput::Hosts(message)
            })
        }
    }
}

/// Average past durations of the plan's commands, for the progress display's estimates.
async fn history(runs: &Runs, tasklist: &Tasklist) -> std::collections::HashMap<String, Duration> {
    let mut out = std::collections::HashMap::new();
    for stage in &tasklist.stages {
        for entry in &stage.tasks {
            for task in entry.tasks() {
                if out.contains_key(&task.command) {
                    continue;
                }
                if let Ok(Some(d)) = runs.store().average_duration(&task.command).await {
                    out.insert(task.command.clone(), d);
                }
            }
        }
    }
    out
}

async fn open_runs(cli: &Cli) -> Result<Runs, BadInput> {
    let url: StoreUrl = cli.store.parse()?;
    let store = url.open().await.map_err(|e| {
        BadInput::Hosts(format!(
            "cannot open the run store {url}: {}",
            deployer_core::error_chain(&e)
        ))
    })?;
    Ok(Runs::new(store).lease_ttl(cli.lease_ttl))
}

async fn purge_old(runs: &Runs, keep: Duration) {
    match runs.purge(keep).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            component = "Runs",
            "Purged {n} finished runs older than {}",
            humantime::format_duration(keep)
        ),
        Err(e) => tracing::warn!(component = "Runs", "cannot purge old runs: {e}"),
    }
}

/// The driver with the reporters `--output` asks for, and the recap it fills.
fn with_reporters(
    mut driver: Driver,
    cli: &Cli,
    progress: bool,
    estimates: Vec<Option<Duration>>,
) -> (Driver, Arc<Summary>) {
    let summary = Arc::new(Summary::new().full(cli.recap == RecapStyle::Full));
    // The run's id, as soon as it is recorded (to resume it after a crash).
    driver = driver.sink(|event: &deployer_core::Event| {
        if let (EventKind::RunStarted { .. }, Some(id)) = (&event.kind, &event.run_id) {
            eprintln!("run {id}");
        }
    });
    driver = driver.sink(summary.clone());
    match cli.output {
        Output::Json => driver = driver.sink(JsonLines::stdout()),
        Output::Text => {
            if progress {
                driver = driver.sink(Progress::stderr().with_estimates(estimates));
            } else {
                driver = driver.sink(TracingSink);
            }
        }
    }
    (driver, summary)
}

/// A stored run that cannot be read back (exit 1: the store's problem, not the input's):
/// `cannot read run ID from the run store: column state: unknown RunState "PAUSED"`.
fn unreadable(message: String) -> BadInput {
    let (run, rest) = match message
        .strip_prefix("run ")
        .and_then(|m| m.split_once(": "))
    {
        Some((id, rest)) => (format!("run {id}"), rest.to_string()),
        None => ("a run".to_string(), message),
    };
    BadInput::Hosts(format!(
        "cannot read {run} from the run store: {rest} (a value this version does not know, or \
         a damaged row; other runs are not affected)"
    ))
}

/// A store error while reading a run: an unreadable run as [`unreadable`], the rest as usual.
fn read_error(e: StoreError) -> BadInput {
    match e {
        StoreError::Corrupt { message } => unreadable(message),
        other => other.into(),
    }
}

/// The run `given` names: a whole id, or a prefix of exactly one stored run's id
/// (`deploy runs show 01a24ef8`).
async fn resolve_id(runs: &Runs, given: &str) -> Result<RunId, BadInput> {
    if let Ok(id) = given.parse::<RunId>() {
        return Ok(id);
    }
    let prefix = given.trim().to_ascii_lowercase();
    if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(BadInput::Input(format!(
            "{given:?} is not a run id (expected a run id or the start of one, as `deploy runs list` shows them)"
        )));
    }
    let matching: Vec<String> = runs
        .store()
        .list_runs(usize::MAX)
        .await?
        .iter()
        .map(|r| r.id().to_string())
        .filter(|id| id.starts_with(&prefix))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.parse()?),
        [] => Err(BadInput::Input(format!(
            "no run id starts with {given:?} (see deploy runs list)"
        ))),
        several => Err(BadInput::Input(format!(
            "{given:?} is the start of {} run ids ({}…): give more of it",
            several.len(),
            several
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

async fn runs_main(
    cli: &Cli,
    cmd: &RunsCmd,
    progress: bool,
    redactor: &Redactor,
) -> Result<u8, BadInput> {
    let runs = open_runs(cli).await?;
    match cmd {
        RunsCmd::List { limit } => {
            let list = runs.store().list_runs(*limit).await?;
            let mut rows = Vec::with_capacity(list.len());
            for listed in list {
                // A run whose task records cannot be read lists with `?` (runs show says why).
                let counts = match listed.record() {
                    Some(run) => runs
                        .store()
                        .tasks(&run.id)
                        .await
                        .ok()
                        .map(|tasks| TaskCounts::of_records(run, &tasks)),
                    None => None,
                };
                rows.push((listed, counts));
            }
            print!("{}", render_runs(&rows));
            let unreadable = rows.iter().filter(|(r, _)| r.record().is_none()).count();
            if unreadable > 0 {
                eprintln!(
                    "warning: {unreadable} run{} cannot be read (marked UNREADABLE); \
                     `deploy runs show ID` says why",
                    if unreadable == 1 { "" } else { "s" }
                );
            }
            Ok(exit::SUCCESS)
        }
        RunsCmd::Show { id } => {
            let id = resolve_id(&runs, id).await?;
            let run = runs.store().run(&id).await.map_err(read_error)?;
            let hosts = runs.store().hosts(&id).await.map_err(read_error)?;
            let tasks = runs.store().tasks(&id).await.map_err(read_error)?;
            let approvals = runs.store().approvals(&id).await.map_err(read_error)?;
            let work = runs.store().submitted_work(&id).await.map_err(read_error)?;
            print!("{}", render_run(&run, &hosts, &tasks));
            if let Some(work) = &work {
                print!("{}", render_work(work));
            }
            print!("{}", render_approvals(&approvals));
            Ok(exit::SUCCESS)
        }
        RunsCmd::Purge { older_than } => {
            let n = runs.purge(*older_than).await?;
            println!("purged {n} run{}", if n == 1 { "" } else { "s" });
            Ok(exit::SUCCESS)
        }
        RunsCmd::Resume {
            id,
            tasklist,
            force,
            wait,
        } => {
            let id = resolve_id(&runs, id).await?;
            // A run submitted to workers is resumed on them (its hosts may be reachable only
            // from their zones), not driven here.
            if runs
                .store()
                .submitted_work(&id)
                .await
                .map_err(read_error)?
                .is_some()
            {
                // Said, not ignored: neither applies to a run on workers.
                if tasklist.is_some() {
                    return Err(BadInput::Input(format!(
                        "--tasklist: run {id} was submitted to workers, which keeps no inline \
                         secret to restore (they were refused at submit); resume it without \
                         --tasklist"
                    )));
                }
                if *wait {
                    return Err(BadInput::Input(format!(
                        "--wait: run {id} was submitted to workers, which hold no controller \
                         lease to wait for; resume it without --wait"
                    )));
                }
                let (_, commands) = registries();
                return work::resume_main(&cli.store, &id, &commands, *force).await;
            }
            let secrets_from = match tasklist {
                Some(path) => Some(Tasklist::load(path)?),
                None => None,
            };
            let record = runs.store().run(&id).await.map_err(read_error)?;
            // A run recorded before today's limits (a timeout of 0) reads back, but would
            // fail every task at once: refuse it, naming what breaks the limits.
            if record.state != RunState::Succeeded
                && let Err(problems) = record.tasklist.check_limits()
            {
                return Err(BadInput::Input(format!(
                    "run {id} cannot be resumed: its tasklist, recorded by an earlier version, \
                     has values outside today's limits: {problems}\nstart a new run from a \
                     corrected tasklist (deploy --tasklist FILE)"
                )));
            }
            let config = load_config(cli)?;
            let connector: Arc<dyn Connector> =
                Arc::new(SshConnector::new(ssh_options_for(cli, config.as_ref())?)?);
            let history = history(&runs, &record.tasklist).await;
            let estimates = stage_estimates(&record.tasklist, &history);
            let (driver, summary) = with_reporters(
                driver(cli, connector, redactor, Some(&runs)),
                cli,
                progress,
                estimates,
            );
            eprintln!("resuming run {id} ({})", record.name);
            // The tasks see their hosts' vars again: the config's inventory, else `-i`'s.
            let host_vars = match config.as_ref() {
                Some(c) => Some(c.clone()),
                None => inventory_only(cli)?,
            }
            .map(|c| c.host_vars_of(record.tasklist.hosts()))
            .unwrap_or_default();
            let resume = ResumeOptions {
                force: *force,
                secrets_from,
                host_vars,
            };
            loop {
                let finished = driver.resume(&id, resume.clone()).await;
                match &finished.result {
                    Err(DriveError::Runs(RunsError::Store(StoreError::LeaseHeld {
                        owner,
                        remaining,
                        ..
                    }))) if *wait => {
                        eprintln!("waiting {remaining:?} for the lease of {owner} to expire");
                        tokio::time::sleep(*remaining + Duration::from_millis(50)).await;
                    }
                    _ => return finish(cli, finished, &summary),
                }
            }
        }
    }
}

fn main() -> ExitCode {
    // Few malloc arenas: a fleet deploy runs on many threads (the runtime's, and the blocking
    // pool's file reads), and glibc's default of one arena per thread up to 8 per core kept
    // ~100 KiB more per host at 1000 hosts (benches/README.md, "Fleet scale").
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    // The secrets of the config and the plan: hidden in log lines, output and errors.
    let redactor = Redactor::new();
    // Progress bars only for a person at a terminal; logs otherwise.
    let progress = cli.output == Output::Text
        && std::io::stderr().is_terminal()
        && !cli.verbose
        && !cli.debug
        && !cli.dry_run
        && !cli.dump;
    let level = if cli.debug || cli.verbose {
        tracing::Level::DEBUG
    } else if progress || cli.output == Output::Json {
        tracing::Level::WARN
    } else {
        tracing::Level::INFO
    };
    // -v shows our crates' debug lines (command output); -d everyone's.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(if cli.debug {
            level
        } else {
            level.min(tracing::Level::INFO)
        })
        .with_target("deployer_core", level)
        // PostgreSQL's notices ("relation … already exists, skipping") are no user's business.
        .with_target("sqlx", tracing::Level::WARN)
        .with_target("deployer_release", level)
        .with_target("deployer_report", level)
        .with_target("deploy", level);
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(LogFormat::default().redactor(redactor.clone()))
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(real_main(cli, progress, &redactor)) {
        Ok(code) => ExitCode::from(code),
        Err(BadInput::Input(message)) => {
            eprintln!("error: {}", redactor.redact(&message));
            ExitCode::from(2)
        }
        Err(BadInput::Hosts(message)) => {
            eprintln!("error: {}", redactor.redact(&message));
            ExitCode::from(1)
        }
    }
}
