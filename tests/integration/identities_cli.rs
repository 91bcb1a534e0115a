//! `idsync identities` from the outside: the built binary reading a store
//! file written through the store's own API, as `kubectl exec` would run it
//! in the operator's pod.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use idsync::model::Trigger;
use idsync::model::{Identity, LinkRecord, LinkState};
use idsync::model::{ProcessingRunRecord, ProfileRef, RunOutcome};
use idsync::store::{IdentityStore, ProcessingCommit, ProfileState, SqliteStore};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

const HEADER: [&str; 7] = ["ID", "NAME", "EMAIL", "STATE", "MANAGER", "ACCOUNTS", "MODIFIED"];

fn identity(id: &str, attributes: Value, state: Option<&str>, accounts: &[(&str, &str)]) -> Identity {
    let now = Timestamp::now();
    assert!(attributes.is_object(), "attributes are an object");
    let mut identity = Identity {
        accounts: Vec::new(),
        lifecycle_state: state.map(String::from),
        input_hash: "0f".repeat(32),
        ..Identity::new(id, "", now - SignedDuration::from_hours(24 * 30))
    }
    .with_attributes(attributes)
    // Three hours ago shows as "3h" for the next minute, however slow the
    // machine.
    .modified_at(now - SignedDuration::from_hours(3));
    for (connection, account) in accounts {
        identity = identity.with_account(*connection, *account);
    }
    identity
}

fn link(connection: &str, account: &str, state: LinkState, identity: Option<&str>, candidates: &[&str]) -> LinkRecord {
    LinkRecord {
        connection: connection.into(),
        account_id: account.into(),
        state,
        identity: identity.map(String::from),
        candidates: candidates.iter().map(|c| (*c).to_string()).collect(),
    }
}

fn run_record() -> ProcessingRunRecord {
    let now = Timestamp::now();
    ProcessingRunRecord {
        id: 0,
        trigger: Trigger::Manual,
        request: None,
        started_at: now,
        finished_at: now,
        outcome: RunOutcome::Succeeded,
        processed: 3,
        changed: 3,
        errors: 0,
        message: String::new(),
    }
}

/// A store holding default/employees (three identities: a resolved and an
/// unresolved manager, a display name with a comma; three correlation
/// records, one of each state) and hr/contractors (state, no identities).
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("idsync.db");
    let store = SqliteStore::open(&path).expect("store opens");

    let mut ada = identity(
        "E1001",
        json!({"displayName": "Ada Lovelace", "email": "ada@example.com", "department": "Engineering"}),
        Some("Active"),
        &[("hr", "E1001"), ("ad", "ada"), ("okta", "00u1")],
    );
    ada.manager_ref = Some("E1003".into());
    ada.manager = Some("E1003".into());
    let mut grace = identity(
        "E1002",
        json!({"displayName": "Hopper, Grace", "email": "grace@example.com"}),
        Some("Leaver"),
        &[("hr", "E1002"), ("ad", "grace"), ("github", "gh-grace"), ("okta", "00u2"), ("slack", "U2")],
    );
    grace.manager_ref = Some("E9999".into());
    grace.errors.insert("title".into(), "no such key: title".into());
    let charles = identity("E1003", json!({"name": "Charles Babbage"}), Some("Active"), &[("hr", "E1003")]);

    let commit = ProcessingCommit {
        upserts: vec![ada, grace, charles],
        link_upserts: vec![
            link("okta", "00u1", LinkState::Correlated, Some("E1001"), &[]),
            link("ad", "svc-backup", LinkState::Uncorrelated, None, &[]),
            link("okta", "00u9", LinkState::Ambiguous, None, &["E1001", "E1002"]),
        ],
        state: ProfileState { applied_generation: Some(1), ..Default::default() },
        ..Default::default()
    };
    store
        .commit_processing(&ProfileRef::new("default", "employees"), &commit, &run_record())
        .expect("employees commit");
    let contractors = ProcessingCommit {
        state: ProfileState { applied_generation: Some(1), ..Default::default() },
        ..Default::default()
    };
    store.commit_processing(&ProfileRef::new("hr", "contractors"), &contractors, &run_record()).expect("contractors");
    drop(store);
    (dir, path)
}

fn idsync(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idsync"))
        .arg("identities")
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .expect("idsync runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed: {}\nstdout: {}", stderr(&out), stdout(&out));
    stdout(&out)
}

/// The cells of a table's rows, cut at the header's column starts (so a
/// misaligned column shows as a wrong cell).
fn table(text: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|(i, c)| *c != ' ' && (*i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    std::iter::once(header)
        .chain(lines)
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(n, &start)| {
                    let end = starts.get(n + 1).copied().unwrap_or(line.len()).min(line.len());
                    line.get(start.min(line.len())..end).unwrap_or_default().trim_end().to_string()
                })
                .collect()
        })
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], id: &str) -> &'a [String] {
    rows.iter().find(|r| r[0] == id).unwrap_or_else(|| panic!("no row {id} in {rows:?}"))
}

#[test]
fn list_prints_a_kubectl_like_table() {
    let (_dir, store) = fixture();
    let text = ok(idsync(&store, &["list", "--profile", "employees"]));
    let rows = table(&text);
    assert_eq!(rows[0], HEADER, "{text}");
    assert_eq!(rows.len(), 4, "{text}");
    assert_eq!(
        row(&rows, "E1001"),
        ["E1001", "Ada Lovelace", "ada@example.com", "Active", "E1003", "ad/ada,okta/00u1", "3h"]
    );
    assert_eq!(
        row(&rows, "E1002"),
        ["E1002", "Hopper, Grace", "grace@example.com", "Leaver", "<unresolved: E9999>", "4 accounts", "3h"]
    );
    assert_eq!(row(&rows, "E1003"), ["E1003", "Charles Babbage", "<none>", "Active", "<none>", "<none>", "3h"]);
    // Ordered by id, columns three spaces apart at least.
    assert_eq!(rows.iter().skip(1).map(|r| r[0].as_str()).collect::<Vec<_>>(), ["E1001", "E1002", "E1003"]);
    assert!(text.starts_with("ID      NAME   "), "{text}");
}

#[test]
fn list_filters_by_lifecycle_state() {
    let (_dir, store) = fixture();
    let text = ok(idsync(&store, &["list", "--profile", "employees", "--namespace", "default", "--state", "Leaver"]));
    let rows = table(&text);
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(rows[1][0], "E1002");

    // Nothing in that state: kubectl's "No resources found", on stderr.
    let out = idsync(&store, &["list", "--profile", "employees", "--state", "Retired"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("No identities in lifecycle state Retired found in profile default/employees."));

    let out = idsync(&store, &["list", "--profile", "contractors", "-n", "hr"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out).trim(), "No identities found in profile hr/contractors.");
}

#[test]
fn list_as_json_is_an_identity_list() {
    let (_dir, store) = fixture();
    let text = ok(idsync(&store, &["list", "--profile", "employees", "-o", "json"]));
    let list: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(list["apiVersion"], "idsync.dev/v1alpha1");
    assert_eq!(list["kind"], "IdentityList");
    let items: Vec<Identity> = serde_json::from_value(list["items"].clone()).expect("items are identities");
    assert_eq!(items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["E1001", "E1002", "E1003"]);
    assert_eq!(items[0].attributes["department"], "Engineering");
    assert_eq!(items[1].manager_ref.as_deref(), Some("E9999"));
    assert_eq!(items[1].errors["title"], "no such key: title");

    let text = ok(idsync(&store, &["list", "--profile", "employees", "--state", "Leaver", "--output", "json"]));
    let list: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{text}");
}

#[test]
fn list_as_csv_quotes_and_lists_every_account() {
    let (_dir, store) = fixture();
    let text = ok(idsync(&store, &["list", "--profile", "employees", "-o", "csv"]));
    assert!(text.starts_with("id,name,email,lifecycleState,manager,accounts,modified\r\n"), "{text}");
    assert!(text.contains("E1002,\"Hopper, Grace\",grace@example.com,Leaver,,"), "{text}");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().expect("valid CSV");
    assert_eq!(records.len(), 3);
    let grace = &records[1];
    assert_eq!(&grace[0], "E1002");
    assert_eq!(&grace[1], "Hopper, Grace");
    assert_eq!(&grace[5], "ad/grace,github/gh-grace,okta/00u2,slack/U2");
    let modified: Timestamp = grace[6].parse().expect("modified is RFC 3339");
    assert!(Timestamp::now().duration_since(modified) >= SignedDuration::from_hours(3));
}

#[test]
fn get_prints_the_whole_identity() {
    let (_dir, store) = fixture();
    let text = ok(idsync(&store, &["get", "E1001", "--profile", "employees"]));
    for expected in [
        "id: E1001",
        "displayName: Ada Lovelace",
        "email: ada@example.com",
        "department: Engineering",
        "lifecycleState: Active",
        "manager: E1003",
        "connection: okta",
        "accountId: 00u1",
        "created:",
        "modified:",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
    let text = ok(idsync(&store, &["get", "E1002", "--profile", "employees", "-o", "json"]));
    let grace: Identity = serde_json::from_str(&text).expect("an identity as JSON");
    assert_eq!(grace.accounts.len(), 5);
    assert_eq!(grace.errors["title"], "no such key: title");
}

#[test]
fn get_of_an_unknown_id_fails_naming_profile_and_id() {
    let (_dir, store) = fixture();
    let out = idsync(&store, &["get", "E404", "--profile", "employees"]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "");
    let message = stderr(&out);
    assert!(message.contains("E404") && message.contains("default/employees"), "{message}");
}

#[test]
fn uncorrelated_lists_uncorrelated_and_ambiguous_records() {
    let (_dir, store) = fixture();
    let text = ok(idsync(&store, &["uncorrelated", "--profile", "employees"]));
    let rows = table(&text);
    assert_eq!(rows[0], ["CONNECTION", "ACCOUNT", "STATE", "IDENTITY", "CANDIDATES"], "{text}");
    assert_eq!(
        &rows[1..],
        [
            ["ad", "svc-backup", "Uncorrelated", "<none>", "<none>"],
            ["okta", "00u9", "Ambiguous", "<none>", "E1001,E1002"],
        ]
    );

    let text = ok(idsync(&store, &["uncorrelated", "--profile", "employees", "--all-states"]));
    let rows = table(&text);
    assert_eq!(rows.len(), 4, "{text}");
    assert!(rows.contains(&vec!["okta".into(), "00u1".into(), "Correlated".into(), "E1001".into(), "<none>".into()]));

    let text = ok(idsync(&store, &["uncorrelated", "--profile", "employees", "-o", "json"]));
    let list: Value = serde_json::from_str(&text).expect("valid JSON");
    let items: Vec<LinkRecord> = serde_json::from_value(list["items"].clone()).expect("items are records");
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].candidates, ["E1001", "E1002"]);

    let text = ok(idsync(&store, &["uncorrelated", "--profile", "employees", "-o", "csv"]));
    assert!(text.contains("okta,00u9,Ambiguous,,\"E1001,E1002\"\r\n"), "{text}");
}

#[test]
fn a_missing_store_fails_without_creating_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nowhere").join("idsync.db");
    let out = idsync(&missing, &["list", "--profile", "employees"]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains(&format!("no store at {}", missing.display())), "{message}");
    assert!(message.contains("--store"), "{message}");
    assert!(!missing.exists() && !dir.path().join("nowhere").exists(), "the CLI created a store");

    // Without --store: IDSYNC_DATA_DIR, as for `idsync run`.
    let out = Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["identities", "uncorrelated", "--profile", "employees"])
        .env("IDSYNC_DATA_DIR", dir.path())
        .output()
        .expect("idsync runs");
    assert!(!out.status.success());
    let default = dir.path().join("idsync.db");
    assert!(stderr(&out).contains(&format!("no store at {}", default.display())), "{}", stderr(&out));
    assert!(!default.exists(), "the CLI created a store");
}

#[test]
fn an_unknown_profile_fails_listing_the_known_ones() {
    let (_dir, store) = fixture();
    for args in [
        &["list", "--profile", "employes"][..],
        &["get", "E1001", "--profile", "employes"],
        &["uncorrelated", "--profile", "employes"],
    ] {
        let out = idsync(&store, args);
        assert!(!out.status.success(), "{args:?}");
        let message = stderr(&out);
        assert!(message.contains("default/employes"), "{message}");
        assert!(message.contains("default/employees") && message.contains("hr/contractors"), "{message}");
    }
    // The right name in the wrong namespace gets a hint.
    let out = idsync(&store, &["list", "--profile", "contractors"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--namespace hr"), "{}", stderr(&out));
}

#[test]
fn runs_lists_the_processing_history_newest_first() {
    let (_dir, store) = fixture();
    let out = idsync(&store, &["runs", "--profile", "employees"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("RUN") && lines[0].contains("TRIGGER") && lines[0].contains("PROCESSED"), "{text}");
    assert_eq!(lines.len(), 2, "{text}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&cells[1..6], &["Manual", "Succeeded", "3", "3", "0"], "{text}");

    let out = idsync(&store, &["runs", "--profile", "employees", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["kind"], "ProcessingRunList");
    assert_eq!(list["items"][0]["trigger"], "Manual");
    assert_eq!(list["items"][0]["processed"], 3);

    let out = idsync(&store, &["runs", "--profile", "employees", "-o", "csv"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("run,trigger,request,result,processed,changed,errors,started,finished,message\r\n"),
        "{text}"
    );
    assert!(text.lines().nth(1).is_some_and(|l| l.contains(",Manual,,Succeeded,3,3,0,")), "{text}");
}
