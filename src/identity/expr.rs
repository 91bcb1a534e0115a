//! Compiling an IdentityProfile's CEL expressions and evaluating them.
//!
//! A profile's attribute and lifecycle expressions are compiled once per
//! profile generation into a [`CompiledProfile`], which is then evaluated for
//! every identity with that identity's accounts ([`Inputs`]).
//!
//! What expressions see:
//!
//! - `accounts`: a map from connection name to that connection's account (the
//!   authoritative account and the correlated ones). A connection without an
//!   account for this identity is absent, so `has(accounts.github)` and
//!   `'github' in accounts` tell whether there is one. An account is a map of
//!   its source attributes at the top level, overridden by the standard
//!   fields `id`, `username`, `email`, `displayName`, `enabled` and `groups`
//!   (absent when the account has none), plus `attributes`, the source
//!   attributes on their own: `accounts.hr.work_email` and
//!   `accounts.hr.attributes.work_email` are the same value.
//! - `now`: the processing time, a timestamp.
//! - The standard CEL functions, the Kubernetes extension functions
//!   (`lowerAscii`, `split`, `join`, …) and `date(string)`, which reads a
//!   plain `YYYY-MM-DD` date (midnight UTC) or an RFC 3339 timestamp, because
//!   HR exports carry plain dates that `timestamp()` refuses.
//!
//! The `cel` crate (0.13) parses and interprets but has no checker, so
//! compiling also walks the syntax tree to refuse what would fail on every
//! identity anyway (unknown variables and functions, and syntax the
//! interpreter does not implement), so that a typo stalls the profile with a
//! clear message instead of putting an error on each of its identities.
//!
//! Compiling also refuses expressions too large, too deep or too expensive
//! to run safely ([`limits`]), and evaluation is bounded per identity and
//! can be stopped between any two steps ([`budget`]); an evaluation past a
//! bound fails the whole evaluation ([`Interrupted`]) rather than one
//! attribute, since the profile, not the identity, is what needs fixing.

pub mod budget;
pub mod limits;
pub mod time;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kube_cel::KubeCelExt;
use kube_cel::cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use kube_cel::cel::common::types::CelString;
use kube_cel::cel::extractors::This;
use kube_cel::cel::objects::{Key, Map, OptionalValue};
use kube_cel::cel::parser::{Expression, Parser};
use kube_cel::cel::{self, ExecutionError, FunctionContext, Value};
use serde_json::Value as Json;

use crate::model::Account;
pub use budget::{EVALUATION_STACK, Exceeded, Stop, current_stop, with_stop};
use idsync_api::identity_profile::Lifecycle;
pub use limits::TooComplex;
pub use time::TimeUse;

/// The variable holding the accounts by connection name.
const ACCOUNTS: &str = "accounts";
/// The variable holding the processing time.
const NOW: &str = "now";
/// The prefix of the variables holding one connection's account, which
/// `accounts.<connection>` is rewritten to (see [`rewrite_account_access`]).
/// `@` cannot start an identifier of a parsed expression, and the dot keeps
/// these apart from the parser's own `@result`.
const ACCOUNT_PREFIX: &str = "@accounts.";
/// The variable holding the list of connections with an account, which
/// `has(accounts.<connection>)` is rewritten to test.
const CONNECTIONS: &str = "@connections";
/// The key of the lifecycle expression's error in [`Evaluation::errors`].
const LIFECYCLE: &str = "lifecycle";
/// The longest piece of user data (a string passed to `date()`, a value's
/// description) quoted in an error message: errors end up in identities and
/// statuses, which should not carry whole attribute values.
const MAX_QUOTED: usize = 64;

/// A profile's expressions, compiled once per profile generation.
///
/// `Send + Sync`: programs are plain syntax trees and the base context holds
/// only `Send + Sync` functions (the `cel` crate requires both of registered
/// functions), so one compiled profile can be shared by the threads that
/// evaluate identities; each evaluation adds its variables to a scope of its
/// own.
pub struct CompiledProfile {
    /// The standard, Kubernetes and idsync functions, registered once: a
    /// registration allocates a boxed closure per function (well over a
    /// hundred of them), too much to repeat per identity.
    base: cel::Context<'static>,
    attributes: BTreeMap<String, Expression>,
    lifecycle: Option<CompiledLifecycle>,
    /// Whether some expression uses `accounts` other than as
    /// `accounts.<connection>` or `has(accounts.<connection>)` (e.g.
    /// `accounts['hr']`, `'hr' in accounts`), so that evaluations must bind
    /// the whole map too.
    needs_accounts_map: bool,
    /// What of each connection's account the rewritten expressions read
    /// through `accounts.<connection>`; a connection not in here is not
    /// read that way, and its account is not converted for it.
    account_use: HashMap<String, AccountUse>,
    /// The same, and whether it needs the whole map, per attribute: an
    /// evaluation of a few attributes (correlation keys, computed for every
    /// identity before the rest) converts only what those read.
    attribute_use: HashMap<String, (HashMap<String, AccountUse>, bool)>,
    /// How each attribute's expression reads `now`.
    attribute_time: HashMap<String, TimeUse>,
    /// How the lifecycle expression reads `now`.
    lifecycle_time: TimeUse,
    /// When a processing run with these expressions last passed an
    /// evaluation bound, and the run's message: the controller does not run
    /// them again at once (see `controller::profile`).
    exceeded: Mutex<Option<(Instant, String)>>,
}

/// What expressions read of one connection's account.
#[derive(Debug, Clone, PartialEq)]
enum AccountUse {
    /// Only these fields, as in `accounts.hr.email`.
    Fields(BTreeSet<String>),
    /// The account as a whole, e.g. `accounts.hr[key]` or `accounts.hr` as a
    /// result or argument.
    Whole,
}

struct CompiledLifecycle {
    program: Expression,
    states: Vec<String>,
}

impl fmt::Debug for CompiledProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The context is not Debug and the syntax trees say little; the
        // names and states are what identify a compiled profile in logs.
        f.debug_struct("CompiledProfile")
            .field("attributes", &self.attributes.keys().collect::<Vec<_>>())
            .field("lifecycle_states", &self.lifecycle.as_ref().map(|l| &l.states))
            .finish_non_exhaustive()
    }
}

/// An expression of a profile that does not compile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {expression:?} does not compile: {problem}")]
pub struct CompileError {
    /// Where the expression is, e.g. `spec.attributes.email` or
    /// `spec.lifecycle.expression`.
    pub field: String,
    pub expression: String,
    /// What is wrong, shown as one paragraph.
    pub problem: CheckError,
}

/// Why one expression does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// It does not parse; each error at its position, each once. Without
    /// any (never seen), "syntax error", since an empty message would hide
    /// that it failed.
    #[error("{}", if .0.is_empty() { "syntax error".to_string() } else { join(.0) })]
    Parse(Vec<SyntaxError>),
    /// It parses, but cannot work on any identity; each mistake once.
    #[error("{}", join(.0))]
    Refused(Vec<Refusal>),
    /// It is too long, too deeply nested or too expensive to run safely.
    #[error(transparent)]
    TooComplex(#[from] TooComplex),
    /// The compiler could not run (no thread for it) or failed.
    #[error("the expression could not be compiled: {0}")]
    Internal(String),
}

impl CompileError {
    /// Whether the expression is refused for its size or cost rather than
    /// for a mistake.
    pub fn is_too_complex(&self) -> bool {
        matches!(self.problem, CheckError::TooComplex(_))
    }
}

/// Why a profile's evaluation of one identity was abandoned: all of it, not
/// one attribute, and nothing of the processing run is to be kept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Interrupted {
    /// An expression passed a bound of [`budget`].
    #[error("{field}: {exceeded}")]
    Exceeded { field: String, exceeded: Exceeded },
    /// The run's [`Stop`] was pulled.
    #[error("stopped")]
    Stopped,
}

/// One parser error: `line:column: message`, without the source snippet and
/// caret the parser adds on separate lines (the expression is reported next
/// to the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct SyntaxError {
    pub line: isize,
    pub column: isize,
    pub message: String,
}

/// What the checker refuses in an expression that parses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown variable `{0}`; expressions can use `{ACCOUNTS}` and `{NOW}`")]
    UnknownVariable(String),
    #[error("unknown function `{0}`")]
    UnknownFunction(String),
    /// Resolving the string argument of `date` past the arguments given is
    /// an error anyway, but refusing it names the mistake.
    #[error("`date` takes one argument, a string")]
    DateArity,
    /// The interpreter panics on these.
    #[error("message fields are not supported")]
    MessageFields,
    /// The interpreter panics on these (`todo!`).
    #[error("message construction (`{0}{{…}}`) is not supported")]
    MessageConstruction(String),
    #[error("incomplete expression")]
    Incomplete,
}

/// Why an expression failed on one identity's inputs. Shown (as text) on
/// the identity, so no variant quotes whole values: at most
/// [`MAX_QUOTED`] characters of user data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// A map (an account, an attribute) has no such key; also what an
    /// absent connection's `accounts.<connection>` is.
    #[error("No such key: {0}")]
    NoSuchKey(String),
    #[error("undeclared reference to `{0}`")]
    UndeclaredReference(String),
    /// A function refused its arguments; `date()` words its own message
    /// with its argument.
    #[error("{}", function_message(.function, .message))]
    Function { function: String, message: String },
    /// Any other failure of the interpreter, described by type rather than
    /// by value (see [`describe_error`]).
    #[error("{0}")]
    Interpreter(String),
    /// The interpreter panicked; caught so that one expression does not
    /// take down the evaluating task.
    #[error("the CEL interpreter failed on this expression: {}", truncate(.detail))]
    InterpreterPanicked { detail: String },
    /// The lifecycle expression named a state the profile does not list.
    #[error("yielded {:?}, which is not one of its states ({})", truncate(.value), .states.join(", "))]
    NotAState { value: String, states: Vec<String> },
    /// The lifecycle expression yielded something other than a string.
    #[error("yielded {type_name}, not a string")]
    NotAString { type_name: String },
    /// A result an attribute cannot hold, because JSON cannot.
    #[error(transparent)]
    Unrepresentable(#[from] Unrepresentable),
}

/// A result that has no JSON form.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unrepresentable {
    #[error("yields {0}, which an attribute cannot hold")]
    NonFiniteNumber(f64),
    #[error("yields a map with keys that are not strings, which an attribute cannot hold")]
    NonStringKeys,
    #[error("yields a timestamp outside the years -9999 to 9999")]
    TimestampOutOfRange,
    /// Bytes, types, functions and other values of no JSON type.
    #[error("yields {type_name}, which an attribute cannot hold")]
    Type { type_name: String },
}

/// Problems as one paragraph.
fn join<T: fmt::Display>(problems: &[T]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A function's error: `date()` words its own messages with its argument,
/// others get the function's name in front.
fn function_message(function: &str, message: &str) -> String {
    if message.starts_with(&format!("{function}(")) { message.to_string() } else { format!("{function}(): {message}") }
}

/// What expressions see.
pub struct Inputs<'a> {
    /// Accounts by connection name: the authoritative account and the
    /// correlated accounts (at most one per connection).
    pub accounts: &'a [(&'a str, &'a Account)],
    pub now: jiff::Timestamp,
}

/// The results of evaluating a profile's expressions for one identity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// Attribute name -> JSON value; an expression yielding null is absent
    /// (and not an error).
    pub attributes: BTreeMap<String, Json>,
    /// The lifecycle state, if the profile has a lifecycle and it evaluated
    /// to one of its states.
    pub lifecycle_state: Option<String>,
    /// Attribute name (or `lifecycle`) -> error message, for expressions that
    /// failed on these inputs: an [`EvalError`] shown, as identities store
    /// it.
    pub errors: BTreeMap<String, String>,
    /// The earliest instant, not before the evaluation's `now`, at which a
    /// comparison with `now` this evaluation made could change its result
    /// (see [`time`]); None when none could. Only for evaluations of every
    /// expression, and meaningful only when [`CompiledProfile::time_use`]
    /// is not [`TimeUse::Any`].
    pub time_changes_at: Option<jiff::Timestamp>,
}

impl CompiledProfile {
    /// Compiles every expression; returns all compile errors, ordered by
    /// field, so one status update can report every mistake at once.
    ///
    /// Runs on a thread of its own with a large stack (see [`limits`]): the
    /// parser recurses deeply on some inputs, and a stack overflow aborts
    /// the whole process.
    pub fn compile(
        attributes: &BTreeMap<String, String>,
        lifecycle: Option<&Lifecycle>,
    ) -> Result<CompiledProfile, Vec<CompileError>> {
        let compiled = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("cel-compile".to_string())
                .stack_size(limits::COMPILE_STACK)
                .spawn_scoped(scope, || Self::compile_here(attributes, lifecycle))
                .map_err(|e| e.to_string())?
                .join()
                .map_err(|panic| panic_text(&*panic))
        });
        compiled.unwrap_or_else(|problem| {
            Err(vec![CompileError {
                field: "spec".to_string(),
                expression: String::new(),
                problem: CheckError::Internal(truncate(&problem)),
            }])
        })
    }

    fn compile_here(
        attributes: &BTreeMap<String, String>,
        lifecycle: Option<&Lifecycle>,
    ) -> Result<CompiledProfile, Vec<CompileError>> {
        let base = base_context();
        let mut checker = Checker::new(&base);
        let mut errors = Vec::new();
        let mut compiled = BTreeMap::new();
        for (name, source) in attributes {
            match checker.compile(source) {
                Ok(program) => {
                    compiled.insert(name.clone(), program);
                }
                Err(problem) => errors.push(CompileError {
                    field: format!("spec.attributes.{name}"),
                    expression: source.clone(),
                    problem,
                }),
            }
        }
        let mut lifecycle = match lifecycle {
            None => None,
            Some(lifecycle) => match checker.compile(&lifecycle.expression) {
                Ok(program) => Some(CompiledLifecycle { program, states: lifecycle.states.clone() }),
                Err(problem) => {
                    errors.push(CompileError {
                        field: "spec.lifecycle.expression".to_string(),
                        expression: lifecycle.expression.clone(),
                        problem,
                    });
                    None
                }
            },
        };
        if !errors.is_empty() {
            errors.sort_by(|a, b| a.field.cmp(&b.field));
            return Err(errors);
        }
        let mut needs_accounts_map = false;
        let mut account_use = HashMap::new();
        let mut attribute_use = HashMap::new();
        let mut attribute_time = HashMap::new();
        let mut lifecycle_time = TimeUse::None;
        let expressions = compiled
            .iter_mut()
            .map(|(name, expression)| (Some(name.clone()), expression))
            .chain(lifecycle.as_mut().map(|l| (None, &mut l.program)));
        for (name, expression) in expressions {
            let needs_map = rewrite_account_access(expression, &mut Vec::new());
            let mut uses = HashMap::new();
            collect_account_use(expression, &mut uses);
            let time_use = time::classify(expression);
            if time_use == TimeUse::Thresholds {
                time::instrument(expression);
            }
            budget::instrument(expression);
            needs_accounts_map |= needs_map;
            merge_account_use(&mut account_use, &uses);
            match name {
                Some(name) => {
                    attribute_time.insert(name.clone(), time_use);
                    attribute_use.insert(name, (uses, needs_map));
                }
                None => lifecycle_time = time_use,
            }
        }
        Ok(CompiledProfile {
            base,
            attributes: compiled,
            lifecycle,
            needs_accounts_map,
            account_use,
            attribute_use,
            attribute_time,
            lifecycle_time,
            exceeded: Mutex::new(None),
        })
    }

    /// Records that a run with these expressions passed an evaluation
    /// bound, and what its message said.
    pub fn note_exceeded(&self, message: String) {
        if let Ok(mut exceeded) = self.exceeded.lock() {
            *exceeded = Some((Instant::now(), message));
        }
    }

    /// When a run with these expressions last passed an evaluation bound,
    /// and its message.
    pub fn exceeded(&self) -> Option<(Instant, String)> {
        self.exceeded.lock().ok().and_then(|e| e.clone())
    }

    /// How the profile's expressions, taken together, read `now`.
    pub fn time_use(&self) -> TimeUse {
        self.attribute_time.values().copied().fold(self.lifecycle_time, TimeUse::max)
    }

    /// How the expressions of the attributes named read `now`.
    pub fn time_use_of(&self, names: &[&str]) -> TimeUse {
        names.iter().filter_map(|n| self.attribute_time.get(*n)).copied().fold(TimeUse::None, TimeUse::max)
    }

    /// The names of the profile's attributes, in order.
    pub fn attribute_names(&self) -> impl Iterator<Item = &str> {
        self.attributes.keys().map(String::as_str)
    }

    /// Evaluates the attributes named in `only` (all when None) and, when
    /// `only` is None, the lifecycle. Names in `only` that are not attributes
    /// of the profile are ignored.
    ///
    /// Fails as a whole when an expression passes a bound of [`budget`] or
    /// the thread's [`Stop`] (see [`with_stop`]) is pulled.
    pub fn evaluate(&self, inputs: &Inputs<'_>, only: Option<&[&str]>) -> Result<Evaluation, Interrupted> {
        if budget::stopped() {
            return Err(Interrupted::Stopped);
        }
        budget::begin_identity();
        let mut evaluation = Evaluation::default();

        // Accounts are converted once for all expressions, and only as far
        // as expressions read them: converting a value into the interpreter
        // allocates (twice: once as a `Value`, once as the interpreter's own
        // representation), and for a typical profile converting whole
        // accounts cost several times more than evaluating the expressions.
        let restricted;
        let (account_use, needs_accounts_map) = match only {
            None => (&self.account_use, self.needs_accounts_map),
            Some(names) => {
                let mut uses = HashMap::new();
                let mut needs_map = false;
                for (attribute_uses, attribute_needs_map) in names.iter().filter_map(|n| self.attribute_use.get(*n)) {
                    merge_account_use(&mut uses, attribute_uses);
                    needs_map |= attribute_needs_map;
                }
                restricted = uses;
                (&restricted, needs_map)
            }
        };
        let mut scope = self.base.new_inner_scope();
        let mut connections = Vec::with_capacity(inputs.accounts.len());
        for (connection, account) in inputs.accounts {
            let value = match account_use.get(*connection) {
                None => None,
                Some(AccountUse::Whole) => Some(account_value(account)),
                Some(AccountUse::Fields(fields)) => Some(account_fields_value(account, fields)),
            };
            if let Some(value) = value {
                scope.add_variable_from_value(format!("{ACCOUNT_PREFIX}{connection}"), value);
            }
            connections.push(string(connection));
        }
        if needs_accounts_map {
            let whole = inputs.accounts.iter().map(|(connection, account)| (key(connection), account_value(account)));
            scope.add_variable_from_value(ACCOUNTS, Value::Map(Map { map: Arc::new(whole.collect()) }));
        }
        scope.add_variable_from_value(CONNECTIONS, Value::List(Arc::new(connections)));
        // Every jiff timestamp is within the range of the interpreter's; if
        // one were not, expressions using `now` fail with an undeclared
        // reference rather than the whole evaluation.
        let now = now_value(inputs.now);
        time::begin(now.as_ref());
        if let Some(now) = now {
            scope.add_variable_from_value(NOW, now);
        }

        for (name, program) in &self.attributes {
            if only.is_some_and(|only| !only.contains(&name.as_str())) {
                continue;
            }
            let result = execute(program, &scope);
            check_bounds(|| format!("spec.attributes.{name}"), &result)?;
            match result.and_then(|value| to_json(&value)) {
                Ok(Some(value)) => {
                    evaluation.attributes.insert(name.clone(), value);
                }
                Ok(None) => {}
                Err(error) => {
                    evaluation.errors.insert(name.clone(), error.to_string());
                }
            }
        }

        if only.is_none()
            && let Some(lifecycle) = &self.lifecycle
        {
            let result = execute(&lifecycle.program, &scope);
            check_bounds(|| "spec.lifecycle.expression".to_string(), &result)?;
            match result.and_then(|value| lifecycle.state(value)) {
                Ok(state) => evaluation.lifecycle_state = Some(state),
                Err(error) => {
                    evaluation.errors.insert(LIFECYCLE.to_string(), error.to_string());
                }
            }
        }
        let changes_at = time::take_changes_at();
        if only.is_none() {
            evaluation.time_changes_at = changes_at;
        }
        Ok(evaluation)
    }
}

/// Fails the evaluation when the expression at `field` was stopped or
/// passed a bound, whatever it yielded (an error of `@step` can be absorbed
/// by `||` and `&&`), or yielded a value too large to keep.
fn check_bounds(field: impl FnOnce() -> String, result: &Result<Value, EvalError>) -> Result<(), Interrupted> {
    if budget::stopped() {
        return Err(Interrupted::Stopped);
    }
    let exceeded = budget::take_exceeded().or_else(|| match result {
        Ok(value) if budget::value_size(value) > budget::MAX_ATTRIBUTE_BYTES => Some(Exceeded::Attribute),
        _ => None,
    });
    match exceeded {
        Some(exceeded) => Err(Interrupted::Exceeded { field: field(), exceeded }),
        None => Ok(()),
    }
}

/// A panic's message, if it has one.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the compiler panicked".to_string())
}

impl CompiledLifecycle {
    /// The state a lifecycle expression's result names.
    fn state(&self, value: Value) -> Result<String, EvalError> {
        match value {
            Value::String(state) if self.states.iter().any(|s| s == state.as_str()) => Ok(state.to_string()),
            Value::String(state) => Err(EvalError::NotAState { value: state.to_string(), states: self.states.clone() }),
            other => Err(EvalError::NotAString { type_name: type_name(&other) }),
        }
    }
}

/// The context every evaluation's scope is a child of.
fn base_context() -> cel::Context<'static> {
    let mut context = cel::Context::default().with_all();
    context.add_function("date", date);
    budget::register(&mut context);
    time::register(&mut context);
    context
}

/// `date(string) -> timestamp`: a plain date as midnight UTC, or an RFC 3339
/// timestamp. Also callable as a method, `'2024-01-31'.date()`.
fn date(ftx: &FunctionContext, This(text): This<Arc<String>>) -> Result<Value, ExecutionError> {
    // The interpreter takes a function's error as text; it comes back as an
    // `EvalError::Function` that shows it as it is.
    parse_date(&text).ok_or_else(|| ftx.error(NotADate(&text).to_string()))
}

/// What `date()` says of a string that is not a date.
#[derive(Debug, thiserror::Error)]
#[error("date({:?}): not a date (YYYY-MM-DD) or RFC 3339 timestamp", truncate(.0))]
struct NotADate<'a>(&'a str);

fn parse_date(text: &str) -> Option<Value> {
    let instant = if is_plain_date(text) {
        let date: jiff::civil::Date = text.parse().ok()?;
        date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp()
    } else {
        text.parse::<jiff::Timestamp>().ok()?
    };
    timestamp_value(instant)
}

/// Whether `text` has the shape `YYYY-MM-DD`: jiff's date parser would also
/// take a date-time and drop its time, which is not what `date()` promises.
fn is_plain_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() })
}

/// A CEL timestamp of `instant`, in UTC.
///
/// The interpreter's timestamps are chrono values, and chrono is not
/// re-exported by `cel`; parsing the RFC 3339 text (chrono's `FromStr`,
/// reached through type inference) is the way in without a dependency of our
/// own. Normalizing to UTC also makes `getHours()` and friends answer in UTC
/// as in cel-go, where they default to UTC.
fn timestamp_value(instant: jiff::Timestamp) -> Option<Value> {
    instant.to_string().parse().ok().map(Value::Timestamp)
}

thread_local! {
    /// The last `now` converted on this thread: a run evaluates every
    /// identity at the same instant, and converting it goes through text.
    static LAST_NOW: std::cell::RefCell<Option<(jiff::Timestamp, Value)>> = const { std::cell::RefCell::new(None) };
}

/// [`timestamp_value`] of `now`, converted once per instant per thread.
fn now_value(now: jiff::Timestamp) -> Option<Value> {
    LAST_NOW.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((at, value)) if *at == now => Some(value.clone()),
            _ => {
                let value = timestamp_value(now)?;
                *last = Some((now, value.clone()));
                Some(value)
            }
        }
    })
}

/// The standard fields of an account, which win over same-named source
/// attributes.
const STANDARD_FIELDS: [&str; 7] = ["id", "username", "email", "displayName", "enabled", "groups", "attributes"];

/// An account as expressions see it: its source attributes, and the standard
/// fields, which win over same-named attributes.
fn account_value(account: &Account) -> Value {
    let names = account.attributes.keys().map(String::as_str).chain(STANDARD_FIELDS);
    let map: HashMap<Key, Value> =
        names.filter_map(|name| account_field(account, name).map(|value| (key(name), value))).collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// The part of [`account_value`] that expressions read.
fn account_fields_value(account: &Account, fields: &BTreeSet<String>) -> Value {
    let map: HashMap<Key, Value> =
        fields.iter().filter_map(|name| account_field(account, name).map(|value| (key(name), value))).collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// One field of [`account_value`]; `None` when the account has none.
fn account_field(account: &Account, name: &str) -> Option<Value> {
    match name {
        "id" => Some(string(&account.id)),
        // An absent standard field does not show the same-named source
        // attribute through: `has(accounts.x.email)` is about the account's
        // e-mail address.
        "username" => account.username.as_deref().map(string),
        "email" => account.email.as_deref().map(string),
        "displayName" => account.display_name.as_deref().map(string),
        "enabled" => Some(Value::Bool(account.enabled)),
        "groups" => Some(Value::List(Arc::new(account.groups.iter().map(|g| string(g)).collect()))),
        "attributes" => {
            let attributes = account.attributes.iter().map(|(name, value)| (key(name), json_to_cel(value)));
            Some(Value::Map(Map { map: Arc::new(attributes.collect()) }))
        }
        _ => account.attributes.get(name).map(json_to_cel),
    }
}

fn key(name: &str) -> Key {
    Key::String(Arc::new(name.to_string()))
}

fn string(text: &str) -> Value {
    Value::String(Arc::new(text.to_string()))
}

fn json_to_cel(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                // serde_json numbers are i64, u64 or finite f64.
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => string(s),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(entries) => {
            Value::Map(Map { map: Arc::new(entries.iter().map(|(k, v)| (key(k), json_to_cel(v))).collect()) })
        }
    }
}

/// Runs a program, turning the interpreter's failures into errors.
fn execute(program: &Expression, scope: &cel::Context<'_>) -> Result<Value, EvalError> {
    // The interpreter panics on a few inputs (`todo!`s, and its expression
    // extractor reads past a call's arguments); compiling refuses the ones
    // we know of, and this keeps any other from taking down the evaluating
    // task.
    match catch_unwind(AssertUnwindSafe(|| Value::resolve(program, scope))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(describe_error(&error)),
        Err(panic) => Err(EvalError::InterpreterPanicked { detail: panic_text(&*panic) }),
    }
}

/// An evaluation error as an [`EvalError`].
///
/// Several of the interpreter's messages print whole values with Rust's
/// `Debug` (an account map, with every attribute); errors are stored on
/// identities and shown in statuses, so those name the values' types instead.
fn describe_error(error: &ExecutionError) -> EvalError {
    match error {
        ExecutionError::NoSuchKey(key) => EvalError::NoSuchKey(key.to_string()),
        // What `accounts.<connection>` fails with without the rewrite.
        ExecutionError::UndeclaredReference(name) => match name.strip_prefix(ACCOUNT_PREFIX) {
            Some(connection) => EvalError::NoSuchKey(connection.to_string()),
            None => EvalError::UndeclaredReference(name.to_string()),
        },
        ExecutionError::FunctionError { function, message } => {
            EvalError::Function { function: function.clone(), message: message.clone() }
        }
        other => EvalError::Interpreter(describe_other(other)),
    }
}

/// The message of an interpreter error with no variant of its own.
fn describe_other(error: &ExecutionError) -> String {
    match error {
        ExecutionError::UnexpectedType { got, want } => {
            format!("expected {}, got {}", cel_type_of_rust(want), debug_type_name(got))
        }
        ExecutionError::NoSuchOverload => {
            "no such overload (an operator or function applied to values of the wrong type)".to_string()
        }
        ExecutionError::InvalidArgumentCount { expected, actual } => {
            format!("wrong number of arguments: expected {expected}, got {actual}")
        }
        ExecutionError::UnsupportedTargetType { target } => {
            format!("unsupported argument of type {}", type_name(target))
        }
        ExecutionError::NotSupportedAsMethod { method, target } => {
            format!("`{method}` cannot be called on a {}", type_name(target))
        }
        ExecutionError::UnsupportedKeyType(value) => format!("a {} cannot be a map key", type_name(value)),
        ExecutionError::ValuesNotComparable(a, b) => {
            format!("a {} cannot be compared with a {}", type_name(a), type_name(b))
        }
        ExecutionError::UnsupportedUnaryOperator(op, value) => format!("no `{op}` for a {}", type_name(value)),
        ExecutionError::UnsupportedBinaryOperator(op, a, b) => {
            format!("no `{op}` for {} and {}", type_name(a), type_name(b))
        }
        ExecutionError::UnsupportedMapIndex(value) => format!("a {} cannot index a map", type_name(value)),
        ExecutionError::UnsupportedListIndex(value) => format!("a {} cannot index a list", type_name(value)),
        ExecutionError::UnsupportedIndex(index, value) => {
            format!("a {} cannot index a {}", type_name(index), type_name(value))
        }
        ExecutionError::DivisionByZero(_) => "division by zero".to_string(),
        ExecutionError::RemainderByZero(_) => "remainder by zero".to_string(),
        ExecutionError::Overflow(op, a, b) => format!("overflow in `{op}` of {} and {}", type_name(a), type_name(b)),
        ExecutionError::IndexOutOfBounds(index) => match index {
            Value::Int(i) => format!("index {i} out of bounds"),
            Value::UInt(i) => format!("index {i} out of bounds"),
            _ => "index out of bounds".to_string(),
        },
        other => truncate(&other.to_string()),
    }
}

/// The CEL name of a value's type.
fn type_name(value: &Value) -> String {
    match value {
        Value::Opaque(opaque) => opaque.runtime_type_name().to_string(),
        Value::Float(_) => "double".to_string(),
        other => other.type_of().to_string(),
    }
}

/// The CEL type of a Rust type named in the interpreter's "want" of an
/// unexpected-type error (e.g. `Arc<String>`).
fn cel_type_of_rust(rust: &str) -> String {
    let compact: String = rust.chars().filter(|c| !c.is_whitespace()).collect();
    let name = match compact.as_str() {
        "i64" => "int",
        "u64" => "uint",
        "f64" => "double",
        "bool" => "bool",
        "Arc<String>" => "string",
        "Arc<Vec<u8>>" => "bytes",
        "Arc<Vec<Value>>" => "list",
        "chrono::Duration" => "duration",
        "chrono::DateTime<chrono::FixedOffset>" => "timestamp",
        _ => return truncate(rust),
    };
    name.to_string()
}

/// The type in a value's `Debug` text (`Int(5)`, `Map(Map { … })`, `Null`),
/// which the interpreter puts in the "got" of unexpected-type errors.
fn debug_type_name(debug: &str) -> String {
    let variant = debug.split(['(', '<', ' ']).next().unwrap_or_default();
    match variant {
        "Float" => "double".to_string(),
        "Opaque" => "opaque".to_string(),
        "List" | "Map" | "Function" | "Int" | "UInt" | "String" | "Bytes" | "Bool" | "Duration" | "Timestamp"
        | "Null" => variant.to_lowercase(),
        _ => truncate(debug),
    }
}

/// `text`, cut to [`MAX_QUOTED`] characters.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// An expression's result as an attribute value; `None` for null.
fn to_json(value: &Value) -> Result<Option<Json>, EvalError> {
    match value {
        Value::Null => Ok(None),
        Value::Opaque(opaque) => match opaque.downcast_ref::<OptionalValue>() {
            // An optional attribute is its value when it has one, absent
            // otherwise, like null.
            Some(optional) => optional.value().map_or(Ok(None), to_json),
            None => Err(cannot_hold(value).into()),
        },
        other => Ok(Some(to_json_inner(other)?)),
    }
}

/// A value nested in a list or map: null stays null there.
fn to_json_inner(value: &Value) -> Result<Json, Unrepresentable> {
    Ok(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Json::Number(n),
            None => return Err(Unrepresentable::NonFiniteNumber(*f)),
        },
        Value::String(s) => Json::String(s.to_string()),
        Value::List(items) => Json::Array(items.iter().map(to_json_inner).collect::<Result<_, _>>()?),
        Value::Map(map) => {
            let mut object = serde_json::Map::new();
            for (k, v) in map.map.iter() {
                let Key::String(k) = k else {
                    return Err(Unrepresentable::NonStringKeys);
                };
                object.insert(k.to_string(), to_json_inner(v)?);
            }
            Json::Object(object)
        }
        Value::Timestamp(t) => {
            // Leap seconds show as nanoseconds past a second in chrono.
            let nanos = t.timestamp_subsec_nanos().min(999_999_999) as i32;
            match jiff::Timestamp::new(t.timestamp(), nanos) {
                Ok(instant) => Json::String(instant.to_string()),
                Err(_) => return Err(Unrepresentable::TimestampOutOfRange),
            }
        }
        Value::Duration(d) => Json::String(format_duration(d.num_seconds(), d.subsec_nanos())),
        other => return Err(cannot_hold(other)),
    })
}

fn cannot_hold(value: &Value) -> Unrepresentable {
    Unrepresentable::Type { type_name: type_name(value) }
}

/// A duration as CEL and protobuf JSON write them: seconds with a `s`
/// suffix and only the fractional digits needed (`3600s`, `1.5s`).
fn format_duration(seconds: i64, subsec_nanos: i32) -> String {
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(subsec_nanos);
    let sign = if total < 0 { "-" } else { "" };
    let total = total.unsigned_abs();
    let (whole, fraction) = (total / 1_000_000_000, total % 1_000_000_000);
    if fraction == 0 {
        format!("{sign}{whole}s")
    } else {
        let digits = format!("{fraction:09}");
        format!("{sign}{whole}.{}s", digits.trim_end_matches('0'))
    }
}

/// Compiles expressions and refuses the ones that cannot work on any
/// identity.
struct Checker<'a> {
    base: &'a cel::Context<'static>,
    /// Whether each function name asked about is registered.
    functions: HashMap<String, bool>,
}

impl<'a> Checker<'a> {
    fn new(base: &'a cel::Context<'static>) -> Self {
        Checker { base, functions: HashMap::new() }
    }

    /// Parses and checks one expression.
    ///
    /// The optional syntax (`accounts.?github.email`, `accounts[?'github']`)
    /// stays off: cel 0.13 parses it, but its `.?` fails on a missing key
    /// instead of yielding `optional.none()`, so it would not do what
    /// Kubernetes users expect of it.
    ///
    /// The size limits come first, each before the step it protects: the
    /// source's before parsing, the tree's before walking it.
    fn compile(&mut self, source: &str) -> Result<Expression, CheckError> {
        limits::check_source(source)?;
        // The parser panics on a few inputs (an overflow in its own
        // recursion counter on long `?:` chains).
        let program = match catch_unwind(|| Parser::new().parse(source)) {
            Ok(Ok(program)) => program,
            Ok(Err(errors)) => return Err(CheckError::Parse(syntax_errors(&errors))),
            Err(panic) => return Err(CheckError::Internal(format!("the parser failed: {}", panic_text(&*panic)))),
        };
        limits::check_tree(&program)?;
        let mut problems = Vec::new();
        self.check(&program, &mut Vec::new(), &mut problems);
        if problems.is_empty() { Ok(program) } else { Err(CheckError::Refused(problems)) }
    }

    /// Collects what is wrong with `expr`, with `bound` the variables that
    /// enclosing macros (`all`, `exists`, `map`, …) declare.
    fn check<'e>(&mut self, expr: &'e IdedExpr, bound: &mut Vec<&'e str>, problems: &mut Vec<Refusal>) {
        match &expr.expr {
            Expr::Literal(_) => {}
            Expr::Ident(name) => {
                // The parser's own variables (macro accumulators) start with `@`.
                if !(name == ACCOUNTS || name == NOW || name.starts_with('@') || bound.contains(&name.as_str())) {
                    add_problem(problems, Refusal::UnknownVariable(name.clone()));
                }
            }
            Expr::Select(select) => self.check(&select.operand, bound, problems),
            Expr::Call(call) => self.check_call(call, bound, problems),
            Expr::Comprehension(comprehension) => {
                self.check(&comprehension.iter_range, bound, problems);
                self.check(&comprehension.accu_init, bound, problems);
                let depth = bound.len();
                bound.push(&comprehension.iter_var);
                if let Some(second) = &comprehension.iter_var2 {
                    bound.push(second);
                }
                bound.push(&comprehension.accu_var);
                self.check(&comprehension.loop_cond, bound, problems);
                self.check(&comprehension.loop_step, bound, problems);
                self.check(&comprehension.result, bound, problems);
                bound.truncate(depth);
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.check(element, bound, problems);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(entry) => {
                            self.check(&entry.key, bound, problems);
                            self.check(&entry.value, bound, problems);
                        }
                        EntryExpr::StructField(_) => add_problem(problems, Refusal::MessageFields),
                    }
                }
            }
            Expr::Struct(s) => add_problem(problems, Refusal::MessageConstruction(s.type_name.clone())),
            Expr::Unspecified => add_problem(problems, Refusal::Incomplete),
        }
    }

    fn check_call<'e>(&mut self, call: &'e CallExpr, bound: &mut Vec<&'e str>, problems: &mut Vec<Refusal>) {
        let check_args = |this: &mut Self, bound: &mut Vec<&'e str>, problems: &mut Vec<Refusal>| {
            for arg in &call.args {
                this.check(arg, bound, problems);
            }
        };
        if is_operator(&call.func_name) {
            if let Some(target) = &call.target {
                self.check(target, bound, problems);
            }
            check_args(self, bound, problems);
            return;
        }
        // As the interpreter does: `a.f(x)` with `a` an identifier first
        // looks for a function named `a.f` (`sets.contains`, `math.least`),
        // and only then calls `f` on the value of `a`.
        if let Some(target) = &call.target
            && let Expr::Ident(prefix) = &target.expr
            && self.function_exists(&format!("{prefix}.{}", call.func_name))
        {
            check_args(self, bound, problems);
            return;
        }
        if !self.function_exists(&call.func_name) {
            add_problem(problems, Refusal::UnknownFunction(call.func_name.clone()));
        } else if call.func_name == "date" && call.args.len() + usize::from(call.target.is_some()) != 1 {
            add_problem(problems, Refusal::DateArity);
        }
        if let Some(target) = &call.target {
            self.check(target, bound, problems);
        }
        check_args(self, bound, problems);
    }

    /// Whether a function is registered in the base context.
    ///
    /// The `cel` crate keeps its function registry private; this asks the
    /// interpreter itself, with the same lookup a call makes, by calling the
    /// function as a method on an undeclared variable: the interpreter looks
    /// the function up before it resolves the target, so an unknown function
    /// fails with an undeclared reference to its own name, and a known one
    /// with an undeclared reference to the target, without being run.
    fn function_exists(&mut self, name: &str) -> bool {
        if let Some(&exists) = self.functions.get(name) {
            return exists;
        }
        // `@` cannot start an identifier of a parsed expression, so this is
        // neither a function nor a function prefix.
        let target = IdedExpr { id: 0, expr: Expr::Ident("@probe".to_string()) };
        let call = CallExpr { func_name: name.to_string(), target: Some(Box::new(target)), args: Vec::new() };
        let probe = IdedExpr { id: 0, expr: Expr::Call(call) };
        let exists = match catch_unwind(AssertUnwindSafe(|| Value::resolve(&probe, self.base))) {
            Ok(Err(ExecutionError::UndeclaredReference(reference))) => reference.as_str() != name,
            // Anything else means the function was found (and, against
            // expectations, ran): not unknown.
            _ => true,
        };
        self.functions.insert(name.to_string(), exists);
        exists
    }
}

/// Rewrites `accounts.<connection>` to the variable `@accounts.<connection>`
/// and `has(accounts.<connection>)` to `'<connection>' in @connections`;
/// returns whether `accounts` is still used otherwise.
///
/// Why: cel 0.13 copies a map deeply whenever a field is selected from it,
/// so `accounts.hr.email` would copy the whole HR account (every attribute)
/// to read one string, in every expression of every identity. A variable is
/// borrowed instead, which made evaluation several times faster.
/// The results are the same, errors included (an absent connection's
/// undeclared variable is reported as the missing key it stands for).
fn rewrite_account_access(expr: &mut IdedExpr, bound: &mut Vec<String>) -> bool {
    // A macro variable named `accounts` hides the real one.
    let accounts_free = !bound.iter().any(|name| name == ACCOUNTS);
    if accounts_free
        && let Expr::Select(select) = &expr.expr
        && let Expr::Ident(name) = &select.operand.expr
        && name == ACCOUNTS
    {
        let connection = select.field.as_str();
        expr.expr = if select.test {
            let literal = Expr::Literal(LiteralValue::String(CelString::from(connection)));
            let args = vec![
                IdedExpr { id: expr.id, expr: literal },
                IdedExpr { id: expr.id, expr: Expr::Ident(CONNECTIONS.to_string()) },
            ];
            Expr::Call(CallExpr { func_name: operators::IN.to_string(), target: None, args })
        } else {
            Expr::Ident(format!("{ACCOUNT_PREFIX}{connection}"))
        };
        return false;
    }
    match &mut expr.expr {
        Expr::Ident(name) => accounts_free && name == ACCOUNTS,
        Expr::Literal(_) | Expr::Unspecified => false,
        Expr::Select(select) => rewrite_account_access(&mut select.operand, bound),
        Expr::Call(call) => {
            let mut uses = false;
            if let Some(target) = &mut call.target {
                uses |= rewrite_account_access(target, bound);
            }
            for arg in &mut call.args {
                uses |= rewrite_account_access(arg, bound);
            }
            uses
        }
        Expr::Comprehension(comprehension) => {
            let mut uses = rewrite_account_access(&mut comprehension.iter_range, bound);
            uses |= rewrite_account_access(&mut comprehension.accu_init, bound);
            let depth = bound.len();
            bound.push(comprehension.iter_var.clone());
            bound.extend(comprehension.iter_var2.clone());
            bound.push(comprehension.accu_var.clone());
            uses |= rewrite_account_access(&mut comprehension.loop_cond, bound);
            uses |= rewrite_account_access(&mut comprehension.loop_step, bound);
            uses |= rewrite_account_access(&mut comprehension.result, bound);
            bound.truncate(depth);
            uses
        }
        Expr::List(list) => {
            let mut uses = false;
            for element in &mut list.elements {
                uses |= rewrite_account_access(element, bound);
            }
            uses
        }
        Expr::Map(map) => {
            let mut uses = false;
            for entry in &mut map.entries {
                if let EntryExpr::MapEntry(entry) = &mut entry.expr {
                    uses |= rewrite_account_access(&mut entry.key, bound);
                    uses |= rewrite_account_access(&mut entry.value, bound);
                }
            }
            uses
        }
        // Refused by the checker.
        Expr::Struct(_) => false,
    }
}

/// Records what the rewritten `expr` reads of each connection's account:
/// `@accounts.hr.email` reads the field `email`, and any other use of
/// `@accounts.hr` the whole account.
/// Adds what `more` reads to `uses`: the whole account wins over fields.
fn merge_account_use(uses: &mut HashMap<String, AccountUse>, more: &HashMap<String, AccountUse>) {
    for (connection, add) in more {
        match (uses.entry(connection.clone()).or_insert_with(|| AccountUse::Fields(BTreeSet::new())), add) {
            (AccountUse::Whole, _) => {}
            (known, AccountUse::Whole) => *known = AccountUse::Whole,
            (AccountUse::Fields(fields), AccountUse::Fields(add)) => fields.extend(add.iter().cloned()),
        }
    }
}

fn collect_account_use(expr: &IdedExpr, uses: &mut HashMap<String, AccountUse>) {
    let connection_of = |expr: &IdedExpr| match &expr.expr {
        Expr::Ident(name) => name.strip_prefix(ACCOUNT_PREFIX).map(str::to_string),
        _ => None,
    };
    match &expr.expr {
        Expr::Select(select) => match connection_of(&select.operand) {
            Some(connection) => match uses.entry(connection).or_insert_with(|| AccountUse::Fields(BTreeSet::new())) {
                AccountUse::Fields(fields) => {
                    fields.insert(select.field.clone());
                }
                AccountUse::Whole => {}
            },
            None => collect_account_use(&select.operand, uses),
        },
        Expr::Ident(_) => {
            if let Some(connection) = connection_of(expr) {
                uses.insert(connection, AccountUse::Whole);
            }
        }
        Expr::Literal(_) | Expr::Unspecified | Expr::Struct(_) => {}
        Expr::Call(call) => {
            call.target.iter().for_each(|target| collect_account_use(target, uses));
            call.args.iter().for_each(|arg| collect_account_use(arg, uses));
        }
        Expr::Comprehension(comprehension) => {
            for part in [
                &comprehension.iter_range,
                &comprehension.accu_init,
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ] {
                collect_account_use(part, uses);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|element| collect_account_use(element, uses)),
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(entry) = &entry.expr {
                    collect_account_use(&entry.key, uses);
                    collect_account_use(&entry.value, uses);
                }
            }
        }
    }
}

/// Adds a problem once: a misspelled variable used twice is one mistake.
fn add_problem(problems: &mut Vec<Refusal>, problem: Refusal) {
    if !problems.contains(&problem) {
        problems.push(problem);
    }
}

/// Whether a call's name is an operator (`_+_`, `_[_]`, `!_`, `@in`, …),
/// which the interpreter implements itself, rather than a function.
fn is_operator(name: &str) -> bool {
    name.starts_with('@') || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The parser's errors, each once, with its message on one line.
fn syntax_errors(errors: &cel::ParseErrors) -> Vec<SyntaxError> {
    let mut found: Vec<SyntaxError> = Vec::new();
    for error in &errors.errors {
        let message = error.msg.split_whitespace().collect::<Vec<_>>().join(" ");
        let error = SyntaxError { line: error.pos.0, column: error.pos.1, message };
        if !found.contains(&error) {
            found.push(error);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(attributes: &[(&str, &str)]) -> Result<CompiledProfile, Vec<CompileError>> {
        let attributes = attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CompiledProfile::compile(&attributes, None)
    }

    fn compiled(attributes: &[(&str, &str)]) -> CompiledProfile {
        match compile(attributes) {
            Ok(profile) => profile,
            Err(errors) => panic!("does not compile: {errors:?}"),
        }
    }

    fn ts(text: &str) -> jiff::Timestamp {
        text.parse().expect("test timestamp")
    }

    fn hr_account() -> Account {
        let mut account = Account::new("E100");
        account.username = Some("jdoe".to_string());
        account.email = Some("Jane.Doe@Example.com".to_string());
        account.display_name = Some("Jane Doe".to_string());
        account.groups = vec!["admins".to_string(), "staff".to_string()];
        account.attributes = BTreeMap::from([
            ("work_email".to_string(), json!("JANE@EXAMPLE.COM")),
            // Standard fields win over same-named attributes.
            ("email".to_string(), json!("attribute@example.com")),
            ("hire_date".to_string(), json!("2020-03-01")),
            ("cost_center".to_string(), json!(4711)),
            ("fte".to_string(), json!(0.5)),
            ("manager".to_string(), json!(null)),
            ("tags".to_string(), json!(["a", "b"])),
            ("address".to_string(), json!({"city": "Chicago", "zip": "60601"})),
        ]);
        account
    }

    fn evaluate(profile: &CompiledProfile, accounts: &[(&str, &Account)], now: &str) -> Evaluation {
        profile.evaluate(&Inputs { accounts, now: ts(now) }, None).expect("within the bounds")
    }

    fn eval_one(expression: &str) -> Result<Option<Json>, String> {
        let profile = compiled(&[("x", expression)]);
        let hr = hr_account();
        let mut evaluation = evaluate(&profile, &[("hr", &hr)], "2024-06-15T12:00:00Z");
        match evaluation.errors.remove("x") {
            Some(error) => Err(error),
            None => Ok(evaluation.attributes.remove("x")),
        }
    }

    #[test]
    fn compiled_profile_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CompiledProfile>();
    }

    #[test]
    fn maps_accounts_of_several_connections() {
        let profile = compiled(&[
            ("email", "accounts.hr.work_email.lowerAscii()"),
            ("emailViaAttributes", "accounts.hr.attributes.work_email"),
            ("standardEmail", "accounts.hr.email"),
            ("attributeEmail", "accounts.hr.attributes.email"),
            ("id", "accounts.hr.id"),
            ("name", "accounts.hr.displayName + ' (' + accounts.hr.username + ')'"),
            ("isAdmin", "'admins' in accounts.hr.groups"),
            ("groupCount", "size(accounts.hr.groups)"),
            ("enabled", "accounts.hr.enabled"),
            ("hasGithub", "has(accounts.github)"),
            ("githubIn", "'github' in accounts"),
            ("github", "has(accounts.github) ? accounts.github.username : 'none'"),
            ("ldapDisabled", "has(accounts.ldap) && !accounts.ldap.enabled"),
            ("ldapNoEmail", "has(accounts.ldap.email)"),
        ]);
        let hr = hr_account();
        let mut ldap = Account::new("uid=jdoe");
        ldap.enabled = false;
        // An absent standard field hides a same-named attribute.
        ldap.attributes.insert("email".to_string(), json!("hidden@example.com"));
        let evaluation = evaluate(&profile, &[("hr", &hr), ("ldap", &ldap)], "2024-06-15T12:00:00Z");
        assert_eq!(evaluation.errors, BTreeMap::new());
        let expected = BTreeMap::from([
            ("email".to_string(), json!("jane@example.com")),
            ("emailViaAttributes".to_string(), json!("JANE@EXAMPLE.COM")),
            ("standardEmail".to_string(), json!("Jane.Doe@Example.com")),
            ("attributeEmail".to_string(), json!("attribute@example.com")),
            ("id".to_string(), json!("E100")),
            ("name".to_string(), json!("Jane Doe (jdoe)")),
            ("isAdmin".to_string(), json!(true)),
            ("groupCount".to_string(), json!(2)),
            ("enabled".to_string(), json!(true)),
            ("hasGithub".to_string(), json!(false)),
            ("githubIn".to_string(), json!(false)),
            ("github".to_string(), json!("none")),
            ("ldapDisabled".to_string(), json!(true)),
            ("ldapNoEmail".to_string(), json!(false)),
        ]);
        assert_eq!(evaluation.attributes, expected);
        assert_eq!(evaluation.lifecycle_state, None);

        let mut github = Account::new("42");
        github.username = Some("janedoe".to_string());
        let evaluation = evaluate(&profile, &[("hr", &hr), ("github", &github)], "2024-06-15T12:00:00Z");
        assert_eq!(evaluation.attributes["hasGithub"], json!(true));
        assert_eq!(evaluation.attributes["githubIn"], json!(true));
        assert_eq!(evaluation.attributes["github"], json!("janedoe"));
    }

    #[test]
    fn syntax_error_names_field_expression_and_message() {
        let Err(errors) = compile(&[("email", "accounts.hr.email +")]) else { panic!("compiled") };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.attributes.email");
        assert_eq!(errors[0].expression, "accounts.hr.email +");
        assert!(errors[0].problem.to_string().starts_with("1:"), "{}", errors[0].problem);
        assert!(!errors[0].problem.to_string().contains('\n'), "{}", errors[0].problem);
        let shown = errors[0].to_string();
        assert!(shown.starts_with("spec.attributes.email: \"accounts.hr.email +\" does not compile: 1:"), "{shown}");
    }

    #[test]
    fn all_compile_errors_are_reported_in_field_order() {
        let attributes = BTreeMap::from([
            ("b".to_string(), "accounts.hr.(".to_string()),
            ("a".to_string(), "acounts.hr.email".to_string()),
            ("ok".to_string(), "accounts.hr.email".to_string()),
            ("c".to_string(), "accounts.hr.email.lowercase()".to_string()),
        ]);
        let lifecycle = Lifecycle { expression: "'active' +".to_string(), states: vec!["active".to_string()] };
        let Err(errors) = CompiledProfile::compile(&attributes, Some(&lifecycle)) else { panic!("compiled") };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.attributes.a", "spec.attributes.b", "spec.attributes.c", "spec.lifecycle.expression"]
        );
        assert_eq!(
            errors[0].problem.to_string(),
            "unknown variable `acounts`; expressions can use `accounts` and `now`"
        );
        assert_eq!(errors[2].problem.to_string(), "unknown function `lowercase`");
    }

    #[test]
    fn checks_know_macros_qualified_functions_and_extensions() {
        // Macro variables, namespaced functions, Kubernetes extensions and
        // standard functions are all known.
        compiled(&[
            ("a", "accounts.hr.groups.filter(g, g.startsWith('a')).map(g, g.upperAscii())"),
            ("b", "accounts.hr.groups.all(g, size(g) > 0) && accounts.exists(c, c == 'hr')"),
            ("c", "sets.contains(accounts.hr.groups, ['staff'])"),
            ("d", "math.greatest([1, 2]) + int('3')"),
            ("e", "accounts.hr.displayName.split(' ').join('.')"),
            ("f", "string(now.getFullYear()) + accounts.hr.email.replace('@', '.')"),
            ("g", "'hr'.date()"),
            ("h", "accounts.hr.groups.exists_one(g, g == 'staff') ? double(1) : 2.0"),
            ("i", "timestamp('2024-01-01T00:00:00Z') < now - duration('24h')"),
        ]);
        // A macro's variable is only known inside it.
        let Err(errors) = compile(&[("a", "accounts.hr.groups.map(g, g) + [g]")]) else { panic!("compiled") };
        assert_eq!(errors[0].problem.to_string(), "unknown variable `g`; expressions can use `accounts` and `now`");
        // An unknown namespace is a variable as far as CEL is concerned.
        let Err(errors) = compile(&[("a", "sets.frobnicate([1], [2])")]) else { panic!("compiled") };
        assert_eq!(
            errors[0].problem.to_string(),
            "unknown function `frobnicate`; unknown variable `sets`; expressions can use `accounts` and `now`"
        );
        // Wrong arity of date, and what the interpreter would panic on.
        let Err(errors) = compile(&[("a", "date()"), ("b", "date('a', 'b')"), ("c", "Foo{x: 1}")]) else {
            panic!("compiled")
        };
        assert_eq!(errors[0].problem.to_string(), "`date` takes one argument, a string");
        assert_eq!(errors[1].problem.to_string(), "`date` takes one argument, a string");
        assert_eq!(errors[2].problem.to_string(), "message construction (`Foo{…}`) is not supported");
    }

    #[test]
    fn an_evaluation_error_leaves_other_attributes() {
        let profile = compiled(&[
            ("email", "accounts.hr.attributes.private_email"),
            ("github", "accounts.github.username"),
            ("name", "accounts.hr.displayName"),
            ("bad", "accounts.hr.cost_center + 'x'"),
        ]);
        let hr = hr_account();
        let evaluation = evaluate(&profile, &[("hr", &hr)], "2024-06-15T12:00:00Z");
        assert_eq!(evaluation.attributes, BTreeMap::from([("name".to_string(), json!("Jane Doe"))]));
        assert_eq!(
            evaluation.errors,
            BTreeMap::from([
                ("email".to_string(), "No such key: private_email".to_string()),
                ("github".to_string(), "No such key: github".to_string()),
                (
                    "bad".to_string(),
                    "no such overload (an operator or function applied to values of the wrong type)".to_string()
                ),
            ])
        );
    }

    #[test]
    fn converts_results_to_json() {
        assert_eq!(eval_one("null"), Ok(None));
        // A null attribute is there, and null.
        assert_eq!(eval_one("accounts.hr.manager"), Ok(None));
        assert_eq!(eval_one("has(accounts.hr.manager)"), Ok(Some(json!(true))));
        assert_eq!(eval_one("accounts.hr.cost_center * 2"), Ok(Some(json!(9422))));
        assert_eq!(eval_one("accounts.hr.fte * 2.0"), Ok(Some(json!(1.0))));
        assert_eq!(eval_one("7u"), Ok(Some(json!(7))));
        assert_eq!(eval_one("accounts.hr.tags + ['c']"), Ok(Some(json!(["a", "b", "c"]))));
        assert_eq!(eval_one("accounts.hr.address.city"), Ok(Some(json!("Chicago"))));
        assert_eq!(eval_one("accounts.hr.address"), Ok(Some(json!({"city": "Chicago", "zip": "60601"}))));
        assert_eq!(eval_one("{'a': [1, null], 'b': {'c': true}}"), Ok(Some(json!({"a": [1, null], "b": {"c": true}}))));
        assert_eq!(eval_one("timestamp('2024-01-01T02:00:00+02:00')"), Ok(Some(json!("2024-01-01T00:00:00Z"))));
        assert_eq!(eval_one("now"), Ok(Some(json!("2024-06-15T12:00:00Z"))));
        assert_eq!(eval_one("duration('1h')"), Ok(Some(json!("3600s"))));
        assert_eq!(eval_one("duration('1.5s')"), Ok(Some(json!("1.5s"))));
        assert_eq!(eval_one("optional.of('x')"), Ok(Some(json!("x"))));
        assert_eq!(eval_one("optional.none()"), Ok(None));
        assert_eq!(eval_one("b'abc'"), Err("yields bytes, which an attribute cannot hold".to_string()));
        assert_eq!(
            eval_one("{1: 'a'}"),
            Err("yields a map with keys that are not strings, which an attribute cannot hold".to_string())
        );
    }

    fn lifecycle_profile(states: &[&str]) -> CompiledProfile {
        let expression = "has(accounts.hr.termination_date) && accounts.hr.termination_date != '' \
                          && date(accounts.hr.termination_date) <= now ? 'terminated' \
                          : date(accounts.hr.hire_date) > now ? 'prehire' : 'active'";
        let lifecycle =
            Lifecycle { expression: expression.to_string(), states: states.iter().map(|s| s.to_string()).collect() };
        match CompiledProfile::compile(&BTreeMap::new(), Some(&lifecycle)) {
            Ok(profile) => profile,
            Err(errors) => panic!("does not compile: {errors:?}"),
        }
    }

    fn lifecycle_of(profile: &CompiledProfile, hire: &str, termination: Option<&str>, now: &str) -> Evaluation {
        let mut hr = Account::new("E1");
        hr.attributes.insert("hire_date".to_string(), json!(hire));
        if let Some(termination) = termination {
            hr.attributes.insert("termination_date".to_string(), json!(termination));
        }
        evaluate(profile, &[("hr", &hr)], now)
    }

    #[test]
    fn lifecycle_follows_hire_and_termination_dates() {
        let profile = lifecycle_profile(&["prehire", "active", "terminated"]);
        let state = |hire, termination, now| lifecycle_of(&profile, hire, termination, now).lifecycle_state;
        assert_eq!(state("2024-07-01", None, "2024-06-30T23:59:59Z").as_deref(), Some("prehire"));
        assert_eq!(state("2024-07-01", None, "2024-07-01T00:00:00Z").as_deref(), Some("active"));
        assert_eq!(state("2024-07-01", Some(""), "2025-01-01T00:00:00Z").as_deref(), Some("active"));
        assert_eq!(state("2024-07-01", Some("2025-01-31"), "2025-01-30T12:00:00Z").as_deref(), Some("active"));
        assert_eq!(state("2024-07-01", Some("2025-01-31"), "2025-01-31T00:00:00Z").as_deref(), Some("terminated"));
        let evaluation = lifecycle_of(&profile, "2024-07-01", None, "2025-01-01T00:00:00Z");
        assert_eq!(evaluation.errors, BTreeMap::new());
    }

    #[test]
    fn lifecycle_must_yield_one_of_its_states() {
        let profile = lifecycle_profile(&["active", "inactive"]);
        let evaluation = lifecycle_of(&profile, "2030-01-01", None, "2024-01-01T00:00:00Z");
        assert_eq!(evaluation.lifecycle_state, None);
        assert_eq!(
            evaluation.errors,
            BTreeMap::from([(
                "lifecycle".to_string(),
                "yielded \"prehire\", which is not one of its states (active, inactive)".to_string()
            )])
        );

        let lifecycle = Lifecycle { expression: "1 + 1".to_string(), states: vec!["active".to_string()] };
        let Ok(profile) = CompiledProfile::compile(&BTreeMap::new(), Some(&lifecycle)) else { panic!() };
        let evaluation = evaluate(&profile, &[], "2024-01-01T00:00:00Z");
        assert_eq!(evaluation.lifecycle_state, None);
        assert_eq!(evaluation.errors["lifecycle"], "yielded int, not a string");

        // A failing lifecycle expression is an error under `lifecycle` too.
        let evaluation = lifecycle_of(
            &profile_with_lifecycle("date(accounts.hr.hire_date) > now ? 'a' : 'b'"),
            "soon",
            None,
            "2024-01-01T00:00:00Z",
        );
        assert_eq!(evaluation.errors["lifecycle"], "date(\"soon\"): not a date (YYYY-MM-DD) or RFC 3339 timestamp");
    }

    fn profile_with_lifecycle(expression: &str) -> CompiledProfile {
        let lifecycle =
            Lifecycle { expression: expression.to_string(), states: vec!["a".to_string(), "b".to_string()] };
        match CompiledProfile::compile(&BTreeMap::new(), Some(&lifecycle)) {
            Ok(profile) => profile,
            Err(errors) => panic!("does not compile: {errors:?}"),
        }
    }

    #[test]
    fn date_reads_plain_dates_and_rfc3339() {
        assert_eq!(eval_one("date('2024-02-29')"), Ok(Some(json!("2024-02-29T00:00:00Z"))));
        assert_eq!(eval_one("date('2024-02-29T10:30:00+02:00')"), Ok(Some(json!("2024-02-29T08:30:00Z"))));
        assert_eq!(eval_one("date('2024-02-29T10:30:00.25Z')"), Ok(Some(json!("2024-02-29T10:30:00.25Z"))));
        assert_eq!(eval_one("'2024-03-01'.date() == date('2024-03-01T00:00:00Z')"), Ok(Some(json!(true))));
        assert_eq!(eval_one("date('2024-02-29').getHours()"), Ok(Some(json!(0))));
        for garbage in ["'x'", "'2023-02-29'", "'2024-02-29T10:30:00'", "'29.02.2024'", "''"] {
            let text = garbage.trim_matches('\'');
            assert_eq!(
                eval_one(&format!("date({garbage})")),
                Err(format!("date({text:?}): not a date (YYYY-MM-DD) or RFC 3339 timestamp")),
                "{garbage}"
            );
        }
        assert_eq!(eval_one("date(1)"), Err("expected string, got int".to_string()));
    }

    #[test]
    fn now_compares_with_timestamps_and_durations() {
        assert_eq!(eval_one("now > timestamp('2024-06-15T11:59:59Z')"), Ok(Some(json!(true))));
        assert_eq!(eval_one("now - duration('24h')"), Ok(Some(json!("2024-06-14T12:00:00Z"))));
        assert_eq!(eval_one("date('2024-06-14') > now - duration('24h')"), Ok(Some(json!(false))));
        assert_eq!(eval_one("date('2024-06-15') + duration('12h') == now"), Ok(Some(json!(true))));
        assert_eq!(eval_one("now - date('2024-06-14')"), Ok(Some(json!("129600s"))));
        assert_eq!(eval_one("string(now)"), Ok(Some(json!("2024-06-15T12:00:00+00:00"))));
    }

    #[test]
    fn only_evaluates_named_attributes_and_skips_lifecycle() {
        let attributes = BTreeMap::from([
            ("a".to_string(), "'a'".to_string()),
            ("b".to_string(), "'b'".to_string()),
            ("c".to_string(), "accounts.nope.x".to_string()),
        ]);
        let lifecycle = Lifecycle { expression: "'active'".to_string(), states: vec!["active".to_string()] };
        let Ok(profile) = CompiledProfile::compile(&attributes, Some(&lifecycle)) else { panic!() };
        assert_eq!(profile.attribute_names().collect::<Vec<_>>(), ["a", "b", "c"]);
        let inputs = Inputs { accounts: &[], now: ts("2024-01-01T00:00:00Z") };
        let evaluation = profile.evaluate(&inputs, Some(&["b", "unknown"])).expect("within the bounds");
        assert_eq!(
            evaluation,
            Evaluation {
                attributes: BTreeMap::from([("b".to_string(), json!("b"))]),
                lifecycle_state: None,
                errors: BTreeMap::new(),
                time_changes_at: None,
            }
        );
        let evaluation = profile.evaluate(&inputs, None).expect("within the bounds");
        assert_eq!(evaluation.attributes.len(), 2);
        assert_eq!(evaluation.lifecycle_state.as_deref(), Some("active"));
        assert_eq!(evaluation.errors.keys().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn reads_only_what_expressions_use() {
        let profile = compiled(&[
            ("email", "accounts.hr.work_email"),
            ("title", "has(accounts.hr.title) ? accounts.hr.title : 'none'"),
            ("ldap", "has(accounts.ldap) ? accounts.ldap.username : 'none'"),
            ("groups", "accounts.ldap.groups.filter(g, g != 'staff')"),
        ]);
        // The conversion of accounts is limited to the fields named, and
        // `accounts` is not bound as a whole.
        assert!(!profile.needs_accounts_map);
        let fields = |names: &[&str]| AccountUse::Fields(names.iter().map(|n| n.to_string()).collect());
        assert_eq!(
            profile.account_use,
            HashMap::from([
                ("hr".to_string(), fields(&["title", "work_email"])),
                ("ldap".to_string(), fields(&["groups", "username"])),
            ])
        );
        // And per attribute, for evaluations of a few of them.
        assert_eq!(
            profile.attribute_use["email"],
            (HashMap::from([("hr".to_string(), fields(&["work_email"]))]), false)
        );
        assert_eq!(
            profile.attribute_use["ldap"],
            (HashMap::from([("ldap".to_string(), fields(&["username"]))]), false)
        );

        let hr = hr_account();
        let evaluation = evaluate(&profile, &[("hr", &hr)], "2024-06-15T12:00:00Z");
        assert_eq!(
            evaluation.attributes,
            BTreeMap::from([
                ("email".to_string(), json!("JANE@EXAMPLE.COM")),
                ("title".to_string(), json!("none")),
                ("ldap".to_string(), json!("none")),
            ])
        );
        assert_eq!(evaluation.errors, BTreeMap::from([("groups".to_string(), "No such key: ldap".to_string())]));

        let mut ldap = Account::new("uid=jdoe");
        ldap.groups = vec!["admins".to_string(), "staff".to_string()];
        let mut hr = hr_account();
        hr.attributes.insert("title".to_string(), json!("Engineer"));
        let evaluation = evaluate(&profile, &[("hr", &hr), ("ldap", &ldap)], "2024-06-15T12:00:00Z");
        assert_eq!(evaluation.attributes["title"], json!("Engineer"));
        assert_eq!(evaluation.attributes["groups"], json!(["admins"]));
        // `username` was asked for, and the account has none.
        assert_eq!(evaluation.errors, BTreeMap::from([("ldap".to_string(), "No such key: username".to_string())]));
    }

    #[test]
    fn accounts_can_be_used_as_a_whole() {
        let profile = compiled(&[
            ("indexed", "accounts['hr'].displayName"),
            ("keyed", "accounts.hr['work_email']"),
            ("connections", "size(accounts)"),
            ("names", "accounts.map(c, c)"),
            // A macro variable named `accounts` hides the real one.
            ("shadowed", "['x'].map(accounts, accounts + '!')"),
            ("account", "accounts.ldap"),
        ]);
        assert!(profile.needs_accounts_map);
        let hr = hr_account();
        let mut ldap = Account::new("uid=jdoe");
        ldap.attributes.insert("shell".to_string(), json!("/bin/sh"));
        let evaluation = evaluate(&profile, &[("hr", &hr), ("ldap", &ldap)], "2024-06-15T12:00:00Z");
        assert_eq!(evaluation.errors, BTreeMap::new());
        assert_eq!(evaluation.attributes["indexed"], json!("Jane Doe"));
        assert_eq!(evaluation.attributes["keyed"], json!("JANE@EXAMPLE.COM"));
        assert_eq!(evaluation.attributes["connections"], json!(2));
        let mut names = evaluation.attributes["names"].as_array().cloned().unwrap_or_default();
        names.sort_by_key(|n| n.to_string());
        assert_eq!(names, [json!("hr"), json!("ldap")]);
        assert_eq!(evaluation.attributes["shadowed"], json!(["x!"]));
        assert_eq!(
            evaluation.attributes["account"],
            json!({
                "id": "uid=jdoe",
                "enabled": true,
                "groups": [],
                "shell": "/bin/sh",
                "attributes": {"shell": "/bin/sh"},
            })
        );
    }

    #[test]
    fn error_messages_do_not_quote_whole_values() {
        let error = eval_one("accounts.hr + 1").expect_err("adding a map");
        assert_eq!(error, "no `add` for map and int");
        let error = eval_one("accounts.hr < 1").expect_err("comparing a map");
        assert!(!error.contains("Chicago"), "{error}");
    }

    #[test]
    fn errors_say_what_failed() {
        let Err(errors) = compile(&[("a", "acounts.hr + lowercase(1)"), ("b", "1 +")]) else { panic!("compiled") };
        assert_eq!(
            errors[0].problem,
            CheckError::Refused(vec![
                Refusal::UnknownVariable("acounts".to_string()),
                Refusal::UnknownFunction("lowercase".to_string()),
            ])
        );
        assert!(matches!(&errors[1].problem, CheckError::Parse(found) if found[0].line == 1), "{:?}", errors[1]);

        let base = base_context();
        let run = |source: &str| execute(&Parser::new().parse(source).expect("parses"), &base);
        assert_eq!(run("accounts.hr"), Err(EvalError::UndeclaredReference("accounts".to_string())));
        let Err(EvalError::Function { function, .. }) = run("date('soon')") else { panic!("not a function error") };
        assert_eq!(function, "date");

        let lifecycle =
            CompiledLifecycle { program: Parser::new().parse("'a'").expect("parses"), states: vec!["a".to_string()] };
        assert_eq!(
            lifecycle.state(string("b")),
            Err(EvalError::NotAState { value: "b".to_string(), states: vec!["a".to_string()] })
        );
        assert_eq!(lifecycle.state(Value::Int(1)), Err(EvalError::NotAString { type_name: "int".to_string() }));

        let infinite = to_json(&Value::Float(f64::INFINITY)).expect_err("no JSON number");
        assert_eq!(infinite, EvalError::Unrepresentable(Unrepresentable::NonFiniteNumber(f64::INFINITY)));
        assert_eq!(infinite.to_string(), "yields inf, which an attribute cannot hold");
        assert_eq!(
            to_json(&Value::Bytes(Arc::new(vec![1]))),
            Err(Unrepresentable::Type { type_name: "bytes".to_string() }.into())
        );
    }

    /// `[1,2,…,n]`.
    fn literal_list(n: usize) -> String {
        format!("[{}]", (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(","))
    }

    fn evaluate_bounded(profile: &CompiledProfile, hr: &Account) -> Result<Evaluation, Interrupted> {
        let accounts = [("hr", hr)];
        profile.evaluate(&Inputs { accounts: &accounts, now: ts("2024-06-15T12:00:00Z") }, None)
    }

    fn too_complex(errors: &[CompileError]) -> &TooComplex {
        match &errors[0].problem {
            CheckError::TooComplex(too) => too,
            other => panic!("refused for another reason: {other}"),
        }
    }

    #[test]
    fn a_7000_deep_expression_is_refused_without_crashing() {
        // On this test's own 2 MiB thread, where parsing it overflowed the
        // stack and aborted the process.
        let deep = format!("{}1{}", "(".repeat(7000), ")".repeat(7000));
        let Err(errors) = compile(&[("deep", &deep)]) else { panic!("compiled") };
        assert!(errors[0].is_too_complex());
        assert_eq!(too_complex(&errors), &TooComplex::Length { length: 14001, limit: 4096 });
        // Within the length, the nesting is what is refused, before parsing.
        let deep = format!("{}1{}", "[".repeat(2000), "]".repeat(2000));
        let Err(errors) = compile(&[("deep", &deep)]) else { panic!("compiled") };
        assert_eq!(too_complex(&errors), &TooComplex::Nesting { depth: 2000, limit: 32 });
        assert_eq!(
            errors[0].to_string(),
            format!(
                "spec.attributes.deep: {deep:?} does not compile: nests brackets 2000 deep; expressions may nest at most 32"
            )
        );
        // Chains nest without brackets: parsed on the compiler's thread,
        // refused by the tree's depth.
        for chain in [
            format!("1{}", " + 1".repeat(1000)),
            format!("accounts.hr{}", ".x".repeat(2000)),
            format!("'a'{}", ".lowerAscii()".repeat(300)),
        ] {
            let Err(errors) = compile(&[("chain", &chain)]) else { panic!("compiled {chain:.40}") };
            assert!(matches!(too_complex(&errors), TooComplex::Depth { limit: 100, .. }), "{}", errors[0]);
        }
        // Long `?:` chains made the parser panic.
        let ternaries = format!("{}'x'", "true ? 'a' : ".repeat(150));
        assert!(compile(&[("t", &ternaries)]).is_err());
    }

    #[test]
    fn the_deepest_expressions_allowed_evaluate_on_the_processing_stack() {
        // Nested comprehensions, as many as the tree's depth allows (each
        // is a few levels of it), and a chain of additions as deep.
        let nest = |n: usize| format!("{}true{}", "[1].all(x, x > 0 && ".repeat(n), ")".repeat(n));
        let levels = (1..=limits::MAX_NESTING).take_while(|n| compile(&[("nested", &nest(*n))]).is_ok()).last();
        assert!(levels.is_some_and(|n| n >= 15), "{levels:?}");
        let nested = nest(levels.unwrap_or_default());
        let chain = format!("1{}", " + 1".repeat(limits::MAX_TREE_DEPTH - 1));
        let profile = compiled(&[("nested", &nested), ("chain", &chain)]);
        let evaluation = std::thread::Builder::new()
            .stack_size(EVALUATION_STACK)
            .spawn(move || evaluate_bounded(&profile, &hr_account()))
            .expect("thread")
            .join()
            .expect("no overflow")
            .expect("within the bounds");
        assert_eq!(evaluation.attributes["chain"], json!(limits::MAX_TREE_DEPTH));
        assert_eq!(evaluation.attributes["nested"], json!(true));
        assert_eq!(evaluation.errors, BTreeMap::new());
    }

    #[test]
    fn nested_comprehensions_over_literal_lists_are_refused_at_compile_time() {
        // The shape that held a core for 13 minutes: 372 characters.
        let list = literal_list(30);
        let nested = format!("{list}.all(a, {list}.all(b, {list}.all(c, {list}.all(d, a + b + c + d > 0))))");
        assert!(nested.len() < 400, "{}", nested.len());
        let Err(errors) = compile(&[("busy", &nested)]) else { panic!("compiled") };
        let TooComplex::Cost { cost, limit } = too_complex(&errors) else { panic!("{}", errors[0]) };
        assert!(*cost > 30u64.pow(4), "{cost}");
        assert_eq!(*limit, limits::MAX_ESTIMATED_COST);
        let shown = errors[0].to_string();
        assert!(shown.starts_with("spec.attributes.busy: "), "{shown}");
        assert!(
            shown.contains("nested comprehensions (all, exists, exists_one, map, filter): estimated cost"),
            "{shown}"
        );
        // Two levels are fine.
        compiled(&[("fine", &format!("{list}.all(a, {list}.all(b, a + b > 0))"))]);
    }

    #[test]
    fn comprehensions_over_larger_lists_than_estimated_stop_at_the_budget() {
        // Lists of unknown size count as 100: nested twice, it compiles; on
        // 1,100 elements it takes 1.21 million steps (12.1 million units),
        // past the budget.
        let profile = compiled(&[
            ("pairs", "accounts.hr.tags.all(a, accounts.hr.tags.all(b, a >= 0))"),
            ("name", "accounts.hr.displayName"),
        ]);
        let mut hr = hr_account();
        hr.attributes.insert("tags".to_string(), json!((0..1100).collect::<Vec<_>>()));
        assert_eq!(
            evaluate_bounded(&profile, &hr),
            Err(Interrupted::Exceeded { field: "spec.attributes.pairs".to_string(), exceeded: Exceeded::Budget })
        );
        // An error that `||` absorbs still fails the evaluation.
        let absorbed = compiled(&[("pairs", "accounts.hr.tags.all(a, accounts.hr.tags.all(b, a >= 0)) || true")]);
        assert!(matches!(
            evaluate_bounded(&absorbed, &hr),
            Err(Interrupted::Exceeded { exceeded: Exceeded::Budget, .. })
        ));
        // The budget is per identity: a smaller one is evaluated in full.
        hr.attributes.insert("tags".to_string(), json!((0..900).collect::<Vec<_>>()));
        let evaluation = evaluate_bounded(&profile, &hr).expect("810,000 steps are within the budget");
        assert_eq!(evaluation.attributes["pairs"], json!(true));
        // Building a list copies it at every step: 5,000 elements copy
        // 12.5 million, past the budget, in only 5,000 steps.
        let profile = compiled(&[("copies", "accounts.hr.tags.map(t, t)")]);
        hr.attributes.insert("tags".to_string(), json!((0..5000).collect::<Vec<_>>()));
        assert!(matches!(
            evaluate_bounded(&profile, &hr),
            Err(Interrupted::Exceeded { exceeded: Exceeded::Budget, .. })
        ));
        hr.attributes.insert("tags".to_string(), json!((0..2000).collect::<Vec<_>>()));
        let evaluation = evaluate_bounded(&profile, &hr).expect("within the budget");
        assert_eq!(evaluation.attributes["copies"][1999], json!(1999));
    }

    #[test]
    fn a_replace_chain_is_stopped_before_it_builds_100_mb() {
        // Each replace multiplies the length by ten: 10^8 bytes after eight.
        let chain = format!("'aaaaaaaaaa'{}", ".replace('a', 'aaaaaaaaaa')".repeat(8));
        let profile = compiled(&[("big", &chain)]);
        assert_eq!(
            evaluate_bounded(&profile, &hr_account()),
            Err(Interrupted::Exceeded {
                field: "spec.attributes.big".to_string(),
                exceeded: Exceeded::Value { function: "replace".to_string() },
            })
        );
        assert_eq!(
            Interrupted::Exceeded {
                field: "spec.attributes.big".into(),
                exceeded: Exceeded::Value { function: "replace".into() }
            }
            .to_string(),
            "spec.attributes.big: `replace` would build a value of more than 1048576 bytes"
        );
        // Five replaces (1,000,000 bytes) are within the bound, and replace
        // works as the Kubernetes library's: a count, and none for n <= 0.
        let five = format!("'aaaaaaaaaa'{}", ".replace('a', 'aaaaaaaaaa')".repeat(5));
        assert_eq!(eval_one(&format!("size({five})")), Ok(Some(json!(1_000_000))));
        assert_eq!(eval_one("'a-b-c'.replace('-', '+')"), Ok(Some(json!("a+b+c"))));
        assert_eq!(eval_one("'a-b-c'.replace('-', '+', 1)"), Ok(Some(json!("a+b-c"))));
        assert_eq!(eval_one("'a-b-c'.replace('-', '+', -1)"), Ok(Some(json!("a-b-c"))));
        assert_eq!(eval_one("'ab'.replace('', '.')"), Ok(Some(json!(".a.b."))));
    }

    #[test]
    fn functions_that_grow_values_are_bounded() {
        let exceeded = |expression: &str| {
            let profile = compiled(&[("x", expression)]);
            match evaluate_bounded(&profile, &hr_account()) {
                Err(Interrupted::Exceeded { exceeded, .. }) => exceeded,
                other => panic!("{expression}: {other:?}"),
            }
        };
        let value = |function: &str| Exceeded::Value { function: function.to_string() };
        // Each quoting doubles a string of quotes.
        let quoted = format!("{}'\"\"\"\"\"\"\"\"'{}", "strings.quote(".repeat(20), ")".repeat(20));
        assert_eq!(exceeded(&quoted), value("strings.quote"));
        assert_eq!(exceeded("lists.range(10000000)"), value("lists.range"));
        let hundred_kb = format!("'aaaaaaaaaa'{}", ".replace('a', 'aaaaaaaaaa')".repeat(4));
        assert_eq!(exceeded(&format!("lists.range(11).map(i, {hundred_kb}).join('-')")), value("join"));
        assert_eq!(
            exceeded(&format!("{}{hundred_kb}{}", "base64.encode(bytes(".repeat(10), "))".repeat(10))),
            value("base64.encode")
        );
        // An attribute's value is bounded too.
        let megabyte = format!("'aaaaaaaaaa'{}", ".replace('a', 'aaaaaaaaaa')".repeat(5));
        assert_eq!(exceeded(&megabyte), Exceeded::Attribute);
        // Within the bounds they work as before.
        assert_eq!(eval_one("strings.quote('say \"hi\"')"), Ok(Some(json!("\"say \\\"hi\\\"\""))));
        assert_eq!(eval_one("lists.range(3)"), Ok(Some(json!([0, 1, 2]))));
        assert_eq!(eval_one("['a', 'b'].join('-') + ['c'].join()"), Ok(Some(json!("a-bc"))));
        assert_eq!(eval_one("base64.encode(bytes('hi'))"), Ok(Some(json!("aGk="))));
        assert_eq!(eval_one("'a,b'.split(',')"), Ok(Some(json!(["a", "b"]))));
    }

    #[test]
    fn a_pulled_stop_stops_evaluation() {
        let profile = compiled(&[("name", "accounts.hr.displayName")]);
        let stop = Stop::new();
        let evaluation = with_stop(&stop, || evaluate_bounded(&profile, &hr_account()));
        assert!(evaluation.is_ok());
        stop.stop();
        assert_eq!(with_stop(&stop, || evaluate_bounded(&profile, &hr_account())), Err(Interrupted::Stopped));
        // The stop belongs to the scope it was given to.
        assert!(evaluate_bounded(&profile, &hr_account()).is_ok());
    }
}
