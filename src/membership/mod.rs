//! Which operator replicas are alive, and which of them owns what: the
//! basis of active replicas sharing one store (see `docs/replicas.md`).
//!
//! Each replica holds a member Lease, `idsync-member-<identity>` in the
//! operator's namespace (labelled `idsync.dev/role=member`), kept under
//! `crate::lease`'s renewal policy and released on a graceful stop. Every
//! renew period it lists the member Leases: a member is live while its
//! Lease names a holder and has not lapsed (by this reader's clock, as for
//! every Lease). The live set is published on a `watch` channel; keys
//! (`connection/ns/name`, …) go to their owner by rendezvous hashing over
//! it ([`rendezvous`]), so every replica that sees the same members agrees
//! on owners without talking to the others.
//!
//! Ownership only says who should act; it is not a lock. Two replicas can
//! disagree for a moment (one has listed a new member, the other not yet),
//! so whatever must not run twice is still guarded by a Lease of its own
//! (a connection's sync guard, a profile's processing Lease).
//!
//! Like `lease` and `leader`, this depends on nothing of the controllers.

pub mod rendezvous;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams};
use tokio::sync::watch;

use crate::lease::{self, Acquired, Claim, RenewPolicy};

/// The label that marks member Leases, and its value.
pub const ROLE_LABEL: (&str, &str) = ("idsync.dev/role", "member");
/// The label every idsync member Lease carries, as the chart labels its objects.
pub const NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "idsync");

/// The owner key of a Connection.
pub fn connection_key(namespace: &str, name: &str) -> String {
    format!("connection/{namespace}/{name}")
}

/// The owner key of an IdentityProfile.
pub fn profile_key(namespace: &str, name: &str) -> String {
    format!("profile/{namespace}/{name}")
}

/// The owner key of a ResyncRequest.
pub fn request_key(namespace: &str, name: &str) -> String {
    format!("request/{namespace}/{name}")
}

/// The live members as this replica last saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    live: BTreeSet<String>,
    /// This replica's identity while it holds its member Lease; a replica
    /// that has not joined (or lost its Lease) owns nothing.
    me: Option<String>,
}

impl Members {
    /// `live` as seen by `me` (None: not a member now).
    pub fn new(live: impl IntoIterator<Item = String>, me: Option<String>) -> Members {
        let mut live: BTreeSet<String> = live.into_iter().collect();
        if let Some(me) = &me {
            // Our own Lease is held by our own renewals, whatever a list
            // read a moment ago.
            live.insert(me.clone());
        }
        Members { live, me }
    }

    /// The member that owns `key`, if there is any member.
    pub fn owner(&self, key: &str) -> Option<&str> {
        rendezvous::owner(self.live.iter().map(String::as_str), key)
    }

    /// Whether this replica owns `key`.
    pub fn owns(&self, key: &str) -> bool {
        self.me.as_deref().is_some_and(|me| self.owner(key) == Some(me))
    }

    pub fn live(&self) -> &BTreeSet<String> {
        &self.live
    }

    pub fn joined(&self) -> bool {
        self.me.is_some()
    }
}

/// Where and how a replica takes part.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// The operator's namespace, where the member Leases are.
    pub namespace: String,
    /// This replica's identity (unique per process).
    pub identity: String,
    /// How long a member Lease stays held without renewal: how long a dead
    /// replica keeps its share of the work before the others take it.
    pub lease_duration: Duration,
    /// The Pod the member Lease belongs to, so that a crashed replica's
    /// Lease is garbage-collected with its Pod (`POD_NAME` and `POD_UID`).
    pub owner: Option<OwnerReference>,
}

impl MembershipConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>, lease_duration: Duration) -> Self {
        MembershipConfig { namespace: namespace.into(), identity: identity.into(), lease_duration, owner: pod_owner() }
    }

    /// Renewed three times per Lease, and the members listed as often.
    pub fn policy(&self) -> RenewPolicy {
        RenewPolicy::for_duration(self.lease_duration)
    }
}

/// This Pod, from the downward API's `POD_NAME` and `POD_UID`, when both are set.
fn pod_owner() -> Option<OwnerReference> {
    let name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty())?;
    let uid = std::env::var("POD_UID").ok().filter(|u| !u.is_empty())?;
    Some(OwnerReference { api_version: "v1".into(), kind: "Pod".into(), name, uid, ..Default::default() })
}

/// The name of the member Lease of `identity`: a valid object name whatever
/// the identity holds (lowercased, anything but `[a-z0-9-]` replaced).
pub fn lease_name(identity: &str) -> String {
    let cleaned: String = identity
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' { c } else { '-' })
        .collect();
    let trimmed = cleaned.trim_matches('-');
    lease::name_for("idsync-member-", if trimmed.is_empty() { "unnamed" } else { trimmed })
}

/// The live members among `leases` at `now`: the holders of those that
/// name one and have not lapsed.
pub fn live_members(leases: &[Lease], now: Timestamp) -> BTreeSet<String> {
    leases.iter().filter(|l| !lease::expired(l, now)).filter_map(|l| lease::holder(l).map(str::to_string)).collect()
}

/// Takes part until `shutdown`: holds the member Lease, lists the members
/// every renew period and publishes them on `members`. A Lease lost (it
/// lapsed while the API server was unreachable, someone deleted it) is
/// published at once as "not a member" (this replica then owns nothing),
/// and taken again. On `shutdown` the Lease is released, so the others
/// take this replica's share at once, and "not a member" is published.
pub async fn run(
    client: kube::Client,
    config: MembershipConfig,
    members: watch::Sender<Members>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let name = lease_name(&config.identity);
    let mut claim = Claim::new(config.identity.clone(), config.lease_duration);
    claim.labels = BTreeMap::from([
        (ROLE_LABEL.0.to_string(), ROLE_LABEL.1.to_string()),
        (NAME_LABEL.0.to_string(), NAME_LABEL.1.to_string()),
    ]);
    claim.owner = config.owner.clone();
    let policy = config.policy();
    let identity = config.identity.as_str();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shut = false;
    let leave = |members: &watch::Sender<Members>| {
        members.send_if_modified(|m| {
            let left = Members::new(m.live.iter().filter(|l| *l != identity).cloned(), None);
            std::mem::replace(m, left) != *m
        });
    };

    loop {
        // Join: our Lease is ours alone (its name is our identity's), so
        // "busy" means a previous holder of the same identity whose claim
        // has not lapsed yet.
        let mut held = loop {
            if !shut && shutdown.as_mut().now_or_never().is_some() {
                shut = true;
            }
            if shut {
                return;
            }
            let attempt = tokio::time::timeout(config.lease_duration, lease::acquire(&api, &name, &claim)).await;
            match attempt {
                Ok(Ok(Acquired::Taken { held, .. })) => break held,
                Ok(Ok(Acquired::Busy(current))) => {
                    tracing::warn!(identity, lease = %name, holder = lease::holder(&current), "the member Lease is held; waiting for it to lapse")
                }
                Ok(Ok(Acquired::Conflict)) => {}
                Ok(Err(error)) => tracing::warn!(identity, lease = %name, %error, "could not take the member Lease"),
                Err(_) => tracing::warn!(identity, lease = %name, "could not take the member Lease: no answer in time"),
            }
            tokio::select! {
                _ = shutdown.as_mut() => shut = true,
                _ = tokio::time::sleep(policy.retry_period) => {}
            }
        };
        tracing::info!(identity, lease = %name, "joined the operator's replicas");

        let lost = {
            let mut keeping = std::pin::pin!(held.keep(policy));
            let mut ticker = tokio::time::interval(policy.renew_period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.as_mut(), if !shut => {
                        shut = true;
                        break None;
                    }
                    reason = keeping.as_mut() => break Some(reason),
                    _ = ticker.tick() => {
                        let listed = api.list(&ListParams::default().labels(&format!("{}={}", ROLE_LABEL.0, ROLE_LABEL.1))).await;
                        match listed {
                            Ok(list) => {
                                let seen = Members::new(live_members(&list.items, Timestamp::now()), Some(config.identity.clone()));
                                members.send_if_modified(|m| {
                                    if *m == seen {
                                        return false;
                                    }
                                    tracing::info!(identity, members = ?seen.live, "the operator's live replicas changed");
                                    *m = seen;
                                    true
                                });
                            }
                            Err(error) => tracing::warn!(identity, %error, "could not list the operator's replicas"),
                        }
                    }
                }
            }
        };
        leave(&members);
        match lost {
            Some(reason) => {
                tracing::warn!(identity, lease = %name, %reason, "lost the member Lease; owning nothing until it is taken again")
            }
            None => {
                match tokio::time::timeout(config.lease_duration, held.release()).await {
                    Ok(Ok(_)) => tracing::info!(identity, lease = %name, "left the operator's replicas"),
                    Ok(Err(error)) => {
                        tracing::warn!(identity, %error, "could not release the member Lease; it lapses on its own")
                    }
                    Err(_) => {
                        tracing::warn!(identity, "could not release the member Lease in time; it lapses on its own")
                    }
                }
                return;
            }
        }
    }
}

/// A stream that yields once per change of `members`: what makes the
/// controllers look at every object again when owners move.
pub fn changes(members: watch::Receiver<Members>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(members, |mut rx| async move { rx.changed().await.ok().map(|()| ((), rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::ObjectMeta;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("a timestamp")
    }

    fn member(holder: Option<&str>, renewed: i64, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: Some(MicroTime(at(renewed))),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_member_is_live_while_its_lease_is_held_and_not_lapsed() {
        let leases = [
            member(Some("pod-a"), 0, 15),
            // Renewed 16 s ago for 15 s: lapsed, that replica died.
            member(Some("pod-b"), -16, 15),
            // Released on a graceful stop.
            member(None, 0, 1),
            member(Some("pod-c"), -10, 15),
        ];
        let live = live_members(&leases, at(0));
        assert_eq!(live.into_iter().collect::<Vec<_>>(), ["pod-a", "pod-c"]);
        // Five seconds on, pod-c's lapses too (at renewTime + duration exactly).
        assert_eq!(live_members(&leases, at(5)).into_iter().collect::<Vec<_>>(), ["pod-a"]);
    }

    #[test]
    fn a_replica_owns_only_while_it_is_a_member() {
        let joined = Members::new(["pod-b".to_string()], Some("pod-a".to_string()));
        assert_eq!(joined.live().len(), 2, "itself counted even before a list shows it");
        let keys: Vec<String> = (0..50).map(|i| connection_key("default", &format!("c{i}"))).collect();
        let mine = keys.iter().filter(|k| joined.owns(k)).count();
        assert!(mine > 0 && mine < keys.len(), "owns {mine} of {}", keys.len());
        for key in &keys {
            assert_eq!(joined.owns(key), joined.owner(key) == Some("pod-a"));
        }
        let left = Members::new(["pod-a".to_string(), "pod-b".to_string()], None);
        assert!(keys.iter().all(|k| !left.owns(k)), "a replica that is not a member owns nothing");
        assert!(!Members::default().joined());
    }

    #[test]
    fn member_lease_names_are_valid_object_names() {
        assert_eq!(lease_name("operator-a"), "idsync-member-operator-a");
        assert_eq!(lease_name("Pod_1.example-3f2a1c"), "idsync-member-pod-1-example-3f2a1c");
        assert_eq!(lease_name("--"), "idsync-member-unnamed");
        assert!(lease_name(&"x".repeat(400)).len() <= 253);
    }
}
