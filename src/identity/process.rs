//! One processing run of a profile, as a pure function: the store's
//! snapshot, the compiled profile, what to evaluate and the time in; the
//! identities and correlation records to write, the counts, the status
//! summary and a dry run's preview out. Nothing here reads the clock or the
//! store, so every rule is unit-tested on fixtures with known answers.
//!
//! The order of a run:
//! 1. correlation keys: the identity attributes that correlation rules
//!    compare, computed from the authoritative account alone (correlated
//!    accounts cannot take part in choosing themselves);
//! 2. correlation: each account of a correlated connection is attached to
//!    the one identity its first matching rule names, or recorded as
//!    uncorrelated or ambiguous;
//! 3. input hashes: the mappings plus the content hashes of an identity's
//!    accounts; an event-based run evaluates only identities whose hash
//!    moved;
//! 4. evaluation of the selected identities (a failing expression keeps the
//!    attribute's previous value and records the error);
//! 5. managers, over all identities, since one identity's change can
//!    resolve or orphan another's manager;
//! 6. the comparison with what is stored: only differences are written, and
//!    `modified` moves only when something a person can see changed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::expr::{CompiledProfile, EVALUATION_STACK, Inputs, Interrupted, current_stop, with_stop};
use crate::model::{Account, AccountLink, ContentHash, Identity, LinkRecord, LinkState};
use crate::store::{ProcessingCommit, ProcessingSnapshot, ProfileState};
use idsync_api::IdentityProfileSpec;
use idsync_api::identity_profile::CorrelationRule;

/// An identity whose next-processing instant is closer than this when its
/// value is first seen is not scheduled (SailPoint's documented rule).
const TIME_BASED_MIN_LEAD: SignedDuration = SignedDuration::from_hours(24);
/// Examples per preview line.
const PREVIEW_EXAMPLES: usize = 3;

/// Which identities a run evaluates. Identities not evaluated keep their
/// computed values; their manager and correlation records are still
/// brought up to date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every identity (scheduled runs, applied spec changes).
    All,
    /// New identities and those whose inputs changed (event-based runs),
    /// plus those whose next-processing time has come.
    Changed,
    /// Only identities whose next-processing time has come.
    Due,
    /// Just these ids (a ResyncRequest naming identities).
    Only(BTreeSet<String>),
}

/// What a run computed.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Writes; `state` carries `next_time_based` and the applied spec is
    /// left to the caller.
    pub commit: ProcessingCommit,
    /// Identities evaluated.
    pub processed: u64,
    /// Identities created, removed, or whose visible data changed.
    pub changed: u64,
    /// Evaluated identities with at least one failing expression.
    pub errors: u64,
    pub summary: Summary,
    /// A dry run's report: one line per attribute, transition or kind of
    /// change.
    pub preview: Vec<String>,
    /// Named identities that do not exist.
    pub unknown: Vec<String>,
}

/// A run given up at one identity's evaluation (see [`run`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{cause} (on identity {identity}, after {evaluated} identities were evaluated)")]
pub struct Abandoned {
    pub cause: Interrupted,
    /// The identity whose evaluation it was.
    pub identity: String,
    /// Identities fully evaluated before it.
    pub evaluated: u64,
}

/// The profile's numbers after the run, for its status.
pub use crate::model::IdentitySummary as Summary;

/// A hash of everything in the spec that shapes computed identities: a
/// change of it reprocesses every identity.
pub fn mapping_hash(spec: &IdentityProfileSpec) -> String {
    let shaping = serde_json::json!({
        "authoritativeConnection": spec.authoritative_connection,
        "correlation": spec.correlation,
        "attributes": spec.attributes,
        "lifecycle": spec.lifecycle,
        "manager": spec.manager,
        "nextProcessingAttribute": spec.next_processing_attribute,
    });
    hex(&Sha256::digest(shaping.to_string().as_bytes()))
}

/// The connections a profile reads: the authoritative one first.
pub fn connections_of(spec: &IdentityProfileSpec) -> Vec<String> {
    let mut names = vec![spec.authoritative_connection.clone()];
    for c in &spec.correlation {
        if !names.contains(&c.connection) {
            names.push(c.connection.clone());
        }
    }
    names
}

/// Problems with a spec that compiles but cannot work: names that refer to
/// attributes the profile does not compute.
pub fn check_references(spec: &IdentityProfileSpec) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, c) in spec.correlation.iter().enumerate() {
        for (j, rule) in c.rules.iter().enumerate() {
            if !spec.attributes.contains_key(&rule.identity_attribute) {
                problems.push(format!(
                    "spec.correlation[{i}].rules[{j}].identityAttribute: {:?} is not one of the profile's attributes",
                    rule.identity_attribute
                ));
            }
            if account_value_path(&rule.account_attribute).is_none() {
                problems.push(format!(
                    "spec.correlation[{i}].rules[{j}].accountAttribute: {:?} is not id, username, email, \
                     displayName or attributes.<name>",
                    rule.account_attribute
                ));
            }
        }
    }
    if let Some(m) = &spec.manager {
        for (field, name) in [("attribute", &m.attribute), ("matchAttribute", &m.match_attribute)] {
            if !spec.attributes.contains_key(name) {
                problems.push(format!("spec.manager.{field}: {name:?} is not one of the profile's attributes"));
            }
        }
    }
    problems
}

/// Runs one processing pass. `now` is the time expressions see and the
/// time written as `created` / `modified`.
///
/// Stops at the first identity whose evaluation passes a bound or is
/// stopped (see `expr::budget`): the run is then abandoned as a whole, so
/// that its caller keeps nothing of it.
pub fn run(
    spec: &IdentityProfileSpec,
    compiled: &CompiledProfile,
    snapshot: &ProcessingSnapshot,
    selection: &Selection,
    now: Timestamp,
) -> Result<Outcome, Abandoned> {
    let mapping = mapping_hash(spec);
    let no_accounts = Vec::new();
    let authoritative = snapshot.accounts.get(&spec.authoritative_connection).unwrap_or(&no_accounts);

    // 1. Correlation keys from the authoritative account alone; kept with
    // the identity and computed again only when its authoritative account or
    // the mappings changed, or on runs over everyone (where `now` moved).
    let key_attributes = key_attributes(spec);
    let case_modes: BTreeSet<bool> =
        spec.correlation.iter().flat_map(|c| c.rules.iter().map(|r| r.ignore_case)).collect();
    let mut keys: HashMap<(String, bool), HashMap<String, Vec<&str>>> = HashMap::new();
    let mut key_values: HashMap<&str, (String, KeyValues<'_>)> = HashMap::with_capacity(authoritative.len());
    let workers = workers();
    let computed_keys = in_order(authoritative, workers, |_, (account, hash)| {
        let keys_hash = keys_hash(&mapping, hash);
        let values: KeyValues<'_> = match snapshot.identities.get(&account.id) {
            Some(s) if *selection != Selection::All && s.keys_hash == keys_hash => Cow::Borrowed(&s.correlation_keys),
            _ => Cow::Owned(compute_keys(spec, compiled, &key_attributes, account, now)?),
        };
        Ok((keys_hash, values))
    })?;
    for ((account, _), (keys_hash, values)) in authoritative.iter().zip(computed_keys) {
        for (name, text) in values.iter() {
            for &ignore_case in &case_modes {
                let key = if ignore_case { text.to_lowercase() } else { text.clone() };
                keys.entry((name.clone(), ignore_case)).or_default().entry(key).or_default().push(account.id.as_str());
            }
        }
        key_values.insert(account.id.as_str(), (keys_hash, values));
    }

    // 2. Correlation.
    let mut links: Vec<LinkRecord> = Vec::new();
    let mut attached: HashMap<String, Vec<(&str, &Account, &ContentHash)>> = HashMap::new();
    for c in &spec.correlation {
        let Some(accounts) = snapshot.accounts.get(&c.connection) else { continue };
        for (account, hash) in accounts {
            let record = correlate(&c.connection, account, &c.rules, &keys);
            if let (LinkState::Correlated, Some(identity)) = (record.state, &record.identity) {
                attached.entry(identity.clone()).or_default().push((c.connection.as_str(), account, hash));
            }
            links.push(record);
        }
    }

    // 3-4. Hashes, selection, evaluation.
    let mut unknown = Vec::new();
    if let Selection::Only(ids) = selection {
        let present: BTreeSet<&str> = authoritative.iter().map(|(a, _)| a.id.as_str()).collect();
        unknown = ids.iter().filter(|id| !present.contains(id.as_str())).cloned().collect();
    }
    // Identities not evaluated stay borrowed from the snapshot until
    // something (their manager, their keys) changes them.
    let mut computed: HashMap<&str, Cow<'_, Identity>> = HashMap::with_capacity(authoritative.len());
    // Each authoritative account is one identity, evaluated at most once,
    // in batches spread over the processor's cores (see [`evaluate_batch`]).
    let (mut processed, mut with_errors) = (0u64, 0u64);
    let mut batch: Vec<Evaluated<'_>> = Vec::with_capacity(BATCH.min(authoritative.len()));
    for (account, hash) in authoritative {
        let mut correlated = attached.remove(account.id.as_str()).unwrap_or_default();
        correlated.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        let input_hash = input_hash(&mapping, &spec.authoritative_connection, account, hash, &correlated);
        let stored = snapshot.identities.get(&account.id);
        let due = stored.and_then(|s| s.next_processing).is_some_and(|t| t <= now);
        let evaluate = match selection {
            Selection::All => true,
            Selection::Changed => {
                stored.is_none_or(|s| s.input_hash != input_hash || s.time_changes_at.is_some_and(|t| t <= now)) || due
            }
            Selection::Due => due,
            Selection::Only(ids) => ids.contains(&account.id),
        };
        let (keys_hash, key_values) = key_values.remove(account.id.as_str()).unwrap_or_default();
        if !evaluate {
            // Its kept keys are refreshed when it is next evaluated: a run
            // writes only identities it was asked to process (or whose
            // manager moved).
            if let Some(s) = stored {
                computed.insert(account.id.as_str(), Cow::Borrowed(s));
            }
            continue;
        }
        batch.push(Evaluated { account, correlated, stored, input_hash, keys: key_values.into_owned(), keys_hash });
        if batch.len() == BATCH {
            merge_batch(spec, compiled, &mut batch, &mut computed, (&mut processed, &mut with_errors), now, workers)?;
        }
    }
    merge_batch(spec, compiled, &mut batch, &mut computed, (&mut processed, &mut with_errors), now, workers)?;

    // 5. Managers over everyone.
    let unresolved_managers = resolve_managers(spec, &mut computed);

    // 6. Compare with the store. The summary counts the profile as it will
    // be (removed identities are never in `computed`); it is taken first so
    // that changed identities can then move into the commit, not be copied.
    let mut outcome = Outcome { unknown, ..Default::default() };
    outcome.summary.unresolved_managers = unresolved_managers;
    let mut next_time_based: Option<Timestamp> = None;
    for identity in computed.values() {
        outcome.summary.identities += 1;
        if let Some(state) = &identity.lifecycle_state {
            *outcome.summary.lifecycle_states.entry(state.clone()).or_default() += 1;
        }
        if !identity.errors.is_empty() {
            outcome.summary.identities_with_errors += 1;
        }
        if let Some(t) = identity.next_processing {
            next_time_based = Some(next_time_based.map_or(t, |n| n.min(t)));
        }
    }
    let mut preview = Preview::default();
    if !matches!(selection, Selection::Only(_) | Selection::Due) {
        let mut gone: Vec<&String> =
            snapshot.identities.keys().filter(|id| !computed.contains_key(id.as_str())).collect();
        gone.sort();
        for id in gone {
            preview.removed.push(id.clone());
            outcome.changed += 1;
            outcome.commit.deletes.push(id.clone());
        }
    }
    let mut computed: Vec<(&str, Cow<'_, Identity>)> = computed.into_iter().collect();
    computed.sort_unstable_by_key(|(id, _)| *id);
    for (id, identity) in computed {
        let stored = snapshot.identities.get(id);
        match (stored, identity) {
            (Some(_), Cow::Borrowed(_)) => {}
            (None, identity) => {
                let mut identity = identity.into_owned();
                identity.created = now;
                identity.modified = now;
                preview.created.push(id.to_string());
                outcome.changed += 1;
                outcome.commit.upserts.push(identity);
            }
            (Some(s), Cow::Owned(identity)) if *s == identity => {}
            (Some(s), Cow::Owned(mut identity)) => {
                if visible_change(s, &identity) {
                    identity.modified = now;
                    outcome.changed += 1;
                    preview.record(s, &identity);
                }
                outcome.commit.upserts.push(identity);
            }
        }
    }

    // Correlation records: write differences only, with borrowed keys so
    // that 100,000 unchanged records cost lookups, not copies.
    let stored_links: HashMap<(&str, &str), &LinkRecord> =
        snapshot.links.iter().map(|((c, a), r)| ((c.as_str(), a.as_str()), r)).collect();
    let mut stale: Vec<(String, String)> = {
        let current: HashSet<(&str, &str)> =
            links.iter().map(|r| (r.connection.as_str(), r.account_id.as_str())).collect();
        stored_links.keys().filter(|k| !current.contains(*k)).map(|(c, a)| (c.to_string(), a.to_string())).collect()
    };
    stale.sort();
    outcome.commit.link_deletes = stale;
    for record in links {
        tally_link(&mut outcome.summary, &record);
        let unchanged =
            stored_links.get(&(record.connection.as_str(), record.account_id.as_str())).is_some_and(|s| **s == record);
        if !unchanged {
            outcome.commit.link_upserts.push(record);
        }
    }

    outcome.processed = processed;
    outcome.errors = with_errors;
    // A run that evaluated every identity whose inputs moved leaves them all
    // computed with these mappings; one over named or due identities leaves
    // that as it was, or unknown if the mappings differ.
    let mapping_hash = match selection {
        Selection::All | Selection::Changed => Some(mapping),
        Selection::Only(_) | Selection::Due => snapshot.state.mapping_hash.clone().filter(|m| *m == mapping),
    };
    outcome.commit.state = ProfileState {
        next_time_based,
        mapping_hash,
        summary: Some(outcome.summary.clone()),
        ..snapshot.state.clone()
    };
    outcome.preview = preview.lines(outcome.processed);
    Ok(outcome)
}

/// The identity attributes correlation rules compare, each once, ordered.
pub(super) fn key_attributes(spec: &IdentityProfileSpec) -> Vec<&str> {
    let set: BTreeSet<&str> = spec
        .correlation
        .iter()
        .flat_map(|c| c.rules.iter().map(|r| r.identity_attribute.as_str()))
        .filter(|a| spec.attributes.contains_key(*a))
        .collect();
    set.into_iter().collect()
}

/// An identity's correlation keys, computed from its authoritative account
/// alone (correlated accounts cannot take part in choosing themselves).
pub(super) fn compute_keys(
    spec: &IdentityProfileSpec,
    compiled: &CompiledProfile,
    key_attributes: &[&str],
    account: &Account,
    now: Timestamp,
) -> Result<BTreeMap<String, String>, Abandoned> {
    if key_attributes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let accounts = [(spec.authoritative_connection.as_str(), account)];
    let evaluation = compiled
        .evaluate(&Inputs { accounts: &accounts, now }, Some(key_attributes))
        .map_err(|cause| Abandoned { cause, identity: account.id.clone(), evaluated: 0 })?;
    Ok(evaluation.attributes.iter().filter_map(|(n, v)| Some((n.clone(), scalar_text(v)?))).collect())
}

/// Identities evaluated together: enough to keep every core busy for a
/// while, few enough that a batch's results (held until the batch is
/// merged) stay a small part of a run's memory.
const BATCH: usize = 2048;
/// Batches smaller than this are evaluated on the calling thread: a thread
/// costs more than evaluating a few identities.
const PARALLEL_MIN: usize = 256;

/// How many threads evaluate a batch: the processor's cores, at most four
/// (a run shares the machine with syncs and the API server).
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Evaluates `batch` in order (see [`in_order`]); `evaluated` is how many
/// identities the run evaluated before the batch, for the message of a run
/// given up.
fn evaluate_batch(
    spec: &IdentityProfileSpec,
    compiled: &CompiledProfile,
    batch: &[Evaluated<'_>],
    now: Timestamp,
    evaluated: u64,
    workers: usize,
) -> Result<Vec<(Identity, bool)>, Abandoned> {
    in_order(batch, workers, |i, from| evaluate_identity(spec, compiled, from, now, evaluated + i as u64))
}

/// `f` of each item with its index, on `workers` threads when there are
/// enough items; the results are in the items' order. When evaluations are
/// given up, the one given up is the first in the items' order (so an
/// abandoned run names the identity and count that one thread evaluating
/// one identity after the other would have reached, however many cores).
///
/// The threads run with the evaluation stack and the caller's [`Stop`]
/// (both thread-local to the caller's processing thread); a thread that
/// cannot be started leaves its part to the calling thread.
///
/// [`Stop`]: super::expr::Stop
fn in_order<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(usize, &T) -> Result<R, Abandoned> + Sync,
) -> Result<Vec<R>, Abandoned> {
    let one_by_one = |part: &[T], before: usize| -> Result<Vec<R>, Abandoned> {
        part.iter().enumerate().map(|(i, item)| f(before + i, item)).collect()
    };
    if workers <= 1 || items.len() < PARALLEL_MIN {
        return one_by_one(items, 0);
    }
    let stop = current_stop();
    let size = items.len().div_ceil(workers);
    let parts: Vec<Result<Vec<R>, Abandoned>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(size)
            .enumerate()
            .map(|(n, part)| {
                let before = n * size;
                let (stop, one_by_one) = (stop.clone(), &one_by_one);
                let run = move || match &stop {
                    Some(stop) => with_stop(stop, || one_by_one(part, before)),
                    None => one_by_one(part, before),
                };
                std::thread::Builder::new()
                    .name("identity-eval".to_string())
                    .stack_size(EVALUATION_STACK)
                    .spawn_scoped(scope, run.clone())
                    .map_err(|_| run)
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle {
                Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(run) => run(),
            })
            .collect()
    });
    let mut results = Vec::with_capacity(items.len());
    for part in parts {
        results.extend(part?);
    }
    Ok(results)
}

/// Evaluates `batch` (emptying it) into `computed`, counting the identities
/// evaluated and those with failing expressions.
fn merge_batch<'a>(
    spec: &IdentityProfileSpec,
    compiled: &CompiledProfile,
    batch: &mut Vec<Evaluated<'a>>,
    computed: &mut HashMap<&'a str, Cow<'a, Identity>>,
    (processed, with_errors): (&mut u64, &mut u64),
    now: Timestamp,
    workers: usize,
) -> Result<(), Abandoned> {
    let results = evaluate_batch(spec, compiled, batch, now, *processed, workers)?;
    for (from, (identity, failed)) in batch.drain(..).zip(results) {
        if failed {
            *with_errors += 1;
        }
        *processed += 1;
        // The manager is decided over everyone below; until then it is what
        // was stored. A result equal to the stored identity is dropped here,
        // so a scheduled run over 100,000 unchanged identities does not hold
        // two copies of them.
        let result: Cow<'a, Identity> = match from.stored {
            Some(s) if identity == *s => Cow::Borrowed(s),
            _ => Cow::Owned(identity),
        };
        computed.insert(from.account.id.as_str(), result);
    }
    Ok(())
}

/// What one identity is evaluated from.
pub(super) struct Evaluated<'a> {
    pub account: &'a Account,
    /// Its correlated accounts, ordered by connection and account id.
    pub correlated: Vec<(&'a str, &'a Account, &'a ContentHash)>,
    pub stored: Option<&'a Identity>,
    pub input_hash: String,
    pub keys: BTreeMap<String, String>,
    pub keys_hash: String,
}

/// Evaluates one identity: its attributes and lifecycle (a failing
/// expression keeps what the stored identity had), its next-processing
/// time, and the manager as stored (managers are decided over everyone
/// afterwards). Also says whether an expression failed on it. `evaluated`
/// is how many identities the run evaluated before, for an abandoned run's
/// message.
pub(super) fn evaluate_identity(
    spec: &IdentityProfileSpec,
    compiled: &CompiledProfile,
    from: &Evaluated<'_>,
    now: Timestamp,
    evaluated: u64,
) -> Result<(Identity, bool), Abandoned> {
    let Evaluated { account, correlated, stored, input_hash, keys, keys_hash } = from;
    let (account, stored) = (*account, *stored);
    let mut inputs: Vec<(&str, &Account)> = vec![(spec.authoritative_connection.as_str(), account)];
    for (connection, a, _) in correlated {
        // The first account of each connection (by id) is the one
        // expressions see as `accounts.<connection>`.
        if !inputs.iter().any(|(c, _)| c == connection) {
            inputs.push((connection, a));
        }
    }
    let evaluation = compiled.evaluate(&Inputs { accounts: &inputs, now }, None).map_err(|cause| Abandoned {
        cause,
        identity: account.id.clone(),
        evaluated,
    })?;
    let mut identity = Identity {
        id: account.id.clone(),
        attributes: evaluation.attributes,
        lifecycle_state: evaluation.lifecycle_state,
        manager_ref: None,
        manager: stored.and_then(|s| s.manager.clone()),
        top_of_hierarchy: stored.is_some_and(|s| s.top_of_hierarchy),
        accounts: std::iter::once(AccountLink {
            connection: spec.authoritative_connection.clone(),
            account_id: account.id.clone(),
        })
        .chain(correlated.iter().map(|(c, a, _)| AccountLink { connection: c.to_string(), account_id: a.id.clone() }))
        .collect(),
        errors: evaluation.errors,
        input_hash: input_hash.clone(),
        created: stored.map_or(now, |s| s.created),
        modified: stored.map_or(now, |s| s.modified),
        next_processing: None,
        next_processing_value: None,
        correlation_keys: keys.clone(),
        keys_hash: keys_hash.clone(),
        time_changes_at: evaluation.time_changes_at,
    };
    // A failing expression keeps what the identity had.
    if let Some(s) = stored {
        for name in identity.errors.keys() {
            if name == "lifecycle" {
                identity.lifecycle_state.clone_from(&s.lifecycle_state);
            } else if let Some(previous) = s.attributes.get(name) {
                identity.attributes.insert(name.clone(), previous.clone());
            }
        }
    }
    schedule_next(spec, &mut identity, stored, now);
    let failed = !identity.errors.is_empty();
    if let Some(s) = stored {
        identity.manager_ref.clone_from(&s.manager_ref);
        if let Some(error) = s.errors.get("manager") {
            identity.errors.insert("manager".to_string(), error.clone());
        }
    }
    Ok((identity, failed))
}

/// Attaches one account by the first rule that matches exactly one identity.
fn correlate(
    connection: &str,
    account: &Account,
    rules: &[CorrelationRule],
    keys: &HashMap<(String, bool), HashMap<String, Vec<&str>>>,
) -> LinkRecord {
    let mut record = LinkRecord {
        connection: connection.to_string(),
        account_id: account.id.clone(),
        state: LinkState::Uncorrelated,
        identity: None,
        candidates: Vec::new(),
    };
    for rule in rules {
        let Some(value) = account_value(account, &rule.account_attribute) else { continue };
        let value = if rule.ignore_case { value.to_lowercase() } else { value };
        let Some(matches) = keys.get(&(rule.identity_attribute.clone(), rule.ignore_case)).and_then(|m| m.get(&value))
        else {
            continue;
        };
        match matches.as_slice() {
            [one] => {
                record.state = LinkState::Correlated;
                record.identity = Some(one.to_string());
                record.candidates.clear();
                return record;
            }
            several if record.candidates.is_empty() => {
                // Reported, and later rules may still match exactly one.
                record.state = LinkState::Ambiguous;
                let mut candidates: Vec<String> = several.iter().map(|s| s.to_string()).collect();
                candidates.sort();
                candidates.dedup();
                record.candidates = candidates;
            }
            _ => {}
        }
    }
    record
}

/// Where a correlation rule's `accountAttribute` points in an account.
enum AccountPath<'a> {
    Id,
    Username,
    Email,
    DisplayName,
    Attribute(&'a str),
}

fn account_value_path(path: &str) -> Option<AccountPath<'_>> {
    Some(match path {
        "id" => AccountPath::Id,
        "username" => AccountPath::Username,
        "email" => AccountPath::Email,
        "displayName" => AccountPath::DisplayName,
        other => AccountPath::Attribute(other.strip_prefix("attributes.").filter(|n| !n.is_empty())?),
    })
}

fn account_value(account: &Account, path: &str) -> Option<String> {
    let value = match account_value_path(path)? {
        AccountPath::Id => Some(account.id.clone()),
        AccountPath::Username => account.username.clone(),
        AccountPath::Email => account.email.clone(),
        AccountPath::DisplayName => account.display_name.clone(),
        AccountPath::Attribute(name) => account.attributes.get(name).and_then(scalar_text),
    }?;
    let value = value.trim().to_string();
    (!value.is_empty()).then_some(value)
}

/// A string or number as the text correlation and managers compare.
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

pub(super) fn input_hash(
    mapping: &str,
    authoritative: &str,
    account: &Account,
    hash: &ContentHash,
    correlated: &[(&str, &Account, &ContentHash)],
) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        // Length-prefixed, so no two different inputs concatenate alike.
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(mapping.as_bytes());
    part(authoritative.as_bytes());
    part(account.id.as_bytes());
    part(&hash.0);
    for (connection, a, hash) in correlated {
        part(connection.as_bytes());
        part(a.id.as_bytes());
        part(&hash.0);
    }
    hex(&h.finalize())
}

/// What correlation keys depend on: the mappings and the authoritative
/// account.
pub(super) fn keys_hash(mapping: &str, account: &ContentHash) -> String {
    let mut h = Sha256::new();
    h.update(mapping.as_bytes());
    h.update(account.0);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    // Two hashes per identity per run: one string each, not one per byte.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    text
}

/// Time-based processing: the next-processing attribute schedules the
/// identity at its instant, unless that instant is less than 24 hours away
/// when the value is first seen.
fn schedule_next(spec: &IdentityProfileSpec, identity: &mut Identity, stored: Option<&Identity>, now: Timestamp) {
    let Some(attribute) = &spec.next_processing_attribute else { return };
    let Some(value) = identity.attributes.get(attribute).and_then(scalar_text) else { return };
    let previous = stored.filter(|s| s.next_processing_value.as_deref() == Some(value.as_str()));
    identity.next_processing_value = Some(value.clone());
    identity.next_processing = match previous {
        // Seen before: keep its schedule until it has come.
        Some(s) => s.next_processing.filter(|t| *t > now),
        None => match value.parse::<Timestamp>() {
            Ok(at) if at.duration_since(now) >= TIME_BASED_MIN_LEAD => Some(at),
            Ok(_) => None,
            Err(e) => {
                identity.errors.insert(
                    attribute.clone(),
                    format!("nextProcessingAttribute: {value:?} is not an ISO 8601 instant with an offset: {e}"),
                );
                None
            }
        },
    };
}

/// An identity's correlation keys: kept (borrowed from the store's
/// snapshot) or computed in this run.
type KeyValues<'a> = Cow<'a, BTreeMap<String, String>>;

/// What manager resolution decided for one identity.
struct ManagerDecision {
    /// The manager attribute's value.
    reference: Option<String>,
    /// The one identity it names.
    found: Option<String>,
    /// It names itself.
    top: bool,
    /// Why it names none (several matches).
    error: Option<String>,
}

/// Resolves every identity's manager; returns how many name a manager that
/// no single identity matches. An identity naming itself (the top of the
/// hierarchy) has no manager and is not unresolved. Identities whose manager
/// did not change stay borrowed.
fn resolve_managers(spec: &IdentityProfileSpec, identities: &mut HashMap<&str, Cow<'_, Identity>>) -> u64 {
    let Some(manager) = &spec.manager else {
        for identity in identities.values_mut() {
            if identity.manager_ref.is_some() || identity.manager.is_some() || identity.top_of_hierarchy {
                let owned = identity.to_mut();
                owned.manager_ref = None;
                owned.manager = None;
                owned.top_of_hierarchy = false;
            }
        }
        return 0;
    };
    let mut index: HashMap<String, Vec<&str>> = HashMap::new();
    for (id, identity) in identities.iter() {
        if let Some(key) = identity.attributes.get(&manager.match_attribute).and_then(scalar_text) {
            index.entry(key).or_default().push(id);
        }
    }
    let mut unresolved = 0;
    // Decided before anything changes.
    let mut decisions: Vec<(&str, ManagerDecision)> = Vec::new();
    for (id, identity) in identities.iter() {
        let reference = identity.attributes.get(&manager.attribute).and_then(scalar_text);
        let (found, top, error) = match reference.as_ref().map(|r| (r, index.get(r).map(Vec::as_slice))) {
            None => (None, false, None),
            Some((_, Some([one]))) if one != id => (Some(one.to_string()), false, None),
            Some((_, Some([_]))) => (None, true, None),
            Some((_, None)) => {
                unresolved += 1;
                (None, false, None)
            }
            Some((reference, Some(several))) => {
                unresolved += 1;
                let mut names = several.to_vec();
                names.sort_unstable();
                let error = format!("{reference:?} matches {} identities ({})", names.len(), names.join(", "));
                (None, false, Some(error))
            }
        };
        if identity.manager_ref != reference
            || identity.manager != found
            || identity.top_of_hierarchy != top
            || identity.errors.get("manager") != error.as_ref()
        {
            decisions.push((id, ManagerDecision { reference, found, top, error }));
        }
    }
    for (id, ManagerDecision { reference, found, top, error }) in decisions {
        if let Some(identity) = identities.get_mut(id) {
            let owned = identity.to_mut();
            owned.manager_ref = reference;
            owned.manager = found;
            owned.top_of_hierarchy = top;
            match error {
                Some(e) => owned.errors.insert("manager".to_string(), e),
                None => owned.errors.remove("manager"),
            };
        }
    }
    unresolved
}

/// Whether a person reading the identity would see a difference.
pub(super) fn visible_change(before: &Identity, after: &Identity) -> bool {
    before.attributes != after.attributes
        || before.lifecycle_state != after.lifecycle_state
        || before.manager != after.manager
        || before.manager_ref != after.manager_ref
        || before.top_of_hierarchy != after.top_of_hierarchy
        || before.accounts != after.accounts
        || before.errors != after.errors
}

pub(super) fn tally_link(summary: &mut Summary, record: &LinkRecord) {
    match record.state {
        LinkState::Correlated => {}
        LinkState::Uncorrelated => summary.uncorrelated_accounts += 1,
        LinkState::Ambiguous => summary.ambiguous_accounts += 1,
    }
}

/// What a dry run reports.
#[derive(Default)]
pub(super) struct Preview {
    created: Vec<String>,
    removed: Vec<String>,
    attributes: BTreeMap<String, Vec<String>>,
    transitions: BTreeMap<(String, String), Vec<String>>,
    managers: Vec<String>,
    accounts: Vec<String>,
    /// The first identities that would change, each with what changes.
    details: Vec<String>,
}

/// Identities a preview shows one by one, before → after.
const PREVIEW_IDENTITIES: usize = 10;

/// A value as a preview line shows it: strings bare, `(none)` for absent,
/// other JSON as JSON, long ones cut.
fn shown(value: Option<&serde_json::Value>) -> String {
    let text = match value {
        None | Some(serde_json::Value::Null) => "(none)".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if text.chars().count() > 60 { text.chars().take(57).chain("...".chars()).collect() } else { text }
}

impl Preview {
    pub(super) fn record(&mut self, before: &Identity, after: &Identity) {
        if self.details.len() < PREVIEW_IDENTITIES {
            self.details.push(Self::detail(before, after));
        }
        let names: BTreeSet<&String> = before.attributes.keys().chain(after.attributes.keys()).collect();
        for name in names {
            if before.attributes.get(name) != after.attributes.get(name) {
                self.attributes.entry(name.clone()).or_default().push(after.id.clone());
            }
        }
        if before.lifecycle_state != after.lifecycle_state {
            let state = |s: &Option<String>| s.clone().unwrap_or_else(|| "(none)".to_string());
            self.transitions
                .entry((state(&before.lifecycle_state), state(&after.lifecycle_state)))
                .or_default()
                .push(after.id.clone());
        }
        if before.manager != after.manager {
            self.managers.push(after.id.clone());
        }
        if before.accounts != after.accounts {
            self.accounts.push(after.id.clone());
        }
    }

    /// `E5: lifecycleState active → terminated, title Engineer → ENGINEER`.
    fn detail(before: &Identity, after: &Identity) -> String {
        let mut changes = Vec::new();
        if before.lifecycle_state != after.lifecycle_state {
            let state = |s: &Option<String>| s.clone().unwrap_or_else(|| "(none)".to_string());
            changes.push(format!(
                "lifecycleState {} → {}",
                state(&before.lifecycle_state),
                state(&after.lifecycle_state)
            ));
        }
        let names: BTreeSet<&String> = before.attributes.keys().chain(after.attributes.keys()).collect();
        for name in names {
            let (old, new) = (before.attributes.get(name), after.attributes.get(name));
            if old != new {
                changes.push(format!("{name} {} → {}", shown(old), shown(new)));
            }
        }
        if before.manager != after.manager {
            let manager = |m: &Option<String>| m.clone().unwrap_or_else(|| "(none)".to_string());
            changes.push(format!("manager {} → {}", manager(&before.manager), manager(&after.manager)));
        }
        if before.accounts != after.accounts {
            changes.push(format!("accounts {} → {}", before.accounts.len(), after.accounts.len()));
        }
        format!("{}: {}", after.id, changes.join(", "))
    }

    pub(super) fn lines(&self, processed: u64) -> Vec<String> {
        let line = |what: String, ids: &[String]| {
            let examples: Vec<&str> = ids.iter().take(PREVIEW_EXAMPLES).map(String::as_str).collect();
            format!("{what}: {} (e.g. {})", ids.len(), examples.join(", "))
        };
        let mut lines = Vec::new();
        let changed: BTreeSet<&String> = self
            .attributes
            .values()
            .chain(self.transitions.values())
            .flatten()
            .chain(&self.managers)
            .chain(&self.accounts)
            .collect();
        lines.push(format!(
            "{} of {processed} identities would change, {} would be created, {} removed",
            changed.len(),
            self.created.len(),
            self.removed.len()
        ));
        for ((from, to), ids) in &self.transitions {
            lines.push(line(format!("lifecycleState {from} → {to}"), ids));
        }
        for (name, ids) in &self.attributes {
            lines.push(line(format!("attribute {name}"), ids));
        }
        if !self.managers.is_empty() {
            lines.push(line("manager".to_string(), &self.managers));
        }
        if !self.accounts.is_empty() {
            lines.push(line("accounts".to_string(), &self.accounts));
        }
        if !self.created.is_empty() {
            lines.push(line("created".to_string(), &self.created));
        }
        if !self.removed.is_empty() {
            lines.push(line("removed".to_string(), &self.removed));
        }
        lines.extend(self.details.iter().cloned());
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idsync_api::IdentityProfile;
    use serde_json::json;

    /// HR makes identities; GitHub accounts correlate by e-mail (ignoring
    /// case), then by login.
    fn spec() -> IdentityProfileSpec {
        IdentityProfile::test("employees")
            .authoritative("hr")
            .correlate_ignoring_case("github", "email", "email")
            .correlate("github", "username", "githubLogin")
            .attribute("email", "accounts.hr.email")
            .attribute("displayName", "accounts.hr.displayName")
            .attribute("employeeId", "accounts.hr.id")
            .attribute("managerId", "accounts.hr.manager_id")
            .attribute("title", "accounts.hr.title")
            .attribute(
                "githubLogin",
                "has(accounts.hr.github_login) ? accounts.hr.github_login : (has(accounts.github) ? accounts.github.username : null)",
            )
            .attribute("badge", "int(accounts.hr.badge)")
            .lifecycle(
                "has(accounts.hr.termination_date) && date(accounts.hr.termination_date) <= now ? 'terminated' : date(accounts.hr.hire_date) > now ? 'prehire' : 'active'",
                ["prehire", "active", "terminated"],
            )
            .manager("managerId", "employeeId")
            .schedule(["0 8 * * *", "0 20 * * *"], "America/Chicago")
            .spec()
    }

    fn person(id: &str, name: &str, email: &str, manager: &str, extra: &[(&str, &str)]) -> Account {
        let mut a = Account::new(id);
        a.display_name = Some(name.to_string());
        a.email = Some(email.to_string());
        a.attributes.insert("manager_id".into(), json!(manager));
        a.attributes.insert("hire_date".into(), json!("2020-01-01"));
        a.attributes.insert("title".into(), json!("Engineer"));
        a.attributes.insert("badge".into(), json!(id.trim_start_matches('E')));
        for (k, v) in extra {
            a.attributes.insert(k.to_string(), json!(v));
        }
        a
    }

    fn github(id: &str, email: Option<&str>, login: &str) -> Account {
        let mut a = Account::new(id);
        a.email = email.map(str::to_string);
        a.username = Some(login.to_string());
        a
    }

    fn hr() -> Vec<Account> {
        vec![
            // E1 names itself: the top of the hierarchy.
            person("E1", "Ada", "ada@acme.com", "E1", &[]),
            // E2 and E3 manage each other.
            person("E2", "Bob", "BOB@acme.com", "E3", &[]),
            person("E3", "Cy", "cy@acme.com", "E2", &[]),
            // E4's manager does not exist.
            person("E4", "Dee", "shared@acme.com", "E9", &[]),
            // E5 shares E4's e-mail and has left.
            person("E5", "Eve", "shared@acme.com", "E1", &[("termination_date", "2026-06-30")]),
            // E6 starts next year and is found on GitHub by login.
            person("E6", "Fay", "fay@acme.com", "E1", &[("hire_date", "2027-03-01"), ("github_login", "fay-gh")]),
        ]
    }

    fn github_accounts() -> Vec<Account> {
        vec![
            github("g1", Some("ada@ACME.com"), "ada"),
            github("g2", Some("shared@acme.com"), "shared"),
            github("g3", Some("nobody@example.com"), "zed"),
            github("g4", None, "fay-gh"),
            github("g5", Some("bob@acme.com"), "bobby"),
        ]
    }

    /// New identities of `accounts` with no other connection's accounts,
    /// ready for `evaluate_batch`.
    fn uncorrelated(accounts: &[(Account, ContentHash)]) -> Vec<Evaluated<'_>> {
        accounts
            .iter()
            .map(|(account, hash)| Evaluated {
                account,
                correlated: Vec::new(),
                stored: None,
                input_hash: input_hash("m", "hr", account, hash, &[]),
                keys: BTreeMap::new(),
                keys_hash: String::new(),
            })
            .collect()
    }

    fn with_hashes(accounts: Vec<Account>) -> Vec<(Account, ContentHash)> {
        let mut v: Vec<(Account, ContentHash)> = accounts
            .into_iter()
            .map(|a| {
                let h = a.content_hash();
                (a, h)
            })
            .collect();
        v.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        v
    }

    fn snapshot(hr: Vec<Account>, gh: Vec<Account>) -> ProcessingSnapshot {
        ProcessingSnapshot {
            accounts: [("hr".to_string(), with_hashes(hr)), ("github".to_string(), with_hashes(gh))].into(),
            ..Default::default()
        }
    }

    /// What the store would hold after committing `outcome`.
    fn commit(snapshot: &mut ProcessingSnapshot, outcome: &Outcome) {
        for identity in &outcome.commit.upserts {
            snapshot.identities.insert(identity.id.clone(), identity.clone());
        }
        for id in &outcome.commit.deletes {
            snapshot.identities.remove(id);
        }
        for link in &outcome.commit.link_upserts {
            snapshot.links.insert((link.connection.clone(), link.account_id.clone()), link.clone());
        }
        for key in &outcome.commit.link_deletes {
            snapshot.links.remove(key);
        }
        snapshot.state = outcome.commit.state.clone();
    }

    /// A run that passes no bound, as every run of these fixtures does.
    fn run(
        spec: &IdentityProfileSpec,
        compiled: &CompiledProfile,
        snapshot: &ProcessingSnapshot,
        selection: &Selection,
        now: Timestamp,
    ) -> Outcome {
        super::run(spec, compiled, snapshot, selection, now).expect("within the evaluation bounds")
    }

    fn compiled(spec: &IdentityProfileSpec) -> CompiledProfile {
        CompiledProfile::compile(&spec.attributes, spec.lifecycle.as_ref()).expect("compiles")
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn identity<'a>(snapshot: &'a ProcessingSnapshot, id: &str) -> &'a Identity {
        snapshot.identities.get(id).unwrap_or_else(|| panic!("identity {id}"))
    }

    #[test]
    fn a_fixture_with_known_answers() {
        let spec = spec();
        let mut snap = snapshot(hr(), github_accounts());
        let now = at("2026-11-22T12:00:00Z");
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, now);
        commit(&mut snap, &outcome);

        assert_eq!(outcome.processed, 6);
        assert_eq!(outcome.changed, 6, "all created");
        assert_eq!(outcome.errors, 0);
        let summary = &outcome.summary;
        assert_eq!(summary.identities, 6);
        assert_eq!(
            summary.lifecycle_states,
            [("active".to_string(), 4), ("prehire".to_string(), 1), ("terminated".to_string(), 1)].into()
        );
        assert_eq!(summary.uncorrelated_accounts, 1, "g3");
        assert_eq!(summary.ambiguous_accounts, 1, "g2");
        assert_eq!(summary.unresolved_managers, 1, "E4's manager E9");

        // Correlation: case-insensitive e-mail, then login; the duplicate
        // e-mail is reported with both candidates and attached to nobody.
        let link = |id: &str| snap.links.get(&("github".to_string(), id.to_string())).expect("link").clone();
        assert_eq!((link("g1").state, link("g1").identity.as_deref()), (LinkState::Correlated, Some("E1")));
        assert_eq!((link("g5").state, link("g5").identity.as_deref()), (LinkState::Correlated, Some("E2")));
        assert_eq!((link("g4").state, link("g4").identity.as_deref()), (LinkState::Correlated, Some("E6")));
        assert_eq!(link("g2").state, LinkState::Ambiguous);
        assert_eq!(link("g2").candidates, vec!["E4".to_string(), "E5".to_string()]);
        assert_eq!(link("g3").state, LinkState::Uncorrelated);
        assert!(identity(&snap, "E4").accounts.iter().all(|a| a.connection == "hr"));
        assert!(identity(&snap, "E5").accounts.iter().all(|a| a.connection == "hr"));

        // Attributes see correlated accounts.
        let e2 = identity(&snap, "E2");
        assert_eq!(e2.attributes["githubLogin"], json!("bobby"));
        assert_eq!(e2.attributes["email"], json!("BOB@acme.com"));
        assert_eq!(
            e2.accounts,
            vec![
                AccountLink { connection: "hr".into(), account_id: "E2".into() },
                AccountLink { connection: "github".into(), account_id: "g5".into() }
            ]
        );

        // Managers: self is the top, a cycle resolves both ways, a missing
        // manager stays unresolved.
        assert_eq!(identity(&snap, "E1").manager, None);
        assert!(identity(&snap, "E1").top_of_hierarchy, "E1 names itself");
        assert!(!identity(&snap, "E4").top_of_hierarchy, "E4's manager is missing, not E4");
        assert!(!identity(&snap, "E2").top_of_hierarchy);
        assert_eq!(identity(&snap, "E2").manager.as_deref(), Some("E3"));
        assert_eq!(identity(&snap, "E3").manager.as_deref(), Some("E2"));
        assert_eq!(
            (identity(&snap, "E4").manager_ref.as_deref(), identity(&snap, "E4").manager.as_deref()),
            (Some("E9"), None)
        );
        assert_eq!(identity(&snap, "E5").manager.as_deref(), Some("E1"));

        // Lifecycle from dates.
        assert_eq!(identity(&snap, "E5").lifecycle_state.as_deref(), Some("terminated"));
        assert_eq!(identity(&snap, "E6").lifecycle_state.as_deref(), Some("prehire"));
        assert_eq!(identity(&snap, "E1").lifecycle_state.as_deref(), Some("active"));
        assert!(snap.identities.values().all(|i| i.created == now && i.modified == now));
    }

    #[test]
    fn an_event_based_run_processes_exactly_the_changed_identity() {
        let spec = spec();
        let mut snap = snapshot(hr(), github_accounts());
        let first = at("2026-11-22T12:00:00Z");
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, first);
        commit(&mut snap, &outcome);

        // Bob is promoted in the HR system.
        let mut people = hr();
        people[1].attributes.insert("title".into(), json!("Staff Engineer"));
        snap.accounts.insert("hr".into(), with_hashes(people));
        let later = at("2026-11-22T13:00:00Z");
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::Changed, later);
        assert_eq!(outcome.processed, 1);
        assert_eq!(outcome.changed, 1);
        assert_eq!(outcome.commit.upserts.len(), 1);
        assert_eq!(outcome.commit.upserts[0].id, "E2");
        assert_eq!(outcome.commit.upserts[0].attributes["title"], json!("Staff Engineer"));
        assert_eq!(outcome.commit.upserts[0].modified, later);
        assert!(outcome.commit.link_upserts.is_empty() && outcome.commit.link_deletes.is_empty());
        commit(&mut snap, &outcome);
        assert!(snap.identities.values().filter(|i| i.id != "E2").all(|i| i.modified == first));

        // Nothing changed since: nothing processed, nothing written.
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::Changed, later);
        assert_eq!((outcome.processed, outcome.changed), (0, 0));
        assert!(outcome.commit.upserts.is_empty());
    }

    #[test]
    fn a_github_account_change_reprocesses_its_identity_only() {
        let spec = spec();
        let mut snap = snapshot(hr(), github_accounts());
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-11-22T12:00:00Z"));
        commit(&mut snap, &outcome);
        let mut gh = github_accounts();
        gh[4].username = Some("robert".into());
        snap.accounts.insert("github".into(), with_hashes(gh));
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::Changed, at("2026-11-22T13:00:00Z"));
        assert_eq!(outcome.processed, 1);
        assert_eq!(outcome.commit.upserts.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["E2"]);
        assert_eq!(outcome.commit.upserts[0].attributes["githubLogin"], json!("robert"));
    }

    #[test]
    fn a_scheduled_run_moves_lifecycle_over_time_and_writes_only_changes() {
        let spec = spec();
        let mut people = hr();
        people[0].attributes.insert("termination_date".into(), json!("2026-11-23"));
        let mut snap = snapshot(people, github_accounts());
        // 2026-11-22 20:00 America/Chicago = 2026-11-23T02:00Z: past midnight UTC.
        let morning = at("2026-11-22T14:00:00Z");
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, morning);
        commit(&mut snap, &outcome);
        assert_eq!(identity(&snap, "E1").lifecycle_state.as_deref(), Some("active"));

        let evening = at("2026-11-23T02:00:00Z");
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, evening);
        assert_eq!(outcome.processed, 6);
        assert_eq!(outcome.changed, 1);
        assert_eq!(outcome.commit.upserts.len(), 1, "unchanged results are not written");
        commit(&mut snap, &outcome);
        assert_eq!(identity(&snap, "E1").lifecycle_state.as_deref(), Some("terminated"));
        assert_eq!(identity(&snap, "E1").modified, evening);
        assert_eq!(identity(&snap, "E2").modified, morning);
    }

    #[test]
    fn only_named_identities_are_processed_and_unknown_names_reported() {
        let spec = spec();
        let mut snap = snapshot(hr(), github_accounts());
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-06-01T12:00:00Z"));
        commit(&mut snap, &outcome);
        assert_eq!(identity(&snap, "E5").lifecycle_state.as_deref(), Some("active"));
        // Time passes E5's termination; only E1 and E5 are asked for.
        let mut people = hr();
        people[0].attributes.insert("termination_date".into(), json!("2026-07-01"));
        snap.accounts.insert("hr".into(), with_hashes(people));
        let only = Selection::Only(["E5".to_string(), "E3".to_string(), "E404".to_string()].into());
        let outcome = run(&spec, &compiled(&spec), &snap, &only, at("2026-08-01T12:00:00Z"));
        assert_eq!(outcome.processed, 2);
        assert_eq!(outcome.unknown, vec!["E404".to_string()]);
        let written: Vec<&str> = outcome.commit.upserts.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(written, vec!["E5"], "E1 also left, but was not asked for");
        assert!(outcome.commit.deletes.is_empty());
    }

    #[test]
    fn a_dry_run_preview_counts_transitions_and_attributes() {
        let spec = spec();
        let mut snap = snapshot(hr(), github_accounts());
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-06-01T12:00:00Z"));
        commit(&mut snap, &outcome);
        let mut changed = spec.clone();
        changed.attributes.insert("title".into(), "accounts.hr.title.upperAscii()".into());
        let outcome = run(&changed, &compiled(&changed), &snap, &Selection::All, at("2026-08-01T12:00:00Z"));
        assert_eq!(
            outcome.preview,
            vec![
                "6 of 6 identities would change, 0 would be created, 0 removed".to_string(),
                "lifecycleState active → terminated: 1 (e.g. E5)".to_string(),
                "attribute title: 6 (e.g. E1, E2, E3)".to_string(),
                // Then each identity, before → after (ten at most).
                "E1: title Engineer → ENGINEER".to_string(),
                "E2: title Engineer → ENGINEER".to_string(),
                "E3: title Engineer → ENGINEER".to_string(),
                "E4: title Engineer → ENGINEER".to_string(),
                "E5: lifecycleState active → terminated, title Engineer → ENGINEER".to_string(),
                "E6: title Engineer → ENGINEER".to_string(),
            ]
        );
    }

    #[test]
    fn a_failing_expression_is_recorded_on_its_identity_and_keeps_the_old_value() {
        let spec = spec();
        let mut snap = snapshot(hr(), github_accounts());
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-11-22T12:00:00Z"));
        commit(&mut snap, &outcome);
        assert_eq!(identity(&snap, "E3").attributes["badge"], json!(3));
        let mut people = hr();
        people[2].attributes.insert("badge".into(), json!("not a number"));
        people[2].attributes.insert("title".into(), json!("Manager"));
        snap.accounts.insert("hr".into(), with_hashes(people));
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-11-22T13:00:00Z"));
        assert_eq!((outcome.processed, outcome.errors, outcome.changed), (6, 1, 1));
        commit(&mut snap, &outcome);
        let e3 = identity(&snap, "E3");
        assert!(e3.errors.contains_key("badge"), "{:?}", e3.errors);
        assert_eq!(e3.attributes["badge"], json!(3), "previous value kept");
        assert_eq!(e3.attributes["title"], json!("Manager"), "other attributes still computed");
        assert_eq!(outcome.summary.identities_with_errors, 1);
    }

    #[test]
    fn an_identity_whose_authoritative_account_is_gone_is_removed() {
        let spec = spec();
        let mut snap = snapshot(hr(), github_accounts());
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-11-22T12:00:00Z"));
        commit(&mut snap, &outcome);
        let people: Vec<Account> = hr().into_iter().filter(|a| a.id != "E1").collect();
        snap.accounts.insert("hr".into(), with_hashes(people));
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::Changed, at("2026-11-22T13:00:00Z"));
        assert_eq!(outcome.commit.deletes, vec!["E1".to_string()]);
        // E1's GitHub account is now uncorrelated; those E1 managed lose
        // their manager.
        assert!(outcome.commit.link_upserts.iter().any(|l| l.account_id == "g1" && l.state == LinkState::Uncorrelated));
        assert_eq!(outcome.summary.identities, 5);
        assert_eq!(outcome.summary.unresolved_managers, 3, "E4, E5 and E6");
    }

    #[test]
    fn time_based_processing_waits_for_an_instant_at_least_a_day_ahead() {
        let mut spec = spec();
        spec.attributes.insert("reviewAt".into(), "has(accounts.hr.review_at) ? accounts.hr.review_at : null".into());
        spec.next_processing_attribute = Some("reviewAt".into());
        let now = at("2026-11-22T12:00:00Z");
        let mut people = hr();
        // 30 hours ahead: scheduled. 10 hours ahead on first sight: not.
        people[0].attributes.insert("review_at".into(), json!("2026-11-23T13:00:00-05:00"));
        people[0].attributes.insert("termination_date".into(), json!("2026-11-23"));
        people[1].attributes.insert("review_at".into(), json!("2026-11-22T22:00:00Z"));
        let mut snap = snapshot(people, github_accounts());
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, now);
        commit(&mut snap, &outcome);
        let due = at("2026-11-23T18:00:00Z");
        assert_eq!(identity(&snap, "E1").next_processing, Some(due));
        assert_eq!(identity(&snap, "E2").next_processing, None);
        assert_eq!(snap.state.next_time_based, Some(due));

        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::Due, at("2026-11-23T17:59:00Z"));
        assert_eq!(outcome.processed, 0, "not before its time");
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::Due, due);
        assert_eq!(outcome.processed, 1);
        assert_eq!(outcome.commit.upserts[0].lifecycle_state.as_deref(), Some("terminated"));
        assert_eq!(outcome.commit.upserts[0].next_processing, None, "done, not rescheduled");
        assert_eq!(outcome.commit.state.next_time_based, None);
    }

    #[test]
    fn correlation_keys_are_kept_until_their_account_or_the_mappings_change() {
        let spec = spec();
        let mut snap = snapshot(hr(), github_accounts());
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-11-22T12:00:00Z"));
        commit(&mut snap, &outcome);
        assert_eq!(identity(&snap, "E1").correlation_keys.get("email").map(String::as_str), Some("ada@acme.com"));
        assert_eq!(identity(&snap, "E6").correlation_keys.get("githubLogin").map(String::as_str), Some("fay-gh"));

        // A kept key is what an event-based run correlates with (it is not
        // computed again): pretend Ada's kept e-mail were Bob's GitHub one.
        let kept = snap.identities.get_mut("E1").expect("E1");
        kept.correlation_keys.insert("email".into(), "bob@acme.com".into());
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::Changed, at("2026-11-22T13:00:00Z"));
        let g5 = outcome.commit.link_upserts.iter().find(|l| l.account_id == "g5").expect("g5 moved");
        assert_eq!((g5.state, g5.candidates.clone()), (LinkState::Ambiguous, vec!["E1".to_string(), "E2".to_string()]));

        // A run over everyone computes them afresh.
        let outcome = run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-11-22T14:00:00Z"));
        let e1 = outcome.commit.upserts.iter().find(|i| i.id == "E1").expect("E1 rewritten");
        assert_eq!(e1.correlation_keys.get("email").map(String::as_str), Some("ada@acme.com"));
        assert!(outcome.commit.link_upserts.is_empty(), "back to what is stored");
    }

    #[test]
    fn a_run_is_abandoned_at_the_first_identity_past_an_evaluation_bound() {
        use crate::identity::expr::{Exceeded, Stop, with_stop};
        let mut spec = spec();
        // Only E4's account has `huge`: a list far past the size bound.
        spec.attributes.insert("big".into(), "has(accounts.hr.huge) ? lists.range(100000000) : []".into());
        let mut people = hr();
        people[3].attributes.insert("huge".into(), json!("yes"));
        let snap = snapshot(people, github_accounts());
        let abandoned = super::run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-11-22T12:00:00Z"))
            .expect_err("abandoned");
        assert_eq!(
            abandoned,
            Abandoned {
                cause: Interrupted::Exceeded {
                    field: "spec.attributes.big".into(),
                    exceeded: Exceeded::Value { function: "lists.range".into() },
                },
                identity: "E4".into(),
                evaluated: 3,
            }
        );
        assert_eq!(
            abandoned.to_string(),
            "spec.attributes.big: `lists.range` would build a value of more than 1048576 bytes (on identity E4, after 3 \
             identities were evaluated)"
        );

        // A pulled stop abandons the run at its first identity.
        let spec = self::spec();
        let snap = snapshot(hr(), github_accounts());
        let stop = Stop::new();
        stop.stop();
        let stopped = with_stop(&stop, || {
            super::run(&spec, &compiled(&spec), &snap, &Selection::All, at("2026-11-22T12:00:00Z"))
        });
        assert_eq!(stopped.map(|_| ()).map_err(|a| a.cause), Err(Interrupted::Stopped));
    }

    #[test]
    fn references_to_missing_attributes_are_problems() {
        let mut spec = spec();
        spec.correlation[0].rules[0].identity_attribute = "mail".into();
        spec.correlation[0].rules[1].account_attribute = "login".into();
        spec.manager.as_mut().expect("manager").match_attribute = "empId".into();
        let problems = check_references(&spec);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].contains("spec.correlation[0].rules[0].identityAttribute") && problems[0].contains("\"mail\"")
        );
        assert!(problems[1].contains("accountAttribute"));
        assert!(problems[2].contains("spec.manager.matchAttribute"));
    }

    #[test]
    fn the_mapping_hash_ignores_schedule_and_policy() {
        let a = spec();
        let mut b = a.clone();
        b.schedule.cron = vec!["0 6 * * *".into()];
        b.apply_policy = idsync_api::identity_profile::ApplyPolicy::Manual;
        assert_eq!(mapping_hash(&a), mapping_hash(&b));
        b.attributes.insert("x".into(), "1".into());
        assert_ne!(mapping_hash(&a), mapping_hash(&b));
    }

    #[test]
    fn batches_evaluated_on_several_threads_give_what_one_thread_gives() {
        let spec = spec();
        let compiled = compiled(&spec);
        let now = at("2026-11-22T12:00:00Z");
        let people: Vec<Account> = (0..1000)
            .map(|n| {
                let extra: &[(&str, &str)] = if n % 7 == 0 { &[("badge", "not a number")] } else { &[] };
                person(&format!("E{n:04}"), "P", &format!("p{n}@acme.com"), "E0000", extra)
            })
            .collect();
        let accounts = with_hashes(people);
        let batch = uncorrelated(&accounts);
        let one = evaluate_batch(&spec, &compiled, &batch, now, 0, 1).expect("within the bounds");
        let three = evaluate_batch(&spec, &compiled, &batch, now, 0, 3).expect("within the bounds");
        assert_eq!(one.len(), 1000);
        assert_eq!(one, three);
        assert_eq!(three.iter().filter(|(_, failed)| *failed).count(), 143);
        assert_eq!(three[500].0.id, "E0500");

        // Given up at the first identity past a bound in the batch's order,
        // counted as one thread counts, whichever thread reached it.
        let mut spec = spec.clone();
        spec.attributes.insert("big".into(), "has(accounts.hr.huge) ? lists.range(100000000) : []".into());
        let compiled = super::CompiledProfile::compile(&spec.attributes, spec.lifecycle.as_ref()).expect("compiles");
        let mut people: Vec<Account> =
            (0..1000).map(|n| person(&format!("E{n:04}"), "P", &format!("p{n}@acme.com"), "E0000", &[])).collect();
        for n in [700, 900] {
            people[n].attributes.insert("huge".into(), json!("yes"));
        }
        let accounts = with_hashes(people);
        let batch = uncorrelated(&accounts);
        for workers in [1, 2, 4] {
            let abandoned = evaluate_batch(&spec, &compiled, &batch, now, 5000, workers).expect_err("abandoned");
            assert_eq!((abandoned.identity.as_str(), abandoned.evaluated), ("E0700", 5700), "{workers} threads");
        }

        // A pulled stop reaches the threads evaluating for the caller.
        let stop = crate::identity::expr::Stop::new();
        stop.stop();
        let stopped = crate::identity::expr::with_stop(&stop, || evaluate_batch(&spec, &compiled, &batch, now, 0, 2));
        assert_eq!(stopped.map(|_| ()).map_err(|a| a.cause), Err(Interrupted::Stopped));
    }
}
