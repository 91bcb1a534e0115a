//! The contract of [`AccountStore`]: accounts, staging, commits, cursors and
//! the run history behave the same on every backend.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::contract_tests;
use crate::model::{
    Account, AccountChange, ChangeKind, ConnectionRef, ContentHash, Counts, FieldChange, NewRun, RunFinish, RunId,
    RunMode, RunOutcome, Trigger,
};
use crate::store::{AccountStore, CursorUpdate, Retention, StagedChange, StoreError, StoredCursor};

/// What a contract test needs of a store beyond its traits: a look at
/// what only the store's own tables show.
pub(crate) trait ContractStore: AccountStore + crate::store::outbox::NotificationOutbox {
    /// How many staged rows `run` has (staging must go with its run).
    fn staged_rows(&self, run: RunId) -> i64;
}

impl ContractStore for crate::store::SqliteStore {
    fn staged_rows(&self, run: RunId) -> i64 {
        crate::store::SqliteStore::staged_rows(self, run)
    }
}

impl ContractStore for crate::store::PgStore {
    fn staged_rows(&self, run: RunId) -> i64 {
        crate::store::PgStore::staged_rows(self, run)
    }
}

contract_tests!(
    commit_applies_upserts_deletes_and_cursor_together,
    a_later_staging_of_an_id_replaces_the_earlier,
    abandon_leaves_accounts_and_cursor_exactly_as_before,
    unfinished_runs_are_interrupted_with_their_staging_and_only_theirs,
    interleaved_runs_of_two_connections_never_touch_each_other,
    concurrent_runs_from_threads_each_commit_their_own,
    commit_of_a_finished_or_unknown_run_fails_and_changes_nothing,
    purge_removes_accounts_cursor_and_staging_and_keeps_runs,
    listing_is_ordered_by_id_and_pages_after_the_last_id,
    run_history_round_trips_newest_first,
    accounts_written_with_the_commit_are_upserted_like_staged_ones,
    changes_are_kept_in_order_with_runs_that_show_them_and_dropped_with_failures,
    lookups_by_id_return_the_stored_ones_in_order,
);

pub(crate) fn conn(name: &str) -> ConnectionRef {
    ConnectionRef::new("team-a", name)
}

pub(crate) fn account(id: &str, version: u32) -> Account {
    let mut a = Account::new(id);
    a.username = Some(format!("user-{id}"));
    a.email = Some(format!("{id}.v{version}@example.com"));
    a.display_name = Some(format!("User {id}"));
    a.groups = vec!["staff".into(), format!("team-{version}")];
    a.attributes.insert("department".into(), json!("R&D"));
    a.attributes.insert("version".into(), json!(version));
    a.normalize();
    a
}

pub(crate) fn time(seconds: i64, nanos: i32) -> Timestamp {
    Timestamp::new(1_750_000_000 + seconds, nanos).unwrap()
}

pub(crate) fn new_run(c: &ConnectionRef, at: Timestamp) -> NewRun {
    NewRun {
        connection: c.clone(),
        trigger: Trigger::Scheduled,
        request: None,
        requested_mode: RunMode::Delta,
        holder: "idsync-0".into(),
        started_at: at,
    }
}

pub(crate) fn finish(outcome: RunOutcome, at: Timestamp) -> RunFinish {
    RunFinish {
        outcome,
        mode: Some(RunMode::Delta),
        counts: Counts { created: 1, updated: 2, deleted: 3, unchanged: 4 },
        message: format!("{outcome} at {at}"),
        finished_at: at,
    }
}

pub(crate) fn set_cursor(value: &str) -> CursorUpdate {
    CursorUpdate::Set { value: value.into(), settings_hash: format!("settings-of-{value}") }
}

/// A whole successful sync: start, stage in one page, commit.
pub(crate) fn sync(
    store: &dyn AccountStore,
    c: &ConnectionRef,
    changes: &[StagedChange],
    cursor: CursorUpdate,
) -> RunId {
    let run = store.start_run(&new_run(c, time(0, 0))).unwrap();
    store.stage(run, changes).unwrap();
    store.commit_run(run, cursor, &finish(RunOutcome::Succeeded, time(10, 0))).unwrap();
    run
}

pub(crate) fn upserts(accounts: &[Account]) -> Vec<StagedChange> {
    accounts.iter().cloned().map(StagedChange::Upsert).collect()
}

pub(crate) fn all(store: &dyn AccountStore, c: &ConnectionRef) -> Vec<Account> {
    store.list_accounts(c, None, usize::MAX).unwrap()
}

pub(crate) fn ids(accounts: &[Account]) -> Vec<&str> {
    accounts.iter().map(|a| a.id.as_str()).collect()
}

fn commit_applies_upserts_deletes_and_cursor_together<S: ContractStore>(store: &S) {
    let c = conn("hr");
    let first = [account("E1", 1), account("E2", 1), account("E3", 1)];
    sync(store, &c, &upserts(&first), set_cursor("c1"));
    assert_eq!(all(store, &c), first);
    let cursor = store.cursor(&c).unwrap().unwrap();
    assert_eq!(
        cursor,
        StoredCursor { value: "c1".into(), settings_hash: "settings-of-c1".into(), updated_at: time(10, 0) }
    );

    // Second run: update E2, delete E3, create E4, and an E2 that is the same as stored.
    let run = store.start_run(&new_run(&c, time(20, 0))).unwrap();
    store
        .stage(
            run,
            &[
                StagedChange::Upsert(account("E2", 2)),
                StagedChange::Delete("E3".into()),
                StagedChange::Upsert(account("E4", 1)),
                StagedChange::Upsert(account("E1", 1)),
                // Deleting an account that does not exist is a no-op.
                StagedChange::Delete("nope".into()),
            ],
        )
        .unwrap();
    // Staged is not applied: nothing visible yet.
    assert_eq!(all(store, &c), first);
    assert_eq!(store.cursor(&c).unwrap().unwrap().value, "c1");

    let end = finish(RunOutcome::Succeeded, time(30, 123_456_789));
    store.commit_run(run, set_cursor("c2"), &end).unwrap();
    let expected = vec![account("E1", 1), account("E2", 2), account("E4", 1)];
    assert_eq!(all(store, &c), expected);
    assert_eq!(
        store.cursor(&c).unwrap().unwrap(),
        StoredCursor { value: "c2".into(), settings_hash: "settings-of-c2".into(), updated_at: end.finished_at }
    );
    assert_eq!(store.staged_rows(run), 0);
    let record = store.run(run).unwrap().unwrap();
    assert_eq!(record.outcome, Some(RunOutcome::Succeeded));
    assert_eq!(record.finished_at, Some(end.finished_at));
    assert_eq!(record.counts, end.counts);
    assert_eq!(record.mode, Some(RunMode::Delta));

    // The diff's index: every id, hashed exactly as Account::content_hash.
    let index = store.account_index(&c).unwrap();
    let want: HashMap<String, ContentHash> = expected.iter().map(|a| (a.id.clone(), a.content_hash())).collect();
    assert_eq!(index, want);
    assert_eq!(store.account_count(&c).unwrap(), 3);
    // A Delta's lookups: the same hashes, only of the ids asked for that exist.
    let asked = ["E4".to_string(), "E9".to_string(), "E1".to_string()];
    let some = store.account_hashes(&c, &asked).unwrap();
    assert_eq!(some, want.iter().filter(|(id, _)| *id != "E2").map(|(k, v)| (k.clone(), *v)).collect());
    assert!(store.account_hashes(&conn("never-ran"), &asked).unwrap().is_empty());

    // Keep leaves the cursor; Clear removes it.
    sync(store, &c, &[StagedChange::Delete("E4".into())], CursorUpdate::Keep);
    assert_eq!(store.cursor(&c).unwrap().unwrap().value, "c2");
    assert_eq!(ids(&all(store, &c)), ["E1", "E2"]);
    sync(store, &c, &[], CursorUpdate::Clear);
    assert_eq!(store.cursor(&c).unwrap(), None);
    assert_eq!(ids(&all(store, &c)), ["E1", "E2"]);
}

fn a_later_staging_of_an_id_replaces_the_earlier<S: ContractStore>(store: &S) {
    let c = conn("hr");
    sync(store, &c, &upserts(&[account("E1", 1), account("E2", 1)]), CursorUpdate::Keep);
    let run = store.start_run(&new_run(&c, time(0, 0))).unwrap();
    store.stage(run, &[StagedChange::Upsert(account("E1", 2)), StagedChange::Delete("E2".into())]).unwrap();
    store.stage(run, &[StagedChange::Upsert(account("E1", 3)), StagedChange::Upsert(account("E2", 3))]).unwrap();
    store.stage(run, &[StagedChange::Delete("E1".into()), StagedChange::Upsert(account("E3", 1))]).unwrap();
    // Within one page too: the last one wins.
    store.stage(run, &[StagedChange::Upsert(account("E4", 1)), StagedChange::Upsert(account("E4", 2))]).unwrap();
    assert_eq!(store.staged_rows(run), 4);
    store.commit_run(run, CursorUpdate::Keep, &finish(RunOutcome::Succeeded, time(1, 0))).unwrap();
    assert_eq!(all(store, &c), vec![account("E2", 3), account("E3", 1), account("E4", 2)]);
}

fn abandon_leaves_accounts_and_cursor_exactly_as_before<S: ContractStore>(store: &S) {
    let c = conn("hr");
    sync(store, &c, &upserts(&[account("E1", 1), account("E2", 1), account("E3", 1)]), set_cursor("c1"));
    let before = (all(store, &c), store.cursor(&c).unwrap(), store.account_index(&c).unwrap());

    let run = store.start_run(&new_run(&c, time(20, 0))).unwrap();
    store
        .stage(
            run,
            &[
                StagedChange::Upsert(account("E1", 9)),
                StagedChange::Delete("E2".into()),
                StagedChange::Upsert(account("E9", 1)),
            ],
        )
        .unwrap();
    let end = finish(RunOutcome::Failed, time(21, 5));
    store.abandon_run(run, &end).unwrap();

    assert_eq!((all(store, &c), store.cursor(&c).unwrap(), store.account_index(&c).unwrap()), before);
    assert_eq!(store.staged_rows(run), 0);
    let record = store.run(run).unwrap().unwrap();
    assert_eq!(
        (record.outcome, record.finished_at, record.message),
        (Some(RunOutcome::Failed), Some(end.finished_at), end.message.clone())
    );
    // Finished is final: no commit, no more staging, no second abandon.
    let commit = store.commit_run(run, set_cursor("c2"), &finish(RunOutcome::Succeeded, time(22, 0)));
    assert!(matches!(commit, Err(StoreError::RunFinished(id)) if id == run), "{commit:?}");
    assert!(matches!(store.stage(run, &upserts(&[account("E1", 9)])), Err(StoreError::RunFinished(_))));
    assert!(matches!(store.abandon_run(run, &end), Err(StoreError::RunFinished(_))));
    assert_eq!((all(store, &c), store.cursor(&c).unwrap(), store.account_index(&c).unwrap()), before);
    assert_eq!(store.staged_rows(run), 0);
}

fn interleaved_runs_of_two_connections_never_touch_each_other<S: ContractStore>(store: &S) {
    let (a, b) = (conn("hr"), conn("ldap"));
    // Same ids on both sides, so a run that leaked across would show.
    sync(store, &a, &upserts(&[account("X1", 1), account("X2", 1)]), set_cursor("a1"));
    sync(store, &b, &upserts(&[account("X1", 5), account("X2", 5)]), set_cursor("b1"));

    let run_a = store.start_run(&new_run(&a, time(1, 0))).unwrap();
    let run_b = store.start_run(&new_run(&b, time(1, 0))).unwrap();
    store.stage(run_a, &[StagedChange::Delete("X1".into())]).unwrap();
    store.stage(run_b, &upserts(&[account("X1", 6)])).unwrap();
    store.stage(run_a, &upserts(&[account("X2", 2), account("X3", 2)])).unwrap();
    store.stage(run_b, &[StagedChange::Delete("X2".into())]).unwrap();

    store.commit_run(run_a, set_cursor("a2"), &finish(RunOutcome::Succeeded, time(2, 0))).unwrap();
    assert_eq!(all(store, &a), vec![account("X2", 2), account("X3", 2)]);
    assert_eq!(all(store, &b), vec![account("X1", 5), account("X2", 5)]);
    assert_eq!(store.cursor(&b).unwrap().unwrap().value, "b1");
    assert_eq!(store.staged_rows(run_b), 2);

    store.commit_run(run_b, set_cursor("b2"), &finish(RunOutcome::Succeeded, time(3, 0))).unwrap();
    assert_eq!(all(store, &a), vec![account("X2", 2), account("X3", 2)]);
    assert_eq!(all(store, &b), vec![account("X1", 6)]);
    assert_eq!(store.cursor(&a).unwrap().unwrap().value, "a2");
    assert_eq!(store.cursor(&b).unwrap().unwrap().value, "b2");
    assert_eq!(store.runs(&a, 10).unwrap().len(), 2);
    assert_eq!(store.runs(&b, 10).unwrap().len(), 2);
}

fn concurrent_runs_from_threads_each_commit_their_own<S: ContractStore>(store: &S) {
    std::thread::scope(|s| {
        for name in ["hr", "ldap", "okta"] {
            s.spawn(move || {
                let c = conn(name);
                let run = store.start_run(&new_run(&c, time(0, 0))).unwrap();
                for page in 0..20 {
                    let accounts: Vec<Account> =
                        (0..50).map(|i| account(&format!("{name}-{:04}", page * 50 + i), 1)).collect();
                    store.stage(run, &upserts(&accounts)).unwrap();
                }
                store.commit_run(run, set_cursor(name), &finish(RunOutcome::Succeeded, time(1, 0))).unwrap();
            });
        }
    });
    for name in ["hr", "ldap", "okta"] {
        let c = conn(name);
        let accounts = all(store, &c);
        assert_eq!(accounts.len(), 1000);
        assert!(accounts.iter().all(|a| a.id.starts_with(name)));
        assert_eq!(store.cursor(&c).unwrap().unwrap().value, name);
    }
}

fn commit_of_a_finished_or_unknown_run_fails_and_changes_nothing<S: ContractStore>(store: &S) {
    let c = conn("hr");
    let run = sync(store, &c, &upserts(&[account("E1", 1)]), set_cursor("c1"));
    let before = (all(store, &c), store.cursor(&c).unwrap(), store.run(run).unwrap());

    let again = store.commit_run(run, set_cursor("c2"), &finish(RunOutcome::Failed, time(99, 0)));
    assert!(matches!(again, Err(StoreError::RunFinished(id)) if id == run), "{again:?}");
    let abandon = store.abandon_run(run, &finish(RunOutcome::Cancelled, time(99, 0)));
    assert!(matches!(abandon, Err(StoreError::RunFinished(_))), "{abandon:?}");
    assert_eq!((all(store, &c), store.cursor(&c).unwrap(), store.run(run).unwrap()), before);

    let unknown = run + 1000;
    let commit = store.commit_run(unknown, CursorUpdate::Clear, &finish(RunOutcome::Succeeded, time(99, 0)));
    assert!(matches!(commit, Err(StoreError::UnknownRun(id)) if id == unknown), "{commit:?}");
    assert!(matches!(store.stage(unknown, &[]), Err(StoreError::UnknownRun(_))));
    assert!(matches!(
        store.abandon_run(unknown, &finish(RunOutcome::Failed, time(0, 0))),
        Err(StoreError::UnknownRun(_))
    ));
    assert_eq!(store.run(unknown).unwrap(), None);
    assert_eq!((all(store, &c), store.cursor(&c).unwrap(), store.run(run).unwrap()), before);
}

fn purge_removes_accounts_cursor_and_staging_and_keeps_runs<S: ContractStore>(store: &S) {
    let (a, b) = (conn("hr"), conn("ldap"));
    sync(store, &a, &upserts(&[account("E1", 1), account("E2", 1)]), set_cursor("a1"));
    sync(store, &b, &upserts(&[account("E1", 5)]), set_cursor("b1"));
    let pending = store.start_run(&new_run(&a, time(5, 0))).unwrap();
    store.stage(pending, &upserts(&[account("E3", 1)])).unwrap();

    assert_eq!(store.purge_connection(&a).unwrap(), 2);
    assert!(all(store, &a).is_empty());
    assert!(store.account_index(&a).unwrap().is_empty());
    assert_eq!(store.account_count(&a).unwrap(), 0);
    assert_eq!(store.cursor(&a).unwrap(), None);
    assert_eq!(store.staged_rows(pending), 0);
    assert_eq!(store.runs(&a, 10).unwrap().len(), 2);
    // B is untouched.
    assert_eq!(all(store, &b), vec![account("E1", 5)]);
    assert_eq!(store.cursor(&b).unwrap().unwrap().value, "b1");

    assert_eq!(store.purge_connection(&a).unwrap(), 0);
    assert_eq!(store.purge_connection(&conn("never-ran")).unwrap(), 0);
}

fn listing_is_ordered_by_id_and_pages_after_the_last_id<S: ContractStore>(store: &S) {
    let c = conn("hr");
    let scrambled = ["m", "a10", "B", "a2", "é", "a1", "z", "Z", "a"];
    sync(store, &c, &upserts(&scrambled.map(|id| account(id, 1))), CursorUpdate::Keep);
    let mut sorted = scrambled.to_vec();
    sorted.sort();
    assert_eq!(ids(&all(store, &c)), sorted);

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    // Bounded, so paging that stops advancing fails instead of hanging.
    for _ in 0..scrambled.len() {
        let page = store.list_accounts(&c, after.as_deref(), 2).unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        paged.extend(page);
    }
    assert_eq!(ids(&paged), sorted);
    assert_eq!(ids(&store.list_accounts(&c, Some("a10"), 3).unwrap()), ["a2", "m", "z"]);
    // `after` need not be a stored id.
    assert_eq!(ids(&store.list_accounts(&c, Some("a11"), 1).unwrap()), ["a2"]);
    assert!(store.list_accounts(&c, None, 0).unwrap().is_empty());
    assert!(store.list_accounts(&c, Some("é"), 5).unwrap().is_empty());
    assert!(store.list_accounts(&conn("never-ran"), None, 5).unwrap().is_empty());

    assert_eq!(store.get_account(&c, "a10").unwrap(), Some(account("a10", 1)));
    assert_eq!(store.get_account(&c, "A10").unwrap(), None);
    assert_eq!(store.get_account(&conn("never-ran"), "a10").unwrap(), None);
    assert_eq!(store.account_count(&c).unwrap(), scrambled.len() as u64);
}

fn run_history_round_trips_newest_first<S: ContractStore>(store: &S) {
    let (c, other) = (conn("hr"), conn("ldap"));
    let mut started = Vec::new();
    for i in 0..4 {
        let mut new = new_run(&c, time(i, 999_999_999 - i as i32));
        new.trigger = Trigger::ALL[i as usize % Trigger::ALL.len()];
        new.request = (i % 2 == 0).then(|| format!("resync-{i}"));
        new.requested_mode = RunMode::Full;
        started.push((store.start_run(&new).unwrap(), new));
    }
    store.start_run(&new_run(&other, time(9, 0))).unwrap();
    let (last_id, _) = &started[3];
    let end = RunFinish {
        outcome: RunOutcome::SafeguardTripped,
        mode: None,
        counts: Counts { created: 0, updated: 7, deleted: 90_000, unchanged: u64::from(u32::MAX) },
        message: "would delete 90% of accounts".into(),
        finished_at: time(100, 1),
    };
    store.abandon_run(*last_id, &end).unwrap();

    let runs = store.runs(&c, 3).unwrap();
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [started[3].0, started[2].0, started[1].0]);
    for record in &runs {
        let (_, new) = started.iter().find(|(id, _)| *id == record.id).unwrap();
        assert_eq!(record.connection, new.connection);
        assert_eq!(record.trigger, new.trigger);
        assert_eq!(record.request, new.request);
        assert_eq!(record.requested_mode, new.requested_mode);
        assert_eq!(record.holder, new.holder);
        assert_eq!(record.started_at, new.started_at);
    }
    let last = &runs[0];
    assert_eq!(last.outcome, Some(end.outcome));
    assert_eq!((last.mode.as_ref(), last.counts, &last.message), (None, end.counts, &end.message));
    assert_eq!(last.finished_at, Some(end.finished_at));
    assert_eq!(runs[1].outcome, None);
    assert_eq!(runs[1].counts, Counts::default());
    assert_eq!(store.run(*last_id).unwrap().as_ref(), Some(last));
    assert_eq!(store.runs(&c, 100).unwrap().len(), 4);
    assert!(store.runs(&conn("never-ran"), 10).unwrap().is_empty());

    let too_big = RunFinish { counts: Counts { created: u64::MAX, ..Counts::default() }, ..end };
    assert!(matches!(store.abandon_run(started[2].0, &too_big), Err(StoreError::OutOfRange { .. })));
    assert_eq!(store.run(started[2].0).unwrap().unwrap().finished_at, None);
}
/// The operator dies mid-run and comes back (`restart`: the store closed
/// and opened again on the same database).
fn a_crashed_run_changes_nothing_and_is_interrupted_on_restart<S: ContractStore>(
    store: S,
    restart: impl FnOnce(S) -> S,
) {
    let (a, b) = (conn("hr"), conn("ldap"));
    sync(&store, &a, &upserts(&[account("E1", 1), account("E2", 1)]), set_cursor("c1"));
    let before = (all(&store, &a), store.cursor(&a).unwrap());

    let crashed = store.start_run(&new_run(&a, time(20, 0))).unwrap();
    store.stage(crashed, &[StagedChange::Upsert(account("E1", 2)), StagedChange::Delete("E2".into())]).unwrap();
    store.stage(crashed, &upserts(&[account("E3", 1)])).unwrap();
    let other = store.start_run(&new_run(&b, time(20, 0))).unwrap();
    store.stage(other, &upserts(&[account("L1", 1)])).unwrap();
    // The operator dies: no commit, no abandon.
    let store = restart(store);

    assert_eq!((all(&store, &a), store.cursor(&a).unwrap()), before);
    assert_eq!(store.run(crashed).unwrap().unwrap().finished_at, None);
    // The leftover staging is inert until dropped.
    assert_eq!(store.staged_rows(crashed), 3);

    let at = time(60, 7);
    let interrupted = store.interrupt_unfinished_runs(Some(&a), at, "operator restarted").unwrap();
    assert_eq!(interrupted.len(), 1);
    let record = &interrupted[0];
    assert_eq!((record.id, &record.connection), (crashed, &a));
    assert_eq!(record.outcome, Some(RunOutcome::Interrupted));
    assert_eq!((record.finished_at, record.message.as_str()), (Some(at), "operator restarted"));
    assert_eq!(store.run(crashed).unwrap().as_ref(), Some(record));
    assert_eq!(store.staged_rows(crashed), 0);
    // Only connection A's runs.
    assert_eq!(store.run(other).unwrap().unwrap().finished_at, None);
    assert_eq!(store.staged_rows(other), 1);

    let commit = store.commit_run(crashed, set_cursor("c2"), &finish(RunOutcome::Succeeded, time(61, 0)));
    assert!(matches!(commit, Err(StoreError::RunFinished(_))), "{commit:?}");
    assert_eq!((all(&store, &a), store.cursor(&a).unwrap()), before);

    // All connections: B's run now; A has none left.
    let rest = store.interrupt_unfinished_runs(None, at, "sweep").unwrap();
    assert_eq!(rest.iter().map(|r| r.id).collect::<Vec<_>>(), [other]);
    assert_eq!(store.staged_rows(other), 0);
    assert!(store.interrupt_unfinished_runs(None, at, "sweep").unwrap().is_empty());
    assert!(store.interrupt_unfinished_runs(Some(&conn("never-ran")), at, "sweep").unwrap().is_empty());
}

/// An interrupted run's recorded changes go with it, and a sweep over all
/// connections ends each unfinished run once.
fn unfinished_runs_are_interrupted_with_their_staging_and_only_theirs<S: ContractStore>(store: &S) {
    let (a, b) = (conn("hr"), conn("ldap"));
    let runs: Vec<RunId> = [&a, &a, &b].iter().map(|c| store.start_run(&new_run(c, time(0, 0))).unwrap()).collect();
    for &run in &runs {
        let recorded = [AccountChange { account_id: "E1".into(), kind: ChangeKind::Created, fields: Vec::new() }];
        store.stage_recorded(run, &upserts(&[account("E1", 1)]), &recorded).unwrap();
    }
    let finished = sync(store, &b, &upserts(&[account("L1", 1)]), CursorUpdate::Keep);
    let swept = store.interrupt_unfinished_runs(None, time(5, 0), "sweep").unwrap();
    assert_eq!(swept.iter().map(|r| r.id).collect::<Vec<_>>(), runs, "oldest first, the finished one left alone");
    for &run in &runs {
        assert_eq!(store.staged_rows(run), 0);
        assert!(store.run_changes(run, 0, 10).unwrap().is_empty(), "an interrupted run changed nothing");
        let record = store.run(run).unwrap().unwrap();
        assert_eq!(
            (record.outcome, record.mode, record.counts),
            (Some(RunOutcome::Interrupted), None, Counts::default())
        );
    }
    assert_eq!(store.run(finished).unwrap().unwrap().outcome, Some(RunOutcome::Succeeded));
    assert!(all(store, &a).is_empty());
}

/// `commit_run_writing`: accounts given with the commit, into an empty
/// connection (a first sync) and into one with accounts, go in before the
/// staged changes, the last copy of an id winning.
fn accounts_written_with_the_commit_are_upserted_like_staged_ones<S: ContractStore>(store: &S) {
    use crate::store::EncodedAccount;
    let c = conn("hr");
    let encoded = |a: &Account| EncodedAccount::new(a, a.content_hash());
    let first: Vec<Account> = (0..50).map(|i| account(&format!("E{i:03}"), 1)).collect();
    let mut written: Vec<EncodedAccount> = first.iter().map(encoded).collect();
    // A later copy of an id replaces the earlier.
    written.push(encoded(&account("E007", 2)));
    let run = store.start_run(&new_run(&c, time(0, 0))).unwrap();
    // A staged change of a written id applies after it.
    store.stage(run, &[StagedChange::Delete("E001".into()), StagedChange::Upsert(account("E002", 3))]).unwrap();
    store.commit_run_writing(run, &written, set_cursor("c1"), &finish(RunOutcome::Succeeded, time(1, 0)), &[]).unwrap();
    let mut want = first.clone();
    want[7] = account("E007", 2);
    want[2] = account("E002", 3);
    want.remove(1);
    assert_eq!(all(store, &c), want);
    assert_eq!(store.cursor(&c).unwrap().unwrap().value, "c1");
    assert_eq!(store.staged_rows(run), 0);

    // Into a connection with accounts: new, changed and unchanged ones.
    let run = store.start_run(&new_run(&c, time(2, 0))).unwrap();
    let again = [account("E000", 1), account("E003", 9), account("E100", 1)];
    let written: Vec<EncodedAccount> = again.iter().map(encoded).collect();
    store
        .commit_run_writing(run, &written, CursorUpdate::Keep, &finish(RunOutcome::Succeeded, time(3, 0)), &[])
        .unwrap();
    want[2] = account("E003", 9);
    want.push(account("E100", 1));
    assert_eq!(all(store, &c), want);
    let index = store.account_index(&c).unwrap();
    assert_eq!(index.len(), want.len());
    assert!(want.iter().all(|a| index.get(&a.id) == Some(&a.content_hash())));

    // Nothing of a commit that fails is left behind.
    let failed = store.commit_run_writing(
        run,
        &[encoded(&account("E200", 1))],
        CursorUpdate::Clear,
        &finish(RunOutcome::Succeeded, time(4, 0)),
        &[],
    );
    assert!(matches!(failed, Err(StoreError::RunFinished(_))), "{failed:?}");
    assert_eq!(store.get_account(&c, "E200").unwrap(), None);
    assert_eq!(store.cursor(&c).unwrap().unwrap().value, "c1");
}

fn change(id: &str, kind: ChangeKind) -> AccountChange {
    let field = FieldChange { field: "email".into(), before: None, after: Some(json!(format!("{id}@x"))) };
    AccountChange { account_id: id.into(), kind, fields: vec![field] }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).unwrap()
}

/// A run of `c` started at `start`, with two recorded changes, ended
/// with `outcome` at `start + 1`.
fn recorded_run(store: &dyn AccountStore, c: &ConnectionRef, start: i64, outcome: RunOutcome) -> RunId {
    let new = NewRun {
        connection: c.clone(),
        trigger: Trigger::Scheduled,
        request: None,
        requested_mode: RunMode::Full,
        holder: "h".into(),
        started_at: at(start),
    };
    let run = store.start_run(&new).unwrap();
    let staged = [StagedChange::Upsert(Account::new(format!("a{start}")))];
    store.stage_recorded(run, &staged, &[change("a", ChangeKind::Created)]).unwrap();
    store.stage_recorded(run, &[], &[change("b", ChangeKind::Updated), change("c", ChangeKind::Deleted)]).unwrap();
    let finish = RunFinish {
        outcome,
        mode: Some(RunMode::Full),
        counts: Counts::default(),
        message: String::new(),
        finished_at: at(start + 1),
    };
    match outcome {
        RunOutcome::Succeeded => store.commit_run(run, CursorUpdate::Keep, &finish).unwrap(),
        _ => store.abandon_run(run, &finish).unwrap(),
    }
    run
}

fn changes_are_kept_in_order_with_runs_that_show_them_and_dropped_with_failures<S: ContractStore>(store: &S) {
    let c = ConnectionRef::new("ns", "hr");
    for outcome in [RunOutcome::Succeeded, RunOutcome::DryRun, RunOutcome::SafeguardTripped] {
        let id = recorded_run(store, &c, 0, outcome);
        let changes = store.run_changes(id, 0, 100).unwrap();
        let seen: Vec<(u64, &str, ChangeKind)> =
            changes.iter().map(|(n, c)| (*n, c.account_id.as_str(), c.kind)).collect();
        assert_eq!(
            seen,
            [(1, "a", ChangeKind::Created), (2, "b", ChangeKind::Updated), (3, "c", ChangeKind::Deleted)],
            "{outcome}"
        );
        assert_eq!(changes[0].1, change("a", ChangeKind::Created), "fields round-trip");
        // Paging by sequence number.
        let rest: Vec<u64> = store.run_changes(id, 1, 1).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(rest, [2]);
    }
    for outcome in [RunOutcome::Failed, RunOutcome::Cancelled] {
        let id = recorded_run(store, &c, 0, outcome);
        assert!(store.run_changes(id, 0, 100).unwrap().is_empty(), "{outcome} changed nothing");
    }
}

/// The retention the history test's store keeps.
const SHORT_HISTORY: Retention = Retention { max_runs: 3, max_age: SignedDuration::from_secs(100) };

/// `store` keeps [`SHORT_HISTORY`].
fn the_history_keeps_the_newest_runs_and_none_too_old(store: &dyn AccountStore) {
    let (hr, idp) = (ConnectionRef::new("ns", "hr"), ConnectionRef::new("ns", "idp"));
    let other = recorded_run(store, &idp, 0, RunOutcome::Succeeded);
    let ids: Vec<RunId> = (0..5).map(|i| recorded_run(store, &hr, i * 10, RunOutcome::Succeeded)).collect();
    let kept: Vec<RunId> = store.runs(&hr, 100).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(kept, [ids[4], ids[3], ids[2]], "the newest three");
    assert!(store.run_changes(ids[0], 0, 10).unwrap().is_empty(), "a pruned run's changes go with it");
    assert_eq!(store.run_changes(ids[4], 0, 10).unwrap().len(), 3);
    assert_eq!(store.runs(&idp, 10).unwrap().len(), 1, "other connections keep theirs");

    // A run finishing 200 s later: everything older than 100 s goes.
    let late = recorded_run(store, &hr, 240, RunOutcome::Failed);
    let kept: Vec<RunId> = store.runs(&hr, 100).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(kept, [late]);
    assert_eq!(store.run(other).unwrap().map(|r| r.id), Some(other));

    // Finish times are compared as instants, not as text (as text, "…40Z"
    // sorts after "…40.5Z"): a run that finished at a whole second is older
    // than a cutoff half a second later.
    let c = ConnectionRef::new("ns", "subsecond");
    let base = at(10_000);
    let first = store.start_run(&new_run(&c, base)).unwrap();
    store.abandon_run(first, &finish(RunOutcome::Failed, base)).unwrap();
    let second = store.start_run(&new_run(&c, base)).unwrap();
    let end = base + SignedDuration::from_millis(100_500);
    store.abandon_run(second, &finish(RunOutcome::Failed, end)).unwrap();
    let kept: Vec<RunId> = store.runs(&c, 10).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(kept, [second]);
}

mod restart_and_retention {
    use super::*;
    use crate::store::{PgStore, SqliteStore};

    #[test]
    fn sqlite_a_crashed_run_changes_nothing_and_is_interrupted_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        let store = SqliteStore::open(&path).unwrap();
        a_crashed_run_changes_nothing_and_is_interrupted_on_restart(store, |store| {
            drop(store);
            SqliteStore::open(&path).unwrap()
        });
    }

    #[test]
    fn postgres_a_crashed_run_changes_nothing_and_is_interrupted_on_restart() {
        let options = crate::store::postgres::testing::fresh_database();
        let store = PgStore::connect(&options).unwrap();
        a_crashed_run_changes_nothing_and_is_interrupted_on_restart(store, |store| {
            drop(store);
            PgStore::connect(&options).unwrap()
        });
    }

    #[test]
    fn sqlite_the_history_keeps_the_newest_runs_and_none_too_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap().with_retention(SHORT_HISTORY);
        the_history_keeps_the_newest_runs_and_none_too_old(&store);
    }

    #[test]
    fn postgres_the_history_keeps_the_newest_runs_and_none_too_old() {
        let store = super::super::postgres().with_retention(SHORT_HISTORY);
        the_history_keeps_the_newest_runs_and_none_too_old(&store);
    }
}

/// `get_accounts`, `account_hashes` and `connections`: what the identity
/// side and `idsync` commands look up.
fn lookups_by_id_return_the_stored_ones_in_order<S: ContractStore>(store: &S) {
    let (hr, ldap) = (conn("hr"), ConnectionRef::new("team-B", "ldap"));
    sync(store, &hr, &upserts(&["b", "a", "é", "Z"].map(|id| account(id, 1))), CursorUpdate::Keep);
    sync(store, &ldap, &upserts(&[account("a", 7)]), CursorUpdate::Keep);
    let asked: Vec<String> = ["é", "a", "missing", "Z", "a"].map(String::from).to_vec();
    assert_eq!(store.get_accounts(&hr, &asked).unwrap(), vec![account("Z", 1), account("a", 1), account("é", 1)]);
    assert_eq!(store.get_accounts(&ldap, &asked).unwrap(), vec![account("a", 7)]);
    assert!(store.get_accounts(&hr, &[]).unwrap().is_empty());
    assert!(store.get_accounts(&conn("never-ran"), &asked).unwrap().is_empty());
    let hashes = store.account_hashes(&hr, &asked).unwrap();
    let want: HashMap<String, ContentHash> =
        ["Z", "a", "é"].iter().map(|id| (id.to_string(), account(id, 1).content_hash())).collect();
    assert_eq!(hashes, want);
    assert!(store.account_hashes(&hr, &[]).unwrap().is_empty());
    // Bytewise order: upper case before lower.
    store.start_run(&new_run(&ConnectionRef::new("team-a", "Okta"), time(0, 0))).unwrap();
    assert_eq!(store.connections().unwrap(), [ConnectionRef::new("team-B", "ldap"), conn("Okta"), hr]);
}
