//! A local HTTP server for the connectors' tests: hyper on 127.0.0.1, with a
//! handler that sees the request number (from 0) and the request head.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;
pub(crate) type Handler =
    Arc<dyn Fn(usize, http::request::Parts) -> BoxFuture<'static, http::Response<Body>> + Send + Sync>;

/// A running server; it stops when the test's runtime ends.
pub(crate) struct TestServer {
    pub base: String,
    requests: Arc<AtomicUsize>,
}

impl TestServer {
    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> reqwest::Url {
        reqwest::Url::parse(&format!("{}{path}", self.base)).unwrap()
    }
}

pub(crate) async fn serve(handler: Handler) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let (parts, _) = request.into_parts();
                    let response = handler(n, parts);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TestServer { base: format!("http://{addr}"), requests }
}

pub(crate) fn handler<F>(f: F) -> Handler
where
    F: Fn(usize, http::request::Parts) -> BoxFuture<'static, http::Response<Body>> + Send + Sync + 'static,
{
    Arc::new(f)
}

/// A response with a status, headers and a complete body.
pub(crate) fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> http::Response<Body> {
    let mut builder = http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into()).map_err(|never| match never {}).boxed()).unwrap()
}

/// A 200 whose body comes from a channel, as the test sends it: `Ok` data
/// pieces, then the end (the sender dropped) or an `Err` that breaks the
/// connection before the end of the (chunked) body.
pub(crate) fn channel_body() -> (tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>, http::Response<Body>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item.map(Frame::data), rx)) });
    let response = http::Response::builder()
        .status(200)
        .header("content-type", "text/csv")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    (tx, response)
}

/// A scim Connection's spec and settings for `base_url`, `page_size` users
/// a page.
pub(crate) fn scim_spec(
    base_url: &str,
    page_size: u32,
) -> (idsync_api::ConnectionSpec, idsync_api::connection::ScimSettings) {
    use idsync_api::Connection;
    let spec = Connection::test("idp").scim(base_url).credentials("s").page_size(page_size).spec();
    let settings = spec.expect_scim().clone();
    (spec, settings)
}

/// A provider's inputs holding a bearer `token`.
pub(crate) fn token_inputs(token: &str) -> super::ProviderInputs {
    let mut inputs = super::ProviderInputs::default();
    inputs.secret.insert("token".into(), token.as_bytes().to_vec());
    inputs
}

/// One retry and short backoffs, so that a fault shows at once.
pub(crate) fn fast_http() -> super::http::HttpSettings {
    super::http::HttpSettings {
        timeout: std::time::Duration::from_secs(5),
        requests_per_second: None,
        max_retries: 1,
        initial_backoff: std::time::Duration::from_millis(10),
        max_backoff: std::time::Duration::from_millis(50),
        address_policy: super::address::AddressPolicy { allow_loopback: true },
    }
}
