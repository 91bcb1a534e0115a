//! `idsync drift list`: a profile's open access drift cases, read from the
//! store's file (no cluster needed): offboarded people who still hold
//! enabled accounts, orphan accounts, missing expected accounts, each with
//! its connection, account and age.

use std::io::Write;
use std::process::ExitCode;

use jiff::Timestamp;

use super::output::{
    CsvWriter, JsonListWriter, ListFormat, NONE, ReportError, cell, finish, open_store_file, write_table,
};
use super::{DriftCommand, ProfileArgs};
use crate::model::ProfileRef;
use crate::store::IdentityStore;
use crate::store::drift::{DriftCase, DriftKind, DriftStore};

/// The `kind` of `drift list -o json`.
pub const DRIFT_LIST_KIND: &str = "DriftCaseList";
const COLUMNS: [&str; 6] = ["KIND", "IDENTITY", "CONNECTION", "ACCOUNT", "NAME", "AGE"];
const CSV_HEADER: [&str; 6] = ["kind", "identity", "connection", "accountId", "label", "since"];

fn row(case: &DriftCase, now: Timestamp) -> Vec<String> {
    let or_none = |s: &str| if s.is_empty() { NONE.to_string() } else { cell(s) };
    vec![
        case.kind.as_str().to_string(),
        or_none(&case.identity),
        cell(&case.connection),
        or_none(&case.account_id),
        or_none(&case.label),
        idsync_devcluster::age::human_duration(now.duration_since(case.since)),
    ]
}

fn record(case: &DriftCase) -> Vec<String> {
    vec![
        case.kind.as_str().to_string(),
        case.identity.clone(),
        case.connection.clone(),
        case.account_id.clone(),
        case.label.clone(),
        case.since.to_string(),
    ]
}

/// `drift list`: every open case of the profile (of `kind` when given),
/// ordered by kind, connection, identity and account. Returns how many it
/// printed; the table prints nothing for none (the caller says so).
pub fn list_report<S: DriftStore + IdentityStore + ?Sized>(
    store: &S,
    profile: &ProfileRef,
    kind: Option<DriftKind>,
    format: ListFormat,
    now: Timestamp,
    out: &mut impl Write,
) -> Result<usize, ReportError> {
    super::identities::ensure_profile(store, profile)?;
    let cases: Vec<DriftCase> =
        store.drift_cases(profile)?.into_iter().filter(|c| kind.is_none_or(|k| c.kind == k)).collect();
    match format {
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = cases.iter().map(|c| row(c, now)).collect();
            if !rows.is_empty() {
                write_table(&COLUMNS, &rows, out)?;
            }
        }
        ListFormat::Csv => {
            let mut csv = CsvWriter::begin(&mut *out, &CSV_HEADER)?;
            for case in &cases {
                csv.record(&record(case))?;
            }
            csv.finish()?;
        }
        ListFormat::Json => {
            let mut json = JsonListWriter::begin(&mut *out, DRIFT_LIST_KIND)?;
            for case in &cases {
                json.item(case)?;
            }
            json.finish()?;
        }
    }
    out.flush()?;
    Ok(cases.len())
}

/// `idsync drift ...`: reads the store's file directly.
pub fn run(command: DriftCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let DriftCommand::List { target, kind, output } = command;
    let ProfileArgs { profile, namespace, store } = target;
    let (store, path) = open_store_file(store.as_deref())?;
    let profile = ProfileRef::new(namespace, profile);
    let format = ListFormat::from(output);
    let kind = kind.map(DriftKind::from);
    let result = list_report(&*store, &profile, kind, format, Timestamp::now(), &mut out).map(|count| {
        if count == 0 && format == ListFormat::Table {
            eprintln!("No access drift found in profile {profile}.");
        }
    });
    finish(result, &mut out, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn store_with_cases() -> (tempfile::TempDir, SqliteStore, ProfileRef) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let p = ProfileRef::new("default", "employees");
        let case = |kind, identity: &str, account: &str, label: &str| DriftCase {
            kind,
            identity: identity.into(),
            connection: "github".into(),
            account_id: account.into(),
            label: label.into(),
            since: Timestamp::UNIX_EPOCH,
        };
        let cases = [
            case(DriftKind::OffboardedWithAccess, "E1008", "gh8", "hopper"),
            case(DriftKind::OrphanAccount, "", "gh99", "deploy-bot"),
        ];
        store.replace_drift(&p, &cases, "h", at(0)).unwrap();
        // A profile the store lists has identities or state; the drift row
        // alone does not make one, so give it an identity.
        let commit = crate::store::ProcessingCommit {
            upserts: vec![crate::model::Identity::new("E1008", "hr", at(0))],
            ..Default::default()
        };
        let run = crate::model::ProcessingRunRecord {
            id: 0,
            trigger: crate::model::Trigger::Manual,
            request: None,
            started_at: at(0),
            finished_at: at(0),
            outcome: crate::model::RunOutcome::Succeeded,
            processed: 1,
            changed: 1,
            errors: 0,
            message: String::new(),
        };
        store.commit_processing(&p, &commit, &run).unwrap();
        (dir, store, p)
    }

    #[test]
    fn the_table_shows_kind_identity_account_and_age() {
        let (_dir, store, p) = store_with_cases();
        let mut out = Vec::new();
        let n = list_report(&store, &p, None, ListFormat::Table, at(3 * 3600), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(n, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("KIND") && lines[0].contains("AGE"), "{text}");
        assert!(lines[1].contains("OffboardedWithAccess") && lines[1].contains("E1008") && lines[1].contains("3h"));
        assert!(lines[2].contains("OrphanAccount") && lines[2].contains("<none>") && lines[2].contains("deploy-bot"));
    }

    #[test]
    fn json_and_csv_carry_every_case_and_a_kind_filters() {
        let (_dir, store, p) = store_with_cases();
        let mut out = Vec::new();
        list_report(&store, &p, None, ListFormat::Json, at(0), &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["kind"], DRIFT_LIST_KIND);
        assert_eq!(json["items"][0]["accountId"], "gh8");
        assert_eq!(json["items"][1]["kind"], "OrphanAccount");
        let mut out = Vec::new();
        let n = list_report(&store, &p, Some(DriftKind::OrphanAccount), ListFormat::Csv, at(0), &mut out).unwrap();
        assert_eq!(n, 1);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("kind,identity,connection,accountId,label,since"), "{text}");
        assert!(text.contains("OrphanAccount,,github,gh99,deploy-bot,"), "{text}");
    }

    #[test]
    fn an_unknown_profile_is_named() {
        let (_dir, store, _) = store_with_cases();
        let error =
            list_report(&store, &ProfileRef::new("default", "nope"), None, ListFormat::Table, at(0), &mut Vec::new())
                .unwrap_err();
        assert!(error.to_string().contains("nope"), "{error}");
    }
}
