//! Where a source may be: the address check every outgoing connection of a
//! provider passes (`spec.network`).
//!
//! Anyone who may create a Connection chooses where the operator connects.
//! Without a check, a csv `url` could read the operator's own metrics and
//! health ports, or the cloud metadata service and the node's credentials,
//! and show what it got in the Connection's status. So:
//!
//! - loopback (127.0.0.0/8, ::1) and unspecified (0.0.0.0, ::) addresses,
//!   which reach the operator's own host, are refused unless the
//!   Connection sets `spec.network.allowLoopback`;
//! - link-local addresses (169.254.0.0/16, fe80::/10), where clouds serve
//!   instance metadata, and the metadata services' well-known names are
//!   always refused: nobody runs an HR export there, and an opt-in would be
//!   one field away from the node's cloud credentials;
//! - everything else is allowed, private ranges included: on-premises
//!   directories and HR systems live in them.
//!
//! An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) counts as its IPv4
//! address. The check applies to the addresses a connection actually uses:
//! the HTTP client resolves names through [`CheckedResolver`] (so a name
//! that resolves to loopback only at connect time, DNS rebinding, is still
//! caught) and checks IP literals, which it never resolves, on the request
//! and on every redirect hop. Providers that connect on their own (LDAP)
//! call [`check_url`] just before connecting.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

use super::ConnectorError;
use idsync_api::connection::{ConnectionSpec, Provider};

/// Names of cloud metadata services, refused before any lookup.
const METADATA_NAMES: [&str; 4] =
    ["metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"];

/// How long a reconcile waits for a source's name to resolve; past it the
/// check is left to the connection itself.
const RECONCILE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Which addresses a Connection's source may be at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// `spec.network.allowLoopback`.
    pub allow_loopback: bool,
}

impl AddressPolicy {
    pub fn from_spec(spec: &ConnectionSpec) -> Self {
        AddressPolicy { allow_loopback: spec.network.allow_loopback }
    }

    /// Why `ip` is refused, if it is.
    pub fn refusal(&self, ip: IpAddr) -> Option<Refusal> {
        let ip = ip.to_canonical();
        let refusal = match ip {
            IpAddr::V4(v4) if v4.is_loopback() => Refusal::Loopback,
            IpAddr::V6(v6) if v6.is_loopback() => Refusal::Loopback,
            _ if ip.is_unspecified() => Refusal::Unspecified,
            IpAddr::V4(v4) if v4.is_link_local() => Refusal::LinkLocal,
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Refusal::LinkLocal,
            _ => return None,
        };
        let allowed = self.allow_loopback && matches!(refusal, Refusal::Loopback | Refusal::Unspecified);
        (!allowed).then_some(refusal)
    }

    /// Checks what can be known of `host` (as a URL writes it, IPv6 in
    /// brackets) without resolving it: an IP literal, or a metadata
    /// service's name.
    pub fn check_host(&self, host: &str) -> Result<(), AddressRefused> {
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if METADATA_NAMES.contains(&name.as_str()) {
            return Err(AddressRefused { host: name, ip: None, refusal: Refusal::MetadataName });
        }
        let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
            return Ok(());
        };
        match self.refusal(ip) {
            Some(refusal) => Err(AddressRefused { host: ip.to_string(), ip: Some(ip), refusal }),
            None => Ok(()),
        }
    }

    /// Checks a URL's host without resolving it (see [`check_host`](Self::check_host)).
    pub fn check_url_host(&self, url: &Url) -> Result<(), AddressRefused> {
        match url.host_str() {
            Some(host) => self.check_host(host),
            None => Ok(()),
        }
    }

    /// Checks every address `host` resolved to: one refused address refuses
    /// the host, since the connection may use any of them.
    pub fn check_resolved(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), AddressRefused> {
        for addr in addrs {
            if let Some(refusal) = self.refusal(addr.ip()) {
                return Err(AddressRefused { host: host.to_string(), ip: Some(addr.ip()), refusal });
            }
        }
        Ok(())
    }
}

/// The kinds of refused address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Loopback,
    Unspecified,
    LinkLocal,
    MetadataName,
}

/// A source address the Connection may not use, and how to fix it. It
/// travels through reqwest as the cause of a connect or redirect error and
/// becomes [`ConnectorError::AddressNotAllowed`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct AddressRefused {
    pub host: String,
    pub ip: Option<IpAddr>,
    pub refusal: Refusal,
}

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = match self.ip {
            Some(ip) if ip.to_string() != self.host => format!("{} resolves to {ip}", self.host),
            _ => self.host.clone(),
        };
        match self.refusal {
            Refusal::Loopback => write!(
                f,
                "{at}, a loopback address; set spec.network.allowLoopback: true if this source really runs on the operator's host"
            ),
            Refusal::Unspecified => write!(
                f,
                "{at}, the unspecified address, which reaches the operator's own host; set spec.network.allowLoopback: true if this source really runs there"
            ),
            Refusal::LinkLocal => write!(
                f,
                "{at}, a link-local address, where clouds serve instance metadata and credentials; sources may not be there"
            ),
            Refusal::MetadataName => {
                write!(
                    f,
                    "{at} is a cloud metadata service, which serves the node's credentials; sources may not be there"
                )
            }
        }
    }
}

impl AddressRefused {
    /// The error a read fails with; `context` says which request or field.
    pub fn into_error(self, context: &str) -> ConnectorError {
        ConnectorError::AddressNotAllowed { message: format!("{context}: {self}") }
    }

    /// The refusal among the causes of `error`, if one is there.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a AddressRefused> {
        let mut cause: Option<&'a (dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = cause {
            if let Some(refused) = e.downcast_ref::<AddressRefused>() {
                return Some(refused);
            }
            cause = e.source();
        }
        None
    }
}

/// The resolver of every HTTP client: the system's (`getaddrinfo`, as
/// reqwest's default), and then the policy on what it found.
#[derive(Clone, Copy, Debug)]
pub struct CheckedResolver {
    pub policy: AddressPolicy,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_string();
        Box::pin(async move {
            if let Err(refused) = policy.check_host(&host) {
                return Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            policy.check_resolved(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Checks `url` (host and, when it is a name, what it resolves to now) for
/// a provider that connects on its own. `field` names the spec field in
/// the error. A name that does not resolve passes: connecting reports that.
///
/// Best effort: the provider resolves the name again when it connects, and
/// a name that changes its answer in between (DNS rebinding) is not caught.
pub async fn check_url(url: &str, policy: AddressPolicy, field: &str) -> Result<(), ConnectorError> {
    check(url, policy, field, None).await
}

async fn check(url: &str, policy: AddressPolicy, field: &str, timeout: Option<Duration>) -> Result<(), ConnectorError> {
    let Ok(parsed) = Url::parse(url.trim()) else {
        return Ok(()); // the provider's own validation reports it
    };
    policy.check_url_host(&parsed).map_err(|r| r.into_error(field))?;
    let Some(name) = parsed.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']')) else {
        return Ok(());
    };
    if name.parse::<IpAddr>().is_ok() {
        return Ok(()); // a literal, checked above
    }
    let port = parsed.port_or_known_default().unwrap_or(0);
    let lookup = tokio::net::lookup_host((name, port));
    let addrs: Vec<SocketAddr> = match timeout {
        Some(limit) => match tokio::time::timeout(limit, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            _ => return Ok(()),
        },
        None => match lookup.await {
            Ok(addrs) => addrs.collect(),
            Err(_) => return Ok(()),
        },
    };
    policy.check_resolved(name, &addrs).map_err(|r| r.into_error(field))
}

/// Checks the source URLs of a Connection as a reconcile sees them now, so
/// that a refused address stalls it before its first sync and the stall
/// clears once the spec allows it. A name that does not resolve in time
/// passes: the sync reports it.
pub async fn check_spec(spec: &ConnectionSpec) -> Result<(), ConnectorError> {
    let policy = AddressPolicy::from_spec(spec);
    let urls: Vec<(&str, &str)> = match &spec.provider {
        Provider::Csv(csv) => csv.source.url.iter().map(|u| (u.as_str(), "spec.provider.csv.source.url")).collect(),
        Provider::Scim(scim) => vec![(scim.base_url.as_str(), "spec.provider.scim.baseUrl")],
        Provider::Ldap(ldap) => vec![(ldap.url.as_str(), "spec.provider.ldap.url")],
        Provider::MsGraph(graph) => vec![
            (graph.graph_endpoint.as_str(), "spec.provider.msgraph.graphEndpoint"),
            (graph.login_endpoint.as_str(), "spec.provider.msgraph.loginEndpoint"),
        ],
        Provider::Okta(okta) => vec![(okta.org_url.as_str(), "spec.provider.okta.orgUrl")],
        Provider::GitHub(github) => vec![(github.api_url.as_str(), "spec.provider.github.apiUrl")],
    };
    for (url, field) in urls {
        check(url, policy, field, Some(RECONCILE_LOOKUP_TIMEOUT)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const STRICT: AddressPolicy = AddressPolicy { allow_loopback: false };
    const LOOPBACK_OK: AddressPolicy = AddressPolicy { allow_loopback: true };

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    #[test]
    fn refuses_the_operators_host_and_the_link_local_network() {
        for (address, refusal) in [
            ("127.0.0.1", Refusal::Loopback),
            ("127.8.9.10", Refusal::Loopback),
            ("::1", Refusal::Loopback),
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("0.0.0.0", Refusal::Unspecified),
            ("::", Refusal::Unspecified),
            ("169.254.169.254", Refusal::LinkLocal),
            ("::ffff:169.254.169.254", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
        ] {
            assert_eq!(STRICT.refusal(ip(address)), Some(refusal), "{address}");
        }
        for allowed in ["10.1.2.3", "172.16.0.9", "192.168.1.10", "fd00::5", "93.184.216.34", "2606:4700::1"] {
            assert_eq!(STRICT.refusal(ip(allowed)), None, "{allowed}");
        }
    }

    #[test]
    fn the_opt_in_allows_loopback_but_never_link_local() {
        assert_eq!(LOOPBACK_OK.refusal(IpAddr::V4(Ipv4Addr::LOCALHOST)), None);
        assert_eq!(LOOPBACK_OK.refusal(IpAddr::V6(Ipv6Addr::LOCALHOST)), None);
        assert_eq!(LOOPBACK_OK.refusal(ip("0.0.0.0")), None);
        assert_eq!(LOOPBACK_OK.refusal(ip("169.254.169.254")), Some(Refusal::LinkLocal));
        let metadata = Url::parse("http://metadata.google.internal./computeMetadata/v1/").unwrap();
        assert_eq!(LOOPBACK_OK.check_url_host(&metadata).unwrap_err().refusal, Refusal::MetadataName);
    }

    #[test]
    fn hosts_are_checked_as_literals_without_a_lookup() {
        let refused = STRICT.check_url_host(&Url::parse("http://127.0.0.1:8080/x.csv").unwrap()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "127.0.0.1, a loopback address; set spec.network.allowLoopback: true if this source really runs on the operator's host"
        );
        assert!(STRICT.check_url_host(&Url::parse("https://[::ffff:7f00:1]/").unwrap()).is_err());
        // ldap:// is not a special scheme: its host stays text, and is still an IP.
        assert!(STRICT.check_url_host(&Url::parse("ldap://127.0.0.1:389").unwrap()).is_err());
        assert!(STRICT.check_url_host(&Url::parse("ldap://[::1]:389").unwrap()).is_err());
        assert!(STRICT.check_url_host(&Url::parse("https://hr.example.com/x").unwrap()).is_ok());
        assert!(LOOPBACK_OK.check_url_host(&Url::parse("http://127.0.0.1:8080/x.csv").unwrap()).is_ok());
    }

    #[tokio::test]
    async fn names_are_checked_on_what_they_resolve_to() {
        let e = check_url("ldap://localhost:389", STRICT, "spec.provider.ldap.url").await.unwrap_err();
        assert_eq!(e.reason(), "AddressNotAllowed");
        assert!(e.is_stalled());
        let text = e.to_string();
        assert!(text.starts_with("spec.provider.ldap.url: localhost resolves to "), "{text}");
        assert!(text.contains("a loopback address; set spec.network.allowLoopback: true"), "{text}");
        check_url("ldap://localhost:389", LOOPBACK_OK, "spec.provider.ldap.url").await.unwrap();
        // A name that does not resolve is left to the connection to report.
        check_url("ldaps://no-such-host.invalid", STRICT, "spec.provider.ldap.url").await.unwrap();
    }

    #[tokio::test]
    async fn a_spec_is_checked_on_its_source_urls() {
        let spec = |url: &str, allow: bool| -> ConnectionSpec {
            serde_json::from_value(serde_json::json!({
                "category": "HRIS",
                "provider": {"type": "csv", "csv": {"source": {"url": url}, "idColumn": "id"}},
                "network": {"allowLoopback": allow},
            }))
            .unwrap()
        };
        let e = check_spec(&spec("http://localhost:9/x.csv", false)).await.unwrap_err();
        assert!(e.to_string().starts_with("spec.provider.csv.source.url: localhost resolves to "), "{e}");
        check_spec(&spec("http://localhost:9/x.csv", true)).await.unwrap();
        let e = check_spec(&spec("https://169.254.169.254/latest/meta-data/", true)).await.unwrap_err();
        assert!(e.to_string().contains("a link-local address"), "{e}");
        check_spec(&spec("https://hr.example.invalid/x.csv", false)).await.unwrap();
    }
}
