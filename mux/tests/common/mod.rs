//! Shared harness of the mux scenario tests: a test PKI, a mux on loopback,
//! TLS clients, services that say who they are, and metric readers.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mux::certs::{self, CertStore, Entry, Source};
use mux::config::MuxConfig;
use mux::metrics::Metrics;
use mux::server::Mux;
use mux::service::{BoxFuture, BoxStream, ConnInfo, Service, ServiceName, Services};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A CA and the leaves it signs.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca: CertificateDer<'static>,
}

/// A leaf certificate, both as a store entry and as PEM text for files.
pub struct Leaf {
    pub entry: Entry,
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("ca key");
        let ca = params.self_signed(&key).expect("ca cert").der().clone();
        Self {
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names.clone()).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let private = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let certified =
            certs::certified_key(vec![cert.der().clone()], private).expect("key matches");
        Leaf {
            entry: Entry {
                names,
                key: certified,
            },
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A mux listening on a free loopback port.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub store: Arc<CertStore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a mux on 127.0.0.1 with `config` (its `listen` is replaced),
/// `store`, and the tagging services.
pub async fn start_mux(config: MuxConfig, store: Arc<CertStore>) -> Running {
    start_mux_with(config, store, tagging_services()).await
}

/// [`start_mux`] with other services.
pub async fn start_mux_with(
    mut config: MuxConfig,
    store: Arc<CertStore>,
    services: Services,
) -> Running {
    config.listen = vec!["127.0.0.1:0".parse().expect("addr")];
    config.validate().expect("valid test configuration");
    let metrics = Arc::new(Metrics::new());
    let tls = mux::tls::server_config(Arc::clone(&store)).expect("tls config");
    let mux = Mux::new(config, tls, services, Arc::clone(&metrics));
    let listener = mux.bind().expect("bind").pop().expect("one listener");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(mux.serve(listener));
    Running {
        addr,
        metrics,
        store,
        task,
    }
}

/// A store whose fallback is a leaf of `pki` for `default.invalid`, with `files` on top.
pub fn store(pki: &Pki, files: Vec<Entry>) -> Arc<CertStore> {
    let store = CertStore::new(pki.leaf(&["default.invalid"]).entry);
    store.replace(Source::Files, files);
    store
}

/// Services that answer `<name> <info>\n` and then echo every byte.
pub fn tagging_services() -> Services {
    let mut services = Services::new();
    services.register(ServiceName::Https, Arc::new(Tagger("https")));
    services.register(ServiceName::Turn, Arc::new(Tagger("turn")));
    services
}

struct Tagger(&'static str);

impl Service for Tagger {
    fn serve(&self, mut stream: BoxStream, info: ConnInfo) -> BoxFuture {
        let name = self.0;
        Box::pin(async move {
            let tag = format!(
                "{name} sni={} route={}\n",
                info.server_name.as_deref().unwrap_or("-"),
                info.route
            );
            if stream.write_all(tag.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = stream.shutdown().await;
        })
    }
}

/// A client configuration that accepts any certificate (the tests compare
/// which one was served, from `peer_certificates`) but still checks the
/// handshake signatures with it, offering `alpn`.
pub fn any_cert_client(alpn: &[&str]) -> Arc<ClientConfig> {
    let shared = edge_tests::https::client_config().expect("test client configuration");
    let mut config = (*shared).clone();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// The leaf certificate the server presented.
pub fn served_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let certs = tls.get_ref().1.peer_certificates().expect("certificates");
    certs.first().expect("a leaf").clone().into_owned()
}

/// A client configuration that trusts only `ca`, offering `alpn`.
pub fn verifying_client(ca: &CertificateDer<'static>, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("ca parses");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connects and handshakes. `name` is a DNS name (sent as SNI) or an IP
/// literal (rustls then sends no SNI).
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).expect("valid server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// Reads the service's tag line.
pub async fn read_tag<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("tag within 10 s")
            .expect("read tag");
        assert_eq!(n, 1, "stream closed before the tag: {line:?}");
        line.push(byte[0]);
    }
    String::from_utf8(line)
        .expect("utf-8 tag")
        .trim_end()
        .to_owned()
}

/// The metrics in Prometheus text.
pub fn metrics_text(metrics: &Metrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text
}

/// The value of one sample, e.g. `mux_peek_failures_total{reason="not_tls"}`; 0 if absent.
pub fn metric(metrics: &Metrics, sample: &str) -> f64 {
    metrics_text(metrics)
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
