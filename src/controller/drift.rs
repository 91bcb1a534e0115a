//! The IdentityProfile controller's side of access drift and the identity
//! safeguard: recomputing drift after a commit or a change of the drift
//! settings, writing counts and conditions to the profile's status,
//! setting the gauge, and telling people (Events, notifications) when a
//! new case appears or a run is held back. The drift itself is
//! `identity::drift`, the safeguard `identity::safeguard`.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;

use super::profile::{Halt, JobResult, blocking};
use super::{Context, Error, events};
use crate::identity::drift::{self, Refreshed};
use crate::model::ProfileRef;
use crate::store::drift::{DriftKind, DriftSummary};
use idsync_api::conditions::{self, FALSE, TRUE};
use idsync_api::{IdentityProfile, IdentityProfileSpec, IdentityProfileStatus};

/// The condition saying drift older than the grace period exists.
pub const ACCESS_DRIFT: &str = "AccessDrift";
/// The condition saying the identity safeguard holds a run back.
pub const REMOVALS_HELD: &str = "RemovalsHeld";
/// The Event reason of new drift cases.
pub const DRIFT_DETECTED: &str = "DriftDetected";
/// The Event reason (and `RemovalsHeld`'s) of a run held back.
pub const IDENTITY_SAFEGUARD_TRIPPED: &str = "IdentitySafeguardTripped";
const UNKNOWN: &str = "Unknown";

/// The drift hook after a processing run committed: releases the
/// safeguard's hold (the run applied) and recomputes drift. Blocking. A
/// failure is the drift's, not the run's: the run stays committed.
pub fn after_commit(
    store: &dyn crate::store::Store,
    p: &ProfileRef,
    spec: &IdentityProfileSpec,
    now: Timestamp,
) -> Result<Refreshed, String> {
    if let Err(error) = store.release_removals(p) {
        tracing::warn!(%error, profile = %p, "could not release the identity safeguard's hold");
    }
    drift::refresh(store, p, spec, now).map_err(|error| {
        tracing::warn!(%error, profile = %p, "could not compute access drift");
        error.to_string()
    })
}

/// Tells people what a run's drift and safeguard did: the hook after
/// `execute` published the run. New cases make one Event and one
/// notification; a held run one of each.
pub async fn announce(ctx: &Arc<Context>, profile: &IdentityProfile, result: &JobResult) {
    if let Some(Halt::Held(message)) = &result.halted {
        let regarding = profile.object_ref(&());
        events::publish_as(&ctx.recorder, &regarding, true, IDENTITY_SAFEGUARD_TRIPPED, message.clone(), "Process")
            .await;
        crate::notify::announce::removals_held(&ctx.client, &ctx.store, profile, &result.run).await;
    }
    if let Some(Ok(refreshed)) = &result.drift {
        announce_new(ctx, profile, refreshed, format!("run-{}", result.run.id)).await;
    }
}

async fn announce_new(ctx: &Arc<Context>, profile: &IdentityProfile, refreshed: &Refreshed, occurrence: String) {
    if refreshed.update.new.is_empty() {
        return;
    }
    let message = drift::describe_new(&refreshed.update.new);
    let regarding = profile.object_ref(&());
    events::publish_as(&ctx.recorder, &regarding, true, DRIFT_DETECTED, message.clone(), "Process").await;
    crate::notify::announce::access_drift(&ctx.client, &ctx.store, profile, occurrence, &message).await;
}

/// The profile's drift as its status shows it.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub summary: DriftSummary,
    /// Why drift could not be computed, if it could not.
    pub error: Option<String>,
    /// Drift older than the grace period exists.
    pub overdue: bool,
    /// When the next case passes its grace period.
    pub next_overdue: Option<Timestamp>,
}

impl Observed {
    /// How long until the status should be looked at again for the grace
    /// period's sake.
    pub fn wait(&self, now: Timestamp) -> Option<Duration> {
        self.next_overdue.map(|t| Duration::try_from(t.duration_since(now)).unwrap_or_default())
    }
}

/// Reads the profile's drift for its status, recomputing it first when the
/// drift settings changed since it was computed (no run follows such a
/// change), and sets the gauge. The reconcile's hook.
pub async fn observe(
    ctx: &Arc<Context>,
    profile: &IdentityProfile,
    p: &ProfileRef,
    spec: &IdentityProfileSpec,
    now: Timestamp,
) -> Result<Observed, Error> {
    let summary = {
        let p = p.clone();
        blocking(ctx, move |store| store.drift_summary(&p)).await?
    };
    let mut error = None;
    let summary = if summary.settings_hash.as_deref() != Some(drift::settings_hash(spec).as_str()) {
        let (p, owned) = (p.clone(), spec.clone());
        let store = ctx.store.clone();
        let refreshed = tokio::task::spawn_blocking(move || {
            let refreshed = drift::refresh(store.as_ref(), &p, &owned, now).map_err(|e| e.to_string());
            (refreshed, store.drift_summary(&p))
        })
        .await
        .map_err(|e| Error::Conflict(format!("a store task failed: {e}")))?;
        match refreshed {
            (Ok(refreshed), summary) => {
                announce_new(ctx, profile, &refreshed, format!("settings-{}", drift::settings_hash(spec))).await;
                summary.map_err(Error::Store)?
            }
            (Err(problem), summary) => {
                error = Some(problem);
                summary.map_err(Error::Store)?
            }
        }
    } else {
        summary
    };
    let name = format!("{}/{}", p.namespace, p.name);
    ctx.metrics.set_drift(&name, DriftKind::OffboardedWithAccess.as_str(), summary.offboarded_with_access);
    ctx.metrics.set_drift(&name, DriftKind::OrphanAccount.as_str(), summary.orphan_accounts);
    ctx.metrics.set_drift(&name, DriftKind::MissingExpectedAccount.as_str(), summary.missing_expected_accounts);
    let (overdue, next_overdue) = drift::overdue(&summary.oldest, &spec.drift, now);
    Ok(Observed { summary, error, overdue, next_overdue })
}

/// Writes the drift counts and the `AccessDrift` and `RemovalsHeld`
/// conditions.
pub fn write_status(
    s: &mut IdentityProfileStatus,
    profile: &str,
    observed: &Observed,
    generation: Option<i64>,
    stamp: &Time,
) {
    let summary = &observed.summary;
    if summary.settings_hash.is_some() {
        s.offboarded_with_access = Some(summary.offboarded_with_access);
        s.orphan_accounts = Some(summary.orphan_accounts);
        s.missing_expected_accounts = Some(summary.missing_expected_accounts);
    }
    let counts = format!(
        "{} offboarded with access, {} orphan account(s), {} missing expected account(s); list them with `idsync \
         drift list --profile {profile}`",
        summary.offboarded_with_access, summary.orphan_accounts, summary.missing_expected_accounts,
    );
    let cases = summary.offboarded_with_access + summary.orphan_accounts + summary.missing_expected_accounts;
    let (status, reason, message) = match (&observed.error, cases, observed.overdue) {
        (Some(problem), _, _) => (UNKNOWN, "InvalidDriftExpression", format!("drift cannot be computed: {problem}")),
        (None, 0, _) => (FALSE, "NoDrift", String::new()),
        (None, _, true) => (TRUE, "DriftFound", format!("drift older than the grace period: {counts}")),
        (None, _, false) => (FALSE, "WithinGracePeriod", format!("drift within the grace period: {counts}")),
    };
    conditions::set_condition(&mut s.conditions, ACCESS_DRIFT, status, reason, &message, generation, stamp.clone());
    match &summary.hold {
        Some(hold) => conditions::set_condition(
            &mut s.conditions,
            REMOVALS_HELD,
            TRUE,
            IDENTITY_SAFEGUARD_TRIPPED,
            &hold.message,
            generation,
            stamp.clone(),
        ),
        None => conditions::set_condition(
            &mut s.conditions,
            REMOVALS_HELD,
            FALSE,
            "NoneHeld",
            "",
            generation,
            stamp.clone(),
        ),
    };
}
