//! Cancelling a sync, and why: whoever cancels says the reason, so the run
//! history, the status and the Events name the real cause (a newer request,
//! the Connection's deletion, shutdown, a lost guard) instead of guessing.

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Why a running sync was cancelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// A ResyncRequest with concurrencyPolicy Replace took its place.
    ReplacedBy(String),
    /// Its Connection is being deleted.
    ConnectionDeleted,
    /// The operator is shutting down (SIGTERM, or it stopped leading).
    Shutdown,
    /// Its guard Lease was lost (lapsed, taken, deleted); the text says how.
    GuardLost(String),
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelReason::ReplacedBy(request) => write!(f, "replaced by ResyncRequest {request}"),
            CancelReason::ConnectionDeleted => f.write_str("the Connection is being deleted"),
            CancelReason::Shutdown => f.write_str("the operator is shutting down"),
            CancelReason::GuardLost(how) => write!(f, "{how}"),
        }
    }
}

/// A sync's cancellation: a token the sync waits on, and the reason the
/// first canceller gave.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    token: CancellationToken,
    reason: Arc<Mutex<Option<CancelReason>>>,
}

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Cancels, with `reason` unless an earlier canceller gave one.
    pub fn cancel(&self, reason: CancelReason) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert(reason);
        }
        self.token.cancel();
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The reason given, once cancelled.
    pub fn reason(&self) -> Option<CancelReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins_and_reads_as_a_cause() {
        let cancel = Cancel::new();
        assert!(!cancel.is_cancelled());
        assert_eq!(cancel.reason(), None);
        let other = cancel.clone();
        other.cancel(CancelReason::ReplacedBy("resync-hr".into()));
        cancel.cancel(CancelReason::Shutdown);
        assert!(cancel.is_cancelled());
        assert_eq!(cancel.reason(), Some(CancelReason::ReplacedBy("resync-hr".into())));
        assert_eq!(cancel.reason().map(|r| r.to_string()).as_deref(), Some("replaced by ResyncRequest resync-hr"));
        assert_eq!(CancelReason::ConnectionDeleted.to_string(), "the Connection is being deleted");
    }
}
