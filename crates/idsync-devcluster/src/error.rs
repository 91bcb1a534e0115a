//! API errors, always answered as a `metav1.Status` body with reason and
//! code, worded as the Kubernetes API server words them.

use serde_json::{Value, json};

use crate::schema::{FieldError, Invalid};

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// `connections.idsync.dev "hris" not found`
    pub fn not_found(resource: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{resource} {name:?} not found"));
        e.details = Some(details(resource, name));
        e
    }

    /// A path the server does not serve.
    pub fn no_route(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    pub fn already_exists(resource: &str, name: &str) -> Self {
        let mut e = Self::new(409, "AlreadyExists", format!("{resource} {name:?} already exists"));
        e.details = Some(details(resource, name));
        e
    }

    /// A write from a stale resourceVersion.
    pub fn conflict(resource: &str, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
        e.details = Some(details(resource, name));
        e
    }

    pub fn conflict_with_message(resource: &str, name: &str, message: String) -> Self {
        let mut e = Self::new(409, "Conflict", message);
        e.details = Some(details(resource, name));
        e
    }

    /// `secrets "hr" is forbidden: User "system:serviceaccount:idsync:idsync"
    /// cannot get resource "secrets" in API group "" in the namespace "default"`
    pub fn forbidden(user: &str, access: &crate::authz::Access, target: &crate::request::Target) -> Self {
        let qualified = target.rt.qualified();
        let object = match &target.name {
            Some(name) => format!("{qualified} {name:?}"),
            None => qualified.clone(),
        };
        let scope = match &target.namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_string(),
        };
        let mut e = Self::new(
            403,
            "Forbidden",
            format!(
                "{object} is forbidden: User {user:?} cannot {} resource {:?} in API group {:?} {scope}",
                access.verb, access.resource, access.group
            ),
        );
        e.details = Some(details(&qualified, target.name.as_deref().unwrap_or_default()));
        e
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    /// The watch asked for history the server no longer keeps.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// A 422 whose causes name every invalid field.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let invalid = Invalid {
            qualified_kind: if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") },
            name: name.to_string(),
            errors: errors.to_vec(),
        };
        Self::from_invalid(kind, group, &invalid)
    }

    pub fn from_invalid(kind: &str, group: &str, invalid: &Invalid) -> Self {
        let causes: Vec<Value> = invalid
            .errors
            .iter()
            .map(|e| {
                let message = if e.error_type == crate::schema::ErrorType::Unknown {
                    format!("unknown field {:?}", e.field)
                } else {
                    e.body()
                };
                json!({"reason": e.reason(), "message": message, "field": e.field})
            })
            .collect();
        ApiError {
            code: 422,
            reason: "Invalid",
            message: invalid.to_string(),
            details: Some(json!({"name": invalid.name, "group": group, "kind": kind, "causes": causes})),
        }
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// `details` for errors about one object; `resource` is `plural.group` or
/// `plural` for the core group.
fn details(resource: &str, name: &str) -> Value {
    let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
    json!({"name": name, "group": group, "kind": kind})
}
