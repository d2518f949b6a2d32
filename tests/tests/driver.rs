//! The `Driver` with real hosts: a connector that cannot serve a host is found out when the
//! plan is built (exit 2, nothing run), a rehearsal plays every host here, and the events'
//! running totals end equal to the report's counts.

use std::sync::Arc;

use deployer_core::fixture::EventLog;
use deployer_core::{Config, Driver, EventKind, MemoryStore, exit};
use deployer_remote::LocalConnector;

fn config(dir: &std::path::Path) -> Config {
    let yaml = format!(
        "platform: files\nroot: {}\nhosts: [fe001, fe002, fe003]\n",
        dir.display()
    );
    Config::from_yaml_str(&yaml, "files.yaml").unwrap()
}

/// Plans one directory per host under `root`, then a failing check on `fe003`.
struct Files;

#[deployer_core::async_trait]
impl deployer_core::Generator for Files {
    async fn generate(
        &self,
        ctx: &deployer_core::GeneratorContext,
    ) -> Result<deployer_core::Tasklist, deployer_core::GeneratorError> {
        use deployer_core::{Stage, Task, Tasklist};
        let root: String = ctx.config().require("root")?;
        let hosts: Vec<String> = ctx.config().require("hosts")?;
        let mkdir = hosts.iter().map(|h| {
            Task::new("createdirectory")
                .on(h)
                .arg("source", format!("{root}/{h}"))
        });
        let check = Task::new("execute_command")
            .on("fe003")
            .arg("command_line", "exit 3");
        Ok(Tasklist::new("files")
            .stage(Stage::new("Directories", 2).tasks(mkdir))
            .stage(Stage::new("Check", 1).task(check))
            .stage(Stage::new("Never", 1).task(Task::new("createdirectory").arg("source", "/x"))))
    }
}

fn driver(connector: LocalConnector) -> Driver {
    Driver::new(Arc::new(connector))
        .generator("files", Files)
        .commands(deployer_tests::registry())
        .handle_signals(false)
}

#[tokio::test]
async fn a_host_the_connector_cannot_serve_is_bad_input_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let finished = driver(LocalConnector::new())
        .deploy(config(dir.path()))
        .await;
    assert_eq!(finished.exit_code(), exit::BAD_INPUT);
    let message = finished.error_message().unwrap();
    for host in ["fe001", "fe002", "fe003"] {
        assert!(
            message.contains(&format!(
                "{host}: this connector only runs commands on this machine"
            )),
            "{message}"
        );
    }
    assert!(
        message.contains("stages[0].tasks[0].remote_host"),
        "{message}"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing ran"
    );
}

#[tokio::test]
async fn a_rehearsal_plays_every_host_here_and_counts_agree() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::new());
    let store = Arc::new(MemoryStore::new());
    let finished = driver(LocalConnector::rehearsal())
        .store(store.clone())
        .sink(log.clone())
        .deploy(config(dir.path()))
        .await;
    assert_eq!(
        finished.exit_code(),
        exit::FAILED,
        "{:?}",
        finished.error_message()
    );
    for host in ["fe001", "fe002", "fe003"] {
        assert!(dir.path().join(host).is_dir(), "{host}");
    }
    let report = finished.result.as_ref().unwrap();
    let events = log.events();
    let last = events.last().unwrap();
    assert!(matches!(last.kind, EventKind::RunFinished { .. }));
    assert_eq!(last.stats, Some(report.counts));
    assert_eq!(
        (
            report.counts.succeeded,
            report.counts.failed,
            report.counts.not_run
        ),
        (3, 1, 1)
    );
    // Every event carries the run's id.
    let id = finished.run_id.clone().unwrap();
    assert!(events.iter().all(|e| e.run_id.as_ref() == Some(&id)));
    // The running totals only grow, one task at a time.
    let totals: Vec<usize> = events
        .iter()
        .filter_map(|e| e.stats)
        .map(|s| s.total())
        .collect();
    assert!(
        totals.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= 1),
        "{totals:?}"
    );
    assert_eq!(log.max_in_flight_in_stage(0), (2, 1));
}

/// `cleanup` lists its directory as NUL-separated records for itself: none of that reaches the
/// events (`deploy -v` printed them as `out:` lines).
#[tokio::test]
async fn a_command_reading_machine_output_streams_none_of_it() {
    use deployer_core::{Executor, Plan, Stage, Task, Tasklist};
    let dir = tempfile::tempdir().unwrap();
    for name in ["1.0.0", "1.1.0", "1.2.0"] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
    }
    let tasklist = Tasklist::new("clean").stage(
        Stage::new("s", 1).task(
            Task::new("cleanup")
                .arg("path", dir.path().display().to_string())
                .arg("keepversions", 1),
        ),
    );
    let plan = Plan::build(&tasklist, &deployer_tests::registry()).unwrap();
    let log = Arc::new(EventLog::new());
    let report = Executor::new(Arc::new(LocalConnector::new()))
        .sink(log.clone())
        .run(&plan)
        .await;
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let lines: Vec<String> = log
        .kinds()
        .into_iter()
        .filter_map(|k| match k {
            EventKind::TaskOutput { line, .. } => Some(line),
            _ => None,
        })
        .collect();
    // What it says to a person, and nothing of the listing (`mtime \t type \t name \0`).
    assert_eq!(
        lines,
        ["removing old version 1.1.0", "removing old version 1.0.0"],
        "{lines:?}"
    );
}
