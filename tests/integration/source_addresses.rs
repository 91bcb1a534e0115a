//! Where a Connection's source may be (`spec.network`): a source on the
//! operator's own host stalls the Connection with reason AddressNotAllowed
//! until it opts in, and an LDAP Connection that turns certificate
//! verification off says so in its status and in a Warning Event.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::csv_server::CsvServer;
use common::operator::{Operator, TestClock, test_config};
use common::{Harness, eventually};
use idsync_api::connection::TLS_VERIFIED;
use idsync_api::fixtures::ConnectionBuilder;
use idsync_api::resync_request::Phase;
use idsync_api::{Connection, ResyncRequest, conditions};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams};

const EXPORT: &str = "employee_id,work_email\nE1,a@acme.example\nE2,b@acme.example\n";

async fn start() -> (Harness, Operator, tempfile::TempDir) {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let data = tempfile::tempdir().expect("data dir");
    let operator = Operator::start(&h.cluster, data.path(), Arc::new(TestClock::default()), test_config("operator-a"));
    (h, operator, data)
}

async fn apply(h: &Harness, connection: ConnectionBuilder) {
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let object = connection.build();
    let name = object.metadata.name.clone().expect("name");
    api.patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&object)).await.expect("connection");
}

async fn condition(h: &Harness, name: &str, type_: &str) -> Option<Condition> {
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let status = api.get(name).await.ok()?.status?;
    conditions::find(&status.conditions, type_).cloned()
}

/// Waits for condition `type_` of `name` to satisfy `check`.
async fn wait_for(h: &Harness, name: &str, type_: &str, check: impl Fn(&Condition) -> bool) -> Condition {
    let found =
        eventually(Duration::from_secs(20), || async { condition(h, name, type_).await.filter(|c| check(c)) }).await;
    match found {
        Some(found) => found,
        None => panic!("{name}: {type_} never as expected: {:?}", condition(h, name, type_).await),
    }
}

fn hr(name: &str) -> ConnectionBuilder {
    Connection::test(name).id_column("employee_id").column("email", "work_email")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_on_the_operators_host_is_stalled_until_the_connection_allows_loopback() {
    let (h, operator, _data) = start().await;
    let server = CsvServer::start(EXPORT).await;
    let by_name = server.url.replace("127.0.0.1", "localhost");
    apply(&h, hr("by-ip").csv_url(&server.url).allow_loopback(false)).await;
    apply(&h, hr("by-name").csv_url(&by_name).allow_loopback(false)).await;

    let stalled = wait_for(&h, "by-ip", conditions::STALLED, |c| c.status == "True").await;
    assert_eq!(stalled.reason, "AddressNotAllowed", "{stalled:?}");
    assert_eq!(
        stalled.message,
        "spec.provider.csv.source.url: 127.0.0.1, a loopback address; set spec.network.allowLoopback: true if this \
         source really runs on the operator's host"
    );
    let stalled = wait_for(&h, "by-name", conditions::STALLED, |c| c.status == "True").await;
    assert_eq!(stalled.reason, "AddressNotAllowed", "{stalled:?}");
    assert!(stalled.message.starts_with("spec.provider.csv.source.url: localhost resolves to "), "{stalled:?}");

    // A ResyncRequest does not get through either: the sync itself checks.
    h.create_request(ResyncRequest::test("refused").connections(["by-ip"]).full()).await;
    let done = h.finished_request("refused", Duration::from_secs(30)).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    assert!(format!("{status:?}").contains("a loopback address"), "{status:#?}");
    assert_eq!(server.request_count(), 0, "nothing was sent to the operator's host");

    // Opting in clears the stall at once and the export syncs.
    apply(&h, hr("by-ip").csv_url(&server.url).allow_loopback(true)).await;
    wait_for(&h, "by-ip", conditions::STALLED, |c| c.status == "False").await;
    h.create_request(ResyncRequest::test("allowed").connections(["by-ip"]).full()).await;
    let done = h.finished_request("allowed", Duration::from_secs(30)).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let count = api.get("by-ip").await.expect("connection").status.and_then(|s| s.account_count);
    assert_eq!(count, Some(2));
    assert!(server.request_count() >= 1);
    operator.stop().await;
}

async fn insecure_tls_events(h: &Harness, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(h.client.clone(), "default");
    let events = api.list(&ListParams::default().fields(&format!("regarding.name={name}"))).await.expect("events");
    events.items.into_iter().filter(|e| e.reason.as_deref() == Some("InsecureTLS")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ldap_connection_without_certificate_verification_is_warned_about() {
    let (h, operator, _data) = start().await;
    let directory = |insecure: bool| {
        let c = Connection::test("dir")
            .ldap("ldaps://ldap.example.invalid:636", "ou=people,dc=acme,dc=example")
            .credentials("dir-credentials");
        if insecure { c.insecure_skip_tls_verify() } else { c }
    };
    apply(&h, directory(true)).await;
    let tls = wait_for(&h, "dir", TLS_VERIFIED, |c| c.status == "False").await;
    assert_eq!(tls.reason, "InsecureSkipTlsVerify");
    assert!(tls.message.contains("insecureSkipTlsVerify is true"), "{tls:?}");
    let events = eventually(Duration::from_secs(20), || async {
        let events = insecure_tls_events(&h, "dir").await;
        (!events.is_empty()).then_some(events)
    })
    .await
    .expect("an InsecureTLS Event");
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));

    // Another reconcile (a label changes nothing of the spec) warns no more.
    apply(&h, directory(true).label("team", "iam")).await;
    let relabelled = eventually(Duration::from_secs(20), || async {
        let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
        let c = api.get("dir").await.ok()?;
        c.metadata.labels.as_ref().and_then(|l| l.get("team")).map(|_| ())
    })
    .await;
    assert!(relabelled.is_some());
    // Verification back on removes the condition.
    apply(&h, directory(false)).await;
    let gone = eventually(Duration::from_secs(20), || async {
        condition(&h, "dir", TLS_VERIFIED).await.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "{:?}", condition(&h, "dir", TLS_VERIFIED).await);
    assert_eq!(insecure_tls_events(&h, "dir").await.len(), 1, "one Warning per change, not per reconcile");
    operator.stop().await;
}
