//! Approvals of manual steps: who may decide, what was decided, by whom and when.
//!
//! A manual step of a run (a book's `manual: true` step) asks for an approval: the run's
//! controller stores an [`ApprovalRequest`] through [`RunStore::request_approval`] and waits
//! until the stored [`Approval`] is decided — from its own terminal or from any other process
//! sharing the store (a web viewer, `books approve`). A decision is made through
//! [`decide`]: it checks that the [`Approver`] may decide ([`Approval::check`]: the step's
//! [`Approvers`], the four-eyes rule) and stores the [`Decision`] with
//! [`RunStore::decide`], which accepts one decision per request, only while it is pending
//! and unexpired.
//!
//! ```
//! use deployer_core::*;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let plan = Plan::build(&Tasklist::new("empty"), &CommandRegistry::new()).unwrap();
//! let run = store.create_run(NewRun::from_plan(&plan, "book:deploy@1.0.0", "alice")).await.unwrap();
//! let request = ApprovalRequest::new(run.id.clone(), "deploy/approve", "alice")
//!     .approvers(Approvers::Users(vec!["bob".into()]))
//!     .four_eyes(true);
//! store.request_approval(request).await.unwrap();
//!
//! // alice started the run: the four-eyes rule refuses her.
//! let alice = Approver::new("alice");
//! let refused = decide(&store, &run.id, "deploy/approve", &alice, true, None).await;
//! assert!(refused.unwrap_err().to_string().contains("four-eyes"));
//!
//! let bob = Approver::new("bob");
//! let decided = decide(&store, &run.id, "deploy/approve", &bob, false, Some("not during the sale".into()))
//!     .await
//!     .unwrap();
//! assert_eq!(decided.state(std::time::SystemTime::now()), ApprovalState::Rejected);
//! assert!(decided.outcome_message().contains("rejected by bob"));
//! # });
//! ```

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::runs::{RunId, RunStore, StoreError};

/// The role a manual step needs when it declares no approvers, where roles are known.
pub const DEFAULT_APPROVER_ROLE: &str = "developer";

/// Who may decide a manual step.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approvers {
    /// Not declared: holders of [`DEFAULT_APPROVER_ROLE`] where roles are known (a catalog);
    /// where they are not, anybody named (the person running the job on their machine).
    #[default]
    Default,
    /// Holders of this role (the role lookup includes stronger roles: an admin holds
    /// `developer` too).
    Role(String),
    /// These users, by name.
    Users(Vec<String>),
}

impl fmt::Display for Approvers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approvers::Default => write!(f, "role {DEFAULT_APPROVER_ROLE} (default)"),
            Approvers::Role(r) => write!(f, "role {r}"),
            Approvers::Users(u) => write!(f, "users {}", u.join(", ")),
        }
    }
}

/// A person deciding an approval: their name and, where known, every role they hold on what
/// the run is about (stronger roles imply weaker ones, so an admin is given as
/// `["user", "developer", "admin"]`).
///
/// ```
/// use deployer_core::{Approver, Approvers};
/// let dave = Approver::new("dave").with_roles(["user"]);
/// assert!(dave.roles.as_ref().unwrap().contains(&"user".to_string()));
/// assert!(Approver::new("bob").roles.is_none(), "roles unknown without a catalog");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    /// Their name.
    pub name: String,
    /// Every role they hold; `None` when no role source is known (no catalog).
    pub roles: Option<Vec<String>>,
}

impl Approver {
    /// `name`, roles unknown.
    pub fn new(name: impl Into<String>) -> Approver {
        Approver {
            name: name.into(),
            roles: None,
        }
    }

    /// Sets the roles held.
    pub fn with_roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> Approver {
        self.roles = Some(roles.into_iter().map(Into::into).collect());
        self
    }
}

/// What a manual step asks for when it starts waiting (see [`RunStore::request_approval`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// The run.
    pub run: RunId,
    /// The step's path (`deploy/approve`); one request per step and run.
    pub step: String,
    /// What the step says to the people deciding it.
    pub message: String,
    /// What the run is about, for role lookups: a book job's deployment (`shop/prod`).
    pub target: Option<String>,
    /// Who may decide it.
    pub approvers: Approvers,
    /// Whether whoever started the run may not decide it.
    pub four_eyes: bool,
    /// Who started the run.
    pub started_by: String,
    /// After this, nobody may decide it and the step fails.
    pub expires_ts: Option<SystemTime>,
}

impl ApprovalRequest {
    /// A request for `step` of `run`, started by `started_by`: default approvers, no
    /// four-eyes rule, no expiry.
    pub fn new(run: RunId, step: impl Into<String>, started_by: impl Into<String>) -> Self {
        ApprovalRequest {
            run,
            step: step.into(),
            message: String::new(),
            target: None,
            approvers: Approvers::Default,
            four_eyes: false,
            started_by: started_by.into(),
            expires_ts: None,
        }
    }

    /// Sets the message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Sets what the run is about.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Sets who may decide.
    pub fn approvers(mut self, approvers: Approvers) -> Self {
        self.approvers = approvers;
        self
    }

    /// Sets the four-eyes rule.
    pub fn four_eyes(mut self, on: bool) -> Self {
        self.four_eyes = on;
        self
    }

    /// Sets the expiry.
    pub fn expires(mut self, at: SystemTime) -> Self {
        self.expires_ts = Some(at);
        self
    }
}

/// A decision on an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Who decided.
    pub by: String,
    /// When (a store compares it with the expiry).
    pub at: SystemTime,
    /// Approved (true) or rejected.
    pub approved: bool,
    /// Why, if they said.
    pub comment: Option<String>,
}

impl Decision {
    /// A decision by `by`, now; an empty comment is none.
    pub fn new(by: impl Into<String>, approved: bool, comment: Option<String>) -> Decision {
        Decision {
            by: by.into(),
            at: SystemTime::now(),
            approved,
            comment: comment.filter(|c| !c.trim().is_empty()),
        }
    }

    /// `approved by bob at 2025-01-01T10:00:00Z: "fine"`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} by {} at {}",
            if self.approved {
                "approved"
            } else {
                "rejected"
            },
            self.by,
            humantime::format_rfc3339_seconds(self.at)
        );
        if let Some(c) = &self.comment {
            s.push_str(&format!(": \"{c}\""));
        }
        s
    }
}

/// Where an approval is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a decision.
    Pending,
    /// Approved.
    Approved,
    /// Rejected.
    Rejected,
    /// Nobody decided before it expired.
    Expired,
}

impl ApprovalState {
    /// `pending`, `approved`, `rejected`, `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
        }
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored approval: the request and, once made, its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// What was asked.
    pub request: ApprovalRequest,
    /// When it was asked.
    pub requested_ts: SystemTime,
    /// The decision, once made.
    pub decision: Option<Decision>,
}

impl Approval {
    /// Where it is at `now`.
    pub fn state(&self, now: SystemTime) -> ApprovalState {
        match &self.decision {
            Some(d) if d.approved => ApprovalState::Approved,
            Some(_) => ApprovalState::Rejected,
            None if self.request.expires_ts.is_some_and(|t| t <= now) => ApprovalState::Expired,
            None => ApprovalState::Pending,
        }
    }

    /// What became of it, in words: `step deploy/approve rejected by bob at …: "why"`, or
    /// `… expired at … without a decision`, or `… is pending`.
    pub fn outcome_message(&self) -> String {
        let step = &self.request.step;
        match (&self.decision, self.request.expires_ts) {
            (Some(d), _) => format!("step {step} {}", d.describe()),
            (None, Some(t)) if t <= SystemTime::now() => format!(
                "step {step} expired at {} without a decision (approvers: {})",
                humantime::format_rfc3339_seconds(t),
                self.request.approvers
            ),
            (None, _) => format!("step {step} is pending"),
        }
    }

    /// Whether `approver` may decide it: they must be among its [`Approvers`] (a role is
    /// checked only where roles are known: [`Approver::roles`]; a role the step declares
    /// cannot be checked without them and is refused), and under the four-eyes rule must not
    /// have started the run. The error says why not.
    pub fn check(&self, approver: &Approver) -> Result<(), ApprovalRefused> {
        let r = &self.request;
        let refuse = |why: String| {
            Err(ApprovalRefused {
                who: approver.name.clone(),
                step: r.step.clone(),
                why,
            })
        };
        if approver.name.trim().is_empty() {
            return refuse("an approver needs a name".to_string());
        }
        if r.four_eyes && approver.name == r.started_by {
            return refuse(format!(
                "{} started the run, and the step requires a second person (four-eyes)",
                approver.name
            ));
        }
        let role = match &r.approvers {
            Approvers::Users(users) => {
                return if users.iter().any(|u| u == &approver.name) {
                    Ok(())
                } else {
                    refuse(format!("only {} may decide it", users.join(", ")))
                };
            }
            Approvers::Default => DEFAULT_APPROVER_ROLE,
            Approvers::Role(role) => role.as_str(),
        };
        match (&approver.roles, &r.approvers) {
            (None, Approvers::Default) => Ok(()),
            (None, _) => refuse(format!(
                "it needs role {role}, and no role is known without a catalog (give one: --catalog FILE)"
            )),
            (Some(held), _) if held.iter().any(|h| h == role) => Ok(()),
            (Some(held), _) => refuse(format!(
                "it needs role {role}{}, and {} holds {}",
                match &r.target {
                    Some(t) => format!(" on {t}"),
                    None => String::new(),
                },
                approver.name,
                held.last().map(String::as_str).unwrap_or("no role")
            )),
        }
    }
}

/// Why an approver may not decide an approval.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{who} may not decide step {step}: {why}")]
pub struct ApprovalRefused {
    /// The approver.
    pub who: String,
    /// The step.
    pub step: String,
    /// Why not.
    pub why: String,
}

/// Why [`decide`] did not store a decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecideError {
    /// The approver may not decide it.
    #[error(transparent)]
    Refused(#[from] ApprovalRefused),
    /// The store refused or failed: no such approval, already decided, expired, a backend
    /// failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Decides the approval of `step` in `run` as `approver`: checks that they may
/// ([`Approval::check`]), then stores the decision ([`RunStore::decide`]: only a pending,
/// unexpired approval, and only once). The same call serves a terminal prompt and any other
/// process sharing the store.
pub async fn decide(
    store: &dyn RunStore,
    run: &RunId,
    step: &str,
    approver: &Approver,
    approved: bool,
    comment: Option<String>,
) -> Result<Approval, DecideError> {
    let approval = store
        .approvals(run)
        .await?
        .into_iter()
        .find(|a| a.request.step == step)
        .ok_or_else(|| StoreError::NoApproval {
            run: run.clone(),
            step: step.to_string(),
        })?;
    approval.check(approver)?;
    Ok(store
        .decide(run, step, Decision::new(&approver.name, approved, comment))
        .await?)
}
