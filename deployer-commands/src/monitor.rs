//! `curl` on a host as the catalog's [`HttpChecker`] (feature `catalog`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deployer_catalog::{HttpCheck, HttpChecker, HttpResponse};
use deployer_core::{ExecOptions, RemoteHost, ShellCommand};

/// An [`HttpChecker`] that runs `curl` on a [`RemoteHost`] (the controller's own host, or a host
/// inside the network being checked).
#[derive(Debug, Clone)]
pub struct CurlChecker {
    host: Arc<dyn RemoteHost>,
}

/// Marks the status line curl writes after the body.
const STATUS_MARK: &str = "\n__deployer_status__=";

/// Whether curl's exit status says the check itself could not be made (not the target's
/// fault): 1 unsupported protocol, 2 failed to initialize, 3 malformed URL, 4 a feature not
/// built in, 5 the proxy's name does not resolve, 27 out of memory, 43 internal error, 48 an
/// unknown option, 126 and 127 curl cannot run or is not installed. Every other failure (6
/// the target's name does not resolve, 7 connection refused, 28 timeout, 35 and 60 TLS, 52
/// empty reply, 56 connection reset, ...) is the target's: unreachable from where the check
/// runs.
fn curl_failure_is_broken(exit_status: i32) -> bool {
    matches!(exit_status, 1..=5 | 27 | 43 | 48 | 126 | 127)
}

impl CurlChecker {
    /// Checks through `curl` on `host`.
    pub fn new(host: Arc<dyn RemoteHost>) -> CurlChecker {
        CurlChecker { host }
    }

    /// The command line for `check`.
    pub fn command_line(check: &HttpCheck) -> Result<String, String> {
        ShellCommand::new("curl")
            .args(["-sS", "-X", check.method.as_str(), "--max-time"])
            .arg(check.timeout_seconds.max(1).to_string())
            .args(["-w", &format!("{STATUS_MARK}%{{http_code}}"), "--"])
            .arg(check.url.as_str())
            .build()
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl HttpChecker for CurlChecker {
    async fn check(&self, check: &HttpCheck) -> HttpResponse {
        let line = match Self::command_line(check) {
            Ok(line) => line,
            Err(e) => {
                return HttpResponse {
                    error: Some(e),
                    broken: true,
                    ..HttpResponse::default()
                };
            }
        };
        let options = ExecOptions {
            timeout: Some(Duration::from_secs(check.timeout_seconds.max(1) + 5)),
            ..ExecOptions::default()
        };
        match self.host.execute(&line, &options).await {
            // The probing host could not run curl: nothing is known of the target.
            Err(e) => HttpResponse {
                error: Some(e.to_string()),
                broken: true,
                ..HttpResponse::default()
            },
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                let (body, status) = match stdout.rsplit_once(STATUS_MARK) {
                    Some((body, code)) => (body.to_string(), code.trim().parse::<u16>().ok()),
                    None => (stdout.to_string(), None),
                };
                let status = status.filter(|s| *s != 0);
                let error = if out.success() && status.is_some() {
                    None
                } else {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    Some(
                        deployer_core::tail_lines(&stderr, 1)
                            .trim()
                            .to_string()
                            .chars()
                            .take(300)
                            .collect::<String>(),
                    )
                    .map(|s| {
                        if s.is_empty() {
                            format!("curl exited with {:?}", out.exit_status)
                        } else {
                            s
                        }
                    })
                };
                let broken = error.is_some()
                    && match out.exit_status {
                        Some(code) => curl_failure_is_broken(code),
                        // Killed by a signal: the check did not finish.
                        None => true,
                    };
                HttpResponse {
                    status,
                    body,
                    error,
                    broken,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployer_core::fixture::{FakeHost, FakeReply};

    #[tokio::test]
    async fn curl_checks_run_on_a_remote_host() {
        let host = Arc::new(FakeHost::new("probe").reply(
            "curl",
            FakeReply::ok().stdout("<html>shop</html>\n__deployer_status__=200"),
        ));
        let checker = CurlChecker::new(host.clone());
        let mut check = HttpCheck::get("https://www.shop.example.com/?a=1&b=2");
        check.body_contains = Some("shop".to_string());
        let response = checker.check(&check).await;
        assert_eq!(response.status, Some(200));
        assert_eq!(response.body, "<html>shop</html>");
        assert_eq!(response.error, None);
        assert_eq!(
            host.commands(),
            [
                "curl -sS -X GET --max-time 10 -w '\n__deployer_status__=%{http_code}' -- 'https://www.shop.example.com/?a=1&b=2'"
            ]
        );

        let down = Arc::new(
            FakeHost::new("probe").reply(
                "curl",
                FakeReply::fail(
                    7,
                    "curl: (7) Failed to connect to x port 443: Connection refused",
                )
                .stdout("\n__deployer_status__=000"),
            ),
        );
        let response = CurlChecker::new(down).check(&check).await;
        assert_eq!(response.status, None);
        assert_eq!(
            response.error.as_deref(),
            Some("curl: (7) Failed to connect to x port 443: Connection refused")
        );
        assert!(!response.broken, "the target's fault");

        let missing = Arc::new(
            FakeHost::new("probe").reply("curl", FakeReply::fail(127, "sh: 1: curl: not found")),
        );
        let response = CurlChecker::new(missing).check(&check).await;
        assert_eq!(response.error.as_deref(), Some("sh: 1: curl: not found"));
        assert!(response.broken, "the checker's fault");
    }
}
