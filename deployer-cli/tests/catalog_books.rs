//! A lifecycle action triggered in the catalog builds its book's job and runs it on this
//! machine: the object model, books and the executor end to end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn catalog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_catalog"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A catalog whose cluster is this machine and whose deployments live under `root`.
fn write_catalog(dir: &Path, root: &Path) -> String {
    let yaml = format!(
        r#"admins: [root]
clusters:
  - {{uid: 0190f3a2-0000-7000-8000-00000000c001, name: here, state: active, hosts: [local]}}
repositories:
  - slug: shop-app
    url: https://git.example.com/shop/app.git
    branches: [main]
    images:
      - {{slug: app, name: registry.example.com/shop/app, versions: ["2.0.1"]}}
datasources:
  - {{slug: backups, data_type: s3like, usage: remote_backup, bucket: shop-backups, connection: "s3://KEY:SECRET@s3.example.com"}}
projects:
  - slug: shop
    name: Shop
    owner: alice
    users:
      - {{user: alice, role: admin}}
      - {{user: bob, role: user}}
    groups:
      - slug: web
        group_type: odoo
        clusters: [here]
        scopes:
          - {{slug: production, production: true, backup_datasource: backups}}
        defaults:
          deployment_type: odoo
          branch: {{repository: shop-app, branch: main}}
          image: {{repository: shop-app, image: app}}
          books: {{deploy: deploy, pause: pause, backup: backup}}
          values: {{root: "{root}"}}
        deployments:
          - slug: prod
            settings: {{scope: production, subdomain: www}}
"#,
        root = root.display()
    );
    let path = dir.join("catalog.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

#[test]
fn triggering_deploy_runs_the_deploy_book_which_calls_pause_and_backup() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    let file = write_catalog(dir.path(), &root);
    let base = ["--file", file.as_str(), "trigger", "shop/prod", "deploy"];

    // The job, built from the deployment's deploy slot, without running it.
    let mut args = base.to_vec();
    args.extend(["--as", "alice", "--library", "books/library"]);
    let out = catalog(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let tree = text(&out.stdout);
    assert!(
        tree.starts_with("deploy@1.0.0 for action deploy (draft, job "),
        "{tree}"
    );
    assert!(
        tree.contains("│  └─ dump: writefile on local · estimate 30s, timeout 5m, 2 retries\n"),
        "{tree}"
    );
    args.extend(["--output", "json"]);
    let out = catalog(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"deploy/pause/maintenance flag"),
        "{paths:?}"
    );
    assert!(paths.contains(&"deploy/backup/dump"), "{paths:?}");
    assert!(!root.exists(), "building a job touches no host");

    // A read-only user may not trigger it at all.
    let mut args = base.to_vec();
    args.extend([
        "--as",
        "bob",
        "--library",
        "books/library",
        "--run",
        "--yes",
    ]);
    let out = catalog(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(!root.exists());

    // Without --yes the manual step asks; with no input to answer (stdin is empty, not a
    // terminal) nobody decides: the step fails, the job fails and pause's clean-up removes
    // the maintenance flag.
    let mut args = base.to_vec();
    args.extend(["--as", "alice", "--library", "books/library", "--run"]);
    let out = catalog(&args);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("approve deploy/approve as alice? [yes/no]")
            && stdout.contains("no decision (end of input): stopping")
            && stdout.contains("remove maintenance flag removefile on local: succeeded"),
        "{stdout}"
    );
    assert!(!root.join("prod.version").exists(), "{stdout}");
    assert_eq!(maintenance_flags(&root), 0, "{stdout}");

    let mut args = base.to_vec();
    args.extend([
        "--as",
        "alice",
        "--library",
        "books/library",
        "--run",
        "--yes",
    ]);
    let out = catalog(&args);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains(" done"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(root.join("prod.version")).unwrap(),
        "2.0.1\n"
    );
    let dump = std::fs::read_to_string(root.join("backups/prod.dump")).unwrap();
    assert!(dump.contains("for bucket shop-backups"), "{dump}");
    assert!(
        !dump.contains("SECRET"),
        "the connection string stays out of the scope"
    );
    assert_eq!(
        maintenance_flags(&root),
        0,
        "the resume step removed the maintenance flag"
    );
}

/// How many maintenance flags are left under `root`.
fn maintenance_flags(root: &Path) -> usize {
    std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".maintenance"))
        .count()
}

/// `examples/catalog.yaml` with its deployments' `root` moved under `dir` (the example books
/// write there), so the test shares nothing with the README walkthrough's
/// `/tmp/deployer-books-example`.
fn example_catalog(dir: &Path) -> (String, PathBuf) {
    let examples = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"));
    let yaml = std::fs::read_to_string(examples.join("catalog.yaml")).unwrap();
    let root = dir.join("srv");
    let from = "root: /tmp/deployer-books-example";
    assert_eq!(
        yaml.matches(from).count(),
        1,
        "examples/catalog.yaml changed"
    );
    let yaml = yaml.replace(from, &format!("root: {}", root.display()));
    let path = dir.join("catalog.yaml");
    std::fs::write(&path, yaml).unwrap();
    (path.display().to_string(), root)
}

/// `catalog ARGS` at a pseudo-terminal (`script`) from `examples/`, typing `input`; returns
/// the exit status and the screen.
fn catalog_at_terminal(args: &[&str], input: &str) -> (Option<i32>, String) {
    let line = std::iter::once(env!("CARGO_BIN_EXE_catalog"))
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), text(&out.stdout))
}

/// `deploy runs show RUN` of the SQLite run store `store`.
fn runs_show(store: &str, run: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(["--store", &format!("sqlite://{store}"), "runs", "show", run])
        .env_remove("DEPLOYER_STORE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The run a screen names (`run ID` after the job line).
fn run_id(screen: &str) -> String {
    screen
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("run "))
        .unwrap_or_else(|| panic!("the run is named: {screen}"))
        .to_string()
}

#[test]
fn trigger_run_asks_at_the_terminal_as_the_acting_user_and_records_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let (file, root) = example_catalog(dir.path());
    let store = dir.path().join("runs.db").display().to_string();
    let args = [
        "--file",
        file.as_str(),
        "trigger",
        "shop/prod",
        "deploy",
        "--as",
        "alice",
        "--library",
        "books/library",
        "--run",
        "--store",
        store.as_str(),
    ];

    // `no` rejects (after `maybe` asked again): the job fails naming alice and why, nothing
    // is released, and pause's clean-up removes the maintenance flag pause had written.
    let (code, screen) = catalog_at_terminal(&args, "maybe\nno\nnot during the sale\n");
    assert_eq!(code, Some(1), "{screen}");
    assert_eq!(
        screen
            .matches("approve deploy/approve as alice? [yes/no]")
            .count(),
        2,
        "asked again after maybe: {screen}"
    );
    assert!(
        screen.contains("answer yes or no (not \"maybe\")"),
        "{screen}"
    );
    assert!(
        screen.contains("deploy/pause/maintenance flag writefile on local: succeeded"),
        "{screen}"
    );
    assert!(
        screen.contains("failed: step deploy/approve rejected by alice at ")
            && screen.contains(": \"not during the sale\""),
        "{screen}"
    );
    assert!(
        screen.contains("remove maintenance flag removefile on local: succeeded"),
        "{screen}"
    );
    assert!(!root.join("prod.version").exists(), "{screen}");
    assert_eq!(maintenance_flags(&root), 0, "{screen}");
    let shown = runs_show(&store, &run_id(&screen));
    assert!(
        shown.contains("deploy/approve  rejected  alice")
            && shown.contains("\"not during the sale\""),
        "{shown}"
    );

    // `yes` approves: the release goes ahead, and the run records alice as its starter and
    // as the approver, with her comment.
    let (code, screen) = catalog_at_terminal(&args, "yes\nbackup checked\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("approve deploy/approve as alice? [yes/no]"),
        "{screen}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("prod.version")).unwrap(),
        "1.4.2\n"
    );
    assert_eq!(maintenance_flags(&root), 0, "{screen}");
    let shown = runs_show(&store, &run_id(&screen));
    assert!(
        shown.contains("deploy/approve  approved  alice") && shown.contains("\"backup checked\""),
        "{shown}"
    );
    assert!(shown.contains("by        alice"), "{shown}");
}
