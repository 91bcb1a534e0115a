//! [`ProcessingHistory`] for [`PgStore`]: the processing runs of each
//! profile, pruned to the store's [`Retention`] as runs are recorded.

use ::postgres::{Row, Transaction};

use super::PgStore;
use super::profiles::{ensure_profile_key, profile_key};
use crate::model::{ProcessingRunRecord, ProfileRef, RunId, RunOutcome};
use crate::store::codec::{from_i64, parse_time, parse_trigger, to_i64};
use crate::store::{ProcessingHistory, Retention, StoreError};

/// Records the run in the profile's history, then prunes the history to
/// `retention` as the SQLite store does; `tx` is the caller's (a commit's, or the run's own).
pub(super) fn insert_run(
    tx: &mut Transaction<'_>,
    key: i64,
    run: &ProcessingRunRecord,
    retention: &Retention,
) -> Result<RunId, StoreError> {
    let row = tx.query_one(
        "INSERT INTO processing_runs (prof, trigger_kind, request, started_at, finished_at, outcome, processed, \
         changed, errors, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING run_id",
        &[
            &key,
            &run.trigger.as_str(),
            &run.request,
            &run.started_at.to_string(),
            &run.finished_at.to_string(),
            &run.outcome.as_str(),
            &to_i64("processed count", run.processed)?,
            &to_i64("changed count", run.changed)?,
            &to_i64("errors count", run.errors)?,
            &run.message,
        ],
    )?;
    let id: RunId = row.try_get(0)?;
    super::changes::prune_processing(tx, key, retention, run.finished_at)?;
    Ok(id)
}

pub(super) fn runs(
    tx: &mut Transaction<'_>,
    p: &ProfileRef,
    limit: usize,
) -> Result<Vec<ProcessingRunRecord>, StoreError> {
    let Some(key) = profile_key(tx, p)? else { return Ok(Vec::new()) };
    // Past i64::MAX is "all" anyway.
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = tx.query(
        "SELECT run_id, trigger_kind, request, started_at, finished_at, outcome, processed, changed, errors, message \
         FROM processing_runs WHERE prof = $1 ORDER BY run_id DESC LIMIT $2",
        &[&key, &limit],
    )?;
    rows.iter().map(run_from_row).collect()
}

fn run_from_row(row: &Row) -> Result<ProcessingRunRecord, StoreError> {
    let id: RunId = row.try_get(0)?;
    let outcome: &str = row.try_get(5)?;
    Ok(ProcessingRunRecord {
        id,
        trigger: parse_trigger(id, row.try_get(1)?)?,
        request: row.try_get(2)?,
        started_at: parse_time(row.try_get(3)?)?,
        finished_at: parse_time(row.try_get(4)?)?,
        outcome: RunOutcome::parse(outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("processing run {id}: unknown outcome {outcome:?}")))?,
        processed: from_i64(row.try_get(6)?)?,
        changed: from_i64(row.try_get(7)?)?,
        errors: from_i64(row.try_get(8)?)?,
        message: row.try_get(9)?,
    })
}

impl ProcessingHistory for PgStore {
    fn record_processing_run(&self, p: &ProfileRef, run: &ProcessingRunRecord) -> Result<RunId, StoreError> {
        let retention = self.retention();
        self.write(|tx| {
            let key = ensure_profile_key(tx, p)?;
            insert_run(tx, key, run, &retention)
        })
    }

    fn processing_runs(&self, p: &ProfileRef, limit: usize) -> Result<Vec<ProcessingRunRecord>, StoreError> {
        self.read(|tx| runs(tx, p, limit))
    }
}
