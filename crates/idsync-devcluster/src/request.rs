//! What one API request is about: the resource, namespace, name and
//! subresource from the path, and the query parameters.

use std::collections::HashMap;

use serde_json::Value;

use super::error::ApiError;
use super::resources::ResourceType;
use crate::schema::{ErrorType, FieldError, FieldValidation};

/// The object(s) a request addresses.
#[derive(Clone, Debug)]
pub struct Target {
    pub rt: ResourceType,
    /// The namespace in the path (none for cluster-scoped resources and for
    /// lists across all namespaces).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub fn is_status(&self) -> bool {
        self.subresource.as_deref() == Some("status")
    }

    /// The namespace objects are stored under ("" when cluster-scoped).
    pub fn storage_namespace(&self) -> String {
        if self.rt.namespaced { self.namespace.clone().unwrap_or_default() } else { String::new() }
    }
}

/// Query parameters, plus the few request headers the verbs need.
#[derive(Clone, Debug, Default)]
pub struct Query {
    params: HashMap<String, String>,
    /// The field manager: `fieldManager`, else the client's user agent.
    pub manager: String,
    /// Warnings for the answer's `Warning` headers (unknown fields under
    /// the default field validation), gathered while the request is served.
    warnings: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Who made the request (for admission, which may check what the user
    /// may do with `Shared::authz`); none for requests the server makes.
    pub user: Option<crate::authz::UserInfo>,
}

impl Query {
    pub fn parse(query: Option<&str>, user_agent: Option<&str>) -> Self {
        let params: HashMap<String, String> =
            form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
        // The API server names an unnamed manager after the client, as
        // kubectl's `kubectl-client-side-apply` or kube-rs' user agent.
        let manager = params.get("fieldManager").cloned().unwrap_or_else(|| {
            user_agent.and_then(|ua| ua.split('/').next()).filter(|s| !s.is_empty()).unwrap_or("unknown").to_string()
        });
        Query { params, manager, warnings: Default::default(), user: None }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {v:?}"))))
            .transpose()
    }

    pub fn warn(&self, warnings: Vec<String>) {
        if let Ok(mut all) = self.warnings.lock() {
            all.extend(warnings);
        }
    }

    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().map(|w| w.clone()).unwrap_or_default()
    }

    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }

    /// Whether a request is a dry run, from the query and, for a delete,
    /// its `DeleteOptions` body (`dryRun: ["All"]`, where kubectl, client-go,
    /// kube-rs and the Python client put it). Any value but `All` is
    /// refused with 422, as the API server validates `*Options`, so a
    /// client that means "dry run" never really writes.
    pub fn dry_run_checked(&self, options: Option<&Value>, options_kind: &str) -> Result<bool, ApiError> {
        let mut values: Vec<String> = self.get("dryRun").map(|v| vec![v.to_string()]).unwrap_or_default();
        match options.and_then(|o| o.get("dryRun")) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                values.extend(items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            }
            Some(other) => values.push(other.as_str().map_or_else(|| other.to_string(), str::to_string)),
        }
        if let Some(bad) = values.iter().find(|v| *v != "All") {
            let error = FieldError {
                field: "dryRun".to_string(),
                error_type: ErrorType::NotSupported { supported: vec!["All".to_string()] },
                bad_value: Some(Value::String(bad.clone())),
            };
            return Err(ApiError::invalid(options_kind, "meta.k8s.io", "", &[error]));
        }
        Ok(!values.is_empty())
    }

    pub fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        match self.get("fieldValidation") {
            None => Ok(FieldValidation::Warn),
            Some(v) => FieldValidation::parse(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "fieldValidation parameter unsupported: {v}. Must be one of: Ignore, Warn, Strict"
                ))
            }),
        }
    }
}
