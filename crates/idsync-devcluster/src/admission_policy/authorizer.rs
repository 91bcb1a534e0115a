//! Who makes a request, and what a policy's `authorizer` asks about them.
//!
//! A policy's `authorizer.…check(verb)` needs the cluster's authorizer.
//! Policies see it only through [`PolicyAuthorizer`], so the evaluation
//! code does not depend on how the devcluster authorizes; [`requester`] is
//! the one place that adapts the devcluster's users to it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::Shared;
use crate::authz::{ADMIN, Access};

/// The user of a request, as `request.userInfo` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl RequestUser {
    /// A service account's user (`authorizer.serviceAccount(ns, name)`), with
    /// the groups the API server gives service accounts.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        RequestUser {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            uid: String::new(),
            groups: vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_string(),
            ],
            extra: BTreeMap::new(),
        }
    }
}

/// What an `authorizer` check asks: a resource request (`group`, `resource`,
/// …) or a non-resource one (`path`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckAttributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// A non-resource URL path; the resource fields are empty then.
    pub path: Option<String>,
}

/// The answer to a check, as CEL's `Decision` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckDecision {
    pub allowed: bool,
    pub reason: String,
    /// Why the authorizer could not decide (`errored()` / `error()`).
    pub error: Option<String>,
}

/// The authorizer a policy's `authorizer` variable asks.
pub trait PolicyAuthorizer: Send + Sync {
    fn check(&self, user: &RequestUser, attrs: &CheckAttributes) -> CheckDecision;
}

/// A request's user and the authorizer to ask about them.
#[derive(Clone)]
pub struct Requester {
    pub user: RequestUser,
    pub authorizer: Arc<dyn PolicyAuthorizer>,
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester").field("user", &self.user.username).finish_non_exhaustive()
    }
}

/// The requester holding `token`, with the devcluster's users behind its
/// authorizer. The adapter to the devcluster's authorization: the only
/// code here that knows how users and their rules are kept.
pub fn requester(shared: &Arc<Shared>, token: &str) -> Requester {
    let username = shared.users.name(token);
    let groups = if username == ADMIN {
        vec!["kubeadm:cluster-admins".to_string(), "system:authenticated".to_string()]
    } else {
        vec!["system:authenticated".to_string()]
    };
    let user = RequestUser { username, uid: String::new(), groups, extra: BTreeMap::new() };
    Requester { user, authorizer: Arc::new(DevUsers { shared: shared.clone(), token: token.to_string() }) }
}

/// The devcluster's users as an authorizer. They are known by token, so
/// checks about the requester themself are answered from their rules;
/// anyone else (`authorizer.serviceAccount(…)`) is known to no rule and is
/// denied, as RBAC denies a user no binding names.
struct DevUsers {
    shared: Arc<Shared>,
    token: String,
}

impl PolicyAuthorizer for DevUsers {
    fn check(&self, user: &RequestUser, attrs: &CheckAttributes) -> CheckDecision {
        let same_user = self.shared.users.name(&self.token) == user.username;
        if !same_user {
            return CheckDecision::default();
        }
        if attrs.path.is_some() {
            // Non-resource URLs (discovery, health) are open to every
            // authenticated user here; anything else only to the admin.
            let open = attrs.path.as_deref().is_some_and(is_public_path);
            let allowed = user.username == ADMIN || (open && attrs.verb == "get");
            return decision(allowed);
        }
        let resource = match &attrs.subresource {
            Some(sub) => format!("{}/{sub}", attrs.resource),
            None => attrs.resource.clone(),
        };
        let access = Access { verb: attrs.verb.clone(), group: attrs.group.clone(), resource };
        decision(self.shared.users.allows(&self.token, &access, attrs.name.as_deref()))
    }
}

fn decision(allowed: bool) -> CheckDecision {
    CheckDecision { allowed, reason: String::new(), error: None }
}

/// Paths every authenticated user may read (`system:discovery`,
/// `system:public-info-viewer`).
fn is_public_path(path: &str) -> bool {
    ["/api", "/apis", "/openapi", "/version", "/healthz", "/readyz", "/livez"]
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")))
}
