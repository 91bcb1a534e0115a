//! HTTP: authentication, routing of Kubernetes API paths to the verbs, and
//! the answers' encoding (JSON, Tables, watch streams).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;

use super::Shared;
use super::api;
use super::discovery;
use super::error::ApiError;
use super::openapi;
use super::reads::ReadVerb;
use super::representation::{self, Answer, Representation};
use super::request::{Query, Target};
use super::table;
use super::watch;

pub type Body = BoxBody<Bytes, Infallible>;

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match route(shared, req).await {
        Ok(response) => response,
        Err(error) => json_response(error.code, &error.to_status()),
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "devcluster request");
    Ok(response)
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string())).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let token = header_str(&req, header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "));
    let Some(user) = token.and_then(|t| shared.authz.users.authenticate(t)) else {
        return Err(ApiError::unauthorized());
    };
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let path = raw_path.trim_end_matches('/').to_string();
    let mut query = Query::parse(req.uri().query(), header_str(&req, header::USER_AGENT));
    query.user = Some(user.clone());
    let accept = header_str(&req, header::ACCEPT).map(str::to_string);
    let content_type = header_str(&req, header::CONTENT_TYPE).unwrap_or("application/json").to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

    // Everything but `/api/v1/…` and `/apis/{group}/{version}/…` is a
    // non-resource request, authorized by its path and lower-case method
    // (what `system:discovery` and `system:public-info-viewer` grant).
    let resource_request = match segments.first() {
        Some(&"api") => segments.len() >= 3,
        Some(&"apis") => segments.len() >= 4,
        _ => false,
    };
    if !resource_request {
        let verb = method.as_str().to_ascii_lowercase();
        shared.authz.authorize(&user, &crate::authz::Attributes::of_path(&verb, &raw_path), None)?;
    }

    // Health, as the API server answers its probes and `kubectl get --raw`.
    if method == Method::GET && matches!(segments.first(), Some(&("healthz" | "readyz" | "livez"))) {
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
        response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
        return Ok(response);
    }

    // Discovery and OpenAPI.
    if method == Method::GET {
        let state = shared.lock()?;
        let found = match segments.as_slice() {
            ["version"] => Some(discovery::version()),
            ["api"] => Some(discovery::core_versions(&shared.config.address)),
            ["api", "v1"] => discovery::resources(&state.registry, "", "v1"),
            ["apis"] => Some(discovery::groups(&state.registry)),
            ["apis", group] => discovery::group(&state.registry, group),
            ["apis", group, version] => discovery::resources(&state.registry, group, version),
            ["openapi", "v3"] => Some(openapi::index(&state.registry, state.store.revision())),
            ["openapi", "v3", "api", version] => openapi::document(&state.registry, "", version),
            ["openapi", "v3", "apis", group, version] => openapi::document(&state.registry, group, version),
            ["openapi", ..] => return Err(ApiError::no_route(&path)),
            _ => None,
        };
        if let Some(document) = found {
            return Ok(json_response(200, &document));
        }
    }

    let target = {
        let state = shared.lock()?;
        resolve(&state.registry, &segments).ok_or_else(|| ApiError::no_route(&path))?
    };
    let watching = method == Method::GET && target.name.is_none() && query.flag("watch");
    let verb = crate::authz::verb(&method, target.name.is_some(), watching);
    let attributes = crate::authz::Attributes::of_request(&target, verb, query.get("fieldSelector"));
    shared.authz.authorize(&user, &attributes, Some(&target))?;

    let mut body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    if body.len() > crate::metadata::MAX_BODY_BYTES {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {}", crate::metadata::MAX_BODY_BYTES),
        ));
    }
    // Bodies are JSON (or YAML for apply). kubectl's imperative commands
    // send protobuf for built-in kinds: those of them kubectl creates are
    // read (see `protobuf`); any other non-JSON body is told 415, as a
    // server without protobuf would, and client-go then sends JSON. The
    // RBAC kinds and the reviews are read in `authz::wire`: kubectl does
    // not fall back to JSON for them.
    if !body.is_empty() && matches!(method, Method::POST | Method::PUT) && !is_json_or_yaml(&content_type) {
        if !crate::protobuf::is_protobuf(&content_type) {
            return Err(ApiError::unsupported_media_type(&content_type));
        }
        let json = if crate::authz::wire::reads(&target.rt.group, &target.rt.kind) {
            crate::authz::wire::to_json(&body)?
        } else {
            crate::protobuf::to_json(&body)?
        };
        body = Bytes::from(json.to_string());
    }

    // The self reviews: answered for the asking user, stored never.
    if let Some(review) = SelfReview::of(&target.rt) {
        if method != Method::POST || target.name.is_some() {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {path})"
            )));
        }
        let asked = || api::parse_body(&body, false);
        let answer = match review {
            SelfReview::Subject => crate::authz::review::whoami(&user),
            SelfReview::Access => crate::authz::review::access_review(&shared.authz, &user, &asked()?)?,
            SelfReview::Rules => crate::authz::review::rules_review(&shared.authz, &user, &asked()?)?,
        };
        return Ok(json_response(201, &answer));
    }

    let answer = match (&target.name, watching) {
        (_, true) => Answer::Watch,
        (None, false) => Answer::List,
        (Some(_), false) => Answer::Object,
    };
    let query = query.with_requester(crate::admission_policy::requester(&shared, &user));
    // `?dryRun=` must say `All`; a delete's body is checked where it is read.
    let options_kind = match method {
        Method::POST => Some("CreateOptions"),
        Method::PUT => Some("UpdateOptions"),
        Method::PATCH => Some("PatchOptions"),
        _ => None,
    };
    if let Some(kind) = options_kind {
        query.dry_run_checked(None, kind)?;
    }
    let representation = Representation::negotiate(accept.as_deref(), answer, query.get("includeObject"))?;
    let resource = target.rt.qualified();
    let (written_namespace, written_name, subresource) =
        (target.namespace.clone(), target.name.clone(), target.subresource.clone());

    let answered = match method {
        Method::GET if watching => {
            let lines = watch::start(shared.clone(), target, &query, representation)?;
            shared.reads.record(&resource, ReadVerb::Watch, representation);
            Ok(stream_response(lines))
        }
        Method::GET if target.name.is_none() => {
            let listed = api::list(&*shared.lock()?, &target, &query)?;
            shared.reads.record(&resource, ReadVerb::List, representation);
            Ok(json_response(200, &render(&target, listed, representation, true)))
        }
        Method::GET => {
            let object = api::get(&*shared.lock()?, &target)?;
            shared.reads.record(&resource, ReadVerb::Get, representation);
            Ok(json_response(200, &render(&target, object, representation, false)))
        }
        Method::POST if target.name.is_none() => {
            let value = api::parse_body(&body, false)?;
            let (code, object) = shared.write(|state| api::create(state, &target, value, &query))?;
            Ok(json_response(code, &written(object, representation)))
        }
        Method::PUT if target.name.is_some() => {
            let value = api::parse_body(&body, false)?;
            let (code, object) = shared.write(|state| api::replace(state, &target, value, &query))?;
            Ok(json_response(code, &written(object, representation)))
        }
        Method::PATCH if target.name.is_some() => {
            let (code, object) = shared.write(|state| api::patch(state, &target, &body, &content_type, &query))?;
            Ok(json_response(code, &written(object, representation)))
        }
        Method::DELETE if target.name.is_some() => {
            let options = if body.is_empty() { None } else { Some(api::parse_body(&body, false)?) };
            let (code, object) = shared.write(|state| api::delete(state, &target, options, &query))?;
            Ok(json_response(code, &written(object, representation)))
        }
        Method::DELETE => {
            let options = if body.is_empty() { None } else { Some(api::parse_body(&body, false)?) };
            let (code, object) = shared.write(|state| api::delete_collection(state, &target, options, &query))?;
            Ok(json_response(code, &written(object, representation)))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {path})"
        ))),
    };
    let mut response = answered?;
    if let Some(verb) = write_verb(&method, written_name.is_some()) {
        // A dry run, in the query or in a delete's body, changed nothing.
        let dry_run = query.get("dryRun").is_some() || (method == Method::DELETE && body_says_dry_run(&body));
        if !dry_run {
            let resource = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource,
            };
            shared.writes.record(&user.username, verb, resource, written_namespace, written_name);
        }
    }
    // Warnings (unknown fields dropped under `fieldValidation=Warn`, the
    // default) reach the client as the API server sends them, and kubectl
    // prints them as `Warning: …`.
    for warning in query.warnings() {
        if let Ok(value) = header::HeaderValue::from_str(&format!("299 - {warning:?}")) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    Ok(response)
}

/// The RBAC verb of a write, None for a read.
fn write_verb(method: &Method, named: bool) -> Option<&'static str> {
    match (method, named) {
        (&Method::POST, false) => Some("create"),
        (&Method::PUT, true) => Some("update"),
        (&Method::PATCH, true) => Some("patch"),
        (&Method::DELETE, true) => Some("delete"),
        (&Method::DELETE, false) => Some("deletecollection"),
        _ => None,
    }
}

/// Whether a delete's options ask for a dry run.
fn body_says_dry_run(body: &Bytes) -> bool {
    serde_json::from_slice::<Value>(body).ok().and_then(|o| o.get("dryRun").cloned()).is_some_and(|d| !d.is_null())
}

/// The reviews answered rather than stored.
enum SelfReview {
    Subject,
    Access,
    Rules,
}

impl SelfReview {
    fn of(rt: &crate::resources::ResourceType) -> Option<SelfReview> {
        match (rt.group.as_str(), rt.kind.as_str()) {
            ("authentication.k8s.io", "SelfSubjectReview") => Some(SelfReview::Subject),
            ("authorization.k8s.io", "SelfSubjectAccessReview") => Some(SelfReview::Access),
            ("authorization.k8s.io", "SelfSubjectRulesReview") => Some(SelfReview::Rules),
            _ => None,
        }
    }
}

/// A list or object as JSON, as a Table or as its metadata, as asked for.
fn render(t: &Target, value: Value, representation: Representation, is_list: bool) -> Value {
    let include = match representation {
        Representation::Object => return value,
        Representation::Metadata if is_list => return representation::partial_list(&value),
        Representation::Metadata => return representation::partial_object(&value),
        Representation::Table(include) => include,
    };
    let (objects, metadata) = if is_list {
        (value.get("items").and_then(Value::as_array).cloned().unwrap_or_default(), value["metadata"].clone())
    } else {
        let rv = value.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
        (vec![value], serde_json::json!({"resourceVersion": rv}))
    };
    table::for_resource(&t.rt, &objects, include, metadata, k8s_openapi::jiff::Timestamp::now())
}

/// What a write answers: the object, or its metadata when asked for (a
/// Table of a write is the object: kubectl never asks for one).
fn written(value: Value, representation: Representation) -> Value {
    match representation {
        Representation::Metadata => representation::partial_answer(&value),
        Representation::Object | Representation::Table(_) => value,
    }
}

/// `/api/v1/...` and `/apis/{group}/{version}/...` paths.
fn resolve(registry: &super::resources::Registry, segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // `namespaces/{ns}/{plural}...` addresses a namespaced resource;
        // `namespaces/{name}[/status]` the Namespace itself.
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    let rt = registry.find(group, version, plural)?.clone();
    if namespace.is_some() && !rt.namespaced {
        return None;
    }
    if subresource.as_deref().is_some_and(|s| s != "status") {
        return None;
    }
    Some(Target { rt, namespace, name, subresource })
}

fn stream_response(mut lines: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures::stream::poll_fn(move |cx| lines.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))));
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

/// Whether a body of this media type is one the devcluster decodes.
fn is_json_or_yaml(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json") || media == "application/yaml" || media.is_empty()
}

#[cfg(test)]
mod body_tests {
    use super::is_json_or_yaml;

    #[test]
    fn bodies_other_than_json_or_yaml_are_unsupported() {
        for accepted in ["application/json", "application/json; charset=utf-8", "application/merge-patch+json", ""] {
            assert!(is_json_or_yaml(accepted), "{accepted}");
        }
        for refused in ["application/vnd.kubernetes.protobuf", "application/cbor", "text/plain"] {
            assert!(!is_json_or_yaml(refused), "{refused}");
        }
    }
}
