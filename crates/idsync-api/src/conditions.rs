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
}
