//! The store: where idsync keeps what it has synced. This module holds the
//! [`Store`] trait the sync engine talks to, the plain types that cross it
//! (connections, runs, staged changes, cursors) and [`StoreError`]; the
//! embedded SQLite implementation is in [`sqlite`], its schema history in
//! [`migrations`].
//!
//! The rule the trait is shaped around: a sync commits all of its changes and
//! its new cursor together or not at all. A run therefore stages its changes
//! page by page (each page its own short write) and [`Store::commit_run`]
//! applies them, the cursor and the run's end in one short transaction, so a
//! long sync never holds the database's write lock while it talks to its
//! source, and a run that dies halfway leaves nothing behind but staging that
//! [`Store::interrupt_unfinished_runs`] drops.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::account::{Account, ContentHash};
use crate::identity::{Identity, LinkRecord, LinkState};

mod identities;
pub mod migrations;
pub mod sqlite;

pub use sqlite::SqliteStore;

/// A connection's identity in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionRef {
    pub namespace: String,
    pub name: String,
}

impl ConnectionRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ConnectionRef { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ConnectionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A run's id in the run history; never reused, even after runs are deleted.
pub type RunId = i64;

/// What the store records when a run starts.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub connection: ConnectionRef,
    /// Why the run started: `Scheduled`, `Requested`, `RequestedAt`, ...
    pub trigger: String,
    /// The ResyncRequest that asked for the run, if one did.
    pub request: Option<String>,
    /// `Delta` or `Full`, as asked; [`RunFinish::mode`] says what ran.
    pub requested_mode: String,
    /// The operator instance running it.
    pub holder: String,
    pub started_at: jiff::Timestamp,
}

/// One change a run stages. The store computes an upsert's content hash
/// itself (`Account::content_hash`), so a stored hash always matches its data.
#[derive(Clone, Debug, PartialEq)]
pub enum StagedChange {
    Upsert(Account),
    /// The id of an account to delete.
    Delete(String),
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    Failed,
    /// Its operator died (or lost its lease) before it finished.
    Interrupted,
    Cancelled,
    /// It would have changed more than the connection's safeguards allow.
    SafeguardTripped,
    /// It computed its changes and applied none.
    DryRun,
}

impl RunOutcome {
    pub const ALL: [RunOutcome; 6] = [
        RunOutcome::Succeeded,
        RunOutcome::Failed,
        RunOutcome::Interrupted,
        RunOutcome::Cancelled,
        RunOutcome::SafeguardTripped,
        RunOutcome::DryRun,
    ];

    /// The name stored and shown (the same as the variant's).
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "Succeeded",
            RunOutcome::Failed => "Failed",
            RunOutcome::Interrupted => "Interrupted",
            RunOutcome::Cancelled => "Cancelled",
            RunOutcome::SafeguardTripped => "SafeguardTripped",
            RunOutcome::DryRun => "DryRun",
        }
    }

    /// The outcome named `s` (exactly as [`RunOutcome::as_str`] spells it).
    pub fn parse(s: &str) -> Option<Self> {
        RunOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run did to the connection's accounts, as the sync engine counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
}

/// What the store records when a run ends.
#[derive(Clone, Debug)]
pub struct RunFinish {
    pub outcome: RunOutcome,
    /// The mode that actually ran (a Delta can turn into a Full), if any did.
    pub mode: Option<String>,
    pub counts: Counts,
    pub message: String,
    pub finished_at: jiff::Timestamp,
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

/// One run in the run history.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub id: RunId,
    pub connection: ConnectionRef,
    pub trigger: String,
    pub request: Option<String>,
    pub requested_mode: String,
    pub holder: String,
    pub started_at: jiff::Timestamp,
    /// `None` while the run is going on (or its operator died).
    pub finished_at: Option<jiff::Timestamp>,
    pub outcome: Option<RunOutcome>,
    pub mode: Option<String>,
    pub counts: Counts,
    pub message: String,
}

/// An IdentityProfile's identity in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProfileRef {
    pub namespace: String,
    pub name: String,
}

impl ProfileRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ProfileRef { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ProfileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a profile has applied and seen, kept with its identities so that a
/// restarted operator knows what is still to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileState {
    /// The spec (JSON) whose mappings the identities were computed with.
    pub applied_spec: Option<String>,
    pub applied_generation: Option<i64>,
    /// Connection name -> its accounts version (see
    /// [`Store::connection_versions`]) as of the last processing.
    pub seen_versions: BTreeMap<String, u64>,
    /// The last schedule slot processed.
    pub last_scheduled: Option<jiff::Timestamp>,
    /// The earliest `next_processing` of its identities.
    pub next_time_based: Option<jiff::Timestamp>,
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

/// One processing run in the profile's run history.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessingRunRecord {
    /// Assigned by the store; ignored when recording.
    pub id: RunId,
    /// EventBased, Scheduled, Manual or TimeBased.
    pub trigger: String,
    /// The ResyncRequest that asked for it, if one did.
    pub request: Option<String>,
    pub started_at: jiff::Timestamp,
    pub finished_at: jiff::Timestamp,
    /// Succeeded, Failed or DryRun.
    pub outcome: RunOutcome,
    pub processed: u64,
    pub changed: u64,
    pub errors: u64,
    pub message: String,
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

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
    #[error("{0}")]
    Internal(String),
}

/// Where the sync engine keeps accounts, cursors and the run history.
/// Implementations are blocking: call them from a blocking task.
pub trait Store: Send + Sync + 'static {
    /// id -> content hash of every account of the connection (the diff's index).
    fn account_index(&self, c: &ConnectionRef) -> Result<HashMap<String, ContentHash>, StoreError>;
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
    fn stage(&self, run: RunId, changes: &[StagedChange]) -> Result<(), StoreError>;
    /// In ONE transaction: apply the run's staged upserts and deletes to the
    /// connection's accounts, apply the cursor update (`Set` stores value +
    /// settings_hash + updated_at = finish.finished_at), record the finish,
    /// drop the staging. Fails (changing nothing) if the run is unknown or
    /// already finished.
    fn commit_run(&self, run: RunId, cursor: CursorUpdate, finish: &RunFinish) -> Result<(), StoreError>;
    /// Drops the run's staging and records its finish; accounts and cursor
    /// untouched. Fails (changing nothing) if the run is unknown or already
    /// finished.
    fn abandon_run(&self, run: RunId, finish: &RunFinish) -> Result<(), StoreError>;
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

    // --- identities (see `crate::identity`) ---

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
    /// Records a run that committed nothing (failed, dry run). Returns its id.
    fn record_processing_run(&self, p: &ProfileRef, run: &ProcessingRunRecord) -> Result<RunId, StoreError>;
    /// Newest first.
    fn processing_runs(&self, p: &ProfileRef, limit: usize) -> Result<Vec<ProcessingRunRecord>, StoreError>;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_round_trip() {
        for o in RunOutcome::ALL {
            assert_eq!(RunOutcome::parse(o.as_str()), Some(o));
            assert_eq!(o.to_string(), format!("{o:?}"));
        }
        assert_eq!(RunOutcome::parse("succeeded"), None);
    }
}
