//! The model: the plain data that several layers share (accounts,
//! identities and their correlation records, runs and their records, what a
//! sync changed account by account). It
//! imports nothing of idsync, so the store, the sync engine, identity
//! processing, the controllers and the CLI can all depend on it, and it on
//! none of them.

/// For the enums stored and shown by their variants' names: `ALL`,
/// `as_str` (the variant's name), `parse` (exactly as `as_str` spells it)
/// and `Display`.
macro_rules! named {
    ($type:ident { $($variant:ident),+ $(,)? }) => {
        impl $type {
            pub const ALL: [$type; <[()]>::len(&[$(named!(@unit $variant)),+])] = [$($type::$variant),+];

            /// The name stored and shown: the variant's.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($type::$variant => stringify!($variant)),+
                }
            }

            /// The value named `s`, exactly as [`Self::as_str`] spells it.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
    (@unit $variant:ident) => {
        ()
    };
}

pub mod account;
pub mod change;
pub mod identity;
pub mod run;

pub use account::{Account, ContentHash};
pub use change::{AccountChange, ChangeKind, FieldChange};
pub use identity::{AccountLink, Identity, IdentitySummary, LinkRecord, LinkState};
pub use run::{
    ConnectionRef, Counts, NewRun, ProcessingRunRecord, ProfileRef, RunFinish, RunId, RunMode, RunOutcome, RunRecord,
    Trigger,
};
