//! Objects, the global resourceVersion, and the bounded history of changes
//! that watches replay — the devcluster's etcd.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// (storage key, namespace or "", name)
pub type ObjectKey = (String, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Clone, Debug)]
pub struct Change {
    pub revision: u64,
    pub storage_key: String,
    pub namespace: String,
    pub event_type: EventType,
    pub object: Arc<Value>,
    /// The object before the change (none for an addition), so a watch with
    /// a selector can tell an object entering or leaving its selection.
    pub previous: Option<Arc<Value>>,
    /// When it was committed: history older than the window is compacted.
    pub at: Instant,
}

/// The history before `oldest` is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub oldest: u64,
}

pub struct Store {
    objects: BTreeMap<ObjectKey, Value>,
    revision: u64,
    history: VecDeque<Change>,
    history_limit: usize,
    /// How long a change stays in history, as etcd compacts by time (five
    /// minutes by default in Kubernetes): a client resuming from an older
    /// resourceVersion gets 410 Gone at once and relists.
    history_window: Duration,
    /// Changes with a revision at or below this are no longer in history.
    compacted_through: u64,
}

impl Store {
    pub fn new(history_limit: usize, history_window: Duration) -> Self {
        Store {
            objects: BTreeMap::new(),
            revision: 1,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            history_window,
            compacted_through: 0,
        }
    }

    /// The latest committed revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn get(&self, storage_key: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(storage_key.to_string(), namespace.to_string(), name.to_string()))
    }

    /// Objects of one storage key, in one namespace or all, ordered by
    /// namespace then name.
    pub fn list<'a>(
        &'a self,
        storage_key: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |((key, ns, _), _)| key == storage_key && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v)
    }

    /// Every stored object with its key.
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &Value)> {
        self.objects.iter()
    }

    /// Stores `object` under a new revision (written into its
    /// `metadata.resourceVersion`) and records the change.
    pub fn put(
        &mut self,
        storage_key: &str,
        namespace: &str,
        name: &str,
        mut object: Value,
        event: EventType,
    ) -> Arc<Value> {
        self.revision += 1;
        set_resource_version(&mut object, self.revision);
        let shared = Arc::new(object.clone());
        let previous = self
            .objects
            .insert((storage_key.to_string(), namespace.to_string(), name.to_string()), object)
            .map(Arc::new);
        self.record(storage_key, namespace, event, shared.clone(), previous);
        shared
    }

    /// Removes an object; the DELETED change carries the deletion's revision.
    pub fn remove(&mut self, storage_key: &str, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let mut object = self.objects.remove(&(storage_key.to_string(), namespace.to_string(), name.to_string()))?;
        self.revision += 1;
        set_resource_version(&mut object, self.revision);
        let shared = Arc::new(object);
        self.record(storage_key, namespace, EventType::Deleted, shared.clone(), Some(shared.clone()));
        Some(shared)
    }

    fn record(
        &mut self,
        storage_key: &str,
        namespace: &str,
        event_type: EventType,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        self.history.push_back(Change {
            revision: self.revision,
            storage_key: storage_key.to_string(),
            namespace: namespace.to_string(),
            event_type,
            object,
            previous,
            at: Instant::now(),
        });
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_through = dropped.revision;
            }
        }
        let window = self.history_window;
        while self.history.front().is_some_and(|c| c.at.elapsed() > window) {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_through = dropped.revision;
            }
        }
    }

    /// Changes after `revision` matching `filter`, oldest first; `Compacted`
    /// when some of them are no longer kept.
    pub fn changes_since(&self, revision: u64, filter: impl Fn(&Change) -> bool) -> Result<Vec<Change>, Compacted> {
        // Changes past the window count as compacted even before a write
        // prunes them (history is in commit order).
        let expired = self.history.iter().take_while(|c| c.at.elapsed() > self.history_window).last();
        let compacted_through = expired.map_or(self.compacted_through, |c| c.revision.max(self.compacted_through));
        if revision < compacted_through {
            return Err(Compacted { oldest: compacted_through + 1 });
        }
        Ok(self.history.iter().filter(|c| c.revision > revision && filter(c)).cloned().collect())
    }

    /// Drops all history, as an etcd compaction does: watches from any
    /// earlier revision get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_through = self.revision;
    }
}

fn set_resource_version(object: &mut Value, revision: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn revisions_increase_and_history_is_bounded() {
        let mut store = Store::new(2, Duration::from_secs(300));
        let a = store.put("cm", "ns", "a", json!({"metadata": {"name": "a"}}), EventType::Added);
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        store.put("cm", "ns", "b", json!({"metadata": {"name": "b"}}), EventType::Added);
        let removed = store.remove("cm", "ns", "a").expect("present");
        assert_eq!(removed["metadata"]["resourceVersion"], "4");
        assert_eq!(store.revision(), 4);
        // Only the last two changes (3 and 4) are kept: from revision 1 the
        // change at 2 would be missed, from 2 nothing is.
        assert_eq!(store.changes_since(1, |_| true).map(|c| c.len()), Err(Compacted { oldest: 3 }));
        assert_eq!(store.changes_since(2, |_| true).map(|c| c.len()), Ok(2));
        let kept = store.changes_since(3, |_| true).expect("kept");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].event_type, EventType::Deleted);
        store.compact();
        assert!(store.changes_since(3, |_| true).is_err());
        assert!(store.changes_since(4, |_| true).expect("current").is_empty());
    }
}
