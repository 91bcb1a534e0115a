//! Evaluating one policy for one request: its match conditions, its
//! variables in order, its validations and their messages, with the
//! failure policy deciding what an expression that cannot run means — as
//! the API server's policy validator does, in its words.

use std::collections::BTreeMap;

use kube_cel::cel::{self, Value as CelValue};
use serde_json::{Value, json};

use super::authorizer::{CheckAttributes, Requester};
use super::matching::Operation;
use super::{Write, cel_authorizer, cel_env, text};
use crate::request::Target;

/// A failed validation (or an evaluation error under `failurePolicy: Fail`).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// The Status reason; `Invalid` unless the validation names another.
    pub reason: &'static str,
    pub message: String,
}

/// The values every expression of one request sees.
pub struct Request {
    object: CelValue,
    old_object: CelValue,
    request: CelValue,
    namespace_object: CelValue,
    authorizer: CelValue,
}

impl Request {
    /// `options` are the write's `*Options` as the client sent them (for a
    /// create or update, from its query).
    pub fn new(
        t: &Target,
        write: &Write,
        name: &str,
        namespace_object: Option<&Value>,
        requester: &Requester,
        options: Value,
    ) -> Self {
        let subresource = t.subresource.clone().unwrap_or_default();
        let kind = json!({"group": t.rt.group, "version": t.rt.version, "kind": t.rt.kind});
        let resource = json!({"group": t.rt.group, "version": t.rt.version, "resource": t.rt.plural});
        let options_kind = match write.operation {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
        };
        let mut options = if options.is_object() { options } else { json!({}) };
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
            authorizer: cel_authorizer::authorizer_value(user.clone(), requester.authorizer.clone(), request_resource),
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
pub fn configuration_error(policy: &Value, message: String) -> Vec<Failure> {
    match policy.pointer("/spec/failurePolicy").and_then(Value::as_str) {
        Some("Ignore") => Vec::new(),
        _ => vec![Failure { reason: "Invalid", message }],
    }
}

/// Evaluates one policy for a request it matched, with one parameter (or
/// none): its failures, each already decided by the failure policy.
pub fn evaluate(policy: &Value, request: &Request, param: Option<&Value>) -> Vec<Failure> {
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

#[cfg(test)]
mod tests {
    use super::super::nobody;
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
        let request = Request::new(&target(), &write, "cm", None, &nobody(), json!({}));
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
}
