//! Leader election on a coordination.k8s.io Lease, with client-go's
//! leaderelection semantics, so that of several replicas (the Helm chart can
//! run a hot standby) only one runs the controllers.
//!
//! An elector campaigns every `retry_period` by taking the Lease when it is
//! absent, has no holder, or has lapsed (`crate::lease::acquire`: of several
//! electors writing at once one wins). The leader keeps it under the lease
//! module's one renewal policy: renewed every `renew_period`, a failed
//! renewal retried every `retry_period` until the Lease would lapse for the
//! others, and only then given up. It stops leading (cancels the token given
//! to `lead`) at once when the Lease names another holder, was deleted or
//! released by someone else, and when it has lapsed.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use tokio_util::sync::CancellationToken;

use crate::lease::{self, Acquired, Claim, RenewPolicy};

/// The Lease the operator's replicas elect their leader on.
pub const DEFAULT_LEASE_NAME: &str = "idsync-leader";

/// Where and how to elect.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// The namespace of the Lease (the operator's own).
    pub namespace: String,
    pub lease_name: String,
    /// This instance's holder identity: unique per process (see
    /// `crate::controller::default_identity`).
    pub identity: String,
    /// How long a Lease stays held without renewal; written to the Lease in
    /// whole seconds, rounded up, within `crate::lease`'s bounds.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_period: Duration,
    /// How often a standby tries to acquire, and a leader retries a failed renewal.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// The defaults (client-go's): the `idsync-leader` Lease, held 15 s,
    /// renewed every 5 s, retried every 2 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            lease_name: DEFAULT_LEASE_NAME.to_string(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
            retry_period: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<(), LeaderError> {
        let problem = if self.namespace.is_empty() {
            "namespace is empty"
        } else if self.lease_name.is_empty() {
            "lease_name is empty"
        } else if self.identity.is_empty() {
            "identity is empty"
        } else if self.renew_period.is_zero() || self.retry_period.is_zero() {
            "renew_period and retry_period must be positive"
        } else if self.renew_period >= self.lease_duration.min(lease::MAX_DURATION) {
            "renew_period must be shorter than lease_duration"
        } else {
            return Ok(());
        };
        Err(LeaderError::InvalidConfig(problem.to_string()))
    }

    fn policy(&self) -> RenewPolicy {
        RenewPolicy { renew_period: self.renew_period, retry_period: self.retry_period }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {0}")]
    InvalidConfig(String),
}

/// Runs `lead` whenever this instance holds the Lease.
///
/// The token given to `lead` is cancelled when leadership is lost (see the
/// module's description) or on `shutdown`; `lead` must then return. After a
/// loss the instance campaigns again, so `lead` can be called more than
/// once. On `shutdown` a leader keeps renewing until `lead` has returned,
/// then releases the Lease and `run` returns. Should `lead` return on its
/// own while still leading, the Lease is released and `run` returns as on
/// shutdown, rather than holding the Lease with nothing running under it.
///
/// API errors are logged and retried; the only error is invalid settings.
pub async fn run<F, Fut>(
    client: kube::Client,
    config: LeaderConfig,
    mut lead: F,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), LeaderError>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    config.validate()?;
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let claim = Claim::new(config.identity.clone(), config.lease_duration);
    let (identity, lease, namespace) =
        (config.identity.as_str(), config.lease_name.as_str(), config.namespace.as_str());
    let mut shutdown = std::pin::pin!(shutdown);
    // `shutdown` may be polled only until it has resolved once.
    let mut shut = false;

    loop {
        // Campaign until the Lease is ours.
        let mut held = loop {
            if !shut && shutdown.as_mut().now_or_never().is_some() {
                shut = true;
            }
            if shut {
                return Ok(());
            }
            let attempt = tokio::time::timeout(config.lease_duration, lease::acquire(&api, lease, &claim)).await;
            match attempt {
                Ok(Ok(Acquired::Taken { held, previous })) => {
                    let previous = previous.as_deref().and_then(lease::holder).map(str::to_string);
                    tracing::info!(identity, lease, namespace, previous, "became the leader");
                    break held;
                }
                Ok(Ok(Acquired::Busy(current))) => {
                    tracing::debug!(identity, lease, holder = lease::holder(&current), "the lease is held")
                }
                Ok(Ok(Acquired::Conflict)) => {
                    tracing::debug!(identity, lease, "another instance wrote the lease first")
                }
                Ok(Err(error)) => {
                    tracing::warn!(identity, lease, namespace, %error, "could not acquire the leader lease")
                }
                Err(_) => {
                    tracing::warn!(identity, lease, namespace, "could not acquire the leader lease: no answer in time")
                }
            }
            tokio::select! {
                _ = shutdown.as_mut() => shut = true,
                _ = tokio::time::sleep(config.retry_period) => {}
            }
        };

        // Lead, renewing all along; renewals go on while `lead` winds down
        // after shutdown, so no standby starts before this instance has stopped.
        let token = CancellationToken::new();
        let mut lost = None;
        let ended_by_itself = {
            let mut leading = std::pin::pin!(lead(token.clone()));
            let mut keeping = std::pin::pin!(held.keep(config.policy()));
            loop {
                tokio::select! {
                    biased;
                    _ = leading.as_mut() => break !token.is_cancelled(),
                    _ = shutdown.as_mut(), if !shut => {
                        shut = true;
                        tracing::info!(identity, lease, "shutting down: stopping the leader's work");
                        token.cancel();
                    }
                    reason = keeping.as_mut(), if lost.is_none() => {
                        tracing::warn!(identity, lease, %reason, "lost leadership: lost the leader lease");
                        lost = Some(reason);
                        token.cancel();
                    }
                }
            }
        };

        if lost.is_some() {
            tracing::info!(identity, lease, "stopped leading");
            if shut {
                return Ok(());
            }
            continue;
        }
        token.cancel();
        if ended_by_itself {
            tracing::warn!(identity, lease, "the leader's work ended on its own: giving up leadership");
        }
        match tokio::time::timeout(config.lease_duration, held.release()).await {
            Ok(Ok(true)) => tracing::info!(identity, lease, "released the leader lease"),
            Ok(Ok(false)) => tracing::info!(identity, lease, "the leader lease was no longer ours to release"),
            Ok(Err(error)) => tracing::warn!(identity, lease, %error, "could not release the leader lease"),
            Err(_) => tracing::warn!(identity, lease, "could not release the leader lease: no answer in time"),
        }
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let config = LeaderConfig::new("idsync-system", "pod-1");
        assert_eq!(config.lease_name, "idsync-leader");
        assert_eq!(
            (config.lease_duration, config.renew_period, config.retry_period),
            (Duration::from_secs(15), Duration::from_secs(5), Duration::from_secs(2))
        );
        assert!(config.validate().is_ok());
        assert_eq!(lease::duration_seconds(config.lease_duration), 15);
        let slow = LeaderConfig { renew_period: Duration::from_secs(15), ..config.clone() };
        assert!(matches!(slow.validate(), Err(LeaderError::InvalidConfig(_))));
        // A lease longer than the bound is written as the bound: renewals must fit in that.
        let unbounded =
            LeaderConfig { lease_duration: Duration::MAX, renew_period: lease::MAX_DURATION, ..config.clone() };
        assert!(unbounded.validate().is_err());
        let anonymous = LeaderConfig { identity: String::new(), ..config };
        assert!(anonymous.validate().is_err());
    }
}
