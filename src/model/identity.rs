//! Identities as the store keeps them, and the correlation records that
//! attach accounts of other connections to them. Plain data: what a
//! processing run computes, the store writes and `idsync identities` prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One identity of one profile, as the store keeps it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The id of the authoritative account that made it (e.g. the HR
    /// employee id): stable for as long as that account exists.
    pub id: String,
    /// Computed attributes; an attribute whose expression yielded null is
    /// absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<String>,
    /// The value of the profile's manager attribute, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_ref: Option<String>,
    /// The manager's identity id, when `manager_ref` names exactly one
    /// other identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// `manager_ref` names this identity itself: the top of its hierarchy,
    /// which has no manager and is not an unresolved one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub top_of_hierarchy: bool,
    /// The authoritative account first, then correlated accounts ordered by
    /// connection and account id.
    pub accounts: Vec<AccountLink>,
    /// Expressions that failed on this identity, by attribute name (or
    /// `lifecycle`); their previous values are kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
    /// Hex SHA-256 of what the identity was computed from (mappings and
    /// the content hashes of its accounts).
    pub input_hash: String,
    pub created: jiff::Timestamp,
    /// When its attributes, state, manager, accounts or errors last changed.
    pub modified: jiff::Timestamp,
    /// When it is processed next because of the next-processing attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_processing: Option<jiff::Timestamp>,
    /// The next-processing attribute's value as last seen, so a value seen
    /// for the first time can be told from one seen before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_processing_value: Option<String>,
    /// The identity attributes correlation compares, computed from the
    /// authoritative account alone; kept so that a run need not compute
    /// them again for accounts that did not change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub correlation_keys: BTreeMap<String, String>,
    /// Hex SHA-256 of the mappings and the authoritative account that
    /// `correlation_keys` were computed from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keys_hash: String,
    /// The earliest instant at which an expression that compares with
    /// `now` (a lifecycle from a termination date) could compute something
    /// else with the same accounts; runs over everyone evaluate it again
    /// from then on, and skip it before (see `identity::expr::time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_changes_at: Option<jiff::Timestamp>,
}

impl Identity {
    /// The identity the authoritative account `id` of `connection` makes,
    /// created at `at`, with nothing computed yet.
    pub fn new(id: impl Into<String>, connection: impl Into<String>, at: jiff::Timestamp) -> Identity {
        let id = id.into();
        Identity {
            accounts: vec![AccountLink { connection: connection.into(), account_id: id.clone() }],
            id,
            attributes: BTreeMap::new(),
            lifecycle_state: None,
            manager_ref: None,
            manager: None,
            top_of_hierarchy: false,
            errors: BTreeMap::new(),
            input_hash: String::new(),
            created: at,
            modified: at,
            next_processing: None,
            next_processing_value: None,
            correlation_keys: BTreeMap::new(),
            keys_hash: String::new(),
            time_changes_at: None,
        }
    }

    /// With attribute `name` set to `value`.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// With every attribute of a JSON object (anything else sets none).
    pub fn with_attributes(mut self, attributes: Value) -> Self {
        if let Value::Object(map) = attributes {
            self.attributes.extend(map);
        }
        self
    }

    /// In lifecycle state `state`.
    pub fn with_state(mut self, state: impl Into<String>) -> Self {
        self.lifecycle_state = Some(state.into());
        self
    }

    /// With the account `account_id` of `connection` correlated to it.
    pub fn with_account(mut self, connection: impl Into<String>, account_id: impl Into<String>) -> Self {
        self.accounts.push(AccountLink { connection: connection.into(), account_id: account_id.into() });
        self
    }

    /// Last changed at `at`.
    pub fn modified_at(mut self, at: jiff::Timestamp) -> Self {
        self.modified = at;
        self
    }
}

/// A profile's numbers after a processing run, as its status shows them.
/// The store keeps the last run's with the profile's state, so that a run
/// over a few changed identities can carry them forward by difference
/// instead of counting every identity again.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySummary {
    pub identities: u64,
    pub lifecycle_states: BTreeMap<String, u64>,
    pub uncorrelated_accounts: u64,
    pub ambiguous_accounts: u64,
    pub unresolved_managers: u64,
    pub identities_with_errors: u64,
}

/// An account attached to an identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct AccountLink {
    pub connection: String,
    pub account_id: String,
}

/// What correlation made of one account of a correlated connection.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Attached to exactly one identity.
    Correlated,
    /// No rule matched any identity.
    Uncorrelated,
    /// A rule matched several identities: reported, not resolved.
    Ambiguous,
}

named!(LinkState { Correlated, Uncorrelated, Ambiguous });

/// The correlation of one account of a correlated connection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LinkRecord {
    pub connection: String,
    pub account_id: String,
    pub state: LinkState,
    /// The identity it is attached to (Correlated only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The identities that all matched (Ambiguous only), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
}
