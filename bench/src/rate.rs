//! New connections per second: concurrent clients that connect, handshake
//! and close in a loop, in short slices that alternate between targets.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use rustls::pki_types::ServerName;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::client::{connector, cycle, Kx, Target};
use crate::drive::rotation;

/// Completed connections to one target over all its slices.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rate {
    /// Connections that completed the handshake and the close.
    pub(crate) conns: u64,
    /// Connections that failed.
    pub(crate) errors: u64,
    /// Time from the start of each slice until its last connection ended.
    pub(crate) elapsed: Duration,
}

impl Rate {
    /// Completed connections per second.
    pub(crate) fn per_sec(&self) -> f64 {
        self.conns as f64 / self.elapsed.as_secs_f64()
    }

    fn add(&mut self, other: Rate) {
        self.conns += other.conns;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }
}

/// Runs `slices` slices of `slice` per target with `clients` concurrent
/// clients; returns one rate per target.
pub(crate) async fn measure(
    connector: &TlsConnector,
    targets: &[Target],
    clients: usize,
    slice: Duration,
    slices: usize,
) -> Vec<Rate> {
    let mut rates = vec![Rate::default(); targets.len()];
    for round in 0..slices {
        for t in rotation(round, targets.len()) {
            let measured = run_slice(connector, &targets[t], clients, slice).await;
            rates[t].add(measured);
        }
    }
    rates
}

/// Clients start no new connection after the slice ends; the ones under way
/// finish and count, and the elapsed time includes them.
async fn run_slice(
    connector: &TlsConnector,
    target: &Target,
    clients: usize,
    slice: Duration,
) -> Rate {
    let start = Instant::now();
    let deadline = start + slice;
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let connector = connector.clone();
        let target = target.clone();
        tasks.spawn(async move { client_loop(&connector, &target, deadline).await });
    }
    let mut total = Rate::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(rate) = done {
            total.add(rate);
        }
    }
    total.elapsed = start.elapsed();
    total
}

async fn client_loop(connector: &TlsConnector, target: &Target, deadline: Instant) -> Rate {
    let mut rate = Rate::default();
    while Instant::now() < deadline {
        match cycle(connector, target).await {
            Ok(_) => rate.conns += 1,
            Err(_) => rate.errors += 1,
        }
    }
    rate
}

/// One target under the connection-rate load.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// Loopback address to connect to.
    #[arg(long)]
    target: SocketAddr,
    /// SNI to send: `pass.bench` takes edge's passthrough route,
    /// `term.bench` its terminating one.
    #[arg(long, default_value = "pass.bench")]
    sni: String,
    /// PEM file of the CA the client trusts.
    #[arg(long)]
    ca: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to keep the load up, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Runs the rate test's clients against one target and prints the rate.
pub(crate) async fn load(args: LoadArgs) -> anyhow::Result<()> {
    if !args.target.ip().is_loopback() {
        bail!("{} is not a loopback address", args.target);
    }
    let target = Target {
        label: "load",
        addr: args.target,
        sni: ServerName::try_from(args.sni)?,
        echoes: false,
    };
    let connector = connector(&args.ca, Kx::Default)?;
    let slice = Duration::from_secs(args.seconds);
    let rate = run_slice(&connector, &target, args.clients, slice).await;
    writeln!(
        std::io::stdout().lock(),
        "{} conn/s ({} connections, {} errors, {:.1} s)",
        rate.per_sec().round(),
        rate.conns,
        rate.errors,
        rate.elapsed.as_secs_f64()
    )?;
    Ok(())
}
