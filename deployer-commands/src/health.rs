//! Health checks: http_check and wait_for_port. Both run **on the task's host** (through its
//! `RemoteHost`, like every other command), so they see the service the way the host does,
//! `localhost` included; a task without `remote_host` checks from the controller.

use std::time::Duration;

use deployer_core::{
    Command, CommandError, ExecContext, ExecOptions, Outcome, ShellCommand, TaskArgs,
    ValidationErrors, async_trait,
};
use serde::Deserialize;

use crate::util::{Check, build, opt_secs, poll_until, secs, wait_budget};

/// Requests a URL with `curl` on the host until it answers with `expected_status` (default
/// 200) and, when given, a body containing `body_contains`.
///
/// Up to `tries` requests (default 1) are made, `interval` seconds apart (default 2), each
/// limited to `request_timeout` seconds (default 10). `insecure: true` skips TLS certificate
/// checks. Needs `curl` on the host.
///
/// ```json
/// {"command": "http_check", "remote_host": "fe001", "url": "http://localhost:8080/health",
///  "expected_status": 200, "body_contains": "\"status\":\"ok\"", "tries": 30, "interval": 2}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct HttpCheck {
    url: String,
    expected_status: u16,
    body_contains: Option<String>,
    tries: u32,
    interval: Duration,
    request_timeout: Duration,
    insecure: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCheckArgs {
    url: String,
    #[serde(default)]
    expected_status: Option<u16>,
    #[serde(default)]
    body_contains: Option<String>,
    #[serde(default)]
    tries: Option<u32>,
    #[serde(default, deserialize_with = "opt_secs")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "opt_secs")]
    request_timeout: Option<Duration>,
    #[serde(default)]
    insecure: bool,
}

/// What one request showed.
#[derive(Debug, PartialEq)]
enum Answer {
    Ok,
    Wrong(String),
}

impl HttpCheck {
    fn command_line(&self) -> Result<String, CommandError> {
        // --globoff: the URL is requested as written; curl would otherwise expand `[1-9]` and
        // `{a,b}` in it into several requests.
        let mut cmd = ShellCommand::new("curl")
            .arg("-sS")
            .arg("--globoff")
            .arg("--max-time")
            .arg(format!("{}", self.request_timeout.as_secs_f64()))
            .arg("-w")
            .arg("\\n%{http_code}");
        if self.insecure {
            cmd = cmd.arg("-k");
        }
        build(&cmd.arg(&self.url))
    }

    fn judge(&self, exit: Option<i32>, stdout: &str, stderr: &str) -> Answer {
        if exit != Some(0) {
            return Answer::Wrong(format!(
                "request failed ({})",
                deployer_core::tail_lines(stderr, 1)
            ));
        }
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout));
        let status = code.trim().parse::<u16>().unwrap_or(0);
        if status != self.expected_status {
            return Answer::Wrong(format!(
                "status {status}, expected {}",
                self.expected_status
            ));
        }
        if let Some(needle) = &self.body_contains
            && !body.contains(needle.as_str())
        {
            return Answer::Wrong(format!("body does not contain {needle:?}"));
        }
        Answer::Ok
    }
}

#[async_trait]
impl Command for HttpCheck {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: HttpCheckArgs = args.parse()?;
        let mut c = Check::new();
        let scheme_ok = a.url.starts_with("http://") || a.url.starts_with("https://");
        if !scheme_ok
            || a.url.len() <= "https://".len()
            || a.url
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            c.fail(
                "url",
                format!("invalid URL {:?}", a.url),
                "an http:// or https:// URL without spaces",
            );
        }
        if let Some(s) = a.expected_status
            && !(100..=599).contains(&s)
        {
            c.fail(
                "expected_status",
                format!("invalid status {s}"),
                "an HTTP status between 100 and 599",
            );
        }
        if a.tries == Some(0) {
            c.fail("tries", "is 0", "at least 1");
        }
        if let Some(b) = &a.body_contains {
            c.text("body_contains", b);
        }
        if a.request_timeout.is_some_and(|t| t.is_zero()) {
            c.fail("request_timeout", "is 0", "a positive number of seconds");
        }
        c.finish(HttpCheck {
            url: a.url,
            expected_status: a.expected_status.unwrap_or(200),
            body_contains: a.body_contains,
            tries: a.tries.unwrap_or(1),
            interval: a.interval.unwrap_or(Duration::from_secs(2)),
            request_timeout: a.request_timeout.unwrap_or(Duration::from_secs(10)),
            insecure: a.insecure,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let line = self.command_line()?;
        let mut last = String::new();
        for attempt in 1..=self.tries {
            // The body is not streamed as task output: it can be large or binary.
            let quiet: deployer_core::OutputSink = std::sync::Arc::new(|_, _| {});
            let out = ctx
                .run_with(&line, ExecOptions::new().output(quiet))
                .await?;
            match self.judge(out.exit_status, &out.stdout_str(), &out.stderr_str()) {
                Answer::Ok => return Ok(Outcome::done()),
                Answer::Wrong(why) => {
                    ctx.log(&format!("{} try {attempt}/{}: {why}", self.url, self.tries));
                    last = why;
                }
            }
            if attempt < self.tries {
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = ctx.cancelled() => return Err(CommandError::failed("cancelled while waiting")),
                }
            }
        }
        Err(CommandError::failed(format!(
            "http check of {} from {} failed after {} tr{}: {last}",
            self.url,
            ctx.host().name(),
            self.tries,
            if self.tries == 1 { "y" } else { "ies" }
        )))
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// Waits until a TCP port accepts connections (`state: "open"`, the default) or refuses them
/// (`state: "closed"`), as seen from the host: `address` defaults to `127.0.0.1`.
///
/// Waits `wait_timeout` seconds (default: the task's `timeout`, else 60), trying every
/// `poll_interval` seconds (default 1). Needs `bash` and `timeout` on the host.
///
/// ```json
/// {"command": "wait_for_port", "remote_host": "fe001", "port": 8080, "address": "127.0.0.1",
///  "state": "open", "wait_timeout": 60}
/// ```
///
/// Idempotent.
#[derive(Debug)]
pub struct WaitForPort {
    address: String,
    port: u16,
    open: bool,
    wait_timeout: Option<Duration>,
    poll_interval: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum PortState {
    Open,
    Closed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitForPortArgs {
    port: u16,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    state: Option<PortState>,
    #[serde(default, deserialize_with = "opt_secs")]
    wait_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_secs")]
    poll_interval: Option<Duration>,
}

/// `$1` address, `$2` port: exit 0 when a connection succeeds.
const CONNECT_SCRIPT: &str = "exec 3<>\"/dev/tcp/$1/$2\"";

impl WaitForPort {
    /// One connection attempt, limited to `limit` (at most 5 s, at least 1 s).
    fn command_line(&self, limit: Duration) -> Result<String, CommandError> {
        let limit = limit.clamp(Duration::from_secs(1), Duration::from_secs(5));
        build(
            &ShellCommand::new("timeout")
                .arg(limit.as_secs().to_string())
                .arg("bash")
                .arg("-c")
                .arg(CONNECT_SCRIPT)
                .arg("wait_for_port")
                .arg(&self.address)
                .arg(self.port.to_string())
                .raw("2>/dev/null"),
        )
    }
}

#[async_trait]
impl Command for WaitForPort {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: WaitForPortArgs = args.parse()?;
        let mut c = Check::new();
        if a.port == 0 {
            c.fail("port", "is 0", "a port between 1 and 65535");
        }
        if let Some(addr) = &a.address
            && (addr.is_empty()
                || !addr
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | ':' | '_')))
        {
            c.fail(
                "address",
                format!("invalid address {addr:?}"),
                "a host name or IP address",
            );
        }
        c.finish(WaitForPort {
            address: a.address.unwrap_or_else(|| "127.0.0.1".to_string()),
            port: a.port,
            open: !matches!(a.state, Some(PortState::Closed)),
            wait_timeout: a.wait_timeout,
            poll_interval: a.poll_interval.unwrap_or(Duration::from_secs(1)),
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let wait = wait_budget(ctx, self.wait_timeout);
        let line = self.command_line(wait)?;
        let ok = poll_until(ctx, wait, self.poll_interval, || {
            let line = &line;
            async move { Ok(ctx.run(line).await?.success() == self.open) }
        })
        .await?;
        if ok {
            Ok(Outcome::done())
        } else {
            Err(CommandError::failed(format!(
                "port {}:{} on {} was not {} within {}",
                self.address,
                self.port,
                ctx.host().name(),
                if self.open { "open" } else { "closed" },
                secs(wait)
            )))
        }
    }

    fn idempotent(&self) -> bool {
        true
    }
}
