//! The CEL environment of a ValidatingAdmissionPolicy: compiling its
//! expressions (and refusing names no policy can read), running them, and
//! the values they see (`object`, `oldObject`, `request`, `params`,
//! `namespaceObject`, `variables`; `authorizer` is in
//! [`super::cel_authorizer`]).
//!
//! Expressions run on the `cel` crate with the Kubernetes extension
//! functions of `kube-cel`, as the CRD validation rules do. The
//! interpreter panics on a few inputs; every parse and run is guarded so a
//! policy cannot take down the devcluster (its state lock is held here).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use kube_cel::KubeCelExt;
use kube_cel::cel::common::ast::{EntryExpr, Expr, IdedExpr, MapExpr, StructExpr, operators};
use kube_cel::cel::objects::{Key, Map};
use kube_cel::cel::parser::{Expression, Parser};
use kube_cel::cel::{self, ExecutionError, Value};
use serde_json::Value as Json;

/// Parses an expression; the error is worded as the API server's CEL
/// compiler words it (`compilation failed: ERROR: <input>:1:5: …`).
/// Optional syntax (`object.spec.?x.orValue(…)`) is on, as in policies.
pub fn compile(source: &str) -> Result<Expression, String> {
    match catch_unwind(|| Parser::new().enable_optional_syntax(true).parse(source)) {
        Ok(Ok(mut program)) => {
            optional_select_as_index(&mut program);
            Ok(program)
        }
        Ok(Err(errors)) => Err(format!("compilation failed: {errors}")),
        Err(_) => Err("compilation failed: the expression could not be parsed".to_string()),
    }
}

/// The variables every policy expression may read.
const VARIABLES: &[&str] = &["object", "oldObject", "request", "params", "namespaceObject", "variables", "authorizer"];

/// Type names an expression may name (`type(x) == string`).
const TYPE_NAMES: &[&str] =
    &["bool", "bytes", "double", "duration", "int", "list", "map", "null_type", "string", "timestamp", "type", "uint"];

/// The namespaces of library functions (`math.abs`, `optional.of`, …).
const LIBRARIES: &[&str] =
    &["base64", "cel", "format", "ip", "jsonpatch", "lists", "math", "optional", "regex", "sets", "strings", "url"];

/// Refuses what the API server's type checker refuses of a policy's
/// expression without knowing the object's schema: a name that is not a
/// variable (`objekt.spec`), and `variables.x` for an `x` not declared
/// before. Worded as cel-go words it, at the name's first place in the source.
pub fn check_names(program: &Expression, source: &str, declared: &[String]) -> Result<(), String> {
    let mut bound = Vec::new();
    match first_undeclared(program, declared, &mut bound) {
        None => Ok(()),
        Some(Undeclared::Name(name)) => {
            Err(located(source, &name, &format!("undeclared reference to '{name}' (in container '')")))
        }
        Some(Undeclared::Variable(name)) => {
            Err(located(source, &format!("variables.{name}"), &format!("undefined field '{name}'")))
        }
    }
}

enum Undeclared {
    Name(String),
    Variable(String),
}

/// The first undeclared name in `expr`; `bound` holds the comprehension
/// variables in scope.
fn first_undeclared(expr: &IdedExpr, declared: &[String], bound: &mut Vec<String>) -> Option<Undeclared> {
    match &expr.expr {
        Expr::Ident(name) => {
            let known = name.starts_with('@')
                || VARIABLES.contains(&name.as_str())
                || TYPE_NAMES.contains(&name.as_str())
                || bound.contains(name);
            (!known).then(|| Undeclared::Name(name.clone()))
        }
        Expr::Select(select) => {
            if let Expr::Ident(root) = &select.operand.expr
                && root == "variables"
                && !bound.contains(root)
                && !declared.contains(&select.field)
            {
                return Some(Undeclared::Variable(select.field.clone()));
            }
            first_undeclared(&select.operand, declared, bound)
        }
        Expr::Call(call) => {
            // `sets.contains(…)`, `math.abs(…)`: a library's name is the
            // target of its functions, not a variable.
            let library = |t: &&IdedExpr| matches!(&t.expr, Expr::Ident(name) if LIBRARIES.contains(&name.as_str()));
            let target = call.target.as_deref().filter(|t| !library(t));
            target.into_iter().chain(call.args.iter()).find_map(|e| first_undeclared(e, declared, bound))
        }
        Expr::Comprehension(c) => {
            if let Some(found) = first_undeclared(&c.iter_range, declared, bound) {
                return Some(found);
            }
            let before = bound.len();
            bound.extend([Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)].into_iter().flatten().cloned());
            let found = [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .find_map(|e| first_undeclared(e, declared, bound));
            bound.truncate(before);
            found
        }
        Expr::List(list) => list.elements.iter().find_map(|e| first_undeclared(e, declared, bound)),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            entries.iter().find_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(e) => {
                    first_undeclared(&e.key, declared, bound).or_else(|| first_undeclared(&e.value, declared, bound))
                }
                EntryExpr::StructField(f) => first_undeclared(&f.value, declared, bound),
            })
        }
        Expr::Unspecified | Expr::Literal(_) => None,
    }
}

/// A compiler error at the first place `needle` is in `source`, with the
/// line and a caret under it, as parse errors are shown.
fn located(source: &str, needle: &str, message: &str) -> String {
    let at = source.find(needle).unwrap_or(0);
    let line_start = source[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_number = source[..at].matches('\n').count() + 1;
    let column = source[line_start..at].chars().count() + 1;
    let line = source[line_start..].lines().next().unwrap_or_default();
    format!("compilation failed: ERROR: <input>:{line_number}:{column}: {message}\n| {line}\n| {:.>column$}", "^")
}

/// Rewrites `a.?f` as `a[?'f']`: the interpreter's optional select fails
/// on a missing field instead of giving `optional.none()`, while its
/// optional index, which means the same, does not.
fn optional_select_as_index(expr: &mut IdedExpr) {
    match &mut expr.expr {
        Expr::Call(call) => {
            if call.func_name == operators::OPT_SELECT {
                call.func_name = operators::OPT_INDEX.to_string();
            }
            call.target.iter_mut().for_each(|t| optional_select_as_index(t));
            call.args.iter_mut().for_each(optional_select_as_index);
        }
        Expr::Comprehension(c) => {
            for part in [&mut c.iter_range, &mut c.accu_init, &mut c.loop_cond, &mut c.loop_step, &mut c.result] {
                optional_select_as_index(part);
            }
        }
        Expr::List(list) => list.elements.iter_mut().for_each(optional_select_as_index),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
            for entry in entries {
                match &mut entry.expr {
                    EntryExpr::MapEntry(e) => {
                        optional_select_as_index(&mut e.key);
                        optional_select_as_index(&mut e.value);
                    }
                    EntryExpr::StructField(f) => optional_select_as_index(&mut f.value),
                }
            }
        }
        Expr::Select(select) => optional_select_as_index(&mut select.operand),
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
    }
}

/// Runs a compiled expression in `scope`.
pub fn execute(program: &Expression, scope: &cel::Context<'_>) -> Result<Value, String> {
    match catch_unwind(AssertUnwindSafe(|| Value::resolve(program, scope))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(describe(&error)),
        Err(_) => Err("internal error: the CEL interpreter failed".to_string()),
    }
}

/// An interpreter error in cel-go's words where they differ, and without
/// the values some messages print whole (an object may be a Secret).
fn describe(error: &ExecutionError) -> String {
    match error {
        ExecutionError::NoSuchKey(key) => format!("no such key: {key}"),
        ExecutionError::UndeclaredReference(name) => format!("undeclared reference to '{name}'"),
        ExecutionError::NoSuchOverload => "no such overload".to_string(),
        ExecutionError::FunctionError { function, message } => format!("{function}: {message}"),
        ExecutionError::UnexpectedType { got, want } => format!("unexpected type: got '{got}', want '{want}'"),
        ExecutionError::DivisionByZero(_) => "division by zero".to_string(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".to_string(),
        ExecutionError::ValuesNotComparable(a, b) => {
            format!("no such overload: {} and {} cannot be compared", a.type_of(), b.type_of())
        }
        ExecutionError::UnsupportedBinaryOperator(op, a, b) => {
            format!("no such overload: {} {op} {}", a.type_of(), b.type_of())
        }
        ExecutionError::UnsupportedUnaryOperator(op, value) => format!("no such overload: {op}{}", value.type_of()),
        _ => "no such overload".to_string(),
    }
}

/// The functions every evaluation may call, registered once.
pub fn base() -> &'static cel::Context<'static> {
    static BASE: OnceLock<cel::Context<'static>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut context = cel::Context::default().with_all();
        super::cel_authorizer::register(&mut context);
        context
    })
}

/// A JSON value as CEL sees it: objects become maps, integers ints.
pub fn to_cel(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(fields) => map(fields.iter().map(|(k, v)| (k.clone(), to_cel(v)))),
    }
}

pub fn map(entries: impl IntoIterator<Item = (String, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries.into_iter().map(|(k, v)| (Key::String(Arc::new(k)), v)).collect();
    Value::Map(Map { map: Arc::new(map) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn string(s: &str) -> Value {
        Value::String(Arc::new(s.to_string()))
    }

    fn run(source: &str) -> Result<Value, String> {
        let mut scope = base().new_inner_scope();
        scope.add_variable_from_value("object", to_cel(&json!({"spec": {"n": 3, "tags": ["a"]}})));
        execute(&compile(source)?, &scope)
    }

    #[test]
    fn objects_read_as_in_kubernetes_with_has_on_absent_fields() {
        assert_eq!(run("object.spec.n == 3 && object.spec.tags[0] == 'a'"), Ok(Value::Bool(true)));
        assert_eq!(run("has(object.spec.requestedBy)"), Ok(Value::Bool(false)));
        assert_eq!(run("object.spec.requestedBy == 'x'"), Err("no such key: requestedBy".to_string()));
    }

    #[test]
    fn optional_fields_give_none_when_absent() {
        assert_eq!(run("object.spec.?requestedBy.orValue('nobody')"), Ok(string("nobody")));
        assert_eq!(run("object.?spec.?n.orValue(0)"), Ok(Value::Int(3)));
        assert_eq!(run("object.?status.?phase.hasValue()"), Ok(Value::Bool(false)));
    }

    #[test]
    fn undeclared_names_and_variables_are_refused_as_the_type_checker_refuses_them() {
        let checked = |source: &str, declared: &[&str]| {
            let declared: Vec<String> = declared.iter().map(|d| d.to_string()).collect();
            check_names(&compile(source).expect("parses"), source, &declared)
        };
        assert_eq!(
            checked("objekt.spec.x == 1", &[]),
            Err("compilation failed: ERROR: <input>:1:1: undeclared reference to 'objekt' (in container '')\n| objekt.spec.x == 1\n| ^".into())
        );
        assert_eq!(
            checked("objekt.startsWith('x')", &[]).map_err(|e| e.lines().next().map(str::to_string)),
            Err(Some(
                "compilation failed: ERROR: <input>:1:1: undeclared reference to 'objekt' (in container '')".into()
            ))
        );
        assert_eq!(
            checked("true && variables.confirm", &["confirms"]),
            Err("compilation failed: ERROR: <input>:1:9: undefined field 'confirm'\n| true && variables.confirm\n| ........^".into())
        );
        let fine = [
            "variables.confirms && object.spec.all(k, k != '') && [1].exists(x, x == 1)",
            "sets.contains([1], [1]) && math.abs(-1) == 1 && optional.of(1).hasValue()",
            "type(object) == map && has(oldObject.spec) && request.userInfo.username != ''",
            "authorizer.requestResource.check('get').allowed() && params == null && namespaceObject == null",
        ];
        for source in fine {
            assert_eq!(checked(source, &["confirms"]), Ok(()), "{source}");
        }
    }

    #[test]
    fn syntax_errors_are_worded_as_the_api_server_words_them() {
        let error = compile("object.spec.n ==").expect_err("incomplete");
        assert!(error.starts_with("compilation failed: ERROR: <input>:1:"), "{error}");
    }
}
