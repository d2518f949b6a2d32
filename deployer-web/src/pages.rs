//! The HTML of every page (maud: every value is escaped).

use std::time::Duration;

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use crate::handlers::{ApprovalsPage, Ctx, RunPage};
use crate::model::{self, ApprovalView, CellState, HostPage, RunHostView, RunsPage, human};

fn url_part(s: &str) -> String {
    // A path segment: percent-encode everything but unreserved characters.
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn layout(ctx: &Ctx, title: &str, events: Option<String>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (ctx.title) }
                link rel="stylesheet" href=(ctx.url("/assets/style.css"));
                script src=(ctx.url("/assets/app.js")) defer {}
            }
            body data-events=[events] {
                header.top {
                    a.brand href=(ctx.home()) { (ctx.title) }
                    nav {
                        a href=(ctx.home()) { "Runs" }
                        a href=(ctx.url("/approvals")) { "Approvals" }
                    }
                    div.who {
                        @if let Some(user) = &ctx.user {
                            span #user { (user.name) }
                            form.logout method="post" action=(ctx.url("/logout")) {
                                input type="hidden" name="csrf" value=[ctx.csrf.as_deref()];
                                button type="submit" { "Log out" }
                            }
                        } @else {
                            a #login href=(ctx.url("/login")) { "Log in" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub(crate) fn error(ctx: &Ctx, status: StatusCode, message: &str) -> Markup {
    layout(
        ctx,
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            p #error.error { (message) }
        },
    )
}

fn state_badge(state: &str) -> Markup {
    html! { span class={ "badge st-" (state.to_ascii_lowercase()) } { (state) } }
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("—")
}

fn dur(secs: Option<f64>) -> String {
    secs.map(|s| human(Duration::from_secs_f64(s.max(0.0))))
        .unwrap_or_else(|| "—".to_string())
}

pub(crate) fn runs(ctx: &Ctx, p: &RunsPage, query: &str) -> Markup {
    let f = &p.filter;
    let state = f.state.map(|s| s.as_str()).unwrap_or("");
    let states = [
        "PENDING",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "DEGRADED",
    ];
    let time = |t: Option<std::time::SystemTime>| t.map(model::ts).unwrap_or_default();
    let page_url = |n: usize| {
        let sep = if query.is_empty() { "" } else { "&" };
        format!("{}?{query}{sep}page={n}", ctx.home())
    };
    layout(
        ctx,
        "Runs",
        None,
        html! {
            h1 { "Runs" }
            form #filter.filter method="get" action=(ctx.home()) {
                label { "State " select name="state" {
                    option value="" selected[state.is_empty()] { "any" }
                    @for s in states { option value=(s) selected[state == s] { (s) } }
                } }
                label { "User " input type="text" name="user" value=[f.user.as_deref()]; }
                label { "Name " input type="text" name="name" value=[f.name.as_deref()]; }
                label { "Since " input type="text" name="since" placeholder="2025-01-31" value=(time(f.since)); }
                label { "Until " input type="text" name="until" placeholder="2025-01-31" value=(time(f.until)); }
                button type="submit" { "Filter" }
            }
            @if !p.unreadable.is_empty() {
                ul.unreadable {
                    @for u in &p.unreadable { li { "unreadable run " code { (u.id) } ": " (u.problem) } }
                }
            }
            table #runs.runs {
                thead { tr { th { "Run" } th { "State" } th { "Started by" } th { "Created" } th { "Duration" } th { "Hosts" } th { "Outcome" } } }
                tbody {
                    @for r in &p.runs {
                        tr.run data-run=(r.id) data-state=(r.state.as_str()) {
                            td { a href=(ctx.url(&format!("/runs/{}", r.id))) { (r.name) } br; small.muted { (r.source) } }
                            td { (state_badge(r.state.as_str())) }
                            td { (r.started_by) }
                            td { (r.created) }
                            td { (dur(r.duration_secs)) }
                            td { (r.hosts) }
                            td.counts { (r.counts_text) }
                        }
                    }
                    @if p.runs.is_empty() { tr { td colspan="7" { "No runs." } } }
                }
            }
            nav.pager {
                @if p.page > 1 { a #prev href=(page_url(p.page - 1)) { "← newer" } }
                span { "page " (p.page) }
                @if p.more { a #next href=(page_url(p.page + 1)) { "older →" } }
            }
        },
    )
}

fn legend() -> Markup {
    html! {
        ul.legend {
            @for s in CellState::ALL { li { span class={ "swatch s-" (s.as_str()) } {} (s.as_str()) } }
        }
    }
}

fn approval(ctx: &Ctx, a: &ApprovalView, back: Option<&str>) -> Markup {
    html! {
        div.approval data-run=(a.run) data-step=(a.step) data-state=(a.state.as_str()) {
            p {
                strong { (a.step) } " "
                (state_badge(a.state.as_str()))
                @if let Some(name) = &a.run_name {
                    " — run " a href=(ctx.url(&format!("/runs/{}", a.run))) { (name) }
                }
            }
            @if !a.message.is_empty() { p.message { (a.message) } }
            p.muted {
                "approvers: " (a.approvers)
                @if a.four_eyes { " · four-eyes" }
                @if let Some(t) = &a.target { " · target " (t) }
                " · started by " (a.started_by)
                " · requested " (a.requested)
                @if let Some(e) = &a.expires { " · expires " (e) }
            }
            @if a.decision.is_some() { p.outcome { (a.outcome) } }
            @if a.can_decide {
                form.approve data-step=(a.step) method="post" action=(ctx.url(&format!("/runs/{}/decide", a.run))) {
                    input type="hidden" name="csrf" value=[ctx.csrf.as_deref()];
                    input type="hidden" name="step" value=(a.step);
                    @if let Some(b) = back { input type="hidden" name="back" value=(b); }
                    input type="text" name="comment" placeholder="comment (optional)";
                    button.approve type="submit" name="decision" value="approve" { "Approve" }
                    button.reject type="submit" name="decision" value="reject" { "Reject" }
                }
            } @else if let Some(why) = &a.refusal {
                p.refusal.muted { (why) }
            }
        }
    }
}

pub(crate) fn run(ctx: &Ctx, p: &RunPage) -> Markup {
    let c = &p.core;
    let events = (!c.finished).then(|| ctx.url(&format!("/runs/{}/events", c.id)));
    let run_url = |s: &str| ctx.url(&format!("/runs/{}{s}", c.id));
    layout(
        ctx,
        &c.name,
        events,
        html! {
            h1 { (c.name) " " span #run-state class={ "badge st-" (c.state.as_str().to_ascii_lowercase()) } data-state=(c.state.as_str()) { (c.state.as_str()) } }
            p.muted {
                code { (c.id) } " · " (c.source) " · started by " (c.started_by)
                " · created " (c.created)
                @if let Some(s) = &c.started { " · started " (s) }
                @if let Some(f) = &c.finish { " · finished " (f) }
            }
            div.summary {
                span { "progress " strong #progress data-done=(c.progress.done) data-total=(c.progress.total) { (c.progress.done) "/" (c.progress.total) } }
                span { "ETA " strong #eta { @if c.finished { "—" } @else { (dur(c.eta_secs)) } } }
                span { "duration " (dur(c.duration_secs)) }
                span #counts { (c.counts_text) }
            }
            @if let Some(cr) = &c.cancel_requested {
                p #cancel-requested.notice { "cancel requested by " (cr.by) " at " (cr.at) }
            } @else {
                p #cancel-requested.notice hidden {}
            }
            div #work-status hidden[c.work.is_none()] {
                @if let Some(w) = &c.work {
                    @for line in &w.waiting {
                        p.notice.waiting { "waiting: " (line) }
                    }
                    @if let Some(why) = &w.stopped {
                        p.notice.stopped { "stopped: " (why) }
                    }
                    p.work-counts {
                        "work: " (w.pending) " pending · "
                        (w.claimed.iter().map(|c| c.entries).sum::<usize>()) " claimed · "
                        (w.ended) " ended"
                        @if w.aborting { " · aborting: nothing new is claimed" }
                    }
                    ul.workers {
                        @for c in &w.claimed {
                            li data-worker=(c.worker) { code { (c.worker) } ": " (c.entries) " claimed" }
                        }
                    }
                }
            }
            @if p.can_cancel {
                form #cancel-form method="post" action=(run_url("/cancel")) {
                    input type="hidden" name="csrf" value=[ctx.csrf.as_deref()];
                    button #cancel type="submit" { "Cancel run" }
                }
            }
            p #approvals-notice.notice hidden {}
            @if !p.approvals.is_empty() {
                h2 { "Approvals" }
                div #approvals { @for a in &p.approvals { (approval(ctx, a, None)) } }
            }
            h2 { "Stages" }
            (legend())
            table #stages.stages {
                tbody {
                    @for s in &c.stages {
                        tr.stage data-stage=(s.index) data-state=(s.state.as_str()) {
                            th {
                                (s.name)
                                @if s.finally { " " small.muted { "(finally)" } }
                                br;
                                small.stage-progress { (s.done) "/" (s.total) }
                            }
                            td { div.grid {
                                @for cell in &s.cells {
                                    a class={ "cell s-" (cell.state.as_str()) }
                                        href=(run_url(&format!("/hosts/{}", url_part(&cell.host))))
                                        title=(format!("{}: {}", cell.host, cell.state.as_str()))
                                        data-stage=(s.index) data-host=(cell.host) data-state=(cell.state.as_str()) {}
                                }
                            } }
                        }
                    }
                }
            }
            @if !c.failures.is_empty() {
                h2 { "Failures" }
                @if c.failures_total > c.failures.len() {
                    p.muted { "showing " (c.failures.len()) " of " (c.failures_total) "; the others are on the hosts' pages" }
                }
                @for f in &c.failures {
                    div.failure data-host=(f.host) {
                        p {
                            strong { a href=(run_url(&format!("/hosts/{}", url_part(&f.host)))) { (f.host) } }
                            " · " (f.stage) " · " code { (f.command) }
                            @if let Some(t) = &f.tag { " [" (t) "]" }
                            " · " (f.state.as_str())
                            @if let Some(s) = f.exit_status { " · exit status " (s) }
                            " · " (f.attempts) " attempt(s)"
                        }
                        p { "arguments " code.args { (f.args) } }
                        @if let Some(e) = &f.error { p.error { (e) } }
                        @if let Some(t) = &f.stderr_tail { pre.stderr { (t) } }
                    }
                }
            }
            h2 { "Hosts" }
            table #hosts.hosts {
                thead { tr { th { "Host" } th { "State" } th { "Updated" } } }
                tbody {
                    @for h in &c.hosts {
                        tr.host data-run-host=(h.host) data-host-state=(h.state.as_str()) {
                            td { a href=(run_url(&format!("/hosts/{}", url_part(&h.host)))) { (h.host) } " "
                                 small { a.muted href=(ctx.url(&format!("/hosts/{}", url_part(&h.host)))) { "history" } } }
                            td.host-state { (h.state.as_str()) }
                            td { (h.updated) }
                        }
                    }
                }
            }
        },
    )
}

pub(crate) fn run_host(ctx: &Ctx, v: &RunHostView) -> Markup {
    layout(
        ctx,
        &v.host,
        None,
        html! {
            h1 { (v.host) " " small.muted { "in run " a href=(ctx.url(&format!("/runs/{}", v.run))) { (v.run_name) } " " (state_badge(v.run_state.as_str())) } }
            p { "host state " strong #host-state { (v.state.map(|s| s.as_str()).unwrap_or("—")) } " · "
                a href=(ctx.url(&format!("/hosts/{}", url_part(&v.host)))) { "this host across runs" } }
            @for t in &v.tasks {
                div.task data-task=(t.task) data-state=(t.state.as_str()) {
                    p {
                        strong { (t.stage) } " · " code { (t.command) }
                        @if let Some(tag) = &t.tag { " [" (tag) "]" }
                        " · " (state_badge(t.state.as_str()))
                        " · " (t.attempts) " attempt(s) · started " (opt(&t.started))
                        " · took " (dur(t.duration_secs))
                        @if let Some(s) = t.exit_status { " · exit status " (s) }
                        @if let Some(w) = &t.worker { " · worker " code.worker { (w) } }
                    }
                    p { "arguments " code.args { (t.args) } }
                    @if let Some(e) = &t.error { p.error { (e) } }
                    @if let Some(s) = &t.stderr_tail { details { summary { "stderr" } pre.stderr { (s) } } }
                    @if let Some(o) = &t.output_tail { details open { summary { "output" } pre.output { (o) } } }
                }
            }
        },
    )
}

pub(crate) fn host(ctx: &Ctx, v: &HostPage) -> Markup {
    layout(
        ctx,
        &v.host,
        None,
        html! {
            h1 { (v.host) }
            table #host-runs.runs {
                thead { tr { th { "Run" } th { "Run state" } th { "Host state" } th { "Started by" } th { "Created" } th { "Finished" } } }
                tbody {
                    @for r in &v.runs {
                        tr.run data-run=(r.run) data-state=(r.host_state.as_str()) {
                            td { a href=(ctx.url(&format!("/runs/{}/hosts/{}", r.run, url_part(&v.host)))) { (r.name) } br; small.muted { (r.source) } }
                            td { (state_badge(r.run_state.as_str())) }
                            td { (r.host_state.as_str()) }
                            td { (r.started_by) }
                            td { (r.created) }
                            td { (opt(&r.finished)) }
                        }
                    }
                    @if v.runs.is_empty() { tr { td colspan="6" { "No run targeted this host." } } }
                }
            }
        },
    )
}

pub(crate) fn approvals(ctx: &Ctx, p: &ApprovalsPage) -> Markup {
    layout(
        ctx,
        "Approvals",
        Some(ctx.url("/approvals/events")),
        html! {
            h1 { "Approvals waiting" }
            p #approvals-notice.notice hidden {}
            div #approvals {
                @for a in &p.approvals { (approval(ctx, a, Some("approvals"))) }
                @if p.approvals.is_empty() { p #no-approvals { "Nothing waits for a decision." } }
            }
        },
    )
}

pub(crate) fn login(ctx: &Ctx, token: &str, next: &str, problem: Option<&str>) -> Markup {
    layout(
        ctx,
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(p) = problem { p #error.error { (p) } }
            form #login-form.login method="post" action=(ctx.url("/login")) {
                input type="hidden" name="login_token" value=(token);
                input type="hidden" name="next" value=(next);
                label { "User " input type="text" name="name" autocomplete="username" required autofocus; }
                label { "Password " input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}
