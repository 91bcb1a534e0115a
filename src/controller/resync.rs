//! The ResyncRequest controller: resolves the target to connections, runs
//! one sync per connection with the requested mode and concurrency policy,
//! records each target's phase and counts, sets the request's phase, and
//! deletes finished requests after `ttlSecondsAfterFinished`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams};
use kube::core::SelectorExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::runner::{OnDone, Start, Ticket, connection_ref, counts_of, summary};
use super::{Context, Error, events, status};
use crate::api::conditions::{self, FALSE, TRUE};
use crate::api::resync_request::{Phase, ResyncTarget, TargetPhase, TargetStatus};
use crate::api::{ConcurrencyPolicy, Connection, ResyncRequest};
use crate::store::RunOutcome;
use crate::sync::job::SyncReport;

pub fn controller(ctx: Arc<Context>) -> Controller<ResyncRequest> {
    Controller::new(Api::<ResyncRequest>::all(ctx.client.clone()), watcher::Config::default())
}

pub fn error_policy(_request: Arc<ResyncRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("resyncrequest", error.metric_label());
    tracing::warn!(%error, kind = error.metric_label(), "resync request reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The names of the Connections a target selects, in a stable order; an
/// error message when the target cannot be resolved at all.
pub fn resolve_target(target: &ResyncTarget, connections: &[Connection]) -> Result<Vec<String>, String> {
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
            .map_err(|e: kube::core::ParseExpressionError| format!("spec.target.selector: {e}"))?;
        connections.iter().filter(|c| selector.matches(c.labels())).map(|c| c.name_any()).collect()
    } else if target.profiles.is_some() {
        return Err(
            "identity processing of profiles (scope Identities) is not available in this version of idsync".into()
        );
    } else {
        Vec::new()
    };
    let unique: BTreeSet<String> = names.into_iter().collect();
    if unique.is_empty() {
        return Err("the target matched no Connection in this namespace".into());
    }
    Ok(unique.into_iter().collect())
}

/// The request's phase from its targets' phases, once all are done.
pub fn overall_phase(targets: &[TargetStatus]) -> Option<Phase> {
    let finished = |p: TargetPhase| {
        matches!(
            p,
            TargetPhase::Succeeded | TargetPhase::Failed | TargetPhase::Rejected | TargetPhase::SafeguardTripped
        )
    };
    if targets.is_empty() || !targets.iter().all(|t| finished(t.phase)) {
        return None;
    }
    let succeeded = targets.iter().filter(|t| t.phase == TargetPhase::Succeeded).count();
    Some(match succeeded {
        n if n == targets.len() => Phase::Succeeded,
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

pub async fn reconcile(request: Arc<ResyncRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = request.name_any();
    let namespace = request.namespace().unwrap_or_else(|| "default".to_string());
    let api: Api<ResyncRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = ctx.clock.now();
    let status = request.status.clone().unwrap_or_default();

    // Finished: wait for the TTL, then go.
    if status.phase.is_some_and(|p| p.is_finished()) {
        let Some(ttl) = request.spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let done = status.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
        let expires = done + SignedDuration::from_secs(ttl);
        if expires <= now {
            api.delete(&name, &DeleteParams::background()).await.map_err(Error::Kube)?;
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::try_from(expires.duration_since(now)).unwrap_or_default()));
    }

    // First sight: resolve the target.
    if status.phase.is_none() || status.targets.is_empty() {
        let connections: Api<Connection> = Api::namespaced(ctx.client.clone(), &namespace);
        let listed = connections.list(&ListParams::default()).await.map_err(Error::Kube)?.items;
        let resolved = resolve_target(&request.spec.target, &listed);
        let generation = request.metadata.generation;
        let stamp = Time(now);
        status::update(&api, &name, |r: &mut ResyncRequest| {
            let s = r.status.get_or_insert_with(Default::default);
            if s.phase.is_some() && !s.targets.is_empty() {
                return false;
            }
            s.observed_generation = generation;
            s.start_time = Some(stamp.clone());
            match &resolved {
                Ok(names) => {
                    s.phase = Some(Phase::Running);
                    s.targets = names
                        .iter()
                        .map(|n| TargetStatus {
                            connection: n.clone(),
                            phase: TargetPhase::Pending,
                            mode: None,
                            counts: None,
                            message: String::new(),
                            start_time: None,
                            completion_time: None,
                        })
                        .collect();
                    conditions::set_condition(
                        &mut s.conditions,
                        conditions::COMPLETE,
                        FALSE,
                        "Running",
                        &format!("syncing {} connection(s)", names.len()),
                        generation,
                        stamp.clone(),
                    );
                }
                Err(message) => {
                    s.phase = Some(Phase::Failed);
                    s.completion_time = Some(stamp.clone());
                    conditions::set_condition(
                        &mut s.conditions,
                        conditions::COMPLETE,
                        TRUE,
                        "TargetNotResolved",
                        message,
                        generation,
                        stamp.clone(),
                    );
                    conditions::set_condition(
                        &mut s.conditions,
                        conditions::STALLED,
                        TRUE,
                        "TargetNotResolved",
                        message,
                        generation,
                        stamp.clone(),
                    );
                }
            }
            true
        })
        .await?;
        if let Err(message) = &resolved {
            events::publish(&ctx.recorder, &request.object_ref(&()), true, events::SYNC_FAILED, message.clone()).await;
        }
        // The status write brings the next reconcile.
        return Ok(Action::requeue(ctx.config.max_requeue));
    }

    // Start what can start.
    let connections: Api<Connection> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut updates: Vec<(String, TargetPhase, String)> = Vec::new();
    let mut waiting = false;
    for target in status
        .targets
        .iter()
        .filter(|t| matches!(t.phase, TargetPhase::Pending | TargetPhase::Waiting | TargetPhase::Running))
    {
        let Some(connection) = connections.get_opt(&target.connection).await.map_err(Error::Kube)? else {
            updates.push((
                target.connection.clone(),
                TargetPhase::Failed,
                format!("Connection {:?} not found", target.connection),
            ));
            continue;
        };
        let conn = connection_ref(&connection);
        if target.phase == TargetPhase::Running {
            // Still ours and running: wait for it. Not running here any more
            // (the operator restarted): run it again; the store is unchanged.
            if ctx.runner.running(&conn).is_none() {
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
            trigger: "Requested",
            request: Some(name.clone()),
            request_ref: Some(request.object_ref(&())),
            dry_run: request.spec.dry_run,
            confirm_deletes: request.spec.confirm_deletes,
        };
        let mut outcome =
            ctx.runner.start(ctx.clone(), ticket.clone(), on_done(&ctx, &namespace, &name, &target.connection)).await?;
        // Replace: cancel the running sync (only one this instance runs can
        // be cancelled; another instance's is waited for) and start again.
        let replace = request.spec.concurrency_policy == ConcurrencyPolicy::Replace;
        if let Start::Busy(holder) = &outcome
            && replace
            && let Some(mut done) = ctx.runner.cancel(&conn)
        {
            tracing::info!(connection = %conn.name, replaced = ?holder.request, "replacing the running sync");
            let _ = tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d)).await;
            outcome =
                ctx.runner.start(ctx.clone(), ticket, on_done(&ctx, &namespace, &name, &target.connection)).await?;
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
                    None => "a scheduled sync".to_string(),
                };
                let since = holder.since;
                match request.spec.concurrency_policy {
                    ConcurrencyPolicy::Forbid => {
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
                    ConcurrencyPolicy::Wait | ConcurrencyPolicy::Replace => {
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
    .await?;
    if let Some(written) = written {
        announce_completion(&ctx, &written).await;
    }
    Ok(if waiting { Action::requeue(Duration::from_secs(1)) } else { Action::requeue(ctx.config.max_requeue) })
}

/// Sets the phase, completion time and `Complete` condition once every
/// target has finished.
fn finish_if_done(s: &mut crate::api::ResyncRequestStatus, generation: Option<i64>, stamp: &Time) {
    if s.phase.is_some_and(|p| p.is_finished()) {
        return;
    }
    if let Some(phase) = overall_phase(&s.targets) {
        s.phase = Some(phase);
        s.completion_time = Some(stamp.clone());
        let succeeded = s.targets.iter().filter(|t| t.phase == TargetPhase::Succeeded).count();
        let message = format!("{succeeded} of {} connection(s) synced", s.targets.len());
        let reason = format!("{phase:?}");
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
    let message = complete.map(|c| c.message.clone()).unwrap_or_default();
    let (warning, reason) = match phase {
        Phase::Succeeded => (false, "ResyncSucceeded"),
        Phase::PartiallyFailed => (true, "ResyncPartiallyFailed"),
        _ => (true, "ResyncFailed"),
    };
    events::publish(&ctx.recorder, &request.object_ref(&()), warning, reason, message).await;
}

/// Records a finished sync in the request's target entry.
fn on_done(ctx: &Arc<Context>, namespace: &str, request: &str, connection: &str) -> OnDone {
    let api: Api<ResyncRequest> = Api::namespaced(ctx.client.clone(), namespace);
    let request = request.to_string();
    let connection = connection.to_string();
    let ctx = ctx.clone();
    Box::new(move |report: SyncReport| {
        Box::pin(async move {
            let now = Time(Timestamp::now());
            let written = status::update(&api, &request, |r: &mut ResyncRequest| {
                let generation = r.metadata.generation;
                let s = r.status.get_or_insert_with(Default::default);
                let Some(t) = s.targets.iter_mut().find(|t| t.connection == connection) else {
                    return false;
                };
                t.phase = target_phase(report.outcome);
                t.mode = Some(report.mode);
                t.counts = Some(counts_of(&report));
                t.message = summary(&report);
                t.completion_time = Some(now.clone());
                if t.start_time.is_none() {
                    t.start_time = Some(now.clone());
                }
                finish_if_done(s, generation, &now);
                true
            })
            .await;
            match written {
                Ok(Some(written)) => announce_completion(&ctx, &written).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, request, "could not record a target's result"),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Category;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn connection(name: &str, category: Category, labels: &[(&str, &str)]) -> Connection {
        let spec = serde_json::json!({"category": category, "provider": {"type": "csv", "csv": {
            "source": {"url": "https://hr.example.com/x.csv"}, "idColumn": "id"}}});
        let mut c = Connection::new(name, serde_json::from_value(spec).expect("spec"));
        c.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        c
    }

    fn fleet() -> Vec<Connection> {
        vec![
            connection("okta", Category::IdP, &[("site", "hq")]),
            connection("aws", Category::Infrastructure, &[("site", "hq")]),
            connection("gcp", Category::Infrastructure, &[("site", "eu")]),
            connection("hris", Category::Hris, &[]),
        ]
    }

    #[test]
    fn targets_resolve_to_connections_in_a_stable_order() {
        let all = ResyncTarget { all: Some(true), ..Default::default() };
        assert_eq!(resolve_target(&all, &fleet()), Ok(vec!["aws".into(), "gcp".into(), "hris".into(), "okta".into()]));
        let category = ResyncTarget { category: Some(Category::Infrastructure), ..Default::default() };
        assert_eq!(resolve_target(&category, &fleet()), Ok(vec!["aws".into(), "gcp".into()]));
        let selector = ResyncTarget {
            selector: Some(LabelSelector {
                match_labels: Some([("site".to_string(), "hq".to_string())].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(resolve_target(&selector, &fleet()), Ok(vec!["aws".into(), "okta".into()]));
        // Named connections are kept even when missing, to fail by name.
        let named = ResyncTarget { connections: Some(vec!["okta".into(), "ghost".into()]), ..Default::default() };
        assert_eq!(resolve_target(&named, &fleet()), Ok(vec!["ghost".into(), "okta".into()]));
    }

    #[test]
    fn a_target_matching_nothing_says_so() {
        let category = ResyncTarget { category: Some(Category::Mdm), ..Default::default() };
        assert_eq!(
            resolve_target(&category, &fleet()),
            Err("the target matched no Connection in this namespace".into())
        );
        let all = ResyncTarget { all: Some(true), ..Default::default() };
        assert!(resolve_target(&all, &[]).is_err());
    }

    fn target(phase: TargetPhase) -> TargetStatus {
        TargetStatus {
            connection: "c".into(),
            phase,
            mode: None,
            counts: None,
            message: String::new(),
            start_time: None,
            completion_time: None,
        }
    }

    #[test]
    fn the_request_phase_follows_its_targets() {
        use TargetPhase::*;
        assert_eq!(overall_phase(&[target(Succeeded), target(Running)]), None);
        assert_eq!(overall_phase(&[target(Succeeded), target(Succeeded)]), Some(Phase::Succeeded));
        assert_eq!(overall_phase(&[target(Succeeded), target(Rejected)]), Some(Phase::PartiallyFailed));
        assert_eq!(overall_phase(&[target(SafeguardTripped), target(Failed)]), Some(Phase::Failed));
        assert_eq!(overall_phase(&[]), None);
    }
}
