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
    /// `Ready`, `Processing`, `Stalled`, and `ChangesPending` under
    /// `applyPolicy: Manual`.
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
