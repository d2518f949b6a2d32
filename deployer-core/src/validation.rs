//! Validation problems with the path where they were found.

use std::fmt;

/// One problem found while loading or validating a tasklist.
///
/// `path` names the place in the tasklist (`stages[1].tasks[3][0].source`), `message` says what is
/// wrong, `expected` what would have been accepted, and `hint` (when there is one) a likely fix such
/// as a correctly spelt command name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Where the problem is, e.g. `stages[1].tasks[3][0].source`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What was expected instead, if that can be said.
    pub expected: Option<String>,
    /// A suggestion, e.g. `did you mean "upload"?`.
    pub hint: Option<String>,
}

impl ValidationError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            path: path.into(),
            message: message.into(),
            expected: None,
            hint: None,
        }
    }

    /// Adds what was expected.
    pub fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ValidationError {
    /// One line, whatever the input held: control characters are written escaped (`\n`,
    /// `\u{7}`) and each part is cut at 512 bytes with its length, so a key or value from the
    /// input can never forge a line, print a NUL, or make a 10 KB message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", one_line(&self.message))?;
        } else {
            write!(f, "{}: {}", one_line(&self.path), one_line(&self.message))?;
        }
        if let Some(expected) = &self.expected {
            write!(f, " (expected {})", one_line(expected))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; {}", one_line(hint))?;
        }
        Ok(())
    }
}

/// `text` as one line of a message: control characters escaped (`\n`, `\u{7}`), cut at 512
/// bytes with the full length said. For messages that quote what the input held.
///
/// ```
/// assert_eq!(deployer_core::one_line("a\nb"), "a\\nb");
/// assert!(deployer_core::one_line(&"x".repeat(600)).ends_with("… (600 bytes)"));
/// ```
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 512;
    if text.len() <= MAX && !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= MAX {
            out.push_str(&format!("… ({} bytes)", text.len()));
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Every problem found in one tasklist, in document order.
///
/// Validation never stops at the first problem: a user fixing a tasklist sees all of them at
/// once. `Display` prints one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors {
    errors: Vec<ValidationError>,
}

impl ValidationErrors {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a problem.
    pub fn push(&mut self, error: ValidationError) {
        self.errors.push(error);
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// The problems, in document order.
    pub fn iter(&self) -> std::slice::Iter<'_, ValidationError> {
        self.errors.iter()
    }

    /// `Ok(value)` when empty, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Moves all problems of `other` into `self`.
    pub fn extend(&mut self, other: ValidationErrors) {
        self.errors.extend(other.errors);
    }
}

impl IntoIterator for ValidationErrors {
    type Item = ValidationError;
    type IntoIter = std::vec::IntoIter<ValidationError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(f, "{n} problem{} found", if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// The closest of `candidates` to `input`, if one is close enough to be a likely typo.
///
/// ```
/// let names = ["upload", "unpack", "symlink"];
/// assert_eq!(deployer_core::did_you_mean("uplaod", names), Some("upload"));
/// assert_eq!(deployer_core::did_you_mean("restart_everything", names), None);
/// ```
pub fn did_you_mean<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<(f64, &'a str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(input, candidate);
        if score >= 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// A short description of a JSON value's type, for "expected X, found Y" messages.
///
/// ```
/// assert_eq!(deployer_core::json_type(&serde_json::json!([1])), "a list");
/// ```
pub fn json_type(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
