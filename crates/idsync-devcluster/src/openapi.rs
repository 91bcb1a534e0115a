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
        // Only custom resources carry a schema here: kubectl finds none for
        // the built-in kinds and falls back to its compiled-in types.
        if let Some(validator) = &rt.validator {
            let mut schema = validator.schema().clone();
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
