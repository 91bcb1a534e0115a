//! The drift store's contract ([`DriftStore`]): cases keep their first
//! sighting, holds stay until released, and the inputs read are the
//! offboarded identities with what they hold, the accounts nobody holds and
//! the identities missing an expected account. Run on SQLite and PostgreSQL
//! alike.

use std::collections::HashSet;

use jiff::Timestamp;

use super::contract_tests;
use super::identities::{bare, commit, correlated, names, run, sync, uncorrelated, upserts};
use crate::model::{Account, AccountLink, ConnectionRef, Identity, ProfileRef, RunOutcome, Trigger};
use crate::store::drift::{DriftCase, DriftKind, DriftStore, RemovalHold};
use crate::store::{AccountStore, IdentityStore, ProcessingHistory, ProfileState};

contract_tests!(
    a_case_keeps_its_first_sighting_across_runs_and_starts_again_after_it_went,
    a_hold_is_kept_until_released,
    drift_inputs_read_offboarded_access_unowned_accounts_and_missing_ones,
);

fn case(kind: DriftKind, identity: &str, connection: &str, account: &str) -> DriftCase {
    DriftCase {
        kind,
        identity: identity.into(),
        connection: connection.into(),
        account_id: account.into(),
        label: account.into(),
        since: Timestamp::UNIX_EPOCH,
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn a_case_keeps_its_first_sighting_across_runs_and_starts_again_after_it_went<S: DriftStore + IdentityStore>(
    store: &S,
) {
    let p = ProfileRef::new("ns", "employees");
    let offboarded = case(DriftKind::OffboardedWithAccess, "E1", "github", "g1");
    let orphan = case(DriftKind::OrphanAccount, "", "github", "bot");

    let first = store.replace_drift(&p, &[offboarded.clone(), orphan.clone()], "h", at(0)).unwrap();
    assert_eq!(first.new.len(), 2);
    assert!(first.cases.iter().all(|c| c.since == at(0)));

    let second = store.replace_drift(&p, &[offboarded.clone(), orphan.clone()], "h", at(60)).unwrap();
    assert!(second.new.is_empty(), "an unchanged run finds nothing new");
    assert!(second.cases.iter().all(|c| c.since == at(0)), "{:?}", second.cases);

    let third = store.replace_drift(&p, std::slice::from_ref(&orphan), "h", at(120)).unwrap();
    assert_eq!(third.resolved, 1);
    let summary = store.drift_summary(&p).unwrap();
    assert_eq!((summary.offboarded_with_access, summary.orphan_accounts), (0, 1));
    assert_eq!(summary.oldest.get(&DriftKind::OrphanAccount), Some(&at(0)));
    assert_eq!(summary.settings_hash.as_deref(), Some("h"));

    let back = store.replace_drift(&p, &[offboarded.clone(), orphan], "h", at(180)).unwrap();
    assert_eq!(back.new.len(), 1, "a case that went and came back is new again");
    assert_eq!(back.new[0].since, at(180));
    assert_eq!(store.drift_cases(&p).unwrap().len(), 2);

    store.purge_profile(&p).unwrap();
    assert!(store.drift_cases(&p).unwrap().is_empty(), "a purged profile keeps no drift");
}

fn a_hold_is_kept_until_released<S: DriftStore>(store: &S) {
    let p = ProfileRef::new("ns", "employees");
    assert_eq!(store.drift_summary(&p).unwrap().hold, None);
    let hold = RemovalHold { fingerprint: "f".into(), message: "held".into(), held_at: at(0) };
    store.hold_removals(&p, &hold).unwrap();
    assert_eq!(store.drift_summary(&p).unwrap().hold, Some(hold));
    let again = RemovalHold { fingerprint: "g".into(), message: "held again".into(), held_at: at(9) };
    store.hold_removals(&p, &again).unwrap();
    assert_eq!(store.drift_summary(&p).unwrap().hold, Some(again), "a new hold replaces the old");
    store.release_removals(&p).unwrap();
    assert_eq!(store.drift_summary(&p).unwrap().hold, None);
    store.release_removals(&ProfileRef::new("ns", "never")).unwrap();
}

fn enabled(id: &str, enabled: bool) -> Account {
    let mut a = Account::new(id);
    a.enabled = enabled;
    a.normalize();
    a
}

fn with_state(id: &str, state: &str, links: &[(&str, &str)]) -> Identity {
    let mut identity = Identity { lifecycle_state: Some(state.into()), ..bare(id) };
    identity.accounts.extend(
        links.iter().map(|(connection, account)| AccountLink {
            connection: (*connection).into(),
            account_id: (*account).into(),
        }),
    );
    identity
}

fn drift_inputs_read_offboarded_access_unowned_accounts_and_missing_ones<
    S: AccountStore + IdentityStore + ProcessingHistory + DriftStore,
>(
    store: &S,
) {
    let p = ProfileRef::new("team-a", "people");
    let nothing = store.drift_inputs(&p, "hr", &names(&["github"]), &names(&["terminated"]), &names(&["github"]));
    let nothing = nothing.unwrap();
    assert!(nothing.offboarded.is_empty() && nothing.unowned.is_empty() && nothing.missing.is_empty());

    sync(store, &ConnectionRef::new("team-a", "hr"), &upserts(&[enabled("E1", true), enabled("E2", true)]));
    sync(
        store,
        &ConnectionRef::new("team-a", "github"),
        &upserts(&[enabled("g1", true), enabled("g2", true), enabled("bot", true), enabled("old", false)]),
    );
    // The same names in another namespace are not this profile's.
    sync(store, &ConnectionRef::new("team-b", "github"), &upserts(&[enabled("g3", true)]));
    let identities = vec![
        with_state("E1", "terminated", &[("github", "g1"), ("okta", "o1")]),
        with_state("E2", "active", &[("github", "g2")]),
        with_state("E3", "active", &[]),
        with_state("E4", "leaver", &[("github", "g3")]),
        bare("E5"),
    ];
    let links = vec![
        correlated("github", "g1", "E1"),
        correlated("github", "g2", "E2"),
        uncorrelated("github", "bot"),
        uncorrelated("github", "old"),
        uncorrelated("github", "gone"),
        uncorrelated("okta", "o9"),
    ];
    store
        .commit_processing(
            &p,
            &commit(identities, links, ProfileState::default()),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
        )
        .unwrap();

    let inputs = store
        .drift_inputs(&p, "hr", &names(&["github", "okta"]), &names(&["terminated", "leaver"]), &names(&["github"]))
        .unwrap();
    let offboarded: Vec<&str> = inputs.offboarded.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(offboarded, ["E1", "E4"], "by state, as asked for");
    // E1's GitHub account; okta was never synced, and E4's g3 is another
    // namespace's account.
    let held: HashSet<(String, String)> = inputs.held_accounts.keys().cloned().collect();
    assert_eq!(held, HashSet::from([("github".to_string(), "g1".to_string())]));
    assert_eq!(inputs.held_accounts[&("github".to_string(), "g1".to_string())], enabled("g1", true));
    // Enabled and stored only: not the disabled one, not the one gone.
    assert_eq!(inputs.unowned, [("github".to_string(), enabled("bot", true))]);
    // Not offboarded and without a correlated GitHub account, in id order.
    let missing: Vec<&str> = inputs.missing["github"].iter().map(|i| i.id.as_str()).collect();
    assert_eq!(missing, ["E3", "E5"]);
    assert_eq!(inputs.missing["github"][1], bare("E5"));

    let states = store.lifecycle_states(&p, &HashSet::from(["E1", "E5", "E9"])).unwrap();
    assert_eq!(states.len(), 2);
    assert_eq!(states["E1"].as_deref(), Some("terminated"));
    assert_eq!(states["E5"], None);
    assert_eq!(store.identity_count(&p).unwrap(), 5);
    assert_eq!(store.identity_count(&ProfileRef::new("team-a", "never")).unwrap(), 0);
}
