//! What the API server checks and normalizes in every object's metadata and
//! body, whatever its kind: the type in the body against the URL, label and
//! annotation syntax and size, ConfigMap/Secret size, and `omitempty` of
//! empty metadata maps and lists (so `kubectl diff` of an unchanged object
//! shows nothing). Messages are the API server's.

use serde_json::Value;

use super::error::ApiError;
use super::resources::ResourceType;
use crate::schema::{ErrorType, FieldError};

/// The largest request body the API server reads (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Annotations of one object, keys and values together.
const MAX_ANNOTATION_BYTES: usize = 256 * 1024;
/// The data of one ConfigMap or Secret.
const MAX_DATA_BYTES: usize = 1024 * 1024;

const NAME_MESSAGE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and \
     end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is \
     '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const VALUE_MESSAGE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' \
     or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', \
     regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// A create or update must carry the type its URL names (or none): a
/// ConfigMap posted to `/connections` is refused, not stored as a
/// Connection.
pub fn check_type(body: &Value, rt: &ResourceType) -> Result<(), ApiError> {
    if rt.is_event() {
        return Ok(());
    }
    if let Some(version) = body.get("apiVersion").and_then(Value::as_str)
        && version != rt.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({version}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    Ok(())
}

/// Label and annotation syntax and sizes, and the data size of ConfigMaps
/// and Secrets.
pub fn validate(object: &Value, rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if let Some(labels) = object.pointer("/metadata/labels").and_then(Value::as_object) {
        for (key, value) in labels {
            key_problems("metadata.labels", key, &mut errors);
            let value = value.as_str().unwrap_or_default();
            let problem = if value.len() > 63 {
                Some("must be no more than 63 characters")
            } else if !value.is_empty() && !name_part_ok(value) {
                Some(VALUE_MESSAGE)
            } else {
                None
            };
            if let Some(problem) = problem {
                errors.push(FieldError::invalid("metadata.labels", &Value::String(value.to_string()), problem));
            }
        }
    }
    if let Some(annotations) = object.pointer("/metadata/annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (key, value) in annotations {
            key_problems("metadata.annotations", key, &mut errors);
            total += key.len() + value.as_str().map_or(0, str::len);
        }
        if total > MAX_ANNOTATION_BYTES {
            errors.push(too_long("metadata.annotations", MAX_ANNOTATION_BYTES));
        }
    }
    if matches!(rt.kind.as_str(), "ConfigMap" | "Secret") && rt.group.is_empty() {
        let size: usize = ["data", "binaryData", "stringData"]
            .iter()
            .filter_map(|field| object.get(*field).and_then(Value::as_object))
            .flat_map(|map| map.iter())
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        // Secret data is stored base64-encoded; the limit is on the bytes.
        let size = if rt.kind == "Secret" { size * 3 / 4 } else { size };
        if size > MAX_DATA_BYTES {
            errors.push(too_long("data", MAX_DATA_BYTES));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid(&rt.kind, &rt.group, name, &errors)) }
}

fn too_long(field: &str, max: usize) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: ErrorType::Invalid { detail: format!("Too long: must have at most {max} bytes") },
        bad_value: None,
    }
}

/// A qualified key: an optional DNS-subdomain prefix and `/`, then a name
/// part of at most 63 characters.
fn key_problems(field: &str, key: &str, errors: &mut Vec<FieldError>) {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let bad = |detail: String| FieldError::invalid(field, &Value::String(key.to_string()), detail);
    if let Some(prefix) = prefix
        && let Some(problem) = crate::schema::dns_subdomain_problem(prefix)
    {
        errors.push(bad(format!("prefix part {problem}")));
    }
    if name.is_empty() {
        errors.push(bad("name part must be non-empty".to_string()));
    } else if name.len() > 63 {
        errors.push(bad("name part must be no more than 63 characters".to_string()));
    } else if !name_part_ok(name) {
        errors.push(bad(NAME_MESSAGE.to_string()));
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn name_part_ok(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// Drops empty maps and lists from metadata, as the API server's
/// `omitempty` does when it stores an object.
pub fn drop_empty(object: &mut Value) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    for field in ["labels", "annotations", "finalizers", "ownerReferences", "managedFields"] {
        let empty = match meta.get(field) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            meta.remove(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config_map() -> ResourceType {
        crate::resources::Registry::with_builtins().find("", "v1", "configmaps").expect("configmaps").clone()
    }

    #[test]
    fn labels_and_annotations_follow_the_api_servers_syntax() {
        let rt = config_map();
        let ok = json!({"metadata": {"labels": {"idsync.dev/credentials": "true", "app": ""},
                                     "annotations": {"example.com/note": "any text at all"}}});
        assert!(validate(&ok, &rt, "m").is_ok());
        let bad_value = json!({"metadata": {"labels": {"team": "people ops"}}});
        let error = validate(&bad_value, &rt, "m").expect_err("a space");
        assert!(
            error.message.contains("metadata.labels: Invalid value: \"people ops\": a valid label"),
            "{}",
            error.message
        );
        let long_key = json!({"metadata": {"labels": {"x".repeat(64): "v"}}});
        let error = validate(&long_key, &rt, "m").expect_err("too long");
        assert!(error.message.contains("name part must be no more than 63 characters"), "{}", error.message);
        let bad_prefix = json!({"metadata": {"annotations": {"Example.com/x": "v"}}});
        assert!(validate(&bad_prefix, &rt, "m").expect_err("uppercase prefix").message.contains("prefix part"));
        let big = json!({"metadata": {"annotations": {"a": "x".repeat(MAX_ANNOTATION_BYTES)}}});
        assert!(validate(&big, &rt, "m").expect_err("too big").message.contains("must have at most 262144 bytes"));
    }

    #[test]
    fn a_config_map_holds_at_most_one_mebibyte() {
        let rt = config_map();
        let big = json!({"metadata": {}, "data": {"people.csv": "x".repeat(MAX_DATA_BYTES + 1)}});
        let error = validate(&big, &rt, "export").expect_err("too big");
        assert_eq!(error.code, 422);
        assert!(error.message.contains("must have at most 1048576 bytes"), "{}", error.message);
    }

    #[test]
    fn a_body_of_another_type_is_refused() {
        let rt = config_map();
        assert!(check_type(&json!({"apiVersion": "v1", "kind": "ConfigMap"}), &rt).is_ok());
        assert!(check_type(&json!({}), &rt).is_ok(), "type meta may be left out");
        let error = check_type(&json!({"apiVersion": "idsync.dev/v1alpha1", "kind": "Connection"}), &rt)
            .expect_err("another type");
        assert_eq!(error.code, 400);
        assert!(error.message.contains("(idsync.dev/v1alpha1) does not match the expected API version (v1)"));
    }

    #[test]
    fn empty_metadata_maps_and_lists_are_not_stored() {
        let mut object = json!({"metadata": {"name": "x", "annotations": {}, "labels": {"a": "b"}, "finalizers": []}});
        drop_empty(&mut object);
        assert_eq!(object, json!({"metadata": {"name": "x", "labels": {"a": "b"}}}));
    }
}
