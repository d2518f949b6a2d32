//! Process commands: execute_command, migration_script, check_service.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use deployer_core::{
    Command, CommandError, ExecContext, ExecOptions, Outcome, TaskArgs, ValidationErrors,
    async_trait,
};
use serde::Deserialize;

use crate::util::{Check, Secret, opt_secs, poll_until, process_failed, secs, wait_budget};

/// Runs a shell command line on the host; fails when it exits non-zero.
///
/// The line is given in `command_line` (alias `cmd`): a task's `command` key names the
/// command (`execute_command`), so it cannot also hold the line. The line is written by the
/// tasklist's author and runs as written (pipes and redirections work); nothing else is ever
/// pasted into it. `sudo` (default false) runs it through non-interactive sudo.
///
/// `env` (a mapping of variable names to strings, default none) sets environment variables
/// for the line. A value written secret (`{"secret": "…"}` or `{"secret_env": "VAR"}`) never
/// goes on a command line, where `ps` on the host shows it: it is written to the line's
/// standard input and read into its variable (`IFS= read -r NAME`) before the line runs, so it
/// cannot hold a newline. Other values are exported in the command line. `stdin` (a string,
/// possibly secret, default none) is written to the line's standard input after them.
///
/// ```json
/// {"command": "execute_command", "remote_host": "db001",
///  "command_line": "mysql -u app app < /srv/web/current/schema.sql",
///  "env": {"MYSQL_PWD": {"secret_env": "DB_PASSWORD"}, "MYSQL_HOST": "db001"}}
/// ```
///
/// A secret inside `command_line` itself is shown as `***` in output, errors and logs, but it
/// reaches the host's process list: pass secrets with `env` or `stdin`.
pub struct ExecuteCommand {
    line: String,
    line_is_secret: bool,
    sudo: bool,
    env: Vec<(String, String)>,
    secret_env: Vec<(String, Secret)>,
    stdin: Option<Secret>,
}

impl fmt::Debug for ExecuteCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecuteCommand")
            .field(
                "line",
                &if self.line_is_secret {
                    "***"
                } else {
                    self.line.as_str()
                },
            )
            .field("sudo", &self.sudo)
            .field("env", &self.env)
            .field(
                "secret_env",
                &self.secret_env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("stdin", &self.stdin.as_ref().map(|s| s.expose().len()))
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteCommandArgs {
    #[serde(alias = "cmd")]
    command_line: String,
    #[serde(default)]
    sudo: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    stdin: Option<String>,
}

/// Whether `name` can be a shell variable.
fn valid_var(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[async_trait]
impl Command for ExecuteCommand {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: ExecuteCommandArgs = args.parse()?;
        let mut c = Check::new();
        c.command_line("command_line", &a.command_line);
        let mut env = Vec::new();
        let mut secret_env = Vec::new();
        for (name, value) in a.env {
            let path = format!("env.{name}");
            if !valid_var(&name) {
                c.fail(
                    &path,
                    format!("invalid environment variable name {name:?}"),
                    "a name of letters, digits and _, not starting with a digit",
                );
            }
            let pointer = format!("/env/{}", name.replace('~', "~0").replace('/', "~1"));
            if args.is_secret(&pointer) {
                // Never echo the value.
                if value.contains('\n') || value.contains('\0') {
                    c.fail(
                        &path,
                        "the secret holds a newline or a NUL byte, which cannot be read into a variable",
                        "a one-line secret (pass others with stdin)",
                    );
                }
                secret_env.push((name, Secret::new(value)));
            } else {
                c.text(&path, &value);
                env.push((name, value));
            }
        }
        c.finish(ExecuteCommand {
            line_is_secret: args.is_secret("/command_line") || args.is_secret("/cmd"),
            line: a.command_line,
            sudo: a.sudo,
            env,
            secret_env,
            stdin: a.stdin.map(Secret::new),
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let mut line = String::new();
        let mut input = Vec::new();
        for (name, value) in &self.secret_env {
            line.push_str(&format!("IFS= read -r {name} || exit 125\nexport {name}\n"));
            input.extend_from_slice(value.expose().as_bytes());
            input.push(b'\n');
        }
        line.push_str(&self.line);
        if let Some(s) = &self.stdin {
            input.extend_from_slice(s.expose().as_bytes());
        }
        let mut options = ExecOptions::new().sudo(self.sudo);
        for (k, v) in &self.env {
            options = options.env(k, v);
        }
        if self.stdin.is_some() || !self.secret_env.is_empty() {
            options = options.stdin(input);
        }
        let out = ctx.run_with(&line, options).await?;
        if !out.success() {
            // Name the line as written, not the lines that read the secrets.
            let status = match out.exit_status {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            };
            let mut e = process_failed(
                format!(
                    "`{}` {status} on {}",
                    shorten(&self.line),
                    ctx.host().name()
                ),
                &out,
            );
            if let CommandError::Failed {
                message, stderr, ..
            } = &mut e
            {
                *message = ctx.redactor().redact(message).into_owned();
                *stderr = ctx.redactor().redact(stderr).into_owned();
            }
            return Err(e);
        }
        Ok(Outcome::done())
    }
}

/// At most 120 characters of a command line, for messages.
fn shorten(line: &str) -> String {
    if line.chars().count() <= 120 {
        line.to_string()
    } else {
        format!("{}…", line.chars().take(120).collect::<String>())
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
