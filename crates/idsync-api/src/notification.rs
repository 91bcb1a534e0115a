//! `NotificationProvider` and `NotificationPolicy`: where notifications go
//! and which go where, split the way Flux's notification-controller splits
//! Provider and Alert. A provider is a receiver (an SMTP server, a webhook)
//! with its credentials; a policy routes events of some sources to
//! providers and recipients.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Category, KeyReference, MAX_INT64, NAME_PATTERN, SecretReference, URL_PATTERN};
use super::connection::ConnectionNetwork;
use super::crdgen::add_rule;

/// The annotation that makes a provider its namespace's default mail
/// provider, the one that mails a ResyncRequest's `spec.notify` addresses
/// (like StorageClass's `is-default-class`). Without it, the only SMTP
/// provider of the namespace is the default.
pub const DEFAULT_PROVIDER_ANNOTATION: &str = "idsync.dev/default-provider";

/// An e-mail address, as the schema checks it: something@domain.tld.
pub const EMAIL_PATTERN: &str = r"^[^@\s]+@[^@\s]+\.[^@\s]+$";

/// A receiver of notifications: an SMTP server or a webhook.
#[allow(clippy::duplicated_attributes)] // kube's repeated printcolumn(...) entries
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "idsync.dev",
    version = "v1alpha1",
    kind = "NotificationProvider",
    namespaced,
    doc = "Where idsync's notifications go: an SMTP server or a webhook",
    status = "NotificationProviderStatus",
    shortname = "nprov",
    category = "idsync",
    derive = "PartialEq",
    printcolumn(name = "SMTP Host", type_ = "string", json_path = ".spec.smtp.host"),
    printcolumn(name = "Webhook", type_ = "string", json_path = ".spec.webhook.url"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = provider_spec_rules)]
pub struct NotificationProviderSpec {
    /// Mail through an SMTP server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpSettings>,
    /// A JSON POST to a URL (Slack-compatible: the payload has a `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSettings>,
    /// Which addresses the receiver may be at; the same rules as a
    /// Connection's source (loopback refused unless allowed; link-local and
    /// cloud metadata addresses always refused).
    #[serde(default)]
    pub network: ConnectionNetwork,
}

fn provider_spec_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "(has(self.smtp) ? 1 : 0) + (has(self.webhook) ? 1 : 0) == 1",
        "exactly one of smtp or webhook must be set",
        None,
    );
}

/// An SMTP server and the sender's address.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = smtp_rules)]
pub struct SmtpSettings {
    /// The server's host name or IP address.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// The server's port, from 1 to 65535: usually 587 (StartTLS) or 465
    /// (ImplicitTLS).
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// How the connection is encrypted; the server's certificate is always
    /// verified.
    #[serde(default)]
    pub tls: SmtpTls,
    /// The sender's address.
    #[schemars(regex(pattern = EMAIL_PATTERN), length(max = 254))]
    pub from: String,
    /// A Secret with the keys `username` and `password`, to log in with;
    /// no login when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
    /// A PEM CA bundle the server's certificate is verified against
    /// instead of the system's roots: a key of a ConfigMap or a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaReference>,
}

fn smtp_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "self.tls != 'None' || self.host in ['127.0.0.1', 'localhost', '::1']",
        "tls None sends mail unencrypted and is allowed only to a loopback host (127.0.0.1, localhost, ::1), a local sink; use StartTLS or ImplicitTLS",
        Some(".tls"),
    );
}

/// How an SMTP connection is encrypted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer.
    #[default]
    StartTLS,
    /// TLS from the first byte (SMTPS, usually port 465).
    ImplicitTLS,
    /// No encryption: only to a loopback host (a local test sink).
    None,
}

/// Where a CA bundle is: exactly one of a ConfigMap key or a Secret key.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = ca_rules)]
pub struct CaReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyReference>,
}

fn ca_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "(has(self.configMapKeyRef) ? 1 : 0) + (has(self.secretKeyRef) ? 1 : 0) == 1",
        "exactly one of configMapKeyRef or secretKeyRef must be set",
        None,
    );
}

/// A webhook: idsync POSTs a JSON payload to `url`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSettings {
    /// `https://` anywhere, or `http://` on the loopback interface only.
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub url: String,
    /// A Secret key whose value signs each payload: the header
    /// `X-Idsync-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<KeyReference>,
}

/// What the operator observed of a provider (reserved: the delivery
/// results are on the policies that use it).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationProviderStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = super::common::conditions_list)]
    pub conditions: Vec<Condition>,
}

/// Which events of which sources go to which providers.
#[allow(clippy::duplicated_attributes)] // kube's repeated printcolumn(...) entries
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "idsync.dev",
    version = "v1alpha1",
    kind = "NotificationPolicy",
    namespaced,
    doc = "Which idsync events are sent to whom, through which providers",
    status = "NotificationPolicyStatus",
    shortname = "npol",
    category = "idsync",
    derive = "PartialEq",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Delivering",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Delivering\")].status"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Delivering\")].message"
    ),
    printcolumn(name = "Last Delivery", type_ = "date", json_path = ".status.lastDeliveryTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPolicySpec {
    /// The providers to send through, and for SMTP the recipients.
    #[schemars(length(min = 1, max = 20))]
    pub providers: Vec<ProviderRoute>,
    /// The events to send; every event when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub events: Vec<NotificationEvent>,
    /// Whose events: every Connection, profile and request when empty.
    #[serde(default)]
    pub sources: NotificationSources,
    /// Whether dry runs notify too (default false: a preview is for the one
    /// who asked for it).
    #[serde(default)]
    pub include_dry_runs: bool,
}

/// One provider of a policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRoute {
    /// A NotificationProvider in the policy's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Recipients' addresses, for an SMTP provider (ignored by a webhook).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = EMAIL_PATTERN), length(max = 254)), length(max = 50))]
    pub to: Vec<String>,
}

/// The events idsync notifies about.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotificationEvent {
    SyncStarted,
    SyncSucceeded,
    SyncFailed,
    /// The import safeguard held a sync back; it waits for a confirmation.
    SafeguardTripped,
    /// The operator stopped while a sync ran.
    SyncInterrupted,
    ProcessingSucceeded,
    ProcessingFailed,
    /// A Manual profile has changes waiting for an explicit apply.
    ChangesPending,
    /// A processing run found drift cases no run saw before: offboarded
    /// identities with access, orphan accounts, missing expected accounts.
    AccessDrift,
    /// The identity safeguard held a processing run back; it waits for a
    /// ResyncRequest with `confirmRemovals: true`.
    RemovalsHeld,
    RequestStarted,
    RequestCompleted,
}

impl NotificationEvent {
    pub const ALL: [NotificationEvent; 12] = [
        NotificationEvent::SyncStarted,
        NotificationEvent::SyncSucceeded,
        NotificationEvent::SyncFailed,
        NotificationEvent::SafeguardTripped,
        NotificationEvent::SyncInterrupted,
        NotificationEvent::ProcessingSucceeded,
        NotificationEvent::ProcessingFailed,
        NotificationEvent::ChangesPending,
        NotificationEvent::AccessDrift,
        NotificationEvent::RemovalsHeld,
        NotificationEvent::RequestStarted,
        NotificationEvent::RequestCompleted,
    ];

    /// The name as it appears in manifests, payloads and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationEvent::SyncStarted => "SyncStarted",
            NotificationEvent::SyncSucceeded => "SyncSucceeded",
            NotificationEvent::SyncFailed => "SyncFailed",
            NotificationEvent::SafeguardTripped => "SafeguardTripped",
            NotificationEvent::SyncInterrupted => "SyncInterrupted",
            NotificationEvent::ProcessingSucceeded => "ProcessingSucceeded",
            NotificationEvent::ProcessingFailed => "ProcessingFailed",
            NotificationEvent::ChangesPending => "ChangesPending",
            NotificationEvent::AccessDrift => "AccessDrift",
            NotificationEvent::RemovalsHeld => "RemovalsHeld",
            NotificationEvent::RequestStarted => "RequestStarted",
            NotificationEvent::RequestCompleted => "RequestCompleted",
        }
    }

    /// The event named `name`, as [`as_str`](Self::as_str) writes it.
    pub fn parse(name: &str) -> Option<NotificationEvent> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

impl std::fmt::Display for NotificationEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose events a policy sends. Every source when nothing is set;
/// otherwise an event matches when its Connection is named or of a named
/// category, or its profile is named. A request's events match when one
/// of its connections or profiles does.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSources {
    /// Connections by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 253), regex(pattern = NAME_PATTERN)), length(max = 100))]
    pub connections: Vec<String>,
    /// Connections of these categories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub categories: Vec<Category>,
    /// IdentityProfiles by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 253), regex(pattern = NAME_PATTERN)), length(max = 100))]
    pub profiles: Vec<String>,
}

impl NotificationSources {
    /// True when no source is named: the policy takes every source.
    pub fn is_all(&self) -> bool {
        self.connections.is_empty() && self.categories.is_empty() && self.profiles.is_empty()
    }
}

/// The condition of a policy whose deliveries go through (True) or fail
/// (False, reason `DeliveryFailing`).
pub const DELIVERING: &str = "Delivering";

/// What the operator observed of a policy's deliveries. Counts are int64s
/// from 0 to the largest int64.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationPolicyStatus {
    /// `Ready` (every provider it names exists) and `Delivering` (False
    /// with reason `DeliveryFailing` while deliveries fail).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = super::common::conditions_list)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub observed_generation: Option<i64>,
    /// When a notification of this policy was last delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_time: Option<Time>,
    /// Notifications delivered.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub delivered: u64,
    /// Delivery attempts that failed (each is retried, with backoff, for a
    /// day).
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub failed_deliveries: u64,
    /// Notifications given up on after a day of failed attempts.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub abandoned: u64,
    /// When a delivery last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// Why the last delivery failed, in words (never a credential).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_failure_message: String,
}
