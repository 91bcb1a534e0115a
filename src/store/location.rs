//! Where a store is: a SQLite file, or a PostgreSQL database named by a
//! `postgres://` URL. `idsync run --store` and the read commands' `--store`
//! take either; what a person sees of it ([`StoreLocation`]'s Display) never
//! holds a password.

use std::path::PathBuf;

use super::postgres::PgOptions;

/// A store named on the command line or in the environment.
#[derive(Clone, Debug)]
pub enum StoreLocation {
    /// The embedded SQLite database file.
    File(PathBuf),
    /// A PostgreSQL database.
    Postgres(PgOptions),
}

impl StoreLocation {
    /// A `postgres://` or `postgresql://` URL names PostgreSQL; anything
    /// else is the SQLite file's path.
    pub fn parse(text: &str) -> Self {
        let lower = text.trim_start().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            StoreLocation::Postgres(PgOptions::new(text.trim()))
        } else {
            StoreLocation::File(PathBuf::from(text))
        }
    }

    /// Whether several operator replicas can share it (PostgreSQL), or one
    /// process writes it (a SQLite file).
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::File(path) => write!(f, "{}", path.display()),
            StoreLocation::Postgres(options) => f.write_str(&options.describe()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_postgres_and_anything_else_a_file() {
        let pg = StoreLocation::parse("postgresql://idsync:s3cret@db:5432/ids");
        assert!(pg.is_shared());
        assert_eq!(pg.to_string(), "postgres://idsync@db:5432/ids");
        assert!(StoreLocation::parse("POSTGRES://db/ids").is_shared());
        let file = StoreLocation::parse("/var/lib/idsync/idsync.db");
        assert!(!file.is_shared());
        assert_eq!(file.to_string(), "/var/lib/idsync/idsync.db");
        // A relative file whose name starts like a scheme is still a file.
        assert!(!StoreLocation::parse("postgres.db").is_shared());
    }
}
