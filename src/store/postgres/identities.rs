//! [`IdentityStore`] for [`PgStore`]: profiles' identities and correlation
//! records (links). Identities are stored whole as JSON, with the fields the
//! store filters or orders on (id, lifecycle state, when time changes them)
//! copied into columns, as in the SQLite store.
//!
//! Built for 100,000 identities a profile and more: a commit writes its
//! identities and links set-based (`UNNEST` of parallel arrays, a few
//! thousand rows per statement) rather than a round trip per row, and the
//! snapshot streams each table with one query. Reads that must agree with
//! each other run in one REPEATABLE READ snapshot ([`PgStore::read`]); a
//! commit runs in one transaction holding the profile's advisory lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::types::ToSql;
use ::postgres::{Row, Transaction};
use jiff::Timestamp;

use super::PgStore;
use super::history::insert_run;
use super::profiles::{
    NO_VERSIONS, connection_rows, connection_versions, encode_versions, ensure_profile_key, lock_profile, profile_key,
    profile_state, profiles, state_of, write_state,
};
use crate::model::{Account, ContentHash, Identity, LinkRecord, LinkState, ProcessingRunRecord, ProfileRef, RunId};
use crate::store::codec::{corrupt, decode_account, encode_candidates, to_i64};
use crate::store::{
    IdentityStore, ProcessingCommit, ProcessingDelta, ProcessingSnapshot, ProfileState, Retention, StoreError,
};

/// Rows a commit writes per statement: large enough that round trips do not
/// count, small enough that one statement's arrays stay a few megabytes.
pub(super) const ROWS_PER_STATEMENT: usize = 5_000;

/// `list_identities`, one statement per combination of filters, so that the
/// planner sees which: `id` is `COLLATE "C"`, so each reads the primary key
/// or `identities_by_state` in byte order from the page's start, no sort.
pub(super) const LIST_ALL: &str = "SELECT id, data FROM identities WHERE prof = $1 ORDER BY id LIMIT $2";
pub(super) const LIST_ALL_AFTER: &str =
    "SELECT id, data FROM identities WHERE prof = $1 AND id > $2 ORDER BY id LIMIT $3";
pub(super) const LIST_IN_STATE: &str =
    "SELECT id, data FROM identities WHERE prof = $1 AND lifecycle_state = $2 ORDER BY id LIMIT $3";
pub(super) const LIST_IN_STATE_AFTER: &str =
    "SELECT id, data FROM identities WHERE prof = $1 AND lifecycle_state = $2 AND id > $3 ORDER BY id LIMIT $4";

/// The columns [`link_from_row`] reads, in its order.
const LINK_SELECT: &str = "SELECT connection, account_id, state, identity, candidates FROM identity_links";

/// `identities.time_changes_at` of an instant: microseconds since the
/// epoch, rounded down, so that an identity is read as due at or before
/// its instant, never after it.
fn time_key(at: Timestamp) -> i64 {
    at.as_microsecond()
}

/// An `(id, data)` row, checked to hold the identity it is keyed by.
pub(super) fn identity_from_row(row: &Row) -> Result<Identity, StoreError> {
    let id: &str = row.try_get(0)?;
    let data: &str = row.try_get(1)?;
    let identity: Identity = serde_json::from_str(data).map_err(|e| corrupt("identity data", e))?;
    if identity.id != id {
        return Err(StoreError::Corrupt(format!("identity row {id:?} holds identity {:?}", identity.id)));
    }
    Ok(identity)
}

/// An `(id, data, hash)` row of `accounts`.
pub(super) fn account_from_row(row: &Row) -> Result<(Account, ContentHash), StoreError> {
    let account = decode_account(row.try_get(1)?)?;
    let hash = ContentHash::from_slice(row.try_get(2)?)
        .ok_or_else(|| StoreError::Corrupt(format!("account {:?} has no 32-byte content hash", account.id)))?;
    Ok((account, hash))
}

fn link_from_row(row: &Row) -> Result<LinkRecord, StoreError> {
    let connection: String = row.try_get(0)?;
    let account_id: String = row.try_get(1)?;
    let state: &str = row.try_get(2)?;
    let state = LinkState::parse(state).ok_or_else(|| {
        StoreError::Corrupt(format!("link of account {account_id:?} of {connection:?}: unknown state {state:?}"))
    })?;
    let candidates: Option<&str> = row.try_get(4)?;
    let candidates = match candidates {
        Some(json) => serde_json::from_str(json).map_err(|e| corrupt("link candidates", e))?,
        None => Vec::new(),
    };
    Ok(LinkRecord { connection, account_id, state, identity: row.try_get(3)?, candidates })
}

/// Every row of `sql`, streamed and decoded one by one: a table of 100,000
/// rows is never held twice, raw and decoded.
fn stream<T>(
    tx: &mut Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    mut each: impl FnMut(&Row) -> Result<T, StoreError>,
    mut keep: impl FnMut(T),
) -> Result<(), StoreError> {
    let mut rows = tx.query_raw(sql, params.iter().copied())?;
    while let Some(row) = rows.next()? {
        keep(each(&row)?);
    }
    Ok(())
}

/// The stored accounts of connection `conn` among `ids`, by id.
fn accounts_among(
    tx: &mut Transaction<'_>,
    conn: i64,
    ids: &[&str],
) -> Result<HashMap<String, (Account, ContentHash)>, StoreError> {
    let mut found = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(found);
    }
    stream(
        tx,
        "SELECT id, data, hash FROM accounts WHERE conn = $1 AND id = ANY($2)",
        &[&conn, &ids],
        account_from_row,
        |a| {
            found.insert(a.0.id.clone(), a);
        },
    )?;
    Ok(found)
}

/// Everything a processing run reads; `tx` is one snapshot.
fn snapshot(
    tx: &mut Transaction<'_>,
    p: &ProfileRef,
    connections: &[String],
) -> Result<ProcessingSnapshot, StoreError> {
    let mut snapshot = ProcessingSnapshot::default();
    let known = connection_rows(tx, &p.namespace, connections)?;
    for name in connections {
        if snapshot.versions.contains_key(name) {
            continue;
        }
        // Every name asked for is in both maps, known or not, so the caller
        // can index them without checking.
        let (accounts, version) = match known.get(name) {
            Some(c) => {
                let mut accounts = Vec::new();
                stream(tx, "SELECT id, data, hash FROM accounts WHERE conn = $1", &[&c.conn], account_from_row, |a| {
                    accounts.push(a)
                })?;
                // Sorted here rather than by the server: byte order whatever
                // the database's locale, and no sort of the whole table's
                // rows in the server's work memory.
                accounts.sort_unstable_by(|a, b| a.0.id.cmp(&b.0.id));
                (accounts, c.version)
            }
            None => (Vec::new(), 0),
        };
        snapshot.accounts.insert(name.clone(), accounts);
        snapshot.versions.insert(name.clone(), version);
    }
    if let Some(key) = profile_key(tx, p)? {
        let identities = &mut snapshot.identities;
        stream(tx, "SELECT id, data FROM identities WHERE prof = $1", &[&key], identity_from_row, |i| {
            identities.insert(i.id.clone(), i);
        })?;
        let links = &mut snapshot.links;
        stream(tx, &format!("{LINK_SELECT} WHERE prof = $1"), &[&key], link_from_row, |l| {
            links.insert((l.connection.clone(), l.account_id.clone()), l);
        })?;
        snapshot.state = state_of(tx, key)?;
    }
    Ok(snapshot)
}

/// The accounts a delta asks for, by connection name, read together at the
/// end: one query per connection instead of one per account.
#[derive(Default)]
struct Wanted {
    /// Connection name -> its key, for the connections the store knows.
    keys: HashMap<String, i64>,
    ids: BTreeMap<String, HashSet<String>>,
}

impl Wanted {
    /// Asks for account `id` of `connection`; an unknown connection has
    /// none. Like the SQLite store, the connection's entry in
    /// `ProcessingDelta::accounts` exists once anything of it was asked for.
    fn want(&mut self, delta: &mut ProcessingDelta, connection: &str, id: &str) {
        if !self.keys.contains_key(connection) {
            return;
        }
        delta.accounts.entry(connection.to_string()).or_default();
        self.ids.entry(connection.to_string()).or_default().insert(id.to_string());
    }

    fn read(self, tx: &mut Transaction<'_>, delta: &mut ProcessingDelta) -> Result<(), StoreError> {
        for (name, ids) in &self.ids {
            let Some(&conn) = self.keys.get(name) else { continue };
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let found = accounts_among(tx, conn, &ids)?;
            delta.accounts.entry(name.clone()).or_default().extend(found);
        }
        Ok(())
    }
}

/// What changed since the profile last processed (see
/// [`IdentityStore::processing_delta`]); `tx` is one snapshot. Reads the
/// change marks of each connection past the version the profile saw, then
/// only the identities and accounts they name, a query per table and
/// connection.
fn delta(
    tx: &mut Transaction<'_>,
    p: &ProfileRef,
    connections: &[String],
    now: Timestamp,
) -> Result<Option<ProcessingDelta>, StoreError> {
    let Some(authoritative) = connections.first() else { return Ok(None) };
    let Some(prof) = profile_key(tx, p)? else { return Ok(None) };
    let mut delta = ProcessingDelta { state: state_of(tx, prof)?, ..ProcessingDelta::default() };
    let known = connection_rows(tx, &p.namespace, connections)?;
    let mut wanted = Wanted::default();
    for name in connections {
        if delta.versions.contains_key(name) {
            continue;
        }
        let Some(&seen) = delta.state.seen_versions.get(name) else { return Ok(None) };
        let (changed, version) = match known.get(name) {
            // Never synced: nothing of it, then as now.
            None if seen == 0 => (Vec::new(), 0),
            None => return Ok(None),
            Some(c) => {
                // Changes before `marked_from` left no marks; a version
                // ahead of the store's is one this store never had.
                if seen < c.marked_from || seen > c.version {
                    return Ok(None);
                }
                wanted.keys.insert(name.clone(), c.conn);
                let rows = tx.query(
                    "SELECT id FROM account_marks WHERE conn = $1 AND version > $2",
                    &[&c.conn, &to_i64("seen version", seen)?],
                )?;
                let mut ids = rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<String>, _>>()?;
                ids.sort_unstable();
                (ids, c.version)
            }
        };
        delta.versions.insert(name.clone(), version);
        delta.changed.insert(name.clone(), changed);
    }
    let changed = std::mem::take(&mut delta.changed);
    for (name, ids) in &changed {
        for id in ids {
            wanted.want(&mut delta, name, id);
        }
    }
    let authoritative_changed: Vec<String> = changed.get(authoritative).cloned().unwrap_or_default();
    delta.changed = changed;
    if !authoritative_changed.is_empty() {
        let mut found = Vec::new();
        stream(
            tx,
            "SELECT id, data FROM identities WHERE prof = $1 AND id = ANY($2)",
            &[&prof, &authoritative_changed],
            identity_from_row,
            |i| found.push(i),
        )?;
        for identity in found {
            for link in identity.accounts.iter().skip(1) {
                wanted.want(&mut delta, &link.connection, &link.account_id);
            }
            delta.identities.insert(identity.id.clone(), identity);
        }
    }
    // Identities whose time has come, off the partial index: none at all on
    // most runs, so a run over everyone with nothing changed reads nothing
    // of the 100,000.
    let mut due = Vec::new();
    stream(
        tx,
        "SELECT id, data FROM identities WHERE prof = $1 AND time_changes_at IS NOT NULL AND time_changes_at <= $2",
        &[&prof, &time_key(now)],
        identity_from_row,
        |i| due.push(i),
    )?;
    due.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    for identity in due {
        wanted.want(&mut delta, authoritative, &identity.id);
        for link in identity.accounts.iter().skip(1) {
            wanted.want(&mut delta, &link.connection, &link.account_id);
        }
        delta.time_due.push(identity.id.clone());
        delta.identities.insert(identity.id.clone(), identity);
    }
    wanted.read(tx, &mut delta)?;
    Ok(Some(delta))
}

/// A commit with its JSON already made, so that serializing happens before
/// the transaction starts, and with the columns laid out as the arrays the
/// statements take. An id upserted twice keeps its last record, as a second
/// upsert in SQLite would leave it.
struct EncodedCommit {
    deletes: Vec<String>,
    ids: Vec<String>,
    states: Vec<Option<String>>,
    data: Vec<String>,
    time_keys: Vec<Option<i64>>,
    link_delete_connections: Vec<String>,
    link_delete_ids: Vec<String>,
    link_connections: Vec<String>,
    link_ids: Vec<String>,
    link_states: Vec<&'static str>,
    link_identities: Vec<Option<String>>,
    link_candidates: Vec<Option<String>>,
    seen_versions: String,
}

/// The positions of `keys` to write: each key's last occurrence, in order.
fn last_of_each<K: Eq + std::hash::Hash>(keys: impl Iterator<Item = K>) -> Vec<usize> {
    let mut last: HashMap<K, usize> = HashMap::new();
    let mut count = 0;
    for (i, key) in keys.enumerate() {
        last.insert(key, i);
        count = i + 1;
    }
    if last.len() == count {
        return (0..count).collect();
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    keep
}

fn encode_commit(commit: &ProcessingCommit) -> Result<EncodedCommit, StoreError> {
    let upserts = last_of_each(commit.upserts.iter().map(|i| i.id.as_str()));
    let links = last_of_each(commit.link_upserts.iter().map(|l| (l.connection.as_str(), l.account_id.as_str())));
    let mut encoded = EncodedCommit {
        deletes: commit.deletes.clone(),
        ids: Vec::with_capacity(upserts.len()),
        states: Vec::with_capacity(upserts.len()),
        data: Vec::with_capacity(upserts.len()),
        time_keys: Vec::with_capacity(upserts.len()),
        link_delete_connections: commit.link_deletes.iter().map(|(c, _)| c.clone()).collect(),
        link_delete_ids: commit.link_deletes.iter().map(|(_, id)| id.clone()).collect(),
        link_connections: Vec::with_capacity(links.len()),
        link_ids: Vec::with_capacity(links.len()),
        link_states: Vec::with_capacity(links.len()),
        link_identities: Vec::with_capacity(links.len()),
        link_candidates: Vec::with_capacity(links.len()),
        seen_versions: encode_versions(&commit.state.seen_versions),
    };
    for i in upserts {
        let identity = &commit.upserts[i];
        let data = serde_json::to_string(identity)
            .map_err(|e| StoreError::Internal(format!("cannot encode identity {:?}: {e}", identity.id)))?;
        encoded.ids.push(identity.id.clone());
        encoded.states.push(identity.lifecycle_state.clone());
        encoded.data.push(data);
        encoded.time_keys.push(identity.time_changes_at.map(time_key));
    }
    for i in links {
        let link = &commit.link_upserts[i];
        encoded.link_connections.push(link.connection.clone());
        encoded.link_ids.push(link.account_id.clone());
        encoded.link_states.push(link.state.as_str());
        encoded.link_identities.push(link.identity.clone());
        encoded.link_candidates.push(encode_candidates(&link.candidates));
    }
    Ok(encoded)
}

/// Start and end of each statement's rows.
fn chunks(len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..len).step_by(ROWS_PER_STATEMENT).map(move |start| start..(start + ROWS_PER_STATEMENT).min(len))
}

/// Applies `encoded` and records `run`; `tx` is the commit's one
/// transaction, holding the profile's lock.
fn write_commit(
    tx: &mut Transaction<'_>,
    p: &ProfileRef,
    encoded: &EncodedCommit,
    state: &ProfileState,
    run: &ProcessingRunRecord,
    retention: &Retention,
) -> Result<RunId, StoreError> {
    lock_profile(tx, p)?;
    let key = ensure_profile_key(tx, p)?;
    // Deletes before upserts: an id in both ends up with the record the
    // upsert carries, never with nothing and never with a stale record.
    if !encoded.deletes.is_empty() {
        let delete = tx.prepare("DELETE FROM identities WHERE prof = $1 AND id = ANY($2)")?;
        for range in chunks(encoded.deletes.len()) {
            tx.execute(&delete, &[&key, &&encoded.deletes[range]])?;
        }
    }
    if !encoded.ids.is_empty() {
        let upsert = tx.prepare(
            "INSERT INTO identities (prof, id, lifecycle_state, data, time_changes_at) \
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int8[]) \
             ON CONFLICT (prof, id) DO UPDATE SET lifecycle_state = excluded.lifecycle_state, data = excluded.data, \
             time_changes_at = excluded.time_changes_at",
        )?;
        for range in chunks(encoded.ids.len()) {
            tx.execute(
                &upsert,
                &[
                    &key,
                    &&encoded.ids[range.clone()],
                    &&encoded.states[range.clone()],
                    &&encoded.data[range.clone()],
                    &&encoded.time_keys[range],
                ],
            )?;
        }
    }
    if !encoded.link_delete_ids.is_empty() {
        let delete = tx.prepare(
            "DELETE FROM identity_links WHERE prof = $1 AND (connection, account_id) IN \
             (SELECT * FROM UNNEST($2::text[], $3::text[]))",
        )?;
        for range in chunks(encoded.link_delete_ids.len()) {
            tx.execute(
                &delete,
                &[&key, &&encoded.link_delete_connections[range.clone()], &&encoded.link_delete_ids[range]],
            )?;
        }
    }
    if !encoded.link_ids.is_empty() {
        let upsert = tx.prepare(
            "INSERT INTO identity_links (prof, connection, account_id, state, identity, candidates) \
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
             ON CONFLICT (prof, connection, account_id) DO UPDATE SET state = excluded.state, \
             identity = excluded.identity, candidates = excluded.candidates",
        )?;
        for range in chunks(encoded.link_ids.len()) {
            tx.execute(
                &upsert,
                &[
                    &key,
                    &&encoded.link_connections[range.clone()],
                    &&encoded.link_ids[range.clone()],
                    &&encoded.link_states[range.clone()],
                    &&encoded.link_identities[range.clone()],
                    &&encoded.link_candidates[range],
                ],
            )?;
        }
    }
    write_state(tx, key, state, &encoded.seen_versions)?;
    insert_run(tx, key, run, retention)
}

fn get_identity(tx: &mut Transaction<'_>, p: &ProfileRef, id: &str) -> Result<Option<Identity>, StoreError> {
    let Some(key) = profile_key(tx, p)? else { return Ok(None) };
    let row = tx.query_opt("SELECT id, data FROM identities WHERE prof = $1 AND id = $2", &[&key, &id])?;
    row.as_ref().map(identity_from_row).transpose()
}

fn list_identities(
    tx: &mut Transaction<'_>,
    p: &ProfileRef,
    state: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Identity>, StoreError> {
    let Some(key) = profile_key(tx, p)? else { return Ok(Vec::new()) };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match (state, after) {
        (None, None) => tx.query(LIST_ALL, &[&key, &limit])?,
        (None, Some(after)) => tx.query(LIST_ALL_AFTER, &[&key, &after, &limit])?,
        (Some(state), None) => tx.query(LIST_IN_STATE, &[&key, &state, &limit])?,
        (Some(state), Some(after)) => tx.query(LIST_IN_STATE_AFTER, &[&key, &state, &after, &limit])?,
    };
    rows.iter().map(identity_from_row).collect()
}

fn list_links(
    tx: &mut Transaction<'_>,
    p: &ProfileRef,
    state: Option<LinkState>,
) -> Result<Vec<LinkRecord>, StoreError> {
    let Some(key) = profile_key(tx, p)? else { return Ok(Vec::new()) };
    // The profile's range of the primary key, already in (byte) order.
    let rows = match state {
        Some(state) => tx.query(
            &format!("{LINK_SELECT} WHERE prof = $1 AND state = $2 ORDER BY connection, account_id"),
            &[&key, &state.as_str()],
        )?,
        None => tx.query(&format!("{LINK_SELECT} WHERE prof = $1 ORDER BY connection, account_id"), &[&key])?,
    };
    rows.iter().map(link_from_row).collect()
}

/// Removes the profile's identities, links and drift and resets its state;
/// returns identities removed.
fn purge(tx: &mut Transaction<'_>, p: &ProfileRef) -> Result<u64, StoreError> {
    lock_profile(tx, p)?;
    let Some(key) = profile_key(tx, p)? else { return Ok(0) };
    let removed = tx.execute("DELETE FROM identities WHERE prof = $1", &[&key])?;
    tx.execute("DELETE FROM identity_links WHERE prof = $1", &[&key])?;
    super::drift::purge(tx, key)?;
    write_state(tx, key, &ProfileState::default(), NO_VERSIONS)?;
    Ok(removed)
}

impl IdentityStore for PgStore {
    fn connection_versions(&self, namespace: &str, names: &[String]) -> Result<BTreeMap<String, u64>, StoreError> {
        self.read(|tx| connection_versions(tx, namespace, names))
    }

    fn profile_state(&self, p: &ProfileRef) -> Result<ProfileState, StoreError> {
        self.read(|tx| profile_state(tx, p))
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
        // Serializing 100,000 identities is the slow part; the profile's lock
        // should not be held for it.
        let encoded = encode_commit(commit)?;
        let retention = self.retention();
        let id = self.write(|tx| write_commit(tx, p, &encoded, &commit.state, run, &retention))?;
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
        self.read(|tx| get_identity(tx, p, id))
    }

    fn list_identities(
        &self,
        p: &ProfileRef,
        state: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Identity>, StoreError> {
        self.read(|tx| list_identities(tx, p, state, after, limit))
    }

    fn list_links(&self, p: &ProfileRef, state: Option<LinkState>) -> Result<Vec<LinkRecord>, StoreError> {
        self.read(|tx| list_links(tx, p, state))
    }

    fn profiles(&self) -> Result<Vec<ProfileRef>, StoreError> {
        self.read(profiles)
    }

    fn purge_profile(&self, p: &ProfileRef) -> Result<u64, StoreError> {
        let removed = self.write(|tx| purge(tx, p))?;
        tracing::info!(profile = %p, removed, "purged a profile's identities");
        Ok(removed)
    }
}

#[cfg(test)]
impl crate::store::contract::identities::Vandal for PgStore {
    fn vandalize(&self, sql: &str) {
        self.write(|tx| Ok(tx.batch_execute(sql)?)).expect("vandalize the PostgreSQL store");
    }
}
