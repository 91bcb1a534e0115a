//! The generated bad-input corpus of SCIM decoding: User resources whose
//! fields hold any JSON at all, list pages of any shape, error bodies of any
//! shape. A bounded number of cases per property.
//!
//! What must hold whatever the server sends: nothing panics; a user is
//! refused only for what [`map_user`] documents (no id, an `active` that is
//! not a yes or a no, too large), and then the message quotes none of its
//! other fields; an `active` that says yes or no is what the account says.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::{ENTERPRISE_USER, ListPage, MAX_USER_BYTES, UserError, map_user, scim_error_summary};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_shrink_iters: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        prop::sample::select(vec!["", " ", "true", "TRUE", "False", "yes", "0", "1", "null", "maybe"])
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z$]{0,10}", inner, 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// What a user's `id` may be: usable ones and every kind of unusable one.
fn id_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        "[a-z0-9-]{1,12}".prop_map(|id| Some(Value::from(id))),
        " [a-z0-9]{1,6} ".prop_map(|id| Some(Value::from(id))),
        any::<u32>().prop_map(|n| Some(Value::from(n))),
        Just(None),
        json_value().prop_map(Some),
    ]
}

/// What `active` may be: the booleans, their string forms, and anything.
fn active_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        any::<bool>().prop_map(|b| Some(Value::Bool(b))),
        prop::sample::select(vec!["true", "false", "TRUE", "False"]).prop_map(|s| Some(Value::from(s))),
        json_value().prop_map(Some),
    ]
}

/// Text that sits in a user's other fields: it must never reach an error.
const MARKER: &str = "s3cr3t-MARK";

/// The fields a SCIM user has, each holding any JSON, or a realistic value
/// carrying the marker.
fn other_fields() -> impl Strategy<Value = Map<String, Value>> {
    let names = vec![
        "userName",
        "displayName",
        "name",
        "emails",
        "groups",
        "title",
        "externalId",
        "meta",
        ENTERPRISE_USER,
        "password",
    ];
    let value = prop_oneof![
        json_value(),
        Just(Value::from(MARKER)),
        Just(json!({"givenName": MARKER, "familyName": 7, "formatted": null})),
        Just(json!([{"value": MARKER, "primary": "yes"}, {"value": null}, 3])),
        Just(json!({"employeeNumber": [MARKER], "manager": {"value": {"nested": MARKER}}})),
    ];
    prop::collection::btree_map(prop::sample::select(names).prop_map(String::from), value, 0..8)
        .prop_map(|fields| fields.into_iter().collect())
}

/// What `active` means, per the SCIM mapping: None when it must be refused.
fn enabled_by(active: Option<&Value>) -> Option<bool> {
    match active {
        None | Some(Value::Null) => Some(true),
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
        Some(_) => None,
    }
}

/// The id a usable `id` gives, or None when it is unusable.
fn id_of(id: Option<&Value>) -> Option<String> {
    match id {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// A user of any shape is an account or a documented refusal; `active`
    /// decides `enabled` or refuses the user; nothing else is quoted.
    #[test]
    fn a_user_of_any_shape_maps_or_is_refused_for_a_named_reason(
        id in id_value(),
        active in active_value(),
        fields in other_fields(),
    ) {
        let mut user = fields;
        if let Some(id) = &id {
            user.insert("id".into(), id.clone());
        }
        if let Some(active) = &active {
            user.insert("active".into(), active.clone());
        }
        let user = Value::Object(user);
        let result = map_user(&user);
        let Some(expected_id) = id_of(id.as_ref()) else {
            prop_assert_eq!(result, Err(UserError::NoId));
            return Ok(());
        };
        match (enabled_by(active.as_ref()), result) {
            (Some(enabled), Ok(account)) => {
                prop_assert_eq!(&account.id, &expected_id);
                prop_assert_eq!(account.enabled, enabled);
            }
            (None, Err(error @ UserError::Active { .. })) => {
                let message = error.to_string();
                prop_assert!(message.contains(&format!("{expected_id:?}")), "{}", message);
                prop_assert!(message.contains("not true or false"), "{}", message);
                // The value is quoted, cut to 40 characters.
                let quoted = message.chars().count() - format!("{expected_id:?}").chars().count();
                prop_assert!(quoted < 150, "{} characters quoted: {}", quoted, message);
                if !active.as_ref().is_some_and(|a| a.to_string().contains(MARKER)) {
                    prop_assert!(!message.contains(MARKER), "another field reached the error: {}", message);
                }
            }
            (expected, got) => prop_assert!(false, "active {:?}: expected {:?}, got {:?}", active, expected, got),
        }
    }

    /// List pages and error bodies of any shape: parsed or refused, never a
    /// panic; a page's next startIndex moves forward or ends the read.
    #[test]
    fn list_pages_and_error_bodies_of_any_shape_never_panic(
        body in json_value(),
        total in prop::option::of(json_value()),
        resources in prop::option::of(json_value()),
        start in 1u64..1_000_000,
    ) {
        let _ = scim_error_summary(&body);
        let mut page = match body {
            Value::Object(map) => map,
            other => Map::from_iter([("unexpected".to_string(), other)]),
        };
        if let Some(total) = total {
            page.insert("totalResults".into(), total);
        }
        if let Some(resources) = resources {
            page.insert("Resources".into(), resources);
        }
        let page = Value::Object(page);
        let _ = scim_error_summary(&page);
        if let Ok(list) = ListPage::parse(&page) {
            match list.next_start(start) {
                Some(next) => prop_assert!(next > start && !list.resources.is_empty()),
                None => prop_assert!(
                    list.resources.is_empty() || list.total_results.is_some_and(|t| start + list.resources.len() as u64 > t)
                ),
            }
        }
    }
}

proptest! {
    #![proptest_config(config(6))]

    /// A user around the size bound is refused exactly when it passes it.
    #[test]
    fn a_user_is_refused_exactly_past_its_size_bound(extra in 0usize..2000) {
        let filler = "x".repeat(MAX_USER_BYTES - 1000 + extra);
        let user = json!({"id": "big", "title": filler});
        let bytes = serde_json::to_vec(&user).map(|b| b.len()).unwrap_or_default();
        match map_user(&user) {
            Ok(_) => prop_assert!(bytes <= MAX_USER_BYTES, "{} bytes passed", bytes),
            Err(error) => {
                prop_assert_eq!(&error, &UserError::TooLarge { id: "big".into(), bytes });
                prop_assert!(!error.to_string().contains("xxxx"), "the record was quoted");
            }
        }
    }
}
