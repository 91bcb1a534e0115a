//! No input stops a controller. Numbers and times at the ends of their
//! ranges (a TTL at the schema's maximum, a cron step as large as a u64, a
//! sync guard Lease renewed near the year 9999 for i32::MAX seconds) once
//! overflowed the controllers' arithmetic, and a panic in one reconcile
//! ended every later reconcile of its kind. Here none of them panics, and
//! the requests after them run to the end. (That a panic, should one still
//! happen, fails only its own reconcile is shown by `controller::panics`'
//! tests, which make one.)
//!
//! The operator runs here with its `Context` in reach, to read the panics
//! it counts in its metrics.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::operator::{TestClock, test_config};
use common::{Harness, eventually};
use idsync::controller::Context;
use idsync::store::{SqliteStore, Store};
use idsync_api::ResyncRequest;
use idsync_api::resync_request::{MAX_TTL_SECONDS_AFTER_FINISHED, Phase, TargetPhase};
use jiff::SignedDuration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

struct Running {
    h: Harness,
    ctx: Arc<Context>,
    clock: Arc<TestClock>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
    _data: tempfile::TempDir,
}

async fn start() -> Running {
    idsync::tls::install_crypto_provider();
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let data = tempfile::tempdir().expect("data dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data.path().join("idsync.db")).expect("store"));
    let clock = Arc::new(TestClock::default());
    let ctx = Context::new(h.client.clone(), store, clock.clone(), test_config("operator-a"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(idsync::controller::run(ctx.clone(), async {
        let _ = stopped.await;
    }));
    Running { h, ctx, clock, stop, done, _data: data }
}

impl Running {
    /// Reconciles of `controller` that panicked, as `/metrics` counts them.
    fn panics(&self, controller: &str) -> u64 {
        let series = format!(r#"idsync_reconcile_errors_total{{controller="{controller}",error="panic"}} "#);
        self.ctx.metrics.render().lines().find_map(|l| l.strip_prefix(&series)?.parse().ok()).unwrap_or(0)
    }

    fn requests(&self) -> Api<ResyncRequest> {
        Api::namespaced(self.h.client.clone(), "default")
    }

    async fn csv_connection(&self, name: &str, cron: &str) {
        let object = idsync_api::Connection::test(name)
            .schedule([cron], "UTC")
            .csv_config_map("people", "people.csv")
            .id_column("employee_id")
            .build();
        let api: Api<idsync_api::Connection> = Api::namespaced(self.h.client.clone(), "default");
        api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&object)).await.expect("connection");
    }

    /// A metadata change, which brings a reconcile of the request.
    async fn touch(&self, name: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {"test.idsync.dev/touched": value}}});
        self.requests().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("touched");
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(20), self.done).await;
    }
}

fn target_phase(r: &ResyncRequest) -> Option<TargetPhase> {
    r.status.as_ref()?.targets.first().map(|t| t.phase)
}

#[tokio::test(flavor = "multi_thread")]
async fn numbers_and_times_at_the_ends_of_their_ranges_panic_no_controller() {
    let op = start().await;
    let config_maps: Api<ConfigMap> = Api::namespaced(op.h.client.clone(), "default");
    let people = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "people"},
        "data": {"people.csv": "employee_id,email\nE1,ada@acme.example\nE2,grace@acme.example\n"}});
    config_maps.patch("people", &PatchParams::apply("test").force(), &Patch::Apply(&people)).await.expect("configmap");
    op.csv_connection("hr", "0 3 * * *").await;
    // A step past the end of a u64 once overflowed in the cron parser.
    op.csv_connection("legacy", &format!("5/{} * * * *", u64::MAX - 1)).await;

    // A sync guard Lease (anyone who may write Leases in the namespace may
    // write this one) renewed near the year 9999 for i32::MAX seconds: the
    // sum of the two is past what a timestamp holds. It once panicked every
    // reconcile that looked at the guard; it means "held until the end of
    // time", so a request for `legacy` waits for it.
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "idsync-sync-legacy"},
        "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": i32::MAX,
                 "acquireTime": "9999-12-01T00:00:00.000000Z", "renewTime": "9999-12-01T00:00:00.000000Z"}}))
    .expect("a Lease");
    let leases: Api<Lease> = Api::namespaced(op.h.client.clone(), "default");
    leases.create(&PostParams::default(), &lease).await.expect("lease");
    op.h.create_request(ResyncRequest::test("sync-legacy").connections(["legacy"]).full()).await;

    let requests = op.requests();
    let waiting = eventually(Duration::from_secs(60), || async {
        let r = requests.get("sync-legacy").await.ok()?;
        (target_phase(&r) == Some(TargetPhase::Waiting)).then_some(r)
    })
    .await
    .expect("the request for the guarded connection does not wait for the guard's holder");
    assert_eq!(waiting.status.as_ref().and_then(|s| s.phase), Some(Phase::Pending), "{:?}", waiting.status);
    let connections: Api<idsync_api::Connection> = Api::namespaced(op.h.client.clone(), "default");
    let scheduled =
        eventually(Duration::from_secs(30), || async { connections.get("legacy").await.ok()?.status?.next_sync_time })
            .await;
    assert!(scheduled.is_some(), "the Connection with a u64 cron step was not scheduled");

    // The controller goes on: a request at the largest TTL the schema takes
    // finishes (adding its TTL once panicked every controller) ...
    let ttl = MAX_TTL_SECONDS_AFTER_FINISHED;
    op.h.create_request(ResyncRequest::test("keep-a-year").connections(["hr"]).full().ttl_seconds_after_finished(ttl))
        .await;
    let kept = op.h.finished_request("keep-a-year", Duration::from_secs(60)).await;
    assert_eq!(kept.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", kept.status);
    // ... and so does the ordinary request after it.
    op.h.create_request(ResyncRequest::test("after").connections(["hr"])).await;
    let after = op.h.finished_request("after", Duration::from_secs(60)).await;
    assert_eq!(after.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", after.status);
    let legacy = requests.get("sync-legacy").await.expect("the legacy request");
    assert_eq!(target_phase(&legacy), Some(TargetPhase::Waiting), "{:?}", legacy.status);

    // Kept for the whole year: an hour before it ends, a reconcile keeps it.
    let completed = kept.status.as_ref().and_then(|s| s.completion_time.clone()).expect("a completion time").0;
    let end = completed + SignedDuration::from_secs(ttl);
    op.clock.advance_to(end - SignedDuration::from_hours(1));
    op.touch("keep-a-year", "before-the-end").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(requests.get_opt("keep-a-year").await.expect("read").is_some(), "deleted before its TTL ended");
    // Once the year is over, it goes.
    op.clock.advance_to(end + SignedDuration::from_secs(1));
    op.touch("keep-a-year", "after-the-end").await;
    let gone = eventually(Duration::from_secs(30), || async {
        requests.get_opt("keep-a-year").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "not deleted after its TTL ended");
    // Not one reconcile panicked on the way, the year's jump of the clock
    // (which makes the connections' schedules due) included.
    for controller in ["connection", "resyncrequest", "identityprofile", "sync"] {
        assert_eq!(op.panics(controller), 0, "a {controller} reconcile panicked:\n{}", op.ctx.metrics.render());
    }
    op.stop().await;
}
