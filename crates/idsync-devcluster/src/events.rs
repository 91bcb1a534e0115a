//! core/v1 and events.k8s.io/v1 Events are one object in two shapes, as on
//! a real API server: idsync records `events.k8s.io/v1` Events, and
//! `kubectl describe` reads them back as core/v1 Events by
//! `involvedObject.*`. The store keeps the core/v1 shape with every field of
//! both, and each endpoint converts on the way in and out.

use serde_json::{Map, Value};

/// Field pairs: (events.k8s.io/v1 name, core/v1 name).
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedSource", "source"),
    ("reportingController", "reportingComponent"),
];

/// An events.k8s.io/v1 Event as stored (core/v1 shape).
pub fn to_core(event: &Value) -> Value {
    let Some(map) = event.as_object() else {
        return event.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let renamed = RENAMED.iter().find(|(v1, _)| v1 == key).map(|(_, core)| *core).unwrap_or(key.as_str());
        out.insert(renamed.to_string(), value.clone());
    }
    out.insert("apiVersion".into(), Value::String("v1".into()));
    // kubectl describe prints source.component in its From column.
    if !out.contains_key("source")
        && let Some(component) = out.get("reportingComponent").cloned()
    {
        let mut source = Map::new();
        source.insert("component".into(), component);
        if let Some(instance) = out.get("reportingInstance").cloned() {
            source.insert("host".into(), instance);
        }
        out.insert("source".into(), Value::Object(source));
    }
    Value::Object(out)
}

/// A stored Event in the events.k8s.io/v1 shape.
pub fn to_events_v1(event: &Value) -> Value {
    let Some(map) = event.as_object() else {
        return event.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let renamed = RENAMED.iter().find(|(_, core)| core == key).map(|(v1, _)| *v1).unwrap_or(key.as_str());
        out.insert(renamed.to_string(), value.clone());
    }
    out.insert("apiVersion".into(), Value::String("events.k8s.io/v1".into()));
    Value::Object(out)
}

/// Converts a stored (core/v1-shaped) object to the shape of `api_version`.
pub fn for_version(event: &Value, api_version: &str) -> Value {
    if api_version == "events.k8s.io/v1" { to_events_v1(event) } else { event.clone() }
}

/// Converts an incoming object of `api_version` to the stored shape.
pub fn from_version(event: &Value, api_version: &str) -> Value {
    if api_version == "events.k8s.io/v1" { to_core(event) } else { event.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_events_v1_event_reads_back_as_core_and_round_trips() {
        let v1 = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "hris.1", "namespace": "default"},
            "regarding": {"kind": "Connection", "name": "hris", "namespace": "default", "uid": "u1"},
            "note": "Sync started", "reason": "SyncStarted", "type": "Normal", "action": "Sync",
            "reportingController": "idsync.dev/operator", "reportingInstance": "idsync-0",
            "eventTime": "2026-11-22T02:00:00.000000Z"
        });
        let core = to_core(&v1);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "hris");
        assert_eq!(core["message"], "Sync started");
        assert_eq!(core["source"]["component"], "idsync.dev/operator");
        let back = to_events_v1(&core);
        assert_eq!(back["regarding"], v1["regarding"]);
        assert_eq!(back["note"], v1["note"]);
        assert_eq!(back["reportingController"], v1["reportingController"]);
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
    }
}
