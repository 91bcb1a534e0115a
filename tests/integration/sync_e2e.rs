//! The sync engine end to end: the operator on a devcluster, driven the way
//! a person or a pipeline drives it.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::csv_server::CsvServer;
use common::faults::LeaseFaults;
use common::operator::{Operator, TestClock, test_config};
use common::{Harness, eventually};
use idsync::controller::{Config, Context};
use idsync::model::Trigger;
use idsync::model::{ConnectionRef, RunOutcome};
use idsync::store::{AccountStore, Store};
use idsync_api::fixtures::{ConnectionBuilder, ResyncRequestBuilder};
use idsync_api::resync_request::{Phase, TargetPhase};
use idsync_api::{Category, ConcurrencyPolicy, Connection, ResyncRequest};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const HEADER: &str = "employee_id,first_name,last_name,work_email,department,status";

fn person(i: usize) -> String {
    format!("E{i:04},First{i},Last{i},person{i}@acme.example,Dept{},active", i % 7)
}

fn export(ids: impl IntoIterator<Item = usize>) -> String {
    let mut lines = vec![HEADER.to_string()];
    lines.extend(ids.into_iter().map(person));
    lines.join("\n") + "\n"
}

struct Env {
    h: Harness,
    operator: Option<Operator>,
    clock: Arc<TestClock>,
    data: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let common::operator::Started { h, operator, clock, data } = common::operator::start_operator().await;
        Env { h, operator: Some(operator), clock, data }
    }

    fn store(&self) -> idsync::store::SqliteStore {
        idsync::store::SqliteStore::open(&self.data.path().join("idsync.db")).expect("store")
    }

    fn accounts(&self, connection: &str) -> BTreeMap<String, idsync::model::Account> {
        let store = self.store();
        let conn = ConnectionRef { namespace: "default".into(), name: connection.into() };
        store.list_accounts(&conn, None, 100_000).expect("list").into_iter().map(|a| (a.id.clone(), a)).collect()
    }

    fn runs(&self, connection: &str) -> Vec<idsync::model::RunRecord> {
        let conn = ConnectionRef { namespace: "default".into(), name: connection.into() };
        self.store().runs(&conn, 100).expect("runs")
    }

    async fn config_map(&self, name: &str, csv: &str) {
        let api: Api<ConfigMap> = Api::namespaced(self.h.client.clone(), "default");
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"people.csv": csv}});
        api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&cm)).await.expect("configmap");
    }

    async fn connection(&self, connection: ConnectionBuilder) {
        let api: Api<Connection> = Api::namespaced(self.h.client.clone(), "default");
        let object = connection.build();
        api.patch(&object.name_any(), &PatchParams::apply("test").force(), &Patch::Apply(&object))
            .await
            .expect("connection");
    }

    async fn csv_connection(&self, name: &str, config_map: &str) {
        self.connection(hr_export(name).csv_config_map(config_map, "people.csv").column("enabled", "status")).await;
    }

    async fn url_connection(&self, name: &str, url: &str, page_size: u32) {
        self.connection(hr_export(name).csv_url(url).page_size(page_size)).await;
    }

    async fn request(&self, request: ResyncRequestBuilder) {
        self.h.create_request(request).await;
    }

    async fn finished(&self, name: &str, timeout: Duration) -> ResyncRequest {
        self.h.finished_request(name, timeout).await
    }

    async fn get_connection(&self, name: &str) -> Connection {
        Api::<Connection>::namespaced(self.h.client.clone(), "default").get(name).await.expect("connection")
    }

    async fn events_for(&self, name: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.h.client.clone(), "default");
        api.list(&ListParams::default().fields(&format!("regarding.name={name}"))).await.expect("events").items
    }

    /// Creates `request` and waits for it to finish.
    async fn sync(&self, request: ResyncRequestBuilder) -> ResyncRequest {
        let request = request.build();
        let name = request.name_any();
        self.h.create_request(request).await;
        self.finished(&name, Duration::from_secs(30)).await
    }
}

/// An HR export with id column `employee_id` and e-mail column
/// `work_email`, read from key `people.csv` of the ConfigMap `name`.
fn hr_export(name: &str) -> ConnectionBuilder {
    Connection::test(name).id_column("employee_id").column("email", "work_email")
}

/// A Full sync of `connection` by the request `name`.
fn full(name: &str, connection: &str) -> ResyncRequestBuilder {
    ResyncRequest::test(name).connections([connection]).full()
}

fn phase(r: &ResyncRequest) -> Option<Phase> {
    r.status.as_ref().and_then(|s| s.phase)
}

fn target(r: &ResyncRequest) -> idsync_api::resync_request::TargetStatus {
    r.status.as_ref().and_then(|s| s.targets.first().cloned()).expect("a target")
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_of_a_resync_request_reaches_succeeded_and_reports_everywhere() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(1..=4)).await;
    env.csv_connection("hris", "hr-export").await;
    let manifest = env.h.dir.path().join("request.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: idsync.dev/v1alpha1\nkind: ResyncRequest\nmetadata:\n  name: resync-hris\nspec:\n  target:\n    connections: [hris]\n",
    )
    .expect("write");
    env.h.kubectl_ok(&["apply", "-f", &manifest.display().to_string()]).await;
    let request = env.finished("resync-hris", Duration::from_secs(30)).await;
    assert_eq!(phase(&request), Some(Phase::Succeeded), "{:#?}", request.status);
    let t = target(&request);
    assert_eq!(t.phase, TargetPhase::Succeeded);
    assert_eq!(t.counts.expect("counts").created, 4);

    let connection = env.get_connection("hris").await;
    let status = connection.status.expect("status");
    assert!(status.last_sync_time.is_some() && status.last_successful_sync_time.is_some());
    assert_eq!(status.account_count, Some(4));
    assert_eq!(status.last_result.as_ref().map(|r| r.counts.created), Some(4));
    assert!(idsync_api::conditions::is_true(&status.conditions, "Ready"), "{:#?}", status.conditions);
    assert!(!idsync_api::conditions::is_true(&status.conditions, "Syncing"));
    assert_eq!(env.accounts("hris").len(), 4);

    // The Connection's Event tells the run; the request's one Event tells
    // the request, with each target's result. The start is in the request's
    // status (its target's startTime), not in an Event of its own.
    let reasons = |events: Vec<Event>| -> Vec<String> { events.into_iter().filter_map(|e| e.reason).collect() };
    let on_connection = reasons(env.events_for("hris").await);
    assert_eq!(on_connection, ["SyncSucceeded"], "{on_connection:?}");
    let on_request = env.events_for("resync-hris").await;
    assert_eq!(reasons(on_request.clone()), ["ResyncSucceeded"]);
    let note = on_request[0].note.clone().unwrap_or_default();
    assert!(note.contains("hris: Full sync succeeded: created 4,"), "{note}");
    assert!(t.start_time.is_some(), "{t:#?}");
    let table = env.h.kubectl_ok(&["get", "conn", "hris"]).await;
    let row: Vec<&str> = table.lines().nth(1).expect("a row").split_whitespace().collect();
    assert_eq!(&row[..4], &["hris", "csv", "HRIS", "True"], "{table}");
    assert!(row.contains(&"4"), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_are_right_across_three_exports_and_a_rename_is_an_update() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(1..=5)).await;
    env.csv_connection("hris", "hr-export").await;
    let first = env.sync(full("v1", "hris")).await;
    let c = target(&first).counts.expect("counts");
    assert_eq!((c.created, c.updated, c.deleted, c.unchanged), (5, 0, 0, 0));

    // Person 1 is renamed and moves to a new e-mail domain; 5 leaves; 6 joins.
    let v2 = export(1..=4)
        .replace("E0001,First1,Last1,person1@acme.example", "E0001,Ada,Byron,ada.byron@acme-corp.example")
        + &person(6)
        + "\n";
    env.config_map("hr-export", &v2).await;
    let second = env.sync(full("v2", "hris")).await;
    let c = target(&second).counts.expect("counts");
    assert_eq!((c.created, c.updated, c.deleted, c.unchanged), (1, 1, 1, 3));
    let accounts = env.accounts("hris");
    assert_eq!(accounts["E0001"].email.as_deref(), Some("ada.byron@acme-corp.example"));
    assert!(!accounts.contains_key("E0005"));

    // Nothing changed: everything unchanged.
    let third = env.sync(full("v3", "hris")).await;
    let c = target(&third).counts.expect("counts");
    assert_eq!((c.created, c.updated, c.deleted, c.unchanged), (0, 0, 0, 5));
    assert_eq!(env.get_connection("hris").await.status.and_then(|s| s.account_count), Some(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_import_safeguard_holds_back_a_mass_deletion_until_confirmed() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(1..=10)).await;
    env.csv_connection("hris", "hr-export").await;
    env.sync(full("initial", "hris")).await;
    // 30% of the people are missing from the next export.
    env.config_map("hr-export", &export(1..=7)).await;
    let held = env.sync(full("held", "hris")).await;
    assert_eq!(phase(&held), Some(Phase::Failed));
    let t = target(&held);
    assert_eq!(t.phase, TargetPhase::SafeguardTripped);
    assert!(t.message.contains("would delete 3 of 10 accounts (30%)"), "{}", t.message);
    assert_eq!(env.accounts("hris").len(), 10, "the safeguard applied something");
    // kubectl get rr -o wide says it waits for a confirmation, not just "Failed".
    let status = held.status.as_ref().expect("status");
    assert_eq!(status.target, "connections hris");
    let complete = idsync_api::conditions::find(&status.conditions, "Complete").expect("Complete");
    assert_eq!(complete.reason, "SafeguardTripped");
    assert!(complete.message.contains("held back by the import safeguard: hris"), "{}", complete.message);
    assert!(complete.message.contains("confirmDeletes: true"), "{}", complete.message);
    let wide = env.h.kubectl_ok(&["get", "rr", "held", "-o", "wide"]).await;
    let row = wide.lines().nth(1).expect("a row");
    for cell in ["connections hris", "Accounts", "Full", "false", "Failed", "SafeguardTripped"] {
        assert!(row.contains(cell), "{cell:?} not in {row:?}");
    }
    let warnings: Vec<Event> =
        env.events_for("hris").await.into_iter().filter(|e| e.reason.as_deref() == Some("SafeguardTripped")).collect();
    assert_eq!(warnings.first().and_then(|e| e.type_.clone()).as_deref(), Some("Warning"));
    let status = env.get_connection("hris").await.status.expect("status");
    let ready = idsync_api::conditions::find(&status.conditions, "Ready").expect("Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "SafeguardTripped"));

    let confirmed = env.sync(full("confirmed", "hris").confirm_deletes()).await;
    assert_eq!(phase(&confirmed), Some(Phase::Succeeded), "{:#?}", confirmed.status);
    assert_eq!(target(&confirmed).counts.expect("counts").deleted, 3);
    assert_eq!(env.accounts("hris").len(), 7);
    // The confirmed run says what was confirmed, where people read it.
    let said = "3 deletion(s) of 10 accounts (30%) confirmed by confirmDeletes, over the import safeguard's 20%";
    assert!(target(&confirmed).message.contains(said), "{}", target(&confirmed).message);
    let status = env.get_connection("hris").await.status.expect("status");
    assert!(status.last_result.as_ref().is_some_and(|r| r.message.contains(said)), "{:?}", status.last_result);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_failing_on_its_third_page_or_a_malformed_row_changes_nothing() {
    let env = Env::start().await;
    let server = CsvServer::start(&export(1..=500)).await;
    env.url_connection("hr-url", &server.url, 100).await;
    let ok = env.sync(full("good", "hr-url")).await;
    assert_eq!(phase(&ok), Some(Phase::Succeeded), "{:#?}", ok.status);
    let before = env.accounts("hr-url");
    assert_eq!(before.len(), 500);

    // The next export changes everyone, but the server dies after 250 rows.
    server.set(|b| {
        b.body = export(1..=500).replace("@acme.example", "@new.example");
        b.cut_after_lines = Some(251);
        // Paced, so the response and its first pages are on the wire before the cut.
        b.delay_per_chunk = Duration::from_millis(30);
    });
    let failed = env.sync(full("broken", "hr-url")).await;
    assert_eq!(phase(&failed), Some(Phase::Failed));
    let t = target(&failed);
    assert!(t.message.contains("page 3"), "{}", t.message);
    assert_eq!(env.accounts("hr-url"), before, "a failed sync changed the store");
    let status = env.get_connection("hr-url").await.status.expect("status");
    assert!(status.last_result.as_ref().is_some_and(|r| r.message.contains("page 3")));

    // A malformed row in a ConfigMap export: its line number, nothing applied.
    env.config_map("hr-export", &export(1..=5)).await;
    env.csv_connection("hris", "hr-export").await;
    env.sync(full("cm-good", "hris")).await;
    let malformed =
        export(1..=5).replace("E0005,First5,Last5,person5@acme.example,Dept5,active", "E0005,First5,\"Last5");
    env.config_map("hr-export", &(malformed + &person(6) + "\n")).await;
    let failed = env.sync(full("cm-bad", "hris")).await;
    assert_eq!(phase(&failed), Some(Phase::Failed));
    assert!(
        target(&failed).message.contains("line 6") || target(&failed).message.contains("line 7"),
        "{}",
        target(&failed).message
    );
    assert_eq!(env.accounts("hris").len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn forbid_rejects_wait_queues_and_replace_cancels() {
    let env = Env::start().await;
    let server = CsvServer::start(&export(1..=1000)).await;
    server.set(|b| b.delay_per_chunk = Duration::from_millis(150));
    env.url_connection("slow", &server.url, 100).await;
    let api: Api<ResyncRequest> = Api::namespaced(env.h.client.clone(), "default");
    let running = |name: &'static str| {
        let api = api.clone();
        async move {
            eventually(Duration::from_secs(10), || async {
                let r = api.get(name).await.ok()?;
                (r.status.as_ref()?.targets.first()?.phase == TargetPhase::Running).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("{name} never ran"))
        }
    };

    env.request(full("first", "slow")).await;
    running("first").await;
    env.request(ResyncRequest::test("forbidden").connections(["slow"]).concurrency_policy(ConcurrencyPolicy::Forbid))
        .await;
    let forbidden = env.finished("forbidden", Duration::from_secs(30)).await;
    let t = target(&forbidden);
    assert_eq!(t.phase, TargetPhase::Rejected);
    assert!(t.message.contains("ResyncRequest first"), "{}", t.message);

    env.request(ResyncRequest::test("waiting").connections(["slow"]).concurrency_policy(ConcurrencyPolicy::Wait)).await;
    let waited = eventually(Duration::from_secs(5), || async {
        let r = api.get("waiting").await.ok()?;
        (r.status.as_ref()?.targets.first()?.phase == TargetPhase::Waiting).then_some(r)
    })
    .await;
    let waited = waited.expect("the Wait request did not queue");
    // Waiting is not running: the request reads Pending until its sync starts.
    assert_eq!(phase(&waited), Some(Phase::Pending), "{:?}", waited.status);
    let first = env.finished("first", Duration::from_secs(60)).await;
    let waiting = env.finished("waiting", Duration::from_secs(60)).await;
    assert_eq!(phase(&first), Some(Phase::Succeeded));
    assert_eq!(phase(&waiting), Some(Phase::Succeeded));
    let first_done = target(&first).completion_time.expect("done").0;
    let waiting_started = target(&waiting).start_time.expect("started").0;
    assert!(waiting_started >= first_done, "the Wait request ran while the first was running");

    // Replace: the running sync is cancelled and its data never lands.
    server.set(|b| b.body = export(1..=1000).replace("@acme.example", "@first.example"));
    env.request(full("to-be-replaced", "slow")).await;
    running("to-be-replaced").await;
    server.set(|b| {
        b.body = export(1..=1000).replace("@acme.example", "@replacement.example");
        b.delay_per_chunk = Duration::ZERO;
    });
    env.request(full("replacement", "slow").concurrency_policy(ConcurrencyPolicy::Replace)).await;
    let replaced = env.finished("to-be-replaced", Duration::from_secs(60)).await;
    let replacement = env.finished("replacement", Duration::from_secs(60)).await;
    assert_eq!(target(&replaced).phase, TargetPhase::Failed);
    // The cancelled run names its real cause, in the request and the run history.
    let said = "cancelled: replaced by ResyncRequest replacement; nothing was applied";
    assert!(target(&replaced).message.contains(said), "{}", target(&replaced).message);
    let cancelled = env.runs("slow").into_iter().find(|r| r.outcome == Some(RunOutcome::Cancelled)).expect("a run");
    assert_eq!(cancelled.message, said);
    assert_eq!(phase(&replacement), Some(Phase::Succeeded));
    let accounts = env.accounts("slow");
    assert!(accounts.values().all(|a| a.email.as_deref().is_some_and(|e| e.ends_with("@replacement.example"))));
    let outcomes: Vec<RunOutcome> = env.runs("slow").iter().filter_map(|r| r.outcome).collect();
    assert!(outcomes.contains(&RunOutcome::Cancelled), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_killed_mid_sync_leaves_the_store_as_it_was_and_its_successor_recovers() {
    let mut env = Env::start().await;
    let server = CsvServer::start(&export(1..=300)).await;
    env.url_connection("crashy", &server.url, 50).await;
    env.sync(full("before", "crashy")).await;
    let before = env.accounts("crashy");
    assert_eq!(before.len(), 300);

    server.set(|b| {
        b.body = export(1..=300).replace("@acme.example", "@after.example");
        b.delay_per_chunk = Duration::from_millis(300);
        b.chunk_lines = 50;
    });
    env.request(full("during-crash", "crashy")).await;
    let api: Api<ResyncRequest> = Api::namespaced(env.h.client.clone(), "default");
    eventually(Duration::from_secs(10), || async {
        let r = api.get("during-crash").await.ok()?;
        (r.status.as_ref()?.targets.first()?.phase == TargetPhase::Running).then_some(())
    })
    .await
    .expect("the sync started");
    tokio::time::sleep(Duration::from_millis(700)).await;
    env.operator.take().expect("operator").kill();
    assert_eq!(env.accounts("crashy"), before, "a killed sync left partial changes");

    server.set(|b| b.delay_per_chunk = Duration::ZERO);
    let successor = Operator::start(&env.h.cluster, env.data.path(), env.clock.clone(), test_config("operator-b"));
    let request = env.finished("during-crash", Duration::from_secs(60)).await;
    assert_eq!(phase(&request), Some(Phase::Succeeded), "{:#?}", request.status);
    let runs = env.runs("crashy");
    let interrupted: Vec<_> = runs.iter().filter(|r| r.outcome == Some(RunOutcome::Interrupted)).collect();
    assert_eq!(interrupted.len(), 1, "{runs:#?}");
    assert_eq!(interrupted[0].holder, "operator-a");
    assert!(env.accounts("crashy").values().all(|a| a.email.as_deref().is_some_and(|e| e.ends_with("@after.example"))));
    let reasons: Vec<String> = env.events_for("crashy").await.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.contains(&"SyncInterrupted".to_string()), "{reasons:?}");
    successor.stop().await;
}

/// An operator in the test's runtime on a client whose writes to guard
/// Leases the test can make fail (the API server rejecting them), with
/// guards of `guard_duration`.
struct GuardFaults {
    env: Env,
    faults: LeaseFaults,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl GuardFaults {
    async fn start(guard_duration: Duration) -> GuardFaults {
        let h = Harness::start().await;
        idsync::dev::install_crds(&h.client).await.expect("CRDs");
        let clock = Arc::new(TestClock::default());
        let data = tempfile::tempdir().expect("data dir");
        let (client, faults) = LeaseFaults::client(&h.cluster, "idsync-sync-");
        let store: Arc<dyn Store> =
            Arc::new(idsync::store::SqliteStore::open(&data.path().join("idsync.db")).expect("store"));
        let config = Config { guard_duration, ..test_config("operator-a") };
        let ctx = Context::new(client, store, clock.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(idsync::controller::run(ctx, async {
            let _ = stopped.await;
        }));
        GuardFaults { env: Env { h, operator: None, clock, data }, faults, stop: Some(stop), task }
    }

    async fn wait_running(&self, request: &str) {
        let api: Api<ResyncRequest> = Api::namespaced(self.env.h.client.clone(), "default");
        eventually(Duration::from_secs(30), || async {
            let r = api.get(request).await.ok()?;
            (r.status.as_ref()?.targets.first()?.phase == TargetPhase::Running).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{request} never ran"));
    }

    async fn guard_lease(&self, connection: &str) -> Lease {
        let api: Api<Lease> = Api::namespaced(self.env.h.client.clone(), "default");
        api.get(&format!("idsync-sync-{connection}")).await.expect("the guard Lease")
    }

    async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Stops the operator, keeping the devcluster for a look afterwards.
    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
        }
    }
}

/// A slow export: 600 people in 24 chunks half a second apart, so a sync
/// runs for at least 12 s, several renewals of the guards below.
async fn slow_export(env: &Env, connection: &str) -> CsvServer {
    let server = CsvServer::start(&export(1..=600)).await;
    server.set(|b| {
        b.delay_per_chunk = Duration::from_millis(500);
        b.chunk_lines = 25;
    });
    env.url_connection(connection, &server.url, 50).await;
    server
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_guard_rides_out_renewal_failures_shorter_than_its_lease() {
    // A 9 s guard is renewed every 3 s and retried every 0.9 s: three failed
    // renewals in a row are over seconds before it could lapse.
    let op = GuardFaults::start(Duration::from_secs(9)).await;
    let env = &op.env;
    let _server = slow_export(env, "flaky-api").await;
    env.request(full("through-failures", "flaky-api")).await;
    op.wait_running("through-failures").await;

    op.faults.fail_next(3);
    let faults = &op.faults;
    eventually(Duration::from_secs(60), || async move { (faults.failed() == 3).then_some(()) })
        .await
        .expect("three renewals failed");
    let api: Api<ResyncRequest> = Api::namespaced(env.h.client.clone(), "default");
    let during = api.get("through-failures").await.expect("request");
    assert_eq!(target(&during).phase, TargetPhase::Running, "the failures did not hit a running sync's renewals");

    let done = env.finished("through-failures", Duration::from_secs(60)).await;
    assert_eq!(phase(&done), Some(Phase::Succeeded), "{:#?}", done.status);
    assert_eq!(env.accounts("flaky-api").len(), 600);
    assert!(op.faults.passed_after_failure() > 0, "no guard write went through after the failures");

    // Kept after the sync, for the next one, and still renewed; it belongs
    // to the Connection, so it goes when the Connection does.
    let lease = op.guard_lease("flaky-api").await;
    let spec = lease.spec.clone().expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("operator-a"));
    let renewed = spec.renew_time.expect("renewTime").0;
    let connection = env.get_connection("flaky-api").await;
    let owners = lease.metadata.owner_references.unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!((owners[0].kind.as_str(), Some(&owners[0].uid)), ("Connection", connection.metadata.uid.as_ref()));
    let renewed_again = eventually(Duration::from_secs(20), || async {
        let spec = op.guard_lease("flaky-api").await.spec?;
        (spec.renew_time?.0 > renewed).then_some(())
    })
    .await;
    assert!(renewed_again.is_some(), "the kept guard is not renewed after its sync");

    // Released on shutdown: the Lease names no holder, so the next
    // operator takes it at once.
    let mut op = op;
    op.shutdown().await;
    let lease = op.guard_lease("flaky-api").await;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None, "not released on shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_guard_whose_renewals_keep_failing_cancels_its_sync_once_it_lapses() {
    let op = GuardFaults::start(Duration::from_secs(3)).await;
    let env = &op.env;
    let _server = slow_export(env, "lost-guard").await;
    env.request(full("lapsing", "lost-guard")).await;
    op.wait_running("lapsing").await;

    // Every guard write fails from now on, so the last renewal stays on the
    // Lease; the sync must go on until that lapses, then stop and apply nothing.
    op.faults.fail_all(true);
    let done = env.finished("lapsing", Duration::from_secs(60)).await;
    let t = target(&done);
    assert_eq!(t.phase, TargetPhase::Failed);
    assert!(t.message.contains("lost the sync guard idsync-sync-lost-guard"), "{}", t.message);
    assert!(t.message.contains("lapsed") && t.message.contains("nothing was applied"), "{}", t.message);
    assert!(env.accounts("lost-guard").is_empty(), "a sync that lost its guard applied something");
    let runs = env.runs("lost-guard");
    let outcomes: Vec<RunOutcome> = runs.iter().filter_map(|r| r.outcome).collect();
    assert_eq!(outcomes, vec![RunOutcome::Cancelled]);
    let ready = env.get_connection("lost-guard").await.status.expect("status").conditions;
    let ready = ready.iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!(ready.reason, "GuardLost");

    let lease = op.guard_lease("lost-guard").await;
    let spec = lease.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("operator-a"), "the release went through");
    let lapsed = spec.renew_time.expect("renewTime").0
        + jiff::SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.expect("duration")));
    let ended = runs[0].finished_at.expect("finished");
    assert!(ended >= lapsed, "the sync stopped at {ended}, before its guard lapsed at {lapsed}");
    assert!(op.faults.failed() >= 2, "gave up after {} failed renewal(s) without retrying", op.faults.failed());

    // The API takes writes again: the next sync takes the lapsed guard over
    // from this same instance without calling itself interrupted.
    op.faults.fail_all(false);
    let again = env.sync(full("after-recovery", "lost-guard")).await;
    assert_eq!(phase(&again), Some(Phase::Succeeded), "{:#?}", again.status);
    assert_eq!(env.accounts("lost-guard").len(), 600);
    let outcomes: Vec<RunOutcome> = env.runs("lost-guard").iter().filter_map(|r| r.outcome).collect();
    assert!(!outcomes.contains(&RunOutcome::Interrupted), "{outcomes:?}");
    op.stop().await;
}

/// The guard of a Connection is kept by the instance that first took it:
/// a second replica never syncs that Connection while it is held, even
/// when the schedule falls due for both; once the holder is gone (killed
/// here, so nothing releases it) the Lease lapses and only then is taken
/// over, and a holder that died idle leaves no interrupted sync behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_guard_keeps_another_replica_from_syncing_until_it_lapses() {
    let mut env = Env::start().await;
    env.config_map("hr-export", &export(1..=3)).await;
    env.csv_connection("hris", "hr-export").await;
    let leases: Api<Lease> = Api::namespaced(env.h.client.clone(), "default");
    let holder = || async {
        let lease = leases.get("idsync-sync-hris").await.ok()?;
        lease.spec?.holder_identity
    };
    let first = eventually(Duration::from_secs(20), || async { holder().await.filter(|h| h == "operator-a") }).await;
    assert!(first.is_some(), "the first operator did not take the guard when it saw the Connection");

    let other_data = tempfile::tempdir().expect("data dir");
    let b = Operator::start(&env.h.cluster, other_data.path(), env.clock.clone(), test_config("operator-b"));
    let hris = ConnectionRef { namespace: "default".into(), name: "hris".into() };
    let next =
        eventually(Duration::from_secs(10), || async { env.get_connection("hris").await.status?.next_sync_time })
            .await
            .expect("nextSyncTime");
    env.clock.advance_to(next.0 + jiff::SignedDuration::from_secs(1));
    let synced = eventually(Duration::from_secs(20), || async { (env.runs("hris").len() == 1).then_some(()) }).await;
    assert!(synced.is_some(), "the guard's holder did not run the scheduled sync");
    // Several of the second operator's reconciles and guard renewals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(b.store().runs(&hris, 10).expect("runs").is_empty(), "a second replica synced a guarded Connection");
    assert_eq!(holder().await.as_deref(), Some("operator-a"));

    // The holder dies idle: its Lease lapses, then the other takes it.
    let lease = leases.get("idsync-sync-hris").await.expect("lease").spec.expect("spec");
    let lapses = lease.renew_time.expect("renewTime").0
        + jiff::SignedDuration::from_secs(i64::from(lease.lease_duration_seconds.expect("duration")));
    env.operator.take().expect("operator").kill();
    let taken = eventually(Duration::from_secs(20), || async { holder().await.filter(|h| h == "operator-b") }).await;
    assert!(taken.is_some(), "the lapsed guard was not taken over");
    let acquired = leases.get("idsync-sync-hris").await.expect("lease").spec.and_then(|s| s.acquire_time);
    assert!(
        acquired.as_ref().is_some_and(|t| t.0 >= lapses),
        "taken at {acquired:?}, before the guard lapsed at {lapses}"
    );
    let connections: Api<Connection> = Api::namespaced(env.h.client.clone(), "default");
    connections
        .patch(
            "hris",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"idsync.dev/requested-at": "after-takeover"}}})),
        )
        .await
        .expect("request");
    let ran = eventually(Duration::from_secs(20), || async {
        let runs = b.store().runs(&hris, 10).ok()?;
        runs.iter().any(|r| r.trigger == Trigger::RequestedAt && r.outcome == Some(RunOutcome::Succeeded)).then_some(())
    })
    .await;
    assert!(ran.is_some(), "the new holder did not sync");
    let reasons: Vec<String> = env.events_for("hris").await.into_iter().filter_map(|e| e.reason).collect();
    assert!(
        !reasons.contains(&"SyncInterrupted".to_string()),
        "an idle holder's death reported as a sync: {reasons:?}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_fire_at_their_time_suspend_stops_them_and_requested_at_syncs_once() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(1..=3)).await;
    env.connection(
        Connection::test("hris")
            .schedule(["0 3 * * *"], "UTC")
            .csv_config_map("hr-export", "people.csv")
            .id_column("employee_id"),
    )
    .await;
    let next =
        eventually(Duration::from_secs(10), || async { env.get_connection("hris").await.status?.next_sync_time })
            .await
            .expect("nextSyncTime");
    let now = jiff::Timestamp::now();
    assert!(next.0 > now && next.0.duration_since(now) <= jiff::SignedDuration::from_hours(24));
    assert_eq!(next.0.strftime("%H:%M").to_string(), "03:00");
    assert!(env.runs("hris").is_empty(), "a sync ran before its time");
    // kubectl shows when it is (an age column would print "<invalid>").
    let table = env.h.kubectl_ok(&["get", "conn", "hris"]).await;
    assert!(table.contains(&next.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()), "{table}");
    assert!(!table.contains("<invalid>"), "{table}");

    env.clock.advance_to(next.0 + jiff::SignedDuration::from_secs(1));
    let synced = eventually(Duration::from_secs(10), || async {
        let s = env.get_connection("hris").await.status?;
        (s.account_count == Some(3)).then_some(s)
    })
    .await
    .expect("the scheduled sync ran");
    assert_eq!(synced.next_sync_time.map(|t| t.0), Some(next.0 + jiff::SignedDuration::from_hours(24)));
    assert_eq!(env.runs("hris").first().map(|r| r.trigger), Some(Trigger::Scheduled));

    // Suspended: the next slot passes without a sync.
    let connections: Api<Connection> = Api::namespaced(env.h.client.clone(), "default");
    connections
        .patch("hris", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}})))
        .await
        .expect("suspend");
    eventually(Duration::from_secs(5), || async {
        env.get_connection("hris").await.status?.next_sync_time.is_none().then_some(())
    })
    .await
    .expect("no next sync while suspended");
    env.clock.advance_to(next.0 + jiff::SignedDuration::from_hours(24) + jiff::SignedDuration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.runs("hris").len(), 1, "a suspended connection synced");

    // requested-at: one sync per new value, recorded in status.
    connections
        .patch("hris", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}})))
        .await
        .expect("resume");
    connections
        .patch(
            "hris",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"idsync.dev/requested-at": "2026-11-22T10:00:00Z"}}})),
        )
        .await
        .expect("request");
    let handled = eventually(Duration::from_secs(10), || async {
        let s = env.get_connection("hris").await.status?;
        (s.last_handled_requested_at.as_deref() == Some("2026-11-22T10:00:00Z")).then_some(())
    })
    .await;
    assert!(handled.is_some(), "requested-at was not handled");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requested: Vec<_> = env.runs("hris").into_iter().filter(|r| r.trigger == Trigger::RequestedAt).collect();
    assert_eq!(requested.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_whose_secret_is_missing_is_stalled_until_it_appears() {
    let env = Env::start().await;
    env.connection(Connection::test("hris").csv_secret("hr-export-secret", "people.csv").id_column("employee_id"))
        .await;
    let stalled = eventually(Duration::from_secs(10), || async {
        let s = env.get_connection("hris").await.status?;
        let c = idsync_api::conditions::find(&s.conditions, "Stalled")?.clone();
        (c.status == "True").then_some(c)
    })
    .await;
    let Some(stalled) = stalled else {
        panic!("not Stalled: {:#?}", env.get_connection("hris").await);
    };
    assert_eq!(stalled.reason, "SecretNotFound");
    assert!(stalled.message.contains("\"hr-export-secret\""), "{}", stalled.message);

    let secrets: Api<Secret> = Api::namespaced(env.h.client.clone(), "default");
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "hr-export-secret"}, "type": "idsync.dev/credentials",
               "stringData": {"people.csv": export(1..=2)}}))
        .expect("secret");
    secrets.create(&PostParams::default(), &secret).await.expect("create secret");
    let ready = eventually(Duration::from_secs(10), || async {
        let s = env.get_connection("hris").await.status?;
        (idsync_api::conditions::is_true(&s.conditions, "Ready")
            && !idsync_api::conditions::is_true(&s.conditions, "Stalled"))
        .then_some(())
    })
    .await;
    assert!(ready.is_some(), "{:#?}", env.get_connection("hris").await.status);
    let synced = env.sync(full("now", "hris")).await;
    assert_eq!(phase(&synced), Some(Phase::Succeeded), "{:#?}", synced.status);
    assert_eq!(env.accounts("hris").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_connection_purges_its_accounts_from_the_store() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(1..=3)).await;
    env.csv_connection("hris", "hr-export").await;
    env.sync(full("fill", "hris")).await;
    assert_eq!(env.accounts("hris").len(), 3);
    let finalizers = env.get_connection("hris").await.metadata.finalizers.unwrap_or_default();
    assert!(finalizers.contains(&idsync::controller::CONNECTION_FINALIZER.to_string()), "{finalizers:?}");
    let api: Api<Connection> = Api::namespaced(env.h.client.clone(), "default");
    api.delete("hris", &Default::default()).await.expect("delete");
    let gone =
        eventually(Duration::from_secs(10), || async { api.get_opt("hris").await.ok()?.is_none().then_some(()) }).await;
    assert!(gone.is_some(), "the finalizer was never removed");
    assert!(env.accounts("hris").is_empty(), "the deleted connection's accounts are still in the store");
    assert_eq!(env.runs("hris").len(), 1, "the run history is kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_reports_everything_and_commits_nothing() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(1..=6)).await;
    env.csv_connection("hris", "hr-export").await;
    env.sync(full("real", "hris")).await;
    let before = env.accounts("hris");
    let cursor_before =
        env.store().cursor(&ConnectionRef { namespace: "default".into(), name: "hris".into() }).expect("cursor");
    let status_before = env.get_connection("hris").await.status.expect("status");

    env.config_map("hr-export", &(export(2..=6).replace("person3@", "renamed3@") + &person(7) + "\n")).await;
    let dry = env.sync(full("dry", "hris").dry_run()).await;
    assert_eq!(phase(&dry), Some(Phase::Succeeded), "{:#?}", dry.status);
    let t = target(&dry);
    let c = t.counts.expect("counts");
    assert_eq!((c.created, c.updated, c.deleted, c.unchanged), (1, 1, 1, 4));
    assert!(t.message.contains("dry run"), "{}", t.message);
    assert_eq!(env.accounts("hris"), before, "a dry run changed the store");
    let cursor_after =
        env.store().cursor(&ConnectionRef { namespace: "default".into(), name: "hris".into() }).expect("cursor");
    assert_eq!(cursor_after, cursor_before, "a dry run moved the cursor");
    let status_after = env.get_connection("hris").await.status.expect("status");
    assert_eq!(status_after.last_result, status_before.last_result, "a dry run replaced the last result");
    assert_eq!(env.runs("hris").first().and_then(|r| r.outcome), Some(RunOutcome::DryRun));
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_requests_are_deleted_after_their_ttl_and_unresolvable_ones_fail_clearly() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(1..=2)).await;
    env.csv_connection("hris", "hr-export").await;
    // A one-second TTL can delete the request between two polls of a busy
    // machine, so its success is read from what outlives it: the run
    // history and the completion Event.
    env.request(full("short-lived", "hris").ttl_seconds_after_finished(1)).await;
    let api: Api<ResyncRequest> = Api::namespaced(env.h.client.clone(), "default");
    let gone = eventually(Duration::from_secs(30), || async {
        api.get_opt("short-lived").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the request outlived its TTL");
    let runs = env.runs("hris");
    assert!(
        runs.iter().any(|r| r.request.as_deref() == Some("short-lived") && r.outcome == Some(RunOutcome::Succeeded)),
        "{runs:?}"
    );
    let reasons: Vec<String> = env.events_for("short-lived").await.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.contains(&"ResyncSucceeded".to_string()), "it finished before it went: {reasons:?}");

    env.request(ResyncRequest::test("nothing").category(Category::Mdm)).await;
    let failed = env.finished("nothing", Duration::from_secs(30)).await;
    assert_eq!(phase(&failed), Some(Phase::Failed));
    let complete = idsync_api::conditions::find(&failed.status.as_ref().expect("status").conditions, "Complete")
        .cloned()
        .expect("Complete");
    assert_eq!(complete.reason, "TargetNotResolved");
    assert!(complete.message.contains("matched no Connection"), "{}", complete.message);

    env.request(ResyncRequest::test("ghost").connections(["hris", "ghost"])).await;
    let partial = env.finished("ghost", Duration::from_secs(30)).await;
    assert_eq!(phase(&partial), Some(Phase::PartiallyFailed), "{:#?}", partial.status);
    let targets = partial.status.expect("status").targets;
    let ghost = targets.iter().find(|t| t.connection == "ghost").expect("ghost target");
    assert_eq!(ghost.phase, TargetPhase::Failed);
    assert!(ghost.message.contains("not found"), "{}", ghost.message);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sync_has_its_own_event_with_its_own_counts() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(0..10)).await;
    env.csv_connection("hr", "hr-export").await;
    env.sync(full("sync-1", "hr")).await;
    // Two people change their e-mail and three join.
    let second = export(0..13).replace("person1@", "renamed1@").replace("person2@", "renamed2@");
    env.config_map("hr-export", &second).await;
    env.sync(full("sync-2", "hr")).await;
    // One leaves.
    env.config_map("hr-export", &second.replace(&(person(12) + "\n"), "")).await;
    env.sync(full("sync-3", "hr")).await;

    let expected = [
        "created 10, updated 0, deleted 0, unchanged 0",
        "created 3, updated 2, deleted 0, unchanged 8",
        "created 0, updated 0, deleted 1, unchanged 12",
    ];
    let notes = |events: Vec<Event>, reason: &str| -> Vec<String> {
        let mut events: Vec<Event> = events.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).collect();
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        events.into_iter().filter_map(|e| e.note).collect()
    };
    let on_connection = notes(env.events_for("hr").await, "SyncSucceeded");
    assert_eq!(on_connection.len(), 3, "{on_connection:#?}");
    for (note, counts) in on_connection.iter().zip(expected) {
        assert!(note.contains(counts), "expected {counts:?} in {note:?}");
    }
    // Each request's own Event says what its run did, not the first run's.
    for (request, counts) in ["sync-1", "sync-2", "sync-3"].into_iter().zip(expected) {
        let on_request = notes(env.events_for(request).await, "ResyncSucceeded");
        assert_eq!(on_request.len(), 1, "{request}: {on_request:#?}");
        assert!(on_request[0].contains(counts), "{request}: expected {counts:?} in {:?}", on_request[0]);
    }
    // What a person reads: kubectl describe shows the three runs' counts.
    let described = env.h.kubectl_ok(&["describe", "connection", "hr"]).await;
    for counts in expected {
        assert!(described.contains(counts), "kubectl describe lacks {counts:?}:\n{described}");
    }
}

/// A dry run shows what it would change, account by account, in the
/// request's status and the run history, and leaves the Connection's live
/// status as it was, even when it would trip the safeguard.
#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_lists_each_change_and_never_touches_the_live_status() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(0..10)).await;
    env.csv_connection("hr", "hr-export").await;
    env.sync(full("initial", "hr")).await;
    let live = env.get_connection("hr").await.status.expect("status");

    // Person 1 gets a new address; 0, 2 and 3 leave (30% > 20%); 10 joins.
    let next = export([1, 4, 5, 6, 7, 8, 9, 10]).replace("person1@", "renamed1@");
    env.config_map("hr-export", &next).await;
    let preview = env.sync(full("preview", "hr").dry_run()).await;
    let t = target(&preview);
    assert_eq!(t.phase, TargetPhase::SafeguardTripped, "{t:?}");
    assert!(t.message.contains("dry run: would trip the import safeguard"), "{}", t.message);
    assert!(t.message.contains("would delete 3 of 10 accounts (30%)"), "{}", t.message);
    assert_eq!(
        t.preview,
        [
            "create E0010 (person10@acme.example)",
            "update E0001: email person1@acme.example → renamed1@acme.example, attributes.work_email person1@acme.example → renamed1@acme.example",
            "delete E0000 (person0@acme.example)",
            "delete E0002 (person2@acme.example)",
            "delete E0003 (person3@acme.example)",
        ]
    );
    // The run history keeps the whole diff of the dry run.
    let run = t.run.expect("the run's number");
    let kept = env.store().run_changes(run, 0, 100).expect("changes");
    assert_eq!(kept.len(), 5, "{kept:?}");

    // Nothing live moved: not the accounts, not Ready, lastResult or lastSyncTime.
    assert_eq!(env.accounts("hr").len(), 10);
    let after = env.get_connection("hr").await.status.expect("status");
    assert_eq!(after.last_sync_time, live.last_sync_time);
    assert_eq!(after.last_result, live.last_result);
    let ready = |s: &idsync_api::ConnectionStatus| idsync_api::conditions::find(&s.conditions, "Ready").cloned();
    assert_eq!(ready(&after), ready(&live));
}

/// Settings only the provider can judge (a csv delimiter that is a quote, a
/// provider not built yet) stall the Connection as soon as it is applied,
/// not at its first sync.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_provider_setting_stalls_the_connection_at_once() {
    let env = Env::start().await;
    env.config_map("hr-export", &export(0..3)).await;
    env.connection(hr_export("quoted").csv_config_map("hr-export", "people.csv").delimiter("\"")).await;
    let stalled = |name: &'static str| {
        let env = &env;
        async move {
            eventually(Duration::from_secs(30), || async {
                let status = env.get_connection(name).await.status?;
                let stalled = idsync_api::conditions::find(&status.conditions, "Stalled")?.clone();
                (stalled.status == "True").then_some((stalled, status))
            })
            .await
            .unwrap_or_else(|| panic!("{name} did not stall"))
        }
    };
    let (condition, status) = stalled("quoted").await;
    assert_eq!(condition.reason, "InvalidConfiguration");
    assert!(condition.message.contains("spec.provider.csv.delimiter"), "{}", condition.message);
    assert!(status.last_sync_time.is_none(), "it stalled without a sync");
    let ready = idsync_api::conditions::find(&status.conditions, "Ready").expect("Ready");
    assert_eq!(ready.status, "False");

    // Fixed, it is no longer Stalled.
    env.connection(hr_export("quoted").csv_config_map("hr-export", "people.csv")).await;
    let fixed = eventually(Duration::from_secs(30), || async {
        let status = env.get_connection("quoted").await.status?;
        let stalled = idsync_api::conditions::find(&status.conditions, "Stalled")?.clone();
        (stalled.status == "False").then_some(())
    })
    .await;
    assert!(fixed.is_some(), "the fixed Connection stayed Stalled");
}

/// A run a killed operator left unfinished, and its staging, are closed as
/// soon as the next operator starts, not when that connection next syncs.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_operator_closes_the_runs_a_killed_one_left_at_once() {
    use idsync::model::{NewRun, RunMode};
    use idsync::store::{SqliteStore, StagedChange};

    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let data = tempfile::tempdir().expect("data dir");
    let path = data.path().join("idsync.db");
    let left = {
        let store = SqliteStore::open(&path).expect("store");
        let run = store
            .start_run(&NewRun {
                connection: ConnectionRef::new("default", "gone"),
                trigger: Trigger::Scheduled,
                request: None,
                requested_mode: RunMode::Full,
                holder: "operator-killed".into(),
                started_at: jiff::Timestamp::now(),
            })
            .expect("run");
        let staged: Vec<StagedChange> =
            (0..500).map(|i| StagedChange::Upsert(idsync::model::Account::new(format!("E{i}")))).collect();
        store.stage(run, &staged).expect("stage");
        run
    };
    let staging_rows = || -> i64 {
        let db = rusqlite::Connection::open(&path).expect("open");
        db.query_row("SELECT count(*) FROM staging", [], |r| r.get(0)).expect("count")
    };
    assert_eq!(staging_rows(), 500);

    let operator = Operator::start(&h.cluster, data.path(), Arc::new(TestClock::default()), test_config("operator-b"));
    let closed = eventually(Duration::from_secs(20), || async {
        let record = SqliteStore::open(&path).ok()?.run(left).ok()??;
        (record.outcome == Some(RunOutcome::Interrupted)).then_some(record)
    })
    .await
    .expect("the left run was not closed at startup");
    assert!(closed.message.contains("the operator stopped while this sync ran"), "{}", closed.message);
    assert_eq!(staging_rows(), 0, "the left run's staging stayed");
    operator.kill();
}

/// A graceful stop (SIGTERM) mid-sync interrupts the sync as a kill -9
/// would: nothing is applied, the request is not marked failed, and the
/// next operator runs it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_stopped_by_shutdown_is_run_again_by_the_next_operator() {
    let mut env = Env::start().await;
    let server = CsvServer::start(&export(1..=300)).await;
    env.url_connection("stopped", &server.url, 50).await;
    env.sync(full("before", "stopped")).await;
    let before = env.accounts("stopped");

    server.set(|b| {
        b.body = export(1..=300).replace("@acme.example", "@after.example");
        b.delay_per_chunk = Duration::from_millis(300);
        b.chunk_lines = 50;
    });
    env.request(full("during-shutdown", "stopped")).await;
    let api: Api<ResyncRequest> = Api::namespaced(env.h.client.clone(), "default");
    eventually(Duration::from_secs(10), || async {
        let r = api.get("during-shutdown").await.ok()?;
        (r.status.as_ref()?.targets.first()?.phase == TargetPhase::Running).then_some(())
    })
    .await
    .expect("the sync started");
    env.operator.take().expect("operator").stop().await;
    assert_eq!(env.accounts("stopped"), before, "a stopped sync left partial changes");
    let waiting = api.get("during-shutdown").await.expect("request");
    assert_eq!(target(&waiting).phase, TargetPhase::Running, "the request was not left for the next operator");
    let interrupted = env.runs("stopped").into_iter().find(|r| r.outcome == Some(RunOutcome::Interrupted));
    let interrupted = interrupted.expect("the stopped run is recorded as interrupted");
    assert!(interrupted.message.contains("the operator is shutting down"), "{}", interrupted.message);

    server.set(|b| b.delay_per_chunk = Duration::ZERO);
    let successor = Operator::start(&env.h.cluster, env.data.path(), env.clock.clone(), test_config("operator-b"));
    let request = env.finished("during-shutdown", Duration::from_secs(60)).await;
    assert_eq!(phase(&request), Some(Phase::Succeeded), "{:#?}", request.status);
    assert!(
        env.accounts("stopped").values().all(|a| a.email.as_deref().is_some_and(|e| e.ends_with("@after.example")))
    );
    successor.kill();
}
