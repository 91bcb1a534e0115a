//! What only the PostgreSQL store has to show: replicas sharing the
//! database, connections the server ends, and the change marks written by
//! the commit code (SQLite's are triggers). The behaviour both stores share
//! is tested in `store::contract`.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ::postgres::{Client, NoTls};

use super::*;
use crate::store::contract::accounts::{account, all, conn, finish, new_run, set_cursor, sync, time, upserts};
use crate::store::postgres::{PgOptions, testing};

/// A store on a fresh database, and the database's options to open more
/// (other replicas) or an administrator's client.
fn store() -> (PgStore, PgOptions) {
    let options = testing::fresh_database();
    (PgStore::connect(&options).unwrap(), options)
}

/// A client that is not idsync (its backends are not the ones killed).
fn admin(options: &PgOptions) -> Client {
    let mut config = options.config().unwrap();
    config.application_name("idsync-test-admin");
    config.connect(NoTls).unwrap()
}

/// Ends every idsync backend of the database, as an administrator (or a
/// failover) would; `only_waiting`: only those waiting for a lock.
fn terminate_idsync_backends(admin: &mut Client, only_waiting: bool) -> i64 {
    let filter = if only_waiting { " AND wait_event_type = 'Lock'" } else { "" };
    let rows = admin
        .query(
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'idsync' AND datname = current_database(){filter}"
            ),
            &[],
        )
        .unwrap();
    rows.len() as i64
}

/// (version, marks by id) of connection `name`.
fn version_and_marks(admin: &mut Client, name: &str) -> (i64, Vec<(String, i64)>) {
    let version: i64 = admin.query_one("SELECT version FROM connections WHERE name = $1", &[&name]).unwrap().get(0);
    let marks = admin
        .query(
            "SELECT m.id, m.version FROM account_marks m JOIN connections c ON c.conn = m.conn \
             WHERE c.name = $1 ORDER BY m.id",
            &[&name],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    (version, marks)
}

fn marks(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter().map(|(id, v)| (id.to_string(), *v)).collect()
}

/// Holds connection `name`'s row lock (what a commit takes) until dropped.
struct RowLock(Client);

impl RowLock {
    fn connection(options: &PgOptions, name: &str) -> Self {
        let mut client = admin(options);
        client.batch_execute("BEGIN").unwrap();
        client.execute("SELECT 1 FROM connections WHERE name = $1 FOR UPDATE", &[&name]).unwrap();
        RowLock(client)
    }

    fn run(options: &PgOptions, run: RunId) -> Self {
        let mut client = admin(options);
        client.batch_execute("BEGIN").unwrap();
        client.execute("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", &[&run]).unwrap();
        RowLock(client)
    }

    fn release(mut self) {
        self.0.batch_execute("COMMIT").unwrap();
    }
}

#[test]
fn commits_keep_the_version_and_the_change_marks() {
    let (store, options) = store();
    let mut admin = admin(&options);
    let c = conn("hr");
    // A first sync written with the commit (COPY into an empty connection).
    let run = store.start_run(&new_run(&c, time(0, 0))).unwrap();
    let first: Vec<EncodedAccount> =
        ["E1", "E2", "E3"].iter().map(|id| account(id, 1)).map(|a| EncodedAccount::new(&a, a.content_hash())).collect();
    store.commit_run_writing(run, &first, set_cursor("c1"), &finish(RunOutcome::Succeeded, time(1, 0)), &[]).unwrap();
    assert_eq!(version_and_marks(&mut admin, "hr"), (1, marks(&[("E1", 1), ("E2", 1), ("E3", 1)])));

    // Nothing changed: no new version, no marks.
    sync(&store, &c, &upserts(&[account("E1", 1), account("E2", 1)]), CursorUpdate::Keep);
    assert_eq!(version_and_marks(&mut admin, "hr"), (1, marks(&[("E1", 1), ("E2", 1), ("E3", 1)])));

    // Changed, created, deleted (and a delete of nothing): each marked.
    sync(
        &store,
        &c,
        &[
            StagedChange::Upsert(account("E1", 1)),
            StagedChange::Upsert(account("E2", 2)),
            StagedChange::Upsert(account("E4", 1)),
            StagedChange::Delete("E3".into()),
            StagedChange::Delete("E9".into()),
        ],
        CursorUpdate::Keep,
    );
    assert_eq!(version_and_marks(&mut admin, "hr"), (2, marks(&[("E1", 1), ("E2", 2), ("E3", 2), ("E4", 2)])));

    // Written with the commit into a connection with accounts: upserted.
    let run = store.start_run(&new_run(&c, time(2, 0))).unwrap();
    let again: Vec<EncodedAccount> =
        [account("E1", 1), account("E5", 1)].iter().map(|a| EncodedAccount::new(a, a.content_hash())).collect();
    store.commit_run_writing(run, &again, CursorUpdate::Keep, &finish(RunOutcome::Succeeded, time(3, 0)), &[]).unwrap();
    assert_eq!(
        version_and_marks(&mut admin, "hr"),
        (3, marks(&[("E1", 1), ("E2", 2), ("E3", 2), ("E4", 2), ("E5", 3)]))
    );

    // A purge marks what it removed; a purge of nothing changes nothing.
    assert_eq!(store.purge_connection(&c).unwrap(), 4);
    assert_eq!(
        version_and_marks(&mut admin, "hr"),
        (4, marks(&[("E1", 4), ("E2", 4), ("E3", 2), ("E4", 4), ("E5", 4)]))
    );
    assert_eq!(store.purge_connection(&c).unwrap(), 0);
    assert_eq!(version_and_marks(&mut admin, "hr").0, 4);
    // The connection comes back: its version counts on.
    sync(&store, &c, &upserts(&[account("E1", 1)]), CursorUpdate::Keep);
    assert_eq!(version_and_marks(&mut admin, "hr").0, 5);
}

#[test]
fn a_commit_that_fails_halfway_changes_nothing() {
    let (store, options) = store();
    let c = conn("hr");
    sync(&store, &c, &upserts(&[account("E1", 1), account("E2", 1)]), set_cursor("c1"));
    let mut admin = admin(&options);
    let before = (all(&store, &c), store.cursor(&c).unwrap(), version_and_marks(&mut admin, "hr"));
    let run = store.start_run(&new_run(&c, time(20, 0))).unwrap();
    store.stage(run, &[StagedChange::Upsert(account("E1", 2)), StagedChange::Delete("E2".into())]).unwrap();

    // Make the cursor write, which comes after the accounts', fail.
    admin
        .batch_execute(
            "CREATE FUNCTION sabotage() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$; \
             CREATE TRIGGER sabotage BEFORE UPDATE ON cursors FOR EACH ROW EXECUTE FUNCTION sabotage();",
        )
        .unwrap();
    let commit = store.commit_run(run, set_cursor("c2"), &finish(RunOutcome::Succeeded, time(21, 0)));
    let err = commit.unwrap_err();
    assert!(matches!(err, StoreError::Postgres(_)), "{err}");
    assert!(err.to_string().contains("disk on fire"), "the server's message shows: {err}");
    assert_eq!((all(&store, &c), store.cursor(&c).unwrap(), version_and_marks(&mut admin, "hr")), before);
    assert_eq!(store.run(run).unwrap().unwrap().finished_at, None);
    assert_eq!(store.staged_rows(run), 2);

    // The run is still whole and can commit once the fault is gone.
    admin.batch_execute("DROP TRIGGER sabotage ON cursors").unwrap();
    store.commit_run(run, set_cursor("c2"), &finish(RunOutcome::Succeeded, time(22, 0))).unwrap();
    assert_eq!(all(&store, &c), vec![account("E1", 2)]);
    assert_eq!(store.cursor(&c).unwrap().unwrap().value, "c2");
}

#[test]
fn commits_of_one_connection_take_turns_and_other_connections_do_not_wait() {
    let (store, options) = store();
    let replica = PgStore::connect(&options).unwrap();
    let (a, b) = (conn("hr"), conn("ldap"));
    sync(&store, &a, &upserts(&[account("E1", 1)]), set_cursor("a1"));
    sync(&replica, &b, &upserts(&[account("L1", 1)]), set_cursor("b1"));
    let run_a = store.start_run(&new_run(&a, time(1, 0))).unwrap();
    store.stage(run_a, &upserts(&[account("E2", 1)])).unwrap();
    let run_b = replica.start_run(&new_run(&b, time(1, 0))).unwrap();
    replica.stage(run_b, &upserts(&[account("L2", 1)])).unwrap();

    // Another replica is in the middle of a change of A's accounts.
    let held = RowLock::connection(&options, "hr");
    let (done, committed) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            let result = store.commit_run(run_a, set_cursor("a2"), &finish(RunOutcome::Succeeded, time(2, 0)));
            done.send(result).unwrap();
        });
        // B's commit goes through meanwhile…
        let started = Instant::now();
        replica.commit_run(run_b, set_cursor("b2"), &finish(RunOutcome::Succeeded, time(2, 0))).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(all(&replica, &b), vec![account("L1", 1), account("L2", 1)]);
        // …while A's waits for its turn, and has changed nothing yet.
        assert!(committed.recv_timeout(Duration::from_millis(300)).is_err(), "A's commit did not wait");
        assert_eq!(all(&replica, &a), vec![account("E1", 1)]);
        assert_eq!(replica.cursor(&a).unwrap().unwrap().value, "a1");
        held.release();
        committed.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    });
    assert_eq!(all(&replica, &a), vec![account("E1", 1), account("E2", 1)]);
    assert_eq!(replica.cursor(&a).unwrap().unwrap().value, "a2");
}

/// Two replicas finishing one run at once (a commit and another replica's
/// sweep of unfinished runs, or two commits): it ends exactly one way.
#[test]
fn a_run_raced_by_another_replica_ends_exactly_one_way() {
    let (store, options) = store();
    let replica = PgStore::connect(&options).unwrap();
    let c = conn("hr");
    sync(&store, &c, &upserts(&[account("E1", 1)]), set_cursor("c0"));
    let mut outcomes = std::collections::BTreeSet::new();
    for round in 0..8i64 {
        let run = store.start_run(&new_run(&c, time(round * 10, 0))).unwrap();
        let id = format!("N{round}");
        store.stage(run, &upserts(&[account(&id, 1)])).unwrap();
        let before = (all(&store, &c), store.cursor(&c).unwrap());
        // Both wait on the run's row, then race for it.
        let held = RowLock::run(&options, run);
        let (commit, interrupted, other_commit) = thread::scope(|s| {
            let commit = s.spawn(|| {
                store.commit_run(run, set_cursor(&id), &finish(RunOutcome::Succeeded, time(round * 10 + 1, 0)))
            });
            let sweep = s.spawn(|| replica.interrupt_unfinished_runs(Some(&c), time(round * 10 + 2, 0), "swept"));
            let other = s.spawn(|| {
                replica.commit_run(run, CursorUpdate::Clear, &finish(RunOutcome::Succeeded, time(round * 10 + 3, 0)))
            });
            thread::sleep(Duration::from_millis(50 + 20 * (round as u64 % 3)));
            held.release();
            (commit.join().unwrap(), sweep.join().unwrap().unwrap(), other.join().unwrap())
        });
        let record = store.run(run).unwrap().unwrap();
        let swept = interrupted.iter().any(|r| r.id == run);
        let winners = [commit.is_ok(), swept, other_commit.is_ok()];
        assert_eq!(
            winners.iter().filter(|w| **w).count(),
            1,
            "round {round}: {commit:?} {interrupted:?} {other_commit:?}"
        );
        for lost in [&commit, &other_commit].into_iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(lost, StoreError::RunFinished(r) if *r == run), "{lost}");
        }
        if swept {
            outcomes.insert("interrupted");
            assert_eq!(record.outcome, Some(RunOutcome::Interrupted));
            assert_eq!((all(&store, &c), store.cursor(&c).unwrap()), before);
        } else {
            outcomes.insert("committed");
            assert_eq!(record.outcome, Some(RunOutcome::Succeeded));
            assert!(store.get_account(&c, &id).unwrap().is_some());
            let cursor = store.cursor(&c).unwrap();
            if commit.is_ok() {
                assert_eq!(cursor.unwrap().value, id);
            } else {
                assert_eq!(cursor, None);
                // Put the cursor back for the next round's "before".
                sync(&store, &c, &[], set_cursor("c0"));
            }
        }
        assert_eq!(store.staged_rows(run), 0);
    }
    // Not asserted: which one wins is the scheduler's choice.
    eprintln!("outcomes seen: {outcomes:?}");
}

#[test]
fn connections_the_server_ends_are_replaced_and_a_run_goes_on() {
    let (store, options) = store();
    let mut admin = admin(&options);
    let c = conn("hr");
    sync(&store, &c, &upserts(&[account("E1", 1)]), set_cursor("c1"));
    let run = store.start_run(&new_run(&c, time(1, 0))).unwrap();
    store.stage(run, &upserts(&[account("E2", 1)])).unwrap();
    assert!(terminate_idsync_backends(&mut admin, false) >= 1);

    // Reads and writes after it find new connections.
    assert_eq!(store.account_count(&c).unwrap(), 1);
    assert!(terminate_idsync_backends(&mut admin, false) >= 1);
    store.stage(run, &upserts(&[account("E3", 1)])).unwrap();
    assert!(terminate_idsync_backends(&mut admin, false) >= 1);
    store.commit_run(run, set_cursor("c2"), &finish(RunOutcome::Succeeded, time(2, 0))).unwrap();
    assert_eq!(all(&store, &c), vec![account("E1", 1), account("E2", 1), account("E3", 1)]);
    assert_eq!(store.cursor(&c).unwrap().unwrap().value, "c2");
}

#[test]
fn a_commit_whose_connection_is_killed_changes_nothing() {
    let (store, options) = store();
    let mut admin = admin(&options);
    let c = conn("hr");
    sync(&store, &c, &upserts(&[account("E1", 1)]), set_cursor("c1"));
    let run = store.start_run(&new_run(&c, time(1, 0))).unwrap();
    store.stage(run, &[StagedChange::Upsert(account("E1", 2)), StagedChange::Upsert(account("E2", 1))]).unwrap();
    let before = (all(&store, &c), store.cursor(&c).unwrap(), version_and_marks(&mut admin, "hr"));

    // The commit waits inside its transaction (it holds the run's row and
    // has read it) and is killed there, every time it tries.
    let held = RowLock::connection(&options, "hr");
    let (done, committed) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            done.send(store.commit_run(run, set_cursor("c2"), &finish(RunOutcome::Succeeded, time(2, 0)))).unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let result = loop {
            assert!(Instant::now() < deadline, "the commit neither failed nor finished");
            terminate_idsync_backends(&mut admin, true);
            if let Ok(result) = committed.recv_timeout(Duration::from_millis(50)) {
                break result;
            }
        };
        let err = result.unwrap_err();
        assert!(matches!(err, StoreError::Postgres(_)), "{err}");
    });
    held.release();
    assert_eq!((all(&store, &c), store.cursor(&c).unwrap(), version_and_marks(&mut admin, "hr")), before);
    assert_eq!(store.run(run).unwrap().unwrap().finished_at, None);
    assert_eq!(store.staged_rows(run), 2);

    // The run is whole: it commits now.
    store.commit_run(run, set_cursor("c2"), &finish(RunOutcome::Succeeded, time(3, 0))).unwrap();
    assert_eq!(all(&store, &c), vec![account("E1", 2), account("E2", 1)]);
}

#[test]
fn a_commit_of_many_accounts_updates_the_planners_statistics() {
    let (store, options) = store();
    let mut admin = admin(&options);
    let analyzed = |admin: &mut Client| -> bool {
        // Manual ANALYZE only (autovacuum's is `last_autoanalyze`).
        admin
            .query_one("SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'accounts'", &[])
            .unwrap()
            .get(0)
    };
    let write = |name: &str, n: usize| {
        let c = conn(name);
        let accounts: Vec<EncodedAccount> = (0..n)
            .map(|i| {
                let mut a = Account::new(format!("E{i:06}"));
                a.normalize();
                EncodedAccount::new(&a, a.content_hash())
            })
            .collect();
        let run = store.start_run(&new_run(&c, time(0, 0))).unwrap();
        store
            .commit_run_writing(run, &accounts, CursorUpdate::Keep, &finish(RunOutcome::Succeeded, time(1, 0)), &[])
            .unwrap();
    };
    write("small", 100);
    assert!(!analyzed(&mut admin), "a small commit leaves it to autovacuum");
    write("large", ANALYZE_AFTER as usize);
    assert!(analyzed(&mut admin));
}
