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
