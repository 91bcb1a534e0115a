//! The ClusterRole aggregation controller: a ClusterRole with an
//! `aggregationRule` has as rules the union of the rules of every other
//! ClusterRole its selectors match, recomputed whenever a ClusterRole
//! changes. Here it runs inside the write that changed one, so the new
//! rules are stored (new resourceVersion, a MODIFIED watch event) and take
//! effect before the write is answered, where a cluster's controller would
//! catch up a moment later.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::rbac::CLUSTER_ROLES;
use crate::store::{EventType, Store};

/// How many rounds chained aggregation (view into edit into admin) may take
/// to settle; a cycle of aggregated roles settles too, as unions only grow
/// within a round, and the bound keeps a pathological one from looping.
const MAX_ROUNDS: usize = 16;

/// Recomputes every aggregated ClusterRole until none changes; returns
/// whether any was rewritten.
pub fn run(store: &mut Store) -> bool {
    let mut changed = false;
    for _ in 0..MAX_ROUNDS {
        let updates = one_round(store);
        if updates.is_empty() {
            return changed;
        }
        changed = true;
        for (name, object) in updates {
            store.put(CLUSTER_ROLES, "", &name, object, EventType::Modified);
        }
    }
    tracing::warn!("ClusterRole aggregation did not settle in {MAX_ROUNDS} rounds");
    changed
}

/// The aggregated ClusterRoles whose rules are not yet the union of their
/// selected roles', with the rules they should have.
fn one_round(store: &Store) -> Vec<(String, Value)> {
    let roles: Vec<&Value> = store.list(CLUSTER_ROLES, None).collect();
    let mut updates = Vec::new();
    for role in &roles {
        let Some(rule) = role.get("aggregationRule").filter(|r| !r.is_null()) else { continue };
        let name = name_of(role);
        let selectors: Vec<LabelSelector> =
            rule.get("clusterRoleSelectors").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default();
        let mut rules: Vec<PolicyRule> = Vec::new();
        for selector in &selectors {
            // By name, as the controller lists them.
            let mut selected: Vec<&&Value> =
                roles.iter().filter(|r| name_of(r) != name && selects(selector, &labels_of(r))).collect();
            selected.sort_by_key(|r| name_of(r));
            for other in selected {
                for r in rules_of(other) {
                    if !rules.contains(&r) {
                        rules.push(r);
                    }
                }
            }
        }
        if rules != rules_of(role) {
            let mut updated = (*role).clone();
            updated["rules"] = serde_json::to_value(&rules).unwrap_or(Value::Array(Vec::new()));
            updates.push((name.to_string(), updated));
        }
    }
    updates
}

fn name_of(role: &Value) -> &str {
    role.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

fn rules_of(role: &Value) -> Vec<PolicyRule> {
    role.get("rules").cloned().and_then(|r| serde_json::from_value(r).ok()).unwrap_or_default()
}

fn labels_of(role: &Value) -> BTreeMap<String, String> {
    role.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default()
}

/// Whether a `metav1.LabelSelector` selects `labels`; an empty selector
/// selects everything, as `LabelSelectorAsSelector` makes it.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            // An unknown operator is refused by validation on a cluster;
            // here it selects nothing.
            _ => false,
        }
    });
    labels_match && expressions_match
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(name: &str, labels: Value, rules: Value, aggregate_label: Option<&str>) -> Value {
        let mut role = json!({"metadata": {"name": name, "labels": labels}, "rules": rules});
        if let Some(label) = aggregate_label {
            role["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]});
        }
        role
    }

    fn rule(resource: &str) -> Value {
        json!({"apiGroups": [""], "resources": [resource], "verbs": ["get"]})
    }

    fn rules_named(store: &Store, name: &str) -> Vec<String> {
        let role = store.get(CLUSTER_ROLES, "", name).expect("stored");
        rules_of(role).into_iter().flat_map(|r| r.resources.unwrap_or_default()).collect()
    }

    #[test]
    fn aggregation_chains_deduplicates_and_follows_deletions() {
        let mut store = Store::new(100, std::time::Duration::from_secs(60));
        let put = |store: &mut Store, v: Value| {
            let name = name_of(&v).to_string();
            store.put(CLUSTER_ROLES, "", &name, v, EventType::Added);
        };
        put(&mut store, role("edit", json!({}), json!([]), Some("to-edit")));
        put(&mut store, role("view", json!({"to-edit": "true"}), json!([]), Some("to-view")));
        put(&mut store, role("a", json!({"to-view": "true"}), json!([rule("configmaps")]), None));
        put(&mut store, role("b", json!({"to-view": "true"}), json!([rule("configmaps"), rule("events")]), None));
        put(&mut store, role("c", json!({"to-edit": "true"}), json!([rule("secrets")]), None));
        assert!(run(&mut store));
        assert_eq!(rules_named(&store, "view"), ["configmaps", "events"]);
        // Selected roles by name: c, then view.
        assert_eq!(rules_named(&store, "edit"), ["secrets", "configmaps", "events"], "view's rules reach edit");
        assert!(!run(&mut store), "settled");

        store.remove(CLUSTER_ROLES, "", "b");
        assert!(run(&mut store));
        assert_eq!(rules_named(&store, "view"), ["configmaps"]);
        assert_eq!(rules_named(&store, "edit"), ["secrets", "configmaps"]);
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = BTreeMap::from([("tier".to_string(), "web".to_string())]);
        let selector = |v: Value| serde_json::from_value::<LabelSelector>(v).expect("selector");
        assert!(selects(&selector(json!({})), &labels));
        assert!(selects(&selector(json!({"matchLabels": {"tier": "web"}})), &labels));
        assert!(!selects(&selector(json!({"matchLabels": {"tier": "db"}})), &labels));
        let expression =
            |op: &str| selector(json!({"matchExpressions": [{"key": "tier", "operator": op, "values": ["web"]}]}));
        assert!(selects(&expression("In"), &labels));
        assert!(!selects(&expression("NotIn"), &labels));
        assert!(selects(&selector(json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]})), &labels));
        assert!(!selects(&selector(json!({"matchExpressions": [{"key": "x", "operator": "Exists"}]})), &labels));
    }
}
