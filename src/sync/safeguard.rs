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
    pub percent: u64,
    pub limit: String,
}

/// Checks `deletes` out of the `total` accounts the connection had before
/// the sync.
pub fn check(deletes: u64, total: u64, settings: &ImportSafeguard) -> Result<(), Tripped> {
    if deletes == 0 || total == 0 {
        return Ok(());
    }
    // Rounded up, so 20.5% of deletions is not let through as "20%".
    let percent = (deletes * 100).div_ceil(total);
    let over_percent =
        settings.max_delete_percent < 100 && deletes * 100 > u64::from(settings.max_delete_percent) * total;
    let over_count = settings.max_delete_count.is_some_and(|max| deletes > max);
    if !(over_percent || over_count) {
        return Ok(());
    }
    let limit = match (over_percent, settings.max_delete_count) {
        (true, _) => format!("{}%", settings.max_delete_percent),
        (false, Some(max)) => format!("{max} accounts"),
        (false, None) => String::new(),
    };
    Err(Tripped { deletes, total, percent, limit })
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
        assert_eq!(tripped.percent, 30);
        assert!(tripped.to_string().contains("would delete 30 of 100 accounts (30%)"));
        assert!(tripped.to_string().contains("confirmDeletes: true"));
        assert!(check(21, 100, &settings(20, None)).is_err());
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
