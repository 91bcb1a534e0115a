//! The model: the plain data that several layers share (accounts,
//! identities and their correlation records, runs and their records). It
//! imports nothing of idsync, so the store, the sync engine, identity
//! processing, the controllers and the CLI can all depend on it, and it on
//! none of them.

pub mod account;
pub mod identity;
pub mod run;

pub use account::{Account, ContentHash};
pub use identity::{AccountLink, Identity, LinkRecord, LinkState};
pub use run::{
    ConnectionRef, Counts, NewRun, ProcessingRunRecord, ProfileRef, RunFinish, RunId, RunOutcome, RunRecord,
};
