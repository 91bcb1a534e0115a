//! The one TLS crypto provider of the binary: rustls with ring, shared by
//! kube's client, reqwest (connectors) and the devcluster.

/// Installs ring as rustls' process-wide provider; harmless when done twice.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
