//! Clusters: shared targets with a lifecycle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::CatalogError;
use super::slug::Slug;

/// Where a cluster is in its lifecycle. The only transitions are one step along
/// draft → init → active → transitioning → cancel → delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// Described, not provisioned.
    #[default]
    Draft,
    /// Being provisioned.
    Init,
    /// Serving.
    Active,
    /// Being changed (upgraded, moved).
    Transitioning,
    /// Being wound down.
    Cancel,
    /// Gone (final).
    Delete,
}

impl ClusterState {
    /// Every state, in lifecycle order.
    pub const ALL: [ClusterState; 6] = [
        ClusterState::Draft,
        ClusterState::Init,
        ClusterState::Active,
        ClusterState::Transitioning,
        ClusterState::Cancel,
        ClusterState::Delete,
    ];

    /// The one state this one may go to (`None` for `delete`).
    pub fn next(self) -> Option<ClusterState> {
        let i = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(i + 1).copied()
    }

    /// Whether going from this state to `to` is allowed.
    pub fn can_go_to(self, to: ClusterState) -> bool {
        self.next() == Some(to)
    }

    /// The spelling in catalog files.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Draft => "draft",
            ClusterState::Init => "init",
            ClusterState::Active => "active",
            ClusterState::Transitioning => "transitioning",
            ClusterState::Cancel => "cancel",
            ClusterState::Delete => "delete",
        }
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClusterState {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| CatalogError::Invalid {
                what: format!("cluster state \"{s}\""),
                message: "expected draft, init, active, transitioning, cancel or delete"
                    .to_string(),
            })
    }
}

/// A cluster: a shared set of hosts (or an endpoint) that deployments of many groups and
/// projects run against. Its slug is derived from its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// A unique id (generated when missing).
    #[serde(default = "new_uid")]
    pub uid: String,
    /// Display name; the slug is derived from it.
    pub name: String,
    /// Lifecycle state (default `draft`).
    #[serde(default)]
    pub state: ClusterState,
    /// Hosts commands run on.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// An API endpoint commands talk to (a Kubernetes API server), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

pub(crate) fn new_uid() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Cluster {
    /// A draft cluster called `name` with a new uid.
    pub fn new(name: impl Into<String>) -> Cluster {
        Cluster {
            uid: new_uid(),
            name: name.into(),
            state: ClusterState::Draft,
            hosts: Vec::new(),
            endpoint: None,
        }
    }

    /// With `hosts`.
    pub fn hosts<I, S>(mut self, hosts: I) -> Cluster
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// The slug derived from its name.
    pub fn slug(&self) -> Result<Slug, CatalogError> {
        Slug::from_name(&self.name)
    }

    /// Moves to `to`, or fails naming both states.
    pub fn transition(&mut self, to: ClusterState) -> Result<(), CatalogError> {
        if !self.state.can_go_to(to) {
            return Err(CatalogError::InvalidTransition {
                cluster: self.name.clone(),
                from: self.state,
                to,
            });
        }
        self.state = to;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_next_state_is_allowed() {
        for from in ClusterState::ALL {
            for to in ClusterState::ALL {
                let mut c = Cluster::new("eu 1");
                c.state = from;
                let allowed = ClusterState::ALL
                    .windows(2)
                    .any(|w| w[0] == from && w[1] == to);
                match c.transition(to) {
                    Ok(()) => {
                        assert!(allowed, "{from} -> {to}");
                        assert_eq!(c.state, to);
                    }
                    Err(e) => {
                        assert!(!allowed, "{from} -> {to}");
                        let msg = e.to_string();
                        assert!(msg.contains(&format!("from {from} to {to}")), "{msg}");
                        assert_eq!(c.state, from);
                    }
                }
            }
        }
        let mut c = Cluster::new("x");
        c.state = ClusterState::Delete;
        let msg = c.transition(ClusterState::Draft).unwrap_err().to_string();
        assert!(msg.contains("nothing, it is final"), "{msg}");
    }
}
