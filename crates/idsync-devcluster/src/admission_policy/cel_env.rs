//! The CEL environment of a ValidatingAdmissionPolicy: compiling its
//! expressions, the values they see (`object`, `oldObject`, `request`,
//! `params`, `namespaceObject`, `variables`) and the `authorizer` library
//! (`authorizer.group(g).resource(r).namespace(ns).check(verb).allowed()`,
//! `authorizer.path(p).check(verb)`, `authorizer.serviceAccount(ns, name)`,
//! `authorizer.requestResource`).
//!
//! Expressions run on the `cel` crate with the Kubernetes extension
//! functions of `kube-cel`, as the CRD validation rules do. The
//! interpreter panics on a few inputs; every parse and run is guarded so a
//! policy cannot take down the devcluster (its state lock is held here).

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use kube_cel::KubeCelExt;
use kube_cel::cel::common::ast::{EntryExpr, Expr, IdedExpr, MapExpr, StructExpr, operators};
use kube_cel::cel::extractors::This;
use kube_cel::cel::objects::{Key, Map, Opaque};
use kube_cel::cel::parser::{Expression, Parser};
use kube_cel::cel::{self, ExecutionError, FunctionContext, Value};
use serde_json::Value as Json;

use super::authorizer::{CheckAttributes, CheckDecision, PolicyAuthorizer, RequestUser};

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
            let target = call.target.as_deref().filter(|t| !matches!(t.expr, Expr::Ident(_)));
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
        context.add_function("group", group);
        context.add_function("resource", resource);
        context.add_function("subresource", subresource);
        context.add_function("namespace", namespace);
        context.add_function("name", name);
        context.add_function("path", path);
        context.add_function("check", check);
        context.add_function("serviceAccount", service_account);
        context.add_function("allowed", allowed);
        context.add_function("reason", reason);
        context.add_function("errored", errored);
        context.add_function("error", error);
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

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

// ------------------------------------------------------------ authorizer --

/// The key of the `authorizer` map holding who checks are about; `@`
/// cannot start a CEL identifier, so no expression can name it by field.
const AUTHORIZER_KEY: &str = "@authorizer";

/// Who checks are about, and whom to ask.
#[derive(Clone)]
struct Subject {
    user: Arc<RequestUser>,
    authorizer: Arc<dyn PolicyAuthorizer>,
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authorizer({})", self.user.username)
    }
}

impl PartialEq for Subject {
    fn eq(&self, other: &Self) -> bool {
        self.user == other.user && Arc::ptr_eq(&self.authorizer, &other.authorizer)
    }
}

impl Eq for Subject {}

impl Opaque for Subject {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.authorization.Authorizer"
    }
}

/// `authorizer.group(g)…`: the resource a check is about, built up call by
/// call. `path` set makes it a non-resource check.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ResourceCheck {
    subject: Subject,
    attributes: CheckAttributes,
}

impl Opaque for ResourceCheck {
    fn runtime_type_name(&self) -> &str {
        if self.attributes.path.is_some() {
            "kubernetes.authorization.PathCheck"
        } else {
            "kubernetes.authorization.ResourceCheck"
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Decision(CheckDecision);

impl Opaque for Decision {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.authorization.Decision"
    }
}

/// The `authorizer` variable for `user`, with its `requestResource` (a
/// check about the resource of the request itself).
pub fn authorizer_value(
    user: RequestUser,
    authorizer: Arc<dyn PolicyAuthorizer>,
    request_resource: CheckAttributes,
) -> Value {
    let subject = Subject { user: Arc::new(user), authorizer };
    let request_resource = ResourceCheck { subject: subject.clone(), attributes: request_resource };
    map([
        (AUTHORIZER_KEY.to_string(), Value::Opaque(Arc::new(subject))),
        ("requestResource".to_string(), Value::Opaque(Arc::new(request_resource))),
    ])
}

fn subject_of(ftx: &FunctionContext, this: &Value) -> Result<Subject, ExecutionError> {
    if let Value::Map(m) = this
        && let Some(Value::Opaque(o)) = m.map.get(&Key::String(Arc::new(AUTHORIZER_KEY.to_string())))
        && let Some(subject) = o.downcast_ref::<Subject>()
    {
        return Ok(subject.clone());
    }
    Err(ftx.error("no such overload"))
}

fn check_of(ftx: &FunctionContext, this: &Value) -> Result<ResourceCheck, ExecutionError> {
    match this {
        Value::Opaque(o) => o.downcast_ref::<ResourceCheck>().cloned().ok_or_else(|| ftx.error("no such overload")),
        _ => Err(ftx.error("no such overload")),
    }
}

fn decision_of(ftx: &FunctionContext, this: &Value) -> Result<CheckDecision, ExecutionError> {
    match this {
        Value::Opaque(o) => {
            o.downcast_ref::<Decision>().map(|d| d.0.clone()).ok_or_else(|| ftx.error("no such overload"))
        }
        _ => Err(ftx.error("no such overload")),
    }
}

fn opaque(check: ResourceCheck) -> Value {
    Value::Opaque(Arc::new(check))
}

fn group(ftx: &FunctionContext, This(this): This<Value>, g: Arc<String>) -> Result<Value, ExecutionError> {
    let subject = subject_of(ftx, &this)?;
    let attributes = CheckAttributes { group: g.to_string(), ..CheckAttributes::default() };
    Ok(opaque(ResourceCheck { subject, attributes }))
}

fn path(ftx: &FunctionContext, This(this): This<Value>, p: Arc<String>) -> Result<Value, ExecutionError> {
    let subject = subject_of(ftx, &this)?;
    let attributes = CheckAttributes { path: Some(p.to_string()), ..CheckAttributes::default() };
    Ok(opaque(ResourceCheck { subject, attributes }))
}

fn service_account(
    ftx: &FunctionContext,
    This(this): This<Value>,
    ns: Arc<String>,
    name: Arc<String>,
) -> Result<Value, ExecutionError> {
    let subject = subject_of(ftx, &this)?;
    let user = Arc::new(RequestUser::service_account(&ns, &name));
    let account = Subject { user, authorizer: subject.authorizer };
    Ok(map([(AUTHORIZER_KEY.to_string(), Value::Opaque(Arc::new(account)))]))
}

/// A builder step of a resource check: sets one attribute.
fn with(ftx: &FunctionContext, this: &Value, set: impl FnOnce(&mut CheckAttributes)) -> Result<Value, ExecutionError> {
    let mut check = check_of(ftx, this)?;
    if check.attributes.path.is_some() {
        return Err(ftx.error("no such overload"));
    }
    set(&mut check.attributes);
    Ok(opaque(check))
}

fn resource(ftx: &FunctionContext, This(this): This<Value>, r: Arc<String>) -> Result<Value, ExecutionError> {
    with(ftx, &this, |a| a.resource = r.to_string())
}

fn subresource(ftx: &FunctionContext, This(this): This<Value>, s: Arc<String>) -> Result<Value, ExecutionError> {
    with(ftx, &this, |a| a.subresource = Some(s.to_string()).filter(|s| !s.is_empty()))
}

fn namespace(ftx: &FunctionContext, This(this): This<Value>, ns: Arc<String>) -> Result<Value, ExecutionError> {
    with(ftx, &this, |a| a.namespace = Some(ns.to_string()).filter(|s| !s.is_empty()))
}

fn name(ftx: &FunctionContext, This(this): This<Value>, n: Arc<String>) -> Result<Value, ExecutionError> {
    with(ftx, &this, |a| a.name = Some(n.to_string()).filter(|s| !s.is_empty()))
}

fn check(ftx: &FunctionContext, This(this): This<Value>, verb: Arc<String>) -> Result<Value, ExecutionError> {
    let check = check_of(ftx, &this)?;
    let attributes = CheckAttributes { verb: verb.to_string(), ..check.attributes };
    let decision = check.subject.authorizer.check(&check.subject.user, &attributes);
    Ok(Value::Opaque(Arc::new(Decision(decision))))
}

fn allowed(ftx: &FunctionContext, This(this): This<Value>) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(decision_of(ftx, &this)?.allowed))
}

fn reason(ftx: &FunctionContext, This(this): This<Value>) -> Result<Value, ExecutionError> {
    Ok(string(&decision_of(ftx, &this)?.reason))
}

fn errored(ftx: &FunctionContext, This(this): This<Value>) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(decision_of(ftx, &this)?.error.is_some()))
}

fn error(ftx: &FunctionContext, This(this): This<Value>) -> Result<Value, ExecutionError> {
    Ok(string(&decision_of(ftx, &this)?.error.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;

    /// Allows `verb` only, and remembers what it was asked.
    struct Recording {
        verb: &'static str,
        asked: Mutex<Vec<(String, CheckAttributes)>>,
    }

    impl PolicyAuthorizer for Recording {
        fn check(&self, user: &RequestUser, attrs: &CheckAttributes) -> CheckDecision {
            if let Ok(mut asked) = self.asked.lock() {
                asked.push((user.username.clone(), attrs.clone()));
            }
            CheckDecision { allowed: attrs.verb == self.verb, reason: "because".into(), error: None }
        }
    }

    fn run(source: &str, authorizer: &Arc<Recording>) -> Result<Value, String> {
        let mut scope = base().new_inner_scope();
        let user = RequestUser { username: "alice".into(), ..RequestUser::default() };
        let request_resource = CheckAttributes {
            group: "idsync.dev".into(),
            resource: "resyncrequests".into(),
            namespace: Some("idsync".into()),
            ..CheckAttributes::default()
        };
        let dyn_authorizer: Arc<dyn PolicyAuthorizer> = authorizer.clone();
        scope.add_variable_from_value("authorizer", authorizer_value(user, dyn_authorizer, request_resource));
        scope.add_variable_from_value("object", to_cel(&json!({"spec": {"n": 3, "tags": ["a"]}})));
        execute(&compile(source)?, &scope)
    }

    fn recording(verb: &'static str) -> Arc<Recording> {
        Arc::new(Recording { verb, asked: Mutex::new(Vec::new()) })
    }

    #[test]
    fn a_resource_check_asks_the_authorizer_with_every_attribute() {
        let authz = recording("confirm");
        let allowed = run(
            "authorizer.group('idsync.dev').resource('resyncrequests').subresource('status').namespace('idsync').name('r1').check('confirm').allowed()",
            &authz,
        );
        assert_eq!(allowed, Ok(Value::Bool(true)));
        let asked = authz.asked.lock().expect("lock").clone();
        let expected = CheckAttributes {
            verb: "confirm".into(),
            group: "idsync.dev".into(),
            resource: "resyncrequests".into(),
            subresource: Some("status".into()),
            namespace: Some("idsync".into()),
            name: Some("r1".into()),
            path: None,
        };
        assert_eq!(asked, vec![("alice".to_string(), expected)]);
        let denied = run("authorizer.group('').resource('secrets').check('get').allowed()", &authz);
        assert_eq!(denied, Ok(Value::Bool(false)));
    }

    #[test]
    fn decisions_tell_their_reason_and_whether_they_errored() {
        let authz = recording("get");
        let reason = run("authorizer.path('/healthz').check('get').reason()", &authz);
        assert_eq!(reason, Ok(string("because")));
        assert_eq!(run("authorizer.path('/healthz').check('get').errored()", &authz), Ok(Value::Bool(false)));
        assert_eq!(run("authorizer.path('/healthz').check('get').error()", &authz), Ok(string("")));
        let asked = authz.asked.lock().expect("lock").clone();
        assert_eq!(asked[0].1.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn request_resource_and_service_accounts_are_checkable() {
        let authz = recording("confirm");
        assert_eq!(run("authorizer.requestResource.check('confirm').allowed()", &authz), Ok(Value::Bool(true)));
        let sa = run(
            "authorizer.serviceAccount('idsync', 'operator').group('').resource('pods').check('list').allowed()",
            &authz,
        );
        assert_eq!(sa, Ok(Value::Bool(false)));
        let asked = authz.asked.lock().expect("lock").clone();
        assert_eq!(asked[0].1.resource, "resyncrequests");
        assert_eq!(asked[0].1.namespace.as_deref(), Some("idsync"));
        assert_eq!(asked[1].0, "system:serviceaccount:idsync:operator");
    }

    #[test]
    fn objects_read_as_in_kubernetes_with_has_on_absent_fields() {
        let authz = recording("none");
        assert_eq!(run("object.spec.n == 3 && object.spec.tags[0] == 'a'", &authz), Ok(Value::Bool(true)));
        assert_eq!(run("has(object.spec.requestedBy)", &authz), Ok(Value::Bool(false)));
        assert_eq!(run("object.spec.requestedBy == 'x'", &authz), Err("no such key: requestedBy".to_string()));
    }

    #[test]
    fn optional_fields_give_none_when_absent() {
        let authz = recording("none");
        assert_eq!(run("object.spec.?requestedBy.orValue('nobody')", &authz), Ok(string("nobody")));
        assert_eq!(run("object.?spec.?n.orValue(0)", &authz), Ok(Value::Int(3)));
        assert_eq!(run("object.?status.?phase.hasValue()", &authz), Ok(Value::Bool(false)));
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
