//! The notification outbox in PostgreSQL (table `outbox`): entries are
//! inserted with `ON CONFLICT (key) DO NOTHING` on their idempotency key, by
//! themselves or inside a run's commit ([`insert`]), and the worker records
//! each attempt.
//!
//! [`NotificationOutbox::due_notifications`] does not claim what it returns:
//! two replicas asking at once would both get an entry. The operator runs
//! the outbox worker on one replica only (the leader), so that never
//! happens; a receiver drops a redelivery by the entry's key anyway.

use ::postgres::{Row, Transaction};
use jiff::Timestamp;

use super::PgStore;
use crate::store::StoreError;
use crate::store::codec::{corrupt, from_i64, parse_time};
use crate::store::outbox::{Delivery, NotificationOutbox, OutboxEntry, OutboxRecord, PendingNotification};

const PENDING: &str = "Pending";
const SENT: &str = "Sent";
const ABANDONED: &str = "Abandoned";

/// How long delivered and abandoned entries are kept: their keys still
/// turn away a late duplicate (a request re-reconciled after a restart).
const KEEP_FINISHED_DAYS: i64 = 30;

/// Inserts the entries whose key is new, in the caller's transaction, in
/// one statement; of two entries with one key in `entries`, the first
/// counts. Returns how many were new.
pub(super) fn insert(tx: &mut Transaction<'_>, entries: &[OutboxEntry]) -> Result<usize, StoreError> {
    if entries.is_empty() {
        return Ok(0);
    }
    let recipients = entries
        .iter()
        .map(|e| serde_json::to_string(&e.recipients).map_err(|e| corrupt("outbox recipients", e)))
        .collect::<Result<Vec<String>, _>>()?;
    let column = |f: fn(&OutboxEntry) -> &str| entries.iter().map(f).collect::<Vec<&str>>();
    let keys = column(|e| &e.key);
    let namespaces = column(|e| &e.namespace);
    let providers = column(|e| &e.provider);
    let policies: Vec<Option<&str>> = entries.iter().map(|e| e.policy.as_deref()).collect();
    let events = column(|e| &e.event);
    let payloads = column(|e| &e.payload);
    let created: Vec<String> = entries.iter().map(|e| e.created_at.to_string()).collect();
    let created_ms: Vec<i64> = entries.iter().map(|e| e.created_at.as_millisecond()).collect();
    // WITH ORDINALITY + ORDER BY: rows go in as given, so the first of two
    // with one key is the one kept (DO NOTHING skips the later).
    let inserted = tx.execute(
        "INSERT INTO outbox (key, namespace, provider, policy, event, recipients, payload, created_at, \
         created_at_ms, next_attempt_ms, state) \
         SELECT t.key, t.namespace, t.provider, t.policy, t.event, t.recipients, t.payload, t.created_at, \
         t.created_at_ms, t.created_at_ms, $10 \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                     $8::text[], $9::int8[]) WITH ORDINALITY \
              AS t(key, namespace, provider, policy, event, recipients, payload, created_at, created_at_ms, n) \
         ORDER BY t.n \
         ON CONFLICT (key) DO NOTHING",
        &[&keys, &namespaces, &providers, &policies, &events, &recipients, &payloads, &created, &created_ms, &PENDING],
    )?;
    usize::try_from(inserted).map_err(|_| StoreError::Internal(format!("{inserted} outbox rows")))
}

const SELECT: &str = "SELECT id, key, namespace, provider, policy, event, recipients, payload, created_at, \
     attempts, state, last_error FROM outbox";

/// A row of [`SELECT`]: (id, entry, attempts, state, last error).
fn decode(row: &Row) -> Result<(i64, OutboxEntry, u32, String, String), StoreError> {
    let recipients: &str = row.try_get(6)?;
    let created_at: &str = row.try_get(8)?;
    let attempts: i32 = row.try_get(9)?;
    let entry = OutboxEntry {
        key: row.try_get(1)?,
        namespace: row.try_get(2)?,
        provider: row.try_get(3)?,
        policy: row.try_get(4)?,
        event: row.try_get(5)?,
        recipients: serde_json::from_str(recipients).map_err(|e| corrupt("outbox recipients", e))?,
        payload: row.try_get(7)?,
        created_at: parse_time(created_at)?,
    };
    let attempts = u32::try_from(attempts).map_err(|e| corrupt("outbox attempts", e))?;
    Ok((row.try_get(0)?, entry, attempts, row.try_get(10)?, row.try_get(11)?))
}

impl NotificationOutbox for PgStore {
    fn enqueue(&self, entries: &[OutboxEntry]) -> Result<usize, StoreError> {
        self.write(|tx| insert(tx, entries))
    }

    fn due_notifications(&self, now: Timestamp, limit: usize) -> Result<Vec<PendingNotification>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with_client(|db| {
            Ok(db.query(
                &format!("{SELECT} WHERE state = $1 AND next_attempt_ms <= $2 ORDER BY next_attempt_ms, id LIMIT $3"),
                &[&PENDING, &now.as_millisecond(), &limit],
            )?)
        })?;
        rows.iter()
            .map(|row| {
                let (id, entry, attempts, _, _) = decode(row)?;
                Ok(PendingNotification { id, entry, attempts })
            })
            .collect()
    }

    fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = self.with_client(|db| {
            Ok(db.query_one("SELECT min(next_attempt_ms) FROM outbox WHERE state = $1", &[&PENDING])?.try_get(0)?)
        })?;
        next.map(|ms| Timestamp::from_millisecond(ms).map_err(|e| corrupt("outbox time", e))).transpose()
    }

    fn record_delivery(&self, id: i64, delivery: &Delivery) -> Result<(), StoreError> {
        self.write(|tx| {
            match delivery {
                Delivery::Sent { at } => tx.execute(
                    "UPDATE outbox SET state = $2, attempts = attempts + 1, finished_at = $3, last_error = '' \
                     WHERE id = $1",
                    &[&id, &SENT, &at.to_string()],
                )?,
                Delivery::Retry { next, error, .. } => tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = $2, last_error = $3 WHERE id = $1",
                    &[&id, &next.as_millisecond(), error],
                )?,
                Delivery::GaveUp { at, error } => tx.execute(
                    "UPDATE outbox SET state = $2, attempts = attempts + 1, finished_at = $3, last_error = $4 \
                     WHERE id = $1",
                    &[&id, &ABANDONED, &at.to_string(), error],
                )?,
            };
            // Finished entries past their keeping time go as others finish.
            let at = match delivery {
                Delivery::Sent { at } | Delivery::Retry { at, .. } | Delivery::GaveUp { at, .. } => *at,
            };
            let cutoff = at - jiff::SignedDuration::from_hours(24 * KEEP_FINISHED_DAYS);
            tx.execute(
                "DELETE FROM outbox WHERE state <> $1 AND created_at_ms < $2",
                &[&PENDING, &cutoff.as_millisecond()],
            )?;
            Ok(())
        })
    }

    fn outbox_depth(&self) -> Result<u64, StoreError> {
        let n: i64 = self.with_client(|db| {
            Ok(db.query_one("SELECT count(*) FROM outbox WHERE state = $1", &[&PENDING])?.try_get(0)?)
        })?;
        from_i64(n)
    }

    fn outbox_records(&self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with_client(|db| Ok(db.query(&format!("{SELECT} ORDER BY id LIMIT $1"), &[&limit])?))?;
        rows.iter()
            .map(|row| {
                let (id, entry, attempts, state, last_error) = decode(row)?;
                Ok(OutboxRecord { id, entry, attempts, state, last_error })
            })
            .collect()
    }
}
