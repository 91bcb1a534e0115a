//! Copies of the store's database: `idsync store backup` and `idsync store
//! restore`, and the lock a running idsync holds on its store so that a
//! restore never swaps the file under it.
//!
//! The backup is SQLite's online backup: one read transaction copies every
//! page, so a copy taken while the operator commits is exactly one
//! committed state (WAL readers never block the writer, nor it them). The
//! copy is checked (`PRAGMA integrity_check`, schema version) before it is
//! renamed into place, so a backup file that exists is whole.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::migrations;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no store at {0}")]
    NoStore(PathBuf),
    #[error(
        "the store {store} is in use by a running idsync (it holds {lock}); stop it first \
         (in a cluster: kubectl scale deployment/idsync --replicas=0, then restore from a Pod that mounts the claim)"
    )]
    InUse { store: PathBuf, lock: PathBuf },
    #[error("{path} is not a usable idsync store: {reason}")]
    NotAStore { path: PathBuf, reason: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("copying {from} to {to}: {source}")]
    Sqlite { from: PathBuf, to: PathBuf, source: rusqlite::Error },
}

/// What a backup or restore copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    pub schema_version: i64,
}

/// An exclusive advisory lock on `<store>.lock`, held by `idsync run` and
/// `idsync dev` while their store is open, and by a restore.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// The lock file of the store at `store`.
    pub fn path(store: &Path) -> PathBuf {
        sibling(store, ".lock")
    }

    /// Takes the lock, or says who has it.
    pub fn acquire(store: &Path) -> Result<Self, BackupError> {
        let lock = Self::path(store);
        if let Some(parent) = lock.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| BackupError::Io {
                what: "cannot create",
                path: parent.to_owned(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| BackupError::Io { what: "cannot open", path: lock.clone(), source })?;
        match file.try_lock() {
            Ok(()) => Ok(StoreLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(BackupError::InUse { store: store.to_owned(), lock }),
            Err(TryLockError::Error(source)) => Err(BackupError::Io { what: "cannot lock", path: lock, source }),
        }
    }
}

/// Copies the store at `store` to `to` (replacing it), online.
pub fn backup(store: &Path, to: &Path) -> Result<Copied, BackupError> {
    if !store.is_file() {
        return Err(BackupError::NoStore(store.to_owned()));
    }
    let partial = sibling(to, ".partial");
    let sqlite = |source| BackupError::Sqlite { from: store.to_owned(), to: to.to_owned(), source };
    let _ = std::fs::remove_file(&partial);
    let source = Connection::open_with_flags(store, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlite)?;
    {
        let mut copy = Connection::open(&partial).map_err(sqlite)?;
        let backup = Backup::new(&source, &mut copy).map_err(sqlite)?;
        // All pages in one step: one read transaction, one committed state.
        loop {
            match backup.step(-1).map_err(sqlite)? {
                StepResult::Done => break,
                // Another connection holds a lock SQLite must wait for.
                StepResult::Busy | StepResult::Locked => std::thread::sleep(Duration::from_millis(50)),
                StepResult::More => {}
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        drop(backup);
        // The copy carries the store's WAL mode; one file is what a backup
        // should be, so it leaves with a rollback journal and no -wal/-shm
        // files (idsync switches it back to WAL when it opens it).
        let _: String =
            copy.pragma_update_and_check(None, "journal_mode", "DELETE", |row| row.get(0)).map_err(sqlite)?;
    }
    let checked = check(&partial);
    let schema_version = match checked {
        Ok(version) => version,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::rename(&partial, to).map_err(|source| BackupError::Io {
        what: "cannot write",
        path: to.to_owned(),
        source,
    })?;
    let bytes = size(to)?;
    Ok(Copied { bytes, schema_version })
}

/// Replaces the store at `store` with the backup `from`, after checking the
/// backup, while no idsync has the store open. The store it replaces is
/// kept beside it as `<store>.before-restore`.
pub fn restore(from: &Path, store: &Path) -> Result<Copied, BackupError> {
    let _lock = StoreLock::acquire(store)?;
    if !from.is_file() {
        return Err(BackupError::NoStore(from.to_owned()));
    }
    let schema_version = check(from)?;
    let incoming = sibling(store, ".restoring");
    std::fs::copy(from, &incoming).map_err(io("cannot copy to", &incoming))?;
    File::open(&incoming).and_then(|f| f.sync_all()).map_err(io("cannot flush", &incoming))?;
    if store.exists() {
        let before = sibling(store, ".before-restore");
        std::fs::rename(store, &before).map_err(io("cannot set aside", store))?;
    }
    // The old store's write-ahead log belongs to the old file: left there,
    // SQLite would replay it into the restored one.
    for suffix in ["-wal", "-shm"] {
        let path = sibling(store, suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(BackupError::Io { what: "cannot remove", path, source }),
        }
    }
    std::fs::rename(&incoming, store).map_err(io("cannot move into place", store))?;
    if let Some(dir) = store.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The rename is durable once the folder is.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(Copied { bytes: size(store)?, schema_version })
}

/// The database at `path` is whole and an idsync store this idsync can
/// open: its schema version.
fn check(path: &Path) -> Result<i64, BackupError> {
    let not_a_store = |reason: String| BackupError::NotAStore { path: path.to_owned(), reason };
    let db =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| not_a_store(e.to_string()))?;
    let integrity: String =
        db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).map_err(|e| not_a_store(e.to_string()))?;
    if integrity != "ok" {
        return Err(not_a_store(format!("integrity check: {integrity}")));
    }
    let version = migrations::schema_version(&db).map_err(|e| not_a_store(e.to_string()))?;
    let latest = migrations::latest_version();
    if version < 1 {
        return Err(not_a_store("it has no idsync schema".to_string()));
    }
    if version > latest {
        return Err(not_a_store(format!(
            "its schema version {version} is newer than the {latest} this idsync knows; use the idsync that wrote it"
        )));
    }
    Ok(version)
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> BackupError + 'p {
    move |source| BackupError::Io { what, path: path.to_owned(), source }
}

/// `path` with `suffix` added to its file name (`idsync.db` → `idsync.db.lock`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn size(path: &Path) -> Result<u64, BackupError> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|source| BackupError::Io {
        what: "cannot read",
        path: path.to_owned(),
        source,
    })
}
