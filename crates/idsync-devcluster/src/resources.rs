//! The kinds the devcluster serves: the built-in kinds idsync and kubectl
//! need, and every kind a CustomResourceDefinition adds.

use std::sync::Arc;

use serde_json::{Value, json};

use super::error::ApiError;
use super::table::Column;
use crate::schema::{FieldError, SchemaValidator};

/// One served resource (a group, version and plural).
#[derive(Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has the status subresource: main writes ignore status, status writes
    /// ignore everything else, and generation moves only on spec changes.
    pub has_status: bool,
    /// Custom resources and CRDs carry `metadata.generation`.
    pub tracks_generation: bool,
    /// Whether a PUT without resourceVersion is allowed (it is for most
    /// built-in kinds, not for custom resources).
    pub allow_unconditional_update: bool,
    pub columns: Vec<Column>,
    pub validator: Option<Arc<SchemaValidator>>,
    /// Objects of several versions (or of core/v1 and events.k8s.io/v1
    /// Events) share one storage key.
    pub storage_key: String,
    /// Field selector labels beyond metadata.name / metadata.namespace.
    pub extra_field_selectors: Vec<String>,
    /// The CRD that defines it, if any.
    pub crd_name: Option<String>,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResourceType({}/{} {})", self.group, self.version, self.plural)
    }
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `plural.group`, as error messages name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn is_event(&self) -> bool {
        self.storage_key == "events"
    }

    /// A self review (`SelfSubjectReview`, `…AccessReview`, `…RulesReview`):
    /// created to be answered, never stored.
    pub fn is_review(&self) -> bool {
        matches!(self.group.as_str(), "authentication.k8s.io" | "authorization.k8s.io")
    }

    /// Every field selector label this resource accepts.
    pub fn field_selectors(&self) -> Vec<String> {
        let mut all = vec!["metadata.name".to_string(), "metadata.namespace".to_string()];
        all.extend(self.extra_field_selectors.iter().cloned());
        all
    }

    /// The discovery entry (`APIResource`) of this resource and its
    /// subresources.
    pub fn discovery(&self) -> Vec<Value> {
        let mut verbs = vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
        if self.is_review() {
            verbs = vec!["create"];
        }
        if self.plural == "namespaces" {
            verbs.retain(|v| *v != "deletecollection");
        }
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut entries = vec![main];
        if self.has_status {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

/// A built-in kind stored under its plural, with Name and Age columns.
fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> ResourceType {
    ResourceType {
        group: group.to_string(),
        version: version.to_string(),
        kind: kind.to_string(),
        list_kind: format!("{kind}List"),
        plural: plural.to_string(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        has_status: false,
        tracks_generation: false,
        allow_unconditional_update: true,
        columns: Vec::new(),
        validator: None,
        storage_key: if group.is_empty() { plural.to_string() } else { format!("{group}/{plural}") },
        extra_field_selectors: Vec::new(),
        crd_name: None,
    }
}

impl ResourceType {
    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    fn stored_as(mut self, storage_key: &str) -> Self {
        self.storage_key = storage_key.to_string();
        self
    }

    fn selectable(mut self, fields: &[&str]) -> Self {
        self.extra_field_selectors = fields.iter().map(|s| s.to_string()).collect();
        self
    }
}

const CORE_EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const EVENTS_V1_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "type",
];

/// The built-in kinds: what idsync and kubectl need, nothing more.
pub fn builtins() -> Vec<ResourceType> {
    let mut namespaces =
        builtin("", "v1", "Namespace", "namespaces", false).short(&["ns"]).selectable(&["status.phase"]);
    namespaces.has_status = true;
    let mut crds =
        builtin("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false)
            .short(&["crd", "crds"]);
    crds.has_status = true;
    crds.tracks_generation = true;
    crds.allow_unconditional_update = false;
    vec![
        namespaces,
        builtin("", "v1", "Secret", "secrets", true).selectable(&["type"]),
        builtin("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
        builtin("", "v1", "Event", "events", true).short(&["ev"]).selectable(CORE_EVENT_FIELDS),
        // Both Event versions are one stored object (see events.rs).
        // No short name: on a real server only core/v1 Events answer to `ev`.
        builtin("events.k8s.io", "v1", "Event", "events", true).stored_as("events").selectable(EVENTS_V1_FIELDS),
        builtin("coordination.k8s.io", "v1", "Lease", "leases", true),
        // Stored but never acted on: `kubectl cluster-info` lists kube-system's.
        builtin("", "v1", "Service", "services", true).short(&["svc"]),
        // Answered, never stored (`kubectl auth whoami`); see server.rs.
        builtin("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", false),
        // RBAC (see authz): stored, and read by the authorizer. Like on a
        // cluster they have no short names. The access and rules reviews are
        // answered, never stored (`kubectl auth can-i [--list]`).
        builtin("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false),
        builtin("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false),
        builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        builtin("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true),
        builtin("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", false),
        builtin("authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", false),
        crds,
    ]
}

/// The resource types a stored CustomResourceDefinition serves, one per
/// served version; refuses a CRD a real API server would refuse for the
/// reasons idsync's tests can meet.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, ApiError> {
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let text = |pointer: &str| spec.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string();
    let group = text("/group");
    let plural = text("/names/plural");
    let kind = text("/names/kind");
    let crd_invalid = |field: &str, value: &str, detail: &str| {
        ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            name,
            &[FieldError::invalid(field, &Value::String(value.to_string()), detail)],
        )
    };
    if group.is_empty() {
        return Err(crd_invalid("spec.group", "", "should be a domain with at least one dot"));
    }
    if plural.is_empty() || kind.is_empty() {
        return Err(crd_invalid("spec.names", "", "plural and kind are required"));
    }
    if name != format!("{plural}.{group}") {
        return Err(crd_invalid(
            "metadata.name",
            name,
            &format!("must be spec.names.plural+\".\"+spec.group ({plural}.{group})"),
        ));
    }
    let namespaced = text("/scope") != "Cluster";
    let strings = |pointer: &str| -> Vec<String> {
        spec.pointer(pointer)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let versions = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).count() != 1 {
        return Err(crd_invalid("spec.versions", "", "must have exactly one version marked as storage version"));
    }
    let mut types = Vec::new();
    for version in &versions {
        if version.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let version_name = version.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let validator = match version.pointer("/schema/openAPIV3Schema") {
            Some(schema) => Some(Arc::new(
                SchemaValidator::from_schema(&format!("{kind}.{group}"), schema.clone(), name)
                    .map_err(|e| crd_invalid("spec.versions[].schema.openAPIV3Schema", "", &e.to_string()))?,
            )),
            None => None,
        };
        let columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| {
                        let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                        Column {
                            name: field("name"),
                            type_: field("type"),
                            json_path: field("jsonPath"),
                            description: field("description"),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
                            format: field("format"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        types.push(ResourceType {
            group: group.clone(),
            version: version_name,
            kind: kind.clone(),
            list_kind: spec
                .pointer("/names/listKind")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{kind}List")),
            plural: plural.clone(),
            singular: spec
                .pointer("/names/singular")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| kind.to_lowercase()),
            namespaced,
            short_names: strings("/names/shortNames"),
            categories: strings("/names/categories"),
            has_status: version.pointer("/subresources/status").is_some(),
            tracks_generation: true,
            allow_unconditional_update: false,
            columns,
            validator,
            storage_key: format!("{group}/{plural}"),
            extra_field_selectors: Vec::new(),
            crd_name: Some(name.to_string()),
        });
    }
    Ok(types)
}

/// Every served resource type.
#[derive(Default)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        Registry { types: builtins() }
    }

    pub fn all(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// Whether any resource lives in `group` / `version`.
    pub fn serves(&self, group: &str, version: &str) -> bool {
        self.types.iter().any(|t| t.group == group && t.version == version)
    }

    /// Groups in discovery order (core first, then by first registration),
    /// each with its versions.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        groups
    }

    /// Registers (or re-registers) the kinds of a CRD.
    pub fn set_crd(&mut self, crd_name: &str, types: Vec<ResourceType>) {
        self.remove_crd(crd_name);
        self.types.extend(types);
    }

    pub fn remove_crd(&mut self, crd_name: &str) {
        self.types.retain(|t| t.crd_name.as_deref() != Some(crd_name));
    }
}
