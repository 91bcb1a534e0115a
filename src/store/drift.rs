//! What the store keeps of access drift (`crate::identity::drift`) and of
//! the identity safeguard (`crate::identity::safeguard`): the open cases
//! with the time they were first seen, and a processing run held back.
//! Its own role, [`DriftStore`], so the identity store's interface stays
//! about identities.

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::{Account, Identity, ProfileRef};

/// The three kinds of drift.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftKind {
    /// An identity in an offboarded state holds an enabled account.
    OffboardedWithAccess,
    /// An enabled account of a correlated connection belongs to nobody.
    OrphanAccount,
    /// An identity has no account in a connection it must have one in.
    MissingExpectedAccount,
}

impl DriftKind {
    pub const ALL: [DriftKind; 3] =
        [DriftKind::OffboardedWithAccess, DriftKind::OrphanAccount, DriftKind::MissingExpectedAccount];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::OffboardedWithAccess => "OffboardedWithAccess",
            DriftKind::OrphanAccount => "OrphanAccount",
            DriftKind::MissingExpectedAccount => "MissingExpectedAccount",
        }
    }

    pub fn parse(s: &str) -> Option<DriftKind> {
        DriftKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for DriftKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One case of drift; its key is (kind, identity, connection, account id).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DriftCase {
    pub kind: DriftKind,
    /// The identity ('' for an orphan account).
    pub identity: String,
    pub connection: String,
    /// The account ('' for a missing expected account).
    pub account_id: String,
    /// What a person recognises the account or identity by: a username,
    /// e-mail address or display name.
    pub label: String,
    /// When the first processing run that saw it ran.
    pub since: Timestamp,
}

impl DriftCase {
    pub fn key(&self) -> (DriftKind, &str, &str, &str) {
        (self.kind, &self.identity, &self.connection, &self.account_id)
    }
}

/// What a replacement of a profile's cases did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DriftUpdate {
    /// Every open case, `since` kept for those seen before.
    pub cases: Vec<DriftCase>,
    /// The cases no run saw before (new, or back after having gone).
    pub new: Vec<DriftCase>,
    /// How many cases went away.
    pub resolved: u64,
}

/// The profile's drift in numbers, for its status and the gauge.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DriftSummary {
    /// Offboarded identities with at least one enabled account.
    pub offboarded_with_access: u64,
    pub orphan_accounts: u64,
    pub missing_expected_accounts: u64,
    /// The oldest `since` of each kind's cases.
    pub oldest: BTreeMap<DriftKind, Timestamp>,
    /// The settings hash the cases were computed with; None before the
    /// first computation.
    pub settings_hash: Option<String>,
    /// The held-back processing run, if one is.
    pub hold: Option<RemovalHold>,
}

/// A processing run the identity safeguard held back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovalHold {
    /// What the run saw: the accounts versions and the mappings.
    pub fingerprint: String,
    pub message: String,
    pub held_at: Timestamp,
}

/// What drift is computed from, read in one read transaction.
#[derive(Clone, Debug, Default)]
pub struct DriftInputs {
    /// Identities in the offboarded states.
    pub offboarded: Vec<Identity>,
    /// The accounts of correlated connections those identities hold, by
    /// (connection, account id).
    pub held_accounts: HashMap<(String, String), Account>,
    /// Enabled accounts of correlated connections attached to no identity,
    /// with their connection.
    pub unowned: Vec<(String, Account)>,
    /// Per expected connection: identities not in an offboarded state with
    /// no account correlated there.
    pub missing: BTreeMap<String, Vec<Identity>>,
}

/// Drift cases and the identity safeguard's hold.
/// Implementations are blocking: call them from a blocking task.
pub trait DriftStore: Send + Sync + 'static {
    /// Reads what drift is computed from: `authoritative` is the profile's
    /// authoritative connection (its accounts are never access),
    /// `correlated` its correlated connections, `expected` those an
    /// identity must have an account in.
    fn drift_inputs(
        &self,
        p: &ProfileRef,
        authoritative: &str,
        correlated: &[String],
        offboarded_states: &[String],
        expected: &[String],
    ) -> Result<DriftInputs, StoreError>;
    /// In one transaction: replaces the profile's cases with `cases`
    /// (their `since` ignored), keeping `since` of those open before and
    /// setting `now` on the others, and records `settings_hash`.
    fn replace_drift(
        &self,
        p: &ProfileRef,
        cases: &[DriftCase],
        settings_hash: &str,
        now: Timestamp,
    ) -> Result<DriftUpdate, StoreError>;
    /// The profile's open cases, ordered by kind, connection, identity and
    /// account.
    fn drift_cases(&self, p: &ProfileRef) -> Result<Vec<DriftCase>, StoreError>;
    fn drift_summary(&self, p: &ProfileRef) -> Result<DriftSummary, StoreError>;
    /// The lifecycle states of those of `ids` that exist (an identity
    /// without a state maps to None).
    fn lifecycle_states(
        &self,
        p: &ProfileRef,
        ids: &HashSet<&str>,
    ) -> Result<HashMap<String, Option<String>>, StoreError>;
    fn identity_count(&self, p: &ProfileRef) -> Result<u64, StoreError>;
    /// Records a run the identity safeguard held back (replacing any).
    fn hold_removals(&self, p: &ProfileRef, hold: &RemovalHold) -> Result<(), StoreError>;
    fn release_removals(&self, p: &ProfileRef) -> Result<(), StoreError>;
}
