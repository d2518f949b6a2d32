//! What the hosts hold — live and earlier releases, deploy locks — and the plans built from
//! it: `deploy status`, `deploy lock status|release`, `deploy rollback`.

use std::time::SystemTime;

use deployer_commands::{LockInfo, ReleaseLayout, Unlocked, release_version};
use deployer_core::{
    Finally, GeneratorContext, GeneratorError, RunId, RunState, RunStore, Stage, StoreError,
    Tasklist,
};

use super::{
    Keys, PlanIdentity, ServicePlan, command_error, connect, other, point, read_config, read_state,
    rolling_stage, task,
};

/// One service on one host: its live release, the earlier ones and its deploy lock
/// ([`status`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct HostStatus {
    /// The service.
    pub service: String,
    /// The host.
    pub host: String,
    /// The service's directory on the host.
    pub deploy_to: String,
    /// The login user the config names for it, if any.
    #[serde(skip)]
    pub user: Option<String>,
    /// The live version (`current`), if any.
    pub live: Option<String>,
    /// The live release directory (`1.2`, or `1.2@<suffix>` for a fresh copy).
    pub live_release: Option<String>,
    /// The versions of the other releases on the host (not the live version), newest first.
    pub previous: Vec<String>,
    /// The version `deploy rollback` (without `--to`) would go back to.
    pub rollback_to: Option<String>,
    /// The deploy lock, when one is held.
    pub lock: Option<LockInfo>,
}

/// The services of the config that have hosts left after `only_hosts`/`only_hostgroups`.
fn all_services(ctx: &GeneratorContext) -> Result<Vec<(ServicePlan<'_>, usize)>, GeneratorError> {
    let config = ctx.config();
    config.section::<Keys>("")?;
    let names: Vec<&str> = config.services().keys().map(String::as_str).collect();
    if names.is_empty() {
        return Err(other("the config has no service"));
    }
    let reading = read_config(config, &names)?;
    Ok(reading
        .plans
        .into_iter()
        .filter(|(plan, _)| !plan.hosts.is_empty())
        .collect())
}

fn needs_hosts(ctx: &GeneratorContext, what: &str) -> Result<(), GeneratorError> {
    if ctx.has_host_access() {
        Ok(())
    } else {
        Err(GeneratorError::NeedsHostAccess {
            what: what.to_string(),
        })
    }
}

/// Asks every host of every service of a `release` config (after `only_hosts` /
/// `only_hostgroups`) for its live release, its earlier releases and its deploy lock, in one
/// command per host and service; changes nothing.
///
/// ```
/// use std::sync::Arc;
/// use deployer_core::fixture::{FakeConnector, FakeHost, FakeReply};
/// use deployer_core::{Config, GeneratorContext};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let config = Config::from_yaml_str(
///     "platform: release\ndeploy_to: /srv\nservice:\n  web:\n    hosts: [fe001]\n",
///     "deploy.yaml",
/// ).unwrap();
/// let connector = FakeConnector::new().with_host(FakeHost::new("fe001").reply(
///     "release_state",
///     FakeReply {
///         stdout: "current\treleases/2.0\nrelease\t200\t2.0\nrelease\t100\t1.0\n\
///                  log\tt\tactivate\t1.0\talice\nlog\tt\tactivate\t2.0\talice\n".into(),
///         ..FakeReply::default()
///     },
/// ));
/// let ctx = GeneratorContext::new(config).with_connector(Arc::new(connector));
/// let hosts = deployer_release::status(&ctx).await.unwrap();
/// assert_eq!(hosts[0].live.as_deref(), Some("2.0"));
/// assert_eq!(hosts[0].previous, ["1.0"]);
/// assert_eq!(hosts[0].rollback_to.as_deref(), Some("1.0"));
/// assert!(hosts[0].lock.is_none());
/// # });
/// ```
pub async fn status(ctx: &GeneratorContext) -> Result<Vec<HostStatus>, GeneratorError> {
    needs_hosts(ctx, "the status of releases")?;
    let mut out = Vec::new();
    for (plan, _) in all_services(ctx)? {
        for host in &plan.hosts {
            let deploy_to = plan.dir(host);
            let state = read_state(ctx, host, plan.user_for(host), deploy_to.clone())
                .await?
                .unwrap_or_default();
            let mut previous: Vec<String> = Vec::new();
            let live = state.live_version();
            for r in &state.releases {
                if Some(r.version.as_str()) != live && !previous.contains(&r.version) {
                    previous.push(r.version.clone());
                }
            }
            out.push(HostStatus {
                service: plan.name.to_string(),
                host: host.clone(),
                deploy_to,
                user: plan.user_for(host).clone(),
                live: state.live_version().map(str::to_string),
                live_release: state.live.clone(),
                previous,
                rollback_to: state.previous().map(|r| release_version(&r).to_string()),
                lock: state.lock,
            });
        }
    }
    Ok(out)
}

/// Whether a deploy lock still protects a run ([`judge_lock`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LockVerdict {
    /// No live run holds it: `deploy lock release` may free it.
    pub stale: bool,
    /// Why, in words: `run 0190… is RUNNING, driven by alice@ci-7 (lease for 25s more)`.
    pub reason: String,
}

/// How young a lock that names no holder yet may be and still count as being taken.
const TAKING_GRACE_SECS: u64 = 60;

/// Whether `lock` is stale, by `store`: its run is finished, or is not in the store, or no
/// controller holds a live lease on it (the controller that drove it stopped; resuming the run
/// takes the lock again). A lock that names no recorded run (an unrecorded run's or an older
/// deployer's) is stale too; one that names nobody yet is being taken, unless it is older than
/// a minute. A store that cannot be read leaves the lock live.
///
/// ```
/// use deployer_commands::LockInfo;
/// use deployer_core::{MemoryStore, RunStore};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let lock = LockInfo::parse("now=100\ntaken=90\nholder=0190f5c2-7b1a-7cc3-9a51-2f3e0c1d2b4a\n");
/// let verdict = deployer_release::judge_lock(&lock, &store, std::time::SystemTime::now()).await;
/// assert!(verdict.stale);
/// assert!(verdict.reason.contains("not in the run store"), "{}", verdict.reason);
/// # });
/// ```
pub async fn judge_lock(lock: &LockInfo, store: &dyn RunStore, now: SystemTime) -> LockVerdict {
    let verdict = |stale: bool, reason: String| LockVerdict { stale, reason };
    let Some(holder) = &lock.holder else {
        return match lock.age_seconds {
            Some(age) if age < TAKING_GRACE_SECS => {
                verdict(false, "the lock is being taken".to_string())
            }
            _ => verdict(
                true,
                "the lock names no run: whoever took it stopped before naming itself".to_string(),
            ),
        };
    };
    let Ok(id) = holder.parse::<RunId>() else {
        return verdict(
            true,
            format!("{holder} is not a recorded run (an unrecorded run or an older deployer)"),
        );
    };
    match store.run(&id).await {
        Ok(run) => match run.state {
            RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::Degraded => {
                verdict(true, format!("run {id} is finished ({})", run.state))
            }
            RunState::Pending | RunState::Running if run.is_claimed(now) => {
                let left = run
                    .lease_expires
                    .and_then(|t| t.duration_since(now).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                verdict(
                    false,
                    format!(
                        "run {id} is {}, driven by {} (lease for {left}s more)",
                        run.state,
                        run.owner.as_deref().unwrap_or("a controller")
                    ),
                )
            }
            RunState::Pending | RunState::Running => verdict(
                true,
                format!(
                    "run {id} is {} but no controller drives it (its lease expired; \
                     resuming it takes the lock again)",
                    run.state
                ),
            ),
        },
        Err(StoreError::NotFound { .. }) => {
            verdict(true, format!("run {id} is not in the run store"))
        }
        Err(e) => verdict(
            false,
            format!("cannot read run {id} from the run store: {e}"),
        ),
    }
}

/// Removes the deploy lock of `status` if it is still held by `holder` (what was read; a
/// lock taken again since is left alone), or whatever holds it when `force`.
pub async fn free_lock(
    ctx: &GeneratorContext,
    status: &HostStatus,
    holder: &str,
    force: bool,
) -> Result<Unlocked, GeneratorError> {
    let remote = connect(ctx, &status.host, &status.user).await?;
    ReleaseLayout::new(&status.deploy_to)
        .unlock(remote.as_ref(), holder, force)
        .await
        .map_err(command_error)
}

/// What a rollback does on one host ([`rollback_survey`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RollbackHost {
    /// The service.
    pub service: String,
    /// The host.
    pub host: String,
    /// The live version.
    pub live: String,
    /// The version it goes back to.
    pub to: String,
    /// The release directory it switches to.
    pub release: String,
    /// Whether the host changes (`false`: it already runs the version asked for).
    pub changes: bool,
    /// Who holds its deploy lock, if anyone.
    pub locked_by: Option<String>,
    #[serde(skip)]
    deploy_to: String,
    #[serde(skip)]
    user: Option<String>,
}

/// Asks every host of a `release` config (after `only_hosts`/`only_hostgroups`) where a
/// rollback takes it: to `rollback_to` when the config sets it (the newest copy of that
/// version; it must be on every host), else to the release that was live before the live one
/// (from `releases.log`). Every host that cannot go there is named in one error, with the
/// versions it has.
pub async fn rollback_survey(ctx: &GeneratorContext) -> Result<Vec<RollbackHost>, GeneratorError> {
    needs_hosts(ctx, "a rollback")?;
    let to = ctx.config().get_as::<String>("rollback_to")?;
    if let Some(v) = &to
        && (v.is_empty() || v.contains('/') || v.chars().any(char::is_control))
    {
        return Err(other(format!(
            "rollback_to: {v:?} is not a version (expected a release's version, e.g. 1.2.0)"
        )));
    }
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (plan, _) in all_services(ctx)? {
        for host in &plan.hosts {
            let deploy_to = plan.dir(host);
            let state = read_state(ctx, host, plan.user_for(host), deploy_to.clone())
                .await?
                .unwrap_or_default();
            let has = || {
                let mut v: Vec<&str> = Vec::new();
                for r in &state.releases {
                    if !v.contains(&r.version.as_str()) {
                        v.push(&r.version);
                    }
                }
                if v.is_empty() {
                    "nothing".to_string()
                } else {
                    v.join(", ")
                }
            };
            let Some(live) = state.live.clone() else {
                problems.push(format!(
                    "{host} ({}): no release is live (it has {})",
                    plan.name,
                    has()
                ));
                continue;
            };
            let target = match &to {
                Some(v) if release_version(&live) == v => Some(live.clone()),
                Some(v) => state.newest_of(v).map(str::to_string),
                None => state.previous(),
            };
            let Some(release) = target else {
                problems.push(match &to {
                    Some(v) => format!("{host} ({}): has no {v} (it has {})", plan.name, has()),
                    None => format!(
                        "{host} ({}): no earlier release to go back to (it has {})",
                        plan.name,
                        has()
                    ),
                });
                continue;
            };
            out.push(RollbackHost {
                service: plan.name.to_string(),
                host: host.clone(),
                live: release_version(&live).to_string(),
                to: release_version(&release).to_string(),
                changes: release != live,
                release,
                locked_by: state.lock.as_ref().map(LockInfo::to_string),
                deploy_to,
                user: plan.user_for(host).clone(),
            });
        }
    }
    if !problems.is_empty() {
        let what = match &to {
            Some(v) => format!("cannot roll back to {v}"),
            None => "cannot roll back".to_string(),
        };
        return Err(other(format!("{what}: {}", problems.join("; "))));
    }
    Ok(out)
}

/// The rollback plan ([`ReleaseGenerator`](super::ReleaseGenerator) with `rollback: true`): take
/// every host's lock, then per service a rolling stage like a deploy's activation — stop,
/// switch `current` back (`rollback`), start, check, health URL, release the lock.
pub(crate) async fn rollback_plan(ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
    let hosts = rollback_survey(ctx).await?;
    let to = ctx.config().get_as::<String>("rollback_to")?;
    let services = all_services(ctx)?;
    let me = PlanIdentity::new();
    let names: Vec<&str> = services.iter().map(|(p, _)| p.name).collect();
    let mut tasklist = Tasklist::new(match &to {
        Some(v) => format!("Roll back {} to {v}", names.join(", ")),
        None => format!("Roll back {}", names.join(", ")),
    });
    let moving: Vec<&RollbackHost> = hosts.iter().filter(|h| h.changes).collect();
    for h in hosts.iter().filter(|h| !h.changes) {
        tracing::info!(
            component = "ReleaseGenerator",
            host = h.host.as_str(),
            tag = h.service.as_str(),
            "already on {}; skipping",
            h.to
        );
    }
    if moving.is_empty() {
        return Ok(tasklist);
    }
    let mut lock = Stage::new("Lock hosts", 10).per_host(2);
    for h in &moving {
        lock = lock.task(
            me.lock(
                task("release_lock", &h.host, &h.user, &h.service),
                &h.deploy_to,
            )
            .reaches(point("locked", &h.service)),
        );
    }
    tasklist = tasklist.stage(lock);
    for (plan, total) in &services {
        let switches: Vec<_> = moving
            .iter()
            .filter(|h| h.service == plan.name)
            .map(|h| {
                let switch = task("rollback", &h.host, plan.user_for(&h.host), plan.name)
                    .arg("deploy_to", h.deploy_to.clone())
                    .arg("version", h.release.clone())
                    .arg("holder", me.by());
                (h.host.clone(), switch)
            })
            .collect();
        if switches.is_empty() {
            continue;
        }
        tasklist = tasklist.stage(rolling_stage(
            format!("Roll back {}", plan.name),
            plan,
            *total,
            switches,
            None,
        )?);
    }
    // Whatever happens, unlock the hosts that took the lock.
    for (plan, _) in &services {
        let mut unlock = Stage::new(format!("Unlock {}", plan.name), 10)
            .per_host(2)
            .finally(Finally::if_reached(point("locked", plan.name)));
        let mut any = false;
        for h in moving.iter().filter(|h| h.service == plan.name) {
            any = true;
            unlock = unlock.task(me.unlock(
                task("release_unlock", &h.host, &h.user, &h.service),
                &h.deploy_to,
            ));
        }
        if any {
            tasklist = tasklist.stage(unlock);
        }
    }
    Ok(tasklist)
}
