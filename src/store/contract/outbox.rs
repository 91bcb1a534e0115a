//! The contract of [`NotificationOutbox`]: idempotent enqueueing, retries,
//! and notifications that commit with a run's result or not at all.

use jiff::Timestamp;

use super::accounts::ContractStore;
use super::contract_tests;
use crate::model::{ConnectionRef, Counts, NewRun, RunFinish, RunMode, RunOutcome, Trigger};
use crate::store::CursorUpdate;
use crate::store::outbox::{Delivery, OutboxEntry};

contract_tests!(
    the_same_key_is_enqueued_once,
    a_retry_waits_for_its_time_and_a_sent_entry_is_never_due_again,
    a_runs_notifications_commit_with_its_result_or_not_at_all,
    given_up_entries_are_kept_abandoned_and_old_finished_ones_pruned,
);

fn entry(key: &str, at: Timestamp) -> OutboxEntry {
    OutboxEntry {
        key: key.to_string(),
        namespace: "default".into(),
        provider: "mail".into(),
        policy: Some("admins".into()),
        event: "SyncSucceeded".into(),
        recipients: vec!["a@acme.example".into()],
        payload: "{}".into(),
        created_at: at,
    }
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).expect("time")
}

fn the_same_key_is_enqueued_once<S: ContractStore>(store: &S) {
    assert_eq!(store.enqueue(&[entry("k1", at(0)), entry("k1", at(1))]).expect("enqueue"), 1);
    assert_eq!(store.enqueue(&[entry("k1", at(2)), entry("k2", at(2))]).expect("enqueue"), 1);
    assert_eq!(store.outbox_depth().expect("depth"), 2);
    let due = store.due_notifications(at(5), 10).expect("due");
    assert_eq!(due.iter().map(|d| d.entry.key.as_str()).collect::<Vec<_>>(), ["k1", "k2"]);
    assert_eq!(due[0].entry, entry("k1", at(0)));
    // A webhook's entry: no policy, no recipients.
    let webhook = OutboxEntry { policy: None, recipients: Vec::new(), ..entry("k3", at(3)) };
    assert_eq!(store.enqueue(std::slice::from_ref(&webhook)).expect("enqueue"), 1);
    assert_eq!(store.due_notifications(at(5), 10).expect("due")[2].entry, webhook);
    assert_eq!(store.due_notifications(at(5), 1).expect("due").len(), 1);
    assert_eq!(store.enqueue(&[]).expect("enqueue nothing"), 0);
}

fn a_retry_waits_for_its_time_and_a_sent_entry_is_never_due_again<S: ContractStore>(store: &S) {
    store.enqueue(&[entry("k1", at(0))]).expect("enqueue");
    let id = store.due_notifications(at(0), 10).expect("due")[0].id;
    store.record_delivery(id, &Delivery::Retry { at: at(1), next: at(60), error: "refused".into() }).expect("retry");
    assert!(store.due_notifications(at(59), 10).expect("due").is_empty());
    assert_eq!(store.next_due().expect("next"), Some(at(60)));
    let due = store.due_notifications(at(60), 10).expect("due");
    assert_eq!((due.len(), due[0].attempts), (1, 1));
    store.record_delivery(id, &Delivery::Sent { at: at(61) }).expect("sent");
    assert!(store.due_notifications(at(10_000), 10).expect("due").is_empty());
    assert_eq!(store.outbox_depth().expect("depth"), 0);
    assert_eq!(store.next_due().expect("next"), None);
    let records = store.outbox_records(10).expect("records");
    assert_eq!((records[0].state.as_str(), records[0].attempts), ("Sent", 2));
    // Its key still turns a late duplicate away.
    assert_eq!(store.enqueue(&[entry("k1", at(100))]).expect("enqueue"), 0);
}

fn given_up_entries_are_kept_abandoned_and_old_finished_ones_pruned<S: ContractStore>(store: &S) {
    store.enqueue(&[entry("old", at(0)), entry("pending", at(0))]).expect("enqueue");
    let due = store.due_notifications(at(0), 10).expect("due");
    let (old, pending) = (due[0].id, due[1].id);
    store.record_delivery(old, &Delivery::GaveUp { at: at(1), error: "mailbox gone".into() }).expect("gave up");
    let records = store.outbox_records(10).expect("records");
    assert_eq!((records[0].state.as_str(), records[0].last_error.as_str()), ("Abandoned", "mailbox gone"));
    assert_eq!(store.outbox_depth().expect("depth"), 1);
    // 31 days later, a newer entry's delivery prunes the finished old one;
    // pending entries stay whatever their age.
    let later = at(31 * 24 * 3600);
    store.enqueue(&[entry("new", later)]).expect("enqueue");
    let new = store.due_notifications(later, 10).expect("due").into_iter().find(|d| d.entry.key == "new").expect("new");
    store.record_delivery(new.id, &Delivery::Sent { at: later }).expect("sent");
    let keys: Vec<String> = store.outbox_records(10).expect("records").into_iter().map(|r| r.entry.key).collect();
    assert_eq!(keys, ["pending", "new"]);
    assert_eq!(store.due_notifications(later, 10).expect("due")[0].id, pending);
}

fn started(store: &dyn crate::store::AccountStore) -> i64 {
    store
        .start_run(&NewRun {
            connection: ConnectionRef::new("default", "hr"),
            trigger: Trigger::Scheduled,
            request: None,
            requested_mode: RunMode::Full,
            holder: "test".into(),
            started_at: at(0),
        })
        .expect("run")
}

fn finish(outcome: RunOutcome) -> RunFinish {
    RunFinish {
        outcome,
        mode: Some(RunMode::Full),
        counts: Counts::default(),
        message: String::new(),
        finished_at: at(1),
    }
}

fn a_runs_notifications_commit_with_its_result_or_not_at_all<S: ContractStore>(store: &S) {
    let run = started(store);
    store
        .commit_run_notifying(run, CursorUpdate::Keep, &finish(RunOutcome::Succeeded), &[entry("run-1", at(1))])
        .expect("commit");
    assert_eq!(store.outbox_depth().expect("depth"), 1);
    // A commit that fails (the run already finished) adds nothing.
    let again =
        store.commit_run_notifying(run, CursorUpdate::Keep, &finish(RunOutcome::Succeeded), &[entry("run-1b", at(1))]);
    assert!(again.is_err());
    let failed = started(store);
    store.abandon_run_notifying(failed, &finish(RunOutcome::Failed), &[entry("run-2", at(1))]).expect("abandon");
    let keys: Vec<String> = store.outbox_records(10).expect("records").into_iter().map(|r| r.entry.key).collect();
    assert_eq!(keys, ["run-1", "run-2"]);
}
