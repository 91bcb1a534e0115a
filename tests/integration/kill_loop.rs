//! `idsync run` killed with SIGKILL at pseudo-random moments, again and
//! again, while it syncs a 5,000-row export that alternates between two
//! versions. After each kill the store passes SQLite's integrity check and
//! holds exactly the accounts it held before or exactly the new version,
//! never a mix; after each restart no run of a killed operator stays in
//! progress and no staging is left; at the end, one more operator finishes
//! every request and the store is the last version.
//!
//! The moments come from a seed, printed, so a failure can be replayed with
//! the same moments (the machine's speed decides where in the sync they
//! fall): `IDSYNC_KILL_SEED=<seed> cargo test --test integration kill_loop`.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::csv_server::CsvServer;
use common::{Harness, eventually};
use idsync::model::ConnectionRef;
use idsync::store::{AccountStore, SqliteStore};
use idsync_api::resync_request::{Phase, TargetPhase};
use idsync_api::{Connection, ResyncRequest};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

const KILLS: usize = 8;
const CONNECTION: &str = "big-hr";

/// Version 0 or 1 of the export: 5,000 people, each version with its own
/// e-mail domain, and 100 people only in version 1.
fn version(v: usize) -> BTreeMap<String, String> {
    let (range, domain) = if v == 0 { (1..=5000, "v0.example") } else { (101..=5100, "v1.example") };
    range.map(|i| (format!("E{i:05}"), format!("person{i}@{domain}"))).collect()
}

fn export(v: usize) -> String {
    let mut out = String::from("employee_id,work_email\n");
    for (id, email) in version(v) {
        out.push_str(&format!("{id},{email}\n"));
    }
    out
}

/// The store's accounts of the connection: id → e-mail.
fn stored(db: &Path) -> BTreeMap<String, String> {
    let store = SqliteStore::open(db).expect("the store opens after a kill");
    let conn = ConnectionRef::new("default", CONNECTION);
    let accounts = store.list_accounts(&conn, None, 100_000).expect("accounts");
    accounts.into_iter().map(|a| (a.id, a.email.unwrap_or_default())).collect()
}

/// A connection of its own to the store, which waits out the operator's
/// writes (and the recovery after a kill) instead of failing on them.
fn open(db: &Path) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open(db).expect("open");
    connection.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    connection
}

fn query_i64(db: &Path, sql: &str) -> i64 {
    open(db).query_row(sql, [], |row| row.get(0)).expect(sql)
}

fn integrity(db: &Path) -> String {
    open(db).query_row("PRAGMA integrity_check", [], |row| row.get(0)).expect("integrity_check")
}

/// `idsync run` as a process of its own, so that SIGKILL is the real thing.
fn start_operator(h: &Harness, data: &Path, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_idsync"))
        .args(["run", "--data-dir"])
        .arg(data)
        .args(["--http-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", h.kubeconfig())
        .env("POD_NAMESPACE", "default")
        .env("POD_NAME", name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("idsync run starts")
}

/// The Leases a killed operator held. Kubernetes would hand them over once
/// they lapse (15 s for the leader, 30 s for a sync guard); the process is
/// certainly dead here, so the test releases them at once rather than wait
/// eight times for both.
async fn release_leases(h: &Harness) {
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), "default");
    for name in ["idsync-leader".to_string(), format!("idsync-sync-{CONNECTION}")] {
        let _ = leases.delete(&name, &DeleteParams::default()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_never_leaves_a_mixed_or_broken_store() {
    let seed: u64 =
        std::env::var("IDSYNC_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("kill loop seed: {seed} (replay with IDSYNC_KILL_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);

    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let data = tempfile::tempdir().expect("data dir");
    let db: PathBuf = data.path().join("idsync.db");
    // Paced: the read takes about a second, so kills land before, during
    // and after it, and now and then in its commit.
    let server = CsvServer::start(&export(0)).await;
    server.set(|b| {
        b.chunk_lines = 250;
        b.delay_per_chunk = Duration::from_millis(40);
    });
    let connection = Connection::test(CONNECTION)
        .csv_url(&server.url)
        .id_column("employee_id")
        .column("email", "work_email")
        .page_size(500)
        .build();
    let connections: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    connections
        .patch(CONNECTION, &PatchParams::apply("test").force(), &Patch::Apply(&connection))
        .await
        .expect("connection");
    let requests: Api<ResyncRequest> = Api::namespaced(h.client.clone(), "default");

    let mut before = BTreeMap::new();
    let mut served = 0;
    let mut landed = Vec::new();
    for kill in 0..KILLS {
        // Always the version the store does not hold, so that "old" and
        // "new" differ in every round.
        served = if before == version(0) { 1 } else { 0 };
        server.set(|b| b.body = export(served));
        let name = format!("kill-loop-{kill}");
        let mut operator = start_operator(&h, data.path(), &name);
        if kill > 0 {
            // The restarted operator closes what its killed predecessor left.
            let closed = eventually(Duration::from_secs(30), || {
                let db = db.clone();
                let prefix = format!("{name}-");
                async move {
                    let open = query_i64(
                        &db,
                        &format!("SELECT count(*) FROM runs WHERE outcome IS NULL AND holder NOT LIKE '{prefix}%'"),
                    );
                    let stale = query_i64(
                        &db,
                        "SELECT count(*) FROM staging WHERE run_id NOT IN (SELECT run_id FROM runs WHERE outcome IS NULL)",
                    );
                    (open == 0 && stale == 0).then_some(())
                }
            })
            .await;
            assert!(closed.is_some(), "seed {seed}, restart {kill}: a killed operator's run or staging stayed");
        }
        let request_name = format!("sync-{kill}");
        let request = ResyncRequest::test(&request_name).connections([CONNECTION]).full().build();
        requests.create(&PostParams::default(), &request).await.expect("request");
        // One kill in four lands while the operator starts; the others at
        // a moment of its sync (the read, the commit, or just after).
        let (moment, after) = if rng.u8(0..4) == 0 {
            (Duration::from_millis(rng.u64(0..800)), "the operator's start")
        } else {
            let running = eventually(Duration::from_secs(30), || async {
                let status = requests.get(&request_name).await.ok()?.status?;
                let target = status.targets.first()?;
                (target.phase == TargetPhase::Running || status.phase.is_some_and(|p| p.is_finished())).then_some(())
            })
            .await;
            assert!(running.is_some(), "seed {seed}: {request_name} never ran");
            (Duration::from_millis(rng.u64(0..2500)), "its sync's start")
        };
        tokio::time::sleep(moment).await;
        operator.kill().expect("SIGKILL");
        operator.wait().expect("the killed operator is reaped");

        assert_eq!(integrity(&db), "ok", "seed {seed}, kill {kill} ({moment:?} after {after}): the store is corrupt");
        let now = stored(&db);
        let new = version(served);
        let outcome = if now == before {
            "old"
        } else if now == new {
            "new"
        } else {
            let mixed = now.iter().filter(|(id, email)| new.get(*id) == Some(*email)).count();
            panic!(
                "seed {seed}, kill {kill} ({moment:?} after {after}): {} accounts, {mixed} of them from the new version and the rest \
                 not: a mix of the old and the new",
                now.len()
            );
        };
        println!("kill {kill}, {moment:?} after {after}: {outcome}");
        landed.push(outcome);
        before = now;
        release_leases(&h).await;
    }

    // One more operator, left to finish: every request ends, the store is
    // the version served, nothing stays in progress, no staging is left.
    server.set(|b| b.delay_per_chunk = Duration::ZERO);
    let mut last = start_operator(&h, data.path(), "kill-loop-last");
    let finish = ResyncRequest::test("sync-last").connections([CONNECTION]).full().build();
    requests.create(&PostParams::default(), &finish).await.expect("request");
    let names: Vec<String> = (0..KILLS).map(|k| format!("sync-{k}")).chain(["sync-last".to_string()]).collect();
    for name in &names {
        let done = eventually(Duration::from_secs(120), || async {
            requests.get(name).await.ok()?.status?.phase.filter(|p| p.is_finished())
        })
        .await;
        assert_eq!(done, Some(Phase::Succeeded), "seed {seed}: {name} after the last restart");
    }
    assert_eq!(stored(&db), version(served), "seed {seed}: the store is not the last version");
    assert_eq!(query_i64(&db, "SELECT count(*) FROM runs WHERE outcome IS NULL"), 0, "seed {seed}: a run in progress");
    assert_eq!(query_i64(&db, "SELECT count(*) FROM staging"), 0, "seed {seed}: staging left");
    assert_eq!(integrity(&db), "ok");
    println!("kills landed: {landed:?}");

    let _ = Command::new("kill").args(["-TERM", &last.id().to_string()]).status();
    let stopped = eventually(Duration::from_secs(20), || {
        let status = last.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    if stopped.is_none() {
        let _ = last.kill();
        let _ = last.wait();
        panic!("the last operator did not stop on SIGTERM");
    }
}
