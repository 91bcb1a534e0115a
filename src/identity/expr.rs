//! TEMPORARY signature stub; replaced by the real implementation.
use std::collections::BTreeMap;

use crate::account::Account;
use crate::api::identity_profile::Lifecycle;

pub struct CompiledProfile {
    names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {expression:?} does not compile: {message}")]
pub struct CompileError {
    pub field: String,
    pub expression: String,
    pub message: String,
}

impl CompiledProfile {
    pub fn compile(
        attributes: &BTreeMap<String, String>,
        _lifecycle: Option<&Lifecycle>,
    ) -> Result<CompiledProfile, Vec<CompileError>> {
        Ok(CompiledProfile { names: attributes.keys().cloned().collect() })
    }
    pub fn attribute_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|s| s.as_str())
    }
    pub fn evaluate(&self, _inputs: &Inputs<'_>, _only: Option<&[&str]>) -> Evaluation {
        Evaluation::default()
    }
}

pub struct Inputs<'a> {
    pub accounts: &'a [(&'a str, &'a Account)],
    pub now: jiff::Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    pub attributes: BTreeMap<String, serde_json::Value>,
    pub lifecycle_state: Option<String>,
    pub errors: BTreeMap<String, String>,
}
