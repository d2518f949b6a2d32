//! Values that must never reach a log.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a [`Secret`] shows instead of its value.
pub const REDACTED: &str = "***";

thread_local! {
    static EXPOSE: Cell<bool> = const { Cell::new(false) };
}

/// Whether secrets serialize as their values on this thread (inside
/// [`Secret::serialize_exposed`]).
pub(crate) fn exposing_secrets() -> bool {
    EXPOSE.with(Cell::get)
}

/// A secret value (a connection string, a password): `Debug`, `Display` and `Serialize` show
/// `***`, so a secret never ends up in a log line, an event, a scope or a JSON dump by accident.
///
/// Only [`Secret::expose`] reads the value, and only serialization inside
/// [`Secret::serialize_exposed`] writes it (what a catalog store does to persist it; the same
/// call also writes the inline secret arguments of a [`Tasklist`](crate::Tasklist)).
///
/// ```
/// use deployer_core::Secret;
///
/// let dsn = Secret::new("postgres://app:hunter2@db/app");
/// assert_eq!(format!("{dsn:?} {dsn}"), "Secret(***) ***");
/// assert_eq!(serde_json::to_string(&dsn).unwrap(), "\"***\"");
/// assert_eq!(dsn.expose(), "postgres://app:hunter2@db/app");
/// let stored = Secret::serialize_exposed(|| serde_json::to_string(&dsn)).unwrap();
/// assert_eq!(stored, "\"postgres://app:hunter2@db/app\"");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    ///
    /// The value is registered with [`register_secret`](crate::register_secret), so output
    /// and log lines that echo it show `***`.
    pub fn new(value: impl Into<String>) -> Secret {
        let value = value.into();
        crate::register_secret(&value);
        Secret(value)
    }

    /// The value itself: for the code that uses it (connects), never for output.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Runs `f` with secrets serialized as their values on this thread (serialization is
    /// synchronous, so nothing else on the thread sees it). For stores persisting a catalog.
    pub fn serialize_exposed<T>(f: impl FnOnce() -> T) -> T {
        struct Reset(bool);
        impl Drop for Reset {
            fn drop(&mut self) {
                EXPOSE.with(|e| e.set(self.0));
            }
        }
        let _reset = Reset(EXPOSE.with(|e| e.replace(true)));
        f()
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
        if EXPOSE.with(Cell::get) {
            serializer.serialize_str(&self.0)
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_ends_with_the_call_even_on_panic() {
        // Distinctive: a registered secret is scrubbed from this test binary's output.
        let s = Secret::new("pw-exposure-test");
        let _ = std::panic::catch_unwind(|| {
            Secret::serialize_exposed(|| panic!("boom"));
        });
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        let nested = Secret::serialize_exposed(|| {
            Secret::serialize_exposed(|| ());
            serde_json::to_string(&s).unwrap()
        });
        assert_eq!(nested, "\"pw-exposure-test\"");
    }
}
