//! The operator's plain-HTTP endpoint for the kubelet and Prometheus:
//! `GET /metrics` (OpenMetrics text), `GET /healthz` (liveness: the process
//! answers) and `GET /readyz` (readiness: the operator says it is ready).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The content type of the OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// How long open connections get to finish their request once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the bound address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

struct State {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// Binds `addr` (port 0 picks a free port), serves in a spawned task until
/// `shutdown` resolves, and returns the bound address. On shutdown the
/// listener is closed at once and open connections finish their current
/// request.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, HealthError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| HealthError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(HealthError::LocalAddr)?;
    let state = Arc::new(State { metrics, ready });
    tokio::spawn(accept_loop(listener, state, shutdown));
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    let stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, state.clone(), stop.clone()));
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "health endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    stop.cancel();
    tracing::debug!("health endpoint stopped");
}

async fn connection(stream: tokio::net::TcpStream, state: Arc<State>, stop: CancellationToken) {
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&request, &state)) }
    });
    // The timer enables hyper's header read timeout, so a client that never
    // finishes its request does not hold a connection forever.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "health endpoint connection");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}

fn respond<B>(request: &Request<B>, state: &State) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE));
            response
        }
        "/readyz" if !state.ready.load(Ordering::Acquire) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::OK, "ok\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(TEXT_CONTENT_TYPE));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start() -> (SocketAddr, Arc<Metrics>, Arc<AtomicBool>, tokio::sync::oneshot::Sender<()>) {
        crate::tls::install_crypto_provider();
        let metrics = Arc::new(Metrics::new());
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let addr =
            serve("127.0.0.1:0".parse().expect("addr"), metrics.clone(), ready.clone(), shutdown).await.expect("serve");
        (addr, metrics, ready, stop)
    }

    async fn get(client: &reqwest::Client, addr: SocketAddr, path: &str) -> (StatusCode, Option<String>, String) {
        let response = client.get(format!("http://{addr}{path}")).send().await.expect("request");
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().expect("ascii content type").to_string());
        (status, content_type, response.text().await.expect("body"))
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let (addr, metrics, ready, _stop) = start().await;
        assert_ne!(addr.port(), 0);
        let client = reqwest::Client::new();

        let (status, content_type, body) = get(&client, addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        assert_eq!(content_type.as_deref(), Some(TEXT_CONTENT_TYPE));

        let (status, _, body) = get(&client, addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"));
        ready.store(true, Ordering::Release);
        let (status, _, body) = get(&client, addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        ready.store(false, Ordering::Release);
        let (status, _, _) = get(&client, addr, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        metrics.set_leader(true);
        metrics.reconcile_error("connection", "kube");
        let (status, content_type, body) = get(&client, addr, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert!(body.lines().any(|l| l == "idsync_leader 1"), "{body}");
        assert!(body.contains(r#"idsync_reconcile_errors_total{controller="connection",error="kube"} 1"#), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");

        let (status, _, _) = get(&client, addr, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = get(&client, addr, "/metrics/extra").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let response = client.post(format!("http://{addr}/healthz")).send().await.expect("post");
        assert_eq!(response.status().as_u16(), 405);
    }

    #[tokio::test]
    async fn shutdown_closes_the_listener() {
        let (addr, _metrics, _ready, stop) = start().await;
        // A kept-alive connection is open when shutdown begins.
        let client = reqwest::Client::new();
        assert_eq!(get(&client, addr, "/healthz").await.0, StatusCode::OK);
        stop.send(()).expect("server still running");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => break,
                // A connection queued while the listener closed is reset: try again.
                result => {
                    assert!(
                        result.is_ok() || matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                        "{result:?}"
                    );
                    assert!(tokio::time::Instant::now() < deadline, "the listener is still open");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        // The idle kept-alive connection was closed too: a new request fails.
        assert!(client.get(format!("http://{addr}/healthz")).send().await.is_err());
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let (addr, metrics, ready, _stop) = start().await;
        let error = serve(addr, metrics, ready, std::future::pending()).await.expect_err("address in use");
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
