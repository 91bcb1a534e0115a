//! The IdentityProfile controller: compiles a profile's expressions, decides
//! which processing is due and runs it, writes the profile's status, and
//! purges a deleted profile's identities from the store (finalizer).
//!
//! What is due is worked out from the store, not from memory, so an operator
//! that restarts between a sync and the processing it calls for still does
//! it:
//! - *spec changed*: the applied mappings (kept in the store) differ from
//!   the spec's, under `applyPolicy: Automatic` → every identity;
//! - *scheduled*: a slot of the profile's schedule passed since the last one
//!   processed → every identity, writing only what changed;
//! - *event-based*: a connection's accounts version moved since the last
//!   processing → identities whose inputs changed;
//! - *time-based*: an identity's next-processing time has come → those.
//!
//! A ResyncRequest runs the same [`execute`] with its own selection (see
//! `controller::resync`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::{Context, Error, events, panics, status, timing};
use crate::identity::delta;
use crate::identity::expr::{self, CompileError, CompiledProfile, Interrupted, Stop};
use crate::identity::process::{self, Abandoned, Selection, Summary};
use crate::model::{ProcessingRunRecord, ProfileRef, RunId, RunOutcome, Trigger};
use crate::sync::schedule::Schedule;
use idsync_api::conditions::{self, FALSE, TRUE};
use idsync_api::identity_profile::{ApplyPolicy, ProcessingRun};
use idsync_api::{Connection, IdentityProfile, IdentityProfileSpec};

/// The finalizer that purges a deleted profile's identities from the store.
pub const PROFILE_FINALIZER: &str = "idsync.dev/identity-cleanup";
/// The condition saying a Manual profile has spec changes not yet applied.
pub const CHANGES_PENDING: &str = "ChangesPending";
/// The Stalled reason of a Manual profile whose applied mappings cannot be
/// read back from the store.
pub const APPLIED_SPEC_UNREADABLE: &str = "AppliedSpecUnreadable";
/// The Stalled reason of a profile with an expression too long, too deep
/// or too expensive to run (see `identity::expr::limits`).
pub const EXPRESSION_TOO_COMPLEX: &str = "ExpressionTooComplex";
/// The Stalled reason of a profile whose evaluation passed a bound (see
/// `identity::expr::budget`) in its last run.
pub const EVALUATION_BUDGET_EXCEEDED: &str = "EvaluationBudgetExceeded";
/// How long a profile whose run passed an evaluation bound waits before
/// the same expressions run again; a changed spec runs at once. The bound
/// may have been passed on data that changes, so it is retried, but not at
/// every reconcile: each try spends the whole budget again.
const EXCEEDED_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How often a running processing looks whether its profile changed or is
/// being deleted (which stops it).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub fn controller(ctx: Arc<Context>) -> Controller<IdentityProfile> {
    let client = ctx.client.clone();
    let controller = super::undecodable::controller::<IdentityProfile>(&ctx);
    let profiles = controller.store();
    // A Connection's status moves when a sync commits: the profiles that
    // read it look at their accounts versions then, not minutes later.
    // Lenient: a Connection that does not decode still names its profiles.
    let connections = Api::<super::undecodable::Lenient<Connection>>::all(client);
    controller.watches(connections, watcher::Config::default(), move |c| {
        let ns = c.namespace().unwrap_or_default();
        let name = c.name_any();
        profiles
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(ns.as_str()) && process::connections_of(&p.spec).contains(&name)
            })
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect::<Vec<_>>()
    })
}

pub fn error_policy(profile: Arc<IdentityProfile>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("identityprofile", error.metric_label());
    tracing::warn!(%error, kind = error.metric_label(), namespace = ?profile.namespace(), name = %profile.name_any(),
        "identity profile reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

pub fn profile_ref(profile: &IdentityProfile) -> ProfileRef {
    ProfileRef::new(profile.namespace().unwrap_or_else(|| "default".to_string()), profile.name_any())
}

/// One reconcile; a panic inside it fails this reconcile only (see `panics`).
pub async fn reconcile(profile: Arc<IdentityProfile>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = profile.namespace().unwrap_or_else(|| "default".to_string());
    let object = format!("IdentityProfile {namespace}/{}", profile.name_any());
    let api: Api<IdentityProfile> = Api::namespaced(ctx.client.clone(), &namespace);
    // Shared replicas: another replica owns it and does all of this; a
    // change of owners brings the next reconcile.
    if !ctx.owns(&crate::membership::profile_key(&namespace, &profile.name_any())) {
        return Ok(Action::requeue(ctx.config.max_requeue));
    }
    let reconcile = async {
        finalizer(&api, PROFILE_FINALIZER, profile, |event| async {
            match event {
                FinalizerEvent::Apply(p) => apply(p, ctx.clone()).await,
                FinalizerEvent::Cleanup(p) => cleanup(p, ctx.clone()).await,
            }
        })
        .await
        .map_err(Error::from)
    };
    panics::catching(&object, reconcile).await
}

async fn cleanup(profile: Arc<IdentityProfile>, ctx: Arc<Context>) -> Result<Action, Error> {
    let p = profile_ref(&profile);
    let lock = ctx.profile_lock(&p);
    let _held = lock.lock().await;
    // Not while another replica still processes it: its commit would bring
    // identities back after the purge.
    let exclusive = match super::profile_lease::exclusive(&ctx, &profile).await? {
        super::profile_lease::Exclusive::Busy(holder) => {
            return Err(Error::Conflict(format!("{holder} is processing the profile; removing its identities after")));
        }
        exclusive => exclusive,
    };
    let removed = blocking(&ctx, move |store| store.purge_profile(&p)).await;
    exclusive.release().await;
    let removed = removed?;
    tracing::info!(profile = %profile.name_any(), removed, "removed a deleted profile's identities from the store");
    Ok(Action::await_change())
}

/// Runs a store call off the async threads.
pub async fn blocking<T: Send + 'static>(
    ctx: &Context,
    f: impl FnOnce(&dyn crate::store::Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Error> {
    let store = ctx.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| Error::Conflict(format!("a store task failed: {e}")))?
        .map_err(Error::Store)
}

/// Why a spec's mappings cannot be processed: every problem at once, so
/// that one status update reports them all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.problems().join("; "))]
pub struct InvalidMappings {
    /// Expressions that do not compile, in field order.
    pub expressions: Vec<CompileError>,
    /// References to attributes the profile does not define.
    pub references: Vec<String>,
}

impl InvalidMappings {
    fn problems(&self) -> Vec<String> {
        self.expressions.iter().map(ToString::to_string).chain(self.references.iter().cloned()).collect()
    }
}

/// A spec's expressions compiled, once per distinct set of mappings (the
/// controller looks at a profile every few minutes and after every sync of
/// its connections), or every problem.
pub fn compile(ctx: &Context, spec: &IdentityProfileSpec) -> Result<Arc<CompiledProfile>, InvalidMappings> {
    let key = process::mapping_hash(spec);
    if let Some(hit) = ctx.compiled.lock().ok().and_then(|cache| cache.get(&key).cloned()) {
        return Ok(hit);
    }
    let compiled = Arc::new(compile_uncached(spec)?);
    if let Ok(mut cache) = ctx.compiled.lock() {
        // Old generations are not worth tracking one by one; a profile
        // edited this often recompiles once more.
        if cache.len() >= COMPILED_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
    }
    Ok(compiled)
}

/// Compiled mapping sets kept; a few per profile.
const COMPILED_CACHE_SIZE: usize = 256;

/// A spec's expressions and references checked.
fn compile_uncached(spec: &IdentityProfileSpec) -> Result<CompiledProfile, InvalidMappings> {
    let (compiled, expressions) = match CompiledProfile::compile(&spec.attributes, spec.lifecycle.as_ref()) {
        Ok(c) => (Some(c), Vec::new()),
        Err(errors) => (None, errors),
    };
    let references = process::check_references(spec);
    match compiled {
        Some(c) if references.is_empty() => Ok(c),
        _ => Err(InvalidMappings { expressions, references }),
    }
}

/// A Manual profile's applied mappings, kept in the store, do not parse (a
/// damaged database, or one written by a version that no longer reads it).
/// Processing as if nothing were applied would apply the current spec
/// unreviewed, so the profile stalls until someone applies it on purpose.
#[derive(Debug, thiserror::Error)]
#[error(
    "the applied mappings kept in the store (generation {}) cannot be read: {} at line {}, column {}; the \
     profile's identities are kept as they are. Apply the current generation with a ResyncRequest with scope \
     Identities and target.profiles [{profile}], which records it again",
    .generation.map_or_else(|| "unknown".to_string(), |g| g.to_string()),
    category(.source),
    .source.line(),
    .source.column()
)]
pub struct AppliedSpecUnreadable {
    pub profile: String,
    pub generation: Option<i64>,
    /// Only its position and kind are shown: serde's message can quote
    /// pieces of the stored text.
    #[source]
    pub source: serde_json::Error,
}

fn category(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
        serde_json::error::Category::Data => "not a profile spec",
        serde_json::error::Category::Io => "unreadable",
    }
}

/// The mappings a Manual profile last applied: None when none are (a new
/// profile) or when the profile is not Manual (it always applies its spec,
/// which records it again).
pub fn applied_mappings(
    profile: &IdentityProfile,
    applied_spec: Option<&str>,
    applied_generation: Option<i64>,
) -> Result<Option<IdentityProfileSpec>, AppliedSpecUnreadable> {
    let Some(text) = applied_spec else { return Ok(None) };
    match serde_json::from_str(text) {
        Ok(spec) => Ok(Some(spec)),
        Err(_) if profile.spec.apply_policy != ApplyPolicy::Manual => Ok(None),
        Err(source) => {
            Err(AppliedSpecUnreadable { profile: profile.name_any(), generation: applied_generation, source })
        }
    }
}

/// The mappings a profile processes with now: under Manual, those last
/// applied (kept in the store); otherwise the spec's.
struct Effective {
    spec: IdentityProfileSpec,
    /// True when processing should apply the current spec.
    applies_current: bool,
    /// A Manual profile's current generation is not applied.
    pending: bool,
    /// The current spec's mappings differ from the applied ones (or none
    /// are applied yet).
    mappings_changed: bool,
}

fn effective(
    profile: &IdentityProfile,
    applied_spec: Option<&str>,
    applied_generation: Option<i64>,
) -> Result<Effective, AppliedSpecUnreadable> {
    let applied = applied_mappings(profile, applied_spec, applied_generation)?;
    let mappings_changed = applied.as_ref().map(process::mapping_hash) != Some(process::mapping_hash(&profile.spec));
    Ok(match applied {
        Some(spec) if profile.spec.apply_policy == ApplyPolicy::Manual => Effective {
            pending: applied_generation != profile.metadata.generation && mappings_changed,
            spec,
            applies_current: false,
            mappings_changed,
        },
        // A new Manual profile has nothing to preview against: its first
        // generation applies itself.
        _ => Effective { spec: profile.spec.clone(), applies_current: true, pending: false, mappings_changed },
    })
}

async fn apply(profile: Arc<IdentityProfile>, ctx: Arc<Context>) -> Result<Action, Error> {
    let p = profile_ref(&profile);
    let lock = ctx.profile_lock(&p);
    let _held = lock.lock().await;
    let now = ctx.clock.now();
    let generation = profile.metadata.generation;
    let api: Api<IdentityProfile> = Api::namespaced(ctx.client.clone(), &p.namespace);

    let state = {
        let p = p.clone();
        blocking(&ctx, move |store| store.profile_state(&p)).await?
    };
    let mut eff = match effective(&profile, state.applied_spec.as_deref(), state.applied_generation) {
        Ok(eff) => eff,
        Err(error) => {
            tracing::warn!(%error, profile = %p, "a Manual profile's applied mappings cannot be read; not processing");
            write_stalled(&ctx, &api, &profile, APPLIED_SPEC_UNREADABLE, &error.to_string(), now, None).await?;
            return Ok(Action::requeue(ctx.config.max_requeue));
        }
    };
    // drift hook: drift and the safeguard follow the live spec, whatever mappings apply.
    (eff.spec.drift, eff.spec.identity_safeguard) =
        (profile.spec.drift.clone(), profile.spec.identity_safeguard.clone());
    let schedule = Schedule::parse(&profile.spec.schedule.cron, &profile.spec.schedule.time_zone)
        .map_err(|e| format!("spec.schedule: {e}"));
    let compiled = compile(&ctx, &eff.spec);
    let pending_problem = if eff.pending { compile(&ctx, &profile.spec).err().map(|e| e.to_string()) } else { None };

    let problem = match (&compiled, &schedule) {
        (Err(invalid), _) if invalid.expressions.iter().any(CompileError::is_too_complex) => {
            Some((EXPRESSION_TOO_COMPLEX, invalid.to_string()))
        }
        (Err(invalid), _) => Some(("InvalidExpression", invalid.to_string())),
        (_, Err(message)) => Some(("InvalidSchedule", message.clone())),
        _ => None,
    };
    let (Ok(compiled), Ok(schedule)) = (compiled, schedule) else {
        let (reason, message) = problem.unwrap_or(("Invalid", String::new()));
        write_stalled(&ctx, &api, &profile, reason, &message, now, None).await?;
        return Ok(Action::requeue(ctx.config.max_requeue));
    };

    // A missing Connection stalls the profile rather than processing as if
    // it had no accounts: a typo must not look like an empty HR system, and
    // a deleted (purged) authoritative connection must not remove every
    // identity. Its (re)appearance brings a reconcile through the watch.
    let connections = process::connections_of(&eff.spec);
    let missing = missing_connections(&ctx, &p.namespace, &connections).await?;
    if !missing.is_empty() {
        let message = format!(
            "Connection {} not found in namespace {}; the profile's identities are kept as they are until it exists",
            missing.join(", "),
            p.namespace
        );
        write_stalled(&ctx, &api, &profile, "ConnectionNotFound", &message, now, None).await?;
        return Ok(Action::requeue(ctx.config.max_requeue));
    }

    // What is due, most encompassing first.
    let versions = {
        let (namespace, connections) = (p.namespace.clone(), connections.clone());
        blocking(&ctx, move |store| store.connection_versions(&namespace, &connections)).await?
    };
    let spec_changed = eff.applies_current && eff.mappings_changed;
    let slot = state.last_scheduled.and_then(|last| schedule.due_between(last, now));
    let mut due = if spec_changed {
        Some((Trigger::SpecChanged, Selection::All))
    } else if slot.is_some() {
        Some((Trigger::Scheduled, Selection::All))
    } else if versions != state.seen_versions {
        Some((Trigger::EventBased, Selection::Changed))
    } else if state.next_time_based.is_some_and(|t| t <= now) {
        Some((Trigger::TimeBased, Selection::Due))
    } else {
        None
    };

    // safeguard hook: a run the identity safeguard held back waits for a
    // confirmation or new data, not for the next reconcile.
    let hold = {
        let p = p.clone();
        blocking(&ctx, move |store| store.drift_summary(&p)).await?.hold
    };
    if crate::identity::safeguard::still_held(hold.as_ref(), &versions, &eff.spec) {
        due = None;
    }

    // These expressions passed an evaluation bound lately: stalled as that
    // run left it, without spending the budget again at every reconcile.
    if due.is_some()
        && let Some((when, message)) = compiled.exceeded()
        && when.elapsed() < EXCEEDED_RETRY_AFTER
    {
        write_stalled(&ctx, &api, &profile, EVALUATION_BUDGET_EXCEEDED, &message, now, None).await?;
        return Ok(Action::requeue(EXCEEDED_RETRY_AFTER.saturating_sub(when.elapsed()).min(ctx.config.max_requeue)));
    }

    let mut ran = None;
    if let Some((trigger, selection)) = due {
        // Shared replicas: under the profile's processing Lease, and only
        // if no other replica processed it since `state` was read (this
        // one may have owned the profile for a moment only).
        let exclusive = match super::profile_lease::exclusive(&ctx, &profile).await? {
            super::profile_lease::Exclusive::Busy(holder) => {
                tracing::debug!(profile = %p, %holder, "another replica processes the profile; looking again soon");
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            exclusive => exclusive,
        };
        if exclusive.is_lease() {
            let (fresh_state, fresh_versions) = {
                let (p, namespace, connections) = (p.clone(), p.namespace.clone(), connections.clone());
                blocking(&ctx, move |store| {
                    Ok((store.profile_state(&p)?, store.connection_versions(&namespace, &connections)?))
                })
                .await?
            };
            if fresh_state != state || fresh_versions != versions {
                exclusive.release().await;
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
        }
        let job = Job {
            profile: p.clone(),
            spec: eff.spec.clone(),
            compiled,
            selection,
            trigger,
            request: None,
            dry_run: false,
            applies: eff.applies_current.then(|| (profile.spec.clone(), generation)),
            scheduled: Some(slot.unwrap_or(now)),
            overlay: Vec::new(),
            confirm_removals: false,
        };
        if let Err(error) = mark_processing(&api, &profile, trigger, now).await {
            exclusive.release().await;
            return Err(error);
        }
        let lost = exclusive.lost();
        let result = execute(&ctx, &profile, job, lost).await;
        exclusive.release().await;
        if let Some(Halt::Exceeded(message)) = &result.halted {
            write_stalled(&ctx, &api, &profile, EVALUATION_BUDGET_EXCEEDED, message, now, Some(&result)).await?;
            return Ok(Action::requeue(ctx.config.max_requeue));
        }
        ran = Some(result);
    }

    // A run moved the applied generation and the next time-based instant.
    let state = match ran {
        Some(_) => {
            let p = p.clone();
            blocking(&ctx, move |store| store.profile_state(&p)).await?
        }
        None => state,
    };
    let next_slot = schedule.next_after(now);
    let next = [next_slot, state.next_time_based].into_iter().flatten().min();
    // A change that leaves the mappings as they were (schedule, policy)
    // needs no processing to count as applied.
    let applied_generation = if eff.pending { state.applied_generation } else { generation };
    let pending_message = eff.pending.then(|| pending_note(&profile, applied_generation, pending_problem.as_deref()));
    // drift hook: the drift counts and conditions for the status.
    let drift = super::drift::observe(&ctx, &profile, &p, &eff.spec, now).await?;
    status::update(&api, &p.name, |obj: &mut IdentityProfile| {
        let s = obj.status.get_or_insert_with(Default::default);
        let before = s.clone();
        s.observed_generation = generation;
        s.applied_generation = applied_generation;
        s.next_processing_time = next.map(Time);
        let stamp = Time(now);
        conditions::set_condition(
            &mut s.conditions,
            conditions::STALLED,
            FALSE,
            "Valid",
            "",
            generation,
            stamp.clone(),
        );
        match &pending_message {
            Some(message) => conditions::set_condition(
                &mut s.conditions,
                CHANGES_PENDING,
                TRUE,
                "AwaitingApply",
                message,
                generation,
                stamp.clone(),
            ),
            None => conditions::set_condition(
                &mut s.conditions,
                CHANGES_PENDING,
                FALSE,
                "Applied",
                "",
                generation,
                stamp.clone(),
            ),
        };
        if let Some(result) = &ran {
            record_run(s, result, generation, &stamp);
        } else {
            // This reconcile holds the profile's lock, so nothing is
            // processing it; a `Processing` left by an operator that died
            // mid-run is cleared here.
            conditions::set_condition(
                &mut s.conditions,
                conditions::PROCESSING,
                FALSE,
                "Idle",
                "",
                generation,
                stamp.clone(),
            );
        }
        super::drift::write_status(s, &p.name, &drift, generation, &stamp);
        ready_without_stall(s, generation, stamp);
        *s != before
    })
    .await?;
    if let Some(message) = &pending_message {
        crate::notify::announce::changes_pending(&ctx.client, &ctx.store, &profile, message).await;
    }

    let wait = next
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or_default())
        .unwrap_or(ctx.config.max_requeue)
        .min(drift.wait(now).unwrap_or(Duration::MAX))
        .min(ctx.config.max_requeue)
        .max(Duration::from_millis(100));
    Ok(Action::requeue(wait))
}

/// The named Connections that do not exist in `namespace`.
async fn missing_connections(ctx: &Context, namespace: &str, names: &[String]) -> Result<Vec<String>, Error> {
    let api: Api<Connection> = Api::namespaced(ctx.client.clone(), namespace);
    let mut missing = Vec::new();
    for name in names {
        // One being deleted is as good as gone: its finalizer is about to
        // purge its accounts.
        match api.get_opt(name).await.map_err(Error::Kube)? {
            Some(c) if c.metadata.deletion_timestamp.is_none() => {}
            _ => missing.push(name.clone()),
        }
    }
    Ok(missing)
}

/// Says on the profile that processing is under way (a run over 100,000
/// identities takes seconds).
async fn mark_processing(
    api: &Api<IdentityProfile>,
    profile: &IdentityProfile,
    trigger: Trigger,
    now: Timestamp,
) -> Result<(), Error> {
    let generation = profile.metadata.generation;
    status::update(api, &profile.name_any(), |obj: &mut IdentityProfile| {
        let s = obj.status.get_or_insert_with(Default::default);
        conditions::set_condition(
            &mut s.conditions,
            conditions::PROCESSING,
            TRUE,
            trigger.as_str(),
            &format!("{trigger} processing running"),
            generation,
            Time(now),
        );
        true
    })
    .await?;
    Ok(())
}

fn pending_note(profile: &IdentityProfile, applied: Option<i64>, problem: Option<&str>) -> String {
    let generation = profile.metadata.generation.unwrap_or_default();
    let applied = applied.map_or_else(|| "none".to_string(), |g| g.to_string());
    let mut note = format!(
        "generation {generation} is not applied (applied: {applied}); preview it with a ResyncRequest with scope \
         Identities, target.profiles [{}] and dryRun: true, and apply it with the same request without dryRun",
        profile.name_any()
    );
    if let Some(problem) = problem {
        note.push_str(&format!("; it cannot be applied as it is: {problem}"));
    }
    note
}

/// Says on the profile that it is stalled and why; with the run that
/// stalled it, if one did.
async fn write_stalled(
    ctx: &Arc<Context>,
    api: &Api<IdentityProfile>,
    profile: &IdentityProfile,
    reason: &str,
    message: &str,
    now: Timestamp,
    run: Option<&JobResult>,
) -> Result<(), Error> {
    let generation = profile.metadata.generation;
    let written = status::update(api, &profile.name_any(), |obj: &mut IdentityProfile| {
        let s = obj.status.get_or_insert_with(Default::default);
        let before = s.clone();
        s.observed_generation = generation;
        let stamp = Time(now);
        if let Some(run) = run {
            record_run(s, run, generation, &stamp);
        }
        conditions::set_condition(
            &mut s.conditions,
            conditions::STALLED,
            TRUE,
            reason,
            message,
            generation,
            stamp.clone(),
        );
        conditions::set_condition(&mut s.conditions, conditions::READY, FALSE, reason, message, generation, stamp);
        *s != before
    })
    .await?;
    if written.is_some() {
        events::publish_as(&ctx.recorder, &profile.object_ref(&()), true, reason, message.to_string(), "Process").await;
    }
    Ok(())
}

/// One processing run to execute.
pub struct Job {
    pub profile: ProfileRef,
    /// The mappings to process with.
    pub spec: IdentityProfileSpec,
    pub compiled: Arc<CompiledProfile>,
    pub selection: Selection,
    /// SpecChanged, Scheduled, EventBased, TimeBased or Manual.
    pub trigger: Trigger,
    pub request: Option<String>,
    pub dry_run: bool,
    /// The spec and generation this run applies, if it applies one.
    pub applies: Option<(IdentityProfileSpec, Option<i64>)>,
    /// The schedule slot this run covers, if any.
    pub scheduled: Option<Timestamp>,
    /// Dry-run syncs whose account changes are laid over the store first
    /// (connection name, its run): a dry run of scope AccountsAndIdentities
    /// previews the identities with the accounts it would sync.
    pub overlay: Vec<(String, RunId)>,
    /// Apply what the identity safeguard would hold back
    /// (`confirmRemovals`).
    pub confirm_removals: bool,
}

/// What a processing run did.
#[derive(Clone, Debug)]
pub struct JobResult {
    pub run: ProcessingRunRecord,
    /// Named identities the profile does not have.
    pub unknown: Vec<String>,
    /// The profile's numbers after the run (a dry run: as they would be).
    pub summary: Option<Summary>,
    pub preview: Vec<String>,
    /// Why the run was given up before it finished, if it was.
    pub halted: Option<Halt>,
    /// The access drift the run left, for a run that committed.
    pub drift: Option<Result<crate::identity::drift::Refreshed, String>>,
}

/// Why a processing run was given up; it changed nothing either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Halt {
    /// An expression passed an evaluation bound: the run's message, which
    /// names the expression, the bound and the identity.
    Exceeded(String),
    /// Stopped from outside: the profile changed or is being deleted, or
    /// the operator shuts down; the text says which.
    Cancelled(String),
    /// The identity safeguard held it back: its message.
    Held(String),
}

/// A processing run's stop, with the reason of whoever pulled it first.
#[derive(Clone, Debug, Default)]
pub struct ProcessingStop {
    stop: Stop,
    reason: Arc<Mutex<Option<String>>>,
}

impl ProcessingStop {
    pub fn stop(&self, reason: &str) {
        if let Ok(mut slot) = self.reason.lock() {
            slot.get_or_insert_with(|| reason.to_string());
        }
        self.stop.stop();
    }

    fn reason(&self) -> String {
        self.reason.lock().ok().and_then(|r| r.clone()).unwrap_or_else(|| "stopped".to_string())
    }
}

/// The processing runs under way, so that shutdown can stop them: the
/// controllers' graceful shutdown waits for running reconciles, and a
/// reconcile waits for its run.
#[derive(Debug, Default)]
pub struct RunningProcessing {
    state: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    shutting_down: bool,
    next: u64,
    stops: HashMap<u64, ProcessingStop>,
}

impl RunningProcessing {
    /// Stops every run under way, and every run that starts from now on.
    pub fn stop_all(&self) {
        let Ok(mut running) = self.state.lock() else { return };
        running.shutting_down = true;
        for stop in running.stops.values() {
            stop.stop(SHUTTING_DOWN);
        }
    }

    /// Registers a run's stop until the returned guard is dropped.
    fn register(&self, stop: &ProcessingStop) -> Registered<'_> {
        let id = match self.state.lock() {
            Ok(mut running) => {
                if running.shutting_down {
                    stop.stop(SHUTTING_DOWN);
                }
                running.next += 1;
                let id = running.next;
                running.stops.insert(id, stop.clone());
                Some(id)
            }
            Err(_) => None,
        };
        Registered { running: self, id }
    }
}

const SHUTTING_DOWN: &str = "the operator is shutting down";

struct Registered<'a> {
    running: &'a RunningProcessing,
    id: Option<u64>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let (Some(id), Ok(mut running)) = (self.id, self.running.state.lock()) {
            running.stops.remove(&id);
        }
    }
}

/// Why a running processing of `profile` should stop, if it should: the
/// profile is gone, being deleted, or has a newer generation. A failed
/// look says nothing (the run goes on).
async fn stop_reason(api: &Api<IdentityProfile>, profile: &IdentityProfile) -> Option<String> {
    match api.get_opt(&profile.name_any()).await {
        Ok(None) => Some("the profile was deleted".to_string()),
        Ok(Some(current)) if current.metadata.deletion_timestamp.is_some() => {
            Some("the profile is being deleted".to_string())
        }
        Ok(Some(current)) if current.metadata.generation != profile.metadata.generation => Some(format!(
            "the profile changed (generation {} → {})",
            profile.metadata.generation.unwrap_or_default(),
            current.metadata.generation.unwrap_or_default()
        )),
        _ => None,
    }
}

/// Runs one processing job: snapshot, compute, commit (or, for a dry run,
/// only record), with Events on the profile. The caller holds the
/// profile's lock.
pub async fn execute(
    ctx: &Arc<Context>,
    profile: &IdentityProfile,
    job: Job,
    lease_lost: Option<tokio_util::sync::CancellationToken>,
) -> JobResult {
    let regarding = profile.object_ref(&());
    let started = ctx.clock.now();
    let what = if job.dry_run { "dry run" } else { "processing" };
    let by = job.request.as_ref().map(|r| format!(" for ResyncRequest {r}")).unwrap_or_default();
    events::publish_as(
        &ctx.recorder,
        &regarding,
        false,
        events::PROCESSING_STARTED,
        format!("{} {what} started{by}", job.trigger),
        "Process",
    )
    .await;
    let compiled = job.compiled.clone();
    let (trigger, request) = (job.trigger, job.request.clone());
    let result = match run_stoppable(ctx, profile, job, started, lease_lost).await {
        Ok(result) => result,
        Err(problem) => failed(
            trigger,
            request,
            started,
            ctx.clock.now(),
            format!("processing stopped: {problem}; nothing was applied"),
        ),
    };
    if let Some(Halt::Exceeded(message)) = &result.halted {
        compiled.note_exceeded(message.clone());
    }
    let run = &result.run;
    let (warning, reason) = match run.outcome {
        _ if every_identity_failed(run) => (true, events::PROCESSING_FAILED),
        RunOutcome::Succeeded | RunOutcome::DryRun => (false, events::PROCESSING_SUCCEEDED),
        _ => (true, events::PROCESSING_FAILED),
    };
    events::publish_as(&ctx.recorder, &regarding, warning, reason, run_note(run), "Process").await;
    crate::notify::announce::processing(&ctx.client, &ctx.store, profile, run, warning).await;
    // drift hook: Events and notifications of new drift cases and of a held run.
    super::drift::announce(ctx, profile, &result).await;
    if run.outcome != RunOutcome::DryRun {
        ctx.metrics.processing_finished(
            &format!("{}/{}", profile.namespace().unwrap_or_default(), profile.name_any()),
            run.trigger.as_str(),
            run.outcome.as_str(),
            Duration::try_from(run.finished_at.duration_since(run.started_at)).unwrap_or_default(),
            run.changed,
            result.summary.as_ref().map(|s| s.identities),
        );
    }
    tracing::info!(profile = %profile.name_any(), trigger = %run.trigger, outcome = %run.outcome,
        processed = run.processed, changed = run.changed, errors = run.errors, "identity processing finished");
    result
}

/// Runs a job on a thread of its own, stopped when the profile changes or
/// is being deleted, or the operator shuts down. The thread has the stack
/// evaluation needs (see `expr::EVALUATION_STACK`), and evaluation stops
/// within one comprehension step of the stop, so the run is always waited
/// for: what it commits, it commits whole.
async fn run_stoppable(
    ctx: &Arc<Context>,
    profile: &IdentityProfile,
    job: Job,
    now: Timestamp,
    lease_lost: Option<tokio_util::sync::CancellationToken>,
) -> Result<JobResult, String> {
    let stop = ProcessingStop::default();
    let lease_lost = lease_lost.unwrap_or_default();
    let _registered = ctx.processing.register(&stop);
    let (done, mut finished) = tokio::sync::oneshot::channel();
    let (store, thread_stop) = (ctx.store.clone(), stop.clone());
    std::thread::Builder::new()
        .name("idsync-processing".to_string())
        .stack_size(expr::EVALUATION_STACK)
        .spawn(move || {
            let result =
                expr::with_stop(&thread_stop.stop, || process_blocking(store.as_ref(), job, now, &thread_stop));
            // The receiver is gone only if the reconcile was dropped.
            let _ = done.send(result);
        })
        .map_err(|e| format!("could not start a processing thread: {e}"))?;
    let api: Api<IdentityProfile> =
        Api::namespaced(ctx.client.clone(), &profile.namespace().unwrap_or_else(|| "default".to_string()));
    let mut watching = true;
    loop {
        tokio::select! {
            result = &mut finished => return result.map_err(|_| "the processing thread failed".to_string()),
            _ = lease_lost.cancelled(), if watching => {
                stop.stop("this replica lost the profile's processing Lease");
                watching = false;
            }
            _ = tokio::time::sleep(WATCH_INTERVAL), if watching => {
                if let Some(reason) = stop_reason(&api, profile).await {
                    tracing::info!(profile = %profile.name_any(), %reason, "stopping a processing run");
                    stop.stop(&reason);
                    watching = false;
                }
            }
        }
    }
}

/// The blocking part of a run. A failed one changes nothing (the commit is
/// one transaction) and is recorded in the run history too, when the store
/// can still record it.
fn process_blocking(store: &dyn crate::store::Store, job: Job, now: Timestamp, stop: &ProcessingStop) -> JobResult {
    let (profile, trigger, request) = (job.profile.clone(), job.trigger, job.request.clone());
    let timer = std::time::Instant::now();
    let computed = compute_and_commit(store, job, now, stop);
    // The run's snapshot is gone; without this its memory stays with the
    // process until it exits.
    crate::identity::memory::release_freed();
    match computed {
        Ok(result) => result,
        Err(error) => {
            let finished =
                timing::saturating_add(now, jiff::SignedDuration::try_from(timer.elapsed()).unwrap_or_default());
            let mut result = failed(trigger, request, now, finished, format!("{error}; nothing was applied"));
            match store.record_processing_run(&profile, &result.run) {
                Ok(id) => result.run.id = id,
                Err(error) => tracing::warn!(%error, %profile, "could not record a failed processing run"),
            }
            result
        }
    }
}

/// Computes a run and commits it (or, for a dry run, records it).
fn compute_and_commit(
    store: &dyn crate::store::Store,
    job: Job,
    now: Timestamp,
    stop: &ProcessingStop,
) -> Result<JobResult, crate::store::StoreError> {
    // `now` comes from the controller's clock (a test's, perhaps); the
    // run's length is the wall clock's.
    let timer = std::time::Instant::now();
    let connections = process::connections_of(&job.spec);
    // An event-based run first reads only what changed; the whole snapshot
    // when the store cannot tell or the changes need a run over everyone.
    // So does a scheduled run with unchanged mappings: identities whose
    // inputs did not change and whose time has not come would compute what
    // they have. A request over everyone still evaluates everyone: it is how
    // a person asks for every identity to be computed again (after an
    // upgrade, say), and its dry run's preview counts everyone.
    let scope = match (&job.selection, job.overlay.is_empty()) {
        (Selection::Changed, true) => Some(delta::Scope::Changed),
        (Selection::All, true) if job.trigger == Trigger::Scheduled && !job.dry_run => Some(delta::Scope::Everyone),
        _ => None,
    };
    let delta = match scope {
        Some(_) => store.processing_delta(&job.profile, &connections, now)?,
        None => None,
    };
    let over_delta = match (&delta, scope) {
        (Some(delta), Some(scope)) => delta::run(&job.spec, &job.compiled, delta, scope, now).transpose(),
        _ => None,
    };
    let (computed, versions) = match (over_delta, delta) {
        (Some(computed), Some(delta)) => (computed, delta.versions),
        _ => {
            let mut snapshot = store.processing_snapshot(&job.profile, &connections)?;
            for (connection, run) in &job.overlay {
                snapshot.overlay(connection, &crate::store::all_run_changes(store, *run)?);
            }
            // An authoritative connection without accounts while identities
            // exist is a purged or reset connection far more often than an
            // HR system that lost everyone (the sync's import safeguard stops
            // that): keep them.
            let authoritative = snapshot.accounts.get(&job.spec.authoritative_connection);
            if authoritative.is_none_or(Vec::is_empty) && !snapshot.identities.is_empty() {
                let message = format!(
                    "the authoritative connection {} has no accounts in the store (deleted, or reset); the \
                     profile's {} identities are kept as they are",
                    job.spec.authoritative_connection,
                    snapshot.identities.len()
                );
                let mut result = failed(job.trigger, job.request.clone(), now, now, message);
                result.run.id = store.record_processing_run(&job.profile, &result.run)?;
                return Ok(result);
            }
            (process::run(&job.spec, &job.compiled, &snapshot, &job.selection, now), snapshot.versions)
        }
    };
    let mut outcome = match computed {
        Ok(outcome) => outcome,
        Err(abandoned) => {
            let finished =
                timing::saturating_add(now, jiff::SignedDuration::try_from(timer.elapsed()).unwrap_or_default());
            let (message, halt) = halt_of(&abandoned, stop);
            tracing::warn!(profile = %job.profile, %message, "processing given up");
            let mut result = failed(job.trigger, job.request.clone(), now, finished, message);
            result.halted = Some(halt);
            result.run.id = store.record_processing_run(&job.profile, &result.run)?;
            return Ok(result);
        }
    };
    let mut message = match outcome.errors {
        0 => String::new(),
        1 => "1 identity has expressions that failed; their previous values are kept".to_string(),
        n => format!("{n} identities have expressions that failed; their previous values are kept"),
    };
    if outcome.summary.ambiguous_accounts > 0 {
        // Reported, never resolved by guessing: say so where people look.
        message = join_message(
            message,
            format!(
                "{} several identities and {} attached to none; list them with \
                 `idsync identities uncorrelated --profile {} -n {}`",
                match outcome.summary.ambiguous_accounts {
                    1 => "1 account matches".to_string(),
                    n => format!("{n} accounts match"),
                },
                if outcome.summary.ambiguous_accounts == 1 { "is" } else { "are" },
                job.profile.name,
                job.profile.namespace
            ),
        );
    }
    if !outcome.unknown.is_empty() {
        let unknown = outcome.unknown.join(", ");
        message = join_message(message, format!("no such identities: {unknown}"));
    }
    // safeguard hook (before commit): a run removing or offboarding more
    // identities than the identity safeguard allows applies nothing.
    let guarded = crate::identity::safeguard::guard(
        store,
        &job.profile,
        &job.spec,
        &outcome.commit,
        &versions,
        job.confirm_removals,
        job.dry_run,
        now,
    )?;
    if let Some(note) = guarded.note {
        message = join_message(message, note);
    }
    let mut run = ProcessingRunRecord {
        id: 0,
        trigger: job.trigger,
        request: job.request.clone(),
        started_at: now,
        finished_at: now,
        outcome: if job.dry_run { RunOutcome::DryRun } else { RunOutcome::Succeeded },
        processed: outcome.processed,
        changed: outcome.changed,
        errors: outcome.errors,
        message,
    };
    let finished = |run: &mut ProcessingRunRecord| {
        run.finished_at =
            timing::saturating_add(now, jiff::SignedDuration::try_from(timer.elapsed()).unwrap_or_default());
    };
    if job.dry_run {
        finished(&mut run);
        run.id = store.record_processing_run(&job.profile, &run)?;
        return Ok(JobResult {
            run,
            summary: Some(outcome.summary),
            preview: outcome.preview,
            unknown: outcome.unknown,
            halted: None,
            drift: None,
        });
    }
    if let Some(held) = guarded.held {
        run.outcome = RunOutcome::Failed;
        run.message = join_message(held.clone(), run.message);
        finished(&mut run);
        run.id = store.record_processing_run(&job.profile, &run)?;
        let halted = Some(Halt::Held(held));
        return Ok(JobResult {
            run,
            summary: None,
            preview: outcome.preview,
            unknown: outcome.unknown,
            halted,
            drift: None,
        });
    }
    let state = &mut outcome.commit.state;
    if matches!(job.selection, Selection::All | Selection::Changed) {
        // Everything the snapshot's accounts imply has been processed.
        state.seen_versions = versions;
    }
    if let Some((spec, generation)) = &job.applies {
        state.applied_spec = serde_json::to_string(spec).ok();
        state.applied_generation = *generation;
    }
    if let Some(slot) = job.scheduled {
        state.last_scheduled = Some(state.last_scheduled.map_or(slot, |last| last.max(slot)));
    }
    // The write is most of a large run's end; counting it matters less than
    // having the finish inside the same transaction.
    finished(&mut run);
    run.id = store.commit_processing(&job.profile, &outcome.commit, &run)?;
    // drift hook (after commit): the drift this run leaves, kept in the store.
    let drift = Some(super::drift::after_commit(store, &job.profile, &job.spec, now));
    Ok(JobResult {
        run,
        summary: Some(outcome.summary),
        preview: outcome.preview,
        unknown: outcome.unknown,
        halted: None,
        drift,
    })
}

/// The message of a run given up, and why it was.
fn halt_of(abandoned: &Abandoned, stop: &ProcessingStop) -> (String, Halt) {
    match &abandoned.cause {
        Interrupted::Stopped => {
            let message = format!("cancelled: {}; nothing was applied", stop.reason());
            (message.clone(), Halt::Cancelled(message))
        }
        Interrupted::Exceeded { .. } => {
            let message = format!(
                "{abandoned}; processing stopped there and nothing was applied. Simplify the expression (fewer \
                 nested comprehensions, smaller values); the same expressions are tried again in {} minutes",
                EXCEEDED_RETRY_AFTER.as_secs() / 60
            );
            (message.clone(), Halt::Exceeded(message))
        }
    }
}

fn join_message(a: String, b: String) -> String {
    if a.is_empty() { b } else { format!("{a}; {b}") }
}

/// A run that failed and changed nothing.
fn failed(
    trigger: Trigger,
    request: Option<String>,
    started: Timestamp,
    finished: Timestamp,
    message: String,
) -> JobResult {
    JobResult {
        run: ProcessingRunRecord {
            id: 0,
            trigger,
            request,
            started_at: started,
            finished_at: finished,
            outcome: RunOutcome::Failed,
            processed: 0,
            changed: 0,
            errors: 0,
            message,
        },
        summary: None,
        preview: Vec::new(),
        unknown: Vec::new(),
        halted: None,
        drift: None,
    }
}

/// A one-line summary for Events and status.
pub fn run_note(run: &ProcessingRunRecord) -> String {
    let counts = format!("processed {}, changed {}, errors {}", run.processed, run.changed, run.errors);
    let head = match run.outcome {
        RunOutcome::Succeeded if every_identity_failed(run) => {
            format!("{} processing failed on every identity: {counts}", run.trigger)
        }
        RunOutcome::Succeeded => format!("{} processing succeeded: {counts}", run.trigger),
        RunOutcome::DryRun => format!("{} dry run: {counts} (would change); nothing was applied", run.trigger),
        _ => format!("{} processing failed: {}", run.trigger, run.message),
    };
    if run.outcome != RunOutcome::Failed && !run.message.is_empty() {
        format!("{head} ({})", run.message)
    } else {
        head
    }
}

/// Writes a run into the profile's status: the last processing, the
/// numbers, and the conditions.
pub fn record_run(
    s: &mut idsync_api::IdentityProfileStatus,
    result: &JobResult,
    generation: Option<i64>,
    stamp: &Time,
) {
    let run = &result.run;
    if run.outcome == RunOutcome::DryRun {
        return;
    }
    s.last_processing = Some(ProcessingRun {
        trigger: run.trigger.to_string(),
        start_time: Time(run.started_at),
        completion_time: Some(Time(run.finished_at)),
        processed: run.processed,
        changed: run.changed,
        errors: run.errors,
        result: run.outcome.to_string(),
        message: run.message.clone(),
    });
    if let Some(summary) = &result.summary {
        s.identity_count = Some(summary.identities);
        s.lifecycle_state_counts = summary.lifecycle_states.clone();
        s.uncorrelated_accounts = Some(summary.uncorrelated_accounts);
        s.ambiguous_accounts = Some(summary.ambiguous_accounts);
        s.unresolved_managers = Some(summary.unresolved_managers);
    }
    let note = run_note(run);
    let (ready, reason) = match run.outcome {
        // Every expression failing on every identity is a broken profile,
        // however cleanly the run itself went.
        RunOutcome::Succeeded if every_identity_failed(run) => (FALSE, "AllIdentitiesFailed"),
        RunOutcome::Succeeded => (TRUE, "Processed"),
        _ => (FALSE, "ProcessingFailed"),
    };
    conditions::set_condition(&mut s.conditions, conditions::READY, ready, reason, &note, generation, stamp.clone());
    conditions::set_condition(&mut s.conditions, conditions::PROCESSING, FALSE, "Idle", "", generation, stamp.clone());
}

/// The reasons `Ready` takes from a processing run (`record_run`); any
/// other `Ready=False` reason is a stall's.
const RUN_READY_REASONS: [&str; 3] = ["Processed", "AllIdentitiesFailed", "ProcessingFailed"];

/// `Ready` once the profile is not stalled: set when missing, and when a
/// stall's reason is still on it (the stall was fixed and no run has
/// reported since), taken from the last run, so a fixed `timeZone` does not
/// leave `Ready=False InvalidSchedule` behind until the next run.
fn ready_without_stall(s: &mut idsync_api::IdentityProfileStatus, generation: Option<i64>, stamp: Time) {
    let left_by_stall = conditions::find(&s.conditions, conditions::READY)
        .is_some_and(|c| c.status == FALSE && !RUN_READY_REASONS.contains(&c.reason.as_str()));
    if conditions::find(&s.conditions, conditions::READY).is_some() && !left_by_stall {
        return;
    }
    let (ready, reason, message) = match &s.last_processing {
        None => (TRUE, "Ready", "nothing to process yet".to_string()),
        Some(last) if last.result == RunOutcome::Succeeded.to_string() => {
            (TRUE, "Processed", format!("last processing: {}", last.message))
        }
        Some(last) => (FALSE, "ProcessingFailed", format!("last processing: {}", last.message)),
    };
    conditions::set_condition(&mut s.conditions, conditions::READY, ready, reason, &message, generation, stamp);
}

/// A run that processed identities and failed on every one of them.
fn every_identity_failed(run: &ProcessingRunRecord) -> bool {
    run.processed > 0 && run.errors >= run.processed
}

/// Identity ids named by a request, as a selection.
pub fn selection_for(identities: &[String]) -> Selection {
    if identities.is_empty() {
        Selection::All
    } else {
        Selection::Only(identities.iter().cloned().collect::<BTreeSet<String>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_stall_leaves_ready_as_the_last_run_left_it() {
        let at = |s: i64| Time(jiff::Timestamp::from_second(s).expect("time"));
        let mut status = idsync_api::IdentityProfileStatus::default();
        // Never processed, then stalled, then fixed: Ready, nothing to process.
        conditions::set_condition(
            &mut status.conditions,
            conditions::READY,
            FALSE,
            "InvalidSchedule",
            "bad zone",
            Some(2),
            at(1),
        );
        ready_without_stall(&mut status, Some(3), at(2));
        let ready = conditions::find(&status.conditions, conditions::READY).expect("Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), (TRUE, "Ready"));

        // Processed, stalled, fixed: Ready again, from the last run.
        status.last_processing = Some(idsync_api::identity_profile::ProcessingRun {
            trigger: "Scheduled".into(),
            start_time: at(3),
            completion_time: Some(at(4)),
            processed: 4,
            changed: 1,
            errors: 0,
            result: RunOutcome::Succeeded.to_string(),
            message: "processed 4, changed 1".into(),
        });
        conditions::set_condition(
            &mut status.conditions,
            conditions::READY,
            FALSE,
            "InvalidSchedule",
            "bad zone",
            Some(4),
            at(5),
        );
        ready_without_stall(&mut status, Some(5), at(6));
        let ready = conditions::find(&status.conditions, conditions::READY).expect("Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), (TRUE, "Processed"));
        assert_eq!(ready.message, "last processing: processed 4, changed 1");

        // A run's own failure is not a stall's: left as the run said it.
        conditions::set_condition(
            &mut status.conditions,
            conditions::READY,
            FALSE,
            "ProcessingFailed",
            "source down",
            Some(5),
            at(7),
        );
        ready_without_stall(&mut status, Some(5), at(8));
        let ready = conditions::find(&status.conditions, conditions::READY).expect("Ready");
        assert_eq!((ready.reason.as_str(), ready.message.as_str()), ("ProcessingFailed", "source down"));
    }
    use crate::model::Identity;
    use crate::model::RunMode;
    use crate::store::{AccountStore, IdentityStore, ProcessingCommit, ProcessingHistory, SqliteStore};

    fn spec() -> IdentityProfileSpec {
        IdentityProfile::test("employees").attribute("email", "accounts.hr.email").spec()
    }

    fn identity(id: &str) -> Identity {
        Identity { input_hash: "00".repeat(32), ..Identity::new(id, "hr", Timestamp::UNIX_EPOCH) }
    }

    #[test]
    fn an_empty_authoritative_connection_removes_no_identities() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("idsync.db")).expect("store");
        let p = ProfileRef::new("default", "employees");
        let seeded = ProcessingCommit { upserts: vec![identity("E1"), identity("E2")], ..Default::default() };
        let run = ProcessingRunRecord {
            id: 0,
            trigger: Trigger::SpecChanged,
            request: None,
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
            outcome: RunOutcome::Succeeded,
            processed: 2,
            changed: 2,
            errors: 0,
            message: String::new(),
        };
        store.commit_processing(&p, &seeded, &run).expect("seed");

        let spec = spec();
        let compiled = Arc::new(compile_uncached(&spec).expect("compiles"));
        let job = Job {
            profile: p.clone(),
            spec,
            compiled,
            selection: Selection::Changed,
            trigger: Trigger::EventBased,
            request: None,
            dry_run: false,
            applies: None,
            scheduled: None,
            overlay: Vec::new(),
            confirm_removals: false,
        };
        let result = compute_and_commit(&store, job, Timestamp::now(), &ProcessingStop::default()).expect("runs");
        assert_eq!(result.run.outcome, RunOutcome::Failed);
        assert!(result.run.message.contains("has no accounts in the store"), "{}", result.run.message);
        assert_eq!(store.list_identities(&p, None, None, 10).expect("list").len(), 2, "kept");
        let history = store.processing_runs(&p, 10).expect("runs");
        assert_eq!(history[0].outcome, RunOutcome::Failed, "recorded in the history");
    }

    #[test]
    fn named_identities_that_do_not_exist_are_named_in_the_result() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store_with_hr_account(dir.path());

        let spec = spec();
        let job = Job {
            profile: ProfileRef::new("default", "employees"),
            compiled: Arc::new(compile_uncached(&spec).expect("compiles")),
            spec,
            selection: selection_for(&["E1".to_string(), "E404".to_string()]),
            trigger: Trigger::Manual,
            request: Some("two".into()),
            dry_run: false,
            applies: None,
            scheduled: None,
            overlay: Vec::new(),
            confirm_removals: false,
        };
        let result = process_blocking(&store, job, Timestamp::now(), &ProcessingStop::default());
        assert_eq!((result.run.outcome, result.run.processed), (RunOutcome::Succeeded, 1));
        assert_eq!(result.run.message, "no such identities: E404");
    }

    #[test]
    fn a_run_the_store_cannot_take_is_recorded_as_failed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("idsync.db");
        let store = SqliteStore::open(&path).expect("store");
        // The identities' tables are gone (a damaged database): the run's
        // read fails, the history table still takes its record.
        rusqlite::Connection::open(&path).expect("sqlite").execute_batch("DROP TABLE identity_links").expect("drop");
        let p = ProfileRef::new("default", "employees");
        let spec = spec();
        let job = Job {
            profile: p.clone(),
            compiled: Arc::new(compile_uncached(&spec).expect("compiles")),
            spec,
            selection: Selection::All,
            trigger: Trigger::Scheduled,
            request: None,
            dry_run: false,
            applies: None,
            scheduled: None,
            overlay: Vec::new(),
            confirm_removals: false,
        };
        let result = process_blocking(&store, job, Timestamp::now(), &ProcessingStop::default());
        assert_eq!(result.run.outcome, RunOutcome::Failed);
        assert!(result.run.message.ends_with("; nothing was applied"), "{}", result.run.message);
        let history = store.processing_runs(&p, 10).expect("runs");
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].id, history[0].outcome), (result.run.id, RunOutcome::Failed));
        assert_eq!(history[0].trigger, Trigger::Scheduled);
    }

    /// A store whose `hr` connection has the account E1, as a sync leaves it.
    fn store_with_hr_account(dir: &std::path::Path) -> SqliteStore {
        use crate::model::Account;
        use crate::model::{ConnectionRef, Counts, NewRun, RunFinish};
        use crate::store::{CursorUpdate, StagedChange};
        let store = SqliteStore::open(&dir.join("idsync.db")).expect("store");
        let sync = store
            .start_run(&NewRun {
                connection: ConnectionRef::new("default", "hr"),
                trigger: Trigger::Requested,
                request: None,
                requested_mode: RunMode::Full,
                holder: "test".into(),
                started_at: Timestamp::now(),
            })
            .expect("start");
        let mut ada = Account::new("E1");
        ada.email = Some("ada@acme.example".into());
        store.stage(sync, &[StagedChange::Upsert(ada)]).expect("stage");
        let finish = RunFinish {
            outcome: RunOutcome::Succeeded,
            mode: Some(RunMode::Full),
            counts: Counts::default(),
            message: String::new(),
            finished_at: Timestamp::now(),
        };
        store.commit_run(sync, CursorUpdate::Keep, &finish).expect("commit");
        store
    }

    fn job_for(spec: IdentityProfileSpec) -> Job {
        Job {
            profile: ProfileRef::new("default", "employees"),
            compiled: Arc::new(compile_uncached(&spec).expect("compiles")),
            spec,
            selection: Selection::All,
            trigger: Trigger::SpecChanged,
            request: None,
            dry_run: false,
            applies: None,
            scheduled: None,
            overlay: Vec::new(),
            confirm_removals: false,
        }
    }

    #[test]
    fn a_run_past_an_evaluation_bound_changes_nothing_and_says_where() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store_with_hr_account(dir.path());
        let p = ProfileRef::new("default", "employees");
        let chain = format!("accounts.hr.email{}", ".replace('a', 'aaaaaaaaaa')".repeat(8));
        let spec = IdentityProfile::test("employees").attribute("email", &chain).spec();
        let result = process_blocking(&store, job_for(spec), Timestamp::now(), &ProcessingStop::default());
        assert_eq!(result.run.outcome, RunOutcome::Failed);
        let Some(Halt::Exceeded(message)) = &result.halted else { panic!("not halted: {:?}", result.halted) };
        assert!(
            message.starts_with(
                "spec.attributes.email: `replace` would build a value of more than 1048576 bytes (on identity E1, \
                 after 0 identities were evaluated); processing stopped there and nothing was applied"
            ),
            "{message}"
        );
        assert_eq!(&result.run.message, message);
        assert!(store.list_identities(&p, None, None, 10).expect("list").is_empty(), "nothing applied");
        let history = store.processing_runs(&p, 10).expect("runs");
        assert_eq!((history[0].id, history[0].outcome), (result.run.id, RunOutcome::Failed));
    }

    #[test]
    fn a_stopped_run_changes_nothing_and_says_why() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store_with_hr_account(dir.path());
        let stop = ProcessingStop::default();
        stop.stop("the profile changed (generation 1 → 2)");
        stop.stop("the operator is shutting down");
        let result = expr::with_stop(&stop.stop, || process_blocking(&store, job_for(spec()), Timestamp::now(), &stop));
        assert_eq!(result.run.outcome, RunOutcome::Failed);
        let cancelled = "cancelled: the profile changed (generation 1 → 2); nothing was applied";
        assert_eq!(result.halted, Some(Halt::Cancelled(cancelled.to_string())));
        assert_eq!(result.run.message, cancelled);
        let p = ProfileRef::new("default", "employees");
        assert!(store.list_identities(&p, None, None, 10).expect("list").is_empty());
    }

    #[test]
    fn shutdown_stops_running_and_later_runs() {
        let running = RunningProcessing::default();
        let (first, second) = (ProcessingStop::default(), ProcessingStop::default());
        let registered = running.register(&first);
        {
            let _done = running.register(&second);
        }
        running.stop_all();
        assert!(first.stop.is_stopped());
        assert!(!second.stop.is_stopped(), "a finished run is no longer registered");
        drop(registered);
        let late = ProcessingStop::default();
        let _registered = running.register(&late);
        assert!(late.stop.is_stopped());
        assert_eq!(late.reason(), "the operator is shutting down");
    }

    fn manual_profile(policy: &str) -> IdentityProfile {
        let mut spec = serde_json::to_value(spec()).expect("spec json");
        spec["applyPolicy"] = serde_json::json!(policy);
        let mut profile = IdentityProfile::new("employees", serde_json::from_value(spec).expect("spec"));
        profile.metadata.namespace = Some("default".into());
        profile.metadata.generation = Some(3);
        profile
    }

    #[test]
    fn a_manual_profile_whose_applied_spec_cannot_be_read_stalls() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("idsync.db")).expect("store");
        let p = ProfileRef::new("default", "employees");
        let corrupt = ProcessingCommit {
            upserts: vec![identity("E1")],
            state: crate::store::ProfileState {
                applied_spec: Some("{not json".into()),
                applied_generation: Some(2),
                ..Default::default()
            },
            ..Default::default()
        };
        let run = ProcessingRunRecord {
            id: 0,
            trigger: Trigger::SpecChanged,
            request: None,
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
            outcome: RunOutcome::Succeeded,
            processed: 1,
            changed: 1,
            errors: 0,
            message: String::new(),
        };
        store.commit_processing(&p, &corrupt, &run).expect("seed");
        let state = store.profile_state(&p).expect("state");

        // Manual: stalled, not "nothing applied" (which would apply
        // generation 3 unreviewed).
        let manual = manual_profile("Manual");
        let Err(error) = effective(&manual, state.applied_spec.as_deref(), state.applied_generation) else {
            panic!("a Manual profile with an unreadable applied spec must not process");
        };
        assert_eq!((error.profile.as_str(), error.generation), ("employees", Some(2)));
        let message = error.to_string();
        assert!(message.contains("(generation 2) cannot be read: not JSON at line 1"), "{message}");
        assert!(message.contains("ResyncRequest with scope Identities and target.profiles [employees]"), "{message}");
        assert!(!message.contains("{not json"), "the stored text is not quoted: {message}");

        // Automatic applies its current spec anyway, which records it again.
        let automatic = manual_profile("Automatic");
        let eff = effective(&automatic, state.applied_spec.as_deref(), state.applied_generation).expect("processes");
        assert!(eff.applies_current && eff.mappings_changed);

        // A readable one is what a Manual profile processes with.
        let applied = serde_json::to_string(&spec()).expect("json");
        let eff = effective(&manual, Some(&applied), Some(2)).expect("readable");
        assert!(!eff.applies_current);
        assert_eq!(store.list_identities(&p, None, None, 10).expect("list").len(), 1, "identities kept");
    }

    #[test]
    fn invalid_mappings_list_every_problem() {
        let mut spec = spec();
        spec.attributes.insert("name".into(), "accounts.hr.".into());
        spec.attributes.insert("title".into(), "nope".into());
        let invalid = compile_uncached(&spec).expect_err("does not compile");
        let fields: Vec<&str> = invalid.expressions.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.attributes.name", "spec.attributes.title"]);
        assert!(invalid.references.is_empty());
        let shown = invalid.to_string();
        assert!(shown.starts_with("spec.attributes.name: "), "{shown}");
        assert!(
            shown.contains("; spec.attributes.title: \"nope\" does not compile: unknown variable `nope`"),
            "{shown}"
        );
    }
}
