//! The `release` platform: a generator built from the standard commands.
//!
//! For every service that has an artifact to deploy it plans, per host:
//!
//! 1. **Lock** every host of every service (the deploy lock, below).
//! 2. **Prepare** (all hosts at once, as `--parallel` allows): create `releases/<version>/`
//!    empty, upload the artifact, unpack it, link the shared paths. A version that is live on
//!    the host (`redeploy`) goes into a fresh directory beside it, `releases/<version>@<suffix>/`,
//!    never over the live copy, so nothing of the earlier copy survives and `current` still
//!    switches atomically.
//! 3. **Activate** (rolling, one stage per service): stop, switch `current` atomically, start,
//!    check health. The stage keeps `min_nodes_up` hosts serving (the executor's
//!    `min_hosts_up`: at most `hosts − min_nodes_up − hosts down` are worked on at once, and a
//!    failure that would leave fewer up stops the run whatever the failure budget), and a slot
//!    is refilled as soon as a host finishes — no waiting for a whole batch.
//! 4. **Clean up**: keep the newest `keep_releases` releases (never the live one).
//! 5. **Roll back** (a `finally` stage per service, see [`Finally`]):
//!    a host whose checks after the switch failed (the `start` command, `check`, `health_url`)
//!    is switched back to the release it ran before, stopped and started again and checked,
//!    before the run ends as failed; its host is recorded `ROLLED_BACK` and counted "rolled
//!    back". On by default; `auto_rollback: false` (top level or per service) turns it off. A
//!    host with no release before (a first deploy) has nothing to go back to.
//! 6. **Unlock** (a `finally` stage per service): every host that took the lock releases it,
//!    whether the run succeeded, failed or was cancelled (a first Ctrl-C; a second one skips
//!    it, and `deploy lock release` frees what is left).
//!
//! Hosts already running the version are skipped unless `redeploy` is set; graphite start and
//! end markers are sent when `graphite` is configured.
//!
//! # The deploy lock
//!
//! Its identity is the run's id ([`ExecContext::run_id`](deployer_core::ExecContext::run_id)):
//! a resumed run keeps its lock, any other run is refused — also one of the same user — with
//! an error naming the holder's run id, user, controller and age. A plan that runs outside a
//! recorded run (a library with no run store) is identified by the `plan-<uuid>` this
//! generator gives each plan it makes. [`status`] shows every host's lock, [`judge_lock`] says
//! whether it is stale by the run store, [`free_lock`] frees one.
//!
//! # Rollback
//!
//! With `rollback: true` the generator plans a rollback instead of a deploy: every host of
//! every service (after `only_hosts`/`only_hostgroups`) goes back to the release that was live
//! before (from `releases.log`), or to `rollback_to: <version>`, which every targeted host must
//! have ([`rollback_survey`] names those that do not). It takes the locks, then rolls back
//! service by service through the same window as an activation (stop, switch, start, check,
//! health URL), and unlocks in a `finally` stage.
//!
//! # Config
//!
//! ```yaml
//! platform: release
//! deploy_to: /srv            # each service lives in <deploy_to>/<service> (or its own deploy_to);
//!                            # `{host}` in it is replaced by the host's name
//! directory: artifacts       # where artifacts are found (--directory overrides)
//! user: deploy               # login user (optional)
//! keep_releases: 5           # default 5
//! max_failures: 2            # failure budget: hosts that may fail and be dropped (default 0)
//! graphite: {host: 127.0.0.1, port: 2003, prefix: deploys}   # optional
//! hostgroup:
//!   frontend: [fe001, fe002, fe003]
//! service:
//!   web:
//!     hosts: [frontend]
//!     min_nodes_up: 2        # default: 1 when the service has several hosts, else 0
//!     shared_dirs: [log]
//!     shared_files: [config/app.yml]
//!     stop: systemctl stop web       # shell commands, optional; `{current}` is replaced by
//!     start: systemctl start web     # <deploy_to>/current
//!     check: curl -fsS localhost:8080/health   # polled until it succeeds, optional
//!     check_timeout: 30
//!     health_url: http://127.0.0.1:8080/health  # http_check on the host, optional
//!     auto_rollback: true    # default (or at the top level): switch a failed host back
//! ```
//!
//! Artifacts are named `<service>-<version>.<ext>` or `<service>_<version>.<ext>` with `ext`
//! one of `tar.gz`, `tgz`, `tar`, `zip`, `war`.
//!
//! Keys the `deploy` program sets from its flags: `component` (list of artifact files or
//! names), `directory`, `redeploy`, `only_hosts`, `only_hostgroups`, `rollback`,
//! `rollback_to`.

//! # What this crate does not know
//!
//! How tasks reach hosts or what a person sees: it only plans, emitting tasks of the standard
//! commands (`deployer-commands`); [`register`] adds both to a host application's registries.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use deployer_core::fixture::FakeConnector;
//! use deployer_core::{CommandRegistry, Config, GeneratorContext, GeneratorRegistry, Plan};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let artifacts = tempfile::tempdir().unwrap();
//! std::fs::write(artifacts.path().join("web-1.2.0.tar.gz"), b"").unwrap();
//! let config = Config::from_yaml_str(&format!(r#"
//! platform: release
//! deploy_to: /srv
//! directory: {}
//! hostgroup:
//!   frontend: [fe001, fe002, fe003]
//! service:
//!   web:
//!     hosts: [frontend]
//!     min_nodes_up: 2
//! "#, artifacts.path().display()), "deploy.yaml").unwrap();
//!
//! let (mut generators, mut commands) = (GeneratorRegistry::new(), CommandRegistry::new());
//! deployer_release::register(&mut generators, &mut commands);
//! // The generator asks each host which versions it has; here no host has any.
//! let ctx = GeneratorContext::new(config).with_connector(Arc::new(FakeConnector::new()));
//! let tasklist = generators.generate(ctx).await.unwrap();
//! let plan = Plan::build(&tasklist, &commands).unwrap();
//! // The rolling switch of `web` keeps two of its three hosts serving.
//! let activate = tasklist.stages.iter().find(|s| s.name.contains("web")).unwrap();
//! assert_eq!(activate.min_hosts_up, Some(2));
//! # let _ = plan;
//! # });
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod status;

use status::rollback_plan;
pub use status::{
    HostStatus, LockVerdict, RollbackHost, free_lock, judge_lock, rollback_survey, status,
};

use std::collections::BTreeSet;
use std::path::PathBuf;

use deployer_commands::{LockInfo, ReleaseLayout, ReleaseState, release_version};
use deployer_core::{
    CommandRegistry, Config, FailureBudget, Finally, Generator, GeneratorContext, GeneratorError,
    GeneratorRegistry, ServiceConfig, Stage, Task, TaskEntry, Tasklist, async_trait,
};
use serde_json::{Value, json};

/// The keys a `release` config may have, for checking only: an unknown key (`keep_release`,
/// `shh`) is an error with its line and a "did you mean"; a value of the wrong type
/// (`check_timeout: ten`) is one too, before any host is asked anything.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Keys {
    platform: String,
    deploy_to: Option<String>,
    directory: Option<String>,
    user: Option<String>,
    keep_releases: Option<usize>,
    auto_rollback: Option<bool>,
    max_failures: Option<usize>,
    max_fail_percentage: Option<u8>,
    graphite: Option<GraphiteKeys>,
    hostgroup: Option<std::collections::BTreeMap<String, Vec<String>>>,
    service: Option<std::collections::BTreeMap<String, ServiceKeys>>,
    ssh: Option<serde::de::IgnoredAny>,
    inventory: Option<serde::de::IgnoredAny>,
    // Set by the `deploy` program from its flags.
    component: Option<Value>,
    redeploy: Option<bool>,
    rollback: Option<bool>,
    rollback_to: Option<String>,
    only_hosts: Option<Vec<String>>,
    only_hostgroups: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct GraphiteKeys {
    host: String,
    port: Option<u16>,
    prefix: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ServiceKeys {
    hosts: Vec<String>,
    port: Option<u16>,
    deploy_to: Option<String>,
    user: Option<String>,
    min_nodes_up: Option<u64>,
    shared_dirs: Option<Vec<String>>,
    shared_files: Option<Vec<String>>,
    stop: Option<String>,
    start: Option<String>,
    check: Option<String>,
    check_timeout: Option<u64>,
    health_url: Option<String>,
    auto_rollback: Option<bool>,
}

const EXTENSIONS: [&str; 5] = [".tar.gz", ".tgz", ".tar", ".zip", ".war"];

/// Registers the `release` generator under the platform name `release`, and the standard
/// commands its plans use.
pub fn register(generators: &mut GeneratorRegistry, commands: &mut CommandRegistry) {
    generators.register("release", ReleaseGenerator);
    deployer_commands::register_all(commands);
}

/// The `release` generator. Register it with `generators.register("release", ReleaseGenerator)`
/// (or [`register`], which also registers the commands it plans).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReleaseGenerator;

/// One artifact to deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// The service it belongs to.
    pub service: String,
    /// Its version.
    pub version: String,
    /// Its path on the controller.
    pub path: PathBuf,
}

impl Artifact {
    /// The file name.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn other(msg: impl Into<String>) -> GeneratorError {
    GeneratorError::Other(msg.into())
}

/// Splits `web-1.2.3.tar.gz` into (`web`, `1.2.3`) when `web` is one of `services`.
pub fn parse_artifact_name<'a>(
    file_name: &str,
    services: impl IntoIterator<Item = &'a str>,
) -> Option<(String, String)> {
    let stem = EXTENSIONS
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))?;
    let mut best: Option<(String, String)> = None;
    for service in services {
        for sep in ['-', '_'] {
            if let Some(version) = stem
                .strip_prefix(service)
                .and_then(|rest| rest.strip_prefix(sep))
            {
                let valid = !version.is_empty()
                    && version
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
                // The longest matching service name wins (`web-api` over `web`).
                if valid && best.as_ref().is_none_or(|(s, _)| service.len() > s.len()) {
                    best = Some((service.to_string(), version.to_string()));
                }
            }
        }
    }
    best
}

/// Finds the artifacts to deploy from the config's `component` and `directory` keys.
pub fn find_artifacts(config: &Config) -> Result<Vec<Artifact>, GeneratorError> {
    let services: Vec<&str> = config.services().keys().map(String::as_str).collect();
    let directory: Option<PathBuf> = config.get_as::<String>("directory")?.map(PathBuf::from);
    let components: Vec<String> = match config.get("component") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(_) => config
            .get_as::<Vec<String>>("component")?
            .unwrap_or_default(),
    };
    let mut files: Vec<PathBuf> = Vec::new();
    if components.is_empty() {
        let Some(dir) = &directory else {
            return Err(other(
                "nothing to deploy: give --component FILE or --directory DIR (or `directory` in the config)",
            ));
        };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            other(format!(
                "cannot read artifact directory {}: {e}",
                dir.display()
            ))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                files.push(path);
            }
        }
        files.sort();
    } else {
        for c in &components {
            let direct = PathBuf::from(c);
            let path = if direct.is_file() {
                direct
            } else if let Some(found) = directory
                .as_ref()
                .map(|d| d.join(c))
                .filter(|p| p.is_file())
            {
                found
            } else {
                return Err(other(format!(
                    "component {c:?} is not a file{}",
                    directory
                        .as_ref()
                        .map(|d| format!(" (also looked in {})", d.display()))
                        .unwrap_or_default()
                )));
            };
            files.push(path);
        }
    }
    let mut artifacts: Vec<Artifact> = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match parse_artifact_name(&name, services.iter().copied()) {
            Some((service, version)) => {
                if let Some(prev) = artifacts.iter().find(|a| a.service == service) {
                    return Err(other(format!(
                        "two artifacts for service {service}: {} and {name}",
                        prev.file_name()
                    )));
                }
                let path = std::path::absolute(&path).unwrap_or(path);
                artifacts.push(Artifact {
                    service,
                    version,
                    path,
                });
            }
            None if !components.is_empty() => {
                return Err(other(format!(
                    "component {name:?} does not name a configured service (known: {}); expected <service>-<version>.tar.gz",
                    services.join(", ")
                )));
            }
            None => {} // other files in the directory are not artifacts
        }
    }
    if artifacts.is_empty() {
        return Err(other(format!(
            "no artifact found for any configured service ({}); expected files named <service>-<version>.tar.gz",
            services.join(", ")
        )));
    }
    Ok(artifacts)
}

/// How a service is deployed, read from its config section.
#[derive(Debug, Clone)]
struct ServicePlan<'a> {
    name: &'a str,
    /// May contain `{host}`: see [`ServicePlan::dir`].
    deploy_to: String,
    hosts: Vec<String>,
    user: Option<String>,
    /// Hosts whose inventory names their login (`ansible_user`), which beats the config's
    /// `user` unless the command line set that.
    host_users: std::collections::HashMap<String, Option<String>>,
    min_nodes_up: Option<usize>,
    settings: &'a ServiceConfig,
}

impl ServicePlan<'_> {
    /// The login user of `host`: its inventory's `ansible_user`, else the service's or the
    /// config's `user` (the command line's `--set user=` beats both).
    fn user_for(&self, host: &str) -> &Option<String> {
        self.host_users.get(host).unwrap_or(&self.user)
    }

    /// The service's directory on `host` (`{host}` replaced), e.g. for several "hosts" that
    /// share one file system.
    fn dir(&self, host: &str) -> String {
        self.deploy_to.replace("{host}", host)
    }
}

fn setting_str(service: &ServiceConfig, key: &str) -> Result<Option<String>, GeneratorError> {
    match service.settings.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(GeneratorError::Other(format!(
            "service.{}.{key}: expected a string, found {other}",
            service.name
        ))),
    }
}

fn setting_list(service: &ServiceConfig, key: &str) -> Result<Vec<String>, GeneratorError> {
    match service.settings.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
            GeneratorError::Other(format!(
                "service.{}.{key}: expected a list of strings, found {v}",
                service.name
            ))
        }),
    }
}

fn setting_u64(service: &ServiceConfig, key: &str) -> Result<Option<u64>, GeneratorError> {
    match service.settings.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            GeneratorError::Other(format!(
                "service.{}.{key}: expected a non-negative integer, found {v}",
                service.name
            ))
        }),
    }
}

/// Who plans, for people: the user (`$USER`, else `$LOGNAME`, else `deployer`) and the
/// controller machine (`/etc/hostname`, else `controller`), without control characters.
fn controller_identity() -> (String, String) {
    let clean = |s: String| -> Option<String> {
        let s: String = s.trim().chars().filter(|c| !c.is_control()).collect();
        (!s.is_empty()).then_some(s)
    };
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(clean))
        .unwrap_or_else(|| "deployer".to_string());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .and_then(clean)
        .unwrap_or_else(|| "controller".to_string());
    (user, host)
}

/// What one generated plan calls itself: the deploy lock's identity when its tasks run outside
/// a recorded run (`plan-<uuid>`; inside one, the run id is), the suffix of the fresh copy of a
/// version that is live (`<version>@<suffix>`), and who planned it, for people.
struct PlanIdentity {
    holder: String,
    suffix: String,
    user: String,
    controller: String,
}

impl PlanIdentity {
    fn new() -> PlanIdentity {
        let id = deployer_core::RunId::new().to_string();
        let suffix = id.rsplit('-').next().unwrap_or("fresh").to_string();
        let (user, controller) = controller_identity();
        PlanIdentity {
            holder: format!("plan-{id}"),
            suffix,
            user,
            controller,
        }
    }

    /// Who made a switch, for the releases log.
    fn by(&self) -> String {
        format!("{}@{}", self.user, self.controller)
    }

    fn lock(&self, t: Task, deploy_to: &str) -> Task {
        t.arg("deploy_to", deploy_to)
            .arg("holder", self.holder.clone())
            .arg("user", self.user.clone())
            .arg("controller", self.controller.clone())
    }

    fn unlock(&self, t: Task, deploy_to: &str) -> Task {
        t.arg("deploy_to", deploy_to)
            .arg("holder", self.holder.clone())
    }
}

fn join(base: &str, rest: &str) -> String {
    format!("{}/{rest}", base.trim_end_matches('/'))
}

/// A task on `host`; the controller itself needs no `remote_host`.
fn task(command: &str, host: &str, user: &Option<String>, service: &str) -> Task {
    let mut t = Task::new(command).tag(service);
    if host != deployer_core::LOCAL_HOST {
        t = t.on(host);
        if let Some(u) = user {
            t = t.user(u.clone());
        }
    }
    t
}

/// A release config read and checked: for each named service, its plan (hosts after
/// `only_hosts`/`only_hostgroups`, directory, user) and its host count; `keep_releases` and
/// `redeploy`. What [`ReleaseGenerator`] plans from, and what [`survey`] and [`status`] ask
/// hosts about.
struct Reading<'a> {
    plans: Vec<(ServicePlan<'a>, usize)>,
    keep: usize,
    redeploy: bool,
}

fn read_config<'a>(
    config: &'a Config,
    services: &[&'a str],
) -> Result<Reading<'a>, GeneratorError> {
    // What a host, a login or a shell will see is checked before any host is asked.
    let mut problems = Vec::new();
    for name in config.services().keys() {
        for host in config.service_hosts(name)? {
            if let Err(e) = deployer_core::HostName::parse(&host) {
                problems.push(format!("service {name}: hosts: {e}"));
            }
        }
        let settings = &config.services()[name];
        if let Some(user) = setting_str(settings, "user")?
            && let Err(e) = deployer_core::UserName::parse(&user)
        {
            problems.push(format!("service {name}: user: {e}"));
        }
        if let Some(dir) = setting_str(settings, "deploy_to")?
            && let Err(e) = deployer_core::RemotePath::parse(&dir)
        {
            problems.push(format!("service {name}: deploy_to: {e}"));
        }
    }
    if let Some(user) = config.get_as::<String>("user")?
        && let Err(e) = deployer_core::UserName::parse(&user)
    {
        problems.push(format!("user: {e}"));
    }
    if let Some(root) = config.get_as::<String>("deploy_to")?
        && let Err(e) = deployer_core::RemotePath::parse(&root)
    {
        problems.push(format!("deploy_to: {e}"));
    }
    if !problems.is_empty() {
        return Err(other(problems.join("; ")));
    }
    // A service's `hosts` name hostgroups or hosts; a name that is not a hostgroup but
    // reads like one misspelt is a mistake, not a new host.
    let groups: Vec<&str> = config.hostgroups().keys().map(String::as_str).collect();
    for service in config.services().values() {
        for name in &service.hosts {
            if !groups.contains(&name.as_str())
                && let Some(hint) = deployer_core::did_you_mean(name, groups.iter().copied())
            {
                return Err(other(format!(
                    "service {}: hosts: {name:?} is not a hostgroup; did you mean \"{hint}\"? \
                     (a host whose name is this close to a hostgroup's is taken for a typo)",
                    service.name
                )));
            }
        }
    }
    let root = config.get_as::<String>("deploy_to")?;
    let default_user = config.get_as::<String>("user")?;
    let keep = config.get_as::<usize>("keep_releases")?.unwrap_or(5);
    let redeploy = config.get_as::<bool>("redeploy")?.unwrap_or(false);
    let only_hosts: Option<BTreeSet<String>> = config
        .get_as::<Vec<String>>("only_hosts")?
        .map(|v| v.into_iter().collect());
    let only_groups: Option<Vec<String>> = config.get_as::<Vec<String>>("only_hostgroups")?;
    let group_hosts: Option<BTreeSet<String>> = match &only_groups {
        None => None,
        Some(groups) => {
            let mut set = BTreeSet::new();
            for g in groups {
                set.extend(config.hostgroup(g)?.iter().cloned());
            }
            Some(set)
        }
    };
    // Hosts asked for by name must be hosts of the config's services.
    if let Some(asked) = &only_hosts {
        let mut known = BTreeSet::new();
        for name in config.services().keys() {
            known.extend(config.service_hosts(name)?);
        }
        let unknown: Vec<&String> = asked.iter().filter(|h| !known.contains(*h)).collect();
        if !unknown.is_empty() {
            let list =
                |v: Vec<&String>| v.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ");
            return Err(other(format!(
                "no service runs on {} (the config's hosts: {})",
                list(unknown),
                list(known.iter().collect())
            )));
        }
    }

    let mut plans = Vec::new();
    for &service in services {
        let settings = config.service(service)?;
        let deploy_to = match setting_str(settings, "deploy_to")? {
            Some(d) => d,
            None => match &root {
                Some(r) => join(r, service),
                None => {
                    return Err(other(format!(
                        "service {service}: no deploy_to (set `deploy_to` at the top level or in the service)",
                    )));
                }
            },
        };
        let all_hosts = config.service_hosts(service)?;
        if all_hosts.is_empty() {
            return Err(other(format!("service {service} has no hosts")));
        }
        let hosts: Vec<String> = all_hosts
            .iter()
            .filter(|h| only_hosts.as_ref().is_none_or(|s| s.contains(*h)))
            .filter(|h| group_hosts.as_ref().is_none_or(|s| s.contains(*h)))
            .cloned()
            .collect();
        let user = setting_str(settings, "user")?.or_else(|| default_user.clone());
        let host_users = if config.is_overridden("user") {
            Default::default()
        } else {
            hosts
                .iter()
                .filter_map(|h| {
                    let u = config
                        .host_vars(h)
                        .get("ansible_user")?
                        .as_str()?
                        .to_string();
                    Some((h.clone(), Some(u)))
                })
                .collect()
        };
        let min_nodes_up = setting_u64(settings, "min_nodes_up")?.map(|n| n as usize);
        plans.push((
            ServicePlan {
                name: service,
                deploy_to,
                hosts,
                user,
                host_users,
                min_nodes_up,
                settings,
            },
            all_hosts.len(),
        ));
    }

    Ok(Reading {
        plans,
        keep,
        redeploy,
    })
}

#[async_trait]
impl Generator for ReleaseGenerator {
    async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
        let config = ctx.config();
        // Every key and its type first: a typo is an error with its line, never ignored.
        config.section::<Keys>("")?;
        if config.get_as::<bool>("rollback")?.unwrap_or(false) {
            return rollback_plan(ctx).await;
        }
        if config.get_as::<String>("rollback_to")?.is_some() {
            return Err(other("rollback_to: only with `rollback: true`"));
        }
        let artifacts = find_artifacts(config)?;
        let names: Vec<&str> = artifacts.iter().map(|a| a.service.as_str()).collect();
        let Reading {
            plans,
            keep,
            redeploy,
        } = read_config(config, &names)?;
        let me = PlanIdentity::new();
        let budget = FailureBudget {
            max_failures: config.get_as::<usize>("max_failures")?,
            max_fail_percentage: config.get_as::<u8>("max_fail_percentage")?,
        };

        // What each host runs, asked of all hosts at once (the connector bounds the
        // handshakes). Within a failure budget, a host that cannot be reached is planned as
        // if it ran nothing: its first task fails the same way, and the run drops it.
        let asked: Vec<Vec<Result<Option<ReleaseState>, GeneratorError>>> =
            futures::future::join_all(plans.iter().map(|(plan, _)| {
                futures::future::join_all(
                    plan.hosts
                        .iter()
                        .map(|host| read_state(ctx, host, plan.user_for(host), plan.dir(host))),
                )
            }))
            .await;
        let asked_hosts: usize = asked.iter().map(Vec::len).sum();
        let unreachable: usize = asked
            .iter()
            .flatten()
            .filter(|r| matches!(r, Err(GeneratorError::Remote(_))))
            .count();
        let tolerate = budget.is_set() && !budget.exceeded(unreachable, asked_hosts);

        // Which hosts already run the version, and where each host's copy goes.
        let mut work = Vec::new();
        for ((artifact, (plan, total)), states) in artifacts.iter().zip(plans).zip(asked) {
            let mut todo = Vec::new();
            for (host, state) in plan.hosts.iter().zip(states) {
                let state = match state {
                    Err(GeneratorError::Remote(e)) if tolerate => {
                        tracing::warn!(
                            component = "ReleaseGenerator",
                            host = host.as_str(),
                            tag = plan.name,
                            "cannot ask what it runs ({e}); planned as a first deploy, within the failure budget ({budget})"
                        );
                        None
                    }
                    other => other?,
                };
                let live = state.and_then(|s| s.live);
                if !redeploy && live.as_deref().map(release_version) == Some(&artifact.version) {
                    tracing::info!(
                        component = "ReleaseGenerator",
                        host = host.as_str(),
                        tag = plan.name,
                        "already on {}; skipping (use --redeploy to deploy again)",
                        artifact.version
                    );
                    continue;
                }
                // A version is never unpacked over its live copy: a fresh one goes beside it.
                let release = if live.as_deref() == Some(artifact.version.as_str()) {
                    format!("{}@{}", artifact.version, me.suffix)
                } else {
                    artifact.version.clone()
                };
                todo.push((host.clone(), release, live));
            }
            if !todo.is_empty() {
                work.push((artifact, plan, total, todo));
            }
        }

        let names: Vec<String> = artifacts
            .iter()
            .map(|a| format!("{}-{}", a.service, a.version))
            .collect();
        let mut tasklist = Tasklist::new(format!("Deploy {}", names.join(", "))).budget(budget);
        if work.is_empty() {
            tracing::info!(
                component = "ReleaseGenerator",
                "No services require deployment"
            );
            return Ok(tasklist);
        }
        let graphite = config.get("graphite").cloned();
        let services: Vec<&str> = work.iter().map(|(a, ..)| a.service.as_str()).collect();
        if let Some(g) = &graphite {
            tasklist = tasklist.stage(graphite_stage(g, "start", &services)?);
        }

        // 1. Lock every host.
        let locks: Vec<(&ServicePlan<'_>, Vec<String>)> = work
            .iter()
            .map(|(_, plan, _, hosts)| (plan, hosts.iter().map(|(h, ..)| h.clone()).collect()))
            .collect();
        tasklist = tasklist.stage(lock_stage(&locks, &me));

        // 2. Prepare everything, everywhere: each copy in a directory of its own, emptied
        // first, so nothing of an earlier copy survives.
        let mut prepare = Stage::new("Prepare releases", 10).per_host(2);
        for (artifact, plan, _, hosts) in &work {
            let shared_dirs = setting_list(plan.settings, "shared_dirs")?;
            let shared_files = setting_list(plan.settings, "shared_files")?;
            for (host, release, _) in hosts {
                let deploy_to = plan.dir(host);
                let releases = join(&deploy_to, "releases");
                let uploaded = join(&releases, &artifact.file_name());
                let t = |c: &str| task(c, host, plan.user_for(host), plan.name);
                let mut chain = vec![
                    t("release_create")
                        .arg("deploy_to", deploy_to.clone())
                        .arg("version", release.clone())
                        .arg("fresh", true),
                    t("upload")
                        .arg("source", artifact.path.to_string_lossy().into_owned())
                        .arg("destination", format!("{releases}/")),
                    t("unpack")
                        .arg("source", uploaded.clone())
                        .arg("destination", join(&releases, release)),
                    t("removefile").arg("source", uploaded.clone()),
                ];
                if !shared_dirs.is_empty() || !shared_files.is_empty() {
                    chain.push(
                        t("release_link_shared")
                            .arg("deploy_to", deploy_to.clone())
                            .arg("version", release.clone())
                            .arg("shared_dirs", json!(shared_dirs))
                            .arg("shared_files", json!(shared_files)),
                    );
                }
                prepare = prepare.task(chain);
            }
        }
        tasklist = tasklist.stage(prepare);

        // 3. Activate, rolling, service by service: the switch reaches "switched", the last
        // check "healthy" (what automatic rollback looks at).
        for (artifact, plan, total, hosts) in &work {
            let switches = hosts
                .iter()
                .map(|(host, release, _)| {
                    let switch = task("release_activate", host, plan.user_for(host), plan.name)
                        .arg("deploy_to", plan.dir(host))
                        .arg("version", release.clone())
                        .arg("holder", me.by())
                        .reaches(point("switched", plan.name));
                    (host.clone(), switch)
                })
                .collect();
            tasklist = tasklist.stage(rolling_stage(
                format!("Activate {} {}", plan.name, artifact.version),
                plan,
                *total,
                switches,
                Some(point("healthy", plan.name)),
            )?);
        }

        // 4. Clean up.
        let mut cleanup = Stage::new("Clean up old releases", 10).per_host(2);
        for (_, plan, _, hosts) in &work {
            for (host, ..) in hosts {
                cleanup = cleanup.task(
                    task("keep_releases", host, plan.user_for(host), plan.name)
                        .arg("deploy_to", plan.dir(host))
                        .arg("keep", keep),
                );
            }
        }
        tasklist = tasklist.stage(cleanup);

        // 5. Whatever happened: roll back the hosts whose checks failed, then unlock.
        let auto = config.get_as::<bool>("auto_rollback")?.unwrap_or(true);
        for (_, plan, _, hosts) in &work {
            let auto = match plan.settings.settings.get("auto_rollback") {
                Some(Value::Bool(b)) => *b,
                _ => auto,
            };
            let before: Vec<(String, String)> = hosts
                .iter()
                .filter_map(|(host, _, live)| live.clone().map(|l| (host.clone(), l)))
                .collect();
            if auto && let Some(stage) = auto_rollback_stage(plan, &before, &me)? {
                tasklist = tasklist.stage(stage);
            }
        }
        tasklist = unlock_stages(tasklist, &locks, &me);
        if let Some(g) = &graphite {
            tasklist = tasklist.stage(graphite_stage(g, "end", &services)?);
        }
        Ok(tasklist)
    }
}

/// A point a task reaches on its host (see [`Finally`]): `locked:web`, `switched:web`,
/// `healthy:web` — the service name kept to the characters points allow.
fn point(what: &str, service: &str) -> String {
    let service: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    format!("{what}:{service}")
}

/// Takes the deploy lock of every service on each of its hosts; a host that took it reached
/// `locked:<service>`, which its unlock stage looks at.
fn lock_stage(locks: &[(&ServicePlan<'_>, Vec<String>)], me: &PlanIdentity) -> Stage {
    let mut stage = Stage::new("Lock hosts", 10).per_host(2);
    for (plan, hosts) in locks {
        for host in hosts {
            stage = stage.task(
                me.lock(
                    task("release_lock", host, plan.user_for(host), plan.name),
                    &plan.dir(host),
                )
                .reaches(point("locked", plan.name)),
            );
        }
    }
    stage
}

/// One `finally` stage per service releasing the lock on the hosts that took it.
fn unlock_stages(
    mut tasklist: Tasklist,
    locks: &[(&ServicePlan<'_>, Vec<String>)],
    me: &PlanIdentity,
) -> Tasklist {
    for (plan, hosts) in locks {
        let mut stage = Stage::new(format!("Unlock {}", plan.name), 10)
            .per_host(2)
            .finally(Finally::if_reached(point("locked", plan.name)));
        for host in hosts {
            stage = stage.task(me.unlock(
                task("release_unlock", host, plan.user_for(host), plan.name),
                &plan.dir(host),
            ));
        }
        tasklist = tasklist.stage(stage);
    }
    tasklist
}

/// The automatic rollback of one service: a `finally` stage that, on each host that switched
/// (`switched:<service>`) but did not pass its checks (`healthy:<service>`), switches back to
/// the release that was live before (`before`: host → release), stops, starts and checks it
/// again. None when the activation has no check after its switch (nothing can fail there) or
/// no host had a release before.
fn auto_rollback_stage(
    plan: &ServicePlan<'_>,
    before: &[(String, String)],
    me: &PlanIdentity,
) -> Result<Option<Stage>, GeneratorError> {
    let checked = ["start", "check", "health_url"]
        .iter()
        .any(|k| !matches!(plan.settings.settings.get(*k), None | Some(Value::Null)));
    if !checked || before.is_empty() {
        return Ok(None);
    }
    let switches = before
        .iter()
        .map(|(host, release)| {
            let switch = task("rollback", host, plan.user_for(host), plan.name)
                .arg("deploy_to", plan.dir(host))
                .arg("version", release.clone())
                .arg("holder", me.by());
            (host.clone(), switch)
        })
        .collect::<Vec<_>>();
    let hosts = switches.len();
    // Every failed host at once: they are down already, and the activation's window kept
    // the others serving.
    let mut stage = rolling_stage(
        format!("Roll back {} where its checks failed", plan.name),
        plan,
        hosts + 1,
        switches,
        None,
    )?;
    stage.concurrency = hosts.max(1);
    Ok(Some(
        stage.finally(
            Finally::if_reached(point("switched", plan.name))
                .unless_reached(point("healthy", plan.name))
                .rolling_back(),
        ),
    ))
}

/// The rolling stage of one service: per host a chain — stop, `switch` (the task that makes
/// the release live), start, check, health URL — with at most `hosts − min_nodes_up` hosts in
/// it at once (the stage's `min_hosts_up`, which the executor enforces, also over failed and
/// dropped hosts), so `min_nodes_up` hosts keep serving. With `healthy`, the chain's last step
/// after the switch reaches that point.
fn rolling_stage(
    name: String,
    plan: &ServicePlan<'_>,
    total: usize,
    switches: Vec<(String, Task)>,
    healthy: Option<String>,
) -> Result<Stage, GeneratorError> {
    let min_up = plan.min_nodes_up.unwrap_or(if total > 1 { 1 } else { 0 });
    if min_up >= total {
        return Err(other(format!(
            "service {}: min_nodes_up is {min_up} but the service has only {total} host{}; at least one host must be free to restart",
            plan.name,
            if total == 1 { "" } else { "s" }
        )));
    }
    // The hosts not in the stage (already on the version) serve throughout; the executor
    // keeps the rest of the minimum up among the stage's hosts, counting failed and dropped
    // hosts as down (`min_hosts_up`).
    let stage_min = min_up.saturating_sub(total - switches.len());
    let concurrency = switches.len().max(1);
    let stop = setting_str(plan.settings, "stop")?;
    let start = setting_str(plan.settings, "start")?;
    let check = setting_str(plan.settings, "check")?;
    let check_timeout = setting_u64(plan.settings, "check_timeout")?.unwrap_or(30);
    let health_url = setting_str(plan.settings, "health_url")?;
    let mut stage = Stage::new(name, concurrency).per_host(1);
    if stage_min > 0 {
        stage = stage.min_hosts_up(stage_min);
    }
    for (host, switch) in switches {
        let t = |c: &str| task(c, &host, plan.user_for(&host), plan.name);
        let current = join(&plan.dir(&host), "current");
        let fill = |line: &String| line.replace("{current}", &current);
        let mut chain = Vec::new();
        if let Some(stop) = &stop {
            chain.push(t("execute_command").arg("command_line", fill(stop)));
        }
        chain.push(switch);
        if let Some(start) = &start {
            chain.push(t("execute_command").arg("command_line", fill(start)));
        }
        if let Some(check) = &check {
            chain.push(
                t("check_service")
                    .arg("check_command", fill(check))
                    .arg("wait_timeout", check_timeout),
            );
        }
        if let Some(url) = &health_url {
            chain.push(t("http_check").arg("url", url.clone()));
        }
        if let Some(healthy) = &healthy
            && chain.last().is_some_and(|t| t.reaches.is_none())
        {
            let last = chain.pop().expect("a chain holds its switch");
            chain.push(last.reaches(healthy.clone()));
        }
        stage = stage.task(TaskEntry::Chain(chain));
    }
    Ok(stage)
}

fn graphite_stage(g: &Value, marker: &str, services: &[&str]) -> Result<Stage, GeneratorError> {
    let host = g
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| other("graphite.host: expected a host name"))?;
    let port = match g.get("port") {
        None | Some(Value::Null) => 2003,
        Some(p) => p
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| other(format!("graphite.port: expected a port number, found {p}")))?,
    };
    let prefix = g.get("prefix").and_then(Value::as_str).unwrap_or("deploys");
    let mut stage = Stage::new(format!("Graphite {marker} markers"), 10);
    for service in services {
        stage = stage.task(
            Task::new("send_graphite")
                .tag(*service)
                .arg("carbon_host", host)
                .arg("carbon_port", port)
                .arg(
                    "metric_name",
                    format!("{prefix}.{}.{marker}", service.replace('.', "_")),
                )
                .arg("metric_value", 1)
                .arg("continue_on_fail", true),
        );
    }
    Ok(stage)
}

/// What a deploy would do on one host ([`survey`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostPlan {
    /// The service.
    pub service: String,
    /// The host.
    pub host: String,
    /// The version the artifact would deploy.
    pub version: String,
    /// The version the host runs now (`current`), if any.
    pub live: Option<String>,
    /// Who holds the host's deploy lock, if anyone.
    pub locked_by: Option<String>,
    /// What a deploy would do.
    pub action: PlanAction,
}

/// What a deploy would do on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PlanAction {
    /// Deploy the version (the host runs another one, or none).
    Deploy,
    /// Deploy it again (`redeploy`): the host already runs it.
    Redeploy,
    /// Nothing: the host already runs the version.
    Skip,
    /// Nothing can be done now: another deploy holds the host's lock.
    Locked,
}

impl PlanAction {
    /// Whether the host would change.
    pub fn changes(self) -> bool {
        matches!(self, PlanAction::Deploy | PlanAction::Redeploy)
    }
}

/// Asks every host of a `release` config what a deploy would do there — its live version and
/// who holds its deploy lock — and changes nothing (what `deploy plan` prints). The config is
/// checked as [`ReleaseGenerator`] checks it.
pub async fn survey(ctx: &GeneratorContext) -> Result<Vec<HostPlan>, GeneratorError> {
    let config = ctx.config();
    config.section::<Keys>("")?;
    let artifacts = find_artifacts(config)?;
    let names: Vec<&str> = artifacts.iter().map(|a| a.service.as_str()).collect();
    let reading = read_config(config, &names)?;
    let mut out = Vec::new();
    for (artifact, (plan, _)) in artifacts.iter().zip(&reading.plans) {
        for host in &plan.hosts {
            let state = read_state(ctx, host, plan.user_for(host), plan.dir(host))
                .await?
                .unwrap_or_default();
            let live = state.live_version().map(str::to_string);
            let locked_by = state.lock.as_ref().map(LockInfo::to_string);
            let action = match (
                &locked_by,
                live.as_deref() == Some(artifact.version.as_str()),
            ) {
                (Some(_), _) => PlanAction::Locked,
                (None, true) if reading.redeploy => PlanAction::Redeploy,
                (None, true) => PlanAction::Skip,
                (None, false) => PlanAction::Deploy,
            };
            out.push(HostPlan {
                service: artifact.service.clone(),
                host: host.clone(),
                version: artifact.version.clone(),
                live,
                locked_by,
                action,
            });
        }
    }
    Ok(out)
}

/// What `deploy_to` on `host` holds ([`ReleaseLayout::read_state`]); `None` for a dry run (no
/// host access: nothing is asked, every host counts as new).
async fn read_state(
    ctx: &GeneratorContext,
    host: &str,
    user: &Option<String>,
    deploy_to: String,
) -> Result<Option<ReleaseState>, GeneratorError> {
    if !ctx.has_host_access() {
        return Ok(None);
    }
    let remote = connect(ctx, host, user).await?;
    ReleaseLayout::new(&deploy_to)
        .read_state(remote.as_ref())
        .await
        .map(Some)
        .map_err(command_error)
}

/// The host object for `host`; the controller itself is never logged into.
async fn connect(
    ctx: &GeneratorContext,
    host: &str,
    user: &Option<String>,
) -> Result<std::sync::Arc<dyn deployer_core::RemoteHost>, GeneratorError> {
    let user = if host == deployer_core::LOCAL_HOST {
        None
    } else {
        user.as_deref()
    };
    ctx.host(host, user).await
}

/// A host's failure as the generator reports it: unreachable hosts stay [`GeneratorError::Remote`].
fn command_error(e: deployer_core::CommandError) -> GeneratorError {
    match e {
        deployer_core::CommandError::Remote(r) => GeneratorError::Remote(r),
        other => GeneratorError::Other(deployer_core::error_chain(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_split_into_service_and_version() {
        let services = ["web", "web-api", "worker"];
        assert_eq!(
            parse_artifact_name("web-1.2.3.tar.gz", services),
            Some(("web".into(), "1.2.3".into()))
        );
        assert_eq!(
            parse_artifact_name("web-api-2.0.tgz", services),
            Some(("web-api".into(), "2.0".into()))
        );
        assert_eq!(
            parse_artifact_name("worker_198604260123.war", services),
            Some(("worker".into(), "198604260123".into()))
        );
        assert_eq!(parse_artifact_name("web-1.2.rar", services), None);
        assert_eq!(parse_artifact_name("other-1.0.tar.gz", services), None);
        assert_eq!(parse_artifact_name("web-.tar.gz", services), None);
        assert_eq!(parse_artifact_name("web-1;rm -rf.tar.gz", services), None);
    }

    /// The users of each host's tasks in the plan of `overrides` over a config whose `user`
    /// is `deploy` and whose inventory gives web1 `ansible_user=alice`.
    async fn users(overrides: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web-1.0.0.tar.gz"), b"").unwrap();
        let mut config = Config::from_yaml_str(
            &format!(
                "platform: release\ndeploy_to: /srv\nuser: deploy\ndirectory: {}\n\
                 service:\n  web:\n    hosts: [web]\n",
                dir.path().display()
            ),
            "deploy.yaml",
        )
        .unwrap()
        .with_inventory(
            deployer_core::inventory::Inventory::from_ini_str(
                "[web]\nweb1 ansible_user=alice\nweb2\n",
                "hosts.ini",
            )
            .unwrap(),
        )
        .unwrap();
        for (k, v) in overrides {
            config = config.with_override(k, Value::from(*v)).unwrap();
        }
        let tasklist = ReleaseGenerator
            .generate(&GeneratorContext::new(config))
            .await
            .unwrap();
        let mut seen: Vec<(String, Option<String>)> = tasklist
            .stages
            .iter()
            .flat_map(|s| &s.tasks)
            .flat_map(TaskEntry::tasks)
            .map(|t| (t.host_key().to_string(), t.remote_user.clone()))
            .collect();
        seen.sort();
        seen.dedup();
        seen
    }

    #[tokio::test]
    async fn an_inventory_user_beats_the_config_and_the_command_line_beats_both() {
        let some = |h: &str, u: &str| (h.to_string(), Some(u.to_string()));
        assert_eq!(
            users(&[]).await,
            [some("web1", "alice"), some("web2", "deploy")]
        );
        assert_eq!(
            users(&[("user", "carol")]).await,
            [some("web1", "carol"), some("web2", "carol")]
        );
    }
}
