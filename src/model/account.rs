//! Accounts: what a connected system knows about one user, as idsync keeps
//! it. Plain data, no Kubernetes types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One account of one connection, matched across syncs by its immutable id
/// (employee id, entryUUID, objectGUID, Okta user id…), so a rename or a new
/// e-mail domain is an update of the same account.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub enabled: bool,
    /// Group names, sorted and without duplicates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Everything else the source says, by attribute name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Value>,
}

impl Account {
    pub fn new(id: impl Into<String>) -> Self {
        Account {
            id: id.into(),
            username: None,
            email: None,
            display_name: None,
            enabled: true,
            groups: Vec::new(),
            attributes: BTreeMap::new(),
        }
    }

    /// Sorts and de-duplicates groups, so equal accounts hash equally.
    pub fn normalize(&mut self) {
        self.groups.sort();
        self.groups.dedup();
    }

    /// The stable serialization stored and hashed.
    pub fn canonical_json(&self) -> String {
        // Field order is fixed by the struct and BTreeMap orders attributes;
        // serde_json of this type cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A content hash: two accounts with the same hash are unchanged.
    ///
    /// Hashed straight from the fields (version [`HASH_VERSION`]), not from
    /// the JSON: a sync hashes every account it reads, and most are
    /// unchanged, so it never needs their JSON at all. Every field is
    /// length-prefixed and every optional one tagged, so no two different
    /// accounts feed the hash the same bytes.
    pub fn content_hash(&self) -> ContentHash {
        let mut h = Sha256::new();
        h.update(HASH_DOMAIN);
        put_str(&mut h, &self.id);
        for field in [&self.username, &self.email, &self.display_name] {
            match field {
                Some(value) => {
                    h.update([1]);
                    put_str(&mut h, value);
                }
                None => h.update([0]),
            }
        }
        h.update([u8::from(self.enabled)]);
        put_len(&mut h, self.groups.len());
        for group in &self.groups {
            put_str(&mut h, group);
        }
        put_len(&mut h, self.attributes.len());
        for (name, value) in &self.attributes {
            put_str(&mut h, name);
            put_value(&mut h, value);
        }
        ContentHash(h.finalize().into())
    }

    /// The hash the first version of idsync stored: SHA-256 of the
    /// canonical JSON. A stored hash that is not [`Account::content_hash`]
    /// may be this one, written before the upgrade; the sync compares it
    /// before calling the account changed, so an upgrade does not make every
    /// account look changed.
    pub fn content_hash_v1(&self) -> ContentHash {
        ContentHash::of(self.canonical_json().as_bytes())
    }
}

/// The version of [`Account::content_hash`]: the first bytes it hashes, so
/// that a later version can never produce an earlier one's hash for other
/// content. Version 1 was SHA-256 of the canonical JSON.
pub const HASH_VERSION: u8 = 2;
const HASH_DOMAIN: &[u8] = b"idsync account v2\0";

fn put_len(h: &mut Sha256, len: usize) {
    h.update((len as u64).to_le_bytes());
}

fn put_str(h: &mut Sha256, s: &str) {
    put_len(h, s.len());
    h.update(s.as_bytes());
}

/// A JSON value with a tag per type; object members in key order, so the
/// hash does not depend on how the source ordered them.
fn put_value(h: &mut Sha256, value: &Value) {
    match value {
        Value::Null => h.update([0]),
        Value::Bool(b) => h.update([1, u8::from(*b)]),
        Value::Number(n) => {
            h.update([2]);
            // serde_json prints a number the same way every time.
            put_str(h, &n.to_string());
        }
        Value::String(s) => {
            h.update([3]);
            put_str(h, s);
        }
        Value::Array(items) => {
            h.update([4]);
            put_len(h, items.len());
            for item in items {
                put_value(h, item);
            }
        }
        Value::Object(members) => {
            h.update([5]);
            put_len(h, members.len());
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (name, item) in sorted {
                put_str(h, name);
                put_value(h, item);
            }
        }
    }
}

/// SHA-256 of an account's content ([`Account::content_hash`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(Sha256::digest(bytes).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(ContentHash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_hashes_equally_whatever_the_group_order() {
        let mut a = Account::new("E1");
        a.groups = vec!["b".into(), "a".into(), "a".into()];
        a.normalize();
        let mut b = Account::new("E1");
        b.groups = vec!["a".into(), "b".into()];
        assert_eq!(a.content_hash(), b.content_hash());
        b.email = Some("x@example.com".into());
        assert_ne!(a.content_hash(), b.content_hash());
    }

    /// Accounts that differ in one place each, including places where a
    /// hash without lengths and tags would run fields together.
    fn variants() -> Vec<Account> {
        let base = Account::new("E1");
        let mut all = vec![base.clone()];
        let mut push = |f: &dyn Fn(&mut Account)| {
            let mut a = base.clone();
            f(&mut a);
            all.push(a);
        };
        push(&|a| a.id = "E10".into());
        push(&|a| a.username = Some(String::new()));
        push(&|a| a.email = Some(String::new()));
        push(&|a| a.display_name = Some(String::new()));
        push(&|a| a.username = Some("ab".into()));
        push(&|a| {
            a.username = Some("a".into());
            a.email = Some("b".into());
        });
        push(&|a| a.enabled = false);
        push(&|a| a.groups = vec!["ab".into()]);
        push(&|a| a.groups = vec!["a".into(), "b".into()]);
        push(&|a| {
            a.attributes.insert("x".into(), Value::Null);
        });
        push(&|a| {
            a.attributes.insert("x".into(), Value::String("1".into()));
        });
        push(&|a| {
            a.attributes.insert("x".into(), serde_json::json!(1));
        });
        push(&|a| {
            a.attributes.insert("x".into(), serde_json::json!(1.5));
        });
        push(&|a| {
            a.attributes.insert("x".into(), serde_json::json!(true));
        });
        push(&|a| {
            a.attributes.insert("x".into(), serde_json::json!(["1"]));
        });
        push(&|a| {
            a.attributes.insert("x".into(), serde_json::json!({"1": null}));
        });
        all
    }

    #[test]
    fn every_difference_changes_the_hash() {
        let hashes: Vec<ContentHash> = variants().iter().map(Account::content_hash).collect();
        let distinct: std::collections::BTreeSet<&ContentHash> = hashes.iter().collect();
        assert_eq!(distinct.len(), hashes.len(), "two different accounts hashed equally");
    }

    #[test]
    fn the_hash_is_stable_across_releases() {
        // A stored hash must stay valid: changing what content_hash feeds
        // SHA-256 needs a new HASH_VERSION and the upgrade path in the diff.
        let mut a = Account::new("E1");
        a.email = Some("ada@example.com".into());
        a.groups = vec!["eng".into()];
        a.attributes.insert("dept".into(), serde_json::json!({"b": 2, "a": [1, "x", null]}));
        let hex: String = a.content_hash().0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, STABLE_V2);
        // Version 1, what stores written before the upgrade hold.
        assert_eq!(a.content_hash_v1(), ContentHash::of(a.canonical_json().as_bytes()));
        assert_ne!(a.content_hash_v1(), a.content_hash());
    }

    const STABLE_V2: &str = "265b6976fafcc413698045e9733a0031a394a63abffc307e7f74ce51178ea8e7";
}
