//! The reviews a user asks about itself, answered and never stored:
//! SelfSubjectReview (`kubectl auth whoami`), SelfSubjectAccessReview
//! (`kubectl auth can-i VERB RESOURCE`) and SelfSubjectRulesReview
//! (`kubectl auth can-i --list`).

use serde_json::{Value, json};

use super::{Attributes, Authorizer, UserInfo};
use crate::error::ApiError;
use crate::schema::FieldError;

const AUTHORIZATION: &str = "authorization.k8s.io";

/// `kubectl auth whoami`
pub fn whoami(user: &UserInfo) -> Value {
    let mut info = json!({"username": user.username, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": info}
    })
}

fn text(value: &Value, field: &str) -> String {
    value.get(field).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn optional(value: &Value, field: &str) -> Option<String> {
    Some(text(value, field)).filter(|s| !s.is_empty())
}

/// The attributes a SelfSubjectAccessReview asks about.
fn attributes_of(review: &Value) -> Result<Attributes, ApiError> {
    let spec = review.get("spec").cloned().unwrap_or(Value::Null);
    let resource = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    match (resource, non_resource) {
        (Some(r), None) => Ok(Attributes {
            verb: text(r, "verb"),
            group: text(r, "group"),
            resource: text(r, "resource"),
            subresource: optional(r, "subresource"),
            namespace: optional(r, "namespace"),
            name: optional(r, "name"),
            path: None,
        }),
        (None, Some(n)) => Ok(Attributes {
            verb: text(n, "verb"),
            path: Some(text(n, "path")),
            group: String::new(),
            resource: String::new(),
            subresource: None,
            namespace: None,
            name: None,
        }),
        (Some(_), Some(_)) => Err(invalid(FieldError::invalid(
            "spec.nonResourceAttributes",
            &Value::String("non-null".into()),
            "cannot be specified in combination with resourceAttributes",
        ))),
        (None, None) => Err(invalid(FieldError::invalid(
            "spec.resourceAttributes",
            &Value::String("null".into()),
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ))),
    }
}

fn invalid(error: FieldError) -> ApiError {
    ApiError::invalid("SelfSubjectAccessReview", AUTHORIZATION, "", &[error])
}

/// `kubectl auth can-i`: the review with its `status` filled in.
pub fn access_review(authorizer: &Authorizer, user: &UserInfo, review: &Value) -> Result<Value, ApiError> {
    let attrs = attributes_of(review)?;
    let decision = authorizer.check(user, &attrs);
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    Ok(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "metadata": {"creationTimestamp": null},
        "spec": review.get("spec").cloned().unwrap_or(json!({})),
        "status": status,
    }))
}

/// `kubectl auth can-i --list -n NS`: every rule granted in the namespace
/// (and cluster-wide), split into resource and non-resource rules.
pub fn rules_review(authorizer: &Authorizer, user: &UserInfo, review: &Value) -> Result<Value, ApiError> {
    let namespace = review.pointer("/spec/namespace").and_then(Value::as_str).filter(|n| !n.is_empty());
    let (rules, errors) = authorizer.rules_for(user, namespace);
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for rule in rules {
        if rule.resources.as_ref().is_some_and(|r| !r.is_empty()) {
            let mut entry = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups.unwrap_or_default(), "resources": rule.resources});
            if let Some(names) = rule.resource_names.filter(|n| !n.is_empty()) {
                entry["resourceNames"] = json!(names);
            }
            resource_rules.push(entry);
        }
        if let Some(urls) = rule.non_resource_urls.filter(|u| !u.is_empty()) {
            non_resource_rules.push(json!({"verbs": rule.verbs, "nonResourceURLs": urls}));
        }
    }
    let mut status =
        json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false});
    if !errors.is_empty() {
        status["evaluationError"] = json!(errors.join(", "));
    }
    Ok(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
        "metadata": {"creationTimestamp": null},
        "spec": review.get("spec").cloned().unwrap_or(json!({})),
        "status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_review_must_ask_about_exactly_one_kind_of_request() {
        let neither = json!({"spec": {}});
        let refused = attributes_of(&neither).expect_err("refused");
        assert_eq!(refused.code, 422);
        let path = json!({"spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}});
        let attrs = attributes_of(&path).expect("valid");
        assert_eq!((attrs.path.as_deref(), attrs.verb.as_str()), (Some("/healthz"), "get"));
        let resource =
            json!({"spec": {"resourceAttributes": {"verb": "list", "resource": "configmaps", "namespace": "dev"}}});
        let attrs = attributes_of(&resource).expect("valid");
        assert_eq!(
            (attrs.resource.as_str(), attrs.namespace.as_deref(), attrs.path),
            ("configmaps", Some("dev"), None)
        );
    }
}
