//! The generated bad-input corpus of Okta decoding: users whose fields hold
//! any JSON at all, and `Link` headers of any shape. A bounded number of
//! cases per property.
//!
//! What must hold whatever the org sends: nothing panics; a user is refused
//! only for what [`map_user`] documents (no id, a status Okta does not
//! define, too large), and then the message quotes none of its other
//! fields; a documented status decides `enabled`; a next link is followed
//! only on the org's own origin.

use proptest::prelude::*;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::{MAX_USER_BYTES, enabled_by_status, map_user, next_link, okta_error_summary};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_shrink_iters: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        prop::sample::select(vec!["", "ACTIVE", "active", "DEPROVISIONED", "2026-11-29T08:00:00.000Z", "null"])
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z_]{0,10}", inner, 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Okta's statuses, near misses, and anything.
fn status_value() -> impl Strategy<Value = Option<Value>> {
    let statuses = vec![
        "ACTIVE",
        "DEPROVISIONED",
        "LOCKED_OUT",
        "PASSWORD_EXPIRED",
        "PROVISIONED",
        "RECOVERY",
        "STAGED",
        "SUSPENDED",
        "Active",
        " ACTIVE",
        "",
    ];
    prop_oneof![
        Just(None),
        prop::sample::select(statuses).prop_map(|s| Some(Value::from(s))),
        json_value().prop_map(Some),
    ]
}

/// Text in a user's other fields: it must never reach an error.
const MARKER: &str = "s3cr3t-MARK";

fn other_fields() -> impl Strategy<Value = Map<String, Value>> {
    let names = vec!["profile", "created", "lastUpdated", "credentials", "_links", "type", "statusChanged"];
    let value = prop_oneof![
        json_value(),
        Just(Value::from(MARKER)),
        Just(json!({"login": MARKER, "email": 7, "firstName": null, "lastName": [MARKER]})),
        Just(json!({"displayName": {"nested": MARKER}, "department": MARKER})),
    ];
    prop::collection::btree_map(prop::sample::select(names).prop_map(String::from), value, 0..6)
        .prop_map(|fields| fields.into_iter().collect())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn a_user_of_any_shape_maps_or_is_refused_for_a_named_reason(
        id in prop_oneof![
            "00u[a-zA-Z0-9]{1,17}".prop_map(|id| Some(Value::from(id))),
            Just(None),
            json_value().prop_map(Some),
        ],
        status in status_value(),
        fields in other_fields(),
    ) {
        let mut user = fields;
        if let Some(id) = &id {
            user.insert("id".into(), id.clone());
        }
        if let Some(status) = &status {
            user.insert("status".into(), status.clone());
        }
        let result = map_user(&Value::Object(user));
        let usable_id = match &id {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => None,
        };
        let Some(expected_id) = usable_id else {
            prop_assert_eq!(result, Err("a user without an id".to_string()));
            return Ok(());
        };
        let expected = status.as_ref().and_then(Value::as_str).and_then(enabled_by_status);
        match (expected, result) {
            (Some(enabled), Ok(account)) => {
                prop_assert_eq!(&account.id, &expected_id);
                prop_assert_eq!(account.enabled, enabled);
            }
            (None, Err(message)) => {
                prop_assert!(message.contains(&format!("{expected_id:?}")), "{}", message);
                prop_assert!(message.contains("is not an Okta user status"), "{}", message);
                if !status.as_ref().is_some_and(|s| s.to_string().contains(MARKER)) {
                    prop_assert!(!message.contains(MARKER), "another field reached the error: {}", message);
                }
            }
            (expected, got) => prop_assert!(false, "status {:?}: expected {:?}, got {:?}", status, expected, got),
        }
    }

    #[test]
    fn link_headers_of_any_shape_never_leave_the_org(
        values in prop::collection::vec(
            prop_oneof![
                "[ -~]{0,80}",
                "<https?://(acme\\.okta\\.com|evil\\.example)(:[0-9]{1,4})?/api/v1/users\\?after=[a-z0-9]{1,5}>; rel=\"?(next|self|prev)\"?(, )?",
                "</api/v1/users\\?after=[a-z0-9]{1,5}>; rel=next",
            ],
            0..4,
        ),
        body in json_value(),
    ) {
        let org = Url::parse("https://acme.okta.com/").expect("org");
        let mut headers = HeaderMap::new();
        for value in &values {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.append("link", value);
            }
        }
        if let Ok(Some(next)) = next_link(&headers, &org) {
            prop_assert_eq!(next.origin(), org.origin());
        }
        let _ = okta_error_summary(&body);
    }
}

proptest! {
    #![proptest_config(config(6))]

    /// A user around the size bound is refused exactly when it passes it.
    #[test]
    fn a_user_is_refused_exactly_past_its_size_bound(extra in 0usize..2000) {
        let filler = "x".repeat(MAX_USER_BYTES - 1000 + extra);
        let user = json!({"id": "00ubig", "status": "ACTIVE", "profile": {"title": filler}});
        let bytes = serde_json::to_vec(&user).map(|b| b.len()).unwrap_or_default();
        match map_user(&user) {
            Ok(_) => prop_assert!(bytes <= MAX_USER_BYTES, "{} bytes passed", bytes),
            Err(message) => {
                prop_assert!(bytes > MAX_USER_BYTES);
                prop_assert!(message.starts_with("user \"00ubig\" is "), "{}", message);
                prop_assert!(!message.contains("xxxx"), "the record was quoted");
            }
        }
    }
}
