//! The import safeguard: a sync that would delete more than a set share (or
//! number) of a connection's accounts applies nothing and waits for a person
//! to confirm, as Okta's import safeguard does.

use idsync_api::connection::ImportSafeguard;

/// A sync the safeguard held back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this sync would delete {deletes} of {total} accounts ({percent}%), more than the import safeguard allows ({limit}); nothing was applied. To apply it, create a ResyncRequest naming this connection with confirmDeletes: true"
)]
pub struct Tripped {
    pub deletes: u64,
    pub total: u64,
    /// The share of deletions, never rounded up past the truth ("25.01",
    /// "30").
    pub percent: String,
    pub limit: String,
}

/// Checks `deletes` out of the `total` accounts the connection had before
/// the sync.
pub fn check(deletes: u64, total: u64, settings: &ImportSafeguard) -> Result<(), Tripped> {
    if deletes == 0 || total == 0 {
        return Ok(());
    }
    let over_percent = settings.max_delete_percent < 100
        && u128::from(deletes) * 100 > u128::from(settings.max_delete_percent) * u128::from(total);
    let over_count = settings.max_delete_count.is_some_and(|max| deletes > max);
    if !(over_percent || over_count) {
        return Ok(());
    }
    let limit = match (over_percent, settings.max_delete_count) {
        (true, _) => format!("{}%", settings.max_delete_percent),
        (false, Some(max)) => format!("{max} accounts"),
        (false, None) => String::new(),
    };
    Err(Tripped { deletes, total, percent: percent(deletes, total), limit })
}

/// `part` of `whole` in percent with up to two decimals, cut, not rounded:
/// 2501 of 10,000 is "25.01", 1 of 3 "33.33", 30 of 100 "30", 1 of 100,000
/// "<0.01". A share the
/// limit compares as over it never reads as the limit itself, and no share
/// reads larger than it is.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0".to_string();
    }
    let hundredths = u128::from(part) * 10_000 / u128::from(whole);
    if hundredths == 0 && part > 0 {
        return "<0.01".to_string();
    }
    let (units, fraction) = (hundredths / 100, hundredths % 100);
    match fraction {
        0 => format!("{units}"),
        f if f % 10 == 0 => format!("{units}.{}", f / 10),
        f => format!("{units}.{f:02}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(percent: u32, count: Option<u64>) -> ImportSafeguard {
        ImportSafeguard { max_delete_percent: percent, max_delete_count: count }
    }

    #[test]
    fn trips_above_the_share_and_not_at_it() {
        assert!(check(20, 100, &settings(20, None)).is_ok());
        let tripped = check(30, 100, &settings(20, None)).expect_err("30% > 20%");
        assert_eq!(tripped.percent, "30");
        assert!(tripped.to_string().contains("would delete 30 of 100 accounts (30%)"));
        assert!(tripped.to_string().contains("confirmDeletes: true"));
        assert!(check(21, 100, &settings(20, None)).is_err());
    }

    #[test]
    fn shares_are_never_rounded_up_past_the_truth() {
        assert_eq!(percent(2501, 10_000), "25.01");
        assert_eq!(percent(1, 3), "33.33");
        assert_eq!(percent(2, 3), "66.66");
        assert_eq!(percent(1, 8), "12.5");
        assert_eq!(percent(30, 100), "30");
        assert_eq!(percent(1, 100_000), "<0.01");
        assert_eq!(percent(0, 100), "0");
        assert_eq!(percent(u64::MAX, u64::MAX), "100");
        let tripped = check(2501, 10_000, &settings(25, None)).expect_err("25.01% > 25%");
        assert!(tripped.to_string().contains("would delete 2501 of 10000 accounts (25.01%)"), "{tripped}");
        // Just over the limit is over it, and says so with the decimals.
        let tripped = check(201, 1000, &settings(20, None)).expect_err("20.1% > 20%");
        assert_eq!(tripped.percent, "20.1");
    }

    #[test]
    fn trips_above_the_count_whatever_the_share() {
        let tripped = check(201, 100_000, &settings(20, Some(200))).expect_err("count");
        assert_eq!(tripped.limit, "200 accounts");
        assert!(check(200, 100_000, &settings(20, Some(200))).is_ok());
    }

    #[test]
    fn nothing_to_protect_or_turned_off() {
        assert!(check(0, 100, &settings(0, Some(0))).is_ok());
        assert!(check(5, 0, &settings(0, None)).is_ok());
        assert!(check(100, 100, &settings(100, None)).is_ok());
    }
}
