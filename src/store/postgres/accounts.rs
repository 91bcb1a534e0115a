//! Accounts, cursors and the sync run history in PostgreSQL: a run stages
//! its pages and `commit_run` applies them with the cursor in one
//! transaction, as in `store::sqlite::accounts`, set-based: every statement
//! of a commit works on all of the run's rows at once.
//!
//! Replicas share the database, so what SQLite's single writer gives for
//! free is locked for here:
//! - staging, committing or abandoning a run locks the run's row
//!   (`FOR UPDATE`) and checks it is unfinished under that lock, so a run
//!   ends exactly once even when another replica interrupts it meanwhile;
//! - a commit, an abandon and a purge lock the connection's row, so two
//!   changes of one connection's accounts take turns (and the version and
//!   `account_marks` they write agree), while other connections' go on.
//!   Locks are always taken run first, then connection.
//! - `account_marks` is written by the statements that change accounts
//!   (`RETURNING` the ids they touched), where SQLite has triggers.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use ::postgres::binary_copy::BinaryCopyInWriter;
use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::types::Type;
use ::postgres::{GenericClient, Row, Transaction};
use jiff::Timestamp;

use super::{PgStore, changes, outbox};
use crate::model::{
    Account, AccountChange, ConnectionRef, ContentHash, Counts, NewRun, RunFinish, RunId, RunOutcome, RunRecord,
};
use crate::store::codec::{decode_account, from_i64, parse_mode, parse_time, parse_trigger, to_i64};
use crate::store::outbox::OutboxEntry;
use crate::store::{AccountStore, CursorUpdate, EncodedAccount, StagedChange, StoreError, StoredCursor};

/// `staging.op`: an upsert (hash and data set) or a delete.
const OP_UPSERT: i16 = 0;
const OP_DELETE: i16 = 1;

/// Accounts a commit upserts per statement when it cannot COPY them: big
/// enough that round trips do not count, small enough that one statement's
/// arrays stay a few MiB.
const UPSERT_CHUNK: usize = 10_000;

/// Accounts a commit or purge changes from which it has the planner's
/// statistics of them brought up to date ([`PgStore::analyze_accounts`]).
const ANALYZE_AFTER: u64 = 10_000;

/// The columns [`decode_run`] reads, in its order.
const RUN_SELECT: &str = "SELECT r.run_id, c.namespace, c.name, r.trigger_kind, r.request, r.requested_mode, r.holder, \
     r.started_at, r.finished_at, r.outcome, r.mode, r.created, r.updated, r.deleted, r.unchanged, r.message \
     FROM runs r JOIN connections c ON c.conn = r.conn";

/// Upserts the run's staged upserts into the connection ($1) and marks
/// what they changed at version $3; the count of accounts changed.
const APPLY_STAGED_UPSERTS: &str = "WITH up AS ( \
         INSERT INTO accounts (conn, id, hash, data) \
         SELECT $1, id, hash, data FROM staging WHERE run_id = $2 AND op = 0 \
         ON CONFLICT (conn, id) DO UPDATE SET hash = EXCLUDED.hash, data = EXCLUDED.data \
         WHERE accounts.hash <> EXCLUDED.hash \
         RETURNING id), \
     marked AS ( \
         INSERT INTO account_marks (conn, id, version) SELECT $1, id, $3 FROM up \
         ON CONFLICT (conn, id) DO UPDATE SET version = EXCLUDED.version) \
     SELECT count(*) FROM up";

/// Deletes the run's staged deletes from the connection ($1) and marks
/// them at version $3; the count of accounts deleted.
const APPLY_STAGED_DELETES: &str = "WITH gone AS ( \
         DELETE FROM accounts a USING staging s \
         WHERE a.conn = $1 AND s.run_id = $2 AND s.op = 1 AND a.id = s.id \
         RETURNING a.id), \
     marked AS ( \
         INSERT INTO account_marks (conn, id, version) SELECT $1, id, $3 FROM gone \
         ON CONFLICT (conn, id) DO UPDATE SET version = EXCLUDED.version) \
     SELECT count(*) FROM gone";

/// Upserts accounts given as arrays into the connection ($1) and marks
/// what they changed at version $2; the count of accounts changed.
const UPSERT_ARRAYS: &str = "WITH up AS ( \
         INSERT INTO accounts (conn, id, hash, data) \
         SELECT $1, t.id, t.hash, t.data FROM unnest($3::text[], $4::bytea[], $5::text[]) AS t(id, hash, data) \
         ON CONFLICT (conn, id) DO UPDATE SET hash = EXCLUDED.hash, data = EXCLUDED.data \
         WHERE accounts.hash <> EXCLUDED.hash \
         RETURNING id), \
     marked AS ( \
         INSERT INTO account_marks (conn, id, version) SELECT $1, id, $2 FROM up \
         ON CONFLICT (conn, id) DO UPDATE SET version = EXCLUDED.version) \
     SELECT count(*) FROM up";

impl AccountStore for PgStore {
    fn account_index(&self, c: &ConnectionRef) -> Result<HashMap<String, ContentHash>, StoreError> {
        self.with_client(|db| {
            // Streamed: the rows are never all in memory besides the index.
            let params: [&(dyn ::postgres::types::ToSql + Sync); 2] = [&c.namespace, &c.name];
            let mut rows = db.query_raw(
                "SELECT a.id, a.hash FROM accounts a \
                 WHERE a.conn = (SELECT conn FROM connections WHERE namespace = $1 AND name = $2)",
                params,
            )?;
            let mut index = HashMap::with_capacity(rows.size_hint().0);
            while let Some(row) = rows.next()? {
                let id: String = row.try_get(0)?;
                let hash = hash_of(&row, 1, &id, c)?;
                index.insert(id, hash);
            }
            Ok(index)
        })
    }

    fn account_hashes(&self, c: &ConnectionRef, ids: &[String]) -> Result<HashMap<String, ContentHash>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self.with_client(|db| {
            Ok(db.query(
                "SELECT a.id, a.hash FROM accounts a \
                 WHERE a.conn = (SELECT conn FROM connections WHERE namespace = $1 AND name = $2) AND a.id = ANY($3)",
                &[&c.namespace, &c.name, &ids],
            )?)
        })?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                let hash = hash_of(row, 1, &id, c)?;
                Ok((id, hash))
            })
            .collect()
    }

    fn account_count(&self, c: &ConnectionRef) -> Result<u64, StoreError> {
        let n: i64 = self.with_client(|db| {
            Ok(db
                .query_one(
                    "SELECT count(*) FROM accounts a \
                     WHERE a.conn = (SELECT conn FROM connections WHERE namespace = $1 AND name = $2)",
                    &[&c.namespace, &c.name],
                )?
                .try_get(0)?)
        })?;
        from_i64(n)
    }

    fn get_account(&self, c: &ConnectionRef, id: &str) -> Result<Option<Account>, StoreError> {
        let row = self.with_client(|db| {
            Ok(db.query_opt(
                "SELECT a.data FROM accounts a \
                 WHERE a.conn = (SELECT conn FROM connections WHERE namespace = $1 AND name = $2) AND a.id = $3",
                &[&c.namespace, &c.name, &id],
            )?)
        })?;
        row.map(|r| decode_account(r.try_get(0)?)).transpose()
    }

    fn list_accounts(&self, c: &ConnectionRef, after: Option<&str>, limit: usize) -> Result<Vec<Account>, StoreError> {
        // Past i64::MAX is "all" anyway.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // `accounts.id` sorts bytewise (COLLATE "C"), as SQLite's does, so
        // the (conn, id) key serves the order and the page's start (given
        // statistics: see `PgStore::analyze_accounts`).
        let rows = self.with_client(|db| {
            Ok(match after {
                Some(after) => db.query(
                    "SELECT a.data FROM accounts a \
                     WHERE a.conn = (SELECT conn FROM connections WHERE namespace = $1 AND name = $2) AND a.id > $3 ORDER BY a.id LIMIT $4",
                    &[&c.namespace, &c.name, &after, &limit],
                )?,
                None => db.query(
                    "SELECT a.data FROM accounts a \
                     WHERE a.conn = (SELECT conn FROM connections WHERE namespace = $1 AND name = $2) ORDER BY a.id LIMIT $3",
                    &[&c.namespace, &c.name, &limit],
                )?,
            })
        })?;
        rows.iter().map(|r| decode_account(r.try_get(0)?)).collect()
    }

    fn cursor(&self, c: &ConnectionRef) -> Result<Option<StoredCursor>, StoreError> {
        let row = self.with_client(|db| {
            Ok(db.query_opt(
                "SELECT u.value, u.settings_hash, u.updated_at FROM cursors u WHERE u.conn = (SELECT conn FROM connections WHERE namespace = $1 AND name = $2)",
                &[&c.namespace, &c.name],
            )?)
        })?;
        row.map(|r| {
            Ok(StoredCursor {
                value: r.try_get(0)?,
                settings_hash: r.try_get(1)?,
                updated_at: parse_time(r.try_get(2)?)?,
            })
        })
        .transpose()
    }

    fn start_run(&self, run: &NewRun) -> Result<RunId, StoreError> {
        let started_at = run.started_at.to_string();
        self.write(|tx| {
            let key = ensure_connection_key(tx, &run.connection)?;
            let row = tx.query_one(
                "INSERT INTO runs (conn, trigger_kind, request, requested_mode, holder, started_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING run_id",
                &[&key, &run.trigger.as_str(), &run.request, &run.requested_mode.as_str(), &run.holder, &started_at],
            )?;
            Ok(row.try_get(0)?)
        })
    }

    fn stage_recorded(
        &self,
        run: RunId,
        changes: &[StagedChange],
        recorded: &[AccountChange],
    ) -> Result<(), StoreError> {
        // Serialize and hash before the transaction: it is the slow part of
        // a page, and holds no lock.
        let mut rows = StagingRows::default();
        for change in last_of_each_id(changes, |c| match c {
            StagedChange::Upsert(a) => &a.id,
            StagedChange::Delete(id) => id,
        }) {
            match change {
                StagedChange::Upsert(account) => {
                    rows.push(&account.id, Some((account.content_hash(), account.canonical_json())))
                }
                StagedChange::Delete(id) => rows.push(id, None),
            }
        }
        let recorded = changes::encode(recorded)?;
        self.write(|tx| {
            lock_open_run(tx, run)?;
            rows.insert(tx, run)?;
            changes::record(tx, run, &recorded)
        })
    }

    fn stage_encoded(&self, run: RunId, accounts: &[EncodedAccount]) -> Result<(), StoreError> {
        let mut rows = StagingRows::default();
        for a in last_of_each_id(accounts, |a| &a.id) {
            rows.push(&a.id, Some((a.hash, a.data.clone())));
        }
        self.write(|tx| {
            lock_open_run(tx, run)?;
            rows.insert(tx, run)
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
        // A later copy of an id wins, as a later staging does.
        let accounts = last_of_each_id(accounts, |a| &a.id);
        let finished_at = finish.finished_at.to_string();
        let (upserted, deleted) = self.write(|tx| {
            let key = lock_open_run(tx, run)?;
            let version = lock_connection(tx, key)?;
            let next = version + 1;
            let written = write_accounts(tx, key, next, &accounts)?;
            // The upsert's count leaves out accounts whose hash did not
            // change (its WHERE skips them), so a sync that found nothing
            // new leaves profiles nothing to redo.
            let upserted = written + count(tx.query_one(APPLY_STAGED_UPSERTS, &[&key, &run, &next])?)?;
            let deleted = count(tx.query_one(APPLY_STAGED_DELETES, &[&key, &run, &next])?)?;
            if upserted + deleted > 0 {
                tx.execute("UPDATE connections SET version = $2 WHERE conn = $1", &[&key, &next])?;
            }
            match &cursor {
                CursorUpdate::Keep => {}
                CursorUpdate::Set { value, settings_hash } => {
                    tx.execute(
                        "INSERT INTO cursors (conn, value, settings_hash, updated_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (conn) DO UPDATE SET value = EXCLUDED.value, \
                         settings_hash = EXCLUDED.settings_hash, updated_at = EXCLUDED.updated_at",
                        &[&key, value, settings_hash, &finished_at],
                    )?;
                }
                CursorUpdate::Clear => {
                    tx.execute("DELETE FROM cursors WHERE conn = $1", &[&key])?;
                }
            }
            record_finish(tx, run, finish)?;
            drop_staging(tx, &[run])?;
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
        if upserted + deleted >= ANALYZE_AFTER {
            self.analyze_accounts();
        }
        Ok(())
    }

    fn abandon_run_notifying(&self, run: RunId, finish: &RunFinish, outbox: &[OutboxEntry]) -> Result<(), StoreError> {
        let retention = self.retention;
        self.write(|tx| {
            let key = lock_open_run(tx, run)?;
            // Pruning this connection's history: one at a time with commits.
            lock_connection(tx, key)?;
            record_finish(tx, run, finish)?;
            if !finish.outcome.keeps_changes() {
                changes::drop_for_runs(tx, &[run])?;
            }
            drop_staging(tx, &[run])?;
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
        let at = finished_at.to_string();
        let outcome = RunOutcome::Interrupted.as_str();
        let interrupted = self.write(|tx| {
            // One UPDATE: a run another replica is committing right now has
            // its row locked; this waits for it, sees it finished and leaves
            // it, so a run ends exactly one way.
            const FINISH: &str = "UPDATE runs SET finished_at = $1, outcome = $2, mode = NULL, created = 0, \
                 updated = 0, deleted = 0, unchanged = 0, message = $3 WHERE finished_at IS NULL";
            let rows = match c {
                Some(c) => tx.query(
                    &format!(
                        "{FINISH} AND conn = (SELECT conn FROM connections WHERE namespace = $4 AND name = $5) \
                         RETURNING run_id"
                    ),
                    &[&at, &outcome, &message, &c.namespace, &c.name],
                )?,
                None => tx.query(&format!("{FINISH} RETURNING run_id"), &[&at, &outcome, &message])?,
            };
            let ids = rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<RunId>, _>>()?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            drop_staging(tx, &ids)?;
            changes::drop_for_runs(tx, &ids)?;
            let rows = tx.query(&format!("{RUN_SELECT} WHERE r.run_id = ANY($1) ORDER BY r.run_id"), &[&ids])?;
            rows.iter().map(decode_run).collect::<Result<Vec<_>, _>>()
        })?;
        for run in &interrupted {
            tracing::warn!(run = run.id, connection = %run.connection, holder = %run.holder, "marked an unfinished run as interrupted");
        }
        Ok(interrupted)
    }

    fn runs(&self, c: &ConnectionRef, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with_client(|db| {
            Ok(db.query(
                &format!("{RUN_SELECT} WHERE c.namespace = $1 AND c.name = $2 ORDER BY r.run_id DESC LIMIT $3"),
                &[&c.namespace, &c.name, &limit],
            )?)
        })?;
        rows.iter().map(decode_run).collect()
    }

    fn run(&self, id: RunId) -> Result<Option<RunRecord>, StoreError> {
        let row = self.with_client(|db| Ok(db.query_opt(&format!("{RUN_SELECT} WHERE r.run_id = $1"), &[&id])?))?;
        row.as_ref().map(decode_run).transpose()
    }

    fn purge_connection(&self, c: &ConnectionRef) -> Result<u64, StoreError> {
        let removed = self.write(|tx| {
            let Some(key) = connection_key(tx, c)? else { return Ok(0) };
            let next = lock_connection(tx, key)? + 1;
            let removed = count(tx.query_one(
                "WITH gone AS (DELETE FROM accounts WHERE conn = $1 RETURNING id), \
                 marked AS (INSERT INTO account_marks (conn, id, version) SELECT $1, id, $2 FROM gone \
                            ON CONFLICT (conn, id) DO UPDATE SET version = EXCLUDED.version) \
                 SELECT count(*) FROM gone",
                &[&key, &next],
            )?)?;
            if removed > 0 {
                tx.execute("UPDATE connections SET version = $2 WHERE conn = $1", &[&key, &next])?;
            }
            tx.execute("DELETE FROM cursors WHERE conn = $1", &[&key])?;
            tx.execute("DELETE FROM staging WHERE run_id IN (SELECT run_id FROM runs WHERE conn = $1)", &[&key])?;
            // The connections row stays: the run history refers to it, and
            // its version must go on counting up should the connection come
            // back, or a profile that saw version N before the purge would
            // take a new N for the accounts it has already processed.
            Ok(removed)
        })?;
        tracing::info!(connection = %c, removed, "purged a connection's accounts");
        if removed >= ANALYZE_AFTER {
            self.analyze_accounts();
        }
        Ok(removed)
    }

    fn connections(&self) -> Result<Vec<ConnectionRef>, StoreError> {
        let rows = self.with_client(|db| {
            // Bytewise, as SQLite orders them, whatever the database's collation.
            Ok(db.query(
                "SELECT namespace, name FROM connections ORDER BY namespace COLLATE \"C\", name COLLATE \"C\"",
                &[],
            )?)
        })?;
        rows.iter().map(|r| Ok(ConnectionRef::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?))).collect()
    }

    fn get_accounts(&self, c: &ConnectionRef, ids: &[String]) -> Result<Vec<Account>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.with_client(|db| {
            Ok(db.query(
                "SELECT a.data FROM accounts a \
                 WHERE a.conn = (SELECT conn FROM connections WHERE namespace = $1 AND name = $2) AND a.id = ANY($3) ORDER BY a.id",
                &[&c.namespace, &c.name, &ids],
            )?)
        })?;
        rows.iter().map(|r| decode_account(r.try_get(0)?)).collect()
    }

    fn run_changes(&self, run: RunId, after: u64, limit: usize) -> Result<Vec<(u64, AccountChange)>, StoreError> {
        self.with_client(|db| changes::list(db, run, after, limit))
    }
}

impl PgStore {
    /// Brings the planner's statistics of the accounts up to date after a
    /// commit changed many of them. Until then (autovacuum's next round, up
    /// to a minute later) the planner thinks a connection that just got
    /// 100,000 accounts has a few hundred, and reads each page of a listing
    /// by sorting the whole connection: 40 ms a page instead of 0.5 ms in
    /// `benches/store.rs`. After the commit, not in it, so that it holds no
    /// lock of the commit's; best effort, as autovacuum will do it anyway.
    fn analyze_accounts(&self) {
        let started = Instant::now();
        match self.with_client(|db| Ok(db.batch_execute("ANALYZE accounts, account_marks")?)) {
            Ok(()) => tracing::debug!(elapsed_ms = started.elapsed().as_millis(), "analyzed the accounts"),
            Err(e) => tracing::warn!(error = %e, "could not update the planner's statistics of the accounts"),
        }
    }
}

/// The items of `items` without those an item later in it with the same
/// id replaces, in their order.
fn last_of_each_id<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<&T> {
    let mut seen = HashSet::with_capacity(items.len());
    let mut kept: Vec<&T> = items.iter().rev().filter(|item| seen.insert(id(item))).collect();
    kept.reverse();
    kept
}

/// A page for `staging`, as the columns of one multi-row INSERT.
#[derive(Default)]
struct StagingRows<'a> {
    ids: Vec<&'a str>,
    ops: Vec<i16>,
    hashes: Vec<Option<Vec<u8>>>,
    data: Vec<Option<String>>,
}

impl<'a> StagingRows<'a> {
    /// An upsert with its (hash, data), or a delete.
    fn push(&mut self, id: &'a str, upsert: Option<(ContentHash, String)>) {
        self.ids.push(id);
        match upsert {
            Some((hash, data)) => {
                self.ops.push(OP_UPSERT);
                self.hashes.push(Some(hash.0.to_vec()));
                self.data.push(Some(data));
            }
            None => {
                self.ops.push(OP_DELETE);
                self.hashes.push(None);
                self.data.push(None);
            }
        }
    }

    /// One statement; its ids are distinct (`last_of_each_id`), as
    /// `ON CONFLICT DO UPDATE` needs, and replace what earlier pages staged.
    fn insert(&self, tx: &mut Transaction<'_>, run: RunId) -> Result<(), StoreError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO staging (run_id, id, op, hash, data) \
             SELECT $1, t.id, t.op, t.hash, t.data \
             FROM unnest($2::text[], $3::int2[], $4::bytea[], $5::text[]) AS t(id, op, hash, data) \
             ON CONFLICT (run_id, id) DO UPDATE SET op = EXCLUDED.op, hash = EXCLUDED.hash, data = EXCLUDED.data",
            &[&run, &self.ids, &self.ops, &self.hashes, &self.data],
        )?;
        Ok(())
    }
}

/// Writes `accounts` (distinct ids) into the connection `key`, marking what
/// they change at version `next`; returns how many changed. Into a
/// connection without accounts (a first sync), they are all new: COPY, the
/// fastest way in, then marks for all of them. Otherwise upserts in chunks.
/// The caller holds the connection's lock, so "empty" stays true.
fn write_accounts(
    tx: &mut Transaction<'_>,
    key: i64,
    next: i64,
    accounts: &[&EncodedAccount],
) -> Result<u64, StoreError> {
    if accounts.is_empty() {
        return Ok(0);
    }
    let empty: bool =
        tx.query_one("SELECT NOT EXISTS (SELECT 1 FROM accounts WHERE conn = $1)", &[&key])?.try_get(0)?;
    if empty {
        let writer = tx.copy_in("COPY accounts (conn, id, hash, data) FROM STDIN (FORMAT binary)")?;
        let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT8, Type::TEXT, Type::BYTEA, Type::TEXT]);
        for a in accounts {
            writer.write(&[&key, &a.id, &&a.hash.0[..], &a.data])?;
        }
        let written = writer.finish()?;
        tx.execute(
            "INSERT INTO account_marks (conn, id, version) SELECT conn, id, $2 FROM accounts WHERE conn = $1 \
             ON CONFLICT (conn, id) DO UPDATE SET version = EXCLUDED.version",
            &[&key, &next],
        )?;
        return Ok(written);
    }
    let mut written = 0;
    for chunk in accounts.chunks(UPSERT_CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|a| a.id.as_str()).collect();
        let hashes: Vec<&[u8]> = chunk.iter().map(|a| &a.hash.0[..]).collect();
        let data: Vec<&str> = chunk.iter().map(|a| a.data.as_str()).collect();
        written += count(tx.query_one(UPSERT_ARRAYS, &[&key, &next, &ids, &hashes, &data])?)?;
    }
    Ok(written)
}

/// A `SELECT count(*)` row.
fn count(row: Row) -> Result<u64, StoreError> {
    from_i64(row.try_get(0)?)
}

fn hash_of(row: &Row, column: usize, id: &str, c: &ConnectionRef) -> Result<ContentHash, StoreError> {
    let bytes: &[u8] = row.try_get(column)?;
    ContentHash::from_slice(bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("account {id:?} of {c} has no 32-byte content hash")))
}

/// The connection's key, if it has ever had a run.
fn connection_key(db: &mut impl GenericClient, c: &ConnectionRef) -> Result<Option<i64>, StoreError> {
    let row =
        db.query_opt("SELECT conn FROM connections WHERE namespace = $1 AND name = $2", &[&c.namespace, &c.name])?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

fn ensure_connection_key(tx: &mut Transaction<'_>, c: &ConnectionRef) -> Result<i64, StoreError> {
    if let Some(key) = connection_key(tx, c)? {
        return Ok(key);
    }
    let inserted = tx.query_opt(
        "INSERT INTO connections (namespace, name) VALUES ($1, $2) ON CONFLICT (namespace, name) DO NOTHING \
         RETURNING conn",
        &[&c.namespace, &c.name],
    )?;
    match inserted {
        Some(row) => Ok(row.try_get(0)?),
        // Another replica inserted it after our first look; this statement
        // sees its commit (READ COMMITTED: a new snapshot per statement).
        None => connection_key(tx, c)?
            .ok_or_else(|| StoreError::Internal(format!("connection {c} vanished while its run started"))),
    }
}

/// Locks the connection's row until the transaction ends and returns its
/// accounts version: changes of one connection's accounts take turns.
fn lock_connection(tx: &mut Transaction<'_>, key: i64) -> Result<i64, StoreError> {
    let row = tx.query_one("SELECT version FROM connections WHERE conn = $1 FOR UPDATE", &[&key])?;
    Ok(row.try_get(0)?)
}

/// Locks the row of `run`, which must exist and be unfinished, until the
/// transaction ends, and returns its connection's key. Under the lock, an
/// unfinished run stays unfinished until this transaction ends.
fn lock_open_run(tx: &mut Transaction<'_>, run: RunId) -> Result<i64, StoreError> {
    let found = tx.query_opt("SELECT conn, finished_at IS NOT NULL FROM runs WHERE run_id = $1 FOR UPDATE", &[&run])?;
    match found {
        None => Err(StoreError::UnknownRun(run)),
        Some(row) if row.try_get::<_, bool>(1)? => Err(StoreError::RunFinished(run)),
        Some(row) => Ok(row.try_get(0)?),
    }
}

fn record_finish(tx: &mut Transaction<'_>, run: RunId, finish: &RunFinish) -> Result<(), StoreError> {
    let Counts { created, updated, deleted, unchanged } = finish.counts;
    tx.execute(
        "UPDATE runs SET finished_at = $2, outcome = $3, mode = $4, created = $5, updated = $6, deleted = $7, \
         unchanged = $8, message = $9 WHERE run_id = $1",
        &[
            &run,
            &finish.finished_at.to_string(),
            &finish.outcome.as_str(),
            &finish.mode.map(|m| m.as_str()),
            &to_i64("created count", created)?,
            &to_i64("updated count", updated)?,
            &to_i64("deleted count", deleted)?,
            &to_i64("unchanged count", unchanged)?,
            &finish.message,
        ],
    )?;
    Ok(())
}

fn drop_staging(tx: &mut Transaction<'_>, runs: &[RunId]) -> Result<(), StoreError> {
    tx.execute("DELETE FROM staging WHERE run_id = ANY($1)", &[&runs])?;
    Ok(())
}

/// A row of [`RUN_SELECT`].
fn decode_run(r: &Row) -> Result<RunRecord, StoreError> {
    let id: RunId = r.try_get(0)?;
    let outcome = r
        .try_get::<_, Option<&str>>(9)?
        .map(|o| RunOutcome::parse(o).ok_or_else(|| StoreError::Corrupt(format!("run {id}: unknown outcome {o:?}"))))
        .transpose()?;
    Ok(RunRecord {
        id,
        connection: ConnectionRef { namespace: r.try_get(1)?, name: r.try_get(2)? },
        trigger: parse_trigger(id, r.try_get(3)?)?,
        request: r.try_get(4)?,
        requested_mode: parse_mode(id, r.try_get(5)?)?,
        holder: r.try_get(6)?,
        started_at: parse_time(r.try_get(7)?)?,
        finished_at: r.try_get::<_, Option<&str>>(8)?.map(parse_time).transpose()?,
        outcome,
        mode: r.try_get::<_, Option<&str>>(10)?.map(|m| parse_mode(id, m)).transpose()?,
        counts: Counts {
            created: from_i64(r.try_get(11)?)?,
            updated: from_i64(r.try_get(12)?)?,
            deleted: from_i64(r.try_get(13)?)?,
            unchanged: from_i64(r.try_get(14)?)?,
        },
        message: r.try_get(15)?,
    })
}

#[cfg(test)]
impl PgStore {
    /// How many staged rows `run` has (tests check staging is dropped).
    pub(crate) fn staged_rows(&self, run: RunId) -> i64 {
        let mut db = self.pool.get().unwrap();
        db.query_one("SELECT count(*) FROM staging WHERE run_id = $1", &[&run]).unwrap().get(0)
    }
}

#[cfg(test)]
mod tests;
