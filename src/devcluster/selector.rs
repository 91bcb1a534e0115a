//! TEMPORARY stub; replaced by the full implementation.
use std::collections::BTreeMap;
#[derive(Debug)]
pub struct SelectorError(pub String);
impl std::fmt::Display for SelectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
pub struct LabelSelector(Vec<(String, String)>);
impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        Ok(LabelSelector(
            s.split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
                .collect(),
        ))
    }
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
pub struct FieldSelector(Vec<(String, String)>);
impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        Ok(FieldSelector(
            s.split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
                .collect(),
        ))
    }
    pub fn check_supported(&self, allowed: &[&str]) -> Result<(), SelectorError> {
        for (k, _) in &self.0 {
            if !allowed.contains(&k.as_str()) {
                return Err(SelectorError(format!("field label not supported: {k}")));
            }
        }
        Ok(())
    }
    pub fn matches(&self, object: &serde_json::Value) -> bool {
        self.0.iter().all(|(k, v)| {
            let mut cur = object;
            for part in k.split('.') {
                match cur.get(part) {
                    Some(c) => cur = c,
                    None => return v.is_empty(),
                }
            }
            cur.as_str() == Some(v)
        })
    }
}
