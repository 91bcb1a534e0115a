//! ValidatingAdmissionPolicy (`admissionregistration.k8s.io/v1`): every
//! create, update and delete — dry runs included — is checked against the
//! stored policies through their bindings, as the API server's
//! `ValidatingAdmissionPolicy` admission plugin does, after the schema has
//! admitted the object and before it is stored.
//!
//! For each binding whose policy exists (in order of policy, then binding
//! name): the policy's `matchConstraints` and the binding's
//! `matchResources` must select the request ([`matching`]); the policy's
//! parameters are collected (`paramKind`/`paramRef`, [`params`]); then, once
//! per parameter, every `matchCondition` must hold (one false skips the
//! policy), the `variables` are computed in order and the `validations`
//! evaluated ([`evaluation`], in the CEL environment of [`cel_env`] and
//! [`cel_authorizer`]). A failed validation is acted on by the binding's
//! `validationActions`: `Deny` refuses with the API server's Status (code
//! from the validation's `reason`), `Warn` adds a `Warning` header, `Audit`
//! is logged. An expression that cannot be evaluated is a failure under
//! `failurePolicy: Fail` (the default) and ignored under `Ignore`.
//!
//! Policies and bindings are themselves validated when written (expressions
//! must compile and name only variables that exist, enums hold), as the API
//! server validates them ([`validation`]).
//!
//! Where it differs from a real API server:
//! - Variables are computed eagerly rather than when first used; one that
//!   fails makes only the expressions that use it fail, as there.
//! - `matchPolicy: Equivalent` lets a rule naming any served version of a
//!   resource match it, but `request.kind` and the object stay in the
//!   requested version (versions here share one stored shape).
//! - Expressions are not type-checked against the object's schema (only
//!   their names are), and runtime cost is not bounded; `auditAnnotations`
//!   are not evaluated; `Audit` failures are logged, not audit-annotated.
//! - Warnings of `Warn` bindings reach the client only when the request
//!   succeeds (the server adds them to successful answers).
//! - Defaults (`failurePolicy: Fail`, `matchPolicy`, empty selectors) are
//!   applied when evaluating, not written into the stored object.

pub mod authorizer;
pub mod cel_authorizer;
pub mod cel_env;
pub mod evaluation;
pub mod matching;
pub mod params;
pub mod validation;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::State;
use crate::error::ApiError;
use crate::request::{Query, Target};
pub use authorizer::{CheckAttributes, CheckDecision, PolicyAuthorizer, RequestUser, Requester, requester};
use evaluation::{Failure, Request, configuration_error, evaluate};
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
        let request = request.get_or_insert_with(|| {
            let options = write.options.cloned().unwrap_or_else(|| query_options(q, write.dry_run));
            Request::new(t, write, &name, namespace_object.as_ref(), &requester, options)
        });
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

/// A create's or update's options, from the query they came with.
fn query_options(q: &Query, dry_run: bool) -> Value {
    let mut options = serde_json::Map::new();
    for field in ["fieldManager", "fieldValidation"] {
        if let Some(value) = q.get(field) {
            options.insert(field.to_string(), json!(value));
        }
    }
    if dry_run {
        options.insert("dryRun".to_string(), json!(["All"]));
    }
    Value::Object(options)
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
