//! CEL expressions: compiled once when a book is registered, evaluated against a scope.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

/// A compiled CEL expression and its source.
#[derive(Clone)]
pub(crate) struct Expr {
    pub(crate) source: String,
    program: Arc<cel::Program>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

/// A syntax error: 1-based line and column within the expression, and what is wrong.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub(crate) line: u64,
    pub(crate) column: u64,
    pub(crate) message: String,
}

impl Expr {
    pub(crate) fn compile(source: &str) -> Result<Expr, SyntaxError> {
        match cel::Program::compile(source) {
            Ok(program) => Ok(Expr {
                source: source.to_string(),
                program: Arc::new(program),
            }),
            Err(errors) => {
                let first = errors.errors.first();
                let (line, column) = first
                    .map(|e| {
                        (
                            u64::try_from(e.pos.0.max(1)).unwrap_or(1),
                            u64::try_from(e.pos.1.max(1)).unwrap_or(1),
                        )
                    })
                    .unwrap_or((1, 1));
                let message = first
                    .map(|e| e.msg.clone())
                    .unwrap_or_else(|| "invalid expression".to_string());
                Err(SyntaxError {
                    line,
                    column,
                    message,
                })
            }
        }
    }

    /// Evaluates against `scope`; the result as JSON.
    pub(crate) fn eval(&self, scope: &Env) -> Result<Value, String> {
        let value = self.program.execute(&scope.context).map_err(|e| match e {
            cel::ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
            cel::ExecutionError::UndeclaredReference(k) => {
                format!(
                    "undeclared reference to \"{k}\" (the scope has: {})",
                    scope.names.join(", ")
                )
            }
            other => {
                let m = other.to_string();
                if m.contains("null_type") {
                    format!("{m} (a value it uses is null; guard it with `x != null && ...`)")
                } else {
                    m
                }
            }
        })?;
        from_cel(&value)
    }

    /// Evaluates a condition: the result must be a boolean.
    pub(crate) fn eval_bool(&self, scope: &Env) -> Result<bool, String> {
        match self.eval(scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "the condition gave {}, expected true or false",
                crate::validation::json_type(&other)
            )),
        }
    }
}

/// The scope as CEL variables: one per top-level key.
pub(crate) struct Env {
    context: cel::Context<'static, 'static>,
    names: Vec<String>,
}

impl Env {
    /// `scope` must be a JSON object.
    pub(crate) fn new(scope: &Value) -> Result<Env, String> {
        let Value::Object(map) = scope else {
            return Err(format!(
                "the scope is {}, expected an object",
                crate::validation::json_type(scope)
            ));
        };
        let mut context = cel::Context::default();
        let mut names = Vec::new();
        for (k, v) in map {
            context.add_variable_from_value(k.clone(), to_cel(v));
            names.push(k.clone());
        }
        Ok(Env { context, names })
    }
}

fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::from(s.clone()),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<String, cel::Value> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

fn from_cel(v: &cel::Value) -> Result<Value, String> {
    Ok(match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::from(*i),
        cel::Value::UInt(u) => Value::from(*u),
        cel::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("the value {f} has no JSON form"))?,
        cel::Value::String(s) => Value::String(s.to_string()),
        cel::Value::List(l) => Value::Array(l.iter().map(from_cel).collect::<Result<_, _>>()?),
        cel::Value::Map(m) => {
            let mut entries: Vec<(String, Value)> = m
                .map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        cel::objects::Key::Int(i) => i.to_string(),
                        cel::objects::Key::Uint(u) => u.to_string(),
                        cel::objects::Key::Bool(b) => b.to_string(),
                        cel::objects::Key::String(s) => s.to_string(),
                    };
                    from_cel(v).map(|v| (key, v))
                })
                .collect::<Result<_, _>>()?;
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        other => return Err(format!("the value {other:?} has no JSON form")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_against_json_and_is_strict() {
        let scope = json!({"deployment": {"subdomain": "shop", "values": {"workers": 4}}});
        let env = Env::new(&scope).unwrap();
        let e = Expr::compile("deployment.subdomain != ''").unwrap();
        assert!(e.eval_bool(&env).unwrap());
        let e = Expr::compile("deployment.values.workers * 2").unwrap();
        assert_eq!(e.eval(&env).unwrap(), json!(8));
        let e = Expr::compile("deployment.subdomian != ''").unwrap();
        assert!(e.eval_bool(&env).unwrap_err().contains("subdomian"));
        let e = Expr::compile("deploymnet.subdomain").unwrap();
        let err = e.eval(&env).unwrap_err();
        assert!(
            err.contains("deploymnet") && err.contains("deployment"),
            "{err}"
        );
        let e = Expr::compile("deployment.subdomain").unwrap();
        assert!(e.eval_bool(&env).is_err());
        // Optional keys are tested with has().
        let e = Expr::compile("has(deployment.nope) || has(deployment.subdomain)").unwrap();
        assert!(e.eval_bool(&env).unwrap());
        let e = Expr::compile("has(deployment.nope)").unwrap();
        assert!(!e.eval_bool(&env).unwrap());
    }

    #[test]
    fn syntax_errors_have_a_column() {
        let err = Expr::compile(")").unwrap_err();
        assert_eq!((err.line, err.column), (1, 1));
        let err = Expr::compile("a + )").unwrap_err();
        assert_eq!((err.line, err.column), (1, 5));
        assert!(
            err.message.contains("mismatched input ')'"),
            "{}",
            err.message
        );
        let err = Expr::compile("a +\n  )").unwrap_err();
        assert_eq!((err.line, err.column), (2, 3));
    }
}
