//! A run submitted to workers, over a real PostgreSQL store: the run page and its JSON say
//! which zone waits for a worker and which workers hold entries; the host page names the
//! worker that recorded each task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use deployer_core::fixture::Noop;
use deployer_core::*;
use deployer_store::PostgresStore;
use deployer_web::Web;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

#[path = "../../deployer-store/tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

async fn get(router: &axum::Router, uri: &str, json: bool) -> String {
    let mut req = Request::get(uri);
    if json {
        req = req.header(header::ACCEPT, "application/json");
    }
    let res = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_run_shows_its_unserved_zone_and_its_workers() {
    let server = pg::PgServer::start().await;
    let store = Arc::new(
        PostgresStore::connect(&server.database().await)
            .await
            .unwrap(),
    );

    let mut commands = CommandRegistry::new();
    commands.register::<Noop>("noop");
    let tasklist = Tasklist::new("zoned").stage(Stage::new("all", 10).tasks(vec![
        Task::new("noop").on("us1"),
        Task::new("noop").on("eu1"),
    ]));
    let zones: HashMap<&str, &str> = [("us1", "us"), ("eu1", "eu")].into();
    let plan = Plan::build(&tasklist, &commands).unwrap();
    let new = NewRun::from_plan(&plan, "test", "alice");
    let id = new.id.clone();
    store.create_run(new).await.unwrap();

    let web = Web::new(store.clone()).allow_anonymous_read(true);
    let router = web.router();
    // Not submitted yet: nothing about workers.
    let before: Value =
        serde_json::from_str(&get(&router, &format!("/runs/{id}"), true).await).unwrap();
    assert_eq!(before.get("work"), Some(&Value::Null), "{before}");
    let page = get(&router, &format!("/runs/{id}"), false).await;
    assert!(page.contains("<div id=\"work-status\" hidden"), "{page}");

    let submission =
        Submission::of_plan(&plan, &id, |h| zones.get(h).map(|z| z.to_string())).unwrap();
    store.submit(&submission).await.unwrap();
    let us = WorkerInfo {
        id: "us-w:1:ab".into(),
        zones: vec!["us".into()],
        commands: vec!["noop".into()],
    };
    store.heartbeat(&us, Duration::from_secs(60)).await.unwrap();
    let claim = WorkQueue::claim(&*store, &us, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the us entry is claimable by the us worker");
    assert_eq!(claim.host, "us1");
    let mut task = store.host_tasks(&id, "us1").await.unwrap().remove(0);
    task.state = TaskState::Succeeded;
    task.attempts = 1;
    store.record_task(&claim, &task).await.unwrap();

    let notice = "hosts in zone eu have no live worker (zones served: us)";
    let page = get(&router, &format!("/runs/{id}"), false).await;
    assert!(
        page.contains(&format!(
            "<p class=\"notice waiting\">waiting: {notice}</p>"
        )),
        "{page}"
    );
    assert!(
        page.contains("<li data-worker=\"us-w:1:ab\"><code>us-w:1:ab</code>: 1 claimed</li>"),
        "{page}"
    );
    let json: Value =
        serde_json::from_str(&get(&router, &format!("/runs/{id}"), true).await).unwrap();
    let work = &json["work"];
    assert_eq!(work["unserved_zones"], serde_json::json!(["eu"]), "{json}");
    assert_eq!(work["waiting"], serde_json::json!([notice]), "{json}");
    assert_eq!(
        work["claimed"],
        serde_json::json!([{"worker": "us-w:1:ab", "entries": 1}]),
        "{json}"
    );
    assert_eq!(work["pending"], 1, "{json}");

    // The host pages: the worker that recorded the task, none for a task no worker touched.
    let us_page = get(&router, &format!("/runs/{id}/hosts/us1"), false).await;
    assert!(
        us_page.contains("worker <code class=\"worker\">us-w:1:ab</code>"),
        "{us_page}"
    );
    let us_json: Value =
        serde_json::from_str(&get(&router, &format!("/runs/{id}/hosts/us1"), true).await).unwrap();
    assert_eq!(us_json["tasks"][0]["worker"], "us-w:1:ab", "{us_json}");
    let eu_json: Value =
        serde_json::from_str(&get(&router, &format!("/runs/{id}/hosts/eu1"), true).await).unwrap();
    assert_eq!(eu_json["tasks"][0]["worker"], Value::Null, "{eu_json}");

    // The event stream's first update carries the same work status.
    let res = router
        .clone()
        .oneshot(
            Request::get(format!("/runs/{id}/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = res.into_body();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an update within 10 s")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("{text}"));
    let update: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        update["work"]["waiting"],
        serde_json::json!([notice]),
        "{update}"
    );

    // A worker of eu comes alive: the zone no longer waits.
    let eu = WorkerInfo {
        id: "eu-w:2:cd".into(),
        zones: vec!["eu".into()],
        commands: vec!["noop".into()],
    };
    store.heartbeat(&eu, Duration::from_secs(60)).await.unwrap();
    let json: Value =
        serde_json::from_str(&get(&router, &format!("/runs/{id}"), true).await).unwrap();
    assert_eq!(json["work"]["waiting"], serde_json::json!([]), "{json}");
    assert_eq!(
        json["work"]["served_zones"],
        serde_json::json!(["eu", "us"]),
        "{json}"
    );
}
