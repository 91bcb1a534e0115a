//! Server-side apply and `metadata.managedFields` bookkeeping: a schema-less re-implementation of the parts of
//! structured-merge-diff (SMD) and the API server's field manager that clients can observe.
//!
//! [`apply`] serves `PATCH` with `application/apply-patch+yaml`: it merges the applied configuration into the
//! live object, removes fields the manager applied last time but no longer does (unless someone else owns
//! them), reports conflicts with other managers (or, with `force`, takes their fields), and rewrites
//! `managedFields`. [`record_update`] records ownership for create, update and the other patch types.
//!
//! What is kept from the real machinery:
//! - Field sets in `FieldsV1` form (`f:`, `k:`, `v:` and `.` entries) and manager identities: an `Apply`
//!   manager is (name, subresource); an `Update` manager is (name, apiVersion, subresource).
//! - Ownership rules: an applier owns exactly the leaves (and list items) of its configuration; an updater
//!   gains every field it added or changed (maps it created included, hence the `.` entries) and those
//!   fields leave everyone else; removed fields leave everyone.
//! - Conflicts: a field another manager owns whose value the apply would change (equal values are shared).
//! - Pruning, list-item ordering on merge, entry ordering, and the conflict message all follow SMD and the
//!   API server (`Apply failed with 1 conflict: conflict with "m" using v1: .spec.mode`).
//! - apiVersion, kind and the system-set metadata (name, namespace, uid, resourceVersion, generation,
//!   creationTimestamp, selfLink, managedFields) are never owned.
//! - An existing object without `managedFields` is first attributed to an `Update` manager named
//!   `before-first-apply` when someone applies to it; plain updates to such an object do not start tracking.
//! - `managedFields: [{}]` on an update clears them.
//!
//! Where it simplifies (there is no OpenAPI schema to consult):
//! - Maps are always merged key by key; there are no atomic maps or structs (`x-kubernetes-map-type`).
//! - Lists are atomic (replaced whole, owned as one leaf) unless every item on every side being merged is an
//!   object with a unique string `name` (keyed by `name`), else a unique string `type` (keyed by `type`).
//!   `metadata.ownerReferences` is keyed by `uid` and `metadata.finalizers` is a set, as in ObjectMeta. The
//!   real list types come from the schema (`x-kubernetes-list-type`, `listMapKey`), so e.g. container ports
//!   are keyed by `containerPort` there.
//! - The "reset fields" that a strategy wipes are fixed: writes to the main resource ignore `status`, writes to
//!   the `status` subresource ignore `spec` (what CRDs with a status subresource and most built-ins do).
//! - No version conversion of field sets, no `last-applied-configuration` annotation upgrade, and no cap of
//!   ten `Update` managers (the real server folds older ones into `ancient-changes`).
//! - Invalid entries in the live object's `managedFields` are skipped rather than failing the request, and
//!   `managedFields` in an applied configuration are ignored rather than rejected.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde_json::{Map, Value, json};

/// One server-side apply request.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    /// The stored object, or `None` when the apply creates it.
    pub live: Option<&'a Value>,
    /// The applied configuration, already decoded from YAML.
    pub applied: &'a Value,
    /// The `fieldManager` query parameter.
    pub manager: &'a str,
    /// The `force` query parameter.
    pub force: bool,
    /// `Some("status")` for the status subresource.
    pub subresource: Option<&'a str>,
    /// The request's group/version, recorded in the manager's entry.
    pub api_version: &'a str,
    /// RFC 3339 time recorded in the manager's entry.
    pub now: &'a str,
}

/// The 409 an apply gets when it would change fields that other managers own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_conflicts(.conflicts))]
pub struct ApplyConflicts {
    pub conflicts: Vec<Conflict>,
}

/// One field another manager owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// The field path as the API server prints it, e.g. `.spec.mode` or `.status.conditions[type="Ready"]`.
    pub field: String,
    pub api_version: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub subresource: Option<String>,
}

impl Conflict {
    /// The manager as the API server names it in messages: `"m"`, `"m" using v1`, `"m" with subresource
    /// "status" using v1`.
    pub fn manager_description(&self) -> String {
        let mut out = quote(&self.manager);
        if let Some(subresource) = &self.subresource {
            out.push_str(&format!(" with subresource {}", quote(subresource)));
        }
        if self.operation == "Update" {
            out.push_str(&format!(" using {}", self.api_version));
        }
        out
    }

    /// The message of this conflict's `metav1.StatusCause` (type `FieldManagerConflict`).
    pub fn cause_message(&self) -> String {
        format!("conflict with {}", self.manager_description())
    }

    /// The identity the API server sorts managers by: the JSON of the entry's identifying fields.
    fn identity(&self) -> String {
        let api_version = if self.operation == "Apply" { "" } else { self.api_version.as_str() };
        identity_json(&self.manager, &self.operation, api_version, self.subresource.as_deref().unwrap_or(""))
    }
}

impl ApplyConflicts {
    /// `details.causes` for the 409 `metav1.Status`.
    pub fn status_causes(&self) -> Value {
        Value::Array(
            self.conflicts
                .iter()
                .map(|c| json!({"type": "FieldManagerConflict", "message": c.cause_message(), "field": c.field}))
                .collect(),
        )
    }
}

fn render_conflicts(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!("Apply failed with 1 conflict: {}: {}", only.cause_message(), only.field);
    }
    let mut groups: BTreeMap<String, (String, Vec<&str>)> = BTreeMap::new();
    for conflict in conflicts {
        groups
            .entry(conflict.identity())
            .or_insert_with(|| (conflict.manager_description(), Vec::new()))
            .1
            .push(&conflict.field);
    }
    let mut lines = Vec::new();
    for (description, fields) in groups.into_values() {
        lines.push(format!("conflicts with {description}:"));
        lines.extend(fields.into_iter().map(|f| format!("- {f}")));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn identity_json(manager: &str, operation: &str, api_version: &str, subresource: &str) -> String {
    let mut out = String::from("{");
    if !manager.is_empty() {
        out.push_str(&format!("\"manager\":{},", quote(manager)));
    }
    out.push_str(&format!("\"operation\":{}", quote(operation)));
    if !api_version.is_empty() {
        out.push_str(&format!(",\"apiVersion\":{}", quote(api_version)));
    }
    if !subresource.is_empty() {
        out.push_str(&format!(",\"subresource\":{}", quote(subresource)));
    }
    out.push('}');
    out
}

/// Returns the merged object (with metadata.managedFields updated) or the conflicts.
pub fn apply(req: &ApplyRequest) -> Result<Value, ApplyConflicts> {
    let ignored = ignored_root(req.subresource);
    let live = req.live.map(without_managed_fields).unwrap_or_else(|| json!({}));
    let config = without_managed_fields(req.applied);
    let me = ManagerId::new(req.manager, "Apply", "", req.subresource);

    let mut managers = req.live.map(|l| decode_managed_fields(l, false).unwrap_or_default()).unwrap_or_default();
    if req.live.is_some() && managers.is_empty() {
        let id = ManagerId::new("before-first-apply", "Update", req.api_version, req.subresource);
        record(&mut managers, &json!({}), &live, &id, req.api_version, req.now, ignored);
    }

    let mut merged = merge(&live, &config, &mut Vec::new());

    let mut applied_set = Set::new();
    if config.is_object() {
        collect_set(&config, Some(&live), &mut Vec::new(), &mut applied_set);
    }
    restrict(&mut applied_set, ignored);
    let previous = managers.remove(&me);
    let last_set = previous.as_ref().map(|e| e.set.clone()).unwrap_or_default();
    managers.insert(
        me.clone(),
        Entry { api_version: req.api_version.to_string(), time: previous.and_then(|e| e.time), set: applied_set },
    );

    // Remove what this manager applied last time and dropped now, unless any manager (this one's new
    // configuration included) still claims it.
    if !last_set.is_empty() {
        let owned: Set = managers.values().flat_map(|e| e.set.iter().cloned()).collect();
        let orphaned: Set = last_set.difference(&owned).cloned().collect();
        if !orphaned.is_empty() {
            remove_paths(&mut merged, &orphaned, &mut Vec::new());
        }
    }

    let comparison = compare_objects(&live, &merged, ignored);
    let changed: Set = comparison.added.union(&comparison.modified).cloned().collect();
    let mut taken: Vec<(ManagerId, Path)> = Vec::new();
    for (id, entry) in &managers {
        if *id != me {
            taken.extend(entry.set.intersection(&changed).map(|p| (id.clone(), p.clone())));
        }
    }
    if !taken.is_empty() && !req.force {
        taken.sort_by(|(a, pa), (b, pb)| a.identity().cmp(&b.identity()).then_with(|| smd_order(pa, pb)));
        let conflicts = taken
            .into_iter()
            .map(|(id, path)| Conflict {
                field: render_path(&path),
                api_version: managers.get(&id).map(|e| e.api_version.clone()).unwrap_or_default(),
                subresource: (!id.subresource.is_empty()).then(|| id.subresource.clone()),
                manager: id.manager,
                operation: id.operation,
            })
            .collect();
        return Err(ApplyConflicts { conflicts });
    }
    for (id, path) in &taken {
        if let Some(entry) = managers.get_mut(id) {
            entry.set.remove(path);
        }
    }
    for entry in managers.values_mut() {
        entry.set.retain(|p| !comparison.removed.contains(p));
    }
    managers.retain(|_, e| !e.set.is_empty());
    if let Some(entry) = managers.get_mut(&me) {
        // A no-op apply leaves the object alone, so the real server keeps the entry's old time.
        if merged != live || entry.time.is_none() {
            entry.time = Some(req.now.to_string());
        }
    }

    set_managed_fields(&mut merged, &managers);
    Ok(merged)
}

/// For create / update / non-apply patch: `manager` takes ownership of every field whose value differs
/// between `old` (None on create) and `new` (operation "Update"); those fields leave other managers' sets;
/// empty entries are dropped. Returns `new` with metadata.managedFields set.
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) -> Value {
    let mut result = new.clone();
    let sent = new.pointer("/metadata/managedFields");
    if subresource.is_none() && sent.is_some_and(|m| *m == json!([{}])) {
        set_managed_fields(&mut result, &Managers::new());
        return result;
    }
    // Managed fields the client sent win over the stored ones, so that they can be edited directly; empty
    // or unreadable ones are ignored so that clients unaware of them cannot wipe them.
    let mut managers = match decode_managed_fields(new, true) {
        Some(sent) if subresource.is_none() && !sent.is_empty() => sent,
        _ => old.map(|o| decode_managed_fields(o, false).unwrap_or_default()).unwrap_or_default(),
    };
    if old.is_some() && managers.is_empty() {
        // The API server does not start tracking an existing untracked object on update.
        set_managed_fields(&mut result, &managers);
        return result;
    }
    let old = old.map(without_managed_fields).unwrap_or_else(|| json!({}));
    let id = ManagerId::new(manager, "Update", api_version, subresource);
    record(&mut managers, &old, &without_managed_fields(new), &id, api_version, now, ignored_root(subresource));
    set_managed_fields(&mut result, &managers);
    result
}

/// SMD's update with force, as the API server runs it for a write by `id`.
fn record(
    managers: &mut Managers,
    old: &Value,
    new: &Value,
    id: &ManagerId,
    api_version: &str,
    now: &str,
    ignored: Option<&str>,
) {
    let comparison = compare_objects(old, new, ignored);
    let mut changed: Set = comparison.added.union(&comparison.modified).cloned().collect();
    for entry in managers.values_mut() {
        entry.set.retain(|p| !changed.contains(p) && !comparison.removed.contains(p));
    }
    managers.retain(|_, e| !e.set.is_empty());
    restrict(&mut changed, None);
    if changed.is_empty() {
        return;
    }
    let entry = managers.entry(id.clone()).or_insert_with(|| Entry {
        api_version: api_version.to_string(),
        time: None,
        set: Set::new(),
    });
    entry.set.extend(changed);
    entry.api_version = api_version.to_string();
    entry.time = Some(now.to_string());
}

/// The top-level field the strategy resets for this (sub)resource, which ownership tracking ignores.
fn ignored_root(subresource: Option<&str>) -> Option<&'static str> {
    match subresource {
        None => Some("status"),
        Some("status") => Some("spec"),
        Some(_) => None,
    }
}

/// Drops the system-owned metadata paths (exactly those paths, as the API server's stripMetaManager does)
/// and everything under the ignored top-level field.
fn restrict(set: &mut Set, ignored: Option<&str>) {
    const STRIPPED: [&str; 9] = [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ];
    set.retain(|path| {
        let names: Vec<&str> = path
            .iter()
            .map(|e| match e {
                Element::Field(name) => name.as_str(),
                _ => "",
            })
            .collect();
        let stripped = match names.as_slice() {
            ["apiVersion"] | ["kind"] | ["metadata"] => true,
            ["metadata", field] => STRIPPED.contains(field),
            _ => false,
        };
        let ignored = ignored.is_some_and(|root| path.first() == Some(&Element::Field(root.to_string())));
        !stripped && !ignored
    });
}

fn without_managed_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("managedFields");
    }
    object
}

fn set_managed_fields(object: &mut Value, managers: &Managers) {
    let Some(root) = object.as_object_mut() else { return };
    let metadata = root.entry("metadata").or_insert_with(|| json!({}));
    let Some(metadata) = metadata.as_object_mut() else { return };
    if managers.is_empty() {
        metadata.remove("managedFields");
    } else {
        metadata.insert("managedFields".to_string(), Value::Array(encode_managers(managers)));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Paths and field sets.

/// One step of a field path, ordered as SMD orders path elements (fields, keys, values, indexes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Element {
    Field(String),
    /// A list-map item: its key fields, each with the JSON text of its value, sorted by field name.
    Key(Vec<(String, String)>),
    /// A set item: the JSON text of the value.
    Value(String),
    Index(usize),
}

type Path = Vec<Element>;
type Set = BTreeSet<Path>;

/// `.spec.containers[name="app"].image`, as `fieldpath.Path.String()` renders it.
fn render_path(path: &Path) -> String {
    let mut out = String::new();
    for element in path {
        match element {
            Element::Field(name) => {
                out.push('.');
                out.push_str(name);
            }
            Element::Key(fields) => {
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Element::Value(value) => out.push_str(&format!("[={value}]")),
            Element::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// SMD's set iteration order: at each depth, paths ending there come before paths going deeper.
fn smd_order(a: &Path, b: &Path) -> Ordering {
    let mut depth = 0;
    loop {
        let (a_ends, b_ends) = (a.len() <= depth + 1, b.len() <= depth + 1);
        match (a_ends, b_ends) {
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        match a.get(depth).cmp(&b.get(depth)) {
            Ordering::Equal if !a_ends => depth += 1,
            other => return other,
        }
    }
}

/// Whether `set` holds a path strictly below `path`.
fn has_descendant(set: &Set, path: &Path) -> bool {
    set.range::<Path, _>((Bound::Excluded(path), Bound::Unbounded)).next().is_some_and(|p| p.starts_with(path))
}

fn element_key(element: &Element) -> String {
    match element {
        Element::Field(name) => format!("f:{name}"),
        Element::Key(fields) => {
            let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", quote(k))).collect();
            format!("k:{{{}}}", parts.join(","))
        }
        Element::Value(value) => format!("v:{value}"),
        Element::Index(i) => format!("i:{i}"),
    }
}

fn parse_element_key(key: &str) -> Option<Element> {
    let (kind, rest) = key.split_at_checked(2)?;
    match kind {
        "f:" => Some(Element::Field(rest.to_string())),
        "k:" => {
            let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(rest) else { return None };
            let mut fields: Vec<(String, String)> = fields.into_iter().map(|(k, v)| (k, v.to_string())).collect();
            fields.sort();
            Some(Element::Key(fields))
        }
        "v:" => serde_json::from_str::<Value>(rest).ok().map(|v| Element::Value(v.to_string())),
        "i:" => rest.parse().ok().map(Element::Index),
        _ => None,
    }
}

#[derive(Default)]
struct Node {
    member: bool,
    children: BTreeMap<Element, Node>,
}

fn encode_set(set: &Set) -> Value {
    let mut root = Node::default();
    for path in set {
        let mut node = &mut root;
        for element in path {
            node = node.children.entry(element.clone()).or_default();
        }
        node.member = true;
    }
    fn render(node: &Node) -> Value {
        let mut out = Map::new();
        if node.member && !node.children.is_empty() {
            out.insert(".".to_string(), json!({}));
        }
        for (element, child) in &node.children {
            out.insert(element_key(element), render(child));
        }
        Value::Object(out)
    }
    render(&root)
}

fn decode_set(fields: &Value, path: &mut Path, out: &mut Set) -> Option<()> {
    let Value::Object(map) = fields else { return None };
    for (key, child) in map {
        if key == "." {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            continue;
        }
        path.push(parse_element_key(key)?);
        if child.as_object().is_some_and(Map::is_empty) {
            out.insert(path.clone());
        } else {
            decode_set(child, path, out)?;
        }
        path.pop();
    }
    Some(())
}

// ---------------------------------------------------------------------------------------------------------
// Managers.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ManagerId {
    manager: String,
    operation: String,
    /// Empty for `Apply`: an applier keeps its identity across versions.
    api_version: String,
    subresource: String,
}

impl ManagerId {
    fn new(manager: &str, operation: &str, api_version: &str, subresource: Option<&str>) -> Self {
        ManagerId {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version: if operation == "Apply" { String::new() } else { api_version.to_string() },
            subresource: subresource.unwrap_or_default().to_string(),
        }
    }

    fn identity(&self) -> String {
        identity_json(&self.manager, &self.operation, &self.api_version, &self.subresource)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// The apiVersion written in the entry (for `Apply`, the version last applied with).
    api_version: String,
    time: Option<String>,
    set: Set,
}

type Managers = BTreeMap<ManagerId, Entry>;

/// Reads `metadata.managedFields`. `strict` fails on any invalid entry, as the API server's decoder does;
/// otherwise invalid entries are skipped.
fn decode_managed_fields(object: &Value, strict: bool) -> Option<Managers> {
    let mut managers = Managers::new();
    let Some(entries) = object.pointer("/metadata/managedFields") else { return Some(managers) };
    let Value::Array(entries) = entries else { return if strict { None } else { Some(managers) } };
    for raw in entries {
        match decode_entry(raw) {
            Some((id, entry)) => match managers.get_mut(&id) {
                Some(existing) => existing.set.extend(entry.set),
                None => {
                    managers.insert(id, entry);
                }
            },
            None if strict => return None,
            None => {}
        }
    }
    Some(managers)
}

fn decode_entry(raw: &Value) -> Option<(ManagerId, Entry)> {
    let text = |key: &str| raw.get(key).and_then(Value::as_str).unwrap_or_default();
    let operation = text("operation");
    if !matches!(operation, "Apply" | "Update") || text("apiVersion").is_empty() || text("fieldsType") != "FieldsV1" {
        return None;
    }
    let mut set = Set::new();
    if let Some(fields) = raw.get("fieldsV1") {
        decode_set(fields, &mut Vec::new(), &mut set)?;
    }
    let subresource = Some(text("subresource")).filter(|s| !s.is_empty());
    let id = ManagerId::new(text("manager"), operation, text("apiVersion"), subresource);
    let time = raw.get("time").and_then(Value::as_str).map(str::to_string);
    Some((id, Entry { api_version: text("apiVersion").to_string(), time, set }))
}

/// Entries in the API server's order: Apply before Update, then oldest first, then by name.
fn encode_managers(managers: &Managers) -> Vec<Value> {
    let seconds = |time: &Option<String>| {
        time.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map_or(0, |t| t.as_second())
    };
    let mut ordered: Vec<(&ManagerId, &Entry)> = managers.iter().collect();
    ordered.sort_by(|(a, ea), (b, eb)| {
        a.operation
            .cmp(&b.operation)
            .then_with(|| seconds(&ea.time).cmp(&seconds(&eb.time)))
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| ea.api_version.cmp(&eb.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    ordered
        .into_iter()
        .map(|(id, entry)| {
            let mut out = Map::new();
            if !id.manager.is_empty() {
                out.insert("manager".to_string(), json!(id.manager));
            }
            out.insert("operation".to_string(), json!(id.operation));
            out.insert("apiVersion".to_string(), json!(entry.api_version));
            if let Some(time) = &entry.time {
                out.insert("time".to_string(), json!(time));
            }
            out.insert("fieldsType".to_string(), json!("FieldsV1"));
            out.insert("fieldsV1".to_string(), encode_set(&entry.set));
            if !id.subresource.is_empty() {
                out.insert("subresource".to_string(), json!(id.subresource));
            }
            Value::Object(out)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Values: list kinds, field sets, comparison, merge and removal.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Atomic,
    Map(&'static str),
    Set,
}

fn is_path(path: &[Element], names: &[&str]) -> bool {
    path.len() == names.len() && path.iter().zip(names).all(|(e, n)| matches!(e, Element::Field(f) if f == n))
}

fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// How the list at `path` merges, judged from every version of it taking part (see the module docs).
fn list_kind(path: &[Element], sides: &[&Vec<Value>]) -> ListKind {
    if sides.iter().all(|side| side.is_empty()) {
        return ListKind::Atomic;
    }
    let unique = |side: &Vec<Value>, item_key: &dyn Fn(&Value) -> Option<String>| {
        let mut seen = BTreeSet::new();
        side.iter().all(|item| item_key(item).is_some_and(|k| seen.insert(k)))
    };
    if is_path(path, &["metadata", "finalizers"]) {
        let member = |item: &Value| is_scalar(item).then(|| item.to_string());
        return if sides.iter().all(|side| unique(side, &member)) { ListKind::Set } else { ListKind::Atomic };
    }
    let keys: &[&'static str] =
        if is_path(path, &["metadata", "ownerReferences"]) { &["uid"] } else { &["name", "type"] };
    for &key in keys {
        let key_of = |item: &Value| item.get(key).and_then(Value::as_str).map(str::to_string);
        if sides.iter().all(|side| unique(side, &key_of)) {
            return ListKind::Map(key);
        }
    }
    ListKind::Atomic
}

fn item_element(kind: ListKind, item: &Value) -> Option<Element> {
    match kind {
        ListKind::Atomic => None,
        ListKind::Map(key) => item.get(key).map(|v| Element::Key(vec![(key.to_string(), v.to_string())])),
        ListKind::Set => Some(Element::Value(item.to_string())),
    }
}

/// The field set of an applied configuration: its leaves, atomic lists and list items; never the maps
/// themselves. Lists are classified together with the live value they merge into, so that e.g. an empty
/// list applied over a keyed one owns nothing, as with a list-map schema.
fn collect_set(value: &Value, live: Option<&Value>, path: &mut Path, out: &mut Set) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(Element::Field(key.clone()));
                collect_set(child, live.and_then(|l| l.get(key)), path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            let live_items = live.and_then(Value::as_array);
            let sides: Vec<&Vec<Value>> = std::iter::once(items).chain(live_items).collect();
            match list_kind(path, &sides) {
                ListKind::Atomic => {
                    out.insert(path.clone());
                }
                kind => {
                    for item in items {
                        let Some(element) = item_element(kind, item) else { continue };
                        let live_item = live_items
                            .and_then(|l| l.iter().find(|i| item_element(kind, i).as_ref() == Some(&element)));
                        path.push(element);
                        out.insert(path.clone());
                        if let ListKind::Map(_) = kind {
                            collect_set(item, live_item, path, out);
                        }
                        path.pop();
                    }
                }
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

#[derive(Debug, Default)]
struct Comparison {
    added: Set,
    modified: Set,
    removed: Set,
}

/// SMD's `Compare` of two whole objects, restricted as ownership tracking sees it.
fn compare_objects(old: &Value, new: &Value, ignored: Option<&str>) -> Comparison {
    let mut comparison = Comparison::default();
    compare(Some(old), Some(new), &mut Vec::new(), &mut comparison);
    for set in [&mut comparison.added, &mut comparison.modified, &mut comparison.removed] {
        set.retain(|p| !p.is_empty());
        restrict(set, ignored);
    }
    comparison
}

/// Leaves that differ are added/modified/removed; maps and keyed lists that appear or disappear are
/// added/removed themselves as well (which is where an updater's `.` entries come from).
fn compare(old: Option<&Value>, new: Option<&Value>, path: &mut Path, out: &mut Comparison) {
    let structural = |hook_path: &Path, out: &mut Comparison| {
        if old.is_none() {
            out.added.insert(hook_path.clone());
        } else if new.is_none() {
            out.removed.insert(hook_path.clone());
        }
    };
    if old.is_none_or(Value::is_object) && new.is_none_or(Value::is_object) {
        let (old_map, new_map) = (old.and_then(Value::as_object), new.and_then(Value::as_object));
        let keys: BTreeSet<&String> = old_map.into_iter().chain(new_map).flat_map(Map::keys).collect();
        for key in keys {
            path.push(Element::Field(key.clone()));
            compare(old_map.and_then(|m| m.get(key)), new_map.and_then(|m| m.get(key)), path, out);
            path.pop();
        }
        structural(path, out);
        return;
    }
    if old.is_none_or(Value::is_array) && new.is_none_or(Value::is_array) {
        let sides: Vec<&Vec<Value>> = [old, new].into_iter().flatten().filter_map(Value::as_array).collect();
        let kind = list_kind(path, &sides);
        if kind != ListKind::Atomic {
            fn index(side: Option<&Value>, kind: ListKind) -> BTreeMap<Element, &Value> {
                side.and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|item| item_element(kind, item).map(|e| (e, item)))
                    .collect()
            }
            let (old_items, new_items) = (index(old, kind), index(new, kind));
            let elements: BTreeSet<&Element> = old_items.keys().chain(new_items.keys()).collect();
            for element in elements {
                path.push(element.clone());
                compare(old_items.get(element).copied(), new_items.get(element).copied(), path, out);
                path.pop();
            }
            structural(path, out);
            return;
        }
    }
    match (old, new) {
        (None, Some(_)) => {
            out.added.insert(path.clone());
        }
        (Some(_), None) => {
            out.removed.insert(path.clone());
        }
        (Some(a), Some(b)) if a != b => {
            out.modified.insert(path.clone());
        }
        _ => {}
    }
}

/// Merges an applied configuration into a live value: maps key by key, keyed lists item by item, anything
/// else replaced by the configuration.
fn merge(live: &Value, config: &Value, path: &mut Path) -> Value {
    match (live, config) {
        (Value::Object(live_map), Value::Object(config_map)) => {
            let mut out = live_map.clone();
            for (key, config_value) in config_map {
                path.push(Element::Field(key.clone()));
                let merged = match live_map.get(key) {
                    Some(live_value) => merge(live_value, config_value, path),
                    None => config_value.clone(),
                };
                path.pop();
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(live_items), Value::Array(config_items)) => match list_kind(path, &[live_items, config_items]) {
            ListKind::Atomic => config.clone(),
            kind => Value::Array(merge_list(live_items, config_items, kind, path)),
        },
        _ => config.clone(),
    }
}

/// SMD's item order: live-only items keep their place, items in the configuration follow its order.
fn merge_list(live: &[Value], config: &[Value], kind: ListKind, path: &mut Path) -> Vec<Value> {
    let keys = |items: &[Value]| -> Vec<Element> { items.iter().filter_map(|i| item_element(kind, i)).collect() };
    let (live_keys, config_keys) = (keys(live), keys(config));
    let live_index: BTreeMap<&Element, usize> = live_keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
    let in_config: BTreeSet<&Element> = config_keys.iter().collect();
    let mut shared = config_keys.iter().filter(|k| live_index.contains_key(k));
    let mut next_shared = shared.next();
    let mut emitted: BTreeSet<&Element> = BTreeSet::new();
    let mut out = Vec::with_capacity(live.len().max(config.len()));
    let merge_item = |live_item: Option<&Value>, config_item: &Value, element: &Element, path: &mut Path| {
        path.push(element.clone());
        let merged = match live_item {
            Some(live_item) => merge(live_item, config_item, path),
            None => config_item.clone(),
        };
        path.pop();
        merged
    };
    let (mut l, mut c) = (0, 0);
    while l < live_keys.len() || c < config_keys.len() {
        if l < live_keys.len() && c < config_keys.len() {
            if live_keys[l] == config_keys[c] {
                out.push(merge_item(Some(&live[l]), &config[c], &config_keys[c], path));
                emitted.insert(&config_keys[c]);
                next_shared = shared.next();
                l += 1;
                c += 1;
                continue;
            }
            // A shared item that the configuration wants later: it is written when the configuration gets there.
            if in_config.contains(&live_keys[l]) && next_shared.is_some_and(|n| *n != live_keys[l]) {
                l += 1;
                continue;
            }
        }
        if l < live_keys.len() {
            if !in_config.contains(&live_keys[l]) {
                out.push(live[l].clone());
                l += 1;
                continue;
            }
            if emitted.contains(&live_keys[l]) {
                l += 1;
                continue;
            }
        }
        if c < config_keys.len() {
            let element = &config_keys[c];
            let live_item = live_index.get(element).map(|&i| &live[i]);
            out.push(merge_item(live_item, &config[c], element, path));
            emitted.insert(element);
            if next_shared == Some(element) {
                next_shared = shared.next();
            }
            c += 1;
            continue;
        }
        // Only reachable with an inconsistent classification; advancing keeps the loop finite.
        l += 1;
    }
    out
}

/// Deletes every path in `remove` (with everything below it) from `value`.
fn remove_paths(value: &mut Value, remove: &Set, path: &mut Path) {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                path.push(Element::Field(key.clone()));
                if remove.contains(path) {
                    map.remove(&key);
                } else if has_descendant(remove, path)
                    && let Some(child) = map.get_mut(&key)
                {
                    remove_paths(child, remove, path);
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            let kind = list_kind(path, &[items]);
            if kind == ListKind::Atomic {
                return;
            }
            items.retain_mut(|item| {
                let Some(element) = item_element(kind, item) else { return true };
                path.push(element);
                let keep = !remove.contains(path);
                if keep && has_descendant(remove, path) {
                    remove_paths(item, remove, path);
                }
                path.pop();
                keep
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "idsync.dev/v1alpha1";
    const T1: &str = "2024-05-10T10:00:00Z";
    const T2: &str = "2024-05-10T11:00:00Z";
    const T3: &str = "2024-05-10T12:00:00Z";

    fn config(spec: Value) -> Value {
        json!({"apiVersion": V, "kind": "Widget", "metadata": {"name": "w", "namespace": "dev"}, "spec": spec})
    }

    fn stored(mut object: Value) -> Value {
        object["metadata"]["uid"] = json!("u-1");
        object["metadata"]["resourceVersion"] = json!("5");
        object["metadata"]["creationTimestamp"] = json!(T1);
        object
    }

    fn request<'a>(live: Option<&'a Value>, applied: &'a Value, manager: &'a str, now: &'a str) -> ApplyRequest<'a> {
        ApplyRequest { live, applied, manager, force: false, subresource: None, api_version: V, now }
    }

    fn entries(object: &Value) -> Vec<Value> {
        object["metadata"]["managedFields"].as_array().cloned().unwrap_or_default()
    }

    fn entry<'a>(object: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
        object["metadata"]["managedFields"]
            .as_array()?
            .iter()
            .find(|e| e["manager"] == manager && e["operation"] == operation)
    }

    fn fields(object: &Value, manager: &str, operation: &str) -> Value {
        entry(object, manager, operation).map(|e| e["fieldsV1"].clone()).unwrap_or(Value::Null)
    }

    #[test]
    fn apply_creates_the_object_from_the_config() {
        let mut applied = config(json!({"mode": "sync", "size": 3}));
        applied["metadata"]["labels"] = json!({"team": "a"});
        let created = apply(&request(None, &applied, "idsync", T1)).unwrap();
        let mut expected = applied.clone();
        expected["metadata"]["managedFields"] = json!([{
            "manager": "idsync",
            "operation": "Apply",
            "apiVersion": V,
            "time": T1,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}, "f:spec": {"f:mode": {}, "f:size": {}}}
        }]);
        assert_eq!(created, expected);
    }

    #[test]
    fn reapply_removes_fields_the_manager_dropped() {
        let first = stored(apply(&request(None, &config(json!({"mode": "sync", "size": 3})), "idsync", T1)).unwrap());
        let second = apply(&request(Some(&first), &config(json!({"mode": "sync"})), "idsync", T2)).unwrap();
        assert_eq!(second["spec"], json!({"mode": "sync"}));
        assert_eq!(fields(&second, "idsync", "Apply"), json!({"f:spec": {"f:mode": {}}}));
        assert_eq!(entry(&second, "idsync", "Apply").unwrap()["time"], T2);
        // System metadata survives the merge even though the config does not mention it.
        assert_eq!(second["metadata"]["uid"], "u-1");
    }

    #[test]
    fn reapply_keeps_dropped_fields_another_manager_owns() {
        let first = stored(apply(&request(None, &config(json!({"mode": "sync", "size": 3})), "a", T1)).unwrap());
        let second = apply(&request(Some(&first), &config(json!({"size": 3})), "b", T2)).unwrap();
        assert_eq!(fields(&second, "b", "Apply"), json!({"f:spec": {"f:size": {}}}));
        let third = apply(&request(Some(&second), &config(json!({"mode": "sync"})), "a", T3)).unwrap();
        assert_eq!(third["spec"], json!({"mode": "sync", "size": 3}));
        assert_eq!(fields(&third, "a", "Apply"), json!({"f:spec": {"f:mode": {}}}));
        assert_eq!(fields(&third, "b", "Apply"), json!({"f:spec": {"f:size": {}}}));
    }

    #[test]
    fn conflict_without_force_has_the_api_server_message() {
        let created =
            record_update(None, &stored(config(json!({"mode": "a"}))), "kubectl-client-side-apply", None, V, T1);
        let err = apply(&request(Some(&created), &config(json!({"mode": "b"})), "idsync", T2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using idsync.dev/v1alpha1: .spec.mode"
        );
        assert_eq!(
            err.conflicts,
            vec![Conflict {
                manager: "kubectl-client-side-apply".into(),
                field: ".spec.mode".into(),
                api_version: V.into(),
                operation: "Update".into(),
                subresource: None,
            }]
        );
        assert_eq!(
            err.status_causes(),
            json!([{
                "type": "FieldManagerConflict",
                "message": "conflict with \"kubectl-client-side-apply\" using idsync.dev/v1alpha1",
                "field": ".spec.mode"
            }])
        );
    }

    #[test]
    fn applying_the_same_value_shares_ownership() {
        let created = record_update(None, &stored(config(json!({"mode": "a"}))), "kubectl", None, V, T1);
        let shared = apply(&request(Some(&created), &config(json!({"mode": "a"})), "idsync", T2)).unwrap();
        assert_eq!(fields(&shared, "idsync", "Apply"), json!({"f:spec": {"f:mode": {}}}));
        assert_eq!(fields(&shared, "kubectl", "Update"), json!({"f:spec": {".": {}, "f:mode": {}}}));
    }

    #[test]
    fn force_takes_ownership() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a", "size": 1})), "other", T1)).unwrap());
        let forced =
            apply(&ApplyRequest { force: true, ..request(Some(&first), &config(json!({"mode": "b"})), "idsync", T2) })
                .unwrap();
        assert_eq!(forced["spec"], json!({"mode": "b", "size": 1}));
        assert_eq!(fields(&forced, "idsync", "Apply"), json!({"f:spec": {"f:mode": {}}}));
        assert_eq!(fields(&forced, "other", "Apply"), json!({"f:spec": {"f:size": {}}}));
        // Losing every field drops the entry altogether.
        let everything = config(json!({"mode": "b", "size": 2}));
        let all = apply(&ApplyRequest { force: true, ..request(Some(&forced), &everything, "idsync", T3) }).unwrap();
        assert!(entry(&all, "other", "Apply").is_none());
        assert_eq!(fields(&all, "idsync", "Apply"), json!({"f:spec": {"f:mode": {}, "f:size": {}}}));
        assert_eq!(all["spec"], json!({"mode": "b", "size": 2}));
    }

    #[test]
    fn two_managers_own_different_fields() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a"})), "alice", T1)).unwrap());
        let second = apply(&request(Some(&first), &config(json!({"size": 2})), "bob", T2)).unwrap();
        assert_eq!(second["spec"], json!({"mode": "a", "size": 2}));
        let managed = entries(&second);
        assert_eq!(managed.len(), 2);
        assert_eq!(managed[0]["manager"], "alice");
        assert_eq!(managed[1]["manager"], "bob");
        assert_eq!(fields(&second, "alice", "Apply"), json!({"f:spec": {"f:mode": {}}}));
        assert_eq!(fields(&second, "bob", "Apply"), json!({"f:spec": {"f:size": {}}}));
        // Each can change its own field without force.
        let third = apply(&request(Some(&second), &config(json!({"mode": "z"})), "alice", T3)).unwrap();
        assert_eq!(third["spec"], json!({"mode": "z", "size": 2}));
    }

    #[test]
    fn status_subresource_has_its_own_entry() {
        let main = stored(apply(&request(None, &config(json!({"mode": "a"})), "idsync", T1)).unwrap());
        let mut status_config = config(json!({"mode": "ignored-by-the-status-strategy"}));
        status_config["status"] = json!({"phase": "Ready"});
        let with_status =
            apply(&ApplyRequest { subresource: Some("status"), ..request(Some(&main), &status_config, "idsync", T2) })
                .unwrap();
        let managed = entries(&with_status);
        assert_eq!(managed.len(), 2);
        assert_eq!(managed[0].get("subresource"), None);
        assert_eq!(managed[0]["fieldsV1"], json!({"f:spec": {"f:mode": {}}}));
        assert_eq!(managed[1]["subresource"], "status");
        assert_eq!(managed[1]["fieldsV1"], json!({"f:status": {"f:phase": {}}}));

        // Re-applying the main resource without status neither prunes nor conflicts with the status entry.
        let stored_status = stored(with_status);
        let again = apply(&request(Some(&stored_status), &config(json!({"mode": "a"})), "idsync", T3)).unwrap();
        assert_eq!(again["status"], json!({"phase": "Ready"}));
        assert_eq!(entries(&again).len(), 2);
    }

    #[test]
    fn main_resource_writes_do_not_own_status() {
        let mut applied = config(json!({"mode": "a"}));
        applied["status"] = json!({"phase": "Pending"});
        let created = apply(&request(None, &applied, "kubectl", T1)).unwrap();
        assert_eq!(fields(&created, "kubectl", "Apply"), json!({"f:spec": {"f:mode": {}}}));
        let updated = record_update(None, &stored(applied), "kubectl-create", None, V, T1);
        assert_eq!(fields(&updated, "kubectl-create", "Update"), json!({"f:spec": {".": {}, "f:mode": {}}}));
    }

    #[test]
    fn record_update_on_create_marks_new_maps() {
        let mut object = stored(config(json!({"mode": "a", "nested": {"x": 1}})));
        object["metadata"]["labels"] = json!({"team": "a"});
        let created = record_update(None, &object, "kubectl-create", None, V, T1);
        assert_eq!(
            entries(&created),
            vec![json!({
                "manager": "kubectl-create",
                "operation": "Update",
                "apiVersion": V,
                "time": T1,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {".": {}, "f:team": {}}},
                    "f:spec": {".": {}, "f:mode": {}, "f:nested": {".": {}, "f:x": {}}}
                }
            })]
        );
        let mut without = created.clone();
        without["metadata"].as_object_mut().unwrap().remove("managedFields");
        assert_eq!(without, object, "record_update only touches managedFields");
    }

    #[test]
    fn record_update_moves_ownership() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a", "size": 1})), "idsync", T1)).unwrap());
        let mut edited = first.clone();
        edited["spec"]["mode"] = json!("b");
        let updated = record_update(Some(&first), &edited, "kubectl-edit", None, V, T2);
        assert_eq!(fields(&updated, "idsync", "Apply"), json!({"f:spec": {"f:size": {}}}));
        assert_eq!(fields(&updated, "kubectl-edit", "Update"), json!({"f:spec": {"f:mode": {}}}));
        assert_eq!(entry(&updated, "kubectl-edit", "Update").unwrap()["time"], T2);
        assert_eq!(entry(&updated, "idsync", "Apply").unwrap()["time"], T1, "losers keep their time");

        // Taking the last field drops the loser's entry.
        let mut again = stored(updated.clone());
        again["spec"]["size"] = json!(2);
        let taken = record_update(Some(&stored(updated)), &again, "kubectl-edit", None, V, T3);
        assert!(entry(&taken, "idsync", "Apply").is_none());
        assert_eq!(fields(&taken, "kubectl-edit", "Update"), json!({"f:spec": {"f:mode": {}, "f:size": {}}}));
    }

    #[test]
    fn record_update_removals_leave_every_set() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a", "size": 1})), "idsync", T1)).unwrap());
        let mut edited = first.clone();
        edited["spec"].as_object_mut().unwrap().remove("size");
        let updated = record_update(Some(&first), &edited, "kubectl-edit", None, V, T2);
        assert_eq!(fields(&updated, "idsync", "Apply"), json!({"f:spec": {"f:mode": {}}}));
        assert!(entry(&updated, "kubectl-edit", "Update").is_none(), "a pure removal owns nothing");
    }

    #[test]
    fn record_update_without_changes_adds_no_entry() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a"})), "idsync", T1)).unwrap());
        let same = record_update(Some(&first), &first, "kubectl", None, V, T2);
        assert_eq!(same, first);
    }

    #[test]
    fn record_update_does_not_start_tracking_existing_objects() {
        let untracked = stored(config(json!({"mode": "a"})));
        let mut edited = untracked.clone();
        edited["spec"]["mode"] = json!("b");
        let updated = record_update(Some(&untracked), &edited, "kubectl", None, V, T2);
        assert_eq!(updated.pointer("/metadata/managedFields"), None);
    }

    #[test]
    fn record_update_honours_sent_managed_fields() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a"})), "idsync", T1)).unwrap());
        // `[{}]` resets them.
        let mut reset = first.clone();
        reset["metadata"]["managedFields"] = json!([{}]);
        assert_eq!(
            record_update(Some(&first), &reset, "kubectl", None, V, T2).pointer("/metadata/managedFields"),
            None
        );
        // An empty list is a client that does not know about them: the stored ones stay.
        let mut cleared = first.clone();
        cleared["metadata"]["managedFields"] = json!([]);
        let kept = record_update(Some(&first), &cleared, "kubectl", None, V, T2);
        assert_eq!(fields(&kept, "idsync", "Apply"), json!({"f:spec": {"f:mode": {}}}));
        // Valid entries sent by the client replace the stored ones.
        let mut rewritten = first.clone();
        rewritten["metadata"]["managedFields"] = json!([{
            "manager": "someone", "operation": "Update", "apiVersion": V, "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:mode": {}}}
        }]);
        let replaced = record_update(Some(&first), &rewritten, "kubectl", None, V, T2);
        assert!(entry(&replaced, "idsync", "Apply").is_none());
        assert_eq!(fields(&replaced, "someone", "Update"), json!({"f:spec": {"f:mode": {}}}));
    }

    #[test]
    fn status_updates_get_a_subresource_entry() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a"})), "idsync", T1)).unwrap());
        let mut with_status = first.clone();
        with_status["status"] = json!({"phase": "Ready"});
        let updated = record_update(Some(&first), &with_status, "idsync", Some("status"), V, T2);
        let status_entry = entries(&updated).into_iter().find(|e| e["operation"] == "Update").unwrap();
        assert_eq!(status_entry["subresource"], "status");
        assert_eq!(status_entry["fieldsV1"], json!({"f:status": {".": {}, "f:phase": {}}}));
        assert_eq!(fields(&updated, "idsync", "Apply"), json!({"f:spec": {"f:mode": {}}}));
    }

    fn with_conditions(conditions: Value) -> Value {
        let mut object = config(json!({"mode": "a"}));
        object["status"] = json!({"conditions": conditions});
        object
    }

    #[test]
    fn keyed_lists_merge_by_key() {
        let status = |manager, live: Option<&Value>, conditions: Value, now| {
            let applied = with_conditions(conditions);
            apply(&ApplyRequest { subresource: Some("status"), ..request(live, &applied, manager, now) }).unwrap()
        };
        let first = stored(status("ready-controller", None, json!([{"type": "Ready", "status": "True"}]), T1));
        let second = status("sync-controller", Some(&first), json!([{"type": "Synced", "status": "False"}]), T2);
        assert_eq!(
            second["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}])
        );
        assert_eq!(
            fields(&second, "ready-controller", "Apply"),
            json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}, "f:type": {}}}}})
        );
        // A conflict inside an item names the item by key.
        let stolen = with_conditions(json!([{"type": "Ready", "status": "False"}]));
        let err = apply(&ApplyRequest {
            subresource: Some("status"),
            ..request(Some(&stored(second.clone())), &stolen, "sync-controller", T3)
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"ready-controller\" with subresource \"status\": .status.conditions[type=\"Ready\"].status"
        );
        // Dropping its item removes only that item.
        let dropped = status("sync-controller", Some(&stored(second)), json!([]), T3);
        assert_eq!(dropped["status"]["conditions"], json!([{"type": "Ready", "status": "True"}]));
        assert!(entry(&dropped, "sync-controller", "Apply").is_none());
    }

    #[test]
    fn keyed_list_order_follows_the_configuration_for_shared_items() {
        let item = |name: &str| json!({"name": name});
        let mut path = vec![Element::Field("spec".into()), Element::Field("items".into())];
        let merged =
            merge_list(&[item("a"), item("x"), item("b")], &[item("b"), item("a")], ListKind::Map("name"), &mut path);
        assert_eq!(merged, vec![item("x"), item("b"), item("a")]);
        let appended = merge_list(&[item("a"), item("b")], &[item("b"), item("c")], ListKind::Map("name"), &mut path);
        assert_eq!(appended, vec![item("a"), item("b"), item("c")]);
    }

    #[test]
    fn atomic_lists_are_replaced_and_owned_whole() {
        let first = stored(apply(&request(None, &config(json!({"args": ["a", "b"]})), "alice", T1)).unwrap());
        assert_eq!(fields(&first, "alice", "Apply"), json!({"f:spec": {"f:args": {}}}));
        let err = apply(&request(Some(&first), &config(json!({"args": ["c"]})), "bob", T2)).unwrap_err();
        assert_eq!(err.to_string(), "Apply failed with 1 conflict: conflict with \"alice\": .spec.args");
        let forced =
            apply(&ApplyRequest { force: true, ..request(Some(&first), &config(json!({"args": ["c"]})), "bob", T2) })
                .unwrap();
        assert_eq!(forced["spec"]["args"], json!(["c"]));
    }

    #[test]
    fn finalizers_are_a_set() {
        let with_finalizer = |f: &str| {
            let mut object = config(json!({}));
            object["metadata"]["finalizers"] = json!([f]);
            object
        };
        let first = stored(apply(&request(None, &with_finalizer("a.io/x"), "alice", T1)).unwrap());
        let second = apply(&request(Some(&first), &with_finalizer("b.io/y"), "bob", T2)).unwrap();
        assert_eq!(second["metadata"]["finalizers"], json!(["a.io/x", "b.io/y"]));
        assert_eq!(fields(&second, "bob", "Apply"), json!({"f:metadata": {"f:finalizers": {"v:\"b.io/y\"": {}}}}));
    }

    #[test]
    fn several_conflicts_are_grouped_by_manager() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a", "size": 1})), "alice", T1)).unwrap());
        let mut edited = first.clone();
        edited["spec"]["tier"] = json!("gold");
        let second = stored(record_update(Some(&first), &edited, "kubectl", None, V, T2));
        let err = apply(&request(Some(&second), &config(json!({"mode": "b", "size": 2, "tier": "x"})), "idsync", T3))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 3 conflicts: conflicts with \"alice\":\n- .spec.mode\n- .spec.size\nconflicts with \"kubectl\" using idsync.dev/v1alpha1:\n- .spec.tier"
        );
        assert_eq!(err.conflicts.len(), 3);
        assert_eq!(err.conflicts[2].manager, "kubectl");
    }

    #[test]
    fn first_apply_to_an_untracked_object_conflicts_with_before_first_apply() {
        let untracked = stored(config(json!({"mode": "a", "size": 1})));
        let err = apply(&request(Some(&untracked), &config(json!({"mode": "b"})), "idsync", T2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"before-first-apply\" using idsync.dev/v1alpha1: .spec.mode"
        );
        let same = apply(&request(Some(&untracked), &config(json!({"mode": "a"})), "idsync", T2)).unwrap();
        assert_eq!(
            fields(&same, "before-first-apply", "Update"),
            json!({"f:spec": {".": {}, "f:mode": {}, "f:size": {}}})
        );
        assert_eq!(fields(&same, "idsync", "Apply"), json!({"f:spec": {"f:mode": {}}}));
    }

    #[test]
    fn no_op_apply_keeps_the_entry_time() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a"})), "idsync", T1)).unwrap());
        let again = apply(&request(Some(&first), &config(json!({"mode": "a"})), "idsync", T2)).unwrap();
        assert_eq!(entry(&again, "idsync", "Apply").unwrap()["time"], T1);
        let changed = apply(&request(Some(&first), &config(json!({"mode": "b"})), "idsync", T2)).unwrap();
        assert_eq!(entry(&changed, "idsync", "Apply").unwrap()["time"], T2);
    }

    #[test]
    fn entries_are_ordered_apply_first_then_oldest() {
        let first = stored(record_update(None, &stored(config(json!({"a": 1}))), "creator", None, V, T1));
        let second = stored(apply(&request(Some(&first), &config(json!({"b": 1})), "late-applier", T3)).unwrap());
        let third = apply(&request(Some(&second), &config(json!({"c": 1})), "early-applier", T2)).unwrap();
        let order: Vec<(Value, Value)> =
            entries(&third).iter().map(|e| (e["manager"].clone(), e["operation"].clone())).collect();
        assert_eq!(
            order,
            vec![
                (json!("early-applier"), json!("Apply")),
                (json!("late-applier"), json!("Apply")),
                (json!("creator"), json!("Update")),
            ]
        );
    }

    #[test]
    fn applying_an_empty_config_drops_the_manager_and_its_fields() {
        let first = stored(apply(&request(None, &config(json!({"mode": "a"})), "idsync", T1)).unwrap());
        let emptied = apply(&request(Some(&first), &config(json!({})), "idsync", T2)).unwrap();
        assert_eq!(emptied["spec"], json!({}));
        assert_eq!(emptied.pointer("/metadata/managedFields"), None);
    }

    #[test]
    fn owner_references_are_keyed_by_uid() {
        let mut applied = config(json!({}));
        applied["metadata"]["ownerReferences"] = json!([{"uid": "o-1", "name": "owner", "kind": "Team"}]);
        let created = apply(&request(None, &applied, "idsync", T1)).unwrap();
        assert_eq!(
            fields(&created, "idsync", "Apply")["f:metadata"]["f:ownerReferences"],
            json!({"k:{\"uid\":\"o-1\"}": {".": {}, "f:kind": {}, "f:name": {}, "f:uid": {}}})
        );
    }

    #[test]
    fn fields_v1_round_trips() {
        let encoded = json!({
            "f:metadata": {"f:finalizers": {".": {}, "v:\"x\"": {}}},
            "f:spec": {".": {}, "f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}, "f:list": {"i:0": {}}}
        });
        let mut set = Set::new();
        decode_set(&encoded, &mut Vec::new(), &mut set).unwrap();
        assert!(set.contains(&vec![Element::Field("spec".into())]));
        assert_eq!(encode_set(&set), encoded);
        assert_eq!(
            render_path(&vec![
                Element::Field("spec".into()),
                Element::Field("ports".into()),
                Element::Key(vec![("port".into(), "80".into()), ("protocol".into(), "\"TCP\"".into())]),
            ]),
            ".spec.ports[port=80,protocol=\"TCP\"]"
        );
        assert_eq!(render_path(&vec![Element::Field("f".into()), Element::Value("\"x\"".into())]), ".f[=\"x\"]");
        assert!(decode_set(&json!({"z:nope": {}}), &mut Vec::new(), &mut Set::new()).is_none());
    }

    #[test]
    fn smd_order_lists_members_before_deeper_paths() {
        let p = |names: &[&str]| names.iter().map(|n| Element::Field(n.to_string())).collect::<Path>();
        let mut paths = vec![p(&["a", "x"]), p(&["b"]), p(&["a", "b", "c"]), p(&["a", "c"])];
        paths.sort_by(smd_order);
        assert_eq!(paths, vec![p(&["b"]), p(&["a", "c"]), p(&["a", "x"]), p(&["a", "b", "c"])]);
    }
}
