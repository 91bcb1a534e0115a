//! ValidatingAdmissionPolicy end to end: policies and bindings applied
//! with the real kubectl, requests made with kubectl (as the admin) and
//! kube clients (as users with their own RBAC rules), refused or warned
//! about as a real API server words it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use idsync_devcluster::{Config, DevCluster};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// The policy the chart ships (issue 13).
const CONFIRMATIONS: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: idsync-confirmations}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["idsync.dev"]
      apiVersions: ["*"]
      operations: ["CREATE"]
      resources: ["resyncrequests"]
  variables:
  - name: confirms
    expression: "object.spec.confirmDeletes || object.spec.applyPendingChanges"
  validations:
  - expression: "!variables.confirms || authorizer.group('idsync.dev').resource('resyncrequests').namespace(object.metadata.namespace).check('confirm').allowed()"
    messageExpression: "'confirmDeletes and applyPendingChanges need the confirm verb on resyncrequests (the idsync-admin role); ' + request.userInfo.username + ' does not have it'"
    reason: Forbidden
  - expression: "!has(object.spec.requestedBy) || object.spec.requestedBy == request.userInfo.username"
    messageExpression: "'spec.requestedBy must be the creating user, ' + request.userInfo.username"
  - expression: "!variables.confirms || has(object.spec.requestedBy)"
    message: "a confirmation must say who confirms: set spec.requestedBy"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: idsync-confirmations}
spec:
  policyName: idsync-confirmations
  validationActions: [Deny]
"#;

const DENIED: &str =
    "ValidatingAdmissionPolicy 'idsync-confirmations' with binding 'idsync-confirmations' denied request";

struct Harness {
    cluster: DevCluster,
    kubeconfig: PathBuf,
    _dir: TempDir,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a kubectl run printed.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Harness {
    async fn start() -> Harness {
        let dir = std::env::temp_dir().join(format!("devcluster-vap-{}", uuid::Uuid::new_v4().simple()));
        let kubeconfig = dir.join("kubeconfig");
        let config = Config { kubeconfig: Some(kubeconfig.clone()), ..Config::default() };
        let cluster = DevCluster::start(config).await.expect("devcluster starts");
        Harness { cluster, kubeconfig, _dir: TempDir(dir) }
    }

    /// Runs the real kubectl 1.35 as the admin, with `stdin` piped in.
    async fn kubectl(&self, args: &[&str], stdin: &str) -> Output {
        let kubeconfig = self.kubeconfig.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let stdin = stdin.to_string();
        tokio::task::spawn_blocking(move || run_kubectl(&kubeconfig, &args, &stdin)).await.expect("kubectl ran")
    }

    async fn kubectl_ok(&self, args: &[&str], stdin: &str) -> Output {
        let out = self.kubectl(args, stdin).await;
        assert!(out.success, "kubectl {args:?} failed: {}{}", out.stdout, out.stderr);
        out
    }

    /// The ResyncRequest CRD and the chart's policy.
    async fn with_confirmations(&self) {
        let crd = repo("crds/resyncrequests.idsync.dev.yaml");
        self.kubectl_ok(&["apply", "-f", &crd.display().to_string()], "").await;
        self.kubectl_ok(&["apply", "-f", "-"], CONFIRMATIONS).await;
    }

    fn resync_requests(&self, client: kube::Client) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("idsync.dev", "v1alpha1", "ResyncRequest");
        Api::namespaced_with(client, "default", &ApiResource::from_gvk(&gvk))
    }

    fn user(&self, name: &str, verbs: &[&str]) -> kube::Client {
        let rule = PolicyRule {
            api_groups: Some(vec!["idsync.dev".to_string()]),
            resources: Some(vec!["resyncrequests".to_string()]),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            ..PolicyRule::default()
        };
        self.cluster.client_as(name, vec![rule]).expect("client")
    }
}

fn run_kubectl(kubeconfig: &Path, args: &[String], stdin: &str) -> Output {
    let kubectl = kubectl();
    let mut child = Command::new(&kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} cannot run: {e}", kubectl.display()));
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin written");
    }
    let out = child.wait_with_output().expect("kubectl finished");
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// kubectl 1.35, as `scripts/test` installs it.
fn kubectl() -> PathBuf {
    let base = std::env::var_os("IDSYNC_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/idsync-tools"));
    let kubectl = base.join("kubectl-v35/kubectl");
    assert!(kubectl.exists(), "{} is missing: run ./scripts/test once, which installs it", kubectl.display());
    kubectl
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn resync(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "idsync.dev/v1alpha1", "kind": "ResyncRequest",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec,
    }))
    .expect("a ResyncRequest")
}

fn confirming(requested_by: &str) -> Value {
    json!({"target": {"connections": ["hr"]}, "confirmDeletes": true, "requestedBy": requested_by})
}

/// The API's refusal of a kube call: (code, reason, message).
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone(), status.message.clone()),
        other => panic!("expected the API to refuse, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_may_confirm_and_a_user_without_the_confirm_verb_is_refused_with_403() {
    let h = Harness::start().await;
    h.with_confirmations().await;
    let listed =
        h.kubectl_ok(&["get", "validatingadmissionpolicies,validatingadmissionpolicybindings", "-o", "name"], "").await;
    assert_eq!(
        listed.stdout,
        "validatingadmissionpolicy.admissionregistration.k8s.io/idsync-confirmations\n\
         validatingadmissionpolicybinding.admissionregistration.k8s.io/idsync-confirmations\n"
    );

    let by_admin = serde_json::to_string(&resync("admin-confirms", confirming("kubernetes-admin"))).expect("json");
    h.kubectl_ok(&["create", "-f", "-"], &by_admin).await;

    let alice = h.resync_requests(h.user("alice", &["create", "get"]));
    let (code, reason, message) =
        refusal(alice.create(&PostParams::default(), &resync("alice-confirms", confirming("alice"))).await);
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        message,
        format!(
            "resyncrequests.idsync.dev \"alice-confirms\" is forbidden: {DENIED}: confirmDeletes and applyPendingChanges need the confirm verb on resyncrequests (the idsync-admin role); alice does not have it"
        )
    );
    let plain = json!({"target": {"connections": ["hr"]}, "requestedBy": "alice"});
    alice.create(&PostParams::default(), &resync("alice-syncs", plain)).await.expect("a plain request is allowed");

    let bob = h.resync_requests(h.user("bob", &["create", "get", "confirm"]));
    bob.create(&PostParams::default(), &resync("bob-confirms", confirming("bob"))).await.expect("bob may confirm");

    let stored = h.kubectl_ok(&["get", "resyncrequests", "-o", "name"], "").await;
    assert_eq!(
        stored.stdout,
        "resyncrequest.idsync.dev/admin-confirms\nresyncrequest.idsync.dev/alice-syncs\nresyncrequest.idsync.dev/bob-confirms\n"
    );

    // Without its binding a policy binds nothing.
    h.kubectl_ok(&["delete", "validatingadmissionpolicybinding", "idsync-confirmations"], "").await;
    alice
        .create(&PostParams::default(), &resync("alice-confirms", confirming("alice")))
        .await
        .expect("no binding, no refusal");
}

#[tokio::test(flavor = "multi_thread")]
async fn requested_by_must_name_the_creating_user_and_a_confirmation_must_have_it() {
    let h = Harness::start().await;
    h.with_confirmations().await;
    let mismatch = serde_json::to_string(&resync("pretends", confirming("alice"))).expect("json");
    let out = h.kubectl(&["create", "-f", "-"], &mismatch).await;
    assert!(!out.success);
    // kubectl words a 422 from its causes, as it does for a real cluster's.
    assert_eq!(
        out.stderr,
        format!(
            "The resyncrequests \"pretends\" is invalid: : {DENIED}: spec.requestedBy must be the creating user, kubernetes-admin\n"
        )
    );

    let bob = h.resync_requests(h.user("bob", &["create", "confirm"]));
    let anonymous = json!({"target": {"connections": ["hr"]}, "confirmDeletes": true});
    let (code, reason, message) = refusal(bob.create(&PostParams::default(), &resync("unsigned", anonymous)).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(
        message,
        format!(
            "resyncrequests.idsync.dev \"unsigned\" is forbidden: {DENIED}: a confirmation must say who confirms: set spec.requestedBy"
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_dry_run_is_refused_the_same_way_and_stores_nothing() {
    let h = Harness::start().await;
    h.with_confirmations().await;
    let mismatch = serde_json::to_string(&resync("pretends", confirming("alice"))).expect("json");
    let real = h.kubectl(&["create", "-f", "-"], &mismatch).await;
    let dry = h.kubectl(&["create", "--dry-run=server", "-f", "-"], &mismatch).await;
    assert!(!dry.success);
    assert_eq!(dry.stderr, real.stderr);

    let alice = h.resync_requests(h.user("alice", &["create", "get"]));
    let params = PostParams { dry_run: true, ..PostParams::default() };
    let (code, _, message) = refusal(alice.create(&params, &resync("alice-confirms", confirming("alice"))).await);
    assert_eq!(code, 403);
    assert!(message.contains("alice does not have it"), "{message}");

    let allowed = serde_json::to_string(&resync("fine", confirming("kubernetes-admin"))).expect("json");
    h.kubectl_ok(&["create", "--dry-run=server", "-f", "-"], &allowed).await;
    let stored = h.kubectl_ok(&["get", "resyncrequests", "-o", "name"], "").await;
    assert_eq!(stored.stdout, "", "a dry run stores nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warn_binding_warns_through_kubectl_and_lets_the_write_through() {
    let h = Harness::start().await;
    let policy = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: owner-label}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE", "UPDATE"], resources: ["configmaps"]}
  validations:
  - expression: "has(object.metadata.labels) && 'owner' in object.metadata.labels"
    messageExpression: "'configmaps in ' + namespaceObject.metadata.name + ' need an owner label'"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: owner-label-warn}
spec:
  policyName: owner-label
  validationActions: [Warn, Audit]
"#;
    h.kubectl_ok(&["apply", "-f", "-"], policy).await;
    let out = h.kubectl_ok(&["create", "configmap", "settings", "--from-literal=a=b"], "").await;
    assert_eq!(
        out.stderr,
        "Warning: Validation failed for ValidatingAdmissionPolicy 'owner-label' with binding 'owner-label-warn': configmaps in default need an owner label\n"
    );
    assert_eq!(out.stdout, "configmap/settings created\n");
    let labelled = h.kubectl_ok(&["label", "configmap", "settings", "owner=hr"], "").await;
    assert_eq!(labelled.stderr, "", "a passing update is not warned about");
}

/// A policy whose expression fails at runtime (a key the object lacks).
fn failing_policy(failure_policy: &str) -> String {
    format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: reads-missing}}
spec:
  failurePolicy: {failure_policy}
  matchConstraints:
    resourceRules:
    - {{apiGroups: [""], apiVersions: ["*"], operations: ["CREATE"], resources: ["configmaps"]}}
  validations:
  - expression: "object.data.missing == 'x'"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: reads-missing}}
spec:
  policyName: reads-missing
  validationActions: [Deny]
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_failure_policy_decides_what_an_expression_error_does() {
    let h = Harness::start().await;
    h.kubectl_ok(&["apply", "-f", "-"], &failing_policy("Fail")).await;
    let out = h.kubectl(&["create", "configmap", "one", "--from-literal=a=b"], "").await;
    assert!(!out.success);
    assert_eq!(
        out.stderr,
        "error: failed to create configmap: configmaps \"one\" is forbidden: ValidatingAdmissionPolicy 'reads-missing' with binding 'reads-missing' denied request: expression 'object.data.missing == 'x'' resulted in error: no such key: missing\n"
    );

    h.kubectl_ok(&["apply", "-f", "-"], &failing_policy("Ignore")).await;
    h.kubectl_ok(&["create", "configmap", "one", "--from-literal=a=b"], "").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(h.cluster.client().expect("client"), "default");
    assert!(configmaps.get_opt("one").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn match_conditions_skip_a_policy_for_the_requests_they_exclude() {
    let h = Harness::start().await;
    let policy = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: frozen}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: ["*"], operations: ["*"], resources: ["configmaps"]}
  matchConditions:
  - name: only-frozen
    expression: "object.metadata.name.startsWith('frozen-')"
  validations:
  - expression: "false"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: frozen}
spec:
  policyName: frozen
  validationActions: [Deny]
"#;
    h.kubectl_ok(&["apply", "-f", "-"], policy).await;
    h.kubectl_ok(&["create", "configmap", "thawed"], "").await;
    let out = h.kubectl(&["create", "configmap", "frozen-a"], "").await;
    assert!(!out.success);
    assert!(
        out.stderr.ends_with(
            "configmaps \"frozen-a\" is forbidden: ValidatingAdmissionPolicy 'frozen' with binding 'frozen' denied request: failed expression: false\n"
        ),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_is_judged_by_the_old_object() {
    let h = Harness::start().await;
    let policy = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: keep-protected}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: ["*"], operations: ["DELETE"], resources: ["configmaps"]}
  validations:
  - expression: "object == null && request.operation == 'DELETE' && !(has(oldObject.metadata.labels) && oldObject.metadata.labels['protected'] == 'true')"
    messageExpression: "oldObject.metadata.name + ' is protected'"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: keep-protected}
spec:
  policyName: keep-protected
  validationActions: [Deny]
"#;
    h.kubectl_ok(&["apply", "-f", "-"], policy).await;
    h.kubectl_ok(&["create", "configmap", "vault"], "").await;
    h.kubectl_ok(&["label", "configmap", "vault", "protected=true"], "").await;
    h.kubectl_ok(&["create", "configmap", "scratch"], "").await;

    let out = h.kubectl(&["delete", "configmap", "vault"], "").await;
    assert!(!out.success);
    assert_eq!(
        out.stderr,
        "Error from server (Forbidden): configmaps \"vault\" is forbidden: ValidatingAdmissionPolicy 'keep-protected' with binding 'keep-protected' denied request: vault is protected\n"
    );
    let dry = h.kubectl(&["delete", "configmap", "vault", "--dry-run=server"], "").await;
    assert_eq!(dry.stderr, out.stderr, "a dry-run delete is refused the same way");
    // kubectl deletes `--all` one by one: the others go, the protected one stays.
    let everything = h.kubectl(&["delete", "configmaps", "--all"], "").await;
    assert!(!everything.success, "deleting every configmap includes the protected one");
    let names = h.kubectl_ok(&["get", "configmaps", "-o", "name"], "").await;
    assert_eq!(names.stdout, "configmap/vault\n");

    // A deletecollection is refused as a whole when it includes it.
    let configmaps: Api<ConfigMap> = Api::namespaced(h.cluster.client().expect("client"), "default");
    let (code, _, message) =
        refusal(configmaps.delete_collection(&DeleteParams::default(), &ListParams::default()).await);
    assert_eq!(code, 403);
    assert!(message.ends_with("denied request: vault is protected"), "{message}");
    assert!(configmaps.get_opt("vault").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_that_does_not_compile_is_refused_naming_it() {
    let h = Harness::start().await;
    let broken = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: broken}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: ["*"], apiVersions: ["*"], operations: ["*"], resources: ["*"]}
  validations:
  - expression: "object.spec.replicas <"
"#;
    let out = h.kubectl(&["apply", "-f", "-"], broken).await;
    assert!(!out.success);
    assert!(
        out.stderr.starts_with(
            "The ValidatingAdmissionPolicy \"broken\" is invalid: spec.validations[0].expression: Invalid value: \"object.spec.replicas <\": compilation failed: ERROR: <input>:1:23: Syntax error: mismatched input '<EOF>'"
        ),
        "{}",
        out.stderr
    );
    let listed = h.kubectl_ok(&["get", "validatingadmissionpolicies", "-o", "name"], "").await;
    assert_eq!(listed.stdout, "", "nothing stored");
    h.kubectl_ok(&["create", "configmap", "unaffected"], "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_reads_its_parameters_from_the_object_its_binding_names() {
    let h = Harness::start().await;
    let policy = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: max-keys}
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE", "UPDATE"], resources: ["configmaps"]}
  validations:
  - expression: "size(object.data) <= int(params.data.maxKeys)"
    messageExpression: "'at most ' + params.data.maxKeys + ' keys in ' + object.metadata.name"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: max-keys}
spec:
  policyName: max-keys
  validationActions: [Deny]
  paramRef: {name: limits, parameterNotFoundAction: Deny}
  matchResources:
    objectSelector: {matchLabels: {limited: "true"}}
"#;
    h.kubectl_ok(&["apply", "-f", "-"], policy).await;
    let big = r#"{"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "big", "labels": {"limited": "true"}}, "data": {"a": "1", "b": "2", "c": "3"}}"#;
    let without = h.kubectl(&["create", "-f", "-"], big).await;
    assert_eq!(
        without.stderr,
        "The configmaps \"big\" is invalid: : ValidatingAdmissionPolicy 'max-keys' with binding 'max-keys' denied request: failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction\n"
    );

    h.kubectl_ok(&["create", "configmap", "limits", "--from-literal=maxKeys=2"], "").await;
    let over = h.kubectl(&["create", "-f", "-"], big).await;
    assert_eq!(
        over.stderr,
        "The configmaps \"big\" is invalid: : ValidatingAdmissionPolicy 'max-keys' with binding 'max-keys' denied request: at most 2 keys in big\n"
    );
    let small = big.replace(r#", "c": "3""#, "");
    h.kubectl_ok(&["create", "-f", "-"], &small).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_variable_describes_the_write_and_its_user() {
    let h = Harness::start().await;
    let policy = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: describe}
spec:
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: ["v1"], operations: ["*"], resources: ["configmaps"]}
  validations:
  - expression: "false"
    messageExpression: >-
      request.operation + ' ' + request.kind.kind + ' ' + request.resource.resource + ' ' + request.namespace + '/' +
      request.name + ' dryRun=' + (request.dryRun ? 'yes' : 'no') + ' ' + request.options.kind + ' ' +
      request.options.?fieldManager.orValue('none') + ' by ' +
      request.userInfo.username + ' in ' + request.userInfo.groups.join(',') + ' old=' + (oldObject != null ? 'yes' : 'no')
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: describe}
spec:
  policyName: describe
  validationActions: [Warn]
"#;
    h.kubectl_ok(&["apply", "-f", "-"], policy).await;
    let prefix = "Warning: Validation failed for ValidatingAdmissionPolicy 'describe' with binding 'describe': ";
    let created = h.kubectl_ok(&["create", "configmap", "c", "--dry-run=server"], "").await;
    assert_eq!(
        created.stderr,
        format!(
            "{prefix}CREATE ConfigMap configmaps default/c dryRun=yes CreateOptions kubectl-create by kubernetes-admin in kubeadm:cluster-admins,system:authenticated old=no\n"
        )
    );
    h.kubectl_ok(&["create", "configmap", "c"], "").await;
    let labelled = h.kubectl_ok(&["label", "configmap", "c", "x=y"], "").await;
    assert_eq!(
        labelled.stderr,
        format!(
            "{prefix}UPDATE ConfigMap configmaps default/c dryRun=no UpdateOptions kubectl-label by kubernetes-admin in kubeadm:cluster-admins,system:authenticated old=yes\n"
        )
    );
}
