//! Reporting: send_graphite and get_remote_versions.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deployer_core::{
    Command, CommandError, ExecContext, ExecOptions, Outcome, RemoteHost, ShellCommand, TaskArgs,
    ValidationErrors, async_trait,
};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::util::{Check, basename, build, opt_secs};

/// Sends one metric to a Graphite/carbon relay with the plaintext protocol
/// (`<metric_name> <metric_value> <unix time>\n` over TCP, port 2003 by default).
///
/// The connection is made **from the controller** (the process running the deployer), not
/// from the task's host. With `continue_on_fail` (default true, as in the original deployer)
/// an unreachable relay only skips the task.
///
/// ```json
/// {"command": "send_graphite", "carbon_host": "graphite.example.com", "carbon_port": 2003,
///  "metric_name": "deploys.web.production", "metric_value": 1, "continue_on_fail": true}
/// ```
#[derive(Debug)]
pub struct SendGraphite {
    carbon_host: String,
    carbon_port: u16,
    metric_name: String,
    metric_value: String,
    continue_on_fail: bool,
    connect_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendGraphiteArgs {
    carbon_host: String,
    #[serde(default)]
    carbon_port: Option<u16>,
    metric_name: String,
    #[serde(default)]
    metric_value: Option<serde_json::Value>,
    #[serde(default)]
    continue_on_fail: Option<bool>,
    #[serde(default, deserialize_with = "opt_secs")]
    connect_timeout: Option<Duration>,
}

impl SendGraphite {
    /// The plaintext line sent for the metric at time `now` (seconds since the epoch).
    fn line(&self, now: u64) -> String {
        format!("{} {} {now}\n", self.metric_name, self.metric_value)
    }

    async fn send(&self) -> Result<(), String> {
        let addr = (self.carbon_host.as_str(), self.carbon_port);
        let mut stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connecting timed out after {:?}", self.connect_timeout))?
                .map_err(|e| format!("cannot connect: {e}"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        stream
            .write_all(self.line(now).as_bytes())
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        stream
            .shutdown()
            .await
            .map_err(|e| format!("cannot close: {e}"))
    }
}

#[async_trait]
impl Command for SendGraphite {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: SendGraphiteArgs = args.parse()?;
        let mut c = Check::new();
        c.host("carbon_host", &a.carbon_host);
        if a.carbon_port == Some(0) {
            c.fail("carbon_port", "is 0", "a port between 1 and 65535");
        }
        if a.metric_name.is_empty()
            || a.metric_name
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            c.fail(
                "metric_name",
                format!("invalid metric name {:?}", a.metric_name),
                "a dotted name without spaces, e.g. \"deploys.web\"",
            );
        }
        let value = match &a.metric_value {
            None => "1.0".to_string(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(s))
                if s.trim().parse::<f64>().is_ok_and(f64::is_finite) =>
            {
                s.trim().to_string()
            }
            Some(other) => {
                c.fail(
                    "metric_value",
                    format!("invalid metric value {other}"),
                    "a number",
                );
                String::new()
            }
        };
        c.finish(SendGraphite {
            carbon_host: a.carbon_host,
            carbon_port: a.carbon_port.unwrap_or(2003),
            metric_name: a.metric_name,
            metric_value: value,
            continue_on_fail: a.continue_on_fail.unwrap_or(true),
            connect_timeout: a.connect_timeout.unwrap_or(Duration::from_secs(5)),
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        match self.send().await {
            Ok(()) => {
                ctx.log(&format!("sent {} to graphite", self.metric_name));
                Ok(Outcome::done())
            }
            Err(why) => {
                let msg = format!("graphite {}:{}: {why}", self.carbon_host, self.carbon_port);
                if self.continue_on_fail {
                    Ok(Outcome::skipped(msg))
                } else {
                    Err(CommandError::failed(msg))
                }
            }
        }
    }
}

/// `$1` install location: prints `link \t target` for each link `$1/*` and `$1/*/current`.
const VERSIONS_SCRIPT: &str = "for l in \"$1\"/* \"$1\"/*/current; do if [ -L \"$l\" ]; then printf '%s\\t%s\\n' \"$l\" \"$(readlink -- \"$l\")\"; fi; done; exit 0";

/// The command line that lists the version links under `install_location`.
fn versions_line(install_location: &str) -> Result<String, CommandError> {
    build(
        &ShellCommand::new("sh")
            .arg("-c")
            .arg(VERSIONS_SCRIPT)
            .arg("get_remote_versions")
            .arg(install_location.trim_end_matches('/')),
    )
}

/// Reads which version of each service is live from the links in the listing: a link
/// `<loc>/<service>/current` → `…/<version>` (the release layout), or a link `<loc>/<service>`
/// → `…/<service>_<version>` (the original deployer's layout).
pub fn parse_versions(install_location: &str, listing: &str) -> BTreeMap<String, String> {
    let base = format!("{}/", install_location.trim_end_matches('/'));
    let mut versions = BTreeMap::new();
    for line in listing.lines() {
        let Some((link, target)) = line.split_once('\t') else {
            continue;
        };
        let Some(rel) = link.strip_prefix(&base) else {
            continue;
        };
        let target_name = basename(target);
        if let Some(service) = rel.strip_suffix("/current") {
            if !service.is_empty() && !target_name.is_empty() {
                versions.insert(service.to_string(), target_name.to_string());
            }
        } else if let Some((service, version)) = target_name.split_once('_')
            && !service.is_empty()
            && !version.is_empty()
        {
            versions
                .entry(service.to_string())
                .or_insert_with(|| version.to_string());
        }
    }
    versions
}

/// Which version of each service is live on `host`, read from the links under
/// `install_location` (see [`GetRemoteVersions`]). For generators that query hosts directly.
pub async fn remote_versions(
    host: &dyn RemoteHost,
    install_location: &str,
) -> Result<BTreeMap<String, String>, CommandError> {
    let out = host
        .execute(&versions_line(install_location)?, &ExecOptions::new())
        .await?;
    if !out.success() {
        return Err(crate::util::process_failed(
            format!(
                "cannot list versions under {install_location} on {}",
                host.name()
            ),
            &out,
        ));
    }
    Ok(parse_versions(install_location, &out.stdout_str()))
}

/// Finds which version of each service is live on the host, from the links under
/// `install_location`: `<service>/current` → `releases/<version>` (the release layout of this
/// crate), or `<service>` → `<service>_<version>` (the original deployer's layout). `services`
/// (optional) limits the answer to those names.
///
/// The result is the task's outcome data: `{"host": "fe001", "versions": {"web": "1.2"}}`,
/// kept in the run report for generators; [`remote_versions`] does the same query from code.
///
/// ```json
/// {"command": "get_remote_versions", "remote_host": "fe001", "install_location": "/srv",
///  "services": ["web", "api"]}
/// ```
///
/// Idempotent (it only reads).
#[derive(Debug)]
pub struct GetRemoteVersions {
    install_location: String,
    services: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetRemoteVersionsArgs {
    install_location: String,
    #[serde(default)]
    services: Option<Vec<String>>,
}

#[async_trait]
impl Command for GetRemoteVersions {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: GetRemoteVersionsArgs = args.parse()?;
        let mut c = Check::new();
        c.path("install_location", &a.install_location);
        for (i, s) in a.services.iter().flatten().enumerate() {
            c.name(&format!("services[{i}]"), s, "service name");
        }
        c.finish(GetRemoteVersions {
            install_location: a.install_location,
            services: a.services,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let mut versions = remote_versions(ctx.host().as_ref(), &self.install_location).await?;
        if let Some(wanted) = &self.services {
            versions.retain(|k, _| wanted.contains(k));
        }
        for (service, version) in &versions {
            ctx.log(&format!("{service}: {version}"));
        }
        Ok(Outcome::done().with_data(serde_json::json!({
            "host": ctx.host().name(),
            "versions": versions,
        })))
    }

    fn idempotent(&self) -> bool {
        true
    }
}
