//! The one rustls server configuration behind every terminated connection.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::ServerConfig;

use crate::certs::{CertResolver, CertStore, ACME_TLS_ALPN};
use crate::Error;

/// ALPN ids the mux offers, in preference order.
///
/// `acme-tls/1` is always there, even without ACME configured, so whether the
/// box is waiting for a certificate is not visible from the ALPN answer.
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1", ACME_TLS_ALPN];

/// The server configuration for every terminated handshake: aws-lc-rs,
/// TLS 1.3 and 1.2, X25519MLKEM768 preferred, certificates by SNI from `store`.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(CertResolver::new(store));
    config.alpn_protocols = ALPN.iter().map(|id| id.to_vec()).collect();
    config.ticketer = aws_lc_rs::Ticketer::new()
        .map_err(|e| Error::Config(format!("tls session tickets: {e}")))?;
    Ok(Arc::new(config))
}
