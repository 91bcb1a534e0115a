//! OpenAPI v3 value validation of a structural schema, as the API server
//! applies it to custom resources: types, `required`, `enum`, numeric
//! bounds, string length and `pattern`, list size and list types, map size,
//! and the value-only `allOf` / `anyOf` / `oneOf` / `not` a structural schema
//! may carry.

use std::collections::HashSet;

use regex::Regex;
use serde_json::{Map, Value};

use super::field_error::{ErrorType, FieldError, child, index, key, type_name};

/// Validates `value` at `path` against `schema`, appending every error.
pub fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(s) = schema.as_object() else {
        return;
    };
    if value.is_null() {
        if !flag(s, "nullable") && s.contains_key("type") {
            errors.push(FieldError::invalid(
                path,
                value,
                format!("{path} in body must be of type {}: \"null\"", str_of(s, "type")),
            ));
        }
        return;
    }
    if flag(s, "x-kubernetes-int-or-string") {
        if !(value.is_string() || is_integer(value)) {
            errors.push(FieldError::invalid(
                path,
                value,
                format!("{path} in body must be of type integer or string: \"{}\"", type_name(value)),
            ));
            return;
        }
    } else if let Some(expected) = s.get("type").and_then(Value::as_str)
        && !type_matches(expected, value)
    {
        errors.push(FieldError::invalid(
            path,
            value,
            format!("{path} in body must be of type {expected}: \"{}\"", type_name(value)),
        ));
        return;
    }

    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let supported =
            allowed.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect();
        errors.push(FieldError {
            field: path.to_string(),
            error_type: ErrorType::NotSupported { supported },
            bad_value: Some(value.clone()),
        });
    }

    match value {
        Value::Object(map) => validate_object(s, map, path, errors),
        Value::Array(items) => validate_array(s, items, path, errors),
        Value::String(text) => validate_string(s, text, value, path, errors),
        Value::Number(_) => validate_number(s, value, path, errors),
        _ => {}
    }

    validate_combinators(s, value, path, errors);
}

fn validate_object(s: &Map<String, Value>, map: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(required) = s.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                errors.push(FieldError::required(&child(path, name)));
            }
        }
    }
    let properties = s.get("properties").and_then(Value::as_object);
    let additional = s.get("additionalProperties").filter(|v| v.is_object());
    for (name, field_value) in map {
        if let Some(field_schema) = properties.and_then(|p| p.get(name)) {
            validate(field_schema, field_value, &child(path, name), errors);
        } else if let Some(additional) = additional {
            validate(additional, field_value, &key(path, name), errors);
        }
    }
    let count = map.len() as u64;
    if let Some(max) = uint(s, "maxProperties")
        && count > max
    {
        errors.push(FieldError {
            field: path.to_string(),
            error_type: ErrorType::TooMany { max, actual: count },
            bad_value: None,
        });
    }
    if let Some(min) = uint(s, "minProperties")
        && count < min
    {
        errors.push(FieldError::invalid(
            path,
            &Value::from(count),
            format!("{path} in body should have at least {min} properties"),
        ));
    }
}

fn validate_array(s: &Map<String, Value>, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    let count = items.len() as u64;
    if let Some(max) = uint(s, "maxItems")
        && count > max
    {
        errors.push(FieldError {
            field: path.to_string(),
            error_type: ErrorType::TooMany { max, actual: count },
            bad_value: None,
        });
    }
    if let Some(min) = uint(s, "minItems")
        && count < min
    {
        errors.push(FieldError::invalid(
            path,
            &Value::from(count),
            format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(item_schema) = s.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate(item_schema, item, &index(path, i), errors);
        }
    }
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    errors.push(FieldError {
                        field: index(path, i),
                        error_type: ErrorType::Duplicate,
                        bad_value: Some(item.clone()),
                    });
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let identity: Vec<Option<&Value>> = keys.iter().map(|k| item.get(*k)).collect();
                if !seen.insert(serde_json::to_string(&identity).unwrap_or_default()) {
                    let shown: Map<String, Value> =
                        keys.iter().filter_map(|k| item.get(*k).map(|v| (k.to_string(), v.clone()))).collect();
                    errors.push(FieldError {
                        field: index(path, i),
                        error_type: ErrorType::Duplicate,
                        bad_value: Some(Value::Object(shown)),
                    });
                }
            }
        }
        _ => {}
    }
}

fn validate_string(s: &Map<String, Value>, text: &str, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let chars = text.chars().count() as u64;
    if let Some(max) = uint(s, "maxLength")
        && chars > max
    {
        errors.push(FieldError {
            field: path.to_string(),
            error_type: ErrorType::TooLong { max },
            bad_value: Some(value.clone()),
        });
    }
    if let Some(min) = uint(s, "minLength")
        && chars < min
    {
        errors.push(FieldError::invalid(path, value, format!("{path} in body should be at least {min} chars long")));
    }
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
        match Regex::new(pattern) {
            Ok(re) if !re.is_match(text) => {
                errors.push(FieldError::invalid(path, value, format!("{path} in body should match '{pattern}'")))
            }
            Ok(_) => {}
            Err(_) => errors.push(FieldError::invalid(
                path,
                value,
                format!("the schema's pattern '{pattern}' for {path} does not compile"),
            )),
        }
    }
    if let Some(format) = s.get("format").and_then(Value::as_str)
        && let Some(problem) = check_format(format, text)
    {
        errors.push(FieldError::invalid(path, value, format!("{path} in body must be of type {format}: {problem}")));
    }
}

/// The few string formats idsync's schemas use; unknown formats pass, as
/// they do on the API server.
fn check_format(format: &str, text: &str) -> Option<String> {
    match format {
        "date-time" => text.parse::<k8s_openapi::jiff::Timestamp>().err().map(|_| format!("{text:?}")),
        _ => None,
    }
}

fn validate_number(s: &Map<String, Value>, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(n) = value.as_f64() else {
        return;
    };
    let exclusive_max = flag(s, "exclusiveMaximum");
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        if exclusive_max && n >= max {
            errors.push(FieldError::invalid(path, value, format!("{path} in body should be less than {}", num(max))));
        } else if n > max {
            errors.push(FieldError::invalid(
                path,
                value,
                format!("{path} in body should be less than or equal to {}", num(max)),
            ));
        }
    }
    let exclusive_min = flag(s, "exclusiveMinimum");
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        if exclusive_min && n <= min {
            errors.push(FieldError::invalid(
                path,
                value,
                format!("{path} in body should be greater than {}", num(min)),
            ));
        } else if n < min {
            errors.push(FieldError::invalid(
                path,
                value,
                format!("{path} in body should be greater than or equal to {}", num(min)),
            ));
        }
    }
    if let Some(multiple) = s.get("multipleOf").and_then(Value::as_f64)
        && multiple > 0.0
        && (n / multiple).fract() != 0.0
    {
        errors.push(FieldError::invalid(
            path,
            value,
            format!("{path} in body should be a multiple of {}", num(multiple)),
        ));
    }
}

fn validate_combinators(s: &Map<String, Value>, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let passes = |sub: &Value| {
        let mut sub_errors = Vec::new();
        validate(sub, value, path, &mut sub_errors);
        sub_errors.is_empty()
    };
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for sub in all {
            validate(sub, value, path, errors);
        }
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(passes)
    {
        errors.push(FieldError::invalid(
            path,
            value,
            format!("{path} in body must validate at least one schema (anyOf)"),
        ));
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let matching = one.iter().filter(|sub| passes(sub)).count();
        if matching != 1 {
            errors.push(FieldError::invalid(
                path,
                value,
                format!("{path} in body must validate one and only one schema (oneOf)"),
            ));
        }
    }
    if let Some(not) = s.get("not")
        && passes(not)
    {
        errors.push(FieldError::invalid(path, value, format!("{path} in body must not validate the schema (not)")));
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => is_integer(value),
        "number" => value.is_number(),
        _ => true,
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn flag(s: &Map<String, Value>, name: &str) -> bool {
    s.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn uint(s: &Map<String, Value>, name: &str) -> Option<u64> {
    s.get(name).and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
}

fn str_of<'a>(s: &'a Map<String, Value>, name: &str) -> &'a str {
    s.get(name).and_then(Value::as_str).unwrap_or("")
}

/// A bound as the API server prints it: whole numbers without a fraction.
fn num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { n.to_string() }
}
