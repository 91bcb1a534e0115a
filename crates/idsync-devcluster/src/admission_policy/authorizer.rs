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
use crate::authz::{Attributes, Authorizer, UserInfo};

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

/// What an `authorizer` check asks: the RBAC authorizer's own attributes
/// (a resource request, or a non-resource one by `path`).
pub type CheckAttributes = Attributes;

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

/// The requester `user`, with the devcluster's RBAC authorizer behind its
/// `authorizer`. The adapter to the devcluster's authorization: the only
/// code here that knows how it is kept.
pub fn requester(shared: &Arc<Shared>, user: &UserInfo) -> Requester {
    let user = RequestUser {
        username: user.username.clone(),
        uid: user.uid.clone(),
        groups: user.groups.clone(),
        extra: BTreeMap::new(),
    };
    Requester { user, authorizer: Arc::new(Rbac { authz: shared.authz.clone() }) }
}

/// The devcluster's RBAC as a policy's authorizer: any user can be asked
/// about (`authorizer.serviceAccount(…)` included), as on a real server.
struct Rbac {
    authz: Arc<Authorizer>,
}

impl PolicyAuthorizer for Rbac {
    fn check(&self, user: &RequestUser, attrs: &CheckAttributes) -> CheckDecision {
        let user = UserInfo { username: user.username.clone(), uid: user.uid.clone(), groups: user.groups.clone() };
        let decision = self.authz.check(&user, attrs);
        CheckDecision { allowed: decision.allowed, reason: decision.reason, error: None }
    }
}
