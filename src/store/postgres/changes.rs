//! The run history's diffs and its pruning in PostgreSQL: what each sync
//! changed, account by account, kept as long as its run is
//! (`store::sqlite::changes` is the same for SQLite).

use ::postgres::{GenericClient, Transaction};
use jiff::Timestamp;

use crate::model::{AccountChange, ChangeKind, FieldChange, RunId};
use crate::store::codec::{corrupt, from_i64, to_i64};
use crate::store::{Retention, StoreError};

/// The fields of each change as stored (JSON), computed before the
/// transaction starts.
pub(super) fn encode(changes: &[AccountChange]) -> Result<Vec<(String, &AccountChange)>, StoreError> {
    changes
        .iter()
        .map(|c| Ok((serde_json::to_string(&c.fields).map_err(|e| StoreError::Internal(e.to_string()))?, c)))
        .collect()
}

/// Appends `changes` to the run's, numbered after those recorded before, in
/// one statement. The caller holds the run's row lock, so nobody else
/// numbers changes of this run meanwhile.
pub(super) fn record(
    tx: &mut Transaction<'_>,
    run: RunId,
    changes: &[(String, &AccountChange)],
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = changes.iter().map(|(_, c)| c.account_id.as_str()).collect();
    let kinds: Vec<&str> = changes.iter().map(|(_, c)| c.kind.as_str()).collect();
    let fields: Vec<&str> = changes.iter().map(|(f, _)| f.as_str()).collect();
    tx.execute(
        "INSERT INTO run_changes (run_id, seq, account_id, kind, fields) \
         SELECT $1, (SELECT COALESCE(MAX(seq), 0) FROM run_changes WHERE run_id = $1) + t.n, t.id, t.kind, t.fields \
         FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS t(id, kind, fields, n)",
        &[&run, &ids, &kinds, &fields],
    )?;
    Ok(())
}

pub(super) fn list(
    db: &mut impl GenericClient,
    run: RunId,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, AccountChange)>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db.query(
        "SELECT seq, account_id, kind, fields FROM run_changes WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &[&run, &to_i64("change number", after)?, &limit],
    )?;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let (seq, account_id, kind, fields): (i64, String, &str, &str) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let kind = ChangeKind::parse(kind).ok_or_else(|| corrupt("change kind", kind))?;
        let fields: Vec<FieldChange> = serde_json::from_str(fields).map_err(|e| corrupt("change fields", e))?;
        changes.push((from_i64(seq)?, AccountChange { account_id, kind, fields }));
    }
    Ok(changes)
}

pub(super) fn drop_for_runs(tx: &mut Transaction<'_>, runs: &[RunId]) -> Result<(), StoreError> {
    tx.execute("DELETE FROM run_changes WHERE run_id = ANY($1)", &[&runs])?;
    Ok(())
}

/// The age cutoff as PostgreSQL text, None when it is before anything
/// PostgreSQL's `timestamptz` can hold (nothing is that old).
fn cutoff(retention: &Retention, now: Timestamp) -> Option<String> {
    let cutoff = now.checked_sub(retention.max_age).ok()?;
    // timestamptz starts at 4713 BC; jiff's own minimum is year -9999.
    (cutoff.as_second() > -62_135_596_800).then(|| cutoff.to_string())
}

/// Removes the connection's finished runs beyond `retention` at `now`, and
/// their changes, in one statement. Unfinished runs stay whatever their age.
pub(super) fn prune(
    tx: &mut Transaction<'_>,
    conn: i64,
    retention: &Retention,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let keep = to_i64("retained runs", retention.max_runs)?;
    // Times are RFC 3339 texts: compared as instants (as text, a time with
    // fractional seconds would sort before the whole second it follows).
    let row = tx.query_one(
        "WITH doomed AS ( \
             SELECT run_id FROM runs WHERE conn = $1 AND finished_at IS NOT NULL \
             AND (finished_at::timestamptz < $2::text::timestamptz \
                  OR run_id NOT IN (SELECT run_id FROM runs WHERE conn = $1 ORDER BY run_id DESC LIMIT $3))), \
         gone_changes AS (DELETE FROM run_changes WHERE run_id IN (SELECT run_id FROM doomed)), \
         gone AS (DELETE FROM runs WHERE run_id IN (SELECT run_id FROM doomed) RETURNING 1) \
         SELECT count(*) FROM gone",
        &[&conn, &cutoff(retention, now), &keep],
    )?;
    from_i64(row.try_get(0)?)
}

/// Removes the profile's processing runs beyond `retention` at `now` (for
/// the identity side of the store, which records processing runs).
pub(super) fn prune_processing(
    tx: &mut Transaction<'_>,
    profile: i64,
    retention: &Retention,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let keep = to_i64("retained runs", retention.max_runs)?;
    let removed = tx.execute(
        "DELETE FROM processing_runs WHERE prof = $1 AND (finished_at::timestamptz < $2::text::timestamptz \
         OR run_id NOT IN (SELECT run_id FROM processing_runs WHERE prof = $1 ORDER BY run_id DESC LIMIT $3))",
        &[&profile, &cutoff(retention, now), &keep],
    )?;
    Ok(removed)
}
