//! What a Connection's provider needs from the cluster — its credentials
//! Secret and, for a csv export, the ConfigMap or Secret key holding it —
//! and the checks that make a Connection Stalled when they are missing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;

use super::Error;
use crate::connectors::ProviderInputs;
use idsync_api::{Connection, Provider};

/// A problem a person must fix, for the `Stalled` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// Reads the provider's inputs, or says what is missing.
pub async fn resolve(client: &kube::Client, connection: &Connection) -> Result<Result<ProviderInputs, Problem>, Error> {
    let namespace = connection.metadata.namespace.clone().unwrap_or_else(|| "default".to_string());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut inputs = ProviderInputs::default();
    if let Some(reference) = &connection.spec.credentials_secret_ref {
        match secrets.get_opt(&reference.name).await.map_err(Error::Kube)? {
            Some(secret) if !usable(&secret) => {
                return Ok(Err(not_usable("spec.credentialsSecretRef", &reference.name, &secret)));
            }
            Some(secret) => inputs.secret = secret_data(&secret),
            None => {
                return Ok(Err(Problem {
                    reason: "SecretNotFound",
                    message: format!(
                        "spec.credentialsSecretRef: Secret {:?} not found in namespace {namespace}",
                        reference.name
                    ),
                }));
            }
        }
    }
    if let Provider::Csv(csv) = &connection.spec.provider {
        if let Some(key_ref) = &csv.source.config_map_key_ref {
            let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            let Some(config_map) = config_maps.get_opt(&key_ref.name).await.map_err(Error::Kube)? else {
                return Ok(Err(Problem {
                    reason: "ConfigMapNotFound",
                    message: format!(
                        "spec.provider.csv.source.configMapKeyRef: ConfigMap {:?} not found in namespace {namespace}",
                        key_ref.name
                    ),
                }));
            };
            let data = config_map
                .data
                .as_ref()
                .and_then(|d| d.get(&key_ref.key))
                .map(|s| s.as_bytes().to_vec())
                .or_else(|| config_map.binary_data.as_ref().and_then(|d| d.get(&key_ref.key)).map(|b| b.0.clone()));
            match data {
                Some(bytes) => inputs.csv_data = Some(bytes),
                None => {
                    return Ok(Err(Problem {
                        reason: "KeyNotFound",
                        message: format!(
                            "spec.provider.csv.source.configMapKeyRef: ConfigMap {:?} has no key {:?}",
                            key_ref.name, key_ref.key
                        ),
                    }));
                }
            }
        }
        if let Some(key_ref) = &csv.source.secret_key_ref {
            let Some(secret) = secrets.get_opt(&key_ref.name).await.map_err(Error::Kube)? else {
                return Ok(Err(Problem {
                    reason: "SecretNotFound",
                    message: format!(
                        "spec.provider.csv.source.secretKeyRef: Secret {:?} not found in namespace {namespace}",
                        key_ref.name
                    ),
                }));
            };
            if !usable(&secret) {
                return Ok(Err(not_usable("spec.provider.csv.source.secretKeyRef", &key_ref.name, &secret)));
            }
            match secret_data(&secret).remove(&key_ref.key) {
                Some(bytes) => inputs.csv_data = Some(bytes),
                None => {
                    return Ok(Err(Problem {
                        reason: "KeyNotFound",
                        message: format!(
                            "spec.provider.csv.source.secretKeyRef: Secret {:?} has no key {:?}",
                            key_ref.name, key_ref.key
                        ),
                    }));
                }
            }
        }
    }
    Ok(Ok(inputs))
}

/// The Secret type a Connection may read without more ado.
pub const CREDENTIALS_TYPE: &str = "idsync.dev/credentials";
/// The label that lets a Connection read a Secret of another type.
pub const CREDENTIALS_LABEL: &str = "idsync.dev/credentials";

/// Whether Connections may read the Secret: one of type
/// `idsync.dev/credentials`, or labelled `idsync.dev/credentials: "true"`.
/// Anyone who may create a Connection would otherwise be able to read (and
/// send to any URL) every Secret of its namespace.
pub fn usable(secret: &Secret) -> bool {
    secret.type_.as_deref() == Some(CREDENTIALS_TYPE)
        || secret.metadata.labels.as_ref().and_then(|l| l.get(CREDENTIALS_LABEL)).is_some_and(|v| v == "true")
}

fn not_usable(field: &str, name: &str, secret: &Secret) -> Problem {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    Problem {
        reason: "SecretNotAllowed",
        message: format!(
            "{field}: Secret {name:?} (type {kind}) is not marked for idsync; Connections read only Secrets of type \
             {CREDENTIALS_TYPE} (kubectl create secret generic {name} --type={CREDENTIALS_TYPE} ...) or labelled \
             {CREDENTIALS_LABEL}=true (kubectl label secret {name} {CREDENTIALS_LABEL}=true)"
        ),
    }
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> =
        secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    for (k, v) in secret.string_data.clone().unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

/// A hash of the provider settings a cursor belongs to.
pub fn settings_hash(connection: &Connection) -> String {
    let settings = serde_json::to_string(&connection.spec.provider).unwrap_or_default();
    crate::model::ContentHash::of(settings.as_bytes()).0.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
