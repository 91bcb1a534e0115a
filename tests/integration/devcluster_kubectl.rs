//! The devcluster as the real kubectl sees it.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::{Harness, eventually, repo};
use idsync_api::Connection;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn with_examples() -> Harness {
    let h = Harness::start().await;
    h.install_crds().await;
    h.kubectl_ok(&["apply", "-R", "-f", &repo("examples").display().to_string()]).await;
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_applies_the_crds_and_every_example_and_lists_them_with_columns() {
    let h = with_examples().await;
    let out = h.kubectl_ok(&["get", "connections"]).await;
    let header = out.lines().next().expect("a header line");
    let columns: Vec<&str> = header.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    // Why a Connection is not ready, whether it is suspended and when it
    // syncs next are in the default columns; SYNCING is in -o wide.
    assert_eq!(
        columns,
        vec![
            "NAME",
            "PROVIDER",
            "CATEGORY",
            "READY",
            "STATUS",
            "SUSPENDED",
            "LAST SYNC",
            "NEXT SYNC",
            "ACCOUNTS",
            "AGE"
        ]
    );
    assert!(!out.contains("<invalid>"), "a future time shown as an age:\n{out}");
    let wide = h.kubectl_ok(&["get", "connections", "-o", "wide"]).await;
    assert!(wide.lines().next().is_some_and(|h| h.contains("SYNCING")), "{wide}");
    let hris = out.lines().find(|l| l.starts_with("hris ")).expect("hris listed");
    let cells: Vec<&str> = hris.split_whitespace().collect();
    assert_eq!(&cells[..3], &["hris", "csv", "HRIS"], "{hris}");
    let examples = idsync::manifest::load_dir(&repo("examples")).expect("examples");
    let connections = examples.iter().filter(|d| d.kind() == "Connection").count();
    assert_eq!(out.lines().count(), 1 + connections, "{out}");

    let all = h.kubectl_ok(&["get", "idsync", "-A"]).await;
    for name in [
        "connection.idsync.dev/okta-prod",
        "identityprofile.idsync.dev/employees",
        "resyncrequest.idsync.dev/resync-all",
    ] {
        assert!(all.contains(name.split('/').nth(1).unwrap_or(name)), "{name} missing from:\n{all}");
    }
    let short = h.kubectl_ok(&["get", "rr", "-o", "name"]).await;
    assert!(short.contains("resyncrequest.idsync.dev/resync-all"), "{short}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_patch_changes_status_and_not_generation() {
    let h = with_examples().await;
    let before = h.kubectl_ok(&["get", "conn", "hris", "-o", "jsonpath={.metadata.generation}"]).await;
    h.kubectl_ok(&[
        "patch",
        "conn",
        "hris",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"accountCount":412}}"#,
    ])
    .await;
    let after =
        h.kubectl_ok(&["get", "conn", "hris", "-o", "jsonpath={.metadata.generation} {.status.accountCount}"]).await;
    assert_eq!(after, format!("{before} 412"));
    // A spec change through the main resource does move it, and cannot touch status.
    h.kubectl_ok(&[
        "patch",
        "conn",
        "hris",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true},"status":{"accountCount":1}}"#,
    ])
    .await;
    let moved =
        h.kubectl_ok(&["get", "conn", "hris", "-o", "jsonpath={.metadata.generation} {.status.accountCount}"]).await;
    assert_eq!(moved, format!("{} 412", before.parse::<i64>().expect("a number") + 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_side_apply_works_and_records_the_manager() {
    let h = Harness::start().await;
    h.install_crds().await;
    let file = repo("examples/connections/github.yaml").display().to_string();
    let out = h.kubectl_ok(&["apply", "--server-side", "-f", &file]).await;
    assert!(out.contains("connection.idsync.dev/github serverside-applied"), "{out}");
    let managers = h
        .kubectl_ok(&[
            "get",
            "conn",
            "github",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ])
        .await;
    assert!(managers.contains("kubectl"), "{managers}");
    // Applying again with a changed field updates it.
    let changed = std::fs::read_to_string(&file).expect("example").replace("pageSize: 100", "pageSize: 50");
    let changed_path = h.dir.path().join("github.yaml");
    std::fs::write(&changed_path, changed).expect("write");
    h.kubectl_ok(&["apply", "--server-side", "-f", &changed_path.display().to_string()]).await;
    let size = h.kubectl_ok(&["get", "conn", "github", "-o", "jsonpath={.spec.pageSize}"]).await;
    assert_eq!(size, "50");
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_watch_sees_a_change_made_by_another_client() {
    let h = with_examples().await;
    let mut watch = h
        .kubectl_command()
        .args(["get", "conn", "--watch", "-o", r#"jsonpath={.metadata.name}={.status.accountCount}{"\n"}"#])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch starts");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    // The initial state arrives first.
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("initial list");
    assert!(first.expect("readable").is_some());

    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    api.patch_status("okta-prod", &PatchParams::default(), &Patch::Merge(json!({"status": {"accountCount": 4242}})))
        .await
        .expect("status patch");
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "okta-prod=4242" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "kubectl --watch did not print the change");
    let _ = watch.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_delete_waits_for_the_last_finalizer() {
    let h = with_examples().await;
    h.kubectl_ok(&[
        "patch",
        "conn",
        "entra",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["idsync.dev/cleanup"]}}"#,
    ])
    .await;
    let mut delete = h
        .kubectl_command()
        .args(["delete", "conn", "entra", "--timeout=30s"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    // Marked for deletion but still there while the finalizer remains.
    let marked = eventually(Duration::from_secs(10), || async {
        let out = h.kubectl(&["get", "conn", "entra", "-o", "jsonpath={.metadata.deletionTimestamp}"]).await;
        (!String::from_utf8_lossy(&out.stdout).is_empty()).then_some(())
    })
    .await;
    assert!(marked.is_some(), "deletionTimestamp was not set");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(delete.try_wait().expect("poll").is_none(), "kubectl delete returned before the finalizer was removed");

    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    api.patch("entra", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .expect("finalizer removed");
    let status = tokio::time::timeout(Duration::from_secs(20), delete.wait())
        .await
        .expect("kubectl delete finishes")
        .expect("exit");
    assert!(status.success());
    let gone = h.kubectl(&["get", "conn", "entra"]).await;
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&gone.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_manifest_is_refused_naming_the_field() {
    let h = Harness::start().await;
    h.install_crds().await;
    for (file, field) in [
        ("tests/invalid/connection-delete-percent-over-100.yaml", "spec.importSafeguard.maxDeletePercent"),
        ("tests/invalid/resync-confirm-deletes-for-all.yaml", "spec.confirmDeletes"),
        ("tests/invalid/connection-misspelled-field.yaml", "spec.pagesize"),
        // Numbers beyond what the operator's arithmetic takes.
        ("tests/invalid/resync-ttl-beyond-a-year.yaml", "spec.ttlSecondsAfterFinished"),
        ("tests/invalid/connection-huge-page-size.yaml", "spec.pageSize"),
        ("tests/invalid/connection-max-delete-count-1e23.yaml", "spec.importSafeguard.maxDeleteCount"),
        ("tests/invalid/connection-timeout-over-ten-minutes.yaml", "spec.requestTimeoutSeconds"),
        ("tests/invalid/connection-sync-longer-than-a-day.yaml", "spec.maxSyncDurationMinutes"),
    ] {
        let out = h.kubectl(&["apply", "-f", &repo(file).display().to_string()]).await;
        assert!(!out.status.success(), "{file} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(field), "{file}: kubectl said {stderr:?}");
    }
    // The immutable ResyncRequest spec.
    h.kubectl_ok(&["apply", "-f", &repo("examples/resync/all-connections.yaml").display().to_string()]).await;
    let out = h.kubectl(&["patch", "rr", "resync-all", "--type=merge", "-p", r#"{"spec":{"mode":"Full"}}"#]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec is immutable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_describe_shows_the_events_idsync_records() {
    let h = with_examples().await;
    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let hris = connections.get("hris").await.expect("hris");
    let event: Event = serde_json::from_value(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "hris.sync-1", "namespace": "default"},
        "eventTime": "2026-11-22T02:00:00.000000Z",
        "regarding": {"apiVersion": "idsync.dev/v1alpha1", "kind": "Connection", "name": "hris", "namespace": "default",
                      "uid": hris.metadata.uid.clone().expect("uid")},
        "reason": "SyncSucceeded", "note": "created 4, updated 0, deleted 0, unchanged 0", "type": "Normal",
        "action": "Sync", "reportingController": "idsync.dev/operator", "reportingInstance": "idsync-0"
    }))
    .expect("an Event");
    let events: Api<Event> = Api::namespaced(h.client.clone(), "default");
    events.create(&PostParams::default(), &event).await.expect("event recorded");
    let out = h.kubectl_ok(&["describe", "connection", "hris"]).await;
    let events_section = out.split("Events:").nth(1).unwrap_or_else(|| panic!("no Events section:\n{out}"));
    assert!(events_section.contains("SyncSucceeded"), "{out}");
    assert!(events_section.contains("created 4, updated 0"), "{out}");
    assert!(events_section.contains("idsync.dev/operator"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_the_token_is_unauthorized() {
    let h = Harness::start().await;
    let kubeconfig = std::fs::read_to_string(h.kubeconfig()).expect("kubeconfig");
    let token_line = kubeconfig.lines().find(|l| l.trim_start().starts_with("token:")).expect("token line").to_string();
    let wrong = kubeconfig.replace(&token_line, "    token: not-the-token");
    let path = h.dir.path().join("wrong-kubeconfig");
    std::fs::write(&path, wrong).expect("write");
    let out = h.kubectl(&["--kubeconfig", &path.display().to_string(), "get", "namespaces"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Unauthorized") || stderr.contains("provide credentials"), "{stderr}");
    let ok = h.kubectl_ok(&["get", "namespaces", "-o", "name"]).await;
    assert!(ok.contains("namespace/default"), "{ok}");
}

/// A dry-run delete deletes nothing, however the client says "dry run":
/// kubectl and kube-rs put it in the DeleteOptions body; a query value
/// other than `All` is refused with 422, as a real server does.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_delete_deletes_nothing_however_it_is_asked() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let h = Harness::start().await;
    for name in ["one", "two"] {
        h.kubectl_ok(&["create", "configmap", name, "--from-literal=a=b"]).await;
    }
    let out = h.kubectl_ok(&["delete", "configmap", "one", "--dry-run=server"]).await;
    assert!(out.contains("deleted (server dry run)"), "{out}");
    let out = h.kubectl_ok(&["delete", "configmaps", "--all", "--dry-run=server"]).await;
    assert!(out.contains("two"), "{out}");
    let maps: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    maps.delete("one", &kube::api::DeleteParams::default().dry_run()).await.expect("a kube-rs dry run");
    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items.into_iter().filter_map(|m| m.metadata.name).filter(|n| n != "kube-root-ca.crt").collect()
    };
    assert_eq!(names(maps.list(&Default::default()).await.expect("list")), vec!["one", "two"]);

    let request = http::Request::delete("/api/v1/namespaces/default/configmaps/one?dryRun=true")
        .body(Vec::new())
        .expect("request");
    let refused = h.client.request::<serde_json::Value>(request).await.expect_err("refused");
    let kube::Error::Api(status) = refused else { panic!("an API error: {refused:?}") };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("dryRun: Unsupported value: \"true\": supported values: \"All\""),
        "{}",
        status.message
    );
    assert_eq!(names(maps.list(&Default::default()).await.expect("list")), vec!["one", "two"]);
    h.kubectl_ok(&["delete", "configmap", "one"]).await;
    assert_eq!(names(maps.list(&Default::default()).await.expect("list")), vec!["two"], "a real delete deletes");
}

/// kubectl's imperative commands send protobuf: the credentials Secret a
/// new user creates first, a ConfigMap from a file, a namespace; with each
/// kubectl version the devcluster is tested with.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_create_secret_configmap_and_namespace_work() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
    for kubectl in common::kubectls() {
        let h = Harness::start().await;
        let run = |args: Vec<String>| {
            let mut command = h.kubectl_command_of(&kubectl);
            command.args(&args);
            async move {
                let out = command.output().await.expect("kubectl runs");
                assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        let args = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        run(args("create namespace people")).await;
        run(args("create secret generic hr-token -n people --from-literal=token=s3cr3t=x")).await;
        run(args("label secret hr-token -n people idsync.dev/credentials=true")).await;
        // The README's command for a Secret idsync may read.
        run(args(
            "create secret generic scim-credentials -n people --type=idsync.dev/credentials --from-literal=token=t",
        ))
        .await;
        let export = h.dir.path().join("people.csv");
        std::fs::write(&export, "employee_id,work_email\nE1,a@acme.example\n").expect("export");
        let mut from_file = args("create configmap hr-export -n people");
        from_file.push(format!("--from-file=people.csv={}", export.display()));
        run(from_file).await;

        let namespaces: Api<Namespace> = Api::all(h.client.clone());
        assert!(namespaces.get("people").await.is_ok(), "{}: the namespace exists", kubectl.display());
        let secret = Api::<Secret>::namespaced(h.client.clone(), "people").get("hr-token").await.expect("secret");
        assert_eq!(secret.type_.as_deref(), Some("Opaque"), "the API server's default type");
        assert_eq!(secret.data.expect("data")["token"].0, b"s3cr3t=x");
        assert_eq!(secret.metadata.labels.expect("labels")["idsync.dev/credentials"], "true");
        let typed =
            Api::<Secret>::namespaced(h.client.clone(), "people").get("scim-credentials").await.expect("secret");
        assert_eq!(typed.type_.as_deref(), Some("idsync.dev/credentials"));
        let map = Api::<ConfigMap>::namespaced(h.client.clone(), "people").get("hr-export").await.expect("configmap");
        assert_eq!(map.data.expect("data")["people.csv"], "employee_id,work_email\nE1,a@acme.example\n");
        let shown = run(args("get secret hr-token -n people -o jsonpath={.data.token}")).await;
        assert_eq!(shown.trim(), "czNjcjN0PXg=", "{}", kubectl.display());
    }
}

/// The small things clients probe, with each kubectl: health endpoints,
/// `cluster-info`, `auth whoami`, a `Warning:` for an unknown field, and a
/// plain-HTTP request answered as an HTTPS API server answers it.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_probes_get_the_answers_of_a_real_api_server() {
    for kubectl in common::kubectls() {
        let h = Harness::start().await;
        h.install_crds().await;
        let run = |args: &[&str]| {
            let mut command = h.kubectl_command_of(&kubectl);
            command.args(args);
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            async move {
                let out = command.output().await.expect("kubectl runs");
                assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
                (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
            }
        };
        // Built-in kinds print their own columns; `ev` is core Events only.
        run(&["create", "configmap", "settings", "--from-literal=a=1", "--from-literal=b=2"]).await;
        let (maps, _) = run(&["get", "configmap", "settings"]).await;
        assert!(maps.starts_with("NAME") && maps.contains("DATA") && maps.contains("settings   2"), "{maps}");
        let (events, warned) = run(&["get", "ev"]).await;
        assert!(!warned.contains("could also match"), "{warned}");
        assert!(events.is_empty() || events.starts_with("LAST SEEN"), "{events}");
        // explain reads the published schemas, built-in and custom.
        let (explained, _) = run(&["explain", "connection.metadata.labels"]).await;
        assert!(explained.contains("FIELD: labels"), "{explained}");
        let (explained, _) = run(&["explain", "configmap.data"]).await;
        assert!(explained.contains("FIELD: data"), "{explained}");
        // A watch from a revision the server has not reached is refused.
        let future = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={}", u32::MAX);
        let out = h.kubectl_command_of(&kubectl).args(["get", "--raw", &future]).output().await.expect("kubectl");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains("Too large resource version"), "{said}");
        for probe in ["/healthz", "/readyz", "/livez"] {
            assert_eq!(run(&["get", "--raw", probe]).await.0.trim(), "ok", "{probe}");
        }
        let (info, _) = run(&["cluster-info"]).await;
        assert!(info.contains("is running at https://127.0.0.1:"), "{info}");
        let (whoami, _) = run(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]).await;
        assert_eq!(whoami.trim(), "kubernetes-admin");

        let manifest = h.dir.path().join("extra-field.yaml");
        let mut request =
            serde_json::to_value(idsync_api::ResyncRequest::test("with-colour").all().build()).expect("json");
        request["spec"]["colour"] = json!("blue");
        std::fs::write(&manifest, request.to_string()).expect("manifest");
        let (_, warned) = run(&["create", "-f", &manifest.display().to_string(), "--validate=warn"]).await;
        assert!(warned.contains("Warning: unknown field \"spec.colour\""), "{}: {warned}", kubectl.display());
    }

    let h = Harness::start().await;
    let url = h.cluster.url().replacen("https://", "http://", 1);
    let out = tokio::process::Command::new("curl").args(["-s", "-i", "-m", "5", &url]).output().await.expect("curl");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.0 400 Bad Request"), "{answer}");
    assert!(answer.contains("Client sent an HTTP request to an HTTPS server."), "{answer}");
}

/// What a real server validates and normalizes, as kubectl users meet it:
/// an unchanged manifest with `annotations: {}` diffs clean, a bad label
/// is refused naming it, and a body of another kind is refused.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_diff_of_an_unchanged_object_is_clean_and_bad_metadata_is_refused() {
    let h = Harness::start().await;
    let manifest = h.dir.path().join("settings.yaml");
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  annotations: {}\n  labels: {}\ndata:\n  a: \"1\"\n";
    std::fs::write(&manifest, yaml).expect("manifest");
    let path = manifest.display().to_string();
    h.kubectl_ok(&["apply", "-f", &path]).await;
    let diff = h.kubectl(&["diff", "-f", &path]).await;
    assert_eq!(diff.status.code(), Some(0), "no difference: {}", String::from_utf8_lossy(&diff.stdout));

    let refused = h.kubectl(&["label", "configmap", "settings", "team=people ops"]).await;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("a valid label must be an empty string"), "{said}");

    let wrong = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    let request = http::Request::post("/apis/coordination.k8s.io/v1/namespaces/default/leases")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&wrong).expect("json"))
        .expect("request");
    let error = h.client.request::<serde_json::Value>(request).await.expect_err("refused").to_string();
    assert!(error.contains("does not match the expected API version (coordination.k8s.io/v1)"), "{error}");
}
