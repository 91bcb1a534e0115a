//! [`DriftStore`] for [`SqliteStore`]: drift cases, the drift inputs read,
//! and the identity safeguard's hold (tables of migration 7).

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::SqliteStore;
use super::identities::{identity_from_row, profile_key};
use crate::model::{Account, ProfileRef};
use crate::store::StoreError;
use crate::store::codec::{corrupt, decode_account, from_i64, parse_time};
use crate::store::drift::{DriftCase, DriftInputs, DriftKind, DriftStore, DriftSummary, DriftUpdate, RemovalHold};

/// Removes a profile's cases, drift state and hold (its purge).
pub(super) fn purge(tx: &Transaction<'_>, key: i64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM drift_cases WHERE prof = ?1")?.execute([key])?;
    tx.prepare_cached("DELETE FROM drift_state WHERE prof = ?1")?.execute([key])?;
    tx.prepare_cached("DELETE FROM removal_holds WHERE prof = ?1")?.execute([key])?;
    Ok(())
}

fn connection_key(db: &Connection, namespace: &str, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(db
        .prepare_cached("SELECT conn FROM connections WHERE namespace = ?1 AND name = ?2")?
        .query_row(params![namespace, name], |r| r.get(0))
        .optional()?)
}

fn account(db: &Connection, conn: i64, id: &str) -> Result<Option<Account>, StoreError> {
    let data: Option<String> = db
        .prepare_cached("SELECT data FROM accounts WHERE conn = ?1 AND id = ?2")?
        .query_row(params![conn, id], |r| r.get(0))
        .optional()?;
    data.map(|d| decode_account(&d)).transpose()
}

fn inputs(
    db: &Connection,
    p: &ProfileRef,
    authoritative: &str,
    correlated: &[String],
    offboarded_states: &[String],
    expected: &[String],
) -> Result<DriftInputs, StoreError> {
    let mut inputs = DriftInputs::default();
    let Some(key) = profile_key(db, p)? else { return Ok(inputs) };
    let mut keys = HashMap::new();
    for name in correlated {
        if let Some(conn) = connection_key(db, &p.namespace, name)? {
            keys.insert(name.as_str(), conn);
        }
    }
    // Offboarded identities, off the (prof, lifecycle_state) index, and the
    // correlated accounts they hold, each by key: a few among many.
    for state in offboarded_states {
        let mut stmt = db.prepare_cached("SELECT id, data FROM identities WHERE prof = ?1 AND lifecycle_state = ?2")?;
        let mut rows = stmt.query(params![key, state])?;
        while let Some(row) = rows.next()? {
            inputs.offboarded.push(identity_from_row(row)?);
        }
    }
    for identity in &inputs.offboarded {
        for link in &identity.accounts {
            if link.connection == authoritative {
                continue;
            }
            let Some(&conn) = keys.get(link.connection.as_str()) else { continue };
            if let Some(account) = account(db, conn, &link.account_id)? {
                inputs.held_accounts.insert((link.connection.clone(), link.account_id.clone()), account);
            }
        }
    }
    // Accounts no identity holds: the links correlation left unattached.
    let mut stmt = db.prepare_cached(
        "SELECT connection, account_id FROM identity_links WHERE prof = ?1 AND state <> 'Correlated' \
         ORDER BY connection, account_id",
    )?;
    let unattached = stmt
        .query_map([key], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    for (connection, id) in unattached {
        let Some(&conn) = keys.get(connection.as_str()) else { continue };
        if let Some(account) = account(db, conn, &id)?.filter(|a| a.enabled) {
            inputs.unowned.push((connection, account));
        }
    }
    // Identities without an expected account: the ids that have one, then
    // every identity's id and state (no data), then the data of those
    // missing it only.
    for connection in expected {
        let mut stmt = db.prepare_cached(
            "SELECT identity FROM identity_links WHERE prof = ?1 AND connection = ?2 AND state = 'Correlated'",
        )?;
        let holders = stmt
            .query_map(params![key, connection], |r| r.get::<_, Option<String>>(0))?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect::<HashSet<String>>();
        let mut stmt = db.prepare_cached("SELECT id, lifecycle_state FROM identities WHERE prof = ?1 ORDER BY id")?;
        let lacking = stmt
            .query_map([key], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|(id, state)| {
                !holders.contains(id) && !state.as_ref().is_some_and(|s| offboarded_states.contains(s))
            })
            .map(|(id, _)| id)
            .collect::<Vec<_>>();
        let mut stmt = db.prepare_cached("SELECT id, data FROM identities WHERE prof = ?1 AND id = ?2")?;
        let mut missing = Vec::with_capacity(lacking.len());
        for id in lacking {
            let mut rows = stmt.query(params![key, id])?;
            if let Some(row) = rows.next()? {
                missing.push(identity_from_row(row)?);
            }
        }
        inputs.missing.insert(connection.clone(), missing);
    }
    Ok(inputs)
}

const CASE_SELECT: &str = "SELECT kind, identity, connection, account_id, label, since FROM drift_cases";

fn case_from_row(row: &rusqlite::Row<'_>) -> Result<DriftCase, StoreError> {
    let kind: String = row.get(0)?;
    let kind = DriftKind::parse(&kind).ok_or_else(|| corrupt("drift case kind", &kind))?;
    let since: String = row.get(5)?;
    Ok(DriftCase {
        kind,
        identity: row.get(1)?,
        connection: row.get(2)?,
        account_id: row.get(3)?,
        label: row.get(4)?,
        since: parse_time(&since)?,
    })
}

fn cases(db: &Connection, key: i64) -> Result<Vec<DriftCase>, StoreError> {
    let mut stmt =
        db.prepare_cached(&format!("{CASE_SELECT} WHERE prof = ?1 ORDER BY kind, connection, identity, account_id"))?;
    let mut rows = stmt.query([key])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(case_from_row(row)?);
    }
    Ok(out)
}

fn replace(
    tx: &Transaction<'_>,
    p: &ProfileRef,
    found: &[DriftCase],
    settings_hash: &str,
    now: Timestamp,
) -> Result<DriftUpdate, StoreError> {
    let key = match profile_key(tx, p)? {
        Some(key) => key,
        None => {
            tx.prepare_cached("INSERT INTO profiles (namespace, name) VALUES (?1, ?2)")?
                .execute(params![p.namespace, p.name])?;
            tx.last_insert_rowid()
        }
    };
    let before = cases(tx, key)?;
    let open: HashMap<_, _> = before.iter().map(|c| (c.key(), c.since)).collect();
    let mut update = DriftUpdate::default();
    let mut seen = HashSet::new();
    for case in found {
        if !seen.insert(case.key()) {
            continue;
        }
        let mut case = case.clone();
        match open.get(&case.key()) {
            Some(since) => case.since = *since,
            None => {
                case.since = now;
                update.new.push(case.clone());
            }
        }
        update.cases.push(case);
    }
    update.resolved = before.iter().filter(|c| !seen.contains(&c.key())).count() as u64;
    tx.prepare_cached("DELETE FROM drift_cases WHERE prof = ?1")?.execute([key])?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO drift_cases (prof, kind, identity, connection, account_id, label, since) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for case in &update.cases {
        insert.execute(params![
            key,
            case.kind.as_str(),
            case.identity,
            case.connection,
            case.account_id,
            case.label,
            case.since.to_string()
        ])?;
    }
    tx.prepare_cached(
        "INSERT INTO drift_state (prof, settings_hash, computed_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (prof) DO UPDATE SET settings_hash = excluded.settings_hash, computed_at = excluded.computed_at",
    )?
    .execute(params![key, settings_hash, now.to_string()])?;
    Ok(update)
}

fn summary(db: &Connection, p: &ProfileRef) -> Result<DriftSummary, StoreError> {
    let mut summary = DriftSummary::default();
    let Some(key) = profile_key(db, p)? else { return Ok(summary) };
    let mut stmt = db.prepare_cached(
        "SELECT kind, count(*), count(DISTINCT identity), min(since) FROM drift_cases WHERE prof = ?1 GROUP BY kind",
    )?;
    let mut rows = stmt.query([key])?;
    while let Some(row) = rows.next()? {
        let kind: String = row.get(0)?;
        let kind = DriftKind::parse(&kind).ok_or_else(|| corrupt("drift case kind", &kind))?;
        let (cases, identities) = (from_i64(row.get(1)?)?, from_i64(row.get(2)?)?);
        let oldest: String = row.get(3)?;
        summary.oldest.insert(kind, parse_time(&oldest)?);
        match kind {
            DriftKind::OffboardedWithAccess => summary.offboarded_with_access = identities,
            DriftKind::OrphanAccount => summary.orphan_accounts = cases,
            DriftKind::MissingExpectedAccount => summary.missing_expected_accounts = cases,
        }
    }
    summary.settings_hash = db
        .prepare_cached("SELECT settings_hash FROM drift_state WHERE prof = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    let hold: Option<(String, String, String)> = db
        .prepare_cached("SELECT fingerprint, message, held_at FROM removal_holds WHERE prof = ?1")?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    summary.hold = hold
        .map(|(fingerprint, message, at)| {
            Ok::<_, StoreError>(RemovalHold { fingerprint, message, held_at: parse_time(&at)? })
        })
        .transpose()?;
    Ok(summary)
}

impl DriftStore for SqliteStore {
    fn drift_inputs(
        &self,
        p: &ProfileRef,
        authoritative: &str,
        correlated: &[String],
        offboarded_states: &[String],
        expected: &[String],
    ) -> Result<DriftInputs, StoreError> {
        self.read(|tx| inputs(tx, p, authoritative, correlated, offboarded_states, expected))
    }

    fn replace_drift(
        &self,
        p: &ProfileRef,
        cases: &[DriftCase],
        settings_hash: &str,
        now: Timestamp,
    ) -> Result<DriftUpdate, StoreError> {
        self.write(|tx| replace(tx, p, cases, settings_hash, now))
    }

    fn drift_cases(&self, p: &ProfileRef) -> Result<Vec<DriftCase>, StoreError> {
        self.read(|tx| match profile_key(tx, p)? {
            Some(key) => cases(tx, key),
            None => Ok(Vec::new()),
        })
    }

    fn drift_summary(&self, p: &ProfileRef) -> Result<DriftSummary, StoreError> {
        self.read(|tx| summary(tx, p))
    }

    fn lifecycle_states(
        &self,
        p: &ProfileRef,
        ids: &HashSet<&str>,
    ) -> Result<HashMap<String, Option<String>>, StoreError> {
        self.read(|tx| {
            let mut states = HashMap::new();
            let Some(key) = profile_key(tx, p)? else { return Ok(states) };
            let mut stmt = tx.prepare_cached("SELECT lifecycle_state FROM identities WHERE prof = ?1 AND id = ?2")?;
            for id in ids {
                if let Some(state) = stmt.query_row(params![key, id], |r| r.get::<_, Option<String>>(0)).optional()? {
                    states.insert((*id).to_string(), state);
                }
            }
            Ok(states)
        })
    }

    fn identity_count(&self, p: &ProfileRef) -> Result<u64, StoreError> {
        self.read(|tx| match profile_key(tx, p)? {
            Some(key) => from_i64(
                tx.prepare_cached("SELECT count(*) FROM identities WHERE prof = ?1")?.query_row([key], |r| r.get(0))?,
            ),
            None => Ok(0),
        })
    }

    fn hold_removals(&self, p: &ProfileRef, hold: &RemovalHold) -> Result<(), StoreError> {
        self.write(|tx| {
            let key = match profile_key(tx, p)? {
                Some(key) => key,
                None => {
                    tx.prepare_cached("INSERT INTO profiles (namespace, name) VALUES (?1, ?2)")?
                        .execute(params![p.namespace, p.name])?;
                    tx.last_insert_rowid()
                }
            };
            tx.prepare_cached(
                "INSERT INTO removal_holds (prof, fingerprint, message, held_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (prof) DO UPDATE SET fingerprint = excluded.fingerprint, message = excluded.message, \
                 held_at = excluded.held_at",
            )?
            .execute(params![key, hold.fingerprint, hold.message, hold.held_at.to_string()])?;
            Ok(())
        })
    }

    fn release_removals(&self, p: &ProfileRef) -> Result<(), StoreError> {
        self.write(|tx| {
            if let Some(key) = profile_key(tx, p)? {
                tx.prepare_cached("DELETE FROM removal_holds WHERE prof = ?1")?.execute([key])?;
            }
            Ok(())
        })
    }
}
