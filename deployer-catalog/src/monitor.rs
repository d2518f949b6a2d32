//! Monitors: health checks of a deployment, their log, their state, and a runner.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::data::CatalogData;
use super::error::CatalogError;
use super::hierarchy::{DEFAULT_MONITOR_LOG_SECONDS, DeploymentRef};
use super::lifecycle::unix_micros;
use super::slug::Slug;
use super::store::CatalogStore;

/// A health check attached to a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    /// Unique in the deployment.
    pub slug: Slug,
    /// What is checked.
    pub check: MonitorCheck,
    /// Seconds between checks (default 60).
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
    /// When results count as warning or error.
    #[serde(default)]
    pub thresholds: Thresholds,
}

fn default_interval() -> u64 {
    60
}

impl Monitor {
    /// An HTTP GET of `url` expecting status 200, every minute, default thresholds.
    pub fn http(slug: Slug, url: impl Into<String>) -> Monitor {
        Monitor {
            slug,
            check: MonitorCheck::HttpRequest(HttpCheck::get(url)),
            interval_seconds: default_interval(),
            thresholds: Thresholds::default(),
        }
    }

    /// Whether the thresholds make sense; the message says what does not.
    pub fn check_thresholds(&self) -> Result<(), String> {
        let t = &self.thresholds;
        if self.interval_seconds == 0 {
            return Err("interval_seconds is 0 (expected at least 1)".to_string());
        }
        if t.warning_after_failures == 0 || t.error_after_failures == 0 {
            return Err("failure thresholds must be at least 1".to_string());
        }
        if t.warning_after_failures > t.error_after_failures {
            return Err(format!(
                "warning_after_failures ({}) is above error_after_failures ({})",
                t.warning_after_failures, t.error_after_failures
            ));
        }
        if let (Some(w), Some(e)) = (t.warning_ms, t.error_ms)
            && w > e
        {
            return Err(format!("warning_ms ({w}) is above error_ms ({e})"));
        }
        let MonitorCheck::HttpRequest(h) = &self.check;
        if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
            return Err(format!(
                "url \"{}\" is not an http:// or https:// URL",
                h.url
            ));
        }
        if h.expect_status.is_empty() {
            return Err("expect_status is empty".to_string());
        }
        Ok(())
    }
}

/// What a monitor checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MonitorCheck {
    /// An HTTP request.
    HttpRequest(HttpCheck),
}

/// An HTTP request and what a healthy answer looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// The URL.
    pub url: String,
    /// The method (default `GET`).
    #[serde(default = "default_method")]
    pub method: String,
    /// Statuses that count as healthy (default `[200]`).
    #[serde(default = "default_status")]
    pub expect_status: Vec<u16>,
    /// Text the body must contain, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Seconds before the request counts as failed (default 10).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_method() -> String {
    "GET".to_string()
}
fn default_status() -> Vec<u16> {
    vec![200]
}
fn default_timeout() -> u64 {
    10
}

impl HttpCheck {
    /// A GET of `url` expecting 200 within 10 s.
    pub fn get(url: impl Into<String>) -> HttpCheck {
        HttpCheck {
            url: url.into(),
            method: default_method(),
            expect_status: default_status(),
            body_contains: None,
            timeout_seconds: default_timeout(),
        }
    }
}

/// When results count as warning or error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// A successful check slower than this is a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_ms: Option<u64>,
    /// A successful check slower than this is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ms: Option<u64>,
    /// This many failed checks in a row are a warning (default 1).
    #[serde(default = "one")]
    pub warning_after_failures: u32,
    /// This many failed checks in a row are an error (default 3).
    #[serde(default = "three")]
    pub error_after_failures: u32,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning_ms: None,
            error_ms: None,
            warning_after_failures: 1,
            error_after_failures: 3,
        }
    }
}

/// A monitor's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorState {
    /// Healthy.
    Ok,
    /// Degraded: failing once, or slow.
    Warning,
    /// Failing repeatedly, or very slow.
    Error,
    /// No recent result.
    Unknown,
}

/// Why a check did not pass: the target's fault, or the check's.
///
/// ```
/// use deployer_catalog::CheckFailure;
///
/// assert_eq!(CheckFailure::Down.as_str(), "down");
/// assert_eq!("broken".parse::<CheckFailure>(), Ok(CheckFailure::Broken));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckFailure {
    /// The check ran and the target failed it: unreachable (its name does not resolve from
    /// where the check runs, the connection is refused or times out, TLS fails) or it answered
    /// wrong (an unexpected status, a body without the expected text).
    Down,
    /// The check could not be made: the checker itself is broken (no `curl` on the probing
    /// host, the probing host unreachable, a URL or option the client rejects). Nothing is
    /// known of the target.
    Broken,
}

impl CheckFailure {
    /// The spelling in logs and stores: `down`, `broken`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckFailure::Down => "down",
            CheckFailure::Broken => "broken",
        }
    }
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckFailure::Down => "target down",
            CheckFailure::Broken => "check broken",
        })
    }
}

impl std::str::FromStr for CheckFailure {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "down" => Ok(CheckFailure::Down),
            "broken" => Ok(CheckFailure::Broken),
            other => Err(format!(
                "\"{}\" is not a check failure (expected down or broken)",
                deployer_core::one_line(other)
            )),
        }
    }
}

/// One check result, as kept in the monitor log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorLogEntry {
    /// The monitor ([`monitor_key`]).
    pub monitor: String,
    /// When the check ran.
    #[serde(with = "unix_micros")]
    pub ts: SystemTime,
    /// Whether the check passed.
    pub ok: bool,
    /// The HTTP status, if one came back.
    pub status: Option<u16>,
    /// How long it took.
    pub duration: Duration,
    /// What went wrong, or `""`.
    pub message: String,
    /// Why the check did not pass (`None` when it passed; a failure recorded before this was
    /// kept counts as [`CheckFailure::Down`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<CheckFailure>,
}

/// The key a monitor's log is kept under: `project/deployment/monitor`.
pub fn monitor_key(deployment: &DeploymentRef, monitor: &Slug) -> String {
    format!("{deployment}/{monitor}")
}

/// The state results give, `recent` newest first: unknown without results or when the newest
/// is older than three intervals at `now`; error or warning after that many failures in a row;
/// otherwise from the newest result's duration against `error_ms` / `warning_ms`.
pub fn monitor_state(
    monitor: &Monitor,
    recent: &[MonitorLogEntry],
    now: SystemTime,
) -> MonitorState {
    let Some(newest) = recent.first() else {
        return MonitorState::Unknown;
    };
    let stale_after = Duration::from_secs(monitor.interval_seconds.saturating_mul(3));
    if now.duration_since(newest.ts).unwrap_or_default() > stale_after {
        return MonitorState::Unknown;
    }
    let t = &monitor.thresholds;
    let failures = recent.iter().take_while(|e| !e.ok).count();
    let failures = u32::try_from(failures).unwrap_or(u32::MAX);
    if failures >= t.error_after_failures {
        return MonitorState::Error;
    }
    if failures >= t.warning_after_failures {
        return MonitorState::Warning;
    }
    if failures > 0 {
        return MonitorState::Ok;
    }
    let ms = u64::try_from(newest.duration.as_millis()).unwrap_or(u64::MAX);
    if t.error_ms.is_some_and(|e| ms > e) {
        MonitorState::Error
    } else if t.warning_ms.is_some_and(|w| ms > w) {
        MonitorState::Warning
    } else {
        MonitorState::Ok
    }
}

/// The state of one monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorStatus {
    /// The deployment.
    pub deployment: DeploymentRef,
    /// The monitor.
    pub monitor: Slug,
    /// Its state.
    pub state: MonitorState,
    /// The newest result.
    pub last: Option<MonitorLogEntry>,
}

/// What an HTTP check saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    /// The status, if a response came.
    pub status: Option<u16>,
    /// The body (possibly cut short).
    pub body: String,
    /// Why no response came, if none did.
    pub error: Option<String>,
    /// With `error`: the check could not be made at all (the checker's fault, not the
    /// target's; see [`CheckFailure::Broken`]).
    pub broken: bool,
}

/// Performs HTTP checks for the [`MonitorRunner`]: a host application plugs in its HTTP client,
/// or uses `deployer_commands::CurlChecker` (`curl` on a host; feature `catalog` of
/// `deployer-commands`).
#[async_trait]
pub trait HttpChecker: Send + Sync {
    /// Performs `check` (within its timeout) and reports what came back; a failure to connect
    /// is an `error`, not a panic, and a check that cannot be made at all is also `broken`.
    async fn check(&self, check: &HttpCheck) -> HttpResponse;
}

/// Runs the monitors that are due and keeps their logs: a host application calls
/// [`run_due`](Self::run_due) on its own schedule (a timer, a cron tick).
///
/// For each monitor whose newest result is at least `interval_seconds` old, it performs the
/// check (up to [`concurrency`](Self::concurrency) at once), appends the result to the
/// monitor's log, deletes entries older than the deployment scope's
/// `monitor_log_delete_after_seconds` (7 days without a scope), and computes the state.
pub struct MonitorRunner {
    store: Arc<dyn CatalogStore>,
    checker: Arc<dyn HttpChecker>,
    concurrency: usize,
}

/// One monitor of one tick.
struct Planned<'a> {
    deployment: DeploymentRef,
    monitor: &'a Monitor,
    key: String,
    keep: u64,
    window: usize,
    recent: Vec<MonitorLogEntry>,
    due: bool,
}

impl MonitorRunner {
    /// A runner over the catalog in `store`, checking through `checker`.
    pub fn new(store: Arc<dyn CatalogStore>, checker: Arc<dyn HttpChecker>) -> MonitorRunner {
        MonitorRunner {
            store,
            checker,
            concurrency: 8,
        }
    }

    /// How many checks run at once (default 8, at least 1).
    pub fn concurrency(mut self, concurrency: usize) -> MonitorRunner {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Runs every due monitor at `now` and returns the status of every monitor in the catalog,
    /// in catalog order.
    pub async fn run_due(&self, now: SystemTime) -> Result<Vec<MonitorStatus>, CatalogError> {
        use futures::StreamExt as _;

        let data = self.store.load_catalog().await?.data;
        let mut planned = Vec::new();
        for r in data.deployment_refs() {
            let (_, group, deployment) = data.deployment(&r)?;
            let settings = CatalogData::effective_settings(group, deployment);
            let keep = CatalogData::scope_config(group, &settings)
                .map_or(DEFAULT_MONITOR_LOG_SECONDS, |s| {
                    s.monitor_log_delete_after_seconds
                });
            for monitor in &deployment.monitors {
                let key = monitor_key(&r, &monitor.slug);
                let window = monitor.thresholds.error_after_failures.max(1) as usize;
                let recent = self.store.monitor_log(&key, window).await?;
                let due = recent.first().is_none_or(|e| {
                    now.duration_since(e.ts).unwrap_or_default()
                        >= Duration::from_secs(monitor.interval_seconds)
                });
                planned.push(Planned {
                    deployment: r.clone(),
                    monitor,
                    key,
                    keep,
                    window,
                    recent,
                    due,
                });
            }
        }
        let results: Vec<(usize, MonitorLogEntry)> = futures::stream::iter(
            planned
                .iter()
                .enumerate()
                .filter(|(_, p)| p.due)
                .map(|(i, p)| async move { (i, self.run_check(&p.key, p.monitor, now).await) }),
        )
        .buffer_unordered(self.concurrency)
        .collect()
        .await;
        for (i, entry) in results {
            let p = &mut planned[i];
            self.store.append_monitor_log(&entry).await?;
            let cutoff = now
                .checked_sub(Duration::from_secs(p.keep))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            self.store.prune_monitor_log(&p.key, cutoff).await?;
            p.recent.insert(0, entry);
            p.recent.truncate(p.window);
        }
        Ok(planned
            .into_iter()
            .map(|p| MonitorStatus {
                state: monitor_state(p.monitor, &p.recent, now),
                last: p.recent.first().cloned(),
                deployment: p.deployment,
                monitor: p.monitor.slug.clone(),
            })
            .collect())
    }

    async fn run_check(&self, key: &str, monitor: &Monitor, now: SystemTime) -> MonitorLogEntry {
        let MonitorCheck::HttpRequest(check) = &monitor.check;
        let started = std::time::Instant::now();
        let response = self.checker.check(check).await;
        let duration = started.elapsed();
        let message = match (&response.error, response.status) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) if !check.expect_status.contains(&s) => format!(
                "status {s}, expected {}",
                check
                    .expect_status
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            (None, None) => "no response".to_string(),
            _ => match &check.body_contains {
                Some(text) if !response.body.contains(text.as_str()) => {
                    format!("the body does not contain \"{text}\"")
                }
                _ => String::new(),
            },
        };
        let failure = match (
            message.is_empty(),
            response.broken && response.error.is_some(),
        ) {
            (true, _) => None,
            (false, true) => Some(CheckFailure::Broken),
            (false, false) => Some(CheckFailure::Down),
        };
        MonitorLogEntry {
            monitor: key.to_string(),
            ts: now,
            ok: message.is_empty(),
            status: response.status,
            duration,
            message,
            failure,
        }
    }
}
