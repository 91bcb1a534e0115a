//! `Connection`: one connected system and how to sync it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Category, KeyReference, MAX_INT64, SecretReference, SyncCounts, SyncMode, URL_PATTERN};
use super::crdgen::add_rule;

/// One connected system (identity provider, HR system, infrastructure,
/// version control, MDM, security training…) and how and when to sync it.
///
/// Checked by the schema: types, enums, ranges, the provider union and the
/// credentials rule. Checked by the controller and reported as a `Stalled`
/// condition: that the credentials Secret exists and holds the keys the
/// provider needs, that every cron expression parses, and that `timeZone` is
/// a known IANA zone.
#[allow(clippy::duplicated_attributes)] // kube's repeated printcolumn(...) entries
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "idsync.dev",
    version = "v1alpha1",
    kind = "Connection",
    namespaced,
    doc = "A connected system and how to sync it",
    status = "ConnectionStatus",
    shortname = "conn",
    category = "idsync",
    derive = "PartialEq",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider.type"),
    printcolumn(name = "Category", type_ = "string", json_path = ".spec.category"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].message"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(
        name = "Syncing",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Syncing\")].status",
        priority = 1
    ),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.lastSyncTime"),
    // A future time: as a date column kubectl would print "<invalid>" for it.
    printcolumn(name = "Next Sync", type_ = "string", json_path = ".status.nextSyncTime"),
    printcolumn(name = "Accounts", type_ = "integer", json_path = ".status.accountCount"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = connection_spec_rules)]
pub struct ConnectionSpec {
    /// The system to connect to: `type` names the provider and the field of
    /// the same name holds its settings.
    #[schemars(with = "ProviderFields")]
    pub provider: Provider,

    /// What kind of system this is; a ResyncRequest can target a category.
    pub category: Category,

    /// The Secret (same namespace) holding the provider's credentials.
    /// Required for every provider except `csv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,

    /// When scheduled syncs run. Default: once a day at 03:00 UTC.
    #[serde(default)]
    pub schedule: ConnectionSchedule,

    /// Stops scheduled and requested-at syncs; ResyncRequests that name the
    /// connection still run.
    #[serde(default)]
    pub suspend: bool,

    /// Holds back a sync that would delete too many accounts.
    #[serde(default)]
    pub import_safeguard: ImportSafeguard,

    /// Accounts asked for per page, from 1 to 10000 (default 500): a page
    /// is what one sync stages in the store at once. Servers may answer with
    /// fewer than asked (SCIM servers and Active Directory cap their pages),
    /// and the sync follows their pages.
    #[serde(default = "default_page_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub page_size: u32,

    /// Timeout of one request to the provider, in seconds, from 1 to 600
    /// (ten minutes; default 30). A slower answer is retried.
    #[serde(default = "default_request_timeout_seconds")]
    #[schemars(range(min = 1, max = 600))]
    pub request_timeout_seconds: u32,

    /// Most requests per second sent to the provider, from 1 to 1000; unset
    /// means no limit beyond the provider's own 429 answers, which are always
    /// honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub requests_per_second: Option<u32>,

    /// For providers whose deltas carry no deletions (SCIM, LDAP without
    /// content synchronisation): hours between the full passes that find
    /// deleted accounts, from 1 to 720 (30 days; default 24).
    #[serde(default = "default_full_sync_interval_hours")]
    #[schemars(range(min = 1, max = 720))]
    pub full_sync_interval_hours: u32,

    /// The longest a sync may run, in minutes, from 1 to 1440 (a day;
    /// default 120). One that runs longer (a source that pages forever,
    /// hangs between pages) is stopped, applies nothing, fails with reason
    /// DeadlineExceeded and frees the Connection for the next sync.
    #[serde(default = "default_max_sync_duration_minutes")]
    #[schemars(range(min = 1, max = 1440))]
    pub max_sync_duration_minutes: u32,

    /// Which addresses the provider may connect to. By default none on the
    /// operator's own host or on the link-local network (see
    /// `ConnectionNetwork`).
    #[serde(default)]
    pub network: ConnectionNetwork,
}

fn default_page_size() -> u32 {
    500
}
fn default_request_timeout_seconds() -> u32 {
    30
}
fn default_full_sync_interval_hours() -> u32 {
    24
}
fn default_max_sync_duration_minutes() -> u32 {
    120
}

fn connection_spec_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "self.provider.type == 'csv' || has(self.credentialsSecretRef)",
        "credentialsSecretRef is required for this provider type",
        Some(".credentialsSecretRef"),
    );
}

/// When a Connection syncs on its own.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::common::cron_list_rules)]
pub struct ConnectionSchedule {
    /// Standard five-field cron expressions (minute hour day-of-month month
    /// day-of-week); a sync runs at each.
    #[schemars(inner(length(min = 1, max = 128)), length(max = 16))]
    pub cron: Vec<String>,
    /// IANA time zone the cron expressions are read in, e.g. `Europe/Berlin`.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

impl Default for ConnectionSchedule {
    fn default() -> Self {
        ConnectionSchedule { cron: vec!["0 3 * * *".to_string()], time_zone: default_time_zone() }
    }
}

/// Which addresses a Connection's source may be at.
///
/// Every connection a provider opens (a csv `url`, a scim `baseUrl`, an
/// ldap `url`, and every redirect they answer with) is checked on the
/// addresses its host name resolves to when it connects, so a name that
/// resolves elsewhere later (DNS rebinding) is caught too:
///
/// - loopback (127.0.0.0/8, ::1) and unspecified (0.0.0.0, ::) addresses
///   are the operator's own host, with its metrics and health ports: refused
///   unless `allowLoopback` is true;
/// - link-local addresses (169.254.0.0/16, fe80::/10), where clouds serve
///   instance metadata and credentials (169.254.169.254,
///   `metadata.google.internal`), are always refused;
/// - private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7)
///   are allowed: on-premises directories and HR systems live there.
///
/// An IPv4-mapped IPv6 address counts as its IPv4 address. A refused
/// address stalls the Connection with reason `AddressNotAllowed`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionNetwork {
    /// Lets the source be on the operator's own host (loopback), for a
    /// source that really runs there: a sidecar, or `idsync dev` on a
    /// workstation. Default false.
    #[serde(default)]
    pub allow_loopback: bool,
}

/// The import safeguard: a sync that would delete more accounts than this
/// applies nothing and waits for a ResyncRequest with `confirmDeletes: true`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImportSafeguard {
    /// Largest share of the connection's accounts, in percent, one sync may
    /// delete, from 0 to 100 (default 20). 100 turns the percentage check off.
    #[serde(default = "default_max_delete_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_delete_percent: u32,
    /// Largest number of accounts one sync may delete, whatever the share,
    /// from 0 to 10000000 (ten million, more accounts than any one system
    /// idsync syncs holds); unset means no count limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_DELETE_COUNT))]
    pub max_delete_count: Option<u64>,
}

/// The largest `importSafeguard.maxDeleteCount`.
pub const MAX_DELETE_COUNT: u64 = 10_000_000;

fn default_max_delete_percent() -> u32 {
    20
}

impl Default for ImportSafeguard {
    fn default() -> Self {
        ImportSafeguard { max_delete_percent: default_max_delete_percent(), max_delete_count: None }
    }
}

/// The provider of a Connection and its settings.
///
/// On the wire this is a discriminated union, as the Kubernetes API
/// conventions describe them: `type` names the provider and exactly the field
/// of that name is set, e.g. `{type: scim, scim: {baseUrl: …}}`. The
/// discriminator is what `kubectl get connections` prints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(try_from = "ProviderFields", into = "ProviderFields")]
pub enum Provider {
    Csv(CsvSettings),
    Scim(ScimSettings),
    Ldap(LdapSettings),
    MsGraph(MsGraphSettings),
    Okta(OktaSettings),
    GitHub(GitHubSettings),
}

impl Provider {
    pub fn provider_type(&self) -> ProviderType {
        match self {
            Provider::Csv(_) => ProviderType::Csv,
            Provider::Scim(_) => ProviderType::Scim,
            Provider::Ldap(_) => ProviderType::Ldap,
            Provider::MsGraph(_) => ProviderType::MsGraph,
            Provider::Okta(_) => ProviderType::Okta,
            Provider::GitHub(_) => ProviderType::GitHub,
        }
    }
}

/// The provider names.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// A CSV export (HR systems), from a ConfigMap, a Secret or a URL.
    Csv,
    /// A SCIM 2.0 service provider (RFC 7643/7644).
    Scim,
    /// An LDAP directory: OpenLDAP or Active Directory.
    Ldap,
    /// Microsoft Entra ID through Microsoft Graph.
    #[serde(rename = "msgraph")]
    MsGraph,
    /// An Okta organisation.
    Okta,
    /// A GitHub organisation's members.
    #[serde(rename = "github")]
    GitHub,
}

impl ProviderType {
    pub const ALL: [ProviderType; 6] = [
        ProviderType::Csv,
        ProviderType::Scim,
        ProviderType::Ldap,
        ProviderType::MsGraph,
        ProviderType::Okta,
        ProviderType::GitHub,
    ];

    /// The name as it appears in manifests (and as the settings field).
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderType::Csv => "csv",
            ProviderType::Scim => "scim",
            ProviderType::Ldap => "ldap",
            ProviderType::MsGraph => "msgraph",
            ProviderType::Okta => "okta",
            ProviderType::GitHub => "github",
        }
    }
}

impl std::fmt::Display for ProviderType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire form of [`Provider`].
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[schemars(transform = provider_union_rules)]
pub struct ProviderFields {
    /// Which provider; the field of the same name holds its settings.
    #[serde(rename = "type")]
    pub type_: ProviderType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scim: Option<ScimSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<LdapSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgraph: Option<MsGraphSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub okta: Option<OktaSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GitHubSettings>,
}

fn provider_union_rules(schema: &mut schemars::Schema) {
    for provider in ProviderType::ALL {
        let name = provider.as_str();
        add_rule(
            schema,
            &format!("(self.type == '{name}') == has(self.{name})"),
            &format!("{name} settings must be set when type is {name}, and only then"),
            Some(&format!(".{name}")),
        );
    }
}

impl TryFrom<ProviderFields> for Provider {
    type Error = String;

    fn try_from(fields: ProviderFields) -> Result<Self, Self::Error> {
        let ProviderFields { type_, csv, scim, ldap, msgraph, okta, github } = fields;
        let set: Vec<&str> = [
            csv.is_some().then_some("csv"),
            scim.is_some().then_some("scim"),
            ldap.is_some().then_some("ldap"),
            msgraph.is_some().then_some("msgraph"),
            okta.is_some().then_some("okta"),
            github.is_some().then_some("github"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let provider = match type_ {
            ProviderType::Csv => csv.map(Provider::Csv),
            ProviderType::Scim => scim.map(Provider::Scim),
            ProviderType::Ldap => ldap.map(Provider::Ldap),
            ProviderType::MsGraph => msgraph.map(Provider::MsGraph),
            ProviderType::Okta => okta.map(Provider::Okta),
            ProviderType::GitHub => github.map(Provider::GitHub),
        };
        match provider {
            Some(provider) if set.len() == 1 => Ok(provider),
            Some(_) => Err(format!(
                "provider.type is {type_} but settings are given for {}: set only provider.{type_}",
                set.join(", ")
            )),
            None => Err(format!("provider.type is {type_} but provider.{type_} is not set")),
        }
    }
}

impl From<Provider> for ProviderFields {
    fn from(provider: Provider) -> Self {
        let mut fields = ProviderFields {
            type_: provider.provider_type(),
            csv: None,
            scim: None,
            ldap: None,
            msgraph: None,
            okta: None,
            github: None,
        };
        match provider {
            Provider::Csv(s) => fields.csv = Some(s),
            Provider::Scim(s) => fields.scim = Some(s),
            Provider::Ldap(s) => fields.ldap = Some(s),
            Provider::MsGraph(s) => fields.msgraph = Some(s),
            Provider::Okta(s) => fields.okta = Some(s),
            Provider::GitHub(s) => fields.github = Some(s),
        }
        fields
    }
}

/// A CSV export, typically from an HR system. The first row names the
/// columns. A malformed row fails the whole sync with its line number.
///
/// A sync never takes an export that arrived cut short for a smaller one
/// (which would delete the accounts it lacks) when there is a way to tell:
/// a URL response that ends before its `Content-Length`, or before the last
/// chunk of a chunked body, fails the read, and so does a row cut before its
/// last column (it has too few fields). What idsync cannot tell on its own:
/// a body sent without a length (HTTP/1.0, or a response closed to end it)
/// and cut at a line boundary looks exactly like a shorter export, and a row
/// cut inside its last column like a shorter value. `requireTrailingNewline`
/// catches the second; `rowCountHeader` catches both, when the source states
/// its row count. The import safeguard bounds what any short read deletes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = csv_rules)]
pub struct CsvSettings {
    /// Where the CSV comes from.
    pub source: CsvSource,
    /// The column holding each row's immutable id (e.g. the employee id).
    #[schemars(length(min = 1, max = 256))]
    pub id_column: String,
    /// Which columns fill the account fields. Every column but the id
    /// column is also kept as an attribute under its own name, with its raw
    /// value, so identity mappings can read any of them.
    #[serde(default)]
    pub columns: CsvColumns,
    /// The field separator: one character.
    #[serde(default = "default_delimiter")]
    #[schemars(length(min = 1, max = 1))]
    pub delimiter: String,
    /// Separator of several groups within the groups column.
    #[serde(default = "default_groups_separator")]
    #[schemars(length(min = 1, max = 8))]
    pub groups_separator: String,
    /// Fails a read whose export does not end with a line break: the last
    /// row may have been cut inside its last column. Most exporters end
    /// every row with one; default false, since a ConfigMap written with
    /// `|-` (or from a file without a final newline) does not.
    #[serde(default)]
    pub require_trailing_newline: bool,
    /// `url` sources only: the response header in which the source states
    /// how many rows (after the header line, blank lines not counted) the
    /// export holds, e.g. `X-Total-Count`. A read that finds another number
    /// of rows, or a response without the header, fails instead of
    /// deleting the accounts of the missing rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"), length(min = 1, max = 256))]
    pub row_count_header: Option<String>,
}

fn csv_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "!has(self.rowCountHeader) || has(self.source.url)",
        "rowCountHeader applies to url sources only",
        Some(".rowCountHeader"),
    );
}

fn default_delimiter() -> String {
    ",".to_string()
}
fn default_groups_separator() -> String {
    ";".to_string()
}

/// Exactly one of a ConfigMap key, a Secret key or a URL.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = csv_source_rules)]
pub struct CsvSource {
    /// A key of a ConfigMap in the Connection's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyReference>,
    /// A key of a Secret in the Connection's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyReference>,
    /// An `https://` URL (plain `http://` only on loopback, which also
    /// needs `spec.network.allowLoopback`). A bearer token, if any, comes
    /// from the `token` key of the credentials Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub url: Option<String>,
}

fn csv_source_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "(has(self.configMapKeyRef) ? 1 : 0) + (has(self.secretKeyRef) ? 1 : 0) + (has(self.url) ? 1 : 0) == 1",
        "exactly one of configMapKeyRef, secretKeyRef or url must be set",
        None,
    );
}

/// Columns that fill an account's fields; unset ones stay empty.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CsvColumns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// A column whose value says whether the account is enabled: `true`,
    /// `yes`, `1`, `active` and `enabled` (any case) mean enabled, anything
    /// else disabled. Without it every account is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<String>,
    /// A column listing the account's groups, split on `groupsSeparator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<String>,
}

/// A SCIM 2.0 service provider. Credentials: the Secret's `token` key
/// (bearer) or its `username` and `password` keys (basic).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScimSettings {
    /// The SCIM base URL; `/Users`, `/Groups` and `/ServiceProviderConfig`
    /// are read below it.
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub base_url: String,
    /// How to authenticate.
    #[serde(default)]
    pub auth: HttpAuth,
    /// An optional SCIM filter applied to every read of `/Users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub user_filter: Option<String>,
}

/// HTTP authentication schemes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpAuth {
    /// `Authorization: Bearer <token>` from the Secret's `token` key.
    #[default]
    Bearer,
    /// HTTP basic from the Secret's `username` and `password` keys.
    Basic,
}

/// An LDAP directory. Credentials: the Secret's `password` key (with
/// `bindDn`), and optionally `ca.crt` to trust a private CA.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = ldap_rules)]
pub struct LdapSettings {
    /// `ldaps://host:636`, or `ldap://host:389` with `startTls: true`
    /// (plain `ldap://` without StartTLS only on loopback).
    #[schemars(regex(pattern = r"^ldaps?://\S+$"), length(max = 2048))]
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(default)]
    pub start_tls: bool,
    /// Turns certificate verification off. Only for tests; never in
    /// production: anyone on the path could read the bind password. While it
    /// is set, the Connection's `TLSVerified` condition is False and a
    /// Warning Event says so when it is turned on.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// The DN to bind as (simple bind); the password is in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub bind_dn: Option<String>,
    /// Where users are searched.
    #[schemars(length(min = 1, max = 1024))]
    pub base_dn: String,
    /// Filter selecting user entries; the flavour's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub user_filter: Option<String>,
    /// Where groups are searched, when membership comes from groups' `member`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub group_base_dn: Option<String>,
    /// Filter selecting group entries; the flavour's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub group_filter: Option<String>,
    /// Chooses the defaults for ids, disabled state and deltas.
    #[serde(default)]
    pub flavour: LdapFlavour,
    /// Attribute names to read account fields from; unset ones use the
    /// flavour's defaults.
    #[serde(default)]
    pub attributes: LdapAttributes,
}

fn ldap_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "self.url.startsWith('ldaps://') || self.startTls || self.url.matches('^ldap://(127\\\\.0\\\\.0\\\\.1|localhost|\\\\[::1\\\\])(:[0-9]+)?/?$')",
        "a plain ldap:// URL needs startTls: true unless it is on loopback",
        Some(".url"),
    );
    add_rule(
        schema,
        "!(self.startTls && self.url.startsWith('ldaps://'))",
        "startTls applies to ldap:// URLs only; ldaps:// is already encrypted",
        Some(".startTls"),
    );
}

/// The LDAP server family.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LdapFlavour {
    /// Ids from `entryUUID`, deltas by RFC 4533 content synchronisation
    /// where the server offers it, else by `modifyTimestamp`.
    #[default]
    OpenLdap,
    /// Ids from `objectGUID`, disabled from `userAccountControl`, deltas
    /// by `uSNChanged`.
    ActiveDirectory,
}

/// LDAP attribute names for account fields.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LdapAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Additional attributes kept on each account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub extra: Vec<String>,
}

/// Microsoft Entra ID through Microsoft Graph: users (and groups) read with
/// delta queries (`/users/delta`, `/groups/delta`), so a delta sync reads
/// only what changed, deletions included.
///
/// Credentials (OAuth 2.0 client credentials against
/// `<loginEndpoint>/<tenantId>/oauth2/v2.0/token`), from the Secret:
/// - `authentication: clientSecret` (default): the `clientSecret` key;
/// - `authentication: certificate`: the `privateKey` key (PEM, PKCS#8
///   `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`, RSA) and the
///   `certificateThumbprint` key (the certificate's SHA-1 thumbprint as the
///   portal shows it, hex, or already base64url: the assertion's `x5t`).
///
/// The app registration needs the application permissions User.Read.All
/// (and GroupMember.Read.All with `includeGroups`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MsGraphSettings {
    /// The directory (tenant) id or a verified domain.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9.-]*$"), length(min = 1, max = 256))]
    pub tenant_id: String,
    /// The application (client) id of the app registration.
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    /// How the app proves who it is: `clientSecret` or `certificate`.
    #[serde(default)]
    pub authentication: MsGraphAuthentication,
    /// Graph endpoint; national clouds use their own (e.g.
    /// `https://graph.microsoft.us`, `https://microsoftgraph.chinacloudapi.cn`).
    #[serde(default = "default_graph_endpoint")]
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub graph_endpoint: String,
    /// Token endpoint host (the authority); national clouds use their own
    /// (e.g. `https://login.microsoftonline.us`).
    #[serde(default = "default_login_endpoint")]
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub login_endpoint: String,
    /// Read group memberships too (`/groups/delta`): an account's groups
    /// are the display names of the groups it is a direct member of.
    #[serde(default = "default_true")]
    pub include_groups: bool,
    /// Leave out guests (`userType` Guest): only the tenant's members are
    /// synced. Applied by idsync, because Graph's `/users/delta` filters by
    /// id only; a member who becomes a guest is deleted in the next delta.
    #[serde(default)]
    pub exclude_guests: bool,
    /// Sync only users with at least one licence (`assignedLicenses` not
    /// empty); a user whose last licence is removed is deleted in the next
    /// delta.
    #[serde(default)]
    pub licensed_only: bool,
    /// More user properties to read (Graph property names, e.g.
    /// `officeLocation`, `onPremisesSamAccountName`), kept as attributes of
    /// the same name. Changing them makes the next sync a full one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[A-Za-z][A-Za-z0-9_]*$"), length(min = 1, max = 128)), length(max = 32))]
    pub extra_attributes: Vec<String>,
}

/// How an msgraph Connection authenticates to the token endpoint.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum MsGraphAuthentication {
    /// A client secret: the Secret's `clientSecret` key.
    #[default]
    ClientSecret,
    /// A certificate: a client assertion (a JWT signed RS256 with the
    /// Secret's `privateKey`, its `x5t` the `certificateThumbprint` key).
    Certificate,
}

fn default_graph_endpoint() -> String {
    "https://graph.microsoft.com".to_string()
}
fn default_login_endpoint() -> String {
    "https://login.microsoftonline.com".to_string()
}
fn default_true() -> bool {
    true
}

/// An Okta organisation. Credentials, as `auth` says: the Secret's
/// `apiToken` key (an SSWS API token), or its `privateKey` key (a PKCS#8 PEM
/// RSA key) for an OAuth 2.0 service app that signs its client assertion.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = okta_rules)]
pub struct OktaSettings {
    /// The org URL, e.g. `https://acme.okta.com`.
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub org_url: String,
    /// An optional Okta `search` expression limiting the users read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub search: Option<String>,
    /// Read group memberships too.
    #[serde(default = "default_true")]
    pub include_groups: bool,
    /// How to authenticate.
    #[serde(default)]
    pub auth: OktaAuth,
    /// The service app's client id (`privateKeyJwt` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub client_id: Option<String>,
    /// The `kid` of the service app's public key, sent in the assertion's
    /// header (`privateKeyJwt` only; optional when the app has one key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_id: Option<String>,
}

fn okta_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "(has(self.auth) && self.auth == 'privateKeyJwt') == has(self.clientId)",
        "clientId must be set when auth is privateKeyJwt, and only then",
        Some(".clientId"),
    );
    add_rule(
        schema,
        "!has(self.keyId) || (has(self.auth) && self.auth == 'privateKeyJwt')",
        "keyId applies to auth privateKeyJwt only",
        Some(".keyId"),
    );
}

/// How the okta provider authenticates.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OktaAuth {
    /// `Authorization: SSWS <token>` from the Secret's `apiToken` key.
    #[default]
    ApiToken,
    /// OAuth 2.0 client credentials: a client assertion signed (RS256) with
    /// the Secret's `privateKey`, exchanged at `{orgUrl}/oauth2/v1/token` for
    /// an access token with the scopes `okta.users.read okta.groups.read`.
    PrivateKeyJwt,
}

/// A GitHub organisation's members (github.com or GitHub Enterprise
/// Server). Credentials, from the Secret: `token` (a personal access or
/// fine-grained token), or a GitHub App installation's `appId`,
/// `installationId` and `privateKey` (the PEM GitHub issues).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GitHubSettings {
    /// The organisation's login.
    #[schemars(regex(pattern = r"^[A-Za-z0-9](-?[A-Za-z0-9])*$"), length(min = 1, max = 39))]
    pub organization: String,
    /// The REST API root; GitHub Enterprise Server uses its own
    /// (`https://HOST/api/v3`, GraphQL then at `https://HOST/api/graphql`).
    #[serde(default = "default_github_api_url")]
    #[schemars(regex(pattern = URL_PATTERN))]
    pub api_url: String,
    /// Read teams as groups (by slug).
    #[serde(default = "default_true")]
    pub include_teams: bool,
    /// Include outside collaborators as well as members (role
    /// `outside_collaborator`).
    #[serde(default)]
    pub include_outside_collaborators: bool,
}

fn default_github_api_url() -> String {
    "https://api.github.com".to_string()
}

/// The condition that is False while a Connection's certificate
/// verification is off (`insecureSkipTlsVerify`); absent otherwise.
pub const TLS_VERIFIED: &str = "TLSVerified";

/// What the operator observed of a Connection. Its counts and generations
/// are int64s from 0 to the largest int64.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// `Ready`, `Syncing` and `Stalled`; and `TLSVerified`, False while an
    /// ldap Connection has `insecureSkipTlsVerify` (absent otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = super::common::conditions_list)]
    pub conditions: Vec<Condition>,
    /// The generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub observed_generation: Option<i64>,
    /// When the last sync finished, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// When the last successful sync finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_sync_time: Option<Time>,
    /// When the schedule runs the next sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sync_time: Option<Time>,
    /// The sync running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_sync: Option<RunningSync>,
    /// What the last sync did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<SyncResult>,
    /// Accounts of this connection in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub account_count: Option<u64>,
    /// When the stored delta cursor was last advanced (its age).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_time: Option<Time>,
    /// The last `idsync.dev/requested-at` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_requested_at: Option<String>,
}

/// The sync holding a Connection's in-progress guard.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunningSync {
    /// The operator instance running it.
    pub holder: String,
    /// The ResyncRequest it serves, or none for a scheduled sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    pub mode: SyncMode,
    pub started: Time,
}

/// How a sync ended.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// All changes and the new cursor were committed.
    Succeeded,
    /// The source or the store failed; nothing was committed.
    Failed,
    /// The operator stopped mid-sync; nothing was committed.
    Interrupted,
    /// A ResyncRequest with `concurrencyPolicy: Replace` cancelled it.
    Cancelled,
    /// The import safeguard held it back; nothing was committed.
    SafeguardTripped,
    /// A dry run: everything computed, nothing committed.
    DryRun,
}

/// The outcome of one sync.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncResult {
    /// The mode that actually ran (a Delta may have run as Full, and why is
    /// in `message`).
    pub mode: SyncMode,
    #[serde(flatten)]
    pub counts: SyncCounts,
    /// Wall time of the sync in milliseconds.
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub duration_milliseconds: u64,
    pub outcome: SyncOutcome,
    /// A sentence for a person.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Counts per provider-specific detail (pages read, retries…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = super::common::count_map)]
    pub details: BTreeMap<String, u64>,
}
