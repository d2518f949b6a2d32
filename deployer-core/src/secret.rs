//! Values that must never reach a log.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a [`Secret`] shows instead of its value.
pub const REDACTED: &str = "***";

/// A secret value (a connection string, a password): `Debug`, `Display` and `Serialize` show
/// `***`, so a secret never ends up in a log line, an event, a scope or a JSON dump by accident.
///
/// Only [`Secret::expose`] reads the value: a store that must persist it writes it explicitly
/// (as `deployer_catalog::CatalogData::to_stored_json` does).
///
/// ```
/// use deployer_core::Secret;
///
/// let dsn = Secret::new("postgres://app:hunter2@db/app");
/// assert_eq!(format!("{dsn:?} {dsn}"), "Secret(***) ***");
/// assert_eq!(serde_json::to_string(&dsn).unwrap(), "\"***\"");
/// assert_eq!(dsn.expose(), "postgres://app:hunter2@db/app");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    ///
    /// To hide the value where a command echoes it, add it to the run's
    /// [`Redactor`](crate::Redactor).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: for the code that uses it (connects), never for output.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}
