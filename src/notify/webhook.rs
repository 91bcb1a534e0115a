//! Webhook delivery: a JSON POST with the headers `Idempotency-Key`,
//! `X-Idsync-Event` and, with a signing secret, `X-Idsync-Signature:
//! sha256=<hex>`, the HMAC-SHA256 of the raw body (as GitHub's
//! `X-Hub-Signature-256`). A 2xx answer is a delivery; anything else is
//! retried.

use std::time::Duration;

use idsync_api::notification::WebhookSettings;

use super::DeliveryError;
use crate::connectors::address::{AddressPolicy, CheckedResolver};

/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The signature header's value for `body` signed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// POSTs `body` to the webhook.
pub async fn send(
    settings: &WebhookSettings,
    policy: AddressPolicy,
    signing_secret: Option<&[u8]>,
    event: &str,
    key: &str,
    body: Vec<u8>,
) -> Result<(), DeliveryError> {
    let url = reqwest::Url::parse(&settings.url)
        .map_err(|e| DeliveryError::Config(format!("spec.webhook.url is not a URL: {e}")))?;
    policy
        .check_url_host(&url)
        .map_err(|refused| DeliveryError::AddressNotAllowed(format!("spec.webhook.url: {refused}")))?;
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .user_agent(concat!("idsync/", env!("CARGO_PKG_VERSION")))
        .timeout(TIMEOUT)
        // A redirect could lead past the address check; a webhook has one URL.
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(CheckedResolver { policy })
        .build()
        .map_err(|e| DeliveryError::Config(format!("cannot set up the HTTP client: {e}")))?;
    let mut request = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", key)
        .header("X-Idsync-Event", event);
    if let Some(secret) = signing_secret {
        request = request.header("X-Idsync-Signature", signature(secret, &body));
    }
    let response = request.body(body).send().await.map_err(|e| {
        match crate::connectors::address::AddressRefused::find(&e) {
            Some(refused) => DeliveryError::AddressNotAllowed(format!("spec.webhook.url: {refused}")),
            // Without the URL: it may carry a token in its path or query.
            None => DeliveryError::Transport(format!("the webhook did not answer: {}", describe(&e))),
        }
    })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Rejected(format!("the webhook answered HTTP {}", status.as_u16())))
    }
}

/// What went wrong with a request, without its URL.
fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection refused or unreachable"
    } else {
        "the request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> WebhookSettings {
        WebhookSettings { url: url.to_string(), signing_secret_ref: None }
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed_and_metadata_always() {
        let refused =
            send(&settings("http://127.0.0.1:9/hook"), AddressPolicy::default(), None, "SyncFailed", "k", Vec::new())
                .await;
        assert!(
            matches!(refused, Err(DeliveryError::AddressNotAllowed(ref m)) if m.contains("allowLoopback")),
            "{refused:?}"
        );
        let allowed = AddressPolicy { allow_loopback: true };
        let metadata =
            send(&settings("https://169.254.169.254/latest"), allowed, None, "SyncFailed", "k", Vec::new()).await;
        assert!(matches!(metadata, Err(DeliveryError::AddressNotAllowed(_))), "{metadata:?}");
    }

    #[test]
    fn the_signature_is_githubs_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
