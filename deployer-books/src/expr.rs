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

/// Longest expression accepted, in bytes: it bounds how deep the CEL parser recurses.
const MAX_LEN: usize = 4096;

/// Deepest expression tree accepted (the nesting CEL implementations must support): it bounds
/// how deep evaluation recurses, on the caller's stack. A debug build evaluates 32 levels in
/// under 2 MiB, a thread's default stack; 64 levels overflowed it.
const MAX_DEPTH: usize = 32;

/// The stack the CEL parser runs on: it recurses per nesting level and per operand of a chain
/// (`1+1+...`), and in a debug build 14 nested parentheses overflowed a 2 MiB stack, which
/// aborts the process. An expression of `MAX_LEN` bytes needs less than 16 MiB; the pages are
/// only reserved until touched.
const COMPILE_STACK: usize = 64 << 20;

impl Expr {
    pub(crate) fn compile(source: &str) -> Result<Expr, SyntaxError> {
        if source.len() > MAX_LEN {
            return Err(SyntaxError {
                line: 1,
                column: 1,
                message: format!(
                    "the expression is {} bytes long, more than {MAX_LEN}",
                    source.len()
                ),
            });
        }
        std::thread::scope(|scope| {
            let compiler = std::thread::Builder::new()
                .name("cel-compile".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(scope, || Self::compile_here(source))
                .map_err(|e| SyntaxError {
                    line: 1,
                    column: 1,
                    message: format!("cannot start the expression compiler: {e}"),
                })?;
            compiler
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Compiles on the current thread, which needs a stack of [`COMPILE_STACK`]; a program
    /// deeper than [`MAX_DEPTH`] is refused (and dropped here, as dropping recurses too).
    fn compile_here(source: &str) -> Result<Expr, SyntaxError> {
        match cel::Program::compile(source) {
            Ok(program) => {
                let depth = depth(program.expression());
                if depth > MAX_DEPTH {
                    return Err(SyntaxError {
                        line: 1,
                        column: 1,
                        message: format!(
                            "the expression nests {depth} levels deep, more than {MAX_DEPTH}"
                        ),
                    });
                }
                Ok(Expr {
                    source: source.to_string(),
                    program: Arc::new(program),
                })
            }
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
                deployer_core::json_type(&other)
            )),
        }
    }
}

/// The depth of an expression tree: 1 for a literal or a name, 1 more per enclosing node.
fn depth(e: &cel::common::ast::IdedExpr) -> usize {
    use cel::common::ast::{EntryExpr, Expr as E, IdedEntryExpr};
    fn deepest<'a>(es: impl IntoIterator<Item = &'a cel::common::ast::IdedExpr>) -> usize {
        es.into_iter().map(depth).max().unwrap_or(0)
    }
    fn entries(es: &[IdedEntryExpr]) -> usize {
        es.iter()
            .map(|e| match &e.expr {
                EntryExpr::StructField(f) => depth(&f.value),
                EntryExpr::MapEntry(m) => depth(&m.key).max(depth(&m.value)),
            })
            .max()
            .unwrap_or(0)
    }
    1 + match &e.expr {
        E::Unspecified | E::Ident(_) | E::Literal(_) => 0,
        E::Call(c) => deepest(c.target.as_deref().into_iter().chain(&c.args)),
        E::Comprehension(c) => deepest([
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]),
        E::List(l) => deepest(&l.elements),
        E::Map(m) => entries(&m.entries),
        E::Select(s) => depth(&s.operand),
        E::Struct(s) => entries(&s.entries),
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
                deployer_core::json_type(scope)
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

    /// Found by fuzzing (fuzz/regressions/book/deep_expression): a `hosts` expression of ~90
    /// nested braces overflowed the stack, which aborts the process. The CEL parser recurses
    /// per level (14 levels overflowed 2 MiB in a debug build) and evaluation per level of
    /// the tree (`1+1+...`), so compiling runs on its own large stack, and what evaluation
    /// would recurse into too deeply is refused with an error. This test runs on a test
    /// thread's 2 MiB stack.
    #[test]
    fn deep_expressions_are_refused_not_a_stack_overflow() {
        let env = Env::new(&json!({"a": [[1]]})).unwrap();
        // What the CEL spec requires (32 levels) compiles and evaluates.
        let nested = format!("{}1{}", "[".repeat(31), "]".repeat(31));
        let e = Expr::compile(&nested).unwrap();
        assert_eq!(depth(e.program.expression()), 32);
        assert_eq!(e.eval(&env).unwrap().to_string().len(), 63);
        let e = Expr::compile(&format!("{}1{}", "(".repeat(90), ")".repeat(90))).unwrap();
        assert_eq!(e.eval(&env).unwrap(), json!(1));
        let e = Expr::compile(&format!("1{}", " + 1".repeat(31))).unwrap();
        assert_eq!(e.eval(&env).unwrap(), json!(32));
        let e = Expr::compile(&format!("a{}", "[0]".repeat(2))).unwrap();
        assert_eq!(e.eval(&env).unwrap(), json!(1));
        // Deeper trees are errors.
        for deep in [
            format!("{}1{}", "[".repeat(32), "]".repeat(32)),
            format!("{}1{}", "{1: ".repeat(90), "}".repeat(90)),
            format!("1{}", "+1".repeat(2000)),
            format!("a{}", "[0]".repeat(1300)),
            format!("{}true{}", "[1].exists(x, ".repeat(30), ")".repeat(30)),
        ] {
            let err = Expr::compile(&deep).unwrap_err();
            assert!(
                err.message.contains("levels deep, more than 32")
                    || err.message.contains("Recursion limit"),
                "{}",
                err.message
            );
        }
        let err = Expr::compile(&format!("1{}", "+1".repeat(2048))).unwrap_err();
        assert_eq!(
            err.message,
            "the expression is 4097 bytes long, more than 4096"
        );
    }
}
