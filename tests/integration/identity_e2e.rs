//! Identity processing end to end: the operator on a devcluster, HR and
//! GitHub exports as CSV Connections, an IdentityProfile over them, and the
//! four ways processing happens (event-based, scheduled, manual, time-based).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::operator::{Operator, TestClock};
use common::{Harness, eventually};
use idsync::model::Identity;
use idsync::model::Trigger;
use idsync::model::{ProfileRef, RunOutcome};
use idsync::store::{IdentityStore, ProcessingHistory};
use idsync_api::fixtures::{IdentityProfileBuilder, ResyncRequestBuilder};
use idsync_api::resync_request::{Phase, Scope, TargetPhase};
use idsync_api::{Category, Connection, IdentityProfile, ResyncRequest};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

const HR_HEADER: &str = "employee_id,name,work_email,manager_id,title,hire_date,termination_date,review_at";

struct Person {
    id: &'static str,
    name: &'static str,
    email: &'static str,
    manager: &'static str,
    title: &'static str,
    termination: String,
    review_at: String,
}

fn person(id: &'static str, name: &'static str, email: &'static str, manager: &'static str) -> Person {
    Person { id, name, email, manager, title: "Engineer", termination: String::new(), review_at: String::new() }
}

fn people() -> Vec<Person> {
    vec![
        person("E1", "Ada Admin", "ada@acme.example", "E1"),
        person("E2", "Bob Builder", "bob@acme.example", "E1"),
        person("E3", "Cy Coder", "cy@acme.example", "E2"),
        person("E4", "Dee Data", "dee@acme.example", "E9"),
    ]
}

fn hr_csv(people: &[Person]) -> String {
    let mut lines = vec![HR_HEADER.to_string()];
    for p in people {
        lines.push(format!(
            "{},{},{},{},{},2020-01-01,{},{}",
            p.id, p.name, p.email, p.manager, p.title, p.termination, p.review_at
        ));
    }
    lines.join("\n") + "\n"
}

fn github_csv() -> String {
    // gh1 matches Ada ignoring case; gh9 matches nobody.
    "id,login,email\ngh1,ada,ADA@acme.example\ngh2,bob,bob@acme.example\ngh9,mallory,mallory@evil.example\n".into()
}

/// The profile `employees` without attributes: HR accounts make
/// identities, GitHub accounts attach by e-mail ignoring case, a lifecycle
/// from the termination date and a manager by employee id.
fn employees() -> IdentityProfileBuilder {
    IdentityProfile::test("employees")
        .authoritative("hr")
        .correlate_ignoring_case("github", "email", "email")
        .lifecycle(
            "accounts.hr.termination_date != '' && date(accounts.hr.termination_date) <= now ? 'terminated' : 'active'",
            ["active", "terminated"],
        )
        .manager("managerId", "employeeId")
}

/// [`employees`] with its usual attributes.
fn employees_with_attributes() -> IdentityProfileBuilder {
    employees()
        .attribute("email", "accounts.hr.email.lowerAscii()")
        .attribute("displayName", "accounts.hr.displayName")
        .attribute("employeeId", "accounts.hr.id")
        .attribute("managerId", "accounts.hr.manager_id")
        .attribute("title", "accounts.hr.title")
        .attribute("github", "has(accounts.github) ? accounts.github.username : null")
}

struct Env {
    h: Harness,
    _operator: Operator,
    clock: Arc<TestClock>,
    data: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let common::operator::Started { h, operator, clock, data } = common::operator::start_operator().await;
        Env { h, _operator: operator, clock, data }
    }

    fn store(&self) -> idsync::store::SqliteStore {
        idsync::store::SqliteStore::open(&self.data.path().join("idsync.db")).expect("store")
    }

    fn identities(&self, profile: &str) -> Vec<Identity> {
        self.store().list_identities(&ProfileRef::new("default", profile), None, None, 10_000).expect("identities")
    }

    fn identity(&self, profile: &str, id: &str) -> Identity {
        self.store().get_identity(&ProfileRef::new("default", profile), id).expect("get").expect("identity exists")
    }

    /// Server-side applies one resource, as `idsync dev --apply` does.
    async fn apply(&self, object: impl serde::Serialize) {
        self.h.apply_json(serde_json::to_value(object).expect("serializable")).await;
    }

    async fn exports(&self, people: &[Person]) {
        let api: Api<ConfigMap> = Api::namespaced(self.h.client.clone(), "default");
        for (name, csv) in [("hr-export", hr_csv(people)), ("github-export", github_csv())] {
            let cm =
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"data.csv": csv}});
            api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&cm)).await.expect("configmap");
        }
    }

    async fn connections(&self) {
        self.apply(
            Connection::test("hr")
                .csv_config_map("hr-export", "data.csv")
                .id_column("employee_id")
                .column("email", "work_email")
                .column("displayName", "name")
                .build(),
        )
        .await;
        self.apply(
            Connection::test("github")
                .category(Category::VersionControl)
                .csv_config_map("github-export", "data.csv")
                .column("email", "email")
                .column("username", "login")
                .build(),
        )
        .await;
    }

    async fn profile(&self, profile: IdentityProfileBuilder) {
        self.apply(profile.build()).await;
    }

    async fn request(&self, request: ResyncRequestBuilder) -> ResyncRequest {
        let request = request.build();
        let name = request.metadata.name.clone().expect("a name");
        self.h.create_request(request).await;
        self.h.finished_request(&name, Duration::from_secs(60)).await
    }

    async fn get_profile(&self) -> IdentityProfile {
        Api::<IdentityProfile>::namespaced(self.h.client.clone(), "default").get("employees").await.expect("profile")
    }

    /// Waits until the profile's status satisfies `check`.
    async fn profile_until(&self, what: &str, check: impl Fn(&IdentityProfile) -> bool) -> IdentityProfile {
        let api = Api::<IdentityProfile>::namespaced(self.h.client.clone(), "default");
        let found = eventually(Duration::from_secs(30), || {
            let api = api.clone();
            let check = &check;
            async move { api.get("employees").await.ok().filter(|p| check(p)) }
        })
        .await;
        match found {
            Some(p) => p,
            None => panic!("profile never got to: {what}; status: {:?}", self.get_profile().await.status),
        }
    }

    fn runs(&self) -> Vec<idsync::model::ProcessingRunRecord> {
        self.store().processing_runs(&ProfileRef::new("default", "employees"), 100).expect("runs")
    }

    async fn sync_all(&self, name: &str) {
        let r = self.request(ResyncRequest::test(name).all().full()).await;
        assert_eq!(r.status.and_then(|s| s.phase), Some(Phase::Succeeded));
    }
}

fn last_trigger(p: &IdentityProfile) -> Option<String> {
    p.status.as_ref().and_then(|s| s.last_processing.as_ref()).map(|l| l.trigger.clone())
}

fn condition(p: &IdentityProfile, type_: &str) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_over_two_connections_computes_identities_and_follows_changes() {
    let env = Env::start().await;
    env.exports(&people()).await;
    env.connections().await;
    env.profile(employees_with_attributes()).await;
    env.sync_all("first-sync").await;

    let profile = env
        .profile_until("4 identities", |p| {
            p.status.as_ref().and_then(|s| s.identity_count) == Some(4)
                && p.status.as_ref().and_then(|s| s.uncorrelated_accounts) == Some(1)
        })
        .await;
    let status = profile.status.clone().expect("status");
    assert_eq!(status.lifecycle_state_counts.get("active"), Some(&4));
    assert_eq!(status.unresolved_managers, Some(1), "E4's manager E9 does not exist");
    assert_eq!(condition(&profile, "Ready").map(|c| c.0), Some("True".into()));

    let ada = env.identity("employees", "E1");
    assert_eq!(ada.attributes["github"], json!("ada"), "correlated by e-mail ignoring case");
    assert_eq!(env.identity("employees", "E3").manager.as_deref(), Some("E2"));
    assert_eq!(env.identity("employees", "E4").manager, None);

    // Events on the profile, readable with kubectl.
    let events: Api<Event> = Api::namespaced(env.h.client.clone(), "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default().fields("regarding.name=employees"))
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.contains(&"ProcessingStarted".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"ProcessingSucceeded".to_string()), "{reasons:?}");
    let table = env.h.kubectl_ok(&["get", "identityprofiles"]).await;
    assert!(table.contains("IDENTITIES") && table.lines().nth(1).is_some_and(|l| l.contains(" 4 ")), "{table}");

    // Event-based: one person changes in HR; exactly that identity is
    // reprocessed, the others keep their modified time.
    let before: Vec<Identity> = env.identities("employees");
    let runs_before = env.runs().len();
    let mut changed = people();
    changed[2].title = "Staff Engineer";
    env.exports(&changed).await;
    env.sync_all("second-sync").await;
    let profile = env
        .profile_until("an event-based run after the second sync", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.last_processing.as_ref())
                .is_some_and(|l| l.trigger == "EventBased" && l.changed == 1)
        })
        .await;
    let last = profile.status.and_then(|s| s.last_processing).expect("last processing");
    assert_eq!((last.processed, last.changed, last.errors), (1, 1, 0));
    let after = env.identities("employees");
    for (b, a) in before.iter().zip(&after) {
        if a.id == "E3" {
            assert_eq!(a.attributes["title"], json!("Staff Engineer"));
            assert!(a.modified > b.modified);
        } else {
            assert_eq!(a.modified, b.modified, "{} was not changed", a.id);
        }
    }
    let runs = env.runs();
    assert!(runs.len() > runs_before);
    assert!(
        runs.iter().any(|r| r.trigger == Trigger::EventBased && r.processed == 1 && r.outcome == RunOutcome::Succeeded)
    );

    // Accounts and identities in one request: the sync, then the profiles
    // that read the synced connection, each with its own entry.
    let both =
        env.request(ResyncRequest::test("both").connections(["github"]).scope(Scope::AccountsAndIdentities)).await;
    let status = both.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.targets.len(), 1);
    assert_eq!(status.profiles.len(), 1);
    assert_eq!((status.profiles[0].profile.as_str(), status.profiles[0].phase), ("employees", TargetPhase::Succeeded));
    assert_eq!(status.profiles[0].processed, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_20_00_run_moves_an_identity_past_its_termination_date() {
    let env = Env::start().await;
    let mut staff = people();
    staff[1].termination = "2027-01-15".into();
    env.exports(&staff).await;
    env.connections().await;
    env.profile(employees_with_attributes()).await;
    env.sync_all("first-sync").await;
    env.profile_until("identities", |p| p.status.as_ref().and_then(|s| s.identity_count) == Some(4)).await;
    assert_eq!(env.identity("employees", "E2").lifecycle_state.as_deref(), Some("active"));

    // 2027-01-15 20:00 in Chicago is past midnight UTC of the 15th and the
    // schedule's evening slot.
    let evening: Timestamp = "2027-01-15T20:00:30-06:00".parse().expect("time");
    env.clock.advance_to(evening);
    let profile = env.profile_until("a scheduled run", |p| last_trigger(p).as_deref() == Some("Scheduled")).await;
    assert_eq!(env.identity("employees", "E2").lifecycle_state.as_deref(), Some("terminated"));
    let status = profile.status.expect("status");
    assert_eq!(status.lifecycle_state_counts.get("terminated"), Some(&1));
    let last = status.last_processing.expect("last");
    // Only E2 is evaluated: no account changed, and E2's termination date
    // is the only instant any identity's expressions compared `now` with.
    assert_eq!((last.processed, last.changed), (1, 1), "unchanged identities are not evaluated");
    // The next slot is the next morning at 08:00 Chicago.
    let next = status.next_processing_time.expect("next").0;
    assert_eq!(next, "2027-01-16T08:00:00-06:00".parse::<Timestamp>().expect("time"));
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_apply_policy_waits_previews_and_applies() {
    let env = Env::start().await;
    // Far-away schedule: nothing but requests processes.
    let now = Timestamp::now();
    let soon = (now + SignedDuration::from_hours(1)).to_string();
    let mut staff = people();
    for p in staff.iter_mut().take(3) {
        p.termination = soon.clone();
    }
    env.exports(&staff).await;
    env.connections().await;
    env.profile(employees_with_attributes().manual().schedule(["0 0 1 1 *"], "UTC")).await;
    env.sync_all("first-sync").await;
    // appliedGeneration says which spec is applied, not that a run has
    // processed with it: wait for the identities too.
    let people = staff.len() as u64;
    env.profile_until("applied and processed", |p| {
        p.status.as_ref().is_some_and(|s| s.applied_generation == Some(1) && s.identity_count == Some(people))
    })
    .await;
    let original: Vec<Identity> = env.identities("employees");
    assert_eq!(original.len(), staff.len());
    assert!(original.iter().all(|i| i.attributes["title"] == json!("Engineer")));

    // A spec change is pending, not applied.
    env.profile(
        employees_with_attributes()
            .manual()
            .schedule(["0 0 1 1 *"], "UTC")
            .attribute("title", "accounts.hr.title.upperAscii()"),
    )
    .await;
    let profile =
        env.profile_until("changes pending", |p| condition(p, "ChangesPending").is_some_and(|c| c.0 == "True")).await;
    assert_eq!(profile.metadata.generation, Some(2));
    assert_eq!(profile.status.as_ref().and_then(|s| s.applied_generation), Some(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.identities("employees"), original, "nothing applied yet");

    // Time passes three termination instants.
    env.clock.advance_to(now + SignedDuration::from_hours(2));

    // The dry run reports exactly what applying would do, and commits nothing.
    let preview = env.request(ResyncRequest::test("preview").profiles(["employees"]).dry_run()).await;
    let status = preview.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded));
    let entry = &status.profiles[0];
    assert_eq!(entry.phase, TargetPhase::Succeeded);
    assert_eq!(
        entry.preview,
        vec![
            "4 of 4 identities would change, 0 would be created, 0 removed".to_string(),
            "lifecycleState active → terminated: 3 (e.g. E1, E2, E3)".to_string(),
            "attribute title: 4 (e.g. E1, E2, E3)".to_string(),
            // Each identity, before → after.
            "E1: lifecycleState active → terminated, title Engineer → ENGINEER".to_string(),
            "E2: lifecycleState active → terminated, title Engineer → ENGINEER".to_string(),
            "E3: lifecycleState active → terminated, title Engineer → ENGINEER".to_string(),
            "E4: title Engineer → ENGINEER".to_string(),
        ]
    );
    assert_eq!(env.identities("employees"), original, "a dry run commits nothing");
    assert!(env.runs().iter().any(|r| r.outcome == RunOutcome::DryRun));

    // Naming two identities processes just those, with the applied mappings.
    let two = env.request(ResyncRequest::test("two").profiles(["employees"]).identities(["E1", "E2"])).await;
    let entry = &two.status.expect("status").profiles[0];
    assert_eq!((entry.phase, entry.processed, entry.changed), (TargetPhase::Succeeded, 2, 2));
    let now_stored = env.identities("employees");
    let state = |id: &str| now_stored.iter().find(|i| i.id == id).and_then(|i| i.lifecycle_state.clone());
    assert_eq!(state("E1").as_deref(), Some("terminated"));
    assert_eq!(state("E2").as_deref(), Some("terminated"));
    assert_eq!(state("E3").as_deref(), Some("active"), "not named");
    assert!(now_stored.iter().all(|i| i.attributes["title"] == json!("Engineer")), "pending mappings not applied");

    // Naming one that does not exist: the others are processed, and the
    // request is PartiallyFailed, naming it.
    let typo = env.request(ResyncRequest::test("typo").profiles(["employees"]).identities(["E3", "E404"])).await;
    let status = typo.status.expect("status");
    assert_eq!(status.phase, Some(Phase::PartiallyFailed), "{status:?}");
    let entry = &status.profiles[0];
    assert_eq!(entry.unknown_identities, ["E404"]);
    assert_eq!(entry.processed, 1);
    assert!(entry.message.contains("no such identities: E404"), "{}", entry.message);

    // Naming the profile alone does not apply its pending changes: that
    // takes applyPendingChanges (an admin's action). It processes with the
    // applied mappings, and says how to apply.
    let again = env.request(ResyncRequest::test("again").profiles(["employees"])).await;
    let entry = &again.status.expect("status").profiles[0];
    assert_eq!((entry.phase, entry.processed), (TargetPhase::Succeeded, 4));
    assert!(entry.message.contains("the pending changes apply with applyPendingChanges"), "{}", entry.message);
    assert!(env.identities("employees").iter().all(|i| i.attributes["title"] == json!("Engineer")), "not applied");
    let profile =
        env.profile_until("still pending", |p| condition(p, "ChangesPending").is_some_and(|c| c.0 == "True")).await;
    assert_eq!(profile.status.as_ref().and_then(|s| s.applied_generation), Some(1));

    // Applying.
    let apply = env
        .request(ResyncRequest::test("apply").profiles(["employees"]).apply_pending_changes().requested_by("admin"))
        .await;
    assert_eq!(apply.status.and_then(|s| s.phase), Some(Phase::Succeeded));
    let profile = env
        .profile_until("applied generation 2", |p| {
            p.status.as_ref().and_then(|s| s.applied_generation) == Some(2)
                && condition(p, "ChangesPending").is_some_and(|c| c.0 == "False")
        })
        .await;
    assert_eq!(profile.status.and_then(|s| s.lifecycle_state_counts.get("terminated").copied()), Some(3));
    assert!(env.identities("employees").iter().all(|i| i.attributes["title"] == json!("ENGINEER")));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_processing_attribute_schedules_an_identity_a_day_or_more_ahead() {
    let env = Env::start().await;
    // Whole seconds: the status's Time has no fractions.
    let now = Timestamp::from_second(Timestamp::now().as_second()).expect("now");
    let ahead = now + SignedDuration::from_hours(30);
    let mut staff = people();
    staff[0].review_at = ahead.to_string();
    staff[0].termination = (now + SignedDuration::from_hours(29)).to_string();
    staff[1].review_at = (now + SignedDuration::from_hours(10)).to_string();
    env.exports(&staff).await;
    env.connections().await;
    env.profile(
        employees()
            .schedule(["0 0 1 1 *"], "UTC")
            .attribute("email", "accounts.hr.email.lowerAscii()")
            .attribute("employeeId", "accounts.hr.id")
            .attribute("managerId", "accounts.hr.manager_id")
            .attribute("reviewAt", "accounts.hr.review_at != '' ? accounts.hr.review_at : null")
            .attribute("title", "accounts.hr.title")
            .next_processing_attribute("reviewAt"),
    )
    .await;
    env.sync_all("first-sync").await;
    let profile =
        env.profile_until("identities", |p| p.status.as_ref().and_then(|s| s.identity_count) == Some(4)).await;
    // Ada is scheduled at her instant; Bob's is within 24 hours: not scheduled.
    assert_eq!(env.identity("employees", "E1").next_processing, Some(ahead));
    assert_eq!(env.identity("employees", "E2").next_processing, None);
    assert_eq!(profile.status.and_then(|s| s.next_processing_time).map(|t| t.0), Some(ahead));

    // Not before its time.
    env.clock.advance_to(now + SignedDuration::from_hours(29) + SignedDuration::from_mins(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!env.runs().iter().any(|r| r.trigger == Trigger::TimeBased));
    assert_eq!(env.identity("employees", "E1").lifecycle_state.as_deref(), Some("active"));

    env.clock.advance_to(ahead + SignedDuration::from_secs(1));
    env.profile_until("a time-based run", |p| last_trigger(p).as_deref() == Some("TimeBased")).await;
    let run = env.runs().into_iter().find(|r| r.trigger == Trigger::TimeBased).expect("time-based run");
    assert_eq!((run.processed, run.changed), (1, 1));
    let ada = env.identity("employees", "E1");
    assert_eq!(ada.lifecycle_state.as_deref(), Some("terminated"));
    assert_eq!(ada.next_processing, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_expressions_stall_the_profile_or_mark_one_identity() {
    let env = Env::start().await;
    env.exports(&people()).await;
    env.connections().await;
    env.profile(
        employees()
            .attribute("email", "accounts.hr.email.lowerAscii(")
            .attribute("employeeId", "accounts.hr.id")
            .attribute("managerId", "accounts.hr.manager_id"),
    )
    .await;
    let profile = env.profile_until("stalled", |p| condition(p, "Stalled").is_some_and(|c| c.0 == "True")).await;
    let (_, reason, message) = condition(&profile, "Stalled").expect("stalled");
    assert_eq!(reason, "InvalidExpression");
    assert!(
        message.contains("spec.attributes.email") && message.contains("accounts.hr.email.lowerAscii("),
        "{message}"
    );
    assert_eq!(condition(&profile, "Ready").map(|c| c.0), Some("False".into()));

    // Fixed, but one person's manager id is not a number.
    let mut staff = people();
    staff[3].manager = "n/a";
    env.exports(&staff).await;
    env.profile(
        employees()
            .attribute("email", "accounts.hr.email.lowerAscii()")
            .attribute("employeeId", "accounts.hr.id")
            .attribute("managerId", "accounts.hr.manager_id")
            .attribute("managerNumber", "int(accounts.hr.manager_id.substring(1))"),
    )
    .await;
    env.sync_all("sync").await;
    let profile = env
        .profile_until("processed with one error", |p| {
            condition(p, "Stalled").is_some_and(|c| c.0 == "False")
                && p.status.as_ref().and_then(|s| s.identity_count) == Some(4)
        })
        .await;
    let last = profile.status.clone().and_then(|s| s.last_processing).expect("last");
    assert_eq!(last.errors, 1, "{last:?}");
    let dee = env.identity("employees", "E4");
    assert!(dee.errors.contains_key("managerNumber"), "{:?}", dee.errors);
    assert_eq!(env.identity("employees", "E3").attributes["managerNumber"], json!(2));
    assert_eq!(condition(&profile, "Ready").map(|c| c.0).as_deref(), Some("True"), "one failing identity");

    // An expression that fails on everyone: the profile is not Ready, and
    // its Event is a Warning.
    env.profile(
        employees()
            .attribute("email", "accounts.hr.email.lowerAscii()")
            .attribute("employeeId", "accounts.hr.id")
            .attribute("managerId", "accounts.hr.manager_id")
            .attribute("broken", "int(accounts.hr.email)"),
    )
    .await;
    let broken = env
        .profile_until("every identity failed", |p| {
            condition(p, "Ready").is_some_and(|c| c.0 == "False" && c.1 == "AllIdentitiesFailed")
        })
        .await;
    let last = broken.status.and_then(|s| s.last_processing).expect("last");
    assert_eq!((last.processed, last.errors), (4, 4), "{last:?}");
    let events: Vec<Event> = Api::namespaced(env.h.client.clone(), "default")
        .list(&ListParams::default().fields("regarding.name=employees"))
        .await
        .expect("events")
        .items;
    let warned = events.iter().any(|e| {
        e.type_.as_deref() == Some("Warning")
            && e.reason.as_deref() == Some("ProcessingFailed")
            && e.note
                .as_deref()
                .is_some_and(|n| n.contains("processing failed on every identity") && n.contains("errors 4"))
    });
    assert!(warned, "{:#?}", events.iter().map(|e| (&e.type_, &e.reason, &e.note)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ambiguous_account_is_reported_and_deleting_the_profile_removes_its_identities() {
    let env = Env::start().await;
    // Dee shares Bob's e-mail: Bob's GitHub account matches both.
    let mut staff = people();
    staff[3].email = "bob@acme.example";
    env.exports(&staff).await;
    env.connections().await;
    env.profile(employees_with_attributes()).await;
    env.sync_all("sync").await;
    let profile =
        env.profile_until("identities", |p| p.status.as_ref().and_then(|s| s.identity_count) == Some(4)).await;
    let status = profile.status.expect("status");
    assert_eq!(status.ambiguous_accounts, Some(1));
    let message = status.last_processing.expect("last").message;
    assert!(
        message.contains("1 account matches several identities and is attached to none")
            && message.contains("identities uncorrelated"),
        "{message}"
    );
    assert!(env.identity("employees", "E2").accounts.iter().all(|a| a.connection == "hr"), "attached to nobody");
    let api = Api::<IdentityProfile>::namespaced(env.h.client.clone(), "default");
    api.delete("employees", &Default::default()).await.expect("delete");
    let gone = eventually(Duration::from_secs(20), || async {
        api.get_opt("employees").await.ok().flatten().is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the finalizer let go");
    assert!(env.identities("employees").is_empty());
    assert!(!env.runs().is_empty(), "run history stays");
    let _ = Api::<Connection>::namespaced(env.h.client.clone(), "default");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_connection_stalls_the_profile_and_keeps_its_identities() {
    let env = Env::start().await;
    env.exports(&people()).await;
    env.connections().await;
    env.profile(employees_with_attributes()).await;
    env.sync_all("sync").await;
    env.profile_until("identities", |p| p.status.as_ref().and_then(|s| s.identity_count) == Some(4)).await;

    // The HR Connection goes (its accounts are purged from the store): the
    // profile stalls instead of removing every identity.
    Api::<Connection>::namespaced(env.h.client.clone(), "default")
        .delete("hr", &Default::default())
        .await
        .expect("delete");
    let profile = env
        .profile_until("stalled", |p| {
            condition(p, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == "ConnectionNotFound")
        })
        .await;
    let (_, _, message) = condition(&profile, "Stalled").expect("stalled");
    assert!(message.contains("Connection hr not found in namespace default"), "{message}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.identities("employees").len(), 4, "identities kept");

    // It comes back: the profile recovers and processes again.
    env.connections().await;
    env.sync_all("resync").await;
    env.profile_until("recovered", |p| {
        condition(p, "Stalled").is_some_and(|c| c.0 == "False")
            && p.status.as_ref().and_then(|s| s.identity_count) == Some(4)
    })
    .await;
    assert_eq!(env.identities("employees").len(), 4);
}

/// A dry run of scope AccountsAndIdentities previews the identities with
/// the account changes its syncs would apply (a new hire, a changed
/// e-mail), and says what the real run then does; nothing changes
/// until the real run.
#[tokio::test(flavor = "multi_thread")]
async fn an_accounts_and_identities_dry_run_previews_identities_with_the_synced_accounts() {
    let env = Env::start().await;
    env.exports(&people()).await;
    env.connections().await;
    env.profile(employees_with_attributes()).await;
    env.sync_all("first").await;
    env.profile_until("four identities", |p| p.status.as_ref().is_some_and(|s| s.identity_count == Some(4))).await;
    let before: Vec<(String, String)> =
        env.identities("employees").into_iter().map(|i| (i.id.clone(), format!("{:?}", i.attributes))).collect();

    let mut changed = people();
    changed[1].email = "robert@acme.example";
    changed.push(person("E5", "Eve Engineer", "eve@acme.example", "E1"));
    env.exports(&changed).await;

    let preview = ResyncRequest::test("preview").all().full().scope(Scope::AccountsAndIdentities).dry_run();
    let status = env.request(preview).await.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    let profile = status.profiles.iter().find(|p| p.profile == "employees").expect("the profile's entry");
    let lines = profile.preview.join("\n");
    assert!(lines.contains("robert@acme.example"), "the changed e-mail is previewed:\n{lines}");
    assert!(lines.contains("created: 1 (e.g. E5)"), "the new hire is previewed:\n{lines}");
    assert!(profile.changed >= 2, "at least the update and the creation: {profile:?}");
    let after_preview: Vec<(String, String)> =
        env.identities("employees").into_iter().map(|i| (i.id.clone(), format!("{:?}", i.attributes))).collect();
    assert_eq!(after_preview, before, "a dry run changes no identity");

    // The real run (or the profile's own event-based run, whichever comes
    // first after the sync commits) does what the preview said.
    let real = ResyncRequest::test("real").all().full().scope(Scope::AccountsAndIdentities);
    assert_eq!(env.request(real).await.status.and_then(|s| s.phase), Some(Phase::Succeeded));
    let identities = env.identities("employees");
    assert_eq!(identities.len(), 5, "four and the new hire");
    assert_eq!(env.identity("employees", "E2").attributes["email"], "robert@acme.example");
    assert!(identities.iter().any(|i| i.id == "E5"));
}
