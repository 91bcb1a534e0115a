//! OAuth 2.0 client credentials against the Microsoft identity platform's
//! v2.0 token endpoint (`<loginEndpoint>/<tenant>/oauth2/v2.0/token`), with
//! a client secret or a certificate (an RS256-signed JWT client assertion).
//!
//! Tokens are cached process-wide until shortly before they expire, keyed by
//! the token endpoint, the client id and a hash of the credential: a
//! connector built for the next sync reuses the token, and a changed Secret
//! gets a new one. Credentials, assertions and tokens are registered as
//! secrets on every request, so no error quotes them.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderValue};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::wire::json_string_field;
use crate::connectors::http::{HttpClient, Request};
use crate::connectors::{ConnectorError, ProviderInputs, SECRET_FIELD};
use idsync_api::connection::MsGraphAuthentication;

/// A token is renewed this long before it expires, so that no request
/// leaves with a token that expires on the way.
const EXPIRY_MARGIN: Duration = Duration::from_secs(120);
/// How long a client assertion is valid (Entra ID accepts up to 10 minutes).
const ASSERTION_LIFETIME_SECS: i64 = 600;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The app's credential. `Debug` never shows it.
pub(super) enum Credential {
    Secret(String),
    Certificate { key: Box<RsaKeyPair>, x5t: String },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret([REDACTED])"),
            Credential::Certificate { x5t, .. } => write!(f, "Certificate(x5t {x5t}, key [REDACTED])"),
        }
    }
}

fn secret_config(message: impl Into<String>) -> ConnectorError {
    ConnectorError::Config { field: SECRET_FIELD.to_string(), message: message.into() }
}

impl Credential {
    /// The credential `authentication` asks for, from the Secret.
    pub(super) fn from_inputs(
        authentication: MsGraphAuthentication,
        inputs: &ProviderInputs,
    ) -> Result<(Credential, String), ConnectorError> {
        match authentication {
            MsGraphAuthentication::ClientSecret => {
                let secret = inputs.required_secret_text("clientSecret")?;
                let fingerprint = fingerprint(&["secret", &secret]);
                Ok((Credential::Secret(secret), fingerprint))
            }
            MsGraphAuthentication::Certificate => {
                let pem = inputs.required_secret_text("privateKey")?;
                let thumbprint = inputs.required_secret_text("certificateThumbprint")?;
                let key = parse_private_key(pem.as_bytes())?;
                let x5t = x5t(&thumbprint)?;
                let fingerprint = fingerprint(&["certificate", &pem, &x5t]);
                Ok((Credential::Certificate { key: Box::new(key), x5t }, fingerprint))
            }
        }
    }
}

/// An RSA private key from PEM: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`). The error never quotes the key.
pub fn parse_private_key(pem: &[u8]) -> Result<RsaKeyPair, ConnectorError> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| secret_config("key \"privateKey\" is not a PEM private key (BEGIN PRIVATE KEY)"))?;
    let parsed = match &der {
        PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        _ => return Err(secret_config("key \"privateKey\" is not an RSA key (only RSA keys sign RS256)")),
    };
    parsed.map_err(|e| secret_config(format!("key \"privateKey\" is not a usable RSA key: {e}")))
}

/// The `x5t` header from a certificate thumbprint: the SHA-1 thumbprint in
/// hex as the Entra portal shows it (colons and spaces allowed), or already
/// base64url.
pub fn x5t(thumbprint: &str) -> Result<String, ConnectorError> {
    let hex: String = thumbprint.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    if hex.len() == 40 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let bytes: Vec<u8> = (0..20).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect();
        return Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    }
    let trimmed = thumbprint.trim_end_matches('=');
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed) {
        Ok(bytes) if bytes.len() == 20 => Ok(trimmed.to_string()),
        _ => Err(secret_config(
            "key \"certificateThumbprint\" is neither a SHA-1 thumbprint in hex (40 digits) nor its base64url form",
        )),
    }
}

fn fingerprint(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    format!("{:x}", hash.finalize())
}

/// A client assertion (RFC 7523) for `audience` (the token endpoint),
/// signed RS256.
pub fn client_assertion(
    key: &RsaKeyPair,
    x5t: &str,
    client_id: &str,
    audience: &str,
) -> Result<String, ConnectorError> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = jiff::Timestamp::now().as_second();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
    let claims = serde_json::json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now,
        "nbf": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)
        .map_err(|_| secret_config("key \"privateKey\" could not sign the client assertion"))?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    renew_at: Instant,
}

/// Process-wide token cache: key → token.
fn cache() -> &'static Mutex<HashMap<String, CachedToken>> {
    static CACHE: OnceLock<Mutex<HashMap<String, CachedToken>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Gets (and caches) access tokens for one app and scope.
#[derive(Debug)]
pub(super) struct TokenSource {
    token_url: Url,
    client_id: String,
    scope: String,
    credential: Credential,
    cache_key: String,
}

impl TokenSource {
    pub(super) fn new(
        token_url: Url,
        client_id: &str,
        scope: String,
        credential: Credential,
        fingerprint: &str,
    ) -> Self {
        let cache_key = format!("{token_url}\n{client_id}\n{scope}\n{fingerprint}");
        TokenSource { token_url, client_id: client_id.to_string(), scope, credential, cache_key }
    }

    /// A token valid for a while yet: the cached one, or a new one.
    pub(super) async fn token(&self, client: &HttpClient) -> Result<String, ConnectorError> {
        if let Ok(cache) = cache().lock()
            && let Some(cached) = cache.get(&self.cache_key)
            && cached.renew_at > Instant::now()
        {
            return Ok(cached.token.clone());
        }
        let (token, lifetime) = self.request(client).await?;
        let renew_at = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN);
        if let Ok(mut cache) = cache().lock() {
            cache.insert(self.cache_key.clone(), CachedToken { token: token.clone(), renew_at });
        }
        Ok(token)
    }

    /// Forgets `token` (Graph refused it), so that the next call gets a new
    /// one.
    pub(super) fn invalidate(&self, token: &str) {
        if let Ok(mut cache) = cache().lock()
            && cache.get(&self.cache_key).is_some_and(|cached| cached.token == token)
        {
            cache.remove(&self.cache_key);
        }
    }

    async fn request(&self, client: &HttpClient) -> Result<(String, Duration), ConnectorError> {
        let audience = self.token_url.to_string();
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        let assertion;
        let secret = match &self.credential {
            Credential::Secret(secret) => {
                form.push(("client_secret", secret.as_str()));
                secret.as_str()
            }
            Credential::Certificate { key, x5t } => {
                assertion = client_assertion(key, x5t, &self.client_id, &audience)?;
                form.push(("client_assertion_type", ASSERTION_TYPE));
                form.push(("client_assertion", assertion.as_str()));
                assertion.as_str()
            }
        };
        let request = Request::post(self.token_url.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .secret(secret)
            .form(&form);
        let body: Value = client.json(&request, None).await.map_err(explain_token_error)?;
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ConnectorError::Unauthorized {
                message: "the token endpoint answered without an access_token".to_string(),
            })?
            .to_string();
        // v2.0 sends a number; the v1.0 endpoint sent a string.
        let seconds = match body.get("expires_in") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(300);
        tracing::debug!(token_url = %self.token_url, expires_in = seconds, "got a Microsoft Graph access token");
        Ok((token, Duration::from_secs(seconds)))
    }
}

/// Token endpoint failures: an OAuth error (400 `invalid_client`,
/// `unauthorized_client`, 401…) means the credentials or the app
/// registration are wrong, so the Connection stalls as Unauthorized with
/// the endpoint's `error` and the first line of its `error_description`
/// (the AADSTS code and text), never the credentials themselves.
fn explain_token_error(error: ConnectorError) -> ConnectorError {
    let summary = |message: &str| -> Option<String> {
        // The HttpClient quotes the start of the body only: a long
        // description may be cut, so read the two fields by name.
        let code = json_string_field(message, "error")?;
        let description = json_string_field(message, "error_description")
            .map(|d| d.split(['\r', '\n']).next().unwrap_or_default().trim().to_string())
            .filter(|d| !d.is_empty());
        Some(match description {
            Some(description) => format!("{code}: {description}"),
            None => code,
        })
    };
    match error {
        ConnectorError::Unauthorized { message } => match summary(&message) {
            Some(summary) => ConnectorError::Unauthorized {
                message: format!("the token endpoint refused the credentials: {summary}"),
            },
            None => ConnectorError::Unauthorized { message },
        },
        ConnectorError::Http { status: 400, message, .. } => {
            let summary = summary(&message).unwrap_or(message);
            ConnectorError::Unauthorized { message: format!("the token endpoint refused the request: {summary}") }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKCS8: &str = include_str!("../../../tests/fixtures/msgraph/test-key.pem");
    const PKCS1: &str = include_str!("../../../tests/fixtures/msgraph/test-key-pkcs1.pem");

    #[test]
    fn assertions_are_rs256_jwts_that_verify() {
        let key = parse_private_key(PKCS8.as_bytes()).unwrap();
        assert!(parse_private_key(PKCS1.as_bytes()).is_ok(), "PKCS#1 keys are read too");
        let jwt = client_assertion(&key, "x5t-value", "client-1", "https://login.example/t/oauth2/v2.0/token").unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap();
        let header: Value = serde_json::from_slice(&decode(parts[0])).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": "x5t-value"}));
        let claims: Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(claims["aud"], "https://login.example/t/oauth2/v2.0/token");
        assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some("client-1"), Some("client-1")));
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap(), ASSERTION_LIFETIME_SECS);
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.public().as_ref().to_vec(),
        );
        public.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &decode(parts[2])).expect("a valid signature");
        // Two assertions never share a jti.
        let again = client_assertion(&key, "x5t-value", "client-1", "aud").unwrap();
        assert_ne!(again.split('.').nth(1), Some(parts[1]));
    }

    #[test]
    fn bad_keys_and_thumbprints_are_named_never_shown() {
        let e =
            parse_private_key(b"-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n-----END PRIVATE KEY-----\n").unwrap_err();
        assert!(e.is_stalled());
        assert!(e.to_string().starts_with("spec.credentialsSecretRef: key \"privateKey\""), "{e}");
        assert!(!e.to_string().contains("SECRETSTUFF"));
        assert_eq!(
            x5t("3A:4F:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:01:02").unwrap(),
            "Ok8AESIzRFVmd4iZqrvM3e7_AQI"
        );
        assert_eq!(x5t("Ok8AESIzRFVmd4iZqrvM3e7_AQI").unwrap(), "Ok8AESIzRFVmd4iZqrvM3e7_AQI");
        assert!(x5t("not a thumbprint").is_err());
    }

    #[test]
    fn oauth_errors_become_unauthorized_with_the_aadsts_text() {
        let quoted = r#"POST https://login.example/t/oauth2/v2.0/token answered HTTP 401 Unauthorized: {"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1","error_codes":[7000215]} (check the credentials)"#;
        let e = explain_token_error(ConnectorError::Unauthorized { message: quoted.to_string() });
        assert_eq!(
            e.to_string(),
            "unauthorized: the token endpoint refused the credentials: invalid_client: AADSTS7000215: Invalid client secret provided."
        );
        let e = explain_token_error(ConnectorError::Http {
            page: None,
            status: 400,
            message: r#"POST x answered HTTP 400 Bad Request: {"error":"unauthorized_client","error_description":"AADSTS700016: Application not found"}"#.to_string(),
        });
        assert!(matches!(e, ConnectorError::Unauthorized { .. }), "{e:?}");
        assert!(e.to_string().contains("unauthorized_client: AADSTS700016"), "{e}");
    }
}
