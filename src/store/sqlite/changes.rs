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
    use serde_json::json;

    use crate::model::{Account, ConnectionRef, Counts, NewRun, RunFinish};
    use crate::store::{AccountStore, CursorUpdate, Retention, SqliteStore, StagedChange};

    use super::*;
    use crate::model::RunOutcome;
    use crate::model::{RunMode, Trigger};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn change(id: &str, kind: ChangeKind) -> AccountChange {
        let field = FieldChange { field: "email".into(), before: None, after: Some(json!(format!("{id}@x"))) };
        AccountChange { account_id: id.into(), kind, fields: vec![field] }
    }

    /// A run of `c` started at `start`, with two recorded changes, ended
    /// with `outcome` at `start + 1`.
    fn run(store: &SqliteStore, c: &ConnectionRef, start: i64, outcome: RunOutcome) -> RunId {
        let new = NewRun {
            connection: c.clone(),
            trigger: Trigger::Scheduled,
            request: None,
            requested_mode: RunMode::Full,
            holder: "h".into(),
            started_at: at(start),
        };
        let run = store.start_run(&new).unwrap();
        let staged = [StagedChange::Upsert(Account::new(format!("a{start}")))];
        store.stage_recorded(run, &staged, &[change("a", ChangeKind::Created)]).unwrap();
        store.stage_recorded(run, &[], &[change("b", ChangeKind::Updated), change("c", ChangeKind::Deleted)]).unwrap();
        let finish = RunFinish {
            outcome,
            mode: Some(RunMode::Full),
            counts: Counts::default(),
            message: String::new(),
            finished_at: at(start + 1),
        };
        match outcome {
            RunOutcome::Succeeded => store.commit_run(run, CursorUpdate::Keep, &finish).unwrap(),
            _ => store.abandon_run(run, &finish).unwrap(),
        }
        run
    }

    #[test]
    fn changes_are_kept_in_order_with_runs_that_show_them_and_dropped_with_failures() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let c = ConnectionRef::new("ns", "hr");
        for outcome in [RunOutcome::Succeeded, RunOutcome::DryRun, RunOutcome::SafeguardTripped] {
            let id = run(&store, &c, 0, outcome);
            let changes = store.run_changes(id, 0, 100).unwrap();
            let seen: Vec<(u64, &str, ChangeKind)> =
                changes.iter().map(|(n, c)| (*n, c.account_id.as_str(), c.kind)).collect();
            assert_eq!(
                seen,
                [(1, "a", ChangeKind::Created), (2, "b", ChangeKind::Updated), (3, "c", ChangeKind::Deleted)],
                "{outcome}"
            );
            assert_eq!(changes[0].1, change("a", ChangeKind::Created), "fields round-trip");
            // Paging by sequence number.
            let rest: Vec<u64> = store.run_changes(id, 1, 1).unwrap().into_iter().map(|(n, _)| n).collect();
            assert_eq!(rest, [2]);
        }
        for outcome in [RunOutcome::Failed, RunOutcome::Cancelled] {
            let id = run(&store, &c, 0, outcome);
            assert!(store.run_changes(id, 0, 100).unwrap().is_empty(), "{outcome} changed nothing");
        }
    }

    #[test]
    fn the_history_keeps_the_newest_runs_and_none_too_old() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { max_runs: 3, max_age: SignedDuration::from_secs(100) };
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap().with_retention(retention);
        let (hr, idp) = (ConnectionRef::new("ns", "hr"), ConnectionRef::new("ns", "idp"));
        let other = run(&store, &idp, 0, RunOutcome::Succeeded);
        let ids: Vec<RunId> = (0..5).map(|i| run(&store, &hr, i * 10, RunOutcome::Succeeded)).collect();
        let kept: Vec<RunId> = store.runs(&hr, 100).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(kept, [ids[4], ids[3], ids[2]], "the newest three");
        assert!(store.run_changes(ids[0], 0, 10).unwrap().is_empty(), "a pruned run's changes go with it");
        assert_eq!(store.run_changes(ids[4], 0, 10).unwrap().len(), 3);
        assert_eq!(store.runs(&idp, 10).unwrap().len(), 1, "other connections keep theirs");

        // A run finishing 200 s later: everything older than 100 s goes.
        let late = run(&store, &hr, 240, RunOutcome::Failed);
        let kept: Vec<RunId> = store.runs(&hr, 100).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(kept, [late]);
        assert_eq!(store.run(other).unwrap().map(|r| r.id), Some(other));
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
