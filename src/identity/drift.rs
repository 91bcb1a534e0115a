//! Access drift: what a profile's identities and accounts say about who
//! still has access, computed from the store after every processing run
//! that commits (and when the drift settings change).
//!
//! Three kinds of case (see [`DriftKind`]): an identity in an offboarded
//! lifecycle state (e.g. `terminated`) that still holds an enabled account
//! of a correlated connection (what Drata checks after offboarding); an
//! enabled account of a correlated connection that no identity holds and
//! no rule marks as a service account (SailPoint's orphan accounts); an
//! identity without an account a rule says it must have.
//!
//! The store keeps the open cases with the time the first run that saw
//! each ran, so "since when" survives runs and restarts; a case that goes
//! away and comes back starts again.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use jiff::Timestamp;
use kube_cel::KubeCelExt;
use kube_cel::cel::objects::{Key, Map};
use kube_cel::cel::{self, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::model::{Account, Identity, ProfileRef};
use crate::store::StoreError;
use crate::store::drift::{DriftCase, DriftInputs, DriftKind, DriftUpdate};
use idsync_api::IdentityProfileSpec;
use idsync_api::identity_profile::DriftPolicy;

/// Deepest bracket nesting a drift predicate may have: the parser recurses
/// on it, and these run on ordinary threads (the profile's expressions
/// have the same bound).
const MAX_NESTING: usize = 32;

/// Why drift could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("{field}: {problem} (in {expression:?})")]
    InvalidExpression { field: String, expression: String, problem: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A compiled CEL predicate over one variable.
struct Predicate {
    field: String,
    program: cel::Program,
}

impl Predicate {
    fn compile(field: String, source: &str) -> Result<Predicate, DriftError> {
        let invalid = |problem: String| DriftError::InvalidExpression {
            field: field.clone(),
            expression: source.to_string(),
            problem,
        };
        if nesting(source) > MAX_NESTING {
            return Err(invalid(format!("brackets nest more than {MAX_NESTING} deep")));
        }
        let program = match catch_unwind(|| cel::Program::compile(source)) {
            Ok(Ok(program)) => program,
            Ok(Err(errors)) => return Err(invalid(errors.to_string())),
            Err(_) => return Err(invalid("the CEL parser failed on it".to_string())),
        };
        Ok(Predicate { field, program })
    }

    /// The predicate's value for `value` bound to `variable`; an error or a
    /// result other than a bool is an error, said in words.
    fn test(&self, base: &cel::Context<'_>, variable: &str, value: Value) -> Result<bool, String> {
        let mut scope = base.new_inner_scope();
        scope.add_variable_from_value(variable, value);
        match catch_unwind(AssertUnwindSafe(|| self.program.execute(&scope))) {
            Ok(Ok(Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!("{} yielded {:?}, not a bool", self.field, other.type_of())),
            Ok(Err(error)) => Err(format!("{}: {error}", self.field)),
            Err(_) => Err(format!("{}: the CEL interpreter failed", self.field)),
        }
    }
}

fn nesting(source: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for c in source.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A profile's drift rules, compiled.
pub struct Rules {
    offboarded_states: Vec<String>,
    authoritative: String,
    correlated: Vec<String>,
    /// Service-account predicates by connection.
    service: HashMap<String, Vec<Predicate>>,
    /// Expected connections, each with its conditions (None: everyone).
    expected: BTreeMap<String, Vec<Option<Predicate>>>,
}

impl Rules {
    pub fn compile(spec: &IdentityProfileSpec) -> Result<Rules, DriftError> {
        let policy = &spec.drift;
        let mut service: HashMap<String, Vec<Predicate>> = HashMap::new();
        for (i, rule) in policy.service_accounts.iter().enumerate() {
            let field = format!("spec.drift.serviceAccounts[{i}].expression");
            service.entry(rule.connection.clone()).or_default().push(Predicate::compile(field, &rule.expression)?);
        }
        let mut expected: BTreeMap<String, Vec<Option<Predicate>>> = BTreeMap::new();
        for (i, rule) in policy.expected_accounts.iter().enumerate() {
            let field = format!("spec.drift.expectedAccounts[{i}].condition");
            let condition = rule.condition.as_deref().map(|c| Predicate::compile(field, c)).transpose()?;
            expected.entry(rule.connection.clone()).or_default().push(condition);
        }
        Ok(Rules {
            offboarded_states: policy.offboarded_states.clone(),
            authoritative: spec.authoritative_connection.clone(),
            correlated: spec.correlation.iter().map(|c| c.connection.clone()).collect(),
            service,
            expected,
        })
    }

    pub fn expected_connections(&self) -> Vec<String> {
        self.expected.keys().cloned().collect()
    }
}

/// The cases found, and the predicates that failed (an account whose
/// service-account predicate fails counts as an orphan: better a case to
/// look at than access nobody reports).
#[derive(Debug, Default)]
pub struct Computed {
    pub cases: Vec<DriftCase>,
    pub errors: Vec<String>,
}

/// The cases `inputs` hold under `rules`; `since` is left at the epoch
/// (the store sets it).
pub fn compute(rules: &Rules, inputs: &DriftInputs) -> Computed {
    let base = cel::Context::default().with_all();
    let mut out = Computed::default();
    let case = |kind, identity: &str, connection: &str, account_id: &str, label: String| DriftCase {
        kind,
        identity: identity.to_string(),
        connection: connection.to_string(),
        account_id: account_id.to_string(),
        label,
        since: Timestamp::UNIX_EPOCH,
    };
    for identity in &inputs.offboarded {
        for link in identity.accounts.iter().filter(|l| l.connection != rules.authoritative) {
            let key = (link.connection.clone(), link.account_id.clone());
            if let Some(account) = inputs.held_accounts.get(&key).filter(|a| a.enabled) {
                out.cases.push(case(
                    DriftKind::OffboardedWithAccess,
                    &identity.id,
                    &link.connection,
                    &account.id,
                    account_label(account),
                ));
            }
        }
    }
    for (connection, account) in &inputs.unowned {
        if !account.enabled || !rules.correlated.contains(connection) {
            continue;
        }
        let mut service = false;
        for predicate in rules.service.get(connection).into_iter().flatten() {
            match predicate.test(&base, "account", account_value(account)) {
                Ok(true) => {
                    service = true;
                    break;
                }
                Ok(false) => {}
                Err(problem) => out.errors.push(format!("account {:?} of {connection}: {problem}", account.id)),
            }
        }
        if !service {
            out.cases.push(case(DriftKind::OrphanAccount, "", connection, &account.id, account_label(account)));
        }
    }
    for (connection, conditions) in &rules.expected {
        for identity in inputs.missing.get(connection).into_iter().flatten() {
            let mut expected = false;
            for condition in conditions {
                let Some(predicate) = condition else {
                    expected = true;
                    break;
                };
                match predicate.test(&base, "identity", identity_value(identity)) {
                    Ok(true) => {
                        expected = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(problem) => out.errors.push(format!("identity {:?}: {problem}", identity.id)),
                }
            }
            if expected {
                out.cases.push(case(
                    DriftKind::MissingExpectedAccount,
                    &identity.id,
                    connection,
                    "",
                    identity_label(identity),
                ));
            }
        }
    }
    // Errors repeat per account; a handful says enough.
    out.errors.truncate(5);
    out
}

/// The hash of what drift is computed with, so that a change of the drift
/// settings alone (which no processing run follows) recomputes it.
pub fn settings_hash(spec: &IdentityProfileSpec) -> String {
    let settings = serde_json::json!({
        "authoritative": spec.authoritative_connection,
        "correlated": spec.correlation.iter().map(|c| &c.connection).collect::<Vec<_>>(),
        "drift": spec.drift,
    });
    Sha256::digest(settings.to_string().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What a refresh found.
#[derive(Debug, Clone, Default)]
pub struct Refreshed {
    pub update: DriftUpdate,
    /// Predicates that failed on some account or identity.
    pub errors: Vec<String>,
}

/// Computes the profile's drift from the store and keeps it there: the
/// hook after a processing run commits. Blocking.
pub fn refresh(
    store: &dyn crate::store::Store,
    p: &ProfileRef,
    spec: &IdentityProfileSpec,
    now: Timestamp,
) -> Result<Refreshed, DriftError> {
    let started = std::time::Instant::now();
    let rules = Rules::compile(spec)?;
    // Until every connection the report reads has committed data once,
    // its cases would be false alarms: with GitHub synced before HR,
    // every GitHub account is an orphan; with HR before GitHub, everyone
    // misses their expected GitHub account. The first run of a request
    // over all connections commits them one after the other, so this is
    // the common case, not a corner: keep the last report and wait.
    let mut involved = vec![rules.authoritative.clone()];
    involved.extend(rules.correlated.iter().cloned());
    involved.extend(rules.expected_connections());
    let versions = store.connection_versions(&p.namespace, &involved)?;
    if let Some(waiting) = versions.iter().find(|(_, version)| **version == 0).map(|(name, _)| name) {
        tracing::debug!(profile = %p, connection = %waiting, "access drift waits for the connection's first sync");
        return Ok(Refreshed { update: DriftUpdate::default(), errors: Vec::new() });
    }
    let inputs = store.drift_inputs(
        p,
        &rules.authoritative,
        &rules.correlated,
        &rules.offboarded_states,
        &rules.expected_connections(),
    )?;
    let computed = compute(&rules, &inputs);
    let update = store.replace_drift(p, &computed.cases, &settings_hash(spec), now)?;
    tracing::debug!(profile = %p, cases = update.cases.len(), new = update.new.len(), resolved = update.resolved,
        elapsed_ms = started.elapsed().as_millis(), "computed access drift");
    Ok(Refreshed { update, errors: computed.errors })
}

/// The one-line description of new cases, for an Event or a notification.
pub fn describe_new(new: &[DriftCase]) -> String {
    let mut parts = Vec::new();
    let shown = |cases: Vec<&DriftCase>, what: &dyn Fn(&DriftCase) -> String| {
        let mut listed: Vec<String> = cases.iter().take(5).map(|c| what(c)).collect();
        if cases.len() > 5 {
            listed.push(format!("and {} more", cases.len() - 5));
        }
        listed.join(", ")
    };
    let of = |kind| new.iter().filter(|c| c.kind == kind).collect::<Vec<_>>();
    let offboarded = of(DriftKind::OffboardedWithAccess);
    if !offboarded.is_empty() {
        parts.push(format!(
            "offboarded with access: {}",
            shown(offboarded, &|c| format!("{} ({} account {})", c.identity, c.connection, c.label))
        ));
    }
    let orphans = of(DriftKind::OrphanAccount);
    if !orphans.is_empty() {
        parts.push(format!("orphan accounts: {}", shown(orphans, &|c| format!("{} {}", c.connection, c.label))));
    }
    let missing = of(DriftKind::MissingExpectedAccount);
    if !missing.is_empty() {
        parts.push(format!(
            "missing expected accounts: {}",
            shown(missing, &|c| format!("{} (no {} account)", c.identity, c.connection))
        ));
    }
    format!("new access drift: {}", parts.join("; "))
}

/// The oldest case of each kind older than the grace period, and when the
/// next one will be.
pub fn overdue(
    oldest: &BTreeMap<DriftKind, Timestamp>,
    policy: &DriftPolicy,
    now: Timestamp,
) -> (bool, Option<Timestamp>) {
    let grace = jiff::SignedDuration::from_secs(i64::try_from(policy.grace_period_seconds).unwrap_or(i64::MAX));
    let due: Vec<Timestamp> =
        oldest.values().map(|since| since.saturating_add(grace).unwrap_or(Timestamp::MAX)).collect();
    let over = due.iter().any(|t| *t <= now);
    let next = due.into_iter().filter(|t| *t > now).min();
    (over, next)
}

fn account_label(account: &Account) -> String {
    account
        .username
        .clone()
        .or_else(|| account.email.clone())
        .or_else(|| account.display_name.clone())
        .unwrap_or_else(|| account.id.clone())
}

fn identity_label(identity: &Identity) -> String {
    ["displayName", "email", "name"]
        .iter()
        .find_map(|k| identity.attributes.get(*k).and_then(Json::as_str).map(str::to_string))
        .unwrap_or_else(|| identity.id.clone())
}

fn account_value(account: &Account) -> Value {
    json_to_cel(&serde_json::to_value(account).unwrap_or(Json::Null))
}

fn identity_value(identity: &Identity) -> Value {
    json_to_cel(&serde_json::json!({
        "id": identity.id,
        "lifecycleState": identity.lifecycle_state,
        "attributes": identity.attributes,
    }))
}

fn json_to_cel(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(entries) => Value::Map(Map {
            map: Arc::new(entries.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v))).collect()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idsync_api::IdentityProfile;
    use idsync_api::identity_profile::{ExpectedAccountRule, ServiceAccountRule};

    fn spec() -> IdentityProfileSpec {
        let mut spec = IdentityProfile::test("employees")
            .authoritative("hr")
            .correlate_ignoring_case("github", "email", "email")
            .spec();
        spec.drift.service_accounts = vec![ServiceAccountRule {
            connection: "github".into(),
            expression: "account.username.endsWith('-svc')".into(),
        }];
        spec
    }

    fn account(id: &str, username: &str, enabled: bool) -> Account {
        Account { username: Some(username.into()), enabled, ..Account::new(id) }
    }

    fn terminated(id: &str, github: &str) -> Identity {
        Identity::new(id, "hr", Timestamp::UNIX_EPOCH).with_state("terminated").with_account("github", github)
    }

    #[test]
    fn enabled_accounts_of_offboarded_people_and_unowned_ones_are_cases_and_service_accounts_are_not() {
        let rules = Rules::compile(&spec()).unwrap();
        let mut inputs =
            DriftInputs { offboarded: vec![terminated("E1", "g1"), terminated("E2", "g2")], ..Default::default() };
        inputs.held_accounts.insert(("github".into(), "g1".into()), account("g1", "alice", true));
        inputs.held_accounts.insert(("github".into(), "g2".into()), account("g2", "bob", false));
        inputs.unowned = vec![
            ("github".into(), account("b1", "deploy-bot", true)),
            ("github".into(), account("s1", "ci-svc", true)),
        ];
        let computed = compute(&rules, &inputs);
        assert!(computed.errors.is_empty(), "{:?}", computed.errors);
        let keys: Vec<_> = computed.cases.iter().map(|c| (c.kind, c.identity.as_str(), c.label.as_str())).collect();
        assert_eq!(
            keys,
            vec![(DriftKind::OffboardedWithAccess, "E1", "alice"), (DriftKind::OrphanAccount, "", "deploy-bot")]
        );
    }

    /// Commits one processing run: `identities`, and GitHub accounts
    /// correlated to the identity named beside them, or to nobody.
    fn process(
        store: &crate::store::SqliteStore,
        p: &ProfileRef,
        identities: Vec<Identity>,
        links: &[(&str, Option<&str>)],
    ) {
        use crate::model::{LinkRecord, LinkState};
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let commit = crate::store::ProcessingCommit {
            upserts: identities,
            link_upserts: links
                .iter()
                .map(|(id, owner)| LinkRecord {
                    connection: "github".into(),
                    account_id: (*id).into(),
                    state: if owner.is_some() { LinkState::Correlated } else { LinkState::Uncorrelated },
                    identity: owner.map(str::to_string),
                    candidates: Vec::new(),
                })
                .collect(),
            ..Default::default()
        };
        let run = crate::model::ProcessingRunRecord {
            id: 0,
            trigger: crate::model::Trigger::Manual,
            request: None,
            started_at: now,
            finished_at: now,
            outcome: crate::model::RunOutcome::Succeeded,
            processed: 1,
            changed: 1,
            errors: 0,
            message: String::new(),
        };
        crate::store::IdentityStore::commit_processing(store, p, &commit, &run).unwrap();
    }

    #[test]
    fn nothing_is_reported_until_every_connection_the_report_reads_has_synced() {
        use crate::identity::delta::tests::{sync, upserts};
        use crate::store::drift::DriftStore;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("idsync.db")).unwrap();
        let p = ProfileRef::new("default", "employees");
        let spec = spec();
        let now = Timestamp::from_second(1_800_000_000).unwrap();

        // GitHub commits first, and the run after it sees no HR people:
        // every GitHub account is correlated to nobody, which is no orphan
        // report anyone should get.
        sync(&store, "github", upserts([account("g1", "ada", true), account("b1", "deploy-bot", true)]));
        process(&store, &p, Vec::new(), &[("g1", None), ("b1", None)]);
        let refreshed = refresh(&store, &p, &spec, now).unwrap();
        assert!(refreshed.update.cases.is_empty(), "{:?}", refreshed.update.cases);
        assert_eq!(store.drift_summary(&p).unwrap().orphan_accounts, 0);

        // HR commits; the next run attaches ada to E1 and leaves the bot.
        sync(&store, "hr", upserts([Account::new("E1")]));
        let ada = Identity::new("E1", "hr", now).with_account("github", "g1");
        process(&store, &p, vec![ada], &[("g1", Some("E1")), ("b1", None)]);
        let refreshed = refresh(&store, &p, &spec, now).unwrap();
        let new: Vec<_> = refreshed.update.new.iter().map(|c| (c.kind, c.label.as_str())).collect();
        assert_eq!(new, vec![(DriftKind::OrphanAccount, "deploy-bot")]);
    }

    #[test]
    fn expected_accounts_follow_their_condition() {
        let mut spec = spec();
        spec.drift.expected_accounts = vec![ExpectedAccountRule {
            connection: "github".into(),
            condition: Some("identity.attributes.department == 'Engineering'".into()),
        }];
        let rules = Rules::compile(&spec).unwrap();
        let mut inputs = DriftInputs::default();
        inputs.missing.insert(
            "github".into(),
            vec![
                Identity::new("E3", "hr", Timestamp::UNIX_EPOCH).with_attribute("department", "Engineering"),
                Identity::new("E4", "hr", Timestamp::UNIX_EPOCH).with_attribute("department", "Sales"),
            ],
        );
        let cases = compute(&rules, &inputs).cases;
        assert_eq!(cases.len(), 1);
        assert_eq!((cases[0].kind, cases[0].identity.as_str()), (DriftKind::MissingExpectedAccount, "E3"));
    }

    #[test]
    fn a_predicate_that_does_not_compile_names_its_field() {
        let mut spec = spec();
        spec.drift.service_accounts[0].expression = "account.username.endsWith(".into();
        let error = Rules::compile(&spec).err().expect("refused");
        assert!(error.to_string().contains("spec.drift.serviceAccounts[0].expression"), "{error}");
        spec.drift.service_accounts[0].expression = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(Rules::compile(&spec).is_err(), "deep nesting is refused before the parser sees it");
    }

    #[test]
    fn a_failing_service_predicate_leaves_the_account_an_orphan_and_says_why() {
        let mut spec = spec();
        spec.drift.service_accounts[0].expression = "account.attributes.kind == 'svc'".into();
        let rules = Rules::compile(&spec).unwrap();
        let inputs = DriftInputs { unowned: vec![("github".into(), account("b1", "bot", true))], ..Default::default() };
        let computed = compute(&rules, &inputs);
        assert_eq!(computed.cases.len(), 1);
        assert_eq!(computed.errors.len(), 1, "{:?}", computed.errors);
    }

    #[test]
    fn the_grace_period_decides_overdue() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let policy = DriftPolicy { grace_period_seconds: 3600, ..Default::default() };
        let mut oldest = BTreeMap::new();
        oldest.insert(DriftKind::OrphanAccount, now - jiff::SignedDuration::from_secs(60));
        let (over, next) = overdue(&oldest, &policy, now);
        assert!(!over);
        assert_eq!(next, Some(now + jiff::SignedDuration::from_secs(3540)));
        oldest.insert(DriftKind::OffboardedWithAccess, now - jiff::SignedDuration::from_secs(7200));
        assert!(overdue(&oldest, &policy, now).0);
    }
}
