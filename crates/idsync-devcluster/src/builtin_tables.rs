//! The `kubectl get` columns of the built-in kinds, as the API server's
//! own table printers give them (a CRD's come from its printer columns, see
//! `table`): Secrets' TYPE and DATA, ConfigMaps' DATA, Namespaces' STATUS,
//! Leases' HOLDER, and Events as `kubectl get events` shows them (LAST
//! SEEN, TYPE, REASON, OBJECT, MESSAGE), oldest first, roles' CREATED AT
//! and bindings' ROLE (wide: USERS, GROUPS, SERVICEACCOUNTS).

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::resources::ResourceType;
use super::table::{IncludeObject, age_text, row_object};

/// A column: name, type, priority (1: only in `-o wide`).
type Column = (&'static str, &'static str, i32);
/// The cells of one object's row.
type Cells = fn(&Value, Timestamp) -> Vec<Value>;

/// The Table of `objects` when `rt` is a built-in kind with its own
/// columns; `None` for the others.
pub fn table(
    rt: &ResourceType,
    objects: &[Value],
    include: IncludeObject,
    metadata: &Value,
    now: Timestamp,
) -> Option<Value> {
    let (columns, cells): (&[Column], Cells) = match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Secret") => {
            (&[("Name", "string", 0), ("Type", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)], secret)
        }
        ("", "ConfigMap") => (&[("Name", "string", 0), ("Data", "integer", 0), ("Age", "string", 0)], config_map),
        ("", "Namespace") => (&[("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)], namespace),
        ("coordination.k8s.io", "Lease") => {
            (&[("Name", "string", 0), ("Holder", "string", 0), ("Age", "string", 0)], lease)
        }
        (_, "Event") => (
            &[
                ("Last Seen", "string", 0),
                ("Type", "string", 0),
                ("Reason", "string", 0),
                ("Object", "string", 0),
                ("Message", "string", 0),
                ("Name", "string", 1),
            ],
            event,
        ),
        ("rbac.authorization.k8s.io", "ClusterRole" | "Role") => {
            (&[("Name", "string", 0), ("Created At", "date", 0)], role)
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding" | "RoleBinding") => (
            &[
                ("Name", "string", 0),
                ("Role", "string", 0),
                ("Age", "string", 0),
                ("Users", "string", 1),
                ("Groups", "string", 1),
                ("ServiceAccounts", "string", 1),
            ],
            role_binding,
        ),
        _ => return None,
    };
    let mut objects: Vec<&Value> = objects.iter().collect();
    if rt.kind == "Event" {
        // RFC 3339 in UTC sorts as text.
        objects.sort_by_key(|e| last_seen(e));
    }
    let definitions: Vec<Value> = columns
        .iter()
        .map(|(name, type_, priority)| {
            let format = if *name == "Name" { "name" } else { "" };
            json!({"name": name, "type": type_, "format": format, "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut row = Map::new();
            row.insert("cells".to_string(), Value::Array(cells(object, now)));
            row.insert("object".to_string(), row_object(object, include));
            Value::Object(row)
        })
        .collect();
    let metadata = if metadata.is_object() { metadata.clone() } else { json!({}) };
    Some(json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
                "columnDefinitions": definitions, "rows": rows}))
}

fn text(object: &Value, pointer: &str) -> String {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn age(object: &Value, now: Timestamp) -> Value {
    Value::String(age_text(&text(object, "/metadata/creationTimestamp"), now))
}

fn name(object: &Value) -> Value {
    Value::String(text(object, "/metadata/name"))
}

fn keys(object: &Value, fields: &[&str]) -> Value {
    let count: usize = fields.iter().filter_map(|f| object.get(*f).and_then(Value::as_object)).map(Map::len).sum();
    Value::from(count)
}

fn secret(object: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(object), Value::String(text(object, "/type")), keys(object, &["data"]), age(object, now)]
}

fn config_map(object: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(object), keys(object, &["data", "binaryData"]), age(object, now)]
}

fn namespace(object: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(object), Value::String(text(object, "/status/phase")), age(object, now)]
}

fn lease(object: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(object), Value::String(text(object, "/spec/holderIdentity")), age(object, now)]
}

/// Roles show when they were created, as a date, not an age.
fn role(object: &Value, _now: Timestamp) -> Vec<Value> {
    vec![name(object), Value::String(text(object, "/metadata/creationTimestamp"))]
}

/// `ClusterRole/view`, then (wide) the subjects by kind; a service account
/// as `namespace/name`.
fn role_binding(object: &Value, now: Timestamp) -> Vec<Value> {
    let role = format!("{}/{}", text(object, "/roleRef/kind"), text(object, "/roleRef/name"));
    let subjects = object.get("subjects").and_then(Value::as_array).cloned().unwrap_or_default();
    let of_kind = |kind: &str| {
        let names: Vec<String> = subjects
            .iter()
            .filter(|s| s.get("kind").and_then(Value::as_str) == Some(kind))
            .map(|s| match text(s, "/namespace") {
                ns if ns.is_empty() || kind != "ServiceAccount" => text(s, "/name"),
                ns => format!("{ns}/{}", text(s, "/name")),
            })
            .collect();
        Value::String(names.join(", "))
    };
    vec![
        name(object),
        Value::String(role),
        age(object, now),
        of_kind("User"),
        of_kind("Group"),
        of_kind("ServiceAccount"),
    ]
}

/// When an Event was last seen, in either version's fields.
fn last_seen(event: &Value) -> String {
    [
        "/series/lastObservedTime",
        "/lastTimestamp",
        "/deprecatedLastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .map(|p| text(event, p))
    .find(|t| !t.is_empty())
    .unwrap_or_default()
}

fn event(object: &Value, now: Timestamp) -> Vec<Value> {
    // core/v1 names the object `involvedObject` and the text `message`;
    // events.k8s.io/v1 `regarding` and `note`.
    let regarding = object.get("involvedObject").or_else(|| object.get("regarding")).cloned().unwrap_or(Value::Null);
    let kind = text(&regarding, "/kind").to_lowercase();
    let about =
        if kind.is_empty() { text(&regarding, "/name") } else { format!("{kind}/{}", text(&regarding, "/name")) };
    let message = object.get("message").or_else(|| object.get("note")).and_then(Value::as_str).unwrap_or_default();
    vec![
        Value::String(age_text(&last_seen(object), now)),
        Value::String(text(object, "/type")),
        Value::String(text(object, "/reason")),
        Value::String(about),
        Value::String(message.to_string()),
        name(object),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn rt(group: &str, plural: &str) -> ResourceType {
        Registry::with_builtins().find(group, "v1", plural).expect("a built-in").clone()
    }

    fn cells(table: &Value) -> Vec<Vec<Value>> {
        table["rows"].as_array().expect("rows").iter().map(|r| r["cells"].as_array().expect("cells").clone()).collect()
    }

    #[test]
    fn events_read_as_kubectl_get_events_shows_them_oldest_first() {
        let now: Timestamp = "2026-11-29T10:00:00Z".parse().expect("time");
        let event = |name: &str, at: &str, reason: &str| {
            json!({"metadata": {"name": name, "creationTimestamp": at}, "lastTimestamp": at, "type": "Normal",
                   "reason": reason, "involvedObject": {"kind": "Connection", "name": "acme-hr"},
                   "message": format!("{reason} for acme-hr")})
        };
        let objects =
            [event("b", "2026-11-29T09:59:00Z", "SyncSucceeded"), event("a", "2026-11-29T09:58:00Z", "SyncStarted")];
        let table = table(&rt("", "events"), &objects, IncludeObject::None, &json!({}), now).expect("a table");
        let names: Vec<&str> =
            table["columnDefinitions"].as_array().expect("columns").iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["Last Seen", "Type", "Reason", "Object", "Message", "Name"]);
        let rows = cells(&table);
        assert_eq!(
            rows[0][..5],
            [
                json!("2m"),
                json!("Normal"),
                json!("SyncStarted"),
                json!("connection/acme-hr"),
                json!("SyncStarted for acme-hr")
            ]
        );
        assert_eq!(rows[1][2], "SyncSucceeded");
    }

    #[test]
    fn secrets_config_maps_namespaces_and_leases_have_their_columns() {
        let now: Timestamp = "2026-11-29T10:00:00Z".parse().expect("time");
        let at = "2026-11-29T09:00:00Z";
        let secret =
            json!({"metadata": {"name": "t", "creationTimestamp": at}, "type": "Opaque", "data": {"a": "", "b": ""}});
        assert_eq!(
            cells(&table(&rt("", "secrets"), &[secret], IncludeObject::None, &json!({}), now).expect("t"))[0],
            [json!("t"), json!("Opaque"), json!(2), json!("60m")]
        );
        let map =
            json!({"metadata": {"name": "m", "creationTimestamp": at}, "data": {"a": "1"}, "binaryData": {"b": ""}});
        assert_eq!(
            cells(&table(&rt("", "configmaps"), &[map], IncludeObject::None, &json!({}), now).expect("t"))[0][1],
            2
        );
        let ns = json!({"metadata": {"name": "people", "creationTimestamp": at}, "status": {"phase": "Active"}});
        assert_eq!(
            cells(&table(&rt("", "namespaces"), &[ns], IncludeObject::None, &json!({}), now).expect("t"))[0][1],
            "Active"
        );
        let lease =
            json!({"metadata": {"name": "l", "creationTimestamp": at}, "spec": {"holderIdentity": "operator-a"}});
        assert_eq!(
            cells(
                &table(&rt("coordination.k8s.io", "leases"), &[lease], IncludeObject::None, &json!({}), now)
                    .expect("t")
            )[0][1],
            "operator-a"
        );
    }
}
