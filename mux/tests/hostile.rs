//! Hostile and broken clients: non-TLS bytes, oversized and stalled hellos,
//! and floods of half-open connections.

mod common;

use std::time::Duration;

use common::*;
use mux::config::MuxConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CHROMIUM_HELLO: &[u8] = include_bytes!("fixtures/hello/chromium.bin");

async fn mux_with(config: MuxConfig) -> (Pki, Running) {
    let pki = Pki::new();
    let store = store(&pki, vec![pki.leaf(&["app.example.org"]).entry]);
    let running = start_mux(config, store).await;
    (pki, running)
}

/// Waits until the mux closes `stream`; fails if it stays open 10 s.
async fn closed_by_mux(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) => {}
        Err(_) => panic!("connection still open after 10 s"),
    }
    assert!(
        rest.is_empty(),
        "nothing is answered before routing: {rest:?}"
    );
}

async fn wait_metric(mux: &Running, sample: &str, value: f64) {
    let metrics = mux.metrics.clone();
    let ok = eventually(Duration::from_secs(10), || {
        metric(&metrics, sample) == value
    })
    .await;
    assert!(ok, "{sample} != {value}:\n{}", metrics_text(&metrics));
}

/// What a server at `addr` sends back for `bytes` before closing.
async fn answer_to(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "still open after 10 s");
    answer
}

/// A plain rustls server with the mux's own TLS configuration, for comparison.
async fn bare_rustls(pki: &Pki) -> std::net::SocketAddr {
    let config = mux::tls::server_config(store(pki, vec![])).expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn bytes_that_are_no_hello_get_exactly_what_rustls_answers() {
    let (pki, mux) = mux_with(MuxConfig::default()).await;
    let bare = bare_rustls(&pki).await;
    let cases: [(&str, &[u8]); 3] = [
        ("not_tls", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        // A handshake record carrying a ServerHello.
        (
            "not_client_hello",
            &[
                0x16, 0x03, 0x03, 0x00, 0x06, 0x02, 0x00, 0x00, 0x02, 0x03, 0x03,
            ],
        ),
        // A ClientHello too short to hold its own random.
        (
            "malformed",
            &[
                0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00,
            ],
        ),
    ];
    for (reason, bytes) in cases {
        let from_mux = answer_to(mux.addr, bytes).await;
        let from_rustls = answer_to(bare, bytes).await;
        assert_eq!(from_mux, from_rustls, "{reason}");
        // RFC 8446 §6: a fatal alert record, not silence.
        assert_eq!(
            from_rustls.first(),
            Some(&0x15),
            "{reason}: {from_rustls:02x?}"
        );
        let sample = format!("mux_peek_failures_total{{reason=\"{reason}\"}}");
        wait_metric(&mux, &sample, 1.0).await;
    }
}

#[tokio::test]
async fn an_oversized_hello_is_refused() {
    let (_pki, mux) = mux_with(MuxConfig::default()).await;
    let mut tcp = TcpStream::connect(mux.addr).await.expect("connect");
    // A handshake header announcing a 20 000-byte ClientHello.
    let len: u32 = 20_000;
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01];
    record.extend_from_slice(&len.to_be_bytes()[1..]);
    record.resize(5 + 0x4000, 0);
    let _ = tcp.write_all(&record).await;
    closed_by_mux(&mut tcp).await;
    wait_metric(&mux, "mux_peek_failures_total{reason=\"too_large\"}", 1.0).await;
}

#[tokio::test]
async fn a_client_that_stops_mid_hello_is_closed_at_the_deadline() {
    let config = MuxConfig {
        peek_timeout: Duration::from_millis(300),
        ..MuxConfig::default()
    };
    let (_pki, mux) = mux_with(config).await;
    let mut tcp = TcpStream::connect(mux.addr).await.expect("connect");
    tcp.write_all(&CHROMIUM_HELLO[..700]).await.expect("write");
    closed_by_mux(&mut tcp).await;
    wait_metric(&mux, "mux_peek_failures_total{reason=\"timeout\"}", 1.0).await;
}

#[tokio::test]
async fn a_slow_but_steady_hello_still_has_one_total_deadline() {
    let config = MuxConfig {
        peek_timeout: Duration::from_millis(500),
        ..MuxConfig::default()
    };
    let (_pki, mux) = mux_with(config).await;
    let mut tcp = TcpStream::connect(mux.addr).await.expect("connect");
    // One byte every 50 ms would take ~100 s for the whole hello; the
    // deadline is for the whole peek, not per read.
    for byte in CHROMIUM_HELLO.iter().take(40) {
        if tcp.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    closed_by_mux(&mut tcp).await;
    wait_metric(&mux, "mux_peek_failures_total{reason=\"timeout\"}", 1.0).await;
}

#[tokio::test]
async fn half_open_floods_are_capped_per_source_and_in_total() {
    let config = MuxConfig {
        max_pending: 20,
        max_pending_per_source: 5,
        ..MuxConfig::default()
    };
    let (pki, mux) = mux_with(config).await;

    // Five idle connections from 127.0.0.2 fill its share; a sixth is closed.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(connect_from("127.0.0.2", &mux).await);
    }
    wait_metric(&mux, "mux_pending_connections", 5.0).await;
    let mut sixth = connect_from("127.0.0.2", &mux).await;
    closed_by_mux(&mut sixth).await;
    wait_metric(
        &mux,
        "mux_peek_failures_total{reason=\"limit_source\"}",
        1.0,
    )
    .await;

    // Other sources fill the rest of the total; then everyone is refused.
    for i in 0..15 {
        idle.push(connect_from(&format!("127.0.1.{}", i + 1), &mux).await);
    }
    wait_metric(&mux, "mux_pending_connections", 20.0).await;
    let mut over = connect_from("127.0.2.1", &mux).await;
    closed_by_mux(&mut over).await;
    wait_metric(&mux, "mux_peek_failures_total{reason=\"limit_total\"}", 1.0).await;

    // Once they go, a legitimate client gets through again.
    drop(idle);
    wait_metric(&mux, "mux_pending_connections", 0.0).await;
    let client = verifying_client(&pki.ca, &["h2"]);
    let mut tls = connect(mux.addr, client, "app.example.org")
        .await
        .expect("handshake after the flood");
    assert!(read_tag(&mut tls).await.starts_with("https "));
}

#[tokio::test]
async fn a_legitimate_handshake_succeeds_beside_many_idle_connections() {
    let (pki, mux) = mux_with(MuxConfig::default()).await;
    let mut idle = Vec::new();
    for i in 0..200 {
        let source = format!("127.0.{}.{}", 3 + i / 30, 1 + i % 30);
        let mut tcp = connect_from(&source, &mux).await;
        tcp.write_all(&CHROMIUM_HELLO[..10]).await.expect("write");
        idle.push(tcp);
    }
    wait_metric(&mux, "mux_pending_connections", 200.0).await;
    let client = verifying_client(&pki.ca, &["h2"]);
    let mut tls = connect(mux.addr, client, "app.example.org")
        .await
        .expect("handshake beside 200 idle connections");
    assert!(read_tag(&mut tls).await.starts_with("https "));
}

async fn connect_from(source: &str, mux: &Running) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind loopback source");
    socket.connect(mux.addr).await.expect("connect")
}
