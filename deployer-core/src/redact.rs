//! [`Redactor`]: the secrets of one plan (or one host application), and text with them hidden.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use serde_json::Value;

use crate::errors::RemoteError;
use crate::events::TaskOutcome;
use crate::secret::REDACTED;
use crate::validation::ValidationErrors;

/// Lines of a multi-line secret shorter than this are not redacted on their own (a `}` line of
/// a JSON key would otherwise hide every brace).
const MIN_LINE: usize = 4;

/// Replaces known secrets in text with `***`.
///
/// A value, not process-wide state: [`Plan::build`](crate::Plan::build) makes one holding
/// every secret the plan resolved, and the executor redacts task output, failures, events and
/// errors of that plan with it ([`Plan::redactor`](crate::Plan::redactor)). A host application
/// that wants its log lines redacted too hands the same redactor to its log formatter
/// (`deployer_report::LogFormat::redactor`) and builds its plans with
/// [`Plan::build_with_redactor`](crate::Plan::build_with_redactor). When the plan and the
/// redactor are dropped, the secrets are gone: a long-lived process keeps only the secrets of
/// the plans it still holds.
///
/// Clones share their secrets (a secret a command learns while it runs, added with
/// [`add`](Self::add), is redacted everywhere the plan's redactor is used). Besides each
/// secret itself, its shell-quoted and JSON-escaped forms and the lines of a multi-line secret
/// are redacted; the longest form first, so a form that contains another is replaced whole.
///
/// ```
/// use deployer_core::Redactor;
///
/// let redactor = Redactor::new();
/// redactor.add("s3cr3t-doc-example");
/// assert_eq!(redactor.redact("login with s3cr3t-doc-example failed"), "login with *** failed");
/// assert_eq!(redactor.redact("nothing to hide"), "nothing to hide");
///
/// // Another redactor knows nothing of it.
/// assert_eq!(Redactor::new().redact("s3cr3t-doc-example"), "s3cr3t-doc-example");
/// ```
#[derive(Clone, Default)]
pub struct Redactor {
    known: Arc<RwLock<Vec<Arc<str>>>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} forms)", self.read().len())
    }
}

impl Redactor {
    /// A redactor that knows no secret.
    pub fn new() -> Redactor {
        Redactor::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<str>>> {
        self.known.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `secret` (an empty string is ignored). For secrets a command obtains by itself
    /// while it runs (from a vault, from the environment): call it on
    /// [`ExecContext::redactor`](crate::ExecContext::redactor).
    pub fn add(&self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let mut forms: Vec<String> = vec![secret.to_string()];
        if let Ok(q) = crate::shell::quote(secret)
            && !q.contains(secret)
        {
            forms.push(q.into_owned());
        }
        if let Ok(json) = serde_json::to_string(secret) {
            let inner = &json[1..json.len() - 1];
            if inner != secret {
                forms.push(inner.to_string());
            }
        }
        if secret.contains('\n') {
            forms.extend(
                secret
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.chars().count() >= MIN_LINE)
                    .map(str::to_string),
            );
        }
        if forms.iter().all(|f| self.read().iter().any(|k| **k == **f)) {
            return;
        }
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        for f in forms {
            if !known.iter().any(|k| **k == *f) {
                known.push(Arc::from(f));
            }
        }
        known.sort_by_key(|k| std::cmp::Reverse(k.len()));
    }

    /// Adds every secret `other` knows.
    pub fn add_all(&self, other: &Redactor) {
        if Arc::ptr_eq(&self.known, &other.known) {
            return;
        }
        let theirs: Vec<Arc<str>> = other.read().clone();
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        for f in theirs {
            if !known.contains(&f) {
                known.push(f);
            }
        }
        known.sort_by_key(|k| std::cmp::Reverse(k.len()));
    }

    /// Whether it knows no secret.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// `text` with every known secret replaced by `***`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let known = self.read();
        let mut out = Cow::Borrowed(text);
        for k in known.iter() {
            if out.contains(&**k) {
                out = Cow::Owned(out.replace(&**k, REDACTED));
            }
        }
        out
    }

    pub(crate) fn in_place(&self, s: &mut String) {
        if let Cow::Owned(o) = self.redact(s) {
            *s = o;
        }
    }

    /// Redacts every string inside a JSON value.
    pub(crate) fn value(&self, value: &mut Value) {
        match value {
            Value::String(s) => self.in_place(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.value(v)),
            Value::Object(m) => m.values_mut().for_each(|v| self.value(v)),
            _ => {}
        }
    }

    /// A task outcome with its texts redacted.
    pub(crate) fn outcome(&self, mut outcome: TaskOutcome) -> TaskOutcome {
        match &mut outcome {
            TaskOutcome::Skipped { reason } => self.in_place(reason),
            TaskOutcome::Failed {
                message,
                stderr_tail,
                ..
            } => {
                self.in_place(message);
                self.in_place(stderr_tail);
            }
            _ => {}
        }
        outcome
    }

    /// Validation problems with their texts redacted (serde quotes values it cannot use).
    pub(crate) fn problems(&self, errors: ValidationErrors) -> ValidationErrors {
        let mut out = ValidationErrors::new();
        for mut e in errors {
            self.in_place(&mut e.message);
            if let Some(x) = &mut e.expected {
                self.in_place(x);
            }
            if let Some(x) = &mut e.hint {
                self.in_place(x);
            }
            out.push(e);
        }
        out
    }

    /// A host error with its texts (a command line, a message) redacted.
    pub(crate) fn remote(&self, mut error: RemoteError) -> RemoteError {
        match &mut error {
            RemoteError::Auth { detail, .. } => self.in_place(detail),
            RemoteError::Timeout { what, .. } => self.in_place(what),
            RemoteError::Io { op, path, .. } => {
                self.in_place(op);
                self.in_place(path);
            }
            RemoteError::Other { message, .. } => self.in_place(message),
            _ => {}
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_escaped_and_multiline_forms_are_redacted() {
        let r = Redactor::new();
        r.add("it's-Q7 \"quoted\"");
        let quoted = crate::quote("it's-Q7 \"quoted\"").unwrap().into_owned();
        assert_eq!(r.redact(&format!("run {quoted} now")), "run *** now");
        let json = r.redact(r#"{"pw":"it's-Q7 \"quoted\""}"#);
        assert!(json.contains("***") && !json.contains("Q7"), "{json}");
        r.add("-----BEGIN KEY-----\nAAAAlineone-X1\nBBBBlinetwo-X2\n}\n");
        assert_eq!(r.redact("got BBBBlinetwo-X2 back"), "got *** back");
        assert_eq!(r.redact("a } stays"), "a } stays");
        r.add("");
        assert_eq!(r.redact(""), "");
    }

    #[test]
    fn clones_share_and_others_do_not() {
        let a = Redactor::new();
        let clone = a.clone();
        let b = Redactor::new();
        clone.add("pw-shared-1");
        b.add("pw-other-2");
        assert_eq!(a.redact("pw-shared-1 pw-other-2"), "*** pw-other-2");
        b.add_all(&a);
        assert_eq!(b.redact("pw-shared-1 pw-other-2"), "*** ***");
        assert_eq!(format!("{a:?}"), "Redactor(1 forms)");
    }
}
