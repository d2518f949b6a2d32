//! The viewer's router against a real SQLite store holding real runs: authentication,
//! sessions, CSRF, roles, approvals, JSON shapes, prefixes, secrets and the event stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::PasswordHasher;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use deployer_core::fixture::{FakeConnector, FakeHost, FakeReply, Noop};
use deployer_core::*;
use deployer_store::SqliteStore;
use deployer_web::{User, UsersFile, Web};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// A command that runs `cmd` on its host and fails when it fails.
#[derive(Debug, serde::Deserialize)]
struct Shell {
    cmd: String,
}

#[async_trait]
impl Command for Shell {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        args.parse()
    }
    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        ctx.run_checked(&self.cmd).await?;
        Ok(Outcome::done())
    }
}

const SECRET: &str = "hunter2-very-secret";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    users: std::path::PathBuf,
    /// A finished run: web1 succeeded, web2 failed (`deploy` exit 3, stderr `disk full`).
    failed: RunId,
    /// A run never driven (`RUNNING` set by hand) with a pending approval of step
    /// `deploy/approve` (default approvers).
    waiting: RunId,
}

/// A users file with cheap hashes (the real parameters are tested in `login_*`).
fn cheap_hash(password: &str) -> String {
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    argon2::Argon2::from(params)
        .hash_password_with_salt(password.as_bytes(), b"saltsaltsaltsalt")
        .unwrap()
        .to_string()
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("runs.db")).await.unwrap());
    let users = dir.path().join("users.yaml");
    std::fs::write(
        &users,
        format!(
            "users:\n  - name: carol\n    password_hash: {}\n    role: developer\n  - name: dave\n    password_hash: {}\n    role: user\n",
            cheap_hash("carol-pw"),
            cheap_hash("dave-pw")
        ),
    )
    .unwrap();

    let mut commands = CommandRegistry::new();
    commands.register::<Noop>("restart");
    commands.register::<Shell>("shell");
    let tasklist = Tasklist::new("shop deploy")
        .stage(Stage::new("Deploy", 2).tasks(vec![
                Task::new("shell")
                    .on("web1")
                    .arg("cmd", "deploy v2")
                    .arg("token", serde_json::json!({"secret": SECRET})),
                Task::new("shell")
                    .on("web2")
                    .arg("cmd", "deploy v2")
                    .arg("token", serde_json::json!({"secret": SECRET})),
            ]))
        .stage(Stage::new("Restart", 2).tasks(vec![
            Task::new("restart").on("web1"),
            Task::new("restart").on("web2"),
        ]));
    let plan = Plan::build(&tasklist, &commands).unwrap();
    let connector = FakeConnector::new()
        .with_host(FakeHost::new("web2").reply("deploy", FakeReply::fail(3, "disk full on /srv")));
    let executor = Executor::new(Arc::new(connector));
    let runs = Runs::new(store.clone());
    let (failed, report) = runs
        .start(
            &executor,
            &plan,
            "tasklist:shop.json",
            "alice",
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert!(!report.succeeded());

    let waiting = runs
        .create(&plan, "book:shop@1.0.0", "alice")
        .await
        .unwrap();
    store
        .set_run_state(&waiting, RunState::Running)
        .await
        .unwrap();
    store
        .request_approval(
            ApprovalRequest::new(waiting.clone(), "deploy/approve", "alice")
                .message("Deploy to production?"),
        )
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        store,
        users,
        failed,
        waiting,
    }
}

impl Fixture {
    fn web(&self) -> Web {
        Web::new(self.store.clone())
            .authenticator(Arc::new(UsersFile::load(&self.users).unwrap()))
            .secure_cookies(false)
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

/// A browser: a router and a cookie jar.
struct Client {
    router: Router,
    cookies: HashMap<String, String>,
}

impl Client {
    fn new(router: Router) -> Client {
        Client {
            router,
            cookies: HashMap::new(),
        }
    }

    async fn send(&mut self, mut req: Request<Body>) -> Reply {
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req.headers_mut()
                .insert(header::COOKIE, jar.join("; ").parse().unwrap());
        }
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let reply = Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        };
        for c in reply.set_cookies() {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        reply
    }

    async fn get(&mut self, uri: &str) -> Reply {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn get_json(&mut self, uri: &str) -> Reply {
        self.send(
            Request::get(uri)
                .header(header::ACCEPT, "application/json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn post(&mut self, uri: &str, form: &[(&str, &str)]) -> Reply {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(serde_urlencoded::to_string(form).unwrap()))
                .unwrap(),
        )
        .await
    }

    /// Logs in through the form, as a browser does; returns the POST's reply.
    async fn login(&mut self, prefix: &str, name: &str, password: &str) -> Reply {
        let form = self.get(&format!("{prefix}/login")).await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let token = hidden(&form.body, "login_token");
        self.post(
            &format!("{prefix}/login"),
            &[
                ("name", name),
                ("password", password),
                ("login_token", &token),
            ],
        )
        .await
    }
}

/// The value of the hidden field `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no field {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[tokio::test]
async fn anonymous_requests_get_401_or_a_redirect_to_the_login_form() {
    let f = fixture().await;
    let mut c = Client::new(f.web().router());
    let r = c.get_json("/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("authentication required")
    );
    let r = c.get(&format!("/runs/{}", f.failed)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.location(),
        format!("/login?next=%2Fruns%2F{}", f.failed),
        "back to the page after login"
    );
    assert!(!r.body.contains("shop deploy"));
    let r = c.get(&format!("/runs/{}/events", f.waiting)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = c.get("/approvals").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = c
        .post(
            &format!("/runs/{}/decide", f.waiting),
            &[("step", "deploy/approve"), ("decision", "approve")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The login form and the assets are public.
    assert_eq!(c.get("/login").await.status, StatusCode::OK);
    let js = c.get("/assets/app.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.body.contains("EventSource"));
    assert_eq!(
        f.store.approvals(&f.waiting).await.unwrap()[0].decision,
        None
    );

    // Anonymous reading, when the operator allows it: pages, never a button or a POST.
    let mut c = Client::new(f.web().allow_anonymous_read(true).router());
    let r = c.get(&format!("/runs/{}", f.waiting)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Deploy to production?"));
    assert!(!r.body.contains("form class=\"approve\""));
    assert!(!r.body.contains("id=\"cancel\""));
    let r = c
        .post(
            &format!("/runs/{}/decide", f.waiting),
            &[("step", "deploy/approve"), ("decision", "approve")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_with_a_users_file_and_logout() {
    let f = fixture().await;
    // Real argon2 parameters, as `deploy users add` writes them.
    assert!(UsersFile::add_user(&f.users, "erin", "right horse", Some("admin")).unwrap());
    assert!(
        std::fs::read_to_string(&f.users)
            .unwrap()
            .contains("$argon2id$v=19$m=19456")
    );
    let web = Web::new(f.store.clone()).authenticator(Arc::new(UsersFile::load(&f.users).unwrap()));
    let mut c = Client::new(web.router());

    let r = c.login("", "erin", "wrong horse").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("wrong user name or password"), "{}", r.body);
    assert!(!c.cookies.contains_key("deployer_session"));
    let r = c.login("", "nobody", "right horse").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("wrong user name or password"));

    // A form shown first keeps working after the browser fetched another page meanwhile
    // (Chromium asks for /favicon.ico on its own, and is sent to the login page).
    let first = c.get("/login").await;
    let first_token = hidden(&first.body, "login_token");
    let other = c.get("/favicon.ico").await;
    assert_eq!(other.status, StatusCode::SEE_OTHER);
    assert_eq!(c.get(other.location()).await.status, StatusCode::OK);
    assert_eq!(
        hidden(&c.get("/login").await.body, "login_token"),
        first_token,
        "the login token of the browser's cookie is kept"
    );
    let r = c
        .post(
            "/login",
            &[
                ("name", "erin"),
                ("password", "wrong horse"),
                ("login_token", &first_token),
            ],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the first form's token still counts: {}",
        r.body
    );

    // A login POST without the form's token is refused.
    let r = c
        .post("/login", &[("name", "erin"), ("password", "right horse")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("CSRF token missing or wrong"));

    let r = c.login("", "erin", "right horse").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/");
    let cookie = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("deployer_session="))
        .unwrap();
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Secure",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains("<span id=\"user\">erin</span>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("shop deploy"));

    let csrf = hidden(&r.body, "csrf");
    let r = c.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/login");
    assert_eq!(c.get_json("/").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_session_expires_after_its_ttl() {
    let f = fixture().await;
    let mut c = Client::new(f.web().session_ttl(Duration::from_millis(400)).router());
    assert_eq!(
        c.login("", "carol", "carol-pw").await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(c.get_json("/").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = c.get_json("/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
}

#[tokio::test]
async fn a_user_without_the_role_sees_no_button_and_a_forged_post_gets_403() {
    let f = fixture().await;
    // The step needs role developer; dave holds user.
    let mut c = Client::new(f.web().router());
    assert_eq!(
        c.login("", "dave", "dave-pw").await.status,
        StatusCode::SEE_OTHER
    );
    let page = c.get(&format!("/runs/{}", f.waiting)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Deploy to production?"));
    assert!(!page.body.contains("class=\"approve\""), "{}", page.body);
    assert!(!page.body.contains("id=\"cancel\""));
    assert!(
        page.body
            .contains("dave may not decide step deploy/approve")
    );
    let json = c.get_json(&format!("/runs/{}", f.waiting)).await.json();
    assert_eq!(json["approvals"][0]["can_decide"], false);
    assert_eq!(json["can_cancel"], false);
    let approvals = c.get("/approvals").await;
    assert!(approvals.body.contains("deploy/approve"));
    assert!(!approvals.body.contains("class=\"approve\""));

    let csrf = hidden(&page.body, "csrf");
    let r = c
        .post(
            &format!("/runs/{}/decide", f.waiting),
            &[
                ("step", "deploy/approve"),
                ("decision", "approve"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.body.contains(
            "dave may not decide step deploy/approve: it needs role developer, and dave holds user"
        ),
        "{}",
        r.body
    );
    let r = c
        .post(&format!("/runs/{}/cancel", f.waiting), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("dave may not cancel run"), "{}", r.body);
    assert_eq!(
        f.store.approvals(&f.waiting).await.unwrap()[0].decision,
        None
    );
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused() {
    let f = fixture().await;
    let mut c = Client::new(f.web().router());
    assert_eq!(
        c.login("", "carol", "carol-pw").await.status,
        StatusCode::SEE_OTHER
    );
    let url = format!("/runs/{}/decide", f.waiting);
    let r = c
        .post(&url, &[("step", "deploy/approve"), ("decision", "approve")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("CSRF token missing or wrong"));
    let r = c
        .post(
            &url,
            &[
                ("step", "deploy/approve"),
                ("decision", "approve"),
                ("csrf", "0000"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c.post(&format!("/runs/{}/cancel", f.waiting), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("CSRF token missing or wrong"));
    assert_eq!(c.post("/logout", &[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        f.store.approvals(&f.waiting).await.unwrap()[0].decision,
        None
    );
}

#[tokio::test]
async fn an_allowed_user_approves_and_the_store_shows_the_decision() {
    let f = fixture().await;
    let mut c = Client::new(f.web().router());
    assert_eq!(
        c.login("", "carol", "carol-pw").await.status,
        StatusCode::SEE_OTHER
    );
    let page = c.get(&format!("/runs/{}", f.waiting)).await;
    assert!(
        page.body
            .contains("<form class=\"approve\" data-step=\"deploy/approve\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"cancel\""), "carol holds developer");
    let csrf = hidden(&page.body, "csrf");
    let r = c
        .post(
            &format!("/runs/{}/decide", f.waiting),
            &[
                ("step", "deploy/approve"),
                ("decision", "approve"),
                ("comment", "go <b>now</b>"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), format!("/runs/{}", f.waiting));
    let stored = f.store.approvals(&f.waiting).await.unwrap();
    let d = stored[0].decision.as_ref().unwrap();
    assert_eq!((d.by.as_str(), d.approved), ("carol", true));
    assert_eq!(d.comment.as_deref(), Some("go <b>now</b>"));
    let page = c.get(&format!("/runs/{}", f.waiting)).await;
    assert!(page.body.contains("approved by carol"));
    assert!(
        page.body.contains("go &lt;b&gt;now&lt;/b&gt;"),
        "the comment is escaped"
    );
    assert!(!page.body.contains("class=\"approve\""));
    assert!(
        c.get("/approvals")
            .await
            .body
            .contains("Nothing waits for a decision.")
    );

    // A second decision, from a script with the header token: the store refuses it.
    let r = c
        .send(
            Request::post(format!("/runs/{}/decide", f.waiting))
                .header(header::ACCEPT, "application/json")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header("x-csrf-token", &csrf)
                .body(Body::from("step=deploy%2Fapprove&decision=reject"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("approved by carol")
    );
}

#[tokio::test]
async fn the_json_api_answers_every_page() {
    let f = fixture().await;
    let mut c = Client::new(f.web().router());
    let login = c.login("", "carol", "carol-pw").await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);

    let runs = c.get_json("/").await;
    assert_eq!(runs.status, StatusCode::OK);
    assert_eq!(
        runs.headers[header::CONTENT_TYPE].to_str().unwrap(),
        "application/json"
    );
    let runs = runs.json();
    let list = runs["runs"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], f.waiting.to_string(), "newest first");
    assert_eq!(list[1]["state"], "FAILED");
    assert_eq!(list[1]["hosts"], 2);
    assert_eq!(list[1]["counts"]["succeeded"], 1);
    assert_eq!(list[1]["counts"]["failed"], 1);
    assert_eq!(list[1]["counts"]["not_run"], 2);
    assert!(list[1]["duration_secs"].as_f64().unwrap() >= 0.0);
    assert_eq!(runs["viewer"]["user"], "carol");
    assert_eq!(runs["viewer"]["csrf_token"].as_str().unwrap().len(), 64);

    let failed = c.get_json("/?state=failed").await.json();
    assert_eq!(failed["runs"].as_array().unwrap().len(), 1);
    assert_eq!(failed["filter"]["state"], "FAILED");
    let by_name = c
        .get_json("/?name=nothing-like-this&user=alice")
        .await
        .json();
    assert!(by_name["runs"].as_array().unwrap().is_empty());
    let bad = c.get_json("/?state=exploded").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("query parameter state \"exploded\": expected one of PENDING")
    );
    let bad = c.get_json("/?since=yesterday").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("query parameter since"));

    let run = c.get_json(&format!("/runs/{}", f.failed)).await.json();
    assert_eq!(run["state"], "FAILED");
    assert_eq!(run["progress"], serde_json::json!({"done": 4, "total": 4}));
    assert_eq!(run["stages"][0]["name"], "Deploy");
    let cells = &run["stages"][0]["cells"];
    assert_eq!(cells[0]["host"], "web1");
    assert_eq!(cells[0]["state"], "done");
    assert_eq!(cells[1]["host"], "web2");
    assert_eq!(cells[1]["state"], "failed");
    assert_eq!(run["stages"][1]["cells"][0]["state"], "skipped");
    let failure = &run["failures"][0];
    assert_eq!(failure["host"], "web2");
    assert_eq!(failure["command"], "shell");
    assert_eq!(failure["exit_status"], 3);
    assert!(
        failure["stderr_tail"]
            .as_str()
            .unwrap()
            .contains("disk full on /srv")
    );
    assert_eq!(failure["args"]["cmd"], "deploy v2");
    assert_eq!(
        run["can_cancel"], false,
        "a finished run cannot be cancelled"
    );

    let waiting = c.get_json(&format!("/runs/{}", f.waiting)).await.json();
    assert_eq!(waiting["approvals"][0]["step"], "deploy/approve");
    assert_eq!(waiting["approvals"][0]["state"], "pending");
    assert_eq!(waiting["approvals"][0]["can_decide"], true);
    assert_eq!(
        waiting["progress"],
        serde_json::json!({"done": 0, "total": 4})
    );

    let host = c.get_json("/hosts/web2").await.json();
    let host_runs = host["runs"].as_array().unwrap();
    assert_eq!(host_runs.len(), 2);
    assert_eq!(host_runs[1]["host_state"], "FAILED");
    assert_eq!(host_runs[1]["started_by"], "alice");

    let detail = c
        .get_json(&format!("/runs/{}/hosts/web2", f.failed))
        .await
        .json();
    assert_eq!(detail["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(detail["tasks"][0]["state"], "FAILED");
    assert_eq!(
        c.get_json(&format!("/runs/{}/hosts/nowhere", f.failed))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let approvals = c.get_json("/approvals").await.json();
    assert_eq!(approvals["approvals"][0]["run_name"], "shop deploy");

    let missing = c.get_json("/runs/not-a-run").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("is not a run id"));
}

#[tokio::test]
async fn a_secret_in_a_task_argument_is_shown_as_stars() {
    let f = fixture().await;
    let mut c = Client::new(f.web().router());
    c.login("", "carol", "carol-pw").await;
    for url in [
        format!("/runs/{}", f.failed),
        format!("/runs/{}/hosts/web2", f.failed),
    ] {
        for r in [c.get(&url).await, c.get_json(&url).await] {
            assert_eq!(r.status, StatusCode::OK);
            assert!(!r.body.contains(SECRET), "{url}: {}", r.body);
            assert!(r.body.contains("***"), "{url}: {}", r.body);
        }
    }
    let json = c.get_json(&format!("/runs/{}", f.failed)).await.json();
    assert_eq!(json["failures"][0]["args"]["token"]["secret"], "***");
}

/// Every `href`, `action`, `src` and `data-events` value in `html`.
fn urls(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "action=\"", "src=\"", "data-events=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attr) {
            rest = &rest[at + attr.len()..];
            out.push(rest[..rest.find('"').unwrap()].to_string());
        }
    }
    out
}

#[tokio::test]
async fn under_a_prefix_every_link_form_and_asset_starts_with_it() {
    let f = fixture().await;
    let app = Router::new()
        .route("/", axum::routing::get(|| async { "host app" }))
        .nest("/deploys", f.web().router());
    let mut c = Client::new(app);
    let r = c.get(&format!("/deploys/runs/{}", f.waiting)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.location(),
        format!("/deploys/login?next=%2Fdeploys%2Fruns%2F{}", f.waiting)
    );
    let form = c.get("/deploys/login").await;
    assert!(
        form.set_cookies()
            .iter()
            .any(|c| c.starts_with("deployer_login=") && c.contains("Path=/deploys"))
    );
    let r = c.login("/deploys", "carol", "carol-pw").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/deploys");
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with("deployer_session=") && c.contains("Path=/deploys"))
    );
    let pages = [
        "/deploys".to_string(),
        format!("/deploys/runs/{}", f.waiting),
        format!("/deploys/runs/{}", f.failed),
        format!("/deploys/runs/{}/hosts/web2", f.failed),
        "/deploys/hosts/web1".to_string(),
        "/deploys/approvals".to_string(),
        "/deploys/login".to_string(),
        "/deploys?page=1&state=FAILED".to_string(),
    ];
    for page in &pages {
        let r = c.get(page).await;
        assert_eq!(r.status, StatusCode::OK, "{page}: {}", r.body);
        let found = urls(&r.body);
        assert!(found.len() >= 4, "{page}: {found:?}");
        for u in found {
            assert!(
                u == "/deploys" || u.starts_with("/deploys/") || u.starts_with("/deploys?"),
                "{page}: {u}"
            );
        }
    }
    let run = c.get(&format!("/deploys/runs/{}", f.waiting)).await;
    assert!(run.body.contains(&format!(
        "data-events=\"/deploys/runs/{}/events\"",
        f.waiting
    )));
    assert!(run.body.contains("action=\"/deploys/runs/"));
    // The decision's redirect stays under the prefix.
    let csrf = hidden(&run.body, "csrf");
    let r = c
        .post(
            &format!("/deploys/runs/{}/decide", f.waiting),
            &[
                ("step", "deploy/approve"),
                ("decision", "reject"),
                ("csrf", &csrf),
                ("back", "approvals"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), "/deploys/approvals");
    assert_eq!(c.get("/").await.body, "host app");

    // Standalone: every URL is at the root.
    let mut c = Client::new(f.web().router());
    c.login("", "carol", "carol-pw").await;
    for u in urls(&c.get(&format!("/runs/{}", f.failed)).await.body) {
        assert!(u.starts_with('/') && !u.starts_with("/deploys"), "{u}");
    }

    // Behind a proxy that strips the prefix: base_path says it.
    let mut c = Client::new(f.web().base_path("/ops/deploys/").router());
    let r = c.get("/").await;
    assert_eq!(r.location(), "/ops/deploys/login?next=%2F");
    assert_eq!(
        c.login("", "carol", "carol-pw").await.location(),
        "/ops/deploys"
    );
    let form = c.get("/login").await;
    assert!(form.body.contains("action=\"/ops/deploys/login\""));
}

#[tokio::test]
async fn a_proxy_header_authenticates_and_the_session_it_opens_needs_csrf() {
    let f = fixture().await;
    let web = Web::new(f.store.clone())
        .authenticator(Arc::new(
            deployer_web::ProxyHeader::new("x-forwarded-user")
                .unwrap()
                .roles(UsersFile::load(&f.users).unwrap()),
        ))
        .secure_cookies(false);
    let mut c = Client::new(web.router());
    assert_eq!(c.get_json("/").await.status, StatusCode::UNAUTHORIZED);
    let r = c
        .send(
            Request::get(format!("/runs/{}", f.waiting))
                .header("x-forwarded-user", "carol")
                .header(header::ACCEPT, "application/json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let json = r.json();
    assert_eq!(json["viewer"]["user"], "carol");
    assert_eq!(
        json["approvals"][0]["can_decide"], true,
        "roles from the users file"
    );
    assert!(c.cookies.contains_key("deployer_session"));
    let r = c
        .post(
            &format!("/runs/{}/decide", f.waiting),
            &[("step", "deploy/approve"), ("decision", "approve")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// The next Server-Sent Event's data (within 5 s), which must be of `kind`.
async fn next_event(body: &mut Body, kind: &str) -> Value {
    let mut text = String::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = text.find("\n\n") {
            let event = text[..end].to_string();
            text = text[end + 2..].to_string();
            if let Some(line) = event.lines().find(|l| l.starts_with("data:")) {
                assert!(event.starts_with(&format!("event: {kind}")), "{event}");
                return serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
            }
        }
    }
}

async fn open_events(c: &Client, uri: &str) -> Body {
    let jar: Vec<String> = c.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let res = c
        .router
        .clone()
        .oneshot(
            Request::get(uri)
                .header(header::COOKIE, jar.join("; "))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    res.into_body()
}

#[tokio::test]
async fn the_approvals_stream_follows_the_pending_list() {
    let f = fixture().await;
    let mut c = Client::new(f.web().router());
    c.login("", "carol", "carol-pw").await;
    let page = c.get("/approvals").await;
    assert!(page.body.contains("data-events=\"/approvals/events\""));
    let mut body = open_events(&c, "/approvals/events").await;
    let first = next_event(&mut body, "approvals").await;
    assert_eq!(
        first["pending"],
        serde_json::json!([{"run": f.waiting.to_string(), "step": "deploy/approve"}])
    );
    decide(
        f.store.as_ref(),
        &f.waiting,
        "deploy/approve",
        &Approver::new("bob"),
        true,
        None,
    )
    .await
    .unwrap();
    let next = next_event(&mut body, "approvals").await;
    assert_eq!(next["pending"], serde_json::json!([]));
}

#[tokio::test]
async fn the_event_stream_sends_an_update_after_a_store_change() {
    let f = fixture().await;
    let mut c = Client::new(f.web().router());
    c.login("", "carol", "carol-pw").await;
    let mut body = open_events(&c, &format!("/runs/{}/events", f.waiting)).await;
    let first = next_event(&mut body, "update").await;
    assert_eq!(first["state"], "RUNNING");
    assert_eq!(
        first["cells"].as_array().unwrap().len(),
        4,
        "everything at first"
    );
    assert_eq!(
        first["approvals_pending"],
        serde_json::json!(["deploy/approve"])
    );

    // Another process's controller starts web1's first task.
    let tasks = f.store.tasks(&f.waiting).await.unwrap();
    let mut t = tasks[0].clone();
    t.state = TaskState::Running;
    t.attempts = 1;
    f.store.update_task(&f.waiting, &t).await.unwrap();
    f.store
        .set_host_state(&f.waiting, "web1", HostState::Running)
        .await
        .unwrap();
    let update = next_event(&mut body, "update").await;
    assert_eq!(
        update["cells"],
        serde_json::json!([{"stage": 0, "host": "web1", "state": "running"}]),
        "only what changed"
    );
    assert_eq!(
        update["hosts"],
        serde_json::json!([{"host": "web1", "state": "RUNNING"}])
    );
    assert_eq!(update["stages"][0]["state"], "running");

    f.store
        .finish_run(&f.waiting, RunState::Cancelled)
        .await
        .unwrap();
    let last = next_event(&mut body, "update").await;
    assert_eq!(last["state"], "CANCELLED");
    assert_eq!(last["finished"], true);
}

#[tokio::test]
async fn users_file_mistakes_name_the_entry_and_what_was_expected() {
    let e = UsersFile::from_yaml_str(
        "users:\n  - name: bob\n    password_hash: plain\n",
        "users.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("users.yaml: users[0] (bob): password_hash:"),
        "{e}"
    );
    assert!(e.contains("expected an argon2 PHC string"), "{e}");
    let e = UsersFile::from_yaml_str(
        &format!(
            "users:\n  - name: bob\n    password_hash: {}\n    role: root\n",
            cheap_hash("x")
        ),
        "users.yaml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "users.yaml: users[0] (bob): role \"root\": expected user, developer or admin"
    );
    let e = UsersFile::from_yaml_str("users:\n  - name: bob\n    pasword: x\n", "users.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("users.yaml:3:"), "{e}");
    let u = UsersFile::from_yaml_str("", "users.yaml").unwrap();
    assert!(u.names().is_empty());
    assert_eq!(User::new("x").with_roles(["user"]).roles.unwrap(), ["user"]);
}
