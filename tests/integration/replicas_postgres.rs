//! Three `idsync run` processes sharing one PostgreSQL store (a throwaway
//! local cluster) on one devcluster: 20 connections synced once each,
//! spread over the three; one process killed with SIGKILL while its syncs
//! run; its runs end Interrupted, the survivors take its connections over
//! once its Leases lapse, every connection syncs exactly once for the
//! request, and the store holds every source whole. Prints how long the
//! takeover took.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::replicas::{apply_csv_connections, assert_every_target_succeeded, live_members};
use common::{Harness, eventually};
use idsync::model::{ConnectionRef, ProfileRef, RunOutcome, RunRecord};
use idsync::store::postgres::testing;
use idsync::store::{AccountStore, IdentityStore, PgStore};
use idsync_api::resync_request::Scope;
use idsync_api::{IdentityProfile, ResyncRequest};

const CONNECTIONS: usize = 20;
const REPLICAS: [&str; 3] = ["pg-replica-a", "pg-replica-b", "pg-replica-c"];
const VICTIM: &str = "pg-replica-b";
/// `--lease-seconds`: guards last 6 s, member Leases 3 s.
const LEASE_SECONDS: u64 = 6;

fn name(i: usize) -> String {
    format!("p{i:02}")
}

fn conn(i: usize) -> ConnectionRef {
    ConnectionRef::new("default", name(i))
}

/// Connection `i`'s export at `version`: version 1 has 40 people; version
/// 2 adds ten and moves every third to a new address.
fn export(i: usize, version: usize) -> BTreeMap<String, String> {
    let people = if version == 1 { 1..=40 } else { 1..=50 };
    people
        .map(|n| {
            let domain = if version > 1 && n % 3 == 0 { "moved.example" } else { "acme.example" };
            (format!("Q{i:02}{n:03}"), format!("person{n}.p{i:02}@{domain}"))
        })
        .collect()
}

fn csv(people: &BTreeMap<String, String>) -> String {
    let mut lines = vec!["employee_id,name,work_email".to_string()];
    lines.extend(people.iter().map(|(id, email)| format!("{id},Person {id},{email}")));
    lines.join("\n") + "\n"
}

/// One replica: `idsync run --store URL` with the password from the
/// environment, as the chart runs it. Its holder identity starts with
/// `pod` (POD_NAME).
fn spawn_replica(h: &Harness, url: &str, pod: &str) -> Child {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["run", "--store", url, "--lease-seconds", &LEASE_SECONDS.to_string()])
        .args(["--http-addr", &format!("127.0.0.1:{port}"), "--log-format", "json"])
        .env("KUBECONFIG", h.kubeconfig())
        .env("POD_NAMESPACE", "default")
        .env("POD_NAME", pod)
        .env("IDSYNC_STORE_PASSWORD", testing::PASSWORD)
        .env_remove("IDSYNC_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("idsync run starts")
}

/// The pod a holder identity (`POD_NAME` plus a per-process suffix) is of.
fn pod_of(holder: &str) -> &str {
    holder.rsplit_once('-').map_or(holder, |(pod, _)| pod)
}

/// Reads the store off the async runtime: the PostgreSQL client blocks.
async fn read<T: Send + 'static>(store: &Arc<PgStore>, f: impl FnOnce(&PgStore) -> T + Send + 'static) -> T {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store)).await.expect("store read")
}

/// Every connection's runs for `request`, oldest first.
async fn runs_for(store: &Arc<PgStore>, request: &'static str) -> Vec<Vec<RunRecord>> {
    read(store, move |s| {
        (0..CONNECTIONS)
            .map(|i| {
                let mut runs: Vec<RunRecord> = s
                    .runs(&conn(i), 100)
                    .expect("runs")
                    .into_iter()
                    .filter(|r| r.request.as_deref() == Some(request))
                    .collect();
                runs.reverse();
                runs
            })
            .collect()
    })
    .await
}

async fn stored(store: &Arc<PgStore>) -> Vec<BTreeMap<String, String>> {
    read(store, |s| {
        (0..CONNECTIONS)
            .map(|i| {
                s.list_accounts(&conn(i), None, 10_000)
                    .expect("accounts")
                    .into_iter()
                    .map(|a| (a.id.clone(), a.email.unwrap_or_default()))
                    .collect()
            })
            .collect()
    })
    .await
}

async fn live_pods(h: &Harness) -> BTreeSet<String> {
    live_members(h).await.iter().map(|holder| pod_of(holder).to_string()).collect()
}

struct Replicas(BTreeMap<&'static str, Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in self.0.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_idsync_processes_on_postgres_share_the_syncs_and_survive_a_kill_9() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    // The PostgreSQL client blocks: off the async runtime.
    let (url, store) = tokio::task::spawn_blocking(|| {
        let cluster = testing::cluster();
        let db = cluster.create_database();
        let store = PgStore::connect(&cluster.options(&db)).expect("the test's own handle on the store");
        (cluster.url(&db), Arc::new(store))
    })
    .await
    .expect("task");

    let servers = apply_csv_connections(&h, (0..CONNECTIONS).map(|i| (name(i), csv(&export(i, 1))))).await;
    let profile = IdentityProfile::test("people")
        .authoritative("p00")
        .correlate("p01", "email", "email")
        .attribute("email", "accounts.p00.email")
        .build();
    h.apply_json(serde_json::to_value(profile).expect("json")).await;

    let mut replicas = Replicas(REPLICAS.iter().map(|pod| (*pod, spawn_replica(&h, &url, pod))).collect());
    let all: BTreeSet<String> = REPLICAS.iter().map(|r| r.to_string()).collect();
    let joined = eventually(Duration::from_secs(60), || async { (live_pods(&h).await == all).then_some(()) }).await;
    assert!(joined.is_some(), "the three processes did not all join: {:?}", live_pods(&h).await);
    // Every replica lists the members once per member-Lease third.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS / 2 + 1)).await;

    // One request over the 20: each synced once, by one of the three.
    h.create_request(ResyncRequest::test("first").all().full().scope(Scope::AccountsAndIdentities)).await;
    let first = h.finished_request("first", Duration::from_secs(90)).await;
    assert_every_target_succeeded(&first, CONNECTIONS);
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    for (i, runs) in runs_for(&store, "first").await.into_iter().enumerate() {
        assert_eq!(runs.len(), 1, "{}: {runs:#?}", name(i));
        assert_eq!(runs[0].outcome, Some(RunOutcome::Succeeded), "{}: {runs:#?}", name(i));
        *by_pod.entry(pod_of(&runs[0].holder).to_string()).or_default() += 1;
    }
    assert_eq!(by_pod.keys().cloned().collect::<BTreeSet<_>>(), all, "not every process synced: {by_pod:?}");
    let accounts = stored(&store).await;
    for (i, got) in accounts.iter().enumerate() {
        assert_eq!(got, &export(i, 1), "{}", name(i));
    }

    // The second request reads slow exports (about 4 s each); the victim
    // is killed (SIGKILL) while syncs of its own run.
    for (i, server) in servers.iter().enumerate() {
        server.set(|b| {
            b.body = csv(&export(i, 2));
            b.chunk_lines = 5;
            b.delay_per_chunk = Duration::from_millis(400);
        });
    }
    h.create_request(ResyncRequest::test("second").all().full().scope(Scope::AccountsAndIdentities)).await;
    let syncing = eventually(Duration::from_secs(60), || {
        let store = store.clone();
        let all = all.clone();
        async move {
            let pods: BTreeSet<String> = runs_for(&store, "second")
                .await
                .into_iter()
                .flatten()
                .filter(|r| r.finished_at.is_none())
                .map(|r| pod_of(&r.holder).to_string())
                .collect();
            (pods == all).then_some(())
        }
    })
    .await;
    assert!(syncing.is_some(), "not every process ran a sync of the second request");
    let mut victim = replicas.0.remove(VICTIM).expect("the victim");
    victim.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    let _ = victim.wait();

    let second = h.finished_request("second", Duration::from_secs(120)).await;
    assert_every_target_succeeded(&second, CONNECTIONS);
    let mut interrupted = 0;
    let mut taken_over = 0;
    let mut last_takeover = jiff::Timestamp::UNIX_EPOCH;
    for (i, runs) in runs_for(&store, "second").await.into_iter().enumerate() {
        let succeeded: Vec<&RunRecord> = runs.iter().filter(|r| r.outcome == Some(RunOutcome::Succeeded)).collect();
        assert_eq!(succeeded.len(), 1, "{} did not sync exactly once: {runs:#?}", name(i));
        let others: Vec<&RunRecord> = runs.iter().filter(|r| r.outcome != Some(RunOutcome::Succeeded)).collect();
        for other in &others {
            assert_eq!(
                (pod_of(&other.holder), other.outcome),
                (VICTIM, Some(RunOutcome::Interrupted)),
                "{}: {runs:#?}",
                name(i)
            );
            interrupted += 1;
        }
        if !others.is_empty() {
            assert_ne!(pod_of(&succeeded[0].holder), VICTIM, "{}", name(i));
            taken_over += 1;
            last_takeover = last_takeover.max(succeeded[0].finished_at.expect("finished"));
        }
    }
    assert!(interrupted > 0, "the kill landed on no running sync");
    let accounts = stored(&store).await;
    for (i, got) in accounts.iter().enumerate() {
        assert_eq!(got, &export(i, 2), "{} is not as its source: half-applied or lost", name(i));
    }
    let identities = read(&store, |s| {
        s.list_identities(&ProfileRef::new("default", "people"), None, None, 1000).expect("identities").len()
    })
    .await;
    assert_eq!(identities, 50);
    let since_kill = jiff::Timestamp::now().duration_since(last_takeover);
    let takeover = killed_at.elapsed().saturating_sub(Duration::try_from(since_kill).unwrap_or_default());
    println!(
        "replicas_postgres: {interrupted} sync(s) of the killed process interrupted; {taken_over} connection(s) \
         taken over and synced by the survivors {:.1} s after the kill (--lease-seconds {LEASE_SECONDS}; each \
         export takes about 4 s to read)",
        takeover.as_secs_f64()
    );
    drop(replicas);
}
