//! The store: where idsync keeps what it has synced. This module holds the
//! store's traits by role ([`AccountStore`] for the sync engine,
//! [`IdentityStore`] and [`ProcessingHistory`] for identity processing, and
//! [`Store`], all three), the types only the store's interface uses (staged
//! changes, cursors, processing snapshots and commits) and [`StoreError`];
//! the shared data (accounts, identities, runs) is `crate::model`'s. The
//! embedded SQLite implementation is in [`sqlite`], its schema history in
//! [`migrations`].
//!
//! The rule the trait is shaped around: a sync commits all of its changes and
//! its new cursor together or not at all. A run therefore stages its changes
//! page by page (each page its own short write) and [`AccountStore::commit_run`]
//! applies them, the cursor and the run's end in one short transaction, so a
//! long sync never holds the database's write lock while it talks to its
//! source, and a run that dies halfway leaves nothing behind but staging that
//! [`AccountStore::interrupt_unfinished_runs`] drops.

use std::collections::{BTreeMap, HashMap};

use crate::model::{
    Account, AccountChange, ConnectionRef, ContentHash, Identity, IdentitySummary, LinkRecord, LinkState, NewRun,
    ProcessingRunRecord, ProfileRef, RunFinish, RunId, RunRecord,
};

pub mod backup;
pub(crate) mod codec;
pub mod drift;
pub mod location;
pub mod migrations;
pub mod outbox;
pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod contract;

pub use location::StoreLocation;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// One change a run stages. The store computes an upsert's content hash
/// itself (`Account::content_hash`), so a stored hash always matches its data.
#[derive(Clone, Debug, PartialEq)]
pub enum StagedChange {
    Upsert(Account),
    /// The id of an account to delete.
    Delete(String),
}

/// An account as the store keeps it: its id, content hash and canonical
/// JSON. A run that writes an empty connection directly keeps its accounts
/// this way, encoded once, until it commits them
/// ([`AccountStore::commit_run_writing`]).
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedAccount {
    pub id: String,
    pub hash: ContentHash,
    pub data: String,
}

impl EncodedAccount {
    /// `account` with its content hash, already computed by the caller
    /// (`Account::content_hash`).
    pub fn new(account: &Account, hash: ContentHash) -> Self {
        EncodedAccount { id: account.id.clone(), hash, data: account.canonical_json() }
    }

    /// Bytes it holds in memory, roughly: what bounds a run's buffer.
    pub fn size(&self) -> usize {
        self.id.len() + self.data.len() + std::mem::size_of::<Self>()
    }
}

/// What a commit does to the connection's cursor.
#[derive(Clone, Debug, PartialEq)]
pub enum CursorUpdate {
    Keep,
    /// `settings_hash` identifies the source settings the cursor is valid
    /// for, so a changed connection can tell its old cursor is stale.
    Set {
        value: String,
        settings_hash: String,
    },
    Clear,
}

/// A connection's delta cursor as last committed.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredCursor {
    pub value: String,
    pub settings_hash: String,
    /// The `finished_at` of the run that set it.
    pub updated_at: jiff::Timestamp,
}

/// What a profile has applied and seen, kept with its identities so that a
/// restarted operator knows what is still to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileState {
    /// The spec (JSON) whose mappings the identities were computed with.
    pub applied_spec: Option<String>,
    pub applied_generation: Option<i64>,
    /// Connection name -> its accounts version (see
    /// [`IdentityStore::connection_versions`]) as of the last processing.
    pub seen_versions: BTreeMap<String, u64>,
    /// The last schedule slot processed.
    pub last_scheduled: Option<jiff::Timestamp>,
    /// The earliest `next_processing` of its identities.
    pub next_time_based: Option<jiff::Timestamp>,
    /// The mapping hash (`identity::process::mapping_hash`) the identities
    /// were last computed with, and the profile's numbers after that run:
    /// what a run over the changed identities only starts from (see
    /// [`ProcessingDelta`]). None before the first run that recorded them.
    pub mapping_hash: Option<String>,
    pub summary: Option<IdentitySummary>,
}

/// Everything one processing run reads, read in one transaction so that it
/// is consistent even while syncs commit.
#[derive(Clone, Debug, Default)]
pub struct ProcessingSnapshot {
    /// Accounts by connection name (the profile's namespace), ordered by id.
    pub accounts: BTreeMap<String, Vec<(Account, ContentHash)>>,
    /// Accounts version by connection name, 0 for a connection never synced.
    pub versions: BTreeMap<String, u64>,
    /// The profile's identities by id.
    pub identities: HashMap<String, Identity>,
    /// The profile's correlation records by (connection, account id).
    pub links: HashMap<(String, String), LinkRecord>,
    pub state: ProfileState,
}

impl ProcessingSnapshot {
    /// Logs (debug) what a store read for this snapshot since `started`.
    pub fn trace_read(&self, p: &ProfileRef, started: std::time::Instant) {
        tracing::debug!(
            profile = %p,
            accounts = self.accounts.values().map(Vec::len).sum::<usize>(),
            identities = self.identities.len(),
            elapsed_ms = started.elapsed().as_millis(),
            "read a processing snapshot"
        );
    }

    /// Lays `changes` to `connection`'s accounts over the snapshot, as if
    /// they had been synced: how a dry run of scope AccountsAndIdentities
    /// previews the identities with the accounts it would change. Versions
    /// are left as read; nothing is written.
    pub fn overlay(&mut self, connection: &str, changes: &[AccountChange]) {
        let accounts = self.accounts.entry(connection.to_string()).or_default();
        let mut by_id: BTreeMap<String, (Account, ContentHash)> =
            accounts.drain(..).map(|(a, hash)| (a.id.clone(), (a, hash))).collect();
        for change in changes {
            match change.apply(by_id.get(&change.account_id).map(|(a, _)| a)) {
                Some(after) => {
                    let hash = after.content_hash();
                    by_id.insert(after.id.clone(), (after, hash));
                }
                None => {
                    by_id.remove(&change.account_id);
                }
            }
        }
        *accounts = by_id.into_values().collect();
    }
}

/// What an event-based run over the changed identities only reads, in one
/// read transaction: the accounts that changed since the versions the
/// profile saw, the identities the changed authoritative accounts make, and
/// the accounts those identities are made of. Everything else is left in
/// the store.
#[derive(Clone, Debug, Default)]
pub struct ProcessingDelta {
    /// Accounts version by connection name, as of the read.
    pub versions: BTreeMap<String, u64>,
    /// By connection name: the ids of the accounts that changed since the
    /// profile's seen version (created, updated or deleted), ordered.
    pub changed: BTreeMap<String, Vec<String>>,
    /// By connection name: the stored accounts among the changed ones and
    /// those the read identities list (a deleted account is absent).
    pub accounts: BTreeMap<String, HashMap<String, (Account, ContentHash)>>,
    /// The profile's stored identities among the authoritative connection's
    /// changed ids and [`ProcessingDelta::time_due`], by id.
    pub identities: HashMap<String, Identity>,
    /// The ids of the stored identities whose `time_changes_at` has come by
    /// the read's `now`: their inputs may not have changed, but what
    /// expressions compute from `now` may have. Ordered.
    pub time_due: Vec<String>,
    pub state: ProfileState,
}

impl ProcessingDelta {
    /// Logs (debug) what a store read for this delta since `started`.
    pub fn trace_read(&self, p: &ProfileRef, started: std::time::Instant) {
        tracing::debug!(
            profile = %p,
            changed = self.changed.values().map(Vec::len).sum::<usize>(),
            identities = self.identities.len(),
            time_due = self.time_due.len(),
            elapsed_ms = started.elapsed().as_millis(),
            "read what changed since the last processing"
        );
    }
}

/// Every change a run recorded, in order (read in pages).
pub fn all_run_changes(store: &dyn AccountStore, run: RunId) -> Result<Vec<AccountChange>, StoreError> {
    const PAGE: usize = 1000;
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.run_changes(run, after, PAGE)?;
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            after = *last;
        }
        all.extend(page.into_iter().map(|(_, change)| change));
        if !full {
            return Ok(all);
        }
    }
}

/// What a processing run writes, all in one transaction.
#[derive(Clone, Debug, Default)]
pub struct ProcessingCommit {
    /// Identities created or changed (whole records).
    pub upserts: Vec<Identity>,
    /// Ids of identities to remove.
    pub deletes: Vec<String>,
    pub link_upserts: Vec<LinkRecord>,
    /// (connection, account id) of correlation records to remove.
    pub link_deletes: Vec<(String, String)>,
    /// Replaces the profile's state.
    pub state: ProfileState,
}

/// How much run history the store keeps: per connection (and per profile)
/// the newest `max_runs` runs, and none that finished more than `max_age`
/// ago. Pruned as runs finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_runs: u64,
    pub max_age: jiff::SignedDuration,
}

impl Default for Retention {
    /// 500 runs and 90 days: a quarter of hourly syncs' diffs, and three
    /// weeks of them where every hour brings one.
    fn default() -> Self {
        Retention { max_runs: 500, max_age: jiff::SignedDuration::from_hours(90 * 24) }
    }
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL error. Its text is the server's or the driver's: it
    /// never holds the connection's password (see `postgres::PgStore`).
    #[error("store database error: {}", postgres::error_text(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("cannot create the store's folder {path}: {source}")]
    CreateDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(
        "the store's database has schema version {found}, newer than the {supported} this idsync knows; \
         it was written by a newer idsync: run that one, or restore a backup of the database"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("the store's database did not switch to WAL mode (journal mode is {0:?})")]
    NotWal(String),
    #[error("run {0} is unknown to the store")]
    UnknownRun(RunId),
    #[error("run {0} has already finished")]
    RunFinished(RunId),
    #[error("the store's lock was poisoned by a panic in another thread")]
    Poisoned,
    #[error("the store holds data it cannot read: {0}")]
    Corrupt(String),
    #[error("{what} is too large for the store: {value}")]
    OutOfRange { what: &'static str, value: u64 },
    /// The store's settings are wrong (a URL that does not parse).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Internal(String),
}

/// Accounts, cursors and the sync run history: what the sync engine reads
/// and commits. Implementations are blocking: call them from a blocking task.
pub trait AccountStore: Send + Sync + 'static {
    /// id -> content hash of every account of the connection (the diff's index).
    fn account_index(&self, c: &ConnectionRef) -> Result<HashMap<String, ContentHash>, StoreError>;
    /// id -> content hash of the stored accounts among `ids` (those that
    /// exist): what a Delta's diff needs of the store, by index lookups, in
    /// time proportional to `ids`, not to the connection.
    fn account_hashes(&self, c: &ConnectionRef, ids: &[String]) -> Result<HashMap<String, ContentHash>, StoreError>;
    fn account_count(&self, c: &ConnectionRef) -> Result<u64, StoreError>;
    fn get_account(&self, c: &ConnectionRef, id: &str) -> Result<Option<Account>, StoreError>;
    /// Accounts ordered by id, after `after` (exclusive), at most `limit`.
    fn list_accounts(&self, c: &ConnectionRef, after: Option<&str>, limit: usize) -> Result<Vec<Account>, StoreError>;
    fn cursor(&self, c: &ConnectionRef) -> Result<Option<StoredCursor>, StoreError>;
    /// Records a run's start in the run history (the audit trail).
    fn start_run(&self, run: &NewRun) -> Result<RunId, StoreError>;
    /// Stages a page of changes for the run (own short transaction). Later
    /// stagings of the same id replace earlier ones. Fails if the run is
    /// unknown or already finished.
    fn stage(&self, run: RunId, changes: &[StagedChange]) -> Result<(), StoreError> {
        self.stage_recorded(run, changes, &[])
    }
    /// Stages a page as [`AccountStore::stage`] does and, in the same
    /// transaction, records what it changes account by account, after what
    /// the run recorded before. The record stays with a run that commits, a
    /// dry run and a run the safeguard held back; it goes with a run that
    /// fails or is cancelled, which changed nothing.
    fn stage_recorded(
        &self,
        run: RunId,
        changes: &[StagedChange],
        recorded: &[AccountChange],
    ) -> Result<(), StoreError>;
    /// In ONE transaction: apply the run's staged upserts and deletes to the
    /// connection's accounts, apply the cursor update (`Set` stores value +
    /// settings_hash + updated_at = finish.finished_at), record the finish,
    /// drop the staging. Fails (changing nothing) if the run is unknown or
    /// already finished.
    fn commit_run(&self, run: RunId, cursor: CursorUpdate, finish: &RunFinish) -> Result<(), StoreError> {
        self.commit_run_notifying(run, cursor, finish, &[])
    }
    /// [`AccountStore::commit_run`], adding `outbox` (the notifications
    /// announcing the result) to the notification outbox in the same
    /// transaction: they are sent if and only if the result committed.
    fn commit_run_notifying(
        &self,
        run: RunId,
        cursor: CursorUpdate,
        finish: &RunFinish,
        outbox: &[outbox::OutboxEntry],
    ) -> Result<(), StoreError> {
        self.commit_run_writing(run, &[], cursor, finish, outbox)
    }
    /// [`AccountStore::commit_run_notifying`], upserting `accounts` into the
    /// connection in the same transaction, before the staged changes: how a
    /// run into an empty connection writes its accounts once instead of
    /// staging them and copying them again. Nothing of them is visible, or
    /// left behind, unless this commits.
    fn commit_run_writing(
        &self,
        run: RunId,
        accounts: &[EncodedAccount],
        cursor: CursorUpdate,
        finish: &RunFinish,
        outbox: &[outbox::OutboxEntry],
    ) -> Result<(), StoreError>;
    /// Stages upserts already encoded: a run whose accounts outgrew what it
    /// may keep in memory moves them to the staging this way.
    fn stage_encoded(&self, run: RunId, accounts: &[EncodedAccount]) -> Result<(), StoreError>;
    /// Drops the run's staging and records its finish; accounts and cursor
    /// untouched. Fails (changing nothing) if the run is unknown or already
    /// finished.
    fn abandon_run(&self, run: RunId, finish: &RunFinish) -> Result<(), StoreError> {
        self.abandon_run_notifying(run, finish, &[])
    }
    /// [`AccountStore::abandon_run`], with the notifications announcing it
    /// in the same transaction.
    fn abandon_run_notifying(
        &self,
        run: RunId,
        finish: &RunFinish,
        outbox: &[outbox::OutboxEntry],
    ) -> Result<(), StoreError>;
    /// Runs that started but never finished (their operator died), for one
    /// connection or all: marked Interrupted with `message`, staging dropped.
    /// Returns them.
    fn interrupt_unfinished_runs(
        &self,
        c: Option<&ConnectionRef>,
        finished_at: jiff::Timestamp,
        message: &str,
    ) -> Result<Vec<RunRecord>, StoreError>;
    /// Newest first.
    fn runs(&self, c: &ConnectionRef, limit: usize) -> Result<Vec<RunRecord>, StoreError>;
    fn run(&self, id: RunId) -> Result<Option<RunRecord>, StoreError>;
    /// Removes the connection's accounts, cursor and staging (keeps run
    /// history). Returns accounts removed.
    fn purge_connection(&self, c: &ConnectionRef) -> Result<u64, StoreError>;
    /// Every connection the store has run a sync of, ordered.
    fn connections(&self) -> Result<Vec<ConnectionRef>, StoreError>;
    /// The stored accounts among `ids` (those that exist), ordered by id.
    fn get_accounts(&self, c: &ConnectionRef, ids: &[String]) -> Result<Vec<Account>, StoreError>;
    /// The run's changes in the order recorded: those after sequence number
    /// `after` (0: from the start), at most `limit`, each with its number.
    fn run_changes(&self, run: RunId, after: u64, limit: usize) -> Result<Vec<(u64, AccountChange)>, StoreError>;
}

/// Identities, correlation records and profile state: what identity
/// processing reads and commits, and `idsync identities` lists.
/// Implementations are blocking: call them from a blocking task.
pub trait IdentityStore: Send + Sync + 'static {
    /// The accounts version of each named connection of `namespace`: a
    /// counter that every `commit_run` applying at least one upsert or
    /// delete, and every `purge_connection` removing accounts, increases.
    /// 0 for a connection the store does not know.
    fn connection_versions(&self, namespace: &str, names: &[String]) -> Result<BTreeMap<String, u64>, StoreError>;
    /// The profile's state; the default when the store has none.
    fn profile_state(&self, p: &ProfileRef) -> Result<ProfileState, StoreError>;
    /// In one read transaction: the accounts and versions of `connections`
    /// (in the profile's namespace) and the profile's identities, links and
    /// state.
    fn processing_snapshot(&self, p: &ProfileRef, connections: &[String]) -> Result<ProcessingSnapshot, StoreError>;
    /// In ONE transaction: applies the commit's identity and link changes,
    /// replaces the profile's state and records `run` in its history.
    /// Returns the run's id.
    fn commit_processing(
        &self,
        p: &ProfileRef,
        commit: &ProcessingCommit,
        run: &ProcessingRunRecord,
    ) -> Result<RunId, StoreError>;
    /// In one read transaction, what changed since the profile last
    /// processed (see [`ProcessingDelta`]); `connections[0]` is the
    /// authoritative connection. None when the store cannot tell what
    /// changed since then (the profile never processed, or saw a version
    /// older than the store's change marks), and by default: the caller
    /// then reads a whole [`IdentityStore::processing_snapshot`]. Also
    /// reads the identities whose `time_changes_at` is at or before `now`
    /// ([`ProcessingDelta::time_due`]).
    fn processing_delta(
        &self,
        p: &ProfileRef,
        connections: &[String],
        now: jiff::Timestamp,
    ) -> Result<Option<ProcessingDelta>, StoreError> {
        let _ = (p, connections, now);
        Ok(None)
    }
    fn get_identity(&self, p: &ProfileRef, id: &str) -> Result<Option<Identity>, StoreError>;
    /// Identities ordered by id, after `after` (exclusive), at most `limit`,
    /// only those in lifecycle state `state` when given.
    fn list_identities(
        &self,
        p: &ProfileRef,
        state: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Identity>, StoreError>;
    /// Correlation records ordered by (connection, account id), only those
    /// in `state` when given.
    fn list_links(&self, p: &ProfileRef, state: Option<LinkState>) -> Result<Vec<LinkRecord>, StoreError>;
    /// Profiles the store holds identities or state for, ordered.
    fn profiles(&self) -> Result<Vec<ProfileRef>, StoreError>;
    /// Removes the profile's identities, links and state (keeps run
    /// history). Returns identities removed.
    fn purge_profile(&self, p: &ProfileRef) -> Result<u64, StoreError>;
}

/// The identity profiles' processing history (the audit trail of every
/// processing run, dry runs and failures included).
pub trait ProcessingHistory: Send + Sync + 'static {
    /// Records a run that committed nothing (failed, dry run). Returns its id.
    fn record_processing_run(&self, p: &ProfileRef, run: &ProcessingRunRecord) -> Result<RunId, StoreError>;
    /// Newest first.
    fn processing_runs(&self, p: &ProfileRef, limit: usize) -> Result<Vec<ProcessingRunRecord>, StoreError>;
}

/// Everything the operator keeps: one value the controllers share. Any type
/// with the five roles is a `Store`; a test fake implements only the roles
/// the code under test uses.
pub trait Store:
    AccountStore + IdentityStore + ProcessingHistory + outbox::NotificationOutbox + drift::DriftStore
{
}

impl<T: AccountStore + IdentityStore + ProcessingHistory + outbox::NotificationOutbox + drift::DriftStore> Store for T {}
