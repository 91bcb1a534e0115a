//! [`DriftStore`] for [`PgStore`]: drift cases, the drift inputs read (one
//! snapshot, a query per kind of row and connection), and the identity
//! safeguard's hold. The same semantics as the SQLite store's.

use std::collections::{HashMap, HashSet};

use ::postgres::{Row, Transaction};
use jiff::Timestamp;

use super::PgStore;
use super::identities::identity_from_row;
use super::profiles::{ensure_profile_key, lock_profile, profile_key};
use crate::model::{Account, ProfileRef};
use crate::store::StoreError;
use crate::store::codec::{corrupt, decode_account, from_i64, parse_time};
use crate::store::drift::{DriftCase, DriftInputs, DriftKind, DriftStore, DriftSummary, DriftUpdate, RemovalHold};

/// Rows `replace_drift` inserts per statement.
const ROWS_PER_STATEMENT: usize = 5_000;

/// Removes a profile's cases, drift state and hold (its purge).
pub(super) fn purge(tx: &mut Transaction<'_>, key: i64) -> Result<(), StoreError> {
    tx.execute("DELETE FROM drift_cases WHERE prof = $1", &[&key])?;
    tx.execute("DELETE FROM drift_state WHERE prof = $1", &[&key])?;
    tx.execute("DELETE FROM removal_holds WHERE prof = $1", &[&key])?;
    Ok(())
}

/// The stored accounts of connection `conn` among `ids`, by id.
fn accounts_among(tx: &mut Transaction<'_>, conn: i64, ids: &[&str]) -> Result<HashMap<String, Account>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx.query("SELECT id, data FROM accounts WHERE conn = $1 AND id = ANY($2)", &[&conn, &ids])?;
    rows.iter().map(|r| Ok((r.try_get(0)?, decode_account(r.try_get(1)?)?))).collect()
}

fn inputs(
    tx: &mut Transaction<'_>,
    p: &ProfileRef,
    authoritative: &str,
    correlated: &[String],
    offboarded_states: &[String],
    expected: &[String],
) -> Result<DriftInputs, StoreError> {
    let mut inputs = DriftInputs::default();
    let Some(key) = profile_key(tx, p)? else { return Ok(inputs) };
    let keys: HashMap<String, i64> = super::profiles::connection_rows(tx, &p.namespace, correlated)?
        .into_iter()
        .map(|(name, c)| (name, c.conn))
        .collect();
    // Offboarded identities, off the (prof, lifecycle_state, id) index, and
    // the correlated accounts they hold: a few among many.
    for state in offboarded_states {
        let rows = tx.query(
            "SELECT id, data FROM identities WHERE prof = $1 AND lifecycle_state = $2 ORDER BY id",
            &[&key, &state],
        )?;
        for row in &rows {
            inputs.offboarded.push(identity_from_row(row)?);
        }
    }
    let mut held: HashMap<&str, Vec<&str>> = HashMap::new();
    for identity in &inputs.offboarded {
        for link in &identity.accounts {
            if link.connection != authoritative && keys.contains_key(&link.connection) {
                held.entry(link.connection.as_str()).or_default().push(&link.account_id);
            }
        }
    }
    let mut held_accounts = HashMap::new();
    for (connection, ids) in held {
        for (id, account) in accounts_among(tx, keys[connection], &ids)? {
            held_accounts.insert((connection.to_string(), id), account);
        }
    }
    inputs.held_accounts = held_accounts;
    // Accounts no identity holds: the links correlation left unattached.
    let rows = tx.query(
        "SELECT connection, account_id FROM identity_links WHERE prof = $1 AND state <> 'Correlated' \
         ORDER BY connection, account_id",
        &[&key],
    )?;
    let unattached =
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<Vec<(&str, &str)>, StoreError>>()?;
    let mut by_connection: HashMap<&str, Vec<&str>> = HashMap::new();
    for &(connection, id) in &unattached {
        if keys.contains_key(connection) {
            by_connection.entry(connection).or_default().push(id);
        }
    }
    let mut found: HashMap<&str, HashMap<String, Account>> = HashMap::new();
    for (connection, ids) in by_connection {
        found.insert(connection, accounts_among(tx, keys[connection], &ids)?);
    }
    for (connection, id) in unattached {
        if let Some(account) = found.get_mut(connection).and_then(|f| f.remove(id)).filter(|a| a.enabled) {
            inputs.unowned.push((connection.to_string(), account));
        }
    }
    // Identities without an expected account, not offboarded: an anti-join
    // in the server, so only those identities' data is read.
    for connection in expected {
        let rows = tx.query(
            "SELECT i.id, i.data FROM identities i WHERE i.prof = $1 \
             AND (i.lifecycle_state IS NULL OR NOT i.lifecycle_state = ANY($3)) \
             AND NOT EXISTS (SELECT 1 FROM identity_links l WHERE l.prof = $1 AND l.connection = $2 \
             AND l.state = 'Correlated' AND l.identity = i.id) \
             ORDER BY i.id",
            &[&key, &connection, &offboarded_states],
        )?;
        let missing = rows.iter().map(identity_from_row).collect::<Result<Vec<_>, _>>()?;
        inputs.missing.insert(connection.clone(), missing);
    }
    Ok(inputs)
}

const CASE_SELECT: &str = "SELECT kind, identity, connection, account_id, label, since FROM drift_cases";

fn case_from_row(row: &Row) -> Result<DriftCase, StoreError> {
    let kind: &str = row.try_get(0)?;
    let kind = DriftKind::parse(kind).ok_or_else(|| corrupt("drift case kind", kind))?;
    Ok(DriftCase {
        kind,
        identity: row.try_get(1)?,
        connection: row.try_get(2)?,
        account_id: row.try_get(3)?,
        label: row.try_get(4)?,
        since: parse_time(row.try_get(5)?)?,
    })
}

fn cases(tx: &mut Transaction<'_>, key: i64) -> Result<Vec<DriftCase>, StoreError> {
    let rows =
        tx.query(&format!("{CASE_SELECT} WHERE prof = $1 ORDER BY kind, connection, identity, account_id"), &[&key])?;
    rows.iter().map(case_from_row).collect()
}

fn replace(
    tx: &mut Transaction<'_>,
    p: &ProfileRef,
    found: &[DriftCase],
    settings_hash: &str,
    now: Timestamp,
) -> Result<DriftUpdate, StoreError> {
    // Reads the open cases, then writes on what it read: one replica at a
    // time, or both would take the same case for new.
    lock_profile(tx, p)?;
    let key = ensure_profile_key(tx, p)?;
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
    tx.execute("DELETE FROM drift_cases WHERE prof = $1", &[&key])?;
    let insert = tx.prepare(
        "INSERT INTO drift_cases (prof, kind, identity, connection, account_id, label, since) \
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])",
    )?;
    for chunk in update.cases.chunks(ROWS_PER_STATEMENT) {
        let kinds: Vec<&str> = chunk.iter().map(|c| c.kind.as_str()).collect();
        let identities: Vec<&str> = chunk.iter().map(|c| c.identity.as_str()).collect();
        let connections: Vec<&str> = chunk.iter().map(|c| c.connection.as_str()).collect();
        let accounts: Vec<&str> = chunk.iter().map(|c| c.account_id.as_str()).collect();
        let labels: Vec<&str> = chunk.iter().map(|c| c.label.as_str()).collect();
        let since: Vec<String> = chunk.iter().map(|c| c.since.to_string()).collect();
        tx.execute(&insert, &[&key, &kinds, &identities, &connections, &accounts, &labels, &since])?;
    }
    tx.execute(
        "INSERT INTO drift_state (prof, settings_hash, computed_at) VALUES ($1, $2, $3) \
         ON CONFLICT (prof) DO UPDATE SET settings_hash = excluded.settings_hash, computed_at = excluded.computed_at",
        &[&key, &settings_hash, &now.to_string()],
    )?;
    Ok(update)
}

fn summary(tx: &mut Transaction<'_>, p: &ProfileRef) -> Result<DriftSummary, StoreError> {
    let mut summary = DriftSummary::default();
    let Some(key) = profile_key(tx, p)? else { return Ok(summary) };
    // `since` is COLLATE "C": the minimum the SQLite store's is.
    let rows = tx.query(
        "SELECT kind, count(*), count(DISTINCT identity), min(since) FROM drift_cases WHERE prof = $1 GROUP BY kind",
        &[&key],
    )?;
    for row in &rows {
        let kind: &str = row.try_get(0)?;
        let kind = DriftKind::parse(kind).ok_or_else(|| corrupt("drift case kind", kind))?;
        let (cases, identities) = (from_i64(row.try_get(1)?)?, from_i64(row.try_get(2)?)?);
        summary.oldest.insert(kind, parse_time(row.try_get(3)?)?);
        match kind {
            DriftKind::OffboardedWithAccess => summary.offboarded_with_access = identities,
            DriftKind::OrphanAccount => summary.orphan_accounts = cases,
            DriftKind::MissingExpectedAccount => summary.missing_expected_accounts = cases,
        }
    }
    summary.settings_hash = tx
        .query_opt("SELECT settings_hash FROM drift_state WHERE prof = $1", &[&key])?
        .map(|r| r.try_get(0))
        .transpose()?;
    let hold = tx.query_opt("SELECT fingerprint, message, held_at FROM removal_holds WHERE prof = $1", &[&key])?;
    summary.hold = hold
        .map(|r| {
            Ok::<_, StoreError>(RemovalHold {
                fingerprint: r.try_get(0)?,
                message: r.try_get(1)?,
                held_at: parse_time(r.try_get(2)?)?,
            })
        })
        .transpose()?;
    Ok(summary)
}

impl DriftStore for PgStore {
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
            let Some(key) = profile_key(tx, p)? else { return Ok(HashMap::new()) };
            let ids: Vec<&str> = ids.iter().copied().collect();
            let rows =
                tx.query("SELECT id, lifecycle_state FROM identities WHERE prof = $1 AND id = ANY($2)", &[&key, &ids])?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
        })
    }

    fn identity_count(&self, p: &ProfileRef) -> Result<u64, StoreError> {
        self.read(|tx| match profile_key(tx, p)? {
            Some(key) => {
                from_i64(tx.query_one("SELECT count(*) FROM identities WHERE prof = $1", &[&key])?.try_get(0)?)
            }
            None => Ok(0),
        })
    }

    fn hold_removals(&self, p: &ProfileRef, hold: &RemovalHold) -> Result<(), StoreError> {
        self.write(|tx| {
            let key = ensure_profile_key(tx, p)?;
            tx.execute(
                "INSERT INTO removal_holds (prof, fingerprint, message, held_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (prof) DO UPDATE SET fingerprint = excluded.fingerprint, message = excluded.message, \
                 held_at = excluded.held_at",
                &[&key, &hold.fingerprint, &hold.message, &hold.held_at.to_string()],
            )?;
            Ok(())
        })
    }

    fn release_removals(&self, p: &ProfileRef) -> Result<(), StoreError> {
        self.write(|tx| {
            if let Some(key) = profile_key(tx, p)? {
                tx.execute("DELETE FROM removal_holds WHERE prof = $1", &[&key])?;
            }
            Ok(())
        })
    }
}
