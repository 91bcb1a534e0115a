//! Which requests a policy (`spec.matchConstraints`) and a binding
//! (`spec.matchResources`) select: resource rules with their operations,
//! groups, versions, resources, scope and names, rules that exclude, and
//! namespace and object label selectors — as the API server's policy
//! matcher decides.

use std::collections::BTreeMap;

use serde_json::Value;

/// An admission operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// What a request is about, as matching sees it.
#[derive(Clone, Debug)]
pub struct RequestAttributes<'a> {
    pub operation: Operation,
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    /// The plural.
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub name: &'a str,
    /// "" for cluster-scoped objects.
    pub namespace: &'a str,
    pub namespaced: bool,
    /// Every version the resource is served in: under `matchPolicy:
    /// Equivalent` (the default) a rule naming any of them matches.
    pub served_versions: Vec<String>,
    pub object: Option<&'a Value>,
    pub old_object: Option<&'a Value>,
    /// The labels of the request's namespace (of the Namespace itself when
    /// one is written); none for other cluster-scoped objects.
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

impl RequestAttributes<'_> {
    fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.kind == "Namespace"
    }
}

/// Whether a policy's `matchConstraints` select the request. A policy
/// without `resourceRules` matches nothing (the API server refuses one).
pub fn policy_matches(constraints: Option<&Value>, request: &RequestAttributes) -> bool {
    let Some(constraints) = constraints else { return false };
    if constraints.get("resourceRules").is_none() {
        return false;
    }
    constraints_match(constraints, request)
}

/// Whether a binding's `matchResources` select the request; without any,
/// or without `resourceRules`, it narrows nothing by resource.
pub fn binding_matches(resources: Option<&Value>, request: &RequestAttributes) -> bool {
    match resources {
        None => true,
        Some(resources) => constraints_match(resources, request),
    }
}

fn constraints_match(m: &Value, request: &RequestAttributes) -> bool {
    if !namespace_selected(m.get("namespaceSelector"), request) || !object_selected(m.get("objectSelector"), request) {
        return false;
    }
    let equivalent = m.get("matchPolicy").and_then(Value::as_str) != Some("Exact");
    let matches = |rule: &Value| rule_matches(rule, request, equivalent);
    let rules = |field: &str| m.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
    if rules("excludeResourceRules").iter().any(matches) {
        return false;
    }
    match m.get("resourceRules").and_then(Value::as_array) {
        None => true,
        Some(included) => included.iter().any(matches),
    }
}

/// A namespace selector applies to namespaced objects (by their
/// namespace's labels) and to Namespaces (by their own); every other
/// cluster-scoped object matches it.
fn namespace_selected(selector: Option<&Value>, request: &RequestAttributes) -> bool {
    if !request.namespaced && !request.is_namespace() {
        return true;
    }
    let labels = if request.is_namespace() {
        labels_of(request.object.or(request.old_object))
    } else {
        request.namespace_labels.clone().unwrap_or_default()
    };
    selector_matches(selector, &labels)
}

/// An object selector matches when the new or the old object's labels do.
fn object_selected(selector: Option<&Value>, request: &RequestAttributes) -> bool {
    let candidates: Vec<&Value> = request.object.iter().chain(request.old_object.iter()).copied().collect();
    if candidates.is_empty() {
        return selector_matches(selector, &BTreeMap::new());
    }
    candidates.into_iter().any(|object| selector_matches(selector, &labels_of(Some(object))))
}

fn labels_of(object: Option<&Value>) -> BTreeMap<String, String> {
    object
        .and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default()
}

/// A `metav1.LabelSelector`; absent or empty selects everything.
pub fn selector_matches(selector: Option<&Value>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_null()) else { return true };
    let by_label = selector.get("matchLabels").and_then(Value::as_object).into_iter().flatten();
    for (key, wanted) in by_label {
        if labels.get(key).map(String::as_str) != wanted.as_str() {
            return false;
        }
    }
    let expressions = selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten();
    for requirement in expressions {
        let key = requirement.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = requirement
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let value = labels.get(key).map(String::as_str);
        let ok = match requirement.get("operator").and_then(Value::as_str).unwrap_or_default() {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => value.is_none_or(|v| !values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator the API server would have refused selects nothing.
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// One `NamedRuleWithOperations`; `equivalent` lets a rule naming another
/// served version of the resource match (the request is converted to it on
/// a real API server; here all versions share one stored shape).
pub fn rule_matches(rule: &Value, request: &RequestAttributes, equivalent: bool) -> bool {
    let list = |field: &str| -> Vec<&str> {
        rule.get(field)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let any = |values: &[&str], wanted: &str| values.iter().any(|v| *v == "*" || *v == wanted);
    let operations = list("operations");
    if !any(&operations, request.operation.as_str()) {
        return false;
    }
    let versions = list("apiVersions");
    let version_ok = any(&versions, request.version)
        || (equivalent && versions.iter().any(|v| request.served_versions.iter().any(|served| served == v)));
    if !any(&list("apiGroups"), request.group) || !version_ok {
        return false;
    }
    if !list("resources").iter().any(|pattern| resource_matches(pattern, request.resource, request.subresource)) {
        return false;
    }
    let scope_ok = match rule.get("scope").and_then(Value::as_str).unwrap_or("*") {
        "Cluster" => !request.namespaced,
        "Namespaced" => request.namespaced,
        _ => true,
    };
    if !scope_ok {
        return false;
    }
    let names = list("resourceNames");
    names.is_empty() || names.contains(&request.name)
}

/// `pods` is the main resource only, `pods/status` one subresource,
/// `pods/*` every subresource of pods, `*` every main resource, `*/status`
/// that subresource of every resource, `*/*` everything.
fn resource_matches(pattern: &str, resource: &str, subresource: Option<&str>) -> bool {
    let (want_resource, want_sub) = match pattern.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (pattern, None),
    };
    let resource_ok = want_resource == "*" || want_resource == resource;
    let sub_ok = match (want_sub, subresource) {
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some(w), Some(s)) => w == "*" || w == s,
    };
    resource_ok && sub_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request<'a>(operation: Operation, object: Option<&'a Value>) -> RequestAttributes<'a> {
        RequestAttributes {
            operation,
            group: "idsync.dev",
            version: "v1alpha1",
            kind: "ResyncRequest",
            resource: "resyncrequests",
            subresource: None,
            name: "r1",
            namespace: "idsync",
            namespaced: true,
            served_versions: vec!["v1alpha1".to_string(), "v1beta1".to_string()],
            object,
            old_object: None,
            namespace_labels: Some(BTreeMap::from([("team".to_string(), "security".to_string())])),
        }
    }

    fn rule(operations: &[&str], resources: &[&str]) -> Value {
        json!({"apiGroups": ["idsync.dev"], "apiVersions": ["*"], "operations": operations, "resources": resources})
    }

    #[test]
    fn a_rule_matches_its_operations_groups_versions_and_resources() {
        let create = request(Operation::Create, None);
        assert!(rule_matches(&rule(&["CREATE"], &["resyncrequests"]), &create, true));
        assert!(rule_matches(&rule(&["*"], &["*"]), &create, true));
        assert!(!rule_matches(&rule(&["UPDATE", "DELETE"], &["resyncrequests"]), &create, true));
        assert!(!rule_matches(&rule(&["CREATE"], &["connections"]), &create, true));
        let other_group = json!({"apiGroups": [""], "apiVersions": ["*"], "operations": ["*"], "resources": ["*"]});
        assert!(!rule_matches(&other_group, &create, true));
        let other_version = json!({"apiGroups": ["*"], "apiVersions": ["v1"], "operations": ["*"], "resources": ["*"]});
        assert!(!rule_matches(&other_version, &create, true));
    }

    #[test]
    fn a_rule_for_another_served_version_matches_unless_the_match_policy_is_exact() {
        let create = request(Operation::Create, None);
        let v1beta1 =
            json!({"apiGroups": ["idsync.dev"], "apiVersions": ["v1beta1"], "operations": ["*"], "resources": ["*"]});
        assert!(rule_matches(&v1beta1, &create, true));
        assert!(!rule_matches(&v1beta1, &create, false));
        let unserved =
            json!({"apiGroups": ["idsync.dev"], "apiVersions": ["v2"], "operations": ["*"], "resources": ["*"]});
        assert!(!rule_matches(&unserved, &create, true));
        let exact = json!({"matchPolicy": "Exact", "resourceRules": [v1beta1.clone()]});
        assert!(!policy_matches(Some(&exact), &create));
        let equivalent = json!({"resourceRules": [v1beta1]});
        assert!(policy_matches(Some(&equivalent), &create), "Equivalent is the default");
    }

    #[test]
    fn subresources_match_only_rules_that_name_them() {
        let mut status = request(Operation::Update, None);
        status.subresource = Some("status");
        assert!(!rule_matches(&rule(&["*"], &["resyncrequests"]), &status, true));
        assert!(!rule_matches(&rule(&["*"], &["*"]), &status, true));
        assert!(rule_matches(&rule(&["*"], &["resyncrequests/status"]), &status, true));
        assert!(rule_matches(&rule(&["*"], &["resyncrequests/*"]), &status, true));
        assert!(rule_matches(&rule(&["*"], &["*/status"]), &status, true));
        assert!(rule_matches(&rule(&["*"], &["*/*"]), &status, true));
        assert!(!rule_matches(&rule(&["*"], &["*/scale"]), &status, true));
        assert!(!rule_matches(&rule(&["*"], &["resyncrequests/status"]), &request(Operation::Update, None), true));
    }

    #[test]
    fn scope_and_resource_names_narrow_a_rule() {
        let create = request(Operation::Create, None);
        let mut cluster = rule(&["*"], &["*"]);
        cluster["scope"] = json!("Cluster");
        assert!(!rule_matches(&cluster, &create, true));
        cluster["scope"] = json!("Namespaced");
        assert!(rule_matches(&cluster, &create, true));
        let mut named = rule(&["*"], &["*"]);
        named["resourceNames"] = json!(["r2"]);
        assert!(!rule_matches(&named, &create, true));
        named["resourceNames"] = json!(["r1", "r2"]);
        assert!(rule_matches(&named, &create, true));
    }

    #[test]
    fn excluded_rules_win_over_included_ones() {
        let constraints = json!({
            "resourceRules": [rule(&["*"], &["*"])],
            "excludeResourceRules": [rule(&["CREATE"], &["resyncrequests"])],
        });
        assert!(!policy_matches(Some(&constraints), &request(Operation::Create, None)));
        assert!(policy_matches(Some(&constraints), &request(Operation::Delete, None)));
    }

    #[test]
    fn a_policy_without_resource_rules_matches_nothing_but_a_binding_without_narrows_nothing() {
        let create = request(Operation::Create, None);
        assert!(!policy_matches(None, &create));
        assert!(!policy_matches(Some(&json!({})), &create));
        assert!(binding_matches(None, &create));
        assert!(binding_matches(Some(&json!({"namespaceSelector": {}})), &create));
        assert!(!binding_matches(Some(&json!({"resourceRules": [rule(&["DELETE"], &["*"])]})), &create));
    }

    #[test]
    fn namespace_selectors_read_the_namespace_labels_and_skip_cluster_scoped_objects() {
        let create = request(Operation::Create, None);
        let team = |value: &str| json!({"namespaceSelector": {"matchLabels": {"team": value}}});
        assert!(binding_matches(Some(&team("security")), &create));
        assert!(!binding_matches(Some(&team("hr")), &create));
        let mut cluster_scoped = request(Operation::Create, None);
        cluster_scoped.namespaced = false;
        cluster_scoped.namespace = "";
        cluster_scoped.namespace_labels = None;
        assert!(binding_matches(Some(&team("hr")), &cluster_scoped), "cluster-scoped objects are not selected out");
        let namespace = json!({"metadata": {"name": "hr", "labels": {"team": "hr"}}});
        let mut ns = cluster_scoped.clone();
        ns.group = "";
        ns.kind = "Namespace";
        ns.object = Some(&namespace);
        assert!(binding_matches(Some(&team("hr")), &ns), "a Namespace is selected by its own labels");
        assert!(!binding_matches(Some(&team("security")), &ns));
    }

    #[test]
    fn object_selectors_match_the_new_or_the_old_object() {
        let labelled = json!({"metadata": {"labels": {"confirm": "yes"}}});
        let plain = json!({"metadata": {}});
        let selector = json!({"objectSelector": {"matchExpressions": [{"key": "confirm", "operator": "Exists"}]}});
        assert!(binding_matches(Some(&selector), &request(Operation::Create, Some(&labelled))));
        assert!(!binding_matches(Some(&selector), &request(Operation::Create, Some(&plain))));
        let mut deleting = request(Operation::Delete, None);
        deleting.old_object = Some(&labelled);
        assert!(binding_matches(Some(&selector), &deleting));
    }

    #[test]
    fn label_selector_operators_work_as_in_kubernetes() {
        let labels = BTreeMap::from([("tier".to_string(), "gold".to_string())]);
        let expr = |op: &str, values: &[&str]| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
        assert!(selector_matches(Some(&expr("In", &["gold", "silver"])), &labels));
        assert!(!selector_matches(Some(&expr("In", &["silver"])), &labels));
        assert!(selector_matches(Some(&expr("NotIn", &["silver"])), &labels));
        assert!(!selector_matches(Some(&expr("NotIn", &["gold"])), &labels));
        assert!(!selector_matches(Some(&expr("DoesNotExist", &[])), &labels));
        assert!(selector_matches(Some(&expr("NotIn", &["gold"])), &BTreeMap::new()), "NotIn matches an absent label");
        assert!(selector_matches(Some(&json!({})), &BTreeMap::new()));
        assert!(selector_matches(None, &labels));
    }
}
