//! Connectors: how idsync reads accounts out of a connected system.
//!
//! A [`Connector`] is the one thing a provider (csv, scim, ldap…) implements.
//! It only *reads*: it never touches idsync's store, never sees what is stored,
//! and never decides what a read means for the stored accounts. The sync
//! engine drives it and owns every decision:
//!
//! 1. [`Connector::capabilities`] says what the provider can do (deltas,
//!    deletions in deltas, groups). The engine decides from this, never from
//!    the provider's name.
//! 2. [`Connector::begin`] starts a read with the requested [`SyncMode`] and
//!    the cursor the engine stored after the last successful read (or none).
//!    It answers with a [`ReadPlan`]: the [`ReadKind`] that will actually run
//!    and, when a Delta request became a Full read (no cursor yet, a provider
//!    without deltas, a cursor the source rejected), why. A connector may do
//!    I/O here (open the source, read a header, check a cursor).
//! 3. [`Connector::next_page`] is pulled by the engine, one [`Page`] at a
//!    time, until it answers `None`. Pages are numbered from 1. Nothing is
//!    read ahead of what the engine asks for beyond a small buffer, so memory
//!    stays bounded by the page size whatever the size of the source.
//!    - In a **Full** read the pages hold every account of the source; the
//!      engine deletes the stored accounts that none of the pages named.
//!      `Page::deleted` is always empty.
//!    - In a **Delta** read the pages hold the accounts created or changed
//!      since the cursor, and `Page::deleted` the ids deleted at the source
//!      (only when [`Capabilities::delta_deletions`]; otherwise the engine
//!      finds deletions with periodic Full reads).
//! 4. After the last page, [`Connector::cursor`] is the cursor the engine
//!    stores *together with* this read's data, in the same commit; `None`
//!    means there is none (a provider without deltas).
//! 5. After a Delta read, [`Connector::complete_groups`] names the groups
//!    whose whole current membership the read's pages carried: a stored
//!    account that lists one of them and that no page named has left it,
//!    and the engine takes the group off it (an update). Sources whose
//!    group changes move no member's change stamp (LDAP's memberOf, SCIM
//!    `/Groups`) use it so that a delta sees who joined *and* who left.
//!    When a Delta named deletions of ids that are no stored account (a
//!    deleted group, perhaps, whose entry took its membership with it),
//!    [`Connector::groups_present`] is asked which of the groups stored
//!    accounts list still exist; the engine takes the others off them.
//! 6. After a Full read, [`Connector::still_present`] is asked about the
//!    stored accounts no page named before the engine deletes them: a
//!    provider that can look one account up confirms each is gone, so a
//!    listing that skipped someone never deletes a live account.
//!
//! Any error fails the whole read: the engine commits nothing of it (no
//! account, no cursor), so a read is all or nothing. [`ConnectorError`]
//! says where it failed (`page`), whether the Connection should become
//! Stalled ([`ConnectorError::is_stalled`]) and why, in words a person
//! understands and that never contain a secret.
//!
//! [`http`] holds the HTTP client every HTTP-based provider uses (retries,
//! backoff, `Retry-After`, rate limiting, streaming bodies); [`csv`] is the
//! first provider.

use std::collections::BTreeMap;
use std::fmt;

use futures::future::BoxFuture;

use crate::model::Account;
use idsync_api::{ConnectionSpec, Provider, SyncMode};

pub mod address;
pub mod csv;
pub mod github;
pub mod http;
pub mod ldap;
pub mod msgraph;
pub mod okta;
pub mod scim;

#[cfg(test)]
pub(crate) mod testing;

/// What a provider can do; the sync engine decides from this, never from the
/// provider's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Can read only what changed since a cursor.
    pub delta: bool,
    /// Its delta reads report deleted accounts.
    pub delta_deletions: bool,
    /// Fills `Account::groups`.
    pub groups: bool,
}

/// Which kind of read runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// Every account of the source.
    Full,
    /// What changed since the cursor.
    Delta,
}

/// How a read will run: a Delta request may become Full (no cursor yet, a
/// provider without deltas, a rejected cursor) and says why.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadPlan {
    pub kind: ReadKind,
    /// Why the kind differs from the one asked for; `None` when it does not.
    pub reason: Option<String>,
}

/// One page: accounts to create or update, and (deltas only) ids deleted at
/// the source.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Page {
    /// From 1.
    pub number: u64,
    pub accounts: Vec<Account>,
    pub deleted: Vec<String>,
}

/// A provider's reader. See the module documentation for the contract.
pub trait Connector: Send {
    fn capabilities(&self) -> Capabilities;

    /// Begins a read with the stored cursor (None: there is none). Calling it
    /// again abandons the read in progress and starts a new one.
    fn begin<'a>(
        &'a mut self,
        mode: SyncMode,
        cursor: Option<&'a str>,
    ) -> BoxFuture<'a, Result<ReadPlan, ConnectorError>>;

    /// The next page, or None after the last. After an error the read is
    /// over: a new one needs `begin`.
    fn next_page(&mut self) -> BoxFuture<'_, Result<Option<Page>, ConnectorError>>;

    /// After the last page: the cursor to store with this read's data (None:
    /// none).
    fn cursor(&self) -> Option<String>;

    /// After the last page of a Delta read: the groups (as `Account::groups`
    /// names them) whose membership this read reported in full. Every
    /// current member of each was in one of the read's pages, carrying all
    /// of its current groups; the engine takes these groups off every
    /// stored account the read did not name. The default, for sources that
    /// never read groups apart from their members, names none.
    fn complete_groups(&self) -> Vec<String> {
        Vec::new()
    }

    /// After a Delta read that named deletions of ids no stored account
    /// has (a source that reports every deleted entry, groups included):
    /// which of `groups` (the names stored accounts list) still name a group
    /// at the source. The engine takes the others off the accounts. `None`
    /// (the default): the source cannot tell, and a Full read settles it.
    fn groups_present<'a>(
        &'a mut self,
        groups: &'a [String],
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ConnectorError>> {
        let _ = groups;
        Box::pin(async { Ok(None) })
    }

    /// After the last page: what the run's message should say about how
    /// the read went beyond its counts (a wait for the source's rate limit,
    /// a detail the credentials could not read). None by default.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// After a Full read: which of `ids` (stored accounts no page named) the
    /// source still has, read again one by one. A listing can skip a live
    /// account (offset paging while someone else is deleted, a server that
    /// undercounts); the engine then keeps it instead of deleting it. The
    /// default, for sources read whole in one body, finds none.
    fn still_present<'a>(&'a mut self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Account>, ConnectorError>> {
        let _ = ids;
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// What the controller resolved from the cluster for the provider.
///
/// `Debug` shows the Secret's keys, never its values.
#[derive(Clone, Default)]
pub struct ProviderInputs {
    /// The credentials Secret's data (empty when the connection has none).
    pub secret: BTreeMap<String, Vec<u8>>,
    /// csv only: the content of the ConfigMap / Secret key the source names
    /// (None for a URL source).
    pub csv_data: Option<Vec<u8>>,
}

impl fmt::Debug for ProviderInputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderInputs")
            .field("secret_keys", &self.secret.keys().collect::<Vec<_>>())
            .field("csv_data_bytes", &self.csv_data.as_ref().map(Vec::len))
            .finish()
    }
}

impl ProviderInputs {
    /// A Secret key as text (surrounding whitespace, such as the newline of a
    /// Secret created from a file, removed). `Ok(None)` when the key is
    /// absent; an error when it is empty or not UTF-8. Never puts the value
    /// in an error.
    pub fn secret_text(&self, key: &str) -> Result<Option<String>, ConnectorError> {
        let Some(bytes) = self.secret.get(key) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(bytes).map_err(|_| ConnectorError::Config {
            field: SECRET_FIELD.to_string(),
            message: format!("key \"{key}\" is not valid UTF-8"),
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(ConnectorError::Config {
                field: SECRET_FIELD.to_string(),
                message: format!("key \"{key}\" is empty"),
            });
        }
        Ok(Some(text.to_string()))
    }

    /// Like [`secret_text`](Self::secret_text) for a key the provider cannot
    /// do without: `spec.credentialsSecretRef: key "token" missing`.
    pub fn required_secret_text(&self, key: &str) -> Result<String, ConnectorError> {
        self.secret_text(key)?.ok_or_else(|| ConnectorError::Config {
            field: SECRET_FIELD.to_string(),
            message: format!("key \"{key}\" missing"),
        })
    }
}

/// The field named by errors about the credentials Secret.
pub const SECRET_FIELD: &str = "spec.credentialsSecretRef";

/// The next `size` ids of `queue` not yet in `seen` (marking them seen):
/// the members of changed groups a Delta reads one by one, each once.
pub(crate) fn unseen_ids(
    queue: &mut std::collections::VecDeque<String>,
    seen: &mut std::collections::HashSet<String>,
    size: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < size
        && let Some(id) = queue.pop_front()
    {
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    ids
}

/// Builds the connector of a Connection.
pub fn build(spec: &ConnectionSpec, inputs: ProviderInputs) -> Result<Box<dyn Connector>, ConnectorError> {
    match &spec.provider {
        Provider::Csv(settings) => Ok(Box::new(csv::CsvConnector::new(spec, settings, inputs)?)),
        Provider::Scim(settings) => Ok(Box::new(scim::ScimConnector::new(spec, settings, &inputs)?)),
        Provider::Ldap(settings) => Ok(Box::new(ldap::LdapConnector::new(spec, settings, &inputs)?)),
        Provider::MsGraph(settings) => Ok(Box::new(msgraph::MsGraphConnector::new(spec, settings, &inputs)?)),
        Provider::Okta(settings) => Ok(Box::new(okta::OktaConnector::new(spec, settings, &inputs)?)),
        Provider::GitHub(settings) => Ok(Box::new(github::GitHubConnector::new(spec, settings, &inputs)?)),
    }
}

fn page_prefix(page: &Option<u64>) -> String {
    match page {
        Some(page) => format!("page {page}: "),
        None => String::new(),
    }
}

/// Errors, each with a message a person understands and that never contains
/// a secret. `page` says where a read failed (None: before the first page).
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// 401/403: the Connection becomes Stalled (reason Unauthorized).
    #[error("unauthorized: {message}")]
    Unauthorized { message: String },
    /// 402 Payment Required: the source's licence or subscription has
    /// lapsed; Stalled (reason SubscriptionLapsed) until someone renews it.
    #[error("the source refuses service until its subscription is renewed: {message}")]
    SubscriptionLapsed { message: String },
    /// A source address `spec.network` does not allow (see [`address`]):
    /// Stalled (reason AddressNotAllowed), saying how to fix it.
    #[error("{message}")]
    AddressNotAllowed { message: String },
    /// A bad spec or a missing Secret key: Stalled, naming the field.
    #[error("{field}: {message}")]
    Config { field: String, message: String },
    /// Bad data from the source, e.g. `line 7: 5 fields, the header has 6`.
    #[error("{}{message}", page_prefix(page))]
    Source { page: Option<u64>, message: String },
    /// An HTTP error status, after retries where they apply. `message` says
    /// which request and the status.
    #[error("{}{message}", page_prefix(page))]
    Http { page: Option<u64>, status: u16, message: String },
    /// No answer in time, after retries.
    #[error("{}{message}", page_prefix(page))]
    Timeout { page: Option<u64>, message: String },
    /// A connection that failed or broke, after retries where they apply.
    #[error("{}{message}", page_prefix(page))]
    Transport { page: Option<u64>, message: String },
    /// The read was cancelled.
    #[error("the read was cancelled")]
    Cancelled,
}

impl ConnectorError {
    /// Whether the Connection should become Stalled (retrying will not help
    /// until someone changes the spec or the credentials).
    pub fn is_stalled(&self) -> bool {
        matches!(
            self,
            ConnectorError::Unauthorized { .. }
                | ConnectorError::SubscriptionLapsed { .. }
                | ConnectorError::AddressNotAllowed { .. }
                | ConnectorError::Config { .. }
        )
    }

    /// The page the read failed on, when known.
    pub fn page(&self) -> Option<u64> {
        match self {
            ConnectorError::Source { page, .. }
            | ConnectorError::Http { page, .. }
            | ConnectorError::Timeout { page, .. }
            | ConnectorError::Transport { page, .. } => *page,
            ConnectorError::Unauthorized { .. }
            | ConnectorError::SubscriptionLapsed { .. }
            | ConnectorError::AddressNotAllowed { .. }
            | ConnectorError::Config { .. }
            | ConnectorError::Cancelled => None,
        }
    }

    /// The condition reason, PascalCase.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectorError::Unauthorized { .. } => "Unauthorized",
            ConnectorError::SubscriptionLapsed { .. } => "SubscriptionLapsed",
            ConnectorError::AddressNotAllowed { .. } => "AddressNotAllowed",
            ConnectorError::Config { .. } => "InvalidConfiguration",
            ConnectorError::Source { .. } => "SourceError",
            ConnectorError::Http { .. } => "HttpError",
            ConnectorError::Timeout { .. } => "Timeout",
            ConnectorError::Transport { .. } => "TransportError",
            ConnectorError::Cancelled => "Cancelled",
        }
    }

    /// The same error, placed on `page` (for the variants that carry one).
    pub fn with_page(mut self, new_page: Option<u64>) -> Self {
        match &mut self {
            ConnectorError::Source { page, .. }
            | ConnectorError::Http { page, .. }
            | ConnectorError::Timeout { page, .. }
            | ConnectorError::Transport { page, .. } => *page = new_page,
            ConnectorError::Unauthorized { .. }
            | ConnectorError::SubscriptionLapsed { .. }
            | ConnectorError::AddressNotAllowed { .. }
            | ConnectorError::Config { .. }
            | ConnectorError::Cancelled => {}
        }
        self
    }
}

/// Replaces every occurrence of each secret in `text` with `[REDACTED]`.
pub(crate) fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for secret in secrets {
        if !secret.is_empty() && text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "[REDACTED]");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_page_when_known() {
        let e = ConnectorError::Transport {
            page: Some(3),
            message: "connection closed before the end of the response".into(),
        };
        assert_eq!(e.to_string(), "page 3: connection closed before the end of the response");
        assert_eq!(e.page(), Some(3));
        assert_eq!(e.reason(), "TransportError");
        assert!(!e.is_stalled());
        let e = e.with_page(None);
        assert_eq!(e.to_string(), "connection closed before the end of the response");

        let e = ConnectorError::Config { field: SECRET_FIELD.into(), message: "key \"token\" missing".into() };
        assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"token\" missing");
        assert!(e.is_stalled());
        assert_eq!(e.reason(), "InvalidConfiguration");
        assert_eq!(e.with_page(Some(2)).page(), None);

        assert!(ConnectorError::Unauthorized { message: "x".into() }.is_stalled());
        assert_eq!(ConnectorError::Cancelled.reason(), "Cancelled");
        assert_eq!(ConnectorError::Http { page: Some(1), status: 500, message: "m".into() }.reason(), "HttpError");
        assert_eq!(ConnectorError::Timeout { page: None, message: "m".into() }.reason(), "Timeout");
        assert_eq!(ConnectorError::Source { page: None, message: "m".into() }.reason(), "SourceError");
    }

    #[test]
    fn secret_texts_are_checked_and_never_shown() {
        let mut inputs = ProviderInputs::default();
        inputs.secret.insert("token".into(), b"s3cr3t-value\n".to_vec());
        inputs.secret.insert("bad".into(), vec![0xff, 0xfe]);
        inputs.secret.insert("blank".into(), b"  \n".to_vec());
        assert_eq!(inputs.secret_text("token").unwrap().as_deref(), Some("s3cr3t-value"));
        assert_eq!(inputs.secret_text("absent").unwrap(), None);
        let e = inputs.required_secret_text("absent").unwrap_err();
        assert_eq!(e.to_string(), "spec.credentialsSecretRef: key \"absent\" missing");
        assert!(inputs.secret_text("bad").unwrap_err().to_string().contains("not valid UTF-8"));
        assert!(inputs.secret_text("blank").unwrap_err().to_string().contains("empty"));
        let debug = format!("{inputs:?}");
        assert!(debug.contains("token") && !debug.contains("s3cr3t"), "{debug}");
    }

    #[test]
    fn redact_replaces_every_secret() {
        let secrets = vec!["abc123".to_string(), String::new()];
        assert_eq!(redact("Bearer abc123 and abc123", &secrets), "Bearer [REDACTED] and [REDACTED]");
    }
}
