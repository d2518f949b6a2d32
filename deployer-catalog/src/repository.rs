//! Repositories, branches and images.

use serde::{Deserialize, Serialize};

use super::slug::Slug;

/// A git repository, optionally reserved to one project and/or deployment type, with its
/// branches and the container images built from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// Unique in the catalog.
    pub slug: Slug,
    /// The git URL.
    pub url: String,
    /// The only project whose deployments may use it, if reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<Slug>,
    /// The only deployment type that may use it, if reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_type: Option<String>,
    /// Branch names.
    #[serde(default)]
    pub branches: Vec<String>,
    /// Images built from it.
    #[serde(default)]
    pub images: Vec<Image>,
}

impl Repository {
    /// A repository at `url` with no branches or images.
    pub fn new(slug: Slug, url: impl Into<String>) -> Repository {
        Repository {
            slug,
            url: url.into(),
            project: None,
            deployment_type: None,
            branches: Vec::new(),
            images: Vec::new(),
        }
    }
}

/// A container image built from a repository, with the versions published so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Unique in the repository.
    pub slug: Slug,
    /// Where it is pulled from (`registry.example.com/shop/app`).
    pub name: String,
    /// Published versions, oldest first; the last is current.
    #[serde(default)]
    pub versions: Vec<String>,
}

impl Image {
    /// The current (last published) version.
    pub fn current(&self) -> Option<&str> {
        self.versions.last().map(String::as_str)
    }
}

/// A deployment's branch: `repository` + branch name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchRef {
    /// The repository's slug.
    pub repository: Slug,
    /// The branch name.
    pub branch: String,
}

/// A deployment's image: `repository` + image slug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// The repository's slug.
    pub repository: Slug,
    /// The image's slug.
    pub image: Slug,
}
