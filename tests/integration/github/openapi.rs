//! Checks the GitHub fixture's exchanges against GitHub's official REST
//! OpenAPI description (npm `@octokit/openapi`, `api.github.com.json`,
//! installed by `scripts/test`), both ways: each request must be an
//! operation GitHub describes, with parameters it declares (enums and
//! integers checked), and each answer a status the operation declares
//! with a body its schema accepts.
//!
//! Checked in-process rather than through a validating proxy (Prism): the
//! description is 13 MB and the exchanges are a few hundred, so this is
//! fast and needs no network. What GitHub documents for every operation
//! rather than in each (conditional requests' `304 Not Modified`, and
//! 401/403/429 with a `basic-error` body for bad credentials and rate
//! limits) is accepted for any operation. The schema subset GitHub's
//! description uses for these operations is covered: `$ref`, `type`
//! (with `nullable` and type lists), `enum`, `required`, `properties`,
//! `additionalProperties`, `items`, `allOf`, `anyOf`, and `oneOf` (read as
//! "at least one": GitHub's user variants overlap).
//! GraphQL (`POST /graphql`) is not in this description and is not checked.

use std::sync::OnceLock;

use serde_json::Value;

/// The description's version, as `scripts/test` installs it.
pub const OCTOKIT_OPENAPI_VERSION: &str = "23.0.2";

/// One request and its answer, as the fixture saw them.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub request_body: Option<Value>,
    pub status: u16,
    pub response_body: Option<Value>,
}

pub struct Description {
    spec: Value,
}

/// The description, loaded once per test binary.
pub fn description() -> &'static Description {
    static SPEC: OnceLock<Description> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = crate::common::tool(&format!("octokit-openapi-{OCTOKIT_OPENAPI_VERSION}/api.github.com.json"));
        let text = std::fs::read(&path).expect("read the OpenAPI description");
        Description { spec: serde_json::from_slice(&text).expect("the OpenAPI description is JSON") }
    })
}

impl Description {
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        let mut value = value;
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            let pointer = reference.trim_start_matches('#');
            value = self.spec.pointer(pointer).unwrap_or_else(|| panic!("unresolved $ref {reference}"));
        }
        value
    }

    /// The operation of `method` on `path`: (its template, the operation).
    fn operation(&self, method: &str, path: &str) -> Option<(&str, &Value)> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let paths = self.spec.get("paths")?.as_object()?;
        let mut best: Option<(usize, &str, &Value)> = None;
        for (template, item) in paths {
            let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let matches = parts.iter().zip(&segments).all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s);
            let Some(op) = item.get(method.to_ascii_lowercase()) else { continue };
            if matches {
                let literal = parts.iter().filter(|p| !p.starts_with('{')).count();
                if best.is_none_or(|(l, _, _)| literal > l) {
                    best = Some((literal, template.as_str(), op));
                }
            }
        }
        best.map(|(_, template, op)| (template, op))
    }

    /// Every way `exchange` departs from the description (empty: none).
    pub fn check(&self, exchange: &Exchange) -> Vec<String> {
        let at = format!("{} {} → {}", exchange.method, exchange.path, exchange.status);
        let Some((template, op)) = self.operation(&exchange.method, &exchange.path) else {
            return vec![format!("{at}: GitHub describes no such operation")];
        };
        let mut problems = Vec::new();
        let parameters: Vec<&Value> =
            op.get("parameters").and_then(Value::as_array).into_iter().flatten().map(|p| self.resolve(p)).collect();
        for (name, value) in &exchange.query {
            let declared = parameters.iter().find(|p| {
                p.get("in").and_then(Value::as_str) == Some("query")
                    && p.get("name").and_then(Value::as_str) == Some(name)
            });
            let Some(declared) = declared else {
                problems.push(format!("{at}: query parameter {name:?} is not declared by {template}"));
                continue;
            };
            if let Some(schema) = declared.get("schema") {
                let typed = match self.resolve(schema).get("type").and_then(Value::as_str) {
                    Some("integer") => value.parse::<i64>().map(Value::from).unwrap_or(Value::from(value.clone())),
                    _ => Value::from(value.clone()),
                };
                self.validate(schema, &typed, &format!("{at}: query {name}"), &mut problems);
            }
        }
        if let (Some(body), Some(schema)) =
            (&exchange.request_body, op.pointer("/requestBody/content/application~1json/schema"))
        {
            self.validate(schema, body, &format!("{at}: request body"), &mut problems);
        }
        let status = exchange.status.to_string();
        let response = match op.pointer(&format!("/responses/{status}")) {
            Some(response) => Some(self.resolve(response)),
            // Documented for every operation, not in each.
            None if exchange.status == 304 => None,
            None if matches!(exchange.status, 401 | 403 | 429) => {
                if let Some(body) = &exchange.response_body {
                    let error = serde_json::json!({"$ref": "#/components/schemas/basic-error"});
                    self.validate(&error, body, &format!("{at}: error body"), &mut problems);
                }
                None
            }
            None => {
                problems.push(format!("{at}: {template} declares no {status} answer"));
                None
            }
        };
        if let Some(response) = response {
            match (response.pointer("/content/application~1json/schema"), &exchange.response_body) {
                (Some(schema), Some(body)) => self.validate(schema, body, &format!("{at}: body"), &mut problems),
                (Some(_), None) => problems.push(format!("{at}: the answer has no JSON body")),
                (None, Some(_)) => problems.push(format!("{at}: the description has no body for this answer")),
                (None, None) => {}
            }
        }
        problems
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for part in all {
                self.validate(part, value, at, problems);
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let fits = options.iter().any(|option| {
                    let mut found = Vec::new();
                    self.validate(option, value, at, &mut found);
                    found.is_empty()
                });
                if !fits {
                    problems.push(format!("{at}: fits none of the {key} options"));
                }
            }
        }
        let nullable = schema.get("nullable").and_then(Value::as_bool) == Some(true);
        if value.is_null() && nullable {
            return;
        }
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| type_fits(t, value)) {
            problems.push(format!("{at}: {} is not of type {}", short(value), types.join("|")));
            return;
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
            && !(value.is_null() && nullable)
        {
            problems.push(format!("{at}: {} is not one of {}", short(value), Value::from(options.clone())));
        }
        if let Value::Object(object) = value {
            for name in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
            {
                if !object.contains_key(name) {
                    problems.push(format!("{at}: required property {name:?} missing"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (name, item) in object {
                let path = format!("{at}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => self.validate(property, item, &path, problems),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => problems.push(format!("{path}: not a declared property")),
                        Some(extra @ Value::Object(_)) => self.validate(extra, item, &path, problems),
                        _ => {}
                    },
                }
            }
        }
        if let (Value::Array(items), Some(schema)) = (value, schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.validate(schema, item, &format!("{at}[{i}]"), problems);
            }
        }
    }
}

fn type_fits(kind: &str, value: &Value) -> bool {
    match kind {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        _ => true,
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 { format!("{}…", text.chars().take(60).collect::<String>()) } else { text }
}
