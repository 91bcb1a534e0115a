//! CEL that cannot hurt, end to end: expressions too deep, too expensive or
//! too hungry stall their profile with the reason instead of crashing or
//! holding the operator, a fixed spec makes it Ready again, and a run in
//! progress stops when its profile changes, is deleted, or the operator
//! shuts down.

use crate::common;

use std::time::Duration;

use common::operator::Started;
use common::{Harness, eventually};
use idsync::model::{ProfileRef, RunOutcome};
use idsync::store::{IdentityStore, ProcessingHistory, SqliteStore};
use idsync_api::fixtures::IdentityProfileBuilder;
use idsync_api::resync_request::Phase;
use idsync_api::{IdentityProfile, ResyncRequest};
use kube::api::{Api, DeleteParams};
use serde_json::json;

/// An expression that passes the compile-time estimate (its ranges' sizes
/// are not literals, so they count as 100 elements) but takes 810,000
/// steps, within the budget: seconds per identity in a debug build.
const SLOW: &str = "lists.range(size(accounts.hr.id) * 0 + 900).all(a, \
                    lists.range(size(accounts.hr.id) * 0 + 900).all(b, a >= 0))";

fn hr_csv(people: usize) -> String {
    let mut csv = "employee_id,name,work_email\n".to_string();
    for i in 1..=people {
        csv.push_str(&format!("E{i},Person {i},p{i}@acme.example\n"));
    }
    csv
}

fn employees() -> IdentityProfileBuilder {
    IdentityProfile::test("employees").authoritative("hr").attribute("email", "accounts.hr.email")
}

/// The nested `.all` of the issue: 372 characters that held a core for
/// minutes.
fn nested_all() -> String {
    let list = format!("[{}]", (1..=30).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
    format!("{list}.all(a, {list}.all(b, {list}.all(c, {list}.all(d, a + b + c + d > 0))))")
}

fn store(data: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&data.path().join("idsync.db")).expect("store")
}

fn condition(p: &IdentityProfile, type_: &str) -> Option<(String, String, String)> {
    let c = p.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn profile_until(h: &Harness, what: &str, check: impl Fn(&IdentityProfile) -> bool) -> IdentityProfile {
    let api = Api::<IdentityProfile>::namespaced(h.client.clone(), "default");
    let found = eventually(Duration::from_secs(60), || {
        let api = api.clone();
        let check = &check;
        async move { api.get("employees").await.ok().filter(|p| check(p)) }
    })
    .await;
    match found {
        Some(p) => p,
        None => panic!("profile never got to: {what}; status: {:?}", api.get("employees").await.map(|p| p.status)),
    }
}

fn stalled_with(p: &IdentityProfile, reason: &str) -> bool {
    condition(p, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == reason)
}

/// An HR export of `people` as a CSV Connection, synced.
async fn hr_connection(h: &Harness, people: usize) {
    h.hr_csv_connection(&hr_csv(people)).await;
    h.create_request(ResyncRequest::test("sync").all().full().build()).await;
    let request = h.finished_request("sync", Duration::from_secs(60)).await;
    assert_eq!(request.status.and_then(|s| s.phase), Some(Phase::Succeeded));
}

async fn apply(h: &Harness, profile: IdentityProfileBuilder) {
    h.apply_json(serde_json::to_value(profile.build()).expect("json")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expressions_past_the_limits_stall_the_profile_and_a_fixed_spec_makes_it_ready() {
    let Started { h, operator: _operator, data, .. } = common::operator::start_operator().await;
    hr_connection(&h, 3).await;
    let p = ProfileRef::new("default", "employees");

    // Nested comprehensions over literal lists: refused at compile time.
    apply(&h, employees().attribute("busy", &nested_all())).await;
    let profile = profile_until(&h, "stalled, too complex", |p| stalled_with(p, "ExpressionTooComplex")).await;
    let (_, _, message) = condition(&profile, "Stalled").expect("stalled");
    assert!(message.starts_with("spec.attributes.busy: "), "{message}");
    assert!(
        message.contains("nested comprehensions (all, exists, exists_one, map, filter): estimated cost"),
        "{message}"
    );
    assert_eq!(condition(&profile, "Ready").map(|c| c.0).as_deref(), Some("False"));

    // Nested 2,000 brackets deep (4,001 characters, within the schema's
    // maxLength): refused before the parser sees it; the operator, whose
    // parser overflowed its stack on such input, goes on.
    let deep = format!("{}1{}", "(".repeat(2000), ")".repeat(2000));
    apply(&h, employees().attribute("deep", &deep)).await;
    let profile = profile_until(&h, "stalled on the deep expression", |p| {
        stalled_with(p, "ExpressionTooComplex")
            && condition(p, "Stalled").is_some_and(|c| c.2.contains("nests brackets 2000 deep"))
    })
    .await;
    assert!(condition(&profile, "Stalled").is_some_and(|c| c.2.starts_with("spec.attributes.deep: ")));

    // A replace chain that would build 100 MB per identity: stopped by the
    // evaluation budget, nothing applied.
    let chain = format!("accounts.hr.email{}", ".replace('a', 'aaaaaaaaaa')".repeat(8));
    apply(&h, employees().attribute("big", &chain)).await;
    let profile = profile_until(&h, "stalled, budget exceeded", |p| stalled_with(p, "EvaluationBudgetExceeded")).await;
    let (_, _, message) = condition(&profile, "Stalled").expect("stalled");
    assert!(
        message.starts_with(
            "spec.attributes.big: `replace` would build a value of more than 1048576 bytes (on identity E"
        ),
        "{message}"
    );
    assert!(message.contains("nothing was applied"), "{message}");
    assert_eq!(condition(&profile, "Ready").map(|c| c.1).as_deref(), Some("EvaluationBudgetExceeded"));
    assert!(store(&data).list_identities(&p, None, None, 10).expect("list").is_empty(), "nothing applied");
    let runs = store(&data).processing_runs(&p, 10).expect("runs");
    assert_eq!(runs[0].outcome, RunOutcome::Failed);

    // Fixed: Ready, with its identities.
    apply(&h, employees().attribute("big", "accounts.hr.email.replace('a', 'aa')")).await;
    let profile = profile_until(&h, "ready", |p| {
        condition(p, "Ready").is_some_and(|c| c.0 == "True")
            && p.status.as_ref().and_then(|s| s.identity_count) == Some(3)
    })
    .await;
    assert_eq!(condition(&profile, "Stalled").map(|c| c.0).as_deref(), Some("False"));
    let identity = store(&data).get_identity(&p, "E1").expect("get").expect("E1");
    assert_eq!(identity.attributes["big"], json!("p1@aacme.exaample"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_in_progress_stops_for_a_spec_change_a_deletion_and_shutdown() {
    let Started { h, operator, data, .. } = common::operator::start_operator().await;
    hr_connection(&h, 30).await;
    let p = ProfileRef::new("default", "employees");
    let processing = |p: &IdentityProfile| condition(p, "Processing").is_some_and(|c| c.0 == "True");
    let cancelled_runs = |why: &str| {
        let runs = store(&data).processing_runs(&ProfileRef::new("default", "employees"), 20).expect("runs");
        runs.iter().filter(|r| r.outcome == RunOutcome::Failed && r.message.contains(why)).count()
    };

    // A spec change stops the slow run, and the new spec is processed.
    apply(&h, employees().attribute("slow", SLOW)).await;
    profile_until(&h, "processing the slow spec", processing).await;
    apply(&h, employees().attribute("fast", "accounts.hr.id")).await;
    profile_until(&h, "ready with the new spec", |p| {
        condition(p, "Ready").is_some_and(|c| c.0 == "True")
            && p.status.as_ref().and_then(|s| s.identity_count) == Some(30)
    })
    .await;
    assert_eq!(cancelled_runs("cancelled: the profile changed (generation 1 → 2); nothing was applied"), 1);
    let identity = store(&data).get_identity(&p, "E1").expect("get").expect("E1");
    assert!(!identity.attributes.contains_key("slow"), "the stopped run applied nothing");

    // Deleting the profile stops its run, and its finalizer completes.
    apply(&h, employees().attribute("slow", SLOW)).await;
    profile_until(&h, "processing the slow spec again", processing).await;
    let api = Api::<IdentityProfile>::namespaced(h.client.clone(), "default");
    api.delete("employees", &DeleteParams::default()).await.expect("delete");
    let gone = eventually(Duration::from_secs(60), || {
        let api = api.clone();
        async move { api.get_opt("employees").await.ok().filter(Option::is_none).map(|_| ()) }
    })
    .await;
    assert!(gone.is_some(), "the profile's deletion waited for its run");
    assert!(store(&data).list_identities(&p, None, None, 10).expect("list").is_empty(), "purged");

    // Shutdown stops a run too, and records why.
    apply(&h, employees().attribute("slow", SLOW)).await;
    profile_until(&h, "processing after re-creation", processing).await;
    operator.stop().await;
    assert_eq!(cancelled_runs("cancelled: the operator is shutting down; nothing was applied"), 1);
}

/// `idsync validate` refuses the 7,000-deep expression of the issue by the
/// schema's maxLength, naming the field.
#[test]
fn idsync_validate_refuses_an_expression_over_4096_characters() {
    let path = common::repo("tests/invalid/profile-expression-too-long.yaml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_idsync"))
        .arg("validate")
        .arg(&path)
        .output()
        .expect("run idsync validate");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "reported valid: {out}");
    assert!(out.contains("spec.attributes[deep]: Too long: may not be more than 4096 bytes"), "{out}");
}
