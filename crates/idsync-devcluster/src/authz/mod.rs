//! Authentication and RBAC authorization, as the API server does them:
//! every bearer token is a user (name, uid, groups), and every request,
//! the admin's included, is authorized by the stored Roles, ClusterRoles
//! (aggregated, see `aggregation`) and their bindings, or refused with the
//! API server's 403 and words.
//!
//! The kubeconfig's token is `kubernetes-admin` in `kubeadm:cluster-admins`,
//! which the bootstrap policy binds to `cluster-admin`; discovery, OpenAPI,
//! health and the self reviews are open to every authenticated user through
//! `system:discovery`, `system:public-info-viewer` and `system:basic-user`,
//! as on a cluster (see `bootstrap`).
//!
//! The calls each user was allowed are kept (distinct verb, group and
//! resource) so a test can find rules it never needs.
//!
//! Locks: [`Authorizer::check`] reads a snapshot of the policy and takes no
//! lock on the cluster's state, so it may be called with that lock held
//! (from admission) or not. The snapshot is replaced by [`Authorizer::after_write`],
//! which the write path calls while holding the state lock; the order is
//! always state, then policy, never the reverse.
//!
//! Not modelled: impersonation, escalation checks on writing roles and
//! bindings (a user who may create a RoleBinding may bind any role),
//! LocalSubjectAccessReview and SubjectAccessReview, anonymous requests
//! (a request without a known token is 401).

pub mod aggregation;
pub mod bootstrap;
pub mod rbac;
pub mod review;
pub mod users;
pub mod validation;
pub mod wire;

use std::sync::{Arc, RwLock};

pub use bootstrap::ADMIN;
pub use validation::validate;

use self::rbac::Policy;
use self::users::Users;
use crate::error::ApiError;
use crate::request::Target;
use crate::store::Store;

/// One kind of call a user made: `patch` of `connections/status` in
/// `idsync.dev`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    pub verb: String,
    /// "" for the core group.
    pub group: String,
    /// `plural` or `plural/subresource`.
    pub resource: String,
}

/// Who made a request, as authentication found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// What a request asks to do, as the authorizer sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// "" for the core group.
    pub group: String,
    /// The plural, without the subresource.
    pub resource: String,
    pub subresource: Option<String>,
    /// None at the cluster scope (cluster-scoped kinds, lists across all
    /// namespaces); a Namespace's own name for requests on a Namespace.
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The path of a non-resource request (`/healthz`, `/apis`); None for
    /// a resource request.
    pub path: Option<String>,
}

impl Attributes {
    /// The attributes of a resource request: `verb` on `target`, with the
    /// `fieldSelector` of a list or watch (one selecting a single
    /// `metadata.name` names that object, as the API server reads it).
    pub fn of_request(target: &Target, verb: &str, field_selector: Option<&str>) -> Attributes {
        let is_namespace = target.rt.group.is_empty() && target.rt.plural == "namespaces";
        let namespace = if is_namespace { target.name.clone() } else { target.namespace.clone() };
        let name = target.name.clone().or_else(|| {
            let listing = verb == "list" || verb == "watch";
            listing.then(|| field_selector.and_then(selected_name)).flatten()
        });
        Attributes {
            verb: verb.to_string(),
            group: target.rt.group.clone(),
            resource: target.rt.plural.clone(),
            subresource: target.subresource.clone(),
            namespace,
            name,
            path: None,
        }
    }

    /// A non-resource request.
    pub fn of_path(verb: &str, path: &str) -> Attributes {
        Attributes { verb: verb.to_string(), path: Some(path.to_string()), ..Attributes::default() }
    }

    fn access(&self) -> Access {
        let resource = match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        };
        Access { verb: self.verb.clone(), group: self.group.clone(), resource }
    }
}

/// The name a field selector requires exactly (`metadata.name=x`), if it
/// does.
fn selected_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let value = term.trim().strip_prefix("metadata.name")?;
        let value = value.strip_prefix("==").or_else(|| value.strip_prefix('='))?;
        Some(value.to_string()).filter(|v| !v.is_empty() && !v.contains('/') && !v.contains('%'))
    })
}

/// An authorizer's answer, with the reason RBAC gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `RBAC: allowed by ClusterRoleBinding "b" of ClusterRole "r" to User "u"`;
    /// empty on a denial unless a binding could not be evaluated.
    pub reason: String,
}

/// The users and the RBAC policy, shared by every request.
#[derive(Default)]
pub struct Authorizer {
    pub users: Users,
    policy: RwLock<Arc<Policy>>,
}

impl Authorizer {
    /// The current policy; cheap (one reference count).
    fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Whether `user` may do what `attrs` describe. Takes no lock on the
    /// cluster's state (see the module's note on locks).
    pub fn check(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        self.policy().authorize(user, attrs)
    }

    /// The rules granted to `user` cluster-wide and in `namespace`, and the
    /// errors met reading them.
    pub fn rules_for(
        &self,
        user: &UserInfo,
        namespace: Option<&str>,
    ) -> (Vec<k8s_openapi::api::rbac::v1::PolicyRule>, Vec<String>) {
        self.policy().rules_for(user, namespace)
    }

    /// Authorizes a request: allowed resource calls are tallied, a denial is
    /// the API server's 403.
    pub fn authorize(&self, user: &UserInfo, attrs: &Attributes, target: Option<&Target>) -> Result<(), ApiError> {
        let decision = self.check(user, attrs);
        if !decision.allowed {
            return Err(forbidden(user, attrs, target, &decision.reason));
        }
        if attrs.path.is_none() {
            self.users.record(&user.username, attrs.access());
        }
        Ok(())
    }

    /// Stores the bootstrap policy in a new cluster and reads it.
    pub fn install(&self, store: &mut Store) {
        bootstrap::install(store);
        aggregation::run(store);
        self.reload(store);
    }

    /// After a write (under the state lock): when it changed a ClusterRole,
    /// the aggregated ClusterRoles are recomputed; when it changed any RBAC
    /// object, the policy is read again, so the next request sees it.
    pub fn after_write(&self, store: &mut Store, revision_before: u64) {
        if store.revision() == revision_before {
            return;
        }
        let (rbac_changed, cluster_roles_changed) =
            match store.changes_since(revision_before, |c| rbac::is_rbac(&c.storage_key)) {
                Ok(changes) => (!changes.is_empty(), changes.iter().any(|c| c.storage_key == rbac::CLUSTER_ROLES)),
                // The write outran the kept history: assume the worst.
                Err(_) => (true, true),
            };
        if cluster_roles_changed {
            aggregation::run(store);
        }
        if rbac_changed {
            self.reload(store);
        }
    }

    fn reload(&self, store: &Store) {
        let policy = Arc::new(Policy::from_store(store));
        *self.policy.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = policy;
    }
}

/// The RBAC verb of a request, as the API server derives it.
pub fn verb(method: &http::Method, named: bool, watching: bool) -> &'static str {
    use http::Method;
    match *method {
        Method::GET | Method::HEAD if watching => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// The API server's 403: `secrets "hr" is forbidden: User "u" cannot get
/// resource "secrets" in API group "" in the namespace "default"`, or
/// `forbidden: User "u" cannot get path "/metrics"`, with `: REASON` when
/// RBAC gave one.
pub fn forbidden(user: &UserInfo, attrs: &Attributes, target: Option<&Target>, reason: &str) -> ApiError {
    let who = &user.username;
    let what = match &attrs.path {
        Some(path) => format!("User {who:?} cannot {} path {path:?}", attrs.verb),
        None => {
            let access = attrs.access();
            let scope = match &attrs.namespace {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".to_string(),
            };
            format!(
                "User {who:?} cannot {} resource {:?} in API group {:?} {scope}",
                attrs.verb, access.resource, access.group
            )
        }
    };
    let what = if reason.is_empty() { what } else { format!("{what}: {reason}") };
    let Some(target) = target else {
        return ApiError::new(403, "Forbidden", format!("forbidden: {what}"));
    };
    let qualified = target.rt.qualified();
    let name = target.name.clone().unwrap_or_default();
    let object = if name.is_empty() { qualified.clone() } else { format!("{qualified} {name:?}") };
    let mut error = ApiError::new(403, "Forbidden", format!("{object} is forbidden: {what}"));
    error.details = Some(serde_json::json!({"name": name, "group": target.rt.group, "kind": target.rt.plural}));
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_selector_on_one_name_names_the_object() {
        assert_eq!(selected_name("metadata.name=hr"), Some("hr".into()));
        assert_eq!(selected_name("type=Opaque,metadata.name==hr"), Some("hr".into()));
        assert_eq!(selected_name("metadata.name!=hr"), None);
        assert_eq!(selected_name("metadata.namespace=hr"), None);
    }

    #[test]
    fn a_non_resource_denial_is_worded_as_the_api_server_words_it() {
        let user = users::user_info("ann", "", &[]);
        let error = forbidden(&user, &Attributes::of_path("get", "/metrics"), None, "");
        assert_eq!((error.code, error.reason), (403, "Forbidden"));
        assert_eq!(error.message, "forbidden: User \"ann\" cannot get path \"/metrics\"");
    }
}
