//! A webhook receiver that checks each delivery's HMAC-SHA256 signature
//! (`X-Idsync-Signature: sha256=<hex>`) against the shared secret, and can
//! be down for a while: it answers 503 to its first `unavailable` requests.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub idempotency_key: String,
    pub event: String,
    pub signature_valid: bool,
    /// Whether it was answered 2xx (delivered) or 503.
    pub accepted: bool,
    pub body: serde_json::Value,
    pub raw: String,
}

pub struct WebhookReceiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

fn expected_signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let hex: String = ring::hmac::sign(&key, body).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl WebhookReceiver {
    pub async fn start(secret: &str, unavailable: usize) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://127.0.0.1:{}/hooks/idsync", listener.local_addr().expect("addr").port());
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (log, secret) = (received.clone(), secret.as_bytes().to_vec());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (log, secret) = (log.clone(), secret.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let (log, secret) = (log.clone(), secret.clone());
                        async move {
                            let header = |name: &str| {
                                request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
                            };
                            let (key, event, signature) =
                                (header("idempotency-key"), header("x-idsync-event"), header("x-idsync-signature"));
                            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let mut log = log.lock().expect("log");
                            let accepted = log.len() >= unavailable;
                            log.push(Received {
                                idempotency_key: key,
                                event,
                                signature_valid: signature == expected_signature(&secret, &body),
                                accepted,
                                body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                                raw: String::from_utf8_lossy(&body).into_owned(),
                            });
                            let status = if accepted { 200 } else { 503 };
                            let response = hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"")))
                                .expect("response");
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        WebhookReceiver { url, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("log").clone()
    }
}
