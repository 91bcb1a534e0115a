//! A local HTTP server that serves a CSV export the way a test needs it:
//! whole, slowly (so a sync is still running when the test acts), or cut
//! off part-way (a source that fails on a later page).
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How the next downloads are served.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    pub body: String,
    /// Pause after each chunk of `chunk_lines` lines.
    pub delay_per_chunk: Duration,
    pub chunk_lines: usize,
    /// Close the connection after this many lines (a broken source).
    pub cut_after_lines: Option<usize>,
}

pub struct CsvServer {
    pub url: String,
    behaviour: Arc<Mutex<Behaviour>>,
    pub requests: Arc<Mutex<usize>>,
}

impl CsvServer {
    pub async fn start(body: &str) -> CsvServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://127.0.0.1:{}/export/people.csv", listener.local_addr().expect("addr").port());
        let behaviour =
            Arc::new(Mutex::new(Behaviour { body: body.to_string(), chunk_lines: 100, ..Default::default() }));
        let requests = Arc::new(Mutex::new(0));
        let (b, r) = (behaviour.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (b, r) = (b.clone(), r.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let current = b.lock().expect("behaviour").clone();
                        *r.lock().expect("count") += 1;
                        async move { Ok::<_, Infallible>(respond(current)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CsvServer { url, behaviour, requests }
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().expect("behaviour"));
    }

    pub fn request_count(&self) -> usize {
        *self.requests.lock().expect("count")
    }
}

fn respond(b: Behaviour) -> hyper::Response<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    let lines: Vec<String> = b.body.lines().map(|l| format!("{l}\n")).collect();
    let chunk = b.chunk_lines.max(1);
    let stream = futures::stream::unfold((0usize, lines, b), move |(at, lines, b)| async move {
        if at >= lines.len() {
            return None;
        }
        if let Some(cut) = b.cut_after_lines
            && at >= cut
        {
            // Let what was sent reach the client before the connection dies.
            tokio::time::sleep(b.delay_per_chunk.max(Duration::from_millis(50))).await;
            return Some((Err(std::io::Error::other("the export server went away")), (usize::MAX, lines, b)));
        }
        if at > 0 && !b.delay_per_chunk.is_zero() {
            tokio::time::sleep(b.delay_per_chunk).await;
        }
        let end = (at + chunk).min(lines.len()).min(b.cut_after_lines.unwrap_or(usize::MAX));
        let data: String = lines[at..end].concat();
        Some((Ok(Frame::data(Bytes::from(data))), (end, lines, b)))
    });
    let mut response = hyper::Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/csv"));
    response
}
