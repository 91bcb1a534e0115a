//! Watch: a chunked stream of `{"type":…,"object":…}` lines from a given
//! resourceVersion, with ADDED / MODIFIED / DELETED in resourceVersion order,
//! BOOKMARKs when asked for, `timeoutSeconds`, and an ERROR event with
//! `410 Expired` when the asked resourceVersion is older than the history
//! kept — so kube-runtime's watcher relists.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Shared;
use super::api::{self, Filters};
use super::error::ApiError;
use super::representation::{self, Representation};
use super::request::{Query, Target};
use super::store::{Change, EventType};
use super::table;

/// How a watch starts.
enum Start {
    /// Synthetic ADDED events for what exists now, then changes.
    CurrentState { initial_events_end_bookmark: bool },
    /// Changes after this revision.
    After(u64),
}

/// Starts a watch and returns the channel its lines arrive on.
pub fn start(
    shared: Arc<Shared>,
    t: Target,
    q: &Query,
    representation: Representation,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let filters = Filters::parse(&t.rt, q)?;
    let send_initial = q.get("sendInitialEvents") == Some("true");
    let start = match q.get("resourceVersion") {
        None | Some("0") => Start::CurrentState { initial_events_end_bookmark: send_initial },
        Some(_) if send_initial => Start::CurrentState { initial_events_end_bookmark: true },
        Some(rv) => {
            let rv: u64 = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
            // A revision the server has not reached is refused, as the API
            // server does, rather than waited for.
            let current = shared.lock()?.store.revision();
            if rv > current {
                return Err(ApiError::new(
                    504,
                    "Timeout",
                    format!("Timeout: Too large resource version: {rv}, current: {current}"),
                ));
            }
            Start::After(rv)
        }
    };
    let timeout = Duration::from_secs(q.u64("timeoutSeconds")?.unwrap_or(1800));
    let bookmarks = q.flag("allowWatchBookmarks");
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let watcher = Watcher { shared, t, filters, representation, bookmarks, tx };
        watcher.run(start, timeout).await;
    });
    Ok(rx)
}

struct Watcher {
    shared: Arc<Shared>,
    t: Target,
    filters: Filters,
    representation: Representation,
    bookmarks: bool,
    tx: mpsc::Sender<Bytes>,
}

impl Watcher {
    async fn run(self, start: Start, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.shared.changes.subscribe();
        let mut epoch = self.shared.watch_epoch.subscribe();
        epoch.mark_unchanged();
        let (mut position, initial, end_bookmark) = {
            let Ok(state) = self.shared.state.lock() else {
                return;
            };
            match start {
                Start::After(rv) => (rv, Vec::new(), false),
                Start::CurrentState { initial_events_end_bookmark } => {
                    let namespace = if self.t.rt.namespaced { self.t.namespace.as_deref() } else { None };
                    let objects: Vec<Value> = state
                        .store
                        .list(&self.t.rt.storage_key, namespace)
                        .map(|o| api_present(&self.t, o))
                        .filter(|o| self.filters.matches(o))
                        .collect();
                    (state.store.revision(), objects, initial_events_end_bookmark)
                }
            }
        };
        for object in initial {
            if !self.send("ADDED", &object).await {
                return;
            }
        }
        if end_bookmark && !self.send_bookmark(position, true).await {
            return;
        }
        let bookmark_every = self.shared.config.bookmark_interval;
        let mut last_sent = tokio::time::Instant::now();
        loop {
            if epoch.has_changed().unwrap_or(true) {
                return;
            }
            let batch = {
                let Ok(state) = self.shared.state.lock() else {
                    return;
                };
                let changes = state.store.changes_since(position, |c| self.concerns(c));
                match changes {
                    Ok(changes) => Ok((changes, state.store.revision())),
                    Err(compacted) => Err(ApiError::gone(position, compacted.oldest)),
                }
            };
            match batch {
                Err(gone) => {
                    self.send_line(&json!({"type": "ERROR", "object": gone.to_status()})).await;
                    return;
                }
                Ok((changes, revision)) => {
                    for change in changes {
                        if let Some((kind, object)) = self.translate(&change)
                            && !self.send(kind, &object).await
                        {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                    position = revision;
                }
            }
            let next_bookmark = last_sent + bookmark_every;
            let wake = if self.bookmarks { next_bookmark.min(deadline) } else { deadline };
            tokio::select! {
                biased;
                _ = epoch.changed() => return,
                result = changed.changed() => {
                    if result.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        return;
                    }
                    if self.bookmarks {
                        if !self.send_bookmark(position, false).await {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                }
                _ = self.tx.closed() => return,
            }
        }
    }

    fn concerns(&self, change: &Change) -> bool {
        change.storage_key == self.t.rt.storage_key
            && (!self.t.rt.namespaced || self.t.namespace.as_deref().is_none_or(|ns| ns == change.namespace))
    }

    /// The event a change is for this watch, given its selectors: an object
    /// entering the selection is ADDED, one leaving it DELETED.
    fn translate(&self, change: &Change) -> Option<(&'static str, Value)> {
        let object = api_present(&self.t, &change.object);
        let now = self.filters.matches(&object);
        let before = change.previous.as_ref().map(|p| self.filters.matches(&api_present(&self.t, p)));
        match (change.event_type, before, now) {
            (EventType::Added, _, true) => Some(("ADDED", object)),
            (EventType::Modified, Some(true), true) => Some(("MODIFIED", object)),
            (EventType::Modified, Some(false) | None, true) => Some(("ADDED", object)),
            (EventType::Modified, Some(true), false) => Some(("DELETED", object)),
            (EventType::Deleted, _, true) => Some(("DELETED", object)),
            _ => None,
        }
    }

    async fn send(&self, kind: &str, object: &Value) -> bool {
        let object = match self.representation {
            Representation::Table(include) => table::for_resource(
                &self.t.rt,
                std::slice::from_ref(object),
                include,
                json!({"resourceVersion": object.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)}),
                k8s_openapi::jiff::Timestamp::now(),
            ),
            Representation::Metadata => representation::partial_object(object),
            Representation::Object => object.clone(),
        };
        self.send_line(&json!({"type": kind, "object": object})).await
    }

    async fn send_bookmark(&self, revision: u64, initial_events_end: bool) -> bool {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.t.rt.kind, "apiVersion": self.t.rt.api_version(), "metadata": metadata});
        // A metadata-only watch gets its bookmarks as metadata too.
        let object = match self.representation {
            Representation::Metadata => representation::partial_object(&object),
            Representation::Object | Representation::Table(_) => object,
        };
        self.send_line(&json!({"type": "BOOKMARK", "object": object})).await
    }

    async fn send_line(&self, line: &Value) -> bool {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        self.tx.send(Bytes::from(bytes)).await.is_ok()
    }
}

fn api_present(t: &Target, stored: &Value) -> Value {
    api::present(&t.rt, stored)
}
