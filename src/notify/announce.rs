//! The controllers' side of notifications: the notices of a sync, a
//! request and a profile's processing, routed and written to the outbox. A sync's go into the store
//! with its result (see [`sync`]); a request's are enqueued on their own
//! with `INSERT OR IGNORE`, so announcing again after a crash is a no-op.

use std::sync::Arc;

use idsync_api::resync_request::{Phase, ProfileRunStatus, TargetPhase};
use idsync_api::{Category, Connection, IdentityProfile, NotificationEvent, ResyncRequest, SyncCounts};
use jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use super::event::Notice;
use super::routing::{Routes, Subject, sync_event};
use crate::model::{ProcessingRunRecord, RunOutcome};
use crate::store::Store;
use crate::sync::job::{Announce, SyncReport};

/// The announcer of one sync of `connection`: the notices of its start and
/// of its outcome, for the namespace's policies (the outcome's committed
/// with its result). `request` names the ResyncRequest behind it, if any.
pub async fn sync(
    client: &kube::Client,
    connection: &Connection,
    request: Option<String>,
    mode: idsync_api::SyncMode,
    dry_run: bool,
) -> Announce {
    let namespace = connection.namespace().unwrap_or_else(|| "default".to_string());
    let routes = Arc::new(Routes::read(client, &namespace).await);
    let name = connection.name_any();
    let subject = Subject { connections: vec![(name.clone(), connection.spec.category)], profiles: Vec::new() };
    let notice = move |event: NotificationEvent, run: Option<i64>, now: Timestamp| Notice {
        event,
        namespace: namespace.clone(),
        kind: "Connection".into(),
        name: name.clone(),
        occurrence: run.map_or_else(|| format!("unrecorded-{now}"), |run| format!("run-{run}")),
        request: request.clone(),
        requested_by: None,
        target: None,
        mode: Some(mode.to_string()),
        scope: None,
        dry_run,
        outcome: None,
        reason: None,
        message: String::new(),
        counts: None,
        run,
        preview: Vec::new(),
        targets: Vec::new(),
        profiles: Vec::new(),
        timestamp: now.to_string(),
    };
    let (start_routes, start_subject, start_notice) = (routes.clone(), subject.clone(), notice.clone());
    Announce {
        started: Box::new(move |run| {
            let now = Timestamp::now();
            let notice = start_notice(NotificationEvent::SyncStarted, Some(run), now);
            start_routes.entries(&notice, &start_subject, &[], now)
        }),
        finished: Box::new(move |report: SyncReport| {
            let Some(event) = sync_event(report.outcome) else { return Vec::new() };
            let now = Timestamp::now();
            let notice = Notice {
                mode: Some(report.mode.to_string()),
                outcome: Some(report.outcome.as_str().to_string()),
                reason: report.reason,
                message: report.message,
                counts: Some(SyncCounts {
                    created: report.counts.created,
                    updated: report.counts.updated,
                    deleted: report.counts.deleted,
                    unchanged: report.counts.unchanged,
                }),
                preview: report.preview,
                ..notice(event, report.run, now)
            };
            routes.entries(&notice, &subject, &[], now)
        }),
    }
}

/// Enqueues the notice of a finished identity processing run of `profile`
/// (ProcessingSucceeded or ProcessingFailed), after its commit.
pub async fn processing(
    client: &kube::Client,
    store: &Arc<dyn Store>,
    profile: &IdentityProfile,
    run: &ProcessingRunRecord,
    failed: bool,
) {
    let event = if failed { NotificationEvent::ProcessingFailed } else { NotificationEvent::ProcessingSucceeded };
    let now = Timestamp::now();
    let name = profile.name_any();
    let phase = if failed { TargetPhase::Failed } else { TargetPhase::Succeeded };
    let notice = Notice {
        outcome: Some(run.outcome.as_str().to_string()),
        message: run.message.clone(),
        request: run.request.clone(),
        dry_run: run.outcome == RunOutcome::DryRun,
        run: Some(run.id),
        profiles: vec![ProfileRunStatus {
            profile: name.clone(),
            phase,
            processed: run.processed,
            changed: run.changed,
            errors: run.errors,
            message: String::new(),
            preview: Vec::new(),
            unknown_identities: Vec::new(),
        }],
        ..profile_notice(profile, event, format!("run-{}", run.id), now)
    };
    enqueue_routed(client, store, &notice, &Subject { connections: Vec::new(), profiles: vec![name] }).await;
}

/// Enqueues the notice that a Manual profile has changes waiting for an
/// explicit apply: once per generation of its spec.
pub async fn changes_pending(client: &kube::Client, store: &Arc<dyn Store>, profile: &IdentityProfile, message: &str) {
    let now = Timestamp::now();
    let generation = profile.metadata.generation.unwrap_or_default();
    let notice = Notice {
        message: message.to_string(),
        ..profile_notice(profile, NotificationEvent::ChangesPending, format!("generation-{generation}"), now)
    };
    enqueue_routed(client, store, &notice, &Subject { connections: Vec::new(), profiles: vec![profile.name_any()] })
        .await;
}

/// Enqueues the notice that a processing run found drift cases no run saw
/// before: once per run (`occurrence` names it), never for cases already
/// announced.
pub async fn access_drift(
    client: &kube::Client,
    store: &Arc<dyn Store>,
    profile: &IdentityProfile,
    occurrence: String,
    message: &str,
) {
    let now = Timestamp::now();
    let notice = Notice {
        message: message.to_string(),
        ..profile_notice(profile, NotificationEvent::AccessDrift, occurrence, now)
    };
    enqueue_routed(client, store, &notice, &Subject { connections: Vec::new(), profiles: vec![profile.name_any()] })
        .await;
}

/// Enqueues the notice that the identity safeguard held back run `run`.
pub async fn removals_held(
    client: &kube::Client,
    store: &Arc<dyn Store>,
    profile: &IdentityProfile,
    run: &ProcessingRunRecord,
) {
    let now = Timestamp::now();
    let notice = Notice {
        outcome: Some(run.outcome.as_str().to_string()),
        message: run.message.clone(),
        request: run.request.clone(),
        run: Some(run.id),
        ..profile_notice(profile, NotificationEvent::RemovalsHeld, format!("run-{}", run.id), now)
    };
    enqueue_routed(client, store, &notice, &Subject { connections: Vec::new(), profiles: vec![profile.name_any()] })
        .await;
}

fn profile_notice(profile: &IdentityProfile, event: NotificationEvent, occurrence: String, now: Timestamp) -> Notice {
    Notice {
        event,
        namespace: profile.namespace().unwrap_or_else(|| "default".to_string()),
        kind: "IdentityProfile".into(),
        name: profile.name_any(),
        occurrence,
        request: None,
        requested_by: None,
        target: None,
        mode: None,
        scope: None,
        dry_run: false,
        outcome: None,
        reason: None,
        message: String::new(),
        counts: None,
        run: None,
        preview: Vec::new(),
        targets: Vec::new(),
        profiles: Vec::new(),
        timestamp: now.to_string(),
    }
}

/// Routes `notice` through its namespace's policies and enqueues it.
async fn enqueue_routed(client: &kube::Client, store: &Arc<dyn Store>, notice: &Notice, subject: &Subject) {
    let routes = Routes::read(client, &notice.namespace).await;
    let entries = routes.entries(notice, subject, &[], Timestamp::now());
    enqueue(store, entries, &notice.name).await;
}

async fn enqueue(store: &Arc<dyn Store>, entries: Vec<crate::store::outbox::OutboxEntry>, about: &str) {
    if entries.is_empty() {
        return;
    }
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.enqueue(&entries)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, about, "cannot write notifications to the outbox"),
        Err(error) => tracing::warn!(%error, about, "cannot write notifications to the outbox"),
    }
}

/// The notice of a request's start or completion.
pub fn request_notice(request: &ResyncRequest, event: NotificationEvent, now: Timestamp) -> Notice {
    let status = request.status.clone().unwrap_or_default();
    let outcome = match event {
        NotificationEvent::RequestCompleted => status.phase.map(|p| format!("{p:?}")),
        _ => None,
    };
    let reason = match event {
        NotificationEvent::RequestCompleted => {
            idsync_api::conditions::find(&status.conditions, idsync_api::conditions::COMPLETE).map(|c| c.reason.clone())
        }
        _ => None,
    };
    let message = match event {
        NotificationEvent::RequestCompleted => {
            idsync_api::conditions::find(&status.conditions, idsync_api::conditions::COMPLETE)
                .map(|c| c.message.clone())
                .unwrap_or_default()
        }
        _ => String::new(),
    };
    let mut targets = status.targets.clone();
    let mut profiles = status.profiles.clone();
    if event == NotificationEvent::RequestStarted {
        // At the start, which connections and profiles, not their (empty) results.
        for t in &mut targets {
            t.preview.clear();
        }
        for p in &mut profiles {
            p.preview.clear();
        }
    }
    Notice {
        event,
        namespace: request.namespace().unwrap_or_else(|| "default".to_string()),
        kind: "ResyncRequest".into(),
        name: request.name_any(),
        occurrence: request.meta().uid.clone().unwrap_or_else(|| request.name_any()),
        request: None,
        requested_by: request.spec.requested_by.clone(),
        target: Some(request.spec.target.describe()),
        mode: Some(request.spec.mode.to_string()),
        scope: Some(format!("{:?}", request.spec.scope)),
        dry_run: request.spec.dry_run,
        outcome,
        reason,
        message,
        counts: None,
        run: None,
        preview: Vec::new(),
        targets,
        profiles,
        timestamp: now.to_string(),
    }
}

/// Enqueues the notices of `request`'s `event`: to the matching policies
/// and to the requester's `spec.notify` addresses. Safe to call again for
/// the same event: the outbox keeps the first.
pub async fn request(client: &kube::Client, store: &Arc<dyn Store>, request: &ResyncRequest, event: NotificationEvent) {
    let namespace = request.namespace().unwrap_or_else(|| "default".to_string());
    let routes = Routes::read(client, &namespace).await;
    if routes.policies.is_empty() && request.spec.notify.is_empty() {
        return;
    }
    let now = Timestamp::now();
    let notice = request_notice(request, event, now);
    let names: Vec<String> = notice.targets.iter().map(|t| t.connection.clone()).collect();
    let categories = if routes.policies.iter().any(|p| !p.spec.sources.categories.is_empty()) {
        categories_of(client, &namespace, &names).await
    } else {
        Vec::new()
    };
    let subject = Subject {
        connections: names
            .into_iter()
            .map(|n| {
                let category = categories.iter().find(|(c, _)| *c == n).map(|(_, c)| *c).unwrap_or(Category::Other);
                (n, category)
            })
            .collect(),
        profiles: notice
            .profiles
            .iter()
            .map(|p| p.profile.clone())
            .chain(request.spec.target.profiles.iter().flatten().cloned())
            .collect(),
    };
    let entries = routes.entries(&notice, &subject, &request.spec.notify, now);
    enqueue(store, entries, &notice.name).await;
}

/// Whether a finished request's completion may still need announcing: it
/// finished less than a day ago (a notification is tried for a day, and
/// the outbox forgets delivered ones after a month; an old request must
/// not announce itself again after a restart).
pub fn completion_recent(request: &ResyncRequest, now: Timestamp) -> bool {
    let status = request.status.as_ref();
    status.and_then(|s| s.phase).is_some_and(Phase::is_finished)
        && status
            .and_then(|s| s.completion_time.as_ref())
            .is_some_and(|t| now.duration_since(t.0) < super::worker::GIVE_UP_AFTER)
}

async fn categories_of(client: &kube::Client, namespace: &str, names: &[String]) -> Vec<(String, Category)> {
    let connections: Api<Connection> = Api::namespaced(client.clone(), namespace);
    match connections.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|c| names.contains(&c.name_any()))
            .map(|c| (c.name_any(), c.spec.category))
            .collect(),
        Err(error) => {
            tracing::debug!(%error, "cannot read the connections' categories for notification routing");
            Vec::new()
        }
    }
}
