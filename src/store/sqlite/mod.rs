//! [`SqliteStore`]: the store in an embedded SQLite file (WAL mode), one
//! connection behind a mutex. Every call is one short transaction; a run's
//! pages go to the `staging` table and only `commit_run` touches
//! `accounts`, so atomicity of a whole sync is SQLite's own.
//!
//! - [`accounts`]: accounts, cursors and the sync run history
//!   ([`AccountStore`](super::AccountStore)).
//! - [`identities`]: identities, correlation records, profile state and the
//!   processing history ([`IdentityStore`](super::IdentityStore),
//!   [`ProcessingHistory`](super::ProcessingHistory)).
//! - [`changes`]: what each sync changed, account by account, and pruning
//!   the run history.
//! - [`outbox`]: notifications waiting to be sent
//!   ([`NotificationOutbox`](super::outbox::NotificationOutbox)).
//! - [`drift`]: access drift cases and the identity safeguard's hold
//!   ([`DriftStore`](super::drift::DriftStore)).

mod accounts;
mod changes;
mod drift;
mod identities;
mod outbox;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::{Retention, StoreError, migrations};

/// How long a call waits for another process's write to finish before it
/// fails. Our own writes are short (a page, or one commit of seconds at most).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A first full sync writes a WAL the size of all its accounts; once it has
/// been checkpointed, shrink it back to this rather than keep it forever.
const JOURNAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// Page cache, in KiB (SQLite takes negative values as KiB). Over the default
/// 2 MiB it keeps most of a 100,000-account connection's pages in memory
/// between the diff's index, the commit and listings (20-30% faster in
/// `benches/store.rs`), for a bounded 32 MiB.
const CACHE_KIB: i64 = 32 * 1024;

/// Prepared statements kept compiled. rusqlite's default of 16 is fewer than
/// the store's distinct statements (about 50 with the identity ones), so a
/// sync's commit and a profile's processing would keep evicting each other's.
const STATEMENT_CACHE: usize = 64;

/// The store in an embedded SQLite database.
pub struct SqliteStore {
    // rusqlite's Connection is Send but not Sync; the mutex also serializes
    // our own writers, so they never wait on each other inside SQLite.
    db: Mutex<Connection>,
    /// How much run history to keep; pruned as runs finish.
    retention: Retention,
}

impl SqliteStore {
    /// Opens (creating) the database at `path` (parent folders created), in
    /// WAL mode with a busy timeout, and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::CreateDir { path: parent.to_owned(), source })?;
        }
        let mut db = Connection::open(path)?;
        db.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: other connections to the file (another process, sqlite3 while
        // debugging) read while a commit writes, a commit appends instead of
        // rewriting pages twice, and a killed process leaves a WAL that the
        // next open simply ignores past its last commit.
        let mode: String = db.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal(mode));
        }
        // In WAL mode NORMAL is still atomic and survives a killed process;
        // only a power loss can drop the last commits, whole, cursor included.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)?;
        db.pragma_update(None, "cache_size", -CACHE_KIB)?;
        db.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrations::migrate(&mut db)?;
        Ok(SqliteStore { db: Mutex::new(db), retention: Retention::default() })
    }

    /// The store keeping `retention` of run history instead of the default.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        migrations::schema_version(&*self.lock()?)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.db.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Runs `f` in one write transaction, committed only if `f` succeeds.
    /// IMMEDIATE takes the write lock up front: a deferred transaction that
    /// reads first and then writes can fail with SQLITE_BUSY at once, without
    /// the busy timeout, when another process wrote in between.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut db = self.lock()?;
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in one read transaction, so that everything it reads is one
    /// snapshot even while another process commits.
    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut db = self.lock()?;
        // Deferred: it takes no lock until its first read, and that read's
        // WAL snapshot is what every later statement sees.
        let tx = db.transaction()?;
        let out = f(&tx)?;
        // Nothing was written; ending it either way releases the snapshot.
        tx.commit()?;
        Ok(out)
    }
}
