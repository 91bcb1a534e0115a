//! Enough OpenAPI v3 for kubectl: the index at `/openapi/v3` and one
//! document per group-version. kubectl 1.32 reads them to learn that the
//! server validates fields itself (the `fieldValidation` parameter of each
//! kind's PATCH operation), so `kubectl apply` sends `fieldValidation=Strict`
//! and lets the server's schema admission answer; `kubectl explain` reads the
//! custom resources' schemas from `components`.

use serde_json::{Map, Value, json};

use super::resources::{Registry, ResourceType};

/// `/openapi/v3`
pub fn index(registry: &Registry, revision: u64) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let path = group_version_path(&group, &version);
            paths
                .insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={revision:016X}")}));
        }
    }
    json!({"paths": paths})
}

fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`.
pub fn document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    if !registry.serves(group, version) {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for rt in registry.all().iter().filter(|t| t.group == group && t.version == version) {
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let base = format!("/{}", group_version_path(group, version));
        let collection = if rt.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{base}/{}", rt.plural)
        };
        let schema_ref = json!({"$ref": format!("#/components/schemas/{}", schema_name(rt))});
        let body = json!({"content": {"application/json": {"schema": schema_ref}}});
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(rt, "list", &gvk, &["labelSelector", "fieldSelector", "limit", "continue", "watch", "resourceVersion", "timeoutSeconds", "allowWatchBookmarks"]),
                "post": with_body(operation(rt, "post", &gvk, &["dryRun", "fieldManager", "fieldValidation"]), &body),
            }),
        );
        let item = json!({
            "get": operation(rt, "get", &gvk, &[]),
            "put": with_body(operation(rt, "put", &gvk, &["dryRun", "fieldManager", "fieldValidation"]), &body),
            "patch": operation(rt, "patch", &gvk, &["dryRun", "fieldManager", "fieldValidation", "force"]),
            "delete": operation(rt, "delete", &gvk, &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
        });
        paths.insert(format!("{collection}/{{name}}"), item);
        if rt.has_status {
            paths.insert(
                format!("{collection}/{{name}}/status"),
                json!({
                    "get": operation(rt, "get", &gvk, &[]),
                    "put": with_body(operation(rt, "put", &gvk, &["dryRun", "fieldManager", "fieldValidation"]), &body),
                    "patch": operation(rt, "patch", &gvk, &["dryRun", "fieldManager", "fieldValidation", "force"]),
                }),
            );
        }
        // A custom resource's schema from its CRD, with the type meta and
        // metadata every object has (`kubectl explain connection.metadata`);
        // a built-in kind's from k8s-openapi's types.
        if let Some(validator) = &rt.validator {
            let mut schema = validator.schema().clone();
            with_object_meta(&mut schema, &mut schemas);
            schema["x-kubernetes-group-version-kind"] = json!([gvk]);
            schemas.insert(schema_name(rt), schema);
        } else if let Some(mut schema) = builtin_schema(rt, &mut schemas) {
            schema["x-kubernetes-group-version-kind"] = json!([gvk]);
            schemas.insert(schema_name(rt), schema);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The name a real API server gives a kind's schema: the group reversed,
/// then version and kind (`dev.idsync.v1alpha1.Connection`).
fn schema_name(rt: &ResourceType) -> String {
    let mut parts: Vec<&str> = rt.group.split('.').filter(|s| !s.is_empty()).collect();
    parts.reverse();
    if parts.is_empty() {
        parts.push("io.k8s.api.core");
    }
    format!("{}.{}.{}", parts.join("."), rt.version, rt.kind)
}

fn operation(rt: &ResourceType, action: &str, gvk: &Value, params: &[&str]) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string"}, "uniqueItems": true}))
        .collect();
    json!({
        "operationId": format!("{action}{}", rt.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}},
    })
}

fn with_body(mut op: Value, body: &Value) -> Value {
    op["requestBody"] = body.clone();
    op
}

/// A schemars schema as an OpenAPI component: its `$defs` become
/// components of their own and every `$ref` points there.
fn component(root: schemars::Schema, schemas: &mut Map<String, Value>) -> Value {
    let mut value = root.to_value();
    let defs = value.as_object_mut().and_then(|o| {
        o.remove("$schema");
        o.remove("$defs")
    });
    if let Some(Value::Object(defs)) = defs {
        for (name, mut def) in defs {
            rewrite_refs(&mut def);
            schemas.entry(name).or_insert(def);
        }
    }
    rewrite_refs(&mut value);
    value
}

fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/components/schemas/{name}");
            }
            map.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// Adds `apiVersion`, `kind` and `metadata` to a custom resource's schema,
/// as the API server publishes it.
fn with_object_meta(schema: &mut Value, schemas: &mut Map<String, Value>) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    if !schemas.contains_key("ObjectMeta") {
        let meta = component(schemars::schema_for!(ObjectMeta), schemas);
        schemas.insert("ObjectMeta".to_string(), meta);
    }
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else { return };
    properties.insert(
        "apiVersion".to_string(),
        json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}),
    );
    properties.insert(
        "kind".to_string(),
        json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}),
    );
    properties.insert(
        "metadata".to_string(),
        json!({"allOf": [{"$ref": "#/components/schemas/ObjectMeta"}], "default": {},
               "description": "Standard object's metadata."}),
    );
}

/// The schema of a built-in kind the devcluster serves.
fn builtin_schema(rt: &ResourceType, schemas: &mut Map<String, Value>) -> Option<Value> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SelfSubjectRulesReview};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret, Service};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let root = match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "ConfigMap") => schemars::schema_for!(ConfigMap),
        ("", "Secret") => schemars::schema_for!(Secret),
        ("", "Namespace") => schemars::schema_for!(Namespace),
        ("", "Event") => schemars::schema_for!(Event),
        ("", "Service") => schemars::schema_for!(Service),
        ("authentication.k8s.io", "SelfSubjectReview") => schemars::schema_for!(SelfSubjectReview),
        ("coordination.k8s.io", "Lease") => schemars::schema_for!(Lease),
        ("events.k8s.io", "Event") => schemars::schema_for!(k8s_openapi::api::events::v1::Event),
        ("rbac.authorization.k8s.io", "ClusterRole") => schemars::schema_for!(ClusterRole),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => schemars::schema_for!(ClusterRoleBinding),
        ("rbac.authorization.k8s.io", "Role") => schemars::schema_for!(Role),
        ("rbac.authorization.k8s.io", "RoleBinding") => schemars::schema_for!(RoleBinding),
        ("authorization.k8s.io", "SelfSubjectAccessReview") => schemars::schema_for!(SelfSubjectAccessReview),
        ("authorization.k8s.io", "SelfSubjectRulesReview") => schemars::schema_for!(SelfSubjectRulesReview),
        _ => return None,
    };
    Some(component(root, schemas))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_of_a_document_resolves_inside_it() {
        let registry = Registry::with_builtins();
        for (group, version) in [
            ("", "v1"),
            ("coordination.k8s.io", "v1"),
            ("authentication.k8s.io", "v1"),
            ("rbac.authorization.k8s.io", "v1"),
            ("authorization.k8s.io", "v1"),
        ] {
            let document = super::document(&registry, group, version).expect("served");
            let schemas = document["components"]["schemas"].as_object().expect("schemas");
            let mut found = Vec::new();
            refs(&document, &mut found);
            for r in found {
                let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("a local ref: {r}"));
                assert!(schemas.contains_key(name), "{group}/{version}: {r} resolves");
            }
        }
        let document = document(&registry, "", "v1").expect("core v1");
        let schemas = document["components"]["schemas"].as_object().expect("schemas");
        assert!(schemas.contains_key("io.k8s.api.core.v1.ConfigMap"));
        assert!(schemas["io.k8s.api.core.v1.ConfigMap"]["properties"]["data"]["description"].is_string());
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("a local ref: {r}"));
            assert!(schemas.contains_key(name), "{r} resolves");
        }
    }
}
