//! The `scim` provider: the Users of a SCIM 2.0 service provider (RFC 7643,
//! RFC 7644), read through the shared retrying [`HttpClient`].
//!
//! - **Credentials**: the Secret's `token` key (bearer) or its `username`
//!   and `password` keys (basic), as `auth` says; a missing key is a
//!   configuration error naming the key, never showing a value.
//! - **Capabilities**: deltas without deletions, groups.
//! - `begin` reads `/ServiceProviderConfig` once per connector to learn
//!   whether the server filters (a server without that endpoint is taken as
//!   one that does not).
//! - **Full read**: `/Users?startIndex=1&count=<pageSize>`, 1-based, one
//!   request per page. The next `startIndex` follows what the server actually
//!   returned (it may send fewer than asked); the read ends when `startIndex`
//!   passes `totalResults` or a page is empty. `userFilter` is sent as
//!   `filter`.
//! - **Delta read** (mode Delta, a stored cursor, a server that filters):
//!   the same paging with `filter=meta.lastModified gt "<cursor>"` (and
//!   `userFilter` joined with `and`). SCIM has no tombstones, so a delta only
//!   upserts; the periodic Full pass finds deletions. Otherwise the read is
//!   Full and the plan says why.
//! - **Group changes in a Delta**: adding a member to a group changes no
//!   user's `meta.lastModified`, so `begin` also reads
//!   `/Groups?filter=meta.lastModified gt "<cursor>"`. When a group
//!   changed, it reads the whole membership (`/Groups`, as a Full read
//!   does) and, after the changed users, `GET /Users/{id}` for every member
//!   of every group of a changed group's name that the listing did not
//!   return (404: gone, left out), and reports those names as complete
//!   ([`Connector::complete_groups`]): the engine takes them off whoever
//!   left. A renamed group is a changed group under its new name. A server
//!   that refuses that filter on `/Groups` (400, 501) makes the read Full,
//!   and the plan says why. A deleted group leaves no trace to filter on:
//!   the periodic Full pass takes it off its former members.
//! - **Cursor**: the highest `meta.lastModified` seen among the users and
//!   the changed groups (compared as timestamps, stored verbatim); a delta
//!   that sees nothing keeps the stored cursor.
//! - **Mapping**: id = `id`; username = `userName`; email = the primary (or
//!   first) `emails[].value`; display name = `displayName`, `name.formatted`
//!   or given and family names; enabled = `active` (default true); groups =
//!   `groups[].display`. When no user read so far carries `groups` (many
//!   servers leave that read-only attribute out), `/Groups` is read once
//!   (paged the same way, before the page's accounts are handed out) and
//!   membership taken from `members[].value`; the membership map (member id
//!   to group names: memory grows with the memberships) is kept for the rest
//!   of the read and merged with any `groups` a user carries. Attributes:
//!   `externalId`, `title`, `givenName`, `familyName`, `lastModified`, and
//!   from the enterprise extension `employeeNumber`, `department` and
//!   `manager` (the manager's `value`).
//! - **Complete or failed**: a Full read must list everyone, because who
//!   it does not list is deleted. An empty page before `totalResults` is
//!   reached, a page of users already returned (a server that ignores
//!   `startIndex`) or more pages than `totalResults` announced (twice, plus
//!   ten) fail the read. Offset paging can still skip a user when another
//!   is deleted meanwhile, and a server can undercount: before anything is
//!   deleted, each stored user the listing did not name is asked for with
//!   `GET /Users/{id}`; one that answers is kept (404 confirms the deletion).
//! - **Errors**: a SCIM error body (`status`, `scimType`, `detail`) is
//!   summarised in the error message; every error during the read names its
//!   page (the `/Groups` pages count as the page that needed them).

use std::collections::{HashMap, HashSet};

use futures::future::BoxFuture;
use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderValue};
use serde_json::Value;

use super::http::{HttpClient, HttpSettings, Request, parse_url};
use super::{Capabilities, Connector, ConnectorError, Page, ProviderInputs, ReadKind, ReadPlan};
use crate::model::Account;
use idsync_api::SyncMode;
use idsync_api::connection::{ConnectionSpec, HttpAuth, ScimSettings};

/// The enterprise User extension's schema URN.
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// The SCIM error message schema URN.
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const ACCEPT_SCIM: &str = "application/scim+json, application/json;q=0.9";
const NO_CURSOR: &str = "no cursor yet";
const NO_FILTER: &str = "the server does not support filtering";
const NO_GROUP_FILTER: &str =
    "the server does not filter /Groups by meta.lastModified, so a delta cannot see who joined or left a group";

/// How requests are authenticated. `Debug` never shows the values.
enum Auth {
    Bearer(String),
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Bearer(_) => f.write_str("Bearer([REDACTED])"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, [REDACTED])"),
        }
    }
}

/// One read in progress.
#[derive(Debug)]
struct Reading {
    /// The `filter` sent with every `/Users` request.
    filter: Option<String>,
    /// The next `startIndex` (1-based).
    start_index: u64,
    /// The next page's number (from 1).
    number: u64,
    done: bool,
    /// The cursor the engine passed in.
    stored_cursor: Option<String>,
    /// The highest `meta.lastModified` seen: (parsed, verbatim).
    latest: Option<(jiff::Timestamp, String)>,
    /// Member id → group names, once read from `/Groups`.
    memberships: Option<HashMap<String, Vec<String>>>,
    /// Some user of this read carried `groups`: the server fills them, no
    /// need for `/Groups`.
    groups_on_users: bool,
    /// Every user id this read returned, to tell a server that ignores
    /// `startIndex` (the same page again and again) from one that pages.
    seen: HashSet<String>,
    /// The most pages this read may take: what the first page's
    /// `totalResults` announced, with a margin for users added meanwhile.
    max_pages: Option<u64>,
    /// A Delta's members of the groups changed since the cursor, read one
    /// by one after the changed users (those not among them).
    members: std::collections::VecDeque<String>,
    /// The changed groups' names: their membership is complete in this read.
    complete: Vec<String>,
}

/// The SCIM connector.
#[derive(Debug)]
pub struct ScimConnector {
    client: HttpClient,
    /// The base URL, ending with `/`.
    base: Url,
    auth: Auth,
    user_filter: Option<String>,
    page_size: u64,
    /// Whether the server filters, once `/ServiceProviderConfig` was read.
    filter_supported: Option<bool>,
    reading: Option<Reading>,
    /// The cursor of the last read that reached its end.
    cursor: Option<String>,
}

fn source(page: Option<u64>, message: impl Into<String>) -> ConnectorError {
    ConnectorError::Source { page, message: message.into() }
}

impl ScimConnector {
    /// A connector with the HTTP settings the Connection asks for.
    pub fn new(
        spec: &ConnectionSpec,
        settings: &ScimSettings,
        inputs: &ProviderInputs,
    ) -> Result<Self, ConnectorError> {
        Self::with_http_settings(spec, settings, inputs, HttpSettings::from_spec(spec))
    }

    /// A connector with explicit HTTP settings.
    pub fn with_http_settings(
        spec: &ConnectionSpec,
        settings: &ScimSettings,
        inputs: &ProviderInputs,
        http: HttpSettings,
    ) -> Result<Self, ConnectorError> {
        let mut base = parse_url(settings.base_url.trim(), "spec.provider.scim.baseUrl")?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(ConnectorError::Config {
                field: "spec.provider.scim.baseUrl".to_string(),
                message: "must not have a query or a fragment".to_string(),
            });
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let auth = match settings.auth {
            HttpAuth::Bearer => Auth::Bearer(inputs.required_secret_text("token")?),
            HttpAuth::Basic => Auth::Basic {
                username: inputs.required_secret_text("username")?,
                password: inputs.required_secret_text("password")?,
            },
        };
        let user_filter = settings.user_filter.as_deref().map(str::trim).filter(|f| !f.is_empty()).map(String::from);
        Ok(ScimConnector {
            client: HttpClient::new(http)?,
            base,
            auth,
            user_filter,
            page_size: u64::from(spec.page_size.max(1)),
            filter_supported: None,
            reading: None,
            cursor: None,
        })
    }

    fn endpoint(&self, name: &str) -> Result<Url, ConnectorError> {
        self.base.join(name).map_err(|e| ConnectorError::Config {
            field: "spec.provider.scim.baseUrl".to_string(),
            message: format!("cannot form the {name} URL: {e}"),
        })
    }

    fn request(&self, url: Url) -> Result<Request, ConnectorError> {
        let request = Request::get(url).header(ACCEPT, HeaderValue::from_static(ACCEPT_SCIM));
        match &self.auth {
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic { username, password } => request.basic_auth(username, password),
        }
    }

    async fn get_json(&self, request: &Request, page: Option<u64>) -> Result<Value, ConnectorError> {
        self.client.json::<Value>(request, page).await.map_err(explain_scim_error)
    }

    /// Whether the server filters (`/ServiceProviderConfig`), read once.
    async fn filter_supported(&mut self) -> Result<bool, ConnectorError> {
        if let Some(supported) = self.filter_supported {
            return Ok(supported);
        }
        let request = self.request(self.endpoint("ServiceProviderConfig")?)?;
        let supported = match self.get_json(&request, None).await {
            Ok(config) => config.pointer("/filter/supported").is_some_and(|v| truthy(v, false)),
            // No such endpoint: assume the least.
            Err(ConnectorError::Http { status: 404 | 501, .. }) => false,
            Err(e) => return Err(e),
        };
        self.filter_supported = Some(supported);
        Ok(supported)
    }

    /// One list page of `endpoint` from `start_index`.
    async fn list(
        &self,
        endpoint: &str,
        start_index: u64,
        filter: Option<&str>,
        page: u64,
    ) -> Result<ListPage, ConnectorError> {
        let mut request = self
            .request(self.endpoint(endpoint)?)?
            .query("startIndex", &start_index.to_string())
            .query("count", &self.page_size.to_string());
        if let Some(filter) = filter {
            request = request.query("filter", filter);
        }
        let body = self.get_json(&request, Some(page)).await?;
        let mut list = ListPage::parse(&body).map_err(|m| source(Some(page), format!("{endpoint}: {m}")))?;
        list.requested = self.page_size;
        Ok(list)
    }

    /// Every group's members: member id → group display names.
    async fn memberships(&self, page: u64) -> Result<HashMap<String, Vec<String>>, ConnectorError> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for group in self.groups(None, page).await? {
            let Some(name) = group_name(&group) else { continue };
            for member in group.get("members").and_then(Value::as_array).into_iter().flatten() {
                if let Some(id) = str_at(member, "/value") {
                    map.entry(id.to_string()).or_default().push(name.to_string());
                }
            }
        }
        Ok(map)
    }

    /// Every group `filter` selects (None: every group).
    async fn groups(&self, filter: Option<&str>, page: u64) -> Result<Vec<Value>, ConnectorError> {
        let mut groups = Vec::new();
        let mut start_index = 1;
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            let list = self.list("Groups", start_index, filter, page).await?;
            // A server that ignores startIndex would be paged forever.
            let ids: Vec<&str> = list.resources.iter().filter_map(|group| str_at(group, "/id")).collect();
            if !ids.is_empty() && ids.iter().all(|id| seen.contains(*id)) {
                return Err(source(
                    Some(page),
                    format!(
                        "Groups: the server returned only groups it had already returned (startIndex {start_index}): \
                         it does not page by startIndex"
                    ),
                ));
            }
            seen.extend(ids.into_iter().map(String::from));
            let next = list.next_start(start_index);
            groups.extend(list.resources);
            match next {
                Some(next) => start_index = next,
                None => return Ok(groups),
            }
        }
    }

    /// A Delta's groups changed since `cursor`, by name, with their latest
    /// `meta.lastModified`; None when the server refuses to filter
    /// `/Groups` by it.
    async fn changed_groups(&self, cursor: &str) -> Result<Option<ChangedGroups>, ConnectorError> {
        let groups = match self.groups(Some(&delta_filter(None, cursor)), 1).await {
            Ok(groups) => groups,
            Err(ConnectorError::Http { status: 400 | 501, .. }) => return Ok(None),
            Err(e) => return Err(e.with_page(None)),
        };
        let mut changed = ChangedGroups::default();
        for group in &groups {
            if let Some(name) = group_name(group) {
                changed.names.insert(name.to_string());
            }
            changed.latest = latest(changed.latest.take(), group);
        }
        Ok(Some(changed))
    }

    async fn page(&mut self) -> Result<Option<Page>, ConnectorError> {
        let Some(mut reading) = self.reading.take() else {
            return Err(source(None, "no read in progress: it failed, or begin was not called"));
        };
        // On error the read is over: `reading` stays taken.
        let page =
            if reading.done { self.member_page(&mut reading).await? } else { self.user_page(&mut reading).await? };
        self.reading = Some(reading);
        Ok(page)
    }

    /// The next page of the `/Users` listing; after its last, the first
    /// page of the changed groups' members (None: the read is over).
    async fn user_page(&mut self, reading: &mut Reading) -> Result<Option<Page>, ConnectorError> {
        let number = reading.number;
        let list = self.list("Users", reading.start_index, reading.filter.as_deref(), number).await?;
        reading.check_page(&list, number)?;
        if list.resources.is_empty() {
            reading.done = true;
            self.cursor = reading.cursor();
            return self.member_page(reading).await;
        }
        reading.groups_on_users |= list.resources.iter().any(has_groups);
        if reading.memberships.is_none() && !reading.groups_on_users {
            reading.memberships = Some(self.memberships(number).await?);
        }
        let mut accounts = Vec::with_capacity(list.resources.len());
        for (offset, user) in list.resources.iter().enumerate() {
            let mut account = map_user(user).map_err(|m| {
                source(Some(number), format!("the user at startIndex {}: {m}", reading.start_index + offset as u64))
            })?;
            if let Some(groups) = reading.memberships.as_ref().and_then(|m| m.get(&account.id)) {
                account.groups.extend(groups.iter().cloned());
                account.normalize();
            }
            reading.latest = latest(reading.latest.take(), user);
            accounts.push(account);
        }
        match list.next_start(reading.start_index) {
            Some(next) => reading.start_index = next,
            None => {
                reading.done = true;
                self.cursor = reading.cursor();
            }
        }
        reading.number += 1;
        Ok(Some(Page { number, accounts, deleted: Vec::new() }))
    }

    /// The next page of the changed groups' members the listing did not
    /// return, read one by one (None: none left).
    async fn member_page(&self, reading: &mut Reading) -> Result<Option<Page>, ConnectorError> {
        let size = usize::try_from(self.page_size).unwrap_or(usize::MAX);
        let ids = super::unseen_ids(&mut reading.members, &mut reading.seen, size);
        if ids.is_empty() {
            return Ok(None);
        }
        let number = reading.number;
        let mut accounts = Vec::with_capacity(ids.len());
        for id in &ids {
            let member = match &self.user_filter {
                // Only a member the user filter selects is one of this
                // connection's accounts.
                Some(user_filter) => self.filtered_user(user_filter, id, number, reading.memberships.as_ref()).await?,
                None => self.user(id, Some(number), reading.memberships.as_ref()).await?,
            };
            accounts.extend(member);
        }
        reading.number += 1;
        Ok(Some(Page { number, accounts, deleted: Vec::new() }))
    }

    /// The user `id` if `user_filter` selects it:
    /// `/Users?filter=(<userFilter>) and id eq "<id>"`.
    async fn filtered_user(
        &self,
        user_filter: &str,
        id: &str,
        page: u64,
        memberships: Option<&HashMap<String, Vec<String>>>,
    ) -> Result<Option<Account>, ConnectorError> {
        let escaped = id.replace('\\', "\\\\").replace('"', "\\\"");
        let filter = format!("({user_filter}) and id eq \"{escaped}\"");
        let list = self.list("Users", 1, Some(&filter), page).await?;
        let Some(user) = list.resources.iter().find(|u| str_at(u, "/id") == Some(id)) else {
            return Ok(None);
        };
        let mut account = map_user(user).map_err(|m| source(Some(page), format!("the user {id:?}: {m}")))?;
        if let Some(groups) = memberships.and_then(|m| m.get(&account.id)) {
            account.groups.extend(groups.iter().cloned());
            account.normalize();
        }
        Ok(Some(account))
    }

    /// `GET /Users/{id}` as an account with its groups from `memberships`;
    /// None when the server answers 404 (no such user).
    async fn user(
        &self,
        id: &str,
        page: Option<u64>,
        memberships: Option<&HashMap<String, Vec<String>>>,
    ) -> Result<Option<Account>, ConnectorError> {
        let mut url = self.endpoint("Users")?;
        url.path_segments_mut()
            .map_err(|()| ConnectorError::Config {
                field: "spec.provider.scim.baseUrl".to_string(),
                message: "cannot be a base for user URLs".to_string(),
            })?
            .push(id);
        let request = self.request(url)?;
        let user = match self.get_json(&request, page).await {
            Ok(user) => user,
            Err(ConnectorError::Http { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut account = map_user(&user).map_err(|m| source(page, format!("the user {id:?}: {m}")))?;
        if account.id != *id {
            return Err(source(page, format!("GET /Users/{id} answered with the user {:?}", account.id)));
        }
        if let Some(groups) = memberships.and_then(|m| m.get(&account.id)) {
            account.groups.extend(groups.iter().cloned());
            account.normalize();
        }
        Ok(Some(account))
    }

    /// `GET /Users/{id}` for each id: the users the server still has (404
    /// means gone; any other failure fails the read).
    async fn present(&mut self, ids: &[String]) -> Result<Vec<Account>, ConnectorError> {
        let page = self.reading.as_ref().map(|r| r.number);
        let memberships = self.reading.as_ref().and_then(|r| r.memberships.as_ref());
        let mut present = Vec::new();
        for id in ids {
            if let Some(account) = self.user(id, page, memberships).await? {
                present.push(account);
            }
        }
        Ok(present)
    }

    async fn start(&mut self, mode: SyncMode, cursor: Option<&str>) -> Result<ReadPlan, ConnectorError> {
        self.reading = None;
        self.cursor = None;
        let filter_supported = self.filter_supported().await?;
        let cursor = cursor.map(str::trim).filter(|c| !c.is_empty());
        let (kind, reason) = match (mode, cursor) {
            (SyncMode::Full, _) => (ReadKind::Full, None),
            (SyncMode::Delta, None) => (ReadKind::Full, Some(NO_CURSOR.to_string())),
            (SyncMode::Delta, Some(_)) if !filter_supported => (ReadKind::Full, Some(NO_FILTER.to_string())),
            (SyncMode::Delta, Some(_)) => (ReadKind::Delta, None),
        };
        // Adding a member to a group changes no user's meta.lastModified: a
        // Delta also reads the groups changed since the cursor, and then
        // every current member of every group of their names.
        let (kind, reason, changed) = match (kind, cursor) {
            (ReadKind::Delta, Some(cursor)) => match self.changed_groups(cursor).await? {
                Some(changed) => (kind, reason, changed),
                None => (ReadKind::Full, Some(NO_GROUP_FILTER.to_string()), ChangedGroups::default()),
            },
            _ => (kind, reason, ChangedGroups::default()),
        };
        let (memberships, members) = if changed.names.is_empty() {
            (None, Default::default())
        } else {
            // The whole membership: the members' other groups, and every
            // group of a changed group's name.
            let memberships = self.memberships(1).await.map_err(|e| e.with_page(None))?;
            let mut members: Vec<String> = memberships
                .iter()
                .filter(|(_, groups)| groups.iter().any(|g| changed.names.contains(g)))
                .map(|(id, _)| id.clone())
                .collect();
            members.sort();
            tracing::debug!(groups = ?changed.names, members = members.len(), "scim delta: groups changed");
            (Some(memberships), members.into())
        };
        let filter = match (kind, cursor) {
            (ReadKind::Delta, Some(cursor)) => Some(delta_filter(self.user_filter.as_deref(), cursor)),
            _ => self.user_filter.clone(),
        };
        self.reading = Some(Reading {
            filter,
            start_index: 1,
            number: 1,
            done: false,
            stored_cursor: cursor.map(String::from),
            latest: changed.latest,
            memberships,
            groups_on_users: false,
            seen: HashSet::new(),
            max_pages: None,
            members,
            complete: changed.names.into_iter().collect(),
        });
        Ok(ReadPlan { kind, reason })
    }
}

impl Reading {
    /// Fails the read on a page that shows the listing cannot be trusted
    /// to be complete, so that nothing is deleted on its word:
    /// - an empty page before `totalResults` is reached;
    /// - a page of users this read already returned (a server that ignores
    ///   `startIndex` would otherwise be paged forever);
    /// - more pages than `totalResults` announced, with a margin.
    fn check_page(&mut self, list: &ListPage, number: u64) -> Result<(), ConnectorError> {
        let page_size = list.requested.max(1);
        if number == 1 {
            self.max_pages = list.total_results.map(|total| max_pages(total, page_size));
        }
        if list.resources.is_empty() {
            return match list.total_results {
                Some(total) if self.start_index <= total => Err(source(
                    Some(number),
                    format!(
                        "the server returned no users at startIndex {} although it reports totalResults {total}: \
                         the listing ended early, so it cannot tell who was deleted",
                        self.start_index
                    ),
                )),
                _ => Ok(()),
            };
        }
        let ids: Vec<&str> = list.resources.iter().filter_map(|user| str_at(user, "/id")).collect();
        if !ids.is_empty() && ids.iter().all(|id| self.seen.contains(*id)) {
            return Err(source(
                Some(number),
                format!(
                    "the server returned only users it had already returned (startIndex {}): it does not page by \
                     startIndex, or its order changed during the read",
                    self.start_index
                ),
            ));
        }
        self.seen.extend(ids.into_iter().map(String::from));
        if let Some(max) = self.max_pages
            && number > max
        {
            return Err(source(
                Some(number),
                format!("the read took more than {max} pages, far more than the totalResults the server announced"),
            ));
        }
        Ok(())
    }

    fn cursor(&self) -> Option<String> {
        self.latest.as_ref().map(|(_, text)| text.clone()).or_else(|| self.stored_cursor.clone())
    }
}

impl Connector for ScimConnector {
    fn capabilities(&self) -> Capabilities {
        Capabilities { delta: true, delta_deletions: false, groups: true }
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

    fn complete_groups(&self) -> Vec<String> {
        self.reading.as_ref().filter(|r| r.done).map(|r| r.complete.clone()).unwrap_or_default()
    }
}

/// The groups a Delta found changed since its cursor.
#[derive(Debug, Default)]
struct ChangedGroups {
    names: std::collections::BTreeSet<String>,
    /// Their highest `meta.lastModified`: (parsed, verbatim).
    latest: Option<(jiff::Timestamp, String)>,
}

/// A group's name as accounts list it: `displayName`, or its id.
fn group_name(group: &Value) -> Option<&str> {
    str_at(group, "/displayName").or_else(|| str_at(group, "/id"))
}

/// The later of `latest` and a resource's `meta.lastModified`.
fn latest(latest: Option<(jiff::Timestamp, String)>, resource: &Value) -> Option<(jiff::Timestamp, String)> {
    match str_at(resource, "/meta/lastModified").and_then(|m| Some((m.parse::<jiff::Timestamp>().ok()?, m))) {
        Some((at, text)) if latest.as_ref().is_none_or(|(l, _)| at > *l) => Some((at, text.to_string())),
        _ => latest,
    }
}

/// `meta.lastModified gt "<cursor>"`, joined to the user filter with `and`.
fn delta_filter(user_filter: Option<&str>, cursor: &str) -> String {
    let escaped = cursor.replace('\\', "\\\\").replace('"', "\\\"");
    let since = format!("meta.lastModified gt \"{escaped}\"");
    match user_filter {
        Some(user_filter) => format!("({user_filter}) and {since}"),
        None => since,
    }
}

/// The most pages a read of `total` users may take: twice the pages they
/// fill plus ten, for users created while it runs.
fn max_pages(total: u64, page_size: u64) -> u64 {
    total.div_ceil(page_size).saturating_mul(2).saturating_add(10)
}

/// A ListResponse page.
#[derive(Debug)]
struct ListPage {
    total_results: Option<u64>,
    resources: Vec<Value>,
    /// The `count` asked for.
    requested: u64,
}

/// Why a ListResponse page cannot be read.
#[derive(Debug, thiserror::Error)]
enum ListPageError {
    /// Names what it got, never the value: it comes from the source.
    #[error("totalResults is not a count: got {0}")]
    TotalResults(&'static str),
    #[error("Resources is not a list")]
    Resources,
}

/// What kind of JSON value `v` is, for a message that must not quote it.
fn shape_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.as_i64().is_some_and(|i| i < 0) => "a negative number",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => "a fraction",
        Value::Number(_) => "a number too large",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl ListPage {
    fn parse(body: &Value) -> Result<ListPage, ListPageError> {
        let total_results = match body.get("totalResults") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| ListPageError::TotalResults(shape_of(v)))?),
        };
        let resources = match body.get("Resources") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(_) => return Err(ListPageError::Resources),
        };
        Ok(ListPage { total_results, resources, requested: 0 })
    }

    /// The next `startIndex` after this page (which started at
    /// `start_index`), or None when this page was the last.
    fn next_start(&self, start_index: u64) -> Option<u64> {
        if self.resources.is_empty() {
            return None;
        }
        let next = start_index + self.resources.len() as u64;
        match self.total_results {
            Some(total) if next > total => None,
            _ => Some(next),
        }
    }
}

fn str_at<'v>(value: &'v Value, pointer: &str) -> Option<&'v str> {
    value.pointer(pointer).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// A JSON boolean, or its string form ("true"/"false", any case).
fn truthy(value: &Value, default: bool) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) if s.eq_ignore_ascii_case("true") => true,
        Value::String(s) if s.eq_ignore_ascii_case("false") => false,
        _ => default,
    }
}

fn has_groups(user: &Value) -> bool {
    user.get("groups").and_then(Value::as_array).is_some_and(|groups| !groups.is_empty())
}

/// The most bytes one User resource may take, as the csv provider bounds
/// a record: a user in thousands of groups stays well under it, a broken or
/// hostile server's endless record does not.
pub const MAX_USER_BYTES: usize = 4 * 1024 * 1024;

/// Why a SCIM User resource cannot become an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("it has no id")]
    NoId,
    /// `active` must say yes or no; anything else could enable an account
    /// its source disabled, so the read stops rather than guess.
    #[error("user {id:?}: active is {value}, not true or false; it cannot tell whether the account is enabled")]
    Active { id: String, value: String },
    #[error("user {id:?} is {bytes} bytes, more than the {max} a user may take", max = MAX_USER_BYTES)]
    TooLarge { id: String, bytes: usize },
}

/// `active`: a JSON boolean or its string form ("true"/"false", any case).
/// Unassigned means enabled: RFC 7643 (2.5) makes null and absence the
/// same, and servers that do not track `active` leave it out.
fn active(id: &str, value: Option<&Value>) -> Result<bool, UserError> {
    match value {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => {
            let mut value = other.to_string();
            if value.chars().count() > 40 {
                value = value.chars().take(37).chain("...".chars()).collect();
            }
            Err(UserError::Active { id: id.to_string(), value })
        }
    }
}

/// Maps a SCIM User resource to an account.
pub fn map_user(user: &Value) -> Result<Account, UserError> {
    let id = match user.get("id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(UserError::NoId),
    };
    let bytes = serde_json::to_vec(user).map_or(0, |b| b.len());
    if bytes > MAX_USER_BYTES {
        return Err(UserError::TooLarge { id, bytes });
    }
    let enabled = active(&id, user.get("active"))?;
    let mut account = Account::new(id);
    account.username = str_at(user, "/userName").map(String::from);

    let emails = user.get("emails").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let primary = emails.iter().find(|e| e.get("primary").is_some_and(|p| truthy(p, false)));
    account.email = primary
        .and_then(|e| str_at(e, "/value"))
        .or_else(|| emails.iter().find_map(|e| str_at(e, "/value")))
        .map(String::from);

    let given = str_at(user, "/name/givenName");
    let family = str_at(user, "/name/familyName");
    account.display_name = str_at(user, "/displayName")
        .or_else(|| str_at(user, "/name/formatted"))
        .map(String::from)
        .or_else(|| match (given, family) {
            (None, None) => None,
            (given, family) => Some([given, family].into_iter().flatten().collect::<Vec<_>>().join(" ")),
        });
    account.enabled = enabled;
    account.groups = user
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| str_at(g, "/display"))
        .map(String::from)
        .collect();

    let enterprise = user.get(ENTERPRISE_USER);
    let mut attributes: Vec<(&str, Option<&str>)> = vec![
        ("externalId", str_at(user, "/externalId")),
        ("title", str_at(user, "/title")),
        ("givenName", given),
        ("familyName", family),
        ("lastModified", str_at(user, "/meta/lastModified")),
    ];
    if let Some(enterprise) = enterprise {
        attributes.extend([
            ("employeeNumber", str_at(enterprise, "/employeeNumber")),
            ("department", str_at(enterprise, "/department")),
            ("manager", str_at(enterprise, "/manager/value")),
        ]);
    }
    for (name, value) in attributes {
        if let Some(value) = value {
            account.attributes.insert(name.to_string(), Value::String(value.to_string()));
        }
    }
    account.normalize();
    Ok(account)
}

/// The summary of a SCIM error body (`status`, `scimType`, `detail`), or
/// None when `body` is not one.
pub fn scim_error_summary(body: &Value) -> Option<String> {
    let schemas = body.get("schemas")?.as_array()?;
    if !schemas.iter().any(|s| s.as_str() == Some(ERROR_SCHEMA)) {
        return None;
    }
    let status = match body.get("status") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let mut summary = "SCIM error".to_string();
    let details: Vec<String> =
        [status.map(|s| format!("status {s}")), str_at(body, "/scimType").map(|t| format!("scimType {t}"))]
            .into_iter()
            .flatten()
            .collect();
    if !details.is_empty() {
        summary.push_str(&format!(" ({})", details.join(", ")));
    }
    if let Some(detail) = str_at(body, "/detail") {
        summary.push_str(": ");
        summary.push_str(detail);
    }
    Some(summary)
}

/// Replaces the quoted SCIM error body of an HTTP error (the HttpClient
/// quotes the start of an error body, secrets redacted) by its summary.
fn explain_scim_error(error: ConnectorError) -> ConnectorError {
    super::http::summarize_quoted_body(error, scim_error_summary)
}

#[cfg(test)]
#[path = "scim_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::connectors::testing::{
        fast_http as fast, handler, respond, scim_spec as spec, serve, token_inputs as inputs,
    };

    #[test]
    fn maps_a_realistic_user() {
        let user = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE_USER],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "701984",
            "userName": "bjensen@example.com",
            "name": {
                "formatted": "Ms. Barbara J Jensen, III",
                "familyName": "Jensen",
                "givenName": "Barbara",
            },
            "title": "Tour Guide",
            "active": false,
            "emails": [
                {"value": "bjensen@example.com", "type": "work"},
                {"value": "babs@jensen.org", "type": "home", "primary": true},
            ],
            "groups": [
                {"value": "e9e30dba", "display": "Tour Guides"},
                {"value": "fc348aa8", "display": "Employees"},
                {"value": "fc348aa8", "display": "Employees"},
            ],
            "meta": {"resourceType": "User", "lastModified": "2011-05-13T04:42:34Z"},
            ENTERPRISE_USER: {
                "employeeNumber": "701984",
                "costCenter": "4130",
                "department": "Tour Operations",
                "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d", "displayName": "John Smith"},
            },
        });
        let account = map_user(&user).unwrap();
        assert_eq!(account.id, "2819c223-7f76-453a-919d-413861904646");
        assert_eq!(account.username.as_deref(), Some("bjensen@example.com"));
        assert_eq!(account.email.as_deref(), Some("babs@jensen.org"));
        assert_eq!(account.display_name.as_deref(), Some("Ms. Barbara J Jensen, III"));
        assert!(!account.enabled);
        assert_eq!(account.groups, vec!["Employees", "Tour Guides"]);
        let attributes: Vec<(&str, &str)> =
            account.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap())).collect();
        assert_eq!(
            attributes,
            vec![
                ("department", "Tour Operations"),
                ("employeeNumber", "701984"),
                ("externalId", "701984"),
                ("familyName", "Jensen"),
                ("givenName", "Barbara"),
                ("lastModified", "2011-05-13T04:42:34Z"),
                ("manager", "26118915-6090-4610-87e4-49d8ca9f808d"),
                ("title", "Tour Guide"),
            ]
        );

        // Fallbacks: first e-mail, given + family name, active by default.
        let minimal = json!({
            "id": "u2", "userName": "x",
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [{"value": "ann@example.com"}, {"value": "other@example.com"}],
        });
        let account = map_user(&minimal).unwrap();
        assert_eq!(account.email.as_deref(), Some("ann@example.com"));
        assert_eq!(account.display_name.as_deref(), Some("Ann Lee"));
        assert!(account.enabled);
        assert!(account.groups.is_empty());
        assert_eq!(map_user(&json!({"userName": "no-id"})), Err(UserError::NoId));
    }

    #[test]
    fn active_must_say_yes_or_no() {
        let with = |active: Value| map_user(&json!({"id": "u7", "active": active}));
        assert!(with(json!(true)).unwrap().enabled);
        assert!(!with(json!(false)).unwrap().enabled);
        assert!(!with(json!("False")).unwrap().enabled);
        assert!(with(json!("TRUE")).unwrap().enabled);
        // Unassigned (absent or null, the same in SCIM) is enabled.
        assert!(with(Value::Null).unwrap().enabled);
        assert!(map_user(&json!({"id": "u7"})).unwrap().enabled);
        for (value, shown) in [(json!(0), "0"), (json!(1), "1"), (json!("maybe"), "\"maybe\""), (json!({}), "{}")] {
            let error = with(value).unwrap_err();
            assert_eq!(error, UserError::Active { id: "u7".into(), value: shown.into() });
            assert_eq!(
                error.to_string(),
                format!(
                    "user \"u7\": active is {shown}, not true or false; it cannot tell whether the account is enabled"
                )
            );
        }
    }

    #[test]
    fn a_user_record_has_a_size_limit() {
        let huge = json!({"id": "u9", "title": "x".repeat(MAX_USER_BYTES)});
        let error = map_user(&huge).unwrap_err();
        assert!(matches!(&error, UserError::TooLarge { id, bytes } if id == "u9" && *bytes > MAX_USER_BYTES));
        assert!(error.to_string().starts_with("user \"u9\" is "), "{error}");
    }

    #[test]
    fn summarises_scim_error_bodies() {
        let body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": "400",
            "scimType": "invalidFilter",
            "detail": "invalid syntax at column 5",
        });
        assert_eq!(
            scim_error_summary(&body).unwrap(),
            "SCIM error (status 400, scimType invalidFilter): invalid syntax at column 5"
        );
        assert_eq!(scim_error_summary(&json!({"status": 400})), None);
        assert_eq!(delta_filter(None, "2024-01-01T00:00:00Z"), "meta.lastModified gt \"2024-01-01T00:00:00Z\"");
        assert_eq!(
            delta_filter(Some("active eq true"), "x\"y"),
            "(active eq true) and meta.lastModified gt \"x\\\"y\""
        );
    }

    #[tokio::test]
    async fn scim_errors_reach_the_message_with_the_page() {
        let server = serve(handler(|_, parts| {
            Box::pin(async move {
                let body = match parts.uri.path() {
                    "/scim/ServiceProviderConfig" => json!({"filter": {"supported": true}}),
                    _ if parts.uri.query().unwrap_or_default().contains("startIndex=1&") => json!({
                        "totalResults": 3, "itemsPerPage": 2, "startIndex": 1,
                        "Resources": [{"id": "a"}, {"id": "b", "groups": [{"display": "g"}]}],
                    }),
                    _ => {
                        return respond(
                            400,
                            &[],
                            json!({"schemas": [ERROR_SCHEMA], "status": "400", "scimType": "invalidValue",
                                   "detail": "startIndex too large"})
                            .to_string(),
                        );
                    }
                };
                respond(200, &[("content-type", "application/scim+json")], body.to_string())
            })
        }))
        .await;
        let (spec, settings) = spec(&format!("{}/scim", server.base), 2);
        let mut connector = ScimConnector::with_http_settings(&spec, &settings, &inputs("tok"), fast()).unwrap();
        let plan = connector.begin(SyncMode::Delta, None).await.unwrap();
        assert_eq!(plan, ReadPlan { kind: ReadKind::Full, reason: Some(NO_CURSOR.into()) });
        let page = connector.next_page().await.unwrap().unwrap();
        assert_eq!(page.number, 1);
        assert_eq!(page.accounts.len(), 2);
        let e = connector.next_page().await.unwrap_err();
        assert!(matches!(e, ConnectorError::Http { status: 400, page: Some(2), .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with("page 2: GET "), "{text}");
        assert!(
            text.ends_with(
                "answered HTTP 400 Bad Request: SCIM error (status 400, scimType invalidValue): startIndex too large"
            ),
            "{text}"
        );
    }

    /// A server whose users carry no groups; `/Groups` with a filter
    /// answers `groups_filtered` (None: 400 invalidFilter).
    async fn group_server(groups_filtered: Option<Value>) -> crate::connectors::testing::TestServer {
        serve(handler(move |_, parts| {
            let groups_filtered = groups_filtered.clone();
            Box::pin(async move {
                let query = parts.uri.query().unwrap_or_default().to_string();
                let filtered = query.contains("filter=");
                let body = match parts.uri.path() {
                    "/scim/ServiceProviderConfig" => json!({"filter": {"supported": true}}),
                    // Only u2 is an active user, the userFilter of one test.
                    "/scim/Users" if query.contains("u2") => json!({"totalResults": 1, "Resources": [
                        {"id": "u2", "userName": "bob"},
                    ]}),
                    "/scim/Users" if filtered => json!({"totalResults": 0, "Resources": []}),
                    "/scim/Users/u2" => json!({"id": "u2", "userName": "bob"}),
                    "/scim/Users/u3" => json!({"id": "u3", "userName": "carol"}),
                    "/scim/Users/gone" => return respond(404, &[], ""),
                    "/scim/Groups" if filtered => match groups_filtered {
                        Some(body) => body,
                        None => {
                            return respond(
                                400,
                                &[],
                                json!({"schemas": [ERROR_SCHEMA], "status": "400", "scimType": "invalidFilter"})
                                    .to_string(),
                            );
                        }
                    },
                    "/scim/Groups" => json!({"totalResults": 3, "Resources": [
                        {"id": "g1", "displayName": "eng", "members": [{"value": "u2"}, {"value": "gone"}]},
                        {"id": "g2", "displayName": "ops", "members": [{"value": "u2"}, {"value": "u9"}]},
                        {"id": "g3", "displayName": "eng", "members": [{"value": "u3"}]},
                    ]}),
                    _ => return respond(404, &[], ""),
                };
                respond(200, &[("content-type", "application/scim+json")], body.to_string())
            })
        }))
        .await
    }

    #[tokio::test]
    async fn a_delta_reads_the_members_of_the_groups_changed_since_the_cursor() {
        let changed = json!({"totalResults": 1, "Resources": [
            {"id": "g1", "displayName": "eng", "meta": {"lastModified": "2026-11-29T08:00:00Z"}},
        ]});
        let server = group_server(Some(changed)).await;
        let (spec, settings) = spec(&format!("{}/scim", server.base), 10);
        let mut connector = ScimConnector::with_http_settings(&spec, &settings, &inputs("tok"), fast()).unwrap();
        let plan = connector.begin(SyncMode::Delta, Some("2026-11-29T07:00:00Z")).await.unwrap();
        assert_eq!(plan, ReadPlan { kind: ReadKind::Delta, reason: None });
        let mut accounts = Vec::new();
        while let Some(page) = connector.next_page().await.unwrap() {
            accounts.extend(page.accounts);
        }
        // Every member of both groups named eng, each with all its groups;
        // a member the server no longer has is left out.
        let members: Vec<(&str, Vec<String>)> = accounts.iter().map(|a| (a.id.as_str(), a.groups.clone())).collect();
        assert_eq!(members, [("u2", vec!["eng".to_string(), "ops".to_string()]), ("u3", vec!["eng".to_string()])]);
        assert_eq!(connector.complete_groups(), ["eng"]);
        assert_eq!(connector.cursor().as_deref(), Some("2026-11-29T08:00:00Z"), "the cursor covers the groups");
    }

    #[tokio::test]
    async fn only_members_the_user_filter_selects_are_read() {
        let changed = json!({"totalResults": 1, "Resources": [{"id": "g1", "displayName": "eng"}]});
        let server = group_server(Some(changed)).await;
        let (spec, mut settings) = spec(&format!("{}/scim", server.base), 10);
        settings.user_filter = Some("active eq true".into());
        let mut connector = ScimConnector::with_http_settings(&spec, &settings, &inputs("tok"), fast()).unwrap();
        let plan = connector.begin(SyncMode::Delta, Some("2026-11-29T07:00:00Z")).await.unwrap();
        assert_eq!(plan.kind, ReadKind::Delta);
        let mut ids = Vec::new();
        while let Some(page) = connector.next_page().await.unwrap() {
            ids.extend(page.accounts.into_iter().map(|a| a.id));
        }
        assert_eq!(ids, ["u2"], "u3 is outside the user filter, so no account of this connection");
        assert_eq!(connector.complete_groups(), ["eng"]);
    }

    #[tokio::test]
    async fn a_server_that_cannot_filter_groups_makes_a_delta_full() {
        let server = group_server(None).await;
        let (spec, settings) = spec(&format!("{}/scim", server.base), 10);
        let mut connector = ScimConnector::with_http_settings(&spec, &settings, &inputs("tok"), fast()).unwrap();
        let plan = connector.begin(SyncMode::Delta, Some("2026-11-29T07:00:00Z")).await.unwrap();
        assert_eq!(plan, ReadPlan { kind: ReadKind::Full, reason: Some(NO_GROUP_FILTER.into()) });
        assert!(connector.complete_groups().is_empty());
    }

    #[test]
    fn a_read_may_take_twice_the_announced_pages_and_ten_more() {
        assert_eq!(max_pages(25, 5), 20);
        assert_eq!(max_pages(0, 5), 10);
        assert_eq!(max_pages(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn missing_secret_keys_are_named() {
        let (spec, mut settings) = spec("http://127.0.0.1:1/", 10);
        let e = ScimConnector::new(&spec, &settings, &ProviderInputs::default()).unwrap_err();
        assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"token\" missing");
        settings.auth = HttpAuth::Basic;
        let mut inputs = ProviderInputs::default();
        inputs.secret.insert("username".into(), b"svc".to_vec());
        let e = ScimConnector::new(&spec, &settings, &inputs).unwrap_err();
        assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"password\" missing");
        inputs.secret.insert("password".into(), b"pa55-SECRET".to_vec());
        let connector = ScimConnector::new(&spec, &settings, &inputs).unwrap();
        assert!(!format!("{connector:?}").contains("SECRET"));
    }

    #[test]
    fn a_total_results_that_is_not_a_count_is_named_by_its_shape_not_quoted() {
        let body = json!({"totalResults": "MARKER-from-the-source", "Resources": []});
        let error = ListPage::parse(&body).expect_err("not a count").to_string();
        assert_eq!(error, "totalResults is not a count: got a string");
        let negative = ListPage::parse(&json!({"totalResults": -3})).expect_err("negative").to_string();
        assert_eq!(negative, "totalResults is not a count: got a negative number");
    }
}
