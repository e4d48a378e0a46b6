//! `edge-bench drive`: checks that every target answers, runs the three
//! tests one after the other, and prints the report.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio_rustls::TlsConnector;

use crate::client::{connector, wait_ready, Kx, Target};
use crate::slowloris::Flood;
use crate::stats::splitmix64;
use crate::{latency, rate, report, slowloris};

/// Index of the bare rustls server among the targets.
pub(crate) const DIRECT: usize = 0;
/// Index of edge's passthrough route to the bare server.
pub(crate) const PASSTHROUGH: usize = 1;
/// Index of nginx's `ssl_preread` passthrough to the bare server.
pub(crate) const NGINX: usize = 2;
/// Index of the reference proxy (plain tokio) in front of the bare server.
pub(crate) const TOKIO_PROXY: usize = 3;
/// Index of edge's terminating route.
pub(crate) const TERMINATE: usize = 4;
/// Index of the bare server's twin: the same server in a second process
/// that takes no passthrough traffic, so terminate can also be compared
/// with a server that handles as few of the handshakes as edge does.
pub(crate) const TWIN: usize = 5;

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
    /// The reference proxy's listener (`edge-bench proxy`).
    #[arg(long)]
    pub(crate) tokio_proxy: SocketAddr,
    /// A second bare rustls server, reached only directly.
    #[arg(long)]
    pub(crate) twin: SocketAddr,
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
    .await
    .context("cannot read the machine's CPU time")?;

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
        Target::new("tokio proxy", args.tokio_proxy, "pass.bench", true),
        Target::new("mux terminate", args.edge, "term.bench", false),
        Target::new("bare twin", args.twin, "direct.bench", true),
    ]
}

/// The bench floods and hammers what it is pointed at; only this machine may
/// be the target.
fn check_loopback(args: &DriveArgs) -> anyhow::Result<()> {
    let addrs = [
        args.direct,
        args.edge,
        args.nginx,
        args.tokio_proxy,
        args.twin,
    ]
    .into_iter()
    .chain(args.edge_metrics);
    for addr in addrs {
        if !addr.ip().is_loopback() {
            bail!("{addr} is not a loopback address");
        }
    }
    Ok(())
}

/// Target indices `0..n` in a shuffled order that is new each round and the
/// same in every run.
///
/// A connection's teardown still runs on the servers when the next one
/// starts, so the target measured right after another pays for that one's
/// close. A fixed cycle would make each target follow the same neighbour
/// almost every time (a target after the bare server would always meet the
/// bare server still closing); shuffling spreads those costs evenly.
pub(crate) fn rotation(round: usize, n: usize) -> impl Iterator<Item = usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = round as u64;
    // Fisher-Yates with splitmix64: the order is reproducible from `round`.
    for i in (1..n).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order.into_iter()
}

/// One line on stderr per phase, with the time since measuring began.
fn progress(start: Instant, what: &str) {
    let secs = start.elapsed().as_secs_f64();
    eprintln!("edge-bench: [{secs:5.1} s] {what}");
}

#[cfg(test)]
mod tests {
    use super::rotation;

    #[test]
    fn every_target_follows_every_other_about_equally() {
        let n = 5;
        let mut follows = vec![vec![0u32; n]; n];
        let mut previous = None;
        for round in 0..4000 {
            for t in rotation(round, n) {
                if let Some(p) = previous {
                    follows[t][p] += 1;
                }
                previous = Some(t);
            }
        }
        let pairs: Vec<u32> = (0..n)
            .flat_map(|t| (0..n).filter(move |p| *p != t).map(move |p| (t, p)))
            .map(|(t, p)| follows[t][p])
            .collect();
        let (min, max) = (pairs.iter().min(), pairs.iter().max());
        // Within rounds, 16000 transitions over 20 ordered pairs; across
        // rounds, 4000 over 25 (a target may start the round it ended the
        // last one with): about 960 each.
        assert!(min.is_some_and(|m| *m > 850), "{follows:?}");
        assert!(max.is_some_and(|m| *m < 1070), "{follows:?}");
    }

    #[test]
    fn each_round_visits_every_target_once() {
        for round in 0..100 {
            let mut order: Vec<usize> = rotation(round, 5).collect();
            order.sort_unstable();
            assert_eq!(order, vec![0, 1, 2, 3, 4]);
        }
    }
}
