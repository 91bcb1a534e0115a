//! What the benchmarks share.

/// The operator's allocator (see `src/main.rs`), so that the benches
/// measure what the operator does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A number of kB from a line of `/proc/self/status`, in MiB; 0 where /proc
/// is not there.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The process's peak resident memory since it started or since the last
/// [`reset_peak_rss`] (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// The process's resident memory now (Linux `VmRSS`), in MiB.
#[allow(dead_code)]
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// Starts the peak over from the current resident memory (Linux 4.0 and
/// later: writing 5 to `clear_refs`), so that a step's peak can be told from
/// an earlier step's. Does nothing where that is not possible.
#[allow(dead_code)]
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Commits `accounts` to connection `name` (namespace `default`) as one
/// succeeded full sync, staged in pages of 1000, in either store.
#[allow(dead_code)]
pub fn sync<S: idsync::store::AccountStore + ?Sized>(
    store: &S,
    name: &str,
    accounts: impl Iterator<Item = idsync::model::Account>,
) {
    use idsync::model::{ConnectionRef, Counts, NewRun, RunFinish, RunMode, RunOutcome, Trigger};
    use idsync::store::{CursorUpdate, StagedChange};
    use jiff::Timestamp;
    let run = store
        .start_run(&NewRun {
            connection: ConnectionRef::new("default", name),
            trigger: Trigger::Scheduled,
            request: None,
            requested_mode: RunMode::Full,
            holder: "bench".into(),
            started_at: Timestamp::now(),
        })
        .expect("start");
    // A page at a time, as a sync reads: never every account at once.
    let mut page = Vec::with_capacity(1000);
    for account in accounts {
        page.push(StagedChange::Upsert(account));
        if page.len() == 1000 {
            store.stage(run, &page).expect("stage");
            page.clear();
        }
    }
    if !page.is_empty() {
        store.stage(run, &page).expect("stage");
    }
    let finish = RunFinish {
        outcome: RunOutcome::Succeeded,
        mode: Some(RunMode::Full),
        counts: Counts::default(),
        message: String::new(),
        finished_at: Timestamp::now(),
    };
    store.commit_run(run, CursorUpdate::Keep, &finish).expect("commit");
}

/// A requested sync job of connection `name` (namespace `bench`), applied
/// for real, with the spec's safeguard.
#[allow(dead_code)]
pub fn job_for(
    name: &str,
    spec: &idsync_api::ConnectionSpec,
    mode: idsync_api::SyncMode,
) -> idsync::sync::job::SyncJob {
    use std::time::Duration;
    idsync::sync::job::SyncJob {
        connection: idsync::model::ConnectionRef { namespace: "bench".into(), name: name.into() },
        mode,
        trigger: idsync::model::Trigger::Requested,
        request: None,
        holder: "bench".into(),
        dry_run: false,
        confirm_deletes: false,
        safeguard: spec.import_safeguard.clone(),
        settings_hash: "bench".into(),
        full_sync_interval: Duration::from_secs(24 * 3600),
        max_duration: Duration::from_secs(3600),
    }
}

/// The record of a scheduled processing run that succeeded with `outcome`.
#[allow(dead_code)]
pub fn succeeded_run(
    outcome: &idsync::identity::process::Outcome,
    now: jiff::Timestamp,
) -> idsync::model::ProcessingRunRecord {
    idsync::model::ProcessingRunRecord {
        id: 0,
        trigger: idsync::model::Trigger::Scheduled,
        request: None,
        started_at: now,
        finished_at: now,
        outcome: idsync::model::RunOutcome::Succeeded,
        processed: outcome.processed,
        changed: outcome.changed,
        errors: outcome.errors,
        message: String::new(),
    }
}
