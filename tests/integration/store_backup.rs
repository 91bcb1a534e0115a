//! `idsync store backup` and `idsync store restore`, run as the built
//! binary on a store the sync engine filled (the runs_cli fixture): a
//! restore brings back exactly the backed-up state, a backup streams whole
//! to standard output, and a restore refuses what is not an idsync store and
//! a store a running idsync holds, leaving the store as it was.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use idsync::store::backup::StoreLock;
use idsync::store::{SqliteStore, Store};

use crate::runs_cli::{HEADER, fixture, sync};

fn idsync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idsync")).args(args).output().expect("idsync runs")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn accounts(store: &Path) -> String {
    ok(idsync(&["accounts", "list", "--connection", "hr", "--store", &store.display().to_string()]))
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn a_restore_brings_back_exactly_the_backed_up_store() {
    let (dir, store, _, _) = fixture().await;
    let backup = dir.path().join("backup.db");
    let said = idsync(&["store", "backup", "--store", &s(&store), "--to", &s(&backup)]);
    let stderr = String::from_utf8_lossy(&said.stderr).into_owned();
    assert!(said.status.success(), "{stderr}");
    assert!(stderr.contains("schema version"), "{stderr}");
    for beside in ["backup.db-wal", "backup.db-shm", "backup.db.partial"] {
        assert!(!dir.path().join(beside).exists(), "a backup is one file; {beside} was left");
    }
    let before = accounts(&store);
    assert!(before.contains("Katherine Johnson"), "{before}");
    let runs_before = ok(idsync(&["runs", "list", "--connection", "hr", "--store", &s(&store)]));

    // After the backup, Ada leaves and Grace's address changes back.
    {
        let live: Arc<dyn Store> = Arc::new(SqliteStore::open(&store).expect("store"));
        let third = format!(
            "{HEADER}\nE2,Grace Hopper,grace@acme.example,active\nE4,Katherine Johnson,kj@acme.example,active\n"
        );
        sync(&live, &third, false).await;
    }
    let after = accounts(&store);
    assert!(!after.contains("Ada Lovelace"), "{after}");

    let said = idsync(&["store", "restore", "--store", &s(&store), "--from", &s(&backup)]);
    assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
    assert_eq!(accounts(&store), before, "the accounts as backed up");
    assert_eq!(ok(idsync(&["runs", "list", "--connection", "hr", "--store", &s(&store)])), runs_before);
    // The replaced store is kept, whole.
    let kept = dir.path().join("idsync.db.before-restore");
    assert_eq!(accounts(&kept), after);
    // And the restored store takes the next sync.
    let live: Arc<dyn Store> = Arc::new(SqliteStore::open(&store).expect("store"));
    sync(&live, &format!("{HEADER}\nE9,Mary Jackson,mj@acme.example,active\n"), false).await;
    assert!(accounts(&store).contains("Mary Jackson"));
}

#[tokio::test]
async fn a_backup_to_standard_output_is_a_whole_store() {
    let (dir, store, _, _) = fixture().await;
    let streamed = idsync(&["store", "backup", "--store", &s(&store), "--to", "-"]);
    assert!(streamed.status.success(), "{}", String::from_utf8_lossy(&streamed.stderr));
    assert!(streamed.stdout.starts_with(b"SQLite format 3\0"), "a database on stdout");
    let file = dir.path().join("from-stdout.db");
    std::fs::write(&file, &streamed.stdout).expect("write");
    let elsewhere = dir.path().join("restored/idsync.db");
    ok(idsync(&["store", "restore", "--store", &s(&elsewhere), "--from", &s(&file)]));
    assert_eq!(accounts(&elsewhere), accounts(&store));
    // And back in through standard input, as `kubectl exec -i` sends it.
    let piped = dir.path().join("piped/idsync.db");
    let mut restore = Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["store", "restore", "--store", &s(&piped), "--from", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("idsync runs");
    std::io::Write::write_all(&mut restore.stdin.take().expect("stdin"), &streamed.stdout).expect("pipe");
    let out = restore.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(accounts(&piped), accounts(&store));
    let staged: Vec<_> = std::fs::read_dir(dir.path().join("piped"))
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains(".restore-"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    // Nothing is left beside the store.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains(".backup-") || n.contains(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_restore_refuses_a_non_store_and_a_store_in_use_and_changes_nothing() {
    let (dir, store, _, _) = fixture().await;
    let before = accounts(&store);

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database").expect("write");
    let refused = idsync(&["store", "restore", "--store", &s(&store), "--from", &s(&text)]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is not a usable idsync store"), "{stderr}");

    // An SQLite file that is not an idsync store.
    let other = dir.path().join("other.db");
    empty_database(&other);
    let refused = idsync(&["store", "restore", "--store", &s(&store), "--from", &s(&other)]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("it has no idsync schema"));

    // A running idsync holds the store's lock (as `idsync run` and `idsync
    // dev` do): a backup still works, online; a restore is refused.
    let held = StoreLock::acquire(&store).expect("the lock");
    let backup = dir.path().join("online.db");
    ok(idsync(&["store", "backup", "--store", &s(&store), "--to", &s(&backup)]));
    let refused = idsync(&["store", "restore", "--store", &s(&store), "--from", &s(&backup)]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is in use by a running idsync"), "{stderr}");
    drop(held);

    assert_eq!(accounts(&store), before, "the store as it was");
    assert!(!dir.path().join("idsync.db.before-restore").exists(), "nothing was swapped");
}

/// An empty SQLite database: SQLite reads a zero-length file as one, with
/// user_version 0, so it passes the integrity check and has no schema.
fn empty_database(path: &Path) {
    std::fs::write(path, b"").expect("write");
}
