//! The `github` provider: the members of a GitHub organisation (github.com
//! or GitHub Enterprise Server, `apiUrl`), read through the REST API with
//! the shared [`HttpClient`], and their SAML identities through GraphQL.
//!
//! - **Credentials** (the Secret): `token` (a personal access or
//!   fine-grained token), or a GitHub App installation: `appId`,
//!   `installationId` and `privateKey` (the PEM GitHub issues). The App's
//!   JWT (RS256, [`app`]) is exchanged at
//!   `POST /app/installations/{id}/access_tokens` for an installation token,
//!   fetched again five minutes before its `expires_at`.
//! - **Capabilities**: no deltas (GitHub has no change feed), groups when
//!   `includeTeams`. Every read is Full; ETags make it cheap ([`cache`]):
//!   each GET is sent with the `If-None-Match` of the last read's answer, and
//!   a `304 Not Modified` (free of rate limit) stands for the same body.
//! - **Before the first page** the read learns what each member needs:
//!   the owners (`/orgs/{org}/members?role=admin`), the members without
//!   two-factor authentication (`filter=2fa_disabled`; only owners may ask:
//!   otherwise the 2FA attribute is left out and the run's message says
//!   so), the SAML identities linked to members
//!   (`organization.samlIdentityProvider.externalIdentities`; none when the
//!   organisation has no SAML, left out with a note when the credentials
//!   may not read them) and, with `includeTeams`, every team's members.
//! - **Pages**: `/orgs/{org}/members?per_page=<pageSize, at most 100>`, one
//!   page per request, following the `Link` header's `next` (only to the
//!   API's own host: the token goes with it); then, with
//!   `includeOutsideCollaborators`, `/orgs/{org}/outside_collaborators`.
//!   A `next` that repeats a page, or a page of users already read, fails
//!   the read rather than loop or miss anyone.
//! - **Mapping**: id = the numeric user `id` (stable across login renames:
//!   a rename is an update); username = `login`; email and display name
//!   from the linked SAML identity (its primary e-mail, or a `nameId` that
//!   is one; given and family name); enabled = true (a listed member is an
//!   active one); groups = team slugs. Attributes: `role` (`admin`,
//!   `member` or `outside_collaborator`), `twoFactorEnabled` (when known),
//!   `type`, `siteAdmin`, `nodeId`, `samlNameId`.
//! - **Deletions**: before the engine deletes a member the listing did not
//!   name, [`Connector::still_present`] asks `GET /user/{id}` (the current
//!   login) and `GET /orgs/{org}/memberships/{login}`: an active member is
//!   kept.
//! - **Rate limits**: an answer (403 or 429) with `Retry-After` waits that
//!   long (the secondary limit); one with `X-RateLimit-Remaining: 0` waits
//!   until `X-RateLimit-Reset` (the primary limit), and so does the next
//!   request after a success that used the last request of the window; a
//!   403 or 429 that says "secondary rate limit" without either waits a
//!   minute. Then the request is sent again, at most ten times. The waits
//!   are in the run's message ("waited 4s for GitHub's primary rate
//!   limit"). A 403 that is no rate limit is `Unauthorized`, quoting
//!   GitHub's `message`, never a credential.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use reqwest::header::{ACCEPT, ETAG, HeaderMap, HeaderName, HeaderValue, IF_NONE_MATCH, LINK, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::http::{BufferedResponse, HttpClient, HttpSettings, Request, display_url, parse_retry_after, parse_url};
use super::{Capabilities, Connector, ConnectorError, Page, ProviderInputs, ReadKind, ReadPlan, SECRET_FIELD, redact};
use crate::model::Account;
use idsync_api::SyncMode;
use idsync_api::connection::{ConnectionSpec, GitHubSettings};

#[path = "github_app.rs"]
pub mod app;
#[path = "github_cache.rs"]
mod cache;

use app::AppCredentials;

const ACCEPT_GITHUB: &str = "application/vnd.github+json";
const API_VERSION_HEADER: &str = "x-github-api-version";
/// The REST API version the requests are written for.
pub const API_VERSION: &str = "2022-11-28";
const MAX_PER_PAGE: u32 = 100;
/// Rate-limit waits for one request before the read gives up.
const MAX_WAITS_PER_REQUEST: u32 = 10;
/// A secondary limit that says nothing of when to retry: GitHub asks for
/// at least a minute.
const SECONDARY_DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The longest single wait: the primary window is an hour.
const MAX_WAIT: Duration = Duration::from_secs(3660);
const FIELD_API_URL: &str = "spec.provider.github.apiUrl";
/// The plan's reason when a Delta is asked for.
pub const DELTA_REASON: &str = "GitHub has no change feed: every sync reads the whole organization";

/// The SAML identities query: one page of linked identities.
const SAML_QUERY: &str = "query($org: String!, $first: Int!, $after: String) { organization(login: $org) { \
samlIdentityProvider { externalIdentities(first: $first, after: $after) { pageInfo { hasNextPage endCursor } \
nodes { samlIdentity { nameId emails { value primary } givenName familyName } user { login databaseId } } } } } }";

/// How requests are authenticated. `Debug` never shows a credential.
enum Auth {
    Token(String),
    App {
        credentials: Box<AppCredentials>,
        /// The installation token and when it expires (seconds since the
        /// epoch).
        token: Option<(String, i64)>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Token([REDACTED])"),
            Auth::App { credentials, .. } => write!(f, "App({credentials:?})"),
        }
    }
}

/// Which rate limit held a request back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limit {
    Primary,
    Secondary,
}

/// What a read learned before its first page.
#[derive(Debug, Default)]
struct Context {
    admins: HashSet<u64>,
    /// Members (and outside collaborators) without 2FA; None: unknown.
    two_factor_disabled: Option<HashSet<u64>>,
    saml: HashMap<u64, SamlIdentity>,
    /// User id → team slugs.
    teams: HashMap<u64, Vec<String>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct SamlIdentity {
    name_id: Option<String>,
    email: Option<String>,
    display_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listing {
    Members,
    OutsideCollaborators,
}

/// One read in progress.
#[derive(Debug)]
struct Reading {
    listing: Listing,
    next: Option<Url>,
    /// Every page URL this read requested, to stop a `Link` loop.
    visited: HashSet<String>,
    number: u64,
    seen: HashSet<u64>,
    context: Option<Context>,
    done: bool,
}

/// One GET's answer: the body (fresh or, after a 304, cached) and the next
/// page.
struct Fetched {
    status: StatusCode,
    body: Bytes,
    next: Option<Url>,
}

/// The github connector.
#[derive(Debug)]
pub struct GitHubConnector {
    client: HttpClient,
    /// The REST API root, without a trailing `/`.
    api: Url,
    graphql: Url,
    org: String,
    include_teams: bool,
    include_outside: bool,
    per_page: u32,
    auth: Auth,
    /// The ETag cache scope: a hash of the API, the organisation and the
    /// credential.
    scope: String,
    /// The cache entries this read used, stored when it completes.
    used: HashMap<String, Entry>,
    /// No request before this time (seconds since the epoch): the last
    /// answer used the primary window's last request.
    blocked_until: Option<i64>,
    waited: HashMap<&'static str, Duration>,
    requests: u64,
    not_modified: u64,
    notes: Vec<String>,
    reading: Option<Reading>,
}

use cache::Entry;

fn source(page: Option<u64>, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Source { page, message: message.into() }
}

fn now_seconds() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl GitHubConnector {
    /// A connector with the HTTP settings the Connection asks for.
    pub fn new(
        spec: &ConnectionSpec,
        settings: &GitHubSettings,
        inputs: &ProviderInputs,
    ) -> Result<Self, ConnectorError> {
        Self::with_http_settings(spec, settings, inputs, HttpSettings::from_spec(spec))
    }

    /// A connector with explicit HTTP settings.
    pub fn with_http_settings(
        spec: &ConnectionSpec,
        settings: &GitHubSettings,
        inputs: &ProviderInputs,
        http: HttpSettings,
    ) -> Result<Self, ConnectorError> {
        let mut api = parse_url(settings.api_url.trim(), FIELD_API_URL)?;
        if api.query().is_some() || api.fragment().is_some() || api.cannot_be_a_base() {
            return Err(ConnectorError::Config {
                field: FIELD_API_URL.to_string(),
                message: "must be a plain URL without a query or a fragment".to_string(),
            });
        }
        let path = api.path().trim_end_matches('/').to_string();
        api.set_path(&path);
        let mut graphql = api.clone();
        // github.com serves GraphQL at /graphql, Enterprise Server at
        // /api/graphql beside its REST root /api/v3.
        match path.strip_suffix("/api/v3") {
            Some(prefix) => graphql.set_path(&format!("{prefix}/api/graphql")),
            None => graphql.set_path(&format!("{path}/graphql")),
        }
        let token = inputs.secret_text("token")?;
        let key = inputs.secret_text("privateKey")?;
        let (auth, credential) = match (token, key) {
            (Some(_), Some(_)) => {
                return Err(ConnectorError::Config {
                    field: SECRET_FIELD.to_string(),
                    message: "has both \"token\" and \"privateKey\": keep the one to use".to_string(),
                });
            }
            (Some(token), None) => {
                let credential = format!("token:{token}");
                (Auth::Token(token), credential)
            }
            (None, Some(key)) => {
                let app_id = inputs.required_secret_text("appId")?;
                let installation_id = inputs.required_secret_text("installationId")?;
                let credentials = AppCredentials::new(&app_id, &installation_id, &key)?;
                (
                    Auth::App { credentials: Box::new(credentials), token: None },
                    format!("app:{app_id}:{installation_id}"),
                )
            }
            (None, None) => {
                return Err(ConnectorError::Config {
                    field: SECRET_FIELD.to_string(),
                    message: "key \"token\" missing (or, for a GitHub App, \"appId\", \"installationId\" and \
                              \"privateKey\")"
                        .to_string(),
                });
            }
        };
        let scope = Sha256::digest(format!("{api}\n{}\n{credential}", settings.organization).as_bytes());
        Ok(GitHubConnector {
            client: HttpClient::new(http)?,
            api,
            graphql,
            org: settings.organization.trim().to_string(),
            include_teams: settings.include_teams,
            include_outside: settings.include_outside_collaborators,
            per_page: spec.page_size.clamp(1, MAX_PER_PAGE),
            auth,
            scope: scope.iter().map(|b| format!("{b:02x}")).collect(),
            used: HashMap::new(),
            blocked_until: None,
            waited: HashMap::new(),
            requests: 0,
            not_modified: 0,
            notes: Vec::new(),
            reading: None,
        })
    }

    /// `<api>/<segments…>`, each segment escaped.
    fn endpoint(&self, segments: &[&str]) -> Result<Url, ConnectorError> {
        api_endpoint(&self.api, segments)
    }

    /// A listing's first page: `<api>/<segments…>?per_page=N&<query…>`.
    fn listing(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, ConnectorError> {
        let mut url = self.endpoint(segments)?;
        {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
            pairs.append_pair("per_page", &self.per_page.to_string());
        }
        Ok(url)
    }

    fn headers(request: Request) -> Request {
        request
            .header(ACCEPT, HeaderValue::from_static(ACCEPT_GITHUB))
            .header(HeaderName::from_static(API_VERSION_HEADER), HeaderValue::from_static(API_VERSION))
    }

    /// The request with credentials; an App's installation token is fetched
    /// (again) when there is none or it expires within five minutes.
    async fn authorize(&mut self, request: Request) -> Result<Request, ConnectorError> {
        let (credentials, token) = match &mut self.auth {
            Auth::Token(token) => return request.bearer_auth(token),
            Auth::App { credentials, token } => (credentials, token),
        };
        let now = now_seconds();
        let fresh = token.as_ref().filter(|(_, expires)| *expires - app::REFRESH_MARGIN_SECONDS > now);
        if let Some((token, _)) = fresh {
            return request.bearer_auth(token);
        }
        let jwt = credentials.jwt(now)?;
        // `self.api`, not `self.endpoint`: `self.auth` is borrowed here.
        let url =
            api_endpoint(&self.api, &["app", "installations", credentials.installation_id.as_str(), "access_tokens"])?;
        let exchange = Self::headers(Request::post(url)).bearer_auth(&jwt)?;
        let answer = match self.client.send_buffered(&exchange, None).await {
            Ok(answer) => answer,
            Err(ConnectorError::Http { status: 404, .. }) => {
                return Err(ConnectorError::Config {
                    field: SECRET_FIELD.to_string(),
                    message: format!(
                        "key \"installationId\": GitHub knows no installation {} of App {}",
                        credentials.installation_id, credentials.app_id
                    ),
                });
            }
            Err(e) => return Err(explain(e)),
        };
        let body: Value = answer.json()?;
        let installation_token = str_at(&body, "/token")
            .ok_or_else(|| source(None, "the installation token answer has no token"))?
            .to_string();
        let expires = str_at(&body, "/expires_at")
            .and_then(|at| at.parse::<jiff::Timestamp>().ok())
            .ok_or_else(|| source(None, "the installation token answer has no valid expires_at"))?
            .as_second();
        tracing::debug!(app = %credentials.app_id, expires, "github: fetched an installation token");
        let request = request.bearer_auth(&installation_token)?;
        *token = Some((installation_token, expires));
        Ok(request)
    }

    /// Sends a request, waiting out GitHub's rate limits. Answers with a
    /// status in `passed` (and 403s that are no rate limit) come back for
    /// the caller to judge.
    async fn exchange(
        &mut self,
        request: Request,
        page: Option<u64>,
        passed: &[StatusCode],
    ) -> Result<BufferedResponse, ConnectorError> {
        let mut waits = 0;
        loop {
            if let Some(until) = self.blocked_until.take() {
                let wait = until - now_seconds();
                if wait > 0 {
                    let wait = Duration::from_secs(wait.unsigned_abs()).min(MAX_WAIT);
                    self.wait(Limit::Primary, wait, &request, page).await;
                }
            }
            let mut attempt = self.authorize(request.clone()).await?;
            for status in passed.iter().chain(&[StatusCode::FORBIDDEN, StatusCode::TOO_MANY_REQUESTS]) {
                attempt = attempt.pass_status(*status);
            }
            let answer = self.client.send_buffered(&attempt, page).await.map_err(explain)?;
            self.requests += 1;
            let status = answer.status;
            let limited = status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS;
            if limited && let Some((limit, wait)) = throttled(status, &answer.headers, &answer.body) {
                waits += 1;
                if waits > MAX_WAITS_PER_REQUEST {
                    return Err(ConnectorError::Http {
                        page,
                        status: status.as_u16(),
                        message: format!(
                            "{} {}: still held back by GitHub's rate limit after {MAX_WAITS_PER_REQUEST} waits",
                            attempt.method(),
                            display_url(attempt.url())
                        ),
                    });
                }
                self.wait(limit, wait, &attempt, page).await;
                continue;
            }
            if status.is_success() && remaining(&answer.headers) == Some(0) {
                self.blocked_until = reset(&answer.headers);
            }
            return Ok(answer);
        }
    }

    async fn wait(&mut self, limit: Limit, wait: Duration, request: &Request, page: Option<u64>) {
        let name = match limit {
            Limit::Primary => "primary",
            Limit::Secondary => "secondary",
        };
        tracing::info!(
            method = %request.method(),
            url = %display_url(request.url()),
            page,
            limit = name,
            wait_ms = wait.as_millis() as u64,
            "github: waiting for the rate limit"
        );
        *self.waited.entry(name).or_default() += wait;
        tokio::time::sleep(wait).await;
    }

    /// A GET sent with the last read's ETag. A 304 gives the cached body.
    /// A status in `tolerated` comes back as it is; any other error status
    /// fails (a 403 as Unauthorized).
    async fn get(&mut self, url: Url, page: Option<u64>, tolerated: &[StatusCode]) -> Result<Fetched, ConnectorError> {
        let key = url.as_str().to_string();
        let cached = cache::get(&self.scope, &key).or_else(|| self.used.get(&key).cloned());
        let mut request = Self::headers(Request::get(url.clone()));
        let mut passed = tolerated.to_vec();
        if let Some(entry) = &cached
            && let Ok(etag) = HeaderValue::from_str(&entry.etag)
        {
            request = request.header(IF_NONE_MATCH, etag);
            passed.push(StatusCode::NOT_MODIFIED);
        }
        let answer = self.exchange(request.clone(), page, &passed).await?;
        let status = answer.status;
        if status == StatusCode::NOT_MODIFIED {
            let Some(entry) = cached else {
                return Err(source(
                    page,
                    format!("GET {}: 304 Not Modified to a request without ETag", display_url(&url)),
                ));
            };
            self.not_modified += 1;
            let next = self.next_url(entry.next.as_deref(), page)?;
            let body = entry.body.clone();
            self.used.insert(key, entry);
            return Ok(Fetched { status: StatusCode::OK, body, next });
        }
        if tolerated.contains(&status) {
            return Ok(Fetched { status, body: answer.body, next: None });
        }
        if status == StatusCode::FORBIDDEN {
            return Err(forbidden(&request, &answer, &self.secrets()));
        }
        let link = next_link(&answer.headers);
        let next = self.next_url(link.as_deref(), page)?;
        if let Some(etag) = answer.headers.get(ETAG).and_then(|v| v.to_str().ok()) {
            self.used.insert(key, Entry { etag: etag.to_string(), body: answer.body.clone(), next: link });
        }
        Ok(Fetched { status, body: answer.body, next })
    }

    /// The credentials in force, to keep out of quoted bodies.
    fn secrets(&self) -> Vec<String> {
        match &self.auth {
            Auth::Token(token) => vec![token.clone()],
            Auth::App { token, .. } => token.iter().map(|(t, _)| t.clone()).collect(),
        }
    }

    /// A `Link` `next` URL, only on the API's own scheme, host and port: the
    /// credentials go with it.
    fn next_url(&self, link: Option<&str>, page: Option<u64>) -> Result<Option<Url>, ConnectorError> {
        let Some(link) = link else { return Ok(None) };
        let next = self.api.join(link).map_err(|e| source(page, format!("the Link header's next page: {e}")))?;
        if next.scheme() != self.api.scheme()
            || next.host_str() != self.api.host_str()
            || next.port_or_known_default() != self.api.port_or_known_default()
        {
            return Err(source(
                page,
                format!("the Link header's next page {} is not on the API's host", display_url(&next)),
            ));
        }
        Ok(Some(next))
    }

    /// Every item of a listing, following `Link` to its end. None when its
    /// first answer has a status in `tolerated`.
    async fn list_all(
        &mut self,
        first: Url,
        page: Option<u64>,
        tolerated: &[StatusCode],
    ) -> Result<Option<Vec<Value>>, ConnectorError> {
        let mut items = Vec::new();
        let mut visited = HashSet::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            if !visited.insert(url.as_str().to_string()) {
                return Err(source(page, format!("the Link header repeats the page {}", display_url(&url))));
            }
            let shown = display_url(&url);
            let fetched = self.get(url, page, tolerated).await?;
            if fetched.status != StatusCode::OK && tolerated.contains(&fetched.status) {
                return Ok(None);
            }
            items.extend(json_list(&fetched.body, &shown, page)?);
            next = fetched.next;
        }
        Ok(Some(items))
    }

    /// The owners, 2FA, SAML identities and teams every page needs.
    async fn load_context(&mut self) -> Result<Context, ConnectorError> {
        let page = Some(1);
        let mut context = Context::default();
        let admins = self.listing(&["orgs", &self.org, "members"], &[("role", "admin")])?;
        for user in self.list_all(admins, page, &[]).await?.unwrap_or_default() {
            context.admins.insert(user_id(&user, page)?);
        }
        let mut no_2fa = HashSet::new();
        let mut known = true;
        let members = self.listing(&["orgs", &self.org, "members"], &[("filter", "2fa_disabled")])?;
        let refused = [StatusCode::FORBIDDEN, StatusCode::UNPROCESSABLE_ENTITY];
        match self.list_all(members, page, &refused).await? {
            Some(users) => {
                for user in users {
                    no_2fa.insert(user_id(&user, page)?);
                }
            }
            None => known = false,
        }
        if known && self.include_outside {
            let outside = self.listing(&["orgs", &self.org, "outside_collaborators"], &[("filter", "2fa_disabled")])?;
            match self.list_all(outside, page, &refused).await? {
                Some(users) => {
                    for user in users {
                        no_2fa.insert(user_id(&user, page)?);
                    }
                }
                None => known = false,
            }
        }
        if known {
            context.two_factor_disabled = Some(no_2fa);
        } else {
            self.notes.push(
                "two-factor status not read: GitHub refused filter=2fa_disabled (only organization owners may \
                 use it)"
                    .to_string(),
            );
        }
        match self.saml_identities(page).await? {
            Some(saml) => context.saml = saml,
            None => self.notes.push(
                "SAML identities not read: the credentials may not read the organization's SAML identity provider"
                    .to_string(),
            ),
        }
        if self.include_teams {
            let teams = self.listing(&["orgs", &self.org, "teams"], &[])?;
            for team in self.list_all(teams, page, &[]).await?.unwrap_or_default() {
                let slug = str_at(&team, "/slug").ok_or_else(|| source(page, "a team without a slug"))?.to_string();
                let members = self.listing(&["orgs", &self.org, "teams", &slug, "members"], &[])?;
                // A team deleted since the listing has no members to read.
                let Some(users) = self.list_all(members, page, &[StatusCode::NOT_FOUND]).await? else { continue };
                for user in users {
                    context.teams.entry(user_id(&user, page)?).or_default().push(slug.clone());
                }
            }
        }
        Ok(context)
    }

    /// The organisation's SAML identities linked to a user, by user id:
    /// empty without SAML, None when the credentials may not read them.
    async fn saml_identities(
        &mut self,
        page: Option<u64>,
    ) -> Result<Option<HashMap<u64, SamlIdentity>>, ConnectorError> {
        let mut identities = HashMap::new();
        let mut after: Option<String> = None;
        let mut pages = 0u64;
        loop {
            pages += 1;
            let body = serde_json::json!({
                "query": SAML_QUERY,
                "variables": {"org": self.org, "first": self.per_page, "after": after},
            });
            let request = Self::headers(Request::post(self.graphql.clone())).json(&body);
            let answer = self.exchange(request.clone(), page, &[]).await?;
            if answer.status == StatusCode::FORBIDDEN {
                return Ok(None);
            }
            let value: Value = answer.json()?;
            if let Some(errors) = value.get("errors").and_then(Value::as_array).filter(|e| !e.is_empty()) {
                let refused = errors
                    .iter()
                    .any(|e| matches!(str_at(e, "/type"), Some("FORBIDDEN" | "INSUFFICIENT_SCOPES" | "NOT_FOUND")));
                if refused {
                    return Ok(None);
                }
                let message = errors.iter().filter_map(|e| str_at(e, "/message")).collect::<Vec<_>>().join("; ");
                return Err(source(
                    page,
                    format!("GitHub GraphQL: {}", redact(&truncate(&message, 300), &self.secrets())),
                ));
            }
            let Some(organization) = value.pointer("/data/organization").filter(|o| !o.is_null()) else {
                return Err(source(page, format!("GitHub GraphQL knows no organization {:?}", self.org)));
            };
            let Some(identities_page) =
                organization.pointer("/samlIdentityProvider/externalIdentities").filter(|v| !v.is_null())
            else {
                // No SAML single sign-on.
                return Ok(Some(identities));
            };
            for node in identities_page.get("nodes").and_then(Value::as_array).into_iter().flatten() {
                let Some(id) = node.pointer("/user/databaseId").and_then(Value::as_u64) else {
                    // An identity no GitHub user is linked to yet.
                    continue;
                };
                identities.insert(id, saml_identity(node.get("samlIdentity").unwrap_or(&Value::Null)));
            }
            let has_next = identities_page.pointer("/pageInfo/hasNextPage").and_then(Value::as_bool) == Some(true);
            let cursor = str_at(identities_page, "/pageInfo/endCursor").map(String::from);
            match (has_next, cursor) {
                (true, Some(cursor)) if after.as_deref() != Some(cursor.as_str()) && pages < 100_000 => {
                    after = Some(cursor)
                }
                (true, _) => return Err(source(page, "GitHub GraphQL: the SAML identities do not page forward")),
                (false, _) => return Ok(Some(identities)),
            }
        }
    }

    async fn start(&mut self, mode: SyncMode) -> Result<ReadPlan, ConnectorError> {
        self.used.clear();
        self.notes.clear();
        self.waited.clear();
        self.requests = 0;
        self.not_modified = 0;
        self.reading = Some(Reading {
            listing: Listing::Members,
            next: Some(self.listing(&["orgs", &self.org, "members"], &[])?),
            visited: HashSet::new(),
            number: 1,
            seen: HashSet::new(),
            context: None,
            done: false,
        });
        let reason = (mode == SyncMode::Delta).then(|| DELTA_REASON.to_string());
        Ok(ReadPlan { kind: ReadKind::Full, reason })
    }

    async fn page(&mut self) -> Result<Option<Page>, ConnectorError> {
        let Some(mut reading) = self.reading.take() else {
            return Err(source(None, "no read in progress: it failed, or begin was not called"));
        };
        // On error the read is over: `reading` stays taken.
        let page = self.read_page(&mut reading).await?;
        self.reading = Some(reading);
        Ok(page)
    }

    async fn read_page(&mut self, reading: &mut Reading) -> Result<Option<Page>, ConnectorError> {
        if reading.done {
            return Ok(None);
        }
        if reading.context.is_none() {
            reading.context = Some(self.load_context().await?);
        }
        let number = reading.number;
        loop {
            let Some(url) = reading.next.take() else {
                if reading.listing == Listing::Members && self.include_outside {
                    reading.listing = Listing::OutsideCollaborators;
                    reading.next = Some(self.listing(&["orgs", &self.org, "outside_collaborators"], &[])?);
                    continue;
                }
                reading.done = true;
                self.finish();
                return Ok(None);
            };
            if !reading.visited.insert(url.as_str().to_string()) {
                return Err(source(Some(number), format!("the Link header repeats the page {}", display_url(&url))));
            }
            let shown = display_url(&url);
            let fetched = self.get(url, Some(number), &[]).await?;
            let users = json_list(&fetched.body, &shown, Some(number))?;
            reading.next = fetched.next;
            let role = match reading.listing {
                Listing::Members => None,
                Listing::OutsideCollaborators => Some("outside_collaborator"),
            };
            let context = reading.context.as_ref().ok_or_else(|| source(Some(number), "no context"))?;
            let mut accounts = Vec::with_capacity(users.len());
            let mut repeated = 0;
            for user in &users {
                let id = user_id(user, Some(number))?;
                if !reading.seen.insert(id) {
                    repeated += 1;
                    continue;
                }
                let role = role.unwrap_or(if context.admins.contains(&id) { "admin" } else { "member" });
                accounts.push(map_user(user, role, context).map_err(|m| source(Some(number), m))?);
            }
            if !users.is_empty() && repeated == users.len() {
                return Err(source(
                    Some(number),
                    format!("{shown} returned only users this read had already listed: the paging went wrong"),
                ));
            }
            reading.number += 1;
            return Ok(Some(Page { number, accounts, deleted: Vec::new() }));
        }
    }

    /// At the end of a read: the ETag cache gets this read's answers, and
    /// the notes say what the rate limits and the cache did.
    fn finish(&mut self) {
        cache::replace(&self.scope, std::mem::take(&mut self.used));
        for (name, header) in [("primary", "X-RateLimit-Reset"), ("secondary", "Retry-After")] {
            if let Some(waited) = self.waited.get(name) {
                self.notes.push(format!(
                    "waited {}s for GitHub's {name} rate limit ({header})",
                    waited.as_millis().div_ceil(1000)
                ));
            }
        }
        if self.not_modified > 0 {
            self.notes.push(format!(
                "{} of {} GitHub requests answered 304 Not Modified (ETag)",
                self.not_modified, self.requests
            ));
        }
    }

    /// `GET /user/{id}` and `GET /orgs/{org}/memberships/{login}` for each
    /// id: the accounts still in the organisation.
    async fn present(&mut self, ids: &[String]) -> Result<Vec<Account>, ConnectorError> {
        let reading = self.reading.take();
        let result = self.present_with(ids, reading.as_ref().and_then(|r| r.context.as_ref())).await;
        self.reading = reading;
        result
    }

    async fn present_with(
        &mut self,
        ids: &[String],
        context: Option<&Context>,
    ) -> Result<Vec<Account>, ConnectorError> {
        let empty = Context::default();
        let context = context.unwrap_or(&empty);
        let mut outside: Option<HashSet<u64>> = None;
        let mut present = Vec::new();
        for id in ids {
            // Not a GitHub user id: no account of this provider.
            let Ok(number) = id.parse::<u64>() else { continue };
            let user_url = self.endpoint(&["user", id])?;
            let user = self.get(user_url, None, &[StatusCode::NOT_FOUND]).await?;
            if user.status == StatusCode::NOT_FOUND {
                continue;
            }
            let user: Value = parse_json(&user.body, "GET /user/{id}", None)?;
            let login = str_at(&user, "/login").ok_or_else(|| source(None, format!("the user {id} has no login")))?;
            let membership_url = self.endpoint(&["orgs", &self.org, "memberships", login])?;
            let membership = self.get(membership_url, None, &[StatusCode::NOT_FOUND]).await?;
            let role = if membership.status == StatusCode::NOT_FOUND {
                None
            } else {
                let membership: Value = parse_json(&membership.body, "GET /orgs/{org}/memberships/{username}", None)?;
                match (str_at(&membership, "/state"), str_at(&membership, "/role")) {
                    (Some("active"), Some("admin")) => Some("admin"),
                    (Some("active"), Some("member")) => Some("member"),
                    _ => None,
                }
            };
            let role = match role {
                Some(role) => Some(role),
                None if self.include_outside => {
                    if outside.is_none() {
                        let url = self.listing(&["orgs", &self.org, "outside_collaborators"], &[])?;
                        let users = self.list_all(url, None, &[]).await?.unwrap_or_default();
                        outside = Some(users.iter().filter_map(|u| u.get("id").and_then(Value::as_u64)).collect());
                    }
                    outside.as_ref().filter(|o| o.contains(&number)).map(|_| "outside_collaborator")
                }
                None => None,
            };
            if let Some(role) = role {
                present.push(map_user(&user, role, context).map_err(|m| source(None, m))?);
            }
        }
        Ok(present)
    }
}

impl Connector for GitHubConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities { delta: false, delta_deletions: false, groups: self.include_teams }
    }

    fn begin<'a>(
        &'a mut self,
        mode: SyncMode,
        _cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
        Box::pin(self.start(mode))
    }

    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
        Box::pin(self.page())
    }

    fn cursor(&self) -> Option<String> {
        None
    }

    fn still_present<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Account>, ConnectorError>> {
        Box::pin(self.present(ids))
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
}

/// A numeric header value.
fn header_number(headers: &HeaderMap, name: &str) -> Option<i64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn remaining(headers: &HeaderMap) -> Option<i64> {
    header_number(headers, "x-ratelimit-remaining")
}

fn reset(headers: &HeaderMap) -> Option<i64> {
    header_number(headers, "x-ratelimit-reset")
}

/// Whether a 403 or 429 is a rate limit, which one, and how long to wait,
/// as GitHub documents it: `Retry-After` first, then an exhausted primary
/// window until its reset, then a message naming the secondary limit (a
/// minute).
fn throttled(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Option<(Limit, Duration)> {
    if let Some(wait) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after) {
        return Some((Limit::Secondary, wait.clamp(Duration::from_secs(1), MAX_WAIT)));
    }
    if remaining(headers) == Some(0) {
        let wait = reset(headers).map_or(60, |at| at - now_seconds()).clamp(1, MAX_WAIT.as_secs() as i64);
        return Some((Limit::Primary, Duration::from_secs(wait.unsigned_abs())));
    }
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_ascii_lowercase))
        .unwrap_or_default();
    // A 429 is always a limit, even one that says nothing more.
    if message.contains("secondary rate limit") || status == StatusCode::TOO_MANY_REQUESTS {
        return Some((Limit::Secondary, SECONDARY_DEFAULT_WAIT));
    }
    None
}

/// The `next` URL of a `Link` header
/// (`<https://api.github.com/…?page=2>; rel="next", <…>; rel="last"`).
fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(LINK) {
        let Ok(value) = value.to_str() else { continue };
        for part in value.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim();
                p.strip_prefix("rel=").is_some_and(|rel| rel.trim_matches('"').split_whitespace().any(|r| r == "next"))
            });
            if is_next && let Some(url) = target.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
                return Some(url.to_string());
            }
        }
    }
    None
}

/// GitHub's error `message` from a quoted body, or the body's start.
fn github_message(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => match value.get("message").and_then(Value::as_str) {
            Some(message) => truncate(message, 300),
            None => String::new(),
        },
        Err(_) => truncate(&String::from_utf8_lossy(body), 300),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    text.chars().take(max).chain("…".chars()).collect()
}

/// A 403 that is no rate limit: the credentials may not do this.
fn forbidden(request: &Request, answer: &BufferedResponse, secrets: &[String]) -> ConnectorError {
    let message = redact(&github_message(&answer.body), secrets);
    let mut text = format!("{} {} answered HTTP 403 Forbidden", request.method(), display_url(request.url()));
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(&message);
    }
    ConnectorError::Unauthorized { message: format!("{text} (check the credentials' permissions)") }
}

/// `<api>/<segments…>`, each segment escaped.
fn api_endpoint(api: &Url, segments: &[&str]) -> Result<Url, ConnectorError> {
    let mut url = api.clone();
    url.path_segments_mut()
        .map_err(|()| ConnectorError::Config {
            field: FIELD_API_URL.to_string(),
            message: "cannot be a base for API URLs".to_string(),
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Replaces a quoted GitHub error body (`{"message": …}`) in an error from
/// the HttpClient by its message.
fn explain(error: ConnectorError) -> ConnectorError {
    super::http::summarize_quoted_body(error, |body| {
        body.get("message").and_then(Value::as_str).map(|said| truncate(said, 300))
    })
}

fn parse_json(body: &[u8], what: &str, page: Option<u64>) -> Result<Value, ConnectorError> {
    serde_json::from_slice(body)
        .map_err(|e| source(page, format!("{what}: the response is not the JSON expected: {e}")))
}

/// A listing's page: a JSON array.
fn json_list(body: &[u8], shown: &str, page: Option<u64>) -> Result<Vec<Value>, ConnectorError> {
    match parse_json(body, &format!("GET {shown}"), page)? {
        Value::Array(items) => Ok(items),
        _ => Err(source(page, format!("GET {shown}: the response is not a list"))),
    }
}

fn user_id(user: &Value, page: Option<u64>) -> Result<u64, ConnectorError> {
    user.get("id").and_then(Value::as_u64).ok_or_else(|| source(page, "a user without a numeric id"))
}

fn str_at<'v>(value: &'v Value, pointer: &str) -> Option<&'v str> {
    value.pointer(pointer).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

fn saml_identity(saml: &Value) -> SamlIdentity {
    let name_id = str_at(saml, "/nameId").map(String::from);
    let emails = saml.get("emails").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let email = emails
        .iter()
        .find(|e| e.get("primary").and_then(Value::as_bool) == Some(true))
        .and_then(|e| str_at(e, "/value"))
        .or_else(|| emails.iter().find_map(|e| str_at(e, "/value")))
        .map(String::from)
        .or_else(|| name_id.clone().filter(|n| n.contains('@')));
    let names: Vec<&str> = [str_at(saml, "/givenName"), str_at(saml, "/familyName")].into_iter().flatten().collect();
    let display_name = (!names.is_empty()).then(|| names.join(" "));
    SamlIdentity { name_id, email, display_name }
}

/// Maps a GitHub user (a listing's simple-user, or `GET /user/{id}`) to an
/// account. Only fields both carry are used, so the two agree.
fn map_user(user: &Value, role: &str, context: &Context) -> Result<Account, String> {
    let id = user.get("id").and_then(Value::as_u64).ok_or("a user without a numeric id")?;
    let login = str_at(user, "/login").ok_or_else(|| format!("the user {id} has no login"))?;
    let mut account = Account::new(id.to_string());
    account.username = Some(login.to_string());
    let saml = context.saml.get(&id);
    account.email = saml.and_then(|s| s.email.clone());
    account.display_name = saml.and_then(|s| s.display_name.clone());
    account.groups = context.teams.get(&id).cloned().unwrap_or_default();
    let mut attributes: Vec<(&str, Value)> = vec![("role", Value::from(role))];
    if let Some(no_2fa) = &context.two_factor_disabled {
        attributes.push(("twoFactorEnabled", Value::from(!no_2fa.contains(&id))));
    }
    if let Some(kind) = str_at(user, "/type") {
        attributes.push(("type", Value::from(kind)));
    }
    if let Some(site_admin) = user.get("site_admin").and_then(Value::as_bool) {
        attributes.push(("siteAdmin", Value::from(site_admin)));
    }
    if let Some(node_id) = str_at(user, "/node_id") {
        attributes.push(("nodeId", Value::from(node_id)));
    }
    if let Some(name_id) = saml.and_then(|s| s.name_id.as_deref()) {
        attributes.push(("samlNameId", Value::from(name_id)));
    }
    for (name, value) in attributes {
        account.attributes.insert(name.to_string(), value);
    }
    account.normalize();
    Ok(account)
}

#[cfg(test)]
#[path = "github_tests.rs"]
mod tests;
