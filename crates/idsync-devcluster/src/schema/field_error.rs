//! Field errors worded as the Kubernetes API server words them
//! (`k8s.io/apimachinery/pkg/util/validation/field`), so a person reading
//! `kubectl apply`'s output sees the same sentences a real cluster prints.

use serde_json::Value;

/// The kind of a field error, with the `reason` string of a `metav1.Status`
/// cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// A required field is missing.
    Required,
    /// A value outside an enum.
    NotSupported { supported: Vec<String> },
    /// Any other invalid value, with the detail sentence.
    Invalid { detail: String },
    /// A string or list too long.
    TooLong { max: u64 },
    /// A list with too many items.
    TooMany { max: u64, actual: u64 },
    /// An item repeated in a set-like list.
    Duplicate,
    /// A field the schema does not know (reported under strict field
    /// validation; pruned otherwise).
    Unknown,
    /// Forbidden by a rule.
    Forbidden { detail: String },
}

/// One invalid field.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// Dotted path from the object root, e.g. `spec.target.connections[0]`.
    pub field: String,
    pub error_type: ErrorType,
    /// The offending value, rendered as the API server renders it.
    pub bad_value: Option<Value>,
}

impl FieldError {
    pub fn required(field: &str) -> Self {
        FieldError { field: field.to_string(), error_type: ErrorType::Required, bad_value: None }
    }

    pub fn invalid(field: &str, value: &Value, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            error_type: ErrorType::Invalid { detail: detail.into() },
            bad_value: Some(value.clone()),
        }
    }

    /// The `reason` of a `metav1.StatusCause`.
    pub fn reason(&self) -> &'static str {
        match self.error_type {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::NotSupported { .. } => "FieldValueNotSupported",
            ErrorType::Invalid { .. } => "FieldValueInvalid",
            ErrorType::TooLong { .. } => "FieldValueTooLong",
            ErrorType::TooMany { .. } => "FieldValueTooMany",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::Unknown => "FieldValueInvalid",
            ErrorType::Forbidden { .. } => "FieldValueForbidden",
        }
    }

    /// The message without the field prefix (the `message` of a cause).
    pub fn body(&self) -> String {
        match &self.error_type {
            ErrorType::Required => "Required value".to_string(),
            ErrorType::NotSupported { supported } => {
                let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                format!(
                    "Unsupported value: {}: supported values: {}",
                    render_value(self.bad_value.as_ref()),
                    quoted.join(", ")
                )
            }
            ErrorType::Invalid { detail } => {
                format!("Invalid value: {}: {detail}", render_value(self.bad_value.as_ref()))
            }
            ErrorType::TooLong { max } => format!("Too long: may not be more than {max} bytes"),
            ErrorType::TooMany { max, actual } => {
                format!("Too many: {actual}: must have at most {max} items")
            }
            ErrorType::Duplicate => {
                format!("Duplicate value: {}", render_value(self.bad_value.as_ref()))
            }
            ErrorType::Unknown => "field not declared in schema".to_string(),
            ErrorType::Forbidden { detail } => format!("Forbidden: {detail}"),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.error_type == ErrorType::Unknown {
            return write!(f, "unknown field {:?}", self.field);
        }
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// Renders a bad value the way the API server does: strings quoted,
/// numbers and booleans plain, objects and lists by their type name.
pub fn render_value(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "null".to_string(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Object(_)) => "\"object\"".to_string(),
        Some(Value::Array(_)) => "\"array\"".to_string(),
    }
}

/// The JSON type name of a value, as schema errors name it.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Appends a property name to a field path.
pub fn child(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_string() } else { format!("{path}.{name}") }
}

/// Appends a list index to a field path.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Appends a map key to a field path, as the API server writes it.
pub fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}
