//! Label and field selectors: the `labelSelector` and `fieldSelector` query parameters of list and watch.
//!
//! The label grammar and its error messages follow apimachinery's `labels.Parse` (Kubernetes 1.33 wording):
//! comma-separated requirements `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, and the
//! integer comparisons `k>n` / `k<n`; keys and values are validated as label keys and values.
//! The field grammar follows `fields.ParseSelector`: `a=b`, `a==b`, `a!=b`, comma-separated, with `\,`, `\=`
//! and `\\` escapes in values.
//!
//! Simplifications versus the API server:
//! - Field selectors are evaluated on the object's JSON by dotted path instead of per-kind field-label
//!   functions; a missing field compares as `""`, numbers and booleans compare by their JSON text.
//! - Which field labels a resource supports is the caller's list (see [`FieldSelector::check_supported`]);
//!   the server's per-kind label renaming (e.g. `spec.host` aliases) does not exist.
//! - Go's `%q` quoting in messages is approximated by JSON string quoting, which differs only for control
//!   and non-printable characters.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// A malformed selector or an unsupported field label, worded as the API server words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A label requirement could not be parsed or validated.
    #[error("unable to parse requirement: {0}")]
    Requirement(RequirementError),
    /// The label selector is malformed between requirements.
    #[error("{0}")]
    Syntax(String),
    /// A field selector term has no `=`, `==` or `!=`.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    FieldTerm { selector: String, term: String },
    /// A field selector value has a backslash not followed by `\`, `,` or `=`.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    InvalidEscape(String),
    /// A field selector value contains a bare `,` or `=`. Go prints the rune with `%v`, i.e. as a number.
    #[error("invalid field selector: unescaped character in value: {}", u32::from(*.0))]
    UnescapedRune(char),
    /// The resource does not support selecting on this field.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// Why one label requirement (`k in (a,b)`, `k=v`, …) is refused, in apimachinery's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    /// A token other than the grammar allows here.
    #[error("found '{found}', expected: {expected}")]
    Unexpected { found: String, expected: &'static str },
    /// No `(` after `in`/`notin`; apimachinery words this one without the comma.
    #[error("found '{found}' expected: '('")]
    NoOpenParenthesis { found: String },
    /// The key is not a qualified name.
    #[error("{0}")]
    InvalidKey(InvalidField),
    /// Values that are not label values (or not integers for `>`/`<`); apimachinery prints one alone and
    /// several as an aggregate.
    #[error("{}", aggregate(.0))]
    InvalidValues(Vec<InvalidField>),
}

/// `field.Invalid(path, value, detail)`: a value refused at a path, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: Invalid value: {}: {}", quote(.value), .details.join("; "))]
pub struct InvalidField {
    pub path: String,
    pub value: String,
    pub details: Vec<String>,
}

/// apimachinery's `utilerrors.NewAggregate(...).Error()`: one error alone, several in brackets.
fn aggregate(errors: &[InvalidField]) -> String {
    match errors {
        [one] => one.to_string(),
        _ => format!("[{}]", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn | Operator::NotEquals => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(actual), Some(wanted)) = (value, self.values.first()) else { return false };
                let (Ok(actual), Ok(wanted)) = (actual.parse::<i64>(), wanted.parse::<i64>()) else { return false };
                if self.operator == Operator::GreaterThan { actual > wanted } else { actual < wanted }
            }
        }
    }
}

/// A parsed label selector; all requirements must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter; the empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let tokens = lex(s);
        let mut parser = Parser { tokens, position: 0 };
        let mut requirements = parser.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    EndOfString,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn symbol_token(s: &str) -> Option<Token> {
    Some(match s {
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        "!" => Token::DoesNotExist,
        "==" => Token::DoubleEquals,
        "=" => Token::Equals,
        ">" => Token::GreaterThan,
        "<" => Token::LessThan,
        "!=" => Token::NotEquals,
        "(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits the selector into (token, literal) pairs, always ending with `EndOfString`.
fn lex(s: &str) -> Vec<(Token, String)> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < bytes.len() && is_whitespace(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            out.push((Token::EndOfString, String::new()));
            return out;
        }
        let start = pos;
        if is_special(bytes[pos]) {
            // Longest run of special characters that still forms a known operator, as the Go lexer does;
            // every single special character is itself a token, so this never fails.
            let mut best = (Token::Comma, start);
            while pos < bytes.len() && is_special(bytes[pos]) {
                match symbol_token(&s[start..=pos]) {
                    Some(token) => best = (token, pos + 1),
                    None if best.1 > start => break,
                    None => {}
                }
                pos += 1;
            }
            pos = best.1.max(start + 1);
            out.push((best.0, s[start..pos].to_string()));
        } else {
            while pos < bytes.len() && !is_special(bytes[pos]) && !is_whitespace(bytes[pos]) {
                pos += 1;
            }
            let literal = s[start..pos].to_string();
            let token = match literal.as_str() {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Identifier,
            };
            out.push((token, literal));
        }
    }
}

/// Whether `in`/`notin` are operators (after a key) or ordinary identifiers (anywhere a value may appear).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser {
    tokens: Vec<(Token, String)>,
    position: usize,
}

impl Parser {
    fn peek(&self, context: Context) -> (Token, String) {
        let (token, literal) = self.tokens.get(self.position).cloned().unwrap_or((Token::EndOfString, String::new()));
        match token {
            Token::In | Token::NotIn if context == Context::Values => (Token::Identifier, literal),
            _ => (token, literal),
        }
    }

    fn next(&mut self, context: Context) -> (Token, String) {
        let item = self.peek(context);
        self.position += 1;
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let (token, literal) = self.peek(Context::Values);
            match token {
                Token::Identifier | Token::DoesNotExist => {
                    requirements.push(self.parse_requirement().map_err(SelectorError::Requirement)?);
                    let (token, literal) = self.next(Context::Values);
                    match token {
                        Token::EndOfString => return Ok(requirements),
                        Token::Comma => {
                            let (next, next_literal) = self.peek(Context::Values);
                            if next != Token::Identifier && next != Token::DoesNotExist {
                                return Err(SelectorError::Syntax(format!(
                                    "found '{next_literal}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError::Syntax(format!(
                                "found '{literal}', expected: ',' or 'end of string'"
                            )));
                        }
                    }
                }
                Token::EndOfString => return Ok(requirements),
                _ => {
                    return Err(SelectorError::Syntax(format!(
                        "found '{literal}', expected: !, identifier, or 'end of string'"
                    )));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, RequirementError> {
        let (key, inferred) = self.parse_key_and_infer_operator()?;
        if let Some(operator) = inferred {
            return Ok(Requirement { key, operator, values: Vec::new() });
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        validate_requirement(&key, operator, &values)?;
        Ok(Requirement { key, operator, values })
    }

    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), RequirementError> {
        let mut operator = None;
        let (mut token, mut literal) = self.next(Context::Values);
        if token == Token::DoesNotExist {
            operator = Some(Operator::DoesNotExist);
            (token, literal) = self.next(Context::Values);
        }
        if token != Token::Identifier {
            return Err(RequirementError::Unexpected { found: literal, expected: "identifier" });
        }
        let errors = label_key_errors(&literal);
        if !errors.is_empty() {
            return Err(RequirementError::InvalidKey(invalid_value("<nil>", &literal, errors)));
        }
        let (next, _) = self.peek(Context::Values);
        if operator.is_none() && (next == Token::EndOfString || next == Token::Comma) {
            operator = Some(Operator::Exists);
        }
        Ok((literal, operator))
    }

    fn parse_operator(&mut self) -> Result<Operator, RequirementError> {
        let (token, literal) = self.next(Context::KeyAndOperator);
        Ok(match token {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            _ => {
                return Err(RequirementError::Unexpected { found: literal, expected: "in, notin, =, ==, !=, gt, lt" });
            }
        })
    }

    fn parse_values(&mut self) -> Result<Vec<String>, RequirementError> {
        let (token, literal) = self.next(Context::Values);
        if token != Token::OpenPar {
            return Err(RequirementError::NoOpenParenthesis { found: literal });
        }
        let (token, literal) = self.peek(Context::Values);
        match token {
            Token::Identifier | Token::Comma => {
                let values = self.parse_identifiers_list()?;
                // parse_identifiers_list only returns once a ')' is next, so this consumes it.
                if self.next(Context::Values).0 != Token::ClosedPar {
                    return Err(RequirementError::Unexpected { found: literal, expected: "')'" });
                }
                Ok(values)
            }
            Token::ClosedPar => {
                self.next(Context::Values);
                Ok(vec![String::new()])
            }
            _ => Err(RequirementError::Unexpected { found: literal, expected: "',', ')' or identifier" }),
        }
    }

    /// A comma-separated list in which empty entries stand for the empty value, e.g. `(a,,b)` or `(,)`.
    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, RequirementError> {
        let mut values = BTreeSet::new();
        loop {
            let (token, literal) = self.next(Context::Values);
            match token {
                Token::Identifier => {
                    values.insert(literal);
                    let (next, next_literal) = self.peek(Context::Values);
                    match next {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(values.into_iter().collect()),
                        _ => {
                            return Err(RequirementError::Unexpected { found: next_literal, expected: "',' or ')'" });
                        }
                    }
                }
                Token::Comma => {
                    if values.is_empty() {
                        values.insert(String::new());
                    }
                    let (next, _) = self.peek(Context::Values);
                    if next == Token::ClosedPar {
                        values.insert(String::new());
                        return Ok(values.into_iter().collect());
                    }
                    if next == Token::Comma {
                        values.insert(String::new());
                    }
                }
                _ => return Err(RequirementError::Unexpected { found: literal, expected: "',', or identifier" }),
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, RequirementError> {
        let (token, _) = self.peek(Context::Values);
        if token == Token::EndOfString || token == Token::Comma {
            return Ok(vec![String::new()]);
        }
        let (token, literal) = self.next(Context::Values);
        if token == Token::Identifier {
            return Ok(vec![literal]);
        }
        Err(RequirementError::Unexpected { found: literal, expected: "identifier" })
    }
}

/// The checks of apimachinery's `NewRequirement` that parsing alone cannot guarantee.
fn validate_requirement(key: &str, operator: Operator, values: &[String]) -> Result<(), RequirementError> {
    let mut errors = Vec::new();
    if matches!(operator, Operator::GreaterThan | Operator::LessThan) {
        for (i, value) in values.iter().enumerate() {
            if value.parse::<i64>().is_err() {
                errors.push(invalid_value(
                    &format!("values[{i}]"),
                    value,
                    vec!["for 'Gt', 'Lt' operators, the value must be an integer".to_string()],
                ));
            }
        }
    }
    for (i, value) in values.iter().enumerate() {
        let problems = label_value_errors(value);
        if !problems.is_empty() {
            errors.push(invalid_value(&format!("values[{i}][{key}]"), value, problems));
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    errors.dedup();
    Err(RequirementError::InvalidValues(errors))
}

fn invalid_value(path: &str, value: &str, details: Vec<String>) -> InvalidField {
    InvalidField { path: path.to_string(), value: value.to_string(), details }
}

fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";

/// apimachinery's `RegexError`, including its doubled space before " or ".
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{example}', "));
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else { return false };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let bytes = label.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else { return false };
        let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        ok(first) && ok(last) && bytes.iter().all(|b| ok(b) || *b == b'-')
    })
}

/// apimachinery's `IsQualifiedName`, which label keys must satisfy.
fn label_key_errors(key: &str) -> Vec<String> {
    let examples = ["MyName", "my.name", "123-abc"];
    let parts: Vec<&str> = key.split('/').collect();
    let mut errors = Vec::new();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errors.push("prefix part must be no more than 253 characters".to_string());
                }
                if !is_dns1123_subdomain(prefix) {
                    errors.push(format!(
                        "prefix part {}",
                        regex_error(DNS1123_SUBDOMAIN_MSG, DNS1123_SUBDOMAIN_FMT, &["example.com"])
                    ));
                }
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &examples)
            )];
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errors.push("name part must be no more than 63 characters".to_string());
    }
    if !is_qualified_name_part(name) {
        errors.push(format!("name part {}", regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &examples)));
    }
    errors
}

/// apimachinery's `IsValidLabelValue`.
fn label_value_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push("must be no more than 63 characters".to_string());
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errors.push(regex_error(
            LABEL_VALUE_MSG,
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errors
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    value: String,
    negated: bool,
}

/// A parsed field selector; all terms must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter; the empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(s);
        // Go sorts the raw terms, which decides which bad term an error names first.
        parts.sort();
        let mut terms = Vec::new();
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let Some((field, op, raw)) = split_term(part) else {
                return Err(SelectorError::FieldTerm { selector: s.to_string(), term: part.to_string() });
            };
            let value = unescape_value(raw)?;
            // Go's Transform turns a term with empty field and value (the selector "=") into "everything".
            if field.is_empty() && value.is_empty() {
                continue;
            }
            terms.push(FieldTerm { field: field.to_string(), value, negated: op == "!=" });
        }
        Ok(FieldSelector { terms })
    }

    /// Rejects field labels not in `allowed` with the API server's error (`field label not supported: X`).
    pub fn check_supported(&self, allowed: &[&str]) -> Result<(), SelectorError> {
        match self.terms.iter().find(|t| !allowed.contains(&t.field.as_str())) {
            Some(term) => Err(SelectorError::UnsupportedField(term.field.clone())),
            None => Ok(()),
        }
    }

    /// Evaluates on a JSON object: the dotted path (e.g. `metadata.name`, `involvedObject.uid`,
    /// `regarding.name`) is looked up; a missing field compares as "".
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|term| (field_text(object, &term.field) == term.value) != term.negated)
    }

    pub fn fields(&self) -> Vec<&str> {
        self.terms.iter().map(|t| t.field.as_str()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// Splits on commas that are not backslash-escaped, keeping the escapes for `unescape_value`.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits at the first operator; the field side has no escaping, so the first `!=`, `==` or `=` wins.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        for op in ["!=", "==", "="] {
            if term[i..].starts_with(op) {
                return Some((&term[..i], op, &term[i + op.len()..]));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(SelectorError::InvalidEscape(format!("\\{c}")));
            }
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            ',' | '=' => return Err(SelectorError::UnescapedRune(c)),
            _ => out.push(c),
        }
    }
    if escaped {
        return Err(SelectorError::InvalidEscape("\\".to_string()));
    }
    Ok(out)
}

fn field_text(object: &Value, path: &str) -> String {
    let mut current = object;
    for part in path.split('.') {
        match current.get(part) {
            Some(next) => current = next,
            None => return String::new(),
        }
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        LabelSelector::parse(selector).unwrap().matches(&labels(pairs))
    }

    fn label_error(selector: &str) -> String {
        LabelSelector::parse(selector).unwrap_err().to_string()
    }

    #[test]
    fn empty_label_selector_selects_everything() {
        let selector = LabelSelector::parse("").unwrap();
        assert!(selector.is_empty());
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("a", "b")])));
        assert!(LabelSelector::parse("   ").unwrap().is_empty());
        assert!(!LabelSelector::parse("a").unwrap().is_empty());
    }

    #[test]
    fn equality_operators() {
        for selector in ["app=web", "app==web", " app = web "] {
            assert!(selects(selector, &[("app", "web")]), "{selector}");
            assert!(!selects(selector, &[("app", "db")]), "{selector}");
            assert!(!selects(selector, &[]), "{selector}");
        }
    }

    #[test]
    fn not_equals_matches_objects_lacking_the_key() {
        assert!(selects("app!=web", &[("app", "db")]));
        assert!(selects("app!=web", &[]));
        assert!(!selects("app!=web", &[("app", "web")]));
    }

    #[test]
    fn set_operators() {
        assert!(selects("env in (prod, staging)", &[("env", "staging")]));
        assert!(!selects("env in (prod,staging)", &[("env", "dev")]));
        assert!(!selects("env in (prod)", &[]));
        assert!(selects("env notin (prod,staging)", &[("env", "dev")]));
        assert!(selects("env notin (prod)", &[]));
        assert!(!selects("env notin (prod,staging)", &[("env", "prod")]));
    }

    #[test]
    fn empty_values_in_sets_and_exact_matches() {
        assert!(selects("env in (a,,b)", &[("env", "")]));
        assert!(selects("env in ()", &[("env", "")]));
        assert!(selects("env in (,)", &[("env", "")]));
        assert!(selects("env=", &[("env", "")]));
        assert!(!selects("env=", &[("env", "x")]));
        assert!(selects("env=,b", &[("env", ""), ("b", "1")]));
    }

    #[test]
    fn exists_and_does_not_exist() {
        assert!(selects("app", &[("app", "")]));
        assert!(!selects("app", &[("other", "x")]));
        assert!(selects("!app", &[("other", "x")]));
        assert!(!selects("!app", &[("app", "x")]));
        assert!(selects(" ! app ", &[]));
    }

    #[test]
    fn integer_comparisons() {
        assert!(selects("replicas>2", &[("replicas", "3")]));
        assert!(!selects("replicas>2", &[("replicas", "2")]));
        assert!(selects("replicas<2", &[("replicas", "1")]));
        assert!(!selects("replicas<2", &[("replicas", "x")]));
        assert!(!selects("replicas<2", &[]));
        assert_eq!(
            label_error("replicas>x"),
            "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
    }

    #[test]
    fn requirements_are_anded() {
        let s = "app.kubernetes.io/name=idsync,tier in (web),!legacy";
        assert!(selects(s, &[("app.kubernetes.io/name", "idsync"), ("tier", "web")]));
        assert!(!selects(s, &[("app.kubernetes.io/name", "idsync"), ("tier", "web"), ("legacy", "1")]));
        assert!(!selects(s, &[("app.kubernetes.io/name", "other"), ("tier", "web")]));
    }

    #[test]
    fn keywords_are_values_after_an_operator() {
        assert!(selects("x=in", &[("x", "in")]));
        assert!(selects("x in (in,notin)", &[("x", "notin")]));
        assert!(selects("in=a", &[("in", "a")]));
    }

    #[test]
    fn malformed_label_selectors() {
        assert_eq!(label_error("app in prod"), "unable to parse requirement: found 'prod' expected: '('");
        assert_eq!(
            label_error("app ("),
            "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(label_error("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(label_error("a=b c"), "found 'c', expected: ',' or 'end of string'");
        assert_eq!(label_error(",a"), "found ',', expected: !, identifier, or 'end of string'");
        assert_eq!(label_error("!a=b"), "found '=', expected: ',' or 'end of string'");
        assert_eq!(label_error("!,"), "unable to parse requirement: found ',', expected: identifier");
        assert_eq!(label_error("a in (b c)"), "unable to parse requirement: found 'c', expected: ',' or ')'");
        assert_eq!(label_error("a in (="), "unable to parse requirement: found '=', expected: ',', ')' or identifier");
        assert_eq!(label_error("a==="), "unable to parse requirement: found '=', expected: identifier");
    }

    #[test]
    fn invalid_label_keys_and_values() {
        let name_part = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
        assert_eq!(
            label_error("-bad=x"),
            format!("unable to parse requirement: <nil>: Invalid value: \"-bad\": {name_part}")
        );
        assert_eq!(
            label_error("Example.com/app=x"),
            "unable to parse requirement: <nil>: Invalid value: \"Example.com/app\": prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        assert_eq!(
            label_error("a/"),
            format!(
                "unable to parse requirement: <nil>: Invalid value: \"a/\": name part must be non-empty; {name_part}"
            )
        );
        assert!(label_error("a/b/c").contains("a qualified name must consist of"));
        assert!(label_error(&"k".repeat(64)).contains("name part must be no more than 63 characters"));
        assert_eq!(
            label_error("app=-x"),
            "unable to parse requirement: values[0][app]: Invalid value: \"-x\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );
        assert!(label_error(&format!("app={}", "v".repeat(64))).contains("must be no more than 63 characters"));
        // Two bad values are reported together, in sorted order.
        let both = label_error("app in (-z,-a)");
        assert!(both.starts_with("unable to parse requirement: [values[0][app]: Invalid value: \"-a\""), "{both}");
        assert!(both.contains(", values[1][app]: Invalid value: \"-z\""), "{both}");
    }

    #[test]
    fn prefixed_keys_parse() {
        assert!(selects("idsync.dev/owned", &[("idsync.dev/owned", "true")]));
        assert!(selects("app.kubernetes.io/part-of in (idsync)", &[("app.kubernetes.io/part-of", "idsync")]));
    }

    fn object() -> Value {
        json!({
            "metadata": {"name": "web-1", "namespace": "dev"},
            "involvedObject": {"uid": "u-1", "kind": "Pod"},
            "spec": {"replicas": 3, "paused": false},
            "type": "Warning"
        })
    }

    #[test]
    fn field_selector_operators() {
        let obj = object();
        assert!(FieldSelector::parse("metadata.name=web-1").unwrap().matches(&obj));
        assert!(FieldSelector::parse("metadata.name==web-1").unwrap().matches(&obj));
        assert!(!FieldSelector::parse("metadata.name=web-2").unwrap().matches(&obj));
        assert!(FieldSelector::parse("metadata.name!=web-2").unwrap().matches(&obj));
        assert!(!FieldSelector::parse("metadata.name!=web-1").unwrap().matches(&obj));
        assert!(FieldSelector::parse("involvedObject.uid=u-1,type=Warning").unwrap().matches(&obj));
        assert!(!FieldSelector::parse("involvedObject.uid=u-1,type=Normal").unwrap().matches(&obj));
        assert!(FieldSelector::parse("spec.replicas=3,spec.paused=false").unwrap().matches(&obj));
    }

    #[test]
    fn missing_fields_compare_as_empty() {
        let obj = object();
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&obj));
        assert!(!FieldSelector::parse("spec.nodeName=x").unwrap().matches(&obj));
        assert!(FieldSelector::parse("spec.nodeName!=x").unwrap().matches(&obj));
        assert!(FieldSelector::parse("metadata.name.deeper=").unwrap().matches(&obj));
    }

    #[test]
    fn empty_field_selector_selects_everything() {
        let selector = FieldSelector::parse("").unwrap();
        assert!(selector.is_empty());
        assert!(selector.matches(&object()));
        assert!(FieldSelector::parse(",").unwrap().is_empty());
    }

    #[test]
    fn field_selector_escapes() {
        let obj = json!({"metadata": {"name": "a,b=c\\d"}});
        let selector = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").unwrap();
        assert!(selector.matches(&obj));
        assert_eq!(selector.fields(), vec!["metadata.name"]);
        // An escaped comma does not split terms.
        assert_eq!(FieldSelector::parse(r"a=x\,y,b=z").unwrap().fields(), vec!["a", "b"]);
    }

    #[test]
    fn malformed_field_selectors() {
        assert_eq!(
            FieldSelector::parse("metadata.name").unwrap_err().to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert_eq!(
            FieldSelector::parse(r"a=b\x").unwrap_err().to_string(),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            FieldSelector::parse("a=b\\").unwrap_err().to_string(),
            r"invalid field selector: invalid escape sequence: \"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c").unwrap_err().to_string(),
            "invalid field selector: unescaped character in value: 61"
        );
    }

    #[test]
    fn supported_field_labels() {
        let selector = FieldSelector::parse("metadata.namespace=dev,spec.nodeName=n1").unwrap();
        assert_eq!(selector.fields(), vec!["metadata.namespace", "spec.nodeName"]);
        assert!(selector.check_supported(&["metadata.name", "metadata.namespace", "spec.nodeName"]).is_ok());
        assert_eq!(
            selector.check_supported(&["metadata.name", "metadata.namespace"]).unwrap_err().to_string(),
            "field label not supported: spec.nodeName"
        );
        assert!(FieldSelector::parse("").unwrap().check_supported(&[]).is_ok());
    }

    #[test]
    fn operator_split_uses_first_operator() {
        let selector = FieldSelector::parse("a!=b").unwrap();
        assert_eq!(selector.fields(), vec!["a"]);
        assert!(selector.matches(&json!({"a": "c"})));
        assert!(!selector.matches(&json!({"a": "b"})));
    }

    #[test]
    fn a_bad_requirement_says_which_part_is_wrong() {
        let requirement = |selector: &str| match LabelSelector::parse(selector) {
            Err(SelectorError::Requirement(error)) => error,
            other => panic!("{selector}: {other:?}"),
        };
        assert_eq!(requirement("a in b"), RequirementError::NoOpenParenthesis { found: "b".to_string() });
        assert_eq!(
            requirement("a (b)"),
            RequirementError::Unexpected { found: "(".to_string(), expected: "in, notin, =, ==, !=, gt, lt" }
        );
        let RequirementError::InvalidKey(key) = requirement("-a=b") else { panic!("not a key error") };
        assert_eq!((key.path.as_str(), key.value.as_str()), ("<nil>", "-a"));
        let RequirementError::InvalidValues(values) = requirement("a>x") else { panic!("not a value error") };
        assert_eq!(values.iter().map(|v| v.path.as_str()).collect::<Vec<_>>(), ["values[0]"]);
        assert_eq!(
            values[0].to_string(),
            "values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
    }
}
