//! Releases: the directory layout deploy users expect, and the commands that maintain it.
//!
//! ```text
//! <deploy_to>/
//!   releases/<version>/     one directory per release
//!   releases/<version>@<suffix>/   a fresh copy of a version that was live when it was
//!                           deployed again (never unpacked over the live one)
//!   shared/                 files and directories kept across releases, linked into each
//!   current -> releases/<version>   switched atomically
//!   releases.log            one line per switch: time, action, release directory, holder
//!   .deploy.lock/           present while a deploy runs (taken by one mkdir):
//!     info                  user=, controller=, taken= (seconds since the epoch), for people
//!     holder                the lock's identity: the run id (written last)
//! ```
//!
//! A deploy is a chain of tasks: `release_lock`, `release_create`, `upload` + `unpack` into
//! the release directory, `release_link_shared`, `release_activate`, `keep_releases`,
//! `release_unlock`. `rollback` switches `current` back. [`ReleaseState`] reads all of it
//! from a host in one command.

use deployer_core::{
    Command, CommandError, ExecContext, ExecOptions, Outcome, RemoteHost, ShellCommand, TaskArgs,
    ValidationErrors, async_trait,
};
use serde::Deserialize;

use crate::files::{Entry, list_line, parse_list, read_link};
use crate::util::{Check, build, explain, join};

/// The paths of the release layout under one `deploy_to` directory.
///
/// ```
/// use deployer_commands::ReleaseLayout;
/// let layout = ReleaseLayout::new("/srv/web");
/// assert_eq!(layout.release("1.2"), "/srv/web/releases/1.2");
/// assert_eq!(layout.current(), "/srv/web/current");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseLayout {
    root: String,
}

impl ReleaseLayout {
    /// The layout under `deploy_to`.
    pub fn new(deploy_to: impl Into<String>) -> Self {
        let mut root: String = deploy_to.into();
        while root.len() > 1 && root.ends_with('/') {
            root.pop();
        }
        ReleaseLayout { root }
    }

    /// `deploy_to` itself.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<deploy_to>/releases`.
    pub fn releases(&self) -> String {
        join(&self.root, "releases")
    }

    /// `<deploy_to>/releases/<version>`.
    pub fn release(&self, version: &str) -> String {
        join(&self.releases(), version)
    }

    /// `<deploy_to>/shared`.
    pub fn shared(&self) -> String {
        join(&self.root, "shared")
    }

    /// `<deploy_to>/current`, the link to the live release.
    pub fn current(&self) -> String {
        join(&self.root, "current")
    }

    /// `<deploy_to>/releases.log`.
    pub fn log(&self) -> String {
        join(&self.root, "releases.log")
    }

    /// `<deploy_to>/.deploy.lock`, a directory holding the file `holder`.
    pub fn lock(&self) -> String {
        join(&self.root, ".deploy.lock")
    }
}

fn check_root(c: &mut Check, deploy_to: &str) {
    if !deploy_to.starts_with('/') || deploy_to.trim_end_matches('/').is_empty() {
        c.fail(
            "deploy_to",
            format!("invalid deploy directory {deploy_to:?}"),
            "an absolute path below /, e.g. \"/srv/web\"",
        );
    } else {
        c.path("deploy_to", deploy_to);
    }
}

/// A name written into the lock or the releases log: not empty, no control character.
fn check_holder(c: &mut Check, path: &str, holder: &str) {
    if holder.is_empty() || holder.chars().any(|ch| ch.is_control()) {
        c.fail(
            path,
            format!("invalid {path} {holder:?}"),
            "a non-empty name without control characters, e.g. \"alice@ci-42\"",
        );
    }
}

const LOCK_HELD: i32 = 3;

/// A shell function: `describe LOCKDIR` prints what [`LockInfo::parse`] reads — the host's
/// clock, the lock directory's age, the lock's `info` file and its `holder`.
const DESCRIBE_FN: &str = "describe() { printf 'now=%s\\n' \"$(date +%s)\"; printf 'mtime=%s\\n' \"$(stat -c %Y -- \"$1\" 2>/dev/null)\"; cat -- \"$1/info\" 2>/dev/null; h=$(cat -- \"$1/holder\" 2>/dev/null) && printf 'holder=%s\\n' \"$h\"; }; ";

/// `$1` root, `$2` lock dir, `$3` identity, `$4` user, `$5` controller. `mkdir` is the one
/// atomic step that takes the lock; `info` is written next and `holder` last (under a
/// temporary name, renamed), so a lock with a `holder` file is complete; a lock found without
/// one is being taken, and its holder is waited for (up to a second) so a refusal names it.
/// Exit 0 when we hold the lock (also when we already did), 3 (describing the lock) when
/// someone else does.
fn lock_script() -> String {
    format!(
        "{DESCRIBE_FN}mkdir -p -- \"$1\" || exit 1; if mkdir -- \"$2\" 2>/dev/null; then {{ printf 'user=%s\\ncontroller=%s\\ntaken=%s\\n' \"$4\" \"$5\" \"$(date +%s)\" > \"$2/info\" && printf '%s\\n' \"$3\" > \"$2/holder.tmp\" && mv -f -- \"$2/holder.tmp\" \"$2/holder\"; }} || exit 1; exit 0; fi; i=0; while [ -d \"$2\" ] && [ ! -f \"$2/holder\" ] && [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done; h=$(cat -- \"$2/holder\" 2>/dev/null); if [ -n \"$h\" ] && [ \"$h\" = \"$3\" ]; then exit 0; fi; describe \"$2\"; exit 3"
    )
}

/// `$1` lock dir, `$2` identity, `$3` force (1/0). Exit 0 when the lock is gone, 3
/// (describing the lock) when someone else holds it.
fn unlock_script() -> String {
    format!(
        "{DESCRIBE_FN}[ -e \"$1\" ] || exit 0; h=$(cat -- \"$1/holder\" 2>/dev/null); if [ \"$h\" = \"$2\" ] || [ \"$3\" = 1 ]; then rm -rf -- \"$1\"; exit $?; fi; describe \"$1\"; exit 3"
    )
}

/// A deploy lock as its host describes it: who holds it and since when.
///
/// On the host, the lock is the directory `<deploy_to>/.deploy.lock/` (taken by one `mkdir`)
/// holding `info` (`user=`, `controller=` and `taken=` lines, for people) and `holder` (the
/// lock's identity, written last). A lock written by an older deployer has only `holder`,
/// holding a text such as `alice@ci-7`; it reads back with that text as its holder.
///
/// ```
/// use deployer_commands::LockInfo;
/// let lock = LockInfo::parse(
///     "now=1000\nmtime=990\nuser=alice\ncontroller=ci-7\ntaken=880\n\
///      holder=0190f5c2-7b1a-7cc3-9a51-2f3e0c1d2b4a\n",
/// );
/// assert_eq!(lock.user.as_deref(), Some("alice"));
/// assert_eq!(lock.age_seconds, Some(120));
/// assert!(lock.run_id().is_some());
/// assert_eq!(
///     lock.to_string(),
///     "run 0190f5c2-7b1a-7cc3-9a51-2f3e0c1d2b4a (user alice, controller ci-7, taken 2m ago)"
/// );
/// // An older deployer's lock: its holder text.
/// assert_eq!(LockInfo::parse("now=10\nmtime=4\nholder=alice@ci-7\n").to_string(),
///            "alice@ci-7 (taken 6s ago)");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// The lock's identity: the id of the run that took it (a recorded run), else the task's
    /// `holder` argument, else what an older deployer wrote. `None` while the lock is being
    /// taken (or when whoever took it died before naming itself).
    pub holder: Option<String>,
    /// The user who took it, for display.
    pub user: Option<String>,
    /// The controller machine that took it, for display.
    pub controller: Option<String>,
    /// When it was taken, in seconds since the epoch by the host's clock.
    pub taken: Option<u64>,
    /// How long it has been held, by the host's clock (from `taken`, else from the lock
    /// directory's modification time).
    pub age_seconds: Option<u64>,
}

impl LockInfo {
    /// Reads `key=value` lines (`now`, `mtime`, `user`, `controller`, `taken`, `holder`);
    /// unknown keys and lines are ignored, empty values are absent.
    pub fn parse(text: &str) -> LockInfo {
        let mut info = LockInfo::default();
        let (mut now, mut mtime) = (None, None);
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim_end();
            if value.is_empty() {
                continue;
            }
            match key {
                "holder" => info.holder = Some(value.to_string()),
                "user" => info.user = Some(value.to_string()),
                "controller" => info.controller = Some(value.to_string()),
                "taken" => info.taken = value.parse().ok(),
                "now" => now = value.parse::<u64>().ok(),
                "mtime" => mtime = value.parse::<u64>().ok(),
                _ => {}
            }
        }
        info.age_seconds = now.and_then(|n| info.taken.or(mtime).map(|t| n.saturating_sub(t)));
        info
    }

    /// The run that holds the lock, when its identity is a run id.
    pub fn run_id(&self) -> Option<deployer_core::RunId> {
        self.holder.as_deref()?.parse().ok()
    }
}

/// `42s`, `3m 5s`, `2h 4m`, `3d 2h`.
pub(crate) fn short_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let parts = match (d, h, m) {
        (0, 0, 0) => vec![(s, "s")],
        (0, 0, _) => vec![(m, "m"), (s, "s")],
        (0, _, _) => vec![(h, "h"), (m, "m")],
        _ => vec![(d, "d"), (h, "h")],
    };
    parts
        .iter()
        .enumerate()
        .filter(|(i, (n, _))| *i == 0 || *n > 0)
        .map(|(_, (n, unit))| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.holder, self.run_id()) {
            (Some(_), Some(id)) => write!(f, "run {id}")?,
            (Some(h), None) => f.write_str(h)?,
            (None, _) => f.write_str("nobody yet (the lock is being taken)")?,
        }
        let mut details = Vec::new();
        if let Some(u) = &self.user {
            details.push(format!("user {u}"));
        }
        if let Some(c) = &self.controller {
            details.push(format!("controller {c}"));
        }
        if let Some(age) = self.age_seconds {
            details.push(format!("taken {} ago", short_duration(age)));
        }
        if !details.is_empty() {
            write!(f, " ({})", details.join(", "))?;
        }
        Ok(())
    }
}

/// What [`ReleaseLayout::unlock`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unlocked {
    /// The lock is gone (also when there was none).
    Freed,
    /// Someone else holds it; it is left alone.
    HeldBy(LockInfo),
}

impl ReleaseLayout {
    /// The command line that takes the lock for `identity` ([`ReleaseLock`]'s).
    fn lock_line(
        &self,
        identity: &str,
        user: &str,
        controller: &str,
    ) -> Result<String, CommandError> {
        build(
            &ShellCommand::new("sh")
                .arg("-c")
                .arg(lock_script())
                .arg("release_lock")
                .arg(self.root())
                .arg(self.lock())
                .arg(identity)
                .arg(user)
                .arg(controller),
        )
    }

    fn unlock_line(&self, identity: &str, force: bool) -> Result<String, CommandError> {
        build(
            &ShellCommand::new("sh")
                .arg("-c")
                .arg(unlock_script())
                .arg("release_unlock")
                .arg(self.lock())
                .arg(identity)
                .arg(if force { "1" } else { "0" }),
        )
    }

    /// Removes the deploy lock on `host` if its holder is `holder` (the run id for a lock taken
    /// by a recorded run), or whoever holds it when `force`; a missing lock counts as freed.
    /// One remote command: the holder is compared and the lock removed on the host, so a lock
    /// taken again by another run in the meantime is left alone.
    pub async fn unlock(
        &self,
        host: &dyn RemoteHost,
        holder: &str,
        force: bool,
    ) -> Result<Unlocked, CommandError> {
        let out = host
            .execute(&self.unlock_line(holder, force)?, &ExecOptions::new())
            .await?;
        match out.exit_status {
            Some(0) => Ok(Unlocked::Freed),
            Some(LOCK_HELD) => Ok(Unlocked::HeldBy(LockInfo::parse(&out.stdout_str()))),
            _ => Err(crate::util::process_failed(
                format!(
                    "cannot remove the deploy lock {} on {}",
                    self.lock(),
                    host.name()
                ),
                &out,
            )),
        }
    }
}

/// Takes the deploy lock of `deploy_to`, refusing when another run holds it; the error names
/// the holder (its run id, user, controller and how long ago it took the lock).
///
/// The lock's identity is the run's id ([`ExecContext::run_id`]) when the task runs in a
/// recorded run — it survives a resume or a takeover, so the resumed run keeps its lock, and
/// any other run is refused, whoever started it. A task that runs outside a recorded run uses
/// `holder` instead (the `release` generator gives each plan its own, `plan-<uuid>`). `user`
/// and `controller` are written beside it for people (optional).
///
/// ```json
/// {"command": "release_lock", "remote_host": "fe001", "deploy_to": "/srv/web",
///  "holder": "plan-0190f5c2-7b1a-7cc3-9a51-2f3e0c1d2b4a", "user": "alice", "controller": "ci-7"}
/// ```
///
/// Taking is one `mkdir` on the host. Idempotent: taking a lock one already holds (same
/// identity) succeeds, so a retried or resumed task is fine.
#[derive(Debug)]
pub struct ReleaseLock {
    layout: ReleaseLayout,
    holder: String,
    user: Option<String>,
    controller: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockArgs {
    deploy_to: String,
    holder: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    controller: Option<String>,
}

/// The identity a lock task acts as: the run's id, else the task's `holder`.
fn identity(ctx: &ExecContext, holder: &str) -> String {
    ctx.run_id()
        .map(|id| id.to_string())
        .unwrap_or_else(|| holder.to_string())
}

#[async_trait]
impl Command for ReleaseLock {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: LockArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        check_holder(&mut c, "holder", &a.holder);
        for (path, value) in [("user", &a.user), ("controller", &a.controller)] {
            if let Some(v) = value {
                check_holder(&mut c, path, v);
            }
        }
        if a.force {
            c.fail(
                "force",
                "only applies to release_unlock",
                "no \"force\" here",
            );
        }
        c.finish(ReleaseLock {
            layout: ReleaseLayout::new(a.deploy_to),
            holder: a.holder,
            user: a.user,
            controller: a.controller,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let line = self.layout.lock_line(
            &identity(ctx, &self.holder),
            self.user.as_deref().unwrap_or(""),
            self.controller.as_deref().unwrap_or(""),
        )?;
        let out = ctx.run(&line).await?;
        match out.exit_status {
            Some(0) => Ok(Outcome::done()),
            Some(LOCK_HELD) => Err(CommandError::Failed {
                message: format!(
                    "{} on {} is locked by {}: another run holds it (if that run is over, \
                     free the lock with `deploy lock release`, or remove {})",
                    self.layout.root(),
                    ctx.host().name(),
                    LockInfo::parse(&out.stdout_str()),
                    self.layout.lock()
                ),
                exit_status: out.exit_status,
                stderr: String::new(),
            }),
            _ => Err(crate::util::process_failed(
                format!(
                    "cannot take the deploy lock {} on {}",
                    self.layout.lock(),
                    ctx.host().name()
                ),
                &out,
            )),
        }
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// Releases the deploy lock of `deploy_to` if this run holds it — the same identity as
/// [`ReleaseLock`]: the run id in a recorded run, else `holder` — or whoever holds it, with
/// `force: true`. A missing lock is fine; a lock held by another run is left alone and the
/// task fails naming its holder.
///
/// ```json
/// {"command": "release_unlock", "remote_host": "fe001", "deploy_to": "/srv/web",
///  "holder": "plan-0190f5c2-7b1a-7cc3-9a51-2f3e0c1d2b4a", "force": false}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct ReleaseUnlock {
    layout: ReleaseLayout,
    holder: String,
    force: bool,
}

#[async_trait]
impl Command for ReleaseUnlock {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: LockArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        check_holder(&mut c, "holder", &a.holder);
        for (path, value) in [("user", &a.user), ("controller", &a.controller)] {
            if let Some(v) = value {
                check_holder(&mut c, path, v);
            }
        }
        c.finish(ReleaseUnlock {
            layout: ReleaseLayout::new(a.deploy_to),
            holder: a.holder,
            force: a.force,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let me = identity(ctx, &self.holder);
        let out = ctx.run(&self.layout.unlock_line(&me, self.force)?).await?;
        match out.exit_status {
            Some(0) => Ok(Outcome::done()),
            Some(LOCK_HELD) => Err(CommandError::Failed {
                message: format!(
                    "the deploy lock of {} on {} is held by {}, not by {} (use force to remove it)",
                    self.layout.root(),
                    ctx.host().name(),
                    LockInfo::parse(&out.stdout_str()),
                    match ctx.run_id() {
                        Some(id) => format!("this run ({id})"),
                        None => me,
                    }
                ),
                exit_status: out.exit_status,
                stderr: String::new(),
            }),
            _ => Err(crate::util::process_failed(
                format!("cannot remove the deploy lock {}", self.layout.lock()),
                &out,
            )),
        }
    }

    fn idempotent(&self) -> bool {
        true
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    deploy_to: String,
    version: String,
    #[serde(default)]
    fresh: bool,
}

/// `$1` root, `$2` release name: refuses when `current` points to it (exit 4), else empties it.
const FRESH_SCRIPT: &str = "l=$(readlink -- \"$1/current\" 2>/dev/null); if [ -n \"$l\" ] && [ \"${l##*/}\" = \"$2\" ]; then printf 'release %s is live: a fresh copy needs another name\\n' \"$1/releases/$2\" >&2; exit 4; fi; rm -rf -- \"$1/releases/$2\" && mkdir -p -- \"$1/releases/$2\" \"$1/shared\"";

/// Creates `releases/<version>/` and `shared/` under `deploy_to` (with parents). `version`
/// is the release's directory name: its version, or `<version>@<suffix>` for a fresh copy of
/// a version that is live ([`release_version`] reads the version back).
///
/// With `fresh: true` the release directory is emptied first, so nothing of an earlier copy
/// survives; a release that is live is never emptied (the task fails saying so).
///
/// ```json
/// {"command": "release_create", "remote_host": "fe001", "deploy_to": "/srv/web", "version": "1.2"}
/// {"command": "release_create", "remote_host": "fe001", "deploy_to": "/srv/web",
///  "version": "1.2@0d1e2f3a4b5c", "fresh": true}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct ReleaseCreate {
    layout: ReleaseLayout,
    version: String,
    fresh: bool,
}

#[async_trait]
impl Command for ReleaseCreate {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: CreateArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        c.name("version", &a.version, "version");
        c.finish(ReleaseCreate {
            layout: ReleaseLayout::new(a.deploy_to),
            version: a.version,
            fresh: a.fresh,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let line = if self.fresh {
            build(
                &ShellCommand::new("sh")
                    .arg("-c")
                    .arg(FRESH_SCRIPT)
                    .arg("release_create")
                    .arg(self.layout.root())
                    .arg(&self.version),
            )?
        } else {
            build(
                &ShellCommand::new("mkdir")
                    .arg("-p")
                    .arg("--")
                    .arg(self.layout.release(&self.version))
                    .arg(self.layout.shared()),
            )?
        };
        ctx.run_checked(&line).await.map_err(explain(format!(
            "cannot create release {} of {} on {}",
            self.version,
            self.layout.root(),
            ctx.host().name()
        )))?;
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// The version a release directory holds: its name without a `@<suffix>` (`1.2@0d1e2f3a` →
/// `1.2`; `1.2` → `1.2`).
///
/// ```
/// assert_eq!(deployer_commands::release_version("1.2@0d1e2f3a4b5c"), "1.2");
/// assert_eq!(deployer_commands::release_version("2.0.0-rc1"), "2.0.0-rc1");
/// ```
pub fn release_version(release: &str) -> &str {
    match release.rsplit_once('@') {
        Some((version, suffix))
            if !version.is_empty()
                && !suffix.is_empty()
                && suffix.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            version
        }
        _ => release,
    }
}

/// One release directory on a host.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ReleaseDir {
    /// Its name under `releases/`.
    pub name: String,
    /// The version it holds ([`release_version`]).
    pub version: String,
    /// Its modification time, in seconds since the epoch by the host's clock.
    pub mtime: f64,
}

/// Everything a host says about one release layout, read in one command
/// ([`ReleaseLayout::read_state`]): the live release, the release directories, the releases
/// log and the deploy lock.
///
/// ```
/// use deployer_commands::ReleaseState;
/// let state = ReleaseState::parse(
///     "current\treleases/1.1\n\
///      release\t100.5\t1.0\nrelease\t200.0\t1.1\nrelease\t300.0\t1.2@ab12\n\
///      log\tt\tactivate\t1.0\talice\nlog\tt\tactivate\t1.1\talice\n",
/// );
/// assert_eq!(state.live.as_deref(), Some("1.1"));
/// // Newest first.
/// assert_eq!(state.releases.iter().map(|r| r.version.as_str()).collect::<Vec<_>>(),
///            ["1.2", "1.1", "1.0"]);
/// assert_eq!(state.previous().as_deref(), Some("1.0"));
/// assert_eq!(state.newest_of("1.2"), Some("1.2@ab12"));
/// assert!(state.lock.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ReleaseState {
    /// The release directory `current` points to, if it is a link.
    pub live: Option<String>,
    /// The release directories, newest first (by modification time); hidden names are not
    /// releases.
    pub releases: Vec<ReleaseDir>,
    /// The end of `releases.log` (at most its last 1000 lines).
    pub log: String,
    /// The deploy lock, when one is held.
    pub lock: Option<LockInfo>,
}

/// `$1` root. Prints tab-separated records: `current`, `release` (mtime, name), `log` (a line
/// of the releases log), `lock` (a [`LockInfo`] line).
const STATE_SCRIPT: &str = "l=$(readlink -- \"$1/current\" 2>/dev/null) && printf 'current\\t%s\\n' \"$l\"; if [ -d \"$1/releases\" ]; then find \"$1/releases\" -mindepth 1 -maxdepth 1 -type d -printf 'release\\t%T@\\t%f\\n'; fi; if [ -f \"$1/releases.log\" ]; then tail -n 1000 -- \"$1/releases.log\" | sed 's/^/log\\t/'; fi; if [ -d \"$1/.deploy.lock\" ]; then printf 'lock\\tnow=%s\\n' \"$(date +%s)\"; printf 'lock\\tmtime=%s\\n' \"$(stat -c %Y -- \"$1/.deploy.lock\" 2>/dev/null)\"; sed 's/^/lock\\t/' -- \"$1/.deploy.lock/info\" 2>/dev/null; h=$(cat -- \"$1/.deploy.lock/holder\" 2>/dev/null) && printf 'lock\\tholder=%s\\n' \"$h\"; fi; exit 0";

impl ReleaseState {
    /// Reads what the state command printed.
    pub fn parse(text: &str) -> ReleaseState {
        let mut state = ReleaseState::default();
        let mut lock: Option<String> = None;
        let mut log = Vec::new();
        for line in text.lines() {
            let Some((kind, rest)) = line.split_once('\t') else {
                continue;
            };
            match kind {
                "current" => {
                    let name = crate::util::basename(rest.trim_end_matches('/'));
                    if !name.is_empty() {
                        state.live = Some(name.to_string());
                    }
                }
                "release" => {
                    if let Some((mtime, name)) = rest.split_once('\t')
                        && !name.starts_with('.')
                    {
                        state.releases.push(ReleaseDir {
                            name: name.to_string(),
                            version: release_version(name).to_string(),
                            mtime: mtime.parse().unwrap_or(0.0),
                        });
                    }
                }
                "log" => log.push(rest),
                "lock" => {
                    let l = lock.get_or_insert_with(String::new);
                    l.push_str(rest);
                    l.push('\n');
                }
                _ => {}
            }
        }
        state.releases.sort_by(|a, b| {
            b.mtime
                .partial_cmp(&a.mtime)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| b.name.cmp(&a.name))
        });
        state.log = log.join("\n");
        state.lock = lock.map(|l| LockInfo::parse(&l));
        state
    }

    /// The version that is live, if any ([`release_version`] of [`live`](Self::live)).
    pub fn live_version(&self) -> Option<&str> {
        self.live.as_deref().map(release_version)
    }

    /// The release directory a rollback without a version goes to: the newest one below the
    /// live one in the releases log that still exists and holds another version (an earlier
    /// copy of the live version is not a way back) — what the `rollback` command picks.
    pub fn previous(&self) -> Option<String> {
        let names: Vec<String> = self.releases.iter().map(|r| r.name.clone()).collect();
        previous_version(&self.log, self.live.as_deref(), &names)
    }

    /// The newest release directory holding `version`, if any.
    pub fn newest_of(&self, version: &str) -> Option<&str> {
        self.releases
            .iter()
            .find(|r| r.version == version)
            .map(|r| r.name.as_str())
    }
}

impl ReleaseLayout {
    /// Reads the live release, the release directories, the releases log and the lock from
    /// `host`, in one command; a missing layout reads as an empty state.
    pub async fn read_state(&self, host: &dyn RemoteHost) -> Result<ReleaseState, CommandError> {
        let line = build(
            &ShellCommand::new("sh")
                .arg("-c")
                .arg(STATE_SCRIPT)
                .arg("release_state")
                .arg(self.root()),
        )?;
        // Data for this program, not output for a person: not streamed.
        let options = ExecOptions::new().output(std::sync::Arc::new(|_, _: &str| {}));
        let out = host.execute(&line, &options).await?;
        if !out.success() {
            return Err(crate::util::process_failed(
                format!(
                    "cannot read the releases of {} on {}",
                    self.root(),
                    host.name()
                ),
                &out,
            ));
        }
        Ok(ReleaseState::parse(&out.stdout_str()))
    }
}

/// `$1` shared dir, `$2` release dir, then `d:<path>` / `f:<path>` per linked entry.
const LINK_SHARED_SCRIPT: &str = "shared=$1; release=$2; shift 2; for spec in \"$@\"; do kind=${spec%%:*}; p=${spec#*:}; if [ \"$kind\" = d ]; then mkdir -p -- \"$shared/$p\" || exit 1; elif [ ! -e \"$shared/$p\" ]; then printf 'shared file %s does not exist\\n' \"$shared/$p\" >&2; exit 4; fi; rm -rf -- \"$release/$p\" && mkdir -p -- \"$(dirname -- \"$release/$p\")\" && ln -s -- \"$shared/$p\" \"$release/$p\" || exit 1; done";

/// Links shared files and directories into a release: each `shared_dirs` entry
/// `releases/<version>/<dir>` becomes a link to `shared/<dir>` (created when missing), each
/// `shared_files` entry likewise (the shared file must exist). What the release had at those
/// paths is replaced. Paths are relative, without `.` or `..`.
///
/// ```json
/// {"command": "release_link_shared", "remote_host": "fe001", "deploy_to": "/srv/web",
///  "version": "1.2", "shared_dirs": ["log", "tmp/cache"], "shared_files": ["config/app.yml"]}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct ReleaseLinkShared {
    layout: ReleaseLayout,
    version: String,
    dirs: Vec<String>,
    files: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkSharedArgs {
    deploy_to: String,
    version: String,
    #[serde(default)]
    shared_dirs: Vec<String>,
    #[serde(default)]
    shared_files: Vec<String>,
}

impl ReleaseLinkShared {
    fn command_line(&self) -> Result<String, CommandError> {
        let specs = self
            .dirs
            .iter()
            .map(|d| format!("d:{d}"))
            .chain(self.files.iter().map(|f| format!("f:{f}")));
        build(
            &ShellCommand::new("sh")
                .arg("-c")
                .arg(LINK_SHARED_SCRIPT)
                .arg("release_link_shared")
                .arg(self.layout.shared())
                .arg(self.layout.release(&self.version))
                .args(specs),
        )
    }
}

#[async_trait]
impl Command for ReleaseLinkShared {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: LinkSharedArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        c.name("version", &a.version, "version");
        for (i, d) in a.shared_dirs.iter().enumerate() {
            c.relative(&format!("shared_dirs[{i}]"), d);
        }
        for (i, f) in a.shared_files.iter().enumerate() {
            c.relative(&format!("shared_files[{i}]"), f);
        }
        c.finish(ReleaseLinkShared {
            layout: ReleaseLayout::new(a.deploy_to),
            version: a.version,
            dirs: a.shared_dirs,
            files: a.shared_files,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        if self.dirs.is_empty() && self.files.is_empty() {
            return Ok(Outcome::skipped("nothing to link"));
        }
        ctx.run_checked(&self.command_line()?)
            .await
            .map_err(explain(format!(
                "cannot link shared paths into release {} of {} on {}",
                self.version,
                self.layout.root(),
                ctx.host().name()
            )))?;
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// `$1` root, `$2` version, `$3` action, `$4` holder: switches `current` to `releases/$2`
/// atomically (a relative link made under a temporary name, renamed over the old one) and
/// appends to the releases log.
const SWITCH_SCRIPT: &str = "[ -d \"$1/releases/$2\" ] || { printf 'release %s does not exist\\n' \"$1/releases/$2\" >&2; exit 4; }; ln -sfn -- \"releases/$2\" \"$1/current.deployer-tmp\" && mv -fT -- \"$1/current.deployer-tmp\" \"$1/current\" || exit 1; printf '%s\\t%s\\t%s\\t%s\\n' \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" \"$3\" \"$2\" \"$4\" >> \"$1/releases.log\"";

fn switch_line(
    layout: &ReleaseLayout,
    version: &str,
    action: &str,
    holder: &str,
) -> Result<String, CommandError> {
    build(
        &ShellCommand::new("sh")
            .arg("-c")
            .arg(SWITCH_SCRIPT)
            .arg("release_switch")
            .arg(layout.root())
            .arg(version)
            .arg(action)
            .arg(holder),
    )
}

/// The version `current` points to, if it is a link.
async fn current_version(
    ctx: &ExecContext,
    layout: &ReleaseLayout,
) -> Result<Option<String>, CommandError> {
    Ok(read_link(ctx, &layout.current())
        .await?
        .map(|t| crate::util::basename(&t).to_string()))
}

/// Makes a release live: switches `current` to `releases/<version>` atomically (a link made
/// under a temporary name, renamed over the old one) and records the switch in `releases.log`
/// (with `holder`, default `deployer`). `version` is the release's directory name
/// (`1.2`, or `1.2@0d1e2f3a4b5c` for a fresh copy, see [`ReleaseCreate`]). A release that is
/// already live is left alone.
///
/// ```json
/// {"command": "release_activate", "remote_host": "fe001", "deploy_to": "/srv/web",
///  "version": "1.2", "holder": "alice"}
/// ```
///
/// Idempotent. Needs GNU `mv -T` (Linux).
#[derive(Debug)]
pub struct ReleaseActivate {
    layout: ReleaseLayout,
    version: String,
    holder: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateArgs {
    deploy_to: String,
    version: String,
    #[serde(default)]
    holder: Option<String>,
}

#[async_trait]
impl Command for ReleaseActivate {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: ActivateArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        c.name("version", &a.version, "version");
        if let Some(h) = &a.holder {
            check_holder(&mut c, "holder", h);
        }
        c.finish(ReleaseActivate {
            layout: ReleaseLayout::new(a.deploy_to),
            version: a.version,
            holder: a.holder.unwrap_or_else(|| "deployer".to_string()),
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        if current_version(ctx, &self.layout).await?.as_deref() == Some(self.version.as_str()) {
            return Ok(Outcome::skipped(format!(
                "{} is already live",
                self.version
            )));
        }
        ctx.run_checked(&switch_line(
            &self.layout,
            &self.version,
            "activate",
            &self.holder,
        )?)
        .await
        .map_err(explain(format!(
            "cannot switch {} to release {} on {}",
            self.layout.current(),
            &self.version,
            ctx.host().name()
        )))?;
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// Switches `current` back: to `version` (a release directory name) when given, else to the
/// release that was live before the current one (from `releases.log`; releases that were
/// removed are passed over). The switch is logged with the action `rollback`.
///
/// ```json
/// {"command": "rollback", "remote_host": "fe001", "deploy_to": "/srv/web"}
/// {"command": "rollback", "remote_host": "fe001", "deploy_to": "/srv/web", "version": "1.1"}
/// ```
#[derive(Debug)]
pub struct Rollback {
    layout: ReleaseLayout,
    version: Option<String>,
    holder: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackArgs {
    deploy_to: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    holder: Option<String>,
}

/// The version to roll back to. The log is replayed as a stack (an activation pushes, a
/// rollback pops back to its version); the answer is the newest entry below the live one that
/// still exists.
fn previous_version(log: &str, current: Option<&str>, existing: &[String]) -> Option<String> {
    // Copies of the live version are no way back.
    let live_version = current.map(release_version);
    let existing: Vec<&String> = existing
        .iter()
        .filter(|e| Some(release_version(e)) != live_version)
        .collect();
    let mut stack: Vec<&str> = Vec::new();
    for line in log.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let (Some(action), Some(version)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        if *action == "rollback"
            && let Some(p) = stack.iter().rposition(|v| v == version)
        {
            stack.truncate(p + 1);
            continue;
        }
        stack.push(version);
    }
    let end = current
        .and_then(|c| stack.iter().rposition(|v| *v == c))
        .unwrap_or(stack.len());
    stack[..end]
        .iter()
        .rev()
        .find(|v| Some(**v) != current && existing.iter().any(|e| e.as_str() == **v))
        .map(|v| v.to_string())
}

#[async_trait]
impl Command for Rollback {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: RollbackArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        if let Some(v) = &a.version {
            c.name("version", v, "version");
        }
        if let Some(h) = &a.holder {
            check_holder(&mut c, "holder", h);
        }
        c.finish(Rollback {
            layout: ReleaseLayout::new(a.deploy_to),
            version: a.version,
            holder: a.holder.unwrap_or_else(|| "deployer".to_string()),
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let current = current_version(ctx, &self.layout).await?;
        let target = match &self.version {
            Some(v) => v.clone(),
            None => {
                let ls = build(
                    &ShellCommand::new("ls")
                        .arg("-1")
                        .arg("--")
                        .arg(self.layout.releases()),
                )?;
                let out = ctx.run_checked(&ls).await?;
                let existing: Vec<String> = out.stdout_str().lines().map(str::to_string).collect();
                let cat = build(&ShellCommand::new("cat").arg("--").arg(self.layout.log()))?;
                let log = ctx.run(&cat).await?;
                let log = if log.success() {
                    log.stdout_str()
                } else {
                    String::new()
                };
                previous_version(&log, current.as_deref(), &existing).ok_or_else(|| {
                    CommandError::failed(format!(
                        "no earlier release to roll back to in {} on {}",
                        self.layout.log(),
                        ctx.host().name()
                    ))
                })?
            }
        };
        if current.as_deref() == Some(target.as_str()) {
            return Ok(Outcome::skipped(format!("{target} is already live")));
        }
        ctx.log(&format!("rolling back to {target}"));
        ctx.run_checked(&switch_line(
            &self.layout,
            &target,
            "rollback",
            &self.holder,
        )?)
        .await
        .map_err(explain(format!(
            "cannot switch {} to release {} on {}",
            self.layout.current(),
            &target,
            ctx.host().name()
        )))?;
        Ok(Outcome::done().with_data(serde_json::json!({ "version": target })))
    }

    /// With a `version`, running it again switches to the same release: idempotent. Without,
    /// a second run would go one release further back.
    fn idempotent(&self) -> bool {
        self.version.is_some()
    }
}

/// Removes old releases: keeps the newest `keep` versions (by modification time) and the live
/// release, and removes the rest — also earlier copies of a version that a redeploy replaced
/// (`1.2` when `1.2@<suffix>` is newer), so a redeploy never pushes an earlier version, the way
/// back, out. Only directories are releases; hidden ones (`.name`) are left alone. Needs GNU
/// `find` (Linux).
///
/// ```json
/// {"command": "keep_releases", "remote_host": "fe001", "deploy_to": "/srv/web", "keep": 5}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct KeepReleases {
    layout: ReleaseLayout,
    keep: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepArgs {
    deploy_to: String,
    keep: usize,
}

/// The release directories to remove, newest first: `entries` is the listing of `releases/`,
/// `live` the directory `current` points to.
fn doomed_releases(entries: &[Entry], live: Option<&str>, keep: usize) -> Vec<String> {
    let mut dirs: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.kind == 'd' && !e.name.starts_with('.'))
        .collect();
    dirs.sort_by(|a, b| {
        b.mtime
            .partial_cmp(&a.mtime)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| b.name.cmp(&a.name))
    });
    let mut kept: Vec<&str> = Vec::new();
    let mut doomed = Vec::new();
    for d in dirs {
        let version = release_version(&d.name);
        let is_live = Some(d.name.as_str()) == live;
        if kept.contains(&version) || kept.len() >= keep {
            // An earlier copy of a kept version, or beyond the newest `keep`.
            if !is_live {
                doomed.push(d.name.clone());
            }
        } else {
            kept.push(version);
        }
    }
    doomed
}

#[async_trait]
impl Command for KeepReleases {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: KeepArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        if a.keep == 0 {
            c.fail(
                "keep",
                "is 0",
                "at least 1 (the live release is always kept)",
            );
        }
        c.finish(KeepReleases {
            layout: ReleaseLayout::new(a.deploy_to),
            keep: a.keep,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        // The listing is data for this command, not output for a person: not streamed.
        let options = ExecOptions::new().output(std::sync::Arc::new(|_, _: &str| {}));
        let releases = self.layout.releases();
        let out = ctx.run_with(&list_line(&releases)?, options).await?;
        if !out.success() {
            return Ok(Outcome::skipped("no releases directory"));
        }
        let live = current_version(ctx, &self.layout).await?;
        let doomed = doomed_releases(&parse_list(&out.stdout), live.as_deref(), self.keep);
        if doomed.is_empty() {
            return Ok(Outcome::skipped("nothing to clean up"));
        }
        let mut rm = ShellCommand::new("rm").arg("-rf").arg("--");
        for name in &doomed {
            ctx.log(&format!("removing old release {name}"));
            rm = rm.arg(join(&releases, name));
        }
        ctx.run_checked(&build(&rm)?).await?;
        Ok(Outcome::done().with_data(serde_json::json!({ "removed": doomed })))
    }

    fn idempotent(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, mtime: f64) -> Entry {
        Entry {
            mtime,
            kind: 'd',
            name: name.to_string(),
            link: String::new(),
        }
    }

    #[test]
    fn keep_releases_counts_versions_and_drops_earlier_copies() {
        let entries = [
            entry("1.0", 100.0),
            entry("2.0", 200.0),
            entry("2.0@ab12", 300.0),
            entry(".incoming", 400.0),
            Entry {
                kind: 'f',
                ..entry("web-3.0.tar.gz", 500.0)
            },
        ];
        // The earlier copy of 2.0 goes; 1.0, the way back, stays.
        assert_eq!(doomed_releases(&entries, Some("2.0@ab12"), 2), ["2.0"]);
        assert_eq!(
            doomed_releases(&entries, Some("2.0@ab12"), 1),
            ["2.0", "1.0"]
        );
        // The live release stays whatever its age.
        assert_eq!(doomed_releases(&entries, Some("1.0"), 1), ["2.0"]);
    }

    #[test]
    fn a_rollback_goes_to_another_version_than_the_live_one() {
        let log = "t\tactivate\t1.0\ta\nt\tactivate\t2.0\ta\nt\tactivate\t2.0@ab\ta\n";
        let all: Vec<String> = ["1.0", "2.0", "2.0@ab"].map(String::from).to_vec();
        assert_eq!(
            previous_version(log, Some("2.0@ab"), &all).as_deref(),
            Some("1.0")
        );
    }

    #[test]
    fn rollback_picks_the_release_before_the_live_one() {
        let log = "t\tactivate\t1.0\ta\nt\tactivate\t1.1\ta\nt\tactivate\t1.2\ta\n";
        let all: Vec<String> = ["1.0", "1.1", "1.2"].map(String::from).to_vec();
        assert_eq!(
            previous_version(log, Some("1.2"), &all).as_deref(),
            Some("1.1")
        );
        // 1.1 was removed: go further back.
        let some: Vec<String> = ["1.0", "1.2"].map(String::from).to_vec();
        assert_eq!(
            previous_version(log, Some("1.2"), &some).as_deref(),
            Some("1.0")
        );
        // After a rollback to 1.1, the next rollback goes to 1.0.
        let log2 = format!("{log}t\trollback\t1.1\ta\n");
        assert_eq!(
            previous_version(&log2, Some("1.1"), &all).as_deref(),
            Some("1.0")
        );
        assert_eq!(previous_version("", Some("1.2"), &all), None);
    }
}
