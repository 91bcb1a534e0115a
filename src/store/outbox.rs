//! The notification outbox: notifications waiting to be sent, written in
//! the same transaction as what they announce (a sync's result) so that a
//! crash can neither lose one nor announce something that did not commit.
//! The worker (`crate::notify`) sends due entries and records each attempt.
//!
//! An entry's `key` is its idempotency key: unique per (event, object, run
//! or request, provider, recipients), so enqueuing the same notification
//! twice (a re-reconcile after a crash) is a no-op, and the receiver can
//! drop a redelivery (`Idempotency-Key`, the mail's Message-ID).

use jiff::Timestamp;

use super::StoreError;

/// A notification to send. The payload is the event as JSON, rendered to
/// words at send time; no credential is ever part of it (the provider's
/// Secrets are read when sending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub key: String,
    /// The namespace of the provider (and of the object the event is about).
    pub namespace: String,
    /// The NotificationProvider to send through.
    pub provider: String,
    /// The NotificationPolicy that routed it, none for a request's own
    /// `spec.notify` addresses.
    pub policy: Option<String>,
    /// The event's type (`SyncSucceeded`…).
    pub event: String,
    /// Mail recipients (empty for a webhook).
    pub recipients: Vec<String>,
    pub payload: String,
    pub created_at: Timestamp,
}

/// An entry due for (another) delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingNotification {
    pub id: i64,
    pub entry: OutboxEntry,
    /// Attempts made so far.
    pub attempts: u32,
}

/// How one delivery attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Sent {
        at: Timestamp,
    },
    /// Failed; try again at `next`.
    Retry {
        at: Timestamp,
        next: Timestamp,
        error: String,
    },
    /// Failed for the last time: the entry is kept as abandoned.
    GaveUp {
        at: Timestamp,
        error: String,
    },
}

/// The state of an entry, for tests and `idsync` commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    pub id: i64,
    pub entry: OutboxEntry,
    pub attempts: u32,
    /// `Pending`, `Sent` or `Abandoned`.
    pub state: String,
    pub last_error: String,
}

/// The outbox. Implementations are blocking: call them from a blocking task.
pub trait NotificationOutbox: Send + Sync + 'static {
    /// Adds entries whose key is new (own transaction); returns how many.
    fn enqueue(&self, entries: &[OutboxEntry]) -> Result<usize, StoreError>;
    /// Pending entries due at `now`, oldest first, at most `limit`.
    fn due_notifications(&self, now: Timestamp, limit: usize) -> Result<Vec<PendingNotification>, StoreError>;
    /// When the next pending entry is due, if any is pending.
    fn next_due(&self) -> Result<Option<Timestamp>, StoreError>;
    /// Records an attempt on entry `id`.
    fn record_delivery(&self, id: i64, delivery: &Delivery) -> Result<(), StoreError>;
    /// Pending entries.
    fn outbox_depth(&self) -> Result<u64, StoreError>;
    /// Every entry, oldest first, at most `limit`.
    fn outbox_records(&self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError>;
}
