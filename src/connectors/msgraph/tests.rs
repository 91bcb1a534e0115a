//! The msgraph connector against the local Graph fixture
//! (`tests/fixtures/msgraph/server.rs`), driven directly.

use std::collections::BTreeSet;

use serde_json::json;

use super::*;
use crate::connectors::testing::fast_http;
use idsync_api::Connection;
use idsync_api::connection::MsGraphAuthentication;

#[path = "../../../tests/fixtures/msgraph/server.rs"]
mod fixture;

use fixture::{GraphServer, user, user_id};

fn settings(server: &GraphServer) -> MsGraphSettings {
    MsGraphSettings {
        tenant_id: fixture::TENANT.to_string(),
        client_id: fixture::CLIENT_ID.to_string(),
        authentication: MsGraphAuthentication::ClientSecret,
        graph_endpoint: server.base.clone(),
        login_endpoint: server.login_endpoint(),
        include_groups: true,
        exclude_guests: false,
        licensed_only: false,
        extra_attributes: vec!["officeLocation".to_string()],
    }
}

fn secret_inputs(secret: &str) -> ProviderInputs {
    let mut inputs = ProviderInputs::default();
    inputs.secret.insert("clientSecret".into(), secret.as_bytes().to_vec());
    inputs
}

fn connector(server: &GraphServer, page_size: u32, change: impl FnOnce(&mut MsGraphSettings)) -> MsGraphConnector {
    let mut settings = settings(server);
    change(&mut settings);
    let spec = Connection::test("entra").page_size(page_size).spec();
    MsGraphConnector::with_http_settings(&spec, &settings, &secret_inputs(fixture::CLIENT_SECRET), fast_http())
        .expect("connector")
}

#[derive(Debug)]
struct Read {
    plan: ReadPlan,
    pages: u64,
    accounts: Vec<Account>,
    deleted: Vec<String>,
    cursor: Option<String>,
}

async fn read(c: &mut MsGraphConnector, mode: SyncMode, cursor: Option<&str>) -> Result<Read, ConnectorError> {
    let plan = c.begin(mode, cursor).await?;
    let (mut accounts, mut deleted, mut pages) = (Vec::new(), Vec::new(), 0);
    while let Some(page) = c.next_page().await? {
        pages += 1;
        assert_eq!(page.number, pages);
        accounts.extend(page.accounts);
        deleted.extend(page.deleted);
    }
    Ok(Read { plan, pages, accounts, deleted, cursor: c.cursor() })
}

fn ids(accounts: &[Account]) -> BTreeSet<String> {
    accounts.iter().map(|a| a.id.clone()).collect()
}

async fn seeded(n: usize) -> GraphServer {
    let server = GraphServer::start().await;
    for i in 0..n {
        server.put_user(user(i));
    }
    server.set_manager(&user_id(1), Some(&user_id(0)));
    server.put_group("g-sales", "Sales", &[&user_id(1), &user_id(2)]);
    server.put_group(
        "g-all",
        "Everyone",
        &(0..n).map(user_id).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>(),
    );
    server
}

#[tokio::test]
async fn a_full_read_pages_every_user_with_groups_and_manager() {
    let server = seeded(25).await;
    let mut c = connector(&server, 10, |_| {});
    let full = read(&mut c, SyncMode::Full, None).await.unwrap();
    assert_eq!(full.plan, ReadPlan { kind: ReadKind::Full, reason: None });
    assert_eq!(full.pages, 3, "25 users, 10 a page");
    assert_eq!(full.accounts.len(), 25);
    assert!(full.deleted.is_empty());
    let one = full.accounts.iter().find(|a| a.id == user_id(1)).unwrap();
    assert_eq!(one.username.as_deref(), Some("user1@contoso.onmicrosoft.com"));
    assert_eq!(one.email.as_deref(), Some("user1@contoso.com"));
    assert_eq!(one.display_name.as_deref(), Some("Given1 Family1"));
    assert!(one.enabled);
    assert_eq!(one.groups, vec!["Everyone", "Sales"]);
    assert_eq!(one.attributes["manager"], json!(user_id(0)));
    assert_eq!(one.attributes["officeLocation"], "B1");
    assert_eq!(one.attributes["employeeId"], "10001");
    assert!(!full.accounts.iter().find(|a| a.id == user_id(7)).unwrap().enabled);
    let cursor: Cursor = serde_json::from_str(full.cursor.as_deref().unwrap()).unwrap();
    assert!(cursor.users.contains("/v1.0/users/delta?$deltatoken="), "{cursor:?}");
    assert!(cursor.groups.unwrap().contains("/v1.0/groups/delta?$deltatoken="));
    assert_eq!(cursor.group_names.get("g-sales").map(String::as_str), Some("Sales"));
    // The documented page-size knob, the mapped properties, the manager.
    let log = server.log();
    let first = log.iter().find(|l| l.contains("/v1.0/users/delta?")).unwrap();
    assert!(first.contains("%24select=id%2CuserPrincipalName%2Cmail") && first.contains("officeLocation"), "{first}");
    assert!(first.contains("%24expand=manager%28%24select%3Did%29"), "{first}");
    assert!(!log.iter().any(|l| l.contains("%24top")), "{log:?}");
    assert_eq!(server.token_requests(), 1);
}

#[tokio::test]
async fn deltas_bring_changes_deletions_and_membership_then_nothing() {
    let server = seeded(12).await;
    let mut c = connector(&server, 5, |_| {});
    let full = read(&mut c, SyncMode::Delta, None).await.unwrap();
    assert_eq!(full.plan, ReadPlan { kind: ReadKind::Full, reason: Some(NO_CURSOR.into()) });
    let cursor = full.cursor.unwrap();

    server.update_user(&user_id(3), |u| u["userPrincipalName"] = json!("renamed3@contoso.onmicrosoft.com"));
    server.remove_user(&user_id(4), "deleted");
    server.remove_user(&user_id(5), "changed");
    server.put_user(user(100));
    server.add_member("g-sales", &user_id(6));
    server.remove_member("g-sales", &user_id(2));
    server.set_manager(&user_id(8), Some(&user_id(1)));
    let delta = read(&mut c, SyncMode::Delta, Some(&cursor)).await.unwrap();
    assert_eq!(delta.plan, ReadPlan { kind: ReadKind::Delta, reason: None });
    assert_eq!(
        ids(&delta.accounts),
        [3, 100, 6, 2, 8].into_iter().map(user_id).collect::<BTreeSet<_>>(),
        "changed users and those whose memberships changed"
    );
    assert_eq!(delta.deleted.iter().cloned().collect::<BTreeSet<_>>(), [4, 5].into_iter().map(user_id).collect());
    let by_id = |id: String| delta.accounts.iter().find(|a| a.id == id).unwrap().clone();
    let renamed = by_id(user_id(3));
    assert_eq!(renamed.username.as_deref(), Some("renamed3@contoso.onmicrosoft.com"), "a rename is an update");
    assert_eq!(renamed.email.as_deref(), Some("user3@contoso.com"));
    assert_eq!(renamed.groups, vec!["Everyone"]);
    assert_eq!(by_id(user_id(6)).groups, vec!["Everyone", "Sales"]);
    assert_eq!(by_id(user_id(2)).groups, vec!["Everyone"]);
    assert_eq!(by_id(user_id(8)).attributes["manager"], json!(user_id(1)));
    let next = delta.cursor.unwrap();
    assert_ne!(next, cursor);

    // A third read with nothing changed brings nothing.
    let quiet = read(&mut c, SyncMode::Delta, Some(&next)).await.unwrap();
    assert_eq!(quiet.plan.kind, ReadKind::Delta);
    assert!(quiet.accounts.is_empty() && quiet.deleted.is_empty(), "{quiet:?}");
    assert!(quiet.cursor.is_some());

    // A renamed group reaches every member.
    server.rename_group("g-sales", "Revenue");
    let renamed = read(&mut c, SyncMode::Delta, quiet.cursor.as_deref()).await.unwrap();
    assert_eq!(ids(&renamed.accounts), [1, 6].into_iter().map(user_id).collect());
    assert!(renamed.accounts.iter().all(|a| a.groups == vec!["Everyone", "Revenue"]), "{:?}", renamed.accounts);

    // A deleted group: who was in it is unknown, so the read is Full.
    server.delete_group("g-sales");
    let whole = read(&mut c, SyncMode::Delta, renamed.cursor.as_deref()).await.unwrap();
    assert_eq!(whole.plan.kind, ReadKind::Full);
    assert!(
        whole.plan.reason.as_deref().unwrap().contains("the group \"Revenue\" was removed (deleted)"),
        "{:?}",
        whole.plan
    );
    assert_eq!(whole.accounts.len(), 11);
}

#[tokio::test]
async fn a_gone_delta_token_starts_a_full_read_and_says_why() {
    let server = seeded(6).await;
    let mut c = connector(&server, 100, |s| s.include_groups = false);
    let full = read(&mut c, SyncMode::Full, None).await.unwrap();
    assert!(!c.capabilities().groups);
    assert!(full.accounts.iter().all(|a| a.groups.is_empty()));
    server.expire_delta_tokens();
    let again = read(&mut c, SyncMode::Delta, full.cursor.as_deref()).await.unwrap();
    assert_eq!(again.plan.kind, ReadKind::Full);
    assert_eq!(
        again.plan.reason.as_deref(),
        Some(
            "Graph no longer accepts the stored delta token (HTTP 410, syncStateNotFound): a new token starts with this full read"
        )
    );
    assert_eq!(again.accounts.len(), 6);
    server.require_resync();
    let resync = read(&mut c, SyncMode::Delta, again.cursor.as_deref()).await.unwrap();
    assert_eq!(resync.plan.kind, ReadKind::Full);
    assert!(resync.plan.reason.unwrap().contains("resyncRequired"));
    // An unreadable cursor is a full read too.
    let odd = read(&mut c, SyncMode::Delta, Some("2024-01-01T00:00:00Z")).await.unwrap();
    assert_eq!(odd.plan.reason.as_deref(), Some("the stored cursor is not an msgraph delta cursor"));
}

#[tokio::test]
async fn guests_and_unlicensed_users_are_left_out_and_leave_in_deltas() {
    let server = seeded(20).await;
    let mut c = connector(&server, 50, |s| {
        s.exclude_guests = true;
        s.licensed_only = true;
    });
    let full = read(&mut c, SyncMode::Full, None).await.unwrap();
    // Guests: multiples of 10; unlicensed: multiples of 4.
    let expected: BTreeSet<String> = (0..20).filter(|i| i % 10 != 0 && i % 4 != 0).map(user_id).collect();
    assert_eq!(ids(&full.accounts), expected);
    assert!(server.log().iter().any(|l| l.contains("assignedLicenses")));
    server.update_user(&user_id(1), |u| u["userType"] = json!("Guest"));
    server.update_user(&user_id(2), |u| u["assignedLicenses"] = json!([]));
    server.update_user(&user_id(5), |u| u["jobTitle"] = json!("Chief"));
    let delta = read(&mut c, SyncMode::Delta, full.cursor.as_deref()).await.unwrap();
    assert_eq!(delta.deleted.iter().cloned().collect::<BTreeSet<_>>(), [1, 2].into_iter().map(user_id).collect());
    assert_eq!(ids(&delta.accounts), [user_id(5)].into());
}

#[tokio::test]
async fn throttling_is_waited_out_and_a_refused_token_renewed_once() {
    let server = seeded(4).await;
    let mut settings = settings(&server);
    settings.include_groups = false;
    let spec = Connection::test("entra").spec();
    // Room for two retries of one request, and for Retry-After: 1.
    let http = HttpSettings { max_retries: 2, max_backoff: std::time::Duration::from_secs(5), ..fast_http() };
    let mut c =
        MsGraphConnector::with_http_settings(&spec, &settings, &secret_inputs(fixture::CLIENT_SECRET), http).unwrap();
    server.throttle(&[429, 503]);
    let full = read(&mut c, SyncMode::Full, None).await.unwrap();
    assert_eq!(full.accounts.len(), 4);
    let log = server.log();
    assert!(log.iter().any(|l| l.ends_with("-> 429")) && log.iter().any(|l| l.ends_with("-> 503")), "{log:?}");

    let tokens_before = server.token_requests();
    server.revoke_access_tokens();
    let again = read(&mut c, SyncMode::Full, None).await.unwrap();
    assert_eq!(again.accounts.len(), 4);
    assert!(server.log().iter().any(|l| l.ends_with("-> 401")));
    assert_eq!(server.token_requests(), tokens_before + 1, "one new token after the 401");

    // Refused again with the new token: Unauthorized, after one renewal.
    server.refuse_tokens();
    let e = read(&mut c, SyncMode::Full, None).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e:?}");
    assert!(e.to_string().contains("HTTP 401 Unauthorized: InvalidAuthenticationToken"), "{e}");
    assert!(!e.to_string().contains("fixture-access-"), "{e}");
    assert_eq!(server.token_requests(), tokens_before + 2, "renewed once, not in a loop");
}

#[test]
fn requests_per_tenant_share_one_bound() {
    let a = tenant_permits("https://graph.example/\ntenant-a");
    let again = tenant_permits("https://graph.example/\ntenant-a");
    let b = tenant_permits("https://graph.example/\ntenant-b");
    assert!(Arc::ptr_eq(&a, &again), "every Connection of a tenant shares its permits");
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!(a.available_permits(), MAX_REQUESTS_PER_TENANT);
}

#[tokio::test]
async fn bad_credentials_stall_without_showing_them() {
    let server = seeded(2).await;
    let mut settings = settings(&server);
    settings.extra_attributes.clear();
    let spec = Connection::test("entra").spec();
    let wrong = "wrong-SECRET-value-0815";
    let mut c = MsGraphConnector::with_http_settings(&spec, &settings, &secret_inputs(wrong), fast_http()).unwrap();
    let e = read(&mut c, SyncMode::Full, None).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e:?}");
    assert!(e.is_stalled());
    assert_eq!(
        e.to_string(),
        "unauthorized: the token endpoint refused the credentials: invalid_client: AADSTS7000215: Invalid client secret \
         provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID."
    );
    for text in [e.to_string(), format!("{e:?}"), format!("{c:?}")] {
        assert!(!text.contains("SECRET"), "{text}");
    }
    let e = MsGraphConnector::new(&spec, &settings, &ProviderInputs::default()).unwrap_err();
    assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"clientSecret\" missing");
}

#[tokio::test]
async fn a_certificate_signs_the_client_assertion() {
    let server = seeded(3).await;
    let mut settings = settings(&server);
    settings.authentication = MsGraphAuthentication::Certificate;
    let spec = Connection::test("entra").spec();
    let mut inputs = ProviderInputs::default();
    inputs.secret.insert("privateKey".into(), fixture::TEST_KEY_PEM.as_bytes().to_vec());
    let e = MsGraphConnector::new(&spec, &settings, &inputs).unwrap_err();
    assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"certificateThumbprint\" missing");
    inputs.secret.insert("certificateThumbprint".into(), fixture::THUMBPRINT.as_bytes().to_vec());
    let mut c = MsGraphConnector::with_http_settings(&spec, &settings, &inputs, fast_http()).unwrap();
    let full = read(&mut c, SyncMode::Full, None).await.unwrap();
    assert_eq!(full.accounts.len(), 3);
    assert!(!format!("{c:?}").contains("PRIVATE KEY"));
}

#[tokio::test]
async fn links_to_another_origin_are_not_followed() {
    let server = seeded(2).await;
    let mut c = connector(&server, 100, |s| s.include_groups = false);
    let cursor = serde_json::to_string(&Cursor {
        users: "https://attacker.example/v1.0/users/delta?$deltatoken=x".into(),
        ..Cursor::default()
    })
    .unwrap();
    let e = read(&mut c, SyncMode::Delta, Some(&cursor)).await.unwrap_err();
    assert!(e.to_string().contains("not to the Graph endpoint"), "{e}");
    assert!(server.log().is_empty(), "nothing was sent");
}

#[test]
fn graph_error_bodies_are_summarised_even_when_cut() {
    let whole = ConnectorError::Http {
        page: Some(2),
        status: 400,
        message: r#"GET https://g/v1.0/users/delta answered HTTP 400 Bad Request: {"error":{"code":"Request_UnsupportedQuery","message":"Unsupported Query."}} (gave up after 1 attempts)"#.into(),
    };
    assert_eq!(
        explain_graph_error(whole).to_string(),
        "page 2: GET https://g/v1.0/users/delta answered HTTP 400 Bad Request: Request_UnsupportedQuery: Unsupported \
         Query. (gave up after 1 attempts)"
    );
    let cut = ConnectorError::Http {
        page: None,
        status: 410,
        message: r#"GET x answered HTTP 410 Gone: {"error":{"code":"resyncRequired","message":"Resync required. Replace any local items with the…"#.into(),
    };
    let e = explain_graph_error(cut);
    assert_eq!(
        e.to_string(),
        "GET x answered HTTP 410 Gone: resyncRequired: Resync required. Replace any local items with the…"
    );
    assert!(resync_reason(&e).unwrap().contains("HTTP 410, resyncRequired"));
}

#[tokio::test]
async fn a_user_the_listing_skipped_is_looked_up() {
    let server = seeded(3).await;
    let mut c = connector(&server, 100, |_| {});
    read(&mut c, SyncMode::Full, None).await.unwrap();
    let present = c.still_present(&[user_id(1), "gone".to_string()]).await.unwrap();
    assert_eq!(ids(&present), [user_id(1)].into());
    assert_eq!(present[0].groups, vec!["Everyone", "Sales"]);
}
