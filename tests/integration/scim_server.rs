//! The scim provider against a real SCIM 2.0 server: scim2-server, installed
//! and started by `scripts/scim-server.sh`, seeded through its own SCIM API.
//! The connector is driven directly (no Kubernetes).

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use idsync::connectors::scim::ScimConnector;
use idsync::connectors::{Connector, ConnectorError, ProviderInputs, ReadKind, ReadPlan};
use idsync::model::Account;
use idsync::model::Trigger;
use idsync_api::{Connection, SyncMode};
use serde_json::{Value, json};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const TOKEN: &str = "scim-test-token-4711";

/// A running scim2-server; killed when dropped.
struct ScimServer {
    base: String,
    http: reqwest::Client,
    _child: tokio::process::Child,
    _log_dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl ScimServer {
    async fn start() -> ScimServer {
        idsync::tls::install_crypto_provider();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/scim-server.sh");
        let log_dir = tempfile::tempdir().unwrap();
        let log_path = log_dir.path().join("server.log");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        // A port may be taken between free_port and the server's bind: retry.
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = tokio::process::Command::new(&script)
                .arg(port.to_string())
                .arg(TOKEN)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            let base = format!("http://127.0.0.1:{port}");
            // The first run installs the server: give it time.
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if output.contains("Address already in use") {
                        break;
                    }
                    panic!("scripts/scim-server.sh exited with {status}:\n{output}");
                }
                let ready = http
                    .get(format!("{base}/ServiceProviderConfig"))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    return ScimServer { base, http, _child: child, _log_dir: log_dir };
                }
                if Instant::now() > deadline {
                    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!("scim2-server did not answer within 300s:\n{output}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        panic!("could not find a free port for scim2-server");
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/scim+json");
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status}: {text}");
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
    }

    /// Creates a user; returns its id.
    async fn create_user(&self, user: Value) -> String {
        let created = self.call(reqwest::Method::POST, "/Users", Some(user)).await;
        created["id"].as_str().unwrap().to_string()
    }

    /// Creates many users, 16 at a time; returns their ids in order.
    async fn create_users(&self, users: Vec<Value>) -> Vec<String> {
        futures::stream::iter(users.into_iter().map(|u| self.create_user(u))).buffered(16).collect().await
    }

    async fn create_group(&self, name: &str, members: &[String]) -> String {
        let members: Vec<Value> = members.iter().map(|id| json!({"value": id})).collect();
        let group = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": name,
            "members": members,
        });
        self.call(reqwest::Method::POST, "/Groups", Some(group)).await["id"].as_str().unwrap().to_string()
    }

    async fn patch_user(&self, id: &str, operations: Value) {
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations});
        self.call(reqwest::Method::PATCH, &format!("/Users/{id}"), Some(patch)).await;
    }

    async fn patch_group(&self, id: &str, operations: Value) {
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations});
        self.call(reqwest::Method::PATCH, &format!("/Groups/{id}"), Some(patch)).await;
    }

    fn connector(&self, page_size: u32, token: &str) -> ScimConnector {
        let spec =
            Connection::test("idp").scim(&format!("{}/", self.base)).credentials("s").page_size(page_size).spec();
        let inputs = ProviderInputs {
            secret: BTreeMap::from([("token".to_string(), token.as_bytes().to_vec())]),
            csv_data: None,
        };
        ScimConnector::new(&spec, spec.expect_scim(), &inputs).unwrap()
    }
}

fn user(i: usize) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "userName": format!("user{i:03}"),
        "externalId": format!("EXT{i:03}"),
        "name": {"givenName": format!("Given{i}"), "familyName": format!("Family{i}")},
        "title": format!("Title{}", i % 3),
        "active": !i.is_multiple_of(5),
        "emails": [
            {"value": format!("home{i}@example.org"), "type": "home"},
            {"value": format!("user{i}@example.com"), "type": "work", "primary": true},
        ],
        ENTERPRISE: {
            "employeeNumber": format!("{}", 1000 + i),
            "department": format!("Dept{}", i % 4),
            "manager": {"value": "boss-id"},
        },
    })
}

struct Read {
    plan: ReadPlan,
    pages: usize,
    accounts: Vec<Account>,
    cursor: Option<String>,
}

async fn read(connector: &mut ScimConnector, mode: SyncMode, cursor: Option<&str>) -> Result<Read, ConnectorError> {
    let plan = connector.begin(mode, cursor).await?;
    let mut accounts = Vec::new();
    let mut pages = 0;
    while let Some(page) = connector.next_page().await? {
        pages += 1;
        assert_eq!(page.number, pages as u64);
        assert!(page.deleted.is_empty());
        accounts.extend(page.accounts);
    }
    Ok(Read { plan, pages, accounts, cursor: connector.cursor() })
}

#[tokio::test]
async fn full_sync_maps_every_user_with_groups() {
    let server = ScimServer::start().await;
    let ids = server.create_users((0..50).map(user).collect()).await;
    let even: Vec<String> = ids.iter().step_by(2).cloned().collect();
    server.create_group("even", &even).await;
    server.create_group("first-ten", &ids[..10]).await;
    server.create_group("empty", &[]).await;

    let mut connector = server.connector(500, TOKEN);
    let read = read(&mut connector, SyncMode::Full, None).await.unwrap();
    assert_eq!(read.plan, ReadPlan { kind: ReadKind::Full, reason: None });
    assert_eq!(read.accounts.len(), 50);
    assert!(read.cursor.is_some());
    let by_id: HashMap<&str, &Account> = read.accounts.iter().map(|a| (a.id.as_str(), a)).collect();
    for (i, id) in ids.iter().enumerate() {
        let account = by_id[id.as_str()];
        assert_eq!(account.username.as_deref(), Some(format!("user{i:03}").as_str()));
        assert_eq!(account.email.as_deref(), Some(format!("user{i}@example.com").as_str()));
        assert_eq!(account.display_name.as_deref(), Some(format!("Given{i} Family{i}").as_str()));
        assert_eq!(account.enabled, !i.is_multiple_of(5), "user{i}");
        let mut groups = Vec::new();
        if i.is_multiple_of(2) {
            groups.push("even".to_string());
        }
        if i < 10 {
            groups.push("first-ten".to_string());
        }
        assert_eq!(account.groups, groups, "user{i}");
        let attribute = |name: &str| account.attributes.get(name).and_then(Value::as_str).map(String::from);
        assert_eq!(attribute("externalId"), Some(format!("EXT{i:03}")));
        assert_eq!(attribute("title"), Some(format!("Title{}", i % 3)));
        assert_eq!(attribute("employeeNumber"), Some(format!("{}", 1000 + i)));
        assert_eq!(attribute("department"), Some(format!("Dept{}", i % 4)));
        assert_eq!(attribute("manager").as_deref(), Some("boss-id"));
        assert_eq!(attribute("givenName"), Some(format!("Given{i}")));
        assert_eq!(attribute("familyName"), Some(format!("Family{i}")));
        assert!(attribute("lastModified").is_some());
    }
}

#[tokio::test]
async fn pages_of_seven_over_500_users_arrive_once() {
    let server = ScimServer::start().await;
    let ids = server.create_users((0..500).map(user).collect()).await;
    let mut connector = server.connector(7, TOKEN);
    let read = read(&mut connector, SyncMode::Full, None).await.unwrap();
    assert_eq!(read.accounts.len(), 500);
    assert_eq!(read.pages, 500usize.div_ceil(7));
    let seen: BTreeSet<&str> = read.accounts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(seen.len(), 500, "no duplicates");
    assert_eq!(seen, ids.iter().map(String::as_str).collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn a_delta_read_yields_what_changed_since_the_cursor() {
    let server = ScimServer::start().await;
    let ids = server.create_users((0..20).map(user).collect()).await;
    let mut connector = server.connector(7, TOKEN);
    let full = read(&mut connector, SyncMode::Delta, None).await.unwrap();
    assert_eq!(full.plan, ReadPlan { kind: ReadKind::Full, reason: Some("no cursor yet".into()) });
    assert_eq!(full.accounts.len(), 20);
    let cursor = full.cursor.expect("a cursor after a full read");

    // Be safe with servers whose lastModified has a coarse resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.patch_user(&ids[3], json!([{"op": "replace", "path": "title", "value": "Boss"}])).await;
    let added = server.create_user(user(100)).await;

    let delta = read(&mut connector, SyncMode::Delta, Some(&cursor)).await.unwrap();
    assert_eq!(delta.plan, ReadPlan { kind: ReadKind::Delta, reason: None });
    let changed: BTreeSet<&str> = delta.accounts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(changed, BTreeSet::from([ids[3].as_str(), added.as_str()]));
    let patched = delta.accounts.iter().find(|a| a.id == ids[3]).unwrap();
    assert_eq!(patched.attributes["title"], "Boss");
    let next = delta.cursor.expect("a cursor after a delta");
    assert!(next.parse::<jiff::Timestamp>().unwrap() > cursor.parse::<jiff::Timestamp>().unwrap());

    // Nothing changed since: no accounts, the cursor stays.
    let quiet = read(&mut connector, SyncMode::Delta, Some(&next)).await.unwrap();
    assert_eq!(quiet.plan.kind, ReadKind::Delta);
    assert!(quiet.accounts.is_empty());
    assert_eq!(quiet.cursor.as_deref(), Some(next.as_str()));

    // A Full request reads everything whatever the cursor.
    let again = read(&mut connector, SyncMode::Full, Some(&next)).await.unwrap();
    assert_eq!(again.plan, ReadPlan { kind: ReadKind::Full, reason: None });
    assert_eq!(again.accounts.len(), 21);
}

#[tokio::test]
async fn a_renamed_user_keeps_its_id() {
    let server = ScimServer::start().await;
    let ids = server.create_users((0..3).map(user).collect()).await;
    let mut connector = server.connector(100, TOKEN);
    let before = read(&mut connector, SyncMode::Full, None).await.unwrap();
    let old = before.accounts.iter().find(|a| a.id == ids[1]).unwrap();
    assert_eq!(old.username.as_deref(), Some("user001"));

    server.patch_user(&ids[1], json!([{"op": "replace", "path": "userName", "value": "renamed"}])).await;
    let after = read(&mut connector, SyncMode::Full, None).await.unwrap();
    assert_eq!(after.accounts.len(), 3);
    let new = after.accounts.iter().find(|a| a.id == ids[1]).expect("the same id after the rename");
    assert_eq!(new.username.as_deref(), Some("renamed"));
    assert_eq!(new.email, old.email);
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_never_shown() {
    let server = ScimServer::start().await;
    server.create_users((0..2).map(user).collect()).await;
    let wrong = "wrong-SECRET-token-0815";
    let mut connector = server.connector(10, wrong);
    let e = read(&mut connector, SyncMode::Full, None).await.err().expect("a wrong token fails");
    assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e:?}");
    assert!(e.is_stalled());
    for text in [e.to_string(), format!("{e:?}"), format!("{connector:?}")] {
        assert!(!text.contains(wrong) && !text.contains("SECRET"), "{text}");
    }
    assert!(e.to_string().contains("401"), "{e}");
    eprintln!("wrong token: {e}");
}

/// The scim provider through the operator: a bad token stalls the
/// Connection, a good one syncs, and a server that dies mid-sync changes
/// nothing in the store.
#[tokio::test(flavor = "multi_thread")]
async fn a_scim_connection_through_the_operator() {
    use idsync::model::ConnectionRef;
    use idsync::store::{AccountStore, SqliteStore};
    use idsync_api::ResyncRequest;
    use idsync_api::resync_request::Phase;
    use kube::api::Api;

    let mut server = ScimServer::start().await;
    server.create_users((0..40).map(user).collect()).await;
    let common::operator::Started { h, operator, data, .. } = common::operator::start_operator().await;
    let apply = |value: Value| h.apply_json(value);
    let run = |name: &'static str| {
        let h = &h;
        async move {
            h.create_request(ResyncRequest::test(name).connections(["idp"]).full()).await;
            h.finished_request(name, Duration::from_secs(60)).await
        }
    };
    let secret = |token: &str| json!({"apiVersion": "v1", "kind": "Secret", "type": "idsync.dev/credentials", "metadata": {"name": "scim-creds"}, "stringData": {"token": token}});
    apply(secret("not-the-token-0815")).await;
    let idp = Connection::test("idp").scim(&format!("{}/", server.base)).credentials("scim-creds");
    apply(serde_json::to_value(idp.clone().page_size(5).build()).expect("json")).await;

    let refused = run("bad-token").await;
    assert_eq!(refused.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    let connection = Api::<Connection>::namespaced(h.client.clone(), "default").get("idp").await.unwrap();
    let conditions = connection.status.unwrap().conditions;
    let stalled = idsync_api::conditions::find(&conditions, "Stalled").cloned().unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "Unauthorized"), "{stalled:?}");
    assert!(!stalled.message.contains("not-the-token-0815"));

    apply(secret(TOKEN)).await;
    let good = run("good-token").await;
    assert_eq!(good.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:?}", good.status);
    let store = SqliteStore::open(&data.path().join("idsync.db")).unwrap();
    let conn = ConnectionRef { namespace: "default".into(), name: "idp".into() };
    let before = store.list_accounts(&conn, None, 1000).unwrap();
    assert_eq!(before.len(), 40);

    // One user a page, and the server dies part-way.
    apply(serde_json::to_value(idp.page_size(1).build()).expect("json")).await;
    server.patch_user(&before[0].id, json!([{"op": "replace", "path": "title", "value": "Changed"}])).await;
    // Enough users that one-a-page takes seconds, so the kill lands mid-read.
    server.create_users((1000..1600).map(user).collect()).await;
    h.create_request(ResyncRequest::test("dies").connections(["idp"]).full()).await;
    let requests: Api<ResyncRequest> = Api::namespaced(h.client.clone(), "default");
    common::eventually(Duration::from_secs(20), || async {
        let r = requests.get("dies").await.ok()?;
        (r.status?.targets.first()?.phase == idsync_api::resync_request::TargetPhase::Running).then_some(())
    })
    .await
    .expect("the sync started");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server._child.start_kill().unwrap();
    let died = h.finished_request("dies", Duration::from_secs(60)).await;
    assert_eq!(died.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed), "{:?}", died.status);
    assert_eq!(store.list_accounts(&conn, None, 1000).unwrap(), before, "a sync whose server died changed the store");
    operator.stop().await;
}

/// A ScimConnector with a hook that runs on the real server after the first
/// page has been read: how a deletion lands in the middle of a listing.
struct AfterFirstPage {
    inner: ScimConnector,
    hook: Option<futures::future::BoxFuture<'static, ()>>,
}

impl Connector for AfterFirstPage {
    fn capabilities(&self) -> idsync::connectors::Capabilities {
        self.inner.capabilities()
    }
    fn begin<'a>(
        &'a mut self,
        mode: SyncMode,
        cursor: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
        self.inner.begin(mode, cursor)
    }
    fn next_page(
        &mut self,
    ) -> futures::future::BoxFuture<'_, Result<Option<idsync::connectors::Page>, ConnectorError>> {
        Box::pin(async move {
            let page = self.inner.next_page().await?;
            if page.as_ref().is_some_and(|p| p.number == 1)
                && let Some(hook) = self.hook.take()
            {
                hook.await;
            }
            Ok(page)
        })
    }
    fn cursor(&self) -> Option<String> {
        self.inner.cursor()
    }
    fn still_present<'a>(
        &'a mut self,
        ids: &'a [String],
    ) -> futures::future::BoxFuture<'a, Result<Vec<Account>, ConnectorError>> {
        self.inner.still_present(ids)
    }
}

fn sync_job(dry_run: bool) -> idsync::sync::job::SyncJob {
    idsync::sync::job::SyncJob {
        connection: idsync::model::ConnectionRef::new("default", "idp"),
        mode: SyncMode::Full,
        trigger: Trigger::Requested,
        request: None,
        holder: "test".into(),
        dry_run,
        confirm_deletes: false,
        safeguard: Default::default(),
        settings_hash: "scim".into(),
        full_sync_interval: Duration::from_secs(24 * 3600),
        max_duration: Duration::from_secs(600),
    }
}

/// Offset paging shifts when a user is deleted during the read: the first
/// user of the next page is never listed. The engine asks the server about
/// every stored user the listing did not name before deleting it, so the
/// deleted user goes and the skipped live user stays.
#[tokio::test]
async fn a_deletion_during_a_full_read_never_deletes_a_live_user() {
    use idsync::store::{SqliteStore, Store};
    use std::sync::Arc;

    let server = ScimServer::start().await;
    let ids = server.create_users((0..25).map(user).collect()).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("idsync.db")).unwrap());
    let conn = idsync::model::ConnectionRef::new("default", "idp");
    let cancel = idsync::sync::cancel::Cancel::new;

    let first =
        idsync::sync::job::run(sync_job(false), Box::new(server.connector(5, TOKEN)), store.clone(), cancel()).await;
    assert_eq!(first.counts.created, 25, "{first:?}");

    // The listing order, to know which user page 2 will skip.
    let mut listing = server.connector(100, TOKEN);
    let order: Vec<String> =
        read(&mut listing, SyncMode::Full, None).await.unwrap().accounts.into_iter().map(|a| a.id).collect();
    assert_eq!(order.len(), 25);
    let deleted = order[1].clone();
    let skipped = order[5].clone();
    let connector = AfterFirstPage {
        inner: server.connector(5, TOKEN),
        hook: Some(Box::pin({
            let request = server.http.delete(format!("{}/Users/{deleted}", server.base)).bearer_auth(TOKEN);
            async move {
                let response = request.send().await.expect("DELETE");
                assert!(response.status().is_success(), "DELETE: {}", response.status());
            }
        })),
    };
    let second = idsync::sync::job::run(sync_job(false), Box::new(connector), store.clone(), cancel()).await;
    assert_eq!(second.outcome, idsync::model::RunOutcome::Succeeded, "{second:?}");
    // The deleted user was listed on page 1, before its deletion: this sync
    // keeps it; the skipped one was never listed and is kept too.
    assert_eq!(second.counts.deleted, 0, "{second:?}");
    assert!(second.message.contains("1 account(s) the listing skipped are still at the source"), "{}", second.message);
    let stored =
        || -> BTreeSet<String> { store.list_accounts(&conn, None, 100).unwrap().into_iter().map(|a| a.id).collect() };
    assert!(stored().contains(&skipped), "the live user the listing skipped was deleted");

    // The next sync sees the deletion, and only it.
    let third =
        idsync::sync::job::run(sync_job(false), Box::new(server.connector(5, TOKEN)), store.clone(), cancel()).await;
    assert_eq!((third.outcome, third.counts.deleted), (idsync::model::RunOutcome::Succeeded, 1), "{third:?}");
    assert_eq!(stored(), ids.iter().filter(|id| **id != deleted).cloned().collect::<BTreeSet<_>>());
}

/// Adding a member to a group changes no user's `meta.lastModified` (nor
/// does scim2-server fill `groups` on users): a delta reads the groups
/// changed since the cursor and their members, and the engine takes the
/// group off whoever left it. Across runs: the delta applies exactly the
/// membership changes, the next one changes nothing.
#[tokio::test]
async fn a_delta_sees_who_joined_and_left_a_group() {
    use idsync::model::{ConnectionRef, RunOutcome};
    use idsync::store::{SqliteStore, Store};
    use std::sync::Arc;

    let server = ScimServer::start().await;
    let ids = server.create_users((0..20).map(user).collect()).await;
    let eng = server.create_group("eng", &ids[..10]).await;
    let ops = server.create_group("ops", &ids[5..15]).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("idsync.db")).unwrap());
    let conn = ConnectionRef::new("default", "idp");
    let sync = |mode: SyncMode| {
        let store = store.clone();
        let connector = Box::new(server.connector(4, TOKEN));
        async move {
            let mut job = sync_job(false);
            job.mode = mode;
            let report = idsync::sync::job::run(job, connector, store, idsync::sync::cancel::Cancel::new()).await;
            assert_eq!(report.outcome, RunOutcome::Succeeded, "{report:?}");
            report
        }
    };
    let groups = || -> HashMap<String, Vec<String>> {
        store.list_accounts(&conn, None, 100).unwrap().into_iter().map(|a| (a.id, a.groups)).collect()
    };
    let names = |names: &[&str]| -> Vec<String> { names.iter().map(|n| n.to_string()).collect() };

    let first = sync(SyncMode::Full).await;
    assert_eq!(first.counts.created, 20, "{first:?}");
    assert_eq!(groups()[&ids[3]], names(&["eng"]));
    // A delta right after: whatever it re-reads is unchanged.
    let settled = sync(SyncMode::Delta).await;
    assert_eq!((settled.mode, settled.counts.updated), (SyncMode::Delta, 0), "{settled:?}");
    let before = groups();

    // Be safe with servers whose lastModified has a coarse resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // ids[15] joins eng, ids[3] leaves it; ids[2] (who stays) gets a new title.
    server
        .patch_group(
            &eng,
            json!([
                {"op": "add", "path": "members", "value": [{"value": ids[15]}]},
                {"op": "remove", "path": format!("members[value eq \"{}\"]", ids[3])},
            ]),
        )
        .await;
    server.patch_user(&ids[2], json!([{"op": "replace", "path": "title", "value": "Boss"}])).await;

    let delta = sync(SyncMode::Delta).await;
    assert_eq!(delta.mode, SyncMode::Delta, "{delta:?}");
    assert_eq!((delta.counts.created, delta.counts.updated, delta.counts.deleted), (0, 3, 0), "{delta:?}");
    let after = groups();
    assert_eq!(after[&ids[15]], names(&["eng"]));
    assert_eq!(after[&ids[3]], Vec::<String>::new());
    let touched: BTreeSet<&String> = after.keys().filter(|id| after[*id] != before[*id]).collect();
    assert_eq!(touched, BTreeSet::from([&ids[3], &ids[15]]), "no one else's groups changed");
    let mut changes: Vec<String> =
        store.run_changes(delta.run.unwrap(), 0, 100).unwrap().into_iter().map(|(_, c)| c.summary()).collect();
    changes.sort();
    let mut expected = vec![
        format!("update {}: attributes.title Title2 → Boss", ids[2]),
        format!(r#"update {}: groups ["eng"] → <none>"#, ids[3]),
        format!(r#"update {}: groups <none> → ["eng"]"#, ids[15]),
    ];
    expected.sort();
    // Without the lastModified a user's own change moves.
    let lastmodified_free: Vec<String> = changes
        .iter()
        .map(|c| {
            let (head, fields) = c.split_once(": ").unwrap();
            let fields: Vec<&str> = fields.split(", ").filter(|f| !f.starts_with("attributes.lastModified")).collect();
            format!("{head}: {}", fields.join(", "))
        })
        .collect();
    assert_eq!(lastmodified_free, expected, "{changes:?}");

    let quiet = sync(SyncMode::Delta).await;
    assert_eq!((quiet.mode, quiet.counts.created, quiet.counts.updated), (SyncMode::Delta, 0, 0), "{quiet:?}");

    // A renamed group: its members carry the new name, no one the old.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    server.patch_group(&ops, json!([{"op": "replace", "path": "displayName", "value": "operations"}])).await;
    let renamed = sync(SyncMode::Delta).await;
    assert_eq!((renamed.mode, renamed.counts.updated), (SyncMode::Delta, 10), "{renamed:?}");
    let after = groups();
    assert_eq!(after[&ids[5]], names(&["eng", "operations"]));
    assert_eq!(after[&ids[14]], names(&["operations"]));
    assert!(after.values().all(|g| !g.contains(&"ops".to_string())), "{after:?}");
    let quiet = sync(SyncMode::Delta).await;
    assert_eq!(quiet.counts.updated, 0, "{quiet:?}");
}
