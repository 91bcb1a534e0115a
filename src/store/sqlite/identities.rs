//! The identity half of [`SqliteStore`]: profiles' identities, correlation
//! records (links), state and processing-run history (the tables of
//! migration V2), plus the connections' accounts versions that tell a
//! profile when it is out of date. The functions take a connection or a
//! transaction; the `IdentityStore` and `ProcessingHistory` impls at the end
//! set the locking and transaction boundaries. Identities are
//! stored whole as JSON, with the fields the store filters or orders on (id,
//! lifecycle state) copied into columns; everything a processing run reads or
//! writes goes through one prepared statement per kind of row, so 100,000
//! identities cost 100,000 executions of a cached statement in one
//! transaction rather than 100,000 transactions or statement compilations.

use std::collections::BTreeMap;
use std::time::Instant;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{SqliteStore, changes};
use crate::model::{
    Account, ContentHash, Identity, LinkRecord, LinkState, ProcessingRunRecord, ProfileRef, RunId, RunOutcome,
};
use crate::store::codec::{
    NO_VERSIONS, StateColumns, corrupt, decode_account, decode_state, encode_candidates, encode_summary,
    encode_versions, from_i64, parse_time, parse_trigger, to_i64,
};
use crate::store::{
    IdentityStore, ProcessingCommit, ProcessingDelta, ProcessingHistory, ProcessingSnapshot, ProfileState, Retention,
    StoreError,
};

/// `list_identities`, one statement per combination of filters: an optional
/// `?N IS NULL OR ...` would keep SQLite from seeking the index to the page's
/// start (the state ones read `identities_by_state`, the others the primary
/// key, both already in id order).
const LIST_ALL: &str = "SELECT id, data FROM identities WHERE prof = ?1 ORDER BY id LIMIT ?2";
const LIST_ALL_AFTER: &str = "SELECT id, data FROM identities WHERE prof = ?1 AND id > ?2 ORDER BY id LIMIT ?3";
const LIST_IN_STATE: &str =
    "SELECT id, data FROM identities WHERE prof = ?1 AND lifecycle_state = ?2 ORDER BY id LIMIT ?3";
const LIST_IN_STATE_AFTER: &str =
    "SELECT id, data FROM identities WHERE prof = ?1 AND lifecycle_state = ?2 AND id > ?3 ORDER BY id LIMIT ?4";

/// The columns [`link_from_row`] reads, in its order.
const LINK_SELECT: &str = "SELECT connection, account_id, state, identity, candidates FROM identity_links";

/// The profile's key, if the store has ever recorded anything for it.
pub(super) fn profile_key(db: &Connection, p: &ProfileRef) -> Result<Option<i64>, StoreError> {
    Ok(db
        .prepare_cached("SELECT prof FROM profiles WHERE namespace = ?1 AND name = ?2")?
        .query_row(params![p.namespace, p.name], |r| r.get(0))
        .optional()?)
}

fn ensure_profile_key(tx: &Transaction<'_>, p: &ProfileRef) -> Result<i64, StoreError> {
    if let Some(key) = profile_key(tx, p)? {
        return Ok(key);
    }
    tx.prepare_cached("INSERT INTO profiles (namespace, name) VALUES (?1, ?2)")?
        .execute(params![p.namespace, p.name])?;
    Ok(tx.last_insert_rowid())
}

/// The key and accounts version of connection `name` of `namespace`, if the
/// store knows it.
fn connection_version(db: &Connection, namespace: &str, name: &str) -> Result<Option<(i64, u64)>, StoreError> {
    let found: Option<(i64, i64)> = db
        .prepare_cached("SELECT conn, version FROM connections WHERE namespace = ?1 AND name = ?2")?
        .query_row(params![namespace, name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    found.map(|(key, version)| Ok((key, from_i64(version)?))).transpose()
}

pub(super) fn connection_versions(
    db: &Connection,
    namespace: &str,
    names: &[String],
) -> Result<BTreeMap<String, u64>, StoreError> {
    names
        .iter()
        .map(|name| Ok((name.clone(), connection_version(db, namespace, name)?.map_or(0, |(_, version)| version))))
        .collect()
}

pub(super) fn profile_state(db: &Connection, p: &ProfileRef) -> Result<ProfileState, StoreError> {
    match profile_key(db, p)? {
        Some(key) => state_of(db, key),
        None => Ok(ProfileState::default()),
    }
}

fn state_of(db: &Connection, key: i64) -> Result<ProfileState, StoreError> {
    type RawState =
        (Option<String>, Option<i64>, String, Option<String>, Option<String>, Option<String>, Option<String>);
    let raw: Option<RawState> = db
        .prepare_cached(
            "SELECT applied_spec, applied_generation, seen_versions, last_scheduled, next_time_based, mapping_hash, \
             summary FROM profiles WHERE prof = ?1",
        )?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .optional()?;
    let Some((applied_spec, applied_generation, seen_versions, last_scheduled, next_time_based, mapping_hash, summary)) =
        raw
    else {
        return Ok(ProfileState::default());
    };
    decode_state(StateColumns {
        applied_spec,
        applied_generation,
        seen_versions: &seen_versions,
        last_scheduled: last_scheduled.as_deref(),
        next_time_based: next_time_based.as_deref(),
        mapping_hash,
        summary: summary.as_deref(),
    })
}

/// Everything a processing run reads; `db` should be one read transaction.
pub(super) fn snapshot(
    db: &Connection,
    p: &ProfileRef,
    connections: &[String],
) -> Result<ProcessingSnapshot, StoreError> {
    let mut snapshot = ProcessingSnapshot::default();
    for name in connections {
        if snapshot.versions.contains_key(name) {
            continue;
        }
        // Every name asked for is in both maps, known or not, so the caller
        // can index them without checking.
        let (accounts, version) = match connection_version(db, &p.namespace, name)? {
            Some((key, version)) => (accounts_of(db, key)?, version),
            None => (Vec::new(), 0),
        };
        snapshot.accounts.insert(name.clone(), accounts);
        snapshot.versions.insert(name.clone(), version);
    }
    if let Some(key) = profile_key(db, p)? {
        let mut stmt = db.prepare_cached("SELECT id, data FROM identities WHERE prof = ?1")?;
        let mut rows = stmt.query([key])?;
        while let Some(row) = rows.next()? {
            let identity = identity_from_row(row)?;
            snapshot.identities.insert(identity.id.clone(), identity);
        }
        let mut stmt = db.prepare_cached(&format!("{LINK_SELECT} WHERE prof = ?1"))?;
        let mut rows = stmt.query([key])?;
        while let Some(row) = rows.next()? {
            let link = link_from_row(row)?;
            snapshot.links.insert((link.connection.clone(), link.account_id.clone()), link);
        }
        snapshot.state = state_of(db, key)?;
    }
    Ok(snapshot)
}

/// What changed since the profile last processed (see
/// [`IdentityStore::processing_delta`]); `db` should be one read
/// transaction. Reads the change marks of each connection past the version
/// the profile saw, then only the accounts and identities they name, each by
/// key.
pub(super) fn delta(
    db: &Connection,
    p: &ProfileRef,
    connections: &[String],
    now: Timestamp,
) -> Result<Option<ProcessingDelta>, StoreError> {
    let Some(authoritative) = connections.first() else { return Ok(None) };
    let Some(prof) = profile_key(db, p)? else { return Ok(None) };
    let mut delta = ProcessingDelta { state: state_of(db, prof)?, ..ProcessingDelta::default() };
    let mut keys: BTreeMap<&str, i64> = BTreeMap::new();
    for name in connections {
        if delta.versions.contains_key(name) {
            continue;
        }
        let Some(&seen) = delta.state.seen_versions.get(name) else { return Ok(None) };
        let found: Option<(i64, i64, i64)> = db
            .prepare_cached("SELECT conn, version, marked_from FROM connections WHERE namespace = ?1 AND name = ?2")?
            .query_row(params![p.namespace, name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let (changed, version) = match found {
            // Never synced: nothing of it, then as now.
            None if seen == 0 => (Vec::new(), 0),
            None => return Ok(None),
            Some((conn, version, marked_from)) => {
                let (version, marked_from) = (from_i64(version)?, from_i64(marked_from)?);
                // Changes before `marked_from` left no marks; a version
                // ahead of the store's is one this store never had.
                if seen < marked_from || seen > version {
                    return Ok(None);
                }
                keys.insert(name, conn);
                let mut stmt =
                    db.prepare_cached("SELECT id FROM account_marks WHERE conn = ?1 AND version > ?2 ORDER BY id")?;
                let ids = stmt.query_map(params![conn, to_i64("seen version", seen)?], |r| r.get::<_, String>(0))?;
                (ids.collect::<Result<Vec<_>, _>>()?, version)
            }
        };
        delta.versions.insert(name.clone(), version);
        delta.changed.insert(name.clone(), changed);
    }
    let mut stmt = db.prepare_cached("SELECT data, hash FROM accounts WHERE conn = ?1 AND id = ?2")?;
    let mut read_account = |delta: &mut ProcessingDelta, name: &str, id: &str| -> Result<(), StoreError> {
        let Some(&conn) = keys.get(name) else { return Ok(()) };
        let accounts = delta.accounts.entry(name.to_string()).or_default();
        if accounts.contains_key(id) {
            return Ok(());
        }
        let mut rows = stmt.query(params![conn, id])?;
        if let Some(row) = rows.next()? {
            accounts.insert(id.to_string(), account_from_row(row)?);
        }
        Ok(())
    };
    for (name, ids) in delta.changed.clone() {
        for id in &ids {
            read_account(&mut delta, &name, id)?;
        }
    }
    let mut stmt = db.prepare_cached("SELECT id, data FROM identities WHERE prof = ?1 AND id = ?2")?;
    for id in delta.changed.get(authoritative).cloned().unwrap_or_default() {
        let mut rows = stmt.query(params![prof, id])?;
        let Some(row) = rows.next()? else { continue };
        let identity = identity_from_row(row)?;
        for link in identity.accounts.iter().skip(1) {
            read_account(&mut delta, &link.connection, &link.account_id)?;
        }
        delta.identities.insert(identity.id.clone(), identity);
    }
    // Identities whose time has come, off the partial index: none at all
    // on most runs, so a run over everyone with nothing changed reads
    // nothing of the 100,000.
    let mut stmt = db.prepare_cached(
        "SELECT id, data FROM identities WHERE prof = ?1 AND time_changes_at IS NOT NULL AND time_changes_at <= ?2 \
         ORDER BY id",
    )?;
    let mut rows = stmt.query(params![prof, time_key(now)])?;
    let mut due = Vec::new();
    while let Some(row) = rows.next()? {
        due.push(identity_from_row(row)?);
    }
    drop(rows);
    for identity in due {
        read_account(&mut delta, authoritative, &identity.id)?;
        for link in identity.accounts.iter().skip(1) {
            read_account(&mut delta, &link.connection, &link.account_id)?;
        }
        delta.time_due.push(identity.id.clone());
        delta.identities.insert(identity.id.clone(), identity);
    }
    Ok(Some(delta))
}

/// `identities.time_changes_at` of an instant: microseconds since the
/// epoch, rounded down, so that an identity is read as due at or before
/// its instant, never after it.
fn time_key(at: Timestamp) -> i64 {
    at.as_microsecond()
}

/// A `(data, hash)` row of `accounts`.
fn account_from_row(row: &Row<'_>) -> Result<(Account, ContentHash), StoreError> {
    let account = decode_account(row.get_ref(0)?.as_str().map_err(|e| corrupt("account data", e))?)?;
    let hash = row
        .get_ref(1)?
        .as_blob()
        .ok()
        .and_then(ContentHash::from_slice)
        .ok_or_else(|| StoreError::Corrupt(format!("account {:?} has no 32-byte content hash", account.id)))?;
    Ok((account, hash))
}

/// The connection's accounts in id order, streamed off the (conn, id) index.
fn accounts_of(db: &Connection, key: i64) -> Result<Vec<(Account, ContentHash)>, StoreError> {
    let mut stmt = db.prepare_cached("SELECT data, hash FROM accounts WHERE conn = ?1 ORDER BY id")?;
    let mut rows = stmt.query([key])?;
    let mut accounts = Vec::new();
    while let Some(row) = rows.next()? {
        accounts.push(account_from_row(row)?);
    }
    Ok(accounts)
}

/// A commit with its JSON already made, so that serializing happens before
/// the write lock is taken. The vectors run parallel to the commit's.
pub(super) struct EncodedCommit<'a> {
    commit: &'a ProcessingCommit,
    identities: Vec<String>,
    candidates: Vec<Option<String>>,
    seen_versions: String,
}

pub(super) fn encode_commit(commit: &ProcessingCommit) -> Result<EncodedCommit<'_>, StoreError> {
    let identities = commit
        .upserts
        .iter()
        .map(|identity| {
            serde_json::to_string(identity)
                .map_err(|e| StoreError::Internal(format!("cannot encode identity {:?}: {e}", identity.id)))
        })
        .collect::<Result<_, _>>()?;
    let candidates = commit.link_upserts.iter().map(|link| encode_candidates(&link.candidates)).collect();
    Ok(EncodedCommit { commit, identities, candidates, seen_versions: encode_versions(&commit.state.seen_versions) })
}

/// Applies `encoded` and records `run`; `tx` is the commit's one transaction.
pub(super) fn write_commit(
    tx: &Transaction<'_>,
    p: &ProfileRef,
    encoded: &EncodedCommit<'_>,
    run: &ProcessingRunRecord,
    retention: &Retention,
) -> Result<RunId, StoreError> {
    let commit = encoded.commit;
    let key = ensure_profile_key(tx, p)?;
    // Deletes before upserts: an id in both ends up with the record the
    // upsert carries, never with nothing and never with a stale record.
    let mut delete = tx.prepare_cached("DELETE FROM identities WHERE prof = ?1 AND id = ?2")?;
    for id in &commit.deletes {
        delete.execute(params![key, id])?;
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO identities (prof, id, lifecycle_state, data, time_changes_at) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (prof, id) DO UPDATE SET lifecycle_state = excluded.lifecycle_state, data = excluded.data, \
         time_changes_at = excluded.time_changes_at",
    )?;
    for (identity, data) in commit.upserts.iter().zip(&encoded.identities) {
        upsert.execute(params![
            key,
            identity.id,
            identity.lifecycle_state,
            data,
            identity.time_changes_at.map(time_key)
        ])?;
    }
    let mut delete =
        tx.prepare_cached("DELETE FROM identity_links WHERE prof = ?1 AND connection = ?2 AND account_id = ?3")?;
    for (connection, account_id) in &commit.link_deletes {
        delete.execute(params![key, connection, account_id])?;
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO identity_links (prof, connection, account_id, state, identity, candidates) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (prof, connection, account_id) DO UPDATE SET state = excluded.state, \
         identity = excluded.identity, candidates = excluded.candidates",
    )?;
    for (link, candidates) in commit.link_upserts.iter().zip(&encoded.candidates) {
        upsert.execute(params![
            key,
            link.connection,
            link.account_id,
            link.state.as_str(),
            link.identity,
            candidates
        ])?;
    }
    write_state(tx, key, &commit.state, &encoded.seen_versions)?;
    insert_run(tx, key, run, retention)
}

fn write_state(tx: &Transaction<'_>, key: i64, state: &ProfileState, seen_versions: &str) -> Result<(), StoreError> {
    let summary = encode_summary(state)?;
    tx.prepare_cached(
        "UPDATE profiles SET applied_spec = ?2, applied_generation = ?3, seen_versions = ?4, last_scheduled = ?5, \
         next_time_based = ?6, mapping_hash = ?7, summary = ?8 WHERE prof = ?1",
    )?
    .execute(params![
        key,
        state.applied_spec,
        state.applied_generation,
        seen_versions,
        state.last_scheduled.map(|t| t.to_string()),
        state.next_time_based.map(|t| t.to_string()),
        state.mapping_hash,
        summary,
    ])?;
    Ok(())
}

pub(super) fn record_run(
    tx: &Transaction<'_>,
    p: &ProfileRef,
    run: &ProcessingRunRecord,
    retention: &Retention,
) -> Result<RunId, StoreError> {
    let key = ensure_profile_key(tx, p)?;
    insert_run(tx, key, run, retention)
}

/// Records the run in the profile's history, then prunes the history to
/// `retention`.
fn insert_run(
    tx: &Transaction<'_>,
    key: i64,
    run: &ProcessingRunRecord,
    retention: &Retention,
) -> Result<RunId, StoreError> {
    tx.prepare_cached(
        "INSERT INTO processing_runs (prof, trigger_kind, request, started_at, finished_at, outcome, processed, \
         changed, errors, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        key,
        run.trigger.as_str(),
        run.request,
        run.started_at.to_string(),
        run.finished_at.to_string(),
        run.outcome.as_str(),
        to_i64("processed count", run.processed)?,
        to_i64("changed count", run.changed)?,
        to_i64("errors count", run.errors)?,
        run.message,
    ])?;
    let id = tx.last_insert_rowid();
    changes::prune_processing(tx, key, retention, run.finished_at)?;
    Ok(id)
}

pub(super) fn runs(db: &Connection, p: &ProfileRef, limit: usize) -> Result<Vec<ProcessingRunRecord>, StoreError> {
    let Some(key) = profile_key(db, p)? else { return Ok(Vec::new()) };
    // Past i64::MAX is "all" anyway.
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = db.prepare_cached(
        "SELECT run_id, trigger_kind, request, started_at, finished_at, outcome, processed, changed, errors, message \
         FROM processing_runs WHERE prof = ?1 ORDER BY run_id DESC LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![key, limit])?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next()? {
        runs.push(run_from_row(row)?);
    }
    Ok(runs)
}

fn run_from_row(row: &Row<'_>) -> Result<ProcessingRunRecord, StoreError> {
    let id: RunId = row.get(0)?;
    let outcome: String = row.get(5)?;
    Ok(ProcessingRunRecord {
        id,
        trigger: parse_trigger(id, &row.get::<_, String>(1)?)?,
        request: row.get(2)?,
        started_at: parse_time(&row.get::<_, String>(3)?)?,
        finished_at: parse_time(&row.get::<_, String>(4)?)?,
        outcome: RunOutcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("processing run {id}: unknown outcome {outcome:?}")))?,
        processed: from_i64(row.get(6)?)?,
        changed: from_i64(row.get(7)?)?,
        errors: from_i64(row.get(8)?)?,
        message: row.get(9)?,
    })
}

pub(super) fn get_identity(db: &Connection, p: &ProfileRef, id: &str) -> Result<Option<Identity>, StoreError> {
    let Some(key) = profile_key(db, p)? else { return Ok(None) };
    let mut stmt = db.prepare_cached("SELECT id, data FROM identities WHERE prof = ?1 AND id = ?2")?;
    let mut rows = stmt.query(params![key, id])?;
    rows.next()?.map(identity_from_row).transpose()
}

pub(super) fn list_identities(
    db: &Connection,
    p: &ProfileRef,
    state: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Identity>, StoreError> {
    let Some(key) = profile_key(db, p)? else { return Ok(Vec::new()) };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt;
    let mut rows = match (state, after) {
        (None, None) => {
            stmt = db.prepare_cached(LIST_ALL)?;
            stmt.query(params![key, limit])?
        }
        (None, Some(after)) => {
            stmt = db.prepare_cached(LIST_ALL_AFTER)?;
            stmt.query(params![key, after, limit])?
        }
        (Some(state), None) => {
            stmt = db.prepare_cached(LIST_IN_STATE)?;
            stmt.query(params![key, state, limit])?
        }
        (Some(state), Some(after)) => {
            stmt = db.prepare_cached(LIST_IN_STATE_AFTER)?;
            stmt.query(params![key, state, after, limit])?
        }
    };
    let mut identities = Vec::new();
    while let Some(row) = rows.next()? {
        identities.push(identity_from_row(row)?);
    }
    Ok(identities)
}

/// An `(id, data)` row, checked to hold the identity it is keyed by.
pub(super) fn identity_from_row(row: &Row<'_>) -> Result<Identity, StoreError> {
    let id = row.get_ref(0)?.as_str().map_err(|e| corrupt("identity id", e))?;
    let data = row.get_ref(1)?.as_str().map_err(|e| corrupt("identity data", e))?;
    let identity: Identity = serde_json::from_str(data).map_err(|e| corrupt("identity data", e))?;
    if identity.id != id {
        return Err(StoreError::Corrupt(format!("identity row {id:?} holds identity {:?}", identity.id)));
    }
    Ok(identity)
}

pub(super) fn list_links(
    db: &Connection,
    p: &ProfileRef,
    state: Option<LinkState>,
) -> Result<Vec<LinkRecord>, StoreError> {
    let Some(key) = profile_key(db, p)? else { return Ok(Vec::new()) };
    // Both read the profile's range of the primary key, already in order.
    let mut stmt;
    let mut rows = match state {
        Some(state) => {
            stmt = db.prepare_cached(&format!(
                "{LINK_SELECT} WHERE prof = ?1 AND state = ?2 ORDER BY connection, account_id"
            ))?;
            stmt.query(params![key, state.as_str()])?
        }
        None => {
            stmt = db.prepare_cached(&format!("{LINK_SELECT} WHERE prof = ?1 ORDER BY connection, account_id"))?;
            stmt.query([key])?
        }
    };
    let mut links = Vec::new();
    while let Some(row) = rows.next()? {
        links.push(link_from_row(row)?);
    }
    Ok(links)
}

fn link_from_row(row: &Row<'_>) -> Result<LinkRecord, StoreError> {
    let connection: String = row.get(0)?;
    let account_id: String = row.get(1)?;
    let state: String = row.get(2)?;
    let state = LinkState::parse(&state).ok_or_else(|| {
        StoreError::Corrupt(format!("link of account {account_id:?} of {connection:?}: unknown state {state:?}"))
    })?;
    let candidates = match row.get_ref(4)?.as_str_or_null().map_err(|e| corrupt("link candidates", e))? {
        Some(json) => serde_json::from_str(json).map_err(|e| corrupt("link candidates", e))?,
        None => Vec::new(),
    };
    Ok(LinkRecord { connection, account_id, state, identity: row.get(3)?, candidates })
}

/// Profiles with identities, links or a state other than the default: a
/// purged profile keeps its row (for its run history) but is not listed, so
/// that whoever purges profiles that no longer exist does so once.
pub(super) fn profiles(db: &Connection) -> Result<Vec<ProfileRef>, StoreError> {
    let mut stmt = db.prepare_cached(
        "SELECT namespace, name FROM profiles p \
         WHERE applied_spec IS NOT NULL OR applied_generation IS NOT NULL OR seen_versions <> ?1 \
         OR last_scheduled IS NOT NULL OR next_time_based IS NOT NULL \
         OR EXISTS (SELECT 1 FROM identities i WHERE i.prof = p.prof) \
         OR EXISTS (SELECT 1 FROM identity_links l WHERE l.prof = p.prof) \
         ORDER BY namespace, name",
    )?;
    let profiles = stmt.query_map([NO_VERSIONS], |r| Ok(ProfileRef { namespace: r.get(0)?, name: r.get(1)? }))?;
    Ok(profiles.collect::<Result<_, _>>()?)
}

/// Removes the profile's identities and links and resets its state; returns
/// identities removed.
pub(super) fn purge(tx: &Transaction<'_>, p: &ProfileRef) -> Result<u64, StoreError> {
    let Some(key) = profile_key(tx, p)? else { return Ok(0) };
    let removed = tx.prepare_cached("DELETE FROM identities WHERE prof = ?1")?.execute([key])?;
    tx.prepare_cached("DELETE FROM identity_links WHERE prof = ?1")?.execute([key])?;
    // drift hook: a purged profile's drift cases and hold go with it.
    super::drift::purge(tx, key)?;
    write_state(tx, key, &ProfileState::default(), NO_VERSIONS)?;
    u64::try_from(removed).map_err(|_| StoreError::Corrupt("negative row count".into()))
}

impl IdentityStore for SqliteStore {
    fn connection_versions(&self, namespace: &str, names: &[String]) -> Result<BTreeMap<String, u64>, StoreError> {
        self.read(|tx| connection_versions(tx, namespace, names))
    }

    fn profile_state(&self, p: &ProfileRef) -> Result<ProfileState, StoreError> {
        profile_state(&*self.lock()?, p)
    }

    fn processing_snapshot(&self, p: &ProfileRef, connections: &[String]) -> Result<ProcessingSnapshot, StoreError> {
        let started = Instant::now();
        let snapshot = self.read(|tx| snapshot(tx, p, connections))?;
        snapshot.trace_read(p, started);
        Ok(snapshot)
    }

    fn processing_delta(
        &self,
        p: &ProfileRef,
        connections: &[String],
        now: Timestamp,
    ) -> Result<Option<ProcessingDelta>, StoreError> {
        let started = Instant::now();
        let delta = self.read(|tx| delta(tx, p, connections, now))?;
        if let Some(delta) = &delta {
            delta.trace_read(p, started);
        }
        Ok(delta)
    }

    fn commit_processing(
        &self,
        p: &ProfileRef,
        commit: &ProcessingCommit,
        run: &ProcessingRunRecord,
    ) -> Result<RunId, StoreError> {
        let started = Instant::now();
        // Serializing 100,000 identities is the slow part; syncs committing
        // meanwhile should not wait for it.
        let encoded = encode_commit(commit)?;
        let retention = self.retention;
        let id = self.write(|tx| write_commit(tx, p, &encoded, run, &retention))?;
        tracing::debug!(
            profile = %p,
            run = id,
            upserted = commit.upserts.len(),
            deleted = commit.deletes.len(),
            elapsed_ms = started.elapsed().as_millis(),
            "committed a processing run"
        );
        Ok(id)
    }

    fn get_identity(&self, p: &ProfileRef, id: &str) -> Result<Option<Identity>, StoreError> {
        get_identity(&*self.lock()?, p, id)
    }

    fn list_identities(
        &self,
        p: &ProfileRef,
        state: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Identity>, StoreError> {
        list_identities(&*self.lock()?, p, state, after, limit)
    }

    fn list_links(&self, p: &ProfileRef, state: Option<LinkState>) -> Result<Vec<LinkRecord>, StoreError> {
        list_links(&*self.lock()?, p, state)
    }

    fn profiles(&self) -> Result<Vec<ProfileRef>, StoreError> {
        profiles(&*self.lock()?)
    }

    fn purge_profile(&self, p: &ProfileRef) -> Result<u64, StoreError> {
        let removed = self.write(|tx| purge(tx, p))?;
        tracing::info!(profile = %p, removed, "purged a profile's identities");
        Ok(removed)
    }
}

impl ProcessingHistory for SqliteStore {
    fn record_processing_run(&self, p: &ProfileRef, run: &ProcessingRunRecord) -> Result<RunId, StoreError> {
        let retention = self.retention;
        self.write(|tx| record_run(tx, p, run, &retention))
    }

    fn processing_runs(&self, p: &ProfileRef, limit: usize) -> Result<Vec<ProcessingRunRecord>, StoreError> {
        runs(&*self.lock()?, p, limit)
    }
}

#[cfg(test)]
impl crate::store::contract::identities::Vandal for SqliteStore {
    fn vandalize(&self, sql: &str) {
        self.lock().expect("store lock").execute_batch(sql).expect("vandalize the SQLite store");
    }
}

/// SQLite's own: failures injected with triggers, rows corrupted behind the
/// store's back, query plans, and migrating databases of older releases.
/// What every backend does is in `store::contract::identities`.
#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use tempfile::TempDir;

    use super::*;
    use crate::model::ConnectionRef;
    use crate::model::Trigger;
    use crate::store::contract::identities::{
        account, ambiguous, bare, commit, correlated, everything, identity, ids, names, profile, run, state, sync,
        uncorrelated, upserts,
    };
    use crate::store::{AccountStore, migrations};

    fn open() -> (TempDir, SqliteStore, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        let store = SqliteStore::open(&path).unwrap();
        (dir, store, path)
    }

    #[test]
    fn a_commit_that_fails_halfway_changes_nothing() {
        let (_dir, store, path) = open();
        let p = profile("people");
        let links = vec![correlated("ldap", "L1", "E1"), uncorrelated("ldap", "L2")];
        store
            .commit_processing(
                &p,
                &commit(vec![identity("E1", Some("Active")), identity("E2", None)], links, state(1)),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
            )
            .unwrap();
        let before = everything(&store, &p);
        let next = ProcessingCommit {
            upserts: vec![identity("E1", Some("Terminated")), identity("E3", None), identity("E4", None)],
            deletes: vec!["E2".into()],
            link_upserts: vec![ambiguous("ldap", "L1", &["E1", "E3"]), correlated("ldap", "L3", "E3")],
            link_deletes: vec![("ldap".into(), "L2".into())],
            state: state(2),
        };

        // Each fault hits a later step of the commit than the one before.
        let saboteur = rusqlite::Connection::open(&path).unwrap();
        for fault in [
            "BEFORE INSERT ON identities WHEN NEW.id = 'E4'",
            "BEFORE INSERT ON identity_links WHEN NEW.account_id = 'L3'",
            "BEFORE UPDATE ON profiles",
            "BEFORE INSERT ON processing_runs",
        ] {
            saboteur
                .execute_batch(&format!(
                    "CREATE TRIGGER sabotage {fault} BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;"
                ))
                .unwrap();
            let failed = store.commit_processing(&p, &next, &run(Trigger::Manual, RunOutcome::Succeeded, 5));
            assert!(matches!(failed, Err(StoreError::Sqlite(_))), "{fault}: {failed:?}");
            assert_eq!(everything(&store, &p), before, "{fault}");
            saboteur.execute_batch("DROP TRIGGER sabotage;").unwrap();
        }
        // A profile's first commit that fails does not even leave the profile.
        saboteur
            .execute_batch(
                "CREATE TRIGGER sabotage BEFORE INSERT ON processing_runs BEGIN SELECT RAISE(ABORT, 'x'); END;",
            )
            .unwrap();
        let new = profile("new");
        assert!(store.commit_processing(&new, &next, &run(Trigger::Manual, RunOutcome::Succeeded, 5)).is_err());
        assert!(store.record_processing_run(&new, &run(Trigger::Manual, RunOutcome::Failed, 5)).is_err());
        saboteur.execute_batch("DROP TRIGGER sabotage;").unwrap();
        assert_eq!(store.profiles().unwrap(), std::slice::from_ref(&p));
        assert_eq!(everything(&store, &new), Default::default());

        // Once the fault is gone the same commit goes through whole.
        store.commit_processing(&p, &next, &run(Trigger::Manual, RunOutcome::Succeeded, 6)).unwrap();
        let (identities, links, state_after, runs) = everything(&store, &p);
        assert_eq!(ids(&identities), ["E1", "E3", "E4"]);
        assert_eq!(links, [ambiguous("ldap", "L1", &["E1", "E3"]), correlated("ldap", "L3", "E3")]);
        assert_eq!(state_after, state(2));
        assert_eq!(runs.len(), 2);
    }

    #[test]
    fn listing_identities_seeks_an_index_in_id_order() {
        let mut db = Connection::open_in_memory().unwrap();
        migrations::migrate(&mut db).unwrap();
        for (sql, index) in [
            (LIST_ALL, "sqlite_autoindex_identities_1"),
            (LIST_ALL_AFTER, "sqlite_autoindex_identities_1"),
            (LIST_IN_STATE, "identities_by_state"),
            (LIST_IN_STATE_AFTER, "identities_by_state"),
        ] {
            let mut stmt = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let params = rusqlite::params_from_iter(vec![1; stmt.parameter_count()]);
            let plan: Vec<String> = stmt.query_map(params, |r| r.get(3)).unwrap().collect::<Result<_, _>>().unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains(&format!("SEARCH identities USING INDEX {index}")), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        }
    }

    #[test]
    fn unreadable_identity_rows_are_corrupt_not_a_panic() {
        let (_dir, store, path) = open();
        let p = profile("people");
        let one = commit(vec![identity("E1", None), identity("E2", None)], Vec::new(), state(1));
        store.commit_processing(&p, &one, &run(Trigger::Scheduled, RunOutcome::Succeeded, 0)).unwrap();
        let vandal = rusqlite::Connection::open(&path).unwrap();
        // E2's record under E3's key.
        vandal
            .execute_batch("UPDATE identities SET id = 'E3', data = (SELECT data FROM identities WHERE id = 'E2') WHERE id = 'E1';")
            .unwrap();
        assert!(matches!(store.get_identity(&p, "E3"), Err(StoreError::Corrupt(_))));
        assert!(matches!(store.processing_snapshot(&p, &[]), Err(StoreError::Corrupt(_))));
        vandal.execute_batch("UPDATE identities SET data = 'not json' WHERE id = 'E3';").unwrap();
        assert!(matches!(store.list_identities(&p, None, None, 10), Err(StoreError::Corrupt(_))));
        assert_eq!(store.get_identity(&p, "E2").unwrap(), Some(identity("E2", None)));
    }

    /// A database as the first release left it: schema version 1.
    fn version_1_database(path: &Path, accounts: &[Account]) {
        let db = rusqlite::Connection::open(path).unwrap();
        db.execute_batch(migrations::MIGRATIONS[0]).unwrap();
        db.pragma_update(None, "user_version", 1).unwrap();
        db.execute("INSERT INTO connections (namespace, name) VALUES ('team-a', 'hr')", []).unwrap();
        let conn = db.last_insert_rowid();
        for account in accounts {
            db.execute(
                "INSERT INTO accounts (conn, id, hash, data) VALUES (?1, ?2, ?3, ?4)",
                params![conn, account.id, &account.content_hash().0[..], account.canonical_json()],
            )
            .unwrap();
        }
    }

    #[test]
    fn identities_written_before_time_tracking_are_all_evaluated_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        {
            let db = rusqlite::Connection::open(&path).unwrap();
            for migration in &migrations::MIGRATIONS[..5] {
                db.execute_batch(migration).unwrap();
            }
            db.pragma_update(None, "user_version", 5).unwrap();
            db.execute("INSERT INTO profiles (namespace, name, mapping_hash) VALUES ('team-a', 'people', 'abc')", [])
                .unwrap();
            let prof = db.last_insert_rowid();
            let data = serde_json::to_string(&bare("E1")).unwrap();
            db.execute("INSERT INTO identities (prof, id, data) VALUES (?1, 'E1', ?2)", params![prof, data]).unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let p = ProfileRef::new("team-a", "people");
        // No identity matches its inputs and no delta can be trusted: the
        // next run is over everyone and evaluates each identity.
        assert_eq!(store.get_identity(&p, "E1").unwrap().unwrap().input_hash, "");
        assert_eq!(store.profile_state(&p).unwrap().mapping_hash, None);
    }

    #[test]
    fn a_version_1_database_migrates_keeping_its_accounts_at_version_0() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        let accounts = [account("E1", 1), account("E2", 1)];
        version_1_database(&path, &accounts);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::latest_version());
        let hr = ConnectionRef::new("team-a", "hr");
        assert_eq!(store.list_accounts(&hr, None, 10).unwrap(), accounts);
        assert_eq!(store.connection_versions("team-a", &names(&["hr"])).unwrap()["hr"], 0);
        let snapshot = store.processing_snapshot(&profile("people"), &names(&["hr"])).unwrap();
        assert_eq!(snapshot.accounts["hr"].len(), 2);
        assert_eq!(snapshot.accounts["hr"][1], (account("E2", 1), account("E2", 1).content_hash()));
        assert!(store.profiles().unwrap().is_empty());

        // Syncs carry on counting from there.
        sync(&store, &hr, &upserts(&[account("E1", 2)]));
        assert_eq!(store.connection_versions("team-a", &names(&["hr"])).unwrap()["hr"], 1);
    }
}
