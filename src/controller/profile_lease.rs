//! One processing of a profile at a time across replicas: with shared
//! replicas, a processing run (the profile controller's, a request's) runs
//! under the profile's Lease, `idsync-profile-<name>` in its namespace,
//! taken for the run and released after it. Ownership already sends a
//! profile to one replica, but owners move (a replica joins or dies) while
//! a run goes on; the Lease is what keeps the next owner waiting until
//! that run is over. `Context::profile_lock` still serializes the runs of
//! one process, and is taken first.
//!
//! Losing the Lease mid-run (no renewal before it lapsed) stops the run,
//! which then applies nothing: from then on another replica may process.
//! With one active replica no Lease is written at all.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::{Context, Error};
use crate::lease::{self, Claim, Held, RenewPolicy};
use idsync_api::IdentityProfile;

/// Tries to take the Lease when other writers keep getting in first.
const ACQUIRE_ATTEMPTS: usize = 3;

/// The name of a profile's processing Lease.
pub fn lease_name(profile: &str) -> String {
    lease::name_for("idsync-profile-", profile)
}

/// Whether this instance may process a profile now.
pub enum Exclusive {
    /// One active replica: nothing else processes.
    Single,
    /// The profile's Lease is ours until released.
    Held(ProfileLease),
    /// Another replica holds the Lease (the identity named): it processes.
    Busy(String),
}

impl Exclusive {
    /// Cancelled if the Lease is lost before it is released: the run under
    /// it must stop.
    pub fn lost(&self) -> Option<CancellationToken> {
        match self {
            Exclusive::Held(held) => Some(held.lost.clone()),
            _ => None,
        }
    }

    /// Whether a Lease was taken (shared replicas).
    pub fn is_lease(&self) -> bool {
        matches!(self, Exclusive::Held(_))
    }

    /// Gives the Lease back, if one was taken, and waits until it is.
    pub async fn release(self) {
        if let Exclusive::Held(held) = self {
            held.release().await;
        }
    }
}

/// A profile's processing Lease, renewed by a keeper task until released.
pub struct ProfileLease {
    name: String,
    stop: CancellationToken,
    lost: CancellationToken,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl ProfileLease {
    async fn release(mut self) {
        self.stop.cancel();
        if let Some(keeper) = self.keeper.take()
            && let Err(error) = keeper.await
        {
            tracing::warn!(%error, lease = %self.name, "a processing Lease's keeper failed; the Lease lapses on its own");
        }
    }
}

impl Drop for ProfileLease {
    /// Dropped without `release` (a panic, a cancelled reconcile): the
    /// keeper still gives the Lease back, in the background.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn owner(profile: &IdentityProfile) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: IdentityProfile::api_version(&()).into_owned(),
        kind: IdentityProfile::kind(&()).into_owned(),
        name: profile.metadata.name.clone()?,
        uid: profile.metadata.uid.clone()?,
        ..Default::default()
    })
}

/// Takes the profile's processing Lease when the replicas share the store.
pub async fn exclusive(ctx: &Arc<Context>, profile: &IdentityProfile) -> Result<Exclusive, Error> {
    if !ctx.shared() {
        return Ok(Exclusive::Single);
    }
    let namespace = profile.namespace().unwrap_or_else(|| "default".to_string());
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = lease_name(&profile.name_any());
    let claim = Claim { owner: owner(profile), ..Claim::new(ctx.config.identity.clone(), ctx.config.guard_duration) };
    for _ in 0..ACQUIRE_ATTEMPTS {
        match lease::acquire(&api, &name, &claim).await.map_err(Error::Kube)? {
            lease::Acquired::Taken { held, previous } => {
                if let Some(dead) = previous.as_deref().and_then(lease::holder) {
                    tracing::info!(lease = %name, previous = dead, "took over a lapsed processing Lease");
                }
                return Ok(Exclusive::Held(keep(*held, RenewPolicy::for_duration(ctx.config.guard_duration))));
            }
            lease::Acquired::Busy(current) => {
                if let Some(holder) = lease::holder(&current) {
                    return Ok(Exclusive::Busy(holder.to_string()));
                }
            }
            lease::Acquired::Conflict => {}
        }
    }
    Err(Error::Conflict(format!("the processing Lease {name} kept changing while it was being taken")))
}

/// Starts renewing `held` until released (then gives it back) or lost (then
/// cancels `lost`).
fn keep(mut held: Held, policy: RenewPolicy) -> ProfileLease {
    let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
    let name = held.name().to_string();
    let keeper = {
        let (stop, lost) = (stop.clone(), lost.clone());
        tokio::spawn(async move {
            let reason = tokio::select! {
                reason = held.keep(policy) => reason,
                _ = stop.cancelled() => {
                    let name = held.name().to_string();
                    match tokio::time::timeout(Duration::from_secs(10), held.release()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => tracing::warn!(%error, lease = %name, "could not release a processing Lease; it lapses on its own"),
                        Err(_) => tracing::warn!(lease = %name, "could not release a processing Lease in time; it lapses on its own"),
                    }
                    return;
                }
            };
            tracing::warn!(lease = %held.name(), %reason, "lost a processing Lease; stopping the run under it");
            lost.cancel();
        })
    };
    ProfileLease { name, stop, lost, keeper: Some(keeper) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_stay_valid_for_long_profile_names() {
        assert_eq!(lease_name("employees"), "idsync-profile-employees");
        let (a, b) = (lease_name(&format!("{}a", "p".repeat(252))), lease_name(&format!("{}b", "p".repeat(252))));
        assert!(a.len() <= 253 && b.len() <= 253);
        assert_ne!(a, b);
    }
}
