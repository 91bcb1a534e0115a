//! Object semantics of the devcluster that idsync's controllers rely on.

use crate::common;

use std::collections::BTreeMap;

use common::Harness;
use idsync_api::Connection;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn names(list: &[ConfigMap]) -> Vec<String> {
    list.iter().map(|c| c.metadata.name.clone().unwrap_or_default()).collect()
}

async fn hris(h: &Harness) -> Connection {
    let docs = idsync::manifest::load_file(&common::repo("examples/connections/hris-csv.yaml")).expect("example");
    let connection = docs.iter().find(|d| d.kind() == "Connection").expect("a Connection");
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let typed: Connection = serde_json::from_value(connection.value.clone()).expect("typed");
    api.create(&PostParams::default(), &typed).await.expect("create hris")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crd_becomes_served_and_its_objects_are_defaulted_and_validated() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let crds: Api<CustomResourceDefinition> = Api::all(h.client.clone());
    let crd = crds.get("connections.idsync.dev").await.expect("stored");
    let established = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(established.iter().any(|c| c.type_ == "Established" && c.status == "True"));

    let created = hris(&h).await;
    assert_eq!(created.spec.page_size, 500, "schema defaults applied");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let error = api
        .patch(
            "hris",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"importSafeguard": {"maxDeletePercent": 101}}})),
        )
        .await
        .expect_err("refused");
    match error {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422);
            assert_eq!(status.reason, "Invalid");
            assert!(status.message.contains("spec.importSafeguard.maxDeletePercent"), "{}", status.message);
        }
        other => panic!("{other}"),
    }

    // Deleting the CRD stops serving the kind.
    crds.delete("connections.idsync.dev", &DeleteParams::default()).await.expect("delete CRD");
    let gone = api.list(&ListParams::default()).await.expect_err("no longer served");
    assert!(matches!(gone, kube::Error::Api(ref s) if s.code == 404), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_that_changes_nothing_is_not_a_write() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    let created = api.create(&PostParams::default(), &cm("same", &[])).await.expect("create");
    let again = api.replace("same", &PostParams::default(), &created).await.expect("replace");
    assert_eq!(again.metadata.resource_version, created.metadata.resource_version);
}

#[tokio::test(flavor = "multi_thread")]
async fn owned_objects_are_garbage_collected_or_orphaned() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let owner = hris(&h).await;
    let reference = json!([{"apiVersion": "idsync.dev/v1alpha1", "kind": "Connection", "name": "hris",
        "uid": owner.metadata.uid.clone().expect("uid"), "controller": true}]);
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    for name in ["owned", "orphan-me"] {
        let mut object = cm(name, &[]);
        object.metadata.owner_references = Some(serde_json::from_value(reference.clone()).expect("refs"));
        api.create(&PostParams::default(), &object).await.expect("create owned");
    }
    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    connections.delete("hris", &DeleteParams::default()).await.expect("delete owner");
    assert!(api.get_opt("owned").await.expect("get").is_none(), "the dependent outlived its owner");
    assert!(api.get_opt("orphan-me").await.expect("get").is_none());

    // With propagationPolicy Orphan the dependent stays, without its reference.
    let owner = hris(&h).await;
    let mut object = cm("kept", &[]);
    object.metadata.owner_references = Some(
        serde_json::from_value(json!([{"apiVersion": "idsync.dev/v1alpha1", "kind": "Connection", "name": "hris",
            "uid": owner.metadata.uid.clone().expect("uid")}]))
        .expect("refs"),
    );
    api.create(&PostParams::default(), &object).await.expect("create");
    connections.delete("hris", &DeleteParams::orphan()).await.expect("delete owner");
    let kept = api.get("kept").await.expect("orphan kept");
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_filter_by_labels_and_fields_and_page_with_continue() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    for (name, team, tier) in
        [("a", "sec", "1"), ("b", "sec", "2"), ("c", "ops", "1"), ("d", "ops", "3"), ("e", "", "")]
    {
        let mut labels = vec![];
        if !team.is_empty() {
            labels.push(("team", team));
            labels.push(("tier", tier));
        }
        api.create(&PostParams::default(), &cm(name, &labels)).await.expect("create");
    }
    let select = |s: &str| {
        let api = api.clone();
        let s = s.to_string();
        async move { names(&api.list(&ListParams::default().labels(&s)).await.expect("list").items) }
    };
    assert_eq!(select("team=sec").await, vec!["a", "b"]);
    assert_eq!(select("team!=sec").await, vec!["c", "d", "e"]);
    assert_eq!(select("tier in (1,3)").await, vec!["a", "c", "d"]);
    assert_eq!(select("tier notin (1)").await, vec!["b", "d", "e"]);
    assert_eq!(select("team").await, vec!["a", "b", "c", "d"]);
    assert_eq!(select("!team").await, vec!["e"]);
    assert_eq!(select("team=ops,tier=3").await, vec!["d"]);

    let by_name = api.list(&ListParams::default().fields("metadata.name=c")).await.expect("list");
    assert_eq!(names(&by_name.items), vec!["c"]);
    let unsupported = api.list(&ListParams::default().fields("data.value=x")).await.expect_err("refused");
    assert!(
        matches!(unsupported, kube::Error::Api(ref s) if s.code == 400 && s.message.contains("field label not supported"))
    );

    let first = api.list(&ListParams::default().limit(2)).await.expect("page 1");
    assert_eq!(names(&first.items), vec!["a", "b"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("a continue token");
    let second = api.list(&ListParams::default().limit(2).continue_token(&token)).await.expect("page 2");
    assert_eq!(names(&second.items), vec!["c", "d"]);
    let third = api
        .list(&ListParams::default().limit(2).continue_token(&second.metadata.continue_.clone().expect("token")))
        .await
        .expect("page 3");
    assert_eq!(names(&third.items), vec!["e"]);
    assert!(third.metadata.continue_.unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn patches_json_merge_and_json_patch_and_secrets_fold_string_data() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    api.create(&PostParams::default(), &cm("p", &[("a", "1")])).await.expect("create");
    let patched = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": null, "b": "2"}}, "data": {"k": "v"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(patched.metadata.labels, Some(BTreeMap::from([("b".to_string(), "2".to_string())])));
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/data/k", "value": "w"},
        {"op": "add", "path": "/data/l", "value": "x"}
    ]))
    .expect("ops");
    let patched = api.patch("p", &PatchParams::default(), &Patch::<()>::Json(ops)).await.expect("json patch");
    assert_eq!(patched.data.expect("data").get("k").map(String::as_str), Some("w"));

    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), "default");
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"token": "abc"}})).expect("secret");
    let stored = secrets.create(&PostParams::default(), &secret).await.expect("create secret");
    assert_eq!(stored.data.expect("data").get("token").map(|b| b.0.clone()), Some(b"abc".to_vec()));
    assert!(stored.string_data.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_need_their_namespace_and_go_with_it() {
    let h = Harness::start().await;
    let in_missing: Api<ConfigMap> = Api::namespaced(h.client.clone(), "team-a");
    let error = in_missing.create(&PostParams::default(), &cm("x", &[])).await.expect_err("no namespace");
    assert!(matches!(error, kube::Error::Api(ref s) if s.code == 404), "{error:?}");
    let namespaces: Api<Namespace> = Api::all(h.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).expect("ns");
    namespaces.create(&PostParams::default(), &ns).await.expect("create ns");
    in_missing.create(&PostParams::default(), &cm("x", &[])).await.expect("create in ns");
    namespaces.delete("team-a", &DeleteParams::default()).await.expect("delete ns");
    assert!(namespaces.get_opt("team-a").await.expect("get").is_none());
    assert!(in_missing.get_opt("x").await.map(|o| o.is_none()).unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamic_clients_discover_custom_resources() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let gvk = GroupVersionKind::gvk("idsync.dev", "v1alpha1", "ResyncRequest");
    let (resource, caps) = kube::discovery::pinned_kind(&h.client, &gvk).await.expect("discovered");
    assert_eq!(resource.plural, "resyncrequests");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        caps.subresources.iter().any(|(r, _)| r.plural == "resyncrequests/status" || r.plural == "status"),
        "{:?}",
        caps.subresources.iter().map(|(r, _)| r.plural.clone()).collect::<Vec<_>>()
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(h.client.clone(), "default", &ApiResource::from_gvk_with_plural(&gvk, "resyncrequests"));
    assert!(api.list(&ListParams::default()).await.expect("list").items.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_applies_status_server_side_without_touching_spec_or_generation() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let created = hris(&h).await;
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let params = PatchParams::apply("idsync-operator").force();
    let status = json!({"apiVersion": "idsync.dev/v1alpha1", "kind": "Connection",
        "status": {"accountCount": 4, "observedGeneration": 1, "lastHandledRequestedAt": "now"}});
    let applied = api.patch_status("hris", &params, &Patch::Apply(&status)).await.expect("status applied");
    let s = applied.status.clone().expect("status");
    assert_eq!(s.account_count, Some(4));
    assert_eq!(applied.metadata.generation, created.metadata.generation);
    assert_eq!(applied.spec, created.spec);
    let managers: Vec<(String, Option<String>)> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.manager.unwrap_or_default(), m.subresource))
        .collect();
    assert!(managers.contains(&("idsync-operator".to_string(), Some("status".to_string()))), "{managers:?}");

    // Applying again without a field the manager owned removes it.
    let status = json!({"apiVersion": "idsync.dev/v1alpha1", "kind": "Connection",
        "status": {"accountCount": 5, "observedGeneration": 1}});
    let reapplied = api.patch_status("hris", &params, &Patch::Apply(&status)).await.expect("re-applied");
    let s = reapplied.status.expect("status");
    assert_eq!(s.account_count, Some(5));
    assert_eq!(s.last_handled_requested_at, None);

    // A spec apply through the status subresource changes nothing in spec.
    let sneaky = json!({"apiVersion": "idsync.dev/v1alpha1", "kind": "Connection", "spec": {"suspend": true}, "status": {"accountCount": 5}});
    let after = api.patch_status("hris", &params, &Patch::Apply(&sneaky)).await.expect("applied");
    assert!(!after.spec.suspend);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_side_apply_conflict_is_reported_unless_forced() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    let first =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"mode": "Delta"}});
    api.patch("owned", &PatchParams::apply("pipeline-a"), &Patch::Apply(&first)).await.expect("create by apply");
    let second =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"mode": "Full"}});
    let conflict =
        api.patch("owned", &PatchParams::apply("pipeline-b"), &Patch::Apply(&second)).await.expect_err("conflict");
    match conflict {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert!(status.message.contains(r#"conflict with "pipeline-a""#), "{}", status.message);
            assert!(status.message.contains(".data.mode"), "{}", status.message);
        }
        other => panic!("{other}"),
    }
    let forced =
        api.patch("owned", &PatchParams::apply("pipeline-b").force(), &Patch::Apply(&second)).await.expect("forced");
    assert_eq!(forced.data.expect("data").get("mode").map(String::as_str), Some("Full"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_patch_test_of_a_missing_path_against_null_passes_as_on_a_real_server() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    api.create(&PostParams::default(), &cm("f", &[])).await.expect("create");
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/x"]}
    ]))
    .expect("ops");
    let patched = api.patch("f", &PatchParams::default(), &Patch::<()>::Json(ops)).await.expect("patched");
    assert_eq!(patched.metadata.finalizers, Some(vec!["example.com/x".to_string()]));
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "other"}])).expect("ops");
    assert!(api.patch("f", &PatchParams::default(), &Patch::<()>::Json(failing)).await.is_err());
}
