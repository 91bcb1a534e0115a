//! The HTTP client every HTTP-based provider uses.
//!
//! One [`HttpClient`] per read (or per connector) wraps a `reqwest::Client`
//! and adds what every provider needs:
//!
//! - retries of 5xx answers, connection errors and timeouts, with exponential
//!   backoff and full jitter, up to [`HttpSettings::max_retries`] retries;
//! - 429 (and a 5xx carrying `Retry-After`) waits as long as `Retry-After`
//!   says (delta-seconds or an HTTP-date), or for a 429 without it until
//!   Okta's `X-Rate-Limit-Reset`, capped by [`HttpSettings::max_backoff`];
//!   it counts as a retry, and [`HttpClient::throttled`] adds it up;
//! - other 4xx are never retried; 401 and 403 become
//!   [`ConnectorError::Unauthorized`];
//! - an optional requests-per-second limit shared by every clone of the
//!   client (each attempt, retries included, takes a slot);
//! - responses as streaming bodies ([`HttpClient::send`],
//!   [`Response::chunk`]) or read whole ([`HttpClient::send_buffered`],
//!   [`HttpClient::json`]).
//!
//! Every connection goes only where the Connection's `spec.network` allows
//! ([`super::address`]): names are resolved by a resolver that refuses
//! loopback and link-local answers, and IP literals (which are never
//! resolved) are checked on the request and on every redirect hop. A refused
//! address is [`ConnectorError::AddressNotAllowed`], never retried.
//!
//! Secrets stay out of errors and logs: the credentials go into an
//! `Authorization` header marked sensitive (which reqwest also drops on a
//! redirect to another origin), headers are never logged, URLs are shown
//! without user info and with secret-looking query values replaced, and every
//! value registered on a [`Request`] is replaced in any text quoted from a
//! response body.
//!
//! The timeout bounds the wait for the response head and, while a body is
//! read, each wait for more of it; a buffered body must be complete within
//! the timeout of its request.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::address::{AddressPolicy, AddressRefused, CheckedResolver};
use super::{ConnectorError, SECRET_FIELD, redact};
use idsync_api::ConnectionSpec;

/// The largest body [`HttpClient::send_buffered`] reads into memory.
pub const MAX_BUFFERED_BODY: usize = 64 * 1024 * 1024;
/// How much of an error answer's body is quoted in the error.
const ERROR_BODY_QUOTE_CHARS: usize = 300;
/// How much of an error answer's body is read at most.
const ERROR_BODY_READ_BYTES: usize = 8 * 1024;
/// Redirects followed at most.
const MAX_REDIRECTS: usize = 10;

/// How an [`HttpClient`] behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Timeout of one attempt (see the module documentation).
    pub timeout: Duration,
    /// Most requests per second; None: no limit beyond the server's 429s.
    pub requests_per_second: Option<u32>,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The backoff before the first retry; it doubles with each retry.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts, `Retry-After` included.
    pub max_backoff: Duration,
    /// Which addresses requests may go to (default: none on loopback).
    pub address_policy: AddressPolicy,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            timeout: Duration::from_secs(30),
            requests_per_second: None,
            max_retries: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            address_policy: AddressPolicy::default(),
        }
    }
}

impl HttpSettings {
    /// The settings a Connection asks for (`requestTimeoutSeconds`,
    /// `requestsPerSecond`, `network`), with the default retry policy.
    pub fn from_spec(spec: &ConnectionSpec) -> Self {
        HttpSettings {
            timeout: Duration::from_secs(u64::from(spec.request_timeout_seconds.max(1))),
            requests_per_second: spec.requests_per_second.filter(|rps| *rps > 0),
            address_policy: AddressPolicy::from_spec(spec),
            ..HttpSettings::default()
        }
    }
}

/// Checks a URL from a spec: it must parse, and be `https://`, or `http://`
/// on the loopback interface only. `field` names the spec field in the error.
pub fn parse_url(url: &str, field: &str) -> Result<Url, ConnectorError> {
    let config = |message: String| ConnectorError::Config { field: field.to_string(), message };
    let parsed = Url::parse(url).map_err(|e| config(format!("not a valid URL: {e}")))?;
    if !scheme_allowed(&parsed) {
        return Err(config(format!(
            "{} is not allowed: use https:// (plain http:// only on 127.0.0.1, localhost or [::1])",
            display_url(&parsed)
        )));
    }
    Ok(parsed)
}

fn scheme_allowed(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")),
        _ => false,
    }
}

/// Query parameter names whose values are never shown.
const SECRET_QUERY_WORDS: [&str; 10] =
    ["token", "secret", "password", "passwd", "key", "sig", "auth", "credential", "code", "session"];

/// A URL as it may be shown in errors and logs: no user info, and the values
/// of secret-looking query parameters (`token`, `api_key`, `X-Amz-Signature`…)
/// replaced.
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = SECRET_QUERY_WORDS.iter().any(|word| lower.contains(word));
                (k.into_owned(), if secret { "REDACTED".to_string() } else { v.into_owned() })
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// One request: method, URL, headers and body, cloned for each attempt.
/// `Debug` shows neither header values nor secrets.
#[derive(Clone)]
pub struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    secrets: Vec<String>,
    /// Error statuses handed back as answers (see [`Request::pass_status`]).
    passed: Vec<StatusCode>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &display_url(&self.url))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_bytes", &self.body.as_ref().map(Bytes::len))
            .finish()
    }
}

impl Request {
    pub fn new(method: Method, url: Url) -> Self {
        Request { method, url, headers: HeaderMap::new(), body: None, secrets: Vec::new(), passed: Vec::new() }
    }

    pub fn get(url: Url) -> Self {
        Request::new(Method::GET, url)
    }

    pub fn post(url: Url) -> Self {
        Request::new(Method::POST, url)
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Adds a query parameter.
    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.url.query_pairs_mut().append_pair(name, value);
        self
    }

    /// Adds a (non-secret) header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// `Authorization: <value>`, marked sensitive, its value registered as a
    /// secret. Errors (without the value) when it cannot be a header value.
    pub fn authorization(mut self, value: &str) -> Result<Self, ConnectorError> {
        let mut header = HeaderValue::from_str(value).map_err(|_| ConnectorError::Config {
            field: SECRET_FIELD.to_string(),
            message: "the credentials contain characters an HTTP header cannot carry".to_string(),
        })?;
        header.set_sensitive(true);
        self.headers.insert(AUTHORIZATION, header);
        self.secrets.push(value.to_string());
        Ok(self)
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer_auth(self, token: &str) -> Result<Self, ConnectorError> {
        self.secret(token).authorization(&format!("Bearer {token}"))
    }

    /// HTTP basic authentication.
    pub fn basic_auth(self, username: &str, password: &str) -> Result<Self, ConnectorError> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        self.secret(password).secret(&encoded).authorization(&format!("Basic {encoded}"))
    }

    /// Registers a value (a client secret in a form body…) never to show in
    /// an error, wherever the server echoes it.
    pub fn secret(mut self, value: &str) -> Self {
        if !value.is_empty() {
            self.secrets.push(value.to_string());
        }
        self
    }

    /// Hands an answer with this (non-2xx) status back like a success,
    /// neither retried nor turned into an error: for the provider to read
    /// what only it understands (a 304 to a conditional request, GitHub's
    /// 403 whose rate-limit headers say when to try again).
    pub fn pass_status(mut self, status: StatusCode) -> Self {
        self.passed.push(status);
        self
    }

    /// A body with its content type.
    pub fn body(mut self, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        self.headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        self.body = Some(body.into());
        self
    }

    /// A JSON body.
    pub fn json(self, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.body("application/json", body)
    }

    /// An `application/x-www-form-urlencoded` body. Values are not registered
    /// as secrets: use [`secret`](Self::secret) for those that are.
    pub fn form(self, pairs: &[(&str, &str)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        self.body("application/x-www-form-urlencoded", body)
    }

    /// `GET https://host/path?query` with secrets hidden, for messages.
    fn describe(&self) -> String {
        format!("{} {}", self.method, display_url(&self.url))
    }
}

/// A response whose body is read as it arrives.
pub struct Response {
    inner: reqwest::Response,
    status: StatusCode,
    headers: HeaderMap,
    description: String,
    page: Option<u64>,
    timeout: Duration,
    received: u64,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("request", &self.description)
            .field("status", &self.status)
            .field("received", &self.received)
            .finish()
    }
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The page errors are reported on.
    pub fn set_page(&mut self, page: Option<u64>) {
        self.page = page;
    }

    /// The next piece of the body, or None at its end. A body that stops
    /// coming for longer than the timeout is a [`ConnectorError::Timeout`]; a
    /// connection that breaks is a [`ConnectorError::Transport`] ("connection
    /// closed before the end of the response"). Neither is retried: the
    /// caller has already used what came before.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ConnectorError> {
        match tokio::time::timeout(self.timeout, self.inner.chunk()).await {
            Err(_) => Err(ConnectorError::Timeout {
                page: self.page,
                message: format!(
                    "{}: no data for {} while reading the response (after {} bytes)",
                    self.description,
                    seconds(self.timeout),
                    self.received
                ),
            }),
            Ok(Err(e)) => Err(ConnectorError::Transport {
                page: self.page,
                message: format!(
                    "connection closed before the end of the response to {} (after {} bytes): {}",
                    self.description,
                    self.received,
                    error_chain(&e)
                ),
            }),
            Ok(Ok(Some(bytes))) => {
                self.received += bytes.len() as u64;
                Ok(Some(bytes))
            }
            Ok(Ok(None)) => Ok(None),
        }
    }
}

/// A response read whole.
#[derive(Clone, Debug)]
pub struct BufferedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    description: String,
    page: Option<u64>,
}

impl BufferedResponse {
    /// The body parsed as JSON; a body that is not the JSON expected is a
    /// [`ConnectorError::Source`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body).map_err(|e| ConnectorError::Source {
            page: self.page,
            message: format!("{}: the response is not the JSON expected: {e}", self.description),
        })
    }
}

/// A retrying, rate-limited HTTP client. Cheap to clone; clones share the
/// connection pool and the rate limit.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: reqwest::Client,
    settings: HttpSettings,
    limiter: Option<Arc<RateLimiter>>,
    /// 429 answers waited out, and how long (ms), by every clone.
    throttled: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
}

/// What one attempt came to.
enum Attempt<T> {
    Done(T),
    /// Worth another attempt; `wait` is what the server asked for.
    Retry {
        error: ConnectorError,
        status: Option<StatusCode>,
        wait: Option<Duration>,
    },
    Fail(ConnectorError),
}

enum Received {
    Streaming(Response),
    Buffered(BufferedResponse),
}

impl HttpClient {
    pub fn new(settings: HttpSettings) -> Result<Self, ConnectorError> {
        // reqwest is built without a crypto provider; ring is the process's
        // one. Installing it twice is harmless (the second attempt fails).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = settings.address_policy;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if !scheme_allowed(attempt.url()) {
                let refused = format!("refused a redirect to {}: not https", display_url(attempt.url()));
                attempt.error(refused)
            } else if let Err(refused) = policy.check_url_host(attempt.url()) {
                // An IP literal is never resolved: the resolver would not see it.
                attempt.error(refused)
            } else {
                attempt.follow()
            }
        });
        let inner = reqwest::Client::builder()
            .user_agent(concat!("idsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .redirect(redirects)
            .dns_resolver(CheckedResolver { policy })
            .build()
            .map_err(|e| ConnectorError::Transport {
                page: None,
                message: format!("cannot set up the HTTP client: {}", error_chain(&e)),
            })?;
        let limiter = settings.requests_per_second.filter(|rps| *rps > 0).map(|rps| Arc::new(RateLimiter::new(rps)));
        Ok(HttpClient { inner, settings, limiter, throttled: Arc::default() })
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// How many 429 answers this client (and its clones) waited out, and
    /// how long it waited for them in all.
    pub fn throttled(&self) -> (u64, Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.throttled.0.load(Relaxed), Duration::from_millis(self.throttled.1.load(Relaxed)))
    }

    /// Sends a request, retrying as the module documentation says, and gives
    /// the response of the first successful (2xx) attempt with its body still
    /// to read. `page` is the page the request serves, for errors and logs.
    pub async fn send(&self, request: &Request, page: Option<u64>) -> Result<Response, ConnectorError> {
        match self.run(request, page, false).await? {
            Received::Streaming(response) => Ok(response),
            Received::Buffered(_) => unreachable!("send asks for a streaming response"),
        }
    }

    /// Like [`send`](Self::send) but reads the whole body (at most
    /// [`MAX_BUFFERED_BODY`]); a body that breaks off is retried too.
    pub async fn send_buffered(
        &self,
        request: &Request,
        page: Option<u64>,
    ) -> Result<BufferedResponse, ConnectorError> {
        match self.run(request, page, true).await? {
            Received::Buffered(response) => Ok(response),
            Received::Streaming(_) => unreachable!("send_buffered asks for a buffered response"),
        }
    }

    /// Sends a request and parses its body as JSON.
    pub async fn json<T: DeserializeOwned>(&self, request: &Request, page: Option<u64>) -> Result<T, ConnectorError> {
        self.send_buffered(request, page).await?.json()
    }

    async fn run(&self, request: &Request, page: Option<u64>, buffered: bool) -> Result<Received, ConnectorError> {
        let mut attempt: u32 = 1;
        loop {
            let (error, status, wait) = match self.attempt(request, page, buffered).await {
                Attempt::Done(received) => return Ok(received),
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry { error, status, wait } => (error, status, wait),
            };
            if attempt > self.settings.max_retries {
                return Err(gave_up(error, attempt));
            }
            let delay = match wait {
                Some(wait) => wait.min(self.settings.max_backoff),
                None => self.backoff(attempt),
            };
            if status == Some(StatusCode::TOO_MANY_REQUESTS) {
                use std::sync::atomic::Ordering::Relaxed;
                self.throttled.0.fetch_add(1, Relaxed);
                self.throttled.1.fetch_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Relaxed);
            }
            tracing::warn!(
                method = %request.method,
                url = %display_url(&request.url),
                status = status.map(|s| s.as_u16()),
                attempt,
                delay_ms = delay.as_millis() as u64,
                page,
                error = %error,
                "request failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Full jitter: a random wait between 0 and the capped exponential
    /// backoff of retry number `retry` (from 1).
    ///
    /// Not `backon` (in the tree through kube-runtime): its 1.x jitter adds
    /// 0..100% on top of the delay *after* capping it, so a wait could be
    /// twice `max_backoff`, and its first delay is not capped at all. What
    /// would be left to it, doubling and a cap, is the two lines below.
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        let cap = self.settings.initial_backoff.saturating_mul(factor).min(self.settings.max_backoff);
        let cap_micros = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=cap_micros))
    }

    async fn attempt(&self, request: &Request, page: Option<u64>, buffered: bool) -> Attempt<Received> {
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        let description = request.describe();
        if let Err(refused) = self.settings.address_policy.check_url_host(&request.url) {
            return Attempt::Fail(refused.into_error(&description));
        }
        let timeout = self.settings.timeout;
        let deadline = Instant::now() + timeout;
        let mut builder =
            self.inner.request(request.method.clone(), request.url.clone()).headers(request.headers.clone());
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let response = match tokio::time::timeout_at(deadline, builder.send()).await {
            Err(_) => {
                return Attempt::Retry {
                    error: ConnectorError::Timeout {
                        page,
                        message: format!("{description}: no response within {}", seconds(timeout)),
                    },
                    status: None,
                    wait: None,
                };
            }
            Ok(Err(e)) => return classify_send_error(&e, request, page, timeout),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() || request.passed.contains(&status) {
            if !buffered {
                return Attempt::Done(Received::Streaming(Response {
                    inner: response,
                    status,
                    headers,
                    description,
                    page,
                    timeout,
                    received: 0,
                }));
            }
            return match read_body(response, deadline, MAX_BUFFERED_BODY).await {
                BodyRead::Complete(body) => {
                    Attempt::Done(Received::Buffered(BufferedResponse { status, headers, body, description, page }))
                }
                BodyRead::TooLarge => Attempt::Fail(ConnectorError::Source {
                    page,
                    message: format!(
                        "{description}: the response is larger than {} MiB",
                        MAX_BUFFERED_BODY / (1024 * 1024)
                    ),
                }),
                BodyRead::TimedOut(received) => Attempt::Retry {
                    error: ConnectorError::Timeout {
                        page,
                        message: format!(
                            "{description}: the response was not complete within {} (after {received} bytes)",
                            seconds(timeout)
                        ),
                    },
                    status: Some(status),
                    wait: None,
                },
                BodyRead::Broken(received, cause) => Attempt::Retry {
                    error: ConnectorError::Transport {
                        page,
                        message: format!(
                            "connection closed before the end of the response to {description} (after {received} bytes): {cause}"
                        ),
                    },
                    status: Some(status),
                    wait: None,
                },
            };
        }

        // An error answer: quote the start of its body, never its headers.
        let retry_after =
            headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after).or_else(|| {
                (status == StatusCode::TOO_MANY_REQUESTS).then(|| rate_limit_reset_wait(&headers)).flatten()
            });
        let quote = match read_body(response, deadline, ERROR_BODY_READ_BYTES).await {
            BodyRead::Complete(body) => quote_body(&body, &request.secrets),
            _ => String::new(),
        };
        let reason = status.canonical_reason().map(|r| format!(" {r}")).unwrap_or_default();
        let mut message = format!("{description} answered HTTP {}{reason}", status.as_u16());
        if !quote.is_empty() {
            message.push_str(": ");
            message.push_str(&quote);
        }
        let http = |message: String| ConnectorError::Http { page, status: status.as_u16(), message };
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Attempt::Fail(ConnectorError::Unauthorized { message: format!("{message}{CREDENTIALS_HINT}") })
            }
            StatusCode::PAYMENT_REQUIRED => Attempt::Fail(ConnectorError::SubscriptionLapsed {
                message: format!("{message} (check the source's licence or subscription)"),
            }),
            StatusCode::TOO_MANY_REQUESTS => {
                Attempt::Retry { error: http(message), status: Some(status), wait: retry_after }
            }
            s if s.is_server_error() => {
                Attempt::Retry { error: http(message), status: Some(status), wait: retry_after }
            }
            _ => Attempt::Fail(http(message)),
        }
    }
}

fn gave_up(error: ConnectorError, attempts: u32) -> ConnectorError {
    if attempts <= 1 {
        return error;
    }
    let suffix = format!(" (gave up after {attempts} attempts)");
    match error {
        ConnectorError::Http { page, status, message } => {
            ConnectorError::Http { page, status, message: message + &suffix }
        }
        ConnectorError::Timeout { page, message } => ConnectorError::Timeout { page, message: message + &suffix },
        ConnectorError::Transport { page, message } => ConnectorError::Transport { page, message: message + &suffix },
        other => other,
    }
}

fn classify_send_error(
    e: &reqwest::Error,
    request: &Request,
    page: Option<u64>,
    timeout: Duration,
) -> Attempt<Received> {
    let description = request.describe();
    if let Some(refused) = AddressRefused::find(e) {
        let context = match e.url().filter(|url| **url != request.url) {
            Some(url) => format!("{description}, redirected to {}", display_url(url)),
            None => description,
        };
        return Attempt::Fail(refused.clone().into_error(&context));
    }
    let cause = error_chain(e);
    if e.is_timeout() {
        let message = format!("{description}: no response within {} ({cause})", seconds(timeout));
        return Attempt::Retry { error: ConnectorError::Timeout { page, message }, status: None, wait: None };
    }
    if e.is_redirect() || e.is_builder() {
        return Attempt::Fail(ConnectorError::Transport { page, message: format!("{description}: {cause}") });
    }
    let what = if e.is_connect() { "cannot connect" } else { "the request failed" };
    Attempt::Retry {
        error: ConnectorError::Transport { page, message: format!("{description}: {what}: {cause}") },
        status: None,
        wait: None,
    }
}

/// An error and its causes, "a: b: c", without reqwest's URL (which may
/// carry query secrets) and without repeating a cause already said.
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let top = e.to_string();
    // reqwest's own Display is "<kind> for url (<url>)"; keep the kind only.
    let top = top.split(" for url (").next().unwrap_or_default().to_string();
    parts.push(top);
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

enum BodyRead {
    Complete(Bytes),
    TooLarge,
    TimedOut(u64),
    Broken(u64, String),
}

/// Reads a body until its end, `limit` bytes (then `TooLarge`, or for small
/// limits simply the first `limit` bytes) or the deadline.
async fn read_body(mut response: reqwest::Response, deadline: Instant, limit: usize) -> BodyRead {
    let mut body = BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => return BodyRead::TimedOut(body.len() as u64),
            Ok(Err(e)) => return BodyRead::Broken(body.len() as u64, error_chain(&e)),
            Ok(Ok(None)) => return BodyRead::Complete(body.freeze()),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > limit {
                    if limit < MAX_BUFFERED_BODY {
                        body.extend_from_slice(&chunk[..limit - body.len()]);
                        return BodyRead::Complete(body.freeze());
                    }
                    return BodyRead::TooLarge;
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// The start of an error body on one line, secrets replaced.
fn quote_body(body: &[u8], secrets: &[String]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = redact(&text, secrets);
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut quote: String = one_line.chars().take(ERROR_BODY_QUOTE_CHARS).collect();
    if one_line.chars().count() > ERROR_BODY_QUOTE_CHARS {
        quote.push('…');
    }
    // Cutting may have split a secret; redact what is left of the cut too.
    redact(&quote, secrets)
}

/// What the client appends to a 401/403's message.
pub const CREDENTIALS_HINT: &str = " (check the credentials)";

/// Replaces the JSON error body the client quoted in an HTTP or
/// Unauthorized error (`… answered HTTP 401 Unauthorized: {…}`) by what
/// `summary` makes of it: the vendor's own words instead of raw JSON. A body
/// cut short, or one `summary` has nothing to say about, stays as quoted.
pub fn summarize_quoted_body(
    error: ConnectorError,
    summary: impl Fn(&serde_json::Value) -> Option<String>,
) -> ConnectorError {
    let rewrite = |message: String| -> String {
        let Some(at) = message.find(": {") else { return message };
        let Ok(body) = serde_json::from_str::<serde_json::Value>(&message[at + 2..]) else { return message };
        match summary(&body) {
            Some(said) => format!("{}: {said}", &message[..at]),
            None => message,
        }
    };
    match error {
        ConnectorError::Http { page, status, message } => {
            ConnectorError::Http { page, status, message: rewrite(message) }
        }
        ConnectorError::Unauthorized { message } => match message.strip_suffix(CREDENTIALS_HINT) {
            Some(message) => ConnectorError::Unauthorized { message: rewrite(message.to_string()) + CREDENTIALS_HINT },
            None => ConnectorError::Unauthorized { message: rewrite(message) },
        },
        other => other,
    }
}

/// `Retry-After`: delta-seconds or an HTTP-date (a date in the past: no wait).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(value).ok()?;
    let now = jiff::Timestamp::now();
    if when <= now {
        return Some(Duration::ZERO);
    }
    let span = when.duration_since(now);
    Duration::try_from(span).ok()
}

/// Okta's `X-Rate-Limit-Reset` (when the bucket refills, in UTC epoch
/// seconds) as a wait from now, measured against the answer's `Date` (the
/// server's own clock, so a skewed local clock neither waits too long nor
/// too little) where it has one. None without the header.
pub fn rate_limit_reset_wait(headers: &HeaderMap) -> Option<Duration> {
    let reset: i64 = headers.get("x-rate-limit-reset")?.to_str().ok()?.trim().parse().ok()?;
    let now = headers
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(v).ok())
        .map_or_else(|| jiff::Timestamp::now().as_millisecond(), |t| t.as_millisecond());
    let wait_ms = reset.saturating_mul(1000).saturating_sub(now).max(0);
    Some(Duration::from_millis(u64::try_from(wait_ms).unwrap_or_default()))
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{}s", s as u64) } else { format!("{s:.1}s") }
}

/// Spaces requests at least `1 / requests_per_second` apart (a token bucket
/// holding one token), whoever sends them.
#[derive(Debug)]
struct RateLimiter {
    interval: Duration,
    next: tokio::sync::Mutex<Option<Instant>>,
}

impl RateLimiter {
    fn new(requests_per_second: u32) -> Self {
        RateLimiter {
            interval: Duration::from_secs(1) / requests_per_second.max(1),
            next: tokio::sync::Mutex::new(None),
        }
    }

    async fn acquire(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = match *next {
                Some(at) if at > now => at,
                _ => now,
            };
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use super::*;
    use crate::connectors::testing::{handler, respond, serve};

    fn fast(timeout: Duration) -> HttpSettings {
        HttpSettings {
            timeout,
            requests_per_second: None,
            max_retries: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            // The test servers listen on 127.0.0.1.
            address_policy: AddressPolicy { allow_loopback: true },
        }
    }

    #[tokio::test]
    async fn retries_server_errors_then_succeeds() {
        let server = serve(handler(|n, _| {
            Box::pin(async move { if n < 2 { respond(503, &[], "busy") } else { respond(200, &[], "ok") } })
        }))
        .await;
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        let response = client.send_buffered(&Request::get(server.url("/x")), Some(1)).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(&response.body[..], b"ok");
        assert_eq!(server.requests(), 3, "succeeds on attempt 3");
    }

    #[tokio::test]
    async fn gives_up_after_max_retries() {
        let server = serve(handler(|_, _| Box::pin(async { respond(500, &[], "boom\n  <html>") }))).await;
        let client = HttpClient::new(HttpSettings { max_retries: 2, ..fast(Duration::from_secs(5)) }).unwrap();
        let e = client.send(&Request::get(server.url("/x?page=4")), Some(4)).await.unwrap_err();
        assert_eq!(server.requests(), 3);
        assert!(matches!(e, ConnectorError::Http { status: 500, page: Some(4), .. }), "{e:?}");
        let expected = format!(
            "page 4: GET {}/x?page=4 answered HTTP 500 Internal Server Error: boom <html> (gave up after 3 attempts)",
            server.base
        );
        assert_eq!(e.to_string(), expected);
    }

    #[tokio::test]
    async fn honours_retry_after_seconds() {
        let server = serve(handler(|n, _| {
            Box::pin(async move {
                if n == 0 { respond(429, &[("retry-after", "1")], "slow down") } else { respond(200, &[], "ok") }
            })
        }))
        .await;
        // max_backoff caps Retry-After: give it room here.
        let client =
            HttpClient::new(HttpSettings { max_backoff: Duration::from_secs(5), ..fast(Duration::from_secs(5)) })
                .unwrap();
        let start = StdInstant::now();
        client.send(&Request::get(server.url("/x")), None).await.unwrap();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(950) && waited < Duration::from_secs(3), "{waited:?}");
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn retry_after_is_capped_by_max_backoff() {
        let server = serve(handler(|n, _| {
            Box::pin(async move {
                if n == 0 { respond(429, &[("retry-after", "3600")], "") } else { respond(200, &[], "ok") }
            })
        }))
        .await;
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        let start = StdInstant::now();
        client.send(&Request::get(server.url("/x")), None).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn okta_rate_limit_reset_is_measured_on_the_servers_clock() {
        let mut headers = HeaderMap::new();
        assert_eq!(rate_limit_reset_wait(&headers), None);
        // The server's Date says 12:00:00; the bucket refills 7 s later,
        // whatever this machine's clock says.
        headers.insert("date", HeaderValue::from_static("Sun, 29 Nov 2026 12:00:00 GMT"));
        let reset = jiff::Timestamp::from_second(1_795_953_607).unwrap();
        assert_eq!(reset.to_string(), "2026-11-29T12:00:07Z");
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1795953607"));
        assert_eq!(rate_limit_reset_wait(&headers), Some(Duration::from_secs(7)));
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1795953590"));
        assert_eq!(rate_limit_reset_wait(&headers), Some(Duration::ZERO), "a reset already past waits nothing");
    }

    #[tokio::test]
    async fn a_429_without_retry_after_waits_for_okta_s_reset_and_is_counted() {
        let server = serve(handler(|n, _| {
            Box::pin(async move {
                if n == 0 {
                    let date = jiff::fmt::rfc2822::DateTimePrinter::new()
                        .timestamp_to_rfc9110_string(&jiff::Timestamp::now())
                        .unwrap();
                    let reset = (jiff::Timestamp::now().as_second() + 2).to_string();
                    respond(429, &[("date", date.as_str()), ("x-rate-limit-reset", reset.as_str())], "")
                } else {
                    respond(200, &[], "ok")
                }
            })
        }))
        .await;
        let client =
            HttpClient::new(HttpSettings { max_backoff: Duration::from_secs(5), ..fast(Duration::from_secs(5)) })
                .unwrap();
        assert_eq!(client.throttled(), (0, Duration::ZERO));
        let start = StdInstant::now();
        client.send(&Request::get(server.url("/x")), None).await.unwrap();
        // The reset is 2 s after a Date cut to the second: at least 1 s.
        assert!(start.elapsed() >= Duration::from_millis(950), "{:?}", start.elapsed());
        let (count, waited) = client.throttled();
        assert_eq!(count, 1);
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn too_many_429s_count_as_retries() {
        let server = serve(handler(|_, _| Box::pin(async { respond(429, &[("retry-after", "0")], "") }))).await;
        let client = HttpClient::new(HttpSettings { max_retries: 1, ..fast(Duration::from_secs(5)) }).unwrap();
        let e = client.send(&Request::get(server.url("/x")), None).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Http { status: 429, .. }), "{e:?}");
        assert_eq!(server.requests(), 2);
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&later).unwrap();
        let wait = parse_retry_after(&date).unwrap();
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60), "{wait:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test]
    async fn other_client_errors_fail_at_once() {
        let server = serve(handler(|_, _| Box::pin(async { respond(404, &[], "no such export") }))).await;
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        let e = client.send(&Request::get(server.url("/missing")), Some(2)).await.unwrap_err();
        assert_eq!(server.requests(), 1);
        assert!(matches!(e, ConnectorError::Http { status: 404, page: Some(2), .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("page 2: GET {}/missing answered HTTP 404 Not Found: no such export", server.base)
        );
        assert!(!e.is_stalled());
    }

    #[tokio::test]
    async fn passed_statuses_come_back_as_answers_with_their_headers() {
        let server = serve(handler(|_, _| {
            Box::pin(async { respond(403, &[("x-ratelimit-remaining", "0")], r#"{"message":"API rate limit"}"#) })
        }))
        .await;
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        let request = Request::get(server.url("/orgs/acme/members")).pass_status(StatusCode::FORBIDDEN);
        let answer = client.send_buffered(&request, Some(1)).await.unwrap();
        assert_eq!(server.requests(), 1, "a passed status is not retried");
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(answer.headers["x-ratelimit-remaining"], "0");
        assert_eq!(&answer.body[..], br#"{"message":"API rate limit"}"#);
        // Without it the same answer is an error, as before.
        let e = client.send_buffered(&Request::get(server.url("/x")), None).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_lapsed_subscription_stalls_without_retrying() {
        let server =
            serve(handler(|_, _| Box::pin(async { respond(402, &[], "{\"error\": \"subscription expired\"}") }))).await;
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        let e = client.send(&Request::get(server.url("/x")), Some(1)).await.unwrap_err();
        assert!(matches!(e, ConnectorError::SubscriptionLapsed { .. }), "{e:?}");
        assert!(e.is_stalled());
        assert_eq!(e.reason(), "SubscriptionLapsed");
        assert!(e.to_string().contains("HTTP 402 Payment Required"), "{e}");
        assert_eq!(server.requests(), 1, "a 402 is not retried");
    }

    #[tokio::test]
    async fn unauthorized_never_shows_the_credentials() {
        // The server echoes the Authorization header in its body.
        let server = serve(handler(|n, parts| {
            Box::pin(async move {
                let auth =
                    parts.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                respond(
                    if n == 0 { 401 } else { 403 },
                    &[("www-authenticate", "Bearer")],
                    format!("bad credentials: {auth}"),
                )
            })
        }))
        .await;
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        for request in [
            Request::get(server.url("/x")).bearer_auth("tok-SECRET-123").unwrap(),
            Request::get(server.url("/x")).basic_auth("svc", "pa55-SECRET").unwrap(),
        ] {
            let e = client.send(&request, Some(1)).await.unwrap_err();
            assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e:?}");
            assert!(e.is_stalled());
            assert_eq!(e.reason(), "Unauthorized");
            for text in [e.to_string(), format!("{e:?}"), format!("{request:?}")] {
                assert!(!text.contains("SECRET"), "{text}");
                assert!(!text.contains("c3ZjOnBhNTUtU0VDUkVU"), "{text}"); // base64 of svc:pa55-SECRET
            }
            assert!(
                e.to_string().contains("bad credentials: Bearer [REDACTED]")
                    || e.to_string().contains("Basic [REDACTED]"),
                "{e}"
            );
        }
        assert_eq!(server.requests(), 2, "never retried");
    }

    #[tokio::test]
    async fn a_slow_server_times_out_after_retries() {
        let server = serve(handler(|_, _| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                respond(200, &[], "late")
            })
        }))
        .await;
        let client = HttpClient::new(HttpSettings { max_retries: 2, ..fast(Duration::from_millis(200)) }).unwrap();
        let start = StdInstant::now();
        let e = client.send(&Request::get(server.url("/slow")), Some(3)).await.unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert!(matches!(e, ConnectorError::Timeout { page: Some(3), .. }), "{e:?}");
        assert_eq!(server.requests(), 3);
        assert_eq!(
            e.to_string(),
            format!("page 3: GET {}/slow: no response within 0.2s (gave up after 3 attempts)", server.base)
        );
    }

    #[tokio::test]
    async fn connection_errors_are_retried_then_reported() {
        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = reqwest::Url::parse(&format!("http://{}/x", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        let client = HttpClient::new(HttpSettings { max_retries: 1, ..fast(Duration::from_secs(2)) }).unwrap();
        let e = client.send(&Request::get(url), None).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Transport { page: None, .. }), "{e:?}");
        assert!(e.to_string().contains("cannot connect") && e.to_string().contains("gave up after 2 attempts"), "{e}");
    }

    #[tokio::test]
    async fn redirects_are_followed_but_never_to_plain_http_elsewhere() {
        let server = serve(handler(|_, parts| {
            Box::pin(async move {
                match parts.uri.path() {
                    "/moved" => respond(302, &[("location", "/here")], ""),
                    "/away" => respond(302, &[("location", "http://example.com/x")], ""),
                    _ => respond(200, &[], "here"),
                }
            })
        }))
        .await;
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        let response = client.send_buffered(&Request::get(server.url("/moved")), None).await.unwrap();
        assert_eq!(&response.body[..], b"here");
        let e = client.send(&Request::get(server.url("/away")), None).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Transport { .. }), "{e:?}");
        assert!(e.to_string().contains("refused a redirect to http://example.com/x"), "{e}");
        assert_eq!(server.requests(), 3, "a refused redirect is not retried");
    }

    fn strict(timeout: Duration) -> HttpSettings {
        HttpSettings { address_policy: AddressPolicy { allow_loopback: false }, ..fast(timeout) }
    }

    #[tokio::test]
    async fn loopback_literals_are_refused_without_the_opt_in() {
        let server = serve(handler(|_, _| Box::pin(async { respond(200, &[], "secret metrics") }))).await;
        let client = HttpClient::new(strict(Duration::from_secs(5))).unwrap();
        let e = client.send(&Request::get(server.url("/metrics")), None).await.unwrap_err();
        assert!(matches!(e, ConnectorError::AddressNotAllowed { .. }), "{e:?}");
        assert!(e.is_stalled());
        assert_eq!(e.reason(), "AddressNotAllowed");
        assert_eq!(
            e.to_string(),
            format!(
                "GET {}/metrics: 127.0.0.1, a loopback address; set spec.network.allowLoopback: true if this source really runs on the operator's host",
                server.base
            )
        );
        assert_eq!(server.requests(), 0, "nothing is sent");
        // The opt-in lets it through.
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        assert_eq!(
            &client.send_buffered(&Request::get(server.url("/metrics")), None).await.unwrap().body[..],
            b"secret metrics"
        );
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_where_they_resolve() {
        let server = serve(handler(|_, _| Box::pin(async { respond(200, &[], "ok") }))).await;
        let by_name = server.base.replace("127.0.0.1", "localhost");
        let url = Url::parse(&format!("{by_name}/x")).unwrap();
        let client = HttpClient::new(strict(Duration::from_secs(5))).unwrap();
        let e = client.send(&Request::get(url.clone()), None).await.unwrap_err();
        assert!(matches!(e, ConnectorError::AddressNotAllowed { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("GET {by_name}/x: localhost resolves to ")), "{text}");
        assert!(text.contains("a loopback address; set spec.network.allowLoopback: true"), "{text}");
        assert_eq!(server.requests(), 0, "refused before connecting, and not retried");
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        client.send_buffered(&Request::get(url), None).await.unwrap();
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn metadata_addresses_are_refused_even_with_the_opt_in() {
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        for url in ["http://169.254.169.254/latest/meta-data/", "https://metadata.google.internal/computeMetadata/v1/"]
        {
            let e = client.send(&Request::get(Url::parse(url).unwrap()), None).await.unwrap_err();
            assert!(matches!(e, ConnectorError::AddressNotAllowed { .. }), "{url}: {e:?}");
            assert!(e.to_string().contains("sources may not be there"), "{e}");
        }
    }

    /// This host's address on its network (not loopback): the source of a
    /// UDP socket "connected" (no packet is sent) to a TEST-NET address.
    fn non_loopback_ip() -> std::net::IpAddr {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        socket.connect("198.51.100.1:9").expect("a route off this host");
        let ip = socket.local_addr().expect("local address").ip();
        assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
        ip
    }

    /// A server on every interface that redirects every request to `to`.
    async fn redirecting_server(to: String) -> Url {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n");
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        Url::parse(&format!("http://{}:{port}/export.csv", non_loopback_ip())).unwrap()
    }

    #[tokio::test]
    async fn redirects_to_loopback_are_refused() {
        let target = serve(handler(|_, _| Box::pin(async { respond(200, &[], "secret") }))).await;
        let client = HttpClient::new(strict(Duration::from_secs(5))).unwrap();
        let by_name = target.base.replace("127.0.0.1", "localhost");
        for (to, refused) in [
            (format!("{}/admin", target.base), "127.0.0.1, a loopback address"),
            (format!("{by_name}/admin"), "localhost resolves to "),
        ] {
            let start = redirecting_server(to.clone()).await;
            let e = client.send(&Request::get(start.clone()), None).await.unwrap_err();
            assert!(matches!(e, ConnectorError::AddressNotAllowed { .. }), "{to}: {e:?}");
            let text = e.to_string();
            assert!(text.starts_with(&format!("GET {start}")), "{text}");
            assert!(text.contains(refused) && text.contains("spec.network.allowLoopback: true"), "{text}");
        }
        assert_eq!(target.requests(), 0, "the loopback server is never reached");
    }

    #[tokio::test]
    async fn rate_limit_spaces_requests() {
        let server = serve(handler(|_, _| Box::pin(async { respond(200, &[], "ok") }))).await;
        let client =
            HttpClient::new(HttpSettings { requests_per_second: Some(5), ..fast(Duration::from_secs(5)) }).unwrap();
        let start = StdInstant::now();
        let requests: Vec<_> = (0..10)
            .map(|_| {
                let client = client.clone();
                let url = server.url("/x");
                async move { client.send_buffered(&Request::get(url), None).await.map(|_| ()) }
            })
            .collect();
        for result in futures::future::join_all(requests).await {
            result.unwrap();
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1750), "{took:?}");
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert_eq!(server.requests(), 10);
    }

    #[tokio::test]
    async fn json_helper_parses_and_reports_bad_json() {
        let server = serve(handler(|n, _| {
            Box::pin(
                async move { if n == 0 { respond(200, &[], r#"{"total": 3}"#) } else { respond(200, &[], "<html>") } },
            )
        }))
        .await;
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        let value: serde_json::Value = client.json(&Request::get(server.url("/users")), Some(1)).await.unwrap();
        assert_eq!(value["total"], 3);
        let e = client.json::<serde_json::Value>(&Request::get(server.url("/users")), Some(2)).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Source { page: Some(2), .. }), "{e:?}");
        assert!(e.to_string().starts_with("page 2: GET "), "{e}");
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        let url =
            Url::parse("https://user:pw@example.com/export.csv?access_token=abc&X-Amz-Signature=def&page=2").unwrap();
        assert_eq!(
            display_url(&url),
            "https://example.com/export.csv?access_token=REDACTED&X-Amz-Signature=REDACTED&page=2"
        );
        assert!(parse_url("http://example.com/x", "spec.url").unwrap_err().to_string().starts_with("spec.url: "));
        assert!(parse_url("http://127.0.0.1:8080/x", "spec.url").is_ok());
        assert!(parse_url("https://example.com/x", "spec.url").is_ok());
        assert!(parse_url("ftp://example.com/x", "spec.url").is_err());
    }

    #[test]
    fn backoff_is_full_jitter_capped() {
        let client = HttpClient::new(HttpSettings {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..HttpSettings::default()
        })
        .unwrap();
        for _ in 0..200 {
            assert!(client.backoff(1) <= Duration::from_millis(100));
            assert!(client.backoff(2) <= Duration::from_millis(200));
            assert!(client.backoff(3) <= Duration::from_millis(350));
            assert!(client.backoff(40) <= Duration::from_millis(350));
        }
        let spread: std::collections::BTreeSet<_> = (0..50).map(|_| client.backoff(3)).collect();
        assert!(spread.len() > 10);
    }

    #[tokio::test]
    async fn retry_logs_show_no_headers_or_query_secrets() {
        use std::io::Write;
        use std::sync::Mutex;

        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let server = serve(handler(|n, _| {
            Box::pin(async move { if n == 0 { respond(503, &[], "busy") } else { respond(200, &[], "ok") } })
        }))
        .await;
        let client = HttpClient::new(fast(Duration::from_secs(5))).unwrap();
        let request =
            Request::get(server.url("/export.csv?token=QUERY-SECRET&page=1")).bearer_auth("HEADER-SECRET").unwrap();
        client.send(&request, Some(1)).await.unwrap();
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(logs.contains("retrying") && logs.contains("status=503") && logs.contains("attempt=1"), "{logs}");
        assert!(logs.contains("token=REDACTED&page=1"), "{logs}");
        assert!(!logs.contains("SECRET"), "{logs}");
    }
}
