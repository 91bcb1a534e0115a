//! Notifications by e-mail and webhook, delivered once from an outbox in
//! the store.
//!
//! - [`announce`]: the notices of syncs and requests, routed into the outbox.
//! - [`event`]: what a notification is about ([`event::Notice`]) and its
//!   idempotency key.
//! - [`render`]: a notice in words (mail subject and body, webhook payload).
//! - [`routing`]: which NotificationPolicies and providers an event goes to,
//!   as outbox entries.
//! - [`smtp`] and [`webhook`]: the two kinds of receiver.
//! - [`worker`]: sends due outbox entries with retries and backoff, and
//!   reports on the policies' status and in metrics.
//!
//! Events become outbox entries in the store's transaction that records
//! what they announce (a sync's result) or, for a request, with `INSERT OR
//! IGNORE` on the idempotency key when the request starts and finishes.
//! Credentials are read from their Secrets when sending, never stored in
//! the outbox, and never written to a log, a status, an Event or a message.

pub mod announce;
pub mod event;
pub mod render;
pub mod routing;
pub mod smtp;
pub mod webhook;
pub mod worker;

pub use event::Notice;
pub use routing::{Routes, Subject};

/// Why a delivery failed. Messages name what failed and never quote a
/// credential.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("NotificationProvider {0:?} not found")]
    ProviderNotFound(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    AddressNotAllowed(String),
    #[error("{0}")]
    Transport(String),
    /// The receiver answered, and refused.
    #[error("{0}")]
    Rejected(String),
    #[error("cannot read the provider's Secret: {0}")]
    Kube(String),
}

impl DeliveryError {
    /// The metric's `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            DeliveryError::ProviderNotFound(_) => "ProviderNotFound",
            DeliveryError::Config(_) => "InvalidConfiguration",
            DeliveryError::AddressNotAllowed(_) => "AddressNotAllowed",
            DeliveryError::Transport(_) => "Unreachable",
            DeliveryError::Rejected(_) => "Rejected",
            DeliveryError::Kube(_) => "KubernetesError",
        }
    }
}

/// The data of a Secret the provider names, if idsync may read it: of type
/// `idsync.dev/credentials` or labelled `idsync.dev/credentials=true`, as
/// for a Connection's Secrets.
pub(crate) async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, DeliveryError> {
    use k8s_openapi::api::core::v1::Secret;
    const CREDENTIALS: &str = "idsync.dev/credentials";
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let secret =
        secrets.get_opt(name).await.map_err(|e| DeliveryError::Kube(e.to_string()))?.ok_or_else(|| {
            DeliveryError::Config(format!("{field}: Secret {name:?} not found in namespace {namespace}"))
        })?;
    let usable = secret.type_.as_deref() == Some(CREDENTIALS)
        || secret.metadata.labels.as_ref().and_then(|l| l.get(CREDENTIALS)).is_some_and(|v| v == "true");
    if !usable {
        return Err(DeliveryError::Config(format!(
            "{field}: Secret {name:?} is not for idsync: give it type {CREDENTIALS} or the label {CREDENTIALS}=true"
        )));
    }
    let mut data: std::collections::BTreeMap<String, Vec<u8>> =
        secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    Ok(data)
}
