//! Access drift at 100,000 identities: 100,000 HR accounts, 100,000 GitHub
//! accounts (every 20th correlated to nobody, a tenth of those disabled),
//! 2% of identities terminated with their GitHub accounts half enabled, a
//! service-account rule and an expected-accounts rule with a condition.
//! Prints how long computing drift after a run takes (store read, compute,
//! store write), the first time (every case new) and again (unchanged:
//! every case keeps its since), memory after it, and the identity
//! safeguard's count over a run offboarding 40% of identities.
//!
//! `cargo bench --bench drift`

mod common;

use std::time::Instant;

use idsync::identity::{drift, memory, safeguard};
use idsync::model::{Account, Identity, LinkRecord, LinkState, ProcessingRunRecord, ProfileRef, RunOutcome, Trigger};
use idsync::store::drift::DriftStore;
use idsync::store::{IdentityStore, ProcessingCommit, SqliteStore};
use idsync_api::IdentityProfile;
use idsync_api::identity_profile::{ExpectedAccountRule, ServiceAccountRule};
use jiff::Timestamp;

const PEOPLE: usize = 100_000;

fn terminated(n: usize) -> bool {
    n.is_multiple_of(50)
}

/// Every 20th member belongs to nobody.
fn unowned(n: usize) -> bool {
    n % 20 == 19
}

fn member(n: usize) -> Account {
    let mut a = Account::new(format!("{}", 1_000_000 + n));
    a.username = Some(if n % 200 == 19 { format!("build-{n}-bot") } else { format!("jdoe-{n}") });
    a.email = Some(format!("jane.doe.{n}@example-corp.com"));
    // Half the leavers' accounts are disabled already; a tenth of the
    // unowned ones too.
    a.enabled = !((terminated(n) && n.is_multiple_of(100)) || (unowned(n) && n % 200 == 39));
    a
}

fn identity(n: usize, state: &str, at: Timestamp) -> Identity {
    let mut i = Identity::new(format!("E{n:07}"), "hr", at)
        .with_state(state)
        .with_attribute("department", format!("Department {}", n % 40));
    if !unowned(n) {
        i = i.with_account("github", format!("{}", 1_000_000 + n));
    }
    i
}

fn commit(store: &SqliteStore, p: &ProfileRef, commit: &ProcessingCommit) {
    let now = Timestamp::now();
    let run = ProcessingRunRecord {
        id: 0,
        trigger: Trigger::Manual,
        request: None,
        started_at: now,
        finished_at: now,
        outcome: RunOutcome::Succeeded,
        processed: PEOPLE as u64,
        changed: PEOPLE as u64,
        errors: 0,
        message: String::new(),
    };
    store.commit_processing(p, commit, &run).expect("commit");
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("idsync.db")).expect("store");
    let p = ProfileRef::new("default", "employees");
    let at = Timestamp::now();
    common::sync(&store, "hr", (0..PEOPLE).map(|n| Account::new(format!("E{n:07}"))));
    common::sync(&store, "github", (0..PEOPLE).map(member));
    let links = (0..PEOPLE)
        .map(|n| LinkRecord {
            connection: "github".into(),
            account_id: format!("{}", 1_000_000 + n),
            state: if unowned(n) { LinkState::Uncorrelated } else { LinkState::Correlated },
            identity: (!unowned(n)).then(|| format!("E{n:07}")),
            candidates: Vec::new(),
        })
        .collect();
    let people = ProcessingCommit {
        upserts: (0..PEOPLE).map(|n| identity(n, if terminated(n) { "terminated" } else { "active" }, at)).collect(),
        link_upserts: links,
        ..Default::default()
    };
    commit(&store, &p, &people);
    drop(people);
    memory::release_freed();

    let mut spec = IdentityProfile::test("employees").authoritative("hr").correlate("github", "email", "email").spec();
    spec.drift.service_accounts = vec![ServiceAccountRule {
        connection: "github".into(),
        expression: "account.username.endsWith('-bot')".into(),
    }];
    spec.drift.expected_accounts = vec![ExpectedAccountRule {
        connection: "github".into(),
        condition: Some("identity.attributes.department != 'Department 7'".into()),
    }];
    println!(
        "{PEOPLE} identities (2% terminated), {PEOPLE} GitHub accounts (5% owned by nobody); RSS {:.0} MiB",
        common::rss_mib()
    );

    for label in ["first (every case new)", "again (unchanged)"] {
        common::reset_peak_rss();
        let started = Instant::now();
        let refreshed = drift::refresh(&store, &p, &spec, Timestamp::now()).expect("drift");
        let elapsed = started.elapsed();
        let kept = common::rss_mib();
        memory::release_freed();
        let summary = store.drift_summary(&p).expect("summary");
        println!(
            "drift {label:<24} {:>7.3} s  cases {}  new {}  (offboarded with access {}, orphans {}, missing expected {})  \
             peak RSS {:.0} MiB  RSS after {:.0} MiB ({kept:.0} MiB before the allocator was trimmed)",
            elapsed.as_secs_f64(),
            refreshed.update.cases.len(),
            refreshed.update.new.len(),
            summary.offboarded_with_access,
            summary.orphan_accounts,
            summary.missing_expected_accounts,
            common::peak_rss_mib(),
            common::rss_mib(),
        );
    }

    // The identity safeguard's count over a run offboarding 40%.
    let forty = ProcessingCommit {
        upserts: (0..PEOPLE).filter(|n| n % 5 < 2).map(|n| identity(n, "terminated", at)).collect(),
        ..Default::default()
    };
    let started = Instant::now();
    let (removed, offboarded) = safeguard::count(&store, &p, &spec, &forty).expect("count");
    let total = store.identity_count(&p).expect("count");
    let tripped = safeguard::check(removed, offboarded, total, &spec, "employees");
    println!(
        "safeguard over a run offboarding 40%   {:>7.3} s  removed {removed}  offboarded {offboarded} of {total}  held: {}",
        started.elapsed().as_secs_f64(),
        tripped.is_some()
    );
}
