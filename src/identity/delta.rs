//! An event-based processing run over the changed identities only: the
//! store's [`ProcessingDelta`] (the accounts that changed since the profile
//! last processed, their identities and the accounts those are made of) in,
//! the same [`Outcome`] a run over the whole snapshot with
//! `Selection::Changed` would give out, or None when the changes are of a
//! kind only a run over everyone can decide.
//!
//! What it decides alone: authoritative accounts that changed while keeping
//! their correlation keys, their manager reference and the value others
//! find them by as manager. Everything else goes to the full run:
//! - accounts created or removed, and changes to correlated connections
//!   (correlation is over all accounts and all identities' keys);
//! - changed correlation keys, manager references or manager match values
//!   (they can move accounts or managers of other identities);
//! - identities whose next-processing time has come, and a next-processing
//!   time that was the profile's earliest and moved;
//! - a profile whose identities were computed with other mappings, or
//!   whose numbers the store does not have.
//!
//! Identities not in the delta are not read: their inputs did not change
//! (the store's change marks say so), so a full run would skip them too.
//!
//! The delta also holds the identities whose `time_changes_at` has come:
//! an expression comparing `now` with an instant they reached may compute
//! something else now (see `expr::time`), so they are evaluated though no
//! account changed. With that, a run over everyone whose mappings did not
//! change ([`Scope::Everyone`]: a scheduled one) is decided here too:
//! every other identity would compute what it has. The store's change marks
//! are trusted for it as for event-based runs; a run after a spec change, a
//! request (a person asking for everyone to be computed again), a dry run
//! and a profile that reads `now` other than in comparisons still evaluate
//! everyone.

use std::collections::{BTreeSet, HashMap};

use jiff::Timestamp;

use super::expr::{CompiledProfile, TimeUse};
use super::process::{
    Abandoned, Evaluated, Outcome, Preview, Summary, compute_keys, evaluate_identity, input_hash, key_attributes,
    keys_hash, mapping_hash, scalar_text, visible_change,
};
use crate::model::{Account, ContentHash, Identity};
use crate::store::{ProcessingDelta, ProfileState};
use idsync_api::IdentityProfileSpec;

/// Which full run a run over a delta stands in for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// An event-based run (`Selection::Changed`): identities whose inputs
    /// changed or whose time has come.
    Changed,
    /// A run over everyone (`Selection::All`: a scheduled one), for
    /// a profile whose mappings did not change: every identity whose inputs
    /// did not change and whose time has not come would compute what it
    /// has, so only the others are evaluated. Not when an expression reads
    /// `now` other than in comparisons (any identity may then change at any
    /// time), nor when correlation keys depend on the time (the kept keys
    /// are not computed again here).
    Everyone,
}

/// Runs an event-based pass over `delta`; None when a full run is needed
/// (see the module's documentation). `now` as in [`super::process::run`].
pub fn run(
    spec: &IdentityProfileSpec,
    compiled: &CompiledProfile,
    delta: &ProcessingDelta,
    scope: Scope,
    now: Timestamp,
) -> Result<Option<Outcome>, Abandoned> {
    let mapping = mapping_hash(spec);
    let state = &delta.state;
    if state.mapping_hash.as_deref() != Some(mapping.as_str()) {
        return Ok(None);
    }
    if scope == Scope::Everyone
        && (compiled.time_use() == TimeUse::Any || compiled.time_use_of(&key_attributes(spec)) != TimeUse::None)
    {
        return Ok(None);
    }
    let Some(mut summary) = state.summary.clone() else { return Ok(None) };
    if state.next_time_based.is_some_and(|t| t <= now) {
        return Ok(None);
    }
    let authoritative = spec.authoritative_connection.as_str();
    if delta.changed.iter().any(|(connection, ids)| connection != authoritative && !ids.is_empty()) {
        return Ok(None);
    }
    let key_attributes = key_attributes(spec);
    let no_accounts = HashMap::new();
    let accounts_of = |connection: &str| delta.accounts.get(connection).unwrap_or(&no_accounts);

    let mut outcome = Outcome::default();
    let mut preview = Preview::default();
    let mut next_time_based = state.next_time_based;
    // Changed or due, each once, in id order.
    let time_due: BTreeSet<&str> = delta.time_due.iter().map(String::as_str).collect();
    let mut ids: BTreeSet<&str> = delta.changed.get(authoritative).into_iter().flatten().map(String::as_str).collect();
    ids.extend(time_due.iter().copied());
    for id in ids {
        let (account, stored) = match (accounts_of(authoritative).get(id), delta.identities.get(id)) {
            (Some((account, hash)), Some(stored)) => ((account, hash), stored),
            // Created and removed again since: nothing to do.
            (None, None) => continue,
            // Created or removed.
            _ => return Ok(None),
        };
        let (account, hash) = account;
        // Its correlated accounts are what is stored: no correlated account
        // changed, and (checked below) neither did its keys.
        let mut correlated: Vec<(&str, &Account, &ContentHash)> = Vec::with_capacity(stored.accounts.len());
        for link in stored.accounts.iter().skip(1) {
            let Some((a, h)) = accounts_of(&link.connection).get(&link.account_id) else { return Ok(None) };
            correlated.push((link.connection.as_str(), a, h));
        }
        let input_hash = input_hash(&mapping, authoritative, account, hash, &correlated);
        if stored.input_hash == input_hash && !time_due.contains(id) {
            continue;
        }
        let keys_hash = keys_hash(&mapping, hash);
        let keys = if stored.keys_hash == keys_hash {
            stored.correlation_keys.clone()
        } else {
            compute_keys(spec, compiled, &key_attributes, account, now)?
        };
        if keys != stored.correlation_keys {
            return Ok(None);
        }
        let (mut identity, failed) = evaluate_identity(
            spec,
            compiled,
            &Evaluated { account, correlated, stored: Some(stored), input_hash, keys, keys_hash },
            now,
            outcome.processed,
        )?;
        if let Some(manager) = &spec.manager {
            let value = |i: &Identity, name: &str| i.attributes.get(name).and_then(scalar_text);
            if value(&identity, &manager.match_attribute) != value(stored, &manager.match_attribute)
                || value(&identity, &manager.attribute) != stored.manager_ref
            {
                return Ok(None);
            }
        }
        if spec.next_processing_attribute.is_some() && identity.next_processing != stored.next_processing {
            if stored.next_processing.is_some() && stored.next_processing == state.next_time_based {
                return Ok(None);
            }
            if let Some(t) = identity.next_processing {
                next_time_based = Some(next_time_based.map_or(t, |n| n.min(t)));
            }
        }
        outcome.processed += 1;
        if failed {
            outcome.errors += 1;
        }
        if identity == *stored {
            continue;
        }
        untally(&mut summary, stored);
        tally(&mut summary, &identity);
        if visible_change(stored, &identity) {
            identity.modified = now;
            outcome.changed += 1;
            preview.record(stored, &identity);
        }
        outcome.commit.upserts.push(identity);
    }
    outcome.commit.upserts.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    outcome.preview = preview.lines(outcome.processed);
    outcome.summary = summary.clone();
    outcome.commit.state =
        ProfileState { next_time_based, mapping_hash: Some(mapping), summary: Some(summary), ..state.clone() };
    Ok(Some(outcome))
}

/// What one identity adds to its profile's numbers, apart from its links.
fn contribution(identity: &Identity) -> (Option<&str>, bool, bool) {
    let unresolved = identity.manager_ref.is_some() && identity.manager.is_none() && !identity.top_of_hierarchy;
    (identity.lifecycle_state.as_deref(), !identity.errors.is_empty(), unresolved)
}

fn tally(summary: &mut Summary, identity: &Identity) {
    let (state, errors, unresolved) = contribution(identity);
    if let Some(state) = state {
        *summary.lifecycle_states.entry(state.to_string()).or_default() += 1;
    }
    summary.identities_with_errors += u64::from(errors);
    summary.unresolved_managers += u64::from(unresolved);
}

fn untally(summary: &mut Summary, identity: &Identity) {
    let (state, errors, unresolved) = contribution(identity);
    if let Some(state) = state
        && let Some(n) = summary.lifecycle_states.get_mut(state)
    {
        *n = n.saturating_sub(1);
        if *n == 0 {
            summary.lifecycle_states.remove(state);
        }
    }
    summary.identities_with_errors = summary.identities_with_errors.saturating_sub(u64::from(errors));
    summary.unresolved_managers = summary.unresolved_managers.saturating_sub(u64::from(unresolved));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::process::{self, Selection};
    use crate::model::Trigger;
    use crate::model::{
        ConnectionRef, Counts, NewRun, ProcessingRunRecord, ProfileRef, RunFinish, RunMode, RunOutcome,
    };
    use crate::store::{AccountStore, CursorUpdate, IdentityStore, SqliteStore, StagedChange};
    use idsync_api::IdentityProfile;
    use serde_json::json;

    fn spec() -> IdentityProfileSpec {
        IdentityProfile::test("employees")
            .authoritative("hr")
            .correlate_ignoring_case("github", "email", "email")
            .attribute("email", "accounts.hr.email")
            .attribute("employeeId", "accounts.hr.id")
            .attribute("managerId", "accounts.hr.manager_id")
            .attribute("title", "accounts.hr.title")
            .attribute("githubLogin", "has(accounts.github) ? accounts.github.username : null")
            .lifecycle(
                "accounts.hr.termination_date != '' && date(accounts.hr.termination_date) <= now ? 'terminated' : 'active'",
                ["active", "terminated"],
            )
            .manager("managerId", "employeeId")
            .spec()
    }

    fn person(n: u32, title: &str) -> Account {
        let mut a = Account::new(format!("E{n}"));
        a.email = Some(format!("p{n}@acme.com"));
        a.attributes.insert("manager_id".into(), json!(format!("E{}", (n / 3).max(1))));
        a.attributes.insert("title".into(), json!(title));
        a.attributes.insert("termination_date".into(), json!(if n == 4 { "2026-01-31" } else { "" }));
        a
    }

    fn member(n: u32, login: &str) -> Account {
        let mut a = Account::new(format!("g{n}"));
        a.email = Some(format!("P{n}@acme.com"));
        a.username = Some(login.to_string());
        a
    }

    /// The record of a scheduled run that produced `outcome` at `now`.
    fn succeeded(outcome: &Outcome, now: Timestamp) -> ProcessingRunRecord {
        ProcessingRunRecord {
            id: 0,
            trigger: Trigger::Scheduled,
            request: None,
            started_at: now,
            finished_at: now,
            outcome: RunOutcome::Succeeded,
            processed: outcome.processed,
            changed: outcome.changed,
            errors: outcome.errors,
            message: String::new(),
        }
    }

    /// Commits `changes` to connection `name` as one succeeded sync.
    pub(crate) fn sync(store: &SqliteStore, name: &str, changes: Vec<StagedChange>) {
        let run = store
            .start_run(&NewRun {
                connection: ConnectionRef::new("default", name),
                trigger: Trigger::Scheduled,
                request: None,
                requested_mode: RunMode::Full,
                holder: "test".into(),
                started_at: at("2026-11-01T00:00:00Z"),
            })
            .expect("start");
        store.stage(run, &changes).expect("stage");
        let finish = RunFinish {
            outcome: RunOutcome::Succeeded,
            mode: Some(RunMode::Delta),
            counts: Counts::default(),
            message: String::new(),
            finished_at: at("2026-11-01T00:00:01Z"),
        };
        store.commit_run(run, CursorUpdate::Keep, &finish).expect("commit");
    }

    pub(crate) fn upserts(accounts: impl IntoIterator<Item = Account>) -> Vec<StagedChange> {
        accounts.into_iter().map(StagedChange::Upsert).collect()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn profile() -> ProfileRef {
        ProfileRef::new("default", "employees")
    }

    fn compiled(spec: &IdentityProfileSpec) -> CompiledProfile {
        CompiledProfile::compile(&spec.attributes, spec.lifecycle.as_ref()).expect("compiles")
    }

    /// Eight people, seven of them on GitHub; processed once over everyone
    /// and committed as the controller commits.
    fn processed_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("idsync.db")).expect("store");
        sync(&store, "hr", upserts((1..=8).map(|n| person(n, "Engineer"))));
        sync(&store, "github", upserts((1..=7).map(|n| member(n, &format!("login{n}")))));
        full_run(&store, &spec(), &Selection::All, at("2026-11-22T12:00:00Z"), true);
        (dir, store)
    }

    /// A run over the whole snapshot, committed when `commit` says so.
    fn full_run(
        store: &SqliteStore,
        spec: &IdentityProfileSpec,
        selection: &Selection,
        now: Timestamp,
        commit: bool,
    ) -> Outcome {
        let snapshot = store.processing_snapshot(&profile(), &process::connections_of(spec)).expect("snapshot");
        let mut outcome = process::run(spec, &compiled(spec), &snapshot, selection, now).expect("bounds");
        outcome.commit.state.seen_versions = snapshot.versions.clone();
        if commit {
            store.commit_processing(&profile(), &outcome.commit, &succeeded(&outcome, now)).expect("commit");
        }
        outcome
    }

    fn delta_of(store: &SqliteStore, spec: &IdentityProfileSpec, now: Timestamp) -> ProcessingDelta {
        store.processing_delta(&profile(), &process::connections_of(spec), now).expect("read").expect("a delta")
    }

    #[test]
    fn changed_titles_are_processed_from_the_changes_alone_as_a_full_run_would() {
        let (_dir, store) = processed_store();
        let spec = spec();
        // Two promotions; E2's display name, which no mapping reads, changes
        // too.
        let mut e2 = person(2, "Staff Engineer");
        e2.display_name = Some("Bee".into());
        sync(&store, "hr", upserts([e2, person(5, "Manager")]));
        let now = at("2026-11-22T13:00:00Z");

        let delta = delta_of(&store, &spec, now);
        assert_eq!(delta.changed["hr"], ["E2", "E5"]);
        assert!(delta.changed["github"].is_empty());
        // Read: the two changed accounts, their two identities and the two
        // GitHub accounts those are made of; nothing else.
        let mut identities_read: Vec<&str> = delta.identities.keys().map(String::as_str).collect();
        identities_read.sort_unstable();
        assert_eq!(identities_read, ["E2", "E5"]);
        assert_eq!(delta.accounts["hr"].len(), 2);
        assert_eq!(delta.accounts["github"].len(), 2);

        let fast = run(&spec, &compiled(&spec), &delta, Scope::Changed, now)
            .expect("bounds")
            .expect("decided from the changes");
        let full = full_run(&store, &spec, &Selection::Changed, now, false);
        assert_eq!((fast.processed, fast.changed, fast.errors), (2, 2, 0));
        assert_eq!((fast.processed, fast.changed, fast.errors), (full.processed, full.changed, full.errors));
        assert_eq!(fast.commit.upserts, full.commit.upserts);
        assert_eq!(fast.commit.upserts[0].attributes["title"], json!("Staff Engineer"));
        assert_eq!(fast.commit.upserts[0].modified, now);
        assert!(fast.commit.deletes.is_empty() && fast.commit.link_upserts.is_empty());
        assert!(
            full.commit.deletes.is_empty()
                && full.commit.link_upserts.is_empty()
                && full.commit.link_deletes.is_empty()
        );
        assert_eq!(fast.summary, full.summary);
        assert_eq!(fast.preview, full.preview);
        let mut state = fast.commit.state.clone();
        state.seen_versions = delta.versions.clone();
        assert_eq!(state, full.commit.state);
    }

    #[test]
    fn a_lifecycle_change_carries_the_profiles_numbers_forward() {
        let (_dir, store) = processed_store();
        let spec = spec();
        let before = store.profile_state(&profile()).expect("state").summary.expect("summary");
        assert_eq!(before.lifecycle_states, [("active".to_string(), 7), ("terminated".to_string(), 1)].into());
        let mut leaving = person(6, "Engineer");
        leaving.attributes.insert("termination_date".into(), json!("2026-11-01"));
        sync(&store, "hr", upserts([leaving]));
        let now = at("2026-11-22T13:00:00Z");
        let fast = run(&spec, &compiled(&spec), &delta_of(&store, &spec, now), Scope::Changed, now)
            .expect("bounds")
            .expect("decided");
        assert_eq!(fast.summary.lifecycle_states, [("active".to_string(), 6), ("terminated".to_string(), 2)].into());
        assert_eq!(fast.summary, full_run(&store, &spec, &Selection::Changed, now, false).summary);
    }

    #[test]
    fn changes_that_move_accounts_or_managers_go_to_a_full_run() {
        let spec = spec();
        let now = at("2026-11-22T13:00:00Z");
        let mut new_manager = person(7, "Engineer");
        new_manager.attributes.insert("manager_id".into(), json!("E1"));
        let mut new_email = person(3, "Engineer");
        new_email.email = Some("someone.else@acme.com".into());
        let cases: Vec<(&str, &str, Vec<StagedChange>)> = vec![
            ("a GitHub account changed", "github", upserts([member(1, "renamed")])),
            ("a person joined", "hr", upserts([person(9, "Engineer")])),
            ("a person was removed", "hr", vec![StagedChange::Delete("E8".into())]),
            ("a manager reference changed", "hr", upserts([new_manager])),
            ("a correlation key changed", "hr", upserts([new_email])),
        ];
        for (case, connection, changes) in cases {
            let (_dir, store) = processed_store();
            sync(&store, connection, changes);
            let decided =
                run(&spec, &compiled(&spec), &delta_of(&store, &spec, now), Scope::Changed, now).expect("bounds");
            assert!(decided.is_none(), "{case}");
        }

        // Other mappings than the identities were computed with.
        let (_dir, store) = processed_store();
        sync(&store, "hr", upserts([person(2, "Staff Engineer")]));
        let mut changed = spec.clone();
        changed.attributes.insert("title".into(), "accounts.hr.title.upperAscii()".into());
        assert!(
            run(&changed, &compiled(&changed), &delta_of(&store, &changed, now), Scope::Changed, now)
                .expect("bounds")
                .is_none()
        );
    }

    /// A scheduled run as the controller makes it: over the delta when it
    /// decides, else over the whole snapshot; committed. Returns how many
    /// identities it evaluated and whether the delta decided.
    fn scheduled_run(store: &SqliteStore, spec: &IdentityProfileSpec, now: Timestamp) -> (u64, bool) {
        let delta = store.processing_delta(&profile(), &process::connections_of(spec), now).expect("read");
        let Some(delta) = delta else {
            return (full_run(store, spec, &Selection::All, now, true).processed, false);
        };
        let Some(mut outcome) = run(spec, &compiled(spec), &delta, Scope::Everyone, now).expect("bounds") else {
            return (full_run(store, spec, &Selection::All, now, true).processed, false);
        };
        // What a run over the whole snapshot would write, before this one
        // is committed.
        let full = full_run(store, spec, &Selection::All, now, false);
        assert_eq!(outcome.commit.upserts, full.commit.upserts, "writes at {now}");
        assert_eq!(outcome.commit.deletes, full.commit.deletes);
        assert!(full.commit.link_upserts.is_empty() && full.commit.link_deletes.is_empty());
        assert_eq!(outcome.changed, full.changed);
        assert_eq!(outcome.summary, full.summary);
        outcome.commit.state.seen_versions = delta.versions.clone();
        let mut full_state = full.commit.state.clone();
        full_state.seen_versions = delta.versions.clone();
        assert_eq!(outcome.commit.state, full_state);
        store.commit_processing(&profile(), &outcome.commit, &succeeded(&outcome, now)).expect("commit");
        (outcome.processed, true)
    }

    /// Every identity as stored, without the instants of the runs that
    /// wrote them.
    fn stored(store: &SqliteStore) -> Vec<Identity> {
        let mut identities = store.list_identities(&profile(), None, None, 10_000).expect("list");
        for identity in &mut identities {
            identity.created = Timestamp::UNIX_EPOCH;
            identity.modified = Timestamp::UNIX_EPOCH;
        }
        identities
    }

    /// The same accounts processed once, from nothing, at `now`.
    fn from_scratch(store: &SqliteStore, spec: &IdentityProfileSpec, now: Timestamp) -> Vec<Identity> {
        let dir = tempfile::tempdir().expect("dir");
        let fresh = SqliteStore::open(&dir.path().join("idsync.db")).expect("store");
        for name in process::connections_of(spec) {
            let accounts = store.list_accounts(&ConnectionRef::new("default", &name), None, 10_000).expect("accounts");
            sync(&fresh, &name, upserts(accounts));
        }
        full_run(&fresh, spec, &Selection::All, now, true);
        stored(&fresh)
    }

    #[test]
    fn a_scheduled_run_evaluates_only_changed_and_time_due_identities_across_runs_and_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("idsync.db");
        let spec = spec();
        let mut leaving = person(6, "Engineer");
        leaving.attributes.insert("termination_date".into(), json!("2026-11-25"));
        {
            let store = SqliteStore::open(&path).expect("store");
            sync(&store, "hr", upserts((1..=8).map(|n| if n == 6 { leaving.clone() } else { person(n, "Engineer") })));
            sync(&store, "github", upserts((1..=7).map(|n| member(n, &format!("login{n}")))));

            // First: everyone, from nothing.
            let first = at("2026-11-22T12:00:00Z");
            assert_eq!(scheduled_run(&store, &spec, first), (8, false));
            let e6 = store.get_identity(&profile(), "E6").expect("read").expect("E6");
            assert_eq!(e6.lifecycle_state.as_deref(), Some("active"));
            assert_eq!(e6.time_changes_at, Some(at("2026-11-25T00:00:00Z")), "when its termination date comes");
            assert_eq!(store.get_identity(&profile(), "E1").expect("read").expect("E1").time_changes_at, None);

            // Second, nothing changed, its time not come: nobody evaluated.
            let second = at("2026-11-23T12:00:00Z");
            assert_eq!(scheduled_run(&store, &spec, second), (0, true));
            assert_eq!(stored(&store), from_scratch(&store, &spec, second));

            // Third: E6's termination date has passed with no account
            // changing; E6 alone is evaluated, and terminated.
            let third = at("2026-11-25T06:00:00Z");
            assert_eq!(scheduled_run(&store, &spec, third), (1, true));
            let e6 = store.get_identity(&profile(), "E6").expect("read").expect("E6");
            assert_eq!((e6.lifecycle_state.as_deref(), e6.time_changes_at), (Some("terminated"), None));
            assert_eq!(e6.modified, third);
            assert_eq!(stored(&store), from_scratch(&store, &spec, third));
        }
        // After a restart, nothing changed: nothing evaluated; then a
        // promotion: that identity alone.
        let store = SqliteStore::open(&path).expect("reopened");
        let later = at("2026-11-26T12:00:00Z");
        assert_eq!(scheduled_run(&store, &spec, later), (0, true));
        sync(&store, "hr", upserts([person(2, "Staff Engineer")]));
        assert_eq!(scheduled_run(&store, &spec, later), (1, true));
        assert_eq!(
            store.get_identity(&profile(), "E2").expect("read").expect("E2").attributes["title"],
            json!("Staff Engineer")
        );
        assert_eq!(stored(&store), from_scratch(&store, &spec, later));
    }

    #[test]
    fn an_event_based_run_also_evaluates_identities_whose_time_has_come() {
        let (_dir, store) = processed_store();
        let spec = spec();
        let mut leaving = person(3, "Engineer");
        leaving.attributes.insert("termination_date".into(), json!("2026-12-01"));
        sync(&store, "hr", upserts([leaving]));
        let now = at("2026-11-22T13:00:00Z");
        let fast = run(&spec, &compiled(&spec), &delta_of(&store, &spec, now), Scope::Changed, now).expect("bounds");
        let fast = fast.expect("decided");
        // E3's input changed; its termination date is ahead, so it is still
        // active and due then.
        assert_eq!(fast.commit.upserts.len(), 1);
        assert_eq!(fast.commit.upserts[0].time_changes_at, Some(at("2026-12-01T00:00:00Z")));
        full_run(&store, &spec, &Selection::Changed, now, true);

        // Nothing changed since, but December has come: both kinds of run
        // evaluate E3, and agree.
        let december = at("2026-12-01T08:00:00Z");
        let delta = delta_of(&store, &spec, december);
        assert_eq!(delta.time_due, ["E3"]);
        assert!(delta.changed.values().all(Vec::is_empty));
        let fast = run(&spec, &compiled(&spec), &delta, Scope::Changed, december).expect("bounds").expect("decided");
        let full = full_run(&store, &spec, &Selection::Changed, december, false);
        assert_eq!((fast.processed, full.processed), (1, 1));
        assert_eq!(fast.commit.upserts, full.commit.upserts);
        assert_eq!(fast.commit.upserts[0].lifecycle_state.as_deref(), Some("terminated"));
    }

    #[test]
    fn a_run_over_everyone_reads_everyone_when_the_time_is_read_otherwise() {
        let now = at("2026-11-22T13:00:00Z");
        // `now` in arithmetic: any identity may change at any instant.
        let mut any_time = spec();
        any_time
            .attributes
            .insert("seniority".into(), "now - date('2020-01-01') > duration('1h') ? 'old' : 'new'".into());
        let (_dir, store) = processed_store();
        full_run(&store, &any_time, &Selection::All, now, true);
        let delta = delta_of(&store, &any_time, now);
        assert!(run(&any_time, &compiled(&any_time), &delta, Scope::Everyone, now).expect("bounds").is_none());
        // An event-based run still decides from the changes.
        assert!(run(&any_time, &compiled(&any_time), &delta, Scope::Changed, now).expect("bounds").is_some());

        // A correlation key that moves with the time.
        let mut timed_key = spec();
        timed_key.attributes.insert("email".into(), "now > date('2026-12-01') ? '' : accounts.hr.email".into());
        let (_dir, store) = processed_store();
        full_run(&store, &timed_key, &Selection::All, now, true);
        let delta = delta_of(&store, &timed_key, now);
        assert!(run(&timed_key, &compiled(&timed_key), &delta, Scope::Everyone, now).expect("bounds").is_none());
    }
}
