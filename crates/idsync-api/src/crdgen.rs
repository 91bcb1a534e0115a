//! CRD generation: the CRDs are derived from the Rust types and never edited
//! by hand; `idsync crds` prints them and `crds/` holds the committed copy.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Map, Value, json};

use super::{Connection, IdentityProfile, ResyncRequest};

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

/// The three CRDs, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![Connection::crd(), IdentityProfile::crd(), ResyncRequest::crd()]
}

/// The file name under `crds/` of a CRD.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"))
}

/// A CRD as the YAML document committed under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, yaml_serde::Error> {
    yaml_serde::to_string(crd)
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
