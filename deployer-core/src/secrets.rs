//! Secret task arguments: how a value is marked secret, how it is resolved before a run, and
//! how it is kept out of everything a run shows or stores.
//!
//! A task argument is secret when
//! * its value is written `{"secret": "…"}` (anywhere inside the arguments, also in a config
//!   value a generator passes on), or `{"secret_env": "VAR"}`: the value of the controller's
//!   environment variable `VAR`, read when the plan is built; or
//! * its command declares the argument secret ([`Command::secret_arguments`](crate::Command::secret_arguments),
//!   [`CommandRegistry::declare_secret_arguments`](crate::CommandRegistry::declare_secret_arguments)):
//!   a plain string there is marked `{"secret": …}` when the plan is built.
//!
//! Saved and stored tasklists show an inline secret as `{"secret": "***"}` (a *redacted*
//! secret, which cannot run until its value is given again); `{"secret_env": …}` references
//! hold no secret and are kept as they are. Every secret value a plan resolves is also added to
//! the plan's [`Redactor`](crate::Redactor), so that output lines, error messages and log lines
//! that echo it show `***` instead.

use std::fmt;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use crate::redact::Redactor;
use crate::secret::REDACTED;
use crate::validation::{ValidationError, ValidationErrors};

/// The key of an inline secret: `{"secret": "hunter2"}`.
pub const SECRET_KEY: &str = "secret";
/// The key of a secret read from the controller's environment: `{"secret_env": "LB_PASSWORD"}`.
pub const SECRET_ENV_KEY: &str = "secret_env";

/// Builds and inspects the secret forms of a task argument (or a config value).
///
/// ```
/// use deployer_core::{SecretArg, Task};
/// use serde_json::json;
///
/// assert_eq!(SecretArg::inline("hunter2"), json!({"secret": "hunter2"}));
/// assert_eq!(SecretArg::from_env("LB_PASSWORD"), json!({"secret_env": "LB_PASSWORD"}));
/// assert!(SecretArg::is_secret(&json!({"secret": "hunter2"})));
/// assert!(!SecretArg::is_secret(&json!({"secret": "x", "name": "a plain object"})));
///
/// // Saving a tasklist never writes the value; Debug never shows it.
/// let task = Task::new("disable_loadbalancer").secret("lb_password", "hunter2");
/// assert_eq!(task.args["lb_password"], json!({"secret": "hunter2"}));
/// assert!(!format!("{task:?}").contains("hunter2"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SecretArg;

impl SecretArg {
    /// An inline secret value: `{"secret": value}`.
    pub fn inline(value: impl Into<String>) -> Value {
        let mut m = Map::new();
        m.insert(SECRET_KEY.to_string(), Value::String(value.into()));
        Value::Object(m)
    }

    /// A secret read from the controller's environment variable `var` when the plan is built:
    /// `{"secret_env": var}`. The tasklist, saved or stored, holds only the name.
    pub fn from_env(var: impl Into<String>) -> Value {
        let mut m = Map::new();
        m.insert(SECRET_ENV_KEY.to_string(), Value::String(var.into()));
        Value::Object(m)
    }

    /// Whether `value` is written in a secret form (inline, redacted or from the environment).
    /// An object with other keys besides `secret` is a plain object.
    pub fn is_secret(value: &Value) -> bool {
        !matches!(form(value), Form::Plain)
    }

    /// The value of an inline secret, `None` for anything else (including a redacted one).
    pub fn value(value: &Value) -> Option<&str> {
        match form(value) {
            Form::Inline(s) => Some(s),
            _ => None,
        }
    }
}

/// What a JSON value is, as far as secrets go.
pub(crate) enum Form<'a> {
    /// Not a secret form.
    Plain,
    /// `{"secret": value}`.
    Inline(&'a str),
    /// `{"secret": "***"}`: the value was left out when the tasklist was saved or stored.
    Redacted,
    /// `{"secret_env": VAR}`.
    Env(&'a str),
    /// A secret form with a value of the wrong type.
    Bad(&'static str),
}

pub(crate) fn form(value: &Value) -> Form<'_> {
    let Value::Object(m) = value else {
        return Form::Plain;
    };
    if m.len() != 1 {
        return Form::Plain;
    }
    match m.iter().next() {
        Some((k, Value::String(s))) if k == SECRET_KEY => {
            if s == REDACTED {
                Form::Redacted
            } else {
                Form::Inline(s)
            }
        }
        Some((k, _)) if k == SECRET_KEY => Form::Bad("a secret value must be a string"),
        Some((k, Value::String(s))) if k == SECRET_ENV_KEY => Form::Env(s),
        Some((k, _)) if k == SECRET_ENV_KEY => {
            Form::Bad("secret_env must be the name of an environment variable")
        }
        _ => Form::Plain,
    }
}

/// `serialize_with` for a map of arguments: every inline secret (`{"secret": "…"}`) is written
/// `{"secret": "***"}`, as saved tasklists do; `secret_env` references are kept. For types of
/// other crates holding task-like arguments (a book step's `args`).
///
/// ```
/// #[derive(serde::Serialize)]
/// struct Step {
///     #[serde(serialize_with = "deployer_core::serialize_redacted_map")]
///     args: serde_json::Map<String, serde_json::Value>,
/// }
/// let args = serde_json::json!({"password": {"secret": "hunter2"}});
/// let step = Step { args: args.as_object().unwrap().clone() };
/// assert_eq!(serde_json::to_string(&step).unwrap(), r#"{"args":{"password":{"secret":"***"}}}"#);
/// ```
pub fn serialize_redacted_map<S: Serializer>(
    map: &Map<String, Value>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut out = serializer.serialize_map(Some(map.len()))?;
    for (k, v) in map {
        out.serialize_entry(k, &RedactedJson(v))?;
    }
    out.end()
}

/// Serializes a JSON value with every inline secret written `{"secret": "***"}`.
pub(crate) struct RedactedJson<'a>(pub &'a Value);

impl Serialize for RedactedJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                if matches!(form(self.0), Form::Inline(_)) {
                    let mut map = serializer.serialize_map(Some(1))?;
                    map.serialize_entry(SECRET_KEY, REDACTED)?;
                    return map.end();
                }
                let mut map = serializer.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, &RedactedJson(v))?;
                }
                map.end()
            }
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&RedactedJson(v))?;
                }
                seq.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// `value` with every inline secret replaced by the redacted form.
pub(crate) fn redacted(value: &Value) -> Value {
    match value {
        Value::Object(m) => {
            if matches!(form(value), Form::Inline(_)) {
                return SecretArg::inline(REDACTED);
            }
            Value::Object(m.iter().map(|(k, v)| (k.clone(), redacted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

/// Argument names whose values `Debug` hides even when they are not marked: a tasklist that
/// was loaded but not yet planned does not know which arguments its commands declare secret.
fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "private_key",
        "api_key",
        "apikey",
    ]
    .iter()
    .any(|w| key.contains(w))
}

/// `Debug` of a task's arguments: secrets and arguments whose names look secret (`password`,
/// `token`, …) show `***`. For `Debug` impls of types holding task-like arguments.
///
/// ```
/// let args = serde_json::json!({"user": "app", "db_password": "hunter2"});
/// let shown = format!("{:?}", deployer_core::DebugArgs(args.as_object().unwrap()));
/// assert_eq!(shown, r#"{"user": String("app"), "db_password": "***"}"#);
/// ```
pub struct DebugArgs<'a>(pub &'a Map<String, Value>);

impl fmt::Debug for DebugArgs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in self.0 {
            if looks_secret(k) && !v.is_null() && !SecretArg::is_secret(v) {
                map.entry(k, &REDACTED);
            } else {
                map.entry(k, &redacted(v));
            }
        }
        map.finish()
    }
}

/// `value` with every inline secret replaced by its string (what a command's typed arguments
/// are deserialized from).
pub(crate) fn unwrap(value: &Value) -> Value {
    match value {
        Value::Object(m) => match form(value) {
            Form::Inline(s) => Value::String(s.to_string()),
            _ => Value::Object(m.iter().map(|(k, v)| (k.clone(), unwrap(v))).collect()),
        },
        Value::Array(items) => Value::Array(items.iter().map(unwrap).collect()),
        other => other.clone(),
    }
}

/// Resolves the secret forms of a task's arguments for running: `{"secret_env": VAR}` becomes
/// `{"secret": value}`; a redacted secret, a missing variable or a malformed form is a problem
/// at its path (relative to the task). Every secret value is added to `redactor`.
pub(crate) fn resolve_args(
    args: &Map<String, Value>,
    env: &dyn Fn(&str) -> Option<String>,
    redactor: &Redactor,
) -> Result<Map<String, Value>, ValidationErrors> {
    let mut errors = ValidationErrors::new();
    let mut out = Map::new();
    for (k, v) in args {
        out.insert(k.clone(), resolve(v, k, env, redactor, &mut errors));
    }
    errors.into_result(out)
}

fn resolve(
    value: &Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    redactor: &Redactor,
    errors: &mut ValidationErrors,
) -> Value {
    match form(value) {
        Form::Inline(s) => {
            redactor.add(s);
            value.clone()
        }
        Form::Env(var) => {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                errors.push(
                    ValidationError::new(path, format!("invalid environment variable name {var:?}"))
                        .expected("{\"secret_env\": \"NAME\"} naming a variable of the controller's environment"),
                );
                return value.clone();
            }
            match env(var) {
                Some(s) => {
                    redactor.add(&s);
                    SecretArg::inline(s)
                }
                None => {
                    errors.push(
                        ValidationError::new(
                            path,
                            format!(
                                "the secret's environment variable {var} is not set (or not UTF-8) on the controller"
                            ),
                        )
                        .expected(format!("{var} set to the secret's value")),
                    );
                    value.clone()
                }
            }
        }
        Form::Redacted => {
            errors.push(
                ValidationError::new(
                    path,
                    "the secret's value was left out when this tasklist was saved or stored (it shows \"***\")",
                )
                .expected(
                    "the value, {\"secret\": \"…\"}: run the tasklist it was saved from, or reference the secret with {\"secret_env\": \"VAR\"}",
                ),
            );
            value.clone()
        }
        Form::Bad(message) => {
            // Never echo the value: it may be the secret in the wrong type.
            errors
                .push(ValidationError::new(path, message).expected(
                    "{\"secret\": \"value\"} or {\"secret_env\": \"VAR\"} with a string",
                ));
            value.clone()
        }
        Form::Plain => match value {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            resolve(v, &format!("{path}.{k}"), env, redactor, errors),
                        )
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| resolve(v, &format!("{path}[{i}]"), env, redactor, errors))
                    .collect(),
            ),
            other => other.clone(),
        },
    }
}

/// Appends the paths of the redacted secrets in `args` (a task's, at `prefix`) to `out`.
pub(crate) fn redacted_paths(args: &Map<String, Value>, prefix: &str, out: &mut Vec<String>) {
    fn walk(value: &Value, path: String, out: &mut Vec<String>) {
        match form(value) {
            Form::Redacted => out.push(path),
            Form::Plain => match value {
                Value::Object(m) => {
                    for (k, v) in m {
                        walk(v, format!("{path}.{k}"), out);
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        walk(v, format!("{path}[{i}]"), out);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    for (k, v) in args {
        walk(v, format!("{prefix}.{k}"), out);
    }
}

/// Every inline secret value inside `value`.
pub(crate) fn inline_values(value: &Value) -> Box<dyn Iterator<Item = &str> + '_> {
    match form(value) {
        Form::Inline(s) => Box::new(std::iter::once(s)),
        Form::Plain => match value {
            Value::Object(m) => Box::new(m.values().flat_map(inline_values)),
            Value::Array(items) => Box::new(items.iter().flat_map(inline_values)),
            _ => Box::new(std::iter::empty()),
        },
        _ => Box::new(std::iter::empty()),
    }
}

/// Whether `value` holds an inline secret anywhere.
pub(crate) fn has_inline(value: &Value) -> bool {
    match form(value) {
        Form::Inline(_) => true,
        Form::Plain => match value {
            Value::Object(m) => m.values().any(has_inline),
            Value::Array(items) => items.iter().any(has_inline),
            _ => false,
        },
        _ => false,
    }
}

/// The first place where two tasklists differ (`stages[1]`, `stages[0].tasks[2][1]`), or
/// `None` when their stages are equal.
pub(crate) fn first_difference(a: &crate::Tasklist, b: &crate::Tasklist) -> Option<String> {
    use crate::TaskEntry;
    if a.stages.len() != b.stages.len() {
        return Some(format!(
            "stages (the run has {}, the tasklist {})",
            a.stages.len(),
            b.stages.len()
        ));
    }
    for (si, (sa, sb)) in a.stages.iter().zip(&b.stages).enumerate() {
        if sa.tasks.len() != sb.tasks.len() {
            return Some(format!(
                "stages[{si}] (the run has {} tasks, the tasklist {})",
                sa.tasks.len(),
                sb.tasks.len()
            ));
        }
        for (ei, (ea, eb)) in sa.tasks.iter().zip(&sb.tasks).enumerate() {
            match (ea, eb) {
                (TaskEntry::Single(ta), TaskEntry::Single(tb)) if ta != tb => {
                    return Some(format!("stages[{si}].tasks[{ei}]"));
                }
                (TaskEntry::Chain(ca), TaskEntry::Chain(cb)) if ca != cb => {
                    let at = ca
                        .iter()
                        .zip(cb)
                        .position(|(x, y)| x != y)
                        .unwrap_or(ca.len().min(cb.len()));
                    return Some(format!("stages[{si}].tasks[{ei}][{at}]"));
                }
                (TaskEntry::Single(_), TaskEntry::Chain(_))
                | (TaskEntry::Chain(_), TaskEntry::Single(_)) => {
                    return Some(format!("stages[{si}].tasks[{ei}]"));
                }
                _ => {}
            }
        }
        if sa != sb {
            return Some(format!("stages[{si}]"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forms_are_recognized_only_in_their_exact_shape() {
        assert!(matches!(form(&json!({"secret": "x"})), Form::Inline("x")));
        assert!(matches!(form(&json!({"secret": "***"})), Form::Redacted));
        assert!(matches!(form(&json!({"secret_env": "V"})), Form::Env("V")));
        assert!(matches!(form(&json!({"secret": 5})), Form::Bad(_)));
        assert!(matches!(form(&json!({"secret_env": null})), Form::Bad(_)));
        assert!(matches!(
            form(&json!({"secret": "x", "name": "k8s"})),
            Form::Plain
        ));
        assert!(matches!(form(&json!("secret")), Form::Plain));
    }

    #[test]
    fn resolution_reads_the_environment_and_reports_paths() {
        let args = json!({
            "a": {"secret_env": "SECRETS_RS_TEST_A"},
            "nested": {"list": [1, {"secret_env": "SECRETS_RS_TEST_MISSING"}]},
            "b": {"secret": "***"},
            "c": {"secret": ["not", "a", "string"]},
        });
        let env = |v: &str| (v == "SECRETS_RS_TEST_A").then(|| "from-env-9f2".to_string());
        let redactor = Redactor::new();
        let errors = resolve_args(args.as_object().unwrap(), &env, &redactor).unwrap_err();
        let text = errors.to_string();
        assert!(
            text.contains("nested.list[1]: the secret's environment variable SECRETS_RS_TEST_MISSING is not set"),
            "{text}"
        );
        assert!(
            text.contains("b: the secret's value was left out"),
            "{text}"
        );
        assert!(
            text.contains("c: a secret value must be a string"),
            "{text}"
        );
        assert!(!text.contains("not\""), "{text}");
        let ok = resolve_args(
            json!({"a": {"secret_env": "SECRETS_RS_TEST_A"}})
                .as_object()
                .unwrap(),
            &env,
            &redactor,
        )
        .unwrap();
        assert_eq!(ok["a"], json!({"secret": "from-env-9f2"}));
        assert_eq!(redactor.redact("x from-env-9f2 y"), "x *** y");
    }

    #[test]
    fn a_new_run_holds_no_secret_whatever_the_store() {
        let tasklist = crate::Tasklist::new("t").stage(
            crate::Stage::new("s", 1).task(crate::Task::new("login").secret("token", "tok-N1")),
        );
        let mut registry = crate::CommandRegistry::new();
        registry.register_fn("login", |_| {
            #[derive(Debug)]
            struct Noop;
            #[async_trait::async_trait]
            impl crate::Command for Noop {
                fn initialize(_: &crate::TaskArgs<'_>) -> Result<Self, ValidationErrors> {
                    Ok(Noop)
                }
                async fn execute(
                    &self,
                    _: &crate::ExecContext,
                ) -> Result<crate::Outcome, crate::CommandError> {
                    Ok(crate::Outcome::done())
                }
            }
            Ok(Box::new(Noop))
        });
        let plan = crate::Plan::build(&tasklist, &registry).unwrap();
        let run = crate::NewRun::from_plan(&plan, "test", "tester");
        assert_eq!(
            run.tasklist.redacted_secrets(),
            ["stages[0].tasks[0].token"]
        );
        assert!(!format!("{run:?}").contains("tok-N1"));
    }

    #[test]
    fn redaction_keeps_plain_values_and_env_references() {
        let v = json!({"a": [{"secret": "pw-R1"}, {"secret_env": "X"}], "b": 1});
        assert_eq!(
            redacted(&v),
            json!({"a": [{"secret": "***"}, {"secret_env": "X"}], "b": 1})
        );
        assert_eq!(
            serde_json::to_value(RedactedJson(&v)).unwrap(),
            redacted(&v)
        );
        assert_eq!(
            unwrap(&v),
            json!({"a": ["pw-R1", {"secret_env": "X"}], "b": 1})
        );
    }
}
