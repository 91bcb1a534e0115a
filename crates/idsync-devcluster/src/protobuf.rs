//! Protobuf request bodies for the built-in kinds kubectl's imperative
//! commands create: `kubectl create secret generic …`, `create configmap`,
//! `create namespace` send `application/vnd.kubernetes.protobuf` and give up
//! when a server refuses it, so the credentials Secret a new user creates
//! first would fail. Such a body is turned into the JSON object it encodes
//! and handled like any other; answers stay JSON, which clients accept.
//!
//! The envelope is `k8s\0` followed by a `runtime.Unknown` message (type
//! meta, raw object bytes); the objects follow `k8s.io/api`'s
//! generated.proto. Only the fields a create or update sets are read
//! (metadata's name, generateName, namespace, labels, annotations,
//! ownerReferences, finalizers, resourceVersion; the kinds' data); a
//! server-set field in the body is ignored, as the server would overwrite
//! it anyway. Other kinds are refused with 415 as before, and client-go
//! then sends JSON.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::error::ApiError;

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
pub(crate) const MAGIC: &[u8] = b"k8s\0";

/// One field as it appears on the wire.
pub(crate) enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed 32/64-bit values: no field read here has them.
    Fixed,
}

/// The fields of one message, in wire order.
pub(crate) fn fields(mut buf: &[u8]) -> Result<Vec<(u32, Field<'_>)>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let tag = u32::try_from(key >> 3).map_err(|_| "a field number out of range".to_string())?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            1 => {
                buf = buf.get(8..).ok_or("a truncated 64-bit field")?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| "a length out of range".to_string())?;
                let (bytes, rest) = (buf.get(..len).ok_or("a truncated length-delimited field")?, &buf[len..]);
                buf = rest;
                Field::Bytes(bytes)
            }
            5 => {
                buf = buf.get(4..).ok_or("a truncated 32-bit field")?;
                Field::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((tag, field));
    }
    Ok(out)
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or("a truncated varint")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint longer than 64 bits".to_string())
}

pub(crate) fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field that is not UTF-8".to_string())
}

/// A `map<string, V>` entry: key 1, value 2.
fn entry(bytes: &[u8]) -> Result<(String, &[u8]), String> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (tag, field) in fields(bytes)? {
        match (tag, field) {
            (1, Field::Bytes(b)) => key = text(b)?,
            (2, Field::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

/// Accumulates a message's fields into a JSON object.
#[derive(Default)]
struct Object(Map<String, Value>);

impl Object {
    fn set(&mut self, name: &str, value: Value) {
        self.0.insert(name.to_string(), value);
    }
    fn push(&mut self, name: &str, value: Value) {
        if let Value::Array(items) = self.0.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
            items.push(value);
        }
    }
    /// A `map<string, string>` entry, or `map<string, bytes>` as base64
    /// (JSON's encoding of bytes).
    fn put(&mut self, name: &str, bytes: &[u8], binary: bool) -> Result<(), String> {
        let (key, value) = entry(bytes)?;
        let value = if binary { base64::engine::general_purpose::STANDARD.encode(value) } else { text(value)? };
        if let Value::Object(map) = self.0.entry(name).or_insert_with(|| Value::Object(Map::new())) {
            map.insert(key, Value::String(value));
        }
        Ok(())
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

pub(crate) fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Object::default();
    for (tag, field) in fields(bytes)? {
        match (tag, field) {
            (1, Field::Bytes(b)) => meta.set("name", Value::String(text(b)?)),
            (2, Field::Bytes(b)) => meta.set("generateName", Value::String(text(b)?)),
            (3, Field::Bytes(b)) => meta.set("namespace", Value::String(text(b)?)),
            (6, Field::Bytes(b)) => meta.set("resourceVersion", Value::String(text(b)?)),
            (11, Field::Bytes(b)) => meta.put("labels", b, false)?,
            (12, Field::Bytes(b)) => meta.put("annotations", b, false)?,
            (13, Field::Bytes(b)) => meta.push("ownerReferences", owner_reference(b)?),
            (14, Field::Bytes(b)) => meta.push("finalizers", Value::String(text(b)?)),
            _ => {}
        }
    }
    Ok(meta.done())
}

fn owner_reference(bytes: &[u8]) -> Result<Value, String> {
    let mut owner = Object::default();
    for (tag, field) in fields(bytes)? {
        match (tag, field) {
            (1, Field::Bytes(b)) => owner.set("kind", Value::String(text(b)?)),
            (3, Field::Bytes(b)) => owner.set("name", Value::String(text(b)?)),
            (4, Field::Bytes(b)) => owner.set("uid", Value::String(text(b)?)),
            (5, Field::Bytes(b)) => owner.set("apiVersion", Value::String(text(b)?)),
            (6, Field::Varint(v)) => owner.set("controller", Value::Bool(v != 0)),
            (7, Field::Varint(v)) => owner.set("blockOwnerDeletion", Value::Bool(v != 0)),
            _ => {}
        }
    }
    Ok(owner.done())
}

/// The kind's own fields, after metadata (tag 1).
fn kind_fields(kind: &str, object: &mut Object, tag: u32, field: Field<'_>) -> Result<(), String> {
    match (kind, tag, field) {
        ("Secret", 2, Field::Bytes(b)) => object.put("data", b, true)?,
        ("Secret", 3, Field::Bytes(b)) => object.set("type", Value::String(text(b)?)),
        ("Secret", 4, Field::Bytes(b)) => object.put("stringData", b, false)?,
        ("Secret", 5, Field::Varint(v)) => object.set("immutable", Value::Bool(v != 0)),
        ("ConfigMap", 2, Field::Bytes(b)) => object.put("data", b, false)?,
        ("ConfigMap", 3, Field::Bytes(b)) => object.put("binaryData", b, true)?,
        ("ConfigMap", 4, Field::Varint(v)) => object.set("immutable", Value::Bool(v != 0)),
        ("Namespace", 2, Field::Bytes(b)) => {
            let mut finalizers = Vec::new();
            for (tag, field) in fields(b)? {
                if let (1, Field::Bytes(f)) = (tag, field) {
                    finalizers.push(Value::String(text(f)?));
                }
            }
            object.set("spec", json!({"finalizers": finalizers}));
        }
        _ => {}
    }
    Ok(())
}

/// The kinds whose protobuf bodies are read.
const KINDS: [&str; 3] = ["Secret", "ConfigMap", "Namespace"];

/// The JSON object a protobuf body encodes, or 415 for a kind not read
/// here (the answer that makes client-go fall back to JSON).
pub fn to_json(body: &[u8]) -> Result<Value, ApiError> {
    let unsupported = || ApiError::unsupported_media_type(CONTENT_TYPE);
    let malformed = |why: String| ApiError::bad_request(format!("the protobuf body could not be decoded: {why}"));
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| malformed("it does not start with k8s\\0".into()))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (tag, field) in fields(envelope).map_err(malformed)? {
        match (tag, field) {
            (1, Field::Bytes(type_meta)) => {
                for (tag, field) in fields(type_meta).map_err(malformed)? {
                    match (tag, field) {
                        (1, Field::Bytes(b)) => api_version = text(b).map_err(malformed)?,
                        (2, Field::Bytes(b)) => kind = text(b).map_err(malformed)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    if api_version != "v1" || !KINDS.contains(&kind.as_str()) {
        return Err(unsupported());
    }
    let raw = raw.ok_or_else(|| malformed("no object in the envelope".into()))?;
    let mut object = Object::default();
    object.set("apiVersion", Value::String(api_version));
    object.set("kind", Value::String(kind.clone()));
    for (tag, field) in fields(raw).map_err(malformed)? {
        match (tag, field) {
            (1, Field::Bytes(b)) => object.set("metadata", object_meta(b).map_err(malformed)?),
            (tag, field) => kind_fields(&kind, &mut object, tag, field).map_err(malformed)?,
        }
    }
    Ok(object.done())
}

/// Whether a content type is Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().is_some_and(|t| t.trim() == CONTENT_TYPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal encoder for the tests' own bodies.
    fn key(tag: u32, wire: u8) -> Vec<u8> {
        encode_varint(u64::from(tag) << 3 | u64::from(wire))
    }
    fn encode_varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }
    fn bytes(tag: u32, value: &[u8]) -> Vec<u8> {
        [key(tag, 2), encode_varint(value.len() as u64), value.to_vec()].concat()
    }
    fn map_entry(tag: u32, k: &str, v: &[u8]) -> Vec<u8> {
        bytes(tag, &[bytes(1, k.as_bytes()), bytes(2, v)].concat())
    }
    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let type_meta = [bytes(1, b"v1"), bytes(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), bytes(1, &type_meta), bytes(2, &raw)].concat()
    }

    #[test]
    fn a_secret_as_kubectl_create_secret_sends_it_reads_as_its_json() {
        let meta =
            [bytes(1, b"hr-token"), bytes(3, b"people"), map_entry(11, "idsync.dev/credentials", b"true")].concat();
        let raw = [bytes(1, &meta), map_entry(2, "token", b"s3cr\xffet"), bytes(3, b"Opaque")].concat();
        let json = to_json(&envelope("Secret", raw)).expect("decodes");
        assert_eq!(
            json,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "hr-token", "namespace": "people", "labels": {"idsync.dev/credentials": "true"}},
                   "data": {"token": base64::engine::general_purpose::STANDARD.encode(b"s3cr\xffet")}, "type": "Opaque"})
        );
    }

    #[test]
    fn a_config_map_and_a_namespace_read_as_their_json() {
        let raw =
            [bytes(1, &bytes(1, b"settings")), map_entry(2, "people.csv", b"id\n1\n"), key(4, 0), vec![1]].concat();
        let json = to_json(&envelope("ConfigMap", raw)).expect("decodes");
        assert_eq!(json["data"]["people.csv"], "id\n1\n");
        assert_eq!(json["immutable"], true);
        let raw = [bytes(1, &bytes(1, b"team-a")), bytes(2, &bytes(1, b"kubernetes"))].concat();
        let json = to_json(&envelope("Namespace", raw)).expect("decodes");
        assert_eq!(json["metadata"]["name"], "team-a");
        assert_eq!(json["spec"]["finalizers"], json!(["kubernetes"]));
    }

    #[test]
    fn other_kinds_get_415_and_broken_bodies_a_clear_400() {
        let pod = envelope("Pod", bytes(1, &bytes(1, b"p")));
        assert_eq!(to_json(&pod).expect_err("not read").code, 415);
        let cut = envelope("Secret", bytes(1, &bytes(1, b"hr")));
        let cut = &cut[..cut.len() - 1];
        let error = to_json(cut).expect_err("truncated");
        assert_eq!(error.code, 400);
        assert!(error.message.contains("truncated"), "{}", error.message);
        assert_eq!(to_json(b"{}").expect_err("no magic").code, 400);
    }
}
