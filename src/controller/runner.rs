//! The sync runner: syncs run as tokio tasks off the reconcile loop, at most
//! `max_concurrent_syncs` at once, each holding its connection's durable
//! guard and cancellable (concurrencyPolicy Replace, shutdown). Status and
//! Events say when a sync starts and how it ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
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
    /// The ResyncRequest, to record its Events too.
    pub request_ref: Option<ObjectReference>,
    pub dry_run: bool,
    pub confirm_deletes: bool,
}

/// Called with the report when a sync has ended and its status is written.
pub type OnDone = Box<dyn FnOnce(SyncReport) -> BoxFuture<'static, ()> + Send>;

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
}

pub fn connection_ref(connection: &Connection) -> ConnectionRef {
    ConnectionRef {
        namespace: connection.namespace().unwrap_or_else(|| "default".to_string()),
        name: connection.name_any(),
    }
}

impl Runner {
    pub fn new(max_concurrent: usize) -> Self {
        Runner { permits: Arc::new(Semaphore::new(max_concurrent.max(1))), running: Mutex::new(HashMap::new()) }
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

    /// Starts a sync unless one holds the connection (here or, through the
    /// durable guard, anywhere).
    pub async fn start(self: &Arc<Self>, ctx: Arc<Context>, ticket: Ticket, on_done: OnDone) -> Result<Start, Error> {
        let conn = connection_ref(&ticket.connection);
        if let Some(holder) = self.running(&conn) {
            return Ok(Start::Busy(holder));
        }
        let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &conn.namespace);
        let mode = ticket.mode.to_string();
        let claim = GuardClaim {
            identity: &ctx.config.identity,
            request: ticket.request.as_deref(),
            mode: &mode,
            duration: ctx.config.guard_duration,
            owner: guard::owner(&ticket.connection),
        };
        let acquired = guard::acquire(&leases, &conn.name, claim).await?;
        let (lease, expired) = match acquired {
            Acquired::Busy(holder) => return Ok(Start::Busy(holder)),
            Acquired::Taken { lease, expired } => (lease, expired),
        };
        if let Some(dead) = expired {
            interrupt(&ctx, &ticket.connection, &dead).await;
        }
        let holder = Holder {
            identity: ctx.config.identity.clone(),
            request: ticket.request.clone(),
            mode: ticket.mode.to_string(),
            since: Timestamp::now(),
        };
        let cancel = Cancel::new();
        let (done_tx, done_rx) = watch::channel(false);
        match self.running.lock() {
            Ok(mut running) => {
                running.insert(conn.clone(), Running { holder: holder.clone(), cancel: cancel.clone(), done: done_rx });
            }
            Err(_) => return Err(Error::Conflict("the sync registry is poisoned".into())),
        }
        let runner = self.clone();
        let span = tracing::info_span!("sync", connection = %conn.name, namespace = %conn.namespace, request = ?ticket.request);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let report = runner.execute(&ctx, &ticket, *lease, holder, cancel).await;
                if let Ok(mut running) = runner.running.lock() {
                    running.remove(&conn);
                }
                on_done(report).await;
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
        lease: Held,
        holder: Holder,
        cancel: Cancel,
    ) -> SyncReport {
        let connection = &ticket.connection;
        let conn = connection_ref(connection);
        let connections: Api<Connection> = Api::namespaced(ctx.client.clone(), &conn.namespace);

        let heartbeat = Heartbeat::start(lease, guard::renew_policy(ctx.config.guard_duration), cancel.clone());

        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok(),
            _ = cancel.cancelled() => None,
        };

        let started = Timestamp::now();
        let _ = status::update(&connections, &conn.name, |c: &mut Connection| {
            let s = c.status.get_or_insert_with(Default::default);
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
        let regarding = connection.object_ref(&());
        let start_note = match &ticket.request {
            Some(r) => format!("{} sync started for ResyncRequest {r}", ticket.mode),
            None => format!("{} sync started ({})", ticket.mode, ticket.trigger),
        };
        events::publish(&ctx.recorder, &regarding, false, events::SYNC_STARTED, start_note.clone()).await;
        if let Some(request_ref) = &ticket.request_ref {
            let note = format!("{} sync of {} started", ticket.mode, conn.name);
            events::publish(&ctx.recorder, request_ref, false, events::SYNC_STARTED, note).await;
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
        let lost = heartbeat.stop().await;
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
#[derive(Debug, thiserror::Error)]
#[error("lost the sync guard {lease}: {lost}")]
struct GuardLost {
    lease: String,
    lost: LeaseLost,
}

/// Keeps a running sync's guard. Losing it (another holder took it, it was
/// deleted, or no renewal succeeded before it lapsed) cancels the sync,
/// which then applies nothing: from then on another instance may run one.
struct Heartbeat {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<(Held, Option<GuardLost>)>,
}

impl Heartbeat {
    fn start(mut held: Held, policy: crate::lease::RenewPolicy, sync: Cancel) -> Heartbeat {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let lost = tokio::select! {
                lost = held.keep(policy) => lost,
                _ = stopped.cancelled() => return (held, None),
            };
            let lost = GuardLost { lease: held.name().to_string(), lost };
            tracing::warn!(reason = %lost, "cancelling the sync");
            sync.cancel(CancelReason::GuardLost(lost.to_string()));
            (held, Some(lost))
        });
        Heartbeat { stop, task }
    }

    /// Stops renewing and gives the guard back unless it was lost; says why
    /// it was lost, if it was.
    async fn stop(self) -> Option<GuardLost> {
        self.stop.cancel();
        match self.task.await {
            Ok((held, None)) => {
                guard::release(held).await;
                None
            }
            Ok((_, Some(lost))) => Some(lost),
            Err(error) => {
                tracing::warn!(%error, "the sync guard's heartbeat failed; the guard lapses on its own");
                None
            }
        }
    }
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
    events::publish(&ctx.recorder, &connection.object_ref(&()), warning, reason, note.clone()).await;
    if let Some(request_ref) = &ticket.request_ref {
        events::publish(&ctx.recorder, request_ref, warning, reason, format!("{}: {note}", conn.name)).await;
    }
    tracing::info!(outcome = ?report.outcome, mode = %report.mode, created = report.counts.created,
        updated = report.counts.updated, deleted = report.counts.deleted, unchanged = report.counts.unchanged,
        duration_ms = report.duration_ms, "sync finished");
}

/// A holder died mid-sync: its run is marked Interrupted, the Connection
/// says so, and the guard is now ours.
async fn interrupt(ctx: &Arc<Context>, connection: &Connection, dead: &Holder) {
    let conn = connection_ref(connection);
    let message = format!(
        "operator instance {} stopped while syncing (its guard expired); the sync was interrupted and nothing it read was applied",
        dead.identity
    );
    let store = ctx.store.clone();
    let conn_for_store = conn.clone();
    let message_for_store = message.clone();
    let interrupted = tokio::task::spawn_blocking(move || {
        store.interrupt_unfinished_runs(Some(&conn_for_store), Timestamp::now(), &message_for_store)
    })
    .await;
    if let Ok(Err(error)) = interrupted {
        tracing::warn!(%error, "could not mark the interrupted run");
    }
    let connections: Api<Connection> = Api::namespaced(ctx.client.clone(), &conn.namespace);
    let now = Timestamp::now();
    let _ = status::update(&connections, &conn.name, |c: &mut Connection| {
        let generation = c.metadata.generation;
        let s = c.status.get_or_insert_with(Default::default);
        s.current_sync = None;
        s.last_result = Some(SyncResult {
            mode: if dead.mode == "Full" { SyncMode::Full } else { SyncMode::Delta },
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
    events::publish(&ctx.recorder, &connection.object_ref(&()), true, events::SYNC_INTERRUPTED, message).await;
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
