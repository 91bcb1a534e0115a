//! The controllers: one reconciler per kind, sharing a `Context` (client,
//! store, sync runner, recorder, clock). Reconcilers are idempotent and
//! level-triggered; what a sync does runs in `crate::sync`, off the
//! reconcile loop, in the runner's tasks.

pub mod connection;
pub mod drift;
pub mod events;
pub mod guard;
pub mod inputs;
pub mod panics;
pub mod profile;
pub mod profile_lease;
pub mod resync;
pub mod runner;
pub mod status;
pub mod timing;
pub mod undecodable;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::Client;

use crate::store::Store;
use events::Recorder;
use runner::Runner;

/// The name idsync writes under (field manager, Event reporter).
pub const CONTROLLER_NAME: &str = "idsync.dev/operator";
/// The finalizer that purges a deleted Connection's accounts from the store.
pub const CONNECTION_FINALIZER: &str = "idsync.dev/store-cleanup";

/// Where time comes from: the wall clock, or a test's.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Operator settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// This instance's identity in guards and Events.
    pub identity: String,
    /// Syncs running at once, over all connections.
    pub max_concurrent_syncs: usize,
    /// How long a sync guard lives without a heartbeat.
    pub guard_duration: Duration,
    /// Longest wait between two reconciles of an idle object (schedules are
    /// re-checked at least this often).
    pub max_requeue: Duration,
    /// One active replica, or several sharing the store (see `Replicas`).
    pub replicas: Replicas,
}

/// How the operator's replicas share the work.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Replicas {
    /// One active replica does everything (the embedded SQLite store: one
    /// writer process). Whoever runs the controllers owns every object.
    #[default]
    Single,
    /// Every replica runs the controllers on one shared store (PostgreSQL):
    /// each acts on the objects it owns (`crate::membership`), and the
    /// elected leader runs what must run once (the notification outbox).
    Shared(SharedReplicas),
}

/// The settings of [`Replicas::Shared`].
#[derive(Clone, Debug, PartialEq)]
pub struct SharedReplicas {
    /// The operator's namespace: its member Leases and the leader Lease.
    pub namespace: String,
    /// How long a member Lease (and the leader Lease) stays held without
    /// renewal: how soon a dead replica's share moves to the others.
    pub member_lease_duration: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            identity: default_identity(),
            max_concurrent_syncs: 4,
            guard_duration: Duration::from_secs(30),
            max_requeue: Duration::from_secs(300),
            replicas: Replicas::Single,
        }
    }
}

/// `POD_NAME` (or the host name) plus a per-process suffix, so a restarted
/// operator is a new holder.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "idsync".to_string());
    let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(6).collect();
    format!("{base}-{suffix}")
}

/// What every reconciler shares.
pub struct Context {
    pub client: Client,
    pub store: Arc<dyn Store>,
    pub runner: Arc<Runner>,
    pub recorder: Recorder,
    pub clock: Arc<dyn Clock>,
    pub config: Config,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What `/readyz` answers: true once `run` has its store open and has
    /// listed what it reconciles (the API answers, with the permissions it
    /// needs); false again when it stops.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Reports objects that do not decode (see `undecodable`).
    pub undecodable: undecodable::Reporter,
    /// One processing at a time per profile, whoever starts it (the profile
    /// controller or a ResyncRequest).
    profile_locks: std::sync::Mutex<std::collections::HashMap<crate::model::ProfileRef, Arc<tokio::sync::Mutex<()>>>>,
    /// Compiled profile expressions by mapping hash (see `profile::compile`).
    compiled: std::sync::Mutex<std::collections::HashMap<String, Arc<crate::identity::expr::CompiledProfile>>>,
    /// Processing runs under way, stopped on shutdown.
    pub processing: profile::RunningProcessing,
    /// Who owns what among the replicas (`Replicas::Shared`): published by
    /// the membership task `run` starts, read by every reconcile.
    members: (
        tokio::sync::watch::Sender<crate::membership::Members>,
        tokio::sync::watch::Receiver<crate::membership::Members>,
    ),
    /// The Connections this instance owns, for the gauge.
    owned_connections: std::sync::Mutex<std::collections::HashSet<crate::model::ConnectionRef>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("cannot serialize: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Conflict(String),
    /// What kube-runtime's `finalizer()` returns: the reconciler's own error
    /// wrapped as ApplyFailed or CleanupFailed, or the helper's failure to
    /// add or remove the finalizer.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The reconcile panicked (see `panics`); the message is the panic's.
    #[error("the reconcile panicked: {message}")]
    Panicked { message: String },
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(error: kube::runtime::finalizer::Error<Error>) -> Self {
        Error::Finalizer(Box::new(error))
    }
}

impl Error {
    /// A short name for metrics and logs: what failed. An error the
    /// finalizer helper wrapped is labelled by what it wraps, so
    /// `idsync_reconcile_errors_total` says `kube` or `store` rather than
    /// `finalizer` for nearly everything; `finalizer` is left for the
    /// helper's own failures.
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as Finalizer;
        match self {
            Error::Kube(_) => "kube",
            Error::Serialize(_) => "serialize",
            Error::Store(_) => "store",
            Error::Conflict(_) => "conflict",
            Error::Finalizer(wrapped) => match wrapped.as_ref() {
                Finalizer::ApplyFailed(inner) | Finalizer::CleanupFailed(inner) => inner.metric_label(),
                _ => "finalizer",
            },
            Error::Panicked { .. } => "panic",
        }
    }
}

impl Context {
    pub fn new(client: Client, store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: Config) -> Arc<Context> {
        Self::with_metrics(client, store, clock, config, Arc::new(crate::metrics::Metrics::new()), Default::default())
    }

    /// A context reporting into `metrics`, which outlive it: `idsync run`
    /// serves one registry while leadership (and with it the context and the
    /// store) comes and goes.
    pub fn with_metrics(
        client: Client,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: Config,
        metrics: Arc<crate::metrics::Metrics>,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) -> Arc<Context> {
        let recorder = Recorder::new(client.clone(), CONTROLLER_NAME, config.identity.clone());
        Arc::new(Context {
            undecodable: undecodable::Reporter::new(client.clone(), recorder.clone()),
            recorder,
            runner: Arc::new(Runner::new(config.max_concurrent_syncs)),
            client,
            store,
            clock,
            config,
            metrics,
            ready,
            profile_locks: Default::default(),
            compiled: Default::default(),
            processing: Default::default(),
            members: tokio::sync::watch::channel(Default::default()),
            owned_connections: Default::default(),
        })
    }

    /// Whether the replicas share the store (each acting on what it owns).
    pub fn shared(&self) -> bool {
        matches!(self.config.replicas, Replicas::Shared(_))
    }

    /// Whether this instance acts on the object of owner `key` (see
    /// `crate::membership`): always with one active replica; with shared
    /// replicas, when rendezvous hashing over the live members names it.
    pub fn owns(&self, key: &str) -> bool {
        match self.config.replicas {
            Replicas::Single => true,
            Replicas::Shared(_) => self.members.1.borrow().owns(key),
        }
    }

    /// The live members as this instance last saw them.
    pub fn members(&self) -> tokio::sync::watch::Receiver<crate::membership::Members> {
        self.members.1.clone()
    }

    /// Records whether this instance owns `conn`, for the gauge.
    pub fn note_ownership(&self, conn: &crate::model::ConnectionRef, owned: bool) {
        let mut set = self.owned_connections.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if owned { set.insert(conn.clone()) } else { set.remove(conn) };
        if changed {
            self.metrics.set_owned_connections(set.len());
        }
    }

    /// The lock that serializes processing of one profile.
    pub fn profile_lock(&self, p: &crate::model::ProfileRef) -> Arc<tokio::sync::Mutex<()>> {
        match self.profile_locks.lock() {
            Ok(mut locks) => locks.entry(p.clone()).or_default().clone(),
            // A poisoned registry still must not run two processings at
            // once; a fresh lock per call would, so share one.
            Err(poisoned) => poisoned.into_inner().entry(p.clone()).or_default().clone(),
        }
    }
}

/// Closes what a previous process left in the store: runs it started and
/// never finished (it was killed) are marked Interrupted and their staging
/// is dropped, at once rather than when each connection next syncs. Only
/// the leader writes the store, so no run of a live process is among them.
pub async fn recover_store(store: &Arc<dyn Store>, now: Timestamp) -> Result<usize, crate::store::StoreError> {
    let store = store.clone();
    let message = "the operator stopped while this sync ran; nothing it read was applied";
    let interrupted = tokio::task::spawn_blocking(move || store.interrupt_unfinished_runs(None, now, message))
        .await
        .map_err(|e| crate::store::StoreError::Internal(format!("store task failed: {e}")))??;
    for run in &interrupted {
        tracing::warn!(run = run.id, connection = %run.connection, holder = %run.holder,
            "a sync was left unfinished by a previous operator; marked interrupted");
    }
    Ok(interrupted.len())
}

/// A reconcile, counted and timed in the controller-runtime families.
async fn observed(
    controller: &'static str,
    ctx: Arc<Context>,
    reconcile: impl std::future::Future<Output = Result<kube::runtime::controller::Action, Error>>,
) -> Result<kube::runtime::controller::Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile.await;
    ctx.metrics.reconcile_finished(controller, result.is_ok(), started.elapsed());
    result
}

/// Sets the gauges a scrape should show from the start (accounts and the
/// last successful sync per Connection, identities per profile) from the
/// store, instead of leaving them missing until each one's next run.
async fn restore_gauges(ctx: &Arc<Context>) -> Result<(), Error> {
    use idsync_api::{Connection, IdentityProfile};
    use kube::api::{Api, ListParams};
    // Names only (metadata lists): an object whose spec does not decode
    // still has its numbers in the store.
    async fn names<K>(client: &kube::Client) -> Result<Vec<(String, String)>, Error>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
        K::DynamicType: Default,
    {
        Ok(Api::<K>::all(client.clone())
            .list_metadata(&ListParams::default())
            .await
            .map_err(Error::Kube)?
            .items
            .into_iter()
            .filter_map(|m| Some((m.metadata.namespace?, m.metadata.name?)))
            .collect())
    }
    let connections = names::<Connection>(&ctx.client).await?;
    let profiles = names::<IdentityProfile>(&ctx.client).await?;
    let store = ctx.store.clone();
    let metrics = ctx.metrics.clone();
    let restored = tokio::task::spawn_blocking(move || -> Result<(), crate::store::StoreError> {
        for (namespace, name) in &connections {
            let c = crate::model::ConnectionRef::new(namespace, name);
            let label = format!("{namespace}/{name}");
            metrics.set_accounts(&label, store.account_count(&c)?);
            let runs = store.runs(&c, 50)?;
            let last = runs
                .iter()
                .filter(|r| r.outcome == Some(crate::model::RunOutcome::Succeeded))
                .find_map(|r| r.finished_at);
            if let Some(at) = last {
                metrics.set_last_success(&label, at);
            }
        }
        for (namespace, name) in &profiles {
            let p = crate::model::ProfileRef::new(namespace, name);
            if let Some(summary) = store.profile_state(&p)?.summary {
                metrics.set_identities(&format!("{namespace}/{name}"), summary.identities);
            }
        }
        Ok(())
    })
    .await;
    match restored {
        Ok(result) => result.map_err(Error::from),
        Err(joined) => Err(Error::Store(crate::store::StoreError::Internal(joined.to_string()))),
    }
}

/// Runs the controllers until `shutdown` resolves.
///
/// With [`Replicas::Shared`] this instance also joins the replicas
/// (`crate::membership`), each controller acts on what it owns and looks
/// at everything again when owners move, and the notification outbox runs
/// only while this instance is the elected leader. Runs left unfinished
/// are then closed per connection by whoever takes over a dead holder's
/// guard, not all at once at start (they may be live peers' runs).
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let shared = match &ctx.config.replicas {
        Replicas::Single => None,
        Replicas::Shared(shared) => Some(shared.clone()),
    };
    if shared.is_none()
        && let Err(error) = recover_store(&ctx.store, ctx.clock.now()).await
    {
        tracing::warn!(%error, "could not close the runs a previous operator left unfinished");
    }
    // Ready once the store is open (it is, here) and the first lists of
    // what the controllers reconcile went through; retried until they do.
    let readiness = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                match restore_gauges(&ctx).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, "not ready: cannot list Connections and profiles or read the store");
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                }
            }
            ctx.ready.store(true, std::sync::atomic::Ordering::Release);
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Membership outlives the controllers: this instance stays a member
    // (and its share stays its own) until its syncs have stopped and its
    // guards are back.
    let (leave_tx, leave_rx) = tokio::sync::watch::channel(false);
    let membership = shared.as_ref().map(|shared| {
        let config = crate::membership::MembershipConfig::new(
            shared.namespace.clone(),
            ctx.config.identity.clone(),
            shared.member_lease_duration,
        );
        let members = ctx.members.0.clone();
        let joined = crate::membership::run(ctx.client.clone(), config, members, stopped(leave_rx.clone()));
        let metrics = ctx.metrics.clone();
        let mut seen = ctx.members();
        let gauge = async move {
            while seen.changed().await.is_ok() {
                let live = seen.borrow_and_update().live().len();
                metrics.set_replicas(live);
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                () = joined => {}
                () = gauge => {}
            }
        })
    });
    let owners_moved = |ctx: &Arc<Context>| crate::membership::changes(ctx.members());

    let mut connections = connection::controller(ctx.clone()).graceful_shutdown_on(stopped(stop_rx.clone()));
    let mut requests = resync::controller(ctx.clone()).graceful_shutdown_on(stopped(stop_rx.clone()));
    let mut profiles = profile::controller(ctx.clone()).graceful_shutdown_on(stopped(stop_rx.clone()));
    if shared.is_some() {
        connections = connections.reconcile_all_on(owners_moved(&ctx));
        requests = requests.reconcile_all_on(owners_moved(&ctx));
        profiles = profiles.reconcile_all_on(owners_moved(&ctx));
    }
    let connections = connections
        .run(
            |o, c| observed("connection", c.clone(), connection::reconcile(o, c)),
            connection::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "connection reconcile");
            }
        });
    let requests = requests
        .run(|o, c| observed("resyncrequest", c.clone(), resync::reconcile(o, c)), resync::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "resync reconcile");
            }
        });
    let profiles = profiles
        .run(
            |o, c| observed("identityprofile", c.clone(), profile::reconcile(o, c)),
            profile::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "identity profile reconcile");
            }
        });
    // The notification outbox's worker: once per store. With one active
    // replica that is this one (it leads, or it would not run); with
    // shared replicas, the one elected on the leader Lease.
    let notifications = {
        let ctx = ctx.clone();
        let stop = stopped(stop_rx.clone());
        async move {
            match shared {
                None => {
                    crate::notify::worker::run(ctx.client.clone(), ctx.store.clone(), ctx.metrics.clone(), stop).await
                }
                Some(shared) => notifications_on_the_leader(&ctx, &shared, stop).await,
            }
        }
    };
    let stopping = ctx.clone();
    let stop = async move {
        shutdown.await;
        readiness.abort();
        stopping.ready.store(false, std::sync::atomic::Ordering::Release);
        // Before the controllers wait for their reconciles: a reconcile
        // waits for its processing run.
        stopping.processing.stop_all();
        let _ = stop_tx.send(true);
    };
    tokio::join!(connections, requests, profiles, notifications, stop);
    ctx.ready.store(false, std::sync::atomic::Ordering::Release);
    ctx.runner.cancel_all().await;
    // No sync runs any more: the guards go back, so that the next leader
    // (or the replicas that own them next) takes them at once instead of
    // waiting for them to lapse.
    ctx.runner.release_guards(ctx.config.guard_duration).await;
    if let Some(membership) = membership {
        let _ = leave_tx.send(true);
        if tokio::time::timeout(ctx.config.guard_duration, membership).await.is_err() {
            tracing::warn!("could not leave the replicas in time; the member Lease lapses on its own");
        }
    }
}

/// Runs the notification outbox's worker whenever this replica is the
/// elected leader of the shared replicas, until `stop`.
async fn notifications_on_the_leader(
    ctx: &Arc<Context>,
    shared: &SharedReplicas,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    let duration = shared.member_lease_duration.max(crate::lease::MIN_DURATION);
    let election = crate::leader::LeaderConfig {
        lease_duration: duration,
        renew_period: duration / 3,
        retry_period: (duration / 10).max(std::time::Duration::from_millis(100)),
        ..crate::leader::LeaderConfig::new(shared.namespace.clone(), ctx.config.identity.clone())
    };
    let lead = |token: tokio_util::sync::CancellationToken| {
        let ctx = ctx.clone();
        async move {
            tracing::info!(identity = %ctx.config.identity, "leading: sending notifications");
            ctx.metrics.set_leader(true);
            crate::notify::worker::run(
                ctx.client.clone(),
                ctx.store.clone(),
                ctx.metrics.clone(),
                token.cancelled_owned(),
            )
            .await;
            ctx.metrics.set_leader(false);
        }
    };
    if let Err(error) = crate::leader::run(ctx.client.clone(), election, lead, stop).await {
        tracing::error!(%error, "cannot elect the replica that sends notifications");
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::finalizer::Error as Finalizer;

    use super::*;
    use crate::store::StoreError;

    fn wrapped(error: Finalizer<Error>) -> Error {
        Error::from(error)
    }

    #[test]
    fn an_error_the_finalizer_helper_wrapped_is_labelled_by_what_it_wraps() {
        assert_eq!(wrapped(Finalizer::ApplyFailed(Error::Store(StoreError::Poisoned))).metric_label(), "store");
        assert_eq!(wrapped(Finalizer::ApplyFailed(Error::Kube(kube::Error::TlsRequired))).metric_label(), "kube");
        assert_eq!(wrapped(Finalizer::CleanupFailed(Error::Conflict("busy".into()))).metric_label(), "conflict");
        let panicked = Error::Panicked { message: "attempt to add with overflow".into() };
        assert_eq!(wrapped(Finalizer::ApplyFailed(panicked)).metric_label(), "panic");
    }

    #[test]
    fn the_finalizer_helpers_own_failures_are_labelled_finalizer() {
        assert_eq!(wrapped(Finalizer::AddFinalizer(kube::Error::TlsRequired)).metric_label(), "finalizer");
        assert_eq!(wrapped(Finalizer::RemoveFinalizer(kube::Error::TlsRequired)).metric_label(), "finalizer");
        assert_eq!(wrapped(Finalizer::UnnamedObject).metric_label(), "finalizer");
    }

    #[test]
    fn a_wrapped_error_still_says_what_failed() {
        let error = wrapped(Finalizer::CleanupFailed(Error::Store(StoreError::Poisoned)));
        assert_eq!(
            error.to_string(),
            "failed to clean up object: the store: the store's lock was poisoned by a panic in another thread"
        );
    }
}
