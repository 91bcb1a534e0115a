//! Bounds on evaluation: per identity, how many comprehension steps its
//! expressions may take and how large the values they build may grow, and a
//! stop that a processing run's owner can pull between any two steps.
//!
//! The `cel` crate (0.13) has no cost hook: its interpreter loops over a
//! comprehension's range in its own code, and a registered function is the
//! only code of ours it calls. So compiling rewrites every comprehension's
//! step `s` to `@step(s)` (see [`instrument`]): [`step`] charges the step's
//! cost, checks the stop and the size of what the step added, and fails the
//! evaluation once a bound is passed. Functions that can build large values from small
//! ones (`replace`, `join`, `strings.quote`, `lists.range`) are replaced by
//! versions that refuse a result over [`MAX_VALUE_BYTES`] before building
//! it, and the few others (`format`, `base64.encode`, `split`, `findAll`)
//! are wrapped in `@bounded(…)`, which checks their result's size.
//!
//! The meter is thread-local: one evaluation runs on one thread, functions
//! registered with the interpreter are shared by every thread (they must be
//! `Send + Sync`), and the interpreter gives them no per-evaluation state of
//! ours. An error from `@step` can be swallowed by `||` or `&&` (CEL's
//! logical operators absorb an error the other side decides), so the meter
//! also remembers that a bound was passed and the evaluation is failed
//! whatever value it produced.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube_cel::cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr};
use kube_cel::cel::extractors::{Arguments, This};
use kube_cel::cel::objects::Key;
use kube_cel::cel::{self, ExecutionError, FunctionContext, Value};

/// What one identity's expressions may spend together, in units of about
/// 100 ns of a release build: a comprehension step costs [`STEP_COST`], plus
/// one per element of the list it builds, because the interpreter copies
/// the whole list at every step of `map` and `filter` (building a list of
/// n elements copies n²/2). About a second per identity, even when the
/// estimate at compile time let an expression through (lists larger than
/// assumed).
pub const MAX_COST: u64 = 10_000_000;
/// The cost of one comprehension step, beside the list it copies.
pub const STEP_COST: u64 = 10;
/// The largest value (string, list, map; see [`value_size`]) a bounded
/// function may build, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// What the values a comprehension's steps add may total, per identity.
pub const MAX_BUILT_BYTES: usize = 64 << 20;
/// The largest attribute value an expression may yield.
pub const MAX_ATTRIBUTE_BYTES: usize = 256 << 10;
/// The stack of the threads that evaluate expressions (processing runs).
/// The interpreter recurses per level of the tree, with frames of tens of
/// KiB in a debug build; [`super::limits::MAX_TREE_DEPTH`] levels need a few
/// MiB, more than the 2 MiB of a tokio or test thread.
pub const EVALUATION_STACK: usize = 64 << 20;

/// The function every comprehension step goes through.
pub const STEP: &str = "@step";
/// The function that checks the size of a growing function's result.
pub const BOUNDED: &str = "@bounded";
/// Functions that can build a value larger than their inputs and that we do
/// not replace; their results are checked (after the fact, so a result may
/// be a small multiple of the limit for a moment).
const GROWING: [&str; 4] = ["format", "base64.encode", "split", "findAll"];

/// Which bound an evaluation passed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error(
        "spent more than the evaluation budget on one identity: {MAX_COST} units, where a step of a comprehension \
         (all, exists, exists_one, map, filter) costs {STEP_COST} plus the length of the list it builds"
    )]
    Budget,
    #[error("`{function}` would build a value of more than {MAX_VALUE_BYTES} bytes")]
    Value { function: String },
    #[error("its comprehensions built more than {MAX_BUILT_BYTES} bytes of values on one identity")]
    Built,
    #[error("yields a value of more than {MAX_ATTRIBUTE_BYTES} bytes")]
    Attribute,
}

/// A processing run's stop: whoever owns the run pulls it (the profile was
/// changed or deleted, the operator shuts down), and the evaluation stops
/// at its next step or identity.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn new() -> Self {
        Stop::default()
    }

    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Meter {
    spent: u64,
    built: usize,
    exceeded: Option<Exceeded>,
    stop: Option<Stop>,
}

thread_local! {
    static METER: RefCell<Meter> = RefCell::new(Meter::default());
}

/// Runs `f` with evaluations on this thread observing `stop`.
pub fn with_stop<T>(stop: &Stop, f: impl FnOnce() -> T) -> T {
    /// Restores the previous stop, also when `f` panics.
    struct Restore(Option<Stop>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            METER.with(|m| m.borrow_mut().stop = previous);
        }
    }
    let previous = METER.with(|m| m.borrow_mut().stop.replace(stop.clone()));
    let _restore = Restore(previous);
    f()
}

/// The stop this thread's evaluations check, for threads that evaluate on
/// its behalf.
pub fn current_stop() -> Option<Stop> {
    METER.with(|m| m.borrow().stop.clone())
}

/// Whether this thread's evaluations were asked to stop.
pub fn stopped() -> bool {
    METER.with(|m| m.borrow().stop.as_ref().is_some_and(Stop::is_stopped))
}

/// Starts one identity's evaluation: a fresh budget.
pub fn begin_identity() {
    METER.with(|m| {
        let mut m = m.borrow_mut();
        m.spent = 0;
        m.built = 0;
        m.exceeded = None;
    });
}

/// The bound passed since the last call, if any.
pub fn take_exceeded() -> Option<Exceeded> {
    METER.with(|m| m.borrow_mut().exceeded.take())
}

/// Records that a bound was passed (the first one stays) and returns the
/// error that fails the evaluation.
fn exceed(ftx: &FunctionContext, exceeded: Exceeded) -> ExecutionError {
    let message = exceeded.to_string();
    METER.with(|m| {
        m.borrow_mut().exceeded.get_or_insert(exceeded);
    });
    ftx.error(message)
}

/// `@step(value)`: one comprehension step, yielding the step's value.
fn step(ftx: &FunctionContext, value: Value) -> Result<Value, ExecutionError> {
    let (copied, added) = match &value {
        // `map` and `filter` copied the list and added (at most) its last
        // element.
        Value::List(items) => (items.len() as u64, items.last().map_or(0, value_size)),
        _ => (0, 0),
    };
    let outcome = METER.with(|m| {
        let mut m = m.borrow_mut();
        if m.stop.as_ref().is_some_and(Stop::is_stopped) {
            return Err(None);
        }
        if let Some(exceeded) = &m.exceeded {
            return Err(Some(exceeded.clone()));
        }
        m.spent = m.spent.saturating_add(STEP_COST + copied);
        m.built = m.built.saturating_add(added);
        if m.spent > MAX_COST {
            Err(Some(Exceeded::Budget))
        } else if m.built > MAX_BUILT_BYTES {
            Err(Some(Exceeded::Built))
        } else {
            Ok(())
        }
    });
    match outcome {
        Ok(()) => Ok(value),
        Err(Some(exceeded)) => Err(exceed(ftx, exceeded)),
        // The caller sees the stop itself; the error only ends the loop.
        Err(None) => Err(ftx.error("stopped")),
    }
}

/// `@bounded(value)`: a growing function's result, if not too large.
fn bounded(ftx: &FunctionContext, value: Value) -> Result<Value, ExecutionError> {
    if value_size(&value) > MAX_VALUE_BYTES {
        let function = match ftx.args.first().map(|a| &a.expr) {
            Some(Expr::Call(call)) => qualified_name(call),
            _ => "a function".to_string(),
        };
        return Err(exceed(ftx, Exceeded::Value { function }));
    }
    Ok(value)
}

/// An estimate of the memory a value holds, in bytes: its strings' and
/// bytes' lengths, plus 8 per element or entry and per scalar.
pub fn value_size(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::List(items) => items.iter().fold(0usize, |n, item| n.saturating_add(8 + value_size(item))),
        Value::Map(map) => map.map.iter().fold(0usize, |n, (k, v)| {
            let key = match k {
                Key::String(s) => s.len(),
                _ => 8,
            };
            n.saturating_add(8 + key + value_size(v))
        }),
        _ => 8,
    }
}

/// Registers the bounded functions, over the unbounded ones of the same
/// name (a name holds one function; the last registration wins).
pub fn register(context: &mut cel::Context<'static>) {
    context.add_function(STEP, step);
    context.add_function(BOUNDED, bounded);
    context.add_function("replace", replace);
    context.add_function("join", join);
    context.add_function("strings.quote", quote);
    context.add_function("lists.range", range);
}

/// Rewrites every comprehension step `s` to `@step(s)` and every call of a
/// [`GROWING`] function `f(…)` to `@bounded(f(…))`. Only called on trees
/// within the depth limit, so the recursion is bounded.
pub fn instrument(expr: &mut IdedExpr) {
    match &mut expr.expr {
        Expr::Comprehension(c) => {
            for part in [&mut c.iter_range, &mut c.accu_init, &mut c.loop_cond, &mut c.loop_step, &mut c.result] {
                instrument(part);
            }
            wrap(&mut c.loop_step, STEP);
        }
        Expr::Call(call) => {
            if let Some(target) = &mut call.target {
                instrument(target);
            }
            call.args.iter_mut().for_each(instrument);
            if GROWING.contains(&qualified_name(call).as_str()) || GROWING.contains(&call.func_name.as_str()) {
                wrap(expr, BOUNDED);
            }
        }
        Expr::Select(select) => instrument(&mut select.operand),
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

/// A call's function as written: `strings.quote` parses as the call of
/// `quote` on the identifier `strings`.
pub fn qualified_name(call: &CallExpr) -> String {
    match call.target.as_deref().map(|t| &t.expr) {
        Some(Expr::Ident(prefix)) => format!("{prefix}.{}", call.func_name),
        _ => call.func_name.clone(),
    }
}

fn wrap(expr: &mut IdedExpr, function: &str) {
    let inner = std::mem::take(expr);
    expr.id = inner.id;
    expr.expr = Expr::Call(CallExpr { func_name: function.to_string(), target: None, args: vec![inner] });
}

/// The error of a bounded function whose result would be too large.
/// (`ftx.name` is what the expression wrote, `quote` for `strings.quote`.)
fn too_large(ftx: &FunctionContext, function: &str) -> ExecutionError {
    exceed(ftx, Exceeded::Value { function: function.to_string() })
}

/// `replace(from, to[, n])` as the Kubernetes library does it (a negative
/// or zero `n` replaces nothing), refused before building a result over
/// [`MAX_VALUE_BYTES`].
fn replace(ftx: &FunctionContext, This(text): This<Arc<String>>, Arguments(args): Arguments) -> cel::ResolveResult {
    let (Some(Value::String(from)), Some(Value::String(to))) = (args.first(), args.get(1)) else {
        return Err(ftx.error("expected string argument"));
    };
    let limit = match args.get(2) {
        Some(Value::Int(n)) => usize::try_from(*n).unwrap_or(0),
        _ => usize::MAX,
    };
    let count = text.matches(from.as_str()).take(limit).count();
    let size = (text.len() - count * from.len()).saturating_add(count.saturating_mul(to.len()));
    if size > MAX_VALUE_BYTES {
        return Err(too_large(ftx, "replace"));
    }
    let result = if limit == usize::MAX {
        text.replace(from.as_str(), to.as_str())
    } else {
        text.replacen(from.as_str(), to.as_str(), limit)
    };
    Ok(Value::String(Arc::new(result)))
}

/// `list.join([separator])` as the Kubernetes library does it (elements
/// that are not strings are written as the library writes them), refused
/// before building a result over [`MAX_VALUE_BYTES`].
fn join(ftx: &FunctionContext, This(items): This<Arc<Vec<Value>>>, Arguments(args): Arguments) -> cel::ResolveResult {
    let separator = match args.first() {
        Some(Value::String(s)) => s.as_str(),
        _ => "",
    };
    let mut joined = String::new();
    for (i, item) in items.iter().enumerate() {
        let piece = match item {
            Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            other => std::borrow::Cow::Owned(format!("{other:?}")),
        };
        let separator = if i == 0 { "" } else { separator };
        if joined.len() + separator.len() + piece.len() > MAX_VALUE_BYTES {
            return Err(too_large(ftx, "join"));
        }
        joined.push_str(separator);
        joined.push_str(&piece);
    }
    Ok(Value::String(Arc::new(joined)))
}

/// `strings.quote(text)` as the Kubernetes library does it, refused before
/// building a result over [`MAX_VALUE_BYTES`] (each quoting can double a
/// string, so a few nested ones multiply).
fn quote(ftx: &FunctionContext, text: Arc<String>) -> cel::ResolveResult {
    let escape = |c: char| match c {
        '\\' => Some("\\\\"),
        '"' => Some("\\\""),
        '\x07' => Some("\\a"),
        '\x08' => Some("\\b"),
        '\x0C' => Some("\\f"),
        '\n' => Some("\\n"),
        '\r' => Some("\\r"),
        '\t' => Some("\\t"),
        '\x0B' => Some("\\v"),
        _ => None,
    };
    // Every escape is two bytes for a one-byte character.
    let size = text.len() + 2 + text.chars().filter(|c| escape(*c).is_some()).count();
    if size > MAX_VALUE_BYTES {
        return Err(too_large(ftx, "strings.quote"));
    }
    let mut quoted = String::with_capacity(size);
    quoted.push('"');
    for c in text.chars() {
        match escape(c) {
            Some(escaped) => quoted.push_str(escaped),
            None => quoted.push(c),
        }
    }
    quoted.push('"');
    Ok(Value::String(Arc::new(quoted)))
}

/// `lists.range(n)`: the list `[0, …, n-1]`, refused past the size bound.
fn range(ftx: &FunctionContext, n: i64) -> cel::ResolveResult {
    let Ok(count) = usize::try_from(n) else {
        return Err(ftx.error("range argument must be non-negative"));
    };
    if count.saturating_mul(16) > MAX_VALUE_BYTES {
        return Err(too_large(ftx, "lists.range"));
    }
    Ok(Value::List(Arc::new((0..n).map(Value::Int).collect())))
}
