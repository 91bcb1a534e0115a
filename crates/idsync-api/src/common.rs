//! Types shared by several resources.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A URL idsync may call: `https://` anywhere, or plain `http://` only on the
/// loopback interface (a local fixture or sidecar), so credentials never
/// travel unencrypted over a network.
pub const URL_PATTERN: &str = r"^(https://[^\s/]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?)(/\S*)?$";

/// A Kubernetes object name (RFC 1123 subdomain).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

/// The bound of every count and generation in a status: the largest int64,
/// what Kubernetes and the store hold. Status is written by the operator,
/// never by a person, so this is the type's bound rather than a policy; it is
/// in the schema so that every integer of every CRD has a maximum (a check in
/// `crdgen` fails on one that does not).
pub const MAX_INT64: i64 = i64::MAX;

/// The kind of system a Connection talks to. Categories let a ResyncRequest
/// resync "every provider of one type" at once.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Identity provider (Okta, Entra ID, Google Workspace…).
    IdP,
    /// HR information system, usually the authoritative source of people.
    #[serde(rename = "HRIS")]
    Hris,
    /// Cloud and infrastructure accounts.
    Infrastructure,
    /// Source control (GitHub, GitLab…).
    VersionControl,
    /// Mobile device management.
    #[serde(rename = "MDM")]
    Mdm,
    /// Security awareness training.
    SecurityTraining,
    /// Monitoring and logging platforms.
    Observability,
    /// Vulnerability and code scanners.
    VulnerabilityScanning,
    /// Background check services.
    BackgroundCheck,
    /// Anything else.
    Other,
}

impl Category {
    /// The name as it appears in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::IdP => "IdP",
            Category::Hris => "HRIS",
            Category::Infrastructure => "Infrastructure",
            Category::VersionControl => "VersionControl",
            Category::Mdm => "MDM",
            Category::SecurityTraining => "SecurityTraining",
            Category::Observability => "Observability",
            Category::VulnerabilityScanning => "VulnerabilityScanning",
            Category::BackgroundCheck => "BackgroundCheck",
            Category::Other => "Other",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of a source a sync reads.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SyncMode {
    /// Only what changed since the stored cursor; a provider without deltas
    /// (or without a cursor yet) reads everything.
    #[default]
    Delta,
    /// Everything, and a new cursor ("force sync").
    Full,
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::Delta => "Delta",
            SyncMode::Full => "Full",
        })
    }
}

/// What a ResyncRequest does for a target that is already syncing.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConcurrencyPolicy {
    /// The target is rejected, naming the sync that holds it.
    Forbid,
    /// The target waits until the running sync has finished, then runs.
    #[default]
    Wait,
    /// The running sync is cancelled (none of its changes are applied) and
    /// this one runs instead.
    Replace,
}

/// A Secret in the same namespace as the object that references it. Secrets
/// of other namespaces can never be referenced, so a namespace's users cannot
/// read another team's credentials through idsync.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
}

/// A key of a ConfigMap or Secret in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct KeyReference {
    /// Name of the ConfigMap or Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// The key within it.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What one sync did to a connection's accounts. Each count is an int64
/// from 0 to the largest int64.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyncCounts {
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub created: u64,
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub updated: u64,
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub deleted: u64,
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub unchanged: u64,
}

/// Schema of a map of counts (`{name: count}`): each value from 0 to
/// [`MAX_INT64`]. schemars' `inner(...)` reaches list items only, not map
/// values.
pub(crate) fn count_map(schema: &mut schemars::Schema) {
    bound(schema.get_mut("additionalProperties"), 0, MAX_INT64);
}

/// Schema of a list of `metav1.Condition`s: their `observedGeneration`
/// from 0 (as Kubernetes' own schema says) to [`MAX_INT64`]. The type comes
/// from k8s-openapi, so its bounds are added here.
pub(crate) fn conditions_list(schema: &mut schemars::Schema) {
    bound(schema.pointer_mut("/items/properties/observedGeneration"), 0, MAX_INT64);
}

fn bound(schema: Option<&mut serde_json::Value>, min: i64, max: i64) {
    if let Some(serde_json::Value::Object(schema)) = schema {
        schema.insert("minimum".into(), min.into());
        schema.insert("maximum".into(), max.into());
    }
}

/// Schema for a list of cron expressions: at least one, each non-empty.
/// Cron syntax itself is checked by the controller (reported as `Stalled`).
pub(crate) fn cron_list_rules(schema: &mut schemars::Schema) {
    crate::crdgen::add_rule(
        schema,
        "self.cron.size() > 0",
        "a schedule needs at least one cron expression",
        Some(".cron"),
    );
}
