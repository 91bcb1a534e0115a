//! Condition types and reasons, and the one way idsync updates a condition
//! list, following the Kubernetes API conventions: `lastTransitionTime` moves
//! only when the status changes, and every condition carries the generation
//! it was computed from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The object is working as its spec asks (kstatus' `Ready`).
pub const READY: &str = "Ready";
/// A sync of the Connection is running right now.
pub const SYNCING: &str = "Syncing";
/// Something a person must fix stops progress (bad spec, missing Secret,
/// revoked credential); True only while that is so.
pub const STALLED: &str = "Stalled";
/// An IdentityProfile is processing identities right now.
pub const PROCESSING: &str = "Processing";
/// A ResyncRequest has finished, successfully or not.
pub const COMPLETE: &str = "Complete";

/// Condition status values.
pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` when
/// the status did not change. Returns true when anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: Time,
) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let unchanged = existing.status == status
                && existing.reason == reason
                && existing.message == message
                && existing.observed_generation == observed_generation;
            if unchanged {
                return false;
            }
            if existing.status != status {
                existing.last_transition_time = now;
            }
            existing.status = status.to_string();
            existing.reason = reason.to_string();
            existing.message = message.to_string();
            existing.observed_generation = observed_generation;
            true
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message: message.to_string(),
                observed_generation,
                last_transition_time: now,
            });
            true
        }
    }
}

/// Sets `Syncing` to False: no sync of the Connection is running.
pub fn mark_idle(conditions: &mut Vec<Condition>, observed_generation: Option<i64>, now: Time) -> bool {
    set_condition(conditions, SYNCING, FALSE, "Idle", "no sync is running", observed_generation, now)
}

/// The condition of type `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conditions = Vec::new();
        assert!(set_condition(&mut conditions, READY, FALSE, "Syncing", "first sync", Some(1), at(10)));
        assert!(set_condition(&mut conditions, READY, FALSE, "Waiting", "still waiting", Some(2), at(20)));
        assert_eq!(conditions[0].last_transition_time, at(10));
        assert_eq!(conditions[0].reason, "Waiting");
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert!(set_condition(&mut conditions, READY, TRUE, "Synced", "done", Some(2), at(30)));
        assert_eq!(conditions[0].last_transition_time, at(30));
        assert!(!set_condition(&mut conditions, READY, TRUE, "Synced", "done", Some(2), at(40)));
        assert_eq!(conditions[0].last_transition_time, at(30));
        assert_eq!(conditions.len(), 1);
        assert!(is_true(&conditions, READY));
        assert!(!is_true(&conditions, STALLED));
    }

    #[test]
    fn a_new_condition_carries_everything_it_was_given() {
        let mut conditions = Vec::new();
        assert!(set_condition(&mut conditions, STALLED, TRUE, "InvalidSchedule", "spec.schedule: bad", Some(3), at(5)));
        assert_eq!(
            conditions,
            vec![Condition {
                type_: STALLED.into(),
                status: TRUE.into(),
                reason: "InvalidSchedule".into(),
                message: "spec.schedule: bad".into(),
                observed_generation: Some(3),
                last_transition_time: at(5),
            }]
        );
    }

    #[test]
    fn a_new_reason_or_message_is_a_change_that_keeps_the_transition_time() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, TRUE, "Synced", "3 accounts", Some(1), at(10));
        assert!(set_condition(&mut conditions, READY, TRUE, "Synced", "4 accounts", Some(1), at(20)), "message");
        assert!(set_condition(&mut conditions, READY, TRUE, "Resynced", "4 accounts", Some(1), at(30)), "reason");
        assert_eq!((conditions[0].reason.as_str(), conditions[0].message.as_str()), ("Resynced", "4 accounts"));
        assert_eq!(conditions[0].last_transition_time, at(10));
    }

    #[test]
    fn a_new_generation_alone_is_a_change_that_keeps_the_transition_time() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, TRUE, "Synced", "done", Some(1), at(10));
        assert!(set_condition(&mut conditions, READY, TRUE, "Synced", "done", Some(2), at(20)));
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].last_transition_time, at(10));
        // Losing the generation is a change too.
        assert!(set_condition(&mut conditions, READY, TRUE, "Synced", "done", None, at(30)));
        assert_eq!(conditions[0].observed_generation, None);
    }

    #[test]
    fn every_status_change_moves_the_transition_time() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, UNKNOWN, "Starting", "", Some(1), at(10));
        for (status, second) in [(TRUE, 20), (FALSE, 30), (UNKNOWN, 40), (TRUE, 50)] {
            assert!(set_condition(&mut conditions, READY, status, "Any", "", Some(1), at(second)));
            assert_eq!((conditions[0].status.as_str(), &conditions[0].last_transition_time), (status, &at(second)));
        }
    }

    #[test]
    fn conditions_of_other_types_are_left_alone_and_keep_their_order() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, FALSE, "Waiting", "", Some(1), at(10));
        set_condition(&mut conditions, STALLED, FALSE, "Ok", "", Some(1), at(10));
        assert!(mark_idle(&mut conditions, Some(1), at(20)));
        let before = conditions.clone();
        assert!(set_condition(&mut conditions, STALLED, TRUE, "BadSecret", "no key token", Some(2), at(30)));
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, STALLED, SYNCING]);
        assert_eq!(conditions[0], before[0]);
        assert_eq!(conditions[2], before[2]);
        assert_eq!(find(&conditions, STALLED).map(|c| c.last_transition_time.clone()), Some(at(30)));
    }

    #[test]
    fn mark_idle_sets_syncing_false_once() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, SYNCING, TRUE, "Syncing", "a Full sync is running", Some(4), at(10));
        assert!(is_true(&conditions, SYNCING));
        assert!(mark_idle(&mut conditions, Some(4), at(20)));
        let syncing = find(&conditions, SYNCING).expect("Syncing");
        assert_eq!((syncing.status.as_str(), syncing.reason.as_str()), (FALSE, "Idle"));
        assert_eq!((syncing.observed_generation, &syncing.last_transition_time), (Some(4), &at(20)));
        assert!(!mark_idle(&mut conditions, Some(4), at(30)), "already idle: nothing to write");
        assert_eq!(find(&conditions, SYNCING).map(|c| c.last_transition_time.clone()), Some(at(20)));
    }

    #[test]
    fn find_and_is_true_on_absent_and_unknown_conditions() {
        assert_eq!(find(&[], READY), None);
        assert!(!is_true(&[], READY));
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, UNKNOWN, "Starting", "", None, at(1));
        assert_eq!(find(&conditions, READY).map(|c| c.status.as_str()), Some(UNKNOWN));
        assert!(!is_true(&conditions, READY), "Unknown is not True");
        assert_eq!(find(&conditions, "ready"), None, "types are case-sensitive");
    }
}
