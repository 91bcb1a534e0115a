//! The store at the scale it is built for: one connection of 100,000
//! accounts, on SQLite and on PostgreSQL side by side. Prints how long a
//! first full sync (staged in pages, and written directly with the commit
//! as a sync into an empty connection does), the diff's index, a resync
//! that finds nothing new and a 1% delta sync take, and how big the SQLite
//! database gets. PostgreSQL is a throwaway local cluster
//! (`store::postgres::testing`, fsync off), so its figures are the store's
//! own work and the client round trips, not a disk's.
//!
//! `cargo bench --bench store`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use idsync::model::{Account, ContentHash};
use idsync::model::{ConnectionRef, Counts, NewRun, RunFinish, RunOutcome};
use idsync::model::{RunMode, Trigger};
use idsync::store::{AccountStore, CursorUpdate, EncodedAccount, PgStore, SqliteStore, StagedChange};
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

fn run(store: &dyn AccountStore, c: &ConnectionRef) -> i64 {
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

fn cursor(value: &str) -> CursorUpdate {
    CursorUpdate::Set { value: value.into(), settings_hash: "s".into() }
}

/// What [`measure`] timed on one backend.
#[derive(Default)]
struct Figures {
    staged_first: Duration,
    staged_first_commit: Duration,
    direct_first: Duration,
    index: Duration,
    unchanged: Duration,
    restaged_unchanged: Duration,
    delta: Duration,
    delta_commit: Duration,
    list: Duration,
}

/// The same syncs on any store: connection `hr` first synced in staged
/// pages, `hr-direct` written directly with its commit.
fn measure(store: &dyn AccountStore, accounts: &[Account]) -> Figures {
    let mut f = Figures::default();
    let c = ConnectionRef::new("bench", "hr");

    // First full sync: every account staged in pages, then one commit.
    let started = Instant::now();
    let id = run(store, &c);
    for page in accounts.chunks(PAGE) {
        let changes: Vec<StagedChange> = page.iter().cloned().map(StagedChange::Upsert).collect();
        store.stage(id, &changes).expect("stage");
    }
    let commit_start = Instant::now();
    let counts = Counts { created: ACCOUNTS as u64, ..Counts::default() };
    store.commit_run(id, cursor("c1"), &finish(counts)).expect("commit");
    f.staged_first_commit = commit_start.elapsed();
    f.staged_first = started.elapsed();

    // A first sync into an empty connection as the sync engine runs it:
    // the accounts encoded once and written with the commit.
    let direct = ConnectionRef::new("bench", "hr-direct");
    let encoded: Vec<EncodedAccount> = accounts.iter().map(|a| EncodedAccount::new(a, a.content_hash())).collect();
    let started = Instant::now();
    let id = run(store, &direct);
    store.commit_run_writing(id, &encoded, cursor("c1"), &finish(counts), &[]).expect("commit writing");
    f.direct_first = started.elapsed();
    assert_eq!(store.account_count(&direct).expect("count"), ACCOUNTS as u64);

    let started = Instant::now();
    let index = store.account_index(&c).expect("index");
    f.index = started.elapsed();
    assert_eq!(index.len(), ACCOUNTS);

    // A resync that finds nothing new: the diff's index, nothing staged,
    // the commit of the cursor and the run's end.
    let started = Instant::now();
    let index = store.account_index(&c).expect("index");
    let id = run(store, &c);
    let counts = Counts { unchanged: index.len() as u64, ..Counts::default() };
    store.commit_run(id, cursor("c1"), &finish(counts)).expect("commit");
    f.unchanged = started.elapsed();
    drop(index);

    // The worst of that: every account staged again unchanged, which the
    // commit must compare and skip.
    let started = Instant::now();
    let id = run(store, &c);
    for page in accounts.chunks(PAGE) {
        let changes: Vec<StagedChange> = page.iter().cloned().map(StagedChange::Upsert).collect();
        store.stage(id, &changes).expect("stage");
    }
    store.commit_run(id, cursor("c1"), &finish(counts)).expect("commit");
    f.restaged_unchanged = started.elapsed();

    // Second sync, 1% changed: 500 updated, 250 deleted, 250 created.
    let mut changes: Vec<StagedChange> = (0..500).map(|i| StagedChange::Upsert(account(i * 200, 2))).collect();
    changes.extend((0..250).map(|i| StagedChange::Delete(format!("E{:07}", i * 400 + 1))));
    changes.extend((0..250).map(|i| StagedChange::Upsert(account(ACCOUNTS + i, 1))));
    let started = Instant::now();
    let id = run(store, &c);
    store.stage(id, &changes).expect("stage");
    let commit_start = Instant::now();
    let counts = Counts { created: 250, updated: 500, deleted: 250, unchanged: ACCOUNTS as u64 - 750 };
    store.commit_run(id, cursor("c2"), &finish(counts)).expect("commit");
    f.delta_commit = commit_start.elapsed();
    f.delta = started.elapsed();
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
    f.list = started.elapsed();
    assert_eq!(listed, ACCOUNTS);
    f
}

/// One line of the table: which of the [`Figures`].
type Figure = fn(&Figures) -> Duration;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
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
    let accounts: Vec<Account> = (0..ACCOUNTS).map(|n| account(n, 1)).collect();
    let json_bytes: usize = accounts.iter().map(|a| a.canonical_json().len()).sum();
    println!("accounts: {ACCOUNTS}, average canonical JSON {} bytes", json_bytes / ACCOUNTS);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("idsync.db");
    let sqlite = SqliteStore::open(&path).expect("open store");
    let lite = measure(&sqlite, &accounts);
    drop(sqlite);
    let pg = PgStore::connect(&idsync::store::postgres::testing::fresh_database()).expect("connect PostgreSQL");
    let post = measure(&pg, &accounts);

    let rows: [(&str, Figure); 9] = [
        ("first full sync, staged in pages of 1000 + commit", |f| f.staged_first),
        ("  of which the commit", |f| f.staged_first_commit),
        ("first full sync written with the commit (empty connection)", |f| f.direct_first),
        ("account_index (100,000 ids)", |f| f.index),
        ("resync, nothing new: index + empty commit", |f| f.unchanged),
        ("resync, all 100,000 re-staged unchanged + commit", |f| f.restaged_unchanged),
        ("1% delta sync (1000 changes): stage + commit", |f| f.delta),
        ("  of which the commit", |f| f.delta_commit),
        ("list all accounts in pages of 1000", |f| f.list),
    ];
    println!("{:<62} {:>12} {:>12}", "", "SQLite", "PostgreSQL");
    for (what, figure) in rows {
        println!("{what:<62} {:>12} {:>12}", ms(figure(&lite)), ms(figure(&post)));
    }

    // Closing the last connection checkpointed the WAL into the main file.
    // Staging pages freed by a commit stay in the file for the next run's
    // staging; report them apart from what the accounts take.
    let db = rusqlite::Connection::open(&path).expect("reopen");
    let pragma = |name: &str| -> u64 { db.pragma_query_value(None, name, |r| r.get::<_, i64>(0)).expect(name) as u64 };
    let (pages, free, page_size) = (pragma("page_count"), pragma("freelist_count"), pragma("page_size"));
    println!(
        "SQLite file (two connections of 100,000): {:.1} MiB ({:.1} MiB in use, {:.1} MiB free pages left by staging)",
        mib(file_size(&path)),
        mib((pages - free) * page_size),
        mib(free * page_size),
    );
    let index = pg.account_index(&ConnectionRef::new("bench", "hr")).expect("index");
    println!(
        "account_index in memory: ~{:.1} MiB (~{} bytes per account)",
        mib(index_bytes(&index) as u64),
        index_bytes(&index) / index.len()
    );
}
