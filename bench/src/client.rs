//! One measured connection from the client's side: TLS configurations, and
//! the connect, handshake and close sequence every measurement is built from.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long a closing client waits for the server's side of the close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Where a measured connection goes, and the name it asks for.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Label in the report.
    pub(crate) label: &'static str,
    /// Loopback address to connect to.
    pub(crate) addr: SocketAddr,
    /// SNI, which is what sends a connection to edge's passthrough or
    /// terminate route.
    pub(crate) sni: ServerName<'static>,
    /// Whether the bare server is at the far end; its echo proves routing.
    pub(crate) echoes: bool,
}

impl Target {
    /// A target; `sni` must be one of the certificate's names.
    pub(crate) fn new(
        label: &'static str,
        addr: SocketAddr,
        sni: &'static str,
        echoes: bool,
    ) -> Self {
        let sni = ServerName::try_from(sni).expect("bench names are valid DNS names");
        Self {
            label,
            addr,
            sni,
            echoes,
        }
    }
}

/// The key exchange groups a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kx {
    /// Classical X25519 alone.
    X25519,
    /// The hybrid X25519MLKEM768 alone.
    X25519Mlkem768,
    /// rustls's default list with the workspace features: the hybrid first,
    /// X25519 as a second key share, as current browsers send.
    Default,
}

impl Kx {
    /// Name in the report.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kx::X25519 => "X25519",
            Kx::X25519Mlkem768 => "X25519MLKEM768",
            Kx::Default => "default (MLKEM+X25519)",
        }
    }
}

/// A client that trusts the CA in `ca_pem`, offers `kx`, no ALPN, and never
/// resumes: every connection is a full handshake.
pub(crate) fn connector(ca_pem: &Path, kx: Kx) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    let pem = fs::read(ca_pem).with_context(|| format!("cannot read {}", ca_pem.display()))?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let mut provider = aws_lc_rs::default_provider();
    match kx {
        Kx::X25519 => provider.kx_groups = vec![kx_group::X25519],
        Kx::X25519Mlkem768 => provider.kx_groups = vec![kx_group::X25519MLKEM768],
        Kx::Default => {}
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connects and completes a full handshake; the time covers both.
pub(crate) async fn handshake(
    connector: &TlsConnector,
    target: &Target,
) -> io::Result<(Duration, TlsStream<TcpStream>)> {
    let start = Instant::now();
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    // `close` waits for the server's end first, so the reset this causes on
    // drop comes after an orderly close; it keeps tens of thousands of short
    // connections from parking client ports in TIME_WAIT.
    tcp.set_zero_linger()?;
    let tls = connector.connect(target.sni.clone(), tcp).await?;
    Ok((start.elapsed(), tls))
}

/// Closes as a polite client does: close_notify and FIN, then waits (bounded)
/// until the server has closed its side too, so its teardown is finished
/// before the next measurement starts.
pub(crate) async fn close(mut tls: TlsStream<TcpStream>) {
    let _ = tls.shutdown().await;
    let mut buf = [0u8; 1024];
    let drain = async {
        while let Ok(n) = tls.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = timeout(CLOSE_WAIT, drain).await;
}

/// One full connection: handshake (timed), then close (not timed).
pub(crate) async fn cycle(connector: &TlsConnector, target: &Target) -> io::Result<Duration> {
    let (took, tls) = handshake(connector, target).await?;
    close(tls).await;
    Ok(took)
}

/// Retries until `target` completes a handshake, then, if the bare server
/// should be behind it, checks that it echoes.
pub(crate) async fn wait_ready(
    connector: &TlsConnector,
    target: &Target,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    let mut tls = loop {
        match handshake(connector, target).await {
            Ok((_, tls)) => break tls,
            Err(e) if Instant::now() > deadline => {
                bail!("{} ({}) not ready: {e}", target.label, target.addr)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    if target.echoes {
        check_echo(&mut tls)
            .await
            .with_context(|| format!("{} does not reach the bare server", target.label))?;
    }
    close(tls).await;
    Ok(())
}

async fn check_echo(tls: &mut TlsStream<TcpStream>) -> anyhow::Result<()> {
    const PING: &[u8] = b"edge-bench ping";
    tls.write_all(PING).await?;
    let mut answer = [0u8; PING.len()];
    timeout(CLOSE_WAIT, tls.read_exact(&mut answer)).await??;
    if answer != PING {
        bail!("answer is not the echo");
    }
    Ok(())
}
