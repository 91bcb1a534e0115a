//! Cron schedules in a time zone: standard five-field expressions (minute,
//! hour, day of month, month, day of week) as Kubernetes CronJobs read them,
//! plus the `@hourly`-style macros, evaluated on the wall clock of an IANA
//! time zone. A time that a DST change skips runs at the first instant after
//! the gap; a time that occurs twice runs once, at its first occurrence.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    dom_restricted: bool,
    dow_restricted: bool,
    source: String,
}

/// Why a schedule cannot be used, worded for a status condition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron expression {expression:?}: {problem}")]
    Cron { expression: String, problem: CronError },
    #[error("time zone {0:?} is not a known IANA time zone")]
    TimeZone(String),
    #[error("a schedule needs at least one cron expression")]
    Empty,
}

/// What is wrong with one cron expression; the field variants name the
/// field and the text or number that is wrong in it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("unknown macro {0}")]
    UnknownMacro(String),
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    #[error("{field} field: step {step:?} is not a number")]
    StepNotANumber { field: CronField, step: String },
    #[error("{field} field: a step of 0 never matches")]
    ZeroStep { field: CronField },
    #[error("{field} field: {value:?} is not a number")]
    NotANumber { field: CronField, value: String },
    #[error("{field} field: {value} is outside {min}-{max}")]
    OutOfRange { field: CronField, value: u64, min: u64, max: u64 },
    #[error("{field} field: range {range:?} runs backwards")]
    Backwards { field: CronField, range: String },
}

/// The five fields of a cron expression, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CronField {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl CronField {
    /// The field's range and the names it accepts for its values.
    fn bounds(self) -> (u64, u64, &'static [&'static str]) {
        const MONTHS: &[&str] = &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
        const DAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
        match self {
            CronField::Minute => (0, 59, &[]),
            CronField::Hour => (0, 23, &[]),
            CronField::DayOfMonth => (1, 31, &[]),
            CronField::Month => (1, 12, MONTHS),
            // 7 is Sunday too.
            CronField::DayOfWeek => (0, 7, DAYS),
        }
    }
}

impl std::fmt::Display for CronField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

impl Cron {
    pub fn parse(expression: &str) -> Result<Cron, ScheduleError> {
        let fail = |problem: CronError| ScheduleError::Cron { expression: expression.to_string(), problem };
        let expanded = match expression.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => return Err(fail(CronError::UnknownMacro(other.to_string()))),
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(fail(CronError::FieldCount(fields.len())));
        }
        let minutes = parse_field(fields[0], CronField::Minute).map_err(fail)?;
        let hours = parse_field(fields[1], CronField::Hour).map_err(fail)?;
        let doms = parse_field(fields[2], CronField::DayOfMonth).map_err(fail)?;
        let months = parse_field(fields[3], CronField::Month).map_err(fail)?;
        let mut dows = parse_field(fields[4], CronField::DayOfWeek).map_err(fail)?;
        // 7 is Sunday too.
        if dows & (1 << 7) != 0 {
            dows |= 1;
        }
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days_of_month: doms as u32,
            months: months as u16,
            days_of_week: (dows & 0x7f) as u8,
            dom_restricted: !fields[2].starts_with('*'),
            dow_restricted: !fields[4].starts_with('*'),
            source: expression.to_string(),
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        // As in Vixie cron: when both are restricted, either may match.
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first run strictly after `after`, on the wall clock of `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let mut date = start.date();
        // Five years covers every valid expression (29 February included).
        for _ in 0..(366 * 5) {
            if self.day_matches(date) {
                for hour in 0..24i8 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    for minute in 0..60i8 {
                        if self.minutes & (1 << minute) == 0 {
                            continue;
                        }
                        let candidate = DateTime::from_parts(date, jiff::civil::time(hour, minute, 0, 0));
                        if candidate <= start {
                            continue;
                        }
                        let Ok(zoned) = tz.to_ambiguous_zoned(candidate).compatible() else {
                            continue;
                        };
                        if zoned.timestamp() > after {
                            return Some(zoned.timestamp());
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// One or more cron expressions in one time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    crons: Vec<Cron>,
    tz: TimeZone,
}

impl Schedule {
    pub fn parse(expressions: &[String], time_zone: &str) -> Result<Schedule, ScheduleError> {
        if expressions.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let tz = TimeZone::get(time_zone).map_err(|_| ScheduleError::TimeZone(time_zone.to_string()))?;
        let crons = expressions.iter().map(|e| Cron::parse(e)).collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule { crons, tz })
    }

    /// The next run strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.crons.iter().filter_map(|c| c.next_after(after, &self.tz)).min()
    }

    /// The most recent run at or before `at` and after `since`, if any: a
    /// run that fell due while nobody was looking.
    pub fn due_between(&self, since: Timestamp, at: Timestamp) -> Option<Timestamp> {
        let mut due = None;
        let mut cursor = since;
        while let Some(next) = self.next_after(cursor) {
            if next > at {
                break;
            }
            due = Some(next);
            cursor = next;
        }
        due
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The wall-clock time of `at` in the schedule's zone.
    pub fn local(&self, at: Timestamp) -> Zoned {
        at.to_zoned(self.tz.clone())
    }
}

/// Parses one field into a bit set over the field's range.
fn parse_field(text: &str, field: CronField) -> Result<u64, CronError> {
    let (min, max, _) = field.bounds();
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u64 = s.parse().map_err(|_| CronError::StepNotANumber { field, step: s.to_string() })?;
                if step == 0 {
                    return Err(CronError::ZeroStep { field });
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, field)?, value(b, field)?)
        } else {
            let v = value(range, field)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { max } else { v })
        };
        if low > high {
            return Err(CronError::Backwards { field, range: range.to_string() });
        }
        // The step is the expression's own number, up to u64::MAX: a sum
        // past it means no further value in the range.
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            let Some(next) = v.checked_add(step) else { break };
            v = next;
        }
    }
    Ok(bits)
}

/// One value of a field: a number in its range, or one of its names.
fn value(text: &str, field: CronField) -> Result<u64, CronError> {
    let (min, max, names) = field.bounds();
    let upper = text.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        // Month names count from 1 (JAN), day names from 0 (SUN).
        return Ok(i as u64 + u64::from(names.len() == 12));
    }
    let v: u64 = text.parse().map_err(|_| CronError::NotANumber { field, value: text.to_string() })?;
    if v < min || v > max {
        return Err(CronError::OutOfRange { field, value: v, min, max });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(exprs: &[&str], tz: &str, after: &str) -> String {
        let schedule = Schedule::parse(&exprs.iter().map(|s| s.to_string()).collect::<Vec<_>>(), tz).expect("valid");
        schedule.next_after(ts(after)).expect("a next run").to_string()
    }

    #[test]
    fn runs_on_the_wall_clock_of_the_time_zone() {
        // 08:00 and 20:00 in Chicago (UTC-6 in November).
        assert_eq!(
            next(&["0 8 * * *", "0 20 * * *"], "America/Chicago", "2026-11-22T10:00:00Z"),
            "2026-11-22T14:00:00Z"
        );
        assert_eq!(
            next(&["0 8 * * *", "0 20 * * *"], "America/Chicago", "2026-11-22T14:00:00Z"),
            "2026-11-23T02:00:00Z"
        );
        assert_eq!(next(&["30 1 * * *"], "UTC", "2026-11-22T01:30:00Z"), "2026-11-23T01:30:00Z");
    }

    #[test]
    fn steps_ranges_lists_names_and_macros() {
        assert_eq!(next(&["*/15 * * * *"], "UTC", "2026-11-22T10:07:00Z"), "2026-11-22T10:15:00Z");
        assert_eq!(next(&["0 9-17/4 * * MON-FRI"], "UTC", "2026-11-21T12:00:00Z"), "2026-11-23T09:00:00Z");
        assert_eq!(next(&["0 0 1 JAN,JUL *"], "UTC", "2026-11-22T00:00:00Z"), "2027-01-01T00:00:00Z");
        assert_eq!(next(&["@hourly"], "UTC", "2026-11-22T10:07:00Z"), "2026-11-22T11:00:00Z");
        assert_eq!(next(&["0 0 * * 7"], "UTC", "2026-11-22T10:00:00Z"), "2026-11-29T00:00:00Z");
        assert_eq!(next(&["0 0 29 2 *"], "UTC", "2026-03-01T00:00:00Z"), "2028-02-29T00:00:00Z");
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_given() {
        // The 1st of the month or any Monday.
        assert_eq!(next(&["0 0 1 * 1"], "UTC", "2026-11-22T00:00:00Z"), "2026-11-23T00:00:00Z");
        assert_eq!(next(&["0 0 1 * 1"], "UTC", "2026-11-30T00:00:00Z"), "2026-12-01T00:00:00Z");
    }

    #[test]
    fn a_time_skipped_by_dst_runs_after_the_gap_and_a_repeated_one_runs_once() {
        // 2027-03-14 02:30 does not exist in New York.
        assert_eq!(next(&["30 2 * * *"], "America/New_York", "2027-03-14T05:00:00Z"), "2027-03-14T07:30:00Z");
        // 2026-11-01 01:30 happens twice; the first is 05:30Z, then the next day.
        assert_eq!(next(&["30 1 * * *"], "America/New_York", "2026-11-01T05:00:00Z"), "2026-11-01T05:30:00Z");
        assert_eq!(next(&["30 1 * * *"], "America/New_York", "2026-11-01T05:30:00Z"), "2026-11-02T06:30:00Z");
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        let err = |e: &str| Cron::parse(e).expect_err("invalid").to_string();
        assert_eq!(
            err("0 8 * *"),
            r#"cron expression "0 8 * *": expected 5 fields (minute hour day-of-month month day-of-week), found 4"#
        );
        assert!(err("61 * * * *").contains("minute field: 61 is outside 0-59"));
        assert!(err("0 0 * * FUNDAY").contains("day-of-week field"));
        assert!(err("*/0 * * * *").contains("a step of 0 never matches"));
        assert!(err("@sometimes").contains("unknown macro"));
        let zone = Schedule::parse(&["0 8 * * *".to_string()], "Mars/Olympus").expect_err("unknown zone");
        assert_eq!(zone.to_string(), r#"time zone "Mars/Olympus" is not a known IANA time zone"#);
        assert_eq!(Schedule::parse(&[], "UTC").expect_err("empty"), ScheduleError::Empty);
    }

    #[test]
    fn a_step_as_large_as_a_u64_runs_once_instead_of_overflowing() {
        // `5/18446744073709551614`: from minute 5 in steps past the end of
        // u64; adding the step once panicked the Connection controller.
        let huge = u64::MAX - 1;
        assert_eq!(next(&[&format!("5/{huge} * * * *")], "UTC", "2026-11-22T10:07:00Z"), "2026-11-22T11:05:00Z");
        assert_eq!(next(&[&format!("0 */{} * * *", u64::MAX)], "UTC", "2026-11-22T10:07:00Z"), "2026-11-23T00:00:00Z");
        assert!(Cron::parse(&format!("0 0 1-31/{huge} * *")).is_ok());
    }

    #[test]
    fn a_run_missed_while_down_is_found() {
        let schedule = Schedule::parse(&["0 3 * * *".to_string()], "UTC").expect("valid");
        assert_eq!(
            schedule.due_between(ts("2026-11-21T12:00:00Z"), ts("2026-11-22T10:00:00Z")),
            Some(ts("2026-11-22T03:00:00Z"))
        );
        assert_eq!(schedule.due_between(ts("2026-11-22T03:00:00Z"), ts("2026-11-22T10:00:00Z")), None);
    }

    #[test]
    fn a_bad_field_is_named_with_its_value() {
        let problem = |e: &str| match Cron::parse(e) {
            Err(ScheduleError::Cron { problem, .. }) => problem,
            other => panic!("{e}: {other:?}"),
        };
        assert_eq!(problem("0 25 * * *"), CronError::OutOfRange { field: CronField::Hour, value: 25, min: 0, max: 23 });
        assert_eq!(problem("0 0 * JAN-X *"), CronError::NotANumber { field: CronField::Month, value: "X".to_string() });
        assert_eq!(
            problem("0 0 * * FRI-MON"),
            CronError::Backwards { field: CronField::DayOfWeek, range: "FRI-MON".to_string() }
        );
        assert_eq!(
            problem("*/x * * * *"),
            CronError::StepNotANumber { field: CronField::Minute, step: "x".to_string() }
        );
        assert_eq!(problem("0 0 0 * *").to_string(), "day-of-month field: 0 is outside 1-31");
        assert_eq!(problem("0 0 * *"), CronError::FieldCount(4));
    }
}
