//! TEMPORARY stub; replaced by the full implementation.
use serde_json::{Value, json};
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub description: String,
    pub priority: i32,
    pub format: String,
}
#[derive(Clone, Copy, Debug)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}
#[derive(Debug)]
pub struct TableError(pub String);
impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Result<Self, TableError> {
        match s {
            None | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(o) => Err(TableError(format!("bad includeObject {o}"))),
        }
    }
}
pub fn build(
    _columns: &[Column],
    objects: &[Value],
    _include: IncludeObject,
    list_metadata: Value,
    _now: k8s_openapi::jiff::Timestamp,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| json!({"cells": [o["metadata"]["name"].clone()], "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()}}))
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_metadata,
        "columnDefinitions": [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}], "rows": rows})
}
