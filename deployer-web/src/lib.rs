//! A run viewer in the browser for the deployer crate family: an [`axum::Router`] over a
//! [`RunStore`] that a host application mounts anywhere (also under a path prefix), and that
//! `deploy serve` runs on its own.
//!
//! # Pages
//!
//! Server-rendered HTML that works without JavaScript (templates: [`maud`], checked at compile
//! time and escaping every value from the store), plus one small plain script (`EventSource`)
//! for live updates and one style sheet, both served by the router under `assets/`: no CDN,
//! no build step. Every page also answers JSON with the same data when asked with
//! `Accept: application/json`.
//!
//! | route (under the mount point) | what |
//! |---|---|
//! | `GET /` | runs, newest first, paginated (`?page=`), filtered by `state`, `user`, `name` (substring), `since` / `until` (RFC 3339 or `2025-01-31`), with outcome counts and duration |
//! | `GET /runs/{id}` | a run: stages as rows, each stage's hosts as a grid of cells coloured by state, progress and ETA from history, failures (command, arguments with secrets as `***`, exit status, error, stderr tail), approvals with Approve / Reject, Cancel; for a run submitted to workers, `#work-status`: zones no live worker serves, why it stopped, each worker with the entries it holds |
//! | `GET /runs/{id}/events` | Server-Sent Events: the run's changed host / stage states and counts as JSON |
//! | `GET /runs/{id}/hosts/{host}` | one host's tasks in a run, each with its output tail and the worker that recorded it (`worker`, `null` when a controller drove it) |
//! | `POST /runs/{id}/decide` | form `step`, `decision` (`approve` / `reject`), `comment`, `csrf` |
//! | `POST /runs/{id}/cancel` | form `csrf` |
//! | `GET /hosts/{host}` | a host across runs: run, name, when, by whom, state |
//! | `GET /approvals` | every pending approval across runs, with Approve / Reject and a comment |
//! | `GET`/`POST /login`, `POST /logout` | sessions |
//! | `GET /assets/app.js`, `/assets/style.css` | the script and the style sheet |
//!
//! Stable hooks for scripts and browser tests: a stage's host cell is
//! `.cell[data-stage="0"][data-host="web1"][data-state="running"]` (states `pending`,
//! `running`, `done`, `failed`, `skipped`, `dropped`), the run's hosts are
//! `tr.host[data-run-host="web1"][data-host-state="RUNNING"]`, the run's state is
//! `#run-state[data-state="RUNNING"]`, progress is `#progress` (`done/total`), the Cancel
//! button is `#cancel`, an approval's form is `form.approve[data-step="deploy/approve"]`
//! (buttons `button[value=approve]`, `button[value=reject]`), and the page sets
//! `data-live="on"` on `<body>` once its event stream is open.
//!
//! # Live updates
//!
//! `GET /runs/{id}/events` is driven by the store's change feed
//! ([`RunStore::changes`]): its first `update` event carries every host cell, later ones only
//! what changed, as JSON:
//! `{"state": "RUNNING", "finished": false, "counts": {…}, "counts_text": "3 ok",
//! "progress": {"done": 3, "total": 8}, "eta_secs": 12, "eta": "12s",
//! "stages": [{"index": 0, "state": "running", "done": 3, "total": 4}],
//! "cells": [{"stage": 0, "host": "web1", "state": "done"}],
//! "hosts": [{"host": "web1", "state": "DONE"}], "cancel_requested": null,
//! "approvals_pending": ["deploy/approve"], "work": null}` (`work`, for a run submitted to
//! workers: `{"pending": 1, "ended": 4, "claimed": [{"worker": "w1", "entries": 2}],
//! "unserved_zones": ["eu"], "served_zones": ["us"], "aborting": false, "stopped": null,
//! "waiting": ["hosts in zone eu have no live worker (zones served: us)"]}`, also in the run's
//! JSON; its stream looks again every 3 s, as workers that die write nothing); the stream ends after the event that says
//! `"finished": true`. `GET /approvals/events` sends `approvals` events
//! (`{"pending": [{"run": "…", "step": "…"}]}`) whenever the pending list changes.
//!
//! # Scripts
//!
//! A script logs in with `GET /login` (`Accept: application/json` answers `login_token` and
//! sets the token cookie), then `POST /login` with the form fields `name`, `password` and
//! `login_token` (answers `csrf_token`); every JSON answer also carries
//! `"viewer": {"user": …, "csrf_token": …}`, and a POST takes the token as `X-CSRF-Token`.
//!
//! # Security
//!
//! Nobody unauthenticated sees or does anything unless the operator says so
//! ([`Web::allow_anonymous_read`], read-only even then). Without an authenticator nobody can
//! log in.
//!
//! * **Who**: an [`Authenticator`] — a host application's SSO, a [`UsersFile`] (argon2 PHC
//!   hashes; [`UsersFile::add_user`] behind `deploy users add`), or a reverse proxy's header
//!   ([`ProxyHeader`], only when enabled).
//! * **Sessions** live in memory in the [`Web`] value (nothing process-wide) and expire a fixed
//!   time after login ([`Web::session_ttl`], absolute, not sliding: default 12 h). The session
//!   cookie is `HttpOnly; SameSite=Strict; Path=<prefix>`, plus `Secure` unless
//!   [`Web::secure_cookies`] is off (plain-HTTP loopback). Ids and tokens are 256 random bits
//!   from the operating system (`getrandom`). At most 10 000 sessions live at once (past
//!   that, the one closest to its end goes). Logging in again replaces the session (no
//!   fixation). Failed logins are not rate-limited here: put that in the proxy in front.
//! * **CSRF**: every form carries the session's token in a hidden field `csrf` (a script may
//!   send it as `X-CSRF-Token`; JSON answers carry it as `csrf_token`), checked in constant
//!   time on every POST; missing or wrong → 403 `CSRF token missing or wrong`. The login form
//!   uses a double-submit token: `GET /login` sets a random token in a short-lived
//!   `SameSite=Strict` cookie and in the form, and `POST /login` needs both to match.
//! * **What a user may do** comes from a [`RoleSource`] per run ([`UserRoles`], the default;
//!   `CatalogRoles` with the `catalog` feature): Approve / Reject shows only when
//!   [`Approval::check`](deployer_core::Approval::check) passes, and the decision goes through
//!   [`deployer_core::decide`] like the terminal's, so a forged POST gets 403 with the refusal
//!   text. Cancel shows to holders of `developer` (or stronger) for the run, or to anybody
//!   authenticated when roles are unknown (the rule of default approvers).
//! * **Secrets** are never rendered: stored tasklists hold `{"secret": "***"}` in place of
//!   every inline secret, task output is redacted before it is stored, and every value is
//!   HTML-escaped.
//!
//! # Example
//!
//! Mounted under `/deploys` in a host application's router (the viewer finds its prefix from
//! the request, so every link, form, asset and event stream URL starts with `/deploys`):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use deployer_core::MemoryStore;
//! use deployer_web::{ProxyHeader, Web};
//!
//! let store = Arc::new(MemoryStore::new());
//! let web = Web::new(store)
//!     .authenticator(Arc::new(ProxyHeader::new("x-forwarded-user").unwrap()))
//!     .session_ttl(Duration::from_secs(8 * 3600))
//!     .title("Shop deploys");
//! let app: axum::Router = axum::Router::new()
//!     .route("/health", axum::routing::get(|| async { "ok" }))
//!     .nest("/deploys", web.router());
//! # drop(app);
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod auth;
mod handlers;
mod model;
mod pages;
mod roles;
mod session;

use std::sync::Arc;
use std::time::Duration;

use deployer_core::RunStore;

pub use auth::{
    Authenticator, Login, ProxyHeader, ROLES, User, UsersFile, UsersFileError, roles_held,
};
#[cfg(feature = "catalog")]
pub use roles::CatalogRoles;
pub use roles::{RoleSource, UserRoles};

/// The viewer: a builder over a [`RunStore`] whose [`router`](Self::router) a host
/// application mounts. Cloning it shares its sessions.
///
/// ```
/// use std::sync::Arc;
/// use deployer_web::{UsersFile, Web};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("users.yaml");
/// # UsersFile::add_user(&path, "alice", "pw", Some("developer")).unwrap();
/// let store = Arc::new(deployer_core::MemoryStore::new());
/// let users = UsersFile::load(&path).unwrap();
/// let router: axum::Router = Web::new(store)
///     .authenticator(Arc::new(users))
///     .secure_cookies(false) // plain HTTP on loopback only
///     .router();
/// # drop(router);
/// ```
#[derive(Clone)]
pub struct Web {
    inner: Arc<handlers::Shared>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("Web")
            .field("title", &c.title)
            .field("session_ttl", &c.session_ttl)
            .field("secure_cookies", &c.secure_cookies)
            .field("allow_anonymous_read", &c.allow_anonymous_read)
            .field("base_path", &c.base_path)
            .finish_non_exhaustive()
    }
}

impl Web {
    /// A viewer over `store`: nobody authenticated yet (set an
    /// [`authenticator`](Self::authenticator)), roles from the authenticator, 12 h sessions,
    /// `Secure` cookies, no anonymous reading.
    pub fn new(store: Arc<dyn RunStore>) -> Web {
        Web {
            inner: Arc::new(handlers::Shared::new(store)),
        }
    }

    fn config(mut self, f: impl FnOnce(&mut handlers::Config)) -> Web {
        // Builder calls come before the router is made, so the value is not shared yet; if it
        // is (a clone was kept), the change applies to this copy only.
        f(&mut Arc::make_mut(&mut self.inner).config);
        self
    }

    /// Who requests come from.
    pub fn authenticator(self, authenticator: Arc<dyn Authenticator>) -> Web {
        self.config(|c| c.authenticator = Some(authenticator))
    }

    /// What roles users hold for a run (default: [`UserRoles`]).
    pub fn roles(self, roles: Arc<dyn RoleSource>) -> Web {
        self.config(|c| c.roles = roles)
    }

    /// How long a session lives after login (absolute: using it does not extend it; default
    /// 12 h).
    pub fn session_ttl(self, ttl: Duration) -> Web {
        self.config(|c| c.session_ttl = ttl)
    }

    /// Whether cookies are marked `Secure` (sent over HTTPS only; default true). Turn it off
    /// only for plain HTTP on loopback.
    pub fn secure_cookies(self, on: bool) -> Web {
        self.config(|c| c.secure_cookies = on)
    }

    /// Whether anybody may read pages without logging in (default false). Anonymous readers
    /// never see or use a button.
    pub fn allow_anonymous_read(self, on: bool) -> Web {
        self.config(|c| c.allow_anonymous_read = on)
    }

    /// The title shown on every page (default `Deploys`).
    pub fn title(self, title: impl Into<String>) -> Web {
        self.config(|c| c.title = title.into())
    }

    /// The path the router is reachable under from the browser (`/deploys`), for a proxy that
    /// strips it before the request reaches the host application. Default: found from each
    /// request (the part of its path that a `Router::nest` consumed).
    pub fn base_path(self, path: impl Into<String>) -> Web {
        let path = path.into().trim_end_matches('/').to_string();
        self.config(|c| c.base_path = Some(path))
    }

    /// The router serving every page, asset and form, to mount with `Router::nest` or serve on
    /// its own.
    pub fn router(&self) -> axum::Router {
        handlers::router(self.inner.clone())
    }
}
