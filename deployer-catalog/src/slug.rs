//! DNS-safe identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::CatalogError;

/// The longest slug: one DNS label.
pub const MAX_SLUG_LEN: usize = 63;

/// A DNS-safe identifier (one DNS label, as Kubernetes names need): 1 to 63 characters of
/// lowercase ASCII letters, digits and `-`, starting with a letter and not ending with `-`.
///
/// ```
/// use deployer_catalog::Slug;
///
/// assert_eq!(Slug::new("shop-prod").unwrap().as_str(), "shop-prod");
/// assert!(Slug::new("Shop_Prod").is_err());
/// assert_eq!(Slug::from_name("EU West 1 (Primary)").unwrap().as_str(), "eu-west-1-primary");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);

impl Slug {
    /// Checks `text` and wraps it.
    pub fn new(text: impl Into<String>) -> Result<Slug, CatalogError> {
        let text = text.into();
        match slug_problem(&text) {
            None => Ok(Slug(text)),
            Some(reason) => Err(CatalogError::InvalidSlug {
                value: text,
                reason,
            }),
        }
    }

    /// The slug derived from a display name: lowercased, every run of other characters turned
    /// into one `-`, trimmed, cut to 63 characters; a leading digit gets an `x-` prefix.
    pub fn from_name(name: &str) -> Result<Slug, CatalogError> {
        let mut out = String::new();
        for c in name.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c.to_ascii_lowercase());
            } else if !out.ends_with('-') && !out.is_empty() {
                out.push('-');
            }
        }
        let mut out = out.trim_end_matches('-').to_string();
        if out.starts_with(|c: char| c.is_ascii_digit()) {
            out.insert_str(0, "x-");
        }
        out.truncate(MAX_SLUG_LEN);
        let out = out.trim_end_matches('-').to_string();
        if out.is_empty() {
            return Err(CatalogError::InvalidSlug {
                value: name.to_string(),
                reason: "a name with no letters or digits gives no slug".to_string(),
            });
        }
        Slug::new(out)
    }

    /// The slug as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn slug_problem(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some("it is empty".to_string());
    }
    if text.len() > MAX_SLUG_LEN {
        return Some(format!(
            "it has {} characters, at most {MAX_SLUG_LEN} are allowed",
            text.len()
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "'{c}' is not allowed (only lowercase letters, digits and '-')"
        ));
    }
    if !text.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some("it must start with a lowercase letter".to_string());
    }
    if text.ends_with('-') {
        return Some("it must not end with '-'".to_string());
    }
    None
}

impl TryFrom<String> for Slug {
    type Error = CatalogError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Slug::new(value)
    }
}

impl From<Slug> for String {
    fn from(value: Slug) -> Self {
        value.0
    }
}

impl FromStr for Slug {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Slug::new(s)
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Slug {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Slug {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Slug {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_dns_labels() {
        for ok in ["a", "shop", "shop-prod-2", &"a".repeat(63)] {
            assert!(Slug::new(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("Shop", "'S' is not allowed"),
            ("shop_prod", "'_' is not allowed"),
            ("2shop", "start with a lowercase letter"),
            ("-shop", "start with a lowercase letter"),
            ("shop-", "end with '-'"),
            ("shöp", "'ö' is not allowed"),
        ] {
            let err = Slug::new(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(&format!("\"{bad}\"")), "{err}");
        }
        let long = "a".repeat(64);
        assert!(
            Slug::new(long)
                .unwrap_err()
                .to_string()
                .contains("at most 63")
        );
    }

    #[test]
    fn slugs_derive_from_names() {
        for (name, slug) in [
            ("EU West", "eu-west"),
            ("  k8s -- Prod!! ", "k8s-prod"),
            ("1st cluster", "x-1st-cluster"),
        ] {
            assert_eq!(Slug::from_name(name).unwrap().as_str(), slug);
        }
        assert!(Slug::from_name("!!!").is_err());
        assert_eq!(
            Slug::from_name(&"ab ".repeat(40)).unwrap().as_str().len(),
            62
        );
    }
}
