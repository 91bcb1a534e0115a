//! The Connection controller: checks what the schema cannot (Secrets,
//! ConfigMaps, cron and time zone, the addresses its source resolves to),
//! warns while certificate verification is off, runs scheduled syncs at their cron times
//! in the connection's time zone, honours `suspend`, turns a new
//! `idsync.dev/requested-at` value into an ad-hoc Delta sync, and purges a
//! deleted connection's accounts from the store (finalizer).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::runner::{self, Start, Ticket, connection_ref};
use super::{CONNECTION_FINALIZER, Context, Error, events, inputs, panics, status};
use crate::connectors;
use crate::model::Trigger;
use crate::sync::cancel::CancelReason;
use crate::sync::schedule::Schedule;
use idsync_api::conditions::{self, FALSE, TRUE};
use idsync_api::{Connection, Provider, REQUESTED_AT_ANNOTATION, SyncMode};

/// Reasons of `Stalled` that a reconcile finds (and clears when fixed).
/// Stalled reasons a reconcile finds (and clears once fixed); the others
/// come from a sync and stay until a sync succeeds.
const CONFIGURATION_REASONS: &[&str] = &[
    "SecretNotFound",
    "SecretNotAllowed",
    "ConfigMapNotFound",
    "KeyNotFound",
    "InvalidSchedule",
    "InvalidConfiguration",
    // Checked on every reconcile too (`address::check_spec`), so one a sync
    // met is cleared once the source resolves to an allowed address again.
    "AddressNotAllowed",
];

/// The Warning Event when a Connection turns certificate verification off.
const INSECURE_TLS: &str = "InsecureTLS";

pub fn controller(ctx: Arc<Context>) -> Controller<Connection> {
    use kube::core::PartialObjectMeta;

    let client = ctx.client.clone();
    let controller = super::undecodable::controller::<Connection>(&ctx);
    let store = controller.store();
    let secret_store = store.clone();
    // A Secret or ConfigMap appearing or changing re-checks the Connections
    // of its namespace that use it, so a fixed reference clears `Stalled` at
    // once. Only their metadata is listed and watched (an `Api` of
    // `PartialObjectMeta` asks the API server for `PartialObjectMetadata`):
    // a relist never brings every Secret of the cluster into memory, and
    // the one a Connection names is read with a `get` when it is checked or
    // synced (`inputs::resolve`).
    controller
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            watcher::Config::default(),
            move |secret: PartialObjectMeta<Secret>| {
                let ns = secret.namespace().unwrap_or_default();
                let name = secret.name_any();
                secret_store
                    .state()
                    .into_iter()
                    .filter(|c| c.namespace().as_deref() == Some(ns.as_str()) && uses_secret(c, &name))
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<PartialObjectMeta<ConfigMap>>::all(client),
            watcher::Config::default(),
            move |cm: PartialObjectMeta<ConfigMap>| {
                let ns = cm.namespace().unwrap_or_default();
                let name = cm.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|c| c.namespace().as_deref() == Some(ns.as_str()) && uses_config_map(c, &name))
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
}

fn uses_secret(c: &Connection, name: &str) -> bool {
    c.spec.credentials_secret_ref.as_ref().is_some_and(|r| r.name == name)
        || matches!(&c.spec.provider, Provider::Csv(csv) if csv.source.secret_key_ref.as_ref().is_some_and(|r| r.name == name))
}

fn uses_config_map(c: &Connection, name: &str) -> bool {
    matches!(&c.spec.provider, Provider::Csv(csv) if csv.source.config_map_key_ref.as_ref().is_some_and(|r| r.name == name))
}

/// One reconcile; a panic inside it fails this reconcile only (see `panics`).
pub async fn reconcile(connection: Arc<Connection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = connection.namespace().unwrap_or_else(|| "default".to_string());
    let object = format!("Connection {namespace}/{}", connection.name_any());
    let api: Api<Connection> = Api::namespaced(ctx.client.clone(), &namespace);
    let conn = connection_ref(&connection);
    let owned = ctx.owns(&crate::membership::connection_key(&conn.namespace, &conn.name));
    ctx.note_ownership(&conn, owned);
    if !owned {
        return Ok(not_owned(&ctx, &conn).await);
    }
    let reconcile = async {
        finalizer(&api, CONNECTION_FINALIZER, connection, |event| async {
            match event {
                FinalizerEvent::Apply(c) => apply(c, ctx.clone()).await,
                FinalizerEvent::Cleanup(c) => cleanup(c, ctx.clone()).await,
            }
        })
        .await
        .map_err(Error::from)
    };
    panics::catching(&object, reconcile).await
}

/// A Connection another replica owns (shared replicas): this one writes
/// nothing and starts nothing. A guard it still keeps (it owned the
/// Connection until a replica joined) is given back once no sync of it
/// runs here, so that the new owner takes it at once rather than after it
/// lapses; a sync running here finishes first.
async fn not_owned(ctx: &Arc<Context>, conn: &crate::model::ConnectionRef) -> Action {
    match ctx.runner.give_back_guard(conn).await {
        runner::GiveBack::Running => Action::requeue(Duration::from_secs(1)),
        runner::GiveBack::Released | runner::GiveBack::NotKept => {
            // A change of owners brings a reconcile; this is the fallback.
            Action::requeue(ctx.config.max_requeue)
        }
    }
}

pub fn error_policy(connection: Arc<Connection>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("connection", error.metric_label());
    tracing::warn!(%error, kind = error.metric_label(), namespace = ?connection.namespace(), name = %connection.name_any(),
        "connection reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// What the schedule says to do now.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulePlan {
    /// Run a scheduled sync now.
    pub due: bool,
    /// The next scheduled run to record.
    pub next: Option<Timestamp>,
}

/// Decides whether a scheduled sync is due at `now`, given the next run the
/// status recorded. A recorded time in the past is due (including one missed
/// while the operator was down); the next one is computed after `now`.
pub fn plan_schedule(
    schedule: &Schedule,
    recorded_next: Option<Timestamp>,
    spec_changed: bool,
    now: Timestamp,
) -> SchedulePlan {
    match recorded_next {
        Some(next) if !spec_changed && next <= now => SchedulePlan { due: true, next: schedule.next_after(now) },
        Some(next) if !spec_changed => SchedulePlan { due: false, next: Some(next) },
        _ => SchedulePlan { due: false, next: schedule.next_after(now) },
    }
}

async fn apply(connection: Arc<Connection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = ctx.clock.now();
    let name = connection.name_any();
    let namespace = connection.namespace().unwrap_or_else(|| "default".to_string());
    let api: Api<Connection> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = connection.metadata.generation;
    let status = connection.status.clone().unwrap_or_default();
    let spec_changed = status.observed_generation != generation;

    // What the schema could not check.
    let schedule = Schedule::parse(&connection.spec.schedule.cron, &connection.spec.schedule.time_zone);
    let problem = match &schedule {
        Err(e) => Some(inputs::Problem { reason: "InvalidSchedule", message: format!("spec.schedule: {e}") }),
        // The provider's own validation too, on every reconcile: a bad
        // setting (or a provider not built yet) stalls the Connection now,
        // not at its first sync.
        Ok(_) => match inputs::resolve(&ctx.client, &connection).await? {
            Err(problem) => Some(problem),
            Ok(provider_inputs) => match connectors::build(&connection.spec, provider_inputs) {
                Err(e) => Some(inputs::Problem { reason: e.reason(), message: e.to_string() }),
                Ok(_) => connectors::address::check_spec(&connection.spec)
                    .await
                    .err()
                    .map(|e| inputs::Problem { reason: e.reason(), message: e.to_string() }),
            },
        },
    };
    let insecure = insecure_tls(&connection.spec);
    let was_insecure =
        status.conditions.iter().any(|c| c.type_ == idsync_api::connection::TLS_VERIFIED && c.status == FALSE);

    // A Connection that can sync has its guard held from now on, so that
    // no sync of it writes a Lease, and so that another replica sees it
    // taken (see `runner`). One write the first time; nothing after.
    // Held by another instance: that one syncs the Connection; this one
    // starts nothing and consumes no scheduled slot (one it marked done
    // without syncing would be lost to both) until the guard is released
    // or lapses.
    let mut held_elsewhere = false;
    if problem.is_none() && !connection.spec.suspend {
        match ctx.runner.hold_guard(&ctx, &connection).await {
            Ok(runner::Guarded::Held) => {}
            Ok(runner::Guarded::Busy(holder)) => {
                tracing::debug!(connection = %name, holder = %holder.identity, "another instance holds the sync guard");
                held_elsewhere = true;
            }
            Err(error) => tracing::warn!(connection = %name, %error, "could not take the sync guard"),
        }
    }

    let mut next_sync = None;
    let mut start: Option<(Trigger, Option<String>)> = None;
    // A suspended or stalled Connection neither schedules nor handles requested-at.
    if let (None, Ok(schedule), false) = (&problem, &schedule, connection.spec.suspend) {
        let recorded = status.next_sync_time.as_ref().map(|t| t.0);
        let plan = plan_schedule(schedule, recorded, spec_changed, now);
        next_sync = plan.next;
        if plan.due && held_elsewhere {
            next_sync = recorded;
        } else if plan.due {
            start = Some((Trigger::Scheduled, None));
        }
        let requested = connection.annotations().get(REQUESTED_AT_ANNOTATION).cloned();
        if requested.is_some() && requested != status.last_handled_requested_at && !held_elsewhere {
            start = Some((Trigger::RequestedAt, requested));
        }
    }

    let mut started = false;
    let mut busy_retry = false;
    if let Some((trigger, requested_at)) = start {
        let ticket = Ticket {
            connection: (*connection).clone(),
            mode: SyncMode::Delta,
            trigger,
            request: None,
            dry_run: false,
            confirm_deletes: false,
            bookkeeping: Some(runner::Bookkeeping {
                generation,
                next_sync,
                handled_requested_at: requested_at.clone(),
            }),
        };
        match ctx.runner.start(ctx.clone(), ticket, Box::new(|_| Box::pin(async {}))).await? {
            Start::Started => started = true,
            Start::Busy(holder) => {
                tracing::info!(connection = %name, holder = %holder.identity, %trigger, "a sync is already running; not starting another");
                // A requested sync is kept for when the running one ends; a
                // scheduled slot that finds a sync running is covered by it.
                busy_retry = requested_at.is_some();
            }
        }
    }

    let syncing = ctx.runner.running(&connection_ref(&connection)).is_some();
    let stamp = Time(now);
    let suspend = connection.spec.suspend;
    // A sync started here records the schedule with its own first status
    // write (`Ticket::bookkeeping`); the reconcile that write brings checks
    // the rest, so this one writes nothing.
    if !started {
        status::update(&api, &name, |c: &mut Connection| {
            let s = c.status.get_or_insert_with(Default::default);
            let before = s.clone();
            s.observed_generation = generation;
            s.next_sync_time = next_sync.map(Time);
            let view = ConditionInputs {
                problem: problem.as_ref(),
                suspend,
                next_sync,
                syncing,
                generation,
                stamp: stamp.clone(),
            };
            set_conditions(s, &view);
            set_tls_condition(s, insecure.as_deref(), generation, stamp.clone());
            *s != before
        })
        .await?;
    }
    // One Warning when verification is turned off, not one per reconcile.
    if let (Some(message), false) = (&insecure, was_insecure) {
        tracing::warn!(connection = %name, %namespace, "{message}");
        events::publish_as(
            &ctx.recorder,
            &connection.object_ref(&()),
            true,
            INSECURE_TLS,
            message.clone(),
            "Configure",
        )
        .await;
    }

    let max = ctx.config.max_requeue;
    let wait = if busy_retry {
        Duration::from_secs(1)
    } else if held_elsewhere {
        // Look again as often as a guard is renewed: a lapsed one is
        // taken soon after, without polling the Lease in a tight loop.
        (ctx.config.guard_duration / 3).min(max).max(Duration::from_millis(100))
    } else {
        match next_sync {
            Some(next) => {
                let until = next.duration_since(now);
                Duration::try_from(until).unwrap_or_default().min(max).max(Duration::from_millis(100))
            }
            None if problem.is_some() => Duration::from_secs(30).min(max),
            None => max,
        }
    };
    Ok(Action::requeue(wait))
}

/// Why the Connection's certificate verification is off, if it is.
fn insecure_tls(spec: &idsync_api::ConnectionSpec) -> Option<String> {
    match &spec.provider {
        Provider::Ldap(ldap) if ldap.insecure_skip_tls_verify => Some(
            "spec.provider.ldap.insecureSkipTlsVerify is true: the directory's certificate is not verified, so anyone \
             on the network path can pose as it and read the bind password; use it for tests only"
                .to_string(),
        ),
        _ => None,
    }
}

/// `TLSVerified`: False (reason InsecureSkipTlsVerify) while verification
/// is off; removed once it is on again, as on every Connection that never
/// turned it off. A condition and not a suffix of Ready's message: each
/// sync rewrites Ready, and the warning must stay for as long as it holds.
fn set_tls_condition(
    s: &mut idsync_api::ConnectionStatus,
    insecure: Option<&str>,
    generation: Option<i64>,
    stamp: Time,
) {
    use idsync_api::connection::TLS_VERIFIED;
    match insecure {
        Some(message) => {
            conditions::set_condition(
                &mut s.conditions,
                TLS_VERIFIED,
                FALSE,
                "InsecureSkipTlsVerify",
                message,
                generation,
                stamp,
            );
        }
        None => s.conditions.retain(|c| c.type_ != TLS_VERIFIED),
    }
}

/// What the Connection's conditions are computed from.
struct ConditionInputs<'a> {
    problem: Option<&'a inputs::Problem>,
    suspend: bool,
    next_sync: Option<Timestamp>,
    syncing: bool,
    generation: Option<i64>,
    stamp: Time,
}

/// Ready, Stalled and Syncing from what this reconcile found and what the
/// last sync left. A problem found here (a missing Secret, a bad schedule)
/// stalls the Connection until fixed; a problem a sync found (a revoked
/// credential) stays until a sync succeeds.
fn set_conditions(s: &mut idsync_api::ConnectionStatus, v: &ConditionInputs) {
    let (generation, stamp) = (v.generation, v.stamp.clone());
    if let Some(p) = v.problem {
        conditions::set_condition(
            &mut s.conditions,
            conditions::STALLED,
            TRUE,
            p.reason,
            &p.message,
            generation,
            stamp.clone(),
        );
        conditions::set_condition(&mut s.conditions, conditions::READY, FALSE, p.reason, &p.message, generation, stamp);
        return;
    }
    let stalled = conditions::find(&s.conditions, conditions::STALLED).cloned();
    let stalled_by_sync =
        stalled.as_ref().is_some_and(|c| c.status == TRUE && !CONFIGURATION_REASONS.contains(&c.reason.as_str()));
    // Not stalled already (a sync that succeeded says `Synced`): its reason
    // is kept, so the reconcile a sync's status write brings writes nothing
    // back; only its generation follows the spec.
    if let Some(not_stalled) = stalled.as_ref().filter(|c| c.status == FALSE) {
        conditions::set_condition(
            &mut s.conditions,
            conditions::STALLED,
            FALSE,
            &not_stalled.reason,
            &not_stalled.message,
            generation,
            stamp.clone(),
        );
    } else if !stalled_by_sync {
        conditions::set_condition(
            &mut s.conditions,
            conditions::STALLED,
            FALSE,
            "Configured",
            "",
            generation,
            stamp.clone(),
        );
    }
    let last = s.last_result.clone();
    let ready = conditions::find(&s.conditions, conditions::READY).cloned();
    match last.filter(|r| r.outcome != idsync_api::connection::SyncOutcome::Succeeded) {
        Some(failed) => {
            // Keep the reason the runner recorded; replace a stale configuration one.
            let reason = ready
                .as_ref()
                .filter(|r| r.status == FALSE && !CONFIGURATION_REASONS.contains(&r.reason.as_str()))
                .map(|r| r.reason.clone())
                .unwrap_or_else(|| format!("{:?}", failed.outcome));
            conditions::set_condition(
                &mut s.conditions,
                conditions::READY,
                FALSE,
                &reason,
                &failed.message,
                generation,
                stamp.clone(),
            );
        }
        None => {
            let (reason, message) = match (v.suspend, &s.last_successful_sync_time, v.next_sync) {
                (true, _, _) => ("Suspended".to_string(), "scheduled syncs are suspended".to_string()),
                (false, Some(_), _) => (
                    "Synced".to_string(),
                    ready.filter(|r| r.reason == "Synced").map(|r| r.message).unwrap_or_default(),
                ),
                (false, None, Some(next)) => {
                    ("Configured".to_string(), format!("configured; the first scheduled sync runs at {next}"))
                }
                (false, None, None) => ("Configured".to_string(), "configured".to_string()),
            };
            conditions::set_condition(
                &mut s.conditions,
                conditions::READY,
                TRUE,
                &reason,
                &message,
                generation,
                stamp.clone(),
            );
        }
    }
    if !v.syncing && s.current_sync.is_none() {
        conditions::mark_idle(&mut s.conditions, generation, stamp);
    }
}

async fn cleanup(connection: Arc<Connection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let conn = connection_ref(&connection);
    if let Some(mut done) = ctx.runner.cancel(&conn, CancelReason::ConnectionDeleted) {
        let _ = tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d)).await;
    }
    let store = ctx.store.clone();
    let purge = conn.clone();
    let purged = tokio::task::spawn_blocking(move || store.purge_connection(&purge))
        .await
        .map_err(|e| Error::Conflict(format!("the purge task failed: {e}")))??;
    // The guard Lease is owned by the Connection: garbage collection
    // removes it. The chart grants no delete on Leases, so a delete here
    // would only ever be refused.
    ctx.runner.forget_guard(&conn);
    ctx.note_ownership(&conn, false);
    tracing::info!(connection = %conn.name, namespace = %conn.namespace, purged, "connection deleted; its accounts were purged from the store");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use idsync_api::ConnectionStatus;
    use idsync_api::connection::{SyncOutcome, SyncResult};

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + seconds).expect("a timestamp"))
    }

    fn inputs(problem: Option<&inputs::Problem>, stamp: Time) -> ConditionInputs<'_> {
        ConditionInputs { problem, suspend: false, next_sync: None, syncing: false, generation: Some(2), stamp }
    }

    /// The status a successful sync leaves (`runner::record_result`).
    fn after_a_successful_sync() -> ConnectionStatus {
        let mut s = ConnectionStatus {
            last_successful_sync_time: Some(at(0)),
            last_result: Some(SyncResult {
                mode: SyncMode::Full,
                counts: Default::default(),
                duration_milliseconds: 5,
                outcome: SyncOutcome::Succeeded,
                message: String::new(),
                details: Default::default(),
            }),
            ..Default::default()
        };
        let note = "Full sync succeeded: created 3, updated 0, deleted 0, unchanged 0";
        conditions::set_condition(&mut s.conditions, conditions::READY, TRUE, "Synced", note, Some(2), at(0));
        conditions::set_condition(&mut s.conditions, conditions::STALLED, FALSE, "Synced", "", Some(2), at(0));
        conditions::mark_idle(&mut s.conditions, Some(2), at(0));
        s
    }

    /// The reconcile a sync's status write brings must find nothing to
    /// change, or every sync costs one more write.
    #[test]
    fn the_reconcile_after_a_successful_sync_changes_nothing() {
        let mut s = after_a_successful_sync();
        let before = s.clone();
        set_conditions(&mut s, &inputs(None, at(10)));
        assert_eq!(s, before);
    }

    #[test]
    fn a_configuration_problem_stalls_and_its_fix_clears_it_keeping_transition_times() {
        let mut s = after_a_successful_sync();
        let missing = inputs::Problem { reason: "SecretNotFound", message: "Secret \"hr\" not found".into() };
        set_conditions(&mut s, &inputs(Some(&missing), at(10)));
        let stalled = conditions::find(&s.conditions, conditions::STALLED).expect("Stalled").clone();
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), (TRUE, "SecretNotFound"));
        assert_eq!(stalled.last_transition_time, at(10));

        set_conditions(&mut s, &inputs(None, at(20)));
        let stalled = conditions::find(&s.conditions, conditions::STALLED).expect("Stalled").clone();
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), (FALSE, "Configured"));
        assert_eq!(stalled.last_transition_time, at(20));
        let ready = conditions::find(&s.conditions, conditions::READY).expect("Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), (TRUE, "Synced"));

        // Not stalled any more: a later reconcile leaves it be.
        let before = s.clone();
        set_conditions(&mut s, &inputs(None, at(30)));
        assert_eq!(s, before);
    }

    #[test]
    fn a_new_generation_is_recorded_on_a_condition_that_keeps_its_reason() {
        let mut s = after_a_successful_sync();
        let mut view = inputs(None, at(10));
        view.generation = Some(3);
        set_conditions(&mut s, &view);
        let stalled = conditions::find(&s.conditions, conditions::STALLED).expect("Stalled");
        assert_eq!((stalled.reason.as_str(), stalled.observed_generation), ("Synced", Some(3)));
        assert_eq!(stalled.last_transition_time, at(0), "no transition: still False");
    }
}
