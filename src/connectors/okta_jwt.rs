//! The client assertion of an Okta OAuth 2.0 service app (RFC 7523,
//! `private_key_jwt`): a JWT signed RS256 with the app's private key, which
//! the token endpoint exchanges for an access token.
//!
//! Signed with ring, the crypto rustls already builds on. The key is read
//! from PEM: PKCS#8 (`BEGIN PRIVATE KEY`, what Okta's Admin Console
//! generates) or PKCS#1 (`BEGIN RSA PRIVATE KEY`). Errors never quote the
//! key.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::json;

/// How long an assertion is valid: Okta accepts at most an hour; a few
/// minutes covers a slow token request and some clock skew.
const LIFETIME_SECONDS: i64 = 300;

/// An RSA private key that signs assertions. `Debug` shows nothing of it.
pub(super) struct SigningKey {
    pair: RsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

impl SigningKey {
    /// The key of a PEM text; the error says what is wrong without quoting
    /// any of it.
    pub(super) fn from_pem(pem: &str) -> Result<Self, String> {
        let (label, der) = pem_body(pem)?;
        let pair = match label.as_str() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der)
                .map_err(|e| format!("the PKCS#8 private key is not an RSA key ring can sign with ({e})"))?,
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der)
                .map_err(|e| format!("the PKCS#1 private key is not an RSA key ring can sign with ({e})"))?,
            other => {
                return Err(format!(
                    "a PEM \"{other}\" block is not an unencrypted RSA private key (expected BEGIN PRIVATE KEY)"
                ));
            }
        };
        Ok(SigningKey { pair, rng: SystemRandom::new() })
    }

    /// A signed assertion: issuer and subject the client id, audience the
    /// token endpoint, valid from `now` (UTC epoch seconds) for a few
    /// minutes, with a random `jti` (Okta refuses a replayed one).
    pub(super) fn assertion(
        &self,
        client_id: &str,
        key_id: Option<&str>,
        audience: &str,
        now: i64,
    ) -> Result<String, String> {
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).map_err(|_| "the system's random generator failed".to_string())?;
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + LIFETIME_SECONDS,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, signing_input.as_bytes(), &mut signature)
            .map_err(|_| "signing the client assertion failed".to_string())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The public key (PKCS#1 RSAPublicKey DER), for tests that verify.
    #[cfg(test)]
    pub(super) fn public_der(&self) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        self.pair.public_key().as_ref().to_vec()
    }
}

/// The label and decoded body of the first PEM block.
fn pem_body(pem: &str) -> Result<(String, Vec<u8>), String> {
    let mut lines = pem.lines().map(str::trim).skip_while(|l| !l.starts_with("-----BEGIN "));
    let label = lines
        .next()
        .and_then(|l| l.strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or_else(|| "not a PEM private key (no -----BEGIN line)".to_string())?
        .to_string();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    let mut ended = false;
    for line in lines {
        if line == end {
            ended = true;
            break;
        }
        if line.contains(':') {
            return Err("an encrypted PEM private key; idsync needs it unencrypted".to_string());
        }
        body.push_str(line);
    }
    if !ended {
        return Err(format!("the PEM block has no \"{end}\" line"));
    }
    let der = STANDARD.decode(body).map_err(|_| "the PEM block is not valid base64".to_string())?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    /// A 2048-bit RSA key made for these tests only (`openssl genpkey
    /// -algorithm RSA`); it signs nothing anywhere else.
    pub(crate) const TEST_KEY: &str = include_str!("okta_test_key.pem");

    #[test]
    fn assertions_are_rs256_jwts_that_verify_with_the_public_key() {
        let key = SigningKey::from_pem(TEST_KEY).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey([REDACTED])");
        let audience = "https://acme.okta.com/oauth2/v1/token";
        let jwt = key.assertion("0oa1client", Some("kid-7"), audience, 1_795_953_600).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        };
        assert_eq!(decode(parts[0]), json!({"alg": "RS256", "typ": "JWT", "kid": "kid-7"}));
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "0oa1client");
        assert_eq!(claims["sub"], "0oa1client");
        assert_eq!(claims["aud"], audience);
        assert_eq!(claims["iat"], 1_795_953_600);
        assert_eq!(claims["exp"], 1_795_953_900);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_der());
        public.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature).unwrap();
        // A different claim set does not verify with this signature.
        assert!(public.verify(format!("{}.{}", parts[0], parts[0]).as_bytes(), &signature).is_err());
        // Each assertion has its own jti.
        let again = key.assertion("0oa1client", None, audience, 1_795_953_600).unwrap();
        assert_ne!(decode(again.split('.').nth(1).unwrap())["jti"], claims["jti"]);
        assert_eq!(decode(again.split('.').next().unwrap()), json!({"alg": "RS256", "typ": "JWT"}));
    }

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        for (pem, expected) in [
            ("just some text", "no -----BEGIN line"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA-SECRET\n-----END PRIVATE KEY-----", "not valid base64"),
            ("-----BEGIN PRIVATE KEY-----\nQUJDRA==\n-----END PRIVATE KEY-----", "not an RSA key"),
            ("-----BEGIN PRIVATE KEY-----\nQUJDRA==\n", "no \"-----END PRIVATE KEY-----\" line"),
            ("-----BEGIN CERTIFICATE-----\nQUJDRA==\n-----END CERTIFICATE-----", "not an unencrypted RSA"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nQUJDRA==\n-----END RSA PRIVATE KEY-----",
                "encrypted",
            ),
        ] {
            let error = SigningKey::from_pem(pem).unwrap_err();
            assert!(error.contains(expected), "{pem:?}: {error}");
            assert!(!error.contains("SECRET") && !error.contains("QUJDRA"), "{error}");
        }
    }
}
