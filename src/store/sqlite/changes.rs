//! The run history's diffs and its pruning: what each sync changed,
//! account by account, kept as long as its run is.

use jiff::Timestamp;
use rusqlite::{Connection, Transaction, params};

use crate::model::{AccountChange, ChangeKind, FieldChange, RunId};
use crate::store::codec::{corrupt, from_i64, to_i64};
use crate::store::{Retention, StoreError};

/// Appends `changes` to the run's, numbered after those recorded before.
pub(super) fn record(tx: &Transaction<'_>, run: RunId, changes: &[(String, &AccountChange)]) -> Result<(), StoreError> {
    let last: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM run_changes WHERE run_id = ?1")?
        .query_row([run], |r| r.get(0))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO run_changes (run_id, seq, account_id, kind, fields) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (offset, (fields, change)) in changes.iter().enumerate() {
        let seq = last.saturating_add(to_i64("change number", offset as u64 + 1)?);
        insert.execute(params![run, seq, change.account_id, change.kind.as_str(), fields])?;
    }
    Ok(())
}

/// The fields of each change as stored (JSON), computed before the write
/// lock is taken.
pub(super) fn encode(changes: &[AccountChange]) -> Result<Vec<(String, &AccountChange)>, StoreError> {
    changes
        .iter()
        .map(|c| Ok((serde_json::to_string(&c.fields).map_err(|e| StoreError::Internal(e.to_string()))?, c)))
        .collect()
}

pub(super) fn list(
    db: &Connection,
    run: RunId,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, AccountChange)>, StoreError> {
    let mut stmt = db.prepare_cached(
        "SELECT seq, account_id, kind, fields FROM run_changes WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![run, to_i64("change number", after)?, limit], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
    })?;
    let mut changes = Vec::new();
    for row in rows {
        let (seq, account_id, kind, fields) = row?;
        let kind = ChangeKind::parse(&kind).ok_or_else(|| corrupt("change kind", &kind))?;
        let fields: Vec<FieldChange> = serde_json::from_str(&fields).map_err(|e| corrupt("change fields", e))?;
        changes.push((from_i64(seq)?, AccountChange { account_id, kind, fields }));
    }
    Ok(changes)
}

pub(super) fn drop_for_run(tx: &Transaction<'_>, run: RunId) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM run_changes WHERE run_id = ?1")?.execute([run])?;
    Ok(())
}

/// Removes the connection's finished runs beyond `retention` at `now`, and
/// their changes. Unfinished runs stay whatever their age.
pub(super) fn prune(tx: &Transaction<'_>, conn: i64, retention: &Retention, now: Timestamp) -> Result<u64, StoreError> {
    let cutoff = now.checked_sub(retention.max_age).unwrap_or(Timestamp::MIN).to_string();
    let keep = to_i64("retained runs", retention.max_runs)?;
    // julianday compares the RFC 3339 texts as instants: as text, a time
    // with fractional seconds would sort before the whole second it follows.
    const DOOMED: &str = "SELECT run_id FROM runs WHERE conn = ?1 AND finished_at IS NOT NULL \
         AND (julianday(finished_at) < julianday(?2) \
              OR run_id NOT IN (SELECT run_id FROM runs WHERE conn = ?1 ORDER BY run_id DESC LIMIT ?3))";
    tx.prepare_cached(&format!("DELETE FROM run_changes WHERE run_id IN ({DOOMED})"))?
        .execute(params![conn, cutoff, keep])?;
    let removed = tx
        .prepare_cached(&format!("DELETE FROM runs WHERE run_id IN ({DOOMED})"))?
        .execute(params![conn, cutoff, keep])?;
    Ok(removed as u64)
}

/// Removes the profile's processing runs beyond `retention` at `now`.
pub(super) fn prune_processing(
    tx: &Transaction<'_>,
    profile: i64,
    retention: &Retention,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let cutoff = now.checked_sub(retention.max_age).unwrap_or(Timestamp::MIN).to_string();
    let keep = to_i64("retained runs", retention.max_runs)?;
    let removed = tx
        .prepare_cached(
            "DELETE FROM processing_runs WHERE prof = ?1 AND (julianday(finished_at) < julianday(?2) \
             OR run_id NOT IN (SELECT run_id FROM processing_runs WHERE prof = ?1 ORDER BY run_id DESC LIMIT ?3))",
        )?
        .execute(params![profile, cutoff, keep])?;
    Ok(removed as u64)
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::model::{RunOutcome, Trigger};
    use crate::store::{Retention, SqliteStore};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    #[test]
    fn the_processing_history_is_pruned_the_same_way() {
        use crate::model::{ProcessingRunRecord, ProfileRef};
        use crate::store::ProcessingHistory;

        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { max_runs: 2, max_age: SignedDuration::from_secs(1000) };
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap().with_retention(retention);
        let p = ProfileRef::new("ns", "employees");
        let record = |at: i64| ProcessingRunRecord {
            id: 0,
            trigger: Trigger::Scheduled,
            request: None,
            started_at: self::at(at),
            finished_at: self::at(at),
            outcome: RunOutcome::Succeeded,
            processed: 1,
            changed: 0,
            errors: 0,
            message: String::new(),
        };
        let ids: Vec<RunId> = (0..4).map(|i| store.record_processing_run(&p, &record(i)).unwrap()).collect();
        let kept: Vec<RunId> = store.processing_runs(&p, 10).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(kept, [ids[3], ids[2]]);
        let late = store.record_processing_run(&p, &record(5000)).unwrap();
        let kept: Vec<RunId> = store.processing_runs(&p, 10).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(kept, [late], "runs older than the age limit go");
    }
}
