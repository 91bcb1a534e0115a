//! The verbs: get, list, create, update, patch, delete — with the object
//! semantics of a real API server (resourceVersion conflicts, generation,
//! the status subresource, finalizers, garbage collection, CRDs becoming
//! served). Every function runs under the state lock, so each write is
//! atomic and watchers see writes in resourceVersion order.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::apply::{self, ApplyRequest};
use super::error::ApiError;
use super::events;
use super::request::{Query, Target};
use super::resources::{self, Registry, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{EventType, Store};
use crate::schema::{FieldError, dns_subdomain_problem};

/// Everything the API serves, behind one lock.
pub struct State {
    pub registry: Registry,
    pub store: Store,
}

/// The current time as the API server writes it in metadata.
pub fn now_rfc3339() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An object's labels, for label selectors.
fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default()
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable!("metadata was just made an object"),
    }
}

/// The stored object in the shape of the requested version.
pub fn present(rt: &ResourceType, stored: &Value) -> Value {
    let mut out = if rt.is_event() { events::for_version(stored, &rt.api_version()) } else { stored.clone() };
    out["apiVersion"] = Value::String(rt.api_version());
    out["kind"] = Value::String(rt.kind.clone());
    out
}

/// Why a request body could not be decoded, in the decoder's own words.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Yaml(#[from] yaml_serde::Error),
}

/// Reads a request body: JSON, or YAML for apply patches.
pub fn parse_body(body: &[u8], yaml: bool) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let parsed: Result<Value, BodyError> = if yaml {
        yaml_serde::from_slice(body).map_err(BodyError::from)
    } else {
        serde_json::from_slice(body).map_err(BodyError::from)
    };
    let value =
        parsed.map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the body of the request must be an object"));
    }
    Ok(value)
}

// ---------------------------------------------------------------- reads --

pub fn get(state: &State, t: &Target) -> Result<Value, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    let stored = state
        .store
        .get(&t.rt.storage_key, &t.storage_namespace(), name)
        .ok_or_else(|| ApiError::not_found(&t.rt.qualified(), name))?;
    Ok(present(&t.rt, stored))
}

/// Filters of list and watch requests.
pub struct Filters {
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

impl Filters {
    pub fn parse(rt: &ResourceType, q: &Query) -> Result<Self, ApiError> {
        let labels = q
            .get("labelSelector")
            .map(LabelSelector::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let fields = match q.get("fieldSelector") {
            Some(s) => {
                let selector = FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
                let allowed = rt.field_selectors();
                let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
                selector.check_supported(&allowed).map_err(|e| ApiError::bad_request(e.to_string()))?;
                Some(selector)
            }
            None => None,
        };
        Ok(Filters { labels, fields })
    }

    /// Whether `object` (in the requested version's shape) is selected.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.as_ref().is_none_or(|l| l.matches(&labels_of(object)))
            && self.fields.as_ref().is_none_or(|f| f.matches(object))
    }
}

pub fn list(state: &State, t: &Target, q: &Query) -> Result<Value, ApiError> {
    let filters = Filters::parse(&t.rt, q)?;
    let namespace = if t.rt.namespaced { t.namespace.as_deref() } else { None };
    let start_after: Option<(String, String)> = match q.get("continue") {
        Some(token) => Some(decode_continue(token)?),
        None => None,
    };
    let limit = q.u64("limit")?.filter(|l| *l > 0);
    let mut items = Vec::new();
    let mut remaining = 0u64;
    let mut last_key = None;
    for stored in state.store.list(&t.rt.storage_key, namespace) {
        let key = (
            meta_str(stored, "namespace").unwrap_or_default().to_string(),
            meta_str(stored, "name").unwrap_or_default().to_string(),
        );
        if start_after.as_ref().is_some_and(|after| &key <= after) {
            continue;
        }
        let object = present(&t.rt, stored);
        if !filters.matches(&object) {
            continue;
        }
        if limit.is_some_and(|l| items.len() as u64 >= l) {
            remaining += 1;
            continue;
        }
        last_key = Some(key);
        items.push(object);
    }
    let mut metadata = json!({"resourceVersion": state.store.revision().to_string()});
    if remaining > 0
        && let Some((ns, name)) = last_key
    {
        metadata["continue"] = Value::String(encode_continue(&ns, &name));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "kind": t.rt.list_kind,
        "apiVersion": t.rt.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

fn encode_continue(namespace: &str, name: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"ns": namespace, "name": name}).to_string())
}

fn decode_continue(token: &str) -> Result<(String, String), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let field = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(bad);
    Ok((field("ns")?, field("name")?))
}

// --------------------------------------------------------------- writes --

/// How a write records field ownership.
enum Ownership<'a> {
    /// A create, update or non-apply patch by this manager.
    Update(&'a str),
    /// Server-side apply already merged and recorded ownership.
    Applied,
}

pub fn create(state: &mut State, t: &Target, body: Value, q: &Query) -> Result<(u16, Value), ApiError> {
    if t.subresource.is_some() {
        return Err(ApiError::method_not_allowed("a subresource cannot be created"));
    }
    crate::metadata::check_type(&body, &t.rt)?;
    let mut object = if t.rt.is_event() { events::from_version(&body, &t.rt.api_version()) } else { body };
    let meta = meta_mut(&mut object);
    if meta_name(meta).is_none() {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) => {
                let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(5).collect();
                meta.insert("name".into(), Value::String(format!("{prefix}{suffix}")));
            }
            None => {
                return Err(ApiError::invalid(&t.rt.kind, &t.rt.group, "", &[FieldError::required("metadata.name")]));
            }
        }
    }
    let stored = write(state, t, None, object, q, Ownership::Update(&q.manager))?;
    Ok((201, present(&t.rt, &stored)))
}

fn meta_name(meta: &Map<String, Value>) -> Option<String> {
    meta.get("name").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

pub fn replace(state: &mut State, t: &Target, body: Value, q: &Query) -> Result<(u16, Value), ApiError> {
    crate::metadata::check_type(&body, &t.rt)?;
    let name = t.name.clone().unwrap_or_default();
    let old = state
        .store
        .get(&t.rt.storage_key, &t.storage_namespace(), &name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&t.rt.qualified(), &name))?;
    let object = if t.rt.is_event() { events::from_version(&body, &t.rt.api_version()) } else { body };
    let requested_rv = meta_str(&object, "resourceVersion").map(str::to_string);
    match requested_rv {
        Some(rv) if Some(rv.as_str()) != meta_str(&old, "resourceVersion") => {
            return Err(ApiError::conflict(&t.rt.qualified(), &name));
        }
        None if !t.rt.allow_unconditional_update => {
            return Err(ApiError::invalid(
                &t.rt.kind,
                &t.rt.group,
                &name,
                &[FieldError::invalid(
                    "metadata.resourceVersion",
                    &Value::String("0x0".into()),
                    "must be specified for an update",
                )],
            ));
        }
        _ => {}
    }
    let stored = write(state, t, Some(old), object, q, Ownership::Update(&q.manager))?;
    Ok((200, present(&t.rt, &stored)))
}

pub fn patch(
    state: &mut State,
    t: &Target,
    body: &[u8],
    content_type: &str,
    q: &Query,
) -> Result<(u16, Value), ApiError> {
    let name = t.name.clone().unwrap_or_default();
    let existing = state.store.get(&t.rt.storage_key, &t.storage_namespace(), &name).cloned();
    let media = content_type.split(';').next().unwrap_or_default().trim();

    if media == "application/apply-patch+yaml" {
        let applied = parse_body(body, true)?;
        let applied = if t.rt.is_event() { events::from_version(&applied, &t.rt.api_version()) } else { applied };
        if meta_str(&applied, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&applied, "name").unwrap_or_default()
            )));
        }
        if q.get("fieldManager").is_none() {
            return Err(ApiError::bad_request("PATCH, application/apply-patch+yaml requires fieldManager to be set"));
        }
        if existing.is_none() && t.is_status() {
            return Err(ApiError::not_found(&t.rt.qualified(), &name));
        }
        let now = now_rfc3339();
        let api_version = t.rt.api_version();
        let merged = apply::apply(&ApplyRequest {
            live: existing.as_ref(),
            applied: &applied,
            manager: &q.manager,
            force: q.flag("force"),
            subresource: t.subresource.as_deref(),
            api_version: &api_version,
            now: &now,
        })
        .map_err(|conflicts| ApiError::conflict_with_message(&t.rt.qualified(), &name, conflicts.to_string()))?;
        let mut merged = merged;
        meta_mut(&mut merged).insert("name".into(), Value::String(name.clone()));
        let created = existing.is_none();
        let stored = write(state, t, existing, merged, q, Ownership::Applied)?;
        return Ok((if created { 201 } else { 200 }, present(&t.rt, &stored)));
    }

    let old = existing.ok_or_else(|| ApiError::not_found(&t.rt.qualified(), &name))?;
    let mut doc = present(&t.rt, &old);
    match media {
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the body of the request could not be decoded: {e}")))?;
            // As on the API server (evanphx/json-patch), a `test` of a
            // missing path against null passes: kube-runtime's finalizer
            // helper relies on it to add the first finalizer.
            let ops = json_patch::Patch(
                ops.0
                    .into_iter()
                    .filter(|op| match op {
                        json_patch::PatchOperation::Test(t) => {
                            !(t.value.is_null() && doc.pointer(t.path.as_str()).is_none())
                        }
                        _ => true,
                    })
                    .collect(),
            );
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}")))?;
        }
        "application/merge-patch+json" => json_patch::merge(&mut doc, &parse_body(body, false)?),
        // For the built-in kinds served here (no lists with patch strategies
        // idsync uses) a strategic merge patch is a JSON merge patch.
        "application/strategic-merge-patch+json" if t.rt.crd_name.is_none() => {
            json_patch::merge(&mut doc, &parse_body(body, false)?)
        }
        _ => return Err(ApiError::unsupported_media_type(content_type)),
    }
    let requested_rv = meta_str(&doc, "resourceVersion");
    if requested_rv.is_some_and(|rv| Some(rv) != meta_str(&old, "resourceVersion")) {
        return Err(ApiError::conflict(&t.rt.qualified(), &name));
    }
    let object = if t.rt.is_event() { events::from_version(&doc, &t.rt.api_version()) } else { doc };
    let stored = write(state, t, Some(old), object, q, Ownership::Update(&q.manager))?;
    Ok((200, present(&t.rt, &stored)))
}

/// The common path of every write: metadata rules, the status subresource,
/// admission, generation, ownership, finalizers, commit.
fn write(
    state: &mut State,
    t: &Target,
    old: Option<Value>,
    mut object: Value,
    q: &Query,
    ownership: Ownership,
) -> Result<Value, ApiError> {
    let rt = &t.rt;
    let namespace = t.storage_namespace();
    object["apiVersion"] = Value::String(storage_api_version(rt));
    object["kind"] = Value::String(rt.kind.clone());

    // Metadata the client cannot set or change.
    {
        let url_name = t.name.clone();
        let meta = meta_mut(&mut object);
        if let (Some(url), Some(body)) = (url_name.as_deref(), meta_name(meta))
            && url != body
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body}) does not match the name on the URL ({url})"
            )));
        }
        if rt.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), Value::String(namespace.clone()));
                }
            }
        } else {
            meta.remove("namespace");
        }
        for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            meta.remove(field);
        }
        match &old {
            Some(old) => {
                for field in
                    ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"]
                {
                    if let Some(v) = old.get("metadata").and_then(|m| m.get(field)) {
                        meta.insert(field.into(), v.clone());
                    }
                }
            }
            None => {
                meta.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
                meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
            }
        }
    }
    let name = meta_str(&object, "name").unwrap_or_default().to_string();

    // The status subresource.
    if rt.has_status {
        match (&old, t.is_status()) {
            (Some(old), true) => {
                let status = object.get("status").cloned();
                let mut merged = old.clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        if let Some(m) = merged.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                if let Ownership::Applied = ownership
                    && let Some(fields) = object.pointer("/metadata/managedFields")
                {
                    meta_mut(&mut merged).insert("managedFields".into(), fields.clone());
                }
                object = merged;
            }
            (Some(old), false) => match old.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => {
                    if let Some(m) = object.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            (None, _) => {
                if let Some(m) = object.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    } else if t.is_status() {
        return Err(ApiError::no_route(&format!("{}/status", rt.plural)));
    }

    // Finalizers cannot grow while the object is being deleted.
    if let Some(old) = &old
        && old.pointer("/metadata/deletionTimestamp").is_some()
    {
        let before = finalizers(old);
        if finalizers(&object).iter().any(|f| !before.contains(f)) {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.group,
                &name,
                &[FieldError {
                    field: "metadata.finalizers".into(),
                    error_type: crate::schema::ErrorType::Forbidden {
                        detail: "no new finalizers can be added if the object is being deleted".into(),
                    },
                    bad_value: None,
                }],
            ));
        }
    }

    // Admission.
    object = admit(rt, &name, object, old.as_ref(), q)?;
    crate::metadata::validate(&object, rt, &name)?;
    crate::metadata::drop_empty(&mut object);

    // Generation moves on changes outside metadata (and outside status when
    // status is a subresource).
    if rt.tracks_generation {
        let generation = match &old {
            None => 1,
            Some(old) => {
                let previous = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                if spec_part(old, rt.has_status) != spec_part(&object, rt.has_status) { previous + 1 } else { previous }
            }
        };
        meta_mut(&mut object).insert("generation".into(), json!(generation));
    }

    // A write that changes nothing is not a write: no new resourceVersion,
    // no event (controllers rely on this to settle).
    if let Some(old) = &old {
        let mut probe = object.clone();
        let meta = meta_mut(&mut probe);
        meta.insert("resourceVersion".into(), old.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null));
        if let Ownership::Update(_) = ownership {
            match old.pointer("/metadata/managedFields") {
                Some(f) => meta.insert("managedFields".into(), f.clone()),
                None => meta.remove("managedFields"),
            };
        }
        if &probe == old {
            return Ok(old.clone());
        }
    }

    if let Ownership::Update(manager) = ownership {
        object = apply::record_update(
            old.as_ref(),
            &object,
            manager,
            t.subresource.as_deref(),
            &rt.api_version(),
            &now_rfc3339(),
        );
    }

    if q.dry_run() {
        return Ok(object);
    }

    // Namespaced objects need their namespace.
    if rt.namespaced && old.is_none() {
        match state.store.get("namespaces", "", &namespace) {
            None => return Err(ApiError::not_found("namespaces", &namespace)),
            Some(ns) if ns.pointer("/metadata/deletionTimestamp").is_some() => {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "{} {name:?} is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        rt.qualified()
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if old.is_none() && state.store.get(&rt.storage_key, &namespace, &name).is_some() {
        return Err(ApiError::already_exists(&rt.qualified(), &name));
    }

    // The last finalizer of an object being deleted is gone: delete it.
    if object.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&object).is_empty() {
        let removed = remove_now(state, rt, &namespace, &name, Propagation::Background)
            .unwrap_or_else(|| std::sync::Arc::new(object.clone()));
        return Ok((*removed).clone());
    }

    let event = if old.is_some() { EventType::Modified } else { EventType::Added };
    let stored = state.store.put(&rt.storage_key, &namespace, &name, object, event);
    after_commit(state, rt, &stored)?;
    Ok(state.store.get(&rt.storage_key, &namespace, &name).cloned().unwrap_or_else(|| (*stored).clone()))
}

/// The apiVersion objects of `rt` are stored with.
fn storage_api_version(rt: &ResourceType) -> String {
    if rt.is_event() { "v1".to_string() } else { rt.api_version() }
}

/// Schema admission for custom resources, and the checks built-in kinds get.
fn admit(rt: &ResourceType, name: &str, object: Value, old: Option<&Value>, q: &Query) -> Result<Value, ApiError> {
    let mode = q.field_validation()?;
    if let Some(validator) = &rt.validator {
        let admitted = validator.admit(object, old, mode).map(|admitted| {
            q.warn(admitted.warnings);
            admitted.object
        });
        return admitted.map_err(|invalid| {
            // Unknown fields fail strict decoding before validation, as a 400.
            let unknown: Vec<String> = invalid
                .errors
                .iter()
                .filter(|e| e.error_type == crate::schema::ErrorType::Unknown)
                .map(|e| format!("unknown field {:?}", e.field))
                .collect();
            if !unknown.is_empty() {
                return ApiError::bad_request(format!(
                    "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
                    unknown.join(", "),
                    kind = rt.kind,
                    version = rt.version
                ));
            }
            ApiError::from_invalid(&rt.kind, &rt.group, &invalid)
        });
    }
    let mut object = object;
    let invalid_name = |problem: String| {
        ApiError::invalid(
            &rt.kind,
            &rt.group,
            name,
            &[FieldError::invalid("metadata.name", &Value::String(name.into()), problem)],
        )
    };
    match rt.kind.as_str() {
        "Namespace" => {
            if name.len() > 63 || dns_subdomain_problem(name).is_some() || name.contains('.') {
                return Err(invalid_name(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into(),
                ));
            }
            if old.is_none() {
                object["status"] = json!({"phase": "Active"});
            }
        }
        "CustomResourceDefinition" => {
            resources::from_crd(&object)?;
            if let Some(old) = old
                && old.pointer("/spec/group") != object.pointer("/spec/group")
            {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    name,
                    &[FieldError::invalid(
                        "spec.group",
                        object.pointer("/spec/group").unwrap_or(&Value::Null),
                        "field is immutable",
                    )],
                ));
            }
        }
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            crate::authz::validate(&rt.kind, name, &object, old)?;
        }
        "Secret" => {
            merge_string_data(&mut object);
            if let Some(problem) = dns_subdomain_problem(name) {
                return Err(invalid_name(problem));
            }
        }
        _ => {
            if let Some(problem) = dns_subdomain_problem(name) {
                return Err(invalid_name(problem));
            }
        }
    }
    Ok(object)
}

/// A Secret's `stringData` is write-only: the API server folds it into
/// base64 `data`. Its type defaults to Opaque.
fn merge_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(map) = secret.as_object_mut() else {
        return;
    };
    // The API server defaults an empty type to Opaque (kubectl sends "").
    if map.get("type").is_none_or(|t| t.is_null() || t.as_str() == Some("")) {
        map.insert("type".to_string(), Value::String("Opaque".to_string()));
    }
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

/// Everything but metadata (and status when it is a subresource).
fn spec_part(object: &Value, has_status: bool) -> Value {
    let mut part = object.clone();
    if let Some(m) = part.as_object_mut() {
        m.remove("metadata");
        if has_status {
            m.remove("status");
        }
    }
    part
}

fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Side effects of a committed write: a CRD makes its kinds served.
fn after_commit(state: &mut State, rt: &ResourceType, stored: &Value) -> Result<(), ApiError> {
    if rt.kind != "CustomResourceDefinition" {
        return Ok(());
    }
    let name = meta_str(stored, "name").unwrap_or_default().to_string();
    let types = resources::from_crd(stored)?;
    state.registry.set_crd(&name, types);
    // Established as soon as it is stored: there is no controller to wait for.
    let names = stored.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    let storage_version = stored
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v.get("storage").and_then(Value::as_bool) == Some(true)))
        .and_then(|v| v.get("name").cloned())
        .unwrap_or(Value::Null);
    let now = now_rfc3339();
    let status = json!({
        "acceptedNames": names,
        "storedVersions": [storage_version],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    });
    if stored.get("status").map(|s| s.get("acceptedNames") == status.get("acceptedNames")).unwrap_or(false) {
        return Ok(());
    }
    let mut updated = stored.clone();
    updated["status"] = status;
    state.store.put(&rt.storage_key, "", &name, updated, EventType::Modified);
    Ok(())
}

// -------------------------------------------------------------- deletes --

/// What happens to an object's dependents (ownerReferences) when it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted (immediately here; by the garbage collector
    /// on a real cluster). Foreground is treated the same way.
    Background,
    /// Dependents lose their ownerReference and stay.
    Orphan,
}

pub fn delete(state: &mut State, t: &Target, body: Option<Value>, q: &Query) -> Result<(u16, Value), ApiError> {
    let name = t.name.clone().unwrap_or_default();
    let namespace = t.storage_namespace();
    let existing = state
        .store
        .get(&t.rt.storage_key, &namespace, &name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&t.rt.qualified(), &name))?;
    let options = body.unwrap_or(Value::Null);
    if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str)
        && Some(uid) != meta_str(&existing, "uid")
    {
        return Err(ApiError::conflict_with_message(
            &t.rt.qualified(),
            &name,
            format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(&existing, "uid").unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = options.pointer("/preconditions/resourceVersion").and_then(Value::as_str)
        && Some(rv) != meta_str(&existing, "resourceVersion")
    {
        return Err(ApiError::conflict_with_message(
            &t.rt.qualified(),
            &name,
            format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta_str(&existing, "resourceVersion").unwrap_or_default()
            ),
        ));
    }
    let policy = options
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or_else(|| q.get("propagationPolicy"))
        .unwrap_or("Background");
    let propagation = match policy {
        "Orphan" => Propagation::Orphan,
        "Background" | "Foreground" => Propagation::Background,
        other => {
            return Err(ApiError::bad_request(format!("unsupported propagationPolicy {other:?}")));
        }
    };
    if q.dry_run_checked(Some(&options), "DeleteOptions")? {
        return Ok((200, present(&t.rt, &existing)));
    }
    let result = delete_object(state, &t.rt, &namespace, &name, propagation);
    Ok((200, present(&t.rt, &result)))
}

pub fn delete_collection(
    state: &mut State,
    t: &Target,
    options: Option<Value>,
    q: &Query,
) -> Result<(u16, Value), ApiError> {
    let dry_run = q.dry_run_checked(options.as_ref(), "DeleteOptions")?;
    let listed = list(state, t, q)?;
    let namespace = t.storage_namespace();
    let mut deleted = Vec::new();
    for item in listed["items"].as_array().cloned().unwrap_or_default() {
        let name = meta_str(&item, "name").unwrap_or_default().to_string();
        let ns = meta_str(&item, "namespace").map(str::to_string).unwrap_or_else(|| namespace.clone());
        if !dry_run {
            delete_object(state, &t.rt, &ns, &name, Propagation::Background);
        }
        deleted.push(item);
    }
    Ok((
        200,
        json!({"kind": t.rt.list_kind, "apiVersion": t.rt.api_version(),
               "metadata": {"resourceVersion": state.store.revision().to_string()}, "items": deleted}),
    ))
}

/// Deletes an object: marks it when finalizers remain, removes it
/// otherwise. Returns its last state.
fn delete_object(state: &mut State, rt: &ResourceType, namespace: &str, name: &str, propagation: Propagation) -> Value {
    let Some(existing) = state.store.get(&rt.storage_key, namespace, name).cloned() else {
        return Value::Null;
    };
    if rt.kind == "Namespace" {
        return delete_namespace(state, rt, name, existing);
    }
    if !finalizers(&existing).is_empty() {
        if existing.pointer("/metadata/deletionTimestamp").is_some() {
            return existing;
        }
        let mut marked = existing.clone();
        let meta = meta_mut(&mut marked);
        meta.insert("deletionTimestamp".into(), Value::String(now_rfc3339()));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        if rt.tracks_generation {
            let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
            meta.insert("generation".into(), json!(generation + 1));
        }
        return (*state.store.put(&rt.storage_key, namespace, name, marked, EventType::Modified)).clone();
    }
    remove_now(state, rt, namespace, name, propagation).map(|v| (*v).clone()).unwrap_or(existing)
}

/// Removes an object for good, then what depended on it.
fn remove_now(
    state: &mut State,
    rt: &ResourceType,
    namespace: &str,
    name: &str,
    propagation: Propagation,
) -> Option<std::sync::Arc<Value>> {
    let removed = state.store.remove(&rt.storage_key, namespace, name)?;
    if rt.kind == "CustomResourceDefinition" {
        remove_crd_instances(state, name);
    }
    if let Some(uid) = meta_str(&removed, "uid") {
        let uid = uid.to_string();
        collect_garbage(state, &uid, propagation);
    }
    finish_namespace_if_empty(state, namespace);
    Some(removed)
}

/// Dependents of a removed owner: orphaned, or deleted when no other owner
/// remains. Immediate here; eventual on a real cluster.
fn collect_garbage(state: &mut State, owner_uid: &str, propagation: Propagation) {
    let dependents: Vec<(String, String, String, Value)> = state
        .store
        .iter()
        .filter(|(_, v)| owner_uids(v).iter().any(|u| u == owner_uid))
        .map(|((k, ns, n), v)| (k.clone(), ns.clone(), n.clone(), v.clone()))
        .collect();
    for (key, ns, name, object) in dependents {
        let Some(rt) = state.registry.all().iter().find(|t| t.storage_key == key).cloned() else {
            continue;
        };
        let mut updated = object.clone();
        if let Some(refs) = updated.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
        }
        let orphaned_or_shared = propagation == Propagation::Orphan || !owner_uids(&updated).is_empty();
        if orphaned_or_shared {
            if owner_uids(&updated).is_empty()
                && let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut)
            {
                meta.remove("ownerReferences");
            }
            state.store.put(&key, &ns, &name, updated, EventType::Modified);
        } else {
            delete_object(state, &rt, &ns, &name, Propagation::Background);
        }
    }
}

fn owner_uids(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str)).map(str::to_string).collect())
        .unwrap_or_default()
}

/// A namespace is marked Terminating, its contents deleted, and it goes
/// once nothing is left in it (objects with finalizers keep it).
fn delete_namespace(state: &mut State, rt: &ResourceType, name: &str, existing: Value) -> Value {
    let mut marked = existing;
    if marked.pointer("/metadata/deletionTimestamp").is_none() {
        meta_mut(&mut marked).insert("deletionTimestamp".into(), Value::String(now_rfc3339()));
        marked["status"] = json!({"phase": "Terminating"});
        marked = (*state.store.put(&rt.storage_key, "", name, marked, EventType::Modified)).clone();
    }
    let contents: Vec<(String, String)> =
        state.store.iter().filter(|((_, ns, _), _)| ns == name).map(|((k, _, n), _)| (k.clone(), n.clone())).collect();
    for (key, object_name) in contents {
        if let Some(object_rt) = state.registry.all().iter().find(|t| t.storage_key == key).cloned() {
            delete_object(state, &object_rt, name, &object_name, Propagation::Background);
        }
    }
    finish_namespace_if_empty(state, name);
    state.store.get("namespaces", "", name).cloned().unwrap_or(marked)
}

fn finish_namespace_if_empty(state: &mut State, namespace: &str) {
    if namespace.is_empty() {
        return;
    }
    let terminating = state
        .store
        .get("namespaces", "", namespace)
        .is_some_and(|ns| ns.pointer("/metadata/deletionTimestamp").is_some());
    if terminating && !state.store.iter().any(|((_, ns, _), _)| ns == namespace) {
        state.store.remove("namespaces", "", namespace);
    }
}

/// A deleted CRD takes its objects with it (their finalizers are not
/// waited for, unlike a real cluster's CustomResourceCleanup).
fn remove_crd_instances(state: &mut State, crd_name: &str) {
    let Some(storage_key) =
        state.registry.all().iter().find(|t| t.crd_name.as_deref() == Some(crd_name)).map(|t| t.storage_key.clone())
    else {
        return;
    };
    state.registry.remove_crd(crd_name);
    let instances: Vec<(String, String)> = state
        .store
        .iter()
        .filter(|((k, _, _), _)| *k == storage_key)
        .map(|((_, ns, n), _)| (ns.clone(), n.clone()))
        .collect();
    for (ns, name) in instances {
        state.store.remove(&storage_key, &ns, &name);
    }
}
