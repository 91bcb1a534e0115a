//! The PostgreSQL store's schema history: [`MIGRATIONS`], applied in order,
//! each in its own transaction, with the number applied kept in the
//! one-row table `idsync_schema`. Replicas starting together take turns
//! through a session advisory lock, so a migration runs exactly once; a
//! database migrated further than this code knows is refused.
//!
//! The tables follow the SQLite store's (`store::migrations`, whose comments
//! say why each exists); the first entry here is all of that schema at once,
//! since PostgreSQL databases start at this version. Where the two differ it
//! is for PostgreSQL's sake:
//!
//! - keys handed out once (run ids, connection and profile keys) are
//!   identity columns, which never hand a number out twice;
//! - content hashes are `bytea`; accounts and identities stay canonical JSON
//!   `text`: they are read and written whole, never queried inside, and
//!   `jsonb` would reorder their keys and cost a parse on every write;
//! - times stay RFC 3339 `text` as in SQLite (exact to the nanosecond, as
//!   `jiff` writes them), except the outbox's due times and the identities'
//!   `time_changes_at`, which are compared and so are numbers;
//! - `account_marks` is kept by the code that changes accounts, in the same
//!   transaction, instead of per-row triggers;
//! - the identity tables' keys (and what is compared with them) are
//!   `COLLATE "C"`: byte order, as SQLite's, so identities list and page in
//!   the same order whatever the database's locale, off their indexes.
//!
//! Adding a table is one more entry at the end of [`MIGRATIONS`]; never edit
//! or reorder an entry that has shipped.

use ::postgres::Client;

use crate::store::StoreError;

/// Advisory lock kinds (the first key of `pg_advisory_*lock(int, int)`), so
/// that the store's locks never collide with each other.
pub mod lock_kind {
    /// Migrating the schema (session lock, key 0).
    pub const MIGRATE: i32 = 0x1d5_0001;
    /// A connection's accounts (key: "namespace/name").
    pub const CONNECTION: i32 = 0x1d5_0002;
    /// A profile's identities (key: "namespace/name").
    pub const PROFILE: i32 = 0x1d5_0003;
}

/// The schema, one step per entry: entry `i` takes a database from version
/// `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1_SCHEMA];

/// The schema version this code writes and reads.
pub fn latest_version() -> i64 {
    // A handful of entries; the cast cannot truncate.
    MIGRATIONS.len() as i64
}

const V1_SCHEMA: &str = "
CREATE TABLE connections (
    conn BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    -- Bumped by every commit or purge that changes the accounts.
    version BIGINT NOT NULL DEFAULT 0,
    -- The version account_marks start at.
    marked_from BIGINT NOT NULL DEFAULT 0,
    UNIQUE (namespace, name)
);

-- Account ids sort bytewise (COLLATE \"C\"), as in SQLite, whatever the
-- database's collation: listings page by id, and the key serves that order.
CREATE TABLE accounts (
    conn BIGINT NOT NULL,
    id TEXT COLLATE \"C\" NOT NULL,
    hash BYTEA NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (conn, id)
);

CREATE TABLE cursors (
    conn BIGINT PRIMARY KEY,
    value TEXT NOT NULL,
    settings_hash TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE runs (
    run_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conn BIGINT NOT NULL,
    trigger_kind TEXT NOT NULL,
    request TEXT,
    requested_mode TEXT NOT NULL,
    holder TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT,
    mode TEXT,
    created BIGINT NOT NULL DEFAULT 0,
    updated BIGINT NOT NULL DEFAULT 0,
    deleted BIGINT NOT NULL DEFAULT 0,
    unchanged BIGINT NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_by_connection ON runs (conn, run_id);
CREATE INDEX runs_unfinished ON runs (conn) WHERE finished_at IS NULL;

-- op 0 = upsert (hash and data set), 1 = delete.
CREATE TABLE staging (
    run_id BIGINT NOT NULL,
    id TEXT COLLATE \"C\" NOT NULL,
    op SMALLINT NOT NULL CHECK (op IN (0, 1)),
    hash BYTEA,
    data TEXT,
    PRIMARY KEY (run_id, id)
);

CREATE TABLE run_changes (
    run_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('Created', 'Updated', 'Deleted')),
    fields TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE account_marks (
    conn BIGINT NOT NULL,
    id TEXT COLLATE \"C\" NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (conn, id)
);
CREATE INDEX account_marks_by_version ON account_marks (conn, version);

CREATE TABLE outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    namespace TEXT NOT NULL,
    provider TEXT NOT NULL,
    policy TEXT,
    event TEXT NOT NULL,
    recipients TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('Pending', 'Sent', 'Abandoned')),
    last_error TEXT NOT NULL DEFAULT '',
    finished_at TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_ms) WHERE state = 'Pending';

CREATE TABLE profiles (
    prof BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    applied_spec TEXT,
    applied_generation BIGINT,
    -- JSON object: connection name -> version; read and replaced whole.
    seen_versions TEXT NOT NULL DEFAULT '{}',
    last_scheduled TEXT,
    next_time_based TEXT,
    mapping_hash TEXT,
    summary TEXT,
    UNIQUE (namespace, name)
);

CREATE TABLE identities (
    prof BIGINT NOT NULL,
    id TEXT COLLATE \"C\" NOT NULL,
    lifecycle_state TEXT,
    data TEXT NOT NULL,
    -- Microseconds since the epoch (Identity::time_changes_at).
    time_changes_at BIGINT,
    PRIMARY KEY (prof, id)
);
CREATE INDEX identities_by_state ON identities (prof, lifecycle_state, id);
CREATE INDEX identities_by_time_changes ON identities (prof, time_changes_at) WHERE time_changes_at IS NOT NULL;

CREATE TABLE identity_links (
    prof BIGINT NOT NULL,
    connection TEXT COLLATE \"C\" NOT NULL,
    account_id TEXT COLLATE \"C\" NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('Correlated', 'Uncorrelated', 'Ambiguous')),
    identity TEXT COLLATE \"C\",
    -- JSON array, NULL when empty.
    candidates TEXT,
    PRIMARY KEY (prof, connection, account_id)
);

CREATE TABLE processing_runs (
    run_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prof BIGINT NOT NULL,
    trigger_kind TEXT NOT NULL,
    request TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    processed BIGINT NOT NULL,
    changed BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX processing_runs_by_profile ON processing_runs (prof, run_id);

CREATE TABLE drift_cases (
    prof BIGINT NOT NULL,
    kind TEXT COLLATE \"C\" NOT NULL CHECK (kind IN ('OffboardedWithAccess', 'OrphanAccount', 'MissingExpectedAccount')),
    identity TEXT COLLATE \"C\" NOT NULL,
    connection TEXT COLLATE \"C\" NOT NULL,
    account_id TEXT COLLATE \"C\" NOT NULL,
    label TEXT NOT NULL,
    since TEXT COLLATE \"C\" NOT NULL,
    PRIMARY KEY (prof, kind, identity, connection, account_id)
);

CREATE TABLE drift_state (
    prof BIGINT PRIMARY KEY,
    settings_hash TEXT NOT NULL,
    computed_at TEXT NOT NULL
);

CREATE TABLE removal_holds (
    prof BIGINT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    message TEXT NOT NULL,
    held_at TEXT NOT NULL
);
";

/// The schema version of the database: 0 for an empty one.
pub fn schema_version(client: &mut Client) -> Result<i64, StoreError> {
    let exists: bool = client.query_one("SELECT to_regclass('idsync_schema') IS NOT NULL", &[])?.try_get(0)?;
    if !exists {
        return Ok(0);
    }
    let row = client.query_opt("SELECT version FROM idsync_schema", &[])?;
    Ok(match row {
        Some(row) => row.try_get(0)?,
        None => 0,
    })
}

/// Brings the database up to [`latest_version`], or refuses one that is
/// newer. Holds a session advisory lock while it does, so replicas that
/// start together migrate one after the other (the later ones find nothing
/// to do).
pub fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1, 0)", &[&lock_kind::MIGRATE])?;
    let result = migrate_locked(client);
    // Released on every path; a dropped connection releases it too.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1, 0)", &[&lock_kind::MIGRATE]);
    result?;
    unlocked?;
    Ok(())
}

fn migrate_locked(client: &mut Client) -> Result<(), StoreError> {
    let latest = latest_version();
    loop {
        let version = schema_version(client)?;
        if version > latest {
            return Err(StoreError::SchemaTooNew { found: version, supported: latest });
        }
        if version < 0 {
            return Err(StoreError::Corrupt(format!("negative schema version {version}")));
        }
        let Some(sql) = usize::try_from(version).ok().and_then(|v| MIGRATIONS.get(v)) else {
            return Ok(());
        };
        let mut tx = client.transaction()?;
        if version == 0 {
            tx.batch_execute(
                "CREATE TABLE idsync_schema (version BIGINT NOT NULL); INSERT INTO idsync_schema VALUES (0);",
            )?;
        }
        tx.batch_execute(sql)?;
        tx.execute("UPDATE idsync_schema SET version = $1", &[&(version + 1)])?;
        tx.commit()?;
        tracing::info!(from = version, to = version + 1, "migrated the store's PostgreSQL schema");
    }
}
