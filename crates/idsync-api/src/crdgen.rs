//! CRD generation: the CRDs are derived from the Rust types and never edited
//! by hand; `idsync crds` prints them and `crds/` holds the committed copy.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;
use serde_json::{Map, Value, json};

#[cfg(test)]
use super::common::MAX_INT64;
use super::{Connection, IdentityProfile, NotificationPolicy, NotificationProvider, ResyncRequest};

/// Appends an `x-kubernetes-validations` CEL rule to a schema. `field_path`
/// (relative, e.g. `.confirmDeletes`) makes the API server's error name that
/// field instead of the object carrying the rule.
pub(crate) fn add_rule(schema: &mut schemars::Schema, rule: &str, message: &str, field_path: Option<&str>) {
    let mut entry = Map::new();
    entry.insert("rule".into(), Value::String(rule.into()));
    entry.insert("message".into(), Value::String(message.into()));
    if let Some(path) = field_path {
        entry.insert("fieldPath".into(), Value::String(path.into()));
    }
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let rules = object.entry("x-kubernetes-validations").or_insert_with(|| json!([]));
    if let Value::Array(rules) = rules {
        rules.push(Value::Object(entry));
    }
}

/// Every CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        Connection::crd(),
        IdentityProfile::crd(),
        NotificationPolicy::crd(),
        NotificationProvider::crd(),
        ResyncRequest::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
                visit_mut(schema, &mut kubernetes_integer_format);
            }
        }
    }
    crds
}

/// schemars names Rust's unsigned integers `uint32` and `uint64`, formats
/// Kubernetes does not know; its integers are `int32` and `int64`. Every
/// unsigned field has a maximum, so an `int32` is chosen only when that
/// maximum fits one.
fn kubernetes_integer_format(schema: &mut JSONSchemaProps) {
    if schema.type_.as_deref() != Some("integer") {
        return;
    }
    let fits_int32 = schema.maximum.is_some_and(|max| max <= f64::from(i32::MAX));
    let format = match schema.format.as_deref() {
        Some("uint8" | "uint16" | "uint32") if fits_int32 => "int32",
        Some("uint8" | "uint16" | "uint32" | "uint64" | "uint") => "int64",
        _ => return,
    };
    schema.format = Some(format.to_string());
}

/// Calls `f` on `schema` and every schema nested in it.
fn visit_mut(schema: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(schema);
    for nested in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        visit_mut(nested, f);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => visit_mut(item, f),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(|i| visit_mut(i, f)),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        visit_mut(values, f);
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        list.iter_mut().flatten().for_each(|s| visit_mut(s, f));
    }
    if let Some(not) = &mut schema.not {
        visit_mut(not, f);
    }
}

/// The file name under `crds/` of a CRD.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"))
}

/// A CRD as the YAML document committed under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, yaml_serde::Error> {
    let mut value = serde_json::to_value(crd).map_err(<yaml_serde::Error as serde::ser::Error>::custom)?;
    whole_bounds(&mut value);
    yaml_serde::to_string(&value)
}

/// Writes whole-number `minimum`/`maximum` bounds as integers. The API
/// types hold them as float64, which YAML would print as
/// `9.223372036854776e18`: a float to Go's YAML, but a string to YAML 1.1
/// readers such as PyYAML (kubernetes-validate, Ansible), which then refuse
/// the CRD. The integer is the same float64 to the API server.
fn whole_bounds(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let whole = match child.as_f64() {
                    Some(n) if (key == "maximum" || key == "minimum") && n.fract() == 0.0 && !child.is_i64() => {
                        // `as` saturates: 2^63 (i64::MAX rounded) becomes i64::MAX.
                        Some(n as i64)
                    }
                    _ => None,
                };
                match whole {
                    Some(n) => *child = serde_json::Value::from(n),
                    None => whole_bounds(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_bounds),
        _ => {}
    }
}

/// All CRDs as one multi-document YAML stream, as `idsync crds` prints it
/// (`idsync crds | kubectl apply -f -`).
pub fn all_yaml() -> Result<String, yaml_serde::Error> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every schema of `schema`, with its path (`.spec.pageSize`, `[]` for
    /// list items, `{}` for map values).
    fn each(schema: &JSONSchemaProps, path: String, out: &mut Vec<(String, JSONSchemaProps)>) {
        out.push((path.clone(), schema.clone()));
        for (name, nested) in schema.properties.iter().flatten() {
            each(nested, format!("{path}.{name}"), out);
        }
        match &schema.items {
            Some(JSONSchemaPropsOrArray::Schema(item)) => each(item, format!("{path}[]"), out),
            Some(JSONSchemaPropsOrArray::Schemas(items)) => {
                items.iter().for_each(|i| each(i, format!("{path}[]"), out));
            }
            None => {}
        }
        if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
            each(values, format!("{path}{{}}"), out);
        }
        for list in [&schema.all_of, &schema.any_of, &schema.one_of] {
            list.iter().flatten().for_each(|s| each(s, format!("{path}|"), out));
        }
    }

    fn numbers() -> Vec<(String, JSONSchemaProps)> {
        let mut out = Vec::new();
        for crd in all() {
            for version in &crd.spec.versions {
                let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("a schema");
                each(schema, crd.spec.names.kind.clone(), &mut out);
            }
        }
        out.retain(|(_, s)| matches!(s.type_.as_deref(), Some("integer" | "number")));
        out
    }

    /// A number without a maximum lets a manifest put a value into the
    /// operator that its arithmetic cannot take (a TTL of 9e18 seconds
    /// overflowed a timestamp and stopped every controller). Every new
    /// field must choose its bounds.
    #[test]
    fn every_number_in_every_crd_has_a_minimum_and_a_maximum() {
        let numbers = numbers();
        assert!(numbers.len() > 30, "the walk found only {} numbers", numbers.len());
        let unbounded: Vec<&str> = numbers
            .iter()
            .filter(|(_, s)| s.maximum.is_none() || s.minimum.is_none())
            .map(|(path, _)| path.as_str())
            .collect();
        assert!(unbounded.is_empty(), "numbers without a minimum and a maximum: {unbounded:?}");
    }

    #[test]
    fn every_integer_is_an_int32_or_int64_that_holds_its_bounds() {
        for (path, schema) in numbers().iter().filter(|(_, s)| s.type_.as_deref() == Some("integer")) {
            let (lowest, highest) = match schema.format.as_deref() {
                Some("int32") => (f64::from(i32::MIN), f64::from(i32::MAX)),
                Some("int64") => (i64::MIN as f64, i64::MAX as f64),
                other => panic!("{path} has format {other:?}, not int32 or int64"),
            };
            let (min, max) = (schema.minimum.unwrap_or(lowest), schema.maximum.unwrap_or(highest));
            assert!(lowest <= min && max <= highest, "{path}: {min}..{max} does not fit {:?}", schema.format);
        }
    }

    #[test]
    fn user_set_numbers_have_the_documented_maxima() {
        let numbers = numbers();
        let max = |path: &str| {
            numbers
                .iter()
                .find(|(p, _)| p == path)
                .unwrap_or_else(|| panic!("no number at {path}"))
                .1
                .maximum
                .unwrap_or_else(|| panic!("{path} has no maximum"))
        };
        assert_eq!(max("ResyncRequest.spec.ttlSecondsAfterFinished"), 31_536_000.0);
        assert_eq!(max("Connection.spec.importSafeguard.maxDeleteCount"), 10_000_000.0);
        assert_eq!(max("Connection.spec.importSafeguard.maxDeletePercent"), 100.0);
        assert_eq!(max("Connection.spec.pageSize"), 10_000.0);
        assert_eq!(max("Connection.spec.requestTimeoutSeconds"), 600.0);
        assert_eq!(max("Connection.spec.requestsPerSecond"), 1000.0);
        assert_eq!(max("Connection.spec.fullSyncIntervalHours"), 720.0);
        assert_eq!(max("Connection.status.conditions[].observedGeneration"), MAX_INT64 as f64);
        assert_eq!(max("IdentityProfile.status.lifecycleStateCounts{}"), MAX_INT64 as f64);
    }
}
