//! Leader election against the devcluster: one leader of two, handover on a
//! graceful shutdown, takeover only after expiry when the leader dies, a live
//! holder is left alone, and leadership regained after it was lost.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: NAMESPACE.to_string(),
        lease_name: LEASE.to_string(),
        identity: identity.to_string(),
        lease_duration: LEASE_DURATION,
        renew_period: RENEW,
        retry_period: RETRY,
    }
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

/// When a term began and, once over, when `lead` returned.
#[derive(Clone, Debug)]
struct Term {
    started: Instant,
    started_wall: Timestamp,
    ended: Option<Instant>,
}

struct Elector {
    terms: Arc<Mutex<Vec<Term>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), LeaderError>>,
}

impl Elector {
    fn start(h: &Harness, identity: &str, leaders: &Leaders) -> Elector {
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
                    let term = Term { started: Instant::now(), started_wall: Timestamp::now(), ended: None };
                    let index = {
                        let mut terms = terms.lock().expect("terms");
                        terms.push(term);
                        terms.len() - 1
                    };
                    token.cancelled().await;
                    terms.lock().expect("terms")[index].ended = Some(Instant::now());
                }
            }
        };
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(leader::run(h.client.clone(), config(identity), lead, shutdown));
        Elector { terms, stop: Some(stop), task }
    }

    fn terms(&self) -> Vec<Term> {
        self.terms.lock().expect("terms").clone()
    }

    fn led(&self) -> usize {
        self.terms.lock().expect("terms").len()
    }

    async fn wait_to_lead(&self, timeout: Duration) -> Term {
        let terms = &self.terms;
        eventually(timeout, || async move { terms.lock().expect("terms").first().cloned() }).await.expect("never led")
    }

    /// Shuts down gracefully; the run must end well within a lease duration.
    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(LEASE_DURATION, &mut self.task).await.expect("run returns on shutdown");
        result.expect("task").expect("run");
    }
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
    let a = Elector::start(&h, "a", &leaders);
    let b = Elector::start(&h, "b", &leaders);
    let (a_ref, b_ref) = (&a, &b);
    eventually(Duration::from_secs(3), || async move { (a_ref.led() + b_ref.led() > 0).then_some(()) })
        .await
        .expect("someone leads");
    // Several renewals and more than a lease duration: the standby must not
    // take over from a leader that keeps renewing.
    tokio::time::sleep(LEASE_DURATION + RENEW).await;
    assert_eq!(leaders.most.load(Ordering::SeqCst), 1, "two leaders at once");
    assert_eq!(leaders.now.load(Ordering::SeqCst), 1);
    assert_eq!(a.led() + b.led(), 1, "leadership changed hands: a {:?}, b {:?}", a.terms(), b.terms());
    let winner = if a.led() == 1 { "a" } else { "b" };

    let lease = spec(&read_lease(&h).await);
    assert_eq!(lease.holder_identity.as_deref(), Some(winner));
    assert_eq!(lease.lease_duration_seconds, Some(2));
    assert_eq!(lease.lease_transitions, Some(0));
    let renewed = lease.renew_time.expect("renewTime").0;
    let acquired = lease.acquire_time.expect("acquireTime").0;
    assert!(renewed > acquired, "renewals move renewTime only: {acquired} {renewed}");
    assert!(Timestamp::now().duration_since(renewed) < SignedDuration::from_secs(1), "renewed {renewed}");

    tokio::join!(a.shut_down(), b.shut_down());
    assert_eq!(leaders.now.load(Ordering::SeqCst), 0);
    assert_eq!(leaders.most.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_shutdown_hands_over_at_once() {
    let h = Harness::start().await;
    let leaders = Leaders::default();
    let a = Elector::start(&h, "a", &leaders);
    a.wait_to_lead(Duration::from_secs(3)).await;
    let b = Elector::start(&h, "b", &leaders);
    tokio::time::sleep(RENEW).await;
    assert_eq!(b.led(), 0, "the standby took a held lease");

    let terms = a.terms.clone();
    let stopping = Instant::now();
    a.shut_down().await;
    let a_ended = terms.lock().expect("terms")[0].ended.expect("a's lead returned");
    let b_term = b.wait_to_lead(Duration::from_secs(3)).await;
    let handover = b_term.started.duration_since(stopping);
    assert!(handover < Duration::from_secs(1), "the standby took {handover:?} to lead");
    assert!(b_term.started >= a_ended, "b led before a stopped");
    assert_eq!(leaders.most.load(Ordering::SeqCst), 1);

    let lease = spec(&read_lease(&h).await);
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(1));
    assert_eq!(lease.lease_duration_seconds, Some(2));

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
    a.wait_to_lead(Duration::from_secs(3)).await;
    let b = Elector::start(&h, "b", &leaders);
    tokio::time::sleep(RENEW + RETRY).await;

    // The leader dies: no release, no more renewals.
    a.task.abort();
    let died = Instant::now();
    assert!(a.task.await.expect_err("aborted").is_cancelled());
    let last = spec(&read_lease(&h).await);
    assert_eq!(last.holder_identity.as_deref(), Some("a"));
    let last_renewal = last.renew_time.expect("renewTime").0;

    let b_term = b.wait_to_lead(LEASE_DURATION + Duration::from_secs(2)).await;
    let waited = b_term.started.duration_since(died);
    // The Lease was renewed at most a renew period before the leader died.
    assert!(waited >= LEASE_DURATION - RENEW - RETRY, "b led {waited:?} after a died");
    assert!(waited <= LEASE_DURATION + Duration::from_secs(1), "b waited {waited:?} after a died");
    assert!(
        b_term.started_wall >= last_renewal + SignedDuration::try_from(LEASE_DURATION).expect("duration"),
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
    let lease = Lease {
        metadata: ObjectMeta { name: Some(LEASE.to_string()), ..Default::default() },
        spec: Some(held_by("other", 4, 2)),
    };
    api.create(&PostParams::default(), &lease).await.expect("create");
    let leaders = Leaders::default();
    let a = Elector::start(&h, "a", &leaders);

    // The other holder keeps renewing for longer than a lease duration.
    let renewing_until = Instant::now() + LEASE_DURATION + RENEW;
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
    let term = a.wait_to_lead(LEASE_DURATION + Duration::from_secs(2)).await;
    assert!(
        term.started_wall >= last_renewal + SignedDuration::try_from(LEASE_DURATION).expect("duration"),
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
    a.wait_to_lead(Duration::from_secs(3)).await;

    // Someone else writes itself into the Lease (as after a partition) and
    // then never renews.
    let mut lease = api.get(LEASE).await.expect("get");
    let transitions = spec(&lease).lease_transitions.unwrap_or(0);
    lease.spec = Some(held_by("intruder", transitions + 1, 1));
    api.replace(LEASE, &PostParams::default(), &lease).await.expect("take the lease");
    let taken = Instant::now();

    // The leader sees it at its next renewal and stops.
    let a_ref = &a;
    let ended =
        eventually(Duration::from_secs(2), || async move { a_ref.terms()[0].ended }).await.expect("lead stopped");
    assert!(ended.duration_since(taken) <= RENEW + RETRY * 2, "stopped {:?} after losing", ended.duration_since(taken));
    assert_eq!(leaders.now.load(Ordering::SeqCst), 0);

    // And leads again once the intruder's lease has expired.
    let again =
        eventually(Duration::from_secs(4), || async move { a_ref.terms().get(1).cloned() }).await.expect("leads again");
    assert!(again.started.duration_since(taken) >= Duration::from_millis(900), "took a live lease");
    let lease = spec(&read_lease(&h).await);
    assert_eq!((lease.holder_identity.as_deref(), lease.lease_transitions), (Some("a"), Some(2)));
    a.shut_down().await;
    assert_eq!(leaders.most.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn work_that_ends_on_its_own_gives_up_the_lease() {
    let h = Harness::start().await;
    let lead = |_token: CancellationToken| async {};
    let run = leader::run(h.client.clone(), config("a"), lead, std::future::pending());
    tokio::time::timeout(Duration::from_secs(3), run).await.expect("run returns").expect("run");
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
