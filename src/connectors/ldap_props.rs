//! The generated bad-input corpus of LDAP decoding: user entries whose
//! attributes hold anything (text, bytes, none, many), and the values the
//! provider parses itself: DNs, userAccountControl, change stamps, cursors
//! and the BER of the content synchronisation controls. A bounded number of
//! cases per property.
//!
//! What must hold whatever the directory sends: nothing panics; an entry is
//! an account or is refused naming its DN, and only the documented values
//! (its DN, a userAccountControl that is not a number) are quoted.

use std::collections::HashMap;

use ldap3::SearchEntry;
use proptest::prelude::*;

use super::{
    Entry, EntryError, LdapConnector, StampKind, decode_cursor, encode_cursor, first_rdn_value, guid_string,
    parse_sync_done, parse_sync_info, parse_sync_state, to_account, uac_enabled, uuid_string,
};
use crate::connectors::ProviderInputs;
use idsync_api::connection::{ConnectionSpec, LdapSettings};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_shrink_iters: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// Text that sits in attributes no error may quote.
const MARKER: &str = "s3cr3t-MARK";

/// A connector of `flavour` with `department` kept as an extra attribute.
fn connector(flavour: &str) -> LdapConnector {
    let spec: ConnectionSpec = serde_json::from_value(serde_json::json!({
        "provider": {"type": "ldap", "ldap": {
            "url": "ldaps://ldap.example.com", "baseDn": "dc=x", "flavour": flavour,
            "attributes": {"extra": ["department", "proxyAddresses"]},
        }},
        "category": "IdP",
    }))
    .expect("a spec");
    let idsync_api::Provider::Ldap(settings) = spec.provider.clone() else { unreachable!("an ldap spec") };
    let settings: LdapSettings = settings;
    LdapConnector::new(&spec, &settings, &ProviderInputs::default()).expect("a connector")
}

/// An attribute name as a directory may spell it.
fn attribute_name() -> impl Strategy<Value = String> {
    let names = vec![
        "entryUUID",
        "uid",
        "mail",
        "cn",
        "objectGUID",
        "sAMAccountName",
        "displayName",
        "userAccountControl",
        "memberOf",
        "department",
        "proxyAddresses",
    ];
    (prop::sample::select(names), any::<bool>())
        .prop_map(|(name, upper)| if upper { name.to_uppercase() } else { name.to_string() })
}

/// A text value: empty, blank, DN-like with escapes, a number, or anything.
fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("  ".to_string()),
        Just(MARKER.to_string()),
        "[a-zA-Z]{1,3}=[a-zA-Z\\\\,+;= 0-9]{0,12}(,[a-z]{1,3}=[a-z]{0,5}){0,3}",
        "-?[0-9]{1,12}",
        ".{0,16}",
    ]
}

fn entry() -> impl Strategy<Value = SearchEntry> {
    let text = prop::collection::hash_map(attribute_name(), prop::collection::vec(text_value(), 0..4), 0..8);
    let bytes = prop::collection::hash_map(
        attribute_name(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 0..3),
        0..3,
    );
    (".{0,24}", text, bytes).prop_map(|(dn, attrs, bin_attrs)| SearchEntry { dn, attrs, bin_attrs })
}

/// Does the entry hold `name` (any case) with a value that is not blank?
fn has_value(entry: &SearchEntry, name: &str) -> bool {
    let text = entry.attrs.iter().any(|(k, v)| k.eq_ignore_ascii_case(name) && v.iter().any(|v| !v.trim().is_empty()));
    let binary = entry.bin_attrs.iter().any(|(k, v)| k.eq_ignore_ascii_case(name) && v.iter().any(|v| !v.is_empty()));
    text || binary
}

proptest! {
    #![proptest_config(config(512))]

    /// An entry of any shape is an account or is refused by its DN, in
    /// either flavour, with or without a group search's memberships; no
    /// attribute but the documented ones reaches the message.
    #[test]
    fn an_entry_of_any_shape_maps_or_is_refused_by_its_dn(
        entry in entry(),
        active_directory in any::<bool>(),
        with_groups in any::<bool>(),
    ) {
        let connector = connector(if active_directory { "activedirectory" } else { "openldap" });
        let groups: HashMap<String, Vec<String>> =
            HashMap::from([(entry.dn.to_lowercase(), vec!["g".to_string()])]);
        let decoded: Entry = entry.clone().into();
        let result = to_account(&connector.settings, &decoded, with_groups.then_some(&groups));
        let id_attribute = if active_directory { "objectGUID" } else { "entryUUID" };
        match result {
            Ok(account) => {
                prop_assert!(!account.id.trim().is_empty());
                prop_assert!(has_value(&entry, id_attribute), "an id from nowhere: {:?}", account.id);
                if active_directory {
                    prop_assert!(uuid::Uuid::parse_str(&account.id).is_ok(), "{:?}", account.id);
                }
                prop_assert_eq!(account.attributes.get("dn"), Some(&serde_json::Value::from(entry.dn.clone())));
            }
            Err(error) => {
                prop_assert_eq!(error.dn(), entry.dn.as_str());
                let message = error.to_string();
                prop_assert!(message.contains(&format!("{:?}", entry.dn)), "{}", message);
                let quotes_value = matches!(&error, EntryError::BadUserAccountControl { value, .. } if value.contains(MARKER));
                if !entry.dn.contains(MARKER) && !quotes_value {
                    prop_assert!(!message.contains(MARKER), "an attribute reached the error: {}", message);
                }
                if matches!(error, EntryError::NoId { .. }) && !active_directory {
                    prop_assert!(!has_value(&entry, id_attribute), "{}", message);
                }
            }
        }
    }

    /// The values the provider parses itself never panic, and say what
    /// they mean.
    #[test]
    fn ldap_values_of_any_shape_never_panic(text in ".{0,40}", dn in text_value(), bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        for value in [&text, &dn] {
            if let Some(rdn) = first_rdn_value(value) {
                prop_assert!(!rdn.is_empty() && rdn.trim() == rdn, "{:?} → {:?}", value, rdn);
            }
            let _ = uac_enabled(value);
            for kind in [StampKind::ModifyTimestamp, StampKind::UsnChanged] {
                if let Some(stamp) = kind.parse_value(value) {
                    prop_assert_eq!(stamp.kind(), kind);
                    prop_assert_eq!(kind.parse_cursor(&stamp.cursor()), Some(stamp));
                }
                let _ = kind.parse_cursor(value);
            }
            let _ = decode_cursor(value);
        }
        prop_assert_eq!(guid_string(&bytes).is_some(), bytes.len() == 16);
        prop_assert_eq!(uuid_string(&bytes).is_some(), bytes.len() == 16);
        if !bytes.is_empty() {
            prop_assert_eq!(decode_cursor(&encode_cursor(&bytes)), Some(bytes.clone()));
        }
    }

    /// A search result entry of any BER shape (a broken or hostile server)
    /// decodes or is refused: never a panic, where ldap3's own
    /// `SearchEntry::construct` would panic.
    #[test]
    fn search_result_entries_of_any_ber_never_panic(
        tag in prop::sample::select(vec![0x64u8, 0x30, 0x04, 0x31, 0x65]),
        length in prop_oneof![0u8..0x80, 0x80u8..0x84],
        rest in prop::collection::vec(prop_oneof![Just(0x04u8), Just(0x30), Just(0x31), Just(0x64), any::<u8>()], 0..64),
    ) {
        let mut value = vec![tag, length];
        value.extend_from_slice(&rest);
        if let Ok((_, tag)) = ldap3::asn1::parse_tag(&value) {
            match Entry::decode(ldap3::ResultEntry::new(tag)) {
                Ok(entry) => prop_assert!(entry.attrs.iter().all(|(name, _)| entry.get(name).is_some())),
                Err(e) => prop_assert!(e.to_string().starts_with("malformed search result entry")),
            }
        }
    }

    /// userAccountControl as Active Directory writes it, high bit and all.
    #[test]
    fn user_account_control_reads_bit_2_of_any_number(flags in any::<u32>()) {
        prop_assert_eq!(uac_enabled(&flags.to_string()), Some(flags & 2 == 0));
        prop_assert_eq!(uac_enabled(&format!(" {} ", flags as i32)), Some(flags & 2 == 0));
    }

    /// The BER of the content synchronisation controls, from a server or a
    /// man in the middle: parsed or refused, never a panic.
    #[test]
    fn sync_control_values_of_any_bytes_never_panic(
        tag in prop::sample::select(vec![0x30u8, 0x31, 0x04, 0x0a, 0x01, 0x80, 0xa0, 0xa1, 0xa2, 0xa3, 0xff]),
        length in prop_oneof![0u8..0x80, 0x80u8..0x86, Just(0xffu8)],
        rest in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        let mut value = vec![tag, length];
        value.extend_from_slice(&rest);
        for bytes in [&value[..], &rest[..]] {
            let _ = parse_sync_state(bytes);
            let _ = parse_sync_done(bytes);
            let _ = parse_sync_info(bytes);
        }
    }
}
