//! Reading Kubernetes manifests (multi-document YAML) from files and folders,
//! and checking idsync's own kinds offline against the generated CRDs — the
//! same admission a cluster applies (`idsync validate`).

use std::path::{Path, PathBuf};

use serde_json::Value;

use idsync_api::{Connection, IdentityProfile, ResyncRequest, crdgen};
use idsync_devcluster::schema::{FieldValidation, Invalid, SchemaError, SchemaValidator};

/// One YAML document of a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `path` or `path#n` for the n-th document (from 1) of a stream.
    pub source: String,
    pub value: Value,
}

impl Document {
    pub fn api_version(&self) -> &str {
        self.value.get("apiVersion").and_then(Value::as_str).unwrap_or_default()
    }
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{source_name}: not valid YAML: {message}")]
    Yaml { source_name: String, message: String },
    #[error("{source_name}: a manifest must be a mapping with apiVersion and kind")]
    NotAnObject { source_name: String },
}

/// All documents of all `.yaml` / `.yml` files under `dir`, recursively, in
/// a stable order (sorted by path).
pub fn load_dir(dir: &Path) -> Result<Vec<Document>, ManifestError> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        docs.extend(load_file(&file)?);
    }
    Ok(docs)
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ManifestError::Read { path: dir.to_path_buf(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| ManifestError::Read { path: dir.to_path_buf(), source })?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    Ok(())
}

/// All documents of one file.
pub fn load_file(path: &Path) -> Result<Vec<Document>, ManifestError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ManifestError::Read { path: path.to_path_buf(), source })?;
    load_str(&path.display().to_string(), &text)
}

/// All documents of a YAML stream; empty documents are skipped.
pub fn load_str(source_name: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut docs = Vec::new();
    for (i, de) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(de)
            .map_err(|e| ManifestError::Yaml { source_name: source_name.to_string(), message: e.to_string() })?;
        if value.is_null() {
            continue;
        }
        let source = format!("{source_name}#{}", i + 1);
        if !value.is_object() {
            return Err(ManifestError::NotAnObject { source_name: source });
        }
        docs.push(Document { source, value });
    }
    Ok(docs)
}

/// Why a document is not a valid idsync object.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{source_name}: {invalid}")]
    Invalid { source_name: String, invalid: Invalid },
    #[error("{source_name}: {kind} {name:?} passed the schema but does not decode: {message}")]
    Decode { source_name: String, kind: String, name: String, message: String },
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// Admission checks for idsync's kinds, built once from the generated CRDs.
pub struct Checker {
    validators: Vec<(String, SchemaValidator)>,
}

impl Checker {
    pub fn new() -> Result<Self, SchemaError> {
        let mut validators = Vec::new();
        for crd in crdgen::all() {
            validators.push((crd.spec.names.kind.clone(), SchemaValidator::for_crd(&crd, idsync_api::VERSION)?));
        }
        Ok(Checker { validators })
    }

    /// Whether `doc` is one of idsync's kinds (others are not checked).
    pub fn is_idsync_kind(doc: &Document) -> bool {
        doc.api_version() == format!("{}/{}", idsync_api::GROUP, idsync_api::VERSION)
    }

    /// Admits `doc` as a create with strict field validation (what `kubectl
    /// apply` asks for), then decodes it into its Rust type. Returns the
    /// admitted object; documents of other kinds pass unchanged.
    pub fn check(&self, doc: &Document) -> Result<Value, CheckError> {
        if !Self::is_idsync_kind(doc) {
            return Ok(doc.value.clone());
        }
        let Some((_, validator)) = self.validators.iter().find(|(kind, _)| kind == doc.kind()) else {
            return Err(CheckError::Decode {
                source_name: doc.source.clone(),
                kind: doc.kind().to_string(),
                name: doc.name().to_string(),
                message: format!("idsync.dev/v1alpha1 has no kind {:?}", doc.kind()),
            });
        };
        let admitted = validator
            .admit(doc.value.clone(), None, FieldValidation::Strict)
            .map_err(|invalid| CheckError::Invalid { source_name: doc.source.clone(), invalid })?;
        let decoded = match doc.kind() {
            "Connection" => serde_json::from_value::<Connection>(admitted.object.clone()).map(drop),
            "ResyncRequest" => serde_json::from_value::<ResyncRequest>(admitted.object.clone()).map(drop),
            "IdentityProfile" => serde_json::from_value::<IdentityProfile>(admitted.object.clone()).map(drop),
            _ => Ok(()),
        };
        decoded.map_err(|e| CheckError::Decode {
            source_name: doc.source.clone(),
            kind: doc.kind().to_string(),
            name: doc.name().to_string(),
            message: e.to_string(),
        })?;
        Ok(admitted.object)
    }

    /// Admits an update of `old` to `new` (transition rules included).
    pub fn check_update(&self, old: &Value, new: &Document) -> Result<Value, CheckError> {
        let Some((_, validator)) = self.validators.iter().find(|(kind, _)| kind == new.kind()) else {
            return Ok(new.value.clone());
        };
        validator
            .admit(new.value.clone(), Some(old), FieldValidation::Strict)
            .map(|a| a.object)
            .map_err(|invalid| CheckError::Invalid { source_name: new.source.clone(), invalid })
    }
}
