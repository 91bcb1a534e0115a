//! `idsync identities`: a profile's identities, correlation records and
//! processing history as kubectl-like tables, CSV, JSON or YAML, read from
//! the store's file (no cluster needed).
//!
//! The renderers are pure functions over slices or iterators (identities
//! come from the store a page at a time) and a writer, with the time passed
//! in, so their output is exact and testable. The `*_report` functions drive
//! them from the store's [`IdentityStore`] and [`ProcessingHistory`] roles;
//! [`run`] opens the store and runs one subcommand.

use std::io::{self, Write};
use std::process::ExitCode;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::output::{
    CsvWriter, ItemFormat, JsonListWriter, ListFormat, NONE, Pages, ReportError, cell, finish, open_store_file,
    render_item, run_length, write_table,
};
use super::{IdentitiesCommand, ProfileArgs};
use crate::store::Store;

use crate::model::{Identity, LinkRecord, LinkState, ProcessingRunRecord, ProfileRef};
use crate::store::{IdentityStore, ProcessingHistory};
use idsync_devcluster::age::human_duration;

/// The `kind` of `identities list -o json`.
pub const IDENTITY_LIST_KIND: &str = "IdentityList";

/// The `kind` of `identities uncorrelated -o json`.
pub const CORRELATION_LIST_KIND: &str = "CorrelationRecordList";

/// Identities read from the store per call when listing: large enough that
/// 100,000 identities are 100 short reads, small enough that a page never
/// weighs much in memory.
pub const PAGE_SIZE: usize = 1000;

/// More non-authoritative accounts than this are shown as a count, so that
/// one well-connected identity does not widen the whole table.
const MAX_LISTED_ACCOUNTS: usize = 3;

/// Columns of the identities table.
pub const IDENTITY_COLUMNS: [&str; 7] = ["ID", "NAME", "EMAIL", "STATE", "MANAGER", "ACCOUNTS", "MODIFIED"];

/// Header of the identities CSV.
pub const IDENTITY_CSV_HEADER: [&str; 7] = ["id", "name", "email", "lifecycleState", "manager", "accounts", "modified"];

/// Columns of the correlation records table.
pub const LINK_COLUMNS: [&str; 5] = ["CONNECTION", "ACCOUNT", "STATE", "IDENTITY", "CANDIDATES"];

/// Header of the correlation records CSV.
pub const LINK_CSV_HEADER: [&str; 5] = ["connection", "accountId", "state", "identity", "candidates"];

// --- cells ---

/// An attribute as text: strings as they are, other values as JSON. Absent,
/// null and empty count as unset, so that the table shows `<none>` (and a
/// fallback attribute gets its turn) rather than an empty cell.
fn attribute_text(identity: &Identity, name: &str) -> Option<String> {
    match identity.attributes.get(name)? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn display_name(identity: &Identity) -> Option<String> {
    attribute_text(identity, "displayName").or_else(|| attribute_text(identity, "name"))
}

/// The accounts correlated to the identity: all but the first, which is the
/// authoritative account the identity's id already names.
fn correlated_accounts(identity: &Identity) -> impl Iterator<Item = String> + '_ {
    identity.accounts.iter().skip(1).map(|a| format!("{}/{}", a.connection, a.account_id))
}

/// The identities table's cells for one identity, `now` being when its age
/// is measured from.
pub fn identity_row(identity: &Identity, now: Timestamp) -> Vec<String> {
    let manager = match (&identity.manager, &identity.manager_ref) {
        (Some(manager), _) => manager.clone(),
        (None, Some(_)) if identity.top_of_hierarchy => "<top>".into(),
        (None, Some(reference)) => format!("<unresolved: {reference}>"),
        (None, None) => NONE.into(),
    };
    let correlated = identity.accounts.len().saturating_sub(1);
    let accounts = match correlated {
        0 => NONE.into(),
        n if n > MAX_LISTED_ACCOUNTS => format!("{n} accounts"),
        _ => correlated_accounts(identity).collect::<Vec<_>>().join(","),
    };
    [
        identity.id.clone(),
        display_name(identity).unwrap_or_else(|| NONE.into()),
        attribute_text(identity, "email").unwrap_or_else(|| NONE.into()),
        identity.lifecycle_state.clone().unwrap_or_else(|| NONE.into()),
        manager,
        accounts,
        human_duration(now.duration_since(identity.modified)),
    ]
    .into_iter()
    .map(cell)
    .collect()
}

/// The correlation records table's cells for one record.
pub fn link_row(link: &LinkRecord) -> Vec<String> {
    let candidates = if link.candidates.is_empty() { NONE.into() } else { link.candidates.join(",") };
    [
        link.connection.clone(),
        link.account_id.clone(),
        link.state.as_str().into(),
        link.identity.clone().unwrap_or_else(|| NONE.into()),
        candidates,
    ]
    .into_iter()
    .map(cell)
    .collect()
}

/// The identities CSV's fields for one identity. Unlike the table it is
/// for programs: unset fields are empty, every correlated account is
/// listed, an unresolved manager is empty (`-o json` has its `managerRef`),
/// and `modified` is RFC 3339.
pub fn identity_csv_record(identity: &Identity) -> Vec<String> {
    vec![
        identity.id.clone(),
        display_name(identity).unwrap_or_default(),
        attribute_text(identity, "email").unwrap_or_default(),
        identity.lifecycle_state.clone().unwrap_or_default(),
        identity.manager.clone().unwrap_or_default(),
        correlated_accounts(identity).collect::<Vec<_>>().join(","),
        identity.modified.to_string(),
    ]
}

/// The correlation records CSV's fields for one record.
pub fn link_csv_record(link: &LinkRecord) -> Vec<String> {
    vec![
        link.connection.clone(),
        link.account_id.clone(),
        link.state.as_str().into(),
        link.identity.clone().unwrap_or_default(),
        link.candidates.join(","),
    ]
}

/// Columns of the processing history table.
const RUN_COLUMNS: [&str; 9] =
    ["RUN", "TRIGGER", "RESULT", "PROCESSED", "CHANGED", "ERRORS", "STARTED", "DURATION", "MESSAGE"];
/// Header of the processing history CSV.
const RUN_CSV_HEADER: [&str; 10] =
    ["run", "trigger", "request", "result", "processed", "changed", "errors", "started", "finished", "message"];
/// The `kind` of `identities runs -o json`.
const RUN_LIST_KIND: &str = "ProcessingRunList";

/// A processing run as `-o json` prints it (the store's record has no
/// serde form of its own: it is not an API type).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunItem<'a> {
    id: i64,
    trigger: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<&'a str>,
    result: &'a str,
    processed: u64,
    changed: u64,
    errors: u64,
    started_at: String,
    finished_at: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

impl<'a> From<&'a ProcessingRunRecord> for RunItem<'a> {
    fn from(run: &'a ProcessingRunRecord) -> Self {
        RunItem {
            id: run.id,
            trigger: run.trigger.as_str(),
            request: run.request.as_deref(),
            result: run.outcome.as_str(),
            processed: run.processed,
            changed: run.changed,
            errors: run.errors,
            started_at: run.started_at.to_string(),
            finished_at: run.finished_at.to_string(),
            message: &run.message,
        }
    }
}

/// The processing history table's cells for one run: its age, and its
/// length in milliseconds under a second (processing is often that fast).
pub fn run_row(run: &ProcessingRunRecord, now: Timestamp) -> Vec<String> {
    let duration = run_length(run.finished_at.duration_since(run.started_at));
    let trigger = match &run.request {
        Some(request) => format!("{} ({request})", run.trigger),
        None => run.trigger.to_string(),
    };
    [
        run.id.to_string(),
        trigger,
        run.outcome.as_str().to_string(),
        run.processed.to_string(),
        run.changed.to_string(),
        run.errors.to_string(),
        human_duration(now.duration_since(run.started_at)),
        duration,
        if run.message.is_empty() { NONE.to_string() } else { run.message.clone() },
    ]
    .into_iter()
    .map(cell)
    .collect()
}

// --- tables ---

/// The correlation records table (CONNECTION, ACCOUNT, STATE, IDENTITY,
/// CANDIDATES).
pub fn render_links_table(links: &[LinkRecord], out: &mut impl Write) -> io::Result<()> {
    let rows: Vec<Vec<String>> = links.iter().map(link_row).collect();
    write_table(&LINK_COLUMNS, &rows, out)
}

// --- CSV ---

/// The correlation records as CSV (header `connection,accountId,state,identity,candidates`).
pub fn render_links_csv(links: &[LinkRecord], out: &mut impl Write) -> io::Result<()> {
    let mut csv = CsvWriter::begin(out, &LINK_CSV_HEADER)?;
    for link in links {
        csv.record(&link_csv_record(link))?;
    }
    csv.finish()
}

// --- JSON and YAML ---

/// The correlation records as a `CorrelationRecordList`.
pub fn render_links_json(links: &[LinkRecord], out: &mut impl Write) -> io::Result<()> {
    let mut json = JsonListWriter::begin(out, CORRELATION_LIST_KIND)?;
    for link in links {
        json.item(link)?;
    }
    json.finish()
}

/// One identity, whole, in its stored (serde) form: the same object as an
/// item of `list -o json`.
pub fn render_identity(identity: &Identity, format: ItemFormat, out: &mut impl Write) -> Result<(), ReportError> {
    render_item(identity, format, out)
}

// --- reading the store ---

/// Fails with the profiles the store does know when it does not know `profile`.
pub fn ensure_profile<S: IdentityStore + ?Sized>(store: &S, profile: &ProfileRef) -> Result<(), ReportError> {
    let known = store.profiles()?;
    if known.contains(profile) { Ok(()) } else { Err(ReportError::UnknownProfile { profile: profile.clone(), known }) }
}

/// `identities list`: the profile's identities (those in lifecycle state
/// `state` when given) ordered by id. Returns how many it printed; with none,
/// the table prints nothing at all (the caller says so, as kubectl does),
/// while CSV and JSON print an empty document that still parses.
pub fn list_report(
    store: &dyn IdentityStore,
    profile: &ProfileRef,
    state: Option<&str>,
    format: ListFormat,
    now: Timestamp,
    out: &mut impl Write,
) -> Result<usize, ReportError> {
    ensure_profile(store, profile)?;
    list_pages(store, profile, state, format, now, PAGE_SIZE, out)
}

fn list_pages(
    store: &dyn IdentityStore,
    profile: &ProfileRef,
    state: Option<&str>,
    format: ListFormat,
    now: Timestamp,
    page_size: usize,
    out: &mut impl Write,
) -> Result<usize, ReportError> {
    let pages = Pages::new(
        page_size,
        |i: &Identity| i.id.clone(),
        |after, limit| store.list_identities(profile, state, after, limit),
    );
    render_identities(pages, format, now, out)
}

/// Prints identities as `format` one at a time, as they come (from the
/// store's pages, or a test's list): CSV and JSON stream; a table's column
/// widths depend on every row, so it buffers its rows' cells (not the
/// identities) and prints nothing at all when there are none. Returns how
/// many it printed.
pub fn render_identities(
    identities: impl IntoIterator<Item = Result<Identity, ReportError>>,
    format: ListFormat,
    now: Timestamp,
    out: &mut impl Write,
) -> Result<usize, ReportError> {
    let mut count = 0;
    match format {
        ListFormat::Table => {
            let mut rows = Vec::new();
            for identity in identities {
                rows.push(identity_row(&identity?, now));
            }
            count = rows.len();
            if !rows.is_empty() {
                write_table(&IDENTITY_COLUMNS, &rows, out)?;
            }
        }
        ListFormat::Csv => {
            let mut csv = CsvWriter::begin(&mut *out, &IDENTITY_CSV_HEADER)?;
            for identity in identities {
                csv.record(&identity_csv_record(&identity?))?;
                count += 1;
            }
            csv.finish()?;
        }
        ListFormat::Json => {
            let mut json = JsonListWriter::begin(&mut *out, IDENTITY_LIST_KIND)?;
            for identity in identities {
                json.item(&identity?)?;
                count += 1;
            }
            json.finish()?;
        }
    }
    out.flush()?;
    Ok(count)
}

/// `identities get`: one identity, whole.
pub fn get_report(
    store: &dyn IdentityStore,
    profile: &ProfileRef,
    id: &str,
    format: ItemFormat,
    out: &mut impl Write,
) -> Result<(), ReportError> {
    ensure_profile(store, profile)?;
    let identity = store
        .get_identity(profile, id)?
        .ok_or_else(|| ReportError::IdentityNotFound { profile: profile.clone(), id: id.to_owned() })?;
    render_identity(&identity, format, out)
}

/// `identities uncorrelated`: the profile's Uncorrelated and Ambiguous
/// correlation records (every record with `all_states`), ordered by
/// connection and account id. Returns how many it printed; with none, the
/// table prints nothing, as for [`list_report`].
pub fn uncorrelated_report(
    store: &dyn IdentityStore,
    profile: &ProfileRef,
    all_states: bool,
    format: ListFormat,
    out: &mut impl Write,
) -> Result<usize, ReportError> {
    ensure_profile(store, profile)?;
    let links = if all_states {
        store.list_links(profile, None)?
    } else {
        // Two filtered reads rather than one of everything: Correlated
        // records are most of them, one per correlated account.
        let mut links = store.list_links(profile, Some(LinkState::Uncorrelated))?;
        links.extend(store.list_links(profile, Some(LinkState::Ambiguous))?);
        links.sort_by(|a, b| (&a.connection, &a.account_id).cmp(&(&b.connection, &b.account_id)));
        links
    };
    match format {
        ListFormat::Table if links.is_empty() => {}
        ListFormat::Table => render_links_table(&links, out)?,
        ListFormat::Csv => render_links_csv(&links, out)?,
        ListFormat::Json => render_links_json(&links, out)?,
    }
    out.flush()?;
    Ok(links.len())
}

/// `identities runs`: the profile's last `limit` processing runs, newest
/// first. Returns how many it printed.
pub fn runs_report<S: IdentityStore + ProcessingHistory + ?Sized>(
    store: &S,
    profile: &ProfileRef,
    limit: usize,
    format: ListFormat,
    now: Timestamp,
    out: &mut impl Write,
) -> Result<usize, ReportError> {
    ensure_profile(store, profile)?;
    let runs = store.processing_runs(profile, limit)?;
    match format {
        ListFormat::Table if runs.is_empty() => {}
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = runs.iter().map(|r| run_row(r, now)).collect();
            write_table(&RUN_COLUMNS, &rows, out)?;
        }
        ListFormat::Csv => {
            let mut csv = CsvWriter::begin(&mut *out, &RUN_CSV_HEADER)?;
            for run in &runs {
                csv.record(&[
                    run.id.to_string(),
                    run.trigger.to_string(),
                    run.request.clone().unwrap_or_default(),
                    run.outcome.as_str().to_string(),
                    run.processed.to_string(),
                    run.changed.to_string(),
                    run.errors.to_string(),
                    run.started_at.to_string(),
                    run.finished_at.to_string(),
                    run.message.clone(),
                ])?;
            }
            csv.finish()?;
        }
        ListFormat::Json => {
            let mut json = JsonListWriter::begin(&mut *out, RUN_LIST_KIND)?;
            for run in &runs {
                json.item(&RunItem::from(run))?;
            }
            json.finish()?;
        }
    }
    out.flush()?;
    Ok(runs.len())
}

// --- the command ---

/// `idsync identities ...`: reads the store's file directly and blocking;
/// no runtime, no cluster.
pub fn run(command: IdentitiesCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (store_path, result) = match &command {
        IdentitiesCommand::List { target, state, output } => {
            let (store, path, profile) = open_store(target)?;
            let format = ListFormat::from(*output);
            let listed = list_report(&*store, &profile, state.as_deref(), format, jiff::Timestamp::now(), &mut out);
            let result = listed.map(|count| {
                if count == 0 && format == ListFormat::Table {
                    // As kubectl's "No resources found": on stderr, so that
                    // the output stays empty for whatever reads it.
                    match state {
                        Some(state) => {
                            eprintln!("No identities in lifecycle state {state} found in profile {profile}.")
                        }
                        None => eprintln!("No identities found in profile {profile}."),
                    }
                }
            });
            (path, result)
        }
        IdentitiesCommand::Get { id, target, output } => {
            let (store, path, profile) = open_store(target)?;
            (path, get_report(&*store, &profile, id, (*output).into(), &mut out))
        }
        IdentitiesCommand::Uncorrelated { target, all_states, output } => {
            let (store, path, profile) = open_store(target)?;
            let format = ListFormat::from(*output);
            let listed = uncorrelated_report(&*store, &profile, *all_states, format, &mut out);
            let result = listed.map(|count| {
                if count == 0 && format == ListFormat::Table {
                    if *all_states {
                        eprintln!("No correlation records found in profile {profile}.");
                    } else {
                        eprintln!("No uncorrelated or ambiguous accounts found in profile {profile}.");
                    }
                }
            });
            (path, result)
        }
        IdentitiesCommand::Runs { target, limit, output } => {
            let (store, path, profile) = open_store(target)?;
            let format = ListFormat::from(*output);
            let listed = runs_report(&*store, &profile, *limit, format, jiff::Timestamp::now(), &mut out);
            let result = listed.map(|count| {
                if count == 0 && format == ListFormat::Table {
                    eprintln!("No processing runs found in profile {profile}.");
                }
            });
            (path, result)
        }
    };
    finish(result, &mut out, &store_path)
}

/// Opens the store named by `--store` (or the default) and says which
/// profile to read.
fn open_store(args: &ProfileArgs) -> anyhow::Result<(Box<dyn Store>, String, ProfileRef)> {
    let (store, path) = open_store_file(args.store.as_deref())?;
    Ok((store, path, ProfileRef::new(&args.namespace, &args.profile)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use serde_json::json;

    use jiff::SignedDuration;

    use super::*;
    use crate::cli::output::{API_VERSION, unknown_profile_message};
    use crate::model::Trigger;
    use crate::model::{ProcessingRunRecord, RunId};
    use crate::store::StoreError;
    use crate::store::{ProcessingCommit, ProcessingSnapshot, ProfileState};

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn now() -> Timestamp {
        ts("2024-06-01T12:00:00Z")
    }

    fn identity(id: &str, attributes: Value, accounts: &[(&str, &str)], modified_ago_secs: i64) -> Identity {
        assert!(attributes.is_object(), "attribute object");
        let mut identity = Identity {
            accounts: Vec::new(),
            input_hash: "ab".repeat(32),
            ..Identity::new(id, "", ts("2023-01-01T00:00:00Z"))
        }
        .with_attributes(attributes)
        .modified_at(now() - SignedDuration::from_secs(modified_ago_secs));
        for (connection, account) in accounts {
            identity = identity.with_account(*connection, *account);
        }
        identity
    }

    /// A resolved manager, an unresolved one, more than three correlated
    /// accounts, a name only in `name`, no name at all, and a display name
    /// with a comma (and one with a quote) for the CSV.
    fn fixture() -> Vec<Identity> {
        let mut ada = identity(
            "1001",
            json!({"displayName": "Ada Lovelace", "email": "ada@example.com", "department": "Engineering"}),
            &[("hr", "1001"), ("ad", "ada"), ("github", "ada"), ("okta", "00u1")],
            5 * 60,
        );
        ada.lifecycle_state = Some("Active".into());
        ada.manager_ref = Some("E1003".into());
        ada.manager = Some("1003".into());
        let mut grace = identity(
            "1002",
            json!({"displayName": "Hopper, Grace \"Amazing\"", "email": "grace@example.com"}),
            &[("hr", "1002"), ("ad", "grace"), ("github", "gh-grace"), ("okta", "00u2"), ("slack", "U2")],
            3 * 3600,
        );
        grace.lifecycle_state = Some("Leaver".into());
        grace.manager_ref = Some("boss@example.com".into());
        // The top of the hierarchy: names itself as its manager.
        let mut charles = identity("1003", json!({"name": "Charles Babbage"}), &[("hr", "1003")], 400 * 86400);
        charles.manager_ref = Some("E1003".into());
        charles.top_of_hierarchy = true;
        let mut anon = identity("1004", json!({"email": "anon@example.com"}), &[("hr", "1004"), ("ad", "u4")], 45);
        anon.lifecycle_state = Some("Joiner".into());
        anon.errors.insert("displayName".into(), "no such key: givenName".into());
        vec![ada, grace, charles, anon]
    }

    fn text<T, E: std::fmt::Debug>(render: impl FnOnce(&mut Vec<u8>) -> Result<T, E>) -> String {
        let mut out = Vec::new();
        render(&mut out).expect("render");
        String::from_utf8(out).expect("utf-8")
    }

    /// Renders identities held in memory, as `list` renders the store's.
    fn render(identities: &[Identity], format: ListFormat, out: &mut impl Write) -> Result<usize, ReportError> {
        render_identities(identities.iter().cloned().map(Ok), format, now(), out)
    }

    #[test]
    fn table_matches_kubectl_layout_exactly() {
        let out = text(|o| render(&fixture(), ListFormat::Table, o));
        let want = concat!(
            "ID     NAME                      EMAIL               STATE    MANAGER                          ACCOUNTS                      MODIFIED\n",
            "1001   Ada Lovelace              ada@example.com     Active   1003                             ad/ada,github/ada,okta/00u1   5m\n",
            "1002   Hopper, Grace \"Amazing\"   grace@example.com   Leaver   <unresolved: boss@example.com>   4 accounts                    3h\n",
            "1003   Charles Babbage           <none>              <none>   <top>                            <none>                        400d\n",
            "1004   <none>                    anon@example.com    Joiner   <none>                           ad/u4                         45s\n",
        );
        assert_eq!(out, want);
    }

    #[test]
    fn narrow_columns_keep_kubectls_minimum_width_and_control_characters_do_not_break_rows() {
        let mut one = identity("7", json!({"displayName": "Tab\tand\nnewline"}), &[("hr", "7")], 0);
        one.lifecycle_state = Some("A".into());
        let out = text(|o| render(&[one], ListFormat::Table, o));
        let want = concat!(
            "ID    NAME              EMAIL    STATE   MANAGER   ACCOUNTS   MODIFIED\n",
            "7     Tab and newline   <none>   A       <none>    <none>     0s\n",
        );
        assert_eq!(out, want);
    }

    #[test]
    fn csv_quotes_as_rfc_4180_and_lists_every_account() {
        let out = text(|o| render(&fixture(), ListFormat::Csv, o));
        let want = concat!(
            "id,name,email,lifecycleState,manager,accounts,modified\r\n",
            "1001,Ada Lovelace,ada@example.com,Active,1003,\"ad/ada,github/ada,okta/00u1\",2024-06-01T11:55:00Z\r\n",
            "1002,\"Hopper, Grace \"\"Amazing\"\"\",grace@example.com,Leaver,,\"ad/grace,github/gh-grace,okta/00u2,slack/U2\",2024-06-01T09:00:00Z\r\n",
            "1003,Charles Babbage,,,,,2023-04-28T12:00:00Z\r\n",
            "1004,,anon@example.com,Joiner,,ad/u4,2024-06-01T11:59:15Z\r\n",
        );
        assert_eq!(out, want);
        // And a CSV reader gets the fields back.
        let mut reader = csv::Reader::from_reader(out.as_bytes());
        let second = reader.records().nth(1).expect("second record").expect("parses");
        assert_eq!(&second[1], "Hopper, Grace \"Amazing\"");
        assert_eq!(&second[5], "ad/grace,github/gh-grace,okta/00u2,slack/U2");
    }

    /// The list as one value, for comparing the streamed text against.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct WholeList<'a, T> {
        api_version: &'a str,
        kind: &'a str,
        items: &'a [T],
    }

    #[test]
    fn json_is_an_identity_list_of_the_stored_form() {
        let identities = fixture();
        let out = text(|o| render(&identities, ListFormat::Json, o));
        // Exactly serde_json's pretty form of the whole list, streamed.
        let whole = WholeList { api_version: API_VERSION, kind: IDENTITY_LIST_KIND, items: &identities };
        assert_eq!(out, serde_json::to_string_pretty(&whole).expect("json") + "\n");
        assert!(
            out.starts_with(concat!(
                "{\n  \"apiVersion\": \"idsync.dev/v1alpha1\",\n  \"kind\": \"IdentityList\",\n",
                "  \"items\": [\n    {\n      \"id\": \"1001\",\n"
            )),
            "{out}"
        );
        let parsed: Value = serde_json::from_str(&out).expect("valid JSON");
        let items: Vec<Identity> = serde_json::from_value(parsed["items"].clone()).expect("items are identities");
        assert_eq!(items, identities);
    }

    #[test]
    fn empty_json_list_is_still_a_list() {
        let out = text(|o| render(&[], ListFormat::Json, o));
        assert_eq!(
            out,
            "{\n  \"apiVersion\": \"idsync.dev/v1alpha1\",\n  \"kind\": \"IdentityList\",\n  \"items\": []\n}\n"
        );
        let csv = text(|o| render(&[], ListFormat::Csv, o));
        assert_eq!(csv, "id,name,email,lifecycleState,manager,accounts,modified\r\n");
    }

    #[test]
    fn identity_yaml_and_json_hold_the_whole_identity() {
        let mut grace = fixture().swap_remove(1);
        grace.next_processing = Some(ts("2024-07-01T00:00:00Z"));
        grace.errors.insert("lifecycle".into(), "division by zero".into());
        let mut yaml = Vec::new();
        render_identity(&grace, ItemFormat::Yaml, &mut yaml).expect("yaml");
        let yaml = String::from_utf8(yaml).expect("utf-8");
        for expected in [
            "id: '1002'",
            "displayName: Hopper, Grace \"Amazing\"",
            "email: grace@example.com",
            "lifecycleState: Leaver",
            "managerRef: boss@example.com",
            "connection: slack",
            "accountId: U2",
            "lifecycle: division by zero",
            "created: 2023-01-01T00:00:00Z",
            "modified: 2024-06-01T09:00:00Z",
            "nextProcessing: 2024-07-01T00:00:00Z",
        ] {
            assert!(yaml.contains(expected), "{expected:?} missing from:\n{yaml}");
        }
        let back: Identity = yaml_serde::from_str(&yaml).expect("yaml parses back");
        assert_eq!(back, grace);
        let mut json = Vec::new();
        render_identity(&grace, ItemFormat::Json, &mut json).expect("json");
        let back: Identity = serde_json::from_slice(&json).expect("json parses back");
        assert_eq!(back, grace);
    }

    fn links() -> Vec<LinkRecord> {
        vec![
            LinkRecord {
                connection: "ad".into(),
                account_id: "svc-backup".into(),
                state: LinkState::Uncorrelated,
                identity: None,
                candidates: vec![],
            },
            LinkRecord {
                connection: "okta".into(),
                account_id: "00u9".into(),
                state: LinkState::Ambiguous,
                identity: None,
                candidates: vec!["1001".into(), "1002".into()],
            },
            LinkRecord {
                connection: "okta".into(),
                account_id: "00u1".into(),
                state: LinkState::Correlated,
                identity: Some("1001".into()),
                candidates: vec![],
            },
        ]
    }

    #[test]
    fn links_table_csv_and_json() {
        let table = text(|o| render_links_table(&links(), o));
        let want = concat!(
            "CONNECTION   ACCOUNT      STATE          IDENTITY   CANDIDATES\n",
            "ad           svc-backup   Uncorrelated   <none>     <none>\n",
            "okta         00u9         Ambiguous      <none>     1001,1002\n",
            "okta         00u1         Correlated     1001       <none>\n",
        );
        assert_eq!(table, want);
        let csv = text(|o| render_links_csv(&links(), o));
        let want = concat!(
            "connection,accountId,state,identity,candidates\r\n",
            "ad,svc-backup,Uncorrelated,,\r\n",
            "okta,00u9,Ambiguous,,\"1001,1002\"\r\n",
            "okta,00u1,Correlated,1001,\r\n",
        );
        assert_eq!(csv, want);
        let json: Value = serde_json::from_str(&text(|o| render_links_json(&links(), o))).expect("json");
        assert_eq!(json["kind"], "CorrelationRecordList");
        assert_eq!(
            json["items"][1],
            json!({"connection": "okta", "accountId": "00u9", "state": "Ambiguous", "candidates": ["1001", "1002"]})
        );
    }

    #[test]
    fn unknown_profile_lists_the_known_ones() {
        let known = vec![ProfileRef::new("default", "contractors"), ProfileRef::new("hr", "employees")];
        let message = unknown_profile_message(&ProfileRef::new("default", "employees"), &known);
        assert_eq!(
            message,
            "profile default/employees is unknown to the store; it holds: default/contractors, hr/employees \
             (did you mean --namespace hr?)"
        );
        let message = unknown_profile_message(&ProfileRef::new("default", "x"), &[]);
        assert!(message.contains("holds no profiles yet"), "{message}");
    }

    #[test]
    fn broken_pipe_is_recognised_through_csv() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
        let error = render(&fixture(), ListFormat::Csv, &mut Closed).expect_err("closed pipe");
        assert!(error.is_broken_pipe());
    }

    /// Just the identity reads of a store, to test paging and filtering
    /// without SQLite; everything else fails.
    struct FakeStore {
        profiles: Vec<ProfileRef>,
        identities: Vec<Identity>,
        links: Vec<LinkRecord>,
        /// The `after` of every list_identities call.
        calls: Mutex<Vec<Option<String>>>,
    }

    fn unused<T>() -> Result<T, StoreError> {
        Err(StoreError::Internal("not used by reports".into()))
    }

    impl IdentityStore for FakeStore {
        fn connection_versions(&self, _: &str, _: &[String]) -> Result<BTreeMap<String, u64>, StoreError> {
            unused()
        }
        fn profile_state(&self, _: &ProfileRef) -> Result<ProfileState, StoreError> {
            unused()
        }
        fn processing_snapshot(&self, _: &ProfileRef, _: &[String]) -> Result<ProcessingSnapshot, StoreError> {
            unused()
        }
        fn commit_processing(
            &self,
            _: &ProfileRef,
            _: &ProcessingCommit,
            _: &ProcessingRunRecord,
        ) -> Result<RunId, StoreError> {
            unused()
        }
        fn get_identity(&self, p: &ProfileRef, id: &str) -> Result<Option<Identity>, StoreError> {
            assert!(self.profiles.contains(p));
            Ok(self.identities.iter().find(|i| i.id == id).cloned())
        }
        fn list_identities(
            &self,
            p: &ProfileRef,
            state: Option<&str>,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<Identity>, StoreError> {
            assert!(self.profiles.contains(p));
            self.calls.lock().expect("calls").push(after.map(String::from));
            Ok(self
                .identities
                .iter()
                .filter(|i| state.is_none() || i.lifecycle_state.as_deref() == state)
                .filter(|i| after.is_none_or(|a| i.id.as_str() > a))
                .take(limit)
                .cloned()
                .collect())
        }
        fn list_links(&self, p: &ProfileRef, state: Option<LinkState>) -> Result<Vec<LinkRecord>, StoreError> {
            assert!(self.profiles.contains(p));
            let mut links: Vec<LinkRecord> =
                self.links.iter().filter(|l| state.is_none_or(|s| l.state == s)).cloned().collect();
            links.sort_by(|a, b| (&a.connection, &a.account_id).cmp(&(&b.connection, &b.account_id)));
            Ok(links)
        }
        fn profiles(&self) -> Result<Vec<ProfileRef>, StoreError> {
            Ok(self.profiles.clone())
        }
        fn purge_profile(&self, _: &ProfileRef) -> Result<u64, StoreError> {
            unused()
        }
    }

    fn fake() -> FakeStore {
        FakeStore {
            profiles: vec![ProfileRef::new("default", "employees")],
            identities: fixture(),
            links: links(),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn employees() -> ProfileRef {
        ProfileRef::new("default", "employees")
    }

    #[test]
    fn listing_pages_through_the_store_by_last_id() {
        for format in [ListFormat::Table, ListFormat::Csv, ListFormat::Json] {
            let store = fake();
            let mut paged = Vec::new();
            let count = list_pages(&store, &employees(), None, format, now(), 3, &mut paged).expect("paged listing");
            assert_eq!(count, 4);
            assert_eq!(*store.calls.lock().expect("calls"), [None, Some("1003".to_string())], "{format:?}");
            // Paging changes nothing in the output.
            let mut whole = Vec::new();
            render(&fixture(), format, &mut whole).expect("render");
            assert_eq!(String::from_utf8_lossy(&paged), String::from_utf8_lossy(&whole), "{format:?}");
        }
        // A full last page costs one more (empty) read, and still ends.
        let store = fake();
        let count = list_pages(&store, &employees(), None, ListFormat::Csv, now(), 2, &mut Vec::new()).expect("list");
        assert_eq!(count, 4);
        assert_eq!(store.calls.lock().expect("calls").len(), 3);
    }

    #[test]
    fn list_report_filters_by_state_and_prints_no_table_when_empty() {
        let store = fake();
        let mut out = Vec::new();
        let count = list_report(&store, &employees(), Some("Leaver"), ListFormat::Csv, now(), &mut out).expect("list");
        assert_eq!(count, 1);
        let out = String::from_utf8(out).expect("utf-8");
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains("1002,"), "{out}");

        let mut out = Vec::new();
        let count =
            list_report(&store, &employees(), Some("Retired"), ListFormat::Table, now(), &mut out).expect("list");
        assert_eq!((count, out.len()), (0, 0));
    }

    #[test]
    fn reports_refuse_an_unknown_profile_and_an_unknown_id() {
        let store = fake();
        let other = ProfileRef::new("hr", "employees");
        let error = list_report(&store, &other, None, ListFormat::Table, now(), &mut Vec::new()).expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "profile hr/employees is unknown to the store; it holds: default/employees \
             (did you mean --namespace default?)"
        );
        let error = get_report(&store, &employees(), "9999", ItemFormat::Yaml, &mut Vec::new()).expect_err("no id");
        assert_eq!(error.to_string(), "identity \"9999\" not found in profile default/employees");
        let error =
            uncorrelated_report(&store, &other, false, ListFormat::Table, &mut Vec::new()).expect_err("unknown");
        assert!(matches!(error, ReportError::UnknownProfile { .. }), "{error}");
    }

    #[test]
    fn uncorrelated_report_shows_uncorrelated_and_ambiguous_unless_all_states() {
        let store = fake();
        let mut out = Vec::new();
        let count = uncorrelated_report(&store, &employees(), false, ListFormat::Csv, &mut out).expect("report");
        assert_eq!(count, 2);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "connection,accountId,state,identity,candidates\r\nad,svc-backup,Uncorrelated,,\r\nokta,00u9,Ambiguous,,\"1001,1002\"\r\n"
        );
        let mut out = Vec::new();
        let count = uncorrelated_report(&store, &employees(), true, ListFormat::Table, &mut out).expect("report");
        assert_eq!(count, 3);
        let out = String::from_utf8(out).expect("utf-8");
        assert!(out.contains("okta         00u1         Correlated     1001"), "{out}");
    }

    #[test]
    fn run_rows_show_trigger_request_counts_age_and_length() {
        let run = |request: Option<&str>, seconds: f64, message: &str| ProcessingRunRecord {
            id: 7,
            trigger: Trigger::Manual,
            request: request.map(String::from),
            started_at: ts("2024-06-01T11:00:00Z"),
            finished_at: ts("2024-06-01T11:00:00Z") + SignedDuration::from_secs_f64(seconds),
            outcome: crate::model::RunOutcome::DryRun,
            processed: 12,
            changed: 3,
            errors: 1,
            message: message.into(),
        };
        assert_eq!(
            run_row(&run(Some("apply-june"), 0.25, ""), now()),
            ["7", "Manual (apply-june)", "DryRun", "12", "3", "1", "60m", "250ms", "<none>"]
        );
        assert_eq!(
            run_row(&run(None, 95.0, "1 identities have\nexpressions that failed"), now())[1..],
            ["Manual", "DryRun", "12", "3", "1", "60m", "95s", "1 identities have expressions that failed"]
        );
    }
}
