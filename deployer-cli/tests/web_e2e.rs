//! The run viewer (`deploy serve`) in a real headless Chromium, while real deploys run in
//! other processes over real SSH (a loopback `TestFleet`), recorded in a real SQLite store.

#[path = "common/browser.rs"]
mod browser;
#[path = "common/scenario.rs"]
mod scenario;

use std::time::Duration;

use scenario::{STEP, Scenario, text};

/// The scenario the browser test watches works from the command line alone: the deploy
/// waits at its manual step (alice started it and may not approve it: four-eyes), dave
/// (user) is refused, bob (developer) approves from another process, and the deploy goes on
/// and exits 0 with bob's decision stored; a second deploy fails on one host (exit 1).
#[test]
fn the_scenario_runs_from_the_command_line() {
    let s = Scenario::new(3);
    let failed = s.failed_run();
    let shown = text(&s.deploy(&["runs", "show", &failed]).stdout);
    assert!(shown.contains("state     FAILED"), "{shown}");

    let mut live = s.start_deploy();
    let screen = live.wait_for(
        "waiting for a decision from another process",
        Duration::from_secs(30),
    );
    assert!(
        screen.contains("alice may not decide step deploy/approve"),
        "{screen}"
    );
    let run = s.wait_for_run("RUNNING", Duration::from_secs(5));
    let store = s.store();
    let catalog = s.catalog();
    let decide = |verb: &str, who: &str| {
        s.books(&[
            verb,
            &run,
            STEP,
            "--store",
            store.to_str().unwrap(),
            "--catalog",
            catalog.to_str().unwrap(),
            "--as",
            who,
            "--comment",
            "checked",
        ])
    };
    let refused = decide("approve", "dave");
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("dave holds user"),
        "{}",
        text(&refused.stderr)
    );
    let approved = decide("approve", "bob");
    assert_eq!(
        approved.status.code(),
        Some(0),
        "{}",
        text(&approved.stderr)
    );
    let (code, screen) = live.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{screen}");
    let shown = text(&s.deploy(&["runs", "show", &run]).stdout);
    assert!(shown.contains("state     SUCCEEDED"), "{shown}");
    assert!(shown.contains("deploy/approve  approved  bob"), "{shown}");
}
