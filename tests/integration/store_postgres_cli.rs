//! The read commands against a PostgreSQL store, from the outside: the
//! built binary given a `postgres://` URL with the password in
//! IDSYNC_STORE_PASSWORD (as the chart sets it from a Secret), or in
//! IDSYNC_STORE as the operator's pod has it; and a wrong password, which is
//! a clear error that never shows the password.

use std::process::{Command, Output};

use idsync::model::{Account, ConnectionRef, Counts, NewRun, RunFinish, RunMode, RunOutcome, Trigger};
use idsync::store::postgres::testing;
use idsync::store::{AccountStore, CursorUpdate, PgStore, StagedChange};
use jiff::Timestamp;

fn idsync(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idsync"));
    command.args(args).env_remove("IDSYNC_STORE").env_remove("IDSYNC_STORE_PASSWORD").env_remove("IDSYNC_DATA_DIR");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("idsync runs")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_read_commands_read_a_postgres_store_by_url_and_never_show_its_password() {
    let cluster = testing::cluster();
    let db = cluster.create_database();
    let store = PgStore::connect(&cluster.options(&db)).expect("store");
    let c = ConnectionRef::new("default", "acme-hr");
    let run = store
        .start_run(&NewRun {
            connection: c.clone(),
            trigger: Trigger::Manual,
            request: None,
            requested_mode: RunMode::Full,
            holder: "test".into(),
            started_at: Timestamp::now(),
        })
        .expect("run");
    let accounts: Vec<StagedChange> = ["E1001", "E1002", "E1003"]
        .iter()
        .map(|id| {
            let mut a = Account::new(*id);
            a.email = Some(format!("{}@example.com", id.to_lowercase()));
            StagedChange::Upsert(a)
        })
        .collect();
    store.stage(run, &accounts).expect("stage");
    let finish = RunFinish {
        outcome: RunOutcome::Succeeded,
        mode: Some(RunMode::Full),
        counts: Counts { created: 3, ..Counts::default() },
        message: String::new(),
        finished_at: Timestamp::now(),
    };
    store.commit_run(run, CursorUpdate::Keep, &finish).expect("commit");

    let url = cluster.url(&db);
    let out = idsync(
        &["accounts", "list", "--connection", "acme-hr", "--store", &url, "-o", "csv"],
        &[("IDSYNC_STORE_PASSWORD", testing::PASSWORD)],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let ids: Vec<&str> = stdout.lines().skip(1).filter_map(|l| l.split(',').next()).collect();
    assert_eq!(ids, ["E1001", "E1002", "E1003"], "{stdout}");

    // In the operator's pod: no --store, IDSYNC_STORE and the password.
    let out = idsync(
        &["runs", "list", "--connection", "acme-hr", "-o", "json"],
        &[("IDSYNC_STORE", &url), ("IDSYNC_STORE_PASSWORD", testing::PASSWORD)],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("\"Succeeded\""), "{stdout}");

    // A wrong password, given in the URL: refused by the server, said
    // plainly, and neither password appears anywhere.
    let with_password = url.replacen("idsync@", "idsync:not-the-password@", 1);
    let out = idsync(&["accounts", "list", "--connection", "acme-hr", "--store", &with_password], &[]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("password authentication failed"), "{stderr}");
    assert!(stderr.contains(&format!("cannot open the store {url}")), "names the store without its password: {stderr}");
    for shown in [&stdout, &stderr] {
        assert!(!shown.contains("not-the-password") && !shown.contains(testing::PASSWORD), "{shown}");
    }
}

#[test]
fn store_backup_refuses_a_postgres_store_and_says_what_to_use() {
    let out = idsync(
        &["store", "backup", "--to", "/tmp/never-written.db"],
        &[("IDSYNC_STORE", "postgres://idsync:s3cret@db.example:5432/ids")],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("is PostgreSQL") && stderr.contains("pg_dump"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(!std::path::Path::new("/tmp/never-written.db").exists());
}

/// `idsync run --store`: a wrong password is refused at once (waiting will
/// not fix it) with the server's reason and without the password, and a
/// path where a URL belongs says where the SQLite store goes instead.
#[test]
fn idsync_run_refuses_a_wrong_password_at_once_and_a_file_for_store() {
    let cluster = testing::cluster();
    let db = cluster.create_database();
    let url = cluster.url(&db);
    let started = std::time::Instant::now();
    let out = idsync(
        &["run", "--store", &url, "--http-addr", "127.0.0.1:0"],
        &[("IDSYNC_STORE_PASSWORD", "not-the-password")],
    );
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("password authentication failed"), "{stderr}");
    assert!(stderr.contains(&format!("cannot open the store {url}")), "{stderr}");
    assert!(!stderr.contains("not-the-password") && !stdout.contains("not-the-password"), "{stderr}");
    // Not the 60 s a database that is still starting is given.
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());

    let out = idsync(&["run", "--store", "/var/lib/idsync/idsync.db"], &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("--store takes a postgres:// URL") && stderr.contains("--data-dir"), "{stderr}");
}
