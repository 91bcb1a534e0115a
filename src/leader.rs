//! Leader election on a coordination.k8s.io Lease, with client-go's
//! leaderelection semantics, so that of several replicas (the Helm chart can
//! run a hot standby) only one runs the controllers.
//!
//! An elector campaigns by reading the Lease and, when it is absent, has no
//! holder, or its `renewTime + leaseDurationSeconds` is in the past, writing
//! itself as the holder with the resourceVersion it just read: of several
//! electors writing at once the API server accepts one and answers the others
//! 409. The leader renews every `renew_period`, retrying every
//! `retry_period` on failure, and stops leading (cancels the token given to
//! `lead`) as soon as it sees another holder or once `lease_duration` has
//! passed since the renewal others last saw, because from then on a standby
//! may take the Lease.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    /// whole seconds, rounded up.
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
        } else if self.renew_period >= self.lease_duration {
            "renew_period must be shorter than lease_duration"
        } else {
            return Ok(());
        };
        Err(LeaderError::InvalidConfig(problem.to_string()))
    }

    /// `lease_duration` in whole seconds, rounded up so that others never
    /// see the Lease expire before this instance stops leading.
    fn lease_duration_seconds(&self) -> i32 {
        let nanos = self.lease_duration.as_nanos();
        let seconds = nanos.div_ceil(1_000_000_000).max(1);
        i32::try_from(seconds).unwrap_or(i32::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election settings: {0}")]
    InvalidConfig(String),
}

/// Why one read-and-write of the Lease failed; logged, then retried.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The outcome of one try to acquire or renew.
enum Attempt {
    /// Ours now; `previous` names the holder it was taken from.
    Held { previous: Option<String> },
    /// A live holder has it.
    HeldBy(String),
    /// Another writer got in between our read and our write.
    Conflict,
}

struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// Whether `lease` can be taken: its last renewal is older than its duration.
fn expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return true;
    };
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    // A renewTime so far ahead that adding the duration overflows is not expired.
    renewed.0.checked_add(duration).is_ok_and(|end| end < now)
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl Elector {
    fn lease_name(&self) -> &str {
        &self.config.lease_name
    }

    async fn bounded<T>(
        &self,
        limit: Duration,
        attempt: impl Future<Output = Result<T, AttemptError>>,
    ) -> Result<T, AttemptError> {
        tokio::time::timeout(limit, attempt).await.unwrap_or(Err(AttemptError::Timeout(limit)))
    }

    /// client-go's tryAcquireOrRenew: one read, then one write conditioned
    /// on the resourceVersion read. `leading` keeps the acquireTime of the
    /// current term.
    async fn try_acquire_or_renew(&self, leading: bool) -> Result<Attempt, AttemptError> {
        let now = Timestamp::now();
        let identity = self.config.identity.as_str();
        let Some(existing) = self.api.get_opt(self.lease_name()).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease_name().to_string()),
                    labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "idsync".to_string())])),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.to_string()),
                    lease_duration_seconds: Some(self.config.lease_duration_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held { previous: None }),
                Err(error) if is_conflict(&error) => Ok(Attempt::Conflict),
                Err(error) => Err(error.into()),
            };
        };
        let previous = holder(&existing).map(str::to_string);
        let ours = previous.as_deref() == Some(identity);
        if let Some(other) = previous.as_ref().filter(|_| !ours)
            && !expired(&existing, now)
        {
            return Ok(Attempt::HeldBy(other.clone()));
        }
        let mut lease = existing;
        let spec = lease.spec.get_or_insert_default();
        if !(ours && leading) {
            spec.acquire_time = Some(MicroTime(now));
        }
        if !ours {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(identity.to_string());
        spec.lease_duration_seconds = Some(self.config.lease_duration_seconds());
        spec.renew_time = Some(MicroTime(now));
        // `lease` carries the resourceVersion just read: a write in between is a 409.
        match self.api.replace(self.lease_name(), &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Held { previous: previous.filter(|_| !ours) }),
            Err(error) if is_conflict(&error) => Ok(Attempt::Conflict),
            Err(error) => Err(error.into()),
        }
    }

    /// Gives the Lease up, if still ours, by clearing its holder (as
    /// client-go's ReleaseOnCancel does), so a standby takes it on its next
    /// try instead of waiting for it to expire. True when released.
    async fn release(&self) -> Result<bool, AttemptError> {
        // A conflict means the Lease changed under us: look again.
        for _ in 0..3 {
            let Some(mut lease) = self.api.get_opt(self.lease_name()).await? else {
                return Ok(false);
            };
            if holder(&lease) != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            let now = Timestamp::now();
            let spec = lease.spec.get_or_insert_default();
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(MicroTime(now));
            spec.renew_time = Some(MicroTime(now));
            match self.api.replace(self.lease_name(), &PostParams::default(), &lease).await {
                Ok(_) => return Ok(true),
                Err(error) if is_conflict(&error) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(false)
    }
}

/// Runs `lead` whenever this instance holds the Lease.
///
/// The token given to `lead` is cancelled when leadership is lost (another
/// holder took the Lease, or no renewal succeeded for `lease_duration`) or
/// on `shutdown`; `lead` must then return. After a loss the instance
/// campaigns again, so `lead` can be called more than once. On `shutdown`
/// a leader keeps renewing until `lead` has returned, then releases the
/// Lease and `run` returns. Should `lead` return on its own while still
/// leading, the Lease is released and `run` returns as on shutdown, rather
/// than holding the Lease with nothing running under it.
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
    let elector = Elector { api: Api::namespaced(client, &config.namespace), config };
    let config = &elector.config;
    let (identity, lease, namespace) =
        (config.identity.as_str(), config.lease_name.as_str(), config.namespace.as_str());
    let mut shutdown = std::pin::pin!(shutdown);
    // `shutdown` may be polled only until it has resolved once.
    let mut shut = false;

    loop {
        // Campaign until the Lease is ours.
        let term_start = loop {
            if !shut && shutdown.as_mut().now_or_never().is_some() {
                shut = true;
            }
            if shut {
                return Ok(());
            }
            let started = Instant::now();
            match elector.bounded(config.lease_duration, elector.try_acquire_or_renew(false)).await {
                Ok(Attempt::Held { previous }) => {
                    tracing::info!(identity, lease, namespace, previous = previous.as_deref(), "became the leader");
                    break started;
                }
                Ok(Attempt::HeldBy(holder)) => tracing::debug!(identity, lease, %holder, "the lease is held"),
                Ok(Attempt::Conflict) => tracing::debug!(identity, lease, "another instance wrote the lease first"),
                Err(error) => tracing::warn!(identity, lease, namespace, %error, "could not acquire the leader lease"),
            }
            tokio::select! {
                _ = shutdown.as_mut() => shut = true,
                _ = tokio::time::sleep(config.retry_period) => {}
            }
        };

        // Lead. Others may take the Lease once lease_duration has passed
        // since the renewTime of our last successful write, which was taken
        // after `started`: stopping at started + lease_duration is never late.
        let token = CancellationToken::new();
        let mut valid_until = term_start + config.lease_duration;
        let mut next_renewal = term_start + config.renew_period;
        let mut lost = false;
        let ended_by_itself = {
            let mut leading = std::pin::pin!(lead(token.clone()));
            loop {
                tokio::select! {
                    biased;
                    _ = leading.as_mut() => break !token.is_cancelled(),
                    _ = shutdown.as_mut(), if !shut => {
                        shut = true;
                        tracing::info!(identity, lease, "shutting down: stopping the leader's work");
                        token.cancel();
                    }
                    // Renewals go on while `lead` winds down after shutdown,
                    // so no standby starts before this instance has stopped.
                    _ = tokio::time::sleep_until(next_renewal), if !lost => {
                        let started = Instant::now();
                        let remaining = valid_until.saturating_duration_since(started);
                        let attempt = if remaining.is_zero() {
                            Err(AttemptError::Timeout(config.lease_duration))
                        } else {
                            elector.bounded(remaining, elector.try_acquire_or_renew(true)).await
                        };
                        match attempt {
                            Ok(Attempt::Held { .. }) => {
                                valid_until = started + config.lease_duration;
                                next_renewal = started + config.renew_period;
                            }
                            Ok(Attempt::HeldBy(holder)) => {
                                tracing::warn!(identity, lease, %holder, "lost leadership: another instance holds the lease");
                                lost = true;
                                token.cancel();
                            }
                            failed => {
                                let now = Instant::now();
                                if now >= valid_until {
                                    let error = match failed {
                                        Err(error) => error.to_string(),
                                        _ => "conflicting writes".to_string(),
                                    };
                                    tracing::warn!(identity, lease, %error, "lost leadership: could not renew the lease in time");
                                    lost = true;
                                    token.cancel();
                                } else {
                                    if let Err(error) = failed {
                                        tracing::warn!(identity, lease, %error, "could not renew the leader lease; retrying");
                                    }
                                    next_renewal = (now + config.retry_period).min(valid_until);
                                }
                            }
                        }
                    }
                }
            }
        };

        if lost {
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
        match elector.bounded(config.lease_duration, elector.release()).await {
            Ok(true) => tracing::info!(identity, lease, "released the leader lease"),
            Ok(false) => tracing::info!(identity, lease, "the leader lease was no longer ours to release"),
            Err(error) => tracing::warn!(identity, lease, %error, "could not release the leader lease"),
        }
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: Option<Timestamp>, seconds: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed.map(MicroTime),
                lease_duration_seconds: seconds,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn expiry_follows_renew_time_and_duration() {
        let now = Timestamp::now();
        let ago = |s: i64| now - SignedDuration::from_secs(s);
        assert!(!expired(&lease(Some("a"), Some(ago(5)), Some(15)), now));
        assert!(expired(&lease(Some("a"), Some(ago(16)), Some(15)), now));
        assert!(expired(&lease(Some("a"), None, Some(15)), now));
        assert!(expired(&lease(Some("a"), Some(ago(1)), None), now));
        assert!(expired(&Lease::default(), now));
        let far = lease(Some("a"), Some(Timestamp::MAX), Some(i32::MAX));
        assert!(!expired(&far, now));
    }

    #[test]
    fn holder_ignores_an_empty_identity() {
        assert_eq!(holder(&lease(Some("a"), None, None)), Some("a"));
        assert_eq!(holder(&lease(Some(""), None, None)), None);
        assert_eq!(holder(&lease(None, None, None)), None);
    }

    #[test]
    fn config_defaults_and_validation() {
        let config = LeaderConfig::new("idsync-system", "pod-1");
        assert_eq!(config.lease_name, "idsync-leader");
        assert_eq!(
            (config.lease_duration, config.renew_period, config.retry_period),
            (Duration::from_secs(15), Duration::from_secs(5), Duration::from_secs(2))
        );
        assert!(config.validate().is_ok());
        assert_eq!(config.lease_duration_seconds(), 15);
        let fractional = LeaderConfig { lease_duration: Duration::from_millis(2500), ..config.clone() };
        assert_eq!(fractional.lease_duration_seconds(), 3);
        let slow = LeaderConfig { renew_period: Duration::from_secs(15), ..config.clone() };
        assert!(matches!(slow.validate(), Err(LeaderError::InvalidConfig(_))));
        let anonymous = LeaderConfig { identity: String::new(), ..config };
        assert!(anonymous.validate().is_err());
    }
}
