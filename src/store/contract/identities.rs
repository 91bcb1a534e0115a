//! The identity store's contract ([`IdentityStore`], [`ProcessingHistory`]):
//! what a processing run commits reads back whole, deletes and listings
//! behave, versions and deltas tell what changed, purges and history. Run on
//! SQLite and PostgreSQL alike; the fixtures are shared with the backends'
//! own tests (failures injected, corrupt rows).

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde_json::json;

use super::contract_tests;
use crate::model::{
    Account, AccountLink, ConnectionRef, ContentHash, Counts, Identity, LinkRecord, LinkState, NewRun,
    ProcessingRunRecord, ProfileRef, RunFinish, RunId, RunMode, RunOutcome, Trigger,
};
use crate::store::{
    AccountStore, CursorUpdate, IdentityStore, ProcessingCommit, ProcessingHistory, ProfileState, StagedChange,
    StoreError,
};

/// Writes to a store's database behind its back, to stand for a database
/// an older release migrated or one someone edited by hand. Each backend's
/// tests implement it; `sql` is plain enough for both.
pub(crate) trait Vandal {
    fn vandalize(&self, sql: &str);
}

contract_tests!(
    a_commit_round_trips_through_the_snapshot,
    commits_delete_identities_and_links,
    listing_identities_filters_by_state_orders_by_id_and_pages,
    listing_links_filters_by_state_in_connection_and_account_order,
    connection_versions_move_only_when_accounts_change_and_never_back,
    the_snapshot_reads_the_named_connections_of_the_profiles_namespace,
    the_delta_reads_only_what_changed_since_the_versions_the_profile_saw,
    the_delta_reads_the_identities_whose_time_has_come_with_their_accounts,
    purging_a_profile_removes_identities_links_and_state_and_keeps_runs,
    processing_runs_are_newest_first_per_profile,
);

pub(crate) fn time(seconds: i64, nanos: i32) -> Timestamp {
    Timestamp::new(1_750_000_000 + seconds, nanos).unwrap()
}

pub(crate) fn profile(name: &str) -> ProfileRef {
    ProfileRef::new("team-a", name)
}

pub(crate) fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// An identity with every field set.
pub(crate) fn identity(id: &str, state: Option<&str>) -> Identity {
    Identity {
        id: id.into(),
        attributes: BTreeMap::from([
            ("email".to_string(), json!(format!("{id}@example.com"))),
            ("level".to_string(), json!(3)),
            ("nested".to_string(), json!({"a": [1, "two", null], "é": true})),
        ]),
        lifecycle_state: state.map(Into::into),
        manager_ref: Some("M-1".into()),
        manager: Some("M-1".into()),
        top_of_hierarchy: true,
        accounts: vec![
            AccountLink { connection: "hr".into(), account_id: id.into() },
            AccountLink { connection: "ldap".into(), account_id: format!("uid={id}") },
        ],
        errors: BTreeMap::from([("title".to_string(), "no such key: jobTitle".to_string())]),
        input_hash: format!("{:0>64}", id.len()),
        created: time(1, 123_456_789),
        modified: time(2, 1),
        next_processing: Some(time(86_400, 999_999_999)),
        next_processing_value: Some("2025-07-01".into()),
        correlation_keys: BTreeMap::from([("email".to_string(), format!("{id}@example.com"))]),
        keys_hash: "cd".repeat(32),
        time_changes_at: Some(time(172_800, 5_000)),
    }
}

/// An identity with every optional field absent.
pub(crate) fn bare(id: &str) -> Identity {
    Identity { input_hash: "00".into(), ..Identity::new(id, "hr", time(0, 0)) }
}

pub(crate) fn correlated(connection: &str, account_id: &str, identity: &str) -> LinkRecord {
    LinkRecord {
        connection: connection.into(),
        account_id: account_id.into(),
        state: LinkState::Correlated,
        identity: Some(identity.into()),
        candidates: Vec::new(),
    }
}

pub(crate) fn uncorrelated(connection: &str, account_id: &str) -> LinkRecord {
    LinkRecord {
        connection: connection.into(),
        account_id: account_id.into(),
        state: LinkState::Uncorrelated,
        identity: None,
        candidates: Vec::new(),
    }
}

pub(crate) fn ambiguous(connection: &str, account_id: &str, candidates: &[&str]) -> LinkRecord {
    LinkRecord {
        connection: connection.into(),
        account_id: account_id.into(),
        state: LinkState::Ambiguous,
        identity: None,
        candidates: names(candidates),
    }
}

pub(crate) fn state(generation: i64) -> ProfileState {
    ProfileState {
        applied_spec: Some(format!(r#"{{"generation":{generation},"mappings":[]}}"#)),
        applied_generation: Some(generation),
        // u64::MAX: versions are u64 end to end, not squeezed into i64.
        seen_versions: BTreeMap::from([("hr".to_string(), 3), ("ldap".to_string(), u64::MAX)]),
        last_scheduled: Some(time(3_600, 5)),
        next_time_based: Some(time(7_200, 0)),
        mapping_hash: Some(format!("mapping-{generation}")),
        summary: Some(crate::model::IdentitySummary {
            identities: 2,
            lifecycle_states: BTreeMap::from([("active".to_string(), 2)]),
            unresolved_managers: 1,
            ..Default::default()
        }),
    }
}

pub(crate) fn run(trigger: Trigger, outcome: RunOutcome, at: i64) -> ProcessingRunRecord {
    ProcessingRunRecord {
        id: 0,
        trigger,
        request: Some(format!("resync-{at}")),
        started_at: time(at, 1),
        finished_at: time(at + 1, 999),
        outcome,
        processed: 100,
        changed: 7,
        errors: 2,
        message: format!("{trigger} at {at}"),
    }
}

pub(crate) fn commit(upserts: Vec<Identity>, links: Vec<LinkRecord>, state: ProfileState) -> ProcessingCommit {
    ProcessingCommit { upserts, deletes: Vec::new(), link_upserts: links, link_deletes: Vec::new(), state }
}

pub(crate) fn account(id: &str, version: u32) -> Account {
    let mut a = Account::new(id);
    a.email = Some(format!("{id}.v{version}@example.com"));
    a.attributes.insert("version".into(), json!(version));
    a.normalize();
    a
}

/// A whole successful sync of `c`.
pub(crate) fn sync<S: AccountStore>(store: &S, c: &ConnectionRef, changes: &[StagedChange]) {
    let run = store
        .start_run(&NewRun {
            connection: c.clone(),
            trigger: Trigger::Scheduled,
            request: None,
            requested_mode: RunMode::Full,
            holder: "idsync-0".into(),
            started_at: time(0, 0),
        })
        .unwrap();
    store.stage(run, changes).unwrap();
    let finish = RunFinish {
        outcome: RunOutcome::Succeeded,
        mode: Some(RunMode::Full),
        counts: Counts::default(),
        message: String::new(),
        finished_at: time(1, 0),
    };
    store.commit_run(run, CursorUpdate::Keep, &finish).unwrap();
}

pub(crate) fn upserts(accounts: &[Account]) -> Vec<StagedChange> {
    accounts.iter().cloned().map(StagedChange::Upsert).collect()
}

pub(crate) fn sorted_identities(identities: &HashMap<String, Identity>) -> Vec<Identity> {
    let mut all: Vec<Identity> = identities.values().cloned().collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all
}

pub(crate) fn ids(identities: &[Identity]) -> Vec<&str> {
    identities.iter().map(|i| i.id.as_str()).collect()
}

/// Everything the store holds for a profile, to compare before and after.
pub(crate) fn everything<S: IdentityStore + ProcessingHistory>(
    store: &S,
    p: &ProfileRef,
) -> (Vec<Identity>, Vec<LinkRecord>, ProfileState, Vec<RunId>) {
    let snapshot = store.processing_snapshot(p, &[]).unwrap();
    let mut links: Vec<LinkRecord> = snapshot.links.into_values().collect();
    links.sort_by(|a, b| (&a.connection, &a.account_id).cmp(&(&b.connection, &b.account_id)));
    assert_eq!(links, store.list_links(p, None).unwrap());
    assert_eq!(snapshot.state, store.profile_state(p).unwrap());
    let runs = store.processing_runs(p, usize::MAX).unwrap().iter().map(|r| r.id).collect();
    (sorted_identities(&snapshot.identities), links, snapshot.state, runs)
}

fn a_commit_round_trips_through_the_snapshot<S: IdentityStore + ProcessingHistory>(store: &S) {
    let p = profile("people");
    let fresh = store.processing_snapshot(&p, &names(&["hr"])).unwrap();
    assert!(fresh.identities.is_empty() && fresh.links.is_empty());
    assert_eq!(fresh.state, ProfileState::default());
    assert_eq!(store.profile_state(&p).unwrap(), ProfileState::default());

    let identities = vec![identity("E2", Some("Active")), bare("E1"), identity("E3", None)];
    let links = vec![
        correlated("ldap", "uid=E2", "E2"),
        uncorrelated("ldap", "uid=nobody"),
        ambiguous("okta", "00u1", &["E1", "E3"]),
    ];
    let first = run(Trigger::EventBased, RunOutcome::Succeeded, 10);
    let id = store.commit_processing(&p, &commit(identities.clone(), links.clone(), state(4)), &first).unwrap();

    let snapshot = store.processing_snapshot(&p, &names(&["hr"])).unwrap();
    let mut expected = identities.clone();
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(sorted_identities(&snapshot.identities), expected);
    assert!(snapshot.identities.iter().all(|(key, identity)| *key == identity.id));
    assert_eq!(snapshot.links.len(), 3);
    for link in &links {
        assert_eq!(snapshot.links.get(&(link.connection.clone(), link.account_id.clone())), Some(link));
    }
    assert_eq!(snapshot.state, state(4));
    assert_eq!(store.profile_state(&p).unwrap(), state(4));
    assert_eq!(store.get_identity(&p, "E2").unwrap(), Some(identity("E2", Some("Active"))));
    assert_eq!(store.get_identity(&p, "E1").unwrap(), Some(bare("E1")));
    assert_eq!(store.get_identity(&p, "e1").unwrap(), None);
    assert_eq!(store.get_identity(&profile("other"), "E1").unwrap(), None);
    assert_eq!(store.processing_runs(&p, 10).unwrap(), [ProcessingRunRecord { id, ..first.clone() }]);

    // An upsert replaces the whole record, including fields it drops;
    // the state is replaced, not merged.
    let mut changed = identity("E2", Some("Terminated"));
    changed.next_processing = None;
    changed.errors.clear();
    let second = run(Trigger::TimeBased, RunOutcome::Succeeded, 20);
    let later = ProfileState { seen_versions: BTreeMap::from([("hr".to_string(), 4)]), ..ProfileState::default() };
    let id2 = store.commit_processing(&p, &commit(vec![changed.clone()], Vec::new(), later.clone()), &second).unwrap();
    assert!(id2 > id);
    assert_eq!(store.get_identity(&p, "E2").unwrap(), Some(changed));
    assert_eq!(store.profile_state(&p).unwrap(), later);
    assert_eq!(store.list_links(&p, None).unwrap().len(), 3);
    assert_eq!(
        store.processing_runs(&p, 10).unwrap(),
        [ProcessingRunRecord { id: id2, ..second }, ProcessingRunRecord { id, ..first }]
    );
}

fn commits_delete_identities_and_links<S: IdentityStore + ProcessingHistory>(store: &S) {
    let (p, other) = (profile("people"), profile("contractors"));
    let all = || vec![identity("E1", None), identity("E2", None), identity("E3", None)];
    let links = || vec![correlated("ldap", "L1", "E1"), correlated("ldap", "L2", "E2"), uncorrelated("okta", "L1")];
    for q in [&p, &other] {
        store
            .commit_processing(q, &commit(all(), links(), state(1)), &run(Trigger::Scheduled, RunOutcome::Succeeded, 0))
            .unwrap();
    }
    let deleting = ProcessingCommit {
        upserts: Vec::new(),
        // Unknown ids are no-ops, not errors.
        deletes: vec!["E2".into(), "E9".into()],
        link_upserts: Vec::new(),
        link_deletes: vec![("ldap".into(), "L2".into()), ("okta".into(), "L1".into()), ("ldap".into(), "L9".into())],
        state: state(2),
    };
    store.commit_processing(&p, &deleting, &run(Trigger::EventBased, RunOutcome::Succeeded, 1)).unwrap();
    let (identities, links_after, _, _) = everything(store, &p);
    assert_eq!(ids(&identities), ["E1", "E3"]);
    assert_eq!(store.get_identity(&p, "E2").unwrap(), None);
    assert_eq!(links_after, [correlated("ldap", "L1", "E1")]);
    // The same ids of another profile stay.
    let (identities, links_after, _, _) = everything(store, &other);
    assert_eq!(ids(&identities), ["E1", "E2", "E3"]);
    assert_eq!(links_after, links());

    // An id both deleted and upserted in one commit ends up upserted.
    let both = ProcessingCommit {
        upserts: vec![identity("E1", Some("Active"))],
        deletes: vec!["E1".into()],
        ..ProcessingCommit::default()
    };
    store.commit_processing(&p, &both, &run(Trigger::Manual, RunOutcome::Succeeded, 2)).unwrap();
    assert_eq!(store.get_identity(&p, "E1").unwrap(), Some(identity("E1", Some("Active"))));
}

fn listing_identities_filters_by_state_orders_by_id_and_pages<S: IdentityStore + ProcessingHistory>(store: &S) {
    let p = profile("people");
    let scrambled = [
        ("m", Some("Active")),
        ("a10", Some("Terminated")),
        ("B", Some("Active")),
        ("a2", None),
        ("é", Some("Active")),
        ("a1", Some("Active")),
        ("z", Some("Terminated")),
        ("a", Some("Active")),
    ];
    let identities = scrambled.iter().map(|(id, state)| identity(id, *state)).collect();
    store
        .commit_processing(
            &p,
            &commit(identities, Vec::new(), state(1)),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
        )
        .unwrap();
    // Another profile's identities never show.
    store
        .commit_processing(
            &profile("other"),
            &commit(vec![identity("a0", Some("Active"))], Vec::new(), state(1)),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
        )
        .unwrap();

    let list = |state: Option<&str>, after: Option<&str>, limit: usize| {
        store.list_identities(&p, state, after, limit).unwrap()
    };
    assert_eq!(ids(&list(None, None, usize::MAX)), ["B", "a", "a1", "a10", "a2", "m", "z", "é"]);
    assert_eq!(ids(&list(Some("Active"), None, usize::MAX)), ["B", "a", "a1", "m", "é"]);
    assert_eq!(ids(&list(Some("Terminated"), None, usize::MAX)), ["a10", "z"]);
    assert!(list(Some("active"), None, usize::MAX).is_empty());
    assert_eq!(list(Some("Active"), None, 1), [identity("B", Some("Active"))]);

    for state in [None, Some("Active")] {
        let whole = list(state, None, usize::MAX);
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        // Bounded, so paging that stops advancing fails instead of hanging.
        for _ in 0..scrambled.len() {
            let page = list(state, after.as_deref(), 2);
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            paged.extend(page);
        }
        assert_eq!(paged, whole, "{state:?}");
    }
    // `after` need not be a stored id.
    assert_eq!(ids(&list(Some("Active"), Some("a10"), 5)), ["m", "é"]);
    assert_eq!(ids(&list(None, Some("a11"), 1)), ["a2"]);
    assert!(list(None, None, 0).is_empty());
    assert!(list(None, Some("é"), 5).is_empty());
    assert!(store.list_identities(&profile("never"), None, None, 5).unwrap().is_empty());
}

fn listing_links_filters_by_state_in_connection_and_account_order<S: IdentityStore + ProcessingHistory>(store: &S) {
    let p = profile("people");
    let links = vec![
        uncorrelated("okta", "00u2"),
        correlated("ldap", "uid=b", "E2"),
        ambiguous("ldap", "uid=c", &["E1", "E2"]),
        correlated("ldap", "uid=a", "E1"),
        uncorrelated("ldap", "uid=z"),
        ambiguous("ad", "S-1", &["E3", "E4", "E5"]),
        correlated("okta", "00u1", "E3"),
    ];
    store
        .commit_processing(&p, &commit(Vec::new(), links, state(1)), &run(Trigger::Scheduled, RunOutcome::Succeeded, 0))
        .unwrap();
    store
        .commit_processing(
            &profile("other"),
            &commit(Vec::new(), vec![correlated("ad", "S-0", "E0")], state(1)),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
        )
        .unwrap();

    let keys = |state| -> Vec<String> {
        store.list_links(&p, state).unwrap().iter().map(|l| format!("{}/{}", l.connection, l.account_id)).collect()
    };
    assert_eq!(
        keys(None),
        ["ad/S-1", "ldap/uid=a", "ldap/uid=b", "ldap/uid=c", "ldap/uid=z", "okta/00u1", "okta/00u2"]
    );
    assert_eq!(keys(Some(LinkState::Correlated)), ["ldap/uid=a", "ldap/uid=b", "okta/00u1"]);
    assert_eq!(keys(Some(LinkState::Uncorrelated)), ["ldap/uid=z", "okta/00u2"]);
    assert_eq!(
        store.list_links(&p, Some(LinkState::Ambiguous)).unwrap(),
        [ambiguous("ad", "S-1", &["E3", "E4", "E5"]), ambiguous("ldap", "uid=c", &["E1", "E2"])]
    );
    assert!(store.list_links(&profile("never"), None).unwrap().is_empty());
}

fn connection_versions_move_only_when_accounts_change_and_never_back<
    S: AccountStore + IdentityStore + ProcessingHistory,
>(
    store: &S,
) {
    let (hr, ldap) = (ConnectionRef::new("team-a", "hr"), ConnectionRef::new("team-a", "ldap"));
    let wanted = names(&["hr", "ldap", "never-synced"]);
    let versions = || store.connection_versions("team-a", &wanted).unwrap();
    let hr_version = || versions()["hr"];
    assert_eq!(versions(), BTreeMap::from([("hr".into(), 0), ("ldap".into(), 0), ("never-synced".into(), 0)]));
    assert!(store.connection_versions("team-a", &[]).unwrap().is_empty());

    sync(store, &hr, &upserts(&[account("E1", 1), account("E2", 1)]));
    assert_eq!(hr_version(), 1);
    // Nothing new: the same accounts again, nothing at all, or deleting
    // an account that is not there.
    sync(store, &hr, &upserts(&[account("E1", 1), account("E2", 1)]));
    sync(store, &hr, &[]);
    sync(store, &hr, &[StagedChange::Delete("E9".into())]);
    assert_eq!(hr_version(), 1);
    // One step per commit, however many accounts it changed.
    sync(store, &hr, &upserts(&[account("E1", 2), account("E2", 1), account("E3", 1)]));
    assert_eq!(hr_version(), 2);
    sync(store, &hr, &[StagedChange::Delete("E3".into())]);
    assert_eq!(hr_version(), 3);

    // Other connections and the same name in another namespace are apart.
    sync(store, &ConnectionRef::new("team-b", "hr"), &upserts(&[account("X", 1)]));
    assert_eq!(store.connection_versions("team-b", &names(&["hr"])).unwrap()["hr"], 1);
    assert_eq!(versions(), BTreeMap::from([("hr".into(), 3), ("ldap".into(), 0), ("never-synced".into(), 0)]));
    // A connection whose runs committed nothing is still at 0.
    sync(store, &ldap, &[]);
    assert_eq!(versions()["ldap"], 0);

    // A purge changes the accounts; one of nothing does not.
    assert_eq!(store.purge_connection(&hr).unwrap(), 2);
    assert_eq!(hr_version(), 4);
    assert_eq!(store.purge_connection(&hr).unwrap(), 0);
    assert_eq!(hr_version(), 4);
    // Back with the very accounts it had before: still a new version.
    sync(store, &hr, &upserts(&[account("E1", 2), account("E2", 1)]));
    assert_eq!(hr_version(), 5);
    assert_eq!(store.processing_snapshot(&profile("people"), &names(&["hr"])).unwrap().versions["hr"], 5);
}

fn the_snapshot_reads_the_named_connections_of_the_profiles_namespace<
    S: AccountStore + IdentityStore + ProcessingHistory,
>(
    store: &S,
) {
    let p = profile("people");
    let hr_accounts = [account("E2", 1), account("E10", 2), account("E1", 1)];
    sync(store, &ConnectionRef::new("team-a", "hr"), &upserts(&hr_accounts));
    sync(store, &ConnectionRef::new("team-a", "ldap"), &upserts(&[account("uid=a", 1)]));
    sync(store, &ConnectionRef::new("team-a", "ldap"), &upserts(&[account("uid=a", 2)]));
    sync(store, &ConnectionRef::new("team-a", "okta"), &upserts(&[account("00u1", 1)]));
    sync(store, &ConnectionRef::new("team-b", "hr"), &upserts(&[account("B1", 1)]));

    // Asked twice for hr: read once.
    let snapshot = store.processing_snapshot(&p, &names(&["ldap", "hr", "missing", "hr"])).unwrap();
    assert_eq!(snapshot.accounts.keys().collect::<Vec<_>>(), ["hr", "ldap", "missing"]);
    let mut expected: Vec<(Account, ContentHash)> = hr_accounts.iter().map(|a| (a.clone(), a.content_hash())).collect();
    expected.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    assert_eq!(snapshot.accounts["hr"], expected);
    assert_eq!(snapshot.accounts["ldap"], [(account("uid=a", 2), account("uid=a", 2).content_hash())]);
    assert!(snapshot.accounts["missing"].is_empty());
    assert_eq!(snapshot.versions, BTreeMap::from([("hr".into(), 1), ("ldap".into(), 2), ("missing".into(), 0)]));

    let elsewhere = store.processing_snapshot(&ProfileRef::new("team-b", "people"), &names(&["hr"])).unwrap();
    assert_eq!(snapshot_ids(&elsewhere.accounts["hr"]), ["B1"]);
    assert!(store.processing_snapshot(&p, &[]).unwrap().accounts.is_empty());
}

fn the_delta_reads_only_what_changed_since_the_versions_the_profile_saw<
    S: AccountStore + IdentityStore + ProcessingHistory + Vandal,
>(
    store: &S,
) {
    let p = profile("people");
    let (hr, ldap) = (ConnectionRef::new("team-a", "hr"), ConnectionRef::new("team-a", "ldap"));
    let wanted = names(&["hr", "ldap"]);
    sync(store, &hr, &upserts(&(1..=50).map(|n| account(&format!("E{n:02}"), 1)).collect::<Vec<_>>()));
    sync(store, &ldap, &upserts(&[account("uid=E01", 1), account("uid=E02", 1)]));
    // Never processed: the store cannot tell what is new to it.
    assert!(store.processing_delta(&p, &wanted, time(0, 0)).unwrap().is_none());

    // Processed as of these versions; E01 has its LDAP account.
    let mut e01 = identity("E01", Some("active"));
    e01.accounts[1].account_id = "uid=E01".into();
    let identities: Vec<Identity> = std::iter::once(e01).chain((2..=50).map(|n| bare(&format!("E{n:02}")))).collect();
    let seen = ProfileState { seen_versions: store.connection_versions("team-a", &wanted).unwrap(), ..state(1) };
    store
        .commit_processing(
            &p,
            &commit(identities, Vec::new(), seen.clone()),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
        )
        .unwrap();
    let delta = store.processing_delta(&p, &wanted, time(0, 0)).unwrap().expect("a delta");
    assert!(delta.changed.values().all(Vec::is_empty) && delta.identities.is_empty() && delta.accounts.is_empty());
    assert_eq!(delta.versions, seen.seen_versions);
    assert_eq!(delta.state, seen);

    // Two syncs later: E01 changed, E03 too and then back (still marked:
    // its hash moved twice), E50 removed, E51 created; the same E02 again
    // changes nothing.
    sync(store, &hr, &upserts(&[account("E01", 2), account("E02", 1), account("E03", 2), account("E51", 1)]));
    sync(store, &hr, &[StagedChange::Upsert(account("E03", 1)), StagedChange::Delete("E50".into())]);
    let delta = store.processing_delta(&p, &wanted, time(0, 0)).unwrap().expect("a delta");
    assert_eq!(delta.changed["hr"], ["E01", "E03", "E50", "E51"]);
    assert!(delta.changed["ldap"].is_empty());
    assert_eq!(delta.versions["hr"], seen.seen_versions["hr"] + 2);
    // Only the changed accounts that exist, their identities, and the
    // accounts those are made of.
    let mut hr_read: Vec<&String> = delta.accounts["hr"].keys().collect();
    hr_read.sort();
    assert_eq!(hr_read, ["E01", "E03", "E51"]);
    assert_eq!(delta.accounts["hr"]["E01"], (account("E01", 2), account("E01", 2).content_hash()));
    assert_eq!(delta.accounts["ldap"].keys().collect::<Vec<_>>(), ["uid=E01"]);
    let mut identities_read: Vec<&String> = delta.identities.keys().collect();
    identities_read.sort();
    assert_eq!(identities_read, ["E01", "E03", "E50"]);

    // A purge marks every account it removes.
    store.purge_connection(&ldap).unwrap();
    let delta = store.processing_delta(&p, &wanted, time(0, 0)).unwrap().expect("a delta");
    assert_eq!(delta.changed["ldap"], ["uid=E01", "uid=E02"]);

    // Marks that start after the version the profile saw cannot say what
    // changed before: a database migrated while the profile was behind.
    store.vandalize("UPDATE connections SET marked_from = version WHERE name = 'hr'");
    assert!(store.processing_delta(&p, &wanted, time(0, 0)).unwrap().is_none());
}

fn the_delta_reads_the_identities_whose_time_has_come_with_their_accounts<
    S: AccountStore + IdentityStore + ProcessingHistory,
>(
    store: &S,
) {
    let p = profile("people");
    let (hr, ldap) = (ConnectionRef::new("team-a", "hr"), ConnectionRef::new("team-a", "ldap"));
    let wanted = names(&["hr", "ldap"]);
    sync(store, &hr, &upserts(&[account("E1", 1), account("E2", 1), account("E3", 1)]));
    sync(store, &ldap, &upserts(&[account("uid=E2", 1)]));
    let due_at = |id: &str, at: Option<Timestamp>| Identity { time_changes_at: at, ..bare(id) };
    let mut e2 = due_at("E2", Some(time(100, 500_000)));
    e2.accounts.push(AccountLink { connection: "ldap".into(), account_id: "uid=E2".into() });
    let identities = vec![due_at("E1", None), e2, due_at("E3", Some(time(200, 0)))];
    let seen = ProfileState { seen_versions: store.connection_versions("team-a", &wanted).unwrap(), ..state(1) };
    store
        .commit_processing(
            &p,
            &commit(identities, Vec::new(), seen),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
        )
        .unwrap();
    assert_eq!(store.get_identity(&p, "E2").unwrap().unwrap().time_changes_at, Some(time(100, 500_000)));

    let read = |now: Timestamp| store.processing_delta(&p, &wanted, now).unwrap().expect("a delta");
    let before = read(time(100, 0));
    assert!(before.time_due.is_empty() && before.identities.is_empty() && before.accounts.is_empty());
    // At its instant (to the microsecond), with the accounts it is made
    // of, and nothing else.
    let due = read(time(100, 500_000));
    assert_eq!(due.time_due, ["E2"]);
    assert_eq!(due.identities.keys().collect::<Vec<_>>(), ["E2"]);
    assert_eq!(due.accounts["hr"].keys().collect::<Vec<_>>(), ["E2"]);
    assert_eq!(due.accounts["ldap"].keys().collect::<Vec<_>>(), ["uid=E2"]);
    assert!(due.changed.values().all(Vec::is_empty));
    assert_eq!(read(time(300, 0)).time_due, ["E2", "E3"]);
}

fn snapshot_ids(accounts: &[(Account, ContentHash)]) -> Vec<&str> {
    accounts.iter().map(|(a, _)| a.id.as_str()).collect()
}

fn purging_a_profile_removes_identities_links_and_state_and_keeps_runs<S: IdentityStore + ProcessingHistory>(
    store: &S,
) {
    let (p, other) = (profile("people"), ProfileRef::new("team-0", "zeta"));
    let links = vec![correlated("ldap", "L1", "E1"), uncorrelated("ldap", "L2")];
    let first = store
        .commit_processing(
            &p,
            &commit(vec![identity("E1", None), identity("E2", None)], links.clone(), state(1)),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
        )
        .unwrap();
    store.record_processing_run(&p, &run(Trigger::Manual, RunOutcome::Failed, 1)).unwrap();
    store
        .commit_processing(
            &other,
            &commit(vec![identity("E1", None)], links.clone(), state(1)),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
        )
        .unwrap();
    // A profile that only ever failed holds nothing to purge.
    store.record_processing_run(&profile("failing"), &run(Trigger::Manual, RunOutcome::Failed, 1)).unwrap();
    assert_eq!(store.profiles().unwrap(), [other.clone(), p.clone()]);

    assert_eq!(store.purge_profile(&p).unwrap(), 2);
    let (identities, links_after, state_after, runs) = everything(store, &p);
    assert!(identities.is_empty() && links_after.is_empty());
    assert_eq!(state_after, ProfileState::default());
    assert_eq!(runs.len(), 2);
    assert_eq!(store.processing_runs(&p, 1).unwrap()[0].outcome, RunOutcome::Failed);
    assert_eq!(store.profiles().unwrap(), std::slice::from_ref(&other));
    assert_eq!(store.list_identities(&other, None, None, 10).unwrap(), [identity("E1", None)]);
    assert_eq!(store.list_links(&other, None).unwrap(), links);
    assert_eq!(store.profile_state(&other).unwrap(), state(1));

    assert_eq!(store.purge_profile(&p).unwrap(), 0);
    assert_eq!(store.purge_profile(&profile("never")).unwrap(), 0);
    // Coming back, it carries on with new run ids after the old ones.
    let again = store
        .commit_processing(
            &p,
            &commit(vec![bare("E3")], Vec::new(), ProfileState::default()),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 9),
        )
        .unwrap();
    assert!(again > first);
    assert_eq!(store.processing_runs(&p, 10).unwrap().len(), 3);
    assert_eq!(store.profiles().unwrap(), [other, p]);
}

fn processing_runs_are_newest_first_per_profile<S: ProcessingHistory + Vandal>(store: &S) {
    let (p, other) = (profile("people"), profile("other"));
    let mut recorded = Vec::new();
    for (i, outcome) in [RunOutcome::Succeeded, RunOutcome::Failed, RunOutcome::DryRun].into_iter().enumerate() {
        let mut r = run(Trigger::ALL[i], outcome, i as i64 * 10);
        r.request = (i % 2 == 0).then(|| format!("resync-{i}"));
        r.processed = u64::from(u32::MAX) + i as u64;
        r.id = store.record_processing_run(&p, &r).unwrap();
        recorded.push(r);
    }
    store.record_processing_run(&other, &run(Trigger::Scheduled, RunOutcome::Succeeded, 99)).unwrap();
    recorded.reverse();
    assert_eq!(store.processing_runs(&p, 10).unwrap(), recorded);
    assert_eq!(store.processing_runs(&p, 2).unwrap(), recorded[..2]);
    assert!(store.processing_runs(&p, 0).unwrap().is_empty());
    assert!(store.processing_runs(&profile("never"), 10).unwrap().is_empty());

    let too_big = ProcessingRunRecord { errors: u64::MAX, ..run(Trigger::Manual, RunOutcome::Failed, 50) };
    assert!(matches!(store.record_processing_run(&p, &too_big), Err(StoreError::OutOfRange { .. })));
    assert_eq!(store.processing_runs(&p, 10).unwrap().len(), 3);

    store.vandalize(&format!("UPDATE processing_runs SET outcome = 'Exploded' WHERE run_id = {}", recorded[0].id));
    let read = store.processing_runs(&p, 10);
    assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
}
