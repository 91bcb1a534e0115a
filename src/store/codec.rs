//! How the store's values are encoded in rows (SQLite's and PostgreSQL's), and the errors a row
//! that cannot be decoded makes.

use jiff::Timestamp;

use crate::model::{Account, RunMode, Trigger};
use crate::store::StoreError;

pub(crate) fn decode_account(data: &str) -> Result<Account, StoreError> {
    serde_json::from_str(data).map_err(|e| corrupt("account data", e))
}

pub(crate) fn parse_time(s: &str) -> Result<Timestamp, StoreError> {
    s.parse().map_err(|e| corrupt("timestamp", e))
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

pub(crate) fn from_i64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative count {value}")))
}

pub(crate) fn parse_trigger(run: i64, s: &str) -> Result<Trigger, StoreError> {
    Trigger::parse(s).ok_or_else(|| StoreError::Corrupt(format!("run {run}: unknown trigger {s:?}")))
}

pub(crate) fn parse_mode(run: i64, s: &str) -> Result<RunMode, StoreError> {
    RunMode::parse(s).ok_or_else(|| StoreError::Corrupt(format!("run {run}: unknown mode {s:?}")))
}

/// A profile's `seen_versions` when it has seen none (the column's default).
pub(crate) const NO_VERSIONS: &str = "{}";

/// A profile's `seen_versions` column.
pub(crate) fn encode_versions(versions: &std::collections::BTreeMap<String, u64>) -> String {
    // A map of strings to integers always serializes.
    serde_json::to_string(versions).unwrap_or_else(|_| NO_VERSIONS.to_owned())
}

/// A profile's `summary` column, NULL when it has none.
pub(crate) fn encode_summary(state: &crate::store::ProfileState) -> Result<Option<String>, StoreError> {
    state
        .summary
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Internal(format!("cannot encode a profile summary: {e}")))
}

/// A correlation record's `candidates` column: a JSON array, NULL when empty.
pub(crate) fn encode_candidates(candidates: &[String]) -> Option<String> {
    // A list of strings always serializes.
    (!candidates.is_empty()).then(|| serde_json::to_string(candidates).unwrap_or_default())
}

/// The columns of a profile's state as both stores keep them, in the order
/// both read them.
pub(crate) struct StateColumns<'a> {
    pub applied_spec: Option<String>,
    pub applied_generation: Option<i64>,
    pub seen_versions: &'a str,
    pub last_scheduled: Option<&'a str>,
    pub next_time_based: Option<&'a str>,
    pub mapping_hash: Option<String>,
    pub summary: Option<&'a str>,
}

/// Decodes a profile's state from its columns.
pub(crate) fn decode_state(c: StateColumns<'_>) -> Result<crate::store::ProfileState, StoreError> {
    Ok(crate::store::ProfileState {
        applied_spec: c.applied_spec,
        applied_generation: c.applied_generation,
        seen_versions: serde_json::from_str(c.seen_versions).map_err(|e| corrupt("profile seen_versions", e))?,
        last_scheduled: c.last_scheduled.map(parse_time).transpose()?,
        next_time_based: c.next_time_based.map(parse_time).transpose()?,
        mapping_hash: c.mapping_hash,
        summary: c.summary.map(serde_json::from_str).transpose().map_err(|e| corrupt("profile summary", e))?,
    })
}
