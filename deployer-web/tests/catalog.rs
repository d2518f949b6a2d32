//! Roles from a catalog decide the Approve button and the decision: an approval that targets
//! `shop/prod` and needs role developer.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use deployer_catalog::{Catalog, CatalogData};
use deployer_core::*;
use deployer_web::{CatalogRoles, ProxyHeader, Web};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn get_json(router: &axum::Router, uri: &str, user: &str) -> serde_json::Value {
    let res = router
        .clone()
        .oneshot(
            Request::get(uri)
                .header("x-user", user)
                .header(header::ACCEPT, "application/json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn catalog_roles_on_the_target_decide_who_may_approve_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        deployer_store::SqliteStore::open(dir.path().join("runs.db"))
            .await
            .unwrap(),
    );
    let plan = Plan::build(&Tasklist::new("shop"), &CommandRegistry::new()).unwrap();
    let run = store
        .create_run(NewRun::from_plan(&plan, "book:shop@1.0.0", "alice"))
        .await
        .unwrap();
    store
        .set_run_state(&run.id, RunState::Running)
        .await
        .unwrap();
    store
        .request_approval(
            ApprovalRequest::new(run.id.clone(), "deploy/approve", "alice")
                .target("shop/prod")
                .approvers(Approvers::Role("developer".into())),
        )
        .await
        .unwrap();
    let data = CatalogData::from_yaml_str(
        r#"
projects:
- slug: shop
  owner: alice
  users: [{user: carol, role: developer}, {user: dave, role: user}]
  groups: [{slug: web, group_type: odoo, deployments: [{slug: prod}]}]
"#,
        "catalog.yaml",
    )
    .unwrap();
    let router = Web::new(store.clone())
        .authenticator(Arc::new(ProxyHeader::new("x-user").unwrap()))
        .roles(Arc::new(CatalogRoles::new(Catalog::in_memory(data))))
        .router();
    let uri = format!("/runs/{}", run.id);

    let carol = get_json(&router, &uri, "carol").await;
    assert_eq!(carol["approvals"][0]["can_decide"], true);
    assert_eq!(carol["can_cancel"], true);
    let dave = get_json(&router, &uri, "dave").await;
    assert_eq!(dave["approvals"][0]["can_decide"], false);
    assert_eq!(
        dave["approvals"][0]["refusal"],
        "dave may not decide step deploy/approve: it needs role developer on shop/prod, and dave holds user"
    );
    assert_eq!(dave["can_cancel"], false);
    let mallory = get_json(&router, &uri, "mallory").await;
    assert_eq!(mallory["approvals"][0]["can_decide"], false);

    // dave forges the decision with his own session's token: refused with the same text.
    let res = router
        .clone()
        .oneshot(
            Request::post(format!("/runs/{}/decide", run.id))
                .header("x-user", "dave")
                .header("x-csrf-token", "dave's token is per session")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("step=deploy%2Fapprove&decision=approve"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "no session yet: CSRF");
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let token = {
        let res = router
            .clone()
            .oneshot(
                Request::get("/approvals")
                    .header(header::COOKIE, &cookie)
                    .header(header::ACCEPT, "application/json")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        v["viewer"]["csrf_token"].as_str().unwrap().to_string()
    };
    let res = router
        .clone()
        .oneshot(
            Request::post(format!("/runs/{}/decide", run.id))
                .header(header::COOKIE, &cookie)
                .header("x-csrf-token", &token)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("step=deploy%2Fapprove&decision=approve"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("it needs role developer on shop/prod"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        store.approvals(&run.id).await.unwrap()[0]
            .decision
            .is_none()
    );
}
