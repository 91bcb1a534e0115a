//! The durable in-progress guard: one coordination.k8s.io Lease per
//! connection, held while its sync runs and renewed by a heartbeat. Because
//! it lives in the cluster, a restarted operator neither starts a second
//! sync of a connection nor leaves it "in progress" forever: a holder that
//! stopped renewing is expired, and whoever takes the Lease over marks the
//! dead holder's run Interrupted.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use super::Error;

const REQUEST_ANNOTATION: &str = "idsync.dev/request";
const MODE_ANNOTATION: &str = "idsync.dev/mode";

/// Who holds a connection's guard.
#[derive(Clone, Debug, PartialEq)]
pub struct Holder {
    pub identity: String,
    pub request: Option<String>,
    pub mode: String,
    pub since: Timestamp,
}

/// The outcome of trying to take a guard.
#[derive(Debug)]
pub enum Acquired {
    /// Taken; `expired` names a previous holder that died holding it.
    Taken { lease: Box<Lease>, expired: Option<Holder> },
    /// A live holder has it.
    Busy(Holder),
}

/// The name of a connection's guard Lease.
pub fn lease_name(connection: &str) -> String {
    let name = format!("idsync-sync-{connection}");
    if name.len() <= 253 {
        return name;
    }
    // Names near the limit: keep it unique with a hash of the whole name.
    let digest = crate::model::ContentHash::of(connection.as_bytes());
    let hex: String = digest.0.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("idsync-sync-{}-{hex}", &connection[..200])
}

fn holder_of(lease: &Lease) -> Option<Holder> {
    let spec = lease.spec.as_ref()?;
    let identity = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let annotations = lease.metadata.annotations.clone().unwrap_or_default();
    Some(Holder {
        identity,
        request: annotations.get(REQUEST_ANNOTATION).cloned().filter(|r| !r.is_empty()),
        mode: annotations.get(MODE_ANNOTATION).cloned().unwrap_or_default(),
        since: spec.acquire_time.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now),
    })
}

fn expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return true;
    };
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    renewed.is_none_or(|r| r + duration < now)
}

/// Takes the guard of `connection` for `identity`, unless a live holder has it.
pub async fn acquire(
    api: &Api<Lease>,
    connection: &str,
    identity: &str,
    request: Option<&str>,
    mode: &str,
    duration: Duration,
) -> Result<Acquired, Error> {
    let name = lease_name(connection);
    let now = Timestamp::now();
    let annotations = BTreeMap::from([
        (REQUEST_ANNOTATION.to_string(), request.unwrap_or_default().to_string()),
        (MODE_ANNOTATION.to_string(), mode.to_string()),
    ]);
    let spec = LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1)),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    match api.get_opt(&name).await.map_err(Error::Kube)? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    annotations: Some(annotations),
                    labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "idsync".to_string())])),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(lease) => Ok(Acquired::Taken { lease: Box::new(lease), expired: None }),
                // Someone else created it first: theirs.
                Err(kube::Error::Api(s)) if s.code == 409 => busy_or_retry(api, &name).await,
                Err(e) => Err(Error::Kube(e)),
            }
        }
        Some(existing) => {
            let previous = holder_of(&existing);
            if let Some(live) = previous.clone().filter(|_| !expired(&existing, now)) {
                return Ok(Acquired::Busy(live));
            }
            let mut lease = existing.clone();
            lease.metadata.annotations = Some(annotations);
            lease.spec = Some(spec);
            match api.replace(&name, &PostParams::default(), &lease).await {
                Ok(lease) => Ok(Acquired::Taken { lease: Box::new(lease), expired: previous }),
                Err(kube::Error::Api(s)) if s.code == 409 => busy_or_retry(api, &name).await,
                Err(e) => Err(Error::Kube(e)),
            }
        }
    }
}

fn unreachable_holder(lease: &Lease) -> Holder {
    Holder {
        identity: lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default(),
        request: None,
        mode: String::new(),
        since: Timestamp::now(),
    }
}

async fn busy_or_retry(api: &Api<Lease>, name: &str) -> Result<Acquired, Error> {
    let lease = api.get(name).await.map_err(Error::Kube)?;
    Ok(Acquired::Busy(holder_of(&lease).unwrap_or_else(|| unreachable_holder(&lease))))
}

/// Renews a held guard; false when it was lost (taken over or deleted).
pub async fn renew(api: &Api<Lease>, lease: &mut Lease, identity: &str) -> bool {
    let Some(name) = lease.metadata.name.clone() else {
        return false;
    };
    let mut renewed = lease.clone();
    if let Some(spec) = renewed.spec.as_mut() {
        spec.renew_time = Some(MicroTime(Timestamp::now()));
    }
    match api.replace(&name, &PostParams::default(), &renewed).await {
        Ok(written) => {
            let still_ours = written.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(identity);
            *lease = written;
            still_ours
        }
        Err(error) => {
            tracing::warn!(%error, lease = %name, "could not renew a sync guard");
            false
        }
    }
}

/// Gives the guard back by deleting the Lease, if it is still ours.
pub async fn release(api: &Api<Lease>, lease: &Lease) {
    let Some(name) = lease.metadata.name.clone() else {
        return;
    };
    let preconditions = kube::api::Preconditions {
        uid: lease.metadata.uid.clone(),
        resource_version: lease.metadata.resource_version.clone(),
    };
    let params = DeleteParams { preconditions: Some(preconditions), ..DeleteParams::default() };
    if let Err(error) = api.delete(&name, &params).await {
        tracing::debug!(%error, lease = %name, "sync guard already gone or taken over");
    }
}

/// The current holder of a connection's guard, if live.
pub async fn current(api: &Api<Lease>, connection: &str) -> Result<Option<Holder>, Error> {
    let Some(lease) = api.get_opt(&lease_name(connection)).await.map_err(Error::Kube)? else {
        return Ok(None);
    };
    Ok(if expired(&lease, Timestamp::now()) { None } else { holder_of(&lease) })
}
