//! Accounts, cursors and the sync run history in SQLite: a run stages its
//! pages and `commit_run` applies them with the cursor in one transaction.

use std::collections::HashMap;
use std::time::Instant;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{SqliteStore, changes, outbox};
use crate::model::{
    Account, AccountChange, ConnectionRef, ContentHash, Counts, NewRun, RunFinish, RunId, RunOutcome, RunRecord,
};
use crate::store::codec::{corrupt, decode_account, from_i64, parse_mode, parse_time, parse_trigger, to_i64};
use crate::store::outbox::OutboxEntry;
use crate::store::{AccountStore, CursorUpdate, EncodedAccount, StagedChange, StoreError, StoredCursor};

/// `staging.op`: an upsert (hash and data set) or a delete.
const OP_UPSERT: i64 = 0;
const OP_DELETE: i64 = 1;

/// The columns [`RawRun::from_row`] reads, in its order.
const RUN_SELECT: &str = "SELECT r.run_id, c.namespace, c.name, r.trigger_kind, r.request, r.requested_mode, r.holder, \
     r.started_at, r.finished_at, r.outcome, r.mode, r.created, r.updated, r.deleted, r.unchanged, r.message \
     FROM runs r JOIN connections c ON c.conn = r.conn";

impl AccountStore for SqliteStore {
    fn account_index(&self, c: &ConnectionRef) -> Result<HashMap<String, ContentHash>, StoreError> {
        let db = self.lock()?;
        let Some(key) = connection_key(&db, c)? else { return Ok(HashMap::new()) };
        let mut stmt = db.prepare_cached("SELECT id, hash FROM accounts WHERE conn = ?1")?;
        let mut rows = stmt.query([key])?;
        let mut index = HashMap::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let hash = row
                .get_ref(1)?
                .as_blob()
                .ok()
                .and_then(ContentHash::from_slice)
                .ok_or_else(|| StoreError::Corrupt(format!("account {id:?} of {c} has no 32-byte content hash")))?;
            index.insert(id, hash);
        }
        Ok(index)
    }

    fn account_hashes(&self, c: &ConnectionRef, ids: &[String]) -> Result<HashMap<String, ContentHash>, StoreError> {
        let db = self.lock()?;
        let Some(key) = connection_key(&db, c)? else { return Ok(HashMap::new()) };
        let mut stmt = db.prepare_cached("SELECT hash FROM accounts WHERE conn = ?1 AND id = ?2")?;
        let mut hashes = HashMap::with_capacity(ids.len());
        for id in ids {
            let Some(blob) = stmt.query_row(params![key, id], |r| r.get::<_, Vec<u8>>(0)).optional()? else {
                continue;
            };
            let hash = ContentHash::from_slice(&blob)
                .ok_or_else(|| StoreError::Corrupt(format!("account {id:?} of {c} has no 32-byte content hash")))?;
            hashes.insert(id.clone(), hash);
        }
        Ok(hashes)
    }

    fn account_count(&self, c: &ConnectionRef) -> Result<u64, StoreError> {
        let db = self.lock()?;
        let Some(key) = connection_key(&db, c)? else { return Ok(0) };
        let n: i64 =
            db.prepare_cached("SELECT count(*) FROM accounts WHERE conn = ?1")?.query_row([key], |r| r.get(0))?;
        from_i64(n)
    }

    fn get_account(&self, c: &ConnectionRef, id: &str) -> Result<Option<Account>, StoreError> {
        let db = self.lock()?;
        let Some(key) = connection_key(&db, c)? else { return Ok(None) };
        let data: Option<String> = db
            .prepare_cached("SELECT data FROM accounts WHERE conn = ?1 AND id = ?2")?
            .query_row(params![key, id], |r| r.get(0))
            .optional()?;
        data.map(|d| decode_account(&d)).transpose()
    }

    fn list_accounts(&self, c: &ConnectionRef, after: Option<&str>, limit: usize) -> Result<Vec<Account>, StoreError> {
        let db = self.lock()?;
        let Some(key) = connection_key(&db, c)? else { return Ok(Vec::new()) };
        // Past i64::MAX is "all" anyway.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Two statements rather than `?2 IS NULL OR id > ?2`, which would keep
        // SQLite from seeking the (conn, id) index to the page's start.
        let mut stmt;
        let mut rows = match after {
            Some(after) => {
                stmt =
                    db.prepare_cached("SELECT data FROM accounts WHERE conn = ?1 AND id > ?2 ORDER BY id LIMIT ?3")?;
                stmt.query(params![key, after, limit])?
            }
            None => {
                stmt = db.prepare_cached("SELECT data FROM accounts WHERE conn = ?1 ORDER BY id LIMIT ?2")?;
                stmt.query(params![key, limit])?
            }
        };
        let mut accounts = Vec::new();
        while let Some(row) = rows.next()? {
            accounts.push(decode_account(row.get_ref(0)?.as_str().map_err(|e| corrupt("account data", e))?)?);
        }
        Ok(accounts)
    }

    fn cursor(&self, c: &ConnectionRef) -> Result<Option<StoredCursor>, StoreError> {
        let db = self.lock()?;
        let Some(key) = connection_key(&db, c)? else { return Ok(None) };
        let raw: Option<(String, String, String)> = db
            .prepare_cached("SELECT value, settings_hash, updated_at FROM cursors WHERE conn = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        raw.map(|(value, settings_hash, updated_at)| {
            Ok(StoredCursor { value, settings_hash, updated_at: parse_time(&updated_at)? })
        })
        .transpose()
    }

    fn start_run(&self, run: &NewRun) -> Result<RunId, StoreError> {
        self.write(|tx| {
            let key = ensure_connection_key(tx, &run.connection)?;
            tx.prepare_cached(
                "INSERT INTO runs (conn, trigger_kind, request, requested_mode, holder, started_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                key,
                run.trigger.as_str(),
                run.request,
                run.requested_mode.as_str(),
                run.holder,
                run.started_at.to_string()
            ])?;
            Ok(tx.last_insert_rowid())
        })
    }

    fn stage_recorded(
        &self,
        run: RunId,
        changes: &[StagedChange],
        recorded: &[AccountChange],
    ) -> Result<(), StoreError> {
        // Serialize and hash before taking the lock: it is the slow part of a
        // page, and other connections' runs should not wait for it.
        // (id, Some((hash, data))) is an upsert, (id, None) a delete.
        let rows: Vec<(&str, Option<(ContentHash, String)>)> = changes
            .iter()
            .map(|change| match change {
                StagedChange::Upsert(account) => {
                    (account.id.as_str(), Some((account.content_hash(), account.canonical_json())))
                }
                StagedChange::Delete(id) => (id.as_str(), None),
            })
            .collect();
        let recorded = changes::encode(recorded)?;
        self.write(|tx| {
            open_run_connection(tx, run)?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO staging (run_id, id, op, hash, data) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (run_id, id) DO UPDATE SET op = excluded.op, hash = excluded.hash, data = excluded.data",
            )?;
            for (id, upsert) in &rows {
                match upsert {
                    Some((hash, data)) => insert.execute(params![run, id, OP_UPSERT, &hash.0[..], data])?,
                    None => insert.execute(params![run, id, OP_DELETE, None::<&[u8]>, None::<&str>])?,
                };
            }
            if !recorded.is_empty() {
                changes::record(tx, run, &recorded)?;
            }
            Ok(())
        })
    }

    fn stage_encoded(&self, run: RunId, accounts: &[EncodedAccount]) -> Result<(), StoreError> {
        self.write(|tx| {
            open_run_connection(tx, run)?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO staging (run_id, id, op, hash, data) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (run_id, id) DO UPDATE SET op = excluded.op, hash = excluded.hash, data = excluded.data",
            )?;
            for a in accounts {
                insert.execute(params![run, a.id, OP_UPSERT, &a.hash.0[..], a.data])?;
            }
            Ok(())
        })
    }

    fn commit_run_writing(
        &self,
        run: RunId,
        accounts: &[EncodedAccount],
        cursor: CursorUpdate,
        finish: &RunFinish,
        outbox: &[OutboxEntry],
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let retention = self.retention;
        let (upserted, deleted) = self.write(|tx| {
            let key = open_run_connection(tx, run)?;
            // Upserts like the staged ones (a later copy of an id wins, an
            // unchanged hash rewrites nothing), so a connection that gained
            // accounts since the run began is still synced right; the
            // account_marks triggers see each insert as they see the copy.
            let mut written = 0;
            if !accounts.is_empty() {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO accounts (conn, id, hash, data) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (conn, id) DO UPDATE SET hash = excluded.hash, data = excluded.data \
                     WHERE accounts.hash IS NOT excluded.hash",
                )?;
                for a in accounts {
                    written += insert.execute(params![key, a.id, &a.hash.0[..], a.data])?;
                }
            }
            // `WHERE true` keeps SQLite from reading ON CONFLICT as a join
            // constraint of the SELECT; the update's WHERE skips rewriting
            // accounts whose content did not change.
            let upserted = tx
                .prepare_cached(
                    "INSERT INTO accounts (conn, id, hash, data) \
                     SELECT ?1, id, hash, data FROM staging WHERE run_id = ?2 AND op = ?3 AND true \
                     ON CONFLICT (conn, id) DO UPDATE SET hash = excluded.hash, data = excluded.data \
                     WHERE accounts.hash IS NOT excluded.hash",
                )?
                .execute(params![key, run, OP_UPSERT])?
                + written;
            let deleted = tx
                .prepare_cached(
                    "DELETE FROM accounts WHERE conn = ?1 \
                     AND id IN (SELECT id FROM staging WHERE run_id = ?2 AND op = ?3)",
                )?
                .execute(params![key, run, OP_DELETE])?;
            // The upsert's count leaves out accounts whose hash did not
            // change (SQLite counts no row for an upsert its WHERE skips), so
            // a sync that found nothing new leaves profiles nothing to redo.
            if upserted + deleted > 0 {
                bump_version(tx, key)?;
            }
            match &cursor {
                CursorUpdate::Keep => {}
                CursorUpdate::Set { value, settings_hash } => {
                    tx.prepare_cached(
                        "INSERT INTO cursors (conn, value, settings_hash, updated_at) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT (conn) DO UPDATE SET value = excluded.value, \
                         settings_hash = excluded.settings_hash, updated_at = excluded.updated_at",
                    )?
                    .execute(params![
                        key,
                        value,
                        settings_hash,
                        finish.finished_at.to_string()
                    ])?;
                }
                CursorUpdate::Clear => {
                    tx.prepare_cached("DELETE FROM cursors WHERE conn = ?1")?.execute([key])?;
                }
            }
            record_finish(tx, run, finish)?;
            drop_staging(tx, run)?;
            changes::prune(tx, key, &retention, finish.finished_at)?;
            outbox::insert(tx, outbox)?;
            Ok((upserted, deleted))
        })?;
        tracing::debug!(
            run,
            upserted,
            deleted,
            elapsed_ms = started.elapsed().as_millis(),
            outcome = finish.outcome.as_str(),
            "committed a run"
        );
        Ok(())
    }

    fn abandon_run_notifying(&self, run: RunId, finish: &RunFinish, outbox: &[OutboxEntry]) -> Result<(), StoreError> {
        let retention = self.retention;
        self.write(|tx| {
            let key = open_run_connection(tx, run)?;
            record_finish(tx, run, finish)?;
            if !finish.outcome.keeps_changes() {
                changes::drop_for_run(tx, run)?;
            }
            drop_staging(tx, run)?;
            changes::prune(tx, key, &retention, finish.finished_at)?;
            outbox::insert(tx, outbox).map(drop)
        })?;
        tracing::debug!(run, outcome = finish.outcome.as_str(), "abandoned a run");
        Ok(())
    }

    fn interrupt_unfinished_runs(
        &self,
        c: Option<&ConnectionRef>,
        finished_at: Timestamp,
        message: &str,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let interrupted = self.write(|tx| {
            // Both statements are answered from the partial index of
            // unfinished runs, not the whole history.
            let ids: Vec<RunId> = match c {
                Some(c) => {
                    let Some(key) = connection_key(tx, c)? else { return Ok(Vec::new()) };
                    let mut stmt =
                        tx.prepare_cached("SELECT run_id FROM runs WHERE conn = ?1 AND finished_at IS NULL")?;
                    stmt.query_map([key], |r| r.get(0))?.collect::<Result<_, _>>()?
                }
                None => {
                    let mut stmt = tx.prepare_cached("SELECT run_id FROM runs WHERE finished_at IS NULL")?;
                    stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
                }
            };
            let finish = RunFinish {
                outcome: RunOutcome::Interrupted,
                mode: None,
                counts: Counts::default(),
                message: message.to_owned(),
                finished_at,
            };
            let mut records = Vec::with_capacity(ids.len());
            for id in ids {
                record_finish(tx, id, &finish)?;
                drop_staging(tx, id)?;
                changes::drop_for_run(tx, id)?;
                records.push(load_run(tx, id)?.ok_or(StoreError::UnknownRun(id))?);
            }
            Ok(records)
        })?;
        for run in &interrupted {
            tracing::warn!(run = run.id, connection = %run.connection, holder = %run.holder, "marked an unfinished run as interrupted");
        }
        Ok(interrupted)
    }

    fn runs(&self, c: &ConnectionRef, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let db = self.lock()?;
        let Some(key) = connection_key(&db, c)? else { return Ok(Vec::new()) };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = db.prepare_cached(&format!("{RUN_SELECT} WHERE r.conn = ?1 ORDER BY r.run_id DESC LIMIT ?2"))?;
        let raw: Vec<RawRun> = stmt.query_map(params![key, limit], RawRun::from_row)?.collect::<Result<_, _>>()?;
        raw.into_iter().map(RawRun::into_record).collect()
    }

    fn run(&self, id: RunId) -> Result<Option<RunRecord>, StoreError> {
        load_run(&*self.lock()?, id)
    }

    fn connections(&self) -> Result<Vec<ConnectionRef>, StoreError> {
        let db = self.lock()?;
        let mut stmt = db.prepare_cached("SELECT namespace, name FROM connections ORDER BY namespace, name")?;
        let rows = stmt.query_map([], |r| Ok(ConnectionRef::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn get_accounts(&self, c: &ConnectionRef, ids: &[String]) -> Result<Vec<Account>, StoreError> {
        let db = self.lock()?;
        let Some(key) = connection_key(&db, c)? else { return Ok(Vec::new()) };
        let mut stmt = db.prepare_cached("SELECT data FROM accounts WHERE conn = ?1 AND id = ?2")?;
        let mut sorted: Vec<&String> = ids.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut accounts = Vec::with_capacity(sorted.len());
        for id in sorted {
            if let Some(data) = stmt.query_row(params![key, id], |r| r.get::<_, String>(0)).optional()? {
                accounts.push(decode_account(&data)?);
            }
        }
        Ok(accounts)
    }

    fn run_changes(&self, run: RunId, after: u64, limit: usize) -> Result<Vec<(u64, AccountChange)>, StoreError> {
        changes::list(&*self.lock()?, run, after, limit)
    }

    fn purge_connection(&self, c: &ConnectionRef) -> Result<u64, StoreError> {
        let removed = self.write(|tx| {
            let Some(key) = connection_key(tx, c)? else { return Ok(0) };
            let removed = tx.prepare_cached("DELETE FROM accounts WHERE conn = ?1")?.execute([key])?;
            if removed > 0 {
                bump_version(tx, key)?;
            }
            tx.prepare_cached("DELETE FROM cursors WHERE conn = ?1")?.execute([key])?;
            tx.prepare_cached("DELETE FROM staging WHERE run_id IN (SELECT run_id FROM runs WHERE conn = ?1)")?
                .execute([key])?;
            // The connections row stays: the run history refers to it, and
            // its version must go on counting up should the connection come
            // back, or a profile that saw version N before the purge would
            // take a new N for the accounts it has already processed.
            Ok(removed)
        })?;
        tracing::info!(connection = %c, removed, "purged a connection's accounts");
        u64::try_from(removed).map_err(|_| StoreError::Corrupt("negative row count".into()))
    }
}

/// The connection's key, if it has ever had a run.
fn connection_key(db: &Connection, c: &ConnectionRef) -> Result<Option<i64>, StoreError> {
    Ok(db
        .prepare_cached("SELECT conn FROM connections WHERE namespace = ?1 AND name = ?2")?
        .query_row(params![c.namespace, c.name], |r| r.get(0))
        .optional()?)
}

fn ensure_connection_key(tx: &Transaction<'_>, c: &ConnectionRef) -> Result<i64, StoreError> {
    if let Some(key) = connection_key(tx, c)? {
        return Ok(key);
    }
    tx.prepare_cached("INSERT INTO connections (namespace, name) VALUES (?1, ?2)")?
        .execute(params![c.namespace, c.name])?;
    Ok(tx.last_insert_rowid())
}

/// Tells profiles that the connection's accounts changed (see
/// [`Store::connection_versions`]).
fn bump_version(tx: &Transaction<'_>, key: i64) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE connections SET version = version + 1 WHERE conn = ?1")?.execute([key])?;
    Ok(())
}

/// The key of the connection of `run`, which must exist and be unfinished.
fn open_run_connection(tx: &Transaction<'_>, run: RunId) -> Result<i64, StoreError> {
    let found: Option<(i64, bool)> = tx
        .prepare_cached("SELECT conn, finished_at IS NOT NULL FROM runs WHERE run_id = ?1")?
        .query_row([run], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match found {
        None => Err(StoreError::UnknownRun(run)),
        Some((_, true)) => Err(StoreError::RunFinished(run)),
        Some((key, false)) => Ok(key),
    }
}

fn record_finish(tx: &Transaction<'_>, run: RunId, finish: &RunFinish) -> Result<(), StoreError> {
    let Counts { created, updated, deleted, unchanged } = finish.counts;
    tx.prepare_cached(
        "UPDATE runs SET finished_at = ?2, outcome = ?3, mode = ?4, created = ?5, updated = ?6, deleted = ?7, \
         unchanged = ?8, message = ?9 WHERE run_id = ?1",
    )?
    .execute(params![
        run,
        finish.finished_at.to_string(),
        finish.outcome.as_str(),
        finish.mode.map(|m| m.as_str()),
        to_i64("created count", created)?,
        to_i64("updated count", updated)?,
        to_i64("deleted count", deleted)?,
        to_i64("unchanged count", unchanged)?,
        finish.message,
    ])?;
    Ok(())
}

fn drop_staging(tx: &Transaction<'_>, run: RunId) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM staging WHERE run_id = ?1")?.execute([run])?;
    Ok(())
}

fn load_run(db: &Connection, id: RunId) -> Result<Option<RunRecord>, StoreError> {
    let raw = db
        .prepare_cached(&format!("{RUN_SELECT} WHERE r.run_id = ?1"))?
        .query_row([id], RawRun::from_row)
        .optional()?;
    raw.map(RawRun::into_record).transpose()
}

/// A `runs` row as SQLite gives it; [`RawRun::into_record`] checks it.
struct RawRun {
    id: RunId,
    namespace: String,
    name: String,
    trigger: String,
    request: Option<String>,
    requested_mode: String,
    holder: String,
    started_at: String,
    finished_at: Option<String>,
    outcome: Option<String>,
    mode: Option<String>,
    counts: [i64; 4],
    message: String,
}

impl RawRun {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawRun {
            id: r.get(0)?,
            namespace: r.get(1)?,
            name: r.get(2)?,
            trigger: r.get(3)?,
            request: r.get(4)?,
            requested_mode: r.get(5)?,
            holder: r.get(6)?,
            started_at: r.get(7)?,
            finished_at: r.get(8)?,
            outcome: r.get(9)?,
            mode: r.get(10)?,
            counts: [r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?],
            message: r.get(15)?,
        })
    }

    fn into_record(self) -> Result<RunRecord, StoreError> {
        let outcome = self
            .outcome
            .map(|o| {
                RunOutcome::parse(&o)
                    .ok_or_else(|| StoreError::Corrupt(format!("run {}: unknown outcome {o:?}", self.id)))
            })
            .transpose()?;
        let [created, updated, deleted, unchanged] = self.counts;
        Ok(RunRecord {
            id: self.id,
            connection: ConnectionRef { namespace: self.namespace, name: self.name },
            trigger: parse_trigger(self.id, &self.trigger)?,
            request: self.request,
            requested_mode: parse_mode(self.id, &self.requested_mode)?,
            holder: self.holder,
            started_at: parse_time(&self.started_at)?,
            finished_at: self.finished_at.as_deref().map(parse_time).transpose()?,
            outcome,
            mode: self.mode.as_deref().map(|m| parse_mode(self.id, m)).transpose()?,
            counts: Counts {
                created: from_i64(created)?,
                updated: from_i64(updated)?,
                deleted: from_i64(deleted)?,
                unchanged: from_i64(unchanged)?,
            },
            message: self.message,
        })
    }
}

#[cfg(test)]
impl SqliteStore {
    /// How many staged rows `run` has (tests check staging is dropped).
    pub(crate) fn staged_rows(&self, run: RunId) -> i64 {
        self.lock().unwrap().query_row("SELECT count(*) FROM staging WHERE run_id = ?1", [run], |r| r.get(0)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;

    use std::time::Duration;

    use super::*;
    use crate::store::contract::accounts::{account, all, conn, finish, ids, new_run, set_cursor, sync, time, upserts};
    use crate::store::migrations;

    fn open() -> (TempDir, SqliteStore, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        // A nested path: open must create the folders.
        let path = dir.path().join("state").join("store").join("idsync.db");
        let store = SqliteStore::open(&path).unwrap();
        (dir, store, path)
    }

    #[test]
    fn open_migrates_a_fresh_file_and_reopens_it() {
        let (_dir, store, path) = open();
        assert!(path.exists());
        assert_eq!(store.schema_version().unwrap(), migrations::latest_version());
        assert!(migrations::latest_version() >= 1);
        let c = conn("hr");
        sync(&store, &c, &upserts(&[account("E1", 1)]), set_cursor("c1"));
        drop(store);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::latest_version());
        assert_eq!(all(&store, &c), vec![account("E1", 1)]);
        assert_eq!(store.cursor(&c).unwrap().unwrap().value, "c1");
        let mode: String = store.lock().unwrap().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn open_refuses_a_database_newer_than_the_code() {
        let (_dir, store, path) = open();
        drop(store);
        let newer = migrations::latest_version() + 1;
        Connection::open(&path).unwrap().pragma_update(None, "user_version", newer).unwrap();
        match SqliteStore::open(&path) {
            Err(StoreError::SchemaTooNew { found, supported }) => {
                assert_eq!((found, supported), (newer, migrations::latest_version()))
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a newer database was opened"),
        }
        // Refusing must not have touched the version.
        let version: i64 = Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, newer);
    }

    #[test]
    fn a_poisoned_lock_is_an_error_not_a_panic() {
        let (_dir, store, _path) = open();
        let store = Arc::new(store);
        let poisoner = Arc::clone(&store);
        let panicked = std::thread::spawn(move || {
            let _held = poisoner.db.lock().unwrap();
            panic!("a call panicked while holding the store");
        })
        .join();
        assert!(panicked.is_err());
        assert!(matches!(store.account_count(&conn("hr")), Err(StoreError::Poisoned)));
        assert!(matches!(store.start_run(&new_run(&conn("hr"), time(0, 0))), Err(StoreError::Poisoned)));
    }

    #[test]
    fn staging_does_not_hold_the_write_lock() {
        let (_dir, store, path) = open();
        let c = conn("hr");
        let run = store.start_run(&new_run(&c, time(0, 0))).unwrap();
        store.stage(run, &upserts(&[account("E1", 1)])).unwrap();
        // Another process, not willing to wait at all, can write between pages.
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        other.execute_batch("BEGIN IMMEDIATE; COMMIT;").unwrap();
        store.stage(run, &upserts(&[account("E2", 1)])).unwrap();
        store.commit_run(run, CursorUpdate::Keep, &finish(RunOutcome::Succeeded, time(1, 0))).unwrap();
        other.execute_batch("BEGIN IMMEDIATE; COMMIT;").unwrap();
        assert_eq!(ids(&all(&store, &c)), ["E1", "E2"]);
    }

    #[test]
    fn a_commit_that_fails_halfway_changes_nothing() {
        let (_dir, store, path) = open();
        let c = conn("hr");
        sync(&store, &c, &upserts(&[account("E1", 1), account("E2", 1)]), set_cursor("c1"));
        let before = (all(&store, &c), store.cursor(&c).unwrap());
        let run = store.start_run(&new_run(&c, time(20, 0))).unwrap();
        store.stage(run, &[StagedChange::Upsert(account("E1", 2)), StagedChange::Delete("E2".into())]).unwrap();

        // Make the cursor write, which comes after the accounts', fail.
        let saboteur = Connection::open(&path).unwrap();
        saboteur
            .execute_batch(
                "CREATE TRIGGER sabotage BEFORE UPDATE ON cursors BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
            )
            .unwrap();
        let commit = store.commit_run(run, set_cursor("c2"), &finish(RunOutcome::Succeeded, time(21, 0)));
        assert!(matches!(commit, Err(StoreError::Sqlite(_))), "{commit:?}");
        assert_eq!((all(&store, &c), store.cursor(&c).unwrap()), before);
        assert_eq!(store.run(run).unwrap().unwrap().finished_at, None);
        assert_eq!(store.staged_rows(run), 2);

        // The run is still whole and can commit once the fault is gone.
        saboteur.execute_batch("DROP TRIGGER sabotage;").unwrap();
        store.commit_run(run, set_cursor("c2"), &finish(RunOutcome::Succeeded, time(22, 0))).unwrap();
        assert_eq!(all(&store, &c), vec![account("E1", 2)]);
        assert_eq!(store.cursor(&c).unwrap().unwrap().value, "c2");
    }
}
