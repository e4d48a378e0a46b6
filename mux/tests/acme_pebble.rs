//! The ACME client against a real ACME server: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS server so that every name resolves to
//! 127.0.0.1. Pebble validates TLS-ALPN-01 by connecting to the mux under
//! test, exactly as a public CA would connect to the box's :443.
//!
//! Each scenario starts its own pebble on free loopback ports and kills it
//! when done. Nothing leaves loopback.

mod common;

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mux::acme::{self, Action, Schedule};
use mux::certs::{CertStore, Source};
use mux::config::{AcmeConfig, MuxConfig};
use mux::metrics::{Metrics, Reason};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// The name the box asks a certificate for. challtestsrv answers every A
/// query with 127.0.0.1 and no AAAA, so pebble reaches the mux for it.
const DOMAIN: &str = "edge.box.test";

/// Lifetime of pebble's certificates: Let's Encrypt's classic 90 days.
const LIFETIME_SECS: u64 = 90 * 86_400;

/// A `renew_before` that leaves a fresh 90-day certificate alone.
const NORMAL_MARGIN: Duration = Duration::from_secs(30 * 86_400);

/// Generous bound on one issuance; it takes about a second when pebble's
/// validation sleeps are off.
const ISSUE_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_a_certificate_the_mux_serves() {
    let running = common::start_mux(MuxConfig::default(), fallback_store()).await;
    let pebble = Pebble::start(running.addr.port());
    let root = pebble.root().await;

    let state = pebble.dir.join("state");
    let acme = spawn_acme(&pebble, &state, NORMAL_MARGIN, &running);
    let serial = wait_for_new_serial(&running.store, None, &pebble).await;
    assert_eq!(count(&running.metrics, "acme_ok"), 1);
    assert_eq!(count(&running.metrics, "acme_error"), 0);

    // The served chain verifies against pebble's root: it was really issued.
    assert_eq!(served_serial(running.addr, &root).await, serial);

    // RFC 8737 §3 handshakes find no challenge certificate left behind.
    let probe = common::any_cert_client(&["acme-tls/1"]);
    assert!(common::connect(running.addr, probe, DOMAIN).await.is_err());

    // The state directory holds the account and the certificate, private.
    assert_mode(&state, 0o700);
    assert_mode(&acme::account_path(&state), 0o600);
    assert_mode(&acme::certificate_path(&state), 0o600);
    acme.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_when_due_and_serves_the_new_certificate_without_restart() {
    let running = common::start_mux(MuxConfig::default(), fallback_store()).await;
    let pebble = Pebble::start(running.addr.port());
    let root = pebble.root().await;
    let state = pebble.dir.join("state");

    let first = spawn_acme(&pebble, &state, NORMAL_MARGIN, &running);
    let old = wait_for_new_serial(&running.store, None, &pebble).await;
    first.abort();
    let account = fs::read(acme::account_path(&state)).expect("account saved");

    // A margin longer than the lifetime makes the stored certificate due.
    let margin = Duration::from_secs(2 * LIFETIME_SECS);
    let second = spawn_acme(&pebble, &state, margin, &running);
    let new = wait_for_new_serial(&running.store, Some(&old), &pebble).await;
    assert_eq!(served_serial(running.addr, &root).await, new);
    assert_eq!(count(&running.metrics, "acme_ok"), 2);

    // The renewal reused the saved account and saved its certificate.
    let account_now = fs::read(acme::account_path(&state)).expect("account");
    assert_eq!(account_now, account);
    assert_eq!(stored_serial(&state), new);
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_the_stored_certificate_without_ordering() {
    let running = common::start_mux(MuxConfig::default(), fallback_store()).await;
    let mut pebble = Pebble::start(running.addr.port());
    let root = pebble.root().await;
    let state = pebble.dir.join("state");
    let acme = spawn_acme(&pebble, &state, NORMAL_MARGIN, &running);
    let serial = wait_for_new_serial(&running.store, None, &pebble).await;
    acme.abort();
    drop(running);

    // A fresh box: new store, new mux, and no CA to talk to.
    pebble.stop();
    let running = common::start_mux(MuxConfig::default(), fallback_store()).await;
    let acme = spawn_acme(&pebble, &state, NORMAL_MARGIN, &running);
    let loaded = wait_for_new_serial(&running.store, None, &pebble).await;
    assert_eq!(loaded, serial);
    assert_eq!(served_serial(running.addr, &root).await, serial);

    // And the schedule that loaded it sleeps instead of ordering.
    let entry = running.store.entries(Source::Acme).remove(0);
    let validity = acme::leaf_validity(&entry.key).expect("parsable leaf");
    let mut schedule = Schedule::new(NORMAL_MARGIN);
    schedule.handle_stored(Some(validity));
    assert!(matches!(schedule.poll_action(unix_now()), Action::Sleep(_)));
    assert_eq!(count(&running.metrics, "acme_ok"), 0);
    acme.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_a_new_account_when_the_ca_has_forgotten_it() {
    let running = common::start_mux(MuxConfig::default(), fallback_store()).await;
    let mut pebble = Pebble::start(running.addr.port());
    let state = pebble.dir.join("state");
    let first = spawn_acme(&pebble, &state, NORMAL_MARGIN, &running);
    let old = wait_for_new_serial(&running.store, None, &pebble).await;
    first.abort();
    let account = fs::read(acme::account_path(&state)).expect("account saved");

    pebble.restart();
    let root = pebble.root().await;
    let margin = Duration::from_secs(2 * LIFETIME_SECS);
    let second = spawn_acme(&pebble, &state, margin, &running);
    let new = wait_for_new_serial(&running.store, Some(&old), &pebble).await;
    assert_eq!(served_serial(running.addr, &root).await, new);

    // Recovered within one attempt: a new account, no failure counted.
    let account_now = fs::read(acme::account_path(&state)).expect("account");
    assert_ne!(account_now, account);
    assert_eq!(count(&running.metrics, "acme_error"), 0);
    second.abort();
}

/// A running pebble and its DNS server, killed on drop.
struct Pebble {
    dir: PathBuf,
    directory: String,
    management: SocketAddr,
    /// The CA of pebble's own HTTPS certificate (directory and management).
    https_ca: PathBuf,
    acme_port: u16,
    dns_port: u16,
    children: Vec<Child>,
}

impl Pebble {
    /// Starts pebble validating TLS-ALPN-01 on 127.0.0.1:`tls_port`.
    fn start(tls_port: u16) -> Self {
        let dir = scratch_dir();
        let https_ca = write_https_certificate(&dir);
        let (acme_port, management_port, dns_port) = (free_port(), free_port(), free_dns_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.join("https-cert.pem"),
                "privateKey": dir.join("https-key.pem"),
                "httpPort": free_port(),
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": LIFETIME_SECS,
            }
        });
        fs::write(dir.join("pebble.json"), config.to_string()).expect("pebble config");
        let mut pebble = Self {
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            management: SocketAddr::from(([127, 0, 0, 1], management_port)),
            https_ca,
            acme_port,
            dns_port,
            children: Vec::new(),
            dir,
        };
        pebble.launch();
        pebble
    }

    /// Stops pebble and starts it again on the same ports. Pebble keeps
    /// everything in memory: the new one knows no account and issues from
    /// a new root.
    fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn launch(&mut self) {
        self.spawn_dns(self.dns_port);
        self.spawn_pebble(self.dns_port);
        self.wait_listening(self.acme_port);
        self.wait_listening(self.management.port());
    }

    /// challtestsrv with only its DNS listener, answering A queries with
    /// 127.0.0.1 and AAAA queries with nothing.
    fn spawn_dns(&mut self, port: u16) {
        let log = self.log("challtestsrv.log");
        let child = Command::new(binary("pebble-challtestsrv"))
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("pebble-challtestsrv starts");
        self.children.push(child);
    }

    fn spawn_pebble(&mut self, dns_port: u16) {
        let log = self.log("pebble.log");
        let child = Command::new(binary("pebble"))
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // Validate at once, never reject a good nonce, and never reuse an
            // authorization, so every order answers a real challenge.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("pebble starts");
        self.children.push(child);
    }

    fn log(&self, name: &str) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .expect("log file")
    }

    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            for child in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("pebble exited early ({status}):\n{}", self.logs());
                }
            }
            assert!(
                Instant::now() < deadline,
                "pebble not listening:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pebble's root for the certificates it issues, from its management API.
    async fn root(&self) -> CertificateDer<'static> {
        let pem = https_get(self.management, &self.https_ca, "/roots/0").await;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("root is PEM")
    }

    fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }

    fn logs(&self) -> String {
        ["challtestsrv.log", "pebble.log"]
            .iter()
            .map(|name| fs::read_to_string(self.dir.join(name)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed CA and a certificate for 127.0.0.1 and localhost signed by
/// it, for pebble's own HTTPS. Returns the CA's PEM file.
fn write_https_certificate(dir: &Path) -> PathBuf {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let key = KeyPair::generate().expect("https key");
    let params = CertificateParams::new(names).expect("https params");
    let cert = params.signed_by(&key, &issuer).expect("https cert");

    fs::write(dir.join("https-cert.pem"), cert.pem()).expect("https cert file");
    fs::write(dir.join("https-key.pem"), key.serialize_pem()).expect("https key file");
    let ca_path = dir.join("https-ca.pem");
    fs::write(&ca_path, ca.pem()).expect("ca file");
    ca_path
}

/// Starts the ACME client for [`DOMAIN`] against `pebble`, feeding the
/// store and metrics of `mux`.
fn spawn_acme(
    pebble: &Pebble,
    state_dir: &Path,
    renew_before: Duration,
    mux: &common::Running,
) -> JoinHandle<()> {
    let config = AcmeConfig {
        directory: pebble.directory.clone(),
        domains: vec![DOMAIN.to_owned()],
        contact: Vec::new(),
        state_dir: state_dir.to_owned(),
        renew_before,
        directory_ca: Some(pebble.https_ca.clone()),
    };
    let (store, metrics) = (Arc::clone(&mux.store), Arc::clone(&mux.metrics));
    tokio::spawn(acme::run(config, store, metrics))
}

/// A store serving only a self-signed certificate, as the box starts.
fn fallback_store() -> Arc<CertStore> {
    let fallback = mux::certs::self_signed(&["fallback.invalid".to_owned()]).expect("self-signed");
    CertStore::new(fallback)
}

/// Waits until the store's ACME certificate has a serial other than `old`
/// and returns it.
async fn wait_for_new_serial(store: &CertStore, old: Option<&str>, pebble: &Pebble) -> String {
    let mut serial = None;
    let found = common::eventually(ISSUE_LIMIT, || {
        serial = store
            .entries(Source::Acme)
            .first()
            .map(|entry| leaf_serial(entry.key.cert[0].as_ref()));
        serial.is_some() && serial.as_deref() != old
    })
    .await;
    assert!(
        found,
        "no new certificate within {ISSUE_LIMIT:?}:\n{}",
        pebble.logs()
    );
    serial.expect("checked above")
}

/// Handshakes with the mux as a client that trusts only `root` and returns
/// the serial of the certificate it was served.
async fn served_serial(addr: SocketAddr, root: &CertificateDer<'static>) -> String {
    let config = common::verifying_client(root, &[]);
    let tls = common::connect(addr, config, DOMAIN)
        .await
        .expect("served chain verifies against pebble's root");
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("server sent a certificate");
    leaf_serial(leaf.as_ref())
}

/// The serial of the certificate saved in `state_dir`.
fn stored_serial(state_dir: &Path) -> String {
    let path = acme::certificate_path(state_dir);
    let leaf = CertificateDer::from_pem_file(&path).expect("saved certificate");
    leaf_serial(leaf.as_ref())
}

fn leaf_serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parsable certificate");
    cert.raw_serial_as_string()
}

fn count(metrics: &Metrics, reason: &'static str) -> u64 {
    metrics.cert_reloads.get_or_create(&Reason { reason }).get()
}

fn assert_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let actual = fs::metadata(path).expect("exists").permissions().mode() & 0o777;
    assert_eq!(actual, mode, "mode of {}", path.display());
}

/// GET over HTTPS with HTTP/1.0, so the body is neither chunked nor kept alive.
async fn https_get(addr: SocketAddr, ca_pem: &Path, path: &str) -> String {
    let ca = CertificateDer::from_pem_file(ca_pem).expect("ca file");
    let config = common::verifying_client(&ca, &[]);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("ip name");
    let mut tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("pebble https handshake");
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("request");
    let mut response = Vec::new();
    // Go's server may end the stream without close_notify.
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The path of a Debian package binary, failing with the fix if missing.
fn binary(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(path.exists(), "{name} missing: apt-get install -y pebble");
    path
}

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mux-acme-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A port free for both UDP and TCP: challtestsrv's DNS listens on both.
fn free_dns_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}
