//! `edge-bench drive`: checks that every target answers, runs the three
//! tests one after the other, and prints the report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio_rustls::TlsConnector;

use crate::client::{connector, wait_ready, Kx, Target};
use crate::slowloris::Flood;
use crate::{latency, rate, report, slowloris};

/// Index of the bare rustls server among the targets.
pub(crate) const DIRECT: usize = 0;
/// Index of edge's passthrough route to the bare server.
pub(crate) const PASSTHROUGH: usize = 1;
/// Index of nginx's `ssl_preread` passthrough to the bare server.
pub(crate) const NGINX: usize = 2;
/// Index of edge's terminating route.
pub(crate) const TERMINATE: usize = 3;

/// How long the servers may take to start answering.
const READY_PATIENCE: Duration = Duration::from_secs(15);

/// Addresses of the servers under test, and the sample counts.
#[derive(Debug, clap::Args)]
pub(crate) struct DriveArgs {
    /// The bare rustls server (`edge-bench server`).
    #[arg(long)]
    pub(crate) direct: SocketAddr,
    /// Edge's mux listener.
    #[arg(long)]
    pub(crate) edge: SocketAddr,
    /// Nginx's `ssl_preread` listener.
    #[arg(long)]
    pub(crate) nginx: SocketAddr,
    /// Edge's metrics endpoint, read to confirm the idle connections are
    /// pending there.
    #[arg(long)]
    pub(crate) edge_metrics: Option<SocketAddr>,
    /// PEM file of the CA the client trusts.
    #[arg(long)]
    pub(crate) ca: PathBuf,
    /// Recorded handshakes per target and key exchange.
    #[arg(long, default_value_t = 2000)]
    pub(crate) handshakes: usize,
    /// Unrecorded handshakes per target and key exchange before them.
    #[arg(long, default_value_t = 100)]
    pub(crate) warmup: usize,
    /// Concurrent clients in the connection-rate test.
    #[arg(long, default_value_t = 16)]
    pub(crate) rate_clients: usize,
    /// Length of one connection-rate slice, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub(crate) rate_slice_ms: u64,
    /// Connection-rate slices per target.
    #[arg(long, default_value_t = 8)]
    pub(crate) rate_slices: usize,
    /// Idle half-open connections in the slowloris test.
    #[arg(long, default_value_t = 1000)]
    pub(crate) flood: usize,
    /// Source addresses the idle connections come from: 127.0.1.1 up to
    /// 127.0.1.N.
    #[arg(long, default_value_t = 40)]
    pub(crate) flood_sources: u8,
    /// Legitimate handshakes in each phase (quiet, flooded) of the slowloris test.
    #[arg(long, default_value_t = 2000)]
    pub(crate) slowloris_handshakes: usize,
    /// Quiet and flooded blocks alternate this many times.
    #[arg(long, default_value_t = 4)]
    pub(crate) slowloris_blocks: usize,
}

/// Measures everything and prints the report on stdout.
pub(crate) async fn run(args: DriveArgs) -> anyhow::Result<()> {
    check_loopback(&args)?;
    let targets = targets(&args);
    let clients = [Kx::X25519, Kx::X25519Mlkem768, Kx::Default]
        .into_iter()
        .map(|kx| Ok((kx, connector(&args.ca, kx)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (_, classic) = &clients[0];
    let (_, default) = &clients[2];
    for target in &targets {
        wait_ready(classic, target, READY_PATIENCE).await?;
    }

    let start = Instant::now();
    progress(
        start,
        &format!(
            "handshake latency: {} rounds over {} targets, X25519 and X25519MLKEM768",
            args.handshakes,
            targets.len()
        ),
    );
    let latency = latency::measure(&clients[..2], &targets, args.warmup, args.handshakes).await;

    progress(start, "connection rate");
    let slice = Duration::from_millis(args.rate_slice_ms);
    let rates = rate::measure(
        default,
        &targets,
        args.rate_clients,
        slice,
        args.rate_slices,
    )
    .await;

    progress(start, "slowloris");
    let slowloris = measure_slowloris(&args, classic, &targets[TERMINATE]).await?;

    progress(start, "done");
    report::print(&report::Report {
        args: &args,
        targets: &targets,
        latency: &latency,
        rates: &rates,
        slowloris: &slowloris,
    })
    .context("cannot write the report")
}

/// Legitimate handshakes through edge's terminating route, with and without
/// the idle connections, in the alternating blocks the flags ask for.
async fn measure_slowloris(
    args: &DriveArgs,
    connector: &TlsConnector,
    terminate: &Target,
) -> anyhow::Result<slowloris::Outcome> {
    let blocks = args.slowloris_blocks.max(1);
    let per_block = args.slowloris_handshakes.div_ceil(blocks);
    let flood = Flood {
        conns: args.flood,
        sources: args.flood_sources,
    };
    slowloris::measure(
        connector,
        terminate,
        flood,
        args.edge_metrics,
        blocks,
        per_block,
    )
    .await
}

/// The target order of every table; the index constants above follow it.
fn targets(args: &DriveArgs) -> Vec<Target> {
    vec![
        Target::new("direct", args.direct, "direct.bench", true),
        Target::new("mux passthrough", args.edge, "pass.bench", true),
        Target::new("nginx preread", args.nginx, "pass.bench", true),
        Target::new("mux terminate", args.edge, "term.bench", false),
    ]
}

/// The bench floods and hammers what it is pointed at; only this machine may
/// be the target.
fn check_loopback(args: &DriveArgs) -> anyhow::Result<()> {
    let addrs = [args.direct, args.edge, args.nginx]
        .into_iter()
        .chain(args.edge_metrics);
    for addr in addrs {
        if !addr.ip().is_loopback() {
            bail!("{addr} is not a loopback address");
        }
    }
    Ok(())
}

/// Target indices `0..n`, starting at a different one each round.
pub(crate) fn rotation(round: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (round + i) % n)
}

/// One line on stderr per phase, with the time since measuring began.
fn progress(start: Instant, what: &str) {
    let secs = start.elapsed().as_secs_f64();
    eprintln!("edge-bench: [{secs:5.1} s] {what}");
}
