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
use crate::store::codec::{corrupt, decode_account, from_i64, parse_time, parse_trigger, to_i64};
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

/// The JSON of an empty `seen_versions`, the column's default.
const NO_VERSIONS: &str = "{}";

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
    Ok(ProfileState {
        applied_spec,
        applied_generation,
        seen_versions: serde_json::from_str(&seen_versions).map_err(|e| corrupt("profile seen_versions", e))?,
        last_scheduled: last_scheduled.as_deref().map(parse_time).transpose()?,
        next_time_based: next_time_based.as_deref().map(parse_time).transpose()?,
        mapping_hash,
        summary: summary.as_deref().map(serde_json::from_str).transpose().map_err(|e| corrupt("profile summary", e))?,
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

fn encode_candidates(candidates: &[String]) -> Option<String> {
    // A list of strings always serializes.
    (!candidates.is_empty()).then(|| serde_json::to_string(candidates).unwrap_or_default())
}

fn encode_versions(versions: &BTreeMap<String, u64>) -> String {
    // A map of strings to integers always serializes.
    serde_json::to_string(versions).unwrap_or_else(|_| NO_VERSIONS.to_owned())
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
    let summary = state
        .summary
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Internal(format!("cannot encode a profile summary: {e}")))?;
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
        tracing::debug!(
            profile = %p,
            accounts = snapshot.accounts.values().map(Vec::len).sum::<usize>(),
            identities = snapshot.identities.len(),
            elapsed_ms = started.elapsed().as_millis(),
            "read a processing snapshot"
        );
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
            tracing::debug!(
                profile = %p,
                changed = delta.changed.values().map(Vec::len).sum::<usize>(),
                identities = delta.identities.len(),
                time_due = delta.time_due.len(),
                elapsed_ms = started.elapsed().as_millis(),
                "read what changed since the last processing"
            );
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
mod tests {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use jiff::Timestamp;
    use serde_json::json;
    use tempfile::TempDir;

    use super::*;
    use crate::model::{AccountLink, ConnectionRef, Counts, NewRun, RunFinish};
    use crate::model::{RunMode, Trigger};
    use crate::store::{AccountStore, CursorUpdate, StagedChange, migrations};

    fn open() -> (TempDir, SqliteStore, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        let store = SqliteStore::open(&path).unwrap();
        (dir, store, path)
    }

    fn time(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp::new(1_750_000_000 + seconds, nanos).unwrap()
    }

    fn profile(name: &str) -> ProfileRef {
        ProfileRef::new("team-a", name)
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// An identity with every field set.
    fn identity(id: &str, state: Option<&str>) -> Identity {
        Identity {
            id: id.into(),
            attributes: BTreeMap::from([
                ("email".to_string(), json!(format!("{id}@example.com"))),
                ("level".to_string(), json!(3)),
                ("nested".to_string(), json!({"a": [1, "two", null], "é": true})),
            ]),
            lifecycle_state: state.map(Into::into),
            manager_ref: Some("M-1".into()),
            manager: Some("M-1".into()),
            top_of_hierarchy: true,
            accounts: vec![
                AccountLink { connection: "hr".into(), account_id: id.into() },
                AccountLink { connection: "ldap".into(), account_id: format!("uid={id}") },
            ],
            errors: BTreeMap::from([("title".to_string(), "no such key: jobTitle".to_string())]),
            input_hash: format!("{:0>64}", id.len()),
            created: time(1, 123_456_789),
            modified: time(2, 1),
            next_processing: Some(time(86_400, 999_999_999)),
            next_processing_value: Some("2025-07-01".into()),
            correlation_keys: BTreeMap::from([("email".to_string(), format!("{id}@example.com"))]),
            keys_hash: "cd".repeat(32),
            time_changes_at: Some(time(172_800, 5_000)),
        }
    }

    /// An identity with every optional field absent.
    fn bare(id: &str) -> Identity {
        Identity { input_hash: "00".into(), ..Identity::new(id, "hr", time(0, 0)) }
    }

    fn correlated(connection: &str, account_id: &str, identity: &str) -> LinkRecord {
        LinkRecord {
            connection: connection.into(),
            account_id: account_id.into(),
            state: LinkState::Correlated,
            identity: Some(identity.into()),
            candidates: Vec::new(),
        }
    }

    fn uncorrelated(connection: &str, account_id: &str) -> LinkRecord {
        LinkRecord {
            connection: connection.into(),
            account_id: account_id.into(),
            state: LinkState::Uncorrelated,
            identity: None,
            candidates: Vec::new(),
        }
    }

    fn ambiguous(connection: &str, account_id: &str, candidates: &[&str]) -> LinkRecord {
        LinkRecord {
            connection: connection.into(),
            account_id: account_id.into(),
            state: LinkState::Ambiguous,
            identity: None,
            candidates: names(candidates),
        }
    }

    fn state(generation: i64) -> ProfileState {
        ProfileState {
            applied_spec: Some(format!(r#"{{"generation":{generation},"mappings":[]}}"#)),
            applied_generation: Some(generation),
            // u64::MAX: versions are u64 end to end, not squeezed into i64.
            seen_versions: BTreeMap::from([("hr".to_string(), 3), ("ldap".to_string(), u64::MAX)]),
            last_scheduled: Some(time(3_600, 5)),
            next_time_based: Some(time(7_200, 0)),
            mapping_hash: Some(format!("mapping-{generation}")),
            summary: Some(crate::model::IdentitySummary {
                identities: 2,
                lifecycle_states: BTreeMap::from([("active".to_string(), 2)]),
                unresolved_managers: 1,
                ..Default::default()
            }),
        }
    }

    fn run(trigger: Trigger, outcome: RunOutcome, at: i64) -> ProcessingRunRecord {
        ProcessingRunRecord {
            id: 0,
            trigger,
            request: Some(format!("resync-{at}")),
            started_at: time(at, 1),
            finished_at: time(at + 1, 999),
            outcome,
            processed: 100,
            changed: 7,
            errors: 2,
            message: format!("{trigger} at {at}"),
        }
    }

    fn commit(upserts: Vec<Identity>, links: Vec<LinkRecord>, state: ProfileState) -> ProcessingCommit {
        ProcessingCommit { upserts, deletes: Vec::new(), link_upserts: links, link_deletes: Vec::new(), state }
    }

    fn account(id: &str, version: u32) -> Account {
        let mut a = Account::new(id);
        a.email = Some(format!("{id}.v{version}@example.com"));
        a.attributes.insert("version".into(), json!(version));
        a.normalize();
        a
    }

    /// A whole successful sync of `c`.
    fn sync(store: &SqliteStore, c: &ConnectionRef, changes: &[StagedChange]) {
        let run = store
            .start_run(&NewRun {
                connection: c.clone(),
                trigger: Trigger::Scheduled,
                request: None,
                requested_mode: RunMode::Full,
                holder: "idsync-0".into(),
                started_at: time(0, 0),
            })
            .unwrap();
        store.stage(run, changes).unwrap();
        let finish = RunFinish {
            outcome: RunOutcome::Succeeded,
            mode: Some(RunMode::Full),
            counts: Counts::default(),
            message: String::new(),
            finished_at: time(1, 0),
        };
        store.commit_run(run, CursorUpdate::Keep, &finish).unwrap();
    }

    fn upserts(accounts: &[Account]) -> Vec<StagedChange> {
        accounts.iter().cloned().map(StagedChange::Upsert).collect()
    }

    fn sorted_identities(identities: &HashMap<String, Identity>) -> Vec<Identity> {
        let mut all: Vec<Identity> = identities.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn ids(identities: &[Identity]) -> Vec<&str> {
        identities.iter().map(|i| i.id.as_str()).collect()
    }

    /// Everything the store holds for a profile, to compare before and after.
    fn everything(store: &SqliteStore, p: &ProfileRef) -> (Vec<Identity>, Vec<LinkRecord>, ProfileState, Vec<RunId>) {
        let snapshot = store.processing_snapshot(p, &[]).unwrap();
        let mut links: Vec<LinkRecord> = snapshot.links.into_values().collect();
        links.sort_by(|a, b| (&a.connection, &a.account_id).cmp(&(&b.connection, &b.account_id)));
        assert_eq!(links, store.list_links(p, None).unwrap());
        assert_eq!(snapshot.state, store.profile_state(p).unwrap());
        let runs = store.processing_runs(p, usize::MAX).unwrap().iter().map(|r| r.id).collect();
        (sorted_identities(&snapshot.identities), links, snapshot.state, runs)
    }

    #[test]
    fn a_commit_round_trips_through_the_snapshot() {
        let (_dir, store, _path) = open();
        let p = profile("people");
        let fresh = store.processing_snapshot(&p, &names(&["hr"])).unwrap();
        assert!(fresh.identities.is_empty() && fresh.links.is_empty());
        assert_eq!(fresh.state, ProfileState::default());
        assert_eq!(store.profile_state(&p).unwrap(), ProfileState::default());

        let identities = vec![identity("E2", Some("Active")), bare("E1"), identity("E3", None)];
        let links = vec![
            correlated("ldap", "uid=E2", "E2"),
            uncorrelated("ldap", "uid=nobody"),
            ambiguous("okta", "00u1", &["E1", "E3"]),
        ];
        let first = run(Trigger::EventBased, RunOutcome::Succeeded, 10);
        let id = store.commit_processing(&p, &commit(identities.clone(), links.clone(), state(4)), &first).unwrap();

        let snapshot = store.processing_snapshot(&p, &names(&["hr"])).unwrap();
        let mut expected = identities.clone();
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(sorted_identities(&snapshot.identities), expected);
        assert!(snapshot.identities.iter().all(|(key, identity)| *key == identity.id));
        assert_eq!(snapshot.links.len(), 3);
        for link in &links {
            assert_eq!(snapshot.links.get(&(link.connection.clone(), link.account_id.clone())), Some(link));
        }
        assert_eq!(snapshot.state, state(4));
        assert_eq!(store.profile_state(&p).unwrap(), state(4));
        assert_eq!(store.get_identity(&p, "E2").unwrap(), Some(identity("E2", Some("Active"))));
        assert_eq!(store.get_identity(&p, "E1").unwrap(), Some(bare("E1")));
        assert_eq!(store.get_identity(&p, "e1").unwrap(), None);
        assert_eq!(store.get_identity(&profile("other"), "E1").unwrap(), None);
        assert_eq!(store.processing_runs(&p, 10).unwrap(), [ProcessingRunRecord { id, ..first.clone() }]);

        // An upsert replaces the whole record, including fields it drops;
        // the state is replaced, not merged.
        let mut changed = identity("E2", Some("Terminated"));
        changed.next_processing = None;
        changed.errors.clear();
        let second = run(Trigger::TimeBased, RunOutcome::Succeeded, 20);
        let later = ProfileState { seen_versions: BTreeMap::from([("hr".to_string(), 4)]), ..ProfileState::default() };
        let id2 =
            store.commit_processing(&p, &commit(vec![changed.clone()], Vec::new(), later.clone()), &second).unwrap();
        assert!(id2 > id);
        assert_eq!(store.get_identity(&p, "E2").unwrap(), Some(changed));
        assert_eq!(store.profile_state(&p).unwrap(), later);
        assert_eq!(store.list_links(&p, None).unwrap().len(), 3);
        assert_eq!(
            store.processing_runs(&p, 10).unwrap(),
            [ProcessingRunRecord { id: id2, ..second }, ProcessingRunRecord { id, ..first }]
        );
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
    fn commits_delete_identities_and_links() {
        let (_dir, store, _path) = open();
        let (p, other) = (profile("people"), profile("contractors"));
        let all = || vec![identity("E1", None), identity("E2", None), identity("E3", None)];
        let links = || vec![correlated("ldap", "L1", "E1"), correlated("ldap", "L2", "E2"), uncorrelated("okta", "L1")];
        for q in [&p, &other] {
            store
                .commit_processing(
                    q,
                    &commit(all(), links(), state(1)),
                    &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
                )
                .unwrap();
        }
        let deleting = ProcessingCommit {
            upserts: Vec::new(),
            // Unknown ids are no-ops, not errors.
            deletes: vec!["E2".into(), "E9".into()],
            link_upserts: Vec::new(),
            link_deletes: vec![
                ("ldap".into(), "L2".into()),
                ("okta".into(), "L1".into()),
                ("ldap".into(), "L9".into()),
            ],
            state: state(2),
        };
        store.commit_processing(&p, &deleting, &run(Trigger::EventBased, RunOutcome::Succeeded, 1)).unwrap();
        let (identities, links_after, _, _) = everything(&store, &p);
        assert_eq!(ids(&identities), ["E1", "E3"]);
        assert_eq!(store.get_identity(&p, "E2").unwrap(), None);
        assert_eq!(links_after, [correlated("ldap", "L1", "E1")]);
        // The same ids of another profile stay.
        let (identities, links_after, _, _) = everything(&store, &other);
        assert_eq!(ids(&identities), ["E1", "E2", "E3"]);
        assert_eq!(links_after, links());

        // An id both deleted and upserted in one commit ends up upserted.
        let both = ProcessingCommit {
            upserts: vec![identity("E1", Some("Active"))],
            deletes: vec!["E1".into()],
            ..ProcessingCommit::default()
        };
        store.commit_processing(&p, &both, &run(Trigger::Manual, RunOutcome::Succeeded, 2)).unwrap();
        assert_eq!(store.get_identity(&p, "E1").unwrap(), Some(identity("E1", Some("Active"))));
    }

    #[test]
    fn listing_identities_filters_by_state_orders_by_id_and_pages() {
        let (_dir, store, _path) = open();
        let p = profile("people");
        let scrambled = [
            ("m", Some("Active")),
            ("a10", Some("Terminated")),
            ("B", Some("Active")),
            ("a2", None),
            ("é", Some("Active")),
            ("a1", Some("Active")),
            ("z", Some("Terminated")),
            ("a", Some("Active")),
        ];
        let identities = scrambled.iter().map(|(id, state)| identity(id, *state)).collect();
        store
            .commit_processing(
                &p,
                &commit(identities, Vec::new(), state(1)),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
            )
            .unwrap();
        // Another profile's identities never show.
        store
            .commit_processing(
                &profile("other"),
                &commit(vec![identity("a0", Some("Active"))], Vec::new(), state(1)),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
            )
            .unwrap();

        let list = |state: Option<&str>, after: Option<&str>, limit: usize| {
            store.list_identities(&p, state, after, limit).unwrap()
        };
        assert_eq!(ids(&list(None, None, usize::MAX)), ["B", "a", "a1", "a10", "a2", "m", "z", "é"]);
        assert_eq!(ids(&list(Some("Active"), None, usize::MAX)), ["B", "a", "a1", "m", "é"]);
        assert_eq!(ids(&list(Some("Terminated"), None, usize::MAX)), ["a10", "z"]);
        assert!(list(Some("active"), None, usize::MAX).is_empty());
        assert_eq!(list(Some("Active"), None, 1), [identity("B", Some("Active"))]);

        for state in [None, Some("Active")] {
            let whole = list(state, None, usize::MAX);
            let mut paged = Vec::new();
            let mut after: Option<String> = None;
            // Bounded, so paging that stops advancing fails instead of hanging.
            for _ in 0..scrambled.len() {
                let page = list(state, after.as_deref(), 2);
                assert!(page.len() <= 2);
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                paged.extend(page);
            }
            assert_eq!(paged, whole, "{state:?}");
        }
        // `after` need not be a stored id.
        assert_eq!(ids(&list(Some("Active"), Some("a10"), 5)), ["m", "é"]);
        assert_eq!(ids(&list(None, Some("a11"), 1)), ["a2"]);
        assert!(list(None, None, 0).is_empty());
        assert!(list(None, Some("é"), 5).is_empty());
        assert!(store.list_identities(&profile("never"), None, None, 5).unwrap().is_empty());
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
    fn listing_links_filters_by_state_in_connection_and_account_order() {
        let (_dir, store, _path) = open();
        let p = profile("people");
        let links = vec![
            uncorrelated("okta", "00u2"),
            correlated("ldap", "uid=b", "E2"),
            ambiguous("ldap", "uid=c", &["E1", "E2"]),
            correlated("ldap", "uid=a", "E1"),
            uncorrelated("ldap", "uid=z"),
            ambiguous("ad", "S-1", &["E3", "E4", "E5"]),
            correlated("okta", "00u1", "E3"),
        ];
        store
            .commit_processing(
                &p,
                &commit(Vec::new(), links, state(1)),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
            )
            .unwrap();
        store
            .commit_processing(
                &profile("other"),
                &commit(Vec::new(), vec![correlated("ad", "S-0", "E0")], state(1)),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
            )
            .unwrap();

        let keys = |state| -> Vec<String> {
            store.list_links(&p, state).unwrap().iter().map(|l| format!("{}/{}", l.connection, l.account_id)).collect()
        };
        assert_eq!(
            keys(None),
            ["ad/S-1", "ldap/uid=a", "ldap/uid=b", "ldap/uid=c", "ldap/uid=z", "okta/00u1", "okta/00u2"]
        );
        assert_eq!(keys(Some(LinkState::Correlated)), ["ldap/uid=a", "ldap/uid=b", "okta/00u1"]);
        assert_eq!(keys(Some(LinkState::Uncorrelated)), ["ldap/uid=z", "okta/00u2"]);
        assert_eq!(
            store.list_links(&p, Some(LinkState::Ambiguous)).unwrap(),
            [ambiguous("ad", "S-1", &["E3", "E4", "E5"]), ambiguous("ldap", "uid=c", &["E1", "E2"])]
        );
        assert!(store.list_links(&profile("never"), None).unwrap().is_empty());
    }

    #[test]
    fn connection_versions_move_only_when_accounts_change_and_never_back() {
        let (_dir, store, _path) = open();
        let (hr, ldap) = (ConnectionRef::new("team-a", "hr"), ConnectionRef::new("team-a", "ldap"));
        let wanted = names(&["hr", "ldap", "never-synced"]);
        let versions = || store.connection_versions("team-a", &wanted).unwrap();
        let hr_version = || versions()["hr"];
        assert_eq!(versions(), BTreeMap::from([("hr".into(), 0), ("ldap".into(), 0), ("never-synced".into(), 0)]));
        assert!(store.connection_versions("team-a", &[]).unwrap().is_empty());

        sync(&store, &hr, &upserts(&[account("E1", 1), account("E2", 1)]));
        assert_eq!(hr_version(), 1);
        // Nothing new: the same accounts again, nothing at all, or deleting
        // an account that is not there.
        sync(&store, &hr, &upserts(&[account("E1", 1), account("E2", 1)]));
        sync(&store, &hr, &[]);
        sync(&store, &hr, &[StagedChange::Delete("E9".into())]);
        assert_eq!(hr_version(), 1);
        // One step per commit, however many accounts it changed.
        sync(&store, &hr, &upserts(&[account("E1", 2), account("E2", 1), account("E3", 1)]));
        assert_eq!(hr_version(), 2);
        sync(&store, &hr, &[StagedChange::Delete("E3".into())]);
        assert_eq!(hr_version(), 3);

        // Other connections and the same name in another namespace are apart.
        sync(&store, &ConnectionRef::new("team-b", "hr"), &upserts(&[account("X", 1)]));
        assert_eq!(store.connection_versions("team-b", &names(&["hr"])).unwrap()["hr"], 1);
        assert_eq!(versions(), BTreeMap::from([("hr".into(), 3), ("ldap".into(), 0), ("never-synced".into(), 0)]));
        // A connection whose runs committed nothing is still at 0.
        sync(&store, &ldap, &[]);
        assert_eq!(versions()["ldap"], 0);

        // A purge changes the accounts; one of nothing does not.
        assert_eq!(store.purge_connection(&hr).unwrap(), 2);
        assert_eq!(hr_version(), 4);
        assert_eq!(store.purge_connection(&hr).unwrap(), 0);
        assert_eq!(hr_version(), 4);
        // Back with the very accounts it had before: still a new version.
        sync(&store, &hr, &upserts(&[account("E1", 2), account("E2", 1)]));
        assert_eq!(hr_version(), 5);
        assert_eq!(store.processing_snapshot(&profile("people"), &names(&["hr"])).unwrap().versions["hr"], 5);
    }

    #[test]
    fn the_snapshot_reads_the_named_connections_of_the_profiles_namespace() {
        let (_dir, store, _path) = open();
        let p = profile("people");
        let hr_accounts = [account("E2", 1), account("E10", 2), account("E1", 1)];
        sync(&store, &ConnectionRef::new("team-a", "hr"), &upserts(&hr_accounts));
        sync(&store, &ConnectionRef::new("team-a", "ldap"), &upserts(&[account("uid=a", 1)]));
        sync(&store, &ConnectionRef::new("team-a", "ldap"), &upserts(&[account("uid=a", 2)]));
        sync(&store, &ConnectionRef::new("team-a", "okta"), &upserts(&[account("00u1", 1)]));
        sync(&store, &ConnectionRef::new("team-b", "hr"), &upserts(&[account("B1", 1)]));

        // Asked twice for hr: read once.
        let snapshot = store.processing_snapshot(&p, &names(&["ldap", "hr", "missing", "hr"])).unwrap();
        assert_eq!(snapshot.accounts.keys().collect::<Vec<_>>(), ["hr", "ldap", "missing"]);
        let mut expected: Vec<(Account, ContentHash)> =
            hr_accounts.iter().map(|a| (a.clone(), a.content_hash())).collect();
        expected.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        assert_eq!(snapshot.accounts["hr"], expected);
        assert_eq!(snapshot.accounts["ldap"], [(account("uid=a", 2), account("uid=a", 2).content_hash())]);
        assert!(snapshot.accounts["missing"].is_empty());
        assert_eq!(snapshot.versions, BTreeMap::from([("hr".into(), 1), ("ldap".into(), 2), ("missing".into(), 0)]));

        let elsewhere = store.processing_snapshot(&ProfileRef::new("team-b", "people"), &names(&["hr"])).unwrap();
        assert_eq!(snapshot_ids(&elsewhere.accounts["hr"]), ["B1"]);
        assert!(store.processing_snapshot(&p, &[]).unwrap().accounts.is_empty());
    }

    #[test]
    fn the_delta_reads_only_what_changed_since_the_versions_the_profile_saw() {
        let (_dir, store, path) = open();
        let p = profile("people");
        let (hr, ldap) = (ConnectionRef::new("team-a", "hr"), ConnectionRef::new("team-a", "ldap"));
        let wanted = names(&["hr", "ldap"]);
        sync(&store, &hr, &upserts(&(1..=50).map(|n| account(&format!("E{n:02}"), 1)).collect::<Vec<_>>()));
        sync(&store, &ldap, &upserts(&[account("uid=E01", 1), account("uid=E02", 1)]));
        // Never processed: the store cannot tell what is new to it.
        assert!(store.processing_delta(&p, &wanted, time(0, 0)).unwrap().is_none());

        // Processed as of these versions; E01 has its LDAP account.
        let mut e01 = identity("E01", Some("active"));
        e01.accounts[1].account_id = "uid=E01".into();
        let identities: Vec<Identity> =
            std::iter::once(e01).chain((2..=50).map(|n| bare(&format!("E{n:02}")))).collect();
        let seen = ProfileState { seen_versions: store.connection_versions("team-a", &wanted).unwrap(), ..state(1) };
        store
            .commit_processing(
                &p,
                &commit(identities, Vec::new(), seen.clone()),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
            )
            .unwrap();
        let delta = store.processing_delta(&p, &wanted, time(0, 0)).unwrap().expect("a delta");
        assert!(delta.changed.values().all(Vec::is_empty) && delta.identities.is_empty() && delta.accounts.is_empty());
        assert_eq!(delta.versions, seen.seen_versions);
        assert_eq!(delta.state, seen);

        // Two syncs later: E01 changed, E03 too and then back (still marked:
        // its hash moved twice), E50 removed, E51 created; the same E02 again
        // changes nothing.
        sync(&store, &hr, &upserts(&[account("E01", 2), account("E02", 1), account("E03", 2), account("E51", 1)]));
        sync(&store, &hr, &[StagedChange::Upsert(account("E03", 1)), StagedChange::Delete("E50".into())]);
        let delta = store.processing_delta(&p, &wanted, time(0, 0)).unwrap().expect("a delta");
        assert_eq!(delta.changed["hr"], ["E01", "E03", "E50", "E51"]);
        assert!(delta.changed["ldap"].is_empty());
        assert_eq!(delta.versions["hr"], seen.seen_versions["hr"] + 2);
        // Only the changed accounts that exist, their identities, and the
        // accounts those are made of.
        let mut hr_read: Vec<&String> = delta.accounts["hr"].keys().collect();
        hr_read.sort();
        assert_eq!(hr_read, ["E01", "E03", "E51"]);
        assert_eq!(delta.accounts["hr"]["E01"], (account("E01", 2), account("E01", 2).content_hash()));
        assert_eq!(delta.accounts["ldap"].keys().collect::<Vec<_>>(), ["uid=E01"]);
        let mut identities_read: Vec<&String> = delta.identities.keys().collect();
        identities_read.sort();
        assert_eq!(identities_read, ["E01", "E03", "E50"]);

        // A purge marks every account it removes.
        store.purge_connection(&ldap).unwrap();
        let delta = store.processing_delta(&p, &wanted, time(0, 0)).unwrap().expect("a delta");
        assert_eq!(delta.changed["ldap"], ["uid=E01", "uid=E02"]);

        // Marks that start after the version the profile saw cannot say what
        // changed before: a database migrated while the profile was behind.
        let vandal = rusqlite::Connection::open(&path).unwrap();
        vandal.execute("UPDATE connections SET marked_from = version WHERE name = 'hr'", []).unwrap();
        assert!(store.processing_delta(&p, &wanted, time(0, 0)).unwrap().is_none());
    }

    #[test]
    fn the_delta_reads_the_identities_whose_time_has_come_with_their_accounts() {
        let (_dir, store, _path) = open();
        let p = profile("people");
        let (hr, ldap) = (ConnectionRef::new("team-a", "hr"), ConnectionRef::new("team-a", "ldap"));
        let wanted = names(&["hr", "ldap"]);
        sync(&store, &hr, &upserts(&[account("E1", 1), account("E2", 1), account("E3", 1)]));
        sync(&store, &ldap, &upserts(&[account("uid=E2", 1)]));
        let due_at = |id: &str, at: Option<Timestamp>| Identity { time_changes_at: at, ..bare(id) };
        let mut e2 = due_at("E2", Some(time(100, 500_000)));
        e2.accounts.push(AccountLink { connection: "ldap".into(), account_id: "uid=E2".into() });
        let identities = vec![due_at("E1", None), e2, due_at("E3", Some(time(200, 0)))];
        let seen = ProfileState { seen_versions: store.connection_versions("team-a", &wanted).unwrap(), ..state(1) };
        store
            .commit_processing(
                &p,
                &commit(identities, Vec::new(), seen),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
            )
            .unwrap();
        assert_eq!(store.get_identity(&p, "E2").unwrap().unwrap().time_changes_at, Some(time(100, 500_000)));

        let read = |now: Timestamp| store.processing_delta(&p, &wanted, now).unwrap().expect("a delta");
        let before = read(time(100, 0));
        assert!(before.time_due.is_empty() && before.identities.is_empty() && before.accounts.is_empty());
        // At its instant (to the microsecond), with the accounts it is made
        // of, and nothing else.
        let due = read(time(100, 500_000));
        assert_eq!(due.time_due, ["E2"]);
        assert_eq!(due.identities.keys().collect::<Vec<_>>(), ["E2"]);
        assert_eq!(due.accounts["hr"].keys().collect::<Vec<_>>(), ["E2"]);
        assert_eq!(due.accounts["ldap"].keys().collect::<Vec<_>>(), ["uid=E2"]);
        assert!(due.changed.values().all(Vec::is_empty));
        assert_eq!(read(time(300, 0)).time_due, ["E2", "E3"]);
    }

    fn snapshot_ids(accounts: &[(Account, ContentHash)]) -> Vec<&str> {
        accounts.iter().map(|(a, _)| a.id.as_str()).collect()
    }

    #[test]
    fn purging_a_profile_removes_identities_links_and_state_and_keeps_runs() {
        let (_dir, store, _path) = open();
        let (p, other) = (profile("people"), ProfileRef::new("team-0", "zeta"));
        let links = vec![correlated("ldap", "L1", "E1"), uncorrelated("ldap", "L2")];
        let first = store
            .commit_processing(
                &p,
                &commit(vec![identity("E1", None), identity("E2", None)], links.clone(), state(1)),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
            )
            .unwrap();
        store.record_processing_run(&p, &run(Trigger::Manual, RunOutcome::Failed, 1)).unwrap();
        store
            .commit_processing(
                &other,
                &commit(vec![identity("E1", None)], links.clone(), state(1)),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
            )
            .unwrap();
        // A profile that only ever failed holds nothing to purge.
        store.record_processing_run(&profile("failing"), &run(Trigger::Manual, RunOutcome::Failed, 1)).unwrap();
        assert_eq!(store.profiles().unwrap(), [other.clone(), p.clone()]);

        assert_eq!(store.purge_profile(&p).unwrap(), 2);
        let (identities, links_after, state_after, runs) = everything(&store, &p);
        assert!(identities.is_empty() && links_after.is_empty());
        assert_eq!(state_after, ProfileState::default());
        assert_eq!(runs.len(), 2);
        assert_eq!(store.processing_runs(&p, 1).unwrap()[0].outcome, RunOutcome::Failed);
        assert_eq!(store.profiles().unwrap(), std::slice::from_ref(&other));
        assert_eq!(store.list_identities(&other, None, None, 10).unwrap(), [identity("E1", None)]);
        assert_eq!(store.list_links(&other, None).unwrap(), links);
        assert_eq!(store.profile_state(&other).unwrap(), state(1));

        assert_eq!(store.purge_profile(&p).unwrap(), 0);
        assert_eq!(store.purge_profile(&profile("never")).unwrap(), 0);
        // Coming back, it carries on with new run ids after the old ones.
        let again = store
            .commit_processing(
                &p,
                &commit(vec![bare("E3")], Vec::new(), ProfileState::default()),
                &run(Trigger::Scheduled, RunOutcome::Succeeded, 9),
            )
            .unwrap();
        assert!(again > first);
        assert_eq!(store.processing_runs(&p, 10).unwrap().len(), 3);
        assert_eq!(store.profiles().unwrap(), [other, p]);
    }

    #[test]
    fn processing_runs_are_newest_first_per_profile() {
        let (_dir, store, path) = open();
        let (p, other) = (profile("people"), profile("other"));
        let mut recorded = Vec::new();
        for (i, outcome) in [RunOutcome::Succeeded, RunOutcome::Failed, RunOutcome::DryRun].into_iter().enumerate() {
            let mut r = run(Trigger::ALL[i], outcome, i as i64 * 10);
            r.request = (i % 2 == 0).then(|| format!("resync-{i}"));
            r.processed = u64::from(u32::MAX) + i as u64;
            r.id = store.record_processing_run(&p, &r).unwrap();
            recorded.push(r);
        }
        store.record_processing_run(&other, &run(Trigger::Scheduled, RunOutcome::Succeeded, 99)).unwrap();
        recorded.reverse();
        assert_eq!(store.processing_runs(&p, 10).unwrap(), recorded);
        assert_eq!(store.processing_runs(&p, 2).unwrap(), recorded[..2]);
        assert!(store.processing_runs(&p, 0).unwrap().is_empty());
        assert!(store.processing_runs(&profile("never"), 10).unwrap().is_empty());

        let too_big = ProcessingRunRecord { errors: u64::MAX, ..run(Trigger::Manual, RunOutcome::Failed, 50) };
        assert!(matches!(store.record_processing_run(&p, &too_big), Err(StoreError::OutOfRange { .. })));
        assert_eq!(store.processing_runs(&p, 10).unwrap().len(), 3);

        let vandal = rusqlite::Connection::open(&path).unwrap();
        vandal.execute("UPDATE processing_runs SET outcome = 'Exploded' WHERE run_id = ?1", [recorded[0].id]).unwrap();
        let read = store.processing_runs(&p, 10);
        assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
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
