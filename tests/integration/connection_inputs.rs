//! A Connection's Secrets and ConfigMaps: the operator follows them by
//! their metadata only, re-checks the Connections that name one as soon as
//! it appears or changes, and gets the data of a named one when it checks
//! or syncs the Connection.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::operator::{Operator, TestClock, test_config};
use common::{Harness, eventually};
use idsync_api::conditions;
use idsync_api::fixtures::ConnectionBuilder;
use idsync_api::{Connection, ResyncRequest};
use idsync_devcluster::reads::{ReadCount, ReadVerb};
use idsync_devcluster::representation::Representation;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const EXPORT: &str = "employee_id,work_email\nE1,a@acme.example\nE2,b@acme.example\n";

/// A devcluster with the CRDs and an operator whose periodic requeue is an
/// hour away, so only a watch event can re-check a Connection in time.
/// (A Connection with a problem is requeued after 30 s at the soonest.)
async fn start() -> (Harness, Operator, tempfile::TempDir) {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let data = tempfile::tempdir().expect("data dir");
    let mut config = test_config("operator-a");
    config.max_requeue = Duration::from_secs(3600);
    let operator = Operator::start(&h.cluster, data.path(), Arc::new(TestClock::default()), config);
    (h, operator, data)
}

/// Applies an HR export Connection with id column `employee_id`, its
/// source given by `source`.
async fn connection(h: &Harness, name: &str, source: impl FnOnce(ConnectionBuilder) -> ConnectionBuilder) {
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let object = source(Connection::test(name).id_column("employee_id")).build();
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&object)).await.expect("connection");
}

async fn condition(h: &Harness, name: &str, type_: &str) -> Option<Condition> {
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let status = api.get(name).await.ok()?.status?;
    conditions::find(&status.conditions, type_).cloned()
}

async fn stalled_with(h: &Harness, name: &str, reason: &str) {
    let found = eventually(Duration::from_secs(20), || async {
        condition(h, name, conditions::STALLED).await.filter(|c| c.status == "True" && c.reason == reason)
    })
    .await;
    assert!(found.is_some(), "{name} not Stalled with {reason}: {:?}", condition(h, name, conditions::STALLED).await);
}

/// Ready and no longer Stalled, well before the 30 s requeue.
async fn recovered(h: &Harness, name: &str) {
    let ready = eventually(Duration::from_secs(20), || async {
        let ready = condition(h, name, conditions::READY).await?;
        let stalled = condition(h, name, conditions::STALLED).await?;
        (ready.status == "True" && stalled.status == "False").then_some(())
    })
    .await;
    assert!(ready.is_some(), "{name} did not recover: {:?}", condition(h, name, conditions::STALLED).await);
}

/// A Secret idsync may read: labelled `idsync.dev/credentials: "true"`.
fn secret(name: &str, key: &str, value: &str) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"idsync.dev/credentials": "true"}},
                                  "stringData": {key: value}}))
    .expect("secret")
}

fn reads_of(h: &Harness, resource: &str) -> Vec<ReadCount> {
    h.cluster.reads().into_iter().filter(|c| c.resource == resource).collect()
}

fn count(reads: &[ReadCount], verb: ReadVerb, representation: Representation) -> u64 {
    reads.iter().filter(|c| c.verb == verb && c.representation == representation).map(|c| c.count).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_connection_recovers_when_its_secret_appears_or_its_config_map_changes() {
    let (h, operator, _data) = start().await;
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), "default");
    let config_maps: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");

    // One Connection waits for a Secret that does not exist yet, the other
    // for a key its ConfigMap does not have yet.
    connection(&h, "from-secret", |c| c.csv_secret("hr-secret", "people.csv")).await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hr-config"}, "data": {"old.csv": EXPORT}});
    config_maps.patch("hr-config", &PatchParams::apply("test"), &Patch::Apply(&cm)).await.expect("configmap");
    connection(&h, "from-config-map", |c| c.csv_config_map("hr-config", "people.csv")).await;
    stalled_with(&h, "from-secret", "SecretNotFound").await;
    stalled_with(&h, "from-config-map", "KeyNotFound").await;

    // A Secret appearing (ADDED) re-checks the Connection that names it.
    secrets.create(&PostParams::default(), &secret("hr-secret", "people.csv", EXPORT)).await.expect("create secret");
    recovered(&h, "from-secret").await;

    // A ConfigMap changing (MODIFIED) re-checks the Connection that names it.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hr-config"}, "data": {"people.csv": EXPORT}});
    config_maps.patch("hr-config", &PatchParams::apply("test"), &Patch::Apply(&cm)).await.expect("configmap");
    recovered(&h, "from-config-map").await;

    // And the data is read when a sync needs it.
    h.create_request(ResyncRequest::test("sync-both").connections(["from-secret", "from-config-map"]).full()).await;
    let done = h.finished_request("sync-both", Duration::from_secs(30)).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(idsync_api::resync_request::Phase::Succeeded), "{status:#?}");
    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    for name in ["from-secret", "from-config-map"] {
        let count = connections.get(name).await.expect("connection").status.and_then(|s| s.account_count);
        assert_eq!(count, Some(2), "{name}");
    }
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_lists_and_watches_secrets_and_config_maps_by_metadata_only() {
    let (h, operator, _data) = start().await;
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), "default");
    for i in 0..5 {
        let name = format!("unrelated-{i}");
        secrets.create(&PostParams::default(), &secret(&name, "token", "not-for-idsync")).await.expect("secret");
    }
    secrets.create(&PostParams::default(), &secret("hr-secret", "people.csv", EXPORT)).await.expect("secret");
    connection(&h, "hris", |c| c.csv_secret("hr-secret", "people.csv")).await;
    recovered(&h, "hris").await;

    // Both watches are up (listed, then watching) by metadata.
    let watching = eventually(Duration::from_secs(20), || async {
        ["secrets", "configmaps"]
            .iter()
            .all(|resource| {
                let reads = reads_of(&h, resource);
                count(&reads, ReadVerb::List, Representation::Metadata) >= 1
                    && count(&reads, ReadVerb::Watch, Representation::Metadata) >= 1
            })
            .then_some(())
    })
    .await;
    assert!(watching.is_some(), "{:#?}", h.cluster.reads());

    // The named Secret's data came by a get.
    let gets = count(&reads_of(&h, "secrets"), ReadVerb::Get, Representation::Object);
    assert!(gets >= 1, "{:#?}", h.cluster.reads());

    // A Secret no Connection names changing, and a sync: still no full
    // list or watch (a relist would be one).
    secrets
        .replace("unrelated-0", &PostParams::default(), &secret("unrelated-0", "token", "rotated"))
        .await
        .expect("replace");
    h.create_request(ResyncRequest::test("sync").connections(["hris"]).full()).await;
    h.finished_request("sync", Duration::from_secs(30)).await;

    for resource in ["secrets", "configmaps"] {
        let reads = reads_of(&h, resource);
        for verb in [ReadVerb::List, ReadVerb::Watch] {
            assert_eq!(count(&reads, verb, Representation::Object), 0, "{resource} {verb:?} in full: {reads:#?}");
        }
    }
    operator.stop().await;
}

/// A Connection cannot read just any Secret of its namespace: one not
/// marked for idsync stalls it, saying how to mark it; marked (by label, or
/// created with its type as `kubectl create secret` does), it is read.
#[tokio::test(flavor = "multi_thread")]
async fn only_secrets_marked_for_idsync_are_read() {
    let (h, operator, _data) = start().await;
    // Somebody else's Secret: an Opaque one, applied with kubectl.
    // (`kubectl create secret` sends protobuf, which the devcluster does not
    // decode yet.)
    let apply = |name: &str, yaml: String| {
        let path = h.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("manifest");
        path.display().to_string()
    };
    let opaque = apply(
        "db-password",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db-password}\nstringData: {people.csv: \"id\\nE1\\n\"}\n"
            .into(),
    );
    h.kubectl_ok(&["apply", "-f", &opaque]).await;
    connection(&h, "sneaky", |c| c.csv_secret("db-password", "people.csv").id_column("id")).await;
    stalled_with(&h, "sneaky", "SecretNotAllowed").await;
    let said = condition(&h, "sneaky", conditions::STALLED).await.expect("Stalled").message;
    assert!(said.contains("kubectl label secret db-password idsync.dev/credentials=true"), "{said}");
    assert!(!said.contains("E1"), "the Secret's content reached the status: {said}");

    // Marked by a label: read.
    h.kubectl_ok(&["label", "secret", "db-password", "idsync.dev/credentials=true"]).await;
    recovered(&h, "sneaky").await;

    // Of idsync's type: read too.
    let typed = apply(
        "hr-export",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: hr-export}\ntype: idsync.dev/credentials\nstringData: {people.csv: \"id\\nE2\\n\"}\n"
            .into(),
    );
    h.kubectl_ok(&["apply", "-f", &typed]).await;
    connection(&h, "typed", |c| c.csv_secret("hr-export", "people.csv").id_column("id")).await;
    recovered(&h, "typed").await;
    operator.stop().await;
}
