//! Process commands: execute_command, migration_script, check_service.

use std::time::Duration;

use deployer_core::{
    Command, CommandError, ExecContext, ExecOptions, Outcome, TaskArgs, ValidationErrors,
    async_trait,
};
use serde::Deserialize;

use crate::util::{Check, opt_secs, poll_until, secs, wait_budget};

/// Runs a shell command line on the host; fails when it exits non-zero.
///
/// The line is given in `command_line` (alias `cmd`): a task's `command` key names the
/// command (`execute_command`), so it cannot also hold the line. The line is written by the
/// tasklist's author and runs as written (pipes and redirections work); nothing else is ever
/// pasted into it. `sudo` (default false) runs it through non-interactive sudo.
///
/// ```json
/// {"command": "execute_command", "remote_host": "fe001",
///  "command_line": "/srv/web/current/bin/warmup --quiet", "sudo": false}
/// ```
#[derive(Debug)]
pub struct ExecuteCommand {
    line: String,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteCommandArgs {
    #[serde(alias = "cmd")]
    command_line: String,
    #[serde(default)]
    sudo: bool,
}

#[async_trait]
impl Command for ExecuteCommand {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: ExecuteCommandArgs = args.parse()?;
        let mut c = Check::new();
        c.command_line("command_line", &a.command_line);
        c.finish(ExecuteCommand {
            line: a.command_line,
            sudo: a.sudo,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        ctx.run_checked_with(&self.line, ExecOptions::new().sudo(self.sudo))
            .await?;
        Ok(Outcome::done())
    }
}

/// Runs a migration script (a shell command line), but only when `if_exists` (a path on the
/// host) exists, when given; otherwise the task is skipped.
///
/// ```json
/// {"command": "migration_script", "remote_host": "db001",
///  "source": "/srv/web/releases/1.2/bin/migrate", "if_exists": "/srv/web/releases/1.2/bin/migrate"}
/// ```
#[derive(Debug)]
pub struct MigrationScript {
    source: String,
    if_exists: Option<String>,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationScriptArgs {
    source: String,
    #[serde(default)]
    if_exists: Option<String>,
    #[serde(default)]
    sudo: bool,
}

#[async_trait]
impl Command for MigrationScript {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: MigrationScriptArgs = args.parse()?;
        let mut c = Check::new();
        c.command_line("source", &a.source);
        if let Some(p) = &a.if_exists {
            c.path("if_exists", p);
        }
        c.finish(MigrationScript {
            source: a.source,
            if_exists: a.if_exists,
            sudo: a.sudo,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        if let Some(path) = &self.if_exists
            && !ctx.host().file_exists(path).await?
        {
            return Ok(Outcome::skipped(format!("{path} does not exist")));
        }
        ctx.run_checked_with(&self.source, ExecOptions::new().sudo(self.sudo))
            .await?;
        Ok(Outcome::done())
    }
}

/// Polls a status command until it exits with `want_state` (default 0), within `wait_timeout`
/// seconds (default: the task's `timeout`, else 60), every `poll_interval` seconds (default 1).
///
/// ```json
/// {"command": "check_service", "remote_host": "fe001",
///  "check_command": "curl -sf http://localhost:8080/health", "want_state": 0,
///  "wait_timeout": 120, "poll_interval": 2}
/// ```
///
/// `notify_interval` (seconds, default 30) logs a "still waiting" line that often. Idempotent.
#[derive(Debug)]
pub struct CheckService {
    pub(crate) check_command: String,
    pub(crate) want_state: i32,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) poll_interval: Duration,
    pub(crate) notify_interval: Duration,
    pub(crate) sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckServiceArgs {
    check_command: String,
    #[serde(default)]
    want_state: i32,
    #[serde(default, deserialize_with = "opt_secs")]
    wait_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_secs")]
    poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "opt_secs")]
    notify_interval: Option<Duration>,
    #[serde(default)]
    sudo: bool,
}

impl CheckService {
    pub(crate) async fn run(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let wait = wait_budget(ctx, self.wait_timeout);
        // (exit status, stdout) of the last probe, and when "still waiting" was last logged.
        let state =
            std::sync::Mutex::new((None::<(Option<i32>, String)>, tokio::time::Instant::now()));
        let ok = poll_until(ctx, wait, self.poll_interval, || async {
            let out = ctx
                .run_with(&self.check_command, ExecOptions::new().sudo(self.sudo))
                .await?;
            let hit = out.exit_status == Some(self.want_state);
            let now = tokio::time::Instant::now();
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.0 = Some((out.exit_status, out.stdout_str()));
            if !hit && !self.notify_interval.is_zero() && now - st.1 >= self.notify_interval {
                ctx.log(&format!(
                    "waiting for `{}` to exit with {}",
                    self.check_command, self.want_state
                ));
                st.1 = now;
            }
            Ok(hit)
        })
        .await?;
        let last = state.into_inner().unwrap_or_else(|e| e.into_inner()).0;
        if ok {
            return Ok(Outcome::done());
        }
        let (status, stdout) = last.unwrap_or((None, String::new()));
        Err(CommandError::Failed {
            message: format!(
                "service is not in the wanted state: `{}` did not exit with {} within {} (last exit status: {})",
                self.check_command,
                self.want_state,
                secs(wait),
                status.map_or_else(|| "killed by a signal".to_string(), |s| s.to_string())
            ),
            exit_status: status,
            stderr: deployer_core::tail_lines(&stdout, 10),
        })
    }
}

#[async_trait]
impl Command for CheckService {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: CheckServiceArgs = args.parse()?;
        let mut c = Check::new();
        c.command_line("check_command", &a.check_command);
        c.finish(CheckService {
            check_command: a.check_command,
            want_state: a.want_state,
            wait_timeout: a.wait_timeout,
            poll_interval: a.poll_interval.unwrap_or(Duration::from_secs(1)),
            notify_interval: a.notify_interval.unwrap_or(Duration::from_secs(30)),
            sudo: a.sudo,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        self.run(ctx).await
    }

    fn idempotent(&self) -> bool {
        true
    }
}
