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
    let chart = common::repo("charts/idsync").display().to_string();
    let mut args = vec!["template", "store-test", chart.as_str()];
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
    assert_eq!(volume, "store-test-store");

    let reused = render(&["--set", "store.existingClaim=idsync-store-2025"]);
    assert!(of_kind(&reused, "PersistentVolumeClaim").is_empty(), "no new claim");
    let deployment = of_kind(&reused, "Deployment")[0];
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "idsync-store-2025"
    );
}
