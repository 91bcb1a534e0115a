//! The devcluster as kube-rs sees it: watches, 410 and relists, conflicts,
//! and many writers and watchers at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use idsync_devcluster::reads::ReadVerb;
use idsync_devcluster::representation::Representation;
use idsync_devcluster::{Config, DevCluster};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, ObjectMeta, PartialObjectMeta, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use tokio::sync::Mutex;

/// A devcluster and a kube client for it.
struct Harness {
    cluster: DevCluster,
    client: kube::Client,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(Config::default()).await
    }

    async fn start_with(config: Config) -> Harness {
        let cluster = DevCluster::start(config).await.expect("devcluster starts");
        let client = cluster.client().expect("client");
        Harness { cluster, client }
    }
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
        data: Some(BTreeMap::from([("value".to_string(), value.to_string())])),
        ..Default::default()
    }
}

fn value_of(cm: &ConfigMap) -> String {
    cm.data.as_ref().and_then(|d| d.get("value")).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_sees_added_modified_deleted_in_order() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    let start = h.cluster.revision().to_string();
    let stream = api.watch(&WatchParams::default(), &start).await.expect("watch").boxed();

    api.create(&PostParams::default(), &config_map("a", "1")).await.expect("create");
    let mut changed = api.get("a").await.expect("get");
    changed.data = Some(BTreeMap::from([("value".to_string(), "2".to_string())]));
    api.replace("a", &PostParams::default(), &changed).await.expect("replace");
    api.delete("a", &DeleteParams::default()).await.expect("delete");

    let events: Vec<WatchEvent<ConfigMap>> =
        tokio::time::timeout(Duration::from_secs(10), stream.take(3).try_collect())
            .await
            .expect("three events")
            .expect("ok");
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(cm) => ("ADDED".to_string(), value_of(cm)),
            WatchEvent::Modified(cm) => ("MODIFIED".to_string(), value_of(cm)),
            WatchEvent::Deleted(cm) => ("DELETED".to_string(), value_of(cm)),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        vec![("ADDED".into(), "1".into()), ("MODIFIED".into(), "2".into()), ("DELETED".into(), "2".into())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bookmarks_arrive_on_an_idle_watch_that_asks_for_them() {
    let config = Config { bookmark_interval: Duration::from_millis(200), ..Default::default() };
    let h = Harness::start_with(config).await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    let start = h.cluster.revision();
    let mut stream = api.watch(&WatchParams::default(), &start.to_string()).await.expect("watch").boxed();
    let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event")
        .expect("some")
        .expect("ok");
    match event {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, start.to_string()),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_from_compacted_history_gets_410_and_the_watcher_relists_missing_nothing() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    for (name, value) in [("keep", "1"), ("change", "1"), ("remove", "1")] {
        api.create(&PostParams::default(), &config_map(name, value)).await.expect("create");
    }
    // A raw watch from an old revision after compaction is told 410 Expired.
    let old = h.cluster.revision() - 2;
    h.cluster.compact_history();
    let mut raw = api.watch(&WatchParams::default(), &old.to_string()).await.expect("watch").boxed();
    match tokio::time::timeout(Duration::from_secs(5), raw.next()).await.expect("an answer") {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }

    // kube-runtime's watcher: synced, then its watch ends while changes happen
    // and history is compacted; it must relist and end with the true state.
    let stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    let events = Arc::new(Mutex::new(Vec::<Event<ConfigMap>>::new()));
    let mut stream = stream;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event")
            .expect("some")
            .expect("ok");
        let done = matches!(event, Event::InitDone);
        events.lock().await.push(event);
        if done {
            break;
        }
    }
    h.cluster.close_watches();
    let mut changed = api.get("change").await.expect("get");
    changed.data = Some(BTreeMap::from([("value".to_string(), "2".to_string())]));
    api.replace("change", &PostParams::default(), &changed).await.expect("replace");
    api.delete("remove", &DeleteParams::default()).await.expect("delete");
    api.create(&PostParams::default(), &config_map("new", "1")).await.expect("create");
    h.cluster.compact_history();

    // Drive the watcher until it has relisted (a second InitDone).
    let mut relisted_state: Option<BTreeMap<String, String>> = None;
    let mut pending = BTreeMap::new();
    while relisted_state.is_none() {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("event").expect("some");
        match event {
            Ok(Event::Init) => pending.clear(),
            Ok(Event::InitApply(cm)) => {
                pending.insert(cm.metadata.name.clone().unwrap_or_default(), value_of(&cm));
            }
            Ok(Event::InitDone) => relisted_state = Some(pending.clone()),
            Ok(other) => panic!("a change arrived without a relist: {other:?}"),
            // The 410 surfaces as an error before the relist.
            Err(_) => {}
        }
    }
    let expected = BTreeMap::from([
        ("change".to_string(), "2".to_string()),
        ("keep".to_string(), "1".to_string()),
        ("new".to_string(), "1".to_string()),
    ]);
    assert_eq!(relisted_state, Some(expected));
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_updates_from_the_same_resource_version_one_wins_and_one_gets_409() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    api.create(&PostParams::default(), &config_map("shared", "0")).await.expect("create");
    let base = api.get("shared").await.expect("get");
    let mut first = base.clone();
    first.data = Some(BTreeMap::from([("value".to_string(), "first".to_string())]));
    let mut second = base.clone();
    second.data = Some(BTreeMap::from([("value".to_string(), "second".to_string())]));
    let pp = PostParams::default();
    let (a, b) = tokio::join!(api.replace("shared", &pp, &first), api.replace("shared", &pp, &second));
    let results = [a, b];
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    let lost: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    match lost.as_slice() {
        [kube::Error::Api(status)] => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "Conflict");
            assert!(status.message.contains("the object has been modified"), "{}", status.message);
        }
        other => panic!("expected one 409, got {other:?}"),
    }
    let stored = value_of(&api.get("shared").await.expect("get"));
    let winner = match &results[0] {
        Ok(_) => "first",
        Err(_) => "second",
    };
    assert_eq!(stored, winner);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_watcher_sees_every_committed_change_once_in_order_under_load() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    let start = h.cluster.revision();

    let mut watchers = Vec::new();
    for _ in 0..5 {
        let stream = api.watch(&WatchParams::default(), &start.to_string()).await.expect("watch");
        watchers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut stream = stream.boxed();
            while let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                let rv = match &event {
                    WatchEvent::Added(cm) | WatchEvent::Modified(cm) | WatchEvent::Deleted(cm) => {
                        cm.metadata.resource_version.clone().unwrap_or_default()
                    }
                    _ => continue,
                };
                seen.push(rv.parse::<u64>().expect("numeric resourceVersion"));
            }
            seen
        }));
    }

    let committed = Arc::new(Mutex::new(BTreeSet::new()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    for writer in 0..20 {
        let api = api.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            let name = format!("w{writer}");
            let created = api.create(&PostParams::default(), &config_map(&name, "0")).await.expect("create");
            committed
                .lock()
                .await
                .insert(created.metadata.resource_version.clone().unwrap_or_default().parse::<u64>().unwrap_or(0));
            let mut n = 0;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                let mut current = api.get(&name).await.expect("get");
                current.data = Some(BTreeMap::from([("value".to_string(), n.to_string())]));
                match api.replace(&name, &PostParams::default(), &current).await {
                    Ok(updated) => {
                        let rv = updated.metadata.resource_version.unwrap_or_default();
                        committed.lock().await.insert(rv.parse::<u64>().expect("numeric"));
                    }
                    Err(e) => panic!("writer {writer}: {e}"),
                }
            }
            let deleted = api.delete(&name, &DeleteParams::default()).await.expect("delete");
            if let Some(cm) = deleted.left() {
                committed
                    .lock()
                    .await
                    .insert(cm.metadata.resource_version.unwrap_or_default().parse::<u64>().unwrap_or(0));
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let committed: Vec<u64> = committed.lock().await.iter().copied().collect();
    assert!(committed.len() > 100, "too little load to mean anything: {} writes", committed.len());
    for (i, watcher) in watchers.into_iter().enumerate() {
        let seen = watcher.await.expect("watcher");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "watcher {i} saw changes out of order");
        assert_eq!(seen, committed, "watcher {i} did not see exactly the committed changes");
    }
}

const SECRET_VALUE: &str = "hunter2-do-not-send";

fn secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([("app".to_string(), "hr".to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("token".to_string(), ByteString(SECRET_VALUE.as_bytes().to_vec()))])),
        ..Default::default()
    }
}

fn secret_with(name: &str, value: &str) -> Secret {
    let mut s = secret(name);
    s.data = Some(BTreeMap::from([("token".to_string(), ByteString(value.as_bytes().to_vec()))]));
    s
}

fn count(h: &Harness, verb: ReadVerb, representation: Representation) -> u64 {
    h.cluster
        .reads()
        .iter()
        .filter(|c| c.resource == "secrets" && c.verb == verb && c.representation == representation)
        .map(|c| c.count)
        .sum()
}

/// kube-rs' metadata calls (`list_metadata`, `get_metadata`,
/// `watch_metadata`) are answered with `PartialObjectMetadata[List]` as a
/// real API server answers them: names, labels and resourceVersions, and
/// never a Secret's data.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_lists_gets_and_watches_carry_metadata_only() {
    let h = Harness::start().await;
    let api: Api<Secret> = Api::namespaced(h.client.clone(), "default");
    api.create(&PostParams::default(), &secret("hr")).await.expect("create");

    let list = api.list_metadata(&ListParams::default()).await.expect("list_metadata");
    assert_eq!(list.types.kind, "PartialObjectMetadataList");
    assert_eq!(list.types.api_version, "meta.k8s.io/v1");
    assert!(list.metadata.resource_version.is_some());
    let names: Vec<_> = list.items.iter().filter_map(|m| m.metadata.name.clone()).collect();
    assert_eq!(names, ["hr"]);
    let item = &list.items[0];
    assert_eq!(item.types.as_ref().map(|t| t.kind.as_str()), Some("PartialObjectMetadata"));
    assert_eq!(item.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("hr"));

    let got = api.get_metadata("hr").await.expect("get_metadata");
    assert_eq!(got.metadata.resource_version, item.metadata.resource_version);

    // On the wire, as a client that kept every field would see it.
    let raw = h
        .client
        .request_text(
            http::Request::get("/api/v1/namespaces/default/secrets?labelSelector=app%3Dhr")
                .header(http::header::ACCEPT, "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("raw list");
    assert!(raw.contains("\"PartialObjectMetadataList\"") && raw.contains("\"hr\""), "{raw}");
    let encoded = serde_json::to_string(&ByteString(SECRET_VALUE.as_bytes().to_vec())).expect("json");
    assert!(!raw.contains(encoded.trim_matches('"')) && !raw.contains("Opaque"), "{raw}");

    // A watch: the change arrives as metadata with the new resourceVersion.
    let from = list.metadata.resource_version.clone().expect("rv");
    let mut events = api.watch_metadata(&WatchParams::default(), &from).await.expect("watch_metadata").boxed();
    let updated = api.replace("hr", &PostParams::default(), &secret_with("hr", "rotated")).await.expect("replace");
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event")
        .expect("some")
        .expect("ok");
    match event {
        WatchEvent::Modified(meta) => {
            assert_eq!(meta.types.as_ref().map(|t| t.kind.as_str()), Some("PartialObjectMetadata"));
            assert_eq!(meta.metadata.resource_version, updated.metadata.resource_version);
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // The same watch read as arbitrary objects keeps whatever fields came:
    // there is nothing beside the metadata.
    let request = http::Request::get(format!("/api/v1/namespaces/default/secrets?watch=true&resourceVersion={from}"))
        .header(http::header::ACCEPT, "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
        .body(Vec::new())
        .expect("request");
    let mut raw_events = h.client.request_events::<DynamicObject>(request).await.expect("raw watch").boxed();
    let raw_event = tokio::time::timeout(Duration::from_secs(10), raw_events.next())
        .await
        .expect("an event")
        .expect("some")
        .expect("ok");
    match raw_event {
        WatchEvent::Modified(object) => {
            assert_eq!(object.types.as_ref().map(|t| t.kind.as_str()), Some("PartialObjectMetadata"));
            assert_eq!(object.data, serde_json::json!({}), "fields beside the metadata");
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    assert_eq!(count(&h, ReadVerb::List, Representation::Metadata), 2);
    assert_eq!(count(&h, ReadVerb::Get, Representation::Metadata), 1);
    assert_eq!(count(&h, ReadVerb::Watch, Representation::Metadata), 2);
    assert_eq!(count(&h, ReadVerb::List, Representation::Object), 0);
    assert_eq!(count(&h, ReadVerb::Watch, Representation::Object), 0);
}

/// kube-runtime's watcher over `Api<PartialObjectMeta<Secret>>` (what a
/// controller's metadata-only `watches` runs) lists, watches and, after its
/// watch ends and history is compacted, relists by metadata only.
#[tokio::test(flavor = "multi_thread")]
async fn a_metadata_watcher_syncs_and_relists_by_metadata_only() {
    let h = Harness::start().await;
    let api: Api<Secret> = Api::namespaced(h.client.clone(), "default");
    api.create(&PostParams::default(), &secret("a")).await.expect("create");
    let metadata: Api<PartialObjectMeta<Secret>> = Api::namespaced(h.client.clone(), "default");
    let mut stream = watcher::watcher(metadata, watcher::Config::default()).boxed();
    let mut next =
        async || tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("event").expect("some");
    let mut synced = Vec::new();
    loop {
        match next().await.expect("ok") {
            Event::InitApply(meta) => synced.push(meta.metadata.name.unwrap_or_default()),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(synced, ["a"]);

    h.cluster.close_watches();
    api.create(&PostParams::default(), &secret("b")).await.expect("create");
    h.cluster.compact_history();
    let mut relisted = Vec::new();
    loop {
        match next().await {
            Ok(Event::Init) => relisted.clear(),
            Ok(Event::InitApply(meta)) => relisted.push(meta.metadata.name.unwrap_or_default()),
            Ok(Event::InitDone) => break,
            Ok(other) => panic!("a change arrived without a relist: {other:?}"),
            Err(_) => {}
        }
    }
    assert_eq!(relisted, ["a", "b"]);
    assert!(count(&h, ReadVerb::List, Representation::Metadata) >= 2);
    assert_eq!(count(&h, ReadVerb::List, Representation::Object), 0);
    assert_eq!(count(&h, ReadVerb::Watch, Representation::Object), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn asking_a_list_for_one_object_s_metadata_is_not_acceptable() {
    let h = Harness::start().await;
    let request = http::Request::get("/api/v1/namespaces/default/secrets")
        .header(http::header::ACCEPT, "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
        .body(Vec::new())
        .expect("request");
    match h.client.request_text(request).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 406);
            assert_eq!(status.reason, "NotAcceptable");
        }
        other => panic!("expected 406, got {other:?}"),
    }
}

/// A user added with RBAC rules may do what they grant, is refused the rest
/// with the API server's 403 and words, and its calls are tallied.
#[tokio::test]
async fn a_user_with_rules_is_authorized_as_rbac_would() {
    use k8s_openapi::api::rbac::v1::PolicyRule;
    let h = Harness::start().await;
    let admin: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    admin.create(&PostParams::default(), &config_map("settings", "1")).await.expect("admin may");
    let rules = vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".to_string()]),
        verbs: vec!["get".to_string(), "list".to_string()],
        ..Default::default()
    }];
    let reader = h.cluster.client_as("system:serviceaccount:ops:reader", rules).expect("client");
    let maps: Api<ConfigMap> = Api::namespaced(reader.clone(), "default");
    assert_eq!(maps.get("settings").await.expect("get is granted").data.expect("data")["value"], "1");
    assert_eq!(maps.list(&ListParams::default()).await.expect("list is granted").items.len(), 1);

    let refused = maps.delete("settings", &DeleteParams::default()).await.expect_err("delete is not granted");
    let kube::Error::Api(status) = refused else { panic!("an API error: {refused:?}") };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "configmaps \"settings\" is forbidden: User \"system:serviceaccount:ops:reader\" cannot delete resource \
         \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    let secrets: Api<Secret> = Api::all(reader);
    let refused = secrets.list(&ListParams::default()).await.expect_err("secrets are not granted");
    assert!(refused.to_string().contains("cannot list resource \"secrets\" in API group \"\" at the cluster scope"));
    assert!(admin.get("settings").await.is_ok(), "the refused delete changed nothing");

    let made: Vec<(String, String)> =
        h.cluster.accesses("system:serviceaccount:ops:reader").into_iter().map(|a| (a.verb, a.resource)).collect();
    assert_eq!(made, vec![("get".into(), "configmaps".into()), ("list".into(), "configmaps".into())]);
}

/// History is compacted by time, as etcd's is: a watch resuming from a
/// revision older than the window gets 410 at once, and kube-runtime's
/// watcher relists.
#[tokio::test(flavor = "multi_thread")]
async fn history_older_than_its_window_is_gone() {
    let h = Harness::start_with(Config { history_window: Duration::from_millis(300), ..Config::default() }).await;
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    api.create(&PostParams::default(), &config_map("first", "1")).await.expect("create");
    let old = h.cluster.revision();
    api.create(&PostParams::default(), &config_map("second", "1")).await.expect("create");
    let mut fresh = api.watch(&WatchParams::default(), &old.to_string()).await.expect("watch").boxed();
    match tokio::time::timeout(Duration::from_secs(5), fresh.next()).await.expect("an answer") {
        Some(Ok(WatchEvent::Added(cm))) => assert_eq!(cm.metadata.name.as_deref(), Some("second")),
        other => panic!("within the window the change is replayed: {other:?}"),
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut raw = api.watch(&WatchParams::default(), &old.to_string()).await.expect("watch").boxed();
    match tokio::time::timeout(Duration::from_secs(5), raw.next()).await.expect("an answer") {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410 past the window, got {other:?}"),
    }
}
