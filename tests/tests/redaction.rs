//! Secrets without process-wide state: two plans run at once in one process, each with its own
//! secret and its own `Redactor`. Each plan's sinks see its secret only as `***` and never the
//! other plan's secret; the process's TRACE log lines (through `LogFormat`, handed both
//! redactors) show neither; and once a plan is gone nothing remembers its secret.

use std::io::Write;
use std::sync::{Arc, Mutex};

use deployer_core::fixture::EventLog;
use deployer_core::{
    Command, CommandError, CommandRegistry, ExecContext, Executor, Outcome, Plan, Redactor,
    ShellCommand, Stage, Task, TaskArgs, Tasklist, ValidationErrors, async_trait,
};
use deployer_remote::LocalConnector;
use deployer_report::LogFormat;

/// Echoes its `token` on the host (output lines), logs it at TRACE and INFO, and fails with
/// it in the message when `fail` is set.
#[derive(Debug, serde::Deserialize)]
struct Leaky {
    token: String,
    #[serde(default)]
    fail: bool,
}

#[async_trait]
impl Command for Leaky {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        args.parse()
    }
    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        tracing::trace!("leaky command got token {}", self.token);
        tracing::info!(host = "local", "connecting with {}", self.token);
        let line = ShellCommand::new("echo")
            .arg(format!("token={}", self.token))
            .build()?;
        ctx.run_checked(&line).await?;
        if self.fail {
            return Err(CommandError::failed(format!("rejected {}", self.token)));
        }
        Ok(Outcome::done())
    }
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn plan(token: &str, redactor: Redactor) -> Plan {
    let mut commands = CommandRegistry::new();
    commands.register::<Leaky>("leaky");
    let tasks = (0..4).map(|i| {
        Task::new("leaky")
            .secret("token", token)
            .arg("fail", i == 3)
    });
    let tasklist = Tasklist::new("leaky").stage(Stage::new("s", 2).tasks(tasks));
    Plan::build_with_redactor(&tasklist, &commands, redactor).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_plans_at_once_each_redact_their_own_secret_and_never_see_the_other() {
    const A: &str = "alpha-secret-7Qx";
    const B: &str = "bravo-secret-9Zk";
    let (redactor_a, redactor_b) = (Redactor::new(), Redactor::new());
    let logs = Buffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .event_format(
            LogFormat::default()
                .redactor(redactor_a.clone())
                .redactor(redactor_b.clone()),
        )
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test binary");

    let (plan_a, plan_b) = (plan(A, redactor_a.clone()), plan(B, redactor_b.clone()));
    let (log_a, log_b) = (Arc::new(EventLog::new()), Arc::new(EventLog::new()));
    let connector = Arc::new(LocalConnector::new());
    let executor_a = Executor::new(connector.clone()).sink(log_a.clone());
    let executor_b = Executor::new(connector.clone()).sink(log_b.clone());
    let (report_a, report_b) = tokio::join!(executor_a.run(&plan_a), executor_b.run(&plan_b));

    for (name, mine, other, log, report) in [
        ("A", A, B, &log_a, &report_a),
        ("B", B, A, &log_b, &report_b),
    ] {
        let events = serde_json::to_string(&log.events()).unwrap();
        assert!(events.contains("token=***"), "{name}: {events}");
        assert!(events.contains("rejected ***"), "{name}: {events}");
        assert!(!events.contains(mine), "{name} shows its secret: {events}");
        assert!(
            !events.contains(other),
            "{name} sees the other's secret: {events}"
        );
        let failures = format!("{:?}", report.failures);
        assert!(failures.contains("rejected ***"), "{failures}");
        assert!(!failures.contains(mine) && !failures.contains(other));
    }
    // Each plan's redactor knows its own secret only.
    assert_eq!(plan_a.redactor().redact(B), B);
    assert_eq!(plan_b.redactor().redact(A), A);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("leaky command got token ***"), "{text}");
    assert!(text.contains("connecting with ***"), "{text}");
    assert!(!text.contains(A) && !text.contains(B), "{text}");

    // Nothing else remembers the secrets: a new plan's redactor knows neither.
    assert_eq!(Redactor::new().redact(A), A);
    let fresh = Plan::build(&Tasklist::new("empty"), &CommandRegistry::new()).unwrap();
    assert!(fresh.redactor().is_empty());
}
