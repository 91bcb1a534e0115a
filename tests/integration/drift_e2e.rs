//! Access drift and the identity safeguard end to end (issue 18): the
//! operator on a devcluster, an HR export and a GitHub-like export (login,
//! e-mail and the account's state, as GitHub Enterprise's suspended users
//! have one) as CSV Connections, and a profile reporting drift. Checked as
//! people meet it: the profile's status and conditions, `kubectl get
//! idprof`, `idsync drift list` in three formats, Events, across runs; then
//! the safeguard holding back a run that would offboard 40% of the company,
//! a dry run that trips nothing live, a requester's confirmation refused by
//! the admission policy, and an admin's applying it.

use std::time::Duration;

use idsync::model::{ProfileRef, RunOutcome};
use idsync::store::ProcessingHistory;
use idsync::store::drift::{DriftKind, DriftStore};
use idsync_api::resync_request::{Phase, Scope};
use idsync_api::{Connection, IdentityProfile, ResyncRequest};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::common::operator::{Started, start_operator};
use crate::common::{Harness, eventually};

/// 20 people; `terminated` are the ids with a past termination date.
fn hr_csv(terminated: &[u32]) -> String {
    let mut lines = vec!["employee_id,name,work_email,department,termination_date".to_string()];
    for n in 1..=20 {
        let department = if n == 1 || n == 4 { "eng" } else { "sales" };
        let end = if terminated.contains(&n) { "2020-06-01" } else { "" };
        lines.push(format!("E{n},Person {n},e{n}@acme.example,{department},{end}"));
    }
    lines.join("\n") + "\n"
}

/// E1 and E2 hold active accounts, E3 a suspended one; deploy-bot belongs
/// to nobody, ci-svc is a service account, ghost is suspended and nobody's.
fn github_csv(gh2_state: &str) -> String {
    format!(
        "id,login,email,state\n\
         gh1,ada,e1@acme.example,active\n\
         gh2,bob,e2@acme.example,{gh2_state}\n\
         gh3,cy,e3@acme.example,suspended\n\
         gh50,deploy-bot,,active\n\
         gh51,ci-svc,,active\n\
         gh52,ghost,,suspended\n"
    )
}

async fn export(h: &Harness, name: &str, csv: String) {
    let api: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"data.csv": csv}});
    api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&cm)).await.expect("configmap");
}

fn profile() -> serde_json::Value {
    json!({
        "apiVersion": "idsync.dev/v1alpha1", "kind": "IdentityProfile", "metadata": {"name": "employees"},
        "spec": {
            "authoritativeConnection": "hr",
            "correlation": [{"connection": "github",
                             "rules": [{"accountAttribute": "email", "identityAttribute": "email", "ignoreCase": true}]}],
            "attributes": {"email": "accounts.hr.email", "department": "accounts.hr.department"},
            "lifecycle": {
                "expression": "has(accounts.hr.termination_date) && accounts.hr.termination_date != '' && date(accounts.hr.termination_date) <= now ? 'terminated' : 'active'",
                "states": ["active", "terminated"],
            },
            "drift": {
                "gracePeriodSeconds": 3600,
                "serviceAccounts": [{"connection": "github", "expression": "account.username.endsWith('-svc')"}],
                "expectedAccounts": [{"connection": "github", "condition": "identity.attributes.department == 'eng'"}],
            },
        },
    })
}

async fn request(h: &Harness, request: idsync_api::fixtures::ResyncRequestBuilder) -> ResyncRequest {
    let request = request.build();
    let name = request.metadata.name.clone().expect("a name");
    h.create_request(request).await;
    h.finished_request(&name, Duration::from_secs(60)).await
}

async fn profile_until(h: &Harness, what: &str, check: impl Fn(&IdentityProfile) -> bool) -> IdentityProfile {
    let api = Api::<IdentityProfile>::namespaced(h.client.clone(), "default");
    let found = eventually(Duration::from_secs(30), || {
        let api = api.clone();
        let check = &check;
        async move { api.get("employees").await.ok().filter(|p| check(p)) }
    })
    .await;
    match found {
        Some(p) => p,
        None => {
            panic!("profile never got to: {what}; status: {:#?}", api.get("employees").await.ok().map(|p| p.status))
        }
    }
}

fn condition(p: &IdentityProfile, type_: &str) -> Option<(String, String, String)> {
    let c = idsync_api::conditions::find(&p.status.as_ref()?.conditions, type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn counts(p: &IdentityProfile) -> (Option<u64>, Option<u64>, Option<u64>) {
    let s = p.status.clone().unwrap_or_default();
    (s.offboarded_with_access, s.orphan_accounts, s.missing_expected_accounts)
}

async fn events(h: &Harness, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(h.client.clone(), "default");
    api.list(&ListParams::default().fields("regarding.name=employees"))
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

fn drift_list(store: &std::path::Path, format: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["drift", "list", "--profile", "employees", "--store"])
        .arg(store)
        .args(["-o", format])
        .output()
        .expect("run idsync drift list");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn offboarded_access_orphans_and_missing_accounts_are_reported_across_runs() {
    let Started { h, operator: _operator, clock, data } = start_operator().await;
    let db = data.path().join("idsync.db");
    export(&h, "hr-export", hr_csv(&[2, 3])).await;
    export(&h, "github-export", github_csv("active")).await;
    h.hr_csv_connection(&hr_csv(&[2, 3])).await;
    let github = Connection::test("github")
        .category(idsync_api::Category::VersionControl)
        .csv_config_map("github-export", "data.csv")
        .column("email", "email")
        .column("username", "login")
        .column("enabled", "state")
        .build();
    h.apply_json(serde_json::to_value(github).expect("json")).await;
    h.apply_json(profile()).await;
    let first = request(&h, ResyncRequest::test("first").all().full()).await;
    assert_eq!(first.status.and_then(|s| s.phase), Some(Phase::Succeeded));

    // E2 (terminated) holds the active bob; E3's cy is suspended; deploy-bot
    // is nobody's; ci-svc is marked; E4 (eng) has no GitHub account.
    let p = profile_until(&h, "drift counted", |p| counts(p) == (Some(1), Some(1), Some(1))).await;
    let (status, reason, message) = condition(&p, "AccessDrift").expect("AccessDrift");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "WithinGracePeriod"), "{message}");
    assert!(message.contains("idsync drift list --profile employees"), "{message}");
    assert_eq!(condition(&p, "RemovalsHeld").map(|c| c.0), Some("False".to_string()));

    let table = h.kubectl_ok(&["get", "idprof"]).await;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    let column = |name: &str| header.iter().position(|h| *h == name).and_then(|i| row.get(i).copied());
    assert_eq!(
        (column("OFFBOARDED"), column("ORPHANS"), column("DRIFT")),
        (Some("1"), Some("1"), Some("False")),
        "{table}"
    );

    // The two syncs commit one after the other, so the first runs may see
    // HR without GitHub: each run announces the cases it found new.
    let detected = events(&h, "DriftDetected").await;
    let notes: Vec<String> = detected.iter().filter_map(|e| e.note.clone()).collect();
    assert!(notes.iter().any(|n| n.contains("E2 (github account bob)")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("orphan accounts: github deploy-bot")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("E4 (no github account)")), "{notes:?}");
    assert!(
        notes.iter().all(|n| !n.contains("ci-svc") && !n.contains("ghost") && !n.contains("account cy")),
        "{notes:?}"
    );

    let listed = drift_list(&db, "table");
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 4, "{listed}");
    assert!(lines[0].starts_with("KIND") && lines[0].contains("AGE"), "{listed}");
    assert!(
        lines.iter().any(|l| l.contains("OffboardedWithAccess") && l.contains("E2") && l.contains("gh2")),
        "{listed}"
    );
    assert!(lines.iter().any(|l| l.contains("OrphanAccount") && l.contains("deploy-bot")), "{listed}");
    assert!(lines.iter().any(|l| l.contains("MissingExpectedAccount") && l.contains("E4")), "{listed}");
    let json: serde_json::Value = serde_json::from_str(&drift_list(&db, "json")).expect("json");
    assert_eq!(json["kind"], "DriftCaseList");
    assert_eq!(json["items"].as_array().map(Vec::len), Some(3), "{json}");
    let csv = drift_list(&db, "csv");
    assert_eq!(csv.lines().next(), Some("kind,identity,connection,accountId,label,since"), "{csv}");
    assert!(csv.contains("OffboardedWithAccess,E2,github,gh2,bob,"), "{csv}");

    // A second, unchanged run keeps every case's first sighting and
    // announces nothing again.
    let store = idsync::store::SqliteStore::open(&db).expect("store");
    let p_ref = ProfileRef::new("default", "employees");
    let before = store.drift_cases(&p_ref).expect("cases");
    let again = request(&h, ResyncRequest::test("again").profiles(["employees"]).scope(Scope::Identities)).await;
    assert_eq!(again.status.and_then(|s| s.phase), Some(Phase::Succeeded));
    assert_eq!(store.drift_cases(&p_ref).expect("cases"), before, "the second run keeps since");
    let again_detected = events(&h, "DriftDetected").await;
    assert_eq!(again_detected.len(), detected.len(), "{again_detected:?}");
    assert!(again_detected.iter().all(|e| e.series.is_none()), "announced once, not at every run: {again_detected:?}");

    // Past the grace period, AccessDrift turns True.
    clock.advance_to(Timestamp::now() + SignedDuration::from_hours(2));
    let p = profile_until(&h, "AccessDrift True", |p| condition(p, "AccessDrift").is_some_and(|c| c.0 == "True")).await;
    assert_eq!(condition(&p, "AccessDrift").map(|c| c.1), Some("DriftFound".to_string()));

    // GitHub suspends bob: the offboarding case closes, the others stay
    // with their age.
    export(&h, "github-export", github_csv("suspended")).await;
    request(&h, ResyncRequest::test("github-again").connections(["github"]).full()).await;
    profile_until(&h, "bob's case closed", |p| counts(p) == (Some(0), Some(1), Some(1))).await;
    let after = store.drift_cases(&p_ref).expect("cases");
    assert!(after.iter().all(|c| c.kind != DriftKind::OffboardedWithAccess), "{after:?}");
    let orphan = |cases: &[idsync::store::drift::DriftCase]| {
        cases.iter().find(|c| c.kind == DriftKind::OrphanAccount).map(|c| c.since)
    };
    assert_eq!(orphan(&after), orphan(&before), "the orphan keeps its first sighting");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_identity_safeguard_holds_a_40_percent_offboarding_until_an_admin_confirms() {
    let Started { h, operator: _operator, data, .. } = start_operator().await;
    let users = crate::access::Users::add(&h).await;
    let store = idsync::store::SqliteStore::open(&data.path().join("idsync.db")).expect("store");
    let p_ref = ProfileRef::new("default", "employees");
    export(&h, "github-export", github_csv("active")).await;
    h.hr_csv_connection(&hr_csv(&[])).await;
    let github = Connection::test("github")
        .csv_config_map("github-export", "data.csv")
        .column("email", "email")
        .column("username", "login")
        .column("enabled", "state")
        .build();
    h.apply_json(serde_json::to_value(github).expect("json")).await;
    h.apply_json(profile()).await;
    request(&h, ResyncRequest::test("first").all().full()).await;
    profile_until(&h, "20 identities", |p| p.status.as_ref().and_then(|s| s.identity_count) == Some(20)).await;

    // HR terminates 8 of 20 at once (an export gone wrong, perhaps).
    let eight = [5, 6, 7, 8, 9, 10, 11, 12];
    export(&h, "hr-export", hr_csv(&eight)).await;

    // A preview says it would be held, and holds nothing.
    let preview =
        request(&h, ResyncRequest::test("preview").connections(["hr"]).scope(Scope::AccountsAndIdentities).dry_run())
            .await;
    let status = preview.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    let said = format!("{:?}", status.profiles);
    assert!(said.contains("would be held back") && said.contains("offboard 8 of 20 identities (40%)"), "{said}");
    assert_eq!(store.drift_summary(&p_ref).expect("summary").hold, None, "a dry run holds nothing");

    // The sync commits the accounts; the run it calls for is held.
    request(&h, ResyncRequest::test("hr-sync").connections(["hr"]).full()).await;
    let p = profile_until(&h, "RemovalsHeld", |p| condition(p, "RemovalsHeld").is_some_and(|c| c.0 == "True")).await;
    let (_, reason, message) = condition(&p, "RemovalsHeld").expect("RemovalsHeld");
    assert_eq!(reason, "IdentitySafeguardTripped");
    assert!(
        message.contains("offboard 8 of 20 identities (40%)") && message.contains("confirmRemovals: true"),
        "{message}"
    );
    assert_eq!(p.status.as_ref().and_then(|s| s.lifecycle_state_counts.get("active").copied()), Some(20));
    let held = events(&h, "IdentitySafeguardTripped").await;
    assert_eq!(held.len(), 1, "{held:?}");
    let runs = store.processing_runs(&p_ref, 100).expect("runs");
    assert!(runs[0].outcome == RunOutcome::Failed && runs[0].message.contains("identity safeguard"), "{:?}", runs[0]);
    // Held, it waits: no run again at every reconcile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(store.processing_runs(&p_ref, 100).expect("runs").len(), runs.len(), "the held run was tried again");

    // A requester may not confirm; the API server says why.
    let confirm = |user: &str, name: &str| {
        json!({"apiVersion": "idsync.dev/v1alpha1", "kind": "ResyncRequest", "metadata": {"name": name},
               "spec": {"target": {"profiles": ["employees"]}, "scope": "Identities", "confirmRemovals": true,
                        "requestedBy": user}})
    };
    let refused = users.create(&h, "bob", confirm("bob", "bob-confirms")).await;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("confirmRemovals") && said.contains("bob may not confirm"), "{said}");
    let plugin =
        users.kubectl(&h, "bob", &["idsync", "resync", "profile", "employees", "--confirm-removals"], None).await;
    assert!(!plugin.status.success());
    assert!(String::from_utf8_lossy(&plugin.stderr).contains("bob may not confirm"), "{plugin:?}");

    // An admin confirms, and the offboarding applies.
    let out = users.create(&h, "alice", confirm("alice", "alice-confirms")).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done = h.finished_request("alice-confirms", Duration::from_secs(60)).await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert!(format!("{:?}", status.profiles).contains("confirmed by confirmRemovals"), "{:?}", status.profiles);
    let p = profile_until(&h, "offboarded and released", |p| {
        p.status.as_ref().and_then(|s| s.lifecycle_state_counts.get("terminated").copied()) == Some(8)
            && condition(p, "RemovalsHeld").is_some_and(|c| c.0 == "False")
    })
    .await;
    assert_eq!(condition(&p, "RemovalsHeld").map(|c| c.1), Some("NoneHeld".to_string()));
    assert_eq!(store.drift_summary(&p_ref).expect("summary").hold, None);
}
