//! A [`Notice`] in words: a mail's subject and body, and a webhook's
//! payload (a Slack-compatible `text` beside the structured fields). What a
//! person needs: the object, the request and who asked, mode and scope, the
//! counts (and a dry run's preview), the outcome and its reason, what to do
//! next, and the `kubectl` command to look closer.

use std::fmt::Write as _;

use idsync_api::NotificationEvent;
use idsync_api::resync_request::TargetPhase;

use super::event::Notice;

/// `created 1, updated 2, deleted 0, unchanged 33`.
fn counts(c: &idsync_api::SyncCounts) -> String {
    format!("created {}, updated {}, deleted {}, unchanged {}", c.created, c.updated, c.deleted, c.unchanged)
}

fn object(n: &Notice) -> String {
    format!("{} {}/{}", n.kind, n.namespace, n.name)
}

/// One line: what happened to what.
pub fn headline(n: &Notice) -> String {
    let mode = n.mode.as_deref().map(|m| format!("{m} ")).unwrap_or_default();
    let dry = if n.dry_run { "dry-run " } else { "" };
    let outcome = n.outcome.as_deref().unwrap_or("");
    match n.event {
        NotificationEvent::SyncStarted => format!("{mode}{dry}sync of {} started", object(n)),
        NotificationEvent::SyncSucceeded => {
            let c = n.counts.as_ref().map(|c| format!(": {}", counts(c))).unwrap_or_default();
            if n.dry_run {
                format!("{mode}dry-run sync of {} finished, nothing applied{c}", object(n))
            } else {
                format!("{mode}sync of {} succeeded{c}", object(n))
            }
        }
        NotificationEvent::SyncFailed => format!(
            "{mode}{dry}sync of {} failed{}",
            object(n),
            n.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        ),
        NotificationEvent::SafeguardTripped => {
            format!("{mode}{dry}sync of {} held back by the import safeguard", object(n))
        }
        NotificationEvent::SyncInterrupted => format!("{mode}{dry}sync of {} was interrupted", object(n)),
        NotificationEvent::ProcessingSucceeded => format!("{dry}identity processing of {} succeeded", object(n)),
        NotificationEvent::ProcessingFailed => format!("{dry}identity processing of {} failed", object(n)),
        NotificationEvent::ChangesPending => format!("{} has changes waiting to be applied", object(n)),
        NotificationEvent::AccessDrift => format!("{} found new access drift", object(n)),
        NotificationEvent::RemovalsHeld => {
            format!("{dry}identity processing of {} held back by the identity safeguard", object(n))
        }
        NotificationEvent::RequestStarted => {
            format!("{dry}{} started: {}", object(n), n.target.as_deref().unwrap_or("its targets"))
        }
        NotificationEvent::RequestCompleted => format!("{dry}{} finished: {outcome}", object(n)),
    }
}

/// The mail's subject.
pub fn subject(n: &Notice) -> String {
    format!("[idsync] {}", headline(n))
}

/// What a person should do next, when there is something to do.
fn advice(n: &Notice) -> Option<String> {
    let tripped: Vec<&str> = match n.event {
        NotificationEvent::SafeguardTripped if !n.dry_run => vec![n.name.as_str()],
        NotificationEvent::RequestCompleted if !n.dry_run => n
            .targets
            .iter()
            .filter(|t| t.phase == TargetPhase::SafeguardTripped)
            .map(|t| t.connection.as_str())
            .collect(),
        _ => Vec::new(),
    };
    if tripped.is_empty() {
        return None;
    }
    let list = tripped.join(", ");
    let runs = match n.run {
        Some(run) => format!("idsync runs get {run}"),
        None => "idsync runs get RUN, with each connection's run above,".to_string(),
    };
    Some(format!(
        "The import safeguard held back the sync of {list}: it would delete more accounts than the \
         Connection's importSafeguard allows, so nothing was applied. Check the deletions first \
         ({runs} shows every account it would delete). If they are right, confirm them \
         with a ResyncRequest naming the connection:\n\n\
         kubectl -n {ns} create -f - <<EOF\n\
         apiVersion: idsync.dev/v1alpha1\n\
         kind: ResyncRequest\n\
         metadata:\n  generateName: confirm-deletes-\n\
         spec:\n  target:\n    connections: [{list}]\n  confirmDeletes: true\n\
         EOF\n\n\
         If they are not, fix the source and let the next sync run.",
        ns = n.namespace
    ))
}

/// The mail's plain-text body.
pub fn body(n: &Notice) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}.", capitalized(&headline(n)));
    out.push('\n');
    let mut field = |label: &str, value: &str| {
        if !value.is_empty() {
            let _ = writeln!(out, "{:<14}{value}", format!("{label}:"));
        }
    };
    field("Object", &object(n));
    if let Some(request) = &n.request {
        field("Request", &format!("ResyncRequest {}/{request}", n.namespace));
    }
    field("Requested by", n.requested_by.as_deref().unwrap_or(""));
    field("Target", n.target.as_deref().unwrap_or(""));
    field("Mode", n.mode.as_deref().unwrap_or(""));
    field("Scope", n.scope.as_deref().unwrap_or(""));
    if n.dry_run {
        field("Dry run", "yes: nothing was applied");
    }
    field("Outcome", n.outcome.as_deref().unwrap_or(""));
    // The reason when it says more than the outcome.
    field("Reason", n.reason.as_deref().filter(|r| Some(*r) != n.outcome.as_deref()).unwrap_or(""));
    if let Some(c) = &n.counts {
        field("Counts", &counts(c));
    }
    if let Some(run) = n.run {
        field("Run", &format!("{run} (idsync runs get {run} lists every change)"));
    }
    field("Message", &n.message);
    field("When", &n.timestamp);
    if !n.targets.is_empty() {
        out.push_str("\nConnections:\n");
        for t in &n.targets {
            let phase =
                serde_json::to_value(t.phase).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let mode = t.mode.map(|m| format!(" {m}")).unwrap_or_default();
            let c = t.counts.as_ref().map(|c| format!(": {}", counts(c))).unwrap_or_default();
            let _ = writeln!(out, "  {}{mode}: {phase}{c}", t.connection);
            if !t.message.is_empty() {
                let _ = writeln!(out, "    {}", t.message);
            }
            if let Some(run) = t.run {
                let _ = writeln!(out, "    run {run} (idsync runs get {run})");
            }
            for line in &t.preview {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    if !n.profiles.is_empty() {
        out.push_str("\nIdentity profiles:\n");
        for p in &n.profiles {
            let phase =
                serde_json::to_value(p.phase).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}: {phase}: processed {}, changed {}, errors {}",
                p.profile, p.processed, p.changed, p.errors
            );
            if !p.message.is_empty() {
                let _ = writeln!(out, "    {}", p.message);
            }
            for line in &p.preview {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    if !n.preview.is_empty() {
        // A dry run, or a sync the safeguard held back, changed nothing.
        let applied = !n.dry_run && n.event != NotificationEvent::SafeguardTripped;
        out.push_str(if applied { "\nWhat changed (first few):\n" } else { "\nWhat it would change (first few):\n" });
        for line in &n.preview {
            let _ = writeln!(out, "  {line}");
        }
    }
    if let Some(advice) = advice(n) {
        out.push_str("\nWhat to do:\n");
        out.push_str(&advice);
        out.push('\n');
    }
    let _ = writeln!(out, "\nLook closer:\n  {}", n.kubectl());
    out
}

/// The Slack-compatible `text` of a webhook payload: the headline and the
/// command to look closer.
pub fn text(n: &Notice) -> String {
    let mut text = capitalized(&headline(n));
    if let Some(by) = &n.requested_by {
        let _ = write!(text, " (requested by {by})");
    }
    // The reason when it says more than the outcome (a failed sync's is
    // already in its headline).
    let said = n.event == NotificationEvent::SyncFailed || n.reason == n.outcome;
    if let Some(reason) = n.reason.as_deref().filter(|_| !said) {
        let _ = write!(text, ", reason {reason}");
    }
    if !n.message.is_empty() {
        let _ = write!(text, "\n{}", n.message);
    }
    let _ = write!(text, "\n`{}`", n.kubectl());
    text
}

/// A webhook's JSON payload: `text` for Slack-compatible receivers, the
/// notice's fields, the kubectl command and the idempotency key.
pub fn payload(n: &Notice, key: &str) -> serde_json::Value {
    let mut value = serde_json::to_value(n).unwrap_or_else(|_| serde_json::json!({}));
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("text".into(), text(n).into());
        map.insert("kubectl".into(), n.kubectl().into());
        map.insert("idempotencyKey".into(), key.into());
    }
    value
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use idsync_api::resync_request::TargetStatus;

    use super::*;
    use crate::notify::event::tests::sync_notice;

    #[test]
    fn a_sync_mail_names_the_object_request_counts_and_command() {
        let n = sync_notice(NotificationEvent::SyncSucceeded);
        assert_eq!(
            subject(&n),
            "[idsync] Full sync of Connection default/hr succeeded: created 1, updated 2, deleted 0, unchanged 33"
        );
        let body = body(&n);
        for expected in [
            "Request:      ResyncRequest default/resync-hr",
            "Requested by: alice@acme.example",
            "Run:          7 (idsync runs get 7 lists every change)",
            "create E1099 (new.person@acme.example)",
            "kubectl -n default describe connection hr",
        ] {
            assert!(body.contains(expected), "missing {expected:?} in:\n{body}");
        }
        assert!(!body.contains("What to do"), "{body}");
    }

    #[test]
    fn a_safeguard_mail_says_how_to_confirm() {
        let n = Notice {
            outcome: Some("SafeguardTripped".into()),
            reason: Some("SafeguardTripped".into()),
            message: "would delete 30 of 36 accounts (83%), more than maxDeletePercent 20".into(),
            ..sync_notice(NotificationEvent::SafeguardTripped)
        };
        assert_eq!(subject(&n), "[idsync] Full sync of Connection default/hr held back by the import safeguard");
        let body = body(&n);
        assert!(body.contains("confirmDeletes: true"), "{body}");
        assert!(body.contains("connections: [hr]"), "{body}");
        assert!(body.contains("would delete 30 of 36"), "{body}");
        assert!(body.contains("(idsync runs get 7 shows every account it would delete)"), "{body}");
        assert!(body.contains("What it would change (first few):"), "{body}");
        assert!(!body.contains("Reason:"), "the reason is the outcome: {body}");
    }

    #[test]
    fn a_completed_request_lists_each_connection_and_advises_on_a_tripped_one() {
        let mut hr = TargetStatus::pending("hr");
        hr.phase = TargetPhase::Succeeded;
        hr.counts = Some(idsync_api::SyncCounts { created: 36, ..Default::default() });
        let mut idp = TargetStatus::pending("idp");
        idp.phase = TargetPhase::SafeguardTripped;
        let n = Notice {
            kind: "ResyncRequest".into(),
            name: "resync-all".into(),
            request: None,
            target: Some("all connections".into()),
            outcome: Some("PartiallyFailed".into()),
            counts: None,
            run: None,
            preview: Vec::new(),
            targets: vec![hr, idp],
            ..sync_notice(NotificationEvent::RequestCompleted)
        };
        assert_eq!(subject(&n), "[idsync] ResyncRequest default/resync-all finished: PartiallyFailed");
        let body = body(&n);
        assert!(body.contains("  hr: Succeeded: created 36, updated 0, deleted 0, unchanged 0"), "{body}");
        assert!(body.contains("  idp: SafeguardTripped"), "{body}");
        assert!(body.contains("connections: [idp]"), "{body}");
        assert!(body.contains("kubectl -n default describe resyncrequest resync-all"), "{body}");
    }

    #[test]
    fn a_webhook_payload_has_slack_text_and_the_structured_fields() {
        let n = sync_notice(NotificationEvent::SyncSucceeded);
        let p = payload(&n, "idsync-abc");
        assert_eq!(p["event"], "SyncSucceeded");
        assert_eq!(p["idempotencyKey"], "idsync-abc");
        assert_eq!(p["counts"]["unchanged"], 33);
        assert_eq!(p["requestedBy"], "alice@acme.example");
        assert_eq!(p["kubectl"], "kubectl -n default describe connection hr");
        let text = p["text"].as_str().expect("text");
        assert!(text.starts_with("Full sync of Connection default/hr succeeded"), "{text}");
        assert!(text.contains("requested by alice@acme.example"), "{text}");
    }

    #[test]
    fn a_dry_run_says_nothing_was_applied_and_shows_what_would_change() {
        let n =
            Notice { dry_run: true, outcome: Some("DryRun".into()), ..sync_notice(NotificationEvent::SyncSucceeded) };
        assert!(subject(&n).contains("dry-run sync of Connection default/hr finished, nothing applied"));
        let body = body(&n);
        assert!(body.contains("Dry run:      yes: nothing was applied"), "{body}");
        assert!(body.contains("What it would change (first few):"), "{body}");
    }

    #[test]
    fn drift_and_held_removal_mails_say_what_and_where() {
        let drift = Notice {
            kind: "IdentityProfile".into(),
            name: "employees".into(),
            message: "new access drift: offboarded with access: E1008 (github account fran)".into(),
            ..sync_notice(NotificationEvent::AccessDrift)
        };
        assert_eq!(subject(&drift), "[idsync] IdentityProfile default/employees found new access drift");
        assert!(body(&drift).contains("E1008 (github account fran)"), "{}", body(&drift));
        let held = Notice {
            kind: "IdentityProfile".into(),
            name: "employees".into(),
            message: "this run would remove 0 and offboard 8 of 20 identities (40%) … confirmRemovals: true".into(),
            ..sync_notice(NotificationEvent::RemovalsHeld)
        };
        assert_eq!(
            subject(&held),
            "[idsync] identity processing of IdentityProfile default/employees held back by the identity safeguard"
        );
        assert!(body(&held).contains("confirmRemovals: true"), "{}", body(&held));
    }
}
