//! The API reference of idsync's kinds in Markdown, generated from the CRDs
//! (`idsync docs api > docs/reference/api.md`): every field with its type,
//! constraints, default and description, and the rules that span fields,
//! with the message a refused manifest gets. A test keeps the committed file
//! equal to this output, as it does the CRDs.

use std::fmt::Write;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};

/// The whole reference: one section per kind, spec then status.
pub fn markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::new();
    out.push_str("# API reference: idsync.dev/v1alpha1\n\n");
    out.push_str(
        "Generated from the CRDs by `idsync docs api`; do not edit by hand. \
         Every constraint below is checked by the API server when an object is applied: \
         a manifest that breaks one is refused with the message shown.\n\n",
    );
    for crd in crds {
        let names = &crd.spec.names;
        let _ = writeln!(out, "- [{}](#{})", names.kind, names.kind.to_lowercase());
    }
    out.push('\n');
    for crd in crds {
        kind(&mut out, crd);
    }
    out
}

fn kind(out: &mut String, crd: &CustomResourceDefinition) {
    let names = &crd.spec.names;
    let _ = writeln!(out, "## {}\n", names.kind);
    let Some(version) = crd.spec.versions.first() else { return };
    let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
    if let Some(description) = schema.and_then(|s| s.description.as_deref()) {
        let _ = writeln!(out, "{}\n", one_line(description));
    }
    let short = names.short_names.as_deref().unwrap_or_default();
    let _ = writeln!(
        out,
        "`kubectl get {}`{}; {}, in the `{}` category.\n",
        names.plural,
        if short.is_empty() { String::new() } else { format!(" (or {})", short.join(", ")) },
        if crd.spec.scope == "Namespaced" { "namespaced" } else { "cluster-scoped" },
        names.categories.as_deref().unwrap_or_default().join(", ")
    );
    let Some(properties) = schema.and_then(|s| s.properties.as_ref()) else { return };
    for part in ["spec", "status"] {
        let Some(section) = properties.get(part) else { continue };
        let _ = writeln!(out, "### {} `{part}`\n", names.kind);
        if let Some(description) = section.description.as_deref() {
            let _ = writeln!(out, "{}\n", one_line(description));
        }
        out.push_str("| Field | Type | Constraints | Description |\n|---|---|---|---|\n");
        let mut rules = Vec::new();
        fields(out, &mut rules, section, part);
        out.push('\n');
        if !rules.is_empty() {
            out.push_str("Rules:\n\n");
            for (path, rule, message) in rules {
                let _ = writeln!(out, "- `{path}`: {message} (`{rule}`)");
            }
            out.push('\n');
        }
    }
}

/// One row per field under `schema`, depth first, in the schema's order.
fn fields(out: &mut String, rules: &mut Vec<(String, String, String)>, schema: &JSONSchemaProps, path: &str) {
    for rule in schema.x_kubernetes_validations.iter().flatten() {
        let message = rule.message.clone().unwrap_or_else(|| "must hold".to_string());
        rules.push((path.to_string(), rule.rule.clone(), message));
    }
    let required = schema.required.as_deref().unwrap_or_default();
    for (name, child) in schema.properties.iter().flatten() {
        let child_path = format!("{path}.{name}");
        let mut constraints = constraints(child);
        if required.contains(name) {
            constraints.insert(0, "required".to_string());
        }
        let _ = writeln!(
            out,
            "| `{child_path}` | {} | {} | {} |",
            type_of(child),
            cell(&constraints.join("; ")),
            cell(&one_line(child.description.as_deref().unwrap_or_default()))
        );
        fields(out, rules, child, &child_path);
        if let Some(JSONSchemaPropsOrArray::Schema(items)) = &child.items {
            fields(out, rules, items, &format!("{child_path}[]"));
        }
        if let Some(
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(values),
        ) = &child.additional_properties
        {
            fields(out, rules, values, &format!("{child_path}.*"));
        }
    }
}

fn type_of(schema: &JSONSchemaProps) -> String {
    let base = schema.type_.clone().unwrap_or_else(|| {
        if schema.x_kubernetes_int_or_string == Some(true) { "int or string".to_string() } else { "any".to_string() }
    });
    match (base.as_str(), &schema.items) {
        ("array", Some(JSONSchemaPropsOrArray::Schema(items))) => format!("[]{}", type_of(items)),
        ("object", _) if schema.properties.is_none() && schema.additional_properties.is_some() => "map".to_string(),
        _ => match &schema.format {
            Some(format) => format!("{base} ({format})"),
            None => base,
        },
    }
}

fn constraints(schema: &JSONSchemaProps) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(values) = &schema.enum_ {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", v.0.as_str().unwrap_or_default())).collect();
        out.push(format!("one of {}", values.join(", ")));
    }
    if let Some(default) = &schema.default {
        out.push(format!("default `{}`", default.0));
    }
    match (schema.minimum, schema.maximum) {
        (Some(min), Some(max)) => out.push(format!("{} to {}", number(min), number(max))),
        (Some(min), None) => out.push(format!("at least {}", number(min))),
        (None, Some(max)) => out.push(format!("at most {}", number(max))),
        (None, None) => {}
    }
    match (schema.min_length, schema.max_length) {
        (Some(min), Some(max)) if min == max => out.push(format!("exactly {min} characters")),
        (Some(min), Some(max)) => out.push(format!("{min} to {max} characters")),
        (None, Some(max)) => out.push(format!("at most {max} characters")),
        (Some(min), None) => out.push(format!("at least {min} characters")),
        (None, None) => {}
    }
    match (schema.min_items, schema.max_items) {
        (Some(min), Some(max)) => out.push(format!("{min} to {max} items")),
        (None, Some(max)) => out.push(format!("at most {max} items")),
        (Some(min), None) => out.push(format!("at least {min} items")),
        (None, None) => {}
    }
    if let Some(pattern) = &schema.pattern {
        out.push(format!("matches `{pattern}`"));
    }
    out
}

fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e18 {
        format!("{}", n as i64)
    } else if n >= 9.2e18 {
        "2^63-1".to_string()
    } else {
        n.to_string()
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A table cell: pipes escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}
