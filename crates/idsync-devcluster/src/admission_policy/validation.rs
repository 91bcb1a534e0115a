//! Validation of the policy kinds themselves when they are written, as
//! the API server validates them: enums hold, what is required is there,
//! and every CEL expression compiles (a policy with a syntax error is
//! refused, never stored).

use serde_json::Value;

use super::cel_env;
use crate::error::ApiError;
use crate::schema::{ErrorType, FieldError};

const GROUP: &str = super::GROUP;

pub fn validate(kind: &str, object: &Value) -> Result<(), ApiError> {
    let errors = match kind {
        "ValidatingAdmissionPolicy" => policy(object),
        "ValidatingAdmissionPolicyBinding" => binding(object),
        _ => Vec::new(),
    };
    if errors.is_empty() {
        return Ok(());
    }
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    Err(ApiError::invalid(kind, GROUP, name, &errors))
}

fn not_supported(field: &str, value: &str, supported: &[&str]) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: ErrorType::NotSupported { supported: supported.iter().map(|s| s.to_string()).collect() },
        bad_value: Some(Value::String(value.to_string())),
    }
}

fn items<'a>(value: &'a Value, field: &str) -> Vec<&'a Value> {
    value.get(field).and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

/// An expression at `field` that must be there and compile, reading only
/// the `declared` variables.
fn expression(owner: &Value, key: &str, field: &str, declared: &[String], errors: &mut Vec<FieldError>) {
    match owner.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty()) {
        None => errors.push(FieldError::required(field)),
        Some(source) => compiles(source, field, declared, errors),
    }
}

fn compiles(source: &str, field: &str, declared: &[String], errors: &mut Vec<FieldError>) {
    let checked = cel_env::compile(source).and_then(|program| cel_env::check_names(&program, source, declared));
    if let Err(problem) = checked {
        errors.push(FieldError::invalid(field, &Value::String(source.to_string()), problem));
    }
}

fn policy(object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(policy) = spec.get("failurePolicy").and_then(Value::as_str)
        && !["Fail", "Ignore"].contains(&policy)
    {
        errors.push(not_supported("spec.failurePolicy", policy, &["Fail", "Ignore"]));
    }
    match spec.get("matchConstraints") {
        None | Some(Value::Null) => errors.push(FieldError::required("spec.matchConstraints")),
        Some(constraints) => {
            if items(constraints, "resourceRules").is_empty() {
                errors.push(FieldError::required("spec.matchConstraints.resourceRules"));
            }
            rules(constraints, "spec.matchConstraints", &mut errors);
        }
    }
    // Each variable may read the ones before it; validations read them all;
    // match conditions run before any is computed.
    let mut declared: Vec<String> = Vec::new();
    for (i, variable) in items(&spec, "variables").iter().enumerate() {
        let at = format!("spec.variables[{i}]");
        expression(variable, "expression", &format!("{at}.expression"), &declared, &mut errors);
        match variable.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            None => errors.push(FieldError::required(&format!("{at}.name"))),
            Some(name) if !is_identifier(name) => errors.push(FieldError::invalid(
                &format!("{at}.name"),
                &Value::String(name.to_string()),
                "name is not a valid CEL identifier",
            )),
            Some(name) => declared.push(name.to_string()),
        }
    }
    let validations = items(&spec, "validations");
    if validations.is_empty() && items(&spec, "auditAnnotations").is_empty() {
        errors.push(FieldError::required("spec.validations"));
    }
    for (i, validation) in validations.iter().enumerate() {
        let at = format!("spec.validations[{i}]");
        expression(validation, "expression", &format!("{at}.expression"), &declared, &mut errors);
        if let Some(source) = validation.get("messageExpression").and_then(Value::as_str) {
            compiles(source, &format!("{at}.messageExpression"), &declared, &mut errors);
        }
        if let Some(reason) = validation.get("reason").and_then(Value::as_str)
            && !["Unauthorized", "Forbidden", "Invalid", "RequestEntityTooLarge"].contains(&reason)
        {
            let supported = ["Forbidden", "Invalid", "RequestEntityTooLarge", "Unauthorized"];
            errors.push(not_supported(&format!("{at}.reason"), reason, &supported));
        }
    }
    for (i, condition) in items(&spec, "matchConditions").iter().enumerate() {
        let at = format!("spec.matchConditions[{i}]");
        if condition.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            errors.push(FieldError::required(&format!("{at}.name")));
        }
        expression(condition, "expression", &format!("{at}.expression"), &[], &mut errors);
    }
    errors
}

/// The operations of every rule of a match (`resourceRules` and
/// `excludeResourceRules`).
fn rules(constraints: &Value, at: &str, errors: &mut Vec<FieldError>) {
    for field in ["resourceRules", "excludeResourceRules"] {
        for (i, rule) in items(constraints, field).iter().enumerate() {
            for (j, operation) in items(rule, "operations").iter().enumerate() {
                let operation = operation.as_str().unwrap_or_default();
                if !["*", "CREATE", "UPDATE", "DELETE", "CONNECT"].contains(&operation) {
                    let supported = ["*", "CONNECT", "CREATE", "DELETE", "UPDATE"];
                    errors.push(not_supported(&format!("{at}.{field}[{i}].operations[{j}]"), operation, &supported));
                }
            }
        }
    }
}

fn binding(object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    if spec.get("policyName").and_then(Value::as_str).is_none_or(str::is_empty) {
        errors.push(FieldError::required("spec.policyName"));
    }
    let actions: Vec<&str> = items(&spec, "validationActions").iter().filter_map(|a| a.as_str()).collect();
    if actions.is_empty() {
        errors.push(FieldError::required("spec.validationActions"));
    }
    for (i, action) in actions.iter().enumerate() {
        let at = format!("spec.validationActions[{i}]");
        if !["Deny", "Warn", "Audit"].contains(action) {
            errors.push(not_supported(&at, action, &["Audit", "Deny", "Warn"]));
        } else if actions[..i].contains(action) {
            errors.push(FieldError {
                field: at,
                error_type: ErrorType::Duplicate,
                bad_value: Some(Value::String(action.to_string())),
            });
        }
    }
    if actions.contains(&"Deny") && actions.contains(&"Warn") {
        errors.push(FieldError::invalid(
            "spec.validationActions",
            &Value::Array(actions.iter().map(|a| Value::String(a.to_string())).collect()),
            "must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)",
        ));
    }
    if let Some(resources) = spec.get("matchResources") {
        rules(resources, "spec.matchResources", &mut errors);
    }
    errors
}

/// A CEL identifier: a letter or `_`, then letters, digits or `_`.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy_with(spec: Value) -> Value {
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
               "metadata": {"name": "p"}, "spec": spec})
    }

    fn rules() -> Value {
        json!({"resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["CREATE"], "resources": ["*"]}]})
    }

    #[test]
    fn a_policy_whose_expression_does_not_compile_is_refused_with_the_compiler_s_words() {
        let bad =
            policy_with(json!({"matchConstraints": rules(), "validations": [{"expression": "object.spec.x =="}]}));
        let error = validate("ValidatingAdmissionPolicy", &bad).expect_err("refused");
        assert_eq!(error.code, 422);
        assert!(
            error.message.starts_with(
                "ValidatingAdmissionPolicy.admissionregistration.k8s.io \"p\" is invalid: spec.validations[0].expression: Invalid value: \"object.spec.x ==\": compilation failed: ERROR: <input>:1:"
            ),
            "{}",
            error.message
        );
        let good = policy_with(json!({"matchConstraints": rules(), "validations": [{"expression": "true"}]}));
        assert_eq!(validate("ValidatingAdmissionPolicy", &good), Ok(()));
    }

    #[test]
    fn expressions_may_read_only_variables_declared_before_them() {
        let spec = |validation: &str| {
            policy_with(json!({"matchConstraints": rules(),
                "variables": [{"name": "a", "expression": "object.x"}, {"name": "b", "expression": "variables.a"}],
                "validations": [{"expression": validation}]}))
        };
        assert_eq!(validate("ValidatingAdmissionPolicy", &spec("variables.a == variables.b")), Ok(()));
        let typo = validate("ValidatingAdmissionPolicy", &spec("variables.c")).expect_err("undeclared");
        assert!(typo.message.contains("spec.validations[0].expression: Invalid value: \"variables.c\": compilation failed: ERROR: <input>:1:1: undefined field 'c'"), "{}", typo.message);
        let forward = policy_with(json!({"matchConstraints": rules(),
            "variables": [{"name": "a", "expression": "variables.b"}, {"name": "b", "expression": "1"}],
            "validations": [{"expression": "true"}]}));
        let error = validate("ValidatingAdmissionPolicy", &forward).expect_err("a later variable");
        assert!(error.message.contains("spec.variables[0].expression"), "{}", error.message);
    }

    #[test]
    fn a_policy_needs_resource_rules_and_a_validation_and_known_enums() {
        let error = validate("ValidatingAdmissionPolicy", &policy_with(json!({"failurePolicy": "Maybe"})))
            .expect_err("refused");
        assert!(error.message.contains(r#"spec.failurePolicy: Unsupported value: "Maybe""#), "{}", error.message);
        assert!(error.message.contains("spec.matchConstraints: Required value"), "{}", error.message);
        assert!(error.message.contains("spec.validations: Required value"), "{}", error.message);
    }

    #[test]
    fn a_binding_needs_a_policy_and_actions_but_not_both_deny_and_warn() {
        let binding =
            |spec: Value| json!({"kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": "b"}, "spec": spec});
        assert_eq!(
            validate(
                "ValidatingAdmissionPolicyBinding",
                &binding(json!({"policyName": "p", "validationActions": ["Deny", "Audit"]}))
            ),
            Ok(())
        );
        let error =
            validate("ValidatingAdmissionPolicyBinding", &binding(json!({"validationActions": ["Deny", "Warn"]})))
                .expect_err("refused");
        assert!(error.message.contains("spec.policyName: Required value"), "{}", error.message);
        assert!(error.message.contains("must not contain both Deny and Warn"), "{}", error.message);
    }
}
