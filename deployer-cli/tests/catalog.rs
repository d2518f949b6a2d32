//! The `catalog` program, run as a user runs it: loading the example catalog, what each user
//! sees, triggering as allowed and refused users, publishing, exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn example() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join("catalog.yaml")
}

fn catalog(file: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_catalog"))
        .arg("--file")
        .arg(file)
        .args(args)
        .env_remove("DEPLOYER_CATALOG")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}): {}", text(&out.stdout)))
}

#[test]
fn the_example_catalog_is_valid() {
    let out = catalog(&example(), &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Catalog ok\n");
}

#[test]
fn show_lists_what_the_user_may_see() {
    let out = catalog(&example(), &["show", "--as", "bob"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("project shop (Shop) owner alice namespace ns-9a2f3b5c6d7e8f90"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "deployment shop/prod scope=production clusters=[local (active)] books=[deploy=deploy, pause=pause, backup=backup]"
        ),
        "{shown}"
    );
    let out = catalog(&example(), &["show", "--as", "mallory"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "(no project visible to mallory)\n");
    let out = catalog(&example(), &["show", "--as", "alice", "--json"]);
    assert_eq!(json(&out)[0]["slug"], "shop");
    assert!(!text(&out.stdout).contains("wJalrXUtnFEMI"));
}

#[test]
fn a_developer_triggers_an_action_and_gets_the_request_for_the_books_engine() {
    let out = catalog(
        &example(),
        &["trigger", "shop/prod", "deploy", "--as", "alice"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("would hand to the books engine: deploy of shop/prod with book \"deploy\""),
        "{}",
        text(&out.stderr)
    );
    let requests = json(&out);
    let request = &requests[0];
    assert_eq!(request["action"], "deploy");
    assert_eq!(request["book"], "deploy");
    assert_eq!(request["deployment"]["project"], "shop");
    assert_eq!(
        request["triggered_by"],
        serde_json::json!({"kind": "user", "user": "alice"})
    );
    let scope = &request["scope"];
    assert_eq!(scope["deployment"]["subdomain"], "www");
    assert_eq!(scope["deployment"]["image"]["version"], "1.4.2");
    assert_eq!(scope["backup_datasource"]["bucket"], "shop-backups");
    assert_eq!(scope["backup_datasource"]["connection"], "***");
    assert!(
        !text(&out.stdout).contains("wJalrXUtnFEMI"),
        "the secret never shows"
    );

    // carol develops the web group through a group override.
    let out = catalog(
        &example(),
        &["trigger", "shop/staging", "backup", "--as", "carol"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out)[0]["book"], "backup");
}

#[test]
fn a_read_only_user_is_refused_with_exit_code_2() {
    for (user, role) in [("bob", "user"), ("dave", "user")] {
        let out = catalog(
            &example(),
            &["trigger", "shop/prod", "deploy", "--as", user],
        );
        assert_eq!(out.status.code(), Some(2), "{user}");
        assert!(out.stdout.is_empty(), "no request is printed");
        assert_eq!(
            text(&out.stderr),
            format!(
                "error: user \"{user}\" may not trigger actions on deployment shop/prod: \
                 their role there is {role} (needs role developer or admin)\n"
            )
        );
    }
    let out = catalog(
        &example(),
        &["trigger", "shop/prod", "deploy", "--as", "mallory"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("they have no role there"),
        "{}",
        text(&out.stderr)
    );
    // dave is a developer everywhere but prod.
    let out = catalog(
        &example(),
        &["trigger", "shop/staging", "deploy", "--as", "dave"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn publishing_an_image_requests_a_deploy_of_subscribers() {
    let out = catalog(
        &example(),
        &["publish", "shop-app/app", "1.5.0", "--as", "root"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let requests = json(&out);
    let requests = requests.as_array().unwrap();
    assert_eq!(requests.len(), 1, "only prod subscribes");
    assert_eq!(requests[0]["deployment"]["deployment"], "prod");
    assert_eq!(requests[0]["triggered_by"]["kind"], "image_published");
    assert_eq!(
        requests[0]["scope"]["deployment"]["image"]["version"],
        "1.5.0"
    );
}

#[test]
fn scope_prints_what_books_see() {
    let out = catalog(&example(), &["scope", "shop/staging", "--as", "bob"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let scope = json(&out);
    assert_eq!(
        scope["deployment"]["subdomain"], "",
        "unset fields are empty"
    );
    assert_eq!(scope["deployment"]["branch"]["branch"], "develop");
    assert_eq!(scope["cluster"]["hosts"][0], "local");
    assert_eq!(
        scope["deployment"]["resource_prefix"],
        "ns-9a2f3b5c6d7e8f90-staging"
    );
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "projects: [{slug: Shop, owner: a}]\n",
            &["check"],
            "\"Shop\" is not a valid slug: 'S' is not allowed",
        ),
        (
            "projects:\n  - {slug: shop, owner: a}\n  - {slug: shop, owner: b}\n",
            &["check"],
            "error: duplicate project \"shop\" in the catalog",
        ),
        (
            "projects:\n  - slug: shop\n    owner: a\n    groups:\n      - {slug: web, group_type: odoo, clusters: [eu-9]}\n",
            &["check"],
            "error: group shop/web: clusters refers to cluster \"eu-9\", which does not exist (there are none)",
        ),
        (
            "projects: [{slug: shop, owner: a}]\n",
            &["trigger", "shop/prod", "deploy", "--as", "a"],
            "error: no deployment \"shop/prod\"",
        ),
        (
            "projects: [{slug: shop, owner: a}]\n",
            &["trigger", "shop", "deploy", "--as", "a"],
            "error: deployment \"shop\": expected PROJECT/DEPLOYMENT",
        ),
    ];
    for (i, (yaml, args, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let out = catalog(&file, args);
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        assert!(
            text(&out.stderr).contains(expected),
            "{yaml}: {}",
            text(&out.stderr)
        );
    }
    let out = catalog(&dir.path().join("missing.yaml"), &["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read it"),
        "{}",
        text(&out.stderr)
    );
}

/// A one-thread HTTP server on 127.0.0.1 answering each connection with the next of `replies`
/// (status, body), then closing; returns its URL.
fn http_server(replies: Vec<(u16, &'static str)>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (status, body) in replies {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            // Read the request head.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[tokio::test]
async fn monitors_check_a_real_http_server_with_curl() {
    use deployer_catalog::*;
    use deployer_commands::CurlChecker;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    let url = http_server(vec![(200, "hello shop"), (503, "down"), (200, "hello")]);
    let yaml = format!(
        r#"
projects:
  - slug: shop
    owner: alice
    users: [{{user: alice, role: admin}}]
    groups:
      - slug: web
        group_type: odoo
        deployments:
          - slug: prod
            monitors:
              - slug: health
                interval_seconds: 10
                check: {{type: http_request, url: "{url}", body_contains: shop}}
          - slug: down
            monitors:
              - slug: health
                check: {{type: http_request, url: "http://127.0.0.1:1/", timeout_seconds: 5}}
"#
    );
    let data = CatalogData::from_yaml_str(&yaml, "monitors.yaml").unwrap();
    let store = Arc::new(MemoryCatalog::with(data));
    let checker = Arc::new(CurlChecker::new(
        Arc::new(deployer_remote::LocalHost::new()),
    ));
    let runner = MonitorRunner::new(store.clone(), checker);
    let t0 = SystemTime::now();
    let state = |statuses: &[MonitorStatus], d: &str| {
        let s = statuses
            .iter()
            .find(|s| s.deployment.deployment == d)
            .unwrap();
        (s.state, s.last.as_ref().unwrap().message.clone())
    };

    let first = runner.run_due(t0).await.unwrap();
    assert_eq!(state(&first, "prod"), (MonitorState::Ok, String::new()));
    let (down, message) = state(&first, "down");
    assert_eq!(down, MonitorState::Warning, "one failure");
    assert!(message.contains("curl"), "{message}");

    let second = runner.run_due(t0 + Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        state(&second, "prod"),
        (
            MonitorState::Warning,
            "status 503, expected 200".to_string()
        )
    );
    let third = runner.run_due(t0 + Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        state(&third, "prod"),
        (
            MonitorState::Warning,
            "the body does not contain \"shop\"".to_string()
        ),
        "two failures in a row"
    );
    let log = store.monitor_log("shop/prod/health", 10).await.unwrap();
    let statuses: Vec<Option<u16>> = log.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [Some(200), Some(503), Some(200)], "newest first");
}

fn catalog_in(store: &str, file: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catalog"));
    cmd.arg("--store").arg(store);
    if let Some(file) = file {
        cmd.arg("--file").arg(file);
    }
    cmd.args(args)
        .env_remove("DEPLOYER_CATALOG")
        .env_remove("DEPLOYER_CATALOG_STORE")
        .output()
        .expect("the binary runs")
}

#[test]
fn a_store_keeps_the_catalog_between_calls() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("catalog.db").display());

    let out = catalog_in(&store, Some(&example()), &["import", "--as", "root"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Catalog stored (revision 1)\n");
    let out = catalog_in(&store, Some(&example()), &["import", "--as", "alice"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: user \"alice\" may not manage the catalog (projects and shared objects): only catalog admins may\n"
    );

    let out = catalog_in(
        &store,
        None,
        &["publish", "shop-app/app", "1.5.0", "--as", "root"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out).as_array().unwrap().len(), 1);
    // The new version was stored.
    let out = catalog_in(
        &store,
        None,
        &["publish", "shop-app/app", "1.5.0", "--as", "root"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("version 1.5.0 is already the current version"),
        "{}",
        text(&out.stderr)
    );
    let out = catalog_in(&store, None, &["scope", "shop/prod", "--as", "bob"]);
    assert_eq!(json(&out)["deployment"]["image"]["version"], "1.5.0");
    let out = catalog_in(
        &store,
        None,
        &["trigger", "shop/prod", "deploy", "--as", "bob"],
    );
    assert_eq!(out.status.code(), Some(2));

    let out = catalog(&example(), &["import", "--as", "root"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), "error: import needs --store URL\n");
}

#[test]
fn the_monitors_command_runs_due_checks_and_keeps_their_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("catalog.db").display());
    // One answer only: a second check would fail.
    let url = http_server(vec![(200, "ok")]);
    let file = dir.path().join("catalog.yaml");
    std::fs::write(
        &file,
        format!(
            "projects:\n  - slug: shop\n    owner: a\n    groups:\n      - slug: web\n        \
             group_type: odoo\n        deployments:\n          - slug: prod\n            \
             monitors:\n              - slug: health\n                check: {{type: \
             http_request, url: \"{url}\"}}\n"
        ),
    )
    .unwrap();
    let out = catalog_in(&store, Some(&file), &["import", "--as", "a"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = catalog_in(&store, None, &["monitors"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "shop/prod/health ok\n");
    // Checked a moment ago (interval 60 s): not due, the stored result stands.
    let out = catalog_in(&store, None, &["monitors"]);
    assert_eq!(text(&out.stdout), "shop/prod/health ok\n");
}

/// The example catalog with `from` replaced by `to` (which must occur), written to `dir`.
fn example_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let yaml = std::fs::read_to_string(example()).unwrap();
    assert!(yaml.contains(from), "{from}");
    let path = dir.join("catalog.yaml");
    std::fs::write(&path, yaml.replacen(from, to, 1)).unwrap();
    path
}

/// A refusal: exit 2, nothing on stdout, `message` on stderr.
fn assert_refused(out: &Output, message: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(text(&out.stderr), format!("error: {message}\n"));
}

/// Issue 19: carol, with no project role and a developer override on group web, was shown
/// "(no project visible)" and yet could trigger and read scopes. Now what she sees and what
/// she may do come from the same rule.
#[test]
fn carol_sees_and_acts_on_her_group_only() {
    let out = catalog(&example(), &["show", "--as", "carol"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "project shop (Shop) owner alice namespace ns-9a2f3b5c6d7e8f90 role=none\n\
         \x20 group web [odoo] role=developer\n\
         \x20   deployment shop/prod scope=production clusters=[local (active)] books=[deploy=deploy, pause=pause, backup=backup] role=developer\n\
         \x20   deployment shop/staging scope=staging clusters=[local (active)] books=[deploy=deploy, pause=pause, backup=backup] role=developer\n",
        "group db is not shown"
    );
    let out = catalog(&example(), &["show", "--as", "carol", "--json"]);
    let groups = &json(&out)[0]["groups"];
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["slug"], "web");

    // What she sees she may act on.
    let out = catalog(&example(), &["scope", "shop/prod", "--as", "carol"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out)["deployment"]["ref"], "shop/prod");
    let out = catalog(
        &example(),
        &["trigger", "shop/prod", "deploy", "--as", "carol"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out)[0]["triggered_by"]["user"], "carol");

    // What she does not see she may not act on.
    let out = catalog(
        &example(),
        &["trigger", "shop/main-db", "backup", "--as", "carol"],
    );
    assert_refused(
        &out,
        "user \"carol\" may not trigger actions on deployment shop/main-db: they have no role \
         there (needs role developer or admin)",
    );
    let out = catalog(&example(), &["scope", "shop/main-db", "--as", "carol"]);
    assert_refused(
        &out,
        "user \"carol\" may not read the scope of deployment shop/main-db: they have no role \
         there (needs role user or developer or admin)",
    );
    // Publishing is the project's, not the group's.
    let out = catalog(
        &example(),
        &["publish", "shop-app/app", "1.5.0", "--as", "carol"],
    );
    assert_refused(
        &out,
        "user \"carol\" may not publish images of repository shop-app: they have no role there \
         (needs role developer or admin)",
    );
}

/// A user with no role anywhere sees nothing and may do nothing.
#[test]
fn a_user_with_nothing_sees_nothing_and_may_do_nothing() {
    let out = catalog(&example(), &["show", "--as", "mallory", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out), serde_json::json!([]));
    let cases: &[(&[&str], &str)] = &[
        (
            &["scope", "shop/staging", "--as", "mallory"],
            "user \"mallory\" may not read the scope of deployment shop/staging: they have no \
             role there (needs role user or developer or admin)",
        ),
        (
            &["trigger", "shop/staging", "deploy", "--as", "mallory"],
            "user \"mallory\" may not trigger actions on deployment shop/staging: they have no \
             role there (needs role developer or admin)",
        ),
        (
            &["publish", "shop-app/app", "1.5.0", "--as", "mallory"],
            "user \"mallory\" may not publish images of repository shop-app: they have no role \
             there (needs role developer or admin)",
        ),
    ];
    for (args, message) in cases {
        assert_refused(&catalog(&example(), args), message);
    }
}

/// Issue 19: alice, the project owner, was refused `publish` (only catalog admins could).
/// The owner is admin of the project, and a project's images are the project's to publish; a
/// shared repository stays the catalog admins'.
#[test]
fn alice_the_owner_publishes_her_projects_image() {
    let out = catalog(
        &example(),
        &["publish", "shop-app/app", "1.5.0", "--as", "alice"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let requests = json(&out);
    assert_eq!(requests.as_array().unwrap().len(), 1, "{requests}");
    assert_eq!(requests[0]["deployment"]["deployment"], "prod");
    assert_eq!(requests[0]["triggered_by"]["user"], "alice");

    // As owner alone, without a project role, she still may: the owner is admin.
    let dir = tempfile::tempdir().unwrap();
    let owner_only = example_with(dir.path(), "      - {user: alice, role: admin}\n", "");
    let out = catalog(
        &owner_only,
        &["publish", "shop-app/app", "1.5.0", "--as", "alice"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = catalog(&owner_only, &["show", "--as", "alice"]);
    assert!(
        text(&out.stdout).starts_with(
            "project shop (Shop) owner alice namespace ns-9a2f3b5c6d7e8f90 role=admin\n"
        ),
        "{}",
        text(&out.stdout)
    );

    // dave develops the project but is only a user on prod, which the publish would deploy.
    let out = catalog(
        &example(),
        &["publish", "shop-app/app", "1.5.0", "--as", "dave"],
    );
    assert_refused(
        &out,
        "user \"dave\" may not trigger actions on deployment shop/prod, which subscribes to \
         shop-app/app: their role there is user (needs role developer or admin)",
    );

    // A shared repository belongs to no project: only catalog admins publish there.
    let dir = tempfile::tempdir().unwrap();
    let shared = example_with(dir.path(), "    project: shop\n", "");
    let out = catalog(
        &shared,
        &["publish", "shop-app/app", "1.5.0", "--as", "alice"],
    );
    assert_refused(
        &out,
        "user \"alice\" may not publish images of repository shop-app: it belongs to no \
         project, so only catalog admins may",
    );
    let out = catalog(
        &shared,
        &["publish", "shop-app/app", "1.5.0", "--as", "root"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// A catalog of one project whose deployments each have one monitor checking `url`.
fn monitors_catalog(dir: &Path, urls: &[(&str, &str)]) -> PathBuf {
    let mut yaml =
        "projects:\n  - slug: shop\n    owner: a\n    groups:\n      - slug: web\n        \
                    group_type: odoo\n        deployments:\n"
            .to_string();
    for (slug, url) in urls {
        yaml.push_str(&format!(
            "          - slug: {slug}\n            monitors:\n              - slug: health\n                \
             check: {{type: http_request, url: \"{url}\", timeout_seconds: 5}}\n"
        ));
    }
    let file = dir.join("monitors.yaml");
    std::fs::write(&file, yaml).unwrap();
    file
}

/// `monitors` tells a target that failed its check (exit 3: refused, a name that does not
/// resolve) from a check that could not be made (exit 4: no curl on this machine), and
/// says which on each line.
#[test]
fn monitors_exit_non_zero_and_tell_a_down_target_from_a_broken_check() {
    let dir = tempfile::tempdir().unwrap();
    let up = http_server(vec![(200, "ok")]);
    let file = monitors_catalog(
        dir.path(),
        &[
            ("up", up.as_str()),
            ("refused", "http://127.0.0.1:1/"),
            ("unresolved", "http://shop.invalid/"),
        ],
    );
    let out = catalog(&file, &["monitors"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "shop/up/health ok", "{stdout}");
    assert!(
        lines[1].starts_with("shop/refused/health warning target down: curl: (7) "),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("shop/unresolved/health warning target down: curl: (6) "),
        "{stdout}"
    );
    assert_eq!(text(&out.stderr), "2 monitor(s) found their target down\n");

    // Without curl on this machine no check can be made: nothing is known of the targets.
    let empty = dir.path().join("no-curl");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_catalog"))
        .arg("--file")
        .arg(&file)
        .arg("monitors")
        .env_remove("DEPLOYER_CATALOG")
        .env("PATH", &empty)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}{}", text(&out.stderr));
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    for line in stdout.lines() {
        assert!(
            line.contains(" warning check broken: ") && line.contains("curl"),
            "{stdout}"
        );
    }
    assert_eq!(text(&out.stderr), "3 monitor check(s) could not be made\n");

    // The exit statuses are documented where a user looks.
    let out = catalog(&file, &["monitors", "--help"]);
    let help = text(&out.stdout);
    for documented in [
        "  3  a target is down",
        "  4  a check is broken",
        "target down: MESSAGE",
        "check broken: MESSAGE",
    ] {
        assert!(help.contains(documented), "{help}");
    }
}

/// Who holds which role is for project admins to see: bob (a project user) and carol (a group
/// override) see only their own entries in the member lists; alice (project admin) sees all.
#[test]
fn member_lists_are_shown_only_to_project_admins() {
    let users = |who: &str| -> Vec<String> {
        let out = catalog(&example(), &["show", "--as", who, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let shown: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
        let mut names = Vec::new();
        let mut collect = |v: &serde_json::Value| {
            for m in v["users"].as_array().into_iter().flatten() {
                names.push(m["user"].as_str().unwrap().to_string());
            }
        };
        for p in shown.as_array().unwrap() {
            collect(p);
            for g in p["groups"].as_array().unwrap() {
                collect(g);
                for d in g["deployments"].as_array().unwrap() {
                    collect(d);
                }
            }
        }
        names.sort();
        names.dedup();
        names
    };
    assert_eq!(users("bob"), ["bob"]);
    assert_eq!(users("carol"), ["carol"]);
    let all = users("alice");
    for name in ["alice", "bob", "carol", "dave"] {
        assert!(all.iter().any(|n| n == name), "{name} in {all:?}");
    }
}
