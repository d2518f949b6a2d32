//! A lifecycle action triggered in the catalog builds its book's job and runs it on this
//! machine: the object model, books and the executor end to end.

use std::path::Path;
use std::process::{Command, Output};

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

    // A job with a manual step is not run unattended without --yes.
    let mut args = base.to_vec();
    args.extend(["--as", "alice", "--library", "books/library", "--run"]);
    let out = catalog(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("manual steps (deploy/approve)"),
        "{}",
        text(&out.stderr)
    );

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
    let leftover: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".maintenance"))
        .collect();
    assert!(
        leftover.is_empty(),
        "the resume step removed the maintenance flag"
    );
}
