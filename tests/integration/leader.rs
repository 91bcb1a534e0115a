//! Leader election against the devcluster: one leader of two, handover on a
//! graceful shutdown, takeover only after expiry when the leader dies, a live
//! holder is left alone, leadership regained after it was lost, renewal
//! failures ridden out while the lease holds, and leadership given up once
//! it lapses.
//!
//! No assertion is on how long something took: a busy machine makes
//! everything slower. They are on order (who led when, against what the
//! Lease said) and on state; timeouts only guard against hangs, and lease
//! durations are long wherever a slow machine could otherwise let a lease
//! lapse that the test means to stay held.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::faults::LeaseFaults;
use common::{Harness, eventually};
use idsync::leader::{self, LeaderConfig, LeaderError};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "default";
const LEASE: &str = "idsync-leader";
const LEASE_DURATION: Duration = Duration::from_secs(2);
const RENEW: Duration = Duration::from_millis(500);
const RETRY: Duration = Duration::from_millis(200);
/// How long a test waits for something that should happen within a few
/// renewals: only a guard against hanging.
const PATIENCE: Duration = Duration::from_secs(30);
/// A lease no test outlives, so that its expiry cannot be what let
/// something happen.
const LONG_LEASE: Duration = Duration::from_secs(120);

fn config(identity: &str) -> LeaderConfig {
    config_for(identity, LEASE_DURATION)
}

fn config_for(identity: &str, lease_duration: Duration) -> LeaderConfig {
    LeaderConfig {
        namespace: NAMESPACE.to_string(),
        lease_name: LEASE.to_string(),
        identity: identity.to_string(),
        lease_duration,
        renew_period: RENEW,
        retry_period: RETRY,
    }
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).expect("duration")
}

/// How many electors lead right now, and the most that ever did at once.
#[derive(Clone, Default)]
struct Leaders {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

/// Counts a leader out when its `lead` returns or is dropped (task aborted).
struct Leading(Arc<AtomicUsize>);

impl Drop for Leading {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// When a term began and, once over, when its token was cancelled.
#[derive(Clone, Debug)]
struct Term {
    started: Instant,
    started_wall: Timestamp,
    ended: Option<Instant>,
    ended_wall: Option<Timestamp>,
}

struct Elector {
    terms: Arc<Mutex<Vec<Term>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), LeaderError>>,
}

impl Elector {
    fn start(h: &Harness, identity: &str, leaders: &Leaders) -> Elector {
        Self::start_with(operator_client(h), config(identity), leaders)
    }

    fn start_with(client: kube::Client, config: LeaderConfig, leaders: &Leaders) -> Elector {
        let terms = Arc::new(Mutex::new(Vec::<Term>::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let lead = {
            let terms = terms.clone();
            let leaders = leaders.clone();
            move |token: CancellationToken| {
                let terms = terms.clone();
                let leaders = leaders.clone();
                async move {
                    let at_once = leaders.now.fetch_add(1, Ordering::SeqCst) + 1;
                    let _leading = Leading(leaders.now.clone());
                    leaders.most.fetch_max(at_once, Ordering::SeqCst);
                    let term =
                        Term { started: Instant::now(), started_wall: Timestamp::now(), ended: None, ended_wall: None };
                    let index = {
                        let mut terms = terms.lock().expect("terms");
                        terms.push(term);
                        terms.len() - 1
                    };
                    token.cancelled().await;
                    let mut terms = terms.lock().expect("terms");
                    terms[index].ended = Some(Instant::now());
                    terms[index].ended_wall = Some(Timestamp::now());
                }
            }
        };
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(leader::run(client, config, lead, shutdown));
        Elector { terms, stop: Some(stop), task }
    }

    fn terms(&self) -> Vec<Term> {
        self.terms.lock().expect("terms").clone()
    }

    fn led(&self) -> usize {
        self.terms.lock().expect("terms").len()
    }

    async fn wait_to_lead(&self) -> Term {
        self.wait_for_term(0).await
    }

    /// The `index`th term (from 0), once it has begun.
    async fn wait_for_term(&self, index: usize) -> Term {
        let terms = &self.terms;
        eventually(PATIENCE, || async move { terms.lock().expect("terms").get(index).cloned() })
            .await
            .unwrap_or_else(|| panic!("term {index} never began"))
    }

    /// The `index`th term, once it has ended.
    async fn wait_for_end(&self, index: usize) -> Term {
        let terms = &self.terms;
        eventually(PATIENCE, || async move {
            terms.lock().expect("terms").get(index).filter(|t| t.ended.is_some()).cloned()
        })
        .await
        .unwrap_or_else(|| panic!("term {index} never ended"))
    }

    /// Shuts down gracefully: `run` returns once `lead` has.
    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(PATIENCE, &mut self.task).await.expect("run returns on shutdown");
        result.expect("task").expect("run");
    }
}

async fn no_leader_now(leaders: &Leaders) {
    eventually(PATIENCE, || async { (leaders.now.load(Ordering::SeqCst) == 0).then_some(()) })
        .await
        .expect("a lead still running");
}

async fn read_lease(h: &Harness) -> Lease {
    Api::<Lease>::namespaced(h.client.clone(), NAMESPACE).get(LEASE).await.expect("the lease")
}

fn spec(lease: &Lease) -> LeaseSpec {
    lease.spec.clone().expect("spec")
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_electors_exactly_one_leads() {
    let h = Harness::start().await;
    let leaders = Leaders::default();
    // Long enough that only a leader stalled for seconds would lose it.
    let lease_duration = Duration::from_secs(4);
    let a = Elector::start_with(operator_client(&h), config_for("a", lease_duration), &leaders);
    let b = Elector::start_with(operator_client(&h), config_for("b", lease_duration), &leaders);
    let (a_ref, b_ref) = (&a, &b);
    eventually(PATIENCE, || async move { (a_ref.led() + b_ref.led() > 0).then_some(()) }).await.expect("someone leads");
    // Several renewals and more than a lease duration: the standby must not
    // take over from a leader that keeps renewing.
    tokio::time::sleep(lease_duration + RENEW).await;
    assert_eq!(leaders.most.load(Ordering::SeqCst), 1, "two leaders at once");
    assert_eq!(leaders.now.load(Ordering::SeqCst), 1);
    assert_eq!(a.led() + b.led(), 1, "leadership changed hands: a {:?}, b {:?}", a.terms(), b.terms());
    let winner = if a.led() == 1 { "a" } else { "b" };

    let lease = spec(&read_lease(&h).await);
    assert_eq!(lease.holder_identity.as_deref(), Some(winner));
    assert_eq!(lease.lease_duration_seconds, Some(4));
    assert_eq!(lease.lease_transitions, Some(0));
    let renewed = lease.renew_time.expect("renewTime").0;
    let acquired = lease.acquire_time.expect("acquireTime").0;
    assert!(renewed > acquired, "renewals move renewTime only: {acquired} {renewed}");

    tokio::join!(a.shut_down(), b.shut_down());
    assert_eq!(leaders.now.load(Ordering::SeqCst), 0);
    assert_eq!(leaders.most.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_shutdown_hands_over_at_once() {
    let h = Harness::start().await;
    let leaders = Leaders::default();
    // The lease outlives the test: the standby can lead only because the
    // leader released it, not because it expired.
    let a = Elector::start_with(operator_client(&h), config_for("a", LONG_LEASE), &leaders);
    a.wait_to_lead().await;
    let b = Elector::start_with(operator_client(&h), config_for("b", LONG_LEASE), &leaders);
    tokio::time::sleep(RENEW).await;
    assert_eq!(b.led(), 0, "the standby took a held lease");

    let terms = a.terms.clone();
    a.shut_down().await;
    let a_ended = terms.lock().expect("terms")[0].ended.expect("a's lead returned");
    let b_term = b.wait_to_lead().await;
    assert!(b_term.started >= a_ended, "b led before a stopped");
    let released_lease_still_valid = terms.lock().expect("terms")[0].started_wall + signed(LONG_LEASE);
    assert!(b_term.started_wall < released_lease_still_valid, "b waited for the released lease to expire");
    assert_eq!(leaders.most.load(Ordering::SeqCst), 1);

    let lease = spec(&read_lease(&h).await);
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));
    assert_eq!(lease.lease_duration_seconds, Some(120));

    b.shut_down().await;
    let lease = spec(&read_lease(&h).await);
    assert_eq!(lease.holder_identity, None, "released on shutdown");
    assert_eq!(lease.lease_transitions, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_leader_is_replaced_only_after_its_lease_expires() {
    let h = Harness::start().await;
    let leaders = Leaders::default();
    let a = Elector::start(&h, "a", &leaders);
    a.wait_to_lead().await;
    let b = Elector::start(&h, "b", &leaders);
    tokio::time::sleep(RENEW + RETRY).await;

    // The leader dies: no release, no more renewals.
    a.task.abort();
    assert!(a.task.await.expect_err("aborted").is_cancelled());
    let last = spec(&read_lease(&h).await);
    assert_eq!(last.holder_identity.as_deref(), Some("a"));
    let last_renewal = last.renew_time.expect("renewTime").0;

    let b_term = b.wait_to_lead().await;
    assert!(
        b_term.started_wall >= last_renewal + signed(LEASE_DURATION),
        "b led at {} though a renewed at {last_renewal}",
        b_term.started_wall
    );

    let lease = spec(&read_lease(&h).await);
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));
    assert!(lease.acquire_time.expect("acquireTime").0 > last_renewal);
    b.shut_down().await;
}

fn held_by(holder: &str, transitions: i32, duration_seconds: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.to_string()),
        lease_duration_seconds: Some(duration_seconds),
        acquire_time: Some(MicroTime(Timestamp::now())),
        renew_time: Some(MicroTime(Timestamp::now())),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_holder_is_not_stolen_from() {
    let h = Harness::start().await;
    let api = Api::<Lease>::namespaced(h.client.clone(), NAMESPACE);
    // Three seconds: the test's own renewals below would have to stall that
    // long for the lease to lapse while it means to hold it.
    let other_duration = 3;
    let lease = Lease {
        metadata: ObjectMeta { name: Some(LEASE.to_string()), ..Default::default() },
        spec: Some(held_by("other", 4, other_duration)),
    };
    api.create(&PostParams::default(), &lease).await.expect("create");
    let leaders = Leaders::default();
    let a = Elector::start(&h, "a", &leaders);

    // The other holder keeps renewing for longer than its lease duration.
    let renewing_until = Instant::now() + Duration::from_secs(other_duration as u64) + RENEW;
    let mut last_renewal = Timestamp::now();
    while Instant::now() < renewing_until {
        let mut lease = api.get(LEASE).await.expect("get");
        last_renewal = Timestamp::now();
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(last_renewal));
        }
        api.replace(LEASE, &PostParams::default(), &lease).await.expect("renew");
        tokio::time::sleep(RENEW).await;
        assert_eq!(a.led(), 0, "took a lease its holder renews");
    }
    let lease = spec(&read_lease(&h).await);
    assert_eq!((lease.holder_identity.as_deref(), lease.lease_transitions), (Some("other"), Some(4)));

    // Once the holder stops renewing its lease expires and is taken over.
    let term = a.wait_to_lead().await;
    assert!(
        term.started_wall >= last_renewal + SignedDuration::from_secs(i64::from(other_duration)),
        "took over at {} a lease renewed at {last_renewal}",
        term.started_wall
    );
    let lease = spec(&read_lease(&h).await);
    assert_eq!((lease.holder_identity.as_deref(), lease.lease_transitions), (Some("a"), Some(5)));
    a.shut_down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leadership_lost_to_another_holder_is_regained_later() {
    let h = Harness::start().await;
    let api = Api::<Lease>::namespaced(h.client.clone(), NAMESPACE);
    let leaders = Leaders::default();
    let a = Elector::start(&h, "a", &leaders);
    a.wait_to_lead().await;

    // Someone else writes itself into the Lease (as after a partition), for
    // longer than the test lasts.
    let mut lease = api.get(LEASE).await.expect("get");
    let transitions = spec(&lease).lease_transitions.unwrap_or(0);
    lease.spec = Some(held_by("intruder", transitions + 1, LONG_LEASE.as_secs() as i32));
    let lease = api.replace(LEASE, &PostParams::default(), &lease).await.expect("take the lease");

    // The leader sees it at its next renewal and stops, not waiting for
    // anything to expire.
    let ended = a.wait_for_end(0).await;
    no_leader_now(&leaders).await;
    assert_eq!(a.led(), 1, "led again while the intruder held the lease");

    // The intruder renews once more with a one-second lease and then never
    // again; the leader leads again once that has expired.
    let mut lease = lease;
    lease.spec = Some(held_by("intruder", transitions + 1, 1));
    let lease = api.replace(LEASE, &PostParams::default(), &lease).await.expect("renew");
    let intruder_renewed = spec(&lease).renew_time.expect("renewTime").0;
    let again = a.wait_for_term(1).await;
    assert!(again.started > ended.ended.expect("ended"));
    assert!(
        again.started_wall >= intruder_renewed + SignedDuration::from_secs(1),
        "took at {} a lease renewed at {intruder_renewed} for a second",
        again.started_wall
    );
    let lease = spec(&read_lease(&h).await);
    assert_eq!((lease.holder_identity.as_deref(), lease.lease_transitions), (Some("a"), Some(2)));
    a.shut_down().await;
    assert_eq!(leaders.most.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn work_that_ends_on_its_own_gives_up_the_lease() {
    let h = Harness::start().await;
    let lead = |_token: CancellationToken| async {};
    let run = leader::run(operator_client(&h), config("a"), lead, std::future::pending());
    tokio::time::timeout(PATIENCE, run).await.expect("run returns").expect("run");
    let lease = spec(&read_lease(&h).await);
    assert_eq!(lease.holder_identity, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_settings_are_refused() {
    let h = Harness::start().await;
    let config = LeaderConfig { renew_period: LEASE_DURATION, ..config("a") };
    let lead = |_token: CancellationToken| async {};
    let error = leader::run(h.client.clone(), config, lead, std::future::pending()).await.expect_err("refused");
    assert!(matches!(error, LeaderError::InvalidConfig(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_rides_out_renewal_failures_while_its_lease_holds() {
    let h = Harness::start().await;
    let (client, faults) = LeaseFaults::client(&h.cluster, LEASE);
    let leaders = Leaders::default();
    // Renewed every 500 ms, retried every 200 ms: the two failures below
    // are over long before a 20 s lease could lapse.
    let a = Elector::start_with(client, config_for("a", Duration::from_secs(20)), &leaders);
    a.wait_to_lead().await;
    let before = spec(&read_lease(&h).await).renew_time.expect("renewTime").0;

    faults.fail_next(2);
    let faults_ref = &faults;
    eventually(PATIENCE, || async move {
        (faults_ref.failed() == 2 && faults_ref.passed_after_failure() > 0).then_some(())
    })
    .await
    .expect("two renewals failed, then one went through");
    let lease = spec(&read_lease(&h).await);
    assert!(lease.renew_time.expect("renewTime").0 > before, "no renewal after the failures");
    assert_eq!(lease.holder_identity.as_deref(), Some("a"));
    let terms = a.terms();
    assert_eq!(terms.len(), 1, "{terms:?}");
    assert!(terms[0].ended.is_none(), "stopped leading at a failed renewal");

    a.shut_down().await;
    assert_eq!(spec(&read_lease(&h).await).holder_identity, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_renewals_keep_failing_steps_down_once_its_lease_lapses() {
    let h = Harness::start().await;
    let (client, faults) = LeaseFaults::client(&h.cluster, LEASE);
    let leaders = Leaders::default();
    let a = Elector::start_with(client, config("a"), &leaders);
    a.wait_to_lead().await;

    // Every write to the Lease fails from now on, so its last renewal stays
    // on it: the leader must keep going until that lapses, and stop then.
    faults.fail_all(true);
    let ended = a.wait_for_end(0).await;
    let last = spec(&read_lease(&h).await);
    assert_eq!(last.holder_identity.as_deref(), Some("a"));
    let lapsed = last.renew_time.expect("renewTime").0
        + SignedDuration::from_secs(i64::from(last.lease_duration_seconds.expect("duration")));
    let ended_wall = ended.ended_wall.expect("ended");
    assert!(ended_wall >= lapsed, "stopped leading at {ended_wall}, before the lease lapsed at {lapsed}");
    assert!(faults.failed() >= 2, "gave up after {} failed renewal(s) without retrying", faults.failed());
    no_leader_now(&leaders).await;

    // Once the API takes writes again, it campaigns and leads again.
    faults.fail_all(false);
    a.wait_for_term(1).await;
    assert_eq!(spec(&read_lease(&h).await).holder_identity.as_deref(), Some("a"));
    a.shut_down().await;
    assert_eq!(leaders.most.load(Ordering::SeqCst), 1);
}

/// A client with the chart's permissions, as the operator's pod has.
fn operator_client(h: &Harness) -> kube::Client {
    h.cluster.client_as(common::rbac::OPERATOR_USER, common::rbac::chart_rules()).expect("client")
}
