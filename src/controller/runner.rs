//! The sync runner: syncs run as tokio tasks off the reconcile loop, at most
//! `max_concurrent_syncs` at once, each under its connection's durable
//! guard and cancellable (concurrencyPolicy Replace, shutdown). Status and
//! Events say when a sync starts and how it ended.
//!
//! The guards are kept, not taken per sync: the first reconcile or sync of
//! a connection takes its guard Lease, a keeper task renews it on a timer
//! while this instance leads, and [`Runner::release_guards`] gives them all
//! back on shutdown. A sync under a kept guard writes no Lease. Losing a
//! guard (another holder took it, it was deleted, no renewal went through
//! before it lapsed) cancels the sync running under it, which then applies
//! nothing, and the next start takes the guard again if it can.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use crate::sync::cancel::{Cancel, CancelReason};

use super::guard::{self, Acquired, GuardClaim, Holder};
use super::{Context, Error, events, inputs, panics, status};
use crate::connectors;
use crate::lease::{Held, LeaseLost};
use crate::model::{ConnectionRef, RunFinish, RunOutcome, Trigger};
use crate::store::{Store, StoreError};
use crate::sync::job::{self, SyncJob, SyncReport};
use idsync_api::conditions::{self, FALSE, TRUE};
use idsync_api::connection::{RunningSync, SyncOutcome, SyncResult};
use idsync_api::{Connection, SyncCounts, SyncMode};

/// What to sync and why.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub connection: Connection,
    pub mode: SyncMode,
    /// Scheduled, RequestedAt or Requested.
    pub trigger: Trigger,
    pub request: Option<String>,
    pub dry_run: bool,
    pub confirm_deletes: bool,
    /// What the Connection's reconcile that starts the sync records with it.
    pub bookkeeping: Option<Bookkeeping>,
}

/// What a Connection's own reconcile records when it starts a sync
/// (scheduled, requested-at): written with the sync's first status write
/// instead of in a write of its own.
#[derive(Clone, Debug, Default)]
pub struct Bookkeeping {
    /// The generation the reconcile saw; the rest is recorded only while
    /// the Connection still has it.
    pub generation: Option<i64>,
    pub next_sync: Option<Timestamp>,
    pub handled_requested_at: Option<String>,
}

/// Called with the report when a sync has ended and its status is written.
pub type OnDone = Box<dyn FnOnce(SyncReport) -> BoxFuture<'static, ()> + Send>;

/// What [`Runner::give_back_guard`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum GiveBack {
    /// Given back (or lost already).
    Released,
    /// A sync runs under it here: asked again once it has finished.
    Running,
    /// This instance did not keep it.
    NotKept,
}

pub enum Start {
    Started,
    /// Another sync holds the connection.
    Busy(Holder),
}

struct Running {
    holder: Holder,
    cancel: Cancel,
    done: watch::Receiver<bool>,
}

pub struct Runner {
    permits: Arc<Semaphore>,
    running: Mutex<HashMap<ConnectionRef, Running>>,
    /// The guards this instance keeps, by connection.
    guards: Mutex<HashMap<ConnectionRef, Kept>>,
    /// One guard acquisition at a time, so that two reconciles of one
    /// connection (its own and a request's) never take it twice and start
    /// two keepers.
    acquiring: tokio::sync::Mutex<()>,
}

/// A guard Lease this instance keeps.
struct Kept {
    state: Arc<Mutex<GuardState>>,
    /// Stops the keeper, which then hands the Lease back for release.
    stop: CancellationToken,
    keeper: tokio::task::JoinHandle<Option<Held>>,
}

/// What a kept guard's keeper and the sync under it share.
#[derive(Default)]
struct GuardState {
    /// The sync running under the guard, cancelled if the guard is lost.
    sync: Option<Cancel>,
    /// Why the guard was lost, once it was; a lost guard is taken anew by
    /// the next start.
    lost: Option<GuardLost>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The state is a pair of options, consistent at every step: a panic
    // elsewhere while it was locked leaves nothing half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether this instance holds a connection's guard.
pub enum Guarded {
    Held,
    /// Another live holder has it.
    Busy(Holder),
}

pub fn connection_ref(connection: &Connection) -> ConnectionRef {
    ConnectionRef {
        namespace: connection.namespace().unwrap_or_else(|| "default".to_string()),
        name: connection.name_any(),
    }
}

impl Runner {
    pub fn new(max_concurrent: usize) -> Self {
        Runner {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            running: Mutex::new(HashMap::new()),
            guards: Mutex::new(HashMap::new()),
            acquiring: tokio::sync::Mutex::new(()),
        }
    }

    /// The sync this instance runs for `connection`, if any.
    pub fn running(&self, connection: &ConnectionRef) -> Option<Holder> {
        self.running.lock().ok()?.get(connection).map(|r| r.holder.clone())
    }

    /// Cancels the running sync of `connection`; the receiver turns true
    /// when it has ended (having applied nothing).
    pub fn cancel(&self, connection: &ConnectionRef, reason: CancelReason) -> Option<watch::Receiver<bool>> {
        let running = self.running.lock().ok()?;
        let entry = running.get(connection)?;
        entry.cancel.cancel(reason);
        Some(entry.done.clone())
    }

    /// Cancels every running sync (shutdown) and waits for them to end.
    pub async fn cancel_all(&self) {
        let waiting: Vec<watch::Receiver<bool>> = match self.running.lock() {
            Ok(running) => running
                .values()
                .map(|r| {
                    r.cancel.cancel(CancelReason::Shutdown);
                    r.done.clone()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for mut done in waiting {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), done.wait_for(|d| *d)).await;
        }
    }

    /// Holds the guard of `connection`: at once if this instance keeps it,
    /// else by taking its Lease (one write) and keeping it from then on.
    /// Taking it over from a holder that died while syncing marks that
    /// sync Interrupted.
    pub async fn hold_guard(&self, ctx: &Arc<Context>, connection: &Connection) -> Result<Guarded, Error> {
        self.hold(ctx, connection).await.map(|held| match held {
            Ok(_) => Guarded::Held,
            Err(holder) => Guarded::Busy(holder),
        })
    }

    async fn hold(
        &self,
        ctx: &Arc<Context>,
        connection: &Connection,
    ) -> Result<Result<Arc<Mutex<GuardState>>, Holder>, Error> {
        let conn = connection_ref(connection);
        let _one_at_a_time = self.acquiring.lock().await;
        if let Some(state) = self.kept(&conn) {
            return Ok(Ok(state));
        }
        let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &conn.namespace);
        let claim = GuardClaim {
            identity: &ctx.config.identity,
            duration: ctx.config.guard_duration,
            owner: guard::owner(connection),
        };
        let (lease, expired) = match guard::acquire(&leases, &conn.name, claim).await? {
            Acquired::Busy(holder) => return Ok(Err(running_holder(connection, holder))),
            Acquired::Taken { lease, expired } => (lease, expired),
        };
        if let Some(dead) = expired {
            interrupt(ctx, connection, &dead).await;
        }
        let state = Arc::new(Mutex::new(GuardState::default()));
        let stop = CancellationToken::new();
        let keeper =
            tokio::spawn(keep(*lease, guard::renew_policy(ctx.config.guard_duration), state.clone(), stop.clone()));
        locked(&self.guards).insert(conn, Kept { state: state.clone(), stop, keeper });
        Ok(Ok(state))
    }

    /// The state of the guard this instance keeps for `conn`, unless it was
    /// lost (then it is forgotten, to be taken anew).
    fn kept(&self, conn: &ConnectionRef) -> Option<Arc<Mutex<GuardState>>> {
        let mut guards = locked(&self.guards);
        let live = guards.get(conn).is_some_and(|k| locked(&k.state).lost.is_none() && !k.keeper.is_finished());
        if live {
            return guards.get(conn).map(|k| k.state.clone());
        }
        guards.remove(conn);
        None
    }

    /// Gives back the guard of `conn`, unless a sync runs under it: another
    /// replica owns the connection now (shared replicas). A start that
    /// raced this finds the guard lost and takes it again.
    pub async fn give_back_guard(&self, conn: &ConnectionRef) -> GiveBack {
        // The common case, every reconcile of a Connection another replica
        // owns: nothing kept, and no wait behind another's acquisition.
        if !locked(&self.guards).contains_key(conn) {
            return GiveBack::NotKept;
        }
        let _one_at_a_time = self.acquiring.lock().await;
        let kept = {
            let mut guards = locked(&self.guards);
            let Some(kept) = guards.get(conn) else {
                return GiveBack::NotKept;
            };
            let mut shared = locked(&kept.state);
            if shared.sync.is_some() || self.running(conn).is_some() {
                return GiveBack::Running;
            }
            if shared.lost.is_none() {
                let lease = guard::lease_name(&conn.name);
                shared.lost = Some(GuardLost { lease, lost: LeaseLost::Released });
            }
            drop(shared);
            guards.remove(conn)
        };
        if let Some(kept) = kept {
            kept.stop.cancel();
            match kept.keeper.await {
                Ok(Some(held)) => {
                    tracing::info!(connection = %conn, "another replica owns the connection now; giving its sync guard back");
                    guard::release(held).await;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "a sync guard's keeper failed; the guard lapses on its own"),
            }
        }
        GiveBack::Released
    }

    /// Stops keeping the guard of `conn` without giving it back: its Lease
    /// is about to be deleted with its Connection.
    pub fn forget_guard(&self, conn: &ConnectionRef) {
        if let Some(kept) = locked(&self.guards).remove(conn) {
            kept.stop.cancel();
        }
    }

    /// Gives back every guard this instance keeps (shutdown, or leadership
    /// lost), so that the next holder takes them at once rather than
    /// waiting for them to lapse. Call once no sync runs. All at once, and
    /// for at most `within`: an API server that does not answer must not
    /// hold up a shutdown, and by then the guards have lapsed anyway.
    pub async fn release_guards(&self, within: std::time::Duration) {
        let kept: Vec<Kept> = locked(&self.guards).drain().map(|(_, kept)| kept).collect();
        let releases = kept.into_iter().map(|kept| async move {
            kept.stop.cancel();
            match kept.keeper.await {
                Ok(Some(held)) => guard::release(held).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "a sync guard's keeper failed; the guard lapses on its own"),
            }
        });
        if tokio::time::timeout(within, futures::future::join_all(releases)).await.is_err() {
            tracing::warn!("could not release every sync guard in time; the rest lapse on their own");
        }
    }

    /// Starts a sync unless one holds the connection (here or, through the
    /// durable guard, anywhere).
    pub async fn start(self: &Arc<Self>, ctx: Arc<Context>, ticket: Ticket, on_done: OnDone) -> Result<Start, Error> {
        let conn = connection_ref(&ticket.connection);
        if let Some(holder) = self.running(&conn) {
            return Ok(Start::Busy(holder));
        }
        let holder = Holder {
            identity: ctx.config.identity.clone(),
            request: ticket.request.clone(),
            mode: ticket.mode.to_string(),
            since: Timestamp::now(),
        };
        let cancel = Cancel::new();
        // The guard may be lost between holding it and registering the
        // sync under it: then it is taken again, once.
        let mut guard = None;
        for _ in 0..2 {
            let state = match self.hold(&ctx, &ticket.connection).await? {
                Ok(state) => state,
                Err(busy) => return Ok(Start::Busy(busy)),
            };
            let mut shared = locked(&state);
            if shared.lost.is_none() {
                shared.sync = Some(cancel.clone());
                drop(shared);
                guard = Some(state);
                break;
            }
        }
        let Some(guard) = guard else {
            return Err(Error::Conflict(format!("the sync guard of {} was lost as it was taken", conn.name)));
        };
        let (done_tx, done_rx) = watch::channel(false);
        match self.running.lock() {
            Ok(mut running) => {
                running.insert(conn.clone(), Running { holder: holder.clone(), cancel: cancel.clone(), done: done_rx });
            }
            Err(_) => {
                locked(&guard).sync = None;
                return Err(Error::Conflict("the sync registry is poisoned".into()));
            }
        }
        let runner = self.clone();
        let span = tracing::info_span!("sync", connection = %conn.name, namespace = %conn.namespace, request = ?ticket.request, holder = %ctx.config.identity);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let report = runner.execute(&ctx, &ticket, guard, holder, cancel).await;
                // Still registered while its result is recorded, so that a
                // reconcile in between sees it running rather than lost.
                on_done(report).await;
                if let Ok(mut running) = runner.running.lock() {
                    running.remove(&conn);
                }
                let _ = done_tx.send(true);
            },
            span,
        ));
        Ok(Start::Started)
    }

    async fn execute(
        &self,
        ctx: &Arc<Context>,
        ticket: &Ticket,
        guard: Arc<Mutex<GuardState>>,
        holder: Holder,
        cancel: Cancel,
    ) -> SyncReport {
        let connection = &ticket.connection;
        let conn = connection_ref(connection);
        let connections: Api<Connection> = Api::namespaced(ctx.client.clone(), &conn.namespace);

        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok(),
            _ = cancel.cancelled() => None,
        };

        let started = Timestamp::now();
        let _ = status::update(&connections, &conn.name, |c: &mut Connection| {
            let generation = c.metadata.generation;
            let s = c.status.get_or_insert_with(Default::default);
            if let Some(book) = ticket.bookkeeping.as_ref().filter(|b| b.generation == generation) {
                s.observed_generation = book.generation;
                s.next_sync_time = book.next_sync.map(Time);
                if let Some(value) = &book.handled_requested_at {
                    s.last_handled_requested_at = Some(value.clone());
                }
            }
            s.current_sync = Some(RunningSync {
                holder: holder.identity.clone(),
                request: ticket.request.clone(),
                mode: ticket.mode,
                started: Time(started),
            });
            conditions::set_condition(
                &mut s.conditions,
                conditions::SYNCING,
                TRUE,
                "Syncing",
                &format!("{} sync started ({})", ticket.mode, ticket.trigger),
                c.metadata.generation,
                Time(started),
            );
            true
        })
        .await;
        // A sync a ResyncRequest asked for has its start recorded there
        // (the target's startTime, the request Running); one without a
        // request (scheduled, requested-at) has only this Event to say when
        // it started and why.
        if ticket.request.is_none() {
            let note = format!("{} sync started ({})", ticket.mode, ticket.trigger);
            events::publish(&ctx.recorder, &connection.object_ref(&()), false, events::SYNC_STARTED, note).await;
        }

        ctx.metrics.sync_started();
        let mut report = match permit {
            None => cancelled_report(ticket.mode),
            Some(_permit) => {
                // Connectors and the sync engine read what sources send; a
                // panic there ends the sync's own task, and this one records
                // it as failed and releases the guard as after any sync.
                let sync = tokio::spawn(tracing::Instrument::in_current_span(run_sync(
                    ctx.clone(),
                    ticket.clone(),
                    cancel.clone(),
                )));
                match sync.await {
                    Ok(report) => report,
                    Err(ended) => sync_ended_early(ctx, &conn, ticket.mode, ended).await,
                }
            }
        };
        // Lost while the sync ran: it was cancelled by the keeper.
        let lost = {
            let mut shared = locked(&guard);
            shared.sync = None;
            shared.lost.clone()
        };
        if let Some(lost) = &lost
            && report.outcome == RunOutcome::Cancelled
        {
            // Say why, rather than the job's generic reason for a cancellation.
            report.message = format!("cancelled: {lost}; nothing was applied");
            report.reason = Some("GuardLost".to_string());
        }
        ctx.metrics.sync_ended();
        ctx.metrics.sync_finished(
            &format!("{}/{}", conn.namespace, conn.name),
            connection.spec.provider.provider_type().as_str(),
            report.outcome.as_str(),
            std::time::Duration::from_millis(report.duration_ms),
            report.counts.created,
            report.counts.updated,
            report.counts.deleted,
        );
        if report.outcome == RunOutcome::Succeeded {
            let name = format!("{}/{}", conn.namespace, conn.name);
            ctx.metrics.set_accounts(&name, report.accounts);
            ctx.metrics.set_last_success(&name, ctx.clock.now());
        }

        record_result(ctx, connection, ticket, &report).await;
        report
    }
}

/// One sync, start to end, in its own task (see `Runner::execute`).
async fn run_sync(ctx: Arc<Context>, ticket: Ticket, cancel: Cancel) -> SyncReport {
    let connection = &ticket.connection;
    let inputs = match inputs::resolve(&ctx.client, connection).await {
        Ok(Ok(inputs)) => inputs,
        Ok(Err(problem)) => return failed_report(ticket.mode, problem.reason, problem.message, true),
        Err(e) => return failed_report(ticket.mode, "KubernetesError", e.to_string(), false),
    };
    let connector = match connectors::build(&connection.spec, inputs) {
        Ok(c) => c,
        Err(e) => return failed_report(ticket.mode, e.reason(), e.to_string(), e.is_stalled()),
    };
    let job = SyncJob {
        connection: connection_ref(connection),
        mode: ticket.mode,
        trigger: ticket.trigger,
        request: ticket.request.clone(),
        holder: ctx.config.identity.clone(),
        dry_run: ticket.dry_run,
        confirm_deletes: ticket.confirm_deletes,
        safeguard: connection.spec.import_safeguard.clone(),
        settings_hash: inputs::settings_hash(connection),
        full_sync_interval: std::time::Duration::from_secs(u64::from(connection.spec.full_sync_interval_hours) * 3600),
        max_duration: std::time::Duration::from_secs(u64::from(connection.spec.max_sync_duration_minutes) * 60),
    };
    let announce =
        crate::notify::announce::sync(&ctx.client, connection, ticket.request.clone(), ticket.mode, ticket.dry_run)
            .await;
    job::run_announcing(job, connector, ctx.store.clone(), cancel, Some(announce)).await
}

/// A sync whose task ended without a report: it panicked (or the runtime
/// is stopping). Its run, left unfinished in the store, is recorded as
/// failed, so the run history does not show it in progress forever; the
/// caller then releases the guard and reports the failure as for any sync.
/// The panic's message goes to the log only: it may quote data, and status
/// and Events are read by more people than the log is.
async fn sync_ended_early(ctx: &Arc<Context>, conn: &ConnectionRef, mode: SyncMode, ended: JoinError) -> SyncReport {
    let (outcome, reason, message) = if ended.is_panic() {
        let panic = panics::message_of(ended.into_panic().as_ref());
        tracing::error!(connection = %conn, panic = %panic, "the sync panicked; recording it as failed");
        ctx.metrics.reconcile_error("sync", "panic");
        (
            RunOutcome::Failed,
            "InternalError",
            "the sync stopped on an internal error (a panic; the operator's log has it)",
        )
    } else {
        tracing::warn!(connection = %conn, "the sync's task was stopped; recording it as interrupted");
        (RunOutcome::Interrupted, "Interrupted", "the sync's task was stopped (the operator is stopping)")
    };
    let finish = RunFinish {
        outcome,
        mode: None,
        counts: Default::default(),
        message: format!("{message}; nothing was applied"),
        finished_at: Timestamp::now(),
    };
    let (store, conn_for_store, holder) = (ctx.store.clone(), conn.clone(), ctx.config.identity.clone());
    let closed =
        tokio::task::spawn_blocking(move || finish_unfinished_runs(store.as_ref(), &conn_for_store, &holder, &finish))
            .await;
    match closed {
        Ok(Ok(runs)) => tracing::info!(connection = %conn, runs, "closed the sync's unfinished run"),
        Ok(Err(error)) => tracing::warn!(%error, connection = %conn, "could not record the sync's run as ended"),
        Err(error) => tracing::warn!(%error, connection = %conn, "could not record the sync's run as ended"),
    }
    let mut report = failed_report(mode, reason, message.to_string(), false);
    report.outcome = outcome;
    report
}

/// Finishes, with `finish`, the runs of `conn` that `holder` started and
/// that never finished, dropping their staged changes. The caller holds the
/// connection's guard, so any such run is the one that just died. Returns
/// how many there were.
pub fn finish_unfinished_runs(
    store: &dyn Store,
    conn: &ConnectionRef,
    holder: &str,
    finish: &RunFinish,
) -> Result<usize, StoreError> {
    let unfinished: Vec<_> =
        store.runs(conn, 20)?.into_iter().filter(|r| r.finished_at.is_none() && r.holder == holder).collect();
    for run in &unfinished {
        store.abandon_run(run.id, finish)?;
    }
    Ok(unfinished.len())
}

/// Why a sync lost its guard, for its report.
#[derive(Clone, Debug, thiserror::Error)]
#[error("lost the sync guard {lease}: {lost}")]
struct GuardLost {
    lease: String,
    lost: LeaseLost,
}

/// Keeps a guard: renews it until `stop` (then hands it back, for
/// release) or until it is lost (then says why in `state` and cancels the
/// sync running under it, which applies nothing: from then on another
/// instance may run one).
async fn keep(
    mut held: Held,
    policy: crate::lease::RenewPolicy,
    state: Arc<Mutex<GuardState>>,
    stop: CancellationToken,
) -> Option<Held> {
    let lost = tokio::select! {
        lost = held.keep(policy) => lost,
        _ = stop.cancelled() => return Some(held),
    };
    let lost = GuardLost { lease: held.name().to_string(), lost };
    let mut shared = locked(&state);
    match shared.sync.take() {
        Some(sync) => {
            tracing::warn!(reason = %lost, "cancelling the sync");
            sync.cancel(CancelReason::GuardLost(lost.to_string()));
        }
        None => tracing::warn!(reason = %lost, "lost a sync guard; the next sync takes it again if it can"),
    }
    shared.lost = Some(lost);
    None
}

/// `holder`, another instance holding a guard, with what the Connection's
/// status says it is running, if it names that holder.
fn running_holder(connection: &Connection, mut holder: Holder) -> Holder {
    let current = connection.status.as_ref().and_then(|s| s.current_sync.as_ref());
    if let Some(run) = current.filter(|r| r.holder == holder.identity) {
        holder.request = run.request.clone();
        holder.mode = run.mode.to_string();
        holder.since = run.started.0;
    }
    holder
}

fn failed_report(mode: SyncMode, reason: &str, message: String, stalled: bool) -> SyncReport {
    SyncReport {
        run: None,
        outcome: RunOutcome::Failed,
        mode,
        message: format!("{message}; nothing was applied"),
        counts: Default::default(),
        pages: 0,
        duration_ms: 0,
        accounts: 0,
        reason: Some(reason.to_string()),
        stalled,
        preview: Vec::new(),
    }
}

fn cancelled_report(mode: SyncMode) -> SyncReport {
    SyncReport {
        run: None,
        outcome: RunOutcome::Cancelled,
        mode,
        message: "cancelled before it started; nothing was applied".to_string(),
        counts: Default::default(),
        pages: 0,
        duration_ms: 0,
        accounts: 0,
        reason: Some("Cancelled".to_string()),
        stalled: false,
        preview: Vec::new(),
    }
}

pub fn outcome_of(outcome: RunOutcome) -> SyncOutcome {
    match outcome {
        RunOutcome::Succeeded => SyncOutcome::Succeeded,
        RunOutcome::Failed => SyncOutcome::Failed,
        RunOutcome::Interrupted => SyncOutcome::Interrupted,
        RunOutcome::Cancelled => SyncOutcome::Cancelled,
        RunOutcome::SafeguardTripped => SyncOutcome::SafeguardTripped,
        RunOutcome::DryRun => SyncOutcome::DryRun,
    }
}

pub fn counts_of(report: &SyncReport) -> SyncCounts {
    SyncCounts {
        created: report.counts.created,
        updated: report.counts.updated,
        deleted: report.counts.deleted,
        unchanged: report.counts.unchanged,
    }
}

/// A one-line summary for Events and status.
pub fn summary(report: &SyncReport) -> String {
    let c = &report.counts;
    let counts =
        format!("created {}, updated {}, deleted {}, unchanged {}", c.created, c.updated, c.deleted, c.unchanged);
    match report.outcome {
        RunOutcome::Succeeded if report.message.is_empty() => format!("{} sync succeeded: {counts}", report.mode),
        RunOutcome::Succeeded => format!("{} sync succeeded: {counts} ({})", report.mode, report.message),
        RunOutcome::DryRun => format!("dry run ({}): would have {counts}; nothing was applied", report.mode),
        _ => report.message.clone(),
    }
}

/// Writes a finished sync into the Connection's status and Events.
async fn record_result(ctx: &Arc<Context>, connection: &Connection, ticket: &Ticket, report: &SyncReport) {
    let conn = connection_ref(connection);
    let connections: Api<Connection> = Api::namespaced(ctx.client.clone(), &conn.namespace);
    let now = Timestamp::now();
    let note = summary(report);
    // Whatever a dry run found (changes, a failure, a safeguard it would
    // trip), the Connection's live status stays as it was.
    let dry_run = ticket.dry_run;
    let written = status::update(&connections, &conn.name, |c: &mut Connection| {
        let generation = c.metadata.generation;
        let s = c.status.get_or_insert_with(Default::default);
        s.current_sync = None;
        conditions::mark_idle(&mut s.conditions, generation, Time(now));
        if dry_run {
            // A dry run changes nothing the Connection reports.
            return true;
        }
        s.last_sync_time = Some(Time(now));
        s.last_result = Some(SyncResult {
            mode: report.mode,
            counts: counts_of(report),
            duration_milliseconds: report.duration_ms,
            outcome: outcome_of(report.outcome),
            message: report.message.clone(),
            details: [("pages".to_string(), report.pages)].into_iter().collect(),
        });
        match report.outcome {
            RunOutcome::Succeeded => {
                s.last_successful_sync_time = Some(Time(now));
                s.account_count = Some(report.accounts);
                s.cursor_time = Some(Time(now));
                conditions::set_condition(
                    &mut s.conditions,
                    conditions::READY,
                    TRUE,
                    "Synced",
                    &note,
                    generation,
                    Time(now),
                );
                conditions::set_condition(
                    &mut s.conditions,
                    conditions::STALLED,
                    FALSE,
                    "Synced",
                    "",
                    generation,
                    Time(now),
                );
            }
            outcome => {
                let reason = report.reason.clone().unwrap_or_else(|| format!("{outcome:?}"));
                conditions::set_condition(
                    &mut s.conditions,
                    conditions::READY,
                    FALSE,
                    &reason,
                    &note,
                    generation,
                    Time(now),
                );
                let (stalled, stalled_reason) =
                    if report.stalled { (TRUE, reason.as_str()) } else { (FALSE, "NotStalled") };
                conditions::set_condition(
                    &mut s.conditions,
                    conditions::STALLED,
                    stalled,
                    stalled_reason,
                    if report.stalled { &note } else { "" },
                    generation,
                    Time(now),
                );
            }
        }
        true
    })
    .await;
    if let Err(error) = written {
        tracing::warn!(%error, "could not record the sync result in the Connection's status");
    }
    let (warning, reason) = match report.outcome {
        RunOutcome::Succeeded | RunOutcome::DryRun => (false, events::SYNC_SUCCEEDED),
        RunOutcome::SafeguardTripped => (true, events::SAFEGUARD_TRIPPED),
        RunOutcome::Cancelled => (true, events::SYNC_CANCELLED),
        RunOutcome::Interrupted => (true, events::SYNC_INTERRUPTED),
        RunOutcome::Failed => (true, events::SYNC_FAILED),
    };
    // The Connection's own record of each run, with its counts. A request
    // gets one Event when it completes, naming each target's result
    // (`resync::announce_completion`), rather than one per target here.
    events::publish(&ctx.recorder, &connection.object_ref(&()), warning, reason, note).await;
    tracing::info!(outcome = ?report.outcome, mode = %report.mode, created = report.counts.created,
        updated = report.counts.updated, deleted = report.counts.deleted, unchanged = report.counts.unchanged,
        duration_ms = report.duration_ms, "sync finished");
}

/// A holder's guard lapsed and is now ours. If it died mid-sync (the
/// Connection's status shows its sync running), that run is marked
/// Interrupted and the Connection says so; a holder that merely kept the
/// guard while idle leaves nothing to report.
async fn interrupt(ctx: &Arc<Context>, connection: &Connection, dead: &Holder) {
    let conn = connection_ref(connection);
    let message = format!(
        "operator instance {} stopped while syncing (its guard expired); the sync was interrupted and nothing it read was applied",
        dead.identity
    );
    let store = ctx.store.clone();
    let conn_for_store = conn.clone();
    let message_for_store = message.clone();
    let shared = ctx.shared();
    let dead_holder = dead.identity.clone();
    // Only runs left unfinished: none when the holder was idle. With
    // shared replicas, only the dead holder's: the store is shared, and
    // scoping by holder keeps a peer's run out of it whatever else went
    // wrong.
    let interrupted = tokio::task::spawn_blocking(move || {
        if shared {
            let finish = RunFinish {
                outcome: RunOutcome::Interrupted,
                mode: None,
                counts: Default::default(),
                message: message_for_store,
                finished_at: Timestamp::now(),
            };
            finish_unfinished_runs(store.as_ref(), &conn_for_store, &dead_holder, &finish).map(drop)
        } else {
            store.interrupt_unfinished_runs(Some(&conn_for_store), Timestamp::now(), &message_for_store).map(drop)
        }
    })
    .await;
    if let Ok(Err(error)) = interrupted {
        tracing::warn!(%error, "could not mark the interrupted run");
    }
    let connections: Api<Connection> = Api::namespaced(ctx.client.clone(), &conn.namespace);
    let now = Timestamp::now();
    let written = status::update(&connections, &conn.name, |c: &mut Connection| {
        let generation = c.metadata.generation;
        let s = c.status.get_or_insert_with(Default::default);
        let Some(run) = s.current_sync.take().filter(|r| r.holder == dead.identity) else {
            return false;
        };
        s.last_result = Some(SyncResult {
            mode: run.mode,
            counts: SyncCounts::default(),
            duration_milliseconds: 0,
            outcome: SyncOutcome::Interrupted,
            message: message.clone(),
            details: Default::default(),
        });
        conditions::set_condition(
            &mut s.conditions,
            conditions::SYNCING,
            FALSE,
            "Interrupted",
            &message,
            generation,
            Time(now),
        );
        true
    })
    .await;
    match written {
        Ok(Some(_)) => {
            events::publish(&ctx.recorder, &connection.object_ref(&()), true, events::SYNC_INTERRUPTED, message).await
        }
        Ok(None) => tracing::debug!(connection = %conn, holder = %dead.identity, "took over an idle holder's guard"),
        Err(error) => tracing::warn!(%error, "could not record the interrupted sync in the Connection's status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunMode;
    use crate::model::{NewRun, RunId};
    use crate::store::SqliteStore;

    const HOLDER: &str = "operator-a";

    fn conn(name: &str) -> ConnectionRef {
        ConnectionRef { namespace: "default".into(), name: name.into() }
    }

    /// A Context whose client is never contacted: what is tested here
    /// writes to the store and the metrics only.
    fn context(store: Arc<dyn Store>) -> Arc<Context> {
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let config = super::super::Config { identity: HOLDER.into(), ..Default::default() };
        Context::new(client, store, Arc::new(super::super::SystemClock), config)
    }

    fn start(store: &dyn Store, c: &ConnectionRef, holder: &str) -> RunId {
        let run = NewRun {
            connection: c.clone(),
            trigger: Trigger::Requested,
            request: Some("resync-hr".into()),
            requested_mode: RunMode::Full,
            holder: holder.into(),
            started_at: Timestamp::now(),
        };
        store.start_run(&run).expect("run started")
    }

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        (dir, store)
    }

    #[tokio::test]
    async fn a_sync_that_panics_fails_and_its_run_is_closed_not_left_in_progress() {
        let (_dir, store) = store();
        let ctx = context(store.clone());
        let hr = conn("hr");
        let sync = {
            let (store, hr) = (store.clone(), hr.clone());
            tokio::spawn(async move {
                let run = start(store.as_ref(), &hr, HOLDER);
                if run > 0 {
                    panic!("a connector bug quoting source data: jane@acme.example");
                }
                failed_report(SyncMode::Full, "Unreachable", String::new(), false)
            })
        };
        let ended = sync.await.expect_err("the sync panicked");
        let report = sync_ended_early(&ctx, &hr, SyncMode::Full, ended).await;

        assert_eq!(report.outcome, RunOutcome::Failed);
        assert_eq!(report.reason.as_deref(), Some("InternalError"));
        assert!(report.message.contains("internal error") && report.message.ends_with("nothing was applied"));
        // The panic's text is for the log, not for status and Events.
        assert!(!report.message.contains("jane@acme.example"), "{}", report.message);
        let runs = store.runs(&hr, 10).expect("runs");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome, Some(RunOutcome::Failed));
        assert!(runs[0].finished_at.is_some(), "the run is still in progress: {:?}", runs[0]);
        assert!(
            ctx.metrics
                .render()
                .lines()
                .any(|l| l == r#"idsync_reconcile_errors_total{controller="sync",error="panic"} 1"#),
            "{}",
            ctx.metrics.render()
        );
    }

    #[tokio::test]
    async fn a_sync_task_stopped_from_outside_is_interrupted() {
        let (_dir, store) = store();
        let ctx = context(store.clone());
        let hr = conn("hr");
        let run = start(store.as_ref(), &hr, HOLDER);
        let sync = tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            cancelled_report(SyncMode::Delta)
        });
        sync.abort();
        let ended = sync.await.expect_err("aborted");
        let report = sync_ended_early(&ctx, &hr, SyncMode::Delta, ended).await;
        assert_eq!(report.outcome, RunOutcome::Interrupted);
        assert_eq!(store.run(run).expect("read").and_then(|r| r.outcome), Some(RunOutcome::Interrupted));
        assert!(!ctx.metrics.render().contains(r#"error="panic""#));
    }

    #[test]
    fn only_the_holders_unfinished_runs_of_that_connection_are_finished() {
        let (_dir, store) = store();
        let (hr, idp) = (conn("hr"), conn("idp"));
        let ours = start(store.as_ref(), &hr, HOLDER);
        let other_connection = start(store.as_ref(), &idp, HOLDER);
        let other_holder = start(store.as_ref(), &hr, "operator-b");
        let finish = RunFinish {
            outcome: RunOutcome::Failed,
            mode: None,
            counts: Default::default(),
            message: "stopped".into(),
            finished_at: Timestamp::now(),
        };
        assert_eq!(finish_unfinished_runs(store.as_ref(), &hr, HOLDER, &finish).expect("finished"), 1);
        let outcome = |id| store.run(id).expect("read").expect("known").outcome;
        assert_eq!(outcome(ours), Some(RunOutcome::Failed));
        assert_eq!(outcome(other_connection), None);
        assert_eq!(outcome(other_holder), None);
        // Nothing left to finish the second time.
        assert_eq!(finish_unfinished_runs(store.as_ref(), &hr, HOLDER, &finish).expect("finished"), 0);
    }
}
