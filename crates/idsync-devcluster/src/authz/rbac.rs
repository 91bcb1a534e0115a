//! The RBAC authorizer: the stored Roles, ClusterRoles and their bindings,
//! read into a [`Policy`], and a request's attributes checked against them
//! exactly as the API server's RBAC authorizer does (its rule matching, its
//! visiting order and the wording of its reasons).

use std::collections::HashMap;
use std::fmt;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use serde_json::Value;

use super::{Attributes, Decision, UserInfo};
use crate::store::Store;

pub const GROUP: &str = "rbac.authorization.k8s.io";
pub const CLUSTER_ROLES: &str = "rbac.authorization.k8s.io/clusterroles";
pub const CLUSTER_ROLE_BINDINGS: &str = "rbac.authorization.k8s.io/clusterrolebindings";
pub const ROLES: &str = "rbac.authorization.k8s.io/roles";
pub const ROLE_BINDINGS: &str = "rbac.authorization.k8s.io/rolebindings";

/// Whether objects stored under `storage_key` are RBAC objects.
pub fn is_rbac(storage_key: &str) -> bool {
    matches!(storage_key, CLUSTER_ROLES | CLUSTER_ROLE_BINDINGS | ROLES | ROLE_BINDINGS)
}

/// A RoleBinding (with its namespace) or a ClusterRoleBinding ("").
#[derive(Clone, Debug)]
struct Binding {
    name: String,
    namespace: String,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
}

/// The RBAC objects of the cluster at one revision, read once per change
/// so that checking a request needs no lock on the cluster's state.
#[derive(Default, Debug)]
pub struct Policy {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// (namespace, name)
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    /// Sorted by name, so the reason names the same binding every time.
    cluster_role_bindings: Vec<Binding>,
    /// By namespace, each sorted by name.
    role_bindings: HashMap<String, Vec<Binding>>,
}

/// Where a rule came from, worded as the RBAC authorizer's reasons word it.
pub struct Source<'a> {
    binding: &'a Binding,
    subject: &'a Subject,
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.binding;
        let subject = describe_subject(self.subject, &b.namespace);
        if b.namespace.is_empty() {
            write!(f, "ClusterRoleBinding {:?} of {} {:?} to {subject}", b.name, b.role_ref.kind, b.role_ref.name)
        } else {
            let name = format!("{}/{}", b.name, b.namespace);
            write!(f, "RoleBinding {name:?} of {} {:?} to {subject}", b.role_ref.kind, b.role_ref.name)
        }
    }
}

fn describe_subject(s: &Subject, binding_namespace: &str) -> String {
    if s.kind == "ServiceAccount" {
        let namespace = s.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(binding_namespace);
        format!("{} {:?}", s.kind, format!("{}/{namespace}", s.name))
    } else {
        format!("{} {:?}", s.kind, s.name)
    }
}

/// What a visit of the rules that apply to a user meets.
enum Visit<'a> {
    Rule(Source<'a>, &'a PolicyRule),
    /// A binding that applies names a role that does not exist.
    Error(String),
}

impl Policy {
    /// Reads the RBAC objects of `store`; objects that do not decode are
    /// left out (admission keeps them from being stored in the first place).
    pub fn from_store(store: &Store) -> Policy {
        fn decode<T: k8s_openapi::serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
            match serde_json::from_value(v.clone()) {
                Ok(t) => Some(t),
                Err(error) => {
                    tracing::warn!(%error, "an RBAC object does not decode; it grants nothing");
                    None
                }
            }
        }
        let mut policy = Policy::default();
        for role in store.list(CLUSTER_ROLES, None).filter_map(decode::<ClusterRole>) {
            let name = role.metadata.name.unwrap_or_default();
            policy.cluster_roles.insert(name, role.rules.unwrap_or_default());
        }
        for role in store.list(ROLES, None).filter_map(decode::<Role>) {
            let key = (role.metadata.namespace.unwrap_or_default(), role.metadata.name.unwrap_or_default());
            policy.roles.insert(key, role.rules.unwrap_or_default());
        }
        for b in store.list(CLUSTER_ROLE_BINDINGS, None).filter_map(decode::<ClusterRoleBinding>) {
            policy.cluster_role_bindings.push(Binding {
                name: b.metadata.name.unwrap_or_default(),
                namespace: String::new(),
                role_ref: b.role_ref,
                subjects: b.subjects.unwrap_or_default(),
            });
        }
        for b in store.list(ROLE_BINDINGS, None).filter_map(decode::<RoleBinding>) {
            let namespace = b.metadata.namespace.unwrap_or_default();
            policy.role_bindings.entry(namespace.clone()).or_default().push(Binding {
                name: b.metadata.name.unwrap_or_default(),
                namespace,
                role_ref: b.role_ref,
                subjects: b.subjects.unwrap_or_default(),
            });
        }
        // The store lists by namespace then name already; sorting keeps that
        // true whatever the store's order becomes.
        policy.cluster_role_bindings.sort_by(|a, b| a.name.cmp(&b.name));
        policy.role_bindings.values_mut().for_each(|v| v.sort_by(|a, b| a.name.cmp(&b.name)));
        policy
    }

    /// The rules of the role a binding refers to, or why there are none.
    fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> Result<&[PolicyRule], String> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .get(&role_ref.name)
                .map(Vec::as_slice)
                .ok_or_else(|| format!("clusterrole.rbac.authorization.k8s.io {:?} not found", role_ref.name)),
            "Role" => self
                .roles
                .get(&(namespace.to_string(), role_ref.name.clone()))
                .map(Vec::as_slice)
                .ok_or_else(|| format!("role.rbac.authorization.k8s.io {:?} not found", role_ref.name)),
            other => Err(format!("unsupported role reference kind: {other:?}")),
        }
    }

    /// Visits every rule granted to `user` cluster-wide and, when
    /// `namespace` is given, in it: ClusterRoleBindings first, then the
    /// namespace's RoleBindings, as the RBAC authorizer does. `visitor`
    /// returns false to stop.
    fn visit<'a>(&'a self, user: &UserInfo, namespace: Option<&'a str>, mut visitor: impl FnMut(Visit<'a>) -> bool) {
        let in_namespace = namespace
            .filter(|ns| !ns.is_empty())
            .and_then(|ns| self.role_bindings.get(ns).map(|bindings| bindings.iter().map(move |b| (b, ns))))
            .into_iter()
            .flatten();
        let bindings = self.cluster_role_bindings.iter().map(|b| (b, "")).chain(in_namespace);
        for (binding, namespace) in bindings {
            let Some(subject) = applies_to(user, &binding.subjects, namespace) else { continue };
            let go_on = match self.role_rules(&binding.role_ref, namespace) {
                Ok(rules) => rules.iter().all(|rule| visitor(Visit::Rule(Source { binding, subject }, rule))),
                Err(e) => visitor(Visit::Error(e)),
            };
            if !go_on {
                return;
            }
        }
    }

    /// Whether `user` may do what `attrs` describe, and why.
    pub fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        let mut allowed_by = None;
        let mut errors = Vec::new();
        self.visit(user, attrs.namespace.as_deref(), |visit| match visit {
            Visit::Rule(source, rule) if rule_allows(rule, attrs) => {
                allowed_by = Some(source.to_string());
                false
            }
            Visit::Rule(..) => true,
            Visit::Error(e) => {
                errors.push(e);
                true
            }
        });
        match allowed_by {
            Some(source) => Decision { allowed: true, reason: format!("RBAC: allowed by {source}") },
            // RBAC never denies; it has no opinion, and says why only when a
            // binding could not be evaluated.
            None => Decision { allowed: false, reason: rbac_errors(&errors) },
        }
    }

    /// Every rule granted to `user` cluster-wide and in `namespace`, and the
    /// errors met finding them (SelfSubjectRulesReview).
    pub fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> (Vec<PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        self.visit(user, namespace, |visit| {
            match visit {
                Visit::Rule(_, rule) => rules.push(rule.clone()),
                Visit::Error(e) => errors.push(e),
            }
            true
        });
        (rules, errors)
    }
}

/// The reason of a denial: the errors as Kubernetes aggregates them.
fn rbac_errors(errors: &[String]) -> String {
    match errors {
        [] => String::new(),
        [one] => format!("RBAC: {one}"),
        many => format!("RBAC: [{}]", many.join(", ")),
    }
}

/// The first of `subjects` that is `user`; `namespace` is the binding's
/// ("" for a ClusterRoleBinding), the default of a ServiceAccount subject's.
fn applies_to<'a>(user: &UserInfo, subjects: &'a [Subject], namespace: &str) -> Option<&'a Subject> {
    subjects.iter().find(|s| match s.kind.as_str() {
        "User" => s.name == user.username,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let sa_namespace = s.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(namespace);
            !sa_namespace.is_empty() && user.username == format!("system:serviceaccount:{sa_namespace}:{}", s.name)
        }
        _ => false,
    })
}

/// Whether one rule grants the request, as RBAC's `RuleAllows`.
pub fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    let verb_matches = rule.verbs.iter().any(|v| v == "*" || *v == attrs.verb);
    if !verb_matches {
        return false;
    }
    let Some(path) = &attrs.path else {
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let group_matches = groups.iter().any(|g| g == "*" || *g == attrs.group);
        return group_matches && resource_matches(rule, attrs) && name_matches(rule, attrs.name.as_deref());
    };
    rule.non_resource_urls
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|url| url == "*" || url == path || url.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix)))
}

fn resource_matches(rule: &PolicyRule, attrs: &Attributes) -> bool {
    let combined = match &attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.clone(),
    };
    rule.resources.as_deref().unwrap_or_default().iter().any(|r| {
        // `*` is every resource and subresource; `*/status` a subresource
        // of every resource; nothing else is a pattern (`pods/*` is not).
        r == "*" || *r == combined || attrs.subresource.as_deref().is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    })
}

/// resourceNames restrict a rule to requests naming one of them: a list,
/// watch or create names none (unless a list or watch selects one name by
/// `metadata.name`) and so is not granted by such a rule.
fn name_matches(rule: &PolicyRule, name: Option<&str>) -> bool {
    match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => name.is_some_and(|n| names.iter().any(|x| x == n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
        PolicyRule {
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            resource_names: (!names.is_empty()).then(|| strings(names)),
            non_resource_urls: None,
        }
    }

    fn request(verb: &str, group: &str, resource: &str, name: Option<&str>) -> Attributes {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_string())),
            None => (resource, None),
        };
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource,
            namespace: Some("default".into()),
            name: name.map(str::to_string),
            path: None,
        }
    }

    fn path(verb: &str, path: &str) -> Attributes {
        Attributes { verb: verb.into(), path: Some(path.into()), ..request(verb, "", "", None) }
    }

    #[test]
    fn a_rule_grants_its_verbs_on_its_resources_in_its_groups_only() {
        let r = rule(&["idsync.dev"], &["connections", "connections/status"], &["get", "patch"], &[]);
        assert!(rule_allows(&r, &request("get", "idsync.dev", "connections", Some("hr"))));
        assert!(rule_allows(&r, &request("patch", "idsync.dev", "connections/status", Some("hr"))));
        assert!(!rule_allows(&r, &request("delete", "idsync.dev", "connections", Some("hr"))));
        assert!(!rule_allows(&r, &request("get", "", "connections", Some("hr"))), "the core group is not any group");
        assert!(!rule_allows(&r, &request("get", "idsync.dev", "resyncrequests", Some("r"))));
        assert!(!rule_allows(&r, &request("get", "idsync.dev", "connections/finalize", Some("hr"))));
    }

    #[test]
    fn the_core_group_is_the_empty_string() {
        let core = rule(&[""], &["configmaps"], &["get"], &[]);
        assert!(rule_allows(&core, &request("get", "", "configmaps", Some("x"))));
        assert!(!rule_allows(&core, &request("get", "events.k8s.io", "configmaps", Some("x"))));
        let any = rule(&["*"], &["configmaps"], &["get"], &[]);
        assert!(rule_allows(&any, &request("get", "", "configmaps", Some("x"))));
    }

    #[test]
    fn wildcards_match_as_in_rbac_and_plural_slash_star_is_no_pattern() {
        let star = rule(&["*"], &["*"], &["*"], &[]);
        assert!(rule_allows(&star, &request("deletecollection", "x.io", "things/status", None)));
        let any_status = rule(&["*"], &["*/status"], &["update"], &[]);
        assert!(rule_allows(&any_status, &request("update", "idsync.dev", "connections/status", Some("a"))));
        assert!(!rule_allows(&any_status, &request("update", "idsync.dev", "connections", Some("a"))));
        assert!(!rule_allows(&any_status, &request("update", "idsync.dev", "connections/scale", Some("a"))));
        // RBAC has no `plural/*`: it names a subresource literally called `*`.
        let leases = rule(&["*"], &["leases/*"], &["*"], &[]);
        assert!(!rule_allows(&leases, &request("update", "coordination.k8s.io", "leases/status", Some("x"))));
        assert!(!rule_allows(&leases, &request("update", "coordination.k8s.io", "leases", Some("x"))));
    }

    #[test]
    fn resource_names_grant_named_requests_only() {
        let named = rule(&[""], &["secrets"], &["get", "list", "watch", "create"], &["hr-token"]);
        assert!(rule_allows(&named, &request("get", "", "secrets", Some("hr-token"))));
        assert!(!rule_allows(&named, &request("get", "", "secrets", Some("other"))));
        assert!(!rule_allows(&named, &request("list", "", "secrets", None)), "a list names no object");
        assert!(!rule_allows(&named, &request("create", "", "secrets", None)), "a create names none either");
        assert!(
            rule_allows(&named, &request("watch", "", "secrets", Some("hr-token"))),
            "a watch of one name (fieldSelector metadata.name) is named"
        );
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_a_trailing_star() {
        let discovery = PolicyRule {
            non_resource_urls: Some(strings(&["/apis", "/apis/*", "/healthz"])),
            verbs: strings(&["get"]),
            ..Default::default()
        };
        assert!(rule_allows(&discovery, &path("get", "/apis")));
        assert!(rule_allows(&discovery, &path("get", "/apis/idsync.dev/v1alpha1")));
        assert!(rule_allows(&discovery, &path("get", "/healthz")));
        assert!(!rule_allows(&discovery, &path("get", "/healthz/etcd")));
        assert!(!rule_allows(&discovery, &path("post", "/apis")));
        assert!(!rule_allows(&discovery, &request("get", "", "apis", None)), "a resource request is not a path");
        let resources_only = rule(&["*"], &["*"], &["*"], &[]);
        assert!(!rule_allows(&resources_only, &path("get", "/metrics")), "resource rules grant no path");
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo { username: name.into(), uid: String::new(), groups: strings(groups) }
    }

    fn binding(name: &str, namespace: &str, kind: &str, role: &str, subjects: Vec<Subject>) -> Binding {
        Binding {
            name: name.into(),
            namespace: namespace.into(),
            role_ref: RoleRef { api_group: GROUP.into(), kind: kind.into(), name: role.into() },
            subjects,
        }
    }

    fn subject(kind: &str, name: &str, namespace: Option<&str>) -> Subject {
        Subject { kind: kind.into(), name: name.into(), namespace: namespace.map(str::to_string), api_group: None }
    }

    #[test]
    fn bindings_grant_by_user_group_and_service_account_with_reasons_worded_as_rbac() {
        let mut policy = Policy::default();
        policy.cluster_roles.insert("reader".into(), vec![rule(&[""], &["configmaps"], &["get", "list"], &[])]);
        policy.roles.insert(("team".into(), "writer".into()), vec![rule(&[""], &["configmaps"], &["create"], &[])]);
        policy.cluster_role_bindings.push(binding(
            "readers",
            "",
            "ClusterRole",
            "reader",
            vec![subject("Group", "ops", None)],
        ));
        policy.role_bindings.insert(
            "team".into(),
            vec![
                binding("writers", "team", "Role", "writer", vec![subject("ServiceAccount", "bot", None)]),
                binding("alice-reads", "team", "ClusterRole", "reader", vec![subject("User", "alice", None)]),
                binding("broken", "team", "Role", "missing", vec![subject("User", "alice", None)]),
            ],
        );
        let ops = user("bob", &["ops", "system:authenticated"]);
        let in_team =
            |verb: &str| Attributes { namespace: Some("team".into()), ..request(verb, "", "configmaps", None) };
        let decision = policy.authorize(&ops, &in_team("list"));
        assert_eq!(
            decision,
            Decision {
                allowed: true,
                reason: "RBAC: allowed by ClusterRoleBinding \"readers\" of ClusterRole \"reader\" to Group \"ops\""
                    .into()
            }
        );
        let bot = user("system:serviceaccount:team:bot", &["system:serviceaccounts"]);
        assert_eq!(
            policy.authorize(&bot, &in_team("create")).reason,
            "RBAC: allowed by RoleBinding \"writers/team\" of Role \"writer\" to ServiceAccount \"bot/team\""
        );
        assert!(!policy.authorize(&bot, &request("create", "", "configmaps", None)).allowed, "only in its namespace");
        let other_bot = user("system:serviceaccount:other:bot", &[]);
        assert!(!policy.authorize(&other_bot, &in_team("create")).allowed, "a service account of another namespace");
        let alice = user("alice", &[]);
        assert!(policy.authorize(&alice, &in_team("get")).allowed, "a RoleBinding may grant a ClusterRole");
        assert_eq!(
            policy.authorize(&alice, &in_team("delete")),
            Decision { allowed: false, reason: "RBAC: role.rbac.authorization.k8s.io \"missing\" not found".into() }
        );
        let (rules, errors) = policy.rules_for(&alice, Some("team"));
        assert_eq!(rules.len(), 1);
        assert_eq!(errors.len(), 1);
    }
}
