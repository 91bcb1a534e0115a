//! The Helm chart as `helm` renders it (the helm binary `scripts/test`
//! installs): it lints strictly, keeps the store's claim on uninstall, can
//! reuse an existing claim, runs exactly one pod, and meets Pod Security
//! "restricted".

use crate::common;

use std::process::Command;

fn helm(args: &[&str]) -> String {
    let out = Command::new(common::tool("kubectl-v35/helm")).args(args).output().expect("helm runs");
    assert!(out.status.success(), "helm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rendered documents as JSON.
fn render(extra: &[&str]) -> Vec<serde_json::Value> {
    render_release("store-test", extra)
}

fn render_release(release: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let chart = common::repo("charts/idsync").display().to_string();
    let mut args = vec!["template", release, chart.as_str()];
    args.extend_from_slice(extra);
    helm(&args)
        .split("\n---")
        .filter_map(|doc| yaml_serde::from_str::<serde_json::Value>(doc).ok())
        .filter(|doc| doc.is_object())
        .collect()
}

fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_chart_keeps_the_store_runs_one_restricted_pod() {
    let chart = common::repo("charts/idsync").display().to_string();
    helm(&["lint", "--strict", &chart]);

    let docs = render(&[]);
    let claims = of_kind(&docs, "PersistentVolumeClaim");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "kept on uninstall");
    let deployment = of_kind(&docs, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    // Pod Security "restricted", field by field.
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_u64().is_some_and(|uid| uid > 0), "a numeric non-root user");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    for container in pod["containers"].as_array().expect("containers") {
        let context = &container["securityContext"];
        assert_eq!(context["allowPrivilegeEscalation"], false);
        assert_eq!(context["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(context["readOnlyRootFilesystem"], true);
    }
    let volume = &deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"];
    assert_eq!(volume, "store-test-idsync-store", "release-prefixed");

    let reused = render(&["--set", "store.existingClaim=idsync-store-2025"]);
    assert!(of_kind(&reused, "PersistentVolumeClaim").is_empty(), "no new claim");
    let deployment = of_kind(&reused, "Deployment")[0];
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "idsync-store-2025"
    );
}

/// With store.postgres the chart runs replicas that share the syncs: no
/// volume, the URL, password and CA from Secrets (never in the rendered
/// text), a rolling update, a PodDisruptionBudget and the pods spread over
/// nodes; more than one replica without PostgreSQL is refused with a
/// message that says why.
#[test]
fn the_chart_runs_replicas_on_postgres_with_a_budget_and_spread() {
    let docs = render(&[
        "--set",
        "replicas=3",
        "--set",
        "store.postgres.urlSecret.name=ids-app",
        "--set",
        "store.postgres.passwordSecret.name=ids-app",
        "--set",
        "store.postgres.caSecret.name=ids-ca",
    ]);
    assert!(of_kind(&docs, "PersistentVolumeClaim").is_empty(), "no SQLite volume");
    let deployment = of_kind(&docs, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = container["args"].as_array().expect("args");
    assert!(!args.iter().any(|a| a.as_str().is_some_and(|a| a.starts_with("--data-dir"))), "{args:?}");
    let env = container["env"].as_array().expect("env");
    let var = |name: &str| env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} in {env:?}"));
    assert_eq!(var("IDSYNC_STORE")["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "ids-app", "key": "uri"}));
    assert_eq!(
        var("IDSYNC_STORE_PASSWORD")["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "ids-app", "key": "password"})
    );
    assert_eq!(var("IDSYNC_STORE_CA_FILE")["value"], "/etc/idsync/store-ca/ca.crt");
    // The member Lease is owned by the Pod: garbage-collected with it.
    assert_eq!(var("POD_UID")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.uid");
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "ids-ca");
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/idsync/store-ca");
    let spread = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(spread["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/name"], "idsync");
    let budgets = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(budgets.len(), 1);
    assert_eq!(budgets[0]["spec"]["maxUnavailable"], 1);
    assert_eq!(budgets[0]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "store-test");

    // A URL given as a value (no password in it) lands as it is; one pod
    // makes no budget and no spread.
    let single = render(&["--set", "store.postgres.url=postgres://idsync@db.example:5432/ids?sslmode=require"]);
    let deployment = of_kind(&single, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 1);
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"] == "IDSYNC_STORE"
                && e["value"] == "postgres://idsync@db.example:5432/ids?sslmode=require")
    );
    assert!(of_kind(&single, "PodDisruptionBudget").is_empty());
    assert!(deployment["spec"]["template"]["spec"]["affinity"].is_null());

    let chart = common::repo("charts/idsync").display().to_string();
    let out = Command::new(common::tool("kubectl-v35/helm"))
        .args(["template", "t", chart.as_str(), "--set", "replicas=2"])
        .output()
        .expect("helm runs");
    assert!(!out.status.success(), "two replicas on SQLite rendered");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("replicas > 1 needs store.postgres"), "{stderr}");
}

/// The access objects (roles, admission policy) `idsync dev` applies are the
/// chart's, field by field; names carry the release's prefix, so a release
/// called `admin` makes no ClusterRole `admin`; the admin role is never
/// aggregated; switching the parts off drops them.
#[test]
fn the_charts_roles_and_admission_policy_are_idsyncs_own() {
    let docs = render_release("idsync", &[]);
    let ours =
        idsync_api::access::roles("idsync", true).into_iter().chain(idsync_api::access::admission_policy("idsync"));
    for expected in ours {
        let name = expected["metadata"]["name"].as_str().expect("a name");
        let rendered = docs
            .iter()
            .find(|d| d["kind"] == expected["kind"] && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart renders no {} {name}", expected["kind"]));
        let field = if expected["kind"] == "ClusterRole" { "rules" } else { "spec" };
        assert_eq!(rendered[field], expected[field], "{name}: {field}");
        let aggregation = |doc: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
            let labels = doc["metadata"]["labels"].as_object().cloned().unwrap_or_default();
            labels.into_iter().filter(|(k, _)| k.starts_with("rbac.authorization.k8s.io/")).collect()
        };
        assert_eq!(aggregation(rendered), aggregation(&expected), "{name}: aggregation labels");
    }

    let admin = render_release("admin", &[]);
    let roles: Vec<&str> =
        of_kind(&admin, "ClusterRole").iter().filter_map(|r| r["metadata"]["name"].as_str()).collect();
    assert_eq!(roles, ["admin-idsync-viewer", "admin-idsync-requester", "admin-idsync-admin", "admin-idsync"]);

    let off = render(&["--set", "accessControl.roles=false", "--set", "accessControl.admissionPolicy=false"]);
    assert_eq!(of_kind(&off, "ClusterRole").len(), 1, "only the operator's own");
    assert!(of_kind(&off, "ValidatingAdmissionPolicy").is_empty());
    let unaggregated = render(&["--set", "accessControl.aggregateToDefaultRoles=false"]);
    assert!(
        of_kind(&unaggregated, "ClusterRole").iter().all(|r| r["metadata"]["labels"]
            .as_object()
            .is_none_or(|l| l.keys().all(|k| !k.starts_with("rbac.authorization.k8s.io/")))),
        "no aggregation labels"
    );
}

/// Mistyped or unknown values fail `helm template` (and so `helm install`)
/// with the schema's message instead of rendering something else; the
/// scheduling and extra settings land where they belong.
#[test]
fn the_values_schema_refuses_typos_and_the_extras_render() {
    let chart = common::repo("charts/idsync").display().to_string();
    for (set, says) in [
        ("storage.size=5Gi", "additional properties 'storage' not allowed"),
        ("logFormat=xml", "value must be one of 'json', 'text'"),
        ("accessControl.role=false", "additional properties 'role' not allowed"),
        ("image.pullPolicy=Sometimes", "value must be one of"),
        ("store.postgres.url=mysql://db/ids", "does not match pattern"),
        ("podAntiAffinity=always", "value must be one of"),
        ("store.postgres.passwordSecret.nam=x", "additional properties 'nam' not allowed"),
    ] {
        let out = Command::new(common::tool("kubectl-v35/helm"))
            .args(["template", "t", chart.as_str(), "--set", set])
            .output()
            .expect("helm runs");
        assert!(!out.status.success(), "{set} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{set}: {stderr}");
    }

    let docs = render(&[
        "--set",
        "nodeSelector.disk=ssd",
        "--set",
        "tolerations[0].key=dedicated",
        "--set",
        "extraArgs[0]=--max-concurrent-syncs=8",
        "--set",
        "extraEnv[0].name=HTTPS_PROXY",
        "--set",
        "extraEnv[0].value=http://proxy:3128",
        "--set",
        "podAnnotations.team=iam",
    ]);
    let pod = &of_kind(&docs, "Deployment")[0]["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["team"], "iam");
    assert_eq!(pod["spec"]["nodeSelector"]["disk"], "ssd");
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "dedicated");
    let container = &pod["spec"]["containers"][0];
    assert!(container["args"].as_array().expect("args").contains(&serde_json::json!("--max-concurrent-syncs=8")));
    assert!(container["env"].as_array().expect("env").iter().any(|e| e["name"] == "HTTPS_PROXY"));
}

/// Every object the chart renders (CRDs included), with default and with
/// every optional value set, is valid for each supported Kubernetes
/// version, strictly (no unknown fields), as kubernetes-validate (installed
/// by scripts/test) checks it against that version's schemas.
#[test]
fn the_rendered_chart_is_valid_for_kubernetes_1_33_to_1_35() {
    let chart = common::repo("charts/idsync").display().to_string();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let variants: [&[&str]; 3] = [
        &[],
        // PostgreSQL with three replicas: budget, spread, Secrets.
        &[
            "--set",
            "replicas=3",
            "--set",
            "store.postgres.urlSecret.name=ids-app",
            "--set",
            "store.postgres.passwordSecret.name=ids-app",
            "--set",
            "store.postgres.caSecret.name=ids-ca",
            "--set",
            "podAntiAffinity=hard",
        ],
        &[
            "--set",
            "store.existingClaim=kept",
            "--set",
            "accessControl.aggregateToDefaultRoles=false",
            "--set",
            "nodeSelector.disk=ssd",
            "--set",
            "tolerations[0].key=dedicated",
            "--set",
            "tolerations[0].operator=Exists",
            "--set",
            "extraEnv[0].name=HTTPS_PROXY",
            "--set",
            "extraEnv[0].value=http://proxy:3128",
        ],
    ];
    for (n, extra) in variants.iter().enumerate() {
        let mut args = vec!["template", "idsync", chart.as_str(), "--include-crds"];
        args.extend_from_slice(extra);
        let rendered = helm(&args);
        let objects = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
        let file = dir.path().join(format!("rendered-{n}.yaml"));
        std::fs::write(&file, &rendered).expect("write the rendering");
        for version in ["1.33.0", "1.34.0", "1.35.0"] {
            let out = Command::new(common::tool("kvalidate-venv/bin/kubernetes-validate"))
                .args(["--strict", "-k", version])
                .arg(&file)
                .output()
                .expect("kubernetes-validate runs");
            let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "variant {n}, Kubernetes {version}:\n{report}");
            let passed = report.lines().filter(|l| l.contains(" passed for resource ")).count();
            assert_eq!(passed, objects, "variant {n}, Kubernetes {version}: every object checked:\n{report}");
        }
    }
}

/// The documented CRD upgrade (docs/upgrade.md, NOTES.txt): CRDs that an
/// older release installed (Helm creates them; the "older" one here lacks
/// `applyPendingChanges`) are replaced with `kubectl apply --server-side
/// --force-conflicts -f crds/` from the new chart; objects already stored
/// stay readable and the new field is accepted at once.
#[tokio::test]
async fn the_crd_upgrade_path_replaces_older_crds_and_keeps_objects() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};

    let h = common::Harness::start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(h.client.clone());
    let helm = PostParams { field_manager: Some("helm".into()), ..Default::default() };
    for mut crd in idsync_api::crdgen::all() {
        if crd.metadata.name.as_deref() == Some("resyncrequests.idsync.dev") {
            let mut value = serde_json::to_value(&crd).expect("json");
            let spec = "/spec/versions/0/schema/openAPIV3Schema/properties/spec";
            let spec = value.pointer_mut(spec).expect("the spec schema");
            spec["properties"].as_object_mut().expect("properties").remove("applyPendingChanges");
            // The rule naming the field goes with it, as in the older release.
            spec["x-kubernetes-validations"]
                .as_array_mut()
                .expect("rules")
                .retain(|r| !r["rule"].as_str().unwrap_or_default().contains("applyPendingChanges"));
            crd = serde_json::from_value(value).expect("a CRD");
        }
        crds.create(&helm, &crd).await.expect("the older release's CRD");
    }
    let request = |name: &str, extra: serde_json::Value| {
        let mut spec = serde_json::json!({"target": {"profiles": ["employees"]}, "scope": "Identities"});
        spec.as_object_mut().expect("spec").extend(extra.as_object().cloned().unwrap_or_default());
        serde_json::json!({"apiVersion": "idsync.dev/v1alpha1", "kind": "ResyncRequest",
                           "metadata": {"name": name}, "spec": spec})
    };
    h.apply_json(request("before-upgrade", serde_json::json!({}))).await;

    let dir = common::repo("charts/idsync/crds").display().to_string();
    // Without --force-conflicts, server-side apply stops at Helm's fields.
    let out = h.kubectl(&["apply", "--server-side", "-f", &dir]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("with \"helm\" using apiextensions.k8s.io/v1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = h.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &dir]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    h.apply_json(request("after-upgrade", serde_json::json!({"applyPendingChanges": true}))).await;
    let requests: Api<idsync_api::ResyncRequest> = Api::namespaced(h.client.clone(), "default");
    assert!(requests.get("after-upgrade").await.expect("the new field").spec.apply_pending_changes);
    assert!(!requests.get("before-upgrade").await.expect("the stored object").spec.apply_pending_changes);
}

/// The optional Prometheus Operator objects: the ServiceMonitor selects the
/// metrics Service and names its port, and every metric an alert reads is
/// one idsync exports (a renamed metric would silently never fire).
#[test]
fn the_service_monitor_scrapes_the_service_and_the_alerts_read_real_metrics() {
    let docs =
        render(&["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true"]);
    let monitor = of_kind(&docs, "ServiceMonitor")[0];
    let service = of_kind(&docs, "Service")[0];
    let selector = monitor["spec"]["selector"]["matchLabels"].as_object().expect("a selector");
    for (key, value) in selector {
        assert_eq!(&service["metadata"]["labels"][key], value, "the Service carries {key}");
    }
    let port = monitor["spec"]["endpoints"][0]["port"].as_str().expect("a port name");
    assert!(service["spec"]["ports"].as_array().expect("ports").iter().any(|p| p["name"] == port));

    // Families appear once they hold a sample: record one of each kind.
    let metrics = idsync::metrics::Metrics::new();
    metrics.sync_finished("default/hr", "csv", "Failed", std::time::Duration::from_secs(1), 0, 0, 0);
    metrics.set_last_success("default/hr", jiff::Timestamp::now());
    metrics.set_accounts("default/hr", 3);
    metrics.notification_failed("default/mail", "Unreachable");
    metrics.set_leader(true);
    let exported = metrics.render();
    let families: Vec<&str> =
        exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let rule = of_kind(&docs, "PrometheusRule")[0];
    let mut checked = 0;
    for alert in rule["spec"]["groups"][0]["rules"].as_array().expect("rules") {
        let expr = alert["expr"].as_str().expect("an expression");
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("idsync_") {
                continue;
            }
            let family = ["_count", "_bucket", "_sum", "_total"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word);
            assert!(families.contains(&family), "{}: {word} is not a metric idsync exports", alert["alert"]);
            checked += 1;
        }
    }
    assert!(checked >= 5, "the alerts read idsync's metrics");
    assert!(of_kind(&render(&[]), "ServiceMonitor").is_empty(), "off by default");
}
