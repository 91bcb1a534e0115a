//! A profile's row in PostgreSQL: its key (what every identity, link, run
//! and drift row of it is filed under), its state, and the connections'
//! accounts versions a profile compares with what it saw.

use std::collections::{BTreeMap, HashMap};

use ::postgres::Transaction;

use crate::model::ProfileRef;
pub(super) use crate::store::codec::{NO_VERSIONS, encode_versions};
use crate::store::codec::{StateColumns, decode_state, encode_summary, from_i64};
use crate::store::postgres::lock;
use crate::store::postgres::schema::lock_kind;
use crate::store::{ProfileState, StoreError};

/// The profile's key, if the store has ever recorded anything for it.
pub(super) fn profile_key(tx: &mut Transaction<'_>, p: &ProfileRef) -> Result<Option<i64>, StoreError> {
    let row = tx.query_opt("SELECT prof FROM profiles WHERE namespace = $1 AND name = $2", &[&p.namespace, &p.name])?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// The profile's key, creating its row when it has none. Another replica
/// creating the same profile at once makes this insert wait for it and then
/// do nothing; the row it committed is read instead.
pub(super) fn ensure_profile_key(tx: &mut Transaction<'_>, p: &ProfileRef) -> Result<i64, StoreError> {
    if let Some(key) = profile_key(tx, p)? {
        return Ok(key);
    }
    let inserted = tx.query_opt(
        "INSERT INTO profiles (namespace, name) VALUES ($1, $2) ON CONFLICT (namespace, name) DO NOTHING RETURNING prof",
        &[&p.namespace, &p.name],
    )?;
    if let Some(row) = inserted {
        return Ok(row.try_get(0)?);
    }
    profile_key(tx, p)?.ok_or_else(|| StoreError::Internal(format!("profile {p} vanished while it was created")))
}

/// Takes the profile's advisory lock for the rest of `tx`: writers of one
/// profile's identities or drift (two replicas, or a run and a purge) go one
/// after the other, each seeing all the previous one committed.
pub(super) fn lock_profile(tx: &mut Transaction<'_>, p: &ProfileRef) -> Result<(), StoreError> {
    lock(tx, lock_kind::PROFILE, &format!("{}/{}", p.namespace, p.name))
}

pub(super) fn profile_state(tx: &mut Transaction<'_>, p: &ProfileRef) -> Result<ProfileState, StoreError> {
    match profile_key(tx, p)? {
        Some(key) => state_of(tx, key),
        None => Ok(ProfileState::default()),
    }
}

pub(super) fn state_of(tx: &mut Transaction<'_>, key: i64) -> Result<ProfileState, StoreError> {
    let Some(row) = tx.query_opt(
        "SELECT applied_spec, applied_generation, seen_versions, last_scheduled, next_time_based, mapping_hash, \
         summary FROM profiles WHERE prof = $1",
        &[&key],
    )?
    else {
        return Ok(ProfileState::default());
    };
    decode_state(StateColumns {
        applied_spec: row.try_get(0)?,
        applied_generation: row.try_get(1)?,
        seen_versions: row.try_get(2)?,
        last_scheduled: row.try_get(3)?,
        next_time_based: row.try_get(4)?,
        mapping_hash: row.try_get(5)?,
        summary: row.try_get(6)?,
    })
}

/// Replaces the profile's state; `seen_versions` is its versions' JSON.
pub(super) fn write_state(
    tx: &mut Transaction<'_>,
    key: i64,
    state: &ProfileState,
    seen_versions: &str,
) -> Result<(), StoreError> {
    let summary = encode_summary(state)?;
    tx.execute(
        "UPDATE profiles SET applied_spec = $2, applied_generation = $3, seen_versions = $4, last_scheduled = $5, \
         next_time_based = $6, mapping_hash = $7, summary = $8 WHERE prof = $1",
        &[
            &key,
            &state.applied_spec,
            &state.applied_generation,
            &seen_versions,
            &state.last_scheduled.map(|t| t.to_string()),
            &state.next_time_based.map(|t| t.to_string()),
            &state.mapping_hash,
            &summary,
        ],
    )?;
    Ok(())
}

/// Profiles with identities, links or a state other than the default: a
/// purged profile keeps its row (for its run history) but is not listed, so
/// that whoever purges profiles that no longer exist does so once.
pub(super) fn profiles(tx: &mut Transaction<'_>) -> Result<Vec<ProfileRef>, StoreError> {
    let rows = tx.query(
        "SELECT namespace, name FROM profiles p \
         WHERE applied_spec IS NOT NULL OR applied_generation IS NOT NULL OR seen_versions <> $1 \
         OR last_scheduled IS NOT NULL OR next_time_based IS NOT NULL \
         OR EXISTS (SELECT 1 FROM identities i WHERE i.prof = p.prof) \
         OR EXISTS (SELECT 1 FROM identity_links l WHERE l.prof = p.prof)",
        &[&NO_VERSIONS],
    )?;
    let mut profiles = rows
        .iter()
        .map(|r| Ok(ProfileRef { namespace: r.try_get(0)?, name: r.try_get(1)? }))
        .collect::<Result<Vec<_>, StoreError>>()?;
    // Byte order, as SQLite's, whatever the database's locale.
    profiles.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(profiles)
}

/// A connection as a processing run sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConnectionRow {
    pub conn: i64,
    pub version: u64,
    /// The version the connection's change marks start at.
    pub marked_from: u64,
}

/// The connections of `namespace` among `names` that the store knows, in
/// one query.
pub(super) fn connection_rows(
    tx: &mut Transaction<'_>,
    namespace: &str,
    names: &[String],
) -> Result<HashMap<String, ConnectionRow>, StoreError> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx.query(
        "SELECT name, conn, version, marked_from FROM connections WHERE namespace = $1 AND name = ANY($2)",
        &[&namespace, &names],
    )?;
    rows.iter()
        .map(|r| {
            let row = ConnectionRow {
                conn: r.try_get(1)?,
                version: from_i64(r.try_get(2)?)?,
                marked_from: from_i64(r.try_get(3)?)?,
            };
            Ok((r.try_get(0)?, row))
        })
        .collect()
}

pub(super) fn connection_versions(
    tx: &mut Transaction<'_>,
    namespace: &str,
    names: &[String],
) -> Result<BTreeMap<String, u64>, StoreError> {
    let found = connection_rows(tx, namespace, names)?;
    Ok(names.iter().map(|name| (name.clone(), found.get(name).map_or(0, |c| c.version))).collect())
}
