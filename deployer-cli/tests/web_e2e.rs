//! The run viewer (`deploy serve`) in a real headless Chromium, while real deploys run in
//! other processes over real SSH (a loopback `TestFleet`), recorded in a real SQLite store.

#[path = "common/browser.rs"]
mod browser;
#[path = "common/scenario.rs"]
mod scenario;
#[path = "common/server.rs"]
mod server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use browser::{Browser, Chromedriver};
use fantoccini::Locator;
use scenario::{STEP, Scenario, text};
use server::Server;

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

/// `deploy users add NAME --role ROLE` with the password piped.
fn add_user(users: &Path, name: &str, role: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(["users", "add", name, "--role", role, "--users"])
        .arg(users)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Where the test leaves its screenshots (committed: the README and docs show them).
fn screenshots() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/screenshots")).to_path_buf()
}

async fn log_in(b: &Browser, url: &str, name: &str, password: &str) {
    let c = b.client();
    c.goto(&format!("{url}/login")).await.unwrap();
    c.find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    c.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    // Chromium asks for /favicon.ico on its own meanwhile (redirected to the login page):
    // the form's token must still match the cookie.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.find(Locator::Css("#login-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until(
        &format!("{name} logged in"),
        Duration::from_secs(10),
        |c| async move {
            let path = c.current_url().await.ok()?.path().to_string();
            (path != "/login").then_some(())
        },
    )
    .await;
}

/// Waits until a form's POST came back to run `run`'s page and its event stream is open, then
/// sets `window.__marker = 1` (a reload would lose it).
async fn back_on_the_live_run_page(b: &Browser, run: &str, what: &str) {
    b.wait_until(what, Duration::from_secs(10), |c| {
        let run = run.to_string();
        async move {
            let u = c.current_url().await.ok()?;
            (u.path().ends_with(&format!("/runs/{run}"))
                && c.find(Locator::Css("body[data-live=on]")).await.is_ok())
            .then_some(())
        }
    })
    .await;
    b.client()
        .execute("window.__marker = 1;", vec![])
        .await
        .unwrap();
}

/// The run's state as the page shows it (`#run-state[data-state]`).
async fn run_state(c: &fantoccini::Client) -> Option<String> {
    c.find(Locator::Css("#run-state"))
        .await
        .ok()?
        .attr("data-state")
        .await
        .ok()?
}

/// Every host cell's state, `stage/host=state`, while `window.__marker` is still 1 (`None`
/// when the page was reloaded).
async fn cells_with_marker(c: &fantoccini::Client) -> Option<Vec<String>> {
    let v = c
        .execute(
            "if (window.__marker !== 1) { return null; }
             return Array.from(document.querySelectorAll('[data-host][data-state]'))
                 .map(e => (e.dataset.stage || '') + '/' + e.dataset.host + '=' + e.dataset.state);",
            vec![],
        )
        .await
        .ok()?;
    serde_json::from_value(v).ok()
}

/// In Chromium, while a real deploy runs in another process over SSH: bob (developer) watches
/// its host cells change without a reload, approves its manual step with the page's form,
/// and sees the run go on to SUCCEEDED; dave (user) sees no Approve button. The deploy exits
/// 0 and the store holds bob's decision. Saves the screenshots in docs/screenshots/ (runs list,
/// a run with a failure, the live run page, the approvals page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_approves_a_running_deploy_in_chromium() {
    let s = Scenario::new(3);
    let users = s.path("users.yaml");
    add_user(&users, "bob", "developer", "bob's password");
    add_user(&users, "dave", "user", "dave's password");
    let failed = tokio::task::block_in_place(|| s.failed_run());
    let server = Server::start(
        &s.store_url(),
        &s.path(""),
        &["--users", users.to_str().unwrap()],
    );
    let url = server.url.clone();
    let driver = Chromedriver::start().unwrap_or_else(|e| panic!("{e}"));
    let bob = Browser::open(&driver).await.unwrap();
    log_in(&bob, &url, "bob", "bob's password").await;

    // A finished run with a failure.
    bob.client()
        .goto(&format!("{url}/runs/{failed}"))
        .await
        .unwrap();
    let state = bob
        .wait_until(
            "the failed run's state",
            Duration::from_secs(10),
            |c| async move { run_state(&c).await },
        )
        .await;
    assert_eq!(state, "FAILED");
    let page = bob.client().source().await.unwrap();
    assert!(
        page.contains("disk /srv is full"),
        "the stderr tail is shown\n{page}"
    );
    bob.screenshot(&screenshots().join("run-with-failure.png"))
        .await
        .unwrap();

    // The live deploy: open its page while its first step goes from host to host.
    let mut live = s.start_deploy();
    let run = tokio::task::block_in_place(|| s.wait_for_run("RUNNING", Duration::from_secs(20)));
    bob.client()
        .goto(&format!("{url}/runs/{run}"))
        .await
        .unwrap();
    bob.wait_until(
        "the page's event stream",
        Duration::from_secs(10),
        |c| async move {
            let body = c.find(Locator::Css("body")).await.ok()?;
            (body.attr("data-live").await.ok()?? == "on").then_some(())
        },
    )
    .await;
    bob.client()
        .execute("window.__marker = 1;", vec![])
        .await
        .unwrap();
    let before = cells_with_marker(bob.client())
        .await
        .expect("the marker is set");
    assert!(!before.is_empty(), "host cells are shown");
    for host in s.hosts() {
        assert!(
            before.iter().any(|c| c.contains(&format!("/{host}="))),
            "{host} has a cell: {before:?}"
        );
    }
    let changed = bob
        .wait_until(
            "a host cell to change state without a reload",
            Duration::from_secs(20),
            |c| {
                let before = before.clone();
                async move {
                    let now = cells_with_marker(&c)
                        .await
                        .expect("window.__marker is still there: no reload");
                    (now != before).then_some(now)
                }
            },
        )
        .await;
    assert_ne!(changed, before);
    bob.screenshot(&screenshots().join("run-live.png"))
        .await
        .unwrap();

    // The manual step waits (alice started the run: four-eyes).
    tokio::task::block_in_place(|| {
        live.wait_for(
            "waiting for a decision from another process",
            Duration::from_secs(30),
        )
    });
    let approve_form = format!("form.approve[data-step=\"{STEP}\"]");
    bob.client()
        .goto(&format!("{url}/approvals"))
        .await
        .unwrap();
    bob.wait_until("the pending approval", Duration::from_secs(10), |c| {
        let sel = approve_form.clone();
        async move { c.find(Locator::Css(&sel)).await.ok().map(|_| ()) }
    })
    .await;
    bob.screenshot(&screenshots().join("approvals.png"))
        .await
        .unwrap();

    // dave (role user) sees the run and the waiting step, but no button.
    let dave = Browser::open(&driver).await.unwrap();
    log_in(&dave, &url, "dave", "dave's password").await;
    for page in [format!("{url}/runs/{run}"), format!("{url}/approvals")] {
        dave.client().goto(&page).await.unwrap();
        let shown = dave.client().source().await.unwrap();
        assert!(
            shown.contains(STEP),
            "{page} names the waiting step\n{shown}"
        );
        let forms = dave
            .client()
            .find_all(Locator::Css("form.approve, button[value=approve]"))
            .await
            .unwrap();
        assert!(
            forms.is_empty(),
            "{page}: dave sees an Approve button\n{shown}"
        );
    }
    dave.close().await;

    // bob approves on the run page, with a comment.
    bob.client()
        .goto(&format!("{url}/runs/{run}"))
        .await
        .unwrap();
    let form = bob
        .wait_until("the Approve form", Duration::from_secs(10), |c| {
            let sel = approve_form.clone();
            async move { c.find(Locator::Css(&sel)).await.ok() }
        })
        .await;
    if let Ok(comment) = form.find(Locator::Css("[name=comment]")).await {
        comment.send_keys("checked in the browser").await.unwrap();
    }
    form.find(Locator::Css("button[value=approve]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The form posts and comes back to the run page; from there the run goes on live.
    back_on_the_live_run_page(&bob, &run, "the run page after approving").await;
    bob.wait_until(
        "the run to succeed, shown live",
        Duration::from_secs(30),
        |c| async move {
            let state = run_state(&c).await?;
            let marker = c
                .execute("return window.__marker === 1;", vec![])
                .await
                .ok()?;
            assert_eq!(
                marker,
                serde_json::Value::Bool(true),
                "the page was reloaded"
            );
            (state == "SUCCEEDED").then_some(())
        },
    )
    .await;

    bob.client().goto(&format!("{url}/")).await.unwrap();
    let list = bob.client().source().await.unwrap();
    assert!(
        list.contains(&run[..8]) && list.contains(&failed[..8]),
        "{list}"
    );
    bob.screenshot(&screenshots().join("runs.png"))
        .await
        .unwrap();
    bob.close().await;

    // What the processes say.
    let (code, screen) = tokio::task::block_in_place(|| live.finish(Duration::from_secs(20)));
    assert_eq!(code, Some(0), "{screen}");
    let shown = text(&s.deploy(&["runs", "show", &run]).stdout);
    assert!(shown.contains("state     SUCCEEDED"), "{shown}");
    assert!(
        shown.contains("deploy/approve  approved  bob") && shown.contains("checked in the browser"),
        "{shown}"
    );
}

/// In Chromium, while a real deploy runs in another process: dave (user) sees no Cancel
/// button; bob (developer) cancels from the page, and the deploy process — which shares only
/// the store with the viewer — stops like a first Ctrl-C: the running step finishes, nothing
/// new starts (a manual step waiting for a person gives up), the run ends CANCELLED, shown
/// live on bob's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_cancels_a_running_deploy_from_the_page() {
    let s = Scenario::new(3);
    let users = s.path("users.yaml");
    add_user(&users, "bob", "developer", "bob's password");
    add_user(&users, "dave", "user", "dave's password");
    let server = Server::start(
        &s.store_url(),
        &s.path(""),
        &["--users", users.to_str().unwrap()],
    );
    let url = server.url.clone();
    let driver = Chromedriver::start().unwrap_or_else(|e| panic!("{e}"));
    let live = s.start_deploy();
    let run = tokio::task::block_in_place(|| s.wait_for_run("RUNNING", Duration::from_secs(20)));

    let dave = Browser::open(&driver).await.unwrap();
    log_in(&dave, &url, "dave", "dave's password").await;
    dave.client()
        .goto(&format!("{url}/runs/{run}"))
        .await
        .unwrap();
    let state = dave
        .wait_until("dave's run page", Duration::from_secs(10), |c| async move {
            run_state(&c).await
        })
        .await;
    assert_eq!(state, "RUNNING");
    let buttons = dave
        .client()
        .find_all(Locator::Css("#cancel"))
        .await
        .unwrap();
    assert!(buttons.is_empty(), "dave (user) sees no Cancel button");
    dave.close().await;

    let bob = Browser::open(&driver).await.unwrap();
    log_in(&bob, &url, "bob", "bob's password").await;
    bob.client()
        .goto(&format!("{url}/runs/{run}"))
        .await
        .unwrap();
    let cancel = bob
        .wait_until(
            "the Cancel button",
            Duration::from_secs(10),
            |c| async move { c.find(Locator::Css("#cancel")).await.ok() },
        )
        .await;
    cancel.click().await.unwrap();
    back_on_the_live_run_page(&bob, &run, "the run page after cancelling").await;
    let notice = bob
        .wait_until(
            "the run to end cancelled, shown live",
            Duration::from_secs(30),
            |c| async move {
                let state = run_state(&c).await?;
                let marker = c
                    .execute("return window.__marker === 1;", vec![])
                    .await
                    .ok()?;
                assert_eq!(
                    marker,
                    serde_json::Value::Bool(true),
                    "the page was reloaded"
                );
                if state != "CANCELLED" {
                    return None;
                }
                c.find(Locator::Css("#cancel-requested"))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()
            },
        )
        .await;
    assert!(notice.contains("cancel requested by bob"), "{notice}");
    bob.close().await;

    let (code, screen) = tokio::task::block_in_place(|| live.finish(Duration::from_secs(20)));
    assert_ne!(
        code,
        Some(0),
        "a cancelled deploy does not exit 0\n{screen}"
    );
    let shown = text(&s.deploy(&["runs", "show", &run]).stdout);
    assert!(shown.contains("state     CANCELLED"), "{shown}");
    // Cancelled during `prepare`, the manual step never starts; cancelled while it waits for
    // a decision (a slow machine), it gives up. Either way nothing is released: at most the
    // three `prepare` tasks succeeded, and the three `release` tasks did not run.
    let tasks = shown
        .lines()
        .find_map(|l| l.strip_prefix("tasks     "))
        .unwrap_or_else(|| panic!("no tasks line\n{shown}"));
    let ok: usize = tasks
        .split(", ")
        .find_map(|c| c.strip_suffix(" ok"))
        .map_or(0, |n| n.parse().unwrap());
    assert!(ok <= 3, "only prepare tasks succeeded: {tasks}\n{screen}");
    let not_run: usize = tasks
        .split(", ")
        .find_map(|c| c.strip_suffix(" not run"))
        .map_or(0, |n| n.parse().unwrap());
    assert!(not_run >= 3, "the release tasks did not run: {tasks}");
}
