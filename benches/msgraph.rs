//! A 50,000-user Microsoft Graph delta chain through the whole engine
//! against the local Graph fixture (tests/fixtures/msgraph/server.rs): a
//! full sync (every user, 100 groups, managers), then a delta in which 1%
//! of the users changed. Prints its figures; run with
//! `cargo bench --bench msgraph`.

mod common;

#[path = "../tests/fixtures/msgraph/server.rs"]
mod graph_server;

use std::sync::Arc;
use std::time::Instant;

use graph_server::{CLIENT_ID, CLIENT_SECRET, GraphServer, TENANT, user, user_id};
use idsync::connectors::{self, ProviderInputs};
use idsync::store::{SqliteStore, Store};
use idsync::sync::job;
use idsync_api::{ConnectionSpec, SyncMode};
use serde_json::json;

const USERS: usize = 50_000;
const GROUPS: usize = 100;

fn spec(server: &GraphServer) -> ConnectionSpec {
    serde_json::from_value(json!({
        "category": "IdP",
        "provider": {"type": "msgraph", "msgraph": {
            "tenantId": TENANT, "clientId": CLIENT_ID,
            "graphEndpoint": server.base, "loginEndpoint": server.login_endpoint(),
            "includeGroups": true,
        }},
        "credentialsSecretRef": {"name": "entra"},
        "pageSize": 999,
        "importSafeguard": {"maxDeletePercent": 100},
        // The fixture runs on this host (spec.network, where the operator
        // checks source addresses; ignored where it does not).
        "network": {"allowLoopback": true},
    }))
    .expect("spec")
}

async fn sync(store: &Arc<dyn Store>, server: &GraphServer, mode: SyncMode, label: &str) {
    let spec = spec(server);
    let mut inputs = ProviderInputs::default();
    inputs.secret.insert("clientSecret".into(), CLIENT_SECRET.as_bytes().to_vec());
    let connector = connectors::build(&spec, inputs).expect("connector");
    let job = common::job_for("entra", &spec, mode);
    let requests_before = server.graph_requests();
    let started = Instant::now();
    let report = job::run(job, connector, store.clone(), idsync::sync::cancel::Cancel::new()).await;
    let c = report.counts;
    println!(
        "{label:<28} {:>7.2} s  outcome {:?}  created {} updated {} deleted {} unchanged {}  pages {}  Graph requests {}  peak RSS {:.0} MiB",
        started.elapsed().as_secs_f64(),
        report.outcome,
        c.created,
        c.updated,
        c.deleted,
        c.unchanged,
        report.pages,
        server.graph_requests() - requests_before,
        common::peak_rss_mib()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("idsync.db")).expect("store"));
    runtime.block_on(async {
        let server = GraphServer::start().await;
        let seeded = Instant::now();
        for i in 0..USERS {
            server.put_user(user(i));
            // Everyone reports to someone, so delta entries are whole.
            server.set_manager(&user_id(i), Some(&user_id(i / 10)));
        }
        for g in 0..GROUPS {
            let members: Vec<String> = (g..USERS).step_by(GROUPS).map(user_id).collect();
            let members: Vec<&str> = members.iter().map(String::as_str).collect();
            server.put_group(&format!("g{g}"), &format!("Group {g}"), &members);
        }
        println!("fixture: {USERS} users, {GROUPS} groups, seeded in {:.1} s", seeded.elapsed().as_secs_f64());
        sync(&store, &server, SyncMode::Delta, "first sync (full round)").await;
        for i in (0..USERS).step_by(100) {
            server.update_user(&user_id(i), |u| u["jobTitle"] = json!("Promoted"));
        }
        sync(&store, &server, SyncMode::Delta, "delta, 1% changed").await;
        sync(&store, &server, SyncMode::Delta, "delta, nothing changed").await;
    });
}
