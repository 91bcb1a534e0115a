//! `idsync run` from the outside: the operator against a cluster from its
//! kubeconfig, with leader election, metrics and health endpoints.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Harness, eventually, repo};
use idsync_api::ResyncRequest;
use kube::api::Api;

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((status, body))
}

/// `idsync run` on `data` against the harness, serving on `port`.
fn spawn_run(h: &Harness, data: &std::path::Path, port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["run", "--data-dir"])
        .arg(data)
        .args(["--http-addr", &format!("127.0.0.1:{port}"), "--log-format", "json"])
        .env("KUBECONFIG", h.kubeconfig())
        .env("POD_NAMESPACE", "kube-system")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("idsync run starts")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread")]
async fn idsync_run_leads_syncs_serves_metrics_and_stops_on_sigterm() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let port = free_port();
    let data = tempfile::tempdir().expect("data dir");
    let mut operator = spawn_run(&h, data.path(), port);

    let health = eventually(Duration::from_secs(20), || async { http_get(port, "/healthz").await }).await;
    assert_eq!(health.map(|(s, b)| (s, b.trim().to_string())), Some((200, "ok".to_string())));
    h.kubectl_ok(&["apply", "-f", &repo("examples/quickstart").display().to_string()]).await;
    let api: Api<ResyncRequest> = Api::namespaced(h.client.clone(), "default");
    let done = eventually(Duration::from_secs(30), || async {
        let r = api.get("acme-hr-first-sync").await.ok()?;
        r.status?.phase.filter(|p| p.is_finished())
    })
    .await;
    assert_eq!(done, Some(idsync_api::resync_request::Phase::Succeeded));

    let (status, metrics) = http_get(port, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(metrics.lines().any(|l| l == "idsync_leader 1"), "{metrics}");
    assert!(
        metrics.contains(r#"idsync_accounts_changed_total{connection="default/acme-hr",kind="created"} 36"#),
        "{metrics}"
    );
    assert!(metrics.contains("idsync_sync_duration_seconds_count"), "{metrics}");
    let lease = h
        .kubectl_ok(&["-n", "kube-system", "get", "lease", "idsync-leader", "-o", "jsonpath={.spec.holderIdentity}"])
        .await;
    assert!(!lease.is_empty(), "no leader recorded");

    let signalled = Command::new("kill").args(["-TERM", &operator.id().to_string()]).status().expect("kill");
    assert!(signalled.success());
    let exited = eventually(Duration::from_secs(20), || {
        let status = operator.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    match exited {
        Some(status) => assert!(status.success(), "idsync run exited with {status}"),
        None => {
            let _ = operator.kill();
            panic!("idsync run did not stop on SIGTERM");
        }
    }
    let released = h
        .kubectl_ok(&["-n", "kube-system", "get", "lease", "idsync-leader", "-o", "jsonpath={.spec.holderIdentity}"])
        .await;
    assert!(released.is_empty(), "the leader Lease was not released: {released}");

    // Restarted on the same store: the gauges come back from the store
    // before any new sync (this process has synced nothing).
    let port = free_port();
    let mut operator = spawn_run(&h, data.path(), port);
    let restored = eventually(Duration::from_secs(30), || async {
        http_get(port, "/metrics")
            .await
            .map(|(_, body)| body)
            .filter(|body| body.contains(r#"idsync_accounts{connection="default/acme-hr"} 36"#))
            .filter(|body| {
                body.contains(r#"controller_runtime_reconcile_time_seconds_count{controller="identityprofile"}"#)
            })
    })
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    let metrics = restored.expect("the account gauge restored from the store");
    assert!(
        metrics.contains(r#"idsync_last_successful_sync_timestamp_seconds{connection="default/acme-hr"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("idsync_accounts_changed_total{"), "no sync ran in this process: {metrics}");
    assert!(metrics.contains(r#"idsync_identities{profile="default/acme-employees"} 36"#), "{metrics}");
    // controller-runtime's names, the build and the process.
    assert!(
        metrics.contains(r#"controller_runtime_reconcile_total{controller="connection",result="success"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"controller_runtime_reconcile_time_seconds_count{controller="identityprofile"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(r#"idsync_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l.starts_with("process_resident_memory_bytes ")), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("process_cpu_seconds_total ")), "{metrics}");
}

/// With `replicas: 2`, the standby waits for the leader Lease without
/// opening the store the leader writes (not even to migrate it); it opens
/// it once it leads.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_never_opens_the_store_before_it_leads() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let now = jiff::Timestamp::now();
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "idsync-leader", "namespace": "kube-system"},
        "spec": {"holderIdentity": "the-other-replica", "leaseDurationSeconds": 3600,
                 "acquireTime": now.to_string(), "renewTime": now.to_string()}
    });
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(h.client.clone(), "kube-system");
    leases
        .create(&Default::default(), &serde_json::from_value(lease).expect("lease"))
        .await
        .expect("the other replica's lease");
    let port = free_port();
    let data = tempfile::tempdir().expect("data dir");
    let store = data.path().join("idsync.db");
    let mut standby = spawn_run(&h, data.path(), port);

    let metrics = eventually(Duration::from_secs(20), || async {
        http_get(port, "/metrics").await.filter(|(_, body)| body.lines().any(|l| l == "idsync_leader 0"))
    })
    .await;
    assert!(metrics.is_some(), "the standby serves metrics and says it does not lead");
    // It has tried for the Lease at least once by now (it retries every few seconds).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!store.exists(), "the standby opened the store");
    // Alive, not ready: it reconciles nothing.
    assert_eq!(http_get(port, "/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/readyz").await.map(|r| r.0), Some(503), "a standby is not ready");

    leases.delete("idsync-leader", &Default::default()).await.expect("the other replica goes");
    let leading = eventually(Duration::from_secs(30), || async {
        http_get(port, "/metrics").await.filter(|(_, body)| body.lines().any(|l| l == "idsync_leader 1"))
    })
    .await;
    assert!(leading.is_some(), "the standby takes over");
    assert!(store.exists(), "the new leader opened the store");
    let ready = eventually(Duration::from_secs(20), || async {
        http_get(port, "/readyz").await.filter(|(status, _)| *status == 200)
    })
    .await;
    assert!(ready.is_some(), "ready once it leads with its store open");
    let _ = standby.kill();
    let _ = standby.wait();
}
