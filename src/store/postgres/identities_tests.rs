//! PostgreSQL's own tests of the identity store: failures injected with
//! triggers, corrupt rows, commits larger than one statement, the history's
//! pruning, and what several replicas on one database must never see: two
//! commits of one profile mixed, or half a commit in a snapshot. What every
//! backend does is in `store::contract::identities`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use jiff::SignedDuration;
use serde_json::json;

use super::PgStore;
use super::testing::fresh_database;
use crate::model::{Identity, LinkRecord, ProcessingRunRecord, RunId, RunOutcome, Trigger};
use crate::store::contract::identities::{
    ambiguous, bare, commit, correlated, everything, identity, ids, profile, run, state, uncorrelated,
};
use crate::store::{IdentityStore, ProcessingCommit, ProcessingHistory, ProfileState, Retention, StoreError};

fn store() -> PgStore {
    PgStore::connect(&fresh_database()).expect("connect")
}

fn batch(store: &PgStore, sql: &str) {
    store.write(|tx| Ok(tx.batch_execute(sql)?)).expect(sql);
}

#[test]
fn a_commit_that_fails_halfway_changes_nothing() {
    let store = store();
    let p = profile("people");
    let links = vec![correlated("ldap", "L1", "E1"), uncorrelated("ldap", "L2")];
    store
        .commit_processing(
            &p,
            &commit(vec![identity("E1", Some("Active")), identity("E2", None)], links, state(1)),
            &run(Trigger::Scheduled, RunOutcome::Succeeded, 0),
        )
        .unwrap();
    let before = everything(&store, &p);
    let next = ProcessingCommit {
        upserts: vec![identity("E1", Some("Terminated")), identity("E3", None), identity("E4", None)],
        deletes: vec!["E2".into()],
        link_upserts: vec![ambiguous("ldap", "L1", &["E1", "E3"]), correlated("ldap", "L3", "E3")],
        link_deletes: vec![("ldap".into(), "L2".into())],
        state: state(2),
    };
    batch(
        &store,
        "CREATE FUNCTION sabotage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$;",
    );
    // Each fault hits a later step of the commit than the one before.
    for fault in [
        "BEFORE DELETE ON identities FOR EACH ROW",
        "BEFORE INSERT ON identities FOR EACH ROW WHEN (NEW.id = 'E4')",
        "BEFORE DELETE ON identity_links FOR EACH ROW",
        "BEFORE INSERT ON identity_links FOR EACH ROW WHEN (NEW.account_id = 'L3')",
        "BEFORE UPDATE ON profiles FOR EACH ROW",
        "BEFORE INSERT ON processing_runs FOR EACH ROW",
    ] {
        batch(&store, &format!("CREATE TRIGGER sabotage {fault} EXECUTE FUNCTION sabotage();"));
        let failed = store.commit_processing(&p, &next, &run(Trigger::Manual, RunOutcome::Succeeded, 5));
        let Err(StoreError::Postgres(e)) = &failed else { panic!("{fault}: {failed:?}") };
        assert!(super::error_text(e).contains("disk on fire"), "{fault}: {e}");
        assert_eq!(everything(&store, &p), before, "{fault}");
        let table = fault.split_whitespace().nth(3).expect("the table");
        batch(&store, &format!("DROP TRIGGER sabotage ON {table};"));
    }
    // A profile's first commit that fails does not even leave the profile.
    batch(&store, "CREATE TRIGGER sabotage BEFORE INSERT ON processing_runs FOR EACH ROW EXECUTE FUNCTION sabotage();");
    let new = profile("new");
    assert!(store.commit_processing(&new, &next, &run(Trigger::Manual, RunOutcome::Succeeded, 5)).is_err());
    assert!(store.record_processing_run(&new, &run(Trigger::Manual, RunOutcome::Failed, 5)).is_err());
    batch(&store, "DROP TRIGGER sabotage ON processing_runs;");
    assert_eq!(store.profiles().unwrap(), std::slice::from_ref(&p));
    assert_eq!(everything(&store, &new), Default::default());

    // Once the fault is gone the same commit goes through whole.
    store.commit_processing(&p, &next, &run(Trigger::Manual, RunOutcome::Succeeded, 6)).unwrap();
    let (identities, links, state_after, runs) = everything(&store, &p);
    assert_eq!(ids(&identities), ["E1", "E3", "E4"]);
    assert_eq!(links, [ambiguous("ldap", "L1", &["E1", "E3"]), correlated("ldap", "L3", "E3")]);
    assert_eq!(state_after, state(2));
    assert_eq!(runs.len(), 2);
}

#[test]
fn unreadable_identity_rows_are_corrupt_not_a_panic() {
    let store = store();
    let p = profile("people");
    let one = commit(vec![identity("E1", None), identity("E2", None)], vec![uncorrelated("ldap", "L1")], state(1));
    store.commit_processing(&p, &one, &run(Trigger::Scheduled, RunOutcome::Succeeded, 0)).unwrap();
    // E2's record under E3's key.
    batch(
        &store,
        "UPDATE identities SET id = 'E3', data = (SELECT data FROM identities WHERE id = 'E2') WHERE id = 'E1';",
    );
    assert!(matches!(store.get_identity(&p, "E3"), Err(StoreError::Corrupt(_))));
    assert!(matches!(store.processing_snapshot(&p, &[]), Err(StoreError::Corrupt(_))));
    batch(&store, "UPDATE identities SET data = 'not json' WHERE id = 'E3';");
    assert!(matches!(store.list_identities(&p, None, None, 10), Err(StoreError::Corrupt(_))));
    assert_eq!(store.get_identity(&p, "E2").unwrap(), Some(identity("E2", None)));
    batch(&store, "UPDATE identity_links SET candidates = '[1,' WHERE account_id = 'L1';");
    assert!(matches!(store.list_links(&p, None), Err(StoreError::Corrupt(_))));
    batch(&store, "UPDATE profiles SET seen_versions = 'nope';");
    assert!(matches!(store.profile_state(&p), Err(StoreError::Corrupt(_))));
}

/// `n` identities whose attribute `writer` says who wrote them, with a link
/// each, and ids `{prefix}-i` besides the shared `E-i`.
fn generation(n: usize, writer: &str, shared: bool) -> (Vec<Identity>, Vec<LinkRecord>) {
    let prefix = if shared { "E".to_string() } else { writer.to_string() };
    (0..n)
        .map(|i| {
            let mut identity = bare(&format!("{prefix}-{i:05}"));
            identity.attributes.insert("writer".into(), json!(writer));
            identity.lifecycle_state = Some(writer.to_string());
            let link = correlated("ldap", &format!("uid={prefix}-{i:05}"), &identity.id);
            (identity, link)
        })
        .unzip()
}

#[test]
fn a_commit_larger_than_one_statement_writes_every_row_and_keeps_the_last_of_a_repeated_id() {
    let store = store();
    let p = profile("people");
    let n = super::identities::ROWS_PER_STATEMENT * 2 + 7;
    let (mut identities, links) = generation(n, "A", true);
    // The same id twice in one commit: the later record is the one kept,
    // as a second upsert leaves it in SQLite.
    let mut again = identities[3].clone();
    again.lifecycle_state = Some("again".into());
    identities.push(again.clone());
    let mut link_again = links[3].clone();
    link_again.state = crate::model::LinkState::Uncorrelated;
    link_again.identity = None;
    let mut all_links = links.clone();
    all_links.push(link_again.clone());
    store
        .commit_processing(
            &p,
            &commit(identities, all_links, state(1)),
            &run(Trigger::Manual, RunOutcome::Succeeded, 0),
        )
        .unwrap();
    let snapshot = store.processing_snapshot(&p, &[]).unwrap();
    assert_eq!(snapshot.identities.len(), n);
    assert_eq!(snapshot.identities[&again.id], again);
    assert_eq!(snapshot.links.len(), n);
    assert_eq!(snapshot.links[&(link_again.connection.clone(), link_again.account_id.clone())], link_again);

    // Deleting all but one, past a statement's rows too.
    let deleting = ProcessingCommit {
        deletes: snapshot.identities.keys().filter(|id| **id != again.id).cloned().collect(),
        link_deletes: links.iter().skip(1).map(|l| (l.connection.clone(), l.account_id.clone())).collect(),
        state: state(2),
        ..ProcessingCommit::default()
    };
    store.commit_processing(&p, &deleting, &run(Trigger::Manual, RunOutcome::Succeeded, 1)).unwrap();
    let (identities, links_after, _, _) = everything(&store, &p);
    assert_eq!(identities, [again]);
    assert_eq!(links_after, [links[0].clone()]);
}

#[test]
fn the_processing_history_is_pruned_by_count_and_age() {
    let retention = Retention { max_runs: 2, max_age: SignedDuration::from_secs(1000) };
    let store = store().with_retention(retention);
    let p = profile("people");
    let record = |at: i64| ProcessingRunRecord {
        started_at: run(Trigger::Scheduled, RunOutcome::Succeeded, at).finished_at,
        ..run(Trigger::Scheduled, RunOutcome::Succeeded, at)
    };
    let kept = || -> Vec<RunId> { store.processing_runs(&p, 10).unwrap().into_iter().map(|r| r.id).collect() };
    let ids: Vec<RunId> = (0..4).map(|i| store.record_processing_run(&p, &record(i)).unwrap()).collect();
    assert_eq!(kept(), [ids[3], ids[2]]);
    // Committing prunes too.
    let committed = store.commit_processing(&p, &commit(vec![bare("E1")], Vec::new(), state(1)), &record(10)).unwrap();
    assert_eq!(kept(), [committed, ids[3]]);
    let late = store.record_processing_run(&p, &record(5000)).unwrap();
    assert_eq!(kept(), [late], "runs older than the age limit go");
    // Another profile's history is its own.
    let other = profile("other");
    let theirs = store.record_processing_run(&other, &record(0)).unwrap();
    assert_eq!(store.processing_runs(&other, 10).unwrap()[0].id, theirs);
}

#[test]
fn two_replicas_committing_one_profile_at_once_leave_one_whole_result() {
    let options = fresh_database();
    let (a, b) = (PgStore::connect(&options).unwrap(), PgStore::connect(&options).unwrap());
    let p = profile("people");
    const N: usize = 3_000;
    // Each writer rewrites the shared identities as its own, adds its own
    // and deletes the other's: interleaved, the shared ones would be a mix,
    // or both writers' own identities would survive (each deleting the
    // other's before they were committed).
    let commit_of = |writer: &str, other: &str, generation_no: i64| {
        let (mut identities, mut links) = generation(N, writer, true);
        let (own, own_links) = generation(N, writer, false);
        identities.extend(own);
        links.extend(own_links);
        let (theirs, their_links) = generation(N, other, false);
        ProcessingCommit {
            upserts: identities,
            deletes: theirs.into_iter().map(|i| i.id).collect(),
            link_upserts: links,
            link_deletes: their_links.into_iter().map(|l| (l.connection, l.account_id)).collect(),
            state: ProfileState {
                applied_generation: Some(generation_no),
                mapping_hash: Some(writer.into()),
                ..state(1)
            },
        }
    };
    let (from_a, from_b) = (commit_of("A", "B", 1), commit_of("B", "A", 2));
    for round in 0..4 {
        std::thread::scope(|s| {
            let first =
                s.spawn(|| a.commit_processing(&p, &from_a, &run(Trigger::EventBased, RunOutcome::Succeeded, round)));
            let second =
                s.spawn(|| b.commit_processing(&p, &from_b, &run(Trigger::Scheduled, RunOutcome::Succeeded, round)));
            first.join().expect("thread").expect("A commits");
            second.join().expect("thread").expect("B commits");
        });
        let snapshot = a.processing_snapshot(&p, &[]).unwrap();
        let winner = snapshot.state.mapping_hash.clone().expect("a state");
        let loser = if winner == "A" { "B" } else { "A" };
        let writers: BTreeMap<&str, usize> = snapshot.identities.values().fold(BTreeMap::new(), |mut m, i| {
            *m.entry(i.lifecycle_state.as_deref().unwrap_or("")).or_default() += 1;
            m
        });
        assert_eq!(writers, BTreeMap::from([(winner.as_str(), 2 * N)]), "round {round}");
        assert!(snapshot.identities.keys().all(|id| !id.starts_with(loser)), "round {round}");
        assert_eq!(snapshot.links.len(), 2 * N, "round {round}");
        assert!(snapshot.links.keys().all(|(_, account)| !account.starts_with(&format!("uid={loser}"))));
    }
    assert_eq!(a.processing_runs(&p, 100).unwrap().len(), 8, "every run is recorded");
}

#[test]
fn a_snapshot_read_while_another_replica_commits_sees_all_of_that_commit_or_none() {
    let options = fresh_database();
    let (writer, reader) = (PgStore::connect(&options).unwrap(), PgStore::connect(&options).unwrap());
    let p = profile("people");
    const N: usize = 2_000;
    let generation_commit = |g: i64| {
        let (identities, links) = generation(N, &format!("g{g}"), true);
        ProcessingCommit {
            upserts: identities,
            link_upserts: links,
            state: ProfileState { applied_generation: Some(g), ..ProfileState::default() },
            ..ProcessingCommit::default()
        }
    };
    writer.commit_processing(&p, &generation_commit(0), &run(Trigger::Manual, RunOutcome::Succeeded, 0)).unwrap();
    let done = AtomicBool::new(false);
    let reads_done = AtomicUsize::new(0);
    let reads = std::thread::scope(|s| {
        s.spawn(|| {
            for g in 1..=12 {
                // A read between each two commits at least; most overlap one.
                // Bounded: a reader that failed reads no more.
                let waiting = std::time::Instant::now();
                while reads_done.load(Ordering::SeqCst) < g as usize && waiting.elapsed().as_secs() < 5 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                writer
                    .commit_processing(&p, &generation_commit(g), &run(Trigger::Manual, RunOutcome::Succeeded, g))
                    .unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        let mut reads = 0;
        let mut generations = std::collections::BTreeSet::new();
        while !done.load(Ordering::SeqCst) || reads < 3 {
            let snapshot = reader.processing_snapshot(&p, &[]).unwrap();
            let g = snapshot.state.applied_generation.expect("a generation");
            let expected = format!("g{g}");
            assert_eq!(snapshot.identities.len(), N);
            let mixed =
                snapshot.identities.values().filter(|i| i.lifecycle_state.as_deref() != Some(&expected)).count();
            assert_eq!(mixed, 0, "a snapshot of generation {g} holds {mixed} identities of another");
            generations.insert(g);
            reads += 1;
            reads_done.store(reads, Ordering::SeqCst);
        }
        (reads, generations)
    });
    // The reads went along with the commits, not all before or after them.
    assert!(reads.1.len() >= 2, "{reads:?}");
}

#[test]
fn listing_identities_seeks_an_index_in_id_order_right_after_a_large_commit() {
    use super::identities::{LIST_ALL, LIST_ALL_AFTER, LIST_IN_STATE, LIST_IN_STATE_AFTER};
    let store = store();
    let p = profile("people");
    // Statistics taken while another profile held every identity, then a
    // large commit: the planner still reads this profile's pages off an
    // index, without a sort (so the store needs no ANALYZE of its own after
    // commits, unlike the accounts').
    let (few, _) = generation(200, "A", false);
    let other = profile("other");
    store
        .commit_processing(&other, &commit(few, Vec::new(), state(1)), &run(Trigger::Manual, RunOutcome::Succeeded, 0))
        .unwrap();
    batch(&store, "ANALYZE identities;");
    let (mut identities, _) = generation(12_000, "A", true);
    // Fifty states: listing one reads its index, not the whole profile's.
    for (i, identity) in identities.iter_mut().enumerate() {
        identity.lifecycle_state = Some(format!("S{}", i % 50));
    }
    store
        .commit_processing(
            &p,
            &commit(identities, Vec::new(), state(1)),
            &run(Trigger::Manual, RunOutcome::Succeeded, 0),
        )
        .unwrap();
    for (sql, params, index) in [
        (LIST_ALL, "2, 10", "identities_pkey"),
        (LIST_ALL_AFTER, "2, 'E-02000', 10", "identities_pkey"),
        (LIST_IN_STATE, "2, 'S7', 10", "identities_by_state"),
        (LIST_IN_STATE_AFTER, "2, 'S7', 'E-02000', 10", "identities_by_state"),
    ] {
        // `people` is the second profile the store has seen.
        let plan: Vec<String> = store
            .write(|tx| {
                tx.batch_execute(&format!("PREPARE listing AS {sql}"))?;
                let rows = tx.query(&format!("EXPLAIN EXECUTE listing({params})"), &[])?;
                tx.batch_execute("DEALLOCATE listing")?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains(&format!("Index Scan using {index}")), "{sql}:\n{plan}");
        assert!(!plan.contains("Sort"), "{sql}:\n{plan}");
    }
}
