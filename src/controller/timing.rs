//! Time arithmetic that cannot panic. jiff's `Timestamp + SignedDuration`
//! panics when the sum leaves the range a timestamp holds (the years -9999
//! to 9999), and the numbers and times the controllers add come from
//! manifests and from objects anyone with access to the cluster can edit: a
//! sum out of range must mean "never", not a panic.

use jiff::{SignedDuration, Timestamp};

/// `at + duration`, or the end of the timestamp range the sum would leave.
/// A deadline that far away is never reached, which is what it means.
pub fn saturating_add(at: Timestamp, duration: SignedDuration) -> Timestamp {
    at.checked_add(duration).unwrap_or(if duration.is_negative() { Timestamp::MIN } else { Timestamp::MAX })
}

/// When an object that finished at `finished` expires after `ttl_seconds`
/// (a ResyncRequest's `ttlSecondsAfterFinished`); None when it never does.
/// An expiry that cannot be computed (a negative TTL, which the schema
/// refuses, or one past the end of time) keeps the object: deleting early
/// would lose what a person may still want to read.
pub fn expiry(finished: Timestamp, ttl_seconds: i64) -> Option<Timestamp> {
    if ttl_seconds < 0 {
        return None;
    }
    finished.checked_add(SignedDuration::from_secs(ttl_seconds)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn a_sum_in_range_is_the_sum() {
        assert_eq!(
            saturating_add(ts("2026-11-22T12:00:00Z"), SignedDuration::from_hours(2)),
            ts("2026-11-22T14:00:00Z")
        );
        assert_eq!(
            saturating_add(ts("2026-11-22T12:00:00Z"), SignedDuration::from_hours(-2)),
            ts("2026-11-22T10:00:00Z")
        );
    }

    #[test]
    fn a_sum_out_of_range_saturates_instead_of_panicking() {
        let now = ts("2026-11-22T12:00:00Z");
        assert_eq!(saturating_add(now, SignedDuration::MAX), Timestamp::MAX);
        assert_eq!(saturating_add(now, SignedDuration::MIN), Timestamp::MIN);
        assert_eq!(saturating_add(Timestamp::MAX, SignedDuration::from_secs(1)), Timestamp::MAX);
        assert_eq!(saturating_add(Timestamp::MIN, SignedDuration::from_secs(-1)), Timestamp::MIN);
    }

    #[test]
    fn a_ttl_expires_that_many_seconds_after_the_finish() {
        let done = ts("2026-11-22T12:00:00Z");
        assert_eq!(expiry(done, 0), Some(done));
        assert_eq!(expiry(done, 86_400), Some(ts("2026-11-23T12:00:00Z")));
        // The schema's maximum, one year.
        assert_eq!(expiry(done, 365 * 24 * 3600), Some(ts("2027-11-22T12:00:00Z")));
    }

    #[test]
    fn a_ttl_that_cannot_be_added_means_never() {
        let done = ts("2026-11-22T12:00:00Z");
        // What once panicked every controller: 9e18 seconds is about 285
        // billion years.
        assert_eq!(expiry(done, 9_000_000_000_000_000_000), None);
        assert_eq!(expiry(done, i64::MAX), None);
        // A year's TTL on a completion time near the end of the range (a
        // status anyone may edit).
        assert_eq!(expiry(ts("9999-06-01T00:00:00Z"), 365 * 24 * 3600), None);
        assert_eq!(expiry(done, -1), None);
    }
}
