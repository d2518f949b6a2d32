//! Cancel from the page while a controller drives the run, and a task's output tail on the
//! host page, over a real SQLite store file.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::PasswordHasher;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use deployer_core::fixture::{FakeConnector, FakeHost, FakeReply};
use deployer_core::*;
use deployer_web::{UsersFile, Web};
use http_body_util::BodyExt;
use tower::ServiceExt;

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

struct Browser {
    router: axum::Router,
    cookies: Vec<String>,
}

impl Browser {
    async fn send(&mut self, mut req: Request<Body>) -> (StatusCode, String, String) {
        if !self.cookies.is_empty() {
            req.headers_mut()
                .insert(header::COOKIE, self.cookies.join("; ").parse().unwrap());
        }
        let res = self.router.clone().oneshot(req).await.unwrap();
        for c in res.headers().get_all(header::SET_COOKIE) {
            let pair = c.to_str().unwrap().split(';').next().unwrap().to_string();
            let name = pair.split('=').next().unwrap().to_string();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            if !pair.ends_with('=') {
                self.cookies.push(pair);
            }
        }
        let status = res.status();
        let location = res
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, location, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get(&mut self, uri: &str) -> String {
        let (status, _, body) = self
            .send(Request::get(uri).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        body
    }

    async fn post(&mut self, uri: &str, form: &[(&str, &str)]) -> (StatusCode, String, String) {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(serde_urlencoded::to_string(form).unwrap()))
                .unwrap(),
        )
        .await
    }
}

fn hidden(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap();
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_the_page_stops_a_driven_run_like_a_first_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        deployer_store::SqliteStore::open(dir.path().join("runs.db"))
            .await
            .unwrap(),
    );
    let mut commands = CommandRegistry::new();
    commands.register::<Shell>("shell");
    let tasklist = Tasklist::new("slow deploy")
        .stage(Stage::new("Unpack", 1).task(Task::new("shell").on("web1").arg("cmd", "unpack v2")))
        .stage(Stage::new("Restart", 1).tasks((1..=3).map(|h| {
            Task::new("shell")
                .on(format!("web{h}"))
                .arg("cmd", "sleep 1")
        })));
    let plan = Plan::build(&tasklist, &commands).unwrap();
    let slow = || FakeReply::ok().delay(Duration::from_millis(1500));
    let connector = FakeConnector::new()
        .with_host(
            FakeHost::new("web1")
                .reply(
                    "unpack",
                    FakeReply::ok().stdout("unpacking v2\nswitched current to v2\n"),
                )
                .reply("sleep", slow()),
        )
        .with_host(FakeHost::new("web2").reply("sleep", slow()))
        .with_host(FakeHost::new("web3").reply("sleep", slow()));
    let runs = Runs::new(store.clone());
    let id = runs
        .create(&plan, "tasklist:slow.json", "alice")
        .await
        .unwrap();
    let drive = {
        let (runs, id) = (runs.clone(), id.clone());
        tokio::spawn(async move {
            let executor = Executor::new(Arc::new(connector));
            runs.drive(&executor, &id, &plan, RunOptions::default())
                .await
        })
    };
    // Wait until the restart of web1 runs.
    for _ in 0..100 {
        let tasks = store.tasks(&id).await.unwrap();
        if tasks[1].state == TaskState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let users = format!(
        "users:\n  - name: carol\n    password_hash: {}\n    role: developer\n",
        argon2::Argon2::from(argon2::Params::new(1024, 1, 1, None).unwrap())
            .hash_password_with_salt(b"pw", b"saltsaltsaltsalt")
            .unwrap()
    );
    let web = Web::new(store.clone()).authenticator(Arc::new(
        UsersFile::from_yaml_str(&users, "users.yaml").unwrap(),
    ));
    let mut b = Browser {
        router: web.router(),
        cookies: Vec::new(),
    };
    let form = b.get("/login").await;
    let token = hidden(&form, "login_token");
    let (status, _, _) = b
        .post(
            "/login",
            &[
                ("name", "carol"),
                ("password", "pw"),
                ("login_token", &token),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    let page = b.get(&format!("/runs/{id}")).await;
    assert!(
        page.contains("id=\"run-state\" class=\"badge st-running\" data-state=\"RUNNING\""),
        "{page}"
    );
    assert!(page.contains("<button id=\"cancel\""), "{page}");
    let csrf = hidden(&page, "csrf");
    let (status, location, body) = b
        .post(&format!("/runs/{id}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location, format!("/runs/{id}"));
    assert_eq!(
        store.cancel_request(&id).await.unwrap().unwrap().by,
        "carol"
    );
    let page = b.get(&format!("/runs/{id}")).await;
    assert!(page.contains("cancel requested by carol"));
    assert!(!page.contains("<button id=\"cancel\""), "asked once");

    let report = tokio::time::timeout(Duration::from_secs(10), drive)
        .await
        .expect("the controller sees the request")
        .unwrap()
        .unwrap();
    assert!(!report.succeeded());
    let run = store.run(&id).await.unwrap();
    assert_eq!(run.state, RunState::Cancelled);
    let tasks = store.tasks(&id).await.unwrap();
    assert_eq!(
        tasks[1].state,
        TaskState::Succeeded,
        "the running task finished"
    );
    assert_eq!(tasks[3].state, TaskState::NotRun, "nothing new started");

    let (status, _, body) = b
        .post(&format!("/runs/{id}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body.contains("has finished (CANCELLED)"), "{body}");

    // The unpack task's output, on web1's page of the run.
    let host = b.get(&format!("/runs/{id}/hosts/web1")).await;
    assert!(
        host.contains("<pre class=\"output\">unpacking v2\nswitched current to v2"),
        "{host}"
    );
}
