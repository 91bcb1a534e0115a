//! The durable in-progress guard: one coordination.k8s.io Lease per
//! connection, taken when this instance first reconciles or syncs the
//! connection and kept, renewed on a timer, for as long as it leads (see
//! `runner::Runner::hold_guard`). Because it lives in the cluster, another
//! replica never syncs a connection whose guard is held, and a restarted
//! operator never leaves it held forever: a holder that stopped renewing is
//! expired, and whoever takes the Lease over marks the dead holder's run
//! Interrupted when the Connection's status shows it was syncing.
//!
//! Kept rather than taken and given back per sync, so a sync writes no
//! Lease at all: the renewals are a steady cost per connection and unit of
//! time, not per sync. The guard is given back on shutdown.
//!
//! Acquiring, renewing, releasing and expiry are `crate::lease`'s; this
//! module adds names and owners. A guard Lease is owned by its Connection,
//! so it is garbage-collected with it. What a holder is running (request,
//! mode, since when) is in the Connection's `status.currentSync`, not on
//! the Lease, which would cost two writes per sync to keep current.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::Api;

use super::Error;
use crate::lease::{self, Claim, Held, RenewPolicy};
use idsync_api::Connection;

/// Tries to take a guard when other writers keep getting in first.
const ACQUIRE_ATTEMPTS: usize = 3;
/// The longest object name Kubernetes accepts.
#[cfg(test)]
const MAX_NAME: usize = 253;

/// Who holds a connection's guard, and what it runs there if known.
#[derive(Clone, Debug, PartialEq)]
pub struct Holder {
    pub identity: String,
    /// The ResyncRequest its sync runs for.
    pub request: Option<String>,
    /// The mode of its sync; empty when no running sync is known (another
    /// instance holding the guard, its sync not in the Connection's status).
    pub mode: String,
    pub since: Timestamp,
}

/// The outcome of trying to take a guard.
#[derive(Debug)]
pub enum Acquired {
    /// Taken; `expired` names a previous holder that died holding it.
    Taken { lease: Box<Held>, expired: Option<Holder> },
    /// A live holder has it.
    Busy(Holder),
}

/// The name of a connection's guard Lease.
pub fn lease_name(connection: &str) -> String {
    lease::name_for("idsync-sync-", connection)
}

/// How a guard of `duration` is renewed: three times per lease, retried
/// every tenth of it (see `lease::after_failed_renewal`).
pub fn renew_policy(duration: Duration) -> RenewPolicy {
    RenewPolicy::for_duration(duration)
}

/// The guard Lease's owner: its Connection, so the Lease goes when the
/// Connection does. Not blocking the owner's deletion, which would need
/// rights on the Connection's finalizers.
pub fn owner(connection: &Connection) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: Connection::api_version(&()).into_owned(),
        kind: Connection::kind(&()).into_owned(),
        name: connection.metadata.name.clone()?,
        uid: connection.metadata.uid.clone()?,
        ..Default::default()
    })
}

/// The holder named on a guard Lease, if any, since it took it.
fn holder_of(lease: &Lease) -> Option<Holder> {
    let identity = lease::holder(lease)?.to_string();
    Some(Holder {
        identity,
        request: None,
        mode: String::new(),
        since: lease.spec.as_ref().and_then(|s| s.acquire_time.as_ref()).map_or_else(Timestamp::now, |t| t.0),
    })
}

/// What a guard taker writes.
pub struct GuardClaim<'a> {
    pub identity: &'a str,
    pub duration: Duration,
    pub owner: Option<OwnerReference>,
}

/// Takes the guard of `connection`, unless a live holder has it.
pub async fn acquire(api: &Api<Lease>, connection: &str, guard: GuardClaim<'_>) -> Result<Acquired, Error> {
    let name = lease_name(connection);
    let claim = Claim { owner: guard.owner, ..Claim::new(guard.identity, guard.duration) };
    for _ in 0..ACQUIRE_ATTEMPTS {
        match lease::acquire(api, &name, &claim).await.map_err(Error::Kube)? {
            lease::Acquired::Taken { held, previous } => {
                let expired = previous.as_deref().and_then(holder_of);
                return Ok(Acquired::Taken { lease: held, expired });
            }
            lease::Acquired::Busy(lease) => {
                if let Some(holder) = holder_of(&lease) {
                    return Ok(Acquired::Busy(holder));
                }
            }
            lease::Acquired::Conflict => {}
        }
    }
    Err(Error::Conflict(format!("the sync guard {name} kept changing while it was being taken")))
}

/// Who holds the guard of `connection` now, if anyone does whose claim has
/// not lapsed (a look, not a claim).
pub async fn live_holder(api: &Api<Lease>, connection: &str) -> Result<Option<String>, Error> {
    let found = api.get_opt(&lease_name(connection)).await.map_err(Error::Kube)?;
    Ok(found.filter(|l| !lease::expired(l, Timestamp::now())).and_then(|l| lease::holder(&l).map(str::to_string)))
}

/// Gives a finished sync's guard back, if it is still ours.
pub async fn release(held: Held) {
    let name = held.name().to_string();
    match held.release().await {
        Ok(true) => tracing::debug!(lease = %name, "released the sync guard"),
        Ok(false) => tracing::debug!(lease = %name, "the sync guard was no longer ours to release"),
        Err(error) => tracing::warn!(%error, lease = %name, "could not release the sync guard; it lapses on its own"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::ObjectMeta;

    #[test]
    fn lease_names_stay_valid_and_unique_for_long_connection_names() {
        assert_eq!(lease_name("hr"), "idsync-sync-hr");
        let long_a = format!("{}a", "x".repeat(252));
        let long_b = format!("{}b", "x".repeat(252));
        let (a, b) = (lease_name(&long_a), lease_name(&long_b));
        assert!(a.len() <= MAX_NAME && b.len() <= MAX_NAME, "{} {}", a.len(), b.len());
        assert_ne!(a, b);
        // Not a Kubernetes name, but no panic on a character boundary either.
        assert!(lease_name(&"é".repeat(200)).len() <= MAX_NAME);
    }

    #[test]
    fn the_holder_is_who_the_lease_names_since_it_took_it() {
        let lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some("pod-1".into()),
                acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }),
        };
        let holder = holder_of(&lease).expect("a holder");
        assert_eq!(holder.identity, "pod-1");
        assert_eq!((holder.request, holder.mode.as_str()), (None, ""), "what it runs is not on the Lease");
        assert_eq!(holder.since, Timestamp::UNIX_EPOCH);

        let released = Lease { spec: Some(LeaseSpec::default()), ..lease };
        assert_eq!(holder_of(&released), None);
    }

    #[test]
    fn the_owner_is_the_connection_without_blocking_its_deletion() {
        let mut connection = Connection::test("hr").build();
        connection.metadata.uid = Some("u-1".into());
        let owner = owner(&connection).expect("an owner");
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Connection", "hr", "u-1"));
        assert_eq!(owner.block_owner_deletion, None);
        connection.metadata.uid = None;
        assert_eq!(super::owner(&connection), None);
    }
}
