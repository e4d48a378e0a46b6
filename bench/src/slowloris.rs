//! Legitimate handshakes through edge while many half-open connections sit in
//! its peek phase, against the same handshakes without them.
//!
//! Each idle connection sends the first bytes of a ClientHello and then
//! nothing, so edge holds it until its peek timeout. The connections come from
//! many loopback source addresses so that edge's per-source limit does not
//! refuse them: the test is about connections edge has admitted.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::client::{cycle, Target};
use crate::stats::Samples;

/// A TLS record header announcing 512 bytes, and the start of a ClientHello
/// handshake message announcing 508: ten bytes that promise more.
const HELLO_START: [u8; 10] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03];

/// Time for edge to accept and read every idle connection before measuring,
/// and to drop them all before the next quiet block.
const SETTLE: Duration = Duration::from_millis(300);

/// How the idle connections are made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flood {
    /// Number of idle connections.
    pub(crate) conns: usize,
    /// Source addresses 127.0.1.1 up to 127.0.1.`sources`.
    pub(crate) sources: u8,
}

/// Legitimate handshakes with and without the idle connections.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Without idle connections.
    pub(crate) quiet: Samples,
    /// With the idle connections open.
    pub(crate) flooded: Samples,
    /// Fewest idle connections still open at the end of a flooded block.
    pub(crate) still_open: usize,
    /// Largest `mux_pending_connections` edge reported during a flooded block.
    pub(crate) edge_pending: Option<u64>,
}

/// Alternates `blocks` quiet and flooded blocks of `per_block` handshakes each.
pub(crate) async fn measure(
    connector: &TlsConnector,
    target: &Target,
    flood: Flood,
    metrics: Option<SocketAddr>,
    blocks: usize,
    per_block: usize,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome {
        still_open: usize::MAX,
        ..Outcome::default()
    };
    for _ in 0..blocks {
        for _ in 0..per_block {
            outcome.quiet.record(cycle(connector, target).await);
        }

        let idle = open(target.addr, flood).await?;
        tokio::time::sleep(SETTLE).await;
        if let Some(addr) = metrics {
            let pending = edge_pending(addr).await?;
            outcome.edge_pending = outcome.edge_pending.max(Some(pending));
        }
        for _ in 0..per_block {
            outcome.flooded.record(cycle(connector, target).await);
        }
        outcome.still_open = outcome.still_open.min(count_open(&idle));

        drop(idle);
        tokio::time::sleep(SETTLE).await;
    }
    Ok(outcome)
}

/// Opens the idle connections; they reset when dropped.
async fn open(edge: SocketAddr, flood: Flood) -> anyhow::Result<Vec<TcpStream>> {
    let mut idle = Vec::with_capacity(flood.conns);
    for i in 0..flood.conns {
        let host = (i % usize::from(flood.sources.max(1))) as u8 + 1;
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, host));
        let tcp = open_one(source, edge)
            .await
            .with_context(|| format!("idle connection {i} from {source}"))?;
        idle.push(tcp);
    }
    Ok(idle)
}

async fn open_one(source: IpAddr, edge: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut tcp = socket.connect(edge).await?;
    tcp.set_zero_linger()?;
    tcp.write_all(&HELLO_START).await?;
    Ok(tcp)
}

/// Counts connections edge has not closed: reading one that is still open
/// would block.
fn count_open(idle: &[TcpStream]) -> usize {
    let mut byte = [0u8; 1];
    idle.iter()
        .filter(|tcp| {
            matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        })
        .count()
}

/// Reads the pending-connection gauge from edge's metrics endpoint.
async fn edge_pending(metrics: SocketAddr) -> anyhow::Result<u64> {
    let mut tcp = TcpStream::connect(metrics)
        .await
        .with_context(|| format!("cannot reach edge metrics at {metrics}"))?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: edge\r\n\r\n")
        .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    text.lines()
        .find_map(|line| line.strip_prefix("mux_pending_connections "))
        .and_then(|value| value.trim().parse().ok())
        .context("no mux_pending_connections in edge metrics")
}
