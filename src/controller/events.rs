//! Kubernetes Events: the in-product "started" and "completed"
//! confirmations of every sync and processing run.
//!
//! Each run's Event is its own `events.k8s.io/v1` object carrying that run's
//! note (counts, request, error). kube-runtime's `Recorder` is not used: it
//! merges Events with the same object, type, reason and action into one
//! series for minutes and keeps the first note, so after three syncs
//! `kubectl describe` would show the first sync's counts three times.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

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

/// The API server refuses Event notes over 1 kB.
const MAX_NOTE_BYTES: usize = 1000;

/// Writes Events as one reporting controller instance.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    /// `reportingController`: the operator's name.
    controller: String,
    /// `reportingInstance`: this process.
    instance: String,
}

impl Recorder {
    pub fn new(client: kube::Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        Recorder { client, controller: controller.into(), instance: instance.into() }
    }

    /// The Event for one run's message about `regarding`, named uniquely so
    /// that it never merges with another run's.
    pub fn event(&self, regarding: &ObjectReference, warning: bool, reason: &str, note: String, action: &str) -> Event {
        let now = Timestamp::now();
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(regarding.name.as_deref().unwrap_or("object"), now)),
                namespace: Some(regarding.namespace.clone().unwrap_or_else(|| "default".to_string())),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
            reason: Some(reason.to_string()),
            note: Some(truncate(note)),
            action: Some(action.to_string()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }

    /// Creates the Event; a failure to record one is logged, never fatal.
    pub async fn publish(&self, regarding: &ObjectReference, warning: bool, reason: &str, note: String, action: &str) {
        let event = self.event(regarding, warning, reason, note, action);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(%error, reason, "could not record an Event");
        }
    }
}

/// Publishes a sync's Event.
pub async fn publish(recorder: &Recorder, regarding: &ObjectReference, warning: bool, reason: &str, note: String) {
    recorder.publish(regarding, warning, reason, note, "Sync").await;
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
    recorder.publish(regarding, warning, reason, note, action).await;
}

/// `<object>.<time in hex><random>`, as client-go names Events, cut so the
/// whole stays a valid name (at most 253 characters).
fn event_name(object: &str, now: Timestamp) -> String {
    let mut cut = object.len().min(200);
    while !object.is_char_boundary(cut) {
        cut -= 1;
    }
    let nanos = u128::try_from(now.as_nanosecond()).unwrap_or(0);
    format!("{}.{nanos:x}{:04x}", &object[..cut], fastrand::u16(..))
}

fn truncate(mut note: String) -> String {
    if note.len() > MAX_NOTE_BYTES {
        let mut cut = MAX_NOTE_BYTES - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_event_and_valid_for_long_objects() {
        let now: Timestamp = "2026-11-29T10:00:00Z".parse().expect("time");
        let a = event_name("acme-hr", now);
        let b = event_name("acme-hr", now);
        assert!(a.starts_with("acme-hr.") && b.starts_with("acme-hr."), "{a} {b}");
        // The random part keeps two Events of one instant apart (65,536 to 1
        // against a clash; retried a few times so the test never flakes).
        assert!((0..5).any(|_| event_name("acme-hr", now) != a));
        let long = "x".repeat(253);
        assert!(event_name(&long, now).len() <= 253);
    }

    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        let note = "é".repeat(600);
        let cut = truncate(note);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with("..."));
        assert_eq!(truncate("short".into()), "short");
    }
}
