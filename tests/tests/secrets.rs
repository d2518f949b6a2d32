//! Secrets end to end: a distinctive secret runs through a real deploy — on this machine
//! (`LocalHost`) and over a real OpenSSH server on loopback — with every output channel
//! captured: log lines at TRACE level (every target, through `LogFormat`), events (as the JSON
//! output writes them, and their `Debug`), `Debug` of everything a user can reach, saved
//! tasklists, the run recorded in a real SQLite file (its bytes, WAL and shared memory too),
//! and the error of a run that failed because a command echoed the secret to stderr. Each
//! channel must not contain the secret and must show `***` where the value was; the commands
//! must still have received the secret intact, and never on their command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use deployer_commands::{LoadBalancers, ShellBackend};
use deployer_core::{
    CommandRegistry, Connector, Event, ExecOptions, Executor, Plan, Redactor, RemoteHost,
    ResumeOptions, RunOptions, RunOutcome, Runs, RunsError, TaskEntry, Tasklist, quote,
};
use deployer_remote::LocalConnector;
use deployer_remote::testing::TestSshd;
use deployer_report::{LogFormat, TracingSink};
use deployer_store::SqliteStore;
use serde_json::{Value, json};

/// The secrets of this test binary's plans, which its log lines are redacted with (a host
/// application hands its plans and its log formatter the same redactor).
fn redactor() -> Redactor {
    static REDACTOR: OnceLock<Redactor> = OnceLock::new();
    REDACTOR.get_or_init(Redactor::new).clone()
}

/// Every log line of this test binary: `LogFormat` at TRACE for every target.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    static INIT: OnceLock<()> = OnceLock::new();
    let buffer = LOGS.get_or_init(|| Mutex::new(Vec::new()));
    INIT.get_or_init(|| {
        struct Sink;
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .event_format(LogFormat::default().redactor(redactor()))
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| Sink)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    });
    buffer
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

/// The standard commands, with a load-balancer backend that reads the password from its
/// standard input, writes it to `<dir>/lb_pw` and echoes it (so output scrubbing is tested).
fn registry(dir: &Path) -> CommandRegistry {
    let mut registry = deployer_tests::registry();
    let script =
        "IFS= read -r pw && printf '%s' \"$pw\" > \"$0\" && echo \"lb got $pw for {lb_service}\"";
    LoadBalancers::new()
        .backend(
            "cli",
            ShellBackend::new([
                "sh",
                "-c",
                script,
                dir.join("lb_pw").to_str().expect("UTF-8"),
            ]),
        )
        .register(&mut registry);
    registry
}

fn q(p: &Path) -> String {
    quote(p.to_str().expect("UTF-8")).unwrap().into_owned()
}

/// A deploy that uses a load-balancer password (a plain string: `lb_password` is declared
/// secret) and a database password (marked `{"secret": …}`) passed in `env`; its second stage
/// fails with a message echoing the database password to stderr; its third never runs.
fn tasklist_json(dir: &Path, host: Option<&str>, lb: &str, db: &str) -> String {
    let on = |mut task: Value| {
        if let Some(h) = host {
            task["remote_host"] = json!(h);
        }
        task
    };
    let d = |name: &str| q(&dir.join(name));
    json!({"name": "secret deploy", "stages": [
        {"name": "traffic", "concurrency": 2, "tasks": [
            on(json!({"command": "disable_loadbalancer", "lb_hostname": "lb001",
                      "lb_service": "web", "lb_username": "deploy", "lb_password": lb,
                      "lb_backend": "cli"})),
            on(json!({"command": "execute_command", "tag": "db",
                      "command_line": format!(
                          "printf '%s' \"$DB_PASSWORD\" > {} && cat /proc/$$/cmdline > {} && \
                           echo \"connecting as app with $DB_PASSWORD\"",
                          d("env_pw"), d("cmdline")),
                      "env": {"DB_PASSWORD": {"secret": db}, "MODE": "plain"}})),
        ]},
        {"name": "migrate", "concurrency": 1, "tasks": [
            on(json!({"command": "execute_command", "tag": "db", "retries": 1,
                      "command_line": "echo \"access denied for password $DB_PASSWORD\" >&2; exit 3",
                      "env": {"DB_PASSWORD": {"secret": db}}})),
        ]},
        {"name": "never", "concurrency": 1, "tasks": [
            {"command": "execute_command", "command_line": "true"}
        ]},
    ]})
    .to_string()
}

/// What each channel showed, by name.
struct Channels(Vec<(String, String)>);

impl Channels {
    fn add(&mut self, name: &str, text: impl Into<String>) {
        self.0.push((name.to_string(), text.into()));
    }

    fn get(&self, name: &str) -> &str {
        &self.0.iter().find(|(n, _)| n == name).expect(name).1
    }

    /// No channel holds any of `secrets`.
    fn assert_clean(&self, secrets: &[&str]) {
        for (name, text) in &self.0 {
            for s in secrets {
                assert!(
                    !text.contains(s),
                    "{name} shows the secret {s:?}:\n{}",
                    &text[text.find(s).unwrap().saturating_sub(300)..]
                );
            }
        }
    }

    /// `needle` (where a secret was) shows in channel `name`.
    fn assert_shows(&self, name: &str, needle: &str) {
        let text = self.get(name);
        assert!(text.contains(needle), "{name} lacks {needle:?}:\n{text}");
    }
}

fn sqlite_files(db: &Path) -> String {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = format!("{}{suffix}", db.display());
        if let Ok(bytes) = std::fs::read(&p) {
            all.extend_from_slice(&bytes);
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Runs the deploy, capturing every channel, and checks them all. The commands write what
/// they received into `work`, a directory on the (remote) host that this process can read.
async fn deploy_and_grep(
    connector: Arc<dyn Connector>,
    host: Option<&str>,
    work: &Path,
    lb: &str,
    db: &str,
) {
    logs();
    let local = tempfile::tempdir().unwrap();
    let registry = registry(work);
    let text = tasklist_json(work, host, lb, db);
    let loaded = Tasklist::from_json_str(&text).unwrap();
    let plan = Plan::build_with_redactor(&loaded, &registry, redactor()).unwrap();

    let store_path = local.path().join("runs.db");
    let store = Arc::new(SqliteStore::open(&store_path).await.unwrap());
    let runs = Runs::new(store.clone()).redactor(redactor());
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let executor = Executor::new(connector)
        .retry_delay(Duration::ZERO)
        .sink(TracingSink)
        .sink({
            let events = events.clone();
            move |e: &Event| events.lock().unwrap().push(e.clone())
        });
    let (id, report) = runs
        .start(
            &executor,
            &plan,
            "tasklist:secrets.json",
            "tester",
            RunOptions::default(),
        )
        .await
        .unwrap();

    // The run went as planned: stage 1 ran, stage 2 failed after a retry, stage 3 skipped.
    assert_eq!(report.outcome, RunOutcome::Failed, "{report:?}");
    assert_eq!(report.counts.succeeded, 2, "{report:?}");
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].attempts, 2);
    assert_eq!(report.stages[2].outcome, None);

    // The commands received the secrets intact, and not on a command line.
    let read = |name: &str| {
        std::fs::read_to_string(work.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}; events: {:#?}", events.lock().unwrap()))
    };
    assert_eq!(read("lb_pw"), lb, "the load balancer got the password");
    assert_eq!(read("env_pw"), db, "the command got DB_PASSWORD");
    let cmdline = read("cmdline");
    assert!(
        cmdline.contains("read -r DB_PASSWORD") && cmdline.contains("connecting as app"),
        "the line ran as `sh -c …`: {cmdline:?}"
    );

    let events = events.lock().unwrap().clone();
    let store_record = runs.store().run(&id).await.unwrap();
    let store_hosts = runs.store().hosts(&id).await.unwrap();
    let store_tasks = runs.store().tasks(&id).await.unwrap();
    let mut c = Channels(Vec::new());
    c.add("command line of the remote shell", cmdline);
    c.add(
        "events as JSON lines",
        events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    c.add("Debug of the events", format!("{events:#?}"));
    c.add("Debug of the loaded tasklist", format!("{loaded:?}"));
    c.add("Debug of the plan", format!("{plan:?}"));
    c.add(
        "Debug of the plan's tasklist",
        format!("{:?}", plan.tasklist()),
    );
    let mut commands = String::new();
    for stage in &plan.tasklist().stages {
        for entry in &stage.tasks {
            if let TaskEntry::Single(task) = entry {
                commands.push_str(&format!("{task}: {:?}\n", registry.instantiate(task)));
            }
        }
    }
    c.add("Debug of the instantiated commands", commands);
    c.add("saved tasklist (plan)", plan.tasklist().to_json_string());
    c.add("Debug of the report", format!("{report:?}"));
    let error = report.clone().into_result().unwrap_err();
    c.add("run error", error.to_string());
    c.add("Debug of the run error", format!("{error:?}"));
    c.add(
        "stored run",
        format!("{store_record:?}\n{store_hosts:?}\n{store_tasks:?}"),
    );
    c.add("stored tasklist", store_record.tasklist.to_json_string());
    c.add("SQLite files (open)", sqlite_files(&store_path));
    store.close().await;
    c.add("SQLite files (closed)", sqlite_files(&store_path));
    c.add("log lines", log_text());

    c.assert_clean(&[lb, db]);
    // Where the secrets were, `***` shows.
    c.assert_shows("events as JSON lines", "connecting as app with ***");
    c.assert_shows("events as JSON lines", "lb got *** for web");
    c.assert_shows(
        "events as JSON lines",
        "\"stderr_tail\":\"access denied for password ***\"",
    );
    c.assert_shows("events as JSON lines", "\"event\":\"task_retrying\"");
    c.assert_shows("run error", "access denied for password ***");
    c.assert_shows("log lines", "connecting as app with ***");
    c.assert_shows("log lines", "access denied for password ***");
    for name in [
        "Debug of the loaded tasklist",
        "Debug of the plan's tasklist",
        "Debug of the instantiated commands",
    ] {
        c.assert_shows(name, "***");
    }
    for name in ["saved tasklist (plan)", "stored tasklist"] {
        c.assert_shows(name, "\"lb_password\": {\n");
        c.assert_shows(name, "\"secret\": \"***\"");
    }
    c.assert_shows("stored run", "access denied for password ***");
    c.assert_shows("SQLite files (closed)", "\"secret\": \"***\"");
    c.assert_shows("SQLite files (closed)", "access denied for password ***");
    assert_eq!(
        store_record.tasklist.redacted_secrets(),
        [
            "stages[0].tasks[0].lb_password",
            "stages[0].tasks[1].env.DB_PASSWORD",
            "stages[1].tasks[0].env.DB_PASSWORD",
        ]
    );
}

#[tokio::test]
async fn a_local_deploy_shows_its_secrets_nowhere_but_delivers_them() {
    let work = tempfile::tempdir().unwrap();
    deploy_and_grep(
        Arc::new(LocalConnector::new()),
        None,
        work.path(),
        "lb-Secr3t-Zq9xW-7731",
        "db-Secr3t-Kp2vR-4410",
    )
    .await;
}

#[tokio::test]
async fn a_deploy_over_ssh_shows_its_secrets_nowhere_but_delivers_them() {
    let sshd = TestSshd::start().expect("start the test sshd");
    // A directory of the login user on the "remote" side.
    let out = sshd
        .host()
        .execute("mktemp -d", &ExecOptions::new())
        .await
        .expect("mktemp over ssh");
    assert!(out.success(), "{}", out.stderr_str());
    let work = PathBuf::from(out.stdout_str().trim());
    deploy_and_grep(
        Arc::new(sshd.connector()),
        Some("fe001"),
        &work,
        "lb-Ssh-Secr3t-Hm4tY-0921",
        "db-Ssh-Secr3t-Wq8nB-5567",
    )
    .await;
    let _ = std::fs::remove_dir_all(&work);
}

/// A run store keeps no secret, so resuming a run whose tasklist has inline secrets needs the
/// tasklist it was started from — refused, with the places named, without it or with another
/// one — and the resumed task then gets the secret intact.
#[tokio::test]
async fn a_resumed_run_takes_its_redacted_secrets_from_the_original_tasklist() {
    logs();
    const DB: &str = "db-Resume-Secr3t-Jd5cL-8812";
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let out = dir.path().join("env_pw");
    let json = |line: &str| {
        json!({"name": "resume", "stages": [
            {"name": "gate", "concurrency": 1, "tasks": [
                {"command": "execute_command", "command_line": format!("test -e {}", q(&gate))}
            ]},
            {"name": "use", "concurrency": 1, "tasks": [
                {"command": "execute_command", "command_line": line,
                 "env": {"DB_PASSWORD": {"secret": DB}}}
            ]},
        ]})
        .to_string()
    };
    let line = format!("printf '%s' \"$DB_PASSWORD\" > {}", q(&out));
    let original = Tasklist::from_json_str(&json(&line)).unwrap();
    let registry = registry(dir.path());
    let plan = Plan::build_with_redactor(&original, &registry, redactor()).unwrap();
    let store_path = dir.path().join("runs.db");
    let runs =
        Runs::new(Arc::new(SqliteStore::open(&store_path).await.unwrap())).redactor(redactor());
    let executor = Executor::new(Arc::new(LocalConnector::new())).retry_delay(Duration::ZERO);
    let (id, report) = runs
        .start(
            &executor,
            &plan,
            "tasklist:resume.json",
            "tester",
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert!(!out.exists());

    // The stored copy cannot run as it is: the plan names the redacted secret.
    let stored = runs.store().run(&id).await.unwrap().tasklist;
    let err = Plan::build_with_redactor(&stored, &registry, redactor())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stages[1].tasks[0].env.DB_PASSWORD: the secret's value was left out when this tasklist was saved or stored"),
        "{err}"
    );
    assert!(!sqlite_files(&store_path).contains(DB));

    std::fs::write(&gate, "").unwrap();
    let resume = |secrets_from: Option<Tasklist>| {
        runs.resume(
            &executor,
            &registry,
            &id,
            ResumeOptions {
                force: false,
                secrets_from,
                ..Default::default()
            },
            RunOptions::default(),
        )
    };
    match resume(None).await {
        Err(e @ RunsError::SecretsNeeded { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("stages[1].tasks[0].env.DB_PASSWORD")
                    && msg.contains("resume with the tasklist the run was started from")
                    && msg.contains("secret_env"),
                "{msg}"
            );
        }
        other => panic!("expected SecretsNeeded, got {other:?}"),
    }
    let other = Tasklist::from_json_str(&json("echo another line")).unwrap();
    match resume(Some(other)).await {
        Err(e @ RunsError::SecretsMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.ends_with("stages[1].tasks[0] differs"), "{msg}");
        }
        other => panic!("expected SecretsMismatch, got {other:?}"),
    }
    assert!(!out.exists(), "nothing ran while the secrets were missing");

    let report = resume(Some(original)).await.unwrap();
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), DB);
    assert!(!sqlite_files(&store_path).contains(DB));
    assert!(!log_text().contains(DB));
}

/// Validation problems name the place of a misused or malformed secret without echoing it.
#[tokio::test]
async fn validation_problems_never_echo_a_secret() {
    logs();
    const PW: &str = "pw-Valid-Secr3t-Rt6uJ-3390";
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let text = json!({"stages": [{"name": "s", "concurrency": 1, "tasks": [
        // A secret where a number is expected: serde would quote the string.
        {"command": "wait_for_port", "port": {"secret": PW}},
        // A secret that is not a string.
        {"command": "execute_command", "command_line": "true",
         "env": {"A": {"secret": [PW]}}},
        // A secret environment value with a newline cannot be read into a variable.
        {"command": "execute_command", "command_line": "true",
         "env": {"A": {"secret": format!("{PW}\nsecond line")}}},
    ]}]})
    .to_string();
    let err = Plan::build_with_redactor(
        &Tasklist::from_json_str(&text).unwrap(),
        &registry,
        redactor(),
    )
    .unwrap_err()
    .to_string();
    assert!(!err.contains(PW), "{err}");
    assert!(err.contains("stages[0].tasks[0].port"), "{err}");
    assert!(
        err.contains("stages[0].tasks[1].env.A: a secret value must be a string"),
        "{err}"
    );
    assert!(
        err.contains("stages[0].tasks[2].env.A: the secret holds a newline"),
        "{err}"
    );
    assert!(!log_text().contains(PW));
}

/// A command that logs its password with `tracing` (as a careless author might): the log
/// lines `LogFormat` writes show `***`, because the plan registered the secret before the
/// command was initialized.
#[tokio::test]
async fn a_command_logging_its_secret_logs_stars() {
    use deployer_core::{Command, CommandError, ExecContext, Outcome, Stage, Task, TaskArgs};

    #[derive(Debug)]
    struct Careless(String);

    #[deployer_core::async_trait]
    impl Command for Careless {
        fn initialize(args: &TaskArgs<'_>) -> Result<Self, deployer_core::ValidationErrors> {
            let a: Value = args.parse()?;
            let password = a["password"].as_str().unwrap_or_default().to_string();
            tracing::warn!("initializing with password {password}");
            Ok(Careless(password))
        }
        async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> {
            tracing::info!(host = "h", "executing with password {}", self.0);
            Ok(Outcome::done())
        }
    }

    logs();
    const PW: &str = "pw-Careless-Secr3t-Lm2kX-7120";
    let mut registry = CommandRegistry::new();
    registry.register::<Careless>("careless");
    let tasklist = Tasklist::new("careless")
        .stage(Stage::new("s", 1).task(Task::new("careless").secret("password", PW)));
    let plan = Plan::build_with_redactor(&tasklist, &registry, redactor()).unwrap();
    let report = Executor::new(Arc::new(LocalConnector::new()))
        .run(&plan)
        .await;
    assert!(report.succeeded());
    let logs = log_text();
    assert!(!logs.contains(PW), "{logs}");
    assert!(logs.contains("initializing with password ***"), "{logs}");
    assert!(logs.contains("executing with password ***"), "{logs}");
}

/// `execute_command`'s `stdin` reaches the line's standard input after the secret `env`
/// values were read from it; plain `env` values are exported as usual.
#[tokio::test]
async fn execute_command_feeds_stdin_after_the_secret_variables() {
    const PW: &str = "pw-Stdin-Secr3t-Qa1zE-9034";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let host = Arc::new(deployer_remote::LocalHost::new());
    deployer_tests::run(
        host,
        json!({"command": "execute_command",
               "command_line": format!("{{ printf '%s|%s|' \"$PW\" \"$MODE\"; cat; }} > {}", q(&out)),
               "env": {"PW": {"secret": PW}, "MODE": "fast"},
               "stdin": {"secret": "line one\nline two\n"}}),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("{PW}|fast|line one\nline two\n")
    );
}
