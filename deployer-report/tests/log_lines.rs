//! The log-line format: executor events through `TracingSink`, printed by `LogFormat` in the
//! seed's shape.

// The executor tests' in-memory `work` command.
#[path = "../../deployer-core/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use deployer_core::fixture::FakeConnector;
use deployer_core::{Executor, Plan, Stage, Tasklist};
use deployer_report::{LogFormat, TracingSink};

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

#[test]
fn log_lines_have_the_seed_shape() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .event_format(LogFormat::default())
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let (registry, _) = common::registry();
    let tasklist = Tasklist::new("logs").stage(Stage::new("Test stage", 1).tasks(vec![
            common::work("fe001", "ok").tag("web"),
            common::work("fe002", "bad").arg("fail", true).arg("exit", 2),
        ]));
    let plan = Plan::build(&tasklist, &registry).unwrap();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(component = "Config", "Loading configuration from test.conf");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(
            Executor::new(Arc::new(FakeConnector::new()))
                .sink(TracingSink)
                .run(&plan),
        );
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Strip the timestamp (first word), check it looks like one.
    let body: Vec<&str> = lines
        .iter()
        .map(|l| {
            let (time, rest) = l.split_once(' ').unwrap();
            assert!(
                time.len() >= 20 && time.as_bytes()[4] == b'-' && time.contains('T'),
                "{l}"
            );
            rest
        })
        .collect();
    assert_eq!(
        body[0],
        "[INFO    ] [Config         ] [*] [*] Loading configuration from test.conf"
    );
    assert_eq!(
        body[1],
        "[INFO    ] [Executor       ] [*] [*] Starting run: logs (1 stages, 2 tasks)"
    );
    assert_eq!(
        body[2],
        "[INFO    ] [Executor       ] [*] [*] Starting stage: Test stage (2 tasks)"
    );
    assert_eq!(
        body[3],
        "[INFO    ] [Executor       ] [fe001] [web] Executing work"
    );
    assert_eq!(
        body[4],
        "[DEBUG   ] [Executor       ] [fe001] [web] out: work ok attempt 1"
    );
    assert!(
        body[5].starts_with("[INFO    ] [Executor       ] [fe001] [web] Finished work in "),
        "{}",
        body[5]
    );
    assert_eq!(
        body[6],
        "[INFO    ] [Executor       ] [fe002] [*] Executing work"
    );
    assert!(
        body.iter().any(|l| l.starts_with(
            "[ERROR   ] [Executor       ] [fe002] [*] work failed: work bad failed (exit status 2)"
        )),
        "{text}"
    );
    assert!(
        body.contains(&"[ERROR   ] [Executor       ] [*] [*] Stage failed: Test stage"),
        "{text}"
    );
}
