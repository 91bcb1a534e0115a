//! The github provider against a fixture of GitHub's REST and GraphQL API
//! (`github/fixture.rs`) whose every REST exchange is checked against
//! GitHub's official OpenAPI description (`github/openapi.rs`): the
//! connector driven directly, the sync engine across runs, and the whole
//! operator.

mod fixture;
mod openapi;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use idsync::connectors::github::GitHubConnector;
use idsync::connectors::{Connector, ConnectorError, ProviderInputs, ReadKind};
use idsync::model::{Account, ConnectionRef, RunOutcome, Trigger};
use idsync::store::{AccountStore, SqliteStore, Store};
use idsync_api::connection::{ConnectionSpec, GitHubSettings};
use idsync_api::{Provider, SyncMode};
use serde_json::{Value, json};

use crate::common;
use fixture::{GitHubFixture, Member, ORG, Team, Throttle};

const TOKEN: &str = "ghp_fixtureTOKEN0123456789";
const APP_KEY: &str = include_str!("../../src/connectors/github_test_key.pem");

fn member(id: u64, login: &str, admin: bool, two_factor: bool, email: Option<&str>) -> Member {
    Member {
        id,
        login: login.to_string(),
        admin,
        two_factor,
        saml: email.map(|e| (e.to_string(), format!("Given{id}"), format!("Family{id}"))),
    }
}

/// Five members (one owner, one without 2FA, three with SAML), two teams,
/// one outside collaborator.
fn seed(fixture: &GitHubFixture) {
    fixture.with(|s| {
        s.members = vec![
            member(101, "octocat", true, true, Some("mona@acme.example")),
            member(102, "hubot", false, false, Some("hubot@acme.example")),
            member(103, "defunkt", false, true, Some("chris@acme.example")),
            member(104, "pjhyett", false, true, None),
            member(105, "mojombo", false, true, None),
        ];
        s.outside = vec![Member { two_factor: false, ..Member::new(201, "contractor") }];
        s.teams = vec![
            Team { id: 1, slug: "platform".into(), members: vec![101, 103] },
            Team { id: 2, slug: "security".into(), members: vec![101, 102, 105] },
        ];
        s.saml_enabled = true;
    });
}

fn spec(base: &str, page_size: u32, outside: bool) -> ConnectionSpec {
    serde_json::from_value(json!({
        "category": "VersionControl",
        "provider": {"type": "github", "github": {
            "organization": ORG, "apiUrl": base, "includeTeams": true, "includeOutsideCollaborators": outside,
        }},
        "credentialsSecretRef": {"name": "gh"},
        "network": {"allowLoopback": true},
        "pageSize": page_size,
    }))
    .expect("a valid github spec")
}

fn settings(spec: &ConnectionSpec) -> &GitHubSettings {
    match &spec.provider {
        Provider::GitHub(settings) => settings,
        other => panic!("not github: {other:?}"),
    }
}

fn token_inputs(token: &str) -> ProviderInputs {
    ProviderInputs { secret: BTreeMap::from([("token".to_string(), token.as_bytes().to_vec())]), csv_data: None }
}

fn connector(fixture: &GitHubFixture, page_size: u32, outside: bool, inputs: &ProviderInputs) -> GitHubConnector {
    idsync::tls::install_crypto_provider();
    let spec = spec(&fixture.base, page_size, outside);
    GitHubConnector::new(&spec, settings(&spec), inputs).expect("a connector")
}

struct Read {
    accounts: Vec<Account>,
    pages: u64,
    notes: Vec<String>,
}

async fn read(connector: &mut GitHubConnector) -> Result<Read, ConnectorError> {
    let plan = connector.begin(SyncMode::Delta, None).await?;
    assert_eq!(plan.kind, ReadKind::Full, "GitHub has no deltas");
    assert!(plan.reason.is_some(), "a Delta that runs as Full says why");
    let mut accounts = Vec::new();
    let mut pages = 0;
    while let Some(page) = connector.next_page().await? {
        pages += 1;
        assert_eq!(page.number, pages);
        accounts.extend(page.accounts);
    }
    assert_eq!(connector.cursor(), None);
    Ok(Read { accounts, pages, notes: connector.notes() })
}

#[test]
fn the_openapi_check_catches_what_github_would_not_send() {
    let spec = openapi::description();
    let exchange = |query: Vec<(&str, &str)>, status: u16, body: Value| openapi::Exchange {
        method: "GET".into(),
        path: "/orgs/acme/members".into(),
        query: query.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        request_body: None,
        status,
        response_body: Some(body),
    };
    let user = |id: u64, login: &str| {
        json!({"login": login, "id": id, "node_id": "U", "avatar_url": "a", "gravatar_id": "", "url": "u",
               "html_url": "h", "followers_url": "f", "following_url": "f", "gists_url": "g", "starred_url": "s",
               "subscriptions_url": "s", "organizations_url": "o", "repos_url": "r", "events_url": "e",
               "received_events_url": "r", "type": "User", "site_admin": false})
    };
    let good = exchange(vec![("per_page", "2"), ("role", "admin")], 200, json!([user(1, "a")]));
    assert_eq!(spec.check(&good), Vec::<String>::new());
    let mut bad_user = user(1, "a");
    bad_user.as_object_mut().expect("object").remove("login");
    let problems = spec.check(&exchange(vec![], 200, json!([bad_user])));
    assert!(problems.iter().any(|p| p.contains("\"login\" missing")), "{problems:?}");
    let problems = spec.check(&exchange(vec![("role", "owner")], 200, json!([])));
    assert!(problems.iter().any(|p| p.contains("is not one of")), "{problems:?}");
    let problems = spec.check(&exchange(vec![("since", "5")], 200, json!([])));
    assert!(problems.iter().any(|p| p.contains("not declared")), "{problems:?}");
    let problems = spec.check(&exchange(vec![], 200, json!([user(1, "a")]).get(0).cloned().unwrap_or_default()));
    assert!(problems.iter().any(|p| p.contains("not of type array")), "{problems:?}");
    let mut nowhere = good.clone();
    nowhere.path = "/orgs/acme/people".into();
    assert_eq!(spec.check(&nowhere).len(), 1);
}

#[tokio::test]
async fn a_full_read_maps_members_with_role_2fa_saml_e_mail_and_teams() {
    let fixture = GitHubFixture::start(TOKEN).await;
    seed(&fixture);
    let mut connector = connector(&fixture, 2, true, &token_inputs(TOKEN));
    let first = read(&mut connector).await.expect("a read");
    assert_eq!(first.pages, 4, "three pages of members by two, one of outside collaborators");
    let by_id: HashMap<&str, &Account> = first.accounts.iter().map(|a| (a.id.as_str(), a)).collect();
    assert_eq!(by_id.len(), 6);
    let octocat = by_id["101"];
    assert_eq!(octocat.username.as_deref(), Some("octocat"));
    assert_eq!(octocat.email.as_deref(), Some("mona@acme.example"));
    assert_eq!(octocat.display_name.as_deref(), Some("Given101 Family101"));
    assert_eq!(octocat.groups, ["platform", "security"]);
    assert_eq!(octocat.attributes["role"], "admin");
    assert_eq!(octocat.attributes["twoFactorEnabled"], true);
    let hubot = by_id["102"];
    assert_eq!(
        (hubot.attributes["role"].as_str(), &hubot.attributes["twoFactorEnabled"]),
        (Some("member"), &json!(false))
    );
    assert_eq!(hubot.groups, ["security"]);
    assert_eq!(by_id["104"].email, None, "no SAML identity, no e-mail");
    assert!(by_id["104"].groups.is_empty());
    let contractor = by_id["201"];
    assert_eq!(contractor.attributes["role"], "outside_collaborator");
    assert_eq!(contractor.attributes["twoFactorEnabled"], false);
    assert!(first.notes.iter().all(|n| !n.contains("304")), "{:?}", first.notes);

    // Unchanged: every GET is answered 304 and the accounts are the same.
    let before = fixture.with(|s| s.log.len());
    let mut again = connector_again(&fixture);
    let second = read(&mut again).await.expect("a second read");
    assert_eq!(second.accounts, first.accounts);
    let (requests, not_modified) = fixture.with(|s| (s.log.len() - before, s.not_modified));
    assert_eq!(not_modified, requests, "every REST request of an unchanged read is a 304");
    assert!(second.notes.iter().any(|n| n.contains("answered 304 Not Modified")), "{:?}", second.notes);
    assert!(fixture.assert_valid() > 20);
}

fn connector_again(fixture: &GitHubFixture) -> GitHubConnector {
    connector(fixture, 2, true, &token_inputs(TOKEN))
}

#[tokio::test]
async fn a_github_app_signs_in_with_a_jwt_and_fetches_its_token_again_before_it_expires() {
    let fixture = GitHubFixture::start("no-personal-token-here").await;
    seed(&fixture);
    let public = idsync::connectors::github::app::AppCredentials::new("4711", "42", APP_KEY)
        .expect("the test key")
        .public_key_der();
    fixture.with(|s| s.app = Some((4711, 42, public.clone(), 3600)));
    let mut inputs = ProviderInputs::default();
    for (key, value) in [("appId", "4711"), ("installationId", "42"), ("privateKey", APP_KEY)] {
        inputs.secret.insert(key.into(), value.as_bytes().to_vec());
    }
    let mut app = connector(&fixture, 2, false, &inputs);
    let read_one = read(&mut app).await.expect("a read as the App");
    assert_eq!(read_one.accounts.len(), 5);
    assert_eq!(fixture.with(|s| s.token_exchanges), 1, "one installation token serves a whole read");

    // Tokens that expire within five minutes are fetched again before use.
    fixture.with(|s| s.app = Some((4711, 42, public, 240)));
    let mut app = connector(&fixture, 2, false, &inputs);
    let exchanges = fixture.with(|s| s.token_exchanges);
    read(&mut app).await.expect("a read with short-lived tokens");
    assert!(fixture.with(|s| s.token_exchanges) - exchanges > 2, "short-lived tokens are refreshed");

    // The wrong installation: a configuration error naming the key.
    inputs.secret.insert("installationId".into(), b"43".to_vec());
    let mut wrong = connector(&fixture, 2, false, &inputs);
    let e = read(&mut wrong).await.err().expect("no such installation");
    assert!(e.is_stalled() && e.to_string().contains("installationId"), "{e}");
    fixture.assert_valid();
}

#[tokio::test]
async fn rate_limits_are_waited_out_and_named() {
    let fixture = GitHubFixture::start(TOKEN).await;
    seed(&fixture);
    fixture.with(|s| {
        s.throttles.push_back(Throttle::Primary { reset_in: 2 });
        s.throttles.push_back(Throttle::Secondary { retry_after: 1 });
    });
    let mut connector = connector(&fixture, 2, false, &token_inputs(TOKEN));
    let read = read(&mut connector).await.expect("the read waits and succeeds");
    assert_eq!(read.accounts.len(), 5);
    let notes = read.notes.join("; ");
    assert!(notes.contains("s for GitHub's primary rate limit (X-RateLimit-Reset)"), "{notes}");
    assert!(notes.contains("waited 1s for GitHub's secondary rate limit (Retry-After)"), "{notes}");
    fixture.assert_valid();
}

#[tokio::test]
async fn bad_credentials_are_unauthorized_and_never_shown() {
    let fixture = GitHubFixture::start(TOKEN).await;
    seed(&fixture);
    let wrong = "ghp_WRONGsecret0815";
    let mut connector = connector(&fixture, 2, false, &token_inputs(wrong));
    let e = read(&mut connector).await.err().expect("a wrong token fails");
    assert!(matches!(e, ConnectorError::Unauthorized { .. }) && e.is_stalled(), "{e:?}");
    assert!(e.to_string().contains("answered HTTP 401 Unauthorized: Bad credentials"), "{e}");
    for text in [e.to_string(), format!("{e:?}"), format!("{connector:?}")] {
        assert!(!text.contains(wrong) && !text.contains("WRONGsecret"), "{text}");
    }
    fixture.assert_valid();
}

fn sync_job() -> idsync::sync::job::SyncJob {
    idsync::sync::job::SyncJob {
        connection: ConnectionRef::new("default", "gh"),
        mode: SyncMode::Full,
        trigger: Trigger::Requested,
        request: None,
        holder: "test".into(),
        dry_run: false,
        confirm_deletes: false,
        safeguard: idsync_api::connection::ImportSafeguard { max_delete_percent: 100, ..Default::default() },
        settings_hash: "github".into(),
        full_sync_interval: Duration::from_secs(24 * 3600),
        max_duration: Duration::from_secs(600),
    }
}

/// GitHub pages by offset: a member removed after page 1 shifts the next
/// page, and the listing never names one live member. The engine asks
/// GitHub about every stored member the listing missed, so the live one
/// stays; the removed one goes on the next sync.
#[tokio::test]
async fn a_member_removed_during_a_read_never_deletes_a_live_one() {
    let fixture = GitHubFixture::start(TOKEN).await;
    seed(&fixture);
    let dir = tempfile::tempdir().expect("dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("idsync.db")).expect("store"));
    let conn = ConnectionRef::new("default", "gh");
    let run = |store: Arc<dyn Store>| {
        let connector = Box::new(connector_again(&fixture));
        async move { idsync::sync::job::run(sync_job(), connector, store, idsync::sync::cancel::Cancel::new()).await }
    };
    let stored = || -> BTreeSet<String> {
        store.list_accounts(&conn, None, 100).expect("accounts").into_iter().map(|a| a.id).collect()
    };
    let first = run(store.clone()).await;
    assert_eq!((first.outcome, first.counts.created), (RunOutcome::Succeeded, 6), "{first:?}");

    // hubot (page 1) leaves as page 1 is served: defunkt moves onto page 1
    // and page 2 starts at pjhyett.
    fixture.with(|s| s.remove_after_first_page = Some(102));
    let second = run(store.clone()).await;
    assert_eq!(second.outcome, RunOutcome::Succeeded, "{second:?}");
    assert_eq!(second.counts.deleted, 0, "{second:?}");
    assert!(second.message.contains("1 account(s) the listing skipped are still at the source"), "{}", second.message);
    assert!(stored().contains("103"), "the live member the listing skipped was deleted");

    let third = run(store.clone()).await;
    assert_eq!((third.outcome, third.counts.deleted), (RunOutcome::Succeeded, 1), "{third:?}");
    assert!(!stored().contains("102"));
    let fourth = run(store.clone()).await;
    assert_eq!((fourth.counts.created, fourth.counts.updated, fourth.counts.deleted), (0, 0, 0), "{fourth:?}");
    assert_eq!(fourth.counts.unchanged, 5, "{fourth:?}");
    fixture.assert_valid();
}

/// The github provider through the operator: a bad token stalls the
/// Connection; a good one syncs members with role, 2FA, SAML e-mail and
/// teams; an unchanged organization is answered by 304s; a removed member
/// is deleted and a renamed one updated; rate limits are waited out and
/// named in the status; a server that dies mid-sync changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_github_connection_through_the_operator() {
    use idsync_api::resync_request::Phase;
    use idsync_api::{Connection, ResyncRequest};
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{Api, ListParams};

    let fixture = GitHubFixture::start(TOKEN).await;
    seed(&fixture);
    let common::operator::Started { h, operator, data, .. } = common::operator::start_operator().await;
    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let secret = |token: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "idsync.dev/credentials",
               "metadata": {"name": "gh-creds"}, "stringData": {"token": token}})
    };
    let run = |name: &'static str| {
        let h = &h;
        async move {
            h.create_request(ResyncRequest::test(name).connections(["gh"]).full()).await;
            h.finished_request(name, Duration::from_secs(90)).await
        }
    };
    let status_message = || async {
        let connection = connections.get("gh").await.expect("connection");
        let conditions = connection.status.expect("status").conditions;
        idsync_api::conditions::find(&conditions, "Ready").map(|c| c.message.clone()).unwrap_or_default()
    };
    let wrong = "ghp_NOTtheTOKEN4711";
    h.apply_json(secret(wrong)).await;
    h.apply_json(json!({
        "apiVersion": "idsync.dev/v1alpha1", "kind": "Connection", "metadata": {"name": "gh"},
        "spec": {
            "category": "VersionControl",
            "provider": {"type": "github", "github": {"organization": ORG, "apiUrl": fixture.base, "includeTeams": true}},
            "credentialsSecretRef": {"name": "gh-creds"},
            "network": {"allowLoopback": true},
            "pageSize": 2,
            "importSafeguard": {"maxDeletePercent": 100},
        },
    }))
    .await;

    let refused = run("bad-token").await;
    assert_eq!(refused.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    let connection = connections.get("gh").await.expect("connection");
    let stalled = idsync_api::conditions::find(&connection.status.expect("status").conditions, "Stalled")
        .cloned()
        .expect("Stalled");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "Unauthorized"), "{stalled:?}");
    assert!(stalled.message.contains("Bad credentials"), "{}", stalled.message);

    h.apply_json(secret(TOKEN)).await;
    let good = run("first").await;
    assert_eq!(good.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", good.status);
    let store = SqliteStore::open(&data.path().join("idsync.db")).expect("store");
    let conn = ConnectionRef::new("default", "gh");
    let accounts = || -> BTreeMap<String, Account> {
        store.list_accounts(&conn, None, 100).expect("accounts").into_iter().map(|a| (a.id.clone(), a)).collect()
    };
    let first = accounts();
    assert_eq!(first.len(), 5);
    assert_eq!(first["101"].email.as_deref(), Some("mona@acme.example"));
    assert_eq!(first["101"].attributes["role"], "admin");
    assert_eq!(first["102"].attributes["twoFactorEnabled"], false);
    assert_eq!(first["105"].groups, ["security"]);

    // Unchanged: 304s, and every account counts as unchanged.
    let not_modified = fixture.with(|s| s.not_modified);
    let second = run("unchanged").await;
    assert_eq!(second.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded));
    assert!(fixture.with(|s| s.not_modified) > not_modified, "no 304s");
    let message = status_message().await;
    assert!(message.contains("unchanged 5") && message.contains("answered 304 Not Modified"), "{message}");
    assert_eq!(accounts(), first);

    // A member leaves and another renames their login: delete and update.
    fixture.with(|s| {
        s.members.retain(|m| m.id != 104);
        if let Some(m) = s.members.iter_mut().find(|m| m.id == 103) {
            m.login = "chris".into();
        }
    });
    run("changed").await;
    let message = status_message().await;
    assert!(message.contains("created 0, updated 1, deleted 1, unchanged 3"), "{message}");
    let third = accounts();
    assert!(!third.contains_key("104"));
    assert_eq!(third["103"].username.as_deref(), Some("chris"));
    run("quiet").await;
    assert!(status_message().await.contains("created 0, updated 0, deleted 0, unchanged 4"));

    // Rate limits: waited out, and the wait is in the status.
    fixture.with(|s| s.throttles.push_back(Throttle::Primary { reset_in: 3 }));
    let primary = run("primary-limit").await;
    assert_eq!(primary.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", primary.status);
    let message = status_message().await;
    assert!(message.contains("for GitHub's primary rate limit (X-RateLimit-Reset)"), "{message}");
    fixture.with(|s| s.throttles.push_back(Throttle::Secondary { retry_after: 2 }));
    run("secondary-limit").await;
    let message = status_message().await;
    assert!(message.contains("waited 2s for GitHub's secondary rate limit (Retry-After)"), "{message}");

    // The server dies when the second page of members is asked for: the
    // sync fails on page 2 and the store is as it was.
    let before = accounts();
    fixture.with(|s| {
        s.members.push(Member::new(106, "newcomer"));
        s.members.iter_mut().for_each(|m| m.login.push_str("-renamed"));
        s.die_at_members_page = Some(2);
    });
    let died = run("dies").await;
    assert_eq!(died.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed), "{:?}", died.status);
    let message =
        connections.get("gh").await.expect("connection").status.and_then(|s| s.last_result).map(|r| r.message);
    assert!(message.as_deref().is_some_and(|m| m.starts_with("page 2: ")), "{message:?}");
    assert_eq!(accounts(), before, "a sync whose server died changed the store");

    // No credential anywhere the operator writes.
    let connection = serde_json::to_string(&connections.get("gh").await.expect("connection")).expect("json");
    let events: Vec<Event> =
        Api::namespaced(h.client.clone(), "default").list(&ListParams::default()).await.expect("events").items;
    let events = serde_json::to_string(&events).expect("json");
    for text in [connection, events] {
        assert!(!text.contains(TOKEN) && !text.contains(wrong), "a credential leaked: {text}");
    }
    fixture.assert_valid();
    operator.stop().await;
}
