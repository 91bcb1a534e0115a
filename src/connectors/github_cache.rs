//! The `github` provider's ETag cache: what GitHub answered to each GET of
//! the last read, with its `ETag`, so the next read asks with
//! `If-None-Match` and a `304 Not Modified` (which GitHub does not count
//! against the rate limit) stands for the same body again.
//!
//! A connector is built for each sync, so the cache lives in the process,
//! one scope per API, organisation and credential (a hash, never the
//! token). It holds the bodies of one read per scope: each finished read
//! replaces its scope's entries with the ones it used, so pages and teams
//! that are gone leave it. After a restart it is empty, and the first read
//! fetches everything again, as it would without it.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use bytes::Bytes;

/// At most this many scopes (connections) are kept; the least recently
/// used goes first.
const MAX_SCOPES: usize = 64;

/// One cached answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub etag: String,
    pub body: Bytes,
    /// The `Link` header's `next` URL.
    pub next: Option<String>,
}

#[derive(Debug, Default)]
struct Scope {
    entries: HashMap<String, Entry>,
    used: u64,
}

#[derive(Debug, Default)]
struct Cache {
    scopes: HashMap<String, Scope>,
    clock: u64,
}

impl Cache {
    fn get(&self, scope: &str, url: &str) -> Option<Entry> {
        self.scopes.get(scope)?.entries.get(url).cloned()
    }

    fn replace(&mut self, scope: &str, entries: HashMap<String, Entry>) {
        self.clock += 1;
        self.scopes.insert(scope.to_string(), Scope { entries, used: self.clock });
        while self.scopes.len() > MAX_SCOPES {
            let Some(oldest) = self.scopes.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone()) else {
                break;
            };
            self.scopes.remove(&oldest);
        }
    }
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(Cache::default()));

/// The cached answer to `url` in `scope`.
pub fn get(scope: &str, url: &str) -> Option<Entry> {
    CACHE.lock().ok()?.get(scope, url)
}

/// Replaces `scope`'s entries with those of a finished read.
pub fn replace(scope: &str, entries: HashMap<String, Entry>) {
    if let Ok(mut cache) = CACHE.lock() {
        cache.replace(scope, entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_read_replaces_its_scope_only() {
        let entry = |etag: &str| Entry { etag: etag.into(), body: Bytes::from_static(b"[]"), next: None };
        let mut cache = Cache::default();
        cache.replace("a", HashMap::from([("u1".to_string(), entry("1")), ("u2".to_string(), entry("2"))]));
        cache.replace("b", HashMap::from([("u1".to_string(), entry("b"))]));
        cache.replace("a", HashMap::from([("u1".to_string(), entry("3"))]));
        assert_eq!(cache.get("a", "u1"), Some(entry("3")));
        assert_eq!(cache.get("a", "u2"), None, "what the last read did not use is gone");
        assert_eq!(cache.get("b", "u1"), Some(entry("b")));
    }

    #[test]
    fn scopes_are_bounded() {
        let mut cache = Cache::default();
        for i in 0..(MAX_SCOPES + 5) {
            cache.replace(&format!("bounded-{i}"), HashMap::new());
        }
        assert!(cache.scopes.len() <= MAX_SCOPES);
        assert!(cache.scopes.contains_key(&format!("bounded-{}", MAX_SCOPES + 4)), "the newest stays");
    }
}
