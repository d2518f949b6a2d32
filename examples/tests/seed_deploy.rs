//! The example program, run as a user runs it: exit codes, messages, files.

use std::process::{Command, Output};

fn seed_deploy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seed-deploy"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn runs_the_seed_example_and_logs_in_the_seed_shape() {
    let out = seed_deploy(&["--config", "test.conf", "-v"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for expected in [
        "[INFO    ] [Config         ] [*] [*] Loading configuration from test.conf",
        "[INFO    ] [TestGenerator  ] [*] [*] Generating test task list",
        "[INFO    ] [TestCommand    ] [*] [*] Initializing test command: Hello World / None",
        "[INFO    ] [Executor       ] [*] [*] Starting stage: Test stage (1 tasks)",
        "[INFO    ] [Executor       ] [local] [*] Executing test_command",
        "[DEBUG   ] [Executor       ] [local] [*] out: Executing test command: Hello World / None",
        "[INFO    ] [Executor       ] [*] [*] Run succeeded",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in\n{stderr}"
        );
    }
}

#[test]
fn dry_run_says_syntax_ok_and_runs_nothing() {
    let out = seed_deploy(&["--config", "test.conf", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "Syntax ok\n");
    assert!(!text(&out.stderr).contains("Executing"));
}

#[test]
fn dump_and_save_give_the_same_canonical_tasklist_which_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("tasklist.json");
    let saved = saved.to_str().unwrap();
    let out = seed_deploy(&[
        "--config",
        "test.conf",
        "--set",
        "message=from the command line",
        "--dump",
        "--save",
        saved,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let dumped = text(&out.stdout);
    assert_eq!(std::fs::read_to_string(saved).unwrap(), dumped);
    assert!(
        dumped.contains("\"message\": \"from the command line\""),
        "{dumped}"
    );
    let out = seed_deploy(&["--tasklist", saved, "-v"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("from the command line / None"));
}

#[test]
fn bad_input_exits_2_with_where_and_what() {
    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_yaml,
        "platform: test\nservice:\n  web:\n    port: http\n",
    )
    .unwrap();
    let out = seed_deploy(&["--config", bad_yaml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("error: {}:4:11:", bad_yaml.display())),
        "{}",
        text(&out.stderr)
    );

    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(&unknown, "platform: tset\n").unwrap();
    let out = seed_deploy(&["--config", unknown.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("unknown platform \"tset\" (known: test); did you mean \"test\"?")
    );

    let tasklist = dir.path().join("t.json");
    std::fs::write(
        &tasklist,
        r#"{"name": "t", "stages": [{"name": "s", "concurrency": 1, "tasks": [
            {"command": "test_comand", "message": "x"},
            {"command": "test_command", "mesage": "x"}]}]}"#,
    )
    .unwrap();
    let out = seed_deploy(&["--tasklist", tasklist.to_str().unwrap(), "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("2 problems found"), "{stderr}");
    assert!(stderr.contains("stages[0].tasks[0].command: unknown command \"test_comand\" (expected a registered command); did you mean \"test_command\"?"), "{stderr}");
    assert!(
        stderr.contains("stages[0].tasks[1].mesage: unknown argument \"mesage\""),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("Syntax ok"));
}

#[test]
fn a_failing_task_exits_1_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let tasklist = dir.path().join("t.json");
    // `remote_host: local` with a user asks the local connector for a remote login: refused.
    std::fs::write(
        &tasklist,
        r#"{"name": "t", "stages": [{"name": "s", "concurrency": 1, "tasks": [
            {"command": "test_command", "remote_host": "fe001", "tag": "web", "message": "x"}]}]}"#,
    )
    .unwrap();
    let out = seed_deploy(&["--tasklist", tasklist.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .contains("Execution failed: run \"t\" failed in stage \"s\": 1 task did not succeed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stages[0].tasks[0] test_command on fe001 [web]"),
        "{stderr}"
    );
}
