//! `meta.k8s.io/v1` `Table` responses, which `kubectl get` asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
//!
//! Columns and cells follow apiextensions-apiserver's table convertor for custom resources: a `Name` column,
//! then one column per `additionalPrinterColumns` entry, each cell the first result of the column's JSONPath,
//! converted by the column type. Rows carry the object as the `includeObject` parameter asks.
//!
//! Simplifications versus the API server:
//! - Built-in kinds get the custom-resource default columns (`Name`, `Age`) instead of their own printers
//!   (the real server shows e.g. `Ready`/`Status`/`Restarts` for pods, `Data` for config maps).
//! - A column whose JSONPath does not parse yields `null` cells; the real server falls back to default
//!   columns for the whole CRD (CRD validation normally rejects such paths first).
//! - Watch events after the first omit `columnDefinitions` in the real server; callers strip them.

use serde_json::{Map, Value, json};

use super::jsonpath::JsonPath;

/// ObjectMeta's swagger description of `name`, which the API server uses for the `Name` column.
pub const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// ObjectMeta's swagger description of `creationTimestamp`, which the API server uses for the default `Age`.
pub const CREATION_TIMESTAMP_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// One `additionalPrinterColumns` entry of a CRD version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Column {
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    pub json_path: String,
    pub description: String,
    pub priority: i32,
    pub format: String,
}

/// The `includeObject` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

/// A request the API server answers with 400 Bad Request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error(
        "Unable to convert to Table as requested: includeObject: Invalid value: {}: must be 'Metadata', 'Object', 'None', or empty",
        Value::String(.0.clone())
    )]
    InvalidIncludeObject(String),
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter; absent or empty means `Metadata`.
    pub fn parse(s: Option<&str>) -> Result<Self, TableError> {
        match s.unwrap_or_default() {
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "None" => Ok(IncludeObject::None),
            "Object" => Ok(IncludeObject::Object),
            other => Err(TableError::InvalidIncludeObject(other.to_string())),
        }
    }
}

/// The column the API server adds to a CRD version that declares no printer columns.
fn age_column() -> Column {
    Column {
        name: "Age".to_string(),
        type_: "date".to_string(),
        json_path: ".metadata.creationTimestamp".to_string(),
        description: CREATION_TIMESTAMP_DESCRIPTION.to_string(),
        priority: 0,
        format: String::new(),
    }
}

/// The Table of `objects` of `rt`: a built-in kind's own columns, or a
/// CRD's printer columns.
pub fn for_resource(
    rt: &super::resources::ResourceType,
    objects: &[Value],
    include: IncludeObject,
    list_metadata: Value,
    now: jiff::Timestamp,
) -> Value {
    match super::builtin_tables::table(rt, objects, include, &list_metadata, now) {
        Some(table) => table,
        None => build(&rt.columns, objects, include, list_metadata, now),
    }
}

/// Builds a `meta.k8s.io/v1` `Table` JSON object for `objects` (each a full Kubernetes object as JSON).
/// `columns` are a CRD version's additionalPrinterColumns; when `columns` is empty (built-in kinds, or a CRD
/// without columns), use the API server's default: Name + "Age" (.metadata.creationTimestamp, date).
/// `list_metadata` is copied to the table's `metadata` (resourceVersion, continue).
pub fn build(
    columns: &[Column],
    objects: &[Value],
    include: IncludeObject,
    list_metadata: Value,
    now: jiff::Timestamp,
) -> Value {
    let defaults;
    let columns = if columns.is_empty() {
        defaults = [age_column()];
        &defaults[..]
    } else {
        columns
    };

    let mut definitions = vec![json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": NAME_DESCRIPTION,
        "priority": 0,
    })];
    definitions.extend(columns.iter().map(|column| {
        let description = if column.description.is_empty() {
            format!("Custom resource definition column (in JSONPath format): {}", column.json_path)
        } else {
            column.description.clone()
        };
        json!({
            "name": column.name,
            "type": column.type_,
            "format": column.format,
            "description": description,
            "priority": column.priority,
        })
    }));

    let paths: Vec<Option<JsonPath>> = columns.iter().map(|c| JsonPath::parse(&c.json_path).ok()).collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            let mut cells = vec![Value::String(name.to_string())];
            for (column, path) in columns.iter().zip(&paths) {
                // Only the first result counts: printer columns are meant to be single-valued.
                let first = path.as_ref().and_then(|p| p.find(object).into_iter().next());
                cells.push(first.map_or(Value::Null, |value| cell(&column.type_, value, now)));
            }
            let mut row = Map::new();
            row.insert("cells".to_string(), Value::Array(cells));
            // The API server serialises an omitted row object as `"object": null` (an empty RawExtension).
            row.insert("object".to_string(), row_object(object, include));
            Value::Object(row)
        })
        .collect();

    let metadata = if list_metadata.is_object() { list_metadata } else { json!({}) };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

pub(crate) fn row_object(object: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => object.clone(),
        IncludeObject::Metadata => super::representation::partial_object(object),
    }
}

/// One cell, as the CRD table convertor converts a JSONPath result for the column's type.
fn cell(type_: &str, value: &Value, now: jiff::Timestamp) -> Value {
    match (type_, value) {
        // The convertor prints string columns with the JSONPath printer, which renders JSON null as
        // Go template's "<no value>" and containers as compact JSON.
        ("string", Value::Null) => Value::String("<no value>".to_string()),
        ("string", Value::String(_)) => value.clone(),
        ("string", Value::Number(n)) => Value::String(go_number_text(n)),
        ("string", Value::Bool(b)) => Value::String(b.to_string()),
        ("string", _) => Value::String(go_json(value)),
        ("integer", Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::from(i),
            // Go truncates float64 (and out-of-int64-range numbers, which it decodes as float64) to int64.
            None => n.as_f64().map_or(Value::Null, |f| Value::from(f.trunc() as i64)),
        },
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, go_float_cell),
        ("boolean", Value::Bool(b)) => Value::Bool(*b),
        ("date", Value::String(s)) => Value::String(date_cell(s, now)),
        _ => Value::Null,
    }
}

/// Go's JSON encoder writes integral float64 values without a fraction (`3`, not `3.0`).
fn go_float_cell(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// An RFC 3339 time as `kubectl get` shows an age (`<unknown>` when unset).
pub(crate) fn age_text(s: &str, now: jiff::Timestamp) -> String {
    date_cell(s, now)
}

fn date_cell(s: &str, now: jiff::Timestamp) -> String {
    // metav1.Time's query-parameter parsing: empty and "null" are the zero time, shown as "<unknown>".
    if s.is_empty() || s == "null" {
        return "<unknown>".to_string();
    }
    // Go's RFC 3339 layout insists on the `T`; jiff would also take a space.
    if s.as_bytes().get(10) != Some(&b'T') {
        return "<invalid>".to_string();
    }
    let Ok(timestamp) = s.parse::<jiff::Timestamp>() else { return "<invalid>".to_string() };
    if timestamp.as_second() == GO_ZERO_TIME_UNIX {
        return "<unknown>".to_string();
    }
    crate::age::human_duration(now.duration_since(timestamp))
}

/// 0001-01-01T00:00:00Z, Go's zero `time.Time`.
const GO_ZERO_TIME_UNIX: i64 = -62_135_596_800;

/// Go's `fmt.Sprint` of a number decoded the way the API server decodes unstructured JSON: int64 when it
/// fits, float64 otherwise.
fn go_number_text(n: &serde_json::Number) -> String {
    match n.as_i64() {
        Some(i) => i.to_string(),
        None => n.as_f64().map_or_else(|| n.to_string(), go_float_v),
    }
}

/// Splits Rust's shortest `{:e}` rendering into mantissa and decimal exponent.
fn shortest_scientific(f: f64) -> (String, i32) {
    let text = format!("{f:e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) => (mantissa.to_string(), exponent.parse().unwrap_or(0)),
        None => (text, 0),
    }
}

/// Go's `%v` for float64, i.e. `%g` with the shortest digits: exponent form when the decimal exponent is
/// below -4 or at least 6 (`1e+06`, `1.2345675e+06`), plain decimal otherwise.
fn go_float_v(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".to_string()
        } else if f > 0.0 {
            "+Inf".to_string()
        } else {
            "-Inf".to_string()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0".to_string() } else { "0".to_string() };
    }
    let (mantissa, exponent) = shortest_scientific(f);
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    format!("{f}")
}

/// Go's `encoding/json` rendering of a float64: plain decimal for 1e-6 <= |f| < 1e21, else `1e+21` / `1e-7`.
fn go_json_float(f: f64) -> String {
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        return format!("{f}");
    }
    let (mantissa, exponent) = shortest_scientific(f);
    let sign = if exponent < 0 { '-' } else { '+' };
    if exponent < 0 {
        format!("{mantissa}e{sign}{}", exponent.abs())
    } else {
        format!("{mantissa}e{sign}{exponent:02}")
    }
}

/// Go's `json.Marshal` of decoded unstructured JSON: sorted keys, HTML-safe escaping, Go number formatting.
fn go_json(value: &Value) -> String {
    let mut out = String::new();
    write_go_json(value, &mut out);
    out
}

fn write_go_json(value: &Value, out: &mut String) {
    match value {
        Value::Null | Value::Bool(_) => out.push_str(&value.to_string()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => out.push_str(&i.to_string()),
            (None, Some(f)) => out.push_str(&go_json_float(f)),
            (None, None) => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_go_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_json_string(key, out);
                out.push(':');
                if let Some(item) = map.get(key) {
                    write_go_json(item, out);
                }
            }
            out.push('}');
        }
    }
}

fn write_go_json_string(s: &str, out: &mut String) {
    let quoted = Value::String(s.to_string()).to_string();
    for c in quoted.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn now() -> Timestamp {
        "2024-05-10T12:00:00Z".parse().unwrap()
    }

    fn column(name: &str, type_: &str, path: &str) -> Column {
        Column { name: name.into(), type_: type_.into(), json_path: path.into(), ..Column::default() }
    }

    fn widget() -> Value {
        json!({
            "apiVersion": "idsync.dev/v1alpha1",
            "kind": "Widget",
            "metadata": {
                "name": "w1",
                "namespace": "dev",
                "resourceVersion": "7",
                "creationTimestamp": "2024-05-10T11:55:00Z",
                "labels": {"team": "a"}
            },
            "spec": {
                "mode": "sync", "replicas": 3, "ratio": 2.5, "whole": 4.0, "enabled": true,
                "tags": ["a", "b"], "selector": {"b": 2, "a": "<x>"}, "nothing": null, "big": 1234567.5
            },
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        })
    }

    fn single_cell(type_: &str, path: &str) -> Value {
        let table = build(&[column("C", type_, path)], &[widget()], IncludeObject::None, json!({}), now());
        table["rows"][0]["cells"][1].clone()
    }

    #[test]
    fn include_object_parameter() {
        assert_eq!(IncludeObject::parse(None).unwrap(), IncludeObject::Metadata);
        assert_eq!(IncludeObject::parse(Some("")).unwrap(), IncludeObject::Metadata);
        assert_eq!(IncludeObject::parse(Some("Metadata")).unwrap(), IncludeObject::Metadata);
        assert_eq!(IncludeObject::parse(Some("None")).unwrap(), IncludeObject::None);
        assert_eq!(IncludeObject::parse(Some("Object")).unwrap(), IncludeObject::Object);
        assert_eq!(
            IncludeObject::parse(Some("Everything")).unwrap_err().to_string(),
            "Unable to convert to Table as requested: includeObject: Invalid value: \"Everything\": must be 'Metadata', 'Object', 'None', or empty"
        );
        assert!(IncludeObject::parse(Some("metadata")).is_err());
    }

    #[test]
    fn default_columns_are_name_and_age() {
        let table = build(&[], &[widget()], IncludeObject::Metadata, json!({"resourceVersion": "42"}), now());
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(table["metadata"], json!({"resourceVersion": "42"}));
        assert_eq!(
            table["columnDefinitions"],
            json!([
                {"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION, "priority": 0},
                {"name": "Age", "type": "date", "format": "", "description": CREATION_TIMESTAMP_DESCRIPTION, "priority": 0}
            ])
        );
        assert_eq!(table["rows"][0]["cells"], json!(["w1", "5m"]));
    }

    #[test]
    fn printer_columns_define_headers() {
        let columns = [
            Column {
                name: "Mode".into(),
                type_: "string".into(),
                json_path: ".spec.mode".into(),
                description: "How it syncs".into(),
                priority: 1,
                format: "".into(),
            },
            column("Replicas", "integer", ".spec.replicas"),
        ];
        let table = build(&columns, &[widget()], IncludeObject::Metadata, json!({}), now());
        let defs = table["columnDefinitions"].as_array().unwrap();
        assert_eq!(defs.len(), 3);
        assert_eq!(defs[0]["name"], "Name");
        assert_eq!(
            defs[1],
            json!({"name": "Mode", "type": "string", "format": "", "description": "How it syncs", "priority": 1})
        );
        assert_eq!(defs[2]["description"], "Custom resource definition column (in JSONPath format): .spec.replicas");
        assert_eq!(table["rows"][0]["cells"], json!(["w1", "sync", 3]));
    }

    #[test]
    fn string_cells_print_like_the_jsonpath_printer() {
        assert_eq!(single_cell("string", ".spec.mode"), json!("sync"));
        assert_eq!(single_cell("string", ".spec.replicas"), json!("3"));
        assert_eq!(single_cell("string", ".spec.ratio"), json!("2.5"));
        assert_eq!(single_cell("string", ".spec.whole"), json!("4"));
        assert_eq!(single_cell("string", ".spec.big"), json!("1.2345675e+06"));
        assert_eq!(single_cell("string", ".spec.enabled"), json!("true"));
        assert_eq!(single_cell("string", ".spec.tags"), json!("[\"a\",\"b\"]"));
        assert_eq!(single_cell("string", ".spec.selector"), json!("{\"a\":\"\\u003cx\\u003e\",\"b\":2}"));
        assert_eq!(single_cell("string", ".spec.nothing"), json!("<no value>"));
        assert_eq!(single_cell("string", ".status.conditions[?(@.type==\"Ready\")].status"), json!("True"));
        assert_eq!(single_cell("string", "{.spec.tags[*]}"), json!("a"));
    }

    #[test]
    fn missing_results_are_null() {
        for type_ in ["string", "integer", "number", "boolean", "date"] {
            assert_eq!(single_cell(type_, ".spec.missing"), Value::Null, "{type_}");
        }
        assert_eq!(single_cell("string", ".spec.tags[9]"), Value::Null);
        assert_eq!(single_cell("string", ".spec[unparsable"), Value::Null);
    }

    #[test]
    fn typed_cells() {
        assert_eq!(single_cell("integer", ".spec.replicas"), json!(3));
        assert_eq!(single_cell("integer", ".spec.ratio"), json!(2));
        assert_eq!(single_cell("integer", ".spec.mode"), Value::Null);
        assert_eq!(single_cell("number", ".spec.ratio"), json!(2.5));
        assert_eq!(single_cell("number", ".spec.replicas"), json!(3));
        assert!(single_cell("number", ".spec.replicas").is_i64(), "Go writes float64(3) as 3");
        assert_eq!(single_cell("number", ".spec.mode"), Value::Null);
        assert_eq!(single_cell("boolean", ".spec.enabled"), json!(true));
        assert_eq!(single_cell("boolean", ".spec.mode"), Value::Null);
        assert_eq!(single_cell("date", ".metadata.creationTimestamp"), json!("5m"));
        assert_eq!(single_cell("date", ".spec.replicas"), Value::Null);
        assert_eq!(single_cell("string", ".spec.nothing"), json!("<no value>"));
        assert_eq!(single_cell("integer", ".spec.nothing"), Value::Null);
        assert_eq!(single_cell("unknown-type", ".spec.mode"), Value::Null);
    }

    #[test]
    fn date_cells() {
        let date = |s: &str| cell("date", &json!(s), now());
        assert_eq!(date("2024-05-10T11:59:15Z"), json!("45s"));
        assert_eq!(date("2024-05-10T11:59:15.5+00:00"), json!("44s"));
        assert_eq!(date("2024-05-08T08:00:00Z"), json!("2d4h"));
        assert_eq!(date("2024-05-10T12:00:01Z"), json!("0s"));
        assert_eq!(date("2024-05-10T12:00:05Z"), json!("<invalid>"));
        assert_eq!(date(""), json!("<unknown>"));
        assert_eq!(date("null"), json!("<unknown>"));
        assert_eq!(date("0001-01-01T00:00:00Z"), json!("<unknown>"));
        assert_eq!(date("yesterday"), json!("<invalid>"));
        assert_eq!(date("2024-05-10 11:59:15Z"), json!("<invalid>"));
    }

    #[test]
    fn include_object_variants() {
        let metadata = build(&[], &[widget()], IncludeObject::Metadata, json!({}), now());
        assert_eq!(
            metadata["rows"][0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": widget()["metadata"]})
        );
        let object = build(&[], &[widget()], IncludeObject::Object, json!({}), now());
        assert_eq!(object["rows"][0]["object"], widget());
        let none = build(&[], &[widget()], IncludeObject::None, json!({}), now());
        assert_eq!(none["rows"][0]["object"], Value::Null);
        assert_eq!(none["rows"][0]["cells"], json!(["w1", "5m"]));
    }

    #[test]
    fn rows_follow_objects_and_metadata_is_copied() {
        let mut second = widget();
        second["metadata"]["name"] = json!("w2");
        second["metadata"]["creationTimestamp"] = json!("2024-05-09T12:00:00Z");
        let table = build(
            &[],
            &[widget(), second, json!({"metadata": {}})],
            IncludeObject::None,
            json!({"resourceVersion": "9", "continue": "abc"}),
            now(),
        );
        let rows = table["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1]["cells"], json!(["w2", "24h"]));
        assert_eq!(rows[2]["cells"], json!(["", null]));
        assert_eq!(table["metadata"], json!({"resourceVersion": "9", "continue": "abc"}));
        let empty = build(&[], &[], IncludeObject::None, Value::Null, now());
        assert_eq!(empty["rows"], json!([]));
        assert_eq!(empty["metadata"], json!({}));
    }

    #[test]
    fn go_float_formatting() {
        assert_eq!(go_float_v(3.0), "3");
        assert_eq!(go_float_v(0.5), "0.5");
        assert_eq!(go_float_v(123456.0), "123456");
        assert_eq!(go_float_v(1e6), "1e+06");
        assert_eq!(go_float_v(-2.5e-5), "-2.5e-05");
        assert_eq!(go_float_v(0.0001), "0.0001");
        assert_eq!(go_json_float(1e21), "1e+21");
        assert_eq!(go_json_float(1e-7), "1e-7");
        assert_eq!(go_json_float(1234567.5), "1234567.5");
        assert_eq!(go_json(&json!({"z": [1.5, null, true], "a": "&"})), "{\"a\":\"\\u0026\",\"z\":[1.5,null,true]}");
    }
}
