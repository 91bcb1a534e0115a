//! The `msgraph` provider: Microsoft Entra ID's users (and groups) through
//! Microsoft Graph delta queries, read with the shared retrying
//! [`HttpClient`].
//!
//! - **Credentials**: OAuth 2.0 client credentials ([`auth`]): a client
//!   secret or a certificate's signed assertion; tokens cached until shortly
//!   before they expire. A Graph 401 gets a new token once; a second 401
//!   stalls the Connection (Unauthorized).
//! - **Capabilities**: deltas with deletions, groups.
//! - **Full read**: with `includeGroups`, first the whole
//!   `/groups/delta?$select=displayName,members` round (member id → group
//!   names, kept for the read: memory grows with the memberships); then
//!   `/users/delta?$select=…&$expand=manager($select=id)`, following
//!   `@odata.nextLink` until `@odata.deltaLink`. Page size is sent as
//!   `Prefer: odata.maxpagesize=<pageSize>` (at most 999): Graph's delta
//!   functions ignore `$top`.
//! - **Delta read**: the stored groups deltaLink first (a member added or
//!   removed marks that user; a renamed group marks its members, read from
//!   `/groups/{id}/members`; a deleted group makes the read Full, since who
//!   was in it is no longer known), then the stored users deltaLink. An
//!   `@removed` entry is a deletion (its reason, `deleted` or `changed`
//!   (soft-deleted or out of scope), is logged). A changed user that does
//!   not carry every property read is read again whole (`GET /users/{id}`:
//!   Graph sends *at least* the changed properties), and with groups its
//!   memberships come from `/users/{id}/memberOf`. The users marked by the
//!   group changes and not in the users' delta are read last, the same way.
//!   `410 Gone` (`syncStateNotFound`, `resyncRequired`…) on a stored link
//!   makes the read Full, and the plan says why.
//! - **Cursor**: JSON holding both deltaLinks and the group names they
//!   were read with; one that cannot be read makes the read Full.
//! - **Filters**: `excludeGuests` (`userType`) and `licensedOnly`
//!   (`assignedLicenses`) are applied here, because `/users/delta` filters
//!   by id only; a user that stops passing them is reported deleted.
//! - **Throttling**: 429 and 503 with `Retry-After` are waited out by the
//!   HttpClient; at most [`MAX_REQUESTS_PER_TENANT`] requests run at once
//!   per tenant, whatever the number of Connections reading it.
//! - Links the server sends must stay on the Graph endpoint's origin, so the
//!   token never goes anywhere else.

pub mod auth;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

use self::auth::{Credential, TokenSource};
use self::wire::{DeltaPage, error_code, graph_error, quoted_json, str_at};
use super::http::{HttpClient, HttpSettings, Request, parse_url};
use super::{Capabilities, Connector, ConnectorError, Page, ProviderInputs, ReadKind, ReadPlan};
use crate::model::Account;
use idsync_api::SyncMode;
use idsync_api::connection::{ConnectionSpec, MsGraphSettings};

/// Requests in flight at most per tenant (and Graph endpoint), across every
/// Connection of this process.
pub const MAX_REQUESTS_PER_TENANT: usize = 4;
/// Graph's largest page for directory objects.
const MAX_PAGE_SIZE: u32 = 999;
const NO_CURSOR: &str = "no cursor yet";
const GROUPS_SELECT: &str = "displayName,members";

fn source(page: Option<u64>, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Source { page, message: message.into() }
}

fn tenant_permits(key: &str) -> Arc<Semaphore> {
    static PERMITS: OnceLock<Mutex<HashMap<String, Arc<Semaphore>>>> = OnceLock::new();
    let map = PERMITS.get_or_init(|| Mutex::new(HashMap::new()));
    match map.lock() {
        Ok(mut map) => {
            map.entry(key.to_string()).or_insert_with(|| Arc::new(Semaphore::new(MAX_REQUESTS_PER_TENANT))).clone()
        }
        // A poisoned map only loses the sharing, never a request.
        Err(_) => Arc::new(Semaphore::new(MAX_REQUESTS_PER_TENANT)),
    }
}

/// What the engine stores between reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cursor {
    users: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    groups: Option<String>,
    /// Group id → display name, as of `groups`: tells a rename from a
    /// membership change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    group_names: BTreeMap<String, String>,
}

/// The groups as a read knows them.
#[derive(Debug, Default)]
struct Groups {
    delta_link: Option<String>,
    names: BTreeMap<String, String>,
}

#[derive(Debug, PartialEq)]
enum Phase {
    /// Paging the users' delta round.
    Users,
    /// Delta only: the users whose memberships changed, not yet read.
    Marked,
    Done,
}

/// One read in progress.
#[derive(Debug)]
struct Reading {
    kind: ReadKind,
    phase: Phase,
    number: u64,
    /// The next users page to GET.
    next: Option<Url>,
    /// A page already fetched by `begin` (a delta's first, to see a 410).
    first: Option<DeltaPage>,
    users_delta_link: Option<String>,
    groups: Groups,
    /// Full: member id → group names.
    memberships: HashMap<String, Vec<String>>,
    /// Delta: users whose memberships changed.
    marked: BTreeSet<String>,
    /// Delta: users this read already reported.
    reported: HashSet<String>,
}

/// The msgraph connector.
pub struct MsGraphConnector {
    client: HttpClient,
    /// The Graph endpoint, ending with `/`.
    graph: Url,
    tokens: TokenSource,
    permits: Arc<Semaphore>,
    include_groups: bool,
    exclude_guests: bool,
    licensed_only: bool,
    extra: Vec<String>,
    /// Every user property read (`$select`).
    select: Vec<String>,
    page_size: u32,
    reading: Option<Reading>,
    cursor: Option<String>,
}

impl std::fmt::Debug for MsGraphConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsGraphConnector")
            .field("graph", &self.graph.as_str())
            .field("tokens", &self.tokens)
            .field("select", &self.select)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

fn base_url(url: &str, field: &str) -> Result<Url, ConnectorError> {
    let mut url = parse_url(url.trim(), field)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConnectorError::Config { field: field.to_string(), message: "must not have a query".to_string() });
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn join(base: &Url, path: &str, field: &str) -> Result<Url, ConnectorError> {
    base.join(path).map_err(|e| ConnectorError::Config {
        field: field.to_string(),
        message: format!("cannot form the {path} URL: {e}"),
    })
}

impl MsGraphConnector {
    pub fn new(
        spec: &ConnectionSpec,
        settings: &MsGraphSettings,
        inputs: &ProviderInputs,
    ) -> Result<Self, ConnectorError> {
        Self::with_http_settings(spec, settings, inputs, HttpSettings::from_spec(spec))
    }

    pub fn with_http_settings(
        spec: &ConnectionSpec,
        settings: &MsGraphSettings,
        inputs: &ProviderInputs,
        http: HttpSettings,
    ) -> Result<Self, ConnectorError> {
        const GRAPH: &str = "spec.provider.msgraph.graphEndpoint";
        const LOGIN: &str = "spec.provider.msgraph.loginEndpoint";
        let graph = base_url(&settings.graph_endpoint, GRAPH)?;
        let login = base_url(&settings.login_endpoint, LOGIN)?;
        let tenant = settings.tenant_id.trim();
        if tenant.is_empty() || !tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            return Err(ConnectorError::Config {
                field: "spec.provider.msgraph.tenantId".to_string(),
                message: "must be a tenant id (a GUID) or a verified domain".to_string(),
            });
        }
        let token_url = join(&login, &format!("{tenant}/oauth2/v2.0/token"), LOGIN)?;
        // The scope is the Graph resource's `.default`: its origin, without
        // the trailing slash.
        let scope = format!("{}/.default", graph.as_str().trim_end_matches('/'));
        let (credential, fingerprint) = Credential::from_inputs(settings.authentication, inputs)?;
        let tokens = TokenSource::new(token_url, settings.client_id.trim(), scope, credential, &fingerprint);
        let mut select: Vec<String> = wire::USER_PROPERTIES.iter().map(|p| p.to_string()).collect();
        if settings.licensed_only {
            select.push("assignedLicenses".to_string());
        }
        let mut extra = Vec::new();
        for name in &settings.extra_attributes {
            let name = name.trim();
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                if !select.iter().any(|s| s == name) {
                    select.push(name.to_string());
                }
                extra.push(name.to_string());
            } else {
                return Err(ConnectorError::Config {
                    field: "spec.provider.msgraph.extraAttributes".to_string(),
                    message: format!("{name:?} is not a Graph property name"),
                });
            }
        }
        Ok(MsGraphConnector {
            client: HttpClient::new(http)?,
            permits: tenant_permits(&format!("{graph}\n{tenant}")),
            graph,
            tokens,
            include_groups: settings.include_groups,
            exclude_guests: settings.exclude_guests,
            licensed_only: settings.licensed_only,
            extra,
            select,
            page_size: spec.page_size.clamp(1, MAX_PAGE_SIZE),
            reading: None,
            cursor: None,
        })
    }

    fn endpoint(&self, path: &str) -> Result<Url, ConnectorError> {
        join(&self.graph, path, "spec.provider.msgraph.graphEndpoint")
    }

    /// `/users/delta` with the properties read and the manager.
    fn users_delta_url(&self) -> Result<Url, ConnectorError> {
        let mut url = self.endpoint("v1.0/users/delta")?;
        url.query_pairs_mut()
            .append_pair("$select", &self.select.join(","))
            .append_pair("$expand", "manager($select=id)");
        Ok(url)
    }

    fn user_url(&self, id: &str) -> Result<Url, ConnectorError> {
        let mut url = self.endpoint("v1.0/users/")?;
        url.path_segments_mut()
            .map_err(|()| ConnectorError::Config {
                field: "spec.provider.msgraph.graphEndpoint".to_string(),
                message: "cannot be a base for user URLs".to_string(),
            })?
            .pop_if_empty()
            .push(id);
        Ok(url)
    }

    /// A link the server sent (or the cursor kept): it must stay on the
    /// Graph endpoint's origin, so the token goes nowhere else.
    fn link(&self, link: &str, page: Option<u64>) -> Result<Url, ConnectorError> {
        let url =
            Url::parse(link).map_err(|e| source(page, format!("the server sent a link that is not a URL: {e}")))?;
        if url.origin() != self.graph.origin() {
            return Err(source(
                page,
                format!(
                    "the server sent a link to {}, not to the Graph endpoint {}: not followed",
                    url.origin().ascii_serialization(),
                    self.graph.origin().ascii_serialization()
                ),
            ));
        }
        Ok(url)
    }

    /// GETs a Graph URL as JSON: a bearer token (a new one once after a
    /// 401), a permit of the tenant's, Graph error bodies summarised.
    async fn get(&self, url: &Url, page: Option<u64>) -> Result<Value, ConnectorError> {
        let _permit = self.permits.acquire().await.map_err(|_| ConnectorError::Cancelled)?;
        let prefer = HeaderValue::from_str(&format!("odata.maxpagesize={}", self.page_size))
            .unwrap_or(HeaderValue::from_static("odata.maxpagesize=999"));
        let mut refreshed = false;
        loop {
            let token = self.tokens.token(&self.client).await?;
            let request = Request::get(url.clone())
                .header(ACCEPT, HeaderValue::from_static("application/json"))
                .header(HeaderName::from_static("prefer"), prefer.clone())
                .bearer_auth(&token)?;
            match self.client.json::<Value>(&request, page).await {
                Ok(body) => return Ok(body),
                // An expired or revoked token: a new one, once.
                Err(ConnectorError::Unauthorized { message }) if !refreshed && message.contains(" HTTP 401") => {
                    tracing::info!(url = %super::http::display_url(url), "Graph refused the token; getting a new one");
                    self.tokens.invalidate(&token);
                    refreshed = true;
                }
                Err(e) => return Err(explain_graph_error(e)),
            }
        }
    }

    /// GETs a delta page.
    async fn delta_page(&self, url: &Url, page: Option<u64>) -> Result<DeltaPage, ConnectorError> {
        let body = self.get(url, page).await?;
        DeltaPage::parse(body).map_err(|m| source(page, format!("{}: {m}", super::http::display_url(url))))
    }

    /// A whole `/groups/delta` round from `url` (the start, or a stored
    /// deltaLink), entry by entry.
    async fn group_round(&self, mut url: Url, page: Option<u64>) -> Result<(Vec<Value>, String), ConnectorError> {
        let mut entries = Vec::new();
        loop {
            let delta = self.delta_page(&url, page).await?;
            entries.extend(delta.value);
            match (delta.next_link, delta.delta_link) {
                (Some(next), _) => url = self.link(&next, page)?,
                (None, Some(delta_link)) => return Ok((entries, delta_link)),
                (None, None) => unreachable!("DeltaPage::parse requires a link"),
            }
        }
    }

    /// Every group: (member id → group names, the groups).
    async fn all_groups(&self) -> Result<(HashMap<String, Vec<String>>, Groups), ConnectorError> {
        let mut url = self.endpoint("v1.0/groups/delta")?;
        url.query_pairs_mut().append_pair("$select", GROUPS_SELECT);
        let (entries, delta_link) = self.group_round(url, Some(1)).await?;
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        // A large group's members come over several entries of the round.
        let mut members: HashMap<String, BTreeSet<String>> = HashMap::new();
        for group in &entries {
            let Some(id) = str_at(group, "id") else { continue };
            if group.get("@removed").is_some() {
                continue;
            }
            if let Some(name) = str_at(group, "displayName") {
                names.insert(id.to_string(), name.to_string());
            }
            let set = members.entry(id.to_string()).or_default();
            for (member, removed) in wire::member_changes(group) {
                if removed {
                    set.remove(&member);
                } else {
                    set.insert(member);
                }
            }
        }
        let mut memberships: HashMap<String, Vec<String>> = HashMap::new();
        for (group, users) in members {
            let name = names.get(&group).cloned().unwrap_or_else(|| group.clone());
            for user in users {
                memberships.entry(user).or_default().push(name.clone());
            }
        }
        Ok((memberships, Groups { delta_link: Some(delta_link), names }))
    }

    /// The group changes since `link`: the users whose memberships changed
    /// and the groups now; `Err(Ok(reason))` when they need a Full read.
    async fn group_changes(
        &self,
        link: &str,
        mut names: BTreeMap<String, String>,
    ) -> Result<Result<(BTreeSet<String>, Groups), String>, ConnectorError> {
        let url = self.link(link, None)?;
        let (entries, delta_link) = match self.group_round(url, None).await {
            Ok(round) => round,
            Err(e) => match resync_reason(&e) {
                Some(reason) => return Ok(Err(format!("groups: {reason}"))),
                None => return Err(e),
            },
        };
        let mut marked = BTreeSet::new();
        for group in &entries {
            let Some(id) = str_at(group, "id") else { continue };
            if let Some(reason) = wire::removed_reason(group) {
                let name = names.get(id).map_or(id, String::as_str);
                return Ok(Err(format!(
                    "the group {name:?} was removed ({reason}) and who was in it is no longer known, so memberships are \
                     read whole"
                )));
            }
            if let Some(name) = str_at(group, "displayName")
                && let Some(old) = names.insert(id.to_string(), name.to_string())
                && old != name
            {
                // A rename changes the groups of every member.
                marked.extend(self.group_members(id).await?);
            }
            marked.extend(wire::member_changes(group).into_iter().map(|(user, _)| user));
        }
        Ok(Ok((marked, Groups { delta_link: Some(delta_link), names })))
    }

    /// The user members of a group (`/groups/{id}/members`).
    async fn group_members(&self, id: &str) -> Result<Vec<String>, ConnectorError> {
        let mut url = self.endpoint("v1.0/groups/")?;
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(id).push("members").push("microsoft.graph.user");
        }
        url.query_pairs_mut().append_pair("$select", "id");
        let mut members = Vec::new();
        loop {
            let body = self.get(&url, None).await?;
            members.extend(
                body.get("value")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|m| str_at(m, "id"))
                    .map(String::from),
            );
            match str_at(&body, "@odata.nextLink") {
                Some(next) => url = self.link(next, None)?,
                None => return Ok(members),
            }
        }
    }

    /// The names of the groups a user is a direct member of; None: no such
    /// user.
    async fn member_of(&self, id: &str, page: Option<u64>) -> Result<Option<Vec<String>>, ConnectorError> {
        let mut url = self.user_url(id)?;
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push("memberOf").push("microsoft.graph.group");
        }
        url.query_pairs_mut().append_pair("$select", "id,displayName");
        let mut names = Vec::new();
        loop {
            let body = match self.get(&url, page).await {
                Ok(body) => body,
                Err(ConnectorError::Http { status: 404, .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            names.extend(
                body.get("value")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|g| str_at(g, "displayName").or_else(|| str_at(g, "id")))
                    .map(String::from),
            );
            match str_at(&body, "@odata.nextLink") {
                Some(next) => url = self.link(next, page)?,
                None => return Ok(Some(names)),
            }
        }
    }

    /// Reads one user whole (`GET /users/{id}`); None: no such user.
    async fn read_user(&self, id: &str, page: Option<u64>) -> Result<Option<Value>, ConnectorError> {
        let mut url = self.user_url(id)?;
        url.query_pairs_mut()
            .append_pair("$select", &self.select.join(","))
            .append_pair("$expand", "manager($select=id)");
        match self.get(&url, page).await {
            Ok(user) => Ok(Some(user)),
            Err(ConnectorError::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether a user passes the Connection's filters.
    fn wanted(&self, user: &Value) -> bool {
        let guest_left_out = self.exclude_guests && wire::is_guest(user);
        let unlicensed_left_out = self.licensed_only && !wire::is_licensed(user);
        !guest_left_out && !unlicensed_left_out
    }

    fn account(&self, user: &Value, page: Option<u64>) -> Result<Account, ConnectorError> {
        wire::map_user(user, &self.extra).map_err(|e| source(page, e.to_string()))
    }

    /// A changed user of a delta, read whole where the entry is not and
    /// with its groups: Some(account), or None when it is gone or filtered
    /// out (a deletion).
    async fn changed_user(&self, entry: Option<Value>, id: &str, page: u64) -> Result<Option<Account>, ConnectorError> {
        let user = match entry {
            Some(entry) if wire::is_complete(&entry, &self.select) => entry,
            _ => match self.read_user(id, Some(page)).await? {
                Some(user) => user,
                None => return Ok(None),
            },
        };
        if !self.wanted(&user) {
            return Ok(None);
        }
        let mut account = self.account(&user, Some(page))?;
        if self.include_groups {
            match self.member_of(&account.id, Some(page)).await? {
                Some(groups) => account.groups = groups,
                None => return Ok(None),
            }
            account.normalize();
        }
        Ok(Some(account))
    }

    async fn start(&mut self, mode: SyncMode, cursor: Option<&str>) -> Result<ReadPlan, ConnectorError> {
        self.reading = None;
        self.cursor = None;
        let stored = cursor.map(str::trim).filter(|c| !c.is_empty());
        let reason = match (mode, stored) {
            (SyncMode::Full, _) => None,
            (SyncMode::Delta, None) => Some(NO_CURSOR.to_string()),
            (SyncMode::Delta, Some(text)) => match serde_json::from_str::<Cursor>(text) {
                Err(_) => Some("the stored cursor is not an msgraph delta cursor".to_string()),
                Ok(stored) if self.include_groups && stored.groups.is_none() => {
                    Some("the stored cursor has no groups delta".to_string())
                }
                Ok(stored) => match self.start_delta(stored).await? {
                    Ok(reading) => {
                        self.reading = Some(reading);
                        return Ok(ReadPlan { kind: ReadKind::Delta, reason: None });
                    }
                    Err(reason) => Some(reason),
                },
            },
        };
        if let Some(reason) = &reason {
            tracing::info!(%reason, "msgraph: a full read instead of a delta");
        }
        let (memberships, groups) =
            if self.include_groups { self.all_groups().await? } else { (HashMap::new(), Groups::default()) };
        self.reading = Some(Reading {
            kind: ReadKind::Full,
            phase: Phase::Users,
            number: 1,
            next: Some(self.users_delta_url()?),
            first: None,
            users_delta_link: None,
            groups,
            memberships,
            marked: BTreeSet::new(),
            reported: HashSet::new(),
        });
        Ok(ReadPlan { kind: ReadKind::Full, reason })
    }

    /// Starts a delta from a stored cursor: the group changes, then the
    /// users' first page. `Ok(Err(reason))`: the read must be Full.
    async fn start_delta(&self, stored: Cursor) -> Result<Result<Reading, String>, ConnectorError> {
        let (marked, groups) = match (&stored.groups, self.include_groups) {
            (Some(link), true) => match self.group_changes(link, stored.group_names.clone()).await? {
                Ok(changes) => changes,
                Err(reason) => return Ok(Err(reason)),
            },
            _ => (BTreeSet::new(), Groups::default()),
        };
        let url = self.link(&stored.users, None)?;
        let first = match self.delta_page(&url, Some(1)).await {
            Ok(first) => first,
            Err(e) => match resync_reason(&e) {
                Some(reason) => return Ok(Err(reason)),
                None => return Err(e),
            },
        };
        Ok(Ok(Reading {
            kind: ReadKind::Delta,
            phase: Phase::Users,
            number: 1,
            next: None,
            first: Some(first),
            users_delta_link: None,
            groups,
            memberships: HashMap::new(),
            marked,
            reported: HashSet::new(),
        }))
    }

    async fn page(&mut self) -> Result<Option<Page>, ConnectorError> {
        let Some(mut reading) = self.reading.take() else {
            return Err(source(None, "no read in progress: it failed, or begin was not called"));
        };
        // On error the read is over: `reading` stays taken.
        let page = match reading.phase {
            Phase::Users => self.users_page(&mut reading).await?,
            Phase::Marked => self.marked_page(&mut reading).await?,
            Phase::Done => None,
        };
        if page.is_none() && reading.phase != Phase::Done {
            reading.phase = Phase::Done;
        }
        if reading.phase == Phase::Done && self.cursor.is_none() {
            self.cursor = reading.users_delta_link.as_ref().map(|users| {
                let cursor = Cursor {
                    users: users.clone(),
                    groups: reading.groups.delta_link.clone(),
                    group_names: reading.groups.names.clone(),
                };
                serde_json::to_string(&cursor).unwrap_or_default()
            });
        }
        self.reading = Some(reading);
        Ok(page)
    }

    async fn users_page(&self, reading: &mut Reading) -> Result<Option<Page>, ConnectorError> {
        let number = reading.number;
        let delta = match reading.first.take() {
            Some(first) => first,
            None => match reading.next.take() {
                Some(url) => self.delta_page(&url, Some(number)).await?,
                None => return Ok(None),
            },
        };
        match (&delta.next_link, &delta.delta_link) {
            (Some(next), _) => reading.next = Some(self.link(next, Some(number))?),
            (None, Some(delta_link)) => {
                reading.users_delta_link = Some(delta_link.clone());
                reading.phase = if reading.kind == ReadKind::Delta { Phase::Marked } else { Phase::Done };
            }
            (None, None) => {}
        }
        let mut page = Page { number, ..Page::default() };
        let mut removed: BTreeMap<String, u64> = BTreeMap::new();
        for entry in delta.value {
            let Some(id) = str_at(&entry, "id").map(String::from) else {
                return Err(source(Some(number), wire::UserError::NoId.to_string()));
            };
            match reading.kind {
                ReadKind::Full => {
                    // A first round lists what exists; nothing to remove.
                    if entry.get("@removed").is_some() || !self.wanted(&entry) {
                        continue;
                    }
                    let mut account = self.account(&entry, Some(number))?;
                    if let Some(groups) = reading.memberships.get(&id) {
                        account.groups = groups.clone();
                        account.normalize();
                    }
                    page.accounts.push(account);
                }
                ReadKind::Delta => {
                    reading.reported.insert(id.clone());
                    if let Some(reason) = wire::removed_reason(&entry) {
                        *removed.entry(reason.to_string()).or_default() += 1;
                        page.deleted.push(id);
                        continue;
                    }
                    match self.changed_user(Some(entry), &id, number).await? {
                        Some(account) => page.accounts.push(account),
                        None => page.deleted.push(id),
                    }
                }
            }
        }
        if !removed.is_empty() {
            tracing::info!(page = number, removed = ?removed, "msgraph: users removed at the source, by reason");
        }
        reading.number += 1;
        Ok(Some(page))
    }

    async fn marked_page(&self, reading: &mut Reading) -> Result<Option<Page>, ConnectorError> {
        let number = reading.number;
        let mut page = Page { number, ..Page::default() };
        while page.accounts.len() + page.deleted.len() < self.page_size as usize {
            let Some(id) = reading.marked.pop_first() else { break };
            if !reading.reported.insert(id.clone()) {
                continue;
            }
            match self.changed_user(None, &id, number).await? {
                Some(account) => page.accounts.push(account),
                None => page.deleted.push(id),
            }
        }
        if page.accounts.is_empty() && page.deleted.is_empty() {
            return Ok(None);
        }
        reading.number += 1;
        Ok(Some(page))
    }

    /// `GET /users/{id}` for each id: the users Graph still has and the
    /// filters keep.
    async fn present(&mut self, ids: &[String]) -> Result<Vec<Account>, ConnectorError> {
        let page = self.reading.as_ref().map(|r| r.number);
        let mut present = Vec::new();
        for id in ids {
            let Some(user) = self.read_user(id, page).await? else { continue };
            if !self.wanted(&user) {
                continue;
            }
            let mut account = self.account(&user, page)?;
            if let Some(groups) = self.reading.as_ref().and_then(|r| r.memberships.get(&account.id)) {
                account.groups = groups.clone();
                account.normalize();
            }
            present.push(account);
        }
        Ok(present)
    }
}

/// Why a stored delta link cannot be followed and a new round is needed:
/// Graph's 410 Gone (`syncStateNotFound`, `syncStateInvalid`,
/// `resyncRequired`…) or a delta token it says is invalid.
fn resync_reason(error: &ConnectorError) -> Option<String> {
    const CODES: [&str; 4] = ["syncStateNotFound", "syncStateInvalid", "resyncRequired", "resyncApplicationRequired"];
    let ConnectorError::Http { status, message, .. } = error else { return None };
    // The message holds the body's code, summarised or quoted.
    let code = error_code(message).filter(|c| CODES.contains(&c.as_str())).or_else(|| {
        CODES.iter().find(|c| message.contains(&format!(": {c}")) || message.contains(*c)).map(|c| c.to_string())
    });
    if *status != 410 && !(*status == 400 && code.is_some()) {
        return None;
    }
    let code = code.map(|c| format!(", {c}")).unwrap_or_default();
    Some(format!(
        "Graph no longer accepts the stored delta token (HTTP {status}{code}): a new token starts with this full read"
    ))
}

/// Replaces the quoted Graph error body of an HTTP error by `code:
/// message`.
fn explain_graph_error(error: ConnectorError) -> ConnectorError {
    fn rewrite(message: String) -> String {
        let Some(at) = message.find(": {") else { return message };
        // What the HttpClient appended after the body: "(gave up after …)".
        let tail = match message.rfind(['}', '…']) {
            Some(end) if end > at => message[end..].trim_start_matches(['}', '…']).to_string(),
            _ => String::new(),
        };
        let (code, text) = match quoted_json(&message).as_ref().and_then(graph_error) {
            Some(parsed) => parsed,
            // A body cut short (the HttpClient quotes its start only): its
            // fields by name, as far as they go.
            None => match wire::json_string_field(&message, "code") {
                Some(code) => (code, wire::json_string_field(&message, "message").map(|m| m + "…")),
                None => return message,
            },
        };
        match text {
            Some(text) => format!("{}: {code}: {text}{tail}", &message[..at]),
            None => format!("{}: {code}{tail}", &message[..at]),
        }
    }
    match error {
        ConnectorError::Http { page, status, message } => {
            ConnectorError::Http { page, status, message: rewrite(message) }
        }
        ConnectorError::Unauthorized { message } => ConnectorError::Unauthorized { message: rewrite(message) },
        other => other,
    }
}

impl Connector for MsGraphConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities { delta: true, delta_deletions: true, groups: self.include_groups }
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

    fn still_present<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Account>, ConnectorError>> {
        Box::pin(self.present(ids))
    }
}

#[cfg(test)]
mod tests;
