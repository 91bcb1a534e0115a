//! The ResyncRequest controller: resolves the target to connections, runs
//! one sync per connection with the requested mode and concurrency policy,
//! records each target's phase and counts, sets the request's phase, and
//! deletes finished requests after `ttlSecondsAfterFinished`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams};
use kube::core::SelectorExt;
use kube::runtime::controller::{Action, Controller};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;

use super::runner::{OnDone, Start, Ticket, connection_ref, counts_of, summary};
use super::undecodable::{self, Lenient};
use super::{Context, Error, events, panics, profile, profile_lease, status, timing};
use crate::identity::process;
use crate::model::{RunOutcome, Trigger};
use crate::sync::cancel::CancelReason;
use crate::sync::job::SyncReport;
use idsync_api::conditions::{self, FALSE, TRUE};
use idsync_api::identity_profile::ApplyPolicy;
use idsync_api::resync_request::{Phase, ProfileRunStatus, ResyncTarget, TargetPhase, TargetStatus};
use idsync_api::{ConcurrencyPolicy, Connection, IdentityProfile, NotificationEvent, ResyncRequest};

pub fn controller(ctx: Arc<Context>) -> Controller<ResyncRequest> {
    super::undecodable::controller(&ctx)
}

pub fn error_policy(request: Arc<ResyncRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("resyncrequest", error.metric_label());
    tracing::warn!(%error, kind = error.metric_label(), namespace = ?request.namespace(), name = %request.name_any(),
        "resync request reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Why a request's target resolves to no work; the request fails with it
/// (condition message and Event).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkError {
    /// The label selector does not parse (the parser's message).
    #[error("spec.target.selector: {0}")]
    InvalidSelector(String),
    #[error("the target matched no Connection in this namespace")]
    NoConnection,
    #[error("no IdentityProfile in this namespace uses the target's connections")]
    NoProfile,
}

/// The names of the Connections a target selects, in a stable order; an
/// error when the target cannot be resolved at all.
pub fn resolve_target(target: &ResyncTarget, connections: &[Connection]) -> Result<Vec<String>, WorkError> {
    let names: Vec<String> = if target.all == Some(true) {
        connections.iter().map(|c| c.name_any()).collect()
    } else if let Some(category) = target.category {
        connections.iter().filter(|c| c.spec.category == category).map(|c| c.name_any()).collect()
    } else if let Some(named) = &target.connections {
        // Named connections are kept even when missing: each gets its own
        // Failed entry naming it.
        named.clone()
    } else if let Some(selector) = &target.selector {
        let selector: kube::core::Selector = selector
            .clone()
            .try_into()
            .map_err(|e: kube::core::ParseExpressionError| WorkError::InvalidSelector(e.to_string()))?;
        connections.iter().filter(|c| selector.matches(c.labels())).map(|c| c.name_any()).collect()
    } else {
        Vec::new()
    };
    let unique: BTreeSet<String> = names.into_iter().collect();
    if unique.is_empty() {
        return Err(WorkError::NoConnection);
    }
    Ok(unique.into_iter().collect())
}

/// What a request works on: the connections it syncs and the profiles it
/// processes afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    pub connections: Vec<String>,
    pub profiles: Vec<String>,
}

/// Resolves a request: named profiles are processed alone; otherwise the
/// target's connections are synced (scope Accounts), their profiles
/// processed (scope Identities), or both in that order.
pub fn resolve_work(
    spec: &idsync_api::ResyncRequestSpec,
    connections: &[Connection],
    profiles: &[IdentityProfile],
) -> Result<Work, WorkError> {
    if let Some(named) = &spec.target.profiles {
        let unique: BTreeSet<String> = named.iter().cloned().collect();
        return Ok(Work { connections: Vec::new(), profiles: unique.into_iter().collect() });
    }
    let resolved = resolve_target(&spec.target, connections)?;
    let profiles: Vec<String> = if spec.scope.includes_identities() {
        let using: BTreeSet<String> = profiles
            .iter()
            .filter(|p| process::connections_of(&p.spec).iter().any(|c| resolved.contains(c)))
            .map(|p| p.name_any())
            .collect();
        if using.is_empty() {
            return Err(WorkError::NoProfile);
        }
        using.into_iter().collect()
    } else {
        Vec::new()
    };
    let connections = if spec.scope.includes_accounts() { resolved } else { Vec::new() };
    Ok(Work { connections, profiles })
}

/// The Connections that do not decode and that the target would select
/// by what is known of them: all of them, or their labels. (A category
/// lives in the spec that does not decode; named ones are kept anyway.)
fn selected_unreadable(spec: &idsync_api::ResyncRequestSpec, set_aside: &[Lenient<Connection>]) -> Vec<String> {
    if spec.target.profiles.is_some() || !spec.scope.includes_accounts() {
        return Vec::new();
    }
    let target = &spec.target;
    let selector: Option<kube::core::Selector> = target.selector.clone().and_then(|s| s.try_into().ok());
    set_aside
        .iter()
        .filter(|c| target.all == Some(true) || selector.as_ref().is_some_and(|s| s.matches(c.labels())))
        .map(|c| c.name_any())
        .collect()
}

fn target_finished(p: TargetPhase) -> bool {
    matches!(p, TargetPhase::Succeeded | TargetPhase::Failed | TargetPhase::Rejected | TargetPhase::SafeguardTripped)
}

/// The request's phase from its targets' and profiles' phases, once all
/// are done.
pub fn overall_phase(targets: &[TargetStatus], profiles: &[ProfileRunStatus]) -> Option<Phase> {
    let phases: Vec<TargetPhase> = targets.iter().map(|t| t.phase).chain(profiles.iter().map(|p| p.phase)).collect();
    if phases.is_empty() || !phases.iter().all(|p| target_finished(*p)) {
        return None;
    }
    let succeeded = phases.iter().filter(|p| **p == TargetPhase::Succeeded).count();
    // Named identities the profile does not have: the rest was processed.
    let missed = profiles.iter().any(|p| !p.unknown_identities.is_empty());
    Some(match succeeded {
        n if n == phases.len() && missed => Phase::PartiallyFailed,
        n if n == phases.len() => Phase::Succeeded,
        0 => Phase::Failed,
        _ => Phase::PartiallyFailed,
    })
}

fn target_phase(outcome: RunOutcome) -> TargetPhase {
    match outcome {
        RunOutcome::Succeeded | RunOutcome::DryRun => TargetPhase::Succeeded,
        RunOutcome::SafeguardTripped => TargetPhase::SafeguardTripped,
        RunOutcome::Failed | RunOutcome::Interrupted | RunOutcome::Cancelled => TargetPhase::Failed,
    }
}

/// One reconcile; a panic inside it fails this reconcile only (see `panics`).
pub async fn reconcile(request: Arc<ResyncRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let object = format!(
        "ResyncRequest {}/{}",
        request.namespace().unwrap_or_else(|| "default".to_string()),
        request.name_any()
    );
    panics::catching(&object, reconcile_request(request, ctx)).await
}

async fn reconcile_request(request: Arc<ResyncRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = request.name_any();
    let namespace = request.namespace().unwrap_or_else(|| "default".to_string());
    let api: Api<ResyncRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = ctx.clock.now();
    let mut status = request.status.clone().unwrap_or_default();

    // With shared replicas, what happens once per request (resolving it,
    // announcing it, deleting it after its TTL) is its owner's; each
    // replica starts the targets whose connections it owns.
    let owns_request = ctx.owns(&crate::membership::request_key(&namespace, &name));

    // Finished: wait for the TTL, then go.
    if status.phase.is_some_and(|p| p.is_finished()) {
        if !owns_request {
            return Ok(Action::await_change());
        }
        // A completion a crash kept from being announced is announced now
        // (the outbox keeps the first of the same notification).
        if crate::notify::announce::completion_recent(&request, now) {
            crate::notify::announce::request(&ctx.client, &ctx.store, &request, NotificationEvent::RequestCompleted)
                .await;
        }
        let Some(ttl) = request.spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let done = status.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
        let Some(expires) = timing::expiry(done, ttl) else {
            tracing::info!(request = %name, ttl, "the request's TTL ends beyond any time; keeping it");
            return Ok(Action::await_change());
        };
        if expires <= now {
            match api.delete(&name, &DeleteParams::background()).await {
                // Gone already: deleted by someone else (or by this
                // replica's previous owner) in between.
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(Error::Kube(error)),
            }
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::try_from(expires.duration_since(now)).unwrap_or_default()));
    }

    // First sight: resolve the target.
    let mut first_sight: Option<Work> = None;
    if status.phase.is_none() && !owns_request {
        // Its owner's first status write brings the next reconcile here.
        return Ok(Action::requeue(ctx.config.max_requeue));
    }
    if status.phase.is_none() {
        // Objects that do not decode are set aside (and reported on
        // themselves) rather than failing the list for every request.
        let listed = undecodable::list::<Connection>(&ctx.undecodable, &namespace).await.map_err(Error::Kube)?;
        let listed_profiles = if request.spec.scope.includes_identities() {
            undecodable::list::<IdentityProfile>(&ctx.undecodable, &namespace).await.map_err(Error::Kube)?.objects
        } else {
            Vec::new()
        };
        let mut resolved = resolve_work(&request.spec, &listed.objects, &listed_profiles);
        // A Connection the target selects but idsync cannot read gets its
        // own Failed entry saying why, as a missing named one does.
        let unreadable = selected_unreadable(&request.spec, &listed.undecodable);
        match &mut resolved {
            Ok(work) if !unreadable.is_empty() => {
                let all: BTreeSet<String> = work.connections.drain(..).chain(unreadable).collect();
                work.connections = all.into_iter().collect();
            }
            Err(WorkError::NoConnection) if !unreadable.is_empty() => {
                resolved = Ok(Work { connections: unreadable, profiles: Vec::new() });
            }
            _ => {}
        }
        let generation = request.metadata.generation;
        let stamp = Time(now);
        if let Ok(work) = &resolved {
            // Before the status write, so a crash between them cannot lose
            // it; written again by a re-reconcile, it is kept once.
            let mut starting = (*request).clone();
            let s = starting.status.get_or_insert_with(Default::default);
            s.targets = work.connections.iter().map(TargetStatus::pending).collect();
            crate::notify::announce::request(&ctx.client, &ctx.store, &starting, NotificationEvent::RequestStarted)
                .await;
        }
        match resolved {
            // Written with what this reconcile starts below, in one write.
            Ok(work) => {
                init_status(&mut status, &request, &work, &stamp);
                first_sight = Some(work);
            }
            Err(error) => {
                let message = error.to_string();
                status::update(&api, &name, |r: &mut ResyncRequest| {
                    let s = r.status.get_or_insert_with(Default::default);
                    if s.phase.is_some() {
                        return false;
                    }
                    s.observed_generation = generation;
                    s.start_time = Some(stamp.clone());
                    s.target = request.spec.target.describe();
                    s.phase = Some(Phase::Failed);
                    s.completion_time = Some(stamp.clone());
                    for type_ in [conditions::COMPLETE, conditions::STALLED] {
                        conditions::set_condition(
                            &mut s.conditions,
                            type_,
                            TRUE,
                            "TargetNotResolved",
                            &message,
                            generation,
                            stamp.clone(),
                        );
                    }
                    true
                })
                .await?;
                events::publish(&ctx.recorder, &request.object_ref(&()), true, events::SYNC_FAILED, message).await;
                return Ok(Action::requeue(ctx.config.max_requeue));
            }
        }
    }

    // Start what can start. A sync's result waits for this reconcile's
    // status write (`gate`): on first sight its target entry exists only
    // once that write is in.
    let (gate, gated) = watch::channel(false);
    let mut updates: Vec<(String, TargetPhase, String)> = Vec::new();
    // Syncs of this request that finished in the store with no result in
    // the request (their replica died in between): recorded from the store.
    let mut recovered: Vec<(String, SyncReport)> = Vec::new();
    let mut waiting = false;
    for target in status
        .targets
        .iter()
        .filter(|t| matches!(t.phase, TargetPhase::Pending | TargetPhase::Waiting | TargetPhase::Running))
        .filter(|t| ctx.owns(&crate::membership::connection_key(&namespace, &t.connection)))
    {
        let connection = match undecodable::get::<Connection>(&ctx.undecodable, &namespace, &target.connection)
            .await
            .map_err(Error::Kube)?
        {
            Some(Ok(connection)) => connection,
            Some(Err(problem)) => {
                updates.push((
                    target.connection.clone(),
                    TargetPhase::Failed,
                    format!("Connection {:?} cannot be read by idsync: {problem}", target.connection),
                ));
                continue;
            }
            None => {
                updates.push((
                    target.connection.clone(),
                    TargetPhase::Failed,
                    format!("Connection {:?} not found", target.connection),
                ));
                continue;
            }
        };
        let conn = connection_ref(&connection);
        if target.phase == TargetPhase::Running {
            // Still ours and running: wait for it. Not running here any more
            // (the operator restarted): run it again; the store is unchanged.
            if ctx.runner.running(&conn).is_none() {
                if ctx.shared() {
                    match taken_over(&ctx, &connection, &name).await? {
                        TakenOver::RunningElsewhere => {}
                        TakenOver::Finished(report) => recovered.push((target.connection.clone(), *report)),
                        TakenOver::RunAgain => updates.push((
                            target.connection.clone(),
                            TargetPhase::Pending,
                            "the operator instance running this sync stopped; running it again".into(),
                        )),
                    }
                    waiting = true;
                    continue;
                }
                updates.push((
                    target.connection.clone(),
                    TargetPhase::Pending,
                    "the operator restarted during the sync; running it again".into(),
                ));
                waiting = true;
            }
            continue;
        }
        let ticket = Ticket {
            connection: connection.clone(),
            mode: request.spec.mode,
            trigger: Trigger::Requested,
            request: Some(name.clone()),
            dry_run: request.spec.dry_run,
            confirm_deletes: request.spec.confirm_deletes,
            bookkeeping: None,
        };
        // Shared replicas: a sync of this target may have run on another
        // replica whose result never reached the request (it died, or its
        // write lost to the others' until it gave up): never twice. Looked
        // up under the guard, so that no sync of it can finish elsewhere
        // between the look and the start; a guard another replica holds is
        // waited for here rather than raced for in the start.
        let guarded = if ctx.shared() { Some(ctx.runner.hold_guard(&ctx, &connection).await?) } else { None };
        if let Some(super::runner::Guarded::Held) = guarded
            && let Some(report) = finished_run(&ctx, &conn, &name).await?
        {
            recovered.push((target.connection.clone(), report));
            continue;
        }
        let mut outcome = match guarded {
            Some(super::runner::Guarded::Busy(holder)) => Start::Busy(holder),
            _ => {
                ctx.runner
                    .start(
                        ctx.clone(),
                        ticket.clone(),
                        on_done(&ctx, &namespace, &name, &target.connection, gated.clone()),
                    )
                    .await?
            }
        };
        // Replace: cancel the running sync (only one this instance runs can
        // be cancelled; another instance's is waited for) and start again.
        let replace = request.spec.concurrency_policy == ConcurrencyPolicy::Replace;
        if let Start::Busy(holder) = &outcome
            && replace
            && let Some(mut done) = ctx.runner.cancel(&conn, CancelReason::ReplacedBy(name.clone()))
        {
            tracing::info!(connection = %conn.name, replaced = ?holder.request, "replacing the running sync");
            let _ = tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d)).await;
            outcome = ctx
                .runner
                .start(ctx.clone(), ticket, on_done(&ctx, &namespace, &name, &target.connection, gated.clone()))
                .await?;
        }
        match outcome {
            Start::Started => updates.push((
                target.connection.clone(),
                TargetPhase::Running,
                format!("{} sync running", request.spec.mode),
            )),
            Start::Busy(holder) => {
                let who = match &holder.request {
                    Some(r) => format!("ResyncRequest {r}"),
                    // Another instance holds the guard, its sync unknown here.
                    None if holder.mode.is_empty() => "another operator instance".to_string(),
                    None => "a scheduled sync".to_string(),
                };
                let since = holder.since;
                // Shared replicas: a replica that holds the guard with no
                // sync known to run under it is handing the connection
                // over (its owner changed), not syncing: wait for it.
                let handing_over = ctx.shared() && holder.mode.is_empty() && holder.request.is_none();
                match request.spec.concurrency_policy {
                    ConcurrencyPolicy::Forbid if !handing_over => {
                        let message = format!(
                            "rejected: Connection {} is already syncing ({who}, held by {} since {since}); concurrencyPolicy is Forbid",
                            target.connection, holder.identity
                        );
                        events::publish(
                            &ctx.recorder,
                            &request.object_ref(&()),
                            true,
                            events::SYNC_REJECTED,
                            message.clone(),
                        )
                        .await;
                        events::publish(
                            &ctx.recorder,
                            &connection.object_ref(&()),
                            true,
                            events::SYNC_REJECTED,
                            format!("ResyncRequest {name} {message}"),
                        )
                        .await;
                        updates.push((target.connection.clone(), TargetPhase::Rejected, message));
                    }
                    ConcurrencyPolicy::Forbid | ConcurrencyPolicy::Wait | ConcurrencyPolicy::Replace => {
                        waiting = true;
                        updates.push((
                            target.connection.clone(),
                            TargetPhase::Waiting,
                            format!("waiting for the running sync ({who}) to finish"),
                        ));
                    }
                }
            }
        }
    }

    let generation = request.metadata.generation;
    let stamp = Time(now);
    let written = status::update(&api, &name, |r: &mut ResyncRequest| {
        let s = r.status.get_or_insert_with(Default::default);
        let before = s.clone();
        if let (None, Some(work)) = (s.phase, &first_sight) {
            init_status(s, &request, work, &stamp);
        }
        for (connection, report) in &recovered {
            if let Some(t) = s.targets.iter_mut().find(|t| &t.connection == connection && !target_finished(t.phase)) {
                record_target(t, report, &stamp);
            }
        }
        for (connection, phase, message) in &updates {
            if let Some(t) = s.targets.iter_mut().find(|t| &t.connection == connection) {
                // A sync that already finished (its callback wrote first) keeps its result.
                if matches!(
                    t.phase,
                    TargetPhase::Succeeded
                        | TargetPhase::Failed
                        | TargetPhase::SafeguardTripped
                        | TargetPhase::Rejected
                ) {
                    continue;
                }
                if *phase == TargetPhase::Running && t.phase != TargetPhase::Running {
                    t.start_time = Some(stamp.clone());
                }
                if matches!(phase, TargetPhase::Failed | TargetPhase::Rejected) {
                    t.completion_time = Some(stamp.clone());
                }
                t.phase = *phase;
                t.message = message.clone();
            }
        }
        finish_if_done(s, generation, &stamp);
        *s != before
    })
    .await;
    // Written or not, the syncs' results may go in now.
    let _ = gate.send(true);
    if let Some(written) = written? {
        announce_completion(&ctx, &written).await;
    }

    // Profiles go once every sync has ended, so they see what it brought.
    let latest = api.get_status(&name).await.map_err(Error::Kube)?;
    let latest_status = latest.status.clone().unwrap_or_default();
    if latest_status.targets.iter().all(|t| target_finished(t.phase)) {
        for entry in latest_status
            .profiles
            .iter()
            .filter(|p| !target_finished(p.phase))
            .filter(|p| ctx.owns(&crate::membership::profile_key(&namespace, &p.profile)))
        {
            if !process_profile(&ctx, &latest, &entry.profile).await? {
                // Another replica processes it right now: look again soon.
                waiting = true;
            }
        }
    }
    Ok(if waiting { Action::requeue(Duration::from_secs(1)) } else { Action::requeue(ctx.config.max_requeue) })
}

/// A request's status on first sight: its targets and profiles pending,
/// `Complete` False with what it will do.
fn init_status(s: &mut idsync_api::ResyncRequestStatus, request: &ResyncRequest, work: &Work, stamp: &Time) {
    let generation = request.metadata.generation;
    s.observed_generation = generation;
    s.start_time = Some(stamp.clone());
    s.target = request.spec.target.describe();
    // Running once a target's sync starts (finish_if_done).
    s.phase = Some(Phase::Pending);
    s.profiles = work
        .profiles
        .iter()
        .map(|p| ProfileRunStatus {
            profile: p.clone(),
            phase: TargetPhase::Pending,
            processed: 0,
            changed: 0,
            errors: 0,
            message: String::new(),
            preview: Vec::new(),
            unknown_identities: Vec::new(),
        })
        .collect();
    s.targets = work.connections.iter().map(TargetStatus::pending).collect();
    conditions::set_condition(
        &mut s.conditions,
        conditions::COMPLETE,
        FALSE,
        "Running",
        &format!(
            "syncing {} connection(s), processing {} profile(s){}",
            work.connections.len(),
            work.profiles.len(),
            requested_by(&request.spec)
        ),
        generation,
        stamp.clone(),
    );
}

/// Sets the phase, completion time and `Complete` condition once every
/// target has finished.
fn finish_if_done(s: &mut idsync_api::ResyncRequestStatus, generation: Option<i64>, stamp: &Time) {
    if s.phase.is_some_and(|p| p.is_finished()) {
        return;
    }
    let Some(phase) = overall_phase(&s.targets, &s.profiles) else {
        // Not done: Running while something runs, Pending while every
        // target waits (for a busy connection, a sync slot, its turn).
        let mut phases = s.targets.iter().map(|t| t.phase).chain(s.profiles.iter().map(|p| p.phase));
        s.phase = Some(if phases.any(|p| p == TargetPhase::Running) { Phase::Running } else { Phase::Pending });
        return;
    };
    s.phase = Some(phase);
    s.completion_time = Some(stamp.clone());
    let succeeded = s.targets.iter().filter(|t| t.phase == TargetPhase::Succeeded).count();
    let processed = s.profiles.iter().filter(|p| p.phase == TargetPhase::Succeeded).count();
    let held: Vec<&str> =
        s.targets.iter().filter(|t| t.phase == TargetPhase::SafeguardTripped).map(|t| t.connection.as_str()).collect();
    let mut message = match (s.targets.len(), s.profiles.len()) {
        (_, 0) => format!("{succeeded} of {} connection(s) synced", s.targets.len()),
        (0, profiles) => format!("{processed} of {profiles} profile(s) processed"),
        (targets, profiles) => {
            format!("{succeeded} of {targets} connection(s) synced, {processed} of {profiles} profile(s) processed")
        }
    };
    // A held-back sync waits for a person, which a plain "Failed" hides.
    let reason = if held.is_empty() {
        format!("{phase:?}")
    } else {
        message.push_str(&format!(
            "; held back by the import safeguard: {}; to apply, create a ResyncRequest naming them with confirmDeletes: true",
            held.join(", ")
        ));
        "SafeguardTripped".to_string()
    };
    conditions::set_condition(
        &mut s.conditions,
        conditions::COMPLETE,
        TRUE,
        &reason,
        &message,
        generation,
        stamp.clone(),
    );
}

async fn announce_completion(ctx: &Arc<Context>, request: &ResyncRequest) {
    let Some(status) = &request.status else {
        return;
    };
    let Some(phase) = status.phase.filter(|p| p.is_finished()) else {
        return;
    };
    let complete = conditions::find(&status.conditions, conditions::COMPLETE);
    // Only the write that completed it announces it.
    if complete
        .is_none_or(|c| c.last_transition_time != *status.completion_time.as_ref().unwrap_or(&c.last_transition_time))
    {
        return;
    }
    let summary =
        format!("{}{}", complete.map(|c| c.message.as_str()).unwrap_or_default(), requested_by(&request.spec));
    let message = completion_note(&summary, status);
    let (warning, reason) = match phase {
        Phase::Succeeded => (false, "ResyncSucceeded"),
        Phase::PartiallyFailed => (true, "ResyncPartiallyFailed"),
        _ => (true, "ResyncFailed"),
    };
    events::publish(&ctx.recorder, &request.object_ref(&()), warning, reason, message).await;
    crate::notify::announce::request(&ctx.client, &ctx.store, request, NotificationEvent::RequestCompleted).await;
}

/// `, requested by alice` when the request names who asked (the chart's
/// admission policy checks it is the creating user), for condition messages
/// and Events.
fn requested_by(spec: &idsync_api::ResyncRequestSpec) -> String {
    spec.requested_by.as_deref().map(|user| format!(", requested by {user}")).unwrap_or_default()
}

/// The completion Event's note: the summary, then what each target and
/// profile did, so the request's own Event tells this request's results.
fn completion_note(summary: &str, status: &idsync_api::ResyncRequestStatus) -> String {
    let targets = status.targets.iter().map(|t| format!("{}: {}", t.connection, t.message));
    let profiles = status.profiles.iter().map(|p| format!("profile {}: {}", p.profile, p.message));
    let details: Vec<String> = targets.chain(profiles).filter(|d| !d.ends_with(": ")).collect();
    if details.is_empty() { summary.to_string() } else { format!("{summary}. {}", details.join("; ")) }
}

/// Writes a finished sync's result into its target entry.
fn record_target(t: &mut TargetStatus, report: &SyncReport, now: &Time) {
    t.phase = target_phase(report.outcome);
    t.mode = Some(report.mode);
    t.counts = Some(counts_of(report));
    t.message = summary(report);
    t.run = report.run;
    t.preview = report.preview.clone();
    t.completion_time = Some(now.clone());
    if t.start_time.is_none() {
        t.start_time = Some(now.clone());
    }
}

/// What became of a Running target this replica owns but does not run
/// (shared replicas): the replica that ran it stopped, or the target just
/// moved here.
enum TakenOver {
    /// A live replica still holds the connection's guard: its sync goes on,
    /// and it records the result.
    RunningElsewhere,
    /// The sync finished in the store before its replica could record it
    /// here: its result, from the run history, so it is not run twice.
    Finished(Box<SyncReport>),
    /// It never finished: run it again (what it read was never applied).
    RunAgain,
}

async fn taken_over(ctx: &Arc<Context>, connection: &Connection, request: &str) -> Result<TakenOver, Error> {
    let conn = connection_ref(connection);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(ctx.client.clone(), &conn.namespace);
    if let Some(holder) = super::guard::live_holder(&leases, &conn.name).await?
        && holder != ctx.config.identity
    {
        return Ok(TakenOver::RunningElsewhere);
    }
    Ok(match finished_run(ctx, &conn, request).await? {
        Some(report) => TakenOver::Finished(Box::new(report)),
        None => TakenOver::RunAgain,
    })
}

/// This request's sync of `conn`, if one ran to its end (not interrupted
/// or cancelled: those applied nothing, and run again), as its report.
async fn finished_run(
    ctx: &Arc<Context>,
    conn: &crate::model::ConnectionRef,
    request: &str,
) -> Result<Option<SyncReport>, Error> {
    let store = ctx.store.clone();
    let conn = conn.clone();
    let runs = tokio::task::spawn_blocking(move || store.runs(&conn, 20))
        .await
        .map_err(|e| Error::Conflict(format!("a store task failed: {e}")))??;
    // Newest first: this request's last run of the connection.
    let Some(last) = runs.into_iter().find(|r| r.request.as_deref() == Some(request)) else {
        return Ok(None);
    };
    Ok(match (last.finished_at, last.outcome) {
        (Some(_), Some(outcome)) if !matches!(outcome, RunOutcome::Interrupted | RunOutcome::Cancelled) => {
            Some(report_of(&last, outcome))
        }
        _ => None,
    })
}

/// A finished run as its sync's report, for a target's entry.
fn report_of(run: &crate::model::RunRecord, outcome: RunOutcome) -> SyncReport {
    let mode = match run.mode.unwrap_or(run.requested_mode) {
        crate::model::RunMode::Full => idsync_api::SyncMode::Full,
        crate::model::RunMode::Delta => idsync_api::SyncMode::Delta,
    };
    SyncReport {
        run: Some(run.id),
        outcome,
        mode,
        message: run.message.clone(),
        counts: run.counts,
        pages: 0,
        duration_ms: run
            .finished_at
            .and_then(|end| u64::try_from(end.duration_since(run.started_at).as_millis()).ok())
            .unwrap_or(0),
        accounts: 0,
        reason: None,
        stalled: false,
        preview: Vec::new(),
    }
}

/// Records a finished sync in the request's target entry.
fn on_done(
    ctx: &Arc<Context>,
    namespace: &str,
    request: &str,
    connection: &str,
    mut gate: watch::Receiver<bool>,
) -> OnDone {
    let api: Api<ResyncRequest> = Api::namespaced(ctx.client.clone(), namespace);
    let request = request.to_string();
    let connection = connection.to_string();
    let ctx = ctx.clone();
    Box::new(move |report: SyncReport| {
        Box::pin(async move {
            // Stopped by shutdown: the target stays Running, as after a
            // kill -9, and the next operator runs it.
            if report.reason.as_deref() == Some(crate::sync::job::SHUTDOWN) {
                return;
            }
            // After the starting reconcile's write (or its end, if it failed).
            let _ = gate.wait_for(|open| *open).await;
            let now = Time(Timestamp::now());
            let mut record = |r: &mut ResyncRequest| {
                let generation = r.metadata.generation;
                let s = r.status.get_or_insert_with(Default::default);
                let Some(t) = s.targets.iter_mut().find(|t| t.connection == connection) else {
                    return false;
                };
                record_target(t, &report, &now);
                finish_if_done(s, generation, &now);
                true
            };
            // Many writers of one request (every replica's targets): a
            // result is worth more tries than one status write gets.
            let mut written = status::update(&api, &request, &mut record).await;
            for pause in [100, 300, 1000] {
                if !matches!(written, Err(Error::Conflict(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(pause)).await;
                written = status::update(&api, &request, &mut record).await;
            }
            match written {
                Ok(Some(written)) => announce_completion(&ctx, &written).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, request, "could not record a target's result"),
            }
        })
    })
}

/// Processes one profile for the request: a dry run previews the spec as
/// it is now; a run naming identities processes those with the mappings
/// the profile applies; a run naming none applies the spec as it is now (a
/// Manual profile's pending changes) to every identity.
async fn process_profile(ctx: &Arc<Context>, request: &ResyncRequest, profile_name: &str) -> Result<bool, Error> {
    let name = request.name_any();
    let namespace = request.namespace().unwrap_or_else(|| "default".to_string());
    let api: Api<ResyncRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let profiles: Api<IdentityProfile> = Api::namespaced(ctx.client.clone(), &namespace);
    let spec = &request.spec;

    let finish = |phase: TargetPhase, message: String, result: Option<profile::JobResult>| {
        let api = api.clone();
        let name = name.clone();
        let profile_name = profile_name.to_string();
        async move {
            let now = Time(Timestamp::now());
            let written = status::update(&api, &name, |r: &mut ResyncRequest| {
                let generation = r.metadata.generation;
                let s = r.status.get_or_insert_with(Default::default);
                let Some(entry) = s.profiles.iter_mut().find(|p| p.profile == profile_name) else { return false };
                entry.phase = phase;
                entry.message = message.clone();
                if let Some(result) = &result {
                    entry.processed = result.run.processed;
                    entry.changed = result.run.changed;
                    entry.errors = result.run.errors;
                    entry.preview = result.preview.clone();
                    entry.unknown_identities = result.unknown.clone();
                }
                finish_if_done(s, generation, &now);
                true
            })
            .await?;
            Ok::<_, Error>(written)
        }
    };

    let Some(profile) = profiles.get_opt(profile_name).await.map_err(Error::Kube)? else {
        let written = finish(TargetPhase::Failed, format!("IdentityProfile {profile_name:?} not found"), None).await?;
        if let Some(written) = written {
            announce_completion(ctx, &written).await;
        }
        return Ok(true);
    };
    let p = profile::profile_ref(&profile);
    let lock = ctx.profile_lock(&p);
    let _held = lock.lock().await;
    // One replica at a time, across replicas (shared replicas): the
    // profile's processing Lease, for this run only.
    let exclusive = match profile_lease::exclusive(ctx, &profile).await? {
        profile_lease::Exclusive::Busy(holder) => {
            tracing::debug!(profile = %p, %holder, "another replica processes the profile; waiting for it");
            return Ok(false);
        }
        exclusive => exclusive,
    };
    let outcome: Result<bool, Error> = async {
        // Processed for this request by another replica while this one
        // waited for the Lease (the profile's owner changed): done.
        if exclusive.is_lease() {
            let current = api.get_status(&name).await.map_err(Error::Kube)?;
            let done = current.status.as_ref().and_then(|s| s.profiles.iter().find(|e| e.profile == profile_name));
            if done.is_none_or(|e| target_finished(e.phase)) {
                return Ok(true);
            }
        }
        let state = {
            let p = p.clone();
            profile::blocking(ctx, move |store| store.profile_state(&p)).await?
        };
        let named = !spec.identities.is_empty();
        // Which mappings: the spec as it is (dry runs, and a request that
        // applies pending changes), or what a Manual profile has applied.
        // Applying is explicit (`applyPendingChanges`, an admin's action under
        // the chart's admission policy): any other request, even one naming the
        // profile, processes it as the profile itself would.
        let applying = spec.apply_pending_changes && !named;
        let applied = match profile::applied_mappings(&profile, state.applied_spec.as_deref(), state.applied_generation) {
            Ok(applied) => applied,
            // Previewing or applying the current spec does not need the applied
            // one, and applying records it again: the way out of this error.
            Err(_) if spec.dry_run || applying => None,
            Err(error) => {
                let written = finish(TargetPhase::Failed, error.to_string(), None).await?;
                if let Some(written) = written {
                    announce_completion(ctx, &written).await;
                }
                return Ok(true);
            }
        };
        let use_applied =
            profile.spec.apply_policy == ApplyPolicy::Manual && applied.is_some() && !spec.dry_run && !applying;
        // Said in the result, so a requester learns why the change did not land.
        let left_pending = use_applied
            && state.applied_generation != profile.metadata.generation
            && applied.as_ref().map(process::mapping_hash) != Some(process::mapping_hash(&profile.spec));
        let mut mappings = match (&applied, use_applied) {
            (Some(applied), true) => applied.clone(),
            _ => profile.spec.clone(),
        };
        // drift hook: drift and the safeguard follow the live spec, whatever mappings apply.
        (mappings.drift, mappings.identity_safeguard) =
            (profile.spec.drift.clone(), profile.spec.identity_safeguard.clone());
        let compiled = match profile::compile(ctx, &mappings) {
            Ok(c) => c,
            Err(problem) => {
                let written = finish(TargetPhase::Failed, format!("the profile's expressions: {problem}"), None).await?;
                if let Some(written) = written {
                    announce_completion(ctx, &written).await;
                }
                return Ok(true);
            }
        };
        let applies = (!spec.dry_run && !use_applied).then(|| (profile.spec.clone(), profile.metadata.generation));
        // A dry run that also synced (AccountsAndIdentities) previews the
        // identities with the accounts its syncs would apply: each dry-run
        // sync that would apply is laid over the store. One the safeguard held
        // back would apply nothing, and is not.
        let overlay: Vec<(String, crate::model::RunId)> = if spec.dry_run {
            let status = request.status.clone().unwrap_or_default();
            status
                .targets
                .iter()
                .filter(|t| t.phase == TargetPhase::Succeeded)
                .filter_map(|t| t.run.map(|run| (t.connection.clone(), run)))
                .collect()
        } else {
            Vec::new()
        };
        let job = profile::Job {
            profile: p.clone(),
            spec: mappings,
            compiled,
            selection: profile::selection_for(&spec.identities),
            trigger: Trigger::Manual,
            request: Some(name.clone()),
            dry_run: spec.dry_run,
            // Applying to some identities only would leave the profile half on
            // one generation and half on another.
            applies: if named { None } else { applies },
            scheduled: None,
            overlay,
            confirm_removals: spec.confirm_removals,
        };
        let result = profile::execute(ctx, &profile, job, exclusive.lost()).await;
        let phase = if result.run.outcome == RunOutcome::Failed { TargetPhase::Failed } else { TargetPhase::Succeeded };
        let mut note = profile::run_note(&result.run);
        if left_pending {
            note.push_str(&format!(
                "; processed with the applied mappings (generation {}): the pending changes apply with applyPendingChanges",
                state.applied_generation.unwrap_or_default()
            ));
        }
        events::publish_as(
            &ctx.recorder,
            &request.object_ref(&()),
            phase == TargetPhase::Failed,
            if phase == TargetPhase::Failed { events::PROCESSING_FAILED } else { events::PROCESSING_SUCCEEDED },
            format!("{profile_name}: {note}"),
            "Process",
        )
        .await;
        if result.run.outcome == RunOutcome::Succeeded {
            let generation = profile.metadata.generation;
            let state = {
                let p = p.clone();
                profile::blocking(ctx, move |store| store.profile_state(&p)).await?
            };
            let stamp = Time(ctx.clock.now());
            status::update(&profiles, profile_name, |obj: &mut IdentityProfile| {
                let s = obj.status.get_or_insert_with(Default::default);
                s.applied_generation = state.applied_generation;
                profile::record_run(s, &result, generation, &stamp);
                true
            })
            .await?;
        }
        let written = finish(phase, note, Some(result)).await?;
        if let Some(written) = written {
            announce_completion(ctx, &written).await;
        }
        Ok(true)
    }
    .await;
    exclusive.release().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use idsync_api::Category;
    use idsync_api::fixtures::ResyncRequestBuilder;
    use idsync_api::resync_request::Scope;

    fn fleet() -> Vec<Connection> {
        vec![
            Connection::test("okta").category(Category::IdP).label("site", "hq").build(),
            Connection::test("aws").category(Category::Infrastructure).label("site", "hq").build(),
            Connection::test("gcp").category(Category::Infrastructure).label("site", "eu").build(),
            Connection::test("hris").category(Category::Hris).build(),
        ]
    }

    fn target_of(request: ResyncRequestBuilder) -> ResyncTarget {
        request.spec().target
    }

    #[test]
    fn targets_resolve_to_connections_in_a_stable_order() {
        let all = target_of(ResyncRequest::test("r").all());
        assert_eq!(resolve_target(&all, &fleet()), Ok(vec!["aws".into(), "gcp".into(), "hris".into(), "okta".into()]));
        let category = target_of(ResyncRequest::test("r").category(Category::Infrastructure));
        assert_eq!(resolve_target(&category, &fleet()), Ok(vec!["aws".into(), "gcp".into()]));
        let selector = target_of(ResyncRequest::test("r").selector([("site", "hq")]));
        assert_eq!(resolve_target(&selector, &fleet()), Ok(vec!["aws".into(), "okta".into()]));
        // Named connections are kept even when missing, to fail by name.
        let named = target_of(ResyncRequest::test("r").connections(["okta", "ghost"]));
        assert_eq!(resolve_target(&named, &fleet()), Ok(vec!["ghost".into(), "okta".into()]));
    }

    #[test]
    fn a_target_matching_nothing_says_so() {
        let category = target_of(ResyncRequest::test("r").category(Category::Mdm));
        assert_eq!(resolve_target(&category, &fleet()), Err(WorkError::NoConnection));
        let all = target_of(ResyncRequest::test("r").all());
        assert!(resolve_target(&all, &[]).is_err());
    }

    #[test]
    fn work_follows_scope_and_named_profiles() {
        let profiles = vec![
            IdentityProfile::test("employees")
                .authoritative("hris")
                .correlate("okta", "email", "email")
                .attribute("email", "accounts.hris.email")
                .build(),
            IdentityProfile::test("contractors").authoritative("gcp").attribute("email", "accounts.gcp.email").build(),
        ];
        let accounts = ResyncRequest::test("r").category(Category::IdP).spec();
        assert_eq!(
            resolve_work(&accounts, &fleet(), &profiles),
            Ok(Work { connections: vec!["okta".into()], profiles: vec![] })
        );
        let both = ResyncRequest::test("r").category(Category::IdP).scope(Scope::AccountsAndIdentities).spec();
        assert_eq!(
            resolve_work(&both, &fleet(), &profiles),
            Ok(Work { connections: vec!["okta".into()], profiles: vec!["employees".into()] })
        );
        // Identities only: the profiles that read the target, no sync.
        let identities = ResyncRequest::test("r").all().scope(Scope::Identities).spec();
        assert_eq!(
            resolve_work(&identities, &fleet(), &profiles),
            Ok(Work { connections: vec![], profiles: vec!["contractors".into(), "employees".into()] })
        );
        let named = ResyncRequest::test("r").profiles(["employees", "employees", "ghost"]).spec();
        assert_eq!(
            resolve_work(&named, &fleet(), &profiles),
            Ok(Work { connections: vec![], profiles: vec!["employees".into(), "ghost".into()] })
        );
        let unused = ResyncRequest::test("r").connections(["aws"]).scope(Scope::Identities).spec();
        assert_eq!(resolve_work(&unused, &fleet(), &profiles), Err(WorkError::NoProfile));
    }

    fn target(phase: TargetPhase) -> TargetStatus {
        TargetStatus { phase, ..TargetStatus::pending("c") }
    }

    #[test]
    fn the_completion_note_names_each_targets_own_result() {
        let status = idsync_api::ResyncRequestStatus {
            targets: vec![
                TargetStatus {
                    connection: "hr".into(),
                    message: "Full sync succeeded: created 3".into(),
                    ..target(TargetPhase::Succeeded)
                },
                TargetStatus {
                    connection: "idp".into(),
                    message: "Full sync failed: HTTP 500".into(),
                    ..target(TargetPhase::Failed)
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            completion_note("1 of 2 connection(s) synced", &status),
            "1 of 2 connection(s) synced. hr: Full sync succeeded: created 3; idp: Full sync failed: HTTP 500"
        );
        assert_eq!(completion_note("nothing to do", &idsync_api::ResyncRequestStatus::default()), "nothing to do");
    }

    #[test]
    fn the_request_phase_follows_its_targets() {
        use TargetPhase::*;
        assert_eq!(overall_phase(&[target(Succeeded), target(Running)], &[]), None);
        assert_eq!(overall_phase(&[target(Succeeded), target(Succeeded)], &[]), Some(Phase::Succeeded));
        assert_eq!(overall_phase(&[target(Succeeded), target(Rejected)], &[]), Some(Phase::PartiallyFailed));
        assert_eq!(overall_phase(&[target(SafeguardTripped), target(Failed)], &[]), Some(Phase::Failed));
        assert_eq!(overall_phase(&[], &[]), None);
        let processed = |phase| ProfileRunStatus {
            profile: "p".into(),
            phase,
            processed: 0,
            changed: 0,
            errors: 0,
            message: String::new(),
            preview: vec![],
            unknown_identities: vec![],
        };
        assert_eq!(overall_phase(&[target(Succeeded)], &[processed(Pending)]), None, "profiles run after syncs");
        assert_eq!(overall_phase(&[], &[processed(Succeeded)]), Some(Phase::Succeeded));
        assert_eq!(overall_phase(&[target(Succeeded)], &[processed(Failed)]), Some(Phase::PartiallyFailed));
    }

    #[test]
    fn work_errors_read_as_the_request_shows_them() {
        assert_eq!(WorkError::NoConnection.to_string(), "the target matched no Connection in this namespace");
        assert_eq!(
            WorkError::NoProfile.to_string(),
            "no IdentityProfile in this namespace uses the target's connections"
        );
        let bad = ResyncTarget {
            selector: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "site".into(),
                        operator: "Near".into(),
                        values: None,
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let error = resolve_target(&bad, &fleet()).expect_err("an unknown operator");
        assert!(matches!(&error, WorkError::InvalidSelector(_)), "{error:?}");
        assert!(error.to_string().starts_with("spec.target.selector: "), "{error}");
    }
}
