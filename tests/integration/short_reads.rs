//! Short CSV reads never delete: an export that arrives cut short, in a way
//! the Connection asked idsync to check, fails the sync and keeps every
//! stored account, even with the import safeguard turned off.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Harness;
use common::operator::{Operator, TestClock, test_config};
use idsync_api::resync_request::Phase;
use idsync_api::{Connection, ResyncRequest};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn export(rows: usize) -> String {
    let mut body = String::from("employee_id,work_email\n");
    for i in 0..rows {
        body.push_str(&format!("E{i:04},user{i}@acme.example\n"));
    }
    body
}

/// What the server sends: the stated row count, and the body.
type Served = Arc<Mutex<(u64, String)>>;

/// An HTTP server that states the row count in `X-Total-Count` and ends
/// the body by closing the connection (no Content-Length, not chunked):
/// the one kind of response whose cut nothing in HTTP shows.
async fn close_delimited_server(served: Served) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://127.0.0.1:{}/people.csv", listener.local_addr().expect("addr").port());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (count, body) = served.lock().expect("served").clone();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\nx-total-count: {count}\r\nconnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    url
}

async fn account_count(h: &Harness, name: &str) -> Option<u64> {
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    api.get(name).await.expect("connection").status.and_then(|s| s.account_count)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_export_fails_the_sync_and_deletes_nothing() {
    let h = Harness::start().await;
    idsync::dev::install_crds(&h.client).await.expect("CRDs");
    let data = tempfile::tempdir().expect("data dir");
    let operator = Operator::start(&h.cluster, data.path(), Arc::new(TestClock::default()), test_config("operator-a"));
    let served: Served = Arc::new(Mutex::new((1000, export(1000))));
    let url = close_delimited_server(served.clone()).await;
    let connection = Connection::test("hr")
        .csv_url(&url)
        .id_column("employee_id")
        .column("email", "work_email")
        .row_count_header("X-Total-Count")
        .require_trailing_newline()
        .max_delete_percent(100)
        .build();
    let api: Api<Connection> = Api::namespaced(h.client.clone(), "default");
    api.patch("hr", &PatchParams::apply("test").force(), &Patch::Apply(&connection)).await.expect("connection");

    h.create_request(ResyncRequest::test("first").connections(["hr"]).full()).await;
    let status = h.finished_request("first", Duration::from_secs(60)).await.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(account_count(&h, "hr").await, Some(1000));

    // 100 of 1,000 rows, cut at a line boundary; then a row cut inside its
    // last column with the right count (a source whose count is stale).
    let hundred = export(100);
    let mid_row = format!("{}E0999,user999@acme.ex", &export(999));
    for (name, body, why) in [
        ("cut-at-a-line", hundred, "the export holds 100 rows but its x-total-count header says 1000"),
        ("cut-in-a-row", mid_row, "the export does not end with a line break"),
    ] {
        *served.lock().expect("served") = (1000, body);
        h.create_request(ResyncRequest::test(name).connections(["hr"]).full()).await;
        let status = h.finished_request(name, Duration::from_secs(60)).await.status.expect("status");
        assert_eq!(status.phase, Some(Phase::Failed), "{name}: {status:#?}");
        assert!(format!("{status:?}").contains(why), "{name}: {status:#?}");
        assert_eq!(account_count(&h, "hr").await, Some(1000), "{name}: nothing was deleted");
    }

    // The API server refuses a row count header on a source without a response.
    let invalid = api
        .patch(
            "hr",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"provider": {"csv": {
                "source": {"url": null, "configMapKeyRef": {"name": "hr", "key": "people.csv"}}}}}})),
        )
        .await
        .expect_err("refused");
    assert!(invalid.to_string().contains("rowCountHeader applies to url sources only"), "{invalid}");
    operator.stop().await;
}
