//! The operator's permissions as its Helm chart grants them: the rules of
//! the ClusterRole in `charts/idsync/templates/rbac.yaml`, which the
//! devcluster enforces on the operator's client in every end-to-end test.

use k8s_openapi::api::rbac::v1::PolicyRule;

/// The user the chart binds its ClusterRole to (release `idsync`).
pub const OPERATOR_USER: &str = "system:serviceaccount:idsync:idsync";

/// The chart's ClusterRole rules. The template's `{{ … }}` only name
/// things, so they are blanked before the YAML is read.
pub fn chart_rules() -> Vec<PolicyRule> {
    let path = super::repo("charts/idsync/templates/rbac.yaml");
    let text = std::fs::read_to_string(&path).expect("the chart's rbac.yaml");
    let mut blanked = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{{") {
        blanked.push_str(&rest[..start]);
        blanked.push_str("idsync");
        let end = rest[start..].find("}}").expect("a closed template action");
        rest = &rest[start + end + 2..];
    }
    blanked.push_str(rest);
    for document in blanked.split("\n---") {
        let value: serde_json::Value = yaml_serde::from_str(document).expect("rbac.yaml parses");
        if value["kind"] == "ClusterRole" {
            return serde_json::from_value(value["rules"].clone()).expect("PolicyRules");
        }
    }
    panic!("no ClusterRole in {}", path.display());
}
