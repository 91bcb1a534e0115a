//! The `authorizer` library of policy expressions:
//! `authorizer.group(g).resource(r).subresource(s).namespace(ns).name(n)
//! .check(verb)` and `authorizer.path(p).check(verb)` give a Decision with
//! `allowed()`, `reason()`, `errored()` and `error()`;
//! `authorizer.serviceAccount(ns, name)` asks about a service account, and
//! `authorizer.requestResource` is a check about the request's own
//! resource. Checks go to the request's [`PolicyAuthorizer`].

use std::fmt;
use std::sync::Arc;

use kube_cel::cel::extractors::This;
use kube_cel::cel::objects::{Key, Opaque};
use kube_cel::cel::{self, ExecutionError, FunctionContext, Value};

use super::authorizer::{CheckAttributes, CheckDecision, PolicyAuthorizer, RequestUser};
use super::cel_env::map;

/// Adds the library's functions to `context`.
pub fn register(context: &mut cel::Context<'static>) {
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
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

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
    use crate::admission_policy::cel_env::{base, compile, execute, to_cel};
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
}
