//! `ResyncRequest`: one ad-hoc run, created by a person or a pipeline.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Category, ConcurrencyPolicy, MAX_INT64, NAME_PATTERN, SyncCounts, SyncMode};
use super::crdgen::add_rule;

/// An ad-hoc sync ("resync personnel", "force sync") and/or identity
/// processing run. The spec cannot change once created: create a new
/// request instead. Finished requests are deleted after
/// `ttlSecondsAfterFinished`, like Jobs.
#[allow(clippy::duplicated_attributes)] // kube's repeated printcolumn(...) entries
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "idsync.dev",
    version = "v1alpha1",
    kind = "ResyncRequest",
    namespaced,
    doc = "An ad-hoc sync or identity processing run",
    status = "ResyncRequestStatus",
    shortname = "rr",
    shortname = "resync",
    category = "idsync",
    derive = "PartialEq",
    printcolumn(name = "Target", type_ = "string", json_path = ".status.target"),
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.scope"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Dry Run", type_ = "boolean", json_path = ".spec.dryRun"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Requested By", type_ = "string", json_path = ".spec.requestedBy", priority = 1),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Complete\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Complete\")].message",
        priority = 1
    ),
    printcolumn(name = "Started", type_ = "date", json_path = ".status.startTime"),
    printcolumn(name = "Completed", type_ = "date", json_path = ".status.completionTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = resync_spec_rules)]
pub struct ResyncRequestSpec {
    /// Which connections (or, for identity processing alone, which profiles).
    pub target: ResyncTarget,

    /// Delta reads what changed since the stored cursor; Full reads
    /// everything and starts a new cursor.
    #[serde(default)]
    pub mode: SyncMode,

    /// Sync accounts, process identities, or both (accounts first, then the
    /// profiles that use the synced connections).
    #[serde(default)]
    pub scope: Scope,

    /// Identity ids to process; all of the profile's identities when empty.
    /// Needs a scope that includes Identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 256)), length(max = 1000))]
    pub identities: Vec<String>,

    /// Compute and report everything, commit nothing, leave cursors alone.
    #[serde(default)]
    pub dry_run: bool,

    /// Apply a sync that the import safeguard held back. Needs named
    /// connections, so a confirmation is always about specific systems.
    #[serde(default)]
    pub confirm_deletes: bool,

    /// Apply a processing run that the identity safeguard held back
    /// (scope Identities, target.profiles): the
    /// removals and offboardings it counted go through. An admin action.
    #[serde(default)]
    pub confirm_removals: bool,

    /// Apply the pending spec changes of the named Manual profiles (scope
    /// Identities, target.profiles, no identities). Without it a request
    /// processes a Manual profile with the mappings it has applied. Like
    /// `confirmDeletes`, an admin's action: the chart's admission policy
    /// refuses it from users without the `confirm` verb.
    #[serde(default)]
    pub apply_pending_changes: bool,

    /// The user who asked, as the API server knows them (`kubectl auth
    /// whoami`). The chart's admission policy refuses a value other than
    /// the creating user's name, and requires it with `confirmDeletes`,
    /// `confirmRemovals` or `applyPendingChanges`; it is shown in status, Events and
    /// notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub requested_by: Option<String>,

    /// What to do for a target that is already syncing.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// E-mail addresses told when the request starts and completes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), length(max = 254)), length(max = 50))]
    pub notify: Vec<String>,

    /// Seconds after completion at which the request deletes itself, from 0
    /// to 31536000 (365 days); kept until deleted by hand when unset. Its
    /// history outlives it in the store's run history and in Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_TTL_SECONDS_AFTER_FINISHED))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// The largest `ttlSecondsAfterFinished`: a year, in seconds.
pub const MAX_TTL_SECONDS_AFTER_FINISHED: i64 = 365 * 24 * 3600;

fn resync_spec_rules(schema: &mut schemars::Schema) {
    add_rule(schema, "self == oldSelf", "spec is immutable: create a new ResyncRequest instead", None);
    add_rule(
        schema,
        "!has(self.identities) || size(self.identities) == 0 || self.scope != 'Accounts'",
        "identities needs scope Identities or AccountsAndIdentities",
        Some(".identities"),
    );
    add_rule(
        schema,
        "!self.confirmDeletes || has(self.target.connections)",
        "confirmDeletes needs target.connections: name the connections whose deletions you confirm",
        Some(".confirmDeletes"),
    );
    add_rule(
        schema,
        "!self.confirmRemovals || (has(self.target.profiles) && self.scope == 'Identities')",
        "confirmRemovals needs target.profiles and scope Identities: name the profiles whose identity removals you confirm",
        Some(".confirmRemovals"),
    );
    add_rule(
        schema,
        "!self.applyPendingChanges || (has(self.target.profiles) && self.scope == 'Identities' && (!has(self.identities) || size(self.identities) == 0))",
        "applyPendingChanges needs target.profiles, scope Identities and no identities: a profile's changes apply to all its identities at once",
        Some(".applyPendingChanges"),
    );
    add_rule(
        schema,
        "!has(self.target.profiles) || self.scope == 'Identities'",
        "target.profiles needs scope Identities; to sync accounts, target connections",
        Some(".target.profiles"),
    );
}

/// Exactly one of `all`, `category`, `connections`, `selector` or
/// `profiles`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = resync_target_rules)]
pub struct ResyncTarget {
    /// Every Connection in the namespace ("resync personnel").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Every Connection of one category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    /// Connections by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        inner(length(min = 1, max = 253), regex(pattern = NAME_PATTERN)),
        length(min = 1, max = 100)
    )]
    pub connections: Option<Vec<String>>,
    /// Connections whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// IdentityProfiles by name, for identity processing without a sync
    /// (scope Identities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        inner(length(min = 1, max = 253), regex(pattern = NAME_PATTERN)),
        length(min = 1, max = 100)
    )]
    pub profiles: Option<Vec<String>>,
}

fn resync_target_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "(has(self.all) ? 1 : 0) + (has(self.category) ? 1 : 0) + (has(self.connections) ? 1 : 0) + (has(self.selector) ? 1 : 0) + (has(self.profiles) ? 1 : 0) == 1",
        "exactly one of all, category, connections, selector or profiles must be set",
        None,
    );
    add_rule(
        schema,
        "!has(self.all) || self.all",
        "all must be true when set; choose another target instead of all: false",
        Some(".all"),
    );
}

impl ResyncTarget {
    /// The target in words, for a person: `connections hr, idp`,
    /// `category HRIS`, `connections labelled team=iam`, `profiles
    /// employees`, `all connections` (several, joined with `; `).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.all == Some(true) {
            parts.push("all connections".to_string());
        }
        if let Some(category) = &self.category {
            parts.push(format!(
                "category {}",
                serde_json::to_value(category).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            ));
        }
        if let Some(names) = self.connections.as_ref().filter(|n| !n.is_empty()) {
            parts.push(format!("connections {}", names.join(", ")));
        }
        if let Some(selector) = &self.selector {
            let mut terms: Vec<String> =
                selector.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
            terms.extend(selector.match_expressions.iter().flatten().map(|e| {
                let values = e.values.as_deref().unwrap_or_default().join(",");
                format!("{} {} ({values})", e.key, e.operator)
            }));
            parts.push(format!("connections labelled {}", terms.join(",")));
        }
        if let Some(names) = self.profiles.as_ref().filter(|n| !n.is_empty()) {
            parts.push(format!("profiles {}", names.join(", ")));
        }
        parts.join("; ")
    }
}

/// What a request processes.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Sync accounts only.
    #[default]
    Accounts,
    /// Process identities only (e.g. to apply a Manual profile's changes).
    Identities,
    /// Sync accounts, then process the profiles that use those connections.
    AccountsAndIdentities,
}

impl Scope {
    pub fn includes_accounts(self) -> bool {
        matches!(self, Scope::Accounts | Scope::AccountsAndIdentities)
    }
    pub fn includes_identities(self) -> bool {
        matches!(self, Scope::Identities | Scope::AccountsAndIdentities)
    }
}

/// The phase of a request or of one of its targets.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    /// Some targets succeeded and some did not.
    PartiallyFailed,
    Failed,
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::PartiallyFailed | Phase::Failed)
    }
}

/// The phase of one target.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetPhase {
    Pending,
    /// Queued behind a running sync (concurrencyPolicy Wait).
    Waiting,
    Running,
    Succeeded,
    Failed,
    /// Refused: another sync held the connection (concurrencyPolicy Forbid).
    Rejected,
    /// Held back by the import safeguard; confirm with `confirmDeletes`.
    SafeguardTripped,
}

/// What the operator observed of a ResyncRequest. Its counts and
/// generations are int64s from 0 to the largest int64.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResyncRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The target in words (`connections hr, idp`, `category HRIS`, `all
    /// connections`…), for `kubectl get`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// `Complete` once finished, and `Stalled` when the target cannot be
    /// resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = super::common::conditions_list)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// One entry per resolved connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
    /// One entry per processed IdentityProfile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<ProfileRunStatus>,
}

/// The run of one connection within a request.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub connection: String,
    pub phase: TargetPhase,
    /// The mode that ran (a Delta without a cursor runs as Full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<SyncMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<SyncCounts>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The sync's number in the store's run history: `idsync runs get RUN`
    /// shows every account it changed (or, in a dry run, would change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub run: Option<i64>,
    /// The first accounts it created, updated (each field, before → after)
    /// and deleted, up to ten of each; for a dry run, what it would change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<String>,
}

impl TargetStatus {
    /// A connection the request will sync, not started yet.
    pub fn pending(connection: impl Into<String>) -> Self {
        TargetStatus {
            connection: connection.into(),
            phase: TargetPhase::Pending,
            mode: None,
            counts: None,
            message: String::new(),
            start_time: None,
            completion_time: None,
            run: None,
            preview: Vec::new(),
        }
    }
}

/// The processing of one IdentityProfile within a request.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProfileRunStatus {
    pub profile: String,
    pub phase: TargetPhase,
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub processed: u64,
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub changed: u64,
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub errors: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// For a dry run: what would change, e.g. `lifecycleState active → inactive: 12`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<String>,
    /// Identities the request named that the profile does not have: the
    /// request is then PartiallyFailed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub unknown_identities: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(value: serde_json::Value) -> ResyncTarget {
        serde_json::from_value(value).expect("a target")
    }

    #[test]
    fn targets_read_as_words() {
        assert_eq!(target(serde_json::json!({"connections": ["hr", "idp"]})).describe(), "connections hr, idp");
        assert_eq!(target(serde_json::json!({"all": true})).describe(), "all connections");
        assert_eq!(target(serde_json::json!({"category": "HRIS"})).describe(), "category HRIS");
        assert_eq!(
            target(serde_json::json!({"selector": {"matchLabels": {"team": "iam"}}})).describe(),
            "connections labelled team=iam"
        );
        assert_eq!(target(serde_json::json!({"profiles": ["employees"]})).describe(), "profiles employees");
    }
}
