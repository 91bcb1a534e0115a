//! The protobuf bodies kubectl sends for the kinds of this module:
//! `kubectl create role|clusterrole|rolebinding|clusterrolebinding` and
//! `kubectl auth can-i` send `application/vnd.kubernetes.protobuf` and do
//! not fall back to JSON when refused. Each is read into the JSON object it
//! encodes (following `k8s.io/api/rbac/v1` and `authorization/v1`'s
//! generated.proto), with the envelope and metadata read by `protobuf`.

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::protobuf::{Field, MAGIC, fields, object_meta, text};

/// Whether a body of `kind` in `group` is read here.
pub fn reads(group: &str, kind: &str) -> bool {
    match group {
        super::rbac::GROUP => matches!(kind, "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding"),
        "authorization.k8s.io" => matches!(kind, "SelfSubjectAccessReview" | "SelfSubjectRulesReview"),
        // `kubectl auth whoami`'s has nothing to read but must not be refused.
        "authentication.k8s.io" => kind == "SelfSubjectReview",
        _ => false,
    }
}

/// The JSON object a protobuf body encodes.
pub fn to_json(body: &[u8]) -> Result<Value, ApiError> {
    decode(body).map_err(|why| ApiError::bad_request(format!("the protobuf body could not be decoded: {why}")))
}

fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body.strip_prefix(MAGIC).ok_or("it does not start with k8s\\0")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (tag, field) in fields(envelope)? {
        match (tag, field) {
            (1, Field::Bytes(type_meta)) => {
                for (tag, field) in fields(type_meta)? {
                    match (tag, field) {
                        (1, Field::Bytes(b)) => api_version = text(b)?,
                        (2, Field::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind.clone()));
    let push = |object: &mut Map<String, Value>, name: &str, value: Value| {
        if let Value::Array(items) = object.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
            items.push(value);
        }
    };
    for (tag, field) in fields(raw)? {
        let Field::Bytes(b) = field else { continue };
        match (kind.as_str(), tag) {
            (_, 1) => {
                object.insert("metadata".into(), object_meta(b)?);
            }
            ("Role" | "ClusterRole", 2) => push(&mut object, "rules", policy_rule(b)?),
            ("ClusterRole", 3) => {
                let mut selectors = Vec::new();
                for (tag, field) in fields(b)? {
                    if let (1, Field::Bytes(s)) = (tag, field) {
                        selectors.push(label_selector(s)?);
                    }
                }
                object.insert("aggregationRule".into(), json!({"clusterRoleSelectors": selectors}));
            }
            ("RoleBinding" | "ClusterRoleBinding", 2) => {
                let names = [(1, "kind"), (2, "apiGroup"), (3, "name"), (4, "namespace")];
                push(&mut object, "subjects", strings(b, &names)?)
            }
            ("RoleBinding" | "ClusterRoleBinding", 3) => {
                object.insert("roleRef".into(), strings(b, &[(1, "apiGroup"), (2, "kind"), (3, "name")])?);
            }
            ("SelfSubjectAccessReview" | "SelfSubjectRulesReview", 2) => {
                object.insert("spec".into(), review_spec(&kind, b)?);
            }
            _ => {}
        }
    }
    Ok(Value::Object(object))
}

/// A message's string fields by number, under their JSON names.
fn strings(bytes: &[u8], names: &[(u32, &str)]) -> Result<Value, String> {
    let mut object = Map::new();
    for (tag, field) in fields(bytes)? {
        if let (Some((_, name)), Field::Bytes(b)) = (names.iter().find(|(t, _)| *t == tag), field) {
            object.insert(name.to_string(), Value::String(text(b)?));
        }
    }
    Ok(Value::Object(object))
}

fn policy_rule(bytes: &[u8]) -> Result<Value, String> {
    let names = ["verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"];
    let mut rule = Map::new();
    // Verbs are required, even when empty.
    rule.insert("verbs".into(), Value::Array(Vec::new()));
    for (tag, field) in fields(bytes)? {
        let (Some(name), Field::Bytes(b)) = (names.get((tag as usize).wrapping_sub(1)), field) else { continue };
        if let Value::Array(items) = rule.entry(*name).or_insert_with(|| Value::Array(Vec::new())) {
            items.push(Value::String(text(b)?));
        }
    }
    Ok(Value::Object(rule))
}

fn label_selector(bytes: &[u8]) -> Result<Value, String> {
    let mut labels = Map::new();
    let mut expressions = Vec::new();
    for (tag, field) in fields(bytes)? {
        match (tag, field) {
            (1, Field::Bytes(entry)) => {
                let pair = strings(entry, &[(1, "key"), (2, "value")])?;
                let text = |k: &str| pair.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                labels.insert(text("key"), Value::String(text("value")));
            }
            (2, Field::Bytes(requirement)) => {
                let mut expression = strings(requirement, &[(1, "key"), (2, "operator")])?;
                let mut values = Vec::new();
                for (tag, field) in fields(requirement)? {
                    if let (3, Field::Bytes(v)) = (tag, field) {
                        values.push(Value::String(text(v)?));
                    }
                }
                expression["values"] = Value::Array(values);
                expressions.push(expression);
            }
            _ => {}
        }
    }
    let mut selector = Map::new();
    if !labels.is_empty() {
        selector.insert("matchLabels".into(), Value::Object(labels));
    }
    if !expressions.is_empty() {
        selector.insert("matchExpressions".into(), Value::Array(expressions));
    }
    Ok(Value::Object(selector))
}

fn review_spec(kind: &str, bytes: &[u8]) -> Result<Value, String> {
    let mut spec = Map::new();
    for (tag, field) in fields(bytes)? {
        let Field::Bytes(b) = field else { continue };
        match (kind, tag) {
            ("SelfSubjectAccessReview", 1) => {
                let names = [
                    (1, "namespace"),
                    (2, "verb"),
                    (3, "group"),
                    (4, "version"),
                    (5, "resource"),
                    (6, "subresource"),
                    (7, "name"),
                ];
                spec.insert("resourceAttributes".into(), strings(b, &names)?);
            }
            ("SelfSubjectAccessReview", 2) => {
                spec.insert("nonResourceAttributes".into(), strings(b, &[(1, "path"), (2, "verb")])?);
            }
            ("SelfSubjectRulesReview", 1) => {
                spec.insert("namespace".into(), Value::String(text(b)?));
            }
            _ => {}
        }
    }
    Ok(Value::Object(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64) -> Vec<u8> {
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
        [varint(u64::from(tag) << 3 | 2), varint(value.len() as u64), value.to_vec()].concat()
    }
    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let type_meta = [bytes(1, api_version.as_bytes()), bytes(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), bytes(1, &type_meta), bytes(2, &raw)].concat()
    }

    #[test]
    fn a_role_binding_as_kubectl_create_rolebinding_sends_it() {
        let subject = [bytes(1, b"User"), bytes(2, b"rbac.authorization.k8s.io"), bytes(3, b"nina")].concat();
        let role_ref = [bytes(1, b"rbac.authorization.k8s.io"), bytes(2, b"ClusterRole"), bytes(3, b"view")].concat();
        let raw = [bytes(1, &bytes(1, b"nina-view")), bytes(2, &subject), bytes(3, &role_ref)].concat();
        let json = to_json(&envelope("rbac.authorization.k8s.io/v1", "RoleBinding", raw)).expect("decodes");
        assert_eq!(
            json,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "nina-view"},
                   "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "nina"}],
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}})
        );
    }

    #[test]
    fn a_cluster_role_keeps_the_core_group_and_its_aggregation_rule() {
        let rule = [bytes(1, b"get"), bytes(2, b""), bytes(3, b"configmaps")].concat();
        let selector = bytes(1, &[bytes(1, b"tier"), bytes(2, b"web")].concat());
        let raw = [bytes(1, &bytes(1, b"reader")), bytes(2, &rule), bytes(3, &bytes(1, &selector))].concat();
        let json = to_json(&envelope("rbac.authorization.k8s.io/v1", "ClusterRole", raw)).expect("decodes");
        assert_eq!(json["rules"], json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]}]));
        assert_eq!(json["aggregationRule"], json!({"clusterRoleSelectors": [{"matchLabels": {"tier": "web"}}]}));
    }

    #[test]
    fn an_access_review_as_kubectl_auth_can_i_sends_it() {
        let attributes = [bytes(1, b"dev"), bytes(2, b"list"), bytes(5, b"configmaps")].concat();
        let raw = [bytes(1, &[]), bytes(2, &bytes(1, &attributes))].concat();
        let json = to_json(&envelope("authorization.k8s.io/v1", "SelfSubjectAccessReview", raw)).expect("decodes");
        assert_eq!(
            json["spec"],
            json!({"resourceAttributes": {"namespace": "dev", "verb": "list", "resource": "configmaps"}})
        );
        assert_eq!(to_json(b"{}").expect_err("no magic").code, 400);
    }
}
