//! Load-balancer control: disable_loadbalancer and enable_loadbalancer, through a pluggable
//! [`LoadBalancerBackend`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deployer_core::{
    Command, CommandError, CommandRegistry, ExecContext, ExecOptions, Outcome, ShellCommand,
    TaskArgs, ValidationErrors, async_trait,
};
use serde::Deserialize;

use crate::util::{Check, Secret, build, opt_secs};

/// Whether a service is taken out of or put back into the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbAction {
    /// Stop sending traffic to the service.
    Disable,
    /// Send traffic to the service again.
    Enable,
}

impl LbAction {
    /// `disable` or `enable`.
    pub fn as_str(self) -> &'static str {
        match self {
            LbAction::Disable => "disable",
            LbAction::Enable => "enable",
        }
    }
}

/// What a load-balancer task asks of a backend. `Debug` never shows the password.
#[derive(Debug, Clone)]
pub struct LbRequest {
    /// Disable or enable.
    pub action: LbAction,
    /// The load balancer (`lb_hostname`).
    pub lb_hostname: String,
    /// The service or member on the load balancer (`lb_service`).
    pub lb_service: String,
    /// The login user (`lb_username`), if any.
    pub lb_username: Option<String>,
    /// The password (`lb_password`), if any.
    pub lb_password: Option<Secret>,
    /// How long the backend may take (`lb_timeout`, else the task's `timeout`, else 60 s).
    pub timeout: Duration,
}

/// A way to talk to a load balancer. Implement it to add your own (a cloud API, a vendor
/// SDK) and register it with [`LoadBalancers::backend`].
///
/// # Contract
///
/// `set_state` returns `Ok` once the load balancer has accepted the change, and `Err` with a
/// message that never contains the password otherwise. It must be safe to call again after a
/// failure (tasks may have `retries`).
#[async_trait]
pub trait LoadBalancerBackend: Send + Sync + fmt::Debug + 'static {
    /// Applies `request`. `ctx` gives access to the task's host (the controller when the task
    /// has no `remote_host`).
    async fn set_state(&self, ctx: &ExecContext, request: &LbRequest) -> Result<(), CommandError>;
}

/// Fills the placeholders of `template` in one pass, so a value holding `{lb_service}` stays
/// as it is.
fn fill(template: &str, request: &LbRequest) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let value = [
            ("{action}", request.action.as_str()),
            ("{lb_hostname}", request.lb_hostname.as_str()),
            ("{lb_service}", request.lb_service.as_str()),
            (
                "{lb_username}",
                request.lb_username.as_deref().unwrap_or(""),
            ),
        ]
        .into_iter()
        .find(|(p, _)| tail.starts_with(p));
        match value {
            Some((placeholder, value)) => {
                out.push_str(value);
                rest = &tail[placeholder.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A backend that runs a program on the task's host, e.g. a vendor CLI.
///
/// Each word of the program's argument list may hold the placeholders `{action}`,
/// `{lb_hostname}`, `{lb_service}` and `{lb_username}`; every word is quoted. The password is
/// never put on the command line: it is written to the program's standard input, followed by
/// a newline.
///
/// ```
/// use deployer_commands::ShellBackend;
/// let backend = ShellBackend::new(["lbctl", "--host", "{lb_hostname}", "{action}", "{lb_service}"]);
/// # let _ = backend;
/// ```
#[derive(Debug, Clone)]
pub struct ShellBackend {
    argv: Vec<String>,
    sudo: bool,
}

impl ShellBackend {
    /// A backend running `argv` (program first).
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ShellBackend {
            argv: argv.into_iter().map(Into::into).collect(),
            sudo: false,
        }
    }

    /// Runs the program through sudo (default false).
    pub fn sudo(mut self, sudo: bool) -> Self {
        self.sudo = sudo;
        self
    }

    /// The command line for `request`.
    pub fn command_line(&self, request: &LbRequest) -> Result<String, CommandError> {
        let mut words = self.argv.iter().map(|w| fill(w, request));
        let program = words.next().ok_or_else(|| {
            CommandError::failed("the load-balancer shell backend has no program")
        })?;
        build(&ShellCommand::new(program).args(words))
    }
}

#[async_trait]
impl LoadBalancerBackend for ShellBackend {
    async fn set_state(&self, ctx: &ExecContext, request: &LbRequest) -> Result<(), CommandError> {
        let mut options = ExecOptions::new().sudo(self.sudo).timeout(request.timeout);
        if let Some(p) = &request.lb_password {
            options = options.stdin(format!("{}\n", p.expose()).into_bytes());
        }
        ctx.run_checked_with(&self.command_line(request)?, options)
            .await?;
        Ok(())
    }
}

/// A backend that sends an HTTP request with `curl` from the task's host (the controller when
/// the task has no `remote_host`).
///
/// The URL template may hold `{action}`, `{lb_hostname}`, `{lb_service}` (percent-encoded when
/// filled in). The request fails unless the answer is a 2xx status. With `lb_username`, HTTP
/// basic authentication is used; the credentials go to curl through its standard input
/// (`--config -`), never on the command line.
///
/// ```
/// use deployer_commands::HttpBackend;
/// let backend = HttpBackend::new("https://{lb_hostname}/api/pools/web/members/{lb_service}/{action}")
///     .method("POST");
/// # let _ = backend;
/// ```
#[derive(Debug, Clone)]
pub struct HttpBackend {
    url: String,
    method: String,
}

impl HttpBackend {
    /// A backend posting to `url_template`.
    pub fn new(url_template: impl Into<String>) -> Self {
        HttpBackend {
            url: url_template.into(),
            method: "POST".to_string(),
        }
    }

    /// The HTTP method (default `POST`).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// The URL for `request`.
    pub fn url(&self, request: &LbRequest) -> String {
        self.url
            .replace("{action}", request.action.as_str())
            .replace("{lb_hostname}", &percent_encode(&request.lb_hostname))
            .replace("{lb_service}", &percent_encode(&request.lb_service))
    }

    /// The command line for `request` (credentials excluded: they go to standard input).
    pub fn command_line(&self, request: &LbRequest) -> Result<String, CommandError> {
        let mut cmd = ShellCommand::new("curl")
            .arg("-sS")
            .arg("--fail")
            .arg("-X")
            .arg(&self.method)
            .arg("--max-time")
            .arg(request.timeout.as_secs().max(1).to_string());
        if request.lb_username.is_some() {
            cmd = cmd.arg("--config").arg("-");
        }
        build(&cmd.arg("-o").arg("/dev/null").arg(self.url(request)))
    }
}

/// curl's config-file syntax for `user = "name:password"`.
fn curl_user_config(user: &str, password: &str) -> String {
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .replace('\r', "\\r")
            .replace('\t', "\\t")
    };
    format!("user = \"{}:{}\"\n", esc(user), esc(password))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[async_trait]
impl LoadBalancerBackend for HttpBackend {
    async fn set_state(&self, ctx: &ExecContext, request: &LbRequest) -> Result<(), CommandError> {
        let mut options = ExecOptions::new().timeout(request.timeout + Duration::from_secs(5));
        if let Some(user) = &request.lb_username {
            let password = request.lb_password.as_ref().map_or("", |p| p.expose());
            options = options.stdin(curl_user_config(user, password).into_bytes());
        }
        ctx.run_checked_with(&self.command_line(request)?, options)
            .await?;
        Ok(())
    }
}

/// The load-balancer backends a registry's commands may use, by name. The first one added is
/// the default; a task picks another with `lb_backend`.
///
/// ```
/// use deployer_commands::{HttpBackend, LoadBalancers, ShellBackend};
/// use deployer_core::CommandRegistry;
///
/// let mut registry = CommandRegistry::new();
/// deployer_commands::register_all(&mut registry);
/// LoadBalancers::new()
///     .backend("api", HttpBackend::new("https://{lb_hostname}/members/{lb_service}/{action}"))
///     .backend("cli", ShellBackend::new(["lbctl", "{action}", "{lb_service}"]))
///     .register(&mut registry);
/// ```
#[derive(Debug, Clone, Default)]
pub struct LoadBalancers {
    backends: BTreeMap<String, Arc<dyn LoadBalancerBackend>>,
    default: Option<String>,
}

impl LoadBalancers {
    /// No backends: load-balancer tasks are rejected when a tasklist is loaded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a backend under `name` (the first added is the default).
    pub fn backend(mut self, name: impl Into<String>, backend: impl LoadBalancerBackend) -> Self {
        let name = name.into();
        if self.default.is_none() {
            self.default = Some(name.clone());
        }
        self.backends.insert(name, Arc::new(backend));
        self
    }

    /// Registers `disable_loadbalancer` and `enable_loadbalancer` using these backends,
    /// replacing earlier registrations, with `lb_password` declared secret.
    pub fn register(self, registry: &mut CommandRegistry) {
        let set = Arc::new(self);
        for action in [LbAction::Disable, LbAction::Enable] {
            let set = set.clone();
            let name = format!("{}_loadbalancer", action.as_str());
            registry
                .register_fn(name.clone(), move |args| {
                    LoadBalancerCommand::initialize_with(args, action, &set)
                        .map(|c| Box::new(c) as Box<dyn Command>)
                })
                .declare_secret_arguments(&name, LoadBalancerCommand::secret_arguments());
        }
    }
}

/// `disable_loadbalancer` / `enable_loadbalancer`: takes a service out of (or puts it back
/// into) a load balancer's pool through a [`LoadBalancerBackend`].
///
/// ```json
/// {"command": "disable_loadbalancer", "lb_hostname": "lb001", "lb_service": "fe001_web",
///  "lb_username": "deploy", "lb_password": "…", "lb_timeout": 60, "lb_backend": "api"}
/// ```
///
/// `lb_hostname` and `lb_service` are required; `lb_username`, `lb_password` (declared
/// secret: a plain string is marked `{"secret": …}` when the plan is built, so it is never
/// logged, shown or stored; `{"secret": …}` and `{"secret_env": …}` work too) or `lb_password_env` (the name of an environment variable of the controller holding
/// the password, read when the task runs, so the tasklist carries no secret), `lb_timeout` (seconds; default: the task's `timeout`, else 60) and `lb_backend` (default: the first backend
/// registered) are optional. Such tasks usually name no `remote_host`: they run on the
/// controller and count against the load balancer's host for `concurrency_per_host`.
/// Registered by [`LoadBalancers::register`]; [`register_all`](crate::register_all)
/// registers them with no backend, so tasklists using them are rejected at load time with a
/// message saying a backend must be configured. Idempotent.
#[derive(Debug)]
pub struct LoadBalancerCommand {
    request: LbRequest,
    password_env: Option<String>,
    lb_timeout: Option<Duration>,
    backend: Arc<dyn LoadBalancerBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LbArgs {
    lb_hostname: String,
    lb_service: String,
    #[serde(default)]
    lb_username: Option<String>,
    #[serde(default)]
    lb_password: Option<Secret>,
    #[serde(default)]
    lb_password_env: Option<String>,
    #[serde(default, deserialize_with = "opt_secs")]
    lb_timeout: Option<Duration>,
    #[serde(default)]
    lb_backend: Option<String>,
}

impl LoadBalancerCommand {
    fn initialize_with(
        args: &TaskArgs<'_>,
        action: LbAction,
        set: &LoadBalancers,
    ) -> Result<Self, ValidationErrors> {
        let a: LbArgs = args.parse()?;
        let mut c = Check::new();
        c.host("lb_hostname", &a.lb_hostname);
        // Both become words of a backend's command line (`lbctl disable {lb_service}`), where
        // a leading `-` would be read as an option.
        if a.lb_service.starts_with('-') {
            c.fail(
                "lb_service",
                format!("invalid service {:?}: starts with \"-\"", a.lb_service),
                "a service name not starting with \"-\"",
            );
        } else {
            c.path("lb_service", &a.lb_service);
        }
        if let Some(u) = &a.lb_username {
            if u.starts_with('-') {
                c.fail(
                    "lb_username",
                    format!("invalid user name {u:?}: starts with \"-\""),
                    "a user name not starting with \"-\"",
                );
            } else {
                c.text("lb_username", u);
            }
        }
        if a.lb_password
            .as_ref()
            .is_some_and(|p| p.expose().contains('\0'))
        {
            // Never echo the value.
            c.fail(
                "lb_password",
                "contains a NUL byte",
                "a password without NUL bytes",
            );
        }
        if let Some(var) = &a.lb_password_env {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                c.fail(
                    "lb_password_env",
                    format!("invalid environment variable name {var:?}"),
                    "a variable name such as \"LB_PASSWORD\"",
                );
            }
            if a.lb_password.is_some() {
                c.fail(
                    "lb_password_env",
                    "cannot be combined with lb_password",
                    "at most one of lb_password and lb_password_env",
                );
            }
        }
        let known: Vec<&str> = set.backends.keys().map(String::as_str).collect();
        let name = a.lb_backend.clone().or_else(|| set.default.clone());
        let backend = match &name {
            Some(n) => set.backends.get(n).cloned(),
            None => None,
        };
        if backend.is_none() {
            let (path, message) = match &a.lb_backend {
                Some(n) => ("lb_backend", format!("unknown load-balancer backend \"{n}\"")),
                None => (
                    "lb_backend",
                    "no load-balancer backend is configured (the host application registers one with deployer_commands::LoadBalancers)".to_string(),
                ),
            };
            let expected = if known.is_empty() {
                "a registered backend".to_string()
            } else {
                format!("one of {}", known.join(", "))
            };
            c.fail(path, message, &expected);
        }
        let request = LbRequest {
            action,
            lb_hostname: a.lb_hostname,
            lb_service: a.lb_service,
            lb_username: a.lb_username,
            lb_password: a.lb_password,
            timeout: Duration::from_secs(60),
        };
        match backend {
            Some(backend) => c.finish(LoadBalancerCommand {
                request,
                password_env: a.lb_password_env,
                lb_timeout: a.lb_timeout,
                backend,
            }),
            None => Err(c.finish(()).err().unwrap_or_default()),
        }
    }
}

#[async_trait]
impl Command for LoadBalancerCommand {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let action = if args.task().command.starts_with("enable") {
            LbAction::Enable
        } else {
            LbAction::Disable
        };
        Self::initialize_with(args, action, &LoadBalancers::new())
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        ctx.log(&format!(
            "{} {} on {}",
            self.request.action.as_str(),
            self.request.lb_service,
            self.request.lb_hostname
        ));
        let mut request = self.request.clone();
        request.timeout = crate::util::wait_budget(ctx, self.lb_timeout);
        if let Some(var) = &self.password_env {
            // Read on the controller when the task runs, so a dry run needs no secrets.
            let value = std::env::var(var).map_err(|_| {
                CommandError::failed(format!(
                    "environment variable {var} (lb_password_env) is not set or not UTF-8 on the controller"
                ))
            })?;
            // Output or an error echoing it shows `***`.
            ctx.redactor().add(&value);
            request.lb_password = Some(Secret::new(value));
        }
        self.backend.set_state(ctx, &request).await?;
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn secret_arguments() -> &'static [&'static str] {
        &["lb_password"]
    }
}

#[cfg(test)]
pub(crate) fn curl_user_config_for_tests(user: &str, password: &str) -> String {
    curl_user_config(user, password)
}
