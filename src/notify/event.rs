//! [`Notice`]: what a notification is about, as data. It is stored in the
//! outbox as JSON and rendered to words when sent ([`super::render`]), and
//! it is the structured part of a webhook's payload. It holds what status
//! and Events already show (names, counts, outcomes, reasons, the preview
//! lines of a run), never a credential.

use idsync_api::NotificationEvent;
use idsync_api::resync_request::{ProfileRunStatus, TargetStatus};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One event to tell people about.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub event: NotificationEvent,
    pub namespace: String,
    /// The kind of the object the event is about: `Connection`,
    /// `IdentityProfile` or `ResyncRequest`.
    pub kind: String,
    pub name: String,
    /// What makes this occurrence of the event unique for the object: the
    /// run's number, or the request's uid. Part of the idempotency key.
    pub occurrence: String,
    /// The ResyncRequest behind it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Who asked for the request (`spec.requestedBy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The request's target in words (`connections hr, idp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    /// How it ended (`Succeeded`, `Failed`, `PartiallyFailed`…); none for a start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<idsync_api::SyncCounts>,
    /// The run's number in the store's run history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
    /// The first changes of the run (for a dry run: what it would change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<String>,
    /// A request's connections, each with its outcome and counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
    /// A request's (or a processing's) profiles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ProfileRunStatus>,
    /// When it happened (RFC 3339).
    pub timestamp: String,
}

impl Notice {
    /// The notice's idempotency key for one provider and recipient set:
    /// the same event of the same object's same run or request, sent the
    /// same way, always has the same key, so it is enqueued and delivered
    /// once.
    pub fn key(&self, provider: &str, recipients: &[String]) -> String {
        let mut recipients: Vec<String> = recipients.iter().map(|r| r.to_ascii_lowercase()).collect();
        recipients.sort();
        recipients.dedup();
        let mut hash = Sha256::new();
        for part in [self.event.as_str(), &self.namespace, &self.kind, &self.name, &self.occurrence, provider] {
            hash.update(part.as_bytes());
            // A separator no name can hold, so ("ab", "c") and ("a", "bc") differ.
            hash.update([0]);
        }
        hash.update(recipients.join(",").as_bytes());
        let digest = hash.finalize();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("idsync-{hex}")
    }

    /// The `kubectl` command that shows the object.
    pub fn kubectl(&self) -> String {
        let resource = match self.kind.as_str() {
            "Connection" => "connection",
            "IdentityProfile" => "identityprofile",
            _ => "resyncrequest",
        };
        format!("kubectl -n {} describe {resource} {}", self.namespace, self.name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sync_notice(event: NotificationEvent) -> Notice {
        Notice {
            event,
            namespace: "default".into(),
            kind: "Connection".into(),
            name: "hr".into(),
            occurrence: "run-7".into(),
            request: Some("resync-hr".into()),
            requested_by: Some("alice@acme.example".into()),
            target: None,
            mode: Some("Full".into()),
            scope: None,
            dry_run: false,
            outcome: Some("Succeeded".into()),
            reason: None,
            message: String::new(),
            counts: Some(idsync_api::SyncCounts { created: 1, updated: 2, deleted: 0, unchanged: 33 }),
            run: Some(7),
            preview: vec!["create E1099 (new.person@acme.example)".into()],
            targets: Vec::new(),
            profiles: Vec::new(),
            timestamp: "2026-11-29T10:00:00Z".into(),
        }
    }

    #[test]
    fn a_key_names_one_event_of_one_run_sent_one_way() {
        let notice = sync_notice(NotificationEvent::SyncSucceeded);
        let to = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let key = notice.key("mail", &to(&["b@x.io", "a@x.io"]));
        assert!(key.starts_with("idsync-") && key.len() == 39, "{key}");
        // Recipients in any order or case are the same delivery.
        assert_eq!(key, notice.key("mail", &to(&["A@x.io", "b@x.io"])));
        assert_ne!(key, notice.key("mail", &to(&["a@x.io"])));
        assert_ne!(key, notice.key("hook", &to(&["a@x.io", "b@x.io"])));
        let next_run = Notice { occurrence: "run-8".into(), ..notice.clone() };
        assert_ne!(key, next_run.key("mail", &to(&["a@x.io", "b@x.io"])));
        let other_event = Notice { event: NotificationEvent::SyncFailed, ..notice };
        assert_ne!(key, other_event.key("mail", &to(&["a@x.io", "b@x.io"])));
    }
}
