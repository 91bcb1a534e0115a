//! Ages and durations as `kubectl get` prints them, for the devcluster's
//! tables and `idsync identities`.

use jiff::SignedDuration;

/// apimachinery's `duration.HumanDuration`: ~2-3 significant figures ("45s", "5m10s", "3h", "2d4h", "400d",
/// "2y3d"), "0s" for up to a second in the future and "<invalid>" beyond.
pub fn human_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 { format!("{}y", hours / 24 / 365) } else { format!("{}y{days}d", hours / 24 / 365) };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_duration_boundaries() {
        let h = |secs: i64| human_duration(SignedDuration::from_secs(secs));
        let day = 24 * 3600;
        assert_eq!(human_duration(SignedDuration::from_millis(-1500)), "0s");
        assert_eq!(h(-2), "<invalid>");
        assert_eq!(h(-1), "0s");
        assert_eq!(h(0), "0s");
        assert_eq!(h(45), "45s");
        assert_eq!(h(119), "119s");
        assert_eq!(h(120), "2m");
        assert_eq!(h(310), "5m10s");
        assert_eq!(h(599), "9m59s");
        assert_eq!(h(600), "10m");
        assert_eq!(h(3 * 3600 - 1), "179m");
        assert_eq!(h(3 * 3600), "3h");
        assert_eq!(h(3 * 3600 + 25 * 60), "3h25m");
        assert_eq!(h(8 * 3600), "8h");
        assert_eq!(h(47 * 3600 + 59 * 60), "47h");
        assert_eq!(h(2 * day), "2d");
        assert_eq!(h(2 * day + 4 * 3600), "2d4h");
        assert_eq!(h(8 * day - 1), "7d23h");
        assert_eq!(h(8 * day), "8d");
        assert_eq!(h(400 * day), "400d");
        assert_eq!(h(730 * day - 1), "729d");
        assert_eq!(h(730 * day), "2y");
        assert_eq!(h(733 * day), "2y3d");
        assert_eq!(h(8 * 365 * day - 1), "7y364d");
        assert_eq!(h(8 * 365 * day), "8y");
        assert_eq!(h(20 * 365 * day + 100 * day), "20y");
    }

    #[test]
    fn ages_are_formatted_as_kubectl_does() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (5 * 60 + 30, "5m30s"),
            (10 * 60 + 30, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (8 * 3600 + 59 * 60, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (2 * 86400 + 5 * 3600, "2d5h"),
            (8 * 86400 + 5 * 3600, "8d"),
            (400 * 86400, "400d"),
            (730 * 86400, "2y"),
            (740 * 86400, "2y10d"),
            (8 * 365 * 86400 + 100 * 86400, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(SignedDuration::from_secs(secs)), want, "{secs}s");
        }
        // Fractions are cut, as Go's integer conversion does.
        assert_eq!(human_duration(SignedDuration::from_millis(1999)), "1s");
    }
}
