//! Identity processing at the scale it is designed for: 100,000 HR accounts
//! making 100,000 identities with ten attribute mappings, a lifecycle and a
//! manager, and 100,000 GitHub accounts correlated to them by e-mail.
//! Prints how long each kind of run takes, store read and commit included,
//! identities per second, the run's peak memory and the memory after it, and
//! how the run over 1% changed compares with runs over everyone; on the
//! embedded SQLite store, then on PostgreSQL (a throwaway local cluster,
//! `store::postgres::testing`, fsync off, so its figures are the store's and
//! the network's to localhost, not a disk's), and the two side by side.
//!
//! `cargo bench --bench identities`

mod common;

use std::time::{Duration, Instant};

use idsync::identity::expr::CompiledProfile;
use idsync::identity::process::{self, Selection};
use idsync::identity::{delta, memory};
use idsync::model::Account;
use idsync::model::ProfileRef;
use idsync::store::{AccountStore, IdentityStore, PgStore, SqliteStore};
use idsync_api::{IdentityProfile, IdentityProfileSpec};
use jiff::Timestamp;
use serde_json::json;

const PEOPLE: usize = 100_000;

fn spec() -> IdentityProfileSpec {
    IdentityProfile::test("employees")
        .authoritative("hr")
        .correlate_ignoring_case("github", "email", "email")
        .attribute("employeeId", "accounts.hr.id")
        .attribute("email", "accounts.hr.email.lowerAscii()")
        .attribute("displayName", "accounts.hr.first_name + ' ' + accounts.hr.last_name")
        .attribute("department", "accounts.hr.department")
        .attribute("title", "accounts.hr.title")
        .attribute("managerId", "accounts.hr.manager_id")
        .attribute("location", "accounts.hr.location")
        .attribute("costCenter", "accounts.hr.cost_center")
        .attribute("employeeType", "accounts.hr.employee_type == 'C' ? 'contractor' : 'employee'")
        .attribute("githubLogin", "has(accounts.github) ? accounts.github.username : null")
        .lifecycle(
            "date(accounts.hr.hire_date) > now ? 'prehire' : accounts.hr.termination_date != '' && date(accounts.hr.termination_date) <= now ? 'terminated' : 'active'",
            ["prehire", "active", "terminated"],
        )
        .manager("managerId", "employeeId")
        .spec()
}

fn person(n: usize, version: u32) -> Account {
    let mut a = Account::new(format!("E{n:07}"));
    a.email = Some(format!("Jane.Doe.{n}@example-corp.com"));
    a.display_name = Some(format!("Jane Doe {n}"));
    let attributes = [
        ("first_name", json!("Jane")),
        ("last_name", json!(format!("Doe {n}"))),
        ("department", json!(format!("Department {}", n % 40))),
        ("title", json!(format!("Engineer {version}"))),
        ("manager_id", json!(format!("E{:07}", n / 10))),
        ("location", json!(["Berlin", "Lisbon", "Austin", "Singapore"][n % 4])),
        ("cost_center", json!(format!("CC-{:04}", n % 250))),
        ("employee_type", json!(if n.is_multiple_of(9) { "C" } else { "E" })),
        ("hire_date", json!(format!("20{:02}-{:02}-{:02}", 10 + n % 15, 1 + n % 12, 1 + n % 28))),
        ("termination_date", json!(if n.is_multiple_of(50) { "2025-06-30" } else { "" })),
    ];
    a.attributes = attributes.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    a
}

fn member(n: usize) -> Account {
    let mut a = Account::new(format!("{}", 1_000_000 + n));
    a.username = Some(format!("jdoe-{n}"));
    a.email = Some(format!("jane.doe.{n}@example-corp.com"));
    a
}

/// One processing run as the controller does it (`controller::profile`):
/// for an event-based or scheduled run, what changed since the last run and
/// the identities whose time has come, else (or when the changes need a run
/// over everyone) the whole snapshot; compute; commit. Returns the run's
/// seconds.
fn process(store: &impl IdentityStore, compiled: &CompiledProfile, selection: Selection, label: &str) -> f64 {
    process_as(store, compiled, selection, true, label)
}

/// [`process`], or with `from_changes` false always over the whole snapshot
/// (a run after a spec change, and what every scheduled run did before
/// runs over everyone read only what changed).
fn process_as(
    store: &impl IdentityStore,
    compiled: &CompiledProfile,
    selection: Selection,
    from_changes: bool,
    label: &str,
) -> f64 {
    common::reset_peak_rss();
    let spec = spec();
    let p = ProfileRef::new("default", "employees");
    let connections = process::connections_of(&spec);
    let started = Instant::now();
    let now = Timestamp::now();
    let scope = match selection {
        _ if !from_changes => None,
        Selection::Changed => Some(delta::Scope::Changed),
        Selection::All => Some(delta::Scope::Everyone),
        _ => None,
    };
    let delta = match scope {
        Some(_) => store.processing_delta(&p, &connections, now).expect("delta"),
        None => None,
    };
    let over_delta = match (&delta, scope) {
        (Some(d), Some(scope)) => delta::run(&spec, compiled, d, scope, now).expect("within the bounds"),
        _ => None,
    };
    let (outcome, versions, read, how) = match (over_delta, delta) {
        (Some(outcome), Some(delta)) => (outcome, delta.versions, Duration::ZERO, "changes only"),
        _ => {
            let snapshot = store.processing_snapshot(&p, &connections).expect("snapshot");
            let read = started.elapsed();
            let outcome = process::run(&spec, compiled, &snapshot, &selection, now).expect("within the bounds");
            (outcome, snapshot.versions, read, "whole snapshot")
        }
    };
    let computed = started.elapsed() - read;
    let run = common::succeeded_run(&outcome, now);
    let mut commit = outcome.commit;
    commit.state.seen_versions = versions;
    store.commit_processing(&p, &commit, &run).expect("commit");
    drop(commit);
    let total = started.elapsed();
    let kept = common::rss_mib();
    memory::release_freed();
    println!(
        "{label:<32} {:>7.3} s  {:>9.0} identities/s  (read {:.2} s, compute {:.2} s, write {:.2} s; {how})  \
         processed {:>6}  changed {:>6}  identities {}  uncorrelated {}  peak RSS {:.0} MiB  RSS after {:.0} MiB \
         ({:.0} MiB before the allocator was trimmed)",
        total.as_secs_f64(),
        outcome.summary.identities as f64 / total.as_secs_f64(),
        read.as_secs_f64(),
        computed.as_secs_f64(),
        (total - read - computed).as_secs_f64(),
        outcome.processed,
        outcome.changed,
        outcome.summary.identities,
        outcome.summary.uncorrelated_accounts,
        common::peak_rss_mib(),
        common::rss_mib(),
        kept,
    );
    total.as_secs_f64()
}

/// The seconds of each kind of run, for the side-by-side table.
struct Figures {
    first: f64,
    unchanged: f64,
    scheduled: f64,
    everyone: f64,
    one_percent: f64,
    scheduled_one_percent: f64,
}

/// Syncs the accounts into `store` and runs every kind of processing run
/// over them, printing each.
fn scenario(store: &(impl AccountStore + IdentityStore), backend: &str) -> Figures {
    println!("--- {backend}");
    common::sync(store, "hr", (0..PEOPLE).map(|n| person(n, 1)));
    // Every 20th member matches nobody.
    common::sync(store, "github", (0..PEOPLE).map(|n| if n % 20 == 19 { member(n + PEOPLE) } else { member(n) }));
    println!(
        "{PEOPLE} HR accounts, {PEOPLE} GitHub accounts; 10 mappings, a lifecycle, a manager (peak RSS after the syncs \
         {:.0} MiB, RSS {:.0} MiB)",
        common::peak_rss_mib(),
        common::rss_mib()
    );
    let compiled = CompiledProfile::compile(&spec().attributes, spec().lifecycle.as_ref()).expect("compiles");

    let first = process(store, &compiled, Selection::All, "first processing (all created)");
    let unchanged = process(store, &compiled, Selection::Changed, "event-based, nothing changed");
    let scheduled = process(store, &compiled, Selection::All, "scheduled, nothing changed");
    let everyone = process_as(store, &compiled, Selection::All, false, "full run over everyone, unchanged");
    // 1% of people get a new title.
    common::sync(store, "hr", (0..PEOPLE).filter(|n| n.is_multiple_of(100)).map(|n| person(n, 2)));
    let one_percent = process(store, &compiled, Selection::Changed, "event-based, 1% changed");
    // Another 1%, found by a scheduled run.
    common::sync(store, "hr", (0..PEOPLE).filter(|n| n % 100 == 1).map(|n| person(n, 3)));
    let scheduled_one_percent = process(store, &compiled, Selection::All, "scheduled, 1% changed");
    println!(
        "1% changed took {:.1}% of the first processing and {:.1}% of a full run over everyone; a scheduled run \
         with nothing changed {:.2}% of that full run",
        100.0 * one_percent / first,
        100.0 * one_percent / everyone,
        100.0 * scheduled / everyone,
    );
    Figures { first, unchanged, scheduled, everyone, one_percent, scheduled_one_percent }
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(&dir.path().join("idsync.db")).expect("store");
    let lite = scenario(&sqlite, "SQLite");
    drop(sqlite);
    let pg = PgStore::connect(&idsync::store::postgres::testing::fresh_database()).expect("connect PostgreSQL");
    let post = scenario(&pg, "PostgreSQL");
    println!("--- seconds per run, {PEOPLE} identities: SQLite | PostgreSQL");
    for (label, a, b) in [
        ("first processing (all created)", lite.first, post.first),
        ("event-based, nothing changed", lite.unchanged, post.unchanged),
        ("scheduled, nothing changed", lite.scheduled, post.scheduled),
        ("full run over everyone, unchanged", lite.everyone, post.everyone),
        ("event-based, 1% changed", lite.one_percent, post.one_percent),
        ("scheduled, 1% changed", lite.scheduled_one_percent, post.scheduled_one_percent),
    ] {
        println!("{label:<34} {a:>8.3} | {b:>8.3}");
    }
}
