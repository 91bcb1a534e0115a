//! `idsync runs` and `idsync accounts` against a store the sync engine
//! filled (a csv export synced, then a dry run and a real run of a changed
//! export), run as the built binary, as a person types them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use idsync::connectors::{self, ProviderInputs};
use idsync::model::Trigger;
use idsync::model::{ConnectionRef, RunId, RunOutcome};
use idsync::store::{SqliteStore, Store};
use idsync::sync::job::{self, SyncJob};
use idsync_api::{Connection, SyncMode};
use serde_json::Value;

pub(crate) const HEADER: &str = "employee_id,display_name,work_email,status";

pub(crate) async fn sync(store: &Arc<dyn Store>, csv: &str, dry_run: bool) -> RunId {
    let spec = Connection::test("hr")
        .max_delete_percent(100)
        .id_column("employee_id")
        .column("email", "work_email")
        .column("displayName", "display_name")
        .column("enabled", "status")
        .spec();
    let inputs = ProviderInputs { csv_data: Some(csv.as_bytes().to_vec()), ..Default::default() };
    let job = SyncJob {
        connection: ConnectionRef::new("default", "hr"),
        mode: SyncMode::Full,
        trigger: Trigger::Requested,
        request: Some(if dry_run { "preview" } else { "apply" }.into()),
        holder: "test".into(),
        dry_run,
        confirm_deletes: false,
        safeguard: spec.import_safeguard.clone(),
        settings_hash: "h".into(),
        full_sync_interval: std::time::Duration::from_secs(86_400),
        max_duration: std::time::Duration::from_secs(600),
    };
    let connector = connectors::build(&spec, inputs).expect("connector");
    let report = job::run(job, connector, store.clone(), idsync::sync::cancel::Cancel::new()).await;
    let expected = if dry_run { RunOutcome::DryRun } else { RunOutcome::Succeeded };
    assert_eq!(report.outcome, expected, "{report:?}");
    report.run.expect("a run")
}

/// The store after three syncs; returns it and the ids of the dry run and
/// the applied run.
pub(crate) async fn fixture() -> (tempfile::TempDir, PathBuf, RunId, RunId) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("idsync.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).expect("store"));
    let first = format!(
        "{HEADER}\nE1,Ada Lovelace,ada@acme.example,active\nE2,Grace Hopper,grace@acme.example,active\nE3,Alan Turing,alan@acme.example,active\n"
    );
    sync(&store, &first, false).await;
    // Grace's address changes, Alan leaves, Katherine joins.
    let second = format!(
        "{HEADER}\nE1,Ada Lovelace,ada@acme.example,active\nE2,Grace Hopper,grace@navy.example,active\nE4,Katherine Johnson,kj@acme.example,active\n"
    );
    let dry = sync(&store, &second, true).await;
    let applied = sync(&store, &second, false).await;
    (dir, path, dry, applied)
}

fn idsync(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idsync")).args(args).arg("--store").arg(store).output().expect("idsync runs")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(out.status.success(), "failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test]
async fn runs_list_shows_each_sync_newest_first() {
    let (_dir, store, dry, applied) = fixture().await;
    let table = ok(idsync(&store, &["runs", "list", "--connection", "hr"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
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
            "MESSAGE"
        ]
    );
    let row = |line: &str| line.split_whitespace().map(String::from).collect::<Vec<_>>();
    let newest = row(lines[1]);
    assert_eq!(
        newest[..9],
        [applied.to_string().as_str(), "Requested", "(apply)", "Full", "Succeeded", "1", "1", "1", "1"]
    );
    let preview = row(lines[2]);
    assert_eq!(
        preview[..9],
        [dry.to_string().as_str(), "Requested", "(preview)", "Full", "DryRun", "1", "1", "1", "1"]
    );

    let json: Value =
        serde_json::from_str(&ok(idsync(&store, &["runs", "list", "--connection", "hr", "-o", "json"]))).expect("JSON");
    assert_eq!(json["kind"], "SyncRunList");
    assert_eq!(json["items"][0]["result"], "Succeeded");
    assert_eq!(json["items"][1]["result"], "DryRun");
    assert_eq!(json["items"][2]["created"], 3);
}

#[tokio::test]
async fn runs_get_shows_what_a_run_changed_and_a_dry_run_would_have() {
    let (_dir, store, dry, applied) = fixture().await;
    for run in [dry, applied] {
        let text = ok(idsync(&store, &["runs", "get", &run.to_string()]));
        for line in [
            "Connection: default/hr",
            "Counts:     created 1, updated 1, deleted 1, unchanged 1",
            "  update E2: email grace@acme.example → grace@navy.example, attributes.work_email grace@acme.example → grace@navy.example",
            "  create E4 (kj@acme.example)",
            "  delete E3 (alan@acme.example)",
        ] {
            assert!(text.lines().any(|l| l == line), "run {run} lacks {line:?}:\n{text}");
        }
    }
    let json: Value =
        serde_json::from_str(&ok(idsync(&store, &["runs", "get", &applied.to_string(), "-o", "json"]))).expect("JSON");
    assert_eq!(json["kind"], "AccountChangeList");
    assert_eq!(json["run"]["result"], "Succeeded");
    let kinds: Vec<&str> = json["items"].as_array().expect("items").iter().filter_map(|c| c["kind"].as_str()).collect();
    assert_eq!(kinds, ["Updated", "Created", "Deleted"]);

    let csv = ok(idsync(&store, &["runs", "get", &applied.to_string(), "-o", "csv"]));
    assert!(csv.starts_with("run,accountId,kind,field,before,after\r\n"), "{csv}");
    assert!(csv.contains(&format!("{applied},E2,Updated,email,grace@acme.example,grace@navy.example\r\n")), "{csv}");
    assert!(csv.contains(&format!("{applied},E3,Deleted,email,alan@acme.example,\r\n")), "{csv}");

    let missing = idsync(&store, &["runs", "get", "999"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("run 999 is not in the store's run history"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

#[tokio::test]
async fn accounts_list_and_get_read_what_was_synced() {
    let (_dir, store, _, _) = fixture().await;
    let table = ok(idsync(&store, &["accounts", "list", "--connection", "hr"]));
    let ids: Vec<&str> = table.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids, ["E1", "E2", "E4"], "{table}");
    assert!(table.lines().next().is_some_and(|h| h.starts_with("ID   ")), "{table}");
    let grace: Value =
        serde_json::from_str(&ok(idsync(&store, &["accounts", "get", "E2", "--connection", "hr", "-o", "json"])))
            .expect("JSON");
    assert_eq!(grace["email"], "grace@navy.example");

    let typo = idsync(&store, &["accounts", "list", "--connection", "hris"]);
    assert!(!typo.status.success());
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(said.contains("connection default/hris is unknown to the store; it holds: default/hr"), "{said}");
    let gone = idsync(&store, &["accounts", "get", "E3", "--connection", "hr"]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("account \"E3\" not found in connection default/hr"));
}
