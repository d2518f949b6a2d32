//! Releases: the directory layout deploy users expect, and the commands that maintain it.
//!
//! ```text
//! <deploy_to>/
//!   releases/<version>/     one directory per release
//!   shared/                 files and directories kept across releases, linked into each
//!   current -> releases/<version>   switched atomically
//!   releases.log            one line per switch: time, action, version, holder
//!   .deploy.lock/holder     present while a deploy runs; names who holds it
//! ```
//!
//! A deploy is a chain of tasks: `release_lock`, `release_create`, `upload` + `unpack` into
//! the release directory, `release_link_shared`, `release_activate`, `keep_releases`,
//! `release_unlock`. `rollback` switches `current` back.

use deployer_core::{
    Command, CommandError, ExecContext, Outcome, ShellCommand, TaskArgs, ValidationErrors,
    async_trait,
};
use serde::Deserialize;

use crate::files::{Cleanup, read_link};
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

fn check_holder(c: &mut Check, holder: &str) {
    if holder.is_empty() || holder.chars().any(|ch| ch.is_control()) {
        c.fail(
            "holder",
            format!("invalid holder {holder:?}"),
            "a non-empty name without control characters, e.g. \"alice@ci-42\"",
        );
    }
}

const LOCK_HELD: i32 = 3;

/// `$1` root, `$2` lock dir, `$3` holder. Exit 0 when we hold the lock, 3 (printing the holder)
/// when someone else does.
const LOCK_SCRIPT: &str = "mkdir -p -- \"$1\" || exit 1; if mkdir -- \"$2\" 2>/dev/null; then printf '%s\\n' \"$3\" > \"$2/holder\" || exit 1; exit 0; fi; h=$(cat -- \"$2/holder\" 2>/dev/null); if [ \"$h\" = \"$3\" ]; then exit 0; fi; printf '%s\\n' \"${h:-unknown (the lock is being taken)}\"; exit 3";

/// `$1` lock dir, `$2` holder, `$3` force (1/0). Exit 3 (printing the holder) when someone
/// else holds it.
const UNLOCK_SCRIPT: &str = "[ -e \"$1\" ] || exit 0; h=$(cat -- \"$1/holder\" 2>/dev/null); if [ \"$h\" = \"$2\" ] || [ \"$3\" = 1 ]; then rm -rf -- \"$1\"; exit $?; fi; printf '%s\\n' \"$h\"; exit 3";

/// Takes the deploy lock of `deploy_to`, refusing when another deploy holds it; the error
/// names the holder. Taking a lock one already holds (same `holder`) succeeds, so a retried
/// task is fine.
///
/// ```json
/// {"command": "release_lock", "remote_host": "fe001", "deploy_to": "/srv/web",
///  "holder": "alice@deploy-host run 42"}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct ReleaseLock {
    layout: ReleaseLayout,
    holder: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockArgs {
    deploy_to: String,
    holder: String,
    #[serde(default)]
    force: bool,
}

impl ReleaseLock {
    fn command_line(&self) -> Result<String, CommandError> {
        build(
            &ShellCommand::new("sh")
                .arg("-c")
                .arg(LOCK_SCRIPT)
                .arg("release_lock")
                .arg(self.layout.root())
                .arg(self.layout.lock())
                .arg(&self.holder),
        )
    }
}

#[async_trait]
impl Command for ReleaseLock {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: LockArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        check_holder(&mut c, &a.holder);
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
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let out = ctx.run(&self.command_line()?).await?;
        match out.exit_status {
            Some(0) => Ok(Outcome::done()),
            Some(LOCK_HELD) => Err(CommandError::Failed {
                message: format!(
                    "{} on {} is locked by {}: another deploy is running (if it is not, remove {})",
                    self.layout.root(),
                    ctx.host().name(),
                    out.stdout_str().trim(),
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

/// Releases the deploy lock of `deploy_to` if `holder` holds it (or anyone does, with
/// `force: true`). A missing lock is fine.
///
/// ```json
/// {"command": "release_unlock", "remote_host": "fe001", "deploy_to": "/srv/web",
///  "holder": "alice@deploy-host run 42", "force": false}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct ReleaseUnlock {
    layout: ReleaseLayout,
    holder: String,
    force: bool,
}

impl ReleaseUnlock {
    fn command_line(&self) -> Result<String, CommandError> {
        build(
            &ShellCommand::new("sh")
                .arg("-c")
                .arg(UNLOCK_SCRIPT)
                .arg("release_unlock")
                .arg(self.layout.lock())
                .arg(&self.holder)
                .arg(if self.force { "1" } else { "0" }),
        )
    }
}

#[async_trait]
impl Command for ReleaseUnlock {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: LockArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        check_holder(&mut c, &a.holder);
        c.finish(ReleaseUnlock {
            layout: ReleaseLayout::new(a.deploy_to),
            holder: a.holder,
            force: a.force,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let out = ctx.run(&self.command_line()?).await?;
        match out.exit_status {
            Some(0) => Ok(Outcome::done()),
            Some(LOCK_HELD) => Err(CommandError::Failed {
                message: format!(
                    "the deploy lock of {} on {} is held by {}, not by {} (use force to remove it)",
                    self.layout.root(),
                    ctx.host().name(),
                    out.stdout_str().trim(),
                    self.holder
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
struct VersionArgs {
    deploy_to: String,
    version: String,
}

/// Creates `releases/<version>/` and `shared/` under `deploy_to` (with parents).
///
/// ```json
/// {"command": "release_create", "remote_host": "fe001", "deploy_to": "/srv/web", "version": "1.2"}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct ReleaseCreate {
    layout: ReleaseLayout,
    version: String,
}

#[async_trait]
impl Command for ReleaseCreate {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: VersionArgs = args.parse()?;
        let mut c = Check::new();
        check_root(&mut c, &a.deploy_to);
        c.name("version", &a.version, "version");
        c.finish(ReleaseCreate {
            layout: ReleaseLayout::new(a.deploy_to),
            version: a.version,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let line = build(
            &ShellCommand::new("mkdir")
                .arg("-p")
                .arg("--")
                .arg(self.layout.release(&self.version))
                .arg(self.layout.shared()),
        )?;
        ctx.run_checked(&line).await?;
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
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

/// Makes a release live: switches `current` to `releases/<version>` atomically and records
/// the switch in `releases.log` (with `holder`, default `deployer`). A release that is
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
            check_holder(&mut c, h);
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

/// Switches `current` back: to `version` when given, else to the release that was live before
/// the current one (from `releases.log`; releases that were removed are passed over). The
/// switch is logged with the action `rollback`.
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
        .find(|v| Some(**v) != current && existing.iter().any(|e| e == *v))
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
            check_holder(&mut c, h);
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
}

/// Removes old releases, keeping the newest `keep` (by modification time) and never the live
/// one. Needs GNU `find` (Linux).
///
/// ```json
/// {"command": "keep_releases", "remote_host": "fe001", "deploy_to": "/srv/web", "keep": 5}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct KeepReleases {
    cleanup: Cleanup,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepArgs {
    deploy_to: String,
    keep: usize,
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
        let layout = ReleaseLayout::new(a.deploy_to);
        c.finish(KeepReleases {
            cleanup: Cleanup {
                path: layout.releases(),
                filespec: "*".to_string(),
                keep: a.keep,
                exclude: None,
                current: Some(layout.current()),
                sudo: false,
            },
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        self.cleanup.run(ctx).await
    }

    fn idempotent(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
