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
