//! Who may do what with idsync's kinds: three ClusterRoles and the
//! ValidatingAdmissionPolicy that keeps confirmations to admins, as the Helm
//! chart's `templates/access.yaml` renders them for a release's name prefix.
//! `idsync dev` applies these; the chart test checks the two agree.

use serde_json::{Value, json};

/// The idsync kinds the roles cover, plural.
pub const RESOURCES: [&str; 5] =
    ["connections", "identityprofiles", "resyncrequests", "notificationproviders", "notificationpolicies"];

/// The verb (not an API verb: the admission policy asks the authorizer for
/// it) that lets a user create a request with `confirmDeletes`,
/// `confirmRemovals` or `applyPendingChanges`.
pub const CONFIRM_VERB: &str = "confirm";

/// The viewer, requester and admin ClusterRoles, named `<prefix>-viewer`…;
/// with `aggregate`, the viewer aggregates into `view` and the requester
/// into `edit`.
pub fn roles(prefix: &str, aggregate: bool) -> Vec<Value> {
    let read = json!({"apiGroups": [crate::GROUP], "resources": RESOURCES, "verbs": ["get", "list", "watch"]});
    let role = |suffix: &str, aggregate_to: Option<&str>, rules: Value| {
        let mut labels = json!({"app.kubernetes.io/name": "idsync"});
        if let (true, Some(to)) = (aggregate, aggregate_to) {
            labels[format!("rbac.authorization.k8s.io/aggregate-to-{to}")] = json!("true");
        }
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": format!("{prefix}-{suffix}"), "labels": labels},
            "rules": rules,
        })
    };
    vec![
        role("viewer", Some("view"), json!([read])),
        role(
            "requester",
            Some("edit"),
            json!([read, {"apiGroups": [crate::GROUP], "resources": ["resyncrequests"], "verbs": ["create", "delete"]}]),
        ),
        role(
            "admin",
            None,
            json!([
                {"apiGroups": [crate::GROUP], "resources": RESOURCES,
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]},
                {"apiGroups": [crate::GROUP], "resources": ["resyncrequests"], "verbs": [CONFIRM_VERB]},
            ]),
        ),
    ]
}

/// The policy `<prefix>-confirmations` and its binding: a ResyncRequest
/// that confirms (`confirmDeletes`, `confirmRemovals`, `applyPendingChanges`) needs the
/// confirm verb and a `requestedBy`; any `requestedBy` must be the
/// creating user's name.
pub fn admission_policy(prefix: &str) -> Vec<Value> {
    let name = format!("{prefix}-confirmations");
    let confirms = "(has(object.spec.confirmDeletes) && object.spec.confirmDeletes) || \
                    (has(object.spec.confirmRemovals) && object.spec.confirmRemovals) || \
                    (has(object.spec.applyPendingChanges) && object.spec.applyPendingChanges)";
    let may_confirm = format!(
        "!variables.confirms || authorizer.group('{}').resource('resyncrequests').namespace(object.metadata.namespace).check('{CONFIRM_VERB}').allowed()",
        crate::GROUP
    );
    let refused = format!(
        "'confirmDeletes, confirmRemovals and applyPendingChanges are admin actions: ' + request.userInfo.username + \
         ' may not confirm ResyncRequests in ' + object.metadata.namespace + \
         ' (it takes the confirm verb on resyncrequests, which the {prefix}-admin role grants)'"
    );
    let labels = json!({"app.kubernetes.io/name": "idsync"});
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [crate::GROUP], "apiVersions": ["*"],
                    "operations": ["CREATE"], "resources": ["resyncrequests"],
                }]},
                "variables": [{"name": "confirms", "expression": confirms}],
                "validations": [
                    {"expression": may_confirm, "messageExpression": refused, "reason": "Forbidden"},
                    {"expression": "!has(object.spec.requestedBy) || object.spec.requestedBy == request.userInfo.username",
                     "messageExpression": "'spec.requestedBy must name the user creating the request: ' + request.userInfo.username",
                     "reason": "Forbidden"},
                    {"expression": "!variables.confirms || has(object.spec.requestedBy)",
                     "messageExpression": "'a confirmation records who confirms: set spec.requestedBy to ' + request.userInfo.username"},
                ],
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name, "labels": labels},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        }),
    ]
}
