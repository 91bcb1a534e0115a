//! Notifications end to end: the operator mails a real SMTP server
//! (`aiosmtpd`) and posts to a webhook receiver that checks each payload's
//! signature, from the outbox in its store: once per event, after a
//! receiver's outage, and after a crash between the commit and the send.

mod smtp_sink;
mod webhook_receiver;

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Harness, eventually};
use idsync::store::SqliteStore;
use idsync::store::outbox::NotificationOutbox;
use idsync_api::resync_request::{Phase, Scope};
use idsync_api::{
    Connection, IdentityProfile, NotificationEvent, NotificationPolicy, NotificationProvider, ResyncRequest,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use smtp_sink::{Mail, SmtpSink};
use webhook_receiver::WebhookReceiver;

const HEADER: &str = "employee_id,work_email";

fn export(ids: impl IntoIterator<Item = usize>) -> String {
    let mut lines = vec![HEADER.to_string()];
    lines.extend(ids.into_iter().map(|i| format!("E{i:04},person{i}@acme.example")));
    lines.join("\n") + "\n"
}

async fn apply<K: serde::Serialize>(h: &Harness, object: K) {
    h.apply_json(serde_json::to_value(object).expect("json")).await;
}

async fn apply_provider(h: &Harness, provider: impl Into<NotificationProvider>) {
    apply(h, provider.into()).await;
}

async fn apply_policy(h: &Harness, policy: impl Into<NotificationPolicy>) {
    apply(h, policy.into()).await;
}

/// A ConfigMap holding `body` as `people.csv`, and a csv Connection reading it.
async fn csv_connection(h: &Harness, name: &str, body: &str) {
    h.apply_json(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{name}-export")},
        "data": {"people.csv": body}}))
        .await;
    let connection = Connection::test(name)
        .csv_config_map(&format!("{name}-export"), "people.csv")
        .id_column("employee_id")
        .column("email", "work_email")
        .build();
    apply(h, connection).await;
}

/// A Secret idsync may read (labelled `idsync.dev/credentials=true`).
async fn credentials(h: &Harness, name: &str, data: serde_json::Value) {
    h.apply_json(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": {"idsync.dev/credentials": "true"}}, "stringData": data}))
        .await;
}

async fn policy_status(h: &Harness, name: &str) -> serde_json::Value {
    let api: Api<NotificationPolicy> = Api::namespaced(h.client.clone(), "default");
    let policy = api.get(name).await.expect("policy");
    serde_json::to_value(policy.status.unwrap_or_default()).expect("status json")
}

fn condition<'a>(status: &'a serde_json::Value, type_: &str) -> Option<&'a serde_json::Value> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn by_message_id(mails: &[Mail]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for mail in mails {
        *ids.entry(mail.message_id.clone()).or_insert(0) += 1;
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_two_connections_mails_its_requester_when_it_starts_and_when_it_completes() {
    let common::operator::Started { h, operator, .. } = common::operator::start_operator().await;
    let sink = SmtpSink::start().await;
    csv_connection(&h, "hr", &export(1..=5)).await;
    csv_connection(&h, "gh", &export(1..=3)).await;
    apply_provider(&h, NotificationProvider::test("mail").smtp_sink(sink.port, "idsync@acme.example")).await;
    let request = ResyncRequest::test("resync-both")
        .connections(["hr", "gh"])
        .full()
        .requested_by("alice")
        .notify("alice@acme.example");
    h.create_request(request).await;
    let done = h.finished_request("resync-both", Duration::from_secs(60)).await;
    assert_eq!(done.status.and_then(|s| s.phase), Some(Phase::Succeeded));

    let mails = sink.wait_for(2, Duration::from_secs(60), |m| m.to == ["alice@acme.example"]).await;
    let started = mails.iter().find(|m| m.subject.contains("started")).expect("a start mail");
    assert_eq!(started.subject, "[idsync] ResyncRequest default/resync-both started: connections hr, gh");
    assert_eq!(started.from, "idsync@acme.example");
    for expected in
        ["Requested by: alice", "Mode:         Full", "Scope:        Accounts", "  gh: Pending", "  hr: Pending"]
    {
        assert!(started.body.contains(expected), "missing {expected:?} in:\n{}", started.body);
    }
    let completed = mails.iter().find(|m| m.subject.contains("finished")).expect("a completion mail");
    assert_eq!(completed.subject, "[idsync] ResyncRequest default/resync-both finished: Succeeded");
    for expected in [
        "Requested by: alice",
        "Outcome:      Succeeded",
        "2 of 2 connection(s) synced",
        "  hr Full: Succeeded: created 5, updated 0, deleted 0, unchanged 0",
        "  gh Full: Succeeded: created 3, updated 0, deleted 0, unchanged 0",
        "create E0001 (person1@acme.example)",
        "kubectl -n default describe resyncrequest resync-both",
    ] {
        assert!(completed.body.contains(expected), "missing {expected:?} in:\n{}", completed.body);
    }
    // Each once: the requeues and re-reconciles of a finished request
    // announce nothing new.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(by_message_id(&mails).values().all(|n| *n == 1), "{mails:#?}");
    operator.stop().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sync_is_its_own_mail_and_a_safeguard_trip_says_how_to_confirm() {
    let common::operator::Started { h, operator, .. } = common::operator::start_operator().await;
    let sink = SmtpSink::start().await;
    csv_connection(&h, "hr", &export(1..=10)).await;
    apply_provider(&h, NotificationProvider::test("mail").smtp_sink(sink.port, "idsync@acme.example")).await;
    let policy = NotificationPolicy::test("hr-admins")
        .provider("mail", ["admins@acme.example"])
        .events([NotificationEvent::SyncSucceeded, NotificationEvent::SafeguardTripped])
        .connections(["hr"]);
    apply_policy(&h, policy).await;

    for (i, name) in ["first", "second"].into_iter().enumerate() {
        h.create_request(ResyncRequest::test(name).connections(["hr"])).await;
        h.finished_request(name, Duration::from_secs(60)).await;
        sink.wait_for(i + 1, Duration::from_secs(60), |m| m.subject.contains("succeeded")).await;
    }
    // Nine of ten people gone: more than the default 20% the safeguard allows.
    csv_connection(&h, "hr", &export(1..=1)).await;
    h.create_request(ResyncRequest::test("third").connections(["hr"])).await;
    h.finished_request("third", Duration::from_secs(60)).await;
    let tripped = sink.wait_for(1, Duration::from_secs(60), |m| m.subject.contains("safeguard")).await;
    let mail = &tripped[0];
    assert_eq!(mail.to, ["admins@acme.example"]);
    assert_eq!(mail.subject, "[idsync] Full sync of Connection default/hr held back by the import safeguard");
    for expected in [
        "Request:      ResyncRequest default/third",
        "Outcome:      SafeguardTripped",
        "confirmDeletes: true",
        "connections: [hr]",
        "kubectl -n default describe connection hr",
        "delete E0002 (person2@acme.example)",
    ] {
        assert!(mail.body.contains(expected), "missing {expected:?} in:\n{}", mail.body);
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 3, "two syncs and a trip, one mail each: {mails:#?}");
    let runs: Vec<&str> = mails.iter().filter_map(|m| m.body.lines().find(|l| l.starts_with("Run:"))).collect();
    let distinct: std::collections::BTreeSet<&&str> = runs.iter().collect();
    assert_eq!(distinct.len(), 3, "each mail is about its own run: {runs:?}");
    assert!(by_message_id(&mails).values().all(|n| *n == 1), "{mails:#?}");
    operator.stop().await;
    sink.stop().await;
}

const SIGNING_SECRET: &str = "whsec-9f8e7d6c5b4a-never-shown";

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_down_for_a_while_gets_the_notification_later_once_and_signed() {
    let common::operator::Started { h, operator, .. } = common::operator::start_operator().await;
    // Down for the first two attempts (503), up for the third.
    let receiver = WebhookReceiver::start(SIGNING_SECRET, 2).await;
    credentials(&h, "hook-signing", json!({"key": SIGNING_SECRET})).await;
    csv_connection(&h, "hr", &export(1..=5)).await;
    apply_provider(&h, NotificationProvider::test("hook").webhook(&receiver.url).signing_secret("hook-signing", "key"))
        .await;
    apply_policy(&h, NotificationPolicy::test("ops").provider("hook", []).events([NotificationEvent::SyncSucceeded]))
        .await;
    h.create_request(ResyncRequest::test("sync-hr").connections(["hr"]).requested_by("bob")).await;
    h.finished_request("sync-hr", Duration::from_secs(60)).await;

    // Backoff waits about 10 s, then about 20 s.
    let delivered =
        eventually(Duration::from_secs(120), || async { receiver.received().into_iter().find(|r| r.accepted) })
            .await
            .unwrap_or_else(|| panic!("never delivered: {:#?}", receiver.received()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 3, "two refused attempts and one delivery: {received:#?}");
    assert_eq!(received.iter().filter(|r| r.accepted).count(), 1);
    assert!(received.iter().all(|r| r.signature_valid), "every attempt is signed with the secret");
    assert!(received.iter().all(|r| r.idempotency_key == delivered.idempotency_key), "one key for every attempt");
    assert!(received.iter().all(|r| r.event == "SyncSucceeded"));
    let payload = &delivered.body;
    assert_eq!(payload["idempotencyKey"], delivered.idempotency_key.as_str());
    assert_eq!(payload["event"], "SyncSucceeded");
    assert_eq!(payload["kind"], "Connection");
    assert_eq!(payload["name"], "hr");
    assert_eq!(payload["request"], "sync-hr");
    assert_eq!(payload["counts"]["created"], 5);
    assert_eq!(payload["kubectl"], "kubectl -n default describe connection hr");
    let text = payload["text"].as_str().expect("a Slack text");
    assert!(text.starts_with("Full sync of Connection default/hr succeeded: created 5"), "{text}");
    assert!(!delivered.raw.contains(SIGNING_SECRET));

    let status = eventually(Duration::from_secs(20), || async {
        let status = policy_status(&h, "ops").await;
        (status["delivered"] == 1).then_some(status)
    })
    .await
    .expect("the policy's status counts the delivery");
    assert_eq!(status["failedDeliveries"], 2, "{status:#}");
    assert_eq!(condition(&status, "Delivering").map(|c| c["status"].clone()), Some(json!("True")), "{status:#}");
    assert_eq!(condition(&status, "Ready").map(|c| c["status"].clone()), Some(json!("True")), "{status:#}");
    assert!(status["lastFailureMessage"].as_str().is_some_and(|m| m.contains("HTTP 503")), "{status:#}");
    assert!(!status.to_string().contains(SIGNING_SECRET));
    operator.stop().await;
}

const SMTP_PASSWORD: &str = "pa55-smtp-never-shown";

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_provider_shows_on_the_policy_and_the_sync_still_succeeds() {
    let common::operator::Started { h, operator, .. } = common::operator::start_operator().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    credentials(&h, "smtp-login", json!({"username": "idsync", "password": SMTP_PASSWORD})).await;
    csv_connection(&h, "hr", &export(1..=5)).await;
    apply_provider(
        &h,
        NotificationProvider::test("mail").smtp_sink(closed, "idsync@acme.example").smtp_credentials("smtp-login"),
    )
    .await;
    let policy = NotificationPolicy::test("broken")
        .provider("mail", ["admins@acme.example"])
        .provider("missing", [])
        .events([NotificationEvent::SyncSucceeded]);
    apply_policy(&h, policy).await;
    // A policy with nothing to send yet still says its provider is missing.
    apply_policy(
        &h,
        NotificationPolicy::test("idle").provider("nowhere", []).events([NotificationEvent::ChangesPending]),
    )
    .await;
    h.create_request(ResyncRequest::test("sync-hr").connections(["hr"])).await;
    let done = h.finished_request("sync-hr", Duration::from_secs(60)).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{done:#?}");
    let idle = eventually(Duration::from_secs(60), || async {
        let status = policy_status(&h, "idle").await;
        (condition(&status, "Ready")?["reason"] == "ProviderNotFound").then_some(status)
    })
    .await
    .expect("the idle policy's Ready names the missing provider");
    assert!(condition(&idle, "Ready").expect("Ready")["message"].as_str().is_some_and(|m| m.contains("nowhere")));
    assert_eq!(idle["failedDeliveries"], 0);

    let status = eventually(Duration::from_secs(30), || async {
        let status = policy_status(&h, "broken").await;
        (status["failedDeliveries"].as_u64() >= Some(2)).then_some(status)
    })
    .await
    .unwrap_or_else(|| panic!("no failure on the policy's status"));
    let delivering = condition(&status, "Delivering").expect("Delivering");
    assert_eq!(
        (delivering["status"].as_str(), delivering["reason"].as_str()),
        (Some("False"), Some("DeliveryFailing"))
    );
    let ready = condition(&status, "Ready").expect("Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ProviderNotFound")));
    assert!(ready["message"].as_str().is_some_and(|m| m.contains("missing")), "{status:#}");
    assert_eq!(status["delivered"], 0);
    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let connection = serde_json::to_string(&connections.get("hr").await.expect("hr")).expect("json");
    for written in [status.to_string(), connection, serde_json::to_string(&done).expect("json")] {
        assert!(!written.contains(SMTP_PASSWORD), "a credential was written: {written}");
    }
    operator.stop().await;
}

/// `idsync run` as a process of its own, so that its abort is the real thing.
fn idsync_run(h: &Harness, data: &Path, name: &str, failpoint: bool) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_idsync"));
    command
        .args(["run", "--data-dir"])
        .arg(data)
        .args(["--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", h.kubeconfig())
        .env("POD_NAMESPACE", "default")
        .env("POD_NAME", name)
        .env_remove("IDSYNC_NOTIFY_FAILPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if failpoint {
        command.env("IDSYNC_NOTIFY_FAILPOINT", "abort-before-send");
    }
    command.spawn().expect("idsync run starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notification_committed_before_a_crash_is_sent_once_after_the_restart() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let sink = SmtpSink::start().await;
    let data = tempfile::tempdir().expect("data dir");
    csv_connection(&h, "hr", &export(1..=5)).await;
    apply_provider(&h, NotificationProvider::test("mail").smtp_sink(sink.port, "idsync@acme.example")).await;
    let policy = NotificationPolicy::test("ops")
        .provider("mail", ["ops@acme.example"])
        .events([NotificationEvent::SyncSucceeded]);
    apply_policy(&h, policy).await;

    // The first operator commits the sync with its notification, and
    // aborts as it is about to send it.
    let mut first = idsync_run(&h, data.path(), "crashing", true);
    h.create_request(ResyncRequest::test("sync-hr").connections(["hr"])).await;
    let ended = tokio::time::timeout(Duration::from_secs(120), first.wait()).await.expect("it aborts").expect("status");
    assert!(!ended.success(), "the fail point aborts the operator: {ended:?}");
    assert!(sink.mails().is_empty(), "nothing was sent before the crash");
    let pending: Vec<_> = SqliteStore::open(&data.path().join("idsync.db"))
        .expect("store")
        .outbox_records(100)
        .expect("outbox")
        .into_iter()
        .filter(|r| r.state == "Pending")
        .collect();
    assert_eq!(pending.len(), 1, "the sync's notification committed with it: {pending:#?}");
    assert_eq!(pending[0].entry.event, "SyncSucceeded");
    let key = pending[0].entry.key.clone();

    // Kubernetes would hand the dead leader's Leases over once they lapse.
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), "default");
    for lease in ["idsync-leader", "idsync-sync-hr"] {
        let _ = leases.delete(lease, &DeleteParams::default()).await;
    }
    let mut second = idsync_run(&h, data.path(), "restarted", false);
    let mails = sink.wait_for(1, Duration::from_secs(90), |m| m.message_id == format!("<{key}@idsync.dev>")).await;
    assert!(mails[0].body.contains("Run:          1 "), "{}", mails[0].body);
    let sent = eventually(Duration::from_secs(30), || async {
        let store = SqliteStore::open(&data.path().join("idsync.db")).ok()?;
        let records = store.outbox_records(100).ok()?;
        records.iter().all(|r| r.state == "Sent").then_some(records)
    })
    .await
    .expect("everything in the outbox is sent");
    let first_run = sent.iter().find(|r| r.entry.key == key).expect("the committed notification");
    assert_eq!(first_run.attempts, 1, "sent once, on the first attempt after the restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = sink.mails();
    let ids = by_message_id(&mails);
    assert_eq!(ids.get(&format!("<{key}@idsync.dev>")), Some(&1), "{mails:#?}");
    assert!(ids.values().all(|n| *n == 1), "no notification twice: {mails:#?}");
    let _ = second.kill().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_for_every_event_hears_each_step_of_a_request_once() {
    let common::operator::Started { h, operator, .. } = common::operator::start_operator().await;
    let receiver = WebhookReceiver::start(SIGNING_SECRET, 0).await;
    credentials(&h, "hook-signing", json!({"key": SIGNING_SECRET})).await;
    csv_connection(&h, "hr", &export(1..=4)).await;
    let profile =
        IdentityProfile::test("employees").authoritative("hr").attribute("email", "accounts.hr.email").build();
    apply(&h, profile).await;
    apply_provider(&h, NotificationProvider::test("hook").webhook(&receiver.url).signing_secret("hook-signing", "key"))
        .await;
    apply_policy(&h, NotificationPolicy::test("everything").provider("hook", [])).await;
    let request = ResyncRequest::test("sync-and-process")
        .connections(["hr"])
        .scope(Scope::AccountsAndIdentities)
        .requested_by("carol");
    h.create_request(request).await;
    h.finished_request("sync-and-process", Duration::from_secs(60)).await;

    let wanted = ["RequestStarted", "SyncStarted", "SyncSucceeded", "ProcessingSucceeded", "RequestCompleted"];
    let seen = eventually(Duration::from_secs(60), || async {
        let events: Vec<String> = receiver.received().into_iter().map(|r| r.event).collect();
        wanted.iter().all(|w| events.iter().any(|e| e == w)).then_some(())
    })
    .await;
    assert!(seen.is_some(), "not every event arrived: {:#?}", receiver.received());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = receiver.received();
    let mut keys = std::collections::BTreeSet::new();
    for r in &received {
        assert!(r.signature_valid && r.accepted, "{r:#?}");
        assert!(keys.insert(r.idempotency_key.clone()), "delivered twice: {r:#?}");
    }
    let of = |event: &str| received.iter().filter(|r| r.event == event).map(|r| &r.body).collect::<Vec<_>>();
    for event in ["RequestStarted", "SyncStarted", "SyncSucceeded", "RequestCompleted"] {
        assert_eq!(of(event).len(), 1, "{event} once: {received:#?}");
    }
    // The profile also processes on its own (when created, and after the
    // sync changed its accounts): one notice per processing run.
    let processing = of("ProcessingSucceeded");
    let runs: std::collections::BTreeSet<String> = processing.iter().map(|p| p["run"].to_string()).collect();
    assert_eq!(runs.len(), processing.len(), "one notice per run: {processing:#?}");
    let requested: Vec<_> = processing.iter().filter(|p| p["request"] == "sync-and-process").collect();
    assert_eq!(requested.len(), 1, "{processing:#?}");
    assert_eq!(requested[0]["kind"], "IdentityProfile");
    assert_eq!(requested[0]["profiles"][0]["processed"], 4);
    let completed = of("RequestCompleted")[0];
    assert_eq!(completed["requestedBy"], "carol");
    assert_eq!(completed["outcome"], "Succeeded");
    assert_eq!(completed["targets"][0]["counts"]["created"], 4);
    assert_eq!(completed["profiles"][0]["profile"], "employees");
    operator.stop().await;
}
