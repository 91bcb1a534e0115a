//! The JSONPath dialect of kubectl and CRD `additionalPrinterColumns` (client-go's `util/jsonpath`),
//! reduced to what a printer column can use: one expression, with or without the surrounding `{}`.
//!
//! Supported: `.a.b`, `.a\.b` (escaped dot), `$`/`@` (current object), `.*` and `[*]`, `[0]`, `[-1]`,
//! slices `[1:3]` / `[::2]`, unions `[0,2]`, `['key.with.dots']` / `["k"]`, recursive descent `..name`, and
//! filters `[?(@.type=="Ready")]` with `==`, `!=`, `<`, `>`, `<=`, `>=` or a bare path (existence).
//!
//! Where this differs from client-go, always towards "no result" rather than an error, which is what the
//! API server's table convertor turns errors into anyway (a `null` cell):
//! - A missing field, an index out of range, indexing or filtering a non-list, and comparing values of
//!   different types (client-go: "incompatible types for comparison") all give an empty result.
//! - `['a.b']` and `["a.b"]` select the single key `a.b`; client-go splits single-quoted keys on dots and
//!   rejects double quotes inside brackets.
//! - Numbers compare by value whether they are integers or floats; client-go refuses int-vs-float.
//! - Text outside the braces and several `{}` actions (`{.a}{.b}`) are not supported.

use serde_json::Value;

/// A malformed JSONPath expression; messages follow client-go's parser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPathError {
    #[error("{0}")]
    Syntax(String),
}

fn syntax(message: impl Into<String>) -> JsonPathError {
    JsonPathError::Syntax(message.into())
}

/// Evaluates a kubectl/CRD printer-column JSONPath (with or without surrounding `{}`) against an object.
pub fn eval(path: &str, object: &Value) -> Result<Vec<Value>, JsonPathError> {
    Ok(JsonPath::parse(path)?.find(object).into_iter().cloned().collect())
}

/// A parsed expression, for evaluating the same column against many objects.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A map key; the empty name (from `{.}`) stays on the current value.
    Field(String),
    Wildcard,
    /// `..`: every container below (and including) the current values, for the next step to search.
    Recursive,
    Index(i64),
    Slice {
        start: Option<i64>,
        end: Option<i64>,
        step: usize,
    },
    Union(Vec<Vec<Step>>),
    Filter(Box<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    left: Operand,
    comparison: Option<(Comparison, Operand)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Vec<Step>),
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl JsonPath {
    pub fn parse(path: &str) -> Result<Self, JsonPathError> {
        let trimmed = path.trim();
        let inner = match trimmed.strip_prefix('{') {
            Some(rest) => rest.strip_suffix('}').ok_or_else(|| syntax("unclosed action"))?,
            None => trimmed,
        };
        let chars: Vec<char> = inner.chars().collect();
        if has_unquoted(&chars, |c| c == '{' || c == '}') {
            return Err(syntax("only a single JSONPath expression is supported"));
        }
        Ok(JsonPath { steps: parse_steps(&chars)? })
    }

    /// All values the expression selects, in document order (object keys in the map's order).
    pub fn find<'a>(&self, object: &'a Value) -> Vec<&'a Value> {
        run(&self.steps, vec![object])
    }
}

fn has_unquoted(chars: &[char], wanted: impl Fn(char) -> bool) -> bool {
    let mut quote = None;
    let mut escaped = false;
    for &c in chars {
        match quote {
            _ if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if wanted(c) => return true,
            None => {}
        }
    }
    false
}

/// Finds the first unquoted `wanted` at or after `from`.
fn find_unquoted(chars: &[char], from: usize, wanted: char) -> Option<usize> {
    let mut quote = None;
    let mut escaped = false;
    for (i, &c) in chars.iter().enumerate().skip(from) {
        match quote {
            _ if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == wanted => return Some(i),
            None => {}
        }
    }
    None
}

fn is_terminator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | '.' | ',' | '[' | ']' | '$' | '@' | '{' | '}')
}

fn describe(c: char) -> String {
    if c.is_control() { format!("U+{:04X}", u32::from(c)) } else { format!("U+{:04X} '{c}'", u32::from(c)) }
}

fn parse_steps(chars: &[char]) -> Result<Vec<Step>, JsonPathError> {
    let mut steps = Vec::new();
    let mut pos = 0;
    while pos < chars.len() {
        match chars[pos] {
            ' ' | '\t' | '@' | '$' => pos += 1,
            '.' if chars.get(pos + 1) == Some(&'.') => {
                if steps.last() == Some(&Step::Recursive) {
                    return Err(syntax("invalid multiple recursive descent"));
                }
                steps.push(Step::Recursive);
                pos += 2;
                if chars.get(pos).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
                    pos = parse_field(chars, pos, &mut steps);
                }
            }
            '.' => pos = parse_field(chars, pos + 1, &mut steps),
            '[' if chars[pos..].starts_with(&['[', '?', '(']) => {
                let close = find_unquoted(chars, pos + 3, ')').ok_or_else(|| syntax("unterminated filter"))?;
                if chars.get(close + 1) != Some(&']') {
                    return Err(syntax("unclosed array expect ]"));
                }
                let expression: String = chars[pos + 3..close].iter().collect();
                steps.push(Step::Filter(Box::new(parse_filter(&expression)?)));
                pos = close + 2;
            }
            '[' => {
                let close = find_unquoted(chars, pos + 1, ']').ok_or_else(|| syntax("unterminated array"))?;
                let text: String = chars[pos + 1..close].iter().collect();
                steps.push(parse_brackets(&text)?);
                pos = close + 1;
            }
            c => return Err(syntax(format!("unrecognized character in action: {}", describe(c)))),
        }
    }
    Ok(steps)
}

/// Reads a dotted field name starting at `pos`; a backslash makes the next character literal (`a\.b`).
fn parse_field(chars: &[char], mut pos: usize, steps: &mut Vec<Step>) -> usize {
    let mut name = String::new();
    while let Some(&c) = chars.get(pos) {
        if c == '\\' {
            if let Some(&escaped) = chars.get(pos + 1) {
                name.push(escaped);
            }
            pos += 2;
            continue;
        }
        if is_terminator(c) {
            break;
        }
        name.push(c);
        pos += 1;
    }
    steps.push(if name == "*" { Step::Wildcard } else { Step::Field(name) });
    pos
}

fn split_unquoted(text: &str, separator: char) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut parts = Vec::new();
    let mut start = 0;
    while let Some(at) = find_unquoted(&chars, start, separator) {
        parts.push(chars[start..at].iter().collect());
        start = at + 1;
    }
    parts.push(chars[start..].iter().collect());
    parts
}

fn parse_brackets(text: &str) -> Result<Step, JsonPathError> {
    let parts = split_unquoted(text, ',');
    if parts.len() > 1 {
        let branches = parts
            .iter()
            .map(|part| parse_bracket_item(part.trim()).map(|step| vec![step]))
            .collect::<Result<_, _>>()?;
        return Ok(Step::Union(branches));
    }
    parse_bracket_item(text.trim())
}

fn parse_bracket_item(text: &str) -> Result<Step, JsonPathError> {
    if text == "*" {
        return Ok(Step::Wildcard);
    }
    if let Some(key) = quoted(text)? {
        return Ok(Step::Field(key));
    }
    let parts: Vec<&str> = text.split(':').collect();
    let valid = |p: &str| {
        let digits = p.strip_prefix('-').unwrap_or(p);
        digits.chars().all(|c| c.is_ascii_digit())
    };
    if parts.len() > 3 || !parts.iter().all(|p| valid(p)) {
        return Err(syntax(format!("invalid array index {text}")));
    }
    let number = |p: &str| -> Result<Option<i64>, JsonPathError> {
        if p.is_empty() {
            return Ok(None);
        }
        p.parse().map(Some).map_err(|_| syntax(format!("array index {p} is not a number")))
    };
    if let [single] = parts.as_slice() {
        // client-go reads `[]` as index 0.
        return Ok(Step::Index(number(single)?.unwrap_or(0)));
    }
    let step = match parts.get(2).map(|p| number(p)).transpose()?.flatten() {
        None => 1,
        Some(step) if step > 0 => usize::try_from(step).unwrap_or(usize::MAX),
        Some(_) => return Err(syntax("step must be > 0")),
    };
    Ok(Step::Slice { start: number(parts[0])?, end: number(parts[1])?, step })
}

/// The unquoted content of a `'...'` or `"..."` literal, or `None` when `text` is not quoted.
fn quoted(text: &str) -> Result<Option<String>, JsonPathError> {
    let Some(quote @ ('\'' | '"')) = text.chars().next() else { return Ok(None) };
    if text.len() < 2 || !text.ends_with(quote) {
        return Err(syntax(format!("unquote string {text} error invalid syntax")));
    }
    let body: Vec<char> = text[1..text.len() - 1].chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            '\\' if i + 1 < body.len() => {
                out.push(match body[i + 1] {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
                i += 2;
            }
            c if c == quote => return Err(syntax(format!("unquote string {text} error invalid syntax"))),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(Some(out))
}

fn parse_filter(expression: &str) -> Result<Filter, JsonPathError> {
    let is_op = |c: char| matches!(c, '!' | '<' | '>' | '=');
    let Some(op_start) = expression.find(is_op) else {
        return Ok(Filter { left: parse_operand(expression)?, comparison: None });
    };
    let op_len = expression[op_start..].find(|c| !is_op(c)).unwrap_or(expression.len() - op_start);
    let (left, op, right) =
        (&expression[..op_start], &expression[op_start..op_start + op_len], &expression[op_start + op_len..]);
    if left.trim().is_empty() || right.trim().is_empty() {
        return Err(syntax(format!("invalid filter expression {expression}")));
    }
    let comparison = match op {
        "==" => Comparison::Eq,
        "!=" => Comparison::Ne,
        "<" => Comparison::Lt,
        ">" => Comparison::Gt,
        "<=" => Comparison::Le,
        ">=" => Comparison::Ge,
        other => return Err(syntax(format!("unrecognized filter operator {other}"))),
    };
    Ok(Filter { left: parse_operand(left)?, comparison: Some((comparison, parse_operand(right)?)) })
}

fn parse_operand(text: &str) -> Result<Operand, JsonPathError> {
    let text = text.trim();
    if text.starts_with(['@', '$', '.', '[']) {
        return Ok(Operand::Path(parse_steps(&text.chars().collect::<Vec<_>>())?));
    }
    if let Some(s) = quoted(text)? {
        return Ok(Operand::Literal(Value::String(s)));
    }
    match text {
        "true" => return Ok(Operand::Literal(Value::Bool(true))),
        "false" => return Ok(Operand::Literal(Value::Bool(false))),
        _ => {}
    }
    if text.starts_with(|c: char| c == '+' || c == '-' || c.is_ascii_digit()) {
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        if let Ok(i) = unsigned.parse::<i64>() {
            return Ok(Operand::Literal(Value::from(i)));
        }
        if let Some(n) = unsigned.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            return Ok(Operand::Literal(Value::Number(n)));
        }
        return Err(syntax(format!("cannot parse number {text}")));
    }
    Err(syntax(format!("unrecognized identifier {text}")))
}

fn run<'a>(steps: &[Step], mut current: Vec<&'a Value>) -> Vec<&'a Value> {
    for step in steps {
        current = apply(step, current);
    }
    current
}

fn apply<'a>(step: &Step, input: Vec<&'a Value>) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for value in input {
        match step {
            Step::Field(name) if name.is_empty() => out.push(value),
            Step::Field(name) => out.extend(value.get(name.as_str())),
            Step::Wildcard => out.extend(children(value)),
            Step::Recursive => collect_containers(value, &mut out),
            Step::Index(index) => {
                if let Value::Array(items) = value {
                    let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
                    let at = if *index < 0 { index + len } else { *index };
                    out.extend(usize::try_from(at).ok().and_then(|at| items.get(at)));
                }
            }
            Step::Slice { start, end, step } => {
                if let Value::Array(items) = value {
                    out.extend(slice(items, *start, *end, *step));
                }
            }
            Step::Union(branches) => {
                for branch in branches {
                    out.extend(run(branch, vec![value]));
                }
            }
            Step::Filter(filter) => {
                if let Value::Array(items) = value {
                    out.extend(items.iter().filter(|item| filter.keeps(item)));
                }
            }
        }
    }
    out
}

fn children(value: &Value) -> Vec<&Value> {
    match value {
        Value::Object(map) => map.values().collect(),
        Value::Array(items) => items.iter().collect(),
        _ => Vec::new(),
    }
}

/// Pre-order walk that, like client-go, yields only values with children: the next step searches them.
fn collect_containers<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    let kids = children(value);
    if kids.is_empty() {
        return;
    }
    out.push(value);
    for kid in kids {
        collect_containers(kid, out);
    }
}

/// client-go's slice bounds: negative values count from the end; out-of-range bounds select nothing.
fn slice(items: &[Value], start: Option<i64>, end: Option<i64>, step: usize) -> Vec<&Value> {
    let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
    let resolve = |bound: i64| if bound < 0 { bound + len } else { bound };
    let start = resolve(start.unwrap_or(0));
    let end = end.map_or(len, resolve);
    if start == end || start < 0 || start >= len || end < 0 || end > len || start > end {
        return Vec::new();
    }
    let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else { return Vec::new() };
    items[start..end].iter().step_by(step).collect()
}

impl Filter {
    fn keeps(&self, item: &Value) -> bool {
        let left = self.left.values(item);
        let Some((comparison, right)) = &self.comparison else { return !left.is_empty() };
        let right = right.values(item);
        // client-go compares exactly one value per side; anything else is an error there.
        match (left.as_slice(), right.as_slice()) {
            ([l], [r]) => compare(*comparison, l, r),
            _ => false,
        }
    }
}

impl Operand {
    fn values<'a>(&'a self, item: &'a Value) -> Vec<&'a Value> {
        match self {
            Operand::Path(steps) => run(steps, vec![item]),
            Operand::Literal(value) => vec![value],
        }
    }
}

fn compare(comparison: Comparison, left: &Value, right: &Value) -> bool {
    use std::cmp::Ordering;
    let ordering = match (left, right) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => a.as_f64().zip(b.as_f64()).and_then(|(a, b)| a.partial_cmp(&b)),
        },
        (Value::Bool(a), Value::Bool(b)) => {
            return match comparison {
                Comparison::Eq => a == b,
                Comparison::Ne => a != b,
                _ => false,
            };
        }
        _ => None,
    };
    let Some(ordering) = ordering else { return false };
    match comparison {
        Comparison::Eq => ordering == Ordering::Equal,
        Comparison::Ne => ordering != Ordering::Equal,
        Comparison::Lt => ordering == Ordering::Less,
        Comparison::Gt => ordering == Ordering::Greater,
        Comparison::Le => ordering != Ordering::Greater,
        Comparison::Ge => ordering != Ordering::Less,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object() -> Value {
        json!({
            "metadata": {
                "name": "team-a",
                "labels": {"app.kubernetes.io/name": "idsync", "tier": "web"},
                "annotations": {"a.b": "dotted"}
            },
            "spec": {"replicas": 3, "ratio": 0.5, "enabled": true, "tags": ["x", "y", "z"], "empty": null},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Synced", "observedGeneration": 2},
                    {"type": "Degraded", "status": "False", "observedGeneration": 1}
                ],
                "members": [{"name": "ann", "uid": 1}, {"name": "bob"}, {"uid": 3}]
            }
        })
    }

    fn eval_ok(path: &str) -> Vec<Value> {
        eval(path, &object()).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn dotted_fields_with_and_without_braces() {
        assert_eq!(eval_ok(".metadata.name"), vec![json!("team-a")]);
        assert_eq!(eval_ok("{.metadata.name}"), vec![json!("team-a")]);
        assert_eq!(eval_ok(" { .spec.replicas } "), vec![json!(3)]);
        assert_eq!(eval_ok("$.spec.enabled"), vec![json!(true)]);
        assert_eq!(eval_ok("{.spec}").len(), 1);
    }

    #[test]
    fn missing_fields_give_empty_results() {
        assert!(eval_ok(".metadata.missing").is_empty());
        assert!(eval_ok(".nothing.at.all").is_empty());
        assert!(eval_ok(".spec.replicas.deeper").is_empty());
        assert!(eval_ok(".spec.empty.deeper").is_empty());
        assert!(eval_ok(".status.conditions.type").is_empty());
    }

    #[test]
    fn null_values_are_results() {
        assert_eq!(eval_ok(".spec.empty"), vec![Value::Null]);
    }

    #[test]
    fn indexes_and_slices() {
        assert_eq!(eval_ok(".spec.tags[0]"), vec![json!("x")]);
        assert_eq!(eval_ok(".spec.tags[-1]"), vec![json!("z")]);
        assert_eq!(eval_ok(".spec.tags[1:]"), vec![json!("y"), json!("z")]);
        assert_eq!(eval_ok(".spec.tags[0:2]"), vec![json!("x"), json!("y")]);
        assert_eq!(eval_ok(".spec.tags[::2]"), vec![json!("x"), json!("z")]);
        assert_eq!(eval_ok(".spec.tags[0,2]"), vec![json!("x"), json!("z")]);
        assert!(eval_ok(".spec.tags[5]").is_empty());
        assert!(eval_ok(".spec.tags[-4]").is_empty());
        assert!(eval_ok(".spec.tags[1:9]").is_empty());
        assert!(eval_ok(".metadata[0]").is_empty());
        assert_eq!(eval_ok(".status.conditions[1].type"), vec![json!("Degraded")]);
    }

    #[test]
    fn wildcards() {
        assert_eq!(eval_ok(".status.conditions[*].type"), vec![json!("Ready"), json!("Degraded")]);
        assert_eq!(eval_ok(".status.conditions.*.status"), vec![json!("True"), json!("False")]);
        assert_eq!(eval_ok(".status.members[*].name"), vec![json!("ann"), json!("bob")]);
        assert_eq!(eval_ok(".metadata.labels.*").len(), 2);
        assert!(eval_ok(".spec.missing[*]").is_empty());
    }

    #[test]
    fn quoted_keys_select_one_key() {
        assert_eq!(eval_ok(".metadata.labels['app.kubernetes.io/name']"), vec![json!("idsync")]);
        assert_eq!(eval_ok(".metadata.labels[\"tier\"]"), vec![json!("web")]);
        assert_eq!(eval_ok(".metadata.annotations['a.b']"), vec![json!("dotted")]);
        assert_eq!(eval_ok("{.metadata['name']}"), vec![json!("team-a")]);
        assert_eq!(eval_ok(".metadata.labels['tier','missing']"), vec![json!("web")]);
    }

    #[test]
    fn escaped_dots_in_field_names() {
        assert_eq!(eval_ok(".metadata.labels.app\\.kubernetes\\.io/name"), vec![json!("idsync")]);
    }

    #[test]
    fn filters() {
        assert_eq!(eval_ok(".status.conditions[?(@.type==\"Ready\")].status"), vec![json!("True")]);
        assert_eq!(eval_ok(".status.conditions[?(@.type=='Ready')].reason"), vec![json!("Synced")]);
        assert_eq!(eval_ok(".status.conditions[?(@.type!=\"Ready\")].type"), vec![json!("Degraded")]);
        assert_eq!(eval_ok("{.status.conditions[?(@.type == 'Degraded')].status}"), vec![json!("False")]);
        assert!(eval_ok(".status.conditions[?(@.type==\"Missing\")].status").is_empty());
        // Items lacking the compared field are skipped, not errors.
        assert_eq!(eval_ok(".status.members[?(@.name=='bob')]"), vec![json!({"name": "bob"})]);
        assert_eq!(eval_ok(".status.members[?(@.name!='bob')].uid"), vec![json!(1)]);
    }

    #[test]
    fn filter_comparisons_and_existence() {
        assert_eq!(eval_ok(".status.conditions[?(@.observedGeneration>1)].type"), vec![json!("Ready")]);
        assert_eq!(eval_ok(".status.conditions[?(@.observedGeneration<=1)].type"), vec![json!("Degraded")]);
        assert_eq!(eval_ok(".status.conditions[?(@.observedGeneration>=1)].type").len(), 2);
        assert_eq!(eval_ok(".status.conditions[?(@.observedGeneration<2.5)].type").len(), 2);
        assert_eq!(eval_ok(".status.conditions[?(@.reason)].type"), vec![json!("Ready")]);
        assert_eq!(eval_ok(".status.members[?(@.uid)].uid"), vec![json!(1), json!(3)]);
        // Mismatched types never match, for == and != alike.
        assert!(eval_ok(".status.conditions[?(@.observedGeneration=='2')].type").is_empty());
        assert!(eval_ok(".status.conditions[?(@.observedGeneration!='2')].type").is_empty());
        assert!(
            eval(".spec.tags[?(@==true)]", &json!({"spec": {"tags": [true, false]}})).unwrap() == vec![json!(true)]
        );
        // Filtering something that is not a list selects nothing.
        assert!(eval_ok(".metadata[?(@.name)]").is_empty());
    }

    #[test]
    fn recursive_descent() {
        let names = eval_ok("..name");
        assert!(names.contains(&json!("team-a")));
        assert!(names.contains(&json!("ann")));
        assert!(names.contains(&json!("bob")));
        assert_eq!(names.len(), 3);
        assert_eq!(eval_ok(".status..type"), vec![json!("Ready"), json!("Degraded")]);
    }

    #[test]
    fn parse_errors() {
        let err = |p: &str| eval(p, &object()).unwrap_err().to_string();
        assert_eq!(err("{.a"), "unclosed action");
        assert_eq!(err(".a[0"), "unterminated array");
        assert_eq!(err(".a[?(@.x==1"), "unterminated filter");
        assert_eq!(err(".a[?(@.x==1)"), "unclosed array expect ]");
        assert_eq!(err(".a[x]"), "invalid array index x");
        assert_eq!(err(".a[1:2:0]"), "step must be > 0");
        assert_eq!(err("!a"), "unrecognized character in action: U+0021 '!'");
        assert_eq!(err(".a[?(@.x=1)]"), "unrecognized filter operator =");
        assert_eq!(err(".a[?(@.x==foo)]"), "unrecognized identifier foo");
        assert_eq!(err("{.a}{.b}"), "only a single JSONPath expression is supported");
        assert_eq!(err("....a"), "invalid multiple recursive descent");
    }

    #[test]
    fn compiled_path_is_reusable() {
        let path = JsonPath::parse(".metadata.name").unwrap();
        assert_eq!(path.find(&json!({"metadata": {"name": "a"}})), vec![&json!("a")]);
        assert_eq!(path.find(&json!({"metadata": {"name": "b"}})), vec![&json!("b")]);
        assert!(path.find(&json!([])).is_empty());
    }
}
