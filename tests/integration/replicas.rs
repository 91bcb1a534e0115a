//! Active replicas that share the store: three operator instances on one
//! devcluster and one store file (SQLite in WAL mode stands in for the
//! PostgreSQL store the replicas share in production), each syncing the
//! connections it owns. A request over 20 connections syncs each once, on
//! one of the three; when one replica is killed mid-sync, its runs end
//! Interrupted, the others take its connections over once its Leases lapse,
//! and every connection still syncs exactly once, whole.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::csv_server::CsvServer;
use common::operator::{Operator, TestClock, test_config};
use common::{Harness, eventually};
use idsync::controller::{Config, Replicas, SharedReplicas};
use idsync::model::{ConnectionRef, ProfileRef, RunOutcome, RunRecord};
use idsync::store::{AccountStore, IdentityStore, ProcessingHistory, SqliteStore};
use idsync_api::resync_request::{Phase, Scope, TargetPhase};
use idsync_api::{Connection, IdentityProfile, ResyncRequest};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};

const CONNECTIONS: usize = 20;
const REPLICAS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];
const VICTIM: &str = "replica-b";
/// The victim's Pod after its restart.
const RESTARTED: &str = "replica-b2";
/// Member, leader, guard and processing Leases: a dead replica's share
/// moves within a few seconds.
const LEASE: Duration = Duration::from_secs(5);

fn name(i: usize) -> String {
    format!("c{i:02}")
}

/// Connection `i`'s export at `version`: version 1 has people 1..=30;
/// version 2 adds six and gives every fourth a new address.
fn export(i: usize, version: usize) -> BTreeMap<String, String> {
    let people = if version == 1 { 1..=30 } else { 1..=36 };
    people
        .map(|n| {
            let domain = if version > 1 && n % 4 == 0 { "moved.example" } else { "acme.example" };
            (format!("P{i:02}{n:03}"), format!("person{n}.c{i:02}@{domain}"))
        })
        .collect()
}

fn csv(people: &BTreeMap<String, String>) -> String {
    let mut lines = vec!["employee_id,name,work_email".to_string()];
    lines.extend(people.iter().map(|(id, email)| format!("{id},Person {id},{email}")));
    lines.join("\n") + "\n"
}

/// The chart's rules: a replica lists the member Leases with them.
fn replica_rules() -> Vec<PolicyRule> {
    common::rbac::chart_rules()
}

fn replica_config(identity: &str) -> Config {
    Config {
        guard_duration: LEASE,
        replicas: Replicas::Shared(SharedReplicas { namespace: "default".into(), member_lease_duration: LEASE }),
        ..test_config(identity)
    }
}

fn conn(i: usize) -> ConnectionRef {
    ConnectionRef { namespace: "default".into(), name: name(i) }
}

/// The runs of connection `i` made for `request`, oldest first.
fn runs_for(store: &SqliteStore, i: usize, request: &str) -> Vec<RunRecord> {
    let mut runs: Vec<RunRecord> = store
        .runs(&conn(i), 100)
        .expect("runs")
        .into_iter()
        .filter(|r| r.request.as_deref() == Some(request))
        .collect();
    runs.reverse();
    runs
}

fn stored(store: &SqliteStore, i: usize) -> BTreeMap<String, String> {
    store
        .list_accounts(&conn(i), None, 10_000)
        .expect("accounts")
        .into_iter()
        .map(|a| (a.id.clone(), a.email.unwrap_or_default()))
        .collect()
}

/// Applies a Connection per `(name, export)`, each reading its export from
/// a local CSV server of its own (`employee_id`, `name`, `work_email`), and
/// returns the servers, in order, to change what they serve.
pub(crate) async fn apply_csv_connections(
    h: &Harness,
    exports: impl Iterator<Item = (String, String)>,
) -> Vec<CsvServer> {
    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let mut servers = Vec::new();
    for (name, export) in exports {
        let server = CsvServer::start(&export).await;
        let connection = Connection::test(&name)
            .csv_url(&server.url)
            .id_column("employee_id")
            .column("email", "work_email")
            .column("displayName", "name")
            .build();
        connections
            .patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&connection))
            .await
            .expect("connection");
        servers.push(server);
    }
    servers
}

/// The holder identities of the live member Leases.
pub(crate) async fn live_members(h: &Harness) -> BTreeSet<String> {
    let api: Api<Lease> = Api::namespaced(h.client.clone(), "default");
    let leases = api.list(&ListParams::default().labels("idsync.dev/role=member")).await.expect("leases");
    idsync::membership::live_members(&leases.items, jiff::Timestamp::now())
}

/// A request over every connection, accounts then the profile.
async fn request_all(h: &Harness, request: &str) -> ResyncRequest {
    h.create_request(ResyncRequest::test(request).all().full().scope(Scope::AccountsAndIdentities)).await;
    h.finished_request(request, Duration::from_secs(60)).await
}

/// The request over `connections` Connections and one profile succeeded,
/// every target and the profile.
pub(crate) fn assert_every_target_succeeded(request: &ResyncRequest, connections: usize) {
    let status = request.status.as_ref().expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.targets.len(), connections);
    assert!(status.targets.iter().all(|t| t.phase == TargetPhase::Succeeded), "{status:#?}");
    assert_eq!(status.profiles.len(), 1);
    assert_eq!(status.profiles[0].phase, TargetPhase::Succeeded, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_share_the_syncs_and_take_over_a_killed_ones_exactly_once() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let data = tempfile::tempdir().expect("data dir");
    let db = data.path().join("idsync.db");
    // Created and migrated once, before three instances open it.
    let store = SqliteStore::open(&db).expect("store");

    let servers = apply_csv_connections(&h, (0..CONNECTIONS).map(|i| (name(i), csv(&export(i, 1))))).await;
    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    let profile = IdentityProfile::test("people")
        .authoritative("c00")
        .correlate("c01", "email", "email")
        .attribute("email", "accounts.c00.email")
        .build();
    h.apply_json(serde_json::to_value(profile).expect("json")).await;

    let clock = Arc::new(TestClock::default());
    let mut operators: BTreeMap<&str, Operator> = REPLICAS
        .iter()
        .map(|id| {
            let op =
                Operator::start_with_rules(&h.cluster, data.path(), clock.clone(), replica_config(id), replica_rules());
            (*id, op)
        })
        .collect();
    let all: BTreeSet<String> = REPLICAS.iter().map(|r| r.to_string()).collect();
    let joined = eventually(Duration::from_secs(30), || async { (live_members(&h).await == all).then_some(()) }).await;
    assert!(joined.is_some(), "the three replicas did not all join: {:?}", live_members(&h).await);
    // Each replica lists the members every second: let every one see all three.
    tokio::time::sleep(LEASE).await;

    // One request over all 20: each connection synced once, by one replica.
    let first = request_all(&h, "first").await;
    assert_every_target_succeeded(&first, CONNECTIONS);
    let mut by_replica: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..CONNECTIONS {
        let runs = runs_for(&store, i, "first");
        assert_eq!(runs.len(), 1, "{}: {runs:#?}", name(i));
        assert_eq!(runs[0].outcome, Some(RunOutcome::Succeeded), "{}: {runs:#?}", name(i));
        assert!(all.contains(&runs[0].holder), "{}", runs[0].holder);
        *by_replica.entry(runs[0].holder.clone()).or_default() += 1;
        assert_eq!(stored(&store, i), export(i, 1), "{}", name(i));
    }
    assert_eq!(by_replica.keys().cloned().collect::<BTreeSet<_>>(), all, "not every replica synced: {by_replica:?}");
    let people = ProfileRef::new("default", "people");
    assert_eq!(store.list_identities(&people, None, None, 1000).expect("identities").len(), 30);

    // The second request reads slow exports (about 3 s each), and the
    // victim is killed while a sync of its own runs.
    for (i, server) in servers.iter().enumerate() {
        server.set(|b| {
            b.body = csv(&export(i, 2));
            b.chunk_lines = 4;
            b.delay_per_chunk = Duration::from_millis(300);
        });
    }
    h.create_request(ResyncRequest::test("second").all().full().scope(Scope::AccountsAndIdentities)).await;
    let store = &store;
    // Every replica has a sync of its own running, the victim included.
    let unfinished = |store: &SqliteStore| -> BTreeSet<String> {
        (0..CONNECTIONS)
            .flat_map(|i| runs_for(store, i, "second").into_iter().filter(|r| r.finished_at.is_none()))
            .map(|r| r.holder)
            .collect()
    };
    let every_replica = &all;
    let all_syncing =
        eventually(Duration::from_secs(30), || async move { (unfinished(store) == *every_replica).then_some(()) })
            .await;
    assert!(all_syncing.is_some(), "not every replica ran a sync of the second request: {:?}", unfinished(store));
    operators.remove(VICTIM).expect("the victim").kill();
    // Its Pod restarts, a new member under a new identity, while the
    // others' syncs run: joining must not interrupt them (the store is
    // shared: nothing at start may close runs it did not start), and it
    // takes a share of what is left.
    operators.insert(
        RESTARTED,
        Operator::start_with_rules(&h.cluster, data.path(), clock.clone(), replica_config(RESTARTED), replica_rules()),
    );

    let second = h.finished_request("second", Duration::from_secs(60)).await;
    assert_every_target_succeeded(&second, CONNECTIONS);
    let mut interrupted = 0;
    for i in 0..CONNECTIONS {
        let runs = runs_for(store, i, "second");
        let succeeded: Vec<&RunRecord> = runs.iter().filter(|r| r.outcome == Some(RunOutcome::Succeeded)).collect();
        assert_eq!(succeeded.len(), 1, "{} did not sync exactly once: {runs:#?}", name(i));
        for other in runs.iter().filter(|r| r.outcome != Some(RunOutcome::Succeeded)) {
            // Only the killed replica's runs end any other way, and they
            // end Interrupted: nothing is left in progress.
            assert_eq!(
                (other.holder.as_str(), other.outcome),
                (VICTIM, Some(RunOutcome::Interrupted)),
                "{}: {runs:#?}",
                name(i)
            );
            interrupted += 1;
        }
        // Whole: every account as the new export has it.
        assert_eq!(stored(store, i), export(i, 2), "{} is not as its source", name(i));
    }
    assert!(interrupted > 0, "the kill landed on no running sync");

    // The survivors hold the killed replica's guards now; its connections
    // say nothing is syncing.
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), "default");
    let guards = leases.list(&ListParams::default()).await.expect("leases").items;
    let held_by_victim: Vec<String> = guards
        .iter()
        .filter(|l| l.name_any().starts_with("idsync-sync-"))
        .filter(|l| l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(VICTIM))
        .map(|l| l.name_any())
        .collect();
    assert!(held_by_victim.is_empty(), "guards still naming the killed replica: {held_by_victim:?}");
    for c in connections.list(&ListParams::default()).await.expect("connections").items {
        let current = c.status.as_ref().and_then(|s| s.current_sync.clone());
        assert!(current.is_none(), "{} still shows a running sync: {current:?}", c.name_any());
    }

    // The profile: processed after both requests, one run at a time.
    assert_eq!(store.list_identities(&people, None, None, 1000).expect("identities").len(), 36);
    let mut processing = store.processing_runs(&people, 100).expect("processing history");
    assert!(processing.len() >= 2, "{processing:#?}");
    processing.sort_by_key(|r| r.started_at);
    for pair in processing.windows(2) {
        assert!(pair[0].finished_at <= pair[1].started_at, "two processing runs overlapped: {pair:#?}");
    }

    for (_, op) in operators {
        op.stop().await;
    }
}

/// What every guard Lease of `count` connections names, by connection.
async fn guard_holders(h: &Harness, count: usize) -> BTreeMap<String, Option<String>> {
    let api: Api<Lease> = Api::namespaced(h.client.clone(), "default");
    let mut holders = BTreeMap::new();
    for i in 0..count {
        let lease = api.get_opt(&format!("idsync-sync-{}", name(i))).await.expect("lease");
        let holder = lease
            .filter(|l| !idsync::lease::expired(l, jiff::Timestamp::now()))
            .and_then(|l| idsync::lease::holder(&l).map(str::to_string));
        holders.insert(name(i), holder);
    }
    holders
}

/// Who owns each of `count` connections among `members`.
fn owners(members: &[&str], count: usize) -> BTreeMap<String, Option<String>> {
    (0..count)
        .map(|i| {
            let key = idsync::membership::connection_key("default", &name(i));
            (name(i), idsync::membership::rendezvous::owner(members.iter().copied(), &key).map(str::to_string))
        })
        .collect()
}

async fn guards_follow_owners(h: &Harness, members: &[&str], count: usize) {
    let expected = owners(members, count);
    let settled =
        eventually(Duration::from_secs(30), || async { (guard_holders(h, count).await == expected).then_some(()) })
            .await;
    assert!(
        settled.is_some(),
        "the guards do not follow the owners among {members:?}: held {:#?}, owners {expected:#?}",
        guard_holders(h, count).await
    );
}

/// A replica that joins gets its share: the replicas that owned those
/// connections give their guards back (no lapse to wait for: they keep
/// renewing them otherwise), and a replica that stops gracefully hands its
/// share back the same way. The next request's syncs run where the owners are.
#[tokio::test(flavor = "multi_thread")]
async fn a_joining_replica_gets_its_share_and_a_leaving_one_hands_it_back() {
    const COUNT: usize = 8;
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let data = tempfile::tempdir().expect("data dir");
    let store = SqliteStore::open(&data.path().join("idsync.db")).expect("store");
    let _servers = apply_csv_connections(&h, (0..COUNT).map(|i| (name(i), csv(&export(i, 1))))).await;
    let clock = Arc::new(TestClock::default());
    let start = |id: &str| {
        Operator::start_with_rules(&h.cluster, data.path(), clock.clone(), replica_config(id), replica_rules())
    };
    let (a, b) = (start("replica-a"), start("replica-b"));
    guards_follow_owners(&h, &["replica-a", "replica-b"], COUNT).await;

    let c = start("replica-c");
    guards_follow_owners(&h, &REPLICAS, COUNT).await;
    h.create_request(ResyncRequest::test("with-three").all().full()).await;
    let done = h.finished_request("with-three", Duration::from_secs(60)).await;
    assert_eq!(done.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded), "{:#?}", done.status);
    let owned = owners(&REPLICAS, COUNT);
    for i in 0..COUNT {
        let runs = runs_for(&store, i, "with-three");
        assert_eq!(runs.len(), 1, "{runs:#?}");
        assert_eq!(Some(&runs[0].holder), owned[&name(i)].as_ref(), "{} synced away from its owner", name(i));
    }

    // Leaving gracefully: its member Lease and guards go back at once.
    c.stop().await;
    guards_follow_owners(&h, &["replica-a", "replica-b"], COUNT).await;
    assert!(!live_members(&h).await.contains("replica-c"));

    a.stop().await;
    b.stop().await;
}

/// The processing Lease: with shared replicas one replica processes a
/// profile at a time, the other is told who does; with one active replica
/// no Lease is written at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_profile_is_processed_under_one_replicas_lease_at_a_time() {
    use idsync::controller::Context;
    use idsync::controller::profile_lease::{Exclusive, exclusive, lease_name};

    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    h.apply_json(serde_json::to_value(IdentityProfile::test("people").build()).expect("json")).await;
    let profile = Api::<IdentityProfile>::namespaced(h.client.clone(), "default").get("people").await.expect("profile");
    let data = tempfile::tempdir().expect("data dir");
    let store: Arc<dyn idsync::store::Store> =
        Arc::new(SqliteStore::open(&data.path().join("idsync.db")).expect("store"));
    let context = |id: &str, config: Config| {
        let client = h.cluster.client_as(common::rbac::OPERATOR_USER, replica_rules()).expect("client");
        Context::new(client, store.clone(), Arc::new(TestClock::default()), Config { identity: id.into(), ..config })
    };
    let (a, b) = (context("replica-a", replica_config("replica-a")), context("replica-b", replica_config("replica-b")));
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), "default");
    let holder = || async {
        leases
            .get_opt(&lease_name("people"))
            .await
            .expect("lease")
            .and_then(|l| idsync::lease::holder(&l).map(str::to_string))
    };

    let held = exclusive(&a, &profile).await.expect("take");
    assert!(held.is_lease());
    match exclusive(&b, &profile).await.expect("look") {
        Exclusive::Busy(by) => assert_eq!(by, "replica-a"),
        _ => panic!("two replicas hold one profile's processing Lease"),
    }
    assert_eq!(holder().await.as_deref(), Some("replica-a"));
    held.release().await;
    assert_eq!(holder().await, None, "not given back after the run");
    let next = exclusive(&b, &profile).await.expect("take");
    assert!(next.is_lease(), "the other replica cannot take it once given back");
    assert_eq!(holder().await.as_deref(), Some("replica-b"));
    next.release().await;

    let single = context("single", test_config("single"));
    assert!(matches!(exclusive(&single, &profile).await.expect("single"), Exclusive::Single));
    assert_eq!(holder().await, None, "one active replica writes no processing Lease");
}
