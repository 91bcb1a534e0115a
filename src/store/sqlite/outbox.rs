//! The notification outbox in SQLite (table `outbox`): entries are inserted
//! with `INSERT OR IGNORE` on their idempotency key, by themselves or inside
//! a run's commit (`insert`), and the worker records each attempt.

use jiff::Timestamp;
use rusqlite::{Connection, Row, params};

use super::SqliteStore;
use crate::store::StoreError;
use crate::store::codec::{corrupt, parse_time};
use crate::store::outbox::{Delivery, NotificationOutbox, OutboxEntry, OutboxRecord, PendingNotification};

const PENDING: &str = "Pending";
const SENT: &str = "Sent";
const ABANDONED: &str = "Abandoned";

/// How long delivered and abandoned entries are kept: their keys still
/// turn away a late duplicate (a request re-reconciled after a restart).
const KEEP_FINISHED_DAYS: i64 = 30;

/// Inserts the entries whose key is new, in the caller's transaction.
/// Returns how many were new.
pub(super) fn insert(tx: &Connection, entries: &[OutboxEntry]) -> Result<usize, StoreError> {
    let mut inserted = 0;
    for e in entries {
        let recipients = serde_json::to_string(&e.recipients).map_err(|e| corrupt("outbox recipients", e))?;
        inserted += tx
            .prepare_cached(
                "INSERT OR IGNORE INTO outbox (key, namespace, provider, policy, event, recipients, payload, \
                 created_at, created_at_ms, next_attempt_ms, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
            )?
            .execute(params![
                e.key,
                e.namespace,
                e.provider,
                e.policy,
                e.event,
                recipients,
                e.payload,
                e.created_at.to_string(),
                e.created_at.as_millisecond(),
                PENDING
            ])?;
    }
    Ok(inserted)
}

fn entry(row: &Row<'_>) -> rusqlite::Result<(i64, RawEntry, u32, String, String)> {
    Ok((
        row.get(0)?,
        RawEntry {
            key: row.get(1)?,
            namespace: row.get(2)?,
            provider: row.get(3)?,
            policy: row.get(4)?,
            event: row.get(5)?,
            recipients: row.get(6)?,
            payload: row.get(7)?,
            created_at: row.get(8)?,
        },
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
    ))
}

const SELECT: &str = "SELECT id, key, namespace, provider, policy, event, recipients, payload, created_at, \
     attempts, state, last_error FROM outbox";

struct RawEntry {
    key: String,
    namespace: String,
    provider: String,
    policy: Option<String>,
    event: String,
    recipients: String,
    payload: String,
    created_at: String,
}

impl RawEntry {
    fn decode(self) -> Result<OutboxEntry, StoreError> {
        Ok(OutboxEntry {
            recipients: serde_json::from_str(&self.recipients).map_err(|e| corrupt("outbox recipients", e))?,
            created_at: parse_time(&self.created_at)?,
            key: self.key,
            namespace: self.namespace,
            provider: self.provider,
            policy: self.policy,
            event: self.event,
            payload: self.payload,
        })
    }
}

impl NotificationOutbox for SqliteStore {
    fn enqueue(&self, entries: &[OutboxEntry]) -> Result<usize, StoreError> {
        self.write(|tx| insert(tx, entries))
    }

    fn due_notifications(&self, now: Timestamp, limit: usize) -> Result<Vec<PendingNotification>, StoreError> {
        let db = self.lock()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = db.prepare_cached(&format!(
            "{SELECT} WHERE state = ?1 AND next_attempt_ms <= ?2 ORDER BY next_attempt_ms, id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![PENDING, now.as_millisecond(), limit], entry)?;
        let mut due = Vec::new();
        for row in rows {
            let (id, raw, attempts, _, _) = row?;
            due.push(PendingNotification { id, entry: raw.decode()?, attempts });
        }
        Ok(due)
    }

    fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let db = self.lock()?;
        let next: Option<i64> = db
            .prepare_cached("SELECT min(next_attempt_ms) FROM outbox WHERE state = ?1")?
            .query_row([PENDING], |r| r.get(0))?;
        next.map(|ms| Timestamp::from_millisecond(ms).map_err(|e| corrupt("outbox time", e))).transpose()
    }

    fn record_delivery(&self, id: i64, delivery: &Delivery) -> Result<(), StoreError> {
        self.write(|tx| {
            match delivery {
                Delivery::Sent { at } => tx
                    .prepare_cached(
                        "UPDATE outbox SET state = ?2, attempts = attempts + 1, finished_at = ?3, last_error = '' \
                         WHERE id = ?1",
                    )?
                    .execute(params![id, SENT, at.to_string()])?,
                Delivery::Retry { next, error, .. } => tx
                    .prepare_cached(
                        "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, last_error = ?3 \
                         WHERE id = ?1",
                    )?
                    .execute(params![id, next.as_millisecond(), error])?,
                Delivery::GaveUp { at, error } => tx
                    .prepare_cached(
                        "UPDATE outbox SET state = ?2, attempts = attempts + 1, finished_at = ?3, last_error = ?4 \
                         WHERE id = ?1",
                    )?
                    .execute(params![id, ABANDONED, at.to_string(), error])?,
            };
            // Finished entries past their keeping time go as others finish.
            let at = match delivery {
                Delivery::Sent { at } | Delivery::Retry { at, .. } | Delivery::GaveUp { at, .. } => *at,
            };
            let cutoff = at - jiff::SignedDuration::from_hours(24 * KEEP_FINISHED_DAYS);
            tx.prepare_cached("DELETE FROM outbox WHERE state != ?1 AND created_at_ms < ?2")?
                .execute(params![PENDING, cutoff.as_millisecond()])?;
            Ok(())
        })
    }

    fn outbox_depth(&self) -> Result<u64, StoreError> {
        let db = self.lock()?;
        let n: i64 =
            db.prepare_cached("SELECT count(*) FROM outbox WHERE state = ?1")?.query_row([PENDING], |r| r.get(0))?;
        crate::store::codec::from_i64(n)
    }

    fn outbox_records(&self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let db = self.lock()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = db.prepare_cached(&format!("{SELECT} ORDER BY id LIMIT ?1"))?;
        let rows = stmt.query_map([limit], entry)?;
        let mut records = Vec::new();
        for row in rows {
            let (id, raw, attempts, state, last_error) = row?;
            records.push(OutboxRecord { id, entry: raw.decode()?, attempts, state, last_error });
        }
        Ok(records)
    }
}
