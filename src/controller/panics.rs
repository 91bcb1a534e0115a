//! A panic in one reconcile fails that reconcile, not the controller.
//!
//! kube-runtime runs every reconcile of a kind in one stream: a panic that
//! unwinds out of a reconcile future ends the stream, and with it every later
//! reconcile of every object of that kind, while the process lives on looking
//! healthy. Each reconciler's entry point runs its work through [`catching`],
//! which turns a panic into [`Error::Panicked`]: the `error_policy` then logs
//! it, counts it in `idsync_reconcile_errors_total{error="panic"}` and
//! requeues the object with a backoff, and the other objects carry on.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use super::Error;

/// Runs `reconcile`, turning a panic inside it into [`Error::Panicked`],
/// logged naming `object` (e.g. `ResyncRequest team-a/resync-hr`).
///
/// `AssertUnwindSafe` is sound here: what the future shares with the rest of
/// the operator (the Context's registries, the store) is behind locks that
/// either poison (and are handled as such where they are taken) or release
/// on unwind, and the object itself is re-read by the next reconcile.
pub async fn catching<T>(object: &str, reconcile: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    match AssertUnwindSafe(reconcile).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = message_of(payload.as_ref());
            tracing::error!(object, panic = %message, "reconcile panicked; it failed and will be retried");
            Err(Error::Panicked { message })
        }
    }
}

/// The text a panic was raised with (`panic!("...")`, `expect("...")`, an
/// overflow's "attempt to add with overflow"), when it is text.
pub fn message_of(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_panicking_reconcile_becomes_a_panicked_error() {
        let overflow = catching("ResyncRequest default/huge-ttl", async {
            let ttl: i64 = std::hint::black_box(i64::MAX);
            Ok::<i64, Error>(ttl + 1)
        })
        .await;
        match overflow {
            Err(Error::Panicked { message }) => assert!(message.contains("overflow"), "{message}"),
            other => panic!("expected Panicked, got {other:?}"),
        }
        let formatted = catching("Connection default/hr", async {
            let field = std::hint::black_box("cron");
            if !field.is_empty() {
                panic!("bad {field} input");
            }
            Ok::<(), Error>(())
        })
        .await;
        assert!(matches!(formatted, Err(Error::Panicked { message }) if message == "bad cron input"));
    }

    #[tokio::test]
    async fn a_reconcile_that_does_not_panic_is_untouched() {
        assert_eq!(catching("x", async { Ok::<u8, Error>(7) }).await.ok(), Some(7));
        let conflict = catching("x", async { Err::<u8, Error>(Error::Conflict("busy".into())) }).await;
        assert!(matches!(conflict, Err(Error::Conflict(m)) if m == "busy"));
    }

    /// What a controller does: one stream reconciling object after object.
    /// A panic in the second object's reconcile fails that one, and the
    /// third is still reconciled.
    #[tokio::test]
    async fn the_objects_after_a_panicking_one_are_still_reconciled() {
        let reconciled = Arc::new(AtomicUsize::new(0));
        let results: Vec<Result<&str, Error>> = futures::stream::iter(["first", "poisoned", "third"])
            .then(|name| {
                let reconciled = reconciled.clone();
                async move {
                    catching(name, async move {
                        if name == "poisoned" {
                            panic!("reconcile of {name} blew up");
                        }
                        reconciled.fetch_add(1, Ordering::SeqCst);
                        Ok(name)
                    })
                    .await
                }
            })
            .collect()
            .await;
        assert_eq!(reconciled.load(Ordering::SeqCst), 2);
        assert!(matches!(results[0], Ok("first")));
        assert!(matches!(&results[1], Err(e) if e.metric_label() == "panic"));
        assert!(matches!(results[2], Ok("third")));
    }
}
