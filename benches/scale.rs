//! The store at a million identities: 20 connections of 50,000 people each
//! (1,000,000 accounts), one IdentityProfile per connection (1,000,000
//! identities), on the embedded SQLite store and on PostgreSQL (a throwaway
//! local cluster, `scripts/postgres.sh`), side by side.
//!
//! Per backend it prints:
//! - full sync throughput: every connection's first full sync, staged in
//!   pages of 1,000 and committed, four syncs at a time (the operator's
//!   default `--max-concurrent-syncs`), in accounts per second;
//! - an unchanged resync of all 20 (the diff's index read, nothing staged);
//! - identity processing throughput: every profile's first processing, two
//!   at a time (this machine's cores), in identities per second;
//! - an event-based processing of all 20 after 1% of people changed.
//!
//! The sources are left out on purpose (they are the same for both stores:
//! `--bench sync` and `--bench ldap` measure them): this is what the store
//! adds. How fast a dead replica's work is taken over is measured by the
//! end-to-end test `replicas_process::*`, which prints it.
//!
//! `cargo bench --bench scale` (IDSYNC_SCALE_PEOPLE=N per connection to try
//! another size).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use idsync::identity::expr::CompiledProfile;
use idsync::identity::process::{self, Selection};
use idsync::identity::{delta, memory};
use idsync::model::{Account, ConnectionRef, ProfileRef};
use idsync::store::Store;
use idsync_api::{IdentityProfile, IdentityProfileSpec};
use jiff::Timestamp;
use serde_json::json;

const CONNECTIONS: usize = 20;
const SYNC_WORKERS: usize = 4;
const PROCESSING_WORKERS: usize = 2;

fn people() -> usize {
    std::env::var("IDSYNC_SCALE_PEOPLE").ok().and_then(|n| n.parse().ok()).unwrap_or(50_000)
}

fn connection(c: usize) -> String {
    format!("hr-{c:02}")
}

fn spec(c: usize) -> IdentityProfileSpec {
    IdentityProfile::test(&format!("people-{c:02}"))
        .authoritative(&connection(c))
        .attribute("employeeId", &format!("accounts['{}'].id", connection(c)))
        .attribute("email", &format!("accounts['{}'].email.lowerAscii()", connection(c)))
        .attribute("department", &format!("accounts['{}'].department", connection(c)))
        .attribute("title", &format!("accounts['{}'].title", connection(c)))
        .attribute("managerId", &format!("accounts['{}'].manager_id", connection(c)))
        .lifecycle(
            &format!("accounts['{}'].termination_date != '' ? 'terminated' : 'active'", connection(c)),
            ["active", "terminated"],
        )
        .spec()
}

fn person(c: usize, n: usize, version: u32) -> Account {
    let mut a = Account::new(format!("E{c:02}{n:07}"));
    a.email = Some(format!("Jane.Doe.{c}.{n}@example-corp.com"));
    a.display_name = Some(format!("Jane Doe {n}"));
    let attributes = [
        ("department", json!(format!("Department {}", n % 40))),
        ("title", json!(format!("Engineer {version}"))),
        ("manager_id", json!(format!("E{c:02}{:07}", n / 10))),
        ("location", json!(["Berlin", "Lisbon", "Austin", "Singapore"][n % 4])),
        ("termination_date", json!(if n.is_multiple_of(50) { "2025-06-30" } else { "" })),
    ];
    a.attributes = attributes.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    a
}

/// One sync of `c` staging `accounts` in pages of 1,000, committed.
fn sync(store: &dyn Store, c: usize, accounts: impl Iterator<Item = Account>) {
    common::sync(store, &connection(c), accounts);
}

/// Runs `work(c)` for every connection, `workers` at a time; returns seconds.
fn over_all(workers: usize, work: impl Fn(usize) + Sync) -> f64 {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= CONNECTIONS {
                        break;
                    }
                    work(c);
                }
            });
        }
    });
    started.elapsed().as_secs_f64()
}

/// One processing run of profile `c` as the controller does it: over what
/// changed when the store can tell, else the whole snapshot; committed.
fn process_profile(store: &dyn Store, c: usize, compiled: &CompiledProfile, selection: Selection) -> usize {
    let spec = spec(c);
    let p = ProfileRef::new("default", format!("people-{c:02}"));
    let connections = process::connections_of(&spec);
    let now = Timestamp::now();
    let changes = match selection {
        Selection::Changed => store.processing_delta(&p, &connections, now).expect("delta"),
        _ => None,
    };
    let over_changes = match &changes {
        Some(d) => delta::run(&spec, compiled, d, delta::Scope::Changed, now).expect("within the bounds"),
        None => None,
    };
    let (outcome, versions) = match (over_changes, changes) {
        (Some(outcome), Some(d)) => (outcome, d.versions),
        _ => {
            let snapshot = store.processing_snapshot(&p, &connections).expect("snapshot");
            let outcome = process::run(&spec, compiled, &snapshot, &selection, now).expect("within the bounds");
            (outcome, snapshot.versions)
        }
    };
    let run = common::succeeded_run(&outcome, now);
    let mut commit = outcome.commit;
    commit.state.seen_versions = versions;
    store.commit_processing(&p, &commit, &run).expect("commit");
    outcome.summary.identities as usize
}

/// The figures of one backend.
struct Figures {
    full_sync: f64,
    unchanged: f64,
    first_processing: f64,
    one_percent: f64,
    identities: usize,
    peak_mib: f64,
    after_mib: f64,
}

fn measure(label: &str, store: Arc<dyn Store>) -> Figures {
    let people = people();
    let accounts = (CONNECTIONS * people) as f64;
    common::reset_peak_rss();
    let full_sync = over_all(SYNC_WORKERS, |c| sync(&*store, c, (0..people).map(|n| person(c, n, 1))));
    println!("{label:<10} full sync        {full_sync:>7.2} s  {:>9.0} accounts/s", accounts / full_sync);
    let unchanged = over_all(SYNC_WORKERS, |c| {
        let index = store.account_index(&ConnectionRef::new("default", connection(c))).expect("index");
        assert_eq!(index.len(), people);
    });
    println!(
        "{label:<10} unchanged resync {unchanged:>7.2} s  {:>9.0} accounts/s (the diff's index)",
        accounts / unchanged
    );
    let compiled: Vec<CompiledProfile> = (0..CONNECTIONS)
        .map(|c| {
            let spec = spec(c);
            CompiledProfile::compile(&spec.attributes, spec.lifecycle.as_ref()).expect("compiles")
        })
        .collect();
    let identities = AtomicUsize::new(0);
    let first_processing = over_all(PROCESSING_WORKERS, |c| {
        identities.fetch_add(process_profile(&*store, c, &compiled[c], Selection::All), Ordering::Relaxed);
    });
    let identities = identities.into_inner();
    println!(
        "{label:<10} first processing {first_processing:>7.2} s  {:>9.0} identities/s ({identities} identities)",
        identities as f64 / first_processing
    );
    // 1% of every connection's people get a new title.
    over_all(SYNC_WORKERS, |c| {
        sync(&*store, c, (0..people).filter(|n| n.is_multiple_of(100)).map(|n| person(c, n, 2)))
    });
    let one_percent = over_all(PROCESSING_WORKERS, |c| {
        process_profile(&*store, c, &compiled[c], Selection::Changed);
    });
    println!("{label:<10} 1% changed       {one_percent:>7.2} s  (event-based processing of all 20 profiles)");
    let peak_mib = common::peak_rss_mib();
    memory::release_freed();
    let after_mib = common::rss_mib();
    Figures { full_sync, unchanged, first_processing, one_percent, identities, peak_mib, after_mib }
}

fn main() {
    let people = people();
    println!(
        "{CONNECTIONS} connections x {people} people = {} accounts and identities; syncs {SYNC_WORKERS} at a time, \
         processing {PROCESSING_WORKERS} at a time",
        CONNECTIONS * people
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite: Arc<dyn Store> =
        Arc::new(idsync::store::SqliteStore::open(&dir.path().join("idsync.db")).expect("SQLite store"));
    let lite = measure("SQLite", sqlite);
    let postgres: Arc<dyn Store> = Arc::new(
        idsync::store::PgStore::connect(&idsync::store::postgres::testing::fresh_database()).expect("PostgreSQL store"),
    );
    let pg = measure("PostgreSQL", postgres);

    let accounts = (CONNECTIONS * people) as f64;
    println!();
    let title = format!("{} over {CONNECTIONS} connections", CONNECTIONS * people);
    println!("| {title:<34} | {:>14} | {:>14} |", "SQLite", "PostgreSQL");
    println!("|{:-<36}|{:->16}|{:->16}|", "", "", "");
    let row = |what: &str, a: String, b: String| println!("| {what:<34} | {a:>14} | {b:>14} |");
    row(
        "full sync, accounts/s",
        format!("{:.0}", accounts / lite.full_sync),
        format!("{:.0}", accounts / pg.full_sync),
    );
    row(
        "unchanged resync index, accounts/s",
        format!("{:.0}", accounts / lite.unchanged),
        format!("{:.0}", accounts / pg.unchanged),
    );
    row(
        "first processing, identities/s",
        format!("{:.0}", lite.identities as f64 / lite.first_processing),
        format!("{:.0}", pg.identities as f64 / pg.first_processing),
    );
    row("1% changed, processing s", format!("{:.2}", lite.one_percent), format!("{:.2}", pg.one_percent));
    row("peak RSS of idsync, MiB", format!("{:.0}", lite.peak_mib), format!("{:.0}", pg.peak_mib));
    row("RSS after, MiB", format!("{:.0}", lite.after_mib), format!("{:.0}", pg.after_mib));
}
