//! The sync path against its floor, side by side in one run (issue 16):
//!
//! - **CSV**, a 100,000-row HR export (~21.7 MB) served over loopback HTTP
//!   by this bench: the floor is a plain client (reqwest GET of the whole
//!   body, then the `csv` crate reading every record as UTF-8 strings);
//!   idsync is a whole sync through the engine (csv connector, diff,
//!   staging, safeguard, one commit): the first full sync into an empty
//!   connection, an unchanged resync and a resync with 1% of rows changed.
//! - **SCIM**, 10,000 users in pre-built pages of 100 served from memory,
//!   so the client is what is measured: the floor pages through
//!   `/Users?startIndex=…&count=100` and parses each page's JSON; idsync is
//!   a full sync of the same pages.
//! - **Delta**, 100 changed accounts against a 100,000-account connection:
//!   what a Delta costs now that it looks its ids up instead of loading the
//!   connection's whole index (printed beside what loading the index costs).
//!
//! Each figure is the minimum over alternating rounds; every step prints
//! its peak resident memory (the peak reset before the step) and the
//! resident memory after it. Benchmarks print, they do not assert:
//! `cargo bench --bench sync` (`SYNC_BENCH_ROUNDS`, default 3).

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use idsync::connectors::{self, Capabilities, Connector, ConnectorError, Page, ProviderInputs, ReadKind, ReadPlan};
use idsync::model::{Account, ConnectionRef};
use idsync::store::{SqliteStore, Store};
use idsync::sync::cancel::Cancel;
use idsync::sync::job::{self, SyncReport};
use idsync_api::{Connection, ConnectionSpec, SyncMode};
use serde_json::json;

const ROWS: usize = 100_000;
const SCIM_USERS: usize = 10_000;
const SCIM_PAGE: usize = 100;
const DELTA_CHANGES: usize = 100;

// --- the data ---------------------------------------------------------------

/// The HR export; with `changed_every`, every n-th row has a new e-mail.
fn export(changed_every: Option<usize>) -> Bytes {
    let mut out = String::with_capacity(ROWS * 230);
    out.push_str(
        "employee_id,first_name,last_name,display_name,work_email,department,title,manager_id,\
         location,cost_center,phone,hire_date,termination_date,status,groups\n",
    );
    for i in 0..ROWS {
        let domain = match changed_every {
            Some(n) if i % n == 0 => "acme-corp.example",
            _ => "acme.example",
        };
        out.push_str(&format!(
            "E{i:06},First{i},Last{i},First{i} Last{i},first{i}.last{i}@{domain},Department {},Senior Title {},\
             E{:06},\"Building {}, Floor {}, Desk {}\",CC-{:04},+1-555-01{:02}-{i:06},2020-01-{:02},,active,\
             all-staff;dept-{};site-{}\n",
            i % 40,
            i % 90,
            i / 10,
            i % 12,
            i % 9,
            i % 150,
            i % 700,
            i % 100,
            i % 28 + 1,
            i % 40,
            i % 12,
        ));
    }
    Bytes::from(out)
}

/// The SCIM ListResponse pages, by startIndex.
fn scim_pages() -> HashMap<usize, Bytes> {
    let mut pages = HashMap::new();
    for start in (1..=SCIM_USERS).step_by(SCIM_PAGE) {
        let resources: Vec<serde_json::Value> = (start..start + SCIM_PAGE)
            .filter(|i| *i <= SCIM_USERS)
            .map(|i| {
                json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
                    "id": format!("2819c223-7f76-453a-919d-{i:012}"),
                    "externalId": format!("E{i:06}"),
                    "userName": format!("user{i}@acme.example"),
                    "name": {"givenName": format!("First{i}"), "familyName": format!("Last{i}"),
                             "formatted": format!("First{i} Last{i}")},
                    "displayName": format!("First{i} Last{i}"),
                    "title": format!("Senior Title {}", i % 90),
                    "emails": [{"value": format!("first{i}.last{i}@acme.example"), "type": "work", "primary": true}],
                    "active": true,
                    "groups": [{"value": "g-all", "display": "all-staff"},
                               {"value": format!("g-{}", i % 40), "display": format!("dept-{}", i % 40)}],
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                        "employeeNumber": format!("{i:06}"),
                        "department": format!("Department {}", i % 40),
                        "manager": {"value": format!("2819c223-7f76-453a-919d-{:012}", i / 10 + 1)},
                    },
                    "meta": {"resourceType": "User", "created": "2024-01-01T00:00:00Z",
                             "lastModified": "2026-01-01T00:00:00Z"},
                })
            })
            .collect();
        let page = json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": SCIM_USERS,
            "startIndex": start,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        });
        pages.insert(start, Bytes::from(serde_json::to_vec(&page).expect("page")));
    }
    pages
}

// --- the static server -------------------------------------------------------

/// What the loopback server answers: the export (swapped between steps) and
/// the SCIM pages, all built before anything is timed.
struct Served {
    export: Mutex<Bytes>,
    scim: HashMap<usize, Bytes>,
}

fn respond(status: u16, content_type: &str, body: Bytes) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(body));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, value);
    }
    response
}

fn answer(served: &Served, uri: &http::Uri) -> http::Response<Full<Bytes>> {
    match uri.path() {
        "/export.csv" => {
            let body = served.export.lock().map(|b| b.clone()).unwrap_or_default();
            respond(200, "text/csv", body)
        }
        "/scim/ServiceProviderConfig" => respond(
            200,
            "application/scim+json",
            Bytes::from_static(br#"{"filter":{"supported":false,"maxResults":200}}"#),
        ),
        "/scim/Users" => {
            let start = uri
                .query()
                .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "startIndex"))
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(1);
            let page = served.scim.get(&start).cloned().unwrap_or_else(|| {
                Bytes::from(
                    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                           "totalResults": SCIM_USERS, "startIndex": start, "itemsPerPage": 0, "Resources": []})
                    .to_string(),
                )
            });
            respond(200, "application/scim+json", page)
        }
        _ => respond(404, "text/plain", Bytes::from_static(b"not found")),
    }
}

async fn serve(served: Arc<Served>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let response = answer(&served, request.uri());
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

// --- the floors ---------------------------------------------------------------

/// GET the export, then read every record as strings: what any client must do.
async fn csv_floor(client: &reqwest::Client, url: &str) -> usize {
    let body = client.get(url).send().await.expect("GET").bytes().await.expect("body");
    let mut reader = csv::ReaderBuilder::new().from_reader(&body[..]);
    let mut record = csv::StringRecord::new();
    let (mut rows, mut bytes) = (0, 0);
    while reader.read_record(&mut record).expect("record") {
        rows += 1;
        bytes += record.iter().map(str::len).sum::<usize>();
    }
    std::hint::black_box(bytes);
    rows
}

/// Page through /Users as a SCIM client does, parsing each page.
async fn scim_floor(client: &reqwest::Client, base: &str) -> usize {
    let mut users = 0;
    let mut start = 1;
    loop {
        let url = format!("{base}/scim/Users?startIndex={start}&count={SCIM_PAGE}");
        let body = client.get(&url).bearer_auth("bench").send().await.expect("GET").bytes().await.expect("body");
        let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let n = page["Resources"].as_array().map_or(0, Vec::len);
        users += n;
        let total = page["totalResults"].as_u64().unwrap_or(0) as usize;
        start += n;
        if n == 0 || start > total {
            return users;
        }
    }
}

// --- idsync -------------------------------------------------------------------

fn csv_spec(base: &str) -> ConnectionSpec {
    Connection::test("hr")
        .csv_url(&format!("{base}/export.csv"))
        .page_size(1000)
        .max_delete_percent(100)
        .id_column("employee_id")
        .column("email", "work_email")
        .column("displayName", "display_name")
        .column("enabled", "status")
        .column("groups", "groups")
        .spec()
}

fn scim_spec(base: &str) -> ConnectionSpec {
    Connection::test("scim").scim(&format!("{base}/scim")).page_size(SCIM_PAGE as u32).max_delete_percent(100).spec()
}

async fn sync_with(store: &Arc<dyn Store>, spec: &ConnectionSpec, inputs: ProviderInputs, name: &str) -> SyncReport {
    let connector = connectors::build(spec, inputs).expect("connector");
    let report = job::run(common::job_for(name, spec, SyncMode::Full), connector, store.clone(), Cancel::new()).await;
    assert_eq!(report.outcome, idsync::model::RunOutcome::Succeeded, "the bench's sync failed: {report:?}");
    report
}

/// A source that serves pages from memory: the delta bench's, so that what
/// it times is the engine and the store, not a protocol.
struct Memory {
    pages: Vec<Vec<Account>>,
}

impl Connector for Memory {
    fn capabilities(&self) -> Capabilities {
        Capabilities { delta: true, delta_deletions: true, groups: false }
    }
    fn begin<'a>(
        &'a mut self,
        mode: SyncMode,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
        let kind = if mode == SyncMode::Delta && cursor.is_some() { ReadKind::Delta } else { ReadKind::Full };
        Box::pin(async move { Ok(ReadPlan { kind, reason: None }) })
    }
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
        let page = (!self.pages.is_empty()).then(|| self.pages.remove(0));
        Box::pin(async move { Ok(page.map(|accounts| Page { number: 1, accounts, deleted: Vec::new() })) })
    }
    fn cursor(&self) -> Option<String> {
        Some("bench-cursor".into())
    }
}

fn person(i: usize, domain: &str) -> Account {
    let mut a = Account::new(format!("E{i:06}"));
    a.email = Some(format!("first{i}.last{i}@{domain}"));
    a.display_name = Some(format!("First{i} Last{i}"));
    a.groups = vec!["all-staff".into(), format!("dept-{}", i % 40)];
    a.attributes.insert("title".into(), json!(format!("Senior Title {}", i % 90)));
    a
}

// --- measuring -------------------------------------------------------------

/// One step's figures: seconds, peak RSS during it and RSS after it (MiB).
#[derive(Clone, Copy, Debug)]
struct Figure {
    secs: f64,
    /// CPU seconds of the whole process (user + system) during the step:
    /// steadier than wall time on a machine other builds share.
    cpu: f64,
    peak: f64,
    after: f64,
}

#[derive(Default)]
struct Table {
    rows: Vec<(&'static str, Vec<Figure>)>,
}

impl Table {
    fn add(&mut self, label: &'static str, figure: Figure) {
        match self.rows.iter_mut().find(|(l, _)| *l == label) {
            Some((_, figures)) => figures.push(figure),
            None => self.rows.push((label, vec![figure])),
        }
    }

    fn best(&self, label: &str) -> Option<Figure> {
        let figures = &self.rows.iter().find(|(l, _)| *l == label)?.1;
        figures.iter().copied().min_by(|a, b| a.secs.total_cmp(&b.secs))
    }
}

async fn measure<T>(table: &mut Table, label: &'static str, step: impl Future<Output = T>) -> T {
    common::reset_peak_rss();
    let cpu_before = cpu_secs();
    let started = Instant::now();
    let out = step.await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu_before;
    let figure = Figure { secs, cpu, peak: common::peak_rss_mib(), after: common::rss_mib() };
    println!(
        "  {label:<34} {secs:>8.3} s  cpu {cpu:>7.3} s   peak RSS {:>6.0} MiB   after {:>6.0} MiB",
        figure.peak, figure.after
    );
    table.add(label, figure);
    out
}

/// The process's CPU time so far (Linux `/proc/self/stat`, in clock ticks
/// of 1/100 s); 0 where that is not there.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let field = |n: usize| rest.split_whitespace().nth(n).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime: fields 14 and 15 of the line, the 12th and 13th after
    // the name (indexes 11 and 12 from the state, field 3).
    (field(11) + field(12)) / 100.0
}

fn counts(report: &SyncReport) -> String {
    let c = report.counts;
    format!("created {} updated {} deleted {} unchanged {}", c.created, c.updated, c.deleted, c.unchanged)
}

fn main() {
    idsync::tls::install_crypto_provider();
    let rounds: usize = std::env::var("SYNC_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let same = export(None);
    let changed = export(Some(100));
    let served = Arc::new(Served { export: Mutex::new(same.clone()), scim: scim_pages() });
    println!(
        "CSV export: {ROWS} rows, {:.1} MB; SCIM: {SCIM_USERS} users in pages of {SCIM_PAGE}; {rounds} rounds",
        same.len() as f64 / 1e6
    );
    let set_export = |data: &Bytes| {
        if let Ok(mut export) = served.export.lock() {
            *export = data.clone();
        }
    };
    let mut table = Table::default();
    runtime.block_on(async {
        let base = serve(served.clone()).await;
        let client = reqwest::Client::new();
        let url = format!("{base}/export.csv");
        let csv = csv_spec(&base);
        let scim = scim_spec(&base);
        let scim_inputs = || {
            let mut inputs = ProviderInputs::default();
            inputs.secret.insert("token".into(), b"bench".to_vec());
            inputs
        };
        for round in 1..=rounds {
            println!("round {round}");
            let dir = tempfile::tempdir().expect("temp dir");
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("idsync.db")).expect("store"));

            set_export(&same);
            let rows = measure(&mut table, "CSV floor (GET + csv parse)", csv_floor(&client, &url)).await;
            assert_eq!(rows, ROWS);
            let r =
                measure(&mut table, "CSV idsync first full sync", sync_with(&store, &csv, Default::default(), "hr"))
                    .await;
            println!("    {}", counts(&r));
            measure(&mut table, "CSV floor (GET + csv parse)", csv_floor(&client, &url)).await;
            let r =
                measure(&mut table, "CSV idsync unchanged resync", sync_with(&store, &csv, Default::default(), "hr"))
                    .await;
            println!("    {}", counts(&r));
            set_export(&changed);
            measure(&mut table, "CSV floor (GET + csv parse), 1%", csv_floor(&client, &url)).await;
            let r =
                measure(&mut table, "CSV idsync 1% changed", sync_with(&store, &csv, Default::default(), "hr")).await;
            println!("    {}", counts(&r));

            let users = measure(&mut table, "SCIM floor (paged GET + JSON)", scim_floor(&client, &base)).await;
            assert_eq!(users, SCIM_USERS);
            let r = measure(&mut table, "SCIM idsync full sync", sync_with(&store, &scim, scim_inputs(), "scim")).await;
            println!("    {}", counts(&r));
            measure(&mut table, "SCIM floor (paged GET + JSON)", scim_floor(&client, &base)).await;
            let r =
                measure(&mut table, "SCIM idsync unchanged resync", sync_with(&store, &scim, scim_inputs(), "scim"))
                    .await;
            println!("    {}", counts(&r));

            // The delta: a 100k connection, then 100 changed accounts.
            let everyone: Vec<Account> = (0..ROWS).map(|i| person(i, "acme.example")).collect();
            let pages: Vec<Vec<Account>> = everyone.chunks(1000).map(<[Account]>::to_vec).collect();
            drop(everyone);
            let spec = Connection::test("delta").max_delete_percent(100).spec();
            let full = common::job_for("delta", &spec, SyncMode::Full);
            let report = job::run(full, Box::new(Memory { pages }), store.clone(), Cancel::new()).await;
            assert_eq!(report.counts.created as usize, ROWS, "{report:?}");
            let c = ConnectionRef { namespace: "bench".into(), name: "delta".into() };
            let index_store = store.clone();
            measure(&mut table, "(what a Delta loaded before: index)", async move {
                tokio::task::spawn_blocking(move || index_store.account_index(&c).map(|i| i.len()))
                    .await
                    .expect("task")
                    .expect("index")
            })
            .await;
            let few: Vec<Account> = (0..DELTA_CHANGES).map(|i| person(i * 997, "acme-corp.example")).collect();
            let delta = common::job_for("delta", &spec, SyncMode::Delta);
            let r = measure(
                &mut table,
                "Delta of 100 changes (100k stored)",
                job::run(delta, Box::new(Memory { pages: vec![few] }), store.clone(), Cancel::new()),
            )
            .await;
            assert_eq!(r.mode, SyncMode::Delta, "{r:?}");
            println!("    {}", counts(&r));
            drop(store);
            println!("  RSS with the store closed: {:.0} MiB", common::rss_mib());
        }
    });

    println!("\nminimum of {rounds} rounds (peak RSS and RSS after are those of the fastest run):");
    let line = |label: &str, floor: Option<&str>| {
        let Some(f) = table.best(label) else { return };
        let ratio = floor.and_then(|l| table.best(l)).map(|fl| format!("{:>6.2}x the floor", f.secs / fl.secs));
        println!(
            "{label:<38} {:>8.3} s  cpu {:>7.3} s  {:<19} peak RSS {:>5.0} MiB  after {:>5.0} MiB",
            f.secs,
            f.cpu,
            ratio.unwrap_or_default(),
            f.peak,
            f.after
        );
    };
    line("CSV floor (GET + csv parse)", None);
    line("CSV idsync first full sync", Some("CSV floor (GET + csv parse)"));
    line("CSV idsync unchanged resync", Some("CSV floor (GET + csv parse)"));
    line("CSV floor (GET + csv parse), 1%", None);
    line("CSV idsync 1% changed", Some("CSV floor (GET + csv parse), 1%"));
    line("SCIM floor (paged GET + JSON)", None);
    line("SCIM idsync full sync", Some("SCIM floor (paged GET + JSON)"));
    line("SCIM idsync unchanged resync", Some("SCIM floor (paged GET + JSON)"));
    line("(what a Delta loaded before: index)", None);
    line("Delta of 100 changes (100k stored)", None);
}
