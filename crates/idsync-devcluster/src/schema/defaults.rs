//! Pruning and defaulting, in the API server's order: unknown fields are
//! dropped (and reported, for strict field validation), `null`s of fields
//! that are not nullable are dropped, then schema `default`s fill what is
//! missing, recursively, including inside inserted defaults.

use serde_json::{Map, Value};

use super::field_error::{child, index, key};

/// Prunes unknown fields from `value` in place, returning their paths.
/// `root` is true for the object root and for embedded resources, whose
/// `apiVersion`, `kind` and `metadata` are kept whatever the schema says.
pub fn prune(schema: &Value, value: &mut Value, path: &str, root: bool, pruned: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        return;
    };
    match value {
        Value::Object(map) => {
            let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
            let embedded = root || flag(s, "x-kubernetes-embedded-resource");
            let properties = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            let names: Vec<String> = map.keys().cloned().collect();
            for name in names {
                if embedded && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(field_schema) = properties.and_then(|p| p.get(&name)) {
                    if map.get(&name).is_some_and(Value::is_null) && !flag_of(field_schema, "nullable") {
                        map.remove(&name);
                        continue;
                    }
                    if let Some(field_value) = map.get_mut(&name) {
                        prune(field_schema, field_value, &child(path, &name), false, pruned);
                    }
                } else if let Some(additional) = additional.filter(|a| a.is_object()) {
                    if let Some(field_value) = map.get_mut(&name) {
                        prune(additional, field_value, &key(path, &name), false, pruned);
                    }
                } else if !(preserve || additional.and_then(Value::as_bool) == Some(true)) {
                    map.remove(&name);
                    pruned.push(child(path, &name));
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &index(path, i), false, pruned);
                }
            }
        }
        _ => {}
    }
}

/// Applies schema defaults to `value` in place.
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    let Some(s) = schema.as_object() else {
        return;
    };
    match value {
        Value::Object(map) => {
            if let Some(properties) = s.get("properties").and_then(Value::as_object) {
                for (name, field_schema) in properties {
                    if !map.contains_key(name)
                        && let Some(default) = field_schema.get("default")
                    {
                        map.insert(name.clone(), default.clone());
                    }
                    if let Some(field_value) = map.get_mut(name) {
                        apply_defaults(field_schema, field_value);
                    }
                }
            }
            if let Some(additional) = s.get("additionalProperties").filter(|a| a.is_object()) {
                let known: Option<&Map<String, Value>> = s.get("properties").and_then(Value::as_object);
                for (name, field_value) in map.iter_mut() {
                    if known.is_none_or(|k| !k.contains_key(name)) {
                        apply_defaults(additional, field_value);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.get("items") {
                for item in items {
                    apply_defaults(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

fn flag(s: &Map<String, Value>, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn flag_of(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}
