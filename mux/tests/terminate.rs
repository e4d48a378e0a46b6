//! Terminated routes: certificates by name, the same handshake for every
//! name, and dispatch by ALPN or first bytes after the handshake.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mux::config::{ActionKind, MuxConfig, RouteConfig, ServiceName};
use mux::service::{BoxFuture, BoxStream, ConnInfo, Service, Services};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn turn_route() -> RouteConfig {
    RouteConfig {
        name: Some("turns".into()),
        sni: vec!["turn.example.org".into()],
        alpn: vec![],
        action: ActionKind::Terminate,
        service: Some(ServiceName::Turn),
        upstream: None,
        proxy_protocol: false,
    }
}

async fn setup() -> (Pki, Leaf, Leaf, Running) {
    let pki = Pki::new();
    let exact = pki.leaf(&["app.example.org"]);
    let wild = pki.leaf(&["*.example.org"]);
    let store = store(&pki, vec![exact.entry.clone(), wild.entry.clone()]);
    let config = MuxConfig {
        routes: vec![turn_route()],
        ..MuxConfig::default()
    };
    let running = start_mux(config, store).await;
    (pki, exact, wild, running)
}

#[tokio::test]
async fn certificates_are_chosen_by_name() {
    let (pki, exact, wild, mux) = setup().await;
    let client = verifying_client(&pki.ca, &["h2"]);

    let mut tls = connect(mux.addr, client.clone(), "APP.example.org.")
        .await
        .expect("exact name verifies against the test CA");
    assert_eq!(
        read_tag(&mut tls).await,
        "https sni=app.example.org route=default"
    );
    let leaf = served_leaf(&tls);
    assert_eq!(leaf, exact.der);

    let tls = connect(mux.addr, client, "other.example.org")
        .await
        .expect("wildcard verifies");
    let leaf = served_leaf(&tls);
    assert_eq!(leaf, wild.der);
}

#[tokio::test]
async fn unknown_missing_and_ip_names_get_the_default_handshake() {
    let (_pki, exact, _wild, mux) = setup().await;
    let mut outcomes = Vec::new();
    for name in ["app.example.org", "unknown.example.net", "127.0.0.1"] {
        let client = any_cert_client(&["h2", "http/1.1"]);
        let mut tls = connect(mux.addr, client, name).await.expect("handshake");
        let (_, session) = tls.get_ref();
        outcomes.push((
            session.protocol_version(),
            session.negotiated_cipher_suite().map(|s| s.suite()),
            session.negotiated_key_exchange_group().map(|g| g.name()),
            session.alpn_protocol().map(<[u8]>::to_vec),
        ));
        let leaf = served_leaf(&tls);
        // The configured name gets its own certificate; every other
        // hello gets the default, which is the first configured one.
        assert_eq!(leaf, exact.der, "{name}");
        let tag = read_tag(&mut tls).await;
        assert!(tag.starts_with("https "), "{tag}");
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
    assert_eq!(
        outcomes[0].2,
        Some(rustls::NamedGroup::X25519MLKEM768),
        "post-quantum hybrid preferred"
    );
}

#[tokio::test]
async fn first_bytes_choose_the_service_without_alpn() {
    let (_pki, _exact, _wild, mux) = setup().await;

    let client = any_cert_client(&[]);
    let mut tls = connect(mux.addr, client.clone(), "any.example.org")
        .await
        .expect("handshake");
    // RFC 5769 §2.1: a STUN Binding request header with the magic cookie.
    let stun = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];
    tls.write_all(&stun).await.expect("write");
    assert_eq!(
        read_tag(&mut tls).await,
        "turn sni=any.example.org route=default"
    );
    let mut echoed = [0u8; 20];
    tls.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(echoed, stun, "the sniffed bytes reach the service intact");

    let mut tls = connect(mux.addr, client, "any.example.org")
        .await
        .expect("handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("write");
    assert_eq!(
        read_tag(&mut tls).await,
        "https sni=any.example.org route=default"
    );
}

#[tokio::test]
async fn a_route_can_name_its_service() {
    let (pki, _exact, _wild, mux) = setup().await;
    let turn = pki.leaf(&["turn.example.org"]);
    mux.store
        .replace(mux::certs::Source::Acme, vec![turn.entry.clone()]);
    let client = verifying_client(&pki.ca, &["http/1.1"]);
    let mut tls = connect(mux.addr, client, "turn.example.org")
        .await
        .expect("handshake");
    // ALPN says HTTP, but the route says TURN.
    assert_eq!(
        read_tag(&mut tls).await,
        "turn sni=turn.example.org route=turns"
    );
    assert_eq!(
        metric(&mux.metrics, "mux_route_hits_total{route=\"turns\"}"),
        1.0
    );
}

#[tokio::test]
async fn every_route_is_exported_at_zero_before_its_first_connection() {
    let (_pki, _exact, _wild, mux) = setup().await;
    let text = metrics_text(&mux.metrics);
    for route in ["turns", "default"] {
        for series in [
            "mux_route_hits_total",
            "mux_active_connections",
            "mux_upstream_failures_total",
        ] {
            let line = format!("{series}{{route=\"{route}\"}} 0");
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}

#[tokio::test]
async fn acme_probe_without_challenge_fails_like_any_bad_hello() {
    let (_pki, _exact, _wild, mux) = setup().await;
    let client = any_cert_client(&["acme-tls/1"]);
    let result = connect(mux.addr, client, "app.example.org").await;
    assert!(result.is_err(), "no challenge certificate pending");
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(&mux.metrics, "mux_handshake_failures_total{reason=\"tls\"}") == 1.0
        })
        .await
    );
}

/// Answers `<peer> <local>\n`: the addresses the mux hands a service.
struct AddressTeller;

impl Service for AddressTeller {
    fn serve(&self, mut stream: BoxStream, info: ConnInfo) -> BoxFuture {
        Box::pin(async move {
            let line = format!("{} {}\n", info.peer, info.local);
            let _ = stream.write_all(line.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
    }
}

#[tokio::test]
async fn a_service_learns_both_ends_of_the_connection() {
    let pki = Pki::new();
    let mut services = Services::new();
    services.register(ServiceName::Https, Arc::new(AddressTeller));
    let store = store(&pki, Vec::new());
    let mux = start_mux_with(MuxConfig::default(), store, services).await;

    let tcp = TcpStream::connect(mux.addr).await.expect("connect");
    let client_addr = tcp.local_addr().expect("addr");
    let server_name = ServerName::try_from("any.example.org").expect("name");
    let connector = TlsConnector::from(any_cert_client(&["http/1.1"]));
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .expect("handshake");
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.expect("read");
    assert_eq!(answer, format!("{client_addr} {}\n", mux.addr));
}
