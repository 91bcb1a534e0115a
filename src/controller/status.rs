//! Status writes: read the object, change its status, write it back with
//! the resourceVersion just read, and on a 409 start again — never a blind
//! overwrite of what another writer just wrote.

use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;

/// Most retries on conflicts before giving up (the next reconcile retries).
const MAX_ATTEMPTS: usize = 8;

/// Applies `change` to the latest status of `name` and writes it through
/// the status subresource. Returns the written object, or None when the
/// object is gone or `change` returned false (nothing to write).
pub async fn update<K>(api: &Api<K>, name: &str, mut change: impl FnMut(&mut K) -> bool) -> Result<Option<K>, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..MAX_ATTEMPTS {
        let Some(mut object) = api.get_opt(name).await.map_err(Error::Kube)? else {
            return Ok(None);
        };
        if !change(&mut object) {
            return Ok(None);
        }
        match api.replace_status(name, &PostParams::default(), &object).await {
            Ok(written) => return Ok(Some(written)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(name, resource_version = ?object.resource_version(), "status write conflicted; retrying");
                continue;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    Err(Error::Conflict(format!("the status of {name} kept changing under {MAX_ATTEMPTS} attempts to write it")))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use idsync_api::Connection;
    use idsync_api::connection::ConnectionStatus;
    use idsync_devcluster::{Config, DevCluster};
    use kube::api::{Api, PostParams};
    use tokio::runtime::Handle;

    use super::*;

    /// A devcluster with idsync's CRDs and the Connection `hr`.
    async fn cluster_with_connection() -> (DevCluster, Api<Connection>) {
        let cluster = DevCluster::start(Config::default()).await.expect("devcluster");
        let client = cluster.client().expect("client");
        crate::dev::install_crds(&client).await.expect("crds");
        let api: Api<Connection> = Api::namespaced(client, "default");
        api.create(&PostParams::default(), &Connection::test("hr").build()).await.expect("create");
        (cluster, api)
    }

    fn status(connection: &mut Connection) -> &mut ConnectionStatus {
        connection.status.get_or_insert_with(Default::default)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_change_is_written_to_the_status_and_returned() {
        let (_cluster, api) = cluster_with_connection().await;
        let written = update(&api, "hr", |c| {
            status(c).account_count = Some(3);
            true
        })
        .await
        .expect("update")
        .expect("written");
        assert_eq!(written.status.as_ref().and_then(|s| s.account_count), Some(3));
        let read = api.get("hr").await.expect("get");
        assert_eq!(read.status.and_then(|s| s.account_count), Some(3));
        assert_eq!(read.metadata.resource_version, written.metadata.resource_version);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_change_that_changes_nothing_writes_nothing() {
        let (_cluster, api) = cluster_with_connection().await;
        let before = api.get("hr").await.expect("get").metadata.resource_version;
        let written = update(&api, "hr", |_| false).await.expect("update");
        assert!(written.is_none());
        assert_eq!(api.get("hr").await.expect("get").metadata.resource_version, before);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_object_is_nothing_to_write() {
        let (_cluster, api) = cluster_with_connection().await;
        let called = Cell::new(false);
        let written = update(&api, "ghost", |_| {
            called.set(true);
            true
        })
        .await
        .expect("update");
        assert!(written.is_none());
        assert!(!called.get(), "nothing to change");
    }

    /// Another writer changes the status between our read and our write:
    /// the write conflicts, and the change is applied again to what the
    /// other writer wrote, so neither write is lost.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_conflicting_write_is_retried_on_the_latest_object() {
        let (_cluster, api) = cluster_with_connection().await;
        let attempts = Cell::new(0);
        let written = update(&api, "hr", |c| {
            attempts.set(attempts.get() + 1);
            if attempts.get() == 1 {
                // The other writer, between our read and our write.
                let mut other = c.clone();
                status(&mut other).last_handled_requested_at = Some("by-the-other-writer".into());
                tokio::task::block_in_place(|| {
                    Handle::current().block_on(api.replace_status("hr", &PostParams::default(), &other))
                })
                .expect("the other write");
            }
            status(c).account_count = Some(7);
            true
        })
        .await
        .expect("update")
        .expect("written");
        assert_eq!(attempts.get(), 2);
        let status = api.get("hr").await.expect("get").status.expect("status");
        assert_eq!(status.account_count, Some(7));
        assert_eq!(status.last_handled_requested_at.as_deref(), Some("by-the-other-writer"), "not overwritten");
        assert_eq!(written.status.expect("status").account_count, Some(7));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_status_that_keeps_changing_underneath_is_given_up_with_a_conflict() {
        let (_cluster, api) = cluster_with_connection().await;
        let attempts = Cell::new(0u64);
        let result = update(&api, "hr", |c| {
            attempts.set(attempts.get() + 1);
            let mut other = c.clone();
            status(&mut other).account_count = Some(attempts.get());
            tokio::task::block_in_place(|| {
                Handle::current().block_on(api.replace_status("hr", &PostParams::default(), &other))
            })
            .expect("the other write");
            status(c).last_handled_requested_at = Some("never-written".into());
            true
        })
        .await;
        assert_eq!(attempts.get(), MAX_ATTEMPTS as u64);
        match result {
            Err(Error::Conflict(message)) => assert!(message.contains("hr kept changing"), "{message}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        let status = api.get("hr").await.expect("get").status.expect("status");
        assert_eq!(status.last_handled_requested_at, None);
        assert_eq!(status.account_count, Some(MAX_ATTEMPTS as u64));
    }
}
