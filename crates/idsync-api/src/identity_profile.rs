//! `IdentityProfile`: how accounts become identities.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{MAX_INT64, NAME_PATTERN};
use super::crdgen::add_rule;

/// How the accounts of connected systems become identities: the
/// authoritative connection's accounts (usually the HR system) create them,
/// other connections' accounts correlate to them, and CEL expressions compute
/// their attributes, lifecycle state and manager.
///
/// Checked by the schema: shapes, names and required fields. Checked by the
/// controller and reported as `Stalled` with the expression and the
/// compiler's message: that every CEL expression compiles, that the
/// connections exist, that the cron expressions and time zone parse.
#[allow(clippy::duplicated_attributes)] // kube's repeated printcolumn(...) entries
#[derive(CustomResource, Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "idsync.dev",
    version = "v1alpha1",
    kind = "IdentityProfile",
    namespaced,
    doc = "How accounts of connected systems become identities",
    status = "IdentityProfileStatus",
    shortname = "idprof",
    category = "idsync",
    derive = "PartialEq",
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.authoritativeConnection"),
    printcolumn(name = "Identities", type_ = "integer", json_path = ".status.identityCount"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.lifecycleStateCounts.active"),
    printcolumn(name = "Offboarded", type_ = "integer", json_path = ".status.offboardedWithAccess"),
    printcolumn(name = "Orphans", type_ = "integer", json_path = ".status.orphanAccounts"),
    printcolumn(name = "Drift", type_ = "string", json_path = ".status.conditions[?(@.type==\"AccessDrift\")].status"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Pending",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ChangesPending\")].status"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    printcolumn(name = "Last Processed", type_ = "date", json_path = ".status.lastProcessing.completionTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = profile_spec_rules)]
pub struct IdentityProfileSpec {
    /// The Connection whose accounts create identities, one each.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub authoritative_connection: String,

    /// How accounts of other connections attach to identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub correlation: Vec<ConnectionCorrelation>,

    /// Identity attributes, each a CEL expression over `accounts` (the
    /// authoritative and correlated accounts by connection name), `now` and
    /// `date("YYYY-MM-DD")`, e.g. `accounts.hr.work_email.lowerAscii()`.
    /// Names are identifiers; `lifecycle` and `manager` are reserved.
    ///
    /// Each expression is at most 4096 characters. The controller also
    /// refuses (Stalled, `ExpressionTooComplex`) an expression nesting
    /// brackets more than 32 deep or operations more than 100 deep, or whose
    /// estimated cost passes 1,000,000 (nested comprehensions multiply: a
    /// list of unknown size counts as 100 elements). Evaluation is bounded
    /// per identity: 1,000,000 comprehension steps, values built by
    /// functions up to 1 MiB, attribute values up to 256 KiB; a run that
    /// passes a bound changes nothing and stalls the profile
    /// (`EvaluationBudgetExceeded`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 200), transform = expression_map)]
    pub attributes: BTreeMap<String, String>,

    /// How the lifecycle state is computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,

    /// How an identity's manager is found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<ManagerCorrelation>,

    /// When scheduled processing runs. Default: 08:00 and 20:00
    /// America/Chicago.
    #[serde(default)]
    pub schedule: ProcessingSchedule,

    /// An identity attribute holding an ISO 8601 instant (with offset) at
    /// which that identity is processed next, in addition to the schedule.
    /// An instant within 24 hours of when the value is first seen is not
    /// scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub next_processing_attribute: Option<String>,

    /// Automatic applies spec changes at once; Manual waits for a
    /// ResyncRequest with scope Identities (and previews with `dryRun`).
    #[serde(default)]
    pub apply_policy: ApplyPolicy,

    /// What the profile reports as access drift after every processing run:
    /// offboarded identities that still hold enabled accounts, enabled
    /// accounts nobody owns (orphans), and identities missing an account
    /// they must have. Reported only; idsync never disables an account.
    #[serde(default)]
    pub drift: DriftPolicy,

    /// A processing run that would remove or offboard more identities than
    /// this applies nothing and waits for a ResyncRequest with
    /// `confirmRemovals: true`.
    #[serde(default)]
    pub identity_safeguard: IdentitySafeguard,
}

/// How access drift is found.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DriftPolicy {
    /// The lifecycle states of people who left (default `[terminated]`):
    /// their enabled accounts in other connections are drift, and they are
    /// never expected to have accounts.
    #[serde(default = "default_offboarded_states")]
    #[schemars(inner(length(min = 1, max = 63)), length(max = 32), extend("x-kubernetes-list-type" = "set"))]
    pub offboarded_states: Vec<String>,
    /// How long a case may stand before `AccessDrift` turns True, in
    /// seconds (default 86400, one day: the time an offboarding checklist
    /// usually takes). Counts and `idsync drift list` show cases at once.
    #[serde(default = "default_grace_period_seconds")]
    #[schemars(range(min = 0, max = MAX_GRACE_PERIOD_SECONDS))]
    pub grace_period_seconds: u64,
    /// Per correlated connection, a CEL predicate over `account` (`id`,
    /// `username`, `email`, `displayName`, `enabled`, `groups`,
    /// `attributes`) that marks service accounts, e.g.
    /// `account.username.endsWith('-bot')`: they are never orphans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub service_accounts: Vec<ServiceAccountRule>,
    /// Accounts identities must have: an identity (not offboarded) without
    /// a correlated account in the connection is a case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub expected_accounts: Vec<ExpectedAccountRule>,
}

/// The longest `drift.gracePeriodSeconds`: a year.
pub const MAX_GRACE_PERIOD_SECONDS: u64 = 366 * 24 * 3600;
/// The longest drift predicate, in characters.
pub const MAX_PREDICATE_LENGTH: usize = 1024;

fn default_offboarded_states() -> Vec<String> {
    vec!["terminated".to_string()]
}

fn default_grace_period_seconds() -> u64 {
    24 * 3600
}

impl Default for DriftPolicy {
    fn default() -> Self {
        DriftPolicy {
            offboarded_states: default_offboarded_states(),
            grace_period_seconds: default_grace_period_seconds(),
            service_accounts: Vec::new(),
            expected_accounts: Vec::new(),
        }
    }
}

/// Which accounts of a connection are service accounts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRule {
    /// A correlated connection.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub connection: String,
    /// CEL over `account`, true for a service account.
    #[schemars(length(min = 1, max = MAX_PREDICATE_LENGTH))]
    pub expression: String,
}

/// An account every identity (or those a condition picks) must have.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedAccountRule {
    /// A correlated connection.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub connection: String,
    /// CEL over `identity` (`id`, `lifecycleState`, `attributes`); only
    /// identities it is true for must have the account, e.g.
    /// `identity.attributes.department == 'Engineering'`. Unset: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_PREDICATE_LENGTH))]
    pub condition: Option<String>,
}

/// The identity safeguard, as the Connection's import safeguard is for
/// accounts: counts identities a run removes (their authoritative account
/// is gone) or moves into an offboarded state.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySafeguard {
    /// Largest share of the profile's identities, in percent, one run may
    /// remove or offboard, from 0 to 100 (default 20). 100 turns the
    /// percentage check off.
    #[serde(default = "default_max_remove_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_remove_percent: u32,
    /// Largest number of identities one run may remove or offboard,
    /// whatever the share; unset means no count limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10_000_000))]
    pub max_remove_count: Option<u64>,
    /// The share is checked only when a run removes or offboards more than
    /// this many identities (default 5): one termination in a team of four
    /// is an ordinary day, not a broken HR export. `maxRemoveCount` bounds
    /// runs of any size.
    #[serde(default = "default_min_removals_for_percent")]
    #[schemars(range(min = 0, max = 10_000_000))]
    pub min_removals_for_percent: u64,
}

fn default_max_remove_percent() -> u32 {
    20
}

fn default_min_removals_for_percent() -> u64 {
    5
}

impl Default for IdentitySafeguard {
    fn default() -> Self {
        IdentitySafeguard {
            max_remove_percent: default_max_remove_percent(),
            max_remove_count: None,
            min_removals_for_percent: default_min_removals_for_percent(),
        }
    }
}

/// The longest CEL expression of a profile, in characters; the controller
/// holds specs that did not pass the schema to it too.
pub const MAX_EXPRESSION_LENGTH: usize = 4096;

/// Schema of the attribute expressions: each at most
/// [`MAX_EXPRESSION_LENGTH`] characters.
fn expression_map(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::Object(values)) = schema.get_mut("additionalProperties") {
        values.insert("maxLength".into(), MAX_EXPRESSION_LENGTH.into());
    }
}

fn profile_spec_rules(schema: &mut schemars::Schema) {
    add_rule(
        schema,
        "!has(self.correlation) || self.correlation.all(c, c.connection != self.authoritativeConnection)",
        "the authoritative connection creates identities and cannot also be correlated",
        Some(".correlation"),
    );
    add_rule(
        schema,
        "!has(self.attributes) || self.attributes.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$') && k != 'lifecycle' && k != 'manager')",
        "attribute names are identifiers (letters, digits, _), and lifecycle and manager are reserved: \
         the lifecycle state and the manager have fields of their own",
        Some(".attributes"),
    );
    add_rule(
        schema,
        "!has(self.nextProcessingAttribute) || (has(self.attributes) && self.nextProcessingAttribute in self.attributes)",
        "nextProcessingAttribute must name one of the attributes",
        Some(".nextProcessingAttribute"),
    );
    add_rule(
        schema,
        "!has(self.drift) || !has(self.drift.serviceAccounts) || self.drift.serviceAccounts.all(r, has(self.correlation) && self.correlation.exists(c, c.connection == r.connection))",
        "drift.serviceAccounts names connections of spec.correlation: only a correlated connection's accounts can be orphans",
        Some(".drift.serviceAccounts"),
    );
    add_rule(
        schema,
        "!has(self.drift) || !has(self.drift.expectedAccounts) || self.drift.expectedAccounts.all(r, has(self.correlation) && self.correlation.exists(c, c.connection == r.connection))",
        "drift.expectedAccounts names connections of spec.correlation: only a correlated connection's accounts attach to identities",
        Some(".drift.expectedAccounts"),
    );
}

/// Correlation rules for one connection, tried in order; the first rule
/// that matches exactly one identity wins.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionCorrelation {
    /// The Connection whose accounts are correlated.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub connection: String,
    #[schemars(length(min = 1, max = 20))]
    pub rules: Vec<CorrelationRule>,
}

/// An account attribute that must equal an identity attribute.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CorrelationRule {
    /// `email`, `username`, `displayName`, `id`, or `attributes.<name>`.
    #[schemars(length(min = 1, max = 256))]
    pub account_attribute: String,
    /// The identity attribute compared with it.
    #[schemars(length(min = 1, max = 256))]
    pub identity_attribute: String,
    /// Compare ignoring case (as e-mail addresses should be).
    #[serde(default)]
    pub ignore_case: bool,
}

/// The lifecycle state: one CEL expression yielding one of `states`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// A CEL expression yielding a state name, e.g. from hire and
    /// termination dates compared with `now`; bounded as attribute
    /// expressions are.
    #[schemars(length(min = 1, max = MAX_EXPRESSION_LENGTH))]
    pub expression: String,
    /// The states the expression may yield; any other result is an error on
    /// that identity.
    #[schemars(
        inner(length(min = 1, max = 63)),
        length(min = 1, max = 32),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub states: Vec<String>,
}

/// How managers are found: the identity attribute `attribute` holds a value
/// that equals the `matchAttribute` of the manager's identity (e.g. a
/// manager's employee id).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManagerCorrelation {
    #[schemars(length(min = 1, max = 256))]
    pub attribute: String,
    #[schemars(length(min = 1, max = 256))]
    pub match_attribute: String,
}

/// When a profile's identities are processed on schedule.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::common::cron_list_rules)]
pub struct ProcessingSchedule {
    /// Standard five-field cron expressions.
    #[schemars(inner(length(min = 1, max = 128)), length(max = 16))]
    pub cron: Vec<String>,
    /// IANA time zone the cron expressions are read in.
    #[serde(default = "default_processing_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
}

fn default_processing_time_zone() -> String {
    "America/Chicago".to_string()
}

impl Default for ProcessingSchedule {
    fn default() -> Self {
        ProcessingSchedule {
            cron: vec!["0 8 * * *".to_string(), "0 20 * * *".to_string()],
            time_zone: default_processing_time_zone(),
        }
    }
}

/// Whether spec changes apply at once.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ApplyPolicy {
    #[default]
    Automatic,
    Manual,
}

/// What the operator observed of an IdentityProfile. Its counts and
/// generations are int64s from 0 to the largest int64.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdentityProfileStatus {
    /// `Ready`, `Processing`, `Stalled`, `AccessDrift`, `RemovalsHeld`, and
    /// `ChangesPending` under `applyPolicy: Manual`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = super::common::conditions_list)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub observed_generation: Option<i64>,
    /// The generation whose mappings the identities were last computed with;
    /// below `metadata.generation` while Manual changes are pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub applied_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub identity_count: Option<u64>,
    /// Identities per lifecycle state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = super::common::count_map)]
    pub lifecycle_state_counts: BTreeMap<String, u64>,
    /// Accounts of correlated connections that match no identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub uncorrelated_accounts: Option<u64>,
    /// Accounts of correlated connections that a rule matched to several
    /// identities; reported, not attached (see `idsync identities
    /// uncorrelated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub ambiguous_accounts: Option<u64>,
    /// Identities whose manager attribute names nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub unresolved_managers: Option<u64>,
    /// Identities in an offboarded state (`spec.drift.offboardedStates`)
    /// that still hold enabled accounts in other connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub offboarded_with_access: Option<u64>,
    /// Enabled accounts of correlated connections that belong to no
    /// identity and are not marked as service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub orphan_accounts: Option<u64>,
    /// Identities without an account `spec.drift.expectedAccounts` says
    /// they must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub missing_expected_accounts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_processing: Option<ProcessingRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_processing_time: Option<Time>,
}

/// One processing run.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessingRun {
    /// SpecChanged, EventBased, Scheduled, Manual or TimeBased.
    pub trigger: String,
    pub start_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub processed: u64,
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub changed: u64,
    #[schemars(range(min = 0, max = MAX_INT64))]
    pub errors: u64,
    /// Succeeded or Failed, and why.
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
