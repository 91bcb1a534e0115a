//! TEMPORARY stub; replaced by the full implementation.
use serde_json::Value;
pub struct ApplyRequest<'a> {
    pub live: Option<&'a Value>,
    pub applied: &'a Value,
    pub manager: &'a str,
    pub force: bool,
    pub subresource: Option<&'a str>,
    pub api_version: &'a str,
    pub now: &'a str,
}
#[derive(Debug)]
pub struct ApplyConflicts {
    pub conflicts: Vec<String>,
}
impl std::fmt::Display for ApplyConflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Apply failed with {} conflicts", self.conflicts.len())
    }
}
pub fn apply(req: &ApplyRequest) -> Result<Value, ApplyConflicts> {
    let mut base = req.live.cloned().unwrap_or_else(|| req.applied.clone());
    json_patch::merge(&mut base, req.applied);
    Ok(base)
}
pub fn record_update(
    _old: Option<&Value>,
    new: &Value,
    _manager: &str,
    _subresource: Option<&str>,
    _api_version: &str,
    _now: &str,
) -> Value {
    new.clone()
}
