//! The RBAC objects a new cluster has, as the API server's bootstrap policy
//! and kubeadm create them, restricted to what the devcluster serves:
//! `cluster-admin` (bound to `system:masters` and to kubeadm's admin group,
//! the kubeconfig user's), the user-facing `admin`, `edit` and `view` with
//! their real aggregation rules and chaining labels (their rules come from
//! the `system:aggregate-to-*` roles, by aggregation, as on a cluster),
//! `system:discovery`, `system:public-info-viewer` and `system:basic-user`
//! for every authenticated user.

use serde_json::{Value, json};

use super::rbac::{CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES};
use crate::store::{EventType, Store};

/// The kubeconfig's user, as kubeadm names its admin.
pub const ADMIN: &str = "kubernetes-admin";
/// kubeadm's admin group, bound to `cluster-admin`.
pub const ADMIN_GROUP: &str = "kubeadm:cluster-admins";

const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// A bootstrap object's metadata: the labels and annotation the API server
/// marks its defaults with.
fn metadata(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut all = serde_json::Map::new();
    all.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in labels {
        all.insert(k.to_string(), json!(v));
    }
    json!({
        "name": name,
        "labels": all,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": metadata(name, labels), "rules": rules})
}

/// An aggregated ClusterRole: its rules are the aggregation controller's.
fn aggregated(name: &str, labels: &[(&str, &str)], selector_label: &str) -> Value {
    let mut role = cluster_role(name, labels, Vec::new());
    role["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {selector_label: "true"}}]});
    role
}

fn groups_binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> =
        groups.iter().map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g})).collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": metadata(name, &[]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

pub fn cluster_roles() -> Vec<Value> {
    let discovery_urls = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    let public_urls = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), json!({"nonResourceURLs": ["*"], "verbs": ["*"]})],
        ),
        cluster_role("system:discovery", &[], vec![json!({"nonResourceURLs": discovery_urls, "verbs": ["get"]})]),
        cluster_role("system:public-info-viewer", &[], vec![json!({"nonResourceURLs": public_urls, "verbs": ["get"]})]),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
            ],
        ),
        aggregated("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated("edit", &[(AGGREGATE_TO_ADMIN, "true")], AGGREGATE_TO_EDIT),
        aggregated("view", &[(AGGREGATE_TO_EDIT, "true")], AGGREGATE_TO_VIEW),
        cluster_role(
            "system:aggregate-to-admin",
            &[(AGGREGATE_TO_ADMIN, "true")],
            vec![
                rule(&["rbac.authorization.k8s.io"], &["rolebindings", "roles"], READ_WRITE),
                rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(AGGREGATE_TO_EDIT, "true")],
            vec![
                rule(&[""], &["configmaps", "events", "secrets", "serviceaccounts", "services"], WRITE),
                // Editors read Secrets; viewers do not.
                rule(&[""], &["secrets"], READ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(AGGREGATE_TO_VIEW, "true")],
            vec![
                rule(&[""], &["configmaps", "events", "serviceaccounts", "services"], READ),
                rule(&[""], &["namespaces", "namespaces/status"], READ),
                rule(&["events.k8s.io"], &["events"], READ),
            ],
        ),
    ]
}

pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        groups_binding("cluster-admin", "cluster-admin", &["system:masters"]),
        groups_binding(ADMIN_GROUP, "cluster-admin", &[ADMIN_GROUP]),
        groups_binding("system:discovery", "system:discovery", &["system:authenticated"]),
        groups_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        groups_binding("system:basic-user", "system:basic-user", &["system:authenticated"]),
    ]
}

/// Stores a cluster-scoped object as the API server would have created it.
pub fn put_new(store: &mut Store, storage_key: &str, mut object: Value) {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    object["metadata"]["creationTimestamp"] = json!(crate::api::now_rfc3339());
    store.put(storage_key, "", &name, object, EventType::Added);
}

/// Stores the bootstrap policy in a new cluster's store.
pub fn install(store: &mut Store) {
    for role in cluster_roles() {
        put_new(store, CLUSTER_ROLES, role);
    }
    for binding in cluster_role_bindings() {
        put_new(store, CLUSTER_ROLE_BINDINGS, binding);
    }
}

/// Stores a cluster-scoped object the devcluster itself manages (see
/// `DevCluster::client_as`): new, or replacing the stored one's `field`
/// (keeping its uid and creation time); nothing when that is unchanged, so
/// no watch event is sent for nothing.
pub fn put_or_replace(store: &mut Store, storage_key: &str, object: Value, field: &str) {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    match store.get(storage_key, "", &name) {
        None => put_new(store, storage_key, object),
        Some(existing) if existing.get(field) == object.get(field) => {}
        Some(existing) => {
            let mut updated = existing.clone();
            updated[field] = object.get(field).cloned().unwrap_or(Value::Null);
            store.put(storage_key, "", &name, updated, EventType::Modified);
        }
    }
}
