//! [`PgStore`]: the store in a PostgreSQL database, for operators that
//! outgrow one pod (several active replicas, a million identities). The same
//! traits and guarantees as the SQLite store: a sync's accounts and cursor
//! commit in one transaction or not at all, identity processing commits
//! atomically, and reads that must be consistent run in one snapshot.
//!
//! Connections come from a small pool of blocking clients (`postgres`, the
//! blocking face of tokio-postgres): the store's traits are blocking and are
//! called from blocking tasks, never from async code directly.
//!
//! - [`accounts`]: accounts, cursors and the sync run history
//!   ([`AccountStore`](super::AccountStore)), and how replicas take turns.
//! - [`changes`]: what each sync changed, account by account, and pruning
//!   the run history (and the processing history's pruning).
//! - [`outbox`]: notifications waiting to be sent
//!   ([`NotificationOutbox`](super::outbox::NotificationOutbox)).
//! - [`schema`]: the schema history and migrating under an advisory lock.
//! - [`pool`]: the connection pool.
//! - [`testing`] (tests and benchmarks): a throwaway cluster and a fresh
//!   database per test.

mod accounts;
mod changes;
mod outbox;

// Identities, processing history and drift (IdentityStore,
// ProcessingHistory, DriftStore): a profile's rows, read in one snapshot and
// committed under the profile's advisory lock.
mod drift;
mod history;
mod identities;
#[cfg(test)]
mod identities_tests;
mod profiles;

pub mod pool;
pub mod schema;
#[doc(hidden)]
pub mod testing;

use std::str::FromStr;
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::{Client, IsolationLevel, Transaction};

use super::{Retention, StoreError};
use pool::Pool;

/// Connections a store keeps at most: one per concurrent sync and processing
/// run, with room for the reconcilers' reads.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// How long connecting to the server may take before the store gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a write transaction is tried when PostgreSQL aborts it to
/// resolve a deadlock or a serialization conflict with another replica.
const WRITE_ATTEMPTS: usize = 3;

/// Where the store's database is, and how to log in.
#[derive(Clone)]
pub struct PgOptions {
    /// A `postgres://` URL (or libpq key=value string). A password in it is
    /// used, but never shown (see [`PgOptions::describe`]).
    pub url: String,
    /// The password, when it comes from a Secret rather than the URL; it
    /// replaces one in the URL.
    pub password: Option<String>,
    /// PEM certificates of the CA that signed the server's certificate,
    /// when it is not one the system trusts.
    pub ca_pem: Option<Vec<u8>>,
    pub max_connections: usize,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.describe())
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<given>"))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions { url: url.into(), password: None, ca_pem: None, max_connections: DEFAULT_MAX_CONNECTIONS }
    }

    /// The database as a person may see it in logs and status:
    /// `postgres://user@host:port/db`, without the password, or a fixed text
    /// when the URL does not parse (its text might hold the password).
    pub fn describe(&self) -> String {
        match ::postgres::Config::from_str(&self.url) {
            Ok(config) => describe(&config),
            Err(_) => "an unreadable PostgreSQL URL".to_string(),
        }
    }

    /// The client configuration: the URL's, with the password given apart,
    /// a connect timeout and the application name idsync shows in
    /// `pg_stat_activity`.
    pub fn config(&self) -> Result<::postgres::Config, StoreError> {
        // The parser's error names what is wrong, not the URL's text.
        let mut config = ::postgres::Config::from_str(&self.url)
            .map_err(|e| StoreError::Config(format!("the PostgreSQL URL is not valid: {e}")))?;
        if let Some(password) = &self.password {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("idsync");
        }
        Ok(config)
    }
}

fn describe(config: &::postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            ::postgres::config::Host::Tcp(name) => name.clone(),
            ::postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// The store in a PostgreSQL database.
pub struct PgStore {
    pool: Pool,
    /// How much run history to keep; pruned as runs finish.
    retention: Retention,
    /// The database without its password, for messages.
    described: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("database", &self.described).finish()
    }
}

impl PgStore {
    /// Connects and migrates the schema (one replica at a time: see
    /// [`schema::migrate`]). Blocking: call it from a blocking task.
    pub fn connect(options: &PgOptions) -> Result<Self, StoreError> {
        let pool = Pool::new(options.config()?, options.max_connections.max(1), options.ca_pem.as_deref())?;
        {
            let mut client = pool.get()?;
            schema::migrate(&mut client)?;
        }
        Ok(PgStore { pool, retention: Retention::default(), described: options.describe() })
    }

    /// The store keeping `retention` of run history instead of the default.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The database, without its password.
    pub fn describe(&self) -> &str {
        &self.described
    }

    /// The schema version of the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let mut client = self.pool.get()?;
        schema::schema_version(&mut client)
    }

    /// Runs `f` in one write transaction (READ COMMITTED), committed only if
    /// `f` succeeds. Code that reads a row and then writes on what it read
    /// locks that row first (`SELECT … FOR UPDATE`) or an advisory lock
    /// ([`lock`]). A transaction PostgreSQL aborts to break a deadlock or a
    /// serialization conflict with another replica is tried again, whole.
    pub fn write<T>(&self, mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = self.pool.get()?;
            // A connection lost before COMMIT was sent committed nothing, so
            // the whole transaction can be tried again on a new one; lost
            // during COMMIT, nobody knows whether it committed: not retried.
            let mut committing = false;
            let result = (|| {
                let mut tx = client.transaction()?;
                let out = f(&mut tx)?;
                committing = true;
                tx.commit()?;
                Ok(out)
            })();
            match result {
                Err(StoreError::Postgres(e)) if attempt < WRITE_ATTEMPTS && retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "store write conflicted with another writer; trying again");
                }
                Err(e) if attempt < WRITE_ATTEMPTS && !committing && connection_gone(&client, &e) => {
                    tracing::info!(error = %e, database = %self.described, "the store's database connection was closed; trying the write again");
                    self.lost(client);
                }
                other => return other,
            }
        }
    }

    /// Runs `f` in one read-only REPEATABLE READ transaction: everything it
    /// reads is one snapshot, even while other replicas commit.
    pub fn read<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut client = self.pool.get()?;
        let result = (|| {
            let mut tx =
                client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })();
        // `f` may be called once only, so this read fails; the next call
        // finds fresh connections.
        match result {
            Err(e) if connection_gone(&client, &e) => {
                self.lost(client);
                Err(e)
            }
            other => other,
        }
    }

    /// After `client` lost its connection: it is closed, not handed back,
    /// and so are the pool's idle ones, which the server most likely closed
    /// too (it restarted, or an administrator ended idsync's sessions) and
    /// which would otherwise each fail a call in turn.
    fn lost(&self, client: pool::Pooled<'_>) {
        client.discard();
        self.pool.drop_idle();
    }

    /// Runs `f`, which only reads, on a client of the pool outside any
    /// explicit transaction (each statement its own snapshot): for reads of
    /// one statement, without BEGIN and COMMIT round trips. Tried again on a
    /// new connection when the server closed the one it had (a restart, a
    /// terminated backend): a read is safe to repeat.
    pub fn with_client<T>(&self, mut f: impl FnMut(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = self.pool.get()?;
            match f(&mut client) {
                Err(e) if connection_gone(&client, &e) => {
                    if attempt >= WRITE_ATTEMPTS {
                        self.lost(client);
                        return Err(e);
                    }
                    tracing::info!(error = %e, database = %self.described, "the store's database connection was closed; reading again");
                    self.lost(client);
                }
                other => return other,
            }
        }
    }
}

/// Takes the transaction-scoped advisory lock for (`kind`, `key`): held until
/// the transaction ends, so two replicas writing the same thing (a profile's
/// identities, a connection's commit) take turns instead of interleaving.
/// `kind` keeps the key spaces apart (see the constants in [`schema`]).
pub fn lock(tx: &mut Transaction<'_>, kind: i32, key: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&kind, &key])?;
    Ok(())
}

/// What a PostgreSQL error says, for a person: the server's message and
/// detail with its SQLSTATE code, or the driver's error and its cause
/// (`postgres::Error`'s own text is only "db error" for the server's).
pub fn error_text(e: &::postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        return text;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Whether `e` ended the client's session: the client saw its connection
/// close, or the server said so with a FATAL error (an administrator's
/// `pg_terminate_backend`, a shutdown), which comes before the close.
fn connection_gone(client: &Client, e: &StoreError) -> bool {
    use ::postgres::error::Severity;
    let StoreError::Postgres(e) = e else { return client.is_closed() };
    client.is_closed()
        || e.is_closed()
        || e.as_db_error().is_some_and(|db| matches!(db.parsed_severity(), Some(Severity::Fatal | Severity::Panic)))
}

/// Whether PostgreSQL aborted the transaction only because of a concurrent
/// one, so that trying again can succeed.
fn retryable(e: &::postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_in_what_is_described() {
        let mut options = PgOptions::new("postgres://idsync:hunter2@db.example:6543/ids?sslmode=disable");
        assert_eq!(options.describe(), "postgres://idsync@db.example:6543/ids");
        options.password = Some("from-a-secret".into());
        let debug = format!("{options:?}");
        assert!(!debug.contains("hunter2") && !debug.contains("from-a-secret"), "{debug}");
        let bad = PgOptions::new("postgres://idsync:hunter2@db.example:notaport/ids");
        assert!(!bad.describe().contains("hunter2"));
        let err = bad.config().unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_password_from_a_secret_replaces_the_urls() {
        let mut options = PgOptions::new("postgres://idsync:in-url@localhost/ids");
        options.password = Some("from-secret".into());
        let config = options.config().unwrap();
        assert_eq!(config.get_password(), Some(&b"from-secret"[..]));
        assert_eq!(config.get_application_name(), Some("idsync"));
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
    }

    #[test]
    fn migrating_twice_and_from_two_stores_at_once_is_safe() {
        let options = testing::fresh_database();
        let stores: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3).map(|_| s.spawn(|| PgStore::connect(&options))).collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        for store in stores {
            assert_eq!(store.expect("connects and migrates").schema_version().unwrap(), schema::latest_version());
        }
        let again = PgStore::connect(&options).unwrap();
        assert_eq!(again.schema_version().unwrap(), schema::latest_version());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let options = testing::fresh_database();
        let store = PgStore::connect(&options).unwrap();
        store
            .write(|tx| {
                tx.execute("UPDATE idsync_schema SET version = version + 1", &[])?;
                Ok(())
            })
            .unwrap();
        let err = PgStore::connect(&options).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    }

    #[test]
    fn tls_is_used_and_verified_against_the_given_ca() {
        let cluster = testing::tls_cluster();
        let db = cluster.create_database();
        let mut options = cluster.options(&db);
        options.url.push_str("?sslmode=require");
        options.ca_pem = Some(cluster.ca_pem());
        let store = PgStore::connect(&options).expect("connects over TLS with the CA");
        let ssl: bool = store
            .read(|tx| Ok(tx.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])?.try_get(0)?))
            .unwrap();
        assert!(ssl, "the session is encrypted");
        // Without the CA the throwaway certificate is not trusted: refused,
        // not silently accepted.
        options.ca_pem = None;
        let err = PgStore::connect(&options).unwrap_err().to_string();
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        // A CA file that is not PEM is a clear settings error.
        options.ca_pem = Some(b"not a certificate".to_vec());
        let err = PgStore::connect(&options).unwrap_err();
        assert!(matches!(err, StoreError::Config(_)), "{err}");
    }

    #[test]
    fn a_wrong_password_is_a_clear_error_without_the_password() {
        let mut options = testing::fresh_database();
        options.password = Some("not-the-password".into());
        let err = PgStore::connect(&options).unwrap_err().to_string();
        assert!(err.contains("password authentication failed"), "{err}");
        assert!(!err.contains("not-the-password"), "{err}");
    }
}
