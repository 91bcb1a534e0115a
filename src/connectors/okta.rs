//! The `okta` provider: the users of an Okta org through its Management API
//! (`/api/v1/users`, `/api/v1/groups`), read through the shared retrying
//! [`HttpClient`].
//!
//! - **Credentials** (`auth`): an API token, the Secret's `apiToken` key,
//!   sent as `Authorization: SSWS <token>`; or an OAuth 2.0 service app: a
//!   client assertion signed RS256 with the Secret's `privateKey` (see
//!   [`jwt`]) is exchanged at `{orgUrl}/oauth2/v1/token`
//!   (`client_credentials`, scopes `okta.users.read okta.groups.read`) for
//!   a bearer access token, kept until shortly before it expires. DPoP
//!   proofs are not sent: an app that requires them is refused by the
//!   token endpoint, and the error says so.
//! - **Capabilities**: deltas without deletions, groups (`includeGroups`).
//! - **Paging**: `limit` is the page size (at most 200, Okta's maximum for
//!   users); the next page is the `Link: <…>; rel="next"` of the answer,
//!   followed only on the org's own origin (the token goes nowhere else),
//!   and never twice in one read. Every listing page is one [`Page`].
//! - **Full read**: `/api/v1/users`, which leaves DEPROVISIONED users out,
//!   then `search=status eq "DEPROVISIONED"` for them (as disabled
//!   accounts); with a `search` setting, that search alone (Okta's search
//!   covers every status). Before anything is deleted, each stored user the
//!   listing did not name is asked for with `GET /api/v1/users/{id}` (with
//!   `search`: `search=(<search>) and id eq "<id>"`); one that answers is
//!   kept, a 404 confirms the deletion.
//! - **Delta read** (a stored cursor): `search=lastUpdated gt "<since>"`
//!   (joined with `search` by `and`), where `since` is the cursor less
//!   [`OVERLAP`]: Okta's search index is eventually consistent, so a change
//!   stamped just before the last read may only now be searchable. What the
//!   overlap reads again is unchanged and the engine counts it so. A user
//!   returned twice in one read (updated while it was paged) is handed out
//!   once. Okta reports no deletions: deprovisioned users come as disabled
//!   accounts, and the periodic Full pass finds deleted ones.
//! - **Groups**: `/api/v1/groups`, then `/api/v1/groups/{id}/users` of each
//!   (paged the same way) into a member id → group names map, read once
//!   per read, before the first page with users is handed out. A member
//!   joining or leaving moves the group's `lastMembershipUpdated`, not the
//!   user's `lastUpdated`: a Delta lists the groups and, when one changed
//!   since `since` (its `lastUpdated` or `lastMembershipUpdated`), reads
//!   the whole membership, hands out every member of a changed group's name
//!   that the user search did not return (`GET /api/v1/users/{id}`, 404:
//!   gone), and reports those names complete
//!   ([`Connector::complete_groups`]), so the engine takes them off whoever
//!   left.
//! - **Cursor**: the highest `lastUpdated` seen among the users (and
//!   `lastUpdated` / `lastMembershipUpdated` among the groups read),
//!   compared as timestamps and stored verbatim; a read that sees none
//!   keeps the stored cursor.
//! - **Mapping**: id = `id`; username = `profile.login`; email =
//!   `profile.email`; display name = `profile.displayName` or first and
//!   last name; enabled by `status`: ACTIVE, PASSWORD_EXPIRED, LOCKED_OUT
//!   and RECOVERY are accounts in use (enabled); STAGED and PROVISIONED
//!   (never activated), SUSPENDED and DEPROVISIONED are not. Another status
//!   fails the read rather than guess. Attributes: every non-null `profile`
//!   attribute, and `status`, `created`, `activated`, `statusChanged`,
//!   `lastUpdated`. (`lastLogin` is left out: it moves on every sign-in
//!   without moving `lastUpdated`, so deltas could never see it.)
//! - **Rate limits**: every answer's `X-Rate-Limit-Remaining` and
//!   `X-Rate-Limit-Reset` pace the read: when what remains falls to a
//!   tenth of `X-Rate-Limit-Limit` (at least one request), the next request
//!   waits for the reset, so this read never empties the org's bucket
//!   (which other clients share). A 429 all the same (another client took
//!   the rest) is waited out until `X-Rate-Limit-Reset` by the HTTP client
//!   and retried. Both waits are in the run's message ([`Connector::notes`]).
//! - **Errors**: Okta's error body (`errorCode`, `errorSummary`) is
//!   summarised in the message; 401/403 make the Connection Stalled
//!   (Unauthorized). No message ever holds the token, the key or the
//!   assertion.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use serde_json::Value;
use tokio::time::Instant;

use super::http::{HttpClient, HttpSettings, Request, display_url, parse_url, rate_limit_reset_wait};
use super::{Capabilities, Connector, ConnectorError, Page, ProviderInputs, ReadKind, ReadPlan, SECRET_FIELD};
use crate::model::Account;
use idsync_api::SyncMode;
use idsync_api::connection::{ConnectionSpec, OktaAuth, OktaSettings};

#[path = "okta_jwt.rs"]
mod jwt;

/// How far before the cursor a Delta's search starts.
pub const OVERLAP: SignedDuration = SignedDuration::from_mins(2);
/// Okta's largest `limit` for `/api/v1/users`.
pub const MAX_LIMIT: u64 = 200;
/// The scopes a service app's access token is asked for.
pub const SCOPES: &str = "okta.users.read okta.groups.read";
/// RFC 7523's client assertion type.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const ORG_URL_FIELD: &str = "spec.provider.okta.orgUrl";
const NO_CURSOR: &str = "no cursor yet";
/// A 429's wait (`X-Rate-Limit-Reset`) is up to a minute away: the HTTP
/// client may wait that long, not only its default cap.
const RATE_LIMIT_WINDOW: Duration = Duration::from_secs(61);

/// How requests are authenticated. `Debug` never shows a secret.
enum Auth {
    ApiToken(String),
    ServiceApp {
        client_id: String,
        key_id: Option<String>,
        key: Box<jwt::SigningKey>,
        /// The access token and when to stop using it.
        token: Option<(String, Instant)>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::ApiToken(_) => f.write_str("ApiToken([REDACTED])"),
            Auth::ServiceApp { client_id, .. } => write!(f, "ServiceApp({client_id}, [REDACTED])"),
        }
    }
}

/// Paces requests by Okta's rate limit headers (see the module docs).
#[derive(Debug, Default)]
struct Pacer {
    /// What the last answer said remains, and when the bucket refills.
    remaining: Option<u64>,
    limit: Option<u64>,
    reset_at: Option<Instant>,
    /// Pauses made, and their total length.
    pauses: u64,
    waited: Duration,
}

impl Pacer {
    fn record(&mut self, headers: &HeaderMap) {
        let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        self.remaining = number("x-rate-limit-remaining");
        self.limit = number("x-rate-limit-limit");
        self.reset_at = rate_limit_reset_wait(headers).map(|wait| Instant::now() + wait);
    }

    /// Requests kept back for the org's other clients.
    fn reserve(&self) -> u64 {
        self.limit.map_or(1, |limit| (limit / 10).max(1))
    }

    /// Waits for the reset when the bucket is (nearly) empty.
    async fn pace(&mut self) {
        let (Some(remaining), Some(reset_at)) = (self.remaining, self.reset_at) else { return };
        if remaining > self.reserve() {
            return;
        }
        // Okta's buckets refill within a minute: a reset further off is
        // not believed beyond that.
        let wait = reset_at.saturating_duration_since(Instant::now()).min(RATE_LIMIT_WINDOW);
        tracing::info!(remaining, wait_ms = wait.as_millis() as u64, "okta: pausing until the rate limit resets");
        tokio::time::sleep(wait).await;
        self.pauses += 1;
        self.waited += wait;
        self.remaining = None;
        self.reset_at = None;
    }
}

/// A group: its name and when it (or its membership) last changed.
#[derive(Clone, Debug)]
struct Group {
    id: String,
    name: String,
    changed: Option<(Timestamp, String)>,
}

/// One read in progress.
#[derive(Debug)]
struct Reading {
    /// The first URLs of the user listings still to start.
    listings: VecDeque<Url>,
    /// The next page of the current listing.
    next: Option<Url>,
    /// The next page's number (from 1).
    number: u64,
    /// Every URL this read fetched: a `next` link seen before is a loop.
    fetched: HashSet<String>,
    /// Every user id handed out.
    seen: HashSet<String>,
    stored_cursor: Option<String>,
    latest: Option<(Timestamp, String)>,
    /// The groups, once listed (Delta: in `begin`).
    groups: Option<Vec<Group>>,
    /// Member id → group names, once read.
    memberships: Option<HashMap<String, Vec<String>>>,
    /// A Delta's members of the changed groups, read one by one at the end.
    members: VecDeque<String>,
    /// The changed groups' names.
    complete: Vec<String>,
}

impl Reading {
    /// The later of the stored cursor and the latest change seen: what the
    /// overlap read again is older than the stored cursor.
    fn cursor(&self) -> Option<String> {
        let stored = self.stored_cursor.as_deref().and_then(|c| c.parse::<Timestamp>().ok().map(|at| (at, c)));
        match (&self.latest, stored) {
            (Some((at, verbatim)), Some((stored_at, _))) if *at > stored_at => Some(verbatim.clone()),
            (Some((_, verbatim)), None) => Some(verbatim.clone()),
            _ => self.stored_cursor.clone(),
        }
    }
}

/// The Okta connector.
#[derive(Debug)]
pub struct OktaConnector {
    client: HttpClient,
    /// The org URL, ending with `/`.
    org: Url,
    auth: Auth,
    search: Option<String>,
    include_groups: bool,
    limit: u64,
    pacer: Pacer,
    /// The HTTP client's 429 count and wait when the read began.
    throttled_before: (u64, Duration),
    reading: Option<Reading>,
    cursor: Option<String>,
}

fn source(page: Option<u64>, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Source { page, message: message.into() }
}

fn config(field: &str, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Config { field: field.to_string(), message: message.into() }
}

impl OktaConnector {
    /// A connector with the HTTP settings the Connection asks for.
    pub fn new(
        spec: &ConnectionSpec,
        settings: &OktaSettings,
        inputs: &ProviderInputs,
    ) -> Result<Self, ConnectorError> {
        let mut http = HttpSettings::from_spec(spec);
        http.max_backoff = http.max_backoff.max(RATE_LIMIT_WINDOW);
        Self::with_http_settings(spec, settings, inputs, http)
    }

    /// A connector with explicit HTTP settings.
    pub fn with_http_settings(
        spec: &ConnectionSpec,
        settings: &OktaSettings,
        inputs: &ProviderInputs,
        http: HttpSettings,
    ) -> Result<Self, ConnectorError> {
        let mut org = parse_url(settings.org_url.trim(), ORG_URL_FIELD)?;
        if org.query().is_some() || org.fragment().is_some() || !matches!(org.path(), "" | "/") {
            return Err(config(ORG_URL_FIELD, "must be the org's bare URL, e.g. https://acme.okta.com (no path)"));
        }
        org.set_path("/");
        let auth = match settings.auth {
            OktaAuth::ApiToken => Auth::ApiToken(inputs.required_secret_text("apiToken")?),
            OktaAuth::PrivateKeyJwt => {
                let client_id = settings
                    .client_id
                    .as_deref()
                    .map(str::trim)
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| config("spec.provider.okta.clientId", "required when auth is privateKeyJwt"))?
                    .to_string();
                let pem = inputs.required_secret_text("privateKey")?;
                let key = jwt::SigningKey::from_pem(&pem)
                    .map_err(|m| config(SECRET_FIELD, format!("key \"privateKey\": {m}")))?;
                let key_id = settings.key_id.as_deref().map(str::trim).filter(|k| !k.is_empty()).map(String::from);
                Auth::ServiceApp { client_id, key_id, key: Box::new(key), token: None }
            }
        };
        let search = settings.search.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(String::from);
        Ok(OktaConnector {
            client: HttpClient::new(http)?,
            org,
            auth,
            search,
            include_groups: settings.include_groups,
            limit: u64::from(spec.page_size).clamp(1, MAX_LIMIT),
            pacer: Pacer::default(),
            throttled_before: (0, Duration::ZERO),
            reading: None,
            cursor: None,
        })
    }

    fn endpoint(&self, path: &str) -> Result<Url, ConnectorError> {
        self.org.join(path).map_err(|e| config(ORG_URL_FIELD, format!("cannot form the {path} URL: {e}")))
    }

    /// `/api/v1/users?limit=…[&search=…]`.
    fn users_url(&self, search: Option<&str>) -> Result<Url, ConnectorError> {
        let mut url = self.endpoint("api/v1/users")?;
        url.query_pairs_mut().append_pair("limit", &self.limit.to_string());
        if let Some(search) = search {
            url.query_pairs_mut().append_pair("search", search);
        }
        Ok(url)
    }

    /// `path` followed by escaped `segments`, e.g. `api/v1/users/{id}`.
    fn resource_url(&self, path: &str, segments: &[&str]) -> Result<Url, ConnectorError> {
        let mut url = self.endpoint(path)?;
        url.path_segments_mut().map_err(|()| config(ORG_URL_FIELD, "cannot be a base for API URLs"))?.extend(segments);
        Ok(url)
    }

    /// The `Authorization` of the next request: the API token, or a service
    /// app's access token (fetched when there is none still valid).
    async fn authorize(&mut self, request: Request) -> Result<Request, ConnectorError> {
        let token_url = self.endpoint("oauth2/v1/token")?;
        match &mut self.auth {
            Auth::ApiToken(token) => {
                let token = token.clone();
                request.secret(&token).authorization(&format!("SSWS {token}"))
            }
            Auth::ServiceApp { client_id, key_id, key, token } => {
                let valid = token.as_ref().filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone());
                let access = match valid {
                    Some(access) => access,
                    None => {
                        let (access, until) =
                            fetch_token(&self.client, &mut self.pacer, token_url, client_id, key_id.as_deref(), key)
                                .await?;
                        *token = Some((access.clone(), until));
                        access
                    }
                };
                request.bearer_auth(&access)
            }
        }
    }

    /// GET `url` as JSON, paced, with its headers.
    async fn get(&mut self, url: Url, page: Option<u64>) -> Result<(Value, HeaderMap), ConnectorError> {
        let request = Request::get(url).header(ACCEPT, HeaderValue::from_static("application/json"));
        let request = self.authorize(request).await?;
        self.pacer.pace().await;
        let response = self.client.send_buffered(&request, page).await.map_err(explain_okta_error)?;
        self.pacer.record(&response.headers);
        Ok((response.json::<Value>()?, response.headers))
    }

    /// Every page of a listing from `first`, as one array.
    async fn list_all(&mut self, first: Url, page: Option<u64>) -> Result<Vec<Value>, ConnectorError> {
        let mut items = Vec::new();
        let mut fetched: HashSet<String> = HashSet::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            fetched.insert(url.to_string());
            let (body, headers) = self.get(url.clone(), page).await?;
            let Value::Array(list) = body else {
                return Err(source(page, format!("GET {}: the answer is not a JSON array", display_url(&url))));
            };
            items.extend(list);
            next = next_link(&headers, &self.org).map_err(|m| source(page, m))?;
            if let Some(url) = &next
                && fetched.contains(url.as_str())
            {
                return Err(source(page, format!("the next link {} was already read: a loop", display_url(url))));
            }
        }
        Ok(items)
    }

    /// Every group with its name and change time.
    async fn groups(&mut self, page: Option<u64>) -> Result<Vec<Group>, ConnectorError> {
        let mut url = self.endpoint("api/v1/groups")?;
        url.query_pairs_mut().append_pair("limit", &self.limit.to_string());
        let mut groups = Vec::new();
        for group in self.list_all(url, page).await? {
            let Some(id) = str_at(&group, "/id") else {
                return Err(source(page, "/api/v1/groups: a group without an id"));
            };
            let name = str_at(&group, "/profile/name").unwrap_or(id).to_string();
            let changed = latest(latest(None, &group, "/lastUpdated"), &group, "/lastMembershipUpdated");
            groups.push(Group { id: id.to_string(), name, changed });
        }
        Ok(groups)
    }

    /// Member id → group names, from `groups`' member listings.
    async fn memberships(
        &mut self,
        groups: &[Group],
        page: Option<u64>,
    ) -> Result<HashMap<String, Vec<String>>, ConnectorError> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for group in groups {
            let mut url = self.resource_url("api/v1/groups", &[&group.id, "users"])?;
            url.query_pairs_mut().append_pair("limit", &self.limit.to_string());
            for member in self.list_all(url, page).await? {
                if let Some(id) = str_at(&member, "/id") {
                    map.entry(id.to_string()).or_default().push(group.name.clone());
                }
            }
        }
        Ok(map)
    }

    /// Lists the groups and reads their members into the read, once.
    async fn ensure_memberships(&mut self, reading: &mut Reading, page: Option<u64>) -> Result<(), ConnectorError> {
        if !self.include_groups || reading.memberships.is_some() {
            return Ok(());
        }
        let groups = match reading.groups.take() {
            Some(groups) => groups,
            None => self.groups(page).await?,
        };
        for group in &groups {
            if let Some((at, verbatim)) = &group.changed {
                reading.latest = later(reading.latest.take(), *at, verbatim);
            }
        }
        reading.memberships = Some(self.memberships(&groups, page).await?);
        reading.groups = Some(groups);
        Ok(())
    }

    /// The user `id` as an account with its groups; None when Okta has no
    /// such user (404) or `search` does not select it.
    async fn user(
        &mut self,
        id: &str,
        page: Option<u64>,
        memberships: Option<&HashMap<String, Vec<String>>>,
    ) -> Result<Option<Account>, ConnectorError> {
        let user = match self.search.clone() {
            Some(search) => {
                let escaped = id.replace('\\', "\\\\").replace('"', "\\\"");
                let url = self.users_url(Some(&format!("({search}) and id eq \"{escaped}\"")))?;
                let (body, _) = self.get(url, page).await?;
                body.as_array().and_then(|users| users.iter().find(|u| str_at(u, "/id") == Some(id)).cloned())
            }
            None => match self.get(self.resource_url("api/v1/users", &[id])?, page).await {
                Ok((user, _)) => Some(user),
                Err(ConnectorError::Http { status: 404, .. }) => None,
                Err(e) => return Err(e),
            },
        };
        let Some(user) = user else { return Ok(None) };
        let mut account = map_user(&user).map_err(|m| source(page, m))?;
        if account.id != id {
            return Err(source(page, format!("asked for the user {id:?}, Okta answered with {:?}", account.id)));
        }
        add_groups(&mut account, memberships);
        Ok(Some(account))
    }

    async fn start(&mut self, mode: SyncMode, cursor: Option<&str>) -> Result<ReadPlan, ConnectorError> {
        self.reading = None;
        self.cursor = None;
        self.throttled_before = self.client.throttled();
        let cursor = cursor.map(str::trim).filter(|c| !c.is_empty());
        let since = cursor.map(|c| (c, c.parse::<Timestamp>()));
        let (kind, reason, since) = match (mode, since) {
            (SyncMode::Full, _) => (ReadKind::Full, None, None),
            (SyncMode::Delta, None) => (ReadKind::Full, Some(NO_CURSOR.to_string()), None),
            (SyncMode::Delta, Some((c, Err(_)))) => {
                (ReadKind::Full, Some(format!("the stored cursor {c:?} is not an Okta lastUpdated timestamp")), None)
            }
            (SyncMode::Delta, Some((_, Ok(at)))) => (ReadKind::Delta, None, Some(at - OVERLAP)),
        };
        let mut reading = Reading {
            listings: VecDeque::new(),
            next: None,
            number: 1,
            fetched: HashSet::new(),
            seen: HashSet::new(),
            stored_cursor: cursor.map(String::from),
            latest: None,
            groups: None,
            memberships: None,
            members: VecDeque::new(),
            complete: Vec::new(),
        };
        match since {
            None => match &self.search {
                Some(search) => reading.listings.push_back(self.users_url(Some(search))?),
                None => {
                    reading.listings.push_back(self.users_url(None)?);
                    reading.listings.push_back(self.users_url(Some("status eq \"DEPROVISIONED\""))?);
                }
            },
            Some(since) => {
                let stamp = since.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
                let changed = format!("lastUpdated gt \"{stamp}\"");
                let search = match &self.search {
                    Some(search) => format!("({search}) and {changed}"),
                    None => changed,
                };
                reading.listings.push_back(self.users_url(Some(&search))?);
                if self.include_groups {
                    self.changed_groups(&mut reading, since).await.map_err(|e| e.with_page(None))?;
                }
            }
        }
        self.reading = Some(reading);
        Ok(ReadPlan { kind, reason })
    }

    /// A Delta's groups changed since `since`: their members are read after
    /// the changed users, and their names reported complete.
    async fn changed_groups(&mut self, reading: &mut Reading, since: Timestamp) -> Result<(), ConnectorError> {
        let groups = self.groups(None).await?;
        let changed: Vec<&Group> =
            groups.iter().filter(|g| g.changed.as_ref().is_some_and(|(at, _)| *at > since)).collect();
        if changed.is_empty() {
            reading.groups = Some(groups);
            return Ok(());
        }
        let mut names: Vec<String> = changed.iter().map(|g| g.name.clone()).collect();
        names.sort();
        names.dedup();
        for group in changed {
            if let Some((at, verbatim)) = &group.changed {
                reading.latest = later(reading.latest.take(), *at, verbatim);
            }
        }
        reading.groups = Some(groups);
        self.ensure_memberships(reading, None).await?;
        let mut members: Vec<String> = reading
            .memberships
            .iter()
            .flatten()
            .filter(|(_, groups)| groups.iter().any(|g| names.contains(g)))
            .map(|(id, _)| id.clone())
            .collect();
        members.sort();
        tracing::debug!(groups = ?names, members = members.len(), "okta delta: groups changed");
        reading.members = members.into();
        reading.complete = names;
        Ok(())
    }

    async fn page(&mut self) -> Result<Option<Page>, ConnectorError> {
        let Some(mut reading) = self.reading.take() else {
            return Err(source(None, "no read in progress: it failed, or begin was not called"));
        };
        // On error the read is over: `reading` stays taken.
        let page = match reading.next.take().or_else(|| reading.listings.pop_front()) {
            Some(url) => Some(self.user_page(&mut reading, url).await?),
            None => self.member_page(&mut reading).await?,
        };
        if page.is_none() {
            self.cursor = reading.cursor();
        }
        self.reading = Some(reading);
        Ok(page)
    }

    /// One page of a user listing.
    async fn user_page(&mut self, reading: &mut Reading, url: Url) -> Result<Page, ConnectorError> {
        let number = reading.number;
        reading.fetched.insert(url.to_string());
        let (body, headers) = self.get(url.clone(), Some(number)).await?;
        let Value::Array(users) = body else {
            return Err(source(Some(number), format!("GET {}: the answer is not a JSON array", display_url(&url))));
        };
        reading.next = next_link(&headers, &self.org).map_err(|m| source(Some(number), m))?;
        if let Some(next) = &reading.next
            && reading.fetched.contains(next.as_str())
        {
            return Err(source(
                Some(number),
                format!("the next link {} was already read in this sync: Okta's paging loops", display_url(next)),
            ));
        }
        if !users.is_empty() {
            self.ensure_memberships(reading, Some(number)).await?;
        }
        let mut accounts = Vec::with_capacity(users.len());
        for user in &users {
            let mut account = map_user(user).map_err(|m| source(Some(number), m))?;
            reading.latest = latest(reading.latest.take(), user, "/lastUpdated");
            // Updated while the listing was paged: handed out once.
            if !reading.seen.insert(account.id.clone()) {
                continue;
            }
            add_groups(&mut account, reading.memberships.as_ref());
            accounts.push(account);
        }
        reading.number += 1;
        Ok(Page { number, accounts, deleted: Vec::new() })
    }

    /// The next page of the changed groups' members the listing did not
    /// return (None: none left, the read is over).
    async fn member_page(&mut self, reading: &mut Reading) -> Result<Option<Page>, ConnectorError> {
        let size = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let ids = super::unseen_ids(&mut reading.members, &mut reading.seen, size);
        if ids.is_empty() {
            return Ok(None);
        }
        let number = reading.number;
        let mut accounts = Vec::with_capacity(ids.len());
        for id in &ids {
            accounts.extend(self.user(id, Some(number), reading.memberships.as_ref()).await?);
        }
        reading.number += 1;
        Ok(Some(Page { number, accounts, deleted: Vec::new() }))
    }

    /// The users of `ids` Okta still has.
    async fn present(&mut self, ids: &[String]) -> Result<Vec<Account>, ConnectorError> {
        let mut reading = self.reading.take();
        let page = reading.as_ref().map(|r| r.number);
        if let Some(reading) = reading.as_mut() {
            self.ensure_memberships(reading, page).await?;
        }
        let memberships = reading.as_ref().and_then(|r| r.memberships.as_ref());
        let mut present = Vec::new();
        for id in ids {
            present.extend(self.user(id, page, memberships).await?);
        }
        self.reading = reading;
        Ok(present)
    }
}

/// A service app's access token and when to stop using it (a minute
/// before Okta says it expires).
async fn fetch_token(
    client: &HttpClient,
    pacer: &mut Pacer,
    url: Url,
    client_id: &str,
    key_id: Option<&str>,
    key: &jwt::SigningKey,
) -> Result<(String, Instant), ConnectorError> {
    let assertion = key
        .assertion(client_id, key_id, url.as_str(), Timestamp::now().as_second())
        .map_err(|m| config(SECRET_FIELD, format!("key \"privateKey\": {m}")))?;
    let request =
        Request::post(url).header(ACCEPT, HeaderValue::from_static("application/json")).secret(&assertion).form(&[
            ("grant_type", "client_credentials"),
            ("scope", SCOPES),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion),
        ]);
    pacer.pace().await;
    let refused = |message: &str| {
        let hint = if message.to_ascii_lowercase().contains("dpop") {
            " (the app requires DPoP proofs, which idsync does not send: turn off \"Require Demonstrating Proof of \
             Possession\" on the service app)"
        } else {
            " (check the client id, the key id, the key and the app's granted scopes)"
        };
        ConnectorError::Unauthorized { message: format!("{message}{hint}") }
    };
    let response = match client.send_buffered(&request, None).await {
        Ok(response) => response,
        // invalid_client, invalid_scope, a DPoP demand…: the credentials or
        // the app's settings, not something a retry fixes.
        Err(ConnectorError::Http { status: 400, message, .. }) => return Err(refused(&message)),
        Err(ConnectorError::Unauthorized { message }) => {
            return Err(refused(message.strip_suffix(super::http::CREDENTIALS_HINT).unwrap_or(&message)));
        }
        Err(e) => return Err(e),
    };
    pacer.record(&response.headers);
    let body: Value = response.json()?;
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| source(None, "the token endpoint answered without an access_token"))?;
    let lifetime = body.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
    let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(60).max(1));
    Ok((token.to_string(), until))
}

impl Connector for OktaConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities { delta: true, delta_deletions: false, groups: self.include_groups }
    }

    fn begin<'a>(
        &'a mut self,
        mode: SyncMode,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>> {
        Box::pin(self.start(mode, cursor))
    }

    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>> {
        Box::pin(self.page())
    }

    fn cursor(&self) -> Option<String> {
        self.cursor.clone()
    }

    fn complete_groups(&self) -> Vec<String> {
        self.reading.as_ref().map(|r| r.complete.clone()).unwrap_or_default()
    }

    fn still_present<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Account>, ConnectorError>> {
        Box::pin(self.present(ids))
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.pacer.pauses > 0 {
            notes.push(format!(
                "paced by Okta's rate limit: paused {} time(s), {} in all, until X-Rate-Limit-Reset so as never to \
                 empty the org's bucket",
                self.pacer.pauses,
                seconds(self.pacer.waited)
            ));
        }
        let (count, waited) = self.client.throttled();
        let count = count.saturating_sub(self.throttled_before.0);
        if count > 0 {
            notes.push(format!(
                "Okta answered HTTP 429 (rate limit exceeded) {count} time(s); waited {} for X-Rate-Limit-Reset \
                 and went on",
                seconds(waited.saturating_sub(self.throttled_before.1))
            ));
        }
        notes
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn add_groups(account: &mut Account, memberships: Option<&HashMap<String, Vec<String>>>) {
    if let Some(groups) = memberships.and_then(|m| m.get(&account.id)) {
        account.groups.extend(groups.iter().cloned());
        account.normalize();
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// The later of `current` and the timestamp at `pointer` of `value`.
fn latest(current: Option<(Timestamp, String)>, value: &Value, pointer: &str) -> Option<(Timestamp, String)> {
    match str_at(value, pointer).and_then(|s| s.parse::<Timestamp>().ok().map(|t| (t, s))) {
        Some((at, verbatim)) => later(current, at, verbatim),
        None => current,
    }
}

fn later(current: Option<(Timestamp, String)>, at: Timestamp, verbatim: &str) -> Option<(Timestamp, String)> {
    match current {
        Some((seen, kept)) if seen >= at => Some((seen, kept)),
        _ => Some((at, verbatim.to_string())),
    }
}

/// The `rel="next"` target of the answer's `Link` headers, which must be on
/// the org's origin: the credentials are sent to it.
pub fn next_link(headers: &HeaderMap, org: &Url) -> Result<Option<Url>, String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        let mut rest = value;
        while let Some(open) = rest.find('<') {
            let Some(close) = rest[open..].find('>').map(|c| open + c) else { break };
            let target = &rest[open + 1..close];
            let params_end = rest[close..].find('<').map_or(rest.len(), |n| close + n);
            // `; rel="next", ` up to the next link.
            let params = rest[close + 1..params_end].trim().trim_end_matches(',');
            rest = &rest[params_end..];
            let is_next = params
                .split(';')
                .filter_map(|p| p.trim().strip_prefix("rel="))
                .any(|rel| rel.trim_matches('"').split_whitespace().any(|r| r.eq_ignore_ascii_case("next")));
            if !is_next {
                continue;
            }
            let url = org.join(target).map_err(|e| format!("the next link is not a URL: {e}"))?;
            if url.origin() != org.origin() {
                return Err(format!(
                    "the next link {} leaves the org {}: not followed",
                    display_url(&url),
                    display_url(org)
                ));
            }
            return Ok(Some(url));
        }
    }
    Ok(None)
}

/// Whether an Okta user `status` is an account in use; None for a status
/// Okta does not document.
pub fn enabled_by_status(status: &str) -> Option<bool> {
    match status {
        "ACTIVE" | "PASSWORD_EXPIRED" | "LOCKED_OUT" | "RECOVERY" => Some(true),
        "STAGED" | "PROVISIONED" | "SUSPENDED" | "DEPROVISIONED" => Some(false),
        _ => None,
    }
}

/// The most a user's JSON may take: an account is stored whole, and no
/// real profile comes near this.
pub const MAX_USER_BYTES: usize = 4 * 1024 * 1024;

/// The top-level user fields kept as attributes.
const TOP_LEVEL: [&str; 5] = ["status", "created", "activated", "statusChanged", "lastUpdated"];

/// An Okta user as an account. The error names the user and what is wrong,
/// quoting none of its other fields.
pub fn map_user(user: &Value) -> Result<Account, String> {
    let id = match user.get("id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.trim().to_string(),
        _ => return Err("a user without an id".to_string()),
    };
    let bytes = serde_json::to_vec(user).map_or(0, |b| b.len());
    if bytes > MAX_USER_BYTES {
        return Err(format!("user {id:?} is {bytes} bytes, more than the {MAX_USER_BYTES} a user may take"));
    }
    let status = user.get("status").and_then(Value::as_str).unwrap_or_default();
    let enabled = enabled_by_status(status).ok_or_else(|| {
        let shown: String =
            user.get("status").map(Value::to_string).unwrap_or("missing".into()).chars().take(40).collect();
        format!("user {id:?}: status {shown} is not an Okta user status; it cannot tell whether the account is enabled")
    })?;
    let profile = user.get("profile").and_then(Value::as_object);
    let text =
        |name: &str| profile.and_then(|p| p.get(name)).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let mut account = Account::new(id);
    account.enabled = enabled;
    account.username = text("login").map(String::from);
    account.email = text("email").map(String::from);
    account.display_name = text("displayName").map(String::from).or_else(|| {
        let name: Vec<&str> = [text("firstName"), text("lastName")].into_iter().flatten().collect();
        (!name.is_empty()).then(|| name.join(" "))
    });
    for (name, value) in profile.into_iter().flatten() {
        if !value.is_null() {
            account.attributes.insert(name.clone(), value.clone());
        }
    }
    for name in TOP_LEVEL {
        if let Some(value) = user.get(name).filter(|v| !v.is_null()) {
            account.attributes.insert(name.to_string(), value.clone());
        }
    }
    account.normalize();
    Ok(account)
}

/// `Okta error E0000011: Invalid token provided` from an Okta error body.
pub fn okta_error_summary(body: &Value) -> Option<String> {
    let code = body.get("errorCode").and_then(Value::as_str)?;
    let summary = body.get("errorSummary").and_then(Value::as_str).unwrap_or_default();
    let causes: Vec<&str> = body
        .get("errorCauses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("errorSummary").and_then(Value::as_str))
        .collect();
    let mut text = format!("Okta error {code}: {summary}");
    if !causes.is_empty() {
        text.push_str(&format!(" ({})", causes.join("; ")));
    }
    Some(text)
}

/// Replaces a quoted Okta error body in an HTTP error with its summary.
fn explain_okta_error(error: ConnectorError) -> ConnectorError {
    super::http::summarize_quoted_body(error, okta_error_summary)
}

#[cfg(test)]
#[path = "okta_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use crate::connectors::testing::{fast_http as fast, handler, respond, serve};

    /// An okta Connection's spec and settings for `org_url`.
    fn spec(org_url: &str, page_size: u32) -> (ConnectionSpec, OktaSettings) {
        let spec: ConnectionSpec = serde_json::from_value(json!({
            "category": "IdP",
            "provider": {"type": "okta", "okta": {"orgUrl": org_url}},
            "credentialsSecretRef": {"name": "okta"},
            "pageSize": page_size,
            "network": {"allowLoopback": true},
        }))
        .unwrap();
        let idsync_api::Provider::Okta(settings) = &spec.provider else { unreachable!() };
        let settings = settings.clone();
        (spec, settings)
    }

    fn inputs(token: &str) -> ProviderInputs {
        let mut inputs = ProviderInputs::default();
        inputs.secret.insert("apiToken".into(), token.as_bytes().to_vec());
        inputs
    }

    /// Okta's own example user, from the Users API reference.
    fn example_user() -> Value {
        json!({
            "id": "00ub0oNGTSWTBKOLGLNR",
            "status": "ACTIVE",
            "created": "2013-07-02T21:36:25.344Z",
            "activated": null,
            "statusChanged": null,
            "lastLogin": "2013-07-02T21:36:25.344Z",
            "lastUpdated": "2013-07-02T21:36:25.344Z",
            "passwordChanged": "2013-07-02T21:36:25.344Z",
            "type": {"id": "otyfnjfba4ye7pgjB0g4"},
            "profile": {
                "login": "isaac.brock@example.com",
                "firstName": "Isaac",
                "lastName": "Brock",
                "nickName": "issac",
                "displayName": "Isaac Brock",
                "email": "isaac.brock@example.com",
                "secondEmail": null,
                "mobilePhone": "555-415-1337",
                "department": "Engineering",
                "costCenter": 10,
            },
            "credentials": {"provider": {"type": "OKTA", "name": "OKTA"}},
            "_links": {"self": {"href": "https://acme.okta.com/api/v1/users/00ub0oNGTSWTBKOLGLNR"}},
        })
    }

    #[test]
    fn maps_okta_s_example_user() {
        let account = map_user(&example_user()).unwrap();
        assert_eq!(account.id, "00ub0oNGTSWTBKOLGLNR");
        assert_eq!(account.username.as_deref(), Some("isaac.brock@example.com"));
        assert_eq!(account.email.as_deref(), Some("isaac.brock@example.com"));
        assert_eq!(account.display_name.as_deref(), Some("Isaac Brock"));
        assert!(account.enabled);
        let names: Vec<&str> = account.attributes.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "costCenter",
                "created",
                "department",
                "displayName",
                "email",
                "firstName",
                "lastName",
                "lastUpdated",
                "login",
                "mobilePhone",
                "nickName",
                "status"
            ],
            "null attributes and lastLogin are left out"
        );
        assert_eq!(account.attributes["costCenter"], json!(10));

        let mut user = example_user();
        user["profile"]["displayName"] = Value::Null;
        assert_eq!(map_user(&user).unwrap().display_name.as_deref(), Some("Isaac Brock"));
        assert_eq!(map_user(&json!({"status": "ACTIVE"})).unwrap_err(), "a user without an id");
    }

    #[test]
    fn every_okta_status_says_whether_the_account_is_enabled() {
        let with = |status: Value| map_user(&json!({"id": "00u1", "status": status, "profile": {"login": "secret-x"}}));
        for (status, enabled) in [
            ("ACTIVE", true),
            ("PASSWORD_EXPIRED", true),
            ("LOCKED_OUT", true),
            ("RECOVERY", true),
            ("STAGED", false),
            ("PROVISIONED", false),
            ("SUSPENDED", false),
            ("DEPROVISIONED", false),
        ] {
            assert_eq!(with(json!(status)).unwrap().enabled, enabled, "{status}");
        }
        for (status, shown) in [(json!("active"), "\"active\""), (json!(null), "null"), (json!(1), "1")] {
            let error = with(status).unwrap_err();
            assert_eq!(
                error,
                format!(
                    "user \"00u1\": status {shown} is not an Okta user status; it cannot tell whether the account is enabled"
                )
            );
        }
        assert!(map_user(&json!({"id": "00u1"})).unwrap_err().contains("status missing"));
    }

    #[test]
    fn next_links_are_followed_only_on_the_org() {
        let org = Url::parse("https://acme.okta.com/").unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(next_link(&headers, &org), Ok(None));
        headers.append("link", HeaderValue::from_static("<https://acme.okta.com/api/v1/users?limit=2>; rel=\"self\""));
        assert_eq!(next_link(&headers, &org), Ok(None));
        headers.append(
            "link",
            HeaderValue::from_static("<https://acme.okta.com/api/v1/users?after=00u2&limit=2>; rel=\"next\""),
        );
        assert_eq!(
            next_link(&headers, &org).unwrap().unwrap().as_str(),
            "https://acme.okta.com/api/v1/users?after=00u2&limit=2"
        );
        // Both in one header, next first, and a relative target.
        let mut headers = HeaderMap::new();
        headers.insert("link", HeaderValue::from_static("</api/v1/groups?after=00g9>; rel=next, </x>; rel=\"self\""));
        assert_eq!(
            next_link(&headers, &org).unwrap().unwrap().as_str(),
            "https://acme.okta.com/api/v1/groups?after=00g9"
        );
        let mut headers = HeaderMap::new();
        headers.insert("link", HeaderValue::from_static("<https://evil.example/api/v1/users?after=1>; rel=\"next\""));
        let error = next_link(&headers, &org).unwrap_err();
        assert!(error.contains("leaves the org https://acme.okta.com/"), "{error}");
    }

    #[test]
    fn okta_error_bodies_are_summarised() {
        let body = json!({"errorCode": "E0000011", "errorSummary": "Invalid token provided", "errorLink": "E0000011",
                          "errorId": "oaeXYZ", "errorCauses": []});
        assert_eq!(okta_error_summary(&body).unwrap(), "Okta error E0000011: Invalid token provided");
        let body = json!({"errorCode": "E0000001", "errorSummary": "Api validation failed: search",
                          "errorCauses": [{"errorSummary": "Invalid search criteria."}]});
        assert_eq!(
            okta_error_summary(&body).unwrap(),
            "Okta error E0000001: Api validation failed: search (Invalid search criteria.)"
        );
        assert_eq!(okta_error_summary(&json!({"error": "invalid_client"})), None);
    }

    #[test]
    fn settings_are_checked_and_the_token_never_shown() {
        let (spec, settings) = spec("https://acme.okta.com", 50);
        let e = OktaConnector::new(&spec, &settings, &ProviderInputs::default()).unwrap_err();
        assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"apiToken\" missing");
        let connector = OktaConnector::new(&spec, &settings, &inputs("00SECRET-token")).unwrap();
        assert!(!format!("{connector:?}").contains("SECRET"));
        assert_eq!(connector.limit, 50);
        let (spec, settings) = crate::connectors::okta::tests::spec("https://acme.okta.com/api/v1", 500);
        let e = OktaConnector::new(&spec, &settings, &inputs("t")).unwrap_err();
        assert!(e.to_string().starts_with("spec.provider.okta.orgUrl: must be the org's bare URL"), "{e}");
        let (spec, mut settings) = crate::connectors::okta::tests::spec("https://acme.okta.com", 500);
        settings.auth = OktaAuth::PrivateKeyJwt;
        let e = OktaConnector::new(&spec, &settings, &inputs("t")).unwrap_err();
        assert_eq!(e.to_string(), "spec.provider.okta.clientId: required when auth is privateKeyJwt");
        settings.client_id = Some("0oa1".into());
        let e = OktaConnector::new(&spec, &settings, &inputs("t")).unwrap_err();
        assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"privateKey\" missing");
        let mut keyed = ProviderInputs::default();
        keyed.secret.insert("privateKey".into(), include_bytes!("okta_test_key.pem").to_vec());
        let connector = OktaConnector::new(&spec, &settings, &keyed).unwrap();
        assert_eq!(connector.limit, MAX_LIMIT, "Okta pages at most 200 users");
        assert!(!format!("{connector:?}").contains("PRIVATE"));
    }

    /// What a test org serves: users in pages of two with Link headers, the
    /// rate limit headers of a bucket of `bucket` requests that refills
    /// every second, and every request's path and query recorded.
    struct Org {
        users: Vec<Value>,
        bucket: u64,
        /// The request (from 0) answered 429 whatever the bucket holds, as
        /// when another client of the org took the rest.
        refuse: Option<usize>,
    }

    async fn org_server(org: Org) -> (crate::connectors::testing::TestServer, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let org = Arc::new(org);
        let state = Arc::new(Mutex::new((0u64, 0i64))); // used, window (epoch second)
        let server = serve(handler(move |n, parts| {
            let (org, log, state) = (org.clone(), log.clone(), state.clone());
            Box::pin(async move {
                let query = parts.uri.query().unwrap_or_default().to_string();
                log.lock().unwrap().push(format!("{}?{query}", parts.uri.path()));
                let now = Timestamp::now();
                let (remaining, reset) = {
                    let mut state = state.lock().unwrap();
                    if state.1 != now.as_second() {
                        *state = (0, now.as_second());
                    }
                    state.0 += 1;
                    (org.bucket.checked_sub(state.0), state.1 + 1)
                };
                let date = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&now).unwrap();
                let limit = org.bucket.to_string();
                let reset = reset.to_string();
                let remaining = if org.refuse == Some(n) { None } else { remaining };
                let Some(remaining) = remaining else {
                    let body = json!({"errorCode": "E0000047",
                        "errorSummary": "API call exceeded rate limit due to too many requests."});
                    return respond(
                        429,
                        &[
                            ("date", &date),
                            ("x-rate-limit-limit", &limit),
                            ("x-rate-limit-remaining", "0"),
                            ("x-rate-limit-reset", &reset),
                        ],
                        body.to_string(),
                    );
                };
                let remaining = remaining.to_string();
                let after: usize = form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "after")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let (body, next) = match parts.uri.path() {
                    // No deprovisioned users here.
                    "/api/v1/users" if query.contains("DEPROVISIONED") => (json!([]), None),
                    "/api/v1/users" => {
                        let page: Vec<Value> = org.users.iter().skip(after).take(2).cloned().collect();
                        let next = (after + 2 < org.users.len()).then(|| after + 2);
                        (Value::Array(page), next)
                    }
                    _ => (json!([]), None),
                };
                let link = next.map(|n| {
                    format!(
                        "<http://{}/api/v1/users?after={n}&limit=2>; rel=\"next\"",
                        parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default()
                    )
                });
                let mut headers = vec![
                    ("content-type", "application/json"),
                    ("date", date.as_str()),
                    ("x-rate-limit-limit", limit.as_str()),
                    ("x-rate-limit-remaining", remaining.as_str()),
                    ("x-rate-limit-reset", reset.as_str()),
                ];
                if let Some(link) = &link {
                    headers.push(("link", link.as_str()));
                }
                respond(200, &headers, body.to_string())
            })
        }))
        .await;
        (server, seen)
    }

    fn user(n: usize, updated: &str) -> Value {
        json!({"id": format!("00u{n}"), "status": "ACTIVE", "lastUpdated": updated,
               "profile": {"login": format!("user{n}@example.com")}})
    }

    async fn read_all(connector: &mut OktaConnector) -> Vec<Account> {
        let mut accounts = Vec::new();
        while let Some(page) = connector.next_page().await.unwrap() {
            accounts.extend(page.accounts);
        }
        accounts
    }

    #[tokio::test]
    async fn a_full_read_follows_links_and_asks_for_deprovisioned_users_too() {
        let users = (0..5).map(|n| user(n, &format!("2026-11-29T08:0{n}:00.000Z"))).collect();
        let (server, seen) = org_server(Org { users, bucket: 1000, refuse: None }).await;
        let (spec, mut settings) = spec(&server.base, 2);
        settings.include_groups = false;
        let mut connector = OktaConnector::with_http_settings(&spec, &settings, &inputs("tok"), fast()).unwrap();
        let plan = connector.begin(SyncMode::Delta, None).await.unwrap();
        assert_eq!(plan, ReadPlan { kind: ReadKind::Full, reason: Some(NO_CURSOR.into()) });
        let ids: Vec<String> = read_all(&mut connector).await.into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["00u0", "00u1", "00u2", "00u3", "00u4"]);
        assert_eq!(connector.cursor().as_deref(), Some("2026-11-29T08:04:00.000Z"));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "/api/v1/users?limit=2",
                "/api/v1/users?after=2&limit=2",
                "/api/v1/users?after=4&limit=2",
                "/api/v1/users?limit=2&search=status+eq+%22DEPROVISIONED%22",
            ]
        );
        assert!(connector.notes().is_empty());
    }

    #[tokio::test]
    async fn a_delta_searches_from_the_cursor_less_the_overlap() {
        let (server, seen) =
            org_server(Org { users: vec![user(1, "2026-11-29T08:00:00.000Z")], bucket: 1000, refuse: None }).await;
        let (spec, mut settings) = spec(&server.base, 2);
        settings.include_groups = false;
        settings.search = Some("profile.department eq \"Sales\"".into());
        let mut connector = OktaConnector::with_http_settings(&spec, &settings, &inputs("tok"), fast()).unwrap();
        let plan = connector.begin(SyncMode::Delta, Some("2026-11-29T08:10:00.000Z")).await.unwrap();
        assert_eq!(plan, ReadPlan { kind: ReadKind::Delta, reason: None });
        assert_eq!(read_all(&mut connector).await.len(), 1);
        let search: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|q| {
                form_urlencoded::parse(q.split_once('?').unwrap().1.as_bytes())
                    .find(|(k, _)| k == "search")
                    .map(|(_, v)| v.into_owned())
                    .unwrap()
            })
            .collect();
        assert_eq!(search, ["(profile.department eq \"Sales\") and lastUpdated gt \"2026-11-29T08:08:00.000Z\""]);
        // What the overlap read again is older than the cursor: it stays.
        assert_eq!(connector.cursor().as_deref(), Some("2026-11-29T08:10:00.000Z"));

        let plan = connector.begin(SyncMode::Delta, Some("yesterday")).await.unwrap();
        assert_eq!(plan.kind, ReadKind::Full);
        assert_eq!(plan.reason.unwrap(), "the stored cursor \"yesterday\" is not an Okta lastUpdated timestamp");
    }

    #[tokio::test]
    async fn a_small_bucket_paces_the_read_and_is_never_emptied() {
        let users = (0..12).map(|n| user(n, "2026-11-29T08:00:00.000Z")).collect();
        // Three requests a second; seven requests in all.
        let (server, seen) = org_server(Org { users, bucket: 3, refuse: None }).await;
        let (spec, mut settings) = spec(&server.base, 2);
        settings.include_groups = false;
        let http = HttpSettings { max_retries: 0, ..fast() };
        let mut connector = OktaConnector::with_http_settings(&spec, &settings, &inputs("tok"), http).unwrap();
        connector.begin(SyncMode::Full, None).await.unwrap();
        // No retries: a single 429 would fail the read.
        assert_eq!(read_all(&mut connector).await.len(), 12);
        assert_eq!(seen.lock().unwrap().len(), 7);
        let notes = connector.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("paced by Okta's rate limit: paused "), "{notes:?}");
    }

    #[tokio::test]
    async fn a_429_waits_for_the_reset_and_says_so() {
        let users = (0..2).map(|n| user(n, "2026-11-29T08:00:00.000Z")).collect();
        // The deprovisioned listing after the first page is refused once.
        let (server, seen) = org_server(Org { users, bucket: 1000, refuse: Some(1) }).await;
        let (spec, mut settings) = spec(&server.base, 2);
        settings.include_groups = false;
        let http = HttpSettings { max_retries: 2, max_backoff: Duration::from_secs(5), ..fast() };
        let mut connector = OktaConnector::with_http_settings(&spec, &settings, &inputs("tok"), http).unwrap();
        connector.begin(SyncMode::Full, None).await.unwrap();
        let page = connector.next_page().await.unwrap().unwrap();
        assert_eq!(page.accounts.len(), 2);
        assert!(connector.next_page().await.unwrap().unwrap().accounts.is_empty());
        assert!(connector.next_page().await.unwrap().is_none());
        let notes = connector.notes();
        assert!(
            notes.iter().any(|n| n.starts_with("Okta answered HTTP 429 (rate limit exceeded) 1 time(s); waited ")),
            "{notes:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 3, "the refused request was sent again once");
    }

    #[tokio::test]
    async fn a_bad_token_is_unauthorized_with_okta_s_summary_and_no_token() {
        let server = serve(handler(|_, parts| {
            Box::pin(async move {
                let auth = parts.headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                let body = json!({"errorCode": "E0000011", "errorSummary": "Invalid token provided",
                                  "errorLink": "E0000011", "errorId": "oae1", "errorCauses": [],
                                  "echo": auth});
                respond(401, &[("content-type", "application/json")], body.to_string())
            })
        }))
        .await;
        let (spec, settings) = spec(&server.base, 2);
        let mut connector =
            OktaConnector::with_http_settings(&spec, &settings, &inputs("00BAD-SECRET-token"), fast()).unwrap();
        connector.begin(SyncMode::Full, None).await.unwrap();
        let e = connector.next_page().await.unwrap_err();
        assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.ends_with(
                "answered HTTP 401 Unauthorized: Okta error E0000011: Invalid token provided (check the credentials)"
            ),
            "{text}"
        );
        assert!(!text.contains("SECRET") && !format!("{e:?}").contains("SECRET"), "{text}");
    }
}
