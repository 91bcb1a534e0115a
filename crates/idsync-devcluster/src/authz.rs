//! RBAC for the users a test adds: each has its own bearer token and a set
//! of rules (a ClusterRole's, as bound cluster-wide), and every request it
//! makes is authorized as the API server's RBAC authorizer would, or refused
//! with the same 403. The first token (the kubeconfig's) stays an admin.
//!
//! So the operator in end-to-end tests runs with exactly the permissions
//! its chart grants: a call the chart does not allow fails there, as it
//! would in a cluster, and the calls it does make are kept (distinct verb,
//! group and resource) so a test can find rules it never needs.
//!
//! Not modelled: Roles and RoleBindings per namespace, aggregation,
//! impersonation, `nonResourceURLs` (discovery and OpenAPI stay open to
//! every authenticated user, as `system:discovery` grants).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::rbac::v1::PolicyRule;

use super::error::ApiError;
use super::request::Target;

/// The kubeconfig's user, as kubeadm names its admin.
pub const ADMIN: &str = "kubernetes-admin";

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

struct User {
    name: String,
    rules: Vec<PolicyRule>,
    made: BTreeSet<Access>,
}

/// The users added with their tokens.
#[derive(Default)]
pub struct Users {
    by_token: Mutex<HashMap<String, User>>,
}

impl Users {
    pub fn add(&self, token: String, name: &str, rules: Vec<PolicyRule>) {
        if let Ok(mut users) = self.by_token.lock() {
            users.insert(token, User { name: name.to_string(), rules, made: BTreeSet::new() });
        }
    }

    /// Who holds `token`: an added user's name, or the admin's.
    pub fn name(&self, token: &str) -> String {
        match self.by_token.lock() {
            Ok(users) => users.get(token).map_or_else(|| ADMIN.to_string(), |u| u.name.clone()),
            Err(_) => ADMIN.to_string(),
        }
    }

    pub fn knows(&self, token: &str) -> bool {
        self.by_token.lock().is_ok_and(|users| users.contains_key(token))
    }

    /// The distinct calls `name` made, sorted.
    pub fn accesses(&self, name: &str) -> Vec<Access> {
        let Ok(users) = self.by_token.lock() else { return Vec::new() };
        users.values().filter(|u| u.name == name).flat_map(|u| u.made.iter().cloned()).collect()
    }

    /// Authorizes `verb` on `target` for the user of `token`; an admin
    /// (a token not added here) may do anything.
    pub fn authorize(&self, token: &str, verb: &str, target: &Target) -> Result<(), ApiError> {
        let Ok(mut users) = self.by_token.lock() else { return Err(ApiError::internal("the users' lock is poisoned")) };
        let Some(user) = users.get_mut(token) else { return Ok(()) };
        let resource = match &target.subresource {
            Some(sub) => format!("{}/{sub}", target.rt.plural),
            None => target.rt.plural.clone(),
        };
        let access = Access { verb: verb.to_string(), group: target.rt.group.clone(), resource };
        let allowed = user.rules.iter().any(|rule| allows(rule, &access, target.name.as_deref()));
        if !allowed {
            return Err(ApiError::forbidden(&user.name, &access, target));
        }
        user.made.insert(access);
        Ok(())
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

fn allows(rule: &PolicyRule, access: &Access, name: Option<&str>) -> bool {
    let any = |values: &Option<Vec<String>>, wanted: &str| {
        values.as_ref().is_some_and(|v| v.iter().any(|x| x == "*" || x == wanted))
    };
    let resource_matches = rule.resources.as_ref().is_some_and(|resources| {
        resources.iter().any(|r| {
            r == "*"
                || *r == access.resource
                // `plural/*` grants every subresource.
                || r.strip_suffix("/*").is_some_and(|plural| access.resource.starts_with(&format!("{plural}/")))
        })
    });
    // resourceNames restrict requests that name an object; a list, watch or
    // create names none and so is not granted by such a rule.
    let names_match = match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => name.is_some_and(|n| names.iter().any(|x| x == n)),
    };
    rule.verbs.iter().any(|v| v == "*" || *v == access.verb)
        && any(&rule.api_groups, &access.group)
        && resource_matches
        && names_match
}

impl Users {
    /// Whether the user of `token` may make `access` (to the object `name`),
    /// without tallying it as a call they made: what a
    /// ValidatingAdmissionPolicy's `authorizer` asks (see
    /// `admission_policy::authorizer`). The admin may do anything.
    pub fn allows(&self, token: &str, access: &Access, name: Option<&str>) -> bool {
        let Ok(users) = self.by_token.lock() else { return false };
        match users.get(token) {
            Some(user) => user.rules.iter().any(|rule| allows(rule, access, name)),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        PolicyRule {
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            resource_names: (!names.is_empty()).then(|| strings(names)),
            non_resource_urls: None,
        }
    }

    fn access(verb: &str, group: &str, resource: &str) -> Access {
        Access { verb: verb.into(), group: group.into(), resource: resource.into() }
    }

    #[test]
    fn a_rule_grants_its_verbs_on_its_resources_in_its_groups_only() {
        let r = rule(&["idsync.dev"], &["connections", "connections/status"], &["get", "patch"], &[]);
        assert!(allows(&r, &access("get", "idsync.dev", "connections"), Some("hr")));
        assert!(allows(&r, &access("patch", "idsync.dev", "connections/status"), Some("hr")));
        assert!(!allows(&r, &access("delete", "idsync.dev", "connections"), Some("hr")));
        assert!(!allows(&r, &access("get", "", "connections"), Some("hr")));
        assert!(!allows(&r, &access("get", "idsync.dev", "resyncrequests"), Some("r")));
    }

    #[test]
    fn wildcards_and_resource_names_work_as_in_rbac() {
        let all = rule(&["*"], &["leases/*"], &["*"], &[]);
        assert!(allows(&all, &access("update", "coordination.k8s.io", "leases/status"), Some("x")));
        assert!(!allows(&all, &access("update", "coordination.k8s.io", "leases"), Some("x")));
        let named = rule(&[""], &["secrets"], &["get", "list"], &["hr-token"]);
        assert!(allows(&named, &access("get", "", "secrets"), Some("hr-token")));
        assert!(!allows(&named, &access("get", "", "secrets"), Some("other")));
        assert!(!allows(&named, &access("list", "", "secrets"), None), "a list names no object");
    }
}
