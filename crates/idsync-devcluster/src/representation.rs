//! What a response is made of, as the `Accept` header asks: the objects
//! themselves, a `meta.k8s.io/v1` Table (`kubectl get`), or their metadata
//! only: `PartialObjectMetadata` and `PartialObjectMetadataList`, which
//! kube-rs' `Api<PartialObjectMeta<K>>` (`list_metadata`, `watch_metadata`,
//! metadata watchers) and client-go's metadata informers ask for, so that a
//! client following Secrets is never sent their data.
//!
//! As the API server negotiates: the first media type of `Accept` that it
//! can produce wins; `as=PartialObjectMetadata` answers one object or the
//! events of a watch, `as=PartialObjectMetadataList` answers a list, and
//! asking for the other is `406 Not Acceptable` (the API server does not
//! fall back to a later media type then either). Unlike the API server,
//! media types other than these (YAML, protobuf) are answered as JSON.

use serde_json::{Value, json};

use super::error::ApiError;
use super::table::IncludeObject;

/// The group and version of the Table and metadata-only kinds.
const META_API_VERSION: &str = "meta.k8s.io/v1";

/// How the objects of a response are represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Representation {
    /// As stored, in the requested version.
    Object,
    /// A `meta.k8s.io/v1` Table with the resource's printer columns.
    Table(IncludeObject),
    /// `PartialObjectMetadata` (or a `PartialObjectMetadataList`): apiVersion,
    /// kind and metadata, nothing else.
    Metadata,
}

/// What a request answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// One object (a get or a write).
    Object,
    /// A list.
    List,
    /// The events of a watch, one object each.
    Watch,
}

impl Representation {
    /// The representation `accept` asks for (JSON objects when it asks for
    /// nothing in particular). `include_object` is the `includeObject`
    /// query parameter, which only Tables read.
    pub fn negotiate(accept: Option<&str>, answer: Answer, include_object: Option<&str>) -> Result<Self, ApiError> {
        let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
            return Ok(Representation::Object);
        };
        for media_type in accept.split(',') {
            let params: Vec<(&str, &str)> = media_type
                .split(';')
                .skip(1)
                .filter_map(|p| p.split_once('='))
                .map(|(name, value)| (name.trim(), value.trim()))
                .collect();
            let param = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, value)| *value);
            match (param("as"), param("g"), param("v")) {
                (None, _, _) => return Ok(Representation::Object),
                (Some("Table"), Some("meta.k8s.io"), Some("v1" | "v1beta1")) => {
                    let include =
                        IncludeObject::parse(include_object).map_err(|e| ApiError::bad_request(e.to_string()))?;
                    return Ok(Representation::Table(include));
                }
                (Some("PartialObjectMetadata"), Some("meta.k8s.io"), Some("v1")) => {
                    return match answer {
                        Answer::Object | Answer::Watch => Ok(Representation::Metadata),
                        Answer::List => Err(not_acceptable(
                            "you requested PartialObjectMetadata, but the requested object is a list",
                        )),
                    };
                }
                (Some("PartialObjectMetadataList"), Some("meta.k8s.io"), Some("v1")) => {
                    return match answer {
                        Answer::List => Ok(Representation::Metadata),
                        Answer::Object | Answer::Watch => Err(not_acceptable(
                            "you requested PartialObjectMetadataList, but the requested object is not a list",
                        )),
                    };
                }
                // Something this server cannot produce: try the next one.
                _ => {}
            }
        }
        Err(not_acceptable(
            "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io, application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
        ))
    }
}

fn not_acceptable(message: &str) -> ApiError {
    ApiError::new(406, "NotAcceptable", message)
}

/// `PartialObjectMetadata` of an object.
pub fn partial_object(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": META_API_VERSION,
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// `PartialObjectMetadataList` of a list: its metadata (resourceVersion,
/// continue, remainingItemCount) and the metadata of each item.
pub fn partial_list(list: &Value) -> Value {
    let items: Vec<Value> =
        list.get("items").and_then(Value::as_array).into_iter().flatten().map(partial_object).collect();
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": META_API_VERSION,
        "metadata": list.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "items": items,
    })
}

/// The answer of a write in the metadata-only representation: the object's
/// metadata, or a list's, while a `Status` (a delete that is done) stays as
/// it is.
pub fn partial_answer(value: &Value) -> Value {
    match value.get("kind").and_then(Value::as_str) {
        Some("Status") => value.clone(),
        _ if value.get("items").is_some() => partial_list(value),
        _ => partial_object(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    const METADATA_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

    fn negotiate(accept: Option<&str>, answer: Answer) -> Result<Representation, u16> {
        Representation::negotiate(accept, answer, None).map_err(|e| e.code)
    }

    #[test]
    fn kube_rs_metadata_requests_get_metadata() {
        assert_eq!(negotiate(Some(METADATA_LIST), Answer::List), Ok(Representation::Metadata));
        assert_eq!(negotiate(Some(METADATA), Answer::Watch), Ok(Representation::Metadata));
        assert_eq!(negotiate(Some(METADATA), Answer::Object), Ok(Representation::Metadata));
        // Parameters in any order, with spaces.
        let spaced = "application/json; v=v1; g=meta.k8s.io; as=PartialObjectMetadataList";
        assert_eq!(negotiate(Some(spaced), Answer::List), Ok(Representation::Metadata));
    }

    #[test]
    fn the_wrong_metadata_kind_is_not_acceptable() {
        assert_eq!(negotiate(Some(METADATA), Answer::List), Err(406));
        assert_eq!(negotiate(Some(METADATA_LIST), Answer::Object), Err(406));
        assert_eq!(negotiate(Some(METADATA_LIST), Answer::Watch), Err(406));
        let e = Representation::negotiate(Some(METADATA), Answer::List, None).unwrap_err();
        assert_eq!(e.reason, "NotAcceptable");
        assert_eq!(e.message, "you requested PartialObjectMetadata, but the requested object is a list");
    }

    #[test]
    fn the_first_media_type_the_server_can_produce_wins() {
        assert_eq!(negotiate(None, Answer::List), Ok(Representation::Object));
        assert_eq!(negotiate(Some(""), Answer::List), Ok(Representation::Object));
        assert_eq!(negotiate(Some("application/json"), Answer::List), Ok(Representation::Object));
        assert_eq!(negotiate(Some("*/*"), Answer::Object), Ok(Representation::Object));
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(kubectl_get), Answer::List), Ok(Representation::Table(IncludeObject::Metadata)));
        let fallback = "application/json;as=Unknown;v=v1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(fallback), Answer::List), Ok(Representation::Object));
        let beta_metadata = "application/json;as=PartialObjectMetadataList;v=v1beta1;g=meta.k8s.io";
        assert_eq!(negotiate(Some(beta_metadata), Answer::List), Err(406));
        assert_eq!(
            negotiate(Some(&format!("{METADATA_LIST},application/json")), Answer::List),
            Ok(Representation::Metadata)
        );
    }

    #[test]
    fn tables_read_include_object() {
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io";
        let got = Representation::negotiate(Some(table), Answer::List, Some("Object"));
        assert_eq!(got, Ok(Representation::Table(IncludeObject::Object)));
        assert_eq!(Representation::negotiate(Some(table), Answer::List, Some("All")).map_err(|e| e.code), Err(400));
    }

    fn secret() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "hr", "namespace": "default", "resourceVersion": "7", "labels": {"a": "b"}},
            "type": "Opaque",
            "data": {"token": "c2VjcmV0"},
        })
    }

    #[test]
    fn metadata_keeps_the_metadata_and_nothing_else() {
        let partial = partial_object(&secret());
        assert_eq!(
            partial,
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": secret()["metadata"]})
        );
        let list = json!({
            "kind": "SecretList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "9", "continue": "next", "remainingItemCount": 1},
            "items": [secret()],
        });
        let partial = partial_list(&list);
        assert_eq!(partial["kind"], "PartialObjectMetadataList");
        assert_eq!(partial["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(partial["metadata"], list["metadata"]);
        assert_eq!(partial["items"], json!([partial_object(&secret())]));
        assert!(!partial.to_string().contains("c2VjcmV0") && !partial.to_string().contains("Opaque"));
    }

    #[test]
    fn a_write_answers_metadata_but_a_status_stays() {
        assert_eq!(partial_answer(&secret()), partial_object(&secret()));
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": "hr"}});
        assert_eq!(partial_answer(&status), status);
    }
}
