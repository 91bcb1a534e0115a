//! Identities: the people behind the accounts. An IdentityProfile makes one
//! identity per account of its authoritative connection, attaches accounts of
//! other connections to them by correlation rules, and computes their
//! attributes, lifecycle state and manager with CEL expressions.
//!
//! - [`expr`]: compiling a profile's expressions once and evaluating them.
//! - [`process`]: one processing run, as a pure function of the store's
//!   snapshot, the compiled profile and the time.
//! - [`drift`]: access drift (offboarded people with access, orphan and
//!   missing accounts), computed from the store after a run commits.
//! - [`safeguard`]: the identity safeguard, which holds back a run that
//!   would remove or offboard too many identities.
//! - [`memory`]: giving a run's memory back to the system after it.
//! - [`delta`]: a run over the changed identities (and those whose time
//!   has come) only, from what the store says changed, when the changes
//!   allow it: event-based runs, and scheduled ones with unchanged mappings.
//!
//! Plain functions over the plain data of `crate::model`; the controller
//! lives in `crate::controller::profile`.

pub mod delta;
pub mod drift;
pub mod expr;
#[cfg(test)]
mod expr_props;
pub mod memory;
pub mod process;
pub mod safeguard;
