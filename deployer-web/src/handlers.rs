//! The router: authentication, CSRF, content negotiation, and one handler per page.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use deployer_core::{Approver, DecideError, RunId, RunState, RunStore, StoreError};
use serde::Deserialize;

use crate::auth::{Authenticator, Login, User};
use crate::model::{self, RunFilter};
use crate::pages;
use crate::roles::{RoleSource, UserRoles};
use crate::session::{Sessions, same_token, token};

/// The session cookie.
const SESSION_COOKIE: &str = "deployer_session";
/// The login form's double-submit token cookie.
const LOGIN_COOKIE: &str = "deployer_login";
/// Runs per page of the list.
const PER_PAGE: usize = 50;

pub(crate) const CSRF_REFUSED: &str = "CSRF token missing or wrong";

/// What the builder sets.
#[derive(Clone)]
pub(crate) struct Config {
    pub authenticator: Option<Arc<dyn Authenticator>>,
    pub roles: Arc<dyn RoleSource>,
    pub session_ttl: Duration,
    pub secure_cookies: bool,
    pub allow_anonymous_read: bool,
    pub title: String,
    pub base_path: Option<String>,
}

/// Everything the handlers share.
#[derive(Clone)]
pub(crate) struct Shared {
    pub config: Config,
    pub store: Arc<dyn RunStore>,
    pub sessions: Arc<Sessions>,
}

impl Shared {
    pub fn new(store: Arc<dyn RunStore>) -> Shared {
        Shared {
            config: Config {
                authenticator: None,
                roles: Arc::new(UserRoles),
                session_ttl: Duration::from_secs(12 * 3600),
                secure_cookies: true,
                allow_anonymous_read: false,
                title: "Deploys".to_string(),
                base_path: None,
            },
            store,
            sessions: Arc::new(Sessions::default()),
        }
    }
}

type S = Arc<Shared>;

/// Who asks, from where, for what: put in the request's extensions by [`authenticate`].
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    /// The path the router is mounted under (`""` or `/deploys`).
    pub prefix: String,
    /// The logged-in user, if any.
    pub user: Option<User>,
    /// The session's CSRF token.
    pub csrf: Option<String>,
    /// The session id.
    pub session: Option<String>,
    /// Whether the answer is JSON.
    pub json: bool,
    /// The page title.
    pub title: String,
}

impl Ctx {
    /// `prefix + path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }

    /// The runs list: `/` standalone, the prefix itself under one (`Router::nest` does not
    /// match `/deploys/`).
    pub fn home(&self) -> String {
        if self.prefix.is_empty() {
            "/".to_string()
        } else {
            self.prefix.clone()
        }
    }
}

pub(crate) fn router(shared: S) -> Router {
    Router::new()
        .route("/", get(runs))
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/hosts/{host}", get(run_host))
        .route("/runs/{id}/decide", post(decide))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/hosts/{host}", get(host))
        .route("/approvals", get(approvals))
        .route("/approvals/events", get(approvals_events))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .layer(middleware::from_fn_with_state(shared.clone(), authenticate))
        .with_state(shared)
}

/// The mount prefix: what a `Router::nest` consumed of the original path.
fn prefix_of(shared: &Shared, req: &Request) -> String {
    if let Some(base) = &shared.config.base_path {
        return base.clone();
    }
    let stripped = req.uri().path();
    let original = req
        .extensions()
        .get::<OriginalUri>()
        .map(|o| o.0.path().to_string())
        .unwrap_or_else(|| stripped.to_string());
    let prefix = if let Some(p) = original.strip_suffix(stripped) {
        p.to_string()
    } else if stripped == "/" {
        original
    } else {
        String::new()
    };
    prefix.trim_end_matches('/').to_string()
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// A `Set-Cookie` value: `HttpOnly; SameSite=Strict; Path=<prefix>`, `Secure` when enabled.
fn set_cookie(
    shared: &Shared,
    prefix: &str,
    name: &str,
    value: &str,
    max_age: Duration,
) -> HeaderValue {
    let path = if prefix.is_empty() { "/" } else { prefix };
    // Whole seconds, rounded up: a TTL under a second must not read as "delete now".
    let secs = max_age.as_secs() + u64::from(max_age.subsec_nanos() > 0);
    let c = cookie::Cookie::build((name, value))
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(shared.config.secure_cookies)
        .path(path.to_string())
        .max_age(cookie::time::Duration::seconds(secs as i64))
        .build();
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/")
}

/// Resolves who asks (session cookie, else the authenticator on the headers), refuses the
/// anonymous (401 for JSON, a redirect to the login form for HTML) where anonymous reading is
/// not allowed, and puts a [`Ctx`] in the request.
async fn authenticate(State(shared): State<S>, mut req: Request, next: Next) -> Response {
    let prefix = prefix_of(&shared, &req);
    let json = wants_json(req.headers());
    let mut ctx = Ctx {
        prefix,
        user: None,
        csrf: None,
        session: None,
        json,
        title: shared.config.title.clone(),
    };
    let mut new_cookie = None;
    if let Some(id) = cookie_value(req.headers(), SESSION_COOKIE)
        && let Some(s) = shared.sessions.get(&id)
    {
        ctx.user = Some(s.user);
        ctx.csrf = Some(s.csrf);
        ctx.session = Some(id);
    }
    let path = req.uri().path().to_string();
    if ctx.user.is_none()
        && !path.starts_with("/assets/")
        && let Some(auth) = &shared.config.authenticator
        && let Some(user) = auth.authenticate(req.headers(), None).await
    {
        match shared.sessions.create(user, shared.config.session_ttl) {
            Some((id, s)) => {
                new_cookie = Some(set_cookie(
                    &shared,
                    &ctx.prefix,
                    SESSION_COOKIE,
                    &id,
                    shared.config.session_ttl,
                ));
                ctx.user = Some(s.user);
                ctx.csrf = Some(s.csrf);
                ctx.session = Some(id);
            }
            None => {
                return error(
                    &ctx,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no random numbers for a session",
                );
            }
        }
    }
    if ctx.user.is_none() && !is_public(&path) {
        let read_only = req.method() == Method::GET || req.method() == Method::HEAD;
        if !(shared.config.allow_anonymous_read && read_only) {
            if ctx.json || req.method() != Method::GET || path.ends_with("/events") {
                return error(
                    &ctx,
                    StatusCode::UNAUTHORIZED,
                    "authentication required: log in first",
                );
            }
            let original = req
                .extensions()
                .get::<OriginalUri>()
                .map(|o| o.0.clone())
                .unwrap_or_else(|| req.uri().clone());
            let next_url = original
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let q = serde_urlencoded::to_string([("next", next_url)]).unwrap_or_default();
            return Redirect::to(&format!("{}?{q}", ctx.url("/login"))).into_response();
        }
    }
    req.extensions_mut().insert(ctx);
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    if let Some(c) = new_cookie {
        h.append(header::SET_COOKIE, c);
    }
    // Only this origin's scripts, styles, forms and frames: no injected script runs, and no
    // other site can frame the Approve button (clickjacking).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'; object-src 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// An error page or `{"error": …}`.
pub(crate) fn error(ctx: &Ctx, status: StatusCode, message: &str) -> Response {
    if ctx.json {
        (status, axum::Json(serde_json::json!({"error": message}))).into_response()
    } else {
        (
            status,
            Html(pages::error(ctx, status, message).into_string()),
        )
            .into_response()
    }
}

fn store_error(ctx: &Ctx, e: StoreError) -> Response {
    let status = match &e {
        StoreError::NotFound { .. }
        | StoreError::InvalidId { .. }
        | StoreError::NoApproval { .. } => StatusCode::NOT_FOUND,
        StoreError::ApprovalClosed { .. } | StoreError::RunFinished { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(ctx, status, &e.to_string())
}

/// A page as HTML or JSON, with the viewer's CSRF token in the JSON.
fn respond<T: serde::Serialize>(
    ctx: &Ctx,
    data: &T,
    html: impl FnOnce() -> maud::Markup,
) -> Response {
    if ctx.json {
        let mut value = serde_json::to_value(data).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(m) = &mut value {
            m.insert("viewer".into(), viewer_json(ctx));
        }
        axum::Json(value).into_response()
    } else {
        let mut r = Html(html().into_string()).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

fn viewer_json(ctx: &Ctx) -> serde_json::Value {
    serde_json::json!({
        "user": ctx.user.as_ref().map(|u| &u.name),
        "csrf_token": ctx.csrf,
    })
}

fn parse_id(ctx: &Ctx, id: &str) -> Result<RunId, Response> {
    id.parse()
        .map_err(|e: StoreError| error(ctx, StatusCode::NOT_FOUND, &e.to_string()))
}

/// Checks the CSRF token of a POST: the form field `csrf` or the `X-CSRF-Token` header.
fn check_csrf(ctx: &Ctx, headers: &HeaderMap, field: Option<&str>) -> Result<(), Response> {
    let given = field.map(str::to_string).or_else(|| {
        headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    match (&ctx.csrf, given) {
        (Some(expected), Some(given)) if same_token(expected, &given) => Ok(()),
        _ => Err(error(ctx, StatusCode::FORBIDDEN, CSRF_REFUSED)),
    }
}

/// The filters and page of the runs list, as the query string gives them.
#[derive(Debug, Default, Deserialize)]
struct RunsQuery {
    state: Option<String>,
    user: Option<String>,
    name: Option<String>,
    since: Option<String>,
    until: Option<String>,
    page: Option<String>,
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_time(field: &str, text: &str, end_of_day: bool) -> Result<std::time::SystemTime, String> {
    let full = if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
        format!(
            "{text}T{}Z",
            if end_of_day { "23:59:59" } else { "00:00:00" }
        )
    } else {
        text.to_string()
    };
    humantime::parse_rfc3339_weak(&full).map_err(|e| {
        format!(
            "query parameter {field} \"{}\": {e} (expected a date such as 2025-01-31 or a time such as 2025-01-31T10:00:00Z)",
            text.escape_debug()
        )
    })
}

impl RunsQuery {
    fn filter(&self) -> Result<(RunFilter, usize), String> {
        let state = match nonempty(&self.state) {
            None => None,
            Some(s) => Some(s.to_ascii_uppercase().parse::<RunState>().map_err(|_| {
                format!(
                    "query parameter state \"{}\": expected one of PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, DEGRADED",
                    s.escape_debug()
                )
            })?),
        };
        let page = match nonempty(&self.page) {
            None => 1,
            Some(p) => p.parse::<usize>().ok().filter(|p| *p >= 1).ok_or_else(|| {
                format!(
                    "query parameter page \"{}\": expected a page number from 1",
                    p.escape_debug()
                )
            })?,
        };
        Ok((
            RunFilter {
                state,
                user: nonempty(&self.user).map(str::to_string),
                name: nonempty(&self.name).map(str::to_string),
                since: nonempty(&self.since)
                    .map(|t| parse_time("since", t, false))
                    .transpose()?,
                until: nonempty(&self.until)
                    .map(|t| parse_time("until", t, true))
                    .transpose()?,
            },
            page,
        ))
    }
}

async fn runs(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Query(q): Query<RunsQuery>,
) -> Response {
    let (filter, page) = match q.filter() {
        Ok(f) => f,
        Err(e) => return error(&ctx, StatusCode::BAD_REQUEST, &e),
    };
    match model::runs_page(shared.store.as_ref(), filter, page, PER_PAGE).await {
        Ok(p) => respond(&ctx, &p, || pages::runs(&ctx, &p, &q_string(&q))),
        Err(e) => store_error(&ctx, e),
    }
}

/// The filters as a query string (without `page`), for the pager's links.
fn q_string(q: &RunsQuery) -> String {
    let pairs: Vec<(&str, &str)> = [
        ("state", &q.state),
        ("user", &q.user),
        ("name", &q.name),
        ("since", &q.since),
        ("until", &q.until),
    ]
    .into_iter()
    .filter_map(|(k, v)| nonempty(v).map(|v| (k, v)))
    .collect();
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// The roles of the viewer for a run about `target`.
async fn roles_for(
    shared: &Shared,
    user: &User,
    target: Option<&str>,
) -> Result<Option<Vec<String>>, String> {
    shared
        .config
        .roles
        .roles(user, target)
        .await
        .map_err(|e| format!("cannot look up the roles of {}: {e}", user.name))
}

/// Whether `roles` allow cancelling: `developer` or stronger, or roles unknown.
fn may_cancel(roles: &Option<Vec<String>>) -> bool {
    roles
        .as_ref()
        .is_none_or(|r| r.iter().any(|r| r == deployer_core::DEFAULT_APPROVER_ROLE))
}

/// Fills in whether the viewer may decide each approval.
async fn decide_rights(
    shared: &Shared,
    ctx: &Ctx,
    views: &mut [model::ApprovalView],
    approvals: &[deployer_core::Approval],
) {
    let Some(user) = &ctx.user else { return };
    for (v, a) in views.iter_mut().zip(approvals) {
        if v.state != deployer_core::ApprovalState::Pending {
            continue;
        }
        match roles_for(shared, user, a.request.target.as_deref()).await {
            Ok(roles) => {
                let approver = Approver {
                    name: user.name.clone(),
                    roles,
                };
                match a.check(&approver) {
                    Ok(()) => v.can_decide = true,
                    Err(e) => v.refusal = Some(e.to_string()),
                }
            }
            Err(e) => v.refusal = Some(e),
        }
    }
}

/// The run page's data.
#[derive(Debug, serde::Serialize)]
pub(crate) struct RunPage {
    #[serde(flatten)]
    pub core: model::RunCore,
    pub approvals: Vec<model::ApprovalView>,
    pub can_cancel: bool,
}

/// The target of a run, for role lookups: the first one its approvals name.
fn target_of(approvals: &[deployer_core::Approval]) -> Option<&str> {
    approvals.iter().find_map(|a| a.request.target.as_deref())
}

async fn run(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let id = match parse_id(&ctx, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let store = shared.store.as_ref();
    let core = match model::run_core(store, &id).await {
        Ok(c) => c,
        Err(e) => return store_error(&ctx, e),
    };
    let approvals = match store.approvals(&id).await {
        Ok(a) => a,
        Err(e) => return store_error(&ctx, e),
    };
    let mut views: Vec<model::ApprovalView> = approvals
        .iter()
        .map(|a| model::approval_view(a, None))
        .collect();
    decide_rights(&shared, &ctx, &mut views, &approvals).await;
    let can_cancel = match &ctx.user {
        Some(user) if !core.finished && core.cancel_requested.is_none() => {
            roles_for(&shared, user, target_of(&approvals))
                .await
                .is_ok_and(|r| may_cancel(&r))
        }
        _ => false,
    };
    let page = RunPage {
        core,
        approvals: views,
        can_cancel,
    };
    respond(&ctx, &page, || pages::run(&ctx, &page))
}

async fn run_host(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path((id, host)): Path<(String, String)>,
) -> Response {
    let id = match parse_id(&ctx, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match model::run_host(shared.store.as_ref(), &id, &host).await {
        Ok(Some(v)) => respond(&ctx, &v, || pages::run_host(&ctx, &v)),
        Ok(None) => error(
            &ctx,
            StatusCode::NOT_FOUND,
            &format!("run {id} has no host {host}"),
        ),
        Err(e) => store_error(&ctx, e),
    }
}

async fn host(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(host): Path<String>,
) -> Response {
    match model::host_page(shared.store.as_ref(), &host, 200).await {
        Ok(v) => respond(&ctx, &v, || pages::host(&ctx, &v)),
        Err(e) => store_error(&ctx, e),
    }
}

/// The approvals page's data.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ApprovalsPage {
    pub approvals: Vec<model::ApprovalView>,
}

async fn approvals(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
) -> Response {
    let store = shared.store.as_ref();
    let pending = match store.pending_approvals().await {
        Ok(p) => p,
        Err(e) => return store_error(&ctx, e),
    };
    let mut names: std::collections::HashMap<RunId, Option<String>> = Default::default();
    let mut views = Vec::with_capacity(pending.len());
    for a in &pending {
        let name = match names.get(&a.request.run) {
            Some(n) => n.clone(),
            None => {
                let n = store.run(&a.request.run).await.ok().map(|r| r.name);
                names.insert(a.request.run.clone(), n.clone());
                n
            }
        };
        views.push(model::approval_view(a, name));
    }
    decide_rights(&shared, &ctx, &mut views, &pending).await;
    let page = ApprovalsPage { approvals: views };
    respond(&ctx, &page, || pages::approvals(&ctx, &page))
}

/// The decide form.
#[derive(Debug, Deserialize)]
struct DecideForm {
    step: Option<String>,
    decision: Option<String>,
    comment: Option<String>,
    csrf: Option<String>,
    /// `approvals` to come back to the approvals page.
    back: Option<String>,
}

/// What every POST on a run checks first, in this order: the CSRF token, a logged-in user,
/// a run id.
fn post_on_run<'a>(
    ctx: &'a Ctx,
    headers: &HeaderMap,
    csrf: Option<&str>,
    id: &str,
) -> Result<(&'a User, RunId), Response> {
    check_csrf(ctx, headers, csrf)?;
    let Some(user) = &ctx.user else {
        return Err(error(
            ctx,
            StatusCode::UNAUTHORIZED,
            "authentication required: log in first",
        ));
    };
    Ok((user, parse_id(ctx, id)?))
}

async fn decide(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<DecideForm>,
) -> Response {
    let (user, id) = match post_on_run(&ctx, &headers, form.csrf.as_deref(), &id) {
        Ok(checked) => checked,
        Err(r) => return r,
    };
    let Some(step) = form.step.as_deref().filter(|s| !s.is_empty()) else {
        return error(
            &ctx,
            StatusCode::BAD_REQUEST,
            "form field step: missing (expected the step's path, such as deploy/approve)",
        );
    };
    let approved = match form.decision.as_deref() {
        Some("approve") => true,
        Some("reject") => false,
        other => {
            return error(
                &ctx,
                StatusCode::BAD_REQUEST,
                &format!(
                    "form field decision: {} (expected approve or reject)",
                    other.map_or("missing".to_string(), |o| format!(
                        "\"{}\"",
                        o.escape_debug()
                    ))
                ),
            );
        }
    };
    let store = shared.store.as_ref();
    let target = match store.approvals(&id).await {
        Ok(a) => a
            .into_iter()
            .find(|a| a.request.step == step)
            .and_then(|a| a.request.target),
        Err(e) => return store_error(&ctx, e),
    };
    let roles = match roles_for(&shared, user, target.as_deref()).await {
        Ok(r) => r,
        Err(e) => return error(&ctx, StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let approver = Approver {
        name: user.name.clone(),
        roles,
    };
    match deployer_core::decide(store, &id, step, &approver, approved, form.comment.clone()).await {
        Ok(a) => {
            if ctx.json {
                axum::Json(model::approval_view(&a, None)).into_response()
            } else if form.back.as_deref() == Some("approvals") {
                Redirect::to(&ctx.url("/approvals")).into_response()
            } else {
                Redirect::to(&ctx.url(&format!("/runs/{id}"))).into_response()
            }
        }
        Err(DecideError::Refused(r)) => error(&ctx, StatusCode::FORBIDDEN, &r.to_string()),
        Err(DecideError::Store(e)) => store_error(&ctx, e),
        Err(e) => error(&ctx, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The cancel form.
#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn cancel(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (user, id) = match post_on_run(&ctx, &headers, form.csrf.as_deref(), &id) {
        Ok(checked) => checked,
        Err(r) => return r,
    };
    let store = shared.store.as_ref();
    let approvals = match store.approvals(&id).await {
        Ok(a) => a,
        Err(e) => return store_error(&ctx, e),
    };
    let roles = match roles_for(&shared, user, target_of(&approvals)).await {
        Ok(r) => r,
        Err(e) => return error(&ctx, StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    if !may_cancel(&roles) {
        return error(
            &ctx,
            StatusCode::FORBIDDEN,
            &format!(
                "{} may not cancel run {id}: it needs role developer{}, and {} holds {}",
                user.name,
                target_of(&approvals)
                    .map(|t| format!(" on {t}"))
                    .unwrap_or_default(),
                user.name,
                roles
                    .as_ref()
                    .and_then(|r| r.last())
                    .map_or("no role", String::as_str)
            ),
        );
    }
    match model::request_cancel(store, &id, &user.name).await {
        Ok(c) => {
            if ctx.json {
                axum::Json(c).into_response()
            } else {
                Redirect::to(&ctx.url(&format!("/runs/{id}"))).into_response()
            }
        }
        Err(e) => store_error(&ctx, e),
    }
}

/// The login form's query.
#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Where to go after login: a path under the prefix, else the runs list.
fn safe_next(ctx: &Ctx, next: Option<&str>) -> String {
    let home = ctx.home();
    match next {
        Some(n)
            if (n == home || n.starts_with(&format!("{}/", ctx.prefix)))
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => home,
    }
}

async fn login_form(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(&ctx, q.next.as_deref());
    login_page(&shared, &ctx, &headers, &next, None, StatusCode::OK)
}

/// The login form, with the login token of the browser's cookie when it holds one: a second
/// tab, or a request the browser makes on its own (`/favicon.ico`, redirected here), must not
/// change the token under a form already shown.
fn login_page(
    shared: &Shared,
    ctx: &Ctx,
    headers: &HeaderMap,
    next: &str,
    problem: Option<&str>,
    status: StatusCode,
) -> Response {
    let kept = cookie_value(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(token) = kept.or_else(token) else {
        return error(
            ctx,
            StatusCode::SERVICE_UNAVAILABLE,
            "no random numbers for a login token",
        );
    };
    let mut r = if ctx.json {
        (
            status,
            axum::Json(serde_json::json!({
                "login_token": token,
                "error": problem,
                "user": ctx.user.as_ref().map(|u| &u.name),
            })),
        )
            .into_response()
    } else {
        (
            status,
            Html(pages::login(ctx, &token, next, problem).into_string()),
        )
            .into_response()
    };
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            shared,
            &ctx.prefix,
            LOGIN_COOKIE,
            &token,
            Duration::from_secs(3600),
        ),
    );
    r
}

/// The login form.
#[derive(Deserialize)]
struct LoginForm {
    name: Option<String>,
    password: Option<String>,
    login_token: Option<String>,
    next: Option<String>,
}

async fn login(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let cookie = cookie_value(&headers, LOGIN_COOKIE);
    match (cookie, form.login_token.as_deref()) {
        (Some(c), Some(f)) if same_token(&c, f) => {}
        _ => return error(&ctx, StatusCode::FORBIDDEN, CSRF_REFUSED),
    }
    let next = safe_next(&ctx, form.next.as_deref());
    let login = Login {
        name: form.name.unwrap_or_default().trim().to_string(),
        password: form.password.unwrap_or_default(),
    };
    let user = match &shared.config.authenticator {
        Some(a) if !login.name.is_empty() => a.authenticate(&headers, Some(&login)).await,
        _ => None,
    };
    let Some(user) = user else {
        return login_page(
            &shared,
            &ctx,
            &headers,
            &next,
            Some("wrong user name or password"),
            StatusCode::UNAUTHORIZED,
        );
    };
    if let Some(old) = &ctx.session {
        shared.sessions.remove(old);
    }
    let Some((id, session)) = shared.sessions.create(user, shared.config.session_ttl) else {
        return error(
            &ctx,
            StatusCode::SERVICE_UNAVAILABLE,
            "no random numbers for a session",
        );
    };
    let mut r = if ctx.json {
        axum::Json(serde_json::json!({
            "user": session.user.name,
            "roles": session.user.roles,
            "csrf_token": session.csrf,
        }))
        .into_response()
    } else {
        Redirect::to(&next).into_response()
    };
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(
            &shared,
            &ctx.prefix,
            SESSION_COOKIE,
            &id,
            shared.config.session_ttl,
        ),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(&shared, &ctx.prefix, LOGIN_COOKIE, "", Duration::ZERO),
    );
    r
}

async fn logout(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = check_csrf(&ctx, &headers, form.csrf.as_deref()) {
        return r;
    }
    if let Some(id) = &ctx.session {
        shared.sessions.remove(id);
    }
    let mut r = if ctx.json {
        axum::Json(serde_json::json!({"user": null})).into_response()
    } else {
        Redirect::to(&ctx.url("/login")).into_response()
    };
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&shared, &ctx.prefix, SESSION_COOKIE, "", Duration::ZERO),
    );
    r
}

/// How often the event stream of a submitted run looks again without a change: workers
/// whose heartbeats lapse write nothing.
const WORK_LOOK_EVERY: Duration = Duration::from_secs(3);

/// The run's live state that the event stream compares between looks.
#[derive(Debug, Clone, PartialEq)]
struct Live {
    state: RunState,
    counts_text: String,
    progress: model::Progress,
    eta: Option<u64>,
    stages: Vec<(model::CellState, usize, usize)>,
    cells: std::collections::HashMap<(usize, String), model::CellState>,
    hosts: std::collections::HashMap<String, deployer_core::HostState>,
    cancel: Option<model::CancelView>,
    pending: Vec<String>,
    work: Option<model::WorkView>,
}

async fn look(store: &dyn RunStore, id: &RunId) -> Result<(Live, model::RunCore), StoreError> {
    let core = model::run_core(store, id).await?;
    let now = std::time::SystemTime::now();
    let pending = store
        .approvals(id)
        .await?
        .into_iter()
        .filter(|a| a.state(now) == deployer_core::ApprovalState::Pending)
        .map(|a| a.request.step)
        .collect();
    let live = Live {
        state: core.state,
        counts_text: core.counts_text.clone(),
        progress: core.progress,
        eta: core.eta_secs.map(|s| s.round() as u64),
        stages: core
            .stages
            .iter()
            .map(|s| (s.state, s.done, s.total))
            .collect(),
        cells: core
            .stages
            .iter()
            .flat_map(|s| {
                s.cells
                    .iter()
                    .map(move |c| ((s.index, c.host.clone()), c.state))
            })
            .collect(),
        hosts: core
            .hosts
            .iter()
            .map(|h| (h.host.clone(), h.state))
            .collect(),
        cancel: core.cancel_requested.clone(),
        pending,
        work: core.work.clone(),
    };
    Ok((live, core))
}

/// What changed between two looks (everything when there was none before), as the event's
/// JSON.
fn delta(before: Option<&Live>, now: &Live, core: &model::RunCore) -> serde_json::Value {
    let cells: Vec<serde_json::Value> = now
        .cells
        .iter()
        .filter(|(k, v)| before.is_none_or(|b| b.cells.get(*k) != Some(*v)))
        .map(|((stage, host), state)| serde_json::json!({"stage": stage, "host": host, "state": state}))
        .collect();
    let hosts: Vec<serde_json::Value> = now
        .hosts
        .iter()
        .filter(|(k, v)| before.is_none_or(|b| b.hosts.get(*k) != Some(*v)))
        .map(|(host, state)| serde_json::json!({"host": host, "state": state}))
        .collect();
    let stages: Vec<serde_json::Value> = now
        .stages
        .iter()
        .enumerate()
        .filter(|(i, s)| before.is_none_or(|b| b.stages.get(*i) != Some(*s)))
        .map(|(i, (state, done, total))| serde_json::json!({"index": i, "state": state, "done": done, "total": total}))
        .collect();
    serde_json::json!({
        "state": now.state,
        "finished": now.state.is_finished(),
        "counts": core.counts,
        "counts_text": now.counts_text,
        "progress": now.progress,
        "eta_secs": now.eta,
        "eta": now.eta.map(|s| model::human(Duration::from_secs(s))),
        "stages": stages,
        "cells": cells,
        "hosts": hosts,
        "cancel_requested": now.cancel,
        "approvals_pending": now.pending,
        "work": now.work,
    })
}

/// `GET /runs/{id}/events`: an `update` event with everything at once, then one with what
/// changed whenever something did, until the run finishes.
async fn run_events(
    State(shared): State<S>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    let id = match parse_id(&ctx, &id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    if let Err(e) = shared.store.run(&id).await {
        return store_error(&ctx, e);
    }
    struct St {
        store: Arc<dyn RunStore>,
        feed: deployer_core::ChangeFeed,
        id: RunId,
        last: Option<Live>,
        done: bool,
    }
    let st = St {
        feed: shared.store.changes(),
        store: shared.store.clone(),
        id,
        last: None,
        done: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match &st.last {
                // A submitted run's zones lose their workers without a write: look again
                // now and then, so a waiting run says so within seconds.
                Some(last) if last.work.is_some() => {
                    tokio::select! {
                        _ = st.feed.changed() => {}
                        _ = tokio::time::sleep(WORK_LOOK_EVERY) => {}
                    }
                }
                Some(_) => st.feed.changed().await,
                None => {}
            }
            match look(st.store.as_ref(), &st.id).await {
                Ok((live, core)) => {
                    if st.last.as_ref() == Some(&live) {
                        continue;
                    }
                    let data = delta(st.last.as_ref(), &live, &core);
                    st.done = live.state.is_finished();
                    st.last = Some(live);
                    let event = Event::default().event("update").data(data.to_string());
                    return Some((Ok::<_, Infallible>(event), st));
                }
                Err(e) => {
                    let event = Event::default()
                        .event("problem")
                        .data(serde_json::json!({"error": e.to_string()}).to_string());
                    if st.last.is_none() {
                        st.done = true;
                    }
                    return Some((Ok(event), st));
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `GET /approvals/events`: an `approvals` event with every pending approval (`run`, `step`)
/// at first and whenever the list changes.
async fn approvals_events(State(shared): State<S>) -> Response {
    let stream = futures::stream::unfold(
        (
            shared.store.clone(),
            shared.store.changes(),
            None::<Vec<(String, String)>>,
        ),
        |(store, mut feed, last)| async move {
            loop {
                if last.is_some() {
                    feed.changed().await;
                }
                let Ok(pending) = store.pending_approvals().await else {
                    feed.changed().await;
                    continue;
                };
                let now: Vec<(String, String)> = pending
                    .into_iter()
                    .map(|a| (a.request.run.to_string(), a.request.step))
                    .collect();
                if last.as_ref() == Some(&now) {
                    continue;
                }
                let data = serde_json::json!({
                    "pending": now.iter().map(|(run, step)| serde_json::json!({"run": run, "step": step})).collect::<Vec<_>>(),
                });
                let event = Event::default().event("approvals").data(data.to_string());
                return Some((Ok::<_, Infallible>(event), (store, feed, Some(now))));
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../assets/app.js"),
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../assets/style.css"),
    )
        .into_response()
}
