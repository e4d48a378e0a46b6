//! The host side of the box's health check: a real TLS handshake with rustls
//! and `GET /healthz` over HTTP/1.1.
//!
//! A development box has no configured certificate and answers every name
//! with a self-signed one, so the client accepts any certificate. It still
//! checks the handshake signature against that certificate's key, which
//! proves the server holds the key it presented.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::process::ProcessGuard;
use crate::Error;

/// The name sent as SNI and `Host`. Any name gets the same certificate; this
/// one is reserved and resolves nowhere.
pub const SERVER_NAME: &str = "edge.test";

/// One successful answer from `GET /healthz`.
#[derive(Debug, Clone)]
pub struct Health {
    pub status: StatusCode,
    pub body: Bytes,
    /// The certificate chain the box presented, leaf first.
    pub certificates: Vec<CertificateDer<'static>>,
    /// The negotiated TLS version, e.g. `TLSv1_3`.
    pub protocol: Option<rustls::ProtocolVersion>,
}

/// Performs one handshake and `GET /healthz` against `addr`.
pub fn healthz(addr: SocketAddr) -> Result<Health, Error> {
    runtime()?.block_on(healthz_async(addr))
}

/// Polls `GET /healthz` on `addr` until it answers 200, `timeout` passes, or
/// `process` (the box, or the QEMU that runs it) exits. Returns the answer and
/// how long it took from the call.
pub fn wait_healthy(
    addr: SocketAddr,
    timeout: Duration,
    process: &mut ProcessGuard,
) -> Result<(Health, Duration), Error> {
    let runtime = runtime()?;
    let start = Instant::now();
    let mut last_error = String::from("no attempt made");
    while start.elapsed() < timeout {
        if let Some(status) = process.exited()? {
            return Err(Error::Exited(status));
        }
        // One attempt may stall while the guest is still starting; cap it so
        // the loop keeps watching the process.
        let attempt = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), healthz_async(addr)).await
        });
        match attempt {
            Ok(Ok(health)) if health.status == StatusCode::OK => {
                return Ok((health, start.elapsed()))
            }
            Ok(Ok(health)) => last_error = format!("status {}", health.status),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = String::from("attempt timed out"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(Error::Timeout(timeout, last_error))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn healthz_async(addr: SocketAddr) -> Result<Health, Error> {
    let tcp = TcpStream::connect(addr).await?;
    #[allow(clippy::expect_used)]
    let name = ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name");
    let tls = TlsConnector::from(client_config()?)
        .connect(name, tcp)
        .await?;
    let (_, session) = tls.get_ref();
    let certificates = session
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let protocol = session.protocol_version();

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(connection);
    let request = Request::get("/healthz")
        .header(http::header::HOST, SERVER_NAME)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();

    Ok(Health {
        status,
        body,
        certificates,
        protocol,
    })
}

/// A client configuration for a box with a self-signed certificate, on the
/// same crypto provider the box uses.
pub fn client_config() -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Trusts whatever certificate the server presents, but verifies the
/// handshake signatures with its public key as a real verifier would.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use rustls::ServerConfig;
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsAcceptor;

    /// Serves one fixed `200 ok` on one TLS connection with the certificate
    /// and key the resolver picks.
    fn serve_once(resolver: Arc<dyn ResolvesServerCert>) -> SocketAddr {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("listener address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");

        std::thread::spawn(move || {
            let runtime = runtime().expect("server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let (tcp, _) = listener.accept().await.expect("accept");
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(request.starts_with(b"GET /healthz HTTP/1.1\r\n"));
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                tls.write_all(answer).await.expect("write answer");
                tls.shutdown().await.expect("close_notify");
            });
        });
        addr
    }

    /// A self-signed certificate for `box.example`, paired with its own key
    /// or, when `matching` is false, with an unrelated one.
    fn certified_key(matching: bool) -> Arc<CertifiedKey> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let issued = rcgen::generate_simple_self_signed(vec!["box.example".to_string()])
            .expect("self-signed certificate");
        let signing_key = if matching {
            issued.signing_key
        } else {
            rcgen::KeyPair::generate().expect("unrelated key pair")
        };
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
        let signer = provider
            .key_provider
            .load_private_key(der)
            .expect("load the signing key");
        Arc::new(CertifiedKey::new(vec![issued.cert.der().clone()], signer))
    }

    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);

    impl ResolvesServerCert for Fixed {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(Arc::clone(&self.0))
        }
    }

    #[test]
    fn accepts_a_self_signed_certificate() {
        let addr = serve_once(Arc::new(Fixed(certified_key(true))));
        let health = healthz(addr).expect("health check against a self-signed server");
        assert_eq!(health.status, StatusCode::OK);
        assert_eq!(&health.body[..], b"ok");
        assert_eq!(health.certificates.len(), 1);
    }

    #[test]
    fn wait_healthy_returns_the_first_good_answer() {
        let addr = serve_once(Arc::new(Fixed(certified_key(true))));
        let sleeper = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let mut process = ProcessGuard::new("sleep", sleeper);
        let (health, _) = wait_healthy(addr, Duration::from_secs(30), &mut process)
            .expect("healthy on the first attempt");
        assert_eq!(&health.body[..], b"ok");
    }

    #[test]
    fn wait_healthy_stops_when_the_process_exits() {
        let addr = serve_once(Arc::new(Fixed(certified_key(true))));
        let mut done = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        done.wait().expect("wait for true");
        let mut process = ProcessGuard::new("true", done);
        let error = wait_healthy(addr, Duration::from_secs(30), &mut process)
            .expect_err("the process is gone");
        assert!(matches!(error, Error::Exited(_)), "{error}");
    }

    /// The certificate is trusted blindly, the handshake signature is not: a
    /// server that presents someone else's certificate is refused.
    #[test]
    fn refuses_a_server_without_the_certificates_key() {
        let addr = serve_once(Arc::new(Fixed(certified_key(false))));
        let error = healthz(addr).expect_err("handshake signed with the wrong key");
        assert!(error.to_string().contains("ignature"), "{error}");
    }
}
