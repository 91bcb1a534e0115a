//! The model: the plain data that several layers share (accounts,
//! identities and their correlation records, runs and their records, what a
//! sync changed account by account). It
//! imports nothing of idsync, so the store, the sync engine, identity
//! processing, the controllers and the CLI can all depend on it, and it on
//! none of them.

pub mod account;
pub mod change;
pub mod identity;
pub mod run;

pub use account::{Account, ContentHash};
pub use change::{AccountChange, ChangeKind, FieldChange};
pub use identity::{AccountLink, Identity, LinkRecord, LinkState};
pub use run::{
    ConnectionRef, Counts, NewRun, ProcessingRunRecord, ProfileRef, RunFinish, RunId, RunMode, RunOutcome, RunRecord,
    Trigger,
};
