//! Expressions that read the time: which ones, and until when a result
//! computed at one instant stays what it is.
//!
//! `now` is the only input of an expression that changes without any
//! account changing, so a run that skips identities whose inputs did not
//! change must know when their time-dependent results could have moved. A
//! lifecycle such as `date(accounts.hr.termination_date) <= now ?
//! 'terminated' : 'active'` reads `now` only as an operand of a comparison:
//! its result can move only when `now` crosses the other operand. Compiling
//! classifies every expression ([`TimeUse`]) and rewrites each comparison
//! with `now` to pass its other operand through `@at`, which remembers the
//! earliest such instant not yet past ([`begin`], [`take_changes_at`]).
//! Comparisons an evaluation did not reach (the other branch of `?:`, the
//! right side of a decided `&&`) cannot change its result before one it did
//! reach changes, so the instants it reached are enough.
//!
//! Any other use of `now` (arithmetic, `now.getHours()`, `now` as a value)
//! can change the result at any instant: such a profile is [`TimeUse::Any`],
//! and runs over everyone evaluate every identity.
//!
//! Like the budget's meter, the recorder is thread-local: one evaluation
//! runs on one thread, and functions registered with the interpreter get no
//! per-evaluation state.

use std::cell::RefCell;

use kube_cel::cel::common::ast::{EntryExpr, Expr, IdedExpr, operators};
use kube_cel::cel::{self, ExecutionError, FunctionContext, Value};

/// The variable holding the processing time (see `expr`).
const NOW: &str = "now";
/// The function comparisons with `now` pass their other operand through.
pub const AT: &str = "@at";
/// Comparisons whose result, with one operand fixed, moves only when the
/// other crosses it.
const COMPARISONS: [&str; 6] = [
    operators::LESS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::GREATER_EQUALS,
    operators::EQUALS,
    operators::NOT_EQUALS,
];

/// How an expression reads the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimeUse {
    /// Not at all: its result moves only with its accounts.
    None,
    /// Only as an operand of comparisons: its result moves only when `now`
    /// crosses one of the instants compared with.
    Thresholds,
    /// Otherwise: its result may move at any instant.
    Any,
}

/// How `expr` reads `now`. A macro variable named `now` is counted as the
/// time too, which can only make the answer more cautious.
pub fn classify(expr: &IdedExpr) -> TimeUse {
    match &expr.expr {
        Expr::Ident(name) if name == NOW => TimeUse::Any,
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => TimeUse::None,
        Expr::Call(call) if COMPARISONS.contains(&call.func_name.as_str()) && call.target.is_none() => {
            let mut time = TimeUse::None;
            for arg in &call.args {
                time = time.max(if is_now(arg) { TimeUse::Thresholds } else { classify(arg) });
            }
            time
        }
        Expr::Call(call) => {
            call.target.iter().map(|t| classify(t)).chain(call.args.iter().map(classify)).max().unwrap_or(TimeUse::None)
        }
        Expr::Select(select) => classify(&select.operand),
        Expr::Comprehension(c) => [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
            .into_iter()
            .map(classify)
            .max()
            .unwrap_or(TimeUse::None),
        Expr::List(list) => list.elements.iter().map(classify).max().unwrap_or(TimeUse::None),
        Expr::Map(map) => map
            .entries
            .iter()
            .map(|entry| match &entry.expr {
                EntryExpr::MapEntry(e) => classify(&e.key).max(classify(&e.value)),
                EntryExpr::StructField(f) => classify(&f.value),
            })
            .max()
            .unwrap_or(TimeUse::None),
        // Refused by the checker; cautious if it ever is not.
        Expr::Struct(_) => TimeUse::Any,
    }
}

fn is_now(expr: &IdedExpr) -> bool {
    matches!(&expr.expr, Expr::Ident(name) if name == NOW)
}

/// Rewrites every comparison `now op x` (or `x op now`) to `now op @at(x)`.
/// Only called on trees within the depth limit, so the recursion is bounded.
pub fn instrument(expr: &mut IdedExpr) {
    match &mut expr.expr {
        Expr::Call(call) => {
            if let Some(target) = &mut call.target {
                instrument(target);
            }
            let comparison = COMPARISONS.contains(&call.func_name.as_str()) && call.target.is_none();
            let with_now = comparison && call.args.iter().any(is_now);
            for arg in &mut call.args {
                if with_now && !is_now(arg) {
                    instrument(arg);
                    let inner = std::mem::take(arg);
                    arg.id = inner.id;
                    arg.expr = Expr::Call(kube_cel::cel::common::ast::CallExpr {
                        func_name: AT.to_string(),
                        target: None,
                        args: vec![inner],
                    });
                } else {
                    instrument(arg);
                }
            }
        }
        Expr::Select(select) => instrument(&mut select.operand),
        Expr::Comprehension(c) => {
            for part in [&mut c.iter_range, &mut c.accu_init, &mut c.loop_cond, &mut c.loop_step, &mut c.result] {
                instrument(part);
            }
        }
        Expr::List(list) => list.elements.iter_mut().for_each(instrument),
        Expr::Map(map) => {
            for entry in &mut map.entries {
                if let EntryExpr::MapEntry(entry) = &mut entry.expr {
                    instrument(&mut entry.key);
                    instrument(&mut entry.value);
                }
            }
        }
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) | Expr::Struct(_) => {}
    }
}

/// One evaluation's record: its `now`, and the earliest instant compared
/// with it that is not before it.
#[derive(Default)]
struct Recorder {
    now: Option<Value>,
    earliest: Option<Value>,
}

thread_local! {
    static RECORDER: RefCell<Recorder> = RefCell::new(Recorder::default());
}

/// Starts recording for one evaluation at `now` (the interpreter's value of
/// it; None when it has none, and then nothing is recorded).
pub fn begin(now: Option<&Value>) {
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        r.now = now.cloned();
        r.earliest = None;
    });
}

/// The earliest instant since [`begin`] at which a comparison this thread
/// evaluated could change its result.
pub fn take_changes_at() -> Option<jiff::Timestamp> {
    let earliest = RECORDER.with(|r| r.borrow_mut().earliest.take())?;
    match earliest {
        Value::Timestamp(t) => {
            // Within jiff's range for every instant the interpreter makes
            // from a jiff `now` or a parsed date; an instant outside it is
            // taken as "now", which re-evaluates at the next run.
            let nanos = i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0);
            jiff::Timestamp::new(t.timestamp(), nanos).ok().or(Some(jiff::Timestamp::MIN))
        }
        _ => None,
    }
}

/// `@at(x)`: `x`, remembered when it is an instant not before `now`.
fn at(_ftx: &FunctionContext, value: Value) -> Result<Value, ExecutionError> {
    if let Value::Timestamp(t) = &value {
        RECORDER.with(|r| {
            let mut r = r.borrow_mut();
            let Some(Value::Timestamp(now)) = &r.now else { return };
            if t < now {
                return;
            }
            let earlier = match &r.earliest {
                Some(Value::Timestamp(e)) => t < e,
                _ => true,
            };
            if earlier {
                r.earliest = Some(value.clone());
            }
        });
    }
    Ok(value)
}

/// Adds `@at` to the functions expressions can call.
pub fn register(context: &mut cel::Context<'static>) {
    context.add_function(AT, at);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::TimeUse;
    use crate::identity::expr::{CompiledProfile, Inputs};
    use crate::model::Account;
    use idsync_api::identity_profile::Lifecycle;
    use serde_json::json;

    const LIFECYCLE: &str = "date(accounts.hr.hire_date) > now ? 'prehire' : accounts.hr.termination_date != '' && \
                             date(accounts.hr.termination_date) <= now ? 'terminated' : 'active'";

    fn ts(text: &str) -> jiff::Timestamp {
        text.parse().expect("timestamp")
    }

    fn profile(attributes: &[(&str, &str)]) -> CompiledProfile {
        let attributes: BTreeMap<String, String> =
            attributes.iter().map(|(n, e)| (n.to_string(), e.to_string())).collect();
        let lifecycle = Lifecycle {
            expression: LIFECYCLE.to_string(),
            states: ["prehire", "active", "terminated"].map(String::from).to_vec(),
        };
        CompiledProfile::compile(&attributes, Some(&lifecycle)).expect("compiles")
    }

    fn person(hire: &str, termination: &str) -> Account {
        let mut a = Account::new("E1");
        a.attributes.insert("hire_date".into(), json!(hire));
        a.attributes.insert("termination_date".into(), json!(termination));
        a
    }

    #[test]
    fn reading_now_only_in_comparisons_is_told_from_other_uses() {
        let p = profile(&[("id", "accounts.hr.id")]);
        assert_eq!((p.time_use_of(&["id"]), p.time_use()), (TimeUse::None, TimeUse::Thresholds));
        for (expression, expected) in [
            ("now > date('2026-01-01')", TimeUse::Thresholds),
            ("date('2026-01-01') <= now && true", TimeUse::Thresholds),
            ("[1, 2].exists(x, now == date('2026-01-01'))", TimeUse::Thresholds),
            ("now.getFullYear() > 2020", TimeUse::Any),
            ("string(now)", TimeUse::Any),
            ("now - duration('24h') > date('2026-01-01')", TimeUse::Any),
            ("accounts.hr.id + 'x'", TimeUse::None),
        ] {
            let p = profile(&[("a", expression)]);
            assert_eq!(p.time_use_of(&["a"]), expected, "{expression}");
        }
    }

    #[test]
    fn a_result_is_kept_until_the_first_instant_it_was_compared_with_that_is_still_ahead() {
        let p = profile(&[]);
        let evaluate = |account: &Account, now: &str| {
            let accounts = [("hr", account)];
            p.evaluate(&Inputs { accounts: &accounts, now: ts(now) }, None).expect("within the bounds")
        };
        // Hired in the future: prehire until the hire date.
        let hired = person("2026-12-01", "");
        let e = evaluate(&hired, "2026-11-22T12:00:00Z");
        assert_eq!(
            (e.lifecycle_state.as_deref(), e.time_changes_at),
            (Some("prehire"), Some(ts("2026-12-01T00:00:00Z")))
        );
        let e = evaluate(&hired, "2026-11-30T23:59:59Z");
        assert_eq!(e.lifecycle_state.as_deref(), Some("prehire"), "the same until then");
        let e = evaluate(&hired, "2026-12-01T00:00:00.000001Z");
        assert_eq!((e.lifecycle_state.as_deref(), e.time_changes_at), (Some("active"), None));

        // Leaving: active until the termination date, then nothing ahead.
        let leaving = person("2020-01-01", "2027-03-31");
        let e = evaluate(&leaving, "2026-11-22T12:00:00Z");
        assert_eq!(
            (e.lifecycle_state.as_deref(), e.time_changes_at),
            (Some("active"), Some(ts("2027-03-31T00:00:00Z")))
        );
        let e = evaluate(&leaving, "2027-03-31T00:00:00Z");
        assert_eq!(e.lifecycle_state.as_deref(), Some("terminated"));
        assert_eq!(e.time_changes_at, Some(ts("2027-03-31T00:00:00Z")), "an instant equal to now is still ahead");
        let e = evaluate(&leaving, "2027-04-01T00:00:00Z");
        assert_eq!((e.lifecycle_state.as_deref(), e.time_changes_at), (Some("terminated"), None));

        // Nothing compared is ahead: the result never moves by itself.
        let e = evaluate(&person("2020-01-01", ""), "2026-11-22T12:00:00Z");
        assert_eq!((e.lifecycle_state.as_deref(), e.time_changes_at), (Some("active"), None));

        // An attribute's comparison counts as much as the lifecycle's.
        let p = profile(&[("review", "now >= date(accounts.hr.review) ? 'due' : 'later'")]);
        let mut a = person("2020-01-01", "");
        a.attributes.insert("review".into(), json!("2026-12-24"));
        let accounts = [("hr", &a)];
        let e = p.evaluate(&Inputs { accounts: &accounts, now: ts("2026-11-22T12:00:00Z") }, None).expect("bounds");
        assert_eq!(e.time_changes_at, Some(ts("2026-12-24T00:00:00Z")));
        // Evaluations of a few attributes (correlation keys) record nothing.
        let e = p.evaluate(&Inputs { accounts: &accounts, now: ts("2026-11-22T12:00:00Z") }, Some(&["review"]));
        assert_eq!(e.expect("bounds").time_changes_at, None);
    }
}
