//! `idsync runs`: the history of every sync (and, with `--profile`, every
//! processing run), and one sync run with what it changed, account by
//! account and field by field, read from the store's file.

use std::io::Write;
use std::process::ExitCode;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::accounts::ensure_connection;
use super::identities::runs_report;
use super::output::{
    CsvWriter, JsonListWriter, ListFormat, NONE, ReportError, cell, finish, open_store_file, run_length, write_table,
};
use super::{RunOutput, RunsCommand};
use crate::model::{AccountChange, ConnectionRef, ProfileRef, RunId, RunRecord};
use crate::store::AccountStore;
use idsync_devcluster::age::human_duration;

const COLUMNS: [&str; 11] = [
    "RUN",
    "TRIGGER",
    "MODE",
    "RESULT",
    "CREATED",
    "UPDATED",
    "DELETED",
    "UNCHANGED",
    "STARTED",
    "DURATION",
    "MESSAGE",
];
const CSV_HEADER: [&str; 14] = [
    "run",
    "connection",
    "trigger",
    "request",
    "requestedMode",
    "mode",
    "result",
    "created",
    "updated",
    "deleted",
    "unchanged",
    "started",
    "finished",
    "message",
];
const CHANGE_CSV_HEADER: [&str; 6] = ["run", "accountId", "kind", "field", "before", "after"];
/// The `kind` of `runs list --connection -o json`.
pub const SYNC_RUN_LIST_KIND: &str = "SyncRunList";
/// The `kind` of `runs get -o json`: the run's changes, with the run.
pub const CHANGE_LIST_KIND: &str = "AccountChangeList";
/// Changes read per store call.
const PAGE_SIZE: usize = 1000;

/// A sync run as `-o json` prints it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SyncRunItem<'a> {
    id: RunId,
    namespace: &'a str,
    connection: &'a str,
    trigger: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<&'a str>,
    requested_mode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'a str>,
    result: &'a str,
    created: u64,
    updated: u64,
    deleted: u64,
    unchanged: u64,
    holder: &'a str,
    started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

impl<'a> From<&'a RunRecord> for SyncRunItem<'a> {
    fn from(run: &'a RunRecord) -> Self {
        SyncRunItem {
            id: run.id,
            namespace: &run.connection.namespace,
            connection: &run.connection.name,
            trigger: run.trigger.as_str(),
            request: run.request.as_deref(),
            requested_mode: run.requested_mode.as_str(),
            mode: run.mode.map(|m| m.as_str()),
            result: result(run),
            created: run.counts.created,
            updated: run.counts.updated,
            deleted: run.counts.deleted,
            unchanged: run.counts.unchanged,
            holder: &run.holder,
            started_at: run.started_at.to_string(),
            finished_at: run.finished_at.map(|t| t.to_string()),
            message: &run.message,
        }
    }
}

/// The run's outcome, or `Running` while it has none.
fn result(run: &RunRecord) -> &'static str {
    run.outcome.map_or("Running", |o| o.as_str())
}

fn trigger(run: &RunRecord) -> String {
    match &run.request {
        Some(request) => format!("{} ({request})", run.trigger),
        None => run.trigger.to_string(),
    }
}

/// The run table's cells: its age and how long it ran (`<running>` while
/// it does).
pub fn sync_run_row(run: &RunRecord, now: Timestamp) -> Vec<String> {
    let c = run.counts;
    [
        run.id.to_string(),
        trigger(run),
        run.mode.unwrap_or(run.requested_mode).to_string(),
        result(run).to_string(),
        c.created.to_string(),
        c.updated.to_string(),
        c.deleted.to_string(),
        c.unchanged.to_string(),
        human_duration(now.duration_since(run.started_at)),
        run.finished_at.map_or_else(|| "<running>".to_string(), |f| run_length(f.duration_since(run.started_at))),
        if run.message.is_empty() { NONE.to_string() } else { run.message.clone() },
    ]
    .into_iter()
    .map(cell)
    .collect()
}

fn sync_run_csv_record(run: &RunRecord) -> Vec<String> {
    let c = run.counts;
    vec![
        run.id.to_string(),
        run.connection.to_string(),
        run.trigger.to_string(),
        run.request.clone().unwrap_or_default(),
        run.requested_mode.to_string(),
        run.mode.map(|m| m.to_string()).unwrap_or_default(),
        result(run).to_string(),
        c.created.to_string(),
        c.updated.to_string(),
        c.deleted.to_string(),
        c.unchanged.to_string(),
        run.started_at.to_string(),
        run.finished_at.map(|t| t.to_string()).unwrap_or_default(),
        run.message.clone(),
    ]
}

/// `runs list --connection`: the connection's last `limit` syncs, newest
/// first. Returns how many it printed.
pub fn list_report(
    store: &dyn AccountStore,
    connection: &ConnectionRef,
    limit: usize,
    format: ListFormat,
    now: Timestamp,
    out: &mut impl Write,
) -> Result<usize, ReportError> {
    ensure_connection(store, connection)?;
    let runs = store.runs(connection, limit)?;
    match format {
        ListFormat::Table if runs.is_empty() => {}
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = runs.iter().map(|r| sync_run_row(r, now)).collect();
            write_table(&COLUMNS, &rows, out)?;
        }
        ListFormat::Csv => {
            let mut csv = CsvWriter::begin(&mut *out, &CSV_HEADER)?;
            for run in &runs {
                csv.record(&sync_run_csv_record(run))?;
            }
            csv.finish()?;
        }
        ListFormat::Json => {
            let mut json = JsonListWriter::begin(&mut *out, SYNC_RUN_LIST_KIND)?;
            for run in &runs {
                json.item(&SyncRunItem::from(run))?;
            }
            json.finish()?;
        }
    }
    out.flush()?;
    Ok(runs.len())
}

/// The run's changes in order, a store page at a time.
fn for_each_change(
    store: &dyn AccountStore,
    run: RunId,
    mut f: impl FnMut(&AccountChange) -> Result<(), ReportError>,
) -> Result<u64, ReportError> {
    let (mut after, mut count) = (0, 0);
    loop {
        let page = store.run_changes(run, after, PAGE_SIZE)?;
        for (seq, change) in &page {
            f(change)?;
            after = *seq;
            count += 1;
        }
        if page.len() < PAGE_SIZE {
            return Ok(count);
        }
    }
}

/// `runs get`: one sync run, then every change it made (or, for a dry run
/// or a held-back sync, would have made). Text reads like `kubectl
/// describe`; JSON is the list of changes with the run; CSV a line per
/// changed field.
pub fn get_report(
    store: &dyn AccountStore,
    id: RunId,
    format: RunOutput,
    now: Timestamp,
    out: &mut impl Write,
) -> Result<(), ReportError> {
    let run = store.run(id)?.ok_or(ReportError::RunNotFound(id))?;
    match format {
        RunOutput::Text => {
            let c = run.counts;
            let finished = match run.finished_at {
                Some(at) => format!("{at} (took {})", run_length(at.duration_since(run.started_at))),
                None => "<running>".to_string(),
            };
            let lines = [
                ("Run", run.id.to_string()),
                ("Connection", run.connection.to_string()),
                ("Trigger", trigger(&run)),
                ("Mode", format!("{} (asked {})", run.mode.map_or(NONE, |m| m.as_str()), run.requested_mode)),
                ("Result", result(&run).to_string()),
                (
                    "Counts",
                    format!(
                        "created {}, updated {}, deleted {}, unchanged {}",
                        c.created, c.updated, c.deleted, c.unchanged
                    ),
                ),
                ("Started", format!("{} ({} ago)", run.started_at, human_duration(now.duration_since(run.started_at)))),
                ("Finished", finished),
                ("Holder", run.holder.clone()),
                ("Message", if run.message.is_empty() { NONE.to_string() } else { run.message.clone() }),
            ];
            for (name, value) in lines {
                writeln!(out, "{:<12}{}", format!("{name}:"), cell(value))?;
            }
            writeln!(out, "Changes:")?;
            let count = for_each_change(store, id, |change| Ok(writeln!(out, "  {}", cell(change.summary()))?))?;
            if count == 0 {
                writeln!(out, "  {NONE}")?;
            }
        }
        RunOutput::Json => {
            let header = serde_json::to_value(SyncRunItem::from(&run)).map_err(std::io::Error::from)?;
            let mut json = JsonListWriter::begin_with(&mut *out, CHANGE_LIST_KIND, &[("run", header)])?;
            for_each_change(store, id, |change| Ok(json.item(change)?))?;
            json.finish()?;
        }
        RunOutput::Csv => {
            let mut csv = CsvWriter::begin(&mut *out, &CHANGE_CSV_HEADER)?;
            let text = |v: &Option<Value>| match v {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            for_each_change(store, id, |change| {
                let base = [id.to_string(), change.account_id.clone(), change.kind.as_str().to_string()];
                if change.fields.is_empty() {
                    csv.record(&[&base[..], &[String::new(), String::new(), String::new()]].concat())?;
                }
                for field in &change.fields {
                    let rest = [field.field.clone(), text(&field.before), text(&field.after)];
                    csv.record(&[&base[..], &rest[..]].concat())?;
                }
                Ok(())
            })?;
            csv.finish()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `idsync runs ...`: reads the store's file directly.
pub fn run(command: RunsCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let now = Timestamp::now();
    let (path, result) = match command {
        RunsCommand::List { connection, profile, namespace, store, limit, output } => {
            let (store, path) = open_store_file(store.as_deref())?;
            let format = ListFormat::from(output);
            let (listed, what) = match (connection, profile) {
                (Some(connection), _) => {
                    let connection = ConnectionRef::new(&namespace, connection);
                    (
                        list_report(&*store, &connection, limit, format, now, &mut out),
                        format!("connection {connection}"),
                    )
                }
                (None, Some(profile)) => {
                    let profile = ProfileRef::new(&namespace, profile);
                    (runs_report(&*store, &profile, limit, format, now, &mut out), format!("profile {profile}"))
                }
                (None, None) => anyhow::bail!("name a --connection or a --profile"),
            };
            let result = listed.map(|count| {
                if count == 0 && format == ListFormat::Table {
                    eprintln!("No runs found for {what}.");
                }
            });
            (path, result)
        }
        RunsCommand::Get { run, store, output } => {
            let (store, path) = open_store_file(store.as_deref())?;
            (path, get_report(&*store, run, output, now, &mut out))
        }
    };
    finish(result, &mut out, &path)
}
