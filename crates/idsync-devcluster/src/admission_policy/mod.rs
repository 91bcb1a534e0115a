//! ValidatingAdmissionPolicy (`admissionregistration.k8s.io/v1`): every
//! create, update and delete — dry runs included — is checked against the
//! stored policies through their bindings, as the API server's
//! `ValidatingAdmissionPolicy` admission plugin does, after the schema has
//! admitted the object and before it is stored.
//!
//! For each binding whose policy exists (in order of policy, then binding
//! name): the policy's `matchConstraints` and the binding's
//! `matchResources` must select the request ([`matching`]); then every
//! `matchCondition` must hold (one false skips the policy); then the
//! `variables` are computed in order and the `validations` evaluated
//! ([`cel_env`]). A failed validation is acted on by the binding's
//! `validationActions`: `Deny` refuses with the API server's Status (code
//! from the validation's `reason`), `Warn` adds a `Warning` header, `Audit`
//! is logged. An expression that cannot be evaluated is a failure under
//! `failurePolicy: Fail` (the default) and ignored under `Ignore`.
//!
//! Policies and bindings are themselves validated when written (expressions
//! must compile, enums hold), as the API server validates them.
//!
//! Where it differs from a real API server:
//! - Variables are computed eagerly rather than when first used; one that
//!   fails makes only the expressions that use it fail, as there.
//! - `matchPolicy: Equivalent` lets a rule naming any served version of a
//!   resource match it, but `request.kind` and the object stay in the
//!   requested version (versions here share one stored shape).
//! - Expressions are not type-checked against the object's schema, and
//!   runtime cost is not bounded; `auditAnnotations` are not evaluated.
//! - Defaults (`failurePolicy: Fail`, `matchPolicy`, empty selectors) are
//!   applied when evaluating, not written into the stored object.

pub mod authorizer;
pub mod cel_env;
pub mod matching;
mod params;
mod validation;

use std::collections::BTreeMap;
use std::sync::Arc;

use kube_cel::cel::{self, Value as CelValue};
use serde_json::{Value, json};

use crate::api::State;
use crate::error::ApiError;
use crate::request::{Query, Target};
pub use authorizer::{CheckAttributes, CheckDecision, PolicyAuthorizer, RequestUser, Requester, requester};
pub use matching::Operation;
use matching::RequestAttributes;

/// The group of the policy kinds; requests for its resources are never
/// subject to policies (as on the API server, so a bad policy cannot lock
/// out its own repair).
pub const GROUP: &str = "admissionregistration.k8s.io";
const POLICIES: &str = "admissionregistration.k8s.io/validatingadmissionpolicies";
const BINDINGS: &str = "admissionregistration.k8s.io/validatingadmissionpolicybindings";

/// One write, as admission sees it.
pub struct Write<'a> {
    pub operation: Operation,
    /// The object to store; none for a delete.
    pub object: Option<&'a Value>,
    /// The stored object; none for a create.
    pub old_object: Option<&'a Value>,
    pub dry_run: bool,
    /// The write's `*Options` as sent (a delete's body), if any.
    pub options: Option<&'a Value>,
}

impl<'a> Write<'a> {
    /// A create (no `old`) or an update of `old`, storing `object`.
    pub fn stored(object: &'a Value, old: Option<&'a Value>, dry_run: bool) -> Self {
        let operation = if old.is_some() { Operation::Update } else { Operation::Create };
        Write { operation, object: Some(object), old_object: old, dry_run, options: None }
    }

    /// The deletion of `existing`, with the delete's options.
    pub fn deleted(existing: &'a Value, dry_run: bool, options: Option<&'a Value>) -> Self {
        Write { operation: Operation::Delete, object: None, old_object: Some(existing), dry_run, options }
    }
}

/// Admits the deletion of each of `items` (a `deletecollection`), all
/// before any is deleted.
pub fn admit_deletions(
    state: &State,
    t: &Target,
    items: &[Value],
    dry_run: bool,
    options: Option<&Value>,
    q: &Query,
) -> Result<(), ApiError> {
    for item in items {
        let meta =
            |field: &str| item.pointer(&format!("/metadata/{field}")).and_then(Value::as_str).map(str::to_string);
        let target = Target { name: meta("name"), namespace: meta("namespace").or(t.namespace.clone()), ..t.clone() };
        admit(state, &target, &Write::deleted(item, dry_run, options), q)?;
    }
    Ok(())
}

/// Admits a write, or refuses it as the API server would. Warnings of
/// `Warn` bindings go to the answer's `Warning` headers through `q`.
pub fn admit(state: &State, t: &Target, write: &Write, q: &Query) -> Result<(), ApiError> {
    if t.rt.group == GROUP {
        return match write.object {
            Some(object) => validation::validate(&t.rt.kind, object),
            None => Ok(()),
        };
    }
    let mut bindings: Vec<&Value> = state.store.list(BINDINGS, None).collect();
    bindings.sort_by_key(|b| (text(b, "/spec/policyName"), text(b, "/metadata/name")));
    if bindings.is_empty() {
        return Ok(());
    }
    let namespace = t.storage_namespace();
    let name = t
        .name
        .clone()
        .or_else(|| {
            write
                .object
                .or(write.old_object)
                .and_then(|o| o.pointer("/metadata/name"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let namespace_object = if t.rt.namespaced { state.store.get("namespaces", "", &namespace).cloned() } else { None };
    let attributes = RequestAttributes {
        operation: write.operation,
        group: &t.rt.group,
        version: &t.rt.version,
        kind: &t.rt.kind,
        resource: &t.rt.plural,
        subresource: t.subresource.as_deref(),
        name: &name,
        namespace: &namespace,
        namespaced: t.rt.namespaced,
        served_versions: served_versions(state, t),
        object: write.object,
        old_object: write.old_object,
        namespace_labels: namespace_object.as_ref().map(labels),
    };
    let requester = q.requester.clone().unwrap_or_else(nobody);
    let mut request: Option<Request> = None;
    let mut denied: Option<(String, String, Failure)> = None;
    for binding in bindings {
        let policy_name = text(binding, "/spec/policyName");
        let Some(policy) = state.store.get(POLICIES, "", &policy_name) else { continue };
        if !matching::policy_matches(policy.pointer("/spec/matchConstraints"), &attributes)
            || !matching::binding_matches(binding.pointer("/spec/matchResources"), &attributes)
        {
            continue;
        }
        let request =
            request.get_or_insert_with(|| Request::new(t, write, &name, namespace_object.as_ref(), &requester));
        let binding_name = text(binding, "/metadata/name");
        let failures = match params::collect(state, policy, binding, &namespace) {
            Ok(params) => params.iter().flat_map(|param| evaluate(policy, request, param.as_ref())).collect(),
            Err(error) => configuration_error(policy, format!("failed to configure binding: {error}")),
        };
        for failure in failures {
            for action in binding.pointer("/spec/validationActions").and_then(Value::as_array).into_iter().flatten() {
                match action.as_str() {
                    Some("Deny") if denied.is_none() => {
                        denied = Some((policy_name.clone(), binding_name.clone(), failure.clone()));
                    }
                    Some("Warn") => q.warn(vec![format!(
                        "Validation failed for ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}': {}",
                        failure.message
                    )]),
                    Some("Audit") => tracing::info!(
                        policy = %policy_name, binding = %binding_name, message = %failure.message,
                        "ValidatingAdmissionPolicy audit: validation failed"
                    ),
                    _ => {}
                }
            }
        }
    }
    match denied {
        Some((policy, binding, failure)) => Err(refusal(t, &name, &policy, &binding, &failure)),
        None => Ok(()),
    }
}

/// A failed validation (or an evaluation error under `failurePolicy: Fail`).
#[derive(Clone, Debug, PartialEq)]
struct Failure {
    /// The Status reason; `Invalid` unless the validation names another.
    reason: &'static str,
    message: String,
}

/// The refusal the API server answers: a Forbidden-worded message with the
/// validation's reason and code, and the message again as the one cause.
fn refusal(t: &Target, name: &str, policy: &str, binding: &str, failure: &Failure) -> ApiError {
    let message =
        format!("ValidatingAdmissionPolicy '{policy}' with binding '{binding}' denied request: {}", failure.message);
    let object = if name.is_empty() { "Unknown" } else { name };
    let code = match failure.reason {
        "Forbidden" => 403,
        "Unauthorized" => 401,
        "RequestEntityTooLarge" => 413,
        _ => 422,
    };
    let mut error =
        ApiError::new(code, failure.reason, format!("{} {object:?} is forbidden: {message}", t.rt.qualified()));
    error.details = Some(json!({
        "name": object, "group": t.rt.group, "kind": t.rt.plural, "causes": [{"message": message}],
    }));
    error
}

/// The values every expression of one request sees.
struct Request {
    object: CelValue,
    old_object: CelValue,
    request: CelValue,
    namespace_object: CelValue,
    authorizer: CelValue,
}

impl Request {
    fn new(t: &Target, write: &Write, name: &str, namespace_object: Option<&Value>, requester: &Requester) -> Self {
        let subresource = t.subresource.clone().unwrap_or_default();
        let kind = json!({"group": t.rt.group, "version": t.rt.version, "kind": t.rt.kind});
        let resource = json!({"group": t.rt.group, "version": t.rt.version, "resource": t.rt.plural});
        let options_kind = match write.operation {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
        };
        let mut options = write.options.cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
        options["kind"] = json!(options_kind);
        options["apiVersion"] = json!("meta.k8s.io/v1");
        let user = &requester.user;
        let request = json!({
            "uid": uuid::Uuid::new_v4().to_string(),
            "kind": kind, "resource": resource, "subResource": subresource,
            "requestKind": kind, "requestResource": resource, "requestSubResource": subresource,
            "name": name,
            "namespace": if t.rt.namespaced { t.storage_namespace() } else { String::new() },
            "operation": write.operation.as_str(),
            "userInfo": {"username": user.username, "uid": user.uid, "groups": user.groups, "extra": user.extra},
            "dryRun": write.dry_run,
            "options": options,
        });
        let request_resource = CheckAttributes {
            group: t.rt.group.clone(),
            resource: t.rt.plural.clone(),
            subresource: t.subresource.clone(),
            namespace: t.rt.namespaced.then(|| t.storage_namespace()),
            name: Some(name.to_string()).filter(|n| !n.is_empty()),
            ..CheckAttributes::default()
        };
        Request {
            object: write.object.map(cel_env::to_cel).unwrap_or(CelValue::Null),
            old_object: write.old_object.map(cel_env::to_cel).unwrap_or(CelValue::Null),
            request: cel_env::to_cel(&request),
            namespace_object: namespace_object.map(cel_env::to_cel).unwrap_or(CelValue::Null),
            authorizer: cel_env::authorizer_value(user.clone(), requester.authorizer.clone(), request_resource),
        }
    }

    fn scope(&self, variables: &BTreeMap<String, CelValue>, params: &CelValue) -> cel::Context<'static> {
        let mut scope = cel_env::base().new_inner_scope();
        scope.add_variable_from_value("object", self.object.clone());
        scope.add_variable_from_value("oldObject", self.old_object.clone());
        scope.add_variable_from_value("request", self.request.clone());
        scope.add_variable_from_value("params", params.clone());
        scope.add_variable_from_value("namespaceObject", self.namespace_object.clone());
        scope.add_variable_from_value("authorizer", self.authorizer.clone());
        scope.add_variable_from_value("variables", cel_env::map(variables.clone()));
        scope
    }
}

/// An error the failure policy decides: a failure under `Fail` (the
/// default), nothing under `Ignore`.
fn configuration_error(policy: &Value, message: String) -> Vec<Failure> {
    match policy.pointer("/spec/failurePolicy").and_then(Value::as_str) {
        Some("Ignore") => Vec::new(),
        _ => vec![Failure { reason: "Invalid", message }],
    }
}

/// Evaluates one policy for a request it matched, with one parameter (or
/// none): its failures, each already decided by the failure policy.
fn evaluate(policy: &Value, request: &Request, param: Option<&Value>) -> Vec<Failure> {
    let spec = policy.get("spec").cloned().unwrap_or(Value::Null);
    let on_error = |message: String| configuration_error(policy, message);
    let params = param.map(cel_env::to_cel).unwrap_or(CelValue::Null);
    let items = |field: &str| spec.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut variables = BTreeMap::new();

    // Match conditions: one false skips the policy; otherwise an error
    // decides by the failure policy.
    let mut condition_error = None;
    for condition in items("matchConditions") {
        let expression = text(&condition, "/expression");
        match run(&expression, &request.scope(&variables, &params)) {
            Ok(CelValue::Bool(false)) => return Vec::new(),
            Ok(CelValue::Bool(true)) => {}
            Ok(_) => {
                condition_error.get_or_insert_with(|| {
                    format!("matchCondition '{}' did not evaluate to a boolean", text(&condition, "/name"))
                });
            }
            Err(error) => {
                condition_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = condition_error {
        return on_error(error);
    }

    // Variables, each visible to the later ones. One that fails is left out,
    // and the error is reported by the expressions that use it.
    let mut variable_errors: BTreeMap<String, String> = BTreeMap::new();
    for variable in items("variables") {
        let name = text(&variable, "/name");
        match run(&text(&variable, "/expression"), &request.scope(&variables, &params)) {
            Ok(value) => {
                variables.insert(name, value);
            }
            Err(error) => {
                variable_errors.insert(name, error);
            }
        }
    }

    let scope = request.scope(&variables, &params);
    let mut failures = Vec::new();
    for validation in items("validations") {
        let expression = text(&validation, "/expression");
        let outcome = match run(&expression, &scope) {
            Ok(CelValue::Bool(passed)) => Ok(passed),
            Ok(_) => Err(format!("expression '{expression}' resulted in error: no such overload")),
            Err(error) => Err(used_variable_error(&expression, &variable_errors).unwrap_or(error)),
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => failures.push(Failure {
                reason: reason(validation.get("reason").and_then(Value::as_str)),
                message: message(&validation, &expression, &scope),
            }),
            Err(error) => failures.extend(on_error(error)),
        }
    }
    failures
}

/// Compiles and runs an expression; errors as the API server words them.
fn run(expression: &str, scope: &cel::Context<'_>) -> Result<CelValue, String> {
    let program = cel_env::compile(expression).map_err(|e| format!("compilation error: {e}"))?;
    cel_env::execute(&program, scope).map_err(|e| format!("expression '{expression}' resulted in error: {e}"))
}

/// The error of a failed variable an expression uses, as the API server
/// reports it (it computes variables as they are used).
fn used_variable_error(expression: &str, errors: &BTreeMap<String, String>) -> Option<String> {
    errors.iter().find(|(name, _)| mentions(expression, &format!("variables.{name}"))).map(|(_, e)| e.clone())
}

/// Whether `expression` contains `reference` as a whole name.
fn mentions(expression: &str, reference: &str) -> bool {
    expression.match_indices(reference).any(|(at, _)| {
        let after = expression[at + reference.len()..].chars().next();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// A failed validation's message: `messageExpression` when it gives a
/// usable string (one line, not blank), else `message`, else the
/// expression itself, as the API server chooses.
fn message(validation: &Value, expression: &str, scope: &cel::Context<'_>) -> String {
    let from_expression = validation
        .get("messageExpression")
        .and_then(Value::as_str)
        .and_then(|source| match run(source, scope) {
            Ok(CelValue::String(s)) => Some(s.trim().to_string()),
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(%error, "a messageExpression failed; using message");
                None
            }
        })
        .filter(|m| !m.is_empty() && !m.contains('\n') && m.len() <= 5 * 1024);
    from_expression
        .or_else(|| {
            validation
                .get("message")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("failed expression: {}", expression.trim()))
}

/// A validation's Status reason (the API server accepts only these four).
fn reason(given: Option<&str>) -> &'static str {
    match given {
        Some("Forbidden") => "Forbidden",
        Some("Unauthorized") => "Unauthorized",
        Some("RequestEntityTooLarge") => "RequestEntityTooLarge",
        _ => "Invalid",
    }
}

/// The versions the target's resource is served in.
fn served_versions(state: &State, t: &Target) -> Vec<String> {
    let all = state.registry.all().iter();
    all.filter(|rt| rt.group == t.rt.group && rt.plural == t.rt.plural).map(|rt| rt.version.clone()).collect()
}

fn text(value: &Value, pointer: &str) -> String {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn labels(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default()
}

/// The requester of a write nobody authenticated (one made inside the
/// devcluster): no name, no groups, allowed nothing.
fn nobody() -> Requester {
    struct DenyAll;
    impl PolicyAuthorizer for DenyAll {
        fn check(&self, _: &RequestUser, _: &CheckAttributes) -> CheckDecision {
            CheckDecision::default()
        }
    }
    Requester { user: RequestUser::default(), authorizer: Arc::new(DenyAll) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn target() -> Target {
        let registry = Registry::with_builtins();
        let rt = registry.find("", "v1", "configmaps").expect("configmaps").clone();
        Target { rt, namespace: Some("default".into()), name: Some("cm".into()), subresource: None }
    }

    fn evaluated(spec: Value) -> Vec<Failure> {
        let object = json!({"metadata": {"name": "cm", "namespace": "default"}, "data": {"a": "b"}});
        let write = Write::stored(&object, None, false);
        let request = Request::new(&target(), &write, "cm", None, &nobody());
        evaluate(&json!({"spec": spec}), &request, None)
    }

    #[test]
    fn an_expression_that_fails_is_a_failure_under_fail_and_nothing_under_ignore() {
        let spec =
            |policy: &str| json!({"failurePolicy": policy, "validations": [{"expression": "object.data.x == 'y'"}]});
        let failure = Failure {
            reason: "Invalid",
            message: "expression 'object.data.x == 'y'' resulted in error: no such key: x".into(),
        };
        assert_eq!(evaluated(spec("Fail")), vec![failure]);
        assert_eq!(evaluated(spec("Ignore")), vec![]);
        let uncompilable = evaluated(json!({"validations": [{"expression": "object.data.x =="}]}));
        assert!(uncompilable[0].message.starts_with("compilation error: compilation failed: ERROR: <input>:1:"));
    }

    #[test]
    fn variables_are_seen_by_later_variables_and_a_failed_one_fails_its_users_only() {
        let spec = json!({
            "variables": [
                {"name": "a", "expression": "object.data.a"},
                {"name": "ab", "expression": "variables.a + 'c'"},
                {"name": "broken", "expression": "object.data.missing"},
            ],
            "validations": [
                {"expression": "variables.ab == 'bc'"},
                {"expression": "variables.ab == 'nope'", "message": "  ab is not nope  ", "reason": "Forbidden"},
                {"expression": "variables.broken == 'x'"},
            ],
        });
        let failures = evaluated(spec);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert_eq!(failures[0], Failure { reason: "Forbidden", message: "ab is not nope".into() });
        assert_eq!(failures[1].message, "expression 'object.data.missing' resulted in error: no such key: missing");
    }

    #[test]
    fn a_message_expression_that_fails_or_is_blank_falls_back_to_message_then_the_expression() {
        let spec = |validation: Value| json!({"validations": [validation]});
        let bad = evaluated(spec(json!({"expression": "false", "messageExpression": "object.nope", "message": "m"})));
        assert_eq!(bad[0].message, "m");
        let blank = evaluated(spec(json!({"expression": "1 > 2", "messageExpression": "'  '"})));
        assert_eq!(blank[0].message, "failed expression: 1 > 2");
        let multiline =
            evaluated(spec(json!({"expression": "false", "messageExpression": "'a\\nb'", "message": "one line"})));
        assert_eq!(multiline[0].message, "one line");
    }

    #[test]
    fn a_false_match_condition_skips_the_policy_and_an_erroring_one_follows_the_failure_policy() {
        let spec = |condition: &str, policy: &str| {
            json!({"failurePolicy": policy, "matchConditions": [{"name": "c", "expression": condition}],
                   "validations": [{"expression": "false"}]})
        };
        assert_eq!(evaluated(spec("false", "Fail")), vec![]);
        assert_eq!(evaluated(spec("true", "Fail")).len(), 1);
        assert_eq!(
            evaluated(spec("object.nope", "Fail"))[0].message,
            "expression 'object.nope' resulted in error: no such key: nope"
        );
        assert_eq!(evaluated(spec("object.nope", "Ignore")), vec![]);
    }

    #[test]
    fn a_refusal_has_the_code_of_its_reason_and_the_message_as_its_cause() {
        for (reason, code) in
            [("Invalid", 422), ("Forbidden", 403), ("Unauthorized", 401), ("RequestEntityTooLarge", 413)]
        {
            let error = refusal(&target(), "cm", "p", "b", &Failure { reason, message: "no".into() });
            assert_eq!((error.code, error.reason), (code, reason));
            assert_eq!(
                error.message,
                "configmaps \"cm\" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b' denied request: no"
            );
            let details = error.details.expect("details");
            assert_eq!(details["kind"], "configmaps");
            assert_eq!(
                details["causes"][0]["message"],
                "ValidatingAdmissionPolicy 'p' with binding 'b' denied request: no"
            );
        }
    }
}
