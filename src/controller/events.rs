//! Kubernetes Events: the in-product "started" and "completed"
//! confirmations of every sync, through kube-runtime's recorder.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

/// Event reasons, PascalCase as the API conventions ask.
pub const SYNC_STARTED: &str = "SyncStarted";
pub const SYNC_SUCCEEDED: &str = "SyncSucceeded";
pub const SYNC_FAILED: &str = "SyncFailed";
pub const SYNC_REJECTED: &str = "SyncRejected";
pub const SAFEGUARD_TRIPPED: &str = "SafeguardTripped";
pub const SYNC_INTERRUPTED: &str = "SyncInterrupted";
pub const SYNC_CANCELLED: &str = "SyncCancelled";
pub const PROCESSING_STARTED: &str = "ProcessingStarted";
pub const PROCESSING_SUCCEEDED: &str = "ProcessingSucceeded";
pub const PROCESSING_FAILED: &str = "ProcessingFailed";

/// Publishes an Event; a failure to record one is logged, never fatal.
pub async fn publish(recorder: &Recorder, regarding: &ObjectReference, warning: bool, reason: &str, note: String) {
    publish_as(recorder, regarding, warning, reason, note, "Sync").await;
}

/// Publishes an Event of `action` (`Sync`, `Process`).
pub async fn publish_as(
    recorder: &Recorder,
    regarding: &ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
    action: &str,
) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_string(),
        note: Some(truncate(note)),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, regarding).await {
        tracing::warn!(%error, reason, "could not record an Event");
    }
}

/// Event notes are limited to 1 kB by the API server.
fn truncate(mut note: String) -> String {
    if note.len() > 1000 {
        let mut cut = 997;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}
