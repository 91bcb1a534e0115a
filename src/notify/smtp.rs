//! Mail delivery with `lettre` over tokio and the binary's one rustls (ring)
//! stack, verifying the server's certificate against the platform's roots
//! as the HTTP client does, or against the provider's CA bundle. The
//! message is plain text; its Message-ID is derived from the idempotency
//! key, so a receiver can tell a redelivery from a new message.

use std::time::Duration;

use idsync_api::notification::{SmtpSettings, SmtpTls};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::DeliveryError;
use crate::connectors::address::AddressPolicy;

/// How long one SMTP exchange may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What a mail says and to whom.
pub struct Mail<'a> {
    pub to: &'a [String],
    pub subject: String,
    pub body: String,
    pub key: &'a str,
}

/// What the provider's Secrets hold, read at send time.
#[derive(Default)]
pub struct SmtpSecrets {
    pub login: Option<(String, String)>,
    /// A PEM bundle to verify the server with instead of the platform's roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// Builds the message (a failure here is the provider's or the policy's
/// configuration: an address that does not parse).
pub fn message(from: &str, mail: &Mail<'_>) -> Result<Message, DeliveryError> {
    let mailbox = |field: &str, address: &str| {
        address
            .parse::<Mailbox>()
            .map_err(|e| DeliveryError::Config(format!("{field}: {address:?} is not an e-mail address: {e}")))
    };
    let mut builder = Message::builder()
        .from(mailbox("spec.smtp.from", from)?)
        .subject(mail.subject.clone())
        .message_id(Some(format!("<{}@idsync.dev>", mail.key)))
        .user_agent(concat!("idsync/", env!("CARGO_PKG_VERSION")).to_string())
        .date_now();
    for to in mail.to {
        builder = builder.to(mailbox("to", to)?);
    }
    builder
        .header(ContentType::TEXT_PLAIN)
        .body(mail.body.clone())
        .map_err(|e| DeliveryError::Config(format!("cannot build the mail: {e}")))
}

/// Sends `mail` through the provider's server.
pub async fn send(
    settings: &SmtpSettings,
    policy: AddressPolicy,
    secrets: SmtpSecrets,
    mail: &Mail<'_>,
) -> Result<(), DeliveryError> {
    if mail.to.is_empty() {
        return Err(DeliveryError::Config(
            "the policy names no recipient (providers[].to) for this SMTP provider".into(),
        ));
    }
    let message = message(&settings.from, mail)?;
    let address = checked_address(&settings.host, settings.port, policy).await?;
    // The schema allows tls None only to a loopback host; an object stored
    // before that rule still never sends credentials and mail in clear
    // over a network.
    if settings.tls == SmtpTls::None && !address.ip().is_loopback() {
        return Err(DeliveryError::Config(format!(
            "spec.smtp.tls: None is allowed only to a loopback host, and {} is not one",
            settings.host
        )));
    }
    let tls_parameters = || -> Result<TlsParameters, DeliveryError> {
        let mut builder = TlsParameters::builder(settings.host.clone());
        if let Some(pem) = &secrets.ca_pem {
            for cert in ca_certificates(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder.build_rustls().map_err(|e| DeliveryError::Config(format!("cannot set up TLS: {e}")))
    };
    let tls = match settings.tls {
        SmtpTls::StartTLS => Tls::Required(tls_parameters()?),
        SmtpTls::ImplicitTLS => Tls::Wrapper(tls_parameters()?),
        SmtpTls::None => Tls::None,
    };
    crate::tls::install_crypto_provider();
    // Connect to the address that passed the check (the TLS name is the
    // host's), so a second lookup cannot lead elsewhere.
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.ip().to_string())
        .port(settings.port)
        .tls(tls)
        .timeout(Some(TIMEOUT));
    if let Some((username, password)) = secrets.login {
        transport = transport.credentials(Credentials::new(username, password));
    }
    transport.build().send(message).await.map(drop).map_err(|e| {
        if e.is_permanent() || e.is_transient() {
            DeliveryError::Rejected(format!("the SMTP server refused the mail: {e}"))
        } else {
            DeliveryError::Transport(format!(
                "cannot deliver to the SMTP server {}:{}: {e}",
                settings.host, settings.port
            ))
        }
    })
}

/// The first address `host` resolves to, after checking all of them.
async fn checked_address(host: &str, port: u16, policy: AddressPolicy) -> Result<std::net::SocketAddr, DeliveryError> {
    let refused = |r: crate::connectors::address::AddressRefused| {
        DeliveryError::AddressNotAllowed(format!("spec.smtp.host: {r}"))
    };
    policy.check_host(host).map_err(refused)?;
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| DeliveryError::Transport(format!("cannot resolve the SMTP server {host}: {e}")))?
        .collect();
    policy.check_resolved(host, &addrs).map_err(refused)?;
    addrs.into_iter().next().ok_or_else(|| DeliveryError::Transport(format!("the SMTP server {host} has no address")))
}

fn ca_certificates(pem: &[u8]) -> Result<Vec<Certificate>, DeliveryError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |e: String| DeliveryError::Config(format!("spec.smtp.ca: {e}"));
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
        certs.push(Certificate::from_der(cert.to_vec()).map_err(|e| bad(format!("unusable certificate: {e}")))?);
    }
    if certs.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_comes_from_the_idempotency_key() {
        let to = ["alice@acme.example".to_string()];
        let mail = Mail { to: &to, subject: "[idsync] hello".into(), body: "body".into(), key: "idsync-00ff" };
        let message = message("idsync@acme.example", &mail).expect("a message");
        let text = String::from_utf8(message.formatted()).expect("utf-8");
        assert!(text.contains("Message-ID: <idsync-00ff@idsync.dev>"), "{text}");
        assert!(text.contains("To: alice@acme.example"), "{text}");
    }

    #[test]
    fn a_bad_address_is_a_configuration_error_naming_it() {
        let to = ["not an address".to_string()];
        let mail = Mail { to: &to, subject: "s".into(), body: "b".into(), key: "k" };
        let error = message("idsync@acme.example", &mail).map(drop).expect_err("refused");
        assert!(matches!(error, DeliveryError::Config(ref m) if m.contains("\"not an address\"")), "{error}");
    }
}
