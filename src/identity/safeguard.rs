//! The identity safeguard: a processing run that would remove (their
//! authoritative account is gone) or offboard (move into one of the
//! profile's offboarded states) more than a set share or number of a
//! profile's identities applies nothing and waits for a ResyncRequest with
//! `confirmRemovals: true`, as the import safeguard does for accounts. An
//! HR export cut short, or a lifecycle expression gone wrong, should not
//! offboard a third of the company in one run.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::model::ProfileRef;
use crate::store::drift::RemovalHold;
use crate::store::{ProcessingCommit, StoreError};
use crate::sync::safeguard::percent;
use idsync_api::IdentityProfileSpec;

/// A run the safeguard held back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this run would remove {removed} and offboard {offboarded} of {total} identities ({percent}%), more than the \
     identity safeguard allows ({limit}); nothing was applied. To apply it, create a ResyncRequest with scope \
     Identities, target.profiles [{profile}] and confirmRemovals: true"
)]
pub struct Tripped {
    pub removed: u64,
    pub offboarded: u64,
    pub total: u64,
    pub percent: String,
    pub limit: String,
    pub profile: String,
}

/// What the safeguard made of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guarded {
    /// A note for the run's message (a confirmed or previewed trip).
    pub note: Option<String>,
    /// The run is held back: its message.
    pub held: Option<String>,
}

/// How many identities the commit removes, and how many existing ones it
/// moves into an offboarded state (an identity created offboarded, or
/// already offboarded, is not counted).
pub fn count(
    store: &dyn crate::store::Store,
    p: &ProfileRef,
    spec: &IdentityProfileSpec,
    commit: &ProcessingCommit,
) -> Result<(u64, u64), StoreError> {
    let offboarded_states = &spec.drift.offboarded_states;
    let entering: HashSet<&str> = commit
        .upserts
        .iter()
        .filter(|i| i.lifecycle_state.as_ref().is_some_and(|s| offboarded_states.contains(s)))
        .map(|i| i.id.as_str())
        .collect();
    let before = if entering.is_empty() { Default::default() } else { store.lifecycle_states(p, &entering)? };
    let offboarded =
        before.values().filter(|state| !state.as_ref().is_some_and(|s| offboarded_states.contains(s))).count() as u64;
    Ok((commit.deletes.len() as u64, offboarded))
}

/// Checks a run's commit: the hook before it commits. `confirmed` runs
/// pass with a note; a dry run is never held (it applies nothing) but says
/// it would be; any other trip is recorded as the profile's hold and held.
#[allow(clippy::too_many_arguments)]
pub fn guard(
    store: &dyn crate::store::Store,
    p: &ProfileRef,
    spec: &IdentityProfileSpec,
    commit: &ProcessingCommit,
    versions: &BTreeMap<String, u64>,
    confirmed: bool,
    dry_run: bool,
    now: Timestamp,
) -> Result<Guarded, StoreError> {
    let (removed, offboarded) = count(store, p, spec, commit)?;
    if removed + offboarded == 0 {
        return Ok(Guarded::default());
    }
    let total = store.identity_count(p)?;
    let Some(tripped) = check(removed, offboarded, total, spec, &p.name) else { return Ok(Guarded::default()) };
    if dry_run {
        return Ok(Guarded { note: Some(format!("a run without dryRun would be held back: {tripped}")), held: None });
    }
    if confirmed {
        return Ok(Guarded {
            note: Some(format!(
                "{} removal(s) and {} offboarding(s) of {} identities ({}%) confirmed by confirmRemovals, over the \
                 identity safeguard's {}",
                tripped.removed, tripped.offboarded, tripped.total, tripped.percent, tripped.limit
            )),
            held: None,
        });
    }
    let message = tripped.to_string();
    store.hold_removals(
        p,
        &RemovalHold { fingerprint: fingerprint(versions, spec), message: message.clone(), held_at: now },
    )?;
    Ok(Guarded { note: None, held: Some(message) })
}

/// The trip, if `removed + offboarded` of `total` is over the settings.
pub fn check(removed: u64, offboarded: u64, total: u64, spec: &IdentityProfileSpec, profile: &str) -> Option<Tripped> {
    let settings = &spec.identity_safeguard;
    let affected = removed + offboarded;
    if affected == 0 || total == 0 {
        return None;
    }
    let over_percent = settings.max_remove_percent < 100
        && affected > settings.min_removals_for_percent
        && u128::from(affected) * 100 > u128::from(settings.max_remove_percent) * u128::from(total);
    let over_count = settings.max_remove_count.is_some_and(|max| affected > max);
    if !(over_percent || over_count) {
        return None;
    }
    let limit = match (over_percent, settings.max_remove_count) {
        (true, _) => format!("{}%", settings.max_remove_percent),
        (false, Some(max)) => format!("{max} identities"),
        (false, None) => String::new(),
    };
    Some(Tripped { removed, offboarded, total, percent: percent(affected, total), limit, profile: profile.to_string() })
}

/// What a run saw: the accounts versions of its connections and its
/// mappings. The same fingerprint is the same run again, which a hold
/// keeps from repeating at every reconcile.
pub fn fingerprint(versions: &BTreeMap<String, u64>, spec: &IdentityProfileSpec) -> String {
    let seen = serde_json::json!({
        "versions": versions,
        "mappings": crate::identity::process::mapping_hash(spec),
        "offboarded": spec.drift.offboarded_states,
        "safeguard": spec.identity_safeguard,
    });
    Sha256::digest(seen.to_string().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the hold still stands for a run over `versions` with `spec`:
/// nothing it saw changed, so running again would only trip again.
pub fn still_held(hold: Option<&RemovalHold>, versions: &BTreeMap<String, u64>, spec: &IdentityProfileSpec) -> bool {
    hold.is_some_and(|h| h.fingerprint == fingerprint(versions, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Identity;
    use crate::store::{IdentityStore, SqliteStore};
    use idsync_api::IdentityProfile;

    fn spec() -> IdentityProfileSpec {
        IdentityProfile::test("employees").authoritative("hr").spec()
    }

    #[test]
    fn shares_and_counts_over_the_settings_trip() {
        let mut spec = spec();
        assert_eq!(check(4, 0, 20, &spec, "p"), None, "20% is the limit, not over it");
        assert_eq!(check(1, 1, 4, &spec, "p"), None, "a few removals in a small profile are an ordinary day");
        let tripped = check(4, 4, 20, &spec, "p").expect("40% trips");
        assert_eq!(tripped.percent, "40");
        spec.identity_safeguard.min_removals_for_percent = 0;
        assert!(check(2, 2, 10, &spec, "p").is_some(), "without the floor, 4 of 10 trips");
        assert!(tripped.to_string().contains("confirmRemovals: true"), "{tripped}");
        spec.identity_safeguard.max_remove_percent = 100;
        assert_eq!(check(9, 0, 10, &spec, "p"), None, "100 turns the share off");
        spec.identity_safeguard.max_remove_count = Some(3);
        assert_eq!(check(2, 2, 1000, &spec, "p").map(|t| t.limit), Some("3 identities".to_string()));
        assert_eq!(check(0, 0, 0, &spec, "p"), None);
    }

    #[test]
    fn only_identities_that_exist_and_were_not_offboarded_count_as_offboarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let p = ProfileRef::new("ns", "employees");
        let at = Timestamp::UNIX_EPOCH;
        let existing = ProcessingCommit {
            upserts: vec![
                Identity::new("E1", "hr", at).with_state("active"),
                Identity::new("E2", "hr", at).with_state("terminated"),
                Identity::new("E3", "hr", at).with_state("active"),
            ],
            ..Default::default()
        };
        let run = crate::model::ProcessingRunRecord {
            id: 0,
            trigger: crate::model::Trigger::Manual,
            request: None,
            started_at: at,
            finished_at: at,
            outcome: crate::model::RunOutcome::Succeeded,
            processed: 3,
            changed: 3,
            errors: 0,
            message: String::new(),
        };
        store.commit_processing(&p, &existing, &run).unwrap();
        let next = ProcessingCommit {
            upserts: vec![
                Identity::new("E1", "hr", at).with_state("terminated"),
                Identity::new("E2", "hr", at).with_state("terminated"),
                Identity::new("E9", "hr", at).with_state("terminated"),
            ],
            deletes: vec!["E3".into()],
            ..Default::default()
        };
        assert_eq!(count(&store, &p, &spec(), &next).unwrap(), (1, 1));

        // 2 of 3 is over 20% (with no floor): held, and the hold is kept
        // with what it saw.
        let mut spec = spec();
        spec.identity_safeguard.min_removals_for_percent = 0;
        let spec = || spec.clone();
        let versions = BTreeMap::from([("hr".to_string(), 4)]);
        let guarded = guard(&store, &p, &spec(), &next, &versions, false, true, at).unwrap();
        assert!(guarded.held.is_none() && guarded.note.is_some(), "a dry run is never held: {guarded:?}");
        assert_eq!(crate::store::drift::DriftStore::drift_summary(&store, &p).unwrap().hold, None);
        let guarded = guard(&store, &p, &spec(), &next, &versions, false, false, at).unwrap();
        assert!(guarded.held.is_some());
        let hold = crate::store::drift::DriftStore::drift_summary(&store, &p).unwrap().hold;
        assert!(still_held(hold.as_ref(), &versions, &spec()));
        let later = BTreeMap::from([("hr".to_string(), 5)]);
        assert!(!still_held(hold.as_ref(), &later, &spec()), "new accounts are a new run");
        let confirmed = guard(&store, &p, &spec(), &next, &versions, true, false, at).unwrap();
        assert!(confirmed.held.is_none() && confirmed.note.is_some_and(|n| n.contains("confirmed")));
    }
}
