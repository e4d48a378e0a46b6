//! The bare rustls server: the baseline the mux and nginx are measured against.
//!
//! Its configuration mirrors the one edge terminates with: the aws-lc-rs
//! provider with the workspace's prefer-post-quantum group order, TLS 1.3
//! and 1.2, and a stateless ticketer (so both send the same session tickets
//! after a TLS 1.3 handshake). Edge picks the certificate by SNI from its
//! store; this server has one certificate. After the handshake it echoes
//! until the client closes, which lets the driver check that a passthrough
//! really reached it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// Serves TLS on `listen` until the process is killed.
pub(crate) async fn run(listen: SocketAddr, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(config(cert, key)?);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(serve(acceptor.clone(), tcp));
            }
            Err(e) => {
                eprintln!("edge-bench server: accept failed: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

fn config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read {}", key.display()))?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

async fn serve(acceptor: TlsAcceptor, tcp: TcpStream) {
    // Edge sets this on both legs; without it the baseline would differ in
    // more than the mux.
    let _ = tcp.set_nodelay(true);
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tls.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tls.shutdown().await;
}
