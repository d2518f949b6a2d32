//! The standard command set of the deployer crate family, and one call that registers it.
//!
//! Every command implements [`deployer_core::Command`]: it validates all of its arguments in
//! `initialize` (no I/O; errors carry the argument's path and what was expected) and does its
//! work in `execute` through the task's [`RemoteHost`](deployer_core::RemoteHost) — SSH, local
//! or a fake: this crate knows nothing of SSH. Command lines are always built with
//! [`ShellCommand`](deployer_core::ShellCommand), so paths with spaces, quotes, `$()` or `;`
//! reach the host as one unchanged word. Names and arguments follow the original Python
//! deployer, so its task lists load unchanged.
//!
//! | group | commands |
//! |---|---|
//! | files | [`upload`](Upload), [`unpack`](Unpack), [`createdirectory`](CreateDirectory), [`copyfile`](CopyFile), [`movefile`](MoveFile), [`removefile`](RemoveFile), [`writefile`](WriteFile), [`symlink`](Symlink), [`cleanup`](Cleanup) |
//! | processes | [`execute_command`](ExecuteCommand), [`migration_script`](MigrationScript), [`check_service`](CheckService) |
//! | services | [`control_service`](ControlService), [`start_service`](StartService), [`stop_service`](StopService), [`restart_service`](RestartService), [`reload_service`](ReloadService) |
//! | health | [`http_check`](HttpCheck), [`wait_for_port`](WaitForPort) |
//! | traffic | `disable_loadbalancer`, `enable_loadbalancer` ([`LoadBalancerCommand`], backends: [`ShellBackend`], [`HttpBackend`], or your own [`LoadBalancerBackend`]) |
//! | reporting | [`send_graphite`](SendGraphite), [`get_remote_versions`](GetRemoteVersions) (also `getremoteversions`) |
//! | releases | [`release_lock`](ReleaseLock), [`release_unlock`](ReleaseUnlock), [`release_create`](ReleaseCreate), [`release_link_shared`](ReleaseLinkShared), [`release_activate`](ReleaseActivate), [`rollback`](Rollback), [`keep_releases`](KeepReleases); layout: [`ReleaseLayout`], read back as [`ReleaseState`] (with its [`LockInfo`]) |
//!
//! # Conventions
//!
//! * **Where things run.** Every command works through the task's host; a task without
//!   `remote_host` runs on the controller. `http_check` and `wait_for_port` therefore check
//!   from the target host (so `localhost` means the service's own machine); `send_graphite`
//!   is the exception and connects from the controller.
//! * **Durations** are numbers of seconds (`2`, `0.5`). A command that waits (`check_service`,
//!   the service commands, `wait_for_port`) waits `wait_timeout` seconds, else the task's own
//!   `timeout` (which the executor also enforces), else 60.
//! * **sudo** is off unless a task sets `"sudo": true` (the original deployer always used sudo
//!   for service control). Sudo never prompts: a password prompt is an error.
//! * **Atomic replacement** (`writefile`, `symlink`, `release_activate`) goes through a
//!   temporary name beside the destination (`<destination>.deployer-tmp`) that a retry reuses.
//! * **Host tools**: POSIX `sh`, coreutils, GNU `find` (`cleanup`, `keep_releases`) and GNU
//!   `mv -T` (`symlink`, `release_activate`), i.e. a Linux host; `tar`, `unzip`, `curl` and
//!   `bash` only for the commands that use them.
//! * **Secrets**: any argument written `{"secret": "…"}` or `{"secret_env": "VAR"}` is
//!   secret (see [`deployer_core::SecretArg`]); `lb_password` is declared secret, so a plain
//!   string there is too. A command receives the value; `Debug`, saved and stored tasklists,
//!   events, errors and logs show `***`. Secrets reach the host on standard input, never on a
//!   command line (visible to `ps`): load-balancer backends read `lb_password` there, and
//!   `execute_command` reads secret `env` values there into their variables.
//!   `lb_password_env` keeps the password out of the tasklist altogether.
//!
//! # What this crate does not know
//!
//! SSH, SQL and output: a command talks to a [`RemoteHost`](deployer_core::RemoteHost) and
//! returns an outcome; which host implementation serves it, where its events go and how the
//! run is recorded are the host application's choice. With the `catalog` feature it adds
//! `CurlChecker`, the catalog's monitors checked with `curl` on a host.
//!
//! # Example
//!
//! ```
//! use deployer_core::fixture::FakeConnector;
//! use deployer_core::{CommandRegistry, Executor, Plan, Tasklist};
//! use std::sync::Arc;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut commands = CommandRegistry::new();
//! deployer_commands::register_all(&mut commands);
//!
//! let tasklist = Tasklist::from_json_str(r#"{"name": "deploy web", "stages": [
//!   {"name": "Prepare", "concurrency": 1, "tasks": [
//!     {"command": "createdirectory", "remote_host": "fe001", "source": "/srv/web/releases/1.2"},
//!     {"command": "removefile", "remote_host": "fe001", "source": "/tmp/web 1.2; $(reboot)"}
//!   ]}
//! ]}"#).unwrap();
//! let plan = Plan::build(&tasklist, &commands).unwrap(); // every argument validated
//!
//! let connector = Arc::new(FakeConnector::new());
//! assert!(Executor::new(connector.clone()).run(&plan).await.succeeded());
//! assert_eq!(connector.fake("fe001").commands(), [
//!     "mkdir -p -- /srv/web/releases/1.2",
//!     "rm -rf -- '/tmp/web 1.2; $(reboot)'",
//! ]);
//!
//! // Mistakes are reported before anything runs, with the argument's path.
//! let bad = Tasklist::from_json_str(r#"{"stages": [{"name": "s", "concurrency": 1, "tasks": [
//!   {"command": "unpack", "source": "/tmp/web.rar", "destination": "/srv/web"}]}]}"#).unwrap();
//! let err = Plan::build(&bad, &commands).unwrap_err().to_string();
//! assert!(err.contains("source: unknown archive format"), "{err}");
//! # });
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod files;
mod health;
mod lb;
#[cfg(feature = "catalog")]
mod monitor;
mod process;
mod release;
mod report;
mod services;
mod util;

#[cfg(test)]
mod tests;

pub use files::{
    Cleanup, CopyFile, CreateDirectory, MoveFile, RemoveFile, Symlink, Unpack, Upload, WriteFile,
};
pub use health::{HttpCheck, WaitForPort};
pub use lb::{
    HttpBackend, LbAction, LbRequest, LoadBalancerBackend, LoadBalancerCommand, LoadBalancers,
    ShellBackend,
};
#[cfg(feature = "catalog")]
#[cfg_attr(docsrs, doc(cfg(feature = "catalog")))]
pub use monitor::CurlChecker;
pub use process::{CheckService, ExecuteCommand, MigrationScript};
pub use release::{
    KeepReleases, LockInfo, ReleaseActivate, ReleaseCreate, ReleaseDir, ReleaseLayout,
    ReleaseLinkShared, ReleaseLock, ReleaseState, ReleaseUnlock, Rollback, Unlocked,
    release_version,
};
pub use report::{GetRemoteVersions, SendGraphite, parse_versions, remote_versions};
pub use services::{
    Action, ControlService, ReloadService, RestartService, ServiceManager, StartService, State,
    StopService,
};
pub use util::Secret;

use deployer_core::CommandRegistry;

/// The names [`register_all`] registers, in registration order.
pub const COMMAND_NAMES: &[&str] = &[
    "upload",
    "unpack",
    "createdirectory",
    "copyfile",
    "movefile",
    "removefile",
    "writefile",
    "symlink",
    "cleanup",
    "execute_command",
    "migration_script",
    "check_service",
    "control_service",
    "start_service",
    "stop_service",
    "restart_service",
    "reload_service",
    "http_check",
    "wait_for_port",
    "disable_loadbalancer",
    "enable_loadbalancer",
    "send_graphite",
    "get_remote_versions",
    "getremoteversions",
    "release_lock",
    "release_unlock",
    "release_create",
    "release_link_shared",
    "release_activate",
    "rollback",
    "keep_releases",
];

/// A registry with every command of this crate ([`register_all`]), to add your own to.
///
/// ```
/// let commands = deployer_commands::registry();
/// assert!(commands.contains("upload") && commands.contains("execute_command"));
/// ```
pub fn registry() -> CommandRegistry {
    let mut registry = CommandRegistry::new();
    register_all(&mut registry);
    registry
}

/// Registers every command of this crate under its name (see [`COMMAND_NAMES`]).
///
/// The load-balancer commands are registered without a backend, so tasklists that use them
/// are rejected at load time until the host application configures one with
/// [`LoadBalancers::register`].
pub fn register_all(registry: &mut CommandRegistry) {
    registry
        .register::<Upload>("upload")
        .register::<Unpack>("unpack")
        .register::<CreateDirectory>("createdirectory")
        .register::<CopyFile>("copyfile")
        .register::<MoveFile>("movefile")
        .register::<RemoveFile>("removefile")
        .register::<WriteFile>("writefile")
        .register::<Symlink>("symlink")
        .register::<Cleanup>("cleanup")
        .register::<ExecuteCommand>("execute_command")
        .register::<MigrationScript>("migration_script")
        .register::<CheckService>("check_service")
        .register::<ControlService>("control_service")
        .register::<StartService>("start_service")
        .register::<StopService>("stop_service")
        .register::<RestartService>("restart_service")
        .register::<ReloadService>("reload_service")
        .register::<HttpCheck>("http_check")
        .register::<WaitForPort>("wait_for_port");
    LoadBalancers::new().register(registry);
    registry
        .register::<SendGraphite>("send_graphite")
        .register::<GetRemoteVersions>("get_remote_versions")
        .register::<GetRemoteVersions>("getremoteversions")
        .register::<ReleaseLock>("release_lock")
        .register::<ReleaseUnlock>("release_unlock")
        .register::<ReleaseCreate>("release_create")
        .register::<ReleaseLinkShared>("release_link_shared")
        .register::<ReleaseActivate>("release_activate")
        .register::<Rollback>("rollback")
        .register::<KeepReleases>("keep_releases");
}
