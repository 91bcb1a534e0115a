//! coordination.k8s.io Leases: the one implementation behind leader
//! election (`crate::leader`) and the per-connection sync guard
//! (`crate::controller::guard`). It reads who holds a Lease and until when,
//! acquires it, keeps it renewed under one policy, and releases it.
//!
//! It lives beside `leader` rather than in `controller` because the elector
//! runs above the controllers (it decides whether they run at all) and must
//! not depend on them; it depends on nothing of idsync's.
//!
//! The rules, client-go's where client-go has one:
//! - A Lease is held until `renewTime + leaseDurationSeconds` as written on
//!   it, judged by the reader's clock: clock skew between holder and reader
//!   shifts the moment by the skew, which is why holders renew well before.
//! - Taking a Lease (absent, without holder, or expired) is one read and one
//!   write conditioned on the resourceVersion read: of two racers the API
//!   server accepts one and answers the other 409.
//! - A holder renews with the resourceVersion of its own last write. A
//!   failed renewal is retried every retry period until the Lease lapses,
//!   and only then given up ([`after_failed_renewal`]); another holder, or a
//!   Lease deleted or released by someone else, is lost at once.
//! - Durations written are clamped to [`MIN_DURATION`]..=[`MAX_DURATION`]
//!   and rounded up to whole seconds; all time arithmetic is checked.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, ObjectMeta, PostParams};

/// The shortest lease a holder writes: a Lease records whole seconds.
pub const MIN_DURATION: Duration = Duration::from_secs(1);
/// The longest lease a holder writes: a dead holder keeps others out this long.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The shortest renew or retry period, so that no setting makes a busy loop.
const MIN_PERIOD: Duration = Duration::from_millis(10);
/// How often a write that raced another is tried again before giving up.
const CONFLICT_ATTEMPTS: usize = 3;

const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "idsync");

/// `duration` clamped to the bounds and rounded up to whole seconds, as
/// written into `leaseDurationSeconds`: rounding up never lets others see
/// the Lease lapse before its holder does.
pub fn duration_seconds(duration: Duration) -> i32 {
    let clamped = duration.clamp(MIN_DURATION, MAX_DURATION);
    let seconds = clamped.as_nanos().div_ceil(1_000_000_000);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// The longest object name Kubernetes accepts.
const MAX_NAME: usize = 253;

/// `prefix` + `name` as a Lease name: as is when it fits, else the first 200
/// bytes of `name` and a hash of all of it, so that long names stay valid
/// and distinct.
pub fn name_for(prefix: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let whole = format!("{prefix}{name}");
    if whole.len() <= MAX_NAME {
        return whole;
    }
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{prefix}{}-{hex}", &name[..end])
}

/// The holder named on `lease`; an empty identity is no holder.
pub fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// When the claim on `lease` lapses as every reader sees it: its
/// `renewTime` (or `acquireTime` if never renewed) plus its
/// `leaseDurationSeconds`, as written. None when it records no time at all.
/// A negative duration counts as none; a sum past the end of time saturates
/// (a Lease renewed in the far future is not taken from its holder).
pub fn lapses_at(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let seconds = spec.lease_duration_seconds.unwrap_or(0).max(0);
    Some(renewed.checked_add(SignedDuration::from_secs(i64::from(seconds))).unwrap_or(Timestamp::MAX))
}

/// Whether the claim on `lease` has lapsed at `now`, so anyone may take it.
pub fn expired(lease: &Lease, now: Timestamp) -> bool {
    lapses_at(lease).is_none_or(|lapse| lapse <= now)
}

/// Why a held Lease is no longer ours; callers put it in their messages.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LeaseLost {
    /// No renewal succeeded before the Lease lapsed: from then on anyone may
    /// take it, so the holder must stop.
    #[error("it lapsed at {lapsed} with no successful renewal")]
    Expired { lapsed: Timestamp },
    /// Another holder wrote itself into the Lease.
    #[error("{0} holds it now")]
    TakenBy(String),
    /// Someone else cleared its holder.
    #[error("another writer released it")]
    Released,
    /// The Lease was deleted.
    #[error("it was deleted")]
    Deleted,
}

/// When a holder renews: every `renew_period`, and after a failure every
/// `retry_period` until the Lease lapses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenewPolicy {
    pub renew_period: Duration,
    pub retry_period: Duration,
}

impl RenewPolicy {
    /// For a Lease of `duration`: renewed every third of it (two renewals
    /// may fail before it lapses), retried every tenth.
    pub fn for_duration(duration: Duration) -> RenewPolicy {
        let duration = duration.clamp(MIN_DURATION, MAX_DURATION);
        RenewPolicy { renew_period: duration / 3, retry_period: (duration / 10).max(MIN_PERIOD) }
    }
}

/// What a holder does after a failed renewal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AfterFailure {
    /// Try again at this time (never later than the lapse).
    RetryAt(Timestamp),
    /// The Lease has lapsed: stop holding it.
    GiveUp,
}

/// The renewal policy of both leader and guard: a renewal that failed at
/// `failed_at`, of a Lease that lapses at `lapses_at` (renewTime +
/// leaseDuration of our last successful write), is retried `retry_period`
/// later, or at the lapse if that is sooner; once the lapse has come the
/// holder gives up, because from then on others may take the Lease.
pub fn after_failed_renewal(failed_at: Timestamp, lapses_at: Timestamp, retry_period: Duration) -> AfterFailure {
    if failed_at >= lapses_at {
        return AfterFailure::GiveUp;
    }
    let retry = SignedDuration::try_from(retry_period.max(MIN_PERIOD)).unwrap_or(SignedDuration::MAX);
    let next = failed_at.checked_add(retry).unwrap_or(Timestamp::MAX);
    AfterFailure::RetryAt(next.min(lapses_at))
}

/// How long from `now` until `at`; zero once it has passed.
fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// What a holder writes when it takes a Lease.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The holder identity: unique per process.
    pub identity: String,
    /// How long the Lease stays held without renewal (clamped, rounded up).
    pub duration: Duration,
    /// Set on the Lease with the claim, replacing earlier values of the same
    /// keys (the guard records the request and mode it runs for here).
    pub annotations: BTreeMap<String, String>,
    /// The object the Lease belongs to, so that it is garbage-collected with
    /// it (the guard's Connection); set on every claim.
    pub owner: Option<OwnerReference>,
    /// Set on the Lease with the claim, beside `app.kubernetes.io/managed-by`
    /// (a member Lease is found by its role label).
    pub labels: BTreeMap<String, String>,
}

impl Claim {
    pub fn new(identity: impl Into<String>, duration: Duration) -> Claim {
        Claim {
            identity: identity.into(),
            duration,
            annotations: BTreeMap::new(),
            owner: None,
            labels: BTreeMap::new(),
        }
    }

    /// `lease` rewritten as claimed by us at `now`.
    fn apply(&self, lease: &mut Lease, now: Timestamp) {
        let ours = holder(lease) == Some(self.identity.as_str());
        let meta = &mut lease.metadata;
        let labels = meta.labels.get_or_insert_default();
        labels.insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
        labels.extend(self.labels.clone());
        if !self.annotations.is_empty() {
            meta.annotations.get_or_insert_default().extend(self.annotations.clone());
        }
        if let Some(owner) = &self.owner {
            let owners = meta.owner_references.get_or_insert_default();
            owners.retain(|o| o.uid != owner.uid && !(o.kind == owner.kind && o.name == owner.name));
            owners.push(owner.clone());
        }
        let spec = lease.spec.get_or_insert_default();
        if !ours {
            // client-go counts a transition whenever the holder changes.
            spec.lease_transitions = Some(spec.lease_transitions.map_or(0, |t| t.saturating_add(1)));
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_seconds(self.duration));
        spec.acquire_time = Some(MicroTime(now));
        spec.renew_time = Some(MicroTime(now));
    }
}

/// The outcome of one try to take a Lease.
#[derive(Debug)]
pub enum Acquired {
    /// Ours now. `previous` is the Lease as read before we took it when it
    /// named another holder, whose claim had lapsed.
    Taken { held: Box<Held>, previous: Option<Box<Lease>> },
    /// Another holder's claim is live: the Lease as read.
    Busy(Box<Lease>),
    /// Another writer got in between our read and our write, and no live
    /// holder shows on a second look: try again.
    Conflict,
}

/// Takes the Lease `name` for `claim` unless another holder's claim on it is
/// live: creates it when absent, else writes the claim with the
/// resourceVersion just read, so that of two racers only one succeeds.
pub async fn acquire(api: &Api<Lease>, name: &str, claim: &Claim) -> Result<Acquired, kube::Error> {
    let now = Timestamp::now();
    let written = match api.get_opt(name).await? {
        None => {
            let mut lease = Lease {
                metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() },
                spec: Some(LeaseSpec::default()),
            };
            claim.apply(&mut lease, now);
            api.create(&PostParams::default(), &lease).await.map(|written| (written, None))
        }
        Some(existing) => {
            if let Some(other) = holder(&existing)
                && other != claim.identity
                && !expired(&existing, now)
            {
                return Ok(Acquired::Busy(Box::new(existing)));
            }
            let previous = holder(&existing).filter(|h| *h != claim.identity).map(|_| Box::new(existing.clone()));
            let mut lease = existing;
            claim.apply(&mut lease, now);
            // `lease` carries the resourceVersion just read: a write in between is a 409.
            api.replace(name, &PostParams::default(), &lease).await.map(|written| (written, previous))
        }
    };
    match written {
        Ok((lease, previous)) => Ok(Acquired::Taken {
            held: Box::new(Held {
                api: api.clone(),
                name: name.to_string(),
                identity: claim.identity.clone(),
                duration_seconds: duration_seconds(claim.duration),
                lease,
            }),
            previous,
        }),
        // 409 on create is AlreadyExists, on replace a stale resourceVersion:
        // either way someone else wrote first. Say who, if they hold it now.
        Err(error) if is_status(&error, 409) => match api.get_opt(name).await? {
            Some(lease)
                if holder(&lease).is_some_and(|h| h != claim.identity) && !expired(&lease, Timestamp::now()) =>
            {
                Ok(Acquired::Busy(Box::new(lease)))
            }
            _ => Ok(Acquired::Conflict),
        },
        Err(error) => Err(error),
    }
}

/// Why one renewal did not go through.
#[derive(Debug, thiserror::Error)]
enum RenewFailed {
    #[error(transparent)]
    Lost(LeaseLost),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("other writers kept changing the Lease")]
    Contended,
    #[error("no answer before the Lease lapses")]
    Timeout,
}

/// A Lease we hold, as our last write left it.
#[derive(Debug)]
pub struct Held {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration_seconds: i32,
    /// Its resourceVersion conditions our next write.
    lease: Lease,
}

impl Held {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Lease as our last successful write left it.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// When our claim lapses as others see it; if our last write recorded
    /// no time (it always does), it has lapsed.
    pub fn lapses_at(&self) -> Timestamp {
        lapses_at(&self.lease).unwrap_or(Timestamp::MIN)
    }

    fn renewed_at(&self) -> Timestamp {
        let spec = self.lease.spec.as_ref();
        spec.and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref())).map_or(Timestamp::MIN, |t| t.0)
    }

    /// One renewal: our last write with a new renewTime, conditioned on its
    /// resourceVersion.
    async fn renew(&mut self) -> Result<(), RenewFailed> {
        for _ in 0..CONFLICT_ATTEMPTS {
            let mut lease = self.lease.clone();
            let spec = lease.spec.get_or_insert_default();
            spec.holder_identity = Some(self.identity.clone());
            spec.lease_duration_seconds = Some(self.duration_seconds);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                Ok(written) => {
                    self.lease = written;
                    return Ok(());
                }
                Err(error) if is_status(&error, 404) => return Err(RenewFailed::Lost(LeaseLost::Deleted)),
                Err(error) if is_status(&error, 409) => self.adopt_if_ours().await?,
                Err(error) => return Err(error.into()),
            }
        }
        Err(RenewFailed::Contended)
    }

    /// After a 409: the Lease changed since our last write. If it no longer
    /// names us it is lost. If it does, nobody took it (a renewal whose
    /// answer we never got, or an edit of its labels): continue from it.
    async fn adopt_if_ours(&mut self) -> Result<(), RenewFailed> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return Err(RenewFailed::Lost(LeaseLost::Deleted));
        };
        match holder(&current) {
            Some(h) if h == self.identity => {
                self.lease = current;
                Ok(())
            }
            Some(other) => Err(RenewFailed::Lost(LeaseLost::TakenBy(other.to_string()))),
            None => Err(RenewFailed::Lost(LeaseLost::Released)),
        }
    }

    /// Keeps the Lease: renews it every renew period and, after a failure,
    /// every retry period until it lapses ([`after_failed_renewal`]).
    /// Returns only once the Lease is lost, saying why; a caller that is
    /// done with the Lease drops this future (between or during renewals:
    /// a renewal cut off mid-request is recovered by the next write).
    pub async fn keep(&mut self, policy: RenewPolicy) -> LeaseLost {
        let renew_period = policy.renew_period.max(MIN_PERIOD);
        let renew_every = SignedDuration::try_from(renew_period).unwrap_or(SignedDuration::MAX);
        let mut next = self.renewed_at().checked_add(renew_every).unwrap_or(Timestamp::MAX);
        loop {
            tokio::time::sleep(until(Timestamp::now(), next)).await;
            let lapses_at = self.lapses_at();
            // A renewal still in flight when the Lease lapses is too late.
            let remaining = until(Timestamp::now(), lapses_at);
            let failed = if remaining.is_zero() {
                RenewFailed::Timeout
            } else {
                match tokio::time::timeout(remaining, self.renew()).await {
                    Ok(Ok(())) => {
                        next = self.renewed_at().checked_add(renew_every).unwrap_or(Timestamp::MAX);
                        continue;
                    }
                    Ok(Err(RenewFailed::Lost(lost))) => return lost,
                    Ok(Err(failed)) => failed,
                    Err(_) => RenewFailed::Timeout,
                }
            };
            let lapses_at = self.lapses_at();
            match after_failed_renewal(Timestamp::now(), lapses_at, policy.retry_period) {
                AfterFailure::GiveUp => return LeaseLost::Expired { lapsed: lapses_at },
                AfterFailure::RetryAt(at) => {
                    tracing::warn!(lease = %self.name, identity = %self.identity, error = %failed, lapses_at = %lapses_at,
                        "could not renew the Lease; retrying until it lapses");
                    next = at;
                }
            }
        }
    }

    /// Gives the Lease up if it still names us, by clearing its holder (as
    /// client-go's ReleaseOnCancel does) so the next claimant takes it at
    /// once instead of waiting for it to lapse. True when released.
    pub async fn release(mut self) -> Result<bool, kube::Error> {
        for _ in 0..CONFLICT_ATTEMPTS {
            let now = Timestamp::now();
            let mut lease = self.lease.clone();
            let spec = lease.spec.get_or_insert_default();
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(duration_seconds(MIN_DURATION));
            spec.acquire_time = Some(MicroTime(now));
            spec.renew_time = Some(MicroTime(now));
            match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                Ok(_) => return Ok(true),
                Err(error) if is_status(&error, 404) => return Ok(false),
                Err(error) if is_status(&error, 409) => match self.adopt_if_ours().await {
                    Ok(()) => continue,
                    Err(RenewFailed::Kube(error)) => return Err(error),
                    Err(_) => return Ok(false),
                },
                Err(error) => return Err(error),
            }
        }
        Ok(false)
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

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("a timestamp")
    }

    #[test]
    fn written_durations_are_clamped_and_rounded_up_to_whole_seconds() {
        assert_eq!(duration_seconds(Duration::from_secs(15)), 15);
        assert_eq!(duration_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(duration_seconds(Duration::from_millis(1)), 1);
        assert_eq!(duration_seconds(Duration::ZERO), 1);
        assert_eq!(duration_seconds(Duration::from_secs(86_400)), 3600);
        assert_eq!(duration_seconds(Duration::MAX), 3600);
    }

    #[test]
    fn a_lease_lapses_at_renew_time_plus_its_duration_as_written() {
        let renewed = at(0);
        assert_eq!(lapses_at(&lease(Some("a"), Some(renewed), Some(15))), Some(at(15)));
        assert!(!expired(&lease(Some("a"), Some(renewed), Some(15)), at(14)));
        // client-go: valid while the lapse is after now.
        assert!(expired(&lease(Some("a"), Some(renewed), Some(15)), at(15)));
        assert!(expired(&lease(Some("a"), Some(renewed), Some(15)), at(16)));
        // A duration longer than ours is honoured as written, not clamped.
        assert!(!expired(&lease(Some("a"), Some(renewed), Some(86_400)), at(86_399)));
    }

    #[test]
    fn acquire_time_stands_in_for_a_missing_renew_time() {
        let mut l = lease(Some("a"), None, Some(10));
        l.spec.as_mut().expect("spec").acquire_time = Some(MicroTime(at(0)));
        assert_eq!(lapses_at(&l), Some(at(10)));
    }

    #[test]
    fn odd_leases_neither_panic_nor_block_forever() {
        let now = at(0);
        assert!(expired(&lease(Some("a"), None, Some(15)), now), "no time recorded");
        assert!(expired(&lease(Some("a"), Some(at(-1)), None), now), "no duration");
        assert!(expired(&lease(Some("a"), Some(at(-1)), Some(-30)), now), "a negative duration");
        assert!(expired(&Lease::default(), now), "no spec");
        let far = lease(Some("a"), Some(Timestamp::MAX), Some(i32::MAX));
        assert_eq!(lapses_at(&far), Some(Timestamp::MAX));
        assert!(!expired(&far, now), "renewed at the end of time");
    }

    #[test]
    fn an_empty_holder_is_no_holder() {
        assert_eq!(holder(&lease(Some("a"), None, None)), Some("a"));
        assert_eq!(holder(&lease(Some(""), None, None)), None);
        assert_eq!(holder(&lease(None, None, None)), None);
        assert_eq!(holder(&Lease::default()), None);
    }

    #[test]
    fn a_failed_renewal_is_retried_every_retry_period_until_the_lease_lapses() {
        // Renewed at 0 for 15 s; retries every 2 s.
        let lapse = at(15);
        let retry = Duration::from_secs(2);
        assert_eq!(after_failed_renewal(at(5), lapse, retry), AfterFailure::RetryAt(at(7)));
        assert_eq!(after_failed_renewal(at(12), lapse, retry), AfterFailure::RetryAt(at(14)));
        // The last retry is at the lapse, never after it.
        assert_eq!(after_failed_renewal(at(14), lapse, retry), AfterFailure::RetryAt(at(15)));
        assert_eq!(after_failed_renewal(at(15), lapse, retry), AfterFailure::GiveUp);
        assert_eq!(after_failed_renewal(at(20), lapse, retry), AfterFailure::GiveUp);
    }

    #[test]
    fn the_renewal_policy_survives_extreme_periods() {
        let lapse = at(15);
        assert_eq!(after_failed_renewal(at(5), lapse, Duration::MAX), AfterFailure::RetryAt(lapse));
        let soon = after_failed_renewal(at(5), lapse, Duration::ZERO);
        assert!(matches!(soon, AfterFailure::RetryAt(t) if t > at(5) && t < lapse), "{soon:?}");
        let end = after_failed_renewal(Timestamp::MAX - SignedDuration::from_secs(1), Timestamp::MAX, Duration::MAX);
        assert_eq!(end, AfterFailure::RetryAt(Timestamp::MAX));
        assert_eq!(after_failed_renewal(at(0), Timestamp::MIN, Duration::from_secs(1)), AfterFailure::GiveUp);
    }

    #[test]
    fn a_policy_for_a_duration_renews_three_times_per_lease() {
        let policy = RenewPolicy::for_duration(Duration::from_secs(30));
        assert_eq!(policy, RenewPolicy { renew_period: Duration::from_secs(10), retry_period: Duration::from_secs(3) });
        let tiny = RenewPolicy::for_duration(Duration::ZERO);
        assert!(tiny.renew_period > tiny.retry_period && !tiny.retry_period.is_zero(), "{tiny:?}");
        let huge = RenewPolicy::for_duration(Duration::MAX);
        assert_eq!(huge.renew_period, MAX_DURATION / 3);
    }

    #[test]
    fn a_claim_takes_over_counting_transitions_and_keeps_other_metadata() {
        let mut l = lease(Some("old"), Some(at(0)), Some(5));
        l.spec.as_mut().expect("spec").lease_transitions = Some(4);
        l.metadata.annotations = Some(BTreeMap::from([("keep".to_string(), "me".to_string())]));
        let mut claim = Claim::new("new", Duration::from_millis(2500));
        claim.annotations.insert("idsync.dev/mode".to_string(), "Full".to_string());
        claim.apply(&mut l, at(100));
        let spec = l.spec.as_ref().expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("new"));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.lease_duration_seconds, Some(3));
        assert_eq!(
            (spec.acquire_time.as_ref().map(|t| t.0), spec.renew_time.as_ref().map(|t| t.0)),
            (Some(at(100)), Some(at(100)))
        );
        let annotations = l.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations.get("keep").map(String::as_str), Some("me"));
        assert_eq!(annotations.get("idsync.dev/mode").map(String::as_str), Some("Full"));
        assert_eq!(l.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).map(String::as_str), Some("idsync"));

        // Claiming again as the same holder is no transition.
        claim.apply(&mut l, at(200));
        assert_eq!(l.spec.as_ref().and_then(|s| s.lease_transitions), Some(5));
    }

    #[test]
    fn the_first_claim_is_transition_zero_and_an_owner_is_recorded_once() {
        let mut l = Lease::default();
        let mut claim = Claim::new("a", Duration::from_secs(3));
        claim.owner = Some(OwnerReference {
            api_version: "idsync.dev/v1alpha1".into(),
            kind: "Connection".into(),
            name: "hr".into(),
            uid: "u-1".into(),
            ..Default::default()
        });
        claim.apply(&mut l, at(0));
        claim.apply(&mut l, at(1));
        assert_eq!(l.spec.as_ref().and_then(|s| s.lease_transitions), Some(0));
        assert_eq!(l.metadata.owner_references.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn losses_say_why() {
        assert_eq!(LeaseLost::TakenBy("pod-2".into()).to_string(), "pod-2 holds it now");
        assert!(LeaseLost::Expired { lapsed: at(0) }.to_string().contains("lapsed"));
        assert_eq!(LeaseLost::Deleted.to_string(), "it was deleted");
    }
}
