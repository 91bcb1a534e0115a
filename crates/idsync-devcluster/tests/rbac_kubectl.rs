//! RBAC end to end, with the real kubectl as three users: a viewer bound by
//! a RoleBinding to `view` in one namespace, an editor bound cluster-wide
//! to `edit` (which a custom ClusterRole is aggregated into), and someone
//! bound to nothing. `kubectl auth can-i`, `--list` and `whoami` answer as
//! on a cluster, refusals carry the API server's 403 text, and bindings and
//! aggregated roles take effect on the next request.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use idsync_devcluster::{Config, DevCluster};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

/// The kubectls the devcluster is tested with: `$KUBECTL` or the one on
/// PATH, and 1.35 where `scripts/test` installed it.
fn kubectls() -> Vec<PathBuf> {
    let mut all = vec![std::env::var_os("KUBECTL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("kubectl"))];
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let tools = std::env::var_os("IDSYNC_TOOLS").map(PathBuf::from).unwrap_or_else(|| home.join(".cache/idsync-tools"));
    let v35 = tools.join("kubectl-v35/kubectl");
    if v35.exists() {
        all.push(v35);
    }
    all
}

/// A devcluster, its users and a kubeconfig with a context per user.
struct Cluster {
    cluster: DevCluster,
    dir: PathBuf,
    kubectl: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    async fn start(kubectl: &Path) -> Cluster {
        let cluster = DevCluster::start(Config::default()).await.expect("devcluster starts");
        let dir = std::env::temp_dir().join(format!("devcluster-rbac-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let users: Vec<(String, String)> = [("vera", &["viewers"][..]), ("eddie", &[]), ("nina", &[])]
            .into_iter()
            .map(|(name, groups)| (name.to_string(), cluster.add_user(name, groups)))
            .collect();
        let pairs: Vec<(&str, &str)> = users.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
        std::fs::write(dir.join("kubeconfig"), cluster.kubeconfig_yaml_with_users(&pairs)).expect("kubeconfig");
        Cluster { cluster, dir, kubectl: kubectl.to_path_buf() }
    }

    /// kubectl as `user` ("admin" for the kubeconfig's own context).
    async fn kubectl(&self, user: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let context = if user == "admin" { "idsync-dev".to_string() } else { format!("idsync-dev-{user}") };
        let mut command = Command::new(&self.kubectl);
        command
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env("KUBECACHEDIR", self.dir.join("cache"))
            .env("HOME", &self.dir)
            .arg("--context")
            .arg(&context)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stdin = stdin.map(str::to_string);
        // The devcluster answers on this runtime's other threads while
        // kubectl runs on a blocking one.
        let run = tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().expect("kubectl runs");
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(text.as_bytes()).expect("stdin");
            }
            child.wait_with_output().expect("kubectl output")
        });
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in 60 s"))
            .expect("kubectl joined")
    }

    async fn ok(&self, user: &str, args: &[&str]) -> String {
        let output = self.kubectl(user, args, None).await;
        assert!(output.status.success(), "kubectl {args:?} as {user} failed: {}", text(&output.stderr));
        text(&output.stdout)
    }

    async fn apply(&self, yaml: &str) {
        let output = self.kubectl("admin", &["apply", "-f", "-"], Some(yaml)).await;
        assert!(output.status.success(), "apply failed: {}", text(&output.stderr));
    }

    /// `kubectl auth can-i ARGS` as `user`: "yes" or "no" (exit 0 or 1).
    async fn can_i(&self, user: &str, args: &[&str]) -> bool {
        let output = self.kubectl(user, &[&["auth", "can-i"], args].concat(), None).await;
        let answer = text(&output.stdout).trim().to_string();
        match (output.status.code(), answer.as_str()) {
            (Some(0), "yes") => true,
            (Some(1), "no") => false,
            other => panic!("can-i {args:?} as {user}: {other:?} {}", text(&output.stderr)),
        }
    }

    /// The rules of a stored ClusterRole, as `kubectl get -o json` shows them.
    async fn rules_of(&self, role: &str) -> Vec<serde_json::Value> {
        let json = self.ok("admin", &["get", "clusterrole", role, "-o", "json"]).await;
        let role: serde_json::Value = serde_json::from_str(&json).expect("json");
        role["rules"].as_array().cloned().unwrap_or_default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const SETUP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: vera-view, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: User, name: vera, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: eddie-edit}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects: [{kind: User, name: eddie, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: leases-edit
  labels: {rbac.authorization.k8s.io/aggregate-to-edit: "true"}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch, delete]
"#;

/// A ClusterRole that adds reading Leases to `view` (and so to `edit` and
/// `admin`, which aggregate `view`).
const LEASE_VIEWER: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: leases-view
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_users_are_authorized_by_roles_bindings_and_aggregation() {
    for kubectl in kubectls() {
        let c = Cluster::start(&kubectl).await;
        c.apply(SETUP).await;

        // The RBAC kinds print as the API server's table printers print them.
        let bindings = c.ok("admin", &["get", "rolebindings", "-n", "dev", "-o", "wide"]).await;
        let row = bindings.lines().find(|l| l.starts_with("vera-view")).unwrap_or_else(|| panic!("{bindings}"));
        assert!(row.contains("ClusterRole/view") && row.trim_end().ends_with("vera"), "{bindings}");
        let roles = c.ok("admin", &["get", "clusterroles"]).await;
        assert!(roles.starts_with("NAME") && roles.lines().next().is_some_and(|h| h.contains("CREATED AT")), "{roles}");

        // can-i, per user and namespace.
        assert!(c.can_i("vera", &["get", "configmaps", "-n", "dev"]).await);
        assert!(c.can_i("vera", &["list", "events.events.k8s.io", "-n", "dev"]).await);
        assert!(!c.can_i("vera", &["get", "configmaps", "-n", "prod"]).await, "bound in dev only");
        assert!(!c.can_i("vera", &["create", "configmaps", "-n", "dev"]).await, "view does not write");
        assert!(!c.can_i("vera", &["get", "secrets", "-n", "dev"]).await, "view does not read secrets");
        assert!(c.can_i("eddie", &["create", "configmaps", "-n", "prod"]).await, "edit is bound cluster-wide");
        assert!(c.can_i("eddie", &["get", "secrets", "-n", "dev"]).await);
        assert!(c.can_i("eddie", &["create", "leases", "-n", "prod"]).await, "aggregated into edit");
        assert!(!c.can_i("eddie", &["create", "clusterroles"]).await);
        assert!(!c.can_i("nina", &["get", "configmaps", "-n", "dev"]).await);
        assert!(c.can_i("admin", &["*", "*"]).await, "the kubeconfig's user is cluster-admin");

        // Refusals carry the API server's words.
        let listed = c.kubectl("nina", &["get", "configmaps", "-n", "dev"], None).await;
        assert!(!listed.status.success());
        assert!(
            text(&listed.stderr).contains(
                "Error from server (Forbidden): configmaps is forbidden: User \"nina\" cannot list resource \
                 \"configmaps\" in API group \"\" in the namespace \"dev\""
            ),
            "{}",
            text(&listed.stderr)
        );
        let created = c.kubectl("vera", &["create", "configmap", "settings", "-n", "dev"], None).await;
        assert!(!created.status.success());
        assert!(
            text(&created.stderr).contains(
                "configmaps is forbidden: User \"vera\" cannot create resource \"configmaps\" in API group \"\" \
                 in the namespace \"dev\""
            ),
            "{}",
            text(&created.stderr)
        );
        c.ok("vera", &["get", "configmaps", "-n", "dev"]).await;
        let made = c.cluster.accesses("vera");
        assert!(made.iter().any(|a| (a.verb.as_str(), a.resource.as_str()) == ("list", "configmaps")), "{made:?}");
        assert!(
            !made.iter().any(|a| (a.verb.as_str(), a.resource.as_str()) == ("create", "configmaps")),
            "a refused call is not tallied: {made:?}"
        );

        // A binding takes effect on the next request, and so does its removal.
        c.ok("admin", &["create", "rolebinding", "nina-view", "--clusterrole=view", "--user=nina", "-n", "dev"]).await;
        assert!(c.can_i("nina", &["get", "configmaps", "-n", "dev"]).await);
        c.ok("nina", &["get", "configmaps", "-n", "dev"]).await;
        c.ok("admin", &["delete", "rolebinding", "nina-view", "-n", "dev"]).await;
        assert!(!c.can_i("nina", &["get", "configmaps", "-n", "dev"]).await);

        // Aggregation: a labelled ClusterRole's rules join view (and edit,
        // which aggregates view), and leave it with the role.
        let reads_leases = |rules: &[serde_json::Value]| rules.iter().any(|r| r["resources"][0] == "leases");
        assert!(!reads_leases(&c.rules_of("view").await));
        assert!(!c.can_i("vera", &["get", "leases", "-n", "dev"]).await);
        c.apply(LEASE_VIEWER).await;
        assert!(reads_leases(&c.rules_of("view").await), "view aggregates leases-view");
        assert!(reads_leases(&c.rules_of("admin").await), "admin aggregates edit, which aggregates view");
        assert!(c.can_i("vera", &["get", "leases", "-n", "dev"]).await);
        c.ok("admin", &["delete", "clusterrole", "leases-view"]).await;
        assert!(!reads_leases(&c.rules_of("view").await), "its rules leave view with it");
        assert!(!c.can_i("vera", &["get", "leases", "-n", "dev"]).await);

        // `can-i --list` lists what the namespace grants.
        let listed = c.ok("vera", &["auth", "can-i", "--list", "-n", "dev"]).await;
        let line = |resource: &str| listed.lines().find(|l| l.split_whitespace().next() == Some(resource));
        let configmaps = line("configmaps").unwrap_or_else(|| panic!("configmaps listed:\n{listed}"));
        assert!(configmaps.ends_with("[get list watch]"), "{configmaps}");
        assert!(line("secrets").is_none(), "{listed}");
        assert!(line("selfsubjectaccessreviews.authorization.k8s.io").is_some(), "{listed}");
        let elsewhere = c.ok("vera", &["auth", "can-i", "--list", "-n", "prod"]).await;
        assert!(!elsewhere.contains("configmaps"), "{elsewhere}");

        // whoami shows the user's groups.
        let whoami = c.ok("vera", &["auth", "whoami", "-o", "json"]).await;
        let review: serde_json::Value = serde_json::from_str(&whoami).expect("json");
        assert_eq!(review["status"]["userInfo"]["username"], "vera");
        assert_eq!(review["status"]["userInfo"]["groups"], serde_json::json!(["viewers", "system:authenticated"]));
        let admin = c.ok("admin", &["auth", "whoami", "-o", "json"]).await;
        assert!(admin.contains("kubeadm:cluster-admins"), "{admin}");
    }
}

/// The reason of an access review names the binding, role and subject, as
/// the RBAC authorizer words it.
#[tokio::test]
async fn an_access_review_says_which_binding_allowed_it() {
    let cluster = DevCluster::start(Config::default()).await.expect("devcluster starts");
    let token = cluster.add_user("vera", &["viewers"]);
    let admin = cluster.client().expect("client");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "viewers", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": "viewers", "apiGroup": "rbac.authorization.k8s.io"}]
    }))
    .expect("binding");
    Api::namespaced(admin, "default").create(&PostParams::default(), &binding).await.expect("created");

    let vera = cluster.client_for_token(&token).expect("client");
    let reviews: Api<SelfSubjectAccessReview> = Api::all(vera);
    let ask = |verb: &str| SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_string()),
                resource: Some("configmaps".to_string()),
                namespace: Some("default".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let allowed = reviews.create(&PostParams::default(), &ask("list")).await.expect("answered");
    let status = allowed.status.expect("status");
    assert!(status.allowed);
    assert_eq!(
        status.reason.as_deref(),
        Some("RBAC: allowed by RoleBinding \"viewers/default\" of ClusterRole \"view\" to Group \"viewers\"")
    );
    let denied = reviews.create(&PostParams::default(), &ask("delete")).await.expect("answered");
    assert!(!denied.status.expect("status").allowed);
}

fn config_map(name: &str) -> k8s_openapi::api::core::v1::ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("config map")
}

/// The kubeconfig's admin is no exception: it may do anything only through
/// the bootstrap ClusterRoleBinding of its group to `cluster-admin`.
#[tokio::test]
async fn the_admin_is_authorized_through_its_binding() {
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let cluster = DevCluster::start(Config::default()).await.expect("devcluster starts");
    let admin = cluster.client().expect("client");
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(admin.clone(), "default");
    maps.create(&PostParams::default(), &config_map("before")).await.expect("admin may");
    let bindings: Api<ClusterRoleBinding> = Api::all(admin);
    bindings.delete("kubeadm:cluster-admins", &Default::default()).await.expect("deleted");
    let refused = maps.create(&PostParams::default(), &config_map("after")).await.expect_err("no longer");
    let kube::Error::Api(status) = refused else { panic!("an API error: {refused:?}") };
    assert_eq!(
        status.message,
        "configmaps is forbidden: User \"kubernetes-admin\" cannot create resource \"configmaps\" in API group \"\" \
         in the namespace \"default\""
    );
}

/// A service account's name matches ServiceAccount subjects (namespaced by
/// the RoleBinding when the subject names none) and carries its groups.
#[tokio::test]
async fn a_service_account_is_bound_as_a_service_account() {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let cluster = DevCluster::start(Config::default()).await.expect("devcluster starts");
    let admin = cluster.client().expect("client");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bot-edit", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "bot"}]
    }))
    .expect("binding");
    Api::namespaced(admin, "default").create(&PostParams::default(), &binding).await.expect("created");

    let bot = cluster.client_for_token(&cluster.add_user("system:serviceaccount:default:bot", &[])).expect("client");
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(bot.clone(), "default");
    maps.create(&PostParams::default(), &config_map("made-by-bot")).await.expect("edit allows it");
    let elsewhere: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(bot.clone(), "kube-system");
    assert!(elsewhere.create(&PostParams::default(), &config_map("x")).await.is_err(), "only in its namespace");
    let other =
        cluster.client_for_token(&cluster.add_user("system:serviceaccount:kube-system:bot", &[])).expect("client");
    let as_other: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(other, "default");
    assert!(as_other.create(&PostParams::default(), &config_map("y")).await.is_err(), "another namespace's bot");

    let whoami: Api<SelfSubjectReview> = Api::all(bot);
    let me = whoami.create(&PostParams::default(), &SelfSubjectReview::default()).await.expect("answered");
    let groups = me.status.and_then(|s| s.user_info).and_then(|u| u.groups).unwrap_or_default();
    assert_eq!(groups, ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"]);
}
