//! The store at the scale it is built for: one connection of 100,000
//! accounts. Prints how long a first full sync, the diff's index and a 1%
//! delta sync take, and how big the database gets.
//!
//! `cargo bench --bench store`

use std::collections::HashMap;
use std::time::Instant;

use idsync::model::{Account, ContentHash};
use idsync::model::{ConnectionRef, Counts, NewRun, RunFinish, RunOutcome};
use idsync::model::{RunMode, Trigger};
use idsync::store::{AccountStore, CursorUpdate, SqliteStore, StagedChange};
use serde_json::json;

const ACCOUNTS: usize = 100_000;
const PAGE: usize = 1_000;

fn account(n: usize, version: u32) -> Account {
    let mut a = Account::new(format!("E{n:07}"));
    a.username = Some(format!("jdoe{n}"));
    a.email = Some(format!("jane.doe.{n}@example-corp.com"));
    a.display_name = Some(format!("Jane Doe {n}"));
    a.enabled = !n.is_multiple_of(17);
    a.groups = vec![format!("dept-{}", n % 40), if n.is_multiple_of(5) { "managers".into() } else { "staff".into() }];
    let attrs = [
        ("department", json!(format!("Department {}", n % 40))),
        ("title", json!(format!("Senior Engineer {}", version))),
        ("manager", json!(format!("E{:07}", n / 10))),
        ("location", json!(["Berlin", "Lisbon", "Austin", "Singapore"][n % 4])),
        ("costCenter", json!(format!("CC-{:04}", n % 250))),
        ("employeeType", json!(if n.is_multiple_of(9) { "Contractor" } else { "Employee" })),
        ("startDate", json!(format!("20{:02}-{:02}-{:02}", 10 + n % 15, 1 + n % 12, 1 + n % 28))),
        ("phone", json!(format!("+49 30 {:07}", n))),
    ];
    a.attributes = attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    a.normalize();
    a
}

fn run(store: &SqliteStore, c: &ConnectionRef) -> i64 {
    let new = NewRun {
        connection: c.clone(),
        trigger: Trigger::Scheduled,
        request: None,
        requested_mode: RunMode::Full,
        holder: "bench".into(),
        started_at: jiff::Timestamp::now(),
    };
    store.start_run(&new).expect("start run")
}

fn finish(counts: Counts) -> RunFinish {
    RunFinish {
        outcome: RunOutcome::Succeeded,
        mode: Some(RunMode::Full),
        counts,
        message: String::new(),
        finished_at: jiff::Timestamp::now(),
    }
}

/// Heap and table bytes of the index: hashbrown keeps one control byte per
/// bucket next to each (key, value) slot; ids are rounded up to the
/// allocator's 16-byte size classes.
fn index_bytes(index: &HashMap<String, ContentHash>) -> usize {
    let slot = size_of::<(String, ContentHash)>() + 1;
    let buckets = (index.capacity() * 8 / 7).next_power_of_two();
    buckets * slot + index.keys().map(|k| k.capacity().div_ceil(16) * 16).sum::<usize>()
}

fn file_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("idsync.db");
    let store = SqliteStore::open(&path).expect("open store");
    let c = ConnectionRef::new("bench", "hr");

    let accounts: Vec<Account> = (0..ACCOUNTS).map(|n| account(n, 1)).collect();
    let json_bytes: usize = accounts.iter().map(|a| a.canonical_json().len()).sum();
    println!("accounts: {ACCOUNTS}, average canonical JSON {} bytes", json_bytes / ACCOUNTS);

    // First full sync: every account staged in pages, then one commit.
    let started = Instant::now();
    let id = run(&store, &c);
    for page in accounts.chunks(PAGE) {
        let changes: Vec<StagedChange> = page.iter().cloned().map(StagedChange::Upsert).collect();
        store.stage(id, &changes).expect("stage");
    }
    let staged = started.elapsed();
    let commit_start = Instant::now();
    let counts = Counts { created: ACCOUNTS as u64, ..Counts::default() };
    store
        .commit_run(id, CursorUpdate::Set { value: "c1".into(), settings_hash: "s".into() }, &finish(counts))
        .expect("commit");
    let committed = commit_start.elapsed();
    println!(
        "first full sync: {:.2} s total (staging {} pages of {PAGE}: {:.2} s, {:.1} ms per page; commit: {:.2} s)",
        started.elapsed().as_secs_f64(),
        ACCOUNTS / PAGE,
        staged.as_secs_f64(),
        staged.as_secs_f64() * 1000.0 / (ACCOUNTS / PAGE) as f64,
        committed.as_secs_f64()
    );
    println!(
        "after first sync: db {:.1} MiB, wal {:.1} MiB",
        mib(file_size(&path)),
        mib(file_size(&path.with_extension("db-wal")))
    );

    let started = Instant::now();
    let index = store.account_index(&c).expect("index");
    let took = started.elapsed();
    assert_eq!(index.len(), ACCOUNTS);
    println!(
        "account_index: {:.1} ms for {} ids, ~{:.1} MiB in memory (~{} bytes per account)",
        took.as_secs_f64() * 1000.0,
        index.len(),
        mib(index_bytes(&index) as u64),
        index_bytes(&index) / index.len()
    );
    drop(index);

    // Second sync, 1% changed: 500 updated, 250 deleted, 250 created.
    let mut changes: Vec<StagedChange> = (0..500).map(|i| StagedChange::Upsert(account(i * 200, 2))).collect();
    changes.extend((0..250).map(|i| StagedChange::Delete(format!("E{:07}", i * 400 + 1))));
    changes.extend((0..250).map(|i| StagedChange::Upsert(account(ACCOUNTS + i, 1))));
    let started = Instant::now();
    let id = run(&store, &c);
    store.stage(id, &changes).expect("stage");
    let staged = started.elapsed();
    let commit_start = Instant::now();
    let counts = Counts { created: 250, updated: 500, deleted: 250, unchanged: ACCOUNTS as u64 - 750 };
    store
        .commit_run(id, CursorUpdate::Set { value: "c2".into(), settings_hash: "s".into() }, &finish(counts))
        .expect("commit");
    let committed = commit_start.elapsed();
    println!(
        "1% delta sync ({} changes): {:.1} ms total (staging {:.1} ms, commit {:.1} ms)",
        changes.len(),
        started.elapsed().as_secs_f64() * 1000.0,
        staged.as_secs_f64() * 1000.0,
        committed.as_secs_f64() * 1000.0
    );
    assert_eq!(store.account_count(&c).expect("count"), ACCOUNTS as u64);

    let started = Instant::now();
    let mut after: Option<String> = None;
    let mut listed = 0;
    loop {
        let page = store.list_accounts(&c, after.as_deref(), PAGE).expect("list");
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        listed += page.len();
    }
    assert_eq!(listed, ACCOUNTS);
    println!("list all accounts in pages of {PAGE}: {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);

    drop(store);
    // Closing the last connection checkpoints the WAL into the main file.
    // Staging pages freed by a commit stay in the file for the next run's
    // staging; report them apart from what the accounts take.
    let db = rusqlite::Connection::open(&path).expect("reopen");
    let pragma = |name: &str| -> u64 { db.pragma_query_value(None, name, |r| r.get::<_, i64>(0)).expect(name) as u64 };
    let (pages, free, page_size) = (pragma("page_count"), pragma("freelist_count"), pragma("page_size"));
    println!(
        "db file size: {:.1} MiB ({:.1} MiB in use, {} bytes per account; {:.1} MiB free pages left by staging), wal {:.1} MiB after close",
        mib(file_size(&path)),
        mib((pages - free) * page_size),
        (pages - free) * page_size / ACCOUNTS as u64,
        mib(free * page_size),
        mib(file_size(&path.with_extension("db-wal")))
    );
}
