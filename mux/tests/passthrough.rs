//! Passthrough routes: bytes replayed exactly, PROXY v2, half-close, a real
//! TLS server behind the mux, and an unreachable upstream.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mux::config::{ActionKind, MuxConfig, RouteConfig};
use ppp::v2::{Addresses, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The rustls client hello captured for `turn.example.org`.
const RUSTLS_HELLO: &[u8] = include_bytes!("fixtures/hello/rustls-pq.bin");

fn passthrough(sni: &str, upstream: SocketAddr, proxy_protocol: bool) -> RouteConfig {
    RouteConfig {
        name: Some("upstream".into()),
        sni: vec![sni.into()],
        alpn: vec![],
        action: ActionKind::Passthrough,
        service: None,
        upstream: Some(upstream.to_string()),
        proxy_protocol,
    }
}

async fn mux_with(route: RouteConfig) -> Running {
    let pki = Pki::new();
    let config = MuxConfig {
        routes: vec![route],
        ..MuxConfig::default()
    };
    start_mux(config, store(&pki, vec![])).await
}

/// Reads from `stream` until `n` bytes or EOF.
async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut out))
        .await
        .expect("bytes within 10 s")
        .expect("read");
    out
}

/// Connects to `addr` from 127.0.0.2, so the PROXY header has a distinct source.
async fn connect_from_second_loopback(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind");
    socket.connect(addr).await.expect("connect")
}

#[tokio::test]
async fn bytes_are_replayed_exactly_behind_a_proxy_header() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    let mux = mux_with(passthrough("turn.example.org", up_addr, true)).await;

    let mut client = connect_from_second_loopback(mux.addr).await;
    let client_addr = client.local_addr().expect("addr");
    let mut sent = RUSTLS_HELLO.to_vec();
    sent.extend_from_slice(b"bytes after the hello");
    // Write in two pieces, the split inside the hello.
    client.write_all(&sent[..100]).await.expect("write");
    client.write_all(&sent[100..]).await.expect("write");

    let (mut seen, _) = upstream.accept().await.expect("accept");
    let head = read_n(&mut seen, 16).await;
    let len = 16 + usize::from(u16::from_be_bytes([head[14], head[15]]));
    let mut header = head.clone();
    header.extend(read_n(&mut seen, len - 16).await);
    let parsed = Header::try_from(header.as_slice()).expect("valid PROXY v2 header");
    match parsed.addresses {
        Addresses::IPv4(a) => {
            assert_eq!(
                SocketAddr::from((a.source_address, a.source_port)),
                client_addr
            );
            assert_eq!(
                SocketAddr::from((a.destination_address, a.destination_port)),
                mux.addr
            );
        }
        other => panic!("expected IPv4 addresses, got {other:?}"),
    }
    assert_eq!(read_n(&mut seen, sent.len()).await, sent);
}

/// Upstreams by IPv6 literal (the connection takes the hello at once) and
/// by host name (resolved first, then connected). A host without IPv6 on
/// loopback tests the name only.
#[tokio::test]
async fn upstreams_by_ipv6_address_and_by_name_get_the_hello() {
    let v4 = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let mut upstreams = vec![(
        format!("localhost:{}", v4.local_addr().expect("addr").port()),
        v4,
    )];
    match TcpListener::bind("[::1]:0").await {
        Ok(v6) => upstreams.push((v6.local_addr().expect("addr").to_string(), v6)),
        Err(e) => eprintln!("no IPv6 loopback ({e}); testing the upstream by name only"),
    }
    for (upstream, listener) in upstreams {
        let mut route = passthrough(
            "turn.example.org",
            "127.0.0.1:1".parse().expect("addr"),
            false,
        );
        route.upstream = Some(upstream.clone());
        let mux = mux_with(route).await;
        let mut client = TcpStream::connect(mux.addr).await.expect("connect");
        client.write_all(RUSTLS_HELLO).await.expect("write");
        let (mut seen, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .unwrap_or_else(|_| panic!("{upstream} was never connected"))
            .expect("accept");
        assert_eq!(
            read_n(&mut seen, RUSTLS_HELLO.len()).await,
            RUSTLS_HELLO,
            "{upstream}"
        );
        seen.write_all(b"pong").await.expect("write");
        assert_eq!(read_n(&mut client, 4).await, b"pong", "{upstream}");
    }
}

#[tokio::test]
async fn half_close_passes_both_ways() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    let mux = mux_with(passthrough("turn.example.org", up_addr, false)).await;

    let mut client = TcpStream::connect(mux.addr).await.expect("connect");
    client.write_all(RUSTLS_HELLO).await.expect("write");
    client.write_all(b"ping").await.expect("write");
    client.shutdown().await.expect("half-close");

    let (mut seen, _) = upstream.accept().await.expect("accept");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), seen.read_to_end(&mut received))
        .await
        .expect("upstream sees EOF")
        .expect("read");
    assert_eq!(received.len(), RUSTLS_HELLO.len() + 4);
    assert!(received.ends_with(b"ping"));

    // The client's write half is closed; its read half still works.
    seen.write_all(b"pong").await.expect("write");
    seen.shutdown().await.expect("close");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut reply))
        .await
        .expect("client sees EOF")
        .expect("read");
    assert_eq!(reply, b"pong");
}

#[tokio::test]
async fn a_real_tls_server_behind_the_mux_keeps_its_own_certificate() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["backend.example.org"]);
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    let server_config =
        mux::tls::server_config(store(&pki, vec![leaf.entry.clone()])).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    tokio::spawn(async move {
        let (tcp, _) = upstream.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("upstream handshake");
        tls.write_all(b"from the backend").await.expect("write");
        tls.shutdown().await.expect("close");
    });

    let mux = mux_with(passthrough("backend.example.org", up_addr, false)).await;
    let client = verifying_client(&pki.ca, &["http/1.1"]);
    let mut tls = connect(mux.addr, client, "backend.example.org")
        .await
        .expect("handshake with the backend through the mux");
    let mut text = String::new();
    tls.read_to_string(&mut text).await.expect("read");
    assert_eq!(text, "from the backend");
    let served = tls.get_ref().1.peer_certificates().expect("certs")[0].clone();
    assert_eq!(served, leaf.der);
}

#[tokio::test]
async fn an_unreachable_upstream_closes_and_counts() {
    // Bind then drop, so the port is very likely closed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mux = mux_with(passthrough("turn.example.org", closed, false)).await;
    let mut client = TcpStream::connect(mux.addr).await.expect("connect");
    client.write_all(RUSTLS_HELLO).await.expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    let metrics = Arc::clone(&mux.metrics);
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(&metrics, "mux_upstream_failures_total{route=\"upstream\"}") == 1.0
        })
        .await
    );
}
