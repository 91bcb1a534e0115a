//! The okta provider against a local Okta org (`okta/fixture.rs`), whose
//! answers Okta's own Python SDK reads (`okta_sdk_reads_the_fixture`):
//! driven directly, and end to end through the operator.

use crate::common;

mod fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fixture::OktaOrg;
use idsync::connectors::okta::OktaConnector;
use idsync::connectors::{Connector, ConnectorError, ProviderInputs, ReadKind};
use idsync::model::{Account, ConnectionRef};
use idsync::store::{AccountStore, SqliteStore};
use idsync_api::connection::{OktaAuth, OktaSettings};
use idsync_api::resync_request::Phase;
use idsync_api::{Category, Connection, Provider, ResyncRequest, SyncMode};
use serde_json::{Value, json};

const TOKEN: &str = "00okta-fixture-SECRET-token";
const CLIENT_ID: &str = "0oa1fixtureapp";

fn settings(org: &OktaOrg) -> OktaSettings {
    OktaSettings {
        org_url: org.base.clone(),
        search: None,
        include_groups: true,
        auth: OktaAuth::ApiToken,
        client_id: None,
        key_id: None,
    }
}

/// The Connection `idp` reading `org` with `settings`, two users a page.
fn connection(settings: OktaSettings) -> Connection {
    let mut connection = Connection::test("idp")
        .category(Category::IdP)
        .credentials("okta-creds")
        .page_size(2)
        .allow_loopback(true)
        .build();
    connection.spec.provider = Provider::Okta(settings);
    connection
}

/// A small org: five people, one of them deprovisioned and one staged, in
/// two groups. Returns the user ids by login.
fn seed(org: &OktaOrg) -> BTreeMap<String, String> {
    org.with(|s| {
        let mut ids = BTreeMap::new();
        for (login, status) in [
            ("ann@example.com", "ACTIVE"),
            ("bob@example.com", "ACTIVE"),
            ("cy@example.com", "SUSPENDED"),
            ("dee@example.com", "DEPROVISIONED"),
            ("eve@example.com", "STAGED"),
        ] {
            let first = login.split('@').next().unwrap_or_default();
            ids.insert(login.to_string(), s.add_user(login, first, "Fixture", status));
        }
        let eng = s.add_group("eng");
        let ops = s.add_group("ops");
        s.add_member(&eng, &ids["ann@example.com"]);
        s.add_member(&eng, &ids["bob@example.com"]);
        s.add_member(&ops, &ids["bob@example.com"]);
        s.add_member(&ops, &ids["dee@example.com"]);
        ids
    })
}

async fn read_all(connector: &mut OktaConnector, mode: SyncMode, cursor: Option<&str>) -> (ReadKind, Vec<Account>) {
    let plan = connector.begin(mode, cursor).await.expect("begin");
    let mut accounts = Vec::new();
    while let Some(page) = connector.next_page().await.expect("a page") {
        accounts.extend(page.accounts);
    }
    (plan.kind, accounts)
}

#[tokio::test]
async fn okta_sdk_reads_the_fixture() {
    let org = OktaOrg::start(TOKEN).await;
    let ids = seed(&org);
    org.with(|s| {
        s.client_id = Some(CLIENT_ID.to_string());
        // The SDK's first request is refused: it must find Date and
        // X-Rate-Limit-Reset on the 429 to wait and retry.
        s.refuse_next = 1;
    });
    let script = common::repo("scripts/okta-sdk-check.sh");
    let key_dir = tempfile::tempdir().expect("temp dir");
    let key_file = key_dir.path().join("key.pem");
    std::fs::write(&key_file, fixture::TEST_KEY).expect("key file");
    let runs: [Vec<String>; 2] = [
        vec![org.base.clone(), TOKEN.to_string()],
        vec![org.base.clone(), "-".to_string(), CLIENT_ID.to_string(), key_file.display().to_string()],
    ];
    for args in runs {
        let output = tokio::process::Command::new(&script).args(&args).output().await.expect("the SDK check runs");
        assert!(
            output.status.success(),
            "scripts/okta-sdk-check.sh {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let read: Value = serde_json::from_slice(&output.stdout).expect("the SDK check prints JSON");
        let listed: BTreeSet<&str> =
            read["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
        let expected: BTreeSet<&str> =
            ids.iter().filter(|(login, _)| *login != "dee@example.com").map(|(_, id)| id.as_str()).collect();
        assert_eq!(listed, expected, "the SDK pages through every user but the deprovisioned one");
        assert_eq!(read["deprovisioned"], json!([ids["dee@example.com"]]));
        assert_eq!(read["groups"]["eng"], json!([ids["ann@example.com"], ids["bob@example.com"]]));
        assert_eq!(read["groups"]["ops"], json!([ids["bob@example.com"], ids["dee@example.com"]]));
        assert_eq!(read["missing"], json!({"status": 404, "errorCode": "E0000007"}));
        assert_eq!(read["badToken"], json!({"status": 401, "errorCode": "E0000011"}));
        assert_eq!(read["user"]["status"], "ACTIVE");
    }
    org.with(|s| {
        assert_eq!(s.served_429, 1);
        assert_eq!(s.count("POST /oauth2/v1/token"), 1, "the SDK's own client assertion was accepted");
    });
}

#[tokio::test]
async fn a_service_app_reads_with_a_signed_assertion_and_a_cached_token() {
    let org = OktaOrg::start(TOKEN).await;
    let ids = seed(&org);
    org.with(|s| s.client_id = Some(CLIENT_ID.to_string()));
    let mut settings = settings(&org);
    settings.auth = OktaAuth::PrivateKeyJwt;
    settings.client_id = Some(CLIENT_ID.to_string());
    settings.key_id = Some("fixture-key".to_string());
    let connection = connection(settings.clone());
    let inputs = ProviderInputs {
        secret: BTreeMap::from([("privateKey".to_string(), fixture::TEST_KEY.as_bytes().to_vec())]),
        csv_data: None,
    };
    let mut connector = OktaConnector::new(&connection.spec, &settings, &inputs).expect("connector");
    let (_, accounts) = read_all(&mut connector, SyncMode::Full, None).await;
    assert_eq!(accounts.len(), 5);
    let dee = accounts.iter().find(|a| a.id == ids["dee@example.com"]).expect("dee");
    assert!(!dee.enabled);
    assert_eq!(dee.groups, ["ops"]);
    let (_, again) = read_all(&mut connector, SyncMode::Full, None).await;
    assert_eq!(again, accounts);
    org.with(|s| {
        assert_eq!(s.count("POST /oauth2/v1/token"), 1, "one access token serves both reads");
        assert!(s.count("GET /api/v1/users") >= 4);
    });

    // Another app's id: the token endpoint refuses the assertion.
    settings.client_id = Some("0oa-someone-else".to_string());
    let mut connector = OktaConnector::new(&connection.spec, &settings, &inputs).expect("connector");
    connector.begin(SyncMode::Full, None).await.expect("begin");
    let error = connector.next_page().await.expect_err("refused");
    assert!(matches!(error, ConnectorError::Unauthorized { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("invalid_client") && text.contains("check the client id"), "{text}");
    assert!(!text.contains("eyJ") && !text.contains("PRIVATE"), "{text}");
}

/// Username → (enabled, groups) of every stored account of `idp`.
fn stored(store: &SqliteStore) -> BTreeMap<String, (String, bool, Vec<String>)> {
    let conn = ConnectionRef::new("default", "idp");
    store
        .list_accounts(&conn, None, 10_000)
        .expect("accounts")
        .into_iter()
        .map(|a| (a.id.clone(), (a.username.unwrap_or_default(), a.enabled, a.groups)))
        .collect()
}

fn counts(request: &ResyncRequest) -> (u64, u64, u64) {
    let target = &request.status.as_ref().expect("status").targets[0];
    let counts = target.counts.unwrap_or_default();
    (counts.created, counts.updated, counts.deleted)
}

fn message(request: &ResyncRequest) -> String {
    request.status.as_ref().expect("status").targets[0].message.clone()
}

#[tokio::test]
async fn an_okta_org_through_the_operator() {
    let org = OktaOrg::start(TOKEN).await;
    let ids = seed(&org);
    let common::operator::Started { h, operator, data, .. } = common::operator::start_operator().await;
    let secret = |token: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "idsync.dev/credentials",
               "metadata": {"name": "okta-creds"}, "stringData": {"apiToken": token}})
    };
    let run = |name: &'static str, full: bool| {
        let request = ResyncRequest::test(name).connections(["idp"]);
        let request = if full { request.full() } else { request };
        let h = &h;
        async move {
            h.create_request(request).await;
            h.finished_request(name, Duration::from_secs(90)).await
        }
    };

    // A wrong token: Stalled, Unauthorized, with Okta's summary and no token.
    let wrong = "00wrong-SECRET-token";
    h.apply_json(secret(wrong)).await;
    h.apply_json(serde_json::to_value(connection(settings(&org))).expect("json")).await;
    let refused = run("bad-token", true).await;
    assert_eq!(refused.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    let connections: kube::Api<Connection> = kube::Api::namespaced(h.client.clone(), "default");
    let status = connections.get("idp").await.expect("idp").status.expect("status");
    let stalled = idsync_api::conditions::find(&status.conditions, "Stalled").cloned().expect("Stalled");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "Unauthorized"), "{stalled:?}");
    assert!(stalled.message.contains("Okta error E0000011: Invalid token provided"), "{stalled:?}");
    let everything = format!(
        "{}{}",
        h.kubectl_ok(&["get", "connections,resyncrequests", "-o", "yaml"]).await,
        h.kubectl_ok(&["get", "events", "-o", "yaml"]).await
    );
    assert!(!everything.contains("SECRET"), "a token reached the cluster:\n{everything}");

    // The right token: a Full read of everyone, deprovisioned users disabled.
    h.apply_json(secret(TOKEN)).await;
    let first = run("first", true).await;
    assert_eq!(first.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", first.status);
    assert_eq!(counts(&first), (5, 0, 0));
    let store = SqliteStore::open(&data.path().join("idsync.db")).expect("store");
    let before = stored(&store);
    let expected = |login: &str, enabled: bool, groups: &[&str]| {
        (login.to_string(), enabled, groups.iter().map(|g| g.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(before[&ids["ann@example.com"]], expected("ann@example.com", true, &["eng"]));
    assert_eq!(before[&ids["bob@example.com"]], expected("bob@example.com", true, &["eng", "ops"]));
    assert_eq!(before[&ids["cy@example.com"]], expected("cy@example.com", false, &[]));
    assert_eq!(before[&ids["dee@example.com"]], expected("dee@example.com", false, &["ops"]));
    assert_eq!(before[&ids["eve@example.com"]], expected("eve@example.com", false, &[]));

    // Changes for a Delta: a rename, a suspension, a membership, a new
    // user, a deletion (which a Delta cannot see), and a change stamped
    // just before the last read's cursor, as a late search index shows it:
    // only the overlap finds it.
    let newcomer = org.with(|s| {
        let cursor_ish =
            s.users.values().filter_map(|u| u["lastUpdated"].as_str()).max().unwrap_or_default().to_string();
        s.update_profile(&ids["ann@example.com"], |p| {
            p.insert("login".into(), json!("ann.smith@example.com"));
        });
        s.set_status(&ids["bob@example.com"], "SUSPENDED");
        let eng = s.groups.iter().find(|(_, g)| g.json["profile"]["name"] == "eng").map(|(id, _)| id.clone()).unwrap();
        s.add_member(&eng, &ids["cy@example.com"]);
        s.delete_user(&ids["eve@example.com"]);
        let late = &ids["dee@example.com"];
        s.update_profile(late, |p| {
            p.insert("department".into(), json!("Finance"));
        });
        let stamp: jiff::Timestamp = cursor_ish.parse().expect("a timestamp");
        let earlier = (stamp - jiff::SignedDuration::from_secs(30)).strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        s.users.get_mut(late).expect("dee")["lastUpdated"] = json!(earlier);
        s.add_user("fay@example.com", "fay", "Fixture", "ACTIVE")
    });
    let second = run("second", false).await;
    assert_eq!(second.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", second.status);
    assert_eq!(second.status.as_ref().unwrap().targets[0].mode, Some(SyncMode::Delta));
    assert_eq!(counts(&second), (1, 4, 0), "fay created; ann, bob, cy and dee updated; eve not seen");
    let after = stored(&store);
    assert_eq!(after[&ids["ann@example.com"]], expected("ann.smith@example.com", true, &["eng"]), "a rename updates");
    assert_eq!(after[&ids["bob@example.com"]], expected("bob@example.com", false, &["eng", "ops"]));
    assert_eq!(after[&ids["cy@example.com"]], expected("cy@example.com", false, &["eng"]));
    assert!(after.contains_key(&ids["eve@example.com"]), "a Delta deletes nothing");
    assert!(after.contains_key(&newcomer));
    let conn = ConnectionRef::new("default", "idp");
    let dee = store.get_accounts(&conn, &[ids["dee@example.com"].clone()]).expect("dee");
    assert_eq!(dee[0].attributes["department"], json!("Finance"), "the overlap found the late change");
    let searches = org.with(|s| s.requests.iter().filter(|r| r.contains("search=lastUpdated+gt")).count());
    assert!(searches >= 1, "the Delta searched by lastUpdated");

    // Nothing changed: a third sync changes nothing.
    let third = run("third", false).await;
    assert_eq!(third.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", third.status);
    assert_eq!(counts(&third), (0, 0, 0));
    assert_eq!(stored(&store), after);

    // The periodic Full pass finds the deletion, confirmed by a 404.
    let fourth = run("fourth", true).await;
    assert_eq!(fourth.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", fourth.status);
    assert_eq!(counts(&fourth), (0, 0, 1));
    let now = stored(&store);
    assert!(!now.contains_key(&ids["eve@example.com"]));
    assert_eq!(now.len(), 5);
    assert!(org.with(|s| s.count(&format!("GET /api/v1/users/{}", ids["eve@example.com"]))) == 1);

    // The org dies after the first page: the sync fails, the store stays.
    org.with(|s| {
        s.update_profile(&ids["cy@example.com"], |p| {
            p.insert("login".into(), json!("cy.new@example.com"));
        });
        s.die_after = Some(s.requests.len() + 1);
    });
    let dies = run("dies", true).await;
    assert_eq!(dies.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed), "{:?}", dies.status);
    assert!(message(&dies).contains("nothing was applied"), "{}", message(&dies));
    assert_eq!(stored(&store), now, "a sync whose org died changed the store");
    operator.stop().await;
}

#[tokio::test]
async fn okta_s_rate_limits_through_the_operator() {
    let org = OktaOrg::start(TOKEN).await;
    org.with(|s| {
        for n in 0..12 {
            s.add_user(&format!("user{n:02}@example.com"), "user", "Fixture", "ACTIVE");
        }
        s.add_group("everyone");
        // Four requests a second.
        s.bucket = 4;
    });
    let common::operator::Started { h, operator, .. } = common::operator::start_operator().await;
    h.apply_json(json!({"apiVersion": "v1", "kind": "Secret", "type": "idsync.dev/credentials",
                        "metadata": {"name": "okta-creds"}, "stringData": {"apiToken": TOKEN}}))
        .await;
    h.apply_json(serde_json::to_value(connection(settings(&org))).expect("json")).await;

    // Seven user pages, the groups and their members: more than a bucket.
    h.create_request(ResyncRequest::test("paced").connections(["idp"]).full()).await;
    let paced = h.finished_request("paced", Duration::from_secs(90)).await;
    assert_eq!(paced.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", paced.status);
    assert_eq!(counts(&paced), (12, 0, 0));
    assert!(message(&paced).contains("paced by Okta's rate limit: paused "), "{}", message(&paced));
    let requests = org.with(|s| s.requests.len());
    assert!(requests > 4, "{requests} requests: the bucket was not the limit");
    assert_eq!(org.with(|s| s.served_429), 0, "the sync paced itself and never met a 429");

    // Another client empties the bucket: a 429 waits for the reset.
    org.with(|s| {
        s.bucket = 0;
        s.refuse_next = 1;
    });
    h.create_request(ResyncRequest::test("refused-once").connections(["idp"])).await;
    let refused = h.finished_request("refused-once", Duration::from_secs(90)).await;
    assert_eq!(refused.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", refused.status);
    assert_eq!(org.with(|s| s.served_429), 1);
    assert!(
        message(&refused).contains("Okta answered HTTP 429 (rate limit exceeded) 1 time(s); waited "),
        "{}",
        message(&refused)
    );
    operator.stop().await;
}

/// One sync of `idp` through the sync engine into `store`.
async fn sync(
    org: &OktaOrg,
    store: &std::sync::Arc<dyn idsync::store::Store>,
    mode: SyncMode,
) -> idsync::sync::job::SyncReport {
    let job = idsync::sync::job::SyncJob {
        connection: ConnectionRef::new("default", "idp"),
        mode,
        trigger: idsync::model::Trigger::Requested,
        request: None,
        holder: "test".into(),
        dry_run: false,
        confirm_deletes: false,
        safeguard: idsync_api::connection::ImportSafeguard { max_delete_percent: 100, max_delete_count: None },
        settings_hash: "okta".into(),
        full_sync_interval: Duration::from_secs(24 * 3600),
        max_duration: Duration::from_secs(600),
    };
    let settings = settings(org);
    let connection = connection(settings.clone());
    let inputs = ProviderInputs {
        secret: BTreeMap::from([("apiToken".to_string(), TOKEN.as_bytes().to_vec())]),
        csv_data: None,
    };
    let connector = Box::new(OktaConnector::new(&connection.spec, &settings, &inputs).expect("connector"));
    let report = idsync::sync::job::run(job, connector, store.clone(), idsync::sync::cancel::Cancel::new()).await;
    assert_eq!(report.outcome, idsync::model::RunOutcome::Succeeded, "{report:?}");
    report
}

#[tokio::test]
async fn deletions_during_a_read_delete_only_who_is_gone() {
    let org = OktaOrg::start(TOKEN).await;
    let ids: Vec<String> =
        org.with(|s| (0..6).map(|n| s.add_user(&format!("u{n}@example.com"), "u", "Fixture", "ACTIVE")).collect());
    let dir = tempfile::tempdir().expect("temp dir");
    let store: std::sync::Arc<dyn idsync::store::Store> =
        std::sync::Arc::new(SqliteStore::open(&dir.path().join("idsync.db")).expect("store"));
    let first = sync(&org, &store, SyncMode::Full).await;
    assert_eq!(first.counts.created, 6);

    // While the next Full read is on its second page (two users a page, by
    // id), the first user (already listed) and the last (not yet) are
    // deleted, and the fourth renamed.
    let (early, late, renamed) = (ids[0].clone(), ids[5].clone(), ids[3].clone());
    org.with(|s| {
        let at = s.requests.len() + 2;
        s.after_requests = Some((
            at,
            Box::new(move |s: &mut fixture::State| {
                s.delete_user(&early);
                s.delete_user(&late);
                s.update_profile(&renamed, |p| {
                    p.insert("login".into(), json!("renamed@example.com"));
                });
            }),
        ));
    });
    let second = sync(&org, &store, SyncMode::Full).await;
    // The listing cannot show who it already passed was deleted: that
    // waits for the next Full; the one it never listed is confirmed gone
    // by a 404 and deleted; the rename is an update of the same id.
    assert_eq!((second.counts.created, second.counts.updated, second.counts.deleted), (0, 1, 1), "{second:?}");
    let stored: BTreeMap<String, (String, bool, Vec<String>)> = stored_of(&store);
    assert!(stored.contains_key(&ids[0]) && !stored.contains_key(&ids[5]));
    assert_eq!(stored[&ids[3]].0, "renamed@example.com");
    let third = sync(&org, &store, SyncMode::Full).await;
    assert_eq!((third.counts.created, third.counts.updated, third.counts.deleted), (0, 0, 1));
    let fourth = sync(&org, &store, SyncMode::Delta).await;
    assert_eq!((fourth.counts.created, fourth.counts.updated, fourth.counts.deleted), (0, 0, 0));
    assert_eq!(stored_of(&store).len(), 4);
}

fn stored_of(store: &std::sync::Arc<dyn idsync::store::Store>) -> BTreeMap<String, (String, bool, Vec<String>)> {
    store
        .list_accounts(&ConnectionRef::new("default", "idp"), None, 10_000)
        .expect("accounts")
        .into_iter()
        .map(|a| (a.id.clone(), (a.username.unwrap_or_default(), a.enabled, a.groups)))
        .collect()
}

#[tokio::test]
async fn group_changes_reach_a_delta() {
    let org = OktaOrg::start(TOKEN).await;
    let ids = seed(&org);
    let dir = tempfile::tempdir().expect("temp dir");
    let store: std::sync::Arc<dyn idsync::store::Store> =
        std::sync::Arc::new(SqliteStore::open(&dir.path().join("idsync.db")).expect("store"));
    sync(&org, &store, SyncMode::Full).await;
    let groups =
        |store: &std::sync::Arc<dyn idsync::store::Store>, login: &str| stored_of(store)[&ids[login]].2.clone();
    assert_eq!(groups(&store, "bob@example.com"), ["eng", "ops"]);

    // Bob leaves ops and Ann joins it: no user's lastUpdated moves, only
    // the group's lastMembershipUpdated.
    org.with(|s| {
        let ops = s.groups.iter().find(|(_, g)| g.json["profile"]["name"] == "ops").map(|(id, _)| id.clone()).unwrap();
        s.remove_member(&ops, &ids["bob@example.com"]);
        s.add_member(&ops, &ids["ann@example.com"]);
    });
    let delta = sync(&org, &store, SyncMode::Delta).await;
    assert_eq!(delta.mode, SyncMode::Delta);
    assert_eq!((delta.counts.created, delta.counts.updated, delta.counts.deleted), (0, 2, 0), "{delta:?}");
    assert_eq!(groups(&store, "bob@example.com"), ["eng"], "who left ops was taken off it");
    assert_eq!(groups(&store, "ann@example.com"), ["eng", "ops"]);
    assert_eq!(groups(&store, "dee@example.com"), ["ops"]);
    let quiet = sync(&org, &store, SyncMode::Delta).await;
    assert_eq!((quiet.counts.created, quiet.counts.updated, quiet.counts.deleted), (0, 0, 0), "{quiet:?}");
}
