//! The SQLite store's schema history: [`MIGRATIONS`], applied in order, each
//! in its own transaction, with the number applied kept in the database's
//! `PRAGMA user_version`. A database migrated further than this code knows is
//! refused rather than guessed at.
//!
//! Adding a table is one more entry at the end of [`MIGRATIONS`]; never edit
//! or reorder an entry that has shipped, since databases already carry it.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// The schema, one step per entry: entry `i` takes a database from version
/// `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    V1_ACCOUNTS_RUNS_STAGING,
    V2_IDENTITIES,
    V3_RUN_CHANGES,
    V4_NOTIFICATION_OUTBOX,
    V5_ACCOUNT_MARKS,
    V6_IDENTITY_TIME_CHANGES,
    V7_DRIFT,
];

/// The schema version this code writes and reads.
pub fn latest_version() -> i64 {
    // A handful of entries; the cast cannot truncate.
    MIGRATIONS.len() as i64
}

/// Accounts, cursors, the run history and the runs' staging.
///
/// Connections get a small integer key (`conn`) so the per-account rows and
/// the id index do not repeat the namespace and name 100,000 times.
///
/// `accounts` is a rowid table with a unique (conn, id) index rather than a
/// WITHOUT ROWID table: an account's canonical JSON is hundreds of bytes, and
/// WITHOUT ROWID b-trees copy whole rows into their interior pages, which is
/// bigger and deeper for rows that size. `staging` rows are as big, but they
/// live only for one run and are read in key order, so WITHOUT ROWID keeps
/// them to a single b-tree there.
///
/// Times are RFC 3339 text (`jiff::Timestamp`'s own format), which
/// round-trips exactly and reads well in the audit trail.
const V1_ACCOUNTS_RUNS_STAGING: &str = "
CREATE TABLE connections (
    conn INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    UNIQUE (namespace, name)
);

CREATE TABLE accounts (
    conn INTEGER NOT NULL,
    id TEXT NOT NULL,
    hash BLOB NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (conn, id)
);

CREATE TABLE cursors (
    conn INTEGER PRIMARY KEY,
    value TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- AUTOINCREMENT: a run id is never handed out twice, even after the newest
-- runs are deleted, so stale staging or a stale id can never meet a new run.
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    conn INTEGER NOT NULL,
    trigger_kind TEXT NOT NULL,
    request TEXT,
    requested_mode TEXT NOT NULL,
    holder TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT,
    mode TEXT,
    created INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    unchanged INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_by_connection ON runs (conn, run_id);
-- Finding unfinished runs at start-up must not read the whole history.
CREATE INDEX runs_unfinished ON runs (conn) WHERE finished_at IS NULL;

-- op 0 = upsert (hash and data set), 1 = delete.
CREATE TABLE staging (
    run_id INTEGER NOT NULL,
    id TEXT NOT NULL,
    op INTEGER NOT NULL CHECK (op IN (0, 1)),
    hash BLOB,
    data TEXT,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;
";

/// IdentityProfiles' identities, correlation records, state and run history,
/// and the connections' accounts version.
///
/// `connections.version` is bumped by every commit or purge that changes a
/// connection's accounts, so a profile can tell whether it is out of date by
/// comparing a few integers instead of reading 100,000 hashes. It lives on
/// the connections row because that row is never deleted (runs refer to it):
/// a purged and re-synced connection keeps counting up and can never return
/// to a version a profile has already seen.
///
/// Profiles get a small integer key (`prof`) like connections do, for the
/// same reason. The profile row also carries the profile's state, and it
/// stays when the profile is purged so that its run history still joins.
/// `seen_versions` is a JSON object (connection name -> version): it is only
/// ever read and replaced whole.
///
/// `identities` is a rowid table for the reason `accounts` is one: an
/// identity's JSON (attributes, accounts) is hundreds of bytes. Its
/// `lifecycle_state` is copied out of the JSON so listing by state seeks an
/// index instead of decoding every identity. `identity_links` rows are small
/// and mostly key, so WITHOUT ROWID keeps them to one b-tree; their `state`
/// is checked so that a bad value fails the commit instead of every later
/// read. `candidates` is a JSON array, NULL when empty.
const V2_IDENTITIES: &str = "
ALTER TABLE connections ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

CREATE TABLE profiles (
    prof INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    applied_spec TEXT,
    applied_generation INTEGER,
    seen_versions TEXT NOT NULL DEFAULT '{}',
    last_scheduled TEXT,
    next_time_based TEXT,
    UNIQUE (namespace, name)
);

CREATE TABLE identities (
    prof INTEGER NOT NULL,
    id TEXT NOT NULL,
    lifecycle_state TEXT,
    data TEXT NOT NULL,
    PRIMARY KEY (prof, id)
);
CREATE INDEX identities_by_state ON identities (prof, lifecycle_state, id);

CREATE TABLE identity_links (
    prof INTEGER NOT NULL,
    connection TEXT NOT NULL,
    account_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('Correlated', 'Uncorrelated', 'Ambiguous')),
    identity TEXT,
    candidates TEXT,
    PRIMARY KEY (prof, connection, account_id)
) WITHOUT ROWID;

-- AUTOINCREMENT for the reason `runs` has it.
CREATE TABLE processing_runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    prof INTEGER NOT NULL,
    trigger_kind TEXT NOT NULL,
    request TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    processed INTEGER NOT NULL,
    changed INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX processing_runs_by_profile ON processing_runs (prof, run_id);
";

/// What each sync changed, account by account: the diff kept with the run
/// (and, for a dry run, what it would have changed). `seq` keeps the order
/// the engine recorded them in; `fields` is the JSON array of field changes.
/// Rows go with their run when the run history is pruned.
const V3_RUN_CHANGES: &str = "
CREATE TABLE run_changes (
    run_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('Created', 'Updated', 'Deleted')),
    fields TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
";

/// Notifications waiting to be sent (see `store::outbox`). `key` is the
/// idempotency key: `INSERT OR IGNORE` makes a second enqueue of the same
/// notification a no-op. Due times are Unix milliseconds, which compare as
/// numbers (RFC 3339 text with a varying number of fraction digits does not
/// sort as time). `recipients` is a JSON array; `payload` the event as JSON.
const V4_NOTIFICATION_OUTBOX: &str = "
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    provider TEXT NOT NULL,
    policy TEXT,
    event TEXT NOT NULL,
    recipients TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('Pending', 'Sent', 'Abandoned')),
    last_error TEXT NOT NULL DEFAULT '',
    finished_at TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_ms) WHERE state = 'Pending';
";

/// Which accounts changed at which accounts version, so that an event-based
/// processing run reads the accounts that changed since the version it saw
/// (and the identities they make) instead of all of them.
///
/// `account_marks` holds, per account ever stored, the connection version its
/// last insert, update of content or delete made (the version `commit_run`
/// and `purge_connection` bump to, after writing the accounts in the same
/// transaction: hence `version + 1`). Triggers keep it (delete, then insert:
/// an `OR REPLACE` would be overridden by the upsert that fires them), so it moves in the
/// very transaction that changes the accounts and the sync's commit path does
/// not change: a kill -9 leaves accounts and marks old or new together.
/// `connections.marked_from` is the version the marks start at: a profile
/// that saw an older version cannot learn from them what changed before it,
/// and processes in full.
///
/// `profiles.mapping_hash` and `profiles.summary` are what the identities
/// were last computed with and the profile's numbers then (JSON), so that a
/// run over a few changed identities can tell it may skip the others and
/// carry the numbers forward.
const V5_ACCOUNT_MARKS: &str = "
ALTER TABLE connections ADD COLUMN marked_from INTEGER NOT NULL DEFAULT 0;
UPDATE connections SET marked_from = version;

CREATE TABLE account_marks (
    conn INTEGER NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (conn, id)
) WITHOUT ROWID;
CREATE INDEX account_marks_by_version ON account_marks (conn, version);

CREATE TRIGGER accounts_mark_insert AFTER INSERT ON accounts BEGIN
    DELETE FROM account_marks WHERE conn = NEW.conn AND id = NEW.id;
    INSERT INTO account_marks (conn, id, version)
    VALUES (NEW.conn, NEW.id, (SELECT version + 1 FROM connections WHERE conn = NEW.conn));
END;
CREATE TRIGGER accounts_mark_update AFTER UPDATE OF hash ON accounts BEGIN
    DELETE FROM account_marks WHERE conn = NEW.conn AND id = NEW.id;
    INSERT INTO account_marks (conn, id, version)
    VALUES (NEW.conn, NEW.id, (SELECT version + 1 FROM connections WHERE conn = NEW.conn));
END;
CREATE TRIGGER accounts_mark_delete AFTER DELETE ON accounts BEGIN
    DELETE FROM account_marks WHERE conn = OLD.conn AND id = OLD.id;
    INSERT INTO account_marks (conn, id, version)
    VALUES (OLD.conn, OLD.id, (SELECT version + 1 FROM connections WHERE conn = OLD.conn));
END;

ALTER TABLE profiles ADD COLUMN mapping_hash TEXT;
ALTER TABLE profiles ADD COLUMN summary TEXT;
";

/// When an identity's time-dependent expressions could next compute
/// something else (`Identity::time_changes_at`, in microseconds since the
/// epoch), as a column so that a run over everyone reads just the identities
/// whose time has come instead of all of them.
///
/// Identities written before this have no such instant, and one of them
/// whose lifecycle moves with the time would be skipped forever: their input
/// hashes are cleared and their profiles' mapping hashes forgotten, so the
/// next run of each profile is a full one that evaluates everyone again.
const V6_IDENTITY_TIME_CHANGES: &str = "
ALTER TABLE identities ADD COLUMN time_changes_at INTEGER;
CREATE INDEX identities_by_time_changes ON identities (prof, time_changes_at) WHERE time_changes_at IS NOT NULL;
UPDATE identities SET data = json_set(data, '$.inputHash', '');
UPDATE profiles SET mapping_hash = NULL;
";

/// Access drift (see `identity::drift`) and the identity safeguard's hold.
///
/// `drift_cases` holds every open case of a profile with the time the first
/// processing run that saw it ran (`since`), so the age survives runs and
/// restarts; a run replaces the set, keeping `since` of the cases it sees
/// again. `identity` is '' for an orphan account, `account_id` '' for a
/// missing expected account. `drift_state` is the drift settings the cases
/// were computed with. `removal_holds` is a processing run the identity
/// safeguard held back: what it saw (`fingerprint`: the accounts versions
/// and mappings) and why, so that the same run is not tried again at every
/// reconcile until the data changes or someone confirms it.
const V7_DRIFT: &str = "
CREATE TABLE drift_cases (
    prof INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('OffboardedWithAccess', 'OrphanAccount', 'MissingExpectedAccount')),
    identity TEXT NOT NULL,
    connection TEXT NOT NULL,
    account_id TEXT NOT NULL,
    label TEXT NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (prof, kind, identity, connection, account_id)
) WITHOUT ROWID;

CREATE TABLE drift_state (
    prof INTEGER PRIMARY KEY,
    settings_hash TEXT NOT NULL,
    computed_at TEXT NOT NULL
);

CREATE TABLE removal_holds (
    prof INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    message TEXT NOT NULL,
    held_at TEXT NOT NULL
);
";

/// Reads the database's schema version.
pub fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Brings the database up to [`latest_version`], or refuses one that is
/// newer. Safe against another process migrating the same file at the same
/// time: each step re-reads the version under the write lock.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let latest = latest_version();
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = schema_version(&tx)?;
        if version > latest {
            return Err(StoreError::SchemaTooNew { found: version, supported: latest });
        }
        let Some(sql) = usize::try_from(version).ok().and_then(|v| MIGRATIONS.get(v)) else {
            // Up to date (a negative version cannot be written by us; treat
            // it as corruption rather than migrate over it).
            if version < 0 {
                return Err(StoreError::Corrupt(format!("negative schema version {version}")));
            }
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        tracing::info!(from = version, to = version + 1, "migrated the store's schema");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_database_gets_every_migration_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), latest_version());
        // Migrating again is a no-op (re-running a CREATE TABLE would fail).
        migrate(&mut conn).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), latest_version());
        for table in [
            "connections",
            "accounts",
            "cursors",
            "runs",
            "staging",
            "profiles",
            "identities",
            "identity_links",
            "processing_runs",
            "outbox",
            "account_marks",
            "drift_cases",
            "drift_state",
            "removal_holds",
        ] {
            let n: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1", [table], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(n, 1, "table {table}");
        }
    }

    #[test]
    fn a_newer_database_is_refused_untouched() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", latest_version() + 1).unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, supported } if found == latest_version() + 1 && supported == latest_version()),
            "{err}"
        );
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).unwrap();
        assert_eq!(tables, 0);
    }
}
