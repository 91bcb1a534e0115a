//! An object the operator cannot decode stops nothing but itself. The case
//! from the field: a Connection stored with `maxDeleteCount: 1e+23` while
//! the CRD still allowed any number; the CRD then gained integer maxima, and
//! the API server (which never re-validates stored objects) keeps serving
//! the old value.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::operator::{Operator, TestClock, test_config};
use common::{Harness, eventually};
use idsync_api::resync_request::{Phase, TargetPhase};
use idsync_api::{Connection, ResyncRequest, conditions};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const EXPORT: &str = "employee_id,work_email\nE1,a@acme.example\nE2,b@acme.example\n";
const MAX_DELETE_COUNT: &str =
    "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/importSafeguard/properties/maxDeleteCount";

async fn export(h: &Harness, name: &str) {
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"people.csv": EXPORT}})).expect("configmap");
    api.create(&PostParams::default(), &map).await.expect("configmap");
}

/// Stores `broken` with a safeguard the current CRD refuses, the way an
/// older CRD let it in: loosen the field, create, restore the CRD.
async fn store_undecodable_connection(h: &Harness, name: &str) {
    let loosen = json!([{"op": "replace", "path": MAX_DELETE_COUNT, "value": {"type": "number"}}]).to_string();
    h.kubectl_ok(&["patch", "crd", "connections.idsync.dev", "--type", "json", "-p", &loosen]).await;
    let mut object = serde_json::to_value(Connection::test(name).id_column("employee_id").build()).expect("json");
    object["spec"]["importSafeguard"] = json!({"maxDeletePercent": 20, "maxDeleteCount": 1e23});
    h.apply_json(object).await;
    h.install_crds().await;
}

async fn condition(h: &Harness, name: &str, type_: &str) -> Option<Condition> {
    // Read as JSON: the object does not decode as a Connection.
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(h.client.clone(), "default", &kube::api::ApiResource::erase::<Connection>(&()));
    let object = api.get(name).await.ok()?;
    let conditions: Vec<Condition> = serde_json::from_value(object.data.pointer("/status/conditions")?.clone()).ok()?;
    conditions::find(&conditions, type_).cloned()
}

#[tokio::test]
async fn an_undecodable_connection_is_reported_on_itself_and_stops_no_other() {
    let h = Harness::start().await;
    h.install_crds().await;
    export(&h, "hr").await;
    export(&h, "broken").await;
    store_undecodable_connection(&h, "broken").await;
    h.apply_json(serde_json::to_value(Connection::test("hr").id_column("employee_id").build()).expect("json")).await;

    let data = tempfile::tempdir().expect("data dir");
    let operator = Operator::start(&h.cluster, data.path(), Arc::new(TestClock::default()), test_config("operator-a"));

    // The broken one says what is wrong with it, where people look.
    let stalled = eventually(Duration::from_secs(20), || async {
        condition(&h, "broken", conditions::STALLED).await.filter(|c| c.status == "True")
    })
    .await
    .expect("the undecodable Connection is marked Stalled");
    assert_eq!(stalled.reason, "InvalidSpec");
    assert!(stalled.message.contains("spec.importSafeguard.maxDeleteCount"), "{}", stalled.message);
    assert!(stalled.message.contains("kubectl edit connections broken"), "{}", stalled.message);
    let events: Api<Event> = Api::namespaced(h.client.clone(), "default");
    let warned = eventually(Duration::from_secs(10), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidSpec")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
        })
    })
    .await
    .expect("a Warning Event on the undecodable Connection");
    assert_eq!(warned.type_.as_deref(), Some("Warning"));

    // A request for every Connection syncs the good one and fails the
    // broken one by name, instead of retrying forever.
    h.create_request(ResyncRequest::test("everything").all()).await;
    let request = h.finished_request("everything", Duration::from_secs(30)).await;
    let status = request.status.expect("status");
    assert_eq!(status.phase, Some(Phase::PartiallyFailed), "{status:?}");
    let target = |name: &str| status.targets.iter().find(|t| t.connection == name).expect("target").clone();
    assert_eq!(target("hr").phase, TargetPhase::Succeeded);
    assert_eq!(target("broken").phase, TargetPhase::Failed);
    assert!(target("broken").message.contains("cannot be read by idsync"), "{}", target("broken").message);
    assert!(target("broken").message.contains("maxDeleteCount"), "{}", target("broken").message);

    // Fixed, it is reconciled like any other, with no restart.
    let fix = r#"{"spec":{"importSafeguard":{"maxDeleteCount":10}}}"#;
    h.kubectl_ok(&["patch", "connection", "broken", "--type", "merge", "-p", fix]).await;
    let ready = eventually(Duration::from_secs(20), || async {
        condition(&h, "broken", conditions::READY).await.filter(|c| c.status == "True")
    })
    .await;
    assert!(ready.is_some(), "the fixed Connection is Ready: {:?}", condition(&h, "broken", conditions::STALLED).await);
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    api.patch("broken", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"fixed": "yes"}}})))
        .await
        .expect("the fixed Connection decodes and takes writes");
    operator.stop().await;
}
