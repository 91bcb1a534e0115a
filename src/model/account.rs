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
    pub fn content_hash(&self) -> ContentHash {
        ContentHash::of(self.canonical_json().as_bytes())
    }
}

/// SHA-256 of an account's canonical JSON.
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
}
