//! What the API server checks on a Role, ClusterRole, RoleBinding or
//! ClusterRoleBinding before storing it: names are path segments (so
//! `system:aggregate-to-view` is a valid name), a binding refers to a role
//! of a kind it may and never changes that reference, and its subjects are
//! users, groups or service accounts.

use serde_json::Value;

use super::rbac::GROUP;
use crate::error::ApiError;
use crate::schema::{ErrorType, FieldError};

/// Checks an RBAC object of `kind` named `name`; `old` is the stored one on
/// an update.
pub fn validate(kind: &str, name: &str, object: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if let Some(problem) = path_segment_problem(name) {
        errors.push(FieldError::invalid("metadata.name", &Value::String(name.into()), problem));
    }
    if kind.ends_with("Binding") {
        binding_errors(kind, object, old, &mut errors);
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid(kind, GROUP, name, &errors)) }
}

/// `path.IsValidPathSegmentName`: RBAC names may hold `:`, unlike most.
fn path_segment_problem(name: &str) -> Option<String> {
    match name {
        "." | ".." => Some(format!("may not be '{name}'")),
        _ if name.contains('/') => Some("may not contain '/'".into()),
        _ if name.contains('%') => Some("may not contain '%'".into()),
        _ => None,
    }
}

fn not_supported(field: &str, value: &str, supported: &[&str]) -> FieldError {
    FieldError {
        field: field.into(),
        error_type: ErrorType::NotSupported { supported: supported.iter().map(|s| s.to_string()).collect() },
        bad_value: Some(Value::String(value.into())),
    }
}

fn binding_errors(kind: &str, object: &Value, old: Option<&Value>, errors: &mut Vec<FieldError>) {
    let text = |v: &Value, pointer: &str| v.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string();
    let cluster = kind == "ClusterRoleBinding";
    let role_kinds: &[&str] = if cluster { &["ClusterRole"] } else { &["Role", "ClusterRole"] };
    let role_kind = text(object, "/roleRef/kind");
    if !role_kinds.contains(&role_kind.as_str()) {
        errors.push(not_supported("roleRef.kind", &role_kind, role_kinds));
    }
    if text(object, "/roleRef/apiGroup") != GROUP {
        errors.push(not_supported("roleRef.apiGroup", &text(object, "/roleRef/apiGroup"), &[GROUP]));
    }
    if text(object, "/roleRef/name").is_empty() {
        errors.push(FieldError::required("roleRef.name"));
    }
    if let Some(old) = old
        && old.get("roleRef") != object.get("roleRef")
    {
        errors.push(FieldError::invalid(
            "roleRef",
            object.get("roleRef").unwrap_or(&Value::Null),
            "cannot change roleRef",
        ));
    }
    let subjects = object.get("subjects").and_then(Value::as_array).cloned().unwrap_or_default();
    for (i, subject) in subjects.iter().enumerate() {
        let field = |f: &str| format!("subjects[{i}].{f}");
        if text(subject, "/name").is_empty() {
            errors.push(FieldError::required(&field("name")));
        }
        match text(subject, "/kind").as_str() {
            "User" | "Group" => {}
            // A RoleBinding's service account defaults to its namespace.
            "ServiceAccount" if cluster && text(subject, "/namespace").is_empty() => {
                errors.push(FieldError::required(&field("namespace")));
            }
            "ServiceAccount" => {}
            other => errors.push(not_supported(&field("kind"), other, &["ServiceAccount", "User", "Group"])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(role_kind: &str, subject: Value) -> Value {
        json!({"roleRef": {"apiGroup": GROUP, "kind": role_kind, "name": "view"}, "subjects": [subject]})
    }

    #[test]
    fn rbac_names_are_path_segments() {
        assert!(validate("ClusterRole", "system:aggregate-to-view", &json!({}), None).is_ok());
        let refused = validate("ClusterRole", "a%b", &json!({}), None).expect_err("refused");
        assert_eq!(
            refused.message,
            "ClusterRole.rbac.authorization.k8s.io \"a%b\" is invalid: metadata.name: Invalid value: \"a%b\": may not contain '%'"
        );
    }

    #[test]
    fn bindings_refer_to_a_role_they_may_and_never_change_it() {
        let user = json!({"kind": "User", "name": "ann"});
        assert!(validate("RoleBinding", "b", &binding("Role", user.clone()), None).is_ok());
        assert!(validate("ClusterRoleBinding", "b", &binding("Role", user.clone()), None).is_err());
        let sa = json!({"kind": "ServiceAccount", "name": "bot"});
        assert!(validate("RoleBinding", "b", &binding("ClusterRole", sa.clone()), None).is_ok());
        assert!(validate("ClusterRoleBinding", "b", &binding("ClusterRole", sa), None).is_err(), "namespace needed");
        let old = binding("ClusterRole", user.clone());
        let mut changed = old.clone();
        changed["roleRef"]["name"] = json!("edit");
        let refused = validate("RoleBinding", "b", &changed, Some(&old)).expect_err("immutable");
        assert!(refused.message.ends_with("cannot change roleRef"), "{}", refused.message);
        assert!(validate("RoleBinding", "b", &old, Some(&old)).is_ok());
    }
}
