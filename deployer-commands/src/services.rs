//! Service control: control_service, start_service, stop_service, restart_service,
//! reload_service, for systemd, init scripts and daemontools, or for command lines of your own.

use std::time::Duration;

use deployer_core::{
    Command, CommandError, ExecContext, ExecOptions, Outcome, ShellCommand, TaskArgs,
    ValidationErrors, async_trait,
};
use serde::Deserialize;

use crate::process::CheckService;
use crate::util::{Check, build, join, operand, opt_secs, poll_until, secs, wait_budget};

/// The service managers whose commands this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceManager {
    /// `systemctl <action> <service>`; up means `systemctl is-active --quiet <service>` exits 0.
    Systemd,
    /// `<service_dir>/<service> <action>` (`service_dir` defaults to `/etc/init.d`); up means
    /// `<service_dir>/<service> status` exits 0.
    Init,
    /// `svc -u|-d|-t|-h <service_dir>/<service>` (`service_dir` defaults to `/etc/service`);
    /// the state is read from `svstat <service_dir>/<service>`.
    Daemontools,
}

/// What to do with a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Start it and wait until it is up.
    Start,
    /// Stop it and wait until it is down (then run `kill_command`, if given, when it is not).
    Stop,
    /// Restart it and wait until it is up.
    Restart,
    /// Reload its configuration.
    Reload,
}

/// A state to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Running.
    Up,
    /// Not running.
    Down,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// How the state of a service is read.
#[derive(Debug, Clone, PartialEq)]
enum Probe {
    /// Output like daemontools' `svstat`: `/service/web: up (pid 123) 5 seconds`; the first word
    /// after the first colon is the state.
    Svstat(String),
    /// Exit status 0 means up, anything else down.
    ExitCode(String),
}

/// One control step: a command line, then optionally a state to wait for.
#[derive(Debug, Clone, PartialEq)]
struct Phase {
    control: String,
    want: Option<State>,
}

/// A validated service operation shared by all service commands.
#[derive(Debug)]
struct ServiceOp {
    phases: Vec<Phase>,
    probe: Option<Probe>,
    kill: Option<String>,
    check: Option<CheckService>,
    wait_timeout: Option<Duration>,
    poll_interval: Duration,
    sudo: bool,
}

/// Arguments every service command accepts.
struct CommonArgs {
    service: Option<String>,
    manager: Option<ServiceManager>,
    service_dir: Option<String>,
    status_command: Option<String>,
    check_command: Option<String>,
    kill_command: Option<String>,
    wait_timeout: Option<Duration>,
    poll_interval: Option<Duration>,
    sudo: bool,
}

/// Declares a command's argument struct: its own fields plus the common ones (written out,
/// not flattened, so unknown arguments are reported with the full list of known ones).
macro_rules! service_args {
    ($args:ident { $($field:ident : $ty:ty),* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $args {
            $(#[serde(default)] $field: Option<$ty>,)*
            #[serde(default)]
            service: Option<String>,
            #[serde(default)]
            manager: Option<ServiceManager>,
            #[serde(default)]
            service_dir: Option<String>,
            #[serde(default)]
            status_command: Option<String>,
            #[serde(default)]
            check_command: Option<String>,
            #[serde(default)]
            kill_command: Option<String>,
            #[serde(default, deserialize_with = "opt_secs")]
            wait_timeout: Option<Duration>,
            #[serde(default, deserialize_with = "opt_secs")]
            poll_interval: Option<Duration>,
            #[serde(default)]
            sudo: bool,
        }

        impl $args {
            fn common(&mut self) -> CommonArgs {
                CommonArgs {
                    service: self.service.take(),
                    manager: self.manager,
                    service_dir: self.service_dir.take(),
                    status_command: self.status_command.take(),
                    check_command: self.check_command.take(),
                    kill_command: self.kill_command.take(),
                    wait_timeout: self.wait_timeout,
                    poll_interval: self.poll_interval,
                    sudo: self.sudo,
                }
            }
        }
    };
}

fn managed_control(
    manager: ServiceManager,
    service: &str,
    dir: &str,
    action: Action,
) -> Result<String, CommandError> {
    let cmd = match manager {
        ServiceManager::Systemd => {
            let verb = match action {
                Action::Start => "start",
                Action::Stop => "stop",
                Action::Restart => "restart",
                Action::Reload => "reload",
            };
            ShellCommand::new("systemctl").arg(verb).arg(service)
        }
        ServiceManager::Init => {
            let verb = match action {
                Action::Start => "start",
                Action::Stop => "stop",
                Action::Restart => "restart",
                Action::Reload => "reload",
            };
            // As the first word of the line, a leading `-` would be an option to the shell.
            ShellCommand::new(operand(&join(dir, service))).arg(verb)
        }
        ServiceManager::Daemontools => {
            let flag = match action {
                Action::Start => "-u",
                Action::Stop => "-d",
                Action::Restart => "-t",
                Action::Reload => "-h",
            };
            ShellCommand::new("svc")
                .arg(flag)
                .arg(operand(&join(dir, service)))
        }
    };
    build(&cmd)
}

fn managed_probe(manager: ServiceManager, service: &str, dir: &str) -> Result<Probe, CommandError> {
    Ok(match manager {
        ServiceManager::Systemd => Probe::ExitCode(build(
            &ShellCommand::new("systemctl")
                .arg("is-active")
                .arg("--quiet")
                .arg(service),
        )?),
        ServiceManager::Init => Probe::ExitCode(build(
            &ShellCommand::new(operand(&join(dir, service))).arg("status"),
        )?),
        ServiceManager::Daemontools => Probe::Svstat(build(
            &ShellCommand::new("svstat").arg(operand(&join(dir, service))),
        )?),
    })
}

fn want_of(action: Action) -> Option<State> {
    match action {
        Action::Start | Action::Restart => Some(State::Up),
        Action::Stop => Some(State::Down),
        Action::Reload => None,
    }
}

/// Validates the common arguments and builds the operation.
///
/// `raw` are the user's own control lines for the action (`start_command` …), with the argument
/// name for messages; `check_want` is the exit status `check_command` must reach.
fn build_op(
    c: &mut Check,
    common: CommonArgs,
    action: Action,
    raw: Vec<(&str, Option<String>)>,
    check_want: i32,
) -> ServiceOp {
    let raw_given: Vec<&(&str, Option<String>)> = raw.iter().filter(|(_, v)| v.is_some()).collect();
    let raw_names: Vec<&str> = raw.iter().map(|(n, _)| *n).collect();
    let default_dir = match common.manager {
        Some(ServiceManager::Init) => "/etc/init.d",
        _ => "/etc/service",
    };
    let dir = common
        .service_dir
        .clone()
        .unwrap_or_else(|| default_dir.to_string());
    if let Some(d) = &common.service_dir {
        c.path("service_dir", d);
    }
    for (name, value) in &raw_given {
        c.command_line(name, value.as_deref().unwrap_or(""));
    }
    for (name, value) in [
        ("status_command", &common.status_command),
        ("check_command", &common.check_command),
        ("kill_command", &common.kill_command),
    ] {
        if let Some(v) = value {
            c.command_line(name, v);
        }
    }
    let mut phases = Vec::new();
    let mut probe = common.status_command.clone().map(Probe::Svstat);
    match (&common.service, common.manager, raw_given.is_empty()) {
        (Some(service), Some(manager), true) => {
            if service.contains(['*', '?', '[']) {
                // systemctl reads them as a pattern over every loaded unit.
                c.fail(
                    "service",
                    format!("invalid service name {service:?}: *, ? and [ make a pattern"),
                    "a service name without *, ? or [ (systemctl matches patterns against every loaded unit)",
                );
            } else {
                c.name("service", service, "service name");
            }
            if let (Ok(control), Ok(p)) = (
                managed_control(manager, service, &dir, action),
                managed_probe(manager, service, &dir),
            ) {
                phases.push(Phase {
                    control,
                    want: want_of(action),
                });
                if probe.is_none() {
                    probe = Some(p);
                }
            }
        }
        (None, None, false) if raw_given.len() < raw.len() => {
            // Restart with own lines needs both the stop and the start line.
            for (name, value) in &raw {
                if value.is_none() {
                    c.fail(
                        name,
                        "missing required argument",
                        &format!(
                            "{} together (or \"service\" with \"manager\")",
                            raw_names
                                .iter()
                                .map(|n| format!("\"{n}\""))
                                .collect::<Vec<_>>()
                                .join(" and ")
                        ),
                    );
                }
            }
        }
        (None, None, false) => {
            // The user's own lines: restart gives stop then start.
            for (name, value) in raw_given {
                let want = match *name {
                    "stop_command" => Some(State::Down),
                    "start_command" => Some(State::Up),
                    _ => want_of(action),
                };
                phases.push(Phase {
                    control: value.clone().unwrap_or_default(),
                    want,
                });
            }
        }
        (Some(_), None, _) => c.fail(
            "manager",
            "missing: \"service\" needs a service manager",
            "\"systemd\", \"init\" or \"daemontools\"",
        ),
        (None, Some(_), _) => c.fail(
            "service",
            "missing: \"manager\" needs a service name",
            "a service name such as \"web\"",
        ),
        (Some(_), Some(_), false) => c.fail(
            raw_names.first().copied().unwrap_or("command"),
            "cannot be combined with \"service\"/\"manager\"",
            "either a service and manager or your own command lines",
        ),
        (None, None, true) => c.fail(
            raw_names.first().copied().unwrap_or("command"),
            "missing required argument",
            &format!(
                "{} (or \"service\" with \"manager\")",
                raw_names
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ),
    }
    let poll_interval = common.poll_interval.unwrap_or(Duration::from_secs(1));
    let check = common.check_command.map(|line| CheckService {
        check_command: line,
        want_state: check_want,
        wait_timeout: common.wait_timeout,
        poll_interval,
        notify_interval: Duration::from_secs(30),
        sudo: common.sudo,
    });
    ServiceOp {
        phases,
        probe,
        kill: common.kill_command,
        check,
        wait_timeout: common.wait_timeout,
        poll_interval,
        sudo: common.sudo,
    }
}

impl ServiceOp {
    async fn state(&self, ctx: &ExecContext) -> Result<Option<State>, CommandError> {
        let opts = || ExecOptions::new().sudo(self.sudo);
        Ok(match &self.probe {
            None => None,
            Some(Probe::ExitCode(line)) => Some(if ctx.run_with(line, opts()).await?.success() {
                State::Up
            } else {
                State::Down
            }),
            Some(Probe::Svstat(line)) => {
                let out = ctx.run_with(line, opts()).await?;
                parse_svstat(&out.stdout_str())
            }
        })
    }

    async fn wait_for(
        &self,
        ctx: &ExecContext,
        want: State,
        wait: Duration,
    ) -> Result<bool, CommandError> {
        poll_until(ctx, wait, self.poll_interval, || async move {
            Ok(self.state(ctx).await? == Some(want))
        })
        .await
    }

    async fn run(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let total = wait_budget(ctx, self.wait_timeout);
        for phase in &self.phases {
            ctx.run_checked_with(&phase.control, ExecOptions::new().sudo(self.sudo))
                .await?;
            let (Some(want), Some(_)) = (phase.want, &self.probe) else {
                continue;
            };
            // With a kill command, the first wait gets half the budget and the wait after
            // the kill the other half, so both fit in the task's timeout.
            let kill = self.kill.as_ref().filter(|_| want == State::Down);
            let first = if kill.is_some() { total / 2 } else { total };
            if self.wait_for(ctx, want, first).await? {
                continue;
            }
            match kill {
                Some(kill) => {
                    ctx.log(&format!(
                        "service did not go down within {}, running the kill command",
                        secs(first)
                    ));
                    ctx.run_checked_with(kill, ExecOptions::new().sudo(self.sudo))
                        .await?;
                    if !self.wait_for(ctx, State::Down, total - first).await? {
                        return Err(CommandError::failed(format!(
                            "service on {} is still not down after the kill command",
                            ctx.host().name()
                        )));
                    }
                }
                None => {
                    return Err(CommandError::failed(format!(
                        "service on {} did not come {} within {} after `{}`",
                        ctx.host().name(),
                        want.as_str(),
                        secs(first),
                        phase.control
                    )));
                }
            }
        }
        if let Some(check) = &self.check {
            check.run(ctx).await?;
        }
        Ok(Outcome::done())
    }
}

/// The state in `svstat`-style output: the first word after the first colon.
fn parse_svstat(out: &str) -> Option<State> {
    let (_, rest) = out.split_once(':')?;
    match rest.split_whitespace().next()? {
        "up" => Some(State::Up),
        "down" => Some(State::Down),
        _ => None,
    }
}

macro_rules! service_command {
    (
        $(#[$doc:meta])*
        $name:ident, $args:ident, action = $action:expr, check_want = $check:expr,
        raw = [$($raw:ident),*]
    ) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            op: ServiceOp,
        }

        service_args!($args { $($raw: String),* });

        #[async_trait]
        impl Command for $name {
            fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
                let mut a: $args = args.parse()?;
                let common = a.common();
                let mut c = Check::new();
                let op = build_op(
                    &mut c,
                    common,
                    $action,
                    vec![$((stringify!($raw), a.$raw.take())),*],
                    $check,
                );
                c.finish($name { op })
            }

            async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
                self.op.run(ctx).await
            }
        }
    };
}

service_command! {
    /// Starts a service and waits until it is up.
    ///
    /// Either `service` + `manager` (`systemd`, `init`, `daemontools`; `service_dir` sets where
    /// init scripts, default `/etc/init.d`, or daemontools services, default `/etc/service`,
    /// live), or your own `start_command` line (with an
    /// optional `status_command` printing `svstat`-style `name: up …`). An optional
    /// `check_command` is then polled until it exits 0. Waits last `wait_timeout` seconds
    /// (default: the task's `timeout`, else 60), polling every `poll_interval` (default 1).
    /// `sudo` (default false; the original deployer always used sudo) runs the lines through
    /// non-interactive sudo.
    ///
    /// ```json
    /// {"command": "start_service", "remote_host": "fe001", "service": "web", "manager": "systemd"}
    /// {"command": "start_service", "remote_host": "fe001", "start_command": "svc -u /etc/service/web",
    ///  "check_command": "curl -sf http://localhost:8080/health", "wait_timeout": 90}
    /// ```
    StartService, StartServiceArgs, action = Action::Start, check_want = 0, raw = [start_command]
}

service_command! {
    /// Stops a service and waits until it is down; when it is not down in time and a
    /// `kill_command` is given, runs it and waits again (each wait gets half the budget).
    ///
    /// Arguments as for `start_service`, with `stop_command` for your own line. As in the
    /// original deployer, `check_command` is polled until it exits **2** after a stop.
    ///
    /// ```json
    /// {"command": "stop_service", "remote_host": "fe001", "service": "web", "manager": "daemontools",
    ///  "kill_command": "svc -k /etc/service/web", "wait_timeout": 30}
    /// ```
    StopService, StopServiceArgs, action = Action::Stop, check_want = 2, raw = [stop_command]
}

service_command! {
    /// Restarts a service and waits until it is up.
    ///
    /// With `service` + `manager`, uses the manager's restart. With your own lines, give
    /// `stop_command` and `start_command` (run in that order, waiting for down then up when a
    /// `status_command` is given). `check_command` is polled until it exits 0 at the end.
    ///
    /// ```json
    /// {"command": "restart_service", "remote_host": "fe001", "service": "web", "manager": "init"}
    /// {"command": "restart_service", "remote_host": "fe001",
    ///  "stop_command": "/etc/init.d/web stop", "start_command": "/etc/init.d/web start"}
    /// ```
    RestartService, RestartServiceArgs, action = Action::Restart, check_want = 0, raw = [stop_command, start_command]
}

service_command! {
    /// Reloads a service's configuration; `check_command`, when given, is polled until it
    /// exits 0.
    ///
    /// ```json
    /// {"command": "reload_service", "remote_host": "fe001", "service": "nginx", "manager": "systemd"}
    /// {"command": "reload_service", "remote_host": "fe001", "reload_command": "nginx -s reload"}
    /// ```
    ReloadService, ReloadServiceArgs, action = Action::Reload, check_want = 0, raw = [reload_command]
}

/// Runs a control command and waits for the wanted state: the general form behind the
/// start/stop/restart/reload commands, with the original deployer's arguments.
///
/// Either your own `control_command` with `want_state` (`"up"` or `"down"`, waited for only
/// when `status_command` is given; its output is read like daemontools' `svstat`), or
/// `service` + `manager` + `action` (`start`, `stop`, `restart`, `reload`). `kill_command`
/// runs when a wait for `down` times out.
///
/// ```json
/// {"command": "control_service", "remote_host": "fe001", "control_command": "svc -d /etc/service/web",
///  "status_command": "svstat /etc/service/web", "want_state": "down",
///  "kill_command": "svc -k /etc/service/web", "wait_timeout": 60}
/// {"command": "control_service", "remote_host": "fe001", "service": "web", "manager": "systemd",
///  "action": "restart"}
/// ```
#[derive(Debug)]
pub struct ControlService {
    op: ServiceOp,
}

service_args!(ControlServiceArgs {
    control_command: String,
    want_state: State,
    action: Action
});

#[async_trait]
impl Command for ControlService {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let mut a: ControlServiceArgs = args.parse()?;
        let common = a.common();
        let mut c = Check::new();
        let managed = common.service.is_some() || common.manager.is_some();
        let action = match (a.action, managed) {
            (Some(action), true) => action,
            (None, true) => {
                c.fail(
                    "action",
                    "missing required argument (with \"service\"/\"manager\")",
                    "\"start\", \"stop\", \"restart\" or \"reload\"",
                );
                Action::Start
            }
            (Some(_), false) => {
                c.fail(
                    "action",
                    "only applies with \"service\" and \"manager\"",
                    "\"want_state\" with \"control_command\"",
                );
                Action::Start
            }
            (None, false) => Action::Reload,
        };
        if managed && a.want_state.is_some() {
            c.fail(
                "want_state",
                "only applies with \"control_command\"",
                "\"action\" with \"service\"/\"manager\"",
            );
        }
        let mut op = build_op(
            &mut c,
            common,
            action,
            vec![("control_command", a.control_command.take())],
            0,
        );
        if !managed {
            for phase in &mut op.phases {
                phase.want = a.want_state;
            }
        }
        c.finish(ControlService { op })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        self.op.run(ctx).await
    }
}
