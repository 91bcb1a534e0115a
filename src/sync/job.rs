//! One sync of one connection: read pages from the connector, diff them
//! against the store, stage the changes, check the import safeguard, and
//! commit the changes with the new cursor in one transaction — or nothing.
//!
//! The read runs one page ahead of the staging, so fetching and parsing
//! overlap the store's work. A full read into an empty connection keeps its
//! accounts encoded in memory (bounded; beyond the bound they go to the
//! staging) and the commit writes them once. A Delta looks up only the ids
//! it names, never the connection's whole index.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;

use super::cancel::{Cancel, CancelReason};
use super::diff::{Diff, PageChanges};
use super::safeguard;
use crate::connectors::{Connector, ConnectorError, Page, ReadKind};
use crate::model::{
    Account, AccountChange, ChangeKind, ConnectionRef, Counts, NewRun, RunFinish, RunId, RunMode, RunOutcome, Trigger,
};
use crate::store::outbox::OutboxEntry;
use crate::store::{CursorUpdate, EncodedAccount, StagedChange, Store, StoreError};
use idsync_api::SyncMode;
use idsync_api::connection::ImportSafeguard;

/// What a sync is asked to do.
#[derive(Clone, Debug)]
pub struct SyncJob {
    pub connection: ConnectionRef,
    pub mode: SyncMode,
    pub trigger: Trigger,
    pub request: Option<String>,
    pub holder: String,
    pub dry_run: bool,
    /// Apply deletions the import safeguard would hold back.
    pub confirm_deletes: bool,
    pub safeguard: ImportSafeguard,
    /// A hash of the provider settings the cursor belongs to: when they
    /// change, the stored cursor is not used (a new mapping needs a new
    /// cursor, as an Entra ID delta token does).
    pub settings_hash: String,
    /// For providers whose deltas carry no deletions: a Delta becomes Full
    /// when the last successful Full sync is older than this, so deleted
    /// accounts are found.
    pub full_sync_interval: std::time::Duration,
    /// The longest the sync may run before it is stopped, applying nothing.
    pub max_duration: std::time::Duration,
}

/// A report's reason when the operator's shutdown stopped the sync: its
/// request is left to the next operator, not marked failed.
pub const SHUTDOWN: &str = "Shutdown";

/// The store's name for an API sync mode.
pub fn run_mode(mode: SyncMode) -> RunMode {
    match mode {
        SyncMode::Delta => RunMode::Delta,
        SyncMode::Full => RunMode::Full,
    }
}

/// Whether a full pass is due: no successful Full sync yet, or the last one
/// is older than `interval` at `now`.
pub fn full_pass_due(runs: &[crate::model::RunRecord], interval: std::time::Duration, now: Timestamp) -> bool {
    let last_full = runs
        .iter()
        .filter(|r| r.outcome == Some(RunOutcome::Succeeded) && r.mode == Some(RunMode::Full))
        .filter_map(|r| r.finished_at)
        .max();
    let interval = jiff::SignedDuration::try_from(interval).unwrap_or(jiff::SignedDuration::MAX);
    last_full.is_none_or(|at| now.duration_since(at) >= interval)
}

/// What a sync did.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncReport {
    pub run: Option<RunId>,
    pub outcome: RunOutcome,
    /// The mode that actually ran.
    pub mode: SyncMode,
    /// Why a Delta ran as Full, or why it failed.
    pub message: String,
    pub counts: Counts,
    pub pages: u64,
    pub duration_ms: u64,
    /// The connection's account count after the sync.
    pub accounts: u64,
    /// The error's reason when it failed (Unauthorized, SourceError…).
    pub reason: Option<String>,
    /// True when the failure needs a person (credentials, configuration).
    pub stalled: bool,
    /// The first few accounts it created, updated (with the fields, before
    /// → after) and deleted, or would have; all of them are in the run
    /// history (`idsync runs get`).
    pub preview: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Connector(#[from] ConnectorError),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("cancelled")]
    Cancelled,
    #[error("ran longer than its deadline")]
    Deadline(std::time::Duration),
    #[error("{0}")]
    Safeguard(#[from] safeguard::Tripped),
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .unwrap_or_else(|e| Err(StoreError::Internal(format!("store task failed: {e}"))))
}

/// Builds notifications for the store's outbox from what a sync did.
pub type Notices<T> = Box<dyn FnOnce(T) -> Vec<OutboxEntry> + Send>;

/// Builds the notifications of a sync, for the store's outbox.
pub struct Announce {
    /// Those announcing its start, given its run's number: enqueued as soon
    /// as the run is recorded.
    pub started: Notices<RunId>,
    /// Those announcing how it ended, from its report (before the account
    /// count, which is read after the commit): they go to the outbox in the
    /// transaction that records the result, so they are sent if and only if
    /// that result is what the store holds.
    pub finished: Notices<SyncReport>,
}

/// Runs one sync to its end. Never leaves partial changes in the store.
pub async fn run(job: SyncJob, connector: Box<dyn Connector>, store: Arc<dyn Store>, cancel: Cancel) -> SyncReport {
    run_announcing(job, connector, store, cancel, None).await
}

/// [`run`], committing the notifications `announce` builds with the run's
/// result.
pub async fn run_announcing(
    job: SyncJob,
    mut connector: Box<dyn Connector>,
    store: Arc<dyn Store>,
    cancel: Cancel,
    announce: Option<Announce>,
) -> SyncReport {
    let started = Instant::now();
    let conn = job.connection.clone();
    let new_run = NewRun {
        connection: conn.clone(),
        trigger: job.trigger,
        request: job.request.clone(),
        requested_mode: run_mode(job.mode),
        holder: job.holder.clone(),
        started_at: Timestamp::now(),
    };
    let run_id = match blocking(&store, move |s| s.start_run(&new_run)).await {
        Ok(id) => id,
        Err(e) => {
            return SyncReport {
                run: None,
                outcome: RunOutcome::Failed,
                mode: job.mode,
                message: format!("the store failed: {e}"),
                counts: Counts::default(),
                pages: 0,
                duration_ms: elapsed_ms(started),
                accounts: 0,
                reason: Some("StoreError".into()),
                stalled: false,
                preview: Vec::new(),
            };
        }
    };
    let finished = match announce {
        Some(Announce { started, finished }) => {
            let entries = started(run_id);
            if !entries.is_empty()
                && let Err(error) = blocking(&store, move |s| s.enqueue(&entries).map(drop)).await
            {
                // The sync goes on: a notification is never a reason to stop it.
                tracing::warn!(%error, run = run_id, "cannot write the sync's start notifications");
            }
            Some(finished)
        }
        None => None,
    };
    let mut state = Progress {
        mode: job.mode,
        whole_creations: job.dry_run,
        note: None,
        counts: Counts::default(),
        pages: 0,
        preview: Preview::default(),
        direct: None,
    };
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Failure::Cancelled),
        result = tokio::time::timeout(job.max_duration, read_and_stage(&job, connector.as_mut(), &store, run_id, &mut state)) => {
            result.unwrap_or(Err(Failure::Deadline(job.max_duration)))
        }
    };

    let (outcome, message, reason, stalled) = match &result {
        Ok(Plan::Commit { .. }) if job.dry_run => {
            (RunOutcome::DryRun, with_note(&state, "dry run: nothing was applied"), None, false)
        }
        Ok(Plan::Commit { .. }) => (RunOutcome::Succeeded, with_note(&state, ""), None, false),
        // Stopped by shutdown, the sync is interrupted as by a kill -9: its
        // request keeps waiting for it, and the next operator runs it.
        Err(Failure::Cancelled) if cancel.reason() == Some(CancelReason::Shutdown) => (
            RunOutcome::Interrupted,
            format!(
                "interrupted: {}; nothing was applied, and the next operator runs it again",
                CancelReason::Shutdown
            ),
            Some(SHUTDOWN.to_string()),
            false,
        ),
        Err(Failure::Cancelled) => {
            let why = cancel.reason().map_or_else(|| "cancelled".to_string(), |r| format!("cancelled: {r}"));
            (RunOutcome::Cancelled, format!("{why}; nothing was applied"), Some("Cancelled".to_string()), false)
        }
        Err(Failure::Deadline(limit)) => (
            RunOutcome::Failed,
            format!(
                "the sync ran longer than maxSyncDurationMinutes ({} min) and was stopped; nothing was applied",
                limit.as_millis().div_ceil(60_000)
            ),
            Some("DeadlineExceeded".to_string()),
            false,
        ),
        Err(Failure::Safeguard(tripped)) if job.dry_run => (
            RunOutcome::SafeguardTripped,
            format!("dry run: would trip the import safeguard: {tripped}"),
            Some("SafeguardTripped".to_string()),
            false,
        ),
        Err(Failure::Safeguard(tripped)) => {
            (RunOutcome::SafeguardTripped, tripped.to_string(), Some("SafeguardTripped".to_string()), false)
        }
        Err(Failure::Connector(e)) => {
            (RunOutcome::Failed, failure_message(e), Some(e.reason().to_string()), e.is_stalled())
        }
        Err(Failure::Store(e)) => {
            (RunOutcome::Failed, format!("the store failed: {e}"), Some("StoreError".to_string()), false)
        }
    };
    let finish = RunFinish {
        outcome,
        mode: Some(run_mode(state.mode)),
        counts: state.counts,
        message: message.clone(),
        finished_at: Timestamp::now(),
    };
    let preview = if outcome.keeps_changes() { std::mem::take(&mut state.preview).lines() } else { Vec::new() };
    let outbox = match finished {
        Some(announce) => announce(SyncReport {
            run: Some(run_id),
            outcome,
            mode: state.mode,
            message: message.clone(),
            counts: state.counts,
            pages: state.pages,
            duration_ms: elapsed_ms(started),
            accounts: 0,
            reason: reason.clone(),
            stalled,
            preview: preview.clone(),
        }),
        None => Vec::new(),
    };
    let direct = state.direct.take().map(|d| d.accounts).unwrap_or_default();
    let committed = match result {
        Ok(Plan::Commit { cursor }) if !job.dry_run => {
            let finish = finish.clone();
            blocking(&store, move |s| s.commit_run_writing(run_id, &direct, cursor, &finish, &outbox)).await
        }
        _ => {
            let finish = finish.clone();
            blocking(&store, move |s| s.abandon_run_notifying(run_id, &finish, &outbox)).await
        }
    };
    let (outcome, message, reason) = match committed {
        Ok(()) => (outcome, message, reason),
        Err(e) => {
            (RunOutcome::Failed, format!("the store could not commit the sync: {e}"), Some("StoreError".to_string()))
        }
    };
    let accounts = {
        let conn = conn.clone();
        blocking(&store, move |s| s.account_count(&conn)).await.unwrap_or_default()
    };
    SyncReport {
        run: Some(run_id),
        outcome,
        mode: state.mode,
        message,
        counts: state.counts,
        pages: state.pages,
        duration_ms: elapsed_ms(started),
        accounts,
        reason,
        stalled,
        preview: if outcome.keeps_changes() { preview } else { Vec::new() },
    }
}

struct Progress {
    mode: SyncMode,
    /// Record creations whole, not only who was created: a dry run's diff
    /// is what identities are previewed with (`ProcessingSnapshot::overlay`).
    whole_creations: bool,
    note: Option<String>,
    counts: Counts,
    pages: u64,
    preview: Preview,
    /// A run into an empty connection keeps its accounts here, encoded, and
    /// writes them once at the commit instead of staging them and copying
    /// them again; None when it stages.
    direct: Option<DirectWrite>,
}

/// The accounts a run writes straight into an empty connection at its
/// commit, up to [`DirectWrite::LIMIT`] bytes: beyond that they move to the
/// staging, so memory stays bounded whatever the connection's size.
#[derive(Debug, Default)]
struct DirectWrite {
    accounts: Vec<EncodedAccount>,
    bytes: usize,
}

impl DirectWrite {
    /// 64 MiB: about 150,000 accounts of a typical HR export. The unit
    /// tests use 16 KiB, so that both ways are tested: small syncs write
    /// directly, larger ones move to the staging.
    const LIMIT: usize = if cfg!(test) { 16 << 10 } else { 64 << 20 };
}

/// Moves what a run kept for a direct write to its staging.
async fn spill(store: &Arc<dyn Store>, run_id: RunId, kept: DirectWrite) -> Result<(), StoreError> {
    if kept.accounts.is_empty() {
        return Ok(());
    }
    tracing::debug!(run = run_id, accounts = kept.accounts.len(), "moving a direct write to the staging");
    blocking(store, move |s| s.stage_encoded(run_id, &kept.accounts)).await
}

/// The first few changes of each kind, one line each, for a status.
#[derive(Debug, Default)]
struct Preview {
    created: Vec<String>,
    updated: Vec<String>,
    deleted: Vec<String>,
}

impl Preview {
    /// Lines kept per kind: enough to recognise what a run does, few enough
    /// for an object's status.
    const PER_KIND: usize = 10;

    fn add(&mut self, changes: &[AccountChange]) {
        for change in changes {
            let lines = match change.kind {
                ChangeKind::Created => &mut self.created,
                ChangeKind::Updated => &mut self.updated,
                ChangeKind::Deleted => &mut self.deleted,
            };
            if lines.len() < Self::PER_KIND {
                lines.push(change.summary());
            }
        }
    }

    /// Created, then updated, then deleted.
    fn lines(self) -> Vec<String> {
        self.created.into_iter().chain(self.updated).chain(self.deleted).collect()
    }
}

enum Plan {
    Commit { cursor: CursorUpdate },
}

fn with_note(state: &Progress, suffix: &str) -> String {
    let mut parts: Vec<String> = state.note.iter().cloned().collect();
    if !suffix.is_empty() {
        parts.push(suffix.to_string());
    }
    parts.join("; ")
}

/// Stages one page's changes and records them account by account, field by
/// field (reading the stored accounts an update or deletion changes), in the
/// run history and the first few in the run's preview.
async fn stage_page(
    store: &Arc<dyn Store>,
    conn: &ConnectionRef,
    run_id: RunId,
    changes: PageChanges,
    state: &mut Progress,
) -> Result<(), Failure> {
    if changes.is_empty() {
        return Ok(());
    }
    let PageChanges { staged, kinds, hashes } = changes;
    let before_ids: Vec<String> = staged
        .iter()
        .zip(&kinds)
        .filter(|(_, kind)| matches!(kind, Some(ChangeKind::Updated | ChangeKind::Deleted)))
        .map(|(change, _)| match change {
            StagedChange::Upsert(account) => account.id.clone(),
            StagedChange::Delete(id) => id.clone(),
        })
        .collect();
    let before: HashMap<String, Account> = if before_ids.is_empty() {
        HashMap::new()
    } else {
        let conn = conn.clone();
        blocking(store, move |s| s.get_accounts(&conn, &before_ids))
            .await?
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect()
    };
    let recorded: Vec<AccountChange> = staged
        .iter()
        .zip(&kinds)
        .filter_map(|(change, kind)| {
            let kind = (*kind)?;
            match change {
                StagedChange::Upsert(after) if kind == ChangeKind::Created && !state.whole_creations => {
                    Some(AccountChange::creation(after))
                }
                StagedChange::Upsert(after) => AccountChange::between(before.get(&after.id), Some(after)),
                StagedChange::Delete(id) => AccountChange::between(before.get(id), None).or_else(|| {
                    Some(AccountChange { account_id: id.clone(), kind: ChangeKind::Deleted, fields: Vec::new() })
                }),
            }
        })
        .collect();
    state.preview.add(&recorded);
    let only_upserts = staged.iter().all(|c| matches!(c, StagedChange::Upsert(_)));
    if state.direct.is_none() || !only_upserts {
        // Staged in the order read: whatever was kept for a direct write first.
        if let Some(kept) = state.direct.take() {
            spill(store, run_id, kept).await?;
        }
        blocking(store, move |s| s.stage_recorded(run_id, &staged, &recorded)).await?;
        return Ok(());
    }
    // Encoded on the blocking thread, like staging, while the next page is
    // read; the record of what changed is written now all the same.
    let encoded = blocking(store, move |s| {
        let encoded: Vec<EncodedAccount> = staged
            .iter()
            .zip(hashes)
            .filter_map(|(change, hash)| match change {
                StagedChange::Upsert(a) => Some(EncodedAccount::new(a, hash.unwrap_or_else(|| a.content_hash()))),
                StagedChange::Delete(_) => None,
            })
            .collect();
        if !recorded.is_empty() {
            s.stage_recorded(run_id, &[], &recorded)?;
        }
        Ok(encoded)
    })
    .await?;
    if let Some(direct) = state.direct.as_mut() {
        direct.bytes += encoded.iter().map(EncodedAccount::size).sum::<usize>();
        direct.accounts.extend(encoded);
        if direct.bytes > DirectWrite::LIMIT
            && let Some(kept) = state.direct.take()
        {
            spill(store, run_id, kept).await?;
        }
    }
    Ok(())
}

/// Diffs one page; a Delta first looks up the stored hashes of the ids it
/// names that it has not met yet.
async fn classify(
    store: &Arc<dyn Store>,
    conn: &ConnectionRef,
    diff: &mut Diff,
    page: Page,
) -> Result<PageChanges, StoreError> {
    if diff.kind() == ReadKind::Delta {
        let ids = diff.unknown_ids(&page);
        if !ids.is_empty() {
            let conn = conn.clone();
            diff.know(blocking(store, move |s| s.account_hashes(&conn, &ids)).await?);
        }
    }
    Ok(diff.page(page))
}

/// The stored accounts of a connection, read in id order a batch at a
/// time: memory stays bounded whatever the connection's size.
struct StoredAccounts {
    conn: ConnectionRef,
    after: Option<String>,
    done: bool,
}

impl StoredAccounts {
    const BATCH: usize = 1000;

    fn of(conn: &ConnectionRef) -> Self {
        StoredAccounts { conn: conn.clone(), after: None, done: false }
    }

    /// The next batch; None after the last.
    async fn next(&mut self, store: &Arc<dyn Store>) -> Result<Option<Vec<Account>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let (conn, after) = (self.conn.clone(), self.after.clone());
        let batch = blocking(store, move |s| s.list_accounts(&conn, after.as_deref(), Self::BATCH)).await?;
        self.done = batch.len() < Self::BATCH;
        self.after = batch.last().map(|a| a.id.clone());
        Ok((!batch.is_empty()).then_some(batch))
    }
}

/// After a Delta read that carried the whole membership of `complete`
/// groups: stages, as ordinary updates, the stored accounts that list one
/// of them but were not among the members read, without those groups.
async fn stage_departures(
    store: &Arc<dyn Store>,
    conn: &ConnectionRef,
    run_id: RunId,
    diff: &mut Diff,
    complete: &BTreeSet<String>,
    state: &mut Progress,
) -> Result<(), Failure> {
    let mut stored = StoredAccounts::of(conn);
    while let Some(batch) = stored.next(store).await? {
        let left = diff.departures(batch, complete);
        if !left.is_empty() {
            tracing::debug!(connection = %conn, accounts = left.len(), "accounts left groups read in full");
            let changes =
                classify(store, conn, diff, Page { number: state.pages, accounts: left, deleted: Vec::new() }).await?;
            stage_page(store, conn, run_id, changes, state).await?;
        }
    }
    Ok(())
}

/// The groups stored accounts list that the source says no longer exist
/// (none when it cannot tell).
async fn groups_gone(
    store: &Arc<dyn Store>,
    conn: &ConnectionRef,
    connector: &mut dyn Connector,
) -> Result<BTreeSet<String>, Failure> {
    let mut listed = BTreeSet::new();
    let mut stored = StoredAccounts::of(conn);
    while let Some(batch) = stored.next(store).await? {
        listed.extend(batch.into_iter().flat_map(|a| a.groups));
    }
    if listed.is_empty() {
        return Ok(listed);
    }
    let names: Vec<String> = listed.iter().cloned().collect();
    let Some(present) = connector.groups_present(&names).await? else {
        return Ok(BTreeSet::new());
    };
    for name in present {
        listed.remove(&name);
    }
    Ok(listed)
}

/// Adds a sentence to the run's message.
fn add_note(state: &mut Progress, note: String) {
    state.note = Some(match state.note.take() {
        Some(earlier) => format!("{earlier}; {note}"),
        None => note,
    });
}

fn failure_message(e: &ConnectorError) -> String {
    format!("{e}; nothing was applied")
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn read_and_stage(
    job: &SyncJob,
    connector: &mut dyn Connector,
    store: &Arc<dyn Store>,
    run_id: RunId,
    state: &mut Progress,
) -> Result<Plan, Failure> {
    let conn = job.connection.clone();
    let stored_cursor = {
        let conn = conn.clone();
        blocking(store, move |s| s.cursor(&conn)).await?
    };
    // A cursor written for other provider settings is not used.
    let (cursor, cursor_note) = match stored_cursor {
        Some(c) if c.settings_hash == job.settings_hash => (Some(c.value), None),
        Some(_) => (None, Some("the provider settings changed, so the stored cursor was not used".to_string())),
        None => (None, None),
    };
    let mut cursor_note = cursor_note;
    if cursor_note.is_none() && job.mode == SyncMode::Delta && !connector.capabilities().delta_deletions {
        let conn = conn.clone();
        let runs = blocking(store, move |s| s.runs(&conn, 200)).await?;
        if full_pass_due(&runs, job.full_sync_interval, Timestamp::now()) {
            let hours = job.full_sync_interval.as_secs() / 3600;
            cursor_note = Some(format!(
                "this provider's deltas carry no deletions, and the last full pass is older than fullSyncIntervalHours ({hours}h)"
            ));
        }
    }
    let cursor = if cursor_note.is_some() { None } else { cursor };
    let mode = if cursor_note.is_some() { SyncMode::Full } else { job.mode };
    let plan = connector.begin(mode, cursor.as_deref()).await?;
    state.mode = match plan.kind {
        ReadKind::Full => SyncMode::Full,
        ReadKind::Delta => SyncMode::Delta,
    };
    state.note = match (job.mode, state.mode, cursor_note, plan.reason) {
        (SyncMode::Delta, SyncMode::Full, Some(note), _) => Some(format!("ran as Full: {note}")),
        (SyncMode::Delta, SyncMode::Full, None, Some(reason)) => Some(format!("ran as Full: {reason}")),
        _ => None,
    };

    // A full read needs every stored id (whom the source no longer lists is
    // deleted); a Delta only the ids it names, looked up page by page.
    let mut diff = match plan.kind {
        ReadKind::Full => {
            let conn = conn.clone();
            Diff::new(blocking(store, move |s| s.account_index(&conn)).await?, ReadKind::Full)
        }
        ReadKind::Delta => {
            let conn = conn.clone();
            Diff::delta(blocking(store, move |s| s.account_count(&conn)).await?)
        }
    };
    // Into an empty connection, a full read's accounts are written once, at
    // the commit, rather than staged and copied. A dry run applies nothing,
    // so it stages as before.
    if plan.kind == ReadKind::Full && diff.total_before() == 0 && !job.dry_run {
        state.direct = Some(DirectWrite::default());
    }
    // One page ahead: the next page is fetched and parsed while this one is
    // staged on a blocking thread, and no further, so a fast source never
    // piles pages up in memory ahead of a slow store.
    let mut next = connector.next_page().await?;
    while let Some(page) = next.take() {
        state.pages += 1;
        let changes = classify(store, &conn, &mut diff, page).await?;
        // The staging first: join! polls in order, and its first poll hands
        // the page to the blocking thread before the parse of the next one
        // takes this thread.
        let (staged, fetched) = tokio::join!(stage_page(store, &conn, run_id, changes, state), connector.next_page());
        staged?;
        next = fetched?;
    }
    if plan.kind == ReadKind::Delta {
        let mut complete: BTreeSet<String> = connector.complete_groups().into_iter().collect();
        if diff.deleted_unknown() {
            let gone = groups_gone(store, &conn, connector).await?;
            if !gone.is_empty() {
                add_note(
                    state,
                    format!(
                        "{} group(s) no longer at the source were taken off their members: {}",
                        gone.len(),
                        gone.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
                complete.extend(gone);
            }
        }
        if !complete.is_empty() {
            stage_departures(store, &conn, run_id, &mut diff, &complete, state).await?;
        }
    }
    // Before deleting what the listing did not name, ask the source about
    // each: a live account it skipped is kept (with what the source says
    // now), never deleted.
    let unseen = diff.unseen();
    if !unseen.is_empty() {
        let present = connector.still_present(&unseen).await?;
        if !present.is_empty() {
            let found = present.len();
            state.pages += 1;
            let changes = diff.page(Page { number: state.pages, accounts: present, deleted: Vec::new() });
            stage_page(store, &conn, run_id, changes, state).await?;
            add_note(
                state,
                format!("{found} account(s) the listing skipped are still at the source and were kept, not deleted"),
            );
        }
    }
    for note in connector.notes() {
        add_note(state, note);
    }
    let total_before = diff.total_before();
    let (deletions, counts) = diff.finish();
    state.counts = counts;
    // Staged and recorded before the safeguard decides, so that a held-back
    // sync's run history lists whom it would have deleted.
    for chunk in deletions.chunks(1000) {
        stage_page(store, &conn, run_id, PageChanges::deletions(chunk.to_vec()), state).await?;
    }
    match safeguard::check(counts.deleted, total_before, &job.safeguard) {
        Err(tripped) if job.confirm_deletes => add_note(
            state,
            format!(
                "{} deletion(s) of {} accounts ({}%) confirmed by confirmDeletes, over the import safeguard's {}",
                tripped.deletes, tripped.total, tripped.percent, tripped.limit
            ),
        ),
        Err(tripped) => return Err(tripped.into()),
        Ok(()) => {}
    }
    let cursor = match connector.cursor() {
        Some(value) => CursorUpdate::Set { value, settings_hash: job.settings_hash.clone() },
        None => CursorUpdate::Clear,
    };
    Ok(Plan::Commit { cursor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::{Capabilities, Page, ReadPlan};
    use crate::model::Account;
    use crate::store::SqliteStore;
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    /// How each read began: the mode asked for and the cursor given.
    type Beginnings = Arc<Mutex<Vec<(SyncMode, Option<String>)>>>;

    /// A delta-capable source that records how each read began.
    struct DeltaSource {
        began: Beginnings,
        served: bool,
        kind: ReadKind,
        deletions: bool,
    }

    impl Connector for DeltaSource {
        fn capabilities(&self) -> Capabilities {
            Capabilities { delta: true, delta_deletions: self.deletions, groups: false }
        }
        fn begin<'a>(
            &'a mut self,
            mode: SyncMode,
            cursor: Option<&'a str>,
        ) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
            if let Ok(mut began) = self.began.lock() {
                began.push((mode, cursor.map(str::to_string)));
            }
            self.kind = if mode == SyncMode::Delta && cursor.is_some() { ReadKind::Delta } else { ReadKind::Full };
            let kind = self.kind;
            Box::pin(async move { Ok(ReadPlan { kind, reason: None }) })
        }
        fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
            let page = (!self.served).then(|| Page { number: 1, accounts: vec![Account::new("E1")], deleted: vec![] });
            self.served = true;
            Box::pin(async move { Ok(page) })
        }
        fn cursor(&self) -> Option<String> {
            Some("token-1".to_string())
        }
    }

    fn job(mode: SyncMode, settings_hash: &str) -> SyncJob {
        SyncJob {
            connection: ConnectionRef { namespace: "ns".into(), name: "entra".into() },
            mode,
            trigger: Trigger::Requested,
            request: None,
            holder: "test".into(),
            dry_run: false,
            confirm_deletes: false,
            safeguard: ImportSafeguard::default(),
            settings_hash: settings_hash.into(),
            full_sync_interval: std::time::Duration::from_secs(24 * 3600),
            max_duration: std::time::Duration::from_secs(600),
        }
    }

    #[tokio::test]
    async fn a_cursor_is_used_only_with_the_settings_it_was_written_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let began = Arc::new(Mutex::new(Vec::new()));
        let source =
            || Box::new(DeltaSource { began: began.clone(), served: false, kind: ReadKind::Full, deletions: true });

        let first = run(job(SyncMode::Delta, "mapping-a"), source(), store.clone(), Cancel::new()).await;
        assert_eq!((first.outcome, first.mode), (RunOutcome::Succeeded, SyncMode::Full));
        let second = run(job(SyncMode::Delta, "mapping-a"), source(), store.clone(), Cancel::new()).await;
        assert_eq!(second.mode, SyncMode::Delta);
        // A new mapping: the stored cursor is not used, the sync runs Full and says why.
        let third = run(job(SyncMode::Delta, "mapping-b"), source(), store.clone(), Cancel::new()).await;
        assert_eq!(third.mode, SyncMode::Full);
        assert!(third.message.contains("the provider settings changed"), "{}", third.message);
        let began = began.lock().expect("lock").clone();
        assert_eq!(
            began,
            vec![(SyncMode::Delta, None), (SyncMode::Delta, Some("token-1".to_string())), (SyncMode::Full, None)]
        );
    }

    #[tokio::test]
    async fn deltas_without_deletions_get_a_full_pass_at_the_interval() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let began: Beginnings = Arc::default();
        let source =
            || Box::new(DeltaSource { began: began.clone(), served: false, kind: ReadKind::Full, deletions: false });
        let first = run(job(SyncMode::Delta, "a"), source(), store.clone(), Cancel::new()).await;
        assert_eq!(first.mode, SyncMode::Full);
        let second = run(job(SyncMode::Delta, "a"), source(), store.clone(), Cancel::new()).await;
        assert_eq!(second.mode, SyncMode::Delta, "a full pass ran within the interval: {}", second.message);
        let mut overdue = job(SyncMode::Delta, "a");
        overdue.full_sync_interval = std::time::Duration::ZERO;
        let third = run(overdue, source(), store.clone(), Cancel::new()).await;
        assert_eq!(third.mode, SyncMode::Full);
        assert!(third.message.contains("carry no deletions"), "{}", third.message);
    }

    #[test]
    fn a_full_pass_is_due_without_one_or_after_the_interval() {
        use crate::model::{Counts, RunRecord};
        let now: Timestamp = "2026-11-22T12:00:00Z".parse().expect("time");
        let run = |mode: RunMode, outcome: RunOutcome, finished: &str| RunRecord {
            id: 1,
            connection: ConnectionRef { namespace: "ns".into(), name: "c".into() },
            trigger: Trigger::Requested,
            request: None,
            requested_mode: mode,
            holder: "h".into(),
            started_at: now,
            finished_at: Some(finished.parse().expect("time")),
            outcome: Some(outcome),
            mode: Some(mode),
            counts: Counts::default(),
            message: String::new(),
        };
        let day = std::time::Duration::from_secs(24 * 3600);
        assert!(full_pass_due(&[], day, now));
        assert!(!full_pass_due(&[run(RunMode::Full, RunOutcome::Succeeded, "2026-11-22T01:00:00Z")], day, now));
        assert!(full_pass_due(&[run(RunMode::Full, RunOutcome::Succeeded, "2026-11-21T11:00:00Z")], day, now));
        assert!(full_pass_due(&[run(RunMode::Full, RunOutcome::Failed, "2026-11-22T11:00:00Z")], day, now));
        assert!(full_pass_due(&[run(RunMode::Delta, RunOutcome::Succeeded, "2026-11-22T11:00:00Z")], day, now));
    }

    #[tokio::test]
    async fn a_cancelled_sync_applies_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let cancel = Cancel::new();
        cancel.cancel(crate::sync::cancel::CancelReason::Shutdown);
        let source =
            Box::new(DeltaSource { began: Arc::default(), served: false, kind: ReadKind::Full, deletions: true });
        let report = run(job(SyncMode::Full, "a"), source, store.clone(), cancel).await;
        assert_eq!(report.outcome, RunOutcome::Interrupted);
        assert_eq!(report.reason.as_deref(), Some(SHUTDOWN));
        assert_eq!(
            report.message,
            "interrupted: the operator is shutting down; nothing was applied, and the next operator runs it again"
        );
        let conn = ConnectionRef { namespace: "ns".into(), name: "entra".into() };
        assert_eq!(store.account_count(&conn).expect("count"), 0);
        assert_eq!(store.cursor(&conn).expect("cursor"), None);
    }

    /// A source without deltas that lists `accounts` in one page.
    struct ListSource {
        accounts: Option<Vec<Account>>,
    }

    impl Connector for ListSource {
        fn capabilities(&self) -> Capabilities {
            Capabilities { delta: false, delta_deletions: false, groups: false }
        }
        fn begin<'a>(&'a mut self, _: SyncMode, _: Option<&'a str>) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
            Box::pin(async { Ok(ReadPlan { kind: ReadKind::Full, reason: None }) })
        }
        fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
            let page = self.accounts.take().map(|accounts| Page { number: 1, accounts, deleted: vec![] });
            Box::pin(async move { Ok(page) })
        }
        fn cursor(&self) -> Option<String> {
            None
        }
    }

    fn person(id: &str, email: &str) -> Account {
        let mut a = Account::new(id);
        a.email = Some(email.into());
        a
    }

    fn list(accounts: Vec<Account>) -> Box<dyn Connector> {
        Box::new(ListSource { accounts: Some(accounts) })
    }

    #[tokio::test]
    async fn each_run_keeps_what_it_changed_field_by_field_and_a_dry_run_what_it_would() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let mut full = job(SyncMode::Full, "h");
        full.safeguard.max_delete_percent = 100;
        let first =
            [person("E1", "ada@old.example"), person("E2", "grace@example.com"), person("E3", "alan@example.com")];
        run(full.clone(), list(first.to_vec()), store.clone(), Cancel::new()).await;

        // E1's domain changes, E3 leaves, E4 joins.
        let second =
            vec![person("E1", "ada@new.example"), person("E2", "grace@example.com"), person("E4", "kj@example.com")];
        let mut dry = full.clone();
        dry.dry_run = true;
        let preview = run(dry, list(second.clone()), store.clone(), Cancel::new()).await;
        assert_eq!(preview.outcome, RunOutcome::DryRun);
        assert_eq!(
            preview.preview,
            [
                "create E4 (kj@example.com)",
                "update E1: email ada@old.example → ada@new.example",
                "delete E3 (alan@example.com)",
            ]
        );
        let conn = full.connection.clone();
        assert_eq!(
            store.get_account(&conn, "E1").expect("read").and_then(|a| a.email).as_deref(),
            Some("ada@old.example")
        );
        let kept = store.run_changes(preview.run.expect("a run"), 0, 100).expect("changes");
        assert_eq!(kept.len(), 3, "a dry run keeps what it would change: {kept:?}");

        let applied = run(full, list(second), store.clone(), Cancel::new()).await;
        assert_eq!(applied.outcome, RunOutcome::Succeeded);
        let changes: Vec<AccountChange> = store
            .run_changes(applied.run.expect("a run"), 0, 100)
            .expect("changes")
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let summaries: Vec<String> = changes.iter().map(AccountChange::summary).collect();
        assert_eq!(
            summaries,
            [
                "update E1: email ada@old.example → ada@new.example",
                "create E4 (kj@example.com)",
                "delete E3 (alan@example.com)",
            ],
            "in the order the read met them, deletions last"
        );
        let deleted = &changes[2];
        assert_eq!(
            deleted.fields.iter().find(|f| f.field == "email").and_then(|f| f.before.clone()),
            Some("alan@example.com".into())
        );
    }

    /// Sets every stored hash of the connection to what the first version
    /// of idsync wrote (SHA-256 of the JSON), as a store from before the
    /// upgrade holds; returns how many hashes are of each version.
    fn hashes_by_version(path: &std::path::Path, downgrade: bool) -> (usize, usize) {
        let db = rusqlite::Connection::open(path).expect("open");
        let rows: Vec<(String, Vec<u8>, String)> = db
            .prepare("SELECT id, hash, data FROM accounts")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let (mut v1, mut v2) = (0, 0);
        for (id, hash, data) in rows {
            let account: Account = serde_json::from_str(&data).expect("account");
            if downgrade {
                db.execute(
                    "UPDATE accounts SET hash = ?1 WHERE id = ?2",
                    rusqlite::params![&account.content_hash_v1().0[..], id],
                )
                .expect("downgrade");
                v1 += 1;
            } else if hash == account.content_hash_v1().0 {
                v1 += 1;
            } else if hash == account.content_hash().0 {
                v2 += 1;
            }
        }
        (v1, v2)
    }

    #[tokio::test]
    async fn a_store_hashed_by_the_previous_version_syncs_unchanged_and_is_rehashed_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).expect("store"));
        let mut with_attrs = person("E3", "alan@example.com");
        with_attrs.attributes.insert("title".into(), serde_json::json!("Engineer"));
        with_attrs.groups = vec!["eng".into(), "all".into()];
        let people = vec![person("E1", "ada@example.com"), person("E2", "grace@example.com"), with_attrs];
        let full = job(SyncMode::Full, "h");
        let first = run(full.clone(), list(people.clone()), store.clone(), Cancel::new()).await;
        assert_eq!(first.counts.created, 3, "{first:?}");
        assert_eq!(hashes_by_version(&path, true), (3, 0), "the store now holds version 1 hashes");

        // A dry run says nothing changed and rewrites nothing.
        let mut dry = full.clone();
        dry.dry_run = true;
        let preview = run(dry, list(people.clone()), store.clone(), Cancel::new()).await;
        assert_eq!(preview.counts, Counts { created: 0, updated: 0, deleted: 0, unchanged: 3 }, "{preview:?}");
        assert!(preview.preview.is_empty(), "{:?}", preview.preview);
        assert_eq!(hashes_by_version(&path, false), (3, 0));

        // The first sync after the upgrade: unchanged, nothing recorded, and
        // the hashes are rewritten to version 2.
        let upgraded = run(full.clone(), list(people.clone()), store.clone(), Cancel::new()).await;
        assert_eq!(upgraded.outcome, RunOutcome::Succeeded, "{upgraded:?}");
        assert_eq!(upgraded.counts, Counts { created: 0, updated: 0, deleted: 0, unchanged: 3 }, "{upgraded:?}");
        assert!(store.run_changes(upgraded.run.expect("a run"), 0, 100).expect("changes").is_empty());
        assert_eq!(hashes_by_version(&path, false), (0, 3));

        // Later syncs: still unchanged; a real change is still one.
        let again = run(full.clone(), list(people.clone()), store.clone(), Cancel::new()).await;
        assert_eq!(again.counts.unchanged, 3, "{again:?}");
        let mut changed = people;
        changed[0].email = Some("ada@new.example".into());
        let third = run(full, list(changed), store.clone(), Cancel::new()).await;
        assert_eq!(third.counts, Counts { created: 0, updated: 1, deleted: 0, unchanged: 2 }, "{third:?}");
        assert_eq!(hashes_by_version(&path, false), (0, 3));
    }

    /// A full-read source serving `pages`, failing instead of serving page
    /// `fail_at` (1-based) if set; before each page after the first it notes
    /// what the database shows: the connection's accounts and staged rows.
    struct Probed {
        pages: Vec<Vec<Account>>,
        served: usize,
        fail_at: Option<usize>,
        db: std::path::PathBuf,
        seen: Arc<Mutex<Vec<(i64, i64)>>>,
    }

    fn count(db: &std::path::Path, sql: &str) -> i64 {
        rusqlite::Connection::open(db).expect("open").query_row(sql, [], |r| r.get(0)).expect("count")
    }

    impl Connector for Probed {
        fn capabilities(&self) -> Capabilities {
            Capabilities { delta: false, delta_deletions: false, groups: false }
        }
        fn begin<'a>(&'a mut self, _: SyncMode, _: Option<&'a str>) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
            Box::pin(async { Ok(ReadPlan { kind: ReadKind::Full, reason: None }) })
        }
        fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
            self.served += 1;
            if self.served > 1 {
                // The staging of the page before may still be under way: the
                // read runs one page ahead. Wait until it is in.
                std::thread::sleep(std::time::Duration::from_millis(50));
                let accounts = count(&self.db, "SELECT count(*) FROM accounts");
                let staged = count(&self.db, "SELECT count(*) FROM staging");
                if let Ok(mut seen) = self.seen.lock() {
                    seen.push((accounts, staged));
                }
            }
            if self.fail_at == Some(self.served) {
                return Box::pin(async {
                    Err(ConnectorError::Source { page: None, message: "the export broke off".into() })
                });
            }
            let page = (!self.pages.is_empty()).then(|| self.pages.remove(0));
            let number = self.served as u64;
            Box::pin(async move { Ok(page.map(|accounts| Page { number, accounts, deleted: vec![] })) })
        }
        fn cursor(&self) -> Option<String> {
            None
        }
    }

    #[tokio::test]
    async fn a_first_sync_writes_its_accounts_once_at_the_commit_and_nothing_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).expect("store"));
        let pages = |n: usize| -> Vec<Vec<Account>> {
            (0..3).map(|p| (0..n).map(|i| person(&format!("E{p}-{i:04}"), &format!("{p}.{i}@x"))).collect()).collect()
        };
        let probed = |pages: Vec<Vec<Account>>, fail_at: Option<usize>, seen: &Arc<Mutex<Vec<(i64, i64)>>>| {
            Box::new(Probed { pages, served: 0, fail_at, db: path.clone(), seen: seen.clone() })
        };
        let full = job(SyncMode::Full, "h");

        // A read that breaks off after two pages: nothing is left anywhere.
        let seen = Arc::default();
        let broken = run(full.clone(), probed(pages(10), Some(3), &seen), store.clone(), Cancel::new()).await;
        assert_eq!(broken.outcome, RunOutcome::Failed, "{broken:?}");
        assert_eq!(*seen.lock().expect("lock"), [(0, 0), (0, 0)], "nothing written or staged before the commit");
        assert_eq!(count(&path, "SELECT count(*) FROM accounts"), 0);
        assert_eq!(count(&path, "SELECT count(*) FROM staging"), 0);
        assert_eq!(count(&path, "SELECT count(*) FROM account_marks"), 0);

        // The same read whole: written at the commit, seen by the triggers.
        let seen = Arc::default();
        let first = run(full.clone(), probed(pages(10), None, &seen), store.clone(), Cancel::new()).await;
        assert_eq!((first.outcome, first.counts.created), (RunOutcome::Succeeded, 30), "{first:?}");
        assert_eq!(*seen.lock().expect("lock"), [(0, 0), (0, 0), (0, 0)], "nothing staged: kept for the commit");
        assert_eq!(count(&path, "SELECT count(*) FROM accounts"), 30);
        assert_eq!(count(&path, "SELECT count(*) FROM account_marks"), 30, "every insert marked");
        let creations = store.run_changes(first.run.expect("a run"), 0, 100).expect("changes");
        assert_eq!(creations.len(), 30, "the run history lists every creation");
        let conn = full.connection.clone();
        let e = store.get_account(&conn, "E1-0003").expect("read").expect("stored");
        assert_eq!((e.email.as_deref(), e.content_hash()), (Some("1.3@x"), person("E1-0003", "1.3@x").content_hash()));

        // The second and third syncs stage as ever (the connection is not
        // empty), and find nothing to do.
        for _ in 0..2 {
            let again = run(full.clone(), probed(pages(10), None, &Arc::default()), store.clone(), Cancel::new()).await;
            assert_eq!(again.counts, Counts { created: 0, updated: 0, deleted: 0, unchanged: 30 }, "{again:?}");
        }

        // A first sync larger than a run may keep in memory moves to the
        // staging part way and still commits everything.
        let other = tempfile::tempdir().expect("temp dir");
        let path = other.path().join("s.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).expect("store"));
        let seen: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
        let big =
            Box::new(Probed { pages: pages(200), served: 0, fail_at: None, db: path.clone(), seen: seen.clone() });
        let report = run(full.clone(), big, store.clone(), Cancel::new()).await;
        assert_eq!((report.outcome, report.counts.created), (RunOutcome::Succeeded, 600), "{report:?}");
        let seen = seen.lock().expect("lock").clone();
        assert!(seen.iter().all(|(accounts, _)| *accounts == 0), "{seen:?}");
        assert!(seen.last().is_some_and(|(_, staged)| *staged > 0), "moved to the staging: {seen:?}");
        assert_eq!(count(&path, "SELECT count(*) FROM accounts"), 600);
        assert_eq!(count(&path, "SELECT count(*) FROM account_marks"), 600);
        assert_eq!(count(&path, "SELECT count(*) FROM staging"), 0);
    }

    /// A delta-capable source that serves `accounts` in one page and reports
    /// `complete` as the groups whose membership it read in full.
    struct GroupSource {
        accounts: Option<Vec<Account>>,
        complete: Vec<String>,
        kind: ReadKind,
        /// Ids the delta names as deleted.
        deleted: Vec<String>,
        /// What `groups_present` answers.
        present: Option<Vec<String>>,
    }

    impl Connector for GroupSource {
        fn capabilities(&self) -> Capabilities {
            Capabilities { delta: true, delta_deletions: true, groups: true }
        }
        fn begin<'a>(
            &'a mut self,
            mode: SyncMode,
            cursor: Option<&'a str>,
        ) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
            self.kind = if mode == SyncMode::Delta && cursor.is_some() { ReadKind::Delta } else { ReadKind::Full };
            let kind = self.kind;
            Box::pin(async move { Ok(ReadPlan { kind, reason: None }) })
        }
        fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
            let deleted = std::mem::take(&mut self.deleted);
            let page = self.accounts.take().map(|accounts| Page { number: 1, accounts, deleted });
            Box::pin(async move { Ok(page) })
        }
        fn cursor(&self) -> Option<String> {
            Some("c".into())
        }
        fn complete_groups(&self) -> Vec<String> {
            self.complete.clone()
        }
        fn groups_present<'a>(
            &'a mut self,
            groups: &'a [String],
        ) -> BoxFuture<'a, Result<Option<Vec<String>>, ConnectorError>> {
            let present =
                self.present.as_ref().map(|p| groups.iter().filter(|g| p.contains(g)).cloned().collect::<Vec<_>>());
            Box::pin(async move { Ok(present) })
        }
    }

    fn in_groups(id: &str, groups: &[&str]) -> Account {
        let mut a = person(id, &format!("{id}@example.com"));
        a.groups = groups.iter().map(|g| g.to_string()).collect();
        a
    }

    #[tokio::test]
    async fn a_delta_that_read_a_group_whole_takes_it_off_those_who_left() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let source = |accounts: Vec<Account>, complete: &[&str]| -> Box<dyn Connector> {
            Box::new(GroupSource {
                accounts: Some(accounts),
                complete: complete.iter().map(|g| g.to_string()).collect(),
                kind: ReadKind::Full,
                deleted: Vec::new(),
                present: None,
            })
        };
        // Enough accounts that the scan for departures takes several batches.
        let mut everyone: Vec<Account> = (0..2500).map(|i| in_groups(&format!("U{i:04}"), &["all"])).collect();
        everyone.push(in_groups("bob", &["all", "eng"]));
        everyone.push(in_groups("carol", &["eng"]));
        everyone.push(in_groups("alice", &["all"]));
        let first = run(job(SyncMode::Full, "h"), source(everyone, &[]), store.clone(), Cancel::new()).await;
        assert_eq!((first.outcome, first.counts.created), (RunOutcome::Succeeded, 2503), "{first:?}");

        // eng changed at the source: alice joined, bob left, carol stayed.
        let delta = run(
            job(SyncMode::Delta, "h"),
            source(vec![in_groups("alice", &["all", "eng"]), in_groups("carol", &["eng"])], &["eng"]),
            store.clone(),
            Cancel::new(),
        )
        .await;
        assert_eq!((delta.outcome, delta.mode), (RunOutcome::Succeeded, SyncMode::Delta), "{delta:?}");
        assert_eq!(delta.counts, Counts { created: 0, updated: 2, deleted: 0, unchanged: 1 }, "{delta:?}");
        let changes: Vec<String> = store
            .run_changes(delta.run.expect("a run"), 0, 100)
            .expect("changes")
            .into_iter()
            .map(|(_, c)| c.summary())
            .collect();
        assert_eq!(
            changes,
            ["update alice: groups [\"all\"] → [\"all\",\"eng\"]", "update bob: groups [\"all\",\"eng\"] → [\"all\"]",]
        );
        let conn = ConnectionRef { namespace: "ns".into(), name: "entra".into() };
        let groups = |id: &str| store.get_account(&conn, id).expect("read").expect("stored").groups;
        assert_eq!(groups("bob"), ["all"]);
        assert_eq!(groups("alice"), ["all", "eng"]);
        assert_eq!(groups("U0001"), ["all"]);

        // The same membership again: nothing changes.
        let again = run(
            job(SyncMode::Delta, "h"),
            source(vec![in_groups("alice", &["all", "eng"]), in_groups("carol", &["eng"])], &["eng"]),
            store.clone(),
            Cancel::new(),
        )
        .await;
        assert_eq!(again.counts, Counts { created: 0, updated: 0, deleted: 0, unchanged: 2 }, "{again:?}");
    }

    #[tokio::test]
    async fn a_delta_that_deleted_an_unknown_entry_asks_which_groups_are_left() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let source = |deleted: &[&str], present: Option<&[&str]>| -> Box<dyn Connector> {
            Box::new(GroupSource {
                accounts: Some(Vec::new()),
                complete: Vec::new(),
                kind: ReadKind::Full,
                deleted: deleted.iter().map(|d| d.to_string()).collect(),
                present: present.map(|p| p.iter().map(|g| g.to_string()).collect()),
            })
        };
        let everyone = vec![in_groups("bob", &["all", "eng"]), in_groups("carol", &["ops"]), in_groups("dan", &[])];
        let full = run(
            job(SyncMode::Full, "h"),
            Box::new(GroupSource {
                accounts: Some(everyone),
                complete: Vec::new(),
                kind: ReadKind::Full,
                deleted: Vec::new(),
                present: None,
            }),
            store.clone(),
            Cancel::new(),
        )
        .await;
        assert_eq!(full.counts.created, 3, "{full:?}");

        // Deletions of stored accounts only: no question asked, nothing else changes.
        let plain = run(job(SyncMode::Delta, "h"), source(&["dan"], Some(&[])), store.clone(), Cancel::new()).await;
        assert_eq!(plain.counts, Counts { created: 0, updated: 0, deleted: 1, unchanged: 0 }, "{plain:?}");
        // A source that cannot tell: nothing changes.
        let unsure = run(job(SyncMode::Delta, "h"), source(&["group-uuid"], None), store.clone(), Cancel::new()).await;
        assert_eq!(unsure.counts, Counts::default(), "{unsure:?}");
        // eng is gone at the source: bob loses it, carol keeps ops.
        let gone = run(
            job(SyncMode::Delta, "h"),
            source(&["group-uuid"], Some(&["all", "ops"])),
            store.clone(),
            Cancel::new(),
        )
        .await;
        assert_eq!(gone.counts, Counts { created: 0, updated: 1, deleted: 0, unchanged: 0 }, "{gone:?}");
        assert!(
            gone.message.contains("1 group(s) no longer at the source were taken off their members: eng"),
            "{}",
            gone.message
        );
        let conn = ConnectionRef { namespace: "ns".into(), name: "entra".into() };
        let groups = |id: &str| store.get_account(&conn, id).expect("read").expect("stored").groups;
        assert_eq!(groups("bob"), ["all"]);
        assert_eq!(groups("carol"), ["ops"]);
    }

    /// A source that answers its first page and then never again.
    struct Hangs {
        served: bool,
    }

    impl Connector for Hangs {
        fn capabilities(&self) -> Capabilities {
            Capabilities { delta: false, delta_deletions: false, groups: false }
        }
        fn begin<'a>(&'a mut self, _: SyncMode, _: Option<&'a str>) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
            Box::pin(async { Ok(ReadPlan { kind: ReadKind::Full, reason: None }) })
        }
        fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
            if std::mem::replace(&mut self.served, true) {
                return Box::pin(std::future::pending());
            }
            Box::pin(async { Ok(Some(Page { number: 1, accounts: vec![person("E1", "a@x")], deleted: vec![] })) })
        }
        fn cursor(&self) -> Option<String> {
            None
        }
    }

    #[tokio::test]
    async fn a_sync_past_its_deadline_is_stopped_and_applies_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let mut slow = job(SyncMode::Full, "h");
        slow.max_duration = std::time::Duration::from_millis(300);
        let report = run(slow.clone(), Box::new(Hangs { served: false }), store.clone(), Cancel::new()).await;
        assert_eq!(report.outcome, RunOutcome::Failed, "{report:?}");
        assert_eq!(report.reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(
            report.message,
            "the sync ran longer than maxSyncDurationMinutes (1 min) and was stopped; nothing was applied"
        );
        assert_eq!(store.account_count(&slow.connection).expect("count"), 0, "the first page was applied");
        let runs = store.runs(&slow.connection, 10).expect("runs");
        assert_eq!(runs[0].outcome, Some(RunOutcome::Failed), "the run is closed, not left running");
    }
}
