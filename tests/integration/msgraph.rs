//! The msgraph provider against the local Graph fixture
//! (`tests/fixtures/msgraph/server.rs`): its responses checked against
//! Microsoft's own Python SDK, and the provider end to end through the
//! operator (full, deltas, 410 → Full, deletions, renames, throttling, bad
//! credentials, a server dying mid-sync).

use crate::common;

#[path = "../fixtures/msgraph/server.rs"]
mod graph_server;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use graph_server::{CLIENT_ID, CLIENT_SECRET, GraphServer, TENANT, user, user_id};
use idsync::model::{Account, ConnectionRef};
use idsync::store::AccountStore;
use idsync_api::resync_request::{Phase, TargetPhase, TargetStatus};
use idsync_api::{Connection, ResyncRequest};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

// --- the fixture, as Microsoft's SDK reads it -------------------------------

struct Responses {
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Responses {
    /// Sends a request and keeps its body as `KIND__NAME.json`.
    async fn keep(&self, kind: &str, name: &str, request: reqwest::RequestBuilder, status: u16) -> Value {
        let response = request.send().await.expect("the fixture answers");
        assert_eq!(response.status().as_u16(), status, "{kind}__{name}");
        let body = response.bytes().await.expect("a body");
        std::fs::write(self.dir.path().join(format!("{kind}__{name}.json")), &body).expect("write");
        serde_json::from_slice(&body).expect("JSON")
    }
}

#[tokio::test]
async fn the_fixture_answers_as_microsofts_sdk_reads_graph() {
    idsync::tls::install_crypto_provider();
    let server = GraphServer::start().await;
    for i in 0..5 {
        server.put_user(user(i));
    }
    server.set_manager(&user_id(1), Some(&user_id(0)));
    server.put_group("g1", "Sales", &[&user_id(1), &user_id(2)]);
    let r = Responses { dir: tempfile::tempdir().unwrap(), http: reqwest::Client::new() };
    let token_url = format!("{}/login/{TENANT}/oauth2/v2.0/token", server.base);
    let scope = format!("{}/.default", server.base);
    let form = |secret: &str, client: &str| {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("client_id", client),
                ("scope", scope.as_str()),
                ("grant_type", "client_credentials"),
                ("client_secret", secret),
            ])
            .finish();
        r.http.post(&token_url).header("content-type", "application/x-www-form-urlencoded").body(body)
    };
    let token = r.keep("token", "client_secret", form(CLIENT_SECRET, CLIENT_ID), 200).await;
    r.keep("oauth_error", "bad_secret", form("wrong", CLIENT_ID), 401).await;
    r.keep("oauth_error", "unknown_client", form(CLIENT_SECRET, "nobody"), 400).await;
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let get_sized = |url: &str, page_size: u32| {
        r.http.get(url).header("authorization", &bearer).header("prefer", format!("odata.maxpagesize={page_size}"))
    };
    let get = |url: &str| get_sized(url, 2);

    let select = "id,userPrincipalName,mail,displayName,givenName,surname,accountEnabled,userType,employeeId,\
                  employeeType,department,jobTitle,companyName,employeeHireDate,employeeLeaveDateTime,assignedLicenses";
    let first = format!("{}/v1.0/users/delta?$select={select}&$expand=manager($select=id)", server.base);
    let mut page = r.keep("users_delta", "first", get(&first), 200).await;
    let mut n = 0;
    while let Some(next) = page["@odata.nextLink"].as_str().map(String::from) {
        n += 1;
        page = r.keep("users_delta", &format!("page{n}"), get(&next), 200).await;
    }
    let delta_link = page["@odata.deltaLink"].as_str().expect("a deltaLink ends the round").to_string();
    server.update_user(&user_id(2), |u| u["displayName"] = json!("Renamed Two"));
    server.remove_user(&user_id(3), "deleted");
    server.remove_user(&user_id(4), "changed");
    let changes = r.keep("users_delta", "changes", get_sized(&delta_link, 10), 200).await;
    let removed: Vec<&Value> =
        changes["value"].as_array().unwrap().iter().filter(|u| u.get("@removed").is_some()).collect();
    assert_eq!(removed.len(), 2, "{changes}");

    let groups = r
        .keep(
            "groups_delta",
            "first",
            get(&format!("{}/v1.0/groups/delta?$select=displayName,members", server.base)),
            200,
        )
        .await;
    server.add_member("g1", &user_id(0));
    server.remove_member("g1", &user_id(2));
    let members = r.keep("groups_delta", "members", get(groups["@odata.deltaLink"].as_str().unwrap()), 200).await;
    assert_eq!(members["value"][0]["members@delta"].as_array().unwrap().len(), 2, "{members}");
    r.keep(
        "user",
        "one",
        get(&format!("{}/v1.0/users/{}?$select={select}&$expand=manager($select=id)", server.base, user_id(1))),
        200,
    )
    .await;
    r.keep(
        "group_collection",
        "member_of",
        get(&format!(
            "{}/v1.0/users/{}/memberOf/microsoft.graph.group?$select=id,displayName",
            server.base,
            user_id(1)
        )),
        200,
    )
    .await;
    r.keep(
        "user_collection",
        "members",
        get(&format!("{}/v1.0/groups/g1/members/microsoft.graph.user?$select=id", server.base)),
        200,
    )
    .await;
    r.keep("odata_error", "not_found", get(&format!("{}/v1.0/users/nobody", server.base)), 404).await;

    server.expire_delta_tokens();
    r.keep("odata_error", "sync_state_not_found", get(&delta_link), 410).await;
    let fresh = r.keep("users_delta", "again", get(&first), 200).await;
    let mut next = fresh;
    while let Some(link) = next["@odata.nextLink"].as_str().map(String::from) {
        next = get(&link).send().await.unwrap().json().await.unwrap();
    }
    server.require_resync();
    r.keep("odata_error", "resync_required", get(next["@odata.deltaLink"].as_str().unwrap()), 410).await;
    r.keep("odata_error", "unauthorized", r.http.get(&first).header("authorization", "Bearer forged"), 401).await;
    server.throttle(&[429]);
    let throttled = get(&first).send().await.unwrap();
    assert_eq!(throttled.status().as_u16(), 429);
    assert_eq!(throttled.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body = throttled.bytes().await.unwrap();
    std::fs::write(r.dir.path().join("odata_error__too_many_requests.json"), &body).unwrap();

    // Microsoft's SDK reads each as the fixture meant it.
    let script = common::repo("scripts/graph-sdk-check.sh");
    let output = tokio::process::Command::new(&script)
        .arg(r.dir.path())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}:\n{stdout}\n{}", script.display(), String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("responses read by msgraph-sdk as the fixture meant them"), "{stdout}");
    assert!(
        stdout.contains("ok users_delta__changes.json") && stdout.contains("ok groups_delta__members.json"),
        "{stdout}"
    );
}

// --- through the operator --------------------------------------------------

/// Every log line of this test binary, for checking that no secret reaches
/// one. Installed once; the operator's runtime threads log into it too.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if let Ok(mut logs) = self.0.lock() {
                    logs.extend_from_slice(buf);
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(logs.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,idsync=debug"))
            .finish();
        // Another test may have set one first: then this one checks less.
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
    .clone()
}

fn secret(client_secret: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "idsync.dev/credentials",
           "metadata": {"name": "entra-creds"}, "stringData": {"clientSecret": client_secret}})
}

fn connection(server: &GraphServer, page_size: u32) -> Value {
    json!({
        "apiVersion": "idsync.dev/v1alpha1", "kind": "Connection",
        "metadata": {"name": "entra", "namespace": "default"},
        "spec": {
            "category": "IdP",
            "provider": {"type": "msgraph", "msgraph": {
                "tenantId": TENANT, "clientId": CLIENT_ID,
                "graphEndpoint": server.base, "loginEndpoint": server.login_endpoint(),
                "includeGroups": true,
            }},
            "credentialsSecretRef": {"name": "entra-creds"},
            "schedule": {"cron": ["0 3 1 1 *"]},
            "pageSize": page_size,
            "importSafeguard": {"maxDeletePercent": 100},
            // The fixture runs on the operator's host.
            "network": {"allowLoopback": true},
        }
    })
}

fn target(request: &ResyncRequest) -> TargetStatus {
    request.status.as_ref().and_then(|s| s.targets.first().cloned()).expect("a target")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_msgraph_connection_through_the_operator() {
    let logs = captured_logs();
    let server = GraphServer::start().await;
    for i in 0..40 {
        server.put_user(user(i));
    }
    server.set_manager(&user_id(5), Some(&user_id(0)));
    server.put_group("g-eng", "Engineering", &[&user_id(1), &user_id(2), &user_id(3)]);
    let common::operator::Started { h, operator, data, .. } = common::operator::start_operator().await;
    let run = |name: &'static str, full: bool| {
        let h = &h;
        async move {
            let request = ResyncRequest::test(name).connections(["entra"]);
            h.create_request(if full { request.full() } else { request }).await;
            h.finished_request(name, Duration::from_secs(90)).await
        }
    };
    let store = idsync::store::SqliteStore::open(&data.path().join("idsync.db")).unwrap();
    let conn = ConnectionRef { namespace: "default".into(), name: "entra".into() };
    let stored = || -> BTreeMap<String, Account> {
        store.list_accounts(&conn, None, 10_000).unwrap().into_iter().map(|a| (a.id.clone(), a)).collect()
    };

    // Bad credentials: Stalled Unauthorized, the secret nowhere.
    let wrong = "not-the-client-SECRET-0815";
    h.apply_json(secret(wrong)).await;
    h.apply_json(connection(&server, 7)).await;
    let refused = run("bad-secret", true).await;
    assert_eq!(refused.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let status = connections.get("entra").await.unwrap().status.unwrap();
    let stalled = idsync_api::conditions::find(&status.conditions, "Stalled").cloned().unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "Unauthorized"), "{stalled:?}");
    assert!(stalled.message.contains("invalid_client: AADSTS7000215"), "{}", stalled.message);
    let events: Api<Event> = Api::namespaced(h.client.clone(), "default");
    let event_texts: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| format!("{} {}", e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect();
    assert!(event_texts.iter().any(|e| e.contains("AADSTS7000215")), "{event_texts:?}");
    let status_text = serde_json::to_string(&status).unwrap() + &serde_json::to_string(&refused.status).unwrap();
    for text in event_texts.iter().chain([&status_text]) {
        assert!(!text.contains(wrong) && !text.contains("SECRET"), "{text}");
    }

    // The right secret: a full sync.
    h.apply_json(secret(CLIENT_SECRET)).await;
    let full = run("full", true).await;
    assert_eq!(full.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", full.status);
    assert_eq!(target(&full).counts.map(|c| c.created), Some(40));
    let after_full = stored();
    assert_eq!(after_full.len(), 40);
    assert_eq!(after_full[&user_id(2)].groups, vec!["Engineering"]);
    assert_eq!(after_full[&user_id(5)].attributes["manager"], json!(user_id(0)));

    // A delta: a rename, two removals, a new user, a membership change.
    server.update_user(&user_id(6), |u| u["userPrincipalName"] = json!("renamed6@contoso.onmicrosoft.com"));
    server.remove_user(&user_id(7), "deleted");
    server.remove_user(&user_id(8), "changed");
    server.put_user(user(100));
    server.add_member("g-eng", &user_id(9));
    let delta = run("delta", false).await;
    let t = target(&delta);
    assert_eq!((t.phase, t.mode), (TargetPhase::Succeeded, Some(idsync_api::SyncMode::Delta)), "{t:?}");
    let counts = t.counts.unwrap();
    assert_eq!((counts.created, counts.updated, counts.deleted), (1, 2, 2), "{t:?}");
    let after_delta = stored();
    assert_eq!(after_delta.len(), 39);
    assert_eq!(after_delta[&user_id(6)].username.as_deref(), Some("renamed6@contoso.onmicrosoft.com"));
    assert_eq!(after_delta[&user_id(6)].email, after_full[&user_id(6)].email, "a rename is an update of the same id");
    assert!(!after_delta.contains_key(&user_id(7)) && !after_delta.contains_key(&user_id(8)));
    assert_eq!(after_delta[&user_id(9)].groups, vec!["Engineering"]);

    // A third sync with nothing changed changes nothing.
    let quiet = run("quiet", false).await;
    let t = target(&quiet);
    assert_eq!(t.mode, Some(idsync_api::SyncMode::Delta), "{t:?}");
    let counts = t.counts.unwrap();
    assert_eq!((counts.created, counts.updated, counts.deleted), (0, 0, 0), "{t:?}");
    assert_eq!(stored(), after_delta);

    // Throttled: 429 then 503, each with Retry-After, then the answer.
    server.update_user(&user_id(10), |u| u["jobTitle"] = json!("Chief"));
    server.throttle(&[429, 503]);
    let throttled = run("throttled", false).await;
    assert_eq!(target(&throttled).phase, TargetPhase::Succeeded, "{:?}", throttled.status);
    assert_eq!(stored()[&user_id(10)].attributes["jobTitle"], "Chief");
    let log = server.log();
    assert!(log.iter().any(|l| l.ends_with("-> 429")) && log.iter().any(|l| l.ends_with("-> 503")), "{log:?}");

    // The delta token is gone: the sync runs Full on its own and says why.
    server.expire_delta_tokens();
    server.remove_user(&user_id(11), "deleted");
    let gone = run("token-gone", false).await;
    let t = target(&gone);
    assert_eq!((t.phase, t.mode), (TargetPhase::Succeeded, Some(idsync_api::SyncMode::Full)), "{t:?}");
    assert!(t.message.contains("syncStateNotFound"), "{}", t.message);
    assert_eq!(t.counts.unwrap().deleted, 1);
    assert_eq!(stored().len(), 38);

    // A new mapping (one more property read) needs a new delta token: the
    // next sync is Full on its own.
    let mut mapped = connection(&server, 7);
    mapped["spec"]["provider"]["msgraph"]["extraAttributes"] = json!(["officeLocation"]);
    h.apply_json(mapped).await;
    let remapped = run("new-mapping", false).await;
    let t = target(&remapped);
    assert_eq!((t.phase, t.mode), (TargetPhase::Succeeded, Some(idsync_api::SyncMode::Full)), "{t:?}");
    assert!(server.log().iter().any(|l| l.contains("officeLocation")), "the new property is read");
    let before_death = stored();
    assert_eq!(before_death[&user_id(12)].attributes["officeLocation"], "B0");
    assert_eq!(before_death.len(), 38);

    // The server dies in the middle of a full sync: the store is unchanged.
    h.apply_json(connection(&server, 1)).await;
    server.update_user(&user_id(12), |u| u["department"] = json!("Moved"));
    server.set_delay(Duration::from_millis(200));
    h.create_request(ResyncRequest::test("dies").connections(["entra"]).full()).await;
    let requests: Api<ResyncRequest> = Api::namespaced(h.client.clone(), "default");
    common::eventually(Duration::from_secs(30), || async {
        let r = requests.get("dies").await.ok()?;
        (r.status?.targets.first()?.phase == TargetPhase::Running).then_some(())
    })
    .await
    .expect("the sync started");
    common::eventually(Duration::from_secs(30), || async {
        (server.log().iter().filter(|l| l.contains("users/delta?$skiptoken")).count() >= 3).then_some(())
    })
    .await
    .expect("the sync is paging");
    server.kill();
    let died = h.finished_request("dies", Duration::from_secs(120)).await;
    assert_eq!(died.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed), "{:?}", died.status);
    assert_eq!(stored(), before_death, "a sync whose server died changed the store");
    operator.stop().await;

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(!logs.contains(wrong) && !logs.contains(CLIENT_SECRET), "a secret reached the logs");
    assert!(!logs.contains("fixture-access-"), "an access token reached the logs");
}
