//! GitHub App authentication for the `github` provider: a JWT signed with
//! the App's private key (RS256), exchanged at
//! `POST /app/installations/{id}/access_tokens` for an installation token,
//! which is fetched again before its `expires_at`.
//!
//! The key comes as GitHub issues it, a PEM "RSA PRIVATE KEY" (PKCS#1), or
//! as a PKCS#8 "PRIVATE KEY" (what `openssl pkcs8 -topk8` makes of it).
//! ring reads both (`RsaKeyPair::from_der` takes PKCS#1's RSAPrivateKey),
//! so no conversion and no other crypto library is needed.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

use super::{ConnectorError, SECRET_FIELD};

/// How far in the past a JWT's `iat` is set, for clock drift (GitHub's
/// advice).
const IAT_BACKDATE_SECONDS: i64 = 60;
/// A JWT's lifetime from now: GitHub accepts at most 10 minutes.
const JWT_LIFETIME_SECONDS: i64 = 9 * 60;
/// An installation token this close to its expiry is fetched again.
pub const REFRESH_MARGIN_SECONDS: i64 = 5 * 60;

/// A GitHub App installation's credentials. `Debug` never shows the key.
pub struct AppCredentials {
    /// The App's id (or its client id: GitHub accepts either as `iss`).
    pub app_id: String,
    pub installation_id: String,
    key: RsaKeyPair,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

fn config(message: impl Into<String>) -> ConnectorError {
    ConnectorError::Config { field: SECRET_FIELD.to_string(), message: message.into() }
}

impl AppCredentials {
    /// From the Secret's `appId`, `installationId` and `privateKey` keys.
    /// Errors name the key and never show a value.
    pub fn new(app_id: &str, installation_id: &str, private_key_pem: &str) -> Result<Self, ConnectorError> {
        if !installation_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(config("key \"installationId\" must be the installation's number"));
        }
        if app_id.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')) {
            return Err(config("key \"appId\" must be the App's id or client id"));
        }
        Ok(AppCredentials {
            app_id: app_id.to_string(),
            installation_id: installation_id.to_string(),
            key: parse_private_key(private_key_pem)?,
        })
    }

    /// A JWT for the App, valid from a minute ago for nine minutes from
    /// `now` (seconds since the epoch).
    pub fn jwt(&self, now: i64) -> Result<String, ConnectorError> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        // A numeric App id goes as a number, a client id as a string: GitHub
        // documents both.
        let iss = match self.app_id.parse::<u64>() {
            Ok(id) => serde_json::Value::from(id),
            Err(_) => serde_json::Value::from(self.app_id.clone()),
        };
        let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iat": now - IAT_BACKDATE_SECONDS,
            "exp": now + JWT_LIFETIME_SECONDS,
            "iss": iss,
        });
        let payload = b64.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|_| config("key \"privateKey\" could not sign the App's JWT"))?;
        Ok(format!("{signing_input}.{}", b64.encode(signature)))
    }

    /// The public key (DER RSAPublicKey), for tests that check signatures.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.public().as_ref().to_vec()
    }
}

/// An RSA private key from PEM: PKCS#1 ("RSA PRIVATE KEY", as GitHub
/// issues it) or PKCS#8 ("PRIVATE KEY").
fn parse_private_key(pem: &str) -> Result<RsaKeyPair, ConnectorError> {
    let not_pem =
        || config("key \"privateKey\" is not a PEM RSA private key (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)");
    let (label, der) = pem_block(pem).ok_or_else(not_pem)?;
    let parsed = match label.as_str() {
        "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
        _ => return Err(not_pem()),
    };
    // ring's rejection names the problem ("InvalidEncoding", "TooSmall"),
    // never the key's content.
    parsed.map_err(|rejected| config(format!("key \"privateKey\" is not a usable RSA private key: {rejected}")))
}

/// The label and decoded content of the first PEM block of `text`.
fn pem_block(text: &str) -> Option<(String, Vec<u8>)> {
    let begin = text.find("-----BEGIN ")?;
    let rest = &text[begin + "-----BEGIN ".len()..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_string();
    let body = &rest[label_end + 5..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let base64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(base64).ok()?;
    Some((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    /// A throwaway 2048-bit key made for these tests (`openssl genrsa
    /// -traditional 2048`): PKCS#1, as GitHub issues App keys.
    pub(crate) const TEST_KEY_PKCS1: &str = include_str!("github_test_key.pem");

    #[test]
    fn signs_a_jwt_github_accepts_the_shape_of() {
        let app = AppCredentials::new("12345", "678", TEST_KEY_PKCS1).unwrap();
        let jwt = app.jwt(1_800_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims, serde_json::json!({"iat": 1_799_999_940, "exp": 1_800_000_540, "iss": 12345}));
        let signature = b64.decode(parts[2]).unwrap();
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, app.public_key_der());
        public.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).expect("a valid RS256 signature");
        // Tampered claims do not verify.
        assert!(public.verify(format!("{}.{}x", parts[0], parts[1]).as_bytes(), &signature).is_err());
        // A client id is sent as a string.
        let app = AppCredentials::new("Iv1.abc", "678", TEST_KEY_PKCS1).unwrap();
        let jwt = app.jwt(100).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(claims["iss"], "Iv1.abc");
    }

    #[test]
    fn a_pkcs8_key_is_the_same_key() {
        let pkcs1 = AppCredentials::new("1", "2", TEST_KEY_PKCS1).unwrap();
        let pkcs8 = AppCredentials::new("1", "2", include_str!("github_test_key_pkcs8.pem")).unwrap();
        assert_eq!(pkcs1.public_key_der(), pkcs8.public_key_der());
    }

    #[test]
    fn bad_keys_are_named_without_their_content() {
        for text in ["", "not a key", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
            let e = AppCredentials::new("1", "2", text).unwrap_err();
            assert!(e.to_string().starts_with("spec.credentialsSecretRef: key \"privateKey\" is not a PEM"), "{e}");
        }
        let garbage = "-----BEGIN RSA PRIVATE KEY-----\nU0VDUkVULWtleS1ieXRlcw==\n-----END RSA PRIVATE KEY-----\n";
        let e = AppCredentials::new("1", "2", garbage).unwrap_err();
        assert!(e.to_string().contains("not a usable RSA private key"), "{e}");
        assert!(!e.to_string().contains("U0VDUkVU"), "{e}");
        let e = AppCredentials::new("1", "two", TEST_KEY_PKCS1).unwrap_err();
        assert!(e.to_string().contains("installationId"), "{e}");
        let app = AppCredentials::new("1", "2", TEST_KEY_PKCS1).unwrap();
        assert!(!format!("{app:?}").contains("MII"), "{app:?}");
    }
}
