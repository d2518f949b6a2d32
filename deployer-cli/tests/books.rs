//! The `books` program on the example library: the deploy book (which calls pause and
//! backup) run against this machine, manual steps acknowledged on the terminal or in advance,
//! durations recorded in a run store, and mistakes reported with where they are.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn library() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join("books/library")
}

/// The example scope, pointed at `root`.
fn scope(dir: &Path, root: &Path) -> PathBuf {
    let text = std::fs::read_to_string(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join("books/scope.json"),
    )
    .unwrap();
    let mut scope: Value = serde_json::from_str(&text).unwrap();
    scope["deployment"]["values"]["root"] = root.to_str().unwrap().into();
    let path = dir.join("scope.json");
    std::fs::write(&path, scope.to_string()).unwrap();
    path
}

fn books(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_books"))
        .args(args)
        .env("USER", "tester")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_example_library_is_valid() {
    let lib = library();
    let out = books(&["check", "--library", lib.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "backup 1.0.0\ndeploy 1.0.0\npause 1.0.0\n"
    );
}

#[test]
fn show_prints_the_job_as_a_tree_with_children_inlined() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    let scope = scope(dir.path(), &root);
    let lib = library();
    let args = [
        "show",
        "--action",
        "deploy",
        "--library",
        lib.to_str().unwrap(),
        "--scope",
        scope.to_str().unwrap(),
    ];
    let out = books(&args, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines[0].starts_with("deploy@1.0.0 for action deploy (draft, job "),
        "{shown}"
    );
    assert_eq!(
        &lines[1..],
        [
            "├─ pause: book pause@1.0.0",
            "│  ├─ root directory: createdirectory on local",
            "│  └─ maintenance flag: writefile on local · estimate 1s, timeout 10s · Write the flag the web server checks",
            "├─ backup: book backup@1.0.0",
            "│  ├─ backup directory: createdirectory on local",
            "│  └─ dump: writefile on local · estimate 30s, timeout 5m, 2 retries",
            "├─ approve: manual · Check the backup before the new version goes live",
            "├─ release: writefile on local · estimate 5s, timeout 50s",
            "├─ resume: removefile on local · Remove the maintenance flag",
            "└─ pause: book pause@1.0.0",
            "   └─ remove maintenance flag: removefile on local · clean-up if the job fails · Take the deployment out of maintenance again",
            "8 steps to run · estimated 36s (4 without an estimate)",
        ],
        "{shown}"
    );

    // A staging deployment skips the backup, and says why.
    let mut staging: Value =
        serde_json::from_str(&std::fs::read_to_string(&scope).unwrap()).unwrap();
    staging["deployment"]["scope"] = "staging".into();
    let staging_file = dir.path().join("staging.json");
    std::fs::write(&staging_file, staging.to_string()).unwrap();
    let mut staging_args = args.to_vec();
    staging_args[6] = staging_file.to_str().unwrap();
    let out = books(&staging_args, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains(
            "\n├─ backup: book backup ^1 · skipped: its condition is false: deployment.scope == 'production'\n├─ approve"
        ),
        "{shown}"
    );
    assert!(
        shown.ends_with("\n6 steps to run, 1 skipped · estimated 6s (3 without an estimate)\n"),
        "{shown}"
    );

    // The whole job as JSON.
    let mut json = args.to_vec();
    json.extend(["--output", "json"]);
    let out = books(&json, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["state"], "draft");
    assert_eq!(job["action"], "deploy");
    let paths: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "deploy/pause/root directory",
            "deploy/pause/maintenance flag",
            "deploy/backup/backup directory",
            "deploy/backup/dump",
            "deploy/approve",
            "deploy/release",
            "deploy/resume",
            "deploy/pause/remove maintenance flag"
        ]
    );
    // pause's clean-up: only if the job fails, and only if pause started.
    assert_eq!(
        job["steps"][7]["cleanup"],
        serde_json::json!({"when": "on_failure", "after": "deploy/pause"})
    );
    assert_eq!(
        job["steps"][3]["data"]["contents"],
        "dump of shop/prod for bucket shop-backups\n"
    );
    assert_eq!(job["steps"][3]["timeout"], 300.0);
    assert!(!root.exists(), "show runs nothing");
}

#[test]
fn run_deploys_on_this_machine_and_records_durations() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    let scope = scope(dir.path(), &root);
    let store = dir.path().join("runs.db");
    let lib = library();
    let args = [
        "run",
        "deploy",
        "--library",
        lib.to_str().unwrap(),
        "--scope",
        scope.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];
    // The manual step is approved on the terminal (an empty line asks again).
    let out = books(&args, Some("\nyes\n\n"));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("approve deploy/approve as tester? [yes/no]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("step deploy/backup/dump\n  writefile on local: succeeded"),
        "{stdout}"
    );
    assert!(stdout.contains(" done\nrun "), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(root.join("prod.version")).unwrap(),
        "1.4.2\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("backups/prod.dump")).unwrap(),
        "dump of shop/prod for bucket shop-backups\n"
    );
    assert!(!root.join("ns-9a2f3b5c6d7e8f90-prod.maintenance").exists());

    // The next job takes its estimates from the recorded run.
    let mut show = args.to_vec();
    show[0] = "show";
    show.extend(["--output", "json"]);
    let out = books(&show, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["steps"][3]["estimate_source"], "history");
    let out = books(&show[..show.len() - 2], None);
    let tree = text(&out.stdout);
    assert!(
        tree.contains("└─ dump: writefile on local · estimate ")
            && tree.contains(" (history), timeout "),
        "{tree}"
    );

    // Without an answer (end of input, Ctrl-D) the manual step fails without a decision: the
    // job fails, nothing after it runs, and pause's clean-up takes the deployment out of
    // maintenance again. --yes approves in advance.
    let out = books(&args, None);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a failed job: {stdout}");
    assert!(
        stdout.contains("no decision (end of input): stopping"),
        "{stdout}"
    );
    assert!(
        stdout.contains("failed: step deploy/approve got no decision: the terminal's input ended"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "step deploy/pause/remove maintenance flag\n  removefile on local: succeeded"
        ),
        "{stdout}"
    );
    assert!(stdout.contains(" error\nrun "), "{stdout}");
    assert!(!stdout.contains("step deploy/release"), "{stdout}");
    assert!(!root.join("ns-9a2f3b5c6d7e8f90-prod.maintenance").exists());
    let mut yes = args.to_vec();
    yes.push("--yes");
    let out = books(&yes, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("[yes/no]"));
}

#[test]
fn mistakes_are_reported_with_where_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\nversion: 1.0.0\nsteps:\n- name: s\n  command: writefil\n",
    )
    .unwrap();
    let out = books(&["check", "--library", dir.path().to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml:5:12: steps[0].command: unknown command \"writefil\"; did you mean \"writefile\"?"),
        "{err}"
    );

    let root = dir.path().join("srv");
    let scope = scope(dir.path(), &root);
    let lib = library();
    let out = books(
        &[
            "show",
            "--action",
            "restore",
            "--library",
            lib.to_str().unwrap(),
            "--scope",
            scope.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no book for action \"restore\""));
}
