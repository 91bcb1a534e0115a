//! Objects this operator cannot decode are set aside, reported on
//! themselves, and never stop the others.
//!
//! A typed list decodes every item or fails whole: one Connection stored
//! with `maxDeleteCount: 1e+23` (accepted before the CRD had maxima; the
//! API server does not re-validate stored objects when a CRD changes) would
//! fail every watch relist, stopping all Connections of the cluster, and
//! every ResyncRequest of its namespace that lists Connections. So the
//! controllers list and watch [`Lenient`] objects, which always decode:
//! their metadata, and the typed object or why not. The typed ones go on as
//! before; an undecodable one is reported once per generation, as a Warning
//! Event and `Stalled=True InvalidSpec` on the object itself, naming the
//! field and what is wrong with it, until someone fixes it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _};

use super::events::Recorder;
use idsync_api::conditions::{self, FALSE, READY, STALLED, TRUE};

/// The reason on an object the operator cannot decode.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// An object as listed or watched: its metadata always, the typed object
/// when it decodes.
#[derive(Clone, Debug)]
pub struct Lenient<K> {
    metadata: ObjectMeta,
    pub decoded: Result<K, String>,
}

impl<K> Lenient<K> {
    /// Why the object does not decode, if it does not.
    pub fn problem(&self) -> Option<&str> {
        self.decoded.as_ref().err().map(String::as_str)
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        // Metadata the API server wrote always decodes; if even it does not,
        // the object cannot be named, and failing the list is all that is left.
        let metadata = match value.get("metadata") {
            Some(m) => ObjectMeta::deserialize(m).map_err(D::Error::custom)?,
            None => ObjectMeta::default(),
        };
        let decoded = serde_path_to_error::deserialize(&value).map_err(|e| describe(&e));
        Ok(Lenient { metadata, decoded })
    }
}

/// "spec.importSafeguard.maxDeleteCount: invalid type: floating point `1e+23`,
/// expected u64": the field by its name in the resource, then serde's words.
fn describe(error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    let inner = error.inner().to_string();
    // serde_json adds " at line 0 column 0" when decoding from a Value.
    let inner = inner.strip_suffix(" at line 0 column 0").unwrap_or(&inner);
    if path.is_empty() || path == "." { inner.to_string() } else { format!("{path}: {inner}") }
}

impl<K: Resource<DynamicType = ()>> Resource for Lenient<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The objects of one list: those that decode, and those that do not.
pub struct Listed<K> {
    pub objects: Vec<K>,
    pub undecodable: Vec<Lenient<K>>,
}

/// The lenient `Api` of `K` in `namespace`.
fn lenient_api<K>(client: &Client, namespace: &str) -> Api<Lenient<K>>
where
    K: Resource<DynamicType = ()>,
    Lenient<K>: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    Api::namespaced(client.clone(), namespace)
}

/// Lists the `K`s of `namespace`; one that does not decode is set aside
/// (and reported), not a failure of the list.
pub async fn list<K>(reporter: &Reporter, namespace: &str) -> Result<Listed<K>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let mut listed = Listed { objects: Vec::new(), undecodable: Vec::new() };
    for item in lenient_api::<K>(&reporter.client, namespace).list(&ListParams::default()).await?.items {
        match item.decoded {
            Ok(object) => listed.objects.push(object),
            Err(_) => {
                reporter.report(&item);
                listed.undecodable.push(item);
            }
        }
    }
    Ok(listed)
}

/// Gets one `K`: `None` when it does not exist, `Some(Err(why))` when it
/// exists but does not decode (reported on the object).
pub async fn get<K>(reporter: &Reporter, namespace: &str, name: &str) -> Result<Option<Result<K, String>>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let found = lenient_api::<K>(&reporter.client, namespace).get_opt(name).await?;
    Ok(found.map(|lenient| {
        reporter.report(&lenient);
        lenient.decoded
    }))
}

/// What a controller built on [`controller`] watches: the objects that
/// decode, with a store of them; the others are reported and left out.
pub fn watch<K>(
    client: Client,
    config: watcher::Config,
    reporter: Reporter,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let cache = reader.clone();
    let decoded = watcher(Api::<Lenient<K>>::all(client), config).default_backoff().filter_map(move |event| {
        let event = event.map(|event| typed(event, &cache, &reporter));
        std::future::ready(match event {
            Ok(None) => None,
            Ok(Some(event)) => Some(Ok(event)),
            Err(error) => Some(Err(error)),
        })
    });
    (reader, reflector::reflector(writer, decoded).applied_objects())
}

/// A watch event of lenient objects as one of typed objects, or none. An
/// object that stopped decoding leaves the store as if deleted (its last
/// decodable version is what the store holds), so nothing reconciles an
/// outdated copy of it.
fn typed<K>(event: watcher::Event<Lenient<K>>, cache: &Store<K>, reporter: &Reporter) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    use watcher::Event;
    let evicted = |lenient: &Lenient<K>| {
        let key = ObjectRef::<K>::new(&lenient.name_any());
        let key = match lenient.namespace() {
            Some(ns) => key.within(&ns),
            None => key,
        };
        cache.get(&key).map(|last| Event::Delete(K::clone(&last)))
    };
    match event {
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
        Event::InitApply(l) => match l.decoded {
            Ok(k) => Some(Event::InitApply(k)),
            Err(_) => {
                reporter.report(&l);
                None
            }
        },
        Event::Apply(l) => match &l.decoded {
            Ok(_) => l.decoded.ok().map(Event::Apply),
            Err(_) => {
                reporter.report(&l);
                evicted(&l)
            }
        },
        Event::Delete(l) => match &l.decoded {
            Ok(_) => l.decoded.ok().map(Event::Delete),
            Err(_) => evicted(&l),
        },
    }
}

/// Reports undecodable objects on themselves, once per generation and
/// problem: a status write moves the resourceVersion, not the generation,
/// so reporting does not feed itself.
#[derive(Clone)]
pub struct Reporter {
    client: Client,
    recorder: Recorder,
    reported: Arc<Mutex<HashSet<(String, i64, String)>>>,
}

impl Reporter {
    pub fn new(client: Client, recorder: Recorder) -> Self {
        Reporter { client, recorder, reported: Default::default() }
    }

    /// Reports `object` unless this generation's problem was reported.
    pub fn report<K>(&self, object: &Lenient<K>)
    where
        K: Resource<DynamicType = ()> + Clone + Debug,
    {
        let Some(problem) = object.problem() else { return };
        let key =
            (object.uid().unwrap_or_default(), object.metadata.generation.unwrap_or_default(), problem.to_string());
        match self.reported.lock() {
            Ok(mut reported) => {
                if !reported.insert(key) {
                    return;
                }
            }
            // A poisoned set only means a report may repeat.
            Err(poisoned) => {
                poisoned.into_inner().insert(key);
            }
        }
        let kind = K::kind(&()).to_string();
        let name = object.name_any();
        let namespace = object.namespace();
        let message = format!(
            "idsync cannot read this {kind}: {problem}. It is left alone, and other objects go on; correct the field \
             (kubectl edit {} {name}{})",
            K::plural(&()).to_lowercase(),
            namespace.as_deref().map(|ns| format!(" -n {ns}")).unwrap_or_default(),
        );
        tracing::warn!(
            kind,
            namespace = namespace.as_deref().unwrap_or(""),
            name,
            problem,
            "an object does not decode; it is set aside"
        );
        let regarding = ObjectReference {
            api_version: Some(K::api_version(&()).to_string()),
            kind: Some(kind),
            name: Some(name.clone()),
            namespace: namespace.clone(),
            uid: object.uid(),
            resource_version: object.resource_version(),
            ..Default::default()
        };
        let generation = object.metadata.generation;
        let reporter = self.clone();
        let resource = ApiResource::erase::<K>(&());
        tokio::spawn(async move {
            reporter.recorder.publish(&regarding, true, INVALID_SPEC, message.clone(), "Decode").await;
            let api: Api<DynamicObject> = match &namespace {
                Some(ns) => Api::namespaced_with(reporter.client.clone(), ns, &resource),
                None => Api::all_with(reporter.client.clone(), &resource),
            };
            if let Err(error) = mark_stalled(&api, &name, generation, &message).await {
                tracing::warn!(%error, name, "could not mark an undecodable object Stalled");
            }
        });
    }
}

/// Sets `Ready=False` and `Stalled=True InvalidSpec` on an object read as
/// plain JSON, keeping its other conditions. A status update (with the
/// resourceVersion read, as every status write of idsync is; the chart
/// grants `update` on status, not `patch`).
async fn mark_stalled(
    api: &Api<DynamicObject>,
    name: &str,
    generation: Option<i64>,
    message: &str,
) -> Result<(), kube::Error> {
    let mut object = api.get(name).await?;
    let mut conditions: Vec<Condition> = object
        .data
        .pointer("/status/conditions")
        .and_then(|c| Vec::<Condition>::deserialize(c).ok())
        .unwrap_or_default();
    let now = Time(Timestamp::now());
    conditions::set_condition(&mut conditions, READY, FALSE, INVALID_SPEC, message, generation, now.clone());
    conditions::set_condition(&mut conditions, STALLED, TRUE, INVALID_SPEC, message, generation, now);
    let status = object.data.as_object_mut().map(|data| data.entry("status").or_insert_with(|| serde_json::json!({})));
    if let Some(status) = status.and_then(serde_json::Value::as_object_mut) {
        status.insert("conditions".to_string(), serde_json::to_value(&conditions).unwrap_or_default());
    }
    api.replace_status(name, &PostParams::default(), &object).await?;
    Ok(())
}
/// A controller of `K` over [`watch`]: it reconciles the objects that
/// decode, and reports the others.
pub fn controller<K>(ctx: &super::Context) -> kube::runtime::Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, stream) = watch::<K>(ctx.client.clone(), watcher::Config::default(), ctx.undecodable.clone());
    kube::runtime::Controller::for_stream(stream, reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idsync_api::Connection;
    use serde_json::json;

    fn connection(max_delete_count: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "idsync.dev/v1alpha1", "kind": "Connection",
            "metadata": {"name": "hris", "namespace": "people", "generation": 3},
            "spec": {"category": "HRIS", "importSafeguard": {"maxDeleteCount": max_delete_count},
                     "provider": {"type": "csv", "csv": {
                "source": {"configMapKeyRef": {"name": "x", "key": "people.csv"}}, "idColumn": "id"}}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "",
                                        "lastTransitionTime": "2026-11-01T00:00:00Z"}]}
        })
    }

    #[test]
    fn a_decodable_object_decodes_as_its_type() {
        let lenient: Lenient<Connection> = serde_json::from_value(connection(json!(10))).expect("always decodes");
        assert_eq!(lenient.decoded.expect("typed").spec.import_safeguard.max_delete_count, Some(10));
    }

    #[test]
    fn an_undecodable_one_keeps_its_name_and_says_which_field_is_wrong() {
        let lenient: Lenient<Connection> = serde_json::from_value(connection(json!(1e23))).expect("always decodes");
        assert_eq!(lenient.name_any(), "hris");
        assert_eq!(lenient.namespace().as_deref(), Some("people"));
        assert_eq!(
            lenient.problem(),
            Some("spec.importSafeguard.maxDeleteCount: invalid type: floating point `1e+23`, expected u64")
        );
    }

    #[test]
    fn a_list_with_one_undecodable_item_still_decodes() {
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {},
                          "items": [connection(json!(10)), connection(json!("lots"))]});
        let list: kube::core::ObjectList<Lenient<Connection>> = serde_json::from_value(list).expect("the list");
        assert!(list.items[0].decoded.is_ok());
        assert!(list.items[1].problem().is_some_and(|p| p.contains("maxDeleteCount")));
    }
}
