//! A log of the writes the devcluster accepted: who made each, with which
//! verb, on which resource and object. It lets a test count what a client
//! wrote over a stretch of time, e.g. the API writes one sync costs the
//! operator. A bounded log rather than counts, so a test can say which
//! writes happened; the oldest entries go once it is full, since `idsync
//! dev` may run for days. Dry runs changed nothing and are not logged.

use std::collections::VecDeque;
use std::sync::Mutex;

/// How many writes the log keeps.
const CAPACITY: usize = 10_000;

/// One accepted write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// Its place in the log: increasing, never reused.
    pub seq: u64,
    pub user: String,
    /// create, update, patch, delete or deletecollection.
    pub verb: String,
    /// `plural` or `plural.group`, with `/subresource` when it names one,
    /// e.g. `leases.coordination.k8s.io` or `connections.idsync.dev/status`.
    pub resource: String,
    pub namespace: Option<String>,
    /// The object's name; None for a create that let the server name it.
    pub name: Option<String>,
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, " {ns}/{name}"),
            (None, Some(name)) => write!(f, " {name}"),
            _ => Ok(()),
        }
    }
}

/// The log.
#[derive(Debug, Default)]
pub struct Writes {
    log: Mutex<(u64, VecDeque<Write>)>,
}

impl Writes {
    pub fn record(&self, user: &str, verb: &str, resource: String, namespace: Option<String>, name: Option<String>) {
        // A poisoned log is still a log: a panic elsewhere must not stop
        // writes being logged.
        let mut log = self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (next, entries) = &mut *log;
        *next += 1;
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back(Write {
            seq: *next,
            user: user.to_string(),
            verb: verb.to_string(),
            resource,
            namespace,
            name,
        });
    }

    /// The sequence number of the latest write (0 before any): writes after
    /// it are those [`Writes::since`] returns.
    pub fn mark(&self) -> u64 {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).0
    }

    /// The writes kept whose sequence number is above `mark`, oldest first.
    pub fn since(&self, mark: u64) -> Vec<Write> {
        let log = self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        log.1.iter().filter(|w| w.seq > mark).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_logged_in_order_after_a_mark() {
        let writes = Writes::default();
        writes.record("op", "create", "events.events.k8s.io".into(), Some("default".into()), Some("e1".into()));
        let mark = writes.mark();
        assert_eq!(mark, 1);
        writes.record(
            "op",
            "update",
            "connections.idsync.dev/status".into(),
            Some("default".into()),
            Some("hr".into()),
        );
        writes.record("admin", "delete", "leases.coordination.k8s.io".into(), None, Some("l".into()));
        let after: Vec<String> = writes.since(mark).iter().map(|w| format!("{} {w}", w.user)).collect();
        assert_eq!(
            after,
            ["op update connections.idsync.dev/status default/hr", "admin delete leases.coordination.k8s.io l"]
        );
    }

    #[test]
    fn the_log_keeps_the_latest_writes_once_full() {
        let writes = Writes::default();
        for i in 0..CAPACITY + 5 {
            writes.record("op", "create", "events".into(), None, Some(format!("e{i}")));
        }
        let kept = writes.since(0);
        assert_eq!(kept.len(), CAPACITY);
        assert_eq!(kept[0].name.as_deref(), Some("e5"));
        assert_eq!(writes.mark(), (CAPACITY + 5) as u64);
    }
}
