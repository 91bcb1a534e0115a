//! A full sync of a 100,000-row HR export through the whole engine (csv
//! connector, diff, staging, safeguard, one commit), then an unchanged
//! resync and a 1% change. Prints its figures; run with
//! `cargo bench --bench sync`.

mod common;

use std::sync::Arc;
use std::time::Instant;

use idsync::connectors::{self, ProviderInputs};
use idsync::model::ConnectionRef;
use idsync::model::Trigger;
use idsync::store::{SqliteStore, Store};
use idsync::sync::job::{self, SyncJob};
use idsync_api::SyncMode;
use idsync_api::{Connection, ConnectionSpec};

const ROWS: usize = 100_000;

fn export(changed_every: Option<usize>) -> Vec<u8> {
    let mut out = String::with_capacity(ROWS * 140);
    out.push_str("employee_id,first_name,last_name,work_email,department,title,manager_id,hire_date,termination_date,status,groups\n");
    for i in 0..ROWS {
        let domain = match changed_every {
            Some(n) if i % n == 0 => "acme-corp.example",
            _ => "acme.example",
        };
        out.push_str(&format!(
            "E{i:06},First{i},Last{i},first{i}.last{i}@{domain},Dept{},Title{},E{:06},2020-01-{:02},,active,all-staff;dept-{}\n",
            i % 40,
            i % 90,
            i / 10,
            i % 28 + 1,
            i % 40
        ));
    }
    out.into_bytes()
}

fn spec() -> ConnectionSpec {
    Connection::test("hr")
        .page_size(1000)
        .max_delete_percent(100)
        .id_column("employee_id")
        .column("email", "work_email")
        .column("enabled", "status")
        .column("groups", "groups")
        .spec()
}

async fn sync(store: &Arc<dyn Store>, data: Vec<u8>, label: &str) {
    let spec = spec();
    let connector =
        connectors::build(&spec, ProviderInputs { csv_data: Some(data), ..Default::default() }).expect("connector");
    let job = SyncJob {
        connection: ConnectionRef { namespace: "bench".into(), name: "hr".into() },
        mode: SyncMode::Full,
        trigger: Trigger::Requested,
        request: None,
        holder: "bench".into(),
        dry_run: false,
        confirm_deletes: false,
        safeguard: spec.import_safeguard.clone(),
        settings_hash: "bench".into(),
        full_sync_interval: std::time::Duration::from_secs(24 * 3600),
        max_duration: std::time::Duration::from_secs(3600),
    };
    let started = Instant::now();
    let report = job::run(job, connector, store.clone(), idsync::sync::cancel::Cancel::new()).await;
    let c = report.counts;
    println!(
        "{label:<28} {:>8.2} s  outcome {:?}  created {} updated {} deleted {} unchanged {}  pages {}  peak RSS {:.0} MiB",
        started.elapsed().as_secs_f64(),
        report.outcome,
        c.created,
        c.updated,
        c.deleted,
        c.unchanged,
        report.pages,
        common::peak_rss_mib()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("idsync.db")).expect("store"));
    let first = export(None);
    println!("export: {ROWS} rows, {:.1} MiB", first.len() as f64 / 1048576.0);
    runtime.block_on(async {
        sync(&store, first.clone(), "first full sync").await;
        sync(&store, first, "unchanged full resync").await;
        sync(&store, export(Some(100)), "1% changed (new e-mail)").await;
    });
}
