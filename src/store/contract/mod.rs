//! The store's contract: tests written once against the store's traits and
//! run against every backend, a fresh SQLite file and a fresh PostgreSQL
//! database each, so the two stores keep the same guarantees.
//!
//! A contract test is a function taking `&S` for any `S` with the roles it
//! uses; [`contract_tests!`] makes a `#[test]` per backend of each. The
//! PostgreSQL tests start a throwaway cluster (`store::postgres::testing`)
//! and fail, not skip, when it cannot start.

use super::{PgStore, SqliteStore};

// Their helpers serve the SQLite store's own tests too.
pub(super) mod accounts;
mod outbox;

// The identity store's and the drift store's contract.
pub(super) mod drift;
pub(super) mod identities;

/// A fresh SQLite store; the folder goes with the test.
pub fn sqlite() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("idsync.db")).expect("open the SQLite store");
    (dir, store)
}

/// A fresh PostgreSQL store on a new database of the process's cluster.
pub fn postgres() -> PgStore {
    PgStore::connect(&super::postgres::testing::fresh_database()).expect("connect the PostgreSQL store")
}

/// `contract_tests!(a, b)` makes modules `sqlite` and `postgres`, each with
/// a `#[test] fn a` and `fn b` calling `super::a(&store)` on a fresh store
/// of that backend.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let (_dir, store) = $crate::store::contract::sqlite();
                    super::$name(&store);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    let store = $crate::store::contract::postgres();
                    super::$name(&store);
                }
            )*
        }
    };
}
pub(crate) use contract_tests;
