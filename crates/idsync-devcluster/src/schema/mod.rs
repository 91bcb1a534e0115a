//! Admission of custom resources against their CRD's `openAPIV3Schema`, as
//! the Kubernetes API server does it: prune unknown fields, apply defaults,
//! validate the structural schema, then evaluate the `x-kubernetes-validations`
//! CEL rules (with `oldSelf` on update).
//!
//! One implementation serves both the example tests and the devcluster API
//! server, so what `kubectl apply` refuses in `idsync dev` is exactly what
//! the tests refuse. CEL rules are evaluated by `kube-cel` (the `cel` crate
//! with the Kubernetes extension library); errors are worded as the API
//! server words them.

pub mod defaults;
pub mod field_error;
pub mod structural;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

pub use field_error::{ErrorType, FieldError};

/// How unknown fields are treated, as the `fieldValidation` query parameter
/// says (`kubectl` sends `Strict` by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop them and return a warning for each.
    #[default]
    Warn,
    /// Refuse the object.
    Strict,
}

impl FieldValidation {
    /// Parses the `fieldValidation` query parameter.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "Ignore" => Some(FieldValidation::Ignore),
            "Warn" => Some(FieldValidation::Warn),
            "Strict" => Some(FieldValidation::Strict),
            _ => None,
        }
    }
}

/// Why a CRD's schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("CustomResourceDefinition {crd} does not serve version {version}")]
    NoSuchVersion { crd: String, version: String },
    #[error("CustomResourceDefinition {crd} version {version} has no openAPIV3Schema")]
    NoSchema { crd: String, version: String },
    #[error("CustomResourceDefinition {crd}: an x-kubernetes-validations rule at {path} does not compile: {message}")]
    RuleDoesNotCompile { crd: String, path: String, message: String },
    #[error("CustomResourceDefinition {crd}: schema cannot be serialized: {source}")]
    Serialize { crd: String, source: serde_json::Error },
}

/// An object the schema refused, with every field error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct Invalid {
    /// `Kind.group`, as the API server qualifies it.
    pub qualified_kind: String,
    pub name: String,
    pub errors: Vec<FieldError>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        let joined = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        write!(f, "{} {:?} is invalid: {joined}", self.qualified_kind, self.name)
    }
}

/// An admitted object: pruned and defaulted, with any warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// The admission checks of one version of one CRD.
pub struct SchemaValidator {
    qualified_kind: String,
    schema: Value,
    rules: kube_cel::CompiledSchema,
}

impl std::fmt::Debug for SchemaValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaValidator").field("kind", &self.qualified_kind).finish_non_exhaustive()
    }
}

impl SchemaValidator {
    /// The validator of `version` of `crd`. Fails, as the API server refuses
    /// such a CRD, when a CEL rule does not compile.
    pub fn for_crd(crd: &CustomResourceDefinition, version: &str) -> Result<Self, SchemaError> {
        let crd_name = crd.metadata.name.clone().unwrap_or_default();
        let served = crd
            .spec
            .versions
            .iter()
            .find(|v| v.name == version)
            .ok_or_else(|| SchemaError::NoSuchVersion { crd: crd_name.clone(), version: version.to_string() })?;
        let schema = served
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .ok_or_else(|| SchemaError::NoSchema { crd: crd_name.clone(), version: version.to_string() })?;
        let schema =
            serde_json::to_value(schema).map_err(|source| SchemaError::Serialize { crd: crd_name.clone(), source })?;
        Self::from_schema(&format!("{}.{}", crd.spec.names.kind, crd.spec.group), schema, &crd_name)
    }

    /// The validator of a bare `openAPIV3Schema`.
    pub fn from_schema(qualified_kind: &str, schema: Value, crd_name: &str) -> Result<Self, SchemaError> {
        let rules = kube_cel::compile_schema(&schema);
        if let Some((path, message)) = first_compile_error(&rules, "") {
            return Err(SchemaError::RuleDoesNotCompile { crd: crd_name.to_string(), path, message });
        }
        Ok(SchemaValidator { qualified_kind: qualified_kind.to_string(), schema, rules })
    }

    /// The schema this validator checks against.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Admits `object` (a create when `old` is `None`, else an update of
    /// `old`): prunes, defaults, validates. Returns the object as it would be
    /// stored, or every field error.
    pub fn admit(&self, object: Value, old: Option<&Value>, mode: FieldValidation) -> Result<Admitted, Invalid> {
        let mut object = object;
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        let mut pruned = Vec::new();
        defaults::prune(&self.schema, &mut object, "", true, &mut pruned);
        match mode {
            FieldValidation::Strict => errors.extend(pruned.iter().map(|path| FieldError {
                field: path.clone(),
                error_type: ErrorType::Unknown,
                bad_value: None,
            })),
            FieldValidation::Warn => warnings.extend(pruned.iter().map(|p| format!("unknown field {p:?}"))),
            FieldValidation::Ignore => {}
        }

        defaults::apply_defaults(&self.schema, &mut object);
        validate_metadata(&object, &mut errors);
        structural::validate(&self.schema, &object, "", &mut errors);
        ratchet(&object, old, &mut errors);

        // CEL rules assume the types the schema promised, so (like the API
        // server) they only run on an object that passed the schema.
        if errors.is_empty()
            && let Err(failures) = kube_cel::validate_compiled(&self.rules, &object, old)
        {
            for failure in failures.iter() {
                let at = lookup(&object, &failure.field_path);
                errors.push(FieldError {
                    field: failure.field_path.clone(),
                    error_type: match failure.reason.as_deref() {
                        Some("FieldValueForbidden") => ErrorType::Forbidden { detail: failure.message.clone() },
                        Some("FieldValueRequired") => ErrorType::Required,
                        _ => ErrorType::Invalid { detail: failure.message.clone() },
                    },
                    bad_value: Some(Value::String(at.map(field_error::type_name).unwrap_or("object").to_string())),
                });
            }
        }

        // A rule may report a field below the node it is on, so a CEL
        // failure ratchets only when the whole spec is unchanged (a status
        // or metadata write), never when what the rule reads changed.
        if old.is_some_and(|old| old.get("spec") == object.get("spec")) {
            ratchet(&object, old, &mut errors);
        }
        if errors.is_empty() {
            Ok(Admitted { object, warnings })
        } else {
            Err(Invalid { qualified_kind: self.qualified_kind.clone(), name, errors })
        }
    }
}

/// The first CEL rule anywhere in the tree that failed to compile, with the
/// schema path of the node carrying it.
fn first_compile_error(node: &kube_cel::CompiledSchema, path: &str) -> Option<(String, String)> {
    if let Some(error) = node.compilation_errors().first() {
        return Some((if path.is_empty() { "<root>".to_string() } else { path.to_string() }, error.to_string()));
    }
    let mut children: Vec<(&String, &kube_cel::CompiledSchema)> = node.properties.iter().collect();
    children.sort_by(|a, b| a.0.cmp(b.0));
    for (name, child) in children {
        if let Some(found) = first_compile_error(child, &field_error::child(path, name)) {
            return Some(found);
        }
    }
    let nested = node
        .items
        .iter()
        .map(|c| (c.as_ref(), format!("{path}[*]")))
        .chain(node.additional_properties.iter().map(|c| (c.as_ref(), format!("{path}[*]"))))
        .chain(node.all_of.iter().chain(&node.one_of).chain(&node.any_of).map(|c| (c, path.to_string())));
    for (child, child_path) in nested {
        if let Some(found) = first_compile_error(child, &child_path) {
            return Some(found);
        }
    }
    None
}

/// Checks the object's name as the API server does for custom resources: a
/// lowercase RFC 1123 subdomain, present unless `generateName` is.
fn validate_metadata(object: &Value, errors: &mut Vec<FieldError>) {
    let name = object.pointer("/metadata/name");
    match name {
        Some(Value::String(name)) => {
            if let Some(problem) = dns_subdomain_problem(name) {
                errors.push(FieldError::invalid("metadata.name", &Value::String(name.clone()), problem));
            }
        }
        Some(other) => errors.push(FieldError::invalid("metadata.name", other, "metadata.name must be a string")),
        None if object.pointer("/metadata/generateName").is_some() => {}
        None => errors.push(FieldError {
            field: "metadata.name".to_string(),
            error_type: ErrorType::Invalid { detail: "name or generateName is required".to_string() },
            bad_value: Some(Value::String(String::new())),
        }),
    }
}

/// Why `name` is not a DNS-1123 subdomain, in the API server's words.
pub fn dns_subdomain_problem(name: &str) -> Option<String> {
    const MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    if name.len() > 253 {
        return Some("must be no more than 253 characters".to_string());
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.split('.').all(label_ok) { None } else { Some(MESSAGE.to_string()) }
}

/// Validation ratcheting (KEP-4008, on by default since Kubernetes 1.30):
/// an update may keep a value the current schema refuses when it does not
/// change it, so an object stored under an older, looser CRD can still get
/// its status written, labels edited and other fields fixed. Only errors at
/// a value present and equal in the old object are dropped.
fn ratchet(object: &Value, old: Option<&Value>, errors: &mut Vec<FieldError>) {
    let Some(old) = old else { return };
    errors.retain(|e| match (lookup(object, &e.field), lookup(old, &e.field)) {
        (Some(new), Some(before)) => new != before,
        _ => true,
    });
}

/// The value at a dotted field path such as `spec.target.connections[0]`.
fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = root;
    if path.is_empty() {
        return Some(current);
    }
    for part in path.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            current = current.get(name)?;
        }
        for idx in indexes.split('[').filter(|s| !s.is_empty()) {
            let idx = idx.trim_end_matches(']');
            current = match idx.parse::<usize>() {
                Ok(i) => current.get(i)?,
                Err(_) => current.get(idx)?,
            };
        }
    }
    Some(current)
}
