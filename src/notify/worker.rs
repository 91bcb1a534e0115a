//! The outbox worker: sends due notifications, one attempt each, records
//! the attempt in the store, retries failures with exponential backoff and
//! jitter (10 s, 20 s, 40 s… capped at an hour) and gives up a day after
//! the notification was written. What happened is reported in batches on
//! the policies' status (never per mail) and in metrics. Runs only on the
//! leader, beside the controllers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use idsync_api::conditions::{FALSE, READY, TRUE, set_condition};
use idsync_api::notification::DELIVERING;
use idsync_api::{NotificationPolicy, NotificationProvider};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::PostParams;

use super::event::Notice;
use super::{DeliveryError, render, secret_data, smtp, webhook};
use crate::connectors::address::AddressPolicy;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::outbox::{Delivery, PendingNotification};

/// The first retry's delay; each next one doubles, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long a notification is tried before it is given up.
pub const GIVE_UP_AFTER: SignedDuration = SignedDuration::from_hours(24);
/// How often the worker looks for due notifications when idle.
const POLL: Duration = Duration::from_millis(500);
/// Notifications sent per round.
const BATCH: usize = 50;
/// How often every policy's `Ready` is checked (its providers exist), so a
/// policy that has sent nothing yet still says whether it could.
const READINESS_EVERY: Duration = Duration::from_secs(30);

/// A test-only fail point: with `IDSYNC_NOTIFY_FAILPOINT=abort-before-send`
/// the process aborts when it is about to send a notification, after the
/// notification was committed: how the tests prove that one written before
/// a crash is sent, once, after the restart.
const FAILPOINT_ENV: &str = "IDSYNC_NOTIFY_FAILPOINT";

/// The delay before attempt `attempts + 1`, jittered by up to ±20% so that
/// notifications failing together do not retry together.
pub fn backoff(attempts: u32, jitter: f64) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(attempts.min(20))).min(MAX_BACKOFF);
    base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// Runs the worker until `stop` resolves.
pub async fn run(
    client: kube::Client,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    let mut stop = std::pin::pin!(stop);
    let mut batch = StatusBatch::default();
    let mut readiness_checked: Option<tokio::time::Instant> = None;
    loop {
        if readiness_checked.is_none_or(|at| at.elapsed() >= READINESS_EVERY) {
            check_readiness(&client).await;
            readiness_checked = Some(tokio::time::Instant::now());
        }
        let due = {
            let store = store.clone();
            let now = Timestamp::now();
            tokio::task::spawn_blocking(move || store.due_notifications(now, BATCH)).await
        };
        match due {
            Ok(Ok(due)) => {
                for item in due {
                    deliver(&client, &store, &metrics, &mut batch, item).await;
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot read the notification outbox"),
            Err(error) => tracing::warn!(%error, "cannot read the notification outbox"),
        }
        batch.flush(&client).await;
        let depth = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.outbox_depth()).await
        };
        if let Ok(Ok(depth)) = depth {
            metrics.set_outbox_depth(depth);
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One attempt at one notification, recorded in the store, the batch and
/// the metrics.
async fn deliver(
    client: &kube::Client,
    store: &Arc<dyn Store>,
    metrics: &Metrics,
    batch: &mut StatusBatch,
    item: PendingNotification,
) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == "abort-before-send") {
        tracing::error!(key = %item.entry.key, "fail point {FAILPOINT_ENV}: aborting before sending");
        std::process::abort();
    }
    let entry = &item.entry;
    let provider_label = format!("{}/{}", entry.namespace, entry.provider);
    let result = attempt(client, &item).await;
    let now = Timestamp::now();
    let delivery = match &result {
        Ok(()) => {
            tracing::info!(key = %entry.key, event = %entry.event, provider = %provider_label, "notification sent");
            metrics.notification_sent(&provider_label);
            Delivery::Sent { at: now }
        }
        Err(error) => {
            metrics.notification_failed(&provider_label, error.reason());
            let message = format!("provider {}: {error}", entry.provider);
            if now.duration_since(entry.created_at) >= GIVE_UP_AFTER {
                tracing::warn!(key = %entry.key, provider = %provider_label, %error, "notification given up after a day of failed attempts");
                Delivery::GaveUp { at: now, error: message }
            } else {
                let wait = backoff(item.attempts, fastrand::f64());
                tracing::warn!(key = %entry.key, provider = %provider_label, %error, retry_in_s = wait.as_secs(), "notification not delivered; will retry");
                let next = now + SignedDuration::try_from(wait).unwrap_or(SignedDuration::from_secs(3600));
                Delivery::Retry { at: now, next, error: message }
            }
        }
    };
    if let Some(policy) = &entry.policy {
        batch.record(&entry.namespace, policy, &delivery);
    }
    let (store, id, recorded) = (store.clone(), item.id, delivery.clone());
    match tokio::task::spawn_blocking(move || store.record_delivery(id, &recorded)).await {
        Ok(Ok(())) => {}
        // The notification stays due and is tried again: a receiver may see
        // it twice, with the same idempotency key.
        Ok(Err(error)) => tracing::warn!(%error, key = %entry.key, "cannot record a notification's delivery"),
        Err(error) => tracing::warn!(%error, key = %entry.key, "cannot record a notification's delivery"),
    }
}

/// Sends one notification through its provider.
async fn attempt(client: &kube::Client, item: &PendingNotification) -> Result<(), DeliveryError> {
    let entry = &item.entry;
    let notice: Notice = serde_json::from_str(&entry.payload)
        .map_err(|e| DeliveryError::Config(format!("the stored notification does not decode: {e}")))?;
    let providers: Api<NotificationProvider> = Api::namespaced(client.clone(), &entry.namespace);
    let provider = providers
        .get_opt(&entry.provider)
        .await
        .map_err(|e| DeliveryError::Kube(e.to_string()))?
        .ok_or_else(|| DeliveryError::ProviderNotFound(entry.provider.clone()))?;
    let policy = AddressPolicy { allow_loopback: provider.spec.network.allow_loopback };
    if let Some(settings) = &provider.spec.smtp {
        let mut secrets = smtp::SmtpSecrets::default();
        if let Some(reference) = &settings.credentials_secret_ref {
            let data = secret_data(client, &entry.namespace, &reference.name, "spec.smtp.credentialsSecretRef").await?;
            let key = |k: &str| {
                data.get(k).map(|v| String::from_utf8_lossy(v).into_owned()).ok_or_else(|| {
                    DeliveryError::Config(format!(
                        "spec.smtp.credentialsSecretRef: Secret {:?} has no key {k:?}",
                        reference.name
                    ))
                })
            };
            secrets.login = Some((key("username")?, key("password")?));
        }
        if let Some(ca) = &settings.ca {
            secrets.ca_pem = Some(ca_bundle(client, &entry.namespace, ca).await?);
        }
        let mail = smtp::Mail {
            to: &entry.recipients,
            subject: render::subject(&notice),
            body: render::body(&notice),
            key: &entry.key,
        };
        smtp::send(settings, policy, secrets, &mail).await
    } else if let Some(settings) = &provider.spec.webhook {
        let signing = match &settings.signing_secret_ref {
            Some(reference) => {
                let data =
                    secret_data(client, &entry.namespace, &reference.name, "spec.webhook.signingSecretRef").await?;
                Some(data.get(&reference.key).cloned().ok_or_else(|| {
                    DeliveryError::Config(format!(
                        "spec.webhook.signingSecretRef: Secret {:?} has no key {:?}",
                        reference.name, reference.key
                    ))
                })?)
            }
            None => None,
        };
        let body = serde_json::to_vec(&render::payload(&notice, &entry.key))
            .map_err(|e| DeliveryError::Config(format!("cannot encode the payload: {e}")))?;
        webhook::send(settings, policy, signing.as_deref(), &entry.event, &entry.key, body).await
    } else {
        Err(DeliveryError::Config("the provider has neither smtp nor webhook".into()))
    }
}

async fn ca_bundle(
    client: &kube::Client,
    namespace: &str,
    ca: &idsync_api::notification::CaReference,
) -> Result<Vec<u8>, DeliveryError> {
    if let Some(reference) = &ca.secret_key_ref {
        let data = secret_data(client, namespace, &reference.name, "spec.smtp.ca.secretKeyRef").await?;
        return data.get(&reference.key).cloned().ok_or_else(|| {
            DeliveryError::Config(format!(
                "spec.smtp.ca.secretKeyRef: Secret {:?} has no key {:?}",
                reference.name, reference.key
            ))
        });
    }
    let Some(reference) = &ca.config_map_key_ref else {
        return Err(DeliveryError::Config("spec.smtp.ca names neither a ConfigMap nor a Secret".into()));
    };
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map =
        maps.get_opt(&reference.name).await.map_err(|e| DeliveryError::Kube(e.to_string()))?.ok_or_else(|| {
            DeliveryError::Config(format!("spec.smtp.ca.configMapKeyRef: ConfigMap {:?} not found", reference.name))
        })?;
    map.data.and_then(|mut d| d.remove(&reference.key)).map(String::into_bytes).ok_or_else(|| {
        DeliveryError::Config(format!(
            "spec.smtp.ca.configMapKeyRef: ConfigMap {:?} has no key {:?}",
            reference.name, reference.key
        ))
    })
}

/// What happened to one policy's notifications since its status was last
/// written.
#[derive(Clone, Debug, Default, PartialEq)]
struct PolicyDelta {
    delivered: u64,
    failed: u64,
    abandoned: u64,
    last_delivery: Option<Timestamp>,
    last_failure: Option<(Timestamp, String)>,
    /// Whether the newest attempt failed.
    failing: bool,
}

/// The policies' status changes of a round, written once per policy.
#[derive(Debug, Default)]
struct StatusBatch {
    pending: HashMap<(String, String), PolicyDelta>,
}

impl StatusBatch {
    fn record(&mut self, namespace: &str, policy: &str, delivery: &Delivery) {
        let delta = self.pending.entry((namespace.to_string(), policy.to_string())).or_default();
        match delivery {
            Delivery::Sent { at } => {
                delta.delivered += 1;
                delta.last_delivery = Some(*at);
                delta.failing = false;
            }
            Delivery::Retry { at, error, .. } => {
                delta.failed += 1;
                delta.last_failure = Some((*at, error.clone()));
                delta.failing = true;
            }
            Delivery::GaveUp { at, error } => {
                delta.failed += 1;
                delta.abandoned += 1;
                delta.last_failure = Some((*at, error.clone()));
                delta.failing = true;
            }
        }
    }

    /// Writes each policy's status with the resourceVersion read; a delta
    /// that could not be written is kept for the next round.
    async fn flush(&mut self, client: &kube::Client) {
        let pending = std::mem::take(&mut self.pending);
        for ((namespace, name), delta) in pending {
            match write_status(client, &namespace, &name, &delta).await {
                Ok(()) => {}
                Err(error) => {
                    tracing::debug!(%error, policy = %name, namespace = %namespace, "cannot write the policy's status yet");
                    self.pending.insert((namespace, name), delta);
                }
            }
        }
    }
}

/// Sets `Ready` on every policy: True when each provider it names exists.
/// Written only when it changed, with the resourceVersion read.
async fn check_readiness(client: &kube::Client) {
    let params = kube::api::ListParams::default();
    let (policies, providers) =
        (Api::<NotificationPolicy>::all(client.clone()), Api::<NotificationProvider>::all(client.clone()));
    let (policies, providers) = futures::join!(policies.list(&params), providers.list(&params));
    let (policies, providers) = match (policies, providers) {
        (Ok(policies), Ok(providers)) => (policies.items, providers.items),
        (Err(error), _) | (_, Err(error)) => {
            tracing::debug!(%error, "cannot list the notification policies and providers");
            return;
        }
    };
    let exists = |namespace: &str, name: &str| {
        providers
            .iter()
            .any(|p| p.metadata.namespace.as_deref() == Some(namespace) && p.metadata.name.as_deref() == Some(name))
    };
    for mut policy in policies {
        let (Some(namespace), Some(name)) = (policy.metadata.namespace.clone(), policy.metadata.name.clone()) else {
            continue;
        };
        let missing: Vec<String> =
            policy.spec.providers.iter().filter(|r| !exists(&namespace, &r.name)).map(|r| r.name.clone()).collect();
        let generation = policy.metadata.generation;
        let status = policy.status.get_or_insert_with(Default::default);
        let changed = set_ready(status, &missing, generation) | (status.observed_generation != generation);
        status.observed_generation = generation;
        if changed {
            let api: Api<NotificationPolicy> = Api::namespaced(client.clone(), &namespace);
            if let Err(error) = api.replace_status(&name, &PostParams::default(), &policy).await {
                // A conflict or a deletion: the next check sees the new object.
                tracing::debug!(%error, policy = %name, namespace = %namespace, "cannot write the policy's readiness");
            }
        }
    }
}

/// Sets `Ready` from the providers a policy names that do not exist.
/// Returns whether it changed.
fn set_ready(status: &mut idsync_api::NotificationPolicyStatus, missing: &[String], generation: Option<i64>) -> bool {
    let now = Time(Timestamp::now());
    if missing.is_empty() {
        set_condition(
            &mut status.conditions,
            READY,
            TRUE,
            "ProvidersFound",
            "every provider it names exists",
            generation,
            now,
        )
    } else {
        let message = format!("NotificationProvider not found: {}", missing.join(", "));
        set_condition(&mut status.conditions, READY, FALSE, "ProviderNotFound", &message, generation, now)
    }
}

async fn write_status(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    delta: &PolicyDelta,
) -> Result<(), kube::Error> {
    let policies: Api<NotificationPolicy> = Api::namespaced(client.clone(), namespace);
    let Some(mut policy) = policies.get_opt(name).await? else {
        // Deleted: nobody reads its status any more.
        return Ok(());
    };
    let providers: Api<NotificationProvider> = Api::namespaced(client.clone(), namespace);
    let mut missing = Vec::new();
    for route in &policy.spec.providers {
        if providers.get_opt(&route.name).await?.is_none() {
            missing.push(route.name.clone());
        }
    }
    let generation = policy.metadata.generation;
    let mut status = policy.status.take().unwrap_or_default();
    let now = Time(Timestamp::now());
    status.delivered = status.delivered.saturating_add(delta.delivered);
    status.failed_deliveries = status.failed_deliveries.saturating_add(delta.failed);
    status.abandoned = status.abandoned.saturating_add(delta.abandoned);
    if let Some(at) = delta.last_delivery {
        status.last_delivery_time = Some(Time(at));
    }
    if let Some((at, message)) = &delta.last_failure {
        status.last_failure_time = Some(Time(*at));
        status.last_failure_message = message.clone();
    }
    status.observed_generation = generation;
    set_ready(&mut status, &missing, generation);
    if delta.failing {
        let message = format!("the last delivery failed and is retried with backoff: {}", status.last_failure_message);
        set_condition(&mut status.conditions, DELIVERING, FALSE, "DeliveryFailing", &message, generation, now);
    } else {
        set_condition(
            &mut status.conditions,
            DELIVERING,
            TRUE,
            "Delivered",
            "notifications are delivered",
            generation,
            now,
        );
    }
    policy.status = Some(status);
    policies.replace_status(name, &PostParams::default(), &policy).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_to_an_hour_with_jitter() {
        assert_eq!(backoff(0, 0.5), Duration::from_secs(10));
        assert_eq!(backoff(1, 0.5), Duration::from_secs(20));
        assert_eq!(backoff(3, 0.5), Duration::from_secs(80));
        assert_eq!(backoff(12, 0.5), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX, 0.5), MAX_BACKOFF);
        assert_eq!(backoff(0, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(0, 1.0), Duration::from_secs(12));
    }

    #[test]
    fn a_batch_keeps_one_delta_per_policy_and_the_newest_state() {
        let mut batch = StatusBatch::default();
        let at = Timestamp::from_second(1_800_000_000).expect("time");
        let retry = Delivery::Retry { at, next: at, error: "provider mail: refused".into() };
        batch.record("default", "admins", &retry);
        batch.record("default", "admins", &Delivery::Sent { at });
        batch.record("default", "hr", &retry);
        let admins = &batch.pending[&("default".to_string(), "admins".to_string())];
        assert_eq!((admins.delivered, admins.failed, admins.failing), (1, 1, false));
        let hr = &batch.pending[&("default".to_string(), "hr".to_string())];
        assert_eq!((hr.delivered, hr.failed, hr.failing), (0, 1, true));
        assert_eq!(hr.last_failure.as_ref().map(|f| f.1.as_str()), Some("provider mail: refused"));
    }
}
