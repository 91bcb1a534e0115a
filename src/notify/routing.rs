//! Which notifications an event makes: the namespace's NotificationPolicies
//! that take the event from its source, each to its providers, and for a
//! request the requester's `spec.notify` addresses through the default mail
//! provider. The result is outbox entries, one per (provider, recipients).

use idsync_api::notification::DEFAULT_PROVIDER_ANNOTATION;
use idsync_api::{Category, NotificationEvent, NotificationPolicy, NotificationProvider};
use jiff::Timestamp;
use kube::api::{Api, ListParams};

use super::event::Notice;
use crate::store::outbox::OutboxEntry;

/// What an event is about, for a policy's `sources`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subject {
    /// Connections (name, category).
    pub connections: Vec<(String, Category)>,
    pub profiles: Vec<String>,
}

/// The policies and providers of one namespace, read when an event happens.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    pub policies: Vec<NotificationPolicy>,
    pub providers: Vec<NotificationProvider>,
}

impl Routes {
    /// Reads `namespace`'s policies and providers. A failure is logged and
    /// gives no routes: a notification is never a reason to fail a sync.
    pub async fn read(client: &kube::Client, namespace: &str) -> Routes {
        let policies: Api<NotificationPolicy> = Api::namespaced(client.clone(), namespace);
        let providers: Api<NotificationProvider> = Api::namespaced(client.clone(), namespace);
        let params = ListParams::default();
        let (policies, providers) = futures::join!(policies.list(&params), providers.list(&params));
        match (policies, providers) {
            (Ok(policies), Ok(providers)) => Routes { policies: policies.items, providers: providers.items },
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, namespace, "cannot read the notification policies and providers; sending none for this event");
                Routes::default()
            }
        }
    }

    /// The namespace's default mail provider: the SMTP provider annotated
    /// `idsync.dev/default-provider: "true"`, else the only SMTP provider.
    pub fn default_mail_provider(&self) -> Option<&NotificationProvider> {
        let smtp: Vec<&NotificationProvider> = self.providers.iter().filter(|p| p.spec.smtp.is_some()).collect();
        let annotated = smtp.iter().copied().find(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_PROVIDER_ANNOTATION))
                .is_some_and(|v| v == "true")
        });
        annotated.or(if smtp.len() == 1 { smtp.first().copied() } else { None })
    }

    /// The outbox entries for `notice`: one per provider of each policy
    /// that takes it, and, for `requester` addresses (a request's
    /// `spec.notify`), one through the default mail provider.
    pub fn entries(
        &self,
        notice: &Notice,
        subject: &Subject,
        requester: &[String],
        now: Timestamp,
    ) -> Vec<OutboxEntry> {
        let payload = match serde_json::to_string(notice) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "cannot encode a notification; not sending it");
                return Vec::new();
            }
        };
        let entry = |provider: &str, policy: Option<&str>, recipients: Vec<String>| OutboxEntry {
            key: notice.key(provider, &recipients),
            namespace: notice.namespace.clone(),
            provider: provider.to_string(),
            policy: policy.map(str::to_string),
            event: notice.event.as_str().to_string(),
            recipients,
            payload: payload.clone(),
            created_at: now,
        };
        let mut entries = Vec::new();
        for policy in self.policies.iter().filter(|p| takes(p, notice, subject)) {
            let name = policy.metadata.name.as_deref().unwrap_or_default();
            for route in &policy.spec.providers {
                // A webhook has no recipients; naming some on its route must
                // not make a second delivery of the same payload.
                let is_webhook = self
                    .providers
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(&route.name) && p.spec.webhook.is_some());
                let recipients = if is_webhook { Vec::new() } else { route.to.clone() };
                entries.push(entry(&route.name, Some(name), recipients));
            }
        }
        if !requester.is_empty() {
            match self.default_mail_provider().and_then(|p| p.metadata.name.as_deref()) {
                Some(provider) => entries.push(entry(provider, None, requester.to_vec())),
                None => tracing::info!(
                    namespace = %notice.namespace, request = %notice.name,
                    "the request asks to notify addresses, but its namespace has no default mail provider"
                ),
            }
        }
        // Two policies routing to the same provider and recipients make one
        // delivery: same key.
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        entries.dedup_by(|a, b| a.key == b.key);
        entries
    }
}

/// Whether `policy` takes `notice` about `subject`.
pub fn takes(policy: &NotificationPolicy, notice: &Notice, subject: &Subject) -> bool {
    let spec = &policy.spec;
    if !spec.events.is_empty() && !spec.events.contains(&notice.event) {
        return false;
    }
    if notice.dry_run && !spec.include_dry_runs {
        return false;
    }
    let sources = &spec.sources;
    sources.is_all()
        || subject
            .connections
            .iter()
            .any(|(name, category)| sources.connections.contains(name) || sources.categories.contains(category))
        || subject.profiles.iter().any(|p| sources.profiles.contains(p))
}

/// The event a sync's outcome makes, if any.
pub fn sync_event(outcome: crate::model::RunOutcome) -> Option<NotificationEvent> {
    use crate::model::RunOutcome;
    match outcome {
        RunOutcome::Succeeded | RunOutcome::DryRun => Some(NotificationEvent::SyncSucceeded),
        RunOutcome::Failed => Some(NotificationEvent::SyncFailed),
        RunOutcome::SafeguardTripped => Some(NotificationEvent::SafeguardTripped),
        RunOutcome::Interrupted => Some(NotificationEvent::SyncInterrupted),
        // A request replaced it: the request's own notices say so.
        RunOutcome::Cancelled => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::notify::event::tests::sync_notice;

    fn routes() -> Routes {
        Routes {
            policies: vec![
                NotificationPolicy::test("admins").provider("mail", ["admins@acme.example"]).build(),
                NotificationPolicy::test("hr-team")
                    .provider("mail", ["hr@acme.example"])
                    .provider("hook", ["ignored@acme.example"])
                    .events([NotificationEvent::SafeguardTripped])
                    .connections(["hr"])
                    .build(),
            ],
            providers: vec![
                NotificationProvider::test("mail").smtp_sink(2525, "idsync@acme.example").build(),
                NotificationProvider::test("hook").webhook("http://127.0.0.1:9/hook").build(),
            ],
        }
    }

    fn subject(connection: &str, category: Category) -> Subject {
        Subject { connections: vec![(connection.into(), category)], profiles: Vec::new() }
    }

    #[test]
    fn policies_take_the_events_and_sources_they_name() {
        let routes = routes();
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let tripped = sync_notice(NotificationEvent::SafeguardTripped);
        let entries = routes.entries(&tripped, &subject("hr", Category::Hris), &[], now);
        let sent: Vec<(&str, Option<&str>, &[String])> =
            entries.iter().map(|e| (e.provider.as_str(), e.policy.as_deref(), e.recipients.as_slice())).collect();
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(sent.contains(&("mail", Some("admins"), &["admins@acme.example".to_string()][..])));
        assert!(sent.contains(&("mail", Some("hr-team"), &["hr@acme.example".to_string()][..])));
        // A webhook route's addresses are not recipients.
        assert!(sent.contains(&("hook", Some("hr-team"), &[][..])));
        // Another connection, or another event, reaches only the catch-all policy.
        let other = routes.entries(&tripped, &subject("idp", Category::IdP), &[], now);
        assert_eq!(other.iter().map(|e| e.policy.as_deref()).collect::<Vec<_>>(), [Some("admins")]);
        let succeeded = sync_notice(NotificationEvent::SyncSucceeded);
        assert_eq!(routes.entries(&succeeded, &subject("hr", Category::Hris), &[], now).len(), 1);
    }

    #[test]
    fn dry_runs_notify_only_policies_that_ask_and_the_requester() {
        let mut routes = routes();
        let dry = Notice { dry_run: true, ..sync_notice(NotificationEvent::SyncSucceeded) };
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        assert!(routes.entries(&dry, &subject("hr", Category::Hris), &[], now).is_empty());
        let asker = ["alice@acme.example".to_string()];
        let entries = routes.entries(&dry, &subject("hr", Category::Hris), &asker, now);
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].provider.as_str(), entries[0].policy.as_deref()), ("mail", None));
        routes.policies[0].spec.include_dry_runs = true;
        assert_eq!(routes.entries(&dry, &subject("hr", Category::Hris), &[], now).len(), 1);
    }

    #[test]
    fn the_default_mail_provider_is_the_annotated_one_or_the_only_one() {
        let mut routes = routes();
        assert_eq!(routes.default_mail_provider().and_then(|p| p.metadata.name.as_deref()), Some("mail"));
        routes.providers.push(NotificationProvider::test("mail2").smtp_sink(2526, "b@acme.example").build());
        assert!(routes.default_mail_provider().is_none(), "two SMTP providers and no annotation: no default");
        routes.providers[2].metadata.annotations =
            Some(BTreeMap::from([(DEFAULT_PROVIDER_ANNOTATION.to_string(), "true".to_string())]));
        assert_eq!(routes.default_mail_provider().and_then(|p| p.metadata.name.as_deref()), Some("mail2"));
    }
}
